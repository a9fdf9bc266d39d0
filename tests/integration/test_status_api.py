"""The gateway's own read endpoints as users met them (issue 12): the
history behind the status page (problem 9), the shape of the JSON answers
(problem 11), what a key-less client may read (problem 10, public_status)
and the service logs (/api/services/<name>/logs)."""
import json
import re
import threading

from conftest import SLACK, Gateway, demo_service, run_check, wait_until
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
