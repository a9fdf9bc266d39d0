"""What a client without a token can see and try.

- A failed start's reason names the end of the job's or process's output
  ("...; its output ends: ..."), and output can hold secrets (a start
  script that echoes a token). With an admin token set, the service's logs
  need it; so does that output wherever else it shows: the state
  (/info, /check_<route>, /api/..., /api/events), the waiting page and the
  502 a failed start answers. Others read the reason with a pointer to the
  logs instead.
- Failed authentication is limited per client address (auth_fail_limit
  wrong tokens per auth_fail_window seconds), then 429 + Retry-After.
- An unnamed api key's id (access log, /metrics, /api) is keyed by a
  secret of the installation, not a plain digest anyone can test keys
  against offline."""
import hashlib
import http.client
import json
import re
import time

from conftest import (SLACK, Stream, demo_service, http_request, openai_error_body, wait_until,
                      write_script)

SECRET = "hf_FAKE_s3cr3t_0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
KEY = "sk-public-surface-0123456789"
POINTER = "/api/services/demo/logs"


def bearer(t):
    return {"Authorization": f"Bearer {t}"}


def leaky_service(tmp_path, **kw):
    """A start script that prints a secret to stderr and exits 1, as a
    script that dumps its environment before it fails does."""
    script = write_script(tmp_path / "leaky.sh", f"""#!/bin/sh
echo "starting the model server" >&2
echo "env: HF_TOKEN={SECRET} USER=alice" >&2
exit 1
""")
    return demo_service(bash_file=str(script), aliases=["leaky-model"], **kw)


def first_state_event(g, headers=None):
    """The first state the /api/events stream sends, as text."""
    s = Stream(g.port, "GET", "/api/events", headers=headers, timeout=10)
    try:
        assert s.resp.status == 200, s.resp.status
        deadline = time.monotonic() + 10 * SLACK
        while time.monotonic() < deadline:
            line = s.resp.readline().decode()
            assert line, "the event stream ended"
            if line.startswith("data: "):
                return line[6:]
        raise AssertionError("no state event")
    finally:
        s.close()


def test_failed_start_output_is_not_shown_without_the_admin_token(gateway, tmp_path):
    g = gateway([leaky_service(tmp_path)], admin_token=ADMIN, api_keys=[{"key": KEY}])
    # the failed request's own 502: its client has an api key, not the admin token
    r = g.get("/llm/generate", headers=bearer(KEY), timeout=15)
    assert r.status == 502, r
    err = r.json()["error"]
    assert "exited with status 1" in err and POINTER in err, err
    assert SECRET not in r.text and "HF_TOKEN" not in r.text, r
    # everything anyone may read (public_status is true)
    for path in ("/info", "/api/services", "/api/services/demo", "/check_llm", "/metrics"):
        r = g.get(path)
        assert r.status == 200, (path, r)
        assert SECRET not in r.text and "HF_TOKEN" not in r.text, (path, r.text[:2000])
    svc = g.get("/api/services/demo").json()
    assert "exited with status 1" in svc["last_error"] and POINTER in svc["last_error"], svc
    assert "exited with status 1" in g.get("/check_llm").json()["reason"]
    ev = first_state_event(g)
    assert "exited with status 1" in ev and SECRET not in ev, ev
    # an api key is not the admin token: the same
    r = g.get("/api/services/demo", headers=bearer(KEY))
    assert SECRET not in r.text, r
    # the waiting page a browser gets for the failed service (it may start
    # it again: until a page shows the failure, none shows the secret)
    pages = []

    def failed_page():
        r = g.get("/llm/", headers={"Accept": "text/html", **bearer(KEY)})
        pages.append(r)
        return r.status == 502
    wait_until(failed_page, 10 * SLACK, msg="the waiting page of the failed start")
    assert "exited with status 1" in pages[-1].text, pages[-1]
    assert not [p for p in pages if SECRET in p.text], pages
    # the admin token reads it all: the state, the events and the logs
    r = g.get("/api/services/demo", auth=True)
    assert SECRET in r.json()["last_error"], r
    assert "its output ends: env: HF_TOKEN=" + SECRET in r.json()["last_error"], r
    assert SECRET in g.get("/info", auth=True).text
    assert SECRET in first_state_event(g, headers=bearer(ADMIN))
    assert SECRET in g.get(POINTER, auth=True).text
    assert g.get(POINTER).status == 401


def test_failed_start_output_is_not_in_the_v1_502_nor_its_event_stream(gateway, tmp_path):
    g = gateway([leaky_service(tmp_path)], admin_token=ADMIN)
    body = {"model": "leaky-model", "messages": [{"role": "user", "content": "hi"}]}
    r = g.post("/v1/chat/completions", body, timeout=15)
    assert r.status == 502, r
    e = openai_error_body(r.json())
    assert "exited with status 1" in e["message"] and POINTER in e["message"], e
    assert SECRET not in r.text, r
    # a streaming client is told through the stream's error event
    s = Stream(g.port, "POST", "/v1/chat/completions", body={**body, "stream": True},
               headers={"Accept": "text/event-stream"}, timeout=15).read_all(20)
    text = "\n".join(ln for _, ln in s.lines)
    assert "exited with status 1" in text and SECRET not in text, text
    # a service's client is not its admin: the admin token changes nothing
    # here (it reads the output in the logs and the state)
    r = g.post("/v1/chat/completions", body, headers=bearer(ADMIN), timeout=15)
    assert r.status == 502 and SECRET not in r.text, r
    assert SECRET in g.get("/api/services/demo", auth=True).json()["last_error"]


def test_failed_start_output_stays_visible_when_the_logs_are_public(gateway, tmp_path):
    """Without an admin token anyone may read the logs (public_status):
    hiding the same lines in the reason would hide nothing."""
    g = gateway([leaky_service(tmp_path)])
    r = g.get("/llm/generate", timeout=15)
    assert r.status == 502 and SECRET in r.json()["error"], r
    assert SECRET in g.get("/api/services/demo").json()["last_error"]


# --------------------------------------------------------------------------
# failed authentication, limited per address
# --------------------------------------------------------------------------

def req_from(g, source, method, path, headers=None, body=None):
    """One request from source address SOURCE (bound before connecting)."""
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10 * SLACK,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        from conftest import Resp
        return Resp(r.status, r.reason, r.headers, data, 0)
    finally:
        conn.close()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


# long enough for the 30-odd requests below to fit in it on a loaded machine
WINDOW = 12


def test_failed_auth_is_rate_limited_per_address(gateway):
    g = gateway([demo_service(aliases=["m"])], admin_token=ADMIN, api_keys=[{"key": KEY}],
                auth_fail_limit=5, auth_fail_window=WINDOW)
    # a good key before any failure
    assert g.get("/llm/health", headers=bearer(KEY)).status == 200
    # requests without a token guess nothing: never limited
    for _ in range(8):
        assert g.get("/llm/health").status == 401
    t_first = time.monotonic()   # the server's window begins after this
    for k in range(5):
        if k == 4:
            # a good key before the limit works, and resets nothing (an api
            # key's holder guessing the admin token would reset it so)
            assert g.get("/llm/health", headers=bearer(KEY)).status == 200
        r = g.get("/llm/health", headers=bearer(f"sk-guess-{k}"))
        assert r.status == 401, (k, r)
    # the sixth try, and any try after, is refused without a look at the token
    r = g.get("/llm/health", headers=bearer("sk-guess-6"))
    assert r.status == 429, r
    ra = r.header("Retry-After")
    assert ra and ra.isdigit() and 1 <= int(ra) <= WINDOW, r.headers
    assert "too many failed" in r.json()["error"], r
    # the right key too (it waits for the window), the admin token, and /v1
    assert g.get("/llm/health", headers=bearer(KEY)).status == 429
    assert g.post("/api/services/demo/stop", headers=bearer(ADMIN)).status == 429
    r = g.post("/v1/chat/completions", {"model": "m", "messages": []}, headers=bearer(KEY))
    assert r.status == 429 and r.header("Retry-After"), r
    e = openai_error_body(r.json())
    assert e["code"] == "rate_limit_exceeded", e
    # another address is not affected
    assert req_from(g, "127.0.0.2", "GET", "/llm/health", bearer("sk-wrong")).status == 401
    assert req_from(g, "127.0.0.2", "GET", "/llm/health", bearer(KEY)).status == 200
    # one log line for the address, not one per refused request
    for _ in range(20):
        assert g.get("/llm/health", headers=bearer("sk-more")).status == 429
    assert wait_until(lambda: "127.0.0.1" in g.log() and "auth_fail_limit" in g.log(), 5 * SLACK)
    lines = [ln for ln in g.log().splitlines() if "auth_fail_limit" in ln]
    assert len(lines) == 1 and "127.0.0.1" in lines[0], lines
    assert "sk-" not in lines[0], lines
    m = g.get("/metrics").text
    assert metric(m, "slurmgate_auth_failures_total") == 6, m   # 5 here, 1 from 127.0.0.2
    assert metric(m, "slurmgate_auth_limited_total") >= 24, m
    # after the window, tries are answered again
    assert time.monotonic() - t_first < WINDOW, "too slow: the window passed during the test"
    wait_until(lambda: g.get("/llm/health", headers=bearer(KEY)).status == 200, (WINDOW + 5) * SLACK,
               msg="the window to pass")
    assert time.monotonic() - t_first >= WINDOW - 0.01, "the lockout ended before its window"
    assert g.get("/llm/health", headers=bearer("sk-guess-again")).status == 401


def test_failed_auth_limit_behind_a_trusted_proxy_is_per_forwarded_client(gateway):
    """Behind nginx every client connects from nginx's address: with it in
    trusted_proxies, the limit is per X-Forwarded-For client; a peer that
    is not trusted is limited by its own address, whatever it claims."""
    g = gateway([demo_service()], admin_token=ADMIN, auth_fail_limit=3, auth_fail_window=60,
                trusted_proxies=["127.0.0.1"])
    bad = {"Authorization": "Bearer nope", "X-Forwarded-For": "192.0.2.7"}
    for _ in range(3):
        assert g.post("/api/services/demo/stop", headers=bad).status == 401
    assert g.post("/api/services/demo/stop", headers=bad).status == 429
    other = {"Authorization": f"Bearer {ADMIN}", "X-Forwarded-For": "192.0.2.8"}
    assert g.post("/api/services/demo/stop", headers=other).status == 202
    # not trusted: its own address counts, its X-Forwarded-For does not
    spoof = {"Authorization": "Bearer nope", "X-Forwarded-For": "192.0.2.9"}
    for _ in range(3):
        assert req_from(g, "127.0.0.2", "POST", "/api/services/demo/stop", spoof).status == 401
    spoof["X-Forwarded-For"] = "192.0.2.10"
    assert req_from(g, "127.0.0.2", "POST", "/api/services/demo/stop", spoof).status == 429


def test_auth_fail_limit_config_is_checked(gateway, tmp_path):
    from conftest import run_check
    for bad in ({"auth_fail_limit": -1}, {"auth_fail_window": 0}, {"auth_fail_limit": "ten"}):
        g = gateway([demo_service()], start=False, **bad)
        p = run_check(g.config_path)
        assert p.returncode != 0 and list(bad)[0] in p.stdout + p.stderr, (bad, p)


def test_status_page_typing_a_key_is_not_a_guess_per_keystroke(tmp_path):
    """The status page tried the token box's value on every keystroke (and
    a refused one every 2 s): with the limit, typing a key by hand locked
    the address out. It tries a token once typing pauses, and a refused one
    only when it changes."""
    import pytest
    from status_page_helpers import Chromium, Gateway, chromium_bin
    if not chromium_bin():
        pytest.fail("headless Chromium is needed for this test: apt-get install chromium")
    gw = Gateway(tmp_path, api_keys=[{"key": KEY}], public_status=False)
    browser = Chromium(tmp_path)
    cdp = None
    try:
        gw.start()
        browser.start()
        cdp = browser.page()
        cdp.call("Page.enable")
        cdp.call("Runtime.enable")
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{gw.port}/status")
        wait_until(lambda: "key" in cdp.eval("document.getElementById('empty').textContent"),
                   15 * SLACK, msg="the page to ask for a key")
        # typed as a person types: one input event per character
        for k in range(1, len(KEY) + 1):
            cdp.eval("""(() => { const i = document.getElementById('admin-token');
                       i.value = %s; i.dispatchEvent(new Event('input')); })()""" % json.dumps(KEY[:k]))
        wait_until(lambda: cdp.eval("document.querySelectorAll('section.svc').length") == 1 and
                   cdp.eval("document.body.dataset.connected") == "true", 10 * SLACK,
                   msg="the page to go live with the key")
        st, _, body = gw.get("/metrics", headers=bearer(KEY))
        assert st == 200 and metric(body.decode(), "slurmgate_auth_failures_total") == 0, body
    except BaseException:
        print(f"--- gateway log ---\n{gw.log()}\n--- chromium log ---\n{browser.log()}")
        raise
    finally:
        if cdp is not None:
            try:
                cdp.close()
            except OSError:
                pass
        browser.stop()
        rc = gw.stop()
    assert rc == 0, f"slurmgate exit code after SIGTERM: {rc}\n{gw.log()}"


# --------------------------------------------------------------------------
# key ids
# --------------------------------------------------------------------------

def key_label(g):
    text = g.get("/metrics").text
    ids = re.findall(r'slurmgate_key_requests_total\{service="demo",key="([^"]+)"\}', text)
    assert len(ids) == 1, text
    return ids[0]


def test_unnamed_key_id_is_keyed_by_an_installation_secret(gateway, tmp_path):
    plain = hashlib.sha256(KEY.encode()).hexdigest()
    g = gateway([demo_service()], api_keys=[{"key": KEY}])
    assert g.get("/llm/health", headers=bearer(KEY)).status == 200
    kid = key_label(g)
    assert re.fullmatch(r"key:[0-9a-f]{12}", kid), kid
    assert plain[:12] not in kid and plain[:8] not in g.get("/metrics").text
    secret = tmp_path / "gw0-state" / "key_id_secret"
    assert secret.exists() and (secret.stat().st_mode & 0o777) == 0o600, secret
    # the same id after a restart (the secret is kept in state_dir)
    assert g.terminate() == 0
    g._log.close()
    g.start()
    assert g.get("/llm/health", headers=bearer(KEY)).status == 200
    assert key_label(g) == kid
    # another installation names the same key differently
    h = gateway([demo_service()], api_keys=[{"key": KEY}])
    assert h.get("/llm/health", headers=bearer(KEY)).status == 200
    assert key_label(h) != kid
