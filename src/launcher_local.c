/* launcher_local.c - an instance is a child process on this host.
 *
 * bash_file is executed directly (argv, no shell string) with the port as
 * $1 and in PORT, in its own process group, and dies with the gateway
 * (PR_SET_PDEATHSIG). The service is reached at local_host:local_port. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "launcher.h"
#include "proc.h"
#include "service.h"
#include "util.h"

static void local_exited(struct proc *p, int status, void *arg)
{
	struct instance *i = arg;
	char st[96], why[700];
	const char *last = proc_last_line(p);

	proc_status_str(status, st, sizeof st);
	i->lpriv = NULL;
	i->pid = 0;
	if (i->state == INST_STARTING || i->state == INST_PROBING)
		snprintf(why, sizeof why, "start script %s%s%s", st, last[0] ? ": " : "", last);
	else
		snprintf(why, sizeof why, "process %s%s%s", st, last[0] ? ": " : "", last);
	instance_gone(i, why);
}

static int local_start(struct instance *i, char **cause)
{
	const struct svc_config *cfg = service_config(i->svc);
	char port[16], envport[32], envname[300], prefix[300];
	const char *env[3] = {envport, envname, NULL};
	char *argv[3];
	struct proc_opts o = {0};
	struct proc *p;

	snprintf(port, sizeof port, "%d", i->remote_port);
	snprintf(envport, sizeof envport, "PORT=%d", i->remote_port);
	snprintf(envname, sizeof envname, "SLURMGATE_SERVICE=%s", cfg->name);
	snprintf(prefix, sizeof prefix, "svc %s[%d] stderr", cfg->name, i->index);
	argv[0] = cfg->bash_file;
	argv[1] = port;
	argv[2] = NULL;
	o.new_pgrp = true;
	o.pdeathsig = SIGTERM;
	o.env = env;
	o.log_prefix = prefix;
	p = proc_spawn(argv, &o, local_exited, i, cause);
	if (p == NULL)
		return -1;
	i->lpriv = p;
	i->pid = proc_pid(p);
	instance_set_detail(i, "process %d started", (int)i->pid);
	instance_endpoint(i, cfg->local_host, i->local_port);
	return 0;
}

static void local_stop(struct instance *i, int grace_s)
{
	if (i->lpriv == NULL) {
		instance_gone(i, "not running");
		return;
	}
	proc_terminate(i->lpriv, grace_s);
}

const struct launcher_ops launcher_local = {
	.name = "local",
	.start = local_start,
	.stop = local_stop,
};
