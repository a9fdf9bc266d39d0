"""Slurm's whole job life (issue 8, "What to build" item 3): what the gateway
does when a running job is requeued, suspended, loses its node, ends while
its forward is being opened, or leaves squeue unseen.

The rule under test: the moment Slurm says the job is not running, the
instance leaves rotation; requests that arrive after that are held (never
answered 502) with the reason in /check_ and /api, and are served when the
job runs again, through a forward to the node it runs on now; no second
sbatch, no forward left behind.

A requeued job stays PENDING (BeginTime) until its job credential expires,
and may not run on that node before (slurmd revoked the credential): the
test cluster sets cred_expire=10 (tests/env/clusterctl), so it runs again
after about 11 s instead of Slurm's default 121 s."""
import json
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import SLACK, http_request, pid_alive, wait_until
from slurmlib import (children, cluster, cmdline, demo_job_script, nodes,  # noqa: F401
                      slurm_gateway, slurm_service, write_script)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def listening_ports(pid):
    """TCP ports that process PID listens on: for an ssh ControlMaster, its
    local forwards."""
    out = subprocess.run(["ss", "-Hltnp"], stdout=subprocess.PIPE, text=True, timeout=10).stdout
    ports = set()
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        local = line.split()[3]
        ports.add(int(local.rsplit(":", 1)[1]))
    return ports


def forwards(g):
    """The local ports the gateway's ssh master forwards ({} if no master)."""
    masters = g.master_pids()
    assert len(masters) <= 1, masters
    return listening_ports(masters[0]) if masters else set()


def warm(g, cluster):
    """Start the service; returns (job_id, demo pid)."""
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    [(job_id, _, state, _)] = cluster.jobs(g.job_name())
    assert state == "RUNNING"
    return job_id, r.json()["pid"]


def wait_held(g, job_id, words, timeout):
    """Wait until the instance is out of rotation with a detail that names
    the job and every one of WORDS; returns (instance, /check_ answer)."""
    holder = {}

    def held():
        info = g.svc()
        holder["info"] = info
        insts = info["instances"]
        if len(insts) != 1 or insts[0]["state"] == "ready":
            return False
        d = insts[0]["detail"]
        return f"Slurm job {job_id}" in d and all(w in d for w in words)

    try:
        wait_until(held, timeout * SLACK, interval=0.05)
    except AssertionError:
        raise AssertionError(f"instance not held naming {words}: {holder.get('info')}") from None
    return holder["info"]["instances"][0], g.check()


def hold_requests(ex, g, n, path="/llm/pid"):
    futs = [ex.submit(http_request, g.port, "GET", f"{path}?i={k}", timeout=90 * SLACK)
            for k in range(n)]
    try:
        wait_until(lambda: g.svc()["waiting"] == n, 10 * SLACK, interval=0.05)
    except AssertionError:
        done = [(f.result().status, f.result().body[:200]) for f in futs if f.done()]
        raise AssertionError(f"requests not held; answered: {done}; {g.svc()}") from None
    assert not any(f.done() for f in futs)
    return futs


# --------------------------------------------------------------------------
# bug 4: scontrol requeue of a running job
# --------------------------------------------------------------------------

def test_requeue_holds_and_resumes(cluster, slurm_gateway, tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)])
    job_id, pid1 = warm(g, cluster)
    assert len(forwards(g)) == 1

    with ThreadPoolExecutor(max_workers=8) as ex:
        # a request in flight when the job is requeued ends with an error, at once
        inflight = ex.submit(http_request, g.port, "GET", "/llm/slow?ms=20000",
                             timeout=60 * SLACK)
        wait_until(lambda: g.svc()["in_flight"] == 1, 5 * SLACK)
        t0 = time.monotonic()
        cluster.run("scontrol", "requeue", job_id)

        # out of rotation as soon as the gateway's poll sees it (poll_slow_s
        # 2): COMPLETING first, then PENDING
        wait_held(g, job_id, [], 10)
        took = time.monotonic() - t0
        inst, chk = wait_held(g, job_id, ["requeued: pending"], 10)
        assert chk["running"] is False, chk
        assert f"Slurm job {job_id} requeued: pending" in chk["reason"], chk
        r = inflight.result(timeout=30 * SLACK)
        assert r.status == 502, r

        wait_until(lambda: re.search(r"requeued: pending \(\w+\)",
                                     g.svc()["instances"][0]["detail"]), 10 * SLACK,
                   msg="detail names Slurm's reason")
        # the old node's forward is gone while the job waits
        wait_until(lambda: forwards(g) == set(), 10 * SLACK, msg="old forward cancelled")

        # requests arriving now are held as in a cold start: none gets a 502
        futs = hold_requests(ex, g, 5)
        t1 = time.monotonic()
        results = [f.result(timeout=90 * SLACK) for f in futs]
        ran_again = time.monotonic() - t1
    assert [r.status for r in results] == [200] * 5, [(r.status, r.body[:200]) for r in results]
    pids = {r.json()["pid"] for r in results}
    assert len(pids) == 1 and pid1 not in pids, (pid1, pids)

    # the same job, no second sbatch, one forward
    info = g.svc()
    assert info["starts"] == 1 and info["state"] == "ready", info
    assert info["instances"][0]["job_id"] == job_id
    assert [j[0] for j in cluster.live_jobs(g.job_name())] == [job_id]
    fw = forwards(g)
    assert len(fw) == 1 and info["instances"][0]["address"].endswith(f":{fw.pop()}"), (fw, info)
    assert g.check()["running"] is True
    print(f"held {took:.2f} s after scontrol requeue; in flight: {r.status} {r.body[:120]!r}; "
          f"held requests served {ran_again:.2f} s later, when the job ran again")


# --------------------------------------------------------------------------
# bug 5: scontrol suspend / resume
# --------------------------------------------------------------------------

def test_suspend_resume(cluster, slurm_gateway, tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)])
    job_id, pid1 = warm(g, cluster)
    port = forwards(g)

    t0 = time.monotonic()
    cluster.run("scontrol", "suspend", job_id)
    try:
        inst, chk = wait_held(g, job_id, ["suspended"], 10)
        took = time.monotonic() - t0
        assert chk["running"] is False and "suspended" in chk["reason"], chk
        with ThreadPoolExecutor(max_workers=5) as ex:
            futs = hold_requests(ex, g, 5)
            t1 = time.monotonic()
            cluster.run("scontrol", "resume", job_id)
            results = [f.result(timeout=60 * SLACK) for f in futs]
            resumed = time.monotonic() - t1
    finally:
        cluster.run("scontrol", "resume", job_id, check=False)
    assert [r.status for r in results] == [200] * 5, [(r.status, r.body[:200]) for r in results]
    # the same process, the same job, the same forward
    assert {r.json()["pid"] for r in results} == {pid1}
    info = g.svc()
    assert info["starts"] == 1 and info["state"] == "ready", info
    assert forwards(g) == port
    assert g.get("/llm/pid").status == 200
    print(f"held {took:.2f} s after scontrol suspend; served {resumed:.2f} s after resume")


def test_suspend_fails_requests_in_flight_with_reason(cluster, slurm_gateway, tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)])
    job_id, _ = warm(g, cluster)
    with ThreadPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(http_request, g.port, "GET", "/llm/slow?ms=3000", timeout=60 * SLACK)
        wait_until(lambda: g.svc()["in_flight"] == 1, 5 * SLACK)
        cluster.run("scontrol", "suspend", job_id)
        try:
            wait_held(g, job_id, ["suspended"], 10)
            r = fut.result(timeout=5 * SLACK)
        finally:
            cluster.run("scontrol", "resume", job_id, check=False)
    assert r.status == 502 and "suspended" in r.body.decode(errors="replace"), r


# --------------------------------------------------------------------------
# bug 6: the node is set DOWN under a running job
# --------------------------------------------------------------------------

def test_node_down_requeue(nodes, slurm_gateway, tmp_path):
    cluster = nodes   # every node idle again afterwards
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)])
    job_id, pid1 = warm(g, cluster)
    node = g.svc()["instances"][0]["node"]   # the job's node, as Slurm names it

    def node_state():
        return cluster.run("sinfo", "-h", "-N", "-n", node, "-o", "%T").strip()

    try:
        cluster.run("scontrol", "update", f"nodename={node}", "state=down",
                    "reason=slurmgate test")
        inst, chk = wait_held(g, job_id, ["requeued: pending"], 10)
        assert chk["running"] is False and f"Slurm job {job_id} requeued" in chk["reason"], chk
        with ThreadPoolExecutor(max_workers=5) as ex:
            futs = hold_requests(ex, g, 5)
            # ReturnToService=2 brings the node back when its slurmd registers
            cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
            wait_until(lambda: "down" not in node_state(), 30 * SLACK, msg=f"node {node} back")
            results = [f.result(timeout=90 * SLACK) for f in futs]
    finally:
        cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
    assert [r.status for r in results] == [200] * 5, [(r.status, r.body[:200]) for r in results]
    assert pid1 not in {r.json()["pid"] for r in results}
    info = g.svc()
    assert info["starts"] == 1 and info["instances"][0]["job_id"] == job_id, info
    assert [j[0] for j in cluster.live_jobs(g.job_name())] == [job_id]
    assert len(forwards(g)) == 1


# --------------------------------------------------------------------------
# several nodes: the forward follows the job; instances on two nodes
# --------------------------------------------------------------------------

def test_requeue_moves_forward(nodes, slurm_gateway, tmp_path):
    """Drain the job's node and requeue the job: it runs on another node, and
    the gateway serves it there (on c095a72 the forward still went to the
    old node)."""
    cluster = nodes
    assert len(cluster.node_names) >= 2, cluster.nodes
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job)
    g = slurm_gateway([svc])
    job_id, pid1 = warm(g, cluster)
    old = g.svc()["instances"][0]["node"]
    fw_old = forwards(g)

    cluster.scontrol_node(old, "drain")
    cluster.scontrol("requeue", job_id)
    wait_held(g, job_id, ["requeued: pending"], 10)
    with ThreadPoolExecutor(max_workers=5) as ex:
        futs = hold_requests(ex, g, 5)
        results = [f.result(timeout=90 * SLACK) for f in futs]
    assert [r.status for r in results] == [200] * 5, [(r.status, r.body[:200]) for r in results]
    [pid2] = {r.json()["pid"] for r in results}

    new = cluster.job_node(job_id)
    assert new and new != old, (old, new)
    info = g.svc()
    inst = info["instances"][0]
    assert inst["node"] == new and inst["job_id"] == job_id and info["starts"] == 1, info
    # what answers through the gateway is the service on the new node
    status, body = cluster.http_get(cluster.node_addr(new), svc["remote_port"], "/pid")
    assert status == 200 and json.loads(body)["pid"] == pid2 != pid1, body
    fw = forwards(g)
    assert len(fw) == 1 and fw != fw_old, (fw_old, fw)
    assert inst["address"].endswith(f":{fw.pop()}"), inst


def test_two_instances_on_two_nodes_balanced(nodes, slurm_gateway, tmp_path):
    cluster = nodes
    assert len(cluster.node_names) >= 2, cluster.nodes
    job = demo_job_script(tmp_path / "job.sh")
    # --exclusive: one job per node, so the two land on two nodes
    g = slurm_gateway([slurm_service(cluster, job, min_instances=2, max_instances=2,
                                     sbatch_args=[f"--chdir={cluster.work_dir}",
                                                  "--exclusive"])])
    info = g.wait_svc(lambda i: [x["state"] for x in i["instances"]] == ["ready", "ready"],
                      90, msg="two instances ready")
    used = {x["node"] for x in info["instances"]}
    assert len(used) == 2, info["instances"]
    assert len(forwards(g)) == 2

    n = 40
    with ThreadPoolExecutor(max_workers=n) as ex:
        results = list(ex.map(lambda k: http_request(g.port, "GET", f"/llm/slow?ms=300&i={k}",
                                                     timeout=60 * SLACK), range(n)))
    assert all(r.status == 200 for r in results), [(r.status, r.body[:100]) for r in results]
    served = {x["node"]: x["served"] for x in g.svc()["instances"]}
    assert sum(served.values()) >= n and min(served.values()) >= n // 4, served
    print(f"served per node: {served}")


# --------------------------------------------------------------------------
# bug 10: the job ends while `ssh -O forward` is still running
# --------------------------------------------------------------------------

def test_forward_not_leaked_when_job_ends_during_forward(cluster, slurm_gateway, tmp_path):
    # the real ssh, but `ssh -O forward` waits for the test while GATE exists
    d = tmp_path / "sshwrap"
    gate, started, release, done = (d / "gate", d / "started", d / "release", d / "done")
    write_script(d / "ssh", f"""#!/bin/sh
for a in "$@"; do
    if [ "$a" = forward ] && [ -e "{gate}" ]; then
        touch "{started}"
        i=0
        while [ ! -e "{release}" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
        /usr/bin/ssh "$@"
        rc=$?
        touch "{done}"
        exit $rc
    fi
done
exec /usr/bin/ssh "$@"
""")
    gate.touch()
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)],
                      env={"PATH": f"{d}:{os.environ['PATH']}"})
    with ThreadPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(http_request, g.port, "GET", "/llm/pid", timeout=90 * SLACK)
        wait_until(started.exists, 60 * SLACK, msg="ssh -O forward started")
        [(job_id, _, state, _)] = cluster.jobs(g.job_name())
        cluster.scancel(job_id)
        # squeue reports the end while the forward is still being opened
        g.wait_svc(lambda i: not i["instances"], 20, msg="instance gone")
        r = fut.result(timeout=30 * SLACK)
    assert r.status == 502 and job_id in r.json()["error"], r
    release.touch()
    wait_until(done.exists, 20 * SLACK, msg="ssh -O forward done")
    # the forward that completed late is cancelled, not kept
    try:
        wait_until(lambda: forwards(g) == set(), 10 * SLACK)
    except AssertionError:
        raise AssertionError(f"forward left in the ssh master: {forwards(g)}") from None
    # and a restarted master does not bring it back
    [master] = g.master_pids()
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: not pid_alive(master), 5 * SLACK)
    gate.unlink()
    r = g.get("/llm/pid", timeout=60)   # a new job, a new forward
    assert r.status == 200, r
    assert len(forwards(g)) == 1, forwards(g)


# --------------------------------------------------------------------------
# a job no longer in squeue: ask sacct / scontrol once, then say what is known
# --------------------------------------------------------------------------

def test_job_left_squeue_asks_sacct(cluster, slurm_gateway, tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job, health_interval=600)])
    job_id, _ = warm(g, cluster)
    [master] = g.master_pids()

    def commands_running():
        """ssh commands through the master (squeue, scontrol, ...)."""
        return [c for c in children(g.pid) if c != master and
                "ControlMaster=no" in (cmdline(c) or [])]

    # the gateway's squeue cannot run while its master is stopped: the job
    # ends and is purged from squeue (MinJobAge) before the gateway looks
    # again. Stop it while no command of the gateway runs (one already
    # running through the master could see the job end).
    def stopped_idle():
        os.kill(master, signal.SIGSTOP)
        if not commands_running():
            return True
        os.kill(master, signal.SIGCONT)
        return False

    wait_until(stopped_idle, 20 * SLACK, interval=0.02, msg="master stopped between polls")
    try:
        cluster.scancel(job_id)
        wait_until(lambda: not cluster.jobs(g.job_name()), 90, interval=0.5,
                   msg="job purged from squeue")
    finally:
        os.kill(master, signal.SIGCONT)
    info = g.wait_svc(lambda i: not i["instances"], 30, msg="instance gone")
    err = info["last_error"] or ""
    assert f"Slurm job {job_id} left squeue" in err, info
    # no accounting on the test cluster: sacct says so, and scontrol no
    # longer knows the job; the reason says what was asked and answered
    assert "sacct" in err and "accounting storage is disabled" in err, err
    assert "scontrol" in err and "Invalid job id" in err, err
    log = g.log()
    assert re.search(rf"Slurm job {job_id} .*not in squeue.*asking sacct", log), log[-3000:]
