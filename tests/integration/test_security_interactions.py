"""Issue 9, re-audit of the merged code: what the HTTP layer (http.c,
http_parse.c) and the router (front.c, router.c) do together, as an
attacker on a raw socket would try it. These guards held when written; each
says which interaction of the two it covers."""
import json
import socket

from conftest import SLACK, demo_service, read_raw_response
from test_http_hardening import HOSTILE, hostile  # noqa: F401 - the fixture

KEY = "sk-interactions-0123456789"


def chunked_v1(path, obj, trailer_kb=8):
    body = json.dumps(obj).encode()
    trailer = b"".join(b"X-T%d: %s\r\n" % (k, b"t" * 1000) for k in range(trailer_kb))
    return (b"POST " + path + b" HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailer + b"\r\n")


def test_pipelined_requests_after_a_v1_request_with_trailers(hostile):  # noqa: F811
    # The /v1 body is read after the head (the model lookup), its trailer
    # fields after that; the next pipelined requests, sent in the same
    # packet, must each get their own answer, in order, from the right head.
    g, log = hostile()
    data = (chunked_v1(b"/v1/echohead", {"model": "hs"})
            + b"GET /h/echohead HTTP/1.1\r\nHost: second\r\n\r\n"
            + b"POST /v1/echohead HTTP/1.1\r\nHost: third\r\nContent-Length: 15\r\n\r\n"
            + b'{"model":"hs"}\n'
            + b"GET /api/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLACK)
    try:
        s.sendall(data)
        f = s.makefile("rb")
        st, hd, body = read_raw_response(f)
        assert st == 200 and body.startswith(b"POST /v1/echohead HTTP/1.1\r\n"), body[:300]
        assert b"X-T0" not in body and b"\r\nHost: a\r\n" in body, body[:600]
        st, hd, body = read_raw_response(f)
        assert st == 200 and body.startswith(b"GET /echohead HTTP/1.1\r\n"), body[:300]
        assert b"\r\nHost: second\r\n" in body, body[:600]
        st, hd, body = read_raw_response(f)
        assert st == 200 and b"\r\nHost: third\r\n" in body and body.endswith(b'{"model":"hs"}\n'), body
        st, hd, body = read_raw_response(f)
        assert st == 200 and json.loads(body)["status"] == "ok"
        assert f.read() == b""
    finally:
        s.close()


def test_v1_auth_and_size_refusals_send_no_100_continue(gateway):
    # A client that waits for 100 Continue before sending its body must get
    # the refusal instead (nginx and Envoy answer the final status at once);
    # a 100 first would invite the body we refuse to read.
    g = gateway([demo_service(aliases=["m"])], api_keys=[{"key": KEY}], max_json_body=1000)
    for head, status in [
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
         b"Content-Length: 20\r\n\r\n", 401),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
         b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 5000\r\n\r\n", 413),
    ]:
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLACK)
        try:
            s.sendall(head)
            st, hd, body = read_raw_response(s.makefile("rb"))
            assert st == status, (st, body)
            assert "close" in hd.get("connection", ""), hd
        finally:
            s.close()
    assert g.svc()["starts"] == 0


def test_hostile_service_on_the_v1_path(hostile):  # noqa: F811
    # The /v1 path forwards through the same response checks as /<route>/:
    # a 1xx body, an invalid status and bytes after the response never reach
    # the client, and the kept-alive client connection stays in step.
    g, log = hostile()
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLACK)
    try:
        f = s.makefile("rb")
        for mode, want in [(b"forged100", 502), (b"status000", 502), (b"extra", 200),
                           (b"count", 200)]:
            body = b'{"model":"hs"}'
            s.sendall(b"POST /v1/" + mode + b" HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                      % len(body) + body)
            st, hd, out = read_raw_response(f)
            assert st == want, (mode, st, out[:300])
            assert b"FORGED" not in out and b"smuggl" not in out, out
            if want == 502:
                break   # the gateway may close after its own error; start again
        s.close()
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLACK)
        f = s.makefile("rb")
        for mode in (b"extra", b"count"):
            body = b'{"model":"hs"}'
            s.sendall(b"POST /v1/" + mode + b" HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                      % len(body) + body)
            st, hd, out = read_raw_response(f)
            assert st == 200, (mode, out)
            assert out == (b"real" if mode == b"extra" else b"14"), (mode, out)
    finally:
        s.close()
