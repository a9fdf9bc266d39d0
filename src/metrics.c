/* metrics.c - counters and histograms, and the Prometheus text format. */
#include "metrics.h"

#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

static const double cold_bounds[] = {0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};
static const double ttfb_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
				     0.25,  0.5,    1,     2.5,  5,     10,   30};

void metrics_init(struct svc_metrics *m)
{
	memset(m, 0, sizeof *m);
	m->cold_queue.bounds = m->cold_boot.bounds = cold_bounds;
	m->cold_queue.n = m->cold_boot.n = (int)(sizeof cold_bounds / sizeof *cold_bounds);
	m->ttfb.bounds = ttfb_bounds;
	m->ttfb.n = (int)(sizeof ttfb_bounds / sizeof *ttfb_bounds);
}

void histo_observe(struct histo *h, double v)
{
	int k = 0;

	while (k < h->n && v > h->bounds[k])
		k++;
	if (k < h->n)
		h->counts[k]++;
	else
		h->inf++;
	h->sum += v;
	h->count++;
}

void histo_write(struct evbuffer *b, const char *name, const char *labels, const struct histo *h)
{
	uint64_t cum = 0;

	for (int k = 0; k < h->n; k++) {
		cum += h->counts[k];
		evbuffer_add_printf(b, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, h->bounds[k],
				    (unsigned long long)cum);
	}
	evbuffer_add_printf(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels,
			    (unsigned long long)h->count);
	evbuffer_add_printf(b, "%s_sum{%s} %.6f\n", name, labels, h->sum);
	evbuffer_add_printf(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
}

void metrics_label(char *out, size_t len, const char *value)
{
	size_t o = 0;

	for (const char *p = value; *p && o + 3 < len; p++) {
		if (*p == '\\' || *p == '"') {
			out[o++] = '\\';
			out[o++] = *p;
		} else if (*p == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else {
			out[o++] = *p;
		}
	}
	out[o] = '\0';
}
