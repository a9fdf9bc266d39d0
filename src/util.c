/* util.c - allocation that never fails, time, small string helpers. */
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"

noreturn void fatal(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	log_msg(LOG_LVL_ERROR, "fatal: %s", buf);
	exit(70);
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL)
		fatal("out of memory (%zu bytes)", n);
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (p == NULL)
		fatal("out of memory (%zu x %zu bytes)", n, size);
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (p == NULL)
		fatal("out of memory (%zu bytes)", n);
	return p;
}

char *xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;

	va_start(ap, fmt);
	if (vasprintf(&p, fmt, ap) < 0)
		fatal("out of memory (asprintf)");
	va_end(ap);
	return p;
}

uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double wall_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int strncase_eq(const char *a, size_t alen, const char *b)
{
	return strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

int has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

void str_copy(char *dst, size_t cap, const char *src)
{
	size_t n = strnlen(src, cap - 1);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

int parse_hostport(const char *s, char **host, int *port)
{
	const char *colon = strrchr(s, ':');
	char *end;
	long p;

	if (colon == NULL)
		return -1;
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (errno || *end != '\0' || end == colon + 1 || p < 0 || p > 65535)
		return -1;
	if (colon == s)
		*host = xstrdup("0.0.0.0");
	else if (s[0] == '[' && colon[-1] == ']')
		*host = xstrndup(s + 1, (size_t)(colon - s - 2));
	else
		*host = xstrndup(s, (size_t)(colon - s));
	*port = (int)p;
	return 0;
}

char *utf8_scrub(char *s)
{
	unsigned char *p = (unsigned char *)s;

	while (*p) {
		size_t n = *p < 0x80 ? 1 : *p >= 0xC2 && *p <= 0xDF ? 2 : *p >= 0xE0 && *p <= 0xEF ? 3
			 : *p >= 0xF0 && *p <= 0xF4 ? 4 : 0;
		bool ok = n > 0;
		for (size_t k = 1; ok && k < n; k++)
			ok = (p[k] & 0xC0) == 0x80;
		/* no overlong forms, no surrogates, nothing past U+10FFFF */
		if (ok && n == 3)
			ok = !(p[0] == 0xE0 && p[1] < 0xA0) && !(p[0] == 0xED && p[1] >= 0xA0);
		if (ok && n == 4)
			ok = !(p[0] == 0xF0 && p[1] < 0x90) && !(p[0] == 0xF4 && p[1] >= 0x90);
		if (!ok) {
			*p++ = '?';
			continue;
		}
		p += n;
	}
	return s;
}

const char *log_escape(const char *s, size_t len)
{
	static char bufs[4][1100];
	static int next;
	char *out = bufs[next++ & 3];
	size_t o = 0;

	for (size_t i = 0; i < len && o < 1024; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c < 0x7f && c != '\\')
			out[o++] = (char)c;
		else
			o += (size_t)snprintf(out + o, 8, "\\x%02x", c);
		if (i >= 255) {
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
	}
	out[o] = '\0';
	return out;
}

bool str_same(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

char **strv_dup(char *const *v)
{
	size_t n = 0;
	char **out;

	if (v == NULL)
		return NULL;
	while (v[n])
		n++;
	out = xcalloc(n + 1, sizeof *out);
	for (size_t k = 0; k < n; k++)
		out[k] = xstrdup(v[k]);
	return out;
}
