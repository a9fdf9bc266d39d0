"""Local start scripts as users write them, at their worst: each test is
named after the bug it found."""
import time
import uuid

import pytest

from conftest import (DEMO_BIN, DEMO_SH, SLACK, demo_service, free_port, pids_with_env, wait_until,
                      write_script)


def test_stderr_flood_starves_the_event_loop(gateway, tmp_path):
    """A service that writes its output as fast as it can (a debug log, a
    progress bar without newlines) must not take the gateway with it: the
    reader of its pipe gives the loop back after a bounded slice, and the
    writer waits (the pipe's backpressure)."""
    script = write_script(tmp_path / "chatty.sh", f"""#!/bin/sh
cat /dev/zero >&2 &
exec '{DEMO_SH}' "$@"
""")
    g = gateway([demo_service(bash_file=str(script))])
    r = g.get("/llm/health", timeout=20)
    assert r.status == 200, r
    worst = 0.0
    t_end = time.monotonic() + 3
    n = 0
    while time.monotonic() < t_end:
        r = g.get("/api/health", timeout=20)
        assert r.status == 200, r
        worst = max(worst, r.elapsed)
        n += 1
    print(f"{n} requests, worst {worst * 1000:.0f} ms")
    assert worst < 0.5 * SLACK, f"the gateway's own endpoint took {worst:.2f} s during the flood"
    r = g.get("/llm/pid", timeout=20)
    assert r.status == 200, r


def test_health_check_that_trickles_is_never_bounded(gateway, tmp_path):
    """A health path that answers 200 and then never ends its body (it
    streams, or the server is wedged mid-answer, a byte now and then): a
    probe is bounded as a whole (10 s: connect and answer 5 s each), not
    only between bytes, and the
    reason says what happened instead of "waiting for ... to answer"."""
    seen = tmp_path / "health.log"
    script = write_script(tmp_path / "trickle.py", f"""#!/usr/bin/env python3
import socket, sys, threading, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(16)
def serve(c):
    t0 = time.monotonic()
    c.recv(4096)
    try:
        c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 1000\\r\\n\\r\\n")
        while True:
            time.sleep(0.5)
            c.sendall(b".")
    except OSError:
        pass
    with open({str(seen)!r}, "a") as f:
        f.write(f"{{time.monotonic() - t0:.2f}}\\n")
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
""")
    g = gateway([demo_service(bash_file=str(script), start_timeout=12)])
    r = g.get("/llm/health", timeout=30)
    assert r.status == 502, r
    err = r.json()["error"]
    assert "did not finish within 10 s" in err, err
    durations = [float(x) for x in seen.read_text().split()] if seen.exists() else []
    assert durations and max(durations) < 10 + 1.5 * SLACK, durations


@pytest.mark.parametrize("mode", ["cgroup", "subreaper"])
def test_daemonizing_script_exit_0_reason_is_unclear(gateway, tmp_path, mode):
    """The sysadmin's start script: the server daemonized (setsid + nohup,
    its own session, output to a file) and `exit 0`. The gateway owns the
    service's life through the script, so the start fails: the daemon must
    not survive it (neither tree mechanism may lose it), and the reason must
    say what to change, not only "exited with status 0" (which its author
    meant as success)."""
    mark = f"sg-daemon-{uuid.uuid4().hex[:10]}"
    script = write_script(tmp_path / "daemon.sh", f"""#!/bin/sh
export SG_TEST_DAEMON={mark}
setsid nohup '{DEMO_BIN}' --port "$1" >'{tmp_path}/daemon.out' 2>&1 </dev/null &
echo "server started in the background"
exit 0
""")
    env = {"SLURMGATE_NO_CGROUP": "1"} if mode == "subreaper" else {}
    g = gateway([demo_service(bash_file=str(script))], env=env)
    r = g.get("/llm/health", timeout=20)
    assert r.status == 502, r
    err = r.json()["error"]
    assert "exited with status 0" in err and "server started in the background" in err, err
    assert "must keep running" in err, err
    wait_until(lambda: not pids_with_env("SG_TEST_DAEMON", mark), 5 * SLACK,
               msg="the daemonized server to be killed with its instance")


@pytest.mark.parametrize("mode", ["cgroup", "subreaper"])
def test_service_on_another_port_fails_with_no_reason(gateway, tmp_path, mode):
    """A start script that ignores its port ($1, PORT) and starts the server
    on its own default: the health check is refused until start_timeout
    (900 s by default), and then said only "waiting for ... to answer".
    The gateway sees where the service's processes listen and says so,
    while it waits and in the failure."""
    other = free_port()
    script = write_script(tmp_path / "ownport.sh", f"""#!/bin/sh
exec '{DEMO_BIN}' --port {other}
""")
    svc = demo_service(bash_file=str(script), start_timeout=4)
    g = gateway([svc], env={"SLURMGATE_NO_CGROUP": "1"} if mode == "subreaper" else {})
    r = g.get("/llm/health", timeout=20)
    assert r.status == 502, r
    err = r.json()["error"]
    assert f"listen on port {other}, not {svc['remote_port']}" in err, err
