/* Unit tests for the SMTP syntax shared by both directions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "escape.h"
#include "smtp_proto.h"

Test(cmd, split_upper_cases_verb)
{
	char verb[16];
	const char *arg;

	cr_assert_eq(smtp_cmd_split("mail FROM:<a@b>", 15, verb, sizeof(verb),
	    &arg), 0);
	cr_assert_str_eq(verb, "MAIL");
	cr_assert_str_eq(arg, "FROM:<a@b>");
	cr_assert_eq(smtp_cmd_split("QUIT", 4, verb, sizeof(verb), &arg), 0);
	cr_assert_str_eq(verb, "QUIT");
	cr_assert_str_eq(arg, "");
	cr_assert_eq(smtp_cmd_split("", 0, verb, sizeof(verb), &arg), -1);
	cr_assert_eq(smtp_cmd_split("NO\0OP", 5, verb, sizeof(verb), &arg),
	    -1);
}

Test(path, mail_and_rcpt)
{
	char addr[SMTP_PATH_MAX];
	const char *params, *why;

	cr_assert_eq(smtp_path_parse("FROM:<a@example.org> SIZE=10", "FROM:",
	    addr, sizeof(addr), &params, &why), 0);
	cr_assert_str_eq(addr, "a@example.org");
	cr_assert_str_eq(params, "SIZE=10");
	cr_assert_eq(smtp_path_parse("from: <>", "FROM:", addr, sizeof(addr),
	    &params, &why), 0);
	cr_assert_str_eq(addr, "");
	cr_assert_eq(smtp_path_parse("TO:<@relay.example:u@d.example>", "TO:",
	    addr, sizeof(addr), &params, &why), 0);
	cr_assert_str_eq(addr, "u@d.example");
	cr_assert_eq(smtp_path_parse("TO:<\"a>b\"@d.example>", "TO:", addr,
	    sizeof(addr), &params, &why), 0);
	cr_assert_str_eq(addr, "\"a>b\"@d.example");
}

Test(path, rejects_bad_syntax)
{
	char addr[SMTP_PATH_MAX];
	const char *params, *why;

	cr_assert_eq(smtp_path_parse("FROM:a@b", "FROM:", addr, sizeof(addr),
	    &params, &why), -1);
	cr_assert_eq(smtp_path_parse("FROM:<a@b", "FROM:", addr, sizeof(addr),
	    &params, &why), -1);
	cr_assert_eq(smtp_path_parse("TO:<a@b>", "FROM:", addr, sizeof(addr),
	    &params, &why), -1);
	cr_assert_eq(smtp_path_parse("FROM:<a@b>x", "FROM:", addr,
	    sizeof(addr), &params, &why), -1);
}

Test(mailbox, validity)
{
	cr_assert(smtp_mailbox_valid("a@example.org", 0));
	cr_assert(smtp_mailbox_valid("a.b+c@[192.0.2.1]", 0));
	cr_assert(smtp_mailbox_valid("\"a b\"@example.org", 0));
	cr_assert_not(smtp_mailbox_valid("a", 0));
	cr_assert_not(smtp_mailbox_valid("@example.org", 0));
	cr_assert_not(smtp_mailbox_valid("a@", 0));
	cr_assert_not(smtp_mailbox_valid("a@b@c", 0));
	cr_assert_not(smtp_mailbox_valid("a b@c", 0));
	cr_assert_not(smtp_mailbox_valid("a@b..c", 0));
	cr_assert_not(smtp_mailbox_valid("j\xc3\xb6@example.org", 0));
	cr_assert(smtp_mailbox_valid("j\xc3\xb6@example.org", 1));
}

/* Addresses RFC 5321 4.1.2 and 4.5.3.1 allow are taken, each as a
 * whole mailbox and at the length limits; the lenient extras are the
 * underscore in a domain and, with SMTPUTF8, UTF-8 in atoms, quoted
 * strings and labels. */
Test(mailbox, valid_grammar_accepted)
{
	static const char *const good[] = {
		"a@b", "A.B.C@example.org", "x!#$%&'*+-/=?^_`{|}~y@example.org",
		"\"\"@example.org", "\"a..b\"@example.org", "\".a\"@y.z",
		"\"a@b\"@example.org", "\"a\\\\b\"@example.org",
		"\"a\\ b\"@example.org", "a@[192.0.2.1]", "a@[0.00.255.001]",
		"a@[IPv6:2001:db8::1]", "a@[ipv6:::1]",
		"a@[IPv6:::ffff:192.0.2.1]", "a@[x-tag:some@text!]",
		"a@1.2.3.4", "a@x-y.example", "a@x--y.example", "a@b_c.example",
		"a@123.example", "a@EXAMPLE.ORG",
	};
	char local[201], label[64], addr[512];
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		cr_assert(smtp_mailbox_valid(good[i], 0), "%s refused",
		    good[i]);
	memset(local, 'l', 200);
	local[200] = '\0';
	snprintf(addr, sizeof(addr), "%s@y.z", local);
	cr_assert(smtp_mailbox_valid(addr, 0), "a 200-octet local part (a "
	    "VERP sender, say) refused");
	snprintf(addr, sizeof(addr), "\"%.*s\"@y.z", 100, local);
	cr_assert(smtp_mailbox_valid(addr, 0), "a long quoted local part");
	memset(label, 'd', 63);
	label[63] = '\0';
	snprintf(addr, sizeof(addr), "a@%s.%s.%s.%s", label, label, label,
	    label);
	cr_assert_eq(strlen(addr), 2 + SMTP_DOMAIN_MAX);
	cr_assert(smtp_mailbox_valid(addr, 0), "a 255-octet domain refused");
	cr_assert(smtp_mailbox_valid("j\xc3\xb6rg.x@b\xc3\xbc" "cher.example",
	    1));
	cr_assert(smtp_mailbox_valid("\"j\xc3\xb6 rg\"@example.org", 1));
}

/* What the grammar refuses: dots out of place in a Dot-string, bytes no
 * atom may hold, a quoted string that is not the whole local part, a
 * labels with a hyphen at either end, over 63
 * octets or empty, and malformed address literals. */
Test(mailbox, malformed_refused)
{
	static const char *const bad[] = {
		".a@y.z", "a.@y.z", "a..b@y.z", "a(b)@y.z", "a\\b@y.z",
		"a:b@y.z", "a[b]@y.z", "\"a\"b@y.z", "a\"b\"@y.z",
		"\"a\".\"b\"@y.z", "\"a\\\"@y.z", "\"a@y.z", "a@-y.z", "a@y-.z",
		"a@y.-z", "a@y.z-", "a@.y.z", "a@y.z.", "a@y..z", "a@y!.z",
		"a@y z", "a@y,z", "a@[1.2.3.4\\]", "a@[1.2.3.4", "a@[1.2.3]",
		"a@[1.2.3.4.5]", "a@[1.2.3.256]", "a@[1.2.3.1234]",
		"a@[IPv6:1.2.3.4]", "a@[IPv6:2001:db8::g]", "a@[IPv6:]",
		"a@[]", "a@[tag]", "a@[tag:]", "a@[tag-:x]", "a@[:x]",
		"a@[tag:a[b]", "a@[tag:a\\b]", "a@[tag:a]b]", "a@[1.2.3.4]x",
	};
	char local[65], addr[512];
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_not(smtp_mailbox_valid(bad[i], 0), "%s taken",
		    bad[i]);
		cr_assert_not(smtp_mailbox_valid(bad[i], 1), "%s taken with "
		    "SMTPUTF8", bad[i]);
	}
	memset(local, 'd', 64);
	local[64] = '\0';
	snprintf(addr, sizeof(addr), "a@%s.z", local);
	cr_assert_not(smtp_mailbox_valid(addr, 0), "64-octet label");
	snprintf(addr, sizeof(addr), "a@%.63s.%.63s.%.63s.%.61s.zz", local,
	    local, local, local);
	cr_assert_eq(strlen(addr), 2 + SMTP_DOMAIN_MAX + 1);
	cr_assert_not(smtp_mailbox_valid(addr, 0), "a 256-octet domain");
}

/* A quoted-pair escapes syntax, not the byte checks: an escaped CR or
 * ESC would reach logs and the Received: header, an escaped 8-bit byte
 * would go upstream without SMTPUTF8. */
Test(mailbox, escaped_bytes_are_checked)
{
	char addr[SMTP_PATH_MAX];
	const char *params, *why;

	cr_assert(smtp_mailbox_valid("\"a\\\"b\"@example.org", 0));
	cr_assert_not(smtp_mailbox_valid("\"\\\rX-Injected: yes\"@y.z", 0));
	cr_assert_not(smtp_mailbox_valid("\"\\\x1b[31m\"@y.z", 0));
	cr_assert_not(smtp_mailbox_valid("\"\\\x7f\"@y.z", 1));
	cr_assert_not(smtp_mailbox_valid("\"\\\xff\"@b.c", 0));
	cr_assert(smtp_mailbox_valid("\"\\\xc3\xb6\"@b.c", 1));
	/* The issue's probe, through the path parser as RCPT sees it. */
	cr_assert_eq(smtp_path_parse(
	    "TO:<\"\\\rX-Injected: yes\\\r\\\x1b[31m\"@y.z>", "TO:", addr,
	    sizeof(addr), &params, &why), 0);
	cr_assert_not(smtp_mailbox_valid(addr, 0));
	cr_assert_not(smtp_mailbox_valid(addr, 1));
}

/* SMTPUTF8 allows UTF-8, not any byte above 0x7f: a stray byte, an
 * overlong form, a surrogate or a C1 control (CSI) is refused, quoted and
 * escaped or not. */
Test(mailbox, utf8_must_be_well_formed_and_printable)
{
	cr_assert(smtp_mailbox_valid("j\xc3\xb6rg@b\xc3\xa9.example", 1));
	cr_assert(smtp_mailbox_valid("\xf0\x9f\x93\xa7@example.org", 1));
	cr_assert_not(smtp_mailbox_valid("\"\\\xff\"@b.c", 1));
	cr_assert_not(smtp_mailbox_valid("\xff@b.c", 1));
	cr_assert_not(smtp_mailbox_valid("a@b\xff.c", 1));
	cr_assert_not(smtp_mailbox_valid("\xc3@b.c", 1));
	cr_assert_not(smtp_mailbox_valid("a\xc0\xae@b.c", 1));
	cr_assert_not(smtp_mailbox_valid("a\xed\xa0\x80@b.c", 1));
	cr_assert_not(smtp_mailbox_valid("a\xc2\x9b31m@b.c", 1));
	cr_assert_not(smtp_mailbox_valid("\"\\\xc2\x85\"@b.c", 1));
}

Test(params, iterate)
{
	const char *cur = "SIZE=100 body=8BITMIME SMTPUTF8";
	char k[32], v[64];

	cr_assert_eq(smtp_param_next(&cur, k, sizeof(k), v, sizeof(v)), 1);
	cr_assert_str_eq(k, "SIZE");
	cr_assert_str_eq(v, "100");
	cr_assert_eq(smtp_param_next(&cur, k, sizeof(k), v, sizeof(v)), 1);
	cr_assert_str_eq(k, "BODY");
	cr_assert_str_eq(v, "8BITMIME");
	cr_assert_eq(smtp_param_next(&cur, k, sizeof(k), v, sizeof(v)), 1);
	cr_assert_str_eq(k, "SMTPUTF8");
	cr_assert_str_eq(v, "");
	cr_assert_eq(smtp_param_next(&cur, k, sizeof(k), v, sizeof(v)), 0);
	cur = "SIZE=";
	cr_assert_eq(smtp_param_next(&cur, k, sizeof(k), v, sizeof(v)), -1);
	cur = "S!ZE=1";
	cr_assert_eq(smtp_param_next(&cur, k, sizeof(k), v, sizeof(v)), -1);
}

static enum smtp_reply_status
feed(struct smtp_reply_parser *p, const char *line)
{
	return smtp_reply_feed(p, line, strlen(line));
}

Test(reply, multiline_with_enhanced_codes)
{
	struct smtp_reply_parser p;

	smtp_reply_parser_init(&p);
	cr_assert_eq(feed(&p, "250-mx.example.org Hello"), SMTP_REPLY_MORE);
	cr_assert_eq(feed(&p, "250-PIPELINING"), SMTP_REPLY_MORE);
	cr_assert_eq(feed(&p, "250 SIZE 1000"), SMTP_REPLY_DONE);
	cr_assert_eq(p.reply.code, 250);
	cr_assert_eq(p.reply.nlines, 3);
	cr_assert_str_eq(p.reply.text,
	    "mx.example.org Hello\nPIPELINING\nSIZE 1000");

	cr_assert_eq(feed(&p, "550 5.1.1 No such user"), SMTP_REPLY_DONE);
	cr_assert_eq(p.reply.code, 550);
	cr_assert_str_eq(p.reply.enhanced, "5.1.1");
	cr_assert_str_eq(p.reply.text, "No such user");

	/* An enhanced code of the wrong class is text, not a code. */
	cr_assert_eq(feed(&p, "451 5.1.1 odd"), SMTP_REPLY_DONE);
	cr_assert_str_eq(p.reply.enhanced, "");
	cr_assert_eq(feed(&p, "220"), SMTP_REPLY_DONE);
	cr_assert_eq(p.reply.code, 220);
}

Test(reply, malformed)
{
	struct smtp_reply_parser p;

	smtp_reply_parser_init(&p);
	cr_assert_eq(feed(&p, "25"), SMTP_REPLY_ERROR);
	cr_assert_eq(feed(&p, "abc hello"), SMTP_REPLY_ERROR);
	cr_assert_eq(feed(&p, "250xhello"), SMTP_REPLY_ERROR);
	cr_assert_eq(feed(&p, "999 no"), SMTP_REPLY_ERROR);
	cr_assert_eq(feed(&p, "250-first"), SMTP_REPLY_MORE);
	cr_assert_eq(feed(&p, "251 second"), SMTP_REPLY_ERROR);
}

Test(reply, too_many_lines)
{
	struct smtp_reply_parser p;
	int i;

	smtp_reply_parser_init(&p);
	for (i = 1; i < SMTP_REPLY_MAX_LINES; i++)
		cr_assert_eq(feed(&p, "250-more"), SMTP_REPLY_MORE);
	cr_assert_eq(feed(&p, "250-more"), SMTP_REPLY_TOO_LONG);
	/* The parser starts afresh after it. */
	cr_assert_eq(feed(&p, "250 ok"), SMTP_REPLY_DONE);
	cr_assert_eq(p.reply.nlines, 1);

	/* A last line at the limit is still a reply. */
	for (i = 1; i < SMTP_REPLY_MAX_LINES; i++)
		cr_assert_eq(feed(&p, "250-more"), SMTP_REPLY_MORE);
	cr_assert_eq(feed(&p, "250 last"), SMTP_REPLY_DONE);
	cr_assert_eq(p.reply.nlines, SMTP_REPLY_MAX_LINES);
}

Test(ehlo, keywords)
{
	struct smtp_ehlo e;

	smtp_ehlo_parse("mx.example.org\nPIPELINING\nSIZE 10240000\n"
	    "STARTTLS\nAUTH PLAIN LOGIN\nAUTH=cram-md5\n8BITMIME\nSMTPUTF8",
	    &e);
	cr_assert(e.exts & SMTP_EXT_PIPELINING);
	cr_assert(e.exts & SMTP_EXT_STARTTLS);
	cr_assert(e.exts & SMTP_EXT_8BITMIME);
	cr_assert(e.exts & SMTP_EXT_SMTPUTF8);
	cr_assert(e.exts & SMTP_EXT_AUTH);
	cr_assert_not(e.exts & SMTP_EXT_CHUNKING);
	cr_assert_eq(e.size, 10240000);
	cr_assert_str_eq(e.auth, "PLAIN LOGIN CRAM-MD5");
	/* The greeting line is not a keyword. */
	smtp_ehlo_parse("PIPELINING", &e);
	cr_assert_eq(e.exts, 0);
}

static char *
encode_all(const char *const *pieces, size_t n)
{
	static char out[4096];
	struct smtp_body_encoder e;
	size_t i, len = 0;

	smtp_body_encoder_init(&e);
	for (i = 0; i < n; i++)
		len += smtp_body_encode(&e, pieces[i], strlen(pieces[i]),
		    out + len);
	len += smtp_body_encode_finish(&e, out + len);
	out[len] = '\0';
	return out;
}

Test(body, dot_stuffing_and_line_ends)
{
	const char *a[] = { "Subject: x\r\n\r\n.hidden\r\n..\r\nend" };
	const char *b[] = { "bare\nlf\rcr\r", "\n.", "dot\n" };
	const char *c[] = { "" };

	cr_assert_str_eq(encode_all(a, 1),
	    "Subject: x\r\n\r\n..hidden\r\n...\r\nend\r\n.\r\n");
	/* A CRLF split across pieces is one line end, not two. */
	cr_assert_str_eq(encode_all(b, 3),
	    "bare\r\nlf\r\ncr\r\n..dot\r\n.\r\n");
	cr_assert_str_eq(encode_all(c, 1), ".\r\n");
}

Test(body, smuggled_terminator_is_stuffed)
{
	const char *s[] = { "a\n.\nMAIL FROM:<x@y>\r\n" };

	cr_assert_str_eq(encode_all(s, 1),
	    "a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n");
}

/* A NUL before a line's '.': an upstream that drops NUL itself would see
 * a lone "." there, so the encoder drops it first and stuffs the dot. */
Test(body, nul_then_dot_is_stuffed)
{
	static const char in[] = "a\r\n\0.\r\nb\0c\r\n\0\0.x";
	char out[64];
	struct smtp_body_encoder e;
	size_t len;

	smtp_body_encoder_init(&e);
	len = smtp_body_encode(&e, in, sizeof(in) - 1, out);
	len += smtp_body_encode_finish(&e, out + len);
	cr_assert_eq(len, strlen("a\r\n..\r\nbc\r\n..x\r\n.\r\n"));
	cr_assert_eq(memcmp(out, "a\r\n..\r\nbc\r\n..x\r\n.\r\n", len), 0);
}

/* ---- line folding ---- */

/* Encodes in[0..len) with limit, fed as a first piece of first bytes,
 * then pieces of piece bytes, and ends the body. Caller frees; *outlen
 * gets the length, *folds the breaks. */
static char *
fold_cut(const char *in, size_t len, size_t limit, size_t first,
    size_t piece, size_t *outlen, unsigned long long *folds)
{
	struct smtp_body_encoder e;
	size_t off, n, space, total = 0;
	char *out;

	smtp_body_encoder_init(&e);
	smtp_body_encoder_fold(&e, limit);
	/* the sum of the pieces' spaces bounds the whole */
	space = SMTP_BODY_FINISH_MAX;
	for (off = 0; off < len; off += n) {
		n = off == 0 ? first : piece;
		if (n > len - off)
			n = len - off;
		space += smtp_body_encode_space(&e, n);
	}
	out = malloc(space + 1);
	cr_assert_not_null(out);
	for (off = 0; off < len; off += n) {
		n = off == 0 ? first : piece;
		if (n > len - off)
			n = len - off;
		total += smtp_body_encode(&e, in + off, n, out + total);
		cr_assert_leq(total, space);
	}
	total += smtp_body_encode_finish(&e, out + total);
	cr_assert_leq(total, space);
	out[total] = '\0';
	*outlen = total;
	*folds = e.folds;
	return out;
}

/* fold_cut() with every piece the same size. */
static char *
fold_all(const char *in, size_t len, size_t limit, size_t piece,
    size_t *outlen, unsigned long long *folds)
{
	return fold_cut(in, len, limit, piece, piece, outlen, folds);
}

/* The well-formed UTF-8 characters of s[0..len), NULs not counted (the
 * encoder drops them), as escape.c's decoder finds them. */
static size_t
utf8_chars(const char *s, size_t len)
{
	char *t = malloc(len + 1);
	size_t i, n = 0, count = 0, l;

	cr_assert_not_null(t);
	for (i = 0; i < len; i++)
		if (s[i] != '\0')
			t[n++] = s[i];
	for (i = 0; i < n; i += l > 0 ? l : 1)
		if ((l = escape_utf8_len(t + i, n - i)) > 0)
			count++;
	free(t);
	return count;
}

/* No line of out, a folded and ended body, is over limit characters (a
 * stuffed dot not counted). */
static void
check_lines(const char *out, size_t len, size_t limit)
{
	const char *p = out, *end = out + len, *eol;
	size_t n;

	while (p < end) {
		eol = memchr(p, '\r', (size_t)(end - p));
		cr_assert_not_null(eol);
		cr_assert(eol + 1 < end && eol[1] == '\n');
		n = (size_t)(eol - p);
		if (n >= 2 && p[0] == '.' && p[1] == '.')
			n--;
		cr_assert_leq(n, limit, "line at %zu has %zu characters",
		    (size_t)(p - out), n);
		p = eol + 2;
	}
}

/*
 * Encodes in[0..inlen) with limit in one piece, in two at every split
 * point and a byte at a time, and checks that each gives want (the body
 * ended with its "."), with no line over the limit and every well-formed
 * UTF-8 character of in still whole. Returns the breaks made.
 */
static unsigned long long
fold_expect(const char *in, size_t inlen, size_t limit, const char *want,
    size_t wantlen)
{
	unsigned long long folds, first = 0;
	size_t cut, len;
	char *out;

	for (cut = 0; cut <= inlen; cut++) {
		/* cut 0: one piece; else cut, then the rest at once or a
		 * byte at a time */
		out = fold_cut(in, inlen, limit, cut > 0 ? cut : inlen + 1,
		    cut == 1 ? 1 : inlen + 1, &len, &folds);
		cr_assert_eq(len, wantlen, "split at %zu: %zu bytes, want "
		    "%zu:\n%s", cut, len, wantlen, out);
		cr_assert_eq(memcmp(out, want, len), 0, "split at %zu:\n%s\n"
		    "want:\n%s", cut, out, want);
		if (cut == 0) {
			first = folds;
			check_lines(out, len, limit > 0 ? limit : len);
			cr_assert_eq(utf8_chars(out, len),
			    utf8_chars(in, inlen), "a character was cut:\n%s",
			    out);
			cr_assert_leq(folds, smtp_body_fold_bound(inlen,
			    limit));
		}
		cr_assert_eq(folds, first, "split at %zu", cut);
		free(out);
	}
	return first;
}

/* fold_expect() for NUL-terminated strings. */
static unsigned long long
fold_expect_str(const char *in, size_t limit, const char *want)
{
	return fold_expect(in, strlen(in), limit, want, strlen(want));
}

/* A string of n copies of c, then tail. Caller frees. */
static char *
run_of(char c, size_t n, const char *tail)
{
	size_t t = strlen(tail);
	char *s = malloc(n + t + 1);

	cr_assert_not_null(s);
	memset(s, c, n);
	memcpy(s + n, tail, t + 1);
	return s;
}

/* Checks that out, a folded and ended body, has no line over limit
 * characters (a stuffed dot not counted) and that removing every "\r\n "
 * break after a full line and the stuffing gives back want. */
static void
check_folded(const char *out, size_t outlen, size_t limit, const char *want)
{
	size_t i = 0, col, wn = 0, wantlen = strlen(want);
	char *back = malloc(outlen + 1);
	int cont = 0;   /* the line is a continuation: its space counts */

	cr_assert_not_null(back);
	while (i < outlen) {
		size_t start = i;

		if (out[i] == '.' && i + 1 < outlen && out[i + 1] == '.')
			i++;    /* the stuffing */
		else if (out[i] == '.' && strcmp(out + i, ".\r\n") == 0)
			break;  /* the end of data */
		for (col = cont; i < outlen && out[i] != '\r'; i++, col++)
			back[wn++] = out[i];
		cr_assert_leq(col, limit, "line at %zu has %zu characters",
		    start, col);
		cr_assert(i + 1 < outlen && out[i + 1] == '\n');
		i += 2;
		cont = col == limit && i < outlen && out[i] == ' ';
		if (cont) {
			i++;    /* a break: the line goes on */
		} else {
			memcpy(back + wn, "\r\n", 2);
			wn += 2;
		}
	}
	cr_assert_eq(wn, wantlen, "unfolded %zu bytes, want %zu", wn,
	    wantlen);
	cr_assert_eq(memcmp(back, want, wn), 0);
	free(back);
}

Test(fold, boundaries_997_998_999)
{
	char *in, *want;
	size_t n;

	for (n = 997; n <= 998; n++) {
		in = run_of('a', n, "\r\nb\r\n");
		want = run_of('a', n, "\r\nb\r\n.\r\n");
		cr_assert_eq(fold_expect_str(in, 998, want), 0);
		free(in);
		free(want);
	}
	in = run_of('a', 999, "\r\nb\r\n");
	want = run_of('a', 998, "\r\n a\r\nb\r\n.\r\n");
	cr_assert_eq(fold_expect_str(in, 998, want), 1);
	free(in);
	free(want);
}

/* Exactly 998 and the end of the body, with and without a line end. */
Test(fold, exactly_the_limit_at_the_end)
{
	char *in, *want;

	in = run_of('x', 998, "\r\n");
	want = run_of('x', 998, "\r\n.\r\n");
	cr_assert_eq(fold_expect_str(in, 998, want), 0);
	cr_assert_eq(fold_expect(in, 998, 998, want, strlen(want)), 0);
	free(in);
	free(want);
}

Test(fold, long_lines)
{
	static const size_t sizes[] = { 5000, 1000000 };
	size_t i, len;
	unsigned long long folds;
	char *in, *out;

	for (i = 0; i < sizeof(sizes) / sizeof(*sizes); i++) {
		size_t n = sizes[i];

		in = run_of('h', n, "\r\nend\r\n");
		out = fold_all(in, strlen(in), 998, 65536, &len, &folds);
		/* 998, then 997 after each space */
		cr_assert_eq(folds, (n - 998 + 996) / 997);
		cr_assert_eq(len, strlen(in) + 3 * folds + 3);
		cr_assert_leq(folds, smtp_body_fold_bound(strlen(in), 998));
		check_folded(out, len, 998, in);
		free(in);
		free(out);
	}
}

/* The same output whatever the pieces, also when one ends right at the
 * limit, between a CR and its LF, or before the byte that forces the
 * break. */
Test(fold, pieces_of_any_size)
{
	static const size_t pieces[] = { 1, 2, 3, 997, 998, 999, 1000, 4096 };
	char *in, *one, *out;
	size_t i, len, onelen;
	unsigned long long folds, onefolds;

	in = run_of('p', 2500, "\r\n.dot\r\n");
	/* "...\r" at 998, then a bare CR and a bare LF */
	memcpy(in + 997, "\r", 1);
	memcpy(in + 1995, "\n", 1);
	one = fold_all(in, strlen(in), 998, 1 << 20, &onelen, &onefolds);
	for (i = 0; i < sizeof(pieces) / sizeof(*pieces); i++) {
		out = fold_all(in, strlen(in), 998, pieces[i], &len, &folds);
		cr_assert_eq(len, onelen, "pieces of %zu", pieces[i]);
		cr_assert_eq(memcmp(out, one, len), 0, "pieces of %zu",
		    pieces[i]);
		cr_assert_eq(folds, onefolds);
		free(out);
	}
	/* 997 p CRLF, 997 p CRLF, 505 p CRLF .dot: nothing over 998 */
	cr_assert_eq(onefolds, 0);
	free(in);
	free(one);
}

/* Lines starting with '.': the stuffed dot is not counted, a break that
 * leaves a '.' at the start of the continuation stuffs nothing, and the
 * stuffing of the next real line is not disturbed. */
Test(fold, dots)
{
	char *in, *out, *want, *tail;
	size_t len;
	unsigned long long folds;

	in = run_of('.', 999, "\r\n.\r\n");
	tail = run_of('.', 998, "\r\n .\r\n..\r\n.\r\n");
	want = malloc(strlen(tail) + 2);
	want[0] = '.';
	strcpy(want + 1, tail);
	fold_expect_str(in, 998, want);
	out = fold_all(in, strlen(in), 998, 7, &len, &folds);
	check_folded(out, len, 998, in);
	free(in);
	free(out);
	free(want);
	free(tail);

	/* 998 characters then ".": the continuation " ." is no end */
	in = run_of('y', 998, ".\r\n.x");
	want = run_of('y', 998, "\r\n .\r\n..x\r\n.\r\n");
	fold_expect_str(in, 998, want);
	free(in);
	free(want);
}

/* Bare CR and bare LF end a line as CRLF does, and reset the count; a
 * NUL is dropped and is not a character. */
Test(fold, bare_line_ends_and_nul)
{
	char *in, *want;

	in = run_of('c', 999, "\ra\nb");
	want = run_of('c', 998, "\r\n c\r\na\r\nb\r\n.\r\n");
	fold_expect_str(in, 998, want);
	free(in);
	free(want);

	in = run_of('d', 999, "\n");
	in[500] = '\0';
	want = run_of('d', 998, "\r\n.\r\n");
	cr_assert_eq(fold_expect(in, 1000, 998, want, strlen(want)), 0);
	free(in);
	free(want);
}

Test(fold, limit_zero_sends_lines_as_they_are)
{
	char *in, *want;

	in = run_of('z', 5000, "\r\n");
	want = run_of('z', 5000, "\r\n.\r\n");
	cr_assert_eq(fold_expect_str(in, 0, want), 0);
	free(in);
	free(want);
}

/* Headers are broken like body lines (Postfix does the same): the
 * continuation's leading space makes it a folded header line. */
Test(fold, header_line)
{
	char *in, *want;

	in = run_of('r', 1200, "\r\n\r\nbody\r\n");
	memcpy(in, "To: ", 4);
	want = run_of('r', 1203, "\r\n\r\nbody\r\n.\r\n");
	memcpy(want, "To: ", 4);
	memcpy(want + 998, "\r\n ", 3);
	fold_expect_str(in, 998, want);
	free(in);
	free(want);
}

/* The bound MAIL's SIZE uses holds for the worst lines. */
Test(fold, bound)
{
	static const size_t lens[] = { 999, 1000, 1995, 1996, 1997, 5000,
		100000 };
	size_t i, len;
	unsigned long long folds;
	char *in, *out;

	cr_assert_eq(smtp_body_fold_bound(998, 998), 0);
	cr_assert_eq(smtp_body_fold_bound(1 << 20, 0), 0);
	for (i = 0; i < sizeof(lens) / sizeof(*lens); i++) {
		in = run_of('b', lens[i], "");
		out = fold_all(in, lens[i], 998, 65536, &len, &folds);
		cr_assert_leq(folds, smtp_body_fold_bound(lens[i], 998),
		    "%zu characters", lens[i]);
		free(in);
		free(out);
	}
}

/* ---- line folding and UTF-8 ---- */

/* Limit 10 keeps the lines readable: "abcdefgh" leaves room for 2. */
#define L10 10

struct fold_case {
	const char *in;
	const char *want;   /* the body as sent, its "." included */
	unsigned long long folds;
};

/* fold_expect() of each case with limit 10. */
static void
fold_cases(const struct fold_case *c, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		cr_assert_eq(fold_expect_str(c[i].in, L10, c[i].want),
		    c[i].folds, "case %zu", i);
}

/* A 2-byte character (é, C3 A9) over the limit moves whole; one that
 * ends on it stays. */
Test(fold_utf8, two_byte_character_straddling_the_break)
{
	static const struct fold_case cases[] = {
		{ "abcdefghi\xc3\xa9z",
		    "abcdefghi\r\n \xc3\xa9z\r\n.\r\n", 1 },
		{ "abcdefgh\xc3\xa9z",
		    "abcdefgh\xc3\xa9\r\n z\r\n.\r\n", 1 },
		{ "abcdefgh\xc3\xa9",
		    "abcdefgh\xc3\xa9\r\n.\r\n", 0 },
	};

	fold_cases(cases, sizeof(cases) / sizeof(*cases));
}

/* A 3-byte character (€, E2 82 AC) starting at each of the last two
 * columns. */
Test(fold_utf8, three_byte_character_straddling_the_break)
{
	static const struct fold_case cases[] = {
		{ "abcdefgh\xe2\x82\xacz",
		    "abcdefgh\r\n \xe2\x82\xacz\r\n.\r\n", 1 },
		{ "abcdefghi\xe2\x82\xac",
		    "abcdefghi\r\n \xe2\x82\xac\r\n.\r\n", 1 },
		{ "abcdefg\xe2\x82\xacz",
		    "abcdefg\xe2\x82\xac\r\n z\r\n.\r\n", 1 },
	};

	fold_cases(cases, sizeof(cases) / sizeof(*cases));
}

/* A 4-byte character (U+1F600, F0 9F 98 80) starting at each of the last
 * three columns, and one that ends on the limit. */
Test(fold_utf8, four_byte_character_straddling_the_break)
{
	static const struct fold_case cases[] = {
		{ "abcdefg\xf0\x9f\x98\x80z",
		    "abcdefg\r\n \xf0\x9f\x98\x80z\r\n.\r\n", 1 },
		{ "abcdefgh\xf0\x9f\x98\x80z",
		    "abcdefgh\r\n \xf0\x9f\x98\x80z\r\n.\r\n", 1 },
		{ "abcdefghi\xf0\x9f\x98\x80z",
		    "abcdefghi\r\n \xf0\x9f\x98\x80z\r\n.\r\n", 1 },
		{ "abcdef\xf0\x9f\x98\x80z",
		    "abcdef\xf0\x9f\x98\x80\r\n z\r\n.\r\n", 1 },
	};

	fold_cases(cases, sizeof(cases) / sizeof(*cases));
}

/* A line of nothing but multi-byte characters breaks only between them,
 * on every continuation, and a dot-stuffed start does not shift it. */
Test(fold_utf8, runs_of_characters)
{
	static const struct fold_case cases[] = {
		{ "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac"
		    "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac",
		    "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\r\n"
		    " \xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\r\n"
		    " \xe2\x82\xac\r\n.\r\n", 2 },
		{ ".abcdefgh\xc3\xa9",
		    "..abcdefgh\r\n \xc3\xa9\r\n.\r\n", 1 },
	};

	fold_cases(cases, sizeof(cases) / sizeof(*cases));
}

/* Bytes that are no well-formed character may be cut anywhere: a lone
 * lead byte, Latin-1, a surrogate, an overlong form, F5. A prefix that is
 * well-formed as far as the break moves with it, whatever follows. */
Test(fold_utf8, ill_formed_bytes)
{
	static const struct fold_case cases[] = {
		{ "abcdefghi\xe2z",
		    "abcdefghi\xe2\r\n z\r\n.\r\n", 1 },
		{ "abcdefghi\xe9\xe9\xe9",
		    "abcdefghi\xe9\r\n \xe9\xe9\r\n.\r\n", 1 },
		{ "abcdefgh\xed\xa0\x80",
		    "abcdefgh\xed\xa0\r\n \x80\r\n.\r\n", 1 },
		{ "abcdefghi\xc0\x80",
		    "abcdefghi\xc0\r\n \x80\r\n.\r\n", 1 },
		{ "abcdefgh\xf5\x80\x80",
		    "abcdefgh\xf5\x80\r\n \x80\r\n.\r\n", 1 },
		{ "abcdefghi\xe2\x82z",
		    "abcdefghi\r\n \xe2\x82z\r\n.\r\n", 1 },
		/* ... but bytes held for a character that the byte at
		 * the break shows to be ill-formed stay */
		{ "abcdefgh\xe2\x82z",
		    "abcdefgh\xe2\x82\r\n z\r\n.\r\n", 1 },
		/* a stray continuation byte is a character of its own */
		{ "abcdefghi\x80\x80",
		    "abcdefghi\x80\r\n \x80\r\n.\r\n", 1 },
	};

	fold_cases(cases, sizeof(cases) / sizeof(*cases));
}

/* Held bytes go out as they are at a line end or the end of the body,
 * and a dropped NUL inside a character does not split it. */
Test(fold_utf8, line_end_nul_and_finish)
{
	static const struct fold_case cases[] = {
		{ "abcdefghi\xe2\r\nx",
		    "abcdefghi\xe2\r\nx\r\n.\r\n", 0 },
		{ "abcdefghi\xe2\nx",
		    "abcdefghi\xe2\r\nx\r\n.\r\n", 0 },
		{ "abcdefg\xf0\x9f\x98",
		    "abcdefg\xf0\x9f\x98\r\n.\r\n", 0 },
	};

	fold_cases(cases, sizeof(cases) / sizeof(*cases));
	cr_assert_eq(fold_expect(
	    "abcdefgh\xe2\0\x82\0\xac", 13, L10,
	    "abcdefgh\r\n \xe2\x82\xac\r\n.\r\n", 19), 1);
}

/* At the real limit, each kind of character at each offset from ending
 * on column 998 to starting after it: it stays when it ends by the limit
 * (the "z" after it is broken off), else it starts the continuation. */
Test(fold_utf8, at_998)
{
	static const char *const chars[] = { "\xc3\xa9", "\xe2\x82\xac",
		"\xf0\x9f\x98\x80" };
	static char in[1024], want[1024];
	size_t i, before, clen;

	for (i = 0; i < 3; i++) {
		clen = strlen(chars[i]);
		for (before = 998 - clen; before <= 998; before++) {
			memset(in, 'a', before);
			memcpy(in + before, chars[i], clen);
			memcpy(in + before + clen, "z", 2);
			memcpy(want, in, before);
			if (before + clen <= 998)
				memcpy(want + before, "", 1);
			else
				memcpy(want + before, "\r\n ", 4);
			strcat(want, chars[i]);
			strcat(want, before + clen <= 998 ? "\r\n z" : "z");
			strcat(want, "\r\n.\r\n");
			cr_assert_eq(fold_expect_str(in, 998, want), 1,
			    "%zu before a %zu-byte character", before, clen);
		}
	}
}

/* The bound is reached: a first line of limit - 3 characters, then
 * continuations that each give up their last 3 columns to a 4-byte
 * character: limit - 4 characters of the message per break. */
Test(fold_utf8, bound_is_reached)
{
	static const char smile[] = "\xf0\x9f\x98\x80";
	size_t k = 50, unit = 4 + 990, n = 995 + (k - 1) * unit + 4, i;
	char *in = malloc(n + 1), *out, *p;
	unsigned long long folds;
	size_t len;

	cr_assert_not_null(in);
	memset(in, 'a', 995);
	p = in + 995;
	for (i = 0; i < k; i++) {
		memcpy(p, smile, 4);
		p += 4;
		if (i + 1 < k) {
			memset(p, 'a', 990);
			p += 990;
		}
	}
	cr_assert_eq((size_t)(p - in), n);
	out = fold_all(in, n, 998, 65536, &len, &folds);
	cr_assert_eq(folds, k);
	cr_assert_eq(folds, smtp_body_fold_bound(n, 998));
	cr_assert_eq(len, n + 3 * k + 5);
	cr_assert_eq(utf8_chars(out, len), k);
	check_lines(out, len, 998);
	free(out);
	free(in);
}

/* Under SMTP_FOLD_UTF8_MIN a continuation has no room for its space and
 * a 4-byte character: breaks stay at the limit, whatever the bytes. */
Test(fold_utf8, small_limit_breaks_at_the_limit)
{
	static const char in[] = "abc\xe2\x82\xac";
	static const char want[] = "abc\xe2\r\n \x82\xac\r\n.\r\n";
	unsigned long long folds;
	size_t len;
	char *out;

	cr_assert_eq(SMTP_FOLD_UTF8_MIN, 5);
	out = fold_all(in, strlen(in), 4, 1, &len, &folds);
	cr_assert_eq(len, strlen(want));
	cr_assert_eq(memcmp(out, want, len), 0);
	cr_assert_eq(folds, 1);
	free(out);
	/* at 5 it moves whole */
	cr_assert_eq(fold_expect_str("abcd\xe2\x82\xac", 5,
	    "abcd\r\n \xe2\x82\xac\r\n.\r\n"), 1);
}
