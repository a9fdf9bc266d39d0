"""Local start scripts as users write them, at their worst: each test is
named after the bug it found."""
import time

from conftest import DEMO_SH, SLACK, demo_service, write_script


def test_stderr_flood_starves_the_event_loop(gateway, tmp_path):
    """A service that writes its output as fast as it can (a debug log, a
    progress bar without newlines) must not take the gateway with it: the
    reader of its pipe gives the loop back after a bounded slice, and the
    writer waits (the pipe's backpressure)."""
    script = write_script(tmp_path / "chatty.sh", f"""#!/bin/sh
cat /dev/zero >&2 &
exec '{DEMO_SH}' "$@"
""")
    g = gateway([demo_service(bash_file=str(script))])
    r = g.get("/llm/health", timeout=20)
    assert r.status == 200, r
    worst = 0.0
    t_end = time.monotonic() + 3
    n = 0
    while time.monotonic() < t_end:
        r = g.get("/api/health", timeout=20)
        assert r.status == 200, r
        worst = max(worst, r.elapsed)
        n += 1
    print(f"{n} requests, worst {worst * 1000:.0f} ms")
    assert worst < 0.5 * SLACK, f"the gateway's own endpoint took {worst:.2f} s during the flood"
    r = g.get("/llm/pid", timeout=20)
    assert r.status == 200, r
