"""API keys: with `api_keys` (inline or from `api_keys_file`), requests to
services (/<route>/..., /v1/...) need "Authorization: Bearer <key>": 401
without one or with an unknown one, 403 for a key limited to other services.
The admin token (admin_token or admin_token_file) is never an api key; the
config rejects a key equal to it. /v1/models lists only what the key may
use. The Authorization header is not forwarded when keys are set. A key or
token file readable by group/others draws a warning."""
import json
import signal

from conftest import SLACK, demo_service, http_request, run_check, wait_until

K_ALL = "sk-all-0123456789abcdef"
K_OTHER = "sk-other-0123456789"
K_DEMO = "sk-demo-0123456789"
ADMIN = "admin-secret-token-42"


def bearer(k):
    return {"Authorization": f"Bearer {k}"}


def services():
    return [demo_service(name="demo", route="llm", aliases=["gpt-4o-mini"]),
            demo_service(name="other", route="other", aliases=["embedder"])]


def keyed(gateway, **top):
    cfg = {"api_keys": [{"key": K_ALL},
                        {"key": K_OTHER, "services": ["other"]},
                        {"key": K_DEMO, "services": ["demo"]}],
           "admin_token": ADMIN}
    cfg.update(top)
    return gateway(services(), **cfg)


def post_json(g, path, obj, headers=None):
    h = {"Content-Type": "application/json", **(headers or {})}
    return http_request(g.port, "POST", path, body=json.dumps(obj).encode(), headers=h,
                        timeout=15 * SLACK)


def assert_401(r):
    assert r.status == 401, r
    www = r.header("WWW-Authenticate") or ""
    assert www.lower().startswith("bearer"), dict(r.headers)


def assert_openai_error(r, status):
    assert r.status == status, r
    e = r.json()["error"]
    assert isinstance(e, dict) and e.get("message") and e.get("type") and "code" in e, r.json()
    return e


def starts(g, name):
    return g.svc(name)["starts"]


# --------------------------------------------------------------------------
# /<route>/...
# --------------------------------------------------------------------------

def test_route_requests_need_a_key_that_may_use_the_service(gateway):
    g = keyed(gateway)
    for h in ({}, bearer("sk-not-a-key-at-all"), {"Authorization": f"Basic {K_ALL}"},
              {"Authorization": K_ALL}, bearer(K_ALL + "x"), bearer(K_ALL[:-1]),
              bearer(""), {"Authorization": "Bearer"}):
        r = g.get("/llm/health", headers=h)
        assert_401(r)
        assert "error" in r.json()
    # refused requests start nothing
    assert starts(g, "demo") == 0

    r = g.get("/llm/health", headers=bearer(K_OTHER))
    assert r.status == 403, r
    assert "error" in r.json()
    assert starts(g, "demo") == 0

    assert g.get("/llm/health", headers=bearer(K_ALL)).status == 200
    assert g.get("/llm/health", headers=bearer(K_DEMO)).status == 200
    assert g.get("/other/health", headers=bearer(K_OTHER)).status == 200
    assert g.get("/other/health", headers=bearer(K_DEMO)).status == 403
    # the auth scheme is case-insensitive (RFC 7235)
    assert g.get("/llm/health", headers={"Authorization": f"bearer {K_ALL}"}).status == 200


def test_admin_token_is_not_an_api_key_and_api_keys_are_not_admin(gateway):
    g = keyed(gateway)
    assert_401(g.get("/llm/health", headers=bearer(ADMIN)))
    assert_401(g.get("/v1/models", headers=bearer(ADMIN)))
    assert_openai_error(post_json(g, "/v1/chat/completions", {"model": "demo"}, bearer(ADMIN)), 401)
    assert starts(g, "demo") == 0
    # an api key does not open the admin endpoints
    assert_401(g.post("/api/services/demo/start", headers=bearer(K_ALL)))
    assert_401(g.get("/demand_llm", headers=bearer(K_ALL)))
    assert starts(g, "demo") == 0
    r = g.post("/api/services/demo/start", headers=bearer(ADMIN))
    assert r.status == 202, r
    g.wait_state("ready")


def test_key_check_comes_before_the_waiting_page_and_the_feedback_stream(gateway):
    g = keyed(gateway)
    r = g.get("/llm/", headers={"Accept": "text/html"})
    assert_401(r)
    r = g.get("/llm/stream", headers={"Accept": "text/event-stream"})
    assert_401(r)
    r = g.get("/llm/stream", headers={"Accept": "text/event-stream", **bearer(K_OTHER)})
    assert r.status == 403, r
    assert starts(g, "demo") == 0


def test_authorization_is_not_forwarded_when_keys_are_set(gateway):
    g = keyed(gateway)
    r = g.get("/llm/echo", headers=bearer(K_ALL))
    assert r.status == 200, r
    hdrs = r.json()["headers"]
    assert "authorization" not in hdrs, hdrs
    r = g.request("POST", "/llm/echo", body=b"x", headers=bearer(K_DEMO))
    assert "authorization" not in r.json()["headers"], r.json()["headers"]


ECHO_SERVICE = r'''#!/usr/bin/python3
# a tiny service: every path answers with the request's headers as JSON
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        out = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": body.decode("utf-8", "replace")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = answer
    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def test_authorization_is_not_forwarded_through_the_v1_front(gateway, tmp_path):
    script = tmp_path / "echo_service.py"
    script.write_text(ECHO_SERVICE)
    script.chmod(0o755)
    svc = demo_service(name="echo", route="echo", bash_file=str(script), aliases=["echo-model"])
    g = gateway([svc], api_keys=[{"key": K_ALL}])
    r = post_json(g, "/v1/chat/completions", {"model": "echo-model", "messages": []}, bearer(K_ALL))
    assert r.status == 200, r
    o = r.json()
    assert o["path"] == "/v1/chat/completions", o
    assert "authorization" not in o["headers"], o["headers"]
    assert json.loads(o["body"])["model"] == "echo-model", o


def test_authorization_is_forwarded_without_keys_when_the_service_opts_in(gateway):
    g = gateway([dict(s, forward_authorization=True) for s in services()])
    r = g.get("/llm/echo", headers=bearer("the-service-own-token"))
    assert r.status == 200, r
    assert r.json()["headers"].get("authorization") == "Bearer the-service-own-token"


# --------------------------------------------------------------------------
# /v1
# --------------------------------------------------------------------------

def test_v1_requests_need_a_key_with_openai_errors(gateway):
    g = keyed(gateway)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert_openai_error(post_json(g, "/v1/chat/completions", body), 401)
    assert_openai_error(post_json(g, "/v1/chat/completions", body, bearer("sk-wrong-000000")), 401)
    assert_openai_error(post_json(g, "/v1/chat/completions", body, bearer(K_OTHER)), 403)
    assert starts(g, "demo") == 0
    r = post_json(g, "/v1/chat/completions", body, bearer(K_DEMO))
    assert r.status == 200, r
    r = post_json(g, "/v1/embeddings", {"model": "embedder", "input": "x"}, bearer(K_OTHER))
    assert r.status == 200, r
    # a known key asking for an unknown model: 404
    assert_openai_error(post_json(g, "/v1/chat/completions", {"model": "nope"}, bearer(K_ALL)), 404)


def test_v1_without_a_key_does_not_reveal_which_models_exist(gateway):
    """/v1/models hides models from a client without a key; a /v1 request
    without a key must not tell them apart either (401 for both)."""
    g = keyed(gateway)
    known = post_json(g, "/v1/chat/completions", {"model": "demo"})
    unknown = post_json(g, "/v1/chat/completions", {"model": "no-such-model"})
    assert_openai_error(known, 401)
    assert_openai_error(unknown, 401)


def test_models_lists_only_what_the_key_may_use(gateway):
    g = keyed(gateway)
    assert_401(g.get("/v1/models"))
    assert_401(g.get("/v1/models", headers=bearer("sk-wrong-000000")))

    def ids(k):
        r = g.get("/v1/models", headers=bearer(k))
        assert r.status == 200, r
        o = r.json()
        assert o["object"] == "list"
        return sorted(m["id"] for m in o["data"])

    assert ids(K_ALL) == sorted(["demo", "gpt-4o-mini", "other", "embedder"])
    assert ids(K_OTHER) == ["embedder", "other"]
    assert ids(K_DEMO) == ["demo", "gpt-4o-mini"]


# --------------------------------------------------------------------------
# config validation
# --------------------------------------------------------------------------

def write_cfg(tmp_path, name, cfg):
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


def test_config_rejects_bad_keys_and_reports_every_error(tmp_path):
    cfg = {"listen": "127.0.0.1:1", "Services": services(), "admin_token": ADMIN,
           "api_keys": [{"key": ADMIN},                          # the admin token
                        {"key": "short"},                        # < 8 characters
                        {"key": "sk-fine-but-limited", "services": ["nope"]},   # no such service
                        {"key": "sk-extra-key-000", "scope": "x"},             # unknown key
                        "sk-not-an-object"]}
    cp = run_check(write_cfg(tmp_path, "bad.json", cfg))
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1, out
    assert "admin token" in out, out
    assert "at least 8" in out, out
    assert '"nope"' in out, out
    assert "scope" in out, out
    assert "must be an object" in out, out
    # exactly 8 characters is enough
    ok = {"listen": "127.0.0.1:1", "Services": services(), "api_keys": [{"key": "12345678"}]}
    cp = run_check(write_cfg(tmp_path, "ok.json", ok))
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_config_rejects_a_key_equal_to_the_admin_token_file(tmp_path):
    tok = tmp_path / "admin.token"
    tok.write_text(ADMIN + "\n")
    tok.chmod(0o600)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": ADMIN}]))
    keys.chmod(0o600)
    cfg = {"listen": "127.0.0.1:1", "Services": services(), "admin_token_file": str(tok),
           "api_keys_file": str(keys)}
    cp = run_check(write_cfg(tmp_path, "c.json", cfg))
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "admin token" in cp.stdout + cp.stderr


# --------------------------------------------------------------------------
# key and token files
# --------------------------------------------------------------------------

def secret_files(tmp_path, mode):
    tok = tmp_path / f"admin-{mode:o}.token"
    tok.write_text(ADMIN + "\n")
    tok.chmod(mode)
    keys = tmp_path / f"keys-{mode:o}.json"
    keys.write_text(json.dumps([{"key": K_OTHER, "services": ["other"]}]))
    keys.chmod(mode)
    return tok, keys


def test_key_and_token_files_work_and_private_ones_draw_no_warning(gateway, tmp_path):
    tok, keys = secret_files(tmp_path, 0o600)
    g = gateway(services(), admin_token_file=str(tok), api_keys_file=str(keys),
                api_keys=[{"key": K_ALL}], start=False)
    g.config_path.chmod(0o600)   # it holds a key too
    g.start()
    assert "readable by others" not in g.log(), g.log()
    # keys from the file and inline ones both work
    assert g.get("/other/health", headers=bearer(K_OTHER)).status == 200
    assert g.get("/llm/health", headers=bearer(K_OTHER)).status == 403
    assert g.get("/llm/health", headers=bearer(K_ALL)).status == 200
    # the admin token from the file (trailing newline stripped) opens admin endpoints
    assert_401(g.post("/api/services/demo/stop"))
    assert g.post("/api/services/demo/stop", headers=bearer(ADMIN)).status == 202
    assert_401(g.get("/llm/health", headers=bearer(ADMIN)))


def test_files_readable_by_others_draw_a_warning(gateway, tmp_path):
    tok, keys = secret_files(tmp_path, 0o644)
    g = gateway(services(), admin_token_file=str(tok), api_keys_file=str(keys))
    log = g.log()
    warned = [l for l in log.splitlines() if "readable by others" in l]
    assert any(str(tok) in l for l in warned), log
    assert any(str(keys) in l for l in warned), log
    # a warning, not a refusal: the gateway runs and the key works
    assert g.get("/other/health", headers=bearer(K_OTHER)).status == 200


def test_group_readable_file_draws_the_warning_too(gateway, tmp_path):
    tok, keys = secret_files(tmp_path, 0o640)
    g = gateway(services(), api_keys_file=str(keys))
    assert "readable by others" in g.log(), g.log()


def test_sighup_rotates_keys_from_the_keys_file(gateway, tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": K_ALL}]))
    keys.chmod(0o600)
    g = gateway(services(), api_keys_file=str(keys))
    assert g.get("/llm/health", headers=bearer(K_ALL)).status == 200
    new_key = "sk-rotated-key-987654"
    keys.write_text(json.dumps([{"key": new_key, "services": ["demo"]}]))
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: g.get("/llm/health", headers=bearer(K_ALL)).status == 401, 5 * SLACK,
               msg="the old key to be refused after SIGHUP")
    assert g.get("/llm/health", headers=bearer(new_key)).status == 200
    assert g.get("/other/health", headers=bearer(new_key)).status == 403
    # a broken keys file keeps the running keys
    keys.write_text("[{")
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "keeping the running one" in g.log(), 5 * SLACK, msg="the reload to fail")
    assert g.get("/llm/health", headers=bearer(new_key)).status == 200
    assert_401(g.get("/llm/health", headers=bearer(K_ALL)))
