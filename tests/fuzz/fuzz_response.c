/* fuzz_response.c - the client side of the HTTP layer: a service's
 * responses in one to three pieces, then the close. The same bytes fed
 * whole, without pauses, must give the same responses and the same error.
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
static uint64_t digest;
static bool pausing;

static void mix(const void *p, size_t n)
{
	for (size_t k = 0; k < n; k++)
		digest = (digest ^ ((const uint8_t *)p)[k]) * 1099511628211ULL;
}

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
	mix("H", 1);
	mix(&m->status, sizeof m->status);
	for (size_t k = 0; k < m->nhdrs; k++) {
		mix("\n", 1);
		mix(m->hdrs[k].name, m->hdrs[k].nlen);
		mix(":", 1);
		mix(m->hdrs[k].value, m->hdrs[k].vlen);
	}
	if (pausing && (flags & 2))
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
	mix(p, n);
	if (pausing && (flags & 4))
		hparse_pause(&hp, true);
}

static void on_done(void *arg)
{
	(void)arg;
	if (held == NULL)
		abort();
	touch_msg(held);
	mix("D", 1);
	held = NULL;
	if (pausing)
		hparse_pause(&hp, true);   /* the next response waits for the next request */
}

static const struct hparse_ops ops = {
	.begin = on_begin,
	.head = on_head,
	.body = on_body,
	.done = on_done,
};

static uint64_t parse(const uint8_t *data, size_t size, bool split)
{
	int st;

	digest = 1469598103934665603ULL;
	held = NULL;
	pausing = split;
	hparse_init(&hp, false, &ops, NULL);
	hparse_limits(&hp, (flags & 8) ? 512 : 65536, -1);
	if (feed_pieces(&hp, data + 3, size - 3, split ? data[1] : 0, split ? data[2] : 0) == 0)
		hparse_eof(&hp);
	st = hparse_error(&hp, NULL);
	mix(&st, sizeof st);
	hparse_free(&hp);
	return digest;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	flags = data[0];
	if (parse(data, size, true) != parse(data, size, false))
		abort();   /* the split or the pauses changed what was parsed */
	return 0;
}
