/* upstream_evhttp.c - the bench's realistic upstream: an HTTP server on
 * libevent's evhttp that answers like a typical Python/libevent service.
 *
 * usage: bench_upstream_evhttp PORT
 *
 * Every request gets 200 with Content-Type: application/json, a Date and a
 * Content-Length (both added by evhttp) and a 100-byte JSON body; /health
 * answers 200 "healthy\n". Keep-alive as evhttp does it. Listens on
 * 127.0.0.1:PORT; SIGTERM/SIGINT end the loop. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

/* 100 bytes, newline included */
static const char body[] = "{\"id\":\"bench-001\",\"object\":\"result\",\"ok\":true,"
			   "\"text\":\"the quick brown fox jumps over the lazy dog\"}\n";

static void on_request(struct evhttp_request *req, void *arg)
{
	const char *uri = evhttp_request_get_uri(req);
	struct evbuffer *out = evhttp_request_get_output_buffer(req);
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	(void)arg;
	if (strcmp(uri, "/health") == 0) {
		evhttp_add_header(h, "Content-Type", "text/plain");
		evbuffer_add(out, "healthy\n", 8);
	} else {
		evhttp_add_header(h, "Content-Type", "application/json");
		evbuffer_add(out, body, sizeof body - 1);
	}
	evhttp_send_reply(req, 200, "OK", NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig, (void)what;
	event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
	struct event_base *base;
	struct evhttp *http;
	struct event *sigterm, *sigint;
	int port;

	_Static_assert(sizeof body - 1 == 100, "the body is 100 bytes");
	if (argc != 2 || (port = atoi(argv[1])) <= 0 || port > 65535) {
		fprintf(stderr, "usage: %s PORT\n", argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	base = event_base_new();
	http = evhttp_new(base);
	if (base == NULL || http == NULL)
		return 1;
	evhttp_set_gencb(http, on_request, NULL);
	if (evhttp_bind_socket(http, "127.0.0.1", (unsigned short)port) != 0) {
		fprintf(stderr, "%s: cannot listen on 127.0.0.1:%d\n", argv[0], port);
		return 1;
	}
	sigterm = evsignal_new(base, SIGTERM, on_signal, base);
	sigint = evsignal_new(base, SIGINT, on_signal, base);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);
	event_base_dispatch(base);
	event_free(sigterm);
	event_free(sigint);
	evhttp_free(http);
	event_base_free(base);
	return 0;
}
