/* service_pick.c - which instance takes a request: the service's side of
 * the pure balancer.c (its instances laid out as targets, the tried set of
 * a retry, the cold-burst share), and what counts as a start under way. */
#include "service.h"

#include <stdbool.h>
#include <stdlib.h>

#include "balancer.h"
#include "config.h"
#include "instance.h"
#include "service_int.h"
#include "util.h"

static bool any_booting_except(const struct service *s, const struct instance *except)
{
	struct instance *i;

	TAILQ_FOREACH(i, &s->insts, link)
		if (i != except && inst_booting(i->state))
			return true;
	return false;
}

static bool any_booting(const struct service *s)
{
	return any_booting_except(s, NULL);
}

/* Booting, or held by its launcher: a start is under way (no second one). */
bool svc_any_pending(const struct service *s, const struct instance *except)
{
	struct instance *i;

	TAILQ_FOREACH(i, &s->insts, link)
		if (i != except && (inst_booting(i->state) || i->state == INST_HELD))
			return true;
	return false;
}

/* svc_pick_untried's scratch: a service's instances as balancer targets */
static struct bal_target *bal_t;
static struct instance **bal_at;
static bool *bal_tried;
static size_t bal_cap;

static bool among(const struct instance *i, struct instance *const *set, int n)
{
	for (int k = 0; k < n; k++)
		if (set[k] == i)
			return true;
	return false;
}

/* The ready instance with the fewest requests in flight, skipping the N in
 * TRIED (balancer.c); among ties one at random. */
struct instance *svc_pick_untried(struct service *s, struct instance *const *tried, int ntried)
{
	struct instance *i;
	size_t n = 0;
	int k;

	if ((size_t)s->ninst > bal_cap) {
		bal_cap = (size_t)s->ninst * 2;
		bal_t = xrealloc(bal_t, bal_cap * sizeof *bal_t);
		bal_at = xrealloc(bal_at, bal_cap * sizeof *bal_at);
		bal_tried = xrealloc(bal_tried, bal_cap * sizeof *bal_tried);
	}
	TAILQ_FOREACH(i, &s->insts, link) {
		bal_t[n] = (struct bal_target){i->inflight, i->state == INST_READY};
		bal_tried[n] = among(i, tried, ntried);
		bal_at[n++] = i;
	}
	k = balancer_pick(bal_t, n, ntried > 0 ? bal_tried : NULL, random);
	return k < 0 ? NULL : bal_at[k];
}

struct instance *svc_pick_ready(struct service *s)
{
	return svc_pick_untried(s, NULL, 0);
}

bool service_has_untried(struct service *s, struct instance *const *tried, int n)
{
	return svc_pick_untried(s, tried, n) != NULL;
}

/* How many requests a ready instance takes while others still boot: its
 * share (target_concurrency), so a cold burst spreads over the instances
 * as they become ready. Unlimited when nothing else boots. */
int svc_dispatch_limit(const struct service *s)
{
	return balancer_limit(any_booting(s), s->cfg->target_concurrency);
}

void svc_pick_free(void)
{
	free(bal_t);
	free(bal_at);
	free(bal_tried);
	bal_t = NULL;
	bal_at = NULL;
	bal_tried = NULL;
	bal_cap = 0;
}
