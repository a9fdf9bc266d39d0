/* auth.h - who is asking: the admin token and the api keys, checked on a
 * request, and the cross-site gate of state-changing endpoints. Each gate
 * returns true when the request may go on; otherwise it has answered the
 * client (401 with WWW-Authenticate, 403; 429 + Retry-After, the token
 * unread, when its address is over auth_fail_limit: auth_limit.h), in the
 * gateway's JSON or, for /v1, in OpenAI's error shape. Every wrong token a
 * gate sees counts against the client's address.
 *
 * Beside access.c, not in it: access.c makes the decisions on plain data
 * (a bearer token, a key's service list, a peer address, Origin against
 * Host) and never answers anyone; the gates here are where those
 * decisions meet a client, and so pick the status, the realm and the
 * error shape. */
#ifndef SG_AUTH_H
#define SG_AUTH_H

#include <stdbool.h>

struct gw;
struct hconn;
struct http_msg;
struct service;

/* The admin_token and api_keys are those of G's config in force (gw.h). */
void auth_configure(struct gw *g);

/* Whether admin endpoints need the admin token (the status page hides its
 * token box when not). */
bool auth_admin_token_required(void);
/* Admin endpoints need "Authorization: Bearer <admin_token>" when one is set. */
bool auth_admin(struct hconn *c, const struct http_msg *m);
/* With api_keys set, using a service needs a key that may use it: 401
 * without one, 403 for a key limited to other services. The admin token
 * is never an api key. S may be NULL (any service will do). OPENAI: answer
 * in OpenAI's error shape. */
bool auth_key(struct hconn *c, const struct http_msg *m, const struct service *s, bool openai);
/* The id of M's api key for logs and usage (its name or a keyed digest
 * prefix, never the key), "" when there is none, it is not one of ours,
 * or C is over auth_fail_limit (its token is not looked at). */
const char *auth_key_id(struct hconn *c, const struct http_msg *m);
/* The state (/info, /check_<route>, /api/..., /metrics): with
 * public_status false, it needs an api key (any) or the admin token, else
 * 401; with public_status true (the default) anyone may read it. */
bool auth_read(struct hconn *c, const struct http_msg *m);
bool auth_public_status(void);
/* A service's logs (they may hold secrets): the admin token when one is
 * set, else as auth_read. */
bool auth_logs(struct hconn *c, const struct http_msg *m);
/* The output a failed start's reason quotes (after LAUNCH_OUTPUT_MARK,
 * launcher.h: a job's or process's last lines, which may hold secrets) is
 * for those who may read the logs. auth_output_open: everyone who may
 * read the state may (no admin token is set). Else auth_sees_output: M
 * carries the admin token (a wrong token here counts against
 * auth_fail_limit, as anywhere). The data path (a failed start's 502, the
 * waiting page, a cold start's event stream) quotes it only when
 * auth_output_open: a service's client is not its admin. */
bool auth_output_open(void);
bool auth_sees_output(struct hconn *c, const struct http_msg *m);
/* State-changing endpoints refuse cross-site requests (403). */
bool auth_same_site(struct hconn *c, const struct http_msg *m);

#endif
