/* http.h - HTTP/1.1 connections on bufferevents, for both directions.
 *
 * The layer is three objects (h2o's split):
 *   http_conn.h    the connection core: ownership, output, flow control,
 *                  tunnel, memory budget (http_conn.c);
 *   http_server.h  the server side: requests in, responses out (http_server.c);
 *   http_client.h  the client side: requests out, responses in (http_client.c).
 * Parsing is http_parse.h's. This header includes them all, for callers
 * that use both sides. */
#ifndef SG_HTTP_H
#define SG_HTTP_H

#include "http_client.h"
#include "http_conn.h"
#include "http_parse.h"
#include "http_server.h"

#endif
