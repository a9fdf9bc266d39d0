/* http_pool.c - the upstream keep-alive pool: idle connections to an
 * instance, kept for the next request to it (see http_pool.h). */
#include "http_pool.h"

#include <stdlib.h>

#include "http.h"
#include "instance.h"
#include "util.h"

static int pool_cap = 1024;

void http_pool_init(int keepalive)
{
	pool_cap = keepalive;
}

static void pool_remove(struct instance *i, struct hconn *c)
{
	for (int k = 0; k < i->npool; k++)
		if (i->pool[k] == c) {
			i->pool[k] = i->pool[--i->npool];
			instance_unref(i);
			return;
		}
}

static void pool_closed(struct hconn *c, const char *why)
{
	(void)why;
	pool_remove(http_owner(c), c);
}

static const struct hconn_ops pool_ops = {
	.closed = pool_closed,
};

struct hconn *instance_pool_get(struct instance *i)
{
	while (i->npool > 0 && i->state == INST_READY) {
		struct hconn *c = i->pool[--i->npool];   /* the most recently used */
		const char *stale;

		http_set_owner(c, NULL, NULL);
		instance_unref(i);   /* I is still referenced by the caller's exchange */
		if ((stale = http_parked_stale(c)) == NULL)
			return c;
		http_close(c, stale);
	}
	return NULL;
}

void instance_pool_flush(struct instance *i)
{
	struct hconn **pool = i->pool;
	int n = i->npool;

	/* take the array first: closing never sees a half-compacted pool */
	i->pool = NULL;
	i->npool = i->poolcap = 0;
	instance_ref(i);
	for (int k = 0; k < n; k++) {
		http_set_owner(pool[k], NULL, NULL);
		http_close(pool[k], "pool flushed");
		instance_unref(i);
	}
	free(pool);
	instance_unref(i);
}

void instance_pool_put(struct instance *i, struct hconn *c)
{
	if (i->state != INST_READY || i->npool >= pool_cap) {
		http_set_owner(c, NULL, NULL);   /* the exchange that used it is ending */
		http_close(c, i->state != INST_READY ? "instance out of rotation" : "pool full");
		return;
	}
	if (i->npool == i->poolcap) {
		i->poolcap = i->poolcap ? i->poolcap * 2 : 16;
		i->pool = xrealloc(i->pool, (size_t)i->poolcap * sizeof *i->pool);
	}
	i->pool[i->npool++] = c;
	instance_ref(i);
	http_set_owner(c, &pool_ops, i);
	http_park(c, 30);
}
