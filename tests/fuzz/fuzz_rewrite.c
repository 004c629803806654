/*
 * libFuzzer target for header rewriting. The input is a header section
 * (and maybe a body). Checked: with a callback that keeps every address
 * nothing changes; with one that replaces local names by a marker, the
 * text between the markers is the input's own, in order (only address
 * spans were replaced); the header-end scanner agrees whether fed at once or
 * byte by byte.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rewrite.h"
#include "xmalloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MARK "\x01" /* never in a valid addr-spec of the input */

static char *
keep(const char *addr, void *arg)
{
	(void)addr;
	(void)arg;
	return NULL;
}

/* Replaces every address without '@' by MARK: the output has one MARK
 * per replaced address and is otherwise the input. */
struct seen {
	char *addrs[4096];
	size_t n;
};

static char *
mark(const char *addr, void *arg)
{
	struct seen *seen = arg;

	assert(strchr(addr, '\r') == NULL && strchr(addr, '\n') == NULL);
	if (strchr(addr, '@') != NULL || seen->n == 4096)
		return NULL;
	seen->addrs[seen->n++] = xstrdup(addr);
	return xstrdup(MARK);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	struct seen seen;
	size_t outlen, i, cur = 0, cur2 = 0, len;
	char *out;
	int done_all, done_step = 0;

	if (memchr(data, 0x01, size) != NULL)
		return 0;
	assert(rewrite_headers(in, size, keep, NULL, &outlen) == NULL);

	seen.n = 0;
	out = rewrite_headers(in, size, mark, &seen, &outlen);
	if (out != NULL) {
		/* The text between the marks is the input's, in order: the
		 * first piece starts it, the last ends it. */
		const char *piece = out, *m, *at = in;
		size_t marks = 0;

		for (;;) {
			m = memchr(piece, MARK[0], outlen - (size_t)(piece - out));
			len = m != NULL ? (size_t)(m - piece) :
			    outlen - (size_t)(piece - out);
			if (piece == out) {
				assert(len <= size && memcmp(in, piece, len) == 0);
				at = in + len;
			} else if (m == NULL) {
				assert(len <= (size_t)(in + size - at));
				assert(memcmp(in + size - len, piece, len) == 0);
			} else {
				at = memmem(at, (size_t)(in + size - at), piece,
				    len);
				assert(at != NULL);
				at += len;
			}
			if (m == NULL)
				break;
			marks++;
			piece = m + 1;
		}
		/* A field that turns out not to parse keeps its addresses even
		 * though the callback saw them. */
		assert(marks <= seen.n && marks > 0);
		free(out);
	}
	for (i = 0; i < seen.n; i++)
		free(seen.addrs[i]);

	done_all = rewrite_header_done(in, size, &cur);
	for (i = 1; i <= size && !done_step; i++)
		done_step = rewrite_header_done(in, i, &cur2);
	assert(done_all == done_step);
	(void)rewrite_complete_fields(in, size);
	return 0;
}
