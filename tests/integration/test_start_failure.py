"""A start that fails (the script exits, or no healthy answer within
start_timeout) answers every held request with 502 + Retry-After naming the
cause (a failure, not the 503 "not yet" that Hugging Face's clients resend
at once without end); the next request tries again."""
import threading
import time

from conftest import (DEMO_SH, SLACK, demo_service, http_request, service_gone, wait_until,
                      write_script)


def assert_retry_after(r):
    ra = r.header("Retry-After")
    assert ra is not None, f"no Retry-After on {r.status}: {dict(r.headers)}"
    assert ra.strip().isdigit() and int(ra) >= 1, ra


def test_failing_start_script_gives_502_naming_exit_status_and_stderr(gateway):
    g = gateway(env={"DEMO_FAIL_EXIT": "3"})
    r = g.get("/llm/generate", timeout=10)
    assert r.status == 502, r
    assert_retry_after(r)
    err = r.json()["error"]
    assert "exited with status 3" in err, err
    assert "demo: simulated failure" in err, err
    assert err.startswith("start script exited with status 3; its output ends: demo: simulated failure"), err

    info = g.svc()
    assert info["starts"] == 1 and info["start_failures"] == 1, info
    assert info["state"] == "failed", info
    assert "exited with status 3" in (info["last_error"] or ""), info
    chk = g.get("/check_llm").json()
    assert chk["running"] is False and "exited with status 3" in chk["reason"], chk


def test_next_request_after_a_failed_start_starts_again(gateway):
    g = gateway(env={"DEMO_FAIL_EXIT": "3"})
    r1 = g.get("/llm/health")
    assert r1.status == 502, r1
    assert g.svc()["starts"] == 1
    r2 = g.get("/llm/health")
    assert r2.status == 502, r2
    assert "exited with status 3" in r2.json()["error"]
    assert_retry_after(r2)
    info = g.svc()
    assert info["starts"] == 2, f"the second request did not start the service again: {info}"
    assert info["start_failures"] == 2, info


def test_recovers_when_the_cause_of_the_failed_start_is_gone(gateway, tmp_path):
    marker = tmp_path / "failed-once"
    script = write_script(tmp_path / "flaky.sh", f"""#!/bin/sh
if [ ! -e '{marker}' ]; then
    touch '{marker}'
    echo "flaky: model weights missing" >&2
    exit 3
fi
exec '{DEMO_SH}' "$@"
""")
    g = gateway([demo_service(bash_file=str(script))])
    r = g.get("/llm/health")
    assert r.status == 502, r
    assert "exited with status 3; its output ends: flaky: model weights missing" in r.json()["error"], r
    assert_retry_after(r)

    r = g.get("/llm/pid")
    assert r.status == 200, r
    g.seen_pids.add(r.json()["pid"])
    info = g.svc()
    assert info["starts"] == 2 and info["state"] == "ready", info
    chk = g.get("/check_llm").json()
    assert chk["running"] is True, chk


def test_every_held_request_gets_the_start_failure(gateway, tmp_path):
    # fails after 1 s, so that all requests are held when it does
    script = write_script(tmp_path / "slowfail.sh", """#!/bin/sh
sleep 1
echo "slowfail: CUDA out of memory" >&2
exit 3
""")
    g = gateway([demo_service(bash_file=str(script))])
    results = []
    lock = threading.Lock()

    def one():
        r = http_request(g.port, "GET", "/llm/health", timeout=15 * SLACK)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20 * SLACK)
    assert len(results) == 10
    for r in results:
        assert r.status == 502, r
        assert_retry_after(r)
        assert "exited with status 3; its output ends: slowfail: CUDA out of memory" in r.json()["error"], r
    assert g.svc()["starts"] == 1


def test_start_timeout_exceeded_gives_502_naming_start_timeout(gateway):
    svc = demo_service(start_timeout=1)
    g = gateway([svc], env={"DEMO_DELAY": "30"})
    pids = []

    def grab_pid():
        for i in g.svc()["instances"]:
            if i.get("pid"):
                pids.append(i["pid"])
                return True
        return False

    holder = {}
    t = threading.Thread(target=lambda: holder.setdefault(
        "r", http_request(g.port, "GET", "/llm/health", timeout=15 * SLACK)))
    t0 = time.monotonic()
    t.start()
    wait_until(grab_pid, 2 * SLACK, msg="the instance's pid in /api/services")
    t.join(15 * SLACK)
    took = time.monotonic() - t0
    r = holder["r"]
    assert r.status == 502, r
    assert_retry_after(r)
    assert "start_timeout" in r.json()["error"], r
    assert 0.8 <= took <= 4 * SLACK, f"answered after {took:.2f} s with start_timeout 1"

    # the process that never became healthy is stopped
    wait_until(lambda: service_gone(pids[0], svc["local_port"]), (svc["stop_grace"] + 3) * SLACK,
               msg=f"pid {pids[0]} gone")
    info = g.svc()
    assert info["start_failures"] == 1, info
    assert "start_timeout" in (info["last_error"] or ""), info


def test_start_script_removed_after_load_gives_502_not_a_crash(gateway, tmp_path):
    script = write_script(tmp_path / "gone.sh", f"#!/bin/sh\nexec '{DEMO_SH}' \"$@\"\n")
    g = gateway([demo_service(bash_file=str(script))])
    script.unlink()
    r = g.get("/llm/health")
    assert r.status == 502, r
    assert_retry_after(r)
    assert "gone.sh" in r.json()["error"], r
    assert g.get("/api/health").status == 200
