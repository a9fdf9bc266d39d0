"""bench/lib/report.py - the medians and ratios of the proxy rounds, and the
markdown summary for the README (proxy, scale-out, Slurm)."""

import os
import re
import subprocess

import common as C
from common import (CONNS, CPU_MS, DURATION, OVERLOAD_S, PROXY_HEADLINE, ROOT,
                    ROUNDS, SCALE_DURATION, SLURMGATE, TARGETS, THREADS, UPSTREAMS, WARM_DURATION,
                    WARMUP, fmt, log, median, ratio)
from slurm import HEADLINE, PHASES, WAY_NAMES, WAYS, ms, per_run


def verdict(ok):
    return "PASS" if ok else "FAIL"


# The goals per upstream (issue 11): slurmgate/nginx req/s at least RPS, and
# (where CPU is set) CPU per request at most CPU times nginx's.
GOALS = {"realistic": {"rps": 1.0, "cpu": 1.0}, "minimal": {"rps": 1.1, "cpu": None}}


class Rounds:
    """The medians of the proxy rounds on one upstream and the ratios the
    goals are judged by."""

    def __init__(self, upstream, results, placement="shared"):
        self.upstream = upstream
        self.placement = placement
        self.goal = GOALS.get(upstream, {"rps": 1.0, "cpu": 1.0})
        self.results = results
        self.M = {t: {k: median([r.get(k) for r in results[t]])
                      for k in ("rps", "p50", "p99", "cpu_us", "cpu_pct")} for t in TARGETS}
        self.errs = {t: (sum(r["non2xx"] for r in results[t]),
                         sum(sum(r["sockerr"]) for r in results[t])) for t in TARGETS}
        M = self.M
        self.r_ng = M["slurmgate"]["rps"] / M["nginx"]["rps"] if M["nginx"]["rps"] else float("nan")
        self.r_di = M["slurmgate"]["rps"] / M["direct"]["rps"] if M["direct"]["rps"] else float("nan")
        self.cpu_sg, self.cpu_ng = M["slurmgate"]["cpu_us"], M["nginx"]["cpu_us"]
        self.cpu_ratio = self.cpu_sg / self.cpu_ng if self.cpu_sg is not None and self.cpu_ng else float("nan")
        self.add_p99 = M["slurmgate"]["p99"] - M["direct"]["p99"]
        self.add_p99_ng = M["nginx"]["p99"] - M["direct"]["p99"]
        self.ok_rps = self.r_ng >= self.goal["rps"]
        self.ok_cpu = self.goal["cpu"] is None or self.cpu_ratio <= self.goal["cpu"]

    def cpu_target(self):
        return "-" if self.goal["cpu"] is None else f"<= {self.goal['cpu']:.2f}x"

    def per_round(self, k, a, b):
        """the ratio in each round (neighbours in time: shows how noisy the machine is)"""
        out = []
        for x, y in zip(self.results[a], self.results[b]):
            if x.get(k) is not None and y.get(k):
                out.append(f"{x[k] / y[k]:.2f}")
        return " ".join(out)

    def log(self):
        M, errs = self.M, self.errs
        log("")
        log(f"{self.upstream} upstream, {UPSTREAMS[self.upstream]['desc']}; {self.placement} CPUs; "
            f"median of {ROUNDS} rounds:")
        log(f"  {'target':<10} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
            f"{'proxy CPU %':>11} {'non-2xx':>7} {'sock err':>8}")
        for t in TARGETS:
            m = M[t]
            log(f"  {t:<10} {m['rps']:>9.0f} {m['p50']:>7.2f} {m['p99']:>7.2f} "
                f"{fmt(m['cpu_us'], '.1f'):>10} {fmt(m['cpu_pct'], '.0f'):>11} "
                f"{errs[t][0]:>7} {errs[t][1]:>8}")
        log("")
        log(f"ratios ({self.upstream} upstream, {self.placement} CPUs):")
        log(f"  slurmgate/nginx  req/s     {self.r_ng:6.2f}x   target >= {self.goal['rps']:.2f}x   "
            f"{verdict(self.ok_rps)}"
            f"   (per round: {self.per_round('rps', 'slurmgate', 'nginx')})")
        log(f"  slurmgate/direct req/s     {self.r_di:6.2f}x")
        log(f"  CPU us/request slurmgate {fmt(self.cpu_sg, '.1f')} vs nginx {fmt(self.cpu_ng, '.1f')} "
            f"({self.cpu_ratio:.2f}x)   target {self.cpu_target()}"
            f"{'   ' + verdict(self.ok_cpu) if self.goal['cpu'] is not None else ''}"
            f"   (per round: {self.per_round('cpu_us', 'slurmgate', 'nginx')})")
        log(f"  added p99 vs direct: slurmgate {self.add_p99:+.2f} ms, nginx {self.add_p99_ng:+.2f} ms"
            f"   target < 1 ms   {verdict(self.add_p99 < 1.0)}")


def placement_desc(name):
    if name == "isolated":
        return "isolated CPUs (wrk on one, the proxy and the upstream on the other)"
    return "shared CPUs (every process on every CPU)"


def summary(rds, load1, rss, over, low, syscalls, cg, sc, sl, more=None):
    """The markdown summary for the README; RDS: {upstream: Rounds}, the
    headline first; MORE: {placement: {upstream: Rounds}} of the other CPU
    placements; CG: callgrind.callgrind_part's result or None."""
    more = more or {}
    first = next(iter(rds.values())).placement
    log("")
    log("---- summary (markdown) ----")
    log(f"slurmgate {slurmgate_version()}; "
        f"wrk -t{THREADS} -c{CONNS}, {DURATION} s runs after {WARMUP} s warm-up, median of "
        f"{ROUNDS} rounds interleaving every target on every upstream, {os.cpu_count()} CPUs "
        f"(load average at start {load1:.2f}), all on 127.0.0.1; nginx {nginx_version()}: "
        f"1 worker, upstream keepalive 64, proxy_buffering off, "
        f"{'forwarding Host and X-Forwarded-For/-Proto/-Host as slurmgate does' if C.NGINX_FWD else 'its default request fields (no X-Forwarded-*)'}. "
        f"Upstreams: " +
        "; ".join(f"{u}{' (the headline)' if u == PROXY_HEADLINE else ''}: {UPSTREAMS[u]['desc']}"
                  for u in rds) + ". Proxy rounds on " +
        "; then on ".join(placement_desc(p) for p in [first, *more]) + ".")
    log("")
    log("| CPUs | upstream | target | req/s | p50 (ms) | p99 (ms) | proxy CPU (us/req) | non-2xx / socket errors |")
    log("|---|---|---|---:|---:|---:|---:|---:|")
    for pl, prds in [(first, rds), *more.items()]:
        for u, rd in prds.items():
            for t in TARGETS:
                m = rd.M[t]
                log(f"| {pl} | {u} | {t} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | "
                    f"{fmt(m['cpu_us'], '.1f')} | {rd.errs[t][0]} / {rd.errs[t][1]} |")
    log("")
    log("| check | target | measured | |")
    log("|---|---|---|---|")
    for u, rd in rds.items():
        for pl, prds in [(first, rds), *more.items()]:
            rp = prds[u]
            log(f"| {u}, {pl} CPUs: slurmgate / nginx req/s | >= {rp.goal['rps']:.2f}x | {rp.r_ng:.2f}x "
                f"(per round {rp.per_round('rps', 'slurmgate', 'nginx')}) | {verdict(rp.ok_rps)} |")
            log(f"| {u}, {pl} CPUs: CPU per request, slurmgate vs nginx | {rp.cpu_target()} | "
                f"{fmt(rp.cpu_sg, '.1f')} vs {fmt(rp.cpu_ng, '.1f')} us ({rp.cpu_ratio:.2f}x) | "
                f"{verdict(rp.ok_cpu) if rp.goal['cpu'] is not None else ''} |")
        if cg and u in cg:
            sg, ng = cg[u]["slurmgate"]["per_req"], cg[u]["nginx"]["per_req"]
            log(f"| {u}: instructions per request (callgrind, user space), slurmgate vs nginx | - | "
                f"{sg / 1000:.1f} K vs {ng / 1000:.1f} K ({fmt(ratio(sg, ng), '.2f')}x) | |")
        log(f"| {u}: slurmgate / direct req/s | - | {rd.r_di:.2f}x | |")
        log(f"| {u}: added p99 vs direct | < 1 ms | {rd.add_p99:+.2f} ms (nginx {rd.add_p99_ng:+.2f} ms) | "
            f"{verdict(rd.add_p99 < 1.0)} |")
    for t, r in rss.items():
        tgt = "< 100 MB" if t == "slurmgate" else "-"
        v = verdict(r["after"] / 1024 < 100 and r["ok"] == C.IDLE_CONNS) if t == "slurmgate" else ""
        log(f"| RSS {t}, idle -> {C.IDLE_CONNS} idle conns | {tgt} | "
            f"{r['before'] / 1024:.1f} -> {r['after'] / 1024:.1f} MB | {v} |")
    for t, r in over.items():
        ok = r["alive"] and r["non2xx"] == 0 and sum(r["sockerr"][:3]) == 0
        log(f"| overload {t}: -c{min(C.OVERLOAD_CONNS, C.NOFILE // 3)}, {OVERLOAD_S} s | no errors, "
            f"survives | {r['rps']:.0f} req/s, {r['non2xx']} non-2xx, "
            f"{sum(r['sockerr'])} socket errors, {'alive' if r['alive'] else 'DEAD'} | "
            f"{verdict(ok) if t == 'slurmgate' else ''} |")
    for u, lw in low.items():
        log(f"| {u}: added latency, unsaturated (-t1 -c1), p50 / p99 | - | slurmgate "
            f"{lw['slurmgate']['p50'] - lw['direct']['p50']:+.3f} / "
            f"{lw['slurmgate']['p99'] - lw['direct']['p99']:+.3f} ms, nginx "
            f"{lw['nginx']['p50'] - lw['direct']['p50']:+.3f} / "
            f"{lw['nginx']['p99'] - lw['direct']['p99']:+.3f} ms | |")
    for (u, t), (calls, n) in syscalls.items():
        log(f"| {u}: syscalls/request {t} | - | {sum(calls.values()) / max(n, 1):.2f} | |")
    if sc:
        summary_scale(sc)
    if sl:
        summary_slurm(sl)


def summary_scale(sc):
    log("")
    log(f"Scale-out on a CPU-bound endpoint: local demo service, `GET /cpu?ms={CPU_MS}` ({CPU_MS} ms "
        f"of CPU on its event loop), min = max instances, target_concurrency 1, wrk -t2 -c4 "
        f"{SCALE_DURATION} s, {os.cpu_count()} CPUs.")
    log("")
    log("| instances | req/s | p50 (ms) | p99 (ms) | requests per instance | demo CPU | machine CPU |")
    log("|---:|---:|---:|---:|---|---:|---:|")
    for n in (1, 2):
        r = sc[n]
        tot = sum(r["per_instance"].values()) or 1
        spread = " / ".join(f"{v} ({v * 100 / tot:.0f}%)" for _, v in sorted(r["per_instance"].items()))
        log(f"| {n} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {spread} | "
            f"{r['demo_cpu_pct']:.0f}% | {r['machine_pct']:.0f}% of {100 * (os.cpu_count() or 1)}% |")
    log(f"| 2 vs 1 | {fmt(ratio(sc[2]['rps'], sc[1]['rps']), '.2f')}x | | | | | |")


def summary_slurm(res):
    m, r = res["med"], res["ratios"]
    pg, pa = res["poll_fast_ms"]["gw"], res["poll_fast_ms"]["agent"]
    polls = (f"the same poll_fast_ms {pg} for both, so the agent's column shows the agent's own effect"
             if pg == pa else
             f"poll_fast_ms {pg} plain and {pa} with the agent (each one's default: the agent's column "
             f"shows the agent and its shorter interval together)")
    log("")
    log(f"Slurm cold start ({res.get('nodes', 1)}-node clusterctl cluster, sshd on 127.0.0.1; median of "
        f"{len(res['gw'])}, the three ways one after the other in rotating order): slurmgate (one ssh "
        f"ControlMaster, squeue every {pg / 1000:g} s), slurmgate + remote agent (`slurm_agent`: one "
        f"long-lived remote/slurmgate-agent session through the same ControlMaster, its watcher's squeue "
        f"every {pa / 1000:g} s while a job starts, changes pushed) and the seed's way (a fresh ssh per "
        f"sbatch/squeue, squeue every 0.5 s, its own `ssh -N -L` tunnel); {polls}.")
    log("")
    log("| phase (s) | slurmgate | sg + agent | seed | seed / slurmgate | slurmgate / sg + agent "
        "| seed / sg + agent |")
    log("|---|---:|---:|---:|---:|---:|---:|")
    for key, label, _ in PHASES:
        log(f"| {label} | {fmt(m['gw'][key], '.2f')} | {fmt(m['agent'][key], '.2f')} | "
            f"{fmt(m['seed'][key], '.2f')} | " + " | ".join(fmt(x, '.2f') for x in r[key]) + " |")
    log("")
    log("| median (per run) | slurmgate | sg + agent | seed | goal (issue 11) |")
    log("|---|---:|---:|---:|---:|")
    for key, label, goal in HEADLINE:
        log(f"| {label} | " + " | ".join(f"{ms(m[w][key])} ({per_run(res[w], key)} s)" for w in WAYS)
            + f" | <= {goal * 1000:.0f} ms |")
    log("")
    log("Per run (s): total " + ", ".join(f"{WAY_NAMES[w]} {per_run(res[w], 'total')}" for w in WAYS)
        + f". A fresh ssh session (connect + login shell + command) "
        f"took {res['fresh_ssh_s']:.2f} s on average; Slurm's own part varies by seconds from job "
        f"to job, so compare the added time rather than the totals.")
    w = res["warm"]
    log("")
    log(f"Warm requests to the job, `GET /small` (wrk -t2 -c10, {WARM_DURATION} s):")
    log("")
    log("| path | req/s | p50 (ms) | p99 (ms) |")
    log("|---|---:|---:|---:|")
    for key in ("slurmgate", "gw_tunnel", "seed_tunnel", "direct"):
        r = w[key]
        log(f"| {res['warm_labels'][key]} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} |")
    sd = w["seed"]
    log(f"| seed's way: a fresh `ssh squeue` status check, then the request (sequential) | "
        f"{sd['rps']:.2f} | {sd['p50_ms']:.0f} | max {sd['max_ms']:.0f} |")
    log(f"| slurmgate / seed's way | {w['slurmgate']['rps'] / sd['rps']:.0f}x | | |")


def slurmgate_version():
    v = subprocess.run([SLURMGATE, "-V"], capture_output=True, text=True).stdout.split()
    r = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                       capture_output=True, text=True)
    rev = r.stdout.strip() if r.returncode == 0 else ""
    return (v[-1] if v else "?") + (f" ({rev})" if rev else "")


def nginx_version():
    r = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    m = re.search(r"nginx/(\S+)", r.stderr + r.stdout)
    return m.group(1) if m else "?"
