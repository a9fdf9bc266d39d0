/* slurm_owner.c - is it the job's own server that answers on its port?
 *
 * Compute nodes are shared: another cluster user's job on the same node can
 * listen on a service's remote_port (it is in the config, not secret)
 * before the gateway's job starts its server there. The health probe
 * through the forward would then be answered by that process, and every
 * user's requests would go to it. So before a Slurm instance becomes ready
 * (and again after its job was requeued or moved), a step in the job's own
 * allocation on its node (srun --overlap) reads the node's /proc/net/tcp:
 * every listener on the port must belong to the job's account (the uid the
 * step runs as). Through the remote agent this is its `owner` verb. */
#include "launcher_slurm_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "instance.h"
#include "log.h"
#include "runner.h"
#include "service.h"
#include "slurm_agent.h"
#include "util.h"

/* another user's listener: asked again at most this often (it may leave) */
#define OWNER_AGAIN_S 2.0
#define OWNER_TIMEOUT_S 30

/* Runs on the node (sh -c SCRIPT sh PORT): "me UID", then "uid UID" for
 * each listening socket on PORT (IPv4 and IPv6). remote/slurmgate-agent
 * has the same script. */
static const char owner_sh[] =
	"echo \"me $(id -u)\"\n"
	"p=$(printf ':%04X' \"$1\")\n"
	"cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |\n"
	"awk -v p=\"$p\" '$4 == \"0A\" && substr($2, length($2) - 4) == p { print \"uid\", $8 }'\n";

struct owner_q {
	struct sjob *j;
	unsigned gen;
	char node[128];
	int port;
};

void sjob_owner_forget(struct sjob *j)
{
	j->owner = OWNER_UNKNOWN;
	j->owner_asking = false;
	j->owner_gen++;
	j->owner_why[0] = '\0';
}

static bool word_ok(const char *s, const char *extra)
{
	if (s[0] == '\0' || s[0] == '-')
		return false;
	for (; *s; s++)
		if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') &&
		    !(*s >= '0' && *s <= '9') && strchr(extra, *s) == NULL)
			return false;
	return true;
}

/* The answer to Q: OWNER_OURS, OWNER_OTHER or OWNER_UNSURE, saying why in WHY. */
static int owner_verdict(const struct owner_q *q, int status, const char *out, const char *err,
			 char *why, size_t whylen)
{
	const char *p = out ? out : "";
	long me = -1, other = -1;
	int listeners = 0;

	while (*p) {
		long v;
		char word[8];
		if (sscanf(p, "%7s %ld", word, &v) == 2) {
			if (strcmp(word, "me") == 0)
				me = v;
			else if (strcmp(word, "uid") == 0) {
				listeners++;
				if (me >= 0 && v != me && other < 0)
					other = v;
			}
		}
		p += strcspn(p, "\n");
		p += *p == '\n';
	}
	if (status != 0 || me < 0) {
		snprintf(why, whylen, "cannot check who listens on port %d on node %.100s (%.200s): trusting "
			 "the health check", q->port, q->node,
			 err && err[0] ? err : status ? "the check failed" : "no answer");
		return OWNER_UNSURE;
	}
	if (other >= 0) {
		snprintf(why, whylen, "port %d on node %.100s is answered by another user's process "
			 "(uid %ld, not the job's uid %ld): not using it", q->port, q->node, other, me);
		return OWNER_OTHER;
	}
	if (listeners == 0) {
		snprintf(why, whylen, "cannot check who listens on port %d on node %.100s (no listener "
			 "seen from the job's step): trusting the health check", q->port, q->node);
		return OWNER_UNSURE;
	}
	snprintf(why, whylen, "port %d on node %.100s is the job's (uid %ld)", q->port, q->node, me);
	return OWNER_OURS;
}

static void owner_answer(void *arg, int status, const char *out, const char *err)
{
	struct owner_q *q = arg;
	struct sjob *j = q->j;
	char why[sizeof j->owner_why];

	if (q->gen == j->owner_gen && j->inst) {
		struct instance *i = j->inst;
		const char *name = service_config(i->svc)->name;
		int v = owner_verdict(q, status, out, err, why, sizeof why);

		j->owner_asking = false;
		j->owner_at = now_s();
		if (v == OWNER_UNSURE)
			log_warn("svc %s[%d]: Slurm job %s: %s", name, i->index, j->id, why);
		else if (v == OWNER_OURS && j->owner != OWNER_OURS)
			log_info("svc %s[%d]: Slurm job %s: %s", name, i->index, j->id, why);
		j->owner = v;
		snprintf(j->owner_why, sizeof j->owner_why, "%s", why);
		/* probe at once: it passes now, or says why not */
		if (i->state == INST_PROBING || i->state == INST_UNHEALTHY)
			instance_probe_restart(i);
	}
	free(q);
	sjob_unref(j);
}

/* Start the check of J's listener (one at a time). */
static void owner_ask(struct sjob *j)
{
	struct owner_q *q;
	char jobarg[64], nodearg[160], port[16], *line = NULL;

	if (j->owner_asking)
		return;
	q = xcalloc(1, sizeof *q);
	q->j = j;
	q->gen = j->owner_gen;
	q->port = j->rport;
	snprintf(q->node, sizeof q->node, "%s", j->node);
	snprintf(jobarg, sizeof jobarg, "--jobid=%s", j->id);
	snprintf(nodearg, sizeof nodearg, "--nodelist=%s", j->node);
	snprintf(port, sizeof port, "%d", j->rport);
	char *argv[] = {"srun", jobarg, "--overlap", "-N1", "-n1", nodearg, "--quiet",
			"sh", "-c", (char *)owner_sh, "sh", port, NULL};
	if (word_ok(j->id, "_") && word_ok(j->node, "._-"))
		line = xasprintf("owner\t%s\t%s\t%s", j->id, j->node, port);
	j->owner_asking = true;
	j->refs++;
	sagent_ask(j->r, line, argv, OWNER_TIMEOUT_S, owner_answer, q);
	free(line);
}

int slurm_verify(struct instance *i, char **cause)
{
	struct sjob *j = i->lpriv;

	if (j == NULL || j->id[0] == '\0' || j->node[0] == '\0')
		return 0;
	switch (j->owner) {
	case OWNER_OURS:
	case OWNER_UNSURE:
		return 0;
	case OWNER_OTHER:
		if (now_s() - j->owner_at >= OWNER_AGAIN_S)
			owner_ask(j);   /* it may have gone: the next probe that passes knows */
		*cause = xstrdup(j->owner_why);
		return -1;
	default:
		owner_ask(j);
		*cause = xasprintf("checking who listens on port %d on node %s", j->rport, j->node);
		if (strcmp(i->detail, *cause) != 0) {
			/* a normal step: said here at info (the caller warns of a new detail) */
			log_info("svc %s[%d]: %s", service_config(i->svc)->name, i->index, *cause);
			snprintf(i->detail, sizeof i->detail, "%s", *cause);
		}
		return -1;
	}
}
