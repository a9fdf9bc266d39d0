/* service.c - the registry of services, their states, the wait queue and
 * reload. A service's instances are started, stopped and scaled in
 * service_inst.c, with the pure policies in scaler.c, balancer.c and
 * idle.c; probe verdicts are health.c's; the instance object is
 * instance.c's. */
#include "service.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/util.h>

#include "config.h"
#include "gw.h"
#include "launcher.h"
#include "log.h"
#include "logring.h"
#include "metrics.h"
#include "service_int.h"
#include "util.h"

bool services_managed = true;
bool services_exiting;
void (*svc_shutdown_done)(void);
int svc_live_instances;

static struct gw *gw;
static struct service **svcs;
static size_t nsvcs;
static struct service **by_route;   /* sorted by route_name */

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

bool inst_booting(enum inst_state st)
{
	return st == INST_STARTING || st == INST_PROBING;
}

int svc_count(const struct service *s, enum inst_state a, enum inst_state b)
{
	struct instance *i;
	int n = 0;

	TAILQ_FOREACH(i, &s->insts, link)
		n += i->state == a || i->state == b;
	return n;
}

/* After any instance moved: the state the service is in now. */
void svc_settle(struct service *s, const char *why)
{
	enum svc_state st;

	if (s->state == SVC_RETIRED)
		return;
	if (svc_count(s, INST_READY, INST_READY) > 0)
		st = SVC_READY;
	else if (svc_count(s, INST_STARTING, INST_PROBING) > 0)
		st = SVC_STARTING;
	else if (svc_count(s, INST_HELD, INST_UNHEALTHY) > 0)
		st = SVC_DEGRADED;
	else if (svc_count(s, INST_DRAINING, INST_STOPPING) > 0)
		st = SVC_STOPPING;
	else if (s->failures > 0)
		st = SVC_FAILED;
	else
		st = SVC_STOPPED;
	svc_set_state(s, st, why);
}

/* Move I (checked, logged) and settle its service. */
void inst_move(struct instance *i, enum inst_state st, const char *why)
{
	char what[64];

	instance_set_state(i, st, why);
	/* the instance's line above says why */
	snprintf(what, sizeof what, "[%d] %s", i->index, instance_state_name(i->state));
	svc_settle(i->svc, what);
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
void svc_dispatch(struct service *s)
{
	struct waiter *w;
	struct instance *i;
	int limit = svc_dispatch_limit(s);

	while ((w = TAILQ_FIRST(&s->waiters)) != NULL && (i = svc_pick_ready(s)) != NULL &&
	       i->inflight < limit) {
		TAILQ_REMOVE(&s->waiters, w, link);
		s->nwaiting--;
		w->queued = false;
		assign(i, w);
		w->ready(w, i);
	}
}

/* Fail every waiting request with STATUS and REASON. */
void svc_fail_waiters(struct service *s, int status, const char *reason, int retry_after)
{
	struct waiter *w;

	while ((w = TAILQ_FIRST(&s->waiters)) != NULL) {
		TAILQ_REMOVE(&s->waiters, w, link);
		s->nwaiting--;
		w->queued = false;
		w->fail(w, status, reason, retry_after);
	}
}

int svc_backoff_left(const struct service *s)
{
	double left = s->backoff_until - now_s();
	return left > 0 ? (int)ceil(left) : 0;
}

int service_request(struct service *s, struct waiter *w, bool hold, struct instance **inst,
		    int *status, const char **reason, int *retry_after)
{
	struct instance *i;

	if (w->ntried > 0) {
		/* a retry: only on an instance it has not tried, ready now */
		if ((i = svc_pick_untried(s, w->tried, w->ntried)) == NULL) {
			*status = 502;
			*reason = "no other instance is ready";
			*retry_after = 0;
			return -1;
		}
		assign(i, w);
		*inst = i;
		return 0;
	}
	s->requests++;
	i = svc_pick_ready(s);
	if (i != NULL && TAILQ_EMPTY(&s->waiters) && (!hold || i->inflight < svc_dispatch_limit(s))) {
		assign(i, w);
		*inst = i;
		if (s->cfg->max_instances > 1)
			svc_scale(s);
		return 0;
	}
	if (i == NULL && service_start(s, status, reason, retry_after) != 0)
		return -1;
	*status = 503;
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
	svc_scale(s);
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
	int status, ra;

	if (s->state == SVC_RETIRED)
		return;
	if (svc_pick_ready(s) == NULL) {
		if (s->recovering)
			s->demanded = true;   /* started once the look for earlier jobs is over */
		else
			(void)service_start(s, &status, &reason, &ra);
		return;
	}
	TAILQ_FOREACH(i, &s->insts, link)
		if (i->state == INST_READY && i->inflight == 0)
			inst_idle_arm(i);
}

void service_stop_all(struct service *s, const char *why)
{
	struct instance *i, *next;

	svc_fail_waiters(s, 503, why, 30);
	for (i = TAILQ_FIRST(&s->insts); i != NULL; i = next) {
		next = TAILQ_NEXT(i, link);
		inst_stop(i, why);
	}
}

static void dispatch_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	svc_dispatch(arg);
}

/* --- set-up, reload and look-up --- */

static int route_cmp(const void *a, const void *b)
{
	const struct service *x = *(struct service *const *)a, *y = *(struct service *const *)b;
	return strcmp(x->cfg->route_name, y->cfg->route_name);
}

static struct service *service_new(struct svc_config *c)
{
	struct service *s = xcalloc(1, sizeof *s);

	s->cfg = c;
	s->conf = config_ref(gw->cfg);
	s->lops = c->launcher;
	TAILQ_INIT(&s->insts);
	TAILQ_INIT(&s->waiters);
	s->scale_ev = evtimer_new(gw->base, svc_scale_cb, s);
	s->dispatch_ev = evtimer_new(gw->base, dispatch_cb, s);
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
	for (size_t l = 0; l < launcher_count(); l++) {
		const struct launcher_ops *lo = launcher_at(l);
		bool used = false;
		for (size_t k = 0; k < nsvcs; k++)
			used |= svcs[k]->lops == lo;
		if (!used)
			continue;
		if (lo->init)
			lo->init(gw);   /* idempotent: also after a reload */
		if (!recover || lo->recover == NULL)
			continue;
		for (size_t k = 0; k < nsvcs; k++)
			if (svcs[k]->lops == lo)
				svcs[k]->recovering = true;
		lo->recover();
	}
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg);
static struct event *sweep_ev;   /* frees retired services nothing refers to */

void services_init(struct gw *g)
{
	struct config *cfg = g->cfg;

	gw = g;
	sweep_ev = event_new(g->base, -1, 0, sweep_cb, NULL);
	instances_init(g);
	nsvcs = cfg->n_services;
	svcs = xcalloc(nsvcs ? nsvcs : 1, sizeof *svcs);
	for (size_t k = 0; k < nsvcs; k++)
		svcs[k] = service_new(&cfg->services[k]);
	index_routes();
	launchers_prepare(true);
	for (size_t k = 0; k < nsvcs; k++)
		svc_scale(svcs[k]);   /* min_instances */
}

/* Services dropped by a reload: kept (stopping) while instances or
 * requests in flight still refer to them, then freed by sweep_cb. */
static struct service **retired;
static size_t nretired;

static void service_free(struct service *s);

void service_ref(struct service *s)
{
	s->refs++;
}

void service_unref(struct service *s)
{
	assert(s->refs > 0);
	if (--s->refs == 0 && s->state == SVC_RETIRED)
		event_active(sweep_ev, EV_TIMEOUT, 1);   /* not inside the caller's callback */
}

/* Free the retired services nothing refers to any more. */
static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	size_t kept = 0;

	(void)fd, (void)what, (void)arg;
	for (size_t k = 0; k < nretired; k++) {
		struct service *s = retired[k];
		if (s->refs > 0) {
			retired[kept++] = s;
			continue;
		}
		assert(s->ninst == 0 && s->nwaiting == 0);
		log_debug("svc %s: retired and unused: freed", s->cfg->name);
		service_free(s);
	}
	nretired = kept;
}

void services_reload(void)
{
	struct config *cfg = gw->cfg;
	struct service **next = xcalloc(cfg->n_services ? cfg->n_services : 1, sizeof *next);
	size_t added = 0, changed = 0, removed = 0;

	for (size_t k = 0; k < cfg->n_services; k++) {
		struct svc_config *c = &cfg->services[k];
		struct service *old = service_by_name(c->name);
		if (old != NULL && old->cfg->launcher == c->launcher) {
			/* the same service: new settings apply from now on, to new
			 * instances (and the idle clocks and start deadlines that run) */
			int was_timeout = old->cfg->timeout, was_start = old->cfg->start_timeout;
			old->cfg = c;
			svc_timers_rearm(old, was_timeout, was_start);
			config_unref(old->conf);
			old->conf = config_ref(cfg);
			svc_drain_over_max(old);
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
			struct service *s = svcs[k], *heir = NULL;
			struct instance *i, *nx;
			char why[300];
			/* first: nothing (min_instances, a demand, a kick) starts it again */
			svc_set_state(s, SVC_RETIRED, "removed from the config");
			s->demanded = false;
			/* renamed (its route lives on in another service): retry at once */
			for (size_t q = 0; q < cfg->n_services && heir == NULL; q++)
				if (strcmp(next[q]->cfg->route_name, s->cfg->route_name) == 0)
					heir = next[q];
			if (heir != NULL) {
				snprintf(why, sizeof why, "the service was replaced by %s in the config; retry",
					 heir->cfg->name);
				svc_fail_waiters(s, 503, why, 1);
			} else {
				svc_fail_waiters(s, 503, "the service was removed from the config", 30);
			}
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
		if (svcs[k]->refs == 0)
			event_active(sweep_ev, EV_TIMEOUT, 1);
		removed++;
	}
	free(svcs);
	svcs = next;
	nsvcs = cfg->n_services;
	instances_init(gw);
	index_routes();
	launchers_prepare(false);
	for (size_t k = 0; k < nsvcs; k++)
		svc_scale(svcs[k]);
	log_info("config reloaded: %zu services (%zu added, %zu kept, %zu removed)", nsvcs, added,
		 changed, removed);
}

void services_fail_waiters(const char *why)
{
	for (size_t k = 0; k < nsvcs; k++)
		svc_fail_waiters(svcs[k], 503, why, 5);
}

void services_shutdown(void (*done_cb)(void))
{
	svc_shutdown_done = done_cb;
	services_exiting = true;
	for (size_t k = 0; k < nsvcs; k++) {
		event_del(svcs[k]->scale_ev);
		service_stop_all(svcs[k], "the gateway is shutting down");
	}
	for (size_t k = 0; k < nretired; k++)
		service_stop_all(retired[k], "the gateway is shutting down");
	if (svc_live_instances == 0)
		done_cb();
}

static void service_free(struct service *s)
{
	config_unref(s->conf);
	logring_free(s->log);
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
	svc_pick_free();
	svcs = retired = by_route = NULL;
	nsvcs = nretired = 0;
	if (sweep_ev)
		event_free(sweep_ev);
	sweep_ev = NULL;
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

/* Could the ports of instance IA of A meet those of an instance of B at LB
 * (its local_port) and RB (remote_port)? Where both run their script on
 * this host (the local launcher), the server binds remote_port here and
 * the gateway reaches it at local_port. Where neither does (Slurm), the
 * servers bind remote_port on their nodes, and the two jobs may share one
 * (the gateway's end of a tunnel is a port of its own). */
/* Do A and B submit to the same cluster (the same login node and account,
 * or both here)? Only then may their jobs share a node. */
static bool same_target(const struct svc_config *a, const struct svc_config *b)
{
	return str_same(a->remote_host, b->remote_host) && str_same(a->ssh_username, b->ssh_username) &&
	       a->ssh_port == b->ssh_port;
}

static bool ports_meet(const struct service *a, int ia, const struct service *b, int lb, int rb)
{
	int la = a->cfg->local_port + ia, ra = a->cfg->remote_port + ia;
	bool ah = a->lops->script_on_host, bh = b->lops->script_on_host;

	if (ah && bh)
		return la == lb || la == rb || ra == lb || ra == rb;
	return !ah && !bh && ra == rb && same_target(a->cfg, b->cfg);
}

static const struct instance *holder_in(const struct service *s, int index,
					struct service *const *list, size_t n)
{
	for (size_t k = 0; k < n; k++) {
		const struct instance *i;
		if (list[k] == s)
			continue;
		/* one on its way out only: a port that a serving instance of
		 * another service holds is not waited for (the start says so) */
		TAILQ_FOREACH(i, &list[k]->insts, link)
			if ((i->state == INST_DRAINING || i->state == INST_STOPPING) &&
			    ports_meet(s, index, list[k], i->local_port, i->remote_port))
				return i;
	}
	return NULL;
}

const struct instance *svc_port_holder(const struct service *s, int index)
{
	const struct instance *i = holder_in(s, index, svcs, nsvcs);

	return i ? i : holder_in(s, index, retired, nretired);
}

void svc_kick_others(const struct instance *gone)
{
	for (size_t k = 0; k < nsvcs; k++) {
		struct service *o = svcs[k];
		bool meets = false;
		if (o == gone->svc)
			continue;
		for (int x = 0; x < o->cfg->max_instances && !meets; x++)
			meets = ports_meet(o, x, gone->svc, gone->local_port, gone->remote_port);
		if (meets)
			svc_kick(o);
	}
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

struct logring *service_log(struct service *s)
{
	if (s->log == NULL)
		s->log = logring_new();
	return s->log;
}

const struct logring *service_log_peek(const struct service *s)
{
	return s->log;
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
