/*
 * libFuzzer target for the maildrop file format, which local users can
 * forge at will: parsing arbitrary bytes must fail cleanly or give a
 * header whose re-encoding parses back to the same values, and the trailer
 * check must never read outside its buffer.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dropfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct dropfile df, again;
	char err[256], *hdr;
	size_t hdrlen, hlen2, taillen, i;

	if (dropfile_parse_header(buf, size, &df, &hdrlen, err,
	    sizeof(err)) == -1)
		return 0;
	assert(hdrlen <= size);
	taillen = size - hdrlen < DROPFILE_TRAILER_MAX ? size - hdrlen :
	    DROPFILE_TRAILER_MAX;
	(void)dropfile_check_trailer(buf + size - taillen, taillen,
	    (off_t)size, hdrlen, err, sizeof(err));
	hdr = dropfile_header(df.uid, df.sender,
	    (const char *const *)df.rcpts, df.nrcpts, &hlen2);
	assert(dropfile_parse_header(hdr, hlen2, &again, &hlen2, err,
	    sizeof(err)) == 0);
	assert(again.uid == df.uid && again.nrcpts == df.nrcpts);
	assert(strcmp(again.sender, df.sender) == 0);
	for (i = 0; i < df.nrcpts; i++)
		assert(strcmp(again.rcpts[i], df.rcpts[i]) == 0);
	dropfile_clear(&again);
	dropfile_clear(&df);
	free(hdr);
	return 0;
}
