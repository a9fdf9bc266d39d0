"""bench/lib/scale.py - scale-out on a CPU-bound endpoint: a local demo
service (GET /cpu?ms=N) with 1 and with 2 warm instances."""

import os
import signal

import common as C
from common import (CLK_TCK, CPU_MS, DEMO_SH, SCALE_DURATION, WaitTimeout, api_json, cpu_ticks,
                    fmt, free_port, free_port_block, log, log_tail, machine_ticks, ratio, run_wrk,
                    wait_until)


def served_by_instance(port, name):
    """{index: (served, pid, state)} from /api/services/<name>."""
    info = api_json(port, f"/api/services/{name}")
    return {i["index"]: (i["served"], i.get("pid"), i["state"]) for i in info["instances"]}


def scale_part():
    """One gateway, two local demo services: cpu1 (1 warm instance) and cpu2
    (2 warm instances), target_concurrency 1; wrk -t2 -c4 on /cpu?ms=N
    through each. Returns {1: result, 2: result}."""
    log("")
    log(f"scale-out, CPU-bound (local demo service, GET /cpu?ms={CPU_MS}: {CPU_MS} ms of CPU "
        f"on its one thread, so at most {1000 // max(CPU_MS, 1)} req/s per instance; "
        f"min = max instances, target_concurrency 1; wrk -t2 -c4 {SCALE_DURATION} s; "
        f"load average {os.getloadavg()[0]:.2f}):")
    port, p1, p2 = free_port(), free_port(), free_port_block(2)
    svcs = []
    for name, route, n, rport in (("cpu1", "c1", 1, p1), ("cpu2", "c2", 2, p2)):
        svcs.append({
            "name": name, "route_name": route, "launcher": "local", "bash_file": DEMO_SH,
            "remote_port": rport, "check_health_path": "/health", "timeout": 3600,
            "start_timeout": 30, "min_instances": n, "max_instances": n,
            "target_concurrency": 1,
        })
    cfg = {"listen": f"127.0.0.1:{port}", "state_dir": os.path.join(C.tmpdir, "scale-state"),
           "shutdown_grace": 5, "Services": svcs}
    log_path = os.path.join(C.tmpdir, "scale.log")
    gw = C.start_gateway(cfg, "scale.log")
    try:
        C.wait_http(port, "/api/health", gw, "slurmgate (scale-out)")
        for name, n in (("cpu1", 1), ("cpu2", 2)):
            wait_until(lambda: sum(1 for v in served_by_instance(port, name).values()
                                   if v[2] == "ready") == n, 30, interval=0.1, msg=f"{name}: {n} ready instances")
        out = {}
        for n, route, name in ((1, "c1", "cpu1"), (2, "c2", "cpu2")):
            url = f"http://127.0.0.1:{port}/{route}/cpu?ms={CPU_MS}"
            run_wrk(url, 1, latency=False, threads=2, conns=4)
            before = served_by_instance(port, name)
            pids = [v[1] for v in before.values() if v[1]]
            c0 = cpu_ticks(pids + [gw.pid])
            c0_demo = cpu_ticks(pids)
            b0, t0 = machine_ticks()
            r = run_wrk(url, SCALE_DURATION, threads=2, conns=4)
            b1, t1 = machine_ticks()
            c1_demo = cpu_ticks(pids)
            c1 = cpu_ticks(pids + [gw.pid])
            # how busy the machine was: other work leaves the demos less CPU
            r["machine_pct"] = (b1 - b0) / max(t1 - t0, 1) * 100 * (os.cpu_count() or 1)
            after = served_by_instance(port, name)
            r["per_instance"] = {k: after[k][0] - before.get(k, (0,))[0] for k in after}
            r["demo_cpu_pct"] = (c1_demo - c0_demo) / CLK_TCK / SCALE_DURATION * 100
            r["gw_cpu_pct"] = ((c1 - c0) - (c1_demo - c0_demo)) / CLK_TCK / SCALE_DURATION * 100
            r["instances"] = len(after)
            out[n] = r
            if gw.poll() is not None:
                raise RuntimeError(f"slurmgate (scale-out) exited with {gw.returncode}")
        return out
    except (RuntimeError, OSError, WaitTimeout):
        log("  slurmgate (scale-out) log tail:\n" + log_tail(log_path))
        raise
    finally:
        C.forget(gw, signal.SIGTERM, grace=15.0)   # it stops its demo services first


def report_scale(sc):
    for n in (1, 2):
        r = sc[n]
        tot = sum(r["per_instance"].values()) or 1
        spread = ", ".join(f"[{k}] {v} ({v * 100 / tot:.0f}%)" for k, v in sorted(r["per_instance"].items()))
        log(f"  {n} instance{'s' if n > 1 else ' '} {r['rps']:>7.1f} req/s  p50 {r['p50']:.1f} ms  "
            f"p99 {r['p99']:.1f} ms  non-2xx {r['non2xx']}  per instance: {spread}  "
            f"CPU: demo {r['demo_cpu_pct']:.0f}%, slurmgate {r['gw_cpu_pct']:.0f}%, "
            f"whole machine {r['machine_pct']:.0f}% of {100 * (os.cpu_count() or 1)}%")
    x = ratio(sc[2]["rps"], sc[1]["rps"])
    log(f"  2 / 1 instances: {fmt(x, '.2f')}x req/s (2 cores: ~1.8x expected on an idle machine; "
        f"each request costs {CPU_MS} ms of demo CPU, so req/s = demo CPU / {CPU_MS} ms: "
        f"less than ~{2 * 100 * 0.9:.0f}% demo CPU with 2 instances means other work took the CPU)")
