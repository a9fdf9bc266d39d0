/* util.h - allocation that never fails, time, small string helpers. */
#ifndef SG_UTIL_H
#define SG_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdnoreturn.h>

/* Out of memory or an impossible state: log and exit(70). */
noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Monotonic clock in milliseconds / seconds (double). */
uint64_t now_ms(void);
double now_s(void);
/* Wall clock, seconds since the epoch. */
double wall_s(void);

/* Are A and B the same string, or both NULL? */
bool str_same(const char *a, const char *b);
/* A copy of a NULL-terminated list of strings (NULL for NULL). */
char **strv_dup(char *const *v);

/* Case-insensitive compare of a length-delimited string with a C string. */
int strncase_eq(const char *a, size_t alen, const char *b);
/* 1 if s starts with prefix. */
int has_prefix(const char *s, const char *prefix);

/* Copy the string SRC into DST of CAP (> 0) bytes, cut to fit, always
 * NUL-terminated: snprintf(dst, cap, "%s", src) without the format engine
 * (the hot path does it per request). */
void str_copy(char *dst, size_t cap, const char *src);

/* Parse "host:port" (port required, host may be empty for 0.0.0.0).
 * Returns 0 and fills *host (malloc'd) and *port, or -1. */
int parse_hostport(const char *s, char **host, int *port);

/* Copy of s with control characters and non-ASCII escaped, for logs.
 * Returns a pointer to a static rotating buffer; at most 256 chars kept. */
const char *log_escape(const char *s, size_t len);
/* Make S valid UTF-8 in place: a byte that starts no complete, shortest
 * sequence (output that is not UTF-8, a string cut inside a character)
 * becomes '?'. JSON encoding refuses anything else. Returns S. */
char *utf8_scrub(char *s);

#endif
