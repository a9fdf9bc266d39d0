"""Issue 12, problem 5: no access log, even with -v; an admin could not see who
used which service.

"access_log": a file, or "-" for stderr. One line per exchange, combined-style
(nginx's "combined" plus key=value fields), or a JSON object per line with
log_json. The key's name, or a hash prefix, never the key. SIGUSR1 reopens
the file (logrotate)."""
import json
import os
import re
import signal

from conftest import SLACK, demo_service, wait_until

NAMED = "sk-named-0123456789abcdef"
UNNAMED = "sk-unnamed-0123456789abcdef"


def bearer(k):
    return {"Authorization": f"Bearer {k}"}


def keyed(gateway, tmp_path, **top):
    cfg = {"api_keys": [{"key": NAMED, "name": "alice"}, {"key": UNNAMED}]}
    cfg.update(top)
    return gateway([demo_service()], **cfg)


def lines_of(path):
    try:
        return [ln for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []


COMBINED = re.compile(
    r'^(?P<client>\S+) - (?P<key>\S+) \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) (?P<proto>[^"]+)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<ua>[^"]*)" (?P<rest>.*)$')


def fields(line):
    m = COMBINED.match(line)
    assert m, line
    d = m.groupdict()
    d.update(dict(kv.split("=", 1) for kv in d.pop("rest").split()))
    return d


def test_access_log_has_every_field_and_never_the_key(gateway, tmp_path):
    log = tmp_path / "access.log"
    g = keyed(gateway, tmp_path, access_log=str(log))
    r = g.get("/llm/health", headers={**bearer(NAMED), "User-Agent": "pytest-client/1",
                                      "Referer": "http://ref.example/x"})
    assert r.status == 200, r
    r = g.get("/llm/echo?q=1", headers=bearer(UNNAMED))
    assert r.status in (200, 404), r
    r = g.get("/llm/health")   # no key: 401
    assert r.status == 401, r
    r = g.get("/nowhere/x", headers=bearer(NAMED))
    assert r.status == 404, r
    assert wait_until(lambda: len(lines_of(log)) >= 4, 5 * SLACK), lines_of(log)
    text = log.read_text()
    assert NAMED not in text and UNNAMED not in text, text
    assert NAMED not in g.log() and UNNAMED not in g.log()
    ls = [fields(ln) for ln in lines_of(log)]
    cold = next(f for f in ls if f["path"] == "/llm/health" and f["status"] == "200")
    assert cold["client"] == "127.0.0.1", cold
    assert cold["key"] == "alice", cold
    assert cold["method"] == "GET" and cold["proto"] == "HTTP/1.1", cold
    assert cold["service"] == "demo" and cold["instance"] == "0", cold
    assert int(cold["bytes"]) > 0, cold
    assert cold["ua"] == "pytest-client/1" and cold["referer"] == "http://ref.example/x", cold
    assert re.match(r"\d\d/\w\w\w/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}$", cold["time"]), cold
    dur, ttfb, wait = float(cold["duration"]), float(cold["ttfb"]), float(cold["wait"])
    assert 0 < wait <= ttfb <= dur < 30, cold   # a cold start: it waited
    warm = next(f for f in ls if f["path"] == "/llm/echo?q=1")
    assert re.fullmatch(r"key:[0-9a-f]{12}", warm["key"]), warm
    assert warm["wait"] == "-", warm
    anon = next(f for f in ls if f["status"] == "401")
    assert anon["key"] == "-" and anon["service"] == "demo", anon
    nowhere = next(f for f in ls if f["status"] == "404" and f["path"] == "/nowhere/x")
    assert nowhere["service"] == "-" and nowhere["instance"] == "-", nowhere


def test_access_log_json_lines(gateway, tmp_path):
    log = tmp_path / "access.jsonl"
    g = keyed(gateway, tmp_path, access_log=str(log), log_json=True)
    r = g.get("/llm/health", headers=bearer(NAMED))
    assert r.status == 200, r
    assert wait_until(lambda: len(lines_of(log)) >= 1, 5 * SLACK)
    recs = [json.loads(ln) for ln in lines_of(log)]
    rec = next(x for x in recs if x["path"] == "/llm/health")
    for k in ("time", "client", "key", "service", "instance", "method", "path", "status",
              "bytes", "duration", "ttfb", "wait"):
        assert k in rec, (k, rec)
    assert rec["key"] == "alice" and rec["service"] == "demo" and rec["instance"] == 0, rec
    assert rec["status"] == 200 and rec["method"] == "GET" and rec["bytes"] > 0, rec
    assert rec["wait"] > 0 and rec["duration"] >= rec["ttfb"] >= rec["wait"], rec
    assert NAMED not in log.read_text()


def test_access_log_to_stderr(gateway, tmp_path):
    g = gateway([demo_service()], access_log="-")
    assert g.get("/info").status == 200
    assert wait_until(lambda: re.search(r'"GET /info HTTP/1.1" 200 \d+', g.log()), 5 * SLACK), g.log()


def test_access_log_reopened_on_sigusr1_after_rename(gateway, tmp_path):
    log = tmp_path / "access.log"
    g = gateway([demo_service()], access_log=str(log))
    assert g.get("/info?before").status == 200
    assert wait_until(lambda: any("/info?before" in ln for ln in lines_of(log)), 5 * SLACK)
    rotated = tmp_path / "access.log.1"
    os.rename(log, rotated)
    assert g.get("/info?between").status == 200
    # until told, the gateway writes to the file it has open (now the rotated one)
    assert wait_until(lambda: any("/info?between" in ln for ln in lines_of(rotated)), 5 * SLACK)
    before = g.log().count("access_log: reopened")
    g.proc.send_signal(signal.SIGUSR1)
    # a request sent before the signal is handled still goes to the old
    # file: wait for the gateway to say it reopened, then send one
    assert wait_until(lambda: g.log().count("access_log: reopened") > before, 5 * SLACK), g.log()
    assert g.get("/info?after").status == 200
    assert wait_until(lambda: any("/info?after" in ln for ln in lines_of(log)), 5 * SLACK), \
        (lines_of(log), lines_of(rotated))
    assert not any("/info?after" in ln for ln in lines_of(rotated))
    assert "access_log" in g.log() and "reopen" in g.log(), g.log()
    assert g.get("/api/health").status == 200


def test_access_log_follows_a_reload(gateway, tmp_path):
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    g = gateway([demo_service()], access_log=str(first))
    assert g.get("/info?one").status == 200
    cfg = json.loads(g.config_path.read_text())
    cfg["access_log"] = str(second)
    g.config_path.write_text(json.dumps(cfg))
    g.proc.send_signal(signal.SIGHUP)

    def moved():
        g.get("/info?two")
        return any("/info?two" in ln for ln in lines_of(second))
    assert wait_until(moved, 5 * SLACK), g.log()
    assert any("/info?one" in ln for ln in lines_of(first))
    assert not any("/info?one" in ln for ln in lines_of(second))


def raw_exchange(port, data, timeout=10):
    """Send DATA on a fresh connection; what the gateway answers until it closes."""
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLACK)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def test_access_log_has_the_http_layers_own_answers(gateway, tmp_path):
    """The requests the HTTP layer answers itself (bad syntax, a head or
    body too large, too slow) are in the access log too: an admin scanning
    it for abuse (fail2ban) must see them, as nginx logs its 400s and 408s."""
    log = tmp_path / "access.jsonl"
    g = gateway([demo_service()], access_log=str(log), log_json=True, header_timeout=1,
                max_header_size=4096)
    assert raw_exchange(g.port, b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw_exchange(g.port, b"GET /llm/health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 8192
                        + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    assert raw_exchange(g.port, b"GET /llm/slowhead HTTP/1.1\r\nHost: a\r\n").startswith(b"HTTP/1.1 408")
    assert g.get("/info?after").status == 200

    def recs():
        return [json.loads(ln) for ln in lines_of(log)]
    assert wait_until(lambda: any(r["path"] == "/info?after" for r in recs()), 5 * SLACK), lines_of(log)
    got = sorted(r["status"] for r in recs() if r["status"] != 200)
    assert got == [400, 408, 431], lines_of(log)
    for r in recs():
        assert r["client"] == "127.0.0.1" and r["bytes"] >= 0 and r["method"], r
        if r["status"] != 200:
            assert r["service"] is None and r["complete"] is True and r["bytes"] > 0, r
