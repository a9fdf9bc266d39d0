/* http_server.c - the server side of HTTP/1.1: requests in, responses out.
 *
 * A client's connection reads one request at a time: its header, body and
 * keep-alive timers follow the request's phase, and the next pipelined
 * request is read only once the answer before it is finished and (nearly)
 * written. A request the layer cannot take (bad syntax, too big, too slow)
 * gets the most specific status from the layer itself, then the connection
 * closes, lingering a little if the client is still sending. The
 * connection core is http_conn.c's. */
#include "http_conn_impl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/util.h>
#include <http_parser.h>

#include "log.h"
#include "util.h"

static void next_transaction(struct hconn *c);
static void reply_and_close(struct hconn *c, int status, const char *msg);

/* The last answer is composed: close once it is written (a tunnel drains). */
static void start_closing(struct hconn *c)
{
	if (c->state == HC_OPEN)
		hc_set_state(c, HC_CLOSING, "last answer composed");
	else if (c->state == HC_TUNNEL)
		hc_set_state(c, HC_TUNNEL_DRAIN, "last answer composed");
	hc_mark_dirty(c);
}

/* --- parser callbacks --- */

static void srv_begin(void *arg)
{
	struct hconn *c = arg;

	/* limits are shared and may change on reload: take them per message */
	hparse_limits(&c->hp, (size_t)c->lim->max_header, c->lim->max_body);
	c->xf = (struct http_xfer){.t_start = now_s()};
	c->phase = PH_HEAD;
	hc_timer_set(c, c->lim->header_timeout);
}

static int srv_head(void *arg, struct http_msg *m)
{
	struct hconn *c = arg;

	c->head_req = m->method == HTTP_HEAD;
	c->upgrade_req = m->upgrade;
	c->xf_open = true;
	c->phase = (m->chunked || m->content_length > 0) ? PH_BODY : PH_WAIT;
	hc_timer_set(c, c->phase == PH_BODY ? c->lim->body_timeout : 0);
	if (c->ops && c->ops->head)
		c->ops->head(c, m);
	if (m->expect_continue && !c->resp_started && !hc_dead(c) && c->phase == PH_BODY &&
	    m->minor >= 1)
		hc_out_add(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
	if (hc_dead(c))
		hparse_pause(&c->hp, true);
	return 0;   /* a request's body is framed by its head alone */
}

static void srv_body(void *arg, const char *p, size_t n)
{
	struct hconn *c = arg;

	hc_timer_set(c, c->lim->body_timeout);
	if (c->ops && c->ops->body)
		c->ops->body(c, p, n);
	if (hc_dead(c))
		hparse_pause(&c->hp, true);
}

static void srv_done(void *arg)
{
	struct hconn *c = arg;

	c->msg_complete = true;
	c->phase = PH_WAIT;
	hc_timer_set(c, 0);
	if (c->ops && c->ops->done)
		c->ops->done(c);
	if (hc_dead(c)) {
		hparse_pause(&c->hp, true);
		return;
	}
	if (hc_tunnel(c))
		return;
	if (!c->msg_complete)
		return;   /* answered inside done(): next_transaction() ran already */
	if (c->resp_done && !c->close_after) {
		next_transaction(c);
		return;
	}
	/* wait for the response */
	c->pause_mask |= PAUSE_PIPELINE;
	hc_sync_pause(c);
}

static const struct hparse_ops srv_hp_ops = {
	.begin = srv_begin,
	.head = srv_head,
	.body = srv_body,
	.done = srv_done,
};

/* --- pipelining --- */

static void resume_pipeline(struct hconn *c)
{
	if (http_pending_output(c) > PIPELINE_OUT_MAX) {
		c->wait_flush = true;
		hc_timer_set(c, 0);   /* the send timeout watches a client that does not read */
		hc_sync_pause(c);
		return;
	}
	c->wait_flush = false;
	hc_timer_set(c, c->lim->keepalive_timeout);
	c->pause_mask &= ~PAUSE_PIPELINE;
	hc_sync_pause(c);
	if (evbuffer_get_length(c->in) > 0) {
		c->need_process = true;
		hc_mark_dirty(c);
	}
}

static void next_transaction(struct hconn *c)
{
	c->msg_complete = false;
	c->resp_started = c->resp_done = false;
	c->out_chunked = c->out_nobody = c->head_req = c->upgrade_req = c->out_sized = false;
	c->resp_sent = false;
	c->phase = PH_IDLE;
	c->pause_mask |= PAUSE_PIPELINE;
	resume_pipeline(c);
}

/* --- the side's hooks --- */

/* Output fell low: the next request may be read if it waited for that. */
static bool srv_flushed(struct hconn *c)
{
	if (!c->wait_flush || http_pending_output(c) > PIPELINE_OUT_MAX)
		return false;
	resume_pipeline(c);
	return true;
}

/* The answer is out. Unread request bytes would turn our close into a
 * reset that destroys the response in flight: read and drop them a while. */
static bool srv_linger(struct hconn *c)
{
	if (!(c->phase == PH_HEAD || c->phase == PH_BODY || evbuffer_get_length(c->in) > 0))
		return false;
	hc_set_state(c, HC_LINGERING, "the client still sends");
	shutdown(c->fd, SHUT_WR);
	c->pause_mask = 0;
	hc_rd_update(c);
	hc_timer_set(c, 2);
	return true;
}

/* A request we cannot parse: answer with the most specific status. */
static void srv_parse_error(struct hconn *c)
{
	const char *why;
	int status = hparse_error(&c->hp, &why);

	reply_and_close(c, status, why);
}

static void srv_eof(struct hconn *c)
{
	http_close(c, "client closed the connection");
}

static void srv_timeout(struct hconn *c)
{
	if (c->phase == PH_HEAD || c->phase == PH_BODY) {
		if (!c->resp_started) {
			char msg[100];
			bool head = c->phase == PH_HEAD;
			snprintf(msg, sizeof msg, "timed out reading the request %s (%s: %d s)",
				 head ? "head" : "body", head ? "header_timeout" : "body_timeout",
				 head ? c->lim->header_timeout : c->lim->body_timeout);
			reply_and_close(c, 408, msg);
		} else
			http_close(c, "client timed out");
	} else {
		http_close(c, "keep-alive timeout");
	}
}

static void srv_paused(struct hconn *c, bool pause)
{
	/* we stopped reading: the client is not late */
	if (c->phase == PH_BODY)
		hc_timer_set(c, pause ? 0 : c->lim->body_timeout);
}

/* The response is complete: close, or read the next request. */
static void srv_finish(struct hconn *c)
{
	c->resp_done = true;
	hc_xfer_end(c, c->ops, true);
	if (hc_dead(c))
		return;
	if (c->close_after)
		start_closing(c);
	else if (c->msg_complete)
		next_transaction(c);
}

static const struct hconn_side server_side = {
	.name = "client",
	.requests = true,
	.budgeted = true,
	.hp_ops = &srv_hp_ops,
	.hangup = "client closed the connection",
	.conn_error = "client connection error",
	.send_timeout = "send timeout: the client does not read",
	.flushed = srv_flushed,
	.linger = srv_linger,
	.parse_error = srv_parse_error,
	.eof = srv_eof,
	.timeout = srv_timeout,
	.paused = srv_paused,
	.finish = srv_finish,
};

struct hconn *http_accept(int fd, const struct http_limits *lim, const struct hconn_ops *ops,
			  void *owner)
{
	struct hconn *c;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	int one = 1;

	evutil_make_socket_nonblocking(fd);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c = hc_new(fd, &server_side, HC_OPEN, ops, owner);
	c->lim = lim;
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->peer_addr,
				  sizeof c->peer_addr);
		else if (ss.ss_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->peer_addr,
				  sizeof c->peer_addr);
	}
	if (lim->send_timeout > 0) {
		struct timeval tv = {lim->send_timeout, 0};
		bufferevent_set_timeouts(c->bev, NULL, &tv);
	}
	c->phase = PH_IDLE;
	hc_timer_set(c, lim->header_timeout);
	hc_start_reading(c);
	return c;
}

/* --- responses --- */

static bool status_has_body(int status)
{
	return !(status < 200 || status == 204 || status == 304);
}

bool http_response_started(struct hconn *c)
{
	return c->resp_started;
}

bool http_response_sized(struct hconn *c)
{
	return c->out_sized;
}

bool http_response_retract(struct hconn *c)
{
	if (hc_dead(c) || !c->resp_started || c->resp_sent || c->resp_done)
		return false;
	/* drop what the response composed; what came before it stays */
	hc_out_truncate(c, c->resp_mark);
	c->resp_started = false;
	c->xf.bytes = 0;
	c->out_chunked = c->out_nobody = c->out_sized = false;
	return true;
}

void http_set_close(struct hconn *c)
{
	c->close_after = true;
}

bool http_is_head(struct hconn *c)
{
	return c->head_req;
}

/* Decimal digits of V (>= 0) at P; returns their count. */
static size_t put_dec(char *p, unsigned long long v)
{
	char tmp[24];
	size_t n = 0, k = 0;

	do
		tmp[n++] = (char)('0' + v % 10);
	while ((v /= 10) > 0);
	while (n > 0)
		p[k++] = tmp[--n];
	return k;
}

void http_respond_n(struct hconn *c, int status, const char *extra, size_t extralen,
		    long long clen)
{
	const struct http_msg *m = hparse_msg(&c->hp);
	bool http11 = m->major == 1 && m->minor >= 1;
	bool nobody = !status_has_body(status);
	const char *text, *framing = "", *end;
	char line[80], num[24];
	size_t tlen, llen, flen = 0, nlen = 0, elen;

	if (hc_dead(c) || c->resp_started)
		return;
	c->resp_started = true;
	c->resp_mark = hc_out_composed(c);
	c->xf.status = status;
	c->xf.t_head = now_s();
	/* Responding before the request body is read, to an upgrade that did not
	 * happen, or to a client that asked for it: this connection ends here. */
	if (!m->keep_alive || (!c->msg_complete && c->phase == PH_BODY) ||
	    (c->upgrade_req && status != 101) || hparse_upgraded(&c->hp))
		c->close_after = true;
	if (status == 101)
		c->close_after = false;
	/* the status line, without printf: "HTTP/1.1 NNN Text\r\n" */
	text = http_status_text(status);
	tlen = strlen(text);
	memcpy(line, "HTTP/1.1 ", 9);
	llen = 9 + put_dec(line + 9, (unsigned long long)(status < 0 ? 0 : status));
	line[llen++] = ' ';
	if (tlen > sizeof line - llen - 2)
		tlen = sizeof line - llen - 2;
	memcpy(line + llen, text, tlen);
	llen += tlen;
	line[llen++] = '\r';
	line[llen++] = '\n';
	c->out_nobody = nobody || c->head_req;
	if (nobody) {
		/* no framing */
	} else if (clen >= 0) {
		c->out_sized = !c->head_req;
		c->out_left = (unsigned long long)clen;
		framing = "Content-Length: ";
		flen = 16;
		nlen = put_dec(num, (unsigned long long)clen);
		num[nlen++] = '\r';
		num[nlen++] = '\n';
	} else if (c->head_req) {
		/* length unknown, and no body anyway */
	} else if (http11) {
		framing = "Transfer-Encoding: chunked\r\n";
		flen = 28;
		c->out_chunked = true;
	} else {
		c->close_after = true;
	}
	if (status == 101)
		end = "\r\n";
	else if (c->close_after)
		end = "Connection: close\r\n\r\n";
	else if (!http11)
		end = "Connection: keep-alive\r\n\r\n";
	else
		end = "\r\n";
	elen = strlen(end);
	{
		/* one piece for the output buffer: the head of a typical response */
		char head[2048];
		size_t total = llen + extralen + flen + nlen + elen, k = 0;

		if (total > sizeof head) {
			hc_out_add(c, line, llen);
			if (extralen)
				hc_out_add(c, extra, extralen);
			hc_out_add(c, framing, flen);
			hc_out_add(c, num, nlen);
			hc_out_add(c, end, elen);
			return;
		}
		memcpy(head + k, line, llen), k += llen;
		if (extralen)
			memcpy(head + k, extra, extralen), k += extralen;
		memcpy(head + k, framing, flen), k += flen;
		memcpy(head + k, num, nlen), k += nlen;
		memcpy(head + k, end, elen), k += elen;
		hc_out_add(c, head, k);
	}
}

void http_respond(struct hconn *c, int status, const char *extra, long long clen)
{
	http_respond_n(c, status, extra, extra ? strlen(extra) : 0, clen);
}

void http_reply(struct hconn *c, int status, const char *ctype, const char *extra,
		const char *body, size_t len)
{
	/* never cut short: a truncated header block would lose its last CRLF */
	char *hdr = xasprintf("Content-Type: %s\r\n%s", ctype, extra ? extra : "");

	http_respond(c, status, hdr, (long long)len);
	free(hdr);
	http_send(c, body, len);
	http_finish(c);
}

/* The layer's own answer to a bad request: reply (if nothing was sent yet),
 * detach the owner and close once flushed. */
static void reply_and_close(struct hconn *c, int status, const char *msg)
{
	const struct hconn_ops *ops = c->ops;

	log_info("client %s: %d %s", c->peer_addr, status, msg);
	/* the answer below is this exchange's, for the access log (layer_log) */
	c->layer_head = c->xf_open;
	c->layer_reply = !c->resp_started;
	c->xf_open = c->layer_reply;
	c->ops = NULL;
	if (ops && ops->closed)
		ops->closed(c, msg);
	if (hc_dead(c))
		return;
	if (!c->resp_started) {
		c->close_after = true;
		c->pause_mask |= PAUSE_PIPELINE;
		http_reply_error(c, status, SG_SEC_HEADERS_DATA, msg);
		start_closing(c);
	} else {
		http_close(c, msg);
	}
}

/* --- status texts --- */

const char *http_status_text(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 206: return "Partial Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 422: return "Unprocessable Content";
	case 429: return "Too Many Requests";
	case 505: return "HTTP Version Not Supported";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Unknown";
	}
}
