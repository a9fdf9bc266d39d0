/* admin.c - the gateway's own endpoints (see admin.h): the seed's, the
 * JSON API, /metrics and the pages. The JSON itself is api.c's. */
#include "admin.h"

#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <http_parser.h>
#include <jansson.h>

#include "api.h"
#include "auth.h"
#include "config.h"
#include "events.h"
#include "http.h"
#include "log.h"
#include "prometheus.h"
#include "reply.h"
#include "router.h"
#include "service.h"
#include "status_html.h"
#include "version.h"

/* --- the seed's endpoints --- */

static void ep_check(struct hconn *c, struct service *s)
{
	reply_json(c, 200, api_service_json(s, true), NULL);
}

static void ep_demand(struct hconn *c, struct service *s)
{
	json_t *o;

	service_demand(s);
	o = api_service_json(s, true);
	if (service_state(s) == SVC_READY)
		reply_json(c, 200, o, NULL);
	else
		reply_json(c, 503, o, "Retry-After: 5\r\n");
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
static void html_add(struct evbuffer *b, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '<': evbuffer_add(b, "&lt;", 4); break;
		case '>': evbuffer_add(b, "&gt;", 4); break;
		case '&': evbuffer_add(b, "&amp;", 5); break;
		case '"': evbuffer_add(b, "&quot;", 6); break;
		default: evbuffer_add(b, s, 1);
		}
	}
}

static void ep_status_page(struct hconn *c)
{
	http_reply(c, 200, "text/html; charset=utf-8", SG_SEC_HEADERS_PAGE "Cache-Control: no-cache\r\n",
		   status_html,
		   sizeof status_html - 1);
}

void admin_waiting_page(struct hconn *c, struct service *s)
{
	struct evbuffer *b = evbuffer_new();
	char reason[600];
	size_t n;

	service_demand(s);
	service_reason(s, reason, sizeof reason);
	evbuffer_add_printf(b, "<!doctype html><html><head><meta charset=\"utf-8\">"
			       "<meta http-equiv=\"refresh\" content=\"2\"><title>Starting ");
	html_add(b, service_config(s)->name);
	evbuffer_add_printf(b, "</title><style>body{font-family:sans-serif;margin:3em}"
			       ".s{color:#555}</style></head><body><h1>Starting ");
	html_add(b, service_config(s)->name);
	evbuffer_add_printf(b, " &hellip;</h1><p class=\"s\">");
	html_add(b, reason);
	evbuffer_add_printf(b, "</p><p>This page reloads itself and shows the service as soon as it"
			       " is ready.</p></body></html>\n");
	n = evbuffer_get_length(b);
	http_reply(c, 503, "text/html; charset=utf-8",
		   SG_SEC_HEADERS_PAGE "Retry-After: 2\r\nRefresh: 2\r\nCache-Control: no-store\r\n",
		   (const char *)evbuffer_pullup(b, -1), n);
	evbuffer_free(b);
}

/* --- /api --- */

static void ep_api(struct hconn *c, const struct http_msg *m, const char *path, size_t plen,
		   bool *events)
{
	bool get = m->method == HTTP_GET || m->method == HTTP_HEAD;
	char name[256];
	const char *rest;
	struct service *s;

	if (plen == 11 && memcmp(path, "/api/health", 11) == 0) {
		reply_json(c, 200, json_pack("{s:s,s:s}", "status", "ok", "version", SLURMGATE_VERSION),
			   NULL);
		return;
	}
	if (plen == 11 && memcmp(path, "/api/events", 11) == 0 && get) {
		*events = true;
		events_subscribe(c);
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
			reply_json(c, 200, api_state_json(false), NULL);
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
			reply_json(c, 200, api_service_json(s, false), NULL);
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
		if ((s = service_by_route(seg + 6, seglen - 6)) == NULL)
			reply_err(c, 404, "no service has that route_name");
		else
			ep_check(c, s);
		return true;
	}
	if (seglen > 7 && memcmp(seg, "demand_", 7) == 0 && drestlen == 0) {
		if ((s = service_by_route(seg + 7, seglen - 7)) == NULL)
			reply_err(c, 404, "no service has that route_name");
		else if (auth_same_site(c, m) && auth_admin(c, m))
			ep_demand(c, s);
		return true;
	}
	if (path_is(path, plen, "/info")) {
		reply_json(c, 200, api_state_json(true), NULL);
		return true;
	}
	if (path_is(path, plen, "/enable_service_management") ||
	    path_is(path, plen, "/disable_service_management") ||
	    path_is(path, plen, "/kill_disable_service_management")) {
		if (auth_same_site(c, m) && auth_admin(c, m))
			ep_management(c, path[1] == 'e', path[1] == 'k');
		return true;
	}
	if (seglen == 3 && memcmp(seg, "api", 3) == 0) {
		ep_api(c, m, path, plen, events);
		return true;
	}
	if (path_is(path, plen, "/metrics")) {
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
