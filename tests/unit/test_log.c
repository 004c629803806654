/*
 * log.c: the journal entry's fields (log_journal_entry) and the
 * JOURNAL_STREAM match.
 */
#include <string.h>
#include <syslog.h>

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
