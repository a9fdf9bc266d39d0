/* http_server.h - the server side of HTTP/1.1: a client's connection.
 *
 * It reads requests and writes responses on an hconn (http_conn.h). The
 * next pipelined request is read only once the answers before it are
 * (nearly) written. A request that cannot be parsed, or that is too big or
 * too slow, is answered by the layer itself (400, 405, 408, 413, 431, 505;
 * OpenAI-shaped under the OpenAI prefix: http_set_openai_prefix) and the
 * connection closes. */
#ifndef SG_HTTP_SERVER_H
#define SG_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "http_conn.h"

/* Limits and timeouts of server-side connections (seconds, bytes). */
struct http_limits {
	int max_header;
	long long max_body;
	int header_timeout, body_timeout, keepalive_timeout, send_timeout;
};

/* Wrap an accepted socket. LIM is read per request (it may change on
 * reload) and must outlive the connection. */
struct hconn *http_accept(int fd, const struct http_limits *lim, const struct hconn_ops *ops,
			  void *owner);

/* Start a response. extra: preformatted "Name: value\r\n" lines or NULL.
 * clen < 0: unknown length (chunked to HTTP/1.1 clients, else until close).
 * Its body goes out with http_send, and http_finish ends it. */
void http_respond(struct hconn *c, int status, const char *extra, long long clen);
/* The same with EXTRA's length given (EXTRA need not end in NUL). */
void http_respond_n(struct hconn *c, int status, const char *extra, size_t extralen,
		    long long clen);
/* A whole small response with a body. */
void http_reply(struct hconn *c, int status, const char *ctype, const char *extra,
		const char *body, size_t len);
/* The gateway's own error answer (http_error.c), in the shape the
 * request's client reads: for a target under the OpenAI prefix OpenAI's
 * {"error":{"message","type","param":null,"code"}} (type and code follow
 * STATUS), else {"error": MSG, "status": STATUS}. */
void http_reply_error(struct hconn *c, int status, const char *extra, const char *msg);
/* Errors for targets at or under PREFIX ("/v1": that path, or one that
 * goes on with '/', '?' or '#'; a static string) are OpenAI-shaped, from
 * the layer itself (400, 405, 408, 413, 431, 505) and from whoever calls
 * http_reply_error. NULL (the default): none. */
void http_set_openai_prefix(const char *prefix);
/* Is the target of C's current request (as far as it was read; absolute
 * form too) under the OpenAI prefix? Decided on the raw target: the layer's
 * errors come before any normalisation. */
bool http_openai_target(struct hconn *c);
bool http_response_started(struct hconn *c);
/* The response started announced a Content-Length (its body may not grow:
 * bytes past it never go out, and one finished short closes the connection). */
bool http_response_sized(struct hconn *c);
/* Take back a response whose first byte has not reached the socket yet
 * (its head and body were only composed): true if it is gone and another
 * response may be started instead, false if it is too late. */
bool http_response_retract(struct hconn *c);
/* Force "Connection: close" on the current response. */
void http_set_close(struct hconn *c);
/* The client asked for HEAD (so no body goes out). */
bool http_is_head(struct hconn *c);

const char *http_status_text(int status);

/* Headers on everything the gateway answers itself: its pages, its JSON
 * answers and errors, its event streams, and the HTTP layer's own errors
 * (400, 408, 413, 431, 505). */
#define SG_SEC_HEADERS                                                                    \
	"X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n"                     \
	"Referrer-Policy: no-referrer\r\n"
/* ... for JSON and other non-HTML answers */
#define SG_SEC_HEADERS_DATA                                                               \
	SG_SEC_HEADERS "Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n"
/* ... for the gateway's HTML pages (inline script and style, same-origin fetches) */
#define SG_SEC_HEADERS_PAGE                                                               \
	SG_SEC_HEADERS                                                                     \
	"Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "        \
	"style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "            \
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'\r\n"

#endif
