/* Unit tests for the SMTP syntax shared by both directions. */
#include <string.h>

#include <criterion/criterion.h>

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
