/* admin.h - the gateway's own endpoints: the seed's (/info, /check_<route>,
 * /demand_<route>, /enable_service_management and its kin), the JSON API
 * (/api/...), /metrics and the pages (the status page, and the page a
 * browser waits on while its service starts). */
#ifndef SG_ADMIN_H
#define SG_ADMIN_H

#include <stdbool.h>

struct hconn;
struct http_msg;
struct route_target;
struct service;

/* If request M (resolved to RT) is for one of the endpoints above, answer
 * it (state-changing ones pass auth_same_site and auth_admin first) and
 * return true; *EVENTS becomes true if the connection turned into an
 * /api/events stream (end it with events_unsubscribe). False: not ours. */
bool admin_serve(struct hconn *c, const struct http_msg *m, const struct route_target *rt,
		 bool *events);
/* A browser asked for S while it is not ready: demand it, and answer a
 * page that reloads itself until it is (503, Retry-After; 502 while its
 * start failed and it backs off). */
void admin_waiting_page(struct hconn *c, struct service *s);

#endif
