/* proc.c - asynchronous child processes on the event loop.
 *
 * The safe spawn: signals blocked around fork; in the child every signal
 * reset, the pipes dup2'd, every other descriptor closed, and an exec
 * failure reported through a close-on-exec pipe so the caller gets errno. */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/queue.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "gw.h"
#include "log.h"
#include "ptree.h"
#include "util.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

struct proc {
	pid_t pid;
	bool pgrp;
	struct ptree *tree;  /* the leader's whole tree (NULL: none) */
	bool reaped;         /* the leader is; the tree may live on */
	bool terminating;    /* proc_terminate was called */
	bool killed;         /* SIGKILL was sent to the tree */
	int status;          /* the leader's wait status */
	double killed_at;
	struct event *poll_ev; /* waiting for the tree to be gone */
	proc_exit_cb cb;
	void *arg;
	void (*on_line)(void *arg, const char *line, size_t len);
	int out_fd, err_fd, in_fd;
	void (*on_stdout)(struct proc *p, void *arg);
	struct event *out_ev, *err_ev, *kill_ev, *deadline_ev;
	struct evbuffer *out;
	char line[512];      /* the stderr line being read */
	size_t linelen;
	char last[512];      /* the last complete non-empty stderr line */
	char *prefix;
	LIST_ENTRY(proc) link;
};

static LIST_HEAD(, proc) procs = LIST_HEAD_INITIALIZER(procs);
static struct gw *gw;
static struct event *sigchld_ev;
static int nprocs;

static void kill_cb(evutil_socket_t fd, short what, void *arg);
static void tree_poll_cb(evutil_socket_t fd, short what, void *arg);

static void proc_free(struct proc *p)
{
	LIST_REMOVE(p, link);
	nprocs--;
	if (p->out_ev)
		event_free(p->out_ev);
	if (p->err_ev)
		event_free(p->err_ev);
	if (p->kill_ev)
		event_free(p->kill_ev);
	if (p->deadline_ev)
		event_free(p->deadline_ev);
	if (p->poll_ev)
		event_free(p->poll_ev);
	ptree_free(p->tree);
	if (p->out_fd >= 0)
		close(p->out_fd);
	if (p->err_fd >= 0)
		close(p->err_fd);
	if (p->in_fd >= 0)
		close(p->in_fd);
	evbuffer_free(p->out);
	free(p->prefix);
	free(p);
}

/* Split stderr into lines: log each one, keep the last non-empty one. */
static void err_bytes(struct proc *p, const char *buf, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char ch = buf[i];
		if (ch == '\n' || p->linelen == sizeof p->line - 1) {
			p->line[p->linelen] = '\0';
			if (p->linelen > 0) {
				snprintf(p->last, sizeof p->last, "%s", log_escape(p->line, p->linelen));
				log_debug("%s: %s", p->prefix, log_escape(p->line, p->linelen));
			}
			if (p->on_line && (p->linelen > 0 || ch == '\n'))
				p->on_line(p->arg, p->line, p->linelen);
			p->linelen = 0;
			if (ch == '\n')
				continue;
		}
		if (ch != '\r')
			p->line[p->linelen++] = ch;
	}
}

/* A pipe's reader takes at most this much per turn of the event loop: a
 * child that writes faster than we read (binary garbage, a flood of lines)
 * must not keep the loop from everything else; the rest waits in the pipe,
 * and the writer with it. */
#define PIPE_SLICE (64 * 1024)

/* Read what a pipe has, at most MAX bytes; 0 at EOF or error, 1 if it may
 * have more. */
static int pipe_read(struct proc *p, int fd, bool is_out, size_t max)
{
	char buf[4096];
	size_t got = 0;
	ssize_t n;

	for (;;) {
		if (got >= max)
			return 1;
		n = read(fd, buf, sizeof buf);
		if (n > 0) {
			got += (size_t)n;
			if (is_out)
				evbuffer_add(p->out, buf, (size_t)n);
			else
				err_bytes(p, buf, (size_t)n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return 1;
		return 0;
	}
}

static void pipe_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proc *p = arg;
	bool is_out = fd == p->out_fd;

	int more;

	(void)what;
	more = pipe_read(p, fd, is_out, PIPE_SLICE);
	if (is_out && p->on_stdout && evbuffer_get_length(p->out) > 0)
		p->on_stdout(p, p->arg);
	if (more == 0) {
		struct event **ev = is_out ? &p->out_ev : &p->err_ev;
		event_free(*ev);
		*ev = NULL;
		close(fd);
		if (is_out)
			p->out_fd = -1;
		else
			p->err_fd = -1;
	}
}

/* The leader is reaped and its tree is gone: report, free. */
static void finish(struct proc *p)
{
	if (p->cb)
		p->cb(p, p->status, p->arg);
	proc_free(p);
}

/* SIGKILL to every process of the tree (again on each poll: a fork may
 * race the kill when there is no cgroup.kill). */
static void tree_kill(struct proc *p)
{
	if (!p->killed) {
		p->killed = true;
		p->killed_at = now_s();
	}
	ptree_signal(p->tree, SIGKILL);
}

/* Finish if the tree is gone, else look again shortly. */
static void tree_check(struct proc *p)
{
	if (ptree_empty(p->tree)) {
		finish(p);
		return;
	}
	if (p->killed && now_s() - p->killed_at > 10) {
		log_error("%s: processes of pid %d's tree survive SIGKILL for 10 s; giving up on them",
			  p->prefix, (int)p->pid);
		finish(p);
		return;
	}
	if (p->killed)
		ptree_signal(p->tree, SIGKILL);
	if (p->poll_ev == NULL)
		p->poll_ev = evtimer_new(gw->base, tree_poll_cb, p);
	event_add(p->poll_ev, &(struct timeval){0, 50000});
}

static void tree_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	tree_check(arg);
}

static void reaped(struct proc *p, int status)
{
	/* take what is still in the pipes, without waiting for EOF: a
	 * grandchild may hold them open forever (and keep writing: bounded,
	 * a pipe holds 64 KiB unless enlarged) */
	if (p->out_fd >= 0)
		pipe_read(p, p->out_fd, true, 16 * PIPE_SLICE);
	if (p->err_fd >= 0)
		pipe_read(p, p->err_fd, false, 16 * PIPE_SLICE);
	if (p->linelen > 0)
		err_bytes(p, "\n", 1);
	if (p->tree) {
		/* the instance ends with its leader; while stopping, the rest
		 * has until the grace is over (kill_cb) to end by itself */
		p->reaped = true;
		p->status = status;
		if (!p->terminating)
			tree_kill(p);
		tree_check(p);
		return;
	}
	if (p->pgrp)
		kill(-p->pid, SIGKILL);   /* nothing of the group outlives its leader */
	if (p->cb)
		p->cb(p, status, p->arg);
	proc_free(p);
}

static void sigchld_cb(evutil_socket_t sig, short what, void *arg)
{
	pid_t pid;
	int status;

	(void)sig, (void)what, (void)arg;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		struct proc *p;
		LIST_FOREACH(p, &procs, link)
			if (p->pid == pid && !p->reaped)
				break;
		if (p != NULL)
			reaped(p, status);
	}
}

void proc_init(struct gw *g)
{
	gw = g;
	sigchld_ev = evsignal_new(g->base, SIGCHLD, sigchld_cb, NULL);
	event_add(sigchld_ev, NULL);
}

/* In the child: never returns. */
static void child(char *const argv[], const struct proc_opts *o, struct ptree *tree, int in_r,
		  int out_w, int err_w, int exec_w)
{
	sigset_t none;
	int devnull;

	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (o->new_pgrp)
		setpgid(0, 0);
	if (o->pdeathsig)
		prctl(PR_SET_PDEATHSIG, o->pdeathsig);
	if (tree != NULL) {
		if (ptree_enter(tree) != 0) {
			int e = -errno;
			if (write(exec_w, &e, sizeof e) < 0)
				_exit(127);
			_exit(127);
		}
		putenv((char *)ptree_env(tree));
	}
	devnull = in_r >= 0 ? in_r : open("/dev/null", O_RDONLY);
	if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0)
		goto fail;
	/* every descriptor past stderr closes on exec, the report pipe too */
	if (syscall(436 /* close_range */, 3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
		long max = sysconf(_SC_OPEN_MAX);
		for (int fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); fd++)
			if (fd != exec_w)
				close(fd);
	}
	for (const char *const *e = o->env; e && *e; e++)
		putenv((char *)*e);
	execvp(argv[0], argv);
fail:;
	int e = errno;
	if (write(exec_w, &e, sizeof e) < 0)
		_exit(127);
	_exit(127);
}

struct proc *proc_spawn(char *const argv[], const struct proc_opts *o, proc_exit_cb cb, void *arg,
			char **cause)
{
	int outp[2] = {-1, -1}, inp[2] = {-1, -1}, errp[2], execp[2];
	sigset_t all, old;
	struct ptree *tree = NULL;
	struct proc *p;
	pid_t pid;
	int e = 0;
	ssize_t n;

	if (pipe2(errp, O_CLOEXEC) != 0) {
		*cause = xasprintf("pipe: %s", strerror(errno));
		return NULL;
	}
	if (o->capture_stdout && pipe2(outp, O_CLOEXEC) != 0) {
		*cause = xasprintf("pipe: %s", strerror(errno));
		close(errp[0]), close(errp[1]);
		return NULL;
	}
	if (o->stdin_pipe && pipe2(inp, O_CLOEXEC) != 0) {
		*cause = xasprintf("pipe: %s", strerror(errno));
		close(errp[0]), close(errp[1]);
		if (outp[0] >= 0)
			close(outp[0]), close(outp[1]);
		return NULL;
	}
	if (pipe2(execp, O_CLOEXEC) != 0) {
		*cause = xasprintf("pipe: %s", strerror(errno));
		close(errp[0]), close(errp[1]);
		if (outp[0] >= 0)
			close(outp[0]), close(outp[1]);
		if (inp[0] >= 0)
			close(inp[0]), close(inp[1]);
		return NULL;
	}
	if (o->tree)
		tree = ptree_new();
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &old);
	pid = fork();
	if (pid == 0)
		child(argv, o, tree, inp[0], o->capture_stdout ? outp[1] : errp[1], errp[1], execp[1]);
	sigprocmask(SIG_SETMASK, &old, NULL);
	close(execp[1]);
	close(errp[1]);
	if (outp[1] >= 0)
		close(outp[1]);
	if (inp[0] >= 0)
		close(inp[0]);
	if (pid < 0) {
		*cause = xasprintf("fork: %s", strerror(errno));
		ptree_free(tree);
		close(execp[0]), close(errp[0]);
		if (outp[0] >= 0)
			close(outp[0]);
		if (inp[1] >= 0)
			close(inp[1]);
		return NULL;
	}
	/* wait for exec: EOF means it worked, an int is the child's errno */
	do
		n = read(execp[0], &e, sizeof e);
	while (n < 0 && errno == EINTR);
	close(execp[0]);
	if (n == sizeof e) {
		waitpid(pid, NULL, 0);
		if (e < 0)
			*cause = xasprintf("cannot put %s into its cgroup: %s", argv[0], strerror(-e));
		else
			*cause = xasprintf("cannot execute %s: %s", argv[0], strerror(e));
		ptree_free(tree);
		close(errp[0]);
		if (outp[0] >= 0)
			close(outp[0]);
		if (inp[1] >= 0)
			close(inp[1]);
		return NULL;
	}
	if (o->new_pgrp)
		setpgid(pid, pid);   /* also here: no race with an early kill */

	p = xcalloc(1, sizeof *p);
	p->pid = pid;
	p->pgrp = o->new_pgrp;
	p->tree = tree;
	if (tree)
		ptree_set_leader(tree, o->new_pgrp ? pid : 0);
	p->cb = cb;
	p->arg = arg;
	p->on_line = o->on_line;
	p->out = evbuffer_new();
	p->prefix = xstrdup(o->log_prefix ? o->log_prefix : argv[0]);
	p->err_fd = errp[0];
	p->out_fd = outp[0];
	p->in_fd = inp[1];
	p->on_stdout = o->on_stdout;
	if (p->in_fd >= 0)
		evutil_make_socket_nonblocking(p->in_fd);
	evutil_make_socket_nonblocking(p->err_fd);
	p->err_ev = event_new(gw->base, p->err_fd, EV_READ | EV_PERSIST, pipe_cb, p);
	event_add(p->err_ev, NULL);
	if (p->out_fd >= 0) {
		evutil_make_socket_nonblocking(p->out_fd);
		p->out_ev = event_new(gw->base, p->out_fd, EV_READ | EV_PERSIST, pipe_cb, p);
		event_add(p->out_ev, NULL);
	}
	LIST_INSERT_HEAD(&procs, p, link);
	nprocs++;
	if (o->timeout_s > 0) {
		p->kill_ev = evtimer_new(gw->base, kill_cb, p);
		event_add(p->kill_ev, &(struct timeval){o->timeout_s, 0});
	}
	return p;
}

pid_t proc_pid(const struct proc *p)
{
	return p->pid;
}

const struct ptree *proc_tree(const struct proc *p)
{
	return p->tree;
}

const char *proc_last_line(const struct proc *p)
{
	return p->last;
}

int proc_stdin_fd(const struct proc *p)
{
	return p->in_fd;
}

struct evbuffer *proc_stdout(struct proc *p)
{
	return p->out;
}

static void kill_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proc *p = arg;

	(void)fd, (void)what;
	if (p->tree && p->reaped)
		log_warn("%s: pid %d exited, but its process tree did not stop in time; sending "
			 "SIGKILL to the tree", p->prefix, (int)p->pid);
	else
		log_warn("%s: pid %d did not stop in time, sending SIGKILL%s", p->prefix,
			 (int)p->pid, p->tree ? " to its process tree" : "");
	if (p->tree) {
		if (!p->reaped)
			kill(p->pid, SIGKILL);
		tree_kill(p);
		return;
	}
	kill(p->pgrp ? -p->pid : p->pid, SIGKILL);
}

void proc_terminate(struct proc *p, int grace_s)
{
	if (p->kill_ev == NULL)
		p->kill_ev = evtimer_new(gw->base, kill_cb, p);
	if (p->terminating && p->tree)
		return;   /* already under way; the deadline stands */
	p->terminating = true;
	if (p->tree) {
		if (!p->reaped)
			kill(p->pid, SIGTERM);
		ptree_signal(p->tree, SIGTERM);
	} else {
		kill(p->pgrp ? -p->pid : p->pid, SIGTERM);
	}
	event_add(p->kill_ev, &(struct timeval){grace_s, 0});
}

void proc_forget(struct proc *p)
{
	p->cb = NULL;
	p->on_line = NULL;
	p->arg = NULL;
}

void proc_status_str(int status, char *buf, size_t len)
{
	if (WIFEXITED(status))
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(buf, len, "ended (status 0x%x)", status);
}

int proc_count(void)
{
	return nprocs;
}
