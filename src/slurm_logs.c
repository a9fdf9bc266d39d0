/* slurm_logs.c - a Slurm service's logs from its job's output file (see
 * slurm_logs.h). */
#include "slurm_logs.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>

#include "config.h"
#include "log.h"
#include "logring.h"
#include "service.h"
#include "slurm_agent.h"
#include "util.h"

#define FETCH_EVERY_S 1.0            /* at most one fetch a second per service */
#define FETCH_BYTES (512 * 1024)     /* of a fetch's answer, the rest is not looked at */

/* One service's reading of its job's output (by name: it outlives reloads). */
struct slog {
	LIST_ENTRY(slog) link;
	char *name;
	char job[32];       /* the job read ("": none yet) */
	int index;          /* its instance's index */
	char **prev;        /* the complete lines the last fetch of JOB got */
	size_t nprev;
	bool inflight;      /* one fetch at a time */
	bool final;         /* JOB ended and was read after: nothing more to read */
	bool ended;         /* JOB is not tracked any more */
	char err[200];      /* the last error noted in the ring */
	double last;        /* when the last fetch started */
};

struct fetch {
	char *name;
	char job[32];
	bool ended;
};

static LIST_HEAD(, slog) slogs = LIST_HEAD_INITIALIZER(slogs);

static struct slog *slog_for(const char *name)
{
	struct slog *l;

	LIST_FOREACH(l, &slogs, link)
		if (strcmp(l->name, name) == 0)
			return l;
	l = xcalloc(1, sizeof *l);
	l->name = xstrdup(name);
	LIST_INSERT_HEAD(&slogs, l, link);
	return l;
}

static void prev_clear(struct slog *l)
{
	for (size_t k = 0; k < l->nprev; k++)
		free(l->prev[k]);
	free(l->prev);
	l->prev = NULL;
	l->nprev = 0;
}

/* Split OUT into its complete lines (a last one without its newline is left
 * for the next fetch; '\r' before a newline is dropped). Returns the count;
 * *V (malloc'd) points into OUT, which is changed. */
static size_t split_lines(char *out, char ***v)
{
	size_t n = 0, cap = 0;
	char *p = out, *nl;

	*v = NULL;
	while ((nl = strchr(p, '\n')) != NULL) {
		*nl = '\0';
		if (nl > p && nl[-1] == '\r')
			nl[-1] = '\0';
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			*v = xrealloc(*v, cap * sizeof **v);
		}
		(*v)[n++] = p;
		p = nl + 1;
	}
	return n;
}

/* How many of CUR's first lines are the last lines of PREV (the most). */
static size_t overlap(char *const *prev, size_t np, char *const *cur, size_t nc)
{
	for (size_t k = np < nc ? np : nc; k > 0; k--) {
		size_t i = 0;
		while (i < k && strcmp(prev[np - k + i], cur[i]) == 0)
			i++;
		if (i == k)
			return k;
	}
	return 0;
}

static void fetched(void *arg, int status, const char *out, const char *err)
{
	struct fetch *f = arg;
	struct slog *l;
	struct service *s = service_by_name(f->name);
	struct logring *ring;
	char *text, **cur;
	size_t n, nc, k;

	LIST_FOREACH(l, &slogs, link)
		if (strcmp(l->name, f->name) == 0)
			break;
	if (l != NULL)
		l->inflight = false;   /* the one fetch in flight, also for a job left */
	if (l == NULL || strcmp(l->job, f->job) != 0 || s == NULL)
		goto done;
	ring = service_log(s);
	if (status != 0) {
		char why[sizeof l->err];
		/* no output file yet (a queued job), or one not readable here */
		snprintf(why, sizeof why, "%s", err && err[0] ? err : "");
		if (why[0] && strcmp(why, l->err) != 0)
			logring_addf(ring, "[%d] --- slurmgate: the output of Slurm job %s: %s ---",
				     l->index, l->job, why);
		snprintf(l->err, sizeof l->err, "%s", why);
		if (f->ended && why[0])   /* gone from Slurm's memory too */
			l->final = true;
		goto done;
	}
	l->err[0] = '\0';
	n = strlen(out);
	if (n > FETCH_BYTES) {   /* keep the end: whole lines after the cut */
		const char *nl = memchr(out + n - FETCH_BYTES, '\n', FETCH_BYTES);
		out = nl ? nl + 1 : out + n;
	}
	text = xstrdup(out);
	nc = split_lines(text, &cur);
	k = overlap(l->prev, l->nprev, cur, nc);
	if (k == 0 && l->nprev > 0 && nc >= SLURM_LOGS_FETCH_LINES)
		logring_addf(ring, "[%d] --- slurmgate: more than %d lines of Slurm job %s's output "
			     "since it was last read: some are missing ---",
			     l->index, SLURM_LOGS_FETCH_LINES, l->job);
	else if (k == 0 && l->nprev > 0 && nc > 0)   /* e.g. truncated when the job was requeued */
		logring_addf(ring, "[%d] --- slurmgate: Slurm job %s's output file started anew ---",
			     l->index, l->job);
	for (size_t i = k; i < nc; i++)
		logring_addf(ring, "[%d] %s", l->index, cur[i]);
	if (nc > 0 || l->nprev == 0) {   /* an empty answer keeps what was seen */
		prev_clear(l);
		l->prev = xmalloc((nc ? nc : 1) * sizeof *l->prev);
		for (size_t i = 0; i < nc; i++)
			l->prev[i] = xstrdup(cur[i]);
		l->nprev = nc;
	}
	free(cur);
	free(text);
	if (f->ended)
		l->final = true;
done:
	free(f->name);
	free(f);
}

/* L reads JOB (of S's instance INDEX) from now on. */
static void slog_job(struct slog *l, struct service *s, const char *job, int index)
{
	if (strcmp(job, l->job) == 0)
		return;
	snprintf(l->job, sizeof l->job, "%s", job);
	prev_clear(l);
	l->final = l->ended = false;
	l->err[0] = '\0';
	l->last = 0;
	l->index = index;
	/* what the first request shows: the output comes a moment later */
	logring_addf(service_log(s), "[%d] --- slurmgate: the output of Slurm job %s (read from the "
		     "cluster about once a second while someone reads it) ---", index, job);
}

/* Fetch L's job's output tail through R, unless a fetch is in flight. */
static void slog_fetch(struct slog *l, struct runner *r)
{
	struct fetch *f;

	if (l->inflight || l->job[0] == '\0' || l->final)
		return;
	f = xcalloc(1, sizeof *f);
	f->name = xstrdup(l->name);
	snprintf(f->job, sizeof f->job, "%s", l->job);
	f->ended = l->ended;
	l->inflight = true;
	l->last = now_s();
	sagent_tail(r, l->job, SLURM_LOGS_FETCH_LINES, fetched, f);
}

int slurm_logs_read(struct service *s, struct runner *r, const char *job, int index,
		    uint64_t *from, size_t max, struct evbuffer *out)
{
	struct slog *l = slog_for(service_config(s)->name);
	const struct logring *ring;

	if (job != NULL)
		slog_job(l, s, job, index);
	else
		l->ended = true;
	ring = service_log_peek(s);
	if (ring != NULL)
		logring_read(ring, from, max, out);
	if (now_s() - l->last >= FETCH_EVERY_S)
		slog_fetch(l, r);
	return 0;
}

void slurm_logs_ended(struct service *s, struct runner *r, const char *job, int index)
{
	struct slog *l = slog_for(service_config(s)->name);

	slog_job(l, s, job, index);
	l->ended = true;
	slog_fetch(l, r);
}
