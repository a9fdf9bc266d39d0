"""Issue 9: access control at the gateway.

- CSRF: state-changing endpoints (/demand_x, the three service-management
  endpoints, POST /api/services/x/start|stop) refuse a request that a browser
  made for another site: Sec-Fetch-Site cross-site/same-site, or an Origin
  (else Referer) naming another host than Host. Scripts and curl send none
  of these and keep working, as the seed's GET endpoints always did. This is
  the check Django's CsrfViewMiddleware and Go's net/http CrossOriginProtection
  make; nginx has no built-in equivalent, so the reference for the headers is
  the Fetch Metadata recommendation.
- allowed_hosts: any other Host gets 421, against DNS rebinding (nginx:
  server_name with a default server that refuses).
- CSP, X-Frame-Options, nosniff and Referrer-Policy on every page and error
  the gateway answers itself.
- trusted_proxies: X-Forwarded-For/-Proto/-Host from other peers are
  replaced, not passed on (nginx's real_ip module: set_real_ip_from).
- Authorization is stripped before forwarding unless the service sets
  forward_authorization (Envoy's ext_authz and oauth2 filters forward no
  credentials by default).
"""
import pytest

from conftest import demo_service, raw_exchange, status_of

EVIL = "http://evil.example"


def state_changing(g):
    """(method, path) of every state-changing endpoint."""
    return [("GET", "/disable_service_management"),
            ("GET", "/kill_disable_service_management"),
            ("GET", "/enable_service_management"),
            ("GET", "/demand_llm"),
            ("POST", "/api/services/demo/start"),
            ("POST", "/api/services/demo/stop")]


# --------------------------------------------------------------------------
# finding 9: CSRF
# --------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": EVIL},
    {"Origin": "null"},
    {"Referer": EVIL + "/page.html"},
], ids=["sec-fetch-cross", "sec-fetch-same-site", "origin", "origin-null", "referer"])
def test_finding9_cross_site_requests_to_state_changing_endpoints_are_refused(gateway, headers):
    g = gateway()
    for method, path in state_changing(g):
        h = dict(headers)
        if method == "POST":
            h["Content-Type"] = "application/x-www-form-urlencoded"   # a plain HTML form
        r = g.request(method, path, body=b"x=1" if method == "POST" else None, headers=h)
        assert r.status == 403, (method, path, headers, r)
        assert "cross-site" in r.json()["error"], r
    assert g.svc()["starts"] == 0, "a cross-site request started the service"
    assert g.get("/info").json().get("service_management", True) is not False


def test_finding9_scripts_curl_and_same_origin_pages_still_work(gateway):
    g = gateway()
    host = f"127.0.0.1:{g.port}"
    # curl and scripts: no Origin, no Sec-Fetch-Site
    assert g.get("/disable_service_management").status == 200
    assert g.get("/enable_service_management").status == 200
    # the status page (same origin) starting and stopping a service
    for h in ({"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"},
              {"Origin": f"http://{host}"},
              {"Sec-Fetch-Site": "none"}):
        r = g.post("/api/services/demo/start", headers=h)
        assert r.status == 202, (h, r)
    # behind a proxy that sends "Host: $host" (no port), as examples/nginx.conf does
    r = g.post("/api/services/demo/start", headers={"Origin": "https://gw.example:8443",
                                                     "Host": "gw.example"})
    assert r.status == 202, r
    r = g.post("/api/services/demo/start", headers={"Origin": "https://gw.example.evil:8443",
                                                     "Host": "gw.example"})
    assert r.status == 403, r
    g.wait_state("ready")
    assert g.get("/demand_llm").status == 200
    g.record_pids()


def test_json_api_changes_state_only_with_post(gateway):
    g = gateway()
    for path in ("/api/services/demo/start", "/api/services/demo/stop"):
        r = g.get(path)
        assert r.status == 405, (path, r)
    assert g.svc()["starts"] == 0


def test_finding9_allowed_hosts_refuse_dns_rebinding(gateway):
    g = gateway(allowed_hosts=["127.0.0.1", "gw.example:8443"])
    r = g.get("/info", headers={"Host": "attacker.example"})
    assert r.status == 421, r
    assert "allowed_hosts" in r.json()["error"]
    r = g.get("/llm/echo", headers={"Host": "attacker.example"})
    assert r.status == 421, r
    assert g.get("/info", headers={"Host": "gw.example:9999"}).status == 421
    assert g.get("/info", headers={"Host": "GW.example:8443"}).status == 200
    assert g.get("/info").status == 200          # 127.0.0.1:<port>
    raw = raw_exchange(g.port, b"GET /info HTTP/1.0\r\n\r\n")
    assert status_of(raw) == 421, raw[:200]
    assert g.svc()["starts"] == 0


def test_allowed_hosts_and_trusted_proxies_are_validated(gateway, tmp_path):
    from conftest import Gateway, run_check
    g = Gateway(tmp_path, [demo_service()], name="bad",
                trusted_proxies=["10.0.0.0/33", "not-an-address", "::1"],
                allowed_hosts=["a b", ""])
    r = run_check(g.config_path)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "$.trusted_proxies[0]" in out and "$.trusted_proxies[1]" in out, out
    assert "trusted_proxies[2]" not in out, out
    assert "$.allowed_hosts[0]" in out and "$.allowed_hosts[1]" in out, out


def sec_headers_ok(headers, html):
    assert headers.get("x-content-type-options") == "nosniff", headers
    assert headers.get("x-frame-options") == "DENY", headers
    assert headers.get("referrer-policy") == "no-referrer", headers
    csp = headers.get("content-security-policy") or ""
    assert "frame-ancestors 'none'" in csp, headers
    if html:
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp


def test_finding9_security_headers_on_every_page_the_gateway_serves(gateway):
    g = gateway([demo_service()], env={"DEMO_DELAY": "4"})
    # pages
    sec_headers_ok(g.get("/").headers, html=True)
    sec_headers_ok(g.get("/status").headers, html=True)
    r = g.get("/llm/echo", headers={"Accept": "text/html"})     # the waiting page
    assert r.status == 503 and b"<html" in r.body, r
    sec_headers_ok(r.headers, html=True)
    # JSON answers and errors
    for path in ("/info", "/nope", "/check_llm", "/llm/%2f", "/api/services/demo"):
        sec_headers_ok(g.get(path).headers, html=False)
    # a 503 of the proxy's own (hold off)
    r = g.get("/llm/echo", headers={"X-Slurmgate-Wait": "0"})
    assert r.status == 503, r
    sec_headers_ok(r.headers, html=False)
    g.wait_state("ready")
    g.record_pids()


def raw_head_headers(raw):
    """Lower-case header dict of the first response in raw bytes."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head)}


@pytest.mark.parametrize("req,status", [
    (b"GET /info HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /info HTTP/9.9\r\nHost: a\r\n\r\n", 505),
    (b"GET /info HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431),
    (b"POST /llm/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 999999\r\n\r\n", 413),
    (b"GET /info HTTP/1.1\r\nHost: a\r\n", 408),
], ids=["400", "505", "431", "413", "408"])
def test_finding9_security_headers_on_errors_of_the_http_layer(gateway, req, status):
    # nginx's add_header ... always covers its own error pages; the HTTP
    # layer's answers (400, 408, 413, 431, 505) are pages the gateway serves.
    g = gateway([demo_service()], max_header_size=4096, max_body_size=1000, header_timeout=1)
    raw = raw_exchange(g.port, req, timeout=10)
    assert status_of(raw) == status, raw[:300]
    sec_headers_ok(raw_head_headers(raw), html=False)


def test_finding9_security_headers_on_metrics_api_and_event_streams(gateway):
    g = gateway([demo_service()], env={"DEMO_DELAY": "3"}, feedback_interval=1)
    for path in ("/metrics", "/api/health", "/api/history", "/api/services", "/v1/models"):
        r = g.get(path)
        assert r.status == 200, (path, r)
        sec_headers_ok(r.headers, html=False)
    # the live event stream: its head is enough
    raw = raw_exchange(g.port, b"GET /api/events HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5,
                       read_all=False)
    assert status_of(raw) == 200, raw[:300]
    sec_headers_ok(raw_head_headers(raw), html=False)
    # the cold-start feedback stream the gateway answers before the service does
    raw = raw_exchange(g.port, b"GET /llm/echo HTTP/1.1\r\nHost: a\r\n"
                               b"Accept: text/event-stream\r\n\r\n", timeout=5, read_all=False)
    assert status_of(raw) == 200 and b"X-Slurmgate-Cold-Start" in raw, raw[:300]
    sec_headers_ok(raw_head_headers(raw), html=False)
    g.wait_state("ready")
    g.record_pids()


# --------------------------------------------------------------------------
# finding 11: X-Forwarded-* from the client were passed on as sent
# --------------------------------------------------------------------------

SPOOF = {"X-Forwarded-For": "10.9.9.9", "X-Forwarded-Proto": "https",
         "X-Forwarded-Host": "bank.example", "Forwarded": "for=10.9.9.9;proto=https",
         "X-Real-IP": "10.9.9.9", "Host": "gw.example"}


def test_finding11_forwarded_headers_from_untrusted_peers_are_replaced(gateway):
    g = gateway()
    r = g.get("/llm/echo", headers=SPOOF)
    assert r.status == 200, r
    h = r.json()["headers"]
    assert h["x-forwarded-for"] == "127.0.0.1", h
    assert h["x-forwarded-proto"] == "http", h
    assert h["x-forwarded-host"] == "gw.example", h
    assert "forwarded" not in h and "x-real-ip" not in h, h
    names = [k.lower() for k, v in r.json()["header_list"]]
    for n in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"):
        assert names.count(n) == 1, names
    g.record_pids()


# the rest of the family some frameworks honour: a port, a path prefix, and
# the path overrides (X-Original-URL, X-Rewrite-URL) with which a client
# could reach a path api_paths does not list, if the service obeys them
MORE_SPOOF = {"X-Forwarded-Port": "443", "X-Forwarded-Prefix": "/admin",
              "X-Forwarded-Server": "bank.example", "X-Original-URL": "/admin/delete",
              "X-Rewrite-URL": "/admin/delete"}


@pytest.mark.parametrize("trusted", [[], ["127.0.0.1"]])
def test_forwarding_and_path_override_headers_from_clients_never_reach_the_service(
        gateway, trusted):
    """X-Forwarded-Port/-Prefix/-Server from an untrusted client are dropped
    like X-Forwarded-For's other claims (kept from a trusted proxy); the
    path overrides are dropped from everyone: no proxy in front sets them
    for a service behind slurmgate, whose api_paths they would get around."""
    g = gateway(trusted_proxies=trusted) if trusted else gateway()
    h = g.get("/llm/echo", headers=MORE_SPOOF).json()["headers"]
    assert "x-original-url" not in h and "x-rewrite-url" not in h, h
    for n in ("x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server"):
        if trusted:
            assert h.get(n) == MORE_SPOOF[next(k for k in MORE_SPOOF if k.lower() == n)], h
        else:
            assert n not in h, h
    g.record_pids()


@pytest.mark.parametrize("trusted", [["127.0.0.1"], ["127.0.0.0/8"], ["::1", "127.0.0.1/32"]])
def test_forwarded_headers_from_trusted_proxies_are_kept(gateway, trusted):
    g = gateway(trusted_proxies=trusted)
    h = g.get("/llm/echo", headers=SPOOF).json()["headers"]
    assert h["x-forwarded-for"] == "10.9.9.9, 127.0.0.1", h
    assert h["x-forwarded-proto"] == "https", h
    assert h["x-forwarded-host"] == "bank.example", h
    assert h["x-real-ip"] == "10.9.9.9", h
    g.record_pids()


def test_other_trusted_proxies_do_not_make_loopback_trusted(gateway):
    g = gateway(trusted_proxies=["10.0.0.0/8", "fd00::/8"])
    h = g.get("/llm/echo", headers=SPOOF).json()["headers"]
    assert h["x-forwarded-for"] == "127.0.0.1", h
    assert h["x-forwarded-proto"] == "http", h
    g.record_pids()


# --------------------------------------------------------------------------
# finding 13: Authorization (even the admin token) went to services
# --------------------------------------------------------------------------

def test_finding13_authorization_is_stripped_without_api_keys(gateway):
    token = "admin-token-0123456789"
    g = gateway(admin_token=token)
    for auth in (f"Bearer {token}", "Basic dXNlcjpwYXNz"):
        r = g.get("/llm/echo", headers={"Authorization": auth})
        assert r.status == 200, r
        assert "authorization" not in r.json()["headers"], r.json()["headers"]
    g.record_pids()


def test_forward_authorization_lets_a_service_opt_in(gateway):
    g = gateway([demo_service(forward_authorization=True)])
    r = g.get("/llm/echo", headers={"Authorization": "Bearer service-token"})
    assert r.json()["headers"].get("authorization") == "Bearer service-token"
    g.record_pids()
