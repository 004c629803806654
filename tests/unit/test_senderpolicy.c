/*
 * The sender policy: modes, exemptions, the map file syntax and its
 * errors, all as pure functions over a made-up identity.
 */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "senderpolicy.h"

static char g_alice[] = "alice", g_staff[] = "staff", g_bob[] = "bob";
static char *alice_groups[] = { g_alice, g_staff };
static const struct sender_identity alice = { 1000, g_alice,
	alice_groups, 2 };
static char *bob_groups[] = { g_bob };
static const struct sender_identity bob = { 1001, g_bob, bob_groups, 1 };
static const struct sender_identity nobody = { 4242, NULL, NULL, 0 };
static const char *const domains[] = { "localhost", "host.example",
	"example.com" };

static int
check(const struct sender_policy *p, const struct sender_identity *who,
    const char *sender)
{
	return sender_policy_check(p, who, sender, domains, 3);
}

static struct sender_policy *
map_policy(const char *text)
{
	struct sender_policy *p = sender_policy_new(SENDER_POLICY_MAP);
	char err[256];

	cr_assert_eq(sender_policy_parse_map(p, text, strlen(text), "map", err,
	    sizeof(err)), 0, "%s", err);
	return p;
}

Test(senderpolicy, any_allows_everything)
{
	struct sender_policy *p = sender_policy_new(SENDER_POLICY_ANY);

	cr_assert_eq(check(p, &alice, "ceo@company.example"), 0);
	cr_assert_eq(check(NULL, &alice, "ceo@company.example"), 0);
	sender_policy_free(p);
}

Test(senderpolicy, own_addresses)
{
	struct sender_policy *p = sender_policy_new(SENDER_POLICY_OWN);

	cr_assert_eq(check(p, &alice, "alice"), 0);
	cr_assert_eq(check(p, &alice, "alice@localhost"), 0);
	cr_assert_eq(check(p, &alice, "Alice@Host.Example"), 0);
	cr_assert_eq(check(p, &alice, "alice@example.com"), 0);
	cr_assert_eq(check(p, &alice, ""), 0, "the null sender");
	cr_assert_eq(check(p, &alice, "bob@example.com"), -1);
	cr_assert_eq(check(p, &alice, "alice@other.example"), -1);
	cr_assert_eq(check(p, &alice, "alicex@example.com"), -1);
	cr_assert_eq(check(p, &alice, "ali@example.com"), -1);
	cr_assert_eq(check(p, &bob, "alice@example.com"), -1);
	cr_assert_eq(check(p, &nobody, "4242@example.com"), -1,
	    "a uid without a login owns nothing");
	sender_policy_free(p);
}

Test(senderpolicy, exempt_users_and_groups)
{
	struct sender_policy *p = sender_policy_new(SENDER_POLICY_OWN);

	sender_policy_exempt(p, "%staff");
	cr_assert_eq(check(p, &alice, "ceo@company.example"), 0);
	cr_assert_eq(check(p, &bob, "ceo@company.example"), -1);
	sender_policy_exempt(p, "bob");
	cr_assert_eq(check(p, &bob, "ceo@company.example"), 0);
	sender_policy_free(p);
}

Test(senderpolicy, map_grants)
{
	struct sender_policy *p = map_policy(
	    "# who may send as what\n"
	    "alice: sales@company.example, @alice.example\n"
	    "%staff: news@company.example,\n"
	    "        support@company.example   # continued\n"
	    "\n"
	    "bob: *\n");

	cr_assert_eq(check(p, &alice, "alice@example.com"), 0, "own");
	cr_assert_eq(check(p, &alice, "Sales@Company.Example"), 0);
	cr_assert_eq(check(p, &alice, "anything@alice.example"), 0);
	cr_assert_eq(check(p, &alice, "news@company.example"), 0);
	cr_assert_eq(check(p, &alice, "support@company.example"), 0);
	cr_assert_eq(check(p, &alice, "ceo@company.example"), -1);
	cr_assert_eq(check(p, &alice, "x@sub.alice.example"), -1);
	cr_assert_eq(check(p, &bob, "ceo@company.example"), 0);
	cr_assert_eq(check(p, &nobody, "ceo@company.example"), -1);
	sender_policy_free(p);
}

static void
map_rejected_len(const char *text, size_t len, const char *expect)
{
	struct sender_policy *p = sender_policy_new(SENDER_POLICY_MAP);
	char err[256];

	cr_assert_eq(sender_policy_parse_map(p, text, len, "map", err,
	    sizeof(err)), -1, "accepted: %s", text);
	cr_assert_not_null(strstr(err, expect), "\"%s\" not in \"%s\"", expect,
	    err);
	sender_policy_free(p);
}

static void
map_rejected(const char *text, const char *expect)
{
	map_rejected_len(text, strlen(text), expect);
}

Test(senderpolicy, map_errors_name_the_line)
{
	map_rejected("alice: a@b\nbob a@b\n", "map:2: expected");
	map_rejected("\n\nalice: <a@b>\n", "map:3: a value");
	map_rejected("alice: a@b\n%: x@y\n", "map:2: bad user");
	map_rejected("alice: a@b\nal ice: x@y\n", "map:2: bad user");
	map_rejected("alice: nodomain\n", "map:1:");
	map_rejected_len("alice: a@b\0\n", 12, "map:1: NUL");
}

Test(senderpolicy, identity_lookup_root)
{
	struct sender_identity who;
	size_t i;
	int root_group = 0;

	cr_assert_eq(sender_identity_lookup(0, &who), 0);
	cr_assert_str_eq(who.login, "root");
	for (i = 0; i < who.ngroups; i++)
		root_group |= strcmp(who.groups[i], "root") == 0;
	cr_assert(root_group);
	sender_identity_free(&who);
	cr_assert_eq(sender_identity_lookup(3999999, &who), -1);
	cr_assert_null(who.login);
	sender_identity_free(&who);
}
