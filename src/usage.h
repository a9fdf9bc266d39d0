/* usage.h - who used how much: requests per service and api key, and
 * tokens from the OpenAI "usage" object of the services' responses.
 * Counted by name (service name, key id), so counts outlive a reload;
 * shown in /metrics (prometheus.c) and /api (api.c). */
#ifndef SG_USAGE_H
#define SG_USAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct api_key;

#define KEY_ID_MAX 72

/* What api key K goes by wherever it is shown (/metrics, /api, logs):
 * its name if the config gives one, else "key:" and 12 hex digits of its
 * keyed digest (access_key_id); "-" for none (no api_keys). Never the key.
 * Into OUT. */
void key_id(const struct api_key *k, char out[KEY_ID_MAX]);

/* One service and key's counts. */
struct usage {
	char *service;
	char key[KEY_ID_MAX];
	uint64_t requests;
	uint64_t prompt_tokens, completion_tokens;
};

/* A request to SERVICE by KEY (a key_id). */
void usage_request(const char *service, const char *key);
/* The tokens one response reported. */
void usage_tokens(const char *service, const char *key, uint64_t prompt, uint64_t completion);
/* The last "usage" object with token counts in P (N bytes: the tail of a
 * JSON body or an event stream): prompt_tokens (or input_tokens) and
 * completion_tokens (or output_tokens). False if there is none. */
bool usage_parse(const char *p, size_t n, uint64_t *prompt, uint64_t *completion);
/* Every (service, key) counted so far, in the order first seen. */
size_t usage_count(void);
const struct usage *usage_at(size_t k);
/* {"<key id>": {"requests","prompt_tokens","completion_tokens"}, ...} for SERVICE. */
json_t *usage_json(const char *service);
void usage_free(void);

#endif
