/*
 * libFuzzer target for the authinfo/netrc parser: any bytes parse without
 * crashing, every entry's line is within the file, and lookups and the
 * quoting helper hold their contracts (a quoted value parses back to
 * itself).
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "authinfo.h"
#include "xmalloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct authinfo *ai, *back;
	const struct authinfo_entry *e;
	char *q, *line;
	size_t i, n, lines = 1;

	for (i = 0; i < size; i++)
		if (data[i] == '\n')
			lines++;
	ai = authinfo_parse((const char *)data, size, "fuzz", NULL, NULL);
	n = authinfo_count(ai);
	for (i = 0; i < n; i++) {
		e = authinfo_get(ai, i);
		assert(e->line >= 1 && e->line <= lines);
		if (e->host != NULL)
			(void)authinfo_match(ai, e->host, e->port, e->login);
		if (e->password == NULL ||
		    (q = authinfo_quote(e->password)) == NULL)
			continue;
		line = xasprintf("machine h password %s\n", q);
		back = authinfo_parse(line, strlen(line), "q", NULL, NULL);
		assert(authinfo_count(back) == 1);
		assert(strcmp(authinfo_get(back, 0)->password,
		    e->password) == 0);
		authinfo_free(back);
		xfree_secret_str(line);
		xfree_secret_str(q);
	}
	(void)authinfo_match(ai, "smtp.example.com", "587", NULL);
	authinfo_free(ai);
	return 0;
}
