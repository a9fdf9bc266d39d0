/* http_tunnel.c - the raw tunnel after an upgrade (a 101).
 *
 * The two connections forget their owners and pass what they read to each
 * other unparsed; past the high mark a side stops reading until its
 * partner's output drains. When one closes, the other drains what it holds
 * and closes (HC_TUNNEL_DRAIN, in http_close); the first close tells the
 * tunnel's maker (a request in flight until then). A tunnel with no byte
 * either way for its idle time is closed (the timer, in http_conn.c). */
#include "http_conn_impl.h"

#include <stddef.h>
#include <stdlib.h>

#include <event2/buffer.h>

#include "util.h"

/* Owner of both connections of a tunnel: freed when both have closed. */
struct tunnel {
	int refs;
	void (*ended)(void *arg);
	void *arg;
};

void hc_tunnel_move(struct hconn *c)
{
	struct evbuffer *in = c->in;
	struct hconn *p = c->peer;

	if (p == NULL || hc_dead(p)) {
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	}
	hc_out_add_buffer(p, in);
	/* a byte went across: neither side is quiet */
	hc_timer_set(c, c->timeout_s);
	hc_timer_set(p, p->timeout_s);
	if (http_out_full(p)) {
		http_pause(c, true);
		http_want_drain(p);
	}
}

static void tunnel_drained(struct hconn *c)
{
	if (c->peer)
		http_pause(c->peer, false);
}

static void tunnel_closed(struct hconn *c, const char *why)
{
	struct tunnel *t = c->owner;
	void (*ended)(void *) = t->ended;
	void *arg = t->arg;

	(void)why;
	c->owner = NULL;
	t->ended = NULL;   /* once: the first close ends the tunnel */
	if (--t->refs == 0)
		free(t);
	if (ended)
		ended(arg);
}

static const struct hconn_ops tunnel_ops = {
	.drained = tunnel_drained,
	.closed = tunnel_closed,
};

void http_tunnel(struct hconn *a, struct hconn *b, int idle_s, void (*ended)(void *arg),
		 void *arg)
{
	struct hconn *pair[2] = {a, b};
	struct tunnel *t = xcalloc(1, sizeof *t);

	t->ended = ended;
	t->arg = arg;
	for (int i = 0; i < 2; i++) {
		struct hconn *c = pair[i];
		const struct hconn_ops *ops = c->ops;
		/* the upgrade was this exchange: its access-log line (the 101) */
		hc_xfer_end(c, ops, true);
		c->ops = NULL;
		if (ops && ops->closed)
			ops->closed(c, "upgraded to a tunnel");   /* the owner lets go */
		c->owner = NULL;
		if (hc_dead(c))
			continue;
		hc_set_state(c, HC_TUNNEL, "upgraded");
		c->peer = pair[1 - i];
		c->ops = &tunnel_ops;
		c->owner = t;
		t->refs++;
		c->timeout_s = idle_s;
		hc_timer_set(c, idle_s);
		c->pause_mask = 0;
		hc_rd_update(c);
	}
	if (t->refs == 0) {
		free(t);
		if (ended)
			ended(arg);
		return;
	}
	if (t->refs == 1) {
		/* one side was gone already: the other closes, which ends it */
		struct hconn *c = hc_dead(a) ? b : a;
		c->peer = NULL;
		http_close(c, "tunnel partner gone");
		return;
	}
	/* bytes already read go across now; a side being parsed right now
	 * (the 101 head itself) moves its rest once the parser let go */
	for (int i = 0; i < 2; i++)
		if (!pair[i]->in_parse && evbuffer_get_length(pair[i]->in) > 0)
			hc_tunnel_move(pair[i]);
}
