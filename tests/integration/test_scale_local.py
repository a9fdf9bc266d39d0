"""Scale-out with the local launcher, end to end: several instances of one
service, against the real gateway and real demo processes.

The policies themselves are unit-tested without a clock or a process:
tests/unit/test_scaler.c (min_instances, scale up after scale_up_delay and
its grace for clients in lock step, scale down after scale_down_delay, the
max_instances cap, the cold burst, held/unhealthy not counted as starting,
the walltime handover), test_balancer.c (least outstanding, the tried set,
the cold-burst spread) and test_idle.c (the idle clock, never below
min_instances). What is left here is what only the whole gateway shows: a
cold burst starts every instance at once and all of them serve; instances
stop on their idle timeout, never before it, down to min_instances; warm
instances from start-up; an instance killed under load; a scale up and a
drain under real traffic; the retry of a request on another instance.

Instance i of a service listens on local_port + i, so every test takes a
block of consecutive free ports. Every wait polls against a deadline (no
sleep stands in for an event) and every request has a timeout; everything
runs on 127.0.0.1.
"""
import os
import signal
import threading
import time

import pytest

import conftest as base
from conftest import (SLACK, demo_service, http_request, pid_alive, port_listening,
                      wait_until)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

class Load:
    """N client threads, each doing PATH (or path(i, k)) in a loop on a fresh
    connection until stop(); every request is recorded as
    (thread, t_start, t_end, status or None, body or error text)."""

    def __init__(self, port, n, path, timeout=15.0, pause=0.0, stagger=0.0):
        self.port = port
        self.stagger = stagger
        self.path = path
        self.timeout = timeout * SLACK
        self.pause = pause
        self.results = []
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, i):
        k = 0
        if self.stagger:
            self.halt.wait(i * self.stagger)
        while not self.halt.is_set():
            path = self.path(i, k) if callable(self.path) else self.path
            k += 1
            t0 = time.monotonic()
            try:
                r = http_request(self.port, "GET", path, timeout=self.timeout)
                rec = (i, t0, time.monotonic(), r.status, r.body)
            except Exception as e:  # noqa: BLE001 - a failed request is a result
                rec = (i, t0, time.monotonic(), None, repr(e))
            with self.lock:
                self.results.append(rec)
            if self.pause:
                self.halt.wait(self.pause)

    def stop(self, timeout=20.0):
        self.halt.set()
        for t in self.threads:
            t.join(timeout * SLACK)
        alive = [t for t in self.threads if t.is_alive()]
        assert not alive, f"{len(alive)} client threads did not finish"
        return self.results

    def snapshot(self):
        with self.lock:
            return list(self.results)

    def failures(self):
        return [r for r in self.snapshot() if r[3] != 200]


def wait_svc(g, pred, timeout, msg=None, interval=0.05):
    """Poll /api/services/demo until pred(info); returns info (the last one
    in the error message on timeout)."""
    holder = {}

    def probe():
        holder["info"] = g.svc()
        return pred(holder["info"])

    try:
        wait_until(probe, timeout * SLACK, interval=interval, msg=msg)
    except AssertionError as e:
        raise AssertionError(f"{e}; last /api/services/demo: {holder.get('info')}") from None
    return holder["info"]


def states(info):
    return sorted((i["index"], i["state"]) for i in info["instances"])


def ready_insts(info):
    return [i for i in info["instances"] if i["state"] == "ready"]


def full_log(g):
    return g.log_path.read_text(errors="replace")


def log_lines(g, needle):
    return [ln for ln in full_log(g).splitlines() if needle in ln]



class Watch:
    """Polls /api/services/demo in a thread (every 50 ms) and keeps, per
    instance (by pid):
      busy[pid]     a lower bound of the last moment it was not idle: the
                    start of a poll that saw it booting or with a request in
                    flight, or the start of the poll before one whose served
                    count went up (that request ended after it);
      stopped[pid]  the end of the first poll that saw it stopping or gone,
                    after it had been ready.
    A poll that is late or missed only makes busy[] earlier, so a check
    "stopped - busy >= timeout" can never fail by chance: it fails only if
    the gateway stopped an instance before its timeout."""

    def __init__(self, g):
        self.g = g
        self.busy, self.stopped, self.served, self.ready = {}, {}, {}, set()
        self.last = None
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.halt.set()
        self.thread.join(10 * SLACK)

    def _run(self):
        prev_t0 = None
        while not self.halt.is_set():
            t0 = time.monotonic()
            try:
                info = self.g.svc()
            except Exception:  # noqa: BLE001 - a failed poll is a missed poll
                prev_t0 = None
                self.halt.wait(0.05)
                continue
            t1 = time.monotonic()
            with self.lock:
                self.last = info
                present = set()
                for i in info["instances"]:
                    pid = i["pid"]
                    if not pid:
                        continue
                    present.add(pid)
                    if i["state"] in ("starting", "probing") or i["in_flight"] > 0:
                        self.busy[pid] = t0
                    elif prev_t0 is not None and i["served"] != self.served.get(pid, i["served"]):
                        self.busy[pid] = max(self.busy.get(pid, 0.0), prev_t0)
                    self.served[pid] = i["served"]
                    if i["state"] == "ready":
                        self.ready.add(pid)
                    elif pid in self.ready and i["state"] == "stopping":
                        self.stopped.setdefault(pid, t1)
                for pid in self.ready - present:
                    self.stopped.setdefault(pid, t1)
            prev_t0 = t0
            self.halt.wait(0.05)

    def idle_gaps(self):
        """{pid: seconds from the last moment it was busy to its stop}."""
        with self.lock:
            return {pid: round(t - self.busy[pid], 3) for pid, t in self.stopped.items()
                    if pid in self.busy}


# libevent's timers may run on a coarse clock: a few ms early against ours
CLOCK_TOLERANCE = 0.05


def idle_rearmed(g, pid):
    """Wait until the idle clock of the only idle instance, PID, starts over
    without a request: its timer fired and kept it (min_instances). Returns
    how long that took."""
    t0 = time.monotonic()
    seen = []

    def rearmed():
        info = g.svc()
        assert [(i["pid"], i["state"]) for i in info["instances"]] == [(pid, "ready")], info
        left = info["idle_seconds_left"]
        seen.append(left)
        return len(seen) > 1 and left is not None and seen[-2] is not None and left > seen[-2] + 0.3

    timeout = g.svc()["timeout"]
    wait_until(rearmed, (timeout * 2 + 2) * SLACK, msg=f"the idle clock of {pid} to start over")
    return time.monotonic() - t0


# --------------------------------------------------------------------------
# 1. a cold burst starts max_instances at once, and all of them serve
# --------------------------------------------------------------------------

def test_cold_burst_starts_all_instances_at_once_and_all_serve(port_block, gateway):
    p = port_block(3)
    svc = demo_service(port=p, max_instances=3, target_concurrency=1, timeout=30,
                       scale_down_delay=600)
    # a 2 s "model load": the burst is waiting while the scaler decides
    g = gateway([svc], env={"DEMO_DELAY": "2"})
    assert g.svc()["instances"] == []

    n = 6
    load = Load(g.port, n, lambda i, k: f"/llm/slow?ms=300&c={i}.{k}")
    t0 = time.monotonic()
    load.start()
    try:
        # all three start at once (well before DEMO_DELAY is over), not one
        # per scale_up_delay
        info = wait_svc(g, lambda i: len(i["instances"]) == 3, 1.5,
                        msg="3 instances for a cold burst of 6 with target 1")
        started_after = time.monotonic() - t0
        assert not ready_insts(info), f"ready too early, DEMO_DELAY is 2 s: {info}"
        assert sorted(i["index"] for i in info["instances"]) == [0, 1, 2], info
        assert info["starts"] == 3, info

        info = wait_svc(g, lambda i: len(ready_insts(i)) == 3, 10,
                        msg="all 3 instances ready")
        all_ready_after = time.monotonic() - t0
        assert len({i["pid"] for i in info["instances"]}) == 3, info
        assert sorted(i["address"] for i in info["instances"]) == \
            [f"127.0.0.1:{p + k}" for k in range(3)], info
        # the burst goes on: every instance serves a share of it
        info = wait_svc(g, lambda i: all(x["served"] >= 3 for x in i["instances"]), 10,
                        msg="every instance to serve 3 requests of the burst")
    finally:
        results = load.stop()

    bad = [r for r in results if r[3] != 200]
    assert not bad, f"{len(bad)} of {len(results)} requests failed: {bad[:5]}"
    info = g.svc()
    assert info["starts"] == 3, f"more starts than max_instances: {info}"
    served = {i["index"]: i["served"] for i in info["instances"]}
    assert sum(served.values()) == len(results), (served, len(results))

    # each instance is a separate process on its own port (asked directly)
    ports = set()
    for k in range(3):
        r = http_request(p + k, "GET", "/pid", timeout=5)
        assert r.status == 200, r
        ports.add(r.json()["port"])
        g.seen_pids.add(r.json()["pid"])
    assert ports == {p, p + 1, p + 2}

    ups = log_lines(g, "scale up:")
    assert len(ups) == 2, f"two scale-up steps expected for the cold burst:\n" + "\n".join(ups)
    assert all("waiting" in ln for ln in ups), ups
    print(f"\n3 instances started {started_after:.2f} s after the burst began, all ready after "
          f"{all_ready_after:.2f} s; served per instance {served}")


# --------------------------------------------------------------------------
# 2. after a burst each instance stops on its idle timeout, never before it,
#    down to min_instances
# --------------------------------------------------------------------------

@pytest.mark.parametrize("min_instances", [0, 1])
def test_after_a_burst_instances_stop_on_idle_timeout_down_to_min(port_block, gateway,
                                                                  min_instances):
    # Deterministic (it was flaky): no instance has to be busy until a given
    # moment. The Watch records when each one was last seen busy, and the
    # check is that none stopped sooner than the timeout after that.
    timeout = 2
    p = port_block(3)
    svc = demo_service(port=p, max_instances=3, min_instances=min_instances,
                       target_concurrency=1, timeout=timeout, scale_up_delay=0,
                       scale_down_delay=600)
    g = gateway([svc], env={"DEMO_DELAY": "1"})
    if min_instances:
        wait_svc(g, lambda i: len(ready_insts(i)) == 1, 10, msg="the warm instance")

    with Watch(g) as watch:
        load = Load(g.port, 6, "/llm/slow?ms=300", stagger=0.05)
        load.start()
        try:
            info = wait_svc(g, lambda i: len(ready_insts(i)) == 3 and
                            all(x["served"] > 0 for x in i["instances"]), 10,
                            msg="3 ready instances, each serving")
            pids = {i["index"]: i["pid"] for i in info["instances"]}
        finally:
            results = load.stop()
        t_last = max(r[2] for r in results)   # the last response
        bad = [r for r in results if r[3] != 200]
        assert not bad, bad[:5]

        info = wait_svc(g, lambda i: len(i["instances"]) == min_instances, timeout + 5,
                        msg=f"down to {min_instances} instances")
        down_after = time.monotonic() - t_last
        stopped = [pid for pid in pids.values()
                   if not any(i["pid"] == pid for i in info["instances"])]
        assert len(stopped) == 3 - min_instances, (pids, info)
        # the Watch's own polls see it too (they run behind ours)
        wait_until(lambda: all(pid in watch.stopped for pid in stopped), 5 * SLACK,
                   msg=f"the watch to see {stopped} stopped")
        gaps = watch.idle_gaps()

    # nobody stopped before its timeout
    for pid in stopped:
        assert pid in gaps, f"pid {pid} was never seen busy and then stopping: {gaps}"
        assert gaps[pid] >= timeout - CLOCK_TOLERANCE, \
            f"pid {pid} stopped {gaps[pid]} s after it was last busy; timeout is {timeout} s: {gaps}"
    for idx, pid in pids.items():
        if pid in stopped:
            wait_until(lambda: not pid_alive(pid) and not port_listening(p + idx), 5 * SLACK,
                       msg=f"instance [{idx}] pid {pid} gone, port {p + idx} closed")
    idle_stops = log_lines(g, f"idle for {timeout} s")
    assert len(idle_stops) == 3 - min_instances, idle_stops

    if min_instances:
        # the last one stays past its timeout (its idle clock starts over),
        # and stays warm
        [kept] = info["instances"]
        assert kept["state"] == "ready", kept
        idle_rearmed(g, kept["pid"])
        assert pid_alive(kept["pid"])
        assert g.svc()["state"] == "ready"
        r = g.get("/llm/pid")
        assert r.status == 200 and r.json()["pid"] == kept["pid"], r
        assert r.header("X-Slurmgate-Cold-Start") is None, r.headers
    else:
        assert info["state"] == "stopped", info
    print(f"\nmin_instances={min_instances}: down to {min_instances} instance(s) "
          f"{down_after:.2f} s after the last response (timeout {timeout} s); "
          f"idle before each stop: {gaps}")


# --------------------------------------------------------------------------
# 3. min_instances: warm from start-up, all at once, and they stay
# --------------------------------------------------------------------------

def test_min_instances_start_together_and_stay_warm(port_block, gateway):
    timeout = 2
    p = port_block(3)
    svc = demo_service(port=p, max_instances=3, min_instances=2, timeout=timeout,
                       scale_down_delay=600)
    t0 = time.monotonic()
    g = gateway([svc], env={"DEMO_DELAY": "2"})
    # both start at once, before the first is ready (DEMO_DELAY 2 s)
    info = wait_svc(g, lambda i: len(i["instances"]) == 2, 1.0,
                    msg="2 instances starting at once (DEMO_DELAY 2 s)")
    assert not ready_insts(info), info
    info = wait_svc(g, lambda i: len(ready_insts(i)) == 2, 10, msg="2 warm instances")
    warm_after = time.monotonic() - t0
    assert sorted(i["index"] for i in info["instances"]) == [0, 1], info
    assert info["requests"] == 0 and info["starts"] == 2, info
    pids = sorted(i["pid"] for i in info["instances"])
    assert "min_instances is 2" in full_log(g), full_log(g)

    # past the idle timeout: the same two, ready, and no idle stop
    wait_until(lambda: g.svc()["idle_seconds_left"] is not None, 5 * SLACK, msg="idle clocks run")
    seen = []

    def rearmed():
        info = g.svc()
        assert sorted(i["pid"] for i in info["instances"]) == pids, info
        assert all(i["state"] == "ready" for i in info["instances"]), info
        seen.append(info["idle_seconds_left"])
        return len(seen) > 1 and seen[-1] > seen[-2] + 0.3

    wait_until(rearmed, (timeout * 2 + 2) * SLACK, msg="the idle clock to start over")
    assert not log_lines(g, "idle for"), full_log(g)

    # the first request is warm (no cold-start wait)
    r = g.get("/llm/pid")
    assert r.status == 200, r
    assert r.json()["pid"] in pids
    assert r.header("X-Slurmgate-Cold-Start") is None, r.headers
    assert g.svc()["starts"] == 2
    print(f"\n2 warm instances ready {warm_after:.2f} s after the gateway started")


# --------------------------------------------------------------------------
# 4. an instance killed under load
# --------------------------------------------------------------------------

def test_killed_instance_under_load_loses_only_its_in_flight_requests_and_comes_back(
        port_block, gateway):
    p = port_block(2)
    svc = demo_service(port=p, max_instances=2, min_instances=2, timeout=30,
                       scale_down_delay=600)
    g = gateway([svc])
    info = wait_svc(g, lambda i: len(ready_insts(i)) == 2, 10, msg="2 warm instances")

    load = Load(g.port, 4, lambda i, k: f"/llm/slow?ms=100&c={i}.{k}")
    load.start()
    try:
        # both under load
        wait_svc(g, lambda i: all(x["served"] >= 2 for x in i["instances"]), 10,
                 msg="both instances serving")
        t_read = time.monotonic()
        info = g.svc()
        victim = next(i for i in info["instances"] if i["index"] == 0)
        assert victim["state"] == "ready", info
        in_flight_at_kill = victim["in_flight"]
        t_kill0 = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        t_kill = time.monotonic()
        # the load goes on until the replacement is ready and has served
        info = wait_svc(g, lambda i: len(ready_insts(i)) == 2 and
                        all(x["pid"] != victim["pid"] for x in i["instances"]) and
                        all(x["served"] > 0 for x in i["instances"]), 10,
                        msg="a replacement for the killed instance, serving")
    finally:
        results = load.stop()

    fails = [r for r in results if r[3] != 200]
    # a request dispatched after the API read (and so not counted in its
    # in_flight) was started by a client after t_read (give 50 ms of slack
    # for the order in which the gateway's loop saw the two)
    late = [r for r in results if t_read - 0.05 <= r[1] <= t_kill]
    bound = in_flight_at_kill + len(late)
    print(f"\n{len(results)} requests, {len(fails)} failed; the killed instance had "
          f"{in_flight_at_kill} in flight (+{len(late)} started around the kill): bound {bound}")
    for f in fails:
        print(f"  failed: thread {f[0]} started {f[1] - t_kill:+.3f} s ended {f[2] - t_kill:+.3f} s "
              f"after the kill: {f[3]} {f[4][:200]!r}")
    assert len(fails) <= bound, f"{len(fails)} failures > {bound} in flight on the killed instance"
    for f in fails:
        assert f[1] <= t_kill and f[2] >= t_kill0, \
            f"a request not in flight at the kill failed: {f}"
    # requests after the kill all succeeded
    after = [r for r in results if r[1] > t_kill + 0.05]
    assert after and all(r[3] == 200 for r in after), [r for r in after if r[3] != 200][:5]

    # the instance was replaced (min_instances=2), and the replacement served
    new = next(i for i in info["instances"] if i["pid"] != victim["pid"] and i["index"] == 0)
    assert new["served"] > 0, info
    assert not pid_alive(victim["pid"])
    assert info["starts"] == 3, info
    assert "exited unexpectedly" in full_log(g), full_log(g)
    retries = log_lines(g, "retrying a request on another instance")
    print(f"gateway retried {len(retries)} request(s); replacement pid {new['pid']}")


# --------------------------------------------------------------------------
# 5. scale up after scale_up_delay, drain after scale_down_delay
# --------------------------------------------------------------------------

def test_scale_up_after_delay_then_drain_the_spare_instance(port_block, gateway):
    p = port_block(2)
    svc = demo_service(port=p, max_instances=2, min_instances=1, target_concurrency=2,
                       scale_up_delay=1, scale_down_delay=2, timeout=60)
    g = gateway([svc])
    wait_svc(g, lambda i: len(ready_insts(i)) == 1, 10, msg="the warm instance")

    # 5 requests at a time on one instance, target 2: scale up after 1 s
    load = Load(g.port, 5, "/llm/slow?ms=500", stagger=0.1)
    t0 = time.monotonic()
    load.start()
    try:
        wait_svc(g, lambda i: len(i["instances"]) == 2, 1 + 3, msg="scale up to 2")
        up_after = time.monotonic() - t0
        wait_svc(g, lambda i: len(ready_insts(i)) == 2, 5, msg="2 ready")
    finally:
        r1 = load.stop()
    assert all(r[3] == 200 for r in r1), [r for r in r1 if r[3] != 200][:5]
    assert up_after >= 0.9, f"scaled up {up_after:.2f} s into the load; scale_up_delay is 1 s"
    ups = log_lines(g, "scale up:")
    assert len(ups) == 2 and "above target" in ups[1], ups

    # 2 long requests, one on each instance: load 2 fits on one (target 2),
    # so after 2 s one drains: no new requests, and its request completes
    load = Load(g.port, 2, "/llm/slow?ms=3000")
    load.start()
    seen = []
    try:
        info = wait_svc(g, lambda i: any(x["state"] == "draining" for x in i["instances"]) or
                        len(i["instances"]) == 1, 2 + 4, msg="one instance draining")
        seen.append(states(info))
        draining = [x for x in info["instances"] if x["state"] == "draining"]
        info = wait_svc(g, lambda i: len(i["instances"]) == 1, 6, msg="the drained one stopped")
        seen.append(states(info))
    finally:
        r2 = load.stop()
    assert all(r[3] == 200 for r in r2), f"a request on the draining instance failed: {r2}"
    downs = log_lines(g, "scale down:")
    assert len(downs) == 1, downs
    assert draining, f"the drained instance had nothing in flight: {seen}"
    assert draining[0]["in_flight"] >= 1, draining
    left = g.svc()["instances"]
    assert len(left) == 1 and left[0]["state"] == "ready", left
    print(f"\nscaled up {up_after:.2f} s into the load; states {seen}; {downs[0]}")


# --------------------------------------------------------------------------
# 6. the retry of a request goes to another instance (the tried set)
# --------------------------------------------------------------------------

def test_retry_after_a_dead_kept_alive_connection_goes_to_another_instance(
        port_block, gateway, tmp_path):
    p = port_block(2)
    # The demo runs as a child of a shell that outlives it: the gateway does
    # not learn of the death from SIGCHLD (as with a Slurm job, where it
    # takes a squeue poll or health probes).
    script = base.write_script(tmp_path / "wrapped_demo.sh", (
        "#!/bin/sh\n"
        f'"{base.DEMO_BIN}" --port "$1" &\n'
        f'echo $! > "{tmp_path}/demo-$1.pid"\n'
        "wait $!\n"
        "exec sleep 600\n"))
    svc = demo_service(port=p, bash_file=str(script), max_instances=2, min_instances=2,
                       health_interval=60, timeout=60, scale_down_delay=600)
    g = gateway([svc])
    wait_svc(g, lambda i: len(ready_insts(i)) == 2, 10, msg="2 warm instances")

    def in_flight():
        return {i["index"]: i["in_flight"] for i in g.svc()["instances"]}

    # one long request occupies instance O
    busy = {}
    tb = threading.Thread(target=lambda: busy.setdefault(
        "r", http_request(g.port, "GET", "/llm/slow?ms=6000", timeout=20 * SLACK)), daemon=True)
    tb.start()
    fl = wait_until(lambda: (lambda f: f if sum(f.values()) == 1 else None)(in_flight()),
                    3 * SLACK, msg="the long request in flight")
    other = next(k for k, v in fl.items() if v == 1)
    victim = 1 - other
    # the victim (least loaded) answers one request: a kept-alive connection
    r = g.get("/llm/pid")
    assert r.status == 200 and r.json()["port"] == p + victim, r
    # ... and takes the next one on that connection
    res = {}
    tr = threading.Thread(target=lambda: res.setdefault(
        "r", http_request(g.port, "GET", "/llm/slow?ms=2000", timeout=20 * SLACK)), daemon=True)
    tr.start()
    wait_until(lambda: in_flight() == {victim: 1, other: 1}, 3 * SLACK,
               msg="one request in flight on each instance")
    child = int((tmp_path / f"demo-{p + victim}.pid").read_text())
    os.kill(child, signal.SIGKILL)
    tr.join(20 * SLACK)
    tb.join(20 * SLACK)
    assert busy["r"].status == 200, busy
    retries = log_lines(g, "retrying a request on another instance")
    print(f"\nretries: {retries}\nresult: {res.get('r')}")
    assert retries, full_log(g)
    # the request was retried; another instance was ready: it must succeed
    assert res["r"].status == 200, res["r"]
