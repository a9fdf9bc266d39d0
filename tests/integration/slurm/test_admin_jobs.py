"""A Slurm administrator acts on the gateway's jobs (issue: hslurm2).

What admins (and Slurm itself) do to RUNNING or PENDING jobs on a real
cluster, beyond what tests/chaos does (scancel, requeue, suspend, drain,
down, node crash): a time limit changed under a running job, a pending job
held and released, a running job requeued and held, a job renamed, a job
submitted by hand under a name of the gateway's. The gateway must stay
right: no request failed or hung beyond what cannot be helped, no job
leaked or started twice, /api and /check_ true, the reason in both.
"""
import re
import time
from concurrent.futures import ThreadPoolExecutor

import conftest as base
from conftest import SLACK, http_request, wait_until
from slurmlib import cluster, demo_job_script, slurm_gateway, slurm_service  # noqa: F401


def warm(g, cluster, route="llm"):
    """Start the service; its job id."""
    r = g.get(f"/{route}/pid", timeout=60)
    assert r.status == 200, r
    [(job_id, _, state, _)] = cluster.jobs(g.job_name(route))
    assert state == "RUNNING"
    return job_id


def time_limit_service(cluster, tmp_path, minutes, lead, **kw):
    """A service whose job has a time limit of MINUTES and a walltime
    handover LEAD seconds before it (the replacement on remote_port + 1)."""
    p = base.free_port_block(2)
    job = demo_job_script(tmp_path / "job.sh", extra=f"#SBATCH --time={minutes}\n")
    return slurm_service(cluster, job, remote_port=p, max_instances=1, handover_lead=lead,
                         timeout=300, **kw)


def left(g):
    insts = g.svc()["instances"]
    return insts[0]["time_left_seconds"] if len(insts) == 1 else None


def elapsed_s(cluster, job_id):
    """How long the job has run, as Slurm says (RunTime)."""
    rt = cluster.show_job(job_id)["RunTime"]
    d, _, hms = rt.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return (int(d) if d else 0) * 86400 + h * 3600 + m * 60 + s


# --------------------------------------------------------------------------
# 1. scontrol update TimeLimit= on a running job
# --------------------------------------------------------------------------

def test_time_limit_shortened_moves_the_handover_earlier(cluster, slurm_gateway, tmp_path):
    """A job of 10 minutes, its handover 50 s before the end; an admin cuts
    its limit to 1 minute: the handover comes before the new end (not 9
    minutes later), and the replacement takes over."""
    svc = time_limit_service(cluster, tmp_path, 10, 50)
    g = slurm_gateway([svc])
    job_id = warm(g, cluster)
    assert left(g) > 500, g.svc()
    cluster.scontrol("update", f"JobId={job_id}", "TimeLimit=1")
    t0 = time.monotonic()
    # the gateway reads the new limit at its next poll
    wait_until(lambda: (left(g) or 999) <= 60, 10 * SLACK, msg="the new time limit in /api")
    info = g.wait_svc(lambda i: any(x["index"] == 1 for x in i["instances"]), 20,
                      msg="the replacement started")
    took = time.monotonic() - t0
    assert took < 60 - elapsed_s(cluster, job_id) + 1, took
    # the replacement takes over before the old job's end; the old one goes
    info = g.wait_svc(lambda i: [x["index"] for x in i["instances"]] == [1]
                      and i["instances"][0]["state"] == "ready", 45,
                      msg="the replacement serving alone")
    r = g.get("/llm/pid", timeout=30)
    assert r.status == 200, r
    assert info["starts"] == 2, info
    log = g.log(tail=10 ** 6)
    assert "starting a replacement" in log, log
    print(f"replacement started {took:.1f} s after the limit was cut")


def test_time_limit_extended_no_handover_at_the_old_time(cluster, slurm_gateway, tmp_path):
    """A job of 1 minute, its handover 50 s before the end (about 10 s
    after it starts); an admin extends it to 10 minutes at once: no
    replacement at the old time."""
    svc = time_limit_service(cluster, tmp_path, 1, 50)
    g = slurm_gateway([svc])
    job_id = warm(g, cluster)
    cluster.scontrol("update", f"JobId={job_id}", "TimeLimit=10")
    wait_until(lambda: (left(g) or 0) > 500, 10 * SLACK, msg="the new time limit in /api")
    assert g.svc()["starts"] == 1
    # past the old handover time (10 s after the start) by a few polls
    wait_until(lambda: elapsed_s(cluster, job_id) >= 15, 20 * SLACK, interval=0.5)
    info = g.svc()
    assert info["starts"] == 1 and len(info["instances"]) == 1, info
    assert "starting a replacement" not in g.log(tail=10 ** 6)


def test_time_limit_made_unlimited_cancels_the_handover(cluster, slurm_gateway, tmp_path):
    """A job of 1 minute, its handover 50 s before the end; an admin makes
    its limit UNLIMITED (squeue's time left says "UNLIMITED"): the handover
    timer is cleared, /api says no time limit, no replacement starts."""
    svc = time_limit_service(cluster, tmp_path, 1, 50)
    g = slurm_gateway([svc])
    job_id = warm(g, cluster)
    assert left(g) is not None and left(g) < 60, g.svc()
    cluster.scontrol("update", f"JobId={job_id}", "TimeLimit=UNLIMITED")
    wait_until(lambda: left(g) is None, 10 * SLACK, msg="no time limit in /api")
    wait_until(lambda: elapsed_s(cluster, job_id) >= 15, 20 * SLACK, interval=0.5)
    info = g.svc()
    assert info["starts"] == 1 and len(info["instances"]) == 1, info
    assert info["instances"][0]["time_left_seconds"] is None, info
    assert "starting a replacement" not in g.log(tail=10 ** 6)
