/* accesslog.c - one line per exchange: who used which service, how it went.
 *
 * A line is written when the response is complete (or the connection ended
 * first), with one write(2) on an O_APPEND descriptor, so lines never
 * interleave and a rename by logrotate loses none: they go to the renamed
 * file until SIGUSR1 makes us open the name again. */
#include "accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "http.h"
#include "log.h"
#include "util.h"

#define FIELD_MAX 2048   /* bytes of a path, referer or user agent kept */

static int alog_fd = -1;
static char *alog_file;   /* NULL: off */
static bool alog_json;
static bool alog_failing;   /* the last write failed (logged once) */

void accesslog_note_reset(struct accesslog_note *n)
{
	free(n->service);
	n->service = NULL;
	n->instance = -1;
	n->wait = -1;
	n->key[0] = '\0';
}

static int open_file(const char *file, char **cause)
{
	int fd;

	if (strcmp(file, "-") == 0)
		return STDERR_FILENO;
	fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
	if (fd < 0)
		*cause = xasprintf("access_log %s: %s", file, strerror(errno));
	return fd;
}

static void close_file(void)
{
	if (alog_fd > STDERR_FILENO)
		close(alog_fd);
	alog_fd = -1;
}

int accesslog_configure(const char *file, bool json, char **cause)
{
	int fd;

	alog_json = json;
	if (file == NULL) {
		close_file();
		free(alog_file);
		alog_file = NULL;
		return 0;
	}
	if (alog_file && strcmp(alog_file, file) == 0)
		return 0;
	if ((fd = open_file(file, cause)) < 0)
		return -1;
	close_file();
	alog_fd = fd;
	free(alog_file);
	alog_file = xstrdup(file);
	alog_failing = false;
	return 0;
}

void accesslog_reopen(void)
{
	char *cause = NULL;
	int fd;

	if (alog_file == NULL || strcmp(alog_file, "-") == 0)
		return;
	if ((fd = open_file(alog_file, &cause)) < 0) {
		log_error("%s; still writing to the file open before", cause);
		free(cause);
		return;
	}
	close_file();
	alog_fd = fd;
	alog_failing = false;
	log_info("access_log: reopened %s", alog_file);
}

/* S (N bytes) for a log line: printable ASCII but '"' and '\', the rest
 * as \xHH; at most FIELD_MAX bytes of S. */
static const char *esc(const char *s, size_t n, char *out, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (s == NULL || n == 0)
		return "-";
	for (size_t k = 0; k < n && k < FIELD_MAX && o + 5 < len; k++) {
		unsigned char ch = (unsigned char)s[k];
		if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') {
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[ch >> 4];
			out[o++] = hex[ch & 15];
		} else {
			out[o++] = (char)ch;
		}
	}
	out[o] = '\0';
	return out;
}

static const char *hdr(const struct http_msg *m, const char *name, char *out, size_t len)
{
	const struct http_hdr *h = http_find(m, name);

	return h ? esc(h->value, h->vlen, out, len) : "-";
}

static void emit(const char *line, size_t n)
{
	ssize_t w;

	if (alog_fd == STDERR_FILENO) {   /* "-": the log's own lines' way */
		log_write(line, n);
		return;
	}
	w = write(alog_fd, line, n);

	if (w == (ssize_t)n) {
		alog_failing = false;
		return;
	}
	if (!alog_failing)
		log_error("access_log %s: %s", alog_file, w < 0 ? strerror(errno) : "short write");
	alog_failing = true;
}

void accesslog_write(struct hconn *c, const struct http_msg *m, const struct http_xfer *x,
		     const struct accesslog_note *n)
{
	char path[FIELD_MAX * 4 + 8], ref[FIELD_MAX * 4 + 8], ua[FIELD_MAX * 4 + 8];
	char ts[64], proto[32], inst[16], wait[32], tfb[32], svc[512];
	const char *rp, *up, *pp;
	double dur = x->t_end - x->t_start;
	double ttfb = x->status ? x->t_head - x->t_start : -1;
	struct timeval tv;
	struct tm tm;

	if (alog_fd < 0)
		return;
	gettimeofday(&tv, NULL);
	snprintf(proto, sizeof proto, "HTTP/%d.%d", m->major, m->minor);
	pp = esc(m->url, m->url_len, path, sizeof path);
	rp = hdr(m, "referer", ref, sizeof ref);
	up = hdr(m, "user-agent", ua, sizeof ua);
	if (alog_json) {
		char *line;
		json_t *o;
		gmtime_r(&tv.tv_sec, &tm);
		snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			 (int)(tv.tv_usec / 1000));
		o = json_pack("{s:s,s:s,s:s?,s:s?,s:o,s:s,s:s,s:s,s:i,s:I,s:f,s:o,s:o,s:b,s:s?,s:s?}",
			      "time", ts, "client", http_peer(c), "key", n->key[0] ? n->key : NULL,
			      "service", n->service, "instance",
			      n->instance >= 0 ? json_integer(n->instance) : json_null(),
			      "method", m->method_str, "path", pp, "protocol", proto,
			      "status", x->status, "bytes", (json_int_t)x->bytes,
			      "duration", dur,
			      "ttfb", ttfb >= 0 ? json_real(ttfb) : json_null(),
			      "wait", n->wait >= 0 ? json_real(n->wait) : json_null(),
			      "complete", x->complete,
			      "referer", rp == ref ? ref : NULL, "user_agent", up == ua ? ua : NULL);
		line = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
		if (line) {
			size_t len = strlen(line);
			line = xrealloc(line, len + 2);
			line[len] = '\n';
			emit(line, len + 1);
		}
		free(line);
		json_decref(o);
		return;
	}
	localtime_r(&tv.tv_sec, &tm);
	strftime(ts, sizeof ts, "%d/%b/%Y:%H:%M:%S %z", &tm);
	if (n->instance >= 0)
		snprintf(inst, sizeof inst, "%d", n->instance);
	else
		snprintf(inst, sizeof inst, "-");
	if (n->wait >= 0)
		snprintf(wait, sizeof wait, "%.3f", n->wait);
	else
		snprintf(wait, sizeof wait, "-");
	if (ttfb >= 0)
		snprintf(tfb, sizeof tfb, "%.3f", ttfb);
	else
		snprintf(tfb, sizeof tfb, "-");
	if (n->service)   /* a name with a space must not split the field */
		for (size_t k = 0; k < sizeof svc - 1 && (svc[k] = n->service[k]); k++)
			if (svc[k] == ' ' || (unsigned char)svc[k] < 0x20)
				svc[k] = '_';
	svc[sizeof svc - 1] = '\0';
	{
		char *line = xasprintf("%s - %s [%s] \"%s %s %s\" %03d %llu \"%s\" \"%s\" service=%s "
				       "instance=%s duration=%.3f ttfb=%s wait=%s complete=%s\n",
				       http_peer(c), n->key[0] ? n->key : "-", ts, m->method_str, pp, proto,
				       x->status, x->bytes, rp, up, n->service ? svc : "-", inst, dur, tfb,
				       wait, x->complete ? "yes" : "no");
		emit(line, strlen(line));
		free(line);
	}
}

void accesslog_free(void)
{
	close_file();
	free(alog_file);
	alog_file = NULL;
}
