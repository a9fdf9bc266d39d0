/* main.c - command line, signals, start-up and shutdown. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "accesslog.h"
#include "confcheck.h"
#include "config.h"
#include "front.h"
#include "gw.h"
#include "http.h"
#include "log.h"
#include "proc.h"
#include "proxy.h"
#include "ptree.h"
#include "refusal.h"
#include "runner.h"
#include "slurm_agent.h"
#include "slurm_record.h"
#include "service.h"
#include "util.h"
#include "version.h"

/* The context every module gets (gw.h): this is the one instance. */
static struct gw gw;
static struct event *sig_term, *sig_int, *sig_hup, *sig_usr1, *grace_ev, *deadline_ev;
static bool shutting_down, stopping_services;
static enum log_level log_level = LOG_LVL_INFO;
static bool log_json_flag;   /* --log-json */
static double shutdown_began;

static int mkdir_p(const char *path);
static void log_svc_problems(const struct config *c);

static void usage(FILE *f)
{
	fprintf(f,
		"usage: slurmgate -c FILE [-l HOST:PORT] [-v] [--log-json]\n"
		"       slurmgate -t -c FILE\n"
		"\n"
		"An on-demand gateway for ML services on Slurm clusters: starts a service\n"
		"when a request for it arrives, holds requests until it is healthy, relays\n"
		"them (streams too), and stops it after its idle timeout.\n"
		"\n"
		"  -c, --config FILE    the JSON config (the old services_config.json loads as is)\n"
		"  -l, --listen H:P     listen here instead of the config's \"listen\"\n"
		"  -t, --test           check the config, print every error, exit 0 or 1\n"
		"  -v, --verbose        debug logging\n"
		"      --log-json       one JSON object per log line\n"
		"  -h, --help           this text\n"
		"  -V, --version        print the version\n");
}

static void all_gone(void)
{
	log_info("every service is stopped; exiting");
	event_base_loopexit(gw.base, NULL);
}

static void stop_services(void)
{
	if (stopping_services)
		return;
	stopping_services = true;
	services_shutdown(all_gone);
}

/* Wait for requests in flight (bounded by shutdown_grace), then stop services. */
static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	if (proxy_active() == 0 || now_s() - shutdown_began >= gw.cfg->shutdown_grace) {
		if (proxy_active() > 0)
			log_warn("shutdown: %zu requests still in flight after %d s; stopping anyway",
				 proxy_active(), gw.cfg->shutdown_grace);
		stop_services();
		return;
	}
	event_add(grace_ev, &(struct timeval){0, 100000});
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	log_error("shutdown: services did not stop in time; exiting anyway");
	event_base_loopexit(gw.base, NULL);
}

static void term_cb(evutil_socket_t sig, short what, void *arg)
{
	int max_grace = 0;

	(void)what, (void)arg;
	if (shutting_down) {
		log_info("signal %d again: stopping services now", (int)sig);
		stop_services();
		return;
	}
	shutting_down = true;
	shutdown_began = now_s();
	log_info("signal %d: shutting down (grace %d s for requests in flight)", (int)sig,
		 gw.cfg->shutdown_grace);
	front_stop_accepting();
	services_fail_waiters("the gateway is shutting down");
	for (size_t k = 0; k < gw.cfg->n_services; k++)
		if (gw.cfg->services[k].stop_grace > max_grace)
			max_grace = gw.cfg->services[k].stop_grace;
	deadline_ev = evtimer_new(gw.base, deadline_cb, NULL);
	event_add(deadline_ev, &(struct timeval){gw.cfg->shutdown_grace + max_grace + 5, 0});
	grace_ev = evtimer_new(gw.base, grace_cb, NULL);
	grace_cb(-1, 0, NULL);
}

/* SIGHUP: validate the file fully, then swap it in; a bad file changes nothing. */
static void hup_cb(evutil_socket_t sig, short what, void *arg)
{
	char **errs = NULL, *cause = NULL;
	struct config *next, *old;

	(void)sig, (void)what, (void)arg;
	if (shutting_down)
		return;
	log_info("SIGHUP: reloading %s", gw.cfg->path);
	next = config_load(gw.cfg->path, &errs);
	if (next == NULL) {
		for (char **e = errs; e && *e; e++)
			log_error("reload: %s", *e);
		log_error("reload: the config has errors; keeping the running one");
		config_free_errors(errs);
		return;
	}
	if (strcmp(next->listen_host, gw.cfg->listen_host) != 0 || next->listen_port != gw.cfg->listen_port) {
		log_warn("reload: a new listen address takes a restart; still listening on %s:%d",
			 gw.cfg->listen_host, gw.cfg->listen_port);
		free(next->listen_host);
		next->listen_host = xstrdup(gw.cfg->listen_host);
		next->listen_port = gw.cfg->listen_port;
	}
	if (strcmp(next->state_dir, gw.cfg->state_dir) != 0) {
		/* it is locked, and holds the record of our process trees */
		log_warn("reload: a new state_dir takes a restart; still using %s", gw.cfg->state_dir);
		free(next->state_dir);
		next->state_dir = xstrdup(gw.cfg->state_dir);
	}
	if (strcmp(next->instance_id, gw.cfg->instance_id) != 0) {
		/* it names the jobs in Slurm: those running would be missed */
		log_warn("reload: a new instance_id takes a restart; still using %s",
			 gw.cfg->instance_id);
		free(next->instance_id);
		next->instance_id = xstrdup(gw.cfg->instance_id);
	}
	log_svc_problems(next);
	if (accesslog_configure(next->access_log, log_json_flag || next->log_json, &cause) != 0) {
		log_error("reload: %s; keeping the access log as it was", cause);
		free(cause);
		free(next->access_log);
		next->access_log = gw.cfg->access_log ? xstrdup(gw.cfg->access_log) : NULL;
	}
	/* swap: every module reads the config in force through gw; what still
	 * points into the old one holds a reference (a removed service while
	 * requests on it end), so ours goes once the indexes are rebuilt */
	old = gw.cfg;
	gw.cfg = next;
	services_reload();
	slurm_record_update();
	front_reconfigure();
	log_init(log_level, log_json_flag || gw.cfg->log_json);
	config_unref(old);
}

/* SIGUSR1: logrotate moved the access log; open it again by its name. */
static void usr1_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)sig, (void)what, (void)arg;
	accesslog_reopen();
}

/* mkdir -p, private: it holds known_hosts and ssh control sockets. */
static int mkdir_p(const char *path)
{
	char *p = xstrdup(path);

	for (char *q = p + 1; *q; q++)
		if (*q == '/') {
			*q = '\0';
			if (mkdir(p, 0700) != 0 && errno != EEXIST) {
				free(p);
				return -1;
			}
			*q = '/';
		}
	if (mkdir(p, 0700) != 0 && errno != EEXIST) {
		free(p);
		return -1;
	}
	free(p);
	return 0;
}

/* Lock STATE_DIR for the life of the process: two gateways on one state_dir
 * would share control sockets and kill each other's processes as
 * leftovers. Returns the lock's descriptor (kept open), or -1 (logged). */
static int lock_state_dir(const char *dir)
{
	char *path = xasprintf("%s/lock", dir), buf[32];
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ssize_t n;

	if (fd < 0) {
		log_error("state_dir lock %s: %s", path, strerror(errno));
		free(path);
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		int e = errno;
		n = pread(fd, buf, sizeof buf - 1, 0);
		buf[n > 0 ? n : 0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		if (e == EWOULDBLOCK)
			log_error("state_dir %s is in use by another slurmgate (pid %s holds the lock "
				  "%s); give each gateway its own state_dir",
				  dir, buf[0] ? buf : "unknown", path);
		else
			log_error("state_dir lock %s: %s", path, strerror(e));
		close(fd);
		free(path);
		return -1;
	}
	n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
	if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n)
		log_warn("state_dir lock %s: cannot record our pid: %s", path, strerror(errno));
	free(path);
	return fd;
}

/* What makes a service's every start fail: -t fails on it; a running
 * gateway says so and serves the other services. */
static void log_svc_problems(const struct config *c)
{
	for (char **e = c->svc_problems; e && *e; e++)
		log_error("%s: %s (every start of this service will fail)", c->path, *e);
}

static void print_errors(const char *file, char **errs)
{
	for (char **e = errs; e && *e; e++)
		fprintf(stderr, "%s: %s\n", file, *e);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'}, {"listen", required_argument, NULL, 'l'},
		{"test", no_argument, NULL, 't'},         {"verbose", no_argument, NULL, 'v'},
		{"log-json", no_argument, NULL, 'J'},     {"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
	};
	const char *file = NULL, *listen = NULL;
	bool test = false, verbose = false, json = false;
	struct event_config *ec;
	char **errs = NULL;
	struct rlimit rl;
	char *cause = NULL;
	int ch, lock_fd;
	sigset_t early;

	/* a reload, logrotate's USR1 or a stop that comes while we start (a big
	 * config takes a while) waits for its handler below: the default
	 * action would kill us (children get a clean mask: proc.c) */
	sigemptyset(&early);
	sigaddset(&early, SIGHUP);
	sigaddset(&early, SIGUSR1);
	sigaddset(&early, SIGTERM);
	sigaddset(&early, SIGINT);
	sigprocmask(SIG_BLOCK, &early, NULL);
	/* started with stdin, stdout or stderr closed (2>&-): the first file we
	 * open (the state_dir lock) would become it, and the log go into it */
	for (int fd = 0; fd <= 2; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
			return 1;

	while ((ch = getopt_long(argc, argv, "c:l:tvhV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': file = optarg; break;
		case 'l': listen = optarg; break;
		case 't': test = true; break;
		case 'v': verbose = true; break;
		case 'J': json = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("slurmgate %s\n", SLURMGATE_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (file == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}
	log_level = verbose ? LOG_LVL_DEBUG : LOG_LVL_INFO;
	log_json_flag = json;
	log_init(log_level, json);
	log_hook_libevent();

	if (!json) {
		json_t *r = json_load_file(file, 0, NULL);
		if (r && json_is_true(json_object_get(r, "log_json")))
			log_init(verbose ? LOG_LVL_DEBUG : LOG_LVL_INFO, json = true);
		json_decref(r);
	}
	gw.cfg = config_load(file, &errs);
	if (gw.cfg != NULL && listen != NULL) {
		free(gw.cfg->listen_host);
		if (confcheck_listen(listen, &gw.cfg->listen_host, &gw.cfg->listen_port, &cause) != 0) {
			fprintf(stderr, "%s: -l %s: %s\n", file, listen, cause);
			free(cause);
			config_free(gw.cfg);
			return 1;
		}
	}
	if (gw.cfg == NULL) {
		if (json && !test)
			for (char **e = errs; e && *e; e++)
				log_error("%s: %s", file, *e);
		else
			print_errors(file, errs);
		config_free_errors(errs);
		return 1;
	}
	if (gw.cfg->log_json)
		log_init(verbose ? LOG_LVL_DEBUG : LOG_LVL_INFO, true);
	if (test && gw.cfg->svc_problems) {
		/* the gateway would run, but these services could never start */
		print_errors(file, gw.cfg->svc_problems);
		config_free(gw.cfg);
		return 1;
	}
	log_svc_problems(gw.cfg);
	if (test) {
		printf("%s: ok (%zu services)\n", file, gw.cfg->n_services);
		config_free(gw.cfg);
		return 0;
	}

	signal(SIGPIPE, SIG_IGN);
	/* room for many client connections */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (mkdir_p(gw.cfg->state_dir) != 0) {
		log_error("state_dir %s: %s", gw.cfg->state_dir, strerror(errno));
		config_free(gw.cfg);
		return 1;
	}
	if (confcheck_private_dir(gw.cfg->state_dir, &cause) != 0) {
		log_error("%s", cause);
		free(cause);
		config_free(gw.cfg);
		return 1;
	}
	if ((lock_fd = lock_state_dir(gw.cfg->state_dir)) < 0) {
		config_free(gw.cfg);
		return 1;
	}
	/* before any child: kill what an earlier run left, start the keeper */
	if (ptree_init(gw.cfg->state_dir, &cause) != 0) {
		log_error("%s", cause);
		free(cause);
		config_free(gw.cfg);
		return 1;
	}
	ec = event_config_new();
	event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	gw.base = event_base_new_with_config(ec);
	event_config_free(ec);
	if (gw.base == NULL)
		fatal("event_base_new failed");
	if (accesslog_configure(gw.cfg->access_log, json || gw.cfg->log_json, &cause) != 0) {
		log_error("%s", cause);
		free(cause);
		ptree_shutdown();
		config_free(gw.cfg);
		event_base_free(gw.base);
		return 1;
	}
	http_init(&gw);
	proc_init(&gw);
	runners_init(&gw);
	services_init(&gw);
	slurm_record_init(&gw);   /* the targets of an earlier run's jobs, too */
	if (front_start(&gw) != 0) {
		services_free();
		accesslog_free();
		ptree_shutdown();
		config_unref(gw.cfg);
		event_base_free(gw.base);
		return 1;
	}
	sig_term = evsignal_new(gw.base, SIGTERM, term_cb, NULL);
	sig_int = evsignal_new(gw.base, SIGINT, term_cb, NULL);
	sig_hup = evsignal_new(gw.base, SIGHUP, hup_cb, NULL);
	sig_usr1 = evsignal_new(gw.base, SIGUSR1, usr1_cb, NULL);
	event_add(sig_usr1, NULL);
	event_add(sig_term, NULL);
	event_add(sig_int, NULL);
	event_add(sig_hup, NULL);
	sigprocmask(SIG_UNBLOCK, &early, NULL);   /* one held meanwhile is handled now */
	log_run(gw.base);   /* from here a log nobody reads never stalls us */
	log_info("slurmgate %s: %zu services from %s", SLURMGATE_VERSION, gw.cfg->n_services, file);

	event_base_dispatch(gw.base);

	front_free();
	sagent_shutdown();
	runners_shutdown();
	event_free(sig_term);
	event_free(sig_int);
	event_free(sig_hup);
	event_free(sig_usr1);
	/* freeing the signal events restored the default actions: a second
	 * SIGTERM (or a HUP) in the last moments of the exit must not kill us
	 * with a signal status instead of the exit code */
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGUSR1, SIG_IGN);
	if (grace_ev)
		event_free(grace_ev);
	if (deadline_ev)
		event_free(deadline_ev);
	services_free();
	refusal_free();
	accesslog_free();
	ptree_shutdown();   /* the keeper kills what is left: nothing, unless the deadline passed */
	close(lock_fd);
	config_unref(gw.cfg);   /* the last: the services let theirs go */
	log_stop();
	return 0;
}
