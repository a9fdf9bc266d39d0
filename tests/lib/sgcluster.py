"""The throw-away Slurm cluster (tests/env/clusterctl): one start-with-retry
and one stop, shared by the Slurm tests (tests/integration/slurm/slurmlib.py),
the chaos soak (tests/chaos) and the benchmark (bench/).

start_cluster(prefix, attempts=2, timeout=120, env=None, keep=False,
              on_dir=None, on_fail=None)
    `clusterctl start DIR` in a new temp dir (named with prefix), tried up
    to `attempts` times: a loaded machine can miss clusterctl's deadline
    once. A failed attempt's dir is stopped (stop_cluster, with keep) before
    the next. on_dir(d) is called with each dir before its start, and
    on_dir(None) once a failed one is stopped, so that a caller interrupted
    meanwhile knows what to stop; on_fail(attempt, output) after each failed
    attempt (1-based; output: clusterctl's, or why it timed out). Returns the
    dir; raises ClusterError (the last output) when every attempt failed.
    A KeyboardInterrupt (or any exception) during a start kills clusterctl
    (subprocess.run) and leaves the dir to the caller (on_dir told it).
stop_cluster(d, keep=False, timeout=120)
    `clusterctl stop DIR`; then DIR is removed unless keep is true or the
    stop failed (its logs tell why). True if clusterctl stop succeeded.
"""
import shutil
import subprocess
import tempfile
from pathlib import Path

CLUSTERCTL = Path(__file__).resolve().parents[1] / "env" / "clusterctl"


class ClusterError(RuntimeError):
    """clusterctl start failed on every attempt."""


def clusterctl(cmd, d, timeout, env=None):
    """clusterctl CMD DIR (output and errors together, as text)."""
    return subprocess.run([str(CLUSTERCTL), cmd, str(d)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)


def stop_cluster(d, keep=False, timeout=120):
    try:
        ok = clusterctl("stop", d, timeout).returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    if ok and not keep:
        shutil.rmtree(d, ignore_errors=True)
    return ok


def start_cluster(prefix, attempts=2, timeout=120, env=None, keep=False, on_dir=None,
                  on_fail=None):
    last = None
    for attempt in range(1, attempts + 1):
        d = tempfile.mkdtemp(prefix=prefix)
        if on_dir:
            on_dir(d)
        try:
            p = clusterctl("start", d, timeout, env)
            last, ok = p.stdout, p.returncode == 0
        except subprocess.TimeoutExpired as e:
            last, ok = f"clusterctl start did not finish within {timeout} s: {e}", False
        if ok:
            return d
        if on_fail:
            on_fail(attempt, last)
        stop_cluster(d, keep=keep)
        if on_dir:
            on_dir(None)
    raise ClusterError(f"clusterctl start failed {attempts} times; last:\n{last}")
