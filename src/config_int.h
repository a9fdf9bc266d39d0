/* config_int.h - shared by config.c and config_keys.c only: the error list
 * config_load collects in one pass. */
#ifndef SG_CONFIG_INT_H
#define SG_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

struct config;

struct errs {
	char **v;
	size_t n;
};

/* Add one error (a JSON path and what is wrong) to E. */
void err_add(struct errs *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A character allowed in route names and api key names (RFC 3986 unreserved). */
bool route_char_ok(char c);
/* admin_token(_file) and api_keys(_file) of ROOT into CFG. */
void secrets_load(struct config *cfg, json_t *root, struct errs *e);

#endif
