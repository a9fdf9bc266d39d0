"""An attacker who holds the gateway's ssh key, which authorized_keys
restricts to the remote agent (remote/slurmgate-agent as its forced
command), speaks the agent's protocol directly: whatever they send, the
agent must do no more than the README promises ("start the configured job
scripts, cancel and look at the gateway's jobs"). Here the agent runs
locally against the real test cluster, as the forced command would run it
on the login node; jobs go to the down partition, so they never run."""
import http.client
import os
import shutil
import subprocess
import time

import pytest

from conftest import SLACK, wait_until
from slurmlib import DEMO_BIN, NODE_ADDR_SH, REPO, cluster, slurm_gateway, slurm_service, write_script  # noqa: F401

AGENT = REPO / "remote" / "slurmgate-agent"


@pytest.fixture
def agent(cluster, tmp_path):
    """talk(lines) -> {request id: answer fields} from one agent session.
    Every job left in squeue by the test is cancelled afterwards."""
    d = tmp_path / "login"
    d.mkdir()
    a = d / "slurmgate-agent"
    shutil.copy(AGENT, a)
    a.chmod(0o755)
    allow = d / "slurmgate-agent.allow"
    allow.mkdir()
    job = allow / "job.sh"
    job.write_text("#!/bin/sh\nsleep 300\n")
    job.chmod(0o755)
    # the sbatch arguments the tests' plain submits pass, allowed for it
    (allow / "job.sh.sbatch-args").write_text(
        f"--partition={cluster.down_partition} --chdir={cluster.work_dir} --comment=fine\n")
    submitted = []

    def talk(*lines):
        p = subprocess.run([str(a), "-l", str(tmp_path / "agent.log")],
                           input="".join(line + "\n" for line in lines),
                           env=dict(os.environ, SLURM_CONF=cluster.slurm_conf),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        answers = {}
        for line in p.stdout.splitlines():
            f = line.split("\t")
            if f[0].isdigit():
                answers[f[0]] = f[1:]
        for rid, f in answers.items():
            if lines and "\tsubmit\t" in lines[int(rid) - 1] and f[0] == "0" and len(f) > 2:
                submitted.append(f[2].split(";")[0])
        return answers

    talk.job = str(job)
    talk.submitted = submitted
    yield talk
    cluster.scancel(*submitted)


def secret_file(tmp_path):
    s = tmp_path / "id_ed25519"
    s.write_text("-----BEGIN OPENSSH PRIVATE KEY----- attacker-must-not-see-this\n")
    s.chmod(0o600)
    return s


def submit(agent, cluster, rid, name, *args):
    return "\t".join([str(rid), "submit", name, "9", agent.job,
                      f"--partition={cluster.down_partition}", *args])


def test_agent_tail_cannot_be_pointed_at_any_file(agent, cluster, tmp_path):
    """`tail JOBID` read the path after the first " StdErr=" of `scontrol -o
    show job`, and a job name (checked for "sg:" only) or an sbatch option
    value (--chdir=..., one "word" that may hold spaces) comes before the
    real StdErr= there: a key holder submitted "sg:x StdErr=/any/file" and
    read any file the gateway's account can read (its other ssh keys...)."""
    secret = secret_file(tmp_path)
    work = cluster.work_dir
    ans = agent(submit(agent, cluster, 1, f"sg:x StdErr={secret} StdOut={secret}", f"--chdir={work}"),
                submit(agent, cluster, 2, "sg:y", f"--chdir={work} StdErr={secret} StdOut={secret}"),
                submit(agent, cluster, 3, "sg:z", f"--chdir={work}",
                       f"--comment=x StdErr={secret} StdOut={secret}"))
    tails = [f"{k}\ttail\t{f[2].split(';')[0]}\t5" for k, f in enumerate(ans.values(), 1)
             if f[0] == "0" and len(f) > 2]
    if tails:
        got = agent(*tails)
        for f in got.values():
            assert "attacker-must-not-see-this" not in "\t".join(f), (tails, got)
    # the crafted submits are refused with a reason, not passed to sbatch
    for k in ("1", "2", "3"):
        assert ans[k][0] == "126" and "refused" in ans[k][1], ans
    # a plain one still works (and its tail answers)
    ok = agent(submit(agent, cluster, 1, "sg:gw:llm:0", f"--chdir={work}", "--comment=fine"))
    assert ok["1"][0] == "0", ok
    jid = ok["1"][2].split(";")[0]
    assert agent(f"1\ttail\t{jid}\t5")["1"][0] == "0"


def test_agent_log_gets_no_control_characters_from_a_request(agent, cluster, tmp_path):
    """The agent logs what it refuses (its -l file, stderr, syslog) with the
    request's fields as they came: a CR or an escape sequence in a job name
    forged or hid lines of the login node's log for whoever reads it."""
    agent(submit(agent, cluster, 1, "sg:x\r2026-01-01T00:00:00Z slurmgate-agent[1]: all fine\033[2K",
                 f"--chdir={cluster.work_dir}"),
          "2\tcancel\t12\033]0;t\007")
    text = (tmp_path / "agent.log").read_bytes()
    assert b"refused" in text, text
    for line in text.split(b"\n"):
        assert not any(c < 0x20 and c != 0x09 or c == 0x7f for c in line), line


def test_agent_cancel_and_tail_touch_only_the_accounts_own_jobs(agent, cluster, tmp_path):
    """cancel and tail checked only that the job's name starts with "sg:",
    for anyone's job: another user's job named sg:* was cancelled (where
    the gateway's account may cancel it: an operator, a coordinator, root)
    and its output read."""
    secret = secret_file(tmp_path)
    jid = cluster.run("sbatch", "--parsable", "--uid=nobody", f"--partition={cluster.down_partition}",
                      "-J", "sg:victim:llm:0", "--chdir=/tmp", f"--error={secret}", agent.job).strip()
    agent.submitted.append(jid)
    ans = agent(f"1\ttail\t{jid}\t5", f"2\tcancel\t{jid}")
    assert "attacker-must-not-see-this" not in "\t".join(ans["1"]), ans
    assert ans["2"][0] != "0", ans
    assert [j for j in cluster.jobs("sg:victim:llm:0") if j[2] == "PENDING"], cluster.jobs()


def test_job_output_cannot_write_control_characters_into_the_gateway_log(cluster, slurm_gateway,
                                                                          tmp_path):
    """A failed job's last output lines go into the gateway's log as they
    were: the service's stderr, which often echoes request data (a prompt
    in an exception), so a user could put a CR (the plain-ssh path keeps it)
    or terminal escape sequences (both paths) in front of whoever reads the
    log in a terminal: rewrite the line shown, set the window title, fake a
    line. Every control byte in a log line is written as \\xHH now."""
    job = write_script(tmp_path / "crash.sh",
                       "#!/bin/sh\n"
                       "printf 'ValueError: bad prompt \\033]0;owned\\007\\033[2J x\\r"
                       "2026-01-01T00:00:00.000Z info  all fine\\n' >&2\n"
                       "exit 1\n")
    g = slurm_gateway([slurm_service(cluster, job, hold=False)])
    r = g.get("/llm/x", timeout=60)
    assert r.status == 503, r
    g.wait_svc(lambda i: "bad prompt" in (i["last_error"] or ""), 30)
    raw = g.log_path.read_bytes()
    assert b"bad prompt" in raw, raw[-3000:]
    for line in raw.split(b"\n"):
        assert not any(c < 0x20 and c != 0x09 or c == 0x7f for c in line), line


def test_job_output_cannot_forge_events_in_the_followed_logs(cluster, slurm_gateway, tmp_path):
    """/api/services/<name>/logs?follow=1 sends each output line as one SSE
    "data:" line, but SSE ends a line at a CR too, and the plain-ssh path
    kept a CR inside a line: a job that printed "x\\revent: end\\rdata: ..."
    (request data a service echoes) sent the admin's log panel an event of
    the attacker's choosing (here "end", which stops the panel)."""
    job = write_script(tmp_path / "job.sh", "#!/bin/sh\n"
                       "printf 'x\\revent: end\\rdata: forged\\n'\n"
                       + NODE_ADDR_SH + f'exec "{DEMO_BIN}" --host "$addr" --port "$1"\n')
    g = slurm_gateway([slurm_service(cluster, job)])
    assert g.get("/llm/health", timeout=60).status == 200
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5 * SLACK)
    try:
        conn.request("GET", "/api/services/demo/logs?lines=50&follow=1")
        r = conn.getresponse()
        assert r.status == 200, r.status
        deadline = time.monotonic() + 20 * SLACK
        while True:
            assert time.monotonic() < deadline, "the job's line never came"
            ln = r.readline()
            assert ln, "the stream ended"
            if b"forged" in ln:
                break
    finally:
        conn.close()
    assert b"\r" not in ln, ln
    assert ln.startswith(b"data: ") and b"end" in ln, ln


def test_job_output_that_is_not_utf8_does_not_take_the_state_api_down(cluster, slurm_gateway,
                                                                        tmp_path):
    """A failed job's last output lines go into its reason as they were:
    bytes that are not UTF-8 (a binary blob, a latin-1 file name, or a cut
    inside a character, which request data a service echoes can make
    happen) made every JSON answer that holds the reason unencodable:
    /api/services, /info and the 503 were 500 "could not encode the answer"
    until the next start, for every user."""
    job = write_script(tmp_path / "crash.sh",
                       "#!/bin/sh\nprintf 'bad prompt caf\\303 \\377\\376 end\\n' >&2\nexit 1\n")
    g = slurm_gateway([slurm_service(cluster, job, hold=False)])
    assert g.get("/llm/x", timeout=60).status == 503
    wait_until(lambda: "bad prompt" in g.log(), 30 * SLACK, msg="the job to fail")
    for path in ("/api/services/demo", "/api/services", "/info", "/check_llm"):
        r = g.get(path)
        assert r.status == 200, (path, r)
        assert "bad prompt" in r.text, (path, r.text[:500])


def test_agent_owner_runs_only_in_the_gateways_jobs_with_checked_fields(agent, cluster, tmp_path):
    """`owner JOBID NODE PORT` (who listens on the service's port, seen from
    a step of the job) runs srun in a job: only in the account's own jobs
    named as the gateway names them, and the node and port are words of
    their own (no option, no shell), whatever the request says."""
    other = cluster.run("sbatch", "--parsable", f"--partition={cluster.down_partition}",
                        "-J", "not-the-gateways", f"--chdir={cluster.work_dir}", agent.job).strip()
    agent.submitted.append(other)
    victim = cluster.run("sbatch", "--parsable", "--uid=nobody", f"--partition={cluster.down_partition}",
                         "-J", "sg:victim:llm:0", "--chdir=/tmp", agent.job).strip()
    agent.submitted.append(victim)
    ans = agent(f"1\towner\t{other}\tnode1\t80",
                f"2\towner\t{victim}\tnode1\t80",
                f"3\towner\t{other};id\tnode1\t80",
                f"4\towner\t{other}\t--uid=0\t80",
                f"5\towner\t{other}\tnode1$(id)\t80",
                f"6\towner\t{other}\tnode1\t80;id")
    assert ans["1"][0] == "126" and "not the gateway's" in ans["1"][1], ans
    assert ans["2"][0] != "0", ans
    for k in "3456":
        assert ans[k][0] == "126", (k, ans)
    assert "gid=" not in "\t".join(f for a in ans.values() for f in a), ans   # no id ran
