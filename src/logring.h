/* logring.h - the last lines a service's instances wrote (stdout and
 * stderr), bounded in lines and bytes: what /api/services/<name>/logs
 * shows. Every line gets a sequence number, so that a follower asks for
 * what came after the last line it saw. */
#ifndef SG_LOGRING_H
#define SG_LOGRING_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct logring;

#define LOGRING_LINES 2000          /* lines kept ... */
#define LOGRING_BYTES (256 * 1024)  /* ... and bytes, whichever is reached first */

struct logring *logring_new(void);
void logring_free(struct logring *r);
/* Add one line (LEN bytes, no newline; longer ones are cut at 4 KiB). The
 * oldest lines go when a bound is reached. */
void logring_add(struct logring *r, const char *line, size_t len);
/* printf-style logring_add. */
void logring_addf(struct logring *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append to OUT, each followed by '\n', the lines numbered *FROM and later,
 * at most MAX of them (the newest); set *FROM to the number the next line
 * will get. Returns the number of lines appended. A *FROM older than the
 * oldest line kept starts at the oldest. */
size_t logring_read(const struct logring *r, uint64_t *from, size_t max, struct evbuffer *out);

#endif
