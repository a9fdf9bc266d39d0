/* slurm_record.h - where this gateway's Slurm jobs may be, across runs.
 *
 * The start-up scan (slurm_recover.c) looks for an earlier run's jobs on
 * the targets (login nodes, or here) that the config names, by the
 * instance_id in the job names. A restart with an edited config would miss
 * the jobs on a target no service names any more (the last Slurm service
 * removed, moved to another login node) and those named by an instance_id
 * that changed: they would run on untracked until their time limit. So
 * state_dir/slurm_targets.json records every target this run used and its
 * instance_id; the next start scans the recorded targets too (a target no
 * service uses is tried ORPHAN_TRIES times: slurm_recover.c) and names in
 * the log the jobs named by a recorded id that is no longer the config's.
 * Those are never cancelled: another gateway of the account may use that
 * id now (a cloned config and state_dir, a home shared by login nodes). */
#ifndef SG_SLURM_RECORD_H
#define SG_SLURM_RECORD_H

#include <stdbool.h>

struct gw;
struct runner;

/* main.c, after services_init(): read the earlier run's record, scan the
 * recorded targets the config does not name, write the record anew. */
void slurm_record_init(struct gw *g);
/* main.c, after a reload: the targets of the config in force join it. */
void slurm_record_update(void);
/* slurm_recover.c: is NAME a job name of an earlier run under another
 * instance_id (one the record holds)? (Said in the log, never cancelled.) */
bool slurm_record_earlier_name(const char *name);
/* slurm_recover.c: the scan of R succeeded. */
void slurm_record_scanned(struct runner *r);
/* slurm_recover.c: scan R for an earlier run's jobs (none of them is
 * adoptable unless a service of the config runs on R). */
void slurm_recover_target(struct runner *r);

#endif
