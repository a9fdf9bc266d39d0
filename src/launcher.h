/* launcher.h - how an instance is started and stopped.
 *
 * One table of operations per back end (launcher_local.c: a process on
 * this host; launcher_slurm.c: a Slurm batch job), found by the name a
 * service's "launcher" names (launcher.c holds the registry; config.c
 * refuses any other name). service.c never asks which one it has, and the
 * API and the pages learn what a launcher knows about an instance only
 * through describe().
 *
 * A launcher reports back through instance_endpoint(),
 * instance_set_detail(), instance_set_deadline(), instance_hold(),
 * instance_fail() and instance_gone() (instance.h); a start that fails
 * says why as a kind (enum launch_fail, counted in /metrics) and a
 * reason (shown to people).
 *
 * Adding a launcher: copy launcher_local.c to launcher_NAME.c, fill in the
 * ops (its state lives in i->lpriv), and add X(NAME) to the table in
 * launcher.c; the README's "How it works" walks through it. */
#ifndef SG_LAUNCHER_H
#define SG_LAUNCHER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct gw;
struct evbuffer;
struct instance;
struct svc_config;
struct service;

/* Why a start did not reach READY: the reason label of
 * slurmgate_start_failures_total (launch_fail_name). A launcher reports
 * the kind that fits with instance_gone/instance_fail; once an instance
 * served, the kind is only logged. */
enum launch_fail {
	LFAIL_EXITED,    /* "script_exited": the start script (process) exited */
	LFAIL_TIMEOUT,   /* "start_timeout": no healthy answer in time (service.c's) */
	LFAIL_JOB,       /* "job_ended": the batch job ended or was cancelled */
	LFAIL_SUBMIT,    /* "submit_failed": the job could not be submitted */
	LFAIL_TUNNEL,    /* "tunnel_failed": no way to reach where it runs */
	LFAIL_OTHER,     /* "other": killed by a signal, refused at once, asked to stop ... */
	LFAIL_NKINDS
};

/* Where a reason quotes the job's or process's own output (its last
 * lines), which may hold secrets: everything after this mark is output.
 * Readers who may not read the service's logs get the reason cut here
 * (access_redact_output). */
#define LAUNCH_OUTPUT_MARK "; its output ends: "

/* Flags for stop(). */
#define LSTOP_EXITING 0x1   /* the gateway is exiting (keep_jobs_on_exit may apply) */

struct launcher_ops {
	const char *name;          /* the config's "launcher" value */
	/* Ports past max_instances a service of this launcher reserves from
	 * its base ports (slurm: 1, for the instance a handover starts). */
	int extra_ports;
	/* bash_file runs on this host: the config resolves it against the
	 * config's folder and checks that it is executable. */
	bool script_on_host;
	/* It logs in with ssh_key_file (ssh runs with IdentitiesOnly=yes, so
	 * without the key every start fails): the config checks the key. */
	bool uses_ssh_key;
	/* It can send its commands through remote/slurmgate-agent (slurm_agent). */
	bool remote_agent;
	/* At start-up and after each reload (optional): G (gw.h) holds the
	 * event base and the config in force; keep G, not its config. */
	void (*init)(struct gw *g);
	/* Begin starting I. Returns 0, or -1 with *cause (malloc'd) when it
	 * fails at once; nothing is reported back then (counted as "other"). */
	int (*start)(struct instance *i, char **cause);
	/* Stop I (grace_s between polite and forced; FLAGS: LSTOP_*);
	 * instance_gone() follows, maybe from inside stop. */
	void (*stop)(struct instance *i, int grace_s, int flags);
	/* Optional: add what the launcher knows of service C to its /api object O
	 * (slurm: the state of its remote agent). */
	void (*describe_service)(const struct svc_config *c, json_t *o);
	/* What the launcher knows about I, as members of O (all optional):
	 *   "pid"     integer: its process, "job_id" string: its batch job,
	 *   "node"    string: where it runs (all three shown by the API),
	 *   "pending" string: why a queued start waits (shown by /v1/models
	 *             as "pending: <reason>").
	 * Only what is known now; never called for a gone instance. */
	void (*describe)(const struct instance *i, json_t *o);
	/* Optional: find instances left by an earlier run of the gateway and
	 * adopt them (service_adopt) or clean them up; then call
	 * service_recovered() for each service. Until then no service of this
	 * launcher starts anything (its requests wait). */
	void (*recover)(void);
	/* Optional: something looks wrong with I (a connection through its
	 * forward closed before any response byte, or was refused): check its
	 * status now (e.g. poll Slurm at once) and report what is found through
	 * instance_hold(), instance_endpoint() or instance_gone(), at once or
	 * later. I is out of rotation already. */
	void (*check)(struct instance *i);
	/* Optional: I boots, and its health check has failed for a while (called
	 * at most every 2 s): if the launcher can see why (the service listens
	 * on another port), it says so with instance_set_detail(). */
	void (*boot_check)(struct instance *i);
	/* Optional: the service's recent output, for /api/services/<name>/logs:
	 * append to OUT, each ending in '\n', the lines numbered *FROM and
	 * later, at most MAX of them (the newest), and set *FROM to the number
	 * the next line will get (0, 0: where the output stands now). Returns
	 * 0, or -1 with *cause (malloc'd) when it has none to give. */
	int (*logs)(struct service *s, uint64_t *from, size_t max, struct evbuffer *out, char **cause);
	/* Optional: a health check of I passed while it boots or is unhealthy;
	 * is it I's own server that answered (local: the listener on its port
	 * is a process of its tree, not another user's who bound the port while
	 * I loaded; slurm: the listener on the node is the job's account's)?
	 * 0, or -1 with *cause (malloc'd): I is not ready, it is probed again. */
	int (*verify)(struct instance *i, char **cause);
};

/* The built-in ones (a launcher needs no line here: launcher.c declares
 * each entry of its table). */
extern const struct launcher_ops launcher_local;
extern const struct launcher_ops launcher_slurm;

/* --- the registry (launcher.c) --- */

/* The launcher called NAME, or NULL. */
const struct launcher_ops *launcher_find(const char *name);
/* The launcher a service gets when its config names none ("slurm"). */
const struct launcher_ops *launcher_default(void);
/* Every launcher, for k < launcher_count(). */
size_t launcher_count(void);
const struct launcher_ops *launcher_at(size_t k);
/* The known names, quoted and comma-separated ("\"local\", \"slurm\""),
 * for error messages. */
void launcher_names(char *buf, size_t len);
/* "script_exited", "start_timeout", ... ("other" for anything else). */
const char *launch_fail_name(enum launch_fail k);

#endif
