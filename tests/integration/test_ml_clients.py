"""An ML engineer's clients through the gateway (the hml pass): what the
official `openai` npm client and a Python service (FastAPI/vLLM-like: the
standard json module) do in normal use must simply work.

- a vision request (an image as a base64 data URL, a few MB) or a long
  prompt goes through /v1 to a cold service: the gateway reads the body
  to find its "model", and must not refuse an ordinary request as too big;
- a prompt that holds a NUL character ("\\u0000" in JSON, as JSON.stringify
  and json.dumps write it) or an integer past 64 bits is valid JSON that a
  Python service takes: the gateway must route it, not answer 400;
- a client that accepts JSON or an event stream (an MCP client:
  "Accept: application/json, text/event-stream") at a cold service gets the
  service's own answer: no early event-stream head the service's JSON
  answer would then be poured into (the client's SSE parser drops it);
- a stream that waited for a cold start, whose service compresses its
  event stream for a client that accepts gzip (Starlette's GZipMiddleware
  did, nginx with text/event-stream in gzip_types does): the early head
  carries no Content-Encoding, so the gateway must not let the service
  compress (the client saw an empty stream, no error);
- the error event that ends a /v1 stream (a failed start, the service's
  error after the early head) is named (`event: error`): the Anthropic SDK
  (/v1/messages) skips an unnamed event, so a failed start was an empty
  stream to it, not an error; the openai and HF clients read both;
- a service whose start failed is answered 502, not 503: Hugging Face's
  clients take 503 for "model is loading" and send again at once, with no
  delay and no end (3,088 requests in 3 s), and never show the reason."""
import json
import re

from conftest import SLACK, Stream, demo_service, http_request, wait_until, write_script
from jsclient import run_js

# A service as Python servers are (FastAPI, vLLM: the json module): any
# valid JSON body is taken; it answers what it read.
PY_SERVICE = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        self.reply(200, {"ok": True})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            o = json.loads(self.rfile.read(n))
        except ValueError as e:
            return self.reply(400, {"error": {"message": str(e), "type": "BadRequestError"}})
        self.reply(200, {"model": o.get("model"), "content": o["messages"][0]["content"],
                         "seed": o.get("seed")})

HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def py_service(tmp_path):
    (tmp_path / "pysvc.py").write_text(PY_SERVICE)
    sh = write_script(tmp_path / "pysvc.sh",
                      f'#!/bin/sh\nexec python3 "{tmp_path / "pysvc.py"}" "${{1:-$PORT}}"\n')
    return demo_service(name="py", route="py", bash_file=str(sh))


def test_vision_request_of_a_few_mb_reaches_a_cold_service(gateway):
    g = gateway(env={"DEMO_DELAY": "0.5"})
    # a 3 MB base64 image (a phone photo), streamed with usage, as the client sends it
    out = run_js(g, """
        const img = 'data:image/jpeg;base64,' + 'A'.repeat(3 << 20);
        const s = await client.chat.completions.create({ model: 'demo', stream: true,
            max_tokens: 4, stream_options: { include_usage: true },
            messages: [{ role: 'user', content: [
                { type: 'text', text: 'what is in this picture?' },
                { type: 'image_url', image_url: { url: img } }] }] });
        const toks = []; let usage = null;
        for await (const c of s) {
          if (c.choices.length) toks.push(c.choices[0].delta.content ?? '');
          if (c.usage) usage = c.usage;
        }
        return { toks: toks.join(''), usage };""", timeout=30)
    assert "thrown" not in out, out
    assert out["toks"] == "tok0 tok1 tok2 tok3 ", out
    assert out["usage"] and out["usage"]["completion_tokens"] == 4, out
    assert g.svc()["starts"] == 1


def test_long_prompt_of_a_few_mb_is_forwarded_whole(gateway):
    g = gateway(env={"DEMO_DELAY": "0.5"})
    prompt = "word " * (1 << 20)   # 5 MiB: a long-context prompt (a book)
    body = json.dumps({"model": "demo", "max_tokens": 2,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    r = http_request(g.port, "POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json"}, timeout=30 * SLACK)
    assert r.status == 200, r
    assert r.json()["usage"]["prompt_tokens"] == 1 << 20, r.json()["usage"]


def test_prompt_with_a_nul_character_or_a_big_integer_is_routed(gateway, tmp_path):
    g = gateway([py_service(tmp_path)])
    out = run_js(g, """
        const a = await client.chat.completions.create({ model: 'py',
            messages: [{ role: 'user', content: 'page 1\\u0000page 2' }] });
        return a;""")
    assert out.get("content") == "page 1\u0000page 2", out
    body = b'{"model":"py","messages":[{"role":"user","content":"hi"}],"seed":18446744073709551615}'
    r = http_request(g.port, "POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json"})
    assert r.status == 200, r
    assert r.json()["seed"] == 18446744073709551615, r


def test_mcp_client_accepting_json_or_sse_gets_the_json_of_a_cold_service(gateway):
    g = gateway(env={"DEMO_DELAY": "0.5"})
    rpc = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}'
    # the MCP Streamable HTTP transport's POST: the server picks JSON or SSE
    r = http_request(g.port, "POST", "/llm/echo", body=rpc, timeout=20 * SLACK,
                     headers={"Content-Type": "application/json",
                              "Accept": "application/json, text/event-stream"})
    assert r.status == 200, r
    assert r.header("Content-Type") == "application/json", (dict(r.headers), r.body[:300])
    assert r.json()["body"] == rpc.decode(), r.json()
    assert r.header("X-Slurmgate-Cold-Start") not in (None, "waiting"), dict(r.headers)
    # a client that reads only an event stream still gets its feedback
    g.request("POST", "/api/services/demo/stop", auth=True)
    wait_until(lambda: g.state() == "stopped", 10 * SLACK)
    s = Stream(g.port, "GET", "/llm/stream?n=2&ms=10", headers={"Accept": "text/event-stream"})
    assert s.header("X-Slurmgate-Cold-Start") == "waiting"
    s.read_all()
    assert s.comments() and [x for _, x in s.data()] == ["0", "1"], s.lines


def test_x_slurmgate_wait_0_on_v1_answers_503_at_once_as_on_a_route(gateway):
    g = gateway(env={"DEMO_DELAY": "2"})
    # the openai client told not to wait (defaultHeaders), as a UI that shows "starting" does
    out = run_js(g, """
        const nowait = new OpenAI({ baseURL: process.env.SG_BASE + '/v1', apiKey: 'sk-none',
            maxRetries: 0, defaultHeaders: { 'X-Slurmgate-Wait': '0' } });
        const t0 = Date.now();
        const r = [];
        for (const stream of [false, true]) {
          try { const s = await nowait.chat.completions.create({ model: 'demo', stream, max_tokens: 2,
                  messages: [{ role: 'user', content: 'hi' }] });
                if (stream) for await (const c of s) {}
                r.push('answered'); }
          catch (e) { r.push({ status: e.status, type: e.type, ra: e.headers?.get?.('retry-after') ?? null }); }
        }
        return { r, ms: Date.now() - t0 };""")
    assert all(isinstance(x, dict) and x["status"] == 503 and x["type"] == "service_unavailable"
               and x["ra"] for x in out["r"]), out
    assert out["ms"] < 1500 * SLACK, out
    assert g.state() in ("starting", "ready"), g.svc()


# A service that compresses its event stream when the client accepts gzip
# (with "always": even when asked for identity).
GZIP_SSE_SERVICE = r"""
import json, sys, time, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def chunk(self, b):
        if b:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
            self.wfile.flush()

    def do_POST(self):
        json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        z = None
        if "gzip" in (self.headers.get("Accept-Encoding") or "") or sys.argv[2:] == ["always"]:
            z = zlib.compressobj(wbits=31)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        if z:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        for i in range(3):
            c = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "t%d " % i}, "finish_reason": None}]}
            ev = b"data: " + json.dumps(c).encode() + b"\n\n"
            self.chunk(z.compress(ev) + z.flush(zlib.Z_SYNC_FLUSH) if z else ev)
        self.chunk(z.compress(b"data: [DONE]\n\n") + z.flush() if z else b"data: [DONE]\n\n")
        self.chunk(b"")
        self.wfile.write(b"0\r\n\r\n")

time.sleep(0.5)   # loading the model
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def gzip_service(tmp_path, *args):
    (tmp_path / "gzsvc.py").write_text(GZIP_SSE_SERVICE)
    sh = write_script(tmp_path / "gzsvc.sh", f'#!/bin/sh\nexec python3 "{tmp_path / "gzsvc.py"}" '
                      f'"${{1:-$PORT}}" {" ".join(args)}\n')
    return demo_service(name="gz", route="gz", bash_file=str(sh))


def test_cold_stream_of_a_service_that_gzips_its_event_stream_arrives(gateway, tmp_path):
    g = gateway([gzip_service(tmp_path)])
    # node's fetch sends Accept-Encoding: gzip, deflate, br
    code = """
        const s = await client.chat.completions.create({ model: 'gz', stream: true,
            messages: [{ role: 'user', content: 'hi' }] });
        const t = [];
        for await (const c of s) t.push(c.choices[0].delta.content);
        return t;"""
    assert run_js(g, code) == ["t0 ", "t1 ", "t2 "]   # cold: held with feedback
    assert run_js(g, code) == ["t0 ", "t1 ", "t2 "]   # warm


def test_cold_stream_compressed_against_identity_ends_with_an_error_not_silence(gateway, tmp_path):
    g = gateway([gzip_service(tmp_path, "always")])
    out = run_js(g, """
        const s = await client.chat.completions.create({ model: 'gz', stream: true,
            messages: [{ role: 'user', content: 'hi' }] });
        const t = [];
        for await (const c of s) t.push(c.choices[0].delta.content);
        return t;""")
    assert "Content-Encoding" in out["thrown"]["message"], out


def test_anthropic_stream_at_a_service_that_fails_to_start_throws_the_reason(gateway, tmp_path):
    bad = write_script(tmp_path / "bad.sh", '#!/bin/sh\necho "no GPU here" >&2\nexit 3\n')
    g = gateway([demo_service(bash_file=str(bad))])
    out = run_js(g, """
        const Anthropic = (await import('@anthropic-ai/sdk')).default;
        const a = new Anthropic({ baseURL: process.env.SG_BASE, apiKey: 'sk-none', maxRetries: 0 });
        const s = await a.messages.create({ model: 'demo', max_tokens: 8, stream: true,
            messages: [{ role: 'user', content: 'hi' }] });
        let n = 0;
        for await (const ev of s) n++;
        return { events: n };""")
    assert "thrown" in out, out
    assert "exited with status 3" in out["thrown"]["message"], out
    assert "no GPU here" in out["thrown"]["message"], out


def test_v1_error_event_after_the_early_head_is_named_error(gateway):
    g = gateway(env={"DEMO_DELAY": "0.5"})
    # the service answers 404 after the early head: the error event, named
    s = Stream(g.port, "POST", "/v1/no/such/path", body={"model": "demo", "stream": True})
    assert s.header("X-Slurmgate-Cold-Start") == "waiting"
    s.read_all()
    lines = [l for _, l in s.lines if l and not l.startswith(":")]
    assert len(lines) == 2 and lines[0] == "event: error", s.lines
    assert json.loads(lines[1][5:])["error"]["code"] == 404, s.lines


def requests_by_code(g, service="demo"):
    """{status: count} of slurmgate_requests_total for SERVICE."""
    out = {}
    for m in re.finditer(r'^slurmgate_requests_total\{service="([^"]*)",code="(\d+)"\} (\d+)$',
                         g.get("/metrics").text, re.M):
        if m.group(1) == service:
            out[int(m.group(2))] = int(m.group(3))
    return out


def no_gpu_service(tmp_path):
    """A service whose start script fails at once, as on a node without a GPU."""
    bad = write_script(tmp_path / "bad.sh",
                       '#!/bin/sh\necho "CUDA error: no CUDA-capable device is detected" >&2\nexit 1\n')
    return demo_service(bash_file=str(bad))


def test_hf_client_at_a_service_that_fails_to_start_throws_the_reason_not_a_retry_storm(
        gateway, tmp_path):
    g = gateway([no_gpu_service(tmp_path)])
    # as an ML engineer writes it: the client at the service's route, its
    # default retry_on_error; bounded here (the signal) so that a client that
    # loops ends, to be counted
    out = run_js(g, """
        const hfr = new InferenceClient(undefined, { endpointUrl: process.env.SG_BASE + '/llm' });
        const stop = new AbortController();
        const timer = setTimeout(() => stop.abort(), 20000);
        const r = {};
        // on the route, then at /v1 (the client in jsclient.py)
        for (const [stream, c] of [[false, hfr], [true, hfr], ['v1', hf], ['v1stream', hf]]) {
          const t0 = Date.now();
          try {
            if (stream === true || stream === 'v1stream') {
              for await (const x of c.chatCompletionStream({ model: 'demo', max_tokens: 4,
                            messages: [{ role: 'user', content: 'hi' }] }, { signal: stop.signal })) {} }
            else await c.chatCompletion({ model: 'demo', max_tokens: 4,
                         messages: [{ role: 'user', content: 'hi' }] }, { signal: stop.signal });
            r[stream] = { answered: true };
          } catch (e) {
            r[stream] = { name: e.name, status: e.httpResponse?.status ?? null, message: String(e.message),
                          ms: Date.now() - t0, aborted: stop.signal.aborted };
          }
        }
        clearTimeout(timer);
        return r;""", timeout=45)
    codes = requests_by_code(g)
    print(f"hf client: {out}; requests by status: {codes}")
    for stream in ("false", "true", "v1", "v1stream"):
        t = out[stream]
        assert not t.get("answered") and not t["aborted"], (stream, out, codes)
        # a 502 the client does not take for "loading"
        assert t["status"] == 502, (stream, out)
        if stream == "v1":
            # the client's plain request reads a string "error" only, not
            # OpenAI's {"error":{"message"}} that /v1 answers: no reason there
            continue
        assert "exited with status 1" in t["message"], (stream, out)
        assert "no CUDA-capable device" in t["message"], (stream, out)
    assert sum(codes.values()) <= 8, codes
    # the reason and the back-off stay: Retry-After on the gateway's own 502
    r = g.get("/llm/v1/models")
    assert r.status == 502 and "no CUDA-capable device" in r.json()["error"], r
    assert 1 <= int(r.header("Retry-After")) <= 60, dict(r.headers)


def test_openai_client_with_its_retries_at_a_service_that_fails_to_start_throws_the_reason(
        gateway, tmp_path):
    g = gateway([no_gpu_service(tmp_path)])
    # the client's defaults: 2 retries of a 5xx, after the Retry-After
    out = run_js(g, """
        const c = new OpenAI({ baseURL: process.env.SG_BASE + '/v1', apiKey: 'sk-none' });
        const r = {};
        for (const stream of [false, true]) {
          try { const s = await c.chat.completions.create({ model: 'demo', stream, max_tokens: 4,
                  messages: [{ role: 'user', content: 'hi' }] });
                if (stream) for await (const ch of s) {}
                r[stream] = { answered: true }; }
          catch (e) { r[stream] = { status: e.status ?? null, type: e.type ?? null, code: e.code ?? null,
                                    message: String(e.message) }; }
        }
        return r;""", timeout=45)
    codes = requests_by_code(g)
    print(f"openai client: {out}; requests by status: {codes}")
    for stream in ("false", "true"):
        t = out[stream]
        assert not t.get("answered"), (stream, out)
        assert "exited with status 1" in t["message"], (stream, out)
        assert "no CUDA-capable device" in t["message"], (stream, out)
    # a plain request: OpenAI's shape, saying the start failed
    assert out["false"]["status"] == 502 and out["false"]["type"] == "start_failed", out
    assert out["false"]["code"] == "start_failed", out
    assert sum(codes.values()) <= 8, codes
