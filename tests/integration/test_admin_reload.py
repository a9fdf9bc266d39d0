"""An HPC admin's reloads: a service renamed (same route and port, a new
name), or removed and added back, while its old instance still shuts down
(a real server takes seconds to exit after SIGTERM and keeps its port till
then). A request that arrives then waits for the port to come free and is
served by the new instance; it never fails on "port still held", and it is
never answered by the old process."""
import json
import signal
import sys
import threading
import time

from conftest import (DEMO_SH, SLACK, demo_service, free_port_block, http_request, pid_alive,
                      reload_services, wait_until, write_script)

# A server that, like vLLM or TGI, keeps listening for a while after SIGTERM.
SLOW_EXIT = r'''
import http.server, json, os, signal, sys, threading
port = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
signal.signal(signal.SIGTERM, lambda *a: threading.Timer(float(os.environ.get("LINGER", "2")),
                                                          lambda: os._exit(0)).start())
srv.serve_forever()
'''


def slow_exit_service(tmp_path, **kw):
    py = tmp_path / "slow_exit.py"
    py.write_text(SLOW_EXIT)
    sh = write_script(tmp_path / "slow_exit.sh",
                      f'#!/bin/sh\nexec "{sys.executable}" "{py}" "$1"\n')
    return demo_service(bash_file=str(sh), stop_grace=10, **kw)


def test_renamed_service_same_port_waits_for_the_old_instance(gateway, tmp_path):
    old = slow_exit_service(tmp_path, name="llama", route="llm")
    g = gateway([old])
    pid = g.service_pid()
    # the admin renames it; the route and the port stay
    reload_services(g, [dict(old, name="llama-v2")])
    result = {}

    def request():
        result["r"] = http_request(g.port, "GET", "/llm/pid", timeout=20 * SLACK)

    t = threading.Thread(target=request, daemon=True)
    t.start()
    # while it waits, the API says for what
    info = wait_until(lambda: g.svc("llama-v2")["waiting"] == 1 and g.svc("llama-v2"),
                      3 * SLACK, msg="the request to wait")
    assert "starts once llama[0] (stopping) frees port" in info["reason"], info
    t.join(20 * SLACK)
    r = result["r"]
    assert r.status == 200, (r, g.log())
    new_pid = r.json()["pid"]
    g.seen_pids.add(new_pid)
    assert new_pid != pid, "the request was answered by the removed service's process"
    assert not pid_alive(pid)
    assert g.state("llama-v2") == "ready"
    assert "svc llama-v2: its start waits for llama[0] (stopping) to free port" in g.log(), g.log()


def test_service_removed_and_added_back_waits_for_the_old_instance(gateway, tmp_path):
    svc = slow_exit_service(tmp_path, name="llama", route="llm")
    other = demo_service(name="other", route="other")
    g = gateway([svc, other])
    pid = g.service_pid()
    reload_services(g, [other])
    reload_services(g, [svc, other])   # back, before the old process has exited
    r = g.get("/llm/pid", timeout=20)
    assert r.status == 200, (r, g.log())
    assert r.json()["pid"] != pid, "the request was answered by the removed service's process"
    g.seen_pids.add(r.json()["pid"])


def test_lowered_max_instances_stops_the_instances_above_it(gateway):
    """The admin lowers max_instances (3 -> 1) to give GPUs back: the
    instances above the new maximum drain and stop now, not whenever the
    scaler's scale-down delay or the idle timeout next comes round (under
    steady load: never); the one kept goes on serving."""
    port = free_port_block(3)
    svc = demo_service(port=port, min_instances=3, max_instances=3, timeout=600,
                       scale_down_delay=600)
    g = gateway([svc])

    def ready():
        return sorted(i["index"] for i in g.svc()["instances"] if i["state"] == "ready")

    wait_until(lambda: ready() == [0, 1, 2], 10 * SLACK, msg="three instances ready")
    pids = {i["index"]: i["pid"] for i in g.svc()["instances"]}
    reload_services(g, [dict(svc, min_instances=1, max_instances=1)])
    wait_until(lambda: [i["index"] for i in g.svc()["instances"]] == [0], 5 * SLACK,
               msg="the instances above max_instances to stop")
    wait_until(lambda: not pid_alive(pids[1]) and not pid_alive(pids[2]), 5 * SLACK,
               msg="their processes to end")
    assert g.svc()["instances"][0]["pid"] == pids[0]
    assert g.get("/llm/health").status == 200


def test_new_instance_id_is_not_applied_by_a_reload(gateway):
    """instance_id names the Slurm jobs (sg:<instance_id>:<route>:<index>):
    a reload that changed it would name the next jobs differently from those
    running, and the watch and the next start's scan look for one name. Like
    the listen address and state_dir, it takes a restart."""
    g = gateway(instance_id="gw-a")
    before = g.log(tail=10 ** 8).count("config reloaded")
    cfg = dict(g.config, instance_id="gw-b")
    g.config_path.write_text(json.dumps(cfg))
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: g.log(tail=10 ** 8).count("config reloaded") > before, 5 * SLACK,
               msg="the reload taken")
    assert "a new instance_id takes a restart; still using gw-a" in g.log(), g.log()
    assert g.get("/llm/health").status == 200


def test_request_held_for_a_renamed_service_is_told_to_retry_at_once(gateway, tmp_path):
    """A request waits for a cold start; the admin renames the service (a new
    model version: same route, new name and start script). The held request
    ends with 503 (its service is gone), but with Retry-After: 1 and the
    service that now serves the route, not the 30 s of a route that is gone:
    a client that honours Retry-After (the OpenAI SDKs do) is served by the
    new service at once instead of half a minute later."""
    slow = write_script(tmp_path / "slow.sh", f'#!/bin/sh\nDEMO_DELAY=10 exec "{DEMO_SH}" "$@"\n')
    old = demo_service(name="llama", route="llm", bash_file=str(slow))
    g = gateway([old])
    result = {}

    def held():
        result["r"] = http_request(g.port, "GET", "/llm/health", timeout=20 * SLACK)

    t = threading.Thread(target=held, daemon=True)
    t.start()
    wait_until(lambda: g.svc("llama")["waiting"] == 1, 3 * SLACK, msg="a held request")
    reload_services(g, [dict(old, name="llama-v2", bash_file=str(DEMO_SH))])
    t.join(5 * SLACK)
    assert not t.is_alive(), "the held request was left hanging"
    r = result["r"]
    assert r.status == 503, r
    assert r.header("Retry-After") == "1", r.headers
    assert "llama-v2" in r.json()["error"], r
    r = g.get("/llm/health", timeout=20)
    assert r.status == 200, r


def test_changed_timeout_applies_to_the_idle_clock_already_running(gateway):
    """The admin raises the idle timeout (users complain of cold starts) or
    lowers it (to give GPUs back): the instance that idles now follows the
    new timeout, counted from its last request, as /api's
    idle_seconds_left already claimed; it kept the old one."""
    svc = demo_service(timeout=2)
    g = gateway([svc])
    assert g.get("/llm/health").status == 200
    pid = g.service_pid()
    reload_services(g, [dict(svc, timeout=60)])
    assert g.svc()["idle_seconds_left"] > 50
    # past the old timeout: still there
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert g.state() == "ready", "stopped by the old idle timeout"
        time.sleep(0.2)
    assert g.service_pid() == pid
    reload_services(g, [dict(svc, timeout=1)])
    g.wait_state("stopped", timeout=3)


def test_raised_start_timeout_applies_to_a_start_under_way(gateway, tmp_path):
    """Jobs wait long in a full queue and are given up at start_timeout: the
    admin raises it and reloads. The start under way (a request waits for
    it) follows the new limit, counted from its beginning; it was given up
    at the old one (and the error named the new value)."""
    slow = write_script(tmp_path / "slow.sh", f'#!/bin/sh\nDEMO_DELAY=4 exec "{DEMO_SH}" "$@"\n')
    svc = demo_service(bash_file=str(slow), start_timeout=2)
    g = gateway([svc])
    result = {}

    def held():
        result["r"] = http_request(g.port, "GET", "/llm/health", timeout=30 * SLACK)

    t = threading.Thread(target=held, daemon=True)
    t.start()
    wait_until(lambda: g.svc()["waiting"] == 1, 3 * SLACK, msg="a held request")
    reload_services(g, [dict(svc, start_timeout=30)])
    t.join(20 * SLACK)
    assert not t.is_alive()
    assert result["r"].status == 200, result["r"]
    assert g.svc()["start_failures"] == 0
