/* launcher_local.c - an instance is a child process on this host.
 *
 * bash_file is executed directly (argv, no shell string) with the port as
 * $1 and in PORT, in its own process group and its own process tree
 * (ptree.h: a cgroup, or the subreaper's marked group), so that nothing it
 * starts outlives the instance or the gateway. The service is reached at
 * local_host:local_port; a start is refused while another process holds
 * the port. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "launcher.h"
#include "log.h"
#include "logring.h"
#include "proc.h"
#include "ptree.h"
#include "service.h"
#include "util.h"

/* A line of the instance's stdout or stderr: into the service's log. */
static void local_line(void *arg, const char *line, size_t len)
{
	struct instance *i = arg;

	logring_addf(service_log(i->svc), "[%d] %.*s", i->index, (int)len, line);
}

static void local_exited(struct proc *p, int status, void *arg)
{
	struct instance *i = arg;
	char st[200], why[800];
	const char *last = proc_last_line(p);

	proc_status_str(status, st, sizeof st);
	logring_addf(service_log(i->svc), "[%d] --- slurmgate: the process %s ---", i->index, st);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && i->state != INST_STOPPING)
		/* "success" to its author: it put the server in the background */
		snprintf(st, sizeof st, "exited with status 0, but it must keep running while its "
			 "service runs (exec the server, or wait for it; what it left running "
			 "was stopped)");
	i->lpriv = NULL;
	/* its last stderr line: output, marked as such (it may hold secrets) */
	snprintf(why, sizeof why, "%s %s%s%s",
		 i->state == INST_STARTING || i->state == INST_PROBING ? "start script" : "process", st,
		 last[0] ? LAUNCH_OUTPUT_MARK : "", last);
	/* killed by a signal counts as "other", as it always has */
	instance_gone(i, WIFEXITED(status) ? LFAIL_EXITED : LFAIL_OTHER, why);
}

/* The inode of a socket listening on PORT (any address, v4 or v6), 0 if none. */
static unsigned long port_listener(int port)
{
	static const char *const tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
	char line[512];

	for (size_t k = 0; k < sizeof tables / sizeof *tables; k++) {
		FILE *f = fopen(tables[k], "re");
		if (f == NULL)
			continue;
		while (fgets(line, sizeof line, f)) {
			char local[64];
			unsigned st;
			unsigned long inode;
			char *colon;
			/* sl local rem st tx:rx tr:when retr uid timeout inode */
			if (sscanf(line, " %*s %63s %*s %x %*s %*s %*s %*s %*s %lu", local, &st,
				   &inode) != 3 || st != 0x0A)
				continue;
			if ((colon = strrchr(local, ':')) && strtol(colon + 1, NULL, 16) == port) {
				fclose(f);
				return inode ? inode : 1;
			}
		}
		fclose(f);
	}
	return 0;
}

/* Which process holds socket INODE: " (pid 123, python3)" into BUF, or ""
 * if it cannot be seen; its pid into *PID (0: unknown). */
static void socket_owner(unsigned long inode, char *buf, size_t len, int *pid)
{
	char want[64], path[600], link[64], comm[64] = "?";
	DIR *d = opendir("/proc"), *fds;
	struct dirent *de, *fe;

	buf[0] = '\0';
	*pid = 0;
	if (d == NULL)
		return;
	snprintf(want, sizeof want, "socket:[%lu]", inode);
	while (buf[0] == '\0' && (de = readdir(d)) != NULL) {
		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof path, "/proc/%s/fd", de->d_name);
		if ((fds = opendir(path)) == NULL)
			continue;
		while ((fe = readdir(fds)) != NULL) {
			ssize_t n;
			snprintf(path, sizeof path, "/proc/%s/fd/%s", de->d_name, fe->d_name);
			n = readlink(path, link, sizeof link - 1);
			if (n <= 0)
				continue;
			link[n] = '\0';
			if (strcmp(link, want) == 0) {
				FILE *f;
				snprintf(path, sizeof path, "/proc/%s/comm", de->d_name);
				if ((f = fopen(path, "re")) != NULL) {
					if (fgets(comm, sizeof comm, f))
						comm[strcspn(comm, "\n")] = '\0';
					fclose(f);
				}
				snprintf(buf, len, " (pid %.20s, %.40s)", de->d_name,
					 log_escape(comm, strlen(comm)));
				*pid = atoi(de->d_name);
				break;
			}
		}
		closedir(fds);
	}
	closedir(d);
}

/* -1 with *cause if something already listens on a port of I. Our own
 * instances' trees are gone before they count as stopped, and the trees
 * of an earlier run were killed at start-up: a listener now is a stranger. */
static int ports_free(struct instance *i, char **cause)
{
	int ports[2] = {i->remote_port, i->local_port};

	for (int k = 0; k < 2; k++) {
		unsigned long inode;
		char owner[128];
		int pid;
		if (k == 1 && ports[1] == ports[0])
			break;
		if ((inode = port_listener(ports[k])) == 0)
			continue;
		socket_owner(inode, owner, sizeof owner, &pid);
		if (pid > 0 && ptree_ours(pid)) {
			*cause = xasprintf("port %d is still held by another local instance of this "
					   "gateway%s",
					   ports[k], owner);
			return -1;
		}
		*cause = xasprintf("port %d is in use by another process (not started by this "
				   "gateway)%s",
				   ports[k], owner);
		return -1;
	}
	return 0;
}

/* Does process PID descend from LEADER (its parents, up to init)? A server
 * that a start script runs under another user (sudo resets the environment,
 * so it carries no tree mark) still does. */
static bool descends_from(int pid, int leader)
{
	for (int hops = 0; pid > 1 && hops < 64; hops++) {
		char path[64], buf[512], *rp;
		FILE *f;
		size_t n;
		if (pid == leader)
			return true;
		snprintf(path, sizeof path, "/proc/%d/stat", pid);
		if ((f = fopen(path, "re")) == NULL)
			return false;
		n = fread(buf, 1, sizeof buf - 1, f);
		fclose(f);
		buf[n] = '\0';
		/* "pid (comm) state ppid ...": comm may hold anything, up to the last ')' */
		if ((rp = strrchr(buf, ')')) == NULL || sscanf(rp + 1, " %*c %d", &pid) != 1)
			return false;
	}
	return false;
}

/* A passed health check: -1 with *cause if a listener on I's port belongs
 * to another user (one who bound the port while I's server loaded: it must
 * not get I's requests). A listener of root's (Docker's docker-proxy) or of
 * the gateway's own account is trusted as the account itself is; another
 * user's only if it is a process of this gateway's trees (a script that
 * runs its server through sudo -u). */
static int local_verify(struct instance *i, char **cause)
{
	static const char *const tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
	char line[512];
	unsigned me = (unsigned)geteuid();

	for (size_t k = 0; k < sizeof tables / sizeof *tables; k++) {
		FILE *f = fopen(tables[k], "re");
		if (f == NULL)
			continue;
		while (fgets(line, sizeof line, f)) {
			char local[64], owner[128];
			unsigned st, uid;
			unsigned long inode;
			char *colon;
			int pid;
			if (sscanf(line, " %*s %63s %*s %x %*s %*s %*s %u %*s %lu", local, &st, &uid,
				   &inode) != 4 || st != 0x0A || (colon = strrchr(local, ':')) == NULL ||
			    strtol(colon + 1, NULL, 16) != i->local_port)
				continue;
			if (uid == 0 || uid == me)
				continue;
			socket_owner(inode, owner, sizeof owner, &pid);
			if (pid > 0 && (ptree_ours(pid) ||
					(i->lpriv && descends_from(pid, (int)proc_pid(i->lpriv)))))
				continue;
			fclose(f);
			*cause = xasprintf("port %d is answered by another user's process (uid %u, not "
					   "started by this gateway)%s: not using it",
					   i->local_port, uid, owner);
			return -1;
		}
		fclose(f);
	}
	return 0;
}

/* The TCP ports the processes PIDS (N of them) listen on: up to MAX into
 * PORTS, sorted out of duplicates; how many. */
static int listen_ports(const int *pids, int n, int *ports, int max)
{
	static const char *const tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
	unsigned long inodes[256];
	int ninodes = 0, nports = 0;
	char path[96], link[64], line[512];

	for (int k = 0; k < n && ninodes < 256; k++) {
		DIR *d;
		struct dirent *de;
		snprintf(path, sizeof path, "/proc/%d/fd", pids[k]);
		if ((d = opendir(path)) == NULL)
			continue;
		while (ninodes < 256 && (de = readdir(d)) != NULL) {
			ssize_t len;
			unsigned long ino;
			snprintf(path, sizeof path, "/proc/%d/fd/%.20s", pids[k], de->d_name);
			if ((len = readlink(path, link, sizeof link - 1)) <= 0)
				continue;
			link[len] = '\0';
			if (sscanf(link, "socket:[%lu]", &ino) == 1)
				inodes[ninodes++] = ino;
		}
		closedir(d);
	}
	for (size_t t = 0; ninodes > 0 && t < sizeof tables / sizeof *tables; t++) {
		FILE *f = fopen(tables[t], "re");
		if (f == NULL)
			continue;
		while (nports < max && fgets(line, sizeof line, f)) {
			char local[64], *colon;
			unsigned st;
			unsigned long ino;
			int port;
			bool mine = false, dup = false;
			if (sscanf(line, " %*s %63s %*s %x %*s %*s %*s %*s %*s %lu", local, &st, &ino) != 3 ||
			    st != 0x0A || (colon = strrchr(local, ':')) == NULL)
				continue;
			for (int k = 0; k < ninodes && !mine; k++)
				mine = inodes[k] == ino;
			port = (int)strtol(colon + 1, NULL, 16);
			for (int k = 0; k < nports && !dup; k++)
				dup = ports[k] == port;
			if (mine && !dup)
				ports[nports++] = port;
		}
		fclose(f);
	}
	return nports;
}

/* The health check has not answered for a while: if the service's
 * processes listen, but not on the port it was given (a script that
 * ignores $1 and PORT, a server's own default port), say so. */
static void local_boot_check(struct instance *i)
{
	const struct svc_config *cfg = service_config(i->svc);
	int pids[256], ports[8], n, np;
	char list[96] = "";
	size_t o = 0;

	if (i->lpriv == NULL || proc_tree(i->lpriv) == NULL)
		return;
	n = ptree_pids(proc_tree(i->lpriv), pids, 256);
	np = listen_ports(pids, n, ports, 8);
	for (int k = 0; k < np; k++) {
		if (ports[k] == i->remote_port || ports[k] == i->local_port)
			return;   /* it listens where it should: only slow */
		o += (size_t)snprintf(list + o, sizeof list - o, "%s%d", k ? ", " : "", ports[k]);
		if (o >= sizeof list)
			break;
	}
	if (np == 0)
		return;
	instance_set_detail(i, "waiting for %s%s to answer; its processes listen on port %s, "
			    "not %d (does %s start the server with its port, $1 or $PORT?)",
			    i->addr_str, cfg->check_health_path, list, i->remote_port, cfg->bash_file);
}

static int local_start(struct instance *i, char **cause)
{
	const struct svc_config *cfg = service_config(i->svc);
	char port[16], envport[32], envname[300], prefix[300];
	const char *env[3] = {envport, envname, NULL};
	char *argv[3];
	struct proc_opts o = {0};
	struct proc *p;

	if (ports_free(i, cause) != 0)
		return -1;
	snprintf(port, sizeof port, "%d", i->remote_port);
	snprintf(envport, sizeof envport, "PORT=%d", i->remote_port);
	snprintf(envname, sizeof envname, "SLURMGATE_SERVICE=%s", cfg->name);
	snprintf(prefix, sizeof prefix, "svc %s[%d] stderr", cfg->name, i->index);
	argv[0] = cfg->bash_file;
	argv[1] = port;
	argv[2] = NULL;
	o.new_pgrp = true;
	o.tree = true;
	o.pdeathsig = SIGTERM;
	o.env = env;
	o.log_prefix = prefix;
	o.on_line = local_line;
	p = proc_spawn(argv, &o, local_exited, i, cause);
	if (p == NULL) {
		logring_addf(service_log(i->svc), "[%d] --- slurmgate: %s ---", i->index, *cause);
		return -1;
	}
	logring_addf(service_log(i->svc), "[%d] --- slurmgate: started %s %s as process %d ---",
		     i->index, cfg->bash_file, port, (int)proc_pid(p));
	i->lpriv = p;
	instance_set_detail(i, "process %d started", (int)proc_pid(p));
	instance_endpoint(i, cfg->local_host, i->local_port);
	return 0;
}

static void local_stop(struct instance *i, int grace_s, int flags)
{
	(void)flags;   /* a child never outlives the gateway */
	if (i->lpriv == NULL) {
		instance_gone(i, LFAIL_OTHER, "not running");
		return;
	}
	proc_terminate(i->lpriv, grace_s);
}

static void local_describe(const struct instance *i, json_t *o)
{
	if (i->lpriv != NULL)
		json_object_set_new(o, "pid", json_integer(proc_pid(i->lpriv)));
}

/* What its processes wrote (stdout and stderr), from the service's ring. */
static int local_logs(struct service *s, uint64_t *from, size_t max, struct evbuffer *out,
		      char **cause)
{
	const struct logring *r = service_log_peek(s);

	(void)cause;
	if (r != NULL)
		logring_read(r, from, max, out);
	return 0;
}

const struct launcher_ops launcher_local = {
	.name = "local",
	.script_on_host = true,
	.start = local_start,
	.stop = local_stop,
	.describe = local_describe,
	.boot_check = local_boot_check,
	.logs = local_logs,
	.verify = local_verify,
};
