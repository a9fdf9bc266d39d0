/* slurm_recover.c - the Slurm launcher's start-up scan: the jobs an earlier
 * run of this gateway left (their names carry its instance_id) are looked
 * for with one squeue per target. A RUNNING one whose service and index
 * still exist is adopted (its forward opened, its instance probed); every
 * other is cancelled. A target whose squeue fails is scanned again, the
 * delay doubling up to RESCAN_MAX_S, and its services start nothing until
 * a scan succeeds: a job of the earlier run may be running, and starting
 * without it would leave it untracked beside a second one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>

#include "config.h"
#include "gw.h"
#include "launcher.h"
#include "launcher_slurm_impl.h"
#include "log.h"
#include "runner.h"
#include "service.h"
#include "slurm_agent.h"
#include "slurm_record.h"
#include "slurmjob.h"
#include "util.h"

#define RESCAN_MAX_S 30
static struct runner *rescan[64];   /* targets whose scan failed */
static int nrescan, rescan_s;
static struct event *recover_ev;

/* A target only the record of an earlier run names (slurm_record.c) is
 * scanned this many times at most: a login node taken out of service must
 * not be tried for the life of the process. */
#define ORPHAN_TRIES 5
static struct {
	struct runner *r;
	int tries;
} orphans[16];
static int norphans;

struct scanctx {
	struct runner *r;
	bool counted;   /* in sjob_polls */
};

static void recover_done(void *arg, int status, const char *out, const char *err);

/* Does a service of the config in force run its jobs on R? */
static bool runner_used(const struct runner *r)
{
	for (size_t k = 0; k < services_count(); k++) {
		const struct svc_config *c = service_config(service_at(k));
		if (c->launcher == &launcher_slurm && runner_for(c) == r)
			return true;
	}
	return false;
}

static void recover_scan(struct runner *r)
{
	struct scanctx *x = xcalloc(1, sizeof *x);

	x->r = r;
	/* the tracker's polls wait for a scan of a target its jobs are on; a
	 * target only the record names has none of them (it must not stall
	 * their polls while it does not answer) */
	x->counted = runner_used(r);
	if (x->counted)
		sjob_polls++;
	sagent_run(r, slurm_squeue_argv, 60, recover_done, x);
}

static void rescan_cb(evutil_socket_t fd, short what, void *arg)
{
	int n = nrescan;

	(void)fd, (void)what, (void)arg;
	nrescan = 0;
	for (int k = 0; k < n; k++)
		recover_scan(rescan[k]);
}

static void recover_failed(struct runner *r, const char *err)
{
	char said[200], why[300];
	bool dup = false;

	rescan_s = rescan_s <= 0 ? 1 : rescan_s * 2 > RESCAN_MAX_S ? RESCAN_MAX_S : rescan_s * 2;
	slurmjob_tail_lines(err, said, sizeof said);
	snprintf(why, sizeof why, "cannot look for Slurm jobs of an earlier run on %s (squeue: %s)",
		 runner_name(r), said[0] ? said : "failed");
	if (!runner_used(r)) {
		int k;
		for (k = 0; k < norphans && orphans[k].r != r; k++)
			;
		if (k == norphans && norphans < (int)(sizeof orphans / sizeof *orphans)) {
			orphans[norphans].r = r;
			orphans[norphans++].tries = 0;
		}
		if (k == (int)(sizeof orphans / sizeof *orphans) || ++orphans[k].tries >= ORPHAN_TRIES) {
			log_warn("%s; giving up after %d tries: no service uses it now, only the record of "
				 "an earlier run (state_dir/slurm_targets.json; remove it there if that login "
				 "node is gone)", why, ORPHAN_TRIES);
			return;
		}
		log_warn("%s; looking again in %d s", why, rescan_s);
	} else {
		log_warn("%s; looking again in %d s, starting nothing meanwhile", why, rescan_s);
	}
	for (size_t k = 0; k < services_count(); k++) {
		struct service *s = service_at(k);
		if (service_config(s)->launcher == &launcher_slurm && runner_for(service_config(s)) == r)
			service_recover_failed(s, why, rescan_s);
	}
	for (int k = 0; k < nrescan; k++)
		dup |= rescan[k] == r;
	if (!dup && nrescan < (int)(sizeof rescan / sizeof *rescan))
		rescan[nrescan++] = r;
	if (recover_ev == NULL)
		recover_ev = evtimer_new(slurm_gw->base, rescan_cb, NULL);
	event_add(recover_ev, &(struct timeval){rescan_s, 0});
}

/* The scan of target R is over: its services may start jobs now. */
static void recovered_for(struct runner *r)
{
	for (size_t k = 0; k < services_count(); k++) {
		struct service *s = service_at(k);
		if (service_config(s)->launcher == &launcher_slurm && runner_for(service_config(s)) == r)
			service_recovered(s);
	}
}

/* F, a squeue line of R: adopt its job, cancel it, or leave it (not ours). */
static void recover_line(struct runner *r, char **f)
{
	char prefix[200];
	const char *rest, *dash;
	struct service *s;
	struct instance *i;
	struct sjob *j;
	int index;

	snprintf(prefix, sizeof prefix, "sg:%s:", slurm_gw->cfg->instance_id);
	if (slurmjob_ended(f[2]) || strcmp(f[2], "COMPLETING") == 0)
		return;
	LIST_FOREACH(j, &sjobs, link)
		if (j->r == r && strcmp(j->id, f[0]) == 0)
			return;   /* tracked already: submitted since (a late rescan) */
	if (!has_prefix(f[1], prefix)) {
		/* named by an instance_id this gateway used before (its record):
		 * most likely its own, but another gateway of this account may use
		 * that id now; only the admin can tell, so it is said, not cancelled */
		if (slurm_record_earlier_name(f[1]))
			log_warn("Slurm job %s (%s, %s) is named by an earlier instance_id of this gateway "
				 "(now %s): left running; scancel %s if no other gateway uses that id",
				 f[0], f[1], f[2], slurm_gw->cfg->instance_id, f[0]);
		return;
	}
	rest = f[1] + strlen(prefix);
	if ((dash = strrchr(rest, ':')) == NULL)
		return;
	index = atoi(dash + 1);
	s = service_by_route(rest, (size_t)(dash - rest));
	j = xcalloc(1, sizeof *j);
	j->r = r;
	j->refs = 1;
	snprintf(j->id, sizeof j->id, "%s", f[0]);
	j->submitted = now_s();
	j->tracked = true;
	LIST_INSERT_HEAD(&sjobs, j, link);
	if (s && service_config(s)->launcher == &launcher_slurm && runner_for(service_config(s)) == r &&
	    strcmp(f[2], "RUNNING") == 0 && (i = service_adopt(s, index)) != NULL) {
		log_info("svc %s[%d]: adopting Slurm job %s running on %s", service_config(s)->name, index,
			 j->id, f[3]);
		j->inst = i;
		j->rport = i->remote_port;
		i->lpriv = j;
		slurmjob_first_node(f[3], j->node, sizeof j->node);
		instance_set_detail(i, "adopting Slurm job %s", j->id);
		j->running_at = now_s();
		slurm_tunnel_open(j);
	} else {
		log_info("Slurm job %s (%s, %s) is left from an earlier run and not adoptable: cancelling",
			 j->id, f[1], f[2]);
		j->want_cancel = true;
		sjob_cancel(j);
	}
}

static void recover_done(void *arg, int status, const char *out, const char *err)
{
	struct scanctx *x = arg;
	struct runner *r = x->r;
	char *text, *save = NULL;

	if (x->counted)
		sjob_polls--;
	free(x);
	if (status != 0) {
		log_warn("squeue on %s failed: %s", runner_name(r), err[0] ? err : "no output");
		recover_failed(r, err);
		slurm_poll_schedule(false);
		return;
	}
	text = xstrdup(out);
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *f[7] = {"", "", "", "", "", "", ""};
		if (slurmjob_split(line, f, 7) >= 6)
			recover_line(r, f);
	}
	free(text);
	rescan_s = 0;
	log_info("looked for Slurm jobs of an earlier run on %s", runner_name(r));
	slurm_record_scanned(r);
	recovered_for(r);
	slurm_poll_schedule(false);
}

void slurm_recover_target(struct runner *r)
{
	recover_scan(r);
}

void slurm_recover(void)
{
	struct runner *seen[64];
	int nseen = 0;

	for (size_t k = 0; k < services_count(); k++) {
		struct service *s = service_at(k);
		const struct svc_config *cfg = service_config(s);
		struct runner *r;
		bool dup = false;

		if (cfg->launcher != &launcher_slurm)
			continue;
		r = runner_for(cfg);
		for (int q = 0; q < nseen; q++)
			dup |= seen[q] == r;
		if (dup || nseen == 64)
			continue;
		seen[nseen++] = r;
		recover_scan(r);
	}
}
