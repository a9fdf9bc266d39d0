"""bench/lib/slurm.py - Slurm (a real cluster and sshd from
tests/env/clusterctl): cold starts through slurmgate, timed phase by phase
from slurmgate's log, Slurm's logs and the job's output, next to the same
cold start through a second slurmgate whose service uses the remote agent
(remote/slurmgate-agent) and done the seed's way (bench/seedshape.py); then
warm requests through the tunnel (wrk) against the seed's
one-ssh-check-per-request."""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import common as C
import sgcluster
from common import (CLK_TCK, COLD_STARTS, DEMO_BIN, KEEP_TMP, POLL_FAST_MS, ROOT, WARM_DURATION,
                    WaitTimeout, api_json, children_of, cpu_ticks, fmt, free_port, http_request,
                    log, log_tail, median, ratio, run_wrk, time_ratio, wait_until)
from sgproc import cmdline

# A cold start's timeline (wall-clock times, from time.time() and the logs):
#   t0            the client sends its request
#   slurm_submit  slurmctld logs the submit RPC      (slurmctld.log)
#   submitted     sbatch has answered                (slurmgate's log / the seed)
#   slurm_alloc   slurmctld allocates: RUNNING       (slurmctld.log)
#   seen_running  squeue over ssh has shown RUNNING  (slurmgate's log / the seed)
#   slurm_launch  slurmd launches the batch job      (slurmd.log)
#   script_start  the job script's first line        (the job's output file)
#   healthy       the health check passed            (slurmgate's log / the seed)
#   first_byte    the client has the first byte
# Phases: (key, label, duration from a timeline)
PHASES = (
    ("to_slurm", "request -> Slurm has the job (ssh + sbatch)",
     lambda e: e["slurm_submit"] - e["t0"]),
    ("sbatch_rt", "request -> sbatch answered", lambda e: e["submitted"] - e["t0"]),
    ("slurm_sched", "Slurm: submit -> RUNNING", lambda e: e["slurm_alloc"] - e["slurm_submit"]),
    ("detect", "RUNNING -> seen by squeue (poll lag)", lambda e: e["seen_running"] - e["slurm_alloc"]),
    ("slurm_launch", "Slurm: RUNNING -> job script starts", lambda e: e["script_start"] - e["slurm_alloc"]),
    ("seen_healthy", "seen RUNNING -> healthy (tunnel, probes)", lambda e: e["healthy"] - e["seen_running"]),
    ("after_script", "job script starts -> healthy", lambda e: e["healthy"] - e["script_start"]),
    ("release", "healthy -> first byte", lambda e: e["first_byte"] - e["healthy"]),
    ("total", "total: request -> first byte", lambda e: e["first_byte"] - e["t0"]),
    ("slurm_own", "Slurm's own part: submit RPC -> script starts",
     lambda e: e["script_start"] - e["slurm_submit"]),
    ("added", "added beyond Slurm (total - Slurm's own part)",
     lambda e: (e["first_byte"] - e["t0"]) - (e["script_start"] - e["slurm_submit"])),
)


def slurm_log_time(stamp):
    # Slurm logs local time with ms: 2026-11-27T03:34:31.566
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def slurm_events(cdir, job_id):
    """Slurm's own view of job JOB_ID: submit RPC, allocation, launch (from the
    slurmctld and slurmd logs) and the job script's first line."""
    ev = {}
    pats = (
        ("slurm/slurmctld.log", "slurm_submit", rf"_slurm_rpc_submit_batch_job: JobId={job_id}\b"),
        ("slurm/slurmctld.log", "slurm_alloc",
         rf"(sched: Allocate JobId={job_id}\b|_start_job: Started JobId={job_id}\b)"),
        ("slurm/slurmd.log", "slurm_launch", rf"Launching batch job {job_id}\b"),
    )
    for fname, key, pat in pats:
        try:
            with open(os.path.join(cdir, fname), errors="replace") as f:
                for line in f:
                    m = re.match(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\] (.*)", line)
                    if m and re.search(pat, m.group(2)):
                        ev[key] = slurm_log_time(m.group(1))
                        break
        except OSError:
            pass
    try:
        with open(os.path.join(cdir, "work", f"slurm-{job_id}.out"), errors="replace") as f:
            m = re.search(r"bench-job-start (\d+\.\d+)", f.read())
            if m:
                ev["script_start"] = float(m.group(1))
    except OSError:
        pass
    return ev


GW_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+\w+\s+(.*)$")


def gw_events(path, offset, svc):
    """slurmgate's log lines about instance 0 of SVC from byte OFFSET on."""
    ev = {}
    with open(path, errors="replace") as f:
        f.seek(offset)
        text = f.read()
    pre = f"svc {svc}[0]: "
    for line in text.splitlines():
        m = GW_LINE.match(line)
        if not m or not m.group(2).startswith(pre):
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()
        msg = m.group(2)[len(pre):]
        if msg.startswith("starting ("):
            ev.setdefault("accepted", t)
        elif (mm := re.match(r"Slurm job (\d+) submitted", msg)):
            ev.setdefault("submitted", t)
            ev.setdefault("job_id", mm.group(1))
        elif re.match(r"Slurm job \d+ running on .* in the queue", msg):
            ev.setdefault("seen_running", t)
        elif msg.startswith("ready after"):
            ev.setdefault("healthy", t)
    return ev


def cold_metrics(port, svc):
    """{phase: (sum, count)} of slurmgate_cold_start_seconds for SVC."""
    st, _, body, _, _ = http_request(port, "GET", "/metrics")
    out = {}
    for m in re.finditer(rf'^slurmgate_cold_start_seconds_(sum|count)\{{service="{svc}",phase="(\w+)"\}} (\S+)$',
                         body.decode(errors="replace"), re.M):
        s_, c_ = out.get(m.group(2), (0.0, 0))
        if m.group(1) == "sum":
            out[m.group(2)] = (float(m.group(3)), c_)
        else:
            out[m.group(2)] = (s_, int(float(m.group(3))))
    return out


# The ways a cold start is done, in the tables' order: slurmgate with plain
# ssh commands through its ControlMaster, slurmgate with the remote agent
# (remote/slurmgate-agent, one long-lived session), the seed's way
WAYS = ("gw", "agent", "seed")
WAY_NAMES = {"gw": "slurmgate", "agent": "sg+agent", "seed": "seed"}
# the agent's watcher interval: its own default (200 ms) unless
# BENCH_AGENT_POLL_FAST_MS says otherwise; set it to BENCH_POLL_FAST_MS to
# isolate the agent's effect from the interval's
AGENT_POLL_FAST_MS = C.env_int("BENCH_AGENT_POLL_FAST_MS", 200)


class Gateway:
    """One slurmgate with one Slurm service on the cluster; with AGENT, the
    service runs its Slurm commands through remote/slurmgate-agent."""

    SVC = "slurmdemo"
    ROUTE = "s"

    def __init__(self, sb, key, agent):
        self.sb = sb
        self.key = key
        self.agent = agent
        self.proc = None
        self.port = None
        self.rport = None
        self.log = os.path.join(C.tmpdir, f"slurm-{key}.log")
        self.instance_id = f"bench{os.getpid()}{key}"
        self.master_pid = None

    @property
    def pid(self):
        return self.proc.pid

    def install_agent(self):
        """The agent as an admin installs it: a copy on the "login node" (this
        machine's sshd) with its allow-list directory beside it; the job
        script is on the allow-list. Returns (agent path, job script)."""
        d = os.path.join(C.tmpdir, "login")
        os.makedirs(os.path.join(d, "slurmgate-agent.allow"), exist_ok=True)
        agent = os.path.join(d, "slurmgate-agent")
        shutil.copy(os.path.join(ROOT, "remote", "slurmgate-agent"), agent)
        os.chmod(agent, 0o755)
        return agent, self.sb.write_job_script(os.path.join("login", "slurmgate-agent.allow",
                                                            "slurm-job.sh"))

    def start(self):
        self.port, self.rport = free_port(), free_port()
        e = self.sb.env
        svc = {
            "name": self.SVC, "route_name": self.ROUTE, "launcher": "slurm",
            "remote_host": e["ssh_host"], "ssh_port": e["ssh_port"],
            "ssh_username": e["ssh_user"], "ssh_key_file": e["ssh_key"],
            "remote_port": self.rport, "check_health_path": "/health",
            "timeout": 3600, "start_timeout": 120,
            # one --option=value word each (what the agent accepts)
            "sbatch_args": [f"--chdir={e['work_dir']}"],
        }
        if self.agent:
            svc["slurm_agent"], svc["bash_file"] = self.install_agent()
            # the agent passes only the sbatch arguments allowed for the script
            with open(svc["bash_file"] + ".sbatch-args", "w") as f:
                f.write(" ".join(svc["sbatch_args"]) + "\n")
        else:
            svc["bash_file"] = self.sb.write_job_script(f"slurm-job-{self.key}.sh")
        cfg = {
            "listen": f"127.0.0.1:{self.port}",
            "state_dir": os.path.join(C.tmpdir, f"slurm-state-{self.key}"),
            "instance_id": self.instance_id,
            "admin_token": self.sb.token,
            "shutdown_grace": 5,
            # no status poll of a running job (every 15 s by default) may fall
            # into the measurement of another way's cold start or the warm runs
            "poll_slow_s": 60,
            "poll_fast_ms": AGENT_POLL_FAST_MS if self.agent else POLL_FAST_MS,
            "Services": [svc],
        }
        self.proc = C.start_gateway(cfg, os.path.basename(self.log))
        C.wait_http(self.port, "/api/health", self.proc, f"slurmgate ({WAY_NAMES[self.key]})")

        # steady state first: the ssh master is up and the start-up squeue
        # (looking for jobs to adopt) is over: the gateway's own, or the
        # agent's (it is up once it has answered it)
        def master_up():
            with open(self.log, errors="replace") as f:
                return "ssh master to" in f.read() and self.master()
        wait_until(master_up, 40, interval=0.1, msg="slurmgate's ssh master")
        if self.agent:
            wait_until(lambda: api_json(self.port, f"/api/services/{self.SVC}").get("slurm_agent") == "up",
                       40, interval=0.1, msg="slurmgate's remote agent up")
        else:
            wait_until(lambda: not [c for c in children_of(self.pid)
                                    if "squeue" in " ".join(cmdline(c))], 40, interval=0.1,
                       msg="slurmgate's first squeue")
        self.master_pid = self.master()

    def master(self):
        for c in children_of(self.pid):
            args = cmdline(c)
            if args and os.path.basename(args[0]) == "ssh" and "-M" in args:
                return c
        return None

    def cold_start(self):
        """One cold start through this gateway: a GET /s/small at a stopped
        service. The timeline (wall-clock times)."""
        m0 = cold_metrics(self.port, self.SVC)
        off = os.path.getsize(self.log)
        st, hd, body, t0, t_fb = http_request(self.port, "GET", f"/{self.ROUTE}/small", timeout=150)
        if st != 200:
            raise RuntimeError(f"cold start through {WAY_NAMES[self.key]} answered {st}: {body[:300]!r}")
        m1 = cold_metrics(self.port, self.SVC)
        ev = gw_events(self.log, off, self.SVC)
        if "job_id" not in ev:
            raise RuntimeError(f"no 'Slurm job N submitted' line in {os.path.basename(self.log)}")
        ev.update(slurm_events(self.sb.cdir, ev["job_id"]))
        ev["t0"], ev["first_byte"] = t0, t_fb
        ev["header"] = float(hd.get("x-slurmgate-cold-start", "nan"))
        for ph in ("queue", "boot"):
            a, b = m0.get(ph, (0.0, 0)), m1.get(ph, (0.0, 0))
            ev["metric_" + ph] = (b[0] - a[0]) if b[1] == a[1] + 1 else None
        return ev

    def request_stop(self):
        st, _, body, _, _ = http_request(self.port, "POST", f"/api/services/{self.SVC}/stop",
                                         headers={"Authorization": f"Bearer {self.sb.token}"})
        if st not in (200, 202):
            raise RuntimeError(f"POST /api/services/{self.SVC}/stop answered {st}: {body[:200]!r}")

    def wait_stopped(self):
        wait_until(lambda: api_json(self.port, f"/api/services/{self.SVC}")["state"] == "stopped",
                   90, interval=0.2, msg=f"{WAY_NAMES[self.key]}: service stopped")


class SlurmBench:
    """A clusterctl cluster, two slurmgates with one Slurm service each on it
    (plain ssh commands; the remote agent), and the seed-shaped baseline
    (bench/seedshape.py) on the same cluster."""

    SVC = Gateway.SVC
    ROUTE = Gateway.ROUTE

    def __init__(self):
        self.cdir = None
        self.env = None
        self.gws = {}   # "gw": plain slurmgate, "agent": slurmgate with the agent
        self.token = "bench-" + secrets.token_hex(12)
        self.seed = None

    # the plain gateway (the warm runs go through it)
    @property
    def gw(self):
        return self.gws.get("gw")

    @property
    def gw_port(self):
        return self.gws["gw"].port

    @property
    def rport(self):
        return self.gws["gw"].rport

    @property
    def master_pid(self):
        return self.gws["gw"].master_pid

    # ---- local Slurm commands (set-up and waiting only, never measured)
    def slurm(self, *argv, timeout=30):
        env = dict(os.environ, SLURM_CONF=self.env["slurm_conf"])
        return subprocess.run(list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout)

    def job_gone(self, job_id):
        p = self.slurm("squeue", "-h", "-j", str(job_id), "-o", "%T")
        st = p.stdout.strip()
        return p.returncode != 0 or st == "" or st in ENDED_STATES

    def start_cluster(self):
        C.late_cleanups.append(self.stop_cluster)
        env = dict(os.environ, CLUSTERCTL_TIMEOUT="60")
        t = [time.monotonic()]

        def new_dir(d):
            self.cdir = d
            t[0] = time.monotonic()

        def failed(attempt, out):
            log(f"  clusterctl start failed (attempt {attempt}, {time.monotonic() - t[0]:.0f} s):\n"
                + "\n".join("    " + x for x in out.strip().splitlines()[-8:]))
        try:
            # a busy machine can miss clusterctl's deadline once
            sgcluster.start_cluster("slurmgate-bench-cluster.", attempts=2, timeout=120, env=env,
                                    keep=KEEP_TMP, on_dir=new_dir, on_fail=failed)
        except sgcluster.ClusterError:
            raise RuntimeError("clusterctl start failed twice") from None
        with open(os.path.join(self.cdir, "env.json")) as f:
            self.env = json.load(f)
        log(f"  cluster up in {time.monotonic() - t[0]:.1f} s ({self.cdir}; sshd 127.0.0.1:"
            f"{self.env['ssh_port']}; load average {os.getloadavg()[0]:.2f})")

    def stop_cluster(self):
        if self.cdir is None:
            return
        cdir, self.cdir = self.cdir, None
        ok = sgcluster.stop_cluster(cdir, keep=KEEP_TMP)
        if KEEP_TMP or not ok:
            print(f"bench: cluster dir kept: {cdir}" + ("" if ok else " (clusterctl stop failed)"),
                  file=sys.stderr, flush=True)

    def write_job_script(self, name):
        path = os.path.join(C.tmpdir, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n"
                    "# bench job: the demo service on port $1 of its node (each node is a network\n"
                    "# namespace of its own); the first line says when it began\n"
                    "echo \"bench-job-start $(date +%s.%N)\"\n"
                    f"exec \"{DEMO_BIN}\" --host 0.0.0.0 --port \"$1\"\n")
        os.chmod(path, 0o755)
        return path

    def start_gateways(self):
        for key in ("gw", "agent"):
            self.gws[key] = Gateway(self, key, agent=(key == "agent"))
            self.gws[key].start()

    def stop_all(self, jobs):
        """Stop both slurmgates' services (POST .../stop, admin token) and the
        seed's job (local scancel: not measured) at once; wait until the
        gateways say stopped and the jobs JOBS have left squeue."""
        for g in self.gws.values():
            g.request_stop()
        self.seed.close_tunnel()
        if jobs.get("seed"):
            self.slurm("scancel", str(jobs["seed"]))
        self.seed.job_id = None
        for g in self.gws.values():
            g.wait_stopped()
        for j in jobs.values():
            wait_until(lambda: self.job_gone(j), 60, interval=0.2, msg=f"Slurm job {j} gone")

    # ---- the seed's way
    def seed_cold_start(self):
        ev = self.seed.cold_start(timeout=150)
        ev.update(slurm_events(self.cdir, ev["job_id"]))
        ev["first_byte"] = ev.pop("t_first_byte")
        for k in ("submitted", "running", "healthy"):
            ev[{"running": "seen_running"}.get(k, k)] = ev.pop("t_" + k)
        return ev




ENDED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


def slurm_part():
    """Cold starts (slurmgate, slurmgate with the agent and the seed's way,
    in rotation), then warm requests. Returns a dict for the report."""
    sys.dont_write_bytecode = True   # no bench/__pycache__ in the tree
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import seedshape

    sb = SlurmBench()
    res = {"gw": [], "agent": [], "seed": [], "warm": {}}
    try:
        sb.start_cluster()
        sb.start_gateways()
        sb.seed = seedshape.Seed(sb.env, sb.write_job_script("seed-job.sh"), free_port(),
                                 job_name=f"seed-bench-{os.getpid()}")
        C.late_cleanups.append(sb.seed.close_tunnel)
        slurm_runs(sb, res)
        with open(os.path.join(C.tmpdir, "slurm-results.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)   # raw timelines (BENCH_KEEP_TMP=1 keeps them)
        return res
    except (RuntimeError, OSError, WaitTimeout, subprocess.TimeoutExpired):
        for g in sb.gws.values():
            log(f"  {WAY_NAMES[g.key]} (Slurm) log tail:\n" + log_tail(g.log))
        raise
    finally:
        if sb.seed is not None:
            sb.seed.close_tunnel()
        for g in sb.gws.values():
            if g.proc is not None:
                # SIGTERM: slurmgate cancels its job (over ssh or through the
                # agent) before it exits
                C.forget(g.proc, signal.SIGTERM, grace=30.0)
        sb.stop_cluster()


def slurm_runs(sb, res):
    log(f"  slurmgate: 1 Slurm service over ssh (ControlMaster), poll_fast_ms {POLL_FAST_MS}; "
        f"sg+agent: the same through remote/slurmgate-agent, poll_fast_ms {AGENT_POLL_FAST_MS}; "
        f"the seed's way: a fresh ssh per command, squeue every {seedshape_poll()} s, own ssh -L tunnel")
    t = time.monotonic()
    for k in range(COLD_STARTS):
        # one after the other (never at the same time), the order rotating;
        # then all three stop together (not measured)
        for who in WAYS[k % 3:] + WAYS[:k % 3]:
            if who == "seed":
                ev = sb.seed_cold_start()
                log("  " + timeline_line(f"#{k + 1} seed", ev) +
                    f"  [{ev['ssh_connections']} ssh connections, {ev['squeue_polls']} squeue polls]")
            else:
                ev = sb.gws[who].cold_start()
                log("  " + timeline_line(f"#{k + 1} {WAY_NAMES[who]}", ev) +
                    f"  [X-Slurmgate-Cold-Start {ev['header']:.2f}; metrics: queue "
                    f"{fmt(ev['metric_queue'], '.2f')}, boot {fmt(ev['metric_boot'], '.2f')}]")
            res[who].append(ev)
        if k < COLD_STARTS - 1:
            sb.stop_all({w: res[w][-1]["job_id"] for w in WAYS})
    res["fresh_ssh_s"] = sb.seed.ssh_seconds / max(sb.seed.ssh_calls, 1)
    res["nodes"] = len(sb.env.get("nodes") or [None])
    log(f"  a fresh ssh session (connect + login shell + command) took {res['fresh_ssh_s']:.2f} s "
        f"on average ({sb.seed.ssh_calls} of them); cold starts took {time.monotonic() - t:.0f} s")

    # ---- warm: both services are up now
    info = api_json(sb.gw_port, f"/api/services/{sb.SVC}")
    tport = int(info["instances"][0]["address"].rsplit(":", 1)[1])
    # each node is a network namespace with an address of its own (NodeAddr):
    # the job's service listens there, not on 127.0.0.1
    node = info["instances"][0].get("node")
    addr = next((n["addr"] for n in sb.env.get("nodes") or [] if n["name"] == node), "127.0.0.1")
    urls = (
        ("slurmgate", f"http://127.0.0.1:{sb.gw_port}/{sb.ROUTE}/small",
         "client -> slurmgate -> ssh master forward -> service"),
        ("gw_tunnel", f"http://127.0.0.1:{tport}/small",
         "client -> slurmgate's forward port (ssh master) -> service"),
        ("seed_tunnel", f"http://127.0.0.1:{sb.seed.lport}/small",
         "client -> the seed's own ssh -L -> service"),
        ("direct", f"http://{addr}:{sb.rport}/small", "client -> service (no tunnel)"),
    )
    log("")
    log(f"warm requests, GET /small on the job (wrk -t2 -c10 {WARM_DURATION} s each):")
    res["warm_labels"] = {}
    for key, url, label in urls:
        run_wrk(url, 1, latency=False, threads=2, conns=10)   # connections, channels, pools
        pids = [sb.gw.pid, sb.master_pid] if key == "slurmgate" else []
        pids = [p for p in pids if p]
        c0 = cpu_ticks(pids) if pids else 0
        r = run_wrk(url, WARM_DURATION, threads=2, conns=10)
        if pids:
            r["cpu_pct"] = (cpu_ticks(pids) - c0) / CLK_TCK / WARM_DURATION * 100
        res["warm"][key] = r
        res["warm_labels"][key] = label
        log(f"  {key:<12} {r['rps']:>8.0f} req/s  p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  "
            f"non-2xx {r['non2xx']}  ({label})"
            + (f"; CPU slurmgate + ssh master {r['cpu_pct']:.0f}%" if "cpu_pct" in r else ""))
    w = sb.seed.warm_rate(duration=WARM_DURATION)
    res["warm"]["seed"] = w
    log(f"  {'seed':<12} {w['rps']:>8.2f} req/s  p50 {w['p50_ms']:.0f} ms  max {w['max_ms']:.0f} ms  "
        f"({w['requests']} sequential requests, each after a fresh `ssh squeue` status check)")
    log(f"  slurmgate / seed: {res['warm']['slurmgate']['rps'] / w['rps']:.0f}x req/s; "
        f"the tunnel alone (slurmgate's forward port / direct): "
        f"{fmt(ratio(res['warm']['gw_tunnel']['rps'], res['warm']['direct']['rps']), '.2f')}x")

    sb.stop_all({w: res[w][-1]["job_id"] for w in WAYS})
    res["poll_fast_ms"] = {"gw": POLL_FAST_MS, "agent": AGENT_POLL_FAST_MS}
    return res


def seedshape_poll():
    import seedshape
    return seedshape.SQUEUE_POLL_S


def timeline_line(who, ev):
    def at(k):
        return fmt(ev[k] - ev["t0"], ".2f") if ev.get(k) is not None else "-"
    return (f"{who:<14} job {ev.get('job_id', '?'):>3}: Slurm has it {at('slurm_submit')}, sbatch answered "
            f"{at('submitted')}, RUNNING {at('slurm_alloc')}, seen {at('seen_running')}, script "
            f"{at('script_start')}, healthy {at('healthy')}, first byte {at('first_byte')} s")


# Slurm's own phases: the same for every way, no ratio
SLURM_ONLY = {"slurm_sched", "slurm_launch", "slurm_own"}


def phase_ratio(key, a, b):
    return None if key in SLURM_ONLY else time_ratio(a, b)


def per_run(evs, key):
    fn = next(f for k, _, f in PHASES if k == key)
    out = []
    for e in evs:
        try:
            out.append(f"{fn(e):.2f}")
        except (KeyError, TypeError):
            out.append("-")
    return ", ".join(out)


def phase_medians(evs):
    out = {}
    for key, _, fn in PHASES:
        vals = []
        for e in evs:
            try:
                vals.append(fn(e))
            except (KeyError, TypeError):
                pass
        out[key] = median(vals)
    return out


# the two numbers the goals are about (issue 11): median and per run
HEADLINE = (("added", "added beyond Slurm's own part", 0.100),
            ("detect", "RUNNING noticed after Slurm set it", 0.250))


def ratios(m):
    """seed / slurmgate, slurmgate / sg+agent, seed / sg+agent of every phase."""
    return {key: (phase_ratio(key, m["seed"][key], m["gw"][key]),
                  phase_ratio(key, m["gw"][key], m["agent"][key]),
                  phase_ratio(key, m["seed"][key], m["agent"][key])) for key, _, _ in PHASES}


def report_slurm(res):
    m = {w: phase_medians(res[w]) for w in WAYS}
    r = ratios(m)
    n = len(res["gw"])
    log("")
    log(f"Slurm cold start, median of {n} (seconds; a phase's median is not a difference of medians):")
    log(f"  {'phase':<48} {'slurmgate':>9} {'sg+agent':>8} {'seed':>7} {'seed/sg':>8} {'sg/agent':>8} "
        f"{'seed/agent':>10}")
    for key, label, _ in PHASES:
        log(f"  {label:<48} {fmt(m['gw'][key], '.2f'):>9} {fmt(m['agent'][key], '.2f'):>8} "
            f"{fmt(m['seed'][key], '.2f'):>7} {fmt(r[key][0], '.2f'):>8} {fmt(r[key][1], '.2f'):>8} "
            f"{fmt(r[key][2], '.2f'):>10}")
    for key in ("total", "added", "detect"):
        log(f"  {key} per run: " + "; ".join(f"{WAY_NAMES[w]} {per_run(res[w], key)}" for w in WAYS))
    for key, label, goal in HEADLINE:
        log(f"  {label} (median): " + ", ".join(f"{WAY_NAMES[w]} {ms(m[w][key])}" for w in WAYS)
            + f"; goal <= {goal * 1000:.0f} ms")
    res["med"], res["ratios"] = m, r


def ms(x):
    return "-" if x is None else f"{x * 1000:.0f} ms"
