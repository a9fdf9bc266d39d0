/* service.c - services, the wait queue, the balancer, the scaler and the
 * idle clock. The instance object itself is instance.c's. */
#include "service.h"

#include <assert.h>
#include <limits.h>
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

struct service {
	struct svc_config *cfg;
	const struct launcher_ops *lops;
	enum svc_state state;
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
	struct event *dispatch_ev;   /* dispatch_waiters, outside anyone's callback */
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
static void idle_arm(struct instance *i);
static void scale_check(struct service *s);
static void scale_cb(evutil_socket_t fd, short what, void *arg);
static void dispatch_cb(evutil_socket_t fd, short what, void *arg);
static void instance_drain(struct instance *i, const char *why);

/* --- service states --- */

const char *service_state_name(enum svc_state st)
{
	static const char *const names[SVC_NSTATES] = {"stopped", "starting", "ready",   "stopping",
						       "failed",  "degraded", "retired"};
	return st < SVC_NSTATES ? names[st] : "?";
}

bool service_move_legal(enum svc_state from, enum svc_state to)
{
	if (from >= SVC_NSTATES || to >= SVC_NSTATES || from == SVC_RETIRED)
		return false;   /* a retired service never moves again */
	if (from == to || to == SVC_RETIRED)
		return true;
	/* nothing becomes ready or degraded without an instance that started */
	if ((from == SVC_STOPPED || from == SVC_FAILED) && (to == SVC_READY || to == SVC_DEGRADED))
		return false;
	return true;
}

/* The one setter of a service's state: checked and logged. */
static void svc_set_state(struct service *s, enum svc_state st, const char *why)
{
	if (!service_move_legal(s->state, st)) {
		log_warn("svc %s: BUG: illegal move %s -> %s (%s) refused", s->cfg->name,
			 service_state_name(s->state), service_state_name(st), why);
#if defined(__SANITIZE_ADDRESS__) || defined(SG_DEBUG)
		assert(!"illegal service state move");
#endif
		return;
	}
	if (s->state != st)
		log_info("svc %s: %s -> %s (%s)", s->cfg->name, service_state_name(s->state),
			 service_state_name(st), why);
	s->state = st;
}

static bool booting(enum inst_state st)
{
	return st == INST_STARTING || st == INST_PROBING;
}

static int count_state(const struct service *s, enum inst_state a, enum inst_state b)
{
	struct instance *i;
	int n = 0;

	TAILQ_FOREACH(i, &s->insts, link)
		n += i->state == a || i->state == b;
	return n;
}

/* After any instance moved: the state the service is in now. */
static void svc_settle(struct service *s, const char *why)
{
	enum svc_state st;

	if (s->state == SVC_RETIRED)
		return;
	if (count_state(s, INST_READY, INST_READY) > 0)
		st = SVC_READY;
	else if (count_state(s, INST_STARTING, INST_PROBING) > 0)
		st = SVC_STARTING;
	else if (count_state(s, INST_HELD, INST_UNHEALTHY) > 0)
		st = SVC_DEGRADED;
	else if (count_state(s, INST_DRAINING, INST_STOPPING) > 0)
		st = SVC_STOPPING;
	else if (s->failures > 0)
		st = SVC_FAILED;
	else
		st = SVC_STOPPED;
	svc_set_state(s, st, why);
}

/* Move I (checked, logged) and settle its service. */
static void inst_move(struct instance *i, enum inst_state st, const char *why)
{
	char what[64];

	instance_set_state(i, st, why);
	/* the instance's line above says why */
	snprintf(what, sizeof what, "[%d] %s", i->index, instance_state_name(i->state));
	svc_settle(i->svc, what);
}

/* --- the balancer --- */

static bool any_booting_except(const struct service *s, const struct instance *except)
{
	struct instance *i;

	TAILQ_FOREACH(i, &s->insts, link)
		if (i != except && booting(i->state))
			return true;
	return false;
}

static bool any_booting(const struct service *s)
{
	return any_booting_except(s, NULL);
}

/* Booting, or held by its launcher: a start is under way (no second one). */
static bool any_pending_except(const struct service *s, const struct instance *except)
{
	struct instance *i;

	TAILQ_FOREACH(i, &s->insts, link)
		if (i != except && (booting(i->state) || i->state == INST_HELD))
			return true;
	return false;
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

/* How many requests a ready instance takes while others still boot: its
 * share (target_concurrency), so a cold burst spreads over the instances
 * as they become ready. Unlimited when nothing else boots. */
static int dispatch_limit(const struct service *s)
{
	return any_booting(s) ? s->cfg->target_concurrency : INT_MAX;
}

static void assign(struct instance *i, struct waiter *w)
{
	i->inflight++;
	i->svc->inflight++;
	if (i->inflight == 1 && i->state == INST_READY)
		event_del(i->timer);
	instance_attach(i, w);
}

/* Hand waiting requests to ready instances, in arrival order, each to the
 * least loaded, no instance beyond its share while others boot. */
static void dispatch_waiters(struct service *s)
{
	struct waiter *w;
	struct instance *i;
	int limit = dispatch_limit(s);

	while ((w = TAILQ_FIRST(&s->waiters)) != NULL && (i = pick_ready(s)) != NULL &&
	       i->inflight < limit) {
		TAILQ_REMOVE(&s->waiters, w, link);
		s->nwaiting--;
		w->queued = false;
		assign(i, w);
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

/* --- starting --- */

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
	struct instance *i = instance_new(s, index);

	TAILQ_INSERT_TAIL(&s->insts, i, link);
	s->ninst++;
	live_instances++;
	event_add(i->timer, &(struct timeval){s->cfg->start_timeout, 0});
	svc_settle(s, "an instance starts");
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
	instance_ref(i);
	if (s->lops->start(i, &cause) != 0) {
		instance_gone(i, cause);
		free(cause);
		instance_unref(i);
		return NULL;
	}
	if (i->state == INST_GONE) {   /* reported gone from inside start */
		instance_unref(i);
		return NULL;
	}
	instance_unref(i);
	return i;
}

/* A start did not reach READY: remember why, back off. */
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
	if (s->state == SVC_RETIRED) {
		*reason = "the service was removed from the config";
		*retry_after = 30;
		return -1;
	}
	if (any_pending_except(s, NULL))
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
	if (i != NULL && TAILQ_EMPTY(&s->waiters) && (!hold || i->inflight < dispatch_limit(s))) {
		assign(i, w);
		*inst = i;
		if (s->cfg->max_instances > 1)
			scale_check(s);
		return 0;
	}
	*status = 503;
	if (i == NULL && service_start(s, reason, retry_after) != 0)
		return -1;
	if (!hold) {
		*reason = "the service is starting; retry later";
		*retry_after = service_retry_after(s, 5);
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

	if (s->state == SVC_RETIRED)
		return;
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
		inst_stop(i, why);
	}
}

/* --- the idle clock --- */

static void idle_arm(struct instance *i)
{
	i->idle_since = now_s();
	event_add(i->timer, &(struct timeval){i->svc->cfg->timeout, 0});
}

void service_instance_released(struct instance *i)
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
	/* not from here: the ending exchange is inside its connection's
	 * callback, and that connection may be the pooled one picked next */
	if (s->nwaiting > 0)
		event_active(s->dispatch_ev, EV_TIMEOUT, 0);
	if (s->cfg->max_instances > 1 || s->cfg->min_instances > 0)
		scale_check(s);
}

static void dispatch_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	dispatch_waiters(arg);
}

void service_instance_aborted(struct instance *i, struct waiter *w)
{
	(void)w;
	i->inflight--;
	i->svc->inflight--;
}

void service_instance_timer(struct instance *i)
{
	struct service *s = i->svc;
	char why[600];

	if (i->state == INST_READY && i->inflight == 0) {
		if (count_state(s, INST_READY, INST_READY) <= s->cfg->min_instances) {
			idle_arm(i);   /* kept warm: min_instances */
			return;
		}
		snprintf(why, sizeof why, "idle for %d s", s->cfg->timeout);
		inst_stop(i, why);
	} else if (i->state == INST_UNHEALTHY) {
		snprintf(why, sizeof why, "unhealthy for %d s: %s", s->cfg->start_timeout, i->detail);
		inst_stop(i, why);
	} else if (i->state == INST_HELD) {
		/* no start deadline while held; the idle clock runs when nothing waits */
		if (s->nwaiting > 0 || i->inflight > 0 ||
		    count_state(s, INST_READY, INST_HELD) <= s->cfg->min_instances) {
			idle_arm(i);
			return;
		}
		snprintf(why, sizeof why, "held and idle for %d s (%s)", s->cfg->timeout, i->detail);
		inst_stop(i, why);
	} else if (booting(i->state)) {
		snprintf(why, sizeof why, "no healthy answer within start_timeout (%d s); last state: %s",
			 s->cfg->start_timeout, i->detail);
		instance_fail(i, why);
	}
}

/* --- scaling --- */

/* Take I out of rotation; it stops once nothing is in flight on it. */
static void instance_drain(struct instance *i, const char *why)
{
	if (i->state != INST_READY && i->state != INST_UNHEALTHY && !booting(i->state) &&
	    i->state != INST_HELD)
		return;
	if (i->inflight == 0 || booting(i->state) || i->state == INST_HELD) {
		inst_stop(i, why);
		return;
	}
	inst_move(i, INST_DRAINING, why);
	snprintf(i->detail, sizeof i->detail, "draining (%s): %d in flight", why, i->inflight);
	event_del(i->timer);
}

/* May one more instance start now? */
static bool can_start(const struct service *s, int limit)
{
	return services_managed && shutdown_done == NULL && !s->recovering && backoff_left(s) == 0 &&
	       s->state != SVC_RETIRED && free_index(s, limit) >= 0;
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
 * needed for scale_down_delay. Cheap; runs on every change of load. An
 * unhealthy instance counts towards min_instances but neither as ready nor
 * as starting, so it blocks no scale-up. */
static void scale_check(struct service *s)
{
	const struct svc_config *c = s->cfg;
	int ready = count_state(s, INST_READY, INST_READY);
	int starting = count_state(s, INST_STARTING, INST_PROBING);
	int present = ready + starting + count_state(s, INST_HELD, INST_UNHEALTHY);
	int load = s->inflight + s->nwaiting;
	double now = now_s();

	if (s->state == SVC_RETIRED)
		return;
	if (present < c->min_instances) {
		/* all that are missing, at once: N warm instances cost one start time */
		while (present < c->min_instances && can_start(s, c->max_instances)) {
			start_for(s, "%d running, min_instances is %d", present, c->min_instances);
			present++;
		}
		if (present < c->min_instances && backoff_left(s) > 0)
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
void service_handover(struct instance *i)
{
	struct instance *n;
	struct service *s = i->svc;

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

	if (i->state == INST_GONE)
		return;
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

/* --- stopping and the end --- */

/* Ask the launcher to stop I. The pool, probe and timers are detached
 * first; requests in flight run on until the process or job is gone. */
static void inst_stop(struct instance *i, const char *why)
{
	if (i->state == INST_STOPPING || i->state == INST_GONE)
		return;
	instance_ref(i);   /* the launcher may report gone from inside stop */
	inst_move(i, INST_STOPPING, why);
	snprintf(i->detail, sizeof i->detail, "stopping: %s", why);
	instance_detach_all(i, why, false);
	i->svc->lops->stop(i, i->svc->cfg->stop_grace);
	instance_unref(i);
}

/* Requests wait and nothing is starting: start (a deferred start). */
static void kick(struct service *s)
{
	const char *reason;
	int ra;

	if (s->state == SVC_RETIRED)
		return;
	if ((!TAILQ_EMPTY(&s->waiters) || s->demanded) && !s->recovering && !any_pending_except(s, NULL) &&
	    pick_ready(s) == NULL) {
		s->demanded = false;
		if (service_start(s, &reason, &ra) != 0)
			fail_waiters(s, reason, ra);
	}
	if (s->nwaiting > 0)
		dispatch_waiters(s);   /* an instance that boots no more frees the others' share */
	scale_check(s);
}

/* I is gone: off the service's list (the object lives on while referenced). */
static void inst_detach(struct instance *i)
{
	struct service *s = i->svc;

	TAILQ_REMOVE(&s->insts, i, link);
	s->ninst--;
	live_instances--;
	s->m.instance_seconds += now_s() - i->created;
	if (i->replaces)
		i->replaces->replaced_by = NULL;
	if (i->replaced_by)
		i->replaced_by->replaces = NULL;
	i->replaces = i->replaced_by = NULL;
}

void instance_gone(struct instance *i, const char *reason)
{
	struct service *s = i->svc;
	enum inst_state was = i->state;
	char why[700];

	if (was == INST_GONE)
		return;
	if (booting(was)) {
		start_failed(i, reason);
	} else if (was != INST_STOPPING) {
		snprintf(s->last_error, sizeof s->last_error, "instance exited unexpectedly: %s", reason);
		log_warn("svc %s[%d]: %s", s->cfg->name, i->index, s->last_error);
	} else {
		log_info("svc %s[%d]: stopped after %.1f s (%s)", s->cfg->name, i->index,
			 now_s() - i->created, reason);
	}
	instance_set_state(i, INST_GONE, reason);
	snprintf(i->detail, sizeof i->detail, "gone: %s", reason);
	/* requests in flight on it end now, with the cause */
	snprintf(why, sizeof why, "service %s: instance ended: %s", s->cfg->name, reason);
	instance_detach_all(i, why, true);
	inst_detach(i);
	snprintf(why, sizeof why, "[%d] gone", i->index);
	svc_settle(s, why);
	if (booting(was) && !any_pending_except(s, NULL) && pick_ready(s) == NULL)
		fail_waiters(s, reason, backoff_left(s) > 0 ? backoff_left(s) : 1);
	kick(s);
	instance_unref(i);   /* the launcher's reference */
	if (shutdown_done != NULL && live_instances == 0) {
		void (*cb)(void) = shutdown_done;
		cb();
	}
}

void instance_fail(struct instance *i, const char *reason)
{
	struct service *s = i->svc;

	if (!booting(i->state)) {
		inst_stop(i, reason);
		return;
	}
	start_failed(i, reason);
	if (!any_pending_except(s, i) && pick_ready(s) == NULL)
		fail_waiters(s, reason, backoff_left(s) > 0 ? backoff_left(s) : 1);
	inst_stop(i, reason);
}

void instance_hold(struct instance *i, const char *reason)
{
	struct service *s = i->svc;
	char why[700];

	if (i->state == INST_GONE || i->state == INST_STOPPING)
		return;
	snprintf(why, sizeof why, "service %s: %s", s->cfg->name, reason);
	if (i->state == INST_DRAINING) {
		/* it was leaving anyway: end what runs on it and stop it */
		instance_ref(i);
		instance_detach_all(i, why, true);
		inst_stop(i, reason);
		instance_unref(i);
		return;
	}
	instance_ref(i);
	inst_move(i, INST_HELD, reason);
	snprintf(i->detail, sizeof i->detail, "%s", reason);
	/* out of rotation: in flight ends with the reason, the rest waits */
	instance_detach_all(i, why, true);
	if (i->state == INST_HELD && i->inflight == 0)
		idle_arm(i);   /* no start deadline while held; the idle clock runs */
	scale_check(s);
	instance_unref(i);
}

struct instance *service_adopt(struct service *s, int index)
{
	struct instance *o;

	if (index < 0 || index >= s->cfg->max_instances || s->state == SVC_RETIRED)
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

/* --- health --- */

static void inst_ready(struct instance *i)
{
	struct service *s = i->svc;
	bool first = i->ready_at == 0;

	inst_move(i, INST_READY, first ? "health check passed" : "healthy again");
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
	instance_ref(i);
	dispatch_waiters(s);
	if (i->inflight == 0 && i->state == INST_READY)
		idle_arm(i);
	scale_check(s);
	instance_unref(i);
}

/* A probe's verdict. While ready, two failures in a row take the
 * instance out of rotation until a probe passes again. */
void service_probe_result(struct instance *i, bool ok)
{
	if (i->state == INST_PROBING || i->state == INST_UNHEALTHY) {
		if (ok)
			inst_ready(i);
		else
			instance_probe_schedule(i);
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

void instance_endpoint(struct instance *i, const char *host, int port)
{
	const char *cause;
	enum inst_state was = i->state;
	char was_addr[sizeof i->addr_str];
	char why[300];

	if (i->state == INST_GONE || i->state == INST_STOPPING || i->state == INST_DRAINING)
		return;
	snprintf(was_addr, sizeof was_addr, "%s", i->addr_str);
	if (instance_set_addr(i, host, port, &cause) != 0) {
		snprintf(why, sizeof why, "%s %s:%d", cause, host, port);
		inst_stop(i, why);
		return;
	}
	if (i->state == INST_READY && strcmp(was_addr, i->addr_str) == 0)
		return;   /* told again: nothing changed */
	if (i->endpoint_at == 0)
		i->endpoint_at = now_s();
	if (i->ready_at == 0) {
		inst_move(i, INST_PROBING, was == INST_HELD ? "endpoint known again" : "endpoint known");
	} else {
		snprintf(why, sizeof why, "endpoint %s; probing", i->addr_str);
		inst_move(i, INST_UNHEALTHY, why);
	}
	/* after a hold or while unhealthy, the start deadline runs from now
	 * (a first boot keeps the one that runs since its creation) */
	if (was == INST_HELD || i->state == INST_UNHEALTHY) {
		i->idle_since = 0;
		event_add(i->timer, &(struct timeval){i->svc->cfg->start_timeout, 0});
	}
	snprintf(i->detail, sizeof i->detail, "waiting for %s%s to answer", i->addr_str,
		 i->svc->cfg->check_health_path);
	i->probe_fails = 0;
	instance_probe_restart(i);
}

void instance_unreachable(struct instance *i, const char *why)
{
	struct service *s = i->svc;

	if (i->state != INST_READY)
		return;
	instance_ref(i);
	inst_move(i, INST_UNHEALTHY, why);
	snprintf(i->detail, sizeof i->detail, "unreachable (%s); probing", why);
	/* back in rotation when a probe passes; stopped if that takes too long */
	event_add(i->timer, &(struct timeval){s->cfg->start_timeout, 0});
	instance_pool_flush(i);
	instance_probe_restart(i);
	if (s->lops->check)
		s->lops->check(i);   /* "something looks wrong with I": the launcher looks now */
	if (i->state != INST_GONE)
		scale_check(s);
	instance_unref(i);
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
	s->dispatch_ev = evtimer_new(sbase, dispatch_cb, s);
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
	instances_init(base, cfg->upstream_keepalive);
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
			/* first: nothing (min_instances, a demand, a kick) starts it again */
			svc_set_state(s, SVC_RETIRED, "removed from the config");
			s->demanded = false;
			fail_waiters(s, "the service was removed from the config", 30);
			for (i = TAILQ_FIRST(&s->insts); i; i = nx) {
				nx = TAILQ_NEXT(i, link);
				if ((i->state == INST_READY || i->state == INST_UNHEALTHY) && i->inflight > 0)
					instance_drain(i, "removed from the config");
				else if (i->state != INST_DRAINING)
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
	instances_init(sbase, cfg->upstream_keepalive);
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
	event_free(s->dispatch_ev);
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
	return s->state;
}

/* The instance that tells best what a service waits for: the oldest one
 * in state A (or B). */
static const struct instance *first_in(const struct service *s, enum inst_state a, enum inst_state b)
{
	const struct instance *i;

	TAILQ_FOREACH(i, &s->insts, link)
		if (i->state == a || i->state == b)
			return i;
	return NULL;
}

void service_reason(const struct service *s, char *buf, size_t len)
{
	const struct instance *i;

	switch (s->state) {
	case SVC_READY:
		snprintf(buf, len, "ready");
		return;
	case SVC_STARTING:
		i = first_in(s, INST_STARTING, INST_PROBING);
		snprintf(buf, len, "starting for %.1f s: %s", i ? now_s() - i->created : 0.0,
			 i ? i->detail : "");
		return;
	case SVC_DEGRADED:
		if ((i = first_in(s, INST_HELD, INST_HELD)) != NULL)
			snprintf(buf, len, "held for %.0f s: %s", now_s() - i->state_since, i->detail);
		else if ((i = first_in(s, INST_UNHEALTHY, INST_UNHEALTHY)) != NULL)
			snprintf(buf, len, "unhealthy for %.0f s: %s", now_s() - i->state_since, i->detail);
		else
			snprintf(buf, len, "degraded");
		return;
	case SVC_STOPPING:
		snprintf(buf, len, "stopping");
		return;
	case SVC_FAILED:
		snprintf(buf, len, "start failed: %s", s->last_error);
		return;
	case SVC_RETIRED:
		snprintf(buf, len, "removed from the config");
		return;
	case SVC_STOPPED:
	case SVC_NSTATES:
		break;
	}
	snprintf(buf, len, services_managed ? "stopped; the next request starts it"
					    : "stopped; service management is disabled");
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

double service_expected_start_in(const struct service *s)
{
	const struct instance *i;
	double best = -1;

	TAILQ_FOREACH(i, &s->insts, link)
		if (i->state == INST_STARTING && i->expected_start > 0) {
			double in = i->expected_start - wall_s();   /* a wall-clock time */
			if (in < 0)
				in = 0;
			if (best < 0 || in < best)
				best = in;
		}
	return best;
}

int service_retry_after(const struct service *s, int def)
{
	double in = service_expected_start_in(s);

	if (in < 0)
		return def;
	return in < 1 ? 1 : in > 86400 ? 86400 : (int)(in + 0.999);
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
