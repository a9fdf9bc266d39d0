/* events.h - the live event stream and the one-hour history behind the
 * status page. */
#ifndef SG_EVENTS_H
#define SG_EVENTS_H

struct event_base;
struct hconn;

/* Start sampling the history (every 10 s on BASE). */
void events_init(struct event_base *base);
void events_free(void);
/* GET /api/events: the connection becomes an SSE stream of the state
 * (api_state_json), once a second; a slow reader skips a beat. */
void events_subscribe(struct hconn *c);
/* The connection C closed (only ever after events_subscribe). */
void events_unsubscribe(struct hconn *c);
/* GET /api/history: requests/s and instances per 10 s over the last hour. */
void events_history(struct hconn *c);

#endif
