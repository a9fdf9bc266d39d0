"""A request for a stopped service starts it, is held until the service is
healthy, then forwarded; everything arriving meanwhile is held too, and the
service is started exactly once."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import (SLACK, demo_service, http_request, pid_alive, wait_until,
                      write_script)


def test_100_concurrent_requests_to_cold_service_all_succeed_with_one_start(gateway):
    # the service needs ~1.5 s to listen: all 100 requests arrive while it starts
    g = gateway(env={"DEMO_DELAY": "1.5"})
    assert g.svc()["starts"] == 0
    assert g.state() == "stopped"

    n = 100
    barrier = threading.Barrier(n, timeout=10 * SLACK)

    def one(i):
        barrier.wait()
        return http_request(g.port, "GET", f"/llm/pid?i={i}", timeout=30 * SLACK)

    with ThreadPoolExecutor(max_workers=n) as ex:
        results = list(ex.map(one, range(n)))

    bad = [r for r in results if r.status != 200]
    assert not bad, f"{len(bad)} of {n} requests failed, e.g. {bad[:3]}"
    pids = {r.json()["pid"] for r in results}
    assert len(pids) == 1, f"answers came from several service processes: {pids}"
    pid = pids.pop()
    g.seen_pids.add(pid)

    # every request was held through the cold start and says so
    missing = [r for r in results if r.header("X-Slurmgate-Cold-Start") is None]
    assert not missing, f"{len(missing)} held responses lack X-Slurmgate-Cold-Start"
    waits = [float(r.header("X-Slurmgate-Cold-Start")) for r in results]
    assert all(w >= 0 for w in waits)
    assert max(waits) >= 0.5, f"cold-start waits look too short for a 1.5 s start: {max(waits)}"

    info = g.svc()
    assert info["starts"] == 1, info
    assert info["state"] == "ready"
    assert info["start_failures"] == 0
    assert [i["pid"] for i in info["instances"]] == [pid]

    # the demo saw every request exactly once (plus health probes)
    stats = g.get("/llm/stats").json()
    assert stats["requests"] >= n + 1, stats


def test_cold_start_header_carries_the_wait_and_warm_requests_have_none(gateway):
    g = gateway(env={"DEMO_DELAY": "0.5"})
    t0 = time.monotonic()
    r = g.get("/llm/health")
    took = time.monotonic() - t0
    assert r.status == 200, r
    cold = r.header("X-Slurmgate-Cold-Start")
    assert cold is not None, dict(r.headers)
    assert 0.4 <= float(cold) <= took + 0.1, (cold, took)

    r2 = g.get("/llm/health")
    assert r2.status == 200
    assert r2.header("X-Slurmgate-Cold-Start") is None, dict(r2.headers)
    assert g.svc()["starts"] == 1


def test_hold_false_gives_immediate_503_with_retry_after_while_starting(gateway):
    g = gateway([demo_service(hold=False)], env={"DEMO_DELAY": "1"})
    r = g.get("/llm/pid", timeout=5)
    assert r.status == 503, r
    assert r.elapsed < 0.8 * SLACK, f"hold=false must answer at once, took {r.elapsed:.2f} s"
    ra = r.header("Retry-After")
    assert ra is not None and ra.strip().isdigit() and int(ra) > 0, dict(r.headers)
    assert "error" in r.json()

    # the start goes on in the background
    g.wait_state("ready", timeout=10)
    r = g.get("/llm/pid")
    assert r.status == 200, r
    g.seen_pids.add(r.json()["pid"])
    assert g.svc()["starts"] == 1


def test_wait_header_0_gives_immediate_503_and_the_start_goes_on(gateway):
    g = gateway(env={"DEMO_DELAY": "1"})
    r = g.get("/llm/pid", headers={"X-Slurmgate-Wait": "0"}, timeout=5)
    assert r.status == 503, r
    assert r.elapsed < 0.8 * SLACK, f"X-Slurmgate-Wait: 0 must answer at once, took {r.elapsed:.2f}"
    ra = r.header("Retry-After")
    assert ra is not None and ra.strip().isdigit() and int(ra) > 0, dict(r.headers)

    # a normal request meanwhile is held and succeeds
    r2 = g.get("/llm/pid", timeout=15)
    assert r2.status == 200, r2
    assert r2.header("X-Slurmgate-Cold-Start") is not None

    # once ready, the header does not refuse anything
    r3 = g.get("/llm/pid", headers={"X-Slurmgate-Wait": "0"})
    assert r3.status == 200, r3
    assert r3.json()["pid"] == r2.json()["pid"]
    assert g.svc()["starts"] == 1


def test_held_requests_show_as_waiting_until_the_service_is_ready(gateway):
    g = gateway(env={"DEMO_DELAY": "2"})
    results = {}

    def one(i):
        results[i] = http_request(g.port, "GET", f"/llm/echo?i={i}", timeout=20 * SLACK)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    info = wait_until(lambda: (lambda s: s if s["waiting"] == 5 else None)(g.svc()), 1.5,
                      msg="5 waiting requests in /api/services")
    assert info["state"] == "starting", info
    for t in threads:
        t.join(20 * SLACK)
    assert sorted(results) == list(range(5))
    for i, r in results.items():
        assert r.status == 200, r
        assert r.json()["query"] == f"i={i}"
    info = g.svc()
    assert info["waiting"] == 0 and info["state"] == "ready", info


def test_stream_requested_cold_is_streamed_once_ready(gateway):
    g = gateway(env={"DEMO_DELAY": "1"})
    conn = g.connection(timeout=15)
    try:
        t0 = time.monotonic()
        conn.request("GET", "/llm/stream?n=8&ms=150")
        r = conn.getresponse()
        assert r.status == 200
        assert r.getheader("X-Slurmgate-Cold-Start") is not None
        times, events = [], []
        while True:
            line = r.readline()
            if not line:
                break
            if line.startswith(b"data:"):
                events.append(line[5:].strip().decode())
                times.append(time.monotonic() - t0)
    finally:
        conn.close()
    assert events == [str(i) for i in range(8)]
    assert times[0] >= 0.8, "the first event came before the service could have started"
    assert times[-1] - times[0] >= 7 * 0.15 * 0.7, f"not streamed: {times}"
    g.record_pids()


def test_admin_stop_while_starting_answers_the_held_requests(gateway):
    g = gateway(env={"DEMO_DELAY": "30"})
    holder = {}
    t = threading.Thread(target=lambda: holder.setdefault(
        "r", http_request(g.port, "GET", "/llm/health", timeout=15 * SLACK)))
    t.start()
    info = wait_until(lambda: (lambda s: s if s["waiting"] == 1 and s["instances"] else None)(
        g.svc()), 3 * SLACK)
    pid = info["instances"][0]["pid"]
    r = g.post("/api/services/demo/stop")
    assert r.status == 202, r
    t.join(10 * SLACK)
    r = holder["r"]
    assert r.status == 503, r
    assert r.header("Retry-After") is not None
    assert "stopped" in r.json()["error"], r
    wait_until(lambda: not pid_alive(pid), 5 * SLACK)
    g.wait_state("stopped", timeout=5)


UNHEALTHY_SERVICE = r'''#!/usr/bin/python3
# listens at once, but /health answers 503 for the first HEALTHY_AFTER seconds
import http.server, json, sys, time
T0 = time.monotonic()
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        up = time.monotonic() - T0
        if self.path == "/health":
            code = 200 if up >= DELAY else 503
        else:
            code = 200
        body = json.dumps({"path": self.path, "uptime": up, "healthy": up >= DELAY}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def test_requests_are_held_until_the_health_check_passes(gateway, tmp_path):
    script = tmp_path / "unhealthy.py"
    write_script(script, UNHEALTHY_SERVICE)
    wrapper = write_script(tmp_path / "unhealthy.sh", f"#!/bin/sh\nexec '{script}' \"$1\" 1.0\n")
    g = gateway([demo_service(bash_file=str(wrapper), check_health_path="health")])
    r = g.get("/llm/work", timeout=15)
    assert r.status == 200, r
    body = r.json()
    assert body["path"] == "/work"
    assert body["healthy"] is True, f"forwarded before the health check passed: {body}"
    assert r.header("X-Slurmgate-Cold-Start") is not None
    g.record_pids()
