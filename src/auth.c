/* auth.c - the admin token, the api keys and the cross-site gate, checked
 * on a request (see auth.h; the decisions are access.c's). */
#include "auth.h"

#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#include "access.h"
#include "auth_limit.h"
#include "config.h"
#include "gw.h"
#include "http.h"
#include "log.h"
#include "reply.h"
#include "util.h"

static struct gw *gw;

void auth_configure(struct gw *g)
{
	gw = g;
	auth_limit_configure(g);
}

/* Is the client of M over auth_fail_limit? Then its token is not looked
 * at: 429 + Retry-After (OPENAI: in OpenAI's shape) and true. */
static bool limited(struct hconn *c, const struct http_msg *m, bool openai)
{
	int wait = auth_limit_wait(c, m);
	char msg[200], ra[40];

	if (wait <= 0)
		return false;
	auth_limit_refused();
	snprintf(msg, sizeof msg, "too many failed authentication attempts from this address: "
				  "try again in %d s (auth_fail_limit)", wait);
	snprintf(ra, sizeof ra, "Retry-After: %d\r\n", wait);
	if (openai)
		reply_openai_err(c, 429, "rate_limit_error", "rate_limit_exceeded", msg, ra);
	else
		reply_json(c, 429, json_pack("{s:s,s:i,s:i}", "error", msg, "status", 429, "retry_after", wait),
			   ra);
	return true;
}

bool auth_admin_token_required(void)
{
	return gw != NULL && gw->cfg->admin_token != NULL;
}

bool auth_admin(struct hconn *c, const struct http_msg *m)
{
	size_t len = 0;
	const char *t;

	if (gw->cfg->admin_token == NULL)
		return true;
	t = access_bearer(m, &len);
	if (t != NULL && limited(c, m, false))
		return false;
	if (t != NULL && access_secret_eq(t, len, gw->cfg->admin_token))
		return true;
	if (t != NULL)
		auth_limit_fail(c, m);
	reply_json(c, 401,
		   json_pack("{s:s,s:i}", "error",
			     t ? "invalid admin token" : "this endpoint needs Authorization: Bearer <admin_token>",
			     "status", 401),
		   "WWW-Authenticate: Bearer realm=\"slurmgate-admin\"\r\n");
	return false;
}

bool auth_same_site(struct hconn *c, const struct http_msg *m)
{
	if (!access_cross_site(c, m))
		return true;
	log_warn("client %s: refused a cross-site request to %s", http_peer(c),
		 log_escape(m->url, m->url_len));
	reply_err(c, 403, "cross-site request refused: this endpoint changes state "
			  "(Origin or Sec-Fetch-Site names another site)");
	return false;
}

const char *auth_key_id(struct hconn *c, const struct http_msg *m)
{
	size_t len = 0;
	const char *t;
	const struct api_key *k;

	if (gw->cfg->n_api_keys == 0 || (t = access_bearer(m, &len)) == NULL ||
	    auth_limit_wait(c, m) > 0)
		return "";
	k = access_key_find(t, len);
	return k ? access_key_id(k) : "";
}

bool auth_key(struct hconn *c, const struct http_msg *m, const struct service *s, bool openai)
{
	size_t len = 0;
	const char *t;
	const struct api_key *k;
	const char *www = "WWW-Authenticate: Bearer realm=\"slurmgate\"\r\n";

	if (gw->cfg->n_api_keys == 0)
		return true;
	t = access_bearer(m, &len);
	if (t != NULL && limited(c, m, openai))
		return false;
	k = t ? access_key_find(t, len) : NULL;
	if (k == NULL && t != NULL)
		auth_limit_fail(c, m);
	if (k == NULL) {
		const char *msg = t ? "invalid api key" : "this gateway needs Authorization: Bearer <api key>";
		if (openai)
			reply_openai_err(c, 401, "invalid_request_error", "invalid_api_key", msg, www);
		else
			reply_json(c, 401, json_pack("{s:s,s:i}", "error", msg, "status", 401), www);
		return false;
	}
	if (!access_key_allows(k, s)) {
		const char *msg = "this api key may not use this service";
		if (openai)
			reply_openai_err(c, 403, "permission_error", "forbidden", msg, NULL);
		else
			reply_err(c, 403, msg);
		return false;
	}
	return true;
}

bool auth_public_status(void)
{
	return gw == NULL || gw->cfg->public_status;
}

bool auth_read(struct hconn *c, const struct http_msg *m)
{
	size_t len = 0;
	const char *t;

	if (auth_public_status())
		return true;
	t = access_bearer(m, &len);
	if (t != NULL && limited(c, m, false))
		return false;
	if (t != NULL && ((gw->cfg->admin_token && access_secret_eq(t, len, gw->cfg->admin_token)) ||
			  access_key_find(t, len) != NULL))
		return true;
	if (t != NULL)
		auth_limit_fail(c, m);
	reply_json(c, 401,
		   json_pack("{s:s,s:i}", "error",
			     t ? "invalid api key" :
				 "the gateway's state needs Authorization: Bearer <api key or admin token> "
				 "(public_status is false)",
			     "status", 401),
		   "WWW-Authenticate: Bearer realm=\"slurmgate\"\r\n");
	return false;
}

bool auth_logs(struct hconn *c, const struct http_msg *m)
{
	if (gw->cfg->admin_token != NULL)
		return auth_admin(c, m);
	return auth_read(c, m);
}

bool auth_output_open(void)
{
	return gw == NULL || gw->cfg->admin_token == NULL;
}

bool auth_sees_output(struct hconn *c, const struct http_msg *m)
{
	size_t len = 0;
	const char *t;

	if (auth_output_open())
		return true;
	/* a guess of the admin token here would be told by what it shows:
	 * limited, and counted when it is no credential at all */
	if ((t = access_bearer(m, &len)) == NULL || auth_limit_wait(c, m) > 0)
		return false;
	if (access_secret_eq(t, len, gw->cfg->admin_token))
		return true;
	if (access_key_find(t, len) == NULL)
		auth_limit_fail(c, m);
	return false;
}
