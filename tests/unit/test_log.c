/*
 * log.c: the journal entry's fields (log_journal_entry), the
 * JOURNAL_STREAM match, and the lines written to stderr when it is
 * neither the journal nor a terminal.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "log.h"

/* The value of the first field key in e, or NULL. */
static const char *
field(const struct log_entry *e, const char *key)
{
	static char value[LOG_JOURNAL_BUF];
	size_t klen = strlen(key);
	int i;

	for (i = 0; i < e->n; i++) {
		const char *p = e->iov[i].iov_base;
		size_t len = e->iov[i].iov_len;

		if (len > klen && memcmp(p, key, klen) == 0 &&
		    p[klen] == '=') {
			memcpy(value, p + klen + 1, len - klen - 1);
			value[len - klen - 1] = '\0';
			return value;
		}
	}
	return NULL;
}

static int
count(const struct log_entry *e, const char *key)
{
	size_t klen = strlen(key);
	int i, n = 0;

	for (i = 0; i < e->n; i++)
		if (e->iov[i].iov_len > klen &&
		    memcmp(e->iov[i].iov_base, key, klen) == 0 &&
		    ((const char *)e->iov[i].iov_base)[klen] == '=')
			n++;
	return n;
}

Test(log, delivery_entry_has_every_field)
{
	static const char msg[] = "4F2A9C1D0B3E5A71: to=<ops@example.org>, "
	    "relay=smtp.example.com[192.0.2.1]:587, delay=0.8, dsn=2.0.0, "
	    "status=sent (250 2.0.0 OK)";
	struct log_fields f = { "4F2A9C1D0B3E5A71",
	    "smtp.example.com[192.0.2.1]:587", "sent", "2.0.0" };
	struct log_entry e;

	cr_assert_eq(log_journal_entry(&e, LOG_INFO, "smarthostd", msg, 0,
	    &f), 7);
	cr_assert_str_eq(field(&e, "MESSAGE"), msg);
	cr_assert_str_eq(field(&e, "PRIORITY"), "6");
	cr_assert_str_eq(field(&e, "SYSLOG_IDENTIFIER"), "smarthostd");
	cr_assert_str_eq(field(&e, "QUEUE_ID"), "4F2A9C1D0B3E5A71");
	cr_assert_str_eq(field(&e, "RELAY"),
	    "smtp.example.com[192.0.2.1]:587");
	cr_assert_str_eq(field(&e, "STATUS"), "sent");
	cr_assert_str_eq(field(&e, "DSN"), "2.0.0");
	cr_assert_null(field(&e, "ERRNO"));
	/* iov_len covers "KEY=value" exactly, without the NUL. */
	cr_assert_eq(e.iov[1].iov_len, strlen("PRIORITY=6"));
}

Test(log, queue_id_from_the_line)
{
	struct log_entry e;

	log_journal_entry(&e, LOG_INFO, "smarthostd",
	    "0123456789ABCDEF: removed", 0, NULL);
	cr_assert_eq(e.n, 4);
	cr_assert_str_eq(field(&e, "QUEUE_ID"), "0123456789ABCDEF");
	cr_assert_null(field(&e, "STATUS"));
	/* Not a queue id: lower case, short, no ": " after it. */
	log_journal_entry(&e, LOG_INFO, "x", "0123456789abcdef: removed", 0,
	    NULL);
	cr_assert_null(field(&e, "QUEUE_ID"));
	log_journal_entry(&e, LOG_INFO, "x", "0123456789ABCDE: removed", 0,
	    NULL);
	cr_assert_null(field(&e, "QUEUE_ID"));
	log_journal_entry(&e, LOG_INFO, "x", "0123456789ABCDEF removed", 0,
	    NULL);
	cr_assert_null(field(&e, "QUEUE_ID"));
	log_journal_entry(&e, LOG_INFO, "x", "0123456789ABCDEF", 0, NULL);
	cr_assert_null(field(&e, "QUEUE_ID"));
	/* Given fields win over the line; only one QUEUE_ID. */
	{
		struct log_fields f = { "FEDCBA9876543210", NULL, NULL,
		    NULL };

		log_journal_entry(&e, LOG_INFO, "x",
		    "0123456789ABCDEF: removed", 0, &f);
		cr_assert_str_eq(field(&e, "QUEUE_ID"), "FEDCBA9876543210");
		cr_assert_eq(count(&e, "QUEUE_ID"), 1);
	}
}

Test(log, errno_and_priority)
{
	struct log_entry e;

	log_journal_entry(&e, LOG_WARNING, "smarthostctl",
	    "cannot open x: No such file or directory", 2, NULL);
	cr_assert_str_eq(field(&e, "PRIORITY"), "4");
	cr_assert_str_eq(field(&e, "ERRNO"), "2");
	cr_assert_str_eq(field(&e, "SYSLOG_IDENTIFIER"), "smarthostctl");
}

Test(log, values_are_escaped)
{
	struct log_fields f = { NULL, "evil\nRELAY=forged\x1b[31m", "sent",
	    "2.0.0\r" };
	struct log_entry e;
	int i;

	log_journal_entry(&e, LOG_INFO, "smarthostd", "a\nb", 0, &f);
	cr_assert_str_eq(field(&e, "RELAY"), "evil\\x0aRELAY=forged\\x1b[31m");
	cr_assert_str_eq(field(&e, "DSN"), "2.0.0\\x0d");
	cr_assert_str_eq(field(&e, "MESSAGE"), "a\\x0ab");
	cr_assert_eq(count(&e, "RELAY"), 1);
	/* No field holds a byte below 0x20: the native protocol's simple
	 * form stays one field per line. */
	for (i = 0; i < e.n; i++) {
		const unsigned char *p = e.iov[i].iov_base;
		size_t j;

		for (j = 0; j < e.iov[i].iov_len; j++)
			cr_assert_geq(p[j], 0x20, "field %d byte %zu", i, j);
	}
}

Test(log, long_values_are_cut_not_overflowed)
{
	static char big[3 * LOG_JOURNAL_BUF];
	struct log_fields f = { NULL, big, "deferred", "4.0.0" };
	struct log_entry e;
	int i;

	memset(big, 'r', sizeof(big) - 1);
	log_journal_entry(&e, LOG_INFO, "smarthostd", big, 0, &f);
	cr_assert_leq(e.n, LOG_JOURNAL_FIELDS);
	for (i = 0; i < e.n; i++) {
		const char *p = e.iov[i].iov_base;

		cr_assert_geq(p, e.buf);
		cr_assert_leq(p + e.iov[i].iov_len, e.buf + sizeof(e.buf));
	}
	cr_assert_eq(e.n, 6);
	cr_assert_eq(strlen(field(&e, "MESSAGE")), 4096);
	cr_assert_eq(strlen(field(&e, "RELAY")), 256);
	cr_assert_str_eq(field(&e, "PRIORITY"), "6");
	cr_assert_str_eq(field(&e, "STATUS"), "deferred");
	cr_assert_str_eq(field(&e, "DSN"), "4.0.0");
}

Test(log, journal_stream_match)
{
	cr_assert(log_journal_stream_is("8:123456", 8, 123456));
	cr_assert_not(log_journal_stream_is("8:123456", 8, 123457));
	cr_assert_not(log_journal_stream_is("9:123456", 8, 123456));
	cr_assert_not(log_journal_stream_is(NULL, 8, 123456));
	cr_assert_not(log_journal_stream_is("", 0, 0));
	cr_assert_not(log_journal_stream_is("8:", 8, 0));
	cr_assert_not(log_journal_stream_is(":123456", 0, 123456));
	cr_assert_not(log_journal_stream_is("8:123456x", 8, 123456));
	cr_assert_not(log_journal_stream_is("-8:123456", 8, 123456));
	cr_assert_not(log_journal_stream_is("8:-5", 8, 0));
}

/* What the daemon wrote to stderr while fn ran, stderr being a pipe (no
 * terminal, no journal): Criterion runs each test in a process of its own. */
static char *
stderr_of(void (*fn)(void))
{
	static char buf[16384];
	size_t len = 0;
	ssize_t n;
	int p[2], saved;

	unsetenv("JOURNAL_STREAM");
	cr_assert_eq(pipe(p), 0);
	saved = dup(STDERR_FILENO);
	cr_assert_neq(dup2(p[1], STDERR_FILENO), -1);
	close(p[1]);
	log_init("test_log", 1);
	fn();
	cr_assert_neq(dup2(saved, STDERR_FILENO), -1);
	close(saved);
	while (len < sizeof(buf) - 1 &&
	    (n = read(p[0], buf + len, sizeof(buf) - 1 - len)) > 0)
		len += (size_t)n;
	close(p[0]);
	buf[len] = '\0';
	return buf;
}

static void
short_lines(void)
{
	log_info("a=1 b=%s", "x\ry");
	log_warnx("careful");
	errno = ENOENT;
	log_warn("open %s", "f");
	log_debug("detail %d", 7);
}

/* One line per call: the sd-daemon priority, the escaped text, errno's
 * text for log_warn, a newline. */
Test(log, stderr_lines_carry_priority_and_escaped_text)
{
	cr_assert_str_eq(stderr_of(short_lines),
	    "<6>a=1 b=x\\x0dy\n"
	    "<4>careful\n"
	    "<4>open f: No such file or directory\n"
	    "<7>detail 7\n");
}

static void
long_line(void)
{
	char big[6000];

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	log_info("%s", big);
	log_info("after");
}

/* A text longer than a line is cut, and the newline still ends it. */
Test(log, stderr_long_line_is_cut_before_its_newline)
{
	const char *out = stderr_of(long_line), *nl;

	cr_assert(strncmp(out, "<6>xxx", 6) == 0);
	nl = strchr(out, '\n');
	cr_assert_not_null(nl);
	cr_assert_eq(nl - out + 1, 4096, "line of %td bytes", nl - out + 1);
	cr_assert_eq(strspn(out + 3, "x"), 4092);
	cr_assert_str_eq(nl + 1, "<6>after\n");
}
