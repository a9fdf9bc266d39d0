/* events.c - the live event stream (GET /api/events: the state as SSE,
 * once a second) and the one-hour history behind the status page
 * (GET /api/history: requests/s and instances per 10 s). */
#include "events.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include "api.h"
#include "config.h"
#include "http.h"
#include "metrics.h"
#include "reply.h"
#include "service.h"
#include "util.h"

#define HIST_N 360          /* samples kept: one hour ... */
#define HIST_STEP 10        /* ... of 10 s steps */

struct hist {
	const struct service *s;
	uint64_t last_requests;     /* answered by the last sample (0 before the first) */
	int next, count;
	unsigned requests[HIST_N];  /* answered in the step up to t */
	unsigned short inst[HIST_N];
	double t[HIST_N];
};

static struct hist *hists;
static size_t nhists;
static struct hconn **subs;
static size_t nsubs, subcap;
static struct event *tick_ev, *sample_ev;

/* --- live events --- */

static void send_state(struct hconn *c)
{
	json_t *o = api_state_json(false);
	char *s = reply_dumps(o, false);
	struct evbuffer *b = evbuffer_new();
	size_t n;

	evbuffer_add_printf(b, "event: state\ndata: %s\n\n", s);
	n = evbuffer_get_length(b);
	http_send(c, evbuffer_pullup(b, -1), n);
	evbuffer_free(b);
	free(s);
	json_decref(o);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	for (size_t k = 0; k < nsubs; k++)
		if (http_pending_output(subs[k]) < HTTP_HIGH_MARK)   /* a slow reader skips a beat */
			send_state(subs[k]);
	if (nsubs > 0)
		event_add(tick_ev, &(struct timeval){1, 0});
}

void events_subscribe(struct hconn *c)
{
	http_respond(c, 200,
		     SG_SEC_HEADERS_DATA "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
		     "X-Accel-Buffering: no\r\n",
		     -1);
	http_send(c, "retry: 2000\n\n", 13);
	send_state(c);
	if (nsubs == subcap) {
		subcap = subcap ? subcap * 2 : 8;
		subs = xrealloc(subs, subcap * sizeof *subs);
	}
	subs[nsubs++] = c;
	if (!event_pending(tick_ev, EV_TIMEOUT, NULL))
		event_add(tick_ev, &(struct timeval){1, 0});
}

void events_unsubscribe(struct hconn *c)
{
	for (size_t k = 0; k < nsubs; k++)
		if (subs[k] == c) {
			subs[k] = subs[--nsubs];
			return;
		}
}

/* --- history --- */

static struct hist *hist_for(const struct service *s)
{
	for (size_t k = 0; k < nhists; k++)
		if (hists[k].s == s)
			return &hists[k];
	hists = xrealloc(hists, (nhists + 1) * sizeof *hists);
	memset(&hists[nhists], 0, sizeof *hists);
	/* the first sample counts from the service's start (the gateway's, or
	 * its reload), not from the first sample: last_requests stays 0 */
	hists[nhists].s = s;
	return &hists[nhists++];
}

/* Requests answered for S: the sum slurmgate_requests_total shows. */
static uint64_t answered(const struct service *s)
{
	const struct svc_metrics *m = service_metrics((struct service *)s);
	uint64_t n = 0;

	for (int code = 100; code < 600; code++)
		n += m->by_status[code];
	return n;
}

static void sample_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	for (size_t k = 0; k < services_count(); k++) {
		struct service *s = service_at(k);
		struct hist *h = hist_for(s);
		uint64_t r = answered(s);
		int ready = 0;
		for (struct instance *i = service_first_instance(s); i; i = service_next_instance(i))
			ready += i->state == INST_READY || i->state == INST_DRAINING;
		/* fewer than before: another service at a freed one's address */
		h->requests[h->next] = (unsigned)(r >= h->last_requests ? r - h->last_requests : r);
		h->inst[h->next] = (unsigned short)ready;
		h->t[h->next] = wall_s();
		h->last_requests = r;
		h->next = (h->next + 1) % HIST_N;
		if (h->count < HIST_N)
			h->count++;
	}
	event_add(sample_ev, &(struct timeval){HIST_STEP, 0});
}

void events_history(struct hconn *c)
{
	json_t *o = json_object();

	for (size_t k = 0; k < services_count(); k++) {
		struct service *sv = service_at(k);
		struct hist *h = hist_for(sv);
		json_t *t = json_array(), *rps = json_array(), *req = json_array(), *inst = json_array();
		for (int q = 0; q < h->count; q++) {
			int at = (h->next - h->count + q + HIST_N) % HIST_N;
			json_array_append_new(t, reply_real(h->t[at]));
			json_array_append_new(rps, reply_real((double)h->requests[at] / HIST_STEP));
			json_array_append_new(req, json_integer(h->requests[at]));
			json_array_append_new(inst, json_integer(h->inst[at]));
		}
		json_object_set_new(o, service_config(sv)->name,
				    json_pack("{s:o,s:o,s:o,s:o}", "t", t, "rps", rps, "requests", req,
					      "instances", inst));
	}
	reply_json(c, 200, json_pack("{s:i,s:o}", "step_seconds", HIST_STEP, "services", o), NULL);
}

void events_init(struct event_base *base)
{
	tick_ev = evtimer_new(base, tick_cb, NULL);
	sample_ev = evtimer_new(base, sample_cb, NULL);
	event_add(sample_ev, &(struct timeval){HIST_STEP, 0});
}

void events_free(void)
{
	if (tick_ev)
		event_free(tick_ev);
	if (sample_ev)
		event_free(sample_ev);
	free(hists);
	free(subs);
	tick_ev = sample_ev = NULL;
	hists = NULL;
	subs = NULL;
	nhists = nsubs = subcap = 0;
}
