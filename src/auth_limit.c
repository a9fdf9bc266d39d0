/* auth_limit.c - failed authentication, limited per client address (see
 * auth_limit.h). */
#include "auth_limit.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "access.h"
#include "config.h"
#include "gw.h"
#include "http.h"
#include "log.h"
#include "router.h"
#include "util.h"

#define NSETS (AUTH_LIMIT_SLOTS / AUTH_LIMIT_WAYS)

struct slot {
	uint8_t addr[16];
	bool used;
	bool logged;      /* the limit was logged in this window */
	int fails;        /* in the window that began at START */
	double start;     /* the window's first failure (now_s) */
};

static struct gw *gw;
static struct slot table[AUTH_LIMIT_SLOTS];
static uint64_t seed[2];
static bool seeded;
static uint64_t failures, refused;

void auth_limit_configure(struct gw *g)
{
	gw = g;
}

static int limit(void)
{
	return gw ? gw->cfg->auth_fail_limit : 10;
}

static int window(void)
{
	return gw ? gw->cfg->auth_fail_window : 60;
}

static uint64_t mix(uint64_t x)
{
	/* splitmix64's finaliser */
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* The set ADDR lives in: a hash keyed by a secret of this process, so a
 * client cannot pick addresses that crowd one set. */
static struct slot *set_of(const uint8_t addr[16])
{
	uint64_t a, b;

	if (!seeded) {
		if (getrandom(seed, sizeof seed, GRND_NONBLOCK) != sizeof seed) {
			seed[0] = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
			seed[1] = mix(seed[0] ^ (uint64_t)(uintptr_t)&seed);
		}
		seeded = true;
	}
	memcpy(&a, addr, 8);
	memcpy(&b, addr + 8, 8);
	return &table[(mix(a ^ seed[0]) ^ mix(b ^ seed[1] ^ mix(a))) % NSETS * AUTH_LIMIT_WAYS];
}

static bool expired(const struct slot *s, double now)
{
	return !s->used || now - s->start >= window();
}

/* Which slot a new address takes first: 0 expired, 1 counting, 2 refused. */
static int evict_rank(const struct slot *s, double now)
{
	if (expired(s, now))
		return 0;
	return s->fails >= limit() ? 2 : 1;
}

static struct slot *find(const uint8_t addr[16])
{
	struct slot *set = set_of(addr);

	for (int k = 0; k < AUTH_LIMIT_WAYS; k++)
		if (set[k].used && memcmp(set[k].addr, addr, 16) == 0)
			return &set[k];
	return NULL;
}

int auth_limit_wait_addr(const uint8_t addr[16], double now)
{
	const struct slot *s;
	double left;

	if (limit() == 0 || (s = find(addr)) == NULL || expired(s, now) || s->fails < limit())
		return 0;
	left = ceil(s->start + window() - now);
	return left < 1 ? 1 : (int)left;
}

void auth_limit_fail_addr(const uint8_t addr[16], const char *text, double now)
{
	struct slot *s = find(addr);

	failures++;
	if (limit() == 0)
		return;
	if (s == NULL) {
		/* a new address: an expired slot of its set, else the oldest one
		 * not refused, else the oldest (many addresses that fail once
		 * each do not push out one that is refused) */
		struct slot *set = set_of(addr);
		s = &set[0];
		for (int k = 1; k < AUTH_LIMIT_WAYS; k++)
			if (evict_rank(&set[k], now) < evict_rank(s, now) ||
			    (evict_rank(&set[k], now) == evict_rank(s, now) && set[k].start < s->start))
				s = &set[k];
		*s = (struct slot){.used = true};
		memcpy(s->addr, addr, 16);
	}
	if (expired(s, now)) {
		s->start = now;
		s->fails = 0;
		s->logged = false;
	}
	s->fails++;
	if (s->fails >= limit() && !s->logged) {
		s->logged = true;
		log_warn("client %s: %d failed authentications within %.0f s: its tokens are refused "
			 "unread (429) for the next %.0f s (auth_fail_limit %d per auth_fail_window %d s)",
			 text, s->fails, now - s->start, ceil(s->start + window() - now), limit(),
			 window());
	}
}

/* Parse the address text P (LEN bytes; a port or brackets around it are
 * allowed) into SA and its key. */
static bool parse_addr(const char *p, size_t len, struct sockaddr_storage *sa, uint8_t key[16])
{
	char buf[INET6_ADDRSTRLEN + 8];
	struct sockaddr_in *sin = (struct sockaddr_in *)sa;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)sa;
	char *colon;

	while (len > 0 && (*p == ' ' || *p == '\t'))
		p++, len--;
	while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
		len--;
	if (len == 0 || len >= sizeof buf)
		return false;
	memcpy(buf, p, len);
	buf[len] = '\0';
	if (buf[0] == '[') {   /* [v6] or [v6]:port */
		char *end = strchr(buf, ']');
		if (end == NULL)
			return false;
		*end = '\0';
		memmove(buf, buf + 1, strlen(buf + 1) + 1);
	} else if ((colon = strchr(buf, ':')) != NULL && strchr(colon + 1, ':') == NULL) {
		*colon = '\0';   /* a.b.c.d:port */
	}
	memset(sa, 0, sizeof *sa);
	memset(key, 0, 16);
	if (inet_pton(AF_INET, buf, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &sin->sin_addr, 4);
		return true;
	}
	if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
			memcpy(key, &sin6->sin6_addr, 16);   /* an IPv4 client */
		else
			memcpy(key, &sin6->sin6_addr, 8);   /* its /64 */
		return true;
	}
	return false;
}

/* The last X-Forwarded-For header of M, or NULL. */
static const struct http_hdr *last_xff(const struct http_msg *m)
{
	const struct http_hdr *h = NULL;

	for (size_t k = 0; k < m->nhdrs; k++)
		if (strncase_eq(m->hdrs[k].name, m->hdrs[k].nlen, "x-forwarded-for"))
			h = &m->hdrs[k];
	return h;
}

bool auth_limit_client(struct hconn *c, const struct http_msg *m, uint8_t addr[16], char *text,
		       size_t len)
{
	const char *peer = http_peer(c);
	struct sockaddr_storage sa;
	const struct http_hdr *xff;

	if (peer == NULL || !parse_addr(peer, strlen(peer), &sa, addr))
		return false;
	snprintf(text, len, "%s", peer);
	if (m == NULL || !access_peer_trusted(c) || (xff = last_xff(m)) == NULL)
		return true;
	/* from the right: the first entry that is not a trusted proxy is the
	 * client; one that is not an address ends the walk (the peer counts) */
	for (size_t end = xff->vlen; end > 0;) {
		size_t at = end;
		uint8_t k[16];
		while (at > 0 && xff->value[at - 1] != ',')
			at--;
		if (!parse_addr(xff->value + at, end - at, &sa, k))
			return true;
		memcpy(addr, k, 16);
		snprintf(text, len, "%s (via %s)", log_escape(xff->value + at, end - at), peer);
		if (!router_cidr_match(gw->cfg->proxies, gw->cfg->n_proxies, (struct sockaddr *)&sa))
			return true;
		end = at > 0 ? at - 1 : 0;
	}
	return true;
}

int auth_limit_wait(struct hconn *c, const struct http_msg *m)
{
	uint8_t addr[16];
	char text[200];

	if (limit() == 0 || !auth_limit_client(c, m, addr, text, sizeof text))
		return 0;
	return auth_limit_wait_addr(addr, now_s());
}

void auth_limit_fail(struct hconn *c, const struct http_msg *m)
{
	uint8_t addr[16];
	char text[200];

	if (!auth_limit_client(c, m, addr, text, sizeof text)) {
		failures++;
		return;
	}
	auth_limit_fail_addr(addr, text, now_s());
}

void auth_limit_refused(void)
{
	refused++;
}

void auth_limit_metrics(struct evbuffer *b)
{
	double now = now_s();
	int locked = 0;

	for (size_t k = 0; k < AUTH_LIMIT_SLOTS; k++)
		locked += !expired(&table[k], now) && limit() > 0 && table[k].fails >= limit();
	evbuffer_add_printf(b,
			    "# HELP slurmgate_auth_failures_total Requests with a wrong admin token or api key.\n"
			    "# TYPE slurmgate_auth_failures_total counter\n"
			    "slurmgate_auth_failures_total %llu\n"
			    "# HELP slurmgate_auth_limited_total Requests refused (429) unread: their address "
			    "had auth_fail_limit failures in its window.\n"
			    "# TYPE slurmgate_auth_limited_total counter\n"
			    "slurmgate_auth_limited_total %llu\n"
			    "# HELP slurmgate_auth_limited_clients Client addresses whose tokens are refused now.\n"
			    "# TYPE slurmgate_auth_limited_clients gauge\n"
			    "slurmgate_auth_limited_clients %d\n",
			    (unsigned long long)failures, (unsigned long long)refused, locked);
}

void auth_limit_reset(void)
{
	memset(table, 0, sizeof table);
	failures = refused = 0;
}
