"""Bad input gets a precise error (and the gateway keeps serving); a bad config
is reported field by field by `slurmgate -t`."""
import json
import socket
import subprocess
import time

import pytest

from conftest import (SLACK, Gateway, demo_service, free_port, gateway_bin, port_listening,
                      raw_exchange, run_check, status_of, write_script)


def still_serves(g):
    r = g.get("/api/health", timeout=5)
    assert r.status == 200, r
    r = g.get("/info", timeout=5)
    assert r.status == 200, r


def json_body(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    return json.loads(body)


# --------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /info HTTP/9.Z\r\n\r\n",
    b"GET /info HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,   # a TLS ClientHello
], ids=["garbage", "no-target", "bad-version", "bad-content-length", "tls"])
def test_malformed_request_gets_400_and_gateway_still_serves(gateway, data):
    g = gateway()
    raw = raw_exchange(g.port, data, timeout=5 * SLACK)
    assert status_of(raw) == 400, raw[:300]
    still_serves(g)
    assert g.svc()["starts"] == 0


@pytest.mark.parametrize("header", [b"Content-Length : 5", b"Transfer-Encoding : chunked"],
                         ids=["content-length", "transfer-encoding"])
def test_whitespace_between_header_name_and_colon_gets_400(gateway, header):
    # RFC 9112 section 5.1: a server MUST reject this with 400; forwarding it
    # lets the gateway and the service frame the body differently (smuggling).
    g = gateway()
    g.service_pid()
    body = b"5\r\nhello\r\n0\r\n\r\n" if b"Transfer" in header else b"hello"
    data = (b"POST /llm/echo HTTP/1.1\r\nHost: a\r\n" + header + b"\r\n"
            b"Connection: close\r\n\r\n" + body)
    raw = raw_exchange(g.port, data, timeout=5 * SLACK)
    assert status_of(raw) == 400, raw[:400]
    assert b"application/json" in raw.split(b"\r\n\r\n")[0].lower(), \
        f"the 400 must come from the gateway, not the service: {raw[:400]!r}"
    still_serves(g)


@pytest.mark.parametrize("lines", [
    b"Bad Header Name: x\r\n",            # not a token
    b" X-Leading-Space: x\r\n",           # whitespace line right after the request line
], ids=["space-in-name", "leading-whitespace-line"])
def test_invalid_header_line_is_refused_or_dropped_not_forwarded(gateway, lines):
    g = gateway()
    g.service_pid()
    data = b"GET /llm/echo HTTP/1.1\r\n" + lines + b"Host: a\r\nConnection: close\r\n\r\n"
    raw = raw_exchange(g.port, data, timeout=5 * SLACK)
    head, _, body = raw.partition(b"\r\n\r\n")
    if status_of(raw) == 400:
        assert b"application/json" in head.lower(), \
            f"the 400 must come from the gateway, not the service: {raw[:400]!r}"
    else:
        assert status_of(raw) == 200, raw[:400]
        names = [k.lower() for k, v in json.loads(body)["header_list"]]
        assert not any("header name" in n or "leading" in n for n in names), \
            f"an invalid header line reached the service: {names}"
    still_serves(g)


def test_unknown_route_gets_404_json(gateway):
    g = gateway()
    raw = raw_exchange(g.port, b"GET /nope/x?y=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 404, raw[:300]
    assert b"application/json" in raw.split(b"\r\n\r\n")[0].lower()
    assert "error" in json_body(raw)
    r = g.get("/nope")
    assert r.status == 404 and "error" in r.json()
    still_serves(g)


def test_oversized_headers_get_431(gateway):
    g = gateway(max_header_size=2048)
    data = (b"GET /llm/health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
    raw = raw_exchange(g.port, data, timeout=5 * SLACK)
    assert status_of(raw) == 431, raw[:300]
    # many small headers add up too
    data = b"GET /llm/health HTTP/1.1\r\nHost: a\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(100)) + b"\r\n"
    raw = raw_exchange(g.port, data, timeout=5 * SLACK)
    assert status_of(raw) == 431, raw[:300]
    still_serves(g)
    assert g.svc()["starts"] == 0, "a refused request must not start the service"


def test_body_over_max_body_size_gets_413(gateway):
    g = gateway(max_body_size=1000)
    data = (b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
    raw = raw_exchange(g.port, data, timeout=5 * SLACK)
    assert status_of(raw) == 413, raw[:300]
    assert g.svc()["starts"] == 0, "a refused request must not start the service"
    # within the limit is fine
    r = g.post("/llm/echo", body=b"y" * 1000)
    assert r.status == 200, r
    assert r.json()["body_length"] == 1000
    g.record_pids()
    still_serves(g)


def test_chunked_body_over_max_body_size_gets_413(gateway):
    g = gateway(max_body_size=1000)
    chunk = b"x" * 600
    data = (b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 3 + b"0\r\n\r\n")
    raw = raw_exchange(g.port, data, timeout=8 * SLACK)
    assert status_of(raw) == 413, raw[:300]
    g.record_pids()
    still_serves(g)


def test_body_over_max_body_size_to_a_running_service_gets_413(gateway):
    g = gateway(max_body_size=1000)
    g.service_pid()
    chunk = b"x" * 600
    data = (b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 3 + b"0\r\n\r\n")
    raw = raw_exchange(g.port, data, timeout=8 * SLACK)
    assert status_of(raw) == 413, raw[:300]
    still_serves(g)
    assert g.get("/llm/health").status == 200


def test_slow_client_is_timed_out(gateway):
    g = gateway(header_timeout=1)
    s = socket.create_connection(("127.0.0.1", g.port), timeout=6 * SLACK)
    try:
        s.sendall(b"GET /info HTTP/1.1\r\nHost: a\r\n")   # never finishes the head
        t0 = time.monotonic()
        got = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        took = time.monotonic() - t0
    finally:
        s.close()
    assert 0.8 <= took <= 4 * SLACK, f"closed after {took:.2f} s with header_timeout 1"
    assert got == b"" or status_of(got) == 408, got[:300]
    still_serves(g)


def test_idle_connection_without_any_request_is_closed(gateway):
    g = gateway(header_timeout=1, keepalive_timeout=1)
    s = socket.create_connection(("127.0.0.1", g.port), timeout=6 * SLACK)
    try:
        t0 = time.monotonic()
        try:
            got = s.recv(4096)
        except ConnectionResetError:
            got = b""
        took = time.monotonic() - t0
    finally:
        s.close()
    assert took <= 4 * SLACK, took
    assert got == b"" or status_of(got) == 408, got


def test_conflicting_content_length_and_transfer_encoding_get_400(gateway):
    g = gateway()
    data = (b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    raw = raw_exchange(g.port, data, timeout=5 * SLACK)
    assert status_of(raw) == 400, raw[:300]
    # and the connection is closed: nothing after the 400 is taken as a request
    assert raw.count(b"HTTP/1.") == 1, raw
    assert g.svc()["starts"] == 0
    still_serves(g)


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
], ids=["two-content-lengths", "unknown-coding", "two-transfer-encodings"])
def test_ambiguous_framing_gets_400(gateway, headers):
    g = gateway()
    data = b"POST /llm/echo HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\nhello\r\n"
    raw = raw_exchange(g.port, data, timeout=5 * SLACK)
    assert status_of(raw) == 400, raw[:300]
    assert g.svc()["starts"] == 0
    still_serves(g)


def test_gateway_survives_a_burst_of_bad_clients(gateway):
    g = gateway(max_header_size=2048, max_body_size=1000)
    bad = [
        b"GARBAGE\r\n\r\n",
        b"GET /info HTTP/1.1\r\nX: " + b"a" * 5000 + b"\r\n\r\n",
        b"POST /llm/echo HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /info HTTP/1.1\r\n",          # then the client goes away
        b"",                                 # connect, close
    ]
    socks = []
    for _ in range(10):
        for data in bad:
            s = socket.create_connection(("127.0.0.1", g.port), timeout=2 * SLACK)
            if data:
                s.sendall(data)
            socks.append(s)
    # half of them go away at once, the rest after the gateway has seen them
    for s in socks[::2]:
        s.close()
    still_serves(g)
    for s in socks[1::2]:
        s.close()
    still_serves(g)


# --------------------------------------------------------------------------
# config errors (-t)
# --------------------------------------------------------------------------

def check(tmp_path, cfg, name="cfg.json"):
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg, indent=2))
    p = run_check(path)
    return p, p.stdout + p.stderr, str(path)


def test_valid_config_passes_the_check(tmp_path):
    p, out, path = check(tmp_path, {"Services": [demo_service()]})
    assert p.returncode == 0, out


def test_unknown_keys_are_named(tmp_path):
    svc = demo_service()
    svc["bogus_key"] = 1
    p, out, path = check(tmp_path, {"Services": [svc], "extra_top": True})
    assert p.returncode == 1, out
    assert "Services[0].bogus_key" in out, out
    assert "extra_top" in out, out
    assert "unknown" in out.lower()


@pytest.mark.parametrize("value", [0, -5, "abc", 1.5, None, True])
def test_bad_timeout_is_reported_with_the_field(tmp_path, value):
    p, out, path = check(tmp_path, {"Services": [demo_service(timeout=value)]})
    assert p.returncode == 1, out
    assert f"{path}: Services[0].timeout: must be a positive integer" in out, out


def test_every_error_is_reported_in_one_run(tmp_path):
    a = demo_service(timeout=0)
    b = demo_service(name="b", route="r2", launcher="ssh")
    del b["bash_file"]
    cfg = {"Services": [a, b], "max_body_size": -1, "listen": "nonsense"}
    p, out, path = check(tmp_path, cfg)
    assert p.returncode == 1, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    for needle in ("Services[0].timeout", "Services[1].launcher", "Services[1].bash_file",
                   "max_body_size", "listen"):
        assert any(needle in ln for ln in lines), (needle, out)
    assert len(lines) >= 5, out
    # one line per error, each naming the file
    assert all(ln.startswith(path) for ln in lines), out


def test_invalid_json_is_reported_with_its_line_number(tmp_path):
    text = '{\n  "Services": [\n    {"name": "x",,}\n  ]\n}\n'
    p, out, path = check(tmp_path, text)
    assert p.returncode == 1, out
    assert f"{path}:3:" in out, out


def test_duplicate_route_and_bad_port_are_reported(tmp_path):
    a = demo_service()
    b = demo_service(name="b", route="llm")
    c = demo_service(name="c", route="c", remote_port=70000, local_port=70000)
    p, out, path = check(tmp_path, {"Services": [a, b, c]})
    assert p.returncode == 1, out
    assert "Services[1].route_name" in out, out
    assert "Services[2].remote_port" in out or "Services[2].local_port" in out, out


def test_relative_bash_file_resolves_against_the_config_folder(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    write_script(sub / "start.sh", "#!/bin/sh\nexit 0\n")
    p, out, _ = check(sub, {"Services": [demo_service(bash_file="start.sh")]})
    assert p.returncode == 0, out
    p, out, _ = check(sub, {"Services": [demo_service(bash_file="missing.sh")]}, name="b.json")
    assert p.returncode == 1, out
    assert "Services[0].bash_file" in out, out


def test_gateway_refuses_to_start_with_a_bad_config(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"Services": [demo_service(timeout=0)]}))
    p = subprocess.run([str(gateway_bin()), "-c", str(path)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=10)
    assert p.returncode != 0
    assert "Services[0].timeout" in p.stdout + p.stderr


def test_help_and_version(tmp_path):
    p = subprocess.run([str(gateway_bin()), "--help"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=10)
    assert p.returncode == 0 and "-c" in p.stdout, p
    p = subprocess.run([str(gateway_bin()), "--version"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=10)
    assert p.returncode == 0 and p.stdout.startswith("slurmgate "), p


def test_listen_option_overrides_the_config(tmp_path):
    real = free_port()
    g = Gateway(tmp_path, [demo_service()], args=["-l", f"127.0.0.1:{real}"])
    config_port = g.port
    g.port = real
    try:
        g.start()
        assert g.get("/api/health").status == 200
        assert not port_listening(config_port), "still listening on the config's port"
    finally:
        g.close()


def test_unknown_api_paths_get_404_json(gateway):
    g = gateway()
    for method, path in (("GET", "/api/services/nope"), ("POST", "/api/services/nope/start"),
                         ("GET", "/api/nothing"), ("POST", "/api/services/demo/explode")):
        r = g.request(method, path)
        assert r.status == 404, (path, r)
        assert "error" in r.json()
    assert g.svc()["starts"] == 0


# issue 12, problem 4: -t passed what the start then refused or what breaks every start

def test_check_and_start_agree_on_a_host_name_in_listen(tmp_path):
    port = free_port()
    p, out, path = check(tmp_path, {"Services": [demo_service()], "listen": f"localhost:{port}"})
    assert p.returncode == 0, out
    g = Gateway(tmp_path, [demo_service()], name="lh", listen=f"localhost:{port}")
    try:
        g.port = port
        g.start()
        assert g.get("/info").status == 200
    finally:
        g.close()


def test_check_fails_on_listen_port_zero(tmp_path):
    p, out, path = check(tmp_path, {"Services": [demo_service()], "listen": "127.0.0.1:0"})
    assert p.returncode == 1, out
    assert f"{path}: $.listen: port must be 1-65535, got 0" in out, out


def test_check_fails_on_a_directory_as_bash_file(tmp_path):
    p, out, path = check(tmp_path, {"Services": [demo_service(bash_file=str(tmp_path))]})
    assert p.returncode == 1, out
    assert "Services[0].bash_file" in out and "is a directory" in out, out


def test_check_fails_on_a_missing_ssh_key_file(tmp_path):
    svc = {"name": "s", "route_name": "s", "bash_file": "/remote/run.sh", "remote_port": 9999,
           "remote_host": "login1", "ssh_key_file": str(tmp_path / "no_key")}
    p, out, path = check(tmp_path, {"Services": [svc]})
    assert p.returncode == 1, out
    assert f"{path}: Services[0].ssh_key_file: {tmp_path / 'no_key'}: No such file" in out, out


def test_check_says_the_type_of_a_wrong_port(tmp_path):
    p, out, path = check(tmp_path, {"Services": [demo_service(remote_port="8083", local_port="8083")]})
    assert p.returncode == 1, out
    assert 'Services[0].remote_port: must be a port number, an integer 1-65535, got string "8083"' \
        in out, out
    assert "required" not in out, out


def test_check_suggests_the_key_meant(tmp_path):
    svc = demo_service()
    svc["tiemout"] = svc.pop("timeout", 5)
    p, out, path = check(tmp_path, {"Services": [svc], "max_body_sise": 5})
    assert p.returncode == 1, out
    assert 'Services[0].tiemout: unknown key (did you mean "timeout"?)' in out, out
    assert '$.max_body_sise: unknown key (did you mean "max_body_size"?)' in out, out
