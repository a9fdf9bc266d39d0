/* test_router.c - the route resolver, api_paths, hosts and proxies, table-driven
 * (includes router.c for its statics). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../src/router.c"

/* target -> forwarded path (NULL: refused, then ERR is part of the reason) */
static const struct {
	const char *target, *path, *query, *err;
} resolve_cases[] = {
	{"/", "/", NULL, NULL},
	{"/llm/echo", "/llm/echo", NULL, NULL},
	{"/llm/echo/a%20b/c?x=%2F&z", "/llm/echo/a%20b/c", "?x=%2F&z", NULL},
	{"/llm/echo//double//slash", "/llm/echo//double//slash", NULL, NULL},
	{"/a/b/../c", "/a/c", NULL, NULL},
	{"/a/b/..", "/a/", NULL, NULL},
	{"/a/./b/.", "/a/b/", NULL, NULL},
	{"/a/%2e%2E/b", "/b", NULL, NULL},
	{"/a/%7e%41%25", "/a/~A%25", NULL, NULL},
	{"/a/%3f%23", "/a/%3F%23", NULL, NULL},
	{"/a/%e2%82%ac", "/a/%E2%82%AC", NULL, NULL},
	{"/a/..?q=/../", "/", "?q=/../", NULL},
	{"/a#frag?x", "/a", NULL, NULL},
	/* absolute-form is the parser's (http_parse.c): it never reaches here */
	{"http://h/raw/a?b", NULL, NULL, "starting with '/'"},
	{"HTTPS://h", NULL, NULL, "starting with '/'"},
	{"http:///raw/a", NULL, NULL, "starting with '/'"},
	{"*", NULL, NULL, "starting with '/'"},
	{"", NULL, NULL, "starting with '/'"},
	{"/..", NULL, NULL, "above the root"},
	{"/a/../..", NULL, NULL, "above the root"},
	{"/a/..%2fb", NULL, NULL, "%2F"},
	{"/a%2F", NULL, NULL, "%2F"},
	{"/a/..%5cb", NULL, NULL, "%5C"},
	{"/a/..\\b", NULL, NULL, "'\\'"},
	{"/a/%00", NULL, NULL, "NUL"},
	{"/a/%", NULL, NULL, "percent"},
	{"/a/%4", NULL, NULL, "percent"},
	{"/a/%g0", NULL, NULL, "percent"},
	{"/a/..;/b", NULL, NULL, "..;"},
	{"/a/.;x/b", NULL, NULL, "..;"},
	{"/a/%2e%2e%3b/b", NULL, NULL, "..;"},
	{"/a/%c0%ae", NULL, NULL, "overlong"},
	{"/a/%c1%81", NULL, NULL, "overlong"},
	{"/a/%e0%80%ae", NULL, NULL, "overlong"},
	{"/a/%f0%80%80%ae", NULL, NULL, "overlong"},
	{"/a/%f5%80", NULL, NULL, "overlong"},
	{"/a\x01", NULL, NULL, "control"},
};

static void test_resolve(void **state)
{
	(void)state;
	for (size_t k = 0; k < sizeof resolve_cases / sizeof *resolve_cases; k++) {
		struct route_target rt;
		const char *cause = NULL, *t = resolve_cases[k].target;
		int r = router_resolve(t, strlen(t), &rt, &cause);
		if (resolve_cases[k].path == NULL) {
			if (r == 0 || strstr(cause, resolve_cases[k].err) == NULL)
				fail_msg("%s: expected a refusal with \"%s\", got %s", t, resolve_cases[k].err,
					 r == 0 ? rt.path : cause);
			continue;
		}
		if (r != 0)
			fail_msg("%s: refused: %s", t, cause);
		assert_string_equal(rt.path, resolve_cases[k].path);
		if (resolve_cases[k].query == NULL)
			assert_null(rt.query);
		else {
			assert_int_equal(rt.qlen, strlen(resolve_cases[k].query));
			assert_memory_equal(rt.query, resolve_cases[k].query, rt.qlen);
		}
		router_target_free(&rt);
	}
}

static void test_split(void **state)
{
	struct route_target rt;
	const char *cause, *seg, *rest, *drest;
	size_t seglen, restlen, drestlen;

	(void)state;
	assert_int_equal(router_resolve("/llm/a%20b/c", 12, &rt, &cause), 0);
	router_split(&rt, &seg, &seglen, &rest, &restlen, &drest, &drestlen);
	assert_int_equal(seglen, 3);
	assert_memory_equal(seg, "llm", 3);
	assert_int_equal(restlen, 8);
	assert_memory_equal(rest, "/a%20b/c", 8);
	assert_int_equal(drestlen, 6);
	assert_memory_equal(drest, "/a b/c", 6);
	router_target_free(&rt);
	assert_int_equal(router_resolve("/llm", 4, &rt, &cause), 0);
	router_split(&rt, &seg, &seglen, &rest, &restlen, &drest, &drestlen);
	assert_int_equal(seglen, 3);
	assert_int_equal(restlen, 0);
	assert_int_equal(drestlen, 0);
	router_target_free(&rt);
}

static void test_api_paths(void **state)
{
	char *ap[] = {"/allowed", "/dir/", NULL};
	char *root[] = {"/", NULL};

	(void)state;
	assert_true(router_path_allowed("/allowed", 8, ap));
	assert_true(router_path_allowed("/allowed/", 9, ap));
	assert_true(router_path_allowed("/allowed/x", 10, ap));
	assert_false(router_path_allowed("/allowedsecret", 14, ap));
	assert_false(router_path_allowed("/allowe", 7, ap));
	assert_true(router_path_allowed("/dir/x", 6, ap));
	assert_false(router_path_allowed("/dir", 4, ap));
	assert_false(router_path_allowed("/", 1, ap));
	assert_true(router_path_allowed("/anything", 9, root));
	assert_true(router_path_allowed("/x", 2, NULL));
}

static void test_hosts(void **state)
{
	char *al[] = {"gw.example", "h.example:8443", "[::1]", NULL};

	(void)state;
	assert_true(router_host_allowed("gw.example", 10, al));
	assert_true(router_host_allowed("GW.Example:80", 13, al));
	assert_true(router_host_allowed("gw.example.", 11, al));
	assert_true(router_host_allowed("h.example:8443", 14, al));
	assert_false(router_host_allowed("h.example:8444", 14, al));
	assert_false(router_host_allowed("h.example", 9, al));
	assert_true(router_host_allowed("[::1]:8090", 10, al));
	assert_false(router_host_allowed("evil.example", 12, al));
	assert_false(router_host_allowed("gw.example.evil", 15, al));
	assert_false(router_host_allowed("", 0, al));
	assert_true(router_host_allowed("anything", 8, NULL));
}

static void test_cidr(void **state)
{
	struct cidr v[3];
	const char *cause;
	struct sockaddr_in a = {.sin_family = AF_INET};
	struct sockaddr_in6 b = {.sin6_family = AF_INET6};

	(void)state;
	assert_int_equal(router_cidr_parse("10.0.0.0/8", &v[0], &cause), 0);
	assert_int_equal(router_cidr_parse("fd00::/8", &v[1], &cause), 0);
	assert_int_equal(router_cidr_parse("192.168.1.7", &v[2], &cause), 0);
	assert_int_equal(router_cidr_parse("10.0.0.0/33", &v[0], &cause), -1);
	assert_int_equal(router_cidr_parse("10.0.0.0/", &v[0], &cause), -1);
	assert_int_equal(router_cidr_parse("nope", &v[0], &cause), -1);
	assert_int_equal(router_cidr_parse("10.0.0.0/8", &v[0], &cause), 0);
	inet_pton(AF_INET, "10.200.3.4", &a.sin_addr);
	assert_true(router_cidr_match(v, 3, (struct sockaddr *)&a));
	inet_pton(AF_INET, "11.0.0.1", &a.sin_addr);
	assert_false(router_cidr_match(v, 3, (struct sockaddr *)&a));
	inet_pton(AF_INET, "192.168.1.7", &a.sin_addr);
	assert_true(router_cidr_match(v, 3, (struct sockaddr *)&a));
	inet_pton(AF_INET, "192.168.1.8", &a.sin_addr);
	assert_false(router_cidr_match(v, 3, (struct sockaddr *)&a));
	inet_pton(AF_INET6, "::ffff:10.1.1.1", &b.sin6_addr);
	assert_true(router_cidr_match(v, 3, (struct sockaddr *)&b));
	inet_pton(AF_INET6, "fd12::1", &b.sin6_addr);
	assert_true(router_cidr_match(v, 3, (struct sockaddr *)&b));
	inet_pton(AF_INET6, "fe80::1", &b.sin6_addr);
	assert_false(router_cidr_match(v, 3, (struct sockaddr *)&b));
}

static void test_authority_and_model(void **state)
{
	const char *a;
	size_t n;
	char *model;
	bool stream;

	(void)state;
	assert_true(router_authority("https://gw.example:8443/x", 25, &a, &n));
	assert_int_equal(n, 15);
	assert_memory_equal(a, "gw.example:8443", n);
	assert_false(router_authority("null", 4, &a, &n));
	assert_false(router_authority("http:///x", 9, &a, &n));
	assert_int_equal(router_v1_model("{\"model\":\"m\",\"stream\":true}", 27, &model, &stream), V1_OK);
	assert_string_equal(model, "m");
	assert_true(stream);
	free(model);
	assert_int_equal(router_v1_model("", 0, &model, &stream), V1_NO_BODY);
	assert_int_equal(router_v1_model("[1]", 3, &model, &stream), V1_NOT_OBJECT);
	assert_int_equal(router_v1_model("{\"model\":1}", 11, &model, &stream), V1_NO_MODEL);
	assert_int_equal(router_v1_model("{\"model\":\"a\",\"model\":\"b\"}", 25, &model, &stream),
			 V1_NOT_OBJECT);
}

/* What Python services take is routed: a NUL in a prompt, an integer past
 * 64 bits; a model name with a NUL is no model (never its prefix's). */
static void test_v1_model_python_json(void **state)
{
	static const char nul[] = "{\"model\":\"m\",\"p\":\"a\\u0000b\"}";
	static const char big[] = "{\"seed\":18446744073709551615,\"model\":\"m\"}";
	static const char nulmodel[] = "{\"model\":\"m\\u0000x\"}";
	char *model;
	bool stream;

	(void)state;
	assert_int_equal(router_v1_model(nul, sizeof nul - 1, &model, &stream), V1_OK);
	assert_string_equal(model, "m");
	free(model);
	assert_int_equal(router_v1_model(big, sizeof big - 1, &model, &stream), V1_OK);
	assert_string_equal(model, "m");
	free(model);
	assert_int_equal(router_v1_model(nulmodel, sizeof nulmodel - 1, &model, &stream),
			 V1_NO_MODEL);
	assert_null(model);
}

/* The top-level scan (bodies past 1 MiB) agrees with the whole parse on
 * what it reads, and refuses what it cannot trust. */
static void test_v1_scan(void **state)
{
	static const struct { const char *body; enum v1_result r; const char *model; bool stream; } cases[] = {
		{"{\"model\":\"m\",\"stream\":true}", V1_OK, "m", true},
		{" {\"messages\":[{\"content\":\"a \\\"model\\\": x\",\"model\":\"inner\"}],"
		 "\"stream\" : false , \"model\" : \"late\" }\n", V1_OK, "late", false},
		{"{\"p\":\"\\\\\",\"model\":\"after-a-backslash\"}", V1_OK, "after-a-backslash", false},
		{"{\"mod\\u0065l\":\"esc\",\"stream\":true}", V1_OK, "esc", true},
		{"{\"model\":\"\\u00e9t\\u00e9\"}", V1_OK, "\xc3\xa9t\xc3\xa9", false},
		{"{\"model\":\"a\",\"model\":\"b\"}", V1_NOT_OBJECT, NULL, false},
		{"{\"model\":\"a\",\"mod\\u0065l\":\"b\"}", V1_NOT_OBJECT, NULL, false},
		{"{\"stream\":true,\"stream\":false,\"model\":\"a\"}", V1_NOT_OBJECT, NULL, false},
		{"{\"model\":\"a\"", V1_NOT_OBJECT, NULL, false},
		{"{\"model\":\"a\"}x", V1_NOT_OBJECT, NULL, false},
		{"{\"model\":\"a", V1_NOT_OBJECT, NULL, false},
		{"[{\"model\":\"a\"}]", V1_NOT_OBJECT, NULL, false},
		{"{\"model\":1,\"stream\":true}", V1_NO_MODEL, NULL, false},
		{"{\"x\":{\"model\":\"deep\"}}", V1_NO_MODEL, NULL, false},
		{"{\"model\":\"m\\u0000x\"}", V1_NO_MODEL, NULL, false},
		{"{}", V1_NO_MODEL, NULL, false},
	};
	char *model, *m2;
	bool stream, s2;

	(void)state;
	for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
		const char *b = cases[k].body;
		enum v1_result r = router_v1_scan(b, strlen(b), &model, &stream);
		if (r != cases[k].r)
			fail_msg("case %zu (%s): %d, not %d", k, b, (int)r, (int)cases[k].r);
		assert_int_equal(stream, cases[k].stream);
		if (cases[k].model)
			assert_string_equal(model, cases[k].model);
		else
			assert_null(model);
		/* a body the whole parse takes reads the same */
		if (router_v1_model(b, strlen(b), &m2, &s2) == V1_OK) {
			assert_int_equal(r, V1_OK);
			assert_string_equal(model, m2);
			assert_int_equal(stream, s2);
		}
		free(model);
		free(m2);
	}
}

/* Feed BODY to a scan for content type CT, STEP bytes at a time. */
static enum form_result form(const char *ct, const char *body, size_t step, char **model)
{
	struct form_scan *s = malloc(sizeof *s);
	size_t n = strlen(body);
	enum form_result r = FORM_MORE;

	*model = NULL;
	assert_int_equal(router_form_start(s, ct, strlen(ct)), 0);
	for (size_t k = 0; k < n && r == FORM_MORE; k += step)
		r = router_form_feed(s, body + k, n - k < step ? n - k : step, model);
	free(s);
	return r;
}

static void test_form_model(void **state)
{
	struct form_scan s;
	const char *ct = "multipart/form-data; boundary=XyZ";
	const char *file_first =
		"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"model\"\r\n"
		"Content-Type: audio/wav\r\n\r\nRIFF\r\n--Xy\r\r\n--XyQ-data\r\n"
		"--XyZ\r\ncontent-disposition: form-data; name=model\r\n\r\nwhisper-1\r\n--XyZ--\r\n";
	char *model;

	(void)state;
	for (size_t step = 1; step <= 7; step++) {
		assert_int_equal(form(ct, file_first, step, &model), FORM_OK);
		assert_string_equal(model, "whisper-1");
		free(model);
	}
	assert_int_equal(form("Multipart/Form-Data; boundary=\"a b\"",
			      "preamble\r\n--a b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
			      "org/M\r\n--a b--", 3, &model), FORM_OK);
	assert_string_equal(model, "org/M");
	free(model);
	assert_int_equal(form(ct, "--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--XyZ--",
			      4, &model), FORM_NO_MODEL);
	assert_int_equal(form(ct, "--XyZ\r\nno empty line after the headers", 5, &model), FORM_MORE);
	assert_int_equal(form(ct, "--XyZ junk", 1, &model), FORM_BAD);
	assert_int_equal(router_form_start(&s, "application/json", 16), -1);
	assert_int_equal(router_form_start(&s, "multipart/form-data", 19), -1);
	assert_int_equal(router_form_start(&s, "multipart/form-datax; boundary=a", 32), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_resolve),
		cmocka_unit_test(test_split),
		cmocka_unit_test(test_api_paths),
		cmocka_unit_test(test_hosts),
		cmocka_unit_test(test_cidr),
		cmocka_unit_test(test_authority_and_model),
		cmocka_unit_test(test_v1_model_python_json),
		cmocka_unit_test(test_v1_scan),
		cmocka_unit_test(test_form_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
