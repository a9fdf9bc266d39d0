/* api.h - the state as JSON (served by admin.c, streamed by events.c). */
#ifndef SG_API_H
#define SG_API_H

#include <stdbool.h>

#include <jansson.h>

struct service;

/* One service: the seed's {"Name","started","running","reason"}, or all of
 * it ("name", no "Name"). */
json_t *api_service_json(const struct service *s, bool seed_style);
/* {"version","service_management","admin_token_required","services":[...]};
 * SEED_NAMES (/info): each service carries the seed's "Name" beside "name". */
json_t *api_state_json(bool seed_names);

#endif
