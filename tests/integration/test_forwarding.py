"""Requests reach the service as `<rest>` of `/<route><rest>` with their query,
body and end-to-end headers intact (plus X-Forwarded-*), responses and SSE
streams come back as they are produced, connections are kept alive and
pipelining works, and a client that goes away cancels the upstream work."""
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (SLACK, demo_service, http_request, pid_alive, raw_exchange,
                      read_raw_response, wait_until)


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


_payloads = {}


def payload(n):
    """n pseudo-random bytes (not valid UTF-8) and their FNV-1a 64 hash."""
    if n not in _payloads:
        data = os.urandom(n)
        _payloads[n] = (data, fnv1a64(data))
    return _payloads[n]


@pytest.fixture
def g(gateway):
    gw = gateway()
    gw.service_pid()      # warm: most tests here are about forwarding
    return gw


# --------------------------------------------------------------------------
# request line, headers
# --------------------------------------------------------------------------

@pytest.mark.parametrize("path,uri", [
    ("/llm/echo", "/echo"),
    ("/llm/echo/a/b", "/echo/a/b"),
    ("/llm/echo?x=1&y=two", "/echo?x=1&y=two"),
    ("/llm/echo/a%20b/c?x=%2F&z", "/echo/a%20b/c?x=%2F&z"),
    ("/llm/echo//double//slash", "/echo//double//slash"),
])
def test_path_and_query_are_rewritten_to_the_rest(g, path, uri):
    r = g.get(path)
    assert r.status == 200, r
    e = r.json()
    assert e["method"] == "GET"
    assert e["uri"] == uri, e


def test_bare_route_is_forwarded_as_root(g):
    r = g.post("/llm", body={"inputs": "hi", "parameters": {"max_new_tokens": 3}})
    assert r.status == 200, r
    assert "generated_text" in r.json(), r


def test_methods_are_forwarded(g):
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "POST"):
        r = g.request(method, "/llm/echo/m", body=b"abc" if method in ("PUT", "PATCH", "POST")
                      else None)
        assert r.status == 200, (method, r)
        assert r.json()["method"] == method


def test_x_forwarded_headers_are_added(g):
    r = g.get("/llm/echo", headers={"Host": "gw.example:8443"})
    h = r.json()["headers"]
    assert h["x-forwarded-for"] == "127.0.0.1", h
    assert h["x-forwarded-proto"] == "http", h
    assert h["x-forwarded-host"] == "gw.example:8443", h
    assert h["host"] == "gw.example:8443", h


def test_x_forwarded_for_is_appended_to(gateway):
    # only from a trusted proxy (trusted_proxies); see test_access_control.py
    g = gateway(trusted_proxies=["127.0.0.1"])
    r = g.get("/llm/echo", headers={"X-Forwarded-For": "10.1.2.3"})
    h = r.json()["headers"]
    assert h["x-forwarded-for"] == "10.1.2.3, 127.0.0.1", h
    # exactly one X-Forwarded-For line reaches the service
    names = [k.lower() for k, v in r.json()["header_list"]]
    assert names.count("x-forwarded-for") == 1, names


def test_hop_by_hop_headers_are_removed_and_end_to_end_ones_kept(g):
    raw = raw_exchange(g.port, (
        b"GET /llm/echo HTTP/1.1\r\n"
        b"Host: a\r\n"
        b"Connection: close, X-Drop-Me\r\n"
        b"X-Drop-Me: 1\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-Slurmgate-Wait: 1\r\n"
        b"X-Keep-Me: yes\r\n"
        b"Authorization: Bearer for-the-service\r\n"
        b"User-Agent: itest\r\n"
        b"\r\n"), timeout=5 * SLACK)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]
    e = json.loads(body)
    h = e["headers"]
    for gone in ("x-drop-me", "keep-alive", "te", "proxy-authorization", "proxy-connection",
                 "x-slurmgate-wait"):
        assert gone not in h, (gone, h)
    assert "x-drop-me" not in h.get("connection", "").lower(), h
    assert "close" not in h.get("connection", "").lower(), \
        f"the client's Connection header leaked upstream: {h}"
    assert h["x-keep-me"] == "yes"
    # stripped unless the service sets forward_authorization (test_access_control.py)
    assert "authorization" not in h, h
    assert h["user-agent"] == "itest"


def test_response_framing_is_the_gateways_own(g):
    raw = raw_exchange(g.port, b"GET /llm/echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                       timeout=5 * SLACK)
    head = raw.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")[1:]
    names = [ln.split(b":")[0] for ln in head]
    framing = names.count(b"content-length") + names.count(b"transfer-encoding")
    assert framing == 1, head
    assert names.count(b"connection") <= 1, head
    assert b"keep-alive" not in names, head


# --------------------------------------------------------------------------
# bodies
# --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 65536, 3 * 1024 * 1024 + 17])
def test_request_body_arrives_intact(g, size):
    data, h = payload(size)
    r = g.post("/llm/echo", body=data, headers={"Content-Type": "application/octet-stream"},
               timeout=30)
    assert r.status == 200, r
    e = r.json()
    assert e["body_length"] == size
    assert e["body_fnv1a64"] == h


def test_chunked_request_body_arrives_intact(g):
    data, h = payload(2 * 1024 * 1024 + 5)

    def pieces():
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]

    conn = g.connection(timeout=30)
    try:
        conn.request("POST", "/llm/echo", body=pieces(), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        e = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 200
    assert e["body_length"] == len(data)
    assert e["body_fnv1a64"] == h


def test_body_of_a_request_held_through_a_cold_start_arrives_intact(gateway):
    gw = gateway(env={"DEMO_DELAY": "0.7"})
    data, h = payload(3 * 1024 * 1024 + 17)   # more than the gateway buffers while holding
    r = gw.post("/llm/echo", body=data, timeout=30)
    assert r.status == 200, r
    assert r.header("X-Slurmgate-Cold-Start") is not None
    e = r.json()
    assert e["body_length"] == len(data) and e["body_fnv1a64"] == h
    gw.record_pids()


def test_expect_100_continue(g):
    body = b"hello-continue"
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5 * SLACK)
    try:
        s.sendall(b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        f = s.makefile("rb")
        status, _, _ = read_raw_response(f)
        assert status == 100
        s.sendall(body)
        status, _, got = read_raw_response(f)
        assert status == 200
        assert json.loads(got)["body"] == body.decode()
    finally:
        s.close()


def test_large_response_arrives_whole(g):
    text = ("0123456789abcdef" * 60000).encode()      # 960000 bytes, echoed back as text
    r = g.post("/llm/echo", body=text, timeout=30)
    assert r.status == 200
    assert r.json()["body"] == text.decode()
    # (ms=0 would be faster, but the demo then emits a single event: a demo bug)
    n = 500
    r = g.get(f"/llm/stream?n={n}&ms=1", timeout=30)
    assert r.status == 200
    events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert events == [str(i) for i in range(n)]


# --------------------------------------------------------------------------
# api_paths
# --------------------------------------------------------------------------

def test_api_paths_are_enforced(gateway):
    gw = gateway([demo_service(api_paths=["/echo", "/pid", "/health"])])
    for path in ("/llm/stats", "/llm/", "/llm", "/llm/slow?ms=1", "/llm/v1/models"):
        r = gw.get(path)
        assert r.status == 404, (path, r)
        assert "api_paths" in r.json()["error"], r
    assert gw.svc()["starts"] == 0, "a refused path must not start the service"
    r = gw.get("/llm/echo/sub?x=1")
    assert r.status == 200, r
    assert r.json()["uri"] == "/echo/sub?x=1"
    assert gw.get("/llm/pid").status == 200
    gw.record_pids()


# --------------------------------------------------------------------------
# LLM APIs, streaming
# --------------------------------------------------------------------------

def read_sse(resp, t0):
    """(data, arrival time) for every `data:` line of an SSE response."""
    out = []
    while True:
        line = resp.readline()
        if not line:
            return out
        if line.startswith(b"data:"):
            out.append((line[5:].strip().decode(), time.monotonic() - t0))


def test_openai_chat_completion(gateway):
    gw = gateway()
    r = gw.post("/llm/v1/chat/completions", body={
        "model": "demo-llm", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hello"}]})
    assert r.status == 200, r
    c = r.json()
    assert c["object"] == "chat.completion"
    assert c["choices"][0]["message"]["role"] == "assistant"
    assert c["choices"][0]["message"]["content"].strip()
    assert c["usage"]["completion_tokens"] == 5
    gw.record_pids()


def test_openai_chat_completion_stream_arrives_token_by_token(gateway):
    gw = gateway(env={"DEMO_TOKEN_DELAY_MS": "150"})
    gw.service_pid()
    conn = gw.connection(timeout=15)
    t0 = time.monotonic()
    conn.request("POST", "/llm/v1/chat/completions", body=json.dumps({
        "model": "demo-llm", "max_tokens": 8, "stream": True,
        "messages": [{"role": "user", "content": "hello"}]}),
        headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.getheader("Content-Type", "").startswith("text/event-stream")
    events = read_sse(r, t0)
    conn.close()
    assert events[-1][0] == "[DONE]", events
    chunks = [json.loads(d) for d, _ in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "".join(f"tok{i} " for i in range(8)), text
    times = [t for _, t in events]
    assert times[-1] - times[0] >= 7 * 0.15 * 0.7, f"tokens were not streamed: {times}"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 1.0 * SLACK, times


def test_tgi_generate_and_generate_stream(gateway):
    gw = gateway(env={"DEMO_TOKEN_DELAY_MS": "100"})
    r = gw.post("/llm/generate", body={"inputs": "hi", "parameters": {"max_new_tokens": 4}})
    assert r.status == 200, r
    assert r.json()["generated_text"].startswith("tok0")
    conn = gw.connection(timeout=15)
    t0 = time.monotonic()
    conn.request("POST", "/llm/generate_stream", body=json.dumps(
        {"inputs": "hi", "parameters": {"max_new_tokens": 6}}),
        headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    events = read_sse(resp, t0)
    conn.close()
    toks = [json.loads(d)["token"]["text"] for d, _ in events]
    assert toks == [f"tok{i} " for i in range(6)], toks
    assert json.loads(events[-1][0])["generated_text"], events[-1]
    assert events[-1][1] - events[0][1] >= 5 * 0.1 * 0.7, events
    gw.record_pids()


# --------------------------------------------------------------------------
# connections
# --------------------------------------------------------------------------

def test_head_request(g):
    r = g.request("HEAD", "/llm/pid")
    assert r.status == 200, r
    assert r.body == b""
    # the HEAD response has no body on the wire: the next response on the
    # same connection parses
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5 * SLACK)
    try:
        s.sendall(b"HEAD /llm/echo HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /llm/echo?after=head HTTP/1.1\r\nHost: a\r\n\r\n")
        f = s.makefile("rb")
        st, hd, body = read_raw_response(f, head_request=True)
        assert st == 200 and body == b""
        st, hd, body = read_raw_response(f)
        assert st == 200
        assert json.loads(body)["query"] == "after=head"
    finally:
        s.close()


def test_keep_alive_many_sequential_requests_on_one_connection(g):
    conn = g.connection()
    try:
        conn.connect()
        first = conn.sock
        local = first.getsockname()
        for i in range(50):
            conn.request("GET", f"/llm/echo?i={i}")
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200
            assert json.loads(body)["query"] == f"i={i}"
            assert not r.will_close, f"the gateway closed the connection after request {i}"
            assert conn.sock is first and conn.sock.getsockname() == local
        # gateway endpoints on the same connection too
        conn.request("GET", "/api/health")
        assert conn.getresponse().read()
        assert conn.sock is first
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(g):
    reqs = (b"GET /llm/slow?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /llm/echo?i=1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\ntwo"
            b"GET /info HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /llm/echo?i=4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLACK)
    try:
        s.sendall(reqs)
        f = s.makefile("rb")
        got = [read_raw_response(f) for _ in range(5)]
        assert f.read() == b"", "the connection must close after Connection: close"
    finally:
        s.close()
    assert [st for st, _, _ in got] == [200] * 5, got
    assert json.loads(got[0][2]) == {"slept_ms": 300}
    assert json.loads(got[1][2])["query"] == "i=1"
    assert json.loads(got[2][2])["body"] == "two"
    assert "services" in json.loads(got[3][2])
    assert json.loads(got[4][2])["query"] == "i=4"


def test_client_disconnect_during_a_stream_cancels_the_upstream(g):
    before = g.get("/llm/stats").json()
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5 * SLACK)
    try:
        s.sendall(b"GET /llm/stream?n=100&ms=100 HTTP/1.1\r\nHost: a\r\n\r\n")
        got = b""
        while got.count(b"data: ") < 3:
            chunk = s.recv(4096)
            assert chunk, "stream ended early"
            got += chunk
    finally:
        s.close()
    t0 = time.monotonic()

    def cancelled():
        st = g.get("/llm/stats").json()
        return st if st["jobs_cancelled"] > before["jobs_cancelled"] else None

    st = wait_until(cancelled, 3 * SLACK, msg="the demo's jobs_cancelled to increase")
    assert st["jobs_active"] == 0, st
    assert time.monotonic() - t0 < 3 * SLACK
    info = g.svc()
    assert info["in_flight"] == 0, info


def test_client_disconnect_while_held_does_not_block_others(gateway):
    gw = gateway(env={"DEMO_DELAY": "1"})
    # a client that gives up while the service starts
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.sendall(b"GET /llm/slow?ms=5000 HTTP/1.1\r\nHost: a\r\n\r\n")
    wait_until(lambda: gw.svc()["waiting"] == 1, 2 * SLACK)
    s.close()
    wait_until(lambda: gw.svc()["waiting"] == 0, 2 * SLACK)
    r = gw.get("/llm/pid", timeout=15)
    assert r.status == 200, r
    gw.seen_pids.add(r.json()["pid"])
    st = gw.get("/llm/stats").json()
    assert st["jobs_active"] == 0, f"the abandoned request was still sent to the service: {st}"


def test_service_crash_during_a_request_gives_502_and_the_next_request_restarts_it(g):
    pid = g.service_pid()
    holder = {}
    t = threading.Thread(target=lambda: holder.setdefault(
        "r", http_request(g.port, "GET", "/llm/slow?ms=5000", timeout=10 * SLACK)))
    t.start()
    wait_until(lambda: g.svc()["in_flight"] == 1, 3 * SLACK)
    os.kill(pid, signal.SIGKILL)
    t.join(10 * SLACK)
    r = holder["r"]
    assert r.status == 502, r
    assert r.elapsed < 3 * SLACK
    wait_until(lambda: not pid_alive(pid), 3)
    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200, r
    assert r.json()["pid"] != pid
    g.seen_pids.add(r.json()["pid"])
    assert g.svc()["starts"] == 2


@pytest.mark.parametrize("path", ["/llm/echo/../stats", "/llm/echo/%2e%2e/stats",
                                  "/llm/echo/./../stats", "/llm/echo/%2E%2E/stats"])
def test_api_paths_cannot_be_escaped_with_dot_segments(gateway, path):
    # "/echo/../stats" is "/stats" (RFC 3986 remove_dot_segments; %2E is "."),
    # which api_paths does not allow. The gateway must refuse it, or forward it
    # normalised; forwarding the dot segments lets any service that normalises
    # paths (most web frameworks do) serve a path outside api_paths.
    gw = gateway([demo_service(api_paths=["/echo", "/pid"])])
    gw.service_pid()
    r = gw.get(path)
    if r.status == 200:
        uri = r.json()["uri"]
        assert ".." not in uri and "%2e" not in uri.lower(), \
            f"{path} passed api_paths and reached the service as {uri}"
    else:
        assert r.status in (400, 404), r


def test_route_must_match_the_whole_first_segment(g):
    for path in ("/llmx/echo", "/ll/echo", "/LLM/echo", "/llm.x/echo"):
        r = g.get(path)
        assert r.status == 404, (path, r)
        assert "error" in r.json()


def test_upstream_timeout_gives_504(gateway):
    gw = gateway([demo_service()], upstream_timeout=1)
    gw.service_pid()
    r = gw.get("/llm/slow?ms=4000")
    assert r.status == 504, r
    assert r.elapsed < 3 * SLACK, r.elapsed
    assert "timeout" in r.json()["error"]
    # the service is still fine
    assert gw.get("/llm/slow?ms=10").status == 200


def test_http10_client_gets_a_stream_without_chunked_encoding(g):
    raw = raw_exchange(g.port, b"GET /llm/stream?n=3&ms=20 HTTP/1.0\r\n\r\n", timeout=5 * SLACK)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), raw[:200]
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"transfer-encoding" not in head.lower(), head
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n", body


def test_concurrent_streams_are_not_serialised(g):
    n_streams, n, ms = 20, 10, 100      # each stream lasts ~1 s

    def one(i):
        conn = g.connection(timeout=20)
        try:
            t0 = time.monotonic()
            conn.request("GET", f"/llm/stream?n={n}&ms={ms}&i={i}")
            r = conn.getresponse()
            events = read_sse(r, t0)
            return r.status, [d for d, _ in events], time.monotonic() - t0
        finally:
            conn.close()

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=n_streams) as ex:
        results = list(ex.map(one, range(n_streams)))
    total = time.monotonic() - t0
    for st, events, _ in results:
        assert st == 200
        assert events == [str(i) for i in range(n)], events
    assert total < 5 * SLACK, f"{n_streams} concurrent 1 s streams took {total:.1f} s"


def test_concurrent_requests_get_their_own_responses(g):
    def one(i):
        body = f"body-{i}-".encode() * (i + 1)
        r = http_request(g.port, "POST", f"/llm/echo?i={i}", body=body, timeout=20 * SLACK)
        e = r.json()
        return i, r.status, e["query"], e["body"], body.decode()

    with ThreadPoolExecutor(max_workers=32) as ex:
        for i, st, q, got, sent in ex.map(one, range(200)):
            assert st == 200
            assert q == f"i={i}", (i, q)
            assert got == sent, i


def test_service_error_response_before_reading_the_body_keeps_the_connection_usable(g):
    conn = g.connection(timeout=15)
    try:
        data = b"z" * (512 * 1024)
        conn.request("POST", "/llm/no/such/path", body=data)
        r = conn.getresponse()
        r.read()
        assert r.status == 404
        for i in range(3):
            conn.request("GET", f"/llm/echo?after={i}")
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, body
            assert json.loads(body)["query"] == f"after={i}"
    finally:
        conn.close()


def test_responses_after_an_upstream_timeout_are_not_stale(gateway):
    gw = gateway([demo_service()], upstream_timeout=1)
    gw.service_pid()
    assert gw.get("/llm/slow?ms=2500").status == 504
    for ms in (10, 20, 30):
        r = gw.get(f"/llm/slow?ms={ms}")
        assert r.status == 200 and r.json() == {"slept_ms": ms}, r
    time.sleep(2)      # the abandoned 2.5 s reply would be due now
    r = gw.get("/llm/slow?ms=40")
    assert r.status == 200 and r.json() == {"slept_ms": 40}, r
