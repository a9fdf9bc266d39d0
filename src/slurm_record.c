/* slurm_record.c - the record of the Slurm targets and instance_ids this
 * gateway's jobs may be on, across runs (see slurm_record.h). */
#include "slurm_record.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "config.h"
#include "gw.h"
#include "launcher.h"
#include "log.h"
#include "runner.h"
#include "util.h"

#define MAX_TARGETS 64
#define MAX_IDS 8

struct target {
	struct svc_config c;   /* the runner's keys only: remote_host, ssh_* */
	struct runner *r;
	bool earlier;          /* from the record only: not named by this run */
	bool scanned;          /* looked for jobs at this start */
};

static struct gw *gw;
static struct target targets[MAX_TARGETS];
static int ntargets;
static char *ids[MAX_IDS];   /* earlier instance_ids, not the config's */
static int nids;
static bool write_failed;

static char *dup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

/* Add C's target (once); returns it, or NULL if the table is full. */
static struct target *target_add(const struct svc_config *c, bool earlier)
{
	struct runner *r = runner_for(c);
	struct target *t;

	for (int k = 0; k < ntargets; k++)
		if (targets[k].r == r) {
			if (!earlier)
				targets[k].earlier = false;
			return &targets[k];
		}
	if (ntargets == MAX_TARGETS)
		return NULL;
	t = &targets[ntargets++];
	t->r = r;
	t->earlier = earlier;
	t->c.remote_host = dup_or_null(c->remote_host);
	t->c.ssh_username = dup_or_null(c->ssh_username);
	t->c.ssh_key_file = dup_or_null(c->ssh_key_file);
	t->c.ssh_port = c->ssh_port;
	t->c.ssh_options = strv_dup(c->ssh_options);
	return t;
}

static void path_of(char *buf, size_t len, const char *suffix)
{
	snprintf(buf, len, "%s/slurm_targets.json%s", gw->cfg->state_dir, suffix);
}

static void record_write(void)
{
	char path[4200], tmp[4200];
	json_t *o = json_object(), *ta = json_array(), *ia = json_array();
	bool pending = false;
	char *text;
	int fd;

	for (int k = 0; k < ntargets; k++)
		pending |= !targets[k].scanned;
	json_array_append_new(ia, json_string(gw->cfg->instance_id));
	for (int k = 0; pending && k < nids; k++)
		json_array_append_new(ia, json_string(ids[k]));
	for (int k = 0; k < ntargets; k++) {
		const struct target *t = &targets[k];
		json_t *to, *opts;
		if (t->earlier && t->scanned)
			continue;   /* nothing of ours is left there */
		opts = json_array();
		for (char **p = t->c.ssh_options; p && *p; p++)
			json_array_append_new(opts, json_string(*p));
		to = json_pack("{s:s?,s:s?,s:s?,s:i,s:o}", "remote_host", t->c.remote_host,
			       "ssh_username", t->c.ssh_username, "ssh_key_file", t->c.ssh_key_file,
			       "ssh_port", t->c.ssh_port, "ssh_options", opts);
		json_array_append_new(ta, to);
	}
	json_object_set_new(o, "instance_ids", ia);
	json_object_set_new(o, "targets", ta);
	text = json_dumps(o, JSON_INDENT(1));
	json_decref(o);
	path_of(path, sizeof path, "");
	path_of(tmp, sizeof tmp, ".new");
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text) || fsync(fd) != 0 ||
	    rename(tmp, path) != 0) {
		if (!write_failed)
			log_warn("cannot write %s: %s; after a restart with an edited config, Slurm jobs "
				 "of this run may be left running untracked",
				 path, strerror(errno));
		write_failed = true;
		unlink(tmp);
	} else if (write_failed) {
		log_info("wrote %s again", path);
		write_failed = false;
	}
	if (fd >= 0)
		close(fd);
	free(text);
}

/* The earlier run's record: its targets and instance_ids. */
static void record_read(void)
{
	char path[4200];
	json_error_t err;
	json_t *o, *v;
	size_t k;

	path_of(path, sizeof path, "");
	if ((o = json_load_file(path, 0, &err)) == NULL) {
		if (access(path, F_OK) == 0)
			log_warn("%s: %s (line %d); jobs of an earlier run may be missed", path, err.text,
				 err.line);
		return;
	}
	json_array_foreach(json_object_get(o, "instance_ids"), k, v) {
		const char *id = json_string_value(v);
		bool dup = id == NULL || strcmp(id, gw->cfg->instance_id) == 0;
		for (int q = 0; q < nids && !dup; q++)
			dup = strcmp(ids[q], id) == 0;
		if (!dup && nids < MAX_IDS)
			ids[nids++] = xstrdup(id);
	}
	json_array_foreach(json_object_get(o, "targets"), k, v) {
		struct svc_config c = {0};
		json_t *opts = json_object_get(v, "ssh_options"), *ov;
		size_t q, n = json_array_size(opts);
		c.remote_host = (char *)json_string_value(json_object_get(v, "remote_host"));
		c.ssh_username = (char *)json_string_value(json_object_get(v, "ssh_username"));
		c.ssh_key_file = (char *)json_string_value(json_object_get(v, "ssh_key_file"));
		c.ssh_port = (int)json_integer_value(json_object_get(v, "ssh_port"));
		c.ssh_options = xcalloc(n + 1, sizeof *c.ssh_options);
		json_array_foreach(opts, q, ov)
			c.ssh_options[q] = (char *)(json_string_value(ov) ? json_string_value(ov) : "");
		target_add(&c, true);
		free(c.ssh_options);
	}
	json_decref(o);
}

/* The Slurm services' targets in the config in force. */
static bool config_targets(void)
{
	bool any = false;

	for (size_t k = 0; k < gw->cfg->n_services; k++)
		if (gw->cfg->services[k].launcher == &launcher_slurm) {
			target_add(&gw->cfg->services[k], false);
			any = true;
		}
	return any;
}

void slurm_record_init(struct gw *g)
{
	bool used, orphans = false;

	gw = g;
	record_read();
	used = config_targets();
	for (int k = 0; k < ntargets; k++)
		orphans |= targets[k].earlier;
	if (ntargets == 0)
		return;   /* no Slurm, now or before */
	if (orphans && !used)
		launcher_slurm.init(g);   /* idempotent; the scans need it */
	for (int k = 0; k < ntargets; k++)
		if (targets[k].earlier) {
			log_info("Slurm target %s is in the record of an earlier run, not in the config: "
				 "looking for jobs left there",
				 runner_name(targets[k].r));
			slurm_recover_target(targets[k].r);
		}
	record_write();
}

void slurm_record_update(void)
{
	int before = ntargets;

	if (gw == NULL)
		return;
	config_targets();
	/* not in the record: no earlier run used them, nothing to scan for */
	for (int k = before; k < ntargets; k++)
		targets[k].scanned = true;
	if (ntargets != before)
		record_write();
}

bool slurm_record_earlier_name(const char *name)
{
	char prefix[200];

	for (int k = 0; k < nids; k++) {
		snprintf(prefix, sizeof prefix, "sg:%s:", ids[k]);
		if (has_prefix(name, prefix))
			return true;
	}
	return false;
}

void slurm_record_scanned(struct runner *r)
{
	bool was_pending = false, pending = false;

	if (gw == NULL)
		return;
	for (int k = 0; k < ntargets; k++) {
		was_pending |= !targets[k].scanned;
		if (targets[k].r == r)
			targets[k].scanned = true;
		pending |= !targets[k].scanned;
	}
	if (was_pending && !pending)
		record_write();
	else if (was_pending)
		for (int k = 0; k < ntargets; k++)
			if (targets[k].r == r && targets[k].earlier)
				record_write();
}
