"""SIGTERM: the gateway stops accepting, lets requests in flight finish, stops
every service it started (SIGTERM to the process group, SIGKILL after
stop_grace) and exits 0."""
import os
import socket
import threading
import time

from conftest import (DEMO_SH, SLACK, demo_service, http_request, pid_alive, pids_with_arg,
                      port_listening, service_gone, wait_until, write_script)


def start_in_thread(fn):
    holder = {}

    def run():
        try:
            holder["r"] = fn()
        except Exception as e:  # noqa: BLE001
            holder["e"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, holder


def test_sigterm_lets_an_in_flight_request_finish_then_stops_the_service(gateway):
    svc = demo_service(stop_grace=3)
    g = gateway([svc], shutdown_grace=10)
    pid = g.service_pid()
    t, holder = start_in_thread(
        lambda: http_request(g.port, "GET", "/llm/slow?ms=1500", timeout=15 * SLACK))
    wait_until(lambda: g.svc()["in_flight"] == 1, 3 * SLACK, msg="the slow request in flight")

    t0 = time.monotonic()
    rc = g.terminate()
    took = time.monotonic() - t0
    t.join(15 * SLACK)

    assert "e" not in holder, f"the in-flight request failed: {holder.get('e')!r}"
    r = holder["r"]
    assert r.status == 200, r
    assert r.json() == {"slept_ms": 1500}
    assert rc == 0, f"exit code {rc}\n{g.log()}"
    assert took >= 0.8, f"the gateway exited {took:.2f} s after SIGTERM, before the request ended"
    assert took <= 1.5 + svc["stop_grace"] + 3 * SLACK, took
    wait_until(lambda: service_gone(pid, svc["local_port"]), 3 * SLACK,
               msg=f"service pid {pid} gone, port {svc['local_port']} closed")


def test_sigterm_stops_accepting_new_connections(gateway):
    g = gateway([demo_service()], shutdown_grace=10)
    g.service_pid()
    t, holder = start_in_thread(
        lambda: http_request(g.port, "GET", "/llm/slow?ms=2000", timeout=15 * SLACK))
    wait_until(lambda: g.svc()["in_flight"] == 1, 3 * SLACK)
    g.proc.send_signal(15)
    time.sleep(0.3)
    # the gateway is draining: a new request must not be served
    try:
        r = http_request(g.port, "GET", "/api/health", timeout=1)
        served = r.status == 200
    except (OSError, Exception):  # refused, reset, timed out: all fine
        served = False
    assert not served, "a new request was served after SIGTERM"
    t.join(15 * SLACK)
    assert holder.get("r") is not None and holder["r"].status == 200, holder
    assert g.terminate() == 0


def test_sigterm_answers_held_requests_with_503(gateway):
    svc = demo_service(stop_grace=2)
    g = gateway([svc], env={"DEMO_DELAY": "30"})
    t, holder = start_in_thread(
        lambda: http_request(g.port, "GET", "/llm/health", timeout=15 * SLACK))
    info = wait_until(lambda: (lambda s: s if s["waiting"] == 1 and s["instances"] else None)(
        g.svc()), 3 * SLACK)
    pid = info["instances"][0]["pid"]
    assert pid
    rc = g.terminate()
    t.join(10 * SLACK)
    r = holder.get("r")
    assert r is not None, holder
    assert r.status == 503, r
    assert "shutting down" in r.json()["error"], r
    assert rc == 0, g.log()
    wait_until(lambda: service_gone(pid, svc["local_port"]), 3 * SLACK)


def test_sigterm_with_an_idle_running_service_exits_quickly(gateway):
    svc = demo_service()
    g = gateway([svc])
    pid = g.service_pid()
    t0 = time.monotonic()
    rc = g.terminate()
    took = time.monotonic() - t0
    assert rc == 0, g.log()
    assert took < 2 * SLACK, f"took {took:.2f} s with nothing in flight"
    wait_until(lambda: service_gone(pid, svc["local_port"]), 3 * SLACK)


def test_sigterm_with_no_service_running_exits_at_once(gateway):
    g = gateway()
    t0 = time.monotonic()
    assert g.terminate() == 0, g.log()
    assert time.monotonic() - t0 < 1.5 * SLACK


def test_service_ignoring_sigterm_is_killed_after_stop_grace(gateway, tmp_path):
    # the start script ignores SIGTERM and keeps its process group alive
    script = write_script(tmp_path / "stubborn.sh", f"""#!/bin/sh
trap '' TERM
'{DEMO_SH}' "$@" &
while :; do sleep 0.2; done
""")
    svc = demo_service(bash_file=str(script), stop_grace=1)
    g = gateway([svc])
    demo_pid = g.service_pid()
    leader = g.svc()["instances"][0]["pid"]
    assert leader != demo_pid
    t0 = time.monotonic()
    rc = g.terminate()
    took = time.monotonic() - t0
    assert rc == 0, g.log()
    assert 0.8 <= took <= 1 + 3 * SLACK, f"exited {took:.2f} s after SIGTERM (stop_grace 1)"
    wait_until(lambda: not pid_alive(leader) and not pid_alive(demo_pid)
               and not port_listening(svc["local_port"]), 3 * SLACK,
               msg="the stubborn script and its service gone")
    assert not pids_with_arg(str(script)), "stubborn script still running"


def test_stopping_a_service_kills_its_whole_process_group(gateway, tmp_path):
    # the script forks the service and a helper; idle stop must take all
    marker = f"sg-helper-{time.monotonic_ns()}"
    script = write_script(tmp_path / "forks.sh", f"""#!/bin/sh
sleep 300 {marker} 2>/dev/null &
sh -c 'while :; do sleep 1; done' {marker} &
exec '{DEMO_SH}' "$@"
""")
    svc = demo_service(bash_file=str(script), timeout=1, stop_grace=1)
    g = gateway([svc])
    pid = g.service_pid()
    # a request in flight keeps the service up (idle timeout 1 s) while we
    # look for the helpers: on a loaded machine the idle stop could otherwise
    # come first and take them before we saw them
    t, held = start_in_thread(lambda: g.get("/llm/slow?ms=4000", timeout=30))

    def helpers():
        found = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        if marker.encode() in f.read() and pid_alive(int(d)):
                            found.append(int(d))
                except OSError:
                    pass
        return found

    wait_until(helpers, 3 * SLACK, msg="the helper processes started")
    t.join(30)
    assert "r" in held and held["r"].status == 200, held
    g.wait_state("stopped", timeout=1 + 5)
    wait_until(lambda: service_gone(pid, svc["local_port"]) and not helpers(), 4 * SLACK,
               msg="service and its helpers gone after the idle stop")


def test_second_sigterm_does_not_wait_for_the_grace(gateway):
    g = gateway([demo_service()], shutdown_grace=30)
    g.service_pid()
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    try:
        s.sendall(b"GET /llm/slow?ms=20000 HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_until(lambda: g.svc()["in_flight"] == 1, 3 * SLACK)
        g.proc.send_signal(15)
        time.sleep(0.5)
        assert g.proc.poll() is None, "exited although a request was in flight"
        t0 = time.monotonic()
        g.proc.send_signal(15)
        rc = g.proc.wait(10 * SLACK)
        assert rc == 0, g.log()
        assert time.monotonic() - t0 < 5 * SLACK
    finally:
        s.close()
