/* accesslog.h - one line per exchange: who used which service, how it went.
 *
 * "access_log": a file (opened O_APPEND, reopened on SIGUSR1 for logrotate)
 * or "-" for stderr. Combined-style lines (nginx's "combined", the key id as
 * the user, then key=value fields), or a JSON object per line with
 * log_json. A key is named by its "name" or a digest prefix, never itself. */
#ifndef SG_ACCESSLOG_H
#define SG_ACCESSLOG_H

#include <stdbool.h>

struct hconn;
struct http_msg;
struct http_xfer;

/* What routing and the proxy learn about one exchange. */
struct accesslog_note {
	char *service;         /* a copy of the service's name (malloc'd; a reload may
	                        * free the service first), or NULL */
	int instance;          /* the instance that answered, -1: none */
	double wait;           /* seconds held for a start, < 0: not held */
	char key[72];          /* the api key's id, "" for none */
};

/* A note for a new request: nothing known yet (frees what N held; N starts
 * zeroed). Also the note's end. */
void accesslog_note_reset(struct accesslog_note *n);

/* Log to FILE ("-": stderr; NULL: no access log), as JSON lines or not.
 * A new FILE is opened now; 0, or -1 and *cause (malloc'd) with the old
 * log kept. */
int accesslog_configure(const char *file, bool json, char **cause);
/* SIGUSR1: open the file again by its name (logrotate moved it). */
void accesslog_reopen(void);
/* The exchange X of request M on C is over: write its line. */
void accesslog_write(struct hconn *c, const struct http_msg *m, const struct http_xfer *x,
		     const struct accesslog_note *n);
void accesslog_free(void);

#endif
