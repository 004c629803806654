/* route.c: matching a sender against routing rules, first match wins. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "route.h"
#include "xmalloc.h"

static struct route rules[8];
static size_t nrules;

static void
add(enum route_kind kind, const char *pattern, size_t relay)
{
	struct route *r = &rules[nrules++];
	char err[256];

	memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->pattern = xstrdup(pattern);
	r->relay = relay;
	cr_assert_eq(route_compile(r, err, sizeof(err)), 0, "%s: %s", pattern,
	    err);
}

static void
clear(void)
{
	size_t i;

	for (i = 0; i < nrules; i++)
		route_clear(&rules[i]);
	nrules = 0;
}

/* The relay index of the first match, or -1. */
static long
pick(const char *sender)
{
	const struct route *r = route_match(rules, nrules, sender);

	return r != NULL ? (long)r->relay : -1;
}

TestSuite(route, .fini = clear);

Test(route, exact_sender_ignores_case)
{
	add(ROUTE_SENDER, "Me@Work.Example", 1);
	cr_assert_eq(pick("me@work.example"), 1);
	cr_assert_eq(pick("ME@WORK.EXAMPLE"), 1);
	cr_assert_eq(pick("me@work.example.org"), -1);
	cr_assert_eq(pick("xme@work.example"), -1);
	cr_assert_eq(pick(""), -1);
}

Test(route, domain_is_after_the_last_at)
{
	add(ROUTE_DOMAIN, "work.example", 2);
	cr_assert_eq(pick("a@work.example"), 2);
	cr_assert_eq(pick("a@WORK.example"), 2);
	cr_assert_eq(pick("\"a@b\"@work.example"), 2);
	cr_assert_eq(pick("a@sub.work.example"), -1);
	cr_assert_eq(pick("a@work.example.net"), -1);
	cr_assert_eq(pick("work.example"), -1);
	cr_assert_eq(pick(""), -1);
}

Test(route, regexp_is_extended_case_insensitive_and_searched)
{
	add(ROUTE_REGEXP, "^list-[a-z]+@", 3);
	add(ROUTE_REGEXP, "\\.example\\.(org|net)$", 4);
	cr_assert_eq(pick("list-dev@x.example"), 3);
	cr_assert_eq(pick("LIST-Dev@x.example"), 3);
	cr_assert_eq(pick("a@b.example.org"), 4);
	cr_assert_eq(pick("a@b.example.NET"), 4);
	cr_assert_eq(pick("mylist-dev@x.example"), -1);
	cr_assert_eq(pick("a@b.example.com"), -1);
}

Test(route, first_match_wins)
{
	add(ROUTE_SENDER, "boss@work.example", 5);
	add(ROUTE_DOMAIN, "work.example", 6);
	add(ROUTE_REGEXP, ".", 7);
	cr_assert_eq(pick("boss@work.example"), 5);
	cr_assert_eq(pick("me@work.example"), 6);
	cr_assert_eq(pick("me@home.example"), 7);
}

Test(route, null_sender_matches_only_an_expression_for_it)
{
	add(ROUTE_SENDER, "a@b.example", 1);
	add(ROUTE_DOMAIN, "b.example", 2);
	add(ROUTE_REGEXP, "@", 3);
	cr_assert_eq(pick(""), -1);
	cr_assert_eq(pick(NULL), -1);
	add(ROUTE_REGEXP, "^$", 4);
	cr_assert_eq(pick(""), 4);
	cr_assert_eq(pick("x@c.example"), 3);
}

Test(route, no_rules_no_match)
{
	cr_assert_null(route_match(NULL, 0, "a@b.example"));
}

Test(route, bad_expression_is_reported)
{
	struct route r;
	char err[256] = "";

	memset(&r, 0, sizeof(r));
	r.kind = ROUTE_REGEXP;
	r.pattern = xstrdup("a(b");
	cr_assert_eq(route_compile(&r, err, sizeof(err)), -1);
	cr_assert_neq(err[0], '\0');
	cr_assert_eq(r.compiled, 0);
	route_clear(&r);
	route_clear(NULL);
}
