/*
 * The metrics set: fixed counters and histograms plus a small list of
 * per-label counters (relay names are few: the configured relays, and
 * "none" for local reasons). Memory grows only with the number of
 * distinct relays seen, bounded by METRICS_LABELS_MAX; more are counted
 * under "other".
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "envelope.h"
#include "log.h"
#include "metrics.h"
#include "scheduler.h"
#include "smtp_server.h"
#include "xmalloc.h"

#define METRICS_LABELS_MAX 64
#define METRICS_LABEL_LEN 128

enum rcpt_outcome {
	OUT_DELIVERED,
	OUT_DEFERRED,
	OUT_BOUNCED,
	OUT_EXPIRED,
	OUT__COUNT
};

static const char *const outcome_status[] = {
	[OUT_DELIVERED] = "sent",
	[OUT_DEFERRED] = "deferred",
	[OUT_BOUNCED] = "bounced",
	[OUT_EXPIRED] = "expired",
};
static const char *const outcome_metric[] = {
	[OUT_DELIVERED] = "delivered",
	[OUT_DEFERRED] = "deferred",
	[OUT_BOUNCED] = "bounced",
	[OUT_EXPIRED] = "expired",
};
_Static_assert(sizeof(outcome_metric) / sizeof(*outcome_metric) ==
    OUT__COUNT, "outcome_metric out of date");

struct relay_counts {
	char name[METRICS_LABEL_LEN];
	unsigned long long rcpts[OUT__COUNT];
	unsigned long long auth_failures;
	unsigned long long connections;
	unsigned long long tls_resumed;
};

/* The per-relay counters beyond the recipient outcomes, as indices
 * after OUT__COUNT for out_relay_counter. */
enum relay_extra {
	REL_AUTH_FAILURES = OUT__COUNT,
	REL_CONNECTIONS,
	REL_TLS_RESUMED,
	REL__END
};

#define HIST_MAX 12

struct histogram {
	const char *name;
	const char *help;
	size_t nbounds;
	double bounds[HIST_MAX];
	unsigned long long counts[HIST_MAX]; /* per bucket, not cumulative */
	unsigned long long count;
	double sum;
};

#define SOURCES_MAX 8
#define SOURCE_LEN 32

struct source_count {
	char name[SOURCE_LEN];
	unsigned long long accepted;
};

static struct {
	unsigned long long sessions;
	struct source_count sources[SOURCES_MAX];
	size_t nsources;
	struct relay_counts relays[METRICS_LABELS_MAX];
	size_t nrelays;
} m;

static struct histogram commit_hist = {
	"smarthostd_commit_latency_seconds",
	"Time from the end of DATA to the message being durable in the queue.",
	9, { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1 }, {0}, 0, 0,
};
static struct histogram delivery_hist = {
	"smarthostd_delivery_latency_seconds",
	"Time from queueing to a recipient's delivery.",
	10, { 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 14400 }, {0}, 0, 0,
};

static void
hist_observe(struct histogram *h, double v)
{
	size_t i;

	if (v < 0)
		v = 0;
	for (i = 0; i < h->nbounds && v > h->bounds[i]; i++)
		;
	if (i < h->nbounds)
		h->counts[i]++;
	h->count++;
	h->sum += v;
}

static struct relay_counts *
relay_get(const char *name, size_t len)
{
	size_t i;

	if (len >= METRICS_LABEL_LEN)
		len = METRICS_LABEL_LEN - 1;
	for (i = 0; i < m.nrelays; i++)
		if (strncmp(m.relays[i].name, name, len) == 0 &&
		    m.relays[i].name[len] == '\0')
			return &m.relays[i];
	if (m.nrelays == METRICS_LABELS_MAX - 1) {
		name = "other";
		len = 5;
		for (i = 0; i < m.nrelays; i++)
			if (strcmp(m.relays[i].name, "other") == 0)
				return &m.relays[i];
		if (m.nrelays == METRICS_LABELS_MAX)
			return &m.relays[m.nrelays - 1];
	}
	memcpy(m.relays[m.nrelays].name, name, len);
	m.relays[m.nrelays].name[len] = '\0';
	return &m.relays[m.nrelays++];
}

void
metrics_session(void)
{
	m.sessions++;
}

/* The count for source; the last slot takes every source beyond it. */
static struct source_count *
source_get(const char *source)
{
	size_t i;

	for (i = 0; i < m.nsources; i++)
		if (strcmp(m.sources[i].name, source) == 0)
			return &m.sources[i];
	if (m.nsources == SOURCES_MAX)
		return &m.sources[SOURCES_MAX - 1];
	snprintf(m.sources[m.nsources].name, SOURCE_LEN, "%s", source);
	return &m.sources[m.nsources++];
}

void
metrics_accepted(const char *source, double commit_seconds)
{
	source_get(source)->accepted++;
	hist_observe(&commit_hist, commit_seconds);
}

void
metrics_rcpt(const char *relay, const char *status, double seconds)
{
	size_t i;

	for (i = 0; i < OUT__COUNT; i++)
		if (strcmp(status, outcome_status[i]) == 0)
			break;
	if (i == OUT__COUNT)
		return;
	relay_get(relay, strcspn(relay, "["))->rcpts[i]++;
	if (i == OUT_DELIVERED)
		hist_observe(&delivery_hist, seconds);
}

void
metrics_auth_failure(const char *relay)
{
	relay_get(relay, strlen(relay))->auth_failures++;
}

void
metrics_relay_connection(const char *relay, int tls_resumed)
{
	struct relay_counts *r = relay_get(relay, strlen(relay));

	r->connections++;
	if (tls_resumed)
		r->tls_resumed++;
}

void
metrics_reset(void)
{
	memset(&m, 0, sizeof(m));
	memset(commit_hist.counts, 0, sizeof(commit_hist.counts));
	commit_hist.count = 0;
	commit_hist.sum = 0;
	memset(delivery_hist.counts, 0, sizeof(delivery_hist.counts));
	delivery_hist.count = 0;
	delivery_hist.sum = 0;
}

char *
metrics_label_escape(char *out, size_t outlen, const char *value)
{
	size_t o = 0;

	for (; *value != '\0' && o + 3 <= outlen; value++) {
		if (*value == '\\' || *value == '"') {
			out[o++] = '\\';
			out[o++] = *value;
		} else if (*value == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else
			out[o++] = *value;
	}
	if (outlen > 0)
		out[o < outlen ? o : outlen - 1] = '\0';
	return out;
}

/* ---- exposition ---- */

struct out {
	char *p;
	size_t len, cap;
};

static void __attribute__((format(printf, 2, 3)))
out_addf(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
		va_end(ap);
		if (n < 0)
			fatalx("%s: vsnprintf", __func__);
		if ((size_t)n < o->cap - o->len)
			break;
		o->cap = o->cap * 2 + (size_t)n;
		o->p = xreallocarray(o->p, o->cap, 1);
	}
	o->len += (size_t)n;
}

static void
out_head(struct out *o, const char *name, const char *type, const char *help)
{
	out_addf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static unsigned long long
relay_value(const struct relay_counts *r, size_t what)
{
	switch (what) {
	case REL_AUTH_FAILURES:
		return r->auth_failures;
	case REL_CONNECTIONS:
		return r->connections;
	case REL_TLS_RESUMED:
		return r->tls_resumed;
	}
	return r->rcpts[what];
}

static const struct {
	const char *name;
	const char *help;
} relay_extra_metric[] = {
	[REL_AUTH_FAILURES - OUT__COUNT] = { "smarthostd_auth_failures_total",
	    "Credentials rejected by the upstream, per relay." },
	[REL_CONNECTIONS - OUT__COUNT] = {
	    "smarthostd_relay_connections_total",
	    "Upstream connections that became ready for mail (connected, "
	    "TLS, EHLO), per relay." },
	[REL_TLS_RESUMED - OUT__COUNT] = {
	    "smarthostd_relay_tls_resumed_total",
	    "Of those, connections whose TLS handshake resumed an earlier "
	    "session, per relay." },
};
_Static_assert(sizeof(relay_extra_metric) / sizeof(*relay_extra_metric) ==
    REL__END - OUT__COUNT, "relay_extra_metric out of date");

static void
out_relay_counter(struct out *o, size_t what)
{
	char name[96], help[160], label[METRICS_LABEL_LEN * 2];
	size_t i;

	if (what >= OUT__COUNT) {
		snprintf(name, sizeof(name), "%s",
		    relay_extra_metric[what - OUT__COUNT].name);
		snprintf(help, sizeof(help), "%s",
		    relay_extra_metric[what - OUT__COUNT].help);
	} else {
		snprintf(name, sizeof(name), "smarthostd_%s_total",
		    outcome_metric[what]);
		snprintf(help, sizeof(help), "Recipients %s (log status=%s), "
		    "per relay.", outcome_metric[what], outcome_status[what]);
	}
	out_head(o, name, "counter", help);
	for (i = 0; i < m.nrelays; i++)
		out_addf(o, "%s{relay=\"%s\"} %llu\n", name,
		    metrics_label_escape(label, sizeof(label),
		    m.relays[i].name), relay_value(&m.relays[i], what));
}

static void
out_histogram(struct out *o, const struct histogram *h)
{
	unsigned long long cum = 0;
	size_t i;

	out_head(o, h->name, "histogram", h->help);
	for (i = 0; i < h->nbounds; i++) {
		cum += h->counts[i];
		out_addf(o, "%s_bucket{le=\"%g\"} %llu\n", h->name,
		    h->bounds[i], cum);
	}
	out_addf(o, "%s_bucket{le=\"+Inf\"} %llu\n", h->name, h->count);
	out_addf(o, "%s_sum %.6f\n%s_count %llu\n", h->name, h->sum, h->name,
	    h->count);
}

char *
metrics_format(const struct metrics_gauges *g)
{
	char label[SOURCE_LEN * 2];
	struct out o;
	size_t i;

	o.cap = 4096;
	o.len = 0;
	o.p = xmalloc(o.cap);
	o.p[0] = '\0';
	/* Both sources always show, at 0 before their first message. */
	(void)source_get("smtp");
	(void)source_get("maildrop");
	out_head(&o, "smarthostd_accepted_total", "counter",
	    "Messages accepted into the queue, per source (smtp: SMTP "
	    "clients; maildrop: imported from smarthost-postdrop).");
	for (i = 0; i < m.nsources; i++)
		out_addf(&o, "smarthostd_accepted_total{source=\"%s\"} %llu\n",
		    metrics_label_escape(label, sizeof(label),
		    m.sources[i].name), m.sources[i].accepted);
	for (i = 0; i < REL__END; i++)
		out_relay_counter(&o, i);
	out_head(&o, "smarthostd_sessions_total", "counter",
	    "Inbound SMTP sessions since start.");
	out_addf(&o, "smarthostd_sessions_total %llu\n", m.sessions);
	out_head(&o, "smarthostd_sessions", "gauge",
	    "Inbound SMTP sessions open now.");
	out_addf(&o, "smarthostd_sessions %u\n", g->sessions_active);
	out_head(&o, "smarthostd_queue_messages", "gauge",
	    "Messages in the queue.");
	out_addf(&o, "smarthostd_queue_messages %zu\n", g->queued);
	out_head(&o, "smarthostd_queue_oldest_age_seconds", "gauge",
	    "Age of the oldest queued message; 0 when the queue is empty.");
	out_addf(&o, "smarthostd_queue_oldest_age_seconds %.0f\n",
	    g->oldest_age);
	out_histogram(&o, &commit_hist);
	out_histogram(&o, &delivery_hist);
	return o.p;
}

char *
metrics_collect(struct scheduler *sched, const struct smtp_server *srv)
{
	struct metrics_gauges g;
	time_t oldest, now = time(NULL);

	/* From the queue ids: no file is read for a scrape. */
	oldest = scheduler_oldest(sched);
	g.queued = scheduler_count(sched);
	g.oldest_age = oldest != 0 && now > oldest ? (double)(now - oldest) :
	    0;
	g.sessions_active = srv != NULL ? smtp_server_sessions(srv) : 0;
	return metrics_format(&g);
}
