/* idle.h - the idle clock and what an instance's timer means, as pure
 * decisions (the caller passes the time; tests/unit/test_idle.c).
 *
 * An instance is idle when nothing is in flight on it and no request
 * waits; it stops after the service's timeout of continuous idleness, but
 * never below min_instances. The same timer is the start deadline while
 * an instance boots or is unhealthy. */
#ifndef SG_IDLE_H
#define SG_IDLE_H

#include "instance.h"

struct idle_input {
	enum inst_state state;   /* of the instance whose timer fired */
	int inflight;            /* on it */
	int waiting;             /* requests queued on its service */
	int ready;               /* READY instances of the service */
	int ready_or_held;       /* READY or HELD instances of the service */
	int min_instances;
};

enum idle_action {
	IDLE_NOTHING,
	IDLE_REARM,          /* kept (min_instances, or a held one still needed): idle clock again */
	IDLE_STOP,           /* idle for the timeout */
	IDLE_STOP_UNHEALTHY, /* unhealthy for start_timeout */
	IDLE_STOP_HELD,      /* held and idle for the timeout */
	IDLE_FAIL_START,     /* booting: no healthy answer within start_timeout */
};

/* The instance's timer fired: what to do. */
enum idle_action idle_on_timer(const struct idle_input *in);

/* Seconds of the idle clock left at NOW: armed at SINCE, TIMEOUT long (>= 0). */
double idle_left(double since, int timeout, double now);

#endif
