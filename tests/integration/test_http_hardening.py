"""HTTP-layer hardening (issue 9): each test is named after an audit finding
and says which hardened proxy (nginx, HAProxy, Envoy) behaves that way.

Requests go over raw sockets. Upstream misbehaviour comes from a small
hostile service (a python socket server) whose answer is chosen by the first
path segment the gateway forwards to it (/h/<mode>/...)."""
import json
import socket
import sys
import time

import pytest

from conftest import SLACK, demo_service, raw_exchange, status_of, wait_until, write_script

# The hostile service. Every request line it reads is appended to LOG (one a
# line), so a test can tell what reached it.
HOSTILE = r'''
import socket, sys, threading, time
port, log = int(sys.argv[1]), sys.argv[2]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(64)

def note(line):
    with open(log, "ab") as f:
        f.write(line + b"\n")

def read_body(f, hdrs):
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        body = b""
        while True:
            n = int(f.readline().split(b";")[0], 16)
            if n == 0:
                while f.readline() not in (b"\r\n", b""):
                    pass
                return body
            body += f.read(n); f.readline()
    n = int(hdrs.get("content-length", "0") or 0)
    return f.read(n) if n else b""

def serve(c):
    f = c.makefile("rb")
    while True:
        line = f.readline()
        if not line:
            break
        note(line.rstrip(b"\r\n"))
        head = [line]
        hdrs = {}
        while True:
            h = f.readline()
            if h in (b"\r\n", b""):
                break
            head.append(h)
            k, _, v = h.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        body = read_body(f, hdrs)
        path = line.split(b" ")[1]
        segs = [x for x in path.split(b"?")[0].split(b"/") if x]
        mode = segs[-1] if segs else b""
        if path.startswith(b"/health"):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif mode == b"echohead":
            out = b"".join(head) + b"\r\n" + body
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
        elif mode == b"forged100":
            c.sendall(b"HTTP/1.1 100 Continue\r\nContent-Length: 24\r\n\r\nFORGED-FORGED-FORGED-FOR"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
        elif mode == b"extra":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsmuggl")
        elif mode == b"status000":
            c.sendall(b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n")
        elif mode == b"unsolicited101":
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\n"
                      b"RAW BYTES OF ANOTHER PROTOCOL")
            time.sleep(1)
        elif mode == b"badchunk":
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nxx\r\n")
            time.sleep(1)
        else:
            out = b"%d" % len(body)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
    c.close()

while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


@pytest.fixture
def hostile(gateway, tmp_path):
    """A gateway in front of the hostile service (route /h, model "hs");
    returns (gateway, path of the service's request-line log)."""
    (tmp_path / "hostile.py").write_text(HOSTILE)
    log = tmp_path / "hostile.log"
    log.write_bytes(b"")
    script = write_script(tmp_path / "hostile.sh",
                          f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'hostile.py'} \"$1\" {log}\n")

    def make(**top):
        g = gateway([demo_service(name="hs", route="h", bash_file=str(script))], **top)
        # start it now: every test below talks to a ready service
        r = g.get("/h/health", timeout=15)
        assert r.status == 200, r
        return g, log
    return make


def exchange(g, data, timeout=5.0):
    return raw_exchange(g.port, data, timeout=timeout * SLACK)


def gateway_error(raw, status):
    """raw is an error of the gateway's own (JSON), with this status."""
    head = raw.split(b"\r\n\r\n")[0].lower()
    return status_of(raw) == status and b"application/json" in head


def still_serves(g):
    assert g.get("/api/health", timeout=5).status == 200


# --------------------------------------------------------------------------
# 1. Critical: use-after-free on a /v1 request with a chunked body and a
#    large trailer (trailer fields went into the head buffer, reallocated
#    while the parsed request was still in use).
# --------------------------------------------------------------------------

def test_finding1_uaf_v1_chunked_trailer_keeps_parsed_request_valid(hostile):
    # nginx and Envoy parse and drop request trailers; the parsed head they
    # route with is never touched by them.
    g, log = hostile()
    body = json.dumps({"model": "hs", "x": 1}).encode()
    trailer = b"X-Trailer-%d: " % 0 + b"t" * 4000 + b"\r\n" + b"X-Trailer-1: " + b"u" * 4000 + b"\r\n"
    req = (b"POST /v1/echohead HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           + b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailer + b"\r\n")
    raw = exchange(g, req, timeout=10)
    assert status_of(raw) == 200, raw[:500]
    echoed = raw.split(b"\r\n\r\n", 1)[1]
    assert echoed.startswith(b"POST /v1/echohead HTTP/1.1\r\n"), echoed[:300]
    assert b"\r\nHost: a\r\n" in echoed, echoed[:600]
    assert b"X-Trailer" not in echoed
    assert echoed.endswith(body)
    still_serves(g)


# --------------------------------------------------------------------------
# 2. High: a Content-Length past 2^63 became negative, skipped the 413 check
#    and let the body reach the service as a second request.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("clen", [2**63, 2**63 + 12345, 2**64 - 11, 2**64 - 2],
                         ids=["2^63", "2^63+n", "2^64-11", "2^64-2"])
def test_finding2_huge_content_length_is_400_not_smuggled(hostile, clen):
    # nginx ("client sent invalid Content-Length"), HAProxy and Envoy answer 400.
    g, log = hostile()
    smuggled = b"GET /h/smuggled HTTP/1.1\r\nHost: evil\r\nContent-Length: 0\r\n\r\n"
    req = (b"POST /h/echohead HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % clen
           + smuggled)
    raw = exchange(g, req)
    assert gateway_error(raw, 400), raw[:400]
    still_serves(g)
    assert b"smuggled" not in log.read_bytes()


# --------------------------------------------------------------------------
# 4. High: pipelined requests were answered into memory without bound.
# --------------------------------------------------------------------------

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_finding4_pipelining_does_not_grow_memory_without_bound(gateway):
    # nginx reads the next pipelined request only after the current response
    # is sent (ngx_http_set_keepalive); HAProxy and Envoy likewise process one
    # request at a time per connection.
    g = gateway()
    pid = g.proc.pid
    base = rss_kb(pid)
    req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    data = req * (540 * 1024 // len(req))
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    sent = 0
    peak = base
    deadline = time.monotonic() + 4 * SLACK
    try:
        while time.monotonic() < deadline:
            if sent < len(data):
                try:
                    sent += s.send(data[sent:sent + 65536])
                except BlockingIOError:
                    pass
            peak = max(peak, rss_kb(pid))
            assert peak - base < 16 * 1024, \
                f"RSS grew from {base} kB to {peak} kB with {sent} bytes of pipelined requests"
            time.sleep(0.02)
        # it did answer: the first responses are there to read
        s.setblocking(True)
        s.settimeout(5 * SLACK)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        s.close()
    still_serves(g)


# --------------------------------------------------------------------------
# 6. Medium: the body of a 1xx response was relayed raw.
# --------------------------------------------------------------------------

def test_finding6_1xx_body_is_not_relayed(hostile):
    # RFC 9112: a 1xx response has no body. nginx, HAProxy and Envoy never
    # relay bytes after a 1xx head as if they were content: the bytes are the
    # next response, here an invalid one, so the client gets a 502.
    g, log = hostile()
    raw = exchange(g, b"GET /h/forged100 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 "), raw[:300]
    assert b"FORGED" not in raw, raw[:300]
    assert gateway_error(raw, 502), raw[:300]
    still_serves(g)


def test_bytes_after_final_response_are_not_relayed_or_reused(hostile):
    # A guard, not named after the finding: it held on c095a72 already.
    # nginx and HAProxy close an upstream connection that sent more than the
    # response it framed; the next request gets a fresh answer.
    g, log = hostile()
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5 * SLACK)
    try:
        f = s.makefile("rb")
        from conftest import read_raw_response
        s.sendall(b"GET /h/extra HTTP/1.1\r\nHost: a\r\n\r\n")
        st, hd, body = read_raw_response(f)
        assert (st, body) == (200, b"real")
        s.sendall(b"POST /h/count HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        st, hd, body = read_raw_response(f)
        assert (st, body) == (200, b"3"), (st, body)
    finally:
        s.close()


# --------------------------------------------------------------------------
# 10. Low: lenient chunked parsing.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("req", [
    b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
    b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    b"GET /llm/echo HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET /llm/echo HTTP/1.1\r\nHost: a\r\nX-Folded:\r\n b\r\n\r\n",
    b"POST /llm/echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
], ids=["no-crlf-after-data", "bare-lf-in-extension", "bare-lf-after-size", "obs-fold",
        "obs-fold-after-empty-value", "te-on-http10"])
def test_finding10_lenient_chunked_framing_is_refused(gateway, req):
    # nginx refuses each of these with 400 ("invalid chunked body", "client
    # sent invalid header line", "client sent HTTP/1.0 request with
    # Transfer-Encoding header"); so do HAProxy and Envoy.
    g = gateway()
    raw = exchange(g, req)
    assert gateway_error(raw, 400), raw[:400]
    still_serves(g)


# --------------------------------------------------------------------------
# 12. Low: Connection: host, duplicate Host, underscores in framing names.
# --------------------------------------------------------------------------

def test_finding12_connection_header_cannot_strip_host(hostile):
    # nginx and Envoy never let a Connection token remove Host or the
    # message framing.
    g, log = hostile()
    raw = exchange(g, b"POST /h/echohead HTTP/1.1\r\nHost: myhost\r\n"
                      b"Connection: host, content-length, close\r\nContent-Length: 3\r\n\r\nabc")
    assert status_of(raw) == 200, raw[:300]
    echoed = raw.split(b"\r\n\r\n", 1)[1]
    assert b"\r\nHost: myhost\r\n" in echoed, echoed
    assert b"\r\nContent-Length: 3\r\n" in echoed, echoed
    assert echoed.endswith(b"\r\n\r\nabc"), echoed


def test_finding12_duplicate_host_is_400(hostile):
    # nginx: "client sent duplicate host header" -> 400 (RFC 9112 3.2).
    g, log = hostile()
    raw = exchange(g, b"GET /h/echohead HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n")
    assert gateway_error(raw, 400), raw[:300]
    assert b"echohead" not in log.read_bytes()


def test_finding12_http11_request_without_host_is_400(hostile):
    # nginx: "client sent HTTP/1.1 request without "Host" header" -> 400
    # (RFC 9112 3.2: a server MUST answer 400); HTTP/1.0 needs none.
    g, log = hostile()
    raw = exchange(g, b"GET /h/echohead HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert gateway_error(raw, 400), raw[:300]
    assert b"Host" in raw.split(b"\r\n\r\n", 1)[1], raw[:300]
    assert b"echohead" not in log.read_bytes()
    raw = exchange(g, b"GET /h/echohead HTTP/1.0\r\n\r\n")
    assert status_of(raw) == 200, raw[:300]


def test_finding12_underscore_framing_headers_are_dropped(hostile):
    # nginx (underscores_in_headers off) drops header names with underscores,
    # so Content_Length / Transfer_Encoding never reach a CGI-style service.
    g, log = hostile()
    raw = exchange(g, b"POST /h/echohead HTTP/1.1\r\nHost: a\r\nContent_Length: 99\r\n"
                      b"Transfer_Encoding: chunked\r\nX_Other: 1\r\nContent-Length: 3\r\n"
                      b"Connection: close\r\n\r\nabc")
    assert status_of(raw) == 200, raw[:300]
    echoed = raw.split(b"\r\n\r\n", 1)[1].lower()
    assert b"content_length" not in echoed and b"transfer_encoding" not in echoed, echoed
    assert b"x_other" not in echoed, echoed


# --------------------------------------------------------------------------
# 14. Low: upstream responses not validated.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["status000", "unsolicited101", "badchunk"])
def test_finding14_invalid_upstream_response_is_502(hostile, mode):
    # nginx: "upstream sent invalid status" / an unexpected 101 / "upstream
    # sent invalid chunked response" -> 502 while nothing was sent yet;
    # HAProxy and Envoy likewise.
    g, log = hostile()
    raw = exchange(g, b"GET /h/%s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % mode.encode())
    assert gateway_error(raw, 502), raw[:400]
    assert b"RAW BYTES" not in raw
    still_serves(g)


# --------------------------------------------------------------------------
# 15. Low: upload progress did not re-arm the upstream timeout.
# --------------------------------------------------------------------------

def test_finding15_upload_progress_rearms_upstream_timeout(hostile):
    # nginx's proxy_send_timeout / proxy_read_timeout count between two
    # successive writes or reads, not for the whole request.
    g2, _ = hostile(upstream_timeout=1)
    s = socket.create_connection(("127.0.0.1", g2.port), timeout=10 * SLACK)
    try:
        pieces = 6
        s.sendall(b"POST /h/count HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n" % (pieces * 10))
        for _ in range(pieces):
            time.sleep(0.4)  # the pace of the upload itself, under test
            s.sendall(b"x" * 10)
        out = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            out += b
    finally:
        s.close()
    assert status_of(out) == 200, out[:300]
    assert out.endswith(b"\r\n\r\n60"), out


# --------------------------------------------------------------------------
# 16. Info: versions, TRACE, invalid methods, absolute-form targets.
# --------------------------------------------------------------------------

@pytest.mark.parametrize("version", [b"HTTP/0.9", b"HTTP/2.0", b"HTTP/9.9"])
def test_finding16_http_version_other_than_1x_is_505(gateway, version):
    # nginx answers 505 HTTP Version Not Supported.
    g = gateway()
    raw = exchange(g, b"GET /info " + version + b"\r\nHost: a\r\n\r\n")
    assert gateway_error(raw, 505), raw[:300]
    still_serves(g)


def test_finding16_trace_is_405(hostile):
    # nginx answers TRACE with 405 and never forwards it.
    g, log = hostile()
    raw = exchange(g, b"TRACE /h/echohead HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert gateway_error(raw, 405), raw[:300]
    assert b"TRACE" not in log.read_bytes()


def test_finding16_invalid_method_is_reported_as_such(gateway):
    # nginx: 400 for an invalid method; the message must name the method,
    # not a Transfer-Encoding problem.
    g = gateway()
    raw = exchange(g, b"@GET /info HTTP/1.1\r\nHost: a\r\n\r\n")
    assert gateway_error(raw, 400), raw[:300]
    msg = json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]
    assert "method" in msg and "Transfer-Encoding" not in msg, msg


def test_finding16_absolute_form_without_host_is_400(hostile):
    # nginx: "client sent invalid host in request line" -> 400.
    g, log = hostile()
    raw = exchange(g, b"GET http:///h/echohead HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert gateway_error(raw, 400), raw[:300]
    assert b"echohead" not in log.read_bytes()


def test_finding16_absolute_form_authority_is_the_host(hostile):
    # RFC 9112 3.2.2: the authority of an absolute-form target replaces Host;
    # nginx and Envoy do so.
    g, log = hostile()
    raw = exchange(g, b"GET http://auth.example/h/echohead HTTP/1.1\r\nHost: other\r\n"
                      b"Connection: close\r\n\r\n")
    assert status_of(raw) == 200, raw[:300]
    echoed = raw.split(b"\r\n\r\n", 1)[1]
    assert echoed.startswith(b"GET /echohead HTTP/1.1\r\n"), echoed
    assert b"\r\nHost: auth.example\r\n" in echoed, echoed
    assert b"other" not in echoed, echoed


# --------------------------------------------------------------------------
# Memory: one budget for all buffers, shown in /metrics.
# --------------------------------------------------------------------------

def metric(g, name):
    r = g.get("/metrics", timeout=5)
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_one_memory_budget_for_all_buffers(gateway):
    # nginx bounds each connection's buffers (client_header_buffer_size,
    # proxy_buffers) and Envoy adds an overload manager with a global
    # buffer limit; here one total (max_buffer_bytes) past which the
    # connections holding the most stop reading, while a small request from
    # anyone else is still served.
    cap = 1 << 20
    g = gateway(max_buffer_bytes=cap)
    assert metric(g, "slurmgate_buffer_bytes") < 64 * 1024
    req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    data = req * (540 * 1024 // len(req))
    socks = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            socks.append(s)
        sent = [0] * len(socks)
        peak = 0
        deadline = time.monotonic() + 3 * SLACK
        while time.monotonic() < deadline:
            for i, s in enumerate(socks):
                if sent[i] < len(data):
                    try:
                        sent[i] += s.send(data[sent[i]:sent[i] + 65536])
                    except BlockingIOError:
                        pass
            v = metric(g, "slurmgate_buffer_bytes")   # served meanwhile
            peak = max(peak, v)
            assert v < cap + 512 * 1024, f"{v} bytes buffered with max_buffer_bytes {cap}"
            time.sleep(0.05)
        assert peak > cap / 2, f"the flood never reached the budget (peak {peak})"
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: metric(g, "slurmgate_buffer_bytes") < 64 * 1024, 10 * SLACK,
               msg="the buffers of closed connections to be released")
