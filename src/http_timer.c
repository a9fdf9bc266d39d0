/* http_timer.c - a connection's one timer (header, idle, response,
 * linger and tunnel timeouts alike), moved lazily: the deadline is recorded
 * on every event and the libevent timer only re-armed when it would fire
 * too late or fires early. Part of the HTTP core (http_conn_impl.h). */
#include "http_conn_impl.h"

#include <stdint.h>
#include <time.h>

#include <event2/event.h>

static struct event_base *tbase;

/* libevent's common timeout for SECS: timers of one duration in a queue
 * rather than the heap, so arming one (every request does, a few times) is
 * O(1). NULL when the table is full. */
static struct {
	int secs;
	const struct timeval *tv;
} known_timeouts[32];
static int nknown_timeouts;   /* of tbase: reset by hc_timers_init */

static const struct timeval *common_timeout(int secs)
{
	struct timeval tv = {secs, 0};
	const struct timeval *ct;

	for (int k = 0; k < nknown_timeouts; k++)
		if (known_timeouts[k].secs == secs)
			return known_timeouts[k].tv;
	if (nknown_timeouts == (int)(sizeof known_timeouts / sizeof *known_timeouts) ||
	    (ct = event_base_init_common_timeout(tbase, &tv)) == NULL)
		return NULL;
	known_timeouts[nknown_timeouts].secs = secs;
	known_timeouts[nknown_timeouts++].tv = ct;
	return ct;
}

/* The coarse monotonic clock in ms: a vDSO read without a clock source
 * access, good to a few ms, which is all a timeout in seconds needs. */
static uint64_t coarse_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void timer_arm(struct hconn *c, uint64_t now, uint64_t ms)
{
	const struct timeval *ct = ms % 1000 == 0 ? common_timeout((int)(ms / 1000)) : NULL;
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

	c->armed_ms = now + ms;
	event_add(c->timer, ct ? ct : &tv);
}

/* Lazily: a connection's timeout moves on nearly every event (six times a
 * proxied request), so the deadline is only recorded; the libevent timer
 * is moved when it would fire too late, and when it fires early (the
 * deadline moved on, or was cleared) it re-arms for the rest or does
 * nothing. One event_add a request instead of six. */
void hc_timer_set(struct hconn *c, int secs)
{
	uint64_t now, dl;

	if (secs <= 0) {
		c->deadline_ms = 0;
		return;
	}
	now = coarse_ms();
	dl = now + (uint64_t)secs * 1000;
	c->deadline_ms = dl;
	if (c->armed_ms != 0 && c->armed_ms <= dl)
		return;   /* fires first, then re-arms */
	timer_arm(c, now, (uint64_t)secs * 1000);
}

/* The libevent timer fired: is the deadline there? (A coarse clock read
 * can lag the timer by a tick: a few ms early counts as on time.) */
static bool timer_due(struct hconn *c)
{
	uint64_t now;

	c->armed_ms = 0;
	if (c->deadline_ms == 0)
		return false;
	now = coarse_ms();
	if (now + 10 < c->deadline_ms) {
		timer_arm(c, now, c->deadline_ms - now);
		return false;
	}
	c->deadline_ms = 0;
	return true;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hconn *c = arg;

	(void)fd, (void)what;
	if (!timer_due(c))
		return;
	hc_enter();
	if (c->state == HC_LINGERING)
		http_close(c, "closed after linger");
	else if (hc_tunnel(c))
		http_close(c, "tunnel quiet: no byte either way for upstream_timeout");
	else
		c->side->timeout(c);
	hc_leave();
}

void hc_timers_init(struct event_base *base)
{
	tbase = base;
	nknown_timeouts = 0;
}

void hc_timer_new(struct hconn *c, struct event_base *base)
{
	c->timer = evtimer_new(base, timer_cb, c);
}
