/* api.c - the state as JSON: one service (the seed's shape, or all of it)
 * and the whole gateway; served by admin.c, streamed by events.c. */
#include "api.h"

#include <jansson.h>

#include <stdlib.h>

#include "access.h"
#include "config.h"
#include "auth.h"
#include "launcher.h"
#include "reply.h"
#include "service.h"
#include "usage.h"
#include "util.h"
#include "version.h"

static json_t *instance_json(const struct instance *i, const struct launcher_ops *lops)
{
	json_t *o = json_pack("{s:i,s:s,s:s,s:i,s:i,s:I,s:o}", "index", i->index, "state",
			      instance_state_name(i->state), "detail", i->detail, "port", i->remote_port,
			      "in_flight", i->inflight, "served", (json_int_t)i->served,
			      "age_seconds", reply_real(now_s() - i->created));

	json_object_set_new(o, "address", i->addr_str[0] ? json_string(i->addr_str) : json_null());
	/* what the launcher knows: these three, null where it has none */
	json_object_set_new(o, "pid", json_null());
	json_object_set_new(o, "job_id", json_null());
	json_object_set_new(o, "node", json_null());
	if (lops->describe) {
		json_t *d = json_object();
		lops->describe(i, d);
		json_object_update_existing(o, d);
		json_decref(d);
	}
	json_object_set_new(o, "time_left_seconds",
			    i->deadline > 0 ? reply_real(i->deadline - now_s()) : json_null());
	json_object_set_new(o, "expected_start",
			    i->expected_start > 0 ? reply_real(i->expected_start) : json_null());
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
	/* the seed's "Name" in the seed's answers, "name" everywhere else */
	o = json_pack("{s:s,s:b,s:b,s:s}", seed_style ? "Name" : "name", cfg->name, "started",
		      st == SVC_STARTING || st == SVC_READY, "running", st == SVC_READY, "reason", reason);
	if (seed_style)
		return o;   /* the seed's keys only: the expected start is in the reason */
	json_object_set_new(o, "route_name", json_string(cfg->route_name));
	json_object_set_new(o, "state", json_string(service_state_name(st)));
	json_object_set_new(o, "launcher", json_string(cfg->launcher->name));
	/* Slurm's expected start of a pending job, in seconds from now */
	json_object_set_new(o, "expected_start_in", eta >= 0 ? reply_real(eta) : json_null());
	if (cfg->launcher->describe_service)
		cfg->launcher->describe_service(cfg, o);
	json_object_set_new(o, "in_flight", json_integer(service_inflight(s)));
	json_object_set_new(o, "waiting", json_integer(service_waiting(s)));
	json_object_set_new(o, "idle_seconds_left", idle >= 0 ? reply_real(idle) : json_null());
	json_object_set_new(o, "timeout", json_integer(cfg->timeout));
	json_object_set_new(o, "start_timeout", json_integer(cfg->start_timeout));
	json_object_set_new(o, "min_instances", json_integer(cfg->min_instances));
	json_object_set_new(o, "max_instances", json_integer(cfg->max_instances));
	json_object_set_new(o, "last_error", err[0] ? json_string(err) : json_null());
	json_object_set_new(o, "requests", json_integer((json_int_t)service_requests(s)));
	json_object_set_new(o, "starts", json_integer((json_int_t)service_starts(s)));
	json_object_set_new(o, "start_failures", json_integer((json_int_t)service_start_failures(s)));
	json_object_set_new(o, "usage", usage_json(cfg->name));
	insts = json_array();
	for (i = service_first_instance(s); i; i = service_next_instance(i))
		json_array_append_new(insts, instance_json(i, cfg->launcher));
	json_object_set_new(o, "instances", insts);
	return o;
}

json_t *api_state_json(bool seed_names)
{
	json_t *a = json_array();

	for (size_t k = 0; k < services_count(); k++) {
		json_t *o = api_service_json(service_at(k), false);
		if (seed_names)   /* /info: the seed's clients read "Name" */
			json_object_set_new(o, "Name", json_string(service_config(service_at(k))->name));
		json_array_append_new(a, o);
	}
	return json_pack("{s:s,s:b,s:b,s:b,s:o}", "version", SLURMGATE_VERSION, "service_management",
			 services_managed, "admin_token_required", auth_admin_token_required(),
			 "public_status", auth_public_status(), "services", a);
}

/* One member of an object or array: a string is redacted in place. */
static void hide_in(json_t *x, const char *service)
{
	char *r;

	if (!json_is_string(x)) {
		api_hide_output(x, service);
		return;
	}
	r = access_redact_output(json_string_value(x), service);
	if (r != NULL)
		json_string_set(x, r);
	free(r);
}

void api_hide_output(json_t *v, const char *service)
{
	const char *k;
	json_t *x;
	size_t q;

	if (json_is_object(v)) {
		/* a service's object names it: its logs are where the output is */
		const char *n = json_string_value(json_object_get(v, "name"));
		if (n == NULL)
			n = json_string_value(json_object_get(v, "Name"));
		if (n != NULL)
			service = n;
		json_object_foreach(v, k, x)
			hide_in(x, service);
	} else if (json_is_array(v)) {
		json_array_foreach(v, q, x)
			hide_in(x, service);
	}
}

json_t *api_as_seen(struct hconn *c, const struct http_msg *m, json_t *o)
{
	if (!auth_sees_output(c, m))
		api_hide_output(o, NULL);
	return o;
}
