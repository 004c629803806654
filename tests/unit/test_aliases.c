/* Unit tests for the aliases parser and its recursive expansion. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "aliases.h"

static char err[512];

static struct aliases *
parse(const char *text)
{
	err[0] = '\0';
	return aliases_parse(text, strlen(text), "aliases", err, sizeof(err));
}

/* Asserts that text is refused with an error starting with want. */
static void
refused(const char *text, const char *want)
{
	struct aliases *al = parse(text);

	cr_assert_null(al, "accepted: %s", text);
	cr_assert(strncmp(err, want, strlen(want)) == 0,
	    "error \"%s\" does not start with \"%s\"", err, want);
}

static void
assert_targets(const struct aliases *al, const char *name,
    const char *const *want, size_t nwant)
{
	const char *const *t;
	size_t n, i;

	t = aliases_lookup(al, name, &n);
	cr_assert_not_null(t, "no alias %s", name);
	cr_assert_eq(n, nwant, "%s: %zu targets, want %zu", name, n, nwant);
	for (i = 0; i < n; i++)
		cr_assert_str_eq(t[i], want[i]);
}

Test(aliases, syntax)
{
	struct aliases *al = parse(
	    "# System aliases\n"
	    "\n"
	    "postmaster: root\n"
	    "Root: admin@example.com, ops@example.com\n"
	    "team: a@example.com,\n"
	    "\tb@example.com\r\n"
	    "   # an indented comment is a comment, not a continuation\n"
	    "  , c@example.com\n"
	    "\"john doe\": \"john.doe\"@example.com, \"x,y\"@example.net\n"
	    "spaced :  lonely@example.com  \n"
	    "last: z@example.org");
	static const char *const root[] = { "admin@example.com",
		"ops@example.com" };
	static const char *const team[] = { "a@example.com", "b@example.com",
		"c@example.com" };
	static const char *const john[] = { "\"john.doe\"@example.com",
		"\"x,y\"@example.net" };
	static const char *const spaced[] = { "lonely@example.com" };

	cr_assert_not_null(al, "%s", err);
	cr_assert_eq(aliases_count(al), 6);
	assert_targets(al, "root", root, 2);
	assert_targets(al, "ROOT", root, 2);
	assert_targets(al, "team", team, 3);
	assert_targets(al, "John Doe", john, 2);
	assert_targets(al, "spaced", spaced, 1);
	cr_assert_str_eq(aliases_name(al, 1), "root");
	cr_assert_eq(aliases_line(al, 2), 5);
	cr_assert_eq(aliases_line(al, 5), 11);
	cr_assert_null(aliases_lookup(al, "nobody", &(size_t){ 0 }));
	aliases_free(al);
}

Test(aliases, empty_file)
{
	struct aliases *al = parse("# nothing\n\n   \n");

	cr_assert_not_null(al, "%s", err);
	cr_assert_eq(aliases_count(al), 0);
	aliases_free(al);
	cr_assert_null(aliases_lookup(NULL, "root", &(size_t){ 0 }));
}

Test(aliases, local_delivery_refused_with_line)
{
	refused("a: b@example.com\nlist: :include:/etc/list\n",
	    "aliases:2: alias list: \":include:/etc/list\": :include:");
	refused("a: b@example.com\n\nbox: /var/mail/box\n",
	    "aliases:3: alias box: \"/var/mail/box\": delivery to a file");
	refused("prog: \"|/usr/bin/procmail\"\n",
	    "aliases:1: alias prog: \"\"|/usr/bin/procmail\"\": delivery to a "
	    "command");
	refused("prog: admin@example.com,\n |/usr/bin/vacation\n",
	    "aliases:1: alias prog: \"|/usr/bin/vacation\": delivery to a "
	    "command");
	refused("me: \\me, me@example.com\n",
	    "aliases:1: alias me: \"\\me\": delivery to a local mailbox");
	refused("x: \":INCLUDE:/x\"\n", "aliases:1: alias x: ");
}

Test(aliases, bad_syntax_refused_with_line)
{
	refused("a: b@example.com,\n  continued@example.com\nno colon here\n",
	    "aliases:3: expected \"name: address, ...\"");
	refused("  starts@example.com\n", "aliases:1: continuation line");
	refused("a:\n", "aliases:1: alias a has no targets");
	refused("a: , ,\n", "aliases:1: alias a has no targets");
	refused(": x@example.com\n", "aliases:1: empty alias name");
	refused("a\x01b: x@example.com\n", "aliases:1: control character");
	refused("\"a\x7f\": x@example.com\n", "aliases:1: control character");
	refused("a: b@example.com\n  c@example.com\n", "aliases:1: alias a: "
	    "\"b@example.com c@example.com\" is not an address");
	refused("two words: x@example.com\n", "aliases:1: alias name \"two "
	    "words\"");
	refused("\"open: x@example.com\n", "aliases:1: unterminated quoted");
	refused("a: \"x@example.com\n", "aliases:1: alias a: unterminated");
	refused("a: x@@example.com\n", "aliases:1: alias a: "
	    "\"x@@example.com\" is not an address");
	refused("a: x y@example.com\n", "aliases:1: alias a: ");
	refused("root: a@example.com\nb: c@example.com\nROOT: d@example.com\n",
	    "aliases:3: alias root given twice (first at line 1)");
	cr_assert_null(aliases_parse("a: b@example.com\nc: d\0e\n", 24,
	    "aliases", err, sizeof(err)));
	cr_assert_str_eq(err, "aliases:2: NUL byte in line");
}

/* ---- expansion ---- */

/* Local: no domain, or @localhost. */
static int
local_name(const char *addr, char *name, size_t namesize, void *arg)
{
	const char *at = strrchr(addr, '@');
	size_t len = at != NULL ? (size_t)(at - addr) : strlen(addr), i;

	(void)arg;
	if (at != NULL && strcasecmp(at, "@localhost") != 0)
		return 0;
	for (i = 0; i < len && i + 1 < namesize; i++)
		name[i] = (char)(addr[i] >= 'A' && addr[i] <= 'Z' ?
		    addr[i] + 32 : addr[i]);
	name[i] = '\0';
	return 1;
}

static char why[512];

/* aliases_expand() with postmaster's last resort pm (NULL: none). */
static enum aliases_result
expand_pm(const struct aliases *al, const char *catch_all, const char *pm,
    size_t max, const char *addr, char ***out, size_t *n)
{
	struct aliases_resolver r = { .aliases = al, .local_name = local_name,
		.catch_all = catch_all, .postmaster = pm, .max_results = max };

	return aliases_expand(&r, addr, out, n, why, sizeof(why));
}

static enum aliases_result
expand(const struct aliases *al, const char *catch_all, size_t max,
    const char *addr, char ***out, size_t *n)
{
	return expand_pm(al, catch_all, NULL, max, addr, out, n);
}

static void
assert_list(char **got, size_t n, const char *const *want, size_t nwant)
{
	size_t i;

	cr_assert_eq(n, nwant, "%zu addresses, want %zu", n, nwant);
	for (i = 0; i < n; i++)
		cr_assert_str_eq(got[i], want[i]);
}

Test(aliases, expand_recursive_dedup)
{
	struct aliases *al = parse(
	    "root: admin, ops@example.com\n"
	    "admin: alice@example.com, ops@EXAMPLE.com, bob\n"
	    "bob: bob@example.org\n"
	    "postmaster: root@LOCALHOST\n");
	static const char *const want[] = { "alice@example.com",
		"ops@EXAMPLE.com", "bob@example.org" };
	static const char *const remote[] = { "x@example.net" };
	char **out;
	size_t n;

	cr_assert_not_null(al, "%s", err);
	cr_assert_eq(expand(al, NULL, 100, "Root", &out, &n), ALIASES_OK,
	    "%s", why);
	/* ops@EXAMPLE.com is a duplicate: its domain differs in case only */
	assert_list(out, n, want, 3);
	aliases_list_free(out, n);
	cr_assert_eq(expand(al, NULL, 100, "postmaster@localhost", &out, &n),
	    ALIASES_OK, "%s", why);
	assert_list(out, n, want, 3);
	aliases_list_free(out, n);
	cr_assert_eq(expand(al, NULL, 100, "x@example.net", &out, &n),
	    ALIASES_OK);
	assert_list(out, n, remote, 1);
	aliases_list_free(out, n);
	aliases_free(al);
}

Test(aliases, expand_unknown_and_catch_all)
{
	struct aliases *al = parse("root: admin\nadmin: nobody-here\n");
	static const char *const catch[] = { "catch@example.com" };
	char **out;
	size_t n;

	cr_assert_eq(expand(al, NULL, 100, "bob", &out, &n), ALIASES_UNKNOWN);
	cr_assert_null(out);
	cr_assert_str_eq(why, "no such local user bob (no alias)");
	cr_assert_eq(expand(al, NULL, 100, "root", &out, &n),
	    ALIASES_UNKNOWN);
	cr_assert_str_eq(why, "no such local user nobody-here (no alias) "
	    "(via root -> admin)");
	cr_assert_eq(expand(al, "catch@example.com", 100, "root", &out, &n),
	    ALIASES_OK);
	assert_list(out, n, catch, 1);
	aliases_list_free(out, n);
	cr_assert_eq(expand(NULL, "catch@example.com", 100, "bob@localhost",
	    &out, &n), ALIASES_OK);
	assert_list(out, n, catch, 1);
	aliases_list_free(out, n);
	aliases_free(al);
}

Test(aliases, postmaster_goes_where_root_goes)
{
	struct aliases *al = parse("root: admin@example.com\n");
	struct aliases *own = parse("root: admin@example.com\n"
	    "postmaster: pm@example.com\n");
	struct aliases *none = parse("admin: a@example.com\n");
	static const char *const admin[] = { "admin@example.com" };
	static const char *const pm[] = { "pm@example.com" };
	char **out;
	size_t n;

	cr_assert_eq(expand(al, NULL, 100, "PostMaster@localhost", &out, &n),
	    ALIASES_OK, "%s", why);
	assert_list(out, n, admin, 1);
	aliases_list_free(out, n);
	cr_assert_eq(expand(own, NULL, 100, "postmaster", &out, &n),
	    ALIASES_OK, "%s", why);
	assert_list(out, n, pm, 1);
	aliases_list_free(out, n);
	cr_assert_eq(expand(none, NULL, 100, "postmaster", &out, &n),
	    ALIASES_UNKNOWN);
	cr_assert_str_eq(why, "no such local user postmaster (no alias)");
	aliases_free(al);
	aliases_free(own);
	aliases_free(none);
}

/* RFC 5321 4.5.1: with a last resort for postmaster, RCPT TO:<postmaster>
 * in any case, bare, in a local domain or reached through an alias, is
 * never unknown; its alias, root's and the catch-all still come first,
 * and no other name gets the last resort. */
Test(aliases, postmaster_always_accepted)
{
	struct aliases *root = parse("root: admin@example.com\n");
	struct aliases *abuse = parse("abuse: postmaster\n");
	static const char *const pm[] = { "postmaster@example.org" };
	static const char *const admin[] = { "admin@example.com" };
	static const char *const catch[] = { "catch@example.com" };
	static const char *const names[] = { "postmaster", "PostMaster",
		"POSTMASTER@localhost", "abuse" };
	char **out;
	size_t n, i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		cr_assert_eq(expand_pm(abuse, NULL, pm[0], 100, names[i], &out,
		    &n), ALIASES_OK, "%s: %s", names[i], why);
		assert_list(out, n, pm, 1);
		aliases_list_free(out, n);
	}
	cr_assert_eq(expand_pm(NULL, NULL, pm[0], 100, "postmaster", &out, &n),
	    ALIASES_OK, "%s", why);
	assert_list(out, n, pm, 1);
	aliases_list_free(out, n);
	cr_assert_eq(expand_pm(root, NULL, pm[0], 100, "postmaster", &out, &n),
	    ALIASES_OK, "%s", why);
	assert_list(out, n, admin, 1);
	aliases_list_free(out, n);
	cr_assert_eq(expand_pm(NULL, catch[0], pm[0], 100, "postmaster", &out,
	    &n), ALIASES_OK, "%s", why);
	assert_list(out, n, catch, 1);
	aliases_list_free(out, n);
	cr_assert_eq(expand_pm(NULL, NULL, pm[0], 100, "root", &out, &n),
	    ALIASES_UNKNOWN);
	cr_assert_str_eq(why, "no such local user root (no alias)");
	cr_assert_eq(expand_pm(NULL, NULL, pm[0], 100, "postmistress", &out,
	    &n), ALIASES_UNKNOWN);
	aliases_free(root);
	aliases_free(abuse);
}

Test(aliases, expand_loops)
{
	struct aliases *al = parse(
	    "a: b\nb: c, x@example.com\nc: a\n"
	    "self: self, me@example.com\n"
	    "diamond: d1, d2\nd1: leaf\nd2: leaf\nleaf: l@example.com\n");
	static const char *const leaf[] = { "l@example.com" };
	char **out;
	size_t n;

	cr_assert_eq(expand(al, NULL, 100, "a", &out, &n), ALIASES_LOOP);
	cr_assert_str_eq(why, "alias loop: a -> b -> c -> a");
	cr_assert_eq(expand(al, NULL, 100, "c@localhost", &out, &n),
	    ALIASES_LOOP);
	cr_assert_str_eq(why, "alias loop: c -> a -> b -> c");
	cr_assert_eq(expand(al, NULL, 100, "self", &out, &n), ALIASES_LOOP);
	cr_assert_str_eq(why, "alias loop: self -> self");
	/* A loop is refused even with a catch-all. */
	cr_assert_eq(expand(al, "k@example.com", 100, "a", &out, &n),
	    ALIASES_LOOP);
	/* Two paths to one alias are not a loop. */
	cr_assert_eq(expand(al, NULL, 100, "diamond", &out, &n), ALIASES_OK,
	    "%s", why);
	assert_list(out, n, leaf, 1);
	aliases_list_free(out, n);
	aliases_free(al);
}

Test(aliases, expand_limits)
{
	char text[4096], **out;
	size_t n, len = 0;
	int i;
	struct aliases *al;

	/* n0: n1, n1: n2, ... nesting deeper than the limit */
	for (i = 0; i < ALIASES_MAX_DEPTH + 2; i++)
		len += (size_t)snprintf(text + len, sizeof(text) - len,
		    "n%d: n%d\n", i, i + 1);
	snprintf(text + len, sizeof(text) - len, "n%d: end@example.com\n"
	    "wide: w1@example.com, w2@example.com, w3@example.com\n", i);
	al = parse(text);
	cr_assert_not_null(al, "%s", err);
	cr_assert_eq(expand(al, NULL, 100, "n0", &out, &n), ALIASES_TOO_DEEP);
	cr_assert(strstr(why, "nested more than") != NULL, "%s", why);
	cr_assert_eq(expand(al, NULL, 100, "n3", &out, &n), ALIASES_OK);
	aliases_list_free(out, n);
	cr_assert_eq(expand(al, NULL, 2, "wide", &out, &n), ALIASES_TOO_MANY);
	cr_assert_str_eq(why, "expands to more than 2 addresses (via wide)");
	cr_assert_eq(expand(al, NULL, 3, "wide", &out, &n), ALIASES_OK);
	aliases_list_free(out, n);
	aliases_free(al);
}

Test(aliases, expand_steps_bounded)
{
	/* Each level names the next one ten times: 10^6 paths without the
	 * bound on look-ups. */
	char text[4096];
	size_t len = 0;
	char **out;
	size_t n;
	int i, j;
	struct aliases *al;

	for (i = 0; i < 6; i++) {
		len += (size_t)snprintf(text + len, sizeof(text) - len,
		    "l%d: ", i);
		for (j = 0; j < 10; j++)
			len += (size_t)snprintf(text + len, sizeof(text) - len,
			    "%sl%d", j > 0 ? ", " : "", i + 1);
		len += (size_t)snprintf(text + len, sizeof(text) - len, "\n");
	}
	snprintf(text + len, sizeof(text) - len, "l6: x@example.com\n");
	al = parse(text);
	cr_assert_not_null(al, "%s", err);
	cr_assert_eq(expand(al, NULL, 100, "l0", &out, &n), ALIASES_TOO_MANY);
	cr_assert(strstr(why, "alias look-ups") != NULL, "%s", why);
	cr_assert_eq(expand(al, NULL, 100, "l3", &out, &n), ALIASES_OK);
	aliases_list_free(out, n);
	aliases_free(al);
}

Test(aliases, same_address)
{
	cr_assert(aliases_same_address("a@EXAMPLE.com", "a@example.COM"));
	cr_assert(!aliases_same_address("A@example.com", "a@example.com"));
	cr_assert(!aliases_same_address("a", "a@example.com"));
	cr_assert(aliases_same_address("root", "root"));
}

Test(aliases, load_errors_name_the_file)
{
	char path[] = "/tmp/test_aliasesXXXXXX";
	struct aliases *al;
	FILE *fp;
	int fd;

	cr_assert_null(aliases_load("/nonexistent/aliases", err,
	    sizeof(err)));
	cr_assert_str_eq(err, "/nonexistent/aliases: No such file or "
	    "directory");
	cr_assert_neq(fd = mkstemp(path), -1);
	cr_assert_not_null(fp = fdopen(fd, "w"));
	fputs("root: admin@example.com\nlog: /var/log/mail\n", fp);
	fclose(fp);
	cr_assert_null(aliases_load(path, err, sizeof(err)));
	cr_assert(strncmp(err, path, strlen(path)) == 0, "%s", err);
	cr_assert(strncmp(err + strlen(path), ":2: alias log:", 14) == 0,
	    "%s", err);
	cr_assert_not_null(fp = fopen(path, "w"));
	fputs("root: admin@example.com\n", fp);
	fclose(fp);
	cr_assert_not_null(al = aliases_load(path, err, sizeof(err)), "%s",
	    err);
	aliases_free(al);
	unlink(path);
	cr_assert_null(aliases_load("/tmp", err, sizeof(err)));
	cr_assert_str_eq(err, "/tmp: not a regular file");
}
