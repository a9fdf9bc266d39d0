/* events.h - the live event stream and the one-hour history behind the
 * status page. */
#ifndef SG_EVENTS_H
#define SG_EVENTS_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct evbuffer;
struct hconn;
struct service;

/* Start sampling the history (every 10 s on BASE). */
void events_init(struct event_base *base);
void events_free(void);
/* GET /api/events: the connection becomes an SSE stream of the state
 * (api_state_json), once a second; a slow reader skips a beat. FULL: with
 * the output failed starts' reasons quote (auth_sees_output), else
 * without (api_hide_output). */
void events_subscribe(struct hconn *c, bool full);
/* GET /api/services/<name>/logs?follow=1: the connection becomes an SSE
 * stream of S's log lines, one "data:" event each: TAIL first, then the
 * lines numbered FROM and later as they come (the launcher's logs op,
 * looked at every 0.5 s). It ends when S leaves the config. */
void events_logs_follow(struct hconn *c, struct service *s, struct evbuffer *tail, uint64_t from);
/* The connection C closed (only ever after events_subscribe or
 * events_logs_follow). */
void events_unsubscribe(struct hconn *c);
/* GET /api/history: requests/s and instances per 10 s over the last hour. */
void events_history(struct hconn *c);

#endif
