/* test_http_conn.c - the HTTP connection core: its state table, and both
 * sides over real loopback sockets (a pipelined keep-alive exchange that
 * ends in a close, and an upstream connection parked and closed by a stray
 * byte). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../src/http_conn.c"

#include <sys/wait.h>

/* --- the state table --- */

static const struct hconn_side test_side = {.name = "test"};

static void test_every_state_can_die_and_dead_is_final(void **state)
{
	(void)state;
	for (int s = 0; s < HC_NSTATES; s++) {
		if (s != HC_DEAD)
			assert_true(legal[s] & (1u << HC_DEAD));
		assert_non_null(state_names[s]);
	}
	assert_int_equal(legal[HC_DEAD], 0);
}

/* The lifetimes the layer goes through: a server's keep-alive connection
 * that lingers after an early answer, an upstream connection that parks
 * and is reused, and a tunnel whose partner closes. */
static void test_lifetimes_are_legal(void **state)
{
	static const enum hc_state paths[][6] = {
		{HC_OPEN, HC_CLOSING, HC_LINGERING, HC_DEAD, HC_NSTATES},
		{HC_CONNECTING, HC_OPEN, HC_PARKED, HC_OPEN, HC_DEAD, HC_NSTATES},
		{HC_OPEN, HC_TUNNEL, HC_TUNNEL_DRAIN, HC_DEAD, HC_NSTATES},
		{HC_CONNECTING, HC_DEAD, HC_NSTATES},
	};
	struct hconn c = {.side = &test_side};

	(void)state;
	for (size_t k = 0; k < sizeof paths / sizeof paths[0]; k++) {
		c.state = paths[k][0];
		for (int j = 1; paths[k][j] != HC_NSTATES; j++) {
			hc_set_state(&c, paths[k][j], "test");
			assert_int_equal(c.state, paths[k][j]);
		}
	}
}

/* An illegal move is an impossible state: fatal() (exit 70). */
static void test_illegal_move_is_fatal(void **state)
{
	static const enum hc_state moves[][2] = {
		{HC_CONNECTING, HC_PARKED},
		{HC_DEAD, HC_OPEN},
		{HC_LINGERING, HC_CLOSING},
		{HC_TUNNEL_DRAIN, HC_TUNNEL},
	};

	(void)state;
	for (size_t k = 0; k < sizeof moves / sizeof moves[0]; k++) {
		int st;
		pid_t pid = fork();

		assert_true(pid >= 0);
		if (pid == 0) {
			struct hconn c = {.side = &test_side, .state = moves[k][0]};
			log_init(LOG_LVL_ERROR + 1, 0);   /* quiet */
			hc_set_state(&c, moves[k][1], "test");
			_exit(0);
		}
		assert_int_equal(waitpid(pid, &st, 0), pid);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 70);
	}
}

/* --- over sockets --- */

static struct event_base *base;
static struct gw ctx;   /* the gateway context (gw.h) */

/* Run the loop until *FLAG is set (at most about 5 s). */
static void loop_until(const int *flag)
{
	for (int k = 0; k < 5000 && !*flag; k++) {
		struct timeval tv = {0, 1000};
		event_base_loopexit(base, &tv);
		event_base_loop(base, EVLOOP_ONCE);
	}
	assert_true(*flag);
}

/* Read from FD until the bytes read contain WANT (blocking, with a poll). */
static void read_until(int fd, char *buf, size_t cap, const char *want)
{
	size_t n = 0;

	buf[0] = '\0';
	for (int k = 0; k < 5000 && strstr(buf, want) == NULL; k++) {
		ssize_t r = recv(fd, buf + n, cap - 1 - n, MSG_DONTWAIT);
		if (r > 0) {
			n += (size_t)r;
			buf[n] = '\0';
		} else {
			struct timeval tv = {0, 1000};
			event_base_loopexit(base, &tv);
			event_base_loop(base, EVLOOP_ONCE);
		}
	}
	assert_non_null(strstr(buf, want));
}

struct srv_owner {
	int heads, closed;
	char why[128];
	struct hconn *c;
};

static void so_head(struct hconn *c, struct http_msg *m)
{
	struct srv_owner *o = http_owner(c);

	(void)m;
	o->heads++;
}

static void so_done(struct hconn *c)
{
	struct srv_owner *o = http_owner(c);
	char body[32];
	int n = snprintf(body, sizeof body, "answer %d", o->heads);

	http_reply(c, 200, "text/plain", NULL, body, (size_t)n);
}

static void so_closed(struct hconn *c, const char *why)
{
	struct srv_owner *o = http_owner(c);

	o->closed++;
	snprintf(o->why, sizeof o->why, "%s", why);
	o->c = NULL;
}

static const struct hconn_ops so_ops = {
	.head = so_head, .done = so_done, .closed = so_closed,
};

/* Two pipelined requests, the second asking for a close: both answered in
 * order on one connection, then it closes once, as "closed". */
static void test_server_pipelined_then_close(void **state)
{
	static const struct http_limits lim = {8192, 1 << 20, 5, 5, 5, 5};
	static const char reqs[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
				   "GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	struct srv_owner o = {0};
	char buf[4096];
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	o.c = http_accept(sv[0], &lim, &so_ops, &o);
	assert_int_equal(o.c->state, HC_OPEN);
	assert_int_equal(http_count(true), 1);
	assert_int_equal(send(sv[1], reqs, sizeof reqs - 1, 0), (ssize_t)(sizeof reqs - 1));
	read_until(sv[1], buf, sizeof buf, "answer 2");
	assert_non_null(strstr(buf, "answer 1"));
	assert_true(strstr(buf, "answer 1") < strstr(buf, "answer 2"));
	assert_non_null(strstr(buf, "Connection: close"));
	loop_until(&o.closed);
	assert_int_equal(o.closed, 1);
	assert_string_equal(o.why, "closed");
	assert_int_equal(http_count(true), 0);   /* freed when the closing callback returned */
	close(sv[1]);
}

/* Owners whose answer breaks its own Content-Length: one sends less than
 * it announced, one more. */
static void short_done(struct hconn *c)
{
	http_respond(c, 200, NULL, 10);
	http_send(c, "abc", 3);
	http_finish(c);
}

static void long_done(struct hconn *c)
{
	http_respond(c, 200, NULL, 2);
	http_send(c, "abcdef", 6);
	http_finish(c);
}

static const struct hconn_ops short_ops = {
	.head = so_head, .done = short_done, .closed = so_closed,
};
static const struct hconn_ops long_ops = {
	.head = so_head, .done = long_done, .closed = so_closed,
};

/* Read FD to its end (the loop runs meanwhile); returns the bytes read. */
static size_t read_to_eof(int fd, char *buf, size_t cap)
{
	size_t n = 0;

	for (int k = 0; k < 5000; k++) {
		ssize_t r = recv(fd, buf + n, cap - 1 - n, MSG_DONTWAIT);
		if (r == 0)
			break;
		if (r > 0) {
			n += (size_t)r;
		} else {
			struct timeval tv = {0, 1000};
			event_base_loopexit(base, &tv);
			event_base_loop(base, EVLOOP_ONCE);
		}
	}
	buf[n] = '\0';
	return n;
}

/* A response that does not fill its Content-Length, or would overrun it,
 * ends its connection: nothing past the length goes out, and the next
 * pipelined request is not answered on it (the client would take its
 * answer for the rest of this body). */
static void test_server_content_length_is_never_broken(void **state)
{
	static const struct http_limits lim = {8192, 1 << 20, 5, 5, 5, 5};
	static const char reqs[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
				   "GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
	const struct hconn_ops *ops[] = {&short_ops, &long_ops};
	const char *body[] = {"\r\n\r\nabc", "\r\n\r\nab"};

	(void)state;
	for (int k = 0; k < 2; k++) {
		struct srv_owner o = {0};
		char buf[4096];
		int sv[2];
		size_t n;

		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
		o.c = http_accept(sv[0], &lim, ops[k], &o);
		assert_int_equal(send(sv[1], reqs, sizeof reqs - 1, 0), (ssize_t)(sizeof reqs - 1));
		n = read_to_eof(sv[1], buf, sizeof buf);
		assert_true(n > strlen(body[k]));
		assert_string_equal(buf + n - strlen(body[k]), body[k]);
		assert_null(strstr(strstr(buf, "\r\n\r\n"), "HTTP/1.1"));
		assert_int_equal(o.heads, 1);
		loop_until(&o.closed);
		assert_int_equal(http_count(true), 0);
		close(sv[1]);
	}
}

struct cli_owner {
	int connected, done, closed;
	char why[128];
	struct hconn *c;
};

static void co_connected(struct hconn *c)
{
	static const char head[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
	struct cli_owner *o = http_owner(c);

	o->connected = 1;
	http_send_head(c, head, sizeof head - 1, false, false);
	http_set_timeout(c, 5);
}

static void co_done(struct hconn *c)
{
	struct cli_owner *o = http_owner(c);

	o->done = 1;
}

static void co_closed(struct hconn *c, const char *why)
{
	struct cli_owner *o = http_owner(c);

	(void)c;
	o->closed++;
	snprintf(o->why, sizeof o->why, "%s", why);
	o->c = NULL;
}

static const struct hconn_ops co_ops = {
	.connected = co_connected, .done = co_done, .closed = co_closed,
};

/* An upstream answers; the connection is reusable, parks, and a byte the
 * upstream sends while it is parked closes it with that reason. */
static void test_client_parked_then_stray_byte(void **state)
{
	static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof sa;
	struct cli_owner o = {0};
	char buf[1024];
	int lfd, fd;

	(void)state;
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(lfd >= 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(lfd, 1), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
	o.c = http_connect((struct sockaddr *)&sa, sl, 5, &co_ops, &o);
	assert_int_equal(o.c->state, HC_CONNECTING);
	assert_int_equal(http_count(false), 1);
	loop_until(&o.connected);
	assert_int_equal(o.c->state, HC_OPEN);
	fd = accept(lfd, NULL, NULL);
	assert_true(fd >= 0);
	read_until(fd, buf, sizeof buf, "\r\n\r\n");
	assert_int_equal(send(fd, resp, sizeof resp - 1, 0), (ssize_t)(sizeof resp - 1));
	loop_until(&o.done);
	assert_true(http_reusable(o.c));
	http_park(o.c, 30);
	assert_int_equal(o.c->state, HC_PARKED);
	assert_int_equal(send(fd, "x", 1, 0), 1);
	loop_until(&o.closed);
	assert_int_equal(o.closed, 1);
	assert_string_equal(o.why, "upstream sent bytes on an idle connection");
	assert_int_equal(http_count(false), 0);
	close(fd);
	close(lfd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_state_can_die_and_dead_is_final),
		cmocka_unit_test(test_lifetimes_are_legal),
		cmocka_unit_test(test_illegal_move_is_fatal),
		cmocka_unit_test(test_server_pipelined_then_close),
		cmocka_unit_test(test_server_content_length_is_never_broken),
		cmocka_unit_test(test_client_parked_then_stray_byte),
	};
	int rc;

	base = event_base_new();
	ctx.base = base;
	http_init(&ctx);
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	event_free(flush_ev);
	hc_budget_free();
	event_base_free(base);
	return rc;
}
