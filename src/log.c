/* log.c - one line per event on stderr, with a level; text or JSON lines. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>

enum log_level log_min_level = LOG_LVL_INFO;
static int log_json;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(enum log_level min, int json)
{
	log_min_level = min;
	log_json = json;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	char msg[2048], ts[96];
	struct timeval tv;
	struct tm tm;
	va_list ap;

	if (lvl < log_min_level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (int)(tv.tv_usec / 1000));
	if (log_json) {
		json_t *o = json_pack("{s:s,s:s,s:s}", "ts", ts, "level", level_names[lvl], "msg", msg);
		char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
		if (line)
			fprintf(stderr, "%s\n", line);
		free(line);
		json_decref(o);
	} else {
		/* one message, one line, nothing for a terminal to act on: a
		 * control byte (from a job's output, a service's stderr) as \xHH */
		char safe[sizeof msg * 4];
		size_t o = 0;
		for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
			if (*p < 0x20 || *p == 0x7f)
				o += (size_t)snprintf(safe + o, 5, "\\x%02x", *p);
			else
				safe[o++] = (char)*p;
		}
		safe[o] = '\0';
		fprintf(stderr, "%s %-5s %s\n", ts, level_names[lvl], safe);
	}
}

static void libevent_log_cb(int severity, const char *msg)
{
	enum log_level lvl = severity >= EVENT_LOG_ERR ? LOG_LVL_ERROR
			     : severity >= EVENT_LOG_WARN ? LOG_LVL_WARN
			     : severity >= EVENT_LOG_MSG  ? LOG_LVL_INFO
							  : LOG_LVL_DEBUG;
	log_msg(lvl, "libevent: %s", msg);
}

void log_hook_libevent(void)
{
	event_set_log_callback(libevent_log_cb);
}
