/* launcher_slurm.c - an instance is a Slurm batch job (not built yet). */
#include "launcher.h"
#include "service.h"
#include "util.h"

static int slurm_start(struct instance *i, char **cause)
{
	(void)i;
	*cause = xstrdup("the slurm launcher is not available in this build; use \"launcher\": \"local\"");
	return -1;
}

static void slurm_stop(struct instance *i, int grace_s)
{
	(void)grace_s;
	instance_gone(i, "stopped");
}

const struct launcher_ops launcher_slurm = {
	.name = "slurm",
	.start = slurm_start,
	.stop = slurm_stop,
};
