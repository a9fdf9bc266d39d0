/* http_out.c - output a connection composes (both sides): pooled plain
 * blocks, written out by http_conn.c's flush when the outermost callback
 * returns; what the socket does not take goes to the bufferevent. */
#include "http_conn_impl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "util.h"

/* Output blocks: a request's output is composed, written and given back
 * within one callback, so a few blocks serve every connection (no evbuffer
 * chain allocated and freed, no buffer callbacks, per response). */
#define WBLOCK 16384
#define WSPARE_MAX 16
static char *wspare[WSPARE_MAX];
static int nwspare;

void hc_out_release(struct hconn *c)
{
	if (c->w == NULL)
		return;
	if (c->wcap == WBLOCK && nwspare < WSPARE_MAX)
		wspare[nwspare++] = c->w;
	else
		free(c->w);
	c->w = NULL;
	c->wn = c->wcap = 0;
}

static void w_reserve(struct hconn *c, size_t n)
{
	size_t need = c->wn + n, cap;

	if (need <= c->wcap)
		return;
	if (c->w == NULL && need <= WBLOCK) {
		c->w = nwspare > 0 ? wspare[--nwspare] : xmalloc(WBLOCK);
		c->wcap = WBLOCK;
		return;
	}
	for (cap = c->wcap ? c->wcap : WBLOCK; cap < need; cap *= 2)
		;
	c->w = xrealloc(c->w, cap);
	c->wcap = cap;
}

void hc_out_add(struct hconn *c, const void *p, size_t n)
{
	if (hc_dead(c))
		return;
	if (n > 0) {
		w_reserve(c, n);
		memcpy(c->w + c->wn, p, n);
		c->wn += n;
	}
	hc_mark_dirty(c);
}

void hc_out_add_buffer(struct hconn *c, struct evbuffer *b)
{
	struct evbuffer_iovec v[8];
	int nv;

	while ((nv = evbuffer_peek(b, -1, NULL, v, 8)) > 0) {
		size_t moved = 0;

		for (int k = 0; k < nv && k < 8; k++) {
			hc_out_add(c, v[k].iov_base, v[k].iov_len);
			moved += v[k].iov_len;
		}
		evbuffer_drain(b, moved);
	}
	hc_mark_dirty(c);
}

void hc_out_printf(struct hconn *c, const char *fmt, ...)
{
	va_list ap;
	char small[256];
	int n;

	if (hc_dead(c))
		return;
	va_start(ap, fmt);
	n = vsnprintf(small, sizeof small, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof small) {
		hc_out_add(c, small, (size_t)n);
		return;
	}
	w_reserve(c, (size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(c->w + c->wn, (size_t)n + 1, fmt, ap);
	va_end(ap);
	c->wn += (size_t)n;
	hc_mark_dirty(c);
}

size_t hc_out_composed(const struct hconn *c)
{
	return c->wn;
}

void hc_out_truncate(struct hconn *c, size_t n)
{
	if (n < c->wn)
		c->wn = n;
}
