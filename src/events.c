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
#include "launcher.h"
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

/* A client following a service's log. */
struct follower {
	struct hconn *c;
	char *name;        /* the service's (it may leave the config) */
	uint64_t from;     /* the next line it gets */
};

static struct hist *hists;
static size_t nhists;
/* A client reading the state's stream. */
struct sub {
	struct hconn *c;
	bool full;         /* it may see the output reasons quote */
};

static struct sub *subs;
static size_t nsubs, subcap;
static struct follower *fols;
static size_t nfols, folcap;
static struct event *tick_ev, *sample_ev, *logs_ev;

/* --- live events --- */

static void send_state(struct hconn *c, bool full)
{
	json_t *o = api_state_json(false);
	char *s;

	if (!full)
		api_hide_output(o, NULL);
	s = reply_dumps(o, false);
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
		if (http_pending_output(subs[k].c) < HTTP_HIGH_MARK)   /* a slow reader skips a beat */
			send_state(subs[k].c, subs[k].full);
	if (nsubs > 0)
		event_add(tick_ev, &(struct timeval){1, 0});
}

void events_subscribe(struct hconn *c, bool full)
{
	http_respond(c, 200,
		     SG_SEC_HEADERS_DATA "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
		     "X-Accel-Buffering: no\r\n",
		     -1);
	http_send(c, "retry: 2000\n\n", 13);
	send_state(c, full);
	if (nsubs == subcap) {
		subcap = subcap ? subcap * 2 : 8;
		subs = xrealloc(subs, subcap * sizeof *subs);
	}
	subs[nsubs++] = (struct sub){c, full};
	if (!event_pending(tick_ev, EV_TIMEOUT, NULL))
		event_add(tick_ev, &(struct timeval){1, 0});
}

static void follower_drop(size_t k)
{
	free(fols[k].name);
	fols[k] = fols[--nfols];
}

void events_unsubscribe(struct hconn *c)
{
	for (size_t k = 0; k < nsubs; k++)
		if (subs[k].c == c) {
			subs[k] = subs[--nsubs];
			return;
		}
	for (size_t k = 0; k < nfols; k++)
		if (fols[k].c == c) {
			follower_drop(k);
			return;
		}
}

/* --- following a service's log --- */

/* LINES ('\n'-terminated) to C, one SSE event each. A CR in a line (a
 * progress bar, or request data a service echoes) is a space: SSE ends a
 * line at a CR too, and the rest would be a field of the writer's choosing
 * ("event: end"). */
static void send_lines(struct hconn *c, struct evbuffer *lines)
{
	struct evbuffer *b = evbuffer_new();
	char *line;
	size_t len, n;

	while ((line = evbuffer_readln(lines, &len, EVBUFFER_EOL_LF)) != NULL) {
		for (char *cr = memchr(line, '\r', len); cr; cr = memchr(cr, '\r', len - (size_t)(cr - line)))
			*cr = ' ';
		evbuffer_add(b, "data: ", 6);
		evbuffer_add(b, line, len);
		evbuffer_add(b, "\n\n", 2);
		free(line);
	}
	n = evbuffer_get_length(b);
	if (n > 0)
		http_send(c, evbuffer_pullup(b, -1), n);
	evbuffer_free(b);
}

static void logs_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	for (size_t k = nfols; k-- > 0;) {
		struct follower *f;
		struct service *s;
		struct evbuffer *b;
		char *cause = NULL;
		if (k >= nfols)   /* a finish below closed more than its own */
			continue;
		f = &fols[k];
		s = service_by_name(f->name);
		if (s == NULL) {
			struct hconn *c = f->c;
			follower_drop(k);   /* before the finish: it may close C at once */
			http_send(c, "event: end\ndata: the service left the config\n\n", 46);
			http_finish(c);
			continue;
		}
		if (http_pending_output(f->c) >= HTTP_HIGH_MARK)   /* a slow reader skips a beat */
			continue;
		b = evbuffer_new();
		if (service_config(s)->launcher->logs(s, &f->from, 1000, b, &cause) == 0)
			send_lines(f->c, b);
		free(cause);
		evbuffer_free(b);
	}
	if (nfols > 0)
		event_add(logs_ev, &(struct timeval){0, 500000});
}

void events_logs_follow(struct hconn *c, struct service *s, struct evbuffer *tail, uint64_t from)
{
	http_respond(c, 200,
		     SG_SEC_HEADERS_DATA "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
		     "X-Accel-Buffering: no\r\n",
		     -1);
	http_send(c, "retry: 2000\n\n", 13);
	send_lines(c, tail);
	if (nfols == folcap) {
		folcap = folcap ? folcap * 2 : 8;
		fols = xrealloc(fols, folcap * sizeof *fols);
	}
	fols[nfols++] = (struct follower){c, xstrdup(service_config(s)->name), from};
	if (!event_pending(logs_ev, EV_TIMEOUT, NULL))
		event_add(logs_ev, &(struct timeval){0, 500000});
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

/* Forget the history of services no longer in the config (a reload
 * removed them; they may be freed, so their pointers are only compared). */
static void hist_prune(void)
{
	size_t kept = 0;

	for (size_t k = 0; k < nhists; k++) {
		bool live = false;
		for (size_t q = 0; q < services_count() && !live; q++)
			live = service_at(q) == hists[k].s;
		if (live)
			hists[kept++] = hists[k];
	}
	nhists = kept;
}

static void sample_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	hist_prune();
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
	logs_ev = evtimer_new(base, logs_cb, NULL);
	event_add(sample_ev, &(struct timeval){HIST_STEP, 0});
}

void events_free(void)
{
	if (tick_ev)
		event_free(tick_ev);
	if (sample_ev)
		event_free(sample_ev);
	if (logs_ev)
		event_free(logs_ev);
	while (nfols > 0)
		follower_drop(nfols - 1);
	free(hists);
	free(subs);
	free(fols);
	tick_ev = sample_ev = logs_ev = NULL;
	hists = NULL;
	subs = NULL;
	fols = NULL;
	nhists = nsubs = subcap = nfols = folcap = 0;
}
