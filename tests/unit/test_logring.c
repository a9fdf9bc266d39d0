/* test_logring.c - the bounded ring of a service's output lines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../src/logring.c"

/* What logring_read appends, as a string (malloc'd). */
static char *read_all(const struct logring *r, uint64_t *from, size_t max, size_t *n)
{
	struct evbuffer *b = evbuffer_new();
	size_t len;
	char *s;

	*n = logring_read(r, from, max, b);
	len = evbuffer_get_length(b);
	s = malloc(len + 1);
	evbuffer_remove(b, s, len);
	s[len] = '\0';
	evbuffer_free(b);
	return s;
}

static void test_tail_and_follow(void **state)
{
	struct logring *r = logring_new();
	uint64_t from = 0;
	size_t n;
	char *s;

	(void)state;
	s = read_all(r, &from, 10, &n);
	assert_int_equal(n, 0);
	assert_string_equal(s, "");
	assert_int_equal(from, 0);
	free(s);
	logring_add(r, "one", 3);
	logring_add(r, "", 0);
	logring_addf(r, "[%d] three", 0);
	s = read_all(r, &from, 2, &n);   /* the newest two */
	assert_int_equal(n, 2);
	assert_string_equal(s, "\n[0] three\n");
	assert_int_equal(from, 3);
	free(s);
	s = read_all(r, &from, 10, &n);  /* nothing new */
	assert_int_equal(n, 0);
	free(s);
	logring_add(r, "four", 4);
	s = read_all(r, &from, 10, &n);  /* only what came */
	assert_string_equal(s, "four\n");
	assert_int_equal(from, 4);
	free(s);
	logring_free(r);
}

static void test_bounded_in_lines_and_bytes(void **state)
{
	struct logring *r = logring_new();
	uint64_t from = 0;
	size_t n;
	char *s, big[5000];

	(void)state;
	for (int k = 0; k < LOGRING_LINES + 500; k++)
		logring_addf(r, "line %d", k);
	s = read_all(r, &from, SIZE_MAX, &n);
	assert_int_equal(n, LOGRING_LINES);
	assert_true(strncmp(s, "line 500\n", 9) == 0);   /* the oldest went */
	assert_int_equal(from, LOGRING_LINES + 500);
	free(s);
	/* a follower that fell behind starts at the oldest line kept */
	from = 3;
	s = read_all(r, &from, SIZE_MAX, &n);
	assert_int_equal(n, LOGRING_LINES);
	free(s);
	/* bytes: long lines are cut at 4 KiB, and at most LOGRING_BYTES are kept */
	memset(big, 'x', sizeof big);
	for (int k = 0; k < 200; k++)
		logring_add(r, big, sizeof big);
	assert_true(r->bytes <= LOGRING_BYTES);
	from = 0;
	s = read_all(r, &from, 1, &n);
	assert_int_equal(strlen(s), LINE_MAX_BYTES + 1);
	free(s);
	logring_free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tail_and_follow),
		cmocka_unit_test(test_bounded_in_lines_and_bytes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
