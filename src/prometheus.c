/* prometheus.c - GET /metrics: the gateway's and each service's counters
 * (metrics.h, instance states) in the Prometheus text format 0.0.4. */
#include "prometheus.h"

#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "auth_limit.h"
#include "config.h"
#include "http.h"
#include "launcher.h"
#include "metrics.h"
#include "proxy.h"
#include "refusal.h"
#include "service.h"
#include "usage.h"
#include "util.h"
#include "version.h"

/* Append "name_bucket{labels,le=...}" ... lines; labels like service="x". */
static void histo_write(struct evbuffer *b, const char *name, const char *labels, const struct histo *h)
{
	uint64_t cum = 0;

	for (int k = 0; k < h->n; k++) {
		cum += h->counts[k];
		evbuffer_add_printf(b, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, h->bounds[k],
				    (unsigned long long)cum);
	}
	evbuffer_add_printf(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels,
			    (unsigned long long)h->count);
	evbuffer_add_printf(b, "%s_sum{%s} %.6f\n", name, labels, h->sum);
	evbuffer_add_printf(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
}

/* Escape a label value (\\, \", \n) into out. */
void metrics_label(char *out, size_t len, const char *value)
{
	size_t o = 0;

	for (const char *p = value; *p && o + 3 < len; p++) {
		if (*p == '\\' || *p == '"') {
			out[o++] = '\\';
			out[o++] = *p;
		} else if (*p == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else {
			out[o++] = *p;
		}
	}
	out[o] = '\0';
}


static void family(struct evbuffer *b, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void prometheus_metrics(struct hconn *c)
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
	family(b, "slurmgate_configs_live", "gauge",
	       "Configs in memory: the one in force and those still referred to after a reload.");
	evbuffer_add_printf(b, "slurmgate_configs_live %zu\n", config_live());

	family(b, "slurmgate_requests_total", "counter", "Requests answered, by service and status code.");
	EACH {
		struct svc_metrics *m = service_metrics(SVC);
		const char *nm = LBL;
		for (int code = 100; code < 600; code++)
			if (m->by_status[code])
				evbuffer_add_printf(b, "slurmgate_requests_total{service=\"%s\",code=\"%d\"} %llu\n",
						    nm, code, (unsigned long long)m->by_status[code]);
	}
	refusal_metrics(b);
	auth_limit_metrics(b);
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
		for (int q = 0; q < LFAIL_NKINDS; q++)
			evbuffer_add_printf(b, "slurmgate_start_failures_total{service=\"%s\",reason=\"%s\"} %llu\n",
					    nm, launch_fail_name((enum launch_fail)q),
					    (unsigned long long)m->fail[q]);
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
	family(b, "slurmgate_key_requests_total", "counter",
	       "Requests to a service by api key (its name or keyed digest prefix; \"-\" without api_keys).");
	for (size_t k = 0; k < usage_count(); k++) {
		const struct usage *u = usage_at(k);
		metrics_label(name, sizeof name, u->service);
		metrics_label(lbl, sizeof lbl, u->key);
		evbuffer_add_printf(b, "slurmgate_key_requests_total{service=\"%s\",key=\"%s\"} %llu\n", name,
				    lbl, (unsigned long long)u->requests);
	}
	family(b, "slurmgate_tokens_total", "counter",
	       "Tokens the service's responses reported in OpenAI's usage, by service, api key and kind.");
	for (size_t k = 0; k < usage_count(); k++) {
		const struct usage *u = usage_at(k);
		metrics_label(name, sizeof name, u->service);
		metrics_label(lbl, sizeof lbl, u->key);
		evbuffer_add_printf(b, "slurmgate_tokens_total{service=\"%s\",key=\"%s\",kind=\"prompt\"} %llu\n",
				    name, lbl, (unsigned long long)u->prompt_tokens);
		evbuffer_add_printf(b,
				    "slurmgate_tokens_total{service=\"%s\",key=\"%s\",kind=\"completion\"} %llu\n",
				    name, lbl, (unsigned long long)u->completion_tokens);
	}
#undef EACH
#undef SVC
#undef LBL
	len = evbuffer_get_length(b);
	http_reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", SG_SEC_HEADERS_DATA,
		   (const char *)evbuffer_pullup(b, -1), len);
	evbuffer_free(b);
}
