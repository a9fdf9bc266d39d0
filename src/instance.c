/* instance.c - the instance object: references, checked states, the
 * requests in flight on it and its health probe (its pool of idle
 * upstream connections is http_pool.c's). The policy (when to start, stop, hold) is service.c's. */
#include "instance.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/util.h>

#include "config.h"
#include "gw.h"
#include "http.h"
#include "http_pool.h"
#include "log.h"
#include "service.h"
#include "util.h"

#define PROBE_FIRST_MS 10
#define PROBE_MAX_MS 100
#define PROBE_TIMEOUT_S 5
/* a probe as a whole: its connect and then its answer may each take
 * PROBE_TIMEOUT_S (through a busy login node's forward, to a loaded server) */
#define PROBE_DEADLINE_S (2 * PROBE_TIMEOUT_S)

static struct gw *gw;

void instances_init(struct gw *g)
{
	gw = g;
	http_pool_init(g->cfg->upstream_keepalive);
}

const char *instance_state_name(enum inst_state st)
{
	static const char *const names[INST_NSTATES] = {
		"starting", "probing", "ready", "draining", "stopping", "unhealthy", "held", "gone"};
	return st < INST_NSTATES ? names[st] : "?";
}

#define B(s) (1u << (s))
/* legal[from]: the states FROM may move to. */
static const unsigned legal[INST_NSTATES] = {
	[INST_STARTING] = B(INST_PROBING) | B(INST_HELD) | B(INST_STOPPING) | B(INST_GONE),
	[INST_PROBING] = B(INST_PROBING) | B(INST_READY) | B(INST_HELD) | B(INST_STOPPING) | B(INST_GONE),
	[INST_READY] = B(INST_UNHEALTHY) | B(INST_HELD) | B(INST_DRAINING) | B(INST_STOPPING) |
		       B(INST_GONE),
	[INST_UNHEALTHY] = B(INST_UNHEALTHY) | B(INST_READY) | B(INST_HELD) | B(INST_DRAINING) |
			   B(INST_STOPPING) | B(INST_GONE),
	[INST_HELD] = B(INST_HELD) | B(INST_PROBING) | B(INST_UNHEALTHY) | B(INST_STOPPING) |
		      B(INST_GONE),
	[INST_DRAINING] = B(INST_STOPPING) | B(INST_GONE),
	[INST_STOPPING] = B(INST_GONE),
	[INST_GONE] = 0,
};
#undef B

bool instance_move_legal(enum inst_state from, enum inst_state to)
{
	return from < INST_NSTATES && to < INST_NSTATES && (legal[from] & (1u << to)) != 0;
}

bool instance_set_state(struct instance *i, enum inst_state st, const char *why)
{
	const char *name = service_config(i->svc)->name;

	if (!instance_move_legal(i->state, st)) {
		log_warn("svc %s[%d]: BUG: illegal move %s -> %s (%s) refused", name, i->index,
			 instance_state_name(i->state), instance_state_name(st), why);
#ifndef NDEBUG
#if defined(__SANITIZE_ADDRESS__) || defined(SG_DEBUG)
		assert(!"illegal instance state move");
#endif
#endif
		return false;
	}
	if (i->state != st)
		log_info("svc %s[%d]: %s -> %s (%s)", name, i->index, instance_state_name(i->state),
			 instance_state_name(st), why);
	i->state = st;
	i->state_since = now_s();
	return true;
}

void instance_set_detail(struct instance *i, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(i->detail, sizeof i->detail, fmt, ap);
	va_end(ap);
	utf8_scrub(i->detail);   /* it goes into JSON answers */
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	service_instance_timer(arg);
}

static void handover_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	service_handover(arg);
}

static void probe_timer_cb(evutil_socket_t fd, short what, void *arg);

struct instance *instance_new(struct service *s, int index)
{
	struct instance *i = xcalloc(1, sizeof *i);
	const struct svc_config *c = service_config(s);

	i->index = index;
	i->svc = s;
	service_ref(s);   /* until I is freed: a gone instance still names it */
	i->refs = 1;   /* the launcher's, dropped by instance_gone */
	i->state = INST_STARTING;
	i->created = i->state_since = now_s();
	i->remote_port = c->remote_port + index;
	i->local_port = c->local_port + index;
	i->timer = evtimer_new(gw->base, timer_cb, i);
	i->probe_timer = evtimer_new(gw->base, probe_timer_cb, i);
	i->handover_ev = evtimer_new(gw->base, handover_cb, i);
	TAILQ_INIT(&i->users);
	snprintf(i->detail, sizeof i->detail, "launching");
	return i;
}

void instance_ref(struct instance *i)
{
	i->refs++;
}

void instance_unref(struct instance *i)
{
	assert(i->refs > 0);
	if (--i->refs > 0)
		return;
	/* nothing refers to it: the launcher said gone and everything let go */
	assert(i->state == INST_GONE && i->npool == 0 && i->probe == NULL && TAILQ_EMPTY(&i->users));
	event_free(i->timer);
	event_free(i->probe_timer);
	event_free(i->handover_ev);
	free(i->pool);
	service_unref(i->svc);
	free(i);
}

/* --- requests in flight --- */

void instance_attach(struct instance *i, struct waiter *w)
{
	instance_ref(i);
	w->inst = i;
	w->attached = true;
	TAILQ_INSERT_TAIL(&i->users, w, link);
}

/* W leaves I (its reference with it). */
static void detach_user(struct instance *i, struct waiter *w)
{
	if (!w->attached)
		return;
	TAILQ_REMOVE(&i->users, w, link);
	w->attached = false;
	w->inst = NULL;
	instance_unref(i);
}

void instance_release(struct instance *i, struct waiter *w)
{
	instance_ref(i);   /* the policy below may stop I; keep it until we are done */
	detach_user(i, w);
	service_instance_released(i);
	instance_unref(i);
}

/* --- health probes --- */

/* End the probe in flight (if any) without a verdict. */
static void probe_drop(struct instance *i, const char *why)
{
	struct hconn *p = i->probe;

	if (p == NULL)
		return;
	i->probe = NULL;
	http_set_owner(p, NULL, NULL);
	http_close(p, why);
	instance_unref(i);
}

static void probe_connected(struct hconn *c)
{
	struct instance *i = http_owner(c);
	char head[512];
	int n;

	n = snprintf(head, sizeof head,
		     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: slurmgate-health\r\n"
		     "Connection: close\r\n\r\n",
		     service_config(i->svc)->check_health_path, i->addr_str);
	http_send_head(c, head, (size_t)n, false, false);
	http_set_timeout(c, PROBE_TIMEOUT_S);
}

static void probe_head(struct hconn *c, struct http_msg *m)
{
	struct instance *i = http_owner(c);

	i->probe_status = m->status;
}

static void probe_done(struct hconn *c)
{
	struct instance *i = http_owner(c);
	bool ok = i->probe_status >= 200 && i->probe_status < 300;

	i->probe = NULL;
	http_set_owner(c, NULL, NULL);
	http_close(c, "probe done");
	if (i->state != INST_GONE)
		service_probe_result(i, ok);
	instance_unref(i);
}

static bool probing_state(enum inst_state st);

static void probe_closed(struct hconn *c, const char *why)
{
	struct instance *i = http_owner(c);

	if (i == NULL || i->probe != c)
		return;   /* done already, or abandoned */
	i->probe = NULL;
	if (http_own_shortage(why) && probing_state(i->state))
		event_add(i->probe_timer, &(struct timeval){1, 0});   /* no verdict: ours */
	else if (i->state != INST_GONE)
		service_probe_result(i, false);
	instance_unref(i);
}

static const struct hconn_ops probe_ops = {
	.connected = probe_connected,
	.head = probe_head,
	.done = probe_done,
	.closed = probe_closed,
};

static bool probing_state(enum inst_state st)
{
	return st == INST_PROBING || st == INST_READY || st == INST_UNHEALTHY || st == INST_DRAINING;
}

/* The probe in flight is past its deadline: the connection's own timeout
 * is between bytes, and an answer that trickles (a health path that
 * streams, a server wedged mid-answer) would hold it, and the verdict,
 * forever. It fails, and the instance's detail says why. */
static void probe_overdue(struct instance *i)
{
	const struct svc_config *c = service_config(i->svc);

	instance_ref(i);
	probe_drop(i, "health check overdue");
	if (i->state == INST_PROBING || i->state == INST_UNHEALTHY) {
		if (i->probe_status)
			snprintf(i->detail, sizeof i->detail,
				 "the health check %s%s did not finish within %d s (it answered %d, "
				 "then its body did not end)",
				 i->addr_str, c->check_health_path, PROBE_DEADLINE_S, i->probe_status);
		else
			snprintf(i->detail, sizeof i->detail,
				 "the health check %s%s did not finish within %d s (no answer)",
				 i->addr_str, c->check_health_path, PROBE_DEADLINE_S);
	}
	service_probe_result(i, false);
	instance_unref(i);
}

static void probe_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct instance *i = arg;

	(void)fd, (void)what;
	if (!probing_state(i->state))
		return;
	if (i->probe != NULL) {
		probe_overdue(i);
		return;
	}
	i->probe_status = 0;
	instance_ref(i);
	i->probe = http_connect((struct sockaddr *)&i->addr, i->addrlen, PROBE_TIMEOUT_S, &probe_ops, i);
	/* the probe's deadline as a whole; a verdict re-arms the timer first */
	if (i->probe != NULL)
		event_add(i->probe_timer, &(struct timeval){PROBE_DEADLINE_S, 0});
}

/* The next probe of a booting or unhealthy instance, with backoff. */
void instance_probe_schedule(struct instance *i)
{
	int ms = i->probe_delay_ms;

	if (i->state != INST_PROBING && i->state != INST_UNHEALTHY)
		return;
	event_add(i->probe_timer, &(struct timeval){ms / 1000, (ms % 1000) * 1000});
	i->probe_delay_ms = ms * 3 / 2 > PROBE_MAX_MS ? PROBE_MAX_MS : ms * 3 / 2;
}

void instance_probe_restart(struct instance *i)
{
	event_del(i->probe_timer);
	probe_drop(i, "probing again");
	i->probe_delay_ms = PROBE_FIRST_MS;
	instance_probe_schedule(i);
}

int instance_set_addr(struct instance *i, const char *host, int port, const char **cause)
{
	char spec[160];
	int len = (int)sizeof i->addr;

	snprintf(spec, sizeof spec, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
	if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&i->addr, &len) != 0) {
		*cause = "bad service address";
		return -1;
	}
	i->addrlen = (socklen_t)len;
	snprintf(i->addr_str, sizeof i->addr_str, "%s", spec);
	return 0;
}

/* --- the one way out of everything that runs on its own --- */

void instance_detach_all(struct instance *i, const char *why, bool abort_users)
{
	struct waiter *w;

	instance_ref(i);
	event_del(i->timer);
	event_del(i->probe_timer);
	event_del(i->handover_ev);
	probe_drop(i, why);
	instance_pool_flush(i);
	/* each abort ends its exchange, which must not release it again */
	while (abort_users && (w = TAILQ_FIRST(&i->users)) != NULL) {
		detach_user(i, w);
		service_instance_aborted(i, w);
		w->abort(w, 502, why);
	}
	instance_unref(i);
}
