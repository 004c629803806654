/*
 * Delivery status notifications. The composer is pure: envelope, failed
 * recipients and header bytes in, an RFC 3464 multipart/report out, with
 * CRLF line ends throughout and every value we did not write ourselves
 * (replies, addresses) flattened to one line so that it cannot break the
 * MIME structure. dsn_send() is the only part with I/O: the header section
 * is read from the spool on a worker thread, the result is committed like
 * any other message, and the callback hands the new envelope back to the
 * scheduler, which keeps this module free of a dependency on it.
 *
 * Invariant: a notification always has the null sender and ENVELOPE_BOUNCE,
 * and dsn_wanted() refuses both, so notifications never loop.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dsn.h"
#include "escape.h"
#include "log.h"
#include "message.h"
#include "strbuf.h"
#include "xmalloc.h"

/* The longest value buf_flat() writes on one header line. */
#define DSN_FLAT_MAX 900

/* Appends s on one line: line ends (a multi-line reply's) become spaces,
 * every other control byte is escaped by escape_printable() so it cannot
 * break the MIME structure or a terminal, and the result is cut to keep
 * the line well under 998 bytes. */
static void
buf_flat(struct strbuf *b, const char *s)
{
	char flat[DSN_FLAT_MAX], out[DSN_FLAT_MAX + 1];
	size_t n;

	for (n = 0; s[n] != '\0' && n < sizeof(flat); n++)
		flat[n] = s[n] == '\r' || s[n] == '\n' ? ' ' : s[n];
	strbuf_add(b, out, escape_printable(out, sizeof(out), flat, n));
}

/* Appends text with every line end (CRLF, LF or CR) made CRLF; a missing
 * final line end is added. */
static void
buf_crlf(struct strbuf *b, const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		if (s[i] == '\r') {
			if (i + 1 < len && s[i + 1] == '\n')
				i++;
			strbuf_add(b, "\r\n", 2);
		} else if (s[i] == '\n')
			strbuf_add(b, "\r\n", 2);
		else
			strbuf_add(b, s + i, 1);
	}
	if (len > 0 && s[len - 1] != '\n' && s[len - 1] != '\r')
		strbuf_add(b, "\r\n", 2);
}

/* 1 if there are recipients and every one is DSN_ACTION_DELAYED. */
static int
dsn_all_delayed(const struct dsn_rcpt *rcpts, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (rcpts[i].action != DSN_ACTION_DELAYED)
			return 0;
	return n > 0;
}

/* The human-readable warning of a delay notification, as Postfix words
 * it: how long the message has waited and until when it is retried. */
static void
dsn_delay_text(struct strbuf *b, const struct envelope *orig,
    time_t retry_until, time_t now)
{
	char date[64];
	long long waited = now > orig->created ?
	    (long long)(now - orig->created) : 0;

	strbuf_adds(b, "####################################################"
	    "################\r\n"
	    "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR "
	    "MESSAGE. #\r\n"
	    "####################################################"
	    "################\r\n\r\n");
	strbuf_addf(b, "Your message could not be delivered for %lld hour(s) "
	    "%lld minute(s).\r\n", waited / 3600, waited % 3600 / 60);
	if (retry_until != 0) {
		message_date(retry_until, date, sizeof(date));
		strbuf_addf(b, "It will be retried until %s.\r\n", date);
	}
	strbuf_adds(b, "\r\n");
}

/* Action, Status and, for a delay, Will-Retry-Until of one recipient. */
static void
dsn_action_fields(struct strbuf *b, const struct dsn_rcpt *r)
{
	int delayed = r->action == DSN_ACTION_DELAYED;
	char date[64];

	strbuf_adds(b, delayed ? "\r\nAction: delayed\r\nStatus: " :
	    "\r\nAction: failed\r\nStatus: ");
	/* A delay's status is always 4.x.x (RFC 3463: persistent
	 * transient), whatever the last attempt left behind. */
	if (delayed)
		buf_flat(b, r->status != NULL && r->status[0] == '4' ?
		    r->status : "4.0.0");
	else
		buf_flat(b, r->status != NULL && r->status[0] != '\0' ?
		    r->status : "5.0.0");
	strbuf_adds(b, "\r\n");
	if (delayed && r->retry_until != 0) {
		message_date(r->retry_until, date, sizeof(date));
		strbuf_addf(b, "Will-Retry-Until: %s\r\n", date);
	}
}

int
dsn_wanted(const struct envelope *env)
{
	if (env->sender == NULL || env->sender[0] == '\0')
		return 0;
	if (env->flags & ENVELOPE_BOUNCE)
		return 0;
	return 1;
}

int
dsn_is_server_reply(const char *reply)
{
	if (reply == NULL)
		return 0;
	return reply[0] >= '2' && reply[0] <= '5' &&
	    reply[1] >= '0' && reply[1] <= '9' &&
	    reply[2] >= '0' && reply[2] <= '9' &&
	    (reply[3] == ' ' || reply[3] == '\0');
}

size_t
dsn_header_length(const char *buf, size_t len)
{
	size_t i, lastline = 0, limit;

	limit = len < DSN_HEADERS_MAX ? len : DSN_HEADERS_MAX;
	for (i = 0; i < limit; i++) {
		if (buf[i] != '\n')
			continue;
		/* A line that is empty or holds only a CR ends the section. */
		if (i == lastline || (i == lastline + 1 &&
		    buf[lastline] == '\r'))
			return lastline;
		lastline = i + 1;
	}
	if (len <= DSN_HEADERS_MAX)
		return len;
	/* Too long: keep whole lines only (all of them if there is none). */
	return lastline > 0 ? lastline : limit;
}

/* What every part of one notification needs to know. */
struct dsn_layout {
	const char *hostname;
	const char *boundary;
	int text8;      /* the sender or a recipient address is not ASCII */
	int hdr8;       /* the copied header section is not */
	int delayed;    /* a delay warning, not a bounce */
};

/* The notification's own header section and the MIME preamble. */
static void
dsn_head(struct strbuf *b, const struct dsn_layout *l,
    const struct envelope *orig, const char *id, time_t now)
{
	char date[64];

	message_date(now, date, sizeof(date));
	strbuf_addf(b, "From: MAILER-DAEMON@%s (Mail Delivery System)\r\n",
	    l->hostname);
	strbuf_adds(b, "To: <");
	buf_flat(b, orig->sender);
	strbuf_adds(b, ">\r\n");
	strbuf_adds(b, l->delayed ?
	    "Subject: Delayed Mail (still being retried)\r\n" :
	    "Subject: Undelivered Mail Returned to Sender\r\n");
	strbuf_addf(b, "Date: %s\r\n", date);
	strbuf_addf(b, "Message-ID: <%s.%lld@%s>\r\n", id, (long long)now,
	    l->hostname);
	strbuf_adds(b, "Auto-Submitted: auto-replied\r\n");
	strbuf_adds(b, "MIME-Version: 1.0\r\n");
	strbuf_adds(b, "Content-Type: multipart/report; "
	    "report-type=delivery-status;\r\n");
	strbuf_addf(b, "\tboundary=\"%s\"\r\n", l->boundary);
	if (l->text8 || l->hdr8)
		strbuf_adds(b, "Content-Transfer-Encoding: 8bit\r\n");
	strbuf_adds(b, "\r\n");
	strbuf_adds(b, "This is a MIME-encapsulated message.\r\n\r\n");
}

/* One recipient in the human-readable part: its address, "host H said:"
 * when a remote server replied, and why (our reason, else the reply). */
static void
dsn_rcpt_text(struct strbuf *b, const struct dsn_rcpt *r)
{
	const char *why = r->reason != NULL ? r->reason : r->diagnostic;

	strbuf_adds(b, "<");
	buf_flat(b, r->addr);
	strbuf_adds(b, ">: ");
	if (r->remote_mta != NULL && r->diagnostic != NULL) {
		strbuf_adds(b, "host ");
		buf_flat(b, r->remote_mta);
		strbuf_adds(b, " said: ");
	}
	buf_flat(b, why != NULL ? why : "delivery failed");
	strbuf_adds(b, "\r\n\r\n");
}

/* The human-readable part: the warning or the apology, then every
 * recipient. */
static void
dsn_text_part(struct strbuf *b, const struct dsn_layout *l,
    const struct envelope *orig, const struct dsn_rcpt *rcpts, size_t n,
    time_t now)
{
	size_t i;

	strbuf_addf(b, "--%s\r\n", l->boundary);
	strbuf_adds(b, "Content-Description: Notification\r\n");
	strbuf_addf(b, "Content-Type: text/plain; charset=%s\r\n",
	    l->text8 ? "utf-8" : "us-ascii");
	if (l->text8)
		strbuf_adds(b, "Content-Transfer-Encoding: 8bit\r\n");
	strbuf_adds(b, "\r\n");
	strbuf_addf(b, "This is the mail system at host %s.\r\n\r\n",
	    l->hostname);
	if (l->delayed)
		dsn_delay_text(b, orig, rcpts[0].retry_until, now);
	else
		strbuf_adds(b, "I'm sorry to have to inform you that your "
		    "message could not\r\nbe delivered to one or more "
		    "recipients. It's attached below.\r\n\r\n");
	strbuf_adds(b, "The mail system\r\n\r\n");
	for (i = 0; i < n; i++)
		dsn_rcpt_text(b, &rcpts[i]);
}

/* One recipient's fields in the machine-readable part (RFC 3464). */
static void
dsn_rcpt_fields(struct strbuf *b, const struct dsn_rcpt *r)
{
	strbuf_adds(b, "\r\nFinal-Recipient: rfc822; ");
	buf_flat(b, r->addr);
	dsn_action_fields(b, r);
	if (r->remote_mta != NULL) {
		strbuf_adds(b, "Remote-MTA: dns; ");
		buf_flat(b, r->remote_mta);
		strbuf_adds(b, "\r\n");
	}
	if (r->diagnostic != NULL) {
		strbuf_adds(b, "Diagnostic-Code: smtp; ");
		buf_flat(b, r->diagnostic);
		strbuf_adds(b, "\r\n");
	}
}

/* The machine-readable part: message/delivery-status, the per-message
 * fields, then every recipient's. */
static void
dsn_status_part(struct strbuf *b, const struct dsn_layout *l,
    const struct envelope *orig, const struct dsn_rcpt *rcpts, size_t n)
{
	char date[64];
	size_t i;

	strbuf_addf(b, "--%s\r\n", l->boundary);
	strbuf_adds(b, "Content-Description: Delivery report\r\n");
	strbuf_adds(b, "Content-Type: message/delivery-status\r\n\r\n");
	strbuf_addf(b, "Reporting-MTA: dns; %s\r\n", l->hostname);
	strbuf_adds(b, "X-Smarthostd-Queue-ID: ");
	buf_flat(b, orig->id);
	strbuf_adds(b, "\r\n");
	message_date(orig->created, date, sizeof(date));
	strbuf_addf(b, "Arrival-Date: %s\r\n", date);
	for (i = 0; i < n; i++)
		dsn_rcpt_fields(b, &rcpts[i]);
	strbuf_adds(b, "\r\n");
}

/* The original message's header section as the last part, then the
 * closing boundary. */
static void
dsn_headers_part(struct strbuf *b, const struct dsn_layout *l,
    const char *headers, size_t hlen)
{
	strbuf_addf(b, "--%s\r\n", l->boundary);
	strbuf_adds(b, l->delayed ?
	    "Content-Description: Delayed Message Headers\r\n" :
	    "Content-Description: Undelivered Message Headers\r\n");
	strbuf_adds(b, "Content-Type: text/rfc822-headers\r\n");
	if (l->hdr8)
		strbuf_adds(b, "Content-Transfer-Encoding: 8bit\r\n");
	strbuf_adds(b, "\r\n");
	buf_crlf(b, headers, hlen);
	strbuf_addf(b, "\r\n--%s--\r\n", l->boundary);
}

char *
dsn_compose(const struct envelope *orig, const struct dsn_rcpt *rcpts,
    size_t n, const char *headers, size_t hlen, const char *hostname,
    const char *id, time_t now, size_t *len)
{
	struct strbuf b = STRBUF_INIT;
	struct dsn_layout l;
	char boundary[256];
	size_t i;

	l.text8 = message_has_8bit(orig->sender, strlen(orig->sender));
	for (i = 0; i < n; i++)
		if (message_has_8bit(rcpts[i].addr, strlen(rcpts[i].addr)))
			l.text8 = 1;
	l.hdr8 = message_has_8bit(headers, hlen);
	l.delayed = dsn_all_delayed(rcpts, n);

	/* The new queue id and the time: the copied headers were written
	 * before either existed, so they cannot contain the boundary. */
	snprintf(boundary, sizeof(boundary), "%s.%lld/%s", id,
	    (long long)now, hostname);
	l.hostname = hostname;
	l.boundary = boundary;

	dsn_head(&b, &l, orig, id, now);
	dsn_text_part(&b, &l, orig, rcpts, n, now);
	dsn_status_part(&b, &l, orig, rcpts, n);
	dsn_headers_part(&b, &l, headers, hlen);
	return strbuf_take(&b, len);
}

struct envelope *
dsn_envelope(const struct envelope *orig, time_t now)
{
	struct envelope *env;

	env = envelope_new();
	free(env->sender);
	env->sender = xstrdup("");
	envelope_add_rcpt(env, orig->sender);
	env->relay = orig->relay != NULL ? xstrdup(orig->relay) : NULL;
	env->flags = ENVELOPE_BOUNCE;
	/* An internationalized sender can only be reached with SMTPUTF8. */
	if ((orig->flags & ENVELOPE_SMTPUTF8) &&
	    message_has_8bit(orig->sender, strlen(orig->sender)))
		env->flags |= ENVELOPE_SMTPUTF8 | ENVELOPE_8BITMIME;
	env->created = now;
	env->next_try = 0;
	env->attempts = 0;
	return env;
}

/*
 * The job: stage 1 on a worker reads the header section; stage 2 on the
 * loop composes and starts the commit; stage 3 is the commit callback.
 * cancelled may be set at any stage; the job then only frees itself.
 */
/* A dsn_rcpt that owns its strings. */
struct dsn_rcpt_copy {
	char *addr;
	char *status;
	char *diagnostic;
	char *remote_mta;
	char *reason;
	enum dsn_action action;
	time_t retry_until;
};

struct dsn_job {
	struct queue *q;
	struct envelope *orig;
	struct dsn_rcpt_copy *rcpts;
	size_t n;
	char *hostname;
	dsn_sent_fn sent;
	void *arg;
	int cancelled;

	int fd;          /* body, -1 if it could not be opened */
	char *headers;
	size_t hlen;
};

static void
dsn_job_free(struct dsn_job *job)
{
	size_t i;

	if (job == NULL)
		return;
	for (i = 0; i < job->n; i++) {
		free(job->rcpts[i].addr);
		free(job->rcpts[i].status);
		free(job->rcpts[i].diagnostic);
		free(job->rcpts[i].remote_mta);
		free(job->rcpts[i].reason);
	}
	free(job->rcpts);
	envelope_free(job->orig);
	free(job->hostname);
	free(job->headers);
	if (job->fd != -1)
		close(job->fd);
	free(job);
}

static char *
strdup_or_null(const char *s)
{
	return s != NULL ? xstrdup(s) : NULL;
}

/* Worker thread: only the job's own memory and fd are touched. */
static void
dsn_read_headers(void *arg)
{
	struct dsn_job *job = arg;
	size_t want, got = 0;
	ssize_t r;

	if (job->fd == -1)
		return;
	want = job->orig->body_size < DSN_HEADERS_MAX + 2 ?
	    (size_t)job->orig->body_size : DSN_HEADERS_MAX + 2;
	job->headers = malloc(want + 1);
	if (job->headers == NULL)
		return;
	while (got < want) {
		r = pread(job->fd, job->headers + got, want - got,
		    job->orig->body_offset + (off_t)got);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	job->hlen = dsn_header_length(job->headers, got);
}

static void
dsn_committed(int error, struct envelope *env, void *arg)
{
	struct dsn_job *job = arg;

	if (job->cancelled) {
		envelope_free(env);
		dsn_job_free(job);
		return;
	}
	if (error != 0) {
		log_warnx("%s: cannot queue non-delivery notification: %s",
		    job->orig->id, strerror(error));
		env = NULL;
	} else
		log_info("%s: sender %s notification: %s", job->orig->id,
		    job->n > 0 && job->rcpts[0].action == DSN_ACTION_DELAYED ?
		    "delay" : "non-delivery", env->id);
	job->sent(env, job->arg);
	dsn_job_free(job);
}

static void
dsn_compose_commit(void *arg)
{
	struct dsn_job *job = arg;
	struct envelope *env;
	struct queue_txn *txn;
	struct dsn_rcpt *view;
	char *msg;
	size_t len, i;
	time_t now = time(NULL);

	if (job->cancelled) {
		dsn_job_free(job);
		return;
	}
	if (job->fd == -1 || job->headers == NULL)
		log_warnx("%s: original headers unavailable for the "
		    "non-delivery notification", job->orig->id);
	/* Done with the original's file: once it is removed, queue.c may
	 * reuse it for another message (queue.h). */
	if (job->fd != -1) {
		close(job->fd);
		job->fd = -1;
	}
	env = dsn_envelope(job->orig, now);
	if ((txn = queue_txn_begin(job->q, env)) == NULL) {
		log_warn("%s: cannot queue non-delivery notification",
		    job->orig->id);
		envelope_free(env);
		job->sent(NULL, job->arg);
		dsn_job_free(job);
		return;
	}
	envelope_free(env);
	view = xcalloc(job->n, sizeof(*view));
	for (i = 0; i < job->n; i++) {
		view[i].addr = job->rcpts[i].addr;
		view[i].status = job->rcpts[i].status;
		view[i].diagnostic = job->rcpts[i].diagnostic;
		view[i].remote_mta = job->rcpts[i].remote_mta;
		view[i].reason = job->rcpts[i].reason;
		view[i].action = job->rcpts[i].action;
		view[i].retry_until = job->rcpts[i].retry_until;
	}
	msg = dsn_compose(job->orig, view, job->n,
	    job->headers != NULL ? job->headers : "", job->hlen,
	    job->hostname, queue_txn_id(txn), now, &len);
	free(view);
	/* A write error is reported again by the commit. */
	(void)queue_txn_write(txn, msg, len);
	free(msg);
	queue_txn_commit(txn, dsn_committed, job);
}

struct dsn_job *
dsn_send(struct queue *q, struct worker *w, const struct envelope *orig,
    const struct dsn_rcpt *rcpts, size_t n, const char *hostname,
    dsn_sent_fn sent, void *arg)
{
	struct dsn_job *job;
	size_t i;

	job = xcalloc(1, sizeof(*job));
	job->q = q;
	job->orig = envelope_dup(orig);
	job->orig->body_offset = orig->body_offset;
	job->orig->body_size = orig->body_size;
	job->rcpts = xcalloc(n, sizeof(*job->rcpts));
	for (i = 0; i < n; i++) {
		job->rcpts[i].addr = xstrdup(rcpts[i].addr);
		job->rcpts[i].status = strdup_or_null(rcpts[i].status);
		job->rcpts[i].diagnostic = strdup_or_null(rcpts[i].diagnostic);
		job->rcpts[i].remote_mta = strdup_or_null(rcpts[i].remote_mta);
		job->rcpts[i].reason = strdup_or_null(rcpts[i].reason);
		job->rcpts[i].action = rcpts[i].action;
		job->rcpts[i].retry_until = rcpts[i].retry_until;
	}
	job->n = n;
	job->hostname = xstrdup(hostname);
	job->sent = sent;
	job->arg = arg;
	/* The open is cheap and queue.c is a loop-thread API; only the
	 * reads go to the worker. */
	if ((job->fd = queue_body_open(q, orig)) == -1)
		log_warn("%s: cannot open queue file for the non-delivery "
		    "notification", orig->id);
	worker_run(w, dsn_read_headers, dsn_compose_commit, job);
	return job;
}

void
dsn_cancel(struct dsn_job *job)
{
	if (job != NULL)
		job->cancelled = 1;
}
