/* ptree.c - the whole process tree of a local instance, as one thing.
 *
 * See ptree.h for the mechanism. Everything here that walks /proc or a
 * cgroup is synchronous but short (a directory listing); it runs when an
 * instance stops, at start-up and in the keeper, never per request. */
#include "ptree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define MARK_VAR "SLURMGATE_TREE"

struct ptree {
	unsigned n;
	int pgid;                /* the leader's process group (0: not yet) */
	int procs_fd;            /* the cgroup's cgroup.procs, open for the child (-1: none) */
	char cg[PATH_MAX + 32];  /* its cgroup directory ("" in subreaper mode) */
	char env[96];            /* MARK_VAR=TOKEN.N */
};

static char token[40];            /* this run's mark */
static char run_cg[PATH_MAX];     /* this run's cgroup ("" if none) */
static bool cg_has_kill;          /* cgroup.kill exists (Linux >= 5.14) */
static char record[PATH_MAX];     /* STATE_DIR/procs */
static char mech[PATH_MAX + 64] = "subreaper + process group";
static unsigned seq;
static int keeper_fd = -1;        /* write end of the keeper's pipe */
static pid_t keeper_pid;

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Read a small file into BUF (NUL-terminated); bytes read or -1. */
static ssize_t read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t got = 0;
	ssize_t n;

	if (fd < 0)
		return -1;
	while (got < len - 1 && ((n = read(fd, buf + got, len - 1 - got)) > 0 || (n < 0 && errno == EINTR)))
		if (n > 0)
			got += (size_t)n;
	close(fd);
	buf[got] = '\0';
	return (ssize_t)got;
}

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, s, strlen(s));
	close(fd);
	return n == (ssize_t)strlen(s) ? 0 : -1;
}

/* True if PID's environment holds ENTRY exactly, or (PREFIX) an entry
 * starting with it. */
static bool env_marked(int pid, const char *entry, bool prefix)
{
	static char buf[256 * 1024];
	char path[64];
	size_t elen = strlen(entry);
	ssize_t n;

	snprintf(path, sizeof path, "/proc/%d/environ", pid);
	if ((n = read_file(path, buf, sizeof buf)) <= 0)
		return false;
	for (char *p = buf; p < buf + n; p += strlen(p) + 1)
		if (prefix ? strncmp(p, entry, elen) == 0 : strcmp(p, entry) == 0)
			return true;
	return false;
}

/* Every process marked ENTRY (see env_marked): send SIG (0: none). Returns
 * how many were found. Our own pid and the keeper's are never counted. */
static int scan_marked(const char *entry, bool prefix, int sig)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	int found = 0;

	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		if (*end != '\0' || pid <= 1 || pid == getpid())
			continue;
		if (env_marked((int)pid, entry, prefix)) {
			found++;
			if (sig)
				kill((pid_t)pid, sig);
		}
	}
	closedir(d);
	return found;
}

/* --- cgroup v2 --- */

/* Send SIG to every process in DIR and the cgroups below it. */
static void cg_kill(const char *dir, int sig)
{
	char path[PATH_MAX + 320], buf[65536];
	DIR *d;
	struct dirent *de;

	snprintf(path, sizeof path, "%s/cgroup.kill", dir);
	if (sig == SIGKILL && cg_has_kill && write_str(path, "1") == 0)
		return;   /* the kernel kills the whole subtree, new forks too */
	snprintf(path, sizeof path, "%s/cgroup.procs", dir);
	if (read_file(path, buf, sizeof buf) > 0)
		for (char *p = buf; *p;) {
			long pid = strtol(p, &p, 10);
			if (pid > 1 && pid != getpid())
				kill((pid_t)pid, sig);
			while (*p == '\n')
				p++;
		}
	if ((d = opendir(dir)) == NULL)
		return;
	while ((de = readdir(d)) != NULL)
		if (de->d_type == DT_DIR && de->d_name[0] != '.') {
			snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
			cg_kill(path, sig);
		}
	closedir(d);
}

/* Any live process in DIR or below (false if DIR is gone). */
static bool cg_populated(const char *dir)
{
	char path[PATH_MAX + 64], buf[512];

	snprintf(path, sizeof path, "%s/cgroup.events", dir);
	if (read_file(path, buf, sizeof buf) <= 0)
		return false;
	return strstr(buf, "populated 1") != NULL;
}

/* rmdir DIR and the cgroups below it (they must be empty). */
static void cg_remove(const char *dir)
{
	char path[PATH_MAX + 320];
	DIR *d = opendir(dir);
	struct dirent *de;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL)
		if (de->d_type == DT_DIR && de->d_name[0] != '.') {
			snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
			cg_remove(path);
		}
	closedir(d);
	if (rmdir(dir) != 0 && errno != ENOENT)
		log_warn("cannot remove cgroup %s: %s", dir, strerror(errno));
}

/* The cgroup2 mount point and our cgroup in it: run_cg under it, or "". */
static void cg_choose(void)
{
	char buf[65536], mnt[PATH_MAX] = "", own[PATH_MAX] = "", probe[PATH_MAX + 32];
	char *line, *save = NULL;

	if (read_file("/proc/self/mountinfo", buf, sizeof buf) <= 0)
		return;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *sep = strstr(line, " - cgroup2 ");
		char *f = line;
		if (sep == NULL)
			continue;
		for (int k = 0; k < 4 && f; k++)   /* field 5 is the mount point */
			f = strchr(f, ' ') ? strchr(f, ' ') + 1 : NULL;
		if (f && sscanf(f, "%4095s", mnt) == 1)
			break;
	}
	if (mnt[0] == '\0') {
		log_info("process trees: no cgroup2 hierarchy mounted");
		return;
	}
	if (read_file("/proc/self/cgroup", buf, sizeof buf) <= 0)
		return;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (strncmp(line, "0::", 3) == 0)
			snprintf(own, sizeof own, "%s", line + 3);
	if (own[0] != '/' || strstr(own, "/..") != NULL) {
		log_info("process trees: our cgroup2 path is unknown (%s)", own);
		return;
	}
	if (strlen(mnt) + strlen(own) + 64 > sizeof run_cg)
		return;
	snprintf(run_cg, sizeof run_cg, "%.2000s%.2000s/slurmgate-%d", mnt, strcmp(own, "/") == 0 ? "" : own,
		 (int)getpid());
	/* moving a child into it needs write access to our own cgroup.procs too */
	snprintf(probe, sizeof probe, "%.2000s%.2000s/cgroup.procs", mnt, strcmp(own, "/") == 0 ? "" : own);
	if (mkdir(run_cg, 0755) != 0 && errno != EEXIST) {
		log_info("process trees: cannot create cgroup %s (%s)", run_cg, strerror(errno));
		run_cg[0] = '\0';
		return;
	}
	if (access(probe, W_OK) != 0) {
		log_info("process trees: cannot move processes in %s (%s)", probe, strerror(errno));
		rmdir(run_cg);
		run_cg[0] = '\0';
		return;
	}
	snprintf(probe, sizeof probe, "%s/cgroup.kill", run_cg);
	cg_has_kill = access(probe, W_OK) == 0;
	snprintf(mech, sizeof mech, "cgroup v2 (%s%s)", run_cg, cg_has_kill ? "" : ", no cgroup.kill");
}

/* --- sweeps --- */

/* How many processes are in DIR and the cgroups below it. */
static int cg_count(const char *dir)
{
	char path[PATH_MAX + 320], buf[65536];
	DIR *d;
	struct dirent *de;
	int n = 0;

	snprintf(path, sizeof path, "%s/cgroup.procs", dir);
	if (read_file(path, buf, sizeof buf) > 0)
		for (char *p = buf; *p; p++)
			n += *p == '\n';
	if ((d = opendir(dir)) == NULL)
		return n;
	while ((de = readdir(d)) != NULL)
		if (de->d_type == DT_DIR && de->d_name[0] != '.') {
			snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
			n += cg_count(path);
		}
	closedir(d);
	return n;
}

/* Kill everything of the run marked TOK (and in cgroup CG, if any), wait
 * until it is gone (at most ~5 s), remove CG. Returns how many processes
 * there were. */
static int sweep(const char *tok, const char *cg)
{
	char prefix[96];
	int first, n = 0, c = cg[0] ? cg_count(cg) : 0;

	snprintf(prefix, sizeof prefix, MARK_VAR "=%s.", tok);
	first = tok[0] ? scan_marked(prefix, true, 0) : 0;
	if (c > first)
		first = c;
	for (int round = 0; round < 250; round++) {
		bool pop = cg[0] && cg_populated(cg);
		if (cg[0])
			cg_kill(cg, SIGKILL);
		n = tok[0] ? scan_marked(prefix, true, SIGKILL) : 0;
		if (!pop && n == 0)
			break;
		sleep_ms(20);
	}
	if (n > 0 || (cg[0] && cg_populated(cg)))
		log_error("process trees: processes of an earlier run (%s) survive SIGKILL", prefix);
	if (cg[0])
		cg_remove(cg);
	return first;
}

/* The record of an earlier run: kill what is left of it. */
static void sweep_record(void)
{
	char buf[PATH_MAX + 256], tok[40] = "", cg[PATH_MAX] = "";
	int opid = 0, n;
	char *line, *save = NULL;

	if (read_file(record, buf, sizeof buf) <= 0)
		return;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (strncmp(line, "token ", 6) == 0)
			snprintf(tok, sizeof tok, "%s", line + 6);
		else if (strncmp(line, "cgroup ", 7) == 0 && strcmp(line + 7, "-") != 0)
			snprintf(cg, sizeof cg, "%s", line + 7);
		else if (strncmp(line, "pid ", 4) == 0)
			opid = atoi(line + 4);
	}
	if (tok[0] == '\0' && cg[0] == '\0')
		return;
	n = sweep(tok, cg);
	if (n > 0)
		log_warn("process trees: killed %d leftover process(es) of an earlier run (pid %d)", n,
			 opid);
	else
		log_info("process trees: nothing left of the earlier run (pid %d)", opid);
}

/* The keeper: waits for the gateway to be gone, then kills its trees. */
static void keeper_main(int rfd, pid_t gw)
{
	char c;
	ssize_t n;

	prctl(PR_SET_NAME, "sg-keeper");
	/* a session of its own: whatever kills the gateway's process group
	 * (a shell's kill %1, timeout -s KILL, a supervisor) must not take the
	 * one process that cleans up after it */
	if (setsid() < 0)
		log_warn("keeper: setsid: %s", strerror(errno));
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGCHLD, SIG_DFL);
	if (rfd != 3) {
		dup2(rfd, 3);
		close(rfd);
	}
	if (syscall(SYS_close_range, 4, ~0U, 0) != 0)
		for (int fd = 4; fd < 1024; fd++)
			close(fd);
	while ((n = read(3, &c, 1)) > 0 || (n < 0 && errno == EINTR))
		;
	n = sweep(token, run_cg);
	if (n > 0)
		log_warn("keeper: the gateway (pid %d) is gone; killed %d process(es) of its services",
			 (int)gw, (int)n);
	_exit(0);
}

int ptree_init(const char *state_dir, char **cause)
{
	unsigned char rnd[8];
	char tmp[PATH_MAX + 8], text[PATH_MAX + 128];
	int fd, p[2];
	pid_t gw = getpid();

	if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd)
		for (size_t k = 0; k < sizeof rnd; k++)
			rnd[k] = (unsigned char)(rand() ^ gw ^ time(NULL));
	snprintf(token, sizeof token, "%d-%02x%02x%02x%02x%02x%02x%02x%02x", (int)gw, rnd[0], rnd[1],
		 rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
	snprintf(record, sizeof record, "%s/procs", state_dir);
	sweep_record();

	/* orphans of our children come to us, not to init: reaped, countable */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
		log_warn("process trees: PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
	if (getenv("SLURMGATE_NO_CGROUP") == NULL || strcmp(getenv("SLURMGATE_NO_CGROUP"), "1") != 0)
		cg_choose();
	log_info("process trees of local services: %s", mech);

	snprintf(text, sizeof text, "slurmgate process trees\npid %d\ntoken %s\ncgroup %s\n", (int)gw,
		 token, run_cg[0] ? run_cg : "-");
	snprintf(tmp, sizeof tmp, "%s.new", record);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text) || fsync(fd) != 0 ||
	    rename(tmp, record) != 0) {
		*cause = xasprintf("cannot write %s: %s", record, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);

	if (pipe2(p, O_CLOEXEC) != 0) {
		log_warn("process trees: no keeper (pipe: %s)", strerror(errno));
		return 0;
	}
	keeper_pid = fork();
	if (keeper_pid == 0) {
		close(p[1]);
		keeper_main(p[0], gw);
	}
	close(p[0]);
	if (keeper_pid < 0) {
		log_warn("process trees: no keeper (fork: %s)", strerror(errno));
		close(p[1]);
		return 0;
	}
	keeper_fd = p[1];
	return 0;
}

void ptree_shutdown(void)
{
	if (keeper_fd >= 0) {
		close(keeper_fd);
		keeper_fd = -1;
		/* it finds nothing left and exits at once */
		while (waitpid(keeper_pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	if (run_cg[0])
		cg_remove(run_cg);
	if (record[0])
		unlink(record);
}

const char *ptree_mechanism(void)
{
	return mech;
}

struct ptree *ptree_new(void)
{
	struct ptree *t = xcalloc(1, sizeof *t);
	char path[PATH_MAX + 64];

	t->n = ++seq;
	t->procs_fd = -1;
	snprintf(t->env, sizeof t->env, MARK_VAR "=%s.%u", token, t->n);
	if (run_cg[0]) {
		snprintf(t->cg, sizeof t->cg, "%s/i%u", run_cg, t->n);
		snprintf(path, sizeof path, "%s/cgroup.procs", t->cg);
		if (mkdir(t->cg, 0755) != 0 ||
		    (t->procs_fd = open(path, O_WRONLY | O_CLOEXEC)) < 0) {
			log_warn("process trees: cgroup %s: %s; using the process group", t->cg,
				 strerror(errno));
			rmdir(t->cg);
			t->cg[0] = '\0';
		}
	}
	return t;
}

void ptree_free(struct ptree *t)
{
	if (t == NULL)
		return;
	if (t->procs_fd >= 0)
		close(t->procs_fd);
	if (t->cg[0] && rmdir(t->cg) != 0 && errno != ENOENT)
		log_warn("cannot remove cgroup %s: %s", t->cg, strerror(errno));
	free(t);
}

const char *ptree_env(const struct ptree *t)
{
	return t->env;
}

int ptree_enter(const struct ptree *t)
{
	if (t->procs_fd < 0)
		return 0;
	return write(t->procs_fd, "0", 1) == 1 ? 0 : -1;
}

void ptree_set_leader(struct ptree *t, int pid)
{
	t->pgid = pid;
}

void ptree_signal(struct ptree *t, int sig)
{
	if (t->cg[0]) {
		cg_kill(t->cg, sig);
		return;
	}
	if (t->pgid > 0)
		kill(-t->pgid, sig);
	scan_marked(t->env, false, sig);
}

bool ptree_empty(struct ptree *t)
{
	if (t->cg[0])
		return !cg_populated(t->cg);
	if (t->pgid > 0) {
		if (kill(-t->pgid, 0) == 0)
			return false;
		t->pgid = 0;   /* gone: its number may be reused, never signal it again */
	}
	return scan_marked(t->env, false, 0) == 0;
}

int ptree_pids(const struct ptree *t, int *pids, int max)
{
	char path[PATH_MAX + 64], buf[16384];
	DIR *d;
	struct dirent *de;
	int n = 0;

	if (t->cg[0]) {
		snprintf(path, sizeof path, "%s/cgroup.procs", t->cg);
		if (read_file(path, buf, sizeof buf) > 0)
			for (char *p = buf; *p && n < max;) {
				long pid = strtol(p, &p, 10);
				if (pid > 1)
					pids[n++] = (int)pid;
				while (*p == '\n')
					p++;
			}
		return n;
	}
	if ((d = opendir("/proc")) == NULL)
		return 0;
	while (n < max && (de = readdir(d)) != NULL) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		if (*end == '\0' && pid > 1 && pid != getpid() && env_marked((int)pid, t->env, false))
			pids[n++] = (int)pid;
	}
	closedir(d);
	return n;
}

bool ptree_ours(int pid)
{
	char prefix[96];

	snprintf(prefix, sizeof prefix, MARK_VAR "=%s.", token);
	return env_marked(pid, prefix, true);
}
