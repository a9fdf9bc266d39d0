/* api.h - the state as JSON (served by admin.c, streamed by events.c). */
#ifndef SG_API_H
#define SG_API_H

#include <stdbool.h>

#include <jansson.h>

struct hconn;
struct http_msg;
struct service;

/* One service: the seed's {"Name","started","running","reason"}, or all of
 * it ("name", no "Name"). */
json_t *api_service_json(const struct service *s, bool seed_style);
/* {"version","service_management","admin_token_required","services":[...]};
 * SEED_NAMES (/info): each service carries the seed's "Name" beside "name". */
json_t *api_state_json(bool seed_names);

/* Cut the output that failed starts' reasons quote (auth.h) from every
 * string in V (SERVICE: whose logs hold it, unless V names its own). */
void api_hide_output(json_t *v, const char *service);
/* O as request M on C may see it: without the output unless
 * auth_sees_output. Returns O. */
json_t *api_as_seen(struct hconn *c, const struct http_msg *m, json_t *o);

#endif
