/*
 * dsn.c: the composed report (structure, fields, CRLF only, headers of the
 * original), the header-section cut, and the rule that notifications never
 * go to the null sender or about a notification.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "dsn.h"
#include "envelope.h"
#include "message.h"
#include "xmalloc.h"

static struct envelope *
orig_new(const char *sender, unsigned flags)
{
	struct envelope *env = envelope_new();

	snprintf(env->id, sizeof(env->id), "0CB24D1E6EE1F000");
	free(env->sender);
	env->sender = xstrdup(sender);
	envelope_add_rcpt(env, "good@example.net");
	envelope_add_rcpt(env, "bad@example.net");
	env->flags = flags;
	env->created = 1700000000;
	return env;
}

/* Every CR is followed by LF and every LF preceded by CR. */
static int
crlf_only(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		if (s[i] == '\r' && (i + 1 == len || s[i + 1] != '\n'))
			return 0;
		if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
			return 0;
	}
	return 1;
}

static size_t
count(const char *hay, const char *needle)
{
	size_t n = 0;

	for (; (hay = strstr(hay, needle)) != NULL; hay += strlen(needle))
		n++;
	return n;
}

/* The value of boundary="..." in the top-level Content-Type. */
static void
boundary_of(const char *msg, char *buf, size_t len)
{
	const char *p = strstr(msg, "boundary=\""), *e;

	cr_assert_not_null(p);
	p += strlen("boundary=\"");
	e = strchr(p, '"');
	cr_assert_not_null(e);
	cr_assert_lt((size_t)(e - p), len);
	memcpy(buf, p, (size_t)(e - p));
	buf[e - p] = '\0';
}

static const struct dsn_rcpt failed[] = {
	{ "bad@example.net", "5.1.1",
	    "550 5.1.1 <bad@example.net>: Recipient address rejected",
	    "mx.example.net", NULL, DSN_ACTION_FAILED, 0 },
	{ "slow@example.net", "4.4.1", NULL, NULL,
	    "delivery time expired (last error: connect refused)",
	    DSN_ACTION_FAILED, 0 },
};

static char *
compose(const struct envelope *orig, const char *headers, size_t *len)
{
	return dsn_compose(orig, failed, 2, headers, strlen(headers),
	    "relay.test.example", "0CB24D1E7FE1F000", 1700000100, len);
}

Test(dsn, top_level_headers)
{
	struct envelope *orig = orig_new("alice@example.org", 0);
	char *msg, *end;
	size_t len;

	msg = compose(orig, "Subject: hello\r\nFrom: alice@example.org\r\n",
	    &len);
	cr_assert_eq(strlen(msg), len);
	cr_assert(strncmp(msg, "From: MAILER-DAEMON@relay.test.example",
	    38) == 0);
	end = strstr(msg, "\r\n\r\n");
	cr_assert_not_null(end);
	*end = '\0';	/* look at the header section only */
	cr_assert_not_null(strstr(msg, "\r\nTo: <alice@example.org>\r\n"));
	cr_assert_not_null(strstr(msg,
	    "\r\nSubject: Undelivered Mail Returned to Sender\r\n"));
	cr_assert_not_null(strstr(msg, "\r\nDate: "));
	cr_assert_not_null(strstr(msg, "\r\nMessage-ID: <0CB24D1E7FE1F000."));
	cr_assert_not_null(strstr(msg, "\r\nAuto-Submitted: auto-replied\r\n"));
	cr_assert_not_null(strstr(msg, "\r\nMIME-Version: 1.0\r\n"));
	cr_assert_not_null(strstr(msg, "\r\nContent-Type: multipart/report; "
	    "report-type=delivery-status;\r\n\tboundary=\""));
	free(msg);
	envelope_free(orig);
}

Test(dsn, three_parts_and_the_report_fields)
{
	struct envelope *orig = orig_new("alice@example.org", 0);
	char *msg, b[256], delim[300], *p, *status, *hdrs;
	size_t len;

	msg = compose(orig, "Subject: hello\r\nX-Marker: m1\r\n", &len);
	boundary_of(msg, b, sizeof(b));
	snprintf(delim, sizeof(delim), "\r\n--%s\r\n", b);
	cr_assert_eq(count(msg, delim), 3, "three body parts");
	snprintf(delim, sizeof(delim), "\r\n--%s--\r\n", b);
	p = strstr(msg, delim);
	cr_assert_not_null(p, "closing delimiter");
	cr_assert_eq((size_t)(p - msg) + strlen(delim), len, "nothing after");

	/* The human-readable part names the failures. */
	cr_assert_not_null(strstr(msg, "Content-Type: text/plain; "
	    "charset=us-ascii\r\n"));
	cr_assert_not_null(strstr(msg, "<bad@example.net>: host "
	    "mx.example.net said: 550 5.1.1"));

	status = strstr(msg, "Content-Type: message/delivery-status\r\n\r\n");
	cr_assert_not_null(status);
	hdrs = strstr(msg, "Content-Type: text/rfc822-headers\r\n");
	cr_assert_not_null(hdrs);
	cr_assert_gt(hdrs, status, "headers come last");
	*hdrs = '\0';	/* from here on, search the status part only */
	cr_assert_not_null(strstr(status,
	    "\r\nReporting-MTA: dns; relay.test.example\r\n"));
	cr_assert_not_null(strstr(status, "\r\nArrival-Date: "));
	cr_assert_not_null(strstr(status, "\r\n\r\nFinal-Recipient: rfc822; "
	    "bad@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
	cr_assert_not_null(strstr(status,
	    "\r\nRemote-MTA: dns; mx.example.net\r\n"));
	cr_assert_not_null(strstr(status, "\r\nDiagnostic-Code: smtp; 550 "
	    "5.1.1 <bad@example.net>: Recipient address rejected\r\n"));
	cr_assert_not_null(strstr(status, "\r\n\r\nFinal-Recipient: rfc822; "
	    "slow@example.net\r\nAction: failed\r\nStatus: 4.4.1\r\n"));
	/* Our own reason is not a server's diagnostic. */
	cr_assert_eq(count(status, "Diagnostic-Code:"), 1);
	cr_assert_eq(count(status, "Remote-MTA:"), 1);
	cr_assert_null(strstr(status, "good@example.net"),
	    "only failed recipients are reported");
	free(msg);
	envelope_free(orig);
}

Test(dsn, original_headers_returned_with_crlf)
{
	struct envelope *orig = orig_new("alice@example.org", 0);
	char *msg, *p;
	size_t len;

	/* Bare LF and a missing final line end come out as CRLF. */
	msg = compose(orig, "Subject: hello\nX-Marker: m1\nX-Last: yes", &len);
	cr_assert(crlf_only(msg, len));
	p = strstr(msg, "Content-Type: text/rfc822-headers\r\n\r\n");
	cr_assert_not_null(p);
	cr_assert_not_null(strstr(p, "\r\n\r\nSubject: hello\r\nX-Marker: m1"
	    "\r\nX-Last: yes\r\n"));
	free(msg);
	envelope_free(orig);
}

Test(dsn, crlf_only_and_no_header_injection)
{
	struct envelope *orig = orig_new("alice@example.org", 0);
	struct dsn_rcpt evil = { "bad@example.net", "5.0.0",
	    "550 no\r\nBcc: victim@example.org\r\n\r\nbody", "mx\r\nX: y",
	    NULL, DSN_ACTION_FAILED, 0 };
	char *msg;
	size_t len;

	msg = dsn_compose(orig, &evil, 1, "A: b\r\n", 6, "relay.test.example",
	    "0CB24D1E7FE1F000", 1700000100, &len);
	cr_assert(crlf_only(msg, len));
	cr_assert_null(strstr(msg, "\nBcc:"));
	cr_assert_null(strstr(msg, "\nX: y"));
	cr_assert_not_null(strstr(msg, "Diagnostic-Code: smtp; 550 no  Bcc: "));
	free(msg);
	envelope_free(orig);
}

Test(dsn, eight_bit_headers_are_declared)
{
	struct envelope *orig = orig_new("alice@example.org", 0);
	char *msg;
	size_t len;

	msg = compose(orig, "Subject: gr\xc3\xbc\xc3\x9f" "e\r\n", &len);
	cr_assert_not_null(strstr(msg, "Content-Type: text/rfc822-headers\r\n"
	    "Content-Transfer-Encoding: 8bit\r\n"));
	free(msg);
	envelope_free(orig);
}

Test(dsn, header_length)
{
	const char *crlf = "A: b\r\nC: d\r\n\r\nbody\r\n";
	const char *lf = "A: b\nC: d\n\nbody\n";
	const char *none = "A: b\r\nC: d\r\n";
	char *big;
	size_t n;

	cr_assert_eq(dsn_header_length(crlf, strlen(crlf)), 12);
	cr_assert_eq(dsn_header_length(lf, strlen(lf)), 10);
	cr_assert_eq(dsn_header_length(none, strlen(none)), strlen(none));
	cr_assert_eq(dsn_header_length("\r\nbody", 6), 0);

	/* 100 KB of headers: cut at a line end within the limit. */
	big = xmalloc(100 * 1024);
	for (n = 0; n + 10 <= 100 * 1024; n += 10)
		memcpy(big + n, "X: 12345\r\n", 10);
	n = dsn_header_length(big, n);
	cr_assert_leq(n, DSN_HEADERS_MAX);
	cr_assert_gt(n, DSN_HEADERS_MAX - 10);
	cr_assert_eq(big[n - 1], '\n');
	free(big);
}

Test(dsn, never_bounce_null_sender_or_bounces)
{
	struct envelope *env;

	env = orig_new("alice@example.org", 0);
	cr_assert_eq(dsn_wanted(env), 1);
	envelope_free(env);

	env = orig_new("", 0);
	cr_assert_eq(dsn_wanted(env), 0, "null sender");
	envelope_free(env);

	env = orig_new("alice@example.org", ENVELOPE_BOUNCE);
	cr_assert_eq(dsn_wanted(env), 0, "a notification we made");
	envelope_free(env);
}

Test(dsn, notification_envelope_cannot_loop)
{
	struct envelope *orig = orig_new("alice@example.org", 0), *env;

	orig->relay = xstrdup("upstream");
	env = dsn_envelope(orig, 1700000100);
	cr_assert_str_eq(env->sender, "");
	cr_assert_eq(env->nrcpts, 1);
	cr_assert_str_eq(env->rcpts[0].addr, "alice@example.org");
	cr_assert_eq(env->rcpts[0].status, RCPT_PENDING);
	cr_assert(env->flags & ENVELOPE_BOUNCE);
	cr_assert_str_eq(env->relay, "upstream");
	cr_assert_eq(env->created, 1700000100);
	cr_assert_eq(env->next_try, 0);
	/* And it would never be bounced in turn. */
	cr_assert_eq(dsn_wanted(env), 0);
	envelope_free(env);
	envelope_free(orig);
}

Test(dsn, server_reply_detection)
{
	cr_assert(dsn_is_server_reply("550 5.1.1 no"));
	cr_assert(dsn_is_server_reply("421"));
	cr_assert_not(dsn_is_server_reply("connect to x: refused"));
	cr_assert_not(dsn_is_server_reply("TLS: handshake failed"));
	cr_assert_not(dsn_is_server_reply("5501 x"));
	cr_assert_not(dsn_is_server_reply(NULL));
}

Test(dsn, delay_notification_says_delayed_with_retry_until)
{
	struct envelope *orig = orig_new("alice@example.org", 0);
	struct dsn_rcpt slow[] = {
		{ "slow@example.net", "4.4.1", NULL, NULL,
		    "connect to 127.0.0.1: Connection refused",
		    DSN_ACTION_DELAYED, 1700000000 + 5 * 86400 },
		{ "busy@example.net", "", "451 4.3.0 try later",
		    "mx.example.net", NULL, DSN_ACTION_DELAYED,
		    1700000000 + 5 * 86400 },
	};
	char *msg, date[64], want[128];
	size_t len;

	msg = dsn_compose(orig, slow, 2, "Subject: hi\r\n", 13,
	    "relay.test.example", "0CB24D1E7FE1F000", 1700000000 + 4 * 3600,
	    &len);
	cr_assert(crlf_only(msg, len));
	cr_assert_not_null(strstr(msg,
	    "Subject: Delayed Mail (still being retried)\r\n"));
	cr_assert_null(strstr(msg, "Undelivered Mail"));
	cr_assert_not_null(strstr(msg, "THIS IS A WARNING ONLY"));
	cr_assert_not_null(strstr(msg, "delivered for 4 hour(s) 0 minute(s)"));
	cr_assert_eq(count(msg, "Action: delayed\r\n"), 2);
	cr_assert_null(strstr(msg, "Action: failed"));
	cr_assert_not_null(strstr(msg, "Status: 4.4.1\r\n"));
	/* A recipient without an enhanced code still gets a 4.x.x. */
	cr_assert_not_null(strstr(msg, "Status: 4.0.0\r\n"));
	cr_assert_not_null(strstr(msg,
	    "Diagnostic-Code: smtp; 451 4.3.0 try later\r\n"));
	message_date(1700000000 + 5 * 86400, date, sizeof(date));
	snprintf(want, sizeof(want), "Will-Retry-Until: %s\r\n", date);
	cr_assert_eq(count(msg, want), 2);
	cr_assert_not_null(strstr(msg,
	    "Content-Description: Delayed Message Headers\r\n"));
	free(msg);
	envelope_free(orig);
}

Test(dsn, failed_report_is_unchanged_by_delay_fields)
{
	struct envelope *orig = orig_new("alice@example.org", 0);
	char *msg;
	size_t len;

	msg = compose(orig, "Subject: hi\r\n", &len);
	cr_assert_null(strstr(msg, "Action: delayed"));
	cr_assert_null(strstr(msg, "Will-Retry-Until"));
	cr_assert_eq(count(msg, "Action: failed\r\n"), 2);
	cr_assert_not_null(strstr(msg,
	    "Subject: Undelivered Mail Returned to Sender\r\n"));
	free(msg);
	envelope_free(orig);
}
