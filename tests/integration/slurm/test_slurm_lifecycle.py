"""Slurm launcher, normal life cycle, against a real Slurm cluster reached
through a real loopback sshd: cold start of a job (one sbatch for any number
of held requests), idle cancel, a job cancelled from outside, adoption after
kill -9 of the gateway, and cancel-on-SIGTERM."""
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import SLACK, http_request, pid_alive, wait_until
from slurmlib import cluster, demo_job_script, slurm_gateway, slurm_service  # noqa: F401


def test_50_concurrent_requests_to_a_cold_slurm_service_share_one_job(cluster, slurm_gateway,
                                                                      tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)])
    name = g.job_name()
    assert g.svc()["starts"] == 0
    assert cluster.jobs(name) == []

    n = 50
    barrier = threading.Barrier(n, timeout=10 * SLACK)
    seen_jobs = set()
    stop_watch = threading.Event()

    def watch():
        # what squeue shows for the job name during the whole cold start
        while not stop_watch.is_set():
            try:
                seen_jobs.update(j[0] for j in cluster.jobs(name))
            except Exception:  # noqa: BLE001
                pass
            stop_watch.wait(0.3)

    def one(i):
        barrier.wait()
        return http_request(g.port, "GET", f"/llm/pid?i={i}", timeout=60 * SLACK)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=n) as ex:
            results = list(ex.map(one, range(n)))
    finally:
        stop_watch.set()
        watcher.join(5)
    took = time.monotonic() - t0

    bad = [r for r in results if r.status != 200]
    assert not bad, f"{len(bad)} of {n} held requests failed, e.g. {bad[:3]}"
    pids = {r.json()["pid"] for r in results}
    assert len(pids) == 1, f"answers came from several service processes: {pids}"

    jobs = cluster.jobs(name)
    assert len(jobs) == 1, f"squeue shows {jobs} for {name}"
    job_id, _, state, _ = jobs[0]
    assert state == "RUNNING", jobs
    assert seen_jobs <= {job_id}, f"squeue showed other jobs during the cold start: {seen_jobs}"

    info = g.svc()
    assert info["state"] == "ready", info
    assert info["starts"] == 1, info
    assert info["start_failures"] == 0, info
    [inst] = info["instances"]
    assert inst["job_id"] == job_id, (inst, jobs)
    assert inst["node"] == cluster.node, inst
    assert inst["state"] == "ready", inst
    print(f"cold start of {n} held requests through Slurm took {took:.2f} s")


def test_idle_slurm_job_is_cancelled_after_timeout(cluster, slurm_gateway, tmp_path):
    timeout, poll_slow = 3, 2
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job, timeout=timeout)], poll_slow_s=poll_slow,
                      poll_fast_ms=250)
    name = g.job_name()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    idle_from = time.monotonic()          # the last request is over: the idle clock runs
    demo_pid = r.json()["pid"]
    [(job_id, _, state, _)] = cluster.jobs(name)
    assert state == "RUNNING"

    # not before the timeout ...
    early = idle_from + timeout - 1.0
    while time.monotonic() < early:
        assert cluster.live_jobs(name), f"job {job_id} ended before the idle timeout"
        time.sleep(0.3)

    # ... but within timeout + 2 poll intervals (+ ssh round trips)
    limit = timeout + 2 * poll_slow + 3.0
    wait_until(lambda: not cluster.live_jobs(name), (limit - (time.monotonic() - idle_from)) * SLACK,
               interval=0.2, msg=f"job {job_id} to leave squeue or be CANCELLED")
    gone_after = time.monotonic() - idle_from
    rows = cluster.jobs(name)
    assert all(row[0] == job_id for row in rows), rows
    assert all(row[2] == "CANCELLED" for row in rows), f"idle job should be CANCELLED: {rows}"

    # the gateway saw it end; the service process is gone with the job
    info = g.wait_svc(lambda i: i["state"] == "stopped" and not i["instances"], 10,
                      msg="service stopped after idle")
    assert info["starts"] == 1
    wait_until(lambda: not pid_alive(demo_pid), 10 * SLACK, msg=f"demo pid {demo_pid} to exit")
    print(f"idle job cancelled {gone_after:.2f} s after the last request (timeout {timeout} s)")


def test_job_cancelled_from_outside_is_detected_and_next_request_starts_a_new_one(
        cluster, slurm_gateway, tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)], poll_slow_s=2)
    name = g.job_name()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid1 = r.json()["pid"]
    [(job1, _, _, _)] = cluster.jobs(name)
    assert g.svc()["instances"][0]["job_id"] == job1

    cluster.scancel(job1)
    t0 = time.monotonic()
    # squeue may first show the job COMPLETING (the instance is held, the
    # state leaves ready) and only at a later poll gone; then the end is
    # recorded with the job's output tail (one more command to the cluster)
    info = g.wait_svc(lambda i: i["state"] != "ready" and i["last_error"] and job1 in i["last_error"],
                      2 * 2 + 8, msg="the gateway to notice the scancel and record the job's end")
    noticed = time.monotonic() - t0

    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid2 = r.json()["pid"]
    assert pid2 != pid1
    info = g.svc()
    assert info["starts"] == 2, info
    [inst] = info["instances"]
    job2 = inst["job_id"]
    assert job2 and job2 != job1, inst
    live = cluster.live_jobs(name)
    assert [j[0] for j in live] == [job2], f"squeue: {cluster.jobs(name)}"
    print(f"external scancel noticed after {noticed:.2f} s")


def test_kill9_then_restart_adopts_the_running_job_without_a_second_sbatch(
        cluster, slurm_gateway, tmp_path):
    timeout = 4
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job, timeout=timeout)])
    name = g.job_name()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid1 = r.json()["pid"]
    [(job1, _, _, _)] = cluster.jobs(name)
    masters = g.master_pids()
    assert len(masters) == 1, masters

    assert g.kill9() == -signal.SIGKILL
    # the master goes with the gateway (PDEATHSIG); the job stays
    wait_until(lambda: not any(pid_alive(p) for p in masters), 5 * SLACK,
               msg="the ssh master to die with the gateway")
    assert [j[0] for j in cluster.live_jobs(name)] == [job1]
    assert pid_alive(pid1)

    t0 = time.monotonic()
    g.restart()
    r = g.get("/llm/pid", timeout=60)
    took = time.monotonic() - t0
    assert r.status == 200, r
    assert r.json()["pid"] == pid1, "not served by the adopted job's service"
    idle_from = time.monotonic()

    jobs = cluster.jobs(name)
    assert [j[0] for j in jobs] == [job1], f"a second job was submitted: {jobs}"
    info = g.svc()
    assert info["starts"] == 0, f"adoption counted as a start: {info}"
    [inst] = info["instances"]
    assert inst["job_id"] == job1, inst
    assert inst["node"] == cluster.node, inst
    assert "adopting Slurm job" in g.log(), g.log()

    # and the adopted job still idles out
    wait_until(lambda: not cluster.live_jobs(name), (timeout + 2 * 2 + 6) * SLACK, interval=0.2,
               msg=f"adopted job {job1} to be cancelled after idle")
    assert time.monotonic() - idle_from >= timeout - 0.5
    assert all(j[2] == "CANCELLED" for j in cluster.jobs(name)), cluster.jobs(name)
    assert [j[0] for j in cluster.jobs(name)] == [job1]
    print(f"restart + adoption + first answer took {took:.2f} s")


def test_sigterm_cancels_the_jobs_and_leaves_no_ssh_master(cluster, slurm_gateway, tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job),
                       slurm_service(cluster, job, name="other", route="other")])
    r1 = g.get("/llm/pid", timeout=60)
    r2 = g.get("/other/pid", timeout=60)
    assert r1.status == 200 and r2.status == 200, (r1, r2)
    demo_pids = [r1.json()["pid"], r2.json()["pid"]]
    names = [g.job_name("llm"), g.job_name("other")]
    for n in names:
        assert len(cluster.live_jobs(n)) == 1, cluster.jobs(n)
    masters = g.master_pids()
    assert len(masters) == 1, f"one ssh master per login node expected: {masters}"

    t0 = time.monotonic()
    rc = g.terminate(timeout=30)
    took = time.monotonic() - t0
    assert rc == 0, f"exit code {rc}\n{g.log()}"

    # the jobs were cancelled before the gateway exited, not after
    for n in names:
        assert cluster.live_jobs(n) == [], f"job left after SIGTERM: {cluster.jobs(n)}"
    wait_until(lambda: not any(pid_alive(p) for p in masters + g.ssh_leftovers()), 5 * SLACK,
               msg="ssh master to exit")
    assert g.ssh_leftovers() == []
    wait_until(lambda: not any(pid_alive(p) for p in demo_pids), 10 * SLACK,
               msg="service processes of the cancelled jobs to exit")
    assert not os.path.exists(os.path.join(g.config["state_dir"], "cm-0")), \
        "the control socket is left behind"
    print(f"SIGTERM -> exit with jobs cancelled in {took:.2f} s")


def test_keep_jobs_on_exit_leaves_the_job_for_the_next_start_to_adopt(cluster, slurm_gateway,
                                                                       tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job, timeout=60)], keep_jobs_on_exit=True)
    name = g.job_name()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid1 = r.json()["pid"]
    [(job1, _, _, _)] = cluster.jobs(name)

    assert g.terminate() == 0
    assert "left running (keep_jobs_on_exit)" in g.log(), g.log()
    assert [j[0] for j in cluster.live_jobs(name)] == [job1], "the job was cancelled at exit"
    assert pid_alive(pid1)

    g.restart()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    assert r.json()["pid"] == pid1, "not served by the kept job"
    info = g.svc()
    assert info["starts"] == 0 and info["instances"][0]["job_id"] == job1, info
    assert [j[0] for j in cluster.jobs(name)] == [job1], "a second job was submitted"
    # an admin stop still cancels it (and leaves nothing for the teardown)
    r = http_request(g.port, "POST", "/api/services/demo/stop", timeout=30)
    assert r.status == 202, r
    wait_until(lambda: not cluster.live_jobs(name), 20 * SLACK, interval=0.2,
               msg=f"job {job1} to be cancelled by the admin stop")
