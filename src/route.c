/*
 * Routing rules: matching a sender address against them. No I/O and no
 * state beyond the rules themselves, which are immutable once compiled.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "route.h"

int
route_compile(struct route *r, char *err, size_t errlen)
{
	int rc;

	if (r->kind != ROUTE_REGEXP)
		return 0;
	rc = regcomp(&r->re, r->pattern, REG_EXTENDED | REG_ICASE |
	    REG_NOSUB);
	if (rc != 0) {
		regerror(rc, &r->re, err, errlen);
		return -1;
	}
	r->compiled = 1;
	return 0;
}

void
route_clear(struct route *r)
{
	if (r == NULL)
		return;
	if (r->compiled)
		regfree(&r->re);
	r->compiled = 0;
	free(r->pattern);
	r->pattern = NULL;
}

static int
route_matches(const struct route *r, const char *sender)
{
	const char *at;

	switch (r->kind) {
	case ROUTE_SENDER:
		return sender[0] != '\0' && strcasecmp(r->pattern, sender) == 0;
	case ROUTE_DOMAIN:
		/* The last "@": a quoted local part may hold one too. */
		if ((at = strrchr(sender, '@')) == NULL)
			return 0;
		return strcasecmp(r->pattern, at + 1) == 0;
	case ROUTE_REGEXP:
		return r->compiled && regexec(&r->re, sender, 0, NULL, 0) == 0;
	}
	return 0;
}

const struct route *
route_match(const struct route *routes, size_t n, const char *sender)
{
	size_t i;

	if (sender == NULL)
		sender = "";
	for (i = 0; i < n; i++)
		if (route_matches(&routes[i], sender))
			return &routes[i];
	return NULL;
}
