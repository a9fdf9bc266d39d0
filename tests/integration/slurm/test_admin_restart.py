"""An HPC admin edits the config while Slurm jobs run.

A restart (kill -9, or SIGTERM with keep_jobs_on_exit): every job of the
earlier run is adopted or cancelled by the next start, never left running
untracked, also when the edit removed the last Slurm service or changed
the instance_id that names the jobs.

A reload that renames a service (same route, same port): its new job waits
for the old one, still draining, to end; on the same node it could not
bind the port, and its health check would reach the old job's server."""
import json
import threading

import conftest as base
from conftest import SLACK, demo_service, http_request, reload_services, wait_until
from slurmlib import cluster, demo_job_script, slurm_gateway, slurm_service  # noqa: F401


def rewrite(g, services=None, **top):
    if services is not None:
        g.services = services
        g.config["Services"] = services
    g.config.update(top)
    g.config_path.write_text(json.dumps(g.config, indent=2))


def running_job(cluster, g, route="llm"):
    r = g.get(f"/{route}/pid", timeout=60)
    assert r.status == 200, r
    [(job, _, state, _)] = cluster.jobs(g.job_name(route))
    assert state == "RUNNING"
    return job


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
