"""Slurm launcher, start-up recovery: what a (re)started gateway does with the
jobs it finds in squeue, and that it touches only its own. Also the launcher
without a login node (Slurm commands run locally)."""
import os
import re
import shutil
import signal
import threading
import time

from conftest import SLACK, demo_service, http_request, pid_alive, wait_until, write_script
from slurmlib import cluster, demo_job_script, slurm_gateway, slurm_service  # noqa: F401


def _bg_request(port, path, timeout):
    """A request in a thread whose outcome we do not need (it may be cut by
    a kill -9); returns the thread."""
    def run():
        try:
            http_request(port, "GET", path, timeout=timeout)
        except Exception:  # noqa: BLE001
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_restart_cancels_its_own_pending_job_left_by_a_killed_gateway(cluster, slurm_gateway,
                                                                      tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job, start_timeout=60,
                        sbatch_args=[f"--chdir={cluster.work_dir}",
                                     f"--partition={cluster.down_partition}"])
    g = slurm_gateway([svc])
    name = g.job_name()
    t = _bg_request(g.port, "/llm/pid", 30 * SLACK)
    rows = wait_until(lambda: [j for j in cluster.jobs(name) if j[2] == "PENDING"], 15 * SLACK,
                      interval=0.2, msg="the job to be PENDING")
    job_id = rows[0][0]
    g.kill9()
    t.join(5)
    assert [j[0] for j in cluster.live_jobs(name)] == [job_id]

    g.restart()
    # a PENDING job cannot be adopted (nobody waits for it): it is cancelled
    wait_until(lambda: not cluster.live_jobs(name), 15 * SLACK, interval=0.2,
               msg=f"the leftover pending job {job_id} to be cancelled")
    assert all(j[2] == "CANCELLED" for j in cluster.jobs(name)), cluster.jobs(name)
    assert re.search(rf"Slurm job {job_id} .*not adoptable", g.log()), g.log()
    info = g.svc()
    assert info["starts"] == 0 and info["instances"] == [], info


def test_recovery_leaves_jobs_of_a_gateway_whose_instance_id_extends_ours(cluster, slurm_gateway,
                                                                          tmp_path):
    """Two gateways share a cluster account: instance_id "X" and "X-2". The
    job names are sg:X:<route>:<i> and sg:X-2:<route>:<i>; when X starts it
    must not take the other's jobs for its own leftovers."""
    base_id = f"r{int(time.time() * 1000) % 10**9}"
    job = demo_job_script(tmp_path / "job.sh")
    other = slurm_gateway([slurm_service(cluster, job)], instance_id=f"{base_id}-2")
    r = other.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    other_name = other.job_name()
    assert other_name == f"sg:{base_id}-2:llm:0"
    [(other_job, _, _, _)] = cluster.jobs(other_name)

    # gateway X, one Slurm service on the same login node (held on the
    # down partition: it only needs to get past its recovery scan)
    svc = slurm_service(cluster, job, start_timeout=4,
                        sbatch_args=[f"--chdir={cluster.work_dir}",
                                     f"--partition={cluster.down_partition}"])
    g = slurm_gateway([svc], instance_id=base_id)
    t = _bg_request(g.port, "/llm/pid", 30 * SLACK)
    # the recovery scan is over once X starts its own job
    wait_until(lambda: "starting (slurm launcher" in g.log(), 15 * SLACK, interval=0.1,
               msg="gateway X to finish its recovery scan")
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        live = [j for j in cluster.jobs(other_name) if j[0] == other_job]
        assert live and live[0][2] == "RUNNING", (
            f"gateway {base_id!r} cancelled job {other_job} of gateway {base_id + '-2'!r}: "
            f"{cluster.jobs(other_name)}\n{[ln for ln in g.log().splitlines() if other_job in ln]}")
        time.sleep(0.2)
    # the other gateway's job is never named (its id as a whole word: "28"
    # may well be part of a port number in the log)
    mentions = [ln for ln in g.log().splitlines() if re.search(rf"\bjob {other_job}\b", ln)]
    assert not mentions, mentions
    t.join(20 * SLACK)
    r = other.get("/llm/pid", timeout=30)
    assert r.status == 200, r


def test_slurm_commands_run_locally_without_remote_host(cluster, slurm_gateway, tmp_path):
    """Without remote_host the gateway runs sbatch/squeue/scancel itself and
    reaches the node directly; no ssh at all."""
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job, timeout=3)
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    g = slurm_gateway([svc], env={"SLURM_CONF": cluster.slurm_conf})
    name = g.job_name()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    demo_pid = r.json()["pid"]
    [(job_id, _, state, _)] = cluster.jobs(name)
    assert state == "RUNNING"
    [inst] = g.svc()["instances"]
    assert inst["job_id"] == job_id and inst["node"] == cluster.node, inst
    assert inst["address"] == f"{cluster.node_addr(inst['node'])}:{svc['remote_port']}", inst
    assert g.master_pids() == [] and g.ssh_leftovers() == []
    # idle: cancelled locally too
    wait_until(lambda: not cluster.live_jobs(name), (3 + 2 * 2 + 4) * SLACK, interval=0.2,
               msg="the idle job to be cancelled")
    wait_until(lambda: not pid_alive(demo_pid), 10 * SLACK)


def test_restart_adopts_the_job_on_the_configured_port_when_scontrol_fails(cluster, slurm_gateway,
                                                                         tmp_path):
    """The start-up scan asks `scontrol show job` which port each running job
    was started for. When scontrol fails (and squeue works), it is asked
    again, then the job is taken to use the port the config gives it, as
    before: adopted, not cancelled, the scan not held for long."""
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job)
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    wrap = tmp_path / "bin"
    wrap.mkdir()
    real = shutil.which("scontrol")
    scontrol = wrap / "scontrol"
    scontrol.write_text("#!/bin/sh\n"
                        'if [ "$1 $2 $3" = "-o show job" ]; then\n'
                        '  echo "slurm_load_jobs error: Unable to contact slurm controller" >&2\n'
                        "  exit 1\n"
                        "fi\n"
                        f'exec {real} "$@"\n')
    scontrol.chmod(0o755)
    env = {"SLURM_CONF": cluster.slurm_conf, "PATH": f"{wrap}:{os.environ['PATH']}"}
    g = slurm_gateway([svc], env=env)
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid = r.json()["pid"]
    [(job_id, _, _, _)] = cluster.jobs(g.job_name())
    g.kill9()
    g.restart()
    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200 and r.json()["pid"] == pid, (r, g.log())
    log = g.log(tail=10 ** 7)
    assert f"Slurm job {job_id}: cannot tell which port" in log, log
    assert g.svc()["starts"] == 0
    assert [j[0] for j in cluster.live_jobs(g.job_name())] == [job_id]


def test_stop_while_the_scan_asks_scontrol_cancels_the_earlier_job_not_adopts_it(
        cluster, slurm_gateway, tmp_path):
    """A SIGTERM while the start-up scan waits for `scontrol show job` (which
    port a running job was started for): its answer came during the
    shutdown, and the job was adopted then, into an instance nothing would
    stop: the gateway waited out its shutdown deadline and left the job
    running untracked. Now the earlier run's job is cancelled (no
    keep_jobs_on_exit), as any the shutdown stops."""
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job)
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    asked, go = tmp_path / "asked", tmp_path / "go"
    wrap = tmp_path / "bin"
    wrap.mkdir()
    write_script(wrap / "scontrol", "#!/bin/sh\n"
                 f'if [ -e "{asked}.on" ] && [ "$1 $2 $3" = "-o show job" ]; then\n'
                 f'  : > "{asked}"\n'
                 f'  while [ ! -e "{go}" ]; do sleep 0.05; done\n'
                 "fi\n"
                 f'exec {shutil.which("scontrol")} "$@"\n')
    # a local service that takes its stop_grace to stop keeps the shutdown
    # (and so the event loop) going after the scan's answer
    up = tmp_path / "stubborn-up"
    stubborn = write_script(tmp_path / "stubborn.sh",
                            f"#!/bin/sh\ntrap '' TERM\n: > {up}\nsleep 60 & wait; sleep 60\n")
    loc = demo_service(name="loc", route="loc", bash_file=str(stubborn), stop_grace=6,
                       start_timeout=60)
    env = {"SLURM_CONF": cluster.slurm_conf, "PATH": f"{wrap}:{os.environ['PATH']}"}
    g = slurm_gateway([svc, loc], env=env, shutdown_grace=1)
    assert g.get("/llm/pid", timeout=60).status == 200
    [(job_id, _, _, _)] = cluster.jobs(g.job_name())
    g.kill9()
    (tmp_path / "asked.on").touch()
    g.restart()
    wait_until(asked.exists, 15 * SLACK, interval=0.05, msg="the scan asking scontrol")
    r = http_request(g.port, "GET", "/loc/x", headers={"X-Slurmgate-Wait": "0"}, timeout=10)
    assert r.status == 503, r   # the local service is starting
    wait_until(up.exists, 10 * SLACK, interval=0.05, msg="the local service's TERM trap set")
    g.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "shutting down" in g.log(tail=10 ** 7), 5 * SLACK,
               msg="the shutdown under way")
    go.touch()
    assert g.proc.wait(30 * SLACK) == 0, g.log()
    log = g.log(tail=10 ** 7)
    assert "services did not stop in time" not in log, log
    assert f"Slurm job {job_id}" in log and "the gateway is exiting: cancelling" in log, log
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 15 * SLACK, interval=0.2,
               msg=f"job {job_id} cancelled")
