/* http_error.c - the gateway's own error answers, in the shape the client
 * reads (see http_server.h): OpenAI's for a request whose target is under
 * the OpenAI prefix (/v1: the openai clients then print the message, not
 * raw JSON), else {"error":"...","status":N}. The shape follows the
 * request that failed, as far as its target was read when it failed.
 * Only the error path runs here: a request that gets no error costs
 * nothing. */
#include "http_conn_impl.h"

#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

static const char *openai_prefix;

void http_set_openai_prefix(const char *prefix)
{
	openai_prefix = prefix;
}

bool http_openai_target(struct hconn *c)
{
	size_t n, plen;
	const char *t = c->side->requests ? hparse_target(&c->hp, &n) : NULL, *end;

	if (openai_prefix == NULL || t == NULL)
		return false;
	end = t + n;
	if (t[0] != '/') {
		/* absolute form: the path after scheme://authority */
		if (n >= 7 && strncasecmp(t, "http://", 7) == 0)
			t += 7;
		else if (n >= 8 && strncasecmp(t, "https://", 8) == 0)
			t += 8;
		else
			return false;
		while (t < end && *t != '/' && *t != '?' && *t != '#')
			t++;
	}
	plen = strlen(openai_prefix);
	if ((size_t)(end - t) < plen || memcmp(t, openai_prefix, plen) != 0)
		return false;
	t += plen;
	return t == end || *t == '/' || *t == '?' || *t == '#';
}

/* OpenAI's type and code for an error of the gateway's own with STATUS. */
static void openai_kind(int status, const char **type, const char **code)
{
	*type = status >= 500 && status != 505 ? "server_error" : "invalid_request_error";
	switch (status) {
	case 405: *code = "method_not_allowed"; break;
	case 408: *code = "request_timeout"; break;
	case 413: *code = "request_too_large"; break;
	case 421: *code = "misdirected_request"; break;
	case 431: *code = "request_header_fields_too_large"; break;
	case 500: *code = "internal_error"; break;
	case 505: *code = "http_version_not_supported"; break;
	default: *code = status >= 500 ? "server_error" : "invalid_request";
	}
}

/* S as a JSON string. */
static void add_json_string(struct evbuffer *b, const char *s)
{
	evbuffer_add(b, "\"", 1);
	for (const char *p = s; *p; p++) {
		unsigned char ch = (unsigned char)*p;
		if (ch == '"' || ch == '\\')
			evbuffer_add_printf(b, "\\%c", ch);
		else if (ch < 0x20)
			evbuffer_add_printf(b, "\\u%04x", ch);
		else
			evbuffer_add(b, p, 1);
	}
	evbuffer_add(b, "\"", 1);
}

void http_reply_error(struct hconn *c, int status, const char *extra, const char *msg)
{
	struct evbuffer *b = evbuffer_new();
	const char *type, *code;
	size_t n;

	if (http_openai_target(c)) {
		openai_kind(status, &type, &code);
		evbuffer_add_printf(b, "{\"error\":{\"message\":");
		add_json_string(b, msg);
		evbuffer_add_printf(b, ",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}\n", type, code);
	} else {
		evbuffer_add_printf(b, "{\"error\":");
		add_json_string(b, msg);
		evbuffer_add_printf(b, ",\"status\":%d}\n", status);
	}
	n = evbuffer_get_length(b);
	http_reply(c, status, "application/json", extra, (const char *)evbuffer_pullup(b, -1), n);
	evbuffer_free(b);
}
