/* idle.c - the idle clock (pure; see idle.h). */
#include "idle.h"

enum idle_action idle_on_timer(const struct idle_input *in)
{
	switch (in->state) {
	case INST_READY:
		if (in->inflight > 0)
			return IDLE_NOTHING;
		/* kept warm: min_instances */
		return in->ready <= in->min_instances ? IDLE_REARM : IDLE_STOP;
	case INST_UNHEALTHY:
		return IDLE_STOP_UNHEALTHY;
	case INST_HELD:
		/* no start deadline while held; the idle clock runs when nothing waits */
		if (in->waiting > 0 || in->inflight > 0 || in->ready_or_held <= in->min_instances)
			return IDLE_REARM;
		return IDLE_STOP_HELD;
	case INST_STARTING:
	case INST_PROBING:
		return IDLE_FAIL_START;
	default:
		return IDLE_NOTHING;
	}
}

double idle_left(double since, int timeout, double now)
{
	double left = since + timeout - now;
	return left < 0 ? 0 : left;
}
