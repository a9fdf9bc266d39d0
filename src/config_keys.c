/* config_keys.c - the secrets of a config: the admin token and the api
 * keys, inline or from files that must not be readable by others (their
 * names, the services they may use). Part of config_load (config_int.h). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "config_int.h"
#include "log.h"
#include "util.h"

/* An admin token shorter than this draws a warning. */
#define KEY_PUBLIC_MIN 16

/* A file holding a secret should be readable by its owner alone. */
static void check_secrecy(const char *path, const char *what)
{
	struct stat st;

	if (stat(path, &st) == 0 && (st.st_mode & 077))
		log_warn("%s %s is readable by others (mode %03o): chmod 600 it", what, path,
			 (unsigned)(st.st_mode & 0777));
}

/* An api key's name goes into access log lines as it is: a plain word. */
static bool key_name_ok(json_t *v)
{
	const char *s = json_string_value(v);
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > 64)
		return false;
	for (const char *p = s; *p; p++)
		if (!route_char_ok(*p) && *p != '@')
			return false;
	return *s != '-';
}

/* api_keys: [{"key": "...", "services": ["name", ...], "name": "..."}, ...] from V (PATH names it). */
static void api_keys_add(struct config *cfg, json_t *v, const char *path, struct errs *e)
{
	size_t i;
	json_t *o;

	if (!json_is_array(v)) {
		err_add(e, "%s: must be an array of {\"key\", \"services\"} objects", path);
		return;
	}
	json_array_foreach(v, i, o) {
		json_t *k = json_object_get(o, "key"), *sv = json_object_get(o, "services");
		json_t *nm = json_object_get(o, "name");
		const char *name;
		json_t *val;
		struct api_key *ak;

		if (!json_is_object(o)) {
			err_add(e, "%s[%zu]: must be an object", path, i);
			continue;
		}
		json_object_foreach(o, name, val)
			if (strcmp(name, "key") != 0 && strcmp(name, "services") != 0 &&
			    strcmp(name, "name") != 0)
				err_add(e, "%s[%zu].%s: unknown key", path, i, log_escape(name, strlen(name)));
		if (nm != NULL && !key_name_ok(nm)) {
			err_add(e, "%s[%zu].name: must be letters, digits, '_', '-', '.' or '@' (1-64)",
				path, i);
			nm = NULL;
		}
		if (!json_is_string(k) || json_string_length(k) < 8) {
			err_add(e, "%s[%zu].key: must be a string of at least 8 characters", path, i);
			continue;
		}
		if (sv != NULL && !json_is_array(sv)) {
			err_add(e, "%s[%zu].services: must be an array of service names", path, i);
			continue;
		}
		cfg->api_keys = xrealloc(cfg->api_keys, (cfg->n_api_keys + 1) * sizeof *cfg->api_keys);
		ak = &cfg->api_keys[cfg->n_api_keys++];
		ak->key = xstrdup(json_string_value(k));
		ak->name = nm ? xstrdup(json_string_value(nm)) : NULL;
		ak->services = NULL;
		if (sv != NULL) {
			size_t n = json_array_size(sv);
			ak->services = xcalloc(n + 1, sizeof *ak->services);
			for (size_t q = 0; q < n; q++) {
				const char *sn = json_string_value(json_array_get(sv, q));
				ak->services[q] = xstrdup(sn ? sn : "");
				if (sn == NULL)
					err_add(e, "%s[%zu].services[%zu]: must be a string", path, i, q);
			}
		}
	}
}

/* Secrets that live in files, and the api keys' service names. */
void secrets_load(struct config *cfg, json_t *root, struct errs *e)
{
	json_t *keys = json_object_get(root, "api_keys");
	struct stat st;

	/* inline secrets: the config file itself must be private then */
	if ((keys || cfg->admin_token) && stat(cfg->path, &st) == 0 && (st.st_mode & 077))
		log_warn("config file %s holds admin_token or api_keys and is readable by others "
			 "(mode %03o): chmod 600 it, or move them to admin_token_file and api_keys_file",
			 cfg->path, (unsigned)(st.st_mode & 0777));
	if (keys)
		api_keys_add(cfg, keys, "$.api_keys", e);
	if (cfg->admin_token_file) {
		FILE *f = fopen(cfg->admin_token_file, "r");
		char buf[512] = "";
		size_t n;
		if (cfg->admin_token)
			err_add(e, "$.admin_token_file: give admin_token or admin_token_file, not both");
		else if (f == NULL)
			err_add(e, "$.admin_token_file: %s: %s", cfg->admin_token_file, strerror(errno));
		else {
			n = fread(buf, 1, sizeof buf - 1, f);
			buf[n] = '\0';
			while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
				buf[--n] = '\0';
			if (n == 0)
				err_add(e, "$.admin_token_file: %s is empty", cfg->admin_token_file);
			else
				cfg->admin_token = xstrdup(buf);
			check_secrecy(cfg->admin_token_file, "admin_token_file");
		}
		if (f)
			fclose(f);
	}
	if (cfg->api_keys_file) {
		json_error_t jerr;
		json_t *v = json_load_file(cfg->api_keys_file, 0, &jerr);
		if (v == NULL)
			err_add(e, "$.api_keys_file: %s:%d: %s", cfg->api_keys_file, jerr.line, jerr.text);
		else
			api_keys_add(cfg, json_is_object(v) ? json_object_get(v, "api_keys") : v,
				     "$.api_keys_file", e);
		json_decref(v);
		check_secrecy(cfg->api_keys_file, "api_keys_file");
	}
	for (size_t k = 0; k < cfg->n_api_keys; k++) {
		for (size_t q = 0; q < k && cfg->api_keys[k].name; q++)
			if (cfg->api_keys[q].name && strcmp(cfg->api_keys[q].name, cfg->api_keys[k].name) == 0)
				err_add(e, "api_keys[%zu].name: \"%s\" also names api_keys[%zu]", k,
					cfg->api_keys[k].name, q);
		if (cfg->admin_token && strcmp(cfg->api_keys[k].key, cfg->admin_token) == 0)
			err_add(e, "api_keys[%zu].key: must differ from the admin token", k);
		for (char **sv = cfg->api_keys[k].services; sv && *sv; sv++) {
			bool found = false;
			for (size_t q = 0; q < cfg->n_services; q++)
				found |= cfg->services[q].name && strcmp(cfg->services[q].name, *sv) == 0;
			if (!found)
				err_add(e, "api_keys[%zu].services: no service is named \"%s\"", k,
					log_escape(*sv, strlen(*sv)));
		}
	}
	/* auth_fail_limit slows one address down, not an attacker with many */
	if (cfg->admin_token && strlen(cfg->admin_token) < KEY_PUBLIC_MIN)
		log_warn("admin_token: %zu characters: anyone who reaches the gateway from many "
			 "addresses can try many tokens (auth_fail_limit counts per address); use %d or "
			 "more random characters",
			 strlen(cfg->admin_token), KEY_PUBLIC_MIN);
	if (!cfg->public_status && cfg->n_api_keys == 0 && cfg->admin_token == NULL)
		err_add(e, "$.public_status: false needs api_keys or an admin_token (else nobody "
			   "could read the state)");
}
