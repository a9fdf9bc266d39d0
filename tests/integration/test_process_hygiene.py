"""Process hygiene for local services (issue 8, bugs 7 and 8).

The whole process tree of a start script dies with its instance and with
the gateway, also on `kill -9` of the gateway and when the script does not
exec its server (it runs it as a child, backgrounds helpers, double-forks).
A start never serves through a process the gateway did not start, and two
gateways never share one state_dir.

Process trees are found through /proc: each test script exports a marker
variable unique to the test, which every descendant inherits wherever it
goes (a new session, reparented to init)."""
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import (DEMO_SH, SLACK, Gateway, demo_service, gateway_bin, http_request,
                      pid_alive, pids_with_env, port_listening, proc_ppid, proc_start_time,
                      run_check, wait_until, write_script)

MARK = "SG_TEST_TREE"


_marks = []


def new_mark():
    m = f"sg-{uuid.uuid4().hex[:12]}"
    _marks.append(m)
    return m


@pytest.fixture(autouse=True, params=["cgroup", "subreaper"])
def tree_mode(request, monkeypatch):
    """Every test runs with each mechanism: a cgroup per instance where the
    machine allows it, and the fallback (subreaper, process group, marks)."""
    if request.param == "subreaper":
        monkeypatch.setenv("SLURMGATE_NO_CGROUP", "1")
    else:
        monkeypatch.delenv("SLURMGATE_NO_CGROUP", raising=False)
        if not os.access("/sys/fs/cgroup/unified", os.W_OK) and \
                not os.access("/sys/fs/cgroup/cgroup.procs", os.W_OK):
            pytest.skip("no writable cgroup2 here")
    return request.param


def assert_mechanism(g, mode):
    want = "cgroup v2" if mode == "cgroup" else "subreaper"
    assert f"process trees of local services: {want}" in g.log(), g.log()


@pytest.fixture(autouse=True)
def _no_marked_leftovers():
    """Whatever a test asserts, nothing it marked outlives it (a failing
    run on an old build leaves orphans otherwise)."""
    yield
    while _marks:
        m = _marks.pop()
        for p in pids_with_env(MARK, m):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def tree(mark):
    """{pid: start time} of the live processes carrying MARK."""
    return {p: proc_start_time(p) for p in pids_with_env(MARK, mark)}


def still_alive(snapshot):
    """The processes of SNAPSHOT that are still the same live process."""
    return [p for p, st in snapshot.items() if pid_alive(p) and proc_start_time(p) == st]


def marked(mark):
    """Script lines that put MARK into the script's own environment too
    (re-exec through env), so /proc shows it for the script itself."""
    return f"""[ "${MARK}" = {mark} ] || exec env {MARK}={mark} "$0" "$@"
"""


def nonexec_script(path, mark):
    """A start script as users write them: bash, the server runs as a child
    (no exec), something after it."""
    return write_script(path, f"""#!/bin/bash
{marked(mark)}echo "loading the model"
'{DEMO_SH}' "$@"
echo "server exited with $?" >&2
""")


def forking_script(path, mark):
    """Backgrounds a helper, double-forks a daemon into a new session that
    ignores SIGTERM, and runs the server as a child."""
    return write_script(path, f"""#!/bin/bash
{marked(mark)}sleep 300 &
( setsid sh -c 'trap "" TERM; while :; do sleep 0.2; done' & )
'{DEMO_SH}' "$@"
echo "server exited with $?" >&2
""")


def test_kill9_gateway_nonexec_orphan(gateway, tmp_path, tree_mode):
    """Bug 7: kill -9 of the gateway (and of any helper process it has)
    while a non-exec script's server runs. The restarted gateway finds the
    orphan of its earlier run and kills it, then starts and serves through
    its own server."""
    mark = new_mark()
    state = tmp_path / "state"
    svc = demo_service(bash_file=str(nonexec_script(tmp_path / "run.sh", mark)), stop_grace=1)
    g1 = gateway([svc], state_dir=str(state))
    old_pid = g1.service_pid()
    old = tree(mark)
    assert old_pid in old and len(old) >= 2, f"expected script + server, got {old}"
    assert proc_ppid(old_pid) != g1.proc.pid, "the script exec'd its server"

    g1.kill9(helpers=True)

    t0 = time.monotonic()
    g2 = gateway([svc], state_dir=str(state))
    r = g2.get("/llm/pid", timeout=15)
    took = time.monotonic() - t0
    assert r.status == 200, r
    new_pid = r.json()["pid"]
    g2.seen_pids.add(new_pid)
    assert new_pid != old_pid, "the restarted gateway served through the orphan of its earlier run"
    left = still_alive(old)
    assert not left, f"processes of the old tree still alive: {left}"
    assert proc_ppid(new_pid) is not None and new_pid in pids_with_env(MARK, mark)
    assert_mechanism(g2, tree_mode)
    print(f"[{tree_mode}] restart + sweep + first answer from a new server: {took:.3f} s")
    # (stopped here: the first gateway's teardown looks for servers on this port)
    assert g2.terminate() == 0, g2.log()


def test_kill9_gateway_tree_dies_with_it(gateway, tmp_path, tree_mode):
    """Bug 7: kill -9 of the gateway alone: the whole tree of the non-exec
    script dies too, without a restart, and its port is free again."""
    mark = new_mark()
    svc = demo_service(bash_file=str(forking_script(tmp_path / "run.sh", mark)), stop_grace=1)
    g = gateway([svc])
    g.service_pid()
    wait_until(lambda: len(tree(mark)) >= 4, 5 * SLACK, msg="script, server, helper, daemon")
    old = tree(mark)

    t0 = time.monotonic()
    g.kill9()
    wait_until(lambda: not still_alive(old), 5 * SLACK, interval=0.01,
               msg=f"the tree of the killed gateway gone (left: {still_alive(old)})")
    print(f"[{tree_mode}] kill -9 of the gateway -> its {len(old)} processes gone: "
          f"{time.monotonic() - t0:.3f} s")
    assert_mechanism(g, tree_mode)
    wait_until(lambda: not port_listening(svc["local_port"]), 2 * SLACK,
               msg=f"port {svc['local_port']} free")


def test_kill9_of_the_gateways_process_group_kills_the_tree(gateway, tmp_path, tree_mode):
    """kill -9 of the gateway's whole process group (a shell's `kill -9 %1`,
    `timeout -s KILL`, a supervisor): the keeper that kills the service
    trees must not be in that group, or it dies with the gateway and the
    trees, each in a group of its own, live on."""
    mark = new_mark()
    svc = demo_service(bash_file=str(forking_script(tmp_path / "run.sh", mark)), stop_grace=1)
    g = gateway([svc], start=False)
    g.own_session = True
    g.start()
    g.service_pid()
    wait_until(lambda: len(tree(mark)) >= 4, 5 * SLACK, msg="script, server, helper, daemon")
    old = tree(mark)

    g.kill9_group()
    wait_until(lambda: not still_alive(old), 5 * SLACK, interval=0.01,
               msg=f"the tree gone with the gateway's process group (left: {still_alive(old)})")
    wait_until(lambda: not port_listening(svc["local_port"]), 2 * SLACK,
               msg=f"port {svc['local_port']} free")


def test_kill9_gateway_python_server_child(gateway, tmp_path, tree_mode):
    """Bug 7 with the script users write: bash runs `python3 -m http.server`
    as a child, in the background, and waits for it."""
    mark = new_mark()
    www = tmp_path / "www"
    www.mkdir()
    (www / "health").write_text("ok\n")
    script = write_script(tmp_path / "run.sh", f"""#!/bin/bash
{marked(mark)}cd '{www}'
python3 -m http.server "$1" --bind 127.0.0.1 &
wait
""")
    svc = demo_service(bash_file=str(script), stop_grace=1)
    g = gateway([svc])
    r = g.get("/llm/health", timeout=15)
    assert r.status == 200 and r.body == b"ok\n", r
    old = tree(mark)
    assert len(old) >= 2, f"expected bash + python, got {old}"

    g.kill9()
    wait_until(lambda: not still_alive(old), 5 * SLACK, interval=0.01,
               msg=f"bash and python gone with the gateway (left: {still_alive(old)})")
    wait_until(lambda: not port_listening(svc["local_port"]), 2 * SLACK)
    assert_mechanism(g, tree_mode)


def test_instance_stop_kills_tree(gateway, tmp_path, tree_mode):
    """An idle stop takes the whole tree: the backgrounded helper and the
    double-forked daemon in its own session, which ignores SIGTERM (killed
    after stop_grace). The instance counts as stopped only once the tree is
    gone."""
    mark = new_mark()
    svc = demo_service(bash_file=str(forking_script(tmp_path / "run.sh", mark)),
                       timeout=1, stop_grace=1)
    g = gateway([svc])
    g.service_pid()
    wait_until(lambda: len(tree(mark)) >= 4, 5 * SLACK, msg="script, server, helper, daemon")
    old = tree(mark)
    g.wait_state("stopped", timeout=1 + 6)
    left = still_alive(old)
    assert not left, f"the service reads stopped while its processes live: {left}"
    assert not port_listening(svc["local_port"])
    assert "did not stop in time" in g.log() or "SIGKILL" in g.log(), g.log()

    # and it starts again, with a fresh tree
    pid2 = g.service_pid()
    assert pid2 not in old
    assert_mechanism(g, tree_mode)


class _Stranger(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).hits += 1
        body = b'{"pid": 1, "stranger": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_port_in_use_by_stranger(gateway):
    """A process the gateway did not start answers on the service's port:
    the start is refused with a reason naming the port, held requests get
    502 with it, /check_ shows it, and nothing is served through it."""
    svc = demo_service()
    port = svc["local_port"]
    srv = HTTPServer(("127.0.0.1", port), _Stranger)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        g = gateway([svc])
        r = g.get("/llm/pid", timeout=10)
        assert r.status == 502, r
        err = r.json()["error"]
        assert f"port {port} is in use by another process (not started by this gateway)" in err, err
        assert r.header("Retry-After"), dict(r.headers)
        chk = g.get("/check_llm").json()
        assert chk["running"] is False and f"port {port} is in use" in chk["reason"], chk
        assert _Stranger.hits == 0, "a request or probe reached the stranger"
        assert g.svc()["instances"] == [], g.svc()
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)
    # the stranger is gone: the next request starts our own server
    wait_until(lambda: not port_listening(port), 2 * SLACK)
    r = g.get("/llm/pid", timeout=15)
    if r.status == 502:   # a repeated failure backs off a little
        ra = int(r.header("Retry-After") or "1")
        wait_until(lambda: g.get("/llm/pid", timeout=15).status == 200, (ra + 5) * SLACK)
    else:
        assert r.status == 200, r
    g.service_pid()


def test_port_held_but_silent(gateway):
    """A socket that only listens (answers nothing) holds the port too."""
    svc = demo_service()
    port = svc["local_port"]
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4)
    try:
        g = gateway([svc])
        r = g.get("/llm/health", timeout=10)
        assert r.status == 502, r
        assert f"port {port} is in use by another process" in r.json()["error"], r
    finally:
        s.close()


def test_state_dir_lock(gateway, tmp_path):
    """Bug 8: a second gateway on the same state_dir exits 1, naming the
    lock file and the pid holding it; the first one keeps serving. A config
    test (-t) does not take the lock."""
    state = tmp_path / "state"
    g1 = gateway([demo_service()], state_dir=str(state))
    g1.service_pid()

    g2 = Gateway(tmp_path, [demo_service()], name="second", state_dir=str(state))
    with open(g2.log_path, "wb") as log:
        p = subprocess.Popen([str(gateway_bin()), "-c", str(g2.config_path)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             cwd=str(tmp_path))
        try:
            rc = p.wait(5 * SLACK)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
            rc = None
    out = g2.log_path.read_text()
    assert rc == 1, f"second gateway on the same state_dir: exit {rc}\n{out}"
    assert str(state / "lock") in out, out
    assert f"pid {g1.proc.pid}" in out, out
    assert not port_listening(g2.port)

    # the first one is unharmed
    assert g1.get("/llm/health").status == 200
    # a config test does not take (or wait for) the lock
    cp = run_check(g2.config_path)
    assert cp.returncode == 0, cp

    # once the first one is gone, the lock is free
    assert g1.terminate() == 0
    g3 = gateway([demo_service()], state_dir=str(state))
    assert g3.get("/api/health").status == 200


def test_restart_after_clean_exit_reuses_state_dir(gateway, tmp_path):
    """A gateway stopped cleanly leaves nothing that blocks the next one."""
    state = tmp_path / "state"
    mark = new_mark()
    svc = demo_service(bash_file=str(nonexec_script(tmp_path / "run.sh", mark)))
    g1 = gateway([svc], state_dir=str(state))
    g1.service_pid()
    old = tree(mark)
    assert g1.terminate() == 0
    assert not still_alive(old)
    g2 = gateway([svc], state_dir=str(state))
    assert g2.get("/llm/health", timeout=15).status == 200
    assert g2.terminate() == 0, g2.log()
