/* proxy.c - one request through the gateway to a service instance. */
#include "proxy_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <http_parser.h>
#include <jansson.h>

#include "access.h"
#include "accesslog.h"
#include "config.h"
#include "gw.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "refusal.h"
#include "reply.h"
#include "router.h"
#include "service.h"
#include "usage.h"
#include "util.h"

/* Body bytes held for a request whose service is not ready yet, before we
 * stop reading the client (it then waits in its own TCP window). All held
 * requests together keep at most max_held_body (held_total). */
#define HELD_BODY_MAX (1024 * 1024)
/* Bytes of a service's error body kept for the error event of a stream
 * whose head went out early. */
#define ERRBODY_MAX (16 * 1024)
/* Ended exchanges kept for the next requests (none under ASan, which
 * then sees every use after the end). */
#if defined(__SANITIZE_ADDRESS__)
#define SPARE_MAX 0
#else
#define SPARE_MAX 256
#endif

struct gw *px_gw;
static size_t nactive;
static size_t held_total;   /* held body bytes of all exchanges */
static struct exchange *spares;
static size_t nspares;

static void up_connected(struct hconn *c);
static void up_head(struct hconn *c, struct http_msg *m);
static void up_body(struct hconn *c, const char *p, size_t n);
static void up_done(struct hconn *c);
static void up_closed(struct hconn *c, const char *why);
static void up_drained(struct hconn *c);

static const struct hconn_ops up_ops = {
	.connected = up_connected,
	.head = up_head,
	.body = up_body,
	.done = up_done,
	.closed = up_closed,
	.drained = up_drained,
};

void proxy_init(struct gw *g)
{
	px_gw = g;
	http_set_buffer_cap((size_t)g->cfg->max_buffer_bytes);
	refusal_configure(g->base, g->cfg->log_repeat_interval);
}

size_t proxy_held_bytes(void)
{
	return held_total;
}

size_t proxy_active(void)
{
	return nactive;
}

/* The end of an exchange: detach from both sides, report to the instance. */
static void ex_end(struct exchange *ex, bool keep_up)
{
	struct hconn *up = ex->up;

	if (ex->slot)
		*ex->slot = NULL;
	service_cancel(&ex->w);
	ex->up = NULL;
	if (up != NULL) {
		if (keep_up && ex->inst)
			instance_pool_put(ex->inst, up);
		else {
			http_set_owner(up, NULL, NULL);
			http_close(up, "exchange ended");
		}
	}
	if (ex->inst) {
		struct instance *i = ex->inst;
		ex->inst = NULL;
		instance_release(i, &ex->w);
	}
	if (ex->fb_ev)
		event_free(ex->fb_ev);
	held_total -= ex->held_n;
	if (ex->errbody)
		evbuffer_free(ex->errbody);
	if (ex->tail)
		evbuffer_free(ex->tail);
	if (ex->verdict_ev)
		event_free(ex->verdict_ev);
	for (int k = 0; k < ex->ntried; k++)
		instance_unref(ex->tried[k]);
	px_cut_free(ex);
	free(ex->verdict_why);
	free(ex->aborted);
	if (ex->body) {
		http_buffer_untrack(ex->body);
		evbuffer_free(ex->body);
	}
	if (ex->head != ex->headbuf)
		free(ex->head);
	service_unref(ex->svc);
	nactive--;
#if SPARE_MAX > 0
	if (nspares < SPARE_MAX) {
		ex->next_spare = spares;
		spares = ex;
		nspares++;
		return;
	}
#endif
	free(ex);
}

/* The tunnel of an upgraded exchange closed (its first side): the
 * request is over. */
static void tunnel_ended(void *arg)
{
	struct exchange *ex = arg;

	ex->tun[0] = ex->tun[1] = NULL;
	ex_end(ex, false);
}

static struct exchange *ex_new(void)
{
	struct exchange *ex = spares;

	if (ex == NULL)
		return xcalloc(1, sizeof *ex);
	spares = ex->next_spare;
	nspares--;
	memset(ex, 0, offsetof(struct exchange, tail_s));
	return ex;
}


/* The class of a refusal the gateway answers itself, for /metrics: a 503
 * ("not now"), or the 502 of a failed start (NULL: not a refusal, such as
 * a 502 from a broken connection). */
static const char *refusal_kind(const struct service *s, int status, const char *reason)
{
	static const struct { const char *reason, *kind; } known[] = {
		{"the service is starting; retry later", "starting"},
		{"service management is disabled", "management_disabled"},
		{"the gateway is shutting down", "shutting_down"},
		{"the service was removed from the config", "removed"},
	};
	const char *last = service_last_error(s);
	/* last_error may hold a truncated copy of a long reason */
	bool start_failed = last[0] && strncmp(reason, last, strlen(last)) == 0;

	if (status == 502)
		return start_failed ? "start_failed" : NULL;
	if (status != 503)
		return NULL;
	for (size_t k = 0; k < sizeof known / sizeof *known; k++)
		if (strcmp(reason, known[k].reason) == 0)
			return known[k].kind;
	return "stopped";
}

/* OpenAI's error "type" (and "code") for a status the gateway answers
 * with; KIND is its refusal_kind(). */
static const char *err_type(int status, const char *kind)
{
	if (kind != NULL && strcmp(kind, "start_failed") == 0)
		return "start_failed";
	return status == 503 ? "service_unavailable" : "upstream_error";
}

static const char *err_code(int status, const char *kind)
{
	if (kind != NULL && strcmp(kind, "start_failed") == 0)
		return "start_failed";
	switch (status) {
	case 503: return "service_unavailable";
	case 504: return "upstream_timeout";
	default: return "upstream_error";
	}
}

/* Where the event stream relayed to a client stands: an error event may
 * only follow a whole event (after a partial one, its blank line would
 * complete that event, cut as it is). 0 (nothing relayed) is a boundary. */
enum { SSE_EVENT_END, SSE_IN_LINE, SSE_LINE_END };

static void sse_track(struct exchange *ex, const char *p, size_t n)
{
	for (size_t k = 0; k < n; k++) {
		if (p[k] == '\n' && ex->sse_cr) {
			ex->sse_cr = false;   /* the LF of a CRLF */
			continue;
		}
		ex->sse_cr = p[k] == '\r';
		if (p[k] == '\r' || p[k] == '\n')
			ex->sse_at = ex->sse_at == SSE_IN_LINE ? SSE_LINE_END : SSE_EVENT_END;
		else
			ex->sse_at = SSE_IN_LINE;
	}
}

/* Answer the client with an error of our own (if nothing was sent yet):
 * in OpenAI's shape on /v1 (opts.openai), else the gateway's own. */
static void ex_fail(struct exchange *ex, int status, const char *reason, int retry_after)
{
	const struct svc_config *cfg = service_config(ex->svc);
	const char *kind = refusal_kind(ex->svc, status, reason);
	char extra[512] = SG_SEC_HEADERS_DATA;
	json_t *o;
	char *body, *cut = ex->full_reasons ? NULL : access_redact_output(reason, cfg->name);
	const char *full = reason;

	if (cut != NULL)
		reason = cut;   /* the output it quotes is for the logs' readers (auth.h) */

	/* a relayed head that has not reached the client yet gives way to the error */
	if (ex->down && !ex->early_head && http_response_started(ex->down))
		http_response_retract(ex->down);
	if (ex->down && ex->early_head && ex->sse_at == SSE_EVENT_END) {
		/* the stream is open: end it with an OpenAI-style error event */
		o = json_pack("{s:{s:s,s:s,s:i}}", "error", "message", reason, "type",
			      err_type(status, kind), "code", status);
		body = json_dumps(o, JSON_COMPACT);
		px_sse_printf(ex->down, "%sdata: %s\n\n", px_sse_error_name(ex), body);
		http_finish(ex->down);
		free(body);
		json_decref(o);
	} else if (ex->down && !http_response_started(ex->down)) {
		if (retry_after > 0)
			snprintf(extra, sizeof extra, "%sRetry-After: %d\r\n", SG_SEC_HEADERS_DATA,
				 retry_after);
		if (ex->openai) {
			o = json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", reason, "type",
				      err_type(status, kind), "param", "code", err_code(status, kind));
		} else {
			o = json_pack("{s:s,s:s,s:i}", "error", reason, "service", cfg->name, "status",
				      status);
			if (retry_after > 0)
				json_object_set_new(o, "retry_after", json_integer(retry_after));
		}
		body = reply_dumps(o, true);
		http_reply(ex->down, status, "application/json", extra, body, strlen(body));
		free(body);
		json_decref(o);
	} else if (ex->down && ex->sse && !ex->discard_body && !http_response_sized(ex->down) &&
		   ex->sse_at == SSE_EVENT_END) {
		/* the service's event stream is under way: end it with an error event
		 * (not inside a Content-Length nor after a cut event: the close
		 * below says it then, and an SSE parser drops the cut event) */
		o = json_pack("{s:{s:s,s:s,s:i}}", "error", "message", reason, "type", "upstream_error",
			      "code", status);
		body = json_dumps(o, JSON_COMPACT);
		px_sse_printf(ex->down, "\n\n%sdata: %s\n\n", px_sse_error_name(ex), body);
		http_finish(ex->down);
		free(body);
		json_decref(o);
	} else if (ex->down) {
		struct hconn *d = ex->down;   /* mid-response: all we can do */
		ex->down = NULL;
		if (ex->slot)
			*ex->slot = NULL;
		ex->slot = NULL;
		http_close(d, reason);
	}
	if (status >= 100 && status < 600)
		service_metrics(ex->svc)->by_status[status]++;
	refusal_note(cfg->name, status, full, kind);
	free(cut);
	ex_end(ex, false);
}

static void send_request(struct exchange *ex)
{
	size_t n = ex->body ? evbuffer_get_length(ex->body) : 0;

	ex->t_sent = now_s();
	held_total -= ex->held_n;
	ex->held_n = 0;
	http_send_head(ex->up, ex->head, ex->headlen, ex->req_chunked, ex->head_req);
	if (n > 0) {
		/* send the held body chunk by chunk, without linearising it */
		struct evbuffer_iovec v[16];
		while ((n = evbuffer_get_length(ex->body)) > 0) {
			int k = evbuffer_peek(ex->body, -1, NULL, v, 16);
			size_t sent = 0;
			for (int j = 0; j < k && j < 16; j++) {
				http_send(ex->up, v[j].iov_base, v[j].iov_len);
				sent += v[j].iov_len;
			}
			evbuffer_drain(ex->body, sent);
		}
	}
	if (ex->req_done)
		http_finish(ex->up);
	ex->up_sent = true;
	http_set_timeout(ex->up, px_gw->cfg->upstream_timeout);
	if (ex->down)
		http_pause(ex->down, false);
}

static void ex_connect(struct exchange *ex)
{
	struct instance *i = ex->inst;

	ex->up_connected = false;
	ex->reused = false;
	ex->up = http_connect((struct sockaddr *)&i->addr, i->addrlen, px_gw->cfg->upstream_connect_timeout,
			      &up_ops, ex);
}

/* An instance is ready for this request: get a connection to it. */
static void ex_go(struct exchange *ex, struct instance *i)
{
	ex->inst = i;
	if (ex->held)
		ex->waited = now_s() - ex->t0;
	if (ex->fb_ev)
		event_del(ex->fb_ev);
	if (ex->early_head && ex->down)
		px_sse_printf(ex->down, ": slurmgate: ready after %.1f s\n\n", ex->waited);
	if (ex->note && ex->down) {
		ex->note->instance = i->index;
		ex->note->wait = ex->held ? ex->waited : -1;
	}
	ex->up = instance_pool_get(i);
	if (ex->up != NULL) {
		ex->reused = true;
		ex->up_connected = true;
		http_set_owner(ex->up, &up_ops, ex);
		send_request(ex);
	} else {
		ex_connect(ex);
	}
}

static struct exchange *of_waiter(struct waiter *w)
{
	return (struct exchange *)((char *)w - offsetof(struct exchange, w));
}

static void w_ready(struct waiter *w, struct instance *i)
{
	ex_go(of_waiter(w), i);
}

static void w_fail(struct waiter *w, int status, const char *reason, int retry_after)
{
	ex_fail(of_waiter(w), status, reason, retry_after);
}

/* The instance this request runs on is gone or held: end it with REASON. */
static void w_abort(struct waiter *w, int status, const char *reason)
{
	struct exchange *ex = of_waiter(w);

	ex->inst = NULL;   /* detached already */
	if (px_cut_aborted(ex, reason))
		return;
	if (ex->tun[0]) {
		/* an upgraded connection: the close ends the exchange */
		http_close(ex->tun[0], reason);
		return;
	}
	if (ex->checking) {
		/* from inside suspect_instance(), which answers */
		free(ex->aborted);
		ex->aborted = xstrdup(reason);
		return;
	}
	ex_fail(ex, status, reason, 0);
}


void proxy_begin(struct hconn *down, const struct http_msg *m, struct service *svc,
		 const char *path, size_t plen, const struct proxy_opts *o, struct exchange **slot)
{
	struct exchange *ex = ex_new();
	struct instance *inst = NULL;
	const char *reason = NULL;
	int status = 0, retry_after = 0, r;

	nactive++;
	ex->down = down;
	ex->slot = slot;
	*slot = ex;
	ex->svc = svc;
	service_ref(svc);   /* until the exchange is freed: it may outlive a reload */
	ex->req_chunked = m->chunked;
	ex->req_has_body = m->chunked || m->content_length > 0;
	ex->head_req = m->method == HTTP_HEAD;
	ex->idempotent = m->method == HTTP_GET || m->method == HTTP_HEAD || m->method == HTTP_OPTIONS ||
			 m->method == HTTP_PUT || m->method == HTTP_DELETE;
	ex->w.ready = w_ready;
	ex->w.fail = w_fail;
	ex->w.abort = w_abort;
	ex->feedback = o->feedback;
	ex->strip_auth = o->strip_auth;
	ex->trust_fwd = o->trust_forwarded;
	ex->note = o->note;
	ex->openai = o->openai;
	ex->full_reasons = o->full_reasons;
	{
		const char *key = o->key_id ? o->key_id : "-";
		size_t klen = strnlen(key, sizeof ex->key - 1);
		memcpy(ex->key, key, klen);
		ex->key[klen] = '\0';
	}
	usage_request(service_config(svc)->name, ex->key);
	px_build_head(ex, down, m, path, plen);
	r = service_request(svc, &ex->w, o->hold, &inst, &status, &reason, &retry_after);
	if (r == 0) {
		ex_go(ex, inst);
	} else if (r == 1) {
		ex->t0 = now_s();   /* only a held request's wait is timed */
		ex->held = true;
		if (held_total >= (size_t)px_gw->cfg->max_held_body && ex->req_has_body)
			http_pause(down, true);   /* the budget is spent: wait in the TCP window */
		if (ex->feedback)
			px_feedback_start(ex);
	} else
		ex_fail(ex, status, reason, retry_after);
}

void proxy_body(struct exchange *ex, const char *p, size_t n)
{
	if (ex->up_sent && ex->up) {
		http_send(ex->up, p, n);
		if (http_out_full(ex->up)) {
			http_pause(ex->down, true);
			http_want_drain(ex->up);
		}
	} else {
		if (ex->body == NULL) {
			ex->body = evbuffer_new();
			http_buffer_track(ex->body);   /* held bodies count in the memory budget */
		}
		evbuffer_add(ex->body, p, n);
		ex->held_n += n;
		held_total += n;
		if (evbuffer_get_length(ex->body) > HELD_BODY_MAX ||
		    held_total >= (size_t)px_gw->cfg->max_held_body)
			http_pause(ex->down, true);
	}
}

void proxy_req_done(struct exchange *ex)
{
	ex->req_done = true;
	if (ex->up_sent && ex->up)
		http_finish(ex->up);
}

void proxy_down_drained(struct exchange *ex)
{
	if (ex->up)
		http_pause(ex->up, false);
}

void proxy_down_closed(struct exchange *ex)
{
	ex->down = NULL;
	ex_end(ex, false);   /* closes the upstream: the service stops working for nobody */
}

/* --- upstream side --- */

static void up_connected(struct hconn *c)
{
	struct exchange *ex = http_owner(c);

	ex->up_connected = true;
	send_request(ex);
}

static void up_drained(struct hconn *c)
{
	struct exchange *ex = http_owner(c);

	if (ex->down)
		http_pause(ex->down, false);
}


static void up_head(struct hconn *c, struct http_msg *m)
{
	struct exchange *ex = http_owner(c);
	const struct http_hdr *ct = NULL;
	char stack[2048];
	struct hbuf b = {.p = stack, .cap = sizeof stack};

	if (m->status == 101 && !ex->upgrade) {
		/* one request, one final response: a protocol switch nobody asked for is not one */
		ex_fail(ex, 502, "the service switched protocols, but the client asked for no upgrade", 0);
		return;
	}
	if (m->status >= 100 && m->status < 600)
		service_metrics(ex->svc)->by_status[m->status]++;
	histo_observe(&service_metrics(ex->svc)->ttfb, now_s() - ex->t_sent);
	if (ex->down == NULL)
		return;
	/* the response's fields but the hop-by-hop ones, in one pass; and
	 * never Service-Worker-Allowed: a service's worker stays within its
	 * /<route>/ (with "/" it would serve the status page and read the
	 * admin token of every later request in the origin) */
	for (size_t k = 0; k < m->nhdrs; k++) {
		const struct http_hdr *h = &m->hdrs[k];
		if (ct == NULL && NAME_IS(h->name, h->nlen, "content-type"))
			ct = h;
		if (NAME_IS(h->name, h->nlen, "service-worker-allowed"))
			continue;
		if (!ex->early_head && !http_hop_by_hop(h, m))
			px_hb_field(&b, h->name, h->nlen, h->value, h->vlen);
	}
	if (m->status >= 200 && m->status < 300) {
		/* an OpenAI-style answer: its "usage" comes at its end */
		if (ct && ((ct->vlen >= 16 && strncase_eq(ct->value, 16, "application/json")) ||
			   (ct->vlen >= 17 && strncase_eq(ct->value, 17, "text/event-stream"))))
			ex->want_tail = true;
	}
	if (ex->early_head) {
		const struct http_hdr *ce = http_find(m, "content-encoding");
		/* our head went out already, with no Content-Encoding: a service
		 * that compressed anyway (it was asked for identity) cannot be
		 * relayed; a service error becomes an error event */
		if (m->status < 300 && ce && !(ce->vlen == 8 && strncase_eq(ce->value, 8, "identity"))) {
			ex_fail(ex, 502, "the service compressed its answer (Content-Encoding), "
				"though asked for identity", 0);
			return;
		}
		if (m->status >= 300) {
			/* kept (up to ERRBODY_MAX) for the error event at its end */
			ex->discard_body = true;
			ex->err_status = m->status;
			ex->errbody = evbuffer_new();
		}
		ex->resp_started = true;
		return;
	}
	if (ex->held) {
		char cs[64];
		int n = snprintf(cs, sizeof cs, "X-Slurmgate-Cold-Start: %.3f\r\n", ex->waited);
		px_hb_add(&b, cs, (size_t)n);
	}
	if (m->status == 101) {
		const struct http_hdr *u = http_find(m, "upgrade");
		HB_LIT(&b, "Connection: upgrade\r\n");
		px_hb_field(&b, "Upgrade", 7, u ? u->value : "", u ? u->vlen : 0);
	}
	ex->resp_started = true;
	ex->sse = ct && ct->vlen >= 17 && strncase_eq(ct->value, 17, "text/event-stream");
	http_respond_n(ex->down, m->status, b.p, b.n,
		       (m->content_length >= 0 && !m->chunked) ? m->content_length : -1);
	if (b.heap)
		free(b.p);
	if (m->status == 101 && ex->upgrade) {
		struct hconn *down = ex->down, *up = ex->up;
		/* from now on the two connections carry raw bytes; the exchange
		 * stays a request in flight on its instance until the tunnel
		 * ends (the service's idle timeout counts from then) */
		ex->down = NULL;
		ex->up = NULL;
		if (ex->slot)
			*ex->slot = NULL;
		ex->slot = NULL;
		ex->tun[0] = down;
		ex->tun[1] = up;
		http_set_owner(up, NULL, NULL);
		http_tunnel(down, up, px_gw->cfg->upstream_timeout, tunnel_ended, ex);
	}
}

/* Keep the response's last TAIL_MAX bytes: in tail_s while they fit. */
static void tail_add(struct exchange *ex, const char *p, size_t n)
{
	size_t have;

	if (ex->tail == NULL) {
		if (ex->tail_n + n <= sizeof ex->tail_s) {
			memcpy(ex->tail_s + ex->tail_n, p, n);
			ex->tail_n += n;
			return;
		}
		ex->tail = evbuffer_new();
		evbuffer_add(ex->tail, ex->tail_s, ex->tail_n);
		ex->tail_n = 0;
	}
	if (n >= TAIL_MAX) {
		evbuffer_drain(ex->tail, evbuffer_get_length(ex->tail));
		evbuffer_add(ex->tail, p + n - TAIL_MAX, TAIL_MAX);
	} else {
		evbuffer_add(ex->tail, p, n);
	}
	if ((have = evbuffer_get_length(ex->tail)) > TAIL_MAX)
		evbuffer_drain(ex->tail, have - TAIL_MAX);
}

static void up_body(struct hconn *c, const char *p, size_t n)
{
	struct exchange *ex = http_owner(c);

	if (ex->errbody && evbuffer_get_length(ex->errbody) + n <= ERRBODY_MAX)
		evbuffer_add(ex->errbody, p, n);
	if (ex->want_tail)
		tail_add(ex, p, n);
	if (ex->down == NULL || ex->discard_body)
		return;
	if (ex->sse || ex->early_head)
		sse_track(ex, p, n);
	http_send(ex->down, p, n);
	if (http_out_full(ex->down)) {
		http_pause(c, true);
		http_want_drain(ex->down);
	}
}

static void up_done(struct hconn *c)
{
	struct exchange *ex = http_owner(c);
	struct hconn *down = ex->down;

	if (ex->slot)
		*ex->slot = NULL;
	ex->slot = NULL;
	if (down && ex->errbody)
		px_error_event(ex);
	if (ex->want_tail) {
		uint64_t prompt, completion;
		size_t n = ex->tail ? evbuffer_get_length(ex->tail) : ex->tail_n;
		const char *p = ex->tail ? (const char *)evbuffer_pullup(ex->tail, -1) : ex->tail_s;
		if (n > 0 && usage_parse(p, n, &prompt, &completion))
			usage_tokens(service_config(ex->svc)->name, ex->key, prompt, completion);
	}
	if (down)
		http_finish(down);
	/* never pooled with some of the request still on its way: it would
	 * go out ahead of the next request, as part of it */
	ex_end(ex, ex->req_done && http_reusable(c) && (!ex->req_has_body || http_request_delivered(c)));
}

/* Did the connection hang up (WHY), rather than time out or answer
 * something invalid (which means the service had the request)? */
static bool hung_up(const char *why)
{
	return strstr(why, "closed the connection") || strstr(why, "connection error");
}

/* Did the connection close before any response byte, as when an ssh
 * forward accepts a connection but cannot open its channel? */
static bool closed_early(const struct exchange *ex, const char *why)
{
	return ex->up_connected && !ex->reused && !ex->resp_started && hung_up(why);
}

/* Waited long enough for the suspect instance's end: if a probe brought
 * it back, send a request that lost nothing once more; else answer with
 * what the connection said. */
static void verdict_cb(evutil_socket_t fd, short what, void *arg)
{
	struct exchange *ex = arg;
	struct instance *i = ex->inst;
	char reason[400];

	(void)fd, (void)what;
	if (i != NULL && i->state == INST_READY && ex->verdict_resend) {
		ex->verdict_resend = false;
		log_info("svc %s: [%d] answers probes again: sending the request once more",
			 service_config(ex->svc)->name, i->index);
		ex_connect(ex);
		return;
	}
	snprintf(reason, sizeof reason, "service %s: %s", service_config(ex->svc)->name,
		 ex->verdict_why);
	if (i != NULL) {
		ex->inst = NULL;
		instance_release(i, &ex->w);
	}
	ex_fail(ex, 502, reason, 0);
}

/* The connection to ex->inst was refused or closed before any response
 * byte (WHY): the instance leaves rotation and joins the tried set. A
 * request whose body is not lost (RESEND) moves to another instance not
 * tried yet, if one is ready; else it stays on this one until the instance
 * ends (the 502 then says how: "instance ended: process exited with status
 * 1") or upstream_connect_timeout passes (the 502 says WHY). */
static void suspect_instance(struct exchange *ex, const char *why, bool resend)
{
	struct instance *old = ex->inst, *inst = NULL;
	const char *r = NULL;
	int status = 0, ra = 0, rc;

	if (ex->ntried < MAX_TRIED) {
		instance_ref(old);
		ex->tried[ex->ntried++] = old;
		ex->w.tried = ex->tried;
		ex->w.ntried = ex->ntried;
	}
	ex->checking = true;
	instance_unreachable(old, why);   /* its launcher may say it is gone at once */
	ex->checking = false;
	if (ex->aborted != NULL) {
		ex_fail(ex, 502, ex->aborted, 0);
		return;
	}
	if (resend && ex->ntried < MAX_TRIED && service_has_untried(ex->svc, ex->tried, ex->ntried)) {
		ex->inst = NULL;
		instance_release(old, &ex->w);
		ex->tries++;
		log_info("svc %s: retrying a request on another instance (%s)",
			 service_config(ex->svc)->name, why);
		rc = service_request(ex->svc, &ex->w, true, &inst, &status, &r, &ra);
		if (rc == 0)
			ex_go(ex, inst);
		else
			ex_fail(ex, status, r, ra);
		return;
	}
	free(ex->verdict_why);
	ex->verdict_why = xstrdup(why);
	ex->verdict_resend = resend && ex->verdict_ev == NULL;   /* once */
	if (ex->verdict_ev == NULL)
		ex->verdict_ev = evtimer_new(px_gw->base, verdict_cb, ex);
	event_add(ex->verdict_ev, &(struct timeval){px_gw->cfg->upstream_connect_timeout, 0});
}

static void up_closed(struct hconn *c, const char *why)
{
	struct exchange *ex = http_owner(c);
	char reason[300];

	if (ex == NULL)
		return;
	ex->up = NULL;
	if (http_own_shortage(why)) {
		/* our shortage, not the service's: it stays in rotation */
		snprintf(reason, sizeof reason, "service %s: %s", service_config(ex->svc)->name, why);
		ex_fail(ex, 503, reason, 1);
		return;
	}
	if (!ex->resp_started && ex->inst) {
		bool suspect = !ex->up_connected || closed_early(ex, why);

		/* a kept-alive connection the service had closed took an
		 * idempotent request without a body: once more, on a fresh
		 * connection to the same instance (its other idle connections
		 * are suspect too); never after a timeout or an invalid answer:
		 * the service has it */
		if (!suspect && ex->reused && !ex->req_has_body && ex->idempotent && hung_up(why)) {
			instance_pool_flush(ex->inst);
			ex_connect(ex);
			return;
		}
		if (suspect) {
			/* sent again only if it never went out, or lost nothing and
			 * may run twice (never a POST: nginx's non_idempotent) */
			suspect_instance(ex, why, !ex->up_connected || (!ex->req_has_body && ex->idempotent));
			return;
		}
	}
	if (ex->resp_started && hung_up(why) && px_cut_wait(ex, why))
		return;
	snprintf(reason, sizeof reason, "service %s: %s", service_config(ex->svc)->name, why);
	ex_fail(ex, strstr(why, "timeout") ? 504 : 502, reason, 0);
}

void px_fail(struct exchange *ex, int status, const char *reason)
{
	ex_fail(ex, status, reason, 0);
}
