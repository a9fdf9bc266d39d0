/* fuzz_request.c - the server side of the HTTP layer: requests in one to
 * three pieces. The parsed head is kept until the message is done, as the
 * /v1 front does while it reads the body for the model lookup, and read
 * again then: the head must stay valid whatever the body and trailers do.
 * The same bytes fed whole, without pauses, must give the same messages
 * (heads, body bytes, ends) and fail or not alike (the error may differ
 * only where a size limit and a malformed byte compete).
 *
 * Input: flags, two cut points, then the bytes of the connection. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static struct hparse hp;
static const struct http_msg *held;
static uint8_t flags;
static long long body_bytes, max_body;
static uint64_t digest;
static bool pausing;

static void mix(const void *p, size_t n)
{
	for (size_t k = 0; k < n; k++)
		digest = (digest ^ ((const uint8_t *)p)[k]) * 1099511628211ULL;
}

static void mix_msg(const struct http_msg *m)
{
	mix("H", 1);
	mix(m->url, m->url_len);
	for (size_t k = 0; k < m->nhdrs; k++) {
		mix("\n", 1);
		mix(m->hdrs[k].name, m->hdrs[k].nlen);
		mix(":", 1);
		mix(m->hdrs[k].value, m->hdrs[k].vlen);
	}
	mix(&m->content_length, sizeof m->content_length);
	mix(&m->chunked, sizeof m->chunked);
}

static void on_begin(void *arg)
{
	(void)arg;
	if (held != NULL)
		abort();   /* a message began before the previous one was done */
	body_bytes = 0;
}

static int on_head(void *arg, struct http_msg *m)
{
	(void)arg;
	touch_msg(m);
	if (m->major != 1 || m->minor > 1)
		abort();
	if (m->chunked && m->content_length >= 0)
		abort();
	if (m->content_length > max_body)
		abort();
	if (m->url_len == 0)
		abort();
	held = m;   /* kept until done(), as front.c does for /v1 */
	mix_msg(m);
	if (pausing && (flags & 1))
		hparse_pause(&hp, true);
	return 0;
}

static void on_body(void *arg, const char *p, size_t n)
{
	(void)arg;
	touch(p, n);
	body_bytes += (long long)n;
	if (body_bytes > max_body || held == NULL)
		abort();
	mix(p, n);
	if (pausing && (flags & 2))
		hparse_pause(&hp, true);   /* backpressure */
}

static void on_done(void *arg)
{
	(void)arg;
	if (held == NULL)
		abort();
	if (held->content_length >= 0 && body_bytes != held->content_length)
		abort();
	touch_msg(held);   /* the deferred read: the head is still intact */
	mix("D", 1);
	held = NULL;
	if (pausing && !(flags & 4))
		hparse_pause(&hp, true);   /* pipelining: wait for the response */
}

static const struct hparse_ops ops = {
	.begin = on_begin,
	.head = on_head,
	.body = on_body,
	.done = on_done,
};

/* Parse the connection's bytes; returns the digest of what was seen and
 * the error status in *status. */
static uint64_t parse(const uint8_t *data, size_t size, bool split, int *status)
{
	int st;

	digest = 1469598103934665603ULL;
	held = NULL;
	pausing = split;
	hparse_init(&hp, true, &ops, NULL);
	hparse_limits(&hp, (flags & 16) ? 256 : 8192, max_body);
	if (split)
		(void)feed_pieces(&hp, data + 3, size - 3, data[1], data[2]);
	else
		(void)feed_pieces(&hp, data + 3, size - 3, 0, 0);
	if (held != NULL)
		touch_msg(held);   /* still valid while the body is incomplete */
	st = hparse_error(&hp, NULL);
	*status = st;
	mix("E", st != 0);   /* whether it failed; which error is checked below */
	hparse_free(&hp);
	return digest;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	flags = data[0];
	max_body = (flags & 8) ? 64 : 1 << 20;
	int st_split, st_whole;

	if (parse(data, size, true, &st_split) != parse(data, size, false, &st_whole))
		abort();   /* the split or the pauses changed what was parsed */
	/* A head that is both too large and malformed may be refused for
	 * either, depending on where the input was cut: http_parser reports a
	 * token to us when the token or the piece ends, so a size limit can be
	 * met before a bad byte further on, or after it. Any other difference
	 * in the error is a bug. */
	if (st_split != st_whole && st_split != 431 && st_whole != 431)
		abort();
	return 0;
}
