/* service_inst.c - a service's instances: starting (and the start
 * back-off), the idle clock and the instance timer, the scaler and the
 * walltime handover applied, stopping, and the end of an instance. The
 * decisions themselves are pure: scaler.c, idle.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/util.h>

#include "config.h"
#include "idle.h"
#include "launcher.h"
#include "log.h"
#include "scaler.h"
#include "service_int.h"
#include "util.h"

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
	svc_live_instances++;
	event_add(i->timer, &(struct timeval){s->cfg->start_timeout, 0});
	svc_settle(s, "an instance starts");
	return i;
}

/* Create and start one more instance. Returns it, or NULL if the launcher
 * refused at once (the failure is recorded). */
/* A new instance at INDEX, started; REPLACES: the instance whose walltime
 * handover it is (linked before the launcher starts it: its job says so). */
static struct instance *inst_start_for(struct service *s, int index, struct instance *replaces)
{
	struct instance *i = inst_new(s, index);
	char *cause = NULL;

	if (replaces != NULL) {
		i->replaces = replaces;
		replaces->replaced_by = i;
	}

	s->starts++;
	log_info("svc %s[%d]: starting (%s launcher, port %d)", s->cfg->name, i->index,
		 s->lops->name, i->remote_port);
	instance_ref(i);
	if (s->lops->start(i, &cause) != 0) {
		instance_gone(i, LFAIL_OTHER, cause);
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

static struct instance *inst_start(struct service *s, int index)
{
	return inst_start_for(s, index, NULL);
}

/* A start did not reach READY: remember why, back off. */
static void start_failed(struct instance *i, enum launch_fail kind, const char *reason)
{
	struct service *s = i->svc;

	s->failures++;
	s->start_failures++;
	s->m.fail[(unsigned)kind < LFAIL_NKINDS ? kind : LFAIL_OTHER]++;
	snprintf(s->last_error, sizeof s->last_error, "%s", reason);
	utf8_scrub(s->last_error);   /* cut, or a job's output: it goes into JSON answers */
	/* the first failure may be retried at once; repeated ones back off */
	if (s->failures >= 2) {
		double d = s->failures >= 8 ? 60 : (double)(1 << (s->failures - 2));
		s->backoff_until = now_s() + d;
	}
	log_warn("svc %s[%d]: start failed after %.2f s: %s", s->cfg->name, i->index,
		 now_s() - i->created, reason);
}

/* Start a stopped service. Returns 0 if a start is under way. */
int service_start(struct service *s, int *status, const char **reason, int *retry_after)
{
	const struct instance *h = NULL;

	*status = 503;   /* not now */
	if (s->state == SVC_RETIRED) {
		*reason = "the service was removed from the config";
		*retry_after = 30;
		return -1;
	}
	if (svc_any_pending(s, NULL))
		return 0;
	if (!services_managed) {
		*reason = "service management is disabled";
		*retry_after = 30;
		return -1;
	}
	if (svc_shutdown_done != NULL) {
		*reason = "the gateway is shutting down";
		*retry_after = 5;
		return -1;
	}
	if (svc_backoff_left(s) > 0) {
		*status = 502;   /* the start failed: a failure, not "loading" */
		*reason = s->last_error;
		*retry_after = svc_backoff_left(s);
		return -1;
	}
	/* still looking for instances of an earlier run, or the previous
	 * instance is still stopping, or another service's instance on its way
	 * out holds the port (a reload renamed the service): the start comes
	 * when that is over */
	if (free_index(s, s->cfg->max_instances) >= 0 &&
	    (h = svc_port_holder(s, free_index(s, s->cfg->max_instances))) != NULL && !s->demanded)
		log_info("svc %s: its start waits for %s[%d] (%s) to free port %d", s->cfg->name,
			 h->svc->cfg->name, h->index, instance_state_name(h->state), h->remote_port);
	if (s->recovering || free_index(s, s->cfg->max_instances) < 0 || h != NULL) {
		s->demanded = true;   /* svc_kick() starts it then, waiters or not */
		return 0;
	}
	if (inst_start(s, free_index(s, s->cfg->max_instances)) == NULL) {
		*status = 502;
		*reason = s->last_error;
		*retry_after = svc_backoff_left(s) > 0 ? svc_backoff_left(s) : 1;
		return -1;
	}
	return 0;
}

/* --- the idle clock --- */

void inst_idle_arm(struct instance *i)
{
	i->idle_since = now_s();
	event_add(i->timer, &(struct timeval){i->svc->cfg->timeout, 0});
}

void svc_timers_rearm(struct service *s, int old_timeout, int old_start_timeout)
{
	struct instance *i;
	struct timeval at, now;

	evutil_gettimeofday(&now, NULL);
	TAILQ_FOREACH(i, &s->insts, link) {
		double left;
		int delta;
		if (!event_pending(i->timer, EV_TIMEOUT, &at))
			continue;
		if (i->state == INST_READY || i->state == INST_HELD)
			delta = s->cfg->timeout - old_timeout;             /* the idle clock */
		else if (inst_booting(i->state) || i->state == INST_UNHEALTHY)
			delta = s->cfg->start_timeout - old_start_timeout; /* the start deadline */
		else
			continue;
		if (delta == 0)
			continue;
		left = (double)(at.tv_sec - now.tv_sec) + (at.tv_usec - now.tv_usec) / 1e6 + delta;
		if (left < 0)
			left = 0;
		event_add(i->timer, &(struct timeval){(long)left, (long)((left - (long)left) * 1e6)});
	}
}

void service_instance_released(struct instance *i)
{
	struct service *s = i->svc;

	i->inflight--;
	s->inflight--;
	i->served++;
	if (i->inflight == 0) {
		if (i->state == INST_READY)
			inst_idle_arm(i);
		else if (i->state == INST_DRAINING)
			inst_stop(i, "drained");
	}
	/* not from here: the ending exchange is inside its connection's
	 * callback, and that connection may be the pooled one picked next */
	if (s->nwaiting > 0)
		event_active(s->dispatch_ev, EV_TIMEOUT, 0);
	if (s->cfg->max_instances > 1 || s->cfg->min_instances > 0)
		svc_scale(s);
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
	struct idle_input in = {
		.state = i->state,
		.inflight = i->inflight,
		.waiting = s->nwaiting,
		.ready = svc_count(s, INST_READY, INST_READY),
		.ready_or_held = svc_count(s, INST_READY, INST_HELD),
		.min_instances = s->cfg->min_instances,
	};

	switch (idle_on_timer(&in)) {
	case IDLE_NOTHING:
		break;
	case IDLE_REARM:
		inst_idle_arm(i);   /* kept: min_instances, or a held one still needed */
		break;
	case IDLE_STOP:
		snprintf(why, sizeof why, "idle for %d s", s->cfg->timeout);
		inst_stop(i, why);
		break;
	case IDLE_STOP_UNHEALTHY:
		snprintf(why, sizeof why, "unhealthy for %d s: %s", s->cfg->start_timeout, i->detail);
		inst_stop(i, why);
		break;
	case IDLE_STOP_HELD:
		snprintf(why, sizeof why, "held and idle for %d s (%s)", s->cfg->timeout, i->detail);
		inst_stop(i, why);
		break;
	case IDLE_FAIL_START:
		snprintf(why, sizeof why, "no healthy answer within start_timeout (%d s); last state: %s",
			 s->cfg->start_timeout, i->detail);
		instance_fail(i, LFAIL_TIMEOUT, why);
		break;
	}
}

/* --- scaling --- */

/* Take I out of rotation; it stops once nothing is in flight on it. */
void instance_drain(struct instance *i, const char *why)
{
	if (i->state != INST_READY && i->state != INST_UNHEALTHY && !inst_booting(i->state) &&
	    i->state != INST_HELD)
		return;
	if (i->inflight == 0 || inst_booting(i->state) || i->state == INST_HELD) {
		inst_stop(i, why);
		return;
	}
	inst_move(i, INST_DRAINING, why);
	snprintf(i->detail, sizeof i->detail, "draining (%s): %d in flight", why, i->inflight);
	event_del(i->timer);
}

/* The instances past max_instances. A walltime handover's replacement
 * takes its old one's place (not counted); the one that took over in a
 * handover sits at index max_instances (the launcher's extra port) for its
 * life: kept while no more than max_instances run. */
void svc_drain_over_max(struct service *s)
{
	struct instance *i, *nx;
	const struct instance *o;
	int max = s->cfg->max_instances, below;
	char why[80];

	snprintf(why, sizeof why, "above max_instances %d after a reload", max);
	for (i = TAILQ_FIRST(&s->insts); i; i = nx) {
		nx = TAILQ_NEXT(i, link);
		if (i->replaces != NULL) {
			if (i->index >= max + 1)
				instance_drain(i, why);
			continue;
		}
		if (i->state == INST_DRAINING || i->state == INST_STOPPING)
			continue;
		below = 0;
		TAILQ_FOREACH(o, &s->insts, link)
			below += o->index < i->index && o->replaces == NULL &&
				 o->state != INST_DRAINING && o->state != INST_STOPPING;
		if (i->index >= max + s->lops->extra_ports || below >= max)
			instance_drain(i, why);
	}
}

/* May one more instance start now? */
static bool can_start(const struct service *s, int limit)
{
	return services_managed && svc_shutdown_done == NULL && !s->recovering && svc_backoff_left(s) == 0 &&
	       s->state != SVC_RETIRED && free_index(s, limit) >= 0 &&
	       svc_port_holder(s, free_index(s, limit)) == NULL;
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

/* The scaler (scaler.c) applied: starts, a drain, a later re-check. Cheap;
 * runs on every change of load. */
void svc_scale(struct service *s)
{
	const struct svc_config *c = s->cfg;
	struct scaler_config sc = {c->min_instances, c->max_instances, c->target_concurrency,
				   c->scale_up_delay, c->scale_down_delay};
	struct scaler_input in = {
		.ready = svc_count(s, INST_READY, INST_READY),
		.starting = svc_count(s, INST_STARTING, INST_PROBING),
		.other = svc_count(s, INST_HELD, INST_UNHEALTHY),
		.inflight = s->inflight,
		.waiting = s->nwaiting,
	};
	int present = in.ready + in.starting + in.other, load = s->inflight + s->nwaiting, k;
	struct scaler_decision d;

	if (s->state == SVC_RETIRED)
		return;
	scaler_decide(&s->scale, &sc, &in, now_s(), &d);
	for (k = 0; k < d.start && can_start(s, c->max_instances); k++) {
		if (d.why == SCALE_MIN)
			start_for(s, "%d running, min_instances is %d", present + k, c->min_instances);
		else if (d.why == SCALE_COLD_BURST)
			start_for(s, "%d requests waiting for %d starting instances (target %d each)",
				  s->nwaiting, in.starting, c->target_concurrency);
		else
			start_for(s, "%d requests for %d ready instances above target %d for %d s", load,
				  in.ready, c->target_concurrency, c->scale_up_delay);
	}
	if (d.why == SCALE_MIN) {
		if (k < d.start && svc_backoff_left(s) > 0)
			scale_later(s, svc_backoff_left(s));
		return;
	}
	if (d.recheck >= 0)
		scale_later(s, d.recheck);
	if (d.drain) {
		struct instance *i, *least = NULL;
		TAILQ_FOREACH(i, &s->insts, link)
			if (i->state == INST_READY && (least == NULL || i->inflight < least->inflight))
				least = i;
		log_info("svc %s: scale down: %d requests fit on %d instances for %d s; draining [%d]",
			 c->name, load, in.ready - 1, c->scale_down_delay, least->index);
		instance_drain(least, "scale down");
	}
}

void svc_scale_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	svc_scale(arg);
}

/* The job's time limit comes near: start its replacement. */
void service_handover(struct instance *i)
{
	struct service *s = i->svc;

	switch (scaler_handover(i->state == INST_READY, i->replaced_by != NULL,
				can_start(s, s->cfg->max_instances + 1))) {
	case HANDOVER_NONE:
		return;
	case HANDOVER_BLOCKED:
		log_warn("svc %s[%d]: time limit in %.0f s, but no replacement can start now", s->cfg->name,
			 i->index, i->deadline - now_s());
		return;
	case HANDOVER_START:
		break;
	}
	log_info("svc %s[%d]: time limit in %.0f s: starting a replacement", s->cfg->name, i->index,
		 i->deadline - now_s());
	inst_start_for(s, free_index(s, s->cfg->max_instances + 1), i);
}

void instance_set_deadline(struct instance *i, double end_at)
{
	struct service *s = i->svc;
	double at;

	if (i->state == INST_GONE)
		return;
	i->deadline = end_at > 0 ? end_at : 0;
	if (end_at <= 0) {
		event_del(i->handover_ev);
		return;
	}
	at = scaler_handover_in(s->cfg->handover_lead, s->last_start_s, end_at - now_s(), i->ready_at == 0);
	event_add(i->handover_ev, &(struct timeval){(long)at, (long)((at - (long)at) * 1e6)});
}

/* --- stopping and the end --- */

/* Ask the launcher to stop I. The pool, probe and timers are detached
 * first; requests in flight run on until the process or job is gone. */
void inst_stop(struct instance *i, const char *why)
{
	if (i->state == INST_STOPPING || i->state == INST_GONE)
		return;
	instance_ref(i);   /* the launcher may report gone from inside stop */
	inst_move(i, INST_STOPPING, why);
	snprintf(i->detail, sizeof i->detail, "stopping: %s", why);
	instance_detach_all(i, why, false);
	i->svc->lops->stop(i, i->svc->cfg->stop_grace, services_exiting ? LSTOP_EXITING : 0);
	instance_unref(i);
}

/* Requests wait and nothing is starting: start (a deferred start). */
void svc_kick(struct service *s)
{
	const char *reason;
	int status, ra;

	if (s->state == SVC_RETIRED)
		return;
	if ((!TAILQ_EMPTY(&s->waiters) || s->demanded) && !s->recovering && !svc_any_pending(s, NULL) &&
	    svc_pick_ready(s) == NULL) {
		s->demanded = false;
		if (service_start(s, &status, &reason, &ra) != 0)
			svc_fail_waiters(s, status, reason, ra);
	}
	if (s->nwaiting > 0)
		svc_dispatch(s);   /* an instance that boots no more frees the others' share */
	svc_scale(s);
}

/* I is gone: off the service's list (the object lives on while referenced). */
static void inst_detach(struct instance *i)
{
	struct service *s = i->svc;

	TAILQ_REMOVE(&s->insts, i, link);
	s->ninst--;
	svc_live_instances--;
	s->m.instance_seconds += now_s() - i->created;
	if (i->replaces)
		i->replaces->replaced_by = NULL;
	if (i->replaced_by)
		i->replaced_by->replaces = NULL;
	i->replaces = i->replaced_by = NULL;
}

void instance_gone(struct instance *i, enum launch_fail kind, const char *reason)
{
	struct service *s = i->svc;
	enum inst_state was = i->state;
	/* held before it was ever ready (its job seen COMPLETING, or requeued,
	 * while it booted) and now over: a start that failed, not an exit */
	bool failed_start = inst_booting(was) || (was == INST_HELD && i->ready_at == 0);
	char why[700];

	if (was == INST_GONE)
		return;
	if (failed_start) {
		start_failed(i, kind, reason);
	} else if (was != INST_STOPPING) {
		snprintf(s->last_error, sizeof s->last_error, "instance exited unexpectedly: %s", reason);
		utf8_scrub(s->last_error);
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
	if (failed_start && !svc_any_pending(s, NULL) && svc_pick_ready(s) == NULL)
		svc_fail_waiters(s, 502, reason, svc_backoff_left(s) > 0 ? svc_backoff_left(s) : 1);
	svc_kick(s);
	svc_kick_others(i);   /* a start that waited for I's ports */
	instance_unref(i);   /* the launcher's reference */
	if (svc_shutdown_done != NULL && svc_live_instances == 0) {
		void (*cb)(void) = svc_shutdown_done;
		cb();
	}
}

void instance_fail(struct instance *i, enum launch_fail kind, const char *reason)
{
	struct service *s = i->svc;

	if (!inst_booting(i->state)) {
		inst_stop(i, reason);
		return;
	}
	start_failed(i, kind, reason);
	if (!svc_any_pending(s, i) && svc_pick_ready(s) == NULL)
		svc_fail_waiters(s, 502, reason, svc_backoff_left(s) > 0 ? svc_backoff_left(s) : 1);
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
		inst_idle_arm(i);   /* no start deadline while held; the idle clock runs */
	svc_scale(s);
	instance_unref(i);
}

struct instance *service_adopt(struct service *s, int index)
{
	struct instance *o;

	/* one above max_instances: a walltime handover's replacement, or the
	 * instance that took over in one */
	if (index < 0 || index >= s->cfg->max_instances + s->lops->extra_ports ||
	    s->state == SVC_RETIRED)
		return NULL;
	TAILQ_FOREACH(o, &s->insts, link)
		if (o->index == index)
			return NULL;
	return inst_new(s, index);
}

void service_adopt_handover(struct instance *old, struct instance *n)
{
	if (old->svc != n->svc || old->replaced_by != NULL || n->replaces != NULL)
		return;
	old->replaced_by = n;
	n->replaces = old;
}

void service_recovered(struct service *s)
{
	if (!s->recovering)
		return;
	s->recovering = false;
	s->recover_error[0] = '\0';
	svc_kick(s);
}

void service_recover_failed(struct service *s, const char *why, int retry_after)
{
	if (!s->recovering)
		return;
	snprintf(s->recover_error, sizeof s->recover_error, "%s", why);
	svc_fail_waiters(s, 503, why, retry_after);   /* it looks again: "not yet" */
}

/* --- what the instances say about their service --- */

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
	if (s->recovering && s->recover_error[0]) {
		snprintf(buf, len, "stopped; starts nothing until it has looked for jobs of an "
			 "earlier run: %s", s->recover_error);
		return;
	}
	if (s->demanded && free_index(s, s->cfg->max_instances) >= 0) {
		const struct instance *h = svc_port_holder(s, free_index(s, s->cfg->max_instances));
		if (h != NULL) {
			snprintf(buf, len, "starts once %s[%d] (%s) frees port %d", h->svc->cfg->name,
				 h->index, instance_state_name(h->state), h->remote_port);
			return;
		}
	}
	snprintf(buf, len, services_managed ? "stopped; the next request starts it"
					    : "stopped; service management is disabled");
}

double service_idle_left(const struct service *s)
{
	struct instance *i;
	double best = -1;

	TAILQ_FOREACH(i, &s->insts, link)
		if (i->state == INST_READY && i->inflight == 0) {
			double left = idle_left(i->idle_since, s->cfg->timeout, now_s());
			if (best < 0 || left > best)
				best = left;
		}
	return best;
}

/* --- a queued start's expected time (Slurm's squeue --start) --- */

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
