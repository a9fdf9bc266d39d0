/* shquote.c - quoting for the remote shell, in one place. */
#include "shquote.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

char *sh_quote(const char *arg)
{
	size_t n = 2;
	char *out, *o;

	for (const char *p = arg; *p; p++)
		n += *p == '\'' ? 4 : 1;
	out = o = xmalloc(n + 1);
	*o++ = '\'';
	for (const char *p = arg; *p; p++) {
		if (*p == '\'') {
			memcpy(o, "'\\''", 4);
			o += 4;
		} else {
			*o++ = *p;
		}
	}
	*o++ = '\'';
	*o = '\0';
	return out;
}

char *sh_join(char *const argv[])
{
	size_t len = 0, cap = 64;
	char *out = xmalloc(cap);

	out[0] = '\0';
	for (int k = 0; argv[k]; k++) {
		char *q = sh_quote(argv[k]);
		size_t ql = strlen(q);
		if (len + ql + 2 > cap) {
			cap = (len + ql + 2) * 2;
			out = xrealloc(out, cap);
		}
		if (k > 0)
			out[len++] = ' ';
		memcpy(out + len, q, ql + 1);
		len += ql;
		free(q);
	}
	return out;
}
