/* auth_limit.h - failed authentication, limited per client address.
 *
 * Every wrong token (admin token or api key) a client presents counts
 * against its address: an IPv4 address, or an IPv6 /64 (one host gets a
 * whole /64). Once an address has auth_fail_limit failures within
 * auth_fail_window seconds of its first, its tokens are not looked at
 * until that window ends: auth.c answers 429 + Retry-After, a correct token
 * included (it waits like any other). A request without a token guesses
 * nothing and is never counted.
 *
 * The address is the peer's, or, from a peer in trusted_proxies, the
 * client its X-Forwarded-For names (the rightmost entry that is not a
 * trusted proxy itself).
 *
 * Memory is fixed: AUTH_LIMIT_SLOTS addresses, in sets of AUTH_LIMIT_WAYS
 * chosen by a keyed hash (an attacker cannot aim at one set); a new
 * address takes the set's expired or oldest slot. An attacker with more
 * addresses than that can push out its own counts, never grow the table.
 * The limit is logged once per address and window. */
#ifndef SG_AUTH_LIMIT_H
#define SG_AUTH_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct gw;
struct hconn;
struct http_msg;

#define AUTH_LIMIT_SLOTS 4096
#define AUTH_LIMIT_WAYS 8

/* The config in force (gw.h) gives the limit and the window; again after
 * each reload (the counts stay). */
void auth_limit_configure(struct gw *g);

/* The address the limit counts C (the client of M) under: 16 bytes (IPv4
 * as ::ffff:a.b.c.d, IPv6 cut to its /64), and its text into TEXT. False
 * when the peer's address cannot be read. */
bool auth_limit_client(struct hconn *c, const struct http_msg *m, uint8_t addr[16], char *text,
		       size_t len);

/* Seconds the client at ADDR must still wait before its tokens are looked
 * at again; 0: they are looked at. */
int auth_limit_wait_addr(const uint8_t addr[16], double now);
/* A wrong token from ADDR (TEXT for the log) at NOW. */
void auth_limit_fail_addr(const uint8_t addr[16], const char *text, double now);

/* The same for the client of request M on C. */
int auth_limit_wait(struct hconn *c, const struct http_msg *m);
void auth_limit_fail(struct hconn *c, const struct http_msg *m);
/* A request was refused (429) by the limit: counted for /metrics. */
void auth_limit_refused(void);

/* The slurmgate_auth_* families for /metrics. */
void auth_limit_metrics(struct evbuffer *b);
/* Forget every count (tests; and at exit). */
void auth_limit_reset(void);

#endif
