"""What real OpenAI and Hugging Face clients hit (issue 12): the official
`openai` npm client and `@huggingface/inference` against the gateway.

- GET /v1/models/{id} (models.retrieve) answers the model object, or an
  OpenAI-shaped 404 (problem 2);
- every error the gateway makes on /v1 is in OpenAI's shape, and a cold
  stream whose service answers 4xx carries the service's own message
  (problem 3);
- a GET whose service dies is retried only on another instance, and the
  502 says the service died (problem 6);
- multipart /v1/audio/* requests are routed by their "model" field, and
  /v1/responses and /v1/messages by the JSON body's;
- usage per key and service in /metrics and /api."""
import json
import os
import signal
import threading

from conftest import (DEMO_SH, SLACK, demo_service, http_request, openai_error_body, pid_alive,
                      wait_until, write_script)
from jsclient import run_js


def openai_shape(r, status):
    """R is {"error":{"message","type","param":null,"code"}} with STATUS."""
    assert r.status == status, r
    assert r.header("Content-Type", "").startswith("application/json"), dict(r.headers)
    o = r.json()
    e = openai_error_body(o)
    return e


def jpost(g, path, obj, headers=None, timeout=20.0):
    h = {"Content-Type": "application/json", **(headers or {})}
    return http_request(g.port, "POST", path, body=json.dumps(obj).encode(), headers=h,
                        timeout=timeout * SLACK)


# --------------------------------------------------------------------------
# problem 2: GET /v1/models/{id}
# --------------------------------------------------------------------------

def test_models_retrieve_answers_the_model_or_an_openai_404(gateway):
    g = gateway([demo_service(aliases=["gpt-4o-mini", "org/Model-7B"])])
    out = run_js(g, """
        const a = await client.models.retrieve('gpt-4o-mini');
        const b = await client.models.retrieve('org/Model-7B');
        let miss;
        try { await client.models.retrieve('no-such-model'); } catch (e) {
          miss = { status: e.status, code: e.code, type: e.type, message: e.message }; }
        return { a, b, miss };""")
    for key, mid in (("a", "gpt-4o-mini"), ("b", "org/Model-7B")):
        m = out[key]
        assert m["id"] == mid and m["object"] == "model", out
        assert m["service"] == "demo" and m["state"] == "stopped", out
        assert isinstance(m["created"], int) and m["owned_by"] == "slurmgate", out
    miss = out["miss"]
    assert miss["status"] == 404 and miss["code"] == "model_not_found", out
    assert "no-such-model" in miss["message"] and not miss["message"].startswith('404 "'), out
    # retrieving starts nothing
    assert g.svc("demo")["starts"] == 0
    # the same answer over plain HTTP, the unencoded slash too
    r = g.get("/v1/models/org/Model-7B")
    assert r.status == 200 and r.json()["id"] == "org/Model-7B", r
    openai_shape(g.get("/v1/models/nope"), 404)


def test_models_retrieve_needs_a_key_and_hides_models_the_key_may_not_use(gateway):
    g = gateway([demo_service(name="demo", route="llm"),
                 demo_service(name="other", route="other")],
                api_keys=[{"key": "sk-demo-0123456789", "services": ["demo"]}])
    openai_shape(g.get("/v1/models/demo"), 401)
    h = {"Authorization": "Bearer sk-demo-0123456789"}
    assert g.get("/v1/models/demo", headers=h).json()["id"] == "demo"
    openai_shape(g.get("/v1/models/other", headers=h), 404)


# --------------------------------------------------------------------------
# problem 3: /v1 errors in OpenAI's shape
# --------------------------------------------------------------------------

def test_v1_start_failure_is_an_openai_error_the_client_reads(gateway, tmp_path):
    bad = write_script(tmp_path / "bad.sh", '#!/bin/sh\necho "no GPU here" >&2\nexit 3\n')
    g = gateway([demo_service(bash_file=str(bad))])
    out = run_js(g, """
        return await client.chat.completions.create({ model: 'demo',
            messages: [{ role: 'user', content: 'hi' }] });""")
    t = out["thrown"]
    # a failure (502), not "loading" (503, which HF's clients resend at once)
    assert t["status"] == 502, out
    # the real reason, not 502 "start script..." (a JSON string the client printed)
    assert not t["message"].startswith('502 "'), out
    assert "exited with status 3" in t["message"] and "no GPU here" in t["message"], out
    assert t["type"] == "start_failed" and t["code"] == "start_failed", out
    # over plain HTTP: the shape, and Retry-After (the back-off)
    r = jpost(g, "/v1/chat/completions", {"model": "demo", "messages": []})
    e = openai_shape(r, 502)
    assert "exited with status 3" in e["message"], e
    assert int(r.header("Retry-After")) >= 1, dict(r.headers)


def test_v1_no_hold_503_and_upstream_502_are_openai_errors(gateway, tmp_path):
    g = gateway([demo_service(hold=False)], env={"DEMO_DELAY": "2"})
    r = jpost(g, "/v1/chat/completions", {"model": "demo", "messages": []})
    e = openai_shape(r, 503)
    assert "starting" in e["message"], e
    assert r.header("Retry-After"), dict(r.headers)
    # a route request keeps the gateway's own shape
    r = g.get("/llm/health")
    assert r.status == 503 and isinstance(r.json()["error"], str), r


def test_cold_stream_whose_service_answers_400_carries_the_services_message(gateway):
    g = gateway(env={"DEMO_DELAY": "1"}, feedback_interval=1)
    out = run_js(g, """
        const s = await client.chat.completions.create({ model: 'demo', stream: true,
            max_tokens: -1, messages: [{ role: 'user', content: 'hi' }] });
        const got = [];
        for await (const ch of s) got.push(ch);
        return { got };""")
    t = out["thrown"]
    assert "token count must be a non-negative integer" in t["message"], out
    assert "the service answered 400" != t["message"], out
    # warm, the same request gets the same reason
    out = run_js(g, """
        return await client.chat.completions.create({ model: 'demo', stream: true,
            max_tokens: -1, messages: [{ role: 'user', content: 'hi' }] });""")
    assert "token count must be a non-negative integer" in out["thrown"]["message"], out


# --------------------------------------------------------------------------
# problem 6: a GET whose service dies
# --------------------------------------------------------------------------

def test_get_whose_service_dies_is_not_retried_on_the_dead_instance(gateway, tmp_path):
    # what users run: the server as the script's child, no exec
    sh = write_script(tmp_path / "noexec.sh",
                      f'#!/bin/sh\n"{DEMO_SH}" "$@"\necho "server ended" >&2\nexit 1\n')
    g = gateway([demo_service(bash_file=str(sh))])
    # warm, with a kept-alive upstream connection in the pool
    assert g.get("/llm/health").status == 200
    r = g.get("/llm/pid")
    assert r.status == 200, r
    server = r.json()["pid"]
    holder = {}
    t = threading.Thread(target=lambda: holder.setdefault(
        "r", http_request(g.port, "GET", "/llm/slow?ms=8000", timeout=15 * SLACK)))
    t.start()
    wait_until(lambda: g.svc()["in_flight"] == 1, 5 * SLACK, msg="the GET in flight")
    os.kill(server, signal.SIGKILL)
    t.join(15 * SLACK)
    assert not t.is_alive()
    r = holder["r"]
    assert r.status == 502, r
    msg = r.json()["error"]
    assert "Connection refused" not in msg and "connect failed" not in msg, msg
    assert "exited with status 1" in msg, msg
    assert r.elapsed < 7 * SLACK, r
    # there was no other instance to retry on
    assert "retrying a request on another instance" not in g.log(), g.log()
    wait_until(lambda: not pid_alive(server), 3)


# --------------------------------------------------------------------------
# model routing beyond JSON chat
# --------------------------------------------------------------------------

def wav(path, seconds=0.5, rate=16000):
    """A small real WAV file: a 440 Hz tone, 16-bit mono."""
    import math
    import struct
    import wave
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * k / rate)))
                               for k in range(int(seconds * rate))))
    return path


def whisper_and_chat():
    return [demo_service(name="whisper", route="whisper", aliases=["whisper-1"]),
            demo_service(name="chat", route="chat", aliases=["gpt-4o-mini"])]


def test_audio_transcription_and_translation_are_routed_by_the_form_model(gateway, tmp_path):
    g = gateway(whisper_and_chat())
    f = wav(tmp_path / "hello.wav")
    out = run_js(g, f"""
        const t = await client.audio.transcriptions.create({{
            file: fs.createReadStream({json.dumps(str(f))}), model: 'whisper-1' }});
        const r = await client.audio.translations.create({{
            file: fs.createReadStream({json.dumps(str(f))}), model: 'whisper-1' }});
        return {{ t, r }};""")
    size = f.stat().st_size
    for key, path in (("t", "/v1/audio/transcriptions"), ("r", "/v1/audio/translations")):
        e = out[key]
        assert e["path"] == path and e["method"] == "POST", out
        assert e["headers"]["content-type"].startswith("multipart/form-data; boundary="), e
        # the whole form arrived, the audio file in it
        assert e["body_length"] > size, e
    # the whisper service answered; the chat service was never started
    assert g.svc("whisper")["requests"] == 2
    assert g.svc("chat")["starts"] == 0


def form(boundary, fields):
    """A multipart/form-data body from (name, filename or None, bytes)."""
    out = b""
    for name, filename, data in fields:
        fn = f'; filename="{filename}"' if filename else ""
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{fn}\r\n"
                + ("Content-Type: audio/wav\r\n" if filename else "") + "\r\n").encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_form_model_field_is_read_up_to_max_form_scan_and_the_rest_streams(gateway, tmp_path):
    g = gateway(whisper_and_chat(), max_form_scan=65536)
    audio = os.urandom(1 << 20)   # 1 MiB, far past max_form_scan
    h = {"Content-Type": "multipart/form-data; boundary=sg-test-b0undary"}
    body = form("sg-test-b0undary", [("model", None, b"whisper-1"), ("file", "a.wav", audio)])
    r = http_request(g.port, "POST", "/v1/audio/transcriptions", body=body, headers=h,
                     timeout=20 * SLACK)
    assert r.status == 200, r
    assert r.json()["body_length"] == len(body), r
    # the file first: the model field is past max_form_scan
    body = form("sg-test-b0undary", [("file", "a.wav", audio), ("model", None, b"whisper-1")])
    e = openai_shape(http_request(g.port, "POST", "/v1/audio/transcriptions", body=body,
                                  headers=h, timeout=20 * SLACK), 413)
    assert "max_form_scan" in e["message"], e
    # no model field, an unknown model, a form that is not one
    body = form("sg-test-b0undary", [("file", "a.wav", b"RIFF")])
    assert openai_shape(http_request(g.port, "POST", "/v1/audio/translations", body=body,
                                     headers=h), 400)["code"] == "model_required"
    body = form("sg-test-b0undary", [("model", None, b"nope"), ("file", "a.wav", b"RIFF")])
    assert openai_shape(http_request(g.port, "POST", "/v1/audio/translations", body=body,
                                     headers=h), 404)["code"] == "model_not_found"
    r = http_request(g.port, "POST", "/v1/audio/translations", body=b"x",
                     headers={"Content-Type": "multipart/form-data"})
    assert openai_shape(r, 400)["code"] == "invalid_form"
    assert g.svc("chat")["starts"] == 0 and g.svc("whisper")["requests"] == 1


def test_responses_and_anthropic_messages_are_routed_by_the_json_model(gateway):
    g = gateway(whisper_and_chat())
    out = run_js(g, """
        return await client.responses.create({ model: 'gpt-4o-mini', input: 'hello' });""")
    assert out["path"] == "/v1/responses", out
    assert json.loads(out["body"])["input"] == "hello", out
    r = jpost(g, "/v1/messages", {"model": "chat", "max_tokens": 8,
                                  "messages": [{"role": "user", "content": "hi"}]},
              headers={"x-api-key": "sk-ant-x", "anthropic-version": "2023-06-01"})
    assert r.status == 200 and r.json()["path"] == "/v1/messages", r
    assert r.json()["headers"]["anthropic-version"] == "2023-06-01", r
    assert g.svc("chat")["requests"] == 2 and g.svc("whisper")["starts"] == 0


# --------------------------------------------------------------------------
# usage per key and service
# --------------------------------------------------------------------------

K1 = "sk-usage-one-0123456789"
K2 = "sk-usage-two-0123456789"


def kid(g, key):
    """The id an unnamed key has on gateway G: "key:" and 12 hex digits of
    its HMAC-SHA256 under the secret in G's state_dir."""
    import hashlib
    import hmac
    secret = bytes.fromhex((g.dir / f"{g.config_path.stem}-state" / "key_id_secret").read_text()[:64])
    return "key:" + hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:12]


def metric(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return int(float(line.split()[-1]))
    return None


def test_usage_per_key_and_service_in_metrics_and_api(gateway):
    g = gateway([demo_service(name="demo", route="llm", aliases=["gpt-4o-mini"]),
                 demo_service(name="other", route="other")],
                api_keys=[{"key": K1}, {"key": K2, "services": ["demo"]}])
    msgs = "[{ role: 'user', content: 'one two three four five' }]"
    one = run_js(g, f"""
        const a = await client.chat.completions.create({{ model: 'demo', max_tokens: 3, messages: {msgs} }});
        const b = await client.chat.completions.create({{ model: 'gpt-4o-mini', max_tokens: 4, messages: {msgs} }});
        return [a.usage, b.usage];""", key=K1)
    two = run_js(g, f"""
        const s = await client.chat.completions.create({{ model: 'demo', max_tokens: 5, messages: {msgs},
            stream: true, stream_options: {{ include_usage: true }} }});
        let usage = null, n = 0;
        for await (const ch of s) {{ n++; if (ch.usage) usage = ch.usage; }}
        // without include_usage: a request, no tokens
        const s2 = await client.chat.completions.create({{ model: 'demo', max_tokens: 2, messages: {msgs},
            stream: true }});
        for await (const ch of s2) {{ if (ch.usage) throw new Error('usage without include_usage'); }}
        // the Hugging Face client
        const h = await hf.chatCompletion({{ model: 'demo', max_tokens: 6, messages: {msgs} }},
                                          {{ retry_on_error: false }});
        return [usage, h.usage, n];""", key=K2)
    assert all(u for u in one) and one[1]["completion_tokens"] == 4, one
    assert two[0] and two[0]["completion_tokens"] == 5 and two[1]["completion_tokens"] == 6, two

    m = g.get("/metrics").text
    k1, k2 = kid(g, K1), kid(g, K2)
    assert metric(m, "slurmgate_key_requests_total", service="demo", key=k1) == 2, m
    assert metric(m, "slurmgate_key_requests_total", service="demo", key=k2) == 3, m
    for k, us in ((k1, one), (k2, two[:2])):
        assert metric(m, "slurmgate_tokens_total", service="demo", key=k, kind="prompt") == \
            sum(u["prompt_tokens"] for u in us), m
        assert metric(m, "slurmgate_tokens_total", service="demo", key=k, kind="completion") == \
            sum(u["completion_tokens"] for u in us), m
    assert metric(m, "slurmgate_key_requests_total", service="other", key=k1) is None, m
    # /api: per service, per key
    api = g.svc("demo")["usage"]
    assert api[k1] == {"requests": 2, "prompt_tokens": one[0]["prompt_tokens"] + one[1]["prompt_tokens"],
                       "completion_tokens": 7}, api
    assert api[k2]["requests"] == 3 and api[k2]["completion_tokens"] == 11, api
    assert g.svc("other")["usage"] == {}
    # never the key itself
    state = g.get("/api/services").text
    for k in (K1, K2):
        assert k not in m and k not in state


def test_usage_without_api_keys_is_counted_under_a_dash(gateway):
    g = gateway()
    r = jpost(g, "/v1/chat/completions", {"model": "demo", "max_tokens": 3, "messages": []})
    assert r.status == 200, r
    u = r.json()["usage"]
    m = g.get("/metrics").text
    assert metric(m, "slurmgate_key_requests_total", service="demo", key="-") == 1, m
    assert metric(m, "slurmgate_tokens_total", service="demo", key="-", kind="completion") == \
        u["completion_tokens"] == 3, m


FLAKY = r'''
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
seen = 0
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        global seen
        if self.path == "/flaky":
            seen += 1
            if seen == 1:   # the first one: closed before any response byte
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
        body = b'{"ok":true,"seen":%d}' % seen
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def test_get_closed_early_by_a_live_instance_is_sent_again_once_it_answers_probes(gateway, tmp_path):
    (tmp_path / "flaky.py").write_text(FLAKY)
    sh = write_script(tmp_path / "flaky.sh", f'#!/bin/sh\nexec python3 "{tmp_path}/flaky.py" "$1"\n')
    g = gateway([demo_service(bash_file=str(sh))], upstream_connect_timeout=1)
    r = http_request(g.port, "GET", "/llm/flaky", timeout=15 * SLACK)
    # the instance was only suspect: a probe brought it back, and the GET
    # (nothing of it lost) went to it once more
    assert r.status == 200 and r.json()["seen"] == 2, r
    assert "answers probes again" in g.log(), g.log()


def test_get_whose_instance_dies_is_retried_on_the_other_instance(port_block, gateway, tmp_path):
    # port_block first: its teardown (no demo left on the ports) after the gateway's
    sh = write_script(tmp_path / "noexec.sh",
                      f'#!/bin/sh\n"{DEMO_SH}" "$@"\necho "server ended" >&2\nexit 1\n')
    p = port_block(2)
    g = gateway([demo_service(bash_file=str(sh), port=p, min_instances=2, max_instances=2)])
    wait_until(lambda: sum(i["state"] == "ready" for i in g.svc()["instances"]) == 2, 15 * SLACK,
               msg="two ready instances")
    holder = {}
    t = threading.Thread(target=lambda: holder.setdefault(
        "r", http_request(g.port, "GET", "/llm/slow?ms=1500", timeout=15 * SLACK)))
    t.start()
    wait_until(lambda: g.svc()["in_flight"] == 1, 5 * SLACK, msg="the GET in flight")
    busy = [i for i in g.svc()["instances"] if i["in_flight"] == 1][0]
    # the server under the script of the busy instance (its --port)
    from conftest import pids_with_arg
    server = [q for q in pids_with_arg("--port", str(busy["port"])) if q != busy["pid"]]
    assert server, busy
    for q in server:
        os.kill(q, signal.SIGKILL)
    t.join(15 * SLACK)
    r = holder["r"]
    # sent again, to the other instance only, which answered it
    assert r.status == 200 and r.json()["slept_ms"] == 1500, r
    assert g.log().count("retrying a request on another instance") == 1, g.log()
