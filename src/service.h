/* service.h - services and the wait queue (service.c); their instances
 * are started, stopped and scaled by service_inst.c, after the pure
 * policies in scaler.c, balancer.c, idle.c and health.c.
 *
 * A service is one configured entry. It runs zero or more instances (a
 * local process or a Slurm job each; see instance.h). Requests ask the
 * service for a ready instance; while none is ready they wait in arrival
 * order, and the first request for a stopped service starts one, once
 * however many arrive.
 *
 * Service states (stored; every move goes through one checked setter that
 * logs "old -> new (why)"):
 *   STOPPED   no instance; the next request starts one
 *   STARTING  an instance boots (first boot) and none is ready
 *   READY     at least one instance is in rotation
 *   DEGRADED  instances exist but none is ready or booting: unhealthy, or
 *             held by the launcher (job suspended, requeued); requests wait
 *   STOPPING  only draining or stopping instances are left
 *   FAILED    the last start failed (back-off); the next request retries
 *   RETIRED   removed by a reload: never starts again
 * An instance is idle when nothing is in flight on it and no request
 * waits; it stops after the service's timeout of continuous idleness. */
#ifndef SG_SERVICE_H
#define SG_SERVICE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>

#include "instance.h"

struct event;
struct gw;
struct hconn;
struct svc_config;
struct service;
struct launcher_ops;
struct logring;

/* A request waiting for an instance, then in flight on one; embedded in
 * the caller's object. */
struct waiter {
	TAILQ_ENTRY(waiter) link;   /* in the service's queue, then in inst->users */
	struct service *svc;
	bool queued;
	bool attached;              /* in flight on inst */
	struct instance *inst;
	double since;
	struct instance *const *tried; /* a retry: only a ready instance not among these */
	int ntried;
	/* called once: with a ready instance (its in-flight count already
	 * includes this request), or with a failure */
	void (*ready)(struct waiter *w, struct instance *inst);
	void (*fail)(struct waiter *w, int status, const char *reason, int retry_after);
	/* in flight on an instance that is gone or held: end the request with
	 * STATUS and REASON. W is already detached (do not release it). */
	void (*abort)(struct waiter *w, int status, const char *reason);
};

/* Set up every service of G's config (G: gw.h, kept). */
void services_init(struct gw *g);
/* Stop everything (SIGTERM then SIGKILL); done_cb runs when all are gone. */
void services_shutdown(void (*done_cb)(void));
/* Apply the new, already validated config main.c put in gw->cfg: added
 * services appear, removed ones drain and stop, kept ones take their new
 * settings (for new instances). Each service holds a reference on the
 * config its settings live in; a removed one keeps the old config until it
 * is freed (see service_ref), so the caller may drop its own reference to
 * the old config afterwards. */
void services_reload(void);
/* Answer every waiting request with 503 and WHY. */
void services_fail_waiters(const char *why);
/* Remove all services (at exit, after shutdown). */
void services_free(void);

/* Lifetime: the registry holds a service while it is in the config.
 * Whatever may outlive a reload holds a reference: each instance (until it
 * is freed) and each exchange (proxy.c). A service removed by a reload is
 * freed, with its reference on its config, soon after its last reference
 * goes (from the event loop, never inside a caller's callback). */
void service_ref(struct service *s);
void service_unref(struct service *s);

struct service *service_by_route(const char *route, size_t len);
struct service *service_by_name(const char *name);
size_t services_count(void);
struct service *service_at(size_t i);
const struct svc_config *service_config(const struct service *s);

/* A retry: is an instance of S ready that is not among TRIED (N)? */
bool service_has_untried(struct service *s, struct instance *const *tried, int n);
/* Ask for a ready instance.
 *  0: w->ready was NOT called; *inst is ready and counts this request;
 *  1: queued; w->ready or w->fail follows;
 * -1: refused now; *status, *reason, *retry_after say why.
 * hold=false: never queue (503 at once while a start goes on). */
int service_request(struct service *s, struct waiter *w, bool hold, struct instance **inst,
		    int *status, const char **reason, int *retry_after);
/* A waiting request went away. */
void service_cancel(struct waiter *w);
/* Start the service if it is stopped, and restart its idle clock (demand). */
void service_demand(struct service *s);
/* Admin: stop every instance of the service now. */
void service_stop_all(struct service *s, const char *why);
/* An instance found running from an earlier run of the gateway: create it
 * at INDEX in STARTING state (NULL if INDEX is out of range or taken; one
 * above max_instances is in range where the launcher has extra_ports). */
struct instance *service_adopt(struct service *s, int index);
/* Adopted together: N is the walltime handover's replacement of OLD, as
 * service_handover() had made it (OLD serves until N is ready). */
void service_adopt_handover(struct instance *old, struct instance *n);
/* The launcher's look for earlier instances of S is over. */
void service_recovered(struct service *s);
/* The launcher could not look for earlier instances of S (WHY); it looks
 * again in RETRY_AFTER seconds. S starts nothing meanwhile (an untracked
 * job of the earlier run may be running): its waiting requests get 503
 * with WHY, /check_ shows it. */
void service_recover_failed(struct service *s, const char *why, int retry_after);

/* --- state, for /info, /check_, the API --- */
enum svc_state {
	SVC_STOPPED,
	SVC_STARTING,
	SVC_READY,
	SVC_STOPPING,
	SVC_FAILED,
	SVC_DEGRADED,
	SVC_RETIRED,
	SVC_NSTATES
};
enum svc_state service_state(const struct service *s);
const char *service_state_name(enum svc_state st);
/* Is FROM -> TO a legal move of a service? */
bool service_move_legal(enum svc_state from, enum svc_state to);
/* Human reason for the current state ("ready", "starting: pending ..."). */
void service_reason(const struct service *s, char *buf, size_t len);
const char *service_last_error(const struct service *s);
int service_waiting(const struct service *s);
int service_inflight(const struct service *s);
/* Seconds until Slurm expects to start a pending instance (the soonest;
 * -1: none known). */
double service_expected_start_in(const struct service *s);
/* Retry-After for a 503 while it starts: the expected start, else DEF. */
int service_retry_after(const struct service *s, int def);
/* Seconds until the idle stop (-1: not counting down). */
double service_idle_left(const struct service *s);
struct instance *service_first_instance(const struct service *s);
struct instance *service_next_instance(const struct instance *i);
/* Counters. */
struct svc_metrics *service_metrics(struct service *s);
/* What its instances wrote, as far as the gateway sees it (a launcher adds
 * to it; created on first use, kept across instances and reloads);
 * service_log_peek: NULL while nothing was written. */
struct logring *service_log(struct service *s);
const struct logring *service_log_peek(const struct service *s);
uint64_t service_requests(const struct service *s);
uint64_t service_starts(const struct service *s);
uint64_t service_start_failures(const struct service *s);

/* Gateway-wide switch of the seed's service management. */
extern bool services_managed;
/* The gateway is exiting (services_shutdown was called). */
extern bool services_exiting;

#endif
