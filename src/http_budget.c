/* http_budget.c - the HTTP layer's memory budget.
 *
 * Every tracked buffer (a connection's unparsed input and unwritten output,
 * a held request body) counts towards one total. Past the cap, client
 * connections that hold a lot themselves stop reading (hc_rd_update asks
 * hc_budget_over) and wait on a list here; when the total falls again they
 * are let go from an event of their own. */
#include "http_conn_impl.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/event.h>

TAILQ_HEAD(hconn_list, hconn);

/* The memory budget: bytes held in every tracked buffer (input read but not
 * parsed, output not yet written, held request bodies). Past the cap,
 * client connections that hold more than BUDGET_OWN themselves stop
 * reading until the total falls below 7/8 of it; small requests from
 * others still get in. */
#define BUDGET_OWN (64 * 1024)
static size_t buffered, buffer_cap = (size_t)-1;
static struct hconn_list budget_list = TAILQ_HEAD_INITIALIZER(budget_list);
static struct event *budget_ev;

static void buf_cb(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	(void)b, (void)arg;
	buffered += info->n_added;
	buffered -= info->n_deleted;
	if (info->n_deleted > 0 && !TAILQ_EMPTY(&budget_list) && buffered < buffer_cap - buffer_cap / 8)
		event_active(budget_ev, EV_TIMEOUT, 0);
}

void http_buffer_track(struct evbuffer *b)
{
	buffered += evbuffer_get_length(b);
	evbuffer_add_cb(b, buf_cb, NULL);
}

void http_buffer_untrack(struct evbuffer *b)
{
	/* not by draining: a bufferevent's output may be frozen */
	evbuffer_remove_cb(b, buf_cb, NULL);
	buffered -= evbuffer_get_length(b);
}

size_t http_buffered(void)
{
	return buffered;
}

size_t http_buffer_cap(void)
{
	return buffer_cap;
}

void http_set_buffer_cap(size_t cap)
{
	buffer_cap = cap;
	if (budget_ev && !TAILQ_EMPTY(&budget_list))
		event_active(budget_ev, EV_TIMEOUT, 0);
}

static size_t own_bytes(struct hconn *c)
{
	return evbuffer_get_length(c->in) + http_pending_output(c) + c->owned;
}

void http_set_owned(struct hconn *c, size_t n)
{
	c->owned = n;
}

/* The total fell below the budget: connections paused by it read again. */
static void budget_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hconn_list now = TAILQ_HEAD_INITIALIZER(now);
	struct hconn *c;

	(void)fd, (void)what, (void)arg;
	hc_enter();
	TAILQ_CONCAT(&now, &budget_list, budget_link);
	while ((c = TAILQ_FIRST(&now)) != NULL) {
		TAILQ_REMOVE(&now, c, budget_link);
		c->budget_wait = false;
		hc_rd_update(c);   /* may wait again, on budget_wait */
	}
	hc_leave();
}

void hc_budget_init(struct event_base *base)
{
	budget_ev = event_new(base, -1, 0, budget_cb, NULL);
}

void hc_budget_free(void)
{
	event_free(budget_ev);
	budget_ev = NULL;
}

bool http_out_full(struct hconn *c)
{
	size_t n = http_pending_output(c);

	return n > HTTP_HIGH_MARK || (n > HTTP_LOW_MARK && buffered >= buffer_cap);
}

bool hc_budget_over(struct hconn *c)
{
	return buffered >= buffer_cap && own_bytes(c) > BUDGET_OWN;
}

void hc_budget_wait(struct hconn *c)
{
	c->budget_wait = true;
	TAILQ_INSERT_TAIL(&budget_list, c, budget_link);
}

void hc_budget_forget(struct hconn *c)
{
	if (c->budget_wait) {
		TAILQ_REMOVE(&budget_list, c, budget_link);
		c->budget_wait = false;
	}
}
