/* fuzz_response.c - the client side of the HTTP layer: a service's
 * responses in one to three pieces, then the close.
 *
 * Input: flags (bit 0: the request was HEAD), two cut points, then the
 * bytes the service sent. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static struct hparse hp;
static const struct http_msg *held;
static uint8_t flags;
static long long body_bytes;

static void on_begin(void *arg)
{
	(void)arg;
	held = NULL;
	body_bytes = 0;
}

static int on_head(void *arg, struct http_msg *m)
{
	(void)arg;
	touch_msg(m);
	/* one final response: interim ones never reach the owner */
	if (m->status < 100 || m->status > 599 || (m->status < 200 && m->status != 101))
		abort();
	if (m->major != 1)
		abort();
	held = m;
	if (flags & 2)
		hparse_pause(&hp, true);
	return flags & 1;
}

static void on_body(void *arg, const char *p, size_t n)
{
	(void)arg;
	touch(p, n);
	if (held == NULL || (flags & 1) || held->status == 204 || held->status == 304)
		abort();   /* a body where none may be */
	body_bytes += (long long)n;
	if (held->content_length >= 0 && body_bytes > held->content_length)
		abort();
	if (flags & 4)
		hparse_pause(&hp, true);
}

static void on_done(void *arg)
{
	(void)arg;
	if (held == NULL)
		abort();
	touch_msg(held);
	held = NULL;
	hparse_pause(&hp, true);   /* the next response waits for the next request */
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
	held = NULL;
	hparse_init(&hp, false, &ops, NULL);
	hparse_limits(&hp, (flags & 8) ? 512 : 65536, -1);
	if (feed_pieces(&hp, data + 3, size - 3, data[1], data[2]) == 0)
		hparse_eof(&hp);
	hparse_free(&hp);
	return 0;
}
