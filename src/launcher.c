/* launcher.c - the registry of launchers: name -> ops (see launcher.h).
 * A new launcher is one file and one line in this table. */
#include "launcher.h"

#include <stdio.h>
#include <string.h>

/* The table: one line per launcher NAME, whose ops are the struct
 * launcher_NAME (defined in launcher_NAME.c). */
#define LAUNCHERS(X) \
	X(local)     \
	X(slurm)

#define DECLARE(n) extern const struct launcher_ops launcher_##n;
#define ENTRY(n) &launcher_##n,
LAUNCHERS(DECLARE)
static const struct launcher_ops *const launchers[] = {LAUNCHERS(ENTRY)};

#define NLAUNCHERS (sizeof launchers / sizeof *launchers)

const struct launcher_ops *launcher_find(const char *name)
{
	for (size_t k = 0; k < NLAUNCHERS; k++)
		if (strcmp(launchers[k]->name, name) == 0)
			return launchers[k];
	return NULL;
}

const struct launcher_ops *launcher_default(void)
{
	return &launcher_slurm;
}

size_t launcher_count(void)
{
	return NLAUNCHERS;
}

const struct launcher_ops *launcher_at(size_t k)
{
	return k < NLAUNCHERS ? launchers[k] : NULL;
}

void launcher_names(char *buf, size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t k = 0; k < NLAUNCHERS && o < len; k++) {
		int n = snprintf(buf + o, len - o, "%s\"%s\"", k ? ", " : "", launchers[k]->name);
		if (n < 0)
			break;
		o += (size_t)n;
	}
}

const char *launch_fail_name(enum launch_fail k)
{
	static const char *const names[LFAIL_NKINDS] = {
		[LFAIL_EXITED] = "script_exited", [LFAIL_TIMEOUT] = "start_timeout",
		[LFAIL_JOB] = "job_ended",        [LFAIL_SUBMIT] = "submit_failed",
		[LFAIL_TUNNEL] = "tunnel_failed", [LFAIL_OTHER] = "other",
	};
	return (unsigned)k < LFAIL_NKINDS ? names[k] : "other";
}
