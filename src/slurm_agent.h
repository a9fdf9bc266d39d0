/* slurm_agent.h - the gateway's side of remote/slurmgate-agent.
 *
 * A target (runner) whose services name `slurm_agent` gets one long-lived
 * agent process on its login node, started through the runner (over the
 * ssh master) at the first Slurm command. Slurm commands go to it as one
 * request line each instead of one ssh session (and one login shell) each;
 * its watcher pushes the gateway's job changes, which replace the
 * launcher's squeue polling for that target. It is started again when it
 * dies. When it cannot be started, the commands run the plain way
 * (runner_run), the log and /api say so, and a new start is tried later. */
#ifndef SG_SLURM_AGENT_H
#define SG_SLURM_AGENT_H

#include <stdbool.h>

#include "runner.h"

struct gw;

/* What the agent pushes: a job line (F: id, name, state, nodes, time left,
 * reason, expected start; NF fields) or a job that left squeue. KICK: the
 * agent of R stopped watching (poll the plain way now). */
struct sagent_hooks {
	void (*job)(struct runner *r, char **f, int nf);
	void (*gone)(struct runner *r, const char *id);
	void (*kick)(void);
	/* The watcher's squeue on R fails (ERR: its last stderr line), or
	 * works again (ERR NULL). */
	void (*unanswered)(struct runner *r, const char *err);
};

/* At start-up and after each reload (the config in force). */
void sagent_init(struct gw *g, const struct sagent_hooks *h);
/* Run a Slurm command (sbatch, scancel, squeue, scontrol -o show job,
 * sacct, sinfo as the Slurm launcher builds them) on R: through R's agent
 * if R has one that is up or starting, else with runner_run. Same contract
 * as runner_run (CB is called exactly once, maybe at once). */
void sagent_run(struct runner *r, char *const argv[], int timeout_s, runner_cb cb, void *arg);
/* The last LINES lines of the output file of job ID (stderr, else stdout)
 * through R's agent; without one, the plain way (scontrol + tail). */
void sagent_tail(struct runner *r, const char *id, int lines, runner_cb cb, void *arg);
/* Send LINE (a request without its id: verb and fields, tab-separated;
 * the caller checked the fields) to R's agent; without one (or LINE
 * NULL), run ARGV the plain way. Same contract as runner_run. */
void sagent_ask(struct runner *r, const char *line, char *const argv[], int timeout_s,
		runner_cb cb, void *arg);
/* Does R's agent push job changes now (no polling needed)? */
bool sagent_watching(const struct runner *r);
/* Something looks wrong: R's agent polls now. */
void sagent_poll(struct runner *r);
/* The agent of the target of a service with this config, for /api: NULL
 * without slurm_agent, else "up", "starting" or "fallback: WHY". */
const char *sagent_status(const struct runner *r);
/* At exit: stop every agent. */
void sagent_shutdown(void);

/* The reason a submit fails with when the agent died while it ran: the
 * job may have been queued all the same (launcher_slurm.c looks). */
#define SAGENT_SBATCH_LOST "the slurm agent died during sbatch"
/* What the agent's refusal to cancel a job says when the job's name is not
 * one of the gateway's (renamed by someone: scontrol update JobName=). */
#define SAGENT_NOT_OURS "is not the gateway's"

#endif
