/* router.h - the one route resolver for /<route>/... and /v1/..., and the
 * access-control helpers that go with it (api_paths, trusted proxies,
 * allowed hosts, the /v1 body's model).
 *
 * Pure functions on bytes: no sockets, no globals, so that the fuzz
 * targets (tests/fuzz/fuzz_router.c, fuzz_v1model.c) call them directly. */
#ifndef SG_ROUTER_H
#define SG_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* A request target after router_resolve().
 *
 * The path is percent-decoded once, its dot segments removed (RFC 3986
 * 5.2.4) and encoded again the way nginx does for a URI in proxy_pass:
 * unreserved characters, sub-delims, ':', '@' and '/' as they are,
 * everything else as %XX. Double slashes are kept. */
struct route_target {
	char *path;        /* normalised and re-encoded, starts with '/' */
	size_t plen;
	char *dpath;       /* normalised and decoded, NUL-terminated; never holds
	                    * NUL, '\\' or an encoded '/' (malloc'd: the block that
	                    * also holds path and query) */
	size_t dlen;
	char *query;       /* "?..." as sent (a copy), or NULL */
	size_t qlen;
};

/* Resolve the request target T (LEN bytes, origin-form: the parser turns an
 * absolute-form target into one, its authority into Host).
 * Returns 0 and fills *RT (free with router_target_free), or -1 with a
 * client-facing reason in *CAUSE (static string; the answer is a 400). */
int router_resolve(const char *t, size_t len, struct route_target *rt, const char **cause);
void router_target_free(struct route_target *rt);

/* The first segment of a resolved path and what follows it:
 * "/llm/a/b" -> seg "llm", rest "/a/b" (encoded) and drest "/a/b" (decoded). */
void router_split(const struct route_target *rt, const char **seg, size_t *seglen,
		  const char **rest, size_t *restlen, const char **drest, size_t *drestlen);

/* Does api_paths (NULL-terminated; NULL: everything) allow the decoded,
 * normalised path P? On segment boundaries: "/allowed" allows "/allowed"
 * and "/allowed/x", never "/allowedsecret"; an entry ending in '/' allows
 * everything below it. */
bool router_path_allowed(const char *p, size_t n, char *const *api_paths);

/* --- peers and hosts --- */

/* One address or CIDR block ("10.0.0.0/8", "::1", "127.0.0.1"). */
struct cidr {
	int family;              /* AF_INET or AF_INET6 */
	unsigned char addr[16];
	int bits;
};

/* Parse S as an address or CIDR. Returns 0, or -1 with *CAUSE. */
int router_cidr_parse(const char *s, struct cidr *out, const char **cause);
/* Is the peer SA inside one of the N blocks? (v4-mapped v6 counts as v4) */
bool router_cidr_match(const struct cidr *v, size_t n, const struct sockaddr *sa);

/* Does the Host header value H (LEN bytes, "name[:port]") match one of
 * ALLOWED (NULL-terminated)? An entry without a port matches any port;
 * names compare case-insensitively. NULL list: every host. */
bool router_host_allowed(const char *h, size_t len, char *const *allowed);

/* The authority ("host[:port]") of an Origin or Referer value: *A and
 * *ALEN, or false if it has none ("null", garbage). */
bool router_authority(const char *v, size_t len, const char **a, size_t *alen);

/* --- the /v1 body --- */

enum v1_result {
	V1_OK,
	V1_NO_BODY,       /* empty body */
	V1_NOT_OBJECT,    /* not JSON, or not an object */
	V1_NO_MODEL,      /* no "model" string */
};

/* Find the "model" of an OpenAI-style JSON body. On V1_OK, *MODEL is a
 * malloc'd NUL-terminated copy and *STREAM says whether "stream" is true. */
enum v1_result router_v1_model(const char *body, size_t n, char **model, bool *stream);
/* The same from the body's top level only (what router_v1_model does past
 * 1 MiB): the members' values are skipped, not checked; a duplicate
 * "model" or "stream" is V1_NOT_OBJECT, as is a body cut short. */
enum v1_result router_v1_scan(const char *body, size_t n, char **model, bool *stream);

/* --- a multipart/form-data /v1 body (OpenAI's /v1/audio/...) --- */

/* A streaming scan for the "model" field of a multipart/form-data body
 * (RFC 7578), fed in pieces as they arrive. It keeps one part's headers
 * and the model's value, never the other fields (the audio file). */
struct form_scan {
	char delim[80];          /* "\r\n--" and the boundary */
	size_t dlen, match;      /* its length, and how much of it matched */
	int state;
	char hdr[2048];          /* the current part's headers */
	size_t hlen;
	char val[256 + 80];      /* the model's value, then the delimiter */
	size_t vlen;
};

enum form_result {
	FORM_MORE,       /* not found yet: feed more */
	FORM_OK,         /* *MODEL is the field's value (malloc'd) */
	FORM_NO_MODEL,   /* the body ended without a "model" field */
	FORM_BAD,        /* not a well-formed form, or a field too long */
};

/* Start a scan for the Content-Type value CT (LEN bytes). -1 if it is not
 * multipart/form-data with a valid boundary. */
int router_form_start(struct form_scan *s, const char *ct, size_t len);
/* Feed the next N bytes of the body. */
enum form_result router_form_feed(struct form_scan *s, const char *p, size_t n, char **model);

#endif
