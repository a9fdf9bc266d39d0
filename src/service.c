/* service.c - services, their instances, the wait queue and the idle clock. */
#include "service.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/util.h>

#include "config.h"
#include "http.h"
#include "launcher.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define PROBE_FIRST_MS 10
#define PROBE_MAX_MS 100
#define PROBE_TIMEOUT_S 5

struct service {
	struct svc_config *cfg;
	const struct launcher_ops *lops;
	TAILQ_HEAD(, instance) insts;
	int ninst;
	TAILQ_HEAD(, waiter) waiters;
	int nwaiting;
	int inflight;
	char last_error[512];
	int failures;         /* consecutive failed starts */
	double backoff_until; /* no new start before this (monotonic s) */
	uint64_t requests, starts, start_failures;
	bool recovering;      /* the launcher is still looking for earlier instances */
	bool demanded;        /* a start was asked for while recovering */
	double up_since;      /* load above target since (0: not) */
	double below_since;   /* ... and back at or below it since (0: not) */
	double down_since;    /* an instance to spare since (0: not) */
	double last_start_s;  /* how long the last successful start took */
	struct event *scale_ev;
	struct svc_metrics m;
};

bool services_managed = true;
bool services_exiting;

static struct event_base *sbase;
static struct config *scfg;
static struct service **svcs;
static size_t nsvcs;
static struct service **by_route;   /* sorted by route_name */
static void (*shutdown_done)(void);
static int live_instances;

static void inst_stop(struct instance *i, const char *why);
static void inst_free(struct instance *i);
static void probe_schedule(struct instance *i);
static void idle_arm(struct instance *i);

const char *instance_state_name(enum inst_state st)
{
	static const char *const names[] = {"starting", "probing", "ready", "draining", "stopping"};
	return names[st];
}

const char *service_state_name(enum svc_state st)
{
	static const char *const names[] = {"stopped", "starting", "ready", "stopping", "failed"};
	return names[st];
}

/* Every state change of an instance goes through here, and is logged. */
static void inst_set_state(struct instance *i, enum inst_state st, const char *why)
{
	log_info("svc %s[%d]: %s -> %s (%s)", i->svc->cfg->name, i->index,
		 instance_state_name(i->state), instance_state_name(st), why);
	i->state = st;
}

void instance_set_detail(struct instance *i, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(i->detail, sizeof i->detail, fmt, ap);
	va_end(ap);
}

static bool any_starting_except(const struct service *s, const struct instance *except)
{
	struct instance *i;

	TAILQ_FOREACH(i, &s->insts, link)
		if (i != except && (i->state == INST_STARTING || i->state == INST_PROBING))
			return true;
	return false;
}

static bool any_starting(const struct service *s)
{
	return any_starting_except(s, NULL);
}

/* The ready instance with the fewest requests in flight; among ties, one
 * at random (reservoir sampling), so equal instances share the load. */
static struct instance *pick_ready_avoiding(struct service *s, const struct instance *avoid)
{
	struct instance *i, *best = NULL;
	int ties = 0;

	TAILQ_FOREACH(i, &s->insts, link) {
		if (i->state != INST_READY || i == avoid)
			continue;
		if (best == NULL || i->inflight < best->inflight) {
			best = i;
			ties = 1;
		} else if (i->inflight == best->inflight && random() % ++ties == 0) {
			best = i;
		}
	}
	return best;
}

static struct instance *pick_ready(struct service *s)
{
	return pick_ready_avoiding(s, NULL);
}

static int count_state(const struct service *s, enum inst_state a, enum inst_state b)
{
	struct instance *i;
	int n = 0;

	TAILQ_FOREACH(i, &s->insts, link)
		n += i->state == a || i->state == b;
	return n;
}

static void assign(struct instance *i)
{
	i->inflight++;
	i->svc->inflight++;
	if (i->inflight == 1)
		event_del(i->timer);
}

/* Hand waiting requests to ready instances, in arrival order. */
static void dispatch_waiters(struct service *s)
{
	struct waiter *w;
	struct instance *i;

	while ((w = TAILQ_FIRST(&s->waiters)) != NULL && (i = pick_ready(s)) != NULL) {
		TAILQ_REMOVE(&s->waiters, w, link);
		s->nwaiting--;
		w->queued = false;
		assign(i);
		w->ready(w, i);
	}
}

/* Fail every waiting request with 503 and REASON. */
static void fail_waiters(struct service *s, const char *reason, int retry_after)
{
	struct waiter *w;

	while ((w = TAILQ_FIRST(&s->waiters)) != NULL) {
		TAILQ_REMOVE(&s->waiters, w, link);
		s->nwaiting--;
		w->queued = false;
		w->fail(w, 503, reason, retry_after);
	}
}

static int backoff_left(const struct service *s)
{
	double left = s->backoff_until - now_s();
	return left > 0 ? (int)ceil(left) : 0;
}

static void inst_timer_cb(evutil_socket_t fd, short what, void *arg);
static void probe_timer_cb(evutil_socket_t fd, short what, void *arg);
static void handover_cb(evutil_socket_t fd, short what, void *arg);
static void scale_check(struct service *s);

/* The lowest instance index not in use, below LIMIT (-1: none). */
static int free_index(const struct service *s, int limit)
{
	struct instance *o;

	for (int idx = 0; idx < limit; idx++) {
		bool used = false;
		TAILQ_FOREACH(o, &s->insts, link)
			used |= o->index == idx;
		if (!used)
			return idx;
	}
	return -1;
}

/* A new instance at INDEX in STARTING state, its start deadline running. */
static struct instance *inst_new(struct service *s, int index)
{
	struct instance *i = xcalloc(1, sizeof *i);

	i->index = index;
	i->svc = s;
	i->state = INST_STARTING;
	i->created = now_s();
	i->remote_port = s->cfg->remote_port + i->index;
	i->local_port = s->cfg->local_port + i->index;
	i->timer = evtimer_new(sbase, inst_timer_cb, i);
	i->probe_timer = evtimer_new(sbase, probe_timer_cb, i);
	i->handover_ev = evtimer_new(sbase, handover_cb, i);
	snprintf(i->detail, sizeof i->detail, "launching");
	TAILQ_INSERT_TAIL(&s->insts, i, link);
	s->ninst++;
	live_instances++;
	event_add(i->timer, &(struct timeval){s->cfg->start_timeout, 0});
	return i;
}

/* Create and start one more instance. Returns it, or NULL if the launcher
 * refused at once (the failure is recorded). */
static struct instance *inst_start(struct service *s, int index)
{
	struct instance *i = inst_new(s, index);
	char *cause = NULL;

	s->starts++;
	log_info("svc %s[%d]: starting (%s launcher, port %d)", s->cfg->name, i->index,
		 s->lops->name, i->remote_port);
	if (s->lops->start(i, &cause) != 0) {
		instance_gone(i, cause);
		free(cause);
		return NULL;
	}
	return i;
}

/* A start did not reach READY: remember why, back off, answer the waiters. */
static void start_failed(struct instance *i, const char *reason)
{
	struct service *s = i->svc;

	s->failures++;
	s->start_failures++;
	if (has_prefix(reason, "start script exited"))
		s->m.fail_exited++;
	else if (has_prefix(reason, "no healthy answer"))
		s->m.fail_timeout++;
	else if (has_prefix(reason, "Slurm job"))
		s->m.fail_job++;
	else if (has_prefix(reason, "sbatch"))
		s->m.fail_submit++;
	else if (has_prefix(reason, "cannot open a tunnel"))
		s->m.fail_tunnel++;
	else
		s->m.fail_other++;
	snprintf(s->last_error, sizeof s->last_error, "%s", reason);
	/* the first failure may be retried at once; repeated ones back off */
	if (s->failures >= 2) {
		double d = s->failures >= 8 ? 60 : (double)(1 << (s->failures - 2));
		s->backoff_until = now_s() + d;
	}
	log_warn("svc %s[%d]: start failed after %.2f s: %s", s->cfg->name, i->index,
		 now_s() - i->created, reason);
}

/* Start a stopped service. Returns 0 if a start is under way. */
static int service_start(struct service *s, const char **reason, int *retry_after)
{
	if (any_starting(s))
		return 0;
	if (!services_managed) {
		*reason = "service management is disabled";
		*retry_after = 30;
		return -1;
	}
	if (shutdown_done != NULL) {
		*reason = "the gateway is shutting down";
		*retry_after = 5;
		return -1;
	}
	if (backoff_left(s) > 0) {
		*reason = s->last_error;
		*retry_after = backoff_left(s);
		return -1;
	}
	/* still looking for instances of an earlier run, or the previous
	 * instance is still stopping: the start comes when that is over */
	if (s->recovering || free_index(s, s->cfg->max_instances) < 0) {
		s->demanded = true;   /* kick() starts it then, waiters or not */
		return 0;
	}
	if (inst_start(s, free_index(s, s->cfg->max_instances)) == NULL) {
		*reason = s->last_error;
		*retry_after = backoff_left(s) > 0 ? backoff_left(s) : 1;
		return -1;
	}
	return 0;
}

int service_request(struct service *s, struct waiter *w, bool hold, struct instance **inst,
		    int *status, const char **reason, int *retry_after)
{
	struct instance *i;

	s->requests++;
	/* a retry goes to another instance if there is one */
	if ((w->avoid == NULL || (i = pick_ready_avoiding(s, w->avoid)) == NULL))
		i = pick_ready(s);
	if (i != NULL && TAILQ_EMPTY(&s->waiters)) {
		assign(i);
		*inst = i;
		if (s->cfg->max_instances > 1)
			scale_check(s);
		return 0;
	}
	*status = 503;
	if (service_start(s, reason, retry_after) != 0)
		return -1;
	if (!hold) {
		*reason = "the service is starting; retry later";
		*retry_after = 5;
		return -1;
	}
	w->svc = s;
	w->queued = true;
	w->since = now_s();
	TAILQ_INSERT_TAIL(&s->waiters, w, link);
	s->nwaiting++;
	scale_check(s);
	return 1;
}

void service_cancel(struct waiter *w)
{
	if (!w->queued)
		return;
	TAILQ_REMOVE(&w->svc->waiters, w, link);
	w->svc->nwaiting--;
	w->queued = false;
}

void service_demand(struct service *s)
{
	struct instance *i;
	const char *reason;
	int ra;

	if (pick_ready(s) == NULL) {
		if (s->recovering)
			s->demanded = true;   /* started once the look for earlier jobs is over */
		else
			(void)service_start(s, &reason, &ra);
		return;
	}
	TAILQ_FOREACH(i, &s->insts, link)
		if (i->state == INST_READY && i->inflight == 0)
			idle_arm(i);
}

void service_stop_all(struct service *s, const char *why)
{
	struct instance *i, *next;

	fail_waiters(s, why, 30);
	for (i = TAILQ_FIRST(&s->insts); i != NULL; i = next) {
		next = TAILQ_NEXT(i, link);
		if (i->state != INST_STOPPING)
			inst_stop(i, why);
	}
}

/* --- the idle clock --- */

static void idle_arm(struct instance *i)
{
	i->idle_since = now_s();
	event_add(i->timer, &(struct timeval){i->svc->cfg->timeout, 0});
}

void instance_release(struct instance *i)
{
	struct service *s = i->svc;

	i->inflight--;
	s->inflight--;
	i->served++;
	if (i->inflight == 0) {
		if (i->state == INST_READY)
			idle_arm(i);
		else if (i->state == INST_DRAINING)
			inst_stop(i, "drained");
	}
	if (s->cfg->max_instances > 1 || s->cfg->min_instances > 0)
		scale_check(s);
}

static void inst_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct instance *i = arg;
	struct service *s = i->svc;
	char why[600];

	(void)fd, (void)what;
	if (i->state == INST_READY && i->inflight == 0) {
		if (count_state(s, INST_READY, INST_READY) <= s->cfg->min_instances) {
			idle_arm(i);   /* kept warm: min_instances */
			return;
		}
		snprintf(why, sizeof why, "idle for %d s", s->cfg->timeout);
		inst_stop(i, why);
	} else if (i->state == INST_PROBING && i->ready_at > 0) {
		snprintf(why, sizeof why, "unhealthy for %d s", s->cfg->start_timeout);
		inst_stop(i, why);
	} else if (i->state == INST_STARTING || i->state == INST_PROBING) {
		snprintf(why, sizeof why, "no healthy answer within start_timeout (%d s); last state: %s",
			 s->cfg->start_timeout, i->detail);
		instance_fail(i, why);
	}
}

/* --- scaling --- */

/* Take I out of rotation; it stops once nothing is in flight on it. */
static void instance_drain(struct instance *i, const char *why)
{
	if (i->state != INST_READY && i->state != INST_PROBING)
		return;
	if (i->inflight == 0) {
		inst_stop(i, why);
		return;
	}
	inst_set_state(i, INST_DRAINING, why);
	snprintf(i->detail, sizeof i->detail, "draining (%s): %d in flight", why, i->inflight);
	event_del(i->timer);
}

/* May one more instance start now? */
static bool can_start(const struct service *s, int limit)
{
	return services_managed && shutdown_done == NULL && !s->recovering && backoff_left(s) == 0 &&
	       free_index(s, limit) >= 0;
}

static void scale_later(struct service *s, double secs)
{
	if (secs < 0.05)
		secs = 0.05;
	if (!event_pending(s->scale_ev, EV_TIMEOUT, NULL))
		event_add(s->scale_ev, &(struct timeval){(long)secs, (long)((secs - (long)secs) * 1e6)});
}

static void start_for(struct service *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void start_for(struct service *s, const char *fmt, ...)
{
	char why[300];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	log_info("svc %s: scale up: %s", s->cfg->name, why);
	inst_start(s, free_index(s, s->cfg->max_instances));
}

/* The scaler: keep min_instances, start more under load (at once for a
 * cold burst, after scale_up_delay otherwise), drain one when it is not
 * needed for scale_down_delay. Cheap; runs on every change of load. */
static void scale_check(struct service *s)
{
	const struct svc_config *c = s->cfg;
	int ready = count_state(s, INST_READY, INST_READY);
	int starting = count_state(s, INST_STARTING, INST_PROBING);
	int load = s->inflight + s->nwaiting;
	double now = now_s();

	if (ready + starting < c->min_instances) {
		/* all that are missing, at once: N warm instances cost one start time */
		while (ready + starting < c->min_instances && can_start(s, c->max_instances)) {
			start_for(s, "%d running, min_instances is %d", ready + starting, c->min_instances);
			starting++;
		}
		if (ready + starting < c->min_instances && backoff_left(s) > 0)
			scale_later(s, backoff_left(s));
		return;
	}
	if (ready == 0) {
		/* a cold burst: as many instances as it needs, at once */
		int need = (s->nwaiting + c->target_concurrency - 1) / c->target_concurrency;
		if (need > c->max_instances)
			need = c->max_instances;
		if (starting > 0 && starting < need && can_start(s, c->max_instances))
			start_for(s, "%d requests waiting for %d starting instances (target %d each)",
				  s->nwaiting, starting, c->target_concurrency);
		return;
	}
	if (ready + starting < c->max_instances && starting == 0 &&
	    (double)load / ready > c->target_concurrency) {
		s->below_since = 0;
		if (s->up_since == 0)
			s->up_since = now;
		if (now - s->up_since >= c->scale_up_delay) {
			s->up_since = 0;
			if (can_start(s, c->max_instances))
				start_for(s, "%d requests for %d ready instances above target %d for %d s", load,
					  ready, c->target_concurrency, c->scale_up_delay);
		} else {
			scale_later(s, s->up_since + c->scale_up_delay - now);
		}
	} else if (s->up_since != 0) {
		/* clients that finish together dip below target for a moment
		 * between rounds: only a dip that lasts resets the clock */
		double grace = c->scale_up_delay / 2.0 < 1.0 ? c->scale_up_delay / 2.0 : 1.0;
		if (s->below_since == 0)
			s->below_since = now;
		if (now - s->below_since >= grace) {
			s->up_since = 0;
			s->below_since = 0;
		} else {
			scale_later(s, grace - (now - s->below_since));
		}
	}
	if (ready > 1 && ready > c->min_instances && starting == 0 &&
	    load <= c->target_concurrency * (ready - 1)) {
		if (s->down_since == 0)
			s->down_since = now;
		if (now - s->down_since >= c->scale_down_delay) {
			struct instance *i, *least = NULL;
			s->down_since = 0;
			TAILQ_FOREACH(i, &s->insts, link)
				if (i->state == INST_READY && (least == NULL || i->inflight < least->inflight))
					least = i;
			log_info("svc %s: scale down: %d requests fit on %d instances for %d s; draining [%d]",
				 c->name, load, ready - 1, c->scale_down_delay, least->index);
			instance_drain(least, "scale down");
		} else {
			scale_later(s, s->down_since + c->scale_down_delay - now);
		}
	} else {
		s->down_since = 0;
	}
}

static void scale_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	scale_check(arg);
}

/* The job's time limit comes near: start its replacement. */
static void handover_cb(evutil_socket_t fd, short what, void *arg)
{
	struct instance *i = arg, *n;
	struct service *s = i->svc;

	(void)fd, (void)what;
	if (i->state != INST_READY || i->replaced_by != NULL)
		return;
	if (!can_start(s, s->cfg->max_instances + 1)) {
		log_warn("svc %s[%d]: time limit in %.0f s, but no replacement can start now", s->cfg->name,
			 i->index, i->deadline - now_s());
		return;
	}
	log_info("svc %s[%d]: time limit in %.0f s: starting a replacement", s->cfg->name, i->index,
		 i->deadline - now_s());
	n = inst_start(s, free_index(s, s->cfg->max_instances + 1));
	if (n != NULL) {
		n->replaces = i;
		i->replaced_by = n;
	}
}

void instance_set_deadline(struct instance *i, double end_at)
{
	struct service *s = i->svc;
	double lead, left = end_at - now_s(), at;

	i->deadline = end_at;
	/* auto: twice the last start plus 30 s, for a slower queue next time */
	lead = s->cfg->handover_lead >= 0 ? s->cfg->handover_lead
		: s->last_start_s > 0	  ? s->last_start_s * 2 + 30
					  : 90;
	if (lead > left * 0.8 && i->ready_at == 0)
		lead = left * 0.8;   /* a short limit: still leave the job most of it */
	at = left - lead;
	if (at < 0)
		at = 0;
	event_add(i->handover_ev, &(struct timeval){(long)at, (long)((at - (long)at) * 1e6)});
}

/* --- stopping --- */

/* Ask the launcher to stop I. Nothing is touched after the call: the
 * launcher may report instance_gone() (and so free I) from inside it. */
static void inst_stop(struct instance *i, const char *why)
{
	struct hconn **pool = i->pool;
	int npool = i->npool;

	if (i->state == INST_STOPPING)
		return;
	inst_set_state(i, INST_STOPPING, why);
	snprintf(i->detail, sizeof i->detail, "stopping: %s", why);
	event_del(i->timer);
	event_del(i->probe_timer);
	event_del(i->handover_ev);
	if (i->probe) {
		struct hconn *p = i->probe;
		i->probe = NULL;
		http_close(p, "instance stopping");
	}
	i->pool = NULL;
	i->npool = i->poolcap = 0;
	for (int k = 0; k < npool; k++)
		http_close(pool[k], "instance stopping");
	free(pool);
	i->svc->lops->stop(i, i->svc->cfg->stop_grace);
}

/* Requests wait and nothing is starting: start (a deferred start). */
static void kick(struct service *s)
{
	const char *reason;
	int ra;

	if ((!TAILQ_EMPTY(&s->waiters) || s->demanded) && !s->recovering && !any_starting(s) &&
	    pick_ready(s) == NULL) {
		s->demanded = false;
		if (service_start(s, &reason, &ra) != 0)
			fail_waiters(s, reason, ra);
	}
	scale_check(s);
}

static void inst_free(struct instance *i)
{
	struct service *s = i->svc;

	TAILQ_REMOVE(&s->insts, i, link);
	s->ninst--;
	live_instances--;
	s->m.instance_seconds += now_s() - i->created;
	event_free(i->timer);
	event_free(i->probe_timer);
	event_free(i->handover_ev);
	if (i->replaces)
		i->replaces->replaced_by = NULL;
	if (i->replaced_by)
		i->replaced_by->replaces = NULL;
	if (i->probe)
		http_close(i->probe, "instance gone");
	for (int k = 0; k < i->npool; k++)
		http_close(i->pool[k], "instance gone");
	free(i->pool);
	free(i);
	kick(s);
	if (shutdown_done != NULL && live_instances == 0) {
		void (*cb)(void) = shutdown_done;
		cb();
	}
}

void instance_fail(struct instance *i, const char *reason)
{
	struct service *s = i->svc;

	if (i->state != INST_STARTING && i->state != INST_PROBING) {
		inst_stop(i, reason);
		return;
	}
	start_failed(i, reason);
	if (!any_starting_except(s, i) && pick_ready(s) == NULL)
		fail_waiters(s, reason, backoff_left(s) > 0 ? backoff_left(s) : 1);
	inst_stop(i, reason);
}

struct instance *service_adopt(struct service *s, int index)
{
	struct instance *o;

	if (index < 0 || index >= s->cfg->max_instances)
		return NULL;
	TAILQ_FOREACH(o, &s->insts, link)
		if (o->index == index)
			return NULL;
	return inst_new(s, index);
}

void service_recovered(struct service *s)
{
	if (!s->recovering)
		return;
	s->recovering = false;
	kick(s);
}

void instance_gone(struct instance *i, const char *reason)
{
	struct service *s = i->svc;
	enum inst_state was = i->state;

	if (was == INST_STARTING || was == INST_PROBING) {
		start_failed(i, reason);
		i->state = INST_STOPPING;
		if (!any_starting(s) && pick_ready(s) == NULL)
			fail_waiters(s, reason, backoff_left(s) > 0 ? backoff_left(s) : 1);
	} else if (was == INST_READY || was == INST_DRAINING) {
		snprintf(s->last_error, sizeof s->last_error, "instance exited unexpectedly: %s", reason);
		log_warn("svc %s[%d]: %s", s->cfg->name, i->index, s->last_error);
	} else {
		log_info("svc %s[%d]: stopped after %.1f s (%s)", s->cfg->name, i->index,
			 now_s() - i->created, reason);
	}
	i->state = INST_STOPPING;
	inst_free(i);
}

/* --- health probes --- */

static void probe_connected(struct hconn *c)
{
	struct instance *i = http_owner(c);
	char head[512];
	int n;

	n = snprintf(head, sizeof head,
		     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: slurmgate-health\r\n"
		     "Connection: close\r\n\r\n",
		     i->svc->cfg->check_health_path, i->addr_str);
	http_send_head(c, head, (size_t)n, false, false);
	http_set_timeout(c, PROBE_TIMEOUT_S);
}

static void probe_head(struct hconn *c, struct http_msg *m)
{
	struct instance *i = http_owner(c);

	i->probe_status = m->status;
}

static void inst_ready(struct instance *i)
{
	struct service *s = i->svc;
	bool first = i->ready_at == 0;

	inst_set_state(i, INST_READY, first ? "health check passed" : "healthy again");
	snprintf(i->detail, sizeof i->detail, "ready at %s", i->addr_str);
	if (first) {
		i->ready_at = now_s();
		s->failures = 0;
		s->backoff_until = 0;
		s->last_start_s = i->ready_at - i->created;
		s->m.cold_starts++;
		histo_observe(&s->m.cold_queue, i->endpoint_at - i->created);
		histo_observe(&s->m.cold_boot, i->ready_at - i->endpoint_at);
		log_info("svc %s[%d]: ready after %.2f s", s->cfg->name, i->index, s->last_start_s);
	}
	i->probe_fails = 0;
	event_del(i->timer);
	event_add(i->probe_timer, &(struct timeval){s->cfg->health_interval, 0});
	if (i->replaces) {
		/* a handover: the old instance takes no new requests, ends when drained */
		struct instance *old = i->replaces;
		i->replaces = NULL;
		old->replaced_by = NULL;
		log_info("svc %s: handover from [%d] to [%d]", s->cfg->name, old->index, i->index);
		instance_drain(old, "replaced before its time limit");
	}
	dispatch_waiters(s);
	if (i->inflight == 0 && i->state == INST_READY)
		idle_arm(i);
	scale_check(s);
}

/* A probe's verdict. While ready, two failures in a row take the
 * instance out of rotation until a probe passes again. */
static void probe_result(struct instance *i, bool ok)
{
	if (i->state == INST_PROBING) {
		if (ok)
			inst_ready(i);
		else
			probe_schedule(i);
	} else if (i->state == INST_READY || i->state == INST_DRAINING) {
		if (ok)
			i->probe_fails = 0;
		else if (++i->probe_fails >= 2 && i->state == INST_READY) {
			instance_unreachable(i, "health check failed twice");
			return;
		}
		event_add(i->probe_timer,
			  &(struct timeval){i->probe_fails ? 1 : i->svc->cfg->health_interval, 0});
	}
}

static void probe_done(struct hconn *c)
{
	struct instance *i = http_owner(c);

	i->probe = NULL;
	http_close(c, "probe done");
	probe_result(i, i->probe_status >= 200 && i->probe_status < 300);
}

static void probe_closed(struct hconn *c, const char *why)
{
	struct instance *i = http_owner(c);

	(void)why;
	if (i == NULL || i->probe != c)
		return;   /* done already, or abandoned */
	i->probe = NULL;
	probe_result(i, false);
}

static const struct hconn_ops probe_ops = {
	.connected = probe_connected,
	.head = probe_head,
	.done = probe_done,
	.closed = probe_closed,
};

static void probe_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct instance *i = arg;

	(void)fd, (void)what;
	if ((i->state != INST_PROBING && i->state != INST_READY && i->state != INST_DRAINING) ||
	    i->probe != NULL)
		return;
	i->probe_status = 0;
	i->probe = http_connect((struct sockaddr *)&i->addr, i->addrlen, PROBE_TIMEOUT_S, &probe_ops, i);
}

static void probe_schedule(struct instance *i)
{
	int ms = i->probe_delay_ms;

	if (i->state != INST_PROBING)
		return;
	event_add(i->probe_timer, &(struct timeval){ms / 1000, (ms % 1000) * 1000});
	i->probe_delay_ms = ms * 3 / 2 > PROBE_MAX_MS ? PROBE_MAX_MS : ms * 3 / 2;
}

void instance_endpoint(struct instance *i, const char *host, int port)
{
	char spec[128];
	int len = (int)sizeof i->addr;

	snprintf(spec, sizeof spec, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
	if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&i->addr, &len) != 0) {
		char why[200];
		snprintf(why, sizeof why, "bad service address %s", spec);
		inst_stop(i, why);
		return;
	}
	i->addrlen = (socklen_t)len;
	if (i->endpoint_at == 0)
		i->endpoint_at = now_s();
	snprintf(i->addr_str, sizeof i->addr_str, "%s", spec);
	inst_set_state(i, INST_PROBING, "endpoint known");
	snprintf(i->detail, sizeof i->detail, "waiting for %s%s to answer", spec,
		 i->svc->cfg->check_health_path);
	i->probe_delay_ms = PROBE_FIRST_MS;
	probe_schedule(i);
}

void instance_unreachable(struct instance *i, const char *why)
{
	if (i->state != INST_READY)
		return;
	inst_set_state(i, INST_PROBING, why);
	snprintf(i->detail, sizeof i->detail, "unreachable (%s); probing", why);
	/* back in rotation when a probe passes; stopped if that takes too long */
	event_add(i->timer, &(struct timeval){i->svc->cfg->start_timeout, 0});
	event_del(i->probe_timer);
	i->probe_delay_ms = PROBE_FIRST_MS;
	probe_schedule(i);
	scale_check(i->svc);
	/* STAND-IN (branch slurmlife): ask the launcher to look now; inst's
	 * proxy change calls check() where a forward closes before any byte */
	if (i->svc->lops->check)
		i->svc->lops->check(i);
}

/* STAND-IN (branch slurmlife) for instance_hold() from branch "inst":
 * replace with inst's at merge. Out of rotation the way a refused
 * connection takes it (probing, waiters held, stopped after start_timeout),
 * with REASON as its detail. */
void instance_hold(struct instance *i, const char *reason)
{
	instance_unreachable(i, reason);
	snprintf(i->detail, sizeof i->detail, "%s", reason);
}

/* --- the pool of idle upstream connections --- */

static void pool_remove(struct instance *i, struct hconn *c)
{
	for (int k = 0; k < i->npool; k++)
		if (i->pool[k] == c) {
			i->pool[k] = i->pool[--i->npool];
			return;
		}
}

static void pool_closed(struct hconn *c, const char *why)
{
	(void)why;
	pool_remove(http_owner(c), c);
}

static const struct hconn_ops pool_ops = {
	.closed = pool_closed,
};

struct hconn *instance_pool_get(struct instance *i)
{
	return i->npool > 0 ? i->pool[--i->npool] : NULL;   /* the most recently used */
}

void instance_pool_flush(struct instance *i)
{
	struct hconn **pool = i->pool;
	int n = i->npool;

	i->pool = NULL;
	i->npool = i->poolcap = 0;
	for (int k = 0; k < n; k++) {
		http_set_owner(pool[k], NULL, NULL);
		http_close(pool[k], "pool flushed");
	}
	free(pool);
}

void instance_pool_put(struct instance *i, struct hconn *c)
{
	int cap = scfg->upstream_keepalive;

	if (i->state == INST_STOPPING || i->npool >= cap) {
		http_set_owner(c, NULL, NULL);   /* the exchange that used it is ending */
		http_close(c, "pool full");
		return;
	}
	if (i->npool == i->poolcap) {
		i->poolcap = i->poolcap ? i->poolcap * 2 : 16;
		i->pool = xrealloc(i->pool, (size_t)i->poolcap * sizeof *i->pool);
	}
	i->pool[i->npool++] = c;
	http_set_owner(c, &pool_ops, i);
	http_park(c, 30);
}

/* --- set-up, reload and look-up --- */

static int route_cmp(const void *a, const void *b)
{
	const struct service *x = *(struct service *const *)a, *y = *(struct service *const *)b;
	return strcmp(x->cfg->route_name, y->cfg->route_name);
}

static const struct launcher_ops *const all_launchers[] = {&launcher_local, &launcher_slurm};

static struct service *service_new(struct svc_config *c)
{
	struct service *s = xcalloc(1, sizeof *s);

	s->cfg = c;
	s->lops = c->launcher == LAUNCHER_LOCAL ? &launcher_local : &launcher_slurm;
	TAILQ_INIT(&s->insts);
	TAILQ_INIT(&s->waiters);
	s->scale_ev = evtimer_new(sbase, scale_cb, s);
	metrics_init(&s->m);
	return s;
}

/* Rebuild the route index after the set of services changed. */
static void index_routes(void)
{
	free(by_route);
	by_route = xcalloc(nsvcs ? nsvcs : 1, sizeof *by_route);
	memcpy(by_route, svcs, nsvcs * sizeof *svcs);
	qsort(by_route, nsvcs, sizeof *by_route, route_cmp);
}

/* Set up each launcher that a service uses, once. RECOVER: let it look for
 * instances left by an earlier run (at start-up only). */
static void launchers_prepare(bool recover)
{
	for (size_t l = 0; l < 2; l++) {
		bool used = false;
		for (size_t k = 0; k < nsvcs; k++)
			used |= svcs[k]->lops == all_launchers[l];
		if (!used)
			continue;
		if (all_launchers[l]->init)
			all_launchers[l]->init(sbase, scfg);   /* idempotent: also takes a new config */
		if (!recover || all_launchers[l]->recover == NULL)
			continue;
		for (size_t k = 0; k < nsvcs; k++)
			if (svcs[k]->lops == all_launchers[l])
				svcs[k]->recovering = true;
		all_launchers[l]->recover();
	}
}

void services_init(struct event_base *base, struct config *cfg)
{
	sbase = base;
	scfg = cfg;
	nsvcs = cfg->n_services;
	svcs = xcalloc(nsvcs ? nsvcs : 1, sizeof *svcs);
	for (size_t k = 0; k < nsvcs; k++)
		svcs[k] = service_new(&cfg->services[k]);
	index_routes();
	launchers_prepare(true);
	for (size_t k = 0; k < nsvcs; k++)
		scale_check(svcs[k]);   /* min_instances */
}

/* Services dropped by a reload: kept (stopping) until exit, since requests
 * in flight may still point at them. */
static struct service **retired;
static size_t nretired;

void services_reload(struct config *cfg)
{
	struct service **next = xcalloc(cfg->n_services ? cfg->n_services : 1, sizeof *next);
	size_t added = 0, changed = 0, removed = 0;

	for (size_t k = 0; k < cfg->n_services; k++) {
		struct svc_config *c = &cfg->services[k];
		struct service *old = service_by_name(c->name);
		if (old != NULL && old->cfg->launcher == c->launcher) {
			/* the same service: new settings apply from now on, to new instances */
			old->cfg = c;
			next[k] = old;
			changed++;
		} else {
			next[k] = service_new(c);
			added++;
		}
	}
	for (size_t k = 0; k < nsvcs; k++) {
		bool kept = false;
		for (size_t q = 0; q < cfg->n_services; q++)
			kept |= next[q] == svcs[k];
		if (kept)
			continue;
		log_info("svc %s: removed from the config; stopping it", svcs[k]->cfg->name);
		event_del(svcs[k]->scale_ev);
		{
			struct service *s = svcs[k];
			struct instance *i, *nx;
			fail_waiters(s, "the service was removed from the config", 30);
			for (i = TAILQ_FIRST(&s->insts); i; i = nx) {
				nx = TAILQ_NEXT(i, link);
				if ((i->state == INST_READY || i->state == INST_DRAINING) && i->inflight > 0)
					instance_drain(i, "removed from the config");
				else if (i->state != INST_STOPPING)
					inst_stop(i, "the service was removed from the config");
			}
		}
		retired = xrealloc(retired, (nretired + 1) * sizeof *retired);
		retired[nretired++] = svcs[k];
		removed++;
	}
	free(svcs);
	svcs = next;
	nsvcs = cfg->n_services;
	scfg = cfg;
	index_routes();
	launchers_prepare(false);
	for (size_t k = 0; k < nsvcs; k++)
		scale_check(svcs[k]);
	log_info("config reloaded: %zu services (%zu added, %zu kept, %zu removed)", nsvcs, added,
		 changed, removed);
}

void services_fail_waiters(const char *why)
{
	for (size_t k = 0; k < nsvcs; k++)
		fail_waiters(svcs[k], why, 5);
}

void services_shutdown(void (*done_cb)(void))
{
	shutdown_done = done_cb;
	services_exiting = true;
	for (size_t k = 0; k < nsvcs; k++) {
		event_del(svcs[k]->scale_ev);
		service_stop_all(svcs[k], "the gateway is shutting down");
	}
	for (size_t k = 0; k < nretired; k++)
		service_stop_all(retired[k], "the gateway is shutting down");
	if (live_instances == 0)
		done_cb();
}

static void service_free(struct service *s)
{
	event_free(s->scale_ev);
	free(s);
}

void services_free(void)
{
	for (size_t k = 0; k < nsvcs; k++)
		service_free(svcs[k]);
	for (size_t k = 0; k < nretired; k++)
		service_free(retired[k]);
	free(svcs);
	free(retired);
	free(by_route);
	svcs = retired = by_route = NULL;
	nsvcs = nretired = 0;
}

struct service *service_by_route(const char *route, size_t len)
{
	size_t lo = 0, hi = nsvcs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		const char *r = by_route[mid]->cfg->route_name;
		int c = strncmp(r, route, len);
		if (c == 0 && r[len] != '\0')
			c = 1;
		if (c == 0)
			return by_route[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

struct service *service_by_name(const char *name)
{
	for (size_t k = 0; k < nsvcs; k++)
		if (strcmp(svcs[k]->cfg->name, name) == 0)
			return svcs[k];
	return NULL;
}

size_t services_count(void)
{
	return nsvcs;
}

struct service *service_at(size_t k)
{
	return k < nsvcs ? svcs[k] : NULL;
}

const struct svc_config *service_config(const struct service *s)
{
	return s->cfg;
}

enum svc_state service_state(const struct service *s)
{
	struct instance *i;
	bool starting = false, stopping = false;

	TAILQ_FOREACH(i, &s->insts, link) {
		if (i->state == INST_READY)
			return SVC_READY;
		starting |= i->state == INST_STARTING || i->state == INST_PROBING;
		stopping |= i->state == INST_DRAINING || i->state == INST_STOPPING;
	}
	if (starting)
		return SVC_STARTING;
	if (stopping)
		return SVC_STOPPING;
	return s->failures > 0 ? SVC_FAILED : SVC_STOPPED;
}

void service_reason(const struct service *s, char *buf, size_t len)
{
	struct instance *i;

	switch (service_state(s)) {
	case SVC_READY:
		snprintf(buf, len, "ready");
		return;
	case SVC_STARTING:
		TAILQ_FOREACH(i, &s->insts, link)
			if (i->state == INST_STARTING || i->state == INST_PROBING)
				break;
		snprintf(buf, len, "starting for %.1f s: %s", now_s() - i->created, i->detail);
		return;
	case SVC_STOPPING:
		snprintf(buf, len, "stopping");
		return;
	case SVC_FAILED:
		snprintf(buf, len, "start failed: %s", s->last_error);
		return;
	case SVC_STOPPED:
		snprintf(buf, len, services_managed ? "stopped; the next request starts it"
						    : "stopped; service management is disabled");
		return;
	}
}

const char *service_last_error(const struct service *s)
{
	return s->last_error;
}

int service_waiting(const struct service *s)
{
	return s->nwaiting;
}

int service_inflight(const struct service *s)
{
	return s->inflight;
}

double service_idle_left(const struct service *s)
{
	struct instance *i;
	double best = -1;

	TAILQ_FOREACH(i, &s->insts, link)
		if (i->state == INST_READY && i->inflight == 0) {
			double left = i->idle_since + s->cfg->timeout - now_s();
			if (left < 0)
				left = 0;
			if (best < 0 || left > best)
				best = left;
		}
	return best;
}

struct instance *service_first_instance(const struct service *s)
{
	return TAILQ_FIRST(&s->insts);
}

struct instance *service_next_instance(const struct instance *i)
{
	return TAILQ_NEXT(i, link);
}

struct svc_metrics *service_metrics(struct service *s)
{
	return &s->m;
}

uint64_t service_requests(const struct service *s)
{
	return s->requests;
}

uint64_t service_starts(const struct service *s)
{
	return s->starts;
}

uint64_t service_start_failures(const struct service *s)
{
	return s->start_failures;
}
