/* health.h - what a health probe's answer means for an instance (pure),
 * and the service's side of probes: health.c also holds
 * service_probe_result(), instance_endpoint() and instance_unreachable()
 * (instance.h). The probe's HTTP exchange itself is instance.c's. */
#ifndef SG_HEALTH_H
#define SG_HEALTH_H

#include <stdbool.h>

#include "instance.h"

/* Failed probes in a row that take a ready instance out of rotation. */
#define HEALTH_FAILS_UNREACHABLE 2

enum health_action {
	HEALTH_NOTHING,       /* not probed in this state */
	HEALTH_READY,         /* booting or unhealthy, and it passed: into rotation */
	HEALTH_PROBE_AGAIN,   /* booting or unhealthy, and it failed: next probe, with back-off */
	HEALTH_NEXT,          /* in rotation (or draining): next probe after *next_s */
	HEALTH_UNREACHABLE,   /* ready, failed twice in a row: out of rotation */
};

/* The verdict OK of a probe of an instance in state ST with *FAILS failed
 * probes before it: what to do, *FAILS updated, and for HEALTH_NEXT the
 * delay of the next probe in *NEXT_S (INTERVAL, or 1 s after a failure). */
enum health_action health_verdict(enum inst_state st, bool ok, int *fails, int interval, int *next_s);

#endif
