"""The gateway's own read endpoints as users met them (issue 12): the
history behind the status page (problem 9), the shape of the JSON answers
(problem 11), what a key-less client may read (problem 10, public_status)
and the service logs (/api/services/<name>/logs)."""
import json
import re
import threading

from conftest import SLACK, Gateway, demo_service, run_check, sse_lines, wait_until
from test_metrics import scrape


def metrics_requests(g, service="demo"):
    """The requests /metrics counted for SERVICE (all status codes)."""
    f = scrape(g).get("slurmgate_requests_total")
    return sum(v for _, labels, v in (f.samples if f else []) if labels.get("service") == service)


# --------------------------------------------------------------------------
# problem 9: /api/history dropped the requests of the first 10-20 s
# --------------------------------------------------------------------------

def test_history_counts_requests_right_after_start(gateway):
    """1,000 requests counted in /metrics showed as 0 in /api/history: the
    first sample started counting only when it was taken. Requests made
    right after the start must be in the first sample, and the history's
    sum must equal /metrics' count."""
    g = gateway()
    n = 40
    for _ in range(n):
        r = g.get("/llm/health", timeout=20)
        assert r.status == 200, r

    def first_sample():
        h = g.get("/api/history").json()["services"]["demo"]
        return h if h["t"] else None
    h = wait_until(first_sample, 15 * SLACK, interval=0.25, msg="the first history sample")
    step = g.get("/api/history").json()["step_seconds"]
    counted = metrics_requests(g)
    assert counted == n, counted
    assert round(h["rps"][0] * step) == n, h
    assert h["requests"][0] == n, h
    assert sum(h["requests"]) == counted, h


# --------------------------------------------------------------------------
# problem 11: JSON answers
# --------------------------------------------------------------------------

LONG_FRACTION = re.compile(r"\d\.\d{4,}")   # 58.82375594399997, 0.10000000000000001


def test_json_answers_end_with_a_newline_carry_name_once_and_round_floats(gateway):
    """No trailing newline; both "Name" and "name" in /api; unrounded floats
    (58.82375594399997)."""
    g = gateway(env={"DEMO_DELAY": "0"})
    assert g.get("/llm/health", timeout=20).status == 200   # an instance: its age, idle time

    def first_sample():
        return g.get("/api/history").json()["services"]["demo"]["t"] or None
    wait_until(first_sample, 15 * SLACK, interval=0.25, msg="a history sample (floats)")
    for path in ("/api/services", "/api/services/demo", "/api/history", "/api/health", "/info",
                 "/check_llm", "/v1/models", "/api/nope", "/nope"):
        r = g.get(path)
        assert r.header("Content-Type", "").startswith("application/json"), (path, r)
        assert r.body.endswith(b"}\n"), (path, r.body[-40:])
        assert not LONG_FRACTION.search(r.text), (path, LONG_FRACTION.search(r.text).group(0))
        json.loads(r.body)
    svc = g.get("/api/services/demo").json()
    assert svc["name"] == "demo" and "Name" not in svc, svc
    assert isinstance(svc["idle_seconds_left"], (int, float)), svc
    assert isinstance(svc["instances"][0]["age_seconds"], (int, float)), svc
    for s in g.get("/api/services").json()["services"]:
        assert s["name"] == "demo" and "Name" not in s, s
    # the seed's answers keep its "Name"
    assert [s["Name"] for s in g.get("/info").json()["services"]] == ["demo"]
    assert g.get("/check_llm").json()["Name"] == "demo"
    # the event stream's state has the same shape
    conn = g.connection()
    try:
        conn.request("GET", "/api/events")
        resp = conn.getresponse()
        line = b""
        while not line.startswith(b"data: "):
            line = resp.fp.readline()
            assert line, "the event stream ended"
        state = json.loads(line[6:])
    finally:
        conn.close()
    for s in state["services"]:
        assert "name" in s and "Name" not in s, s
    assert not LONG_FRACTION.search(line.decode()), line


# --------------------------------------------------------------------------
# problem 10: what a key-less client may read (public_status)
# --------------------------------------------------------------------------

KEY = "user-key-0123456789"
ADMIN = "admin-T0ken-0123456789"
STATE_PATHS = ("/info", "/check_llm", "/api/services", "/api/services/demo", "/api/history",
               "/api/events", "/metrics")


def _get(g, path, token=None):
    h = {"Authorization": f"Bearer {token}"} if token else {}
    if path == "/api/events":   # a stream: the head is enough
        conn = g.connection()
        try:
            conn.request("GET", path, headers=h)
            r = conn.getresponse()
            return r.status
        finally:
            conn.close()
    return g.get(path, headers=h).status


def test_state_is_public_by_default_with_api_keys(gateway):
    """Today's behaviour stays the default: with api_keys set, the state is
    still readable without a key (public_status defaults to true), and says so."""
    g = gateway(api_keys=[{"key": KEY}])
    for path in STATE_PATHS:
        assert _get(g, path) == 200, path
    assert g.get("/api/services").json()["public_status"] is True
    assert g.get("/llm/health").status == 401   # the services still need the key


def test_public_status_false_needs_a_key_for_the_state(gateway, tmp_path):
    """public_status false: /info, /check_, /api, /metrics need an api key or
    the admin token (401 without); /api/health and the page's HTML stay open."""
    g = gateway(api_keys=[{"key": KEY, "services": ["demo"]}], admin_token=ADMIN, public_status=False)
    for path in STATE_PATHS:
        assert _get(g, path) == 401, path
        assert _get(g, path, "wrong-key") == 401, path
        assert _get(g, path, KEY) == 200, path
        assert _get(g, path, ADMIN) == 200, path
    r = g.get("/info")
    assert r.header("WWW-Authenticate", "").lower().startswith("bearer"), dict(r.headers)
    assert "public_status" in r.json()["error"], r.json()
    assert g.get("/api/health").status == 200
    assert g.get("/status").status == 200          # the page holds no data
    assert g.get("/api/services", headers={"Authorization": f"Bearer {KEY}"}).json()["public_status"] is False
    # the admin endpoints still need the admin token, not just a key
    assert g.get("/enable_service_management", headers={"Authorization": f"Bearer {KEY}"}).status == 401


def test_public_status_false_without_keys_or_token_is_refused_by_check(tmp_path):
    g = Gateway(tmp_path, [demo_service()], public_status=False)
    r = run_check(g.config_path)
    assert r.returncode == 1 and "public_status" in r.stdout + r.stderr, r
    g2 = Gateway(tmp_path, [demo_service()], name="gw2", public_status="no")
    r = run_check(g2.config_path)
    assert r.returncode == 1 and "public_status" in r.stdout + r.stderr, r


# --------------------------------------------------------------------------
# service logs: /api/services/<name>/logs
# --------------------------------------------------------------------------

def chatty_script(tmp_path, body, name="chatty.sh"):
    """A start script that writes BODY's output, then runs the demo service
    (not with exec for the ticker variants: what users really write)."""
    p = tmp_path / name
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(0o755)
    return str(p)


def test_service_logs_show_stdout_and_stderr_and_follow(gateway, tmp_path):
    """llama-swap's logs: the tail of a local service's stdout and stderr,
    bounded by ?lines=N, and ?follow=1 as SSE with what comes next."""
    script = chatty_script(tmp_path, """echo "hello on stdout, port $1"
echo "hello on stderr" >&2
( i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.2; done ) &
exec "$DEMO" "$@"
""")
    g = gateway([demo_service(bash_file=script)], env={"DEMO": str(__import__("conftest").DEMO_SH)})
    assert g.get("/api/services/demo/logs").text == ""   # nothing started yet
    assert g.get("/llm/health", timeout=20).status == 200

    def has(text):
        r = g.get("/api/services/demo/logs")
        return r if r.status == 200 and text in r.text else None
    r = wait_until(lambda: has("tick 3"), 10 * SLACK, interval=0.1, msg="the ticks in the log")
    assert r.header("Content-Type", "").startswith("text/plain"), r
    lines = r.text.splitlines()
    assert any(ln.startswith("[0] --- slurmgate: started ") for ln in lines), lines
    assert any(ln.startswith("[0] hello on stdout, port ") for ln in lines), lines
    assert "[0] hello on stderr" in lines, lines
    one = g.get("/api/services/demo/logs?lines=1").text
    assert one.count("\n") == 1 and one.startswith("[0] tick "), one
    assert g.get("/api/services/demo/logs?lines=0").text == ""
    for bad in ("abc", "-1", "2001", ""):
        r = g.get(f"/api/services/demo/logs?lines={bad}")
        assert r.status == 400 and "lines" in r.json()["error"], (bad, r)
    assert g.post("/api/services/demo/logs").status == 405
    assert g.request("HEAD", "/api/services/demo/logs?follow=1", timeout=5).status == 200   # no stream
    assert g.get("/api/services/nope/logs").status == 404

    # follow: the tail first (2 lines), then ticks that were not written yet
    last = int(g.get("/api/services/demo/logs?lines=1").text.split()[-1])
    got = sse_lines(g.port, "/api/services/demo/logs?lines=2&follow=1",
                     lambda ls: any(x.startswith("[0] tick ") and int(x.split()[-1]) >= last + 5 for x in ls),
                     10 * SLACK)
    assert len(got) >= 2 and all(x.startswith("[0] tick ") for x in got), got
    ticks = [int(x.split()[-1]) for x in got]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks), ticks   # no line twice


def test_service_logs_keep_a_failed_start_and_stay_bounded(gateway, tmp_path):
    """What a start script said before it failed is there after it exited;
    a chatty service keeps only the newest lines."""
    script = chatty_script(tmp_path, """i=0; while [ $i -lt 5000 ]; do i=$((i+1)); echo "line $i of noise"; done
echo "CUDA error: out of memory" >&2
exit 3
""")
    g = gateway([demo_service(bash_file=script)])
    r = g.get("/llm/health", timeout=20)
    assert r.status == 502, r
    assert r.body.endswith(b"}\n"), r.body   # the proxy's JSON error ends with a newline too
    text = g.get("/api/services/demo/logs").text
    lines = text.splitlines()
    assert len(lines) == 100, len(lines)
    assert lines[-2] == "[0] CUDA error: out of memory", lines[-3:]
    assert lines[-1] == "[0] --- slurmgate: the process exited with status 3 ---", lines[-3:]
    most = g.get("/api/services/demo/logs?lines=2000").text.splitlines()
    assert len(most) == 2000 and most[0] != "[0] line 1 of noise", most[:2]


def test_service_logs_need_the_admin_token_when_one_is_set(gateway):
    """Logs may hold secrets: with an admin_token they need it (an api key
    is not enough), even while the state is public."""
    g = gateway(admin_token=ADMIN, api_keys=[{"key": KEY}])
    assert g.get("/api/services/demo").status == 200            # public state
    r = g.get("/api/services/demo/logs")
    assert r.status == 401, r
    assert g.get("/api/services/demo/logs", headers={"Authorization": f"Bearer {KEY}"}).status == 401
    assert g.get("/api/services/demo/logs", headers={"Authorization": f"Bearer {ADMIN}"}).status == 200
    assert g.get("/api/services/demo/logs?follow=1").status == 401


def test_service_logs_of_a_slurm_service_without_a_job_are_empty(tmp_path):
    """A Slurm service's logs come from its job's output file (tests in
    slurm/test_slurm_logs.py); before any job, there is nothing to show."""
    from conftest import seed_config_dict
    cfg = seed_config_dict()
    g = Gateway(tmp_path, cfg["Services"], name="seed",
                **{k: v for k, v in cfg.items() if k != "Services"})
    try:
        g.start()
        r = g.get("/api/services/translation_service/logs")
        assert r.status == 200 and r.text == "", r
    finally:
        g.close()


def test_followed_log_ends_when_its_service_leaves_the_config(gateway):
    """A reload that removes the service ends its log stream (an "end"
    event, then the response ends); the gateway keeps serving."""
    import http.client
    import os
    import signal
    other = demo_service(name="other", route="tr")
    g = gateway([demo_service(), other])
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10 * SLACK)
    try:
        conn.request("GET", "/api/services/demo/logs?follow=1")
        r = conn.getresponse()
        assert r.status == 200
        assert r.readline() == b"retry: 2000\n"
        cfg = dict(g.config)
        cfg["Services"] = [other]
        tmp = g.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg))
        os.replace(tmp, g.config_path)
        g.proc.send_signal(signal.SIGHUP)
        rest = r.read()   # to the end of the response
        assert b"event: end\ndata: the service left the config\n" in rest, rest
    finally:
        conn.close()
    assert g.get("/api/services/demo/logs").status == 404
    assert g.get("/api/services/other/logs").status == 200
