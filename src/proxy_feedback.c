/* proxy_feedback.c - what a client reading an event stream is told: how
 * a cold start goes while its request is held, and the service's error
 * as an error event once our early head went out. */
#include "proxy_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include "access.h"
#include "config.h"
#include "gw.h"
#include "http.h"
#include "instance.h"
#include "launcher.h"
#include "log.h"
#include "reply.h"
#include "util.h"

/* Send a formatted piece of an event stream. */
void px_sse_printf(struct hconn *c, const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n > 0)
		http_send(c, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* The field that names our error event on /v1: an SDK that reads named
 * events only (Anthropic's, on /v1/messages) skips an unnamed one; the
 * openai and HF clients read the data either way. A route's stream keeps
 * it unnamed (a browser's EventSource gives onmessage unnamed events). */
const char *px_sse_error_name(const struct exchange *ex)
{
	return ex->openai ? "event: error\n" : "";
}

/* The reason as one SSE comment: a CR or LF in it (a job's output, a
 * Slurm message) would end the comment and start a forged event. The
 * output it quotes only where the client may see it (auth.h). */
static void sse_reason(struct exchange *ex, char *reason, size_t len)
{
	char *cut = ex->full_reasons ? NULL : access_redact_output(reason, service_config(ex->svc)->name);

	if (cut != NULL)
		snprintf(reason, len, "%s", cut);
	free(cut);
	for (char *p = reason; *p; p++)
		if (*p == '\r' || *p == '\n')
			*p = ' ';
	px_sse_printf(ex->down, ": slurmgate: %s\n\n", reason);
}

/* Every few seconds while held: an SSE comment saying how the start goes. */
static void feedback_cb(evutil_socket_t fd, short what, void *arg)
{
	struct exchange *ex = arg;
	char reason[600];

	(void)fd, (void)what;
	if (ex->down == NULL || ex->inst != NULL)
		return;
	service_reason(ex->svc, reason, sizeof reason);
	sse_reason(ex, reason, sizeof reason);
	event_add(ex->fb_ev, &(struct timeval){px_gw->cfg->feedback_interval, 0});
}

/* Held, and the client reads SSE: answer the head now and keep it posted. */
void px_feedback_start(struct exchange *ex)
{
	char reason[600];

	http_respond(ex->down, 200,
		     SG_SEC_HEADERS_DATA "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
		     "X-Accel-Buffering: no\r\nX-Slurmgate-Cold-Start: waiting\r\n",
		     -1);
	ex->early_head = true;
	service_reason(ex->svc, reason, sizeof reason);
	sse_reason(ex, reason, sizeof reason);
	ex->fb_ev = evtimer_new(px_gw->base, feedback_cb, ex);
	event_add(ex->fb_ev, &(struct timeval){px_gw->cfg->feedback_interval, 0});
}

/* The service answered ERR_STATUS after our early event-stream head: end
 * the stream with an error event that carries the service's own error:
 * its {"error":{...}} object as it is, else its message (an "error",
 * "message" or "detail" string, or the body's text). */
void px_error_event(struct exchange *ex)
{
	size_t n = evbuffer_get_length(ex->errbody);
	const char *p = n ? (const char *)evbuffer_pullup(ex->errbody, -1) : "";
	json_t *b = n ? json_loadb(p, n, 0, NULL) : NULL, *e = NULL, *o;
	const char *msg = NULL;
	char text[1200];
	char *out;

	if (json_is_object(b)) {
		json_t *err = json_object_get(b, "error");
		if (json_is_object(err) && json_is_string(json_object_get(err, "message")))
			e = json_incref(err);
		else if (json_is_string(err))
			msg = json_string_value(err);
		else if (json_is_string(json_object_get(b, "message")))
			msg = json_string_value(json_object_get(b, "message"));
		else if (json_is_string(json_object_get(b, "detail")))
			msg = json_string_value(json_object_get(b, "detail"));
	}
	if (e == NULL) {
		if (msg == NULL && n > 0)
			msg = log_escape(p, n > 1000 ? 1000 : n);
		snprintf(text, sizeof text, "the service answered %d%s%s", ex->err_status,
			 msg ? ": " : "", msg ? msg : "");
		e = json_pack("{s:s,s:s,s:i}", "message", text, "type", "upstream_error", "code",
			      ex->err_status);
		if (e == NULL)   /* cut inside a UTF-8 sequence */
			e = json_pack("{s:s,s:s,s:i}", "message", "the service answered an error", "type",
				      "upstream_error", "code", ex->err_status);
	}
	o = json_pack("{s:o}", "error", e);
	out = json_dumps(o, JSON_COMPACT);
	px_sse_printf(ex->down, "%sdata: ", px_sse_error_name(ex));
	http_send(ex->down, out, strlen(out));
	http_send(ex->down, "\n\n", 2);
	free(out);
	json_decref(o);
	json_decref(b);
}

/* --- a response cut mid-way: its instance's end says why --- */

/* How long a cut response waits for its instance's end (a Slurm poll, and
 * the job's output tail), looked at every CUT_TICK_US. */
#define CUT_WAIT_S 10.0
#define CUT_TICK_US 200000

static void cut_finish(struct exchange *ex)
{
	const struct instance *i = ex->cut_inst;
	const char *name = service_config(ex->svc)->name;
	char reason[1024];

	if (i->state == INST_GONE && strncmp(i->detail, "gone: ", 6) == 0)
		snprintf(reason, sizeof reason, "service %s: instance ended: %s", name, i->detail + 6);
	else if (ex->aborted != NULL)
		snprintf(reason, sizeof reason, "%s", ex->aborted);   /* held: why */
	else
		snprintf(reason, sizeof reason, "service %s: %s", name, ex->verdict_why);
	px_fail(ex, 502, reason);
}

static void cut_tick(evutil_socket_t fd, short what, void *arg)
{
	struct exchange *ex = arg;
	const struct instance *i = ex->cut_inst;

	(void)fd, (void)what;
	/* gone: its cause; in rotation again (a probe passed): the service
	 * lives and hung up on this response alone; else wait (a job
	 * COMPLETING says TIMEOUT or CANCELLED next) */
	if (i->state == INST_GONE || (i->state == INST_READY && ex->inst != NULL) ||
	    now_s() - ex->cut_at >= CUT_WAIT_S) {
		cut_finish(ex);
		return;
	}
	event_add(ex->cut_ev, &(struct timeval){0, CUT_TICK_US});
}

bool px_cut_wait(struct exchange *ex, const char *why)
{
	struct instance *i = ex->inst;

	/* a local process's exit is seen at once (SIGCHLD): no wait for it */
	if (i == NULL || ex->down == NULL || ex->cut_inst != NULL ||
	    service_config(ex->svc)->launcher->check == NULL || i->state == INST_STOPPING)
		return false;
	instance_ref(i);
	ex->cut_inst = i;
	ex->cut_at = now_s();
	free(ex->verdict_why);
	ex->verdict_why = xstrdup(why);
	log_info("svc %s[%d]: a response was cut (%s): its end waits up to %.0f s for what the "
		 "launcher says", service_config(ex->svc)->name, i->index, why, CUT_WAIT_S);
	ex->cut_ev = evtimer_new(px_gw->base, cut_tick, ex);
	/* out of rotation, the launcher asked now (Slurm: a poll at once); an
	 * abort from inside is kept by px_cut_aborted(). Out of rotation
	 * already (draining after a handover): the launcher is asked alone */
	if (i->state == INST_READY)
		instance_unreachable(i, why);
	else
		service_config(ex->svc)->launcher->check(i);
	event_add(ex->cut_ev, &(struct timeval){0, CUT_TICK_US});
	return true;
}

bool px_cut_aborted(struct exchange *ex, const char *reason)
{
	if (ex->cut_inst == NULL)
		return false;
	free(ex->aborted);
	ex->aborted = xstrdup(reason);
	return true;
}

void px_cut_free(struct exchange *ex)
{
	if (ex->cut_ev)
		event_free(ex->cut_ev);
	ex->cut_ev = NULL;
	if (ex->cut_inst)
		instance_unref(ex->cut_inst);
	ex->cut_inst = NULL;
}
