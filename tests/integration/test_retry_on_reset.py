"""A request whose connection to the service breaks before any response byte
is sent again (body included) instead of failing, as the chaos soak found:
a POST to a Slurm instance whose job was just cancelled got 502 "Connection
reset by peer" (issue 8: a request arriving after the fault is never failed).
nginx does the same with `proxy_next_upstream error non_idempotent`."""
import json

from conftest import demo_service, write_script

# The first POST is read whole, then its connection is reset (RST, no byte
# answered), as when a server dies under a request; later requests are
# answered with what they sent. Health checks always pass.
RESET_ONCE_SERVER = r'''
import http.server, socket, struct, sys

state = {"posts": 0}

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply(b'{"ok":true}')

    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        state["posts"] += 1
        if state["posts"] == 1:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        self.reply(b'{"try":%d,"got":%s}' % (state["posts"], data))

    def log_message(self, *a):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def reset_once_service(tmp_path, **kw):
    server = tmp_path / "reset_once.py"
    server.write_text(RESET_ONCE_SERVER)
    script = write_script(tmp_path / "reset_once.sh",
                          f"#!/bin/sh\nexec /usr/bin/python3 {server} \"$1\"\n")
    return demo_service(bash_file=str(script), health_interval=60, **kw)


def test_reset_before_response_retries_post_with_its_body(gateway, tmp_path):
    g = gateway([reset_once_service(tmp_path)])
    assert g.get("/llm/health", timeout=15).status == 200   # warm: the POST streams straight through
    body = {"inputs": "x" * 3000}
    r = g.post("/llm/generate", body, timeout=20)
    assert r.status == 200, (r, g.log())
    got = r.json()
    assert got["try"] == 2 and got["got"] == body, got   # the same body, sent again
    log = g.log(tail=10 ** 7)
    assert "retrying a request" in log, log


def test_reset_before_response_large_body_is_not_replayed(gateway, tmp_path):
    """A body past the replay limit (64 KiB) is not kept: 502 naming the reset."""
    g = gateway([reset_once_service(tmp_path)])
    assert g.get("/llm/health", timeout=15).status == 200
    r = g.post("/llm/generate", {"inputs": "x" * 200_000}, timeout=20)
    assert r.status == 502, r
    assert "reset" in json.loads(r.body)["error"] or "closed" in json.loads(r.body)["error"], r.body
