"""nginx in front of slurmgate, configured by examples/nginx.conf itself.

The test renders the example the way its header tells an admin to (every
__PLACEHOLDER__ replaced: test ports, a throw-away self-signed certificate),
adds one plain-HTTP listener to its HTTPS server, wraps it in a minimal main
config with every path in a temp dir, and runs the real nginx in front of a
real slurmgate and the demo service (tokens 300 ms apart). Then:

- a token stream (SSE from POST /llm/generate_stream) arrives event by event,
  spread over time, through nginx -> slurmgate -> demo, over HTTPS and HTTP;
- a request held during a cold start gets through nginx: a stream sees
  slurmgate's progress comments at once, then its tokens; a plain request
  its answer. With nginx's read timeout short, the same wait ends in a 504,
  which is why the example sets it long;
- plain requests, forwarded headers, a body above nginx's default 1 MB limit;
- nginx -t accepts the rendered example, which keeps the directives streams
  need; port 80 redirects to HTTPS.

The demo service sends "X-Accel-Buffering: no", which on its own unbuffers its
streams in nginx; the wrapper makes nginx ignore that header so that the
example's own settings are what is tested. (Note: nginx 1.22 passes a stream
on promptly to a client that reads fast even with proxy_buffering on; what
buffering changes is the slow-client case, which this test does not time.)

nginx, slurmgate and the demo are stopped at teardown, also on failure;
every wait has a deadline; all traffic stays on 127.0.0.1.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, SLACK, demo_service, free_port, port_listening

EXAMPLE = REPO / "examples" / "nginx.conf"
PLACEHOLDERS = ("__SLURMGATE__", "__HTTP_LISTEN__", "__HTTPS_LISTEN__", "__SERVER_NAME__",
                "__TLS_CERT__", "__TLS_KEY__")
TOKEN_MS = 300      # the demo's delay between streamed tokens
N_TOKENS = 6


def nginx_bin():
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail("nginx is not installed (Debian: nginx-light; make test-deps installs it)",
                    pytrace=False)
    return found


def render_example(values):
    """examples/nginx.conf with every placeholder replaced; the example and
    this test must agree on the placeholders."""
    text = EXAMPLE.read_text()
    found = set(re.findall(r"__[A-Z][A-Z0-9_]*__", text))
    assert found == set(PLACEHOLDERS), f"placeholders in {EXAMPLE}: {sorted(found)}"
    for k in PLACEHOLDERS:
        text = text.replace(k, values[k])
    return text


def make_cert(d):
    """A self-signed certificate for localhost / 127.0.0.1."""
    cert, key = d / "cert.pem", d / "key.pem"
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed", pytrace=False)
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=30)
    assert r.returncode == 0, r.stdout
    return cert, key


class Nginx:
    """One nginx (master + 1 worker) with the rendered example, in its own
    process group, everything under DIR."""

    def __init__(self, d, upstream_port, mutate=None):
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()    # the example's redirecting server
        self.https_port = free_port()   # the example's proxying server, TLS
        self.plain_port = free_port()   # the same server, plain HTTP (added here)
        self.cert, self.key = make_cert(self.dir)
        site = render_example({
            "__SLURMGATE__": f"127.0.0.1:{upstream_port}",
            "__HTTP_LISTEN__": f"127.0.0.1:{self.http_port}",
            "__HTTPS_LISTEN__": f"127.0.0.1:{self.https_port}",
            "__SERVER_NAME__": "localhost",
            "__TLS_CERT__": str(self.cert),
            "__TLS_KEY__": str(self.key),
        })
        # The HTTPS server also listens on a plain port: the same location,
        # reachable without TLS.
        pat = re.compile(r"^([ \t]*)(listen[ \t]+127\.0\.0\.1:%d[ \t]+ssl\b[^;]*;)[ \t]*$"
                         % self.https_port, re.M)
        site, n = pat.subn(r"\1\2\n\1listen 127.0.0.1:%d;  # added by the test" % self.plain_port,
                           site)
        assert n == 1, "the example's HTTPS listen line was not found"
        if mutate:
            site = mutate(site)
        (self.dir / "slurmgate.conf").write_text(site)
        self.error_log = self.dir / "error.log"
        user = "user root;\n" if os.geteuid() == 0 else ""
        d = self.dir
        self.conf = d / "nginx.conf"
        self.conf.write_text(f"""# generated by tests/integration/test_nginx_front.py
{user}worker_processes 1;
pid {d}/nginx.pid;
error_log {self.error_log} notice;
events {{
    worker_connections 256;
}}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body_temp;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    # The demo sends "X-Accel-Buffering: no"; test the example's own settings.
    proxy_ignore_headers X-Accel-Buffering;
    include {d}/slurmgate.conf;
}}
""")
        self.proc = None
        self._out = None

    def args(self, *extra):
        return [nginx_bin(), "-p", f"{self.dir}/", "-e", str(self.error_log),
                "-c", str(self.conf), *extra]

    def check(self):
        """nginx -t on the config: (returncode, output)."""
        r = subprocess.run(self.args("-t"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        return r.returncode, r.stdout

    def start(self, timeout=10.0):
        rc, out = self.check()
        assert rc == 0, f"nginx -t failed:\n{out}"
        self._out = open(self.dir / "nginx.out", "wb")
        self.proc = subprocess.Popen(self.args("-g", "daemon off;"), stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout * SLACK
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"nginx exited with {self.proc.returncode}:\n{self.log()}",
                            pytrace=False)
            if all(port_listening(p) for p in (self.http_port, self.https_port, self.plain_port)):
                try:
                    if self.request("http", "GET", "/api/health", timeout=2).status == 200:
                        return self
                except (OSError, http.client.HTTPException):
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"nginx did not proxy /api/health within {timeout} s:\n{self.log()}",
                            pytrace=False)
            time.sleep(0.05)

    def log(self):
        parts = []
        for name in ("error.log", "nginx.out"):
            try:
                parts.append(f"--- {name} ---\n" + (self.dir / name).read_text(errors="replace")[-6000:])
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def errors(self):
        """Lines of nginx's error log at level error or worse."""
        try:
            text = self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [l for l in text.splitlines()
                if re.search(r"\[(error|crit|alert|emerg)\]", l)]

    def stop(self):
        """Graceful stop (SIGQUIT), then SIGKILL to the whole group."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGQUIT)
                try:
                    self.proc.wait(5 * SLACK)
                except subprocess.TimeoutExpired:
                    self._killpg()
                    self.proc.wait(5)
        finally:
            self._killpg()   # a worker left behind
            if self._out:
                self._out.close()

    def _killpg(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # --- clients ---

    def port_for(self, scheme):
        return self.https_port if scheme == "https" else self.plain_port

    def tls_context(self):
        ctx = ssl.create_default_context(cafile=str(self.cert))
        return ctx

    def connection(self, scheme, timeout=10.0):
        if scheme == "https":
            return http.client.HTTPSConnection("localhost", self.https_port, timeout=timeout * SLACK,
                                               context=self.tls_context())
        return http.client.HTTPConnection("127.0.0.1", self.port_for(scheme),
                                          timeout=timeout * SLACK)

    def request(self, scheme, method, path, body=None, headers=None, timeout=10.0):
        conn = self.connection(scheme, timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            r.body = r.read()
            return r
        finally:
            conn.close()

    def raw_socket(self, scheme, timeout=10.0):
        s = socket.create_connection(("127.0.0.1", self.port_for(scheme)), timeout=timeout * SLACK)
        if scheme == "https":
            s = self.tls_context().wrap_socket(s, server_hostname="localhost")
        return s


class StreamReader:
    """An HTTP/1.1 response read incrementally; SSE `data:` lines of the body
    are recorded with the time their last byte arrived."""

    def __init__(self, t0):
        self.t0 = t0
        self.buf = b""
        self.head = None
        self.status = None
        self.headers = {}
        self.chunked = False
        self.state = "size"
        self.left = 0
        self.line = b""
        self.head_at = None  # seconds after t0
        self.events = []     # (seconds after t0, line)
        self.comments = []   # (seconds after t0, line)
        self.done = False

    def feed(self, data, now):
        self.buf += data
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            self.head_at = now - self.t0
            lines = self.head.split("\r\n")
            self.status = int(lines[0].split()[1])
            for h in lines[1:]:
                k, _, v = h.partition(":")
                self.headers[k.strip().lower()] = v.strip()
            self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if not self.chunked:
            data, self.buf = self.buf, b""
            self._body(data, now)
            return
        while not self.done:
            if self.state == "size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return
                size = int(self.buf[:i].split(b";")[0].strip(), 16)
                self.buf = self.buf[i + 2:]
                self.state, self.left = ("trailer", 0) if size == 0 else ("data", size)
            elif self.state == "data":
                take = min(self.left, len(self.buf))
                if take == 0:
                    return
                self._body(self.buf[:take], now)
                self.buf, self.left = self.buf[take:], self.left - take
                if self.left == 0:
                    self.state = "crlf"
            elif self.state == "crlf":
                if len(self.buf) < 2:
                    return
                assert self.buf[:2] == b"\r\n", f"bad chunk framing: {self.buf[:20]!r}"
                self.buf, self.state = self.buf[2:], "size"
            else:  # trailer
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                if line == b"":
                    self.done = True

    def _body(self, data, now):
        self.line += data
        while b"\n" in self.line:
            line, self.line = self.line.split(b"\n", 1)
            line = line.rstrip(b"\r").decode("utf-8", "replace")
            if line.startswith("data:"):
                self.events.append((now - self.t0, line))
            elif line.startswith(":"):
                self.comments.append((now - self.t0, line))


def read_stream(ng, scheme, path, payload, timeout=20.0):
    """POST PAYLOAD (JSON) to PATH through nginx on a raw socket, reading the
    response with small reads; returns the StreamReader."""
    body = json.dumps(payload).encode()
    s = ng.raw_socket(scheme, timeout)
    try:
        req = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
               f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        t0 = time.monotonic()
        s.sendall(req)
        rd = StreamReader(t0)
        deadline = t0 + timeout * SLACK
        while not rd.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the stream did not end within {timeout} s; "
                                     f"events so far: {rd.events}")
            s.settimeout(left)
            try:
                data = s.recv(256)
            except socket.timeout:
                continue
            if not data:
                break
            rd.feed(data, time.monotonic())
        return rd
    finally:
        s.close()


@pytest.fixture
def front(gateway, tmp_path):
    """Factory: front(mutate=None, env=None, **top) -> (gateway, nginx): slurmgate
    (top-level config keys TOP, extra environment ENV) with the demo
    service (tokens TOKEN_MS apart) behind nginx configured by the example.
    nginx is stopped before the gateway fixture stops slurmgate."""
    made = []

    def make(mutate=None, env=None, **top):
        # nginx on loopback is the proxy whose X-Forwarded-* slurmgate believes
        top.setdefault("trusted_proxies", ["127.0.0.1", "::1"])
        gw = gateway([demo_service()], env={"DEMO_TOKEN_DELAY_MS": str(TOKEN_MS), **(env or {})},
                     **top)
        ng = Nginx(tmp_path / f"nginx{len(made)}", gw.port, mutate)
        made.append(ng)
        ng.start()
        return gw, ng

    yield make
    for ng in made:
        ng.stop()


def generate_stream(ng, scheme):
    return read_stream(ng, scheme, "/llm/generate_stream",
                       {"inputs": "hi", "parameters": {"max_new_tokens": N_TOKENS}})


def warm_up(ng, scheme):
    """A plain request: cold-starts the demo service through nginx."""
    r = ng.request(scheme, "POST", "/llm/generate",
                   body=json.dumps({"inputs": "hi", "parameters": {"max_new_tokens": 3}}),
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status == 200, (r.status, r.body)
    return r


def describe(events):
    return ", ".join(f"{t * 1000:.0f} ms" for t, _ in events)


# --------------------------------------------------------------------------


def directives(text):
    """{name: [argument string, ...]} of every simple directive in TEXT."""
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(";"):
            name, _, args = line[:-1].partition(" ")
            found.setdefault(name, []).append(" ".join(args.split()))
    return found


def seconds(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", v)
    assert m, v
    return int(m.group(1)) * {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def test_rendered_example_passes_nginx_t(tmp_path):
    ng = Nginx(tmp_path / "nginx", free_port())
    rc, out = ng.check()
    assert rc == 0, out
    problems = [l for l in out.splitlines() if re.search(r"\[(warn|error|crit|alert|emerg)\]", l)]
    assert not problems, out
    # what streams and held requests need, in the example itself
    d = directives((ng.dir / "slurmgate.conf").read_text())
    for name, want in [("proxy_http_version", "1.1"), ("proxy_buffering", "off"),
                       ("proxy_cache", "off"), ("proxy_request_buffering", "off"),
                       ("gzip", "off")]:
        assert d.get(name) == [want], (name, d.get(name))
    assert seconds(d["proxy_read_timeout"][0]) >= 3600
    assert d["client_max_body_size"] == ["64m"]
    assert d["keepalive"] and int(d["keepalive"][0]) > 0
    headers = {a.split()[0].lower() for a in d["proxy_set_header"]}
    assert {"connection", "host", "x-forwarded-for", "x-forwarded-proto",
            "x-forwarded-host"} <= headers, headers


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_sse_events_arrive_one_by_one(front, scheme):
    gw, ng = front()
    warm_up(ng, scheme)
    rd = generate_stream(ng, scheme)
    assert rd.status == 200, rd.head
    assert rd.headers.get("content-type", "").startswith("text/event-stream"), rd.head
    assert rd.done, "the chunked stream did not end properly"
    ev = rd.events
    assert len(ev) == N_TOKENS, f"{len(ev)} data events: {ev}"
    assert '"generated_text":null' in ev[0][1] and '"finish_reason":"length"' in ev[-1][1]
    print(f"{scheme}: data events at {describe(ev)} after the request")
    gaps = [b[0] - a[0] for a, b in zip(ev, ev[1:])]
    t = TOKEN_MS / 1000
    # Token by token, as the service produced them: the first early, the rest
    # spread over the stream ~TOKEN_MS apart (one hiccup allowed), not a lump
    # at the end.
    assert ev[0][0] < 3 * t * SLACK, f"first event late: {describe(ev)}"
    assert ev[-1][0] - ev[0][0] >= 0.6 * (N_TOKENS - 1) * t, f"events bunched: {describe(ev)}"
    assert sum(g < 0.4 * t for g in gaps) <= 1, f"events bunched: {describe(ev)}"
    assert not ng.errors(), "\n".join(ng.errors())


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_plain_requests_and_forwarded_headers(front, scheme):
    gw, ng = front()
    r = warm_up(ng, scheme)
    assert json.loads(r.body)["generated_text"].strip(), r.body
    r = ng.request(scheme, "GET", "/llm/echo?x=1", headers={"X-Forwarded-For": "6.6.6.6"})
    assert r.status == 200, r.body
    echo = json.loads(r.body)
    h = echo["headers"]
    assert echo["uri"] == "/echo?x=1"
    assert h["x-forwarded-proto"] == scheme
    assert h["x-forwarded-host"] == f"localhost:{ng.port_for(scheme)}" or \
        h["x-forwarded-host"] == f"127.0.0.1:{ng.port_for(scheme)}", h
    # nginx sets the client's address (ignoring what the client claimed),
    # slurmgate appends nginx's
    assert h["x-forwarded-for"] == "127.0.0.1, 127.0.0.1", h
    assert h.get("x-real-ip") == "127.0.0.1", h
    assert not ng.errors(), "\n".join(ng.errors())


def test_body_above_nginx_default_limit_passes(front):
    """client_max_body_size: 3 MiB (nginx's default limit is 1 MiB)."""
    gw, ng = front()
    warm_up(ng, "https")
    body = (b"0123456789abcdef" * 65536) * 3
    r = ng.request("https", "POST", "/llm/echo", body=body,
                   headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert r.status == 200, r.body[:300]
    assert json.loads(r.body)["body_length"] == len(body)


def test_plain_http_server_redirects_to_https(front):
    gw, ng = front()
    conn = http.client.HTTPConnection("127.0.0.1", ng.http_port, timeout=10 * SLACK)
    try:
        conn.request("GET", "/llm/health", headers={"Host": "localhost"})
        r = conn.getresponse()
        r.read()
    finally:
        conn.close()
    assert r.status == 301
    assert r.getheader("Location") == "https://localhost/llm/health"


def test_cold_start_held_through_nginx(front):
    """The service takes 2 s to come up. A stream gets its head and
    slurmgate's progress comments at once, then the tokens; after a stop, a
    plain request waits through nginx for its answer."""
    gw, ng = front(env={"DEMO_DELAY": "2"}, feedback_interval=1)
    rd = generate_stream(ng, "https")
    assert rd.status == 200, rd.head
    assert rd.head_at < 1.0 * SLACK, f"head after {rd.head_at:.2f} s"
    progress = [(t, l) for t, l in rd.comments if l.startswith(": slurmgate:")]
    assert progress, rd.comments
    assert len(rd.events) == N_TOKENS, rd.events
    assert progress[0][0] < 1.8 and progress[0][0] < rd.events[0][0], (rd.comments, rd.events)
    assert rd.events[0][0] >= 1.5, describe(rd.events)

    r = gw.post("/api/services/demo/stop")
    assert r.status in (200, 202), r
    gw.wait_state("stopped", timeout=10)
    r = warm_up(ng, "https")
    assert float(r.getheader("X-Slurmgate-Cold-Start")) >= 1.5, r.getheaders()
    assert not ng.errors(), "\n".join(ng.errors())


def test_short_nginx_read_timeout_would_cut_a_held_request(front):
    """Control for the example's long proxy_read_timeout: with 1 s, the same
    held request ends in nginx's 504 while slurmgate still waits."""
    def short_timeout(site):
        site, n = re.subn(r"proxy_read_timeout\s+\w+;", "proxy_read_timeout 1s;", site)
        assert n == 1
        return site

    gw, ng = front(mutate=short_timeout, env={"DEMO_DELAY": "3"})
    t0 = time.monotonic()
    r = ng.request("http", "POST", "/llm/generate", body=b'{"inputs":"hi"}',
                   headers={"Content-Type": "application/json"}, timeout=20)
    assert r.status == 504, (r.status, r.body)
    assert "nginx" in (r.getheader("Server") or ""), r.getheaders()
    assert time.monotonic() - t0 < 2.5 * SLACK


# --------------------------------------------------------------------------
# issue 9, finding 9: services share the admin pages' origin. The example's
# recipe ("#|" lines) gives the admin pages a host of their own.
# --------------------------------------------------------------------------

def admin_host_recipe(site):
    """The example with its "#|" lines uncommented; the admin server also
    listens on the test's plain port, as the default server there (so that
    the fixture's readiness check, Host 127.0.0.1, reaches /api/health)."""
    plain = re.search(r"listen 127\.0\.0\.1:(\d+);  # added by the test", site).group(1)
    n_marked = len(re.findall(r"^[ \t]*#\| ?", site, re.M))
    assert n_marked > 20, "the admin-host recipe is gone from the example"
    site = re.sub(r"^([ \t]*)#\| ?", r"\1", site, flags=re.M)
    site, n = re.subn(r"(server_name admin\.localhost;)",
                      r"\1\n    listen 127.0.0.1:%s default_server;" % plain, site)
    assert n == 1
    return site


def test_finding9_admin_pages_on_their_own_host_recipe(front):
    gw, ng = front(mutate=admin_host_recipe,
                   allowed_hosts=["localhost", "admin.localhost", "127.0.0.1"])
    svc, adm = {"Host": "localhost"}, {"Host": "admin.localhost"}
    # the services' host: services and /v1, none of the admin pages
    r = ng.request("http", "GET", "/llm/health", headers=svc, timeout=30)
    assert r.status == 200, (r.status, r.body)
    assert ng.request("http", "GET", "/v1/models", headers=svc).status == 200
    for path in ("/", "/status", "/api/services", "/api/events", "/metrics", "/info",
                 "/demand_llm", "/disable_service_management", "/kill_disable_service_management",
                 "/%61pi/services", "/x/../api/services", "//api/services"):
        r = ng.request("http", "GET", path, headers=svc)
        assert r.status in (400, 404), (path, r.status, r.body[:200])
    r = ng.request("http", "POST", "/api/services/demo/stop", headers=svc)
    assert r.status == 404, (r.status, r.body[:200])
    # the admin host: the admin pages, none of the services
    r = ng.request("http", "GET", "/", headers=adm)
    assert r.status == 200 and b"<html" in r.body.lower(), r.status
    assert ng.request("http", "GET", "/api/services", headers=adm).status == 200
    assert ng.request("http", "GET", "/llm/health", headers=adm).status == 404
    assert ng.request("http", "GET", "/v1/models", headers=adm).status == 404
    # a page of a service asking the admin host to stop it: refused
    r = ng.request("http", "POST", "/api/services/demo/stop",
                   headers={**adm, "Origin": "http://localhost", "Sec-Fetch-Site": "same-site"})
    assert r.status == 403, (r.status, r.body[:200])
    # the status page itself may
    r = ng.request("http", "POST", "/api/services/demo/stop",
                   headers={**adm, "Origin": "http://admin.localhost",
                            "Sec-Fetch-Site": "same-origin"})
    assert r.status == 202, (r.status, r.body[:200])
