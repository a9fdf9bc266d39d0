/* front.h - the listener and the session (routing: router.c; access: auth.c,
 * access.c; the gateway's own endpoints: admin.c). */
#ifndef SG_FRONT_H
#define SG_FRONT_H

#include <stddef.h>

struct config;
struct event_base;

/* Listen on cfg->listen_host:listen_port. Returns -1 (and logs) on failure. */
int front_start(struct event_base *base, struct config *cfg);
/* Take a reloaded config (limits, tokens, keys); the listener stays. */
void front_reconfigure(struct config *cfg);
/* Stop accepting new connections (shutdown). */
void front_stop_accepting(void);
/* Close the listener. */
void front_free(void);

#endif
