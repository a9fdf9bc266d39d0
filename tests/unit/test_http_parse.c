/* test_http_parse.c - the socket-free HTTP parser: framing, strictness,
 * and that a parsed head stays intact until its message is done. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../src/http_parse.c"

/* What the callbacks saw. */
struct seen {
	struct hparse hp;
	int heads, dones;
	char head[4096];          /* request line and headers as seen at done() */
	char body[4096];
	size_t blen;
	int status;
	bool pause_in_head, pause_in_body;
	const struct http_msg *m;
};

static void dump_msg(struct seen *s)
{
	const struct http_msg *m = s->m;
	size_t n = (size_t)snprintf(s->head, sizeof s->head, "%s %.*s|", m->method_str ? m->method_str : "",
				    (int)m->url_len, m->url);
	for (size_t k = 0; k < m->nhdrs && n < sizeof s->head; k++)
		n += (size_t)snprintf(s->head + n, sizeof s->head - n, "%.*s=%.*s|", (int)m->hdrs[k].nlen,
				      m->hdrs[k].name, (int)m->hdrs[k].vlen, m->hdrs[k].value);
}

static int t_head(void *arg, struct http_msg *m)
{
	struct seen *s = arg;

	s->heads++;
	s->m = m;
	s->status = m->status;
	if (s->pause_in_head)
		hparse_pause(&s->hp, true);
	return 0;
}

static void t_body(void *arg, const char *p, size_t n)
{
	struct seen *s = arg;

	assert_true(s->blen + n < sizeof s->body);
	memcpy(s->body + s->blen, p, n);
	s->blen += n;
	if (s->pause_in_body)
		hparse_pause(&s->hp, true);
}

static void t_done(void *arg)
{
	struct seen *s = arg;

	s->dones++;
	dump_msg(s);   /* read the head only now, as the /v1 front does */
}

static const struct hparse_ops t_ops = {.head = t_head, .body = t_body, .done = t_done};

/* Feed TEXT in pieces of STEP bytes (0: whole), resuming after pauses.
 * Returns the error status (0 if none). */
static int run(struct seen *s, bool server, const char *text, size_t step)
{
	size_t len = strlen(text), off = 0;

	hparse_init(&s->hp, server, &t_ops, s);
	hparse_limits(&s->hp, 2048, 1000);
	while (off < len) {
		size_t n = step ? (len - off < step ? len - off : step) : len - off;
		char *piece = malloc(n);   /* its own allocation: nothing may keep pointing into it */
		size_t used = 0;
		memcpy(piece, text + off, n);
		while (used < n && !hparse_error(&s->hp, NULL) && !hparse_upgraded(&s->hp)) {
			size_t k = hparse_feed(&s->hp, piece + used, n - used);
			used += k;
			if (hparse_paused(&s->hp))
				hparse_pause(&s->hp, false);
			else if (k == 0)
				break;
		}
		free(piece);
		off += n;
		if (hparse_error(&s->hp, NULL) || hparse_upgraded(&s->hp))
			break;
	}
	return hparse_error(&s->hp, NULL);
}

static void done_with(struct seen *s)
{
	hparse_free(&s->hp);
}

static const char chunked_trailer[] =
	"POST /v1/chat HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	"5;ext=\"x\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
	"Host: evil\r\n\r\n";

/* Finding 1: trailers never touch the head; any split gives the same result. */
static void test_chunked_trailer_every_split(void **state)
{
	(void)state;
	for (size_t step = 0; step < sizeof chunked_trailer; step++)
		for (int pause = 0; pause < 4; pause++) {
			struct seen s = {.pause_in_head = pause & 1, .pause_in_body = pause & 2};
			assert_int_equal(run(&s, true, chunked_trailer, step), 0);
			assert_int_equal(s.heads, 1);
			assert_int_equal(s.dones, 1);
			assert_int_equal(s.blen, 11);
			assert_memory_equal(s.body, "hello world", 11);
			assert_string_equal(s.head, "POST /v1/chat|Host=a|Transfer-Encoding=chunked|");
			done_with(&s);
		}
}

static void test_bad_framing_is_refused(void **state)
{
	static const struct {
		const char *req;
		int status;
	} cases[] = {
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551605\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", 413},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n", 413},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n bad: fold\r\n\r\n", 400},
		{"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
		{"GET / HTTP/0.9\r\n\r\n", 505},
		{"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 405},
		{"@GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET http:///a HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET http://u@h/a HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	};

	(void)state;
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
		for (size_t step = 0; step < 3; step++) {
			struct seen s = {0};
			int st = run(&s, true, cases[k].req, step);
			if (st != cases[k].status)
				fail_msg("case %zu (step %zu): status %d, want %d (%s)", k, step, st,
					 cases[k].status, s.hp.err_msg);
			assert_int_equal(s.dones, 0);
			done_with(&s);
		}
}

/* Finding 10: obs-fold, wherever the input is split, even after an empty value. */
static void test_obs_fold_every_split(void **state)
{
	static const char *const reqs[] = {
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX:\r\n b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\tchunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\t\r\n\r\n",
	};

	(void)state;
	for (size_t k = 0; k < sizeof reqs / sizeof reqs[0]; k++)
		for (size_t step = 0; step < strlen(reqs[k]); step++) {
			struct seen s = {0};
			if (run(&s, true, reqs[k], step) != 400)
				fail_msg("request %zu split every %zu bytes was taken", k, step);
			done_with(&s);
		}
	/* and an empty value followed by another field is fine */
	for (size_t step = 0; step < 40; step++) {
		struct seen s = {0};
		assert_int_equal(run(&s, true, "GET / HTTP/1.1\r\nHost: a\r\nX:\r\nY: 1\r\n\r\n", step), 0);
		assert_string_equal(s.head, "GET /|Host=a|X=|Y=1|");
		done_with(&s);
	}
}

/* Fuzz crash split-body-limit: past max_body (1000 here) a chunked body
 * gives its owner exactly the bytes up to the limit, then 413, whatever
 * the pieces (it used to depend on them). */
static void test_body_limit_same_for_every_split(void **state)
{
	char req[2048];
	int n = snprintf(req, sizeof req,
			 "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
			 "12c\r\n%0300d\r\n12c\r\n%0300d\r\n12c\r\n%0300d\r\n12c\r\n%0300d\r\n"
			 "0\r\n\r\n",
			 1, 2, 3, 4);

	(void)state;
	assert_true(n > 0 && (size_t)n < sizeof req);
	for (size_t step = 0; step < 700; step += 7) {
		struct seen s = {0};
		assert_int_equal(run(&s, true, req, step), 413);
		assert_int_equal(s.blen, 1000);
		done_with(&s);
	}
}

static void test_invalid_method_names_the_method(void **state)
{
	struct seen s = {0};
	const char *why;

	(void)state;
	assert_int_equal(run(&s, true, "@GET / HTTP/1.1\r\n\r\n", 0), 400);
	hparse_error(&s.hp, &why);
	assert_non_null(strstr(why, "method"));
	done_with(&s);
}

static void test_absolute_form_authority_is_host(void **state)
{
	struct seen s = {0};

	(void)state;
	assert_int_equal(run(&s, true, "GET http://auth:81/x?y HTTP/1.1\r\nHost: other\r\n\r\n", 0), 0);
	assert_string_equal(s.head, "GET /x?y|Host=auth:81|");
	done_with(&s);
	memset(&s, 0, sizeof s);
	assert_int_equal(run(&s, true, "GET HTTP://auth HTTP/1.1\r\n\r\n", 0), 0);
	assert_string_equal(s.head, "GET /|Host=auth|");
	done_with(&s);
}

/* finding 12 (Host): nginx answers an HTTP/1.1 request without Host 400 */
static void test_http11_without_host_is_400(void **state)
{
	struct seen s = {0};
	const char *why;

	(void)state;
	assert_int_equal(run(&s, true, "GET /x HTTP/1.1\r\nX: 1\r\n\r\n", 0), 400);
	hparse_error(&s.hp, &why);
	assert_non_null(strstr(why, "Host"));
	done_with(&s);
	memset(&s, 0, sizeof s);
	/* an underscore spelling is dropped, so it is no Host either */
	assert_int_equal(run(&s, true, "GET /x HTTP/1.1\r\nHo_st: a\r\n\r\n", 0), 400);
	done_with(&s);
	memset(&s, 0, sizeof s);
	assert_int_equal(run(&s, true, "GET /x HTTP/1.0\r\n\r\n", 0), 0);
	done_with(&s);
}

static void test_underscores_dropped_connection_cannot_name_host(void **state)
{
	struct seen s = {0};
	const struct http_hdr *h;

	(void)state;
	assert_int_equal(run(&s, true,
			     "GET / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\nConnection: host, x-a\r\n"
			     "X-A: 1\r\n\r\n",
			     0),
			 0);
	assert_string_equal(s.head, "GET /|Host=a|Connection=host, x-a|X-A=1|");
	h = http_find(s.m, "host");
	assert_non_null(h);
	assert_false(http_hop_by_hop(h, s.m));
	assert_true(http_hop_by_hop(http_find(s.m, "x-a"), s.m));
	done_with(&s);
}

/* Findings 6 and 14: interim responses have no body and are not reported;
 * statuses out of range are refused. */
static void test_responses(void **state)
{
	struct seen s = {0};

	(void)state;
	assert_int_equal(run(&s, false,
			     "HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\nHTTP/1.1 200 OK\r\n"
			     "Content-Length: 2\r\n\r\nok",
			     1),
			 0);
	assert_int_equal(s.heads, 1);
	assert_int_equal(s.status, 200);
	assert_int_equal(s.blen, 2);
	done_with(&s);

	memset(&s, 0, sizeof s);
	assert_int_equal(run(&s, false, "HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", 0), 502);
	done_with(&s);
	memset(&s, 0, sizeof s);
	assert_int_equal(run(&s, false, "HTTP/1.1 600 Big\r\nContent-Length: 0\r\n\r\n", 0), 502);
	done_with(&s);
	memset(&s, 0, sizeof s);
	assert_int_equal(run(&s, false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n", 0), 502);
	assert_int_equal(s.heads, 1);
	done_with(&s);
	memset(&s, 0, sizeof s);
	assert_int_equal(run(&s, false,
			     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nT: 1\r\n\r\n",
			     2),
			 0);
	assert_int_equal(s.dones, 1);
	assert_int_equal(s.blen, 2);
	done_with(&s);
}

/* The target of the request being parsed, for the shape of the layer's
 * own errors: readable before the head is whole, its start kept when it is
 * over the limit, none outside a request (a keep-alive connection's next
 * request never shows the one before it). */
static void test_target_of_the_request_being_parsed(void **state)
{
	struct seen s = {0};
	size_t n;
	const char *t;
	char big[3000];

	(void)state;
	assert_int_equal(run(&s, true, "POST /v1/chat/compl", 0), 0);
	t = hparse_target(&s.hp, &n);
	assert_non_null(t);
	assert_int_equal(n, 14);
	assert_memory_equal(t, "/v1/chat/compl", 14);
	done_with(&s);
	memset(&s, 0, sizeof s);
	assert_int_equal(run(&s, true, "GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n@", 0), 400);
	assert_null(hparse_target(&s.hp, &n));   /* the bad byte began no request */
	done_with(&s);
	/* over max_header (2048 here): its first bytes are kept */
	snprintf(big, sizeof big, "GET /v1/models?%0*d HTTP/1.1\r\n\r\n", 2500, 0);
	for (size_t step = 0; step <= 1000; step += 1000) {
		memset(&s, 0, sizeof s);
		assert_int_equal(run(&s, true, big, step), 431);
		t = hparse_target(&s.hp, &n);
		assert_non_null(t);
		assert_true(n >= 10 && n < 2048);
		assert_memory_equal(t, "/v1/models", 10);
		assert_non_null(strstr(s.hp.err_msg, "max_header_size (2048 bytes)"));
		done_with(&s);
	}
	memset(&s, 0, sizeof s);
	assert_int_equal(run(&s, false, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0), 0);
	assert_null(hparse_target(&s.hp, &n));   /* responses have none */
	done_with(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chunked_trailer_every_split),
		cmocka_unit_test(test_bad_framing_is_refused),
		cmocka_unit_test(test_obs_fold_every_split),
		cmocka_unit_test(test_body_limit_same_for_every_split),
		cmocka_unit_test(test_invalid_method_names_the_method),
		cmocka_unit_test(test_absolute_form_authority_is_host),
		cmocka_unit_test(test_http11_without_host_is_400),
		cmocka_unit_test(test_underscores_dropped_connection_cannot_name_host),
		cmocka_unit_test(test_responses),
		cmocka_unit_test(test_target_of_the_request_being_parsed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
