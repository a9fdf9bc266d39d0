/* slurm_logs.h - the logs of a Slurm service (/api/services/<name>/logs):
 * its job's output file lives on the cluster. While someone reads them (a
 * logs request, or a follower, which asks twice a second), the tail of the
 * job's output (StdErr, else StdOut: sagent_tail, through the remote agent
 * or scontrol + tail over the runner) is fetched at most once a second,
 * one fetch in flight per service, and the lines that are new since the
 * last fetch go into the service's ring (logring.h), prefixed "[INDEX] "
 * as a local service's. The endpoint serves from the ring at once and
 * starts a fetch: the first request for a new job shows a mark, one after a
 * quiet time the output as of the last read; a request a second later the
 * output as it is now. A job that ends by itself is read once more. */
#ifndef SG_SLURM_LOGS_H
#define SG_SLURM_LOGS_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct runner;
struct service;

#define SLURM_LOGS_FETCH_LINES 200   /* lines asked for per fetch (the agent's most) */

/* The logs op for S: as launcher_ops.logs (launcher.h). JOB: the id of
 * S's current job (its instance INDEX, through runner R), or NULL when it
 * has none: the last job read goes on being read until one fetch after its
 * end succeeded. */
int slurm_logs_read(struct service *s, struct runner *r, const char *job, int index,
		    uint64_t *from, size_t max, struct evbuffer *out);
/* Job JOB (of S's instance INDEX, through R) ended by itself: read its
 * output once more, so that a failed job's last lines stay in S's logs
 * although nobody read them while it ran. */
void slurm_logs_ended(struct service *s, struct runner *r, const char *job, int index);

#endif
