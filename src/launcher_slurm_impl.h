/* launcher_slurm_impl.h - the Slurm launcher's job (struct sjob) and what
 * else its four files share: launcher_slurm.c (track and cancel; the
 * launcher_ops table), slurm_submit.c (sbatch, and the lookup by name when
 * its answer is lost), slurm_recover.c (adopt or cancel an earlier run's
 * jobs at start-up) and slurm_tunnel.c (reach the service where the job
 * runs). Private to them: everyone else goes through launcher.h. */
#ifndef SG_LAUNCHER_SLURM_IMPL_H
#define SG_LAUNCHER_SLURM_IMPL_H

#include <stdbool.h>
#include <sys/queue.h>

struct gw;
struct instance;
struct runner;

enum jstate {
	J_SUBMITTING, /* sbatch running */
	J_QUEUED,     /* in squeue, not running yet */
	J_TUNNEL,     /* running; opening the forward */
	J_UP,         /* reachable; the service probes it */
	J_HELD,       /* ran, and Slurm says it is not running now: instance held */
	J_CANCELLING, /* scancel sent; waiting for the job to end */
};

struct sjob {
	struct instance *inst;   /* NULL once the instance is gone */
	struct runner *r;
	char id[32];
	char name[200];          /* its Slurm job name (sg:INSTANCE_ID:ROUTE:INDEX) */
	bool looked_up;          /* sbatch's answer was lost: squeue was asked for the name */
	bool renamed;            /* squeue says another name (scontrol update JobName=) */
	char node[128];          /* where it runs (or ran last) */
	char fwd_node[128];      /* where the forward on lport goes */
	char why[256];           /* the reason it is held (J_HELD) */
	double held_since;       /* J_HELD waiting for scontrol release since (0: not) */
	int rport, lport;
	enum jstate st;
	bool want_cancel, seen, tracked;
	bool asking;             /* not in squeue: scontrol/sacct asked */
	bool ghost;              /* sbatch failed, but the job may come yet: watched
	                          * by its name (no id) until ghost_until, cancelled
	                          * if it shows up */
	double ghost_until;
	bool ghost_asking;       /* a ghost: scontrol asked whether a job of its name is its own */
	int blocked;             /* a ghost: sbatches of its name under way (their
	                          * job is not known by its id yet: no match by name) */
	bool ending;             /* ended by itself: its output's tail is asked for */
	char lost[200];          /* scontrol's answer about a job not in squeue; while
	                          * submitting: why sbatch's answer was no job id */
	char pending[128];       /* why Slurm keeps it queued (J_QUEUED; "": not said yet) */
	int refs;                /* runner callbacks outstanding */
	int tunnel_tries, cancel_tries;
	double cancel_at;        /* when the last scancel was sent */
	double submitted, running_at;
	double submit_wall;      /* when sbatch began (wall clock: Slurm's SubmitTime) */
	char notours[128];       /* ",ID,ID,": jobs of its name found not its own (left
	                          * alone, by the lookup after a lost answer too) */
	double tracked_at;       /* when sbatch's answer came (the id became known) */
	double eta;              /* Slurm's expected start (squeue %S), 0: none */
	unsigned long sig;       /* hash of its squeue line but TIMELEFT (0: not seen) */
	double unanswered_since; /* squeue has failed since (wall clock), 0: it answers */
	char known[256];         /* meanwhile: the instance's step before that */
	int owner;               /* whose listener answers rport on node: OWNER_* (slurm_owner.c) */
	bool owner_asking;       /* the check runs */
	unsigned owner_gen;      /* its answer counts if this has not changed since */
	double owner_at;         /* when its last answer came */
	char owner_why[512];     /* OWNER_OTHER: what /api says */
	LIST_ENTRY(sjob) link;   /* tracked jobs (those with an id) */
};

LIST_HEAD(sjob_list, sjob);

enum { OWNER_UNKNOWN, OWNER_OURS, OWNER_OTHER, OWNER_UNSURE };

/* launcher_slurm.c: the tracked jobs (those with an id), newest first. */
extern struct sjob_list sjobs;
/* launcher_slurm.c: the context (gw.h), kept by the launcher's init. */
extern struct gw *slurm_gw;
/* launcher_slurm.c: the squeue command the tracker runs (one line a job:
 * id|name|state|nodes|time left|reason|start time). */
extern char *slurm_squeue_argv[];
/* launcher_slurm.c: squeue calls under way (polls and start-up scans); the
 * tracker's next poll waits until none is. */
extern int sjob_polls;
/* launcher_slurm.c: drop a reference to J (freed with the last). */
void sjob_unref(struct sjob *j);
/* launcher_slurm.c: give up J's forward (also one still being opened: the
 * runner cancels it when it comes up). Every change of lport goes through here. */
void sjob_fwd_close(struct sjob *j);
/* launcher_slurm.c: scancel J (J_CANCELLING); the tracker waits for its end. */
void sjob_cancel(struct sjob *j);
/* launcher_slurm.c: schedule the tracker's next squeue: soon if FAST, else
 * fast while a job starts, stops or is held, slowly otherwise. */
void slurm_poll_schedule(bool fast);

/* slurm_submit.c: watch for J's job by its name for a while: its sbatch
 * failed in a way that may have queued it all the same (a timeout). J is
 * tracked without an id; if the job shows up it is cancelled. */
void sjob_ghost(struct sjob *j);
/* slurm_submit.c: an sbatch of job NAME on R begins (DELTA 1) or is over
 * (-1): a ghost of that name matches nothing meanwhile. */
void sjob_ghost_block(struct runner *r, const char *name, int delta);
/* slurm_submit.c: F, a squeue line of R whose job is not tracked by its id:
 * a ghost's, if one waits for its name (then cancelled). */
void sjob_ghost_line(struct runner *r, char **f);

/* slurm_submit.c: the launcher's start op: sbatch I's job (J_SUBMITTING);
 * its answer tracks the job (J_QUEUED) or ends I (instance_gone). */
int slurm_start(struct instance *i, char **cause);

/* slurm_recover.c: the launcher's recover op: scan every Slurm target for
 * the jobs an earlier run left; adopt the running ones (on the port each
 * was started for) and a walltime handover's replacement, cancel the rest. */
void slurm_recover(void);

/* slurm_tunnel.c: keep G (gw.h): its config in force says which ports services use. */
void slurm_tunnel_init(struct gw *g);
/* slurm_tunnel.c: reach J's service on the node it runs on now (J_TUNNEL),
 * at its NodeAddr: through a forward from a free local port over the
 * runner's SSH master, or directly without remote_host. Any earlier
 * forward is given up first. Ends in instance_endpoint() (J_UP) or, after
 * three failed forwards, instance_fail(). */
void slurm_tunnel_open(struct sjob *j);

/* slurm_owner.c: the launcher's verify op: is the listener on I's port
 * on its job's node a process of the job's own account (srun in the job,
 * reading the node's /proc/net/tcp)? Asked once per forward (again after a
 * requeue or move); meanwhile, and while another user's process listens
 * there, -1 with *cause. A check that cannot run trusts the health check
 * (logged). */
int slurm_verify(struct instance *i, char **cause);
/* slurm_owner.c: J's job (re)started or moved: the listener is asked about again. */
void sjob_owner_forget(struct sjob *j);

#endif
