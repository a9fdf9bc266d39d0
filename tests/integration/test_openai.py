"""The OpenAI-compatible front: GET /v1/models lists every configured service
(running or not) under its name and its aliases, with a non-standard
"state"; POST /v1/... requests are routed by the JSON body's "model" to that
service, path unchanged, starting it when cold; unknown models and bad
bodies get OpenAI-shaped errors; "stream": true passes through event by
event.

The `openai` package is not available here: its wire format is spoken with
plain http.client."""
import http.client
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import (DEMO_SH, SLACK, Stream, demo_service, http_request, openai_error_body,
                      wait_until, write_script)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def jpost(g, path, obj, headers=None, timeout=20.0):
    body = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
    if isinstance(body, str):
        body = body.encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return http_request(g.port, "POST", path, body=body, headers=h, timeout=timeout * SLACK)


def assert_openai_error(r, status, code=None):
    """r is an OpenAI-style error: {"error": {"message", "type", "code", ...}}."""
    assert r.status == status, r
    assert r.header("Content-Type", "").startswith("application/json"), dict(r.headers)
    o = r.json()
    e = openai_error_body(o)
    assert isinstance(e["type"], str) and e["type"], o
    if code is not None:
        assert e["code"] == code, o
    return e


def models(g, headers=None):
    r = g.get("/v1/models", headers=headers or {})
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith("application/json"), dict(r.headers)
    o = r.json()
    assert o.get("object") == "list", o
    assert isinstance(o.get("data"), list), o
    for m in o["data"]:
        # the fields an OpenAI client reads, with their types
        assert m.get("object") == "model", m
        assert isinstance(m.get("id"), str) and m["id"], m
        assert isinstance(m.get("created"), int), m
        assert isinstance(m.get("owned_by"), str), m
        assert isinstance(m.get("state"), str) and m["state"], m
    ids = [m["id"] for m in o["data"]]
    assert len(ids) == len(set(ids)), f"duplicate model ids: {ids}"
    return {m["id"]: m for m in o["data"]}


def slow_script(tmp_path, delay, name="slow.sh"):
    """A start script that takes DELAY seconds before the demo listens
    (DEMO_DELAY for this service only)."""
    return write_script(tmp_path / name,
                        f'#!/bin/sh\nDEMO_DELAY={delay} exec "{DEMO_SH}" "$@"\n')


def two_services(tmp_path, **kw):
    a = demo_service(name="demo", route="llm", aliases=["gpt-4o-mini", "demo-llm"], **kw)
    b = demo_service(name="other", route="other", aliases=["text-embedding-3-small"], **kw)
    return [a, b]


# --------------------------------------------------------------------------
# /v1/models
# --------------------------------------------------------------------------

def test_models_lists_every_service_and_alias_running_or_not(gateway, tmp_path):
    g = gateway(two_services(tmp_path))
    ms = models(g)
    assert set(ms) == {"demo", "gpt-4o-mini", "demo-llm", "other", "text-embedding-3-small"}, ms
    for mid, m in ms.items():
        assert m["state"] == "stopped", m
    # listing starts nothing
    assert g.state("demo") == "stopped" and g.state("other") == "stopped"
    assert g.svc("demo")["starts"] == 0 and g.svc("other")["starts"] == 0

    # start one: it and its aliases are ready, the other stays stopped
    assert g.get("/llm/health").status == 200
    ms = models(g)
    for mid in ("demo", "gpt-4o-mini", "demo-llm"):
        assert ms[mid]["state"] == "ready", ms[mid]
    for mid in ("other", "text-embedding-3-small"):
        assert ms[mid]["state"] == "stopped", ms[mid]


def test_models_state_is_starting_during_a_start_and_failed_after_a_failed_one(gateway, tmp_path):
    slow = slow_script(tmp_path, 3)
    bad = write_script(tmp_path / "bad.sh", '#!/bin/sh\necho "no GPU" >&2\nexit 3\n')
    g = gateway([demo_service(name="slow", route="slow", bash_file=str(slow)),
                 demo_service(name="bad", route="bad", bash_file=str(bad))])
    holder = threading.Thread(target=lambda: g.get("/slow/health", timeout=20), daemon=True)
    holder.start()
    wait_until(lambda: models(g)["slow"]["state"].startswith("starting"), 5 * SLACK,
               msg="/v1/models state 'starting'")
    holder.join(20 * SLACK)
    assert not holder.is_alive()
    assert models(g)["slow"]["state"] == "ready"

    r = g.get("/bad/health")
    assert r.status == 502, r
    st = models(g)["bad"]["state"]
    assert st == "failed", st


def test_models_is_get_only_for_listing(gateway, tmp_path):
    g = gateway(two_services(tmp_path))
    # a POST to /v1/models is an OpenAI request without a model: 400, not the list
    r = jpost(g, "/v1/models", {})
    assert r.status in (400, 404, 405), r
    assert g.svc("demo")["starts"] == 0


# --------------------------------------------------------------------------
# routing by "model"
# --------------------------------------------------------------------------

def test_chat_completion_by_alias_cold_starts_the_right_service(gateway, tmp_path):
    g = gateway(two_services(tmp_path), env={"DEMO_DELAY": "0.5"})
    r = jpost(g, "/v1/chat/completions",
              {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}],
               "max_tokens": 3})
    assert r.status == 200, r
    o = r.json()
    assert o["object"] == "chat.completion", o
    assert o["choices"][0]["message"]["role"] == "assistant", o
    assert o["choices"][0]["message"]["content"].split() == ["tok0", "tok1", "tok2"], o
    assert o["usage"]["completion_tokens"] == 3 and o["usage"]["prompt_tokens"] == 2, o
    # it waited for the cold start, and says so
    cs = r.header("X-Slurmgate-Cold-Start")
    assert cs is not None, dict(r.headers)
    assert float(cs) >= 0.3, cs
    # only the aliased service started
    assert g.state("demo") == "ready"
    assert g.state("other") == "stopped"
    assert g.svc("other")["starts"] == 0

    # warm, by its name: no cold-start header
    r = jpost(g, "/v1/chat/completions",
              {"model": "demo", "messages": [{"role": "user", "content": "x"}]})
    assert r.status == 200, r
    assert r.header("X-Slurmgate-Cold-Start") is None, dict(r.headers)
    assert g.svc("demo")["starts"] == 1


def test_completions_and_embeddings_reach_their_services_path_unchanged(gateway, tmp_path):
    g = gateway(two_services(tmp_path))
    r = jpost(g, "/v1/completions", {"model": "demo-llm", "prompt": "a b c", "max_tokens": 2})
    assert r.status == 200, r
    o = r.json()
    assert o["object"] == "text_completion", o
    assert o["choices"][0]["text"].split() == ["tok0", "tok1"], o
    assert o["usage"]["prompt_tokens"] == 3, o

    r = jpost(g, "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["one", "two", "three"]})
    assert r.status == 200, r
    o = r.json()
    assert o["object"] == "list", o
    assert [d["index"] for d in o["data"]] == [0, 1, 2], o
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in o["data"]), o
    assert g.state("other") == "ready"
    # the embeddings went to "other", the completion to "demo": one start each
    assert g.svc("demo")["starts"] == 1 and g.svc("other")["starts"] == 1
    assert g.svc("demo")["requests"] == 1 and g.svc("other")["requests"] == 1


def test_any_other_v1_path_with_a_model_is_forwarded_unchanged(gateway, tmp_path):
    g = gateway(two_services(tmp_path))
    # the demo has no /v1/images/generations: its own 404 (not the gateway's)
    # proves the request reached it with the path unchanged
    r = jpost(g, "/v1/images/generations?x=1", {"model": "demo", "prompt": "hi"})
    assert r.status == 404, r
    o = r.json()
    assert o.get("path") == "/v1/images/generations", o
    assert g.svc("demo")["requests"] == 1
    assert g.svc("other")["starts"] == 0


def test_v1_request_body_sent_chunked_and_in_pieces_is_routed(gateway, tmp_path):
    g = gateway(two_services(tmp_path))
    body = json.dumps({"model": "other", "input": "x" * 5000}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=20 * SLACK)
    try:
        def pieces():
            for k in range(0, len(body), 700):
                yield body[k:k + 700]
        conn.request("POST", "/v1/embeddings", body=pieces(),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        data = r.read()
        assert r.status == 200, (r.status, data[:300])
        assert json.loads(data)["data"][0]["object"] == "embedding"
        # the same keep-alive connection takes the next /v1 request too
        conn.request("POST", "/v1/embeddings", body=json.dumps({"model": "other", "input": "y"}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        assert r.status == 200, (r.status, data[:300])
    finally:
        conn.close()
    assert g.svc("other")["requests"] == 2
    assert g.svc("demo")["starts"] == 0


def test_keep_alive_connection_mixes_v1_routes_and_errors(gateway, tmp_path):
    g = gateway(two_services(tmp_path))
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10 * SLACK)
    connects = []
    orig = conn.connect

    def counting_connect():
        connects.append(1)
        orig()
    conn.connect = counting_connect
    try:
        seq = [
            ("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []}, 200),
            ("POST", "/v1/chat/completions", {"model": "nope"}, 404),
            ("GET", "/v1/models", None, 200),
            ("POST", "/v1/embeddings", b"{not json", 400),
            ("POST", "/v1/completions", {"model": "demo", "prompt": "p"}, 200),
        ]
        for method, path, obj, want in seq:
            body = obj if obj is None or isinstance(obj, bytes) else json.dumps(obj).encode()
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            assert r.status == want, (path, obj, r.status, data[:300])
    finally:
        conn.close()
    assert len(connects) == 1, f"the gateway closed the keep-alive connection: {len(connects)} connects"


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------

def test_unknown_model_is_an_openai_404_and_starts_nothing(gateway, tmp_path):
    g = gateway(two_services(tmp_path))
    r = jpost(g, "/v1/chat/completions", {"model": "gpt-5", "messages": []})
    e = assert_openai_error(r, 404, "model_not_found")
    assert "gpt-5" in e["message"], e
    assert e["type"] == "invalid_request_error", e
    # a model name is matched exactly (no case folding, no prefix)
    for name in ("DEMO", "dem", "demo ", "gpt-4o-mini-2024"):
        assert_openai_error(jpost(g, "/v1/chat/completions", {"model": name}), 404,
                            "model_not_found")
    assert g.svc("demo")["starts"] == 0 and g.svc("other")["starts"] == 0


def test_unknown_model_name_with_markup_is_not_reflected_raw(gateway, tmp_path):
    g = gateway(two_services(tmp_path))
    evil = '<script>"x"\n\\' + "A" * 2000
    r = jpost(g, "/v1/chat/completions", {"model": evil})
    e = assert_openai_error(r, 404, "model_not_found")
    assert len(e["message"]) < 4000, len(e["message"])


def test_missing_or_invalid_body_is_an_openai_400(gateway, tmp_path):
    g = gateway(two_services(tmp_path))
    cases = [
        None,                          # no body at all
        b"",                           # empty body
        b"{not json",                  # invalid JSON
        b"[1, 2, 3]",                  # JSON, not an object
        b'"demo"',                     # a JSON string
        b'{"messages": []}',           # no model
        b'{"model": 42}',              # model not a string
        b'{"model": null}',            # model null
        b'{"model": "demo"} trailing',  # garbage after the object
    ]
    for body in cases:
        r = http_request(g.port, "POST", "/v1/chat/completions", body=body,
                         headers={"Content-Type": "application/json"}, timeout=10 * SLACK)
        assert_openai_error(r, 400)
    # a GET to a /v1 path other than /v1/models has no body either
    assert_openai_error(g.get("/v1/chat/completions"), 400)
    assert g.svc("demo")["starts"] == 0 and g.svc("other")["starts"] == 0


# --------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------

def check_chunks(evs, n_tokens, kind):
    datas = [d for _, ds, _ in evs for d in ds]
    assert datas and datas[-1] == "[DONE]", datas[-3:]
    objs = [json.loads(d) for d in datas[:-1]]
    assert all(o["object"] == kind for o in objs), objs[:2]
    if kind == "chat.completion.chunk":
        text = "".join(o["choices"][0]["delta"].get("content", "") for o in objs)
    else:
        text = "".join(o["choices"][0]["text"] for o in objs)
    assert text.split() == [f"tok{k}" for k in range(n_tokens)], text
    assert objs[-1]["choices"][0]["finish_reason"] in ("stop", "length"), objs[-1]


def test_stream_passes_through_event_by_event(gateway, tmp_path):
    g = gateway(two_services(tmp_path), env={"DEMO_TOKEN_DELAY_MS": "200"})
    assert g.get("/llm/health").status == 200          # warm: no cold-start feedback here
    n = 6
    s = Stream(g.port, "POST", "/v1/chat/completions",
               body=json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": n,
                                "messages": [{"role": "user", "content": "hi"}]}),
               headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
    assert s.resp.status == 200
    assert s.resp.getheader("Content-Type", "").startswith("text/event-stream"), s.resp.getheaders()
    assert s.resp.getheader("X-Slurmgate-Cold-Start") is None
    s.read_all()
    evs = s.events()
    check_chunks(evs, n, "chat.completion.chunk")
    token_times = [t for t, ds, _ in evs if ds and ds[0] != "[DONE]"][:n]
    assert len(token_times) == n
    gaps = [b - a for a, b in zip(token_times, token_times[1:])]
    # 200 ms between tokens at the service: if the gateway buffered, they would
    # arrive together
    assert min(gaps) >= 0.1, f"events arrived bunched, gaps {gaps}"
    assert token_times[-1] - token_times[0] >= 0.8, token_times
    # the first token came long before the last: nothing waited for the end
    assert token_times[0] < token_times[-1] - 0.5


def test_completions_stream_passes_through_too(gateway, tmp_path):
    g = gateway(two_services(tmp_path), env={"DEMO_TOKEN_DELAY_MS": "200"})
    assert g.get("/llm/health").status == 200
    s = Stream(g.port, "POST", "/v1/completions",
               body=json.dumps({"model": "demo", "stream": True, "max_tokens": 4, "prompt": "x"}),
               headers={"Content-Type": "application/json"}).read_all()
    evs = s.events()
    check_chunks(evs, 4, "text_completion")
    times = [t for t, ds, _ in evs if ds]
    assert times[-1] - times[0] >= 0.5, times


def test_non_stream_request_is_not_answered_as_a_stream(gateway, tmp_path):
    g = gateway(two_services(tmp_path))
    assert g.get("/llm/health").status == 200
    r = jpost(g, "/v1/chat/completions", {"model": "demo", "stream": False, "messages": []})
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith("application/json"), dict(r.headers)
    assert r.json()["object"] == "chat.completion"


def test_gateway_answered_v1_errors_keep_the_connection_usable(gateway, tmp_path):
    """A /v1 request the gateway answers itself (after reading the body to
    find the model) must leave a keep-alive connection ready for the next
    request."""
    g = gateway(two_services(tmp_path))
    for bad_body, want in ((b'{"model": "nope"}', 404), (b"{oops", 400)):
        conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5 * SLACK)
        try:
            conn.request("POST", "/v1/chat/completions", body=bad_body,
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            assert r.status == want
            assert (r.getheader("Connection") or "").lower() != "close"
            conn.request("GET", "/api/health")
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        finally:
            conn.close()


def test_service_dying_mid_stream_ends_the_stream_and_the_gateway_lives(gateway, tmp_path):
    g = gateway(two_services(tmp_path), env={"DEMO_TOKEN_DELAY_MS": "200"})
    pid = g.service_pid()
    s = Stream(g.port, "POST", "/v1/chat/completions",
               body=json.dumps({"model": "demo", "stream": True, "max_tokens": 50}),
               headers={"Content-Type": "application/json"})
    assert s.resp.status == 200
    first = s.resp.readline()
    assert first.startswith(b"data:"), first
    os.kill(pid, signal.SIGKILL)
    # the stream ends (cut: no [DONE]), it does not hang
    try:
        s.read_all(10)
    except (http.client.IncompleteRead, ConnectionError):
        pass
    assert not any(l == "data: [DONE]" for _, l in s.lines)
    time.sleep(0.3)
    assert g.proc.poll() is None, f"slurmgate died (exit {g.proc.returncode}):\n{g.log()}"
    assert g.get("/api/health").status == 200
    # and the next request starts the service again
    r = jpost(g, "/v1/chat/completions", {"model": "demo", "messages": []})
    assert r.status == 200, r


# --------------------------------------------------------------------------
# a Slurm service waiting in the queue (the real test cluster)
# --------------------------------------------------------------------------

# the Slurm tests' fixtures (tests/integration/slurm/slurmlib.py): a real
# single-node cluster, started only when a test asks for it
sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
try:
    import slurmlib
    from slurmlib import cluster, slurm_gateway  # noqa: F401 - fixtures
except ImportError:  # pragma: no cover - a tree without the Slurm tests
    slurmlib = None

    @pytest.fixture
    def cluster():
        pytest.skip("tests/integration/slurm/slurmlib.py is not here")

    @pytest.fixture
    def slurm_gateway():
        pytest.skip("tests/integration/slurm/slurmlib.py is not here")


def test_models_state_shows_the_slurm_queue_reason(cluster, slurm_gateway, tmp_path):
    lib, c, make = slurmlib, cluster, slurm_gateway
    job = lib.demo_job_script(tmp_path / "job.sh")
    # a job in a partition that is down stays pending, with a reason
    svc = lib.slurm_service(c, job, name="queued", route="queued", aliases=["queued-model"],
                            sbatch_args=[f"--chdir={c.work_dir}", f"--partition={c.down_partition}"])
    g = make([svc])

    def pending():
        # (a demand while the launcher still looks for earlier jobs is not
        # remembered: ask again until the job is there)
        if g.svc("queued")["starts"] == 0:
            assert g.get("/demand_queued").status == 503
        o = http_request(g.port, "GET", "/v1/models", timeout=5).json()
        st = {m["id"]: m["state"] for m in o["data"]}
        return st if st["queued"].startswith("pending: ") else None
    st = wait_until(pending, 30 * SLACK, interval=0.3, msg="/v1/models state 'pending: ...'")
    assert st["queued-model"] == st["queued"], st

    seen = {}

    def same_reason_as_squeue():
        # the reason is Slurm's own, as squeue shows it (both are polled: retry)
        seen["state"] = pending()
        seen["jobs"] = c.jobs(g.job_name("queued"))
        st, jobs = seen["state"], seen["jobs"]
        return (st and jobs and jobs[0][2] == "PENDING"
                and st["queued"] == f"pending: {jobs[0][3]}")
    try:
        wait_until(same_reason_as_squeue, 15 * SLACK, interval=0.5)
    except AssertionError:
        raise AssertionError(f"state is not 'pending: <squeue's reason>': {seen}; "
                             f"job name {g.job_name('queued')}; squeue: "
                             f"{c.run('squeue', '-h', '-t', 'all', '-o', '%i|%j|%T|%r', check=False)!r}") from None
    r = http_request(g.port, "POST", "/api/services/queued/stop", timeout=10)
    assert r.status == 202, r
    wait_until(lambda: not c.live_jobs(g.job_name("queued")), 30 * SLACK,
               msg="the pending job to be cancelled")
