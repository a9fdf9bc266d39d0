#!/usr/bin/python3
"""bench/seedshape.py - the seed system's way of running a Slurm service.

The system slurmgate replaces (nginx + a Flask app) opened a fresh ssh
connection for every command and every status check (no ControlMaster):

  cold start   ssh sbatch; ssh squeue, again and again until RUNNING;
               ssh -N -L (a tunnel of its own); GET /health through it
               until 200; then the request itself
  warm request one ssh status check (squeue) per request, then the request
               through the tunnel

This module does the same against a tests/env/clusterctl cluster, so that
bench/run can put slurmgate's numbers next to the seed's. Python 3 stdlib
only; every command has a timeout, all traffic stays on 127.0.0.1.

Standalone:  bench/seedshape.py CLUSTER_DIR/env.json [N]
  runs N cold starts (default 1) and a 5 s warm-request run, prints JSON.
"""

import json
import os
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True   # no __pycache__ in the tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
# ports (tests/lib, one contract with the tests) and raw HTTP: bench/lib/common.py
from common import free_port, http_request  # noqa: E402

# the seed's poll intervals, chosen equal to slurmgate's defaults so that only
# the way of running the commands differs: squeue every 0.5 s (poll_fast_ms),
# health every 0.1 s (slurmgate's probe backs off from 10 to 100 ms)
SQUEUE_POLL_S = 0.5
HEALTH_POLL_S = 0.1
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
         "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


def http_get(port, path, timeout=5.0):
    """GET with Connection: close -> (status, body, seconds to the first byte,
    counted from before the connect)."""
    t0 = time.time()
    status, _, body, _, t_fb = http_request(port, "GET", path, timeout=timeout)
    return status, body, t_fb - t0


class Seed:
    """One seed-style service on the cluster described by env (env.json)."""

    def __init__(self, env, job_script, remote_port, job_name="seed-bench"):
        self.env = env
        self.job_script = job_script
        self.rport = remote_port
        self.job_name = job_name
        self.job_id = None
        self.node = None
        self.tunnel = None       # the ssh -N -L Popen
        self.lport = None
        self.ssh_calls = 0       # ssh commands run (each a fresh connection)
        self.ssh_seconds = 0.0   # ... and the time they took
        self.tunnels = 0         # ssh -N -L connections opened

    # ---- one fresh ssh connection per command, like the seed
    def ssh_argv(self):
        e = self.env
        return ["ssh", "-p", str(e["ssh_port"]), "-i", e["ssh_key"],
                "-o", f"UserKnownHostsFile={e['ssh_known_hosts']}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none",
                "-o", "ConnectTimeout=20", f"{e['ssh_user']}@{e['ssh_host']}"]

    def ssh(self, cmd, timeout=60):
        t = time.monotonic()
        p = subprocess.run(self.ssh_argv() + ["--", cmd], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout)
        self.ssh_calls += 1
        self.ssh_seconds += time.monotonic() - t
        if p.returncode != 0:
            raise RuntimeError(f"seed: ssh {cmd!r}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
        return p.stdout

    def status(self):
        """(state, node) of our job from a fresh `ssh squeue`; ('', '') once gone."""
        out = self.ssh(f"squeue -h -j {self.job_id} -o '%T|%N'").strip().splitlines()
        if not out:
            return "", ""
        st, _, node = out[-1].partition("|")
        return st, node

    # ---- cold start
    def cold_start(self, timeout=120.0):
        """Start the service the seed's way. Returns a dict of wall-clock
        times (time.time()) and counts."""
        r = {"t0": time.time()}
        deadline = time.monotonic() + timeout
        calls0 = self.ssh_calls + self.tunnels
        out = self.ssh(f"sbatch --parsable --job-name={self.job_name} "
                       f"--chdir={self.env['work_dir']} --export=ALL,PORT={self.rport} "
                       f"{self.job_script} {self.rport}")
        self.job_id = out.strip().split(";")[0]
        if not self.job_id.isdigit():
            raise RuntimeError(f"seed: sbatch printed {out!r}")
        r["job_id"] = self.job_id
        r["t_submitted"] = time.time()
        polls = 0
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"seed: job {self.job_id} not RUNNING within {timeout} s")
            time.sleep(SQUEUE_POLL_S)
            st, node = self.status()
            polls += 1
            if st == "RUNNING":
                self.node = node or "localhost"
                # the node's address (test nodes' names do not resolve here)
                self.node = {n["name"]: n["addr"] for n in self.env.get("nodes", [])}.get(
                    self.node, self.node)
                break
            if st in ENDED or st == "":
                raise RuntimeError(f"seed: job {self.job_id} ended before it ran ({st or 'gone'})")
        r["t_running"] = time.time()
        r["squeue_polls"] = polls
        self.lport = free_port()
        self.tunnel = subprocess.Popen(
            self.ssh_argv()[:-1] + ["-N", "-o", "ExitOnForwardFailure=yes",
                                    "-L", f"127.0.0.1:{self.lport}:{self.node}:{self.rport}",
                                    self.ssh_argv()[-1]],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        self.tunnels += 1
        probes = 0
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"seed: no healthy service through the tunnel within {timeout} s")
            if self.tunnel.poll() is not None:
                raise RuntimeError(f"seed: ssh tunnel exited: {self.tunnel.stderr.read()[-300:]!r}")
            probes += 1
            try:
                st, _, _ = http_get(self.lport, "/health", timeout=5.0)
                if st == 200:
                    break
            except OSError:
                pass
            time.sleep(HEALTH_POLL_S)
        r["t_healthy"] = time.time()
        r["health_probes"] = probes
        st, _, _ = http_get(self.lport, "/small", timeout=10.0)
        if st != 200:
            raise RuntimeError(f"seed: GET /small answered {st}")
        r["t_first_byte"] = time.time()   # Connection: close, tiny body: first byte ~ whole answer
        r["ssh_connections"] = self.ssh_calls + self.tunnels - calls0
        return r

    # ---- warm requests: one ssh status check per request
    def warm_rate(self, duration=5.0, path="/small", min_requests=3):
        """Sequential requests, each after a fresh `ssh squeue` status check,
        for about `duration` s (at least min_requests)."""
        lat = []
        t_start = time.monotonic()
        while time.monotonic() - t_start < duration or len(lat) < min_requests:
            t = time.monotonic()
            st, _ = self.status()
            if st != "RUNNING":
                raise RuntimeError(f"seed: job {self.job_id} is {st or 'gone'} during the warm run")
            code, _, _ = http_get(self.lport, path, timeout=10.0)
            if code != 200:
                raise RuntimeError(f"seed: GET {path} answered {code}")
            lat.append(time.monotonic() - t)
            if time.monotonic() - t_start > duration * 4:
                break
        took = time.monotonic() - t_start
        lat.sort()
        return {"requests": len(lat), "seconds": took, "rps": len(lat) / took,
                "p50_ms": lat[len(lat) // 2] * 1e3, "max_ms": lat[-1] * 1e3}

    # ---- stop: tunnel down, scancel over a fresh ssh
    def close_tunnel(self):
        t, self.tunnel = self.tunnel, None
        if t is None or t.poll() is not None:
            return
        try:
            os.killpg(t.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            t.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(t.pid, signal.SIGKILL)
            t.wait(timeout=5)

    def stop(self, wait=True, timeout=60.0):
        """Close the tunnel, scancel the job (fresh ssh) and, with wait,
        poll until the job has left squeue. Safe to call twice."""
        self.close_tunnel()
        if self.job_id is None:
            return
        try:
            self.ssh(f"scancel {self.job_id}", timeout=30)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        deadline = time.monotonic() + timeout
        while wait and time.monotonic() < deadline:
            try:
                st, _ = self.status()
            except (RuntimeError, subprocess.TimeoutExpired):
                break
            if st == "" or st in ENDED:
                break
            time.sleep(0.5)
        self.job_id = None


def main(argv):
    if len(argv) < 2:
        sys.exit("usage: bench/seedshape.py CLUSTER_DIR/env.json [N]")
    env = json.load(open(argv[1]))
    n = int(argv[2]) if len(argv) > 2 else 1
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(env["work_dir"], "seedshape-job.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho \"bench-job-start $(date +%s.%N)\"\n"
                f"exec \"{here}/build/demo_service\" --host 0.0.0.0 --port \"$1\"\n")
    os.chmod(script, 0o755)
    seed = Seed(env, script, free_port())

    def on_signal(sig, frame):
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    out = {"cold": []}
    try:
        for k in range(n):
            r = seed.cold_start()
            out["cold"].append({key: round(v - r["t0"], 3) if key.startswith("t_") else v
                                for key, v in r.items() if key != "t0"})
            if k < n - 1:
                seed.stop()
        out["warm"] = seed.warm_rate()
    finally:
        seed.stop(wait=False)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv)
