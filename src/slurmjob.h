/* slurmjob.h - what Slurm's answers mean: job states, node lists, time
 * limits, scontrol's Key=Value and sacct's lines. Pure functions, no I/O
 * (the Slurm launcher uses them; tests/unit/test_slurmjob.c covers them). */
#ifndef SG_SLURMJOB_H
#define SG_SLURMJOB_H

#include <stdbool.h>
#include <stddef.h>

/* What a Slurm job state means for the gateway (slurmgate(8), SLURM JOB
 * STATES, has the same table). */
enum slurmjob_class {
	SJ_WAITING,   /* not running yet, or again after a requeue */
	SJ_RUNNING,   /* its processes run: serve */
	SJ_PAUSED,    /* on its node, processes stopped: hold, keep the forward */
	SJ_LEAVING,   /* processes ending: hold; a later state says whether it returns */
	SJ_REQUEUED,  /* back in the queue: hold, the forward goes */
	SJ_HELD,      /* back in the queue and held until `scontrol release` */
	SJ_ENDED,     /* over */
};

/* The class of STATE (as squeue %T, scontrol and sacct print it). *says:
 * how a hold reason puts it ("suspended"), NULL for an ended state. An
 * unknown state is SJ_PAUSED and *unknown is set (UNKNOWN may be NULL). */
enum slurmjob_class slurmjob_class(const char *state, const char **says, bool *unknown);
bool slurmjob_ended(const char *state);
/* A Reason worth showing (not "", "None" or "(null)"). */
bool slurmjob_has_reason(const char *reason);
/* A job in STATE for REASON waits for scontrol release: held by a user or
 * an admin (JobHeldUser, JobHeldAdmin), requeued and held (scontrol
 * requeuehold; Slurm's own after a prolog failure: "job requeued in held
 * state", scontrol says it with '_'), held after too many requeues
 * (JobHoldMaxRequeue), or in a held state (REQUEUE_HOLD, SPECIAL_EXIT ...). */
bool slurmjob_held(const char *state, const char *reason);
/* First host of a node list: "gpu[03-04,07]" -> "gpu03"; "" for "". */
void slurmjob_first_node(const char *list, char *out, size_t len);
/* Time left ("1-02:03:04", "59:59", "UNLIMITED") in seconds; -1 if none. */
long slurmjob_time_left(const char *t);
/* The value of KEY in scontrol's "Key=Value Key=Value ..." ("" if absent). */
void slurmjob_field(const char *text, const char *key, char *out, size_t len);
/* From `scontrol -o show job` of the job NAME (checked: JobName=NAME):
 * the port it was submitted for, the last word of Command=SCRIPT PORT, and
 * SCRIPT into SCRIPT (LEN). 0 (SCRIPT "") if there is no such word. */
int slurmjob_command_port(const char *show, const char *name, char *script, size_t len);
/* "Slurm job ID ended: STATE" into BUF (LEN), with what STATE means for
 * a job that ran (TIMEOUT: "(it reached its time limit)") or else Slurm's
 * REASON, if it gives one. */
void slurmjob_end_why(char *buf, size_t len, const char *id, const char *state,
		      const char *reason);
/* How far the gateway's clock may be ahead of the Slurm controller's
 * before a job the gateway queued looks older than its sbatch. */
#define SLURMJOB_CLOCK_SLACK_S 60
/* A SubmitTime in local time ("2026-11-30T08:00:00", the default without
 * SLURM_TIME_FORMAT=%s) is the local time of the host scontrol ran on (the
 * login node), whose zone the gateway does not know: it may be up to 26 h
 * (UTC-12 to UTC+14) off the gateway's, and is compared with that slack. */
#define SLURMJOB_ZONE_SLACK_S (26 * 3600)
/* From `scontrol -o show job` SHOW of a job found by its name NAME after
 * sbatch's answer was lost: is it the job that sbatch queued? It must
 * still be named NAME, run SCRIPT PORT for PORT (every gateway's job
 * does) and have been submitted after SINCE (seconds since the epoch, the
 * gateway's clock, less SLURMJOB_CLOCK_SLACK_S, and SLURMJOB_ZONE_SLACK_S
 * for a local time). NULL if so; else why not
 * (WHY, LEN: "it does not run SCRIPT PORT (Command=...)"). */
const char *slurmjob_not_ours(const char *show, const char *name, int port, double since,
			      char *why, size_t len);
/* The first line of `sacct -n -X -P -o State,ExitCode` ("CANCELLED by 0|0:0")
 * split into STATE ("CANCELLED") and CODE ("0:0"); false if it has no state. */
bool slurmjob_sacct_line(const char *out, char *state, size_t slen, char *code, size_t clen);
/* Split "a|b|c" (squeue -o, sinfo -o) in place into up to N fields F;
 * returns how many there are. */
int slurmjob_split(char *line, char **f, int n);
/* Slurm's expected start (squeue %S): seconds since the epoch (with
 * SLURM_TIME_FORMAT=%s) or "2026-11-29T12:24:16" in local time; 0 for
 * "N/A", "Unknown", "" or anything else. */
double slurmjob_start_time(const char *s);
/* The job id in `sbatch --parsable`'s stdout OUT: the last line that is
 * only digits, or digits and ";CLUSTER" ("4711;gpu"), spaces around it
 * trimmed. Site wrappers and login shells may print other lines before
 * (or after) it. False (ID "") if there is none. */
bool slurmjob_sbatch_id(const char *out, char *id, size_t len);
/* The non-empty lines of OUT (a job's output tail), trimmed and joined by
 * " | ", into BUF; when too long, the end is kept, after "...". */
void slurmjob_tail_lines(const char *out, char *buf, size_t len);

#endif
