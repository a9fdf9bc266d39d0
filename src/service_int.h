/* service_int.h - what service.c (registry, wait queue, reload),
 * service_inst.c (its instances: start, stop, the end, the scaler applied)
 * and health.c (probe verdicts) share. Not for other files: they go
 * through service.h. */
#ifndef SG_SERVICE_INT_H
#define SG_SERVICE_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/util.h>

#include "instance.h"
#include "metrics.h"
#include "scaler.h"
#include "service.h"

struct event;
struct event_base;
struct config;

struct service {
	struct svc_config *cfg;
	struct config *conf;  /* the config CFG lives in: one reference */
	int refs;             /* instances and exchanges (service_ref); not the registry's */
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
	char recover_error[300]; /* why the launcher could not look yet ("": none) */
	struct scaler_timers scale;   /* the scaler's clocks (scaler.h) */
	double last_start_s;  /* how long the last successful start took */
	struct event *scale_ev;
	struct event *dispatch_ev;   /* svc_dispatch, outside anyone's callback */
	struct svc_metrics m;
	struct logring *log;         /* its instances' output (service_log) */
};

/* services_shutdown() was called: its callback, for when the last instance is gone */
extern void (*svc_shutdown_done)(void);
/* instances not yet gone, over all services */
extern int svc_live_instances;

/* --- service.c: states and the wait queue --- */

/* After any instance moved: the state the service is in now. */
void svc_settle(struct service *s, const char *why);
/* Move I (checked, logged) and settle its service. */
void inst_move(struct instance *i, enum inst_state st, const char *why);
/* STARTING or PROBING: a first boot. */
bool inst_booting(enum inst_state st);
/* Instances of S in state A or B. */
int svc_count(const struct service *s, enum inst_state a, enum inst_state b);

/* --- service_pick.c: choosing an instance --- */

/* Booting, or held by its launcher: a start is under way (no second one). */
bool svc_any_pending(const struct service *s, const struct instance *except);
/* The least loaded ready instance (NULL: none). */
struct instance *svc_pick_ready(struct service *s);
/* The least loaded ready instance not among the N in TRIED, or NULL. */
struct instance *svc_pick_untried(struct service *s, struct instance *const *tried, int n);
/* How many requests a ready instance takes while others still boot. */
int svc_dispatch_limit(const struct service *s);
/* Free the picker's scratch (at exit). */
void svc_pick_free(void);

/* --- service.c: the wait queue --- */

/* Hand waiting requests to ready instances, in arrival order. */
void svc_dispatch(struct service *s);
/* Fail every waiting request with STATUS and REASON: 502 when the start
 * failed (a failure: Hugging Face's clients take a 503 for "loading" and
 * send again at once, without end), 503 when it is "not now" (shutting
 * down, removed, management disabled). */
void svc_fail_waiters(struct service *s, int status, const char *reason, int retry_after);
/* Seconds of start back-off left (0: none). */
int svc_backoff_left(const struct service *s);
/* The draining or stopping instance of another service (one a reload
 * removed or renamed) that holds a port instance INDEX of S would use (here,
 * or on a Slurm node both jobs may run on), or NULL. S's start then waits
 * for that instance to go. */
const struct instance *svc_port_holder(const struct service *s, int index);
/* GONE (an instance) went: kick the other services whose start may have
 * waited for its ports. */
void svc_kick_others(const struct instance *gone);

/* --- service_inst.c: starting, stopping, the idle clock, the scaler --- */

/* Start a stopped service. Returns 0 if a start is under way, else -1
 * with *status (502: a start failed, or its back-off runs; 503: the
 * gateway starts nothing now), *reason (static or the service's) and
 * *retry_after. */
int service_start(struct service *s, int *status, const char **reason, int *retry_after);
/* Requests wait and nothing is starting: start (a deferred start). */
void svc_kick(struct service *s);
/* Run the scaler now and apply its decision. */
void svc_scale(struct service *s);
void svc_scale_cb(evutil_socket_t fd, short what, void *arg);
/* Restart I's idle clock. */
void inst_idle_arm(struct instance *i);
/* A reload changed S's timeout or start_timeout (from OLD_TIMEOUT and
 * OLD_START_TIMEOUT): the idle clocks and start deadlines that run follow
 * the new values, counted from when each began. */
void svc_timers_rearm(struct service *s, int old_timeout, int old_start_timeout);
/* Take I out of rotation; it stops once nothing is in flight on it. */
void instance_drain(struct instance *i, const char *why);
/* A reload lowered max_instances: drain the instances above it (a
 * handover's replacement may sit one above). */
void svc_drain_over_max(struct service *s);
/* Ask the launcher to stop I. */
void inst_stop(struct instance *i, const char *why);

#endif
