/* front.c - the listener, routing, the seed's endpoints and the JSON API.
 *
 * Every client connection is a session: at most one request at a time
 * (pipelined ones wait in the HTTP layer). A request is either answered
 * here (the seed's endpoints, /api/, the status page) or handed to the
 * proxy for the service its first path segment names. */
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

#include "config.h"
#include "http.h"
#include "log.h"
#include "proxy.h"
#include "service.h"
#include "util.h"
#include "version.h"

struct session {
	struct hconn *c;
	struct exchange *ex;
};

static struct config *fcfg;
static struct http_limits limits;
static struct evconnlistener *listener;
static struct event *resume_ev;
static struct event_base *fbase;

/* --- replies --- */

static void reply_json(struct hconn *c, int status, json_t *o, const char *extra)
{
	char *body = json_dumps(o, JSON_COMPACT);

	http_reply(c, status, "application/json", extra, body, strlen(body));
	free(body);
	json_decref(o);
}

static void reply_err(struct hconn *c, int status, const char *msg)
{
	reply_json(c, status, json_pack("{s:s,s:i}", "error", msg, "status", status), NULL);
}

/* Constant-time comparison of a presented secret with the real one. */
static bool secret_eq(const char *given, size_t glen, const char *real)
{
	size_t rlen = strlen(real);
	unsigned char diff = glen != rlen;

	for (size_t k = 0; k < rlen; k++)
		diff |= (unsigned char)(real[k] ^ (k < glen ? given[k] : 0));
	return diff == 0;
}

/* Admin endpoints need "Authorization: Bearer <admin_token>" when one is set. */
static bool admin_ok(struct hconn *c, const struct http_msg *m)
{
	const struct http_hdr *h;

	if (fcfg->admin_token == NULL)
		return true;
	h = http_find(m, "authorization");
	if (h != NULL && h->vlen > 7 && strncasecmp(h->value, "Bearer ", 7) == 0 &&
	    secret_eq(h->value + 7, h->vlen - 7, fcfg->admin_token))
		return true;
	reply_json(c, 401,
		   json_pack("{s:s,s:i}", "error",
			     h ? "invalid admin token" : "this endpoint needs Authorization: Bearer <admin_token>",
			     "status", 401),
		   "WWW-Authenticate: Bearer realm=\"slurmgate\"\r\n");
	return false;
}

/* --- state as JSON --- */

static json_t *instance_json(const struct instance *i)
{
	json_t *o = json_pack("{s:i,s:s,s:s,s:i,s:i,s:I,s:f}", "index", i->index, "state",
			      instance_state_name(i->state), "detail", i->detail, "port", i->remote_port,
			      "in_flight", i->inflight, "served", (json_int_t)i->served,
			      "age_seconds", now_s() - i->created);

	json_object_set_new(o, "address", i->addr_str[0] ? json_string(i->addr_str) : json_null());
	json_object_set_new(o, "pid", i->pid > 0 ? json_integer(i->pid) : json_null());
	json_object_set_new(o, "job_id", i->job_id[0] ? json_string(i->job_id) : json_null());
	json_object_set_new(o, "node", i->node[0] ? json_string(i->node) : json_null());
	return o;
}

static json_t *service_json(const struct service *s, bool seed_style)
{
	const struct svc_config *cfg = service_config(s);
	enum svc_state st = service_state(s);
	char reason[600];
	double idle = service_idle_left(s);
	const char *err = service_last_error(s);
	json_t *o, *insts;
	struct instance *i;

	service_reason(s, reason, sizeof reason);
	o = json_pack("{s:s,s:b,s:b,s:s}", "Name", cfg->name, "started",
		      st == SVC_STARTING || st == SVC_READY, "running", st == SVC_READY, "reason", reason);
	if (seed_style)
		return o;
	json_object_set_new(o, "name", json_string(cfg->name));
	json_object_set_new(o, "route_name", json_string(cfg->route_name));
	json_object_set_new(o, "state", json_string(service_state_name(st)));
	json_object_set_new(o, "launcher", json_string(cfg->launcher == LAUNCHER_LOCAL ? "local" : "slurm"));
	json_object_set_new(o, "in_flight", json_integer(service_inflight(s)));
	json_object_set_new(o, "waiting", json_integer(service_waiting(s)));
	json_object_set_new(o, "idle_seconds_left", idle >= 0 ? json_real(idle) : json_null());
	json_object_set_new(o, "timeout", json_integer(cfg->timeout));
	json_object_set_new(o, "start_timeout", json_integer(cfg->start_timeout));
	json_object_set_new(o, "last_error", err[0] ? json_string(err) : json_null());
	json_object_set_new(o, "requests", json_integer((json_int_t)service_requests(s)));
	json_object_set_new(o, "starts", json_integer((json_int_t)service_starts(s)));
	json_object_set_new(o, "start_failures", json_integer((json_int_t)service_start_failures(s)));
	insts = json_array();
	for (i = service_first_instance(s); i; i = service_next_instance(i))
		json_array_append_new(insts, instance_json(i));
	json_object_set_new(o, "instances", insts);
	return o;
}

static json_t *all_services_json(void)
{
	json_t *a = json_array();

	for (size_t k = 0; k < services_count(); k++)
		json_array_append_new(a, service_json(service_at(k), false));
	return a;
}

/* --- endpoints --- */

static void ep_info(struct hconn *c)
{
	reply_json(c, 200,
		   json_pack("{s:s,s:b,s:o}", "version", SLURMGATE_VERSION, "service_management",
			     services_managed, "services", all_services_json()),
		   NULL);
}

static void ep_check(struct hconn *c, struct service *s)
{
	reply_json(c, 200, service_json(s, true), NULL);
}

static void ep_demand(struct hconn *c, struct service *s)
{
	json_t *o;

	service_demand(s);
	o = service_json(s, true);
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
	struct evbuffer *b = evbuffer_new();
	size_t n;

	evbuffer_add_printf(b, "<!doctype html><html><head><meta charset=\"utf-8\">"
			       "<title>slurmgate</title></head><body><h1>slurmgate</h1><table border=1>"
			       "<tr><th>service</th><th>route</th><th>state</th><th>reason</th></tr>\n");
	for (size_t k = 0; k < services_count(); k++) {
		struct service *s = service_at(k);
		const struct svc_config *cfg = service_config(s);
		char reason[600];

		service_reason(s, reason, sizeof reason);
		evbuffer_add_printf(b, "<tr><td>");
		html_add(b, cfg->name);
		evbuffer_add_printf(b, "</td><td>/");
		html_add(b, cfg->route_name);
		evbuffer_add_printf(b, "</td><td>%s</td><td>", service_state_name(service_state(s)));
		html_add(b, reason);
		evbuffer_add_printf(b, "</td></tr>\n");
	}
	evbuffer_add_printf(b, "</table><p>JSON: <a href=\"/api/services\">/api/services</a></p>"
			       "</body></html>\n");
	n = evbuffer_get_length(b);
	http_reply(c, 200, "text/html; charset=utf-8", NULL, (const char *)evbuffer_pullup(b, -1), n);
	evbuffer_free(b);
}

/* /api/...: the native JSON API. */
static void ep_api(struct hconn *c, const struct http_msg *m, const char *path, size_t plen)
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
	if (plen == 13 && memcmp(path, "/api/services", 13) == 0) {
		if (!get) {
			reply_err(c, 405, "use GET");
			return;
		}
		reply_json(c, 200, json_pack("{s:b,s:o}", "service_management", services_managed,
					     "services", all_services_json()),
			   NULL);
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
			reply_json(c, 200, service_json(s, false), NULL);
		return;
	}
	if (m->method != HTTP_POST) {
		reply_err(c, 405, "use POST");
		return;
	}
	if (!admin_ok(c, m))
		return;
	if ((size_t)(path + plen - rest) == 6 && memcmp(rest, "/start", 6) == 0) {
		service_demand(s);
		reply_json(c, 202, service_json(s, false), NULL);
	} else if ((size_t)(path + plen - rest) == 5 && memcmp(rest, "/stop", 5) == 0) {
		service_stop_all(s, "stopped through the API");
		reply_json(c, 202, service_json(s, false), NULL);
	} else {
		reply_err(c, 404, "unknown API endpoint");
	}
}

/* A "." or ".." segment, plain or percent-encoded: a service that
 * normalises paths would see another path than api_paths allowed. */
static bool has_dot_segment(const char *p, size_t n)
{
	size_t k = 0;

	while (k < n) {
		size_t dots = 0, start;
		if (p[k] == '/') {
			k++;
			continue;
		}
		start = k;
		while (k < n && p[k] != '/') {
			if (p[k] == '.')
				dots++, k++;
			else if (k + 2 < n && p[k] == '%' && p[k + 1] == '2' && (p[k + 2] == 'e' || p[k + 2] == 'E'))
				dots++, k += 3;
			else
				break;
		}
		if ((k == n || p[k] == '/') && dots > 0 && dots <= 2 && k > start)
			return true;
		while (k < n && p[k] != '/')
			k++;
	}
	return false;
}

static bool path_is(const char *path, size_t plen, const char *lit)
{
	return strlen(lit) == plen && memcmp(path, lit, plen) == 0;
}

/* Route one request head. */
static void s_head(struct hconn *c, struct http_msg *m)
{
	struct session *ss = http_owner(c);
	const char *url = m->url, *path, *q, *seg, *rest;
	size_t ulen = m->url_len, plen, seglen;
	struct service *s;
	bool get = m->method == HTTP_GET || m->method == HTTP_HEAD;

	/* absolute-form (a client that thinks we are a forward proxy) */
	if (ulen > 7 && (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0)) {
		const char *p = memchr(url + 8, '/', ulen - 8);
		ulen = p ? ulen - (size_t)(p - url) : 0;
		url = p ? p : "/";
		if (ulen == 0)
			ulen = 1;
	}
	if (ulen == 0 || url[0] != '/') {
		reply_err(c, 400, "the request target must be a path starting with '/'");
		return;
	}
	if (m->method == HTTP_CONNECT) {
		reply_err(c, 405, "CONNECT is not supported");
		return;
	}
	path = url;
	q = memchr(url, '?', ulen);
	plen = q ? (size_t)(q - url) : ulen;
	seg = url + 1;
	rest = memchr(seg, '/', plen - 1);
	if (rest == NULL)
		rest = path + plen;
	seglen = (size_t)(rest - seg);

	if (seglen > 6 && memcmp(seg, "check_", 6) == 0 && rest == path + plen) {
		if ((s = service_by_route(seg + 6, seglen - 6)) == NULL)
			reply_err(c, 404, "no service has that route_name");
		else
			ep_check(c, s);
		return;
	}
	if (seglen > 7 && memcmp(seg, "demand_", 7) == 0 && rest == path + plen) {
		if ((s = service_by_route(seg + 7, seglen - 7)) == NULL)
			reply_err(c, 404, "no service has that route_name");
		else if (admin_ok(c, m))
			ep_demand(c, s);
		return;
	}
	if (path_is(path, plen, "/info")) {
		ep_info(c);
		return;
	}
	if (path_is(path, plen, "/enable_service_management") ||
	    path_is(path, plen, "/disable_service_management") ||
	    path_is(path, plen, "/kill_disable_service_management")) {
		if (admin_ok(c, m))
			ep_management(c, path[1] == 'e', path[1] == 'k');
		return;
	}
	if (seglen == 3 && memcmp(seg, "api", 3) == 0) {
		ep_api(c, m, path, plen);
		return;
	}
	if (path_is(path, plen, "/") || path_is(path, plen, "/status")) {
		if (!get)
			reply_err(c, 405, "use GET");
		else
			ep_status_page(c);
		return;
	}

	s = service_by_route(seg, seglen);
	if (s == NULL) {
		char msg[300];
		snprintf(msg, sizeof msg, "no service is routed at /%s", log_escape(seg, seglen > 64 ? 64 : seglen));
		reply_err(c, 404, msg);
		return;
	}
	/* what the service sees: the rest of the path, query included */
	{
		const struct svc_config *cfg = service_config(s);
		const char *fwd = rest;
		size_t fwdlen = ulen - (size_t)(rest - url);
		const char *fpath = fwdlen > 0 && fwd[0] == '/' ? fwd : "/";
		size_t fplen = fwdlen > 0 && fwd[0] == '/' ? (size_t)((q ? q : url + ulen) - fwd) : 1;
		char *target = NULL;
		const struct http_hdr *wh;
		bool hold = cfg->hold;

		if (has_dot_segment(fpath, fplen)) {
			reply_err(c, 400, "the path must not contain . or .. segments");
			return;
		}
		if (cfg->api_paths != NULL) {
			bool ok = false;
			for (char **ap = cfg->api_paths; *ap && !ok; ap++) {
				size_t al = strlen(*ap);
				ok = fplen >= al && memcmp(fpath, *ap, al) == 0;
			}
			if (!ok) {
				reply_err(c, 404, "this path is not in the service's api_paths");
				return;
			}
		}
		if (fwdlen == 0 || fwd[0] != '/') {
			/* "/route" or "/route?x": the service's root */
			target = xasprintf("/%.*s", (int)fwdlen, fwd);
			fwd = target;
			fwdlen = strlen(target);
		}
		wh = http_find(m, "x-slurmgate-wait");
		if (wh && wh->vlen == 1 && wh->value[0] == '0')
			hold = false;
		proxy_begin(c, m, s, fwd, fwdlen, hold, &ss->ex);
		free(target);
	}
}

static void s_body(struct hconn *c, const char *p, size_t n)
{
	struct session *ss = http_owner(c);

	if (ss->ex)
		proxy_body(ss->ex, p, n);
}

static void s_done(struct hconn *c)
{
	struct session *ss = http_owner(c);

	if (ss->ex)
		proxy_req_done(ss->ex);
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
	free(ss);
}

static const struct hconn_ops session_ops = {
	.head = s_head,
	.body = s_body,
	.done = s_done,
	.drained = s_drained,
	.closed = s_closed,
};

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

int front_start(struct event_base *base, struct config *cfg)
{
	char spec[300];
	struct sockaddr_storage ss;
	int len = sizeof ss;

	fbase = base;
	fcfg = cfg;
	limits.max_header = cfg->max_header_size;
	limits.max_body = cfg->max_body_size;
	limits.header_timeout = cfg->header_timeout;
	limits.body_timeout = cfg->body_timeout;
	limits.keepalive_timeout = cfg->keepalive_timeout;
	limits.send_timeout = cfg->send_timeout;
	proxy_init(cfg);
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
}
