"""With an admin_token, the management endpoints, /demand_ and the API's
start/stop need `Authorization: Bearer <token>` (else 401); reading state and
using the services stays open."""
import pytest

from conftest import demo_service, pid_alive, wait_until

TOKEN = "s3cret-T0ken"

ADMIN = [
    ("GET", "/enable_service_management"),
    ("GET", "/disable_service_management"),
    ("GET", "/kill_disable_service_management"),
    ("GET", "/demand_llm"),
    ("POST", "/api/services/demo/start"),
    ("POST", "/api/services/demo/stop"),
]

BAD_AUTH = [
    None,                               # no header at all
    f"Bearer {TOKEN}x",                 # longer
    f"Bearer {TOKEN[:-1]}",             # a prefix of the token
    "Bearer ",                          # empty token
    "Bearer wrong",
    f"Basic {TOKEN}",                   # the token, but not as a bearer token
    TOKEN,                              # no scheme
]


def admin_gateway(gateway):
    return gateway([demo_service()], admin_token=TOKEN)


@pytest.mark.parametrize("method,path", ADMIN)
def test_admin_endpoints_refuse_missing_or_wrong_token_with_401(gateway, method, path):
    g = admin_gateway(gateway)
    for auth in BAD_AUTH:
        headers = {} if auth is None else {"Authorization": auth}
        r = g.request(method, path, headers=headers)
        assert r.status == 401, (auth, r)
        assert r.header("WWW-Authenticate", "").lower().startswith("bearer"), dict(r.headers)
        assert "error" in r.json()
    # nothing happened
    info = g.get("/info").json()
    assert info["service_management"] is True, info
    svc = g.svc()
    assert svc["starts"] == 0 and svc["state"] == "stopped", svc


@pytest.mark.parametrize("method,path", ADMIN)
def test_admin_endpoints_accept_the_token(gateway, method, path):
    g = admin_gateway(gateway)
    r = g.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status != 401, r
    expected = {"/demand_llm": (200, 503)}.get(path, (200, 202))
    assert r.status in expected, r
    if path.endswith("/start") or path == "/demand_llm":
        g.wait_state("ready", timeout=10)
        g.record_pids()


def test_the_bearer_scheme_is_case_insensitive(gateway):
    g = admin_gateway(gateway)
    r = g.get("/disable_service_management", headers={"Authorization": f"bearer {TOKEN}"})
    assert r.status == 200, r


def test_api_start_and_stop_with_token(gateway):
    g = admin_gateway(gateway)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = g.post("/api/services/demo/start", headers=auth)
    assert r.status == 202, r
    g.wait_state("ready", timeout=10)
    pid = g.service_pid()
    r = g.post("/api/services/demo/stop", headers=auth)
    assert r.status == 202, r
    g.wait_state("stopped", timeout=8)
    wait_until(lambda: not pid_alive(pid), 5)


def test_reading_state_and_using_services_need_no_token(gateway):
    g = admin_gateway(gateway)
    for path in ("/info", "/check_llm", "/api/health", "/api/services", "/api/services/demo"):
        r = g.get(path)
        assert r.status == 200, (path, r)
    # a request for the service itself starts it without any token
    r = g.get("/llm/pid")
    assert r.status == 200, r
    g.seen_pids.add(r.json()["pid"])


def test_admin_token_is_not_needed_when_none_is_configured(gateway):
    g = gateway()
    assert g.get("/disable_service_management").status == 200
    assert g.get("/enable_service_management").status == 200
    assert g.post("/api/services/demo/stop").status == 202
