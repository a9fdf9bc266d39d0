"""--log-json, or "log_json": true in the config: every line slurmgate writes
to stderr is one JSON object with "ts", "level" and "msg"."""
import json
import re
import signal
import subprocess

from conftest import SLACK, demo_service, gateway_bin, wait_until, write_script

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)$")
LEVELS = {"debug", "info", "warn", "warning", "error", "fatal"}


def json_lines(text):
    """Every line must be one JSON object with ts, level, msg; returns them."""
    assert text.endswith("\n"), f"the log does not end with a newline: {text[-200:]!r}"
    out = []
    for no, line in enumerate(text.split("\n")[:-1], 1):
        try:
            o = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {no} is not JSON: {line!r}") from None
        assert isinstance(o, dict), f"line {no} is not an object: {line!r}"
        for k in ("ts", "level", "msg"):
            assert k in o, f"line {no} lacks {k!r}: {line!r}"
        assert isinstance(o["ts"], str) and TS_RE.match(o["ts"]), f"line {no}: bad ts {o['ts']!r}"
        assert o["level"] in LEVELS, f"line {no}: bad level {o['level']!r}"
        assert isinstance(o["msg"], str) and o["msg"], f"line {no}: bad msg {o['msg']!r}"
        out.append(o)
    return out


def full_log(g):
    return g.log_path.read_text(encoding="utf-8", errors="strict")


def stop(g):
    rc = g.terminate()
    assert rc == 0, f"exit code {rc}:\n{g.log()}"


def traffic(g, tmp_path):
    """Work that makes the gateway log at every level."""
    assert g.get("/llm/health").status == 200                       # a start: info
    assert g.get("/broken/x").status == 502                         # a failed start: warn
    assert g.get("/nothing").status == 404
    assert g.post("/v1/chat/completions", {"model": "demo", "messages": []}).status == 200
    # a reload with a bad file: error lines, one with quotes and a newline in a key
    cfg = dict(g.config)
    cfg['bad"key\nwith newline'] = 1
    cfg["Services"] = [dict(s, timeout=-1) for s in g.services]
    before = g.log_path.read_text().count("keeping the running one")
    g.config_path.write_text(json.dumps(cfg))
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: g.log_path.read_text().count("keeping the running one") > before,
               5 * SLACK, msg="the failed reload to be logged")
    # and a good reload
    g.config_path.write_text(json.dumps(g.config))
    g.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "config reloaded" in g.log_path.read_text(), 5 * SLACK)


def services(tmp_path):
    bad = write_script(tmp_path / "bad.sh", '#!/bin/sh\necho "model file missing" >&2\nexit 3\n')
    return [demo_service(name="demo", route="llm"),
            demo_service(name="broken", route="broken", bash_file=str(bad))]


def check_levels_and_messages(lines):
    levels = {o["level"] for o in lines}
    assert {"info", "error"} <= levels, levels
    assert levels & {"warn", "warning"}, levels
    msgs = [o["msg"] for o in lines]
    assert any("listening on" in m for m in msgs), msgs
    assert any("start failed" in m and "model file missing" in m for m in msgs), msgs
    errs = [o["msg"] for o in lines if o["level"] == "error"]
    assert any("Services[0].timeout" in m for m in errs), errs
    assert any("bad" in m and "key" in m and "unknown key" in m for m in errs), errs
    assert any("keeping the running one" in m for m in errs), errs
    assert any("config reloaded" in m for m in msgs), msgs
    assert any("signal 15" in m or "shutting down" in m for m in msgs), msgs


def test_log_json_flag_makes_every_line_json(gateway, tmp_path):
    g = gateway(services(tmp_path), args=["--log-json"])
    traffic(g, tmp_path)
    stop(g)
    lines = json_lines(full_log(g))
    assert len(lines) >= 10, lines
    check_levels_and_messages(lines)


def test_log_json_in_the_config_with_verbose_logging(gateway, tmp_path):
    g = gateway(services(tmp_path), args=["-v"], log_json=True)
    traffic(g, tmp_path)
    stop(g)
    lines = json_lines(full_log(g))
    check_levels_and_messages(lines)
    # debug lines too, e.g. the service's own stderr, quoted
    assert any(o["level"] == "debug" for o in lines), {o["level"] for o in lines}


def test_without_log_json_lines_are_text(gateway, tmp_path):
    g = gateway(services(tmp_path))
    assert g.get("/llm/health").status == 200
    stop(g)
    first = full_log(g).split("\n")[0]
    assert not first.startswith("{"), first


def test_warnings_while_loading_the_config_are_json_too(gateway, tmp_path):
    """The "readable by others" warning comes while the config loads: with
    "log_json": true in that config it must be a JSON line as well."""
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": "sk-0123456789abc"}]))
    keys.chmod(0o644)
    g = gateway(services(tmp_path), log_json=True, api_keys_file=str(keys))
    stop(g)
    lines = json_lines(full_log(g))
    assert any("readable by others" in o["msg"] and o["level"] in ("warn", "warning")
               for o in lines), lines


def test_messages_with_bytes_that_are_not_utf8_are_not_lost(gateway, tmp_path):
    """A start script's stderr is quoted in log lines; bytes that are not
    UTF-8 must still give a JSON line (escaped), not a lost one."""
    weird = write_script(tmp_path / "weird.sh",
                         '#!/bin/sh\nprintf "weird \\377\\376 bytes\\n" >&2\nexit 3\n')
    g = gateway([demo_service(name="demo", route="llm", bash_file=str(weird))],
                args=["--log-json", "-v"])
    # started through the API: no request waits for it
    r = g.post("/api/services/demo/start")
    assert r.status == 202, r
    # wait through /metrics (plain text, no JSON state with the reason in it)
    wait_until(lambda: 'slurmgate_start_failures_total{service="demo",reason="script_exited"} 1'
               in g.get("/metrics").text, 5 * SLACK, msg="the start failure")
    stop(g)
    lines = json_lines(full_log(g))
    fails = [o for o in lines if "start failed" in o["msg"]]
    assert fails, f"the start failure was not logged: {[o['msg'] for o in lines]}"
    assert "weird" in fails[0]["msg"], fails


def test_config_errors_at_start_are_json_lines_with_log_json(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"listen": "127.0.0.1:1", "Services": [{"name": "x"}]}))
    cp = subprocess.run([str(gateway_bin()), "--log-json", "-c", str(cfg)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, timeout=10)
    assert cp.returncode == 1, cp
    lines = json_lines(cp.stderr)
    assert any("route_name" in o["msg"] for o in lines), lines
    assert all(o["level"] == "error" for o in lines), lines
