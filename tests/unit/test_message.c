/* Unit tests for the message sendmail reads: line ends, the header/body
 * split, overlong lines, NUL bytes, -t address extraction, Bcc removal
 * and the fields sendmail adds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "escape.h"
#include "message.h"

static char *
roundtrip(const char *in, size_t len)
{
	struct message m;
	char err[256], *out;
	size_t outlen;

	cr_assert_eq(message_parse(in, len, &m, err, sizeof(err)),
	    MESSAGE_OK, "%s", err);
	out = message_serialize(&m, &outlen);
	cr_assert_eq(strlen(out), outlen);
	message_clear(&m);
	return out;
}

Test(message, bare_lf_and_cr_become_crlf)
{
	const char in[] = "Subject: x\nTo: a@b\r\n\nline1\nline2\rline3";
	char *out = roundtrip(in, sizeof(in) - 1);

	cr_assert_str_eq(out, "Subject: x\r\nTo: a@b\r\n\r\nline1\r\n"
	    "line2\r\nline3\r\n");
	free(out);
}

Test(message, folded_fields_stay_together)
{
	const char in[] = "To: a@b,\n\tc@d\nSubject: s\n\nbody\n";
	struct message m;
	char err[256], *v;

	cr_assert_eq(message_parse(in, sizeof(in) - 1, &m, err, sizeof(err)),
	    MESSAGE_OK);
	cr_assert_eq(m.nfields, 2);
	cr_assert_str_eq(m.fields[0].name, "To");
	cr_assert_str_eq(m.fields[0].text, "To: a@b,\r\n\tc@d\r\n");
	v = message_value(&m.fields[0]);
	cr_assert_str_eq(v, "a@b,\tc@d");
	free(v);
	cr_assert_str_eq(m.body, "body\r\n");
	message_clear(&m);
}

Test(message, no_separator_starts_body_at_first_non_field_line)
{
	const char in[] = "Subject: hi\nthis is the body\nSecond: line\n";
	char *out = roundtrip(in, sizeof(in) - 1);

	cr_assert_str_eq(out, "Subject: hi\r\n\r\nthis is the body\r\n"
	    "Second: line\r\n");
	free(out);
}

/*
 * A "name" too long for one line with its colon cannot be a field: folding
 * would break it where a re-read finds no field. It starts the body, and
 * the result reads back as itself (found by fuzz_message). 997 bytes and
 * the colon are the longest name that fits.
 */
Test(message, overlong_field_name_starts_the_body)
{
	char in[1100], *out, *again;
	struct message m;
	char err[256];

	memset(in, 'N', 998);
	memcpy(in + 998, ": v\n", 5);
	cr_assert_eq(message_parse(in, strlen(in), &m, err, sizeof(err)),
	    MESSAGE_OK);
	cr_assert_eq(m.nfields, 0);
	message_clear(&m);
	out = roundtrip(in, strlen(in));
	again = roundtrip(out, strlen(out));
	cr_assert_str_eq(out, again);
	cr_assert(strncmp(out, "\r\nNNN", 5) == 0);
	free(out);
	free(again);

	memset(in, 'N', 997);
	memcpy(in + 997, ": v\n", 5);
	cr_assert_eq(message_parse(in, strlen(in), &m, err, sizeof(err)),
	    MESSAGE_OK);
	cr_assert_eq(m.nfields, 1);
	cr_assert_eq(strlen(m.fields[0].name), 997);
	message_clear(&m);
	out = roundtrip(in, strlen(in));
	again = roundtrip(out, strlen(out));
	cr_assert_str_eq(out, again);
	free(out);
	free(again);
}

Test(message, body_only_input_gets_an_empty_header)
{
	const char in[] = "just text\n\nmore\n";
	char *out = roundtrip(in, sizeof(in) - 1);

	cr_assert_str_eq(out, "\r\njust text\r\n\r\nmore\r\n");
	free(out);
}

Test(message, header_only_input_and_empty_input)
{
	char *out = roundtrip("Subject: s", 10);

	cr_assert_str_eq(out, "Subject: s\r\n\r\n");
	free(out);
	out = roundtrip("", 0);
	cr_assert_str_eq(out, "\r\n");
	free(out);
}

Test(message, mbox_from_line_is_dropped)
{
	const char in[] = "From me@x Tue Jan  1 00:00:00 2026\nSubject: s\n\nb\n";
	char *out = roundtrip(in, sizeof(in) - 1);

	cr_assert_str_eq(out, "Subject: s\r\n\r\nb\r\n");
	free(out);
}

Test(message, nul_byte_is_refused_with_its_line)
{
	const char in[] = "Subject: s\n\nok\nbad\0line\n";
	struct message m;
	char err[256];

	cr_assert_eq(message_parse(in, sizeof(in) - 1, &m, err, sizeof(err)),
	    MESSAGE_NUL);
	cr_assert(strstr(err, "line 4") != NULL, "%s", err);
	cr_assert_eq(m.nfields, 0);
}

/* Every line of s (CRLF-separated) is at most the limit. */
static void
assert_lines_fit(const char *s)
{
	const char *p = s, *e;

	while ((e = strstr(p, "\r\n")) != NULL) {
		cr_assert_leq((size_t)(e - p), MESSAGE_LINE_MAX);
		p = e + 2;
	}
	cr_assert_str_eq(p, "");
}

Test(message, overlong_body_line_is_broken)
{
	size_t n = 2500;
	char *in = malloc(n + 16), *out, *joined, *q;
	const char *p;

	memcpy(in, "\n", 1);
	memset(in + 1, 'x', n);
	in[n + 1] = '\n';
	out = roundtrip(in, n + 2);
	assert_lines_fit(out);
	/* Nothing lost: without the CRLFs it is the same bytes. */
	joined = malloc(strlen(out) + 1);
	for (p = out, q = joined; *p != '\0'; p++)
		if (*p != '\r' && *p != '\n')
			*q++ = *p;
	*q = '\0';
	cr_assert_eq(strlen(joined), n);
	free(joined);
	free(out);
	free(in);
}

Test(message, overlong_header_is_folded)
{
	size_t i, n = 3000;
	char *in = malloc(n + 1600), *out;
	struct message m;
	char err[256], *v;

	strcpy(in, "X-Long: ");
	for (i = 8; i < n; i++)
		in[i] = (i % 50 == 0) ? ' ' : 'y';
	strcpy(in + n, "\nX-Word: ");
	memset(in + n + 9, 'z', 1500);
	strcpy(in + n + 9 + 1500, "\n\nb\n");
	cr_assert_eq(message_parse(in, strlen(in), &m, err, sizeof(err)),
	    MESSAGE_OK);
	cr_assert_eq(m.nfields, 2);
	out = message_serialize(&m, NULL);
	assert_lines_fit(out);
	/* Folding at blanks inserts nothing: unfolded, the value is the
	 * same. */
	v = message_value(&m.fields[0]);
	cr_assert_eq(strlen(v), n - 8);
	free(v);
	/* Without a blank, CRLF SP is inserted: one more space. */
	v = message_value(&m.fields[1]);
	cr_assert_eq(strlen(v), 1501);
	free(v);
	free(out);
	message_clear(&m);
	free(in);
}

/* Checks that every line of out (CRLF-ended) is whole UTF-8 and that out
 * without its line breaks (and fold's inserted space, when fold) is
 * want. */
static void
assert_breaks_keep_chars(const char *out, const char *want, int fold)
{
	const char *p = out, *e;
	char *joined = malloc(strlen(out) + 1), *q = joined;

	while ((e = strstr(p, "\r\n")) != NULL) {
		cr_assert(escape_utf8_whole(p, (size_t)(e - p)),
		    "line cut inside a character: %.*s", (int)(e - p), p);
		cr_assert_leq(e - p, 998);
		if (p != out && fold && *p == ' ')
			p++;
		memcpy(q, p, (size_t)(e - p));
		q += e - p;
		p = e + 2;
	}
	*q = '\0';
	cr_assert_str_eq(joined, want);
	free(joined);
}

Test(message, overlong_lines_are_not_cut_inside_a_character)
{
	/* Two-byte characters after one ASCII byte put byte 998 inside a
	 * character; four-byte ones (U+1F600) after two put it inside one
	 * at each of the three positions over the pieces. */
	static const char *pre[] = { "a", "ab", "" };
	static const char *chr[] = { "\xc3\xa9", "\xf0\x9f\x98\x80",
	    "\xe2\x82\xac" };
	size_t i, k, len, clen;
	char *body, *in, *out;

	for (i = 0; i < 3; i++) {
		clen = strlen(chr[i]);
		len = strlen(pre[i]) + 1500 * clen;
		body = malloc(len + 1);
		strcpy(body, pre[i]);
		for (k = 0; k < 1500; k++)
			memcpy(body + strlen(pre[i]) + k * clen, chr[i], clen);
		body[len] = '\0';
		/* In the body: broken with a bare CRLF. */
		in = malloc(len + 16);
		snprintf(in, len + 16, "\n%s\n", body);
		out = roundtrip(in, strlen(in));
		cr_assert(strncmp(out, "\r\n", 2) == 0);
		assert_breaks_keep_chars(out + 2, body, 0);
		free(out);
		/* In a header without a blank: folded with CRLF SP. */
		snprintf(in, len + 16, "X:%s\n\nb\n", body);
		out = roundtrip(in, strlen(in));
		strstr(out, "\r\n\r\n")[2] = '\0';
		cr_assert(strncmp(out, "X:", 2) == 0);
		assert_breaks_keep_chars(out + 2, body, 1);
		free(out);
		free(in);
		free(body);
	}
}

Test(message, overlong_latin1_line_is_broken_at_the_limit)
{
	/* Bytes that are not UTF-8 (Latin-1 e-acute) are broken at 998. */
	char in[2003], *out;

	in[0] = '\n';
	memset(in + 1, '\xe9', 2000);
	in[2001] = '\n';
	in[2002] = '\0';
	out = roundtrip(in, 2002);
	cr_assert_eq(strstr(out + 2, "\r\n") - (out + 2), 998);
	free(out);
}

Test(message, dot_end)
{
	const char a[] = "Subject: x\n\nbody\n.\nafter\n";
	const char b[] = "x\n.hidden\n..\n";
	const char c[] = "x\n.\r\n";

	cr_assert_eq(message_dot_end(a, sizeof(a) - 1, 0), 17);
	cr_assert_eq(message_dot_end(b, sizeof(b) - 1, 0), (size_t)-1);
	cr_assert_eq(message_dot_end(c, sizeof(c) - 1, 0), 2);
	/* Not complete yet: the dot may be the start of ".x". */
	cr_assert_eq(message_dot_end("x\n.", 3, 0), (size_t)-1);
	cr_assert_eq(message_last_line("x\n.", 3), 2);
	cr_assert_eq(message_last_line("x\n", 2), 2);
	cr_assert_eq(message_dot_end(".\n", 2, 0), 0);
}

static void
parse_list(const char *value, const char *const *want, size_t nwant)
{
	char **addrs = NULL, err[256];
	size_t n = 0, i;

	cr_assert_eq(message_addrlist_parse(value, &addrs, &n, err,
	    sizeof(err)), 0, "%s: %s", value, err);
	cr_assert_eq(n, nwant, "%s: %zu addresses", value, n);
	for (i = 0; i < n; i++)
		cr_assert_str_eq(addrs[i], want[i]);
	message_addrs_free(addrs, n);
}

Test(message, address_lists)
{
	static const char *const w1[] = { "a@example.org", "b@example.net",
		"c@example.com" };
	static const char *const w2[] = { "x@y.z", "p@q.r" };
	static const char *const w3[] = { "\"odd, name\"@example.org",
		"u@d.e" };
	static const char *const w4[] = { "root" };

	parse_list("a@example.org, \"Bee, B.\" <b@example.net>, "
	    "C (comment, here) <c@example.com>", w1, 3);
	parse_list("friends: x@y.z, Pea <p@q.r>;", w2, 2);
	parse_list("undisclosed-recipients:;", NULL, 0);
	parse_list("\"odd, name\"@example.org, <@route.x:u@d.e>", w3, 2);
	parse_list("  root  (the admin) ", w4, 1);
	parse_list("root, root", w4, 1);
}

Test(message, address_list_errors)
{
	char **addrs = NULL, err[256];
	size_t n = 0;

	cr_assert_eq(message_addrlist_parse("a@b (open", &addrs, &n, err,
	    sizeof(err)), -1);
	cr_assert_eq(message_addrlist_parse("\"open@b", &addrs, &n, err,
	    sizeof(err)), -1);
	cr_assert_eq(message_addrlist_parse("X <a@b", &addrs, &n, err,
	    sizeof(err)), -1);
	message_addrs_free(addrs, n);
}

static void
recipients_of(const char *in, int resent, const char *const *want,
    size_t nwant)
{
	struct message m;
	char **r = NULL, err[256];
	size_t n = 0, i;

	cr_assert_eq(message_parse(in, strlen(in), &m, err, sizeof(err)),
	    MESSAGE_OK);
	cr_assert_eq(message_has_resent(&m), resent);
	cr_assert_eq(message_recipients(&m, resent, &r, &n, err, sizeof(err)),
	    0, "%s", err);
	cr_assert_eq(n, nwant);
	for (i = 0; i < n; i++)
		cr_assert_str_eq(r[i], want[i]);
	message_addrs_free(r, n);
	message_clear(&m);
}

Test(message, t_recipients_to_cc_bcc)
{
	static const char *const want[] = { "a@x", "b@x", "c@x", "d@x" };

	recipients_of("From: me@x\nTo: A <a@x>,\n b@x\ncc: c@x\n"
	    "BCC: d@x\nReply-To: no@x\n\nTo: body@x\n", 0, want, 4);
}

Test(message, t_recipients_resent_set_only)
{
	static const char *const want[] = { "new@x", "hidden@x" };

	recipients_of("To: old@x\nCc: old2@x\nResent-From: me@x\n"
	    "Resent-To: new@x\nResent-Bcc: hidden@x\n\nb\n", 1, want, 2);
}

Test(message, remove_and_add_fields)
{
	const char in[] = "To: a@x\nBcc: secret@x\nbcc: s2@x,\n s3@x\n\nb\n";
	struct message m;
	char err[256], *out;

	cr_assert_eq(message_parse(in, sizeof(in) - 1, &m, err, sizeof(err)),
	    MESSAGE_OK);
	cr_assert_eq(message_remove(&m, "Bcc"), 2);
	cr_assert_eq(message_find(&m, "bcc", 0), -1);
	message_add(&m, "Date", "Wed, 02 Dec 2026 03:04:05 +0000");
	cr_assert_eq(message_find(&m, "date", 0), 1);
	out = message_serialize(&m, NULL);
	cr_assert_str_eq(out, "To: a@x\r\nDate: Wed, 02 Dec 2026 03:04:05 "
	    "+0000\r\n\r\nb\r\n");
	free(out);
	message_clear(&m);
}

Test(message, date_format)
{
	char buf[64];

	setenv("TZ", "UTC", 1);
	tzset();
	message_date(1796180645, buf, sizeof(buf));
	cr_assert_str_eq(buf, "Wed, 02 Dec 2026 03:04:05 +0000");
	setenv("TZ", "EST5", 1);
	tzset();
	message_date(1796180645, buf, sizeof(buf));
	cr_assert_str_eq(buf, "Tue, 01 Dec 2026 22:04:05 -0500");
}

Test(message, from_value)
{
	static const char *const cases[][3] = {
		{ "Ada Lovelace", "ada@example.org",
		  "Ada Lovelace <ada@example.org>" },
		{ "Lovelace, Ada (Countess)", "ada@example.org",
		  "\"Lovelace, Ada (Countess)\" <ada@example.org>" },
		{ "a \"b\" \\c", "x@y", "\"a \\\"b\\\" \\\\c\" <x@y>" },
		{ "Jos\xc3\xa9", "jose@example.org",
		  "=?UTF-8?B?Sm9zw6k=?= <jose@example.org>" },
		{ "", "x@y", "x@y" },
	};
	size_t i;
	char *v;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		v = message_from_value(cases[i][0], cases[i][1]);
		cr_assert_str_eq(v, cases[i][2]);
		free(v);
	}
}

Test(message, gecos_name)
{
	static const char *const cases[][3] = {
		{ "Ada Lovelace,Room 1,555,", "ada", "Ada Lovelace" },
		{ "& Smith", "jane", "Jane Smith" },
		{ ",,,", "x", "" },
	};
	size_t i;
	char *v;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		v = message_gecos_name(cases[i][0], cases[i][1]);
		cr_assert_str_eq(v, cases[i][2]);
		free(v);
	}
	v = message_gecos_name(NULL, "x");
	cr_assert_str_eq(v, "");
	free(v);
}
