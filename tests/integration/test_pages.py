"""The pages of issue 12 in headless Chromium: the page a browser waits on
while its service starts (problem 7: styled like the status page and
self-contained, never showing the service's internal address, with a link
to the status page, following the start live and landing on the service
once it is ready), the status page of a gateway whose state is not public
(problem 10: it asks for a key) and its log panels. Screenshots are kept in
build/test-artifacts/."""
import json

import pytest

from status_page_helpers import ARTIFACTS, SLACK, Chromium, Gateway, chromium_bin, screenshot, wait_until

HTML = {"Accept": "text/html,application/xhtml+xml"}


def test_waiting_page_is_styled_hides_the_address_and_links_the_status_page(tmp_path):
    if not chromium_bin():
        pytest.fail("headless Chromium is needed for this test: apt-get install chromium")
    gw = Gateway(tmp_path, env={"DEMO_DELAY": "5"})
    browser = Chromium(tmp_path)
    cdp = None
    internal = None
    try:
        gw.start()
        internal = f"127.0.0.1:{gw.svc_port}"
        # the browser's first request starts the service
        st, headers, body = gw.get("/llm/health", headers=HTML)
        assert st == 503 and headers["Content-Type"].startswith("text/html"), (st, body[:200])

        # while it is probed, the gateway's reason names the internal address ...
        def probing():
            svc = gw.service()
            return svc if internal in svc["reason"] else None
        wait_until(probing, 10 * SLACK, interval=0.05, msg="the reason to name the address")
        # ... the page does not
        st, headers, body = gw.get("/llm/health", headers=HTML)
        page = body.decode()
        assert st == 503 and headers.get("Retry-After"), st
        assert internal not in page and str(gw.svc_port) not in page, page
        assert "waiting for the service to answer" in page, page
        assert 'href="/status"' in page, page
        assert "<style>" in page, page

        browser.start()
        cdp = browser.page()
        cdp.call("Page.enable")
        cdp.call("Runtime.enable")
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{gw.port}/llm/health")
        wait_until(lambda: cdp.eval("document.readyState") == "complete" and
                   cdp.eval("!!document.querySelector('section.card')"), 15 * SLACK,
                   msg="the waiting page to load")
        shown = cdp.eval("""(() => {
          const card = document.querySelector('section.card');
          const link = document.querySelector('a.status-link');
          const cs = getComputedStyle(card), bs = getComputedStyle(document.body);
          return {text: document.body.innerText, title: document.title, state: card.dataset.state,
                  link: link && link.href, radius: cs.borderTopLeftRadius, bg: bs.backgroundColor,
                  font: bs.fontFamily, header: getComputedStyle(document.querySelector('header')).backgroundColor,
                  reason: document.querySelector('.reason').textContent};
        })()""")
        assert "demo" in shown["title"] and "demo" in shown["text"], shown
        assert shown["state"] in ("starting", "stopped"), shown
        assert internal not in shown["text"], shown
        assert shown["link"] == f"http://127.0.0.1:{gw.port}/status", shown
        assert shown["radius"] == "9px" and shown["bg"] == "rgb(243, 245, 248)", shown
        assert "serif" not in shown["font"].replace("sans-serif", ""), shown
        assert shown["header"] == "rgb(24, 32, 44)", shown
        assert shown["reason"].startswith("starting for"), shown
        screenshot(cdp, ARTIFACTS / "waiting-page.png", full_page=False)

        # nothing fetched from anywhere but the gateway
        origins = cdp.eval("[...new Set(performance.getEntriesByType('resource')"
                           ".map(e => new URL(e.name).origin))]")
        assert origins in ([], [f"http://127.0.0.1:{gw.port}"]), origins

        # it reloads itself and lands on the service once it is ready
        def landed():
            try:
                txt = cdp.eval("document.body ? document.body.innerText : ''")
            except RuntimeError:   # mid-navigation
                return None
            try:
                return json.loads(txt)
            except ValueError:
                return None
        health = wait_until(landed, 20 * SLACK, interval=0.2, msg="the page to become the service")
        assert health, health

        # the status link leads to the status page
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{gw.port}/status")
        wait_until(lambda: cdp.eval("document.title") == "slurmgate status", 10 * SLACK,
                   msg="the status page")
        cdp.drain(0.2)
        errors = [e["params"] for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"]
        assert not errors, errors
    except BaseException:
        print(f"--- gateway log ---\n{gw.log()}\n--- chromium log ---\n{browser.log()}")
        raise
    finally:
        if cdp is not None:
            try:
                cdp.close()
            except OSError:
                pass
        browser.stop()
        rc = gw.stop()
    assert rc == 0, f"slurmgate exit code after SIGTERM: {rc}\n{gw.log()}"



def _open(browser, url):
    cdp = browser.page()
    cdp.call("Page.enable")
    cdp.call("Runtime.enable")
    cdp.call("Page.navigate", url=url)
    wait_until(lambda: cdp.eval("document.readyState") == "complete", 15 * SLACK, msg="the page to load")
    return cdp


def test_status_page_asks_for_a_key_when_the_state_is_not_public(tmp_path):
    """public_status false: the page cannot read the state without a key; it
    says so, shows the key box, and with a key typed in it goes live."""
    if not chromium_bin():
        pytest.fail("headless Chromium is needed for this test: apt-get install chromium")
    key = "page-key-0123456789"
    gw = Gateway(tmp_path, api_keys=[{"key": key}], public_status=False)
    browser = Chromium(tmp_path)
    cdp = None
    try:
        gw.start()
        browser.start()
        cdp = _open(browser, f"http://127.0.0.1:{gw.port}/status")

        def asks():
            v = cdp.eval("""(() => ({box: document.querySelector('header .admin').offsetParent !== null,
                label: document.getElementById('token-label').textContent,
                empty: document.getElementById('empty').textContent,
                cards: document.querySelectorAll('section.svc').length}))()""")
            return v if v["box"] and "key" in v["empty"] else None
        v = wait_until(asks, 10 * SLACK, interval=0.1, msg="the page to ask for a key")
        assert v["cards"] == 0 and "API key" in v["label"], v
        cdp.eval("""(() => { const i = document.getElementById('admin-token');
                   i.focus(); i.value = %s; i.dispatchEvent(new Event('input')); })()""" % json.dumps(key))
        wait_until(lambda: cdp.eval("document.querySelectorAll('section.svc').length") == 1 and
                   cdp.eval("document.body.dataset.connected") == "true", 10 * SLACK, interval=0.1,
                   msg="the page to show the service with the key")
        assert cdp.eval("document.querySelector('section.svc').dataset.service") == "demo"
        screenshot(cdp, ARTIFACTS / "status-page-key.png", full_page=False)
        cdp.drain(0.2)
        errors = [e["params"] for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"]
        assert not errors, errors
    except BaseException:
        print(f"--- gateway log ---\n{gw.log()}\n--- chromium log ---\n{browser.log()}")
        raise
    finally:
        if cdp is not None:
            try:
                cdp.close()
            except OSError:
                pass
        browser.stop()
        rc = gw.stop()
    assert rc == 0, f"slurmgate exit code after SIGTERM: {rc}\n{gw.log()}"


def test_status_page_log_panel_follows_the_service_output(tmp_path):
    """A collapsible log panel per card: opened, it shows the tail of the
    service's stdout/stderr and follows what comes next."""
    if not chromium_bin():
        pytest.fail("headless Chromium is needed for this test: apt-get install chromium")
    script = tmp_path / "ticker.sh"
    script.write_text('#!/bin/sh\necho "model loaded <b>bold</b>" >&2\n'
                      '( i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.2; done ) &\n'
                      'exec "$DEMO" "$@"\n')
    script.chmod(0o755)
    from status_page_helpers import DEMO_SH
    gw = Gateway(tmp_path, env={"DEMO": str(DEMO_SH)})
    gw.config["Services"][0]["bash_file"] = str(script)
    gw.config_path.write_text(json.dumps(gw.config, indent=2))
    browser = Chromium(tmp_path)
    cdp = None
    try:
        gw.start()
        st, _, _ = gw.get("/llm/health", timeout=20)
        assert st == 200, st
        browser.start()
        cdp = _open(browser, f"http://127.0.0.1:{gw.port}/status")
        card = "document.querySelector('section.svc[data-service=\"demo\"]')"
        wait_until(lambda: cdp.eval(f"!!{card}"), 10 * SLACK, msg="the card")
        assert cdp.eval(f"{card}.querySelector('details.logs').open") is False   # collapsed at first
        cdp.eval(f"{card}.querySelector('details.logs summary').click()")

        def text():
            return cdp.eval(f"{card}.querySelector('.log-text').textContent")
        t0 = wait_until(lambda: (lambda t: t if "tick 2" in t else None)(text()), 10 * SLACK, interval=0.1,
                        msg="the log panel to show the output")
        assert "[0] model loaded <b>bold</b>" in t0, t0          # text, not markup
        assert cdp.eval(f"{card}.querySelectorAll('.log-text b').length") == 0
        n0 = max(int(ln.split()[-1]) for ln in t0.splitlines() if " tick " in ln)
        wait_until(lambda: f"tick {n0 + 5}" in text(), 10 * SLACK, interval=0.1,
                   msg="the panel to follow new lines")
        screenshot(cdp, ARTIFACTS / "status-page-logs.png")
        cdp.eval(f"{card}.querySelector('details.logs summary').click()")   # closed: the stream stops
        cdp.drain(0.2)
        errors = [e["params"] for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"]
        assert not errors, errors
    except BaseException:
        print(f"--- gateway log ---\n{gw.log()}\n--- chromium log ---\n{browser.log()}")
        raise
    finally:
        if cdp is not None:
            try:
                cdp.close()
            except OSError:
                pass
        browser.stop()
        rc = gw.stop()
    assert rc == 0, f"slurmgate exit code after SIGTERM: {rc}\n{gw.log()}"
