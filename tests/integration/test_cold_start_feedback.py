"""Feedback while a cold service starts.

A held request whose client reads an event stream (Accept: text/event-stream,
or a JSON body with "stream": true) gets its response head at once (200,
text/event-stream, X-Slurmgate-Cold-Start: waiting), then SSE comment lines
": slurmgate: <state>" every feedback_interval seconds, then the real stream;
a failed start ends that stream with an OpenAI-style error event. A browser
GET (Accept: text/html) of a cold service gets a small waiting page (503,
or 502 once its start failed; Refresh) that starts the service; once ready the same GET is proxied. A
non-stream request that waited carries X-Slurmgate-Cold-Start: <seconds>."""
import http.client
import json
import re
import threading
import time

from conftest import (DEMO_SH, SLACK, Stream, demo_service, wait_until,
                      write_script)

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def script(tmp_path, name, body):
    return write_script(tmp_path / name, "#!/bin/sh\n" + body + "\n")


def slow_demo(tmp_path, delay, name="slow.sh"):
    return script(tmp_path, name, f'DEMO_DELAY={delay} exec "{DEMO_SH}" "$@"')


def check_feedback_comments(s, min_count, interval, start_delay):
    """Comments ": slurmgate: <state>" arrive from the start, every INTERVAL s,
    all before the first data line."""
    cs = s.comments()
    assert len(cs) >= min_count, f"only {len(cs)} feedback comments: {s.lines[:10]}"
    for t, line in cs:
        assert line.startswith(": slurmgate: "), line
    # the first at once, with the head
    assert cs[0][0] < 0.8 * SLACK, cs
    state_comments = [(t, l) for t, l in cs if not l.startswith(": slurmgate: ready")]
    assert state_comments and all(": slurmgate: starting" in l for _, l in state_comments), cs
    times = [t for t, _ in state_comments]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps, cs
    assert all(interval * 0.7 <= g <= interval * 1.6 + 0.3 * SLACK for g in gaps), \
        f"feedback comments not every {interval} s: gaps {gaps}"
    d = s.data()
    if d:
        assert cs[len(state_comments) - 1][0] <= d[0][0], "a feedback comment came after data"
        assert d[0][0] >= start_delay * 0.8, f"data before the service could be up: {d[0]}"


# --------------------------------------------------------------------------
# streams held through a cold start
# --------------------------------------------------------------------------

def test_stream_true_request_gets_head_at_once_then_comments_then_the_stream(gateway):
    g = gateway(env={"DEMO_DELAY": "3", "DEMO_TOKEN_DELAY_MS": "100"}, feedback_interval=1)
    s = Stream(g.port, "POST", "/v1/chat/completions",
               body={"model": "demo", "stream": True, "max_tokens": 3,
                     "messages": [{"role": "user", "content": "hi"}]})
    # the head came at once, long before the 3 s start is over
    assert s.t_head < 1.0 * SLACK, s.t_head
    assert s.resp.status == 200
    assert s.header("Content-Type").startswith("text/event-stream"), s.resp.getheaders()
    assert s.header("X-Slurmgate-Cold-Start") == "waiting", s.resp.getheaders()
    assert "chunked" in (s.header("Transfer-Encoding") or ""), s.resp.getheaders()
    s.read_all()
    s.close()
    check_feedback_comments(s, 3, 1, 3)
    # the state said by the first comment is a start in progress
    assert s.comments()[0][1].startswith(": slurmgate: starting"), s.comments()[0]
    d = [x for _, x in s.data()]
    assert d[-1] == "[DONE]", d
    chunks = [json.loads(x) for x in d[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks), chunks
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.split() == ["tok0", "tok1", "tok2"], text
    # SSE is well-formed: comments and data events are separated by blank lines
    kinds = [l for _, l in s.lines]
    for k, line in enumerate(kinds[:-1]):
        if line.startswith(":"):
            assert kinds[k + 1] == "", f"comment not followed by a blank line: {kinds[k:k + 2]}"


def test_accept_event_stream_on_a_route_gets_feedback_too(gateway):
    g = gateway(env={"DEMO_DELAY": "2.2"}, feedback_interval=1)
    s = Stream(g.port, "GET", "/llm/stream?n=3&ms=50", headers={"Accept": "text/event-stream"})
    assert s.t_head < 1.0 * SLACK, s.t_head
    assert s.resp.status == 200
    assert s.header("X-Slurmgate-Cold-Start") == "waiting"
    assert s.header("Content-Type").startswith("text/event-stream")
    s.read_all()
    s.close()
    check_feedback_comments(s, 2, 1, 2.2)
    assert [x for _, x in s.data()] == ["0", "1", "2"], s.lines


def test_feedback_interval_defaults_to_three_seconds(gateway):
    g = gateway(env={"DEMO_DELAY": "3.6"})
    s = Stream(g.port, "GET", "/llm/stream?n=1&ms=10", headers={"Accept": "text/event-stream"})
    assert s.resp.status == 200 and s.t_head < 1.0 * SLACK
    s.read_all()
    s.close()
    check_feedback_comments(s, 2, 3, 3.6)


def test_many_waiting_streams_all_get_feedback_and_their_stream(gateway):
    g = gateway(env={"DEMO_DELAY": "1.5"}, feedback_interval=1)
    n = 12
    results = [None] * n

    def one(k):
        s = Stream(g.port, "GET", f"/llm/stream?n=2&ms=20&k={k}",
                   headers={"Accept": "text/event-stream"})
        s.read_all()
        s.close()
        results[k] = s

    ts = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30 * SLACK)
    assert all(r is not None for r in results), "some streams did not finish"
    for s in results:
        assert s.header("X-Slurmgate-Cold-Start") == "waiting"
        assert s.comments(), s.lines
        assert [x for _, x in s.data()] == ["0", "1"], s.lines
    assert g.svc()["starts"] == 1


def test_client_leaving_during_feedback_does_not_hurt(gateway):
    g = gateway(env={"DEMO_DELAY": "2"}, feedback_interval=1)
    s = Stream(g.port, "GET", "/llm/stream?n=2", headers={"Accept": "text/event-stream"})
    assert s.resp.status == 200
    assert s.resp.readline().startswith(b": slurmgate:")
    s.close()
    wait_until(lambda: g.svc()["waiting"] == 0, 3 * SLACK, msg="waiting back to 0")
    # the start goes on; the next request is served
    g.wait_state("ready", timeout=10)
    r = g.get("/llm/health")
    assert r.status == 200, r


# --------------------------------------------------------------------------
# a start that fails, seen by a waiting stream
# --------------------------------------------------------------------------

def assert_error_event(s, etype, code):
    d = s.data()
    assert d, f"no data event: {s.lines}"
    try:
        ev = json.loads(d[-1][1])
    except ValueError:
        raise AssertionError(f"the last event is not JSON: {d[-1][1]!r}") from None
    assert set(ev) == {"error"}, ev
    e = ev["error"]
    assert e["type"] == etype and e["code"] == code, ev
    assert isinstance(e["message"], str) and e["message"], ev
    return e


def test_failing_start_ends_the_stream_with_an_openai_error_event(gateway):
    g = gateway(env={"DEMO_FAIL_EXIT": "3"}, feedback_interval=1)
    s = Stream(g.port, "POST", "/v1/chat/completions",
               body={"model": "demo", "stream": True, "messages": []})
    assert s.resp.status == 200
    assert s.header("X-Slurmgate-Cold-Start") == "waiting"
    s.read_all(10)
    e = assert_error_event(s, "start_failed", 502)
    assert "exited with status 3" in e["message"], e
    assert len(s.data()) == 1, s.lines
    # the chunked stream was ended properly: the connection takes another request
    s.conn.request("GET", "/api/health")
    r = s.conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    s.close()


def test_start_failing_later_sends_comments_then_the_error_event(gateway, tmp_path):
    bad = script(tmp_path, "bad.sh", 'sleep 2.2\necho "CUDA error: out of memory" >&2\nexit 3')
    g = gateway([demo_service(bash_file=str(bad))], feedback_interval=1)
    s = Stream(g.port, "GET", "/llm/stream", headers={"Accept": "text/event-stream"})
    assert s.t_head < 1.0 * SLACK
    s.read_all(15)
    s.close()
    check_feedback_comments(s, 2, 1, 2.2)
    e = assert_error_event(s, "start_failed", 502)
    assert "exited with status 3" in e["message"] and "out of memory" in e["message"], e


def test_start_timeout_ends_the_stream_with_an_error_event(gateway):
    g = gateway([demo_service(start_timeout=2)], env={"DEMO_DELAY": "20"}, feedback_interval=1)
    s = Stream(g.port, "POST", "/v1/completions",
               body={"model": "demo", "stream": True, "prompt": "x"})
    s.read_all(15)
    s.close()
    e = assert_error_event(s, "start_failed", 502)
    assert "start_timeout" in e["message"], e
    assert 1.5 <= s.data()[-1][0] <= 6 * SLACK, s.data()


def test_service_error_after_the_wait_becomes_an_error_event(gateway):
    g = gateway(env={"DEMO_DELAY": "1"}, feedback_interval=1)
    s = Stream(g.port, "GET", "/llm/no/such/path", headers={"Accept": "text/event-stream"})
    assert s.resp.status == 200
    s.read_all()
    s.close()
    e = assert_error_event(s, "upstream_error", 404)
    # the service's own message is in the event (issue 12, problem 3) ...
    assert "404" in e["message"] and "not found" in e["message"], e
    # ... but its 404 body is not appended to the stream
    assert all('"path"' not in l for _, l in s.lines), s.lines
    assert len(s.data()) == 1, s.lines


# --------------------------------------------------------------------------
# non-stream requests
# --------------------------------------------------------------------------

def test_non_stream_request_that_waited_carries_its_wait(gateway):
    g = gateway(env={"DEMO_DELAY": "1.5"}, feedback_interval=1)
    t0 = time.monotonic()
    r = g.post("/v1/chat/completions", {"model": "demo", "messages": []}, timeout=20)
    took = time.monotonic() - t0
    assert r.status == 200, r
    assert r.header("Content-Type").startswith("application/json"), dict(r.headers)
    assert r.json()["object"] == "chat.completion"
    cs = r.header("X-Slurmgate-Cold-Start")
    assert cs is not None and re.fullmatch(r"\d+(\.\d+)?", cs), cs
    assert 1.0 <= float(cs) <= took + 0.05, (cs, took)
    # no feedback for a client that does not read a stream: nothing came early
    assert took >= 1.2
    # a warm request carries no header
    r = g.get("/llm/health")
    assert r.status == 200 and r.header("X-Slurmgate-Cold-Start") is None, dict(r.headers)
    r = g.get("/llm/stream?n=1", headers={"Accept": "text/event-stream"})
    assert r.status == 200 and r.header("X-Slurmgate-Cold-Start") is None, dict(r.headers)


# --------------------------------------------------------------------------
# the waiting page
# --------------------------------------------------------------------------

def test_browser_gets_a_waiting_page_that_starts_the_service_then_the_service(gateway):
    g = gateway(env={"DEMO_DELAY": "2"})
    t0 = time.monotonic()
    r = g.get("/llm/info", headers={"Accept": BROWSER_ACCEPT})
    assert time.monotonic() - t0 < 1.0 * SLACK, "the waiting page was held"
    assert r.status == 503, r
    assert r.header("Content-Type").startswith("text/html"), dict(r.headers)
    refresh = r.header("Refresh")
    assert refresh is not None and re.match(r"^\d+", refresh.strip()), dict(r.headers)
    assert 1 <= int(re.match(r"^\d+", refresh.strip()).group()) <= 30
    assert r.header("Retry-After") is not None
    assert "no-store" in (r.header("Cache-Control") or "") or "no-cache" in (r.header("Cache-Control") or "")
    page = r.text
    assert re.search(r'<meta\s+http-equiv="refresh"\s+content="\d+', page, re.I), page
    assert "demo" in page
    assert "starting" in page, page          # the state is shown
    # the page started the service
    assert g.state() in ("starting", "ready")
    assert g.svc()["starts"] == 1

    # the browser keeps reloading; once ready, the same GET is proxied
    def reload():
        rr = g.get("/llm/info", headers={"Accept": BROWSER_ACCEPT})
        return rr if rr.status == 200 else None
    rr = wait_until(reload, 10 * SLACK, interval=0.2, msg="the page to give way to the service")
    assert rr.json()["model_id"] == "demo-llm", rr
    assert g.svc()["starts"] == 1


def test_waiting_page_only_for_browser_gets(gateway):
    g = gateway(env={"DEMO_DELAY": "1"})
    # a programmatic GET (Accept */*) is held and answered
    r = g.get("/llm/info", headers={"Accept": "*/*"}, timeout=15)
    assert r.status == 200, r
    assert r.header("X-Slurmgate-Cold-Start") is not None
    g.post("/api/services/demo/stop")
    g.wait_state("stopped", timeout=10)
    # a POST from a browser form is held too, not answered with the page
    r = g.request("POST", "/llm/echo", body=b"a=1",
                  headers={"Accept": BROWSER_ACCEPT,
                           "Content-Type": "application/x-www-form-urlencoded"}, timeout=15)
    assert r.status == 200, r
    assert r.json()["body"] == "a=1"


def test_waiting_page_escapes_the_service_name_and_state(gateway, tmp_path):
    bad = script(tmp_path, "bad.sh", 'echo "<img src=x onerror=alert(1)>" >&2\nexit 3')
    name = 'a<b>"&x'
    g = gateway([demo_service(name=name, bash_file=str(bad))])
    r = g.get("/llm/", headers={"Accept": BROWSER_ACCEPT})
    assert r.status == 503, r
    page = r.text
    assert "<b>" not in page and 'a<b' not in page, page
    assert "a&lt;b&gt;&quot;&amp;x" in page, page
    # after the failed start, the page shows the failure, escaped
    r = wait_until(lambda: (lambda x: x if "exited" in x.text else None)(
        g.get("/llm/", headers={"Accept": BROWSER_ACCEPT})), 5 * SLACK, interval=0.2,
        msg="the page to show the failure")
    # a failure, not "starting": 502, and the page still tries again
    assert r.status == 502 and r.header("Refresh"), (r, dict(r.headers))
    assert r.header("Content-Type").startswith("text/html"), dict(r.headers)
    assert "<img" not in r.text, r.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in r.text, r.text


def test_start_failure_whose_stderr_is_not_utf8_is_still_reported(gateway, tmp_path):
    """The reason quotes the script's last stderr line; bytes that are not
    UTF-8 must not break the JSON answer (or the gateway)."""
    bad = script(tmp_path, "bad.sh", r'printf "weird \377\376 bytes\n" >&2' + "\nexit 3")
    g = gateway([demo_service(bash_file=str(bad))], feedback_interval=1)
    s = Stream(g.port, "GET", "/llm/stream", headers={"Accept": "text/event-stream"})
    s.read_all(10)
    s.close()
    assert g.proc.poll() is None, f"slurmgate died:\n{g.log()}"
    e = assert_error_event(s, "start_failed", 502)
    assert "exited with status 3" in e["message"], e
    # a plain request gets its 502 JSON too
    r = g.get("/llm/health", timeout=10)
    assert g.proc.poll() is None, f"slurmgate died:\n{g.log()}"
    assert r.status == 502, r
    assert "exited with status 3" in r.json()["error"], r
    assert g.get("/info").status == 200
