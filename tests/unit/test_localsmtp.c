/* Unit tests for the -bs dialogue sendmail holds when the daemon is down:
 * replies, what each accepted message looks like when it is delivered,
 * limits, and input split at every byte. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "localaddr.h"
#include "localsmtp.h"
#include "xmalloc.h"

/* What the delivery callback saw, and what it answers. */
static struct {
	unsigned calls;
	char sender[256];
	char rcpts[512];      /* space-separated */
	char data[4096];
	size_t len;
	const char *answer;   /* NULL: a 250 */
} got;

static void
deliver(const struct localsmtp_msg *m, char *reply, size_t replylen,
    void *arg)
{
	size_t i;

	(void)arg;
	got.calls++;
	snprintf(got.sender, sizeof(got.sender), "%s", m->sender);
	got.rcpts[0] = '\0';
	for (i = 0; i < m->nrcpts; i++) {
		if (i > 0)
			strcat(got.rcpts, " ");
		strcat(got.rcpts, m->rcpts[i]);
	}
	cr_assert_lt(m->len, sizeof(got.data));
	memcpy(got.data, m->data, m->len);
	got.data[m->len] = '\0';
	got.len = m->len;
	snprintf(reply, replylen, "%s", got.answer != NULL ? got.answer :
	    "250 2.0.0 Ok: dropped");
}

static struct localsmtp *
session(size_t max_size, const struct localaddr *la)
{
	struct localsmtp_params p = { "h.example", max_size, 3, la, deliver,
		NULL };

	memset(&got, 0, sizeof(got));
	return localsmtp_new(&p);
}

/* Feeds input in pieces of step bytes (0: all at once) and returns the
 * output since the last call, as a malloc'd string; *ended: the return
 * value of the last localsmtp_input(). */
static char *
feed(struct localsmtp *s, const char *in, size_t step, int *ended)
{
	size_t len = strlen(in), off, n, outlen;
	const char *out;
	char *copy;
	int e = 0;

	for (off = 0; off < len; off += n) {
		n = step == 0 || len - off < step ? len - off : step;
		e = localsmtp_input(s, in + off, n);
	}
	if (ended != NULL)
		*ended = e;
	out = localsmtp_output(s, &outlen);
	cr_assert_eq(strlen(out), outlen);
	copy = xstrdup(out);
	localsmtp_output_clear(s);
	return copy;
}

static const char *const session_in =
    "EHLO client.test\r\n"
    "MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\n"
    "RCPT TO:<b@example.net>\r\n"
    "RCPT TO:<c@example.net>\r\n"
    "DATA\r\n"
    "Subject: t\r\n"
    "\r\n"
    "..leading dot\r\n"
    "bare lf\n"
    ".\n"
    "\r\n"
    ".\r\n"
    "QUIT\r\n";

static const char *const session_out =
    "220 h.example ESMTP smarthost-sendmail: smarthostd is not running, "
    "mail goes to the maildrop\r\n"
    "250-h.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000\r\n"
    "250 ENHANCEDSTATUSCODES\r\n"
    "250 2.1.0 Ok\r\n"
    "250 2.1.5 Ok\r\n"
    "250 2.1.5 Ok\r\n"
    "354 End data with <CR><LF>.<CR><LF>\r\n"
    "250 2.0.0 Ok: dropped\r\n"
    "221 2.0.0 Bye\r\n";

/* ".\n" after a bare LF is data (as in the daemon: SMTP smuggling). */
static const char *const session_data =
    "Subject: t\r\n\r\n.leading dot\r\nbare lf\r\n.\r\n\r\n";

static void
check_session(size_t step)
{
	struct localsmtp *s = session(1000, NULL);
	char *out;
	int ended;

	out = feed(s, session_in, step, &ended);
	cr_assert_str_eq(out, session_out, "step %zu: %s", step, out);
	cr_assert_eq(ended, 1);
	cr_assert_eq(got.calls, 1);
	cr_assert_str_eq(got.sender, "a@example.org");
	cr_assert_str_eq(got.rcpts, "b@example.net c@example.net");
	cr_assert_str_eq(got.data, session_data, "step %zu", step);
	cr_assert(localsmtp_quit_seen(s));
	cr_assert_eq(localsmtp_delivered(s), 1);
	free(out);
	localsmtp_free(s);
}

Test(localsmtp, a_session_in_one_piece_and_byte_by_byte)
{
	check_session(0);
	check_session(1);
	check_session(7);
}

Test(localsmtp, two_messages_pipelined_and_a_refusal_passed_on)
{
	struct localsmtp *s = session(1000, NULL);
	char *out;

	free(feed(s, "HELO x\r\n", 0, NULL));
	got.answer = "451 4.3.0 maildrop full";
	out = feed(s, "MAIL FROM:<>\r\nRCPT TO:<root@example.net>\r\nDATA\r\n"
	    "one\r\n.\r\nMAIL FROM:<cron>\r\nRCPT TO:<x@example.net>\r\n"
	    "DATA\r\ntwo\r\n.\r\n", 0, NULL);
	cr_assert_str_eq(out, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
	    "354 End data with <CR><LF>.<CR><LF>\r\n451 4.3.0 maildrop full\r\n"
	    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
	    "354 End data with <CR><LF>.<CR><LF>\r\n"
	    "451 4.3.0 maildrop full\r\n");
	cr_assert_eq(got.calls, 2);
	cr_assert_str_eq(got.sender, "cron");
	cr_assert_str_eq(got.data, "two\r\n");
	cr_assert_eq(localsmtp_delivered(s), 0);
	cr_assert(!localsmtp_quit_seen(s));
	free(out);
	localsmtp_free(s);
}

Test(localsmtp, order_syntax_and_parameters)
{
	struct localsmtp *s = session(1000, NULL);
	char *out;

	free(feed(s, "", 0, NULL));	/* the greeting */
	out = feed(s, "MAIL FROM:<a@example.org>\r\nHELO\r\nHELO x\r\n"
	    "MAIL FROM:<a@example.org> SIZE=1\r\n"
	    "RCPT TO:<b@example.net>\r\nDATA\r\n"
	    "EHLO x\r\nMAIL FROM:<a@example.org> SIZE=1001\r\n"
	    "MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n"
	    "MAIL FROM:<a@example.org> SMTPUTF8\r\n"
	    "MAIL FROM:<a b@example.org>\r\n"
	    "MAIL FROM:<a@example.org>\r\nMAIL FROM:<a@example.org>\r\n"
	    "DATA\r\nRCPT TO:<b@example.net> NOTIFY=NEVER\r\n"
	    "RCPT TO:<x\xc3\xa9@example.net>\r\n"
	    "AUTH PLAIN\r\nSTARTTLS\r\nBDAT 1 LAST\r\nXYZZY\r\n"
	    "NOOP\r\nVRFY root\r\nRSET\r\nRCPT TO:<b@example.net>\r\n", 0,
	    NULL);
	cr_assert_str_eq(out,
	    "503 5.5.1 Send HELO or EHLO first\r\n"
	    "501 5.5.4 Syntax: HELO hostname\r\n"
	    "250 h.example\r\n"
	    "555 5.5.4 MAIL parameters need EHLO\r\n"
	    "503 5.5.1 Need MAIL before RCPT\r\n"
	    "503 5.5.1 Need MAIL and RCPT before DATA\r\n"
	    "250-h.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
	    "250-SIZE 1000\r\n250 ENHANCEDSTATUSCODES\r\n"
	    "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
	    "501 5.5.4 Unsupported BODY type\r\n"
	    "555 5.5.4 Unsupported parameter SMTPUTF8\r\n"
	    "501 5.1.7 Bad sender address syntax\r\n"
	    "250 2.1.0 Ok\r\n"
	    "503 5.5.1 Nested MAIL command\r\n"
	    "503 5.5.1 No valid recipients\r\n"
	    "555 5.5.4 RCPT parameters not supported\r\n"
	    "501 5.1.3 Bad recipient address syntax\r\n"
	    "502 5.5.1 AUTH not available while smarthostd is not running\r\n"
	    "502 5.5.1 STARTTLS not available while smarthostd is not "
	    "running\r\n"
	    "502 5.5.1 BDAT not available while smarthostd is not running\r\n"
	    "500 5.5.2 Command not recognized\r\n"
	    "250 2.0.0 Ok\r\n"
	    "252 2.5.0 Cannot VRFY; send some mail and see\r\n"
	    "250 2.0.0 Ok\r\n"
	    "503 5.5.1 Need MAIL before RCPT\r\n");
	cr_assert_eq(got.calls, 0);
	free(out);
	localsmtp_free(s);
}

Test(localsmtp, too_many_recipients_and_errors)
{
	struct localsmtp *s = session(1000, NULL);
	char in[2048] = "", *out;
	const char *tail;
	int ended, i;

	free(feed(s, "EHLO x\r\nMAIL FROM:<a@example.org>\r\n", 0, NULL));
	out = feed(s, "RCPT TO:<r1@example.net>\r\nRCPT TO:<r2@example.net>\r\n"
	    "RCPT TO:<r3@example.net>\r\nRCPT TO:<r4@example.net>\r\n", 0,
	    NULL);
	cr_assert_str_eq(out, "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
	    "452 4.5.3 Too many recipients\r\n");
	free(out);
	for (i = 0; i < LOCALSMTP_MAX_ERRORS + 5; i++)
		strcat(in, "BOGUS\r\n");
	out = feed(s, in, 0, &ended);
	cr_assert_eq(ended, 1);
	tail = "500 5.5.2 Command not recognized\r\n"
	    "421 4.7.0 Too many errors, closing the session\r\n";
	cr_assert_str_eq(out + strlen(out) - strlen(tail), tail);
	cr_assert_eq(strstr(out, "421"), strstr(out, tail) + 34, "%s", out);
	free(out);
	/* Ended: the rest is ignored. */
	out = feed(s, "QUIT\r\n", 0, &ended);
	cr_assert_str_eq(out, "");
	cr_assert(!localsmtp_quit_seen(s));
	free(out);
	localsmtp_free(s);
}

Test(localsmtp, oversize_message_nul_and_long_lines)
{
	struct localsmtp *s = session(64, NULL);
	char line[LOCALSMTP_LINE_MAX + 100], *out;
	int ended;

	free(feed(s, "EHLO x\r\n", 0, NULL));
	/* a message over max_size, and one line over it on its own */
	out = feed(s, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
	    "DATA\r\n0123456789012345678901234567890123456789\r\n"
	    "0123456789012345678901234567890123456789\r\n.\r\n", 0, NULL);
	cr_assert_not_null(strstr(out, "354 End data with <CR><LF>.<CR><LF>\r\n"
	    "552 5.3.4 Message size exceeds fixed maximum message size\r\n"));
	free(out);
	memset(line, 'x', sizeof(line) - 1);
	line[sizeof(line) - 1] = '\0';
	free(feed(s, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
	    "DATA\r\n", 0, NULL));
	free(feed(s, line, 0, NULL));
	out = feed(s, "\r\n.\r\n", 0, NULL);
	cr_assert_str_eq(out, "552 5.3.4 Message size exceeds fixed maximum "
	    "message size\r\n");
	free(out);
	/* NUL in the data */
	free(feed(s, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
	    "DATA\r\n", 0, NULL));
	cr_assert_eq(localsmtp_input(s, "a\0b\r\n.\r\n", 8), 0);
	out = feed(s, "", 0, NULL);
	cr_assert_str_eq(out, "554 5.6.0 NUL bytes are not allowed in a "
	    "message\r\n");
	free(out);
	/* an overlong command line, in pieces */
	free(feed(s, line, 0, NULL));
	out = feed(s, line, 0, NULL);
	cr_assert_str_eq(out, "");
	free(out);
	out = feed(s, "\r\nQUIT\r\n", 0, &ended);
	cr_assert_str_eq(out, "500 5.5.2 Line too long\r\n221 2.0.0 Bye\r\n");
	cr_assert_eq(ended, 1);
	cr_assert_eq(got.calls, 0);
	free(out);
	localsmtp_free(s);
}

Test(localsmtp, local_recipients_checked_as_the_daemon_does)
{
	char path[] = "/tmp/test_localsmtp.XXXXXX", err[256];
	struct localaddr_params p;
	struct localaddr *la;
	struct localsmtp *s;
	char *out;
	FILE *f;
	int fd;

	fd = mkstemp(path);
	cr_assert_neq(fd, -1);
	f = fdopen(fd, "w");
	fputs("root: admin@example.com\n", f);
	fclose(f);
	memset(&p, 0, sizeof(p));
	p.hostname = "h.example";
	p.mail_domain = "example.com";
	p.aliases_file = path;
	la = localaddr_new(&p, err, sizeof(err));
	unlink(path);
	cr_assert_not_null(la, "%s", err);
	s = session(1000, la);
	out = feed(s, "EHLO x\r\nMAIL FROM:<cron>\r\nRCPT TO:<root>\r\n"
	    "RCPT TO:<bob@localhost>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
	    "x\r\n.\r\n", 0, NULL);
	cr_assert_not_null(strstr(out, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
	    "550 5.1.1 <bob@localhost>: no such local user bob"), "%s", out);
	/* The daemon expands the alias when it imports the message. */
	cr_assert_str_eq(got.rcpts, "root b@example.net");
	cr_assert_str_eq(got.sender, "cron");
	free(out);
	localsmtp_free(s);
	localaddr_free(la);
}
