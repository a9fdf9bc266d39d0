/* proc.h - asynchronous child processes on the event loop.
 *
 * Children are spawned from an argv vector (never a shell string), with
 * stdin from /dev/null, stdout captured or discarded, stderr captured line
 * by line. SIGCHLD arrives as a libevent signal event followed by a
 * waitpid(WNOHANG) loop; the exit callback runs once the child is reaped. */
#ifndef SG_PROC_H
#define SG_PROC_H

#include <stdbool.h>
#include <sys/types.h>

struct gw;
struct evbuffer;
struct proc;
struct ptree;

/* status: as from waitpid. The proc is freed right after this returns.
 * With a tree (proc_opts.tree), this runs once the leader is reaped AND
 * every process of its tree is gone. */
typedef void (*proc_exit_cb)(struct proc *p, int status, void *arg);

struct proc_opts {
	bool new_pgrp;              /* own process group (kill() reaches all of it) */
	bool capture_stdout;        /* else stdout goes to stderr's pipe */
	int pdeathsig;              /* signal sent to the child if we die (0: none) */
	const char *const *env;     /* extra "NAME=value" entries, NULL-terminated */
	const char *log_prefix;     /* stderr lines are logged at debug level with it */
	int timeout_s;              /* > 0: SIGKILL after this many seconds */
	/* The child and everything it starts form one process tree (ptree.h),
	 * killed as a whole: SIGKILL to the rest when the leader exits on its
	 * own; on proc_terminate SIGTERM to all, SIGKILL after the grace. */
	bool tree;
	/* Each line the child writes to stderr (and stdout, unless captured),
	 * with the ARG of proc_spawn; not after proc_forget. */
	void (*on_line)(void *arg, const char *line, size_t len);
	/* stdin from a pipe whose write end is proc_stdin_fd() (the proc owns
	 * it and closes it when freed), instead of /dev/null */
	bool stdin_pipe;
	/* capture_stdout: called each time bytes were added to proc_stdout()
	 * (not after the exit callback) */
	void (*on_stdout)(struct proc *p, void *arg);
};

/* Set up SIGCHLD handling on G's event base (gw.h). */
void proc_init(struct gw *g);
/* Start argv[0] (searched in PATH). Returns NULL and sets *cause (malloc'd)
 * if it cannot be executed. */
struct proc *proc_spawn(char *const argv[], const struct proc_opts *o, proc_exit_cb cb, void *arg,
			char **cause);
pid_t proc_pid(const struct proc *p);
/* P's process tree (NULL: spawned without one). */
const struct ptree *proc_tree(const struct proc *p);
/* The last non-empty line the child wrote to stderr ("" if none). */
const char *proc_last_line(const struct proc *p);
/* Everything the child wrote to stdout so far (capture_stdout). */
struct evbuffer *proc_stdout(struct proc *p);
/* The write end of the child's stdin (stdin_pipe), -1 otherwise. */
int proc_stdin_fd(const struct proc *p);
/* SIGTERM to the child (its group or tree if it has one), SIGKILL after grace_s. */
void proc_terminate(struct proc *p, int grace_s);
/* The owner no longer wants the exit callback; the proc still gets reaped. */
void proc_forget(struct proc *p);
/* Describe a wait status: "exited with status 3", "killed by signal 9". */
void proc_status_str(int status, char *buf, size_t len);
/* Children alive now. */
int proc_count(void);

#endif
