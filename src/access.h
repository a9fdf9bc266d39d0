/* access.h - who may do what: secrets, api keys, trusted proxies and
 * cross-site requests. Decisions only; front.c answers the client. */
#ifndef SG_ACCESS_H
#define SG_ACCESS_H

#include <stdbool.h>
#include <stddef.h>

struct api_key;
struct gw;
struct hconn;
struct http_msg;
struct service;

/* Index the api keys of the config in force (gw.h) by hash; call again
 * after a reload, before the old config may go. Trusted proxies are read
 * from the config in force. */
void access_configure(struct gw *g);
void access_free(void);

/* Constant-time comparison of a presented secret with the real one. */
bool access_secret_eq(const char *given, size_t glen, const char *real);
/* The token of "Authorization: Bearer <token>" in M, or NULL. */
const char *access_bearer(const struct http_msg *m, size_t *len);
/* The api key whose text is T (LEN bytes), or NULL. */
const struct api_key *access_key_find(const char *t, size_t len);
/* What the access log names key K by: its "name", or "key:" and a prefix
 * of its HMAC-SHA256 under a secret of the installation (state_dir's
 * key_id_secret, made on the first start): stable across restarts, no
 * use to test candidate keys against offline. Never the key. */
const char *access_key_id(const struct api_key *k);
/* May key K use service S? (S NULL: any service will do) */
bool access_key_allows(const struct api_key *k, const struct service *s);

/* TEXT without the output it quotes (after LAUNCH_OUTPUT_MARK, launcher.h:
 * a job's or process's last lines), which is replaced by a pointer to
 * SERVICE's logs: a new string, or NULL when TEXT quotes none. */
char *access_redact_output(const char *text, const char *service);

/* Is the client C a proxy listed in trusted_proxies? */
bool access_peer_trusted(struct hconn *c);
/* Did a browser make request M for another site (CSRF)? Sec-Fetch-Site
 * says so, or Origin (else Referer) names another host than Host (or, from
 * a trusted proxy, X-Forwarded-Host). Scripts and curl send none of these
 * and pass. */
bool access_cross_site(struct hconn *c, const struct http_msg *m);

#endif
