/* log.c - one line per event on stderr, with a level; text or JSON lines.
 *
 * Once the gateway runs (log_run), a log that nobody reads never stalls it.
 * When stderr is a pipe (a `| logger`, a supervisor's pipe) or a socket
 * (journald's stream), lines are written without blocking: through a
 * descriptor of our own for the pipe (reopened by its /proc name with
 * O_NONBLOCK, so the flag is not set on the description the shell, the
 * terminal or our children share) or with MSG_DONTWAIT on the socket. What
 * does not fit waits in a 64 KiB backlog, written when the reader takes it
 * (an EV_WRITE event); lines beyond that are counted, and the count is
 * logged when there is room again. A file or a terminal is written as
 * before: it does not stop a writer for long. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

enum log_level log_min_level = LOG_LVL_INFO;
static int log_json;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

enum log_sink { SINK_PLAIN, SINK_PIPE, SINK_SOCKET };
#define BACKLOG_MAX (64 * 1024)
static enum log_sink sink = SINK_PLAIN;
static int sink_fd = STDERR_FILENO;
static char backlog[BACKLOG_MAX];
static size_t backlog_len;
static unsigned long dropped;   /* lines lost since the last one written */
static struct event *writable;  /* the backlog waits for room */

void log_init(enum log_level min, int json)
{
	log_min_level = min;
	log_json = json;
}

/* LVL's line for MSG, newline included, as text or JSON (malloc'd; NULL
 * when out of memory). */
static char *format_line(enum log_level lvl, const char *msg, size_t *len)
{
	char ts[96], *line;
	struct timeval tv;
	struct tm tm;

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (int)(tv.tv_usec / 1000));
	if (log_json) {
		json_t *o = json_pack("{s:s,s:s,s:s}", "ts", ts, "level", level_names[lvl], "msg", msg);
		char *j = o ? json_dumps(o, JSON_COMPACT) : NULL;
		json_decref(o);
		if (j == NULL)
			return NULL;
		*len = strlen(j);
		j[(*len)++] = '\n';   /* over the NUL: a length goes with it */
		return j;
	}
	/* one message, one line, nothing for a terminal to act on: a control
	 * byte (from a job's output, a service's stderr) as \xHH */
	line = malloc(strlen(ts) + 8 + strlen(msg) * 4 + 2);
	if (line == NULL)
		return NULL;
	size_t o = (size_t)sprintf(line, "%s %-5s ", ts, level_names[lvl]);
	for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
		if (*p < 0x20 || *p == 0x7f)
			o += (size_t)sprintf(line + o, "\\x%02x", *p);
		else
			line[o++] = (char)*p;
	}
	line[o++] = '\n';
	*len = o;
	return line;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	char msg[2048], *line;
	size_t len;
	va_list ap;

	if (lvl < log_min_level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	line = format_line(lvl, msg, &len);
	if (line)
		log_write(line, len);
	free(line);
}

/* Write what we can of BUF without blocking (a plain sink: all of it, or
 * an error); the bytes written, 0 when there was no room. */
static size_t put(const char *buf, size_t n)
{
	ssize_t w;

	do {
		if (sink == SINK_SOCKET)
			w = send(sink_fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		else
			w = write(sink_fd, buf, n);
	} while (w < 0 && errno == EINTR);
	if (w >= 0)
		return (size_t)w;
	/* EAGAIN: no room now. Anything else (a reader that went away, EPIPE)
	 * loses the line, as fprintf to a closed stderr always did */
	return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : n;
}

static void keep(const char *buf, size_t n)
{
	if (backlog_len + n > sizeof backlog) {
		dropped++;
		return;
	}
	memcpy(backlog + backlog_len, buf, n);
	backlog_len += n;
}

/* The backlog first, then the count of lines lost; true when both are out. */
static bool catch_up(void)
{
	if (backlog_len) {
		size_t w = put(backlog, backlog_len);
		memmove(backlog, backlog + w, backlog_len - w);
		backlog_len -= w;
		if (backlog_len)
			return false;
	}
	if (dropped) {
		char msg[128], *line;
		size_t len, w;

		snprintf(msg, sizeof msg, "%lu log lines dropped: stderr was not being read",
			 dropped);
		line = format_line(LOG_LVL_WARN, msg, &len);
		if (line == NULL)
			return false;
		dropped = 0;
		w = put(line, len);
		if (w < len)
			keep(line + w, len - w);
		free(line);
		return backlog_len == 0;
	}
	return true;
}

static void writable_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	if (!catch_up())
		event_add(writable, NULL);
}

void log_write(const char *buf, size_t n)
{
	if (sink == SINK_PLAIN) {
		(void)put(buf, n);
		return;
	}
	if (!catch_up()) {
		keep(buf, n);
		return;
	}
	size_t w = put(buf, n);
	if (w < n) {
		/* the rest of a line is kept even past the bound: a half line
		 * would run into the next one */
		if (backlog_len + (n - w) > sizeof backlog)
			dropped++;
		else
			keep(buf + w, n - w);
		if (writable)
			event_add(writable, NULL);
	}
}

/* At exit: the backlog gets a second or so, then is given up. */
static pid_t sink_owner;   /* a forked child's exit() writes nothing */

static void flush_at_exit(void)
{
	if (getpid() != sink_owner)
		return;
	for (int i = 0; i < 10 && !catch_up(); i++) {
		struct pollfd p = {.fd = sink_fd, .events = POLLOUT};
		(void)poll(&p, 1, 100);
	}
}

void log_run(struct event_base *base)
{
	struct stat st;

	if (sink != SINK_PLAIN || fstat(STDERR_FILENO, &st) != 0)
		return;
	if (S_ISFIFO(st.st_mode)) {
		int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
		if (fd < 0)
			return;   /* no /proc: blocking writes, as before */
		sink_fd = fd;
		sink = SINK_PIPE;
	} else if (S_ISSOCK(st.st_mode)) {
		sink = SINK_SOCKET;
	} else {
		return;
	}
	writable = event_new(base, sink_fd, EV_WRITE, writable_cb, NULL);
	sink_owner = getpid();
	atexit(flush_at_exit);
}

void log_stop(void)
{
	if (writable)
		event_free(writable);
	writable = NULL;
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
