/* slurm_agent.c - the gateway's side of remote/slurmgate-agent.
 *
 * Protocol (the agent's header has the full text): a request is
 * "ID<TAB>VERB<TAB>ARG...", an answer "ID<TAB>STATUS<TAB>ERR[<TAB>OUT]"
 * with OUT's lines joined by RS (\036); pushed lines start with "*". A
 * request waits in `waiting` until the agent said hello, then in `sent`
 * until its answer. When the agent dies, what was sent is sent again to
 * the next one, except a submit (it may have happened: it fails). */
#include "slurm_agent.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "config.h"
#include "gw.h"
#include "launcher.h"
#include "log.h"
#include "proc.h"
#include "util.h"

#define RESTART_MIN_S 5
#define RESTART_MAX_S 300
#define HELLO_TIMEOUT_S 60
#define MAX_JOBS 1024
#define AGENT_FAST_MS 200   /* the watcher's cycle while jobs start or stop,
			     * unless poll_fast_ms is set */

enum astate {
	A_DOWN,       /* not running; starts with the next request */
	A_STARTING,   /* spawned (or waiting for the master); no hello yet */
	A_UP,         /* said hello: requests go to it, it watches */
	A_FALLBACK,   /* could not be started: plain commands until retry_ev */
};

struct areq {
	TAILQ_ENTRY(areq) link;
	unsigned id;
	char **argv;        /* the plain command (the fallback) */
	char *line;         /* the request without its id */
	bool submit;        /* never sent twice */
	int timeout_s;
	double deadline;    /* once sent */
	runner_cb cb;
	void *arg;
};

TAILQ_HEAD(areqs, areq);

/* A job the agent watches, with the last line it pushed for it. */
struct ajob {
	char id[32];
	char *line;         /* NULL: not pushed yet */
	LIST_ENTRY(ajob) link;
};

struct agent {
	struct runner *r;
	char *path;
	enum astate st;
	struct proc *p;
	struct event *wev;       /* the agent's stdin is writable */
	struct event *tick_ev;   /* deadlines, hello timeout */
	struct event *retry_ev;  /* leave A_FALLBACK */
	struct evbuffer *outq;   /* request lines not written yet */
	struct areqs waiting, sent;
	unsigned seq;
	int fails;
	bool unused;             /* no service names it since a reload */
	double spawned_at, up_at;
	char why[400];           /* A_FALLBACK: why */
	char status[440];        /* for /api */
	LIST_HEAD(, ajob) jobs;
	int njobs;
	LIST_ENTRY(agent) link;
};

static LIST_HEAD(, agent) agents = LIST_HEAD_INITIALIZER(agents);
static struct gw *gw;   /* the event base and the config in force (gw.h) */
static struct sagent_hooks hooks;

static void agent_start(struct agent *a);
static void agent_flush(struct agent *a);

/* R's agent (NULL: none, or none since a reload). */
static struct agent *agent_of(const struct runner *r)
{
	struct agent *a;

	LIST_FOREACH(a, &agents, link)
		if (a->r == r)
			return a->unused ? NULL : a;
	return NULL;
}

static void av_free(char **v)
{
	for (char **p = v; p && *p; p++)
		free(*p);
	free(v);
}

static char **av_copy(char *const argv[])
{
	int n = 0;
	char **v;

	while (argv[n])
		n++;
	v = xcalloc((size_t)n + 1, sizeof *v);
	for (int k = 0; k < n; k++)
		v[k] = xstrdup(argv[k]);
	return v;
}

static void req_free(struct areq *q)
{
	av_free(q->argv);
	free(q->line);
	free(q);
}

/* --- requests --- */

static bool field_ok(const char *s)
{
	if (s[0] == '\0')
		return false;
	for (; *s; s++)
		if (*s == '\t' || *s == '\n' || *s == '\r')
			return false;
	return true;
}

/* Append "\tS" to the line being built; false if S cannot be a field. */
static bool add_field(char **line, const char *s)
{
	char *n;

	if (!field_ok(s))
		return false;
	n = xasprintf("%s\t%s", *line, s);
	free(*line);
	*line = n;
	return true;
}

/* The agent request for ARGV as the Slurm launcher builds it (NULL: none;
 * the command then runs the plain way). */
static char *request_for(char *const argv[], bool *submit)
{
	int n = 0;
	char *line = NULL;
	bool ok = true;

	while (argv[n])
		n++;
	*submit = false;
	if (n == 0)
		return NULL;
	if (strcmp(argv[0], "sbatch") == 0) {
		/* sbatch --parsable --job-name=N --export=ALL,PORT=P ARGS... SCRIPT PORT */
		if (n < 6 || strcmp(argv[1], "--parsable") != 0 || !has_prefix(argv[2], "--job-name=") ||
		    !has_prefix(argv[3], "--export=ALL,PORT="))
			return NULL;
		line = xstrdup("submit");
		ok &= add_field(&line, argv[2] + strlen("--job-name="));
		ok &= add_field(&line, argv[n - 1]);
		ok &= add_field(&line, argv[n - 2]);
		for (int k = 4; k < n - 2; k++)
			ok &= add_field(&line, argv[k]);
		*submit = true;
	} else if (strcmp(argv[0], "scancel") == 0 && n == 2) {
		line = xstrdup("cancel");
		ok &= add_field(&line, argv[1]);
	} else if (strcmp(argv[0], "squeue") == 0) {
		line = xstrdup("jobs");
	} else if (strcmp(argv[0], "scontrol") == 0 && n == 5 && strcmp(argv[2], "show") == 0) {
		line = xstrdup("show");
		ok &= add_field(&line, argv[4]);
	} else if (strcmp(argv[0], "sacct") == 0) {
		for (int k = 1; k + 1 < n; k++)
			if (strcmp(argv[k], "-j") == 0) {
				line = xstrdup("acct");
				ok &= add_field(&line, argv[k + 1]);
			}
	} else if (strcmp(argv[0], "sinfo") == 0) {
		line = xstrdup("nodes");
	}
	if (line && !ok) {
		free(line);
		line = NULL;
	}
	return line;
}

static void req_send(struct agent *a, struct areq *q)
{
	q->deadline = now_s() + q->timeout_s;
	TAILQ_INSERT_TAIL(&a->sent, q, link);
	evbuffer_add_printf(a->outq, "%u\t%s\n", q->id, q->line);
	agent_flush(a);
}

/* Queue Q for A (started if it is not running). */
static void req_queue(struct agent *a, struct areq *q)
{
	if (a->st == A_UP) {
		req_send(a, q);
		return;
	}
	TAILQ_INSERT_TAIL(&a->waiting, q, link);
	if (a->st == A_DOWN)
		agent_start(a);
}

/* Run Q the plain way. */
static void req_plain(struct agent *a, struct areq *q)
{
	runner_run(a->r, q->argv, q->timeout_s, q->cb, q->arg);
	req_free(q);
}

void sagent_run(struct runner *r, char *const argv[], int timeout_s, runner_cb cb, void *arg)
{
	struct agent *a = agent_of(r);
	struct areq *q;
	bool submit;
	char *line;

	if (a == NULL || a->st == A_FALLBACK || (line = request_for(argv, &submit)) == NULL) {
		runner_run(r, argv, timeout_s, cb, arg);
		return;
	}
	q = xcalloc(1, sizeof *q);
	q->id = ++a->seq;
	q->argv = av_copy(argv);
	q->line = line;
	q->submit = submit;
	q->timeout_s = timeout_s;
	q->cb = cb;
	q->arg = arg;
	req_queue(a, q);
}

/* The plain way to the tail of a job's output: StdErr, else StdOut. */
static const char tail_sh[] =
	"info=$(scontrol -o show job \"$1\") || exit 1\n"
	"for k in StdErr StdOut; do\n"
	"  f=$(printf '%s\\n' \"$info\" | sed -n \"s/.* $k=\\([^ ]*\\).*/\\1/p\")\n"
	"  [ -n \"$f\" ] && [ -s \"$f\" ] && [ -r \"$f\" ] && exec tail -n \"$2\" \"$f\"\n"
	"done\n";

void sagent_ask(struct runner *r, const char *line, char *const argv[], int timeout_s,
		runner_cb cb, void *arg)
{
	struct agent *a = agent_of(r);
	struct areq *q;

	if (a == NULL || a->st == A_FALLBACK || line == NULL) {
		runner_run(r, argv, timeout_s, cb, arg);
		return;
	}
	q = xcalloc(1, sizeof *q);
	q->id = ++a->seq;
	q->argv = av_copy(argv);
	q->line = xstrdup(line);
	q->timeout_s = timeout_s;
	q->cb = cb;
	q->arg = arg;
	req_queue(a, q);
}

void sagent_tail(struct runner *r, const char *id, int lines, runner_cb cb, void *arg)
{
	char n[16];
	char *argv[] = {"sh", "-c", (char *)tail_sh, "sh", (char *)id, n, NULL};
	char *line;

	snprintf(n, sizeof n, "%d", lines);
	line = field_ok(id) ? xasprintf("tail\t%s\t%s", id, n) : NULL;
	sagent_ask(r, line, argv, 30, cb, arg);
	free(line);
}

/* --- the agent's output --- */

static struct ajob *ajob_find(struct agent *a, const char *id)
{
	struct ajob *j;

	LIST_FOREACH(j, &a->jobs, link)
		if (strcmp(j->id, id) == 0)
			return j;
	return NULL;
}

static struct ajob *ajob_add(struct agent *a, const char *id)
{
	struct ajob *j = ajob_find(a, id);

	if (j || strlen(id) >= sizeof j->id || a->njobs >= MAX_JOBS)
		return j;
	j = xcalloc(1, sizeof *j);
	snprintf(j->id, sizeof j->id, "%s", id);
	LIST_INSERT_HEAD(&a->jobs, j, link);
	a->njobs++;
	return j;
}

static void ajob_del(struct agent *a, struct ajob *j)
{
	LIST_REMOVE(j, link);
	a->njobs--;
	free(j->line);
	free(j);
}

/* Hand a pushed job line (a copy of LINE) to the launcher. */
static void job_push(struct agent *a, const char *line)
{
	char *text = xstrdup(line), *f[7];
	int nf = 0;

	f[nf++] = text;
	for (char *p = text; *p && nf < 7; p++)
		if (*p == '|') {
			*p = '\0';
			f[nf++] = p + 1;
		}
	for (int k = nf; k < 7; k++)
		f[k] = "";
	if (nf >= 6 && hooks.job)
		hooks.job(a->r, f, nf);
	free(text);
}

static void pushed(struct agent *a, char *rest)
{
	char *kind = rest, *val = strchr(rest, '\t');

	if (val)
		*val++ = '\0';
	else
		val = "";
	if (strcmp(kind, "hello") == 0) {
		struct areq *q;
		struct ajob *j;
		char *watch, words[256];

		for (char *p = val; *p; p++)
			if (*p == '\t')
				*p = ' ';   /* "slurmgate-agent 1 backoff": name, protocol version, features */
		snprintf(words, sizeof words, " %s ", val);
		a->st = A_UP;
		a->up_at = now_s();
		log_info("slurm agent on %s up after %.2f s (%s)", runner_name(a->r),
			 a->up_at - a->spawned_at, val);
		snprintf(a->status, sizeof a->status, "up");
		watch = xasprintf("watch\tsg:%s:\t%d\t%d", gw->cfg->instance_id,
				  gw->cfg->poll_fast_ms > 0 ? gw->cfg->poll_fast_ms : AGENT_FAST_MS, gw->cfg->poll_slow_s);
		if (strstr(words, " backoff ")) {
			/* an older agent knows no BACKOFF_S (and backs off never) */
			char *w = xasprintf("%s\t%d", watch, gw->cfg->poll_backoff_s);
			free(watch);
			watch = w;
		}
		evbuffer_add_printf(a->outq, "0\t%s\n", watch);
		free(watch);
		LIST_FOREACH(j, &a->jobs, link)
			evbuffer_add_printf(a->outq, "0\ttrack\t%s\n", j->id);
		while ((q = TAILQ_FIRST(&a->waiting)) != NULL) {
			TAILQ_REMOVE(&a->waiting, q, link);
			req_send(a, q);
		}
		agent_flush(a);
	} else if (strcmp(kind, "job") == 0) {
		char id[32];
		size_t n = strcspn(val, "|");
		struct ajob *j;

		if (n == 0 || n >= sizeof id)
			return;
		memcpy(id, val, n);
		id[n] = '\0';
		if ((j = ajob_add(a, id)) != NULL) {
			free(j->line);
			j->line = xstrdup(val);
		}
		job_push(a, val);
	} else if (strcmp(kind, "gone") == 0) {
		struct ajob *j = ajob_find(a, val);
		if (j)
			ajob_del(a, j);
		if (hooks.gone)
			hooks.gone(a->r, val);
	} else if (strcmp(kind, "unanswered") == 0 || strcmp(kind, "answered") == 0) {
		if (hooks.unanswered)
			hooks.unanswered(a->r, kind[0] == 'u' ? val : NULL);
	}
}

/* "ID STATUS ERR [OUT]": the answer to a request. */
static void answered(struct agent *a, char *line)
{
	char *f[4] = {line, "", "", ""};
	int nf = 1;
	unsigned id;
	struct areq *q;

	for (char *p = line; *p && nf < 4; p++)
		if (*p == '\t') {
			*p = '\0';
			f[nf++] = p + 1;
		}
	if (strcmp(f[0], "-") == 0) {
		log_warn("slurm agent on %s: %s", runner_name(a->r), f[2]);
		return;
	}
	id = (unsigned)strtoul(f[0], NULL, 10);
	if (id == 0) {
		if (strcmp(f[1], "0") != 0)
			log_warn("slurm agent on %s: %s", runner_name(a->r), f[2]);
		return;
	}
	TAILQ_FOREACH(q, &a->sent, link)
		if (q->id == id)
			break;
	if (q == NULL)
		return;
	TAILQ_REMOVE(&a->sent, q, link);
	for (char *p = f[3]; *p; p++)
		if (*p == '\036')
			*p = '\n';
	if (strcmp(f[2], "-") == 0)
		f[2] = "";
	if (atoi(f[1]) == 126)
		log_warn("slurm agent on %s: %s", runner_name(a->r), f[2]);
	if (q->cb)
		q->cb(q->arg, atoi(f[1]) << 8, f[3], f[2]);
	if (q->submit && atoi(f[1]) == 0) {
		/* the job may have been pushed before its id was known here */
		char jid[32];
		size_t n = strspn(f[3], "0123456789_");
		struct ajob *j;
		if (n > 0 && n < sizeof jid) {
			memcpy(jid, f[3], n);
			jid[n] = '\0';
			j = ajob_add(a, jid);
			if (j && j->line) {
				char *copy = xstrdup(j->line);
				job_push(a, copy);
				free(copy);
			}
		}
	}
	req_free(q);
}

static void on_stdout(struct proc *p, void *arg)
{
	struct agent *a = arg;
	char *line;
	size_t n;

	while (a->p == p && (line = evbuffer_readln(proc_stdout(p), &n, EVBUFFER_EOL_LF)) != NULL) {
		if (line[0] == '*' && line[1] == '\t')
			pushed(a, line + 2);
		else
			answered(a, line);
		free(line);
	}
}

/* --- the process --- */

static void agent_flush(struct agent *a)
{
	int fd;

	if (a->p == NULL || a->st != A_UP || (fd = proc_stdin_fd(a->p)) < 0)
		return;
	while (evbuffer_get_length(a->outq) > 0) {
		int n = evbuffer_write(a->outq, fd);
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			event_add(a->wev, NULL);
			return;
		}
		if (n <= 0) {
			/* the agent is going: its exit follows */
			evbuffer_drain(a->outq, evbuffer_get_length(a->outq));
			return;
		}
	}
}

static void writable_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	agent_flush(arg);
}

/* Everything waiting or sent runs the plain way (the agent cannot start). */
static void all_plain(struct agent *a)
{
	struct areq *q;

	while ((q = TAILQ_FIRST(&a->sent)) != NULL) {
		TAILQ_REMOVE(&a->sent, q, link);
		if (q->submit) {
			if (q->cb)
				q->cb(q->arg, 255 << 8, "", SAGENT_SBATCH_LOST);
			req_free(q);
		} else {
			req_plain(a, q);
		}
	}
	while ((q = TAILQ_FIRST(&a->waiting)) != NULL) {
		TAILQ_REMOVE(&a->waiting, q, link);
		req_plain(a, q);
	}
}

static void agent_exited(struct proc *p, int status, void *arg)
{
	struct agent *a = arg;
	char st[96], why[sizeof a->why];
	const char *last = proc_last_line(p);
	bool was_up = a->st == A_UP;
	struct areq *q, *next;
	int delay;

	on_stdout(p, a);   /* what it wrote last */
	a->p = NULL;
	event_del(a->wev);
	event_del(a->tick_ev);
	evbuffer_drain(a->outq, evbuffer_get_length(a->outq));
	proc_status_str(status, st, sizeof st);
	snprintf(why, sizeof why, "%s", last[0] ? last : st);
	if (a->unused) {
		log_info("slurm agent on %s stopped (no service names it now)", runner_name(a->r));
		a->st = A_FALLBACK;
		all_plain(a);
		return;
	}
	if (was_up) {
		/* it ran: start the next at once, with what was sent (but a
		 * submit, which may have happened); three quick deaths in a row
		 * fall back */
		a->fails = now_s() - a->up_at < 10 ? a->fails + 1 : 0;
	}
	if (was_up && a->fails < 3) {
		struct areqs old = TAILQ_HEAD_INITIALIZER(old);

		log_warn("slurm agent on %s exited (%s); starting it again", runner_name(a->r), why);
		/* requests made from the callbacks below wait for the next agent */
		a->st = A_STARTING;
		TAILQ_CONCAT(&old, &a->sent, link);
		for (q = TAILQ_LAST(&old, areqs); q; q = next) {
			next = TAILQ_PREV(q, areqs, link);
			TAILQ_REMOVE(&old, q, link);
			if (q->submit) {
				if (q->cb)
					q->cb(q->arg, 255 << 8, "", SAGENT_SBATCH_LOST);
				req_free(q);
			} else {
				TAILQ_INSERT_HEAD(&a->waiting, q, link);
			}
		}
		agent_start(a);
		if (hooks.kick)
			hooks.kick();
		return;
	}
	if (!was_up)
		a->fails++;
	delay = RESTART_MIN_S << (a->fails > 6 ? 6 : a->fails - 1);
	if (delay > RESTART_MAX_S)
		delay = RESTART_MAX_S;
	snprintf(a->why, sizeof a->why, "%s", why);
	snprintf(a->status, sizeof a->status, "fallback: %s", why);
	a->st = A_FALLBACK;
	log_warn("slurm agent %s on %s %s (%s): running plain Slurm commands; trying again in %d s",
		 a->path, runner_name(a->r), was_up ? "exited soon after its start" : "could not be started",
		 why, delay);
	all_plain(a);
	event_add(a->retry_ev, &(struct timeval){delay, 0});
	if (hooks.kick)
		hooks.kick();
}

static void spawned(void *arg, struct proc *p, const char *err)
{
	struct agent *a = arg;

	if (p != NULL) {
		a->p = p;
		event_free(a->wev);
		a->wev = event_new(gw->base, proc_stdin_fd(p), EV_WRITE, writable_cb, a);
		event_add(a->tick_ev, &(struct timeval){1, 0});
		if (a->unused)
			proc_terminate(p, 2);   /* a reload dropped it meanwhile */
		return;
	}
	a->fails++;
	snprintf(a->why, sizeof a->why, "%s", err ? err : "cannot start");
	snprintf(a->status, sizeof a->status, "fallback: %s", a->why);
	log_warn("slurm agent on %s could not be started (%s): running plain Slurm commands",
		 runner_name(a->r), a->why);
	a->st = A_FALLBACK;
	all_plain(a);
	event_add(a->retry_ev, &(struct timeval){RESTART_MIN_S << (a->fails > 6 ? 6 : a->fails - 1), 0});
	if (hooks.kick)
		hooks.kick();
}

static void agent_start(struct agent *a)
{
	char *argv[] = {a->path, NULL};
	char prefix[300];
	struct proc_opts o = {0};

	snprintf(prefix, sizeof prefix, "slurm agent %s", runner_name(a->r));
	o.capture_stdout = true;
	o.stdin_pipe = true;
	o.on_stdout = on_stdout;
	o.pdeathsig = SIGTERM;
	o.log_prefix = prefix;
	a->st = A_STARTING;
	a->spawned_at = now_s();
	snprintf(a->status, sizeof a->status, "starting");
	log_info("starting slurm agent %s on %s", a->path, runner_name(a->r));
	runner_spawn(a->r, argv, &o, spawned, agent_exited, a);
}

/* Once a second while the agent runs: the hello and answers on time? */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct agent *a = arg;
	struct areq *q = TAILQ_FIRST(&a->sent);

	(void)fd, (void)what;
	if (a->p == NULL)
		return;
	if (a->st == A_STARTING && now_s() - a->spawned_at > HELLO_TIMEOUT_S) {
		log_warn("slurm agent on %s: no hello after %d s", runner_name(a->r), HELLO_TIMEOUT_S);
		proc_terminate(a->p, 2);
		return;
	}
	if (q && now_s() > q->deadline) {
		log_warn("slurm agent on %s: no answer to request %u (%s) in %d s; restarting it",
			 runner_name(a->r), q->id, q->line, q->timeout_s);
		proc_terminate(a->p, 2);
		return;
	}
	event_add(a->tick_ev, &(struct timeval){1, 0});
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct agent *a = arg;

	(void)fd, (void)what;
	if (a->st == A_FALLBACK && !a->unused) {
		a->st = A_DOWN;
		agent_start(a);
	}
}

/* --- the rest of the interface --- */

void sagent_init(struct gw *g, const struct sagent_hooks *h)
{
	const struct config *cfg = g->cfg;
	struct agent *a;

	gw = g;
	hooks = *h;
	LIST_FOREACH(a, &agents, link)
		a->unused = true;
	for (size_t k = 0; k < cfg->n_services; k++) {
		const struct svc_config *s = &cfg->services[k];
		struct runner *r;

		if (s->launcher != &launcher_slurm || s->slurm_agent == NULL)
			continue;
		r = runner_for(s);
		LIST_FOREACH(a, &agents, link)
			if (a->r == r)
				break;
		if (a != NULL) {
			if (a->unused && a->st == A_FALLBACK && a->p == NULL) {
				/* named again after a reload: start afresh */
				event_del(a->retry_ev);
				a->fails = 0;
				a->st = A_DOWN;
			}
			a->unused = false;
			if (strcmp(a->path, s->slurm_agent) != 0) {
				/* a new path: the next start uses it */
				log_info("slurm agent on %s: now %s", runner_name(r), s->slurm_agent);
				free(a->path);
				a->path = xstrdup(s->slurm_agent);
				if (a->p)
					proc_terminate(a->p, 2);
			}
			continue;
		}
		a = xcalloc(1, sizeof *a);
		a->r = r;
		a->path = xstrdup(s->slurm_agent);
		snprintf(a->status, sizeof a->status, "not started");
		a->outq = evbuffer_new();
		a->wev = event_new(gw->base, -1, 0, writable_cb, a);
		a->tick_ev = evtimer_new(gw->base, tick_cb, a);
		a->retry_ev = evtimer_new(gw->base, retry_cb, a);
		TAILQ_INIT(&a->waiting);
		TAILQ_INIT(&a->sent);
		LIST_INIT(&a->jobs);
		LIST_INSERT_HEAD(&agents, a, link);
	}
	LIST_FOREACH(a, &agents, link)
		if (a->unused && a->p != NULL)
			proc_terminate(a->p, 2);   /* its exit runs what it had the plain way */
}

bool sagent_watching(const struct runner *r)
{
	struct agent *a = agent_of(r);

	return a && a->st == A_UP;
}

void sagent_poll(struct runner *r)
{
	struct agent *a = agent_of(r);

	if (a && a->st == A_UP) {
		evbuffer_add_printf(a->outq, "0\tpoll\n");
		agent_flush(a);
	}
}

const char *sagent_status(const struct runner *r)
{
	struct agent *a = agent_of(r);

	return a ? a->status : NULL;
}

void sagent_shutdown(void)
{
	struct agent *a;
	struct ajob *j;

	while ((a = LIST_FIRST(&agents)) != NULL) {
		LIST_REMOVE(a, link);
		if (a->p) {
			proc_forget(a->p);
			proc_terminate(a->p, 1);
		}
		a->p = NULL;
		a->st = A_FALLBACK;
		while (!TAILQ_EMPTY(&a->sent) || !TAILQ_EMPTY(&a->waiting)) {
			struct areq *q = TAILQ_FIRST(&a->sent) ? TAILQ_FIRST(&a->sent) : TAILQ_FIRST(&a->waiting);
			if (q == TAILQ_FIRST(&a->sent))
				TAILQ_REMOVE(&a->sent, q, link);
			else
				TAILQ_REMOVE(&a->waiting, q, link);
			if (q->cb)
				q->cb(q->arg, 255 << 8, "", "the gateway is exiting");
			req_free(q);
		}
		while ((j = LIST_FIRST(&a->jobs)) != NULL)
			ajob_del(a, j);
		event_free(a->wev);
		event_free(a->tick_ev);
		event_free(a->retry_ev);
		evbuffer_free(a->outq);
		free(a->path);
		free(a);
	}
}
