/*
 * Relay sessions: the policy that sits above smtp_client. A session is
 * driven by the scheduler (ready -> send -> delivered -> ready ... -> quit
 * -> closed) and turns what the upstream said into recipient states:
 *
 *   RCPT 2xx     accepted; the DATA reply settles it (2xx sent, 5xx failed,
 *                4xx pending)
 *   RCPT 5xx     failed for good (a bounce follows)
 *   RCPT 4xx     pending, with the reply
 *   MAIL reject  applies to every recipient, like a DATA reply
 *   session gone every recipient not yet settled stays pending
 *
 * Only a 5xx (or the client refusing the message itself) makes a
 * recipient fail: a TLS, authentication or DNS problem is something an
 * operator fixes, so it defers and never bounces. States are kept aside
 * during the transaction and written into the envelope only when it ends,
 * so an aborted session (shutdown) leaves the envelope exactly as it was
 * before the attempt.
 *
 * A maildir relay runs the same cycle with one worker job per message.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <event2/event.h>

#include "log.h"
#include "maildir.h"
#include "relay.h"
#include "smtp_client.h"
#include "tls.h"
#include "xmalloc.h"

struct relay {
	struct event_base *base;
	struct evdns_base *dns;
	struct queue *q;
	struct worker *w;
	SSL_CTX *ssl_ctx;   /* NULL until a TLS session needs it */
	char *ca_file;      /* what ssl_ctx was made with */
	int verify;
};

enum rs_state {
	RS_CONNECTING, /* start event pending, or smtp_client connecting */
	RS_READY,      /* inside the owner's ready(): send or quit comes */
	RS_SENDING,    /* a message is in flight */
	RS_RESETTING,  /* transaction over, waiting for the client's ready */
	RS_QUITTING,   /* quit requested, closed() comes */
	RS_CLOSED,     /* closed() was called */
	RS__COUNT
};

static const char *const rs_state_names[] = {
	[RS_CONNECTING] = "connecting",
	[RS_READY] = "ready",
	[RS_SENDING] = "sending",
	[RS_RESETTING] = "resetting",
	[RS_QUITTING] = "quitting",
	[RS_CLOSED] = "closed",
};
_Static_assert(sizeof(rs_state_names) / sizeof(*rs_state_names) == RS__COUNT,
    "rs_state_names out of date");

enum tr_state {
	TR_WAITING,  /* no RCPT reply yet */
	TR_ACCEPTED, /* RCPT 2xx: the end of the transaction settles it */
	TR_SETTLED,  /* RCPT 4xx/5xx: final for this attempt */
};

/* One recipient of the message in flight. */
struct txn_rcpt {
	size_t idx;               /* in env->rcpts */
	enum tr_state state;
	enum rcpt_status status;  /* when settled */
	char dsn[16];
	char *reply;
};

struct maildir_job;

struct relay_session {
	enum rs_state state;
	enum relay_type type;
	struct relay *relay;
	const struct relay_session_cb *cb;
	void *arg;
	struct event *ev;        /* start, and closed() of a maildir quit */

	/* copied from the config */
	char *name;
	char *host;
	char *port;
	char *helo;
	char *maildir;
	char *hostname;
	enum tls_mode tls;
	unsigned timeout_connect;
	unsigned timeout_command;
	unsigned timeout_data;
	SSL_CTX *ssl_ctx;        /* our own reference; NULL without TLS */
	struct outcome start_error;
	int start_failed;

	char hostport[300];      /* relay= before a connection */
	struct smtp_client *client;

	/* the message in flight */
	struct envelope *env;
	int fd;
	struct txn_rcpt *rcpts;
	const char **addrs;
	size_t n;
	struct maildir_job *job;
};

/* Owns what the worker thread touches; the session may go away first. */
struct maildir_job {
	struct relay_session *rs; /* NULL once the session was freed */
	int fd;
	off_t offset;
	off_t size;
	char *path;
	char *hostname;
	int error;
	char file[256];
	char err[512];
};

static void rs_set_state(struct relay_session *, enum rs_state);

struct relay *
relay_new(struct event_base *base, struct evdns_base *dns, struct queue *q,
    struct worker *w)
{
	struct relay *r;

	r = xcalloc(1, sizeof(*r));
	r->base = base;
	r->dns = dns;
	r->q = q;
	r->w = w;
	return r;
}

void
relay_free(struct relay *r)
{
	if (r == NULL)
		return;
	tls_ctx_free(r->ssl_ctx);
	free(r->ca_file);
	free(r);
}

static int
streq_null(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

/*
 * The relay's TLS context, made on first use. Loading the system store
 * reads files on the loop thread; it happens once per relay (and after a
 * reload that changes ca_file or verify), which we accept.
 */
static SSL_CTX *
relay_ssl_ctx(struct relay *r, const struct relay_config *rc, char *err,
    size_t errlen)
{
	SSL_CTX *ctx;

	if (r->ssl_ctx != NULL && r->verify == rc->tls_verify &&
	    streq_null(r->ca_file, rc->ca_file))
		return r->ssl_ctx;
	if ((ctx = tls_client_ctx_new(rc->ca_file, rc->tls_verify, err,
	    errlen)) == NULL)
		return NULL;
	tls_ctx_free(r->ssl_ctx);
	free(r->ca_file);
	r->ssl_ctx = ctx;
	r->ca_file = rc->ca_file != NULL ? xstrdup(rc->ca_file) : NULL;
	r->verify = rc->tls_verify;
	return ctx;
}

/* ---- log lines and outcome text ---- */

static const char *
rcpt_status_word(enum rcpt_status status)
{
	switch (status) {
	case RCPT_PENDING:
		return "deferred";
	case RCPT_SENT:
		return "sent";
	case RCPT_FAILED:
		return "bounced";
	}
	return "deferred";
}

void
relay_outcome_text(const struct outcome *o, char *buf, size_t len)
{
	const char *prefix = "";
	size_t n, i;

	if (len == 0)
		return;
	if (o->class == OC_TLS && strncmp(o->text, "TLS:", 4) != 0)
		prefix = "TLS: ";
	if (o->text[0] == '\0')
		snprintf(buf, len, "%s%s failure", prefix,
		    outcome_class_name(o->class));
	else
		snprintf(buf, len, "%s%s", prefix, o->text);
	/* Multi-line replies are joined with '\n': one line for logs. */
	n = strlen(buf);
	for (i = 0; i < n; i++)
		if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
			buf[i] = ' ';
}

/* The dsn= code of o, made 4.x.x when the recipient stays pending. */
static void
outcome_dsn(const struct outcome *o, enum rcpt_status status, char *buf,
    size_t len)
{
	snprintf(buf, len, "%s", outcome_dsn_code(o));
	if (status == RCPT_PENDING && buf[0] == '5')
		buf[0] = '4';
}

/*
 * A permanent outcome fails a recipient only when it is about the message:
 * a server's 5xx, or the client's own refusal to send it (an address unfit
 * for the command line). Permanent-looking trouble with the relay itself
 * (DNS, TLS, credentials) is for an operator to fix, so it defers.
 */
static enum rcpt_status
outcome_rcpt_status(const struct outcome *o)
{
	switch (o->status) {
	case OUTCOME_OK:
		return RCPT_SENT;
	case OUTCOME_PERMANENT:
		switch (o->class) {
		case OC_REPLY:
		case OC_LOCAL:
		case OC_PROTOCOL:
			return RCPT_FAILED;
		case OC_NONE:
		case OC_DNS:
		case OC_CONNECT:
		case OC_TLS:
		case OC_TIMEOUT:
		case OC_AUTH:
		case OC_NOCRED:
		case OC_EXPIRED:
		case OC__COUNT:
			break;
		}
		return RCPT_PENDING;
	case OUTCOME_TEMPORARY:
		return RCPT_PENDING;
	}
	return RCPT_PENDING;
}

void
relay_log_rcpt(const struct envelope *env, size_t idx, const char *relay,
    const char *status, const char *text)
{
	const struct envelope_rcpt *r = &env->rcpts[idx];
	struct timespec ts;
	double delay;

	clock_gettime(CLOCK_REALTIME, &ts);
	delay = (double)(ts.tv_sec - env->created) + ts.tv_nsec / 1e9;
	if (delay < 0)
		delay = 0;
	if (text == NULL)
		text = r->reply != NULL ? r->reply : "";
	log_info("%s: to=<%s>, relay=%s, delay=%.1f, dsn=%s, status=%s (%s)",
	    env->id, r->addr, relay, delay, r->dsn[0] != '\0' ? r->dsn :
	    "4.0.0", status, text);
}

void
relay_defer_all(struct envelope *env, const char *relay,
    const struct outcome *o)
{
	char text[OUTCOME_TEXT_MAX + 8], dsn[16];
	size_t i;

	relay_outcome_text(o, text, sizeof(text));
	outcome_dsn(o, RCPT_PENDING, dsn, sizeof(dsn));
	for (i = 0; i < env->nrcpts; i++) {
		if (env->rcpts[i].status != RCPT_PENDING)
			continue;
		envelope_set_rcpt(env, i, RCPT_PENDING, dsn, text);
		relay_log_rcpt(env, i, relay, "deferred", NULL);
	}
}

/* ---- the message in flight ---- */

/* Collects env's pending recipients; returns how many. */
static size_t
txn_begin(struct relay_session *rs, struct envelope *env)
{
	size_t i, n = 0;

	for (i = 0; i < env->nrcpts; i++)
		if (env->rcpts[i].status == RCPT_PENDING)
			n++;
	if (n == 0)
		return 0;
	rs->rcpts = xcalloc(n, sizeof(*rs->rcpts));
	rs->addrs = xcalloc(n, sizeof(*rs->addrs));
	for (i = 0, n = 0; i < env->nrcpts; i++) {
		if (env->rcpts[i].status != RCPT_PENDING)
			continue;
		rs->rcpts[n].idx = i;
		rs->rcpts[n].state = TR_WAITING;
		rs->addrs[n] = env->rcpts[i].addr;
		n++;
	}
	rs->n = n;
	rs->env = env;
	return n;
}

static void
txn_clear(struct relay_session *rs)
{
	size_t i;

	for (i = 0; i < rs->n; i++)
		free(rs->rcpts[i].reply);
	free(rs->rcpts);
	free(rs->addrs);
	rs->rcpts = NULL;
	rs->addrs = NULL;
	rs->n = 0;
	if (rs->fd != -1)
		close(rs->fd);
	rs->fd = -1;
	rs->env = NULL;
}

static void
txn_settle(struct txn_rcpt *t, const struct outcome *o, int broken)
{
	char text[OUTCOME_TEXT_MAX + 8];

	t->state = TR_SETTLED;
	t->status = broken ? RCPT_PENDING : outcome_rcpt_status(o);
	outcome_dsn(o, t->status, t->dsn, sizeof(t->dsn));
	relay_outcome_text(o, text, sizeof(text));
	free(t->reply);
	t->reply = xstrdup(text);
}

/*
 * Ends the transaction: recipients not settled by their RCPT reply take
 * final's (pending whatever it says when the session broke), everything is
 * written into the envelope and logged, and delivered() runs.
 */
static void
txn_finish(struct relay_session *rs, const struct outcome *final, int broken)
{
	struct envelope *env = rs->env;
	const char *relay = relay_session_peer(rs);
	struct outcome ok;
	size_t i;

	for (i = 0; i < rs->n; i++) {
		struct txn_rcpt *t = &rs->rcpts[i];

		if (t->state == TR_WAITING && final->status == OUTCOME_OK &&
		    !broken) {
			struct outcome none;

			/* The client promised a reply per RCPT. */
			outcome_set(&none, OUTCOME_TEMPORARY, OC_PROTOCOL,
			    "no reply to RCPT TO");
			txn_settle(t, &none, 0);
		} else if (t->state != TR_SETTLED)
			txn_settle(t, final, broken);
		envelope_set_rcpt(env, t->idx, t->status, t->dsn, t->reply);
		relay_log_rcpt(env, t->idx, relay, rcpt_status_word(t->status),
		    NULL);
	}
	txn_clear(rs);
	if (broken) {
		rs->cb->delivered(rs, env, final, rs->arg);
		return;
	}
	outcome_set(&ok, OUTCOME_OK, OC_NONE, "transaction complete");
	rs_set_state(rs, RS_RESETTING);
	rs->cb->delivered(rs, env, &ok, rs->arg);
}

/* ---- smtp_client callbacks ---- */

static void
client_ready(struct smtp_client *c, void *arg)
{
	struct relay_session *rs = arg;

	rs_set_state(rs, RS_READY);
	rs->cb->ready(rs, rs->arg);
}

static void
client_rcpt(struct smtp_client *c, size_t idx, const struct outcome *o,
    void *arg)
{
	struct relay_session *rs = arg;

	if (rs->state != RS_SENDING || idx >= rs->n) {
		log_warnx("relay %s: reply for recipient %zu out of place",
		    rs->name, idx);
		return;
	}
	if (o->status == OUTCOME_OK)
		rs->rcpts[idx].state = TR_ACCEPTED;
	else
		txn_settle(&rs->rcpts[idx], o, 0);
}

static void
client_done(struct smtp_client *c, const struct outcome *o, void *arg)
{
	struct relay_session *rs = arg;

	if (rs->state != RS_SENDING) {
		log_warnx("relay %s: transaction end out of place", rs->name);
		return;
	}
	txn_finish(rs, o, 0);
}

static void
client_closed(struct smtp_client *c, const struct outcome *o, void *arg)
{
	struct relay_session *rs = arg;
	struct outcome broke, ok;

	switch (rs->state) {
	case RS_SENDING:
		if (o->status == OUTCOME_OK) {
			outcome_set(&broke, OUTCOME_TEMPORARY, OC_PROTOCOL,
			    "connection closed during the transaction");
			o = &broke;
		}
		rs_set_state(rs, RS_CLOSED);
		txn_finish(rs, o, 1);
		break;
	case RS_QUITTING:
		/* Everything was delivered: a messy QUIT says nothing about
		 * the relay's health. */
		if (o->status != OUTCOME_OK)
			log_debug("relay %s: after QUIT: %s", rs->name,
			    o->text);
		outcome_set(&ok, OUTCOME_OK, OC_NONE, "closed");
		o = &ok;
		break;
	case RS_CONNECTING:
	case RS_READY:
	case RS_RESETTING:
	case RS_CLOSED:
	case RS__COUNT:
		break;
	}
	rs_set_state(rs, RS_CLOSED);
	rs->cb->closed(rs, o, rs->arg);
}

static const struct smtp_client_cb client_cb = {
	.ready = client_ready,
	.rcpt = client_rcpt,
	.done = client_done,
	.closed = client_closed,
};

/* ---- maildir ---- */

static void
maildir_work(void *arg)
{
	struct maildir_job *job = arg;

	if (maildir_deliver(job->path, job->fd, job->offset, job->size,
	    job->hostname, job->file, sizeof(job->file), job->err,
	    sizeof(job->err)) == -1)
		job->error = errno != 0 ? errno : EIO;
}

static void
maildir_job_free(struct maildir_job *job)
{
	if (job->fd != -1)
		close(job->fd);
	free(job->path);
	free(job->hostname);
	free(job);
}

static void
maildir_done(void *arg)
{
	struct maildir_job *job = arg;
	struct relay_session *rs = job->rs;
	struct outcome o;
	size_t i;

	if (rs == NULL) {
		maildir_job_free(job);
		return;
	}
	rs->job = NULL;
	if (job->error == 0)
		outcome_set(&o, OUTCOME_OK, OC_NONE,
		    "delivered to maildir as %s", job->file);
	else {
		outcome_set(&o, OUTCOME_TEMPORARY, OC_LOCAL, "maildir: %s",
		    job->err);
		/* RFC 3463: 4.3.1 is "mail system full". */
		if (job->error == ENOSPC || job->error == EDQUOT)
			snprintf(o.enhanced, sizeof(o.enhanced), "4.3.1");
	}
	maildir_job_free(job);
	for (i = 0; i < rs->n; i++)
		txn_settle(&rs->rcpts[i], &o, 0);
	txn_finish(rs, &o, 0);
	rs_set_state(rs, RS_READY);
	rs->cb->ready(rs, rs->arg);
}

static int
maildir_send(struct relay_session *rs, struct envelope *env)
{
	struct maildir_job *job;

	job = xcalloc(1, sizeof(*job));
	job->rs = rs;
	job->fd = rs->fd;	/* the job owns it from now on */
	rs->fd = -1;
	job->offset = env->body_offset;
	job->size = env->body_size;
	job->path = xstrdup(rs->maildir);
	job->hostname = xstrdup(rs->hostname);
	rs->job = job;
	rs_set_state(rs, RS_SENDING);
	worker_run(rs->relay->w, maildir_work, maildir_done, job);
	return 0;
}

/* ---- sessions ---- */

static void
rs_set_state(struct relay_session *rs, enum rs_state state)
{
	if (rs->state == state)
		return;
	log_debug("relay %s: session %s -> %s", rs->name,
	    rs_state_names[rs->state], rs_state_names[state]);
	rs->state = state;
}

static void
rs_start(struct relay_session *rs)
{
	struct smtp_client_params p;
	struct outcome ok;

	if (rs->start_failed) {
		rs_set_state(rs, RS_CLOSED);
		rs->cb->closed(rs, &rs->start_error, rs->arg);
		return;
	}
	if (rs->type == RELAY_TYPE_MAILDIR) {
		rs_set_state(rs, RS_READY);
		rs->cb->ready(rs, rs->arg);
		return;
	}
	memset(&p, 0, sizeof(p));
	p.host = rs->host;
	p.port = rs->port;
	p.tls = rs->tls;
	p.ssl_ctx = rs->ssl_ctx;
	p.helo = rs->helo;
	p.timeout_connect = rs->timeout_connect;
	p.timeout_command = rs->timeout_command;
	p.timeout_data = rs->timeout_data;
	rs->client = smtp_client_new(rs->relay->base, rs->relay->dns, &p,
	    &client_cb, rs);
	if (rs->client == NULL) {
		outcome_set(&ok, OUTCOME_TEMPORARY, OC_LOCAL,
		    "cannot create an SMTP session");
		rs_set_state(rs, RS_CLOSED);
		rs->cb->closed(rs, &ok, rs->arg);
		return;
	}
	/* Whatever comes next, including failure, comes through callbacks. */
	smtp_client_connect(rs->client);
}

static void
rs_event(evutil_socket_t fd, short what, void *arg)
{
	struct relay_session *rs = arg;
	struct outcome ok;

	switch (rs->state) {
	case RS_CONNECTING:
		rs_start(rs);
		break;
	case RS_QUITTING:
		outcome_set(&ok, OUTCOME_OK, OC_NONE, "closed");
		rs_set_state(rs, RS_CLOSED);
		rs->cb->closed(rs, &ok, rs->arg);
		break;
	case RS_READY:
	case RS_SENDING:
	case RS_RESETTING:
	case RS_CLOSED:
	case RS__COUNT:
		break;
	}
}

struct relay_session *
relay_session_new(struct relay *r, const struct config *cfg,
    const struct relay_config *rc, const struct relay_session_cb *cb,
    void *arg)
{
	struct relay_session *rs;
	const struct timeval now = { 0, 0 };
	char err[512];

	rs = xcalloc(1, sizeof(*rs));
	rs->state = RS_CONNECTING;
	rs->type = rc->type;
	rs->relay = r;
	rs->cb = cb;
	rs->arg = arg;
	rs->fd = -1;
	rs->name = xstrdup(rc->name);
	rs->hostname = xstrdup(cfg->hostname);
	rs->tls = rc->tls;
	rs->timeout_connect = rc->timeout_connect;
	rs->timeout_command = rc->timeout_command;
	rs->timeout_data = rc->timeout_data;
	switch (rc->type) {
	case RELAY_TYPE_SMTP:
		rs->host = xstrdup(rc->host);
		rs->port = xstrdup(rc->port != NULL ? rc->port :
		    rc->tls == TLS_MODE_IMPLICIT ? "465" :
		    rc->tls == TLS_MODE_NONE ? "25" : "587");
		rs->helo = xstrdup(rc->helo != NULL ? rc->helo :
		    cfg->hostname);
		snprintf(rs->hostport, sizeof(rs->hostport), "%s:%s",
		    rs->host, rs->port);
		if (rc->tls != TLS_MODE_NONE) {
			SSL_CTX *ctx = relay_ssl_ctx(r, rc, err, sizeof(err));

			if (ctx == NULL) {
				rs->start_failed = 1;
				outcome_set(&rs->start_error,
				    OUTCOME_TEMPORARY, OC_TLS, "TLS: %s", err);
			} else {
				SSL_CTX_up_ref(ctx);
				rs->ssl_ctx = ctx;
			}
		}
		break;
	case RELAY_TYPE_MAILDIR:
		rs->maildir = xstrdup(rc->maildir);
		snprintf(rs->hostport, sizeof(rs->hostport), "maildir:%s",
		    rc->name);
		break;
	}
	if ((rs->ev = event_new(r->base, -1, 0, rs_event, rs)) == NULL)
		fatalx("%s: event_new", __func__);
	event_add(rs->ev, &now);
	return rs;
}

int
relay_session_send(struct relay_session *rs, struct envelope *env)
{
	struct smtp_client_msg msg;
	struct outcome o;

	if (rs->state != RS_READY)
		fatalx("%s: session is %s", __func__,
		    rs_state_names[rs->state]);
	if (txn_begin(rs, env) == 0)
		return -1;	/* nothing pending: nothing to log */
	if ((rs->fd = queue_body_open(rs->relay->q, env)) == -1) {
		outcome_set(&o, OUTCOME_TEMPORARY, OC_LOCAL,
		    "cannot open queue file: %s", strerror(errno));
		txn_clear(rs);
		relay_defer_all(env, relay_session_peer(rs), &o);
		return -1;
	}
	if (rs->type == RELAY_TYPE_MAILDIR)
		return maildir_send(rs, env);

	memset(&msg, 0, sizeof(msg));
	msg.sender = env->sender;
	msg.rcpts = rs->addrs;
	msg.nrcpts = rs->n;
	msg.body_fd = rs->fd;
	msg.body_offset = env->body_offset;
	msg.body_size = env->body_size;
	msg.eightbit = (env->flags & ENVELOPE_8BITMIME) != 0;
	msg.smtputf8 = (env->flags & ENVELOPE_SMTPUTF8) != 0;
	rs_set_state(rs, RS_SENDING);
	if (smtp_client_send(rs->client, &msg) == -1) {
		/*
		 * Cannot happen while the client says ready. Treat it as a
		 * broken session: the quit's closed() defers the message.
		 */
		log_warnx("relay %s: session refused a message", rs->name);
		smtp_client_quit(rs->client);
	}
	return 0;
}

void
relay_session_quit(struct relay_session *rs)
{
	const struct timeval now = { 0, 0 };

	if (rs->state != RS_READY)
		fatalx("%s: session is %s", __func__,
		    rs_state_names[rs->state]);
	rs_set_state(rs, RS_QUITTING);
	if (rs->type == RELAY_TYPE_MAILDIR)
		event_add(rs->ev, &now);
	else
		smtp_client_quit(rs->client);
}

void
relay_session_free(struct relay_session *rs)
{
	if (rs == NULL)
		return;
	smtp_client_free(rs->client);
	/* The worker may still be writing: the job frees itself. */
	if (rs->job != NULL)
		rs->job->rs = NULL;
	txn_clear(rs);
	if (rs->ev != NULL)
		event_free(rs->ev);
	tls_ctx_free(rs->ssl_ctx);
	free(rs->name);
	free(rs->host);
	free(rs->port);
	free(rs->helo);
	free(rs->maildir);
	free(rs->hostname);
	free(rs);
}

const char *
relay_session_peer(const struct relay_session *rs)
{
	const char *p;

	/* The client's string lives as long as the client does. */
	if (rs->type == RELAY_TYPE_SMTP && rs->client != NULL &&
	    (p = smtp_client_peer(rs->client)) != NULL &&
	    strchr(p, '[') != NULL)
		return p;
	return rs->hostport;
}

const char *
relay_session_host(const struct relay_session *rs)
{
	return rs->type == RELAY_TYPE_SMTP ? rs->host : NULL;
}
