/* scaler.h - the scaler and the walltime handover, as pure decisions.
 *
 * Nothing here reads a clock, a service or an instance: the caller
 * (service_inst.c) counts its instances, passes the time in, applies the
 * decision (starts, a drain, a later re-check) and keeps the timers
 * (struct scaler_timers) with the service. Unit test: tests/unit/test_scaler.c. */
#ifndef SG_SCALER_H
#define SG_SCALER_H

#include <stdbool.h>

/* The scaler's clocks, kept by the caller between decisions (all 0 at first). */
struct scaler_timers {
	double up_since;      /* load above target since (0: not) */
	double below_since;   /* ... and back at or below it since (0: not) */
	double down_since;    /* an instance to spare since (0: not) */
};

/* The settings the scaler reads (a service's config). */
struct scaler_config {
	int min_instances;
	int max_instances;
	int target_concurrency;   /* requests in flight per instance aimed for (>= 1) */
	int scale_up_delay;       /* s above target before one more starts */
	int scale_down_delay;     /* s with an instance to spare before one drains */
};

/* What the service has now. */
struct scaler_input {
	int ready;      /* instances in rotation */
	int starting;   /* first boot: STARTING or PROBING */
	int other;      /* HELD or UNHEALTHY: count towards min_instances, but
			 * neither as ready nor as starting */
	int inflight;   /* requests in flight on the service */
	int waiting;    /* requests queued for an instance */
};

enum scale_why {
	SCALE_NONE,
	SCALE_MIN,          /* fewer than min_instances present */
	SCALE_COLD_BURST,   /* nothing ready: as many as the waiting requests need */
	SCALE_ABOVE_TARGET, /* load per ready instance above target for scale_up_delay */
};

struct scaler_decision {
	int start;           /* instances to start now (each only if one may start) */
	enum scale_why why;
	bool drain;          /* take the least loaded ready instance out of rotation */
	double recheck;      /* decide again in this many seconds (< 0: no need) */
};

/* The scaler: keep min_instances (all missing ones at once), start more
 * under load (at once for a cold burst, after scale_up_delay otherwise),
 * drain one when it is not needed for scale_down_delay. Updates T. */
void scaler_decide(struct scaler_timers *t, const struct scaler_config *c,
		   const struct scaler_input *in, double now, struct scaler_decision *d);

/* --- the walltime handover (a Slurm job's time limit) --- */

/* Seconds from now at which the replacement of an instance should start,
 * LEFT s before its time limit. HANDOVER_LEAD < 0 is "auto": twice the
 * last start (LAST_START_S, 0 if unknown) plus 30 s, or 90 s. An instance
 * that was never ready keeps at least a fifth of its time. Never < 0. */
double scaler_handover_in(int handover_lead, double last_start_s, double left, bool never_ready);

enum handover_action {
	HANDOVER_NONE,      /* not (or no longer) in rotation, or replaced already */
	HANDOVER_START,     /* start the replacement now */
	HANDOVER_BLOCKED,   /* it should start, but no instance may start now */
};

/* The handover time of a READY instance came. */
enum handover_action scaler_handover(bool ready, bool replaced, bool can_start);

#endif
