/* usage.c - requests and tokens per service and api key (see usage.h). */
#include "usage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "config.h"
#include "util.h"

static struct usage *rows;
static size_t nrows;
/* (service, key) -> row index + 1 (0: empty), open addressing; at most half
 * full. A request finds its row in O(1) however many keys and services
 * there are (hundreds of users' keys times the services they use). */
static size_t *slots;
static size_t nslots;

static size_t hash(const char *service, const char *key)
{
	uint64_t h = 1469598103934665603ULL;   /* FNV-1a over service, NUL, key */

	for (const char *p = service; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	h = (h ^ 0xffu) * 1099511628211ULL;
	for (const char *p = key; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	return (size_t)(h ^ (h >> 29));
}

static void slot_put(size_t k)
{
	size_t m = nslots - 1, i = hash(rows[k].service, rows[k].key) & m;

	while (slots[i] != 0)
		i = (i + 1) & m;
	slots[i] = k + 1;
}

void key_id(const struct api_key *k, char out[KEY_ID_MAX])
{
	/* the same id as the access log's: the key's name, else a digest prefix */
	str_copy(out, KEY_ID_MAX, k ? access_key_id(k) : "-");
}

static struct usage *row(const char *service, const char *key)
{
	size_t m, i;

	if (nslots != 0) {
		m = nslots - 1;
		for (i = hash(service, key) & m; slots[i] != 0; i = (i + 1) & m) {
			struct usage *u = &rows[slots[i] - 1];
			if (strcmp(u->key, key) == 0 && strcmp(u->service, service) == 0)
				return u;
		}
	}
	rows = xrealloc(rows, (nrows + 1) * sizeof *rows);
	rows[nrows] = (struct usage){.service = xstrdup(service)};
	str_copy(rows[nrows].key, sizeof rows[nrows].key, key);
	nrows++;
	if (2 * nrows > nslots) {
		free(slots);
		nslots = nslots ? 2 * nslots : 64;
		slots = xcalloc(nslots, sizeof *slots);
		for (size_t k = 0; k < nrows; k++)
			slot_put(k);
	} else {
		slot_put(nrows - 1);
	}
	return &rows[nrows - 1];
}

void usage_request(const char *service, const char *key)
{
	row(service, key)->requests++;
}

void usage_tokens(const char *service, const char *key, uint64_t prompt, uint64_t completion)
{
	struct usage *u = row(service, key);

	u->prompt_tokens += prompt;
	u->completion_tokens += completion;
}

/* The first of NAMES in O that is a non-negative integer. */
static bool count_of(json_t *o, const char *a, const char *b, uint64_t *out)
{
	json_t *v = json_object_get(o, a);

	if (!json_is_integer(v))
		v = json_object_get(o, b);
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return false;
	*out = (uint64_t)json_integer_value(v);
	return true;
}

bool usage_parse(const char *p, size_t n, uint64_t *prompt, uint64_t *completion)
{
	/* most answers have no "usage" at all: one fast scan says so */
	if (memmem(p, n, "\"usage\"", 7) == NULL)
		return false;
	/* from the end: a stream's last chunk (include_usage), a body's "usage" */
	for (size_t q = n >= 7 ? n - 7 + 1 : 0; q-- > 0;) {
		size_t r = q + 7;
		json_t *o;
		bool a, b;

		if (p[q] != '"' || memcmp(p + q, "\"usage\"", 7) != 0 || (q > 0 && p[q - 1] == '\\'))
			continue;
		while (r < n && (p[r] == ' ' || p[r] == '\t' || p[r] == '\r' || p[r] == '\n'))
			r++;
		if (r >= n || p[r] != ':')
			continue;
		for (r++; r < n && (p[r] == ' ' || p[r] == '\t' || p[r] == '\r' || p[r] == '\n'); r++)
			;
		if (r >= n || p[r] != '{')
			continue;   /* "usage": null, as every chunk but the last */
		o = json_loadb(p + r, n - r, JSON_DISABLE_EOF_CHECK, NULL);
		*prompt = *completion = 0;
		a = json_is_object(o) && count_of(o, "prompt_tokens", "input_tokens", prompt);
		b = json_is_object(o) && count_of(o, "completion_tokens", "output_tokens", completion);
		json_decref(o);
		if (a || b)
			return true;
	}
	return false;
}

size_t usage_count(void)
{
	return nrows;
}

const struct usage *usage_at(size_t k)
{
	return &rows[k];
}

json_t *usage_json(const char *service)
{
	json_t *o = json_object();

	for (size_t k = 0; k < nrows; k++)
		if (strcmp(rows[k].service, service) == 0)
			json_object_set_new(o, rows[k].key,
					    json_pack("{s:I,s:I,s:I}", "requests", (json_int_t)rows[k].requests,
						      "prompt_tokens", (json_int_t)rows[k].prompt_tokens,
						      "completion_tokens", (json_int_t)rows[k].completion_tokens));
	return o;
}

void usage_free(void)
{
	for (size_t k = 0; k < nrows; k++)
		free(rows[k].service);
	free(rows);
	rows = NULL;
	nrows = 0;
	free(slots);
	slots = NULL;
	nslots = 0;
}
