/* fuzz_router.c - libFuzzer target for the route resolver (src/router.c).
 *
 * Input: an arbitrary request target. Checks, besides memory safety, the
 * resolver's promises: a resolved path starts with '/', has no dot
 * segments, no NUL, '\\' or "%2F" in its decoded form, no raw control bytes,
 * re-encodes only what must be encoded, and resolving it again gives the
 * same path (idempotent). The first-segment split and the api_paths and
 * host matchers run on every input too. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

static char *const api_paths[] = {"/allowed", "/dir/", "/", NULL};
static char *const api_paths2[] = {"/allowed", "/v1/chat/completions", NULL};
static char *const hosts[] = {"example.org", "gw.example:8443", "[::1]", NULL};

static void check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz_router: %s\n", what);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct route_target rt, again;
	const char *cause, *seg, *rest, *drest, *a;
	size_t seglen, restlen, drestlen, alen;

	(void)router_host_allowed((const char *)data, size, hosts);
	(void)router_authority((const char *)data, size, &a, &alen);
	if (router_resolve((const char *)data, size, &rt, &cause) != 0) {
		check(cause != NULL && cause[0] != '\0', "a refusal without a reason");
		return 0;
	}
	check(rt.plen > 0 && rt.path[0] == '/', "path does not start with '/'");
	check(rt.dlen > 0 && rt.dpath[0] == '/', "decoded path does not start with '/'");
	check(strlen(rt.path) == rt.plen && strlen(rt.dpath) == rt.dlen, "lengths disagree");
	check(strchr(rt.dpath, '\\') == NULL, "backslash in the decoded path");
	/* control bytes may be there decoded (%0A), but never go out raw */
	for (size_t k = 0; k < rt.plen; k++)
		check((unsigned char)rt.path[k] > 0x20 && (unsigned char)rt.path[k] < 0x7f,
		      "a raw control, space or non-ASCII byte in the forwarded path");
	check(strstr(rt.dpath, "/../") == NULL && strstr(rt.dpath, "/./") == NULL, "dot segment left");
	check(!(rt.dlen >= 3 && strcmp(rt.dpath + rt.dlen - 3, "/..") == 0), "trailing ..");
	check(!(rt.dlen >= 2 && strcmp(rt.dpath + rt.dlen - 2, "/.") == 0), "trailing .");
	for (size_t k = 0; k < rt.plen; k++)
		check(rt.path[k] != '?' && rt.path[k] != '#' && rt.path[k] != ' ', "unencoded ? # or SP");
	if (rt.query)
		check(rt.qlen > 0 && rt.query[0] == '?', "query does not start with '?'");
	router_split(&rt, &seg, &seglen, &rest, &restlen, &drest, &drestlen);
	check(seg == rt.dpath + 1 && seglen < rt.dlen, "bad segment");
	check(restlen == 0 || rest[0] == '/', "rest does not start with '/'");
	check(drestlen == 0 || drest[0] == '/', "decoded rest does not start with '/'");
	check((restlen == 0) == (drestlen == 0), "rest and decoded rest disagree");
	(void)router_path_allowed(rt.dpath, rt.dlen, api_paths);
	if (router_path_allowed(rt.dpath, rt.dlen, api_paths2) && strncmp(rt.dpath, "/allowed", 8) == 0)
		check(rt.dpath[8] == '\0' || rt.dpath[8] == '/', "api_paths matched inside a segment");
	/* the normalised path resolves to itself */
	check(router_resolve(rt.path, rt.plen, &again, &cause) == 0, "normalised path refused");
	check(again.plen == rt.plen && memcmp(again.path, rt.path, rt.plen) == 0, "not idempotent");
	router_target_free(&again);
	router_target_free(&rt);
	return 0;
}
