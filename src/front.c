/* front.c - the listener, routing, access control and the gateway's own
 * endpoints.
 *
 * Every client connection is a session: at most one request at a time
 * (pipelined ones wait in the HTTP layer). A request is either answered
 * here (the seed's endpoints, /api/, /metrics, the status page,
 * /v1/models) or handed to the proxy: by its first path segment
 * (/<route>/...), or, on OpenAI-style /v1/... paths, by the JSON body's
 * "model" (the api key is checked on the head, then the body is read, at
 * most max_json_body bytes, and forwarded unchanged).
 *
 * Every target goes through the one resolver in router.c first: decoded
 * once, dot segments removed, refused with a 400 naming the trick if it
 * hides one. Routing, api_paths and the path sent upstream all use the
 * normalised path (as nginx does for a URI in proxy_pass).
 *
 * Access control here (the decisions are access.c's): allowed_hosts (DNS
 * rebinding), cross-site requests to state-changing endpoints (CSRF),
 * admin_token, api_keys, and which client headers the proxy may believe
 * (trusted_proxies) or pass on (forward_authorization). */
#include "front.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <http_parser.h>
#include <jansson.h>

#include "access.h"
#include "api.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "proxy.h"
#include "router.h"
#include "service.h"
#include "status_html.h"
#include "util.h"
#include "version.h"

struct session {
	struct hconn *c;
	struct exchange *ex;
	bool events;               /* an /api/events subscriber */
	struct evbuffer *v1body;   /* an OpenAI request's body, read before routing */
	const struct http_msg *v1msg;
	bool v1feedback;
	struct route_target rt;    /* the current request's resolved target */
};

/* Model names (service names and aliases), sorted, for /v1 routing. */
struct model {
	const char *name;
	struct service *svc;
};

static struct config *fcfg;
static struct http_limits limits;
static struct evconnlistener *listener;
static struct event *resume_ev;
static struct event_base *fbase;
static struct model *models;
static size_t nmodels;

/* --- replies --- */

static void reply_json(struct hconn *c, int status, json_t *o, const char *extra)
{
	char *body;

	if (o == NULL) {   /* json_pack refused a value (not UTF-8): never crash on it */
		http_reply_error(c, 500, SG_SEC_HEADERS_DATA, "could not encode the answer as JSON");
		return;
	}
	body = json_dumps(o, JSON_COMPACT);
	if (extra != NULL) {
		char *h = xasprintf("%s%s", SG_SEC_HEADERS_DATA, extra);
		http_reply(c, status, "application/json", h, body, strlen(body));
		free(h);
	} else {
		http_reply(c, status, "application/json", SG_SEC_HEADERS_DATA, body, strlen(body));
	}
	free(body);
	json_decref(o);
}

static void reply_err(struct hconn *c, int status, const char *msg)
{
	reply_json(c, status, json_pack("{s:s,s:i}", "error", msg, "status", status), NULL);
}

/* OpenAI's error shape: {"error":{"message","type","param","code"}}. */
static void reply_openai_err(struct hconn *c, int status, const char *type, const char *code,
			     const char *msg, const char *extra)
{
	reply_json(c, status,
		   json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", msg, "type", type, "param",
			     "code", code),
		   extra);
}

/* --- access --- */

/* Admin endpoints need "Authorization: Bearer <admin_token>" when one is set. */
static bool admin_ok(struct hconn *c, const struct http_msg *m)
{
	size_t len = 0;
	const char *t;

	if (fcfg->admin_token == NULL)
		return true;
	t = access_bearer(m, &len);
	if (t != NULL && access_secret_eq(t, len, fcfg->admin_token))
		return true;
	reply_json(c, 401,
		   json_pack("{s:s,s:i}", "error",
			     t ? "invalid admin token" : "this endpoint needs Authorization: Bearer <admin_token>",
			     "status", 401),
		   "WWW-Authenticate: Bearer realm=\"slurmgate-admin\"\r\n");
	return false;
}

/* State-changing endpoints refuse cross-site requests (403). */
static bool same_site_ok(struct hconn *c, const struct http_msg *m)
{
	if (!access_cross_site(c, m))
		return true;
	log_warn("client %s: refused a cross-site request to %s", http_peer(c),
		 log_escape(m->url, m->url_len));
	reply_err(c, 403, "cross-site request refused: this endpoint changes state "
			  "(Origin or Sec-Fetch-Site names another site)");
	return false;
}

/* allowed_hosts, against DNS rebinding: 421 for any other Host. */
static bool host_ok(struct hconn *c, const struct http_msg *m)
{
	const struct http_hdr *h = http_find(m, "host");
	char msg[300];

	if (fcfg->allowed_hosts == NULL)
		return true;
	if (h != NULL && router_host_allowed(h->value, h->vlen, fcfg->allowed_hosts))
		return true;
	snprintf(msg, sizeof msg, "this gateway does not serve the host \"%s\" (allowed_hosts)",
		 h ? log_escape(h->value, h->vlen > 100 ? 100 : h->vlen) : "");
	reply_err(c, 421, msg);
	return false;
}

/* With api_keys set, using a service needs a key that may use it: 401
 * without one, 403 for a key limited to other services. The admin token
 * is never an api key. S may be NULL (any service will do). */
static bool key_ok(struct hconn *c, const struct http_msg *m, const struct service *s, bool openai)
{
	size_t len = 0;
	const char *t;
	const struct api_key *k;
	const char *www = "WWW-Authenticate: Bearer realm=\"slurmgate\"\r\n";

	if (fcfg->n_api_keys == 0)
		return true;
	t = access_bearer(m, &len);
	k = t ? access_key_find(t, len) : NULL;
	if (k == NULL) {
		const char *msg = t ? "invalid api key" : "this gateway needs Authorization: Bearer <api key>";
		if (openai)
			reply_openai_err(c, 401, "invalid_request_error", "invalid_api_key", msg, www);
		else
			reply_json(c, 401, json_pack("{s:s,s:i}", "error", msg, "status", 401), www);
		return false;
	}
	if (!access_key_allows(k, s)) {
		const char *msg = "this api key may not use this service";
		if (openai)
			reply_openai_err(c, 403, "permission_error", "forbidden", msg, NULL);
		else
			reply_err(c, 403, msg);
		return false;
	}
	return true;
}

/* --- the seed's endpoints --- */

static void ep_check(struct hconn *c, struct service *s)
{
	reply_json(c, 200, api_service_json(s, true), NULL);
}

static void ep_demand(struct hconn *c, struct service *s)
{
	json_t *o;
	char ra[40];

	service_demand(s);
	o = api_service_json(s, true);
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

/* A browser asked for a cold service: a page that waits with it. */
static void ep_waiting_page(struct hconn *c, struct service *s)
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

static void ep_api(struct hconn *c, struct session *ss, const struct http_msg *m, const char *path,
		   size_t plen)
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
		ss->events = true;
		api_events_subscribe(c);
		return;
	}
	if (plen == 12 && memcmp(path, "/api/history", 12) == 0 && get) {
		api_history(c);
		return;
	}
	if (plen == 13 && memcmp(path, "/api/services", 13) == 0) {
		if (!get)
			reply_err(c, 405, "use GET");
		else
			reply_json(c, 200, api_state_json(), NULL);
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
	if (!same_site_ok(c, m) || !admin_ok(c, m))
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

/* --- OpenAI-compatible front --- */

static int model_cmp(const void *a, const void *b)
{
	return strcmp(((const struct model *)a)->name, ((const struct model *)b)->name);
}

static struct service *model_find(const char *name)
{
	struct model key = {name, NULL};
	struct model *m = bsearch(&key, models, nmodels, sizeof *models, model_cmp);

	return m ? m->svc : NULL;
}

/* "ready", "stopped", "pending: Resources", "starting", ... */
static void short_state(const struct service *s, char *buf, size_t len)
{
	enum svc_state st = service_state(s);

	snprintf(buf, len, "%s", service_state_name(st));
	if (st != SVC_STARTING)
		return;
	for (struct instance *i = service_first_instance(s); i; i = service_next_instance(i)) {
		const char *p = strstr(i->detail, " pending (");
		if (p && (i->state == INST_STARTING)) {
			const char *r = p + 10, *e = strrchr(r, ')');
			snprintf(buf, len, "pending: %.*s", (int)(e ? e - r : (long)strlen(r)), r);
			return;
		}
	}
}

static void ep_models(struct hconn *c, const struct http_msg *m)
{
	json_t *data;
	const struct api_key *k = NULL;
	size_t len;
	const char *t = access_bearer(m, &len);
	char st[300];

	if (!key_ok(c, m, NULL, true))
		return;
	data = json_array();
	if (fcfg->n_api_keys > 0)
		k = access_key_find(t, len);
	for (size_t q = 0; q < nmodels; q++) {
		struct service *s = models[q].svc;
		if (k && !access_key_allows(k, s))
			continue;
		short_state(s, st, sizeof st);
		json_array_append_new(data, json_pack("{s:s,s:s,s:i,s:s,s:s,s:s}", "id", models[q].name,
						      "object", "model", "created", 0, "owned_by", "slurmgate",
						      "service", service_config(s)->name, "state", st));
	}
	reply_json(c, 200, json_pack("{s:s,s:o}", "object", "list", "data", data), NULL);
}

/* Does the client read an event stream? */
static bool wants_sse(const struct http_msg *m)
{
	const struct http_hdr *h = http_find(m, "accept");

	return h != NULL && memmem(h->value, h->vlen, "text/event-stream", 17) != NULL;
}

/* Forward options for a request from C to S. */
static void fwd_opts(struct hconn *c, const struct service *s, struct proxy_opts *opt)
{
	opt->strip_auth = fcfg->n_api_keys > 0 || !service_config(s)->forward_authorization;
	opt->trust_forwarded = access_peer_trusted(c);
}

/* The upstream target: the normalised path and the query as sent. */
static char *upstream_target(const char *path, size_t plen, const struct route_target *rt)
{
	return xasprintf("%.*s%.*s", (int)plen, path, (int)rt->qlen, rt->query ? rt->query : "");
}

/* The /v1 body read for the model lookup: in the memory budget while it
 * is here (http_buffer_track), and in this connection's share of it. */
static void v1body_start(struct session *ss, const struct http_msg *m)
{
	ss->v1body = evbuffer_new();
	http_buffer_track(ss->v1body);
	ss->v1msg = m;
	ss->v1feedback = wants_sse(m);
}

static void v1body_free(struct session *ss)
{
	if (ss->v1body == NULL)
		return;
	http_buffer_untrack(ss->v1body);
	evbuffer_free(ss->v1body);
	ss->v1body = NULL;
	ss->v1msg = NULL;
	http_set_owned(ss->c, 0);
}

/* The whole body of a /v1 request is here: route it by its "model". */
static void v1_route(struct session *ss)
{
	struct hconn *c = ss->c;
	const struct http_msg *m = ss->v1msg;
	size_t n = evbuffer_get_length(ss->v1body);
	const char *body = (const char *)evbuffer_pullup(ss->v1body, -1);
	char *model = NULL, *target;
	bool stream = false;
	struct service *s;
	struct proxy_opts opt = {0};
	char msg[400];

	switch (router_v1_model(body, n, &model, &stream)) {
	case V1_NO_BODY:
	case V1_NOT_OBJECT:
		reply_openai_err(c, 400, "invalid_request_error", "invalid_json",
				 n ? "the request body is not a JSON object" : "this endpoint needs a JSON body",
				 NULL);
		goto out;
	case V1_NO_MODEL:
		reply_openai_err(c, 400, "invalid_request_error", "model_required",
				 "the JSON body needs a \"model\" string", NULL);
		goto out;
	case V1_OK:
		break;
	}
	s = model_find(model);
	if (s == NULL) {
		snprintf(msg, sizeof msg, "The model '%s' does not exist; GET /v1/models lists them",
			 log_escape(model, strlen(model)));
		reply_openai_err(c, 404, "invalid_request_error", "model_not_found", msg, NULL);
		goto out;
	}
	if (!key_ok(c, m, s, true))
		goto out;
	if (!router_path_allowed(ss->rt.dpath, ss->rt.dlen, service_config(s)->api_paths)) {
		reply_openai_err(c, 404, "invalid_request_error", "path_not_allowed",
				 "this path is not in the service's api_paths", NULL);
		goto out;
	}
	opt.hold = service_config(s)->hold;
	opt.feedback = ss->v1feedback || stream;
	fwd_opts(c, s, &opt);
	target = upstream_target(ss->rt.path, ss->rt.plen, &ss->rt);
	proxy_begin(c, m, s, target, strlen(target), &opt, &ss->ex);
	free(target);
	if (ss->ex)
		proxy_body(ss->ex, body, n);
	if (ss->ex)
		proxy_req_done(ss->ex);
out:
	free(model);
	v1body_free(ss);
}

/* --- routing --- */

static bool path_is(const char *path, size_t plen, const char *lit)
{
	return strlen(lit) == plen && memcmp(path, lit, plen) == 0;
}

/* Forward /<route><rest> to S: REST (encoded) and DREST (decoded) are
 * the normalised path after the route, empty for "/route". */
static void route_service(struct session *ss, const struct http_msg *m, struct service *s,
			  const char *rest, size_t restlen, const char *drest, size_t drestlen)
{
	struct hconn *c = ss->c;
	const struct svc_config *cfg = service_config(s);
	char *target;
	const struct http_hdr *wh, *acc;
	struct proxy_opts opt = {0};

	if (!key_ok(c, m, s, false))
		return;
	if (restlen == 0) {
		/* "/route" or "/route?x": the service's root */
		rest = drest = "/";
		restlen = drestlen = 1;
	}
	if (!router_path_allowed(drest, drestlen, cfg->api_paths)) {
		reply_err(c, 404, "this path is not in the service's api_paths");
		return;
	}
	/* a browser at a cold service gets a page that waits with it */
	acc = http_find(m, "accept");
	if (m->method == HTTP_GET && acc && memmem(acc->value, acc->vlen, "text/html", 9) &&
	    service_state(s) != SVC_READY) {
		ep_waiting_page(c, s);
		return;
	}
	wh = http_find(m, "x-slurmgate-wait");
	opt.hold = cfg->hold && !(wh && wh->vlen == 1 && wh->value[0] == '0');
	opt.feedback = wants_sse(m);
	fwd_opts(c, s, &opt);
	target = upstream_target(rest, restlen, &ss->rt);
	proxy_begin(c, m, s, target, strlen(target), &opt, &ss->ex);
	free(target);
}

/* Route one request head. */
static void s_head(struct hconn *c, struct http_msg *m)
{
	struct session *ss = http_owner(c);
	const char *path, *seg, *rest, *drest, *cause;
	size_t plen, seglen, restlen, drestlen;
	struct service *s;
	bool get = m->method == HTTP_GET || m->method == HTTP_HEAD;

	router_target_free(&ss->rt);
	if (!host_ok(c, m))
		return;
	if (m->method == HTTP_CONNECT) {
		reply_err(c, 405, "CONNECT is not supported");
		return;
	}
	if (router_resolve(m->url, m->url_len, &ss->rt, &cause) != 0) {
		reply_err(c, 400, cause);
		return;
	}
	path = ss->rt.dpath;
	plen = ss->rt.dlen;
	router_split(&ss->rt, &seg, &seglen, &rest, &restlen, &drest, &drestlen);

	if (seglen > 6 && memcmp(seg, "check_", 6) == 0 && drestlen == 0) {
		if ((s = service_by_route(seg + 6, seglen - 6)) == NULL)
			reply_err(c, 404, "no service has that route_name");
		else
			ep_check(c, s);
		return;
	}
	if (seglen > 7 && memcmp(seg, "demand_", 7) == 0 && drestlen == 0) {
		if ((s = service_by_route(seg + 7, seglen - 7)) == NULL)
			reply_err(c, 404, "no service has that route_name");
		else if (same_site_ok(c, m) && admin_ok(c, m))
			ep_demand(c, s);
		return;
	}
	if (path_is(path, plen, "/info")) {
		reply_json(c, 200, api_state_json(), NULL);
		return;
	}
	if (path_is(path, plen, "/enable_service_management") ||
	    path_is(path, plen, "/disable_service_management") ||
	    path_is(path, plen, "/kill_disable_service_management")) {
		if (same_site_ok(c, m) && admin_ok(c, m))
			ep_management(c, path[1] == 'e', path[1] == 'k');
		return;
	}
	if (seglen == 3 && memcmp(seg, "api", 3) == 0) {
		ep_api(c, ss, m, path, plen);
		return;
	}
	if (path_is(path, plen, "/metrics")) {
		api_metrics(c);
		return;
	}
	if (path_is(path, plen, "/") || path_is(path, plen, "/status")) {
		if (!get)
			reply_err(c, 405, "use GET");
		else
			ep_status_page(c);
		return;
	}
	if (seglen == 2 && memcmp(seg, "v1", 2) == 0) {
		if (path_is(path, plen, "/v1/models") && get) {
			ep_models(c, m);
			return;
		}
		/* the api key first, on the head: no body is read for a stranger */
		if (!key_ok(c, m, NULL, true))
			return;
		if (m->content_length > fcfg->max_json_body) {
			reply_openai_err(c, 413, "invalid_request_error", "request_too_large",
					 "the JSON body is larger than max_json_body", NULL);
			return;
		}
		/* route by the body's "model": read the body first */
		v1body_start(ss, m);
		return;
	}

	s = service_by_route(seg, seglen);
	if (s == NULL) {
		char msg[300];
		snprintf(msg, sizeof msg, "no service is routed at /%s",
			 log_escape(seg, seglen > 64 ? 64 : seglen));
		reply_err(c, 404, msg);
		return;
	}
	route_service(ss, m, s, rest, restlen, drest, drestlen);
}

static void s_body(struct hconn *c, const char *p, size_t n)
{
	struct session *ss = http_owner(c);

	if (ss->ex)
		proxy_body(ss->ex, p, n);
	else if (ss->v1body) {
		if (evbuffer_get_length(ss->v1body) + n > (size_t)fcfg->max_json_body) {
			/* chunked, or more than announced: stop here (the connection ends) */
			v1body_free(ss);
			reply_openai_err(c, 413, "invalid_request_error", "request_too_large",
					 "the JSON body is larger than max_json_body", NULL);
			return;
		}
		evbuffer_add(ss->v1body, p, n);
		http_set_owned(c, evbuffer_get_length(ss->v1body));
	}
}

static void s_done(struct hconn *c)
{
	struct session *ss = http_owner(c);

	if (ss->ex)
		proxy_req_done(ss->ex);
	else if (ss->v1body)
		v1_route(ss);
}

static void s_drained(struct hconn *c)
{
	struct session *ss = http_owner(c);

	if (ss->ex)
		proxy_down_drained(ss->ex);
}

static void s_closed(struct hconn *c, const char *why)
{
	struct session *ss = http_owner(c);

	log_debug("client %s: %s", http_peer(c), why);
	if (ss->ex)
		proxy_down_closed(ss->ex);
	if (ss->events)
		api_events_unsubscribe(c);
	v1body_free(ss);
	router_target_free(&ss->rt);
	free(ss);
}

static const struct hconn_ops session_ops = {
	.head = s_head,
	.body = s_body,
	.done = s_done,
	.drained = s_drained,
	.closed = s_closed,
};

/* --- the listener --- */

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
		      void *arg)
{
	struct session *ss;

	(void)l, (void)sa, (void)salen, (void)arg;
	if (http_count(true) >= (size_t)fcfg->max_connections) {
		log_warn("max_connections (%d) reached: refusing a connection", fcfg->max_connections);
		evutil_closesocket(fd);
		return;
	}
	ss = xcalloc(1, sizeof *ss);
	ss->c = http_accept(fd, &limits, &session_ops, ss);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	if (listener)
		evconnlistener_enable(listener);
}

/* Out of descriptors: pause accepting for a second instead of spinning. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
	int e = EVUTIL_SOCKET_ERROR();

	(void)arg;
	log_warn("accept: %s; pausing new connections for 1 s", evutil_socket_error_to_string(e));
	evconnlistener_disable(l);
	event_add(resume_ev, &(struct timeval){1, 0});
}

/* Index model names and api keys of CFG. */
static void build_indexes(struct config *cfg)
{
	free(models);
	nmodels = 0;
	models = NULL;
	for (size_t k = 0; k < services_count(); k++) {
		struct service *s = service_at(k);
		const struct svc_config *sc = service_config(s);
		size_t na = 0;
		for (char **a = sc->aliases; a && *a; a++)
			na++;
		models = xrealloc(models, (nmodels + 1 + na) * sizeof *models);
		models[nmodels++] = (struct model){sc->name, s};
		for (char **a = sc->aliases; a && *a; a++)
			models[nmodels++] = (struct model){*a, s};
	}
	qsort(models, nmodels, sizeof *models, model_cmp);

	access_configure(cfg);
}

void front_reconfigure(struct config *cfg)
{
	fcfg = cfg;
	/* connections share this struct: new limits apply at once */
	limits.max_header = cfg->max_header_size;
	limits.max_body = cfg->max_body_size;
	limits.header_timeout = cfg->header_timeout;
	limits.body_timeout = cfg->body_timeout;
	limits.keepalive_timeout = cfg->keepalive_timeout;
	limits.send_timeout = cfg->send_timeout;
	proxy_init(fbase, cfg);
	build_indexes(cfg);
}

int front_start(struct event_base *base, struct config *cfg)
{
	char spec[300];
	struct sockaddr_storage ss;
	int len = sizeof ss;

	fbase = base;
	front_reconfigure(cfg);
	api_init(base);
	snprintf(spec, sizeof spec, strchr(cfg->listen_host, ':') ? "[%s]:%d" : "%s:%d",
		 cfg->listen_host, cfg->listen_port);
	if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &len) != 0) {
		log_error("listen: cannot parse address %s", spec);
		return -1;
	}
	listener = evconnlistener_new_bind(base, accept_cb, NULL,
					   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
					   4096, (struct sockaddr *)&ss, len);
	if (listener == NULL) {
		log_error("listen on %s: %s", spec, strerror(errno));
		return -1;
	}
	evconnlistener_set_error_cb(listener, accept_error_cb);
	resume_ev = evtimer_new(base, resume_cb, NULL);
	log_info("listening on http://%s", spec);
	return 0;
}

void front_stop_accepting(void)
{
	if (listener)
		evconnlistener_disable(listener);
}

void front_free(void)
{
	if (listener)
		evconnlistener_free(listener);
	listener = NULL;
	if (resume_ev)
		event_free(resume_ev);
	resume_ev = NULL;
	api_free();
	free(models);
	models = NULL;
	access_free();
}
