/* upstream.c - a tiny, fast HTTP/1.1 keep-alive server for benchmarks.
 *
 * usage: bench_upstream PORT
 *
 * Single-threaded, raw epoll (level-triggered), non-blocking sockets.
 * Answers every request with a small fixed 200 response ("ok\n"); /health
 * answers 200 "healthy\n". Handles keep-alive, pipelining, request bodies
 * with Content-Length (skipped), "Connection: close" and HTTP/1.0.
 * Listens on 127.0.0.1:PORT. SIGTERM/SIGINT exit at once. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define INBUF 16384
#define OUTBUF 16384

static const char resp_ok[] = "HTTP/1.1 200 OK\r\n"
			      "Content-Type: text/plain\r\n"
			      "Content-Length: 3\r\n"
			      "\r\n"
			      "ok\n";
static const char resp_ok_close[] = "HTTP/1.1 200 OK\r\n"
				    "Content-Type: text/plain\r\n"
				    "Content-Length: 3\r\n"
				    "Connection: close\r\n"
				    "\r\n"
				    "ok\n";
static const char resp_health[] = "HTTP/1.1 200 OK\r\n"
				  "Content-Type: text/plain\r\n"
				  "Content-Length: 8\r\n"
				  "\r\n"
				  "healthy\n";
static const char resp_health_close[] = "HTTP/1.1 200 OK\r\n"
					"Content-Type: text/plain\r\n"
					"Content-Length: 8\r\n"
					"Connection: close\r\n"
					"\r\n"
					"healthy\n";
static const char resp_bad[] = "HTTP/1.1 400 Bad Request\r\n"
			       "Content-Length: 0\r\n"
			       "Connection: close\r\n"
			       "\r\n";

struct conn {
	int fd;
	bool close_after;   /* close once output is flushed */
	bool want_out;      /* EPOLLOUT registered */
	size_t inlen;
	size_t skip;        /* request body bytes still to discard */
	size_t outlen, outoff;
	char in[INBUF];
	char out[OUTBUF];
};

static int ep;

static void conn_close(struct conn *c)
{
	close(c->fd); /* also removes it from the epoll set */
	free(c);
}

/* Case-insensitive search for header NAME with a value containing TOKEN
 * inside the head [p, p+n). */
static bool header_has(const char *p, size_t n, const char *name, const char *token)
{
	size_t nl = strlen(name), tl = strlen(token);
	const char *end = p + n, *line = memchr(p, '\n', n);

	while (line && line + 1 < end) {
		const char *s = line + 1, *e = memchr(s, '\n', (size_t)(end - s));
		if (e == NULL)
			e = end;
		if ((size_t)(e - s) > nl && strncasecmp(s, name, nl) == 0 && s[nl] == ':') {
			for (const char *v = s + nl + 1; v + tl <= e; v++)
				if (strncasecmp(v, token, tl) == 0)
					return true;
		}
		line = e < end ? e : NULL;
	}
	return false;
}

static long long header_num(const char *p, size_t n, const char *name)
{
	size_t nl = strlen(name);
	const char *end = p + n, *line = memchr(p, '\n', n);

	while (line && line + 1 < end) {
		const char *s = line + 1, *e = memchr(s, '\n', (size_t)(end - s));
		if (e == NULL)
			e = end;
		if ((size_t)(e - s) > nl && strncasecmp(s, name, nl) == 0 && s[nl] == ':')
			return strtoll(s + nl + 1, NULL, 10);
		line = e < end ? e : NULL;
	}
	return 0;
}

static void out_add(struct conn *c, const char *p, size_t n)
{
	if (c->outlen + n > OUTBUF) { /* cannot happen with pipelining bounded by INBUF */
		c->close_after = true;
		return;
	}
	memcpy(c->out + c->outlen, p, n);
	c->outlen += n;
}

/* Parse every complete request in c->in and queue responses. */
static void parse(struct conn *c)
{
	size_t off = 0;

	while (off < c->inlen && !c->close_after) {
		if (c->skip) {
			size_t k = c->inlen - off < c->skip ? c->inlen - off : c->skip;
			off += k;
			c->skip -= k;
			continue;
		}
		char *head = c->in + off;
		size_t avail = c->inlen - off;
		char *eoh = memmem(head, avail, "\r\n\r\n", 4);
		if (eoh == NULL)
			break;
		size_t hlen = (size_t)(eoh - head) + 4;
		char *sp = memchr(head, ' ', hlen);
		bool health = sp && hlen - (size_t)(sp - head) > 8 && memcmp(sp + 1, "/health", 7) == 0 &&
			      (sp[8] == ' ' || sp[8] == '?');
		char *eol = memchr(head, '\r', hlen);
		bool http10 = eol && eol - head >= 8 && memcmp(eol - 8, "HTTP/1.0", 8) == 0;
		bool close_it = http10 ? !header_has(head, hlen, "connection", "keep-alive")
				       : header_has(head, hlen, "connection", "close");
		long long cl = header_num(head, hlen, "content-length");

		if (sp == NULL || cl < 0 || header_has(head, hlen, "transfer-encoding", "chunked")) {
			out_add(c, resp_bad, sizeof resp_bad - 1);
			c->close_after = true;
			break;
		}
		if (health)
			out_add(c, close_it ? resp_health_close : resp_health,
				(close_it ? sizeof resp_health_close : sizeof resp_health) - 1);
		else
			out_add(c, close_it ? resp_ok_close : resp_ok,
				(close_it ? sizeof resp_ok_close : sizeof resp_ok) - 1);
		if (close_it)
			c->close_after = true;
		off += hlen;
		c->skip = (size_t)cl;
	}
	if (off > 0) {
		memmove(c->in, c->in + off, c->inlen - off);
		c->inlen -= off;
	}
	if (c->inlen == INBUF) { /* head too large */
		out_add(c, resp_bad, sizeof resp_bad - 1);
		c->close_after = true;
	}
}

/* Write queued output; returns -1 if the connection was closed. */
static int flush_out(struct conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
		if (n > 0) {
			c->outoff += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			if (!c->want_out) {
				/* output only until the peer reads (no busy EPOLLIN) */
				struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
				epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
				c->want_out = true;
			}
			return 0;
		}
		conn_close(c);
		return -1;
	}
	c->outoff = c->outlen = 0;
	if (c->close_after) {
		conn_close(c);
		return -1;
	}
	if (c->want_out) {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
		c->want_out = false;
	}
	return 0;
}

static void on_readable(struct conn *c)
{
	for (;;) {
		if (c->outlen > OUTBUF / 2) /* let the peer read first */
			break;
		ssize_t n = recv(c->fd, c->in + c->inlen, INBUF - c->inlen, 0);
		if (n > 0) {
			c->inlen += (size_t)n;
			parse(c);
			if (c->close_after || c->inlen < INBUF)
				break; /* level-triggered: we are called again if more is there */
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		conn_close(c); /* EOF or error */
		return;
	}
	flush_out(c);
}

static void on_sig(int sig)
{
	(void)sig;
	_exit(0);
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct epoll_event evs[256], lev = {.events = EPOLLIN, .data.ptr = NULL};
	int lfd, one = 1, port;

	if (argc != 2 || (port = atoi(argv[1])) <= 0 || port > 65535) {
		fprintf(stderr, "usage: %s PORT\n", argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_sig);
	signal(SIGINT, on_sig);
	sa.sin_port = htons((unsigned short)port);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		perror("socket");
		return 1;
	}
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		fprintf(stderr, "bench_upstream: bind 127.0.0.1:%d: %s\n", port, strerror(errno));
		return 1;
	}
	if (listen(lfd, 4096) != 0) {
		perror("listen");
		return 1;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) != 0) {
		perror("epoll");
		return 1;
	}
	fprintf(stderr, "bench_upstream: listening on 127.0.0.1:%d\n", port);
	for (;;) {
		int n = epoll_wait(ep, evs, (int)(sizeof evs / sizeof evs[0]), -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("epoll_wait");
			return 1;
		}
		for (int k = 0; k < n; k++) {
			struct conn *c = evs[k].data.ptr;
			if (c == NULL) { /* the listener */
				for (int j = 0; j < 64; j++) {
					int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (fd < 0)
						break;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					c = malloc(sizeof *c);
					if (c == NULL) {
						close(fd);
						continue;
					}
					c->fd = fd;
					c->close_after = c->want_out = false;
					c->inlen = c->skip = c->outlen = c->outoff = 0;
					struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
					if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
						close(fd);
						free(c);
					}
				}
				continue;
			}
			if (evs[k].events & EPOLLOUT) {
				if (flush_out(c) < 0)
					continue;
			}
			if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
				on_readable(c);
		}
	}
}
