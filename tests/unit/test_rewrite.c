/* Unit tests for header address rewriting: only local addresses change,
 * and everything around them stays byte for byte. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <criterion/criterion.h>

#include "rewrite.h"
#include "xmalloc.h"

static unsigned calls;
static char seen[16][256];

/* "root", "root@localhost" and "\"root\"@localhost" become
 * admin@example.com; "cron" becomes cron@example.com; the rest stays. */
static char *
map(const char *addr, void *arg)
{
	(void)arg;
	if (calls < 16)
		snprintf(seen[calls], sizeof(seen[0]), "%s", addr);
	calls++;
	if (strcmp(addr, "root") == 0 || strcasecmp(addr, "root@localhost") ==
	    0 || strcmp(addr, "\"root\"@localhost") == 0)
		return xstrdup("admin@example.com");
	if (strcmp(addr, "cron") == 0)
		return xstrdup("cron@example.com");
	return NULL;
}

/* Rewrites one field body and compares; want NULL: unchanged. */
static void
check_body(const char *body, const char *want)
{
	size_t outlen;
	char *out;

	calls = 0;
	out = rewrite_address_list(body, strlen(body), map, NULL, &outlen);
	if (want == NULL) {
		cr_assert_null(out, "\"%s\" became \"%s\"", body,
		    out != NULL ? out : "");
		return;
	}
	cr_assert_not_null(out, "\"%s\" unchanged", body);
	cr_assert_eq(outlen, strlen(want));
	cr_assert_str_eq(out, want);
	free(out);
}

Test(rewrite, simple_forms)
{
	check_body(" root", " admin@example.com");
	check_body(" root@localhost", " admin@example.com");
	check_body(" <root@localhost>", " <admin@example.com>");
	check_body(" Charlie Root <root@localhost>",
	    " Charlie Root <admin@example.com>");
	check_body(" \"Root, Charlie\" <root>",
	    " \"Root, Charlie\" <admin@example.com>");
	/* cron(8)'s own From: */
	check_body(" root (Cron Daemon)", " admin@example.com (Cron Daemon)");
	check_body(" someone@example.org", NULL);
	check_body(" Someone <someone@example.org>", NULL);
	cr_assert_eq(calls, 1);
	cr_assert_str_eq(seen[0], "someone@example.org");
}

Test(rewrite, display_names_comments_and_encoded_words_kept)
{
	check_body(" =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <root>",
	    " =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <admin@example.com>");
	check_body(" =?utf-8?B?w4lsb2R5?= =?utf-8?B?IFLDqQ==?=\r\n"
	    " <root@localhost> (via =?utf-8?q?caf=C3=A9?=)",
	    " =?utf-8?B?w4lsb2R5?= =?utf-8?B?IFLDqQ==?=\r\n"
	    " <admin@example.com> (via =?utf-8?q?caf=C3=A9?=)");
	/* A comment with '@', ',' and nested parentheses */
	check_body(" (mail me at x@y.example, or (not)) root",
	    " (mail me at x@y.example, or (not)) admin@example.com");
	/* A quoted display name with '@', '<' and escapes */
	check_body(" \"root@localhost <x> \\\"q\\\"\" <root>",
	    " \"root@localhost <x> \\\"q\\\"\" <admin@example.com>");
	/* UTF-8 in the display name (RFC 6532) */
	check_body(" Jörg <root>", " Jörg <admin@example.com>");
}

Test(rewrite, folding_kept)
{
	check_body(" Charlie Root\r\n <root@localhost>,\r\n\t"
	    "Other <o@example.org>",
	    " Charlie Root\r\n <admin@example.com>,\r\n\t"
	    "Other <o@example.org>");
	check_body("\r\n root", "\r\n admin@example.com");
	check_body(" a@example.org,\n cron", " a@example.org,\n "
	    "cron@example.com");
}

Test(rewrite, lists_and_groups)
{
	check_body(" a@example.org, root, \"x, y\" <cron>, b@example.org",
	    " a@example.org, admin@example.com, \"x, y\" <cron@example.com>, "
	    "b@example.org");
	check_body(" Team: root, b@example.org;, cron",
	    " Team: admin@example.com, b@example.org;, cron@example.com");
	check_body(" undisclosed-recipients:;", NULL);
	check_body(" Empty:; , root", " Empty:; , admin@example.com");
	/* empty list elements (obs-mbox-list) */
	check_body(" , root,, ,", " , admin@example.com,, ,");
}

Test(rewrite, obsolete_syntax)
{
	/* obs-route */
	check_body(" <@relay1.example,@relay2.example:root@localhost>",
	    " <@relay1.example,@relay2.example:admin@example.com>");
	/* CFWS inside the addr-spec: the whole addr-spec is replaced */
	check_body(" root (the boss) @ localhost", " admin@example.com");
	check_body(" Boss <root @ (here) localhost >",
	    " Boss <admin@example.com >");
	cr_assert_str_eq(seen[0], "root@localhost");
	/* a fold inside a quoted local part is unfolded */
	check_body(" \"ro\r\n ot\"@localhost", NULL);
	cr_assert_str_eq(seen[0], "\"ro ot\"@localhost");
	/* quoted local part */
	check_body(" \"root\"@localhost", " admin@example.com");
	/* domain literal: not ours here, untouched */
	check_body(" root@[127.0.0.1]", NULL);
	cr_assert_str_eq(seen[0], "root@[127.0.0.1]");
	/* a phrase without an address is no address */
	check_body(" Charlie Root", NULL);
	cr_assert_eq(calls, 0);
}

Test(rewrite, malformed_left_alone)
{
	check_body(" \"unterminated <root>", NULL);
	check_body(" (unterminated <root>", NULL);
	check_body(" Two <root> <cron>", NULL);
	check_body(" <root", NULL);
	check_body(" root>", NULL);
	check_body(" back\\slash <root>", NULL);
	check_body(" ctl\x01 <root>", NULL);
	check_body(" a.@b <root>", " a.@b <admin@example.com>");
	check_body(" root..x", NULL);
	check_body(" root@", NULL);
	check_body(" root@a..b", NULL);
	check_body("", NULL);
}

/* ---- whole header sections ---- */

static void
check_headers(const char *hdr, const char *want)
{
	size_t outlen;
	char *out;

	out = rewrite_headers(hdr, strlen(hdr), map, NULL, &outlen);
	if (want == NULL) {
		cr_assert_null(out, "changed: %s", out != NULL ? out : "");
		return;
	}
	cr_assert_not_null(out, "unchanged: %s", hdr);
	cr_assert_eq(outlen, strlen(want), "got %s", out);
	cr_assert_str_eq(out, want);
	free(out);
}

Test(rewrite, only_from_sender_reply_to)
{
	check_headers(
	    "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
	    "From: root (Cron Daemon)\r\n"
	    "To: root\r\n"
	    "Cc: root@localhost\r\n"
	    "sender :root@localhost\r\n"
	    "REPLY-TO: Admins <cron>,\r\n"
	    "  root\r\n"
	    "Subject: root <root@localhost>\r\n"
	    "X-From: root\r\n"
	    "\r\n"
	    "From: root in the body\r\n",
	    "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
	    "From: admin@example.com (Cron Daemon)\r\n"
	    "To: root\r\n"
	    "Cc: root@localhost\r\n"
	    "sender :admin@example.com\r\n"
	    "REPLY-TO: Admins <cron@example.com>,\r\n"
	    "  admin@example.com\r\n"
	    "Subject: root <root@localhost>\r\n"
	    "X-From: root\r\n"
	    "\r\n"
	    "From: root in the body\r\n");
}

Test(rewrite, resent_block)
{
	/* A message resent by a local user: the resent originator fields
	 * change like their plain forms; Resent-To, Resent-Cc and the rest
	 * of the block are recipients or not addresses and stay, as does
	 * the body: UNCHANGED ends both the input and the result. */
#define UNCHANGED \
	"Resent-To: root\r\n" \
	"Resent-Cc: root@localhost\r\n" \
	"Resent-Bcc: root\r\n" \
	"Resent-Message-ID: <root@localhost>\r\n" \
	"Resent-Fromage: root\r\n" \
	"From: other@example.net\r\n" \
	"\r\n" \
	"Resent-From: root\r\n"
	check_headers(
	    "Resent-From: Root <root>\r\n"
	    "resent-sender:\r\n"
	    " cron (the daemon)\r\n"
	    "Resent-Reply-To: root@localhost, other@example.net\r\n"
	    UNCHANGED,
	    "Resent-From: Root <admin@example.com>\r\n"
	    "resent-sender:\r\n"
	    " cron@example.com (the daemon)\r\n"
	    "Resent-Reply-To: admin@example.com, other@example.net\r\n"
	    UNCHANGED);
#undef UNCHANGED
	check_headers("Resent-To: root\r\nResent-Date: x\r\n\r\n", NULL);
}

Test(rewrite, sections_without_changes_or_end)
{
	check_headers("From: a@example.org\r\nTo: root\r\n\r\nbody\r\n", NULL);
	/* LF line ends (BDAT passes bytes as they come) */
	check_headers("From: root\nSubject: x\n\nbody\n",
	    "From: admin@example.com\nSubject: x\n\nbody\n");
	/* A body with no empty line before it: the first non-field line
	 * ends the section. */
	check_headers("Subject: x\r\nthis is body text\r\nFrom: root\r\n",
	    NULL);
	/* The last field without a line end */
	check_headers("Subject: x\r\nFrom: root",
	    "Subject: x\r\nFrom: admin@example.com");
	/* A section that starts with a continuation is not headers */
	check_headers(" From: root\r\n", NULL);
	check_headers("", NULL);
}

Test(rewrite, header_done)
{
	const char *m = "From: root\r\nSubject: a\r\n b\r\n\r\nbody";
	size_t cur = 0;

	cr_assert_eq(rewrite_header_done(m, 8, &cur), 0);
	cr_assert_eq(cur, 0);
	cr_assert_eq(rewrite_header_done(m, 12, &cur), 0);
	cr_assert_eq(cur, 12);
	cr_assert_eq(rewrite_header_done(m, 27, &cur), 0);
	cr_assert_eq(cur, 24);
	cr_assert_eq(rewrite_header_done(m, 28, &cur), 0);
	cr_assert_eq(cur, 28);
	/* a lone CR cannot start a field: decided before its LF */
	cr_assert_eq(rewrite_header_done(m, 29, &cur), 1);
	cr_assert_eq(rewrite_header_done(m, 30, &cur), 1);
	cur = 0;
	cr_assert_eq(rewrite_header_done("From: x\nbody line\n", 18, &cur), 1);
	cur = 0;
	cr_assert_eq(rewrite_header_done("\r\nbody", 6, &cur), 1);
	/* An incomplete line decides as soon as it cannot be a field. */
	cur = 0;
	cr_assert_eq(rewrite_header_done("From: ro", 8, &cur), 0);
	cr_assert_eq(rewrite_header_done("X-Not-Yet-A-Colon", 17, &cur), 0);
	cr_assert_eq(rewrite_header_done("X-Name :", 8, &cur), 0);
	cr_assert_eq(rewrite_header_done("a long body line", 16, &cur), 1);
	cr_assert_eq(rewrite_header_done(":x", 2, &cur), 1);
	cr_assert_eq(rewrite_header_done("A: 1\r\nyy yy", 11, &cur), 1);
	cur = 0;
	cr_assert_eq(rewrite_header_done("A: 1\r\n\tyyyy", 11, &cur), 0);
}

Test(rewrite, complete_fields)
{
	const char *h = "A: 1\r\nFrom: root,\r\n x@y";

	cr_assert_eq(rewrite_complete_fields(h, strlen(h)), 6);
	cr_assert_eq(rewrite_complete_fields(" x", 2), 0);
}
