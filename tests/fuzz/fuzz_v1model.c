/* fuzz_v1model.c - libFuzzer target for the /v1 body's model lookup
 * (router_v1_model in src/router.c): arbitrary bytes as a JSON body (the
 * top-level scan of large bodies, router_v1_scan, must read what the whole
 * parse reads of every body that parse takes), and
 * as a multipart form (router_form_feed), fed whole and in pieces whose
 * sizes the first byte picks: both feeds must agree. */
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

	/* the top-level scan (bodies past 1 MiB) reads what the parse reads */
	{
		char *sm = NULL;
		bool ss = true;
		enum v1_result sr = router_v1_scan((const char *)data, size, &sm, &ss);

		if ((sr == V1_OK) != (sm != NULL) || (sr != V1_OK && ss) ||
		    (r == V1_OK && (sr != V1_OK || strcmp(model, sm) != 0 || ss != stream))) {
			fprintf(stderr, "fuzz_v1model: the scan (%d) disagrees with the parse (%d)\n",
				(int)sr, (int)r);
			abort();
		}
		free(sm);
	}
	free(model);

	/* the same bytes as a form, whole and in pieces */
	{
		static const char ct[] = "multipart/form-data; boundary=b0";
		struct form_scan *a = malloc(sizeof *a), *b = malloc(sizeof *b);
		char *ma = NULL, *mb = NULL;
		enum form_result ra, rb = FORM_MORE;
		size_t step = size ? (size_t)data[0] % 7 + 1 : 1;

		if (router_form_start(a, ct, sizeof ct - 1) != 0 || router_form_start(b, ct, sizeof ct - 1) != 0)
			abort();
		ra = router_form_feed(a, (const char *)data, size, &ma);
		for (size_t k = 0; k < size && rb == FORM_MORE; k += step)
			rb = router_form_feed(b, (const char *)data + k, size - k < step ? size - k : step, &mb);
		if (ra != rb || (ra == FORM_OK) != (ma != NULL) || (ma && strcmp(ma, mb) != 0)) {
			fprintf(stderr, "fuzz_v1model: the form scan depends on how it is fed\n");
			abort();
		}
		free(ma);
		free(mb);
		free(a);
		free(b);
	}
	return 0;
}
