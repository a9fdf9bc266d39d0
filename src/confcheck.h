/* confcheck.h - config values against the machine, and hints for mistakes.
 *
 * What -t must catch because the start (or every start of a service) would
 * fail on it: host names that do not resolve, files that cannot be opened;
 * and what makes an error message useful: the value found, the key meant. */
#ifndef SG_CONFCHECK_H
#define SG_CONFCHECK_H

#include <stddef.h>

#include <jansson.h>

/* "HOST:PORT" as the listen key and -l take it: a host name is resolved to
 * its first address, the port must be 1-65535. 0 with *host (malloc'd) and
 * *port, or -1 and *cause (malloc'd). */
int confcheck_listen(const char *spec, char **host, int *port, char **cause);
/* HOST as a numeric address (malloc'd), looked up once, or NULL. */
char *confcheck_numeric_host(const char *host);
/* Could FILE be opened for appending (created if missing)? Creates nothing.
 * 0, or -1 and *cause (malloc'd, naming the file). */
int confcheck_log_file(const char *file, char **cause);
/* Is FILE a regular file we can read (an ssh key)? 0, or -1 and *cause. */
int confcheck_key_file(const char *file, char **cause);
/* Is DIR (the state_dir: known_hosts, ssh control sockets, the process
 * record) a directory of our own that nobody else may write to? 0, or -1
 * and *cause (malloc'd, naming DIR and the fix). */
int confcheck_private_dir(const char *dir, char **cause);
/* "got ..." for an error message: V's JSON type and short value, in BUF. */
const char *confcheck_json_desc(json_t *v, char *buf, size_t len);
/* Levenshtein distance, case-insensitive (64 for strings of 63+ bytes). */
size_t confcheck_edit_distance(const char *a, const char *b);

#endif
