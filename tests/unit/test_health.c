/* test_health.c - what a probe's answer does to an instance, table-driven
 * (includes health.c for health_verdict). */
#include "../../src/health.c"

/* after the source: cmocka defines a fail() macro */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* state, probe ok, failures before, interval -> action, failures after, next probe in */
static const struct {
	const char *name;
	enum inst_state st;
	bool ok;
	int fails, interval;
	enum health_action want;
	int fails_after, next_s;
} cases[] = {
	{"first boot, passed: into rotation", INST_PROBING, true, 0, 10, HEALTH_READY, 0, -1},
	{"first boot, failed: probe again", INST_PROBING, false, 0, 10, HEALTH_PROBE_AGAIN, 0, -1},
	{"unhealthy, passed: back in rotation", INST_UNHEALTHY, true, 3, 10, HEALTH_READY, 3, -1},
	{"unhealthy, failed: probe again", INST_UNHEALTHY, false, 0, 10, HEALTH_PROBE_AGAIN, 0, -1},
	{"ready, passed: next after the interval", INST_READY, true, 0, 10, HEALTH_NEXT, 0, 10},
	{"ready, passed after a failure: count reset", INST_READY, true, 1, 10, HEALTH_NEXT, 0, 10},
	{"ready, one failure: again in 1 s", INST_READY, false, 0, 10, HEALTH_NEXT, 1, 1},
	{"ready, second failure in a row: out of rotation", INST_READY, false, 1, 10,
	 HEALTH_UNREACHABLE, 2, -1},
	{"draining, failures never take it out", INST_DRAINING, false, 5, 10, HEALTH_NEXT, 6, 1},
	{"draining, passed", INST_DRAINING, true, 5, 7, HEALTH_NEXT, 0, 7},
	{"starting: no probes", INST_STARTING, true, 0, 10, HEALTH_NOTHING, 0, -1},
	{"held: no probes", INST_HELD, false, 0, 10, HEALTH_NOTHING, 0, -1},
	{"stopping", INST_STOPPING, true, 0, 10, HEALTH_NOTHING, 0, -1},
};

static void test_probe_verdicts(void **state)
{
	(void)state;
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
		int fails = cases[k].fails, next = -1;
		enum health_action a = health_verdict(cases[k].st, cases[k].ok, &fails, cases[k].interval, &next);
		if (a != cases[k].want || fails != cases[k].fails_after || next != cases[k].next_s) {
			print_error("%s: action %d fails %d next %d; want %d %d %d\n", cases[k].name, a, fails,
				    next, cases[k].want, cases[k].fails_after, cases[k].next_s);
			fail();
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_probe_verdicts),
	};
	return cmocka_run_group_tests_name("health", tests, NULL, NULL);
}
