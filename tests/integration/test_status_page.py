"""The status page in a real browser (headless Chromium from Debian, driven
over the DevTools protocol): it follows a cold start live from the event
stream, draws the history chart, its admin buttons send the token from the
password field (and show a 401 without it), and it says when the gateway is
gone. A screenshot is kept as build/test-artifacts/status-page.png.

Needs the Debian package `chromium` (apt-get install chromium).
"""
import json
import os
import re
import signal
import threading
import time

import pytest

from status_page_helpers import (ARTIFACTS, REPO, SLACK, Chromium, Gateway, chromium_bin,
                                 http_request, screenshot, wait_until)

TOKEN = "page-T0ken"
SVC = "document.querySelector('section.svc[data-service=\"demo\"]')"


EVIL = '<img src=x onerror="window.__xss=1">'
EVIL_ROUTE = '"><b class=x>route</b>'
EVIL_TEXT = '<script>window.__xss=2</script><i class=y>boom</i>'


def _svc(name, state, **kw):
    s = {"Name": name, "name": name, "route_name": name, "state": state, "launcher": "slurm",
         "started": state in ("starting", "ready"), "running": state == "ready", "reason": state,
         "in_flight": 0, "waiting": 0, "idle_seconds_left": None, "timeout": 600,
         "start_timeout": 900, "min_instances": 0, "max_instances": 2, "last_error": None,
         "requests": 0, "starts": 0, "start_failures": 0, "instances": []}
    s.update(kw)
    return s


def _inst(index, state, **kw):
    i = {"index": index, "state": state, "detail": state, "port": 8083, "in_flight": 0,
         "served": 0, "age_seconds": 5.0, "address": None, "pid": None, "job_id": None,
         "node": None, "time_left_seconds": None}
    i.update(kw)
    return i


FAKE_STATE = {"version": "9.9.9", "service_management": True, "services": [
    _svc("llm-slurm", "starting", route_name="llm_service", waiting=3, starts=1,
         reason="starting for 42.0 s: Slurm job 4242 pending (Resources)",
         instances=[_inst(0, "starting", detail="Slurm job 4242 pending (Resources)",
                          job_id="4242", age_seconds=42.0)]),
    _svc(EVIL, "failed", route_name=EVIL_ROUTE, reason="start failed: " + EVIL_TEXT,
         last_error="start script exited with status 3: " + EVIL_TEXT, start_failures=2),
    _svc("translation", "ready", route_name="translation_service", in_flight=2,
         idle_seconds_left=287.5, requests=5310, starts=3, reason="ready",
         instances=[_inst(0, "ready", job_id="4100", node="ml1", address="127.0.0.1:8057",
                          in_flight=2, served=5210, age_seconds=3900, time_left_seconds=7000,
                          detail="ready at 127.0.0.1:8057"),
                    _inst(1, "draining", job_id="4107", node="ml2", address="127.0.0.1:8058",
                          served=98, age_seconds=800, time_left_seconds=40,
                          detail="draining: idle")]),
]}


def _fake_history(now=1_700_000_000.0):
    """An hour of 10 s samples: a busy period, an idle gap (no samples: the
    gateway was down), then a second burst with two instances."""
    t, rps, inst = [], [], []
    for k in range(360):
        if 150 <= k < 170:
            continue
        t.append(now - 3590 + 10 * k)
        busy = 40 <= k < 140 or k >= 250
        rps.append(round((2.5 + (k % 7) * 0.6) if busy else 0.0, 2) * (2 if k >= 300 else 1))
        inst.append(0 if not busy and k < 40 else (2 if k >= 300 else 1))
    return {"t": t, "rps": rps, "instances": inst}


FAKE_HISTORY = {"translation": _fake_history(), "llm-slurm": {"t": [], "rps": [], "instances": []}}


def page_service(cdp):
    """What the page shows for the demo service (None before it is drawn)."""
    return cdp.eval("""(() => {
      const s = %s;
      if (!s) return null;
      const q = c => { const e = s.querySelector(c); return e ? e.textContent.trim() : null; };
      const shown = c => { const e = s.querySelector(c); return !!e && e.offsetParent !== null; };
      return {
        state: q('.state'), dataState: s.dataset.state, route: q('.route'), reason: q('.reason'),
        inFlight: q('.in-flight'), waiting: q('.waiting'), idle: q('.idle-left'),
        idleSeconds: s.querySelector('.idle-left').dataset.seconds,
        requests: q('.requests'), lastError: shown('.last-error') ? q('.last-error') : null,
        instances: [...s.querySelectorAll('tr.inst')].map(r => ({
          index: r.dataset.index, state: r.dataset.state, pid: r.querySelector('.pid').textContent,
          address: r.querySelector('.address').textContent, served: r.querySelector('.served').textContent,
          detail: r.querySelector('.detail').textContent})),
        chartPoints: +s.querySelector('svg.chart').getAttribute('data-points'),
        readyLine: !!s.querySelector('svg.chart path.ready-line'),
      };
    })()""" % SVC)


def wait_page_state(cdp, want, timeout, seen=None):
    """Poll until the page shows the service in one of the states `want`;
    record every state seen on the way in `seen`."""
    want = (want,) if isinstance(want, str) else tuple(want)

    def check():
        s = page_service(cdp)
        if s and seen is not None and (not seen or seen[-1] != s["state"]):
            seen.append(s["state"])
        return s if s and s["state"] in want else None
    return wait_until(check, timeout * SLACK, interval=0.05, msg=f"the page to show the state {want} "
                      f"(states seen: {seen})")


def admin_message(cdp):
    return cdp.eval("""(() => { const m = document.getElementById('admin-msg');
        return m.offsetParent === null ? null : {kind: m.dataset.kind, text: m.textContent}; })()""")


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def test_status_page_is_small_and_self_contained():
    """No CDN, fonts or scripts from elsewhere: the page must work air-gapped."""
    html = (REPO / "src" / "status.html").read_text()
    assert len(html.encode()) < 40 * 1024, len(html.encode())
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", html, re.I)
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html and "document.write" not in html
    assert "??" not in html, "a '??' would be a trigraph in the generated C string"


def test_status_page_in_headless_chromium(tmp_path):
    exe = chromium_bin()
    if not exe:
        pytest.fail("headless Chromium is needed for this test: apt-get install chromium")
    gw = Gateway(tmp_path, env={"DEMO_DELAY": "2"}, admin_token=TOKEN)
    browser = Chromium(tmp_path)
    cdp = None
    service_pids = set()
    holder = {}
    gw_rc = "not stopped"
    try:
        gw.start()
        # the page itself: one self-contained HTML document, small
        status, headers, body = gw.get("/")
        assert status == 200 and headers["Content-Type"].startswith("text/html"), status
        assert len(body) < 40 * 1024, len(body)
        assert gw.get("/status")[2] == body

        browser.start()
        cdp = browser.page()
        cdp.call("Page.enable")
        cdp.call("Runtime.enable")
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{gw.port}/")
        wait_until(lambda: cdp.eval("document.readyState") == "complete", 15 * SLACK, msg="the page to load")

        # live, from the event stream: stopped
        s = wait_page_state(cdp, "stopped", 10)
        assert s["route"] == "/llm", s
        assert "next request starts it" in s["reason"], s
        assert s["instances"] == [] and s["inFlight"] == "0" and s["waiting"] == "0", s
        assert cdp.eval("document.body.dataset.connected") == "true"
        assert cdp.eval("document.getElementById('banner').offsetParent === null"), "banner shown"
        assert cdp.eval("document.getElementById('mgmt').textContent") == "enabled"

        # a request cold-starts the service (held ~2 s): starting, then ready, no reload
        cdp.eval("window.__sameDocument = 42")

        def use():
            try:
                holder["resp"] = http_request(gw.port, "GET", "/llm/pid", timeout=30)
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                holder["error"] = e
        t = threading.Thread(target=use, daemon=True)
        t.start()
        seen = []
        s = wait_page_state(cdp, "starting", 6, seen)
        assert s["dataState"] == "starting"
        assert s["reason"].startswith("starting for"), s
        starting_waiting = s["waiting"]
        s = wait_page_state(cdp, "ready", 20, seen)
        t.join(20)
        assert not t.is_alive(), "the held request did not finish"
        assert "error" not in holder, holder.get("error")
        st, _, body = holder["resp"]
        assert st == 200, (st, body)
        pid = json.loads(body)["pid"]
        service_pids.add(pid)
        assert cdp.eval("window.__sameDocument") == 42, "the page was reloaded"
        assert seen[-2:] == ["starting", "ready"], seen
        assert starting_waiting in ("0", "1"), starting_waiting

        # the instance row, the counters and the idle countdown
        s = wait_until(lambda: (lambda v: v if v["instances"] and v["requests"] == "1"
                                and v["instances"][0]["served"] == "1" else None)(page_service(cdp)),
                       5 * SLACK, msg="the instance row with one request served")
        inst = s["instances"][0]
        assert inst["state"] == "ready" and inst["index"] == "0", inst
        assert inst["pid"] == str(pid), (inst, pid)
        assert inst["address"] == f"127.0.0.1:{gw.svc_port}", inst
        idle0 = float(s["idleSeconds"])
        assert 0 < idle0 <= 60, s
        time.sleep(1.2)
        idle1 = float(page_service(cdp)["idleSeconds"])
        assert idle1 < idle0, (idle0, idle1)

        # the chart: the gateway samples every 10 s; the page fetches every 10 s
        wait_until(lambda: page_service(cdp)["chartPoints"] >= 1, 25 * SLACK, interval=0.25,
                   msg="the history chart to have a sample")
        assert page_service(cdp)["readyLine"]

        # admin without a token: the page shows the 401, nothing stops
        assert cdp.eval("document.getElementById('admin-token').type") == "password"
        cdp.eval(SVC + ".querySelector('.btn-stop').click()")
        msg = wait_until(lambda: admin_message(cdp), 5 * SLACK, msg="the admin error message")
        assert msg["kind"] == "error" and "401" in msg["text"], msg
        assert gw.service()["state"] == "ready"

        # the screenshot: ready, chart, the 401 message
        shot = screenshot(cdp, ARTIFACTS / "status-page.png")
        assert shot.stat().st_size > 10000, shot

        # with the token (typed into the password field, kept in sessionStorage)
        cdp.eval("""(() => { const i = document.getElementById('admin-token');
                   i.focus(); i.value = %s; i.dispatchEvent(new Event('input')); })()""" % json.dumps(TOKEN))
        assert cdp.eval("sessionStorage.getItem('slurmgate.adminToken')") == TOKEN
        cdp.eval(SVC + ".querySelector('.btn-stop').click()")
        msg = wait_until(lambda: (lambda m: m if m and m["kind"] == "ok" else None)(admin_message(cdp)),
                         5 * SLACK, msg="the Stop to succeed")
        assert "202" in msg["text"], msg
        s = wait_page_state(cdp, ("stopping", "stopped"), 10)
        s = wait_page_state(cdp, "stopped", 15)
        assert s["instances"] == [], s
        wait_until(lambda: not pid_alive(pid), 10 * SLACK, msg=f"the service process {pid} to exit")

        # global management buttons, with the token
        cdp.eval("document.getElementById('btn-disable').click()")
        wait_until(lambda: cdp.eval("document.getElementById('mgmt').textContent") == "disabled", 5 * SLACK,
                   msg="management shown as disabled")
        assert json.loads(gw.get("/info")[2])["service_management"] is False
        wait_until(lambda: "disabled" in page_service(cdp)["reason"], 5 * SLACK, msg="the reason to follow")
        cdp.eval("document.getElementById('btn-enable').click()")
        wait_until(lambda: cdp.eval("document.getElementById('mgmt').textContent") == "enabled", 5 * SLACK,
                   msg="management shown as enabled")
        # the token survives a reload of the tab (sessionStorage)
        cdp.call("Page.reload")
        wait_until(lambda: cdp.eval("document.getElementById('admin-token').value") == TOKEN, 10 * SLACK,
                   msg="the token restored from sessionStorage")
        wait_page_state(cdp, "stopped", 10)
        screenshot(cdp, ARTIFACTS / "status-page-stopped.png")

        # no script errors and nothing fetched from anywhere but the gateway
        cdp.drain(0.3)
        errors = [e["params"] for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"]
        assert not errors, errors
        origins = cdp.eval("[...new Set(performance.getEntriesByType('resource')"
                           ".map(e => new URL(e.name).origin))]")
        assert origins in ([], [f"http://127.0.0.1:{gw.port}"]), origins

        # the gateway goes away: the disconnected banner shows
        gw_rc = gw.stop()
        wait_until(lambda: cdp.eval("document.getElementById('banner').offsetParent !== null"), 10 * SLACK,
                   msg="the disconnected banner")
        assert cdp.eval("document.body.dataset.connected") == "false"
        screenshot(cdp, ARTIFACTS / "status-page-disconnected.png", full_page=False)

        # ... and the page reconnects by itself when it is back (same port)
        gw.start()
        wait_until(lambda: cdp.eval("document.body.dataset.connected === 'true' && "
                                    "document.getElementById('banner').offsetParent === null"), 15 * SLACK,
                   msg="the page to reconnect to the restarted gateway")
        wait_page_state(cdp, "stopped", 5)
        gw_rc2 = gw.stop()
        assert gw_rc2 == 0, f"slurmgate exit code after SIGTERM (restarted): {gw_rc2}\n{gw.log()}"
        wait_until(lambda: cdp.eval("document.body.dataset.connected") == "false", 10 * SLACK,
                   msg="the page to notice the gateway is gone again")

        # a drawn state (no gateway sends events any more): Slurm pending
        # reasons, several instances, and hostile strings shown as text only
        cdp.eval("window.slurmgateStatus.render(%s)" % json.dumps(FAKE_STATE))
        cdp.eval("window.slurmgateStatus.setHistory(%s)" % json.dumps(FAKE_HISTORY))
        shown = cdp.eval("""(() => {
          const cards = [...document.querySelectorAll('section.svc')];
          const by = n => cards.find(c => c.dataset.service === n);
          const slurm = by('llm-slurm'), evil = by(%s), tr = by('translation');
          return {
            names: cards.map(c => c.dataset.service),
            pending: slurm.querySelector('.pending').textContent,
            pendingShown: slurm.querySelector('.pending').offsetParent !== null,
            slurmJob: slurm.querySelector('tr.inst .job-id').textContent,
            evilName: evil.querySelector('.name').textContent,
            evilRoute: evil.querySelector('.route').textContent,
            evilReason: evil.querySelector('.reason').textContent,
            evilError: evil.querySelector('.last-error').textContent,
            evilState: evil.querySelector('.state').textContent,
            injected: document.querySelectorAll('main img, main script, main b.x, main i.y').length,
            xss: window.__xss === undefined ? null : window.__xss,
            chartPoints: +tr.querySelector('svg.chart').dataset.points,
            chartPaths: tr.querySelectorAll('svg.chart path').length,
            trRows: [...tr.querySelectorAll('tr.inst')].map(r => [r.dataset.state,
                     r.querySelector('.node').textContent, r.querySelector('.time-left').textContent]),
          };
        })()""" % json.dumps(EVIL))
        assert shown["names"] == ["llm-slurm", EVIL, "translation"], shown
        assert shown["pendingShown"] and "4242" in shown["pending"] and "Resources" in shown["pending"], shown
        assert shown["slurmJob"] == "4242", shown
        assert shown["evilName"] == EVIL and shown["evilRoute"] == "/" + EVIL_ROUTE, shown
        assert shown["evilReason"] == "start failed: " + EVIL_TEXT, shown
        assert EVIL_TEXT in shown["evilError"] and shown["evilState"] == "failed", shown
        assert shown["injected"] == 0 and shown["xss"] is None, shown
        assert shown["trRows"][0][:2] == ["ready", "ml1"] and shown["trRows"][0][2] == "1h 56m", shown
        assert shown["trRows"][1][0] == "draining", shown
        assert shown["chartPoints"] == len(FAKE_HISTORY["translation"]["t"]), shown
        assert shown["chartPaths"] == 3, shown
        screenshot(cdp, ARTIFACTS / "status-page-slurm.png")
    except BaseException:
        # shown by pytest with the failure
        print(f"--- gateway log ---\n{gw.log()}\n--- chromium log ---\n{browser.log()}")
        if cdp is not None:
            try:
                screenshot(cdp, ARTIFACTS / "status-page-failure.png", full_page=False)
            except Exception:  # noqa: BLE001 - best effort
                pass
        raise
    finally:
        if cdp is not None:
            try:
                cdp.close()
            except OSError:
                pass
        browser.stop()
        rc = gw.stop()
        if gw_rc == "not stopped":
            gw_rc = rc
        for p in service_pids:
            if pid_alive(p):
                os.kill(p, signal.SIGKILL)
    assert gw_rc == 0, f"slurmgate exit code after SIGTERM: {gw_rc}\n{gw.log()}"


def _controls(cdp, name):
    return cdp.eval("""(() => {
      const s = document.querySelector('section.svc[data-service=%s]');
      const shown = e => !!e && e.offsetParent !== null;
      return {start: s.querySelector('.btn-start').disabled, stop: s.querySelector('.btn-stop').disabled,
              reason: s.querySelector('.reason').textContent,
              lastError: shown(s.querySelector('.last-error')) ? s.querySelector('.last-error').textContent : null,
              tokenBox: shown(document.querySelector('.admin')),
              enable: document.getElementById('btn-enable').disabled,
              disable: document.getElementById('btn-disable').disabled};
    })()""" % json.dumps(name))


def test_status_page_controls_follow_the_state(tmp_path):
    """Issue 12 problem 8: Start and Stop were both always enabled, a failed
    card showed its error twice, and the admin-token box showed when no
    token is configured."""
    if not chromium_bin():
        pytest.fail("headless Chromium is needed for this test: apt-get install chromium")
    gw = Gateway(tmp_path)   # no admin_token
    browser = Chromium(tmp_path)
    cdp = None
    try:
        gw.start()
        assert json.loads(gw.get("/api/services")[2])["admin_token_required"] is False
        browser.start()
        cdp = browser.page()
        cdp.call("Runtime.enable")
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{gw.port}/")
        wait_page_state(cdp, "stopped", 10)
        c = _controls(cdp, "demo")
        assert c["tokenBox"] is False, c            # nothing to type: no token configured
        assert c["start"] is False and c["stop"] is True, c   # stopped: Start only
        assert c["enable"] is True and c["disable"] is False, c   # management on: Disable only
        gw.stop()
        wait_until(lambda: cdp.eval("document.body.dataset.connected") == "false", 10 * SLACK,
                   msg="the page to notice the gateway is gone")
        err = "start script exited with status 3: CUDA out of memory"
        for state, start_disabled, stop_disabled in (("ready", True, False), ("starting", True, False),
                                                     ("failed", False, True), ("stopping", True, True)):
            fake = {"version": "9.9.9", "service_management": False, "admin_token_required": True,
                    "services": [_svc("x", state, route_name="x",
                                      reason=("start failed: " + err) if state == "failed" else state,
                                      last_error=err)]}
            cdp.eval("window.slurmgateStatus.render(%s)" % json.dumps(fake))
            c = _controls(cdp, "x")
            assert (c["start"], c["stop"]) == (start_disabled, stop_disabled), (state, c)
            assert c["tokenBox"] is True, c
            assert c["enable"] is False and c["disable"] is True, c
            if state == "failed":
                assert err in c["reason"] and c["lastError"] is None, c   # said once
            else:
                assert c["lastError"] and err in c["lastError"], c          # an earlier failure
    finally:
        if cdp is not None:
            try:
                cdp.close()
            except OSError:
                pass
        browser.stop()
        gw.stop()


def test_chromium_leaves_nothing_in_tmp(tmp_path):
    """Every Chromium these tests started left its ProcessSingleton's socket
    directory (org.chromium.Chromium.XXXXXX, made in its TMPDIR) in /tmp: a
    TERMed Chromium does not remove it; 300 of them had piled up. It goes to
    a TMPDIR of the browser's own now, which stop() removes once none of its
    process group is left."""
    if not chromium_bin():
        pytest.fail("headless Chromium is needed for this test: apt-get install chromium")
    browser = Chromium(tmp_path)
    try:
        browser.start()
        sock = (browser.profile / "SingletonSocket").resolve()
        assert sock.exists(), sock
        pgid = browser.proc.pid
    finally:
        browser.stop()
    assert not sock.parent.exists(), f"Chromium's socket directory {sock.parent} left behind"
    try:
        os.killpg(pgid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "a process of Chromium's group outlived stop()"
