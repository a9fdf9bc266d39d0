/*
 * demo_service.c - a tiny fake LLM HTTP server for exercising slurmgate.
 *
 * It mimics the HTTP surface of text-generation-inference (TGI) and of an
 * OpenAI-compatible server closely enough for gateway tests, and adds a few
 * diagnostic endpoints (/echo, /slow, /stream, /pid, /small).
 *
 * Everything is single-threaded on one libevent loop: delays are event
 * timers (never sleep()), streamed responses are written one chunk per
 * event with evhttp_send_reply_start/_chunk/_end.
 *
 * Build:
 *   cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror \
 *      -o build/demo_service examples/demo_service.c -levent
 *
 * Options (command line wins over environment):
 *   --port N               listen port (env PORT; required, 0 = ephemeral)
 *   --host H               bind address (default 127.0.0.1)
 *   --delay SECONDS        "model loading" time before listening
 *                          (env DEMO_DELAY, default 0)
 *   --token-delay MS       delay between streamed tokens
 *                          (env DEMO_TOKEN_DELAY_MS, default 50)
 *   --fail-after-start RC  print "demo: simulated failure" and exit RC
 *                          at startup (env DEMO_FAIL_EXIT)
 *
 * Endpoints (unknown path -> 404 JSON, wrong method -> 405 JSON):
 *   GET  /health /info /pid /small /stats /v1/models
 *   GET  /slow?ms=N              reply after N ms (default 1000)
 *   GET  /cpu?ms=N               burn N ms of CPU on the loop, then reply
 *   GET  /stream?n=N&ms=M        N SSE events "data: i" every M ms
 *   ANY  /echo[/...]             reflect method, uri, headers, body
 *   POST /generate /generate_stream /   (TGI)
 *   POST /v1/chat/completions /v1/completions /v1/embeddings  (OpenAI)
 */

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define MODEL_ID "demo-llm"
#define DEFAULT_TOKENS 8
#define MAX_TOKENS 100000          /* clamp for max_new_tokens / max_tokens */
#define MAX_STREAM_EVENTS 10000000 /* clamp for /stream?n= */
#define MAX_SLEEP_MS (3600L * 1000L)
#define MAX_CPU_MS (10L * 1000L)   /* clamp for /cpu?ms= */
#define MAX_BODY (64u * 1024u * 1024u)
#define ECHO_BODY_TEXT_MAX (1024u * 1024u)
#define EMBED_DIM 8

/* ------------------------------------------------------------------ */
/* Global state                                                        */
/* ------------------------------------------------------------------ */

struct config {
	const char *host;
	int port;          /* requested port (0 = ephemeral) */
	double delay_s;    /* startup delay */
	long token_ms;     /* delay between streamed tokens */
	int fail_exit;     /* -1 = disabled */
};

static struct config cfg = {
	.host = "127.0.0.1", .port = -1, .delay_s = 0.0, .token_ms = 50,
	.fail_exit = -1,
};

static struct event_base *base;
static struct evhttp *http;
static int bound_port = -1;        /* actual port once listening */
static unsigned long id_counter;   /* for completion ids */

/* counters reported by GET /stats */
static struct {
	unsigned long requests;        /* requests dispatched */
	unsigned long jobs_active;     /* streams / slow replies in flight */
	unsigned long jobs_completed;  /* finished normally */
	unsigned long jobs_cancelled;  /* dropped because the client went away */
} stats;

/* ------------------------------------------------------------------ */
/* Small utilities                                                     */
/* ------------------------------------------------------------------ */

/* Print a "demo: ..." line to stderr. */
static void logmsg(const char *fmt, ...)
{
	va_list ap;
	char line[512];

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "demo: %s\n", line);
}

/* Parse a base-10 long in [lo,hi]; returns false on garbage/out of range. */
static bool parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	if (s == NULL || *s == '\0')
		return false;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

/* Parse a finite non-negative double; returns false on garbage. */
static bool parse_nonneg_double(const char *s, double *out)
{
	char *end;
	double v;

	if (s == NULL || *s == '\0')
		return false;
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !isfinite(v) || v < 0)
		return false;
	*out = v;
	return true;
}

/* Convert milliseconds to a struct timeval. */
static struct timeval ms_to_tv(long ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
	return tv;
}

/* Length of the valid UTF-8 sequence at p (n bytes available), 0 if invalid. */
static size_t utf8_seq_len(const unsigned char *p, size_t n)
{
	unsigned c = p[0];
	size_t len, i;
	uint32_t cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF) {
		len = 2; cp = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3; cp = c & 0x0F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4; cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (i = 1; i < len; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3F);
	}
	/* reject overlongs, surrogates and > U+10FFFF */
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
	    (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
		return 0;
	return len;
}

/* True if the n bytes at p are valid UTF-8 without NUL bytes. */
static bool utf8_valid(const unsigned char *p, size_t n)
{
	size_t i = 0, l;

	while (i < n) {
		if (p[i] == 0 || (l = utf8_seq_len(p + i, n - i)) == 0)
			return false;
		i += l;
	}
	return true;
}

/* 64-bit FNV-1a hash (used for /echo body fingerprints and embeddings). */
static uint64_t fnv1a64(const void *data, size_t n)
{
	const unsigned char *p = data;
	uint64_t h = 0xcbf29ce484222325ULL;

	while (n--) {
		h ^= *p++;
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* Count whitespace-separated words: our crude notion of "tokens". */
static long count_words(const char *p, size_t n)
{
	long words = 0;
	bool in = false;

	for (size_t i = 0; i < n; i++) {
		bool ws = p[i] == ' ' || p[i] == '\t' || p[i] == '\n' ||
		          p[i] == '\r';
		if (!ws && !in)
			words++;
		in = !ws;
	}
	return words;
}

/* ------------------------------------------------------------------ */
/* JSON output helpers                                                 */
/* ------------------------------------------------------------------ */

/* Append s[0..n) as a quoted JSON string; invalid UTF-8 becomes U+FFFD. */
static void json_str_n(struct evbuffer *b, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, run = 0, l;

	evbuffer_add(b, "\"", 1);
	while (i < n) {
		unsigned c = p[i];
		const char *esc = NULL;
		char ubuf[8];

		if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
			i++; run++;
			continue;
		}
		if (c >= 0x80 && (l = utf8_seq_len(p + i, n - i)) != 0) {
			i += l; run += l;
			continue;
		}
		/* flush the literal run, then emit an escape */
		evbuffer_add(b, p + i - run, run);
		run = 0;
		switch (c) {
		case '"': esc = "\\\""; break;
		case '\\': esc = "\\\\"; break;
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		default:
			if (c < 0x20) {
				snprintf(ubuf, sizeof(ubuf), "\\u%04x", c);
				esc = ubuf;
			} else {
				esc = "\\ufffd"; /* invalid UTF-8 byte */
			}
		}
		evbuffer_add(b, esc, strlen(esc));
		i++;
	}
	evbuffer_add(b, p + i - run, run);
	evbuffer_add(b, "\"", 1);
}

/* Append a NUL-terminated string as JSON (NULL becomes null). */
static void json_str(struct evbuffer *b, const char *s)
{
	if (s == NULL)
		evbuffer_add(b, "null", 4);
	else
		json_str_n(b, s, strlen(s));
}

/* Append the deterministic generated text "tok0 tok1 ... tok<n-1> ". */
static void add_tokens_text(struct evbuffer *b, long n)
{
	for (long i = 0; i < n; i++)
		evbuffer_add_printf(b, "tok%ld ", i);
}

/* ------------------------------------------------------------------ */
/* Minimal JSON reader (just enough to pick a few request fields)      */
/* ------------------------------------------------------------------ */

/*
 * The request body is not NUL-terminated, so every function takes an
 * explicit end pointer.  Functions return NULL on malformed input.
 */

#define JSON_MAX_DEPTH 64

/* Skip JSON whitespace (NULL passes through, so calls can be chained). */
static const char *jws(const char *p, const char *end)
{
	if (p == NULL)
		return NULL;
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* Skip a JSON string starting at '"'; returns pointer after closing quote. */
static const char *jskip_string(const char *p, const char *end)
{
	if (p == NULL || p >= end || *p != '"')
		return NULL;
	for (p++; p < end; p++) {
		if (*p == '\\') {
			if (++p >= end)
				return NULL;
		} else if (*p == '"') {
			return p + 1;
		} else if ((unsigned char)*p < 0x20) {
			return NULL;
		}
	}
	return NULL;
}

/* Skip one JSON value of any type; returns pointer just after it. */
static const char *jskip_value(const char *p, const char *end, int depth)
{
	p = jws(p, end);
	if (p == NULL || p >= end || depth > JSON_MAX_DEPTH)
		return NULL;
	if (*p == '"')
		return jskip_string(p, end);
	if (*p == '{' || *p == '[') {
		char close = *p == '{' ? '}' : ']';
		bool obj = *p == '{';

		p = jws(p + 1, end);
		if (p < end && *p == close)
			return p + 1;
		for (;;) {
			if (obj) {
				p = jskip_string(jws(p, end), end);
				if (p == NULL)
					return NULL;
				p = jws(p, end);
				if (p >= end || *p != ':')
					return NULL;
				p++;
			}
			p = jskip_value(p, end, depth + 1);
			if (p == NULL)
				return NULL;
			p = jws(p, end);
			if (p >= end)
				return NULL;
			if (*p == close)
				return p + 1;
			if (*p != ',')
				return NULL;
			p++;
		}
	}
	/* number / true / false / null: a run of literal characters */
	const char *start = p;
	while (p < end && (strchr("+-.0123456789eEtruefalsn", *p) != NULL))
		p++;
	return p > start ? p : NULL;
}

/* Validate that [p,end) holds exactly one JSON object. */
static bool json_is_object(const char *p, const char *end)
{
	p = jws(p, end);
	if (p >= end || *p != '{')
		return false;
	p = jskip_value(p, end, 0);
	return p != NULL && jws(p, end) == end;
}

/* Find member `key` of the object at p; returns pointer to its value. */
static const char *jget(const char *p, const char *end, const char *key)
{
	size_t klen = strlen(key);

	if (p == NULL)
		return NULL;
	p = jws(p, end);
	if (p >= end || *p != '{')
		return NULL;
	p = jws(p + 1, end);
	if (p < end && *p == '}')
		return NULL;
	while (p < end) {
		const char *ks = jws(p, end), *ke = jskip_string(ks, end);
		if (ke == NULL)
			return NULL;
		p = jws(ke, end);
		if (p >= end || *p != ':')
			return NULL;
		p = jws(p + 1, end);
		/* keys containing escapes never match; fine for our purposes */
		if ((size_t)(ke - ks - 2) == klen && memcmp(ks + 1, key, klen) == 0)
			return p;
		p = jws(jskip_value(p, end, 1), end);
		if (p == NULL || p >= end || *p != ',')
			return NULL;
		p++;
	}
	return NULL;
}

/* Read an integer value (1e3 / 12.0 are accepted, truncated). */
static bool jint(const char *v, const char *end, long *out)
{
	char tmp[64];
	const char *ve;
	double d;
	char *e;

	if (v == NULL || (ve = jskip_value(v, end, 0)) == NULL)
		return false;
	if ((size_t)(ve - v) >= sizeof(tmp) || *v == '"')
		return false;
	memcpy(tmp, v, (size_t)(ve - v));
	tmp[ve - v] = '\0';
	d = strtod(tmp, &e);
	if (*e != '\0' || !isfinite(d) || d < (double)LONG_MIN ||
	    d > (double)LONG_MAX)
		return false;
	*out = (long)d;
	return true;
}

/* True if the value at v is the literal `true`. */
static bool jtrue(const char *v, const char *end)
{
	return v != NULL && end - v >= 4 && memcmp(v, "true", 4) == 0;
}

/* If v is a string, point s/n at its raw (still escaped) contents. */
static bool jstring_raw(const char *v, const char *end, const char **s,
                        size_t *n)
{
	const char *ve;

	if (v == NULL || *v != '"' || (ve = jskip_string(v, end)) == NULL)
		return false;
	*s = v + 1;
	*n = (size_t)(ve - v - 2);
	return true;
}

/* Iterate array elements: first call with *it = NULL; returns next elem. */
static const char *jarray_next(const char *arr, const char *end,
                               const char **it)
{
	const char *p;

	if (arr == NULL)
		return NULL;
	if (*it == NULL) {
		p = jws(arr, end);
		if (p >= end || *p != '[')
			return NULL;
		p = jws(p + 1, end);
		if (p < end && *p == ']')
			return NULL;
	} else {
		p = jws(jskip_value(*it, end, 1), end);
		if (p == NULL || p >= end || *p != ',')
			return NULL;
		p = jws(p + 1, end);
	}
	*it = p;
	return p;
}

/* Count "tokens" (words) in a string value or array of strings. */
static long jcount_words(const char *v, const char *end)
{
	const char *s, *it = NULL, *el;
	size_t n;
	long total = 0;

	if (jstring_raw(v, end, &s, &n))
		return count_words(s, n);
	while ((el = jarray_next(v, end, &it)) != NULL)
		if (jstring_raw(el, end, &s, &n))
			total += count_words(s, n);
	return total;
}

/* ------------------------------------------------------------------ */
/* Request helpers                                                     */
/* ------------------------------------------------------------------ */

/* Send a JSON reply and free the buffer. */
static void reply_json(struct evhttp_request *req, int code, struct evbuffer *b)
{
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);

	evhttp_add_header(oh, "Content-Type", "application/json");
	evbuffer_add(b, "\n", 1);
	evhttp_send_reply(req, code, NULL, b);
	evbuffer_free(b);
}

/* Send {"error":msg} with the given status code. */
static void reply_error(struct evhttp_request *req, int code, const char *msg)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add_printf(b, "{\"error\":");
	json_str(b, msg);
	evbuffer_add_printf(b, ",\"error_type\":\"demo\"}");
	reply_json(req, code, b);
}

/* Return the request body as a contiguous (possibly empty) byte range. */
static const char *req_body(struct evhttp_request *req, size_t *len)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);

	*len = evbuffer_get_length(in);
	if (*len == 0)
		return "";
	return (const char *)evbuffer_pullup(in, -1);
}

/*
 * Fetch the body and check it is a JSON object.  An empty body counts as
 * "{}" (all defaults).  On failure a 400 is sent and false returned.
 */
static bool req_json(struct evhttp_request *req, const char **p,
                     const char **end)
{
	size_t n;
	const char *b = req_body(req, &n);

	if (n == 0) {
		*p = "{}";
		*end = *p + 2;
		return true;
	}
	if (!json_is_object(b, b + n)) {
		reply_error(req, 400, "request body must be a JSON object");
		return false;
	}
	*p = b;
	*end = b + n;
	return true;
}

/*
 * Read a token count from the JSON value v (missing -> DEFAULT_TOKENS),
 * clamped to MAX_TOKENS.  Sends a 400 and returns false if invalid.
 */
static bool token_count(struct evhttp_request *req, const char *v,
                        const char *end, long *n)
{
	*n = DEFAULT_TOKENS;
	if (v == NULL || (end - v >= 4 && memcmp(v, "null", 4) == 0))
		return true;
	if (!jint(v, end, n) || *n < 0) {
		reply_error(req, 400, "token count must be a non-negative integer");
		return false;
	}
	if (*n > MAX_TOKENS)
		*n = MAX_TOKENS;
	return true;
}

/* Get a query parameter as a long within [lo,hi], or def if absent/bad. */
static long query_long(struct evhttp_request *req, const char *name, long def,
                       long lo, long hi)
{
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
	const char *q = u ? evhttp_uri_get_query(u) : NULL;
	struct evkeyvalq kv;
	long v = def;

	if (q == NULL)
		return def;
	TAILQ_INIT(&kv);
	if (evhttp_parse_query_str(q, &kv) == 0 &&
	    !parse_long(evhttp_find_header(&kv, name), lo, hi, &v))
		v = def;
	evhttp_clear_headers(&kv);
	return v;
}

/* Name of an evhttp method. */
static const char *method_name(enum evhttp_cmd_type m)
{
	switch (m) {
	case EVHTTP_REQ_GET: return "GET";
	case EVHTTP_REQ_POST: return "POST";
	case EVHTTP_REQ_HEAD: return "HEAD";
	case EVHTTP_REQ_PUT: return "PUT";
	case EVHTTP_REQ_DELETE: return "DELETE";
	case EVHTTP_REQ_OPTIONS: return "OPTIONS";
	case EVHTTP_REQ_TRACE: return "TRACE";
	case EVHTTP_REQ_CONNECT: return "CONNECT";
	case EVHTTP_REQ_PATCH: return "PATCH";
	}
	return "UNKNOWN";
}

/* ------------------------------------------------------------------ */
/* Deferred jobs: streams and /slow                                    */
/* ------------------------------------------------------------------ */

enum job_kind {
	JOB_SLOW,        /* /slow: one delayed plain reply */
	JOB_TGI,         /* /generate_stream */
	JOB_CHAT,        /* /v1/chat/completions stream */
	JOB_COMPLETION,  /* /v1/completions stream */
	JOB_PLAIN,       /* /stream: "data: i" events */
};

/*
 * A request whose response is produced later by a timer.  While a job is
 * pending, its connection's close callback points at it, so a client
 * disconnect cancels the timer and frees everything.  All jobs are kept on
 * a list so shutdown can release them.
 */
struct job {
	struct job *prev, *next;
	enum job_kind kind;
	struct evhttp_request *req;
	struct evhttp_connection *evcon;
	struct event *timer;
	long i;             /* events emitted so far */
	long n;             /* events to emit (or ms to sleep for JOB_SLOW) */
	long prompt_tokens;
	bool finish_length; /* finish_reason "length" instead of "stop" */
	bool include_usage; /* stream_options.include_usage */
	time_t created;
	char id[48];
};

static struct job *jobs;

/* Unlink a job, stop its timer and free it (the request is not touched). */
static void job_free(struct job *j)
{
	if (j->prev)
		j->prev->next = j->next;
	else
		jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	stats.jobs_active--;
	event_free(j->timer);
	free(j);
}

/* Connection closed under a pending job: drop the job (and orphaned req). */
static void job_conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct job *j = arg;

	(void)evcon;
	stats.jobs_cancelled++;
	/*
	 * On a network failure evhttp detaches an unfinished request from
	 * the connection (req->evcon = NULL) and leaves it to us to free.
	 * If it is still attached, the connection frees it itself.
	 */
	if (evhttp_request_get_connection(j->req) == NULL)
		evhttp_request_free(j->req);
	job_free(j);
}

/* Write one SSE event as its own HTTP chunk. */
static void send_chunk(struct job *j, struct evbuffer *b)
{
	evhttp_send_reply_chunk(j->req, b);
	evbuffer_drain(b, evbuffer_get_length(b));
}

/* Write the OpenAI chunk envelope up to (and including) "choices":[{ */
static void openai_chunk_head(struct job *j, struct evbuffer *b)
{
	evbuffer_add_printf(b,
	    "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,"
	    "\"model\":\"" MODEL_ID "\",\"choices\":[{\"index\":0,",
	    j->id, j->kind == JOB_CHAT ? "chat.completion.chunk" :
	    "text_completion", (long long)j->created);
}

/* Emit the trailing events of an OpenAI stream (finish, usage, [DONE]). */
static void openai_stream_tail(struct job *j, struct evbuffer *b)
{
	const char *fr = j->finish_length ? "length" : "stop";

	openai_chunk_head(j, b);
	if (j->kind == JOB_CHAT)
		evbuffer_add_printf(b, "\"delta\":{},");
	else
		evbuffer_add_printf(b, "\"text\":\"\",\"logprobs\":null,");
	evbuffer_add_printf(b, "\"finish_reason\":\"%s\"}]}\n\n", fr);
	send_chunk(j, b);
	if (j->include_usage) {
		evbuffer_add_printf(b,
		    "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,"
		    "\"model\":\"" MODEL_ID "\",\"choices\":[],"
		    "\"usage\":{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,"
		    "\"total_tokens\":%ld}}\n\n", j->id,
		    j->kind == JOB_CHAT ? "chat.completion.chunk" :
		    "text_completion", (long long)j->created, j->prompt_tokens,
		    j->n, j->prompt_tokens + j->n);
		send_chunk(j, b);
	}
	evbuffer_add_printf(b, "data: [DONE]\n\n");
	send_chunk(j, b);
}

/* Emit event number j->i of a stream into b and send it. */
static void stream_emit(struct job *j, struct evbuffer *b)
{
	long i = j->i;

	switch (j->kind) {
	case JOB_TGI:
		evbuffer_add_printf(b,
		    "data: {\"token\":{\"id\":%ld,\"text\":\"tok%ld \","
		    "\"logprob\":0.0,\"special\":false},\"generated_text\":",
		    i, i);
		if (i == j->n - 1) {
			evbuffer_add(b, "\"", 1);
			add_tokens_text(b, j->n);
			evbuffer_add_printf(b, "\",\"details\":{"
			    "\"finish_reason\":\"length\","
			    "\"generated_tokens\":%ld,\"seed\":null}}\n\n", j->n);
		} else {
			evbuffer_add_printf(b, "null,\"details\":null}\n\n");
		}
		break;
	case JOB_CHAT:
		openai_chunk_head(j, b);
		evbuffer_add_printf(b, "\"delta\":{%s\"content\":\"tok%ld \"},"
		    "\"logprobs\":null,\"finish_reason\":null}]}\n\n",
		    i == 0 ? "\"role\":\"assistant\"," : "", i);
		break;
	case JOB_COMPLETION:
		openai_chunk_head(j, b);
		evbuffer_add_printf(b, "\"text\":\"tok%ld \",\"logprobs\":null,"
		    "\"finish_reason\":null}]}\n\n", i);
		break;
	case JOB_PLAIN:
		evbuffer_add_printf(b, "data: %ld\n\n", i);
		break;
	case JOB_SLOW:
		break;
	}
	send_chunk(j, b);
}

/* Finish a job's response normally and free the job. */
static void job_complete(struct job *j)
{
	struct evbuffer *b;

	/* detach first: ending the reply may free the connection */
	evhttp_connection_set_closecb(j->evcon, NULL, NULL);
	if (j->kind == JOB_SLOW) {
		b = evbuffer_new();
		evbuffer_add_printf(b, "{\"slept_ms\":%ld}", j->n);
		reply_json(j->req, 200, b);
	} else {
		evhttp_send_reply_end(j->req);
	}
	stats.jobs_completed++;
	job_free(j);
}

/* Timer tick: emit the next stream event; after the last one, finish. */
static void job_tick(evutil_socket_t fd, short what, void *arg)
{
	struct job *j = arg;
	struct evbuffer *b;

	(void)fd;
	(void)what;
	if (j->kind == JOB_SLOW) {
		job_complete(j);
		return;
	}
	b = evbuffer_new();
	if (j->i < j->n) {
		stream_emit(j, b);
		j->i++;
	}
	if (j->i >= j->n) {
		/* OpenAI tails go out right after the last token */
		if (j->kind == JOB_CHAT || j->kind == JOB_COMPLETION)
			openai_stream_tail(j, b);
		job_complete(j);
	}
	evbuffer_free(b);
}

/*
 * Make evhttp notice a client disconnect while no reply is being written.
 * evhttp only watches for EOF while it writes (see evhttp_write_buffer);
 * do the same here: keep its write/error callbacks, drop the read callback
 * (pipelined data just waits in the buffer) and enable reading.  An EOF
 * then fails the connection, which runs job_conn_closed().
 */
static void watch_for_close(struct evhttp_connection *evcon)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
	bufferevent_data_cb wcb;
	bufferevent_event_cb ecb;
	void *cbarg;

	if (bev == NULL)
		return;
	bufferevent_getcb(bev, NULL, &wcb, &ecb, &cbarg);
	bufferevent_setcb(bev, NULL, wcb, ecb, cbarg);
	bufferevent_enable(bev, EV_READ);
}

/*
 * Create a job for req: for streams, send the SSE response headers now;
 * the timer fires every `ms` milliseconds (once, for JOB_SLOW).
 */
static struct job *job_start(struct evhttp_request *req, enum job_kind kind,
                             long n, long ms)
{
	struct job *j = calloc(1, sizeof(*j));
	struct timeval tv = ms_to_tv(ms);
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);

	if (j == NULL) {
		reply_error(req, 500, "out of memory");
		return NULL;
	}
	j->kind = kind;
	j->req = req;
	j->evcon = evhttp_request_get_connection(req);
	j->n = n;
	j->created = time(NULL);
	snprintf(j->id, sizeof(j->id), "%s-demo%lu",
	    kind == JOB_CHAT ? "chatcmpl" : "cmpl", ++id_counter);
	j->timer = event_new(base, -1, kind == JOB_SLOW ? 0 : EV_PERSIST,
	    job_tick, j);
	if (j->timer == NULL) {
		free(j);
		reply_error(req, 500, "out of memory");
		return NULL;
	}
	j->next = jobs;
	if (jobs)
		jobs->prev = j;
	jobs = j;
	stats.jobs_active++;

	/* libevent does not re-arm a persistent timer of zero: tick at 1 us */
	if (kind != JOB_SLOW && tv.tv_sec == 0 && tv.tv_usec == 0)
		tv.tv_usec = 1;
	evhttp_connection_set_closecb(j->evcon, job_conn_closed, j);
	if (kind == JOB_SLOW) {
		watch_for_close(j->evcon);
	} else {
		evhttp_add_header(oh, "Content-Type", "text/event-stream");
		evhttp_add_header(oh, "Cache-Control", "no-cache");
		evhttp_add_header(oh, "X-Accel-Buffering", "no");
		evhttp_send_reply_start(req, 200, "OK");
	}
	event_add(j->timer, &tv);
	return j;
}

/* Cancel every pending job (used at shutdown). */
static void jobs_cancel_all(void)
{
	while (jobs != NULL) {
		struct job *j = jobs;

		evhttp_connection_set_closecb(j->evcon, NULL, NULL);
		job_free(j); /* requests are freed with their connections */
	}
}

/* ------------------------------------------------------------------ */
/* Endpoint handlers                                                   */
/* ------------------------------------------------------------------ */

/* GET /health */
static void h_health(struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add_printf(b, "{\"status\":\"ok\"}");
	reply_json(req, 200, b);
}

/* GET /info: TGI-style model info. */
static void h_info(struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add_printf(b,
	    "{\"model_id\":\"" MODEL_ID "\",\"model_sha\":null,"
	    "\"model_dtype\":\"float16\",\"model_device_type\":\"cpu\","
	    "\"max_input_tokens\":4096,\"max_total_tokens\":8192,"
	    "\"max_concurrent_requests\":128,\"version\":\"demo-1.0\","
	    "\"router\":\"slurmgate-demo\",\"token_delay_ms\":%ld,"
	    "\"pid\":%ld}", cfg.token_ms, (long)getpid());
	reply_json(req, 200, b);
}

/* GET /pid */
static void h_pid(struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add_printf(b, "{\"pid\":%ld,\"port\":%d}", (long)getpid(),
	    bound_port);
	reply_json(req, 200, b);
}

/* GET /stats: request and job counters (e.g. to verify cancellation). */
static void h_stats(struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add_printf(b, "{\"requests\":%lu,\"jobs_active\":%lu,"
	    "\"jobs_completed\":%lu,\"jobs_cancelled\":%lu}", stats.requests,
	    stats.jobs_active, stats.jobs_completed, stats.jobs_cancelled);
	reply_json(req, 200, b);
}

/* GET /small: tiny fixed text body for benchmarks. */
static void h_small(struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();

	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/plain");
	evbuffer_add(b, "ok\n", 3);
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

/* POST /generate (and POST / without stream): TGI single response. */
static void h_generate(struct evhttp_request *req)
{
	const char *p, *end;
	long n;
	struct evbuffer *b;

	if (!req_json(req, &p, &end) ||
	    !token_count(req, jget(jget(p, end, "parameters"), end,
	        "max_new_tokens"), end, &n))
		return;
	b = evbuffer_new();
	evbuffer_add_printf(b, "{\"generated_text\":\"");
	add_tokens_text(b, n);
	evbuffer_add_printf(b, "\"}");
	reply_json(req, 200, b);
}

/* POST /generate_stream (and POST / with "stream":true): TGI SSE. */
static void h_generate_stream(struct evhttp_request *req)
{
	const char *p, *end;
	long n;

	if (!req_json(req, &p, &end) ||
	    !token_count(req, jget(jget(p, end, "parameters"), end,
	        "max_new_tokens"), end, &n))
		return;
	job_start(req, JOB_TGI, n, cfg.token_ms);
}

/* POST /: TGI compat route, dispatching on "stream". */
static void h_root(struct evhttp_request *req)
{
	size_t n;
	const char *b = req_body(req, &n);

	if (n > 0 && json_is_object(b, b + n) &&
	    jtrue(jget(b, b + n, "stream"), b + n))
		h_generate_stream(req);
	else
		h_generate(req);
}

/* Shared body of /v1/chat/completions and /v1/completions. */
static void h_openai(struct evhttp_request *req, bool chat)
{
	const char *p, *end, *v, *so;
	long n, prompt_tokens = 0;
	bool stream, limited;
	struct evbuffer *b;
	char id[48];

	if (!req_json(req, &p, &end))
		return;
	v = jget(p, end, "max_tokens");
	if (v == NULL && chat)
		v = jget(p, end, "max_completion_tokens");
	limited = v != NULL && !(end - v >= 4 && memcmp(v, "null", 4) == 0);
	if (!token_count(req, v, end, &n))
		return;
	stream = jtrue(jget(p, end, "stream"), end);

	if (chat) {
		const char *it = NULL, *msg;
		v = jget(p, end, "messages");
		while ((msg = jarray_next(v, end, &it)) != NULL)
			prompt_tokens += jcount_words(jget(msg, end, "content"), end);
	} else {
		prompt_tokens = jcount_words(jget(p, end, "prompt"), end);
	}

	if (stream) {
		struct job *j = job_start(req, chat ? JOB_CHAT : JOB_COMPLETION, n,
		    cfg.token_ms);
		if (j != NULL) {
			so = jget(p, end, "stream_options");
			j->include_usage = jtrue(jget(so, end, "include_usage"), end);
			j->finish_length = limited;
			j->prompt_tokens = prompt_tokens;
		}
		return;
	}

	snprintf(id, sizeof(id), "%s-demo%lu", chat ? "chatcmpl" : "cmpl",
	    ++id_counter);
	b = evbuffer_new();
	evbuffer_add_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,"
	    "\"model\":\"" MODEL_ID "\",\"choices\":[{\"index\":0,", id,
	    chat ? "chat.completion" : "text_completion",
	    (long long)time(NULL));
	if (chat)
		evbuffer_add_printf(b, "\"message\":{\"role\":\"assistant\","
		    "\"content\":\"");
	else
		evbuffer_add_printf(b, "\"text\":\"");
	add_tokens_text(b, n);
	evbuffer_add_printf(b, "\"%s,\"logprobs\":null,\"finish_reason\":\"%s\"}],"
	    "\"usage\":{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,"
	    "\"total_tokens\":%ld}}", chat ? "}" : "",
	    limited ? "length" : "stop", prompt_tokens, n, prompt_tokens + n);
	reply_json(req, 200, b);
}

/* POST /v1/chat/completions */
static void h_chat(struct evhttp_request *req)
{
	h_openai(req, true);
}

/* POST /v1/completions */
static void h_completions(struct evhttp_request *req)
{
	h_openai(req, false);
}

/* Append one deterministic embedding (EMBED_DIM floats) for text s[0..n). */
static void add_embedding(struct evbuffer *b, const char *s, size_t n)
{
	uint64_t h = fnv1a64(s, n);

	evbuffer_add(b, "[", 1);
	for (int k = 0; k < EMBED_DIM; k++) {
		h = h * 6364136223846793005ULL + 1442695040888963407ULL;
		double x = (double)(h >> 11) / (double)(1ULL << 53) * 2.0 - 1.0;
		evbuffer_add_printf(b, "%s%.6f", k ? "," : "", x);
	}
	evbuffer_add(b, "]", 1);
}

/* POST /v1/embeddings: "input" is a string or an array of strings. */
static void h_embeddings(struct evhttp_request *req)
{
	const char *p, *end, *in, *s, *it = NULL, *el;
	size_t n;
	long idx = 0, tokens;
	struct evbuffer *b;

	if (!req_json(req, &p, &end))
		return;
	in = jget(p, end, "input");
	tokens = jcount_words(in, end);
	b = evbuffer_new();
	evbuffer_add_printf(b, "{\"object\":\"list\",\"data\":[");
	if (in == NULL || jstring_raw(in, end, &s, &n)) {
		if (in == NULL) {
			s = "";
			n = 0;
		}
		evbuffer_add_printf(b, "{\"object\":\"embedding\",\"index\":0,"
		    "\"embedding\":");
		add_embedding(b, s, n);
		evbuffer_add(b, "}", 1);
	} else {
		while ((el = jarray_next(in, end, &it)) != NULL) {
			const char *ee = jskip_value(el, end, 0);
			/* strings are hashed by content, anything else by its JSON */
			if (!jstring_raw(el, end, &s, &n)) {
				s = el;
				n = ee ? (size_t)(ee - el) : 0;
			}
			evbuffer_add_printf(b, "%s{\"object\":\"embedding\","
			    "\"index\":%ld,\"embedding\":", idx ? "," : "", idx);
			add_embedding(b, s, n);
			evbuffer_add(b, "}", 1);
			idx++;
		}
	}
	evbuffer_add_printf(b, "],\"model\":\"" MODEL_ID "\",\"usage\":"
	    "{\"prompt_tokens\":%ld,\"total_tokens\":%ld}}", tokens, tokens);
	reply_json(req, 200, b);
}

/* GET /v1/models */
static void h_models(struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add_printf(b, "{\"object\":\"list\",\"data\":[{\"id\":\""
	    MODEL_ID "\",\"object\":\"model\",\"created\":0,"
	    "\"owned_by\":\"slurmgate-demo\"}]}");
	reply_json(req, 200, b);
}

/*
 * /echo[/...] (any method): reflect method, uri, headers and body.
 * "headers" maps lower-cased names to values (duplicates joined by ", "),
 * "header_list" keeps [name, value] pairs exactly as received, in order.
 */
static void h_echo(struct evhttp_request *req)
{
	struct evkeyvalq *ih = evhttp_request_get_input_headers(req);
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct evkeyval *h, *h2;
	struct evbuffer *b = evbuffer_new();
	const char *body;
	size_t blen;
	bool first = true;
	char *peer_host = NULL;
	ev_uint16_t peer_port = 0;

	evbuffer_add_printf(b, "{\"method\":\"%s\",\"uri\":",
	    method_name(evhttp_request_get_command(req)));
	json_str(b, evhttp_request_get_uri(req));
	evbuffer_add_printf(b, ",\"path\":");
	json_str(b, u ? evhttp_uri_get_path(u) : NULL);
	evbuffer_add_printf(b, ",\"query\":");
	json_str(b, u ? evhttp_uri_get_query(u) : NULL);
	if (evcon != NULL)
		evhttp_connection_get_peer(evcon, &peer_host, &peer_port);
	evbuffer_add_printf(b, ",\"peer\":");
	json_str(b, peer_host);
	evbuffer_add_printf(b, ",\"peer_port\":%u", (unsigned)peer_port);

	/* headers: lower-cased names, first occurrence collects duplicates */
	evbuffer_add_printf(b, ",\"headers\":{");
	TAILQ_FOREACH(h, ih, next) {
		bool seen = false;
		char *lname;

		TAILQ_FOREACH(h2, ih, next) {
			if (h2 == h)
				break;
			if (strcasecmp(h2->key, h->key) == 0) {
				seen = true;
				break;
			}
		}
		if (seen)
			continue;
		lname = strdup(h->key);
		if (lname == NULL)
			continue;
		for (char *c = lname; *c; c++)
			if (*c >= 'A' && *c <= 'Z')
				*c = (char)(*c - 'A' + 'a');
		evbuffer_add_printf(b, "%s", first ? "" : ",");
		first = false;
		json_str(b, lname);
		free(lname);
		evbuffer_add(b, ":", 1);
		/* join all values of this header name */
		struct evbuffer *val = evbuffer_new();
		for (h2 = h; h2 != NULL; h2 = TAILQ_NEXT(h2, next)) {
			if (strcasecmp(h2->key, h->key) != 0)
				continue;
			if (evbuffer_get_length(val) > 0)
				evbuffer_add(val, ", ", 2);
			evbuffer_add(val, h2->value, strlen(h2->value));
		}
		json_str_n(b, (const char *)evbuffer_pullup(val, -1),
		    evbuffer_get_length(val));
		evbuffer_free(val);
	}
	evbuffer_add_printf(b, "},\"header_list\":[");
	first = true;
	TAILQ_FOREACH(h, ih, next) {
		evbuffer_add_printf(b, "%s[", first ? "" : ",");
		first = false;
		json_str(b, h->key);
		evbuffer_add(b, ",", 1);
		json_str(b, h->value);
		evbuffer_add(b, "]", 1);
	}

	body = req_body(req, &blen);
	evbuffer_add_printf(b, "],\"body_length\":%zu,\"body_fnv1a64\":"
	    "\"%016llx\",\"body\":", blen,
	    (unsigned long long)fnv1a64(body, blen));
	if (blen <= ECHO_BODY_TEXT_MAX &&
	    utf8_valid((const unsigned char *)body, blen))
		json_str_n(b, body, blen);
	else
		evbuffer_add(b, "null", 4);
	evbuffer_add(b, "}", 1);
	reply_json(req, 200, b);
}

/* GET /slow?ms=N: reply {"slept_ms":N} after N ms (default 1000). */
static void h_slow(struct evhttp_request *req)
{
	long ms = query_long(req, "ms", 1000, 0, MAX_SLEEP_MS);

	job_start(req, JOB_SLOW, ms, ms);
}

/* Milliseconds of CPU time this process has used so far. */
static double cpu_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/*
 * GET /cpu?ms=N: busy-loop until this process has used N ms of CPU time
 * (default 10), then reply {"pid":..,"cpu_ms":N}.  A CPU-bound request:
 * the event loop serves nothing else meanwhile, so one process answers at
 * most 1000/N of them per second.  CPU time, not wall time, so that a
 * busy machine makes requests slower instead of cheaper.
 */
static void h_cpu(struct evhttp_request *req)
{
	long ms = query_long(req, "ms", 10, 0, MAX_CPU_MS);
	double until = cpu_now_ms() + (double)ms;
	volatile unsigned long spin = 0;
	struct evbuffer *b;

	while (cpu_now_ms() < until)
		for (int k = 0; k < 1000; k++)
			spin++;
	b = evbuffer_new();
	evbuffer_add_printf(b, "{\"pid\":%ld,\"cpu_ms\":%ld}", (long)getpid(),
	    ms);
	reply_json(req, 200, b);
}

/* GET /stream?n=N&ms=M: N SSE events "data: i" every M ms. */
static void h_stream(struct evhttp_request *req)
{
	long n = query_long(req, "n", 10, 0, MAX_STREAM_EVENTS);
	long ms = query_long(req, "ms", 100, 0, MAX_SLEEP_MS);

	job_start(req, JOB_PLAIN, n, ms);
}

/* ------------------------------------------------------------------ */
/* Routing                                                             */
/* ------------------------------------------------------------------ */

#define M_GET (EVHTTP_REQ_GET | EVHTTP_REQ_HEAD)
#define M_POST EVHTTP_REQ_POST

struct route {
	const char *path;
	int methods;
	void (*fn)(struct evhttp_request *);
};

static const struct route routes[] = {
	{ "/health", M_GET, h_health },
	{ "/info", M_GET, h_info },
	{ "/pid", M_GET, h_pid },
	{ "/small", M_GET, h_small },
	{ "/stats", M_GET, h_stats },
	{ "/slow", M_GET, h_slow },
	{ "/cpu", M_GET, h_cpu },
	{ "/stream", M_GET, h_stream },
	{ "/", M_POST, h_root },
	{ "/generate", M_POST, h_generate },
	{ "/generate_stream", M_POST, h_generate_stream },
	{ "/v1/chat/completions", M_POST, h_chat },
	{ "/v1/completions", M_POST, h_completions },
	{ "/v1/embeddings", M_POST, h_embeddings },
	{ "/v1/models", M_GET, h_models },
};

/* Generic evhttp callback: route by path, 404/405 as JSON. */
static void dispatch(struct evhttp_request *req, void *arg)
{
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
	const char *path = u ? evhttp_uri_get_path(u) : NULL;
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	struct evbuffer *b;

	(void)arg;
	stats.requests++;
	if (path == NULL || *path == '\0')
		path = "/";
	if (strcmp(path, "/echo") == 0 || strncmp(path, "/echo/", 6) == 0) {
		h_echo(req);
		return;
	}
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		if (strcmp(path, routes[i].path) != 0)
			continue;
		if ((routes[i].methods & (int)m) == 0) {
			evhttp_add_header(evhttp_request_get_output_headers(req),
			    "Allow", routes[i].methods == M_POST ? "POST" :
			    "GET, HEAD");
			reply_error(req, 405, "method not allowed");
			return;
		}
		routes[i].fn(req);
		return;
	}
	b = evbuffer_new();
	evbuffer_add_printf(b, "{\"error\":\"not found\",\"path\":");
	json_str(b, path);
	evbuffer_add(b, "}", 1);
	reply_json(req, 404, b);
}

/* ------------------------------------------------------------------ */
/* Startup / shutdown                                                  */
/* ------------------------------------------------------------------ */

/* Bind the listening socket and report it; exits on failure. */
static void start_listening(void)
{
	struct evhttp_bound_socket *bs;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	bs = evhttp_bind_socket_with_handle(http, cfg.host, (ev_uint16_t)cfg.port);
	if (bs == NULL) {
		logmsg("cannot listen on %s:%d: %s", cfg.host, cfg.port,
		    strerror(errno));
		exit(1);
	}
	bound_port = cfg.port;
	if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss,
	    &sl) == 0) {
		if (ss.ss_family == AF_INET)
			bound_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			bound_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	if (strchr(cfg.host, ':') != NULL)
		logmsg("listening on [%s]:%d", cfg.host, bound_port);
	else
		logmsg("listening on %s:%d", cfg.host, bound_port);
}

/* Timer callback: the simulated model load is finished. */
static void on_loaded(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	start_listening();
}

/* SIGTERM/SIGINT: leave the event loop. */
static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	logmsg("caught signal %d, exiting", (int)sig);
	event_base_loopbreak(base);
}

/* Print usage to f. */
static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
	    "usage: %s --port N [--host H] [--delay SECONDS] "
	    "[--token-delay MS] [--fail-after-start CODE]\n"
	    "env: PORT, DEMO_DELAY, DEMO_TOKEN_DELAY_MS, DEMO_FAIL_EXIT\n",
	    argv0);
}

/* Apply one setting from the environment or command line; false if bad. */
static bool set_option(int opt, const char *val)
{
	long l;
	double d;

	switch (opt) {
	case 'p':
		if (!parse_long(val, 0, 65535, &l))
			return false;
		cfg.port = (int)l;
		return true;
	case 'H':
		if (val == NULL || *val == '\0')
			return false;
		cfg.host = val;
		return true;
	case 'd':
		if (!parse_nonneg_double(val, &d) || d > 86400.0)
			return false;
		cfg.delay_s = d;
		return true;
	case 't':
		if (!parse_nonneg_double(val, &d) || d > (double)MAX_SLEEP_MS)
			return false;
		cfg.token_ms = (long)d;
		return true;
	case 'f':
		if (!parse_long(val, 0, 255, &l))
			return false;
		cfg.fail_exit = (int)l;
		return true;
	}
	return false;
}

/* Read settings from env, then argv (argv wins); exits on bad input. */
static void parse_config(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "host", required_argument, NULL, 'H' },
		{ "delay", required_argument, NULL, 'd' },
		{ "token-delay", required_argument, NULL, 't' },
		{ "fail-after-start", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const struct { int opt; const char *env; } envs[] = {
		{ 'p', "PORT" }, { 'd', "DEMO_DELAY" },
		{ 't', "DEMO_TOKEN_DELAY_MS" }, { 'f', "DEMO_FAIL_EXIT" },
	};
	int c;

	for (size_t i = 0; i < sizeof(envs) / sizeof(envs[0]); i++) {
		const char *v = getenv(envs[i].env);
		if (v != NULL && *v != '\0' && !set_option(envs[i].opt, v)) {
			logmsg("invalid value for %s: '%s'", envs[i].env, v);
			exit(2);
		}
	}
	while ((c = getopt_long(argc, argv, "p:H:d:t:f:h", longopts, NULL)) != -1) {
		if (c == 'h') {
			usage(stdout, argv[0]);
			exit(0);
		}
		if (c == '?' || !set_option(c, optarg)) {
			if (c != '?')
				logmsg("invalid value for option: '%s'", optarg);
			usage(stderr, argv[0]);
			exit(2);
		}
	}
	if (optind < argc) {
		logmsg("unexpected argument: '%s'", argv[optind]);
		usage(stderr, argv[0]);
		exit(2);
	}
	if (cfg.port < 0) {
		logmsg("no port given (--port N or PORT=N)");
		usage(stderr, argv[0]);
		exit(2);
	}
}

/* Entry point: configure, optionally wait, serve until SIGTERM/SIGINT. */
int main(int argc, char **argv)
{
	struct event *sigterm, *sigint, *loaded = NULL;

	parse_config(argc, argv);
	if (cfg.fail_exit >= 0) {
		fprintf(stderr, "demo: simulated failure\n");
		return cfg.fail_exit;
	}
	signal(SIGPIPE, SIG_IGN);

	base = event_base_new();
	http = base ? evhttp_new(base) : NULL;
	if (http == NULL) {
		logmsg("cannot initialise libevent");
		return 1;
	}
	evhttp_set_gencb(http, dispatch, NULL);
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
	    EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	    EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT |
	    EVHTTP_REQ_PATCH);
	evhttp_set_max_body_size(http, MAX_BODY);
	/*
	 * The read timeout also bounds the silence between stream events and
	 * a /slow wait (evhttp watches for EOF while replying), so make it
	 * as long as the longest wait we accept.
	 */
	evhttp_set_timeout(http, 3600);

	sigterm = evsignal_new(base, SIGTERM, on_signal, NULL);
	sigint = evsignal_new(base, SIGINT, on_signal, NULL);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);

	if (cfg.delay_s > 0) {
		struct timeval tv;

		tv.tv_sec = (time_t)cfg.delay_s;
		tv.tv_usec = (suseconds_t)((cfg.delay_s - (double)tv.tv_sec) * 1e6);
		logmsg("loading model for %.3f s", cfg.delay_s);
		loaded = evtimer_new(base, on_loaded, NULL);
		evtimer_add(loaded, &tv);
	} else {
		start_listening();
	}

	event_base_dispatch(base);

	jobs_cancel_all();
	evhttp_free(http);
	if (loaded)
		event_free(loaded);
	event_free(sigterm);
	event_free(sigint);
	event_base_free(base);
	return 0;
}
