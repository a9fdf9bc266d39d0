/* api.h - state as JSON, Prometheus metrics, the live event stream and
 * the one-hour history behind the status page. */
#ifndef SG_API_H
#define SG_API_H

#include <stdbool.h>

#include <jansson.h>

struct event_base;
struct hconn;
struct service;

void api_init(struct event_base *base);
void api_free(void);
/* One service: the seed's {"Name","started","running","reason"}, or all of it. */
json_t *api_service_json(const struct service *s, bool seed_style);
/* {"version","service_management","services":[...]} */
json_t *api_state_json(void);
/* GET /metrics */
void api_metrics(struct hconn *c);
/* GET /api/events: the connection becomes an SSE stream of state. */
void api_events_subscribe(struct hconn *c);
void api_events_unsubscribe(struct hconn *c);
/* GET /api/history: requests/s and instances per 10 s over the last hour. */
void api_history(struct hconn *c);

#endif
