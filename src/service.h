/* service.h - services, their instances, the wait queue and the idle clock.
 *
 * A service is one configured entry. It runs zero or more instances (a
 * local process or a Slurm job each). Requests ask the service for a ready
 * instance; while none is ready they wait in arrival order, and the first
 * request for a stopped service starts one, once however many arrive.
 *
 * Instance states (every move goes through one function that logs it):
 *   STARTING  the launcher is working (process spawned / job queued)
 *   PROBING   the endpoint is known; health probes run until one passes
 *   READY     serving requests
 *   DRAINING  no new requests; stops when its in-flight count reaches 0
 *   STOPPING  stop sent; waiting for the process or job to be gone
 * An instance is idle when nothing is in flight on it and no request
 * waits; it stops after the service's timeout of continuous idleness. */
#ifndef SG_SERVICE_H
#define SG_SERVICE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/types.h>

struct config;
struct event;
struct event_base;
struct hconn;
struct svc_config;
struct service;
struct instance;
struct launcher_ops;

enum inst_state { INST_STARTING, INST_PROBING, INST_READY, INST_DRAINING, INST_STOPPING };

/* A request waiting for an instance; embedded in the caller's object. */
struct waiter {
	TAILQ_ENTRY(waiter) link;
	struct service *svc;
	bool queued;
	double since;
	struct instance *avoid;   /* a retry: prefer any other ready instance */
	/* called once: with a ready instance (its in-flight count already
	 * includes this request), or with a failure */
	void (*ready)(struct waiter *w, struct instance *inst);
	void (*fail)(struct waiter *w, int status, const char *reason, int retry_after);
};

/* Shared by service.c, the launchers, the proxy and the API. */
struct instance {
	struct service *svc;
	int index;
	enum inst_state state;
	char detail[256];             /* what it is doing: "pending (Resources)" */
	struct sockaddr_storage addr; /* where requests go */
	socklen_t addrlen;
	char addr_str[160];
	int remote_port, local_port;
	int inflight;
	uint64_t served;
	double created, endpoint_at, ready_at, idle_since;
	pid_t pid;                    /* local launcher */
	char job_id[32];              /* slurm launcher */
	char node[128];
	void *lpriv;                  /* the launcher's own state */

	struct event *timer;          /* start deadline while starting, idle stop while ready */
	struct event *probe_timer;
	struct event *handover_ev;    /* slurm: start the replacement before the time limit */
	int probe_status;
	int probe_fails;              /* consecutive failed probes while ready */
	double deadline;              /* slurm: when the job's time limit ends (0: none) */
	struct instance *replaces;    /* a handover: the instance this one takes over from */
	struct instance *replaced_by;
	struct hconn *probe;
	int probe_delay_ms;
	struct hconn **pool;          /* idle keep-alive upstream connections */
	int npool, poolcap;
	TAILQ_ENTRY(instance) link;
};

/* Set up every service of CFG. */
void services_init(struct event_base *base, struct config *cfg);
/* Stop everything (SIGTERM then SIGKILL); done_cb runs when all are gone. */
void services_shutdown(void (*done_cb)(void));
/* Apply a new, already validated config: added services appear, removed
 * ones drain and stop, kept ones take their new settings (for new
 * instances). The old config must stay allocated. */
void services_reload(struct config *cfg);
/* Answer every waiting request with 503 and WHY. */
void services_fail_waiters(const char *why);
/* Remove all services (at exit, after shutdown). */
void services_free(void);

struct service *service_by_route(const char *route, size_t len);
struct service *service_by_name(const char *name);
size_t services_count(void);
struct service *service_at(size_t i);
const struct svc_config *service_config(const struct service *s);

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

/* A request on INST ended (response finished or aborted). */
void instance_release(struct instance *i);
/* A connection to INST was refused: take it out of rotation until a health
 * probe passes again. */
void instance_unreachable(struct instance *i, const char *why);
/* Pool of idle upstream connections. */
struct hconn *instance_pool_get(struct instance *i);
void instance_pool_put(struct instance *i, struct hconn *c);
/* Close every idle connection to I (one of them turned out stale). */
void instance_pool_flush(struct instance *i);

/* --- called by launchers --- */
/* The instance can be reached at host:port now: start health probes. */
void instance_endpoint(struct instance *i, const char *host, int port);
/* What the launcher sees ("pending (Priority)", "running on node7"). */
void instance_set_detail(struct instance *i, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The job ends at END_AT (monotonic seconds): hand over to a fresh
 * instance before then. */
void instance_set_deadline(struct instance *i, double end_at);
/* The process or job is gone (or could not start); reason says why. */
void instance_gone(struct instance *i, const char *reason);
/* STAND-IN (branch slurmlife) for inst's instance_hold(): the launcher
 * says I is not serving now (suspended, requeued, node down): out of
 * rotation at once, new requests wait, REASON shown. A later
 * instance_endpoint() probes it again. Replaced by inst's at merge. */
void instance_hold(struct instance *i, const char *reason);
/* The start cannot succeed (reason): answer the waiters, then stop I. */
void instance_fail(struct instance *i, const char *reason);
/* An instance found running from an earlier run of the gateway: create it
 * at INDEX in STARTING state (NULL if INDEX is out of range or taken). */
struct instance *service_adopt(struct service *s, int index);
/* The launcher's look for earlier instances of S is over. */
void service_recovered(struct service *s);

/* --- state, for /info, /check_, the API --- */
enum svc_state { SVC_STOPPED, SVC_STARTING, SVC_READY, SVC_STOPPING, SVC_FAILED };
enum svc_state service_state(const struct service *s);
const char *service_state_name(enum svc_state st);
const char *instance_state_name(enum inst_state st);
/* Human reason for the current state ("ready", "starting: pending ..."). */
void service_reason(const struct service *s, char *buf, size_t len);
const char *service_last_error(const struct service *s);
int service_waiting(const struct service *s);
int service_inflight(const struct service *s);
/* Seconds until the idle stop (-1: not counting down). */
double service_idle_left(const struct service *s);
struct instance *service_first_instance(const struct service *s);
struct instance *service_next_instance(const struct instance *i);
/* Counters. */
struct svc_metrics *service_metrics(struct service *s);
uint64_t service_requests(const struct service *s);
uint64_t service_starts(const struct service *s);
uint64_t service_start_failures(const struct service *s);

/* Gateway-wide switch of the seed's service management. */
extern bool services_managed;
/* The gateway is exiting (services_shutdown was called). */
extern bool services_exiting;

#endif
