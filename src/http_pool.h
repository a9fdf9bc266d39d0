/* http_pool.h - the upstream keep-alive pool, next to the HTTP client:
 * idle connections to an instance, most recently used first. Each pooled
 * connection holds a reference to its instance (instance.h); a pooled
 * connection that closes leaves the pool by itself. */
#ifndef SG_HTTP_POOL_H
#define SG_HTTP_POOL_H

struct hconn;
struct instance;

/* At most KEEPALIVE idle connections per instance (upstream_keepalive). */
void http_pool_init(int keepalive);
/* An idle connection to I, taken out of the pool (NULL: none, or I is not
 * in rotation). The caller owns it. */
struct hconn *instance_pool_get(struct instance *i);
/* Park C, whose exchange with I just ended, for the next request to I; it
 * is closed instead when I is out of rotation or the pool is full. */
void instance_pool_put(struct instance *i, struct hconn *c);
/* Close every idle connection to I (one of them turned out stale). */
void instance_pool_flush(struct instance *i);

#endif
