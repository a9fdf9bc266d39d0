/* slurm_submit.c - the Slurm launcher's start: sbatch --parsable (here, or
 * on the login node through the runner's SSH master) with the job name
 * sg:<instance_id>:<route>:<index> (a walltime handover's replacement:
 * sg:<instance_id>:<route>:<index>.r<the replaced job's id>). Its answer,
 * the job id, makes the job tracked (launcher_slurm.c takes it from
 * there). When that answer is lost (the agent died while sbatch ran, or ssh
 * failed with 255) the job may be queued all the same: it is looked up by
 * its name in squeue before the start is called failed, and taken only if
 * scontrol says it is that sbatch's job (SCRIPT PORT, submitted since). */
#include <stdio.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "config.h"
#include "gw.h"
#include "launcher.h"
#include "launcher_slurm_impl.h"
#include "log.h"
#include "runner.h"
#include "service.h"
#include "slurm_agent.h"
#include "slurmjob.h"
#include "util.h"

/* How long a failed sbatch's job is watched for by its name. */
#define GHOST_WATCH_S 300

void sjob_ghost(struct sjob *j)
{
	log_warn("Slurm job %s: sbatch failed, but the job may be queued yet; watching for it "
		 "for %d s (cancelled if it comes)", j->name, GHOST_WATCH_S);
	j->ghost = true;
	j->ghost_until = now_s() + GHOST_WATCH_S;
	j->want_cancel = true;
	j->st = J_CANCELLING;
	j->tracked_at = now_s();
	j->refs++;   /* tracked */
	j->tracked = true;
	LIST_INSERT_HEAD(&sjobs, j, link);
	slurm_poll_schedule(true);
}

void sjob_ghost_block(struct runner *r, const char *name, int delta)
{
	struct sjob *j;

	LIST_FOREACH(j, &sjobs, link)
		if (j->ghost && j->r == r && strcmp(j->name, name) == 0)
			j->blocked += delta;
}

static void sjob_ghost_found(struct sjob *j, const char *id)
{
	str_copy(j->id, sizeof j->id, id);
	j->ghost = false;
	j->seen = true;
	log_warn("Slurm job %s (%s) was queued after its sbatch failed: cancelling", j->id, j->name);
	sjob_cancel(j);
}

/* Was job ID found not to be J's (its name, but not its sbatch's job)? */
static bool not_ours(const struct sjob *j, const char *id)
{
	char key[40];

	snprintf(key, sizeof key, ",%s,", id);
	return strstr(j->notours, key) != NULL;
}

static void note_not_ours(struct sjob *j, const char *id)
{
	size_t n = strlen(j->notours);

	snprintf(j->notours + n, sizeof j->notours - n, "%s%s,", n ? "" : ",", id);
}

/* scontrol's error ERR says the job is over (and purged), or the agent's
 * that it is not in squeue any more. */
static bool job_gone_said(const char *err)
{
	return strstr(err, "Invalid job id") != NULL || strstr(err, "is not in squeue") != NULL;
}

/* A job of a ghost's name, asked about (scontrol) before it is cancelled. */
struct ghostq {
	struct sjob *j;
	char id[32];
};

static void ghost_show_done(void *arg, int status, const char *out, const char *err)
{
	struct ghostq *q = arg;
	struct sjob *j = q->j;
	char why[300];

	j->ghost_asking = false;
	if (!j->ghost || !j->tracked) {
		/* found meanwhile, or watched long enough */
	} else if (status == 0 && slurmjob_not_ours(out, j->name, j->rport, j->submit_wall, why,
						    sizeof why)) {
		log_warn("Slurm job %s is named %s, but it is not the job of its failed sbatch: %s; "
			 "left alone", q->id, j->name, why);
		note_not_ours(j, q->id);
	} else if (status == 0 || !job_gone_said(err)) {
		/* its sbatch's, or scontrol cannot tell: never left untracked */
		sjob_ghost_found(j, q->id);
	}
	sjob_unref(j);
	free(q);
}

/* F: a squeue line of a job not tracked by its id: a ghost's, if one
 * waits for its name and scontrol says it is the job its sbatch queued
 * (running SCRIPT PORT for its port, submitted since): one submitted by
 * hand under the name is left alone. */
void sjob_ghost_line(struct runner *r, char **f)
{
	struct sjob *j;

	LIST_FOREACH(j, &sjobs, link)
		if (j->ghost && j->r == r && strcmp(j->name, f[1]) == 0 && !not_ours(j, f[0])) {
			if (j->blocked <= 0 && !slurmjob_ended(f[2]) && !j->ghost_asking &&
			    strlen(f[0]) < sizeof j->id) {
				struct ghostq *q = xcalloc(1, sizeof *q);
				char *argv[] = {"scontrol", "-o", "show", "job", q->id, NULL};
				q->j = j;
				str_copy(q->id, sizeof q->id, f[0]);
				j->ghost_asking = true;
				j->refs++;   /* the answer's */
				sagent_run(r, argv, 30, ghost_show_done, q);
			}
			return;
		}
}

static void submit_lookup_done(void *arg, int status, const char *out, const char *err);

static void submitted(void *arg, int status, const char *out, const char *err)
{
	struct sjob *j = arg;
	char id[sizeof j->id];
	bool have = status == 0 && slurmjob_sbatch_id(out, id, sizeof id);

	if (!have && !j->looked_up &&
	    (status == 0 || status == 255 << 8 || strstr(err, SAGENT_SBATCH_LOST) != NULL)) {
		/* the agent died while sbatch ran, ssh itself failed (255), or
		 * sbatch succeeded but said no job id we can read (a site's
		 * wrapper, a login shell's chatter): the job may be queued all
		 * the same. Look for it by its name (unique to this gateway and
		 * instance) before calling the start failed: never a second job
		 * beside an untracked first one. */
		j->looked_up = true;
		if (status == 0)
			slurmjob_tail_lines(out[0] ? out : err, j->lost, sizeof j->lost);
		else
			snprintf(j->lost, sizeof j->lost, "%s", err);
		log_warn("svc %s: %s%s; looking for job %s in squeue",
			 j->inst ? service_config(j->inst->svc)->name : "-",
			 status == 0 ? "sbatch answered no job id: " : "", j->lost, j->name);
		sagent_run(j->r, slurm_squeue_argv, 60, submit_lookup_done, j);
		return;   /* the lookup keeps the sbatch callback's reference */
	}
	sjob_ghost_block(j->r, j->name, -1);   /* this sbatch is over */
	if (!have) {
		char why[700], said[500];
		/* sbatch gave up waiting (its "Socket timed out on send/recv
		 * operation" on a busy controller; killed by our timeout; ssh or
		 * the agent lost): the controller may still queue the job */
		bool maybe = !WIFEXITED(status) || status == 255 << 8 || strstr(err, "timed out") ||
			     strstr(err, SAGENT_SBATCH_LOST);
		slurmjob_tail_lines(err[0] ? err : out, said, sizeof said);
		snprintf(why, sizeof why, "sbatch failed on %s: %s", runner_name(j->r),
			 said[0] ? said : "no job id");
		if (j->inst) {
			j->inst->lpriv = NULL;
			instance_gone(j->inst, LFAIL_SUBMIT, why);
		}
		j->inst = NULL;
		if (maybe)
			sjob_ghost(j);
		sjob_unref(j);
		return;
	}
	str_copy(j->id, sizeof j->id, id);
	j->st = J_QUEUED;
	j->tracked_at = now_s();
	j->refs++;   /* tracked */
	j->tracked = true;
	LIST_INSERT_HEAD(&sjobs, j, link);
	if (j->inst) {
		instance_set_detail(j->inst, "Slurm job %s submitted", j->id);
		log_info("svc %s[%d]: Slurm job %s submitted via %s", service_config(j->inst->svc)->name,
			 j->inst->index, j->id, runner_name(j->r));
	}
	if (j->want_cancel || j->inst == NULL)
		sjob_cancel(j);
	sjob_unref(j);   /* the sbatch callback's reference */
	slurm_poll_schedule(true);
}

/* The lookup after a lost sbatch answer: the jobs of J's name in squeue,
 * asked about one by one (scontrol) until one is the job that sbatch
 * queued. A job of the name that is not (submitted by hand or by another
 * tool of this account, or before this sbatch began) is never taken, and
 * never cancelled here: it is not the gateway's. */
#define LOOKUP_MAX 8
struct lookup {
	struct sjob *j;
	char ids[LOOKUP_MAX][32];
	int n, at;
	char unsure[32];   /* a job scontrol could not tell about */
	char why[400];     /* the jobs found not ours */
};

static void lookup_ask(struct lookup *l);

static void lookup_end(struct lookup *l, const char *found, const char *squeue_err)
{
	struct sjob *j = l->j;
	char why[700];

	if (found != NULL) {
		log_info("job %s was queued before its sbatch answer was lost: Slurm job %s", j->name,
			 found);
		submitted(j, 0, found, "");
	} else {
		snprintf(why, sizeof why, "%s (and squeue %s)", j->lost[0] ? j->lost : "no job id",
			 squeue_err ? squeue_err : l->why[0] ? l->why : "has no job of its name");
		submitted(j, 255 << 8, "", why);
	}
	free(l);
}

static void lookup_show_done(void *arg, int status, const char *out, const char *err)
{
	struct lookup *l = arg;
	struct sjob *j = l->j;
	const char *id = l->ids[l->at++];
	char why[300];

	if (status != 0) {
		/* gone since squeue listed it, or scontrol cannot say: taken only
		 * if no job of the name is surely ours (as the start-up scan
		 * adopts a job whose port scontrol does not say) */
		if (!job_gone_said(err) && !l->unsure[0])
			str_copy(l->unsure, sizeof l->unsure, id);
	} else if (slurmjob_not_ours(out, j->name, j->rport, j->submit_wall, why, sizeof why)) {
		size_t n = strlen(l->why);
		log_warn("Slurm job %s is named %s, but it is not the job this gateway's lost sbatch "
			 "queued: %s; left alone", id, j->name, why);
		snprintf(l->why + n, sizeof l->why - n, "%shas Slurm job %s of its name, not this "
			 "gateway's (%s): left alone", n ? "; " : "", id, why);
		note_not_ours(j, id);
	} else {
		lookup_end(l, id, NULL);
		return;
	}
	if (l->at < l->n) {
		lookup_ask(l);
		return;
	}
	if (l->unsure[0])
		log_warn("Slurm job %s of name %s: scontrol cannot say whether it is the job of the lost "
			 "sbatch answer; taken as it", l->unsure, j->name);
	lookup_end(l, l->unsure[0] ? l->unsure : NULL, NULL);
}

static void lookup_ask(struct lookup *l)
{
	char *argv[] = {"scontrol", "-o", "show", "job", l->ids[l->at], NULL};

	sagent_run(l->j->r, argv, 30, lookup_show_done, l);
}

static bool tracked_id(const struct runner *r, const char *id)
{
	const struct sjob *o;

	LIST_FOREACH(o, &sjobs, link)
		if (o->r == r && !o->ghost && strcmp(o->id, id) == 0)
			return true;
	return false;
}

/* squeue's answer after a lost sbatch answer: J's job, if Slurm has it. */
static void submit_lookup_done(void *arg, int status, const char *out, const char *err)
{
	struct sjob *j = arg;
	struct lookup *l = xcalloc(1, sizeof *l);
	char *text = xstrdup(out), *save = NULL;

	l->j = j;
	for (char *line = strtok_r(text, "\n", &save); status == 0 && line && l->n < LOOKUP_MAX;
	     line = strtok_r(NULL, "\n", &save)) {
		char *f[7] = {"", "", "", "", "", "", ""};
		/* a job tracked by its id is an earlier one of this name (ending) */
		if (slurmjob_split(line, f, 7) >= 3 && strcmp(f[1], j->name) == 0 &&
		    !slurmjob_ended(f[2]) && strlen(f[0]) < sizeof l->ids[0] && !tracked_id(j->r, f[0]))
			str_copy(l->ids[l->n++], sizeof l->ids[0], f[0]);
	}
	free(text);
	if (status != 0 || l->n == 0) {
		lookup_end(l, NULL, status == 0 ? NULL : (err[0] ? err : "failed"));
		return;
	}
	lookup_ask(l);
}

int slurm_start(struct instance *i, char **cause)
{
	const struct svc_config *cfg = service_config(i->svc);
	struct sjob *j = xcalloc(1, sizeof *j), *old;
	char name[300], port[16], exp[64];
	char **argv;
	int n = 0, extra = 0;

	for (char **a = cfg->sbatch_args; a && *a; a++)
		extra++;
	argv = xcalloc((size_t)extra + 8, sizeof *argv);
	/* ':' is in neither an instance_id nor a route_name: the name parses back
	 * unambiguously, and no gateway mistakes another's jobs for its own */
	snprintf(j->name, sizeof j->name, "sg:%s:%s:%d", slurm_gw->cfg->instance_id, cfg->route_name,
		 i->index);
	/* a walltime handover's replacement names the job it replaces
	 * (sg:...:INDEX.rJOBID): a restart pairs them from that alone */
	if (i->replaces && (old = i->replaces->lpriv) != NULL && old->id[0])
		snprintf(j->name + strlen(j->name), sizeof j->name - strlen(j->name), ".r%s", old->id);
	snprintf(name, sizeof name, "--job-name=%s", j->name);
	snprintf(port, sizeof port, "%d", i->remote_port);
	snprintf(exp, sizeof exp, "--export=ALL,PORT=%d", i->remote_port);
	argv[n++] = "sbatch";
	argv[n++] = "--parsable";
	argv[n++] = name;
	argv[n++] = exp;
	for (char **a = cfg->sbatch_args; a && *a; a++)
		argv[n++] = *a;
	argv[n++] = cfg->bash_file;
	argv[n++] = port;
	argv[n] = NULL;

	j->inst = i;
	j->r = runner_for(cfg);
	j->rport = i->remote_port;
	j->st = J_SUBMITTING;
	j->submitted = now_s();
	j->submit_wall = wall_s();
	j->refs = 1;   /* the sbatch callback */
	i->lpriv = j;
	sjob_ghost_block(j->r, j->name, 1);
	instance_set_detail(i, "submitting to Slurm via %s", runner_name(j->r));
	sagent_run(j->r, argv, 120, submitted, j);
	free(argv);
	(void)cause;
	return 0;
}
