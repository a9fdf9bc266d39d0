/* access.c - who may do what: secrets, api keys, trusted proxies and
 * cross-site requests (see access.h). */
#include "access.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#include "config.h"
#include "gw.h"
#include "http.h"
#include "launcher.h"
#include "log.h"
#include "router.h"
#include "service.h"
#include "sha256.h"
#include "util.h"

/* api keys by hash; compared in constant time once found. */
struct keyslot {
	uint64_t hash;
	const struct api_key *key;
	char id[20];   /* "key:" and 12 hex digits of the key's keyed digest */
};

static struct gw *gw;
static struct keyslot *keys;
static size_t nkeyslots;

static uint64_t fnv1a(const char *p, size_t n)
{
	uint64_t h = 1469598103934665603ULL;

	for (size_t k = 0; k < n; k++)
		h = (h ^ (unsigned char)p[k]) * 1099511628211ULL;
	return h;
}

/* The secret that keys the ids of unnamed api keys: an id is then no
 * digest anyone may test candidate keys against offline. Kept in
 * state_dir, so that ids (in the access log, /metrics, usage) stay the
 * same across restarts. */
#define ID_SECRET_FILE "key_id_secret"
static uint8_t id_secret[32];
static bool id_secret_set;

static int hexdigit(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

/* Read DIR's secret into id_secret: 0, or -1 (missing or malformed). */
static int id_secret_read(const char *path)
{
	char buf[80];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof buf);
	close(fd);
	if (n < 64)
		return -1;
	for (int k = 0; k < 32; k++) {
		int hi = hexdigit(buf[2 * k]), lo = hexdigit(buf[2 * k + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		id_secret[k] = (uint8_t)(hi * 16 + lo);
	}
	return 0;
}

/* A new random secret, written to PATH (mode 600, whole or not at all):
 * 0, or -1 with errno (the secret is still made, for this run). */
static int id_secret_create(const char *path)
{
	char tmp[4200], text[66];
	int fd, e;

	if (getrandom(id_secret, sizeof id_secret, 0) != sizeof id_secret)
		fatal("getrandom: %s", strerror(errno));
	for (int k = 0; k < 32; k++)
		snprintf(text + 2 * k, 3, "%02x", id_secret[k]);
	text[64] = '\n';
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -1;
	if (write(fd, text, 65) != 65 || fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
		e = errno;
		unlink(tmp);
		errno = e;
		return -1;
	}
	return 0;
}

static void id_secret_load(const char *state_dir)
{
	char path[4096];

	if (id_secret_set)
		return;
	id_secret_set = true;
	if (state_dir == NULL) {   /* no installation (unit tests): this run's own */
		if (getrandom(id_secret, sizeof id_secret, 0) != sizeof id_secret)
			fatal("getrandom: %s", strerror(errno));
		return;
	}
	snprintf(path, sizeof path, "%s/%s", state_dir, ID_SECRET_FILE);
	if (id_secret_read(path) == 0)
		return;
	if (access(path, F_OK) == 0)
		log_warn("%s is not a secret this gateway wrote: replacing it (the ids of unnamed api "
			 "keys change)", path);
	if (id_secret_create(path) != 0)
		log_warn("%s: %s: the ids of unnamed api keys will change at the next start", path,
			 strerror(errno));
}

/* "key:" and 12 hex digits of KEY's HMAC-SHA256 under the secret, into OUT. */
static void digest_id(const char *key, char out[20])
{
	uint8_t d[32];

	id_secret_load(NULL);
	hmac_sha256(id_secret, sizeof id_secret, key, strlen(key), d);
	snprintf(out, 20, "key:%02x%02x%02x%02x%02x%02x", d[0], d[1], d[2], d[3], d[4], d[5]);
}

void access_configure(struct gw *g)
{
	const struct config *cfg = g->cfg;

	gw = g;
	id_secret_load(cfg->state_dir);
	free(keys);
	nkeyslots = cfg->n_api_keys * 2 + 1;
	keys = xcalloc(nkeyslots, sizeof *keys);
	for (size_t k = 0; k < cfg->n_api_keys; k++) {
		const struct api_key *ak = &cfg->api_keys[k];
		uint64_t h = fnv1a(ak->key, strlen(ak->key));
		size_t at = h % nkeyslots;
		while (keys[at].key)
			at = (at + 1) % nkeyslots;
		keys[at] = (struct keyslot){h, ak, ""};
		digest_id(ak->key, keys[at].id);
	}
}

const char *access_key_id(const struct api_key *k)
{
	static char id[20];   /* a key not in the index (none configured yet) */
	uint64_t h;

	if (k->name)
		return k->name;
	h = fnv1a(k->key, strlen(k->key));
	for (size_t at = nkeyslots ? h % nkeyslots : 0, probes = 0; probes < nkeyslots;
	     at = (at + 1) % nkeyslots, probes++)
		if (keys[at].key == k)
			return keys[at].id;
	digest_id(k->key, id);
	return id;
}

void access_free(void)
{
	free(keys);
	keys = NULL;
	nkeyslots = 0;
	gw = NULL;
}

char *access_redact_output(const char *text, const char *service)
{
	const char *at = strstr(text, LAUNCH_OUTPUT_MARK);

	if (at == NULL)
		return NULL;
	return xasprintf("%.*s; its output: see /api/services/%s/logs (needs the admin token)",
			 (int)(at - text), text, service ? service : "<name>");
}

bool access_secret_eq(const char *given, size_t glen, const char *real)
{
	size_t rlen = strlen(real);
	unsigned char diff = glen != rlen;

	for (size_t k = 0; k < rlen; k++)
		diff |= (unsigned char)(real[k] ^ (k < glen ? given[k] : 0));
	return diff == 0;
}

const char *access_bearer(const struct http_msg *m, size_t *len)
{
	const struct http_hdr *h = http_find(m, "authorization");

	if (h == NULL || h->vlen <= 7 || strncasecmp(h->value, "Bearer ", 7) != 0)
		return NULL;
	*len = h->vlen - 7;
	return h->value + 7;
}

const struct api_key *access_key_find(const char *t, size_t len)
{
	uint64_t h = fnv1a(t, len);

	if (nkeyslots == 0)
		return NULL;
	for (size_t k = h % nkeyslots, probes = 0; probes < nkeyslots; k = (k + 1) % nkeyslots, probes++) {
		if (keys[k].key == NULL)
			return NULL;
		if (keys[k].hash == h && access_secret_eq(t, len, keys[k].key->key))
			return keys[k].key;
	}
	return NULL;
}

bool access_key_allows(const struct api_key *k, const struct service *s)
{
	if (k->services == NULL || s == NULL)
		return true;
	for (char **p = k->services; *p; p++)
		if (strcmp(*p, service_config(s)->name) == 0)
			return true;
	return false;
}

bool access_peer_trusted(struct hconn *c)
{
	const char *p = http_peer(c);
	struct sockaddr_in sin = {.sin_family = AF_INET};
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};

	if (gw == NULL || gw->cfg->n_proxies == 0 || p == NULL)
		return false;
	if (inet_pton(AF_INET, p, &sin.sin_addr) == 1)
		return router_cidr_match(gw->cfg->proxies, gw->cfg->n_proxies, (struct sockaddr *)&sin);
	if (inet_pton(AF_INET6, p, &sin6.sin6_addr) == 1)
		return router_cidr_match(gw->cfg->proxies, gw->cfg->n_proxies, (struct sockaddr *)&sin6);
	return false;
}

static bool hdr_is(const struct http_hdr *h, const char *lit)
{
	return strncase_eq(h->value, h->vlen, lit);
}

bool access_cross_site(struct hconn *c, const struct http_msg *m)
{
	const struct http_hdr *sfs = http_find(m, "sec-fetch-site");
	const struct http_hdr *o = http_find(m, "origin"), *host = NULL;
	const char *a;
	size_t alen;

	if (sfs != NULL)
		return !hdr_is(sfs, "same-origin") && !hdr_is(sfs, "none");
	if (o == NULL)
		o = http_find(m, "referer");
	if (o == NULL)
		return false;
	if (access_peer_trusted(c))
		host = http_find(m, "x-forwarded-host");
	if (host == NULL)
		host = http_find(m, "host");
	if (!router_authority(o->value, o->vlen, &a, &alen))   /* "Origin: null" */
		return true;
	if (host == NULL)
		return true;
	if (alen == host->vlen && strncasecmp(a, host->value, alen) == 0)
		return false;
	/* a proxy that sends "Host: $host" drops the port: compare names then */
	if (memchr(host->value, ':', host->vlen) == NULL && host->vlen > 0 && host->value[0] != '[') {
		const char *colon = memchr(a, ':', alen);
		size_t nlen = colon ? (size_t)(colon - a) : alen;
		return nlen != host->vlen || strncasecmp(a, host->value, nlen) != 0;
	}
	return true;
}
