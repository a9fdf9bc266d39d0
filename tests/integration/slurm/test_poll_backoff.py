"""The squeue back-off (poll_backoff_s): a job that waits in the queue with
nothing changing must not cost slurmctld an squeue every poll_fast_ms for
as long as it waits. After poll_backoff_s without a change in any of the
gateway's jobs the interval doubles each cycle up to min(poll_slow_s, 5 s);
the job's start is still noticed within that cap. Plain commands (the
gateway's own poller) and the remote agent's watcher.

squeue is counted by a wrapper first on PATH that logs the time of every
call; the services run their Slurm commands locally (no remote_host), so
the wrapper sees every squeue the gateway or its agent runs."""
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import SLACK, http_request, wait_until
from slurmlib import cluster, demo_job_script, slurm_gateway, slurm_service, write_script  # noqa: F401
import test_slurm_agent as agentlib

FAST_MS = 200
SLOW_S = 3       # the cap: min(poll_slow_s, 5 s) = 3 s
BACKOFF_S = 2


def squeue_shim(tmp_path):
    """squeue, with every call logged; and the expected start of a pending
    job (the last field, %S) moved by a few seconds on every call, as
    Slurm's backfill scheduler re-estimates it every cycle on a busy
    cluster: a new estimate alone must not make polls fast again."""
    shims = tmp_path / "shims"
    shims.mkdir()
    calls = tmp_path / "squeue-calls"
    calls.touch()
    write_script(shims / "squeue", f"""#!/bin/sh
date +%s.%N >> {calls}
n=$(wc -l < {calls})
at=$(( $(date +%s) + 600 + n % 7 ))
iso=$(date -d "@$at" +%Y-%m-%dT%H:%M:%S)
out=$({shutil.which("squeue")} "$@"); st=$?
# ISO (plain commands) or epoch seconds (the agent's SLURM_TIME_FORMAT=%s)
[ -z "$out" ] || printf '%s\\n' "$out" | \\
    sed -E -e "s/[|][0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}T[0-9:]{{8}}$/|$iso/" -e "s/[|][0-9]{{10}}$/|$at/"
exit $st
""")
    return shims, calls


def calls_between(calls, t0, t1):
    return [t for t in map(float, calls.read_text().split()) if t0 <= t < t1]


@pytest.mark.parametrize("via", ["plain", "agent"])
def test_pending_job_squeue_backs_off_and_start_is_noticed(cluster, slurm_gateway, tmp_path, via):
    agent, allow = agentlib.install_agent(tmp_path)
    job = demo_job_script(allow / "job.sh")
    kw = {"slurm_agent": str(agent)} if via == "agent" else {}
    # a job that stays PENDING until the test moves its begin time
    svc = slurm_service(cluster, job, sbatch_args=[f"--chdir={cluster.work_dir}", "--begin=now+600"],
                        **kw)
    agentlib.allow_args(job, svc["sbatch_args"])
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    shims, calls = squeue_shim(tmp_path)
    g = slurm_gateway([svc], env={"SLURM_CONF": cluster.slurm_conf,
                                  "PATH": f"{shims}:{os.environ['PATH']}"},
                      poll_fast_ms=FAST_MS, poll_slow_s=SLOW_S, poll_backoff_s=BACKOFF_S)
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(http_request, g.port, "GET", "/llm/pid", timeout=60 * SLACK)
        wait_until(lambda: cluster.jobs(g.job_name()), 10 * SLACK, interval=0.05,
                   msg="the job submitted")
        t0 = time.time()
        [(job_id, _, state, reason)] = cluster.jobs(g.job_name())
        assert state == "PENDING" and reason == "BeginTime", (state, reason)

        # fast at first: poll_backoff_s of polls every poll_fast_ms
        wait_until(lambda: time.time() > t0 + 1.5, 5)
        fast = calls_between(calls, t0, t0 + 1.5)
        assert len(fast) >= 3, (fast, g.log())

        # then the interval doubles up to the cap: 2 s fast, then 0.4, 0.8,
        # 1.6, 3, 3 ... s; over these 6 s at most 3 (at 200 ms: ~25)
        t1 = t0 + BACKOFF_S + 3.5
        etas = set()

        def window_over():
            [inst] = g.svc()["instances"]
            etas.add(inst["expected_start"])
            return time.time() > t1 + 6
        wait_until(window_over, 20, interval=0.2)
        slow = calls_between(calls, t1, t1 + 6)
        assert len(slow) <= 3 + (1 if SLACK > 1 else 0), (slow, g.log())
        # while the expected start moved at every poll (and /api shows it)
        assert len(etas - {None}) >= 2, etas
        assert not fut.done() and g.svc()["waiting"] == 1

        # the job may start now: it is noticed within the cap
        cluster.scontrol("update", f"JobId={job_id}", "StartTime=now")
        wait_until(lambda: cluster.jobs(g.job_name())[0][2] == "RUNNING", 30 * SLACK,
                   interval=0.05, msg="Slurm to start the job")
        started = time.time()
        g.wait_svc(lambda i: i["instances"] and i["instances"][0].get("node"), 10,
                   msg="the job's start noticed")
        noticed = time.time() - started
        print(f"{via}: squeue calls in the first 1.5 s: {len(fast)}, in 6 s backed off: "
              f"{len(slow)}; RUNNING noticed after {noticed:.2f} s")
        # the cap, one squeue's run time and /api's poll (0.1 s), with room
        assert noticed < SLOW_S + 2.0 * SLACK, (noticed, g.log())
        r = fut.result()
        assert r.status == 200, (r, g.log())
    assert g.terminate() == 0


def test_agent_watch_takes_backoff_argument_or_none(cluster, tmp_path):
    """The agent says it knows BACKOFF_S (hello ... backoff) and takes watch
    with it, or without it (an older gateway: 30 s); a bad one is refused.
    Watches one after the other, then quit: the agent exits at once (a
    watcher stopped just after it was started used to miss its TERM, and
    the agent waited for it forever)."""
    agent, _ = agentlib.install_agent(tmp_path)
    env = dict(os.environ, SLURM_CONF=cluster.slurm_conf)
    p = subprocess.run(["sh", str(agent)], input="1\twatch\tsg:x:\t200\t3\n"
                       "2\twatch\tsg:x:\t200\t3\t2\n"
                       "3\twatch\tsg:x:\t200\t3\t0\n"
                       "4\twatch\tsg:x:\t200\t3\t2s\n"
                       "5\twatch\tsg:x:\t200\t3\t12345678901234567890\n"
                       "6\tquit\n", env=env, capture_output=True, text=True, timeout=20 * SLACK)
    lines = p.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["*", "hello", "slurmgate-agent"], lines
    assert "backoff" in lines[0].split("\t")[3:], lines
    for k in (1, 2, 3):
        assert f"{k}\t0\t-" in lines, (k, lines)
    assert any(line.startswith("4\t126\tslurmgate-agent refused: bad intervals") for line in lines), lines
    assert any(line.startswith("5\t126\tslurmgate-agent refused: intervals too long") for line in lines), lines


def test_agent_without_backoff_gets_the_watch_it_knows(cluster, slurm_gateway, tmp_path):
    """An agent whose hello names no backoff (an older one) is sent watch
    with three arguments, which it takes: it watches, the job is served."""
    agent, allow = agentlib.install_agent(tmp_path)
    text = agent.read_text()
    assert "\\tbackoff\\n" in text
    agent.write_text(text.replace("\\tbackoff\\n", "\\n"))
    job = demo_job_script(allow / "job.sh")
    svc = slurm_service(cluster, job, slurm_agent=str(agent))
    agentlib.allow_args(job, svc["sbatch_args"])
    g = slurm_gateway([svc], poll_backoff_s=2)
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, (r, g.log())
    assert g.svc()["slurm_agent"] == "up"
    log = g.log()
    assert "slurm agent on" in log and "unknown request" not in log and "refused" not in log, log
