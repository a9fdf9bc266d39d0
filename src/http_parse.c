/* http_parse.c - HTTP/1.x message parsing on bytes (see http_parse.h).
 *
 * http_parser parses request and status lines, header fields and
 * Content-Length bodies. Chunked bodies are decoded here, because the
 * library as Debian builds it is not strict (it takes any two bytes for the
 * CRLF after chunk data and a bare LF in a chunk extension) and because it
 * reports trailer fields through the same callbacks as header fields: a
 * trailer must never reach the head buffer that a parsed message points
 * into. At the end of a chunked message the library gets a fresh state. */
#include "http_parse.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

enum { CB_NONE, CB_FIELD, CB_VALUE };

/* States of the chunked decoder. */
enum {
	CH_NONE,      /* not in a chunked body: http_parser reads */
	CH_HEADLF,    /* the LF that ends the head (http_parser paused before it) */
	CH_SIZE0,     /* the first hex digit of a chunk size */
	CH_SIZE,      /* more hex digits */
	CH_SIZE_WS,   /* white space after the size, before ';' */
	CH_EXT,       /* a chunk extension, up to CR */
	CH_SIZE_LF,   /* LF after the size line */
	CH_DATA,
	CH_DATA_CR,
	CH_DATA_LF,
	CH_TRAILER,   /* start of a trailer line (or the final CRLF) */
	CH_TLINE,     /* inside a trailer line */
	CH_TLINE_LF,
	CH_END_LF,    /* LF of the final empty line */
};

#define CHUNK_LINE_MAX 4096

/* NAME (N bytes) is the literal LIT, ignoring case: the length first. */
#define NAME_IS(name, n, lit) ((n) == sizeof(lit) - 1 && strncasecmp((name), (lit), sizeof(lit) - 1) == 0)

static const http_parser_settings settings;

static struct hparse *hpof(http_parser *p)
{
	return p->data;
}

/* Record the first error (a printf format); the parse stops. Returns -1
 * for http_parser. */
static int __attribute__((format(printf, 3, 4))) refuse(struct hparse *hp, int status,
							const char *fmt, ...)
{
	va_list ap;
	size_t k = 0;

	if (hp->err_status != 0)
		return -1;
	hp->err_status = hp->server ? status : 502;
	if (!hp->server)
		k = (size_t)snprintf(hp->err_msg, sizeof hp->err_msg, "bad response from upstream: ");
	va_start(ap, fmt);
	vsnprintf(hp->err_msg + k, sizeof hp->err_msg - k, fmt, ap);
	va_end(ap);
	return -1;
}

/* The head (and again the trailer) is over max_header. */
static int head_too_large(struct hparse *hp, const char *part)
{
	if (!hp->server)
		return refuse(hp, 431, "the response %s is larger than %zu bytes", part, hp->max_header);
	return refuse(hp, 431, "the request %s is larger than max_header_size (%zu bytes)", part,
		      hp->max_header);
}

static int body_too_large(struct hparse *hp)
{
	return refuse(hp, 413, "the request body is larger than max_body_size (%lld bytes)",
		      hp->max_body);
}

static int hbuf_add(struct hparse *hp, const char *p, size_t n)
{
	if (hp->hlen + n + 1 > hp->max_header)
		return head_too_large(hp, "head");
	if (hp->hlen + n + 1 > hp->hcap) {
		hp->hcap = (hp->hlen + n + 1) * 2;
		if (hp->hcap < 512)
			hp->hcap = 512;
		hp->hbuf = xrealloc(hp->hbuf, hp->hcap);
	}
	memcpy(hp->hbuf + hp->hlen, p, n);
	hp->hlen += n;
	return 0;
}

static int on_message_begin(http_parser *p)
{
	struct hparse *hp = hpof(p);

	hp->hlen = 0;
	hp->nhoff = 0;
	hp->url_len = 0;
	hp->last_cb = CB_NONE;
	hp->body_seen = 0;
	hp->saw_cl = hp->saw_te = hp->skip_msg = hp->upgrade_after = false;
	hp->in_msg = true;
	if (hp->ops->begin)
		hp->ops->begin(hp->arg);
	return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
	struct hparse *hp = hpof(p);

	hp->url_len += n;
	if (hp->hlen + n + 1 > hp->max_header && hp->hlen + 1 < hp->max_header)
		hbuf_add(hp, at, hp->max_header - hp->hlen - 1);   /* its start names the target */
	return hbuf_add(hp, at, n);
}

static int on_status(http_parser *p, const char *at, size_t n)
{
	(void)p, (void)at, (void)n;
	return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
	struct hparse *hp = hpof(p);

	if (hp->last_cb != CB_FIELD) {
		if (hp->nhoff >= 256)
			return refuse(hp, 431, "too many header fields (at most 256)");
		if (hbuf_add(hp, "", 1) != 0) /* ends the url or the previous value */
			return -1;
		if (hp->nhoff == hp->hoffcap) {
			hp->hoffcap = hp->hoffcap ? hp->hoffcap * 2 : 16;
			hp->hoff = xrealloc(hp->hoff, hp->hoffcap * sizeof *hp->hoff);
		}
		hp->hoff[hp->nhoff++] = (struct hdr_off){(uint32_t)hp->hlen, 0, 0, 0, false};
		hp->last_cb = CB_FIELD;
	}
	hp->hoff[hp->nhoff - 1].nlen += (uint32_t)n;
	hp->field_end = at + n;
	hp->lf_after_field = false;
	return hbuf_add(hp, at, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
	struct hparse *hp = hpof(p);
	struct hdr_off *h = &hp->hoff[hp->nhoff - 1];
	/* A value (or more of one) after a line end is obs-fold: a line that
	 * starts with white space continues the value above, even an empty
	 * one. Between a name and its value there is only ':' and white space;
	 * a value continued in a new piece of input follows a value byte. */
	char before = at > hp->feed_start ? at[-1] : hp->prev_byte;
	bool lf = before == '\n';

	if (hp->last_cb == CB_FIELD) {
		lf = lf || hp->lf_after_field;
		for (const char *q = hp->field_end ? hp->field_end : hp->feed_start; q < at && !lf; q++)
			lf = *q == '\n';
	}
	if (lf && n > 0)   /* (an empty value is reported at the next line's start) */
		return refuse(hp, 400, "obsolete line folding in a header field is not allowed");
	if (hp->last_cb != CB_VALUE) {
		if (hbuf_add(hp, "", 1) != 0) /* ends the name */
			return -1;
		h->voff = (uint32_t)hp->hlen;
		hp->last_cb = CB_VALUE;
	}
	for (size_t k = 0; k < n; k++)
		if (at[k] == '\0' || at[k] == '\r' || at[k] == '\n')
			return refuse(hp, 400, "invalid character in a header field value");
	h->vlen += (uint32_t)n;
	return hbuf_add(hp, at, n);
}

/* RFC 9110 token: a header name may hold nothing else (no white space:
 * "Content-Length : 5" is a smuggling attempt, not a header). */
static bool is_token(const char *p, size_t n)
{
#define T2(a, b) [a] = 1, [b] = 1
	static const unsigned char tchar[256] = {
		T2('!', '#'), T2('$', '%'), T2('&', '\''), T2('*', '+'), T2('-', '.'), T2('^', '_'),
		T2('`', '|'), ['~'] = 1,
		T2('0', '1'), T2('2', '3'), T2('4', '5'), T2('6', '7'), T2('8', '9'),
		T2('a', 'b'), T2('c', 'd'), T2('e', 'f'), T2('g', 'h'), T2('i', 'j'), T2('k', 'l'),
		T2('m', 'n'), T2('o', 'p'), T2('q', 'r'), T2('s', 't'), T2('u', 'v'), T2('w', 'x'),
		T2('y', 'z'),
		T2('A', 'B'), T2('C', 'D'), T2('E', 'F'), T2('G', 'H'), T2('I', 'J'), T2('K', 'L'),
		T2('M', 'N'), T2('O', 'P'), T2('Q', 'R'), T2('S', 'T'), T2('U', 'V'), T2('W', 'X'),
		T2('Y', 'Z'),
	};
#undef T2

	if (n == 0)
		return false;
	for (size_t k = 0; k < n; k++)
		if (!tchar[(unsigned char)p[k]])
			return false;
	return true;
}

/* RFC 9110 7.2: Host is uri-host [":" port]: a name (unreserved, %XX,
 * sub-delims), an IPv4 address or an [IP literal], and a port. Nothing
 * else (no white space, '/', '@', '?', '#', '\\', CTL or 8-bit byte, no
 * port that is not a number, no bracket outside an IP literal) may reach
 * a service, which builds its own URLs from it. */
static bool host_valid(const char *p, size_t n)
{
	static unsigned char hchar[256];
	const char *end = p + n, *q = p;

	if (!hchar['a']) {   /* filled once: a table, as is_token's */
		for (int ch = 0; ch < 256; ch++)
			hchar[ch] = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
				    (ch >= '0' && ch <= '9') ||
				    (ch != 0 && strchr("-._~%!$&'()*+,;=:[]", ch) != NULL);
	}
	for (size_t k = 0; k < n; k++)
		if (!hchar[(unsigned char)p[k]])
			return false;
	if (n > 0 && p[0] == '[') {
		/* an IP literal: "[...]", and nothing but a port after it */
		q = memchr(p, ']', n);
		if (q == NULL || memchr(p + 1, '[', (size_t)(q - p - 1)) || (++q < end && *q != ':'))
			return false;
	} else if (memchr(p, '[', n) || memchr(p, ']', n)) {
		return false;
	}
	q = memchr(q, ':', (size_t)(end - q));   /* the port: digits (RFC 3986 3.2.3) */
	for (q = q ? q + 1 : end; q < end; q++)
		if (*q < '0' || *q > '9')
			return false;
	return true;
}

/* Strip optional white space around a header value. */
static void trim(const char **v, size_t *n)
{
	while (*n > 0 && (**v == ' ' || **v == '\t'))
		(*v)++, (*n)--;
	while (*n > 0 && ((*v)[*n - 1] == ' ' || (*v)[*n - 1] == '\t'))
		(*n)--;
}

/* An absolute-form target (RFC 9112 3.2.2): the path becomes the target
 * and the authority replaces Host. */
static int absolute_form(struct hparse *hp, struct http_msg *m)
{
	const char *u = m->url, *end = m->url + m->url_len, *auth, *a;
	size_t skip;
	struct http_hdr *host = NULL;

	if (m->url_len >= 7 && strncasecmp(u, "http://", 7) == 0)
		skip = 7;
	else if (m->url_len >= 8 && strncasecmp(u, "https://", 8) == 0)
		skip = 8;
	else
		return 0;
	auth = u + skip;
	for (a = auth; a < end && *a != '/' && *a != '?' && *a != '#'; a++)
		if (*a == '@')
			return refuse(hp, 400, "user information in the request target is not allowed");
	if (a == auth)
		return refuse(hp, 400, "the request target has no host");
	if (a < end && *a != '/')
		return refuse(hp, 400, "the path of an absolute request target must start with '/'");
	for (size_t k = 0; k < m->nhdrs; k++)
		if (NAME_IS(m->hdrs[k].name, m->hdrs[k].nlen, "host"))
			host = &m->hdrs[k];
	if (host == NULL) {
		host = &m->hdrs[m->nhdrs++];   /* room was left for it */
		host->name = "Host";
		host->nlen = 4;
	}
	host->value = auth;
	host->vlen = (size_t)(a - auth);
	if (a == end) {
		m->url = "/";
		m->url_len = 1;
	} else {
		m->url = a;
		m->url_len = (size_t)(end - a);
	}
	return 0;
}

static int on_headers_complete(http_parser *p)
{
	struct hparse *hp = hpof(p);
	struct http_msg *m = &hp->msg;
	bool te_ok = true, bad_name = false, body;
	const struct http_hdr *host = NULL;
	int nhost = 0, r;

	if (hbuf_add(hp, "", 1) != 0)
		return -1;
	if (hp->nhoff + 1 > hp->hdrcap) {
		/* one more for absolute_form's Host; kept for the next message */
		free(m->hdrs);
		hp->hdrcap = hp->nhoff + 1;   /* no more: an idle connection keeps it */
		m->hdrs = xcalloc(hp->hdrcap, sizeof *m->hdrs);
	}
	m->nhdrs = 0;
	m->url = hp->hbuf;
	m->url_len = hp->url_len;
	m->content_length = -1;
	m->expect_continue = false;
	for (size_t i = 0; i < hp->nhoff; i++) {
		struct http_hdr *h = &m->hdrs[m->nhdrs];
		h->name = hp->hbuf + hp->hoff[i].noff;
		h->nlen = hp->hoff[i].nlen;
		if (!is_token(h->name, h->nlen))
			bad_name = true;
		if (memchr(h->name, '_', h->nlen))
			continue;   /* as nginx does (underscores_in_headers off) */
		h->value = hp->hoff[i].vlen ? hp->hbuf + hp->hoff[i].voff : "";
		h->vlen = hp->hoff[i].vlen;
		trim(&h->value, &h->vlen);
		m->nhdrs++;
		if (NAME_IS(h->name, h->nlen, "content-length")) {
			hp->saw_cl = true;
		} else if (NAME_IS(h->name, h->nlen, "transfer-encoding")) {
			if (hp->saw_te || !NAME_IS(h->value, h->vlen, "chunked"))
				te_ok = false;
			hp->saw_te = true;
		} else if (NAME_IS(h->name, h->nlen, "host")) {
			nhost++;
			host = h;
		} else if (NAME_IS(h->name, h->nlen, "expect") &&
			   NAME_IS(h->value, h->vlen, "100-continue")) {
			m->expect_continue = true;
		}
	}
	m->major = p->http_major;
	m->minor = p->http_minor;
	m->method = p->method;
	m->method_str = http_method_str(p->method);
	m->status = (int)p->status_code;
	m->keep_alive = http_should_keep_alive(p) != 0;
	m->upgrade = p->upgrade != 0;
	m->chunked = (p->flags & F_CHUNKED) != 0;

	if (m->major != 1 || m->minor > 1)
		return refuse(hp, 505, "HTTP version not supported (only HTTP/1.0 and HTTP/1.1)");
	if (bad_name)
		return refuse(hp, 400, "malformed header field name");
	/* Request smuggling: a message framed two ways, or by a coding we do
	 * not speak, is refused rather than guessed at. */
	if ((hp->saw_cl && hp->saw_te) || (hp->saw_te && !te_ok))
		return refuse(hp, 400, "conflicting or unsupported Content-Length / Transfer-Encoding");
	if (hp->saw_te && m->minor == 0)
		return refuse(hp, 400, "Transfer-Encoding is not allowed in an HTTP/1.0 message");
	if (hp->saw_cl && !m->chunked) {
		if (p->content_length > (uint64_t)LLONG_MAX)
			return refuse(hp, 400, "invalid Content-Length");
		m->content_length = (long long)p->content_length;
	}
	if (hp->server) {
		if (nhost > 1)
			return refuse(hp, 400, "duplicate Host header");
		if (p->method == HTTP_TRACE)
			return refuse(hp, 405, "TRACE is not allowed");
		if (hp->max_body >= 0 && m->content_length > hp->max_body)
			return body_too_large(hp);
		if (absolute_form(hp, m) != 0)
			return -1;
		/* RFC 9112 3.2, as nginx: an HTTP/1.1 request names its host
		 * (a Host header, or the authority of an absolute-form target) */
		if (host == NULL)
			host = http_find(m, "host");   /* absolute_form's */
		if (m->minor >= 1 && host == NULL)
			return refuse(hp, 400, "an HTTP/1.1 request needs a Host header");
		if (host && !host_valid(host->value, host->vlen))
			return refuse(hp, 400, "invalid Host header");
		body = m->chunked || m->content_length > 0;
		hp->upgrade_after = m->upgrade;
	} else {
		if (m->status < 100 || m->status > 599)
			return refuse(hp, 502, "invalid status code");
		if (m->status == 101 && !m->upgrade)
			return refuse(hp, 502, "101 without an Upgrade");
		if (m->status >= 100 && m->status < 200 && m->status != 101) {
			/* an interim response (100 Continue, 103): no body, not reported */
			hp->skip_msg = true;
			return 1;
		}
		body = m->status != 101 && m->status != 204 && m->status != 304;
	}
	r = hp->ops->head ? hp->ops->head(hp->arg, m) : 0;
	if (hp->err_status)
		return -1;
	if (r == 1 || !body)
		return 1;
	if (m->chunked) {
		/* we decode the body: http_parser stops before the head's last LF */
		hp->cstate = CH_HEADLF;
		http_parser_pause(p, 1);
	} else if (hp->paused) {
		http_parser_pause(p, 1);
	}
	return 0;
}

/* Body bytes to the owner. Past the limit, the bytes up to it go first:
 * the owner sees the same body whatever the pieces were. */
static int deliver(struct hparse *hp, const char *at, size_t n)
{
	bool over = hp->max_body >= 0 && (long long)n > hp->max_body - hp->body_seen;

	if (over)
		n = (size_t)(hp->max_body - hp->body_seen);
	hp->body_seen += (long long)n;
	if (n > 0 && hp->ops->body)
		hp->ops->body(hp->arg, at, n);
	return over ? body_too_large(hp) : 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
	struct hparse *hp = hpof(p);

	if (deliver(hp, at, n) != 0)
		return -1;
	if (hp->paused)
		http_parser_pause(p, 1);
	return 0;
}

static void message_done(struct hparse *hp)
{
	hp->in_msg = false;
	if (hp->ops->done)
		hp->ops->done(hp->arg);
}

static int on_message_complete(http_parser *p)
{
	struct hparse *hp = hpof(p);

	if (hp->skip_msg) {
		hp->skip_msg = false;
		hp->in_msg = false;
		return 0;
	}
	message_done(hp);
	if (hp->paused)
		http_parser_pause(p, 1);
	return 0;
}

static const http_parser_settings settings = {
	.on_message_begin = on_message_begin,
	.on_url = on_url,
	.on_status = on_status,
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* The end of a chunked message: the library starts afresh. */
static void chunked_done(struct hparse *hp)
{
	hp->cstate = CH_NONE;
	http_parser_init(&hp->parser, hp->server ? HTTP_REQUEST : HTTP_RESPONSE);
	hp->parser.data = hp;
	if (hp->upgrade_after)
		hp->upgraded = true;
	message_done(hp);
}

#define BAD_CHUNK(hp) refuse(hp, 400, "malformed chunked body")

/* Decode chunked framing; returns the bytes consumed. */
static size_t chunk_feed(struct hparse *hp, const char *p, size_t n)
{
	size_t k = 0;

	while (k < n && hp->cstate != CH_NONE && !hp->err_status && !hp->paused) {
		char ch = p[k];
		int v;

		if (hp->cstate == CH_DATA) {
			size_t take = n - k;
			if ((uint64_t)take > hp->csize)
				take = (size_t)hp->csize;
			hp->csize -= take;
			if (hp->csize == 0)
				hp->cstate = CH_DATA_CR;
			if (deliver(hp, p + k, take) != 0)
				return k + take;
			k += take;
			continue;
		}
		k++;
		switch (hp->cstate) {
		case CH_HEADLF:
			if (ch != '\n') {
				BAD_CHUNK(hp);
				return k;
			}
			hp->cstate = CH_SIZE0;
			hp->cline = 0;
			break;
		case CH_SIZE0:
		case CH_SIZE:
			v = hexval(ch);
			if (v >= 0) {
				if (hp->csize > (UINT64_MAX >> 4) || (hp->cstate == CH_SIZE && hp->cline > 16)) {
					refuse(hp, 400, "chunk size too large");
					return k;
				}
				hp->csize = hp->csize * 16 + (uint64_t)v;
				hp->cstate = CH_SIZE;
				hp->cline++;
			} else if (hp->cstate == CH_SIZE0) {
				BAD_CHUNK(hp);
			} else if (ch == ';') {
				hp->cstate = CH_EXT;
			} else if (ch == ' ' || ch == '\t') {
				hp->cstate = CH_SIZE_WS;
			} else if (ch == '\r') {
				hp->cstate = CH_SIZE_LF;
			} else {
				BAD_CHUNK(hp);
			}
			break;
		case CH_SIZE_WS:
			if (ch == ';')
				hp->cstate = CH_EXT;
			else if (ch == '\r')
				hp->cstate = CH_SIZE_LF;
			else if (ch != ' ' && ch != '\t')
				BAD_CHUNK(hp);
			break;
		case CH_EXT:
			if (ch == '\r')
				hp->cstate = CH_SIZE_LF;
			else if ((unsigned char)ch < 0x20 && ch != '\t')
				BAD_CHUNK(hp);   /* a bare LF, NUL, ... */
			else if (++hp->cline > CHUNK_LINE_MAX)
				refuse(hp, 400, "chunk extension too long");
			break;
		case CH_SIZE_LF:
			if (ch != '\n') {
				BAD_CHUNK(hp);
			} else if (hp->csize == 0) {
				hp->cstate = CH_TRAILER;
				hp->ctrailer = 0;
			} else {
				if (hp->max_body >= 0 && hp->csize > (uint64_t)hp->max_body) {
					body_too_large(hp);
					return k;
				}
				hp->cstate = CH_DATA;
			}
			break;
		case CH_DATA_CR:
			if (ch != '\r')
				BAD_CHUNK(hp);
			hp->cstate = CH_DATA_LF;
			break;
		case CH_DATA_LF:
			if (ch != '\n')
				BAD_CHUNK(hp);
			hp->cstate = CH_SIZE0;
			hp->csize = 0;
			hp->cline = 0;
			break;
		case CH_TRAILER:
			/* trailer fields are checked for form and dropped */
			if (ch == '\r') {
				hp->cstate = CH_END_LF;
			} else if (ch == ' ' || ch == '\t' || ch == ':' || ch == '\n' || ch == '\0') {
				refuse(hp, 400, "malformed trailer field");
			} else {
				hp->cstate = CH_TLINE;
				hp->cline = 1;
			}
			break;
		case CH_TLINE:
			if (ch == '\r')
				hp->cstate = CH_TLINE_LF;
			else if (ch == '\n' || ch == '\0')
				refuse(hp, 400, "malformed trailer field");
			hp->cline++;
			break;
		case CH_TLINE_LF:
			if (ch != '\n')
				refuse(hp, 400, "malformed trailer field");
			hp->cstate = CH_TRAILER;
			break;
		case CH_END_LF:
			if (ch != '\n') {
				BAD_CHUNK(hp);
				break;
			}
			chunked_done(hp);
			return k;
		}
		if (hp->cstate >= CH_TRAILER && ++hp->ctrailer > hp->max_header) {
			head_too_large(hp, "trailer");
			return k;
		}
	}
	return k;
}

/* An error of http_parser itself, as a status and a message. */
static void lib_error(struct hparse *hp, enum http_errno e)
{
	char why[96];

	switch (e) {
	case HPE_HEADER_OVERFLOW:   /* the library's limit, past any max_header */
		head_too_large(hp, "head");
		break;
	case HPE_INVALID_METHOD:
		refuse(hp, 400, "unknown request method");
		break;
	case HPE_UNEXPECTED_CONTENT_LENGTH:
	case HPE_INVALID_TRANSFER_ENCODING:
		refuse(hp, 400, "conflicting or unsupported Content-Length / Transfer-Encoding");
		break;
	case HPE_INVALID_CONTENT_LENGTH:
		refuse(hp, 400, "invalid Content-Length");
		break;
	case HPE_INVALID_STATUS:
		refuse(hp, 502, "invalid status code");
		break;
	default:
		snprintf(why, sizeof why, "malformed %s: %s", hp->server ? "request" : "response",
			 http_errno_description(e));
		refuse(hp, 400, "%s", why);
	}
}

size_t hparse_feed(struct hparse *hp, const char *p, size_t n)
{
	size_t off = 0;

	while (off < n && !hp->paused && !hp->err_status && !hp->upgraded) {
		size_t k;

		if (hp->cstate != CH_NONE) {
			k = chunk_feed(hp, p + off, n - off);
		} else {
			enum http_errno e;
			hp->feed_start = p + off;
			k = http_parser_execute(&hp->parser, &settings, p + off, n - off);
			if (hp->last_cb == CB_FIELD) {
				/* a name waits for its value: remember a line end after it */
				for (const char *q = hp->field_end ? hp->field_end : p + off; q < p + off + k; q++)
					hp->lf_after_field = hp->lf_after_field || *q == '\n';
			}
			hp->field_end = NULL;   /* it pointed into this piece */
			e = HTTP_PARSER_ERRNO(&hp->parser);
			if (e == HPE_PAUSED)
				http_parser_pause(&hp->parser, 0);
			else if (e != HPE_OK)
				lib_error(hp, e);
			if ((e == HPE_OK || e == HPE_PAUSED) && !hp->in_msg && hp->parser.upgrade)
				hp->upgraded = true;
		}
		if (k > 0)
			hp->prev_byte = p[off + k - 1];
		off += k;
		if (k == 0 && !hp->paused && !hp->err_status && !hp->upgraded && hp->cstate == CH_NONE) {
			lib_error(hp, HPE_UNKNOWN);   /* no progress: never spin */
			break;
		}
	}
	return off;
}

void hparse_eof(struct hparse *hp)
{
	if (!hp->in_msg || hp->cstate != CH_NONE || hp->err_status)
		return;
	hp->paused = false;
	if (HTTP_PARSER_ERRNO(&hp->parser) == HPE_PAUSED)
		http_parser_pause(&hp->parser, 0);
	http_parser_execute(&hp->parser, &settings, NULL, 0);
}

void hparse_init(struct hparse *hp, bool server, const struct hparse_ops *ops, void *arg)
{
	memset(hp, 0, sizeof *hp);
	hp->server = server;
	hp->ops = ops;
	hp->arg = arg;
	hp->max_header = 80 * 1024;
	hp->max_body = -1;
	/* the library's own head limit (80 KiB unless raised; one for the
	 * process) above any max_header: ours is the one a client meets */
	http_parser_set_max_header_size(HPARSE_LIB_MAX_HEADER);
	http_parser_init(&hp->parser, server ? HTTP_REQUEST : HTTP_RESPONSE);
	hp->parser.data = hp;
}

void hparse_free(struct hparse *hp)
{
	free(hp->hbuf);
	free(hp->hoff);
	free(hp->msg.hdrs);
	hp->hbuf = NULL;
	hp->hoff = NULL;
	hp->msg.hdrs = NULL;
	hp->hdrcap = 0;
}

void hparse_limits(struct hparse *hp, size_t max_header, long long max_body)
{
	hp->max_header = max_header;
	hp->max_body = max_body;
}

void hparse_pause(struct hparse *hp, bool pause)
{
	hp->paused = pause;
}

bool hparse_paused(const struct hparse *hp)
{
	return hp->paused;
}

int hparse_error(const struct hparse *hp, const char **why)
{
	if (why)
		*why = hp->err_msg;
	return hp->err_status;
}

bool hparse_upgraded(const struct hparse *hp)
{
	return hp->upgraded;
}

bool hparse_in_message(const struct hparse *hp)
{
	return hp->in_msg;
}

const struct http_msg *hparse_msg(const struct hparse *hp)
{
	return &hp->msg;
}

const char *hparse_target(const struct hparse *hp, size_t *len)
{
	/* the head buffer starts with the target, as far as it was read */
	*len = hp->server && hp->in_msg ? (hp->url_len < hp->hlen ? hp->url_len : hp->hlen) : 0;
	return *len ? hp->hbuf : NULL;
}

/* --- headers --- */

const struct http_hdr *http_find(const struct http_msg *m, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i < m->nhdrs; i++)
		if (m->hdrs[i].nlen == n && strncasecmp(m->hdrs[i].name, name, n) == 0)
			return &m->hdrs[i];
	return NULL;
}
