/* http_client.c - the client side of HTTP/1.1: requests out, responses in.
 *
 * An upstream connection connects, sends a request head (and streams its
 * body through http_send), and reads the response. A read timeout, when
 * set, is re-armed by every byte that moves either way. Between requests
 * a keep-alive pool parks the connection: then a hang-up, a stray byte or
 * the idle timer closes it. The connection core is http_conn.c's. */
#include "http_conn_impl.h"

#include <errno.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "util.h"

/* --- parser callbacks --- */

static int cli_head(void *arg, struct http_msg *m)
{
	struct hconn *c = arg;

	if (c->ops && c->ops->head)
		c->ops->head(c, m);
	if (hc_dead(c))
		hparse_pause(&c->hp, true);
	/* a response to HEAD has no body */
	return c->head_req ? 1 : 0;
}

static void cli_body(void *arg, const char *p, size_t n)
{
	struct hconn *c = arg;

	if (c->ops && c->ops->body)
		c->ops->body(c, p, n);
	if (hc_dead(c))
		hparse_pause(&c->hp, true);
}

static void cli_done(void *arg)
{
	struct hconn *c = arg;

	c->msg_complete = true;
	if (c->ops && c->ops->done)
		c->ops->done(c);
	if (hc_dead(c)) {
		hparse_pause(&c->hp, true);
		return;
	}
	if (hc_tunnel(c))
		return;
	/* wait for the next request */
	c->pause_mask |= PAUSE_PIPELINE;
	hc_sync_pause(c);
}

static const struct hparse_ops cli_hp_ops = {
	.head = cli_head,
	.body = cli_body,
	.done = cli_done,
};

/* --- the side's hooks --- */

/* Bytes moved: the service is alive, its read timeout starts again. */
static void cli_progress(struct hconn *c)
{
	if (c->state == HC_OPEN && c->timeout_s > 0)
		hc_timer_set(c, c->timeout_s);
}

static void cli_parse_error(struct hconn *c)
{
	const char *why;

	hparse_error(&c->hp, &why);
	http_close(c, why);
}

static void cli_eof(struct hconn *c)
{
	if (c->state != HC_PARKED && !c->msg_complete) {
		/* a response delimited by the close ends here */
		hparse_eof(&c->hp);
		http_close(c, c->msg_complete ? "closed" : "upstream closed the connection");
	} else {
		http_close(c, "upstream closed the connection");
	}
}

static void cli_timeout(struct hconn *c)
{
	http_close(c, c->state == HC_PARKED ? "idle upstream connection expired"
		   : c->state != HC_CONNECTING ? "upstream timeout: no data from the service"
					       : "upstream connect timeout");
}

static const struct hconn_side client_side = {
	.name = "upstream",
	.requests = false,
	.budgeted = false,
	.hp_ops = &cli_hp_ops,
	.hangup = "upstream closed the connection",
	.conn_error = "upstream connection error",
	.send_timeout = "upstream send timeout",
	.progress = cli_progress,
	.parse_error = cli_parse_error,
	.eof = cli_eof,
	.timeout = cli_timeout,
};

const char http_no_descriptors[] =
	"the gateway is out of file descriptors (see RLIMIT_NOFILE): cannot open a connection";
const char http_no_local_ports[] =
	"the gateway is out of local ports (every port of net.ipv4.ip_local_port_range is in use "
	"or waits in TIME_WAIT): cannot open a connection";

bool http_own_shortage(const char *why)
{
	return why == http_no_descriptors || why == http_no_local_ports;
}

struct hconn *http_connect(const struct sockaddr *sa, socklen_t len, int timeout_s,
			   const struct hconn_ops *ops, void *owner)
{
	struct hconn *c = hc_new(-1, &client_side, HC_CONNECTING, ops, owner);

	if (bufferevent_socket_connect(c->bev, (struct sockaddr *)sa, (int)len) != 0) {
		int e = errno;
		/* reported later, never from inside the caller. EADDRNOTAVAIL from
		 * an IPv4 connect() is the ephemeral ports running out; from IPv6
		 * it may also be a host without a source address for the peer */
		c->close_why = e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM
				       ? http_no_descriptors
			       : e == EADDRNOTAVAIL && sa->sa_family == AF_INET ? http_no_local_ports
										: "upstream connect failed";
		hc_mark_dirty(c);
		return c;
	}
	c->fd = bufferevent_getfd(c->bev);
	hc_timer_set(c, timeout_s);   /* reading starts once connected */
	return c;
}

void http_send_head(struct hconn *c, const char *head, size_t len, bool chunked, bool head_req)
{
	if (c->state == HC_PARKED)
		hc_set_state(c, HC_OPEN, "request sent");
	c->msg_complete = false;
	c->head_req = head_req;
	c->out_chunked = chunked;
	c->out_nobody = false;
	c->pause_mask &= ~PAUSE_PIPELINE;
	hc_sync_pause(c);
	hc_out_add(c, head, len);
}

void http_set_timeout(struct hconn *c, int timeout_s)
{
	c->timeout_s = timeout_s;
	if (c->state != HC_CONNECTING && !hc_dead(c))
		hc_timer_set(c, timeout_s);
}

bool http_reusable(struct hconn *c)
{
	/* bytes after the response are caught when parked (process_input) */
	const struct http_msg *m = hparse_msg(&c->hp);

	return !hc_dead(c) && c->state != HC_CONNECTING && c->msg_complete && m->keep_alive &&
	       !m->upgrade && !hparse_upgraded(&c->hp);
}

bool http_request_delivered(struct hconn *c)
{
	int unacked = 0;

	if (http_pending_output(c) > 0)
		return false;
	return ioctl(c->fd, SIOCOUTQ, &unacked) == 0 && unacked == 0;
}

const char *http_parked_stale(struct hconn *c)
{
	char b;
	ssize_t n;

	/* The event loop closes a parked connection that reads a byte or a
	 * hang-up; but those may have come in the same turn as the request
	 * that now takes it, and would be read as that request's answer */
	if (evbuffer_get_length(c->in) > 0)
		return "upstream sent bytes on an idle connection";
	do
		n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n > 0)
		return "upstream sent bytes on an idle connection";
	if (n == 0)
		return "upstream closed the connection";
	return errno == EAGAIN || errno == EWOULDBLOCK ? NULL : "upstream connection error";
}

void http_park(struct hconn *c, int idle_s)
{
	if (hc_dead(c))
		return;
	hc_set_state(c, HC_PARKED, "idle in a pool");
	c->timeout_s = 0;
	hc_timer_set(c, idle_s);
}
