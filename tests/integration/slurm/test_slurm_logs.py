"""/api/services/<name>/logs for a Slurm service (issue 12, "Service logs,
as llama-swap offers"): the job's output file on the cluster, read through
the remote agent or plain ssh (scontrol + tail), shown as the tail and
followed with ?follow=1. The job script does not exec its server."""
import shutil

from conftest import SLACK, sse_lines, wait_until
from slurmlib import DEMO_BIN, NODE_ADDR_SH, REPO, cluster, slurm_gateway, slurm_service, write_script  # noqa: F401

AGENT = REPO / "remote" / "slurmgate-agent"


def chatty_job(path):
    """A job script that prints lines, then ticks every 0.3 s, and runs the
    demo service as a child (no exec)."""
    return write_script(path, "#!/bin/sh\n"
                        'echo "hello-from-job $SLURM_JOB_ID"\n'
                        'echo "hello-on-stderr" >&2\n'
                        '( i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.3; done ) &\n'
                        + NODE_ADDR_SH +
                        f'"{DEMO_BIN}" --host "$addr" --port "$1" &\n'
                        "wait\n")


def ticks_of(lines):
    return [int(x.split()[-1]) for x in lines if x.startswith("[0] tick ")]


def check_logs(g, cluster):
    r = g.get("/llm/health", timeout=60)
    assert r.status == 200, r
    [(job, _, _, _)] = cluster.jobs(g.job_name())

    def has(text):
        r = g.get("/api/services/demo/logs")
        assert r.status == 200, r
        return r if text in r.text else None
    r = wait_until(lambda: has("tick 3"), 15 * SLACK, interval=0.3, msg="the job's output in the logs")
    assert r.header("Content-Type", "").startswith("text/plain"), r
    lines = r.text.splitlines()
    assert f"[0] hello-from-job {job}" in lines, lines
    assert "[0] hello-on-stderr" in lines, lines
    assert any(ln.startswith("[0] --- slurmgate: ") and job in ln for ln in lines), lines
    ticks = ticks_of(lines)
    assert ticks == list(range(1, len(ticks) + 1)), ticks   # each line once, none left out
    one = g.get("/api/services/demo/logs?lines=1").text
    assert one.count("\n") == 1, one

    # follow: lines the job prints later arrive, in order, each once
    last = ticks[-1]
    got = sse_lines(g.port, "/api/services/demo/logs?lines=1&follow=1",
                    lambda ls: any(t >= last + 5 for t in ticks_of(ls)), 15 * SLACK)
    t = ticks_of(got)
    assert t == sorted(t) and len(set(t)) == len(t), got
    assert t == list(range(t[0], t[-1] + 1)), t


def test_slurm_logs_show_the_job_output_through_ssh(cluster, slurm_gateway, tmp_path):
    job = chatty_job(tmp_path / "job.sh")
    g = slurm_gateway([slurm_service(cluster, job)])
    check_logs(g, cluster)


def test_slurm_logs_show_the_job_output_through_the_agent(cluster, slurm_gateway, tmp_path):
    d = tmp_path / "login"
    allow = d / "slurmgate-agent.allow"
    allow.mkdir(parents=True)
    agent = d / "slurmgate-agent"
    shutil.copy(AGENT, agent)
    agent.chmod(0o755)
    job = chatty_job(allow / "job.sh")
    svc = slurm_service(cluster, job, slurm_agent=str(agent))
    (allow / "sbatch-args").write_text(" ".join(svc["sbatch_args"]) + "\n")
    g = slurm_gateway([svc])
    check_logs(g, cluster)
    assert g.svc()["slurm_agent"] == "up"


def test_slurm_logs_keep_a_failed_job_output_nobody_read(cluster, slurm_gateway, tmp_path):
    """A job that exits by itself: its last lines go into the logs although
    nobody read them while it ran (as a local failed start's output)."""
    job = write_script(tmp_path / "job.sh", "#!/bin/sh\n"
                       'echo "oops-before-exit $SLURM_JOB_ID"\n'
                       "sleep 1\n"
                       "exit 3\n")
    g = slurm_gateway([slurm_service(cluster, job)])
    r = g.get("/llm/health", timeout=60)
    assert r.status >= 500, r
    [(jid, _, _, _)] = cluster.jobs(g.job_name())[:1]
    # the end is known (the reason quotes the output) before the logs are read
    g.wait_svc(lambda i: "oops-before-exit" in str(i), 30, msg="the job's end with its output")

    def has():
        r = g.get("/api/services/demo/logs")
        assert r.status == 200, r
        return r.text if f"[0] oops-before-exit {jid}" in r.text.splitlines() else None
    wait_until(has, 10 * SLACK, interval=0.3, msg="the failed job's output in the logs")
