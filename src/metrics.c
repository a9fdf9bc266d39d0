/* metrics.c - counters and histograms: what a service counts (rendered by
 * prometheus.c). */
#include "metrics.h"

#include <string.h>


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
