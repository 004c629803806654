/*
 * libFuzzer target for the spool log's record frame: scanning arbitrary
 * bytes must stay inside the buffer, and every record it accepts must be
 * exactly what logrec_header() writes for that record.
 */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "logrec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t salt;

static int
check(const struct logrec *rec, const unsigned char *payload, size_t offset,
    void *arg)
{
	const uint8_t *data = arg;
	unsigned char hdr[LOGREC_HEADER_LEN];

	logrec_header(hdr, salt, rec->type, rec->id, rec->aux, payload,
	    rec->len);
	assert(memcmp(hdr, data + offset, LOGREC_HEADER_LEN) == 0);
	assert(payload == data + offset + LOGREC_HEADER_LEN);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t i, valid;

	/* The first 8 bytes choose the salt; the rest is the file. */
	if (size < 8)
		return 0;
	salt = 0;
	for (i = 0; i < 8; i++)
		salt |= (uint64_t)data[i] << (8 * i);
	valid = logrec_scan(data + 8, size - 8, salt, check,
	    (void *)(uintptr_t)(data + 8));
	assert(valid <= size - 8);
	return 0;
}
