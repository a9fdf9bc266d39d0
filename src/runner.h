/* runner.h - run a command here or on a login node over one SSH master.
 *
 * A runner is a target: this host, or (user, host, port) reached through
 * one persistent OpenSSH ControlMaster connection that every command and
 * every port forward shares. Commands are argv vectors; for a remote
 * target they are quoted once (shquote.h) into the remote command line.
 * If the master dies it is re-established with backoff and its forwards
 * restored. */
#ifndef SG_RUNNER_H
#define SG_RUNNER_H

#include <stdbool.h>

#include "proc.h"

struct runner;
struct svc_config;
struct gw;

/* status: wait status of the command (0 = success); out: its stdout;
 * err: its last stderr line (or why it could not run). */
typedef void (*runner_cb)(void *arg, int status, const char *out, const char *err);

/* Keep G (gw.h): its base, and its config in force (state_dir, host key
 * checking). A runner copies what it keeps of a service's settings. */
void runners_init(struct gw *g);
/* The runner for a service's target (shared between services). */
struct runner *runner_for(const struct svc_config *svc);
bool runner_is_remote(const struct runner *r);
const char *runner_name(const struct runner *r);
/* Run argv (argv[0] is looked up in PATH on the target). */
void runner_run(struct runner *r, char *const argv[], int timeout_s, runner_cb cb, void *arg);
/* Forward 127.0.0.1:lport here to host:rport as seen from the login node
 * (remote runners only); cb reports whether it is in place. */
void runner_forward(struct runner *r, int lport, const char *host, int rport, runner_cb cb,
		    void *arg);
/* Remove a forward, also while it is still being opened (it is then
 * cancelled as soon as it is in place). Without a master it is gone anyway;
 * either way it is never restored. */
void runner_unforward(struct runner *r, int lport);
/* Is the forward on LPORT wanted and not failed (in place or opening)?
 * False once a restore after a master restart failed. */
bool runner_forwarding(struct runner *r, int lport);
/* spawned: the process is running (P), or it could not be started (P NULL,
 * ERR says why). */
typedef void (*runner_spawned_cb)(void *arg, struct proc *p, const char *err);
/* Start argv on R as a long-lived process with options O (a remote target:
 * a session through the master, once the master is up; O's log_prefix is
 * copied, its env is not used). SPAWNED reports
 * the start; EXITED is proc_spawn's exit callback for it. */
void runner_spawn(struct runner *r, char *const argv[], const struct proc_opts *o,
		  runner_spawned_cb spawned, proc_exit_cb exited, void *arg);
/* Stop every master connection (at exit). */
void runners_shutdown(void);

#endif
