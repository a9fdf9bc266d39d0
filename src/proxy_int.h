/* proxy_int.h - private to the proxy (proxy.c, proxy_head.c,
 * proxy_feedback.c): the exchange and the helpers its files share. */
#ifndef SG_PROXY_INT_H
#define SG_PROXY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <strings.h>

#include "proxy.h"
#include "service.h"
#include "usage.h"

/* Instances one request tries before it gives up. */
#define MAX_TRIED 8
/* The last bytes of a JSON or event-stream response kept for its "usage". */
#define TAIL_MAX (64 * 1024)

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
	bool idempotent;            /* may be sent again once it went out (RFC 9110 9.2.2) */
	bool up_sent, up_connected, resp_started, reused;
	bool sse;                   /* the service's response is an event stream */
	struct hconn *tun[2];       /* upgraded: the tunnel's client and service sides */
	unsigned char sse_at;       /* where the relayed stream is: SSE_* (proxy.c) */
	bool sse_cr;                /* ... its last byte was a CR */
	int tries;
	double t0, waited, t_sent;
	bool held;
	bool feedback;              /* the client takes SSE: tell it how the start goes */
	bool early_head;            /* our 200 event-stream head went out while waiting */
	bool discard_body;          /* the service's error body, after an early head */
	bool strip_auth;            /* Authorization was our api key, not the service's */
	bool trust_fwd;             /* the client is a trusted proxy (X-Forwarded-*) */
	bool openai;                /* errors in OpenAI's shape (/v1) */
	bool full_reasons;          /* errors may quote a failed start's output */
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
	struct instance *cut_inst;  /* the response was cut: its instance (referenced), whose
	                             * end, if it comes, is the reason (px_cut_wait) */
	struct event *cut_ev;
	double cut_at;
	struct exchange *next_spare;
	/* not cleared for a new exchange (after this point) */
	char tail_s[512];
	char headbuf[1024];
};

/* The gateway proxy_init() was given (its base and config). */
extern struct gw *px_gw;

/* A head being composed: in a fixed buffer while it fits, then on the heap
 * (heap: the caller frees p). */
struct hbuf {
	char *p;
	size_t n, cap;
	bool heap;
};

/* Append N bytes of S to B, moving it to the heap when it does not fit. */
void px_hb_add(struct hbuf *b, const char *s, size_t n);
/* Append "Name: value\r\n" to B. */
void px_hb_field(struct hbuf *b, const char *name, size_t nlen, const char *value, size_t vlen);

#define HB_LIT(b, lit) px_hb_add((b), (lit), sizeof(lit) - 1)

/* NAME (N bytes) is the literal LIT, ignoring case: the length first. */
#define NAME_IS(name, n, lit) ((n) == sizeof(lit) - 1 && strncasecmp((name), (lit), sizeof(lit) - 1) == 0)

/* Serialise request M's head (from DOWN) for the upstream as PATH into
 * ex->head/headlen (ex->headbuf, or the heap when it does not fit). */
void px_build_head(struct exchange *ex, struct hconn *down, const struct http_msg *m,
		   const char *path, size_t plen);

/* Send a formatted piece of an event stream on C (cut at 2 KiB). */
void px_sse_printf(struct hconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "event: error\n" on /v1 (our error events are named there), else "". */
const char *px_sse_error_name(const struct exchange *ex);

/* EX is held and its client reads SSE: answer a 200 event-stream head now
 * (ex->early_head) and post a comment every feedback_interval (ex->fb_ev,
 * freed by the exchange's end) while no instance is assigned. */
void px_feedback_start(struct exchange *ex);
/* End EX's early-headed stream on ex->down with an error event carrying
 * the service's error (ex->err_status, ex->errbody). */
void px_error_event(struct exchange *ex);

/* ex_fail(), for the proxy's other files: end EX with STATUS and REASON. */
void px_fail(struct exchange *ex, int status, const char *reason);
/* EX's response was cut mid-way (WHY: the service hung up) while it ran
 * on ex->inst: if its launcher can look at once (a Slurm job that reached
 * its time limit, was cancelled, lost its node: the service dies before
 * squeue says why), the exchange ends when the instance does, with its
 * cause, or after CUT_WAIT_S with WHY. False: not waited for (end it now). */
bool px_cut_wait(struct exchange *ex, const char *why);
/* EX waits for its cut instance's end (px_cut_wait) and its instance
 * aborted it (REASON: held, or gone): kept, the wait goes on. */
bool px_cut_aborted(struct exchange *ex, const char *reason);
/* ex_end(): what px_cut_wait holds. */
void px_cut_free(struct exchange *ex);

#endif
