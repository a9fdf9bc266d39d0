/* http_header.c - what a header field means for forwarding: which ones
 * are hop-by-hop (never passed on). Parsing is http_parse.c's. */
#include "http_parse.h"

#include <string.h>
#include <strings.h>

/* NAME (N bytes) is the literal LIT, ignoring case: the length first. */
#define NAME_IS(name, n, lit) ((n) == sizeof(lit) - 1 && strncasecmp((name), (lit), sizeof(lit) - 1) == 0)

/* Is NAME listed in a Connection header of M? */
static bool connection_lists(const struct http_msg *m, const char *name, size_t nlen)
{
	for (size_t i = 0; i < m->nhdrs; i++) {
		const char *v, *end;
		if (!NAME_IS(m->hdrs[i].name, m->hdrs[i].nlen, "connection"))
			continue;
		v = m->hdrs[i].value;
		end = v + m->hdrs[i].vlen;
		while (v < end) {
			const char *tok;
			size_t tlen;
			while (v < end && (*v == ' ' || *v == ',' || *v == '\t'))
				v++;
			tok = v;
			while (v < end && *v != ',' && *v != ' ' && *v != '\t')
				v++;
			tlen = (size_t)(v - tok);
			if (tlen == nlen && strncasecmp(tok, name, nlen) == 0)
				return true;
		}
	}
	return false;
}

bool http_hop_by_hop(const struct http_hdr *h, const struct http_msg *m)
{
	const char *n = h->name;
	size_t len = h->nlen;
	bool hop;

	/* connection, keep-alive, proxy-connection, te, trailer,
	 * transfer-encoding, upgrade, content-length, expect,
	 * proxy-authenticate, proxy-authorization: by length first */
	switch (len) {
	case 2: hop = NAME_IS(n, len, "te"); break;
	case 4:
		/* Connection may name extensions, never Host (nor the framing,
		 * which is hop-by-hop here and re-added by whoever forwards the
		 * message) */
		if (NAME_IS(n, len, "host"))
			return false;
		hop = false;
		break;
	case 6: hop = NAME_IS(n, len, "expect"); break;
	case 7: hop = NAME_IS(n, len, "trailer") || NAME_IS(n, len, "upgrade"); break;
	case 10: hop = NAME_IS(n, len, "connection") || NAME_IS(n, len, "keep-alive"); break;
	case 14: hop = NAME_IS(n, len, "content-length"); break;
	case 16: hop = NAME_IS(n, len, "proxy-connection"); break;
	case 17: hop = NAME_IS(n, len, "transfer-encoding"); break;
	case 18: hop = NAME_IS(n, len, "proxy-authenticate"); break;
	case 19: hop = NAME_IS(n, len, "proxy-authorization"); break;
	default: hop = false;
	}
	return hop || connection_lists(m, n, len);
}
