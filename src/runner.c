/* runner.c - run a command here or on a login node over one SSH master. */
#include "runner.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "config.h"
#include "gw.h"
#include "log.h"
#include "proc.h"
#include "shquote.h"
#include "util.h"

#define MASTER_CONNECT_S 30
#define MASTER_POLL_MS 25

enum op_kind { OP_CMD, OP_FWD, OP_CANCEL, OP_SPAWN };
enum mstate { M_DOWN, M_CONNECTING, M_UP };

/* A forward this runner wants in place: registered when asked for, so it
 * can be cancelled at any time, even while `ssh -O forward` still runs
 * (the late success is then cancelled at once, never kept or restored). */
struct fwd {
	unsigned id;          /* one per runner_forward() call */
	int lport, rport;
	char host[128];
	bool opening;         /* an `ssh -O forward` for it is queued or running */
};

struct rop {
	TAILQ_ENTRY(rop) link;
	enum op_kind kind;
	char **argv;          /* OP_CMD: owned copy */
	struct fwd f;
	int timeout_s;
	runner_cb cb;
	void *arg;
	struct proc_opts popts;      /* OP_SPAWN (log_prefix: a copy, env: none) */
	char *prefix;
	runner_spawned_cb spawned;
	proc_exit_cb exited;
};

struct runner {
	char *name;
	bool remote;
	char *host, *user, *key;
	int port;
	char **opts;
	char ctl[108];
	struct proc *master;
	enum mstate m;
	struct event *poll_ev, *retry_ev;
	double mstart;
	int mfails;
	TAILQ_HEAD(, rop) queue;
	struct fwd *fwds;     /* the forwards wanted (see struct fwd) */
	int nfwd, fwdcap;
	unsigned fwd_seq;
	LIST_ENTRY(runner) link;
};

static LIST_HEAD(, runner) runners = LIST_HEAD_INITIALIZER(runners);
static struct gw *gw;
static int nrunners;

static void master_start(struct runner *r);
static void rop_exec(struct runner *r, struct rop *op);
static void master_poll_cb(evutil_socket_t fd, short what, void *arg);
static void master_retry_cb(evutil_socket_t fd, short what, void *arg);

void runners_init(struct gw *g)
{
	gw = g;
}

bool runner_is_remote(const struct runner *r)
{
	return r->remote;
}

const char *runner_name(const struct runner *r)
{
	return r->name;
}

struct runner *runner_for(const struct svc_config *svc)
{
	struct runner *r;
	bool remote = svc->remote_host != NULL && svc->remote_host[0] != '\0';

	LIST_FOREACH(r, &runners, link)
		if (r->remote == remote &&
		    (!remote || (str_same(r->host, svc->remote_host) && str_same(r->user, svc->ssh_username) &&
				 r->port == svc->ssh_port && str_same(r->key, svc->ssh_key_file))))
			return r;
	r = xcalloc(1, sizeof *r);
	r->remote = remote;
	TAILQ_INIT(&r->queue);
	if (remote) {
		r->host = xstrdup(svc->remote_host);
		r->user = svc->ssh_username ? xstrdup(svc->ssh_username) : NULL;
		r->key = svc->ssh_key_file ? xstrdup(svc->ssh_key_file) : NULL;
		r->port = svc->ssh_port;
		r->opts = strv_dup(svc->ssh_options);   /* the runner outlives the config */
		r->name = xasprintf("%s%s%s%s%.0d", r->user ? r->user : "", r->user ? "@" : "", r->host,
				    r->port ? ":" : "", r->port);
		/* a unix socket path is short (108 bytes, and ssh adds a 17-byte
		 * temporary suffix): fall back to /tmp for a deep state_dir */
		if (strlen(gw->cfg->state_dir) + 6 + 8 + 17 < sizeof r->ctl)
			snprintf(r->ctl, sizeof r->ctl, "%s/cm-%d", gw->cfg->state_dir, nrunners);
		else
			snprintf(r->ctl, sizeof r->ctl, "/tmp/slurmgate-cm-%d-%d", (int)getpid(), nrunners);
		r->poll_ev = evtimer_new(gw->base, master_poll_cb, r);
		r->retry_ev = evtimer_new(gw->base, master_retry_cb, r);
	} else {
		r->name = xstrdup("local");
	}
	nrunners++;
	LIST_INSERT_HEAD(&runners, r, link);
	return r;
}

/* --- argv building --- */

struct argv_b {
	char **v;
	int n, cap;
};

static void av_add(struct argv_b *a, const char *s)
{
	if (a->n + 2 > a->cap) {
		a->cap = a->cap ? a->cap * 2 : 32;
		a->v = xrealloc(a->v, (size_t)a->cap * sizeof *a->v);
	}
	a->v[a->n++] = xstrdup(s);
	a->v[a->n] = NULL;
}

static void av_opt(struct argv_b *a, const char *fmt, const char *val)
{
	char buf[1200];

	snprintf(buf, sizeof buf, fmt, val);
	av_add(a, "-o");
	av_add(a, buf);
}

static void av_free(char **v)
{
	for (char **p = v; p && *p; p++)
		free(*p);
	free(v);
}

/* A path as ssh reads it in an option: '%' would be expanded as a token. */
static char *ssh_path(const char *p)
{
	size_t n = 0;
	char *out, *o;

	for (const char *q = p; *q; q++)
		n += *q == '%' ? 2 : 1;
	out = o = xmalloc(n + 1);
	for (const char *q = p; *q; q++) {
		if (*q == '%')
			*o++ = '%';
		*o++ = *q;
	}
	*o = '\0';
	return out;
}

/* Append P to B as one double-quoted word of an ssh option value. */
static void ssh_quoted(char *b, size_t len, const char *p)
{
	size_t o = strlen(b);
	char *e = ssh_path(p);

	if (o + 1 < len)
		b[o++] = '"';
	for (const char *q = e; *q && o + 2 < len; q++) {
		if (*q == '"' || *q == '\\')
			b[o++] = '\\';
		b[o++] = *q;
	}
	if (o + 1 < len)
		b[o++] = '"';
	b[o] = '\0';
	free(e);
}

/* The options every ssh invocation to R shares. */
static void ssh_base(struct runner *r, struct argv_b *a)
{
	const char *home = getenv("HOME");
	char known[1100], port[16], path[1100], *e;

	av_add(a, "ssh");
	av_add(a, "-S");
	e = ssh_path(r->ctl);
	av_add(a, e);
	free(e);
	av_opt(a, "BatchMode=%s", "yes");
	av_opt(a, "StrictHostKeyChecking=%s", gw->cfg->ssh_host_key_checking);
	/* ours first (new keys go there), then the user's */
	known[0] = '\0';
	snprintf(path, sizeof path, "%s/known_hosts", gw->cfg->state_dir);
	ssh_quoted(known, sizeof known, path);
	if (home) {
		snprintf(path, sizeof path, "%s/.ssh/known_hosts", home);
		strncat(known, " ", sizeof known - strlen(known) - 1);
		ssh_quoted(known, sizeof known, path);
	}
	av_opt(a, "UserKnownHostsFile=%s", known);
	if (r->key) {
		/* as an option, not -i: ssh stats -i's argument before expanding
		 * '%', so an escaped path would not be found */
		path[0] = '\0';
		ssh_quoted(path, sizeof path, r->key);
		av_opt(a, "IdentityFile=%s", path);
		av_opt(a, "IdentitiesOnly=%s", "yes");
	}
	for (char **o = r->opts; o && *o; o++) {
		av_add(a, "-o");
		av_add(a, *o);
	}
	if (r->port) {
		snprintf(port, sizeof port, "%d", r->port);
		av_add(a, "-p");
		av_add(a, port);
	}
	if (r->user) {
		av_add(a, "-l");
		av_add(a, r->user);
	}
}

/* --- running --- */

struct runctx {
	runner_cb cb;
	void *arg;
	struct runner *r;
	struct fwd f;
	enum op_kind kind;
};

static void fwd_add(struct runner *r, const struct fwd *f)
{
	if (r->nfwd == r->fwdcap) {
		r->fwdcap = r->fwdcap ? r->fwdcap * 2 : 8;
		r->fwds = xrealloc(r->fwds, (size_t)r->fwdcap * sizeof *r->fwds);
	}
	r->fwds[r->nfwd++] = *f;
}

static struct fwd *fwd_by_id(struct runner *r, unsigned id)
{
	for (int k = 0; k < r->nfwd; k++)
		if (r->fwds[k].id == id)
			return &r->fwds[k];
	return NULL;
}

static void fwd_remove(struct runner *r, const struct fwd *f)
{
	int k = (int)(f - r->fwds);

	r->fwds[k] = r->fwds[--r->nfwd];
}

static void fwd_cancel(struct runner *r, const struct fwd *f);

/* The `ssh -O forward` for F is over (STATUS 0: in place). A forward
 * unforwarded meanwhile is cancelled now; a failed one is forgotten. */
static void fwd_result(struct runner *r, const struct fwd *f, int status)
{
	struct fwd *e = fwd_by_id(r, f->id);

	if (e == NULL) {
		if (status == 0) {
			log_info("forward 127.0.0.1:%d -> %s:%d came up after it was given up: cancelling it",
				 f->lport, f->host, f->rport);
			fwd_cancel(r, f);
		}
		return;
	}
	e->opening = false;
	if (status != 0)
		fwd_remove(r, e);
}

static void run_exited(struct proc *p, int status, void *arg)
{
	struct runctx *x = arg;
	struct evbuffer *out = proc_stdout(p);
	char *text;
	size_t n = evbuffer_get_length(out);

	text = xmalloc(n + 1);
	evbuffer_remove(out, text, n);
	text[n] = '\0';
	if (x->kind == OP_FWD)
		fwd_result(x->r, &x->f, status);
	if (x->cb)
		x->cb(x->arg, status, text, proc_last_line(p));
	free(text);
	free(x);
}

/* Spawn argv; report through cb. */
static void spawn(struct runner *r, char **argv, int timeout_s, enum op_kind kind,
		  const struct fwd *f, runner_cb cb, void *arg)
{
	struct proc_opts o = {0};
	struct runctx *x = xcalloc(1, sizeof *x);
	char *cause = NULL;

	x->cb = cb;
	x->arg = arg;
	x->r = r;
	x->kind = kind;
	if (f)
		x->f = *f;
	o.capture_stdout = true;
	o.timeout_s = timeout_s;
	o.log_prefix = argv[0];
	if (proc_spawn(argv, &o, run_exited, x, &cause) == NULL) {
		if (kind == OP_FWD)
			fwd_result(r, f, 127 << 8);
		if (cb)
			cb(arg, 127 << 8, "", cause);
		free(cause);
		free(x);
	}
}

/* OP_SPAWN: start ARGV as a long-lived process. */
static void spawn_long(struct rop *op, char *const argv[])
{
	char *cause = NULL;
	struct proc *p = proc_spawn(argv, &op->popts, op->exited, op->arg, &cause);

	op->spawned(op->arg, p, p ? NULL : cause);
	free(cause);
}

static void rop_exec(struct runner *r, struct rop *op)
{
	struct argv_b a = {0};
	char spec[300];

	if (!r->remote && op->kind == OP_SPAWN) {
		spawn_long(op, op->argv);
		return;
	}
	if (!r->remote) {
		spawn(r, op->argv, op->timeout_s, OP_CMD, NULL, op->cb, op->arg);
		return;
	}
	ssh_base(r, &a);
	av_opt(&a, "ControlMaster=%s", "no");
	if (op->kind == OP_CMD || op->kind == OP_SPAWN) {
		char *line = sh_join(op->argv);
		av_add(&a, r->host);
		av_add(&a, "--");
		av_add(&a, line);
		free(line);
	} else {
		snprintf(spec, sizeof spec, strchr(op->f.host, ':') ? "127.0.0.1:%d:[%s]:%d" : "127.0.0.1:%d:%s:%d",
			 op->f.lport, op->f.host, op->f.rport);
		av_add(&a, "-O");
		av_add(&a, op->kind == OP_FWD ? "forward" : "cancel");
		av_add(&a, "-L");
		av_add(&a, spec);
		av_add(&a, r->host);
	}
	if (op->kind == OP_SPAWN)
		spawn_long(op, a.v);
	else
		spawn(r, a.v, op->timeout_s, op->kind, &op->f, op->cb, op->arg);
	av_free(a.v);
}

static void rop_free(struct rop *op)
{
	av_free(op->argv);
	free(op->prefix);
	free(op);
}

/* Queue or run an operation on R. */
static void rop_submit(struct runner *r, struct rop *op)
{
	if (!r->remote || r->m == M_UP) {
		rop_exec(r, op);
		rop_free(op);
		return;
	}
	TAILQ_INSERT_TAIL(&r->queue, op, link);
	if (r->m == M_DOWN)
		master_start(r);
}

void runner_run(struct runner *r, char *const argv[], int timeout_s, runner_cb cb, void *arg)
{
	struct rop *op = xcalloc(1, sizeof *op);
	struct argv_b a = {0};

	for (int k = 0; argv[k]; k++)
		av_add(&a, argv[k]);
	op->kind = OP_CMD;
	op->argv = a.v;
	op->timeout_s = timeout_s;
	op->cb = cb;
	op->arg = arg;
	rop_submit(r, op);
}

void runner_spawn(struct runner *r, char *const argv[], const struct proc_opts *o,
		  runner_spawned_cb spawned, proc_exit_cb exited, void *arg)
{
	struct rop *op = xcalloc(1, sizeof *op);
	struct argv_b a = {0};

	for (int k = 0; argv[k]; k++)
		av_add(&a, argv[k]);
	op->kind = OP_SPAWN;
	op->argv = a.v;
	op->popts = *o;
	/* the caller's strings may be gone when the master is up */
	op->prefix = o->log_prefix ? xstrdup(o->log_prefix) : NULL;
	op->popts.log_prefix = op->prefix;
	op->popts.env = NULL;
	op->spawned = spawned;
	op->exited = exited;
	op->arg = arg;
	rop_submit(r, op);
}

void runner_forward(struct runner *r, int lport, const char *host, int rport, runner_cb cb,
		    void *arg)
{
	struct rop *op = xcalloc(1, sizeof *op);

	op->kind = OP_FWD;
	op->f.id = ++r->fwd_seq;
	op->f.lport = lport;
	op->f.rport = rport;
	op->f.opening = true;
	snprintf(op->f.host, sizeof op->f.host, "%s", host);
	fwd_add(r, &op->f);
	op->timeout_s = 20;
	op->cb = cb;
	op->arg = arg;
	rop_submit(r, op);
}

/* `ssh -O cancel` for F (without a master the forward is gone anyway). */
static void fwd_cancel(struct runner *r, const struct fwd *f)
{
	struct rop op = {.kind = OP_CANCEL, .f = *f, .timeout_s = 20};

	if (r->m == M_UP)
		rop_exec(r, &op);
}

void runner_unforward(struct runner *r, int lport)
{
	for (int k = 0; k < r->nfwd; k++) {
		struct fwd f = r->fwds[k];
		if (f.lport != lport)
			continue;
		fwd_remove(r, &r->fwds[k]);
		/* still opening: fwd_result cancels it when it comes up */
		if (!f.opening)
			fwd_cancel(r, &f);
		return;
	}
}

bool runner_forwarding(struct runner *r, int lport)
{
	for (int k = 0; k < r->nfwd; k++)
		if (r->fwds[k].lport == lport)
			return true;
	return false;
}

/* --- the master connection --- */

static void fail_queue(struct runner *r, const char *why)
{
	struct rop *op;

	while ((op = TAILQ_FIRST(&r->queue)) != NULL) {
		TAILQ_REMOVE(&r->queue, op, link);
		if (op->kind == OP_FWD)
			fwd_result(r, &op->f, 255 << 8);
		if (op->kind == OP_SPAWN)
			op->spawned(op->arg, NULL, why);
		else if (op->cb)
			op->cb(op->arg, 255 << 8, "", why);
		rop_free(op);
	}
}

static void master_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct runner *r = arg;

	(void)fd, (void)what;
	if (r->m == M_DOWN && (r->nfwd > 0 || !TAILQ_EMPTY(&r->queue)))
		master_start(r);
}

static void master_exited(struct proc *p, int status, void *arg)
{
	struct runner *r = arg;
	char st[96], why[700];
	const char *last = proc_last_line(p);
	int delay;

	proc_status_str(status, st, sizeof st);
	/* ssh's last words, unless they are only a note about known hosts */
	if (has_prefix(last, "Warning: Permanently added"))
		last = "";
	snprintf(why, sizeof why, "ssh to %s: %s", r->name, last[0] ? last : st);
	r->master = NULL;
	unlink(r->ctl);
	if (r->m == M_CONNECTING)
		log_warn("%s (could not connect)", why);
	else
		log_warn("ssh master to %s died (%s); %d forwards to restore", r->name, last[0] ? last : st,
			 r->nfwd);
	r->m = M_DOWN;
	r->mfails++;
	fail_queue(r, why);
	/* restore the forwards with backoff: 1, 2, 4 ... 30 s */
	delay = r->mfails > 5 ? 30 : 1 << (r->mfails - 1);
	event_del(r->poll_ev);
	if (r->nfwd > 0)
		event_add(r->retry_ev, &(struct timeval){delay, 0});
}

static void master_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	struct runner *r = arg;
	struct stat st;
	struct rop *op;
	unsigned *ids;
	int n = 0;

	(void)fd, (void)what;
	if (r->m != M_CONNECTING || r->master == NULL)
		return;
	if (stat(r->ctl, &st) != 0) {
		if (now_s() - r->mstart > MASTER_CONNECT_S) {
			log_warn("ssh to %s: no connection after %d s", r->name, MASTER_CONNECT_S);
			proc_terminate(r->master, 2);
			return;
		}
		event_add(r->poll_ev, &(struct timeval){0, MASTER_POLL_MS * 1000});
		return;
	}
	r->m = M_UP;
	r->mfails = 0;
	log_info("ssh master to %s up after %.2f s", r->name, now_s() - r->mstart);
	/* restore the forwards that died with an earlier master; those still
	 * opening have their own `ssh -O forward` queued or under way */
	ids = xcalloc((size_t)r->nfwd + 1, sizeof *ids);
	for (int k = 0; k < r->nfwd; k++)
		if (!r->fwds[k].opening)
			ids[n++] = r->fwds[k].id;
	for (int k = 0; k < n; k++) {
		struct fwd *e = fwd_by_id(r, ids[k]);   /* rop_exec may change fwds */
		struct rop f = {.kind = OP_FWD, .timeout_s = 20};
		if (e == NULL)
			continue;
		e->opening = true;
		f.f = *e;
		rop_exec(r, &f);
	}
	free(ids);
	if (n > 0)
		log_info("ssh master to %s: restoring %d forwards", r->name, n);
	while ((op = TAILQ_FIRST(&r->queue)) != NULL) {
		TAILQ_REMOVE(&r->queue, op, link);
		rop_exec(r, op);
		rop_free(op);
	}
}

static void master_start(struct runner *r)
{
	struct argv_b a = {0};
	struct proc_opts o = {0};
	char *cause = NULL, prefix[300];

	unlink(r->ctl);   /* a stale socket from a gateway that was killed */
	ssh_base(r, &a);
	av_add(&a, "-M");
	av_add(&a, "-N");
	av_opt(&a, "ControlPersist=%s", "no");
	av_opt(&a, "ServerAliveInterval=%s", "15");
	av_opt(&a, "ServerAliveCountMax=%s", "3");
	av_opt(&a, "ExitOnForwardFailure=%s", "yes");
	av_opt(&a, "ConnectTimeout=%s", "20");
	av_add(&a, r->host);
	snprintf(prefix, sizeof prefix, "ssh master %s", r->name);
	o.pdeathsig = SIGTERM;
	o.log_prefix = prefix;
	r->mstart = now_s();
	r->m = M_CONNECTING;
	r->master = proc_spawn(a.v, &o, master_exited, r, &cause);
	av_free(a.v);
	if (r->master == NULL) {
		r->m = M_DOWN;
		fail_queue(r, cause);
		free(cause);
		return;
	}
	event_add(r->poll_ev, &(struct timeval){0, MASTER_POLL_MS * 1000});
}

void runners_shutdown(void)
{
	struct runner *r;

	while ((r = LIST_FIRST(&runners)) != NULL) {
		LIST_REMOVE(r, link);
		if (r->master) {
			proc_forget(r->master);
			proc_terminate(r->master, 1);
		}
		if (r->remote)
			unlink(r->ctl);
		fail_queue(r, "the gateway is exiting");
		if (r->poll_ev)
			event_free(r->poll_ev);
		if (r->retry_ev)
			event_free(r->retry_ev);
		free(r->fwds);
		free(r->name);
		free(r->host);
		free(r->user);
		free(r->key);
		for (char **o = r->opts; o && *o; o++)
			free(*o);
		free(r->opts);
		free(r);
	}
}
