/* front.h - the listener, routing, the seed's endpoints and the JSON API. */
#ifndef SG_FRONT_H
#define SG_FRONT_H

#include <stdbool.h>
#include <stddef.h>

struct config;
struct event_base;

/* Listen on cfg->listen_host:listen_port. Returns -1 (and logs) on failure. */
int front_start(struct event_base *base, struct config *cfg);
/* Take a reloaded config (limits, tokens, keys); the listener stays. */
void front_reconfigure(struct config *cfg);
/* Whether admin endpoints need the admin token (the status page hides its
 * token box when not). */
bool front_admin_token_required(void);
/* Stop accepting new connections (shutdown). */
void front_stop_accepting(void);
/* Close the listener. */
void front_free(void);

#endif
