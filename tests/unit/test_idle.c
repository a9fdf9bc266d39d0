/* test_idle.c - the idle clock and the instance timer's verdict,
 * table-driven with an injected clock (includes idle.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <cmocka.h>

#include "../../src/idle.c"

static const char *const action_names[] = {"nothing", "rearm", "stop", "stop unhealthy",
					   "stop held", "fail start"};

/* the instance's timer fired: (state, in flight, waiting, ready, ready or
 * held, min_instances) -> what to do */
static const struct {
	const char *name;
	struct idle_input in;
	enum idle_action want;
} timer_cases[] = {
	{"ready and idle for the timeout: stops", {INST_READY, 0, 0, 2, 2, 1}, IDLE_STOP},
	{"ready, idle, min 0, the last one: stops", {INST_READY, 0, 0, 1, 1, 0}, IDLE_STOP},
	{"never below min_instances: kept warm", {INST_READY, 0, 0, 1, 1, 1}, IDLE_REARM},
	{"min_instances 2 with 2 ready: kept", {INST_READY, 0, 0, 2, 2, 2}, IDLE_REARM},
	{"a held one does not keep a ready one above min", {INST_READY, 0, 0, 1, 2, 0}, IDLE_STOP},
	{"in flight: not idle", {INST_READY, 2, 0, 3, 3, 0}, IDLE_NOTHING},
	{"unhealthy for start_timeout: stops", {INST_UNHEALTHY, 0, 0, 0, 0, 5}, IDLE_STOP_UNHEALTHY},
	{"held, nothing waits: stops", {INST_HELD, 0, 0, 0, 1, 0}, IDLE_STOP_HELD},
	{"held while requests wait for it: kept", {INST_HELD, 0, 3, 0, 1, 0}, IDLE_REARM},
	{"held with one in flight: kept", {INST_HELD, 1, 0, 0, 1, 0}, IDLE_REARM},
	{"held counts towards min_instances: kept", {INST_HELD, 0, 0, 0, 1, 1}, IDLE_REARM},
	{"held beyond min_instances: stops", {INST_HELD, 0, 0, 1, 2, 1}, IDLE_STOP_HELD},
	{"starting at the start deadline: fails", {INST_STARTING, 0, 4, 0, 0, 0}, IDLE_FAIL_START},
	{"probing at the start deadline: fails", {INST_PROBING, 0, 0, 0, 0, 2}, IDLE_FAIL_START},
	{"draining: its own end", {INST_DRAINING, 1, 0, 1, 1, 0}, IDLE_NOTHING},
	{"stopping", {INST_STOPPING, 0, 0, 0, 0, 0}, IDLE_NOTHING},
	{"gone", {INST_GONE, 0, 0, 0, 0, 0}, IDLE_NOTHING},
};

static void test_timer_verdicts(void **state)
{
	(void)state;
	for (size_t k = 0; k < sizeof timer_cases / sizeof timer_cases[0]; k++) {
		enum idle_action got = idle_on_timer(&timer_cases[k].in);
		if (got != timer_cases[k].want) {
			print_error("%s: %s, want %s\n", timer_cases[k].name, action_names[got],
				    action_names[timer_cases[k].want]);
			fail();
		}
	}
}

/* The clock, injected: armed at SINCE with TIMEOUT; left at NOW. */
static const struct {
	double since;
	int timeout;
	double now, left;
} left_cases[] = {
	{100, 30, 100, 30},
	{100, 30, 115.5, 14.5},
	{100, 30, 130, 0},
	{100, 30, 500, 0},   /* overdue: 0, never negative */
	{100, 0, 100, 0},
	{7, 3600, 8, 3599},
};

static void test_idle_left(void **state)
{
	(void)state;
	for (size_t k = 0; k < sizeof left_cases / sizeof left_cases[0]; k++)
		assert_true(fabs(idle_left(left_cases[k].since, left_cases[k].timeout, left_cases[k].now) -
				 left_cases[k].left) < 1e-9);
}

/* A story on a fake clock: the idle clock restarts with each release, and
 * only continuous idleness for the timeout stops an instance. */
static void test_idle_clock_restarts_on_release(void **state)
{
	double clock = 1000, since;
	int timeout = 10;

	(void)state;
	since = clock;   /* ready, nothing in flight: armed */
	clock += 6;
	assert_true(fabs(idle_left(since, timeout, clock) - 4) < 1e-9);
	/* a request comes (the timer is off while in flight), ends at +9 */
	clock += 3;
	since = clock;   /* released: armed again */
	clock += 6;      /* 15 s since the first arming, 6 s idle */
	assert_true(fabs(idle_left(since, timeout, clock) - 4) < 1e-9);
	clock += 4;
	assert_true(idle_left(since, timeout, clock) == 0);
	/* the timer fires now: one of two ready, min 1 -> stop */
	assert_int_equal(idle_on_timer(&(struct idle_input){INST_READY, 0, 0, 2, 2, 1}), IDLE_STOP);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_timer_verdicts),
		cmocka_unit_test(test_idle_left),
		cmocka_unit_test(test_idle_clock_restarts_on_release),
	};
	return cmocka_run_group_tests_name("idle", tests, NULL, NULL);
}
