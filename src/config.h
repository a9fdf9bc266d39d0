/* config.h - the JSON config: declared once in a table, validated in one pass.
 *
 * The seed's services_config.json loads unchanged; see README for every key. */
#ifndef SG_CONFIG_H
#define SG_CONFIG_H

/* the longest interval poll_backoff_s stretches squeue's fast polls to
 * (never beyond poll_slow_s): a job that waited for hours is noticed
 * running at most this late, and a waiting job costs slurmctld one squeue
 * per 5 s, not 2 to 5 a second. The agent's watcher has the same cap. */
#define POLL_BACKOFF_MAX_MS 5000

#include <stdbool.h>
#include <stddef.h>

#include "router.h"

struct launcher_ops;

/* A key for api_keys: which services it may use (NULL: all). */
struct api_key {
	char *key;
	char *name;               /* the access log's key id (NULL: a hash prefix) */
	char **services;          /* NULL-terminated names, or NULL */
};

struct svc_config {
	char *name;
	char *route_name;
	char *ssh_username;
	char *ssh_key_file;
	char *remote_host;
	char *local_host;
	char *bash_file;          /* local launcher: resolved against the config's folder */
	char *check_health_path;  /* always starts with '/' */
	char **api_paths;         /* NULL-terminated; NULL = forward every path */
	int remote_port;
	int local_port;
	int timeout;              /* idle seconds before stop */
	int start_timeout;        /* seconds a start may take */
	bool hold;                /* hold requests during a start (else 503 at once) */
	const struct launcher_ops *launcher;   /* from the registry (launcher.h); never NULL */
	int stop_grace;           /* seconds between SIGTERM and SIGKILL */
	int ssh_port;             /* 0: ssh's default */
	char **ssh_options;       /* extra "-o" settings, NULL-terminated */
	char **sbatch_args;       /* extra sbatch arguments, NULL-terminated */
	char *slurm_agent;        /* slurmgate-agent on the login node (NULL: plain commands) */
	int min_instances;        /* kept running, even when idle */
	int max_instances;        /* instances at most */
	int target_concurrency;   /* requests in flight per instance the scaler aims for */
	int scale_up_delay;       /* seconds above target before one more starts */
	int scale_down_delay;     /* seconds with an instance to spare before one drains */
	int handover_lead;        /* slurm: seconds before the time limit to start the
	                           * replacement (-1: last start duration + margin) */
	int health_interval;      /* seconds between health probes of a ready instance */
	char **aliases;           /* more model names for OpenAI routing, NULL-terminated */
	bool forward_authorization; /* pass the client's Authorization on (default: strip it) */
};

struct config {
	int refs;                 /* config_ref/config_unref; freed with the last */
	char *path;
	char *listen_host;
	int listen_port;
	char *admin_token;
	long long max_body_size;  /* bytes */
	int max_header_size;      /* bytes, request line + headers */
	int header_timeout;       /* seconds to receive a request head */
	int body_timeout;         /* seconds between two reads of a request body */
	int keepalive_timeout;    /* seconds an idle client connection is kept */
	int send_timeout;         /* seconds a client may not read our output */
	int upstream_connect_timeout;
	int upstream_timeout;     /* seconds between two reads from a service */
	int shutdown_grace;       /* seconds in-flight requests get on SIGTERM */
	int max_connections;
	long long max_buffer_bytes; /* bytes in all buffers before big holders stop reading */
	int upstream_keepalive;   /* idle keep-alive connections kept per instance */
	char *state_dir;          /* known_hosts, ssh control sockets */
	char *instance_id;        /* names this gateway's Slurm jobs */
	char *ssh_host_key_checking; /* "accept-new" or "yes" */
	bool keep_jobs_on_exit;   /* leave jobs running at exit (a restart adopts them) */
	int poll_fast_ms;         /* squeue interval while something starts or stops
	                           * (0: not set; 500, or 200 through a slurm_agent) */
	int poll_slow_s;          /* squeue interval otherwise */
	int poll_backoff_s;       /* after this long with no change in the jobs the
	                           * fast interval doubles per cycle, up to
	                           * poll_slow_s or POLL_BACKOFF_MAX_MS, whichever
	                           * is shorter (0: never) */
	char *admin_token_file;
	char *api_keys_file;
	struct api_key *api_keys; /* inline and from api_keys_file */
	size_t n_api_keys;
	bool log_json;            /* one JSON object per log line */
	char *access_log;         /* a file, "-" for stderr, or NULL: none */
	int log_repeat_interval;  /* seconds: identical errors are logged once per service and
	                           * interval, with a count (0: each one) */
	bool public_status;       /* the state (/info, /api, /metrics, the page's data) needs no key */
	int feedback_interval;    /* seconds between SSE comments to a waiting stream */
	int auth_fail_limit;      /* wrong tokens per address and window, then 429 (0: no limit) */
	int auth_fail_window;     /* seconds: the window of auth_fail_limit */
	long long max_json_body;  /* bytes of a /v1 body read for the model lookup (413 beyond) */
	long long max_form_scan;  /* bytes of a multipart /v1 body read to reach its "model"
	                           * field (413 beyond); the rest streams */
	long long max_held_body;  /* bytes of request bodies held in RAM, all waiting requests
	                           * together; past it, those clients are not read from */
	char **allowed_hosts;     /* Host values served (NULL: any), against DNS rebinding */
	char **trusted_proxies;   /* addresses/CIDRs whose X-Forwarded-* are believed */
	struct cidr *proxies;     /* trusted_proxies, parsed */
	size_t n_proxies;
	struct svc_config *services;
	size_t n_services;
	char **svc_problems;      /* NULL-terminated: what makes a service's every start fail
	                           * (a missing ssh_key_file); -t fails on them, the gateway
	                           * logs them and serves the other services */
};

/* Load and validate FILE. On error returns NULL and appends one line per
 * problem ("Services[0].timeout: must be a positive integer") to *errs
 * (a NULL-terminated malloc'd array the caller frees with config_free_errors). */
struct config *config_load(const char *file, char ***errs);
/* Lifetime: config_load returns a config with one reference (the
 * caller's). Whatever keeps pointers into it past a reload (the gateway's
 * context for the one in force, each service for the one its svc_config
 * lives in) holds a reference; the last config_unref frees it. */
struct config *config_ref(struct config *cfg);
void config_unref(struct config *cfg);
/* Free CFG now, whatever its references (a config nobody else has seen). */
void config_free(struct config *cfg);
/* Configs allocated and not yet freed (slurmgate_configs_live in /metrics). */
size_t config_live(void);
void config_free_errors(char **errs);

#endif
