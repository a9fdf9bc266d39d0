/* fuzz_request.c - the server side of the HTTP layer: requests in one to
 * three pieces. The parsed head is kept until the message is done, as the
 * /v1 front does while it reads the body for the model lookup, and read
 * again then: the head must stay valid whatever the body and trailers do.
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
	if (flags & 1)
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
	if (flags & 2)
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
	held = NULL;
	if (!(flags & 4))
		hparse_pause(&hp, true);   /* pipelining: wait for the response */
}

static const struct hparse_ops ops = {
	.begin = on_begin,
	.head = on_head,
	.body = on_body,
	.done = on_done,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	flags = data[0];
	max_body = (flags & 8) ? 64 : 1 << 20;
	held = NULL;
	hparse_init(&hp, true, &ops, NULL);
	hparse_limits(&hp, (flags & 16) ? 256 : 8192, max_body);
	(void)feed_pieces(&hp, data + 3, size - 3, data[1], data[2]);
	if (held != NULL)
		touch_msg(held);   /* still valid while the body is incomplete */
	hparse_free(&hp);
	return 0;
}
