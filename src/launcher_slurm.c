/* launcher_slurm.c - an instance is a Slurm batch job.
 *
 * start (slurm_submit.c): sbatch --parsable (here, or on the login node
 * through the runner's SSH master); the job's name is
 * sg:<instance_id>:<route>:<index>.
 * A tracker polls all of this gateway's jobs with one squeue per target
 * and cycle: fast while anything starts or stops, slowly otherwise. When a
 * job runs, a forward from a free local port to <node>:<port> is opened
 * through the master (or, without remote_host, the node is reached
 * directly: slurm_tunnel.c) and the service's health probes begin. stop: scancel, close
 * the forward, and wait until squeue shows the job ended. At start-up the
 * gateway adopts its own RUNNING jobs (and a handover's replacement) and
 * cancels the rest (slurm_recover.c).
 *
 * Every state Slurm can report has one meaning here (slurmjob.c, and the
 * table in slurmgate(8)): the moment a job that ran is not running any
 * more (suspended, requeued, its node down ...), its instance is held
 * (instance_hold): out of rotation, requests wait with the reason. When it
 * runs again the forward goes to the node it runs on now. A job missing
 * from squeue is looked up once with scontrol and sacct before it is
 * declared gone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
#include "slurm_logs.h"
#include "slurmjob.h"
#include "util.h"

struct sjob_list sjobs = LIST_HEAD_INITIALIZER(sjobs);
struct gw *slurm_gw;
static struct event *poll_ev;
int sjob_polls;

static bool poll_again;   /* poll at once when the running cycle ends */

/* The back-off (poll_backoff_s): while jobs start or stop polls come every
 * poll_fast_ms, but once none of our jobs' squeue lines (state, nodes,
 * reason; not the expected start) changed for poll_backoff_s, the interval doubles
 * each cycle up to min(poll_slow_s, POLL_BACKOFF_MAX_MS): a job waiting
 * for hours in a full queue costs one squeue per 5 s. A change, a submit,
 * a cancel, a check (slurm_check), the agent's kick or a job that becomes
 * busy makes polls fast again at once. */
static double calm_since;  /* the last change (or reset) */
static int backoff_ms;     /* the busy interval in force; 0: poll_fast_ms */
static bool was_busy;      /* busy_jobs() when last scheduled */

static void poll_backoff_reset(void)
{
	calm_since = now_s();
	backoff_ms = 0;
}

/* J's squeue line (its fields F) says something new: fast polls again. */
static void job_line_seen(struct sjob *j, char **f)
{
	unsigned long h = 5381;
	/* state, nodes, reason: not TIMELEFT, and not the expected start,
	 * which the backfill scheduler re-estimates every cycle on a busy
	 * cluster (the ETA is still updated by every poll) */
	const int keys[] = {2, 3, 5};

	for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
		for (const char *p = f[keys[k]]; *p; p++)
			h = h * 33 + (unsigned char)*p;
		h = h * 33 + '|';
	}
	if (h == 0)
		h = 1;
	if (!j->renamed && j->name[0] && f[1][0] && strcmp(f[1], j->name) != 0) {
		/* scontrol update JobName=: found by its id while this run lasts */
		j->renamed = true;
		log_warn("Slurm job %s was renamed from %s to %s: tracked by its id until it ends; a "
			 "restart after kill -9 would not know it (nor keep_jobs_on_exit leave it)", j->id,
			 j->name, f[1]);
	}
	if (h != j->sig) {
		j->sig = h;
		poll_backoff_reset();
	}
}

void sjob_unref(struct sjob *j)
{
	if (--j->refs == 0)
		free(j);
}

/* Give up the forward (also one still being opened: the runner cancels it
 * when it comes up). Every change of lport goes through here. */
void sjob_fwd_close(struct sjob *j)
{
	if (j->lport)
		runner_unforward(j->r, j->lport);
	j->lport = 0;
	j->fwd_node[0] = '\0';
}

/* The job is over (or left running at exit): tell the service, stop tracking.
 * REASON starts with "Slurm job <id>". */
static void job_gone(struct sjob *j, const char *reason)
{
	struct instance *i = j->inst;

	LIST_REMOVE(j, link);
	j->tracked = false;
	sjob_fwd_close(j);
	j->inst = NULL;
	if (i) {
		i->lpriv = NULL;
		instance_gone(i, LFAIL_JOB, reason);
	}
	sjob_unref(j);   /* the tracking reference */
}

static void cancel_done(void *arg, int status, const char *out, const char *err)
{
	struct sjob *j = arg;

	(void)out;
	if (status != 0 && strstr(err, SAGENT_NOT_OURS) && j->tracked && j->st == J_CANCELLING) {
		/* renamed: the agent cancels only jobs of the gateway's names, and
		 * retrying would keep the instance stopping until the job ends */
		char why[300];
		snprintf(why, sizeof why, "Slurm job %s was renamed: the slurm agent does not cancel it; "
			 "left running: scancel %s", j->id, j->id);
		log_warn("%s", why);
		job_gone(j, why);
	} else if (status != 0) {
		log_warn("scancel %s: %s (will retry)", j->id, err[0] ? err : "failed");
	}
	sjob_unref(j);
}

void sjob_cancel(struct sjob *j)
{
	char *argv[] = {"scancel", j->id, NULL};

	j->st = J_CANCELLING;
	j->cancel_tries++;
	j->cancel_at = now_s();
	j->refs++;
	sagent_run(j->r, argv, 60, cancel_done, j);
	slurm_poll_schedule(true);
}

char *slurm_squeue_argv[] = {"squeue", "--me", "-h", "-t", "all", "-o", "%i|%j|%T|%N|%L|%r|%S", NULL};

static void slurm_stop(struct instance *i, int grace_s, int flags)
{
	struct sjob *j = i->lpriv;

	(void)grace_s;
	if (j == NULL) {
		instance_gone(i, LFAIL_OTHER, "not running");
		return;
	}
	/* a renamed job is cancelled: the next run could not adopt it */
	if ((flags & LSTOP_EXITING) && slurm_gw->cfg->keep_jobs_on_exit && j->st != J_SUBMITTING &&
	    !j->renamed) {
		char why[100];
		snprintf(why, sizeof why, "Slurm job %s left running (keep_jobs_on_exit)", j->id);
		job_gone(j, why);
		return;
	}
	j->want_cancel = true;
	if (j->st != J_SUBMITTING && j->st != J_CANCELLING)
		sjob_cancel(j);
}

/* The tail of an ended job's output, asked for by job_ended. */
struct endq {
	struct sjob *j;
	char why[600];
};

static void ended_tail_done(void *arg, int status, const char *out, const char *err)
{
	struct endq *q = arg;
	struct sjob *j = q->j;
	char tail[500], why[sizeof q->why + sizeof tail + 40];

	(void)err;
	tail[0] = '\0';
	if (status == 0)
		slurmjob_tail_lines(out, tail, sizeof tail);
	snprintf(why, sizeof why, "%s%s%s", q->why, tail[0] ? LAUNCH_OUTPUT_MARK : "", tail);
	if (j->tracked)
		job_gone(j, why);
	sjob_unref(j);
	free(q);
}

/* J ended by itself (WHY): the last lines of its output (its StdErr file,
 * else StdOut) go into the reason, as a local process's stderr does. */
static void job_ended(struct sjob *j, const char *why)
{
	struct endq *q;

	if (j->inst == NULL) {
		job_gone(j, why);
		return;
	}
	j->ending = true;
	j->refs++;
	q = xcalloc(1, sizeof *q);
	q->j = j;
	snprintf(q->why, sizeof q->why, "%s", why);
	sagent_tail(j->r, j->id, 5, ended_tail_done, q);
	slurm_logs_ended(j->inst->svc, j->r, j->id, j->inst->index);
}

/* Slurm says the job, which ran, is not running now (WHAT, with Slurm's
 * REASON): hold its instance. KEEP_FWD: the job stays on its node
 * (suspended, completing), so its forward stays too. */
static void job_hold(struct sjob *j, const char *what, const char *reason, bool keep_fwd)
{
	char why[sizeof j->why];
	bool first = j->st != J_HELD, r = slurmjob_has_reason(reason);

	snprintf(why, sizeof why, "Slurm job %s %s%s%s%s", j->id, what, r ? " (" : "", r ? reason : "",
		 r ? ")" : "");
	/* a forward still being opened is given up too: a new one follows */
	if (!keep_fwd || j->st == J_TUNNEL)
		sjob_fwd_close(j);
	if (!keep_fwd && j->inst)
		instance_set_deadline(j->inst, 0);   /* back in the queue: its time starts anew */
	j->st = J_HELD;
	if (!first && strcmp(why, j->why) == 0)
		return;
	snprintf(j->why, sizeof j->why, "%s", why);
	if (j->inst == NULL)
		return;
	log_info("svc %s[%d]: %s%s", service_config(j->inst->svc)->name, j->inst->index, why,
		 first ? ": out of rotation, requests are held" : "");
	if (first)
		instance_hold(j->inst, why);
	else
		instance_set_detail(j->inst, "%s", why);
}

/* A held job runs again, on NODE: serve through a forward to NODE. */
static void job_resume(struct sjob *j, const char *node)
{
	if (j->inst)
		log_info("svc %s[%d]: Slurm job %s running again on %s (was %s: %s)",
			 service_config(j->inst->svc)->name, j->inst->index, j->id, node, j->node, j->why);
	snprintf(j->node, sizeof j->node, "%s", node);
	j->why[0] = '\0';
	j->tunnel_tries = 0;
	if (j->lport && strcmp(j->fwd_node, j->node) == 0) {
		/* the same node (resumed): the forward stands; probe again */
		j->st = J_UP;
		sjob_owner_forget(j);
		if (j->inst)
			instance_endpoint(j->inst, "127.0.0.1", j->lport);
		return;
	}
	slurm_tunnel_open(j);   /* cancels the old forward, if any */
}

static void job_answered(struct sjob *j);

/* J ran and is held (J_HELD). If it waits for scontrol release, it has
 * as long as a start may take (start_timeout, from the hold) to run again;
 * then it is given up: cancelled, and a new job starts if requests wait or
 * min_instances asks (else a request would wait until an admin acts). */
static void job_held_long(struct sjob *j)
{
	char why[sizeof j->why + 100];
	int limit = j->inst ? service_config(j->inst->svc)->start_timeout : 0;

	if (j->held_since == 0)
		j->held_since = now_s();
	if (j->inst == NULL || now_s() - j->held_since < limit)
		return;
	snprintf(why, sizeof why, "%s: not released within start_timeout (%d s): cancelling it", j->why,
		 limit);
	log_warn("svc %s[%d]: %s", service_config(j->inst->svc)->name, j->inst->index, why);
	instance_fail(j->inst, LFAIL_TIMEOUT, why);
}

/* One squeue line (or scontrol's answer) for a job we track: move it along. */
static void job_update(struct sjob *j, const char *state, const char *nodes, const char *left,
		       const char *reason, double poll_started)
{
	char why[400], node[128];
	const char *says;
	bool unknown;
	enum slurmjob_class c = slurmjob_class(state, &says, &unknown);
	bool ran = j->st == J_TUNNEL || j->st == J_UP || j->st == J_HELD;
	bool held = slurmjob_held(state, reason);   /* waits for scontrol release */

	j->seen = true;
	job_answered(j);   /* a line from Slurm: it answers (a new agent says no more) */
	if (j->ending)
		return;
	if (j->st == J_CANCELLING) {
		if (c == SJ_ENDED) {
			snprintf(why, sizeof why, "Slurm job %s %s", j->id, state);
			job_gone(j, why);
		} else if (j->cancel_tries < 5 && c != SJ_LEAVING && poll_started > j->cancel_at + 2) {
			sjob_cancel(j);   /* scancel did not take: again */
		}
		return;
	}
	if (c == SJ_ENDED) {
		slurmjob_end_why(why, sizeof why, j->id, state, reason);
		job_ended(j, why);
		return;
	}
	if (j->inst)
		j->inst->expected_start = 0;
	if (c == SJ_RUNNING) {
		j->held_since = 0;
		long secs = slurmjob_time_left(left);
		/* read every poll: an admin may change the limit (scontrol
		 * update TimeLimit=), the handover moves with it */
		if (secs >= 0 && j->inst)
			instance_set_deadline(j->inst, now_s() + (double)secs);
		else if (strcmp(left, "UNLIMITED") == 0 && j->inst && j->inst->deadline > 0)
			instance_set_deadline(j->inst, 0);   /* made unlimited: no handover */
		slurmjob_first_node(nodes, node, sizeof node);
		if (j->st == J_QUEUED) {
			snprintf(j->node, sizeof j->node, "%s", node);
			j->running_at = now_s();
			j->pending[0] = '\0';
			if (j->inst) {
				/* from sbatch's answer: the queue wait as Slurm saw it, give
				 * or take one poll interval */
				log_info("svc %s[%d]: Slurm job %s running on %s after %.2f s in the queue",
					 service_config(j->inst->svc)->name, j->inst->index, j->id, j->node,
					 j->running_at - (j->tracked_at > 0 ? j->tracked_at : j->submitted));
			}
			slurm_tunnel_open(j);
		} else if (j->st == J_HELD || (j->st == J_UP && node[0] && strcmp(node, j->node) != 0)) {
			job_resume(j, node[0] ? node : j->node);
		} else if (j->st == J_UP && j->lport && !runner_forwarding(j->r, j->lport)) {
			/* its forward could not be restored with a new master */
			log_warn("Slurm job %s: the forward to %s:%d is lost; opening a new one", j->id,
				 j->node, j->rport);
			slurm_tunnel_open(j);
		}
		return;
	}
	if (!ran) {
		/* not running yet: what Slurm says is the start's progress, and
		 * when it expects to start the job */
		if (j->inst && j->st == J_QUEUED) {
			const char *r = slurmjob_has_reason(reason) ? reason : "no reason given";
			char at[64] = "";
			time_t t = (time_t)j->eta;
			struct tm tm;
			/* a held job (scontrol hold: JobHeldUser, JobHeldAdmin) waits for
			 * its release, whatever start Slurm had planned before */
			if (held)
				snprintf(at, sizeof at, ", held until released (scontrol release)");
			else if (c == SJ_WAITING && j->eta > 0 && gmtime_r(&t, &tm))
				strftime(at, sizeof at, ", expected to start %Y-%m-%dT%H:%M:%SZ", &tm);
			j->inst->expected_start = at[0] && !held ? j->eta : 0;
			instance_set_detail(j->inst, "Slurm job %s %s (%s)%s", j->id, says, r, at);
			/* what /v1/models shows as "pending: <reason>" */
			snprintf(j->pending, sizeof j->pending, "%s", strcmp(says, "pending") == 0 ? r : "");
		}
		return;
	}
	if (!held)
		j->held_since = 0;
	switch (c) {
	case SJ_WAITING:
		/* pending again after it ran: requeued (scontrol requeue, preemption,
		 * its node failed), maybe held until released (requeuehold) */
		if (held)
			snprintf(why, sizeof why, "requeued and held, waits for scontrol release");
		else
			snprintf(why, sizeof why, "requeued: %s", says);
		job_hold(j, why, reason, false);
		break;
	case SJ_REQUEUED:
	case SJ_HELD:
		job_hold(j, says, reason, false);
		break;
	case SJ_PAUSED:
	case SJ_LEAVING:
		if (unknown && j->st != J_HELD)
			log_warn("Slurm job %s: unknown state %s: held until it runs or ends", j->id, state);
		if (unknown)
			snprintf(why, sizeof why, "%s (%s) on %s", says, state, j->node);
		else
			snprintf(why, sizeof why, "%s on %s", says, j->node);
		job_hold(j, why, reason, true);
		break;
	default:
		break;
	}
	if (held && j->st == J_HELD)
		job_held_long(j);
}

static bool busy_jobs(void)
{
	struct sjob *j;

	/* polls come fast while a job starts, is held, or its instance is
	 * probed (first boot, or unhealthy: something may have happened) */
	LIST_FOREACH(j, &sjobs, link)
		if (j->st != J_UP || (j->inst && (j->inst->state == INST_PROBING ||
						  j->inst->state == INST_UNHEALTHY)))
			return true;
	return false;
}

struct pollctx {
	struct runner *r;
	double started;   /* jobs known only after this may be missing from the answer */
};

static void job_lost(struct sjob *j);

/* squeue failed (the controller is down, the login node unreachable): a
 * job that waits (queued, or held after it ran) shows that, with its last
 * known step, rather than that step as if Slurm had just said it. */
static void job_unanswered(struct sjob *j, const char *err)
{
	char said[100], at[16];
	time_t t;
	struct tm tm;

	if (j->inst == NULL || (j->st != J_QUEUED && j->st != J_HELD))
		return;
	if (j->unanswered_since == 0) {
		j->unanswered_since = wall_s();
		snprintf(j->known, sizeof j->known, "%s", j->inst->detail);
	}
	t = (time_t)j->unanswered_since;
	if (gmtime_r(&t, &tm) == NULL || strftime(at, sizeof at, "%H:%M:%SZ", &tm) == 0)
		at[0] = '\0';
	slurmjob_tail_lines(err, said, sizeof said);
	instance_set_detail(j->inst, "Slurm is not answering since %s (squeue: %s); last known: %s", at,
			    said[0] ? said : "failed", j->known);
}

/* Slurm answers again: the last known step stands until its line says more. */
static void job_answered(struct sjob *j)
{
	if (j->unanswered_since == 0)
		return;
	j->unanswered_since = 0;
	if (j->inst)
		instance_set_detail(j->inst, "%s", j->known);
}

static void squeue_done(void *arg, int status, const char *out, const char *err)
{
	struct pollctx *x = arg;
	struct sjob *j, *next;
	char *text = xstrdup(out), *save = NULL;

	sjob_polls--;
	if (status != 0) {
		log_warn("squeue on %s failed: %s", runner_name(x->r), err[0] ? err : "no output");
		LIST_FOREACH(j, &sjobs, link)
			if (j->r == x->r)
				job_unanswered(j, err);
		free(text);
		free(x);
		slurm_poll_schedule(false);
		return;
	}
	LIST_FOREACH(j, &sjobs, link)
		if (j->r == x->r) {
			j->seen = false;
			job_answered(j);
		}
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *f[7] = {"", "", "", "", "", "", ""};
		if (slurmjob_split(line, f, 7) < 6)
			continue;
		for (j = LIST_FIRST(&sjobs); j; j = next) {
			next = LIST_NEXT(j, link);
			if (j->r == x->r && !j->ghost && strcmp(j->id, f[0]) == 0) {
				j->eta = slurmjob_start_time(f[6]);
				job_line_seen(j, f);
				job_update(j, f[2], f[3], f[4], f[5], x->started);
				break;
			}
		}
		if (j == NULL)
			sjob_ghost_line(x->r, f);
	}
	/* tracked but no longer listed: ask once more before giving up
	 * (the answer may come at once and end J) */
	for (j = LIST_FIRST(&sjobs); j; j = next) {
		next = LIST_NEXT(j, link);
		if (j->ghost)
			continue;   /* expires in poll_cb */
		if (j->r == x->r && !j->seen && j->st != J_SUBMITTING && j->tracked_at < x->started)
			job_lost(j);
	}
	free(text);
	free(x);
	slurm_poll_schedule(false);
}

static void lost_sacct_done(void *arg, int status, const char *out, const char *err)
{
	struct sjob *j = arg;
	char why[sizeof j->lost + 400], state[64], code[32];

	if (!j->tracked) {
		sjob_unref(j);
		return;
	}
	j->asking = false;
	if (status == 0 && slurmjob_sacct_line(out, state, sizeof state, code, sizeof code)) {
		snprintf(why, sizeof why, "Slurm job %s left squeue; sacct: %s%s%s", j->id, state,
			 code[0] ? ", exit code " : "", code);
	} else {
		snprintf(why, sizeof why,
			 "Slurm job %s left squeue; final state unknown (scontrol: %s; sacct: %s)", j->id,
			 j->lost, err[0] ? err : (status == 0 ? "no such job" : "failed"));
	}
	log_info("%s", why);
	if (j->st == J_CANCELLING)
		job_gone(j, why);
	else
		job_ended(j, why);
	sjob_unref(j);
	slurm_poll_schedule(false);
}

static void lost_scontrol_done(void *arg, int status, const char *out, const char *err)
{
	struct sjob *j = arg;
	char state[64], nodes[256], reason[128];
	char *argv[] = {"sacct", "-n", "-X", "-P", "-j", j->id, "-o", "State,ExitCode", NULL};

	if (!j->tracked) {
		sjob_unref(j);
		return;
	}
	slurmjob_field(out, "JobState", state, sizeof state);
	if (status == 0 && state[0]) {
		/* the controller knows it after all: take its word */
		slurmjob_field(out, "NodeList", nodes, sizeof nodes);
		slurmjob_field(out, "Reason", reason, sizeof reason);
		log_info("Slurm job %s is not in squeue, but scontrol says %s", j->id, state);
		j->asking = false;
		job_update(j, state, strcmp(nodes, "(null)") ? nodes : "", "", reason, now_s());
		sjob_unref(j);
		slurm_poll_schedule(false);
		return;
	}
	snprintf(j->lost, sizeof j->lost, "%s", err[0] ? err : "no such job");
	log_info("Slurm job %s is not in squeue and scontrol does not know it (%s): asking sacct",
		 j->id, j->lost);
	sagent_run(j->r, argv, 60, lost_sacct_done, j);   /* keeps the reference */
}

/* J is tracked but not in squeue's answer: purged after its end, or squeue
 * missed it. Ask scontrol (the controller), then sacct (accounting, where
 * the cluster has it) once before it is declared gone, with what they say. */
static void job_lost(struct sjob *j)
{
	char *argv[] = {"scontrol", "-o", "show", "job", j->id, NULL};

	if (j->asking || j->ending)
		return;
	poll_backoff_reset();   /* it left squeue: a change */
	j->asking = true;
	j->refs++;
	log_info("Slurm job %s is not in squeue: asking scontrol", j->id);
	sagent_run(j->r, argv, 60, lost_scontrol_done, j);
}

static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sjob *j, *k;
	bool watched = false;

	(void)fd, (void)what, (void)arg;
	for (j = LIST_FIRST(&sjobs); j; j = k) {
		k = LIST_NEXT(j, link);
		if (j->ghost && j->blocked <= 0 && now_s() > j->ghost_until)
			job_gone(j, "no job came");   /* never came: watched long enough */
	}
	if (sjob_polls > 0)
		return;   /* the running cycle schedules the next */
	/* one squeue per target, whatever the number of jobs; a target whose
	 * agent watches pushes its changes (slurm_agent.c) */
	LIST_FOREACH(j, &sjobs, link) {
		bool first = true;
		for (k = LIST_FIRST(&sjobs); k != j; k = LIST_NEXT(k, link))
			first &= k->r != j->r;
		if (first && sagent_watching(j->r))
			watched = true;
		else if (first) {
			struct pollctx *x = xcalloc(1, sizeof *x);
			x->r = j->r;
			x->started = now_s();
			sjob_polls++;
			sagent_run(j->r, slurm_squeue_argv, 60, squeue_done, x);
		}
	}
	if (watched && sjob_polls == 0)
		slurm_poll_schedule(false);   /* in case an agent stops watching */
}

/* The interval while jobs are busy: poll_fast_ms, doubled each cycle after
 * poll_backoff_s without a change, up to the cap. */
static int busy_interval_ms(void)
{
	const struct config *c = slurm_gw->cfg;
	int fast = c->poll_fast_ms > 0 ? c->poll_fast_ms : 500;
	int cap = c->poll_slow_s * 1000 < POLL_BACKOFF_MAX_MS ? c->poll_slow_s * 1000
							     : POLL_BACKOFF_MAX_MS;

	if (cap < fast)
		cap = fast;
	if (c->poll_backoff_s == 0 || now_s() - calm_since < c->poll_backoff_s)
		backoff_ms = fast;
	else
		backoff_ms = backoff_ms < fast ? fast : backoff_ms > cap / 2 ? cap : backoff_ms * 2;
	return backoff_ms;
}

void slurm_poll_schedule(bool fast)
{
	int ms;
	bool busy;

	if (LIST_EMPTY(&sjobs) || sjob_polls > 0)
		return;
	if (poll_again) {
		/* a check came while squeue ran: once more, soon */
		poll_again = false;
		fast = true;
		event_del(poll_ev);
	}
	busy = busy_jobs();
	if (fast || (busy && !was_busy))
		poll_backoff_reset();
	was_busy = busy;
	if (!fast && event_pending(poll_ev, EV_TIMEOUT, NULL))
		return;
	ms = fast || busy ? busy_interval_ms() : slurm_gw->cfg->poll_slow_s * 1000;
	event_add(poll_ev, &(struct timeval){ms / 1000, (ms % 1000) * 1000});
}

/* Something looks wrong with I (a connection through its forward closed
 * before any answer): look at its job now, not at the next poll. */
static void slurm_check(struct instance *i)
{
	struct sjob *j = i->lpriv;

	if (j == NULL || !j->tracked || LIST_EMPTY(&sjobs))
		return;
	poll_backoff_reset();
	if (sagent_watching(j->r)) {
		sagent_poll(j->r);
		return;
	}
	if (sjob_polls > 0) {
		poll_again = true;   /* that answer may predate the trouble */
		return;
	}
	event_del(poll_ev);
	event_add(poll_ev, &(struct timeval){0, 0});
}

static void slurm_describe(const struct instance *i, json_t *o)
{
	const struct sjob *j = i->lpriv;

	if (j == NULL)
		return;
	if (j->id[0])
		json_object_set_new(o, "job_id", json_string(j->id));
	if (j->node[0])
		json_object_set_new(o, "node", json_string(j->node));
	if (j->st == J_QUEUED && j->pending[0])
		json_object_set_new(o, "pending", json_string(j->pending));
}

/* --- what the agent pushes (slurm_agent.h) --- */

static struct sjob *job_by_id(struct runner *r, const char *id)
{
	struct sjob *j;

	LIST_FOREACH(j, &sjobs, link)
		if (j->r == r && !j->ghost && strcmp(j->id, id) == 0)
			return j;
	return NULL;
}

static void agent_job(struct runner *r, char **f, int nf)
{
	struct sjob *j = job_by_id(r, f[0]);

	(void)nf;
	if (j == NULL)
		sjob_ghost_line(r, f);
	if (j && j->st != J_SUBMITTING) {
		j->eta = slurmjob_start_time(f[6]);
		job_line_seen(j, f);
		job_update(j, f[2], f[3], f[4], f[5], now_s());
	}
}

static void agent_gone(struct runner *r, const char *id)
{
	struct sjob *j = job_by_id(r, id);

	if (j && j->st != J_SUBMITTING)
		job_lost(j);
}

static void agent_unanswered(struct runner *r, const char *err)
{
	struct sjob *j;

	LIST_FOREACH(j, &sjobs, link)
		if (j->r == r) {
			if (err)
				job_unanswered(j, err);
			else
				job_answered(j);
		}
}

static void agent_kick(void)
{
	slurm_poll_schedule(true);
}

static void slurm_describe_service(const struct svc_config *c, json_t *o)
{
	const char *ag = sagent_status(runner_for(c));

	json_object_set_new(o, "slurm_agent", ag ? json_string(ag) : json_null());
}

static void slurm_init(struct gw *g)
{
	static const struct sagent_hooks h = {agent_job, agent_gone, agent_kick, agent_unanswered};

	slurm_gw = g;
	slurm_tunnel_init(g);
	sagent_init(g, &h);
	if (poll_ev == NULL)
		poll_ev = evtimer_new(g->base, poll_cb, NULL);
}

/* The output of S's newest job that has an id (slurm_logs.c). */
static int slurm_logs(struct service *s, uint64_t *from, size_t max, struct evbuffer *out,
		      char **cause)
{
	struct sjob *j, *pick = NULL;

	(void)cause;
	LIST_FOREACH(j, &sjobs, link)   /* newest first */
		if (j->inst != NULL && j->inst->svc == s && j->id[0]) {
			pick = j;
			break;
		}
	if (pick)
		return slurm_logs_read(s, pick->r, pick->id, pick->inst->index, from, max, out);
	return slurm_logs_read(s, runner_for(service_config(s)), NULL, 0, from, max, out);
}

const struct launcher_ops launcher_slurm = {
	.name = "slurm",
	.extra_ports = 1,   /* the instance a walltime handover starts */
	.uses_ssh_key = true,
	.remote_agent = true,
	.init = slurm_init,
	.start = slurm_start,
	.stop = slurm_stop,
	.describe_service = slurm_describe_service,
	.describe = slurm_describe,
	.recover = slurm_recover,
	.check = slurm_check,
	.logs = slurm_logs,
	.verify = slurm_verify,
};
