"""Another cluster user on the service's port (compute nodes are shared):
a process of theirs listens on the service's remote_port (it is in the
gateway's config, not secret) on the node where the gateway's job runs,
before the job's server starts. The health probe through the forward gets
that process; the instance must not become ready on its answer, or every
user's requests (and what the clients send) go to it. The squatter here
runs as `nobody` in the node's network namespace, answers every path with
200, and the job script does not exec (it retries its server until the
port is free, as a wrapper script might)."""
import os
import subprocess
import threading
import time

import pytest

from conftest import SLACK, pid_alive, wait_until
from slurmlib import (DEMO_BIN, NODE_ADDR_SH, cluster, slurm_gateway,  # noqa: F401
                      slurm_service, write_script)
from test_slurm_agent import allow_args, forced_key, install_agent  # noqa: F401

SQUATTER = r'''
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"squatter": true, "pid": 0}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S((sys.argv[1], int(sys.argv[2])), H).serve_forever()
'''


@pytest.fixture
def squat(cluster):
    """squat(port): a process of `nobody` listens on PORT at every node's
    address, in its namespace (where the job's server would bind), answering
    200 to everything; returns stop(), which ends them. All are ended after
    the test."""
    procs = []

    def stop():
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)

    def start(port):
        for n in cluster.nodes:
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", n["netns"], "setpriv", "--reuid=nobody", "--regid=nogroup",
                 "--clear-groups", "/usr/bin/python3", "-c", SQUATTER, n["addr"], str(port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for n in cluster.nodes:
            def up(addr=n["addr"]):
                try:
                    return cluster.http_get(addr, port, "/health", timeout=2)[0] == 200
                except OSError:
                    return False
            wait_until(up, 10 * SLACK, interval=0.1, msg=f"squatter on {n['name']}:{port}")
        return stop

    yield start
    stop()


def retrying_job_script(path):
    """A job script that does not exec its server and starts it again until
    it can bind the port (a wrapper with a retry loop)."""
    return write_script(path, "#!/bin/sh\n" + NODE_ADDR_SH +
                        f'until "{DEMO_BIN}" --host "$addr" --port "$1"; do sleep 1; done\n')


def instances_detail(g):
    return " | ".join(x.get("detail", "") for x in g.svc()["instances"])


def squat_service(cluster, tmp_path, via, forced_key, **kw):
    """The service, its commands run the plain way or (VIA "agent") through
    the remote agent, whose forced command is all its key may run."""
    if via == "plain":
        return slurm_service(cluster, retrying_job_script(tmp_path / "job.sh"), **kw)
    agent, allow = install_agent(tmp_path)
    job = retrying_job_script(allow / "job.sh")
    svc = slurm_service(cluster, job, slurm_agent=str(agent), **kw)
    allow_args(job, svc["sbatch_args"])
    svc["ssh_key_file"] = str(forced_key(f"{agent} -l {tmp_path}/agent.log",
                                         [svc["remote_port"], svc["remote_port"] + 1]))
    return svc


@pytest.mark.parametrize("via", ["plain", "agent"])
def test_squatter_on_the_jobs_port_is_not_served(cluster, slurm_gateway, squat, tmp_path, via,
                                                 forced_key):
    """The squatter answers the health path first: the instance stays not
    ready (/api and the log say port N on node X is answered by another
    user's process), a request waits instead of going to the squatter, and
    once the squatter is gone the job's own server serves it."""
    svc = squat_service(cluster, tmp_path, via, forced_key, start_timeout=120)
    stop = squat(svc["remote_port"])
    g = slurm_gateway([svc])
    answer = {}

    def ask():
        try:
            r = g.get("/llm/pid", timeout=150)
            answer["r"] = (r.status, r.json())
        except Exception as e:  # noqa: BLE001 - reported below
            answer["r"] = e

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    try:
        g.wait_svc(lambda i: "r" in answer or any(
            "answered by another user's process" in x.get("detail", "") for x in i["instances"]),
            60, msg="the squatter is refused (/api says so)")
        assert "r" not in answer, f"answered while the squatter listens: {answer}"
        assert all(x["state"] != "ready" for x in g.svc()["instances"]), g.svc()
        assert f"port {svc['remote_port']} on node " in instances_detail(g)
        assert "answered by another user's process" in g.log()
    finally:
        stop()
    t.join(timeout=120 * SLACK)
    assert not t.is_alive(), "the request got no answer after the squatter left"
    status, body = answer["r"]
    assert status == 200 and not body.get("squatter") and body["pid"] > 0, answer
    [(_, _, state, _)] = cluster.jobs(g.job_name())
    assert state == "RUNNING"


@pytest.mark.parametrize("via", ["plain", "agent"])
def test_own_server_is_ready_after_the_listener_check(cluster, slurm_gateway, tmp_path, via,
                                                      forced_key):
    """No squatter: the check finds the job's own listener and the instance
    becomes ready (the log says whose the port is); the cold start is
    measured (the check's cost is the time from the first passing probe)."""
    svc = squat_service(cluster, tmp_path, via, forced_key)
    g = slurm_gateway([svc])
    t0 = time.monotonic()
    r = g.get("/llm/pid", timeout=60)
    took = time.monotonic() - t0
    assert r.status == 200 and r.json()["pid"] > 0, r
    assert f"port {svc['remote_port']} on node " in g.log() and "is the job's (uid" in g.log(), g.log()
    if via == "agent":
        assert g.svc()["slurm_agent"] == "up"
    print(f"cold start with the listener check ({via}): {took:.2f} s")


def test_squatter_after_a_requeue_is_not_served(cluster, slurm_gateway, squat, tmp_path):
    """The port is free while a requeued job waits to run again: a squatter
    that binds it then is refused as at the first start (the check runs
    again for the job's new run), and the job's own server serves once it
    is gone."""
    svc = slurm_service(cluster, retrying_job_script(tmp_path / "job.sh"), start_timeout=120)
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200 and r.json()["pid"] > 0, r
    pid1 = r.json()["pid"]
    [(job_id, _, _, _)] = cluster.jobs(g.job_name())
    cluster.run("scontrol", "requeue", job_id)
    wait_until(lambda: not pid_alive(pid1), 30 * SLACK, msg="the requeued job's server ended")
    stop = squat(svc["remote_port"])
    try:
        g.wait_svc(lambda i: any("answered by another user's process" in x.get("detail", "")
                                 for x in i["instances"]), 60,
                   msg="the squatter is refused after the requeue")
        assert all(x["state"] != "ready" for x in g.svc()["instances"]), g.svc()
        r = g.get("/llm/pid", timeout=3, headers={"X-Slurmgate-Wait": "0"})
        assert r.status != 200 or not r.json().get("squatter"), r
    finally:
        stop()
    r = g.get("/llm/pid", timeout=90)
    assert r.status == 200 and not r.json().get("squatter") and r.json()["pid"] not in (0, pid1), r


def test_check_that_cannot_run_trusts_the_health_check_with_a_warning(cluster, slurm_gateway,
                                                                      tmp_path):
    """Where the step cannot run (here: an srun without --overlap, as in
    Slurm before 20.11, first in the gateway's PATH; the gateway runs Slurm
    commands here, without remote_host), the instance becomes ready on its
    health check as before, and the log says the listener was not checked."""
    old = write_script(tmp_path / "oldslurm" / "srun",
                       "#!/bin/sh\necho \"srun: unrecognized option '--overlap'\" >&2\nexit 1\n")
    svc = slurm_service(cluster, retrying_job_script(tmp_path / "job.sh"))
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    g = slurm_gateway([svc], env={"SLURM_CONF": cluster.slurm_conf,
                                  "PATH": f"{old.parent}:{os.environ['PATH']}"})
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200 and r.json()["pid"] > 0, r
    assert (f"cannot check who listens on port {svc['remote_port']} on node " in g.log()
            and "unrecognized option '--overlap'" in g.log()
            and "trusting the health check" in g.log()), g.log()
