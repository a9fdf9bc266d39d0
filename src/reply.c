/* reply.c - the gateway's own JSON answers (see reply.h). */
#include "reply.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "util.h"

json_t *reply_real(double v)
{
	if (!isfinite(v))
		return json_null();
	return json_real(round(v * 1000.0) / 1000.0);
}

char *reply_dumps(const json_t *o, bool newline)
{
	/* 15 significant digits: a rounded value prints as it was rounded
	 * (58.823, not 58.822999999999997), a wall-clock time keeps its ms */
	char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15));
	char *out;

	if (!newline)
		return s;
	out = xasprintf("%s\n", s);
	free(s);
	return out;
}

void reply_json(struct hconn *c, int status, json_t *o, const char *extra)
{
	char *body;

	if (o == NULL) {   /* json_pack refused a value (not UTF-8): never crash on it */
		http_reply_error(c, 500, SG_SEC_HEADERS_DATA, "could not encode the answer as JSON");
		return;
	}
	body = reply_dumps(o, true);
	if (extra != NULL) {
		char *h = xasprintf("%s%s", SG_SEC_HEADERS_DATA, extra);
		http_reply(c, status, "application/json", h, body, strlen(body));
		free(h);
	} else {
		http_reply(c, status, "application/json", SG_SEC_HEADERS_DATA, body, strlen(body));
	}
	free(body);
	json_decref(o);
}

void reply_err(struct hconn *c, int status, const char *msg)
{
	reply_json(c, status, json_pack("{s:s,s:i}", "error", msg, "status", status), NULL);
}

void reply_openai_err(struct hconn *c, int status, const char *type, const char *code,
		      const char *msg, const char *extra)
{
	reply_json(c, status,
		   json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", msg, "type", type, "param",
			     "code", code),
		   extra);
}
