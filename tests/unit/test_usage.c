/* test_usage.c - usage_parse (the "usage" at the end of an OpenAI answer),
 * key_id and the counts (includes usage.c, as every unit test its object). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../src/usage.c"

static bool parse(const char *s, uint64_t *p, uint64_t *c)
{
	return usage_parse(s, strlen(s), p, c);
}

static void test_parse(void **state)
{
	uint64_t p = 99, c = 99;

	(void)state;
	assert_true(parse("{\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,"
			  "\"total_tokens\":10}}", &p, &c));
	assert_int_equal(p, 7);
	assert_int_equal(c, 3);
	/* a stream: every chunk "usage": null, the last one counts; [DONE] after it */
	assert_true(parse("data: {\"usage\":null}\n\ndata: {\"choices\":[],\"usage\": {\"prompt_tokens\":2,"
			  "\"completion_tokens\":5}}\n\ndata: [DONE]\n\n", &p, &c));
	assert_int_equal(p, 2);
	assert_int_equal(c, 5);
	/* /v1/responses and Anthropic: input/output tokens */
	assert_true(parse("{\"usage\":{\"input_tokens\":4,\"output_tokens\":6}}", &p, &c));
	assert_int_equal(p, 4);
	assert_int_equal(c, 6);
	/* a body cut at its start (the tail): the last usage still parses */
	assert_true(parse("ges\":[1,2]},\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":0}}", &p, &c));
	assert_int_equal(p, 1);
	/* "usage" inside a string is not the field; no counts, no usage */
	assert_false(parse("{\"content\":\"say \\\"usage\\\": {\\\"prompt_tokens\\\":5}\"}", &p, &c));
	assert_false(parse("{\"usage\":null}", &p, &c));
	assert_false(parse("{\"usage\":{\"prompt_tokens\":-1}}", &p, &c));
	assert_false(parse("{\"usage\":{\"prompt_tokens\":", &p, &c));
	assert_false(parse("", &p, &c));
	assert_false(parse("usage", &p, &c));
}

static void test_key_id_and_counts(void **state)
{
	struct api_key k = {.key = "abc"};
	char id[KEY_ID_MAX];
	json_t *o;

	(void)state;
	key_id(&k, id);
	/* keyed (this run's secret: no state_dir here), never the plain
	 * sha256("abc") = ba7816bf8f01... anyone could test keys against */
	assert_int_equal(strlen(id), 16);
	assert_memory_equal(id, "key:", 4);
	assert_string_not_equal(id, "sha256:ba7816bf8f01");
	assert_null(strstr(id, "ba7816bf8f01"));
	{
		char again[KEY_ID_MAX];
		key_id(&k, again);
		assert_string_equal(id, again);   /* stable */
	}
	key_id(NULL, id);
	assert_string_equal(id, "-");
	usage_request("svc", "key:ba7816bf8f01");
	usage_request("svc", "key:ba7816bf8f01");
	usage_tokens("svc", "key:ba7816bf8f01", 3, 4);
	usage_request("other", "-");
	assert_int_equal(usage_count(), 2);
	assert_int_equal(usage_at(0)->requests, 2);
	assert_int_equal(usage_at(0)->completion_tokens, 4);
	o = usage_json("svc");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "key:ba7816bf8f01"),
							    "prompt_tokens")), 3);
	json_decref(o);
	usage_free();
	assert_int_equal(usage_count(), 0);
}

/* Many services and keys (an admin's hundreds of users): each (service,
 * key) keeps one row and its own counts across the table's growth, rows stay
 * in the order first seen, and a key that is a prefix of another or a
 * service/key split differently are different rows. */
static void test_many_rows(void **state)
{
	char s[32], k[32];

	(void)state;
	for (int round = 1; round <= 3; round++)
		for (int i = 0; i < 50; i++)
			for (int j = 0; j < 40; j++) {
				snprintf(s, sizeof s, "svc%d", i);
				snprintf(k, sizeof k, "key%d", (j * 7 + round) % 40);
				usage_request(s, k);
				if (round == 3)
					usage_tokens(s, k, (uint64_t)i, (uint64_t)j);
			}
	assert_int_equal(usage_count(), 2000);
	for (size_t r = 0; r < usage_count(); r++)
		assert_int_equal(usage_at(r)->requests, 3);
	assert_string_equal(usage_at(0)->service, "svc0");
	assert_string_equal(usage_at(0)->key, "key1");
	assert_string_equal(usage_at(1999)->service, "svc49");
	usage_request("ab", "c");
	usage_request("a", "bc");
	usage_request("svc1", "key1x");
	assert_int_equal(usage_count(), 2003);
	usage_free();
	usage_request("svc0", "key1");
	assert_int_equal(usage_count(), 1);
	assert_int_equal(usage_at(0)->requests, 1);
	usage_free();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_key_id_and_counts),
		cmocka_unit_test(test_many_rows),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
