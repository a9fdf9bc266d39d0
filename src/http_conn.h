/* http_conn.h - the HTTP/1.1 connection core, common to both directions.
 *
 * An hconn is one TCP connection: the server side of a client's connection
 * (http_server.h: it parses requests) or the client side of an upstream
 * connection (http_client.h: it parses responses). Parsing is
 * http_parse.c's (socket-free, strict); heads are collected into an
 * http_msg that stays valid until the message is done, bodies are streamed
 * to the owner as they arrive.
 *
 * Ownership: the owner gets every event through its hconn_ops. closed() is
 * called exactly once; the hconn is freed right after it returns (or, if
 * the hconn is inside one of its own callbacks, when that returns). The
 * owner must drop every pointer to it in closed().
 *
 * Output is composed in a side buffer and written once per loop iteration,
 * after all I/O callbacks ran (one writev for a head and body that are
 * ready together, and no epoll_ctl when the socket takes it all). */
#ifndef SG_HTTP_CONN_H
#define SG_HTTP_CONN_H

#include <stdbool.h>
#include <stddef.h>

#include "http_parse.h"

struct gw;
struct evbuffer;
struct hconn;

/* One exchange on a server-side connection, as the access log sees it. */
struct http_xfer {
	int status;                 /* 0: no response was started */
	unsigned long long bytes;   /* body bytes sent */
	double t_start, t_head, t_end;   /* monotonic s: request begun, response head, end */
	bool complete;              /* the response was finished (else the connection ended) */
};

struct hconn_ops {
	void (*head)(struct hconn *c, struct http_msg *m);
	void (*body)(struct hconn *c, const char *p, size_t n);
	void (*done)(struct hconn *c);                  /* message complete */
	void (*closed)(struct hconn *c, const char *why);
	void (*drained)(struct hconn *c);               /* output fell to the low mark (if asked) */
	void (*connected)(struct hconn *c);             /* client side */
	/* server side: the response to request M is complete, or the connection
	 * ended first (before closed()); once per request head */
	void (*finished)(struct hconn *c, const struct http_msg *m, const struct http_xfer *x);
};

/* Prepare the module for G's event base (gw.h; output flushing once per
 * loop iteration). */
void http_init(struct gw *g);

void *http_owner(struct hconn *c);
/* Where the layer's own answers (400, 408, 413, 431, ...: the connection's
 * owner already detached) are reported once sent, with the request line
 * if its head was parsed, else method "-" (the access log; NULL: nowhere). */
void http_set_layer_log(void (*fn)(struct hconn *c, const struct http_msg *m,
				   const struct http_xfer *x));
void http_set_owner(struct hconn *c, const struct hconn_ops *ops, void *owner);
const char *http_peer(struct hconn *c);   /* "1.2.3.4" (server side) */

/* Close now; closed(why) is called. Never touch c afterwards. */
void http_close(struct hconn *c, const char *why);

/* --- the current outgoing message (a response or a request) --- */
/* Send body bytes of the current message (chunk-encoded if needed). */
void http_send(struct hconn *c, const void *p, size_t n);
/* End the current outgoing message. On the server side the next request on
 * the connection is then read. */
void http_finish(struct hconn *c);

/* --- flow control --- */
size_t http_pending_output(struct hconn *c);
/* Stop / resume reading input (backpressure). A hang-up is still seen. */
void http_pause(struct hconn *c, bool pause);
/* Ask for one drained() call when pending output falls to the low mark. */
void http_want_drain(struct hconn *c);
/* Join two connections after an upgrade (101): bytes flow both ways raw,
 * with backpressure, until either side closes (then both close) or no byte
 * went either way for IDLE_S seconds (0: no limit). ENDED(ARG) is called
 * once, when the first of the two closes (maybe before this returns). */
void http_tunnel(struct hconn *a, struct hconn *b, int idle_s, void (*ended)(void *arg),
		 void *arg);

/* Connections open now: server side (clients) or client side (upstreams). */
size_t http_count(bool server_side);

/* --- the memory budget --- */
/* Count EVBUFFER's bytes in the total (http_buffered); untrack it before
 * freeing it (its bytes leave the total). Connections' own buffers are
 * tracked. */
void http_buffer_track(struct evbuffer *b);
void http_buffer_untrack(struct evbuffer *b);
/* N bytes the owner keeps for C's current request outside C's own buffers
 * (a /v1 body read before routing; track that buffer too): they count in
 * C's share, so C stops reading like any connection holding much. */
void http_set_owned(struct hconn *c, size_t n);
/* Bytes held in tracked buffers now. */
size_t http_buffered(void);
/* Past CAP bytes, client connections holding more than 64 KiB each stop
 * reading until the total falls below 7/8 of CAP. */
void http_set_buffer_cap(size_t cap);
size_t http_buffer_cap(void);

#define HTTP_HIGH_MARK (256 * 1024)
#define HTTP_LOW_MARK (32 * 1024)

/* C's output holds enough: what feeds it (an answer, a body, a tunnel)
 * pauses and asks to hear when C has drained (http_want_drain). At the
 * high mark; past the budget's cap already at the low mark, so that what
 * services send to clients that do not read stays within the budget too. */
bool http_out_full(struct hconn *c);

#endif
