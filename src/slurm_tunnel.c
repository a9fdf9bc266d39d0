/* slurm_tunnel.c - how the service in a Slurm job is reached: the node's
 * address as Slurm knows it (NodeAddr, from sinfo on the target: node
 * names often do not resolve on the login node), then a forward from a
 * free local port through the runner's SSH master to <address>:<port>, or,
 * without remote_host, the node's address itself (see launcher_slurm_impl.h). */
#include "launcher_slurm_impl.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "launcher.h"
#include "gw.h"
#include "log.h"
#include "runner.h"
#include "service.h"
#include "slurm_agent.h"
#include "slurmjob.h"
#include "util.h"

static struct gw *gw;

void slurm_tunnel_init(struct gw *g)
{
	gw = g;
}

/* A free local port that no service of ours would bind. */
static int alloc_port(void)
{
	for (int tries = 0; tries < 20; tries++) {
		struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		socklen_t sl = sizeof sa;
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = 0;
		bool clash = false;

		if (fd < 0)
			return 0;
		if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
		    getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
			port = ntohs(sa.sin_port);
		close(fd);
		for (size_t k = 0; k < gw->cfg->n_services; k++) {
			const struct svc_config *s = &gw->cfg->services[k];
			/* + 1: the port a walltime handover's replacement uses */
			clash |= port >= s->remote_port && port <= s->remote_port + s->max_instances;
			clash |= port >= s->local_port && port <= s->local_port + s->max_instances;
		}
		if (port && !clash)
			return port;
	}
	return 0;
}

/* One `ssh -O forward` under way: for job J, on local port LPORT. */
struct fwdreq {
	struct sjob *j;
	int lport;
};

static void forwarded(void *arg, int status, const char *out, const char *err)
{
	struct fwdreq *q = arg;
	struct sjob *j = q->j;
	char why[600];
	bool wanted = j->inst != NULL && j->st == J_TUNNEL && j->lport == q->lport;

	(void)out;
	free(q);
	if (!wanted) {
		/* stopped, ended, held or replaced meanwhile: whoever gave it up
		 * called fwd_close (a late success is cancelled by the runner), or
		 * job_gone will */
		sjob_unref(j);
		return;
	}
	if (status == 0) {
		j->st = J_UP;
		instance_endpoint(j->inst, "127.0.0.1", j->lport);
	} else if (++j->tunnel_tries < 3) {
		log_warn("Slurm job %s: forward to %s:%d failed (%s); retrying", j->id, j->node, j->rport,
			 err);
		slurm_tunnel_open(j);
	} else {
		snprintf(why, sizeof why, "cannot open a tunnel to %s:%d for Slurm job %s: %s", j->node,
			 j->rport, j->id, err);
		sjob_fwd_close(j);
		instance_fail(j->inst, LFAIL_TUNNEL, why);
	}
	sjob_unref(j);
}

/* --- node addresses --- */

/* Node name -> address as Slurm knows it (NodeAddr), per target: node
 * names often do not resolve on the login node. One sinfo per target fills
 * the cache; a node missing from it (or a failed forward) refreshes it. */
struct naddr {
	struct runner *r;
	char name[128], addr[128];
	LIST_ENTRY(naddr) link;
};

static LIST_HEAD(, naddr) naddrs = LIST_HEAD_INITIALIZER(naddrs);

typedef void (*addr_cb)(struct sjob *j, const char *addr);

struct addrq {
	struct sjob *j;
	addr_cb cb;
	LIST_ENTRY(addrq) link;
};

/* lookups in flight: at most one per job, which serves the job's state at
 * its end (a job that runs again meanwhile does not get two forwards) */
static LIST_HEAD(, addrq) addrqs = LIST_HEAD_INITIALIZER(addrqs);

static struct naddr *naddr_find(const struct runner *r, const char *name)
{
	struct naddr *a;

	LIST_FOREACH(a, &naddrs, link)
		if (a->r == r && strcmp(a->name, name) == 0)
			return a;
	return NULL;
}

static void naddr_forget(const struct runner *r, const char *name)
{
	struct naddr *a = naddr_find(r, name);

	if (a) {
		LIST_REMOVE(a, link);
		free(a);
	}
}

/* "name|addr" lines of `sinfo -h -N -o %N|%o` replace R's cache. */
static void naddr_fill(struct runner *r, const char *out)
{
	struct naddr *a, *next;
	char *text = xstrdup(out), *save = NULL;

	for (a = LIST_FIRST(&naddrs); a; a = next) {
		next = LIST_NEXT(a, link);
		if (a->r == r) {
			LIST_REMOVE(a, link);
			free(a);
		}
	}
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *f[2] = {"", ""};
		if (slurmjob_split(line, f, 2) < 2 || !f[0][0] || !f[1][0] || strlen(f[0]) >= sizeof a->name ||
		    strlen(f[1]) >= sizeof a->addr || naddr_find(r, f[0]))
			continue;   /* a node in two partitions is listed twice */
		a = xcalloc(1, sizeof *a);
		a->r = r;
		snprintf(a->name, sizeof a->name, "%s", f[0]);
		snprintf(a->addr, sizeof a->addr, "%s", f[1]);
		LIST_INSERT_HEAD(&naddrs, a, link);
	}
	free(text);
}

static void sinfo_done(void *arg, int status, const char *out, const char *err)
{
	struct addrq *q = arg;
	struct sjob *j = q->j;
	struct naddr *a;

	LIST_REMOVE(q, link);
	if (status == 0)
		naddr_fill(j->r, out);
	a = naddr_find(j->r, j->node);
	if (a == NULL)
		log_warn("Slurm job %s: no address for node %s in sinfo on %s (%s); using the node name",
			 j->id, j->node, runner_name(j->r),
			 status != 0 ? (err[0] ? err : "sinfo failed") : "not listed");
	q->cb(j, a ? a->addr : j->node);
	sjob_unref(j);
	free(q);
}

/* cb(j, address of j's node), now from the cache or after one sinfo. */
static void node_addr(struct sjob *j, addr_cb cb)
{
	static char *argv[] = {"sinfo", "-h", "-N", "-o", "%N|%o", NULL};
	struct naddr *a = naddr_find(j->r, j->node);
	struct addrq *q;

	if (a) {
		cb(j, a->addr);
		return;
	}
	LIST_FOREACH(q, &addrqs, link)
		if (q->j == j)
			return;   /* the lookup in flight goes on with this job */
	q = xcalloc(1, sizeof *q);
	q->j = j;
	q->cb = cb;
	LIST_INSERT_HEAD(&addrqs, q, link);
	j->refs++;
	sagent_run(j->r, argv, 60, sinfo_done, q);
}

static void tunnel_to(struct sjob *j, const char *addr)
{
	struct fwdreq *q;

	if (j->inst == NULL || j->st != J_TUNNEL)
		return;   /* stopped or held while the address was looked up */
	if (!runner_is_remote(j->r)) {
		/* on the login node itself: the compute node is reached directly */
		struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
		char ip[INET6_ADDRSTRLEN] = "";

		j->st = J_UP;
		if (getaddrinfo(addr, NULL, &hints, &res) == 0 && res) {
			if (res->ai_family == AF_INET)
				inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, ip, sizeof ip);
			else
				inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, ip, sizeof ip);
			freeaddrinfo(res);
		}
		if (ip[0] == '\0') {
			char why[400];
			snprintf(why, sizeof why, "cannot resolve %s (node %s) of Slurm job %s", addr,
				 j->node, j->id);
			naddr_forget(j->r, j->node);
			instance_fail(j->inst, LFAIL_OTHER, why);
			return;
		}
		instance_endpoint(j->inst, ip, j->rport);
		return;
	}
	j->lport = alloc_port();
	snprintf(j->fwd_node, sizeof j->fwd_node, "%s", j->node);
	j->refs++;
	q = xcalloc(1, sizeof *q);
	q->j = j;
	q->lport = j->lport;
	instance_set_detail(j->inst, "Slurm job %s running on %s (%s); opening the tunnel", j->id,
			    j->node, addr);
	runner_forward(j->r, j->lport, addr, j->rport, forwarded, q);
}

/* Reach J's service on the node it runs on now, at its NodeAddr (a forward
 * there replaces any earlier one). */
void slurm_tunnel_open(struct sjob *j)
{
	sjob_fwd_close(j);
	sjob_owner_forget(j);
	if (j->tunnel_tries > 0)
		naddr_forget(j->r, j->node);   /* a retry: the address may have changed */
	j->st = J_TUNNEL;
	node_addr(j, tunnel_to);
}
