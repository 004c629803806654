/*
 * Counters, gauges and histograms of the running daemon, and their
 * Prometheus text exposition (format 0.0.4), for `smarthostctl metrics`.
 *
 * One process-wide set, touched only on the loop thread: the modules that
 * see an event count it (smtp_server: sessions, accepted messages and the
 * commit latency; relay_log_rcpt: every recipient outcome, per relay, and
 * the delivery latency of the sent ones; the scheduler: rejected
 * credentials per relay; relay.c: upstream connections and TLS sessions
 * resumed, per relay). Gauges are read at exposition time
 * (metrics_collect). Counts start at 0 with the process.
 */
#ifndef SMARTHOST_METRICS_H
#define SMARTHOST_METRICS_H

#include <stddef.h>

/* An inbound SMTP session began. */
void metrics_session(void);
/*
 * A message was committed to the queue, commit_seconds after its commit
 * began; source is the label it is counted under: "smtp" for an SMTP
 * client, "maildrop" for a message imported from the maildrop. At most 8
 * distinct sources are kept; later ones count under the eighth.
 */
void metrics_accepted(const char *source, double commit_seconds);
/*
 * One recipient's outcome as logged (status "sent", "deferred",
 * "bounced" or "expired") through relay (the log's relay= text; only the
 * part before '[' is the label), seconds after the message was queued.
 * Other statuses are ignored.
 */
void metrics_rcpt(const char *relay, const char *status, double seconds);
/* The upstream relay (its configured name) rejected our credentials. */
void metrics_auth_failure(const char *relay);
/* A connection to relay (its configured name) became ready for mail;
 * tls_resumed when its TLS handshake resumed a session. */
void metrics_relay_connection(const char *relay, int tls_resumed);

/* Values read when the exposition is made. */
struct metrics_gauges {
	size_t queued;             /* messages in the queue */
	double oldest_age;         /* seconds; 0 with an empty queue */
	unsigned sessions_active;  /* inbound sessions open now */
};

/* The exposition text (every line ends with LF), malloc'd; caller frees. */
char *metrics_format(const struct metrics_gauges *g);

struct scheduler;
struct smtp_server;

/*
 * The running daemon's exposition: the counts with the gauges read now
 * from sched (queue size, oldest message's age) and srv (open sessions;
 * srv may be NULL). What `smarthostctl metrics` prints and GET /metrics
 * serves. Loop thread only; malloc'd, caller frees.
 */
char *metrics_collect(struct scheduler *sched, const struct smtp_server *srv);

/*
 * Pure: writes value into out (outlen bytes) as a Prometheus label value
 * (backslash, double quote and line feed escaped), cutting it rather than
 * overflowing. Returns out.
 */
char *metrics_label_escape(char *out, size_t outlen, const char *value);

/* Forgets every count (tests). */
void metrics_reset(void);

#endif
