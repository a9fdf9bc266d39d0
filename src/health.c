/* health.c - probe verdicts (pure: health_verdict) and what they do to an
 * instance and its service: into rotation, out of it, a new endpoint. */
#include "health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "config.h"
#include "launcher.h"
#include "log.h"
#include "metrics.h"
#include "service_int.h"
#include "util.h"

static void inst_ready(struct instance *i)
{
	struct service *s = i->svc;
	bool first = i->ready_at == 0;

	inst_move(i, INST_READY, first ? "health check passed" : "healthy again");
	snprintf(i->detail, sizeof i->detail, "ready at %s", i->addr_str);
	if (first) {
		i->ready_at = now_s();
		s->failures = 0;
		s->backoff_until = 0;
		s->last_start_s = i->ready_at - i->created;
		s->m.cold_starts++;
		histo_observe(&s->m.cold_queue, i->endpoint_at - i->created);
		histo_observe(&s->m.cold_boot, i->ready_at - i->endpoint_at);
		log_info("svc %s[%d]: ready after %.2f s", s->cfg->name, i->index, s->last_start_s);
	}
	i->probe_fails = 0;
	event_del(i->timer);
	event_add(i->probe_timer, &(struct timeval){s->cfg->health_interval, 0});
	if (i->replaces) {
		/* a handover: the old instance takes no new requests, ends when drained */
		struct instance *old = i->replaces;
		i->replaces = NULL;
		old->replaced_by = NULL;
		log_info("svc %s: handover from [%d] to [%d]", s->cfg->name, old->index, i->index);
		instance_drain(old, "replaced before its time limit");
	}
	instance_ref(i);
	svc_dispatch(s);
	if (i->inflight == 0 && i->state == INST_READY)
		inst_idle_arm(i);
	svc_scale(s);
	instance_unref(i);
}

enum health_action health_verdict(enum inst_state st, bool ok, int *fails, int interval, int *next_s)
{
	if (st == INST_PROBING || st == INST_UNHEALTHY)
		return ok ? HEALTH_READY : HEALTH_PROBE_AGAIN;
	if (st != INST_READY && st != INST_DRAINING)
		return HEALTH_NOTHING;
	if (ok)
		*fails = 0;
	else if (++*fails >= HEALTH_FAILS_UNREACHABLE && st == INST_READY)
		return HEALTH_UNREACHABLE;
	*next_s = *fails ? 1 : interval;
	return HEALTH_NEXT;
}

/* A probe's verdict (health_verdict) applied. */
void service_probe_result(struct instance *i, bool ok)
{
	int next_s = 0;

	switch (health_verdict(i->state, ok, &i->probe_fails, i->svc->cfg->health_interval, &next_s)) {
	case HEALTH_NOTHING:
		break;
	case HEALTH_READY:
		if (i->svc->lops->verify) {
			char *cause = NULL;
			if (i->svc->lops->verify(i, &cause) != 0) {
				if (strcmp(i->detail, cause) != 0)
					log_warn("svc %s[%d]: %s", i->svc->cfg->name, i->index, cause);
				snprintf(i->detail, sizeof i->detail, "%s", cause);
				free(cause);
				instance_probe_schedule(i);
				break;
			}
		}
		inst_ready(i);
		break;
	case HEALTH_PROBE_AGAIN:
		/* a boot that does not answer for a while: the launcher may see why */
		if (i->state == INST_PROBING && i->svc->lops->boot_check &&
		    now_s() - (i->boot_check_at ? i->boot_check_at : i->endpoint_at) >= 2) {
			i->boot_check_at = now_s();
			i->svc->lops->boot_check(i);
		}
		instance_probe_schedule(i);
		break;
	case HEALTH_UNREACHABLE:
		instance_unreachable(i, "health check failed twice");
		break;
	case HEALTH_NEXT:
		event_add(i->probe_timer, &(struct timeval){next_s, 0});
		break;
	}
}

void instance_endpoint(struct instance *i, const char *host, int port)
{
	const char *cause;
	enum inst_state was = i->state;
	char was_addr[sizeof i->addr_str];
	char why[300];

	if (i->state == INST_GONE || i->state == INST_STOPPING || i->state == INST_DRAINING)
		return;
	snprintf(was_addr, sizeof was_addr, "%s", i->addr_str);
	if (instance_set_addr(i, host, port, &cause) != 0) {
		snprintf(why, sizeof why, "%s %s:%d", cause, host, port);
		inst_stop(i, why);
		return;
	}
	if (i->state == INST_READY && strcmp(was_addr, i->addr_str) == 0)
		return;   /* told again: nothing changed */
	if (i->endpoint_at == 0)
		i->endpoint_at = now_s();
	if (i->ready_at == 0) {
		inst_move(i, INST_PROBING, was == INST_HELD ? "endpoint known again" : "endpoint known");
	} else {
		snprintf(why, sizeof why, "endpoint %s; probing", i->addr_str);
		inst_move(i, INST_UNHEALTHY, why);
	}
	/* after a hold or while unhealthy, the start deadline runs from now
	 * (a first boot keeps the one that runs since its creation) */
	if (was == INST_HELD || i->state == INST_UNHEALTHY) {
		i->idle_since = 0;
		event_add(i->timer, &(struct timeval){i->svc->cfg->start_timeout, 0});
	}
	snprintf(i->detail, sizeof i->detail, "waiting for %s%s to answer", i->addr_str,
		 i->svc->cfg->check_health_path);
	i->probe_fails = 0;
	instance_probe_restart(i);
}

void instance_unreachable(struct instance *i, const char *why)
{
	struct service *s = i->svc;

	if (i->state != INST_READY)
		return;
	instance_ref(i);
	inst_move(i, INST_UNHEALTHY, why);
	snprintf(i->detail, sizeof i->detail, "unreachable (%s); probing", why);
	/* back in rotation when a probe passes; stopped if that takes too long */
	event_add(i->timer, &(struct timeval){s->cfg->start_timeout, 0});
	instance_pool_flush(i);
	instance_probe_restart(i);
	if (s->lops->check)
		s->lops->check(i);   /* "something looks wrong with I": the launcher looks now */
	if (i->state != INST_GONE)
		svc_scale(s);
	instance_unref(i);
}

