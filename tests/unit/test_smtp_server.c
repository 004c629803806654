/*
 * Protocol tests for the inbound SMTP server: a real smtp_server session
 * over a socketpair, a scripted client on the other end driven from the
 * test, and a real queue in a temporary spool. Every wait is bounded.
 */
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <ifaddrs.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "envelope.h"
#include "listener.h"
#include "log.h"
#include "queue.h"
#include "smtp_server.h"

#define WAIT_SECS 5.0
#define MAXQUEUED 16

/* The default limits for these tests; each test may override some. */
#define LIMITS                                                          \
	"max_line = 512; max_message_size = 2048; max_recipients = 3; " \
	"max_errors = 3; max_sessions = 4; idle_timeout = 30; "         \
	"max_sessions_per_client = 4;"

static struct harness {
	struct event_base *base;
	struct config *cfg;
	struct queue *q;
	struct smtp_server *srv;
	int cfd;               /* the client's end */
	struct evbuffer *in;   /* bytes from the server not yet consumed */
	struct event *rev;
	int eof;
	struct envelope *queued[MAXQUEUED];
	size_t nqueued;
	int shutdown_done;
	char spool[64];
} h;

static void
queued_cb(struct envelope *env, void *arg)
{
	cr_assert_lt(h.nqueued, MAXQUEUED);
	h.queued[h.nqueued++] = env;
}

static void
client_read_cb(evutil_socket_t fd, short what, void *arg)
{
	char buf[8192];
	ssize_t n;

	for (;;) {
		n = read(fd, buf, sizeof(buf));
		if (n > 0) {
			evbuffer_add(h.in, buf, (size_t)n);
			continue;
		}
		if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			h.eof = 1;
			event_del(h.rev);
		}
		return;
	}
}

static double
now(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Runs the loop until done(arg) or secs passed; returns done(arg). */
static int
run_until(int (*done)(void *), void *arg, double secs)
{
	return fixture_run_until(h.base, done, arg, secs, 20);
}

/* Takes one complete reply (lines joined with '\n') from h.in. */
static char *
reply_take(void)
{
	size_t len = evbuffer_get_length(h.in), pos = 0, out = 0;
	const char *p;
	char *r;

	if (len == 0)
		return NULL;
	p = (const char *)evbuffer_pullup(h.in, -1);
	r = malloc(len + 1);
	cr_assert_not_null(r);
	while (pos < len) {
		const char *crlf = memmem(p + pos, len - pos, "\r\n", 2);
		size_t n;

		if (crlf == NULL)
			break;
		n = (size_t)(crlf - (p + pos));
		if (out > 0)
			r[out++] = '\n';
		memcpy(r + out, p + pos, n);
		out += n;
		pos += n + 2;
		if (n < 4 || p[pos - n - 2 + 3] == ' ') {
			r[out] = '\0';
			evbuffer_drain(h.in, pos);
			return r;
		}
	}
	free(r);
	return NULL;
}

static int
reply_ready(void *arg)
{
	char **r = arg;

	*r = reply_take();
	return *r != NULL || h.eof;
}

/* The next reply, or NULL if none came within WAIT_SECS. */
static char *
reply_next(void)
{
	char *r = NULL;

	run_until(reply_ready, &r, WAIT_SECS);
	return r;
}

static void
expect(const char *prefix)
{
	char *r = reply_next();

	cr_assert_not_null(r, "no reply, expected \"%s\"", prefix);
	cr_assert(strncmp(r, prefix, strlen(prefix)) == 0,
	    "expected \"%s\", got \"%s\"", prefix, r);
	free(r);
}

/* Expects "250 2.0.0 Ok: queued as ID" and copies the id. */
static void
expect_queued(char id[ENVELOPE_ID_MAX])
{
	static const char prefix[] = "250 2.0.0 Ok: queued as ";
	char *r = reply_next();

	cr_assert_not_null(r, "no reply to the end of data");
	cr_assert(strncmp(r, prefix, sizeof(prefix) - 1) == 0,
	    "expected queued, got \"%s\"", r);
	cr_assert_eq(strlen(r + sizeof(prefix) - 1), 16, "id in \"%s\"", r);
	cr_assert_eq(strspn(r + sizeof(prefix) - 1, "0123456789ABCDEF"), 16,
	    "id in \"%s\"", r);
	snprintf(id, ENVELOPE_ID_MAX, "%s", r + sizeof(prefix) - 1);
	free(r);
}

static void
send_buf(const char *buf, size_t len)
{
	double deadline = now() + WAIT_SECS;
	ssize_t n;

	while (len > 0) {
		n = send(h.cfd, buf, len, MSG_NOSIGNAL);
		if (n > 0) {
			buf += n;
			len -= (size_t)n;
			continue;
		}
		cr_assert(n == -1 && errno == EAGAIN, "write: %s",
		    strerror(errno));
		cr_assert_lt(now(), deadline, "server does not read");
		/* Let the server drain its end. */
		event_base_loop(h.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	}
}

static void
send_str(const char *s)
{
	send_buf(s, strlen(s));
}

static int
is_eof(void *arg)
{
	return h.eof;
}

static int
nqueued_is(void *arg)
{
	return h.nqueued == *(size_t *)arg;
}

/* A client for srv over a new socketpair; returns the client end. */
static int
connect_pair(void)
{
	struct sockaddr_un sun;
	int sv[2];

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC |
	    SOCK_NONBLOCK, 0, sv), 0);
	smtp_server_accept(h.srv, sv[1], (struct sockaddr *)&sun,
	    sizeof(sun), NULL);
	return sv[0];
}

/* More top-level settings for the next setup_with(). */
static char extra_conf[1024];

static void
setup_with(const char *limits)
{
	struct smtp_server_params params;
	char err[512], text[2048];

	log_init("test_smtp_server", 0);
	signal(SIGPIPE, SIG_IGN); /* as the daemon does */
	cr_assert_eq(evthread_use_pthreads(), 0);
	memset(&h, 0, sizeof(h));
	h.base = event_base_new();
	cr_assert_not_null(h.base);
	snprintf(h.spool, sizeof(h.spool), "/tmp/test_smtp_server.XXXXXX");
	cr_assert_not_null(mkdtemp(h.spool));
	snprintf(text, sizeof(text),
	    "hostname = \"mx.test\";\n"
	    "spool = \"%s\";\n"
	    "limits = { %s };\n"
	    "relays = { cap = { type = \"maildir\"; path = \"%s/md\"; }; };\n"
	    "%s",
	    h.spool, limits, h.spool, extra_conf);
	h.cfg = config_parse_string(text, "test.conf", err, sizeof(err));
	cr_assert_not_null(h.cfg, "config: %s", err);
	h.q = queue_open(h.base, h.spool, SPOOL_SYNC_FSYNC, 0, err,
	    sizeof(err));
	cr_assert_not_null(h.q, "queue_open: %s", err);
	memset(&params, 0, sizeof(params));
	params.cfg = h.cfg;
	params.queue = h.q;
	params.queued = queued_cb;
	h.srv = smtp_server_new(h.base, &params);
	cr_assert_not_null(h.srv);
	h.in = evbuffer_new();
	h.cfd = connect_pair();
	h.rev = event_new(h.base, h.cfd, EV_READ | EV_PERSIST, client_read_cb,
	    NULL);
	event_add(h.rev, NULL);
	expect("220 mx.test ESMTP");
}

static void
setup(void)
{
	setup_with(LIMITS);
}

static void
teardown(void)
{
	size_t i;

	smtp_server_free(h.srv);
	queue_close(h.q);
	for (i = 0; i < h.nqueued; i++)
		envelope_free(h.queued[i]);
	if (h.rev != NULL)
		event_free(h.rev);
	evbuffer_free(h.in);
	if (h.cfd != -1)
		close(h.cfd);
	config_free(h.cfg);
	event_base_free(h.base);
	fixture_rmtree(h.spool);
}

/* Reads the stored body of a queued envelope (NUL-terminated). */
static char *
body_read(const struct envelope *env)
{
	char *buf;
	ssize_t n;
	int fd;

	fd = queue_body_open(h.q, env);
	cr_assert_neq(fd, -1, "queue_body_open: %s", strerror(errno));
	buf = malloc((size_t)env->body_size + 1);
	cr_assert_not_null(buf);
	n = pread(fd, buf, (size_t)env->body_size, env->body_offset);
	cr_assert_eq(n, env->body_size);
	buf[n] = '\0';
	close(fd);
	return buf;
}

/* The body after our Received: header (which ends at the first CRLF not
 * followed by a tab). */
static const char *
after_received(const char *body)
{
	const char *p = body;

	cr_assert(strncmp(body, "Received: ", 10) == 0, "body: %s", body);
	while ((p = strstr(p, "\r\n")) != NULL) {
		p += 2;
		if (*p != '\t')
			return p;
	}
	cr_assert_fail("unterminated Received: header");
	return NULL;
}

static void
ehlo(void)
{
	send_str("EHLO client.test\r\n");
	expect("250-mx.test"); /* the whole multi-line reply */
}

/* MAIL, RCPT and DATA, each accepted. */
static void
data_begin(void)
{
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n"
	    "DATA\r\n");
	expect("250");
	expect("250");
	expect("354 ");
}

TestSuite(smtp_server, .init = setup, .fini = teardown, .timeout = 60);

Test(smtp_server, ehlo_keywords)
{
	char *r;

	send_str("EHLO client.test\r\n");
	r = reply_next();
	cr_assert_not_null(r);
	cr_assert(strncmp(r, "250-mx.test", 11) == 0, "%s", r);
	cr_assert_not_null(strstr(r, "\n250-PIPELINING\n"), "%s", r);
	cr_assert_not_null(strstr(r, "\n250-SIZE 2048\n"), "%s", r);
	cr_assert_not_null(strstr(r, "\n250-8BITMIME\n"), "%s", r);
	cr_assert_not_null(strstr(r, "\n250-SMTPUTF8\n"), "%s", r);
	cr_assert_not_null(strstr(r, "\n250-ENHANCEDSTATUSCODES\n"), "%s", r);
	cr_assert_not_null(strstr(r, "\n250 CHUNKING"), "%s", r);
	cr_assert_null(strstr(r, "STARTTLS"), "%s", r);
	free(r);
	send_str("STARTTLS\r\n");
	expect("502 5.5.1");
	send_str("VRFY someone\r\n");
	expect("252 2.5.2");
	send_str("HELP\r\n");
	expect("214");
	send_str("NOOP\r\n");
	expect("250 2.0.0");
	send_str("XYZZY\r\n");
	expect("500 5.5.1");
	send_str("QUIT\r\n");
	expect("221 2.0.0");
	cr_assert(run_until(is_eof, NULL, WAIT_SECS), "not closed after QUIT");
}

Test(smtp_server, full_transaction)
{
	char id[ENVELOPE_ID_MAX], expect_hdr[256], *body;
	struct envelope *env;
	size_t one = 1;

	ehlo();
	send_str("MAIL FROM:<alice@client.test> BODY=8BITMIME SIZE=100\r\n");
	expect("250 2.1.0");
	send_str("RCPT TO:<bob@example.org>\r\n");
	expect("250 2.1.5");
	send_str("DATA\r\n");
	expect("354 ");
	send_str("Subject: hi\r\n\r\nHello Bob.\r\n.\r\n");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	env = h.queued[0];
	cr_assert_str_eq(env->id, id);
	cr_assert_str_eq(env->sender, "alice@client.test");
	cr_assert_eq(env->nrcpts, 1);
	cr_assert_str_eq(env->rcpts[0].addr, "bob@example.org");
	cr_assert(env->flags & ENVELOPE_8BITMIME);
	cr_assert_not_null(env->client);
	snprintf(expect_hdr, sizeof(expect_hdr), "localhost[unix:uid=%u]",
	    (unsigned)getuid());
	cr_assert_str_eq(env->client, expect_hdr);
	cr_assert(env->uid_known);
	cr_assert_eq(env->uid, getuid());

	body = body_read(env);
	snprintf(expect_hdr, sizeof(expect_hdr),
	    "Received: from client.test (localhost [unix:uid=%u])\r\n"
	    "\tby mx.test (smarthostd, from userid %u) with ESMTP id %s\r\n"
	    "\tfor <bob@example.org>; ", (unsigned)getuid(),
	    (unsigned)getuid(), id);
	cr_assert(strncmp(body, expect_hdr, strlen(expect_hdr)) == 0,
	    "body: %s", body);
	cr_assert_str_eq(after_received(body),
	    "Subject: hi\r\n\r\nHello Bob.\r\n");
	free(body);

	/* The session goes on: a second message. */
	send_str("MAIL FROM:<>\r\n");
	expect("250 2.1.0");
}

Test(smtp_server, pipelined_transactions)
{
	char id1[ENVELOPE_ID_MAX], id2[ENVELOPE_ID_MAX];
	size_t two = 2;

	ehlo();
	/* One write: MAIL/RCPT/DATA; replies come back in order. */
	send_str("MAIL FROM:<a@client.test>\r\n"
	    "RCPT TO:<b@example.org>\r\n"
	    "RCPT TO:<c@example.org>\r\n"
	    "DATA\r\n");
	expect("250 2.1.0");
	expect("250 2.1.5");
	expect("250 2.1.5");
	expect("354 ");
	/*
	 * The body, then a whole second transaction in the same write: the
	 * server must pause while the first commits, and answer the rest
	 * only after the first "queued as".
	 */
	send_str("one\r\n.\r\n"
	    "MAIL FROM:<d@client.test>\r\n"
	    "RCPT TO:<e@example.org>\r\n"
	    "DATA\r\n"
	    "two\r\n.\r\n"
	    "QUIT\r\n");
	expect_queued(id1);
	expect("250 2.1.0");
	expect("250 2.1.5");
	expect("354 ");
	expect_queued(id2);
	expect("221 ");
	cr_assert_str_neq(id1, id2);
	cr_assert(run_until(nqueued_is, &two, WAIT_SECS));
	cr_assert_eq(h.queued[0]->nrcpts, 2);
	cr_assert_str_eq(h.queued[0]->id, id1);
	cr_assert_str_eq(h.queued[1]->sender, "d@client.test");
	cr_assert(run_until(is_eof, NULL, WAIT_SECS));
}

Test(smtp_server, bad_sequence)
{
	teardown();
	setup_with("max_errors = 10;");
	send_str("MAIL FROM:<a@client.test>\r\n");
	expect("503 5.5.1");
	ehlo();
	send_str("RCPT TO:<b@example.org>\r\n");
	expect("503 5.5.1");
	send_str("DATA\r\n");
	expect("503 5.5.1");
	send_str("MAIL FROM:<a@client.test>\r\n");
	expect("250 2.1.0");
	send_str("DATA\r\n");
	expect("503 5.5.1");
	send_str("MAIL FROM:<a@client.test>\r\n");
	expect("503 5.5.1"); /* nested */
	cr_assert_eq(h.nqueued, 0);
}

/* A message pipelined behind a refused DATA is never read as commands:
 * the RCPT and DATA in its text would queue it for someone else. */
Test(smtp_server, data_refused_with_pipelined_input_closes)
{
	ehlo();
	send_str("MAIL FROM:<a@client.test>\r\nDATA\r\n"
	    "RCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n.\r\n");
	expect("250 2.1.0");
	expect("503 5.5.1");
	expect("421 4.5.0");
	cr_assert(run_until(is_eof, NULL, WAIT_SECS));
	cr_assert_eq(h.nqueued, 0);
}

/* The same refusal with nothing behind it is an ordinary error. */
Test(smtp_server, data_refused_alone_keeps_the_session)
{
	ehlo();
	send_str("MAIL FROM:<a@client.test>\r\n");
	expect("250 2.1.0");
	send_str("DATA\r\n");
	expect("503 5.5.1");
	send_str("RCPT TO:<b@example.org>\r\n");
	expect("250 2.1.5");
	send_str("DATA x\r\n");
	expect("501 5.5.4");
	send_str("DATA\r\n");
	expect("354");
}

Test(smtp_server, syntax_errors)
{
	ehlo();
	send_str("MAIL FROM:a@client.test\r\n");
	expect("501 5.5.4");
	send_str("MAIL FROM:<not an address>\r\n");
	expect("501 5.1.7");
	/* max_errors is 3: one more error and the session ends. */
	send_str("MAIL FROM:<a@client.test> FOO=bar\r\n");
	expect("555 5.5.4");
	send_str("MAIL FROM:<a@client.test>\r\n");
	expect("250 2.1.0");
	send_str("RCPT TO:<b@example.org> NOTIFY=NEVER\r\n");
	expect("555 5.5.4");
	expect("421 4.7.0");
	cr_assert(run_until(is_eof, NULL, WAIT_SECS));
}

/* Addresses RFC 5321's grammar refuses get 501 at MAIL and RCPT; a
 * quoted local part and an IPv6 literal still pass. */
Test(smtp_server, malformed_addresses_refused)
{
	static const char *const bad[] = { "a@[1.2.3.4\\]", "a@-y.z",
		".a@y.z", "a..b@y.z" };
	char cmd[256];
	size_t i;

	teardown();
	setup_with("max_errors = 20; max_recipients = 3;");
	ehlo();
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(cmd, sizeof(cmd), "MAIL FROM:<%s>\r\n", bad[i]);
		send_str(cmd);
		expect("501 5.1.7");
	}
	send_str("MAIL FROM:<a@client.test>\r\n");
	expect("250 2.1.0");
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(cmd, sizeof(cmd), "RCPT TO:<%s>\r\n", bad[i]);
		send_str(cmd);
		expect("501 5.1.3");
	}
	send_str("RCPT TO:<\"a b\"@example.org>\r\n"
	    "RCPT TO:<c@[IPv6:2001:db8::1]>\r\n"
	    "RCPT TO:<bounce-lllllllllllllllllllllllllllllllllllllllllllllll"
	    "lllllllllllllllllll@y.z>\r\n");
	expect("250 2.1.5");
	expect("250 2.1.5");
	expect("250 2.1.5");
}

Test(smtp_server, utf8_needs_smtputf8)
{
	ehlo();
	send_str("MAIL FROM:<a@client.test>\r\n");
	expect("250 2.1.0");
	send_str("RCPT TO:<j\xc3\xb6rg@example.org>\r\n");
	expect("501 5.1.3");
	send_str("RSET\r\n");
	expect("250 2.0.0");
	send_str("MAIL FROM:<a@client.test> SMTPUTF8\r\n");
	expect("250 2.1.0");
	send_str("RCPT TO:<j\xc3\xb6rg@example.org>\r\n");
	expect("250 2.1.5");
}

/* An escaped control or 8-bit byte in a quoted local part is refused like
 * a bare one (it would reach the log, the Received: header and, without
 * SMTPUTF8, the upstream). */
Test(smtp_server, escaped_bytes_in_addresses)
{
	ehlo();
	send_str("MAIL FROM:<\"\\\xff\"@b.c>\r\n");
	expect("501 5.1.7");
	send_str("MAIL FROM:<a@client.test>\r\n");
	expect("250 2.1.0");
	send_str("RCPT TO:<\"\\\rX-Injected: yes\\\r\\\x1b[31m\"@y.z>\r\n");
	expect("501 5.1.3");
	send_str("RCPT TO:<\"a\\\"b\"@y.z>\r\n");
	expect("250 2.1.5");
}

Test(smtp_server, size_over_limit)
{
	char big[3000];

	ehlo();
	send_str("MAIL FROM:<a@client.test> SIZE=4096\r\n");
	expect("552 5.3.4");
	/* Announced small, sent big: read to the end, then refused. */
	send_str("MAIL FROM:<a@client.test> SIZE=100\r\n");
	expect("250 2.1.0");
	send_str("RCPT TO:<b@example.org>\r\n");
	expect("250 2.1.5");
	send_str("DATA\r\n");
	expect("354 ");
	memset(big, 'x', sizeof(big));
	big[78] = '\r';
	big[79] = '\n';
	send_buf(big, sizeof(big));
	send_str("\r\n.\r\nNOOP\r\n");
	expect("552 5.3.4");
	expect("250 2.0.0"); /* NOOP: still in step */
	cr_assert_eq(h.nqueued, 0);
	/* The transaction is gone. */
	send_str("RCPT TO:<b@example.org>\r\n");
	expect("503 5.5.1");
}

Test(smtp_server, line_too_long)
{
	char line[700];

	ehlo();
	memset(line, 'x', sizeof(line));
	memcpy(line, "NOOP ", 5);
	/* A whole overlong line in one piece. */
	send_buf(line, sizeof(line));
	send_str("\r\nNOOP\r\n");
	expect("500 5.5.2 Line too long");
	expect("250 2.0.0");
	/* An overlong line whose end comes later: the rest is skipped. */
	send_buf(line, sizeof(line));
	expect("500 5.5.2");
	send_str("MAIL FROM:<tail@client.test>\r\nNOOP\r\n");
	expect("250 2.0.0");
	/* Two errors so far, below max_errors: the session goes on. */
	send_str("RSET\r\n");
	expect("250 2.0.0");
	cr_assert_eq(h.eof, 0);
}

Test(smtp_server, too_many_recipients)
{
	char id[ENVELOPE_ID_MAX];
	size_t one = 1;

	ehlo();
	send_str("MAIL FROM:<a@client.test>\r\n"
	    "RCPT TO:<r1@example.org>\r\n"
	    "RCPT TO:<r2@example.org>\r\n"
	    "RCPT TO:<r3@example.org>\r\n"
	    "RCPT TO:<r4@example.org>\r\n");
	expect("250 2.1.0");
	expect("250 2.1.5");
	expect("250 2.1.5");
	expect("250 2.1.5");
	expect("452 4.5.3 Too many recipients");
	send_str("DATA\r\n");
	expect("354 ");
	send_str("x\r\n.\r\n");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	cr_assert_eq(h.queued[0]->nrcpts, 3);
}

/*
 * SMTP smuggling: "\n.\n", "\r\n.\n" and "\n.\r\n" never end DATA, so what
 * follows them is body text of the same message, not a second message.
 */
Test(smtp_server, bare_lf_smuggling)
{
	char id[ENVELOPE_ID_MAX], *body;
	const char *rest;
	size_t one = 1;

	ehlo();
	send_str("MAIL FROM:<a@client.test>\r\n");
	expect("250 2.1.0");
	send_str("RCPT TO:<b@example.org>\r\n");
	expect("250 2.1.5");
	send_str("DATA\r\n");
	expect("354 ");
	send_str("Subject: s\r\n\r\nhello\n.\n"
	    "MAIL FROM:<evil@client.test>\r\n"
	    "RCPT TO:<victim@example.org>\r\n"
	    "DATA\r\n"
	    "smuggled1\r\n.\n"
	    "smuggled2\n.\r\n"
	    "end\r\n.\r\n"
	    "NOOP\r\n");
	expect_queued(id);
	/* Exactly one message: the next reply is the NOOP's. */
	expect("250 2.0.0 Ok");
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	cr_assert_eq(h.nqueued, 1);
	cr_assert_eq(h.queued[0]->nrcpts, 1);
	cr_assert_str_eq(h.queued[0]->rcpts[0].addr, "b@example.org");
	body = body_read(h.queued[0]);
	rest = after_received(body);
	/* Lines normalised to CRLF; lone dots kept as data. */
	cr_assert_str_eq(rest, "Subject: s\r\n\r\nhello\r\n.\r\n"
	    "MAIL FROM:<evil@client.test>\r\n"
	    "RCPT TO:<victim@example.org>\r\n"
	    "DATA\r\n"
	    "smuggled1\r\n.\r\n"
	    "smuggled2\r\n.\r\n"
	    "end\r\n");
	free(body);
}

Test(smtp_server, dot_unstuffing)
{
	char id[ENVELOPE_ID_MAX], *body;
	size_t one = 1;

	ehlo();
	data_begin();
	/* Split the terminator across writes too. */
	send_str("..leading\r\n...\r\n.x\r\nmid.dle\r\n\r");
	run_until(nqueued_is, &one, 0.1);
	send_str("\n.");
	run_until(nqueued_is, &one, 0.1);
	send_str("\r\n");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	body = body_read(h.queued[0]);
	cr_assert_str_eq(after_received(body),
	    ".leading\r\n..\r\nx\r\nmid.dle\r\n\r\n");
	free(body);
}

Test(smtp_server, long_data_line)
{
	char id[ENVELOPE_ID_MAX], *line, *body;
	const char *rest;
	size_t one = 1, n = 200 * 1024;

	teardown();
	setup_with("max_message_size = \"1M\";");
	ehlo();
	data_begin();
	/* One 200 KiB line starting with a dot: stored in pieces, the dot
	 * removed once, every CR kept where it was. */
	line = malloc(n);
	cr_assert_not_null(line);
	memset(line, 'y', n);
	line[0] = '.';
	line[64 * 1024 - 1] = '\r'; /* a CR at a scan boundary */
	send_buf(line, n);
	send_str("\r\n.\r\n");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	body = body_read(h.queued[0]);
	rest = after_received(body);
	cr_assert_eq(strlen(rest), n - 1 + 2);
	cr_assert(memcmp(rest, line + 1, n - 1) == 0);
	cr_assert(memcmp(rest + n - 1, "\r\n", 2) == 0);
	free(body);
	free(line);
}

/* Aliases and sender rewriting (localaddr.c) through the session: RCPT
 * expands, MAIL and the header section are rewritten even when the header
 * arrives in pieces. */
static char aliases_path[64];

static void
setup_local_with(const char *limits)
{
	FILE *fp;
	int fd;

	teardown();
	snprintf(aliases_path, sizeof(aliases_path),
	    "/tmp/test_smtp_server_aliases.XXXXXX");
	cr_assert_neq(fd = mkstemp(aliases_path), -1);
	cr_assert_not_null(fp = fdopen(fd, "w"));
	fputs("root: admin, ops@example.com\nadmin: boss@example.com\n"
	    "jorg: j\xc3\xb6rg@example.com\n", fp);
	fclose(fp);
	snprintf(extra_conf, sizeof(extra_conf), "aliases = \"%s\";\n"
	    "mail_domain = \"example.com\";\n"
	    "sender_rewrite = { masquerade = true; };\n", aliases_path);
	setup_with(limits);
	unlink(aliases_path); /* read at config load */
}

static void
setup_local(void)
{
	setup_local_with(LIMITS);
}

Test(smtp_server, local_aliases_and_sender_rewriting)
{
	char id[ENVELOPE_ID_MAX], *body;
	struct envelope *env;
	size_t one = 1;

	setup_local();
	ehlo();
	send_str("MAIL FROM:<alice>\r\n");
	expect("250 2.1.0");
	send_str("RCPT TO:<nobody>\r\n");
	expect("550 5.1.1 <nobody>: no such local user nobody (no alias)");
	send_str("RCPT TO:<root@MX.test>\r\n");
	expect("250 2.1.5");
	send_str("RCPT TO:<boss@example.com>\r\n"); /* already there */
	expect("250 2.1.5");
	send_str("RCPT TO:<x@example.org>\r\n");
	expect("250 2.1.5");
	send_str("RCPT TO:<y@example.org>\r\n");
	expect("452 4.5.3");
	send_str("DATA\r\n");
	expect("354 ");
	send_str("From: Alice <al");
	run_until(is_eof, NULL, 0.1);
	send_str("ice@localhost>\r\nSubject: x\r\n");
	run_until(is_eof, NULL, 0.1);
	send_str("\r\nFrom: alice in the body\r\n.\r\n");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	env = h.queued[0];
	cr_assert_str_eq(env->sender, "alice@example.com");
	cr_assert_eq(env->nrcpts, 3);
	cr_assert_str_eq(env->rcpts[0].addr, "boss@example.com");
	cr_assert_str_eq(env->rcpts[1].addr, "ops@example.com");
	cr_assert_str_eq(env->rcpts[2].addr, "x@example.org");
	body = body_read(env);
	cr_assert_str_eq(after_received(body), "From: Alice "
	    "<alice@example.com>\r\nSubject: x\r\n\r\nFrom: alice in the "
	    "body\r\n");
	free(body);
}

/* An alias target beyond ASCII makes the message need SMTPUTF8 even
 * though the client's addresses had none. */
Test(smtp_server, local_alias_target_needs_smtputf8)
{
	char id[ENVELOPE_ID_MAX];
	size_t one = 1;

	setup_local();
	ehlo();
	send_str("MAIL FROM:<a@example.org>\r\nRCPT TO:<jorg>\r\n"
	    "DATA\r\nSubject: x\r\n\r\n.\r\n");
	expect("250 2.1.0");
	expect("250 2.1.5");
	expect("354 ");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	cr_assert_str_eq(h.queued[0]->rcpts[0].addr, "j\xc3\xb6rg@example.com");
	cr_assert(h.queued[0]->flags & ENVELOPE_SMTPUTF8);
}

Test(smtp_server, local_header_only_message)
{
	char id[ENVELOPE_ID_MAX], *body;
	size_t one = 1;

	setup_local();
	ehlo();
	send_str("MAIL FROM:<a@example.org>\r\nRCPT TO:<root>\r\n"
	    "BDAT 9 LAST\r\nFrom: bob");
	expect("250 2.1.0");
	expect("250 2.1.5");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	cr_assert_str_eq(h.queued[0]->sender, "a@example.org");
	body = body_read(h.queued[0]);
	cr_assert_str_eq(after_received(body), "From: bob@example.com");
	free(body);
}

/* One BDAT chunk much larger than the server's 64 KiB scan: a header
 * section that ends inside a piece that crosses 100 KiB is still found
 * and rewritten, and the body after it streams unchanged. */
Test(smtp_server, local_header_in_a_large_chunk)
{
	char id[ENVELOPE_ID_MAX], *msg, *body, cmd[64];
	const char *rest;
	size_t one = 1, len = 0, i, cap = 300 * 1024;

	setup_local_with("max_message_size = \"1M\";");
	msg = malloc(cap);
	cr_assert_not_null(msg);
	for (i = 0; i < 1250; i++) /* 99 KiB of fields, just under 100 */
		len += (size_t)snprintf(msg + len, cap - len,
		    "X-Filler-%04zu: %064d\r\n", i, 0);
	len += (size_t)snprintf(msg + len, cap - len, "From: root\r\n\r\n");
	while (len < 250 * 1024)
		len += (size_t)snprintf(msg + len, cap - len,
		    "From: root in the body, line %zu\r\n", len);
	ehlo();
	send_str("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n");
	expect("250 2.1.0");
	expect("250 2.1.5");
	snprintf(cmd, sizeof(cmd), "BDAT %zu LAST\r\n", len);
	send_str(cmd);
	/* 98 KiB first, read by the server; then the rest at once, which
	 * it takes in 64 KiB pieces: the header ends inside the first. */
	send_buf(msg, 98 * 1024);
	run_until(is_eof, NULL, 0.3);
	send_buf(msg + 98 * 1024, len - 98 * 1024);
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	body = body_read(h.queued[0]);
	rest = after_received(body);
	i = (size_t)(strstr(msg, "From: root\r\n\r\n") - msg);
	cr_assert(memcmp(rest, msg, i) == 0);
	cr_assert(strncmp(rest + i, "From: root@example.com\r\n\r\n", 26) == 0);
	cr_assert_str_eq(rest + i + 26, msg + i + 14);
	free(body);
	free(msg);
}

Test(smtp_server, bdat)
{
	char id[ENVELOPE_ID_MAX], *body;
	size_t one = 1;

	ehlo();
	send_str("BDAT 3\r\nabc");
	expect("503 5.5.1"); /* the chunk was read and discarded */
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n");
	expect("250 2.1.0");
	expect("250 2.1.5");
	/* Chunks are raw: a "." line and commands inside are data. */
	send_str("BDAT 18\r\nline1\r\n.\r\nQUIT\r\nab");
	expect("250 2.0.0 Ok: 18 octets received");
	send_str("DATA\r\n");
	expect("503 5.5.1");
	send_str("BDAT 4 LAST\r\nc\r\n.");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	body = body_read(h.queued[0]);
	cr_assert_str_eq(after_received(body),
	    "line1\r\n.\r\nQUIT\r\nabc\r\n.");
	free(body);
	/* A BDAT without a size cannot be framed: the session ends. */
	send_str("BDAT x\r\n");
	expect("501 5.5.4");
	cr_assert(run_until(is_eof, NULL, WAIT_SECS));
}

/*
 * A message whose first line starts with SP or HTAB (in DATA, also after
 * dot-unstuffing, and in a BDAT chunk) cannot continue our Received:
 * header: an empty line goes before it, so the client's text is body. The
 * empty line is not the client's: the BDAT reply counts the chunk's octets
 * only, and a message of exactly max_message_size (2048) is taken.
 */
Test(smtp_server, leading_blank_is_body_not_received)
{
	static const char *const first[] = { " X-Injected: yes\r\n",
		"\tby evil.example\r\n", ". X-Dot: yes\r\n" };
	static const char rest[] = "Subject: s\r\n\r\nbody\r\n";
	char id[ENVELOPE_ID_MAX], *body, big[2048], want[2048 + 3];
	size_t i, n = 0;

	ehlo();
	for (i = 0; i < 3; i++) {
		data_begin();
		send_str(first[i]);
		send_str(rest);
		send_str(".\r\n");
		expect_queued(id);
		n++;
		cr_assert(run_until(nqueued_is, &n, WAIT_SECS));
		body = body_read(h.queued[n - 1]);
		snprintf(want, sizeof(want), "\r\n%s%s",
		    first[i] + (first[i][0] == '.'), rest);
		cr_assert_str_eq(after_received(body), want);
		free(body);
	}
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n");
	expect("250");
	expect("250");
	send_str("BDAT 4\r\n\tx\r\n");
	expect("250 2.0.0 Ok: 4 octets received");
	send_str("BDAT 3 LAST\r\ny\r\n");
	expect_queued(id);
	n++;
	cr_assert(run_until(nqueued_is, &n, WAIT_SECS));
	body = body_read(h.queued[n - 1]);
	cr_assert_str_eq(after_received(body), "\r\n\tx\r\ny\r\n");
	free(body);

	memset(big, 'x', sizeof(big));
	big[0] = ' ';
	memcpy(big + sizeof(big) - 2, "\r\n", 2);
	data_begin();
	send_buf(big, sizeof(big));
	send_str(".\r\n");
	expect_queued(id);
	n++;
	cr_assert(run_until(nqueued_is, &n, WAIT_SECS));
	body = body_read(h.queued[n - 1]);
	want[0] = '\r';
	want[1] = '\n';
	memcpy(want + 2, big, sizeof(big));
	want[sizeof(want) - 1] = '\0';
	cr_assert_str_eq(after_received(body), want);
	free(body);
}

/* NUL bytes are refused, in DATA (also before a "." that would end the
 * message for an upstream that drops NUL) and in BDAT; the session goes
 * on and nothing is queued. */
Test(smtp_server, nul_bytes_refused)
{
	static const char data[] = "Subject: x\r\n\r\n\0.\r\nafter\r\n.\r\n";
	static const char chunk[] = "a\0b\r\n";
	char id[ENVELOPE_ID_MAX];
	size_t one = 1;

	ehlo();
	data_begin();
	send_buf(data, sizeof(data) - 1);
	expect("554 5.6.0");
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n");
	expect("250");
	expect("250");
	send_str("BDAT 5 LAST\r\n");
	send_buf(chunk, sizeof(chunk) - 1);
	expect("554 5.6.0");
	cr_assert_eq(h.nqueued, 0);
	/* Then a clean message goes through. */
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n"
	    "DATA\r\nok\r\n.\r\n");
	expect("250");
	expect("250");
	expect("354 ");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
}

Test(smtp_server, bdat_too_big)
{
	char chunk[1500];

	ehlo();
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n");
	expect("250");
	expect("250");
	memset(chunk, 'c', sizeof(chunk));
	send_str("BDAT 1500\r\n");
	send_buf(chunk, sizeof(chunk));
	expect("250 2.0.0 Ok: 1500 octets");
	send_str("BDAT 1500 LAST\r\n");
	send_buf(chunk, sizeof(chunk));
	send_str("NOOP\r\n");
	expect("552 5.3.4");
	expect("250 2.0.0"); /* the chunk was consumed: in step */
	cr_assert_eq(h.nqueued, 0);
}

Test(smtp_server, max_errors)
{
	send_str("EHLO client.test\r\n");
	expect("250-");
	send_str("FOO\r\nBAR\r\nBAZ\r\nQUX\r\nNOOP\r\n");
	expect("500 5.5.1");
	expect("500 5.5.1");
	expect("500 5.5.1");
	expect("500 5.5.1");
	expect("421 4.7.0");
	/* Nothing after the 421: the NOOP is not answered. */
	cr_assert(run_until(is_eof, NULL, WAIT_SECS));
	cr_assert_eq(evbuffer_get_length(h.in), 0);
}

Test(smtp_server, rset_clears_transaction)
{
	char id[ENVELOPE_ID_MAX];
	size_t one = 1;

	ehlo();
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n");
	expect("250");
	expect("250");
	send_str("RSET\r\n");
	expect("250 2.0.0");
	send_str("DATA\r\n");
	expect("503 5.5.1");
	send_str("RCPT TO:<b@example.org>\r\n");
	expect("503 5.5.1");
	/* A fresh transaction has only its own recipient. */
	send_str("MAIL FROM:<c@client.test>\r\nRCPT TO:<d@example.org>\r\n"
	    "DATA\r\n");
	expect("250");
	expect("250");
	expect("354");
	send_str("x\r\n.\r\n");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	cr_assert_eq(h.queued[0]->nrcpts, 1);
	cr_assert_str_eq(h.queued[0]->rcpts[0].addr, "d@example.org");
	cr_assert_str_eq(h.queued[0]->sender, "c@client.test");
}

Test(smtp_server, rset_during_data_is_data)
{
	char id[ENVELOPE_ID_MAX];
	size_t one = 1;

	ehlo();
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n"
	    "DATA\r\n");
	expect("250");
	expect("250");
	expect("354");
	send_str("RSET\r\nQUIT\r\n.\r\n");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
}

Test(smtp_server, max_sessions)
{
	char buf[128];
	ssize_t n;
	int fds[4], i, extra;
	double deadline;

	/* max_sessions is 4: three more fit, the fifth is refused. */
	for (i = 0; i < 3; i++)
		fds[i] = connect_pair();
	cr_assert_eq(smtp_server_sessions(h.srv), 4);
	extra = connect_pair();
	cr_assert_eq(smtp_server_sessions(h.srv), 4);
	deadline = now() + WAIT_SECS;
	while ((n = read(extra, buf, sizeof(buf) - 1)) == -1 &&
	    errno == EAGAIN && now() < deadline)
		usleep(10000);
	cr_assert_gt(n, 0);
	buf[n] = '\0';
	cr_assert(strncmp(buf, "421 4.3.2", 9) == 0, "%s", buf);
	close(extra);
	for (i = 0; i < 3; i++)
		close(fds[i]);
}

/* Reads the first line a refused or greeted connection gets on fd. */
static char *
first_line(int fd)
{
	static char buf[128];
	double deadline = now() + WAIT_SECS;
	ssize_t n;

	while ((n = read(fd, buf, sizeof(buf) - 1)) == -1 &&
	    errno == EAGAIN && now() < deadline) {
		event_base_loop(h.base, EVLOOP_NONBLOCK);
		usleep(10000);
	}
	cr_assert_gt(n, 0);
	buf[n] = '\0';
	return buf;
}

/* The client end the wrappers of the critical path look at (below). */
static int peek_fd = -1;

/* A session from a fake TCP peer (the server takes the address given). */
static int
connect_pair_from(const char *ip)
{
	struct sockaddr_in sin;
	int sv[2];

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	cr_assert_eq(inet_pton(AF_INET, ip, &sin.sin_addr), 1);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC |
	    SOCK_NONBLOCK, 0, sv), 0);
	peek_fd = sv[0];
	smtp_server_accept(h.srv, sv[1], (struct sockaddr *)&sin,
	    sizeof(sin), NULL);
	peek_fd = -1;
	return sv[0];
}

/* One local user (here: this process's uid on the Unix socket) cannot
 * take every slot; another client still gets in. */
Test(smtp_server, max_sessions_per_client)
{
	int mine, refused, other, other2;

	teardown();
	setup_with("max_sessions = 4; max_sessions_per_client = 2;");
	mine = connect_pair();
	cr_assert_eq(smtp_server_sessions(h.srv), 2);
	refused = connect_pair();
	cr_assert(strncmp(first_line(refused), "421 4.7.0", 9) == 0);
	cr_assert_eq(smtp_server_sessions(h.srv), 2);
	other = connect_pair_from("127.0.0.2");
	cr_assert(strncmp(first_line(other), "220 ", 4) == 0);
	other2 = connect_pair_from("127.0.0.2");
	cr_assert(strncmp(first_line(other2), "220 ", 4) == 0);
	cr_assert_eq(smtp_server_sessions(h.srv), 4);
	close(refused);
	close(mine);
	close(other);
	close(other2);
}

/* Slowloris: a byte every 0.3 s keeps the idle timer reset, but not the
 * session's deadline; the message is not queued. */
Test(smtp_server, session_timeout_ends_a_slow_data_session)
{
	double start, took;
	char *r = NULL;
	int i;

	teardown();
	setup_with("idle_timeout = 30; session_timeout = 2;");
	start = now();
	ehlo();
	data_begin();
	for (i = 0; i < 40 && r == NULL; i++) {
		send_str("x");
		run_until(reply_ready, &r, 0.3);
	}
	took = now() - start;
	cr_assert_not_null(r, "still in DATA after %.1fs", took);
	cr_assert(strncmp(r, "421 4.4.2 Session time limit", 28) == 0, "%s",
	    r);
	cr_assert(took >= 1.9 && took < 10, "took %.1fs", took);
	free(r);
	cr_assert(run_until(is_eof, NULL, WAIT_SECS));
	cr_assert_eq(h.nqueued, 0);
}

Test(smtp_server, idle_timeout)
{
	teardown();
	setup_with("idle_timeout = 1;");
	send_str("EHLO client.test\r\n");
	expect("250-");
	expect("421 4.4.2 Idle timeout");
	cr_assert(run_until(is_eof, NULL, WAIT_SECS));
}

static void
shutdown_done_cb(void *arg)
{
	h.shutdown_done++;
}

static int
shutdown_finished(void *arg)
{
	return h.shutdown_done > 0;
}

Test(smtp_server, shutdown_idle)
{
	ehlo();
	smtp_server_shutdown(h.srv, 5, shutdown_done_cb, NULL);
	expect("421 4.3.2");
	cr_assert(run_until(is_eof, NULL, WAIT_SECS));
	cr_assert(run_until(shutdown_finished, NULL, WAIT_SECS));
	cr_assert_eq(h.shutdown_done, 1);
	cr_assert_eq(smtp_server_sessions(h.srv), 0);
}

Test(smtp_server, shutdown_finishes_transaction)
{
	char id[ENVELOPE_ID_MAX];

	ehlo();
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n");
	expect("250");
	expect("250");
	smtp_server_shutdown(h.srv, 5, shutdown_done_cb, NULL);
	run_until(shutdown_finished, NULL, 0.2);
	cr_assert_eq(h.shutdown_done, 0, "done before the session ended");
	send_str("DATA\r\n");
	expect("354");
	send_str("last\r\n.\r\n");
	expect_queued(id);
	expect("421 4.3.2");
	cr_assert(run_until(is_eof, NULL, WAIT_SECS));
	cr_assert(run_until(shutdown_finished, NULL, WAIT_SECS));
	cr_assert_eq(h.nqueued, 1);
}

Test(smtp_server, debug_trace)
{
	/* Traces go through log_sanitize; this only must not break. */
	log_setdebug(1);
	ehlo();
	send_str("NOOP\r\n");
	expect("250 2.0.0");
	log_setdebug(0);
}

/* ---- listeners ---- */

static struct listeners *lst;
static char lerr[512];

/* The protocol harness without a session, and listeners from extra. */
static struct listeners *
lsetup(const char *extra)
{
	struct smtp_server_params params;
	char text[2048];

	log_init("test_smtp_server", 0);
	signal(SIGPIPE, SIG_IGN);
	cr_assert_eq(evthread_use_pthreads(), 0);
	memset(&h, 0, sizeof(h));
	h.cfd = -1;
	h.base = event_base_new();
	snprintf(h.spool, sizeof(h.spool), "/tmp/test_smtp_server.XXXXXX");
	cr_assert_not_null(mkdtemp(h.spool));
	snprintf(text, sizeof(text),
	    "hostname = \"mx.test\";\n"
	    "spool = \"%s\";\n"
	    "%s\n"
	    "relays = { cap = { type = \"maildir\"; path = \"%s/md\"; }; };\n",
	    h.spool, extra, h.spool);
	h.cfg = config_parse_string(text, "test.conf", lerr, sizeof(lerr));
	cr_assert_not_null(h.cfg, "config: %s", lerr);
	h.q = queue_open(h.base, h.spool, SPOOL_SYNC_FSYNC, 0, lerr,
	    sizeof(lerr));
	cr_assert_not_null(h.q, "queue_open: %s", lerr);
	memset(&params, 0, sizeof(params));
	params.cfg = h.cfg;
	params.queue = h.q;
	params.queued = queued_cb;
	h.srv = smtp_server_new(h.base, &params);
	h.in = evbuffer_new();
	lerr[0] = '\0';
	lst = listeners_open(h.cfg, lerr, sizeof(lerr));
	if (lst != NULL)
		cr_assert_eq(listeners_start(lst, h.base, h.srv), 0);
	return lst;
}

static void
lteardown(void)
{
	listeners_free(lst);
	lst = NULL;
	teardown();
}

/* Reads the first line the server sends on fd (bounded wait). */
static char *
fd_read_line(int fd)
{
	static char buf[512];
	size_t len = 0;
	double deadline = now() + WAIT_SECS;
	ssize_t n;

	while (now() < deadline && len < sizeof(buf) - 1) {
		event_base_loop(h.base, EVLOOP_NONBLOCK);
		n = recv(fd, buf + len, sizeof(buf) - 1 - len, MSG_DONTWAIT);
		if (n > 0) {
			len += (size_t)n;
			buf[len] = '\0';
			if (strstr(buf, "\r\n") != NULL)
				return buf;
		} else if (n == 0)
			break;
		else
			usleep(2000);
	}
	buf[len] = '\0';
	return buf;
}

static int
tcp_connect(const struct sockaddr *sa, socklen_t len,
    const struct sockaddr *from, socklen_t fromlen)
{
	int fd = socket(sa->sa_family, SOCK_STREAM, 0);

	cr_assert_neq(fd, -1);
	if (from != NULL)
		cr_assert_eq(bind(fd, from, fromlen), 0, "bind: %s",
		    strerror(errno));
	cr_assert_eq(connect(fd, sa, len), 0, "connect: %s", strerror(errno));
	return fd;
}

/* The port in a "127.0.0.1:PORT" description. */
static unsigned
desc_port(const char *desc)
{
	const char *colon = strrchr(desc, ':');

	cr_assert_not_null(colon, "%s", desc);
	return (unsigned)strtoul(colon + 1, NULL, 10);
}

TestSuite(listener, .fini = lteardown, .timeout = 60);

Test(listener, tcp_and_unix)
{
	char extra[512], path[96], *line;
	struct sockaddr_in sin;
	struct sockaddr_un sun;
	struct stat st;
	unsigned port;
	int fd;

	snprintf(path, sizeof(path), "/tmp/tss.%d.sock", (int)getpid());
	snprintf(extra, sizeof(extra),
	    "listen = ( { address = \"127.0.0.1\"; port = \"0\"; },\n"
	    "  { path = \"%s\"; mode = \"0660\"; } );", path);
	cr_assert_not_null(lsetup(extra), "%s", lerr);
	cr_assert_eq(listeners_count(lst), 2);
	cr_assert(strncmp(listeners_describe(lst, 0), "127.0.0.1:", 10) == 0,
	    "%s", listeners_describe(lst, 0));
	port = desc_port(listeners_describe(lst, 0));
	cr_assert_neq(port, 0, "the real port, not the configured 0");
	cr_assert_str_eq(listeners_describe(lst, 1), strcat(strcpy(extra,
	    "unix:"), path));
	cr_assert_null(listeners_describe(lst, 2));
	cr_assert_eq(lstat(path, &st), 0);
	cr_assert(S_ISSOCK(st.st_mode));
	cr_assert_eq(st.st_mode & 0777, 0660);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = tcp_connect((struct sockaddr *)&sin, sizeof(sin), NULL, 0);
	line = fd_read_line(fd);
	cr_assert(strncmp(line, "220 mx.test", 11) == 0, "%s", line);
	close(fd);

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	fd = tcp_connect((struct sockaddr *)&sun, sizeof(sun), NULL, 0);
	line = fd_read_line(fd);
	cr_assert(strncmp(line, "220 mx.test", 11) == 0, "%s", line);
	close(fd);

	listeners_free(lst);
	lst = NULL;
	cr_assert_eq(lstat(path, &st), -1, "socket file left behind");
}

/* Linked with --wrap=bind: when swap_target is set, a Unix socket's path
 * is replaced by a symlink to it right after the bind, as someone with
 * write access to the directory could. */
int __real_bind(int fd, const struct sockaddr *sa, socklen_t len);
int __wrap_bind(int fd, const struct sockaddr *sa, socklen_t len);
static const char *swap_target;

int
__wrap_bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	const struct sockaddr_un *sun = (const struct sockaddr_un *)sa;
	char tmp[sizeof(sun->sun_path) + 8];
	int r = __real_bind(fd, sa, len);

	if (r == 0 && swap_target != NULL && sa->sa_family == AF_UNIX) {
		snprintf(tmp, sizeof(tmp), "%s.swap", sun->sun_path);
		cr_assert_eq(symlink(swap_target, tmp), 0);
		cr_assert_eq(rename(tmp, sun->sun_path), 0);
	}
	return r;
}

Test(listener, unix_socket_symlink_swap)
{
	char extra[512], path[96], victim[96];
	struct stat st;
	int fd;

	snprintf(path, sizeof(path), "/tmp/tss.%d.sock", (int)getpid());
	snprintf(victim, sizeof(victim), "/tmp/tss.%d.victim", (int)getpid());
	fd = open(victim, O_WRONLY | O_CREAT | O_EXCL, 0600);
	cr_assert_neq(fd, -1);
	close(fd);
	snprintf(extra, sizeof(extra), "listen = ( { path = \"%s\"; "
	    "mode = \"0666\"; } );", path);
	swap_target = victim;
	cr_assert_null(lsetup(extra), "started on a swapped path");
	swap_target = NULL;
	cr_assert(strstr(lerr, "replaced") != NULL, "%s", lerr);
	cr_assert_eq(stat(victim, &st), 0);
	cr_assert_eq(st.st_mode & 07777, 0600, "the symlink's target was "
	    "chmod-ed to %o", st.st_mode & 07777);
	cr_assert_eq(lstat(path, &st), 0);
	cr_assert(S_ISLNK(st.st_mode), "someone else's file was removed");
	unlink(path);
	unlink(victim);
}

/* The group is set on the socket itself, and the mode exactly. */
Test(listener, unix_socket_group_and_mode)
{
	char extra[512], path[96];
	struct group *gr = getgrgid(getegid());
	struct stat st;

	cr_assert_not_null(gr);
	snprintf(path, sizeof(path), "/tmp/tss.%d.sock", (int)getpid());
	snprintf(extra, sizeof(extra), "listen = ( { path = \"%s\"; "
	    "mode = \"0620\"; group = \"%s\"; } );", path, gr->gr_name);
	cr_assert_not_null(lsetup(extra), "%s", lerr);
	cr_assert_eq(lstat(path, &st), 0);
	cr_assert(S_ISSOCK(st.st_mode));
	cr_assert_eq(st.st_mode & 07777, 0620);
	cr_assert_eq(st.st_gid, gr->gr_gid);
}

Test(listener, ipv6_loopback)
{
	int fd = socket(AF_INET6, SOCK_STREAM, 0);

	if (fd == -1)
		cr_skip_test("no IPv6");
	close(fd);
	cr_assert_not_null(lsetup("listen = ( { address = \"::1\"; "
	    "port = \"0\"; } );"), "%s", lerr);
	cr_assert(strncmp(listeners_describe(lst, 0), "[::1]:", 6) == 0,
	    "%s", listeners_describe(lst, 0));
	cr_assert_neq(desc_port(listeners_describe(lst, 0)), 0);
}

Test(listener, refuses_non_loopback)
{
	cr_assert_null(lsetup("listen = ( { address = \"0.0.0.0\"; "
	    "port = \"0\"; } );"));
	cr_assert_not_null(strstr(lerr, "allow_networks"), "%s", lerr);
}

Test(listener, stale_and_live_socket_file)
{
	char extra[512], path[96];
	struct sockaddr_un sun;
	int fd;

	snprintf(path, sizeof(path), "/tmp/tss.stale.%d.sock", (int)getpid());
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	/* A socket file nobody listens on: a crashed previous run. */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	close(fd);
	snprintf(extra, sizeof(extra), "listen = ( { path = \"%s\"; } );",
	    path);
	cr_assert_not_null(lsetup(extra), "%s", lerr);
	/* A second instance must not steal the live socket. */
	cr_assert_null(listeners_open(h.cfg, lerr, sizeof(lerr)));
	cr_assert_not_null(strstr(lerr, "another process"), "%s", lerr);
	cr_assert_eq(access(path, F_OK), 0);
}

/* A local non-loopback IPv4 address, or 0 if there is none. */
static int
local_address(struct sockaddr_in *out)
{
	struct ifaddrs *ifa, *i;
	int found = 0;

	if (getifaddrs(&ifa) == -1)
		return 0;
	for (i = ifa; i != NULL && !found; i = i->ifa_next) {
		if (i->ifa_addr == NULL || i->ifa_addr->sa_family != AF_INET)
			continue;
		memcpy(out, i->ifa_addr, sizeof(*out));
		found = (ntohl(out->sin_addr.s_addr) >> 24) != 127;
	}
	freeifaddrs(ifa);
	return found;
}

Test(listener, peer_not_allowed)
{
	struct sockaddr_in local, sin;
	unsigned port;
	char *line;
	int fd;

	if (!local_address(&local))
		cr_skip_test("no non-loopback IPv4 address");
	/* Listening everywhere needs allow_networks; 198.51.100.0/24 does
	 * not contain our own address, so we are refused. */
	cr_assert_not_null(lsetup("listen = ( { address = \"0.0.0.0\"; "
	    "port = \"0\"; } );\n"
	    "allow_networks = [ \"198.51.100.0/24\" ];"), "%s", lerr);
	port = desc_port(listeners_describe(lst, 0));
	sin = local;
	sin.sin_port = htons((uint16_t)port);
	local.sin_port = 0;
	fd = tcp_connect((struct sockaddr *)&sin, sizeof(sin),
	    (struct sockaddr *)&local, sizeof(local));
	line = fd_read_line(fd);
	cr_assert(strncmp(line, "554 5.7.1", 9) == 0, "got \"%s\"", line);
	close(fd);
	cr_assert_eq(smtp_server_sessions(h.srv), 0);

	/* From loopback the same listener serves. */
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = tcp_connect((struct sockaddr *)&sin, sizeof(sin), NULL, 0);
	line = fd_read_line(fd);
	cr_assert(strncmp(line, "220 ", 4) == 0, "got \"%s\"", line);
	close(fd);
}

static int
spool_dir_empty(const char *sub)
{
	char path[128];
	struct dirent *de;
	DIR *d;
	int n = 0;

	snprintf(path, sizeof(path), "%s/%s", h.spool, sub);
	if ((d = opendir(path)) == NULL)
		return 1;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n == 0;
}

static int
tmp_empty(void *arg)
{
	return spool_dir_empty("tmp");
}

/*
 * The syncs, wrapped (-Wl,--wrap=fdatasync,--wrap=fsync): a test can hold
 * the message file's fdatasync or the directory's fsync (SYNC_FILE,
 * SYNC_DIR) until it lets go, or make them fail with sync_errno.
 */
int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);
int __real_fsync(int fd);
int __wrap_fsync(int fd);

enum { SYNC_FILE = 1, SYNC_DIR = 2 };
static pthread_mutex_t sync_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sync_cv = PTHREAD_COND_INITIALIZER;
static int sync_hold;      /* SYNC_* bits: those calls wait */
static int sync_held;      /* calls waiting now */
static int sync_errno;     /* SYNC_* calls fail with it (0: pass) */
static int sync_fail;      /* which calls sync_errno applies to */
static int sync_done;      /* held-kind calls that returned */
static pthread_t sync_thread; /* the thread of the last gated call */

static int
sync_gate(int kind, int fd, int (*real)(int))
{
	int e, r;

	pthread_mutex_lock(&sync_mtx);
	sync_thread = pthread_self();
	if (sync_hold & kind) {
		sync_held++;
		while (sync_hold & kind)
			pthread_cond_wait(&sync_cv, &sync_mtx);
		sync_held--;
	}
	e = (sync_fail & kind) ? sync_errno : 0;
	pthread_mutex_unlock(&sync_mtx);
	if (e != 0) {
		errno = e;
		r = -1;
	} else
		r = real(fd);
	pthread_mutex_lock(&sync_mtx);
	sync_done++;
	pthread_mutex_unlock(&sync_mtx);
	return r;
}

int
__wrap_fdatasync(int fd)
{
	return sync_gate(SYNC_FILE, fd, __real_fdatasync);
}

int
__wrap_fsync(int fd)
{
	struct stat st;

	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
		return sync_gate(SYNC_DIR, fd, __real_fsync);
	return __real_fsync(fd);
}

static void
sync_set(int hold, int fail, int error)
{
	pthread_mutex_lock(&sync_mtx);
	sync_hold = hold;
	sync_fail = fail;
	sync_errno = error;
	pthread_cond_broadcast(&sync_cv);
	pthread_mutex_unlock(&sync_mtx);
}

static int
sync_is_held(void *arg)
{
	int n;

	pthread_mutex_lock(&sync_mtx);
	n = sync_held;
	pthread_mutex_unlock(&sync_mtx);
	return n > 0;
}

/* Whether the last sync (of a kind the tests gate) ran on this thread,
 * the loop's: a lone session's commit does (see queue.c, "The lone
 * commit"), any other on the queue's commit thread. */
static int
sync_was_on_loop(void)
{
	int r;

	pthread_mutex_lock(&sync_mtx);
	r = pthread_equal(sync_thread, pthread_self());
	pthread_mutex_unlock(&sync_mtx);
	return r;
}

/* A second client, greeted: with it connected no session is alone. */
static int
bystander(void)
{
	int fd = connect_pair();

	cr_assert(strncmp(first_line(fd), "220 ", 4) == 0);
	return fd;
}

/*
 * The 250 waits for the sync: with the file's fdatasync (or the queue
 * directory's fsync, which makes the rename durable) held, no reply comes
 * however long the loop runs; the moment the sync returns, the 250 does.
 * Another client is connected, so the commit goes through the commit
 * thread, and the loop serves that client while the sync is held: a
 * stalled disk does not freeze the other sessions.
 */
static void
reply_waits_for(int kind)
{
	char id[ENVELOPE_ID_MAX], *r = NULL;
	size_t one = 1;
	int other;

	other = bystander();
	ehlo();
	data_begin();
	sync_set(kind, 0, 0);
	send_str("held by the sync\r\n.\r\n");
	cr_assert(run_until(sync_is_held, NULL, WAIT_SECS),
	    "the commit never reached the sync");
	run_until(reply_ready, &r, 0.5);
	cr_assert_null(r, "replied while the sync was held: %s", r);
	cr_assert_eq(h.nqueued, 0);
	cr_assert_eq(write(other, "NOOP\r\n", 6), 6);
	cr_assert(strncmp(first_line(other), "250 ", 4) == 0,
	    "the other session was not served during the sync");
	sync_set(0, 0, 0);
	expect_queued(id);
	cr_assert(!sync_was_on_loop());
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	close(other);
}

Test(smtp_server, reply_waits_for_file_sync)
{
	reply_waits_for(SYNC_FILE);
}

Test(smtp_server, reply_waits_for_directory_sync)
{
	reply_waits_for(SYNC_DIR);
}

/*
 * A lone session's commit is synced on the loop, and still answered only
 * after the sync returned: with the fdatasync held on the loop and let go
 * from another thread, the 250 comes after the release.
 */
static double lone_released;

static void *
lone_release(void *arg)
{
	double deadline = now() + WAIT_SECS;

	while (!sync_is_held(NULL) && now() < deadline)
		usleep(1000);
	usleep(200000);
	lone_released = now();
	sync_set(0, 0, 0);
	return NULL;
}

Test(smtp_server, lone_reply_waits_for_sync_on_loop)
{
	char id[ENVELOPE_ID_MAX];
	size_t one = 1;
	pthread_t t;
	double got;

	ehlo();
	data_begin();
	sync_set(SYNC_FILE, 0, 0);
	cr_assert_eq(pthread_create(&t, NULL, lone_release, NULL), 0);
	send_str("alone\r\n.\r\n");
	expect_queued(id);
	got = now();
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert(sync_was_on_loop(), "the lone commit went to the thread");
	cr_assert_gt(lone_released, 0);
	cr_assert_geq(got, lone_released, "replied before the sync returned");
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
}

/* A sync that fails is a refusal the client can retry: 451 (I/O error)
 * or 452 (no space); nothing is queued, and the session goes on. Alone,
 * the sync that fails is the loop's; with another client connected
 * (others), the commit thread's. */
static void
sync_failure_refuses(int kind, int error, const char *want, int others)
{
	char id[ENVELOPE_ID_MAX];
	size_t one = 1;
	int other = others ? bystander() : -1;

	ehlo();
	data_begin();
	sync_set(0, kind, error);
	send_str("lost to the disk\r\n.\r\n");
	expect(want);
	cr_assert(sync_was_on_loop() == !others);
	cr_assert_eq(h.nqueued, 0);
	cr_assert(spool_dir_empty("queue"));
	sync_set(0, 0, 0);
	data_begin();
	send_str("fine\r\n.\r\n");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
	if (other != -1)
		close(other);
}

Test(smtp_server, file_sync_failure_gives_451)
{
	sync_failure_refuses(SYNC_FILE, EIO, "451 4.3.0", 0);
}

Test(smtp_server, file_sync_failure_gives_451_with_others)
{
	sync_failure_refuses(SYNC_FILE, EIO, "451 4.3.0", 1);
}

Test(smtp_server, file_sync_enospc_gives_452)
{
	sync_failure_refuses(SYNC_FILE, ENOSPC, "452 4.3.1", 0);
}

Test(smtp_server, file_sync_enospc_gives_452_with_others)
{
	sync_failure_refuses(SYNC_FILE, ENOSPC, "452 4.3.1", 1);
}

Test(smtp_server, directory_sync_failure_gives_451)
{
	sync_failure_refuses(SYNC_DIR, EIO, "451 4.3.0", 0);
}

Test(smtp_server, directory_sync_failure_gives_451_with_others)
{
	sync_failure_refuses(SYNC_DIR, EIO, "451 4.3.0", 1);
}

/* A full disk: the write fails (EFBIG under RLIMIT_FSIZE here, ENOSPC in
 * life), the client gets 452 and nothing stays in the spool. */
Test(smtp_server, storage_failure)
{
	struct rlimit rl = { 4096, 4096 };
	char id[ENVELOPE_ID_MAX], big[8000];
	size_t one = 1;

	teardown();
	setup_with("max_message_size = \"1M\";");
	signal(SIGXFSZ, SIG_IGN);
	cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
	ehlo();
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n"
	    "DATA\r\n");
	expect("250");
	expect("250");
	expect("354");
	memset(big, 'z', sizeof(big));
	send_buf(big, sizeof(big));
	send_str("\r\n.\r\n");
	expect("452 4.3.1 Insufficient system storage");
	cr_assert(run_until(tmp_empty, NULL, WAIT_SECS), "tmp/ not cleaned");
	cr_assert(spool_dir_empty("queue"));
	cr_assert_eq(h.nqueued, 0);
	/* The session goes on and a small message fits. */
	send_str("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n"
	    "DATA\r\nsmall\r\n.\r\n");
	expect("250");
	expect("250");
	expect("354");
	expect_queued(id);
	cr_assert(run_until(nqueued_is, &one, WAIT_SECS));
}

/*
 * The critical path of one client (-Wl,--wrap=peercred_tcp,--wrap=log_info):
 * what the server does before a reply the client waits for. The wrappers
 * look at what the client end (peek_fd) could already read when they run:
 * the greeting before a loopback client's owner lookup, the 250 before
 * the message's log lines.
 */
int __real_peercred_tcp(const struct sockaddr *local,
    const struct sockaddr *peer, uid_t *uid);
int __wrap_peercred_tcp(const struct sockaddr *local,
    const struct sockaddr *peer, uid_t *uid);
void __real_log_info(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
void __wrap_log_info(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static int owner_lookups, owner_after_greeting;
static struct sockaddr_storage owner_local;	/* the last lookup's */
static int queued_lines, queued_lines_after_250;

/* Whether the client end has bytes waiting that start with prefix (or,
 * anywhere set, contain it). */
static int
peek_has(const char *text, int anywhere)
{
	char buf[512];
	ssize_t n;

	if (peek_fd == -1)
		return 0;
	n = recv(peek_fd, buf, sizeof(buf) - 1, MSG_PEEK | MSG_DONTWAIT);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return anywhere ? strstr(buf, text) != NULL :
	    strncmp(buf, text, strlen(text)) == 0;
}

int
__wrap_peercred_tcp(const struct sockaddr *local,
    const struct sockaddr *peer, uid_t *uid)
{
	owner_lookups++;
	memset(&owner_local, 0, sizeof(owner_local));
	memcpy(&owner_local, local, local->sa_family == AF_INET6 ?
	    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
	if (peek_has("220 ", 0))
		owner_after_greeting++;
	return __real_peercred_tcp(local, peer, uid);
}

void
__wrap_log_info(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (strstr(buf, "(queued)") != NULL || strstr(buf, ": client=") !=
	    NULL) {
		queued_lines++;
		if (peek_has("250 2.0.0 Ok: queued as ", 1))
			queued_lines_after_250++;
	}
	__real_log_info("%s", buf);
}

/* The greeting does not wait for the owner lookup of a loopback client,
 * unless the per-client limit could refuse the session: then the owner
 * is what the limit counts, and it is looked up first. */
Test(smtp_server, owner_looked_up_after_greeting_unless_limit_could_refuse)
{
	int a, b, c;

	teardown();
	setup_with("max_sessions = 8; max_sessions_per_client = 3;");
	/* The harness's own session (a Unix socket) is one; these two
	 * leave the count below the limit. */
	a = connect_pair_from("127.0.0.1");
	b = connect_pair_from("127.0.0.1");
	cr_assert_eq(owner_lookups, 2);
	cr_assert_eq(owner_after_greeting, 2);
	cr_assert_str_eq(first_line(a), "220 mx.test ESMTP smarthostd\r\n");
	/* Three sessions: the next could be refused, so its owner is known
	 * before anything is written. Here the lookup fails (a socketpair),
	 * so the limit counts by address: two from 127.0.0.1, a third is
	 * let in, a fourth refused. */
	c = connect_pair_from("127.0.0.1");
	cr_assert_eq(owner_lookups, 3);
	cr_assert_eq(owner_after_greeting, 2);
	cr_assert(strncmp(first_line(c), "220 ", 4) == 0);
	close(connect_pair_from("127.0.0.1"));
	cr_assert_eq(owner_lookups, 4);
	cr_assert_eq(owner_after_greeting, 2);
	cr_assert_eq(smtp_server_sessions(h.srv), 4);
	close(a);
	close(b);
	close(c);
}

/* The 250 after a commit is on the wire before the message's log lines
 * are formatted and written. */
Test(smtp_server, queued_reply_before_log_lines)
{
	char id[ENVELOPE_ID_MAX];

	ehlo();
	data_begin();
	peek_fd = h.cfd;
	send_str("Subject: x\r\n\r\nbody\r\n.\r\n");
	expect_queued(id);
	peek_fd = -1;
	cr_assert_eq(queued_lines, 2);
	cr_assert_eq(queued_lines_after_250, 2);
}

/* Our own end of a loopback TCP connection whose other end is bound to
 * client (the server runs in this process): found among our descriptors. */
static int
server_end(int client)
{
	struct sockaddr_storage mine, peer;
	socklen_t len;
	int fd;

	len = sizeof(mine);
	cr_assert_eq(getsockname(client, (struct sockaddr *)&mine, &len), 0);
	for (fd = 3; fd < 1024; fd++) {
		len = sizeof(peer);
		if (fd == client ||
		    getpeername(fd, (struct sockaddr *)&peer, &len) == -1)
			continue;
		if (peer.ss_family == AF_INET &&
		    ((struct sockaddr_in *)&peer)->sin_port ==
		    ((struct sockaddr_in *)&mine)->sin_port)
			return fd;
	}
	return -1;
}

/*
 * Accepted TCP sessions: TCP_NODELAY comes from the listening socket, and
 * the owner lookup is given the connection's local address, from the
 * listener when it is bound to one address, from getsockname when it
 * listens on every address.
 */
static void
accept_and_check(const char *listen, const char *extra)
{
	struct sockaddr_in sin, *local;
	char conf[512], *line;
	int fd, sfd, on = 0;
	socklen_t len = sizeof(on);
	unsigned port;

	snprintf(conf, sizeof(conf), "listen = ( { address = \"%s\"; "
	    "port = \"0\"; } );\n%s", listen, extra);
	cr_assert_not_null(lsetup(conf), "%s", lerr);
	port = desc_port(listeners_describe(lst, 0));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	owner_lookups = 0;
	fd = tcp_connect((struct sockaddr *)&sin, sizeof(sin), NULL, 0);
	line = fd_read_line(fd);
	cr_assert(strncmp(line, "220 ", 4) == 0, "got \"%s\"", line);
	cr_assert_eq(owner_lookups, 1);
	local = (struct sockaddr_in *)&owner_local;
	cr_assert_eq(local->sin_family, AF_INET);
	cr_assert_eq(local->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
	cr_assert_eq(ntohs(local->sin_port), port);
	sfd = server_end(fd);
	cr_assert_neq(sfd, -1, "the accepted socket was not found");
	cr_assert_eq(getsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &on, &len), 0);
	cr_assert_eq(on, 1, "TCP_NODELAY is off on the accepted socket");
	close(fd);
}

Test(listener, accepted_socket_bound_address)
{
	accept_and_check("127.0.0.1", "");
}

Test(listener, accepted_socket_wildcard_address)
{
	accept_and_check("0.0.0.0", "allow_networks = [ \"127.0.0.0/8\" ];");
}
