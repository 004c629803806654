/*
 * libFuzzer target for the spool's envelope encoding: decoding arbitrary
 * bytes must fail cleanly or give an envelope that encodes and decodes
 * back to the same text; state records must never crash the decoder.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct envelope *env, *again;
	char err[256], *text, *text2;
	size_t used, len, len2;
	const char *rec, *nl, *end = buf + size;

	if ((env = envelope_decode(buf, size, &used, err, sizeof(err))) ==
	    NULL)
		return 0;
	assert(used <= size);
	/* The rest of the input is taken as state records. */
	for (rec = buf + used; rec < end; rec = nl + 1) {
		if ((nl = memchr(rec, '\n', (size_t)(end - rec))) == NULL)
			break;
		(void)envelope_apply_record(env, rec, (size_t)(nl - rec + 1));
	}
	text = envelope_encode(env, &len);
	again = envelope_decode(text, len, &used, err, sizeof(err));
	assert(again != NULL);
	assert(used == len);
	text2 = envelope_encode(again, &len2);
	assert(len == len2 && memcmp(text, text2, len) == 0);
	free(text);
	free(text2);
	envelope_free(again);
	envelope_free(env);
	return 0;
}
