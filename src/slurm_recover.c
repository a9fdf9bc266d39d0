/* slurm_recover.c - the Slurm launcher's start-up scan: the jobs an earlier
 * run of this gateway left (their names carry its instance_id) are looked
 * for with one squeue per target. A RUNNING one whose service and index
 * still exist is adopted (its forward opened, its instance probed); every
 * other is cancelled, but for a walltime handover under way: the
 * replacement (its name says which job it replaces: sg:...:INDEX.rID) is
 * adopted running or still queued, and the old one serves until the
 * replacement is ready, as before the restart. The index max_instances (the handover's slot) is
 * in range: the job that took over in one stays there.
 *
 * An adopted job serves on the port it was started for, whatever the
 * config says now: `scontrol show job` says it (Command=SCRIPT PORT: the
 * port is the script's $1), for jobs of any version of the gateway and
 * whatever became of state_dir. A job whose port Slurm does not say is
 * taken to use the config's. Other changes (bash_file, sbatch_args) apply
 * to the next job, as a reload's do; the log names them.
 *
 * A target whose squeue fails is scanned again, the
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

struct cand;

struct scanctx {
	struct runner *r;
	bool counted;   /* in sjob_polls */
	struct cand *cand;   /* the jobs that may be adopted */
	int ncand, asking;   /* asking: their scontrol answers still to come */
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

/* A job of the earlier run, named by this instance_id, running or
 * queued on the scan's target: adopted or cancelled once Slurm has said
 * which port it was submitted for (recover_finish). */
struct cand {
	struct scanctx *x;
	char id[32], name[200], state[32], node[128];
	char route[128];
	int index;
	char replaces[32];  /* a handover's replacement: the job it replaces (INDEX.rID) */
	long left;          /* seconds of its time limit left (-1: none) */
	int port;           /* the port it was started for; 0: not known */
	char script[512];   /* the script it runs ("": not known) */
	int tries;          /* scontrol asked and failed */
	bool gone;          /* ended since squeue listed it */
	bool foreign;       /* scontrol says it does not run SCRIPT PORT: not a gateway's */
	bool renamed;       /* scontrol says another name now: not ours any more */
	struct service *s;  /* recover_finish: the service that may adopt it */
	struct instance *i; /* recover_finish: adopted as (NULL: cancelled) */
	bool done;          /* recover_finish: adopted or cancelled */
};

/* A tracked job of R for the squeue line F (ID, NAME). */
static struct sjob *job_new(struct runner *r, const char *id, const char *name)
{
	struct sjob *j = xcalloc(1, sizeof *j);

	j->r = r;
	j->refs = 1;
	snprintf(j->id, sizeof j->id, "%s", id);
	snprintf(j->name, sizeof j->name, "%s", name);
	j->submitted = j->tracked_at = now_s();
	j->tracked = true;
	LIST_INSERT_HEAD(&sjobs, j, link);
	return j;
}

static void cancel_left(struct runner *r, const char *id, const char *name, const char *state,
			const char *why)
{
	struct sjob *j = job_new(r, id, name);

	log_info("Slurm job %s (%s, %s) is left from an earlier run and %s: cancelling", id, name,
		 state, why);
	j->want_cancel = true;
	sjob_cancel(j);
}

/* F, a squeue line of R: a candidate for adoption (added to X), a job to
 * cancel now, or one to leave (not ours). */
static void recover_line(struct scanctx *x, char **f)
{
	struct runner *r = x->r;
	char prefix[200];
	const char *rest, *dash, *says;
	char *end;
	enum slurmjob_class c = slurmjob_class(f[2], &says, NULL);
	struct cand *k;
	struct sjob *j;

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
	/* on a target no service uses (the record's), nothing is adoptable */
	if ((c != SJ_RUNNING && c != SJ_WAITING) || !x->counted || strlen(f[0]) >= sizeof k->id ||
	    (size_t)(dash - rest) >= sizeof k->route) {
		cancel_left(r, f[0], f[1], f[2], "not adoptable");
		return;
	}
	x->cand = xrealloc(x->cand, (size_t)(x->ncand + 1) * sizeof *x->cand);
	k = &x->cand[x->ncand++];
	memset(k, 0, sizeof *k);
	k->x = x;
	snprintf(k->id, sizeof k->id, "%s", f[0]);
	snprintf(k->name, sizeof k->name, "%s", f[1]);
	snprintf(k->state, sizeof k->state, "%s", f[2]);
	slurmjob_first_node(f[3], k->node, sizeof k->node);
	k->left = slurmjob_time_left(f[4]);
	memcpy(k->route, rest, (size_t)(dash - rest));
	k->index = (int)strtol(dash + 1, &end, 10);
	if (strncmp(end, ".r", 2) == 0 && strlen(end + 2) < sizeof k->replaces)
		snprintf(k->replaces, sizeof k->replaces, "%s", end + 2);
}

static void recover_finish(struct scanctx *x);
static void cand_show_done(void *arg, int status, const char *out, const char *err);

/* scontrol is asked this often, a second apart, before K is taken to use
 * the port the config gives it (as before this was asked) */
#define SHOW_TRIES 3
#define SHOW_TIMEOUT_S 10

static void cand_ask(struct cand *k)
{
	char *argv[] = {"scontrol", "-o", "show", "job", k->id, NULL};

	/* a short timeout: the scan (and the Slurm polls) wait for it */
	sagent_run(k->x->r, argv, SHOW_TIMEOUT_S, cand_show_done, k);
}

static void cand_ask_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	cand_ask(arg);
}

static void cand_show_done(void *arg, int status, const char *out, const char *err)
{
	struct cand *k = arg;
	struct scanctx *x = k->x;

	/* the gateway runs "SCRIPT PORT" (the port is the script's $1, in every
	 * version), and Slurm keeps that as the job's Command for its life: no
	 * record in state_dir can be lost, or older than the job */
	if (status == 0) {
		char jn[sizeof k->name];
		k->port = slurmjob_command_port(out, k->name, k->script, sizeof k->script);
		slurmjob_field(out, "JobName", jn, sizeof jn);
		/* every gateway runs SCRIPT PORT: a job of our name that does not
		 * was submitted by hand (or another tool) under it. Never adopted:
		 * users' requests would go to whatever listens on the config's
		 * port on its node */
		k->renamed = jn[0] && strcmp(jn, k->name) != 0;
		k->foreign = k->port == 0 && !k->renamed && strstr(out, " Command=") != NULL;
	} else if (strstr(err, "Invalid job id") != NULL) {
		k->gone = true;   /* ended since squeue listed it */
	} else if (++k->tries < SHOW_TRIES &&
		   event_base_once(slurm_gw->base, -1, EV_TIMEOUT, cand_ask_cb, k,
				   &(struct timeval){1, 0}) == 0) {
		return;
	}
	if (k->port == 0 && !k->gone && !k->foreign && !k->renamed)
		log_warn("Slurm job %s: cannot tell which port it was started for (scontrol: %s); "
			 "taking the config's", k->id,
			 status != 0 ? (err[0] ? err : "failed") : "no Command=SCRIPT PORT");
	if (--x->asking == 0)
		recover_finish(x);
}

static unsigned long long id_num(const char *id)
{
	return strtoull(id, NULL, 10);
}

/* In a walltime handover, which of S's candidates is the replacement?
 * The job that names the one it replaces (sg:...:INDEX.rID), if that one
 * runs: Slurm says it, whatever the indexes (a replacement takes the
 * lowest free index, below max_instances while fewer run) and whatever
 * else was submitted since (a scale-up, a restarted instance). Jobs of an
 * earlier version name none: then, with one job more than max_instances,
 * the newest, replacing the running one of least time left. Returns the
 * replacement, *OLD the job it replaces (both NULL: none). */
static struct cand *handover_pair(struct scanctx *x, struct service *s, struct cand **old)
{
	struct cand *n = NULL;
	int count = 0;
	bool named = false;

	*old = NULL;
	for (int q = 0; q < x->ncand; q++) {
		struct cand *k = &x->cand[q];
		if (k->s != s || k->done)
			continue;
		named |= k->replaces[0] != '\0';
		for (int t = 0; k->replaces[0] && t < x->ncand; t++)
			if (x->cand[t].s == s && !x->cand[t].done && &x->cand[t] != k &&
			    strcmp(x->cand[t].id, k->replaces) == 0 &&
			    strcmp(x->cand[t].state, "RUNNING") == 0) {
				*old = &x->cand[t];
				return k;
			}
	}
	if (named)
		return NULL;   /* its old job ended: the replacement took over */
	for (int q = 0; q < x->ncand; q++) {
		struct cand *k = &x->cand[q];
		if (k->s != s || k->done)
			continue;
		count++;
		if (n == NULL || id_num(k->id) > id_num(n->id))
			n = k;
	}
	if (count <= service_config(s)->max_instances)
		return NULL;
	for (int q = 0; q < x->ncand; q++) {
		struct cand *k = &x->cand[q];
		if (k->s == s && !k->done && k != n && strcmp(k->state, "RUNNING") == 0 &&
		    (*old == NULL || (k->left >= 0 && ((*old)->left < 0 || k->left < (*old)->left))))
			*old = k;
	}
	return *old ? n : NULL;
}

/* Adopt K's job as an instance of K->s (K->i), or cancel it. NEW_OF: K is
 * the replacement in a walltime handover of that instance. */
static void cand_adopt(struct cand *k, struct cand *new_of)
{
	struct service *s = k->s;
	const struct svc_config *cfg = service_config(s);
	bool running = strcmp(k->state, "RUNNING") == 0;
	struct instance *i;
	struct sjob *j;
	int port;

	k->done = true;
	if (!running && new_of == NULL) {
		cancel_left(k->x->r, k->id, k->name, k->state, "not adoptable (nobody waits for it)");
		return;
	}
	if ((i = service_adopt(s, k->index)) == NULL) {
		cancel_left(k->x->r, k->id, k->name, k->state, "not adoptable");
		return;
	}
	port = k->port > 0 ? k->port : i->remote_port;
	log_info("svc %s[%d]: adopting Slurm job %s (%s%s, port %d)%s%s%s", cfg->name, k->index, k->id,
		 running ? "running on " : k->state, running ? k->node : "", port,
		 new_of ? ", the walltime handover's replacement of Slurm job " : "",
		 new_of ? new_of->id : "", new_of ? " (the old job serves until it is ready)" : "");
	if (port != i->remote_port)
		log_info("svc %s[%d]: Slurm job %s was started for port %d; remote_port is %d now: it "
			 "serves on %d until it ends, the next job uses %d", cfg->name, k->index, k->id,
			 port, cfg->remote_port, port, i->remote_port);
	if (k->script[0] && strcmp(k->script, cfg->bash_file) != 0)
		log_info("svc %s[%d]: Slurm job %s runs %s; bash_file is %s now: the next job runs that",
			 cfg->name, k->index, k->id, k->script, cfg->bash_file);
	i->remote_port = port;
	j = job_new(k->x->r, k->id, k->name);
	j->inst = i;
	j->rport = port;
	i->lpriv = j;
	k->i = i;
	if (!running) {
		j->st = J_QUEUED;
		instance_set_detail(i, "Slurm job %s %s (adopted)", j->id, k->state);
		return;
	}
	snprintf(j->node, sizeof j->node, "%s", k->node);
	instance_set_detail(i, "adopting Slurm job %s", j->id);
	j->running_at = now_s();
	slurm_tunnel_open(j);
}

/* Every candidate's port is known (or asked): adopt or cancel each. */
static void recover_finish(struct scanctx *x)
{
	struct runner *r = x->r;

	/* the services may have changed meanwhile (a reload): looked up now */
	for (int q = 0; q < x->ncand; q++) {
		struct cand *k = &x->cand[q];
		struct service *s = service_by_route(k->route, strlen(k->route));
		const struct svc_config *c = s ? service_config(s) : NULL;
		if (k->gone) {
			/* ended and purged since squeue listed it, most likely; if
			 * not, it is not left running untracked */
			cancel_left(r, k->id, k->name, k->state, "unknown to scontrol now");
			continue;
		}
		if (k->renamed) {
			log_warn("Slurm job %s (%s) was renamed since squeue listed it: not this "
				 "gateway's any more, left alone", k->id, k->name);
			k->done = true;
			continue;
		}
		if (services_exiting) {
			/* the answers came after a stop began: an instance adopted now
			 * would outlive the shutdown, its job running untracked */
			if (slurm_gw->cfg->keep_jobs_on_exit)
				log_info("Slurm job %s (%s, %s) is left from an earlier run: left "
					 "running (keep_jobs_on_exit; the gateway is exiting)",
					 k->id, k->name, k->state);
			else
				cancel_left(r, k->id, k->name, k->state, "the gateway is exiting");
			continue;
		}
		if (k->foreign) {
			struct sjob *j = job_new(r, k->id, k->name);
			log_warn("Slurm job %s (%s, %s) bears this gateway's name, but it was not started "
				 "by a gateway (it does not run SCRIPT PORT; submitted by hand?): not adopted, "
				 "cancelling (sg:%s:... names are the gateway's own)", k->id, k->name, k->state,
				 slurm_gw->cfg->instance_id);
			j->want_cancel = true;
			sjob_cancel(j);
			k->done = true;
			continue;
		}
		/* index max_instances: a walltime handover's replacement, or,
		 * once it took over, the service's job until its own handover */
		if (c && c->launcher == &launcher_slurm && runner_for(c) == r && k->index >= 0 &&
		    k->index < c->max_instances + launcher_slurm.extra_ports)
			k->s = s;
		else
			cancel_left(r, k->id, k->name, k->state, "not adoptable");
	}
	for (int q = 0; q < x->ncand; q++) {
		struct cand *k = &x->cand[q], *old, *n;
		if (k->s == NULL || k->done)
			continue;
		/* each walltime handover under way: both jobs adopted, the old one
		 * serving until the replacement is ready (health.c then drains it) */
		while ((n = handover_pair(x, k->s, &old)) != NULL) {
			cand_adopt(old, NULL);
			cand_adopt(n, old);
			if (old->i != NULL && n->i != NULL)
				service_adopt_handover(old->i, n->i);
		}
		for (int t = q; t < x->ncand; t++)
			if (x->cand[t].s == k->s && !x->cand[t].done)
				cand_adopt(&x->cand[t], NULL);
	}
	rescan_s = 0;
	log_info("looked for Slurm jobs of an earlier run on %s", runner_name(r));
	if (x->counted)
		sjob_polls--;
	free(x->cand);
	free(x);
	slurm_record_scanned(r);
	recovered_for(r);
	slurm_poll_schedule(false);
}

static void recover_done(void *arg, int status, const char *out, const char *err)
{
	struct scanctx *x = arg;
	struct runner *r = x->r;
	char *text, *save = NULL;
	struct cand *c;
	int n;

	if (status != 0) {
		if (x->counted)
			sjob_polls--;
		free(x);
		log_warn("squeue on %s failed: %s", runner_name(r), err[0] ? err : "no output");
		recover_failed(r, err);
		slurm_poll_schedule(false);
		return;
	}
	text = xstrdup(out);
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *f[7] = {"", "", "", "", "", "", ""};
		if (slurmjob_split(line, f, 7) >= 6)
			recover_line(x, f);
	}
	free(text);
	if (x->ncand == 0) {
		recover_finish(x);
		return;
	}
	/* which port each was started for: one scontrol each (through the
	 * agent too: its "show"); the scan ends when all have answered */
	n = x->asking = x->ncand;
	c = x->cand;
	for (int q = 0; q < n; q++)
		cand_ask(&c[q]);
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
