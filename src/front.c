/* front.c - the listener and the session: each request is resolved,
 * checked and either answered by the gateway (admin.c) or handed to the
 * proxy.
 *
 * Every client connection is a session: at most one request at a time
 * (pipelined ones wait in the HTTP layer). A request is either answered
 * by the gateway itself (admin.c: the seed's endpoints, /api/, /metrics,
 * the pages; here: /v1/models) or handed to the proxy: by its first path segment
 * (/<route>/...), or, on OpenAI-style /v1/... paths, by the JSON body's
 * "model" (the api key is checked on the head, then the body is read, at
 * most max_json_body bytes, and forwarded unchanged).
 *
 * Every target goes through the one resolver in router.c first: decoded
 * once, dot segments removed, refused with a 400 naming the trick if it
 * hides one. Routing, api_paths and the path sent upstream all use the
 * normalised path (as nginx does for a URI in proxy_pass).
 *
 * Access control: allowed_hosts (DNS rebinding) here; admin_token,
 * api_keys and cross-site requests to state-changing endpoints (CSRF) in
 * auth.c; which client headers the proxy may believe (trusted_proxies) or
 * pass on (forward_authorization) here too. The decisions are access.c's. */
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
#include "accesslog.h"
#include "admin.h"
#include "auth.h"
#include "config.h"
#include "events.h"
#include "gw.h"
#include "http.h"
#include "launcher.h"
#include "log.h"
#include "proxy.h"
#include "reply.h"
#include "router.h"
#include "service.h"
#include "usage.h"
#include "util.h"

struct session {
	struct hconn *c;
	struct exchange *ex;
	bool events;               /* an /api/events subscriber */
	struct evbuffer *v1body;   /* an OpenAI request's body, read before routing */
	const struct http_msg *v1msg;
	bool v1feedback;
	struct form_scan *form;    /* a multipart/form-data /v1 body: the scan for its model */
	struct route_target rt;    /* the current request's resolved target */
	struct accesslog_note note; /* the current request, for the access log */
};

/* Model names (service names and aliases), sorted, for /v1 routing. */
struct model {
	const char *name;
	struct service *svc;
};

static struct gw *gw;
static struct http_limits limits;
static struct evconnlistener *listener;
static struct event *resume_ev;
static struct model *models;
static size_t nmodels;

/* allowed_hosts, against DNS rebinding: 421 for any other Host (before
 * routing: http_reply_error shapes it by the target, OpenAI's on /v1). */
static bool host_ok(struct hconn *c, const struct http_msg *m)
{
	const struct http_hdr *h = http_find(m, "host");
	char msg[300];

	if (gw->cfg->allowed_hosts == NULL)
		return true;
	if (h != NULL && router_host_allowed(h->value, h->vlen, gw->cfg->allowed_hosts))
		return true;
	snprintf(msg, sizeof msg, "this gateway does not serve the host \"%s\" (allowed_hosts)",
		 h ? log_escape(h->value, h->vlen > 100 ? 100 : h->vlen) : "");
	http_reply_error(c, 421, SG_SEC_HEADERS_DATA, msg);
	return false;
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

/* "ready", "stopped", "pending: Resources" (a queued start, as its
 * launcher describes it), "starting", ... */
static void short_state(const struct service *s, char *buf, size_t len)
{
	enum svc_state st = service_state(s);
	const struct launcher_ops *lops = service_config(s)->launcher;

	snprintf(buf, len, "%s", service_state_name(st));
	if (st != SVC_STARTING)
		return;
	if (lops->describe == NULL)
		return;
	for (struct instance *i = service_first_instance(s); i; i = service_next_instance(i)) {
		json_t *d;
		const char *pending;
		if (i->state != INST_STARTING)
			continue;
		d = json_object();
		lops->describe(i, d);
		pending = json_string_value(json_object_get(d, "pending"));
		if (pending != NULL)
			snprintf(buf, len, "pending: %s", pending);
		json_decref(d);
		if (pending != NULL)
			return;
	}
}

/* One entry of GET /v1/models, also GET /v1/models/{id}'s answer. */
static json_t *model_json(const char *name, const struct service *s)
{
	char st[300];

	short_state(s, st, sizeof st);
	return json_pack("{s:s,s:s,s:i,s:s,s:s,s:s}", "id", name, "object", "model", "created", 0,
			 "owned_by", "slurmgate", "service", service_config(s)->name, "state", st);
}

/* The api key of M when keys are configured (auth_key passed), else NULL. */
static const struct api_key *request_key(const struct http_msg *m)
{
	size_t len;
	const char *t = access_bearer(m, &len);

	return gw->cfg->n_api_keys > 0 ? access_key_find(t, len) : NULL;
}

static void ep_models(struct hconn *c, const struct http_msg *m)
{
	json_t *data;
	const struct api_key *k;

	if (!auth_key(c, m, NULL, true))
		return;
	data = json_array();
	k = request_key(m);
	for (size_t q = 0; q < nmodels; q++) {
		struct service *s = models[q].svc;
		if (k && !access_key_allows(k, s))
			continue;
		json_array_append_new(data, model_json(models[q].name, s));
	}
	reply_json(c, 200, json_pack("{s:s,s:o}", "object", "list", "data", data), NULL);
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch = (char)(ch | 0x20);
	return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* GET /v1/models/{id} (the SDK's models.retrieve): the list's entry for
 * ID, or an OpenAI 404 (also for a model the key may not use, as the list
 * hides it). ID is the raw rest of the target, percent-decoded here: model
 * ids hold '/' ("org/Model-7B", which the SDK sends as %2F), and this is
 * the gateway's own answer, so nothing is forwarded. */
static void ep_model(struct hconn *c, const struct http_msg *m, const char *raw, size_t rlen)
{
	char *id = xmalloc(rlen + 1), msg[400];
	size_t n = 0;
	const struct api_key *k;
	struct service *s;

	for (size_t q = 0; q < rlen && raw[q] != '?' && raw[q] != '#'; q++) {
		if (raw[q] == '%' && q + 2 < rlen && hexval(raw[q + 1]) >= 0 && hexval(raw[q + 2]) >= 0) {
			id[n++] = (char)(hexval(raw[q + 1]) * 16 + hexval(raw[q + 2]));
			q += 2;
		} else {
			id[n++] = raw[q];
		}
	}
	id[n] = '\0';
	if (!auth_key(c, m, NULL, true))
		goto out;
	k = request_key(m);
	s = strlen(id) == n ? model_find(id) : NULL;
	if (s == NULL || (k && !access_key_allows(k, s))) {
		snprintf(msg, sizeof msg, "The model '%s' does not exist; GET /v1/models lists them",
			 log_escape(id, n > 200 ? 200 : n));
		reply_openai_err(c, 404, "invalid_request_error", "model_not_found", msg, NULL);
		goto out;
	}
	reply_json(c, 200, model_json(id, s), NULL);
out:
	free(id);
}

/* Does the client read an event stream? */
static bool wants_sse(const struct http_msg *m)
{
	const struct http_hdr *h = http_find(m, "accept");

	/* only a client that reads nothing else: one that takes JSON too (an
	 * MCP client) may get JSON, which an early event-stream head would
	 * turn into a stream its parser drops */
	return h != NULL && memmem(h->value, h->vlen, "text/event-stream", 17) != NULL &&
	       memmem(h->value, h->vlen, "json", 4) == NULL && memmem(h->value, h->vlen, "*/*", 3) == NULL;
}

/* Does the client ask not to wait for a start (X-Slurmgate-Wait: 0)? */
static bool no_wait(const struct http_msg *m)
{
	const struct http_hdr *wh = http_find(m, "x-slurmgate-wait");

	return wh && wh->vlen == 1 && wh->value[0] == '0';
}

/* Forward options for request M from C to S (KEYBUF: the key id's room). */
static void fwd_opts(struct hconn *c, const struct http_msg *m, const struct service *s,
		     struct proxy_opts *opt, char *keybuf)
{
	opt->strip_auth = gw->cfg->n_api_keys > 0 || !service_config(s)->forward_authorization;
	opt->trust_forwarded = access_peer_trusted(c);
	opt->full_reasons = auth_output_open();
	key_id(request_key(m), keybuf);
	opt->key_id = keybuf;
}

/* The upstream target: the normalised path and the query as sent. */
static char *upstream_target(const char *path, size_t plen, const struct route_target *rt)
{
	size_t qlen = rt->query ? rt->qlen : 0;
	char *t = xmalloc(plen + qlen + 1);   /* no printf: on every proxied request */

	memcpy(t, path, plen);
	if (qlen)
		memcpy(t + plen, rt->query, qlen);
	t[plen + qlen] = '\0';
	return t;
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
	free(ss->form);
	ss->form = NULL;
	if (ss->v1body == NULL)
		return;
	http_buffer_untrack(ss->v1body);
	evbuffer_free(ss->v1body);
	ss->v1body = NULL;
	ss->v1msg = NULL;
	http_set_owned(ss->c, 0);
}

/* Forward the /v1 request of SS to the service of MODEL, with the body
 * read so far (ss->v1body); the rest, if any, follows in s_body. */
static void v1_forward(struct session *ss, const char *model, bool stream, bool done)
{
	struct hconn *c = ss->c;
	const struct http_msg *m = ss->v1msg;
	char *target;
	struct service *s;
	struct proxy_opts opt = {0};
	char msg[400], keybuf[KEY_ID_MAX];

	s = model_find(model);
	if (s == NULL) {
		snprintf(msg, sizeof msg, "The model '%s' does not exist; GET /v1/models lists them",
			 log_escape(model, strlen(model)));
		reply_openai_err(c, 404, "invalid_request_error", "model_not_found", msg, NULL);
		return;
	}
	free(ss->note.service);
	ss->note.service = xstrdup(service_config(s)->name);
	str_copy(ss->note.key, sizeof ss->note.key, auth_key_id(c, m));
	if (!auth_key(c, m, s, true))
		return;
	if (!router_path_allowed(ss->rt.dpath, ss->rt.dlen, service_config(s)->api_paths)) {
		reply_openai_err(c, 404, "invalid_request_error", "path_not_allowed",
				 "this path is not in the service's api_paths", NULL);
		return;
	}
	opt.hold = service_config(s)->hold && !no_wait(m);
	opt.openai = true;
	opt.feedback = ss->v1feedback || stream;
	fwd_opts(c, m, s, &opt, keybuf);
	opt.note = &ss->note;
	target = upstream_target(ss->rt.path, ss->rt.plen, &ss->rt);
	proxy_begin(c, m, s, target, strlen(target), &opt, &ss->ex);
	free(target);
	/* the body read so far, piece by piece (never linearised: a form's
	 * audio may precede its model) */
	while (ss->ex && evbuffer_get_length(ss->v1body) > 0) {
		struct evbuffer_iovec v[8];
		int k = evbuffer_peek(ss->v1body, -1, NULL, v, 8);
		size_t sent = 0;
		for (int j = 0; j < k && j < 8 && ss->ex; j++) {
			proxy_body(ss->ex, v[j].iov_base, v[j].iov_len);
			sent += v[j].iov_len;
		}
		evbuffer_drain(ss->v1body, sent);
	}
	if (ss->ex && done)
		proxy_req_done(ss->ex);
}

/* A multipart/form-data /v1 body has more bytes (P, N; already in
 * ss->v1body): route it once its "model" field is read. */
static void v1_form_feed(struct session *ss, const char *p, size_t n, bool done)
{
	struct hconn *c = ss->c;
	char *model = NULL;

	switch (router_form_feed(ss->form, p, n, &model)) {
	case FORM_MORE:
		if (done)
			goto no_model;
		if (evbuffer_get_length(ss->v1body) > (size_t)gw->cfg->max_form_scan) {
			v1body_free(ss);
			reply_openai_err(c, 413, "invalid_request_error", "request_too_large",
					 "the form's \"model\" field does not come within max_form_scan bytes",
					 NULL);
		}
		return;
	case FORM_OK:
		v1_forward(ss, model, false, done);
		free(model);
		v1body_free(ss);
		return;
	case FORM_NO_MODEL:
	no_model:
		v1body_free(ss);
		reply_openai_err(c, 400, "invalid_request_error", "model_required",
				 "the form needs a \"model\" field", NULL);
		return;
	case FORM_BAD:
		v1body_free(ss);
		reply_openai_err(c, 400, "invalid_request_error", "invalid_form",
				 "the body is not a well-formed multipart/form-data form", NULL);
		return;
	}
}

/* The whole body of a /v1 request is here: route it by its "model". */
static void v1_route(struct session *ss)
{
	struct hconn *c = ss->c;
	size_t n = evbuffer_get_length(ss->v1body);
	const char *body;
	char *model = NULL;
	bool stream = false;

	if (ss->form) {
		v1_form_feed(ss, "", 0, true);
		return;
	}
	body = (const char *)evbuffer_pullup(ss->v1body, -1);
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
	v1_forward(ss, model, stream, true);
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
	const struct http_hdr *acc;
	struct proxy_opts opt = {0};
	char keybuf[KEY_ID_MAX];

	free(ss->note.service);
	ss->note.service = xstrdup(cfg->name);
	str_copy(ss->note.key, sizeof ss->note.key, auth_key_id(c, m));
	if (!auth_key(c, m, s, false))
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
		admin_waiting_page(c, s);
		return;
	}
	opt.hold = cfg->hold && !no_wait(m);
	opt.feedback = wants_sse(m);
	fwd_opts(c, m, s, &opt, keybuf);
	opt.note = &ss->note;
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
	const struct http_hdr *ct;
	bool get = m->method == HTTP_GET || m->method == HTTP_HEAD;

	router_target_free(&ss->rt);
	accesslog_note_reset(&ss->note);
	if (!host_ok(c, m))
		return;
	if (m->method == HTTP_CONNECT) {
		reply_err(c, 405, "CONNECT is not supported");
		return;
	}
	if (get && m->url_len > 11 && memcmp(m->url, "/v1/models/", 11) == 0) {
		ep_model(c, m, m->url + 11, m->url_len - 11);
		return;
	}
	if (router_resolve(m->url, m->url_len, &ss->rt, &cause) != 0) {
		http_reply_error(c, 400, SG_SEC_HEADERS_DATA, cause);   /* OpenAI's shape on /v1 */
		return;
	}
	path = ss->rt.dpath;
	plen = ss->rt.dlen;
	router_split(&ss->rt, &seg, &seglen, &rest, &restlen, &drest, &drestlen);

	if (admin_serve(c, m, &ss->rt, &ss->events))
		return;
	if (seglen == 2 && memcmp(seg, "v1", 2) == 0) {
		if (path_is(path, plen, "/v1/models") && get) {
			ep_models(c, m);
			return;
		}
		/* the api key first, on the head: no body is read for a stranger */
		if (!auth_key(c, m, NULL, true))
			return;
		ct = http_find(m, "content-type");
		if (ct != NULL && ct->vlen >= 10 && strncasecmp(ct->value, "multipart/", 10) == 0) {
			/* a form (/v1/audio/...): route by its "model" field, read
			 * up to max_form_scan bytes; the rest streams */
			struct form_scan *fs = xmalloc(sizeof *fs);
			if (router_form_start(fs, ct->value, ct->vlen) != 0) {
				free(fs);
				reply_openai_err(c, 400, "invalid_request_error", "invalid_form",
						 "a multipart body needs multipart/form-data with a boundary",
						 NULL);
				return;
			}
			v1body_start(ss, m);
			ss->form = fs;
			return;
		}
		if (m->content_length > gw->cfg->max_json_body) {
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
	else if (ss->form) {
		evbuffer_add(ss->v1body, p, n);
		http_set_owned(c, evbuffer_get_length(ss->v1body));
		v1_form_feed(ss, p, n, false);
	} else if (ss->v1body) {
		if (evbuffer_get_length(ss->v1body) + n > (size_t)gw->cfg->max_json_body) {
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
		events_unsubscribe(c);
	v1body_free(ss);
	router_target_free(&ss->rt);
	accesslog_note_reset(&ss->note);
	free(ss);
}

static void s_finished(struct hconn *c, const struct http_msg *m, const struct http_xfer *x)
{
	accesslog_write(c, m, x, &((struct session *)http_owner(c))->note);
}

/* The HTTP layer's own answers (bad syntax, too big, too slow): no owner,
 * no service, no key */
static void layer_finished(struct hconn *c, const struct http_msg *m, const struct http_xfer *x)
{
	struct accesslog_note n = {.service = NULL, .instance = -1, .wait = -1};

	accesslog_write(c, m, x, &n);
}

static const struct hconn_ops session_ops = {
	.finished = s_finished,
	.head = s_head,
	.body = s_body,
	.done = s_done,
	.drained = s_drained,
	.closed = s_closed,
};

/* --- the listener --- */

/* Connections refused at max_connections: the first of a run is logged,
 * the others counted and logged once per log_repeat_interval (full_ev), so
 * that a flood of connect()s costs a few log lines, not one each. */
static struct event *full_ev;
static unsigned long full_repeats;
static double full_since;

static void full_flush(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	if (full_repeats > 0)
		log_warn("max_connections (%d) reached: refused %lu more connections in the last %.0f s",
			 gw->cfg->max_connections, full_repeats, now_s() - full_since);
	full_repeats = 0;
	full_since = 0;
}

static void refuse_full(evutil_socket_t fd)
{
	evutil_closesocket(fd);
	if (full_since > 0 && gw->cfg->log_repeat_interval > 0) {
		full_repeats++;
		return;
	}
	log_warn("max_connections (%d) reached: refusing a connection", gw->cfg->max_connections);
	if (gw->cfg->log_repeat_interval > 0) {
		full_since = now_s();
		event_add(full_ev, &(struct timeval){gw->cfg->log_repeat_interval, 0});
	}
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
		      void *arg)
{
	struct session *ss;

	(void)l, (void)sa, (void)salen, (void)arg;
	if (http_count(true) >= (size_t)gw->cfg->max_connections) {
		refuse_full(fd);
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

/* Index model names and api keys of the config in force. */
static void build_indexes(void)
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

	access_configure(gw);
	auth_configure(gw);
}

void front_reconfigure(void)
{
	const struct config *cfg = gw->cfg;

	/* connections share this struct: new limits apply at once */
	limits.max_header = cfg->max_header_size;
	limits.max_body = cfg->max_body_size;
	limits.header_timeout = cfg->header_timeout;
	limits.body_timeout = cfg->body_timeout;
	limits.keepalive_timeout = cfg->keepalive_timeout;
	limits.send_timeout = cfg->send_timeout;
	proxy_init(gw);
	build_indexes();
}

int front_start(struct gw *g)
{
	const struct config *cfg = g->cfg;
	struct event_base *base = g->base;
	char spec[300];
	struct sockaddr_storage ss;
	int len = sizeof ss;

	gw = g;
	front_reconfigure();
	events_init(base);
	http_set_layer_log(layer_finished);
	http_set_openai_prefix("/v1");   /* the layer's own errors there too */
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
	full_ev = evtimer_new(base, full_flush, NULL);
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
	if (full_ev) {
		full_flush(-1, 0, NULL);   /* what is still counted */
		event_free(full_ev);
	}
	full_ev = NULL;
	events_free();
	free(models);
	models = NULL;
	access_free();
	usage_free();
}
