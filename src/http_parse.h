/* http_parse.h - HTTP/1.x message parsing on bytes, without a socket.
 *
 * An hparse takes the bytes of one direction of a connection (requests on
 * the server side, responses on the client side) in pieces of any size and
 * reports each message through callbacks: begin, head, body, done. It is
 * strict where http_parser (as Debian builds it) is lenient: chunked framing
 * is decoded here, trailers are parsed and dropped (they never touch the
 * head), versions other than 1.0/1.1, obs-fold, Transfer-Encoding on
 * HTTP/1.0, a duplicate Host, a Content-Length past 2^63 and invalid status
 * codes are refused; header names with '_' are dropped (as nginx does).
 *
 * Lifetime: the http_msg given to head() and everything it points to stay
 * valid and unchanged until the next message begins (after done(), when
 * more bytes are fed) or hparse_free(). Nothing the parser reads after the
 * head (body, chunk framing, trailers) writes to it. */
#ifndef SG_HTTP_PARSE_H
#define SG_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <http_parser.h>

struct http_hdr {
	const char *name;
	const char *value;
	size_t nlen, vlen;
};

/* A parsed head. Valid from head() until the next message on the conn. */
struct http_msg {
	int method;               /* enum http_method (requests) */
	const char *method_str;
	const char *url;          /* origin-form: an absolute-form target is
	                           * split into this path and the Host header */
	size_t url_len;
	int status;               /* responses */
	unsigned short major, minor;
	struct http_hdr *hdrs;
	size_t nhdrs;
	long long content_length; /* -1 if absent */
	bool chunked;
	bool keep_alive;
	bool upgrade;
	bool expect_continue;
};

struct hparse_ops {
	void (*begin)(void *arg);                        /* a message starts */
	/* The head is parsed. Return 1 if the message has no body whatever its
	 * framing says (a response to HEAD), else 0. */
	int (*head)(void *arg, struct http_msg *m);
	void (*body)(void *arg, const char *p, size_t n);
	void (*done)(void *arg);                         /* message complete */
};

struct hdr_off {
	uint32_t noff, nlen, voff, vlen;
	bool drop;
};

struct hparse {
	http_parser parser;
	const struct hparse_ops *ops;
	void *arg;
	bool server;
	size_t max_header;        /* head bytes (and again trailer bytes) */
	long long max_body;       /* < 0: none */

	/* the head being collected */
	char *hbuf;
	size_t hlen, hcap;
	struct hdr_off *hoff;
	size_t nhoff, hoffcap;
	size_t hdrcap;            /* room in msg.hdrs, kept from message to message */
	int last_cb;
	size_t url_len;
	struct http_msg msg;
	long long body_seen;
	bool saw_cl, saw_te, skip_msg, in_msg, upgrade_after;
	const char *feed_start;   /* the piece being fed, and the byte before it */
	char prev_byte;
	const char *field_end;    /* end of the last header name, in this piece */
	bool lf_after_field;      /* a line end followed it in an earlier piece */

	/* chunked bodies are decoded here, not by http_parser */
	int cstate;
	uint64_t csize;
	size_t cline;             /* bytes in the current size or trailer line */
	size_t ctrailer;          /* trailer bytes so far */

	bool paused, upgraded;
	int err_status;           /* 0, or the status to answer (server side) */
	char err_msg[192];
};

/* The library's own limit on a head's raw bytes, set by hparse_init: twice
 * the largest max_header_size, so that max_header is the limit met. */
#define HPARSE_LIB_MAX_HEADER (2u << 20)

void hparse_init(struct hparse *hp, bool server, const struct hparse_ops *ops, void *arg);
void hparse_free(struct hparse *hp);
/* Limits: head (and trailer) bytes; body bytes (< 0: no limit). */
void hparse_limits(struct hparse *hp, size_t max_header, long long max_body);
/* Parse up to N bytes; returns how many were consumed. It stops early when
 * paused (hparse_pause, possibly from a callback), on an error
 * (hparse_error) or after an upgrade (hparse_upgraded: the rest is raw). */
size_t hparse_feed(struct hparse *hp, const char *p, size_t n);
/* The peer closed: a response delimited by the close is complete. */
void hparse_eof(struct hparse *hp);
void hparse_pause(struct hparse *hp, bool pause);
bool hparse_paused(const struct hparse *hp);
/* 0, or the status that describes the error (400, 413, 431, 405, 505,
 * 502 for a response), with a message in *why. */
int hparse_error(const struct hparse *hp, const char **why);
bool hparse_upgraded(const struct hparse *hp);
/* Inside a message (begun, not done). */
bool hparse_in_message(const struct hparse *hp);
/* The method of the request being parsed (after its first bytes). */
const struct http_msg *hparse_msg(const struct hparse *hp);
/* The target of the request being parsed as far as it was read (origin or
 * absolute form, before the head is parsed too; only its start if it was
 * over max_header): *LEN bytes, not NUL-terminated; NULL outside a
 * request. Valid until more bytes are fed. */
const char *hparse_target(const struct hparse *hp, size_t *len);

/* Find a header (case-insensitive); NULL if absent. */
const struct http_hdr *http_find(const struct http_msg *m, const char *name);
/* Is this a hop-by-hop header (never forwarded)? Host and the framing
 * headers are hop-by-hop or not whatever Connection lists (http_header.c). */
bool http_hop_by_hop(const struct http_hdr *h, const struct http_msg *m);

#endif
