/* slurmjob.c - what Slurm's answers mean (see slurmjob.h). */
#include "slurmjob.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

/* Every state squeue (%T), scontrol and sacct print, as of Slurm 22.05
 * (job_state_string): the flags first, then the base states. */
static const struct {
	const char *name;
	enum slurmjob_class c;
	const char *says;   /* for a hold reason */
} states[] = {
	{"PENDING", SJ_WAITING, "pending"},
	{"CONFIGURING", SJ_WAITING, "configuring (its nodes boot)"},
	{"RUNNING", SJ_RUNNING, "running"},
	{"RESIZING", SJ_RUNNING, "resizing"},
	{"SIGNALING", SJ_RUNNING, "being signalled"},
	{"SUSPENDED", SJ_PAUSED, "suspended"},
	{"STOPPED", SJ_PAUSED, "stopped (SIGSTOP)"},
	{"COMPLETING", SJ_LEAVING, "completing (ending or being requeued)"},
	{"STAGE_OUT", SJ_LEAVING, "staging out"},
	{"REQUEUED", SJ_REQUEUED, "requeued"},
	{"REQUEUE_FED", SJ_REQUEUED, "requeued by the federation"},
	{"REQUEUE_HOLD", SJ_HELD, "requeued and held (waits for scontrol release)"},
	{"SPECIAL_EXIT", SJ_HELD, "requeued and held after a special exit (waits for scontrol release)"},
	{"RESV_DEL_HOLD", SJ_HELD, "held: its reservation was deleted (waits for scontrol release)"},
	{"PREEMPTED", SJ_ENDED, NULL},
	{"COMPLETED", SJ_ENDED, NULL},
	{"FAILED", SJ_ENDED, NULL},
	{"CANCELLED", SJ_ENDED, NULL},
	{"TIMEOUT", SJ_ENDED, NULL},
	{"NODE_FAIL", SJ_ENDED, NULL},
	{"OUT_OF_MEMORY", SJ_ENDED, NULL},
	{"BOOT_FAIL", SJ_ENDED, NULL},
	{"DEADLINE", SJ_ENDED, NULL},
	{"REVOKED", SJ_ENDED, NULL},
};

enum slurmjob_class slurmjob_class(const char *state, const char **says, bool *unknown)
{
	if (unknown)
		*unknown = false;
	for (size_t k = 0; k < sizeof states / sizeof states[0]; k++)
		if (strcmp(state, states[k].name) == 0) {
			*says = states[k].says;
			return states[k].c;
		}
	if (unknown)
		*unknown = true;
	*says = "in a state slurmgate does not know";
	return SJ_PAUSED;
}

bool slurmjob_ended(const char *state)
{
	const char *says;

	return slurmjob_class(state, &says, NULL) == SJ_ENDED;
}

bool slurmjob_has_reason(const char *reason)
{
	return reason[0] && strcmp(reason, "None") != 0 && strcmp(reason, "(null)") != 0;
}

bool slurmjob_held(const char *state, const char *reason)
{
	const char *says;

	return slurmjob_class(state, &says, NULL) == SJ_HELD || has_prefix(reason, "JobHeld") ||
	       has_prefix(reason, "JobHoldMaxRequeue") || strstr(reason, "held state") != NULL ||
	       strstr(reason, "held_state") != NULL;
}

void slurmjob_first_node(const char *list, char *out, size_t len)
{
	size_t o = 0;
	const char *p = list;

	while (*p && *p != ',' && *p != '[' && o + 1 < len)
		out[o++] = *p++;
	if (*p == '[') {
		p++;
		while (*p && *p != '-' && *p != ',' && *p != ']' && o + 1 < len)
			out[o++] = *p++;
	}
	out[o] = '\0';
}

long slurmjob_time_left(const char *t)
{
	long d = 0, v[3] = {0, 0, 0};
	int n = 0;
	const char *dash = strchr(t, '-');

	if (!isdigit((unsigned char)t[0]))
		return -1;
	if (dash) {
		d = atol(t);
		t = dash + 1;
	}
	while (n < 3) {
		v[n++] = strtol(t, (char **)&t, 10);
		if (*t != ':')
			break;
		t++;
	}
	if (n == 3)
		return d * 86400 + v[0] * 3600 + v[1] * 60 + v[2];
	if (n == 2)
		return d * 86400 + (dash ? v[0] * 3600 + v[1] * 60 : v[0] * 60 + v[1]);
	return d * 86400 + (dash ? v[0] * 3600 : v[0]);
}

void slurmjob_field(const char *text, const char *key, char *out, size_t len)
{
	size_t k = strlen(key), o = 0;

	out[0] = '\0';
	for (const char *p = text; (p = strstr(p, key)) != NULL; p += k) {
		if ((p != text && !isspace((unsigned char)p[-1])) || p[k] != '=')
			continue;
		for (p += k + 1; *p && !isspace((unsigned char)*p) && o + 1 < len; p++)
			out[o++] = *p;
		out[o] = '\0';
		return;
	}
}

int slurmjob_command_port(const char *show, const char *name, char *script, size_t len)
{
	char jn[256];
	const char *p = strstr(show, " Command="), *e, *sp;
	long port = 0;

	if (len > 0)
		script[0] = '\0';
	slurmjob_field(show, "JobName", jn, sizeof jn);
	if (p == NULL || strcmp(jn, name) != 0)
		return 0;
	p += strlen(" Command=");
	/* the next field is WorkDir (a path may hold spaces) */
	if ((e = strstr(p, " WorkDir=")) == NULL)
		e = p + strcspn(p, "\n");
	while (e > p && e[-1] == ' ')
		e--;
	for (sp = e; sp > p && sp[-1] != ' '; sp--)
		;
	if (sp == p || e - sp > 5)
		return 0;   /* no argument, or not a port */
	for (const char *d = sp; d < e; d++) {
		if (*d < '0' || *d > '9')
			return 0;
		port = port * 10 + (*d - '0');
	}
	if (port < 1 || port > 65535)
		return 0;
	snprintf(script, len, "%.*s", (int)(sp - 1 - p), p);
	return (int)port;
}

void slurmjob_end_why(char *buf, size_t len, const char *id, const char *state,
		      const char *reason)
{
	static const struct {
		const char *state, *says;
	} means[] = {
		{"TIMEOUT", "it reached its time limit"},
		{"NODE_FAIL", "its node failed"},
		{"OUT_OF_MEMORY", "it ran out of memory"},
		{"PREEMPTED", "preempted by another job"},
		{"DEADLINE", "it reached its deadline"},
		{"BOOT_FAIL", "its node failed to boot"},
	};

	for (size_t k = 0; k < sizeof means / sizeof *means; k++)
		if (strcmp(state, means[k].state) == 0) {
			snprintf(buf, len, "Slurm job %s ended: %s (%s)", id, state, means[k].says);
			return;
		}
	snprintf(buf, len, "Slurm job %s ended: %s%s%s", id, state, slurmjob_has_reason(reason) ? " " : "",
		 slurmjob_has_reason(reason) ? reason : "");
}

const char *slurmjob_not_ours(const char *show, const char *name, int port, double since,
			      char *why, size_t len)
{
	char jn[256], cmd[128], at[64], script[8];
	int p = slurmjob_command_port(show, name, script, sizeof script);
	double t, slack = SLURMJOB_CLOCK_SLACK_S;

	slurmjob_field(show, "JobName", jn, sizeof jn);
	slurmjob_field(show, "Command", cmd, sizeof cmd);
	slurmjob_field(show, "SubmitTime", at, sizeof at);
	t = slurmjob_start_time(at);
	/* seconds since the epoch, or the local time of scontrol's host */
	if (strchr(at, '-') != NULL)
		slack += SLURMJOB_ZONE_SLACK_S;
	if (strcmp(jn, name) != 0)
		snprintf(why, len, "it is named %s now", jn[0] ? jn : "(nothing)");
	else if (p == 0)
		snprintf(why, len, "it does not run SCRIPT PORT (Command=%s): submitted by hand?",
			 cmd[0] ? cmd : "(none)");
	else if (p != port)
		snprintf(why, len, "it was submitted for port %d, not %d", p, port);
	else if (t > 0 && t < since - slack)
		snprintf(why, len, "it was submitted at %s, before this sbatch began", at);
	else
		return NULL;
	return why;
}

bool slurmjob_sacct_line(const char *out, char *state, size_t slen, char *code, size_t clen)
{
	size_t n = 0, c = 0;
	const char *bar = strchr(out, '|'), *nl = strchr(out, '\n');

	while (out[n] && !isspace((unsigned char)out[n]) && out[n] != '|' && n + 1 < slen) {
		state[n] = out[n];
		n++;
	}
	state[n] = '\0';
	if (bar && nl && bar > nl)
		bar = NULL;   /* not on the first line */
	for (const char *p = bar ? bar + 1 : ""; *p && !isspace((unsigned char)*p) && c + 1 < clen; p++)
		code[c++] = *p;
	code[c] = '\0';
	return n > 0;
}

int slurmjob_split(char *line, char **f, int n)
{
	int k = 0;

	f[k++] = line;
	for (char *p = line; *p && k < n; p++)
		if (*p == '|') {
			*p = '\0';
			f[k++] = p + 1;
		}
	return k;
}

bool slurmjob_sbatch_id(const char *out, char *id, size_t len)
{
	const char *p, *e;

	if (len > 0)
		id[0] = '\0';
	for (p = out; *p; p = *e ? e + 1 : e) {
		size_t n = 0;
		const char *q;

		e = strchr(p, '\n');
		if (e == NULL)
			e = p + strlen(p);
		for (q = p; q < e && isspace((unsigned char)*q); q++)
			;
		while (q + n < e && isdigit((unsigned char)q[n]))
			n++;
		if (n == 0 || n >= len)
			continue;
		/* the rest: nothing but spaces, or ";cluster" */
		if (q[n] == ';') {
			const char *c = q + n + 1;
			while (c < e && !isspace((unsigned char)*c) && *c != ';')
				c++;
			while (c < e && isspace((unsigned char)*c))
				c++;
			if (c != e)
				continue;
		} else {
			const char *c = q + n;
			while (c < e && isspace((unsigned char)*c))
				c++;
			if (c != e)
				continue;
		}
		memcpy(id, q, n);
		id[n] = '\0';
	}
	return len > 0 && id[0] != '\0';
}

void slurmjob_tail_lines(const char *out, char *buf, size_t len)
{
	size_t total = 0, o = 0;
	const char *p, *e;
	char *all;

	if (len == 0)
		return;
	/* joined in full first, then the end kept */
	for (p = out; *p; p++)
		total += 4;
	all = xmalloc(total + 1);
	all[0] = '\0';
	for (p = out; *p; p = *e ? e + 1 : e) {
		size_t l;

		e = strchr(p, '\n');
		if (e == NULL)
			e = p + strlen(p);
		while (p < e && isspace((unsigned char)*p))
			p++;
		l = (size_t)(e - p);
		while (l > 0 && isspace((unsigned char)p[l - 1]))
			l--;
		if (l == 0)
			continue;
		if (o > 0) {
			memcpy(all + o, " | ", 3);
			o += 3;
		}
		/* a control byte (CR, ESC ...) of the output is a space in the
		 * reason: it goes to logs, pages and event streams */
		for (size_t k = 0; k < l; k++)
			all[o + k] = (unsigned char)p[k] < 0x20 || p[k] == 0x7f ? ' ' : p[k];
		o += l;
		all[o] = '\0';
	}
	if (o < len)
		snprintf(buf, len, "%s", all);
	else if (len > 4)
		snprintf(buf, len, "...%s", all + o - (len - 4));
	else
		buf[0] = '\0';
	utf8_scrub(buf);   /* output that is not UTF-8, or the cut inside a character */
	free(all);
}

double slurmjob_start_time(const char *s)
{
	struct tm tm = {0};
	char end;
	long long secs;
	time_t t;

	if (s[0] >= '0' && s[0] <= '9' && sscanf(s, "%lld%c", &secs, &end) == 1)
		return secs > 0 ? (double)secs : 0;
	if (sscanf(s, "%d-%d-%dT%d:%d:%d%c", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
		   &tm.tm_min, &tm.tm_sec, &end) != 6)
		return 0;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	tm.tm_isdst = -1;
	t = mktime(&tm);
	return t == (time_t)-1 ? 0 : (double)t;
}
