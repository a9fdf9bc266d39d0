/* front.h - the listener and the session (routing: router.c; access: auth.c,
 * access.c; the gateway's own endpoints: admin.c). */
#ifndef SG_FRONT_H
#define SG_FRONT_H

#include <stddef.h>

struct gw;

/* Listen on the listen_host:listen_port of G's config (G: gw.h, kept).
 * Returns -1 (and logs) on failure. */
int front_start(struct gw *g);
/* After a reload swapped gw->cfg: apply its limits, tokens and keys (and
 * drop every pointer into the old config); the listener stays. */
void front_reconfigure(void);
/* Stop accepting new connections (shutdown). */
void front_stop_accepting(void);
/* Close the listener. */
void front_free(void);

#endif
