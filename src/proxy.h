/* proxy.h - one request through the gateway to a service instance.
 *
 * An exchange joins the client's connection (down) to an upstream
 * connection (up): it waits for a ready instance (held while the service
 * starts), forwards the request head and streams the body, relays the
 * response as it arrives, and reports completion to the instance once. */
#ifndef SG_PROXY_H
#define SG_PROXY_H

#include <stdbool.h>
#include <stddef.h>

struct accesslog_note;
struct exchange;
struct gw;
struct hconn;
struct http_msg;
struct service;

/* How to forward one request. */
struct proxy_opts {
	bool hold;          /* wait for a start (else 503 + Retry-After at once) */
	bool feedback;      /* the client takes SSE: answer the head at once and send
	                     * comments while the service starts */
	bool strip_auth;    /* drop Authorization (our api key, or the service did not
	                     * opt in with forward_authorization) */
	bool trust_forwarded; /* the client is a trusted proxy: append to its
	                       * X-Forwarded-For, pass its X-Forwarded-Proto/-Host;
	                       * else all three are replaced */
	struct accesslog_note *note; /* told the instance and the wait (while the
	                              * client is connected), or NULL */
	const char *key_id; /* the api key's id (usage.h key_id), or NULL: "-" */
	bool openai;        /* the gateway's own errors in OpenAI's shape
	                     * {"error":{"message","type","param","code"}} (/v1) */
	bool full_reasons;  /* the client may see the output a failed start's reason
	                     * quotes (auth_output_open), else it is cut */
};

/* Keep G (gw.h); apply its config's buffer cap and refusal logging. Again
 * after each reload. */
void proxy_init(struct gw *g);
/* Begin forwarding request M (head just parsed on DOWN) to SVC as
 * PATH (the upstream target, query included). *slot points at the
 * exchange while it lives and is set to NULL when it ends. */
void proxy_begin(struct hconn *down, const struct http_msg *m, struct service *svc,
		 const char *path, size_t plen, const struct proxy_opts *o, struct exchange **slot);
void proxy_body(struct exchange *ex, const char *p, size_t n);
void proxy_req_done(struct exchange *ex);
void proxy_down_drained(struct exchange *ex);
/* The client connection is gone: cancel everything. */
void proxy_down_closed(struct exchange *ex);
/* Exchanges alive now. */
size_t proxy_active(void);
/* Body bytes held now for requests whose service is not ready yet. */
size_t proxy_held_bytes(void);

#endif
