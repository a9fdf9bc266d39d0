"""Every error the gateway itself makes for a request to a /v1 path is in
OpenAI's shape, {"error": {"message", "type", "param", "code"}}, so the
openai clients show the gateway's message (`413 the request body is larger
than max_body_size (4096 bytes)`) and not raw JSON (`413 "request body too
large"`): the HTTP layer's own answers (400 malformed, 405 TRACE, 408 too
slow, 413 too big, 431 head too big, 505 version) and the front's before
routing (400 a path that hides something, 421 a Host not allowed) as well
as the router's. Every other path keeps the gateway's own shape,
{"error": "...", "status": N}.

And a gateway-side shortage of local ports (connect() fails with
EADDRNOTAVAIL: every port of net.ipv4.ip_local_port_range is taken) is
the gateway's, not the service's: a 503 that says so, and the instance
stays in rotation (as for "out of file descriptors", test_admin_host.py).
That test runs the gateway in a network namespace of its own with a tiny
port range there; the host's sysctls are never touched."""
import ctypes
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import (SLACK, Gateway, Resp, demo_service, gateway_bin, openai_error_body,
                      read_raw_response, wait_until)
from jsclient import run_js


def one_response(port, data, timeout=10.0, sock=None):
    """Send DATA on a new connection (or SOCK) and read one response:
    (status, headers, body). Never waits for the close (a refused request's
    connection lingers a while)."""
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=timeout * SLACK)
    s.settimeout(timeout * SLACK)
    try:
        if data:
            s.sendall(data)
        return read_raw_response(s.makefile("rb"))
    finally:
        s.close()


def openai_error(status, headers, body, want_status, want_type, want_code, words=()):
    """The error is OpenAI's shape with these type and code, and its
    message names each of WORDS."""
    assert status == want_status, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    o = json.loads(body)
    e = openai_error_body(o)
    assert (e["type"], e["code"]) == (want_type, want_code), o
    for w in words:
        assert w in e["message"], (w, o)
    return e


def gateway_error(status, headers, body, want_status, words=()):
    """The error is the gateway's own shape, {"error": "...", "status": N}."""
    assert status == want_status, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    o = json.loads(body)
    assert set(o) == {"error", "status"} and o["status"] == want_status, o
    assert isinstance(o["error"], str), o
    for w in words:
        assert w in o["error"], (w, o)
    return o["error"]


# --------------------------------------------------------------------------
# the openai client sees the gateway's message
# --------------------------------------------------------------------------

def test_v1_body_over_max_body_size_is_an_openai_413_the_openai_client_shows(gateway):
    """A body past max_body_size is refused by the HTTP layer itself (on
    the head, before the /v1 front reads it): on /v1, in OpenAI's shape."""
    g = gateway([demo_service()], max_body_size=4096)
    out = run_js(g, """
        await client.chat.completions.create({ model: 'demo',
            messages: [{ role: 'user', content: 'x'.repeat(20000) }] });
        return 'no error';""")
    t = out["thrown"]
    assert t["status"] == 413, out
    assert t["type"] == "invalid_request_error" and t["code"] == "request_too_large", out
    msg = t["error"]["message"]
    assert "max_body_size" in msg and "4096" in msg, out
    # the client prints the gateway's message, not the raw JSON
    assert t["message"] == f"413 {msg}", out
    # nothing was started for it
    assert g.svc("demo")["starts"] == 0
    # the same body on a route keeps the gateway's shape
    body = b"x" * 20000
    st, h, b = one_response(g.port, b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nContent-Length: "
                            + str(len(body)).encode() + b"\r\n\r\n" + body)
    gateway_error(st, h, b, 413, ["max_body_size", "4096"])


def test_v1_head_over_max_header_size_is_an_openai_431_the_openai_client_shows(gateway):
    g = gateway([demo_service()], max_header_size=4096)
    out = run_js(g, """
        await client.chat.completions.create({ model: 'demo', messages: [] },
                                             { headers: { 'X-Big': 'b'.repeat(8000) } });
        return 'no error';""")
    t = out["thrown"]
    assert t["status"] == 431, out
    assert t["type"] == "invalid_request_error", out
    assert t["code"] == "request_header_fields_too_large", out
    msg = t["error"]["message"]
    assert "max_header_size" in msg and "4096" in msg, out
    assert t["message"] == f"431 {msg}", out


def test_max_header_size_above_the_http_parsers_80k_is_the_limit_met(gateway):
    """max_header_size may be up to 1 MiB: a head under it is served, not
    refused at http_parser's own 80 KiB, and one over it gets a 431 that
    names max_header_size with its value."""
    g = gateway([demo_service()], max_header_size=200000)
    st, h, b = one_response(g.port, b"GET /v1/models HTTP/1.1\r\nHost: a\r\nX-Big: "
                            + b"b" * 150000 + b"\r\n\r\n")
    assert st == 200 and json.loads(b)["object"] == "list", (st, b[:300])
    st, h, b = one_response(g.port, b"GET /v1/models HTTP/1.1\r\nHost: a\r\nX-Big: "
                            + b"b" * 250000 + b"\r\n\r\n")
    openai_error(st, h, b, 431, "invalid_request_error", "request_header_fields_too_large",
                 ["max_header_size (200000 bytes)"])


# --------------------------------------------------------------------------
# every error of the layer and the front, on /v1 and elsewhere
# --------------------------------------------------------------------------

# (name, request bytes with {path}, status, OpenAI code, words of the message)
BIG = b"y" * 5000
CASES = [
    ("framed twice", b"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400, "invalid_request", ["Content-Length"]),
    ("bad chunk", b"POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\n", 400, "invalid_request", ["chunk"]),
    ("no Host", b"GET {path} HTTP/1.1\r\nX: 1\r\n\r\n", 400, "invalid_request", ["Host"]),
    ("duplicate Host", b"GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400,
     "invalid_request", ["Host"]),
    ("obs-fold", b"GET {path} HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 400, "invalid_request",
     ["folding"]),
    ("HTTP/1.2", b"GET {path} HTTP/1.2\r\nHost: a\r\n\r\n", 505, "http_version_not_supported",
     ["HTTP/1.0 and HTTP/1.1"]),
    ("TRACE", b"TRACE {path} HTTP/1.1\r\nHost: a\r\n\r\n", 405, "method_not_allowed", ["TRACE"]),
    ("body too large", b"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + BIG,
     413, "request_too_large", ["max_body_size", "4096"]),
    ("chunked body too large", b"POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n1388\r\n" + BIG + b"\r\n0\r\n\r\n", 413, "request_too_large",
     ["max_body_size", "4096"]),
    ("absolute form, too large", b"POST http://a{path} HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"
     + BIG, 413, "request_too_large", ["max_body_size"]),
    ("head too large", b"GET {path} HTTP/1.1\r\nHost: a\r\nX-Big: " + b"z" * 5000 + b"\r\n\r\n",
     431, "request_header_fields_too_large", ["max_header_size", "4096"]),
    ("target too large", b"GET {path}?" + b"q" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
     431, "request_header_fields_too_large", ["max_header_size"]),
    ("too many header fields", b"GET {path} HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 300
     + b"\r\n", 431, "request_header_fields_too_large", ["header fields"]),
    ("head too slow", b"POST {path} HTTP/1.1\r\nHost: a\r\n", 408, "request_timeout",
     ["header_timeout"]),
    ("body too slow", b"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
     408, "request_timeout", ["body_timeout"]),
    # the front's own, before routing
    ("encoded slash", b"GET {path}/a%2Fb HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 400,
     "invalid_request", ["%2F"]),
    ("Host not allowed", b"GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
     421, "misdirected_request", ["allowed_hosts"]),
]


# cases whose error comes while the body is read: elsewhere than on /v1
# and a route, the request is answered on its head, before its body
BODY_CASES = {"bad chunk", "chunked body too large", "body too slow"}


@pytest.fixture
def strict_gateway(gateway):
    return gateway([demo_service()], max_body_size=4096, max_header_size=4096,
                   header_timeout=1, body_timeout=1, allowed_hosts=["a", "127.0.0.1"])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1"])
def test_every_gateway_error_on_a_v1_path_is_openai_shaped(strict_gateway, path):
    g = strict_gateway
    failed = []
    for name, req, status, code, words in CASES:
        st, h, b = one_response(g.port, req.replace(b"{path}", path.encode()))
        try:
            e = openai_error(st, h, b, status, "invalid_request_error", code, words)
        except AssertionError as ex:
            failed.append(f"{name}: {ex}")
            continue
        assert "\n" not in e["message"], e
    assert not failed, "\n".join(failed)
    # nothing of it reached a service, and the gateway serves on
    assert g.svc("demo")["starts"] == 0
    assert g.get("/api/health").status == 200


@pytest.mark.parametrize("path", ["/llm/x", "/api/services", "/v1x/a", "/v2/chat/completions"])
def test_the_same_errors_elsewhere_keep_the_gateway_shape(strict_gateway, path):
    g = strict_gateway
    failed = []
    for name, req, status, _code, words in CASES:
        if name in BODY_CASES and path != "/llm/x":
            continue
        st, h, b = one_response(g.port, req.replace(b"{path}", path.encode()))
        try:
            gateway_error(st, h, b, status, words)
        except AssertionError as ex:
            failed.append(f"{name}: {ex}")
    assert not failed, "\n".join(failed)


def test_a_bad_request_after_another_on_one_connection_is_shaped_by_its_own_path(gateway):
    """The shape follows the request that failed, not the one before it on
    the same kept-alive connection."""
    g = gateway([demo_service()])
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLACK)
    f = s.makefile("rb")
    try:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_raw_response(f)[0] == 200
        # an invalid method: the parser fails on the request's first byte
        s.sendall(b"@GET /llm/x HTTP/1.1\r\nHost: a\r\n\r\n")
        gateway_error(*read_raw_response(f), 400, ["method"])
    finally:
        s.close()
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLACK)
    f = s.makefile("rb")
    try:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_raw_response(f)[0] == 200
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        openai_error(*read_raw_response(f), 400, "invalid_request_error", "invalid_request",
                     ["Host"])
    finally:
        s.close()


# --------------------------------------------------------------------------
# out of local ports (EADDRNOTAVAIL), in a network namespace of its own
# --------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def netns_socket(pid):
    """A TCP socket made inside the network namespace of process PID (a
    socket stays in the namespace it was made in; only the short-lived
    thread that makes it enters that namespace)."""
    out = {}

    def make():
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                out["err"] = OSError(e, f"setns: {os.strerror(e)}")
                return
            out["sock"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            os.close(fd)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if "err" in out:
        raise out["err"]
    return out["sock"]


class NetnsGateway(Gateway):
    """A gateway (and so its local services) in a network namespace of its
    own (`unshare -n`, loopback up). The test talks to it through sockets
    made in that namespace, each bound to a port of its own below the
    namespace's ephemeral range (the range may be all taken)."""

    next_port = 20000

    def start(self, ready_timeout=10.0):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", 'PATH="$PATH:/usr/sbin:/sbin" ip link set lo up && exec "$@"',
             "sh",
             str(gateway_bin()), "-c", str(self.config_path), *self.args],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, cwd=str(self.dir))
        deadline = time.monotonic() + ready_timeout * SLACK
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"slurmgate exited with {self.proc.returncode} at start:\n{self.log()}")
            try:
                if self.get("/api/health", timeout=1).status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"slurmgate did not answer /api/health:\n{self.log()}")
            time.sleep(0.05)

    def socket(self, timeout=10.0):
        s = netns_socket(self.proc.pid)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(timeout * SLACK)
        while True:
            NetnsGateway.next_port += 1
            if NetnsGateway.next_port in (self.port, *self.service_ports()):
                continue
            try:
                s.bind(("127.0.0.1", NetnsGateway.next_port))
                break
            except OSError:
                if NetnsGateway.next_port > 30000:
                    raise
        s.connect(("127.0.0.1", self.port))
        return s

    def request(self, method, path, body=None, headers=None, timeout=10.0, auth=False):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout * SLACK)
        conn.sock = self.socket(timeout)
        t0 = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return Resp(r.status, r.reason, r.headers, r.read(), time.monotonic() - t0)
        finally:
            conn.close()

    def sysctl(self, key, value):
        """Set a sysctl in the gateway's namespace only."""
        sysctl = shutil.which("sysctl", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        subprocess.run(["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", sysctl, "-q", "-w",
                        f"{key}={value}"], check=True, timeout=10)


@pytest.fixture
def netns_gateway(tmp_path):
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -n needs CAP_SYS_ADMIN)")
    made = []

    def make(services, **top):
        g = NetnsGateway(tmp_path, services, name=f"nsgw{len(made)}", **top)
        made.append(g)
        return g.start()

    yield make
    for g in made:
        g.close()


def test_eaddrnotavail_out_of_local_ports_is_the_gateways_503_and_the_instance_stays(
        netns_gateway):
    g = netns_gateway([demo_service(start_timeout=2, health_interval=1)])
    assert g.get("/llm/health").status == 200
    assert g.state() == "ready"
    # a stream holds the one pooled upstream connection (3 s: longer than
    # start_timeout, after which an unhealthy instance would be stopped)
    stream = g.socket()
    sf = stream.makefile("rb")
    stream.sendall(b"GET /llm/stream?n=30&ms=100 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sf.readline().startswith(b"HTTP/1.1 200")
    # every local port of the namespace's range is taken: a port bound here
    taken = g.socket()
    port = taken.getsockname()[1]
    g.sysctl("net.ipv4.ip_local_port_range", f"{port} {port}")
    try:
        # the next request needs a new upstream connection: none can be opened
        r = g.get("/llm/health")
        assert r.status == 503, r
        assert "out of local ports" in r.text and "ip_local_port_range" in r.text, r
        assert r.header("Retry-After") == "1", r
        # on /v1, the same in OpenAI's shape
        r = g.post("/v1/chat/completions", body=b'{"model":"demo","messages":[]}',
                   headers={"Content-Type": "application/json"})
        openai_error(r.status, {k.lower(): v for k, v in r.headers.items()}, r.body, 503,
                     "service_unavailable", "service_unavailable", ["out of local ports"])
        # the stream is not cut, and the instance stays in rotation through
        # failed probes (health_interval 1 s, start_timeout 2 s)
        body = b""
        while b"data: 29" not in body:
            chunk = sf.read1(4096)
            assert chunk, f"the stream was cut: {body[-200:]!r}"
            body += chunk
        assert g.state() == "ready"
    finally:
        g.sysctl("net.ipv4.ip_local_port_range", "32768 60999")
        taken.close()
        stream.close()
    wait_until(lambda: g.get("/llm/health").status == 200, 5 * SLACK,
               msg="the gateway to connect again once ports are free")
    assert g.state() == "ready"
    log = g.log(tail=10 ** 8)
    assert "ready -> unhealthy" not in log, log
    assert "out of local ports" in log, log
