/* prometheus.h - GET /metrics in the Prometheus text format. */
#ifndef SG_PROMETHEUS_H
#define SG_PROMETHEUS_H

#include <stddef.h>

struct hconn;

/* Answer C with every metric (names and labels: README, Metrics). */
void prometheus_metrics(struct hconn *c);
/* Escape a label value (\\, \", \n) into OUT (LEN bytes). */
void metrics_label(char *out, size_t len, const char *value);

#endif
