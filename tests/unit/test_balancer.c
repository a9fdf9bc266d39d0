/* test_balancer.c - least outstanding with a tried set, and the cold-burst
 * spread, table-driven with a fixed random source (includes balancer.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "../../src/balancer.c"

#define MAXT 6

/* The random source: a fixed sequence, so every tie is decided the same way. */
static const long *rnd_seq;
static size_t rnd_len, rnd_at;

static long rnd_fixed(void)
{
	long v = rnd_seq[rnd_at % rnd_len];
	rnd_at++;
	return v;
}

static void rnd_use(const long *seq, size_t n)
{
	rnd_seq = seq;
	rnd_len = n;
	rnd_at = 0;
}

static const long ZERO[] = {0}, ONE[] = {1};

/* loads (-1: not eligible), tried, random source -> the index picked */
static const struct {
	const char *name;
	int n;
	int load[MAXT];
	bool tried[MAXT];
	bool use_tried;
	const long *rnd;
	int want;
} pick_cases[] = {
	{"least outstanding", 3, {3, 1, 2}, {0}, false, ZERO, 1},
	{"least outstanding, last", 4, {3, 2, 2, 0}, {0}, false, ZERO, 3},
	{"not ready is never picked", 3, {-1, 2, 1}, {0}, false, ZERO, 2},
	{"only a loaded one ready", 3, {-1, 7, -1}, {0}, false, ZERO, 1},
	{"none ready", 2, {-1, -1}, {0}, false, ZERO, -1},
	{"no instance", 0, {0}, {0}, false, ZERO, -1},
	{"the tried one is skipped though least loaded", 3, {1, 0, 2}, {0, 1, 0}, true, ZERO, 0},
	{"tried set of several", 4, {0, 0, 1, 5}, {1, 1, 0, 0}, true, ZERO, 2},
	{"all tried: none (the caller may then take any)", 2, {0, 1}, {1, 1}, true, ZERO, -1},
	{"tried and not ready", 3, {-1, 0, 4}, {0, 1, 0}, true, ZERO, 2},
	{"empty tried set: as without", 3, {2, 0, 1}, {0, 0, 0}, true, ZERO, 1},
	/* reservoir sampling: a tie is taken when rnd() % ties == 0 */
	{"ties, rnd 0: the last of the tie", 3, {1, 1, 1}, {0}, false, ZERO, 2},
	{"ties, rnd 1: the first of the tie", 3, {1, 1, 1}, {0}, false, ONE, 0},
	{"ties only among the least loaded", 4, {1, 0, 3, 0}, {0}, false, ZERO, 3},
	{"ties skip the tried", 3, {1, 1, 1}, {0, 0, 1}, true, ZERO, 1},
};

static void test_least_outstanding_with_tried_set(void **state)
{
	(void)state;
	for (size_t k = 0; k < sizeof pick_cases / sizeof pick_cases[0]; k++) {
		struct bal_target t[MAXT];
		int got;

		for (int j = 0; j < pick_cases[k].n; j++)
			t[j] = (struct bal_target){pick_cases[k].load[j] < 0 ? 0 : pick_cases[k].load[j],
						   pick_cases[k].load[j] >= 0};
		rnd_use(pick_cases[k].rnd, 1);
		got = balancer_pick(t, (size_t)pick_cases[k].n,
				    pick_cases[k].use_tried ? pick_cases[k].tried : NULL, rnd_fixed);
		if (got != pick_cases[k].want) {
			print_error("%s: picked %d, want %d\n", pick_cases[k].name, got, pick_cases[k].want);
			fail();
		}
	}
}

/* Equal instances share the load: over many picks among ties each gets
 * its share (the sequence 0,1,2,... makes every choice reachable). */
static void test_ties_share_the_load(void **state)
{
	static const long seq[] = {0, 1, 2, 3, 4, 5, 6};
	struct bal_target t[3] = {{0, true}, {0, true}, {0, true}};
	int count[3] = {0, 0, 0};

	(void)state;
	rnd_use(seq, 7);
	for (int k = 0; k < 300; k++)
		count[balancer_pick(t, 3, NULL, rnd_fixed)]++;
	for (int j = 0; j < 3; j++)
		assert_true(count[j] >= 50);
}

/* Hand WAITING requests out the way the service does (dispatch_waiters):
 * in order, each to the least loaded, none beyond the limit. Returns how
 * many are left waiting. */
static int dispatch(struct bal_target *t, size_t n, int waiting, bool others_booting, int target)
{
	int limit = balancer_limit(others_booting, target), k;

	while (waiting > 0 && (k = balancer_pick(t, n, NULL, rnd_fixed)) >= 0 && t[k].load < limit) {
		t[k].load++;
		waiting--;
	}
	return waiting;
}

static void test_cold_burst_spread(void **state)
{
	/* 10 requests wait; 3 instances boot; target_concurrency 3 */
	struct bal_target t[3] = {{0, false}, {0, false}, {0, false}};
	int waiting = 10;

	(void)state;
	rnd_use(ZERO, 1);
	assert_int_equal(balancer_limit(true, 3), 3);
	assert_int_equal(balancer_limit(false, 3), INT_MAX);
	/* the first one ready takes its share only, while the others boot */
	t[0].eligible = true;
	waiting = dispatch(t, 3, waiting, true, 3);
	assert_int_equal(t[0].load, 3);
	assert_int_equal(waiting, 7);
	/* the second: its share too (the first is full) */
	t[1].eligible = true;
	waiting = dispatch(t, 3, waiting, true, 3);
	assert_int_equal(t[0].load, 3);
	assert_int_equal(t[1].load, 3);
	assert_int_equal(waiting, 4);
	/* the last one ready: nothing boots any more, no limit; least loaded first */
	t[2].eligible = true;
	waiting = dispatch(t, 3, waiting, false, 3);
	assert_int_equal(waiting, 0);
	assert_int_equal(t[2].load, 4);
	assert_int_equal(t[0].load + t[1].load + t[2].load, 10);
}

static void test_no_spread_limit_when_nothing_else_boots(void **state)
{
	/* one instance (max_instances 1): a cold burst all goes to it */
	struct bal_target t[1] = {{0, true}};

	(void)state;
	rnd_use(ZERO, 1);
	assert_int_equal(dispatch(t, 1, 25, false, 4), 0);
	assert_int_equal(t[0].load, 25);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_least_outstanding_with_tried_set),
		cmocka_unit_test(test_ties_share_the_load),
		cmocka_unit_test(test_cold_burst_spread),
		cmocka_unit_test(test_no_spread_limit_when_nothing_else_boots),
	};
	return cmocka_run_group_tests_name("balancer", tests, NULL, NULL);
}
