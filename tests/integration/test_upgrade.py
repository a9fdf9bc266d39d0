"""An Upgrade (WebSocket) request is passed through as raw bytes both ways
once the service answers 101, and the service still gets held for a start."""
import socket
import sys
import time

from conftest import demo_service, write_script

# A service that answers /health and upgrades anything else, then echoes
# every byte back upper-cased (so the test sees the service did it).
UPSTREAM = r'''
import socket, sys, threading
port = int(sys.argv[1])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(16)
def serve(c):
    f = c.makefile("rb")
    line = f.readline()
    hdrs = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.decode().partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if line.startswith(b"GET /health"):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        c.close(); return
    if hdrs.get("upgrade", "").lower() != "websocket" or "upgrade" not in hdrs.get("connection", "").lower():
        c.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        c.close(); return
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    while True:
        b = c.recv(4096) if not f.peek(1) else f.read1(4096)
        if not b:
            break
        c.sendall(b.upper())
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


def ws_service(gateway, tmp_path, svc=None, **top):
    """A gateway with the upgrading service above as "ws" on /ws/ (SVC:
    more keys of the service)."""
    (tmp_path / "ws.py").write_text(UPSTREAM)
    script = write_script(tmp_path / "ws.sh",
                          f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'ws.py'} \"$1\"\n")
    return gateway([demo_service(name="ws", route="ws", bash_file=str(script), **(svc or {}))],
                   **top)


def ws_echo(s, msg, deadline):
    """Send MSG on the upgraded socket S and read its upper-cased echo:
    what came back ("" once the tunnel closed)."""
    s.sendall(msg)
    got = b""
    while len(got) < len(msg) and time.monotonic() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def ws_upgrade(s, path, deadline):
    """Ask for a WebSocket upgrade of PATH on socket S: the response head
    (and any bytes after it) read by DEADLINE (time.monotonic())."""
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head and time.monotonic() < deadline:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def test_websocket_upgrade_is_relayed_raw_both_ways(gateway, tmp_path):
    g = ws_service(gateway, tmp_path)
    s = socket.create_connection(("127.0.0.1", g.port), timeout=15)
    try:
        deadline = time.monotonic() + 15
        head = ws_upgrade(s, "/ws/chat", deadline)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"upgrade: websocket" in head.lower(), head
        assert head.endswith(b"\r\n\r\n"), head   # nothing before we send
        for msg in (b"hello", b"x" * 100000):
            assert ws_echo(s, msg, deadline) == msg.upper()
    finally:
        s.close()
    # the gateway still serves other requests
    assert g.get("/ws/health").status == 200


def test_refused_upgrade_answers_normally_and_closes(gateway, tmp_path):
    g = ws_service(gateway, tmp_path)
    # an upgrade the service refuses is an ordinary response
    r = g.get("/ws/chat", headers={"Upgrade": "h2c", "Connection": "Upgrade"})
    assert r.status == 426


def test_websocket_upgrade_is_in_the_access_log(gateway, tmp_path):
    """An upgraded connection gets its access-log line (status 101, the
    service that took it) when it switches to the tunnel, like any other
    request; before, nothing was logged for it."""
    import json
    from conftest import SLACK, wait_until
    log = tmp_path / "access.jsonl"
    g = ws_service(gateway, tmp_path, access_log=str(log), log_json=True)
    s = socket.create_connection(("127.0.0.1", g.port), timeout=15)
    try:
        head = ws_upgrade(s, "/ws/chat?room=1", time.monotonic() + 15)
        assert head.startswith(b"HTTP/1.1 101"), head

        def recs():
            try:
                return [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
            except FileNotFoundError:
                return []
        wait_until(lambda: any(r["status"] == 101 for r in recs()), 5 * SLACK,
                   msg="a 101 line in the access log")
        [r] = [r for r in recs() if r["status"] == 101]
        assert r["path"] == "/ws/chat?room=1" and r["service"] == "ws" and r["instance"] == 0, r
        assert r["method"] == "GET" and r["complete"] is True, r
    finally:
        s.close()
    assert g.get("/ws/health").status == 200


def test_open_websocket_keeps_its_service_alive_past_the_idle_timeout(gateway, tmp_path):
    """A WebSocket is a request in flight for as long as it is open: the
    service's idle timeout (2 s here) counts from its end, not from the
    101. Before, the exchange ended at the switch: the service was stopped
    2 s later and every open WebSocket cut, while it carried traffic."""
    from conftest import SLACK, wait_until
    g = ws_service(gateway, tmp_path, svc={"timeout": 2}, upstream_timeout=30)
    s = socket.create_connection(("127.0.0.1", g.port), timeout=15)
    try:
        head = ws_upgrade(s, "/ws/chat", time.monotonic() + 15)
        assert head.startswith(b"HTTP/1.1 101"), head
        pid = g.svc("ws")["instances"][0]["pid"]
        assert g.svc("ws")["in_flight"] == 1, g.svc("ws")
        t_end = time.monotonic() + 5
        n = 0
        while time.monotonic() < t_end:
            assert ws_echo(s, b"ping %d" % n, time.monotonic() + 5) == b"PING %d" % n, \
                (n, g.log())
            n += 1
            time.sleep(0.3)   # pacing the client's messages, not waiting for an event
        [inst] = g.svc("ws")["instances"]
        assert inst["pid"] == pid and inst["state"] == "ready", inst
    finally:
        s.close()
    # closed: nothing in flight, and the idle timeout runs from here
    wait_until(lambda: g.svc("ws")["in_flight"] == 0, 5 * SLACK, msg="the tunnel's end noticed")
    g.wait_state("stopped", name="ws", timeout=10)


def test_quiet_websocket_is_closed_after_upstream_timeout(gateway, tmp_path):
    """A tunnel with no byte either way for upstream_timeout is closed (as
    nginx's proxy_read_timeout does), so a tab left open does not hold a
    GPU job forever: then the service stops after its idle timeout."""
    from conftest import SLACK, wait_until
    g = ws_service(gateway, tmp_path, svc={"timeout": 1}, upstream_timeout=2)
    s = socket.create_connection(("127.0.0.1", g.port), timeout=15 * SLACK)
    try:
        head = ws_upgrade(s, "/ws/chat", time.monotonic() + 15)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert ws_echo(s, b"hi", time.monotonic() + 5) == b"HI"
        t0 = time.monotonic()
        assert s.recv(100) == b"", "the quiet tunnel was not closed"
        quiet = time.monotonic() - t0
        assert 1.5 < quiet < 2 + 3 * SLACK, quiet
    finally:
        s.close()
    g.wait_state("stopped", name="ws", timeout=10)


def test_open_websocket_is_closed_when_its_service_stops_and_at_shutdown(gateway, tmp_path):
    """The tunnel is in flight on its instance: stopping the service
    (admin API) closes it, and so does the gateway's shutdown after
    shutdown_grace; the gateway exits cleanly in both."""
    from conftest import SLACK
    g = ws_service(gateway, tmp_path, shutdown_grace=1)
    socks = []
    try:
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLACK)
            socks.append(s)
            assert ws_upgrade(s, "/ws/chat", time.monotonic() + 15).startswith(b"HTTP/1.1 101")
            assert ws_echo(s, b"hi", time.monotonic() + 5) == b"HI"
        r = g.post("/api/services/ws/stop", headers={"Origin": f"http://127.0.0.1:{g.port}"})
        assert r.status == 202, r
        assert socks[0].recv(100) == b"", "the tunnel outlived its stopped service"
        g.wait_state("stopped", name="ws", timeout=10)

        assert socks[1].recv(100) == b"", "the second tunnel outlived the stop"

        # a new one (the service starts again), then SIGTERM with it open
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLACK)
        socks.append(s)
        assert ws_upgrade(s, "/ws/chat", time.monotonic() + 15).startswith(b"HTTP/1.1 101")
        t0 = time.monotonic()
        assert g.terminate() == 0, g.log()
        assert time.monotonic() - t0 < 1 + 10 * SLACK
        assert s.recv(100) == b""
    finally:
        for s in socks:
            s.close()
