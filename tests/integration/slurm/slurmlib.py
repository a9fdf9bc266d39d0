"""Helpers for the Slurm launcher tests: a real multi-node Slurm cluster and
a loopback sshd (tests/env/clusterctl), and a slurmgate process whose
services are Slurm jobs submitted over ssh.

Each compute node (node1, node2, ...) is a slurmd in a network namespace of
its own with its own address (Cluster.node_addr); the node names do not
resolve on this host. Jobs bind their node's address (demo_job_script).
Fixtures: `cluster` (one per session, shared), `nodes` (the same cluster,
with every node put back to idle after the test: for tests that drain,
down, suspend or cut off nodes), `slurm_gateway` (a gateway factory).

This is deliberately not a conftest.py: a second conftest.py would replace
the module named "conftest" that the tests one level up import from. The
test modules here import the fixtures below by name.

Every wait is a poll against a deadline, every subprocess and socket has a
timeout, and all traffic stays on 127.0.0.1 and the test namespaces'
addresses.
"""
import atexit
import http.client
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

import conftest as base
import sgcluster  # tests/lib, on sys.path through conftest
from conftest import SLACK, gateway_bin, http_request, pid_alive, wait_until
from sgproc import children_of, cmdline, proc_ppid

REPO = Path(__file__).resolve().parents[3]
CLUSTERCTL = sgcluster.CLUSTERCTL
DEMO_BIN = base.DEMO_BIN

# Job states after which a job holds no resources.
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
         "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


# --------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------

class Cluster:
    """A running clusterctl cluster (env.json) and Slurm CLI helpers that run
    locally with its SLURM_CONF."""

    def __init__(self, path):
        self.dir = Path(path)
        self.env = json.loads((self.dir / "env.json").read_text())
        self.slurm_conf = self.env["slurm_conf"]
        self.ssh_port = int(self.env["ssh_port"])
        self.ssh_user = self.env["ssh_user"]
        self.ssh_key = self.env["ssh_key"]
        self.known_hosts = self.env["ssh_known_hosts"]
        self.work_dir = self.env["work_dir"]
        # a job that writes "<seconds>" to linger_dir/$SLURM_JOB_ID stays
        # COMPLETING that long (the cluster's epilog): see linger_script()
        self.linger_dir = self.env["linger_dir"]
        self.node = self.env["slurm_node"]          # the first node
        self.partition = self.env["partition"]
        self.down_partition = self.env["down_partition"]
        # [{"name", "addr", "netns", "veth"}], node1 first
        self.nodes = self.env.get("nodes") or [{"name": self.node, "addr": "127.0.0.1"}]
        self.node_names = [n["name"] for n in self.nodes]

    # --- nodes ---

    def _node(self, name):
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise KeyError(f"no node {name!r} in this cluster ({self.node_names})")

    def node_addr(self, name):
        """The node's address (NodeAddr): where its jobs' services listen."""
        return self._node(name)["addr"]

    def clusterctl(self, *args, timeout=60, check=True):
        p = subprocess.run([str(CLUSTERCTL), args[0], str(self.dir), *map(str, args[1:])],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"clusterctl {args}: exit {p.returncode}: {p.stderr.strip()}")
        return p

    def node_exec(self, name, *argv, timeout=20, check=True):
        """Run argv in node NAME's network namespace (hostname = NAME, with
        this cluster's SLURM_CONF); returns the CompletedProcess."""
        return self.clusterctl("exec", name, *argv, timeout=timeout, check=check)

    def slurmd_stop(self, name):
        """SIGKILL node NAME's slurmd (its jobs keep running, as after a
        slurmd crash). Slurm marks the node DOWN after SlurmdTimeout (30 s),
        or at once with scontrol_node(name, "down")."""
        self.clusterctl("slurmd-stop", name)

    def slurmd_start(self, name):
        self.clusterctl("slurmd-start", name)

    def node_crash(self, name):
        """Power loss: SIGKILL every process in node NAME's namespace
        (slurmd, slurmstepd, job processes)."""
        ns = self._node(name)["netns"]
        out = subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE, text=True,
                             timeout=10).stdout
        for pid in out.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def node_link(self, name, up):
        """Cut node NAME off the network (its veth down), or reconnect it."""
        subprocess.run(["ip", "link", "set", self._node(name)["veth"], "up" if up else "down"],
                       check=True, timeout=10)

    def scontrol(self, *args, timeout=20, check=True):
        """`scontrol ARGS...` with this cluster's SLURM_CONF; its stdout."""
        return self.run("scontrol", *map(str, args), timeout=timeout, check=check)

    def scontrol_node(self, name, state, reason="slurmgate test"):
        """scontrol update NodeName=NAME State=STATE (drain, down, resume,
        idle, ...); DRAIN/DOWN need a reason."""
        args = ["update", f"NodeName={name}", f"State={state}"]
        if state.lower() in ("drain", "down", "fail", "future"):
            args.append(f"Reason={reason}")
        return self.scontrol(*args)

    def node_states(self):
        """{node: state} from sinfo, e.g. {"node1": "idle", "node2": "drained"}."""
        out = self.run("sinfo", "-h", "-N", "-p", self.partition, "-o", "%N|%T")
        return dict(line.strip().split("|", 1) for line in out.splitlines() if "|" in line)

    def wait_node_state(self, name, pred, timeout=30):
        """Poll sinfo until pred(state of NAME) (a str such as "idle",
        "drained", "down*", "mixed") is true; returns the state."""
        if isinstance(pred, str):
            want = pred
            pred = lambda st: st == want  # noqa: E731
        holder = {}

        def probe():
            holder["st"] = self.node_states().get(name)
            return pred(holder["st"])

        try:
            wait_until(probe, timeout * SLACK, interval=0.2, msg=f"node {name} state")
        except AssertionError as e:
            raise AssertionError(f"{e}; last state: {holder.get('st')}") from None
        return holder["st"]

    def job_node(self, job_id):
        """The node a job runs on ("" while pending)."""
        out = self.run("squeue", "-h", "-j", str(job_id), "-o", "%N", check=False)
        return out.strip()

    def reset_nodes(self, timeout=45):
        """Put every node back: veth up, slurmd running, RESUME if drained or
        down, until all are idle (or mixed/allocated, with jobs)."""
        for n in self.nodes:
            if "veth" in n:
                self.node_link(n["name"], True)
                self.slurmd_start(n["name"])
        ok = ("idle", "mixed", "allocated")
        for name, st in self.node_states().items():
            if st not in ok:
                self.scontrol("update", f"NodeName={name}", "State=RESUME", check=False)
        for n in self.node_names:
            self.wait_node_state(n, lambda st: st in ok, timeout)

    def http_get(self, addr, port, path, timeout=10.0):
        """GET http://ADDR:PORT/PATH straight to a node (no gateway):
        (status, body bytes)."""
        c = http.client.HTTPConnection(addr, port, timeout=timeout * SLACK)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def run(self, *argv, timeout=20, check=True):
        env = dict(os.environ, SLURM_CONF=self.slurm_conf)
        p = subprocess.run(list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{argv}: exit {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def jobs(self, name=None, prefix=None):
        """[(job_id, name, state, reason)] from `squeue -h -t all`, for the job
        NAME (exactly) or every job whose name starts with PREFIX."""
        argv = ["squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%r"]
        if name is not None:
            argv += ["-n", name]
        out = self.run(*argv)
        rows = []
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 4:
                continue
            if name is not None and parts[1] != name:
                continue
            if prefix is not None and not parts[1].startswith(prefix):
                continue
            rows.append(tuple(parts))
        return rows

    def live_jobs(self, name=None, prefix=None):
        """Jobs that are not over yet (not listed means over too)."""
        return [j for j in self.jobs(name, prefix) if j[2] not in ENDED]

    def show_job(self, job_id):
        """`scontrol show job ID` as {key: value}; values may hold spaces
        (Command=, Comment=, ... are on lines of their own)."""
        out = self.run("scontrol", "show", "job", str(job_id))
        info = {}
        for line in out.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith(("Command=", "Comment=", "WorkDir=", "StdOut=", "StdErr=",
                                "StdIn=")):
                k, _, v = line.partition("=")
                info[k] = v
                continue
            for tok in line.split(" "):
                k, sep, v = tok.partition("=")
                if sep:
                    info.setdefault(k, v)
        return info

    def scancel(self, *job_ids):
        if job_ids:
            self.run("scancel", *map(str, job_ids), check=False)

    def cancel_prefix(self, prefix):
        ids = [j[0] for j in self.live_jobs(prefix=prefix)]
        self.scancel(*ids)
        return ids


_cluster = {"obj": None, "dir": None, "users": 0}
_cluster_lock = threading.Lock()


def _set_dir(d):
    _cluster["dir"] = d


def _stop_cluster():
    d = _cluster["dir"]
    if d is None:
        return
    _cluster["dir"] = None
    _cluster["obj"] = None
    # keep the cluster's logs only when asked to, or when stop went wrong
    sgcluster.stop_cluster(d, keep=bool(os.environ.get("SLURMGATE_KEEP_CLUSTER")), timeout=60)


def _start_cluster():
    try:
        d = sgcluster.start_cluster("sg-slurm-", keep=bool(os.environ.get("SLURMGATE_KEEP_CLUSTER")),
                                    on_dir=_set_dir)
    except sgcluster.ClusterError as e:
        pytest.fail(f"could not start the test cluster:\n{str(e)[-4000:]}", pytrace=False)
    _cluster["obj"] = Cluster(d)
    return _cluster["obj"]


atexit.register(_stop_cluster)


@pytest.fixture(scope="session")
def cluster():
    """One cluster for the whole session, stopped at the end (also when tests
    fail). The fixture is imported into several modules, so pytest may
    instantiate it once per module: the cluster itself is shared and stops
    with the last user."""
    with _cluster_lock:
        if _cluster["obj"] is None:
            _start_cluster()
        _cluster["users"] += 1
        c = _cluster["obj"]
    try:
        yield c
    finally:
        with _cluster_lock:
            _cluster["users"] -= 1
            if _cluster["users"] <= 0:
                _stop_cluster()


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------

# the names these tests use for the shared /proc readers (tests/lib/sgproc.py)
ppid_of = proc_ppid
children = children_of


def running_job(cluster, g, route="llm"):
    """Start ROUTE's service through a request (200); the id of its one
    job, RUNNING."""
    r = g.get(f"/{route}/pid", timeout=60)
    assert r.status == 200, r
    [(job, _, state, _)] = cluster.jobs(g.job_name(route))
    assert state == "RUNNING"
    return job


def ssh_pids_with(needle):
    """Live ssh processes whose arguments mention NEEDLE (a control path)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        args = cmdline(int(d))
        if args and os.path.basename(args[0]) == "ssh" and any(needle in a for a in args) \
                and pid_alive(int(d)):
            found.append(int(d))
    return found


def write_script(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


# The node's own address as Slurm knows it, in a job: what a service binds
# so that only that node's address reaches it.
NODE_ADDR_SH = ('addr=$(scontrol show node "$SLURMD_NODENAME" | '
                "sed -n 's/.* NodeAddr=\\([^ ]*\\).*/\\1/p')\n"
                '[ -n "$addr" ] || { echo "no NodeAddr for $SLURMD_NODENAME" >&2; exit 1; }\n')


def linger_lines(cluster, seconds):
    """Job-script lines that keep the job COMPLETING for SECONDS (1-9) after
    it ends: the cluster's epilog sleeps for a job that asked."""
    return f'printf {seconds} >"{cluster.linger_dir}/$SLURM_JOB_ID"\n'


def demo_job_script(path, extra="", exec_=True):
    """A job script that runs the demo service on port $1, bound only to its
    node's address (NodeAddr). exec_=False runs it as a child, the way most
    real job scripts do. Absolute paths: the job does not see the gateway's
    environment."""
    run = f'"{DEMO_BIN}" --host "$addr" --port "$1"'
    tail = f"exec {run}\n" if exec_ else f"{run}\necho \"demo exited: $?\"\n"
    return write_script(path, "#!/bin/sh\n" + extra + NODE_ADDR_SH + tail)


# --------------------------------------------------------------------------
# the gateway
# --------------------------------------------------------------------------

def slurm_service(cluster, bash_file, name="demo", route="llm", **overrides):
    port = base.free_port()
    svc = {
        "name": name,
        "route_name": route,
        "launcher": "slurm",
        "remote_host": "127.0.0.1",
        "ssh_port": cluster.ssh_port,
        "ssh_username": cluster.ssh_user,
        "ssh_key_file": cluster.ssh_key,
        "bash_file": str(bash_file),
        "remote_port": port,
        "timeout": 60,
        "start_timeout": 60,
        "sbatch_args": [f"--chdir={cluster.work_dir}"],
        "check_health_path": "/health",
    }
    svc.update(overrides)
    return svc


class SlurmGateway:
    """A slurmgate process for Slurm services. restart() runs a new process
    with exactly the same config file (same port, state_dir, instance_id)."""

    def __init__(self, tmp_path, cluster, services, name="gw", env=None, **top):
        self.dir = Path(tmp_path)
        self.env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
        self.env.update(env or {})
        self.cluster = cluster
        self.name = name
        self.port = base.free_port()
        self.instance_id = top.pop("instance_id", None) or f"t{uuid.uuid4().hex[:10]}"
        self.state_dir = Path(top.pop("state_dir", None) or self.dir / f"{name}-state")
        self.services = services
        self.config = {
            "listen": f"127.0.0.1:{self.port}",
            "state_dir": str(self.state_dir),
            "instance_id": self.instance_id,
            "poll_fast_ms": 250,
            "poll_slow_s": 2,
            "shutdown_grace": 5,
            "Services": services,
        }
        self.config.update(top)
        self.config_path = self.dir / f"{name}.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.proc = None
        self.runs = 0
        self.log_path = None
        self._log = None
        self.exit_codes = []

    # --- names ---

    def job_name(self, route="llm", index=0):
        return f"sg:{self.instance_id}:{route}:{index}"

    @property
    def job_prefix(self):
        return f"sg:{self.instance_id}:"

    # --- life cycle ---

    def start(self, ready_timeout=15.0):
        self.runs += 1
        self.log_path = self.dir / f"{self.name}.{self.runs}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(gateway_bin()), "-c", str(self.config_path)],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=str(self.dir), env=self.env)
        lg = getattr(base, "_live_gateways", None)
        if isinstance(lg, list) and self not in lg:
            lg.append(self)   # the conftest hook attaches our log to failures
        deadline = time.monotonic() + ready_timeout * SLACK
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"slurmgate exited with {self.proc.returncode} at start:\n{self.log()}")
            try:
                if http_request(self.port, "GET", "/api/health", timeout=1).status == 200:
                    return self
            except OSError:
                pass
            except Exception:  # noqa: BLE001 - http.client errors while starting
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"slurmgate did not answer /api/health:\n{self.log()}")
            time.sleep(0.05)

    def restart(self, ready_timeout=15.0):
        assert self.proc is None or self.proc.poll() is not None, "still running"
        self._close_log()
        return self.start(ready_timeout)

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(10)
        self.exit_codes.append(rc)
        return rc

    def terminate(self, timeout=30.0):
        """SIGTERM and wait (deadline). The exit code, or None if it had to
        be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout * SLACK)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            rc = None
        self.exit_codes.append(rc)
        return rc

    def log(self, tail=15000):
        if self.log_path is None:
            return ""
        text = ""
        for k in range(1, self.runs + 1):
            p = self.dir / f"{self.name}.{k}.log"
            try:
                text += f"--- run {k} ---\n" + p.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return text[-tail:]

    # --- ssh master ---

    def master_pids(self):
        """The gateway's ssh ControlMaster: its child ssh with -M whose
        control path is under state_dir (or the /tmp fallback)."""
        if not self.alive():
            return []
        out = []
        for c in children(self.pid):
            args = cmdline(c) or []
            if args and os.path.basename(args[0]) == "ssh" and "-M" in args and "-S" in args:
                ctl = args[args.index("-S") + 1]
                if ctl.startswith(str(self.state_dir)) or \
                        ctl.startswith(f"/tmp/slurmgate-cm-{self.pid}-"):
                    out.append(c)
        return out

    def ssh_leftovers(self):
        """Any live ssh process (master or not) that uses our control path."""
        pids = set(ssh_pids_with(str(self.state_dir)))
        if self.proc is not None:
            pids.update(ssh_pids_with(f"/tmp/slurmgate-cm-{self.proc.pid}-"))
        return sorted(pids)

    # --- HTTP ---

    def get(self, path, timeout=10.0, **kw):
        return http_request(self.port, "GET", path, timeout=timeout * SLACK, **kw)

    def svc(self, name="demo"):
        r = self.get(f"/api/services/{name}", timeout=5)
        assert r.status == 200, r
        return r.json()

    def check(self, route="llm"):
        r = self.get(f"/check_{route}", timeout=5)
        assert r.status == 200, r
        return r.json()

    def wait_svc(self, pred, timeout, name="demo", msg=None):
        """Poll /api/services/NAME until pred(info) is true; returns info."""
        holder = {}

        def probe():
            holder["info"] = self.svc(name)
            return pred(holder["info"])

        try:
            wait_until(probe, timeout * SLACK, interval=0.1, msg=msg)
        except AssertionError as e:
            raise AssertionError(f"{e}; last /api/services/{name}: {holder.get('info')}") from None
        return holder["info"]

    def cleanup(self):
        """Teardown: SIGTERM (exit code 0 expected), then make sure nothing
        of ours is left on the cluster or as an ssh process. Returns a list
        of problems."""
        problems = []
        if self.alive():
            rc = self.terminate()
            if rc != 0:
                problems.append(f"{self.name}: exit code after SIGTERM was {rc}, expected 0")
        self._close_log()
        lg = getattr(base, "_live_gateways", None)
        if isinstance(lg, list) and self in lg:
            lg.remove(self)
        try:
            left = self.cluster.cancel_prefix(self.job_prefix)
        except Exception as e:  # noqa: BLE001
            left = []
            problems.append(f"could not look for leftover jobs: {e}")
        if left:
            problems.append(f"{self.name}: Slurm jobs left running after the gateway exited "
                            f"(cancelled now): {left}")
        try:
            wait_until(lambda: not self.ssh_leftovers(), 5)
        except AssertionError:
            pids = self.ssh_leftovers()
            problems.append(f"{self.name}: ssh processes left behind: "
                            f"{[(p, cmdline(p)) for p in pids]}")
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return problems


@pytest.fixture
def nodes(cluster):
    """The shared cluster, for a test that changes nodes (drain, down,
    suspend, slurmd_stop, node_crash, node_link): every node is back to idle
    before and after the test."""
    cluster.reset_nodes()
    yield cluster
    cluster.reset_nodes()


@pytest.fixture
def slurm_gateway(tmp_path, cluster):
    """Factory: slurm_gateway(services, start=True, env=None, **top) -> SlurmGateway.
    Teardown stops every gateway (exit code 0 expected), cancels leftover
    jobs and ssh processes, and fails the test if there were any."""
    made = []

    def make(services, start=True, env=None, **top):
        g = SlurmGateway(tmp_path, cluster, services, name=f"gw{len(made)}", env=env, **top)
        made.append(g)
        if start:
            g.start()
        return g

    yield make
    problems = []
    for g in made:
        try:
            problems += g.cleanup()
        except BaseException as e:  # noqa: BLE001 - clean up all of them
            problems.append(f"{g.name}: cleanup failed: {e!r}")
    if problems:
        logs = "\n".join(f"--- {g.name} log ---\n{g.log()}" for g in made)
        pytest.fail("\n".join(problems) + "\n" + logs, pytrace=False)
