"""Shared helpers for the slurmgate integration tests.

Every test runs its own gateway on a free loopback port, with its own demo
service on another free port. Every socket operation and every wait has a
deadline: no test can hang (there is no pytest-timeout plugin here).

The binary under test is $SLURMGATE_BIN (default build/slurmgate). When the
gateway is an ASan/UBSan build, a sanitizer report makes it exit non-zero at
shutdown: the teardown checks that the exit code after SIGTERM is 0 and fails
the test with the gateway's log otherwise.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lib"))
# Ports and waiting: one contract each, shared with slurmlib.py and bench/.
from sgtestlib import free_port, free_port_block, port_listening, wait_until  # noqa: E402,F401
# /proc readers, shared with slurm/slurmlib.py, tests/chaos and bench/.
from sgproc import (children_of, cmdline, pid_alive, pid_pgid, proc_ppid,  # noqa: E402,F401
                    proc_start_time, proc_state)
DEMO_SH = REPO / "examples" / "demo_service.sh"
# The demo service (tests/fixtures/demo_service.c): $DEMO_SERVICE_BIN, an
# absolute path (examples/demo_service.sh reads it too), e.g. the
# build/demo_service-asan build; default build/demo_service.
DEMO_BIN = Path(os.environ.get("DEMO_SERVICE_BIN") or REPO / "build" / "demo_service")
SEED_CONFIG = Path("/work/shared/seed/services_config.json")


def gateway_bin():
    b = Path(os.environ.get("SLURMGATE_BIN", "build/slurmgate"))
    if not b.is_absolute():
        b = REPO / b
    return b


# A slower (sanitizer) build gets more time for everything.
SLOW = "asan" in gateway_bin().name or bool(os.environ.get("SLURMGATE_SLOW_TESTS"))
SLACK = 2.0 if SLOW else 1.0

# --------------------------------------------------------------------------
# processes and ports
# --------------------------------------------------------------------------

def pids_with_arg(*needles):
    """Live (non-zombie) pids whose command line contains every needle."""
    return [int(d) for d in os.listdir("/proc")
            if d.isdigit() and all(n in cmdline(int(d)) for n in needles) and pid_alive(int(d))]


def env_has(pid, name, value=None):
    """True if PID's environment has NAME (=VALUE)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    if value is None:
        return any(e.startswith(name.encode() + b"=") for e in env)
    return f"{name}={value}".encode() in env


def pids_with_env(name, value):
    """Live (non-zombie) processes whose environment has NAME=VALUE: a
    process tree marked by its start script, wherever its members went
    (double forks, new sessions, reparented to init)."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit() and env_has(int(d), name, value) and pid_alive(int(d)):
            found.append(int(d))
    return found


def openai_error_body(o):
    """O (a parsed body) is an error of the gateway's own on /v1, in
    OpenAI's shape: {"error": {"message", "type", "param": null, "code"}}.
    Returns o["error"]."""
    assert set(o) == {"error"} and isinstance(o["error"], dict), o
    e = o["error"]
    assert set(e) == {"message", "type", "param", "code"}, o
    assert isinstance(e["message"], str) and e["message"], o
    assert isinstance(e["type"], str) and e["type"], o
    assert e["param"] is None, o
    return e


def reload_services(g, services=None, **top):
    """Give gateway G (a Gateway or a slurmlib.SlurmGateway) a new config:
    SERVICES and/or top-level settings, written atomically into its file
    (g.config stays what the file says), then SIGHUP, and wait until the
    gateway logged that it took it."""
    before = g.log(tail=10 ** 8).count("config reloaded")
    if services is not None:
        g.services = services
        g.config["Services"] = services
    g.config.update(top)
    tmp = g.config_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(g.config, indent=1))
    os.replace(tmp, g.config_path)
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: g.log(tail=10 ** 8).count("config reloaded") > before, 5 * SLACK,
               msg="the reload taken")


def service_gone(pid, port):
    """The service process is gone (or a zombie) and nothing listens on its port."""
    return not pid_alive(pid) and not port_listening(port)


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

class Resp:
    """A whole HTTP response: status, headers (case-insensitive), body."""

    def __init__(self, status, reason, headers, body, elapsed):
        self.status = status
        self.reason = reason
        self.headers = headers  # http.client.HTTPMessage
        self.body = body
        self.elapsed = elapsed

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"<Resp {self.status} {self.body[:300]!r}>"


def http_request(port, method, path, body=None, headers=None, timeout=10.0,
                 host="127.0.0.1"):
    """One request on a fresh connection; returns Resp."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, r.reason, r.headers, data, time.monotonic() - t0)
    finally:
        conn.close()


def read_raw_response(f, head_request=False):
    """Read one HTTP/1.1 response from a binary file object (sock.makefile).
    Returns (status, headers dict lower-case -> value, body bytes); status is
    None if the connection closed before a status line."""
    line = f.readline()
    if not line:
        return None, {}, b""
    parts = line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        h = f.readline()
        if not h:
            raise EOFError("connection closed inside the response head")
        if h in (b"\r\n", b"\n"):
            break
        k, _, v = h.decode("latin-1").partition(":")
        k = k.strip().lower()
        headers[k] = (headers[k] + ", " + v.strip()) if k in headers else v.strip()
    if head_request or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size_line = f.readline()
            if not size_line:
                raise EOFError("connection closed inside a chunked body")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailers up to the empty line
                while True:
                    t = f.readline()
                    if t in (b"\r\n", b"\n", b""):
                        break
                return status, headers, body
            chunk = f.read(size)
            body += chunk
            f.readline()
    if "content-length" in headers:
        n = int(headers["content-length"])
        body = f.read(n)
        if len(body) != n:
            raise EOFError(f"body cut short: {len(body)} of {n} bytes")
        return status, headers, body
    return status, headers, f.read()


def raw_exchange(port, data, timeout=5.0, read_all=True):
    """Send raw bytes on a new connection and return every byte received until
    the server closes (or timeout passes with read_all; then what came)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    out = b""
    try:
        if data:
            s.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            if not read_all:
                break
    finally:
        s.close()
    return out


def status_of(raw):
    """The status code of the first response in raw bytes (None if none)."""
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


# --------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------

def demo_service(name="demo", route="llm", port=None, **overrides):
    """A demo service config: local launcher, the absolute demo script,
    a unique free port, small timeouts."""
    port = port or free_port()
    svc = {
        "name": name,
        "route_name": route,
        "launcher": "local",
        "bash_file": str(DEMO_SH),
        "remote_port": port,
        "local_host": "127.0.0.1",
        "local_port": port,
        "check_health_path": "/health",
        "timeout": 30,
        "start_timeout": 15,
        "stop_grace": 2,
    }
    svc.update(overrides)
    return svc


def write_script(path, text):
    path = Path(path)
    path.write_text(text)
    path.chmod(0o755)
    return path


def run_check(config_path, timeout=10):
    """slurmgate -t -c FILE -> CompletedProcess (stdout+stderr text)."""
    return subprocess.run([str(gateway_bin()), "-t", "-c", str(config_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------
# the gateway
# --------------------------------------------------------------------------

_live_gateways = []


class Gateway:
    """One slurmgate process with a config written from a dict."""

    def __init__(self, tmp_path, services, env=None, name="gw", args=(), **top):
        self.dir = Path(tmp_path)
        self.port = free_port()
        self.services = services
        # each gateway its own state_dir: the gateway locks it
        self.config = {"listen": f"127.0.0.1:{self.port}", "shutdown_grace": 5,
                       "state_dir": str(self.dir / f"{name}-state"), "Services": services}
        self.config.update(top)
        self.config_path = self.dir / f"{name}.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.log_path = self.dir / f"{name}.log"
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.args = list(args)
        self.proc = None
        self.token = top.get("admin_token")
        self.seen_pids = set()
        self.stopped_rc = None
        self.killed = False   # kill9(): no clean exit code expected
        self.own_session = False   # start it as a session (and process group) of its own

    # --- life cycle ---

    def start(self, ready_timeout=10.0):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(gateway_bin()), "-c", str(self.config_path), *self.args],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env, cwd=str(self.dir), start_new_session=self.own_session)
        _live_gateways.append(self)

        def healthy():
            return self.get("/api/health", timeout=1).status == 200

        deadline = time.monotonic() + ready_timeout * SLACK
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"slurmgate exited with {self.proc.returncode} at start:\n{self.log()}")
            try:
                if healthy():
                    return self
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"slurmgate did not answer /api/health:\n{self.log()}")
            time.sleep(0.05)

    def log(self, tail=12000):
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-tail:]

    def terminate(self, timeout=20.0):
        """SIGTERM; wait (deadline); return the exit code (None if it hung
        and had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout * SLACK)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None

    def kill9(self, helpers=False):
        """SIGKILL the gateway (and with HELPERS its own helper processes:
        its children that are not part of a service's process tree, found
        through /proc). Waits for it; the teardown then checks only that
        nothing of it is left."""
        pids = [self.proc.pid]
        if helpers:
            pids += [p for p in children_of(self.proc.pid)
                     if not env_has(p, "SLURMGATE_SERVICE")]
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self.killed = True
        return pids

    def kill9_group(self):
        """SIGKILL the gateway's whole process group, as a shell's job
        control, `timeout -s KILL` or a supervisor killing a process group
        does (needs own_session). Waits for the gateway."""
        assert self.own_session, "kill9_group needs a gateway started with own_session"
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.killed = True

    def service_ports(self):
        return [s.get("local_port") or s.get("remote_port") for s in self.services
                if s.get("launcher") == "local"]

    def leftovers(self):
        """Live service processes of this gateway: pids seen through the API
        and any demo_service bound to one of our service ports."""
        left = {p for p in self.seen_pids if pid_alive(p)}
        for port in self.service_ports():
            if port:
                left.update(pids_with_arg("--port", str(port)))
        return sorted(left)

    def kill_leftovers(self):
        for pid in self.leftovers():
            pg = pid_pgid(pid)
            try:
                if pg and pg > 1 and pg != os.getpgid(0):
                    os.killpg(pg, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self):
        """Teardown: SIGTERM, exit code must be 0, no service left behind."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.record_pids()
            except Exception:  # noqa: BLE001
                pass
        rc = self.terminate()
        self._log.close()
        if self in _live_gateways:
            _live_gateways.remove(self)
        problems = []
        if rc != 0 and not self.killed:
            problems.append(f"slurmgate exit code after SIGTERM was {rc}, expected 0")
        # the gateway reaps its children; allow a moment for stragglers
        try:
            wait_until(lambda: not self.leftovers(), 3 * SLACK)
        except AssertionError:
            problems.append(f"service processes left running after the gateway exited: "
                            f"{self.leftovers()}")
            self.kill_leftovers()
        if problems:
            pytest.fail("\n".join(problems) + f"\n--- gateway log ---\n{self.log()}",
                        pytrace=False)

    # --- HTTP ---

    def request(self, method, path, body=None, headers=None, timeout=10.0, auth=False):
        h = dict(headers or {})
        if auth and self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return http_request(self.port, method, path, body=body, headers=h,
                            timeout=timeout * SLACK)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            kw.setdefault("headers", {})
            kw["headers"] = {"Content-Type": "application/json", **kw["headers"]}
        return self.request("POST", path, body=body, **kw)

    def connection(self, timeout=10.0):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout * SLACK)

    # --- state ---

    def svc(self, name="demo"):
        r = self.get(f"/api/services/{name}", timeout=5)
        assert r.status == 200, r
        info = r.json()
        for inst in info.get("instances") or []:
            if inst.get("pid"):
                self.seen_pids.add(inst["pid"])
        return info

    def record_pids(self):
        for s in self.services:
            self.svc(s["name"])

    def state(self, name="demo"):
        return self.svc(name)["state"]

    def wait_state(self, state, name="demo", timeout=10.0):
        return wait_until(lambda: self.state(name) == state, timeout * SLACK,
                          msg=f"service {name} state {state!r}")

    def service_pid(self, route="llm"):
        """The demo service's own pid, asked through the gateway."""
        r = self.get(f"/{route}/pid")
        assert r.status == 200, r
        pid = r.json()["pid"]
        self.seen_pids.add(pid)
        return pid


@pytest.fixture
def port_block():
    """Factory: port_block(n) -> p such that p .. p+n-1 are free and handed
    out to nobody else in this session. Teardown (after the gateway's): no
    demo_service may still listen on / run with one of these ports."""
    blocks = []

    def make(n):
        p = free_port_block(n)
        blocks.append((p, n))
        return p

    yield make
    left = []
    for p, n in blocks:
        for q in range(p, p + n):
            left += pids_with_arg("--port", str(q))
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        pytest.fail(f"demo_service processes left running: {sorted(set(left))}", pytrace=False)


@pytest.fixture
def gateway(tmp_path):
    """Factory: gateway(services, env=..., **top_level_keys) -> started Gateway.
    Every gateway is stopped at teardown and must exit 0."""
    made = []

    def make(services=None, env=None, start=True, **top):
        if services is None:
            services = [demo_service()]
        g = Gateway(tmp_path, services, env=env, name=f"gw{len(made)}", **top)
        made.append(g)
        if start:
            g.start()
        return g

    yield make
    errors = []
    for g in made:
        try:
            g.close()
        except BaseException as e:  # noqa: BLE001 - report all of them
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the log of every running gateway to a failing test's report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when == "call":
        for g in list(_live_gateways):
            rep.sections.append((f"slurmgate log {g.log_path.name}", g.log()))


def seed_config_dict():
    """The seed's sample services_config.json (an embedded copy if the shared
    file is missing)."""
    if SEED_CONFIG.exists():
        return json.loads(SEED_CONFIG.read_text())
    return {
        "nginxFile": "/app/nginx/nginx.conf_template",
        "Services": [
            {
                "name": "LLM-Vicuna-13b",
                "ssh_username": "simicch",
                "ssh_key_file": "/app/ssh/ssh_20221208_cs",
                "remote_host": "ml1.informatik.fh-nuernberg.de",
                "remote_port": 8083,
                "local_host": "localhost",
                "local_port": 8083,
                "bash_file": "/nfs/scratch/staff/simicch/03_LLM/01_TGI/text-generation-inference/run_vicuna_portx.sh",
                "check_health_path": "health",
                "timeout": 120,
                "route_name": "llm_service",
                "api_paths": ["/", "/generate", "/generate_stream", "/health", "/info",
                              "/metrics", "/tokenize", "/chat_completions"],
            },
            {
                "name": "translation_service",
                "ssh_username": "simicch",
                "ssh_key_file": "/app/ssh/ssh_20221208_cs",
                "remote_host": "ml0.informatik.fh-nuernberg.de",
                "remote_port": 8057,
                "local_host": "localhost",
                "local_port": 8057,
                "bash_file": "/nfs/scratch/staff/simicch/03_LLM/05_translation_service/start_translation_service_ml2.sh",
                "check_health_path": "check_health",
                "timeout": 120,
                "route_name": "translation_service",
                "api_paths": ["/", "/check_health", "/translate_en2de", "/translate_de2en"],
            },
        ],
    }


@pytest.fixture(scope="session", autouse=True)
def _built():
    """The binaries must exist (make all / make asan builds them)."""
    missing = [str(p) for p in (gateway_bin(), DEMO_BIN) if not p.exists()]
    if missing:
        pytest.exit(f"missing {missing}: run `make all` first", returncode=2)
    if shutil.which("sh") is None:
        pytest.exit("no /bin/sh", returncode=2)


class Stream:
    """A streamed response read line by line, with each line's arrival time."""

    def __init__(self, port, method, path, body=None, headers=None, timeout=20.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * SLACK)
        self.t0 = time.monotonic()
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.conn.request(method, path, body=body, headers=headers or {})
        self.resp = self.conn.getresponse()
        self.t_head = time.monotonic() - self.t0
        self.lines = []   # (seconds since the request, line without EOL)

    def read_all(self, deadline_s=30.0):
        deadline = time.monotonic() + deadline_s * SLACK
        while time.monotonic() < deadline:
            line = self.resp.readline()
            if not line:
                break
            self.lines.append((time.monotonic() - self.t0, line.decode().rstrip("\r\n")))
        else:
            raise AssertionError(f"stream did not end within {deadline_s} s: {self.lines[-5:]}")
        self.conn.close()
        return self

    def header(self, name):
        return self.resp.getheader(name)

    def close(self):
        self.conn.close()

    def comments(self):
        return [(t, l) for t, l in self.lines if l.startswith(":")]

    def data(self):
        return [(t, l[5:].lstrip(" ")) for t, l in self.lines if l.startswith("data:")]

    def events(self):
        """SSE events: (arrival time of the first line, [data lines], [comment lines])."""
        out, cur = [], None
        for t, line in self.lines:
            if line == "":
                if cur is not None:
                    out.append(cur)
                cur = None
                continue
            if cur is None:
                cur = (t, [], [])
            if line.startswith(":"):
                cur[2].append(line)
            elif line.startswith("data:"):
                cur[1].append(line[5:].lstrip(" "))
        if cur is not None:
            out.append(cur)
        return out


def sse_lines(port, path, want, timeout, headers=None):
    """The data: lines of the SSE stream GET PATH answers (200, text/event-stream),
    read until want(lines) holds; fails after TIMEOUT seconds or if the stream ends."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    lines = []
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        assert r.status == 200, (r.status, r.read())
        assert r.getheader("Content-Type") == "text/event-stream", r.getheaders()
        deadline = time.monotonic() + timeout
        while not want(lines):
            assert time.monotonic() < deadline, f"timed out; lines so far: {lines[-20:]}"
            try:
                ln = r.readline()
            except socket.timeout:
                continue
            assert ln, f"the stream ended; lines so far: {lines[-20:]}"
            if ln.startswith(b"data: "):
                lines.append(ln[6:].rstrip(b"\n").decode())
        return lines
    finally:
        conn.close()
