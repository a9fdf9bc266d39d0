/* proxy.c - one request through the gateway to a service instance. */
#include "proxy.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <http_parser.h>
#include <jansson.h>

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
/* Instances one request tries before it gives up. */
#define MAX_TRIED 8
/* The last bytes of a JSON or event-stream response kept for its "usage". */
#define TAIL_MAX (64 * 1024)
/* Ended exchanges kept for the next requests (none under ASan, which
 * then sees every use after the end). */
#if defined(__SANITIZE_ADDRESS__)
#define SPARE_MAX 0
#else
#define SPARE_MAX 256
#endif

struct exchange {
	struct hconn *down, *up;
	struct exchange **slot;
	struct service *svc;
	struct instance *inst;
	struct waiter w;
	char *head;                 /* the request head for the upstream (headbuf, or malloc'ed) */
	size_t headlen;
	struct evbuffer *body;      /* body bytes not yet sent upstream (NULL: none held) */
	bool req_chunked, req_has_body, req_done, head_req, upgrade;
	bool up_sent, up_connected, resp_started, reused;
	bool sse;                   /* the service's response is an event stream */
	int tries;
	double t0, waited, t_sent;
	bool held;
	bool feedback;              /* the client takes SSE: tell it how the start goes */
	bool early_head;            /* our 200 event-stream head went out while waiting */
	bool discard_body;          /* the service's error body, after an early head */
	bool strip_auth;            /* Authorization was our api key, not the service's */
	bool trust_fwd;             /* the client is a trusted proxy (X-Forwarded-*) */
	bool openai;                /* errors in OpenAI's shape (/v1) */
	struct instance *tried[MAX_TRIED]; /* instances refused or closed early (referenced) */
	int ntried;
	bool checking;              /* inside instance_unreachable(): an abort is noted ... */
	char *aborted;              /* ... here */
	char *verdict_why;          /* waiting for a suspect instance's end: why it is suspect */
	struct event *verdict_ev;
	bool verdict_resend;        /* ... and may send the request again if it comes back */
	char key[KEY_ID_MAX];       /* the api key's id, for usage */
	bool want_tail;             /* keep the response's end for its "usage": */
	struct evbuffer *tail;      /* its last TAIL_MAX bytes, once more than tail_s holds */
	size_t tail_n;              /* ... else tail_s holds them */
	int err_status;             /* the service's error status after an early head */
	struct evbuffer *errbody;   /* ... and its body, for the error event */
	size_t held_n;              /* bytes of body counted in held_total */
	struct event *fb_ev;
	struct accesslog_note *note; /* the client session's; only while down is set */
	struct exchange *next_spare;
	/* not cleared for a new exchange (after this point) */
	char tail_s[512];
	char headbuf[1024];
};

static struct gw *gw;
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
	gw = g;
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

static void sse_printf(struct hconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Send a formatted piece of an event stream. */
static void sse_printf(struct hconn *c, const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n > 0)
		http_send(c, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* Every few seconds while held: an SSE comment saying how the start goes. */
static void feedback_cb(evutil_socket_t fd, short what, void *arg)
{
	struct exchange *ex = arg;
	char reason[600];

	(void)fd, (void)what;
	if (ex->down == NULL || ex->inst != NULL)
		return;
	service_reason(ex->svc, reason, sizeof reason);
	sse_printf(ex->down, ": slurmgate: %s\n\n", reason);
	event_add(ex->fb_ev, &(struct timeval){gw->cfg->feedback_interval, 0});
}

/* Held, and the client reads SSE: answer the head now and keep it posted. */
static void feedback_start(struct exchange *ex)
{
	char reason[600];

	http_respond(ex->down, 200,
		     SG_SEC_HEADERS_DATA "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
		     "X-Accel-Buffering: no\r\nX-Slurmgate-Cold-Start: waiting\r\n",
		     -1);
	ex->early_head = true;
	service_reason(ex->svc, reason, sizeof reason);
	sse_printf(ex->down, ": slurmgate: %s\n\n", reason);
	ex->fb_ev = evtimer_new(gw->base, feedback_cb, ex);
	event_add(ex->fb_ev, &(struct timeval){gw->cfg->feedback_interval, 0});
}

/* The class of a 503 the gateway answers itself, for /metrics (NULL: not a
 * refusal, such as a 502 from a broken connection). */
static const char *refusal_kind(const struct service *s, int status, const char *reason)
{
	static const struct { const char *reason, *kind; } known[] = {
		{"the service is starting; retry later", "starting"},
		{"service management is disabled", "management_disabled"},
		{"the gateway is shutting down", "shutting_down"},
		{"the service was removed from the config", "removed"},
	};
	const char *last;

	if (status != 503)
		return NULL;
	for (size_t k = 0; k < sizeof known / sizeof *known; k++)
		if (strcmp(reason, known[k].reason) == 0)
			return known[k].kind;
	/* last_error may hold a truncated copy of a long reason */
	last = service_last_error(s);
	return last[0] && strncmp(reason, last, strlen(last)) == 0 ? "start_failed" : "stopped";
}

/* OpenAI's error "type" and "code" for a status the gateway answers with. */
static const char *err_type(int status)
{
	return status == 503 ? "service_unavailable" : "upstream_error";
}

static const char *err_code(int status)
{
	switch (status) {
	case 503: return "service_unavailable";
	case 504: return "upstream_timeout";
	default: return "upstream_error";
	}
}

/* Answer the client with an error of our own (if nothing was sent yet):
 * in OpenAI's shape on /v1 (opts.openai), else the gateway's own. */
static void ex_fail(struct exchange *ex, int status, const char *reason, int retry_after)
{
	const struct svc_config *cfg = service_config(ex->svc);
	char extra[512] = SG_SEC_HEADERS_DATA;
	json_t *o;
	char *body;

	/* a relayed head that has not reached the client yet gives way to the error */
	if (ex->down && !ex->early_head && http_response_started(ex->down))
		http_response_retract(ex->down);
	if (ex->down && ex->early_head) {
		/* the stream is open: end it with an OpenAI-style error event */
		o = json_pack("{s:{s:s,s:s,s:i}}", "error", "message", reason, "type",
			      status == 503 ? "service_unavailable" : "upstream_error", "code", status);
		body = json_dumps(o, JSON_COMPACT);
		sse_printf(ex->down, "data: %s\n\n", body);
		http_finish(ex->down);
		free(body);
		json_decref(o);
	} else if (ex->down && !http_response_started(ex->down)) {
		if (retry_after > 0)
			snprintf(extra, sizeof extra, "%sRetry-After: %d\r\n", SG_SEC_HEADERS_DATA,
				 retry_after);
		if (ex->openai) {
			o = json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", reason, "type",
				      err_type(status), "param", "code", err_code(status));
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
	} else if (ex->down && ex->sse && !ex->discard_body) {
		/* the service's event stream is under way: end it with an error event */
		o = json_pack("{s:{s:s,s:s,s:i}}", "error", "message", reason, "type", "upstream_error",
			      "code", status);
		body = json_dumps(o, JSON_COMPACT);
		sse_printf(ex->down, "\n\ndata: %s\n\n", body);
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
	refusal_note(cfg->name, status, reason, refusal_kind(ex->svc, status, reason));
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
	http_set_timeout(ex->up, gw->cfg->upstream_timeout);
	if (ex->down)
		http_pause(ex->down, false);
}

static void ex_connect(struct exchange *ex)
{
	struct instance *i = ex->inst;

	ex->up_connected = false;
	ex->reused = false;
	ex->up = http_connect((struct sockaddr *)&i->addr, i->addrlen, gw->cfg->upstream_connect_timeout,
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
		sse_printf(ex->down, ": slurmgate: ready after %.1f s\n\n", ex->waited);
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
	if (ex->checking) {
		/* from inside suspect_instance(), which answers */
		free(ex->aborted);
		ex->aborted = xstrdup(reason);
		return;
	}
	ex_fail(ex, status, reason, 0);
}

/* A head being composed: in a fixed buffer while it fits, then on the heap. */
struct hbuf {
	char *p;
	size_t n, cap;
	bool heap;
};

static void hb_add(struct hbuf *b, const char *s, size_t n)
{
	if (b->n + n > b->cap) {
		size_t cap = (b->n + n) * 2;
		char *q = xmalloc(cap);
		memcpy(q, b->p, b->n);
		if (b->heap)
			free(b->p);
		b->p = q;
		b->cap = cap;
		b->heap = true;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
}

#define HB_LIT(b, lit) hb_add((b), (lit), sizeof(lit) - 1)

static void hb_str(struct hbuf *b, const char *s)
{
	hb_add(b, s, strlen(s));
}

/* "Name: value\r\n" */
static void hb_field(struct hbuf *b, const char *name, size_t nlen, const char *value, size_t vlen)
{
	if (b->n + nlen + vlen + 4 <= b->cap) {
		char *q = b->p + b->n;
		memcpy(q, name, nlen);
		q += nlen;
		*q++ = ':';
		*q++ = ' ';
		memcpy(q, value, vlen);
		q += vlen;
		*q++ = '\r';
		*q++ = '\n';
		b->n += nlen + vlen + 4;
		return;
	}
	hb_add(b, name, nlen);
	HB_LIT(b, ": ");
	hb_add(b, value, vlen);
	HB_LIT(b, "\r\n");
}

/* NAME (N bytes) is the literal LIT, ignoring case: the length first. */
#define NAME_IS(name, n, lit) ((n) == sizeof(lit) - 1 && strncasecmp((name), (lit), sizeof(lit) - 1) == 0)

/* Serialise the request head for the upstream, once, into ex->headbuf
 * (or the heap when it does not fit). No printf: the pieces are copied. */
static void build_head(struct exchange *ex, struct hconn *down, const struct http_msg *m,
		       const char *path, size_t plen)
{
	struct hbuf b = {.p = ex->headbuf, .cap = sizeof ex->headbuf};
	const struct http_hdr *xff = NULL, *xfp = NULL, *xfh = NULL, *host = NULL, *upg = NULL;

	hb_str(&b, m->method_str);
	HB_LIT(&b, " ");
	hb_add(&b, path, plen);
	HB_LIT(&b, " HTTP/1.1\r\n");
	for (size_t k = 0; k < m->nhdrs; k++) {
		const struct http_hdr *h = &m->hdrs[k];
		const char *n = h->name;
		size_t len = h->nlen;
		if (NAME_IS(n, len, "x-forwarded-for"))
			xff = h;
		else if (NAME_IS(n, len, "x-forwarded-proto"))
			xfp = h;
		else if (NAME_IS(n, len, "x-forwarded-host"))
			xfh = h;
		else if (NAME_IS(n, len, "upgrade"))
			upg = h;
		else if (NAME_IS(n, len, "x-slurmgate-wait"))
			continue;
		else if (!ex->trust_fwd && (NAME_IS(n, len, "forwarded") || NAME_IS(n, len, "x-real-ip")))
			continue;   /* a client's claims, not a proxy's */
		else if (ex->strip_auth && NAME_IS(n, len, "authorization"))
			continue;
		if (NAME_IS(n, len, "host"))
			host = h;
		if (h == xff || h == xfp || h == xfh || http_hop_by_hop(h, m))
			continue;
		hb_field(&b, n, len, h->value, h->vlen);
	}
	if (!ex->trust_fwd)
		xff = xfp = xfh = NULL;   /* replaced, never passed on */
	HB_LIT(&b, "X-Forwarded-For: ");
	if (xff) {
		hb_add(&b, xff->value, xff->vlen);
		HB_LIT(&b, ", ");
	}
	hb_str(&b, http_peer(down));
	HB_LIT(&b, "\r\n");
	if (xfp)
		hb_field(&b, "X-Forwarded-Proto", 17, xfp->value, xfp->vlen);
	else
		HB_LIT(&b, "X-Forwarded-Proto: http\r\n");
	if (xfh)
		hb_field(&b, "X-Forwarded-Host", 16, xfh->value, xfh->vlen);
	else if (host)
		hb_field(&b, "X-Forwarded-Host", 16, host->value, host->vlen);
	if (!host) {
		const char *lh = service_config(ex->svc)->local_host;
		hb_field(&b, "Host", 4, lh, strlen(lh));
	}
	if (m->upgrade && upg) {
		HB_LIT(&b, "Connection: upgrade\r\n");
		hb_field(&b, "Upgrade", 7, upg->value, upg->vlen);
		ex->upgrade = true;
	}
	if (m->chunked) {
		HB_LIT(&b, "Transfer-Encoding: chunked\r\n");
	} else if (m->content_length >= 0) {
		char num[32];
		int n = snprintf(num, sizeof num, "%lld", m->content_length);
		hb_field(&b, "Content-Length", 14, num, (size_t)n);
	}
	HB_LIT(&b, "\r\n");
	ex->head = b.p;
	ex->headlen = b.n;
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
	ex->w.ready = w_ready;
	ex->w.fail = w_fail;
	ex->w.abort = w_abort;
	ex->feedback = o->feedback;
	ex->strip_auth = o->strip_auth;
	ex->trust_fwd = o->trust_forwarded;
	ex->note = o->note;
	ex->openai = o->openai;
	{
		const char *key = o->key_id ? o->key_id : "-";
		size_t klen = strnlen(key, sizeof ex->key - 1);
		memcpy(ex->key, key, klen);
		ex->key[klen] = '\0';
	}
	usage_request(service_config(svc)->name, ex->key);
	build_head(ex, down, m, path, plen);
	r = service_request(svc, &ex->w, o->hold, &inst, &status, &reason, &retry_after);
	if (r == 0) {
		ex_go(ex, inst);
	} else if (r == 1) {
		ex->t0 = now_s();   /* only a held request's wait is timed */
		ex->held = true;
		if (held_total >= (size_t)gw->cfg->max_held_body && ex->req_has_body)
			http_pause(down, true);   /* the budget is spent: wait in the TCP window */
		if (ex->feedback)
			feedback_start(ex);
	} else
		ex_fail(ex, status, reason, retry_after);
}

void proxy_body(struct exchange *ex, const char *p, size_t n)
{
	if (ex->up_sent && ex->up) {
		http_send(ex->up, p, n);
		if (http_pending_output(ex->up) > HTTP_HIGH_MARK) {
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
		    held_total >= (size_t)gw->cfg->max_held_body)
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

/* The service answered ERR_STATUS after our early event-stream head: end
 * the stream with an error event that carries the service's own error:
 * its {"error":{...}} object as it is, else its message (an "error",
 * "message" or "detail" string, or the body's text). */
static void error_event(struct exchange *ex)
{
	size_t n = evbuffer_get_length(ex->errbody);
	const char *p = n ? (const char *)evbuffer_pullup(ex->errbody, -1) : "";
	json_t *b = n ? json_loadb(p, n, 0, NULL) : NULL, *e = NULL, *o;
	const char *msg = NULL;
	char text[1200];
	char *out;

	if (json_is_object(b)) {
		json_t *err = json_object_get(b, "error");
		if (json_is_object(err) && json_is_string(json_object_get(err, "message")))
			e = json_incref(err);
		else if (json_is_string(err))
			msg = json_string_value(err);
		else if (json_is_string(json_object_get(b, "message")))
			msg = json_string_value(json_object_get(b, "message"));
		else if (json_is_string(json_object_get(b, "detail")))
			msg = json_string_value(json_object_get(b, "detail"));
	}
	if (e == NULL) {
		if (msg == NULL && n > 0)
			msg = log_escape(p, n > 1000 ? 1000 : n);
		snprintf(text, sizeof text, "the service answered %d%s%s", ex->err_status,
			 msg ? ": " : "", msg ? msg : "");
		e = json_pack("{s:s,s:s,s:i}", "message", text, "type", "upstream_error", "code",
			      ex->err_status);
		if (e == NULL)   /* cut inside a UTF-8 sequence */
			e = json_pack("{s:s,s:s,s:i}", "message", "the service answered an error", "type",
				      "upstream_error", "code", ex->err_status);
	}
	o = json_pack("{s:o}", "error", e);
	out = json_dumps(o, JSON_COMPACT);
	http_send(ex->down, "data: ", 6);
	http_send(ex->down, out, strlen(out));
	http_send(ex->down, "\n\n", 2);
	free(out);
	json_decref(o);
	json_decref(b);
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
	/* the response's fields but the hop-by-hop ones, in one pass */
	for (size_t k = 0; k < m->nhdrs; k++) {
		const struct http_hdr *h = &m->hdrs[k];
		if (ct == NULL && NAME_IS(h->name, h->nlen, "content-type"))
			ct = h;
		if (!ex->early_head && !http_hop_by_hop(h, m))
			hb_field(&b, h->name, h->nlen, h->value, h->vlen);
	}
	if (m->status >= 200 && m->status < 300) {
		/* an OpenAI-style answer: its "usage" comes at its end */
		if (ct && ((ct->vlen >= 16 && strncase_eq(ct->value, 16, "application/json")) ||
			   (ct->vlen >= 17 && strncase_eq(ct->value, 17, "text/event-stream"))))
			ex->want_tail = true;
	}
	if (ex->early_head) {
		/* our head went out already; a service error becomes an error event */
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
		hb_add(&b, cs, (size_t)n);
	}
	if (m->status == 101) {
		const struct http_hdr *u = http_find(m, "upgrade");
		HB_LIT(&b, "Connection: upgrade\r\n");
		hb_field(&b, "Upgrade", 7, u ? u->value : "", u ? u->vlen : 0);
	}
	ex->resp_started = true;
	ex->sse = ct && ct->vlen >= 17 && strncase_eq(ct->value, 17, "text/event-stream");
	http_respond_n(ex->down, m->status, b.p, b.n,
		       (m->content_length >= 0 && !m->chunked) ? m->content_length : -1);
	if (b.heap)
		free(b.p);
	if (m->status == 101 && ex->upgrade) {
		struct hconn *down = ex->down, *up = ex->up;
		/* from now on the two connections carry raw bytes */
		ex->down = NULL;
		ex->up = NULL;
		if (ex->slot)
			*ex->slot = NULL;
		ex->slot = NULL;
		http_set_owner(up, NULL, NULL);
		http_tunnel(down, up);
		ex_end(ex, false);
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
	http_send(ex->down, p, n);
	if (http_pending_output(ex->down) > HTTP_HIGH_MARK) {
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
		error_event(ex);
	if (ex->want_tail) {
		uint64_t prompt, completion;
		size_t n = ex->tail ? evbuffer_get_length(ex->tail) : ex->tail_n;
		const char *p = ex->tail ? (const char *)evbuffer_pullup(ex->tail, -1) : ex->tail_s;
		if (n > 0 && usage_parse(p, n, &prompt, &completion))
			usage_tokens(service_config(ex->svc)->name, ex->key, prompt, completion);
	}
	if (down)
		http_finish(down);
	ex_end(ex, ex->req_done && http_reusable(c));
}

/* Did the connection close before any response byte, as when an ssh
 * forward accepts a connection but cannot open its channel? */
static bool closed_early(const struct exchange *ex, const char *why)
{
	return ex->up_connected && !ex->reused && !ex->resp_started &&
	       (strstr(why, "closed the connection") || strstr(why, "connection error"));
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
		ex->verdict_ev = evtimer_new(gw->base, verdict_cb, ex);
	event_add(ex->verdict_ev, &(struct timeval){gw->cfg->upstream_connect_timeout, 0});
}

static void up_closed(struct hconn *c, const char *why)
{
	struct exchange *ex = http_owner(c);
	char reason[300];

	if (ex == NULL)
		return;
	ex->up = NULL;
	if (!ex->resp_started && ex->inst) {
		bool suspect = !ex->up_connected || closed_early(ex, why);

		/* a kept-alive connection the service had closed took a request
		 * without a body: once more, on a fresh connection to the same
		 * instance (its other idle connections are suspect too) */
		if (!suspect && ex->reused && !ex->req_has_body) {
			instance_pool_flush(ex->inst);
			ex_connect(ex);
			return;
		}
		if (suspect) {
			suspect_instance(ex, why, !ex->up_connected || !ex->req_has_body);
			return;
		}
	}
	snprintf(reason, sizeof reason, "service %s: %s", service_config(ex->svc)->name, why);
	ex_fail(ex, strstr(why, "timeout") ? 504 : 502, reason, 0);
}
