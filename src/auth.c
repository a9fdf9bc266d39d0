/* auth.c - the admin token, the api keys and the cross-site gate, checked
 * on a request (see auth.h; the decisions are access.c's). */
#include "auth.h"

#include <stddef.h>

#include <jansson.h>

#include "access.h"
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
	if (t != NULL && access_secret_eq(t, len, gw->cfg->admin_token))
		return true;
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

const char *auth_key_id(const struct http_msg *m)
{
	size_t len = 0;
	const char *t;
	const struct api_key *k;

	if (gw->cfg->n_api_keys == 0 || (t = access_bearer(m, &len)) == NULL)
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
	k = t ? access_key_find(t, len) : NULL;
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
	if (t != NULL && ((gw->cfg->admin_token && access_secret_eq(t, len, gw->cfg->admin_token)) ||
			  access_key_find(t, len) != NULL))
		return true;
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

	(void)c;
	if (auth_output_open())
		return true;
	t = access_bearer(m, &len);
	return t != NULL && access_secret_eq(t, len, gw->cfg->admin_token);
}
