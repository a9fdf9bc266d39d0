"""bench/lib/common.py - what every part of the benchmark shares: paths, the
BENCH_* knobs, the processes it started (stopped on exit), HTTP and wrk
helpers, and number formatting. Ports, waiting, /proc and the Slurm cluster
come from tests/lib (one copy with the tests)."""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
# Ports, waiting, /proc: one contract each, shared with the integration tests.
from sgproc import children_of, proc_start_time  # noqa: E402,F401
from sgtestlib import WaitTimeout, free_port, free_port_block, wait_until  # noqa: E402,F401

BUILD = os.path.join(ROOT, "build")
SLURMGATE = os.environ.get("SLURMGATE_BIN", os.path.join(BUILD, "slurmgate"))
# The upstreams the proxy table runs against, the headline first: each is
# compiled by the bench (build/NAME from bench/SRC) and started by slurmgate
# through its start script as a local service under /ROUTE/.
UPSTREAMS = {
    "realistic": {
        "src": "upstream_evhttp.c", "bin": "bench_upstream_evhttp", "sh": "upstream_evhttp.sh",
        "libs": ["-levent"], "route": "r",
        "desc": "bench/upstream_evhttp.c (libevent's evhttp, like a typical Python/libevent "
                "server: Content-Type, Date, Content-Length, 100-byte JSON body)",
    },
    "minimal": {
        "src": "upstream.c", "bin": "bench_upstream", "sh": "upstream.sh",
        "libs": [], "route": "b",
        "desc": "bench/upstream.c (raw epoll, Content-Type and Content-Length, 3-byte body)",
    },
}
PROXY_HEADLINE = "realistic"
DEMO_BIN = os.path.join(BUILD, "demo_service")
DEMO_SH = os.path.join(ROOT, "examples", "demo_service.sh")


def env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"bench: {name} must be an integer")


ROUNDS = env_int("BENCH_ROUNDS", 5)   # the req/s ratio moves ~10% round to round here
# BENCH_PIN [1]: with 2+ CPUs, the proxy rounds run twice: first "isolated",
# wrk on the first CPU and the system under test (the proxy and the
# upstreams) on the others, then "shared", every process on every CPU. With
# four busy threads on two CPUs, where the scheduler puts a woken thread
# decides much of the shared result (measured: wrk's CPU per request and the
# idle CPU move with the proxy's wake-up timing). Isolated, wrk's cost per
# request is the same behind either proxy, but the proxy and the upstream
# time-share one CPU (higher p99s, and on a quiet machine lower req/s than
# shared). Neither is the one true number: both are printed.
PIN = env_int("BENCH_PIN", 1)
DURATION = env_int("BENCH_DURATION", 5)
WARMUP = env_int("BENCH_WARMUP", 1)
CONNS = env_int("BENCH_CONNS", 50)
THREADS = env_int("BENCH_THREADS", 2)
IDLE_CONNS = env_int("BENCH_IDLE_CONNS", 10000)   # lowered by bench/run to fit RLIMIT_NOFILE
NGINX_RSS = env_int("BENCH_NGINX_RSS", 1)
NGINX_FWD = env_int("BENCH_NGINX_FWD", 1)   # nginx forwards Host and X-Forwarded-* as slurmgate does
DO_STRACE = env_int("BENCH_STRACE", 0)
CALLGRIND = env_int("BENCH_CALLGRIND", 1)   # instructions/request under callgrind (needs valgrind)
CG_WARMUP, CG_DURATION, CG_START_S = 2, 4, 60   # wrk -t1 -c10 under callgrind; valgrind starts slowly
LOWLOAD = env_int("BENCH_LOWLOAD", 3)
OVERLOAD_CONNS = env_int("BENCH_OVERLOAD_CONNS", 2000)
OVERLOAD_S = 3
KEEP_TMP = env_int("BENCH_KEEP_TMP", 0)
SCALE = env_int("BENCH_SCALE", 1)
SCALE_DURATION = env_int("BENCH_SCALE_DURATION", 5)
CPU_MS = env_int("BENCH_CPU_MS", 5)
SLURM = env_int("BENCH_SLURM", 1)
COLD_STARTS = max(env_int("BENCH_COLD_STARTS", 3), 1)
WARM_DURATION = env_int("BENCH_WARM_DURATION", 5)
POLL_FAST_MS = env_int("BENCH_POLL_FAST_MS", 500)   # slurmgate's poll_fast_ms (its default: 500)
NOFILE = 1024   # set by bench/run from RLIMIT_NOFILE
WATCHDOG_S = (60 + (2 if PIN else 1) * ROUNDS * 3 * len(UPSTREAMS) * (WARMUP + DURATION + 2) + 3 * len(UPSTREAMS) * (LOWLOAD + 3)
              + 2 * (OVERLOAD_S + 5) + 120
              + (40 * len(UPSTREAMS) if DO_STRACE else 0)
              + (2 * (CG_START_S + 30 + len(UPSTREAMS) * (CG_WARMUP + CG_DURATION + 20)) if CALLGRIND else 0)
              + (60 + 2 * (SCALE_DURATION + 8) if SCALE else 0)
              # cluster up and down, and per cold start (all three ways) a start and a stop on a busy machine
              + (240 + COLD_STARTS * 220 + 5 * (WARM_DURATION + 10) if SLURM else 0))

CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "nginx", "slurmgate")

# ---------------------------------------------------------------- processes

children = []  # Popen objects we started (each in its own session)
extra_pids = []  # (pid, starttime) of grandchildren we must not leak
late_cleanups = []  # callables run after the processes are stopped (tunnels, the cluster)
tmpdir = None   # set by bench/run
_cleaning = False


def log(msg):
    print(msg, flush=True)


def spawn(argv, **kw):
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    children.append(p)
    return p


def stop_popen(p, sig=signal.SIGTERM, grace=5.0):
    if p.poll() is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    except ProcessLookupError:
        pass


def forget(p, sig=signal.SIGTERM, grace=5.0):
    """Stop P (stop_popen) and drop it from the processes cleanup() stops."""
    stop_popen(p, sig, grace)
    children.remove(p)


def cleanup():
    global _cleaning
    if _cleaning:
        return
    _cleaning = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.alarm(0)
    for p in reversed(children):
        # nginx: SIGTERM = fast shutdown; slurmgate: SIGTERM = graceful, it
        # stops its services (our upstream) before it exits
        stop_popen(p, signal.SIGTERM, grace=8.0)
    for pid, st in extra_pids:
        if st is not None and proc_start_time(pid) == st:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for fn in reversed(late_cleanups):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - run every one of them
            print(f"bench: cleanup: {e}", file=sys.stderr, flush=True)
    if tmpdir and not KEEP_TMP:
        shutil.rmtree(tmpdir, ignore_errors=True)
    elif tmpdir:
        log(f"(temp files kept in {tmpdir})")


class Interrupted(BaseException):
    """A signal or the watchdog: like KeyboardInterrupt, not an Exception, so
    that no "except Exception" (wait_until's probes) swallows it."""


def on_signal(sig, frame):
    raise Interrupted(signal.Signals(sig).name)


def on_alarm(sig, frame):
    raise Interrupted(f"watchdog: the benchmark took more than {WATCHDOG_S} s")


def cpu_ticks(pids):
    t = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        t += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return t


def machine_ticks():
    """(busy, total) CPU ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)   # idle + iowait
    return sum(v) - idle, sum(v)


def write_json(name, obj):
    """obj as JSON in tmpdir/NAME; returns the path."""
    path = os.path.join(tmpdir, name)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    return path


def start_gateway(config, log_name, wrap=()):
    """slurmgate with CONFIG (written to tmpdir as LOG_NAME's stem + .json),
    its output in tmpdir/LOG_NAME, run under WRAP (argv prefix, e.g.
    valgrind); the caller waits for it (wait_http)."""
    stem = os.path.splitext(log_name)[0]
    # a state_dir of its own: the default (/var/lib/slurmgate as root) is
    # locked by any other slurmgate running on this machine
    config.setdefault("state_dir", os.path.join(tmpdir, stem + "-state"))
    path = write_json(stem + ".json", config)
    logf = open(os.path.join(tmpdir, log_name), "w")
    p = spawn([*wrap, SLURMGATE, "-c", path], stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    return p


# ---------------------------------------------------------------- HTTP

def http_get(port, path, timeout=5.0):
    """One HTTP/1.1 GET with Connection: close; returns (status, body)."""
    st, _, body, _, _ = http_request(port, "GET", path, timeout=timeout)
    return st, body


def wait_http(port, path, proc, what, timeout=10.0):
    """Poll GET PATH until it answers 200; RuntimeError if PROC (if not None)
    exits first or the deadline passes."""
    def up():
        return (proc is not None and proc.poll() is not None) or \
            http_get(port, path, timeout=2.0)[0] == 200
    try:
        wait_until(up, timeout, msg=f"{what} answering {path}")
    except WaitTimeout as e:
        raise RuntimeError(f"{what} did not answer {path} on port {port} within {timeout} s ({e})") from None
    if proc is not None and proc.poll() is not None:
        raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")


def http_request(port, method, path, headers=None, timeout=10.0):
    """One HTTP/1.1 request with Connection: close. Returns (status, headers
    with lower-case names, body, t_sent, t_first_byte); times from time.time()
    so that they compare with log time stamps."""
    hdr = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if method != "GET":
        hdr += "Content-Length: 0\r\n"
    req = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{hdr}Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t_sent = time.time()
        s.sendall(req.encode())
        data = s.recv(65536)
        t_fb = time.time()
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1]) if lines[0].startswith("HTTP/") else 0
    hd = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hd[k.strip().lower()] = v.strip()
    if hd.get("transfer-encoding", "").lower() == "chunked":
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size.split(b";")[0] or b"0", 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return status, hd, body, t_sent, t_fb


def api_json(port, path, timeout=10.0):
    st, _, body, _, _ = http_request(port, "GET", path, timeout=timeout)
    if st != 200:
        raise RuntimeError(f"GET {path} answered {st}: {body[:200]!r}")
    return json.loads(body)


def log_tail(path, n=12):
    try:
        with open(path, errors="replace") as f:
            return "\n".join("    " + line for line in f.read().splitlines()[-n:])
    except OSError:
        return "    (no log)"


# ---------------------------------------------------------------- wrk

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def to_ms(s):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s.strip())
    return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")


def placements():
    """The CPU placements of the proxy rounds: [(name, wrk's CPUs, the
    system under test's CPUs)], None for every CPU (see PIN)."""
    cpus = sorted(os.sched_getaffinity(0))
    shared = ("shared", None, None)
    if not PIN or len(cpus) < 2:
        return [shared]
    return [("isolated", cpus[:1], cpus[1:]), shared]


def pin(pids, cpus):
    """Every thread of PIDS (and of their descendants) onto CPUS (None: the
    CPUs this bench may use)."""
    cpus = set(cpus) if cpus else os.sched_getaffinity(0)
    todo, seen = list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children_of(pid))
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cpus)
        except (FileNotFoundError, ProcessLookupError):
            pass


def run_wrk(url, duration, latency=True, threads=None, conns=None, cpus=None):
    argv = ["wrk", f"-t{threads or THREADS}", f"-c{conns or CONNS}", f"-d{duration}s"]
    if cpus:
        argv = ["taskset", "-c", ",".join(str(c) for c in cpus)] + argv
    if latency:
        argv.append("--latency")
    argv.append(url)
    p = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=duration + 30)
    finally:
        forget(p)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}): {out}")
    r = {"raw": out}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    r["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        r["p" + pct] = to_ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["sockerr"] = tuple(int(x) for x in m.groups()) if m else (0, 0, 0, 0)
    return r


# ---------------------------------------------------------------- numbers

def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return a / b if a is not None and b else None


def time_ratio(a, b):
    """a / b for two durations, None when either is too short for a ratio to mean anything."""
    return a / b if a is not None and b is not None and min(a, b) >= 0.05 else None


def fmt(x, spec=".0f"):
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return format(x, spec)
