/* ptree.h - the whole process tree of a local instance, as one thing.
 *
 * A start script may run its server as a child, background helpers,
 * double-fork a daemon into a new session. All of that must die with the
 * instance and with the gateway, even on kill -9 of the gateway.
 *
 * Mechanism, chosen once at start-up:
 *  - cgroup v2 (where a cgroup2 hierarchy is mounted and the gateway may
 *    create cgroups under its own, as root usually can): one cgroup per
 *    instance under a cgroup of this run, slurmgate-PID. Membership cannot
 *    be escaped by forking or setsid; cgroup.kill (Linux >= 5.14) or a
 *    kill of every member of cgroup.procs ends the tree.
 *  - otherwise the gateway is a child subreaper (PR_SET_CHILD_SUBREAPER),
 *    each instance has its own process group, and every process of it
 *    carries SLURMGATE_TREE=TOKEN.N in its environment; a tree is its
 *    group plus every process with its mark (found through /proc).
 * In both, every process carries the mark, and the gateway records its run
 * (token, cgroup) in STATE_DIR/procs. At start-up the trees of an earlier
 * run of this gateway (same state_dir) are killed. A keeper process, forked
 * at start-up, waits on a pipe from the gateway: when the gateway is gone,
 * however it died, the keeper kills whatever is left of its trees. */
#ifndef SG_PTREE_H
#define SG_PTREE_H

#include <stdbool.h>

struct ptree;

/* Choose the mechanism, kill the leftovers of an earlier run recorded in
 * STATE_DIR, record this run and start the keeper. Returns -1 with *cause
 * only if the record cannot be written. Call before any other child. */
int ptree_init(const char *state_dir, char **cause);
/* At a clean exit (every tree gone): stop the keeper, remove the record. */
void ptree_shutdown(void);
/* "cgroup v2 (/sys/fs/cgroup/...)" or "subreaper + process group". */
const char *ptree_mechanism(void);

/* A new, empty tree. Never NULL. */
struct ptree *ptree_new(void);
void ptree_free(struct ptree *t);
/* "SLURMGATE_TREE=..." for the child's environment (owned by T). */
const char *ptree_env(const struct ptree *t);
/* In the forked child, before exec: join T. 0, or -1 with errno. */
int ptree_enter(const struct ptree *t);
/* The tree's leader is PID (its process group, subreaper mode). */
void ptree_set_leader(struct ptree *t, int pid);
/* Send SIG to every process of T. */
void ptree_signal(struct ptree *t, int sig);
/* No live process is left in T. */
bool ptree_empty(struct ptree *t);
/* Up to MAX pids of T's processes into PIDS (its cgroup's, else those
 * carrying its mark); how many. For diagnostics: a member that cleared its
 * environment is missed without a cgroup. */
int ptree_pids(const struct ptree *t, int *pids, int max);
/* PID belongs to one of this run's trees. */
bool ptree_ours(int pid);

#endif
