/* logring.c - a bounded ring of lines (see logring.h). */
#include "logring.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "util.h"

#define LINE_MAX_BYTES 4096

struct line {
	char *s;
	size_t n;
};

struct logring {
	struct line v[LOGRING_LINES];
	size_t head;       /* index of the oldest line */
	size_t count;
	size_t bytes;
	uint64_t first;    /* sequence number of the oldest line */
};

struct logring *logring_new(void)
{
	return xcalloc(1, sizeof(struct logring));
}

void logring_free(struct logring *r)
{
	if (r == NULL)
		return;
	for (size_t k = 0; k < r->count; k++)
		free(r->v[(r->head + k) % LOGRING_LINES].s);
	free(r);
}

static void drop_oldest(struct logring *r)
{
	struct line *l = &r->v[r->head];

	r->bytes -= l->n;
	free(l->s);
	l->s = NULL;
	l->n = 0;
	r->head = (r->head + 1) % LOGRING_LINES;
	r->count--;
	r->first++;
}

void logring_add(struct logring *r, const char *line, size_t len)
{
	struct line *l;

	if (len > LINE_MAX_BYTES)
		len = LINE_MAX_BYTES;
	while (r->count > 0 && (r->count == LOGRING_LINES || r->bytes + len > LOGRING_BYTES))
		drop_oldest(r);
	l = &r->v[(r->head + r->count) % LOGRING_LINES];
	l->s = xmalloc(len + 1);
	memcpy(l->s, line, len);
	l->s[len] = '\0';
	l->n = len;
	r->count++;
	r->bytes += len;
}

void logring_addf(struct logring *r, const char *fmt, ...)
{
	char buf[LINE_MAX_BYTES];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	logring_add(r, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

size_t logring_read(const struct logring *r, uint64_t *from, size_t max, struct evbuffer *out)
{
	uint64_t end = r->first + r->count, at = *from < r->first ? r->first : *from;
	size_t n = 0;

	if (at > end)   /* a number from the future: nothing yet */
		at = end;
	if (end - at > max)
		at = end - max;
	for (; at < end; at++, n++) {
		const struct line *l = &r->v[(r->head + (size_t)(at - r->first)) % LOGRING_LINES];
		evbuffer_add(out, l->s, l->n);
		evbuffer_add(out, "\n", 1);
	}
	*from = end;
	return n;
}
