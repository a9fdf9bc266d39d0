/* reply.c - the gateway's own JSON answers (see reply.h). */
#include "reply.h"

#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "util.h"

void reply_json(struct hconn *c, int status, json_t *o, const char *extra)
{
	char *body;

	if (o == NULL) {   /* json_pack refused a value (not UTF-8): never crash on it */
		http_reply_error(c, 500, SG_SEC_HEADERS_DATA, "could not encode the answer as JSON");
		return;
	}
	body = json_dumps(o, JSON_COMPACT);
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
