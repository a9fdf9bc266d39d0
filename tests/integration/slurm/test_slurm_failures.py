"""Slurm launcher, things going wrong: a job Slurm keeps PENDING, a job whose
script fails, and the ssh ControlMaster dying under a running service."""
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import SLACK, http_request, pid_alive, wait_until
from slurmlib import (cluster, demo_job_script, linger_lines,  # noqa: F401
                      slurm_gateway, slurm_service, write_script)


def test_pending_job_reports_slurm_reason_and_is_cancelled_after_start_timeout(
        cluster, slurm_gateway, tmp_path):
    start_timeout = 6
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job, start_timeout=start_timeout,
                        sbatch_args=[f"--chdir={cluster.work_dir}",
                                     f"--partition={cluster.down_partition}"])
    g = slurm_gateway([svc])
    name = g.job_name()

    with ThreadPoolExecutor(max_workers=1) as ex:
        t0 = time.monotonic()
        fut = ex.submit(http_request, g.port, "GET", "/llm/pid", timeout=(start_timeout + 30) * SLACK)

        # while held, /check_llm tells why: Slurm's own reason
        chk = {}

        def reason_shown():
            chk.update(g.check())
            return "PartitionDown" in chk["reason"]

        try:
            wait_until(reason_shown, start_timeout * SLACK, interval=0.2)
        except AssertionError:
            raise AssertionError(f"/check_llm never named PartitionDown: {chk}") from None
        assert chk["started"] is True and chk["running"] is False, chk
        jobs = cluster.jobs(name)
        assert len(jobs) == 1 and jobs[0][2] == "PENDING" and jobs[0][3] == "PartitionDown", jobs
        job_id = jobs[0][0]
        assert job_id in chk["reason"], chk
        inst = g.svc()["instances"][0]
        assert inst["job_id"] == job_id and "PartitionDown" in inst["detail"], inst

        r = fut.result(timeout=(start_timeout + 30) * SLACK)
    waited = time.monotonic() - t0
    assert r.status == 502, r
    err = r.json()["error"]
    assert "PartitionDown" in err, f"the 502 does not name Slurm's reason: {err!r}"
    assert "start_timeout" in err, err
    assert start_timeout - 0.5 <= waited <= start_timeout + 10, waited
    assert r.header("Retry-After") is not None

    # no leak: the pending job is cancelled
    wait_until(lambda: not cluster.live_jobs(name), 10 * SLACK, interval=0.2,
               msg=f"pending job {job_id} to be cancelled")
    rows = cluster.jobs(name)
    assert all(row[2] == "CANCELLED" for row in rows), rows
    info = g.wait_svc(lambda i: not i["instances"], 10, msg="instance gone")
    assert info["state"] == "failed", info
    assert "PartitionDown" in (info["last_error"] or ""), info
    assert "PartitionDown" in g.check()["reason"]
    print(f"502 after {waited:.2f} s: {err}")


def held_requests_fail_with_one_failed_job(cluster, g, n):
    """N requests held for a start whose one job fails: each gets the 502
    naming the job and FAILED, and the service counts one failed start.
    Returns (the job's id, seconds the requests took)."""
    with ThreadPoolExecutor(max_workers=n) as ex:
        t0 = time.monotonic()
        results = list(ex.map(lambda i: http_request(g.port, "GET", f"/llm/pid?i={i}",
                                                     timeout=60 * SLACK), range(n)))
    took = time.monotonic() - t0
    assert all(r.status == 502 for r in results), results
    jobs = cluster.jobs(g.job_name())
    assert len(jobs) == 1, f"one job for all held requests: {jobs}"
    job1, _, state1, _ = jobs[0]
    assert state1 == "FAILED", jobs
    for r in results:
        err = r.json()["error"]
        assert job1 in err, f"the 502 does not name job {job1}: {err!r}"
        assert "FAILED" in err, f"the 502 does not name the job state FAILED: {err!r}"
    info = g.svc()
    assert info["starts"] == 1 and info["start_failures"] == 1, info
    assert info["state"] == "failed" and job1 in info["last_error"], info
    return job1, took


def test_job_that_exits_1_fails_held_requests_with_state_and_id_and_next_request_resubmits(
        cluster, slurm_gateway, tmp_path):
    job = write_script(tmp_path / "fail.sh", "#!/bin/sh\necho 'starting and failing' >&2\nexit 1\n")
    g = slurm_gateway([slurm_service(cluster, job, start_timeout=120)])
    name = g.job_name()

    job1, took = held_requests_fail_with_one_failed_job(cluster, g, 5)
    # far sooner than start_timeout (120 s): the gateway saw the job end
    assert took < 20 * SLACK, f"the failure took {took:.1f} s to reach the client"

    # the next request submits a new job (the first failure has no back-off)
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 502, r
    info = g.svc()
    assert info["starts"] == 2, info
    err2 = r.json()["error"]
    m = re.search(r"Slurm job (\d+)", err2)
    assert m, f"the second 502 names no job: {err2!r}"
    job2 = m.group(1)
    assert job2 != job1 and "FAILED" in err2, err2
    # (job1 may have been purged from squeue by now: MinJobAge=10)
    ids = {j[0] for j in cluster.jobs(name)}
    assert job2 in ids and ids <= {job1, job2}, f"squeue: {cluster.jobs(name)}"
    assert cluster.live_jobs(name) == []
    # both failed starts are counted as the launcher's kind "job_ended"
    assert failures(g, "demo") == {"job_ended": 2}, failures(g, "demo")
    print(f"failure reported after {took:.2f} s: {err2}")


def test_job_that_fails_and_lingers_completing_is_a_failed_start_not_an_unexpected_exit(
        cluster, slurm_gateway, tmp_path):
    """A start script that exits 1, and a job Slurm shows COMPLETING for a
    while (an epilog that takes its time, the usual thing on real clusters)
    before FAILED. The instance is held while COMPLETING (the job might be
    requeued); when it then ends, having never been ready, that is a failed
    start: the waiting requests get the 502 with the job's state, and no
    second job is started for them. Before, its end counted as "instance
    exited unexpectedly" and the waiting requests got a new job."""
    # it runs for 2 s first, so that squeue (every 0.5 s at most while it
    # starts) sees it RUNNING and then COMPLETING, not only its end
    job = write_script(tmp_path / "fail.sh", "#!/bin/sh\n" + linger_lines(cluster, 3) +
                       "echo 'starting and failing' >&2\nsleep 2\nexit 1\n")
    g = slurm_gateway([slurm_service(cluster, job, start_timeout=120)])

    held_requests_fail_with_one_failed_job(cluster, g, 3)
    assert "completing" in g.log(), "the gateway never saw the job COMPLETING:\n" + g.log()
    assert "exited unexpectedly" not in g.log()
    assert failures(g, "demo") == {"job_ended": 1}, failures(g, "demo")


def failures(g, service):
    """The nonzero slurmgate_start_failures_total samples of SERVICE, by reason."""
    out = {}
    for line in g.get("/metrics").text.splitlines():
        m = re.match(r'slurmgate_start_failures_total\{service="([^"]*)",reason="([^"]*)"\} (\d+)$',
                     line)
        if m and m.group(1) == service and int(m.group(3)) > 0:
            out[m.group(2)] = int(m.group(3))
    return out


def test_sbatch_refusal_is_counted_as_submit_failed(cluster, slurm_gateway, tmp_path):
    """sbatch refuses the job (no such partition): the start fails at once,
    with sbatch's words, and /metrics counts it as "submit_failed"."""
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job,
                                     sbatch_args=[f"--chdir={cluster.work_dir}",
                                                  "--partition=sg_no_such_partition"])])
    r = g.get("/llm/pid", timeout=30)
    assert r.status == 502, r
    err = r.json()["error"]
    assert "sbatch failed" in err and "partition" in err, err
    assert failures(g, "demo") == {"submit_failed": 1}, failures(g, "demo")
    assert cluster.live_jobs(g.job_name()) == []


def test_killed_ssh_master_is_recovered_and_only_requests_in_flight_fail(
        cluster, slurm_gateway, tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)])
    name = g.job_name()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    demo_pid = r.json()["pid"]
    [(job_id, _, _, _)] = cluster.jobs(name)
    [master] = g.master_pids()

    # requests in flight when the master dies (their ssh channels die with it)
    in_flight = 3
    ex = ThreadPoolExecutor(max_workers=in_flight)
    try:
        futs = [ex.submit(http_request, g.port, "GET", "/llm/slow?ms=3000", timeout=40 * SLACK)
                for _ in range(in_flight)]
        wait_until(lambda: g.svc()["in_flight"] == in_flight, 5 * SLACK, msg="requests in flight")
        os.kill(master, signal.SIGKILL)
        wait_until(lambda: not pid_alive(master), 5 * SLACK)
        t_kill = time.monotonic()

        # then requests one after another until the service answers again
        after = []
        deadline = time.monotonic() + 30 * SLACK
        ok_streak = 0
        while ok_streak < 3:
            assert time.monotonic() < deadline, \
                f"no recovery within 30 s of killing the ssh master; answers: {after}"
            try:
                resp = http_request(g.port, "GET", "/llm/pid", timeout=30 * SLACK)
                after.append((round(time.monotonic() - t_kill, 2), resp.status, resp.body[:200]))
                ok_streak = ok_streak + 1 if resp.status == 200 else 0
            except OSError as e:
                after.append((round(time.monotonic() - t_kill, 2), "error", repr(e)))
                ok_streak = 0
            if ok_streak == 0:
                time.sleep(0.2)
        first = [f.result(timeout=40 * SLACK) for f in futs]
    finally:
        ex.shutdown(wait=True)
    recovered = time.monotonic() - t_kill

    failed_in_flight = [x for x in first if x.status != 200]
    failed_after = [a for a in after if a[1] != 200]
    assert len(failed_in_flight) + len(failed_after) <= in_flight, (
        f"{len(failed_in_flight)} requests in flight and {len(failed_after)} requests sent "
        f"after the master died failed; only the {in_flight} in flight may: "
        f"in flight {[(x.status, x.body[:120]) for x in first]}, after {after}")

    # same job, same service process, a new master
    new = g.master_pids()
    assert len(new) == 1 and new[0] != master, new
    info = g.svc()
    assert info["state"] == "ready" and info["starts"] == 1, info
    assert info["instances"][0]["job_id"] == job_id
    assert g.get("/llm/pid").json()["pid"] == demo_pid
    assert [j[0] for j in cluster.live_jobs(name)] == [job_id]
    print(f"recovered {recovered:.2f} s after the master was killed; in flight: "
          f"{[x.status for x in first]}; after: {after}")
