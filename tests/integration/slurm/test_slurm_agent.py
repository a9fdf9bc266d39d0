"""The remote agent (remote/slurmgate-agent, issue 11) against the real test
cluster and sshd: Slurm commands through one long-lived agent session, job
changes pushed by its watcher, the agent as the forced command of a
least-privilege key (restrict, port-forwarding, permitopen), its allow-list
of job scripts, and the fallback to plain commands when it cannot start."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SLACK, http_request, wait_until
from slurmlib import REPO, cluster, demo_job_script, slurm_gateway, slurm_service, write_script  # noqa: F401

AGENT = REPO / "remote" / "slurmgate-agent"


def install_agent(tmp_path):
    """The agent as an admin installs it: a copy on the "login node" with its
    allow-list directory beside it (slurmgate-agent.allow)."""
    d = tmp_path / "login"
    d.mkdir()
    agent = d / "slurmgate-agent"
    shutil.copy(AGENT, agent)
    agent.chmod(0o755)
    allow = d / "slurmgate-agent.allow"
    allow.mkdir()
    return agent, allow


@pytest.fixture
def forced_key(cluster, tmp_path):
    """Factory: forced_key(command, ports) -> a new private key whose
    authorized_keys entry on the test sshd is
    restrict,command="COMMAND",port-forwarding,permitopen="NODE:PORT"...
    The entry is removed afterwards."""
    authkeys = Path(cluster.ssh_key).parent / "authorized_keys"
    added = []

    def make(command, ports):
        key = tmp_path / f"fkey{len(added)}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True, timeout=30)
        pub = (tmp_path / f"{key.name}.pub").read_text().strip()
        opens = ",".join(f'permitopen="{n["addr"]}:{p}"' for n in cluster.nodes for p in ports)
        line = f'restrict,command="{command}",port-forwarding,{opens} {pub}\n'
        with open(authkeys, "a") as f:
            f.write(line)
        added.append(line)
        return key

    yield make
    text = authkeys.read_text()
    for line in added:
        text = text.replace(line, "")
    authkeys.write_text(text)


def ssh_with(cluster, key, *command, stdin=""):
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={cluster.known_hosts}", "-p", str(cluster.ssh_port),
         f"{cluster.ssh_user}@127.0.0.1", *command],
        input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)


def allow_args(script, args):
    """Allow ARGS (sbatch arguments, exact words) for SCRIPT, which is in an
    allow-list directory: its SCRIPT.sbatch-args file."""
    Path(f"{script}.sbatch-args").write_text(" ".join(args) + "\n")


def agent_service(cluster, tmp_path, forced=None, **kw):
    """A service whose job script is on the agent's allow-list, with its
    sbatch_args allowed; with FORCED (the forced_key factory) its key runs
    only the agent."""
    agent, allow = install_agent(tmp_path)
    job = demo_job_script(allow / "job.sh")
    svc = slurm_service(cluster, job, slurm_agent=str(agent), **kw)
    allow_args(job, svc["sbatch_args"])
    if forced is not None:
        svc["ssh_key_file"] = str(forced(f"{agent} -l {tmp_path}/agent.log",
                                         [svc["remote_port"], svc["remote_port"] + 1]))
    return svc, agent, allow


def test_agent_forced_command_cold_start_adoption_and_idle_cancel(cluster, slurm_gateway,
                                                                   tmp_path, forced_key):
    timeout = 4
    svc, agent, _ = agent_service(cluster, tmp_path, forced_key, timeout=timeout)
    g = slurm_gateway([svc])
    name = g.job_name()

    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid1 = r.json()["pid"]
    info = g.svc()
    assert info["slurm_agent"] == "up", info
    assert "running plain Slurm commands" not in g.log()
    [(job1, _, state, _)] = cluster.jobs(name)
    assert state == "RUNNING"

    # adoption after a restart of the gateway, through a new agent
    assert g.kill9() == -signal.SIGKILL
    g.restart()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    assert r.json()["pid"] == pid1, "not served by the adopted job"
    assert [j[0] for j in cluster.jobs(name)] == [job1], "a second job was submitted"
    assert "adopting Slurm job" in g.log()
    assert g.svc()["slurm_agent"] == "up"

    # idle: cancelled through the agent, the end pushed by its watcher
    wait_until(lambda: not cluster.live_jobs(name), (timeout + 10) * SLACK, interval=0.2,
               msg=f"job {job1} cancelled after idle")
    g.wait_svc(lambda i: i["state"] == "stopped" and not i["instances"], 15,
               msg="the service stopped")
    assert "plain" not in g.log()
    # the agent on the login node ends with the gateway's session
    assert agent_pids(agent)
    assert g.terminate() == 0
    wait_until(lambda: not agent_pids(agent), 10 * SLACK, msg="the agent gone with the gateway")


def test_agent_forced_command_requeue_holds_and_resumes(cluster, slurm_gateway, tmp_path,
                                                        forced_key):
    svc, _, _ = agent_service(cluster, tmp_path, forced_key)
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid1 = r.json()["pid"]
    [inst] = g.svc()["instances"]
    job_id = inst["job_id"]

    cluster.run("scontrol", "requeue", job_id)
    g.wait_svc(lambda i: i["instances"] and "requeued" in i["instances"][0]["detail"], 15,
               msg="the instance held: requeued")
    r = g.get("/llm/pid", timeout=90)
    assert r.status == 200, r
    assert r.json()["pid"] != pid1
    info = g.svc()
    assert info["instances"][0]["job_id"] == job_id and info["starts"] == 1, info
    assert info["slurm_agent"] == "up"


def test_forced_command_refuses_other_commands_and_unlisted_scripts(cluster, slurm_gateway,
                                                                    tmp_path, forced_key):
    svc, agent, allow = agent_service(cluster, tmp_path, forced_key)
    key = svc["ssh_key_file"]
    log = tmp_path / "agent.log"

    # an arbitrary command with the key: refused, nothing runs
    p = ssh_with(cluster, key, "squeue")
    assert p.returncode != 0 and "refused" in p.stderr and p.stdout == "", p
    p = ssh_with(cluster, key, "sh", "-c", "'touch /tmp/sg-agent-pwned'")
    assert p.returncode != 0 and "refused" in p.stderr, p
    assert not Path("/tmp/sg-agent-pwned").exists()
    # the agent itself, asked for by path, speaks its protocol; an sbatch of
    # a script that is not on its allow-list is refused
    outside = write_script(tmp_path / "evil.sh", "#!/bin/sh\ntouch /tmp/sg-agent-pwned\n")
    p = ssh_with(cluster, key, str(agent),
                 stdin=f"1\tsubmit\tsg:x:evil:0\t9\t{outside}\t--chdir={cluster.work_dir}\n"
                       f"2\tsubmit\tsg:x:evil:0\t9\t{allow}/../../evil.sh\n"
                       f"3\tsubmit\tsg:x:evil:0\t9\t{allow}/job.sh\t--wrap=id\n"
                       f"5\tsubmit\tsg:x:evil:0\t9\t{allow}/job.sh\t-Ho{tmp_path}/x\n"
                       f"6\tsubmit\tsg:x:evil:0\t9\t{allow}/job.sh\t-w\tnode2\n"
                       f"7\tquit\n")
    lines = p.stdout.splitlines()
    assert lines[0].startswith("*\thello"), p
    for k in (1, 2, 3, 5, 6):
        assert any(line.startswith(f"{k}\t126\t") for line in lines), (k, lines)
    assert not (tmp_path / "x").exists()
    text = log.read_text()
    assert "refused command" in text and "squeue" in text, text
    assert f"sbatch of {outside}: not on the allow-list" in text, text

    # the gateway with a service whose script is not listed: a clear 503
    bad = slurm_service(cluster, outside, name="evil", route="evil",
                        slurm_agent=str(agent), ssh_key_file=key, hold=False)
    good = dict(svc)
    g = slurm_gateway([good, bad])
    r = g.get("/evil/x", timeout=30)
    assert r.status == 503, r
    info = g.wait_svc(lambda i: i["last_error"], 30, name="evil")
    assert "not on the allow-list" in info["last_error"], info
    assert cluster.jobs(g.job_name("evil")) == []
    assert not Path("/tmp/sg-agent-pwned").exists()


def _answers(stdout):
    """{request id: [status, err, out...]} from an agent session's stdout."""
    return {f[0]: f[1:] for f in (line.split("\t") for line in stdout.splitlines())
            if f[0].isdigit()}


def test_forced_command_refuses_sbatch_arguments_not_allowed(cluster, tmp_path, forced_key):
    """A stolen key "can start the configured services and nothing more":
    the agent passed any sbatch argument but a few (a deny-list), so the key
    holder could submit the allowed script as a 100-task array, on every
    node, exclusively, without a time limit, in another partition, in a
    directory anyone can plant files in (--chdir=/tmp, -D/tmp), ... Only
    the arguments the admin allowed for the script pass now; the others are
    refused, named with where to allow them, logged, and nothing reaches
    Slurm."""
    svc, agent, allow = agent_service(cluster, tmp_path, forced_key)
    job = allow / "job.sh"
    work = cluster.work_dir
    tag = f"sg:atk{time.monotonic_ns() % 10**9}:"
    attacks = ["--array=0-99", f"--nodes={len(cluster.nodes)}", "--exclusive", "--time=UNLIMITED",
               f"--partition={cluster.down_partition}", "--chdir=/tmp", "-D/tmp",
               "--begin=now+3600", "--hold", "--mail-type=ALL", "--mail-user=x@example.org",
               "--nice=-100", "--requeue", "-N1"]
    reqs = "".join(f"{k}\tsubmit\t{tag}{k}\t9\t{job}\t--chdir={work}\t{a}\n"
                   for k, a in enumerate(attacks, 1))
    try:
        p = ssh_with(cluster, svc["ssh_key_file"], str(agent), stdin=reqs + "99\tquit\n")
        ans = _answers(p.stdout)
        for k, a in enumerate(attacks, 1):
            f = ans.get(str(k))
            assert f and f[0] == "126", (a, f, cluster.jobs(prefix=tag))
            assert f"sbatch argument {a} " in f[1] and "not allowed" in f[1], (a, f)
            assert f"{job}.sbatch-args" in f[1] and f"{allow}/sbatch-args" in f[1], (a, f)
        assert cluster.jobs(prefix=tag) == [], "an attack reached Slurm"
        text = (tmp_path / "agent.log").read_text()
        assert "refused: sbatch argument --array=0-99 " in text, text

        # listed words pass, word for word; a directory's shared sbatch-args
        # file adds to every script's; --wrap, --export, ... never pass
        (allow / "sbatch-args").write_text(
            "# every script may\n--comment=shared\n--wrap=id --export=ALL -o/tmp/x --job-name=x\n")
        p = ssh_with(cluster, svc["ssh_key_file"], str(agent),
                     stdin=f"1\tsubmit\t{tag}ok\t9\t{job}\t--chdir={work}\t--comment=shared\n"
                           f"2\tsubmit\t{tag}w\t9\t{job}\t--wrap=id\n"
                           f"3\tsubmit\t{tag}e\t9\t{job}\t--export=ALL\n"
                           f"4\tsubmit\t{tag}o\t9\t{job}\t-o/tmp/x\n"
                           f"5\tsubmit\t{tag}c\t9\t{job}\t--comment=sharedX\n"
                           f"6\tsubmit\t{tag}s\t9\t{allow}/sbatch-args\n"
                           f"7\tsubmit\t{tag}t\t9\t{job}.sbatch-args\n"
                           "99\tquit\n")
        ans = _answers(p.stdout)
        assert ans["1"][0] == "0", ans
        for k in ("2", "3", "4"):
            assert ans[k][0] == "126" and "never" in ans[k][1], ans
        assert ans["5"][0] == "126" and "--comment=sharedX" in ans["5"][1], ans
        for k in ("6", "7"):
            assert ans[k][0] == "126" and "not a job script" in ans[k][1], ans
        assert [j[1] for j in cluster.jobs(prefix=tag)] == [f"{tag}ok"]

        # "*" allows any argument (no forced command: the key could run
        # sbatch itself), still not --wrap, --export, ...
        (allow / "sbatch-args").write_text("*\n")
        p = ssh_with(cluster, svc["ssh_key_file"], str(agent),
                     stdin=f"1\tsubmit\t{tag}any\t9\t{job}\t--chdir={work}\t--hold\n"
                           f"2\tsubmit\t{tag}w\t9\t{job}\t--wrap=id\n"
                           "99\tquit\n")
        ans = _answers(p.stdout)
        assert ans["1"][0] == "0" and ans["2"][0] == "126", ans
        assert sorted(j[1] for j in cluster.jobs(prefix=tag)) == [f"{tag}any", f"{tag}ok"]
    finally:
        cluster.scancel(*[j[0] for j in cluster.jobs(prefix=tag)])


def test_list_file_line_with_arguments_allows_no_shorter_path(cluster, tmp_path):
    """A list file's line "SCRIPT ARG..." was matched as a path followed by a
    space: for the line "/x/jobs dir/run.sh --comment=x", a submit of
    /x/jobs (a file that is not listed) passed, with "dir/run.sh" taken
    for an argument. Arguments are options now ("-..." or "*"); a line
    whose words are not is a path with a space, matched whole."""
    agent, _ = install_agent(tmp_path)
    d = tmp_path / "scripts"
    (d / "jobs dir").mkdir(parents=True)
    short = demo_job_script(d / "jobs")
    spaced = demo_job_script(d / "jobs dir" / "run.sh")
    lst = tmp_path / "allow.list"
    lst.write_text(f"{spaced} --comment=x\n")
    tag = f"sg:sp{time.monotonic_ns() % 10**9}:"
    env = {**os.environ, "SLURM_CONF": cluster.slurm_conf}
    try:
        p = subprocess.run([str(agent), "-a", str(lst)], env=env, text=True, timeout=60 * SLACK,
                           capture_output=True, cwd=str(tmp_path),
                           input=f"1\tsubmit\t{tag}short\t9\t{short}\t--comment=x\n"
                                 f"2\tsubmit\t{tag}short2\t9\t{short}\n"
                                 "99\tquit\n")
        ans = _answers(p.stdout)
        for k in ("1", "2"):
            assert ans[k][0] == "126" and "not on the allow-list" in ans[k][1], (ans, p.stderr)
        assert cluster.jobs(prefix=tag) == [], "a script that is not listed reached Slurm"
        # a path with a space in it, listed alone, is still allowed as a whole
        lst.write_text(f"{spaced}\n")
        p = subprocess.run([str(agent), "-a", str(lst)], env=env, text=True, timeout=60 * SLACK,
                           capture_output=True, cwd=str(tmp_path),
                           input=f"1\tsubmit\t{tag}spaced\t9\t{spaced}\n99\tquit\n")
        assert _answers(p.stdout)["1"][0] == "0", (p.stdout, p.stderr)
        assert "sleep.pid" not in p.stderr, p.stderr
    finally:
        cluster.scancel(*[j[0] for j in cluster.jobs(prefix=tag)])


def test_listed_sbatch_arguments_work_end_to_end_through_a_list_file(cluster, slurm_gateway,
                                                                     tmp_path, forced_key):
    """An allow-list file line "SCRIPT ARG..." allows those arguments for
    that script: a cold start through the forced command with them."""
    agent, allow = install_agent(tmp_path)
    job = demo_job_script(allow / "job.sh")
    args = [f"--chdir={cluster.work_dir}", "--time=10", "--comment=listed"]
    listf = tmp_path / "login" / "allow.list"
    listf.write_text(f"# the gateway's jobs\n{tmp_path}/other.sh --exclusive\n"
                     f"{job} {' '.join(args)}\t--exclusive\n")
    svc = slurm_service(cluster, job, slurm_agent=str(agent), sbatch_args=args)
    svc["ssh_key_file"] = str(forced_key(f"{agent} -a {listf} -l {tmp_path}/agent.log",
                                         [svc["remote_port"], svc["remote_port"] + 1]))
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, (r, g.log())
    [inst] = g.svc()["instances"]
    info = cluster.show_job(inst["job_id"])
    assert info["TimeLimit"] == "00:10:00" and info["Comment"] == "listed", info
    assert g.svc()["slurm_agent"] == "up"


def test_unlisted_sbatch_argument_refusal_reaches_the_client(cluster, slurm_gateway, tmp_path,
                                                            forced_key):
    """A service whose sbatch_args are not all allowed (an allow-list from
    before the upgrade, which allows none): the start fails with the
    agent's refusal, naming the argument and where to allow it, in the 502
    and in /api; nothing is submitted."""
    svc, agent, allow = agent_service(cluster, tmp_path, forced_key)
    svc["sbatch_args"] = [f"--chdir={cluster.work_dir}", "--exclusive"]
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 502, r
    err = r.json()["error"]
    assert "sbatch argument --exclusive " in err and f"{allow}/job.sh.sbatch-args" in err, err
    info = g.wait_svc(lambda i: i["last_error"], 30)
    assert "sbatch argument --exclusive " in info["last_error"], info
    assert cluster.jobs(g.job_name()) == []


def test_agent_that_cannot_start_falls_back_to_plain_commands(cluster, slurm_gateway, tmp_path):
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job, slurm_agent="/nonexistent/slurmgate-agent")
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    info = g.svc()
    assert info["slurm_agent"].startswith("fallback: "), info
    assert "running plain Slurm commands" in g.log()


@pytest.mark.parametrize("via", ["agent", "plain"])
def test_failed_job_output_tail_in_502_and_api(cluster, slurm_gateway, tmp_path, via):
    """A job that fails explains itself: the last lines of its output file
    (StdErr, else StdOut, from scontrol) are in the 502 and in /api."""
    agent, allow = install_agent(tmp_path)
    job = write_script(allow / "oom.sh",
                       "#!/bin/sh\necho 'loading model'\n"
                       "echo 'RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB' >&2\n"
                       "exit 1\n")
    kw = {"slurm_agent": str(agent)} if via == "agent" else {}
    svc = slurm_service(cluster, job, **kw)
    allow_args(job, svc["sbatch_args"])
    g = slurm_gateway([svc])
    r = g.get("/llm/x", timeout=60)
    assert r.status == 502, r
    err = r.json()["error"]
    assert "FAILED" in err and "CUDA out of memory" in err, err
    assert "loading model | RuntimeError: CUDA out of memory" in err, err
    info = g.svc()
    assert "CUDA out of memory" in info["last_error"], info
    assert info["slurm_agent"] == ("up" if via == "agent" else None), info


def sse_comment_with(port, path, needle, timeout):
    """Open an SSE request and read its comments until one holds NEEDLE."""
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        while needle.encode() not in data:
            assert time.monotonic() < deadline, data
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        return [ln for ln in data.decode(errors="replace").splitlines() if needle in ln][0]
    finally:
        s.close()


@pytest.mark.parametrize("via", ["agent", "plain"])
def test_pending_job_expected_start_in_check_api_sse_waiting_page_and_retry_after(
        cluster, slurm_gateway, tmp_path, via):
    """A pending job's expected start (squeue %S, here from --begin=now+60)
    is in /check_, /api, the SSE comments, the waiting page, and is the
    Retry-After of a no-hold 503."""
    agent, allow = install_agent(tmp_path)
    job = demo_job_script(allow / "job.sh")
    kw = {"slurm_agent": str(agent)} if via == "agent" else {}
    args = [f"--chdir={cluster.work_dir}", "--begin=now+60"]
    allow_args(job, args)
    held = slurm_service(cluster, job, sbatch_args=args, **kw)
    nohold = slurm_service(cluster, job, name="nh", route="nh", hold=False, sbatch_args=args, **kw)
    g = slurm_gateway([held, nohold], feedback_interval=1)

    r = g.get("/nh/x", timeout=30)
    assert r.status == 503, r
    info = g.wait_svc(lambda i: i["expected_start_in"] is not None, 15, name="nh")
    assert 30 < info["expected_start_in"] <= 61, info
    [inst] = info["instances"]
    assert inst["expected_start"] and "expected to start 20" in inst["detail"], inst
    r = g.get("/nh/x", timeout=30)
    assert r.status == 503, r
    assert 30 < int(r.headers["retry-after"]) <= 61, r.headers
    assert "expected to start" in g.get("/check_nh").json()["reason"]

    # the held service: its SSE comments and the waiting page say it too
    line = sse_comment_with(g.port, "/llm/stream", "expected to start", 20 * SLACK)
    assert line.startswith(": slurmgate: starting") and "BeginTime" in line, line
    r = g.get("/llm/", headers={"Accept": "text/html"})
    assert r.status == 503 and b"expected to start" in r.body, r


def agent_pids(agent):
    """The agent's processes (its main loop and its watcher, run by sh)."""
    import os
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                args = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.decode(errors="replace") == str(agent) for a in args[1:2]):
                out.append(int(d))
    return out


def test_killed_agent_is_started_again_and_keeps_watching(cluster, slurm_gateway, tmp_path,
                                                         forced_key):
    import os
    svc, agent, _ = agent_service(cluster, tmp_path, forced_key)
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    [inst] = g.svc()["instances"]
    pids = agent_pids(agent)
    assert pids, "no agent process found"

    def work_dirs():   # the agent's, on the "login node" (sshd's TMPDIR: none)
        return [d for p in pids for d in Path("/tmp").glob(f"slurmgate-agent.{_this_host()}.{p}.*")]
    assert len(work_dirs()) == 1, work_dirs()
    for p in pids:
        os.kill(p, signal.SIGKILL)
    wait_until(lambda: "starting it again" in g.log() and g.svc()["slurm_agent"] == "up"
               and not set(agent_pids(agent)) & set(pids), 20 * SLACK,
               msg="a new agent")
    wait_until(lambda: not work_dirs(), 10 * SLACK, msg="the killed agent's work dir removed")
    # the new agent watches the job: its end from outside is seen
    cluster.scancel(inst["job_id"])
    g.wait_svc(lambda i: not i["instances"], 20, msg="the cancelled job noticed")
    assert "running plain Slurm commands" not in g.log()
    assert g.get("/llm/pid", timeout=60).status == 200


def _stamp(line):
    import re
    from datetime import datetime, timezone
    m = re.match(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\]", line)
    return datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp() if m else None


def _cold_start_timeline(cluster, g, off):
    """One cold start of g's service: (added beyond Slurm's own part,
    RUNNING noticed after Slurm set it) in seconds, from the gateway's log,
    slurmctld's log and the job script's first line."""
    import re
    from datetime import datetime, timezone
    t0 = time.time()
    r = g.get("/llm/health", timeout=120)
    t1 = time.time()
    assert r.status == 200, r
    text = g.log_path.read_text(errors="replace")[off:]
    job = re.search(r"svc demo\[0\]: Slurm job (\d+) submitted", text).group(1)
    seen = None
    for line in text.splitlines():
        if re.search(rf"Slurm job {job} running on ", line):
            seen = datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f").replace(
                tzinfo=timezone.utc).timestamp()
    ctld = (cluster.dir / "slurm" / "slurmctld.log").read_text(errors="replace").splitlines()
    submit = next(_stamp(ln) for ln in ctld if f"submit_batch_job: JobId={job} " in ln)
    alloc = next(_stamp(ln) for ln in ctld if re.search(rf"Allocate JobId={job}\b", ln))
    out = Path(cluster.work_dir, f"slurm-{job}.out").read_text()
    start = float(re.search(r"bench-job-start (\d+\.\d+)", out).group(1))
    return (t1 - t0) - (start - submit), seen - alloc


@pytest.mark.skipif(not __import__("os").environ.get("SLURMGATE_MEASURE"),
                    reason="a measurement (SLURMGATE_MEASURE=1), not a check")
def test_measure_cold_start_with_and_without_agent(cluster, slurm_gateway, tmp_path):
    """Cold start added time beyond Slurm's own part, and RUNNING noticed,
    through plain commands and through the agent (same poll_fast_ms)."""
    import statistics
    env = __import__("os").environ
    n = int(env.get("SLURMGATE_MEASURE_N", "5"))
    fast_ms = int(env.get("SLURMGATE_MEASURE_FAST_MS", "200"))
    res = {}
    for via in ("plain", "agent"):
        d = tmp_path / via
        d.mkdir()
        agent, allow = install_agent(d)
        job = demo_job_script(allow / "job.sh", extra='echo "bench-job-start $(date +%s.%N)"\n')
        kw = {"slurm_agent": str(agent)} if via == "agent" else {}
        svc = slurm_service(cluster, job, **kw)
        allow_args(job, svc["sbatch_args"])
        g = slurm_gateway([svc], poll_fast_ms=fast_ms, poll_slow_s=15)
        # steady state: the master is up (and the agent, which did the
        # start-up squeue)
        wait_until(lambda: "ssh master" in g.log() and (via == "plain" or
                                                        g.svc()["slurm_agent"] == "up"), 20)
        rows = []
        for _ in range(n):
            off = len(g.log_path.read_text(errors="replace"))
            rows.append(_cold_start_timeline(cluster, g, off))
            http_request(g.port, "POST", "/api/services/demo/stop", timeout=10)
            g.wait_svc(lambda i: i["state"] == "stopped", 30)
            wait_until(lambda: not cluster.live_jobs(g.job_name()), 30)
        res[via] = rows
        g.terminate()
    for via, rows in res.items():
        added = [a for a, _ in rows]
        seen = [s for _, s in rows]
        print(f"{via}: added beyond Slurm median {statistics.median(added) * 1000:.0f} ms "
              f"(min {min(added) * 1000:.0f}, max {max(added) * 1000:.0f}); RUNNING noticed "
              f"median {statistics.median(seen) * 1000:.0f} ms (min {min(seen) * 1000:.0f}, "
              f"max {max(seen) * 1000:.0f}); n={len(rows)}")


def test_agent_runs_here_without_remote_host(cluster, slurm_gateway, tmp_path):
    """Without remote_host the agent is a child of the gateway: no ssh."""
    svc, agent, _ = agent_service(cluster, tmp_path, timeout=3)
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    g = slurm_gateway([svc], env={"SLURM_CONF": cluster.slurm_conf})
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    assert g.svc()["slurm_agent"] == "up"
    assert g.master_pids() == [] and g.ssh_leftovers() == []
    assert agent_pids(agent)
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 20 * SLACK, interval=0.2,
               msg="the idle job to be cancelled")
    assert g.terminate() == 0
    wait_until(lambda: not agent_pids(agent), 10 * SLACK, msg="the agent gone with the gateway")


def test_killed_ssh_master_takes_the_agent_which_comes_back_with_it(cluster, slurm_gateway,
                                                                   tmp_path, forced_key):
    import os
    svc, agent, _ = agent_service(cluster, tmp_path, forced_key)
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, r
    pid1 = r.json()["pid"]
    [master] = g.master_pids()
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: g.master_pids() and g.master_pids() != [master], 30 * SLACK,
               msg="a new ssh master")
    wait_until(lambda: g.svc()["slurm_agent"] == "up" and "starting it again" in g.log(),
               30 * SLACK, msg="the agent back")
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200 and r.json()["pid"] == pid1, r
    assert "running plain Slurm commands" not in g.log()


def test_reload_drops_and_brings_back_the_agent(cluster, slurm_gateway, tmp_path):
    import json
    svc, agent, _ = agent_service(cluster, tmp_path)
    g = slurm_gateway([svc])
    assert g.get("/llm/pid", timeout=60).status == 200
    assert g.svc()["slurm_agent"] == "up"

    def reload(with_agent):
        cfg = json.loads(g.config_path.read_text())
        if with_agent:
            cfg["Services"][0]["slurm_agent"] = str(agent)
        else:
            cfg["Services"][0].pop("slurm_agent", None)
        g.config_path.write_text(json.dumps(cfg))
        g.proc.send_signal(signal.SIGHUP)

    reload(False)
    # (logged when the agent's session ends, a moment after its processes)
    wait_until(lambda: g.svc()["slurm_agent"] is None and not agent_pids(agent) and
               "no service names it now" in g.log(), 20 * SLACK,
               msg="the agent stopped after the reload")
    # plain polling follows the job now
    [inst] = g.svc()["instances"]
    cluster.scancel(inst["job_id"])
    g.wait_svc(lambda i: not i["instances"], 20 * SLACK, msg="the cancelled job noticed without agent")

    reload(True)
    wait_until(lambda: g.get("/llm/pid", timeout=60).status == 200, 60 * SLACK)
    assert g.svc()["slurm_agent"] == "up" and agent_pids(agent)


def test_agent_dying_during_sbatch_leaves_no_untracked_job(cluster, slurm_gateway, tmp_path):
    """The agent dies after sbatch queued the job but before it answered
    (an sbatch wrapper kills it, once): the gateway must find that job by
    its name and track it, not fail the start and submit a second one
    while the first runs untracked until its walltime."""
    import os
    svc, agent, _ = agent_service(cluster, tmp_path, timeout=3)
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    shims = tmp_path / "shims"
    shims.mkdir()
    mark = tmp_path / "agent-killed"
    write_script(shims / "sbatch", f"""#!/bin/sh
out=$({shutil.which("sbatch")} "$@"); st=$?
echo "$out"
if [ $st -eq 0 ] && [ ! -e {mark} ]; then
    : > {mark}
    for p in $(pgrep -f '{agent}( |$)'); do kill -9 "$p"; done
fi
exit $st
""")
    g = slurm_gateway([svc], env={"SLURM_CONF": cluster.slurm_conf,
                                  "PATH": f"{shims}:{os.environ['PATH']}"})
    r = g.get("/llm/pid", timeout=90)
    assert mark.exists(), "the wrapper did not run: the agent was not used"
    assert r.status == 200, (r, g.log())
    [inst] = g.svc()["instances"]
    live = cluster.live_jobs(g.job_name())
    assert [j[0] for j in live] == [inst["job_id"]], (live, inst, g.log())
    assert "died during sbatch" in g.log(), g.log()
    # the job found again is the gateway's like any other: its idle cancel
    wait_until(lambda: not cluster.live_jobs(g.job_name()), 30 * SLACK, interval=0.2,
               msg="the idle job to be cancelled")
    assert g.terminate() == 0


# --- the agent's work directory (mktemp -d in TMPDIR) is never left behind ---

def _agent_dirs(tmpd):
    return {p.name for p in tmpd.iterdir() if p.name.startswith("slurmgate-agent.")}


def _this_host():
    """The host name as the agent writes it into its work directory's name."""
    import os
    import re
    return re.sub(r"[^A-Za-z0-9.-]", "", os.uname().nodename)


def _dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_sigkilled_agent_work_dir_is_removed_by_the_next_agent(cluster, slurm_gateway, tmp_path):
    """An agent killed with SIGKILL (by the gateway after a hung command, by
    an admin, by an sbatch wrapper) cannot run its EXIT trap: its work
    directory stayed in TMPDIR forever, one more per kill. The next agent
    on that host removes its account's directories whose agent is gone, and
    keeps a live agent's, one made on another login node (TMPDIR may be
    shared), another user's and a symlink."""
    import os
    svc, agent, _ = agent_service(cluster, tmp_path)
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    tmpd = tmp_path / "agent-tmp"
    tmpd.mkdir()
    host = _this_host()
    dead = _dead_pid()
    live = subprocess.Popen(["sleep", "600"])
    try:
        def seed(name):
            d = tmpd / name
            d.mkdir()
            (d / "w.raw").write_text("x\n")
            return d
        stale = seed(f"slurmgate-agent.{host}.{dead}.Stale1")
        kept = [seed(f"slurmgate-agent.{host}.{live.pid}.Live01"),   # a live agent's
                seed(f"slurmgate-agent.otherlogin.{dead}.Other1"),  # another login node's
                seed(f"slurmgate-agent.{host}.{dead}.Nobody")]      # another user's
        os.chown(kept[2] / "w.raw", 65534, 65534)
        os.chown(kept[2], 65534, 65534)
        target = seed("not-an-agent-dir")
        link = tmpd / f"slurmgate-agent.{host}.{dead}.Link01"
        link.symlink_to(target)
        seeded = {d.name for d in kept} | {link.name, stale.name}

        g = slurm_gateway([svc], env={"SLURM_CONF": cluster.slurm_conf, "TMPDIR": str(tmpd)})
        wait_until(lambda: g.svc()["slurm_agent"] == "up", 30 * SLACK, msg="the agent up")
        [first] = _agent_dirs(tmpd) - seeded
        pids = agent_pids(agent)
        assert pids, "no agent process found"
        for p in pids:
            os.kill(p, signal.SIGKILL)
        wait_until(lambda: "starting it again" in g.log() and g.svc()["slurm_agent"] == "up"
                   and not set(agent_pids(agent)) & set(pids), 20 * SLACK, msg="a new agent")
        wait_until(lambda: not (tmpd / first).exists(), 10 * SLACK,
                   msg=f"the SIGKILLed agent's work dir {first} removed")
        assert not stale.exists(), "a dead agent's work dir on this host was kept"
        for d in kept:
            assert d.is_dir() and (d / "w.raw").exists(), f"{d.name} was removed"
        assert link.is_symlink() and (target / "w.raw").exists(), "the symlink was followed"
        assert "removed the work directory" in g.log(), g.log()
        [second] = _agent_dirs(tmpd) - seeded
        assert second != first
        assert g.terminate() == 0
        wait_until(lambda: _agent_dirs(tmpd) == seeded - {stale.name}, 10 * SLACK,
                   msg="the agent's own work dir removed when the gateway stops")
    finally:
        live.kill()
        live.wait()


def _read_line(p, buf, timeout):
    """One line from P's stdout (binary pipe) within TIMEOUT seconds."""
    import os
    import select
    deadline = time.monotonic() + timeout * SLACK
    while b"\n" not in buf[0]:
        left = deadline - time.monotonic()
        assert left > 0, f"no line from the agent in {timeout} s: {buf[0]!r}"
        r, _, _ = select.select([p.stdout], [], [], left)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            assert chunk, f"the agent closed its stdout: {buf[0]!r}"
            buf[0] += chunk
    line, buf[0] = buf[0].split(b"\n", 1)
    return line.decode()


@pytest.mark.parametrize("how", ["eof", "quit", "HUP", "TERM", "TERM again and again", "KILL main"])
def test_agent_work_dir_removed_however_the_agent_ends(cluster, tmp_path, how):
    """The agent's work dir is gone after every way it ends, its watcher
    running: stdin EOF (the ssh session closed), quit, HUP, TERM, more TERMs
    while its EXIT trap runs (a local agent gets the gateway's TERM and its
    parent-death TERM: the second one ended the cleanup before its rm),
    and a SIGKILL of its main shell alone (the watcher, which outlives it by
    one cycle, removes it)."""
    import os
    agent, _ = install_agent(tmp_path)
    tmpd = tmp_path / "agent-tmp"
    tmpd.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpd), SLURM_CONF=cluster.slurm_conf)
    p = subprocess.Popen([str(agent)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    buf = [b""]
    try:
        assert _read_line(p, buf, 10).startswith("*\thello"), buf
        p.stdin.write(b"1\twatch\tsg:x:\t200\t1\n")
        p.stdin.flush()
        assert _read_line(p, buf, 10).startswith("1\t0\t")
        [d] = list(tmpd.iterdir())
        wait_until(lambda: (d / "w.raw").exists(), 10 * SLACK, msg="the watcher's first squeue")
        if how == "eof":
            p.stdin.close()
        elif how == "quit":
            p.stdin.write(b"2\tquit\n")
            p.stdin.flush()
        elif how == "TERM again and again":
            # TERMs until it is gone: some land while its EXIT trap runs
            deadline = time.monotonic() + 10 * SLACK
            while p.poll() is None and time.monotonic() < deadline:
                p.send_signal(signal.SIGTERM)
                time.sleep(0.002)
        elif how == "KILL main":
            p.kill()
            p.wait(10)   # reaped, as sshd or the gateway does: no zombie for kill -0
        else:
            p.send_signal(getattr(signal, f"SIG{how}"))
        wait_until(lambda: not d.exists(), 10 * SLACK, msg=f"the work dir removed after {how}")
        assert p.wait(10 * SLACK) in (0, -signal.SIGKILL)
        assert list(tmpd.iterdir()) == []
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
