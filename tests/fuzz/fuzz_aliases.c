/*
 * libFuzzer target for the aliases parser and the expansion: any bytes
 * parse or fail with a "fuzz:LINE: " message; every entry's line is within
 * the input, names are lower-case without control characters and found
 * again by look-up; expanding each name ends (loops, depth and size are
 * bounded) with a de-duplicated result or a reason.
 */
#include <assert.h>
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aliases.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* No domain, or @localhost: local. */
static int
local_name(const char *addr, char *name, size_t namesize, void *arg)
{
	const char *at = strrchr(addr, '@');
	size_t len = at != NULL ? (size_t)(at - addr) : strlen(addr), i;

	(void)arg;
	if (at != NULL && strcmp(at, "@localhost") != 0)
		return 0;
	for (i = 0; i < len && i + 1 < namesize; i++)
		name[i] = (char)tolower((unsigned char)addr[i]);
	name[i] = '\0';
	return 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct aliases_resolver r;
	struct aliases *al;
	const char *const *t;
	char err[256], why[256], **out;
	size_t i, j, k, n, nout, lines = 1;
	const char *name;

	for (i = 0; i < size; i++)
		if (data[i] == '\n')
			lines++;
	al = aliases_parse((const char *)data, size, "fuzz", err, sizeof(err));
	if (al == NULL) {
		assert(strncmp(err, "fuzz:", 5) == 0);
		return 0;
	}
	memset(&r, 0, sizeof(r));
	r.aliases = al;
	r.local_name = local_name;
	r.max_results = 50;
	for (i = 0; i < aliases_count(al); i++) {
		name = aliases_name(al, i);
		assert(aliases_line(al, i) >= 1 && aliases_line(al, i) <= lines);
		for (j = 0; name[j] != '\0'; j++)
			assert((unsigned char)name[j] ==
			    tolower((unsigned char)name[j]) &&
			    (unsigned char)name[j] >= 0x20 && name[j] != 0x7f);
		t = aliases_lookup(al, name, &n);
		assert(t != NULL && n >= 1);
		r.catch_all = i % 2 ? "catch@example.com" : NULL;
		if (aliases_expand(&r, name, &out, &nout, why, sizeof(why)) !=
		    ALIASES_OK) {
			assert(out == NULL && why[0] != '\0');
			continue;
		}
		assert(nout >= 1 && nout <= r.max_results);
		for (j = 0; j < nout; j++)
			for (k = j + 1; k < nout; k++)
				assert(!aliases_same_address(out[j], out[k]));
		aliases_list_free(out, nout);
	}
	aliases_free(al);
	return 0;
}
