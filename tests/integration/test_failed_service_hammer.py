"""Issue 12, problem 1: a failed service turned a retrying client into a storm
(13,561 requests in 10 s, every one logged: 39 MB of log in 3 minutes).

A client that retries the immediate error with no delay (as the HF client did
with the 503 a failed start got then; it gets 502 now) must cost nothing:
the 502 carries a Retry-After that is the back-off the
gateway applies, identical errors are logged once per service per interval
with a count, and /metrics counts them."""
import http.client
import re
import time

from conftest import SLACK, demo_service, wait_until, write_script

HAMMER_S = 2.0


def hammer(port, seconds):
    """A tight loop of GETs on one keep-alive connection (reconnecting if the
    gateway closes it), as a client that ignores Retry-After sends them.
    Returns [(monotonic time, status, Retry-After or None)]."""
    out = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10 * SLACK)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            try:
                conn.request("GET", "/llm/generate")
                r = conn.getresponse()
                r.read()
                out.append((time.monotonic(), r.status, r.getheader("Retry-After")))
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (http.client.HTTPException, ConnectionError):
                conn.close()
    finally:
        conn.close()
    return out


def refused_total(g, service="demo", reason=None):
    text = g.get("/metrics").text
    assert "# TYPE slurmgate_requests_refused_total counter" in text, text[:2000]
    total = 0
    for m in re.finditer(r'^slurmgate_requests_refused_total\{service="([^"]*)",reason="([^"]*)"\} (\d+)$',
                         text, re.M):
        if m.group(1) == service and reason in (None, m.group(2)):
            total += int(m.group(3))
    return total


def test_failed_service_hammered_costs_a_bounded_log(gateway, tmp_path):
    script = write_script(tmp_path / "fails.sh", """#!/bin/sh
echo "fails: model weights missing" >&2
exit 3
""")
    g = gateway([demo_service(bash_file=str(script))], log_repeat_interval=2)
    log_before = g.log_path.stat().st_size

    got = hammer(g.port, HAMMER_S)
    n = len(got)
    assert n >= 200, f"only {n} requests in {HAMMER_S} s"
    assert all(s == 502 for _, s, _ in got), {s for _, s, _ in got}
    # every 502 carries a Retry-After of 1..60 s
    ras = [ra for _, _, ra in got]
    assert all(ra is not None and ra.isdigit() and 1 <= int(ra) <= 60 for ra in ras), \
        sorted(set(map(str, ras)))

    starts = g.svc()["starts"]
    # the back-off (0, 1, 2, 4 ... s) bounds the starts, however hard the client pushes
    assert starts <= 5, f"{starts} starts in {HAMMER_S} s of hammering"

    # the log: one line per distinct error and interval, with a count, not one per request
    assert wait_until(lambda: "repeated" in g.log(tail=200000), 10 * SLACK), g.log()
    text = g.log_path.read_text(errors="replace")[log_before:]
    grew = g.log_path.stat().st_size - log_before
    lines = [ln for ln in text.splitlines() if "502" in ln]
    assert len(lines) < 40, f"{len(lines)} log lines with 502 for {n} requests:\n" + "\n".join(lines[:50])
    assert grew < 16384, f"the log grew {grew} bytes for {n} requests"
    counts = [int(m.group(1)) for m in re.finditer(r"repeated (\d+) times in the last \d+ s", text)]
    assert counts and sum(counts) + len(lines) - len(counts) >= n * 0.9, (n, counts, lines)
    print(f"hammer: {n} requests in {HAMMER_S} s ({n / HAMMER_S:.0f}/s), log grew {grew} bytes, "
          f"{starts} starts")

    # /metrics counts every refusal
    assert refused_total(g) == n, (refused_total(g), n)
    assert refused_total(g, reason="start_failed") == n, (refused_total(g, reason="start_failed"), n)


def test_retry_after_of_a_failed_service_is_its_back_off(gateway, tmp_path):
    script = write_script(tmp_path / "fails.sh", """#!/bin/sh
echo "fails: model weights missing" >&2
exit 3
""")
    g = gateway([demo_service(bash_file=str(script))], log_repeat_interval=2)
    # two failed starts: the second one begins a back-off
    for _ in range(3):
        r = g.get("/llm/generate")
        assert r.status == 502, r
    starts = g.svc()["starts"]
    r = g.get("/llm/generate")
    t = time.monotonic()
    ra = int(r.header("Retry-After"))
    assert 1 <= ra <= 60, ra
    # before Retry-After has passed, the gateway does not try again ...
    while time.monotonic() < t + ra - 0.5:
        r2 = g.get("/llm/generate")
        assert r2.status == 502 and int(r2.header("Retry-After")) <= ra, r2
        assert g.svc()["starts"] == starts, "a start within the announced back-off"
    # ... and once it has, it does
    assert wait_until(lambda: time.monotonic() >= t + ra + 0.05, ra + 2)
    r3 = g.get("/llm/generate")
    assert r3.status == 502, r3
    assert g.svc()["starts"] == starts + 1, "no start after the announced back-off"
