"""A Slurm administrator acts on the gateway's jobs (issue: hslurm2).

What admins (and Slurm itself) do to RUNNING or PENDING jobs on a real
cluster, beyond what tests/chaos does (scancel, requeue, suspend, drain,
down, node crash): a time limit changed under a running job, a pending job
held and released, a running job requeued and held, a job renamed, a job
submitted by hand under a name of the gateway's. The gateway must stay
right: no request failed or hung beyond what cannot be helped, no job
leaked or started twice, /api and /check_ true, the reason in both.
"""
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import conftest as base
from conftest import SLACK, http_request, wait_until
from slurmlib import (cluster, demo_job_script, running_job, slurm_gateway,  # noqa: F401
                      slurm_service, write_script)
from test_slurm_agent import agent_service


def service(cluster, tmp_path, via="commands", **kw):
    """The demo service, its Slurm commands run plainly over ssh or through
    the remote agent (whose watcher pushes the job lines)."""
    if via == "agent":
        return agent_service(cluster, tmp_path, **kw)[0]
    return slurm_service(cluster, demo_job_script(tmp_path / "job.sh"), **kw)


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
    job_id = running_job(cluster, g)
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


def test_time_limit_made_unlimited_cancels_the_handover(cluster, slurm_gateway, tmp_path):
    """A job of 1 minute, its handover 50 s before the end (about 10 s
    after it starts); an admin extends it at once to 10 minutes (the
    handover moves: /api shows the new time left), then makes it UNLIMITED
    (squeue's time left says "UNLIMITED"): the last limit's deadline and
    handover timer were kept (a needless replacement 50 s before it). Now
    /api says no time limit, and no replacement starts."""
    svc = time_limit_service(cluster, tmp_path, 1, 50)
    g = slurm_gateway([svc])
    job_id = running_job(cluster, g)
    assert left(g) is not None and left(g) < 60, g.svc()
    cluster.scontrol("update", f"JobId={job_id}", "TimeLimit=10")
    wait_until(lambda: (left(g) or 0) > 500, 10 * SLACK, msg="the new time limit in /api")
    cluster.scontrol("update", f"JobId={job_id}", "TimeLimit=UNLIMITED")
    wait_until(lambda: left(g) is None, 10 * SLACK, msg="no time limit in /api")
    wait_until(lambda: elapsed_s(cluster, job_id) >= 15, 20 * SLACK, interval=0.5)
    info = g.svc()
    assert info["starts"] == 1 and len(info["instances"]) == 1, info
    assert info["instances"][0]["time_left_seconds"] is None, info
    assert "starting a replacement" not in g.log(tail=10 ** 6)


# --------------------------------------------------------------------------
# 2. scontrol hold / release of a pending job; requeuehold of a running one
# --------------------------------------------------------------------------

def pending_service(cluster, tmp_path, **kw):
    """A service whose job waits in the DOWN partition (PartitionDown) until
    the test moves it to the partition that runs jobs."""
    job = demo_job_script(tmp_path / "job.sh")
    return slurm_service(cluster, job, sbatch_args=[f"--chdir={cluster.work_dir}",
                                                    f"--partition={cluster.down_partition}"], **kw)


def job_reason(cluster, job_id):
    return cluster.show_job(job_id).get("Reason", "")


def test_admin_hold_until_start_timeout_answers_and_cancels(cluster, slurm_gateway, tmp_path):
    """A cold start's job held by an admin (JobHeldAdmin) and never
    released: /check_ and the waiting page say so; at start_timeout the
    waiting request is answered 502 naming the hold, the held job is
    cancelled (not left in the queue), nothing submitted again."""
    g = slurm_gateway([pending_service(cluster, tmp_path, start_timeout=8)])
    with ThreadPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(http_request, g.port, "GET", "/llm/pid", timeout=60 * SLACK)
        [(job_id, _, _, _)] = wait_until(lambda: cluster.live_jobs(g.job_name()), 15 * SLACK,
                                         msg="the job queued")
        cluster.scontrol("hold", job_id)
        # (test_hostile_cluster: a hold promises no start time, and a
        # release serves the request)
        chk = wait_until(lambda: (lambda c: "JobHeldAdmin" in c["reason"] and c)(g.check()),
                         5 * SLACK, msg="the hold in /check_")
        assert "held until released" in chk["reason"] and chk["running"] is False, chk
        page = http_request(g.port, "GET", "/llm/", headers={"Accept": "text/html"}, timeout=10)
        assert page.status == 503 and b"JobHeldAdmin" in page.body, page
        r = fut.result(timeout=30 * SLACK)
    assert r.status == 502, (r.status, r.body[:300])
    assert b"start_timeout" in r.body and b"JobHeldAdmin" in r.body, r.body
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 15 * SLACK, msg="the held job cancelled")
    assert [j[0] for j in cluster.jobs(g.job_name())] in ([job_id], []), cluster.jobs(g.job_name())
    assert g.svc()["starts"] == 1


def test_requeuehold_of_a_running_job_is_shown_and_served_after_release(cluster, slurm_gateway,
                                                                       tmp_path):
    """scontrol requeuehold of a running job: the instance is held, the
    reason says the job waits for scontrol release (it said "requeued:
    pending"), and /api no longer counts down the time limit of the run that
    ended (its time starts anew when it runs again); a request waits and is
    served by the same job once released (no second sbatch)."""
    g = slurm_gateway([time_limit_service(cluster, tmp_path, 10, 30)])
    job_id = running_job(cluster, g)
    assert left(g) > 500, g.svc()
    cluster.scontrol("requeuehold", job_id)
    chk = wait_until(lambda: (lambda c: "scontrol release" in c["reason"] and c)(g.check()),
                     10 * SLACK, msg="the hold in /check_")
    assert f"Slurm job {job_id} requeued and held" in chk["reason"] and not chk["running"], chk
    assert left(g) is None, g.svc()
    with ThreadPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(http_request, g.port, "GET", "/llm/pid", timeout=60 * SLACK)
        wait_until(lambda: g.svc()["waiting"] == 1, 10 * SLACK)
        cluster.scontrol("release", job_id)
        r = fut.result(timeout=45 * SLACK)
    assert r.status == 200, (r.status, r.body[:300])
    info = g.svc()
    assert info["starts"] == 1 and info["instances"][0]["job_id"] == job_id, info
    assert [j[0] for j in cluster.jobs(g.job_name())] == [job_id]
    assert left(g) > 500, info


@pytest.mark.parametrize("via", ["commands", "agent"])
def test_requeuehold_not_released_within_start_timeout_is_replaced(cluster, slurm_gateway,
                                                                   tmp_path, via):
    """scontrol requeuehold of a running job (Slurm does it too, when a
    prolog fails), never released, while a request waits: the request
    waited forever. Now the held job gets start_timeout to run again, as a
    start does; then it is cancelled (not left in the queue) and a new job
    serves the request."""
    g = slurm_gateway([service(cluster, tmp_path, via, start_timeout=5)])
    job_id = running_job(cluster, g)
    cluster.scontrol("requeuehold", job_id)
    wait_until(lambda: g.svc()["instances"][0]["state"] == "held", 10 * SLACK)
    t0 = time.monotonic()
    r = http_request(g.port, "GET", "/llm/pid", timeout=40 * SLACK)
    took = time.monotonic() - t0
    assert r.status == 200, (r.status, r.body[:300])
    info = g.svc()
    [inst] = info["instances"]
    assert inst["job_id"] != job_id and info["starts"] == 2, info
    assert [j[0] for j in cluster.live_jobs(g.job_name())] == [inst["job_id"]]
    log = g.log(tail=10 ** 6)
    assert re.search(rf"Slurm job {job_id} .*not released within start_timeout \(5 s\)", log), log
    print(f"served by a new job {took:.1f} s after the request")


def test_requeuehold_idle_job_is_cancelled(cluster, slurm_gateway, tmp_path):
    """A requeue-held job with nothing waiting is stopped by the idle clock
    (cancelled, not left held in the queue forever)."""
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job, timeout=3)])
    job_id = running_job(cluster, g)
    cluster.scontrol("requeuehold", job_id)
    g.wait_svc(lambda i: not i["instances"], 20, msg="the held job stopped")
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 10 * SLACK, msg="the held job cancelled")
    assert "held and idle for 3 s" in g.log(tail=10 ** 6)
    assert g.svc()["starts"] == 1


# --------------------------------------------------------------------------
# 4. a job renamed by someone; a job submitted by hand under the gateway's name
# --------------------------------------------------------------------------

@pytest.mark.parametrize("via", ["commands", "agent"])
def test_renamed_job_is_tracked_and_not_left_running_by_keep_jobs_on_exit(cluster, slurm_gateway,
                                                                          tmp_path, via):
    """scontrol update JobName= on a running job: the gateway tracks its jobs
    by id while it runs (requests still served, the log says it was
    renamed), but a restart finds them by name: with keep_jobs_on_exit the
    renamed job was left running at SIGTERM and the next run neither adopted
    nor cancelled it (a leak, and a clash with the new job's port on that
    node). It is cancelled at exit now. Through the remote agent, which
    cancels only jobs of the gateway's names, the scancel was refused and
    retried until the job ended (the instance stopping all along: here the
    shutdown gave up after its grace); now the job is given up at once,
    the log saying to scancel it."""
    g = slurm_gateway([service(cluster, tmp_path, via)], keep_jobs_on_exit=True)
    job_id = running_job(cluster, g)
    cluster.scontrol("update", f"JobId={job_id}", "JobName=renamed-by-admin")
    try:
        wait_until(lambda: f"Slurm job {job_id} was renamed" in g.log(tail=10 ** 6), 10 * SLACK,
                   msg="the rename in the log")
        r = g.get("/llm/pid")
        assert r.status == 200 and g.svc()["instances"][0]["job_id"] == job_id, r
        t0 = time.monotonic()
        assert g.terminate() == 0
        assert time.monotonic() - t0 < 4 * SLACK, g.log()
        live = lambda: [j for j in cluster.live_jobs() if j[0] == job_id]  # noqa: E731
        if via == "agent":
            assert f"left running: scancel {job_id}" in g.log(tail=10 ** 6)
            assert live()
        else:
            wait_until(lambda: not live(), 15 * SLACK, msg="the renamed job cancelled at exit")
    finally:
        cluster.scancel(job_id)


def test_job_submitted_by_hand_under_the_gateways_name_is_not_adopted(cluster, slurm_gateway,
                                                                      tmp_path):
    """A job the gateway never started, named like its own (sg:ID:llm:0),
    runs when the gateway starts: it was adopted (on the config's port,
    Slurm not saying which), and users' requests would have gone to
    whatever listens there on its node. A gateway's job always runs SCRIPT
    PORT (Slurm's Command=): one that does not is not adopted (cancelled:
    the name is the gateway's), and the first request starts a job of its
    own."""
    job = demo_job_script(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)], start=False)
    jid = cluster.run("sbatch", "--parsable", f"--job-name={g.job_name()}",
                      f"--chdir={cluster.work_dir}", "--wrap", "sleep 300").strip()
    try:
        wait_until(lambda: cluster.jobs(g.job_name())[0][2] == "RUNNING", 15 * SLACK)
        g.start()
        wait_until(lambda: "looked for Slurm jobs of an earlier run" in g.log(), 10 * SLACK)
        log = g.log()
        assert f"Slurm job {jid} ({g.job_name()}, RUNNING) bears this gateway's name" in log, log
        assert "adopting" not in log, log
        r = g.get("/llm/pid", timeout=60)
        assert r.status == 200, r
        inst = g.svc()["instances"][0]
        assert inst["job_id"] != jid, inst
        wait_until(lambda: jid not in [j[0] for j in cluster.live_jobs()], 10 * SLACK)
    finally:
        cluster.scancel(jid)


@pytest.mark.parametrize("beside,via",
                         [(False, "commands"), (True, "commands"), (False, "agent")],
                         ids=["alone", "beside_its_own", "alone_agent"])
def test_lost_sbatch_answer_lookup_does_not_adopt_a_job_submitted_by_hand(cluster, slurm_gateway,
                                                                         tmp_path, beside, via):
    """sbatch's answer is lost (here: ssh says 255 after the submit), and
    the gateway looks for its job by name in squeue. Another job of that
    name (submitted by hand, or by another tool of this account, here just
    before the gateway's own sbatch ran) was taken as the gateway's own:
    users' requests went to whatever listens on the port on its node. The
    lookup now takes only a job that runs SCRIPT PORT (the gateway's own
    kind) for its port, submitted after its sbatch began; another is left
    alone (never cancelled: not the gateway's), the log and the failed
    start's reason name it. Alone, the start fails with that reason (and
    the next one succeeds beside it); beside the gateway's own job, that one
    is taken. Through the remote agent, the answer is lost as the agent
    dies during sbatch."""
    real = shutil.which("sbatch")
    mark, hand = tmp_path / "lost-once", tmp_path / "hand-id"
    own = f'{real} "$@" >/dev/null 2>&1\n' if beside else ""
    shims = tmp_path / "shims"
    svc = slurm_service(cluster, demo_job_script(tmp_path / "job.sh"), start_timeout=20)
    lose = 'echo "Connection to login closed by remote host." >&2; exit 255'
    if via == "agent":
        svc, agent, _ = agent_service(cluster, tmp_path, start_timeout=20)
        lose = f"for p in $(pgrep -f '{agent}( |$)'); do kill -9 \"$p\"; done; exit 1"
    write_script(shims / "sbatch", f"""#!/bin/sh
name=
for a in "$@"; do case $a in --job-name=*) name=${{a#--job-name=}};; esac; done
if [ ! -e {mark} ]; then
    : > {mark}
    {real} --parsable --job-name="$name" --chdir={cluster.work_dir} --wrap 'sleep 300' >{hand}
    {own}{lose}
fi
exec {real} "$@"
""")
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    g = slurm_gateway([svc], env={"SLURM_CONF": cluster.slurm_conf,
                                  "PATH": f"{shims}:{os.environ['PATH']}"})
    try:
        r = g.get("/llm/pid", timeout=60)
        assert hand.exists(), "the wrapper did not run"
        hid = hand.read_text().strip()
        log = g.log(tail=10 ** 6)
        assert f"Slurm job {hid} is named {g.job_name()}, but it is not the job" in log, log
        assert "does not run SCRIPT PORT" in log, log
        if not beside:
            assert r.status == 502, (r, log)
            assert f"Slurm job {hid} of its name, not this gateway's" in r.text, r.text
            assert "not this gateway's" in g.svc()["last_error"], g.svc()
            # the next start succeeds, with a job of its own
            r = g.get("/llm/pid", timeout=60)
        assert r.status == 200, (r, g.log())
        [inst] = g.svc()["instances"]
        assert inst["job_id"] != hid, (inst, hid)
        # the ghost watch for the lost job's name (it cancels a job the
        # failed sbatch queued late) saw the hand job on every poll since
        # (several while the job started): left alone
        log = g.log(tail=10 ** 7)
        assert not re.search(rf"Slurm job {hid} .*cancelling", log), log
        assert hid in [j[0] for j in cluster.live_jobs(g.job_name())], cluster.jobs(g.job_name())
    finally:
        if hand.exists():
            cluster.scancel(hand.read_text().strip())


def test_ghost_watch_after_an_sbatch_timeout_does_not_cancel_a_job_submitted_by_hand(
        cluster, slurm_gateway, tmp_path):
    """sbatch gave up ("Socket timed out on send/recv operation"): the
    controller may queue the job all the same, so the gateway watches for a
    job of its name for a while and cancels it if it comes. A job of that
    name submitted by hand (here: just after the sbatch began) was taken
    for it and cancelled. Only a job that runs SCRIPT PORT for its port,
    submitted after the sbatch began, is taken for it now; another is left
    alone, the log says why."""
    real = shutil.which("sbatch")
    mark, hand = tmp_path / "timeout-once", tmp_path / "hand-id"
    shims = tmp_path / "shims"
    write_script(shims / "sbatch", f"""#!/bin/sh
name=
for a in "$@"; do case $a in --job-name=*) name=${{a#--job-name=}};; esac; done
if [ ! -e {mark} ]; then
    : > {mark}
    {real} --parsable --job-name="$name" --chdir={cluster.work_dir} --wrap 'sleep 300' >{hand}
    echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2
    exit 1
fi
exec {real} "$@"
""")
    svc = slurm_service(cluster, demo_job_script(tmp_path / "job.sh"))
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    g = slurm_gateway([svc], env={"SLURM_CONF": cluster.slurm_conf,
                                  "PATH": f"{shims}:{os.environ['PATH']}"})
    try:
        r = g.get("/llm/pid", timeout=60)
        assert hand.exists(), "the wrapper did not run"
        hid = hand.read_text().strip()
        assert r.status == 502 and "timed out" in r.text, r
        wait_until(lambda: f"Slurm job {hid} is named {g.job_name()}, but it is not" in
                   g.log(tail=10 ** 7), 10 * SLACK, msg="the hand job looked at")
        # the next start: a job of its own; the hand job lives on
        r = g.get("/llm/pid", timeout=60)
        assert r.status == 200, (r, g.log())
        [inst] = g.svc()["instances"]
        assert inst["job_id"] != hid, (inst, hid)
        log = g.log(tail=10 ** 7)
        assert not re.search(rf"Slurm job {hid} .*cancelling", log), log
        assert hid in [j[0] for j in cluster.live_jobs(g.job_name())], cluster.jobs(g.job_name())
    finally:
        if hand.exists():
            cluster.scancel(hand.read_text().strip())


def test_lost_sbatch_answer_lookup_takes_its_job_when_scontrol_prints_another_time_zone(
        cluster, slurm_gateway, tmp_path):
    """scontrol prints SubmitTime in the local time of the host it runs on
    (the login node), which need not be the gateway's zone: here the
    gateway runs on UTC and scontrol on UTC-6. After a lost sbatch answer,
    the lookup read the gateway's own job, queued a second before, as
    "submitted at ..., before this sbatch began": the start failed (502)
    and the job was left running, tracked by nobody, until its time limit.
    It is taken as the gateway's job now."""
    real, real_scontrol = shutil.which("sbatch"), shutil.which("scontrol")
    mark = tmp_path / "lost-once"
    shims = tmp_path / "shims"
    write_script(shims / "sbatch", f"""#!/bin/sh
if [ ! -e {mark} ]; then
    : > {mark}
    {real} "$@" >/dev/null 2>&1
    echo "Connection to login closed by remote host." >&2
    exit 255
fi
exec {real} "$@"
""")
    write_script(shims / "scontrol", f'#!/bin/sh\nTZ=CST6 exec {real_scontrol} "$@"\n')
    svc = slurm_service(cluster, demo_job_script(tmp_path / "job.sh"), start_timeout=30)
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    g = slurm_gateway([svc], env={"SLURM_CONF": cluster.slurm_conf, "TZ": "UTC0",
                                  "PATH": f"{shims}:{os.environ['PATH']}"})
    r = g.get("/llm/pid", timeout=60)
    log = g.log(tail=10 ** 6)
    assert mark.exists(), "the wrapper did not run"
    assert "before this sbatch began" not in log, log
    assert r.status == 200, (r, log)
    assert "was queued before its sbatch answer was lost" in log, log
    [inst] = g.svc()["instances"]
    assert [j[0] for j in cluster.live_jobs(g.job_name())] == [inst["job_id"]], \
        (cluster.jobs(g.job_name()), inst)
