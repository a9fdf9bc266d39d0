"""Attackers against a gateway that an HPC site exposes to many users: what
the security tests elsewhere (test_access_control.py, test_security_routing.py,
test_api_keys.py, test_admin_auth.py) do not cover. Each test is named
after a hole that was found open and closed."""

import os
import pwd
import subprocess
import threading

import pytest

from conftest import DEMO_SH, SLACK, demo_service, gateway_bin, wait_until, write_script

ADMIN = "admin-secret-token-42"
KEY = "sk-attacker-test-0123456789"


def test_config_file_with_inline_secrets_readable_by_others_draws_a_warning(gateway):
    """admin_token_file and api_keys_file readable by others drew a warning,
    the config file holding the same secrets inline did not: a config left
    world-readable (umask 022, the usual) gave every local user the admin
    token and every api key, silently."""
    g = gateway([demo_service()], start=False, admin_token=ADMIN,
                api_keys=[{"key": KEY}])
    g.config_path.chmod(0o644)
    g.start()
    warned = [l for l in g.log().splitlines() if "readable by others" in l]
    assert any(str(g.config_path) in l and "admin_token" in l for l in warned), g.log()
    # a warning, not a refusal
    assert g.get("/api/services/demo", headers={"Authorization": f"Bearer {KEY}"}).status == 200

    # private, or without inline secrets: no warning
    quiet = gateway([demo_service()], start=False, admin_token=ADMIN, api_keys=[{"key": KEY}])
    quiet.config_path.chmod(0o600)
    quiet.start()
    plain = gateway([demo_service()], start=False)
    plain.config_path.chmod(0o644)
    plain.start()
    for q in (quiet, plain):
        assert "readable by others" not in q.log(), q.log()


def test_state_dir_writable_by_others_is_refused(gateway, tmp_path):
    """state_dir holds known_hosts (the login node's host key), the ssh
    control sockets and the record of the gateway's process trees (which
    processes a restart kills as leftovers). A state_dir in a shared place
    that another user made first, or one writable by others, was used as it
    was: that user could plant a host key for a man in the middle, or name
    processes of the gateway's account for it to kill. Now the gateway
    refuses to start and says why, as ssh does with a ~/.ssh like that."""
    for mode, owner in ((0o777, None), (0o770, None), (0o700, "nobody")):
        state = tmp_path / f"shared-{mode:o}-{owner}"
        state.mkdir()
        state.chmod(mode)
        if owner:
            os.chown(state, pwd.getpwnam(owner).pw_uid, -1)
        g = gateway([demo_service()], start=False, state_dir=str(state))
        try:
            p = subprocess.run([str(gateway_bin()), "-c", str(g.config_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=5 * SLACK)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the gateway ran on state_dir {state} (mode {mode:o}, owner {owner})")
        assert p.returncode == 1, (mode, owner, p.stdout)
        assert f"state_dir {state}" in p.stdout and "chmod 700" in p.stdout, p.stdout
        assert not (state / "known_hosts").exists() and not (state / "procs").exists()
    # a private one, and one the gateway makes itself, work
    ok = tmp_path / "private"
    ok.mkdir(mode=0o700)
    assert gateway([demo_service()], state_dir=str(ok)).get("/api/health").status == 200
    made = tmp_path / "new" / "state"
    assert gateway([demo_service()], state_dir=str(made)).get("/api/health").status == 200
    assert (made.stat().st_mode & 0o777) == 0o700


def test_short_unnamed_api_key_id_is_no_public_digest_of_it(gateway):
    """An api key without a name is called key:<12 hex digits> in /metrics
    and /api, which anyone may read by default (public_status). It was the
    plain SHA-256 of the key, so a short key (8 characters pass) was found
    offline from it; now it is an HMAC under a secret of the installation
    (state_dir/key_id_secret), which nobody outside has: nothing to test
    candidate keys against, and no warning needed."""
    import hashlib
    short = "sk-a1b2c"
    g = gateway([demo_service()], start=False, api_keys=[{"key": short}])
    g.config_path.chmod(0o600)
    g.start()
    assert "offline" not in g.log(), g.log()
    assert g.get("/llm/health", headers={"Authorization": f"Bearer {short}"}).status == 200
    m = g.get("/metrics").text
    assert 'key="key:' in m, m
    assert hashlib.sha256(short.encode()).hexdigest()[:12] not in m, m


# A server on a service's port that is not the service's, as a program of
# its own (so that it can run as another user): it answers the health check
# and anything else, and prints each request's path on a line of its stdout.
SQUATTER = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        print(self.path, flush=True)
        body = b'{"status": "ok", "squatter": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def start_squatter(port, paths, as_nobody):
    """SQUATTER on PORT (as nobody, or as this process's user); the paths it
    is asked for are appended to PATHS as they come."""
    who = []
    if as_nobody:
        nobody = pwd.getpwnam("nobody")
        who = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
               "--clear-groups"]
    sq = subprocess.Popen(who + ["/usr/bin/python3", "-c", SQUATTER, str(port)],
                          stdout=subprocess.PIPE, text=True, cwd="/")
    sq.reader = threading.Thread(target=lambda: paths.extend(p.rstrip("\n") for p in
                                                          iter(sq.stdout.readline, "")),
                                 daemon=True)
    sq.reader.start()
    return sq


def stop_squatter(sq):
    """Kill SQUATTER; once this returns, every path it printed is in its
    PATHS (its reader has read to the end: a path printed just before
    the kill could otherwise still be in the pipe when the test looks)."""
    sq.kill()
    sq.wait(10)
    sq.reader.join(10)


def loading_service(tmp_path):
    """A service whose server listens only once GO exists (it loads a model
    first): its port is free meanwhile."""
    go = tmp_path / "go"
    script = write_script(tmp_path / "slow.sh",
                          f'#!/bin/sh\nwhile [ ! -e "{go}" ]; do sleep 0.05; done\n'
                          f'exec "{DEMO_SH}" "$@"\n')
    return demo_service(bash_file=str(script)), go


def test_port_squatted_while_the_service_loads_gets_no_requests(gateway, tmp_path):
    """On a shared host, a local service that loads a model before it
    listens leaves its port free for seconds after the start's check that
    nobody holds it. Another user (nobody, here) who binds it then answered
    the health check, the instance became ready, and users' requests
    (prompts, bodies) went to that user's server, and its answers (pages on
    the gateway's origin) to the users. Now a passed health check makes an
    instance ready only if the listener on its port is not another user's
    (or is a process of its own tree)."""
    svc, go = loading_service(tmp_path)
    g = gateway([svc])
    got, paths = {}, []
    t = threading.Thread(target=lambda: got.update(r=g.get("/llm/pid", timeout=30 * SLACK)))
    t.start()
    sq = None
    try:
        # the start passed its port check and the process runs, not listening yet
        wait_until(lambda: any(i.get("pid") for i in g.svc()["instances"]), 10 * SLACK,
                   msg="the instance's process")
        sq = start_squatter(svc["local_port"], paths, as_nobody=True)
        wait_until(lambda: paths.count("/health") >= 2 or set(paths) - {"/health"},
                   10 * SLACK, msg="the gateway's probes at the squatter")
    finally:
        go.touch()   # the real server starts (and finds its port taken)
        t.join(40 * SLACK)
        if sq is not None:
            stop_squatter(sq)
    other = [p for p in paths if p != "/health"]
    assert other == [], f"requests reached the squatter: {other}"
    assert got["r"].status == 502, got["r"]
    assert "another user's process" in g.log(), g.log()


def test_listener_of_the_gateways_own_account_is_trusted(gateway, tmp_path):
    """What a Docker start script does: the port is answered by a process
    outside the script's tree (docker-proxy, root's) while the script runs.
    A listener of root's or of the gateway's own account is trusted as the
    account itself is: the instance serves through it."""
    svc, go = loading_service(tmp_path)
    g = gateway([svc])
    got, paths = {}, []
    t = threading.Thread(target=lambda: got.update(r=g.get("/llm/pid", timeout=30 * SLACK)))
    t.start()
    sq = None
    try:
        wait_until(lambda: any(i.get("pid") for i in g.svc()["instances"]), 10 * SLACK,
                   msg="the instance's process")
        sq = start_squatter(svc["local_port"], paths, as_nobody=False)
        t.join(30 * SLACK)
    finally:
        if sq is not None:
            stop_squatter(sq)
        go.touch()
    assert got["r"].status == 200 and got["r"].json().get("squatter") is True, got["r"]
    assert [p for p in paths if p != "/health"] == ["/pid"], paths


SW_SERVICE = r'''#!/usr/bin/env python3
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = b"self.addEventListener('fetch', e => { /* sees every request */ });"
        self.send_response(200)
        self.send_header("Content-Type", "text/javascript")
        self.send_header("Service-Worker-Allowed", "/")
        self.send_header("X-Other", "kept")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def test_service_cannot_claim_the_whole_origin_with_a_service_worker(gateway, tmp_path):
    """A service answers under the gateway's origin. A page of it may
    register a service worker, which the browser limits to the script's
    path (/<route>/...) unless the script's answer carries
    Service-Worker-Allowed: then "/" made it the origin's: it served /status
    and saw every later request of the status page, the admin token in its
    Authorization header included, long after the service's page was
    closed. The gateway drops that field from services' answers."""
    script = write_script(tmp_path / "sw.py", SW_SERVICE)
    g = gateway([demo_service(bash_file=str(script))])
    r = g.get("/llm/sw.js", timeout=15 * SLACK)
    assert r.status == 200, r
    assert r.header("X-Other") == "kept", dict(r.headers)
    assert r.header("Service-Worker-Allowed") is None, dict(r.headers)


def test_short_admin_token_draws_a_warning(gateway):
    """admin_token had to be non-empty, nothing more: "pw1" was taken
    silently, and the admin endpoints answer every wrong guess at once,
    with nothing counting failures. A token shorter than 16 characters
    draws a warning now (from a file too)."""
    g = gateway([demo_service()], start=False, admin_token="pw1")
    g.config_path.chmod(0o600)
    g.start()
    assert "admin_token: 3 characters" in g.log(), g.log()
    ok = gateway([demo_service()], start=False, admin_token="x" * 16)
    ok.config_path.chmod(0o600)
    ok.start()
    assert "admin_token:" not in ok.log(), ok.log()


@pytest.mark.parametrize("how", ["env -i", "another user"])
def test_server_without_the_tree_mark_is_still_its_instances_own(gateway, tmp_path, how):
    """The squatter check must not refuse a service's own server that
    carries no tree mark in its environment and runs as another user (a
    start script that runs it through sudo -u, which resets the
    environment): a descendant of the instance's process is its own."""
    nobody = pwd.getpwnam("nobody")
    user = (f"setpriv --reuid={nobody.pw_uid} --regid={nobody.pw_gid} --clear-groups "
            if how == "another user" else "")
    script = write_script(tmp_path / "clean_env.sh",
                          f'#!/bin/sh\nexec {user}env -i PATH=/usr/bin:/bin "{DEMO_SH}" "$@"\n')
    g = gateway([demo_service(bash_file=str(script))])
    r = g.get("/llm/pid", timeout=15 * SLACK)
    assert r.status == 200, (r, g.log())
