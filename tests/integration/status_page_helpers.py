"""Helpers for the status page test: a gateway process, headless Chromium,
and a minimal Chrome DevTools Protocol client over a stdlib websocket.

Everything is bounded by deadlines and talks to 127.0.0.1 only. Nothing here
needs npm, selenium or chromium-driver: only the Debian package `chromium`.
"""
import atexit
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lib"))
# Ports and waiting: one contract each, shared with conftest.py and bench/.
from sgtestlib import free_port, wait_until  # noqa: E402,F401
# one gateway binary and one slowness factor (SLACK) with the other tests
from conftest import SLACK, gateway_bin  # noqa: E402,F401

DEMO_SH = REPO / "examples" / "demo_service.sh"
ARTIFACTS = REPO / "build" / "test-artifacts"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_bin():
    env = os.environ.get("CHROMIUM_BIN")
    if env:
        return env
    for c in CHROMIUM_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("chromium")


def http_request(port, method, path, headers=None, body=None, timeout=10.0):
    """One request on a fresh connection -> (status, headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * SLACK)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------
# the gateway
# --------------------------------------------------------------------------

class Gateway:
    """slurmgate with one local demo service, from a config written here."""

    def __init__(self, workdir, env=None, **top):
        self.dir = Path(workdir)
        self.port = free_port()
        self.svc_port = free_port()
        self.config = {
            "listen": f"127.0.0.1:{self.port}",
            "shutdown_grace": 5,
            "state_dir": str(self.dir / "gw-state"),   # the gateway locks it
            "Services": [{
                "name": "demo",
                "route_name": "llm",
                "launcher": "local",
                "bash_file": str(DEMO_SH),
                "remote_port": self.svc_port,
                "local_host": "127.0.0.1",
                "local_port": self.svc_port,
                "check_health_path": "/health",
                "timeout": 60,
                "start_timeout": 20,
                "stop_grace": 2,
            }],
        }
        self.config.update(top)
        self.config_path = self.dir / "gw.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.log_path = self.dir / "gw.log"
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.proc = None
        self._log = None

    def start(self, timeout=10.0):
        self._log = open(self.log_path, "ab")   # a restart appends to the same log
        self.proc = subprocess.Popen([str(gateway_bin()), "-c", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=str(self.dir))

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"slurmgate exited with {self.proc.returncode}")
            return self.get("/api/health", timeout=1)[0] == 200
        try:
            wait_until(up, timeout * SLACK, msg="slurmgate /api/health")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- gateway log ---\n{self.log()}") from None
        return self

    def get(self, path, headers=None, timeout=10.0):
        return http_request(self.port, "GET", path, headers=headers, timeout=timeout)

    def service(self, name="demo"):
        status, _, body = self.get(f"/api/services/{name}", timeout=5)
        assert status == 200, (status, body)
        return json.loads(body)

    def log(self, tail=8000):
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout=20.0):
        """SIGTERM and wait (bounded); returns the exit code (None if it had
        to be killed). Safe to call twice."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout * SLACK)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                rc = None
        if self._log and not self._log.closed:
            self._log.close()
        return rc


# --------------------------------------------------------------------------
# a minimal websocket client (RFC 6455): enough for the DevTools protocol
# --------------------------------------------------------------------------

class WebSocket:
    def __init__(self, url, timeout=10.0):
        assert url.startswith("ws://"), url
        hostport, _, path = url[5:].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port or 80)), timeout=timeout)
        self.sock.settimeout(timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        head, _, self.buf = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"websocket handshake refused: {head[:300]!r}")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("websocket closed by the peer")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def send_text(self, text):
        self._send_frame(0x1, text.encode())

    def recv_text(self, timeout):
        """The next whole text message (fragments joined); answers pings."""
        self.sock.settimeout(max(0.05, timeout))
        parts = []
        while True:
            b0, b1 = self._read(2)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
            if opcode == 0x9:            # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:            # pong
                continue
            if opcode == 0x8:            # close
                raise ConnectionError("websocket closed by the peer")
            parts.append(payload)
            if fin:
                return b"".join(parts).decode()

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class CDP:
    """Chrome DevTools Protocol on one page target."""

    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events = []

    def call(self, method, timeout=15.0, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send_text(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout * SLACK
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no DevTools answer to {method} in {timeout * SLACK:.0f} s")
            try:
                msg = json.loads(self.ws.recv_text(left))
            except socket.timeout:
                continue
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def eval(self, expression, timeout=10.0):
        """Evaluate JS in the page; returns the value (JSON-able)."""
        r = self.call("Runtime.evaluate", timeout=timeout, expression=expression,
                      returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError(f"JS exception: {d.get('exception', {}).get('description') or d}")
        return r.get("result", {}).get("value")

    def drain(self, seconds=0.2):
        """Collect the events that arrive within seconds."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.events.append(json.loads(self.ws.recv_text(deadline - time.monotonic())))
            except socket.timeout:
                break

    def close(self):
        self.ws.close()


_live_browsers = set()


@atexit.register
def _stop_live_browsers():
    """A Chromium whose test never reached stop() (an interrupted run)."""
    for b in list(_live_browsers):
        b.stop()


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class Chromium:
    """Headless Chromium with a fresh profile and the DevTools port open on
    127.0.0.1. stop() kills its whole process group (it is started in a new
    session, so the group is ours alone), waits until none of it is left,
    and removes its TMPDIR.

    Nothing of it stays outside WORKDIR: its profile and its XDG config and
    cache homes (where a crash report would go) are in WORKDIR. Its TMPDIR,
    where it makes the socket directory of its ProcessSingleton
    (org.chromium.Chromium.XXXXXX, which a TERMed or killed Chromium leaves
    behind: hundreds of them piled up in /tmp), is a short directory of its
    own, sg-chromium-XXXXXXXX in the system's: the socket's path must fit in
    108 bytes, which one under tmp_path does not (Chromium aborts: "Socket
    path too long"). stop() removes it, and at exit for a test that never
    called stop()."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
             "--disable-breakpad", "--disable-crash-reporter",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--hide-scrollbars", "--window-size=1280,900", "--force-device-scale-factor=1"]

    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.profile = self.dir / "chromium-profile"
        self.profile.mkdir()
        self.log_path = self.dir / "chromium.log"
        self.proc = None
        self.port = None
        self.tmp = None

    def start(self, timeout=30.0):
        exe = chromium_bin()
        if self.tmp is None:
            self.tmp = Path(tempfile.mkdtemp(prefix="sg-chromium-"))
        _live_browsers.add(self)
        env = dict(os.environ, TMPDIR=str(self.tmp),
                   XDG_CONFIG_HOME=str(self.dir / "chromium-xdg" / "config"),
                   XDG_CACHE_HOME=str(self.dir / "chromium-xdg" / "cache"))
        self._log = open(self.log_path, "ab")   # a restart appends to the same log
        self.proc = subprocess.Popen([exe, *self.FLAGS, f"--user-data-dir={self.profile}",
                                      "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)
        active = self.profile / "DevToolsActivePort"

        def port_file():
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            lines = active.read_text().split("\n") if active.exists() else []
            return int(lines[0]) if lines and lines[0].strip().isdigit() else None
        try:
            self.port = wait_until(port_file, timeout * SLACK, interval=0.1, msg="DevToolsActivePort")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- chromium log ---\n{self.log()}") from None
        return self

    def page(self, timeout=15.0):
        """A CDP session on the first page target."""
        def target():
            st, _, body = http_request(self.port, "GET", "/json/list", timeout=3)
            pages = [t for t in json.loads(body) if t.get("type") == "page"] if st == 200 else []
            return pages[0]["webSocketDebuggerUrl"] if pages else None
        return CDP(wait_until(target, timeout * SLACK, interval=0.1, msg="a Chromium page target"))

    def log(self, tail=6000):
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def stop(self):
        """Safe to call twice, and before start()."""
        if self.proc is not None:
            # SIGTERM first (chromium exits cleanly, its helpers with it), then
            # SIGKILL whatever of its process group is left
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
                if sig == signal.SIGTERM:
                    # the main process is gone: give its helpers a moment, then kill the rest
                    time.sleep(0.2)
            pgid, self.proc = self.proc.pid, None
            self._log.close()
        else:
            pgid = None
        try:
            # none of it may outlive the test (nor write into its TMPDIR)
            if pgid is not None:
                wait_until(lambda: not _group_alive(pgid), 10 * SLACK, interval=0.05,
                           msg=f"Chromium's process group {pgid} gone")
        finally:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
            _live_browsers.discard(self)


def screenshot(cdp, path, full_page=True):
    """Save a PNG of the page (the whole page when full_page) to path."""
    params = {"format": "png"}
    if full_page:
        m = cdp.call("Page.getLayoutMetrics")
        size = m.get("cssContentSize") or m.get("contentSize")
        w, h = int(size["width"]), int(min(size["height"], 6000))
        params["clip"] = {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}
        params["captureBeyondViewport"] = True
    data = cdp.call("Page.captureScreenshot", timeout=30, **params)["data"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(data))
    return path
