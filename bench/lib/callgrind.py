"""bench/lib/callgrind.py - user-space instructions per proxied request of
slurmgate and nginx, counted by valgrind's callgrind: exact where req/s and
CPU time on a shared machine vary by 10% from round to round.

Each proxy runs once more under callgrind on ports of its own (nginx with
master_process off, so the process under valgrind is the one that proxies;
this slurmgate starts its own upstreams, on their own ports: the local
launcher does not take a port another process holds). Per upstream: wrk
warm-up, callgrind_control -z, wrk -t1 -c10 (N requests), callgrind_control
-d, then the dump's "summary:" instructions / N. Only the proxy's process is
counted: valgrind does not follow its children (the upstreams), and nginx's
upstreams are the main run's."""

import os
import re
import signal
import subprocess
import time

import common as C
from common import (CG_DURATION, CG_START_S, CG_WARMUP, UPSTREAMS, children_of, fmt, free_port,
                    http_get, log, proc_start_time, ratio, run_wrk, wait_http)
from proxy import start_nginx, start_slurmgate

CG_CONNS = 10


def control(flag, pid, tries=3):
    """callgrind_control FLAG PID (always the PID: without one it acts on
    every callgrind process on the machine)."""
    for _ in range(tries):
        r = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True,
                           timeout=60)
        out = (r.stdout + r.stderr).strip()
        # it exits 0 on its errors ("not detected", "No active callgrind runs")
        if r.returncode == 0 and out.startswith(f"PID {pid}:") and \
                not re.search(r"^(Error|No active)", out, re.M):
            return
        time.sleep(1)
    raise RuntimeError(f"callgrind_control {flag} {pid} failed ({r.returncode}): {out[-300:]}")


def last_dump(out):
    """The instructions of the newest dump OUT.N (highest N, not empty), and N
    (callgrind writes OUT.N per dump, OUT at exit)."""
    d, base = os.path.split(out)
    parts = sorted((int(m.group(1)), f) for f in os.listdir(d)
                   if (m := re.fullmatch(re.escape(base) + r"\.(\d+)", f)))
    for n, f in reversed(parts):
        try:
            with open(os.path.join(d, f)) as fh:
                m = re.search(r"^summary:\s+(\d+)", fh.read(), re.M)
        except OSError:
            continue
        if m:
            return int(m.group(1)), n
    return None, None


def measure(pid, out, url):
    """Instructions of PID per request of a wrk run against URL."""
    run_wrk(url, CG_WARMUP, latency=False, threads=1, conns=CG_CONNS)
    _, before = last_dump(out)
    control("-z", pid)
    r = run_wrk(url, CG_DURATION, latency=False, threads=1, conns=CG_CONNS)
    control("-d", pid)

    def new_dump():
        instr, part = last_dump(out)
        return instr if part is not None and part != before else None
    instr = C.wait_until(new_dump, 10, msg=f"callgrind's dump in {out}")
    if r["requests"] <= 0 or r["non2xx"] or sum(r["sockerr"][:3]):
        raise RuntimeError(f"wrk under callgrind: {r['requests']} requests, {r['non2xx']} non-2xx, "
                           f"socket errors {r['sockerr']}")
    return {"instr": instr, "requests": r["requests"], "per_req": instr / r["requests"]}


def run_under(name, start, url_of, d):
    """Start NAME with START(wrap), measure each upstream, stop it."""
    # cg.out.PID: slurmgate's forked helpers (its keeper) run under callgrind
    # too, until they exec or exit, and write their own file
    wrap = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out.%p")
    p = start(wrap)
    out = os.path.join(d, f"cg.out.{p.pid}")
    res = {}
    try:
        for u in UPSTREAMS:
            res[u] = measure(p.pid, out, url_of(u))
    finally:
        kids = [(k, proc_start_time(k)) for k in children_of(p.pid)]
        C.forget(p, grace=30.0)   # valgrind's exit (and slurmgate's stopping its services) is slow
        for k, st in kids:   # an upstream slurmgate did not stop: kill it, and say so
            if st is not None and proc_start_time(k) == st:
                log(f"  callgrind: {name}'s child {k} still running after it exited: killed")
                os.kill(k, signal.SIGKILL)
    return res


def callgrind_part(tg):
    """{upstream: {"slurmgate": m, "nginx": m}} with m from measure()."""
    d = os.path.join(C.tmpdir, "callgrind")
    os.makedirs(d)
    log("")
    log(f"user-space instructions per request (callgrind; wrk -t1 -c{CG_CONNS} {CG_DURATION} s after "
        f"{CG_WARMUP} s warm-up, counted in the proxy's process only):")

    up_ports = {u: free_port() for u in UPSTREAMS}
    gw_port, ng_port = free_port(), free_port()

    def start_sg(wrap):
        p = start_slurmgate(gw_port, up_ports, "slurmgate-cg.log", wrap, timeout=CG_START_S)
        for u in UPSTREAMS:   # the first request starts the service's upstream
            wait_http(gw_port, f"/{UPSTREAMS[u]['route']}/small", p, f"slurmgate under callgrind ({u})",
                      timeout=CG_START_S)
        C.extra_pids.extend((k, proc_start_time(k)) for k in children_of(p.pid))
        return p

    sg_d, ng_d = os.path.join(d, "slurmgate"), os.path.join(d, "nginx")
    os.makedirs(sg_d)
    os.makedirs(ng_d)
    sg = run_under("slurmgate", start_sg,
                   lambda u: f"http://127.0.0.1:{gw_port}/{UPSTREAMS[u]['route']}/small", sg_d)
    ng = run_under("nginx", lambda wrap: start_nginx(ng_port, tg.up_ports, "nginx-cg", wrap,
                                                     timeout=CG_START_S)[0],
                   lambda u: f"http://127.0.0.1:{ng_port}/{UPSTREAMS[u]['route']}/small", ng_d)
    res = {u: {"slurmgate": sg[u], "nginx": ng[u]} for u in UPSTREAMS}
    for u, r in res.items():
        log(f"  {u:<9} slurmgate {r['slurmgate']['per_req']:8.0f} ({r['slurmgate']['requests']} requests)"
            f"   nginx {r['nginx']['per_req']:8.0f} ({r['nginx']['requests']} requests)"
            f"   slurmgate/nginx {fmt(ratio(r['slurmgate']['per_req'], r['nginx']['per_req']), '.2f')}x")
    if http_get(tg.gw_port, "/api/health")[0] != 200:
        raise RuntimeError("the main slurmgate stopped answering during the callgrind part")
    return res
