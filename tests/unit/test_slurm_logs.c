/* test_slurm_logs.c - which lines of a fetched tail of a Slurm job's output
 * are new (includes slurm_logs.c). */
#include "../../src/slurm_logs.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_split_keeps_a_partial_last_line_back(void **state)
{
	char text[] = "one\r\ntwo\n\nthree-partial", **v;
	size_t n = split_lines(text, &v);

	(void)state;
	assert_int_equal(n, 3);
	assert_string_equal(v[0], "one");
	assert_string_equal(v[1], "two");
	assert_string_equal(v[2], "");
	free(v);
	assert_int_equal(split_lines((char[]){""}, &v), 0);
	free(v);
}

static void test_overlap_finds_where_the_new_lines_start(void **state)
{
	char *prev[] = {"a", "b", "c"}, *grown[] = {"b", "c", "d", "e"}, *same[] = {"a", "b", "c"},
	     *moved[] = {"x", "y"}, *rep[] = {"t", "t"}, *rep2[] = {"t", "t", "u"};

	(void)state;
	assert_int_equal(overlap(prev, 3, grown, 4), 2);   /* d, e are new */
	assert_int_equal(overlap(prev, 3, same, 3), 3);    /* nothing new */
	assert_int_equal(overlap(prev, 3, moved, 2), 0);   /* all new (a gap) */
	assert_int_equal(overlap(NULL, 0, grown, 4), 0);   /* the first fetch */
	assert_int_equal(overlap(prev, 3, NULL, 0), 0);
	assert_int_equal(overlap(rep, 2, rep2, 3), 2);     /* repeated lines: u is new */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_split_keeps_a_partial_last_line_back),
		cmocka_unit_test(test_overlap_finds_where_the_new_lines_start),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
