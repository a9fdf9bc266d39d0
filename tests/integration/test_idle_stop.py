"""A service stops after `timeout` seconds without requests, but never while
a request (a long stream, say) is in flight on it."""
import json
import threading
import time

from conftest import (DEMO_SH, SLACK, demo_service, pid_alive, port_listening, service_gone,
                      wait_until, write_script)


def test_service_stops_after_idle_timeout(gateway):
    svc = demo_service(timeout=2)
    g = gateway([svc])
    pid = g.service_pid()
    t_last = time.monotonic()
    info = g.svc()
    assert info["state"] == "ready"
    assert info["idle_seconds_left"] is not None and 0 < info["idle_seconds_left"] <= 2.0, info

    g.wait_state("stopped", timeout=2 + 6)
    stopped_after = time.monotonic() - t_last
    assert stopped_after >= 1.8, f"stopped {stopped_after:.2f} s after the last request (timeout 2)"
    wait_until(lambda: service_gone(pid, svc["local_port"]), 5 * SLACK,
               msg=f"service pid {pid} gone and port {svc['local_port']} closed")

    chk = g.get("/check_llm").json()
    assert chk["started"] is False and chk["running"] is False, chk

    # the next request starts it again
    pid2 = g.service_pid()
    assert pid2 != pid
    assert g.svc()["starts"] == 2


def test_each_request_restarts_the_idle_clock(gateway):
    g = gateway([demo_service(timeout=2)])
    pid = g.service_pid()
    t_end = time.monotonic() + 4.0
    while time.monotonic() < t_end:
        time.sleep(0.7)
        r = g.get("/llm/health")
        assert r.status == 200, r
        assert g.state() == "ready"
    # 4 s of traffic, 2 s timeout: still the same process, started once
    assert g.service_pid() == pid
    assert g.svc()["starts"] == 1
    g.wait_state("stopped", timeout=8)


def test_stream_longer_than_timeout_arrives_whole_and_incrementally(gateway):
    svc = demo_service(timeout=2)
    g = gateway([svc])
    pid = g.service_pid()

    # watch the service state while the stream runs
    states = []
    stop_watch = threading.Event()

    def watch():
        while not stop_watch.is_set():
            try:
                states.append(g.state())
            except Exception as e:  # noqa: BLE001
                states.append(f"error {e!r}")
            stop_watch.wait(0.2)

    n, ms = 20, 200       # 4 s of events, twice the idle timeout
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        conn = g.connection(timeout=10)
        t0 = time.monotonic()
        conn.request("GET", f"/llm/stream?n={n}&ms={ms}")
        r = conn.getresponse()
        assert r.status == 200
        assert r.getheader("Content-Type", "").startswith("text/event-stream")
        events, times = [], []
        while True:
            line = r.readline()
            if not line:
                break
            if line.startswith(b"data:"):
                events.append(line[5:].strip().decode())
                times.append(time.monotonic() - t0)
        conn.close()
    finally:
        stop_watch.set()
        watcher.join(5)

    assert events == [str(i) for i in range(n)], events
    span = times[-1] - times[0]
    assert span >= (n - 1) * ms / 1000 * 0.8, f"events did not arrive over time: span {span:.2f} s"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 1.0 * SLACK, f"events arrived in bursts (max gap {max(gaps):.2f} s): {times}"
    # no event arrived much later than the service produced it
    assert times[n // 2] < (n // 2) * ms / 1000 + 1.0 * SLACK, times

    assert states and all(s == "ready" for s in states), f"state during the stream: {states}"
    assert g.service_pid() == pid
    assert g.svc()["starts"] == 1

    # idle from now on: it stops about `timeout` after the stream ended
    g.wait_state("stopped", timeout=8)
    wait_until(lambda: service_gone(pid, svc["local_port"]), 5 * SLACK)


def test_slow_request_longer_than_timeout_is_not_cut(gateway):
    g = gateway([demo_service(timeout=1)])
    pid = g.service_pid()
    r = g.get("/llm/slow?ms=2500", timeout=10)
    assert r.status == 200, r
    assert r.json() == {"slept_ms": 2500}
    assert g.service_pid() == pid
    assert g.svc()["starts"] == 1


def test_demand_restarts_the_idle_clock(gateway):
    svc = demo_service(timeout=2)
    g = gateway([svc])
    pid = g.service_pid()
    for _ in range(4):
        time.sleep(0.8)
        r = g.get("/demand_llm")
        assert r.status == 200, r
    assert g.service_pid() == pid
    assert g.svc()["starts"] == 1
    g.wait_state("stopped", timeout=8)
    assert not port_listening(svc["local_port"]) or wait_until(
        lambda: not port_listening(svc["local_port"]), 3)


def test_an_idle_keep_alive_connection_does_not_keep_the_service_up(gateway):
    svc = demo_service(timeout=1)
    g = gateway([svc], keepalive_timeout=30)
    conn = g.connection(timeout=15)
    try:
        conn.request("GET", "/llm/pid")
        r = conn.getresponse()
        pid = json.loads(r.read())["pid"]
        g.seen_pids.add(pid)
        sock = conn.sock
        # the client keeps its connection open, sending nothing
        g.wait_state("stopped", timeout=1 + 5)
        wait_until(lambda: service_gone(pid, svc["local_port"]), 4 * SLACK)
        # the same client connection: the next request cold-starts it again
        conn.request("GET", "/llm/pid")
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200
        assert conn.sock is sock, "the gateway dropped the idle client connection"
        assert body["pid"] != pid
        assert r.getheader("X-Slurmgate-Cold-Start") is not None
        g.seen_pids.add(body["pid"])
    finally:
        conn.close()


def test_request_while_the_service_is_stopping_is_held_and_served_by_a_new_start(
        gateway, tmp_path):
    # a service that takes stop_grace (2 s) to go away: its script ignores SIGTERM
    script = write_script(tmp_path / "slowstop.sh", f"""#!/bin/sh
trap '' TERM
'{DEMO_SH}' "$@" &
while :; do sleep 0.2; done
""")
    svc = demo_service(bash_file=str(script), timeout=1, stop_grace=2)
    g = gateway([svc])
    g.service_pid()
    old = g.svc()["instances"][0]["pid"]
    g.wait_state("stopping", timeout=1 + 3)
    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200, r
    assert r.json()["port"] == svc["local_port"], "the new start must use the configured port"
    info = g.svc()
    assert info["starts"] == 2, info
    assert [i["port"] for i in info["instances"]] == [svc["local_port"]], info
    assert not pid_alive(old), "the old instance was not stopped before the new one started"
    g.seen_pids.add(r.json()["pid"])
