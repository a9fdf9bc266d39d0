/* api.c - state as JSON, Prometheus metrics, the live event stream and
 * the one-hour history behind the status page. */
#include "api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "http.h"
#include "metrics.h"
#include "proxy.h"
#include "service.h"
#include "slurm_agent.h"
#include "util.h"
#include "version.h"

#define HIST_N 360          /* samples kept: one hour ... */
#define HIST_STEP 10        /* ... of 10 s steps */

struct hist {
	const struct service *s;
	uint64_t last_requests;
	int next, count;
	double rps[HIST_N];
	unsigned short inst[HIST_N];
	double t[HIST_N];
};

static struct hist *hists;
static size_t nhists;
static struct hconn **subs;
static size_t nsubs, subcap;
static struct event *tick_ev, *sample_ev;

/* --- JSON --- */

static json_t *instance_json(const struct instance *i)
{
	json_t *o = json_pack("{s:i,s:s,s:s,s:i,s:i,s:I,s:f}", "index", i->index, "state",
			      instance_state_name(i->state), "detail", i->detail, "port", i->remote_port,
			      "in_flight", i->inflight, "served", (json_int_t)i->served,
			      "age_seconds", now_s() - i->created);

	json_object_set_new(o, "address", i->addr_str[0] ? json_string(i->addr_str) : json_null());
	json_object_set_new(o, "pid", i->pid > 0 ? json_integer(i->pid) : json_null());
	json_object_set_new(o, "job_id", i->job_id[0] ? json_string(i->job_id) : json_null());
	json_object_set_new(o, "node", i->node[0] ? json_string(i->node) : json_null());
	json_object_set_new(o, "time_left_seconds",
			    i->deadline > 0 ? json_real(i->deadline - now_s()) : json_null());
	json_object_set_new(o, "expected_start",
			    i->expected_start > 0 ? json_real(i->expected_start) : json_null());
	return o;
}

json_t *api_service_json(const struct service *s, bool seed_style)
{
	const struct svc_config *cfg = service_config(s);
	enum svc_state st = service_state(s);
	char reason[600];
	double idle = service_idle_left(s);
	const char *err = service_last_error(s);
	json_t *o, *insts;
	struct instance *i;

	double eta = service_expected_start_in(s);

	service_reason(s, reason, sizeof reason);
	o = json_pack("{s:s,s:b,s:b,s:s}", "Name", cfg->name, "started",
		      st == SVC_STARTING || st == SVC_READY, "running", st == SVC_READY, "reason", reason);
	if (seed_style)
		return o;   /* the seed's keys only: the expected start is in the reason */
	/* Slurm's expected start of a pending job, in seconds from now */
	json_object_set_new(o, "expected_start_in", eta >= 0 ? json_real(eta) : json_null());
	json_object_set_new(o, "name", json_string(cfg->name));
	json_object_set_new(o, "route_name", json_string(cfg->route_name));
	json_object_set_new(o, "state", json_string(service_state_name(st)));
	json_object_set_new(o, "launcher", json_string(cfg->launcher == LAUNCHER_LOCAL ? "local" : "slurm"));
	if (cfg->launcher == LAUNCHER_SLURM) {
		const char *ag = sagent_status(runner_for(cfg));
		json_object_set_new(o, "slurm_agent", ag ? json_string(ag) : json_null());
	}
	json_object_set_new(o, "in_flight", json_integer(service_inflight(s)));
	json_object_set_new(o, "waiting", json_integer(service_waiting(s)));
	json_object_set_new(o, "idle_seconds_left", idle >= 0 ? json_real(idle) : json_null());
	json_object_set_new(o, "timeout", json_integer(cfg->timeout));
	json_object_set_new(o, "start_timeout", json_integer(cfg->start_timeout));
	json_object_set_new(o, "min_instances", json_integer(cfg->min_instances));
	json_object_set_new(o, "max_instances", json_integer(cfg->max_instances));
	json_object_set_new(o, "last_error", err[0] ? json_string(err) : json_null());
	json_object_set_new(o, "requests", json_integer((json_int_t)service_requests(s)));
	json_object_set_new(o, "starts", json_integer((json_int_t)service_starts(s)));
	json_object_set_new(o, "start_failures", json_integer((json_int_t)service_start_failures(s)));
	insts = json_array();
	for (i = service_first_instance(s); i; i = service_next_instance(i))
		json_array_append_new(insts, instance_json(i));
	json_object_set_new(o, "instances", insts);
	return o;
}

json_t *api_state_json(void)
{
	json_t *a = json_array();

	for (size_t k = 0; k < services_count(); k++)
		json_array_append_new(a, api_service_json(service_at(k), false));
	return json_pack("{s:s,s:b,s:o}", "version", SLURMGATE_VERSION, "service_management",
			 services_managed, "services", a);
}

/* --- Prometheus --- */

static void family(struct evbuffer *b, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void api_metrics(struct hconn *c)
{
	struct evbuffer *b = evbuffer_new();
	size_t n = services_count(), len;
	char lbl[2400], name[2200];

#define EACH for (size_t k = 0; k < n; k++)
#define SVC (service_at(k))
#define LBL (metrics_label(name, sizeof name, service_config(SVC)->name), name)

	family(b, "slurmgate_build_info", "gauge", "Version of the running slurmgate.");
	evbuffer_add_printf(b, "slurmgate_build_info{version=\"%s\"} 1\n", SLURMGATE_VERSION);
	family(b, "slurmgate_service_management_enabled", "gauge",
	       "1 while services may be started (the seed's service management).");
	evbuffer_add_printf(b, "slurmgate_service_management_enabled %d\n", services_managed ? 1 : 0);
	family(b, "slurmgate_connections", "gauge", "Open connections, by side.");
	evbuffer_add_printf(b, "slurmgate_connections{side=\"client\"} %zu\n", http_count(true));
	evbuffer_add_printf(b, "slurmgate_connections{side=\"upstream\"} %zu\n", http_count(false));
	family(b, "slurmgate_buffer_bytes", "gauge",
	       "Bytes held in the gateway's buffers (unparsed input, unsent output, "
	       "/v1 bodies read for routing, held bodies).");
	evbuffer_add_printf(b, "slurmgate_buffer_bytes %zu\n", http_buffered());
	family(b, "slurmgate_buffer_limit_bytes", "gauge",
	       "max_buffer_bytes: past it, the connections holding the most stop reading.");
	evbuffer_add_printf(b, "slurmgate_buffer_limit_bytes %zu\n", http_buffer_cap());
	family(b, "slurmgate_held_body_bytes", "gauge",
	       "Request body bytes held while services start (bounded by max_held_body).");
	evbuffer_add_printf(b, "slurmgate_held_body_bytes %zu\n", proxy_held_bytes());

	family(b, "slurmgate_requests_total", "counter", "Requests answered, by service and status code.");
	EACH {
		struct svc_metrics *m = service_metrics(SVC);
		const char *nm = LBL;
		for (int code = 100; code < 600; code++)
			if (m->by_status[code])
				evbuffer_add_printf(b, "slurmgate_requests_total{service=\"%s\",code=\"%d\"} %llu\n",
						    nm, code, (unsigned long long)m->by_status[code]);
	}
	family(b, "slurmgate_requests_in_flight", "gauge", "Requests being answered by an instance.");
	EACH evbuffer_add_printf(b, "slurmgate_requests_in_flight{service=\"%s\"} %d\n", LBL,
				 service_inflight(SVC));
	family(b, "slurmgate_requests_waiting", "gauge", "Requests held while the service starts.");
	EACH evbuffer_add_printf(b, "slurmgate_requests_waiting{service=\"%s\"} %d\n", LBL,
				 service_waiting(SVC));
	family(b, "slurmgate_cold_starts_total", "counter", "Starts that reached a healthy instance.");
	EACH evbuffer_add_printf(b, "slurmgate_cold_starts_total{service=\"%s\"} %llu\n", LBL,
				 (unsigned long long)service_metrics(SVC)->cold_starts);
	family(b, "slurmgate_cold_start_seconds", "histogram",
	       "Cold start time by phase: queue (start asked to the service reachable: submit, queue "
	       "wait, tunnel) and boot (reachable to healthy).");
	EACH {
		snprintf(lbl, sizeof lbl, "service=\"%s\",phase=\"queue\"", LBL);
		histo_write(b, "slurmgate_cold_start_seconds", lbl, &service_metrics(SVC)->cold_queue);
		snprintf(lbl, sizeof lbl, "service=\"%s\",phase=\"boot\"", LBL);
		histo_write(b, "slurmgate_cold_start_seconds", lbl, &service_metrics(SVC)->cold_boot);
	}
	family(b, "slurmgate_start_failures_total", "counter", "Starts that failed, by reason.");
	EACH {
		struct svc_metrics *m = service_metrics(SVC);
		const char *nm = LBL;
		const struct { const char *r; uint64_t v; } f[] = {
			{"script_exited", m->fail_exited}, {"start_timeout", m->fail_timeout},
			{"job_ended", m->fail_job},        {"submit_failed", m->fail_submit},
			{"tunnel_failed", m->fail_tunnel}, {"other", m->fail_other},
		};
		for (size_t q = 0; q < sizeof f / sizeof *f; q++)
			evbuffer_add_printf(b, "slurmgate_start_failures_total{service=\"%s\",reason=\"%s\"} %llu\n",
					    nm, f[q].r, (unsigned long long)f[q].v);
	}
	family(b, "slurmgate_instances", "gauge", "Instances by state.");
	EACH {
		int count[INST_NSTATES] = {0};
		const char *nm = LBL;
		for (struct instance *i = service_first_instance(SVC); i; i = service_next_instance(i))
			count[i->state]++;
		for (int st = 0; st < INST_GONE; st++)   /* a gone instance is listed nowhere */
			evbuffer_add_printf(b, "slurmgate_instances{service=\"%s\",state=\"%s\"} %d\n", nm,
					    instance_state_name((enum inst_state)st), count[st]);
	}
	family(b, "slurmgate_instance_seconds_total", "counter",
	       "Seconds instances existed: the resource cost the idle timeout limits.");
	EACH {
		double t = service_metrics(SVC)->instance_seconds;
		for (struct instance *i = service_first_instance(SVC); i; i = service_next_instance(i))
			t += now_s() - i->created;
		evbuffer_add_printf(b, "slurmgate_instance_seconds_total{service=\"%s\"} %.3f\n", LBL, t);
	}
	family(b, "slurmgate_instance_requests_in_flight", "gauge", "Requests in flight per instance.");
	EACH {
		const char *nm = LBL;
		for (struct instance *i = service_first_instance(SVC); i; i = service_next_instance(i))
			evbuffer_add_printf(b,
					    "slurmgate_instance_requests_in_flight{service=\"%s\",instance=\"%d\"} %d\n",
					    nm, i->index, i->inflight);
	}
	family(b, "slurmgate_time_to_first_byte_seconds", "histogram",
	       "Time from sending a request to the service until its response head.");
	EACH {
		snprintf(lbl, sizeof lbl, "service=\"%s\"", LBL);
		histo_write(b, "slurmgate_time_to_first_byte_seconds", lbl, &service_metrics(SVC)->ttfb);
	}
#undef EACH
#undef SVC
#undef LBL
	len = evbuffer_get_length(b);
	http_reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", SG_SEC_HEADERS_DATA,
		   (const char *)evbuffer_pullup(b, -1), len);
	evbuffer_free(b);
}

/* --- live events --- */

static void send_state(struct hconn *c)
{
	json_t *o = api_state_json();
	char *s = json_dumps(o, JSON_COMPACT);
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

void api_events_subscribe(struct hconn *c)
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

void api_events_unsubscribe(struct hconn *c)
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
	hists[nhists].s = s;
	hists[nhists].last_requests = service_requests(s);
	return &hists[nhists++];
}

static void sample_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	for (size_t k = 0; k < services_count(); k++) {
		struct service *s = service_at(k);
		struct hist *h = hist_for(s);
		uint64_t r = service_requests(s);
		int ready = 0;
		for (struct instance *i = service_first_instance(s); i; i = service_next_instance(i))
			ready += i->state == INST_READY || i->state == INST_DRAINING;
		h->rps[h->next] = (double)(r - h->last_requests) / HIST_STEP;
		h->inst[h->next] = (unsigned short)ready;
		h->t[h->next] = wall_s();
		h->last_requests = r;
		h->next = (h->next + 1) % HIST_N;
		if (h->count < HIST_N)
			h->count++;
	}
	event_add(sample_ev, &(struct timeval){HIST_STEP, 0});
}

void api_history(struct hconn *c)
{
	json_t *o = json_object();
	char *s;

	for (size_t k = 0; k < services_count(); k++) {
		struct service *sv = service_at(k);
		struct hist *h = hist_for(sv);
		json_t *t = json_array(), *rps = json_array(), *inst = json_array();
		for (int q = 0; q < h->count; q++) {
			int at = (h->next - h->count + q + HIST_N) % HIST_N;
			json_array_append_new(t, json_real(h->t[at]));
			json_array_append_new(rps, json_real(h->rps[at]));
			json_array_append_new(inst, json_integer(h->inst[at]));
		}
		json_object_set_new(o, service_config(sv)->name,
				    json_pack("{s:o,s:o,s:o}", "t", t, "rps", rps, "instances", inst));
	}
	o = json_pack("{s:i,s:o}", "step_seconds", HIST_STEP, "services", o);
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	http_reply(c, 200, "application/json", SG_SEC_HEADERS_DATA, s, strlen(s));
	free(s);
}

void api_init(struct event_base *base)
{
	tick_ev = evtimer_new(base, tick_cb, NULL);
	sample_ev = evtimer_new(base, sample_cb, NULL);
	event_add(sample_ev, &(struct timeval){HIST_STEP, 0});
}

void api_free(void)
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
