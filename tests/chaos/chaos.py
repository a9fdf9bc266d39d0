#!/usr/bin/env python3
"""slurmgate chaos soak (make chaos; a short version runs in make test).

One gateway (SLURMGATE_BIN, the ASan build by default) with
  - "slm":   a Slurm service (max_instances 2) reached through the gateway's
             ssh ControlMaster to the test cluster's sshd; its job script does
             not exec (the server is a child of the script);
  - "loc":   a local service whose start script execs the server;
  - "locnx": a local service whose start script does not exec;
  - "extra": a local service with min_instances 1 that SIGHUP adds and removes.
Load: steady plain requests (GET /pid, POST /generate), TGI SSE streams
(POST /generate_stream) and OpenAI streams (POST /v1/chat/completions with
"stream": true, routed by model) on slm, loc and locnx, from a few client
threads in bounded loops. Every request's outcome is recorded with its time
window and (when known) the instance that served it.

Faults, on a random schedule from a printed seed (CHAOS_SEED reproduces it):
  kill_local_exec, kill_local_nonexec, kill_slurm_proc   SIGKILL a service's server
  kill_local_script                                      SIGKILL a non-exec start script
                                                         (the shell; its server lives on)
  scancel, requeue, suspend (then resume)                Slurm job control
  drain, down (then resume)                              a node of the job
  kill_ssh_master                                        the gateway's ControlMaster
  sighup                                                 config change + SIGHUP
  kill9_gateway                                          kill -9 and restart

Before shutdown, twice 3 s apart: no Slurm job of ours, no forward of the
ssh master and no service process that the gateway does not list (/api).
At the end (SIGTERM to the gateway) it asserts:
  - exit code 0 and no ASan/UBSan/LSan report in any run's log;
  - nothing left: no job of ours in squeue, no ssh of our state_dir, no
    process of our start scripts or services;
  - no orphan: while the gateway runs, every service process descends from it;
  - every failed request overlapped a fault that hit its service (or the
    whole gateway); each failure is listed with its cause.
It prints requests, failures by cause and faults as tables, and exits 1 on
any violation (each one with the request, the nearest fault and the gateway
log lines around it).

Usage: tests/chaos/chaos.py [--seconds N] [--seed S] [--faults a,b,...]
Environment: CHAOS_SECONDS, CHAOS_SEED, CHAOS_FAULTS, CHAOS_NODES (nodes the
test cluster gets, when tests/env/clusterctl supports CLUSTERCTL_NODES),
SLURMGATE_BIN, CHAOS_KEEP (keep the run directory).
"""
import argparse
import collections
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("SLURMGATE_BIN", str(REPO / "build" / "slurmgate-asan"))
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "tests" / "integration" / "slurm")]

import conftest as base  # noqa: E402
import sgcluster  # noqa: E402  (tests/lib, on sys.path through conftest)
import slurmlib  # noqa: E402
from conftest import pid_alive, wait_until  # noqa: E402
from sgtestlib import listening_ports  # noqa: E402

DEMO_BIN = base.DEMO_BIN   # $DEMO_SERVICE_BIN or build/demo_service
DEMO_SH = base.DEMO_SH

ALL_FAULTS = ["kill_local_exec", "kill_local_nonexec", "kill_local_script", "kill_slurm_proc", "scancel", "requeue",
              "suspend", "drain", "down", "kill_ssh_master", "sighup", "kill9_gateway"]
SAN_PATTERNS = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
                          r"SUMMARY: (Address|Leak|Undefined)Sanitizer|AddressSanitizer:DEADLYSIGNAL")
LOAD_SERVICES = ["slm", "loc", "locnx"]


def now():
    return time.time()


def ts(t):
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}"


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------

def environ_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return {}
    env = {}
    for it in items:
        k, sep, v = it.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def ancestors(pid):
    out = []
    seen = set()
    while pid and pid > 1 and pid not in seen:
        seen.add(pid)
        pid = slurmlib.ppid_of(pid)
        if pid:
            out.append(pid)
    return out


def descendants(root):
    kids = collections.defaultdict(list)
    for p in all_pids():
        pp = slurmlib.ppid_of(p)
        if pp:
            kids[pp].append(p)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            if pid_alive(c):
                out.append(c)
            todo.append(c)
    return out


# --------------------------------------------------------------------------
# the soak
# --------------------------------------------------------------------------

class Soak:
    def __init__(self, seconds, seed, faults, nodes):
        self.seconds = seconds
        self.seed = seed
        self.faults_enabled = faults
        self.nodes_wanted = nodes
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = []       # dicts
        self.faults = []         # dicts
        self.snapshots = []      # (t, {svc: [inst dict]})
        self.violations = []     # strings
        self.orphans = []        # strings
        self.stop_load = threading.Event()
        self.gw_down = threading.Event()   # set while the gateway is killed
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-"))
        self.cluster_dir = None
        self.cluster = None
        self.gw = None
        self.hup_step = 0
        self.skipped = collections.Counter()
        self.log_marks = []      # (t, run, byte offset) for log excerpts

    # --- setup ---

    def start_cluster(self):
        env = dict(os.environ)
        env.setdefault("CLUSTERCTL_TIMEOUT", "120")   # a loaded 2-core machine is slow
        if self.nodes_wanted:
            env["CLUSTERCTL_NODES"] = str(self.nodes_wanted)

        def failed(attempt, out):
            print(f"chaos: clusterctl start failed (attempt {attempt}):\n{out[-1500:]}", flush=True)
        try:
            d = sgcluster.start_cluster("chaos-slurm-", attempts=3, timeout=300, env=env,
                                        keep=bool(os.environ.get("CHAOS_KEEP")),
                                        on_dir=lambda x: setattr(self, "cluster_dir", x), on_fail=failed)
        except sgcluster.ClusterError:
            raise SystemExit("chaos: could not start the test cluster") from None
        self.cluster = slurmlib.Cluster(d)
        out = self.cluster.run("sinfo", "-h", "-N", "-o", "%N %o")
        self.nodes = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                self.nodes[parts[0]] = parts[1]
        print(f"chaos: cluster {d}: nodes {self.nodes}", flush=True)

    def stop_cluster(self):
        if self.cluster_dir and not sgcluster.stop_cluster(self.cluster_dir,
                                                           keep=bool(os.environ.get("CHAOS_KEEP"))):
            print(f"chaos: clusterctl stop failed; {self.cluster_dir} kept", flush=True)

    def write_scripts(self):
        d = self.dir
        # the job script binds the address its node has in Slurm (NodeAddr)
        cases = "".join(f'  {n}) addr={a} ;;\n' for n, a in self.nodes.items())
        self.job_sh = slurmlib.write_script(
            d / "job_nx.sh",
            "#!/bin/sh\n# a Slurm job script that does not exec its server\n"
            "addr=127.0.0.1\ncase \"$SLURMD_NODENAME\" in\n" + cases + "esac\n"
            f'"{DEMO_BIN}" --host "$addr" --port "$1"\n'
            'echo "chaos job: server exited with $?"\n')
        self.nx_sh = slurmlib.write_script(
            d / "local_nx.sh",
            "#!/bin/sh\n# a local start script that does not exec its server\n"
            f'"{DEMO_BIN}" --host 127.0.0.1 --port "$1"\n'
            # on stdout: the server's own last stderr line (bind errors...)
            # stays the one the gateway reports
            'echo "chaos local: server exited with $?"\n')

    def make_config(self):
        c = self.cluster
        slm_port = base.free_port_block(4)
        loc_port = base.free_port_block(3)
        nx_port = base.free_port_block(3)
        extra_port = base.free_port_block(2)
        self.ports = {"slm": slm_port, "loc": loc_port, "locnx": nx_port, "extra": extra_port}
        slm = slurmlib.slurm_service(c, self.job_sh, name="slm", route="slm", remote_port=slm_port,
                                     max_instances=2, target_concurrency=2, scale_up_delay=1,
                                     scale_down_delay=10, timeout=25, start_timeout=60,
                                     health_interval=2, aliases=["slm-model"])
        loc = base.demo_service(name="loc", route="loc", port=loc_port, max_instances=2,
                                target_concurrency=2, scale_up_delay=1, scale_down_delay=10,
                                timeout=20, start_timeout=20, health_interval=2)
        locnx = base.demo_service(name="locnx", route="locnx", port=nx_port,
                                  bash_file=str(self.nx_sh), max_instances=2,
                                  target_concurrency=2, scale_up_delay=1, scale_down_delay=10,
                                  timeout=20, start_timeout=20, health_interval=2)
        self.extra_svc = base.demo_service(name="extra", route="extra", port=extra_port,
                                           min_instances=1, timeout=20)
        return [slm, loc, locnx]

    def start_gateway(self):
        services = self.make_config()
        env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=66",
               "UBSAN_OPTIONS": "print_stacktrace=1", "DEMO_TOKEN_DELAY_MS": "60"}
        self.gw = slurmlib.SlurmGateway(self.dir, self.cluster, services, name="gw", env=env,
                                        shutdown_grace=10)
        self.gw.start(ready_timeout=30)
        print(f"chaos: gateway pid {self.gw.pid} on 127.0.0.1:{self.gw.port} "
              f"({base.gateway_bin().name}), dir {self.dir}", flush=True)

    # --- gateway state ---

    def api(self, timeout=3):
        r = base.http_request(self.gw.port, "GET", "/api/services", timeout=timeout)
        if r.status != 200:
            return None
        data = r.json()
        svcs = data.get("services", data) if isinstance(data, dict) else data
        out = {}
        for s in svcs:
            out[s["name"]] = s.get("instances") or []
        return out

    def revive(self):
        """The gateway died without a fault of ours (a crash, a sanitizer
        abort): a violation; restart it so the soak goes on."""
        with self.gw_lock:
            if self.gw_down.is_set() or self.gw.alive() or self.finishing:
                return
            t0 = now()
            rc = self.gw.proc.returncode
            self.gw.exit_codes.append(rc)
            self.violations.append(f"{ts(t0)} the gateway (run {self.gw.runs}) died on its own "
                                   f"with exit code {rc}; its log is {self.gw.log_path}")
            self.gw_down.set()
            self.gw_up.clear()
            try:
                self.gw.restart(ready_timeout=30)
            finally:
                self.gw_down.clear()
                self.gw_up.set()
            self.fault("gateway_died", t0 - 1.0, now(), None, None,
                       f"exit code {rc}, restarted as {self.gw.pid}")

    def monitor(self):
        while not self.monitor_done.is_set():
            if not self.gw_down.is_set() and not self.gw.alive():
                self.revive()
            if not self.gw_down.is_set() and self.gw.alive():
                try:
                    snap = self.api()
                except Exception:  # noqa: BLE001 - the gateway may be restarting
                    snap = None
                if snap is not None:
                    with self.lock:
                        self.snapshots.append((now(), snap))
                    self.check_orphans()
            if self.monitor_done.wait(0.5):
                break

    def instances_at(self, svc, t0, t1):
        """Instances (pid or job id) of svc seen in snapshots overlapping [t0-1, t1+1]."""
        out = set()
        with self.lock:
            snaps = list(self.snapshots)
        for t, snap in snaps:
            if t0 - 1.0 <= t <= t1 + 1.0:
                for i in snap.get(svc, []):
                    out.add(inst_key(i))
        return out

    def service_procs(self):
        """Live service processes of ours: demo servers on our ports, and
        shells running our scripts."""
        ports = set()
        for name, p in self.ports.items():
            ports.update(str(p + k) for k in range(4))
        found = []
        for pid in all_pids():
            args = slurmlib.cmdline(pid)
            if not args or not pid_alive(pid):
                continue
            if args[0] == str(DEMO_BIN) and "--port" in args:
                i = args.index("--port")
                if i + 1 < len(args) and args[i + 1] in ports:
                    found.append(pid)
            elif any(str(self.dir) in a for a in args[1:2]) and \
                    os.path.basename(args[0]) in ("sh", "dash", "bash"):
                found.append(pid)
        return found

    def check_orphans(self):
        """A local service process that does not descend from the running
        gateway (or from slurmstepd, for jobs) is an orphan."""
        if self.gw_down.is_set() or not self.gw.alive():
            return
        gpid = self.gw.pid
        for pid in self.service_procs():
            anc = ancestors(pid)
            if gpid in anc:
                continue
            if any((slurmlib.cmdline(a) or [""])[0].endswith("slurmstepd") or
                   "slurmstepd" in " ".join(slurmlib.cmdline(a) or []) for a in anc):
                continue
            args = slurmlib.cmdline(pid)
            if not args or not pid_alive(pid):
                continue
            msg = f"pid {pid} {' '.join(args)} (parents {anc[:3]})"
            with self.lock:
                if not any(f"pid {pid} " in o for o in self.orphans):
                    self.orphans.append(f"{ts(now())} orphan service process while gateway "
                                        f"{gpid} runs: {msg}")

    # --- load ---

    def record(self, **kw):
        with self.lock:
            self.requests.append(kw)

    def one_request(self, svc, kind):
        port = self.gw.port
        t0 = now()
        rec = {"svc": svc, "kind": kind, "t0": t0, "ok": False, "cause": None, "inst": None,
               "status": None}
        timeout = 90
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                if kind == "plain":
                    conn.request("GET", f"/{svc}/pid")
                elif kind == "generate":
                    body = json.dumps({"inputs": "chaos", "parameters": {"max_new_tokens": 4}})
                    conn.request("POST", f"/{svc}/generate", body=body,
                                 headers={"Content-Type": "application/json"})
                elif kind == "sse":
                    body = json.dumps({"inputs": "chaos", "parameters": {"max_new_tokens": 16}})
                    conn.request("POST", f"/{svc}/generate_stream", body=body,
                                 headers={"Content-Type": "application/json",
                                          "Accept": "text/event-stream"})
                else:  # openai
                    body = json.dumps({"model": svc, "stream": True, "max_tokens": 16,
                                       "messages": [{"role": "user", "content": "chaos"}]})
                    conn.request("POST", "/v1/chat/completions", body=body,
                                 headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                rec["status"] = r.status
                rec["inst"] = r.getheader("X-Slurmgate-Instance")
                if kind in ("plain", "generate"):
                    data = r.read()
                    if r.status == 200:
                        rec["ok"] = True
                        if kind == "plain":
                            rec["pid"] = json.loads(data)["pid"]
                    else:
                        rec["cause"] = f"{r.status} {error_text(data)}"
                else:
                    rec.update(read_stream(r, kind))
            finally:
                conn.close()
        except socket.timeout:
            rec["cause"] = f"client timeout after {timeout} s"
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            rec["cause"] = f"{type(e).__name__}: {e}"[:160]
        rec["t1"] = now()
        if rec.get("pid"):
            rec["inst_from_pid"] = self.pid_to_inst(svc, rec["pid"])
        self.record(**rec)

    def pid_to_inst(self, svc, pid):
        if svc == "slm":
            return environ_of(pid).get("SLURM_JOB_ID") or f"pid:{pid}"
        if svc == "locnx":
            return f"pid:{slurmlib.ppid_of(pid)}"
        return f"pid:{pid}"

    def load_worker(self, wid):
        rng = random.Random(self.seed * 1000 + wid)
        kinds = ["plain", "plain", "generate", "sse", "openai"]
        while not self.stop_load.is_set():
            if self.gw_down.is_set():
                # requests while nothing listens only measure our own kill
                self.gw_up.wait(5)
                continue
            # each worker keeps to one service: a service that holds its
            # requests for long must not starve the others of load
            svc = LOAD_SERVICES[wid % len(LOAD_SERVICES)]
            self.one_request(svc, rng.choice(kinds))
            self.stop_load.wait(rng.uniform(0.05, 0.4))

    # --- faults ---

    def fault(self, cls, t0, t1, svc=None, target=None, detail=""):
        f = {"cls": cls, "t0": t0, "t1": t1, "svc": svc, "target": target, "detail": detail,
             "run": self.gw.runs}
        with self.lock:
            self.faults.append(f)
        print(f"chaos: {ts(t0)} fault {cls} {svc or ''} {target or ''} {detail} "
              f"({t1 - t0:.2f} s)", flush=True)

    def instances(self, svc, ready_only=True):
        try:
            snap = self.api()
        except Exception:  # noqa: BLE001
            return []
        insts = (snap or {}).get(svc, [])
        if ready_only:
            insts = [i for i in insts if i.get("state") == "ready"]
        return insts

    def slurm_instances(self):
        return [i for i in self.instances("slm") if i.get("job_id")]

    def job_pids(self, job_id):
        conf = self.cluster.slurm_conf
        out = []
        for pid in all_pids():
            env = environ_of(pid)
            if env.get("SLURM_JOB_ID") == str(job_id) and \
                    (env.get("SLURM_CONF") in (None, conf)) and \
                    (slurmlib.cmdline(pid) or [""])[0] == str(DEMO_BIN):
                out.append(pid)
        return out

    def wait_dead(self, pids, timeout=15):
        try:
            wait_until(lambda: not any(pid_alive(p) for p in pids), timeout, interval=0.02)
        except AssertionError:
            pass
        return now()

    def f_kill_local(self, svc, script=False):
        insts = self.instances(svc)
        if not insts:
            return False
        inst = self.rng.choice(insts)
        ipid = inst.get("pid")
        if not ipid:
            return False
        if script:
            targets = [ipid]
        elif svc == "locnx":
            targets = [p for p in descendants(ipid)
                       if (slurmlib.cmdline(p) or [""])[0] == str(DEMO_BIN)]
        else:
            targets = [ipid]
        if not targets:
            return False
        t0 = now()
        for p in targets:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        t1 = self.wait_dead(targets)
        cls = "kill_local_script" if script else \
            "kill_local_exec" if svc == "loc" else "kill_local_nonexec"
        self.fault(cls, t0, t1, svc, f"pid:{ipid}",
                   f"SIGKILL {'start script' if script else 'server'} pid {targets}")
        return True

    def f_kill_slurm_proc(self):
        insts = self.slurm_instances()
        if not insts:
            return False
        inst = self.rng.choice(insts)
        pids = self.job_pids(inst["job_id"])
        if not pids:
            return False
        t0 = now()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        t1 = self.wait_dead(pids)
        self.fault("kill_slurm_proc", t0, t1, "slm", inst["job_id"],
                   f"SIGKILL server pid {pids} of job {inst['job_id']}")
        return True

    def hit_job(self, insts, name, argv, what):
        """Run the Slurm command ARGV + [job] on a random job of INSTS; the
        fault lasts until the job's server processes are gone. what(job,
        inst, pids, output) describes it. False if there is no job."""
        if not insts:
            return False
        inst = self.rng.choice(insts)
        job = inst["job_id"]
        pids = self.job_pids(job)
        t0 = now()
        out = self.cluster.run(*argv, job, check=False)
        t1 = self.wait_dead(pids)
        self.fault(name, t0, t1, "slm", job, what(job, inst, pids, out))
        return True

    def f_scancel(self):
        insts = [i for i in self.instances("slm", ready_only=False) if i.get("job_id")]
        return self.hit_job(insts, "scancel", ("scancel",), lambda job, inst, pids, out:
                            f"scancel {job} ({inst.get('state')}), server pids {pids}")

    def f_requeue(self):
        return self.hit_job(self.slurm_instances(), "requeue", ("scontrol", "requeue"),
                            lambda job, inst, pids, out:
                            f"scontrol requeue {job}, server pids {pids} {out.strip()}")

    def f_suspend(self):
        insts = self.slurm_instances()
        if not insts:
            return False
        inst = self.rng.choice(insts)
        job = inst["job_id"]
        # a suspended job stops every request that reaches it, until resume:
        # the fault lasts from suspend to resume (a request sent to it before
        # the gateway's squeue sees the suspension is hit as well)
        t0 = now()
        self.cluster.run("scontrol", "suspend", job, check=False)
        self.stop_load.wait(self.rng.uniform(1, 4))
        self.cluster.run("scontrol", "resume", job, check=False)
        self.fault("suspend", t0, now(), "slm", job, f"scontrol suspend {job} ... resume")
        return True

    def job_node(self, job):
        try:
            info = self.cluster.show_job(job)
        except Exception:  # noqa: BLE001
            return None
        n = info.get("NodeList")
        return n if n and n != "(null)" else None

    def f_node(self, state):
        insts = self.slurm_instances()
        node = None
        job = None
        if insts:
            inst = self.rng.choice(insts)
            job = inst["job_id"]
            node = self.job_node(job)
        if node is None:
            node = self.rng.choice(sorted(self.nodes))
        pids = self.job_pids(job) if job else []
        t0 = now()
        self.cluster.run("scontrol", "update", f"nodename={node}", f"state={state}",
                         "reason=chaos", check=False)
        t1 = self.wait_dead(pids) if state == "down" and pids else now()
        self.fault(state, t0, t1, "slm", job, f"node {node} {state}")
        self.stop_load.wait(self.rng.uniform(2, 5))
        t0 = now()
        self.cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
        self.fault(f"{state}_resume", t0, now(), "slm", None, f"node {node} resume")
        return True

    def f_kill_ssh_master(self):
        masters = self.gw.master_pids()
        if not masters:
            return False
        t0 = now()
        for p in masters:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        t1 = self.wait_dead(masters)
        self.fault("kill_ssh_master", t0, t1, "slm", None, f"SIGKILL ssh master {masters}")
        return True

    def f_sighup(self):
        cfg = json.loads(self.gw.config_path.read_text())
        step = self.hup_step % 4
        self.hup_step += 1
        svcs = cfg["Services"]
        if step == 0:
            svcs.append(dict(self.extra_svc))
            what = "add service extra (min_instances 1)"
        elif step == 1:
            cfg["Services"] = [s for s in svcs if s["name"] != "extra"]
            what = "remove service extra"
        elif step == 2:
            for s in svcs:
                if s["name"] == "loc":
                    s["timeout"] = 21 if s["timeout"] == 20 else 20
                    what = f"loc timeout {s['timeout']}"
        else:
            for s in svcs:
                if s["name"] == "slm":
                    s["target_concurrency"] = 3 if s["target_concurrency"] == 2 else 2
                    what = f"slm target_concurrency {s['target_concurrency']}"
        tmp = self.gw.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, self.gw.config_path)
        t0 = now()
        os.kill(self.gw.pid, signal.SIGHUP)
        self.fault("sighup", t0, now(), None, None, what)
        return True

    def f_kill9_gateway(self):
        with self.gw_lock:
            if not self.gw.alive():
                return False
            t0 = now()
            self.gw_down.set()
            self.gw_up.clear()
            old = self.gw.pid
            self.gw.kill9()
            try:
                self.gw.restart(ready_timeout=30)
            finally:
                self.gw_down.clear()
                self.gw_up.set()
        self.fault("kill9_gateway", t0, now(), None, None, f"kill -9 {old}, restarted as {self.gw.pid}")
        return True

    def do_fault(self, cls):
        if cls == "kill_local_exec":
            return self.f_kill_local("loc")
        if cls == "kill_local_nonexec":
            return self.f_kill_local("locnx")
        if cls == "kill_local_script":
            return self.f_kill_local("locnx", script=True)
        if cls == "kill_slurm_proc":
            return self.f_kill_slurm_proc()
        if cls == "scancel":
            return self.f_scancel()
        if cls == "requeue":
            return self.f_requeue()
        if cls == "suspend":
            return self.f_suspend()
        if cls in ("drain", "down"):
            return self.f_node(cls)
        if cls == "kill_ssh_master":
            return self.f_kill_ssh_master()
        if cls == "sighup":
            return self.f_sighup()
        if cls == "kill9_gateway":
            return self.f_kill9_gateway()
        raise ValueError(cls)

    def chaos_loop(self, end):
        # let the services warm up first
        self.stop_load.wait(min(8.0, self.seconds / 6))
        pending = []
        while now() < end - 10 and not self.stop_load.is_set():
            if not pending:
                pending = list(self.faults_enabled)
                self.rng.shuffle(pending)
            cls = pending.pop()
            try:
                done = self.do_fault(cls)
            except Exception as e:  # noqa: BLE001 - a fault that could not run
                print(f"chaos: fault {cls} could not run: {e!r}", flush=True)
                done = False
            if not done:
                self.skipped[cls] += 1
            self.stop_load.wait(self.rng.uniform(2.0, 6.0))

    # --- run ---

    def run(self):
        print(f"chaos: seed {self.seed} (CHAOS_SEED={self.seed} reproduces the schedule), "
              f"{self.seconds} s, faults {','.join(self.faults_enabled)}", flush=True)
        self.gw_up = threading.Event()
        self.gw_lock = threading.Lock()
        self.finishing = False
        self.gw_up.set()
        self.monitor_done = threading.Event()
        rc = 1
        try:
            self.start_cluster()
            self.write_scripts()
            self.start_gateway()
            t_start = now()
            end = t_start + self.seconds
            mon = threading.Thread(target=self.monitor, daemon=True)
            mon.start()
            workers = [threading.Thread(target=self.load_worker, args=(w,), daemon=True)
                       for w in range(2 * len(LOAD_SERVICES))]
            for w in workers:
                w.start()
            chaos = threading.Thread(target=self.chaos_loop, args=(end,), daemon=True)
            chaos.start()
            while now() < end:
                time.sleep(0.5)
            chaos.join(120)
            self.stop_load.set()
            for w in workers:
                w.join(120)
            with self.gw_lock:
                self.finishing = True
            self.monitor_done.set()
            mon.join(30)
            rc = self.finish()
        finally:
            self.cleanup()
        return rc

    def listen_ports(self, pid):
        """TCP ports PID listens on (through its socket inodes)."""
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            return set()
        return listening_ports(inodes)

    def audit_once(self):
        """What exists but the gateway does not list: Slurm jobs of ours,
        forwards of its ssh master, processes of our local services."""
        snap = self.api(timeout=10) or {}
        insts = [i for v in snap.values() for i in v]
        known_jobs = {str(i["job_id"]) for i in insts if i.get("job_id")}
        jobs = {j[0]: j for j in self.cluster.live_jobs(prefix=self.gw.job_prefix)}
        stray_jobs = {k: v for k, v in jobs.items() if k not in known_jobs}
        fwd_ports = set()
        for i in insts:
            a = i.get("address") or ""
            if a.rsplit(":", 1)[-1].isdigit():
                fwd_ports.add(int(a.rsplit(":", 1)[-1]))
        stray_fwd = {}
        for m in self.gw.master_pids():
            extra = self.listen_ports(m) - fwd_ports
            if extra:
                stray_fwd[m] = sorted(extra)
        owned = set()
        for i in insts:
            if i.get("pid"):
                owned.add(i["pid"])
                owned.update(descendants(i["pid"]))
        stray_procs = {p: " ".join(slurmlib.cmdline(p) or []) for p in self.service_procs()
                       if p not in owned and not any(
                           "slurmstepd" in " ".join(slurmlib.cmdline(a) or [])
                           for a in ancestors(p))}
        return stray_jobs, stray_fwd, stray_procs

    def audit(self):
        """Two audits a few seconds apart (things starting or stopping in
        between are not strays): what both saw is a violation."""
        problems = []
        try:
            a = self.audit_once()
            time.sleep(3)
            b = self.audit_once()
        except Exception as e:  # noqa: BLE001
            return [f"audit before shutdown failed: {e!r}"]
        jobs = {k: v for k, v in b[0].items() if k in a[0]}
        if jobs:
            problems.append(f"Slurm jobs of ours that the gateway does not list: {sorted(jobs.values())}")
        fwd = {m: sorted(set(p) & set(a[1].get(m, []))) for m, p in b[1].items()}
        fwd = {m: p for m, p in fwd.items() if p}
        if fwd:
            problems.append(f"ssh master forwards that no listed instance uses (leaked): {fwd}")
        procs = {p: c for p, c in b[2].items() if p in a[2]}
        if procs:
            problems.append(f"service processes that no listed instance owns: {procs}")
        return problems

    def finish(self):
        problems = list(self.violations)
        problems += self.orphans
        if self.gw.alive():
            problems += self.audit()
        # services we still knew, for the record
        gpid = self.gw.pid
        rc = self.gw.terminate(timeout=60)
        if rc != 0:
            problems.append(f"gateway {gpid} exit code after SIGTERM was {rc}, expected 0")
        log = self.gw.log(tail=10**9)
        san = [ln for ln in log.splitlines() if SAN_PATTERNS.search(ln)]
        if san:
            problems.append("sanitizer report(s) in the gateway's log:\n  " + "\n  ".join(san[:20]))
        # nothing left behind
        prefix = self.gw.job_prefix

        def no_jobs():
            return not self.cluster.live_jobs(prefix=prefix)
        try:
            wait_until(no_jobs, 30, interval=0.5)
        except AssertionError:
            problems.append(f"Slurm jobs left after shutdown: {self.cluster.live_jobs(prefix=prefix)}")
        try:
            wait_until(lambda: not self.gw.ssh_leftovers(), 10, interval=0.2)
        except AssertionError:
            problems.append("ssh processes left after shutdown: " +
                            str([(p, slurmlib.cmdline(p)) for p in self.gw.ssh_leftovers()]))
        try:
            wait_until(lambda: not self.service_procs(), 15, interval=0.2)
        except AssertionError:
            problems.append("service processes left after shutdown: " +
                            str([(p, slurmlib.cmdline(p), slurmlib.ppid_of(p))
                                 for p in self.service_procs()]))
        problems += self.check_failures()
        self.print_tables()
        self.print_unclear()
        if problems:
            print("\nchaos: VIOLATIONS", flush=True)
            for p in problems:
                print(" - " + p)
            print(f"\nchaos: FAILED ({len(problems)} violations); seed {self.seed}; "
                  f"logs in {self.dir}", flush=True)
            os.environ["CHAOS_KEEP"] = "1"
            return 1
        print(f"\nchaos: PASSED; seed {self.seed}", flush=True)
        return 0

    # --- analysis ---

    def explaining_fault(self, r):
        """The fault that explains failed request r, or None."""
        cands = self.instances_at(r["svc"], r["t0"], r["t1"])
        if r.get("inst"):
            cands = {r["inst"]}
        for f in self.faults:
            if not (f["t0"] <= r["t1"] and f["t1"] >= r["t0"]):
                continue
            if f["svc"] is None:          # the whole gateway (kill -9, SIGHUP)
                return f
            if f["svc"] != r["svc"]:
                continue
            if f["target"] is None or f["target"] in cands or not cands:
                return f
        return None

    def nearest_fault(self, r):
        best, gap = None, None
        for f in self.faults:
            if f["svc"] not in (None, r["svc"]):
                continue
            g = max(f["t0"] - r["t1"], r["t0"] - f["t1"], 0)
            if gap is None or g < gap:
                best, gap = f, g
        return best, gap

    def check_failures(self, examples=3):
        """Every failure needs a fault in its window. Unexplained ones are
        grouped by service and cause: the count, then the first few in full."""
        problems = []
        groups = collections.defaultdict(list)
        for r in self.requests:
            if r["ok"]:
                continue
            f = self.explaining_fault(r)
            r["explained_by"] = f["cls"] if f else None
            if f is None:
                groups[(r["svc"], norm_cause(r["cause"]))].append(r)
        for (svc, cause), rs in sorted(groups.items(), key=lambda kv: kv[1][0]["t0"]):
            text = (f"{len(rs)} failed request(s) on {svc} with no fault in their window, "
                    f"cause {cause!r}, first at {ts(rs[0]['t0'])}, last at "
                    f"{ts(rs[-1]['t0'])}; the first {min(examples, len(rs))}:")
            for r in rs[:examples]:
                nf, gap = self.nearest_fault(r)
                near = (f"nearest fault {nf['cls']} {nf['target'] or ''} {nf['detail']} at "
                        f"{ts(nf['t0'])}-{ts(nf['t1'])}, {gap:.2f} s away") if nf else "no fault"
                text += (f"\n   * {r['kind']} {r['svc']} "
                         f"{ts(r['t0'])}-{ts(r['t1'])} ({r['t1'] - r['t0']:.2f} s): {r['cause']}; "
                         f"instances {sorted(self.instances_at(r['svc'], r['t0'], r['t1']))}; "
                         f"{near}\n" + self.log_excerpt(r["t0"] - 1, r["t1"] + 0.5, r["svc"]))
            problems.append(text)
        return problems

    def log_excerpt(self, t0, t1, svc, limit=25):
        lines = []
        for ln in self.gw.log(tail=10**9).splitlines():
            m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z", ln)
            if not m:
                continue
            y, mo, d, h, mi, s, ms = map(int, m.groups())
            t = time.mktime((y, mo, d, h, mi, s, 0, 0, 0)) - time.timezone + ms / 1000
            if t0 <= t <= t1 and (svc in ln or "svc" not in ln):
                lines.append("      | " + ln)
        if len(lines) > limit:
            lines = lines[:limit // 2] + ["      | ..."] + lines[-limit // 2:]
        return "\n".join(lines) if lines else "      | (no gateway log lines in the window)"

    def print_tables(self):
        reqs = self.requests
        print("\nchaos: requests")
        print("| service | kind | requests | ok | failed | p50 (s) | max (s) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        by = collections.defaultdict(list)
        for r in reqs:
            by[(r["svc"], r["kind"])].append(r)
        by[("all", "all")] = list(reqs)
        for (s, k), rs in sorted(by.items(), key=lambda kv: (kv[0][0] == "all", kv[0])):
            n = len(rs)
            f = sum(1 for r in rs if not r["ok"])
            d = sorted(r["t1"] - r["t0"] for r in rs) or [0.0]
            print(f"| {s} | {k} | {n} | {n - f} | {f} | {d[len(d) // 2]:.2f} | {d[-1]:.2f} |")

        print("\nchaos: failures by cause")
        print("| cause | failures | explained by fault | unexplained |")
        print("|---|---:|---|---:|")
        causes = collections.defaultdict(lambda: [0, collections.Counter(), 0])
        for r in reqs:
            if r["ok"]:
                continue
            c = norm_cause(r["cause"])
            causes[c][0] += 1
            if r.get("explained_by"):
                causes[c][1][r["explained_by"]] += 1
            else:
                causes[c][2] += 1
        for c, (n, ex, un) in sorted(causes.items(), key=lambda kv: -kv[1][0]):
            exs = ", ".join(f"{k} {v}" for k, v in ex.most_common())
            print(f"| {c} | {n} | {exs} | {un} |")

        print("\nchaos: faults injected")
        print("| fault | injected | not applicable at its turn |")
        print("|---|---:|---:|")
        fc = collections.Counter(f["cls"] for f in self.faults)
        for cls in sorted(set(fc) | set(self.skipped)):
            print(f"| {cls} | {fc.get(cls, 0)} | {self.skipped.get(cls, 0)} |")
        print(f"| all | {sum(fc.values())} | {sum(self.skipped.values())} |", flush=True)

    def print_unclear(self):
        """Failures a fault explains but that ended without a clear error
        (a stream cut with no error event, a connection closed with no
        response) while the gateway itself stayed up. Not violations: the
        issue asks for a clear error on Slurm job ends; listed for the record."""
        unclear = collections.Counter()
        for r in self.requests:
            if r["ok"] or r.get("explained_by") in (None, "kill9_gateway", "gateway_died"):
                continue
            c = r["cause"] or ""
            if c.startswith(("stream ended", "RemoteDisconnected", "ConnectionResetError")):
                unclear[(r["svc"], r["kind"], r["explained_by"], norm_cause(c))] += 1
        if not unclear:
            return
        print("\nchaos: failures without a clear error (502 with a reason or an SSE error "
              "event), gateway up")
        print("| service | kind | fault | cause | count |")
        print("|---|---|---|---|---:|")
        for (svc, kind, f, c), n in sorted(unclear.items()):
            print(f"| {svc} | {kind} | {f} | {c} | {n} |")

    def cleanup(self):
        """Stop whatever is left (by pid), the cluster, the run directory."""
        try:
            if self.gw is not None:
                if self.gw.alive():
                    self.gw.terminate(timeout=30)
                for p in self.gw.ssh_leftovers():
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for p in self.service_procs() if hasattr(self, "ports") else []:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            self.stop_cluster()
            if not os.environ.get("CHAOS_KEEP"):
                shutil.rmtree(self.dir, ignore_errors=True)


def inst_key(i):
    if i.get("job_id"):
        return str(i["job_id"])
    if i.get("pid"):
        return f"pid:{i['pid']}"
    return f"idx:{i.get('index')}"


def error_text(data):
    try:
        o = json.loads(data)
        e = o.get("error")
        if isinstance(e, dict):
            e = e.get("message")
        return str(e)[:120]
    except Exception:  # noqa: BLE001
        return data[:120].decode(errors="replace")


def read_stream(r, kind):
    """Read an SSE response to its end: ok only if the stream finished."""
    out = {"ok": False}
    if r.status != 200:
        out["cause"] = f"{r.status} {error_text(r.read())}"
        return out
    done = False
    while True:
        line = r.readline()
        if not line:
            break
        line = line.decode(errors="replace").rstrip("\r\n")
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        if '"error"' in data:
            out["cause"] = f"SSE error event: {error_text(data.encode())}"
            return out
        if kind == "sse" and '"generated_text":"' in data:
            done = True
    if done:
        out["ok"] = True
    else:
        out["cause"] = "stream ended without its last event"
    return out


def norm_cause(c):
    """A failure cause with its numbers (job ids, pids, seconds) folded."""
    c = c or "?"
    m = re.match(r"(\d{3}) (.*)", c, re.S)
    head, rest = (m.group(1) + " ", m.group(2)) if m else ("", c)
    rest = re.sub(r"\d+(\.\d+)?", "N", rest)
    return (head + rest)[:110]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("CHAOS_SECONDS", 900)))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED") or
                                                    random.SystemRandom().randrange(1, 10**6)))
    ap.add_argument("--faults", default=os.environ.get("CHAOS_FAULTS") or ",".join(ALL_FAULTS))
    ap.add_argument("--nodes", type=int, default=int(os.environ.get("CHAOS_NODES") or 0))
    a = ap.parse_args()
    faults = [f for f in a.faults.split(",") if f]
    bad = [f for f in faults if f not in ALL_FAULTS]
    if bad:
        ap.error(f"unknown fault class(es) {bad}; known: {', '.join(ALL_FAULTS)}")
    for p in (base.gateway_bin(), DEMO_BIN):
        if not Path(p).exists():
            ap.error(f"missing {p}: build it first (make all build/slurmgate-asan)")
    s = Soak(a.seconds, a.seed, faults, a.nodes)

    def on_term(signo, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        return s.run()
    except KeyboardInterrupt:
        print("chaos: interrupted", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
