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
	/* sha256("abc") = ba7816bf8f01... */
	assert_string_equal(id, "sha256:ba7816bf8f01");
	key_id(NULL, id);
	assert_string_equal(id, "-");
	usage_request("svc", "sha256:ba7816bf8f01");
	usage_request("svc", "sha256:ba7816bf8f01");
	usage_tokens("svc", "sha256:ba7816bf8f01", 3, 4);
	usage_request("other", "-");
	assert_int_equal(usage_count(), 2);
	assert_int_equal(usage_at(0)->requests, 2);
	assert_int_equal(usage_at(0)->completion_tokens, 4);
	o = usage_json("svc");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "sha256:ba7816bf8f01"),
							    "prompt_tokens")), 3);
	json_decref(o);
	usage_free();
	assert_int_equal(usage_count(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_key_id_and_counts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
