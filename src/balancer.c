/* balancer.c - least outstanding with a tried set (pure; see balancer.h). */
#include "balancer.h"

#include <limits.h>

int balancer_pick(const struct bal_target *t, size_t n, const bool *tried, long (*rnd)(void))
{
	int best = -1, ties = 0;

	for (size_t k = 0; k < n; k++) {
		if (!t[k].eligible || (tried != NULL && tried[k]))
			continue;
		if (best < 0 || t[k].load < t[best].load) {
			best = (int)k;
			ties = 1;
		} else if (t[k].load == t[best].load && rnd() % ++ties == 0) {
			best = (int)k;
		}
	}
	return best;
}

int balancer_limit(bool others_booting, int target)
{
	return others_booting ? target : INT_MAX;
}
