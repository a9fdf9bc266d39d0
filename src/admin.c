/* admin.c - the gateway's own endpoints (see admin.h): the seed's, the
 * JSON API, /metrics and the pages. The JSON itself is api.c's. */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <http_parser.h>
#include <jansson.h>

#include "access.h"
#include "api.h"
#include "auth.h"
#include "config.h"
#include "events.h"
#include "http.h"
#include "launcher.h"
#include "log.h"
#include "logring.h"
#include "metrics.h"
#include "prometheus.h"
#include "reply.h"
#include "router.h"
#include "service.h"
#include "status_html.h"
#include "version.h"

/* --- the seed's endpoints --- */

static void ep_check(struct hconn *c, const struct http_msg *m, struct service *s)
{
	reply_json(c, 200, api_as_seen(c, m, api_service_json(s, true)), NULL);
}

static void ep_demand(struct hconn *c, struct service *s)
{
	json_t *o;
	char ra[40];

	service_demand(s);
	o = api_service_json(s, true);
	/* a pending Slurm job: when Slurm expects to start it */
	snprintf(ra, sizeof ra, "Retry-After: %d\r\n", service_retry_after(s, 5));
	if (service_state(s) == SVC_READY)
		reply_json(c, 200, o, NULL);
	else
		reply_json(c, 503, o, ra);
}

static void ep_management(struct hconn *c, bool enable, bool kill)
{
	json_t *stopped = json_array();

	services_managed = enable;
	if (kill)
		for (size_t k = 0; k < services_count(); k++) {
			struct service *s = service_at(k);
			if (service_first_instance(s) != NULL) {
				json_array_append_new(stopped, json_string(service_config(s)->name));
				service_stop_all(s, "stopped by kill_disable_service_management");
			}
		}
	log_info("service management %s%s", enable ? "enabled" : "disabled",
		 kill ? "; every service stopped" : "");
	reply_json(c, 200, json_pack("{s:b,s:o}", "service_management", enable, "stopped", stopped),
		   NULL);
}

/* --- pages --- */

/* Text for HTML: escape what could open markup. */
static void html_add_n(struct evbuffer *b, const char *s, size_t len)
{
	for (size_t k = 0; k < len; k++) {
		switch (s[k]) {
		case '<': evbuffer_add(b, "&lt;", 4); break;
		case '>': evbuffer_add(b, "&gt;", 4); break;
		case '&': evbuffer_add(b, "&amp;", 5); break;
		case '"': evbuffer_add(b, "&quot;", 6); break;
		case '\'': evbuffer_add(b, "&#39;", 5); break;
		default: evbuffer_add(b, s + k, 1);
		}
	}
}

static void html_add(struct evbuffer *b, const char *s)
{
	html_add_n(b, s, strlen(s));
}

static void ep_status_page(struct hconn *c)
{
	http_reply(c, 200, "text/html; charset=utf-8", SG_SEC_HEADERS_PAGE "Cache-Control: no-cache\r\n",
		   status_html,
		   sizeof status_html - 1);
}

/* Is the word W (LEN bytes) an address a user should not see: host:port,
 * an IP, [v6], a URL, user@host? */
static bool address_like(const char *w, size_t len)
{
	int dots = 0, digits_only = 1;

	if (len == 0)
		return false;
	if (w[0] == '[' || memchr(w, '@', len) || memmem(w, len, "://", 3))
		return true;
	for (size_t k = 0; k < len; k++) {
		if (w[k] == ':' && k > 0 && k + 1 < len && w[k + 1] >= '0' && w[k + 1] <= '9')
			return true;   /* host:port (a "status 3:" ends the word) */
		if (w[k] == '.')
			dots++;
		else if (w[k] < '0' || w[k] > '9')
			digits_only = 0;
	}
	return dots == 3 && digits_only;   /* 10.0.0.7 */
}

/* TEXT for people outside: HTML-escaped, every address in it replaced by
 * "the service" (the page is for end users, not for admins). */
static void html_add_public(struct evbuffer *b, const char *text)
{
	const char *p = text;

	while (*p) {
		size_t sep = strcspn(p, " (),;\"'"), n;
		if (sep == 0) {
			html_add_n(b, p, 1);
			p++;
			continue;
		}
		n = sep;
		/* a sentence's full stop or colon is not part of the address */
		while (n > 0 && (p[n - 1] == '.' || p[n - 1] == ':'))
			n--;
		if (address_like(p, n)) {
			evbuffer_add_printf(b, "the service");
			html_add_n(b, p + n, sep - n);
		} else {
			html_add_n(b, p, sep);
		}
		p += sep;
	}
}

/* The waiting page's look: the status page's colours and type, inline (no
 * external resources: it must work air-gapped). */
static const char waiting_css[] =
	":root{--bg:#f3f5f8;--card:#fff;--ink:#1d2430;--mute:#677285;--line:#e1e5eb;--accent:#2f6fdb;"
	"--warn:#9a6100;--warnb:#fff1d6;--bad:#b4232c;--badb:#fde2e2}"
	"*{box-sizing:border-box}"
	"body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"
	"\"Segoe UI\",Roboto,\"DejaVu Sans\",sans-serif}"
	"header{background:#18202c;color:#e9edf3;padding:10px 24px;display:flex;align-items:center;gap:16px}"
	"header .brand{font-size:18px;font-weight:600;letter-spacing:.3px}"
	"header a{color:#b9c3d2;font-size:13px;margin-left:auto}"
	"main{max-width:680px;margin:48px auto;padding:0 20px}"
	".card{background:var(--card);border:1px solid var(--line);border-left:5px solid #e0a100;"
	"border-radius:9px;padding:22px 26px;box-shadow:0 1px 2px rgba(20,30,50,.05)}"
	".card.failed{border-left-color:var(--bad)}"
	"h1{font-size:21px;margin:0 0 10px;font-weight:600}"
	".badge{display:inline-block;padding:2px 10px;border-radius:999px;font-size:12px;font-weight:700;"
	"text-transform:uppercase;letter-spacing:.5px;background:var(--warnb);color:var(--warn)}"
	".failed .badge{background:var(--badb);color:var(--bad)}"
	".badge::before{content:\"\";display:inline-block;width:7px;height:7px;border-radius:50%;"
	"background:currentColor;margin-right:6px;vertical-align:1px;animation:pulse 1s infinite alternate}"
	"@keyframes pulse{from{opacity:1}to{opacity:.2}}"
	".reason{margin:14px 0 6px;font-family:ui-monospace,\"DejaVu Sans Mono\",monospace;font-size:13px;"
	"background:#f7f8fa;border:1px solid var(--line);border-radius:6px;padding:8px 10px;"
	"overflow-wrap:anywhere}"
	".eta,.note{color:var(--mute);font-size:13px;margin:6px 0 0}"
	"a{color:var(--accent)}";

void admin_waiting_page(struct hconn *c, struct service *s)
{
	struct evbuffer *b = evbuffer_new();
	struct svc_metrics *m;
	char reason[600];
	const char *name = service_config(s)->name;
	bool failed;
	size_t n;

	service_demand(s);
	service_reason(s, reason, sizeof reason);
	if (!auth_output_open()) {   /* a page for a service's users, not its admin */
		char *r = access_redact_output(reason, name);
		if (r != NULL)
			snprintf(reason, sizeof reason, "%s", r);
		free(r);
	}
	failed = service_state(s) == SVC_FAILED;
	evbuffer_add_printf(b, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
			       "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
			       "<meta http-equiv=\"refresh\" content=\"2\"><title>Starting ");
	html_add(b, name);
	evbuffer_add_printf(b, "</title><style>%s</style></head><body>"
			       "<header><span class=\"brand\">slurmgate</span>"
			       "<a class=\"status-link\" href=\"/status\">Status of all services</a></header>"
			       "<main><section class=\"card%s\" data-state=\"%s\"><h1>",
			    waiting_css, failed ? " failed" : "", service_state_name(service_state(s)));
	html_add(b, name);
	evbuffer_add_printf(b, " is %s</h1><span class=\"badge\">%s</span><p class=\"reason\">",
			    failed ? "not available" : "starting", failed ? "start failed" : "starting");
	html_add_public(b, reason);
	evbuffer_add_printf(b, "</p>");
	m = service_metrics(s);
	if (!failed && m->cold_starts > 0 && m->cold_queue.count > 0 && m->cold_boot.count > 0) {
		double eta = m->cold_queue.sum / (double)m->cold_queue.count +
			     m->cold_boot.sum / (double)m->cold_boot.count;
		evbuffer_add_printf(b, "<p class=\"eta\">Earlier starts took about %.0f s.</p>", eta);
	}
	evbuffer_add_printf(b, "<p class=\"note\">%s <a href=\"/status\">The status page</a> shows "
			       "every service.</p></section></main></body></html>\n",
			    failed ? "This page tries again every 2 seconds." :
				     "This page reloads itself and shows the service as soon as it is ready.");
	n = evbuffer_get_length(b);
	/* a failed start is a failure (502), a start under way "not yet" (503) */
	http_reply(c, failed ? 502 : 503, "text/html; charset=utf-8",
		   SG_SEC_HEADERS_PAGE "Retry-After: 2\r\nRefresh: 2\r\nCache-Control: no-store\r\n",
		   (const char *)evbuffer_pullup(b, -1), n);
	evbuffer_free(b);
}

/* --- /api --- */

/* The value of NAME in the query Q ("?a=1&b=2", QLEN bytes) into BUF, or
 * false when it is not there. */
static bool query_get(const char *q, size_t qlen, const char *name, char *buf, size_t len)
{
	size_t nlen = strlen(name);
	const char *p = q, *end = q + qlen;

	if (q == NULL || qlen == 0)
		return false;
	if (*p == '?')
		p++;
	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *e = amp ? amp : end;
		if ((size_t)(e - p) >= nlen && memcmp(p, name, nlen) == 0 &&
		    (p + nlen == e || p[nlen] == '=')) {
			const char *v = p + nlen == e ? e : p + nlen + 1;
			snprintf(buf, len, "%.*s", (int)(e - v), v);
			return true;
		}
		p = e + 1;
	}
	return false;
}

/* GET /api/services/<name>/logs[?lines=N][&follow=1]: the tail of what
 * the service's instances wrote, as text; with follow, as SSE (one data
 * line per line) that goes on with what they write next. */
static void ep_logs(struct hconn *c, const struct route_target *rt, struct service *s,
		    bool *events)
{
	const struct launcher_ops *lops = service_config(s)->launcher;
	char v[32], *end, *cause = NULL;
	long lines = 100;
	bool follow = false;
	uint64_t from = 0;
	struct evbuffer *b;

	if (query_get(rt->query, rt->qlen, "lines", v, sizeof v)) {
		lines = strtol(v, &end, 10);
		if (v[0] == '\0' || *end != '\0' || lines < 0 || lines > LOGRING_LINES) {
			char msg[120];
			snprintf(msg, sizeof msg, "lines must be a number from 0 to %d", LOGRING_LINES);
			reply_err(c, 400, msg);
			return;
		}
	}
	if (query_get(rt->query, rt->qlen, "follow", v, sizeof v))   /* a HEAD gets the head only */
		follow = strcmp(v, "0") != 0 && strcmp(v, "false") != 0 && !http_is_head(c);
	if (lops->logs == NULL) {
		reply_err(c, 501, "this service's launcher keeps no logs");
		return;
	}
	b = evbuffer_new();
	if (lops->logs(s, &from, (size_t)lines, b, &cause) != 0) {
		reply_err(c, 501, cause);
		free(cause);
		evbuffer_free(b);
		return;
	}
	if (follow) {
		*events = true;
		events_logs_follow(c, s, b, from);
	} else {
		size_t n = evbuffer_get_length(b);
		http_reply(c, 200, "text/plain; charset=utf-8", SG_SEC_HEADERS_DATA "Cache-Control: no-store\r\n",
			   (const char *)evbuffer_pullup(b, -1), n);
	}
	evbuffer_free(b);
}

static void ep_api(struct hconn *c, const struct http_msg *m, const struct route_target *rt,
		   bool *events)
{
	const char *path = rt->dpath;
	size_t plen = rt->dlen;
	bool get = m->method == HTTP_GET || m->method == HTTP_HEAD;
	char name[256];
	const char *rest;
	struct service *s;

	if (plen == 11 && memcmp(path, "/api/health", 11) == 0) {
		reply_json(c, 200, json_pack("{s:s,s:s}", "status", "ok", "version", SLURMGATE_VERSION),
			   NULL);
		return;
	}
	/* everything below is the state, or changes it */
	if (!auth_read(c, m))
		return;
	if (plen == 11 && memcmp(path, "/api/events", 11) == 0 && get) {
		*events = true;
		events_subscribe(c, auth_sees_output(c, m));
		return;
	}
	if (plen == 12 && memcmp(path, "/api/history", 12) == 0 && get) {
		events_history(c);
		return;
	}
	if (plen == 13 && memcmp(path, "/api/services", 13) == 0) {
		if (!get)
			reply_err(c, 405, "use GET");
		else
			reply_json(c, 200, api_as_seen(c, m, api_state_json(false)), NULL);
		return;
	}
	if (plen <= 14 || memcmp(path, "/api/services/", 14) != 0) {
		reply_err(c, 404, "unknown API endpoint");
		return;
	}
	rest = memchr(path + 14, '/', plen - 14);
	snprintf(name, sizeof name, "%.*s", (int)((rest ? rest : path + plen) - (path + 14)), path + 14);
	s = service_by_name(name);
	if (s == NULL) {
		reply_err(c, 404, "no such service");
		return;
	}
	if (rest == NULL) {
		if (!get)
			reply_err(c, 405, "use GET");
		else
			reply_json(c, 200, api_as_seen(c, m, api_service_json(s, false)), NULL);
		return;
	}
	if ((size_t)(path + plen - rest) == 5 && memcmp(rest, "/logs", 5) == 0) {
		if (!get)
			reply_err(c, 405, "use GET");
		else if (auth_logs(c, m))
			ep_logs(c, rt, s, events);
		return;
	}
	if (m->method != HTTP_POST) {
		reply_err(c, 405, "use POST");
		return;
	}
	if (!auth_same_site(c, m) || !auth_admin(c, m))
		return;
	if ((size_t)(path + plen - rest) == 6 && memcmp(rest, "/start", 6) == 0) {
		service_demand(s);
		reply_json(c, 202, api_service_json(s, false), NULL);
	} else if ((size_t)(path + plen - rest) == 5 && memcmp(rest, "/stop", 5) == 0) {
		service_stop_all(s, "stopped through the API");
		reply_json(c, 202, api_service_json(s, false), NULL);
	} else {
		reply_err(c, 404, "unknown API endpoint");
	}
}

/* --- dispatch --- */

static bool path_is(const char *path, size_t plen, const char *lit)
{
	return strlen(lit) == plen && memcmp(path, lit, plen) == 0;
}

bool admin_serve(struct hconn *c, const struct http_msg *m, const struct route_target *rt,
		 bool *events)
{
	const char *path = rt->dpath, *seg, *rest, *drest;
	size_t plen = rt->dlen, seglen, restlen, drestlen;
	struct service *s;
	bool get = m->method == HTTP_GET || m->method == HTTP_HEAD;

	router_split(rt, &seg, &seglen, &rest, &restlen, &drest, &drestlen);
	if (seglen > 6 && memcmp(seg, "check_", 6) == 0 && drestlen == 0) {
		if (!auth_read(c, m))
			return true;
		if ((s = service_by_route(seg + 6, seglen - 6)) == NULL)
			reply_err(c, 404, "no service has that route_name");
		else
			ep_check(c, m, s);
		return true;
	}
	if (seglen > 7 && memcmp(seg, "demand_", 7) == 0 && drestlen == 0) {
		if (!auth_read(c, m))
			return true;
		if ((s = service_by_route(seg + 7, seglen - 7)) == NULL)
			reply_err(c, 404, "no service has that route_name");
		else if (auth_same_site(c, m) && auth_admin(c, m))
			ep_demand(c, s);
		return true;
	}
	if (path_is(path, plen, "/info")) {
		if (auth_read(c, m))
			reply_json(c, 200, api_as_seen(c, m, api_state_json(true)), NULL);
		return true;
	}
	if (path_is(path, plen, "/enable_service_management") ||
	    path_is(path, plen, "/disable_service_management") ||
	    path_is(path, plen, "/kill_disable_service_management")) {
		if (auth_read(c, m) && auth_same_site(c, m) && auth_admin(c, m))
			ep_management(c, path[1] == 'e', path[1] == 'k');
		return true;
	}
	if (seglen == 3 && memcmp(seg, "api", 3) == 0) {
		ep_api(c, m, rt, events);
		return true;
	}
	if (path_is(path, plen, "/metrics")) {
		if (auth_read(c, m))
			prometheus_metrics(c);
		return true;
	}
	if (path_is(path, plen, "/") || path_is(path, plen, "/status")) {
		if (!get)
			reply_err(c, 405, "use GET");
		else
			ep_status_page(c);
		return true;
	}
	return false;
}
