/* fuzz_config.c - config loading (src/config.c) from bytes: a config file
 * is either loaded or refused with errors, never a crash or a leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

/* A config may name secret files, e.g. "0" next to /proc/self/fd/N: none
 * of them may be a terminal that blocks the run. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	if (freopen("/dev/null", "r", stdin) == NULL)
		abort();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	char **errs = NULL;
	struct config *cfg;
	int fd = memfd_create("fuzz_config", 0);

	if (fd < 0)
		return 0;
	if (size > 0 && write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	cfg = config_load(path, &errs);
	if (cfg == NULL && errs == NULL)
		abort();   /* refused without a reason */
	if (cfg != NULL)
		config_free(cfg);
	config_free_errors(errs);
	close(fd);
	return 0;
}
