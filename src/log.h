/* log.h - one line per event on stderr, with a level; text or JSON lines. */
#ifndef SG_LOG_H
#define SG_LOG_H

#include <stddef.h>

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

/* Set the lowest level printed and whether lines are JSON objects. */
void log_init(enum log_level min, int json);
/* The gateway runs on BASE: from now on a pipe or socket on stderr is
 * written without blocking (log.c). log_stop before BASE is freed. */
struct event_base;
void log_run(struct event_base *base);
void log_stop(void);
/* One whole line (newline included) onto the log, as log_msg writes them
 * (the access log's "-" too). */
void log_write(const char *buf, size_t n);
/* Route libevent's own messages through log_msg. */
void log_hook_libevent(void);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The lowest level printed (log_init). */
extern enum log_level log_min_level;

/* The level is checked before the call: a debug line on the request path
 * costs a compare, not log_msg's frame (its 10 KB of line buffers), and
 * its arguments are not evaluated. */
#define log_at(lvl, ...)                                  \
	do {                                              \
		if ((lvl) >= log_min_level)               \
			log_msg((lvl), __VA_ARGS__);      \
	} while (0)
#define log_debug(...) log_at(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...) log_at(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...) log_at(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_at(LOG_LVL_ERROR, __VA_ARGS__)

#endif
