"""Instance lifetime (issue 8, bugs 1, 2, 3 and 9).

An instance is freed only when its launcher said "gone" and nothing refers
to it any more (exchanges, pooled upstream connections, probes, timers).
The start scripts here run the server as a child WITHOUT exec, as most
real job scripts do (`module load ...; python -m server`).

- test_uaf_instance_gone_inflight: the service dies with a request in
  flight; the request gets a clean 502 naming the cause, the gateway keeps
  running (and the ASan build stays clean).
- test_uaf_pool_loop: the instance dies with several idle pooled upstream
  connections; none of them touches the freed instance afterwards.
- test_removed_service_restarts: a min_instances=1 service removed by
  SIGHUP stops and never starts again; /info and /api agree.
- test_cold_burst_spread: 300 requests held for a cold start with
  max_instances 4 and target_concurrency 100 are spread over the
  instances as they become ready.
"""
import os
import signal
import threading
import time

import pytest

from conftest import (DEMO_BIN, SLACK, demo_service, http_request, pid_alive, pids_with_arg,
                      port_listening, reload_services, wait_until, write_script)




def nonexec_script(tmp_path):
    """A start script that runs the server as a child (no exec) and then
    says how it ended, as real job scripts do."""
    return write_script(tmp_path / "nonexec.sh",
                        "#!/bin/sh\n"
                        "echo \"loading the model\" >&2\n"
                        f"\"{DEMO_BIN}\" --port \"$1\"\n"
                        "echo \"server ended with status $?\" >&2\n"
                        "exit 1\n")


def gateway_alive(g):
    assert g.proc.poll() is None, f"the gateway died:\n{g.log()}"
    assert g.get("/api/health", timeout=5).status == 200


def script_pid(g):
    """The pid the gateway started (the start script's shell)."""
    insts = g.svc()["instances"]
    assert len(insts) == 1, insts
    return insts[0]["pid"]


# --------------------------------------------------------------------------
# bug 1: the service dies with a request in flight
# --------------------------------------------------------------------------

@pytest.mark.parametrize("victim", ["server", "script"])
def test_uaf_instance_gone_inflight(gateway, tmp_path, victim):
    svc = demo_service(bash_file=str(nonexec_script(tmp_path)))
    g = gateway([svc])
    server = g.service_pid()          # the demo server (the script's child)
    shell = script_pid(g)             # what the gateway started
    assert server != shell, "the script must not exec its server"
    g.seen_pids.update({server, shell})

    result = {}

    def slow():
        try:
            result["r"] = g.get("/llm/slow?ms=8000", timeout=15)
        except Exception as e:  # noqa: BLE001 - reported below
            result["e"] = e

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    wait_until(lambda: g.svc()["in_flight"] == 1, 5 * SLACK, msg="the request in flight")
    os.kill(server if victim == "server" else shell, signal.SIGKILL)
    t.join(15 * SLACK)
    assert not t.is_alive(), "the request in flight got no answer"
    assert "e" not in result, result
    r = result["r"]
    assert r.status == 502, (r, g.log())
    err = r.json()["error"]
    # names the cause: the instance's end, or the connection that broke with
    # it (whichever the gateway saw first)
    assert err.startswith("service demo: "), err
    assert any(w in err for w in ("instance ended", "closed", "refused", "reset")), err
    wait_until(lambda: not pid_alive(server) and not pid_alive(shell), 5 * SLACK,
               msg="the service's processes to end")
    gateway_alive(g)
    # the gateway still serves: the next request starts the service again
    r = g.get("/llm/health", timeout=15)
    assert r.status == 200, (r, g.log())
    gateway_alive(g)
    assert "AddressSanitizer" not in g.log(tail=10 ** 7)


# --------------------------------------------------------------------------
# bug 2: several idle pooled connections when the instance dies
# --------------------------------------------------------------------------

def test_uaf_pool_loop(gateway, tmp_path):
    svc = demo_service(bash_file=str(nonexec_script(tmp_path)))
    g = gateway([svc])
    assert g.get("/llm/health").status == 200
    shell = script_pid(g)
    g.seen_pids.add(shell)

    # 4 requests at once: 4 upstream connections, all parked in the pool after
    out = []

    def one(k):
        out.append(g.get(f"/llm/slow?ms=500&k={k}", timeout=10).status)

    ts = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10 * SLACK)
    assert out == [200] * 4, out
    # the gateway's sockets to the instance's port, ESTABLISHED
    port = svc["local_port"]

    def pooled():
        n = 0
        for line in open("/proc/net/tcp").read().splitlines()[1:]:
            f = line.split()
            if f[3] == "01" and int(f[2].split(":")[1], 16) == port:
                n += 1
        return n

    wait_until(lambda: pooled() >= 4, 5 * SLACK, msg="4 pooled upstream connections")
    # the start script dies: its group is killed and the instance is gone,
    # while 4 idle connections still point at it
    os.kill(shell, signal.SIGKILL)
    wait_until(lambda: g.svc()["instances"] == [], 10 * SLACK, msg="the instance gone")
    wait_until(lambda: pooled() == 0, 5 * SLACK, msg="every pooled connection closed")
    gateway_alive(g)
    # the next request starts a fresh instance and is served
    r = g.get("/llm/health", timeout=15)
    assert r.status == 200, (r, g.log())
    gateway_alive(g)
    assert "AddressSanitizer" not in g.log(tail=10 ** 7)


# --------------------------------------------------------------------------
# bug 3: a removed service with min_instances starts again
# --------------------------------------------------------------------------

def test_removed_service_restarts(gateway):
    keep = demo_service(name="keep", route="keep")
    gone = demo_service(name="gone", route="gone", min_instances=1)
    g = gateway([keep, gone])
    port = gone["local_port"]
    # min_instances: it starts by itself
    wait_until(lambda: g.state("gone") == "ready", 10 * SLACK, msg="gone ready (min_instances)")
    pid = g.svc("gone")["instances"][0]["pid"]
    g.seen_pids.add(pid)
    reload_services(g, [keep])
    wait_until(lambda: not pid_alive(pid) and not port_listening(port), 10 * SLACK,
               msg="the removed service's process to end")
    # it never comes back: watch for twice the time a start takes here
    deadline = time.monotonic() + 2.0 * SLACK
    while time.monotonic() < deadline:
        again = pids_with_arg("--port", str(port))
        assert not again, f"the removed service started again: {again}\n{g.log()}"
        assert not port_listening(port), f"something listens on the removed port\n{g.log()}"
        time.sleep(0.1)
    starts = [ln for ln in g.log(tail=10 ** 8).splitlines() if "svc gone[" in ln and ": starting (" in ln]
    assert len(starts) == 1, starts
    info = g.get("/info").json()
    assert [s["name"] for s in info["services"]] == ["keep"], info
    assert g.get("/api/services/gone").status == 404
    gateway_alive(g)


# --------------------------------------------------------------------------
# bug 9: a cold burst goes to one instance
# --------------------------------------------------------------------------

def test_cold_burst_spread(port_block, gateway):
    p = port_block(4)
    svc = demo_service(port=p, max_instances=4, target_concurrency=100, timeout=60,
                       scale_down_delay=600, scale_up_delay=600, start_timeout=30)
    # a 1 s "model load": every request of the burst is held
    g = gateway([svc], env={"DEMO_DELAY": "1"}, max_connections=2000)
    n = 300
    results = []
    lock = threading.Lock()
    go = threading.Event()

    def one(k):
        go.wait()
        try:
            r = http_request(g.port, "GET", f"/llm/slow?ms=3000&k={k}", timeout=40 * SLACK)
            rec = r.status
        except Exception as e:  # noqa: BLE001 - a failed request is a result
            rec = repr(e)
        with lock:
            results.append(rec)

    ts = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n)]
    for t in ts:
        t.start()
    go.set()
    # every request is held or being served; then all instances serve a share
    samples = []
    first_ready = {}    # index -> when this poll first saw it ready
    got_share = {}      # index -> when it first held its share (100)

    def spread():
        info = g.svc()
        now = time.monotonic()
        inflight = {i["index"]: i["in_flight"] for i in info["instances"] if i["state"] == "ready"}
        for k, v in inflight.items():
            first_ready.setdefault(k, now)
            if v >= 100:
                got_share.setdefault(k, now)
        # never more than the target on one while another ready one has fewer
        if inflight and max(inflight.values()) > 100:
            assert min(inflight.values()) >= 100, f"unbalanced while ready: {inflight}"
        samples.append((info["waiting"], inflight))
        return len(inflight) == 3 and info["waiting"] == 0 and sum(inflight.values()) == n

    wait_until(spread, 20 * SLACK, interval=0.05, msg="300 requests spread over 3 ready instances")
    lag = {k: round(got_share[k] - first_ready[k], 3) for k in got_share}
    assert sorted(lag) == [0, 1, 2], (lag, samples[-5:])
    # each takes its share within its first second of being ready
    assert max(lag.values()) < 1.0, lag
    for t in ts:
        t.join(40 * SLACK)
    assert not any(t.is_alive() for t in ts)
    bad = [r for r in results if r != 200]
    assert not bad, f"{len(bad)} of {n} failed: {bad[:5]}"
    info = g.svc()
    served = {i["index"]: i["served"] for i in info["instances"]}
    assert sum(served.values()) == n, served
    assert info["starts"] == 3, info
    # each started instance takes its share: 100 each (target 100)
    assert sorted(served.values()) == [100, 100, 100], f"unbalanced: {served}; samples {samples[-5:]}"
    print(f"\nserved per instance {served}; seconds from ready to its share {lag}")


# --------------------------------------------------------------------------
# item 5: a connection that closes before any response byte (an ssh forward
# whose channel cannot open) takes the instance out of rotation at once
# --------------------------------------------------------------------------

EARLY_CLOSE_SERVER = r'''
import http.server, sys

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        # anything else: close without a byte, as ssh does when the channel fails

    def log_message(self, *a):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def test_early_close_takes_instance_out_of_rotation(gateway, tmp_path):
    server = tmp_path / "early_close.py"
    server.write_text(EARLY_CLOSE_SERVER)
    script = write_script(tmp_path / "early_close.sh",
                          f"#!/bin/sh\nexec /usr/bin/python3 {server} \"$1\"\n")
    g = gateway([demo_service(bash_file=str(script), health_interval=60)])
    assert g.get("/llm/health", timeout=15).status == 200
    r = g.get("/llm/anything", timeout=15)
    assert r.status == 502, r
    assert "closed the connection" in r.json()["error"], r.json()
    log = g.log(tail=10 ** 7)
    # out of rotation at once (not after two failed health checks), then
    # back when a probe passed
    assert "ready -> unhealthy (upstream closed the connection)" in log, log
    assert "unhealthy -> ready (healthy again)" in log, log
    wait_until(lambda: g.state() == "ready", 5 * SLACK, msg="back in rotation")
    gateway_alive(g)
