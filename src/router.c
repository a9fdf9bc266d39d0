/* router.c - one route resolver for /<route>/... and /v1/..., api_paths on
 * segment boundaries, trusted proxies, allowed hosts, the /v1 model.
 *
 * The resolver follows nginx (ngx_http_parse_complex_uri and proxy_pass
 * with a URI): decode percent-encoding once, remove dot segments, then
 * match and forward the normalised path. Where nginx accepts something
 * that back ends are known to read differently (an encoded '/', a
 * backslash, "..;", overlong UTF-8), we refuse it with a 400 that names it:
 * HAProxy's and Envoy's path normalisation options refuse these too. */
#include "router.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "util.h"

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Bytes that go out as they are in a path (RFC 3986 pchar minus '%', plus '/'). */
static const unsigned char plain_bytes[256] = {
	['a' ... 'z'] = 1, ['A' ... 'Z'] = 1, ['0' ... '9'] = 1,
	['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1,
	['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1, [':'] = 1,
	['@'] = 1, ['/'] = 1,
};

static inline bool path_char_plain(unsigned char c)
{
	return plain_bytes[c];
}

/* A path of plain bytes only (most are) decodes and encodes to itself. */
static bool path_plain(const char *p, size_t n)
{
	for (size_t k = 0; k < n; k++)
		if (!path_char_plain((unsigned char)p[k]))
			return false;
	return true;
}

/* Overlong UTF-8 (C0/C1 leads, E0 80-9F, F0 80-8F) or a lead byte beyond
 * U+10FFFF: the tricks that spell '/' or '.' in more bytes. */
static bool overlong_utf8(const unsigned char *p, size_t n)
{
	for (size_t k = 0; k < n; k++) {
		unsigned char c = p[k], d = k + 1 < n ? p[k + 1] : 0;
		if (c == 0xC0 || c == 0xC1 || c >= 0xF5)
			return true;
		if (c == 0xE0 && d >= 0x80 && d < 0xA0)
			return true;
		if (c == 0xF0 && d >= 0x80 && d < 0x90)
			return true;
	}
	return false;
}

/* Decode the path P (N bytes) once into OUT (at least N+1 bytes). */
static int decode_path(const char *p, size_t n, char *out, size_t *olen, const char **cause)
{
	size_t o = 0;

	for (size_t k = 0; k < n; k++) {
		unsigned char c = (unsigned char)p[k];
		if (c == '%') {
			int hi = k + 2 < n ? hexval((unsigned char)p[k + 1]) : -1;
			int lo = k + 2 < n ? hexval((unsigned char)p[k + 2]) : -1;
			if (hi < 0 || lo < 0) {
				*cause = "bad percent-encoding in the path";
				return -1;
			}
			c = (unsigned char)(hi * 16 + lo);
			k += 2;
			if (c == '/') {
				*cause = "an encoded '/' (%2F) in the path is refused";
				return -1;
			}
			if (c == '\\') {
				*cause = "an encoded '\\' (%5C) in the path is refused";
				return -1;
			}
			if (c == 0) {
				*cause = "an encoded NUL (%00) in the path is refused";
				return -1;
			}
		} else if (c == '\\') {
			*cause = "a '\\' in the path is refused";
			return -1;
		} else if (c < 0x20 || c == 0x7f) {
			*cause = "a control character in the path is refused";
			return -1;
		}
		out[o++] = (char)c;
	}
	out[o] = '\0';
	*olen = o;
	if (overlong_utf8((const unsigned char *)out, o)) {
		*cause = "overlong UTF-8 in the path is refused";
		return -1;
	}
	return 0;
}

static bool seg_is(const char *s, size_t n, const char *lit)
{
	return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

/* Remove dot segments from the decoded path D (starts with '/') in place. */
static int remove_dots(char *d, size_t *dlen, const char **cause)
{
	size_t n = *dlen, o = 0, k = 1;
	size_t *starts, depth = 0;   /* output segment starts */
	char *out;

	/* a dot segment ("." or "..", alone or before ';') starts with "/.":
	 * most paths have none and are left as they are */
	for (const char *p = d; (p = memchr(p, '.', n - (size_t)(p - d))) != NULL; p++)
		if (p > d && p[-1] == '/')
			goto dots;
	return 0;
dots:
	starts = xmalloc((n + 1) * sizeof *starts);
	out = xmalloc(n + 2);

	out[o++] = '/';
	while (k <= n) {
		const char *s = d + k;
		const char *e = memchr(s, '/', n - k);
		size_t sl = e ? (size_t)(e - s) : n - k;
		bool last = e == NULL;
		const char *semi = memchr(s, ';', sl);
		size_t bl = semi ? (size_t)(semi - s) : sl;

		if (semi && (seg_is(s, bl, ".") || seg_is(s, bl, ".."))) {
			*cause = "a dot segment with parameters (\"..;\") in the path is refused";
			free(starts);
			free(out);
			return -1;
		}
		if (seg_is(s, sl, ".")) {
			/* nothing: a last "." leaves the '/' before it */
		} else if (seg_is(s, sl, "..")) {
			if (depth == 0) {
				*cause = "the path climbs above the root with \"..\"";
				free(starts);
				free(out);
				return -1;
			}
			o = starts[--depth];
		} else {
			starts[depth++] = o;
			memcpy(out + o, s, sl);
			o += sl;
			if (!last)
				out[o++] = '/';
		}
		if (last)
			break;
		k += sl + 1;
	}
	out[o] = '\0';
	memcpy(d, out, o + 1);
	*dlen = o;
	free(starts);
	free(out);
	return 0;
}

/* Encode the decoded path D for the upstream into OUT (at least 3N+1 bytes). */
static size_t encode_path(const char *d, size_t n, char *out)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (size_t k = 0; k < n; k++) {
		unsigned char c = (unsigned char)d[k];
		if (path_char_plain(c)) {
			out[o++] = (char)c;
		} else {
			out[o++] = '%';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
	return o;
}

int router_resolve(const char *t, size_t len, struct route_target *rt, const char **cause)
{
	const char *path = t, *q, *end = t + len;
	size_t plen, qlen;
	char *block;

	memset(rt, 0, sizeof *rt);
	/* origin-form only: http_parse.c made an absolute-form target one (its
	 * authority became Host), so there is one place that reads authorities */
	{
		/* a fragment never goes to a server: drop it */
		const char *h = memchr(path, '#', (size_t)(end - path));
		if (h)
			end = h;
	}
	q = memchr(path, '?', (size_t)(end - path));
	plen = (size_t)((q ? q : end) - path);
	qlen = q ? (size_t)(end - q) : 0;
	if (plen == 0 || path[0] != '/') {
		*cause = "the request target must be a path starting with '/'";
		return -1;
	}
	/* one block: the decoded path, the encoded one (at most 3x), the query */
	block = xmalloc((plen + 1) + (3 * plen + 1) + (qlen + 1));
	rt->dpath = block;
	rt->path = block + plen + 1;
	if (path_plain(path, plen)) {
		memcpy(rt->dpath, path, plen);
		rt->dpath[plen] = '\0';
		rt->dlen = plen;
	} else if (decode_path(path, plen, rt->dpath, &rt->dlen, cause) != 0) {
		router_target_free(rt);
		return -1;
	}
	if (remove_dots(rt->dpath, &rt->dlen, cause) != 0) {
		router_target_free(rt);
		return -1;
	}
	if (path_plain(rt->dpath, rt->dlen)) {
		memcpy(rt->path, rt->dpath, rt->dlen + 1);
		rt->plen = rt->dlen;
	} else {
		rt->plen = encode_path(rt->dpath, rt->dlen, rt->path);
	}
	if (q) {
		rt->query = rt->path + 3 * plen + 1;
		rt->qlen = qlen;
		memcpy(rt->query, q, qlen);
		rt->query[qlen] = '\0';
	}
	return 0;
}

void router_target_free(struct route_target *rt)
{
	free(rt->dpath);   /* the block: path and query are in it */
	memset(rt, 0, sizeof *rt);
}

void router_split(const struct route_target *rt, const char **seg, size_t *seglen,
		  const char **rest, size_t *restlen, const char **drest, size_t *drestlen)
{
	const char *e = memchr(rt->path + 1, '/', rt->plen - 1);
	const char *de = memchr(rt->dpath + 1, '/', rt->dlen - 1);

	/* an encoded '/' is refused, so both have their slashes at the same segments */
	*seg = rt->dpath + 1;
	*seglen = de ? (size_t)(de - rt->dpath - 1) : rt->dlen - 1;
	*rest = e ? e : rt->path + rt->plen;
	*restlen = e ? rt->plen - (size_t)(e - rt->path) : 0;
	*drest = de ? de : rt->dpath + rt->dlen;
	*drestlen = de ? rt->dlen - (size_t)(de - rt->dpath) : 0;
}

bool router_path_allowed(const char *p, size_t n, char *const *api_paths)
{
	if (api_paths == NULL)
		return true;
	for (char *const *ap = api_paths; *ap; ap++) {
		size_t al = strlen(*ap);
		if (n < al || memcmp(p, *ap, al) != 0)
			continue;
		if (n == al || (*ap)[al - 1] == '/' || p[al] == '/')
			return true;
	}
	return false;
}

/* --- peers and hosts --- */

int router_cidr_parse(const char *s, struct cidr *out, const char **cause)
{
	char buf[64];
	const char *slash = strchr(s, '/');
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);
	int max;

	memset(out, 0, sizeof *out);
	if (alen == 0 || alen >= sizeof buf) {
		*cause = "must be an IP address or CIDR block (\"10.0.0.0/8\", \"::1\")";
		return -1;
	}
	memcpy(buf, s, alen);
	buf[alen] = '\0';
	if (inet_pton(AF_INET, buf, out->addr) == 1)
		out->family = AF_INET, max = 32;
	else if (inet_pton(AF_INET6, buf, out->addr) == 1)
		out->family = AF_INET6, max = 128;
	else {
		*cause = "must be an IP address or CIDR block (\"10.0.0.0/8\", \"::1\")";
		return -1;
	}
	out->bits = max;
	if (slash) {
		char *e;
		long b = strtol(slash + 1, &e, 10);
		if (slash[1] == '\0' || *e != '\0' || b < 0 || b > max) {
			*cause = "has a bad prefix length";
			return -1;
		}
		out->bits = (int)b;
	}
	return 0;
}

static bool prefix_eq(const unsigned char *a, const unsigned char *b, int bits)
{
	int whole = bits / 8, rest = bits % 8;

	if (memcmp(a, b, (size_t)whole) != 0)
		return false;
	if (rest == 0)
		return true;
	unsigned char mask = (unsigned char)(0xFF << (8 - rest));
	return (a[whole] & mask) == (b[whole] & mask);
}

bool router_cidr_match(const struct cidr *v, size_t n, const struct sockaddr *sa)
{
	unsigned char a4[4], a6[16];
	bool has4 = false, has6 = false;

	if (sa == NULL)
		return false;
	if (sa->sa_family == AF_INET) {
		memcpy(a4, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		has4 = true;
	} else if (sa->sa_family == AF_INET6) {
		memcpy(a6, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
		has6 = true;
		if (IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)a6)) {
			memcpy(a4, a6 + 12, 4);
			has4 = true;
		}
	}
	for (size_t k = 0; k < n; k++) {
		if (v[k].family == AF_INET && has4 && prefix_eq(a4, v[k].addr, v[k].bits))
			return true;
		if (v[k].family == AF_INET6 && has6 && prefix_eq(a6, v[k].addr, v[k].bits))
			return true;
	}
	return false;
}

/* Split "name[:port]" / "[v6][:port]" into name and port parts. */
static void host_parts(const char *h, size_t len, const char **name, size_t *nlen,
		       const char **port, size_t *portlen)
{
	const char *colon = NULL;

	if (len > 0 && h[0] == '[') {
		const char *rb = memchr(h, ']', len);
		size_t e = rb ? (size_t)(rb - h) + 1 : len;
		*name = h;
		*nlen = e;
		colon = e < len && h[e] == ':' ? h + e : NULL;
	} else {
		colon = memchr(h, ':', len);
		*name = h;
		*nlen = colon ? (size_t)(colon - h) : len;
	}
	*port = colon ? colon + 1 : NULL;
	*portlen = colon ? len - (size_t)(colon + 1 - h) : 0;
}

bool router_host_allowed(const char *h, size_t len, char *const *allowed)
{
	const char *name, *port;
	size_t nlen, portlen;

	if (allowed == NULL)
		return true;
	while (len > 0 && h[len - 1] == '.')   /* "example.org." is "example.org" */
		len--;
	host_parts(h, len, &name, &nlen, &port, &portlen);
	for (char *const *a = allowed; *a; a++) {
		const char *an, *ap;
		size_t anl, apl;
		host_parts(*a, strlen(*a), &an, &anl, &ap, &apl);
		if (anl != nlen || strncasecmp(an, name, nlen) != 0)
			continue;
		if (ap == NULL || (port && apl == portlen && memcmp(ap, port, apl) == 0))
			return true;
	}
	return false;
}

bool router_authority(const char *v, size_t len, const char **a, size_t *alen)
{
	const char *p = memmem(v, len, "://", 3), *e;

	if (p == NULL)
		return false;
	p += 3;
	e = p;
	while (e < v + len && *e != '/' && *e != '?' && *e != '#')
		e++;
	if (e == p)
		return false;
	*a = p;
	*alen = (size_t)(e - p);
	return true;
}

/* --- the /v1 body --- */

/* Bodies up to this size are parsed whole (every byte checked); past it,
 * only their top level is scanned: jansson parses some 70 MB/s on the
 * event loop, so a 30 MB vision request stalled every stream for 0.4 s. */
#define V1_PARSE_MAX (1024 * 1024)

static size_t json_ws(const char *p, size_t n, size_t i)
{
	while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
		i++;
	return i;
}

/* The end of the JSON string that opens at P[I] (the index after its
 * closing quote), or 0 if it does not end. */
static size_t json_str_end(const char *p, size_t n, size_t i)
{
	for (i++; i < n;) {
		const char *q = memchr(p + i, '"', n - i);
		size_t k, bs = 0;

		if (q == NULL)
			return 0;
		k = (size_t)(q - p);
		while (bs < k - i && p[k - 1 - bs] == '\\')
			bs++;
		if (bs % 2 == 0)
			return k + 1;
		i = k + 1;   /* an escaped quote */
	}
	return 0;
}

/* The string token P[A..B) (quotes included), decoded; NULL if invalid. */
static json_t *json_str_decode(const char *p, size_t a, size_t b)
{
	return json_loadb(p + a, b - a, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
}

/* Is the key token P[A..B) NAME (escapes decoded)? */
static bool json_key_is(const char *p, size_t a, size_t b, const char *name)
{
	size_t l = strlen(name);
	json_t *k;
	bool is;

	if (memchr(p + a, '\\', b - a) == NULL)
		return b - a == l + 2 && memcmp(p + a + 1, name, l) == 0;
	k = json_str_decode(p, a, b);
	is = json_is_string(k) && json_string_length(k) == l && memcmp(json_string_value(k), name, l) == 0;
	json_decref(k);
	return is;
}

enum v1_result router_v1_scan(const char *p, size_t n, char **model, bool *stream)
{
	size_t i = json_ws(p, n, 0), depth = 1;
	bool key = true, seen_model = false, seen_stream = false;
	json_t *m = NULL;

	*model = NULL;
	*stream = false;
	if (i == n || p[i] != '{')
		return V1_NOT_OBJECT;
	for (i++; i < n;) {
		char c = p[i];
		size_t e;

		if (c == '{' || c == '[') {
			depth++;
		} else if (c == '}' || c == ']') {
			if (--depth == 0)
				break;
		} else if (c == ',' && depth == 1) {
			key = true;
		} else if (c == '"') {
			if ((e = json_str_end(p, n, i)) == 0)
				goto bad;
			if (depth > 1 || !key) {
				i = e;   /* a value, or deeper */
				continue;
			}
			/* a member of the body: its key, ":", its value */
			bool is_model = json_key_is(p, i, e, "model"), is_stream = json_key_is(p, i, e, "stream");
			i = json_ws(p, n, e);
			if (i == n || p[i] != ':')
				goto bad;
			i = json_ws(p, n, i + 1);
			key = false;
			/* a duplicate: which one would the service take? */
			if ((is_model && seen_model) || (is_stream && seen_stream))
				goto bad;
			seen_model |= is_model;
			seen_stream |= is_stream;
			if (is_stream)
				*stream = n - i >= 4 && memcmp(p + i, "true", 4) == 0;
			if (is_model && i < n && p[i] == '"') {
				if ((e = json_str_end(p, n, i)) == 0 || (m = json_str_decode(p, i, e)) == NULL)
					goto bad;
				i = e;
			}
			continue;
		}
		i++;
	}
	if (i >= n || json_ws(p, n, i + 1) != n)
		goto bad;   /* cut short, or more after the object */
	if (!json_is_string(m) || strlen(json_string_value(m)) != json_string_length(m)) {
		json_decref(m);
		*stream = false;
		return V1_NO_MODEL;
	}
	*model = xstrndup(json_string_value(m), json_string_length(m));
	json_decref(m);
	return V1_OK;
bad:
	json_decref(m);
	*stream = false;
	return V1_NOT_OBJECT;
}

enum v1_result router_v1_model(const char *body, size_t n, char **model, bool *stream)
{
	json_error_t jerr;
	json_t *o, *m;

	*model = NULL;
	*stream = false;
	if (n == 0)
		return V1_NO_BODY;
	if (n > V1_PARSE_MAX)
		return router_v1_scan(body, n, model, stream);
	/* any JSON a Python service (json.loads) takes: a prompt may hold a
	 * NUL ("\u0000"), a field an integer past 64 bits (only "model" and
	 * "stream" are read here; the body goes on as it came) */
	o = json_loadb(body, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL,
		       &jerr);
	if (o == NULL || !json_is_object(o)) {
		json_decref(o);
		return V1_NOT_OBJECT;
	}
	m = json_object_get(o, "model");
	/* a model name with a NUL in it names no service: never its prefix */
	if (!json_is_string(m) || strlen(json_string_value(m)) != json_string_length(m)) {
		json_decref(o);
		return V1_NO_MODEL;
	}
	*model = xstrndup(json_string_value(m), json_string_length(m));
	*stream = json_is_true(json_object_get(o, "stream"));
	json_decref(o);
	return V1_OK;
}

/* --- a multipart/form-data /v1 body --- */

enum { F_SKIP, F_AFTER, F_AFTER_LF, F_AFTER_DASH, F_HDR, F_VAL, F_DONE };

/* The parameter NAME (";"-separated, case-insensitive, maybe quoted) of a
 * header value V: its value into OUT (NUL-terminated). */
static bool header_param(const char *v, size_t n, const char *name, char *out, size_t outlen)
{
	size_t nl = strlen(name), k = 0;

	while (k < n) {
		size_t e = k, o = 0;
		while (e < n && v[e] != ';')
			e++;
		while (k < e && (v[k] == ' ' || v[k] == '\t'))
			k++;
		if (e - k > nl && strncasecmp(v + k, name, nl) == 0 && v[k + nl] == '=') {
			const char *p = v + k + nl + 1, *end = v + e;
			bool q = p < end && *p == '"';
			if (q) {
				p++;
				end = memchr(p, '"', (size_t)(v + n - p));
				if (end == NULL)
					return false;
			}
			while (end > p && !q && (end[-1] == ' ' || end[-1] == '\t'))
				end--;
			for (; p < end && o + 1 < outlen; p++)
				out[o++] = *p;
			out[o] = '\0';
			return p == end;
		}
		k = e + 1;
	}
	return false;
}

int router_form_start(struct form_scan *s, const char *ct, size_t len)
{
	char b[80];

	memset(s, 0, sizeof *s);
	if (len < 19 || strncasecmp(ct, "multipart/form-data", 19) != 0 ||
	    (len > 19 && ct[19] != ';' && ct[19] != ' '))
		return -1;
	if (!header_param(ct + 19, len - 19, "boundary", b, sizeof b) || b[0] == '\0' ||
	    strlen(b) > 70 || strpbrk(b, "\r\n") != NULL)
		return -1;
	s->dlen = (size_t)snprintf(s->delim, sizeof s->delim, "\r\n--%s", b);
	s->match = 2;   /* the first delimiter has no CRLF before it */
	s->state = F_SKIP;
	return 0;
}

/* One byte against the delimiter; true when it is complete. Its '\r'
 * comes only first (a boundary holds no CR), so a mismatch restarts at 0,
 * or at 1 on a '\r'. */
static bool delim_step(struct form_scan *s, char ch)
{
	if (ch == s->delim[s->match])
		s->match++;
	else
		s->match = ch == '\r' ? 1 : 0;
	if (s->match < s->dlen)
		return false;
	s->match = 0;
	return true;
}

/* A part's headers are complete: is it the "model" field? */
static bool part_is_model(const struct form_scan *s)
{
	const char *h = s->hdr, *end = s->hdr + s->hlen;
	char name[64];

	while (h < end) {
		const char *eol = memmem(h, (size_t)(end - h), "\r\n", 2);
		if (eol == NULL)
			eol = end;
		if ((size_t)(eol - h) > 20 && strncasecmp(h, "content-disposition:", 20) == 0)
			return header_param(h + 20, (size_t)(eol - h - 20), "name", name, sizeof name) &&
			       strcmp(name, "model") == 0;
		h = eol + 2;
	}
	return false;
}

enum form_result router_form_feed(struct form_scan *s, const char *p, size_t n, char **model)
{
	for (size_t k = 0; k < n; k++) {
		char ch = p[k];

		switch (s->state) {
		case F_SKIP:
			if (s->match == 0) {   /* to the next possible delimiter at once */
				const char *cr = memchr(p + k, '\r', n - k);
				if (cr == NULL)
					return FORM_MORE;
				k = (size_t)(cr - p);
				ch = '\r';
			}
			if (delim_step(s, ch))
				s->state = F_AFTER;
			break;
		case F_AFTER:
			if (ch == '-')
				s->state = F_AFTER_DASH;
			else if (ch == '\r')
				s->state = F_AFTER_LF;
			else if (ch != ' ' && ch != '\t')
				return FORM_BAD;
			break;
		case F_AFTER_DASH:
			return ch == '-' ? FORM_NO_MODEL : FORM_BAD;   /* the closing delimiter */
		case F_AFTER_LF:
			if (ch != '\n')
				return FORM_BAD;
			s->state = F_HDR;
			s->hlen = 0;
			break;
		case F_HDR:
			if (s->hlen == sizeof s->hdr)
				return FORM_BAD;
			s->hdr[s->hlen++] = ch;
			if (s->hlen >= 2 && memcmp(s->hdr + s->hlen - 2, "\r\n", 2) == 0 &&
			    (s->hlen == 2 || (s->hlen >= 4 && memcmp(s->hdr + s->hlen - 4, "\r\n", 2) == 0))) {
				s->hlen -= 2;   /* the empty line */
				s->match = 0;
				s->vlen = 0;
				s->state = part_is_model(s) ? F_VAL : F_SKIP;
			}
			break;
		case F_VAL:
			if (s->vlen == sizeof s->val)
				return FORM_BAD;
			s->val[s->vlen++] = ch;
			if (delim_step(s, ch)) {
				s->state = F_DONE;
				*model = xstrndup(s->val, s->vlen - s->dlen);
				return FORM_OK;
			}
			break;
		default:
			return FORM_BAD;
		}
	}
	return FORM_MORE;
}
