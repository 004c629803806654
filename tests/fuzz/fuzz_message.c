/*
 * libFuzzer target for the message sendmail reads: any bytes must parse
 * (or be refused for a NUL) into a message whose serialisation has only
 * CRLF line ends, no line over the limit, no line break inside a UTF-8
 * character of an input that is UTF-8, and parses back to itself; the -t
 * address extraction must never crash on what the fields hold.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "escape.h"
#include "message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Checks the line ends and lengths, and, when utf8, that each line is
 * whole UTF-8 characters. */
static void
check_lines(const char *s, size_t len, int utf8)
{
	const char *p = s, *end = s + len, *cr;

	while (p < end) {
		cr = memchr(p, '\r', (size_t)(end - p));
		assert(cr != NULL && cr + 1 < end && cr[1] == '\n');
		assert(memchr(p, '\n', (size_t)(cr - p)) == NULL);
		assert((size_t)(cr - p) <= MESSAGE_LINE_MAX);
		assert(!utf8 || escape_utf8_whole(p, (size_t)(cr - p)));
		p = cr + 2;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct message m, again;
	char err[256], *out, *out2, **rcpts = NULL;
	size_t len, len2, n = 0;

	if (message_parse((const char *)data, size, &m, err, sizeof(err)) !=
	    MESSAGE_OK) {
		assert(memchr(data, '\0', size) != NULL);
		return 0;
	}
	out = message_serialize(&m, &len);
	assert(strlen(out) == len);
	check_lines(out, len, escape_utf8_whole((const char *)data, size));
	assert(message_parse(out, len, &again, err, sizeof(err)) ==
	    MESSAGE_OK);
	out2 = message_serialize(&again, &len2);
	assert(len == len2 && memcmp(out, out2, len) == 0);
	(void)message_recipients(&m, 0, &rcpts, &n, err, sizeof(err));
	(void)message_recipients(&m, 1, &rcpts, &n, err, sizeof(err));
	message_addrs_free(rcpts, n);
	free(out);
	free(out2);
	message_clear(&again);
	message_clear(&m);
	return 0;
}
