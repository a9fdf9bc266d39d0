/* metrics.h - counters and histograms (prometheus.c renders them). */
#ifndef SG_METRICS_H
#define SG_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "launcher.h"

#define HISTO_MAX 16

struct histo {
	const double *bounds;   /* upper bounds, ascending; +Inf is implied */
	int n;
	uint64_t counts[HISTO_MAX];   /* per bucket (not cumulative) */
	uint64_t inf;                 /* above the last bound */
	double sum;
	uint64_t count;
};

/* What a service counts; lives in the service, updated by service.c and
 * proxy.c, rendered by prometheus.c (prometheus_metrics). */
struct svc_metrics {
	uint64_t by_status[600];      /* requests by response status */
	struct histo cold_queue;      /* start -> endpoint (Slurm: queue wait) */
	struct histo cold_boot;       /* endpoint -> healthy */
	struct histo ttfb;            /* request sent to the service -> response head */
	uint64_t fail[LFAIL_NKINDS];  /* failed starts by kind (launch_fail_name) */
	double instance_seconds;      /* of instances already gone */
	uint64_t cold_starts;         /* starts that reached READY */
};

void metrics_init(struct svc_metrics *m);
void histo_observe(struct histo *h, double v);

#endif
