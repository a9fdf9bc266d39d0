/* reply.h - the gateway's own JSON answers: {"error","status"} for its
 * endpoints, OpenAI's error shape for /v1. Each takes the head of the
 * answer; the security headers for data are always sent.
 *
 * Every JSON body ends with a newline; reals are rounded to 3 decimals
 * (reply_real) and printed with 15 significant digits, so a client sees
 * 58.824, never 58.82375594399997. */
#ifndef SG_REPLY_H
#define SG_REPLY_H

#include <stdbool.h>

#include <jansson.h>

/* V rounded to 3 decimals (null if not finite). */
json_t *reply_real(double v);
/* O as compact JSON (malloc'd), with a trailing newline if NEWLINE (an
 * SSE data line wants none). */
char *reply_dumps(const json_t *o, bool newline);

struct hconn;

/* Answer O (consumed; NULL, as json_pack returns for a value that is not
 * UTF-8, becomes a 500) with STATUS; EXTRA: more header lines or NULL. */
void reply_json(struct hconn *c, int status, json_t *o, const char *extra);
/* {"error": MSG, "status": STATUS} */
void reply_err(struct hconn *c, int status, const char *msg);
/* OpenAI's {"error":{"message","type","param","code"}}. */
void reply_openai_err(struct hconn *c, int status, const char *type, const char *code,
		      const char *msg, const char *extra);

#endif
