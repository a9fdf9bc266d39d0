/* instance.h - one running copy of a service: a local process or a Slurm job.
 *
 * Lifetime: an instance is created by its service with one reference (the
 * launcher's). Every exchange in flight on it (proxy.c), its health probe
 * and every pooled upstream connection hold one more. The launcher's
 * reference is dropped when the launcher says "gone" (instance_gone); the
 * instance is freed when no reference is left. A gone instance is detached
 * from its service at once (not listed, not picked), so a late reference
 * only ever sees it in state GONE. An instance holds a reference on its
 * service (service_ref) until it is freed.
 *
 * States (one meaning each; every move goes through instance_set_state(),
 * which checks a table of legal moves and logs "old -> new (why)"):
 *   STARTING   first boot: the launcher is working (process spawned, job queued)
 *   PROBING    first boot: the endpoint is known; probes run until one passes
 *   READY      in rotation
 *   DRAINING   no new requests; stops when nothing is in flight on it
 *   STOPPING   stop sent; waiting for the launcher's "gone"
 *   UNHEALTHY  was ready, now unreachable or failing probes: out of rotation,
 *              probing; back to READY when a probe passes
 *   HELD       the launcher says it is not serving now (job suspended,
 *              requeued, node down): out of rotation, no probes; requests
 *              wait for it as for a cold start; instance_endpoint() ends it
 *   GONE       the launcher said gone; freed with its last reference
 * Only STARTING and PROBING count as "starting". */
#ifndef SG_INSTANCE_H
#define SG_INSTANCE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "launcher.h"

struct event;
struct hconn;
struct service;
struct waiter;

#include "http_pool.h"

enum inst_state {
	INST_STARTING,
	INST_PROBING,
	INST_READY,
	INST_DRAINING,
	INST_STOPPING,
	INST_UNHEALTHY,
	INST_HELD,
	INST_GONE,
	INST_NSTATES
};

/* Shared by service.c, instance.c, the launchers, the proxy and the API.
 * Launchers write lpriv (their own state, shown through describe());
 * everything else is the service's. */
struct instance {
	struct service *svc;
	int index;
	int refs;                     /* see the lifetime rule above */
	enum inst_state state;
	char detail[256];             /* what it is doing: "pending (Resources)" */
	struct sockaddr_storage addr; /* where requests go */
	socklen_t addrlen;
	char addr_str[160];
	int remote_port, local_port;
	int inflight;
	uint64_t served;
	double created, endpoint_at, ready_at, idle_since, state_since;
	void *lpriv;                  /* the launcher's own state */

	struct event *timer;          /* start deadline while starting, idle stop while ready */
	struct event *probe_timer;
	struct event *handover_ev;    /* slurm: start the replacement before the time limit */
	int probe_status;
	int probe_fails;              /* consecutive failed probes while ready */
	double deadline;              /* slurm: when the job's time limit ends (0: none) */
	double expected_start;        /* slurm: Slurm's expected start while pending
	                               * (wall clock, wall_s(); 0: none) */
	struct instance *replaces;    /* a handover: the instance this one takes over from */
	struct instance *replaced_by;
	struct hconn *probe;
	int probe_delay_ms;
	double boot_check_at;         /* the launcher's last boot_check (0: none yet) */
	struct hconn **pool;          /* idle keep-alive upstream connections */
	int npool, poolcap;
	TAILQ_HEAD(, waiter) users;   /* requests in flight on it */
	TAILQ_ENTRY(instance) link;
};

/* --- called by launchers (struct launcher_ops reports back through these) --- */

/* The instance can be reached at host:port now: probe it; READY when a
 * probe passes. Also ends HELD (a requeued job runs again, maybe on another
 * node): the new address is probed, then waiting requests are served. */
void instance_endpoint(struct instance *i, const char *host, int port);
/* What the launcher sees ("pending (Priority)", "running on node7"); also
 * the reason shown while HELD. */
void instance_set_detail(struct instance *i, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The job ends at END_AT (monotonic seconds): hand over to a fresh
 * instance before then. END_AT 0: it has no end (any more: an admin
 * lifted its time limit): no handover. */
void instance_set_deadline(struct instance *i, double end_at);
/* The process or job is gone (or could not start); KIND and REASON say
 * why (KIND counts a failed start in /metrics; REASON is for people).
 * Requests in flight on it end with 502 and the reason. The launcher must
 * not touch I afterwards. */
void instance_gone(struct instance *i, enum launch_fail kind, const char *reason);
/* The start cannot succeed (KIND, REASON): answer the waiters, then stop I. */
void instance_fail(struct instance *i, enum launch_fail kind, const char *reason);
/* The instance is not serving now (job suspended, requeued, node down,
 * preempted): it leaves rotation at once; requests in flight on it end
 * with 502 and REASON (an SSE stream with an error event); pooled
 * connections close, probes stop; new requests wait (never 502) with
 * REASON in /check_, /info, /api and the cold-start feedback. The start
 * deadline does not run while held; the idle timeout does when nothing
 * waits. instance_set_detail() updates the reason; instance_endpoint()
 * brings it back. */
void instance_hold(struct instance *i, const char *reason);

/* --- used by the proxy --- */

/* A request on I ended (response finished or aborted): W leaves I. */
void instance_release(struct instance *i, struct waiter *w);
/* A connection to I was refused or closed before any response byte: take
 * I out of rotation until a probe passes, and ask the launcher to check it. */
void instance_unreachable(struct instance *i, const char *why);
/* The pool of idle upstream connections: http_pool.h (included above). */

/* --- the object itself (instance.c), for service.c --- */

const char *instance_state_name(enum inst_state st);
/* Is FROM -> TO a legal move? */
bool instance_move_legal(enum inst_state from, enum inst_state to);
/* The one setter: checks the move (an illegal one asserts in debug/ASan
 * builds, is logged and refused in release builds), logs it. Returns
 * false if refused. */
bool instance_set_state(struct instance *i, enum inst_state st, const char *why);
/* A new instance of S at INDEX, in STARTING, with one reference. */
struct instance *instance_new(struct service *s, int index);
void instance_ref(struct instance *i);
/* Drop a reference; frees I with the last one. */
void instance_unref(struct instance *i);
/* Attach / detach a request in flight. */
void instance_attach(struct instance *i, struct waiter *w);
/* Detach I from everything that runs on its own: close the pool and the
 * probe, stop the timers, and (ABORT_USERS) end each request in flight
 * with 502 + WHY. */
void instance_detach_all(struct instance *i, const char *why, bool abort_users);
/* Start probing from the first delay again. */
void instance_probe_restart(struct instance *i);
/* The next probe of a booting or unhealthy instance, with backoff. */
void instance_probe_schedule(struct instance *i);
/* Set up the module (timers on G's base, gw.h; the config's
 * upstream_keepalive idle connections per instance at most). Again after a
 * reload: the new upstream_keepalive. */
struct gw;
void instances_init(struct gw *g);
/* Parse HOST:PORT into i->addr; -1 with *cause (static) if it does not parse. */
int instance_set_addr(struct instance *i, const char *host, int port, const char **cause);

/* service.c callbacks for instance.c */
void service_probe_result(struct instance *i, bool ok);
void service_instance_timer(struct instance *i);      /* i->timer fired */
void service_handover(struct instance *i);            /* i->handover_ev fired */
void service_instance_released(struct instance *i);   /* a request on I ended */
void service_instance_aborted(struct instance *i, struct waiter *w); /* ... was aborted */

#endif
