/* refusal.h - errors the gateway answers itself: counted for /metrics, and
 * logged once per service and interval with a count, so that a client
 * hammering a failed service costs a few log lines, not one per request. */
#ifndef SG_REFUSAL_H
#define SG_REFUSAL_H

#include <stdint.h>

struct event_base;
struct evbuffer;

/* Log identical errors once per INTERVAL_S seconds (0: every one). Called
 * at start and on every reload. */
void refusal_configure(struct event_base *base, int interval_s);

/* A request of SERVICE got STATUS with REASON from the gateway. KIND is the
 * refusal's class for slurmgate_requests_refused_total ("start_failed",
 * "starting", ...), or NULL for an error that is not a refusal (a 502 from
 * a broken connection; a failed start's 502 is "start_failed"). */
void refusal_note(const char *service, int status, const char *reason, const char *kind);

/* How many refusals of SERVICE were noted (all kinds). */
uint64_t refusal_count(const char *service);

/* Append the slurmgate_requests_refused_total family. */
void refusal_metrics(struct evbuffer *b);

/* Log what is still counted, free everything (at exit). */
void refusal_free(void);

#endif
