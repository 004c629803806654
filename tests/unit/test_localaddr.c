/* Unit tests for the local address policy and its configuration. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "config.h"
#include "localaddr.h"
#include "xmalloc.h"

static char err[1024];
static char aliases_path[64];
static char map_path[64];

/* Writes text to *path, a new temporary file the first time. */
static void
write_file(char *path, const char *text)
{
	FILE *fp;
	int fd;

	if (path[0] == '\0') {
		snprintf(path, 64, "/tmp/test_localaddr.XXXXXX");
		cr_assert_neq(fd = mkstemp(path), -1);
	} else
		cr_assert_neq(fd = open(path, O_WRONLY | O_TRUNC), -1);
	cr_assert_not_null(fp = fdopen(fd, "w"));
	fputs(text, fp);
	fclose(fp);
}

static void
cleanup(void)
{
	if (aliases_path[0] != '\0')
		unlink(aliases_path);
	if (map_path[0] != '\0')
		unlink(map_path);
}

static struct localaddr *
policy(const char *catch_all, int masquerade)
{
	struct localaddr_params p;
	struct localaddr *la;

	write_file(aliases_path,
	    "root: admin, ops@example.com\n"
	    "admin: alice@example.com\n"
	    "loop1: loop2\nloop2: loop1\n"
	    "ghost: nobody-here\n"
	    "big: a1@example.com, a2@example.com, a3@example.com\n");
	write_file(map_path, "# who is who outside\n"
	    "alice: Alice.Smith@example.com\n");
	memset(&p, 0, sizeof(p));
	p.hostname = "host.example.org";
	p.mail_domain = "example.com";
	p.aliases_file = aliases_path;
	p.sender_map_file = map_path;
	p.catch_all = catch_all;
	p.masquerade = masquerade;
	la = localaddr_new(&p, err, sizeof(err));
	cr_assert_not_null(la, "%s", err);
	return la;
}

Test(localaddr, local_domains_default, .fini = cleanup)
{
	struct localaddr *la = policy(NULL, 0);

	cr_assert(localaddr_is_local(la, "root"));
	cr_assert(localaddr_is_local(la, "root@localhost"));
	cr_assert(localaddr_is_local(la, "root@LocalHost"));
	cr_assert(localaddr_is_local(la, "root@HOST.example.org"));
	cr_assert(localaddr_is_local(la, "\"a@b\""));
	cr_assert(!localaddr_is_local(la, "root@example.com"));
	cr_assert(!localaddr_is_local(la, "root@localhost.example"));
	localaddr_free(la);
}

Test(localaddr, configured_local_domains)
{
	char domain[] = "Mail.Example.NET";
	char *domains[] = { domain };
	struct localaddr_params p = { "h.example", "example.com", domains, 1,
		NULL, NULL, NULL, 0 };
	struct localaddr *la = localaddr_new(&p, err, sizeof(err));

	cr_assert_not_null(la, "%s", err);
	cr_assert(localaddr_is_local(la, "x@mail.example.net"));
	cr_assert(!localaddr_is_local(la, "x@localhost"));
	cr_assert(!localaddr_is_local(la, "x@h.example"));
	localaddr_free(la);
}

Test(localaddr, unqualified_names)
{
	cr_assert(localaddr_unqualified_ok("root", 0));
	cr_assert(localaddr_unqualified_ok("first.last", 0));
	cr_assert(!localaddr_unqualified_ok("", 0));
	cr_assert(!localaddr_unqualified_ok("a b", 0));
	cr_assert(!localaddr_unqualified_ok("a@b", 0));
	cr_assert(!localaddr_unqualified_ok("j\xc3\xb6rg", 0));
	cr_assert(localaddr_unqualified_ok("j\xc3\xb6rg", 1));
}

static void
assert_rcpt(struct localaddr *la, const char *addr, size_t max,
    const char *want_first, size_t want_n)
{
	char reply[512], **out;
	size_t n;

	cr_assert_eq(localaddr_rcpt(la, addr, max, &out, &n, reply,
	    sizeof(reply)), 0, "%s: %s", addr, reply);
	cr_assert_eq(n, want_n, "%s: %zu addresses", addr, n);
	cr_assert_str_eq(out[0], want_first);
	localaddr_list_free(out, n);
}

static void
assert_refused(struct localaddr *la, const char *addr, size_t max,
    const char *want)
{
	char reply[512], **out;
	size_t n;

	cr_assert_eq(localaddr_rcpt(la, addr, max, &out, &n, reply,
	    sizeof(reply)), -1, "%s accepted", addr);
	cr_assert_str_eq(reply, want);
}

Test(localaddr, rcpt, .fini = cleanup)
{
	struct localaddr *la = policy(NULL, 0);

	assert_rcpt(la, "root", 100, "alice@example.com", 2);
	assert_rcpt(la, "ROOT@localhost", 100, "alice@example.com", 2);
	assert_rcpt(la, "root@host.example.org", 100, "alice@example.com", 2);
	assert_rcpt(la, "\"root\"@localhost", 100, "alice@example.com", 2);
	assert_rcpt(la, "bob@example.net", 100, "bob@example.net", 1);
	assert_refused(la, "bob", 100, "550 5.1.1 <bob>: no such local user "
	    "bob (no alias)");
	assert_refused(la, "bob@localhost", 100, "550 5.1.1 <bob@localhost>: "
	    "no such local user bob (no alias)");
	assert_refused(la, "ghost", 100, "550 5.1.1 <ghost>: no such local "
	    "user nobody-here (no alias) (via ghost)");
	assert_refused(la, "loop1", 100, "550 5.4.6 <loop1>: alias loop: "
	    "loop1 -> loop2 -> loop1");
	assert_refused(la, "big", 2, "550 5.5.3 <big>: expands to more than "
	    "2 addresses (via big)");
	assert_rcpt(la, "big", 3, "a1@example.com", 3);
	localaddr_free(la);
}

Test(localaddr, rcpt_catch_all, .fini = cleanup)
{
	struct localaddr *la = policy("catch@example.com", 0);

	assert_rcpt(la, "bob", 100, "catch@example.com", 1);
	assert_rcpt(la, "ghost@localhost", 100, "catch@example.com", 1);
	assert_rcpt(la, "root", 100, "alice@example.com", 2);
	assert_refused(la, "loop2", 100, "550 5.4.6 <loop2>: alias loop: "
	    "loop2 -> loop1 -> loop2");
	localaddr_free(la);
}

static void
assert_sender(struct localaddr *la, const char *addr, const char *want)
{
	char *got = localaddr_sender(la, addr);

	if (want == NULL) {
		cr_assert_null(got, "%s became %s", addr, got);
		return;
	}
	cr_assert_not_null(got, "%s kept", addr);
	cr_assert_str_eq(got, want);
	free(got);
}

Test(localaddr, sender, .fini = cleanup)
{
	struct localaddr *la = policy(NULL, 0);

	assert_sender(la, "alice", "Alice.Smith@example.com");
	assert_sender(la, "ALICE@localhost", "Alice.Smith@example.com");
	assert_sender(la, "alice@host.example.org", "Alice.Smith@example.com");
	/* Without masquerading only unqualified names are completed. */
	assert_sender(la, "Bob", "Bob@example.com");
	assert_sender(la, "bob@localhost", NULL);
	assert_sender(la, "alice@example.net", NULL);
	/* smarthost-sendmail's alice@mail_domain takes the map too. */
	assert_sender(la, "Alice@Example.COM", "Alice.Smith@example.com");
	assert_sender(la, "bob@example.com", NULL);
	assert_sender(la, "Alice.Smith@example.com", NULL);
	assert_sender(la, "", NULL);
	localaddr_free(la);

	la = policy(NULL, 1);
	assert_sender(la, "bob@localhost", "bob@example.com");
	assert_sender(la, "Bob@HOST.example.org", "Bob@example.com");
	assert_sender(la, "bob@example.com", NULL);
	assert_sender(la, "bob@other.example", NULL);
	localaddr_free(la);
}

Test(localaddr, headers, .fini = cleanup)
{
	struct localaddr *la = policy(NULL, 1);
	const char *in = "From: Alice <alice@localhost>\r\n"
	    "Sender: bob\r\nReply-To: x@example.net\r\nTo: root\r\n\r\n";
	const char *want = "From: Alice <Alice.Smith@example.com>\r\n"
	    "Sender: bob@example.com\r\nReply-To: x@example.net\r\n"
	    "To: root\r\n\r\n";
	size_t outlen;
	char *out = localaddr_headers(la, in, strlen(in), &outlen);

	cr_assert_not_null(out);
	cr_assert_eq(outlen, strlen(want));
	cr_assert_str_eq(out, want);
	free(out);
	localaddr_free(la);
}

Test(localaddr, map_errors, .fini = cleanup)
{
	struct localaddr_params p;

	write_file(map_path, "alice: a@example.com\nbob: b@example.com, "
	    "c@example.com\n");
	memset(&p, 0, sizeof(p));
	p.hostname = "h.example";
	p.sender_map_file = map_path;
	cr_assert_null(localaddr_new(&p, err, sizeof(err)));
	cr_assert(strstr(err, ":2: bob: the sender map needs exactly one "
	    "address") != NULL, "%s", err);
	write_file(map_path, "alice: alice\n");
	cr_assert_null(localaddr_new(&p, err, sizeof(err)));
	cr_assert(strstr(err, ":1: alice: the sender map needs") != NULL,
	    "%s", err);
	write_file(map_path, "alice: |/bin/sh\n");
	cr_assert_null(localaddr_new(&p, err, sizeof(err)));
	cr_assert(strstr(err, ":1: alias alice: \"|/bin/sh\": delivery to a "
	    "command") != NULL, "%s", err);
}

/* ---- configuration ---- */

#define RELAY "relays = { up = { host = \"192.0.2.1\"; }; };\n"

static struct config *
parse(const char *text)
{
	err[0] = '\0';
	return config_parse_string(text, "test.conf", err, sizeof(err));
}

Test(localaddr, config_defaults)
{
	struct config *c = parse("hostname = \"mx.example.org\";\n" RELAY);

	cr_assert_not_null(c, "%s", err);
	cr_assert_str_eq(c->mail_domain, "mx.example.org");
	cr_assert_not_null(c->local);
	cr_assert(localaddr_is_local(c->local, "x@localhost"));
	cr_assert(localaddr_is_local(c->local, "x@MX.example.org"));
	cr_assert(!localaddr_is_local(c->local, "x@example.org"));
	config_free(c);
}

/* RFC 5321 4.5.1: with no aliases and no catch-all, postmaster (any case,
 * bare, quoted or in a local domain) is accepted as
 * postmaster@mail_domain; other local names are still refused. */
Test(localaddr, postmaster_without_aliases)
{
	static const char *const forms[] = { "postmaster", "PostMaster",
		"POSTMASTER@localhost", "\"postmaster\"@mx.example.org" };
	struct config *c = parse("hostname = \"mx.example.org\";\n" RELAY);
	size_t i;

	cr_assert_not_null(c, "%s", err);
	for (i = 0; i < sizeof(forms) / sizeof(forms[0]); i++)
		assert_rcpt(c->local, forms[i], 10, "postmaster@mx.example.org",
		    1);
	assert_refused(c->local, "root", 10, "550 5.1.1 <root>: no such "
	    "local user root (no alias)");
	config_free(c);
	c = parse("hostname = \"mx.example.org\";\n"
	    "mail_domain = \"example.com\";\n" RELAY);
	cr_assert_not_null(c, "%s", err);
	assert_rcpt(c->local, "postmaster", 10, "postmaster@example.com", 1);
	config_free(c);
}

Test(localaddr, config_settings, .fini = cleanup)
{
	struct config *c;
	char *text;

	write_file(aliases_path, "root: admin@example.com\n");
	write_file(map_path, "root: boss@example.com\n");
	text = xasprintf("mail_domain = \"example.com\";\n"
	    "local_domains = [ \"localhost\", \"box.example\" ];\n"
	    "aliases = \"%s\";\n"
	    "local_catch_all = \"catch@example.com\";\n"
	    "sender_rewrite = { map = \"%s\"; masquerade = true; };\n" RELAY,
	    aliases_path, map_path);
	c = parse(text);
	free(text);
	cr_assert_not_null(c, "%s", err);
	cr_assert_str_eq(c->mail_domain, "example.com");
	cr_assert(localaddr_is_local(c->local, "x@box.example"));
	assert_rcpt(c->local, "root@box.example", 10, "admin@example.com", 1);
	assert_rcpt(c->local, "nobody", 10, "catch@example.com", 1);
	assert_rcpt(c->local, "postmaster", 10, "admin@example.com", 1);
	assert_sender(c->local, "root", "boss@example.com");
	assert_sender(c->local, "joe@localhost", "joe@example.com");
	config_free(c);
}

Test(localaddr, config_errors, .fini = cleanup)
{
	static const struct {
		const char *text;
		const char *want;
	} bad[] = {
		{ "aliases = \"etc/aliases\";\n",
		    "test.conf:1: aliases: \"etc/aliases\" must be an "
		    "absolute path" },
		{ "\nmail_domain = \"not a domain\";\n",
		    "test.conf:2: mail_domain: \"not a domain\" is not a "
		    "domain name" },
		{ "local_domains = [ \"ok.example\", \"bad..example\" ];\n",
		    "test.conf:1: local_domains: \"bad..example\" is not a "
		    "domain name" },
		{ "local_catch_all = \"admin\";\n",
		    "test.conf:1: local_catch_all: \"admin\" must be a full "
		    "address outside the local domains" },
		{ "local_catch_all = \"admin@localhost\";\n",
		    "test.conf:1: local_catch_all: \"admin@localhost\" must "
		    "be" },
		{ "sender_rewrite = { masquerade = 1; };\n",
		    "test.conf:1: masquerade: expected true or false" },
		{ "sender_rewrite = { mapp = \"/x\"; };\n",
		    "test.conf:1: " },
		{ "sender_rewrite = \"/x\";\n",
		    "test.conf:1: sender_rewrite: expected a group" },
		{ "aliases = \"/nonexistent/aliases\";\n",
		    "/nonexistent/aliases: No such file or directory" },
	};
	struct config *c;
	char *text;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		text = xasprintf("%s" RELAY, bad[i].text);
		c = parse(text);
		free(text);
		cr_assert_null(c, "accepted: %s", bad[i].text);
		cr_assert(strncmp(err, bad[i].want, strlen(bad[i].want)) == 0,
		    "%s: got \"%s\"", bad[i].text, err);
	}

	/* An error in the aliases file names that file and line. */
	write_file(aliases_path, "root: admin@example.com\n"
	    "# the next one pipes\n"
	    "prog: \"|/usr/local/bin/handler\"\n");
	text = xasprintf("aliases = \"%s\";\n" RELAY, aliases_path);
	c = parse(text);
	free(text);
	cr_assert_null(c);
	text = xasprintf("%s:3: alias prog: \"\"|/usr/local/bin/handler\"\": "
	    "delivery to a command is not supported", aliases_path);
	cr_assert(strncmp(err, text, strlen(text)) == 0, "%s", err);
	free(text);
}
