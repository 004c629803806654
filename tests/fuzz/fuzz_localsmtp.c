/*
 * libFuzzer target for the -bs dialogue sendmail holds when the daemon is
 * down: any bytes, split at a point the input chooses, must give replies
 * that are CRLF lines with a 3-digit code, and every message handed to
 * the delivery callback must fit max_size, hold no NUL and end with CRLF.
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "localsmtp.h"

#define MAX_SIZE 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
deliver(const struct localsmtp_msg *m, char *reply, size_t replylen,
    void *arg)
{
	size_t i;

	assert(m->len <= MAX_SIZE);
	assert(memchr(m->data, '\0', m->len) == NULL);
	assert(m->len == 0 || (m->len >= 2 && m->data[m->len - 2] == '\r' &&
	    m->data[m->len - 1] == '\n'));
	assert(m->nrcpts > 0 && m->nrcpts <= 5);
	for (i = 0; i < m->nrcpts; i++)
		assert(m->rcpts[i][0] != '\0');
	snprintf(reply, replylen, "%s", m->len % 2 ? "250 2.0.0 Ok" :
	    "451 4.3.0 no");
}

static void
check_output(struct localsmtp *s)
{
	const char *p, *end, *cr;
	size_t len;

	p = localsmtp_output(s, &len);
	end = p + len;
	while (p < end) {
		assert(end - p >= 5);
		assert(p[0] >= '2' && p[0] <= '5' && p[1] >= '0' &&
		    p[1] <= '9' && p[2] >= '0' && p[2] <= '9');
		assert(p[3] == ' ' || p[3] == '-');
		cr = memchr(p, '\r', (size_t)(end - p));
		assert(cr != NULL && cr + 1 < end && cr[1] == '\n');
		assert(memchr(p, '\n', (size_t)(cr - p)) == NULL);
		p = cr + 2;
	}
	localsmtp_output_clear(s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct localsmtp_params p = { "fuzz.example", MAX_SIZE, 5, NULL,
		deliver, NULL };
	struct localsmtp *s;
	size_t cut;
	int ended;

	if (size == 0)
		return 0;
	cut = data[0] % size;
	s = localsmtp_new(&p);
	check_output(s);
	ended = localsmtp_input(s, (const char *)data + 1, cut);
	check_output(s);
	if (!ended && size > cut + 1)
		ended = localsmtp_input(s, (const char *)data + 1 + cut,
		    size - 1 - cut);
	check_output(s);
	assert(!localsmtp_quit_seen(s) || ended);
	localsmtp_free(s);
	return 0;
}
