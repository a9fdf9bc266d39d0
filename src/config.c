/* config.c - JSON -> structs, defaults and validation with field-level messages.
 *
 * Every key is declared once in a table (name, type, range, default, target);
 * loading walks the table, so defaults, validation and unknown-key errors all
 * follow from it. All errors are reported in one pass with their JSON path. */
#include "config.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "launcher.h"
#include "confcheck.h"
#include "config_int.h"
#include "log.h"
#include "util.h"

enum ftype {
	F_STR,      /* string */
	F_INT,      /* integer in [min, max] */
	F_LLONG,    /* long long in [min, max] */
	F_PORT,     /* integer 1..65535 */
	F_BOOL,     /* true/false */
	F_STRLIST,  /* array of strings */
	F_LAUNCHER, /* a name in the launcher registry (launcher.c) */
	F_IGNORE,   /* accepted for compatibility, unused (seed's nginxFile) */
};

struct field {
	const char *key;
	enum ftype type;
	size_t off;
	bool required;
	long long def;   /* default for F_INT/F_PORT/F_BOOL (-1: none) */
	const char *defs; /* default for F_STR */
	long long min, max;
};

#define SVC(f) offsetof(struct svc_config, f)
#define CFG(f) offsetof(struct config, f)
#define BIG 1000000000LL

static const struct field svc_fields[] = {
	{"name", F_STR, SVC(name), true, 0, NULL, 0, 0},
	{"route_name", F_STR, SVC(route_name), true, 0, NULL, 0, 0},
	{"ssh_username", F_STR, SVC(ssh_username), false, 0, NULL, 0, 0},
	{"ssh_key_file", F_STR, SVC(ssh_key_file), false, 0, NULL, 0, 0},
	{"remote_host", F_STR, SVC(remote_host), false, 0, NULL, 0, 0},
	{"remote_port", F_PORT, SVC(remote_port), false, 0, NULL, 1, 65535},
	{"local_host", F_STR, SVC(local_host), false, 0, "127.0.0.1", 0, 0},
	{"local_port", F_PORT, SVC(local_port), false, 0, NULL, 1, 65535},
	{"bash_file", F_STR, SVC(bash_file), true, 0, NULL, 0, 0},
	{"check_health_path", F_STR, SVC(check_health_path), false, 0, "/health", 0, 0},
	{"timeout", F_INT, SVC(timeout), false, 300, NULL, 1, BIG},
	{"api_paths", F_STRLIST, SVC(api_paths), false, 0, NULL, 0, 0},
	{"launcher", F_LAUNCHER, SVC(launcher), false, 0, NULL, 0, 0},
	{"start_timeout", F_INT, SVC(start_timeout), false, 900, NULL, 1, BIG},
	{"hold", F_BOOL, SVC(hold), false, 1, NULL, 0, 0},
	{"stop_grace", F_INT, SVC(stop_grace), false, 10, NULL, 0, 3600},
	{"ssh_port", F_PORT, SVC(ssh_port), false, 0, NULL, 1, 65535},
	{"ssh_options", F_STRLIST, SVC(ssh_options), false, 0, NULL, 0, 0},
	{"sbatch_args", F_STRLIST, SVC(sbatch_args), false, 0, NULL, 0, 0},
	{"slurm_agent", F_STR, SVC(slurm_agent), false, 0, NULL, 0, 0},
	{"min_instances", F_INT, SVC(min_instances), false, 0, NULL, 0, 64},
	{"max_instances", F_INT, SVC(max_instances), false, 1, NULL, 1, 64},
	{"target_concurrency", F_INT, SVC(target_concurrency), false, 4, NULL, 1, 100000},
	{"scale_up_delay", F_INT, SVC(scale_up_delay), false, 2, NULL, 0, 86400},
	{"scale_down_delay", F_INT, SVC(scale_down_delay), false, 60, NULL, 0, 86400},
	{"handover_lead", F_INT, SVC(handover_lead), false, -1, NULL, -1, 86400},
	{"health_interval", F_INT, SVC(health_interval), false, 10, NULL, 1, 3600},
	{"aliases", F_STRLIST, SVC(aliases), false, 0, NULL, 0, 0},
	{"forward_authorization", F_BOOL, SVC(forward_authorization), false, 0, NULL, 0, 0},
	{NULL, 0, 0, false, 0, NULL, 0, 0},
};

static const struct field cfg_fields[] = {
	{"nginxFile", F_IGNORE, 0, false, 0, NULL, 0, 0},
	{"admin_token", F_STR, CFG(admin_token), false, 0, NULL, 0, 0},
	{"max_body_size", F_LLONG, CFG(max_body_size), false, 64LL << 20, NULL, 0, 1LL << 40},
	{"max_header_size", F_INT, CFG(max_header_size), false, 16384, NULL, 1024, 1 << 20},
	{"header_timeout", F_INT, CFG(header_timeout), false, 10, NULL, 1, 3600},
	{"body_timeout", F_INT, CFG(body_timeout), false, 60, NULL, 1, 3600},
	{"keepalive_timeout", F_INT, CFG(keepalive_timeout), false, 75, NULL, 1, 3600},
	{"send_timeout", F_INT, CFG(send_timeout), false, 60, NULL, 1, 3600},
	{"upstream_connect_timeout", F_INT, CFG(upstream_connect_timeout), false, 5, NULL, 1, 600},
	{"upstream_timeout", F_INT, CFG(upstream_timeout), false, 600, NULL, 1, 86400},
	{"shutdown_grace", F_INT, CFG(shutdown_grace), false, 30, NULL, 0, 3600},
	{"max_connections", F_INT, CFG(max_connections), false, 20000, NULL, 16, 1000000},
	{"max_buffer_bytes", F_LLONG, CFG(max_buffer_bytes), false, 1LL << 30, NULL, 1LL << 20, 1LL << 40},
	{"upstream_keepalive", F_INT, CFG(upstream_keepalive), false, 1024, NULL, 0, 100000},
	{"state_dir", F_STR, CFG(state_dir), false, 0, NULL, 0, 0},
	{"instance_id", F_STR, CFG(instance_id), false, 0, NULL, 0, 0},
	{"ssh_host_key_checking", F_STR, CFG(ssh_host_key_checking), false, 0, "accept-new", 0, 0},
	{"keep_jobs_on_exit", F_BOOL, CFG(keep_jobs_on_exit), false, 0, NULL, 0, 0},
	/* 0: 500 ms, 200 ms through a slurm_agent (no ssh per squeue) */
	{"poll_fast_ms", F_INT, CFG(poll_fast_ms), false, 0, NULL, 50, 60000},
	{"poll_slow_s", F_INT, CFG(poll_slow_s), false, 15, NULL, 1, 3600},
	/* 0: never back off from poll_fast_ms */
	{"poll_backoff_s", F_INT, CFG(poll_backoff_s), false, 30, NULL, 0, 86400},
	{"admin_token_file", F_STR, CFG(admin_token_file), false, 0, NULL, 0, 0},
	{"api_keys_file", F_STR, CFG(api_keys_file), false, 0, NULL, 0, 0},
	{"log_json", F_BOOL, CFG(log_json), false, 0, NULL, 0, 0},
	{"public_status", F_BOOL, CFG(public_status), false, 1, NULL, 0, 0},
	{"feedback_interval", F_INT, CFG(feedback_interval), false, 3, NULL, 1, 600},
	{"auth_fail_limit", F_INT, CFG(auth_fail_limit), false, 10, NULL, 0, 1000000},
	{"auth_fail_window", F_INT, CFG(auth_fail_window), false, 60, NULL, 1, 86400},
	{"max_json_body", F_LLONG, CFG(max_json_body), false, 32LL << 20, NULL, 64, 1LL << 30},
	{"max_form_scan", F_LLONG, CFG(max_form_scan), false, 32LL << 20, NULL, 64, 1LL << 34},
	{"max_held_body", F_LLONG, CFG(max_held_body), false, 8LL << 20, NULL, 0, 1LL << 40},
	{"allowed_hosts", F_STRLIST, CFG(allowed_hosts), false, 0, NULL, 0, 0},
	{"trusted_proxies", F_STRLIST, CFG(trusted_proxies), false, 0, NULL, 0, 0},
	{"access_log", F_STR, CFG(access_log), false, 0, NULL, 0, 0},
	{"log_repeat_interval", F_INT, CFG(log_repeat_interval), false, 10, NULL, 0, 3600},
	{NULL, 0, 0, false, 0, NULL, 0, 0},
};

/* Names that the gateway itself answers at the top level. */
static const char *const reserved_routes[] = {
	"info", "api", "metrics", "status", "v1", "enable_service_management",
	"disable_service_management", "kill_disable_service_management", "favicon.ico", NULL,
};

void err_add(struct errs *e, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		fatal("out of memory");
	va_end(ap);
	e->v = xrealloc(e->v, (e->n + 2) * sizeof *e->v);
	e->v[e->n++] = s;
	e->v[e->n] = NULL;
}

static const struct field *field_find(const struct field *tab, const char *key)
{
	for (; tab->key; tab++)
		if (strcmp(tab->key, key) == 0)
			return tab;
	return NULL;
}

/* Store one JSON value into the struct field it is declared for. */
static void field_set(const struct field *f, void *base, json_t *v, const char *path,
		      struct errs *e)
{
	char *dst = (char *)base + f->off;

	switch (f->type) {
	case F_IGNORE:
		return;
	case F_STR:
		if (!json_is_string(v)) {
			err_add(e, "%s.%s: must be a string", path, f->key);
			return;
		}
		free(*(char **)dst);
		*(char **)dst = xstrdup(json_string_value(v));
		return;
	case F_INT:
	case F_LLONG:
	case F_PORT: {
		long long x;
		char got[96];
		if (!json_is_integer(v) || (x = json_integer_value(v)) < f->min || x > f->max) {
			confcheck_json_desc(v, got, sizeof got);
			if (f->type == F_PORT)
				err_add(e, "%s.%s: must be a port number, an integer 1-65535, got %s", path,
					f->key, got);
			else if (f->min == 1 && f->max >= BIG)
				err_add(e, "%s.%s: must be a positive integer, got %s", path, f->key, got);
			else
				err_add(e, "%s.%s: must be an integer from %lld to %lld, got %s", path, f->key,
					f->min, f->max, got);
			return;
		}
		if (f->type == F_LLONG)
			*(long long *)dst = x;
		else
			*(int *)dst = (int)x;
		return;
	}
	case F_BOOL:
		if (!json_is_boolean(v)) {
			err_add(e, "%s.%s: must be true or false", path, f->key);
			return;
		}
		*(bool *)dst = json_is_true(v);
		return;
	case F_LAUNCHER: {
		const char *s = json_string_value(v);
		const struct launcher_ops *l = s ? launcher_find(s) : NULL;
		char names[200];
		if (l != NULL) {
			*(const struct launcher_ops **)dst = l;
			return;
		}
		launcher_names(names, sizeof names);
		if (s == NULL)
			err_add(e, "%s.%s: must be a string naming a launcher: one of %s", path, f->key,
				names);
		else
			err_add(e, "%s.%s: unknown launcher \"%s\"; the known launchers are %s", path,
				f->key, log_escape(s, strlen(s) > 64 ? 64 : strlen(s)), names);
		return;
	}
	case F_STRLIST: {
		size_t i, n;
		char **list;
		if (!json_is_array(v)) {
			err_add(e, "%s.%s: must be an array of strings", path, f->key);
			return;
		}
		n = json_array_size(v);
		list = xcalloc(n + 1, sizeof *list);
		for (i = 0; i < n; i++) {
			json_t *s = json_array_get(v, i);
			if (!json_is_string(s)) {
				err_add(e, "%s.%s[%zu]: must be a string", path, f->key, i);
				list[i] = xstrdup("");
			} else {
				list[i] = xstrdup(json_string_value(s));
			}
		}
		*(char ***)dst = list;
		return;
	}
	}
}

/* The known key (of TAB or EXTRA) closest to KEY, if it is close enough to be
 * a misspelling of it: at most 2 edits, and at most a third of its length. */
static const char *closest_key(const struct field *tab, const char *const *extra, const char *key)
{
	const char *best = NULL;
	size_t bestd = 3, len = strlen(key);

	for (; tab->key; tab++) {
		size_t d = confcheck_edit_distance(key, tab->key);
		if (d < bestd && d * 3 <= len) {
			bestd = d;
			best = tab->key;
		}
	}
	for (; extra && *extra; extra++) {
		size_t d = confcheck_edit_distance(key, *extra);
		if (d < bestd && d * 3 <= len) {
			bestd = d;
			best = *extra;
		}
	}
	return best;
}

/* Fill BASE from OBJ following TAB: unknown keys, missing keys, defaults. */
static void fields_load(const struct field *tab, void *base, json_t *obj, const char *path,
			const char *const *extra_keys, struct errs *e)
{
	const char *key;
	json_t *v;

	json_object_foreach(obj, key, v) {
		const struct field *f = field_find(tab, key);
		bool extra = false;
		for (const char *const *k = extra_keys; k && *k; k++)
			extra |= strcmp(*k, key) == 0;
		if (f != NULL)
			field_set(f, base, v, path, e);
		else if (!extra) {
			const char *hint = closest_key(tab, extra_keys, key);
			if (hint)
				err_add(e, "%s.%s: unknown key (did you mean \"%s\"?)", path,
					log_escape(key, strlen(key)), hint);
			else
				err_add(e, "%s.%s: unknown key", path, log_escape(key, strlen(key)));
		}
	}
	for (const struct field *f = tab; f->key; f++) {
		char *dst = (char *)base + f->off;
		if (f->type == F_IGNORE || json_object_get(obj, f->key) != NULL)
			continue;
		if (f->required) {
			err_add(e, "%s.%s: required", path, f->key);
			continue;
		}
		switch (f->type) {
		case F_STR:
			*(char **)dst = f->defs ? xstrdup(f->defs) : NULL;
			break;
		case F_LLONG:
			*(long long *)dst = f->def;
			break;
		case F_INT:
		case F_PORT:
			*(int *)dst = (int)f->def;
			break;
		case F_BOOL:
			*(bool *)dst = f->def != 0;
			break;
		case F_LAUNCHER:
			*(const struct launcher_ops **)dst = launcher_default();
			break;
		default:
			break;
		}
	}
}

bool route_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-' || c == '.' || c == '~';
}

/* A control character (TAB, newline ...): the agent's protocol cannot carry it. */
static bool has_ctl(const char *v)
{
	for (; v && *v; v++)
		if ((unsigned char)*v < 0x20 || *v == 0x7f)
			return true;
	return false;
}

/* slurm_agent: a path on the login node; what goes through it must fit
 * the agent's line protocol (remote/slurmgate-agent). */
static void agent_check(const struct svc_config *s, const char *path, struct errs *e)
{
	if (s->launcher == NULL || !s->launcher->remote_agent)
		err_add(e, "%s.slurm_agent: only for launcher \"slurm\"", path);
	if (s->slurm_agent[0] == '\0' || has_ctl(s->slurm_agent))
		err_add(e, "%s.slurm_agent: must be a path on the login node, without control characters",
			path);
	if (has_ctl(s->bash_file) || (s->bash_file && s->bash_file[0] != '/'))
		err_add(e, "%s.bash_file: with slurm_agent, must be an absolute path without control "
			   "characters (the agent checks it against its allow-list)", path);
	for (char **a = s->sbatch_args; a && *a; a++)
		if (has_ctl(*a) || strchr(*a, ' ') || (*a)[0] != '-' || strcmp(*a, "-") == 0 ||
		    strcmp(*a, "--") == 0)
			err_add(e, "%s.sbatch_args: with slurm_agent, each must be one option word "
				   "(\"--option=value\"), without spaces or control characters: \"%s\"", path,
				log_escape(*a, strlen(*a)));
}

/* Cross-field checks and normalisation of one service. */
static void service_check(struct svc_config *s, json_t *o, const char *path, const char *cfgdir,
			  struct errs *e, struct errs *problems)
{
	struct stat st;
	char *cause = NULL;

	if (s->name && s->name[0] == '\0')
		err_add(e, "%s.name: must not be empty", path);
	if (s->route_name) {
		const char *r = s->route_name;
		bool ok = r[0] != '\0';
		for (const char *p = r; *p; p++)
			ok &= route_char_ok(*p);
		if (!ok)
			err_add(e, "%s.route_name: must be letters, digits, '_', '-', '.' or '~'", path);
		for (const char *const *k = reserved_routes; *k; k++)
			if (strcmp(*k, r) == 0)
				err_add(e, "%s.route_name: \"%s\" is reserved for the gateway", path, r);
		if (has_prefix(r, "check_") || has_prefix(r, "demand_"))
			err_add(e, "%s.route_name: must not start with check_ or demand_", path);
	}
	if (s->min_instances > s->max_instances)
		err_add(e, "%s.min_instances: must not exceed max_instances (%d)", path, s->max_instances);
	if (s->remote_port == 0 && s->local_port == 0 && json_object_get(o, "remote_port") == NULL &&
	    json_object_get(o, "local_port") == NULL)
		err_add(e, "%s.remote_port: required (or local_port)", path);
	if (s->remote_port == 0)
		s->remote_port = s->local_port;
	if (s->local_port == 0)
		s->local_port = s->remote_port;
	if (s->check_health_path && s->check_health_path[0] != '/') {
		char *p = xasprintf("/%s", s->check_health_path);
		free(s->check_health_path);
		s->check_health_path = p;
	}
	for (char **p = s->api_paths; p && *p; p++)
		if ((*p)[0] != '/')
			err_add(e, "%s.api_paths: \"%s\" must start with '/'", path,
				log_escape(*p, strlen(*p)));
	if (s->local_host) {
		char *n = confcheck_numeric_host(s->local_host);
		if (n == NULL)
			err_add(e, "%s.local_host: cannot resolve \"%s\"", path,
				log_escape(s->local_host, strlen(s->local_host)));
		else {
			free(s->local_host);
			s->local_host = n;
		}
	}
	if (s->launcher != NULL && s->launcher->script_on_host && s->bash_file) {
		if (s->bash_file[0] != '/') {
			char *p = xasprintf("%s/%s", cfgdir, s->bash_file);
			free(s->bash_file);
			s->bash_file = p;
		}
		if (access(s->bash_file, X_OK) != 0)
			err_add(e, "%s.bash_file: %s: %s", path, s->bash_file, strerror(errno));
		else if (stat(s->bash_file, &st) == 0 && S_ISDIR(st.st_mode))
			err_add(e, "%s.bash_file: %s: is a directory", path, s->bash_file);
	}
	/* ssh runs with IdentitiesOnly=yes: without its key every start fails */
	if (s->launcher != NULL && s->launcher->uses_ssh_key && s->ssh_key_file &&
	    confcheck_key_file(s->ssh_key_file, &cause) != 0) {
		err_add(problems, "%s.ssh_key_file: %s", path, cause);
		free(cause);
	}
	if (s->slurm_agent)
		agent_check(s, path, e);
}

static void free_list(char **list)
{
	for (char **p = list; p && *p; p++)
		free(*p);
	free(list);
}

/* How many ports from the base port a service's instances may use. */
static int port_span(const struct svc_config *s)
{
	return s->max_instances + (s->launcher ? s->launcher->extra_ports : 0);
}

static bool ranges_overlap(int a, int an, int b, int bn)
{
	return a > 0 && b > 0 && a < b + bn && b < a + an;
}

static bool same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* Defaults that depend on the machine, and checks of global values. */
static void global_check(struct config *cfg, struct errs *e)
{
	char host[256] = "gateway";
	const char *home = getenv("HOME");

	if (cfg->instance_id == NULL) {
		gethostname(host, sizeof host - 1);
		host[24] = '\0';
		for (char *p = host; *p; p++)
			if (!route_char_ok(*p) || *p == '~')
				*p = '_';
		cfg->instance_id = xstrdup(host);
	}
	for (const char *p = cfg->instance_id; *p; p++)
		if (!route_char_ok(*p) || *p == '~') {
			err_add(e, "$.instance_id: must be letters, digits, '_', '-' or '.'");
			break;
		}
	if (cfg->instance_id[0] == '\0')
		err_add(e, "$.instance_id: must not be empty");
	if (cfg->state_dir == NULL)
		cfg->state_dir = geteuid() == 0 || home == NULL
					 ? xstrdup("/var/lib/slurmgate")
					 : xasprintf("%s/.local/state/slurmgate", home);
	for (char **p = cfg->trusted_proxies; p && *p; p++) {
		const char *why;
		cfg->proxies = xrealloc(cfg->proxies, (cfg->n_proxies + 1) * sizeof *cfg->proxies);
		if (router_cidr_parse(*p, &cfg->proxies[cfg->n_proxies], &why) != 0)
			err_add(e, "$.trusted_proxies[%zu]: \"%s\" %s", (size_t)(p - cfg->trusted_proxies),
				log_escape(*p, strlen(*p)), why);
		else
			cfg->n_proxies++;
	}
	for (char **p = cfg->allowed_hosts; p && *p; p++)
		if ((*p)[0] == '\0' || strpbrk(*p, "/ ,\t") != NULL)
			err_add(e, "$.allowed_hosts[%zu]: \"%s\" must be a host name or \"host:port\"",
				(size_t)(p - cfg->allowed_hosts), log_escape(*p, strlen(*p)));
	if (cfg->ssh_host_key_checking && strcmp(cfg->ssh_host_key_checking, "accept-new") != 0 &&
	    strcmp(cfg->ssh_host_key_checking, "yes") != 0)
		err_add(e, "$.ssh_host_key_checking: must be \"accept-new\" or \"yes\"");
}

static void svc_config_free(struct svc_config *s)
{
	free(s->name);
	free(s->route_name);
	free(s->ssh_username);
	free(s->ssh_key_file);
	free(s->remote_host);
	free(s->local_host);
	free(s->bash_file);
	free(s->check_health_path);
	free_list(s->api_paths);
	free_list(s->ssh_options);
	free_list(s->sbatch_args);
	free(s->slurm_agent);
	free_list(s->aliases);
}

static size_t nlive;   /* configs allocated and not yet freed */

size_t config_live(void)
{
	return nlive;
}

struct config *config_ref(struct config *cfg)
{
	cfg->refs++;
	return cfg;
}

void config_unref(struct config *cfg)
{
	if (cfg != NULL && --cfg->refs == 0)
		config_free(cfg);
}

void config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	nlive--;
	for (size_t i = 0; i < cfg->n_services; i++)
		svc_config_free(&cfg->services[i]);
	free(cfg->services);
	free(cfg->path);
	free(cfg->listen_host);
	free(cfg->admin_token);
	free(cfg->state_dir);
	free(cfg->instance_id);
	free(cfg->ssh_host_key_checking);
	free(cfg->admin_token_file);
	free(cfg->api_keys_file);
	free(cfg->access_log);
	free_list(cfg->allowed_hosts);
	free_list(cfg->trusted_proxies);
	free(cfg->proxies);
	for (size_t k = 0; k < cfg->n_api_keys; k++) {
		free(cfg->api_keys[k].key);
		free(cfg->api_keys[k].name);
		free_list(cfg->api_keys[k].services);
	}
	free(cfg->api_keys);
	config_free_errors(cfg->svc_problems);
	free(cfg);
}

void config_free_errors(char **errs)
{
	for (char **p = errs; p && *p; p++)
		free(*p);
	free(errs);
}

struct config *config_load(const char *file, char ***errs_out)
{
	static const char *const top_extra[] = {"Services", "listen", "api_keys", NULL};
	struct errs e = {0};
	json_error_t jerr;
	json_t *root, *svcs, *listen;
	struct config *cfg;
	char *dircopy, *cfgdir, *cause = NULL;
	struct errs problems = {0};

	root = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		if (jerr.line > 0)
			err_add(&e, "%s:%d:%d: %s", file, jerr.line, jerr.column, jerr.text);
		else
			err_add(&e, "%s: %s", file, jerr.text);
		*errs_out = e.v;
		return NULL;
	}
	cfg = xcalloc(1, sizeof *cfg);
	cfg->refs = 1;
	nlive++;
	cfg->path = xstrdup(file);
	dircopy = xstrdup(file);
	cfgdir = dirname(dircopy);
	if (!json_is_object(root)) {
		err_add(&e, "$: the config must be a JSON object");
		goto out;
	}
	fields_load(cfg_fields, cfg, root, "$", top_extra, &e);
	if (cfg->admin_token && cfg->admin_token[0] == '\0')
		err_add(&e, "$.admin_token: must not be empty (leave it out to disable)");
	if (cfg->access_log && cfg->access_log[0] == '\0')
		err_add(&e, "$.access_log: must be a file or \"-\" (leave it out to disable)");
	else if (cfg->access_log && strcmp(cfg->access_log, "-") != 0 &&
		 confcheck_log_file(cfg->access_log, &cause) != 0) {
		err_add(&e, "$.access_log: %s", cause);
		free(cause);
	}

	listen = json_object_get(root, "listen");
	if (listen == NULL) {
		cfg->listen_host = xstrdup("127.0.0.1");
		cfg->listen_port = 8090;
	} else if (!json_is_string(listen)) {
		err_add(&e, "$.listen: must be \"HOST:PORT\"");
	} else if (confcheck_listen(json_string_value(listen), &cfg->listen_host,
				    &cfg->listen_port, &cause) != 0) {
		err_add(&e, "$.listen: %s", cause);
		free(cause);
	}

	global_check(cfg, &e);
	svcs = json_object_get(root, "Services");
	if (svcs == NULL) {
		err_add(&e, "$.Services: required");
		goto out;
	}
	if (!json_is_array(svcs)) {
		err_add(&e, "$.Services: must be an array");
		goto out;
	}
	cfg->n_services = json_array_size(svcs);
	cfg->services = xcalloc(cfg->n_services, sizeof *cfg->services);
	for (size_t i = 0; i < cfg->n_services; i++) {
		json_t *o = json_array_get(svcs, i);
		char path[64];
		snprintf(path, sizeof path, "Services[%zu]", i);
		if (!json_is_object(o)) {
			err_add(&e, "%s: must be an object", path);
			continue;
		}
		fields_load(svc_fields, &cfg->services[i], o, path, NULL, &e);
		service_check(&cfg->services[i], o, path, cfgdir, &e, &problems);
	}
	/* Names, routes and local ports must be unique across services. */
	for (size_t i = 0; i < cfg->n_services; i++) {
		struct svc_config *a = &cfg->services[i];
		for (size_t j = 0; j < i; j++) {
			struct svc_config *b = &cfg->services[j];
			if (a->name && b->name && strcmp(a->name, b->name) == 0)
				err_add(&e, "Services[%zu].name: \"%s\" is also Services[%zu].name", i,
					a->name, j);
			if (a->route_name && b->route_name && strcmp(a->route_name, b->route_name) == 0)
				err_add(&e, "Services[%zu].route_name: \"%s\" is also Services[%zu].route_name",
					i, a->route_name, j);
			/* instance k uses port + k; a launcher may reserve more (a slurm
			 * handover needs one more) */
			if (ranges_overlap(a->local_port, port_span(a), b->local_port, port_span(b)) &&
			    a->local_host && b->local_host && strcmp(a->local_host, b->local_host) == 0)
				err_add(&e, "Services[%zu].local_port: ports %d-%d overlap Services[%zu] (%d-%d)", i,
					a->local_port, a->local_port + port_span(a) - 1, j, b->local_port,
					b->local_port + port_span(b) - 1);
			else if (a->launcher == b->launcher &&
				 ranges_overlap(a->remote_port, port_span(a), b->remote_port, port_span(b)) &&
				 same_str(a->remote_host, b->remote_host))
				err_add(&e, "Services[%zu].remote_port: ports %d-%d overlap Services[%zu] (%d-%d)", i,
					a->remote_port, a->remote_port + port_span(a) - 1, j, b->remote_port,
					b->remote_port + port_span(b) - 1);
		}
		for (size_t j = 0; j < i; j++) {
			struct svc_config *b = &cfg->services[j];
			/* one agent per target (runner_for's key) */
			if (a->launcher && a->launcher->remote_agent && a->launcher == b->launcher &&
			    same_str(a->remote_host, b->remote_host) && same_str(a->ssh_username, b->ssh_username) &&
			    a->ssh_port == b->ssh_port && same_str(a->ssh_key_file, b->ssh_key_file) &&
			    !same_str(a->slurm_agent, b->slurm_agent))
				err_add(&e, "Services[%zu].slurm_agent: Services[%zu] has the same login node "
					    "and must name the same agent", i, j);
		}
		if (ranges_overlap(a->local_port, port_span(a), cfg->listen_port, 1))
			err_add(&e, "Services[%zu].local_port: %d is the gateway's own listen port", i,
				a->local_port);
	}
	secrets_load(cfg, root, &e);
	/* model names (name and aliases) must be unique across services */
	for (size_t i = 0; i < cfg->n_services; i++)
		for (char **a = cfg->services[i].aliases; a && *a; a++)
			for (size_t j = 0; j < cfg->n_services; j++) {
				bool clash = j != i && cfg->services[j].name &&
					     strcmp(cfg->services[j].name, *a) == 0;
				for (char **b = cfg->services[j].aliases; b && *b && !clash && j < i; b++)
					clash = strcmp(*a, *b) == 0;
				if (clash)
					err_add(&e, "Services[%zu].aliases: \"%s\" also names Services[%zu]", i,
						log_escape(*a, strlen(*a)), j);
			}
out:
	free(dircopy);
	json_decref(root);
	if (e.n > 0) {
		/* with the errors, so that -t lists everything at once */
		for (size_t k = 0; k < problems.n; k++)
			err_add(&e, "%s", problems.v[k]);
		config_free_errors(problems.v);
	} else {
		cfg->svc_problems = problems.v;
	}
	if (e.n > 0) {
		config_free(cfg);
		*errs_out = e.v;
		return NULL;
	}
	*errs_out = NULL;
	return cfg;
}
