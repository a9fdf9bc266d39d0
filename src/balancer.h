/* balancer.h - least outstanding requests, with a "tried" set (as h2o's
 * lib/common/balancer/least_conn.c), and the cold-burst spread rule.
 *
 * Pure: the caller lays its instances out as an array of targets, and
 * passes the random source (random() in the gateway, a fixed sequence in
 * tests/unit/test_balancer.c). */
#ifndef SG_BALANCER_H
#define SG_BALANCER_H

#include <stdbool.h>
#include <stddef.h>

struct bal_target {
	int load;        /* requests in flight on it */
	bool eligible;   /* in rotation (READY) */
};

/* The eligible target with the fewest requests in flight, skipping those
 * marked in TRIED (NULL: none tried); among ties one at random (reservoir
 * sampling with RND), so equal instances share the load. -1 if none. */
int balancer_pick(const struct bal_target *t, size_t n, const bool *tried, long (*rnd)(void));

/* How many requests a ready instance takes while others still boot: its
 * share (TARGET, the target_concurrency), so a cold burst spreads over the
 * instances as they become ready. Unlimited when nothing else boots. */
int balancer_limit(bool others_booting, int target);

#endif
