"""Slurm launcher against what real clusters do that the other tests do not:
sbatch wrappers that talk on stdout, a controller that is down for a few
seconds while the gateway restarts. Each test is named after the bug it
found."""
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import SLACK, pid_alive, reload_services, wait_until
from slurmlib import cluster, demo_job_script, slurm_gateway, slurm_service, write_script  # noqa: F401
from test_slurm_agent import agent_service


def local_service(cluster, job, **overrides):
    """A Slurm service whose Slurm commands run here (no login node)."""
    svc = slurm_service(cluster, job, **overrides)
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    return svc


@pytest.mark.parametrize("via", ["commands", "agent"])
def test_sbatch_wrapper_talking_on_stdout_leaks_the_job(cluster, slurm_gateway, tmp_path, via):
    """Sites wrap sbatch (accounting notices, fair-share banners, a module
    system's chatter): a line on stdout before `--parsable`'s job id. The
    job was submitted: it must be tracked and served, not called a failed
    submit and left running untracked (with a second one per request).
    Also through the remote agent (here: a child of the gateway), which
    runs the same sbatch and passes its answer on."""
    real = subprocess.run(["sh", "-c", "command -v sbatch"], stdout=subprocess.PIPE, text=True,
                          check=True).stdout.strip()
    wrap = tmp_path / "bin"
    write_script(wrap / "sbatch", "#!/bin/sh\n"
                 "echo 'Notice: your fair-share on this cluster is 0.42'\n"
                 "echo\n"
                 f"exec {real} \"$@\"\n")
    if via == "agent":
        svc, _, _ = agent_service(cluster, tmp_path)
        for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
            svc.pop(k)
    else:
        svc = local_service(cluster, demo_job_script(tmp_path / "job.sh"))
    g = slurm_gateway([svc],
                      env={"SLURM_CONF": cluster.slurm_conf,
                           "PATH": f"{wrap}:{os.environ['PATH']}"})
    name = g.job_name()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, (r, g.log())
    jobs = cluster.live_jobs(name)
    assert len(jobs) == 1, jobs
    [inst] = g.svc()["instances"]
    assert inst["job_id"] == jobs[0][0], (inst, jobs)


# --- slurmctld down and back ---

def ctld_pid(cluster):
    return int((cluster.dir / "slurm" / "slurmctld.pid").read_text().split()[0])


def ctld_stop(cluster):
    """SIGTERM slurmctld (it saves its state) and wait until it is gone.
    Running jobs keep running on their nodes meanwhile."""
    pid = ctld_pid(cluster)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), 20, interval=0.1, msg="slurmctld to stop")


def ctld_start(cluster):
    """Start slurmctld again from its saved state (not -c: keep the jobs)."""
    env = dict(os.environ, SLURM_CONF=cluster.slurm_conf)
    with open(cluster.dir / "slurm" / "slurmctld.log", "ab") as log:
        subprocess.run(["slurmctld", "-f", cluster.slurm_conf], env=env, stdout=log,
                       stderr=log, check=True, timeout=30)
    wait_until(lambda: subprocess.run(["squeue", "-h"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, timeout=10).returncode == 0,
               30, interval=0.2, msg="slurmctld to answer again")


def test_restart_while_slurmctld_is_down_leaks_the_running_job(cluster, slurm_gateway, tmp_path):
    """The gateway is restarted (kill -9, a crash, an upgrade) while the
    controller is down for a moment. Its job runs on. The recovery scan's
    squeue fails: the gateway must look again, not start without it and
    submit a second job beside the first, which would run untracked until
    its time limit."""
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)])
    name = g.job_name()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    [(job_id, _, state, _)] = cluster.jobs(name)
    assert state == "RUNNING"
    g.kill9()

    ctld_stop(cluster)
    try:
        g.restart()
        # a request meanwhile waits for the scan, and is told why it failed
        with ThreadPoolExecutor(1) as ex:
            held = ex.submit(g.get, "/llm/pid", timeout=40)
            wait_until(lambda: "cannot look for Slurm jobs of an earlier run" in g.log(),
                       30 * SLACK, interval=0.1, msg="the recovery scan to fail")
            r = held.result(10 * SLACK)
        assert r.status == 503 and "earlier run" in r.json()["error"], r
        assert "earlier run" in g.check()["reason"], g.check()
    finally:
        ctld_start(cluster)
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, (r, g.log())
    live = cluster.live_jobs(name)
    assert [j[0] for j in live] == [job_id], f"job {job_id} adopted, no second: {live}"
    [inst] = g.svc()["instances"]
    assert inst["job_id"] == job_id, inst


def test_held_pending_job_promises_an_expected_start(cluster, slurm_gateway, tmp_path):
    """A queued job put on hold (scontrol hold: by the user, or an admin)
    does not start until it is released, whatever start time Slurm had
    planned for it: /check_ must say it is held, and neither it nor
    Retry-After may promise that time. Released, it runs and serves."""
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job, sbatch_args=[f"--chdir={cluster.work_dir}",
                                                                "--begin=now+120"])])
    name = g.job_name()
    with ThreadPoolExecutor(1) as ex:
        held = ex.submit(g.get, "/llm/pid", timeout=60)
        [(job_id, _, _, _)] = wait_until(lambda: cluster.jobs(name), 15 * SLACK, interval=0.2)
        wait_until(lambda: "expected to start" in g.check()["reason"], 10 * SLACK, interval=0.1)
        cluster.scontrol("hold", job_id)
        reason = wait_until(lambda: "JobHeld" in g.check()["reason"] and g.check()["reason"],
                            10 * SLACK, interval=0.1)
        assert "expected to start" not in reason, reason
        r = g.get("/llm/pid", headers={"X-Slurmgate-Wait": "0"})
        assert r.status == 503 and int(r.header("Retry-After")) < 100, (r, r.headers)
        cluster.scontrol("release", job_id)
        cluster.scontrol("update", f"JobId={job_id}", "StartTime=now")
        r = held.result(60 * SLACK)
    assert r.status == 200, r
    assert [j[0] for j in cluster.live_jobs(name)] == [job_id]


@pytest.mark.parametrize("via", ["commands", "agent"])
def test_controller_down_while_queued_check_shows_a_stale_step(cluster, slurm_gateway, tmp_path,
                                                               via):
    """While slurmctld is down every squeue fails, and /check_ went on
    showing the last answer ("pending (BeginTime), expected to start ...")
    as if Slurm had just said it. It must say that Slurm is not answering
    (and since when), keeping the last known step; once the controller is
    back the step is Slurm's again, and the job that waited through it
    serves the request that was held all along. The same when the remote
    agent's watcher runs squeue (it pushes the outage and its end)."""
    kw = dict(start_timeout=300, sbatch_args=[f"--chdir={cluster.work_dir}", "--begin=now+120"])
    if via == "agent":
        svc, _, _ = agent_service(cluster, tmp_path, **kw)
    else:
        svc = slurm_service(cluster, demo_job_script(tmp_path / "job.sh"), **kw)
    g = slurm_gateway([svc])
    name = g.job_name()
    with ThreadPoolExecutor(1) as ex:
        held = ex.submit(g.get, "/llm/pid", timeout=90)
        [(job_id, _, _, _)] = wait_until(lambda: cluster.jobs(name), 15 * SLACK, interval=0.2)
        wait_until(lambda: "expected to start" in g.check()["reason"], 10 * SLACK, interval=0.1)
        ctld_stop(cluster)
        try:
            reason = wait_until(lambda: "not answering" in g.check()["reason"] and g.check()["reason"],
                                20 * SLACK, interval=0.2, msg="/check_ to say Slurm is not answering")
            assert job_id in reason and "pending" in reason, reason
        finally:
            ctld_start(cluster)
        reason = wait_until(lambda: "not answering" not in g.check()["reason"] and g.check()["reason"],
                            20 * SLACK, interval=0.2, msg="/check_ to show Slurm's answer again")
        assert "expected to start" in reason, reason
        cluster.scontrol("update", f"JobId={job_id}", "StartTime=now")
        r = held.result(60 * SLACK)
    assert r.status == 200, r
    assert [j[0] for j in cluster.live_jobs(name)] == [job_id]


def test_late_recovery_scan_cancels_a_job_submitted_meanwhile(cluster, slurm_gateway, tmp_path):
    """The start-up scan is retried while squeue fails; a service that a
    reload adds meanwhile is not waiting for it and submits its job. When
    squeue answered again, the scan took that live job (named by this
    instance_id, its index taken) for an earlier run's and cancelled it,
    and its request failed. A job the gateway tracks is never the scan's."""
    real = subprocess.run(["sh", "-c", "command -v squeue"], stdout=subprocess.PIPE, text=True,
                          check=True).stdout.strip()
    flag = tmp_path / "squeue-fails"
    flag.touch()
    wrap = tmp_path / "bin"
    write_script(wrap / "squeue", "#!/bin/sh\n"
                 f'[ -e "{flag}" ] && {{ echo "squeue: error: Unable to contact slurm controller" >&2; exit 1; }}\n'
                 f'exec {real} "$@"\n')
    first = local_service(cluster, demo_job_script(tmp_path / "job.sh"))
    g = slurm_gateway([first], env={"SLURM_CONF": cluster.slurm_conf,
                                    "PATH": f"{wrap}:{os.environ['PATH']}"})
    wait_until(lambda: "cannot look for Slurm jobs of an earlier run" in g.log(), 15 * SLACK,
               interval=0.1, msg="the failing recovery scan")
    second = local_service(cluster, demo_job_script(tmp_path / "job2.sh"), name="second",
                           route="second", remote_port=first["remote_port"] + 10)
    reload_services(g, [first, second])
    with ThreadPoolExecutor(1) as ex:
        held = ex.submit(g.get, "/second/pid", timeout=60 * SLACK)
        [(job_id, _, _, _)] = wait_until(lambda: cluster.jobs(g.job_name("second")), 15 * SLACK,
                                         interval=0.2, msg="the added service's job")
        flag.unlink()
        wait_until(lambda: "looked for Slurm jobs of an earlier run" in g.log(tail=10 ** 7),
                   40 * SLACK, interval=0.2, msg="the recovery scan once squeue answers")
        r = held.result(60 * SLACK)
    assert r.status == 200, (r, g.log())
    assert [j[0] for j in cluster.live_jobs(g.job_name("second"))] == [job_id]
    assert f"Slurm job {job_id} (" not in g.log(tail=10 ** 7), g.log()


def test_sbatch_socket_timeout_leaves_an_untracked_job(cluster, slurm_gateway, tmp_path):
    """On a busy cluster sbatch gives up with "Socket timed out on send/recv
    operation" (exit 1), and the controller queues the job all the same
    once it gets to the request. Reproduced: slurmctld stopped (SIGSTOP)
    while sbatch runs, continued once sbatch gave up. That job carries the
    gateway's name: it must be found (adopted or cancelled), never left
    running untracked beside the job of the next start."""
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)])
    name = g.job_name()
    wait_until(lambda: "looked for Slurm jobs of an earlier run" in g.log(), 20 * SLACK,
               interval=0.1, msg="the recovery scan")
    pid = ctld_pid(cluster)
    os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as ex:
            first = ex.submit(g.get, "/llm/pid", timeout=60)
            wait_until(lambda: "timed out" in g.log(), 40 * SLACK, interval=0.1,
                       msg="sbatch to give up")
            os.kill(pid, signal.SIGCONT)
            r = first.result(60 * SLACK)
    finally:
        os.kill(pid, signal.SIGCONT)
    # the controller queued the job after all (it is listed, maybe cancelled already)
    wait_until(lambda: cluster.jobs(name), 20 * SLACK, interval=0.2, msg="the late job")

    def untracked():
        tracked = {i["job_id"] for i in g.svc()["instances"]}
        return [j for j in cluster.live_jobs(name) if j[0] not in tracked]
    wait_until(lambda: not untracked(), 20 * SLACK, interval=0.2,
               msg=f"no untracked job of ours to run: {cluster.jobs(name)}")
    if r.status != 200:
        assert r.status == 502 and "timed out" in r.json()["error"], r
        r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    [inst] = g.svc()["instances"]
    assert [j[0] for j in cluster.live_jobs(name)] == [inst["job_id"]], cluster.jobs(name)
