/* http_conn.c - the HTTP/1.1 connection core on bufferevents (both sides).
 *
 * Reading: the socket is read into the connection's input buffer; we feed
 * it to an hparse chunk by chunk and drain what was parsed. Parsing pauses
 * at the end of each message until the side lets it go on (a server's
 * response is finished: safe pipelining), and on backpressure. A paused
 * connection still sees a hang-up: EOF while we read, or an EV_CLOSED
 * watcher (EPOLLRDHUP) while we do not.
 *
 * Writing: output goes to a side buffer and the connection is put on a
 * dirty list. When the outermost callback returns, every dirty connection
 * is written straight to its socket if the bufferevent has nothing queued;
 * only a remainder is handed to the bufferevent. That is one writev for a
 * whole small response, and no epoll_ctl when the socket takes it all.
 *
 * Freeing: a closed connection goes to a graveyard freed at that same point,
 * so nothing is freed inside its own callback.
 *
 * Where the server side (http_server.c) and the client side (http_client.c)
 * differ, the core calls the hooks of the connection's struct hconn_side.
 * The memory budget is in http_budget.c, the raw tunnel in http_tunnel.c,
 * the connections' timers in http_timer.c. */
#include "http_conn_impl.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "gw.h"
#include "log.h"
#include "util.h"

TAILQ_HEAD(hconn_list, hconn);
static struct hconn_list dirty = TAILQ_HEAD_INITIALIZER(dirty);
static struct hconn_list grave = TAILQ_HEAD_INITIALIZER(grave);
static struct gw *gw;
static struct event *flush_ev;
static int depth;
static size_t n_open[2];   /* [true]: server side (it reads requests), [false]: client side */

static void flush_all(void);
static void process_input(struct hconn *c);
static void finalize_close(struct hconn *c);

/* --- states --- */

static const char *const state_names[HC_NSTATES] = {
	[HC_CONNECTING] = "connecting",
	[HC_OPEN] = "open",
	[HC_PARKED] = "parked",
	[HC_TUNNEL] = "tunnel",
	[HC_TUNNEL_DRAIN] = "tunnel-drain",
	[HC_CLOSING] = "closing",
	[HC_LINGERING] = "lingering",
	[HC_DEAD] = "dead",
};

/* The legal moves: legal[from] is a bit set of the states it may go to.
 * Any state may die; nothing leaves HC_DEAD. */
#define S(x) (1u << (x))
static const unsigned legal[HC_NSTATES] = {
	[HC_CONNECTING] = S(HC_OPEN) | S(HC_DEAD),
	[HC_OPEN] = S(HC_PARKED) | S(HC_TUNNEL) | S(HC_CLOSING) | S(HC_DEAD),
	[HC_PARKED] = S(HC_OPEN) | S(HC_TUNNEL) | S(HC_DEAD),
	[HC_TUNNEL] = S(HC_TUNNEL_DRAIN) | S(HC_DEAD),
	[HC_TUNNEL_DRAIN] = S(HC_DEAD),
	[HC_CLOSING] = S(HC_LINGERING) | S(HC_DEAD),
	[HC_LINGERING] = S(HC_DEAD),
	[HC_DEAD] = 0,
};
#undef S

void hc_set_state(struct hconn *c, enum hc_state state, const char *why)
{
	if (c->state == state)
		return;
	if (!(legal[c->state] & (1u << state)))
		fatal("%s connection %p: illegal state move %s -> %s (%s)", c->side->name, (void *)c,
		      state_names[c->state], state_names[state], why);
	log_debug("%s connection %p: %s -> %s (%s)", c->side->name, (void *)c,
		  state_names[c->state], state_names[state], why);
	c->state = state;
}

/* --- output --- */

/* Every callback from libevent into the layer is bracketed by
 * hc_enter/hc_leave; leaving the outermost one flushes output and frees the
 * dead. */
void hc_enter(void)
{
	depth++;
}

void hc_leave(void)
{
	if (--depth == 0)
		flush_all();
}

void hc_mark_dirty(struct hconn *c)
{
	if (!c->dirty && !hc_dead(c)) {
		c->dirty = true;
		TAILQ_INSERT_TAIL(&dirty, c, dirty_link);
	}
	if (depth == 0)
		event_active(flush_ev, EV_TIMEOUT, 0);
}

size_t http_pending_output(struct hconn *c)
{
	return c->wn + evbuffer_get_length(bufferevent_get_output(c->bev));
}

/* Closing, lingering or draining a tunnel: ends once output is out. */
static bool closing(const struct hconn *c)
{
	return c->state == HC_CLOSING || c->state == HC_LINGERING || c->state == HC_TUNNEL_DRAIN;
}

/* Write what a connection has composed; hand any remainder to the bufferevent. */
static void flush_one(struct hconn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	bool connected = c->state != HC_CONNECTING;

	if (hc_dead(c))
		return;
	if (c->wn > 0) {
		size_t done = 0;

		if (connected && evbuffer_get_length(out) == 0) {
			ssize_t k;

			do
				k = send(c->fd, c->w, c->wn, MSG_NOSIGNAL);
			while (k < 0 && errno == EINTR);
			if (k > 0) {
				done = (size_t)k;
				if (c->side->progress)
					c->side->progress(c);   /* upload progress: the service is reading */
			}
		}
		/* the rest waits in the bufferevent; errors surface through it */
		if (done < c->wn)
			evbuffer_add(out, c->w + done, c->wn - done);
		hc_out_release(c);
		if (c->resp_started)
			c->resp_sent = true;
	}
	c->resp_mark = 0;
	if (closing(c) && evbuffer_get_length(out) == 0 && connected)
		finalize_close(c);
	else if (c->side->flushed && c->side->flushed(c))
		;   /* the side resumed its pipeline */
	else if (c->want_drain && http_pending_output(c) <= HTTP_LOW_MARK) {
		c->want_drain = false;
		if (c->ops && c->ops->drained)
			c->ops->drained(c);
	}
}

static void hconn_free(struct hconn *c)
{
	n_open[c->side->requests]--;
	http_buffer_untrack(c->in);
	http_buffer_untrack(bufferevent_get_output(c->bev));
	bufferevent_free(c->bev);   /* closes the fd */
	event_free(c->timer);
	if (c->closed_ev)
		event_free(c->closed_ev);
	if (c->rev)
		event_free(c->rev);
	evbuffer_free(c->in);
	hc_out_release(c);
	hparse_free(&c->hp);
	free(c);
}

static void flush_all(void)
{
	struct hconn *c;

	depth++;
	while ((c = TAILQ_FIRST(&dirty)) != NULL) {
		TAILQ_REMOVE(&dirty, c, dirty_link);
		c->dirty = false;
		if (c->close_why != NULL && !hc_dead(c)) {
			/* a close that had to wait (failed connect) */
			const char *why = c->close_why;
			c->close_why = NULL;
			http_close(c, why);
			continue;
		}
		if (c->need_process) {
			c->need_process = false;
			process_input(c);
		}
		flush_one(c);
	}
	depth--;
	while ((c = TAILQ_FIRST(&grave)) != NULL) {
		TAILQ_REMOVE(&grave, c, dirty_link);
		hconn_free(c);
	}
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what, (void)arg;
	flush_all();
}

void http_init(struct gw *g)
{
	gw = g;
	hc_timers_init(g->base);
	flush_ev = event_new(g->base, -1, 0, flush_cb, NULL);
	hc_budget_init(g->base);
}

/* --- closing --- */

/* The current exchange is over: tell the owner (the access log) once. */
static void (*layer_log)(struct hconn *c, const struct http_msg *m, const struct http_xfer *x);

void http_set_layer_log(void (*fn)(struct hconn *c, const struct http_msg *m,
				   const struct http_xfer *x))
{
	layer_log = fn;
}

void hc_xfer_end(struct hconn *c, const struct hconn_ops *ops, bool complete)
{
	if (!c->xf_open)
		return;
	c->xf_open = false;
	c->xf.t_end = now_s();
	c->xf.complete = complete;
	if (ops && ops->finished) {
		ops->finished(c, hparse_msg(&c->hp), &c->xf);
	} else if (c->layer_reply && layer_log) {
		/* before its head is parsed, the parser's message is a previous one's */
		static const struct http_msg blank = {.method_str = "-", .major = 1, .minor = 1};
		c->layer_reply = false;
		layer_log(c, c->layer_head ? hparse_msg(&c->hp) : &blank, &c->xf);
	}
}

/* The end of a connection: tell the owner once, then free it soon. */
void http_close(struct hconn *c, const char *why)
{
	const struct hconn_ops *ops = c->ops;
	bool was_tunnel = hc_tunnel(c);

	if (hc_dead(c))
		return;
	hc_xfer_end(c, ops, false);
	hc_set_state(c, HC_DEAD, why);
	c->ops = NULL;
	bufferevent_disable(c->bev, EV_READ | EV_WRITE);
	if (c->rev)
		event_del(c->rev);
	bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
	event_del(c->timer);
	c->armed_ms = c->deadline_ms = 0;
	if (c->closed_ev)
		event_del(c->closed_ev);
	if (c->dirty) {
		TAILQ_REMOVE(&dirty, c, dirty_link);
		c->dirty = false;
	}
	hc_budget_forget(c);
	TAILQ_INSERT_TAIL(&grave, c, dirty_link);
	if (depth == 0)
		event_active(flush_ev, EV_TIMEOUT, 0);
	if (was_tunnel && c->peer) {
		struct hconn *p = c->peer;
		c->peer = NULL;
		p->peer = NULL;
		/* let the partner send what it still holds, then close */
		if (p->state == HC_TUNNEL)
			hc_set_state(p, HC_TUNNEL_DRAIN, "tunnel partner closed");
		hc_mark_dirty(p);
	}
	if (ops && ops->closed)
		ops->closed(c, why);
}

/* Output is flushed: close, unless the side lingers a little (a server
 * whose client still sends). */
static void finalize_close(struct hconn *c)
{
	if (c->state == HC_CLOSING && c->side->linger && c->side->linger(c))
		return;
	http_close(c, c->state == HC_LINGERING ? "closed after error" : "closed");
}

/* --- input --- */

void hc_sync_pause(struct hconn *c)
{
	hparse_pause(&c->hp, c->pause_mask != 0);
}

/* After N parsed bytes left c->in with what was not parsed: false if the
 * parse stops here (the connection died, was upgraded, parked with bytes
 * left, or the input is bad). */
static bool parsed(struct hconn *c, size_t n)
{
	if (hc_dead(c))
		return false;
	if (hc_tunnel(c)) {
		/* upgraded inside this parse: what follows the head is raw */
		hc_tunnel_move(c);
		return false;
	}
	if (c->state == HC_PARKED && evbuffer_get_length(c->in) > 0) {
		http_close(c, "upstream sent bytes after its response");
		return false;
	}
	if (hparse_error(&c->hp, NULL) != 0) {
		c->side->parse_error(c);
		return false;
	}
	return n > 0;
}

static bool may_parse(struct hconn *c)
{
	return !hc_dead(c) && c->pause_mask == 0 && !hparse_upgraded(&c->hp);
}

/* Parse what c->in holds (and DIRECT..+NDIRECT, bytes just read that
 * come after it, if not NULL: those are parsed where they are, without a
 * trip through the buffer; what the parse leaves goes to c->in). */
static void process_bytes(struct hconn *c, const char *direct, size_t ndirect)
{
	struct evbuffer *in = c->in;

	if (c->in_parse || hc_dead(c) || hc_tunnel(c) || closing(c)) {
		if (direct)
			evbuffer_add(in, direct, ndirect);
		return;
	}
	c->in_parse = true;
	if (direct && evbuffer_get_length(in) > 0) {
		evbuffer_add(in, direct, ndirect);
		direct = NULL;
	}
	if (direct && may_parse(c)) {
		size_t n;

		hc_sync_pause(c);
		n = hparse_feed(&c->hp, direct, ndirect);
		if (!hc_dead(c) && n < ndirect)
			evbuffer_add(in, direct + n, ndirect - n);
		direct = NULL;
		if (!parsed(c, n))
			goto out;
	} else if (direct) {
		evbuffer_add(in, direct, ndirect);
	}
	while (may_parse(c)) {
		struct evbuffer_iovec v;
		size_t n;

		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
			break;
		hc_sync_pause(c);
		n = hparse_feed(&c->hp, v.iov_base, v.iov_len);
		if (hc_dead(c))
			break;
		evbuffer_drain(in, n);
		if (!parsed(c, n))
			break;
	}
out:
	c->in_parse = false;
	if (!hc_dead(c))
		hc_rd_update(c);
}

static void process_input(struct hconn *c)
{
	process_bytes(c, NULL, 0);
}

static void on_eof(struct hconn *c);

/* Bytes arrived (in c->in, and DIRECT..+N if not NULL: bytes read after
 * them that are not in c->in): hand them to whoever reads this connection. */
static void on_readable(struct hconn *c, const char *direct, size_t n)
{
	if (closing(c)) {
		evbuffer_drain(c->in, evbuffer_get_length(c->in));
	} else if (hc_tunnel(c)) {
		if (direct)
			evbuffer_add(c->in, direct, n);
		hc_tunnel_move(c);
	} else if (c->state == HC_PARKED) {
		http_close(c, "upstream sent bytes on an idle connection");
	} else {
		if (c->side->progress)
			c->side->progress(c);
		process_bytes(c, direct, n);
	}
}

/* The socket is readable. We read it ourselves rather than through the
 * bufferevent: libevent's evbuffer_read asks FIONREAD first, an ioctl per
 * read that nginx does not pay (measured: 28.4 -> 24.9 us of CPU per
 * proxied request without it). Writes still go through the bufferevent.
 *
 * With nothing buffered, the first read goes to a scratch buffer and is
 * parsed there: a whole small message then costs no buffer chain (a 16 KB
 * malloc and free per read) and no copy; only what the parse leaves is
 * kept in c->in. The scratch buffer holds nothing between callbacks. */
static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	static char scratch[16384];
	struct hconn *c = arg;
	bool eof = false, got = false;
	const char *direct = NULL;
	size_t ndirect = 0;
	int err = 0;

	(void)what;
	hc_enter();
	if (evbuffer_get_length(c->in) == 0) {
		ssize_t n = recv(fd, scratch, sizeof scratch, 0);

		if (n > 0 && (size_t)n < sizeof scratch) {
			direct = scratch;
			ndirect = (size_t)n;
			got = true;
			goto read_done;
		}
		if (n > 0) {
			/* a full scratch buffer: more may wait, read it into c->in */
			evbuffer_add(c->in, scratch, (size_t)n);
			got = true;
		} else {
			if (n == 0)
				eof = true;
			else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				err = errno;
			goto read_done;
		}
	}
	for (int round = 0; round < 4; round++) {
		struct evbuffer_iovec v;
		ssize_t n;

		if (evbuffer_reserve_space(c->in, 16384, &v, 1) < 1)
			break;
		n = recv(fd, v.iov_base, v.iov_len, 0);
		if (n > 0) {
			size_t want = v.iov_len;
			v.iov_len = (size_t)n;
			evbuffer_commit_space(c->in, &v, 1);
			got = true;
			if ((size_t)n < want)
				break;
			continue;
		}
		if (n == 0)
			eof = true;
		else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			err = errno;
		break;
	}
read_done:
	if (got)
		on_readable(c, direct, ndirect);
	if (!hc_dead(c) && err) {
		char why[160];
		snprintf(why, sizeof why, "%s: %s", c->side->conn_error, strerror(err));
		http_close(c, why);
	} else if (!hc_dead(c) && eof) {
		on_eof(c);
	}
	if (!hc_dead(c))
		hc_rd_update(c);
	hc_leave();
}

static void writecb(struct bufferevent *bev, void *arg)
{
	struct hconn *c = arg;

	(void)bev;
	hc_enter();
	if (c->state != HC_CONNECTING && c->side->progress)
		c->side->progress(c);   /* upload progress: the service is reading */
	if (!c->dirty)
		flush_one(c);
	hc_leave();
}

void hc_start_reading(struct hconn *c)
{
	c->rev = event_new(gw->base, c->fd, EV_READ | EV_PERSIST, read_cb, c);
	hc_rd_update(c);
}

static void eventcb(struct bufferevent *bev, short what, void *arg)
{
	struct hconn *c = arg;
	char why[160];

	(void)bev;
	hc_enter();
	if (what & BEV_EVENT_CONNECTED) {
		int one = 1;
		hc_set_state(c, HC_OPEN, "connected");
		setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		hc_timer_set(c, 0);
		hc_start_reading(c);
		if (c->ops && c->ops->connected)
			c->ops->connected(c);
		if (!hc_dead(c))
			hc_mark_dirty(c);
	} else if (what & BEV_EVENT_EOF) {
		on_eof(c);
	} else if (what & BEV_EVENT_TIMEOUT) {
		http_close(c, c->side->send_timeout);
	} else if (what & BEV_EVENT_ERROR) {
		int e = EVUTIL_SOCKET_ERROR();
		snprintf(why, sizeof why, "%s: %s",
			 c->state != HC_CONNECTING ? c->side->conn_error : "upstream connect failed",
			 evutil_socket_error_to_string(e));
		/* A service that answered early (a 413 to an upload it will not
		 * read) and closed makes our write fail: its answer may wait
		 * unread in the socket. Take it first; the read ends the
		 * connection too once the socket has nothing more. */
		if (c->state == HC_OPEN && !c->side->requests && c->rev != NULL)
			read_cb(c->fd, EV_READ, c);
		if (!hc_dead(c))
			http_close(c, why);
	}
	hc_leave();
}

/* The peer closed its side. */
static void on_eof(struct hconn *c)
{
	if (c->state == HC_LINGERING || hc_tunnel(c))
		http_close(c, "closed");
	else
		c->side->eof(c);
}

/* EPOLLRDHUP on a connection we are not reading: the peer hung up. */
static void closed_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hconn *c = arg;

	(void)fd, (void)what;
	hc_enter();
	http_close(c, c->side->hangup);
	hc_leave();
}

struct hconn *hc_new(int fd, const struct hconn_side *side, enum hc_state state,
		     const struct hconn_ops *ops, void *owner)
{
	struct hconn *c = xcalloc(1, sizeof *c);

	c->fd = fd;
	c->state = state;
	c->side = side;
	c->ops = ops;
	c->owner = owner;
	c->bev = bufferevent_socket_new(gw->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL)
		fatal("bufferevent_socket_new failed");
	bufferevent_setcb(c->bev, NULL, writecb, eventcb, c);
	c->in = evbuffer_new();
	http_buffer_track(c->in);
	http_buffer_track(bufferevent_get_output(c->bev));
	bufferevent_setwatermark(c->bev, EV_WRITE, HTTP_LOW_MARK, 0);
	hc_timer_new(c, gw->base);
	hparse_init(&c->hp, side->requests, side->hp_ops, c);
	n_open[side->requests]++;
	return c;
}

void *http_owner(struct hconn *c)
{
	return c->owner;
}

void http_set_owner(struct hconn *c, const struct hconn_ops *ops, void *owner)
{
	c->ops = ops;
	c->owner = owner;
}

const char *http_peer(struct hconn *c)
{
	return c->peer_addr;
}

/* --- the current outgoing message --- */

void http_send(struct hconn *c, const void *p, size_t n)
{
	if (hc_dead(c) || n == 0 || c->out_nobody)
		return;
	if (c->out_sized) {
		/* never past the announced length: the client would take the
		 * rest for the next response; the cut ends the connection */
		if ((unsigned long long)n > c->out_left) {
			n = (size_t)c->out_left;
			c->close_after = true;
		}
		c->out_left -= n;
		if (n == 0)
			return;
	}
	c->xf.bytes += n;
	if (c->out_chunked) {
		hc_out_printf(c, "%zx\r\n", n);
		hc_out_add(c, p, n);
		hc_out_add(c, "\r\n", 2);
	} else {
		hc_out_add(c, p, n);
	}
}

void http_finish(struct hconn *c)
{
	if (hc_dead(c))
		return;
	if (c->out_chunked && !c->out_nobody)
		hc_out_add(c, "0\r\n\r\n", 5);
	if (c->out_sized && c->out_left > 0)
		c->close_after = true;   /* cut short: only the close tells the client */
	c->out_chunked = c->out_sized = false;
	if (c->side->finish)
		c->side->finish(c);
}

/* --- flow control --- */

#define INPUT_MAX (1024 * 1024)

/* Read the socket unless backpressure says no, or unparsed input piles up
 * (a pipelining client). While not reading, an EV_CLOSED watcher
 * (EPOLLRDHUP) still sees the peer hang up. */
void hc_rd_update(struct hconn *c)
{
	bool lingering = c->state == HC_LINGERING;
	bool over = c->side->budgeted && !hc_dead(c) && !lingering && hc_budget_over(c);
	bool want = !hc_dead(c) && c->rev != NULL && !(c->pause_mask & PAUSE_FLOW) && !over &&
		    (lingering || evbuffer_get_length(c->in) < INPUT_MAX);

	if (over && !c->budget_wait)
		hc_budget_wait(c);
	if (want == c->rd_on || c->rev == NULL)
		return;
	c->rd_on = want;
	if (want) {
		event_add(c->rev, NULL);
		if (c->closed_ev)
			event_del(c->closed_ev);
	} else {
		event_del(c->rev);
		if (c->closed_ev == NULL)
			c->closed_ev = event_new(gw->base, c->fd, EV_CLOSED | EV_PERSIST, closed_cb, c);
		event_add(c->closed_ev, NULL);
	}
}

void http_pause(struct hconn *c, bool pause)
{
	if (hc_dead(c) || c->state == HC_LINGERING)
		return;
	if (pause) {
		if (c->pause_mask & PAUSE_FLOW)
			return;
		c->pause_mask |= PAUSE_FLOW;
		if (c->side->paused)
			c->side->paused(c, true);
		hc_rd_update(c);
	} else {
		if (!(c->pause_mask & PAUSE_FLOW))
			return;
		c->pause_mask &= ~PAUSE_FLOW;
		if (c->side->paused)
			c->side->paused(c, false);
		hc_rd_update(c);
		hc_sync_pause(c);
		if (evbuffer_get_length(c->in) > 0) {
			c->need_process = true;
			hc_mark_dirty(c);
		}
	}
}

void http_want_drain(struct hconn *c)
{
	c->want_drain = true;
}

size_t http_count(bool server_side)
{
	return n_open[server_side];
}
