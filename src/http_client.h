/* http_client.h - the client side of HTTP/1.1: a connection to an upstream.
 *
 * It writes requests and reads responses on an hconn (http_conn.h), and
 * can be parked idle between requests (a keep-alive pool keeps it). */
#ifndef SG_HTTP_CLIENT_H
#define SG_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "http_conn.h"

/* Connect to an upstream; connected() or closed() follows, never at once. */
struct hconn *http_connect(const struct sockaddr *sa, socklen_t len, int timeout_s,
			   const struct hconn_ops *ops, void *owner);
/* The reason closed() gets (this very pointer) when the gateway could not
 * open the connection for a shortage of its own (out of file descriptors,
 * RLIMIT_NOFILE, or of memory): no fault of the upstream's. */
extern const char http_no_descriptors[];
/* The same when the host has no local port left for it (EADDRNOTAVAIL:
 * net.ipv4.ip_local_port_range is all taken). */
extern const char http_no_local_ports[];
/* Is WHY one of the two above: a shortage of the gateway's own? */
bool http_own_shortage(const char *why);

/* Send a request head (raw bytes, ending in CRLF CRLF); chunked: the body
 * will be chunk-encoded by http_send. head_req: a HEAD request. */
void http_send_head(struct hconn *c, const char *head, size_t len, bool chunked, bool head_req);
/* Set or clear (0) the read timeout of a client conn. */
void http_set_timeout(struct hconn *c, int timeout_s);
/* Park a kept-alive client conn (set its owner first, with http_set_owner):
 * a hang-up, a stray byte or IDLE_S seconds close it, reported to closed(). */
void http_park(struct hconn *c, int idle_s);
/* The last response allows reuse of this client conn. */
bool http_reusable(struct hconn *c);
/* The whole request went out and the upstream's TCP acknowledged every
 * byte of it: false if some of it waits in our buffers or its socket's
 * send queue (the upstream answered before it took the whole body). */
bool http_request_delivered(struct hconn *c);
/* A parked conn about to be used again: NULL if the upstream sent nothing
 * since it was parked, else why it must be closed instead (bytes nobody
 * asked for, or a hang-up, not read yet by the event loop). */
const char *http_parked_stale(struct hconn *c);

#endif
