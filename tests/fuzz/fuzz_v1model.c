/* fuzz_v1model.c - libFuzzer target for the /v1 body's model lookup
 * (router_v1_model in src/router.c): arbitrary bytes as a JSON body. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *model = NULL;
	bool stream = true;
	enum v1_result r = router_v1_model((const char *)data, size, &model, &stream);

	if (r == V1_OK) {
		if (model == NULL)
			abort();
		(void)strlen(model);
	} else if (model != NULL || stream) {
		fprintf(stderr, "fuzz_v1model: result %d left model or stream set\n", (int)r);
		abort();
	}
	free(model);
	return 0;
}
