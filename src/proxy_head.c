/* proxy_head.c - the request head forwarded to the upstream: the
 * client's fields but hop-by-hop ones, X-Forwarded-*, Host, framing. */
#include "proxy_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "http.h"
#include "util.h"

void px_hb_add(struct hbuf *b, const char *s, size_t n)
{
	if (b->n + n > b->cap) {
		size_t cap = (b->n + n) * 2;
		char *q = xmalloc(cap);
		memcpy(q, b->p, b->n);
		if (b->heap)
			free(b->p);
		b->p = q;
		b->cap = cap;
		b->heap = true;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
}

static void hb_str(struct hbuf *b, const char *s)
{
	px_hb_add(b, s, strlen(s));
}

/* "Name: value\r\n" */
void px_hb_field(struct hbuf *b, const char *name, size_t nlen, const char *value, size_t vlen)
{
	if (b->n + nlen + vlen + 4 <= b->cap) {
		char *q = b->p + b->n;
		memcpy(q, name, nlen);
		q += nlen;
		*q++ = ':';
		*q++ = ' ';
		memcpy(q, value, vlen);
		q += vlen;
		*q++ = '\r';
		*q++ = '\n';
		b->n += nlen + vlen + 4;
		return;
	}
	px_hb_add(b, name, nlen);
	HB_LIT(b, ": ");
	px_hb_add(b, value, vlen);
	HB_LIT(b, "\r\n");
}

/* Serialise the request head for the upstream, once, into ex->headbuf
 * (or the heap when it does not fit). No printf: the pieces are copied. */
void px_build_head(struct exchange *ex, struct hconn *down, const struct http_msg *m,
		   const char *path, size_t plen)
{
	struct hbuf b = {.p = ex->headbuf, .cap = sizeof ex->headbuf};
	const struct http_hdr *xff = NULL, *xfp = NULL, *xfh = NULL, *host = NULL, *upg = NULL;

	hb_str(&b, m->method_str);
	HB_LIT(&b, " ");
	px_hb_add(&b, path, plen);
	HB_LIT(&b, " HTTP/1.1\r\n");
	for (size_t k = 0; k < m->nhdrs; k++) {
		const struct http_hdr *h = &m->hdrs[k];
		const char *n = h->name;
		size_t len = h->nlen;
		if (NAME_IS(n, len, "x-forwarded-for"))
			xff = h;
		else if (NAME_IS(n, len, "x-forwarded-proto"))
			xfp = h;
		else if (NAME_IS(n, len, "x-forwarded-host"))
			xfh = h;
		else if (NAME_IS(n, len, "upgrade"))
			upg = h;
		else if (NAME_IS(n, len, "x-slurmgate-wait"))
			continue;
		else if (ex->feedback && NAME_IS(n, len, "accept-encoding"))
			continue;   /* identity, below */
		else if (!ex->trust_fwd && (NAME_IS(n, len, "forwarded") || NAME_IS(n, len, "x-real-ip") ||
					    NAME_IS(n, len, "x-forwarded-port") ||
					    NAME_IS(n, len, "x-forwarded-prefix") ||
					    NAME_IS(n, len, "x-forwarded-server")))
			continue;   /* a client's claims, not a proxy's */
		else if (NAME_IS(n, len, "x-original-url") || NAME_IS(n, len, "x-rewrite-url"))
			continue;   /* path overrides some frameworks obey: around api_paths */
		else if (ex->strip_auth && NAME_IS(n, len, "authorization"))
			continue;
		if (NAME_IS(n, len, "host"))
			host = h;
		if (h == xff || h == xfp || h == xfh || http_hop_by_hop(h, m))
			continue;
		px_hb_field(&b, n, len, h->value, h->vlen);
	}
	if (!ex->trust_fwd)
		xff = xfp = xfh = NULL;   /* replaced, never passed on */
	HB_LIT(&b, "X-Forwarded-For: ");
	if (xff) {
		px_hb_add(&b, xff->value, xff->vlen);
		HB_LIT(&b, ", ");
	}
	hb_str(&b, http_peer(down));
	HB_LIT(&b, "\r\n");
	if (xfp)
		px_hb_field(&b, "X-Forwarded-Proto", 17, xfp->value, xfp->vlen);
	else
		HB_LIT(&b, "X-Forwarded-Proto: http\r\n");
	if (xfh)
		px_hb_field(&b, "X-Forwarded-Host", 16, xfh->value, xfh->vlen);
	else if (host)
		px_hb_field(&b, "X-Forwarded-Host", 16, host->value, host->vlen);
	if (!host) {
		const char *lh = service_config(ex->svc)->local_host;
		px_hb_field(&b, "Host", 4, lh, strlen(lh));
	}
	/* a stream's head may go out early (cold-start feedback), without the
	 * service's Content-Encoding: its body must come as it is */
	if (ex->feedback)
		HB_LIT(&b, "Accept-Encoding: identity\r\n");
	if (m->upgrade && upg) {
		HB_LIT(&b, "Connection: upgrade\r\n");
		px_hb_field(&b, "Upgrade", 7, upg->value, upg->vlen);
		ex->upgrade = true;
	}
	if (m->chunked) {
		HB_LIT(&b, "Transfer-Encoding: chunked\r\n");
	} else if (m->content_length >= 0) {
		char num[32];
		int n = snprintf(num, sizeof num, "%lld", m->content_length);
		px_hb_field(&b, "Content-Length", 14, num, (size_t)n);
	}
	HB_LIT(&b, "\r\n");
	ex->head = b.p;
	ex->headlen = b.n;
}
