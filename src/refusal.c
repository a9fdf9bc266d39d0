/* refusal.c - errors the gateway answers itself: counted for /metrics, and
 * logged once per service and interval with a count.
 *
 * The first of a run of identical errors (same service, status and reason)
 * is logged at once; the ones that follow within the interval are only
 * counted, and when the interval ends one line says how many there were
 * ("... (repeated 13561 times in the last 10 s)"). */
#include "refusal.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "log.h"
#include "metrics.h"
#include "prometheus.h"
#include "util.h"

/* Distinct errors aggregated at once; past it, errors are logged each. */
#define RUNS_MAX 256

struct run {
	char *service, *reason;
	int status;
	double since;         /* start of the current interval (monotonic s) */
	uint64_t repeats;     /* errors in this interval after the logged one */
};

struct tally {
	char *service, *kind;
	uint64_t n;
};

static struct run runs[RUNS_MAX];
static size_t nruns;
static struct tally *tallies;
static size_t ntallies;
static struct event *tick_ev;
static int interval = 10;

static void run_flush(struct run *r, double now)
{
	if (r->repeats > 0)
		log_info("svc %s: %d %s (repeated %llu times in the last %.0f s)", r->service, r->status,
			 r->reason, (unsigned long long)r->repeats, now - r->since);
}

static void run_drop(size_t k)
{
	free(runs[k].service);
	free(runs[k].reason);
	runs[k] = runs[--nruns];
}

/* Once a second while runs are open: close the intervals that are over. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	double now = now_s();

	(void)fd, (void)what, (void)arg;
	for (size_t k = 0; k < nruns;) {
		struct run *r = &runs[k];
		if (now - r->since < interval) {
			k++;
			continue;
		}
		if (r->repeats == 0) {   /* quiet for a whole interval: the next one is news */
			run_drop(k);
			continue;
		}
		run_flush(r, now);
		r->repeats = 0;
		r->since = now;
		k++;
	}
	if (nruns > 0)
		event_add(tick_ev, &(struct timeval){1, 0});
}

void refusal_configure(struct event_base *base, int interval_s)
{
	interval = interval_s;
	if (tick_ev == NULL)
		tick_ev = evtimer_new(base, tick_cb, NULL);
}

static void tally_add(const char *service, const char *kind)
{
	for (size_t k = 0; k < ntallies; k++)
		if (strcmp(tallies[k].service, service) == 0 && strcmp(tallies[k].kind, kind) == 0) {
			tallies[k].n++;
			return;
		}
	tallies = xrealloc(tallies, (ntallies + 1) * sizeof *tallies);
	tallies[ntallies++] = (struct tally){xstrdup(service), xstrdup(kind), 1};
}

void refusal_note(const char *service, int status, const char *reason, const char *kind)
{
	if (kind != NULL)
		tally_add(service, kind);
	if (interval <= 0 || tick_ev == NULL) {
		log_info("svc %s: %d %s", service, status, reason);
		return;
	}
	for (size_t k = 0; k < nruns; k++) {
		struct run *r = &runs[k];
		if (r->status == status && strcmp(r->service, service) == 0 &&
		    strcmp(r->reason, reason) == 0) {
			r->repeats++;
			return;
		}
	}
	log_info("svc %s: %d %s", service, status, reason);
	if (nruns == RUNS_MAX)
		return;
	runs[nruns++] = (struct run){xstrdup(service), xstrdup(reason), status, now_s(), 0};
	if (!event_pending(tick_ev, EV_TIMEOUT, NULL))
		event_add(tick_ev, &(struct timeval){1, 0});
}

uint64_t refusal_count(const char *service)
{
	uint64_t n = 0;

	for (size_t k = 0; k < ntallies; k++)
		if (strcmp(tallies[k].service, service) == 0)
			n += tallies[k].n;
	return n;
}

void refusal_metrics(struct evbuffer *b)
{
	char svc[1100], kind[200];

	evbuffer_add_printf(b, "# HELP slurmgate_requests_refused_total Requests the gateway answered "
			       "itself, by service and reason: 502 for start_failed (the service's "
			       "last start failed and it backs off), 503 for the others.\n"
			       "# TYPE slurmgate_requests_refused_total counter\n");
	for (size_t k = 0; k < ntallies; k++) {
		metrics_label(svc, sizeof svc, tallies[k].service);
		metrics_label(kind, sizeof kind, tallies[k].kind);
		evbuffer_add_printf(b, "slurmgate_requests_refused_total{service=\"%s\",reason=\"%s\"} %llu\n",
				    svc, kind, (unsigned long long)tallies[k].n);
	}
}

void refusal_free(void)
{
	double now = now_s();

	while (nruns > 0) {
		run_flush(&runs[nruns - 1], now);
		run_drop(nruns - 1);
	}
	for (size_t k = 0; k < ntallies; k++) {
		free(tallies[k].service);
		free(tallies[k].kind);
	}
	free(tallies);
	tallies = NULL;
	ntallies = 0;
	if (tick_ev)
		event_free(tick_ev);
	tick_ev = NULL;
}
