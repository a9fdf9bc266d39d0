"""An HPC admin edits the config while Slurm jobs run.

A restart (kill -9, or SIGTERM with keep_jobs_on_exit): every job of the
earlier run is adopted or cancelled by the next start, never left running
untracked, also when the edit removed the last Slurm service or changed
the instance_id that names the jobs.

A restart with an edited Slurm service: a running job is adopted as it
is, as a reload keeps a running instance: it serves on the port it was
started for (its command line in Slurm says which: the script gets it as
$1), and the change (remote_port, bash_file) applies to the next job. A
restart during a walltime handover adopts both jobs: the old one serves
until the replacement is ready and takes over, as it would have.

A reload that renames a service (same route, same port): its new job waits
for the old one, still draining, to end; on the same node it could not
bind the port, and its health check would reach the old job's server."""
import json
import re
import threading

import conftest as base
from conftest import SLACK, demo_service, http_request, reload_services, wait_until
from slurmlib import (cluster, demo_job_script, nodes, running_job, slurm_gateway,  # noqa: F401
                      slurm_service)


def rewrite(g, services=None, **top):
    if services is not None:
        g.services = services
        g.config["Services"] = services
    g.config.update(top)
    g.config_path.write_text(json.dumps(g.config, indent=2))


def test_restart_without_any_slurm_service_cancels_the_earlier_runs_jobs(cluster, slurm_gateway,
                                                                          tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    local = demo_service(name="local", route="local")
    g = slurm_gateway([slurm_service(cluster, job), local], keep_jobs_on_exit=True)
    job1 = running_job(cluster, g)
    assert g.terminate() == 0
    assert [j[0] for j in cluster.live_jobs(g.job_name())] == [job1]
    # the admin moves the model off the cluster: no Slurm service is left
    rewrite(g, [local])
    g.restart()
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 15 * SLACK, interval=0.2,
               msg=f"the earlier run's job {job1} to be cancelled")
    assert f"Slurm job {job1}" in g.log(), g.log()


def test_restart_with_a_new_instance_id_names_but_never_cancels_the_old_ids_jobs(
        cluster, slurm_gateway, tmp_path):
    """The record of an earlier run keeps its instance_id, but a job named by
    it may be another gateway's now (a cloned config and state_dir, a
    shared home on two login nodes): the start-up scan cancelled every such
    job, RUNNING ones included. It must name the job in the log and leave
    it to the admin."""
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job)
    g = slurm_gateway([svc])
    old_name = g.job_name()
    job1 = running_job(cluster, g)
    g.kill9()
    try:
        # the admin names this gateway's jobs explicitly from now on; the
        # old job, left running, still holds its port on its node: the new
        # one gets another, or it could not listen where they meet
        g.instance_id = g.instance_id + "-new"
        rewrite(g, [dict(svc, remote_port=base.free_port_block(2))],
                instance_id=g.instance_id)
        g.restart()
        line = wait_until(lambda: [ln for ln in g.log(tail=10 ** 7).splitlines()
                                   if f"Slurm job {job1}" in ln and "earlier instance_id" in ln],
                          15 * SLACK, interval=0.2, msg=f"the log to name job {job1}")
        assert "scancel" in line[0], line
        wait_until(lambda: "looked for Slurm jobs of an earlier run" in g.log(tail=10 ** 7),
                   15 * SLACK, interval=0.2, msg="the recovery scan")
        job2 = running_job(cluster, g)
        assert job2 != job1
        assert [j[0] for j in cluster.live_jobs(old_name)] == [job1], "the old id's job was cancelled"
    finally:
        cluster.cancel_prefix(old_name)
        wait_until(lambda: not cluster.live_jobs(old_name), 30, interval=0.5,
                   msg="the old id's job cancelled by the test")


def test_renamed_slurm_service_waits_for_its_old_job_to_end(cluster, slurm_gateway, tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    # one node: the new job lands where the old one runs
    svc = slurm_service(cluster, job, sbatch_args=[f"--chdir={cluster.work_dir}",
                                                   f"--nodelist={cluster.node}"])
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    old_pid = r.json()["pid"]
    [(job1, _, _, _)] = cluster.jobs(g.job_name())
    res = {}

    def stream():   # keeps the old instance draining for a while
        res["r"] = http_request(g.port, "GET", "/llm/stream?n=20&ms=100", timeout=30 * SLACK)

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    wait_until(lambda: g.svc()["in_flight"] == 1, 5 * SLACK, msg="the stream in flight")
    reload_services(g, [dict(svc, name="demo2")])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    assert r.json()["pid"] != old_pid, "answered by the removed service's job"
    t.join(30 * SLACK)
    assert res["r"].status == 200 and res["r"].body.endswith(b"data: 19\n\n"), res
    jobs = cluster.jobs(g.job_name())
    assert [j[2] for j in jobs if j[0] != job1] == ["RUNNING"], jobs
    assert g.get("/llm/pid", timeout=10).json()["pid"] == r.json()["pid"]
    assert g.svc("demo2")["starts"] == 1


def test_restart_with_a_changed_remote_port_serves_the_adopted_job_on_its_own_port(
        cluster, slurm_gateway, tmp_path):
    """The admin moves a Slurm service to another remote_port (and another
    bash_file) and restarts the gateway (systemctl restart: SIGTERM, with
    keep_jobs_on_exit). The running job was started for the old port and
    serves there, but the restart adopted it and probed the new port:
    requests waited start_timeout before a new job was submitted. The port
    is in the job's command line in Slurm (Command=SCRIPT PORT), written by
    every version of the gateway and there whatever became of state_dir (its
    record is removed here): the adopted job serves on its own port at once;
    the next job uses the config's new port and script."""
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job, start_timeout=40)
    old_port = svc["remote_port"]
    g = slurm_gateway([svc], keep_jobs_on_exit=True)
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid1 = r.json()["pid"]
    [(job1, _, _, _)] = cluster.jobs(g.job_name())
    assert g.terminate() == 0
    assert [j[0] for j in cluster.live_jobs(g.job_name())] == [job1]

    new_port = base.free_port()
    job2 = demo_job_script(tmp_path / "job2.sh")
    rewrite(g, [dict(svc, remote_port=new_port, bash_file=str(job2))])
    (g.state_dir / "slurm_targets.json").unlink()
    g.restart()
    try:
        r = g.get("/llm/pid", timeout=15)   # start_timeout is 40 s
    except OSError as e:
        raise AssertionError(f"the adopted job {job1} was not served on its port {old_port}: "
                             f"{e!r}\n{g.log()}") from None
    assert r.status == 200 and r.json()["pid"] == pid1, (r, g.log())
    info = g.svc()
    [inst] = info["instances"]
    assert inst["job_id"] == job1 and inst["port"] == old_port, inst
    assert info["starts"] == 0, info
    log = g.log(tail=10 ** 7)
    assert re.search(rf"adopting Slurm job {job1} .*port {old_port}", log), log
    assert re.search(rf"Slurm job {job1} .*remote_port is {new_port}", log), log
    assert re.search(rf"Slurm job {job1} .*bash_file is {re.escape(str(job2))}", log), log

    # the next job: the config's port and script
    r = http_request(g.port, "POST", "/api/services/demo/stop", timeout=30)
    assert r.status in (200, 202), r
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 20 * SLACK, interval=0.2,
               msg=f"job {job1} to end")
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200 and r.json()["port"] == new_port, r
    [(job3, _, _, _)] = cluster.live_jobs(g.job_name())
    assert cluster.show_job(job3)["Command"] == f"{job2} {new_port}"
    # keep_jobs_on_exit would leave it running after the test
    assert http_request(g.port, "POST", "/api/services/demo/stop", timeout=30).status in (200, 202)
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 20 * SLACK, interval=0.2,
               msg=f"job {job3} to end")


def handover_service(cluster, tmp_path, gated, **kw):
    """A service whose job starts its walltime handover at once (--time=1,
    handover_lead 58 s), on ports p (the first job) and p + 1 (the
    replacement): (p, gate, svc). The job on port GATED (an offset, 0 or 1)
    listens only once the test touches gate."""
    p = base.free_port_block(2)
    gate = tmp_path / "go"
    hold = f'if [ "$1" = "{p + gated}" ]; then while [ ! -e "{gate}" ]; do sleep 0.1; done; fi\n'
    job = demo_job_script(tmp_path / "job.sh", extra="#SBATCH --time=1\n" + hold)
    return p, gate, slurm_service(cluster, job, remote_port=p, max_instances=1,
                                  handover_lead=58, timeout=300, **kw)


def test_restart_during_a_walltime_handover_lets_the_replacement_take_over(
        cluster, slurm_gateway, tmp_path):
    """A job near its time limit (here: --time=1 and handover_lead 58 s: at
    once) serves while its replacement starts. A restart then cancelled the
    replacement (its index is one above max_instances) and adopted the old
    job, whose time limit started another handover right after. Both are
    adopted now: the old job serves, the replacement finishes its start and
    takes over."""
    # the replacement (port p + 1) runs but listens only once the test says so
    p, gate, svc = handover_service(cluster, tmp_path, gated=1)
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid_a = r.json()["pid"]
    [(job_a, _, _, _)] = cluster.jobs(g.job_name())
    rows = wait_until(lambda: [j for j in cluster.jobs(prefix=g.job_name(index=1))
                               if j[2] == "RUNNING"],
                      30 * SLACK, interval=0.2, msg="the replacement's job to run")
    job_b = rows[0][0]
    g.kill9()
    # a lead the replacement does not reach before the test ends (58 s would
    # start the next handover as soon as it is ready)
    rewrite(g, [dict(svc, handover_lead=10)])
    g.restart()

    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200 and r.json()["pid"] == pid_a, (r, g.log())
    live = {j[0]: j[2] for j in cluster.live_jobs(prefix=g.job_prefix)}
    assert live == {job_a: "RUNNING", job_b: "RUNNING"}, (live, g.log())
    log = g.log(tail=10 ** 7)
    assert re.search(rf"adopting Slurm job {job_b} .*replacement", log), log

    gate.touch()
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 30 * SLACK, interval=0.2,
               msg=f"the replaced job {job_a} to be cancelled")
    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200 and r.json()["port"] == p + 1, r
    pid_b = r.json()["pid"]
    assert "handover from [0] to [1]" in g.log(tail=10 ** 7)
    assert {j[0] for j in cluster.jobs(prefix=g.job_prefix)} == {job_a, job_b}
    assert g.svc()["starts"] == 0


def test_restart_during_a_walltime_handover_below_max_instances_pairs_by_the_jobs_name(
        cluster, slurm_gateway, tmp_path):
    """With max_instances 2 and one job running, its walltime handover's
    replacement takes the lowest free index (1), not max_instances. A
    restart paired a handover only when a service had one job more than
    max_instances (then guessing the newest job as the replacement): here it
    counted 2 jobs for 2 slots, adopted the replacement as an instance of its
    own (a queued one was cancelled), and the old job was never drained. The
    replacement's name says which job it replaces (sg:...:1.rID): the
    restart pairs them from that, whatever the count or the order of ids."""
    p, gate, svc = handover_service(cluster, tmp_path, gated=1)
    svc["max_instances"] = 2
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid_a = r.json()["pid"]
    [(job_a, _, _, _)] = cluster.jobs(g.job_name())
    rows = wait_until(lambda: [j for j in cluster.jobs(prefix=g.job_name(index=1))
                               if j[2] == "RUNNING"],
                      30 * SLACK, interval=0.2, msg="the replacement's job to run")
    job_b, name_b = rows[0][0], rows[0][1]
    g.kill9()
    rewrite(g, [dict(svc, handover_lead=10)])
    g.restart()

    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200 and r.json()["pid"] == pid_a, (r, g.log())
    log = g.log(tail=10 ** 7)
    assert re.search(rf"adopting Slurm job {job_b} .*replacement of Slurm job {job_a}", log), log
    gate.touch()
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 30 * SLACK, interval=0.2,
               msg=f"the replaced job {job_a} to be cancelled")
    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200 and r.json()["port"] == p + 1, r
    assert "handover from [0] to [1]" in g.log(tail=10 ** 7)
    assert g.svc()["starts"] == 0
    assert name_b == f"{g.job_name(index=1)}.r{job_a}", name_b


def test_restart_during_two_walltime_handovers_pairs_each_replacement_with_its_own_job(
        cluster, slurm_gateway, tmp_path):
    """Two jobs (min_instances 2, max_instances 3) near their time limits,
    each with its replacement starting (at indexes 2 and 3) when the gateway
    restarts. The scan paired at most one handover per service, guessing the
    newest job as the replacement of the running one with least time left:
    the other replacement was adopted as an instance of its own, its old job
    never drained. Each replacement names its old job: both pairs adopted."""
    p = base.free_port_block(4)
    gate = tmp_path / "go"
    hold = (f'case "$1" in {p + 2}|{p + 3}) while [ ! -e "{gate}" ]; do sleep 0.1; done;; '
            'esac\n')
    job = demo_job_script(tmp_path / "job.sh", extra="#SBATCH --time=1\n" + hold)
    svc = slurm_service(cluster, job, remote_port=p, min_instances=2, max_instances=3,
                        handover_lead=58, timeout=300)
    g = slurm_gateway([svc])

    def replacements():
        rows = [j for j in cluster.jobs(prefix=g.job_prefix) if j[2] == "RUNNING"]
        return rows if len(rows) == 4 else None
    rows = wait_until(replacements, 60 * SLACK, interval=0.2, msg="two jobs and two replacements")
    ids = {name.rsplit(":", 1)[1].split(".")[0]: jid for jid, name, _, _ in rows}
    olds = {ids["0"], ids["1"]}
    g.kill9()
    rewrite(g, [dict(svc, handover_lead=10)])
    g.restart()
    wait_until(lambda: g.log(tail=10 ** 7).count("looked for Slurm jobs of an earlier run") == 2,
               15 * SLACK, interval=0.2, msg="the recovery scan")
    log = g.log(tail=10 ** 7).split("--- run 2 ---")[1]
    paired = re.findall(r"adopting Slurm job (\d+) .*replacement of Slurm job (\d+)", log)
    assert len(paired) == 2 and {old for _, old in paired} == olds, (paired, rows, log)
    gate.touch()
    wait_until(lambda: not {j[0] for j in cluster.live_jobs(prefix=g.job_prefix)} & olds,
               40 * SLACK, interval=0.2, msg="both replaced jobs to be cancelled")
    live = {j[0] for j in cluster.live_jobs(prefix=g.job_prefix)}
    assert live == {new for new, _ in paired}, (live, paired, g.log(tail=10 ** 7))
    assert g.svc()["starts"] == 0


def test_restart_during_a_walltime_handover_keeps_a_pending_replacement(
        nodes, slurm_gateway, tmp_path):
    """The replacement waits in the queue (here: for its node, drained) when
    the gateway restarts. It was cancelled as a pending job nobody waits
    for, and its place in the queue lost; it is the handover's replacement
    and is adopted as it waits: it starts when Slurm lets it and takes over."""
    cluster = nodes
    # the first job (port p) listens once the test says so: its handover
    # starts when it is ready, after its node is drained
    p, gate, svc = handover_service(cluster, tmp_path, gated=0,
                                    sbatch_args=[f"--chdir={cluster.work_dir}",
                                                 f"--nodelist={cluster.node}"])
    g = slurm_gateway([svc])
    t = threading.Thread(target=lambda: g.get("/llm/pid", timeout=60), daemon=True)
    t.start()
    [(job_a, _, _, _)] = wait_until(
        lambda: [j for j in cluster.jobs(g.job_name()) if j[2] == "RUNNING"], 30 * SLACK,
        interval=0.2, msg="the first job to run")
    cluster.scontrol_node(cluster.node, "drain")
    gate.touch()
    t.join(60 * SLACK)
    rows = wait_until(lambda: cluster.jobs(prefix=g.job_name(index=1)), 30 * SLACK, interval=0.2,
                      msg="the replacement's job")
    job_b = rows[0][0]
    assert rows[0][2] == "PENDING", rows
    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200, r
    pid_a = r.json()["pid"]
    g.kill9()
    rewrite(g, [dict(svc, handover_lead=10)])
    g.restart()

    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200 and r.json()["pid"] == pid_a, (r, g.log())
    wait_until(lambda: "looked for Slurm jobs of an earlier run" in g.log(tail=10 ** 7),
               15 * SLACK, interval=0.2, msg="the recovery scan")
    log = g.log(tail=10 ** 7)
    assert re.search(rf"adopting Slurm job {job_b} \(PENDING, .*replacement", log), log
    live = {j[0]: j[2] for j in cluster.live_jobs(prefix=g.job_prefix)}
    assert live == {job_a: "RUNNING", job_b: "PENDING"}, (live, log)
    insts = {i["job_id"]: i["state"] for i in g.svc()["instances"]}
    assert insts == {job_a: "ready", job_b: "starting"}, insts

    # its node is back: the replacement runs and takes over
    cluster.scontrol_node(cluster.node, "resume")
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 30 * SLACK, interval=0.2,
               msg=f"the replaced job {job_a} to be cancelled")
    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200 and r.json()["port"] == p + 1, (r, g.log())
    assert {j[0] for j in cluster.jobs(prefix=g.job_prefix)} == {job_a, job_b}
    assert g.svc()["starts"] == 0


def test_restart_after_a_walltime_handover_adopts_the_job_that_took_over(
        cluster, slurm_gateway, tmp_path):
    """After a walltime handover the replacement serves alone, at index
    max_instances (one above the others: the handover's slot) until its
    own handover. A restart took that index for out of range and cancelled
    the service's only job; a reload drained it (the same test on its index)."""
    p, gate, svc = handover_service(cluster, tmp_path, gated=1)
    g = slurm_gateway([svc])
    assert g.get("/llm/pid", timeout=60).status == 200
    wait_until(lambda: [j for j in cluster.jobs(prefix=g.job_name(index=1)) if j[2] == "RUNNING"],
               30 * SLACK, interval=0.2, msg="the replacement's job to run")
    # a lead the replacement does not reach before the test ends
    reload_services(g, [dict(svc, handover_lead=10)])
    gate.touch()
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 30 * SLACK, interval=0.2,
               msg="the replaced job to end")
    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200 and r.json()["port"] == p + 1, r
    pid_b = r.json()["pid"]
    [(job_b, _, _, _)] = cluster.live_jobs(prefix=g.job_prefix)

    g.kill9()
    g.restart()
    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200 and r.json()["pid"] == pid_b, (r, g.log())
    assert [j[0] for j in cluster.live_jobs(prefix=g.job_prefix)] == [job_b]
    assert g.svc()["starts"] == 0

    # a reload keeps it too: it is the one instance of max_instances 1
    # (it was drained as "above max_instances", by its index)
    reload_services(g)
    r = g.get("/llm/pid", timeout=15)
    assert r.status == 200 and r.json()["pid"] == pid_b, (r, g.log())
    [inst] = g.svc()["instances"]
    assert inst["job_id"] == job_b and inst["state"] == "ready", inst
    assert "above max_instances" not in g.log(tail=10 ** 8)
