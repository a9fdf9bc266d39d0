/* scaler.c - the scaler and the walltime handover (pure; see scaler.h). */
#include "scaler.h"

static void recheck(struct scaler_decision *d, double secs)
{
	if (d->recheck < 0)   /* the first one asked for wins, as with one timer */
		d->recheck = secs;
}

void scaler_decide(struct scaler_timers *t, const struct scaler_config *c,
		   const struct scaler_input *in, double now, struct scaler_decision *d)
{
	int present = in->ready + in->starting + in->other;
	int load = in->inflight + in->waiting;

	d->start = 0;
	d->why = SCALE_NONE;
	d->drain = false;
	d->recheck = -1;
	if (present < c->min_instances) {
		/* all that are missing, at once: N warm instances cost one start time */
		d->start = c->min_instances - present;
		d->why = SCALE_MIN;
		return;
	}
	if (in->ready == 0) {
		/* a cold burst: as many instances as it needs, at once */
		int need = (in->waiting + c->target_concurrency - 1) / c->target_concurrency;
		if (need > c->max_instances)
			need = c->max_instances;
		if (in->starting > 0 && in->starting < need) {
			d->start = 1;
			d->why = SCALE_COLD_BURST;
		}
		return;
	}
	if (in->ready + in->starting < c->max_instances && in->starting == 0 &&
	    (double)load / in->ready > c->target_concurrency) {
		t->below_since = 0;
		if (t->up_since == 0)
			t->up_since = now;
		if (now - t->up_since >= c->scale_up_delay) {
			t->up_since = 0;
			d->start = 1;
			d->why = SCALE_ABOVE_TARGET;
		} else {
			recheck(d, t->up_since + c->scale_up_delay - now);
		}
	} else if (t->up_since != 0) {
		/* clients that finish together dip below target for a moment
		 * between rounds: only a dip that lasts resets the clock */
		double grace = c->scale_up_delay / 2.0 < 1.0 ? c->scale_up_delay / 2.0 : 1.0;
		if (t->below_since == 0)
			t->below_since = now;
		if (now - t->below_since >= grace) {
			t->up_since = 0;
			t->below_since = 0;
		} else {
			recheck(d, grace - (now - t->below_since));
		}
	}
	if (in->ready > 1 && in->ready > c->min_instances && in->starting == 0 &&
	    load <= c->target_concurrency * (in->ready - 1)) {
		if (t->down_since == 0)
			t->down_since = now;
		if (now - t->down_since >= c->scale_down_delay) {
			t->down_since = 0;
			d->drain = true;
		} else {
			recheck(d, t->down_since + c->scale_down_delay - now);
		}
	} else {
		t->down_since = 0;
	}
}

double scaler_handover_in(int handover_lead, double last_start_s, double left, bool never_ready)
{
	double lead, at;

	/* auto: twice the last start plus 30 s, for a slower queue next time */
	lead = handover_lead >= 0 ? handover_lead : last_start_s > 0 ? last_start_s * 2 + 30 : 90;
	if (lead > left * 0.8 && never_ready)
		lead = left * 0.8;   /* a short limit: still leave the job most of it */
	at = left - lead;
	return at < 0 ? 0 : at;
}

enum handover_action scaler_handover(bool ready, bool replaced, bool can_start)
{
	if (!ready || replaced)
		return HANDOVER_NONE;
	return can_start ? HANDOVER_START : HANDOVER_BLOCKED;
}
