/* launcher.h - how an instance is started and stopped.
 *
 * One table per back end (local process, Slurm job); service.c never asks
 * which one it has. A launcher reports back through instance_endpoint(),
 * instance_set_detail(), instance_set_deadline(), instance_hold(),
 * instance_fail() and instance_gone() (instance.h). */
#ifndef SG_LAUNCHER_H
#define SG_LAUNCHER_H

struct config;
struct event_base;
struct instance;

struct launcher_ops {
	const char *name;
	/* At start-up and after each reload, with the config in force (optional). */
	void (*init)(struct event_base *base, const struct config *cfg);
	/* Begin starting I. Returns 0, or -1 with *cause (malloc'd) when it
	 * fails at once; nothing is reported back then. */
	int (*start)(struct instance *i, char **cause);
	/* Stop I (grace_s between polite and forced); instance_gone() follows. */
	void (*stop)(struct instance *i, int grace_s);
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
};

extern const struct launcher_ops launcher_local;
extern const struct launcher_ops launcher_slurm;

#endif
