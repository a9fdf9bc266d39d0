"""Config values reach the cluster literally: sbatch runs over ssh, so every
argument passes through the login node's shell once. A bash_file path and an
sbatch_args value full of shell metacharacters must arrive unchanged, and
nothing in them may run."""
import os
import uuid
from pathlib import Path

import pytest

from conftest import SLACK, wait_until
from slurmlib import cluster, cmdline, demo_job_script, slurm_gateway, slurm_service  # noqa: F401


def test_shell_metacharacters_in_bash_file_and_sbatch_args_are_passed_literally(
        cluster, slurm_gateway, tmp_path):
    tag = uuid.uuid4().hex[:10]
    markers = [Path(f"/tmp/pwned-{tag}-{k}") for k in range(4)]
    rel_marker = f"pwned-{tag}-rel"
    # a path whose components hold spaces, both quotes, ';', '&', '|', a
    # glob, backticks, $VAR and $(...) - '/' inside $( ) splits it into
    # directories, which is fine: the whole path is the payload
    weird = (tmp_path / "dir with spaces 'single' \"double\" ; & | *"
             / f"$(touch {markers[0]})" / f"`touch {markers[1]}`"
             / f"x;touch {rel_marker};$HOME$((1+1)) \\n end")
    job = demo_job_script(weird / f"job $(touch {rel_marker}).sh")
    assert job.exists()
    comment = f"a b;c $(touch {markers[2]}) `touch {markers[3]}` 'q' \"dq\" $HOME \\ end"
    svc = slurm_service(cluster, job,
                        sbatch_args=[f"--chdir={cluster.work_dir}", f"--comment={comment}"])
    g = slurm_gateway([svc])
    name = g.job_name()

    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, f"{r}\n{g.log()}"
    [(job_id, _, state, _)] = cluster.jobs(name)
    assert state == "RUNNING"

    info = cluster.show_job(job_id)
    # scontrol's Command= is the script and its arguments (the port)
    want = f"{job} {svc['remote_port']}"
    assert info.get("Command", "").rstrip() == want, \
        f"sbatch ran {info.get('Command')!r}, not the configured bash_file: {want!r}"
    assert info.get("Comment", "").rstrip() == comment, \
        f"--comment arrived as {info.get('Comment')!r}, expected {comment!r}"
    assert info.get("JobName") == name, info.get("JobName")

    # nothing was executed anywhere: not by the login shell (cwd /root), not
    # in the job's directory, not by the gateway (its cwd is tmp_path)
    places = [Path("/root"), Path(cluster.work_dir), tmp_path, Path("/tmp")]
    made = [str(m) for m in markers if m.exists()]
    made += [str(p / rel_marker) for p in places if (p / rel_marker).exists()]
    assert not made, f"a shell ran a command from the config: {made}"

    g.terminate()
    made = [str(m) for m in markers if m.exists()]
    made += [str(p / rel_marker) for p in places if (p / rel_marker).exists()]
    assert not made, f"a shell ran a command from the config: {made}"
    wait_until(lambda: not cluster.live_jobs(name), 10 * SLACK)


@pytest.mark.parametrize("odd_name", [
    "s d ' \" ;$(touch {marker})",    # quotes for ssh's own option parser
    "pct %d %h %%",                   # ssh expands %-tokens in -S, -i and UserKnownHostsFile
], ids=["quotes", "percent"])
def test_weird_state_dir_and_key_path_work_and_run_nothing(cluster, slurm_gateway, tmp_path,
                                                         odd_name):
    """The same for the gateway's own ssh invocations: a state_dir (control
    socket, known_hosts) and an ssh_key_file whose names hold characters that
    are special to ssh's option parsing, not just to a shell."""
    tag = uuid.uuid4().hex[:10]
    marker = Path(f"/tmp/pwned-{tag}")
    odd = tmp_path / odd_name.format(marker=marker.name)
    odd.mkdir()
    key = odd / "key `touch x` %r"
    key.write_bytes(Path(cluster.ssh_key).read_bytes())
    key.chmod(0o600)
    state = odd / "state $(x)"
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job, ssh_key_file=str(key), start_timeout=15)
    g = slurm_gateway([svc], state_dir=str(state))
    r = g.get("/llm/pid", timeout=40)
    assert r.status == 200, f"{r}\n{g.log()}"
    assert not marker.exists() and not (tmp_path / marker.name).exists()
    assert not Path("/root", marker.name).exists()
    # known_hosts and the control socket went where the config says
    assert (state / "known_hosts").exists(), sorted(os.listdir(state))
    ctl = [a for p in g.master_pids() for a in [(lambda c: c[c.index("-S") + 1])(cmdline(p))]]
    assert len(ctl) == 1 and os.path.exists(ctl[0]), ctl
