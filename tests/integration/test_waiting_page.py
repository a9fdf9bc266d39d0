"""The page a browser waits on while its service starts (issue 12 problem
7), in headless Chromium: styled like the status page and self-contained,
never showing the service's internal address, with a link to the status
page, following the start live and landing on the service once it is ready.
A screenshot is kept as build/test-artifacts/waiting-page.png."""
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

