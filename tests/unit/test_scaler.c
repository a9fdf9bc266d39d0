/* test_scaler.c - the scaler and the walltime handover, table-driven with an
 * injected clock (includes scaler.c). Each case is a story: a config and
 * steps, each step the service's counts at a time NOW and what the scaler
 * must decide then; the scaler's timers carry over from step to step, as
 * they do in the service. Nothing sleeps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <cmocka.h>

#include "../../src/scaler.c"

#define NOW0 1000.0   /* a monotonic clock never reads 0 (0 means "not set") */

struct step {
	double at;                /* seconds after NOW0 */
	struct scaler_input in;   /* ready, starting, other, inflight, waiting */
	int start;
	enum scale_why why;
	bool drain;
	double recheck;           /* < 0: none */
};

struct story {
	const char *name;
	struct scaler_config c;   /* min, max, target, up delay, down delay */
	struct step steps[8];
	int nsteps;
};

#define NO -1.0

static const struct story stories[] = {
	{"min_instances: all missing ones start at once",
	 {3, 3, 4, 2, 60},
	 {{0, {0, 0, 0, 0, 0}, 3, SCALE_MIN, false, NO},
	  {0.1, {0, 3, 0, 0, 0}, 0, SCALE_NONE, false, NO},
	  {5, {1, 1, 0, 0, 0}, 1, SCALE_MIN, false, NO}},   /* one died while booting */
	 3},
	{"held and unhealthy instances count towards min_instances",
	 {2, 3, 4, 2, 60},
	 {{0, {1, 0, 1, 0, 0}, 0, SCALE_NONE, false, NO},
	  {0, {0, 0, 2, 0, 0}, 0, SCALE_NONE, false, NO}},
	 2},
	{"scale up when in flight per instance exceeds target, after scale_up_delay",
	 {1, 3, 2, 2, 60},
	 {{0, {1, 0, 0, 3, 0}, 0, SCALE_NONE, false, 2},
	  {1, {1, 0, 0, 2, 2}, 0, SCALE_NONE, false, 1},   /* waiting requests count as load */
	  {2, {1, 0, 0, 3, 0}, 1, SCALE_ABOVE_TARGET, false, NO},
	  /* the new one boots: no second start on top of it */
	  {3, {1, 1, 0, 8, 0}, 0, SCALE_NONE, false, NO}},
	 4},
	{"at target is not above it",
	 {1, 3, 2, 0, 60},
	 {{0, {1, 0, 0, 2, 0}, 0, SCALE_NONE, false, NO}, {10, {2, 0, 0, 4, 0}, 0, SCALE_NONE, false, NO}},
	 2},
	{"scale_up_delay 0: at once",
	 {0, 2, 1, 0, 60},
	 {{0, {1, 0, 0, 2, 0}, 1, SCALE_ABOVE_TARGET, false, NO}},
	 1},
	{"max_instances caps a scale up",
	 {1, 2, 1, 0, 60},
	 {{0, {2, 0, 0, 10, 5}, 0, SCALE_NONE, false, NO}},
	 1},
	{"a short dip below target does not reset the up clock",
	 {1, 3, 1, 2, 60},
	 {{0, {1, 0, 0, 4, 0}, 0, SCALE_NONE, false, 2},
	  {1, {1, 0, 0, 0, 0}, 0, SCALE_NONE, false, 1},   /* between two rounds: grace 1 s */
	  {1.5, {1, 0, 0, 4, 0}, 0, SCALE_NONE, false, 0.5},
	  {2, {1, 0, 0, 4, 0}, 1, SCALE_ABOVE_TARGET, false, NO}},
	 4},
	{"a dip that lasts resets the up clock",
	 {1, 3, 1, 2, 60},
	 {{0, {1, 0, 0, 4, 0}, 0, SCALE_NONE, false, 2},
	  {1, {1, 0, 0, 1, 0}, 0, SCALE_NONE, false, 1},
	  {2, {1, 0, 0, 1, 0}, 0, SCALE_NONE, false, NO},
	  {2.5, {1, 0, 0, 4, 0}, 0, SCALE_NONE, false, 2},   /* counts from here again */
	  {4.5, {1, 0, 0, 4, 0}, 1, SCALE_ABOVE_TARGET, false, NO}},
	 5},
	{"cold burst: as many as the waiting requests need, one more per decision",
	 {0, 3, 2, 2, 60},
	 {{0, {0, 1, 0, 0, 6}, 1, SCALE_COLD_BURST, false, NO},   /* need 3 */
	  {0, {0, 2, 0, 0, 6}, 1, SCALE_COLD_BURST, false, NO},
	  {0, {0, 3, 0, 0, 6}, 0, SCALE_NONE, false, NO},
	  {0, {0, 1, 0, 0, 2}, 0, SCALE_NONE, false, NO}},      /* need 1 */
	 4},
	{"cold burst: max_instances caps it",
	 {0, 2, 1, 2, 60},
	 {{0, {0, 1, 0, 0, 10}, 1, SCALE_COLD_BURST, false, NO},
	  {0, {0, 2, 0, 0, 10}, 0, SCALE_NONE, false, NO}},
	 2},
	{"cold burst: nothing starting is kick()'s (the first start), not the scaler's",
	 {0, 3, 1, 2, 60},
	 {{0, {0, 0, 0, 0, 5}, 0, SCALE_NONE, false, NO}},
	 1},
	{"held/unhealthy instances are not counted as starting (they block no scale-up)",
	 {0, 3, 1, 0, 60},
	 {{0, {1, 0, 1, 3, 0}, 1, SCALE_ABOVE_TARGET, false, NO},
	  {0, {0, 1, 1, 0, 4}, 1, SCALE_COLD_BURST, false, NO},
	  /* a booting one does block it */
	  {0, {1, 1, 0, 3, 0}, 0, SCALE_NONE, false, NO}},
	 3},
	{"scale down after scale_down_delay, one at a time, down to min_instances",
	 {1, 3, 2, 2, 60},
	 {{0, {3, 0, 0, 0, 0}, 0, SCALE_NONE, false, 60},
	  {30, {3, 0, 0, 1, 0}, 0, SCALE_NONE, false, 30},
	  {60, {3, 0, 0, 0, 0}, 0, SCALE_NONE, true, NO},
	  {61, {2, 0, 0, 0, 0}, 0, SCALE_NONE, false, 60},     /* the clock starts again */
	  {121, {2, 0, 0, 0, 0}, 0, SCALE_NONE, true, NO},
	  {122, {1, 0, 0, 0, 0}, 0, SCALE_NONE, false, NO},    /* min_instances: never below */
	  {500, {1, 0, 0, 0, 0}, 0, SCALE_NONE, false, NO}},
	 7},
	{"never below min_instances",
	 {2, 3, 1, 2, 0},
	 {{0, {2, 0, 0, 0, 0}, 0, SCALE_NONE, false, NO}, {100, {2, 0, 0, 0, 0}, 0, SCALE_NONE, false, NO}},
	 2},
	{"load that needs all instances resets the down clock",
	 {0, 3, 2, 2, 60},
	 {{0, {2, 0, 0, 2, 0}, 0, SCALE_NONE, false, 60},
	  {59, {2, 0, 0, 3, 0}, 0, SCALE_NONE, false, NO},     /* 3 > 2 * (2 - 1) */
	  {61, {2, 0, 0, 2, 0}, 0, SCALE_NONE, false, 60}},
	 3},
	{"a booting instance blocks a scale down",
	 {0, 3, 2, 2, 60},
	 {{0, {2, 1, 0, 0, 0}, 0, SCALE_NONE, false, NO}, {100, {2, 1, 0, 0, 0}, 0, SCALE_NONE, false, NO}},
	 2},
};

static const char *const why_names[] = {"none", "min", "cold burst", "above target"};

static void test_scaler_stories(void **state)
{
	(void)state;
	for (size_t k = 0; k < sizeof stories / sizeof stories[0]; k++) {
		const struct story *s = &stories[k];
		struct scaler_timers t = {0, 0, 0};

		for (int n = 0; n < s->nsteps; n++) {
			const struct step *st = &s->steps[n];
			struct scaler_decision d;

			scaler_decide(&t, &s->c, &st->in, NOW0 + st->at, &d);
			if (d.start != st->start || d.why != st->why || d.drain != st->drain ||
			    (st->recheck < 0) != (d.recheck < 0) ||
			    (st->recheck >= 0 && fabs(d.recheck - st->recheck) > 1e-9)) {
				print_error("%s, step %d (t=%.1f): got start %d (%s) drain %d recheck %.2f; "
					    "want start %d (%s) drain %d recheck %.2f\n",
					    s->name, n, st->at, d.start, why_names[d.why], d.drain, d.recheck,
					    st->start, why_names[st->why], st->drain, st->recheck);
				fail();
			}
		}
	}
}

/* handover_lead, last start, s left, never ready -> start the replacement in */
static const struct {
	int lead;
	double last_start, left;
	bool never_ready;
	double in;
} handover_in_cases[] = {
	{120, 0, 3600, false, 3480},   /* a set lead */
	{-1, 0, 3600, false, 3510},    /* auto, no start seen yet: 90 s */
	{-1, 20, 3600, false, 3530},   /* auto: twice the last start + 30 s */
	{-1, 200, 3600, false, 3170},
	{0, 0, 3600, false, 3600},     /* lead 0: at the limit itself */
	{120, 0, 60, false, 0},        /* too late already: at once */
	{120, 0, 60, true, 12},        /* never ready: keeps a fifth of its time */
	{-1, 0, 100, true, 20},
	{10, 0, 100, true, 90},        /* a lead that fits is kept */
};

static void test_handover_starts_before_the_deadline(void **state)
{
	(void)state;
	for (size_t k = 0; k < sizeof handover_in_cases / sizeof handover_in_cases[0]; k++) {
		double in = scaler_handover_in(handover_in_cases[k].lead, handover_in_cases[k].last_start,
					       handover_in_cases[k].left, handover_in_cases[k].never_ready);
		if (fabs(in - handover_in_cases[k].in) > 1e-9) {
			print_error("case %zu: handover in %.2f s, want %.2f\n", k, in, handover_in_cases[k].in);
			fail();
		}
		/* always before the deadline (or at once), never after it */
		assert_true(in >= 0);
		assert_true(in <= handover_in_cases[k].left);
		if (handover_in_cases[k].lead > 0 && handover_in_cases[k].left > 0)
			assert_true(in < handover_in_cases[k].left);
	}
}

static void test_handover_decision(void **state)
{
	static const struct {
		bool ready, replaced, can_start;
		enum handover_action want;
	} cases[] = {
		{true, false, true, HANDOVER_START},
		{true, false, false, HANDOVER_BLOCKED},   /* logged; the job runs out */
		{true, true, true, HANDOVER_NONE},        /* a replacement is on its way */
		{false, false, true, HANDOVER_NONE},      /* held, unhealthy, draining: not in rotation */
		{false, true, false, HANDOVER_NONE},
	};

	(void)state;
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
		assert_int_equal(scaler_handover(cases[k].ready, cases[k].replaced, cases[k].can_start),
				 cases[k].want);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scaler_stories),
		cmocka_unit_test(test_handover_starts_before_the_deadline),
		cmocka_unit_test(test_handover_decision),
	};
	return cmocka_run_group_tests_name("scaler", tests, NULL, NULL);
}
