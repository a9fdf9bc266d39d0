/* fuzz_common.h - helpers shared by the HTTP fuzz targets. */
#ifndef SG_FUZZ_COMMON_H
#define SG_FUZZ_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"

static volatile unsigned fuzz_sink;

/* Read every byte: ASan reports a pointer into freed or foreign memory. */
static inline void touch(const char *p, size_t n)
{
	unsigned s = 0;

	for (size_t k = 0; k < n; k++)
		s += (unsigned char)p[k];
	fuzz_sink += s;
}

static inline void touch_msg(const struct http_msg *m)
{
	if (m->url)
		touch(m->url, m->url_len);
	if (m->method_str)
		touch(m->method_str, strlen(m->method_str));
	for (size_t k = 0; k < m->nhdrs; k++) {
		touch(m->hdrs[k].name, m->hdrs[k].nlen);
		touch(m->hdrs[k].value, m->hdrs[k].vlen);
		(void)http_hop_by_hop(&m->hdrs[k], m);
	}
	(void)http_find(m, "host");
}

/* Feed DATA to HP in up to three pieces (each its own allocation, freed
 * right after it was fed, as a socket read buffer would be drained),
 * resuming whenever a callback paused the parser. Returns 0 when the whole
 * input was taken, 1 after an error or an upgrade. */
static inline int feed_pieces(struct hparse *hp, const uint8_t *data, size_t size, uint8_t s1,
			      uint8_t s2)
{
	size_t cut[4], np = 0;

	cut[np++] = 0;
	if (size > 0) {
		size_t a = s1 % (size + 1), b = a + s2 % (size - a + 1);
		cut[np++] = a;
		cut[np++] = b;
	}
	cut[np++] = size;
	for (size_t i = 0; i + 1 < np; i++) {
		size_t len = cut[i + 1] - cut[i], off = 0;
		char *piece;

		if (len == 0)
			continue;
		piece = malloc(len);
		memcpy(piece, data + cut[i], len);
		while (off < len) {
			size_t n = hparse_feed(hp, piece + off, len - off);
			off += n;
			if (hparse_error(hp, NULL) != 0 || hparse_upgraded(hp)) {
				free(piece);
				return 1;
			}
			if (hparse_paused(hp))
				hparse_pause(hp, false);
			else if (n == 0)
				abort();   /* no progress, no pause, no error: a spin */
		}
		free(piece);
	}
	return 0;
}

#endif
