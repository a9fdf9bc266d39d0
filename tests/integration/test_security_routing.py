"""Issue 9: the one route resolver (src/router.c) and bounded request memory.

Every target, /<route>/... and /v1/... alike, is decoded once, its dot
segments removed (RFC 3986 5.2.4), and refused with a 400 that names the
trick when it hides one (an encoded '/', '\\' or NUL, "..;", overlong
UTF-8). Routing, api_paths (matched on segment boundaries) and the path sent
upstream all use the normalised path. The reference is nginx: it normalises
the URI before location matching and, with a URI in proxy_pass, sends the
normalised path; HAProxy's and Envoy's path normalisation refuse %2F, '\\'
and the like instead of guessing.

Memory: a /v1 request's api key is checked on the head, before any of its
body is read, and the body read for the model lookup is capped by
max_json_body (413, like nginx's client_max_body_size). Bodies held during a
cold start are bounded in total by max_held_body: past it, the gateway stops
reading those clients (TCP backpressure) until the service is ready.

Each test is named after the audit finding it covers (issue 9).
"""
import json
import os
import socket
import threading
import time

import pytest

from conftest import SLACK, demo_service, http_request, raw_exchange, status_of, wait_until

KEY = "sk-routing-0123456789"


def post_json(g, path, obj, headers=None):
    h = {"Content-Type": "application/json", **(headers or {})}
    return http_request(g.port, "POST", path, body=json.dumps(obj).encode(), headers=h,
                        timeout=15 * SLACK)


def is_gateway_error(r):
    """The gateway's own error (JSON with "status", or OpenAI's error object),
    not something a service answered."""
    try:
        o = r.json()
    except ValueError:
        return False
    return "status" in o or isinstance(o.get("error"), dict)


# --------------------------------------------------------------------------
# finding 3: /v1/* forwarded the raw request target
# --------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/../secret", "/v1/%2e%2e/secret", "/v1/chat/../../secret",
                                  "/v1/./%2E%2E/echo", "/v1/%2e%2e/echo/x"])
def test_finding3_v1_dot_segments_never_reach_a_service(gateway, path):
    # nginx normalises before it routes: "/v1/../secret" is "/secret", which
    # is not a /v1 path and no route. c095a72 sent it raw to the model's service.
    g = gateway([demo_service(aliases=["m"])])
    r = post_json(g, path, {"model": "m", "messages": []})
    assert r.status in (400, 404), r
    assert is_gateway_error(r), f"{path} reached the service: {r}"
    assert g.svc()["starts"] == 0, f"{path} started the service"


def test_finding3_v1_absolute_form_is_normalised_too(gateway):
    g = gateway([demo_service(aliases=["m"])])
    body = b'{"model":"m"}'
    raw = raw_exchange(g.port, b"POST http://x.example/v1/%2e%2e/secret HTTP/1.1\r\n"
                       b"Host: x.example\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() +
                       b"\r\nConnection: close\r\n\r\n" + body, timeout=5 * SLACK)
    assert status_of(raw) in (400, 404), raw[:300]
    assert g.svc()["starts"] == 0


def test_finding3_v1_path_must_be_in_api_paths(gateway):
    # api_paths binds /v1 as it binds /<route>: a plain /v1/chat/completions
    # does not reach a service whose api_paths do not list it.
    g = gateway([demo_service(aliases=["m"], api_paths=["/generate", "/health"])])
    r = post_json(g, "/v1/chat/completions", {"model": "m", "messages": []})
    assert r.status == 404, r
    assert r.json()["error"]["code"] == "path_not_allowed", r
    assert g.svc()["starts"] == 0


def test_finding3_v1_forwards_the_normalised_path(gateway):
    g = gateway([demo_service(aliases=["m"], api_paths=["/v1/chat/completions", "/echo"])])
    r = post_json(g, "/v1/./chat/x/../completions?x=%2F", {"model": "m", "max_tokens": 2,
                                                             "messages": [{"role": "user",
                                                                           "content": "hi"}]})
    assert r.status == 200, r
    assert r.json()["object"] == "chat.completion", r
    g.record_pids()


# --------------------------------------------------------------------------
# finding 7: api_paths was a prefix match on the raw path
# --------------------------------------------------------------------------

@pytest.mark.parametrize("path,reason", [
    ("/llm/echo/..%2fstats", "%2F"),
    ("/llm/echo%2f..%2fstats", "%2F"),
    ("/llm/echo/%2e%2e%2fstats", "%2F"),
    ("/llm/echo/%2E%2E%2Fstats", "%2F"),
    ("/llm/echo/..%5cstats", "%5C"),
    ("/llm/echo/..\\stats", "a '\\' in the path"),
    ("/llm/echo/..;/stats", "..;"),
    ("/llm/echo/.;/stats", "..;"),
    ("/llm/echo/%2e%2e;x/stats", "..;"),
    ("/llm/echo/%c0%ae%c0%ae/stats", "overlong"),
    ("/llm/echo/%c0%af../stats", "overlong"),
    ("/llm/echo/%e0%80%af/stats", "overlong"),
    ("/llm/echo/%00/stats", "NUL"),
    ("/llm/echo/%zz", "percent"),
    ("/llm/../../stats", "above the root"),
])
def test_finding7_path_tricks_get_a_specific_400(gateway, path, reason):
    # HAProxy (normalize-uri) and Envoy (path normalisation) refuse these
    # rather than guess how the service reads them.
    g = gateway([demo_service(api_paths=["/echo", "/pid"])])
    raw = raw_exchange(g.port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                       .encode("latin-1"), timeout=5 * SLACK)
    assert status_of(raw) == 400, (path, raw[:300])
    msg = json.loads(raw.partition(b"\r\n\r\n")[2])["error"]
    assert reason.lower() in msg.lower(), (path, msg)
    assert g.svc()["starts"] == 0, f"{path} started the service"


@pytest.mark.parametrize("path", ["/llm/echosecret", "/llm/echo.bak", "/llm/pidx/y",
                                  "/llm/ech", "/llm/echo%73ecret"])
def test_finding7_api_paths_match_on_segment_boundaries(gateway, path):
    # nginx's "location /allowed/" is the boundary-safe form; here an entry
    # "/echo" allows "/echo" and "/echo/..." but never "/echosecret".
    g = gateway([demo_service(api_paths=["/echo", "/pid"])])
    r = g.get(path)
    assert r.status == 404, (path, r)
    assert "api_paths" in r.json()["error"], (path, r)
    assert g.svc()["starts"] == 0


def test_api_paths_still_allow_their_own_subtree_and_normal_paths_work(gateway):
    g = gateway([demo_service(api_paths=["/echo", "/pid", "/dir/"])])
    for path, uri in [("/llm/echo", "/echo"), ("/llm/echo/", "/echo/"),
                      ("/llm/echo/a/b?q=%2F", "/echo/a/b?q=%2F"),
                      ("/llm/echo/x/../y", "/echo/y"),
                      ("/llm/echo/%7e%41", "/echo/~A"),
                      ("/llm/echo/a%20b", "/echo/a%20b"),
                      ("/llm/echo/%25", "/echo/%25")]:
        r = g.get(path)
        assert r.status == 200, (path, r)
        assert r.json()["uri"] == uri, (path, r.json()["uri"])
    g.record_pids()


def test_normalisation_applies_before_routing(gateway):
    # "/x/../llm/echo" is "/llm/echo" (nginx routes the normalised URI)
    g = gateway([demo_service(api_paths=["/echo"])])
    r = g.get("/x/../llm/./echo")
    assert r.status == 200, r
    assert r.json()["uri"] == "/echo"
    # and the gateway's own endpoints cannot be reached around a check
    r = g.get("/llm/../disable_service_management", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status == 403, r
    g.record_pids()


# --------------------------------------------------------------------------
# finding 5: /v1 bodies were read whole before the api key was checked
# --------------------------------------------------------------------------

def head_only(port, head, timeout):
    """Send a request head whose body never comes; return the status of the
    answer, or None if none came within TIMEOUT."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in data and time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
        return status_of(data)
    finally:
        s.close()


def test_finding5_v1_api_key_is_checked_before_the_body_is_read(gateway):
    # nginx's auth_request and Envoy's ext_authz decide on the head: a
    # stranger's 60 MB body is never read into memory.
    g = gateway([demo_service(aliases=["m"])], api_keys=[{"key": KEY}])
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/json\r\nContent-Length: 60000000\r\n\r\n{\"model\":")
    assert head_only(g.port, head, 3 * SLACK) == 401


def test_finding5_v1_body_is_capped_by_max_json_body(gateway):
    g = gateway([demo_service(aliases=["m"])], api_keys=[{"key": KEY}], max_json_body=1 << 20)
    auth = f"Authorization: Bearer {KEY}\r\n".encode()
    # announced: refused on the head (nginx: client_max_body_size -> 413)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n" + auth +
            b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{")
    assert head_only(g.port, head, 3 * SLACK) == 413
    # chunked: refused once the cap is passed
    chunk = b"x" * 65536
    data = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n" + auth +
            b"Transfer-Encoding: chunked\r\n\r\n" +
            (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 20)
    raw = raw_exchange(g.port, data, timeout=5 * SLACK)
    assert status_of(raw) == 413, raw[:300]
    assert g.svc()["starts"] == 0
    # a small body still works
    r = post_json(g, "/v1/chat/completions", {"model": "m", "max_tokens": 2,
                                               "messages": [{"role": "user", "content": "x"}]},
                  {"Authorization": f"Bearer {KEY}"})
    assert r.status == 200, r
    g.record_pids()


def test_max_json_body_is_configurable(gateway):
    g = gateway([demo_service(aliases=["m"])], max_json_body=100)
    r = post_json(g, "/v1/chat/completions", {"model": "m", "pad": "y" * 200})
    assert r.status == 413, r
    assert r.json()["error"]["code"] == "request_too_large"


def metric(g, name):
    r = g.get("/metrics", timeout=5 * SLACK)
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_finding5_v1_body_counts_in_the_memory_budget(gateway):
    # The body a /v1 request reads for its model lookup is memory the gateway
    # holds for an unauthenticated client (no api_keys here): it counts in
    # max_buffer_bytes like every other buffer (Envoy's overload manager
    # counts every buffer), so past the budget that client stops being read.
    cap = 2 << 20
    g = gateway([demo_service(aliases=["m"])], max_json_body=16 << 20, max_buffer_bytes=cap,
                body_timeout=2)
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5 * SLACK)
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (12 << 20))
        s.setblocking(False)
        chunk = b" " * 65536
        sent, peak = 0, 0
        deadline = time.monotonic() + 3 * SLACK
        # the body never ends: its last byte is not sent
        while time.monotonic() < deadline:
            try:
                sent += s.send(chunk[:min(len(chunk), (12 << 20) - 1 - sent)])
            except BlockingIOError:
                time.sleep(0.02)
            if sent % (1 << 20) < 65536 or sent == (12 << 20) - 1:
                v = metric(g, "slurmgate_buffer_bytes")
                peak = max(peak, v)
                assert v < cap + 512 * 1024, f"{v} bytes buffered with max_buffer_bytes {cap}"
        peak = max(peak, metric(g, "slurmgate_buffer_bytes"))
        assert peak > cap / 2, f"a {sent}-byte /v1 body read so far is not in the budget (peak {peak})"
        # a client that stopped being read still has body_timeout: then its
        # body is released (its close alone is not seen: the FIN waits
        # behind the bytes we no longer read)
        wait_until(lambda: metric(g, "slurmgate_buffer_bytes") < 64 * 1024, 10 * SLACK,
                   msg="the /v1 body of a timed-out connection to be released")
    finally:
        s.close()


def test_finding8_held_bodies_are_shown_in_metrics(gateway):
    # The total of held bodies is what max_held_body bounds: /metrics shows it
    # (slurmgate_held_body_bytes), next to the budget it counts in.
    g = gateway([demo_service()], env={"DEMO_DELAY": str(3 * SLACK)})
    assert metric(g, "slurmgate_held_body_bytes") == 0
    assert metric(g, "slurmgate_buffer_limit_bytes") == 1 << 30
    body = b"h" * 300_000
    out = {}

    def upload():
        out["r"] = http_request(g.port, "POST", "/llm/echo", body=body, timeout=30 * SLACK)

    t = threading.Thread(target=upload)
    t.start()
    try:
        wait_until(lambda: metric(g, "slurmgate_held_body_bytes") == len(body), 10 * SLACK,
                   msg="the held body to show in /metrics")
    finally:
        t.join(40 * SLACK)
    assert out["r"].status == 200 and out["r"].json()["body_length"] == len(body), out
    assert metric(g, "slurmgate_held_body_bytes") == 0
    g.record_pids()


# --------------------------------------------------------------------------
# finding 8: held request bodies stayed in RAM, unbounded in total
# --------------------------------------------------------------------------

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_finding8_held_bodies_are_bounded_in_total(gateway):
    # 64 uploads of 2 MB while the service starts. c095a72 kept ~1 MiB of
    # each in memory (~70 MB); now all of them together keep at most
    # max_held_body (default 8 MiB) and the rest waits in TCP windows.
    # Like nginx with proxy_request_buffering off, nothing is refused.
    n, size = 64, 2_000_000
    # a sanitizer build keeps freed memory in quarantine: keep that small so
    # that RSS shows what is held
    asan = (os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=1").lstrip(":")
    g = gateway([demo_service()], env={"DEMO_DELAY": str(4 * SLACK), "ASAN_OPTIONS": asan})
    base = rss_kb(g.proc.pid)
    body = b"z" * size
    results = [None] * n

    def upload(k):
        try:
            r = http_request(g.port, "POST", "/llm/echo", body=body,
                             headers={"Content-Type": "application/octet-stream"},
                             timeout=60 * SLACK)
            results[k] = (r.status, r.json()["body_length"] if r.status == 200 else r.body[:200])
        except Exception as e:  # noqa: BLE001 - reported below
            results[k] = repr(e)

    threads = [threading.Thread(target=upload, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    peak = 0
    deadline = time.monotonic() + 4 * SLACK
    while time.monotonic() < deadline and g.state() != "ready":
        peak = max(peak, rss_kb(g.proc.pid))
        time.sleep(0.05)
    for t in threads:
        t.join(90 * SLACK)
    growth_mb = (peak - base) / 1024
    print(f"RSS growth while {n} x {size} B uploads were held: {growth_mb:.1f} MB")
    assert all(x == (200, size) for x in results), results
    assert growth_mb < 8 + 20, f"held bodies grew RSS by {growth_mb:.1f} MB"
    g.record_pids()


def test_a_client_paused_while_held_is_not_timed_out(gateway):
    # A held body past its cap (1 MiB, or max_held_body in total) is not
    # read: the client waits in its TCP window, longer than body_timeout,
    # and its body still arrives whole. c095a72 answered 408: the gateway
    # blamed the client for its own pause (nginx's client_body_timeout only
    # counts while nginx reads).
    g = gateway([demo_service()], env={"DEMO_DELAY": str(3 * SLACK)}, body_timeout=1)
    body = b"q" * 3_000_000
    r = http_request(g.port, "POST", "/llm/echo", body=body, timeout=30 * SLACK)
    assert r.status == 200, r
    assert r.json()["body_length"] == len(body)
    g.record_pids()
