/* confcheck.c - config values against the machine, and hints for mistakes:
 * host names, files the gateway will open, what a wrong value was, and
 * which known key a misspelled one meant (see confcheck.h). */
#include "confcheck.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

int confcheck_private_dir(const char *dir, char **cause)
{
	struct stat st;

	if (stat(dir, &st) != 0) {
		*cause = xasprintf("state_dir %s: %s", dir, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		*cause = xasprintf("state_dir %s: not a directory", dir);
		return -1;
	}
	if (st.st_uid != geteuid()) {
		*cause = xasprintf("state_dir %s belongs to uid %u, not to this gateway's (%u): another "
				   "user could change its known_hosts; use a directory of your own "
				   "(chown it, chmod 700)",
				   dir, (unsigned)st.st_uid, (unsigned)geteuid());
		return -1;
	}
	if (st.st_mode & 022) {
		*cause = xasprintf("state_dir %s is writable by others (mode %03o): another user could "
				   "change its known_hosts; chmod 700 it",
				   dir, (unsigned)(st.st_mode & 0777));
		return -1;
	}
	return 0;
}

/* "got ..." for a message: the JSON type, and the value when it is short. */
const char *confcheck_json_desc(json_t *v, char *buf, size_t len)
{
	switch (json_typeof(v)) {
	case JSON_STRING:
		snprintf(buf, len, "string \"%s\"",
			 log_escape(json_string_value(v), json_string_length(v) > 40 ? 40 : json_string_length(v)));
		break;
	case JSON_INTEGER:
		snprintf(buf, len, "%lld", (long long)json_integer_value(v));
		break;
	case JSON_REAL:
		snprintf(buf, len, "%g", json_real_value(v));
		break;
	case JSON_TRUE:
		snprintf(buf, len, "true");
		break;
	case JSON_FALSE:
		snprintf(buf, len, "false");
		break;
	case JSON_NULL:
		snprintf(buf, len, "null");
		break;
	case JSON_ARRAY:
		snprintf(buf, len, "an array");
		break;
	default:
		snprintf(buf, len, "an object");
		break;
	}
	return buf;
}

/* Edit distance (Levenshtein, case-insensitive) of two short strings. */
size_t confcheck_edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), row[64], prev, i, j;

	if (la >= 63 || lb >= 63)
		return 64;
	for (j = 0; j <= lb; j++)
		row[j] = j;
	for (i = 1; i <= la; i++) {
		prev = row[0];
		row[0] = i;
		for (j = 1; j <= lb; j++) {
			size_t cur = row[j];
			size_t sub = prev + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
			size_t best = row[j] + 1 < row[j - 1] + 1 ? row[j] + 1 : row[j - 1] + 1;
			row[j] = sub < best ? sub : best;
			prev = cur;
		}
	}
	return row[lb];
}

/* Turn a host name into a numeric address once, at load time, so that no DNS
 * look-up ever happens on the request path. */
char *confcheck_numeric_host(const char *host)
{
	struct addrinfo hints = {0}, *res = NULL;
	char buf[INET6_ADDRSTRLEN];

	if (strcmp(host, "localhost") == 0)
		return xstrdup("127.0.0.1");
	hints.ai_flags = AI_ADDRCONFIG;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
		return NULL;
	if (res->ai_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, buf, sizeof buf);
	else
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, buf, sizeof buf);
	freeaddrinfo(res);
	return xstrdup(buf);
}

int confcheck_listen(const char *spec, char **host, int *port, char **cause)
{
	char *h = NULL, *n;
	int p;

	*host = NULL;
	if (parse_hostport(spec, &h, &p) != 0) {
		*cause = xasprintf("must be \"HOST:PORT\", got \"%s\"", log_escape(spec, strlen(spec)));
		return -1;
	}
	if (p < 1 || p > 65535) {
		*cause = xasprintf("port must be 1-65535, got %d", p);
		free(h);
		return -1;
	}
	/* a name is looked up once here, as the start binds the address it gives */
	n = confcheck_numeric_host(h);
	if (n == NULL) {
		*cause = xasprintf("cannot resolve \"%s\" (give an address, e.g. 127.0.0.1 or ::1)",
				   log_escape(h, strlen(h)));
		free(h);
		return -1;
	}
	free(h);
	*host = n;
	*port = p;
	return 0;
}


int confcheck_log_file(const char *file, char **cause)
{
	struct stat st;
	char *copy = xstrdup(file), *dir = dirname(copy);

	*cause = NULL;
	if (stat(file, &st) == 0) {
		if (S_ISDIR(st.st_mode))
			*cause = xasprintf("%s: is a directory", file);
		else if (access(file, W_OK) != 0)
			*cause = xasprintf("%s: %s", file, strerror(errno));
	} else if (errno != ENOENT) {
		*cause = xasprintf("%s: %s", file, strerror(errno));
	} else if (access(dir, W_OK | X_OK) != 0) {
		*cause = xasprintf("%s: cannot create it in %s: %s", file, dir, strerror(errno));
	}
	free(copy);
	return *cause ? -1 : 0;
}

int confcheck_key_file(const char *file, char **cause)
{
	struct stat st;
	int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

	*cause = NULL;
	if (fd < 0)
		*cause = xasprintf("%s: %s", file, strerror(errno));
	else if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode))
		*cause = xasprintf("%s: is a %s, not a key file", file,
				   S_ISDIR(st.st_mode) ? "directory" : "special file");
	if (fd >= 0)
		close(fd);
	return *cause ? -1 : 0;
}
