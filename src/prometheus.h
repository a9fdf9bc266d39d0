/* prometheus.h - GET /metrics in the Prometheus text format. */
#ifndef SG_PROMETHEUS_H
#define SG_PROMETHEUS_H

struct hconn;

/* Answer C with every metric (names and labels: README, Metrics). */
void prometheus_metrics(struct hconn *c);

#endif
