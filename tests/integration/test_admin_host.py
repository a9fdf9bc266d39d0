"""Trouble on the gateway's host, as an admin meets it: the gateway runs out
of file descriptors (a low RLIMIT_NOFILE, many clients). A connection it
cannot open to a service is its own shortage, not the service's: the
request gets a clear 503, and the instance stays in rotation (it is not
marked unhealthy, probed, or at length stopped: a model that took minutes
to load must not be restarted for the gateway's own limit).

A signal that comes while the gateway starts (a reload, logrotate's
SIGUSR1, a stop) is handled once it is up, never fatal."""
import http.client
import json
import os
import re
import resource
import signal
import socket
import subprocess
import time

import pytest

from conftest import SLACK, demo_service, gateway_bin, port_listening, wait_until


def start_with_nofile(g, monkeypatch, n):
    """Start G with RLIMIT_NOFILE n (the hard limit too: it cannot raise it)."""
    real = subprocess.Popen

    def popen(*a, **kw):
        kw["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        return real(*a, **kw)

    monkeypatch.setattr(subprocess, "Popen", popen)
    try:
        g.start()
    finally:
        monkeypatch.undo()


def test_out_of_descriptors_does_not_mark_a_healthy_instance_unhealthy(gateway, monkeypatch):
    # Whether the gateway has a descriptor free at the moment the second
    # request needs one depends on its probes and its accept retries (a
    # probe's connection closed frees one until the next accept takes it):
    # a try where it had one answers 200 and shows nothing; it is tried
    # again with a new gateway, a few times.
    for _ in range(4):
        if out_of_descriptors_try(gateway, monkeypatch):
            return
    pytest.fail("the gateway never ran out of descriptors at the request in 4 tries")


def out_of_descriptors_try(gateway, monkeypatch):
    g = gateway([demo_service(start_timeout=2, health_interval=1)], start=False)
    start_with_nofile(g, monkeypatch, 64)
    assert g.get("/llm/health").status == 200
    assert g.state() == "ready"
    clients = []
    try:
        # many clients: every descriptor of the gateway is taken
        for _ in range(120):
            clients.append(socket.create_connection(("127.0.0.1", g.port), timeout=2))
        # twice: the accept after the first pause takes what was freed
        # meanwhile (the connections of the requests above, a probe's)
        wait_until(lambda: g.log().count("accept: Too many open files") >= 2, 5 * SLACK,
                   msg="the gateway to run out of descriptors")
        # a stream holds the one pooled upstream connection (3 s: longer
        # than start_timeout, after which an unhealthy instance is stopped)
        stream = clients[0].makefile("rb")
        clients[0].settimeout(10 * SLACK)
        clients[0].sendall(b"GET /llm/stream?n=30&ms=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert stream.readline().startswith(b"HTTP/1.1 200")
        # the next request needs a new upstream connection: none can be opened
        clients[1].settimeout(10 * SLACK)
        clients[1].sendall(b"GET /llm/health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = clients[1].recv(4096)
        if head.startswith(b"HTTP/1.1 200"):
            return False   # a descriptor was free just then: try again
        assert head.startswith(b"HTTP/1.1 503"), head
        assert b"out of file descriptors" in head, head
        body = b""
        while b"data: 29" not in body:
            chunk = stream.read1(4096)
            assert chunk, f"the stream was cut: {body[-200:]!r}"
            body += chunk
    finally:
        for c in clients:
            c.close()
    assert g.get("/llm/health").status == 200
    assert g.state() == "ready"
    log = g.log(tail=10 ** 8)
    assert "ready -> unhealthy" not in log, log
    return True


def reading(pid, path):
    """Has process PID the file PATH open (found through /proc)?"""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            pass
    return False


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM])
def test_signal_while_the_gateway_starts_is_handled_not_fatal(gateway, sig):
    """A reload (SIGHUP: config management's handler right after a start),
    logrotate's SIGUSR1 or a stop that arrives while the gateway still reads
    its config (a big one takes tens of ms) must not kill it with the
    signal's default action: it is held until the handlers are in place,
    then handled. The config is a FIFO here: the signal comes while the
    gateway waits to read it."""
    g = gateway(start=False)
    text = g.config_path.read_text()
    g.config_path.unlink()
    os.mkfifo(g.config_path)
    # a writer holds it open: the gateway's open does not block, its read does
    wfd = os.open(g.config_path, os.O_RDWR)
    try:
        g._log = open(g.log_path, "wb")
        g.proc = subprocess.Popen([str(gateway_bin()), "-c", str(g.config_path)],
                                  stdin=subprocess.DEVNULL, stdout=g._log,
                                  stderr=subprocess.STDOUT, cwd=str(g.dir))
        wait_until(lambda: reading(g.proc.pid, g.config_path), 10 * SLACK,
                   msg="the gateway to read its config")
        # every later read (the config itself, the reload) finds a plain file
        tmp = g.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, g.config_path)
        g.proc.send_signal(sig)
        os.write(wfd, text.encode())
    finally:
        os.close(wfd)
    if sig == signal.SIGTERM:
        assert g.proc.wait(10 * SLACK) == 0, g.log()
        return
    wait_until(lambda: g.proc.poll() is not None or port_listening(g.port), 10 * SLACK,
               msg="the gateway to listen")
    assert g.proc.poll() is None, f"killed by signal {sig}: exit {g.proc.returncode}\n{g.log()}"
    assert g.get("/api/health").status == 200
    if sig == signal.SIGHUP:
        wait_until(lambda: "config reloaded" in g.log(), 5 * SLACK, msg="the reload done")


def test_closed_stderr_does_not_send_the_log_into_the_state_dir_lock(gateway):
    """Started with stderr closed (`slurmgate ... 2>&-`, some init scripts and
    supervisors): the first file the gateway opens, its state_dir lock,
    became descriptor 2, and every log line went into the lock file (over
    the pid it records, growing without end)."""
    g = gateway(start=False)
    g._log = open(g.log_path, "wb")
    g.proc = subprocess.Popen(["/bin/sh", "-c", 'exec "$0" -c "$1" 2>&-', str(gateway_bin()),
                               str(g.config_path)],
                              stdin=subprocess.DEVNULL, stdout=g._log, cwd=str(g.dir))
    wait_until(lambda: port_listening(g.port), 10 * SLACK, msg="the gateway to listen")
    assert g.get("/llm/health").status == 200
    lock = (g.dir / "gw0-state" / "lock").read_text()
    assert lock == f"{g.proc.pid}\n", lock[:500]


@pytest.mark.parametrize("kind", ["pipe", "socket", "pipe-json"])
def test_log_nobody_reads_does_not_stall_the_gateway(gateway, kind):
    """stderr is a pipe (`slurmgate ... | logger`, a supervisor's pipe) or a
    stream socket (journald's), and its reader stops reading: hung, busy,
    stopped. Once the pipe or the socket buffer was full, every log line
    blocked the gateway, and with it every request. The lines now wait in a
    bounded backlog, those beyond it are counted, and the count is logged
    when the reader reads again."""
    js = kind.endswith("-json")
    g = gateway(access_log="-", start=False, **({"log_json": True} if js else {}))
    if kind.startswith("pipe"):
        rfd, wfd = os.pipe()
        reader = os.fdopen(rfd, "rb", buffering=0)
    else:
        rs, ws = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ws.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        rs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        wfd = os.dup(ws.fileno())
        ws.close()
        reader = rs
    g._log = open(g.log_path, "wb")
    try:
        g.proc = subprocess.Popen([str(gateway_bin()), "-c", str(g.config_path)],
                                  stdin=subprocess.DEVNULL, stdout=g._log, stderr=wfd,
                                  cwd=str(g.dir))
    finally:
        os.close(wfd)
    try:
        wait_until(lambda: port_listening(g.port), 10 * SLACK, msg="the gateway to listen")
        # an access-log line each: 3000 are some 400 KB, far more than the
        # pipe (64 KiB) or the socket's buffer holds
        conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5 * SLACK)
        for i in range(3000):
            conn.request("GET", "/info")
            r = conn.getresponse()
            r.read()
            assert r.status == 200, (i, r.status)
        conn.close()
        # the reader is back: the backlog, then the count of the lines lost
        got = b""
        os.set_blocking(reader.fileno(), False)

        def counted():
            nonlocal got
            try:
                while True:
                    chunk = os.read(reader.fileno(), 65536)
                    if not chunk:
                        break
                    got += chunk
            except BlockingIOError:
                pass
            if js:
                return re.search(rb'"level":"warn","msg":"(\d+) log lines dropped: '
                                 rb'stderr was not being read"', got)
            return re.search(rb"warn  (\d+) log lines dropped: stderr was not being read", got)

        m = wait_until(counted, 10 * SLACK, msg="the count of the dropped lines")
        lines = [ln for ln in got.split(b"\n") if b'"GET /info' in ln or b'"/info"' in ln]
        assert 0 < len(lines) < 3000 and len(lines) + int(m.group(1)) <= 3000, (len(lines), m[0])
        # whole lines only: none cut short by the backlog
        if js:
            assert all(json.loads(ln)["path"] == "/info" for ln in lines)
        else:
            whole = re.compile(rb'127\.0\.0\.1 - - \[[^]]+\] "GET /info HTTP/1\.1" 200 .* complete=yes')
            assert all(whole.fullmatch(ln) for ln in lines), \
                [ln for ln in lines if not whole.fullmatch(ln)][:3]
        # and the log goes on
        assert g.get("/info").status == 200
        wait_until(lambda: counted() is not None and
                   got.count(b'"/info"' if js else b'"GET /info') > len(lines),
                   5 * SLACK, msg="a new line after the reader came back")
    finally:
        reader.close()
