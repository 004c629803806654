/*
 * Delivery status notifications (RFC 3464) for recipients that failed for
 * good, and delay notifications (Action: delayed) for recipients still
 * pending after delay_warning: a multipart/report message to the envelope
 * sender, from the null sender, flagged ENVELOPE_BOUNCE so that it is never
 * bounced or warned about itself, and queued like any other message. Composition is a pure function over
 * memory; dsn_send() reads the original header section off the loop thread,
 * composes, and commits the notification to the queue.
 */
#ifndef SMARTHOST_DSN_H
#define SMARTHOST_DSN_H

#include <stddef.h>
#include <time.h>

#include "envelope.h"
#include "queue.h"
#include "worker.h"

/* At most this much of the original header section is returned. */
#define DSN_HEADERS_MAX (64 * 1024)

enum dsn_action {
	DSN_ACTION_FAILED = 0, /* Action: failed, a 5.x.x or expired 4.x.x */
	DSN_ACTION_DELAYED,    /* Action: delayed, still being retried */
};

/* One failed or delayed recipient as the report describes it. */
struct dsn_rcpt {
	const char *addr;
	const char *status;     /* enhanced code, "5.1.1" */
	const char *diagnostic; /* the server's reply ("550 5.1.1 ..."), or
	                           NULL when no server said it */
	const char *remote_mta; /* host name of that server, or NULL */
	const char *reason;     /* human-readable text, or NULL: diagnostic */
	enum dsn_action action;
	time_t retry_until;     /* DSN_ACTION_DELAYED: Will-Retry-Until */
};

/* 1 if failed recipients of env get a notification: never for the null
 * sender or for a notification we made (ENVELOPE_BOUNCE), 0 otherwise. */
int dsn_wanted(const struct envelope *env);

/* 1 if reply looks like a server's reply ("550 ..."), which the report
 * carries as Diagnostic-Code; 0 for our own reasons or NULL. */
int dsn_is_server_reply(const char *reply);

/*
 * The length of the header section at the start of buf (len bytes of a
 * message, CRLF or LF lines), without the empty line that ends it: all of
 * buf if it has no empty line. Cut at the last complete line when longer
 * than DSN_HEADERS_MAX.
 */
size_t dsn_header_length(const char *buf, size_t len);

/*
 * Composes the notification for orig's recipients rcpts[0..n-1]: a delay
 * notification ("Delayed Mail (still being retried)", a warning only) when
 * every one of them is DSN_ACTION_DELAYED, else a non-delivery one;
 * headers (From: MAILER-DAEMON@hostname, To: the sender, Subject, Date,
 * Message-ID built from id, Auto-Submitted, MIME-Version), a text part, a
 * message/delivery-status part and a text/rfc822-headers part holding
 * headers (hlen bytes, any line ends). Every line ends with CRLF. Returns a
 * malloc'd buffer (caller frees) and its length in *len.
 */
char *dsn_compose(const struct envelope *orig, const struct dsn_rcpt *rcpts,
    size_t n, const char *headers, size_t hlen, const char *hostname,
    const char *id, time_t now, size_t *len);

/*
 * A new envelope for the notification of orig: null sender, orig's sender
 * as the only recipient, ENVELOPE_BOUNCE, orig's relay. Caller frees.
 */
struct envelope *dsn_envelope(const struct envelope *orig, time_t now);

struct dsn_job;

/* Called on the loop thread when the notification was committed (env is
 * its envelope; the callee owns it) or could not be (env is NULL; the
 * reason was logged). */
typedef void (*dsn_sent_fn)(struct envelope *env, void *arg);

/*
 * Sends a notification for orig's failed or delayed recipients (everything
 * is copied; orig may change or go after the call). Reads the original
 * headers from the queue on a worker thread, composes, and commits; logs
 * "ID: sender non-delivery notification: NEWID" (or "sender delay
 * notification") on success. sent runs
 * exactly once, never from inside this call, unless the job is cancelled.
 */
struct dsn_job *dsn_send(struct queue *q, struct worker *w,
    const struct envelope *orig, const struct dsn_rcpt *rcpts, size_t n,
    const char *hostname, dsn_sent_fn sent, void *arg);
/* Makes sure sent will not run; the job frees itself when it can. */
void dsn_cancel(struct dsn_job *job);

#endif
