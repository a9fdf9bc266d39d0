/* http_conn_impl.h - what the files of the HTTP layer share (http_conn.c,
 * http_timer.c, http_budget.c, http_tunnel.c, http_server.c, http_client.c).
 *
 * Not a public interface: only the files of the HTTP layer include it.
 * Everyone else goes through http.h (http_conn.h, http_server.h,
 * http_client.h).
 *
 * An hconn is one connection core (http_conn.c: read loop, output flushing,
 * graveyard; its timer in http_timer.c, the memory budget in http_budget.c,
 * the tunnel in http_tunnel.c) plus a side: the server side of a client's
 * connection (http_server.c) or the client side of an upstream connection
 * (http_client.c). The core never asks which side it has; it calls the
 * side's hooks (struct hconn_side) where the two differ. */
#ifndef SG_HTTP_CONN_IMPL_H
#define SG_HTTP_CONN_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "http.h"

struct bufferevent;
struct event;
struct evbuffer;
struct event_base;

/* The lifetime of a connection. Every move goes through hc_set_state(),
 * which checks it against the table in http_conn.c and logs it (debug). */
enum hc_state {
	HC_CONNECTING,   /* client side: connect() in progress */
	HC_OPEN,         /* exchanging messages */
	HC_PARKED,       /* client side: idle in a keep-alive pool; any byte or hang-up closes */
	HC_TUNNEL,       /* raw bytes to and from a partner (after a 101) */
	HC_TUNNEL_DRAIN, /* the partner closed: write what is held, then close */
	HC_CLOSING,      /* server side: the last answer is flushing, then close (or linger) */
	HC_LINGERING,    /* server side: write side shut, reading and dropping for a while */
	HC_DEAD,         /* closed: closed() was called, in the graveyard until freed */
	HC_NSTATES
};

/* Why the parser is paused (pause_mask bits). */
enum { PAUSE_PIPELINE = 1, PAUSE_FLOW = 2 };

/* Server side: where in the request the connection is (selects its timer). */
enum phase { PH_IDLE, PH_HEAD, PH_BODY, PH_WAIT };

/* What differs between the two sides. Hooks may be NULL (nothing to do). */
struct hconn_side {
	const char *name;                   /* "client" or "upstream", for logs */
	bool requests;                      /* the parser reads requests (else responses) */
	bool budgeted;                      /* stops reading when over the memory budget */
	const struct hparse_ops *hp_ops;    /* parser callbacks (arg: the hconn) */
	const char *hangup;                 /* close reason: the peer hung up */
	const char *conn_error;             /* close reason prefix: a socket error */
	const char *send_timeout;           /* close reason: output did not move */

	/* Bytes moved one way or the other (progress for read timeouts). */
	void (*progress)(struct hconn *c);
	/* Output fell low; true if the side acted on it (resumed its pipeline). */
	bool (*flushed)(struct hconn *c);
	/* The last output of a CLOSING connection is out: true if the side
	 * keeps it open a while (lingering) instead of closing now. */
	bool (*linger)(struct hconn *c);
	/* The input cannot be parsed. */
	void (*parse_error)(struct hconn *c);
	/* The peer closed its side (not lingering, not a tunnel). */
	void (*eof)(struct hconn *c);
	/* The connection's timer fired (not lingering). */
	void (*timeout)(struct hconn *c);
	/* http_pause() changed the flow pause. */
	void (*paused)(struct hconn *c, bool pause);
	/* http_finish() ended an outgoing message. */
	void (*finish)(struct hconn *c);
};

struct hconn {
	struct bufferevent *bev;
	int fd;
	enum hc_state state;
	const struct hconn_side *side;
	const struct hconn_ops *ops;
	void *owner;
	struct hparse hp;
	struct event *timer;
	uint64_t deadline_ms;     /* hc_timer_set's deadline (coarse monotonic ms), 0: none */
	uint64_t armed_ms;        /* when the libevent timer fires, 0: not armed */
	struct event *closed_ev;
	struct event *rev;        /* our own read event: one recv per wake-up */
	struct evbuffer *in;      /* bytes read, not parsed yet */
	bool rd_on;
	int pause_mask;
	bool need_process, in_parse, want_drain;
	struct hconn *peer;       /* tunnel partner */
	const char *close_why;    /* a close that waits for the flush (failed connect) */

	/* the current message (both sides) */
	bool msg_complete;        /* the incoming message is complete */
	bool out_chunked, out_nobody, head_req;
	bool out_sized;           /* the response announced a Content-Length ... */
	unsigned long long out_left;   /* ... of which this much is still to send */

	/* server side (http_server.c) */
	const struct http_limits *lim;
	enum phase phase;
	size_t resp_mark;         /* output composed before the current response */
	bool resp_sent;           /* a byte of the current response reached the socket */
	bool wait_flush;          /* the next request waits for output to drain */
	bool resp_started, resp_done, close_after, upgrade_req;
	char peer_addr[48];

	/* client side (http_client.c) */
	int timeout_s;            /* read timeout, re-armed on every read */

	/* output and the memory budget: what callbacks compose goes to w
	 * (a pooled block, taken on the first byte), written out or handed
	 * to the bufferevent when the outermost callback returns */
	char *w;
	size_t wn, wcap;
	bool dirty, budget_wait;
	size_t owned;                     /* the owner's bytes for this request (http_set_owned) */
	struct http_xfer xf;              /* the current exchange, for finished() */
	bool xf_open;
	bool layer_reply, layer_head;     /* the layer's own answer is the exchange (head parsed) */
	TAILQ_ENTRY(hconn) dirty_link;    /* dirty list, or the graveyard once dead */
	TAILQ_ENTRY(hconn) budget_link;   /* paused by the memory budget */
};

/* Pipelining: the next request is read only once the answers to the
 * previous ones are (nearly) written, so a client that sends requests and
 * reads nothing holds at most this much of our memory in answers. */
#define PIPELINE_OUT_MAX HTTP_LOW_MARK

static inline bool hc_dead(const struct hconn *c)
{
	return c->state == HC_DEAD;
}

/* A tunnel, or one whose partner is gone and that drains. */
static inline bool hc_tunnel(const struct hconn *c)
{
	return c->state == HC_TUNNEL || c->state == HC_TUNNEL_DRAIN;
}

/* --- the core (http_conn.c), for the sides --- */
/* A new connection on FD (-1: not connected yet) in STATE. */
struct hconn *hc_new(int fd, const struct hconn_side *side, enum hc_state state,
		     const struct hconn_ops *ops, void *owner);
/* The current exchange is over (COMPLETE: answered in full): tell OPS once. */
void hc_xfer_end(struct hconn *c, const struct hconn_ops *ops, bool complete);
/* Move C to STATE because of WHY (for the debug log); fatal() if the table
 * does not allow the move. Moving to the state C is in does nothing. */
void hc_set_state(struct hconn *c, enum hc_state state, const char *why);
void hc_out_add(struct hconn *c, const void *p, size_t n);
void hc_out_printf(struct hconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Put C on the dirty list: flushed (and its input processed, if asked)
 * when the outermost callback returns. */
void hc_mark_dirty(struct hconn *c);
/* Output composed (not written yet): append an evbuffer's bytes (drains
 * it), how much there is, cut it back to N bytes. */
void hc_out_add_buffer(struct hconn *c, struct evbuffer *b);
size_t hc_out_composed(const struct hconn *c);
/* Give the connection's output block back (it was written or moved). */
void hc_out_release(struct hconn *c);
void hc_out_truncate(struct hconn *c, size_t n);
/* http_timer.c: arm C's timer for SECS seconds (<= 0: disarm); when it
 * fires, a lingering connection closes, a tunnel quiet both ways closes,
 * and otherwise the side's timeout hook runs. */
void hc_timer_set(struct hconn *c, int secs);
/* http_timer.c: C's timer, on BASE (hc_new); the timers of BASE (http_init). */
void hc_timer_new(struct hconn *c, struct event_base *base);
void hc_timers_init(struct event_base *base);
/* Start (or stop) reading the socket as pause, budget and input allow. */
void hc_rd_update(struct hconn *c);
/* The socket is connected: watch it for input from now on. */
void hc_start_reading(struct hconn *c);
/* The parser runs only while nothing holds the connection's input. */
void hc_sync_pause(struct hconn *c);
/* Bracket every callback from libevent into the layer: leaving the
 * outermost one flushes output and frees the dead. */
void hc_enter(void);
void hc_leave(void);

/* --- the memory budget (http_budget.c), for the core --- */
/* Create the event that lets connections paused by the budget read again. */
void hc_budget_init(struct event_base *base);
/* Free that event (unit tests, for the leak checker). */
void hc_budget_free(void);
/* True if the total is over the cap and C itself holds more than its share. */
bool hc_budget_over(struct hconn *c);
/* C stops reading for the budget: queue it (c->budget_wait must be false). */
void hc_budget_wait(struct hconn *c);
/* C closes: take it off the budget's queue if it is on it. */
void hc_budget_forget(struct hconn *c);

/* --- the tunnel (http_tunnel.c), for the core --- */
/* Move what C read to its partner (or drop it if the partner is gone); past
 * the high mark, C stops reading until the partner's output drains. */
void hc_tunnel_move(struct hconn *c);

#endif
