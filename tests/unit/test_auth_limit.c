/* test_auth_limit.c - the table of failed authentications per address
 * (includes auth_limit.c, as every unit test its object). Without a config
 * the limit is 10 failures per 60 s. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../src/auth_limit.c"
#include "launcher.h"

static void addr_of(const char *text, uint8_t key[16])
{
	struct sockaddr_storage sa;

	assert_true(parse_addr(text, strlen(text), &sa, key));
}

static int reset(void **state)
{
	(void)state;
	auth_limit_reset();
	return 0;
}

static void test_limit_then_window(void **state)
{
	uint8_t a[16], b[16];

	(void)state;
	addr_of("192.0.2.1", a);
	addr_of("192.0.2.2", b);
	for (int k = 0; k < 9; k++) {
		auth_limit_fail_addr(a, "192.0.2.1", 100 + k);
		assert_int_equal(auth_limit_wait_addr(a, 100 + k), 0);
	}
	auth_limit_fail_addr(a, "192.0.2.1", 109);
	/* refused until the window that began at the first failure ends */
	assert_int_equal(auth_limit_wait_addr(a, 109), 51);
	assert_int_equal(auth_limit_wait_addr(a, 159.5), 1);
	assert_int_equal(auth_limit_wait_addr(b, 110), 0);   /* another address */
	assert_int_equal(auth_limit_wait_addr(a, 160), 0);
	/* a new window counts from zero */
	auth_limit_fail_addr(a, "192.0.2.1", 161);
	assert_int_equal(auth_limit_wait_addr(a, 161), 0);
	assert_int_equal(failures, 11);
}

static void test_addresses(void **state)
{
	uint8_t a[16], b[16];
	struct sockaddr_storage sa;

	(void)state;
	/* one IPv6 /64 is one client; the next /64 another */
	addr_of("2001:db8:1:2::1", a);
	addr_of("2001:db8:1:2:ffff::9", b);
	assert_memory_equal(a, b, 16);
	addr_of("2001:db8:1:3::1", b);
	assert_memory_not_equal(a, b, 16);
	/* IPv4, v4-mapped, with a port or brackets: the same client */
	addr_of("198.51.100.7", a);
	addr_of("::ffff:198.51.100.7", b);
	assert_memory_equal(a, b, 16);
	addr_of(" 198.51.100.7:4431 ", b);
	assert_memory_equal(a, b, 16);
	addr_of("[2001:db8::1]:443", a);
	addr_of("2001:db8::1", b);
	assert_memory_equal(a, b, 16);
	assert_false(parse_addr("unknown", 7, &sa, a));
	assert_false(parse_addr("", 0, &sa, a));
	assert_false(parse_addr("[::1", 4, &sa, a));
}

/* Many addresses that fail once each (an attacker's many sources) neither
 * grow the table nor push out an address that is refused. */
static void test_bounded_and_refusals_kept(void **state)
{
	uint8_t a[16], x[16];
	size_t used = 0;

	(void)state;
	addr_of("203.0.113.5", a);
	for (int k = 0; k < 10; k++)
		auth_limit_fail_addr(a, "203.0.113.5", 1000);
	assert_true(auth_limit_wait_addr(a, 1000) > 0);
	for (uint32_t k = 0; k < 100000; k++) {
		memset(x, 0, sizeof x);
		x[0] = 0x20;
		memcpy(x + 4, &k, 4);
		auth_limit_fail_addr(x, "v6", 1001);
	}
	assert_true(auth_limit_wait_addr(a, 1001) > 0);
	for (size_t k = 0; k < AUTH_LIMIT_SLOTS; k++)
		used += table[k].used;
	assert_int_equal(used, AUTH_LIMIT_SLOTS);
	assert_int_equal(sizeof table, AUTH_LIMIT_SLOTS * sizeof(struct slot));
}

/* Not the table, but its neighbour in "what a stranger gets": the output a
 * failed start's reason quotes is cut, whatever wraps the reason. */
static void test_redact_output(void **state)
{
	char *r;

	(void)state;
	r = access_redact_output("start failed: Slurm job 12 ended: FAILED (NonZeroExitCode)"
				 LAUNCH_OUTPUT_MARK "HF_TOKEN=hf_x | done", "llm");
	assert_string_equal(r, "start failed: Slurm job 12 ended: FAILED (NonZeroExitCode); its output: "
			       "see /api/services/llm/logs (needs the admin token)");
	free(r);
	r = access_redact_output("unhealthy for 9 s: gone: process exited with status 1" LAUNCH_OUTPUT_MARK
				 "secret) and more", NULL);
	assert_null(strstr(r, "secret"));
	free(r);
	assert_null(access_redact_output("Slurm job 12 pending (Resources)", "llm"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_limit_then_window, reset),
		cmocka_unit_test_setup(test_addresses, reset),
		cmocka_unit_test_setup(test_bounded_and_refusals_kept, reset),
		cmocka_unit_test(test_redact_output),
	};
	return cmocka_run_group_tests_name("auth_limit", tests, NULL, NULL);
}
