/*
 * metrics.c: counts by relay and outcome, histogram buckets, label
 * escaping, and the exposition's shape.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "metrics.h"

static void
reset(void)
{
	metrics_reset();
}

TestSuite(metrics, .init = reset);

static char *
expose(size_t queued, double oldest)
{
	struct metrics_gauges g = { queued, oldest, 2 };

	return metrics_format(&g);
}

Test(metrics, counts_per_relay_and_outcome)
{
	char *text;

	metrics_rcpt("smtp.example.com[192.0.2.1]:587", "sent", 0.3);
	metrics_rcpt("smtp.example.com[192.0.2.1]:587", "sent", 2);
	metrics_rcpt("smtp.example.com[192.0.2.1]:587", "deferred", 1);
	metrics_rcpt("backup.example.com[192.0.2.2]:25", "bounced", 1);
	metrics_rcpt("none", "expired", 1);
	metrics_rcpt("none", "queued", 1);	/* not an outcome: ignored */
	metrics_auth_failure("upstream");
	metrics_accepted("smtp", 0.002);
	metrics_session();
	metrics_session();
	text = expose(3, 120);
	cr_assert_not_null(strstr(text,
	    "smarthostd_delivered_total{relay=\"smtp.example.com\"} 2\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_deferred_total{relay=\"smtp.example.com\"} 1\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_bounced_total{relay=\"backup.example.com\"} 1\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_expired_total{relay=\"none\"} 1\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_auth_failures_total{relay=\"upstream\"} 1\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_accepted_total{source=\"smtp\"} 1\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_accepted_total{source=\"maildrop\"} 0\n"));
	cr_assert_not_null(strstr(text, "smarthostd_sessions_total 2\n"));
	cr_assert_not_null(strstr(text, "smarthostd_sessions 2\n"));
	cr_assert_not_null(strstr(text, "smarthostd_queue_messages 3\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_queue_oldest_age_seconds 120\n"));
	cr_assert_not_null(strstr(text,
	    "# TYPE smarthostd_delivered_total counter\n"));
	free(text);
}

Test(metrics, histogram_buckets_are_cumulative)
{
	char *text;

	metrics_rcpt("r", "sent", 0.05);	/* <= 0.1 */
	metrics_rcpt("r", "sent", 0.7);		/* <= 1 */
	metrics_rcpt("r", "sent", 100000);	/* +Inf only */
	text = expose(0, 0);
	cr_assert_not_null(strstr(text,
	    "# TYPE smarthostd_delivery_latency_seconds histogram\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_delivery_latency_seconds_bucket{le=\"0.1\"} 1\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_delivery_latency_seconds_bucket{le=\"0.5\"} 1\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_delivery_latency_seconds_bucket{le=\"1\"} 2\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_delivery_latency_seconds_bucket{le=\"14400\"} 2\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_delivery_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_delivery_latency_seconds_count 3\n"));
	cr_assert_not_null(strstr(text,
	    "smarthostd_commit_latency_seconds_count 0\n"));
	free(text);
}

Test(metrics, label_values_are_escaped)
{
	char out[64];

	cr_assert_str_eq(metrics_label_escape(out, sizeof(out),
	    "a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
	/* Room is kept for a two-byte escape and the NUL. */
	cr_assert_str_eq(metrics_label_escape(out, 4, "abcdef"), "ab");
}
