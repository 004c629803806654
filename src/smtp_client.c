/*
 * One outbound SMTP session on the libevent loop: resolve, connect to each
 * address in turn, TLS (implicit from the first byte, or STARTTLS as an
 * OpenSSL filter over the plain bufferevent), EHLO, then transactions
 * (MAIL, RCPT..., DATA; one write when PIPELINING is offered), RSET after a
 * failed transaction, QUIT. It speaks SMTP and reports through the
 * callbacks of smtp_client.h; relay.c decides what the replies mean.
 *
 * Authentication (RFC 4954) runs right after EHLO when the owner asks for
 * it first, or on demand: a 530 (or 5.7.0) to MAIL, or a 550..554 to
 * RCPT (5.7.x when we have no credentials) while AUTH is offered and the
 * session has not
 * authenticated. Then the pipelined replies of the first try are read to
 * their end, RSET, AUTH, and the same transaction goes again from MAIL.
 * So that a first try never leaves a trace the owner must undo, while a
 * demand is still possible (credentials set, AUTH offered, not yet
 * authenticated) the RCPT replies are held back until the last one came,
 * and DATA is not pipelined: a 354 to a pipelined DATA after a partly
 * accepted first try could only be ended with a "." that delivers an
 * empty message. That costs one round trip per message on a server that
 * offers AUTH and never demands it; once authenticated, or without
 * credentials, pipelining is whole again.
 * A server that demands AUTH and then hangs up (or resets the connection)
 * before AUTH, while we have credentials, ends the session with
 * OC_AUTH_RETRY: the owner learned the demand, so it can try again at once.
 * Without TLS no AUTH is sent at all unless allow_plaintext.
 *
 * A reused connection can be gone by the time a transaction starts on it
 * (the server's idle timeout struck as MAIL left). When it breaks before
 * any reply to that transaction came, smtp_client_stale() says so
 * (client_is_stale()), and the owner may send the message again at once
 * on a new connection: the server took no part of it.
 *
 * Invariants:
 * - c->state says what the session waits for. client_enter() is the only
 *   place that sends commands and arms the timer (the body streamer it
 *   starts re-arms it on progress); client_reply() is the only place that
 *   interprets replies, through one function per waiting state. Neither
 *   has a default: case.
 * - Nothing is sent in clear text after EHLO in STARTTLS mode unless TLS is
 *   up; a missing STARTTLS ends the session before MAIL.
 * - After closed() (state CLOSED) no callback follows and no I/O remains.
 * - The struct outlives every one of our functions that is running and
 *   every job of ours on the worker pool: each entry point (libevent
 *   callback or public function) holds a reference (refs), each job another
 *   (jobs), and smtp_client_free() drops the connection at once but frees
 *   the memory only when the outermost entry point returned and the last
 *   job came back. Only refs says whether an outer entry point will flush
 *   what an inner one queued. After calling an owner callback, code checks
 *   c->dying before touching the session.
 * - The message body is streamed: at most BODY_HIWAT plus one encoded
 *   chunk sits in the output buffer, whatever the message size.
 * - While c->direct, EV_WRITE is off on the socket's bufferevent unless
 *   its output (or the TLS filter's) holds bytes the socket did not take;
 *   every entry point ends in client_flush() (see "direct writes").
 *
 * A timeout of 0 in the parameters means the RFC 5321 default (connect 30s,
 * commands 5 min, final "." 10 min).
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "log.h"
#include "outcome.h"
#include "sasl.h"
#include "smtp_client.h"
#include "smtp_proto.h"
#include "tls.h"
#include "worker.h"
#include "xmalloc.h"

#define CLIENT_LINE_MAX 2048      /* reply line, CRLF included */
#define CLIENT_CMD_MAX 1024       /* one command line we send */
#define CLIENT_QUIT_WAIT 10       /* seconds to wait for 221, at most */
#define BODY_CHUNK (64 * 1024)    /* one pread of the body file */
#define BODY_LOWAT (64 * 1024)    /* refill when the output drains to this */
#define BODY_HIWAT (256 * 1024)   /* stop reading the file above this */

#define DEFAULT_TIMEOUT_CONNECT 30
#define DEFAULT_TIMEOUT_COMMAND 300
#define DEFAULT_TIMEOUT_DATA 600

enum client_state {
	CS_INIT,      /* created, smtp_client_connect not yet run */
	CS_RESOLVE,   /* waiting for the host's addresses */
	CS_CONNECT,   /* TCP connect to one address after another */
	CS_HANDSHAKE, /* TLS handshake (implicit, or after STARTTLS) */
	CS_GREETING,  /* waiting for 220 */
	CS_EHLO,
	CS_HELO,      /* EHLO refused as unknown, and no STARTTLS needed */
	CS_STARTTLS,
	CS_AUTH,        /* "AUTH MECH [initial response]" sent */
	CS_AUTH_STEP,   /* a response to a 334 challenge sent */
	CS_AUTH_CANCEL, /* "*" sent: this mechanism failed; 501 comes */
	CS_READY,     /* idle between transactions; ready() was called */
	CS_SIZE,      /* counting the message's size on the worker pool */
	CS_MAIL,
	CS_RCPT,      /* c->rcpt_idx is the RCPT whose reply is next */
	CS_DATA,      /* waiting for 354 */
	CS_BODY,      /* streaming the body; the "." goes with the last chunk */
	CS_EOM,       /* waiting for the reply to "." */
	CS_REFUSED,   /* transaction refused before sending; done() is due */
	CS_RSET,
	CS_QUIT,
	CS_CLOSED,    /* closed() was called or is due; no I/O */
	CS__COUNT
};

static const char *const client_state_names[] = {
	[CS_INIT] = "INIT",
	[CS_RESOLVE] = "RESOLVE",
	[CS_CONNECT] = "CONNECT",
	[CS_HANDSHAKE] = "HANDSHAKE",
	[CS_GREETING] = "GREETING",
	[CS_EHLO] = "EHLO",
	[CS_HELO] = "HELO",
	[CS_STARTTLS] = "STARTTLS",
	[CS_AUTH] = "AUTH",
	[CS_AUTH_STEP] = "AUTH_STEP",
	[CS_AUTH_CANCEL] = "AUTH_CANCEL",
	[CS_READY] = "READY",
	[CS_SIZE] = "SIZE",
	[CS_MAIL] = "MAIL",
	[CS_RCPT] = "RCPT",
	[CS_DATA] = "DATA",
	[CS_BODY] = "BODY",
	[CS_EOM] = "EOM",
	[CS_REFUSED] = "REFUSED",
	[CS_RSET] = "RSET",
	[CS_QUIT] = "QUIT",
	[CS_CLOSED] = "CLOSED",
};
_Static_assert(sizeof(client_state_names) / sizeof(client_state_names[0]) ==
    CS__COUNT, "client_state_names does not match enum client_state");

/*
 * The argument of an evdns request. It lives apart from the session
 * because a cancelled request still calls back later: the session clears
 * c and may be freed at once, the callback frees this.
 */
struct client_dns {
	struct smtp_client *c;
	struct evdns_getaddrinfo_request *req;
};

struct smtp_client {
	struct event_base *base;
	struct evdns_base *dns;
	char *host;
	char *port;
	char *helo;
	enum tls_mode tls;
	SSL_CTX *ssl_ctx;
	int verify;
	unsigned timeout_connect;
	unsigned timeout_command;
	unsigned timeout_data;
	size_t line_limit;    /* fold lines longer than this; 0: never */
	struct smtp_client_cb cb;
	void *arg;

	enum client_state state;
	int refs;            /* entry points running */
	int jobs;            /* worker jobs that will come back to us */
	int dying;           /* smtp_client_free was called */
	int quit_requested;  /* QUIT when the session is next idle */
	int close_pending;   /* closed(&final) is due from ev_defer */
	struct outcome final; /* closed() outcome once QUIT is answered */
	char peer[NI_MAXHOST + INET6_ADDRSTRLEN + 16];

	/* connecting */
	struct client_dns *dns_req;
	struct evutil_addrinfo *ai;       /* all addresses */
	struct evutil_addrinfo *ai_next;  /* next to try */
	unsigned ntried;
	int conn_fd;
	int conn_errno;
	struct event *ev_conn;

	/* session */
	struct bufferevent *bev;
	struct bufferevent *sock;  /* the socket's: bev, or the TLS filter's
	                              underlying one; NULL for implicit TLS */
	struct evbuffer_cb_entry *drain_cb; /* on sock's output */
	int direct;           /* we write sock's output (client_flush) */
	int tls_active;
	int greeted;
	unsigned ntxn;        /* transactions ended on this connection */
	int stale;            /* it broke as client_is_stale() says */
	struct event *ev_timer;
	struct event *ev_defer;
	struct smtp_reply_parser parser;
	struct smtp_ehlo ehlo;

	/* authentication: credentials from smtp_client_set_auth */
	char *auth_user;
	char *auth_secret;    /* NULL: no credentials; wiped on free */
	char *auth_order;     /* NULL: sasl.c's default order */
	int auth_plaintext;   /* cleartext mechanisms without TLS allowed */
	int auth_first;       /* AUTH right after EHLO */
	const char *auth_mechs[SASL_MECH_MAX]; /* this session's order */
	size_t auth_nmechs;
	size_t auth_idx;      /* the mechanism being tried */
	struct sasl *sasl;    /* its exchange, while in CS_AUTH* */
	struct worker *worker; /* for sasl_work(); NULL: run it inline */
	int auth_working;     /* sasl_work() runs: replies wait, and the
	                         worker job owns the exchange */
	const unsigned char *auth_out; /* the response to send (sasl's) */
	size_t auth_outlen;
	const char *authed;   /* mechanism that succeeded, static; or NULL */
	int auth_demanded;    /* the server demanded AUTH in this session */
	char auth_fail[OUTCOME_TEXT_MAX]; /* "MECH: reply, MECH: reply" */

	/* transaction: valid from smtp_client_send to done() */
	struct smtp_client_msg msg;
	int pipelined;        /* MAIL and the RCPTs went out in one write */
	int data_piped;       /* ... and DATA with them */
	int hold;             /* an AUTH demand is possible: RCPT outcomes
	                         wait in held[] until the last RCPT reply */
	struct outcome *held; /* nrcpts entries while hold */
	int auth_redo;        /* demanded: drain, RSET, AUTH, send again */
	int heard;            /* a reply came since smtp_client_send */
	int mail_ok;
	size_t rcpt_idx;
	size_t rcpt_ok;
	int rcpt_temp;        /* some RCPT got a 4xx */
	int abandon;          /* "." sent only to end a DATA that got 354 */
	struct outcome txn;   /* outcome when the transaction ends early */
	struct size_job *size_job; /* the count in CS_SIZE, or NULL */
	struct smtp_body_encoder enc;
	off_t body_pos;
	off_t body_end;
	off_t body_wire;      /* encoded bytes sent, for the trace */
	off_t wire_size;      /* the SIZE declared: the body with the bytes
	                         folding inserts, or a bound of them */
	char *rbuf;           /* BODY_CHUNK bytes while in CS_BODY */
};

static void client_enter(struct smtp_client *, enum client_state);
static void client_reply(struct smtp_client *, const struct smtp_reply *);
static void client_read_cb(struct bufferevent *, void *);
static void client_write_cb(struct bufferevent *, void *);
static void client_event_cb(struct bufferevent *, short, void *);
static const char *client_eom_note(struct smtp_client *);
static void client_connect_next(struct smtp_client *);
static void client_tls_begin(struct smtp_client *);
static void client_read_replies(struct smtp_client *, struct bufferevent *);
static void client_auth_clear(struct smtp_client *);
static void client_unexpected(struct smtp_client *, const struct smtp_reply *);
static void client_txn_end(struct smtp_client *, const struct outcome *, int);
static void client_body_fill(struct smtp_client *);
static void client_flush(struct smtp_client *);
static void client_refuse(struct smtp_client *, enum outcome_status,
    enum outcome_class, int, const char *, const char *, ...)
    __attribute__((format(printf, 6, 7)));

/* ---- lifetime ---- */

static void
client_hold(struct smtp_client *c)
{
	c->refs++;
}

static void
client_destroy(struct smtp_client *c)
{
	if (c->ev_timer != NULL)
		event_free(c->ev_timer);
	if (c->ev_defer != NULL)
		event_free(c->ev_defer);
	client_auth_clear(c);
	free(c->held);
	free(c->rbuf);
	free(c->host);
	free(c->port);
	free(c->helo);
	free(c);
}

/* Ends an entry point, writing what it queued; c may be gone
 * afterwards. */
static void
client_release(struct smtp_client *c)
{
	if (c->refs == 1 && !c->dying)
		client_flush(c);
	if (--c->refs == 0 && c->jobs == 0 && c->dying)
		client_destroy(c);
}

/* A job goes to the worker pool; c stays until it is back. */
static void
client_job_start(struct smtp_client *c)
{
	c->jobs++;
}

/* A job's done() starts: it is an entry point from here on, and ends
 * with client_release(). */
static void
client_job_back(struct smtp_client *c)
{
	client_hold(c);
	c->jobs--;
}

/* Drops every I/O resource; no libevent callback reaches c afterwards. */
static void
client_teardown(struct smtp_client *c)
{
	struct client_dns *d;

	if ((d = c->dns_req) != NULL) {
		c->dns_req = NULL;
		d->c = NULL;
		if (d->req != NULL)
			evdns_getaddrinfo_cancel(d->req);
	}
	if (c->ev_conn != NULL) {
		event_free(c->ev_conn);
		c->ev_conn = NULL;
	}
	if (c->conn_fd != -1) {
		close(c->conn_fd);
		c->conn_fd = -1;
	}
	if (c->ai != NULL) {
		evutil_freeaddrinfo(c->ai);
		c->ai = c->ai_next = NULL;
	}
	if (c->sock != NULL && c->drain_cb != NULL)
		evbuffer_remove_cb_entry(bufferevent_get_output(c->sock),
		    c->drain_cb);
	c->sock = NULL;
	c->drain_cb = NULL;
	c->direct = 0;
	if (c->bev != NULL) {
		/* A TLS error invalidated the session inside OpenSSL;
		 * anything else leaves it good for the next connection. */
		if (c->tls_active)
			tls_session_end(bufferevent_openssl_get_ssl(c->bev));
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	if (c->ev_timer != NULL)
		event_del(c->ev_timer);
	if (c->ev_defer != NULL)
		event_del(c->ev_defer);
	free(c->rbuf);
	c->rbuf = NULL;
}

/* Drops the connection and reports o through closed(). Last callback. */
static void
client_close(struct smtp_client *c, const struct outcome *o)
{
	if (c->state == CS_CLOSED)
		return;
	log_debug("%s: %s -> %s (%s)", c->peer, client_state_names[c->state],
	    client_state_names[CS_CLOSED], o->text);
	client_teardown(c);
	c->state = CS_CLOSED;
	c->cb.closed(c, o, c->arg);
}

/* The same, but closed() runs from the loop: for public functions, whose
 * caller does not expect to be called back before they return. */
static void
client_close_later(struct smtp_client *c, const struct outcome *o)
{
	log_debug("%s: %s -> %s (%s)", c->peer, client_state_names[c->state],
	    client_state_names[CS_CLOSED], o->text);
	client_teardown(c);
	c->state = CS_CLOSED;
	c->final = *o;
	c->close_pending = 1;
	event_active(c->ev_defer, EV_TIMEOUT, 1);
}

/* Ends the session politely: QUIT, then closed(o) when it is answered. */
static void
client_cancel(struct smtp_client *c, const struct outcome *o)
{
	c->final = *o;
	client_enter(c, CS_QUIT);
}

static void
client_close_msg(struct smtp_client *c, enum outcome_class class,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
client_close_msg(struct smtp_client *c, enum outcome_class class,
    const char *fmt, ...)
{
	struct outcome o;
	char text[OUTCOME_TEXT_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	outcome_set(&o, OUTCOME_TEMPORARY, class, "%s", text);
	client_close(c, &o);
}

/* ---- output ---- */

static void
client_timer(struct smtp_client *c, unsigned seconds)
{
	struct timeval tv;

	if (seconds == 0) {
		event_del(c->ev_timer);
		return;
	}
	tv.tv_sec = seconds;
	tv.tv_usec = 0;
	event_add(c->ev_timer, &tv);
}

/* Appends one command line to out (the bufferevent's output when NULL),
 * tracing it. Commands never carry a line end of their own: the callers
 * refuse addresses with control characters before they get here. */
static void
client_cmd(struct smtp_client *c, struct evbuffer *out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
client_cmd(struct smtp_client *c, struct evbuffer *out, const char *fmt, ...)
{
	char buf[CLIENT_CMD_MAX], trace[CLIENT_CMD_MAX], *line = buf;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		fatalx("%s: vsnprintf", __func__);
	if ((size_t)n >= sizeof(buf) - 2) {
		/* rare: a very long configured helo */
		line = xmalloc((size_t)n + 3);
		va_start(ap, fmt);
		vsnprintf(line, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	if (log_getdebug())
		log_debug("%s: >>> %s", c->peer, log_sanitize(trace,
		    sizeof(trace), line, (size_t)n));
	line[n++] = '\r';
	line[n++] = '\n';
	if (out == NULL)
		out = bufferevent_get_output(c->bev);
	if (evbuffer_add(out, line, (size_t)n) == -1)
		fatalx("%s: out of memory", __func__);
	if (line != buf)
		free(line);
}

/* Called by libevent once the bytes of a secret line have left the output
 * buffer (written, or handed to the TLS layer). */
static void
client_secret_sent(const void *data, size_t len, void *arg)
{
	xfree_secret((void *)(uintptr_t)data, len);
}

/*
 * Sends prefix followed by the base64 of data (len bytes) as one line,
 * tracing only trace. data NULL sends prefix alone; an empty data sends
 * "=" when empty_is_eq (an empty initial response, RFC 4954) and nothing
 * otherwise (an empty response). The line goes to the output by
 * reference, so the only copy is ours and is wiped once it left.
 */
static void
client_cmd_secret(struct smtp_client *c, const char *trace,
    const char *prefix, const unsigned char *data, size_t len,
    int empty_is_eq)
{
	char *b64 = NULL, *line;
	const char *enc = "";
	size_t plen = strlen(prefix), elen, n;

	if (data != NULL && len > 0)
		enc = b64 = sasl_b64_encode(data, len);
	else if (data != NULL && empty_is_eq)
		enc = "=";
	elen = strlen(enc);
	n = plen + elen + 2;
	line = xmalloc(n);
	memcpy(line, prefix, plen);
	memcpy(line + plen, enc, elen);
	line[plen + elen] = '\r';
	line[plen + elen + 1] = '\n';
	xfree_secret_str(b64);
	log_debug("%s: >>> %s", c->peer, trace);
	if (evbuffer_add_reference(bufferevent_get_output(c->bev), line, n,
	    client_secret_sent, NULL) == -1)
		fatalx("%s: out of memory", __func__);
}

/*
 * ---- direct writes ----
 *
 * libevent's socket bufferevent asks epoll for a write event whenever bytes
 * are added to its output and drops it once the output drained: two
 * epoll_ctl calls per batch of commands, four per message on a reused
 * connection, although the socket almost always takes a whole batch at
 * once. So once the session is past connecting and the TLS handshake,
 * EV_WRITE stays off on the socket's bufferevent, and every entry point
 * ends in client_flush(), which writes that output straight to the socket
 * (through the TLS filter, the commands were encrypted into it when they
 * were queued). Only what the socket does not take (a large body, a slow
 * server) is left to libevent: EV_WRITE goes on until the output drained,
 * and client_sock_drained() turns it off again. A write error is left to
 * libevent too, which reports it through the event callback as before.
 * During the handshake libevent writes on its own: OpenSSL writes its
 * flights from inside libevent's callbacks, not ours. Implicit TLS runs
 * through the same filter as STARTTLS, so this holds for it too.
 */

/* sock's output lost bytes: if nothing is left to write, anywhere, write
 * events go off again. */
static void
client_sock_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info,
    void *arg)
{
	struct smtp_client *c = arg;

	if (!c->direct || info->n_deleted == 0 || evbuffer_get_length(buf) > 0)
		return;
	if (c->bev != c->sock &&
	    evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
		return;	/* the filter has more to encrypt into it */
	if (bufferevent_get_enabled(c->sock) & EV_WRITE)
		bufferevent_disable(c->sock, EV_WRITE);
}

/* From now on we write sock's output ourselves. */
static void
client_direct(struct smtp_client *c, struct bufferevent *sock)
{
	if (c->drain_cb == NULL) {
		c->drain_cb = evbuffer_add_cb(bufferevent_get_output(sock),
		    client_sock_drained, c);
		if (c->drain_cb == NULL)
			fatalx("%s: evbuffer_add_cb", __func__);
	}
	c->sock = sock;
	c->direct = 1;
	if (evbuffer_get_length(bufferevent_get_output(sock)) == 0 &&
	    (bufferevent_get_enabled(sock) & EV_WRITE))
		bufferevent_disable(sock, EV_WRITE);
}

/* Writes what the entry point queued; see above. */
static void
client_flush(struct smtp_client *c)
{
	struct evbuffer *out;

	while (c->direct && c->sock != NULL && !c->dying &&
	    c->state != CS_CLOSED) {
		if (bufferevent_get_enabled(c->sock) & EV_WRITE)
			return;	/* libevent's until the output drained */
		out = bufferevent_get_output(c->sock);
		if (evbuffer_get_length(out) > 0) {
			/* libevent freezes the front of a socket's output
			 * against readers, and lifts it to write, as here */
			evbuffer_unfreeze(out, 1);
			(void)evbuffer_write(out, bufferevent_getfd(c->sock));
			evbuffer_freeze(out, 1);
		}
		if (evbuffer_get_length(out) > 0 || (c->bev != c->sock &&
		    evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)) {
			bufferevent_enable(c->sock, EV_WRITE);
			return;
		}
		/* The socket took everything: more body, if any. */
		if (c->state != CS_BODY)
			return;
		client_body_fill(c);
	}
}

/* ---- connecting ---- */

static void
client_set_peer(struct smtp_client *c, const struct sockaddr *sa,
    socklen_t salen)
{
	char addr[INET6_ADDRSTRLEN], port[NI_MAXSERV];

	if (getnameinfo(sa, salen, addr, sizeof(addr), port, sizeof(port),
	    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		snprintf(c->peer, sizeof(c->peer), "%s[?]:%s", c->host,
		    c->port);
		return;
	}
	snprintf(c->peer, sizeof(c->peer), "%s[%s]:%s", c->host, addr, port);
}

/* events: what to enable; EV_WRITE only where libevent writes (TLS). */
static void
client_bev_setup(struct smtp_client *c, short events)
{
	bufferevent_setcb(c->bev, client_read_cb, client_write_cb,
	    client_event_cb, c);
	/* The write callback refills the body when the output drains to
	 * BODY_LOWAT; outside CS_BODY it does nothing. */
	bufferevent_setwatermark(c->bev, EV_WRITE, BODY_LOWAT, 0);
	if (!(events & EV_WRITE))
		bufferevent_disable(c->bev, EV_WRITE);
	bufferevent_enable(c->bev, events);
}

static void
client_connected(struct smtp_client *c, int fd)
{
	int one = 1;

	c->conn_fd = -1;
	if (c->ai != NULL) {
		evutil_freeaddrinfo(c->ai);
		c->ai = c->ai_next = NULL;
	}
	/*
	 * We already coalesce what belongs together (the pipelined commands,
	 * the last body chunk with its "."), so Nagle can only add delay: it
	 * would hold a final short segment until the peer's delayed ACK.
	 */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	log_debug("%s: connected", c->peer);

	c->bev = bufferevent_socket_new(c->base, fd,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (c->bev == NULL) {
		close(fd);
		fatalx("%s: bufferevent_socket_new", __func__);
	}
	client_bev_setup(c, EV_READ);
	if (c->tls == TLS_MODE_IMPLICIT) {
		/* TLS from the first byte, through the same filter as
		 * STARTTLS (client_tls_begin). */
		client_tls_begin(c);
		return;
	}
	client_direct(c, c->bev);
	client_enter(c, CS_GREETING);
}

static void
client_connect_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_client *c = arg;
	socklen_t len = sizeof(int);
	int err = 0;

	client_hold(c);
	event_free(c->ev_conn);
	c->ev_conn = NULL;
	if (what & EV_TIMEOUT)
		err = ETIMEDOUT;
	else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		err = errno;
	if (err == 0) {
		client_connected(c, fd);
	} else {
		log_debug("%s: connect: %s", c->peer, strerror(err));
		close(fd);
		c->conn_fd = -1;
		c->conn_errno = err;
		client_connect_next(c);
	}
	client_release(c);
}

/* Tries the remaining addresses in order; each attempt gets its own
 * timeout_connect. When none is left, the session fails with the last
 * error. */
static void
client_connect_next(struct smtp_client *c)
{
	struct evutil_addrinfo *ai;
	struct timeval tv;
	int fd;

	while ((ai = c->ai_next) != NULL) {
		c->ai_next = ai->ai_next;
		c->ntried++;
		client_set_peer(c, ai->ai_addr, (socklen_t)ai->ai_addrlen);
		log_debug("%s: connecting", c->peer);
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK |
		    SOCK_CLOEXEC, IPPROTO_TCP);
		if (fd == -1) {
			c->conn_errno = errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, (socklen_t)ai->ai_addrlen) == 0) {
			client_connected(c, fd);
			return;
		}
		if (errno != EINPROGRESS) {
			c->conn_errno = errno;
			log_debug("%s: connect: %s", c->peer, strerror(errno));
			close(fd);
			continue;
		}
		c->conn_fd = fd;
		c->ev_conn = event_new(c->base, fd, EV_WRITE, client_connect_cb,
		    c);
		if (c->ev_conn == NULL)
			fatalx("%s: event_new", __func__);
		tv.tv_sec = c->timeout_connect;
		tv.tv_usec = 0;
		event_add(c->ev_conn, &tv);
		return;
	}
	/* Out of descriptors: our shortage, not the relay's failure. */
	if (c->conn_errno == EMFILE || c->conn_errno == ENFILE)
		client_close_msg(c, OC_RESOURCE, "connect to %s: %s", c->peer,
		    strerror(c->conn_errno));
	else if (c->ntried > 1)
		client_close_msg(c, OC_CONNECT, "connect to %s: %s "
		    "(%u addresses tried)", c->peer, strerror(c->conn_errno),
		    c->ntried);
	else
		client_close_msg(c, OC_CONNECT, "connect to %s: %s", c->peer,
		    strerror(c->conn_errno));
}

static void
client_resolved(struct smtp_client *c, int result, struct evutil_addrinfo *ai)
{
	if (result != 0 || ai == NULL) {
		if (ai != NULL)
			evutil_freeaddrinfo(ai);
		client_close_msg(c, OC_DNS, "cannot resolve %s: %s", c->host,
		    result != 0 ? evutil_gai_strerror(result) : "no address");
		return;
	}
	c->ai = c->ai_next = ai;
	client_enter(c, CS_CONNECT);
}

static void
client_dns_cb(int result, struct evutil_addrinfo *ai, void *arg)
{
	struct client_dns *d = arg;
	struct smtp_client *c = d->c;

	free(d);
	if (c == NULL) {
		/* cancelled: the session is gone or going */
		if (ai != NULL)
			evutil_freeaddrinfo(ai);
		return;
	}
	c->dns_req = NULL;
	client_hold(c);
	client_resolved(c, result, ai);
	client_release(c);
}

static void
client_resolve(struct smtp_client *c)
{
	struct evutil_addrinfo hints, *ai = NULL;
	struct evdns_getaddrinfo_request *req;
	struct client_dns *d;
	int r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;

	if (c->dns == NULL) {
		/* No resolver: only a numeric host can work, and resolving
		 * it cannot block. */
		hints.ai_flags = EVUTIL_AI_NUMERICHOST;
		r = evutil_getaddrinfo(c->host, c->port, &hints, &ai);
		if (r == EVUTIL_EAI_NONAME) {
			if (ai != NULL)
				evutil_freeaddrinfo(ai);
			client_close_msg(c, OC_DNS, "cannot resolve %s: not a "
			    "numeric address and no resolver", c->host);
			return;
		}
		client_resolved(c, r, ai);
		return;
	}

	d = xcalloc(1, sizeof(*d));
	d->c = c;
	c->dns_req = d;
	/* The callback may run before this returns (numeric host, hosts
	 * file, error): then it has freed d and the result is NULL. */
	req = evdns_getaddrinfo(c->dns, c->host, c->port, &hints,
	    client_dns_cb, d);
	if (req != NULL)
		d->req = req;
}

/* ---- TLS ---- */

/*
 * Starts the TLS handshake over the socket's bufferevent c->bev, after the
 * reply to STARTTLS or, for implicit TLS, at once after the connect. Both
 * modes run TLS the same way: an OpenSSL filter over the socket's
 * bufferevent, whose ciphertext output we write ourselves once TLS is up
 * (client_tls_up, "direct writes"). A bufferevent_openssl_socket_new
 * instead would leave every write to libevent, which turns write events
 * on and off on the socket around each one: 6.13 epoll_ctl calls per
 * relayed message against 2.08 through the filter (loopcost.sh with
 * LOOPCOST_TLS=implicit).
 */
static void
client_tls_begin(struct smtp_client *c)
{
	struct bufferevent *tlsbev;
	SSL *ssl;
	char why[256];

	if ((ssl = tls_client_ssl_new(c->ssl_ctx, c->host, c->port,
	    c->verify)) == NULL) {
		client_close_msg(c, OC_TLS, "TLS: %s",
		    tls_handshake_error(NULL, 0, why, sizeof(why)));
		return;
	}
	/* The handshake is libevent's to write (the filter turns write
	 * events on for the socket). */
	c->direct = 0;
	tlsbev = bufferevent_openssl_filter_new(c->base, c->bev, ssl,
	    BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (tlsbev == NULL) {
		SSL_free(ssl);
		fatalx("%s: bufferevent_openssl_filter_new", __func__);
	}
	/*
	 * The filter encrypts into the plain bufferevent's output as long as
	 * that stays under its high watermark; without one, a large body
	 * would be encrypted into memory as fast as we read it. These marks
	 * keep the ciphertext in flight as bounded as the plaintext.
	 */
	bufferevent_setwatermark(c->bev, EV_WRITE, BODY_LOWAT, BODY_HIWAT);
	/* The filter owns the plain bufferevent now and frees it with
	 * itself (BEV_OPT_CLOSE_ON_FREE). */
	c->bev = tlsbev;
	bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	client_bev_setup(c, EV_READ | EV_WRITE);
	client_enter(c, CS_HANDSHAKE);
}

static void
client_starttls(struct smtp_client *c)
{
	/*
	 * Anything after the 220 was sent before the handshake, so it is not
	 * protected by TLS; a man in the middle could have injected it
	 * (CVE-2011-0411 in reverse). Refuse instead of reading it later.
	 */
	if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
		client_close_msg(c, OC_PROTOCOL, "unexpected data after the "
		    "reply to STARTTLS");
		return;
	}
	client_tls_begin(c);
}

static void
client_tls_up(struct smtp_client *c)
{
	char desc[128];

	c->tls_active = 1;
	client_direct(c, bufferevent_get_underlying(c->bev));
	log_debug("%s: TLS established: %s%s", c->peer,
	    tls_describe(bufferevent_openssl_get_ssl(c->bev), desc,
	    sizeof(desc)), tls_session_reused(bufferevent_openssl_get_ssl(
	    c->bev)) ? " (session resumed)" : "");
	if (c->greeted) {
		client_enter(c, CS_EHLO);
		return;
	}
	client_enter(c, CS_GREETING);
	/* a greeting decrypted with the last handshake bytes is already
	 * in the input; no read callback may follow for it */
	if (!c->dying && c->state == CS_GREETING)
		client_read_replies(c, c->bev);
}

/* ---- transactions ---- */

static void
client_txn_clear(struct smtp_client *c)
{
	memset(&c->msg, 0, sizeof(c->msg));
	c->msg.body_fd = -1;
	c->pipelined = 0;
	c->data_piped = 0;
	c->hold = 0;
	c->auth_redo = 0;
	free(c->held);
	c->held = NULL;
	c->heard = 0;
	c->mail_ok = 0;
	c->rcpt_idx = 0;
	c->rcpt_ok = 0;
	c->rcpt_temp = 0;
	c->abandon = 0;
	free(c->rbuf);
	c->rbuf = NULL;
}

/* Reports the end of the transaction; then RSET (the server may still
 * hold part of it) unless the transaction ended with its "." reply. */
static void
client_txn_end(struct smtp_client *c, const struct outcome *o, int rset)
{
	log_debug("%s: transaction %s: %s", c->peer,
	    outcome_status_name(o->status), o->text);
	c->ntxn++;
	c->cb.done(c, o, c->arg);
	if (c->dying || c->state == CS_CLOSED)
		return;
	client_enter(c, rset ? CS_RSET : CS_READY);
}

static void
client_send_mail(struct smtp_client *c)
{
	const struct smtp_client_msg *m = &c->msg;
	struct evbuffer *batch;
	char params[96];
	size_t i;
	int n = 0;

	params[0] = '\0';
	if (c->ehlo.exts & SMTP_EXT_SIZE)
		n += snprintf(params + n, sizeof(params) - n, " SIZE=%lld",
		    (long long)c->wire_size);
	/*
	 * 8-bit data to a server that does not offer 8BITMIME goes as is,
	 * without BODY=. RFC 6152 would have the client convert it to 7 bit
	 * or return it. Postfix converts only the MIME parts declared 8bit
	 * (to quoted-printable, disable_mime_output_conversion = no) and
	 * sends undeclared 8-bit bytes as is. Here nothing is converted: a
	 * conversion would break the DKIM signature and any OpenPGP or S/MIME
	 * signature the sender made over the 8-bit body, and would need a
	 * MIME parser over the spooled body; returning the mail would lose
	 * it when, as in practice, the server takes 8-bit data anyway (and
	 * submission servers offer 8BITMIME). SMTPUTF8 differs: an address
	 * that needs it cannot go without, so smtp_client_send() refuses.
	 */
	if (m->eightbit && (c->ehlo.exts & SMTP_EXT_8BITMIME))
		n += snprintf(params + n, sizeof(params) - n,
		    " BODY=8BITMIME");
	if (m->smtputf8 && (c->ehlo.exts & SMTP_EXT_SMTPUTF8))
		snprintf(params + n, sizeof(params) - n, " SMTPUTF8");

	/*
	 * With PIPELINING, MAIL, every RCPT and DATA leave in one write
	 * (RFC 2920): one round trip for the envelope instead of 2 + nrcpts.
	 * The replies are then read in order by the same states as without.
	 * While the server may still demand AUTH, DATA waits for the RCPT
	 * replies (see the top of the file).
	 */
	c->pipelined = (c->ehlo.exts & SMTP_EXT_PIPELINING) != 0;
	c->data_piped = c->pipelined && !c->hold;
	if ((batch = evbuffer_new()) == NULL)
		fatalx("%s: evbuffer_new", __func__);
	client_cmd(c, batch, "MAIL FROM:<%s>%s", m->sender, params);
	if (c->pipelined) {
		for (i = 0; i < m->nrcpts; i++)
			client_cmd(c, batch, "RCPT TO:<%s>", m->rcpts[i]);
		if (c->data_piped)
			client_cmd(c, batch, "DATA");
	}
	if (bufferevent_write_buffer(c->bev, batch) == -1)
		fatalx("%s: bufferevent_write_buffer", __func__);
	evbuffer_free(batch);
}

/*
 * Turns c->txn, which holds the most telling RCPT rejection (the last 4xx,
 * else the last 5xx), into "no recipient accepted": temporary if any
 * recipient got a 4xx (a retry may help), permanent if all got a 5xx.
 */
static void
client_no_rcpt(struct smtp_client *c)
{
	struct outcome rep = c->txn;

	/* rep.text is outcome_from_reply's "550 5.1.1 text"; the class
	 * stays (OC_NOCRED when the server wanted AUTH we cannot give) */
	outcome_set(&c->txn, rep.status, rep.class, "no recipient accepted "
	    "(last reply: %s)", rep.text);
	c->txn.code = rep.code;
	memcpy(c->txn.enhanced, rep.enhanced, sizeof(c->txn.enhanced));
}

static void
client_body_start(struct smtp_client *c)
{
	smtp_body_encoder_init(&c->enc);
	smtp_body_encoder_fold(&c->enc, c->line_limit);
	c->body_pos = c->msg.body_offset;
	c->body_end = c->msg.body_offset + c->msg.body_size;
	c->body_wire = 0;
	if (c->rbuf == NULL && c->msg.body_mem == NULL)
		c->rbuf = xmalloc(BODY_CHUNK);
}

/*
 * The want bytes at pos of a body of size bytes that starts at offset: in
 * mem when the body is in memory, else read from fd into buf. Touches no
 * session: the size count runs it on a pool thread. Returns the bytes, or
 * NULL with the reason in why.
 */
static const char *
body_chunk(const unsigned char *mem, int fd, off_t offset, off_t size,
    char *buf, size_t want, off_t pos, char *why, size_t whylen)
{
	size_t got;
	ssize_t n;

	if (mem != NULL)
		return (const char *)mem + (pos - offset);
	for (got = 0; got < want; got += (size_t)n) {
		n = pread(fd, buf + got, want - got, pos + (off_t)got);
		if (n == -1 && errno == EINTR) {
			n = 0;
			continue;
		}
		if (n == -1) {
			snprintf(why, whylen, "read message body: %s",
			    strerror(errno));
			return NULL;
		}
		if (n == 0) {
			snprintf(why, whylen, "read message body: file "
			    "shorter than %lld bytes", (long long)size);
			return NULL;
		}
	}
	return buf;
}

/*
 * Reads and encodes the body while the output holds less than BODY_HIWAT;
 * the write callback calls again when it drains to BODY_LOWAT. The last
 * chunk and the final "." are committed to the output together, so they
 * leave in the same segment: a lone "." would wait for the peer's delayed
 * ACK (about 40 ms per message).
 */
static void
client_body_fill(struct smtp_client *c)
{
	struct evbuffer *out;
	struct evbuffer_iovec vec;
	char why[OUTCOME_TEXT_MAX];
	const char *in;
	size_t got, enc;
	int last;

	out = bufferevent_get_output(c->bev);
	while (evbuffer_get_length(out) < BODY_HIWAT) {
		got = BODY_CHUNK;
		if ((off_t)got > c->body_end - c->body_pos)
			got = (size_t)(c->body_end - c->body_pos);
		/* A half-sent body cannot be taken back: drop the
		 * connection so the server discards it. */
		if ((in = body_chunk(c->msg.body_mem, c->msg.body_fd,
		    c->msg.body_offset, c->msg.body_size, c->rbuf, got,
		    c->body_pos, why, sizeof(why))) == NULL) {
			client_close_msg(c, OC_LOCAL, "%s", why);
			return;
		}
		c->body_pos += (off_t)got;
		last = c->body_pos == c->body_end;
		if (evbuffer_reserve_space(out, smtp_body_encode_space(&c->enc,
		    got) + SMTP_BODY_FINISH_MAX, &vec, 1) < 1)
			fatalx("%s: evbuffer_reserve_space", __func__);
		enc = smtp_body_encode(&c->enc, in, got, vec.iov_base);
		if (last)
			enc += smtp_body_encode_finish(&c->enc,
			    (char *)vec.iov_base + enc);
		vec.iov_len = enc;
		if (evbuffer_commit_space(out, &vec, 1) == -1)
			fatalx("%s: evbuffer_commit_space", __func__);
		c->body_wire += (off_t)enc;
		if (last) {
			log_debug("%s: >>> [body: %lld bytes from %s, %lld "
			    "on the wire, \".\" included, %llu long line "
			    "breaks]", c->peer, (long long)c->msg.body_size,
			    c->msg.body_mem != NULL ? "memory" : "file",
			    (long long)c->body_wire, c->enc.folds);
			client_enter(c, CS_EOM);
			return;
		}
	}
	/* progress: the data block timeout starts again */
	client_timer(c, c->timeout_command);
}

/*
 * The size of the message as it will be sent, for MAIL's SIZE and the
 * check against the server's limit: the body plus 3 bytes per "\r\n "
 * that folding will insert. A bound of the breaks costs nothing and is
 * used unless it alone would exceed the server's limit (only a message
 * within 3 bytes per limit - 4 of it); then the body is encoded once
 * without sending to count them exactly (CS_SIZE), so a message that
 * fits is never refused for the bound's sake. Returns 1 when that count
 * is needed, else 0 with c->wire_size set.
 */
static int
client_wire_size(struct smtp_client *c)
{
	c->wire_size = c->msg.body_size + 3 * (off_t)smtp_body_fold_bound(
	    (unsigned long long)c->msg.body_size, c->line_limit);
	return c->wire_size > c->msg.body_size &&
	    (c->ehlo.exts & SMTP_EXT_SIZE) && c->ehlo.size > 0 &&
	    (unsigned long long)c->wire_size > c->ehlo.size;
}

/* With c->wire_size known: refused when over the server's limit, else
 * MAIL. */
static void
client_size_check(struct smtp_client *c)
{
	if ((c->ehlo.exts & SMTP_EXT_SIZE) && c->ehlo.size > 0 &&
	    (unsigned long long)c->wire_size > c->ehlo.size)
		client_refuse(c, OUTCOME_PERMANENT, OC_REPLY, 552, "5.3.4",
		    "message size %lld exceeds size limit %lu of host %s",
		    (long long)c->wire_size, c->ehlo.size, c->peer);
	else
		client_enter(c, CS_MAIL);
}

/*
 * The exact count runs on the worker pool: it reads and encodes the whole
 * body (27 to 56 ms for 50 MB from the page cache on a busy 2-core VM,
 * far longer from a cold disk), and on the loop every other session would
 * wait that long. The job has a descriptor of its own (a dup of the
 * body's, which the owner may close once the session closed) and holds a
 * reference on the client, so the session may be closed (a 421, a drop,
 * the command timeout, smtp_client_free) while it runs: back on the loop,
 * a result for a session no longer waiting for it is dropped. The worker
 * thread touches nothing but the job. A body in memory (body_mem, a
 * message of the spool log: 64 KB by default, a few hundred microseconds
 * to encode) is counted on the loop: its owner frees it with the
 * transaction, which a job outliving the session would still read.
 */
struct size_job {
	struct smtp_client *c;  /* read on the loop only */
	const unsigned char *mem; /* the body in memory, or NULL: fd */
	int fd;
	off_t offset;
	off_t size;
	size_t limit;
	unsigned long long folds;
	int failed;
	char why[OUTCOME_TEXT_MAX];
};

static void
client_size_run(void *arg)
{
	struct size_job *j = arg;
	struct smtp_body_encoder e;
	off_t pos, end = j->offset + j->size;
	size_t want;
	const char *p;
	char *in, *out;

	smtp_body_encoder_init(&e);
	smtp_body_encoder_fold(&e, j->limit);
	in = xmalloc(BODY_CHUNK);
	out = xmalloc(smtp_body_encode_space(&e, BODY_CHUNK));
	for (pos = j->offset; pos < end; pos += (off_t)want) {
		want = BODY_CHUNK;
		if ((off_t)want > end - pos)
			want = (size_t)(end - pos);
		if ((p = body_chunk(j->mem, j->fd, j->offset, j->size, in,
		    want, pos, j->why, sizeof(j->why))) == NULL) {
			j->failed = 1;
			break;
		}
		smtp_body_encode(&e, p, want, out);
	}
	j->folds = e.folds;
	free(out);
	free(in);
}

static void
client_size_done(void *arg)
{
	struct size_job *j = arg;
	struct smtp_client *c = j->c;
	int current;

	client_job_back(c);
	if (j->fd != -1)
		close(j->fd);
	if ((current = c->size_job == j))
		c->size_job = NULL;
	if (!current || c->dying || c->state != CS_SIZE) {
		log_debug("%s: size count done after the session moved on; "
		    "dropped", c->peer);
	} else if (j->failed) {
		client_refuse(c, OUTCOME_TEMPORARY, OC_LOCAL, 0, "4.3.0",
		    "%s", j->why);
	} else {
		c->wire_size = c->msg.body_size + 3 * (off_t)j->folds;
		log_debug("%s: message size counted: %lld bytes, %llu long "
		    "line breaks", c->peer, (long long)c->wire_size,
		    j->folds);
		client_size_check(c);
	}
	free(j);
	client_release(c);
}

/* Starts the count; without a worker pool it runs here and now. */
static void
client_size_start(struct smtp_client *c)
{
	struct size_job *j;
	int fd = -1;

	if (c->msg.body_mem == NULL &&
	    (fd = fcntl(c->msg.body_fd, F_DUPFD_CLOEXEC, 0)) == -1) {
		client_refuse(c, OUTCOME_TEMPORARY, errno == EMFILE ||
		    errno == ENFILE ? OC_RESOURCE : OC_LOCAL, 0, "4.3.0",
		    "count the message size: %s", strerror(errno));
		return;
	}
	j = xcalloc(1, sizeof(*j));
	j->c = c;
	j->fd = fd;
	j->mem = c->msg.body_mem;
	j->offset = c->msg.body_offset;
	j->size = c->msg.body_size;
	j->limit = c->line_limit;
	c->size_job = j;
	client_job_start(c);
	if (c->worker == NULL || j->mem != NULL) {
		client_size_run(j);
		client_size_done(j);
		return;
	}
	worker_run(c->worker, client_size_run, client_size_done, j);
}

/* ---- authentication ---- */

/* Forgets the credentials and any exchange, wiping the secrets. */
static void
client_auth_clear(struct smtp_client *c)
{
	sasl_free(c->sasl);
	c->sasl = NULL;
	c->auth_out = NULL;
	c->auth_outlen = 0;
	xfree_secret_str(c->auth_user);
	xfree_secret_str(c->auth_secret);
	free(c->auth_order);
	c->auth_user = c->auth_secret = c->auth_order = NULL;
	c->auth_plaintext = c->auth_first = 0;
}

/* Whether the server could still demand AUTH that we can give. */
static int
client_auth_possible(const struct smtp_client *c)
{
	return c->auth_secret != NULL && c->authed == NULL &&
	    (c->ehlo.exts & SMTP_EXT_AUTH) != 0;
}

/* Appends "MECH: what" to the list of failed mechanisms. */
static void
client_auth_note(struct smtp_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
client_auth_note(struct smtp_client *c, const char *fmt, ...)
{
	size_t n = strlen(c->auth_fail);
	va_list ap;

	if (n > 0 && n + 2 < sizeof(c->auth_fail)) {
		memcpy(c->auth_fail + n, ", ", 3);
		n += 2;
	}
	if (n + 1 >= sizeof(c->auth_fail))
		return;
	va_start(ap, fmt);
	vsnprintf(c->auth_fail + n, sizeof(c->auth_fail) - n, fmt, ap);
	va_end(ap);
}

/* Notes the final reply r to the current mechanism, on one line. */
static void
client_auth_note_reply(struct smtp_client *c, const struct smtp_reply *r)
{
	const char *serr = c->sasl != NULL ? sasl_server_error(c->sasl) :
	    NULL;
	int tl = (int)strcspn(r->text, "\n");

	client_auth_note(c, "%s: %d%s%s%s%.*s%s%s%s",
	    c->auth_mechs[c->auth_idx], r->code, r->enhanced[0] != '\0' ?
	    " " : "", r->enhanced, tl > 0 ? " " : "", tl, r->text,
	    serr != NULL ? " (server said: " : "", serr != NULL ? serr : "",
	    serr != NULL ? ")" : "");
}

/* Ends the session because AUTH cannot succeed now: closed(o) after
 * QUIT, with a transaction in progress taking o as its outcome. */
static void
client_auth_abort(struct smtp_client *c, const struct smtp_reply *r,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
client_auth_abort(struct smtp_client *c, const struct smtp_reply *r,
    const char *fmt, ...)
{
	struct outcome o;
	char text[OUTCOME_TEXT_MAX];
	va_list ap;

	sasl_free(c->sasl);
	c->sasl = NULL;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	outcome_set(&o, OUTCOME_TEMPORARY, OC_AUTH, "%s", text);
	if (r != NULL) {
		o.code = r->code;
		snprintf(o.enhanced, sizeof(o.enhanced), "%s", r->enhanced);
	}
	client_cancel(c, &o);
}

/*
 * Starts the current mechanism or, if it cannot start, the next one that
 * can; when none is left the session ends with every mechanism's reply.
 */
static void
client_auth_try(struct smtp_client *c, const struct smtp_reply *last)
{
	const char *mech;

	for (; c->auth_idx < c->auth_nmechs; c->auth_idx++) {
		mech = c->auth_mechs[c->auth_idx];
		sasl_free(c->sasl);
		if ((c->sasl = sasl_new(mech, c->auth_user,
		    c->auth_secret)) == NULL) {
			client_auth_note(c, "%s: cannot start", mech);
			continue;
		}
		sasl_set_async(c->sasl, c->worker != NULL);
		if (sasl_step(c->sasl, NULL, 0, &c->auth_out,
		    &c->auth_outlen) == SASL_ERROR) {
			client_auth_note(c, "%s: cannot start", mech);
			continue;
		}
		client_enter(c, CS_AUTH);
		return;
	}
	client_auth_abort(c, last, "authentication failed: %s", c->auth_fail);
}

/* The mechanism failed: on to the next. */
static void
client_auth_next(struct smtp_client *c, const struct smtp_reply *r)
{
	sasl_free(c->sasl);
	c->sasl = NULL;
	c->auth_idx++;
	client_auth_try(c, r);
}

/*
 * Picks the mechanisms to try, in order, among those the server offers,
 * and starts the first. With none usable the session ends, saying why:
 * most often a server that offers only cleartext mechanisms without TLS.
 */
static void
client_auth_start(struct smtp_client *c)
{
	const char *tlsonly[SASL_MECH_MAX];
	char names[128];
	size_t n, i, len = 0;

	c->auth_fail[0] = '\0';
	c->auth_idx = 0;
	if (!c->tls_active && !c->auth_plaintext) {
		/* no mechanism, hashed or not, without TLS unless allowed */
		client_auth_abort(c, NULL, "refusing to send credentials over "
		    "an unencrypted connection (set allow_plaintext_auth = "
		    "true to allow)");
		return;
	}
	c->auth_nmechs = sasl_choose_order(c->ehlo.auth, c->auth_order,
	    c->tls_active, c->auth_plaintext, c->auth_mechs, SASL_MECH_MAX);
	if (c->auth_nmechs > 0) {
		client_auth_try(c, NULL);
		return;
	}
	n = sasl_choose_order(c->ehlo.auth, c->auth_order, 1, 1, tlsonly,
	    SASL_MECH_MAX);
	names[0] = '\0';
	for (i = 0; i < n && len < sizeof(names); i++)
		len += (size_t)snprintf(names + len, sizeof(names) - len,
		    "%s%s", i > 0 ? " " : "", tlsonly[i]);
	if (n > 0 && !c->tls_active)
		client_auth_abort(c, NULL, "server offers only %s over an "
		    "unencrypted connection; refusing to send credentials "
		    "(set allow_plaintext_auth = true to allow)", names);
	else
		client_auth_abort(c, NULL, "no usable authentication "
		    "mechanism: the server offers %s, the relay allows %s",
		    c->ehlo.auth[0] != '\0' ? c->ehlo.auth : "none",
		    c->auth_order != NULL ? c->auth_order : SASL_DEFAULT_ORDER);
}

static void
client_auth_ok(struct smtp_client *c)
{
	c->authed = c->auth_mechs[c->auth_idx];
	sasl_free(c->sasl);
	c->sasl = NULL;
	log_debug("%s: authenticated with %s", c->peer, c->authed);
	if (c->cb.authenticated != NULL) {
		c->cb.authenticated(c, c->authed, c->arg);
		if (c->dying || c->state == CS_CLOSED)
			return;
	}
	if (!c->auth_redo) {
		client_enter(c, CS_READY);
		return;
	}
	/* The same transaction again, from MAIL; nothing of the first try
	 * reached the owner. */
	c->auth_redo = 0;
	c->hold = 0;
	free(c->held);
	c->held = NULL;
	c->pipelined = c->data_piped = c->mail_ok = c->abandon = 0;
	c->rcpt_temp = 0;
	c->rcpt_idx = c->rcpt_ok = 0;
	client_enter(c, CS_MAIL);
}

/* Sends the response of a SASL step, or cancels the mechanism. */
static void
client_auth_stepped(struct smtp_client *c, enum sasl_status st)
{
	const char *mech = c->auth_mechs[c->auth_idx];

	if (st == SASL_ERROR || st == SASL_WORK) {
		client_auth_note(c, "%s: unexpected challenge%s%s%s",
		    mech, sasl_server_error(c->sasl) != NULL ?
		    " (server said: " : "",
		    sasl_server_error(c->sasl) != NULL ?
		    sasl_server_error(c->sasl) : "",
		    sasl_server_error(c->sasl) != NULL ? ")" : "");
		client_enter(c, CS_AUTH_CANCEL);
		return;
	}
	client_enter(c, CS_AUTH_STEP);
}

/*
 * A SASL step's slow part (SCRAM's PBKDF2, up to
 * SASL_SCRAM_MAX_ITERATIONS rounds) on the worker pool, so that every
 * other session on the loop keeps being served. The job owns the
 * exchange and holds a reference to the client until it is back on the
 * loop; replies that arrive meanwhile wait in the input buffer.
 */
struct auth_job {
	struct smtp_client *c;
	struct sasl *sasl;
};

static void
client_auth_work_run(void *arg)
{
	struct auth_job *j = arg;

	sasl_work(j->sasl);
}

static void
client_auth_work_done(void *arg)
{
	struct auth_job *j = arg;
	struct smtp_client *c = j->c;
	enum sasl_status st;

	client_job_back(c);
	c->auth_working = 0;
	if (c->dying || c->state == CS_CLOSED) {
		sasl_free(j->sasl);
		free(j);
		client_release(c);
		return;
	}
	c->sasl = j->sasl;
	free(j);
	st = sasl_work_result(c->sasl, &c->auth_out, &c->auth_outlen);
	client_auth_stepped(c, st);
	if (!c->dying && c->bev != NULL)
		client_read_replies(c, c->bev);
	client_release(c);
}

static void
client_auth_work(struct smtp_client *c)
{
	struct auth_job *j = xcalloc(1, sizeof(*j));

	j->c = c;
	j->sasl = c->sasl;
	c->sasl = NULL;
	c->auth_working = 1;
	client_job_start(c);
	worker_run(c->worker, client_auth_work_run, client_auth_work_done, j);
}

/* A reply in CS_AUTH or CS_AUTH_STEP. */
static void
client_auth_reply(struct smtp_client *c, const struct smtp_reply *r)
{
	const char *mech = c->auth_mechs[c->auth_idx];
	unsigned char *ch = NULL;
	size_t chlen = 0, tl;
	enum sasl_status st;

	switch (r->code / 100) {
	case 3:
		if (r->code != 334)
			break;
		tl = strcspn(r->text, "\n");
		if (sasl_b64_decode(r->text, tl, &ch, &chlen) == -1) {
			client_auth_note(c, "%s: challenge is not base64",
			    mech);
			client_enter(c, CS_AUTH_CANCEL);
			return;
		}
		st = sasl_step(c->sasl, ch, chlen, &c->auth_out,
		    &c->auth_outlen);
		xfree_secret(ch, chlen + 1);
		if (st == SASL_WORK) {
			client_auth_work(c);
			return;
		}
		client_auth_stepped(c, st);
		return;
	case 2:
		if (r->code != 235)
			break;
		/* A SCRAM server must prove it knows the password before
		 * we take its word; after a 235 no other mechanism can
		 * follow, so this ends the session. */
		if ((sasl_mech_flags(mech) & SASL_MECH_MUTUAL) &&
		    !sasl_is_complete(c->sasl)) {
			client_auth_abort(c, r, "authentication failed: %s: "
			    "the server accepted without proving it knows the "
			    "password", mech);
			return;
		}
		client_auth_ok(c);
		return;
	case 4:
		client_auth_note_reply(c, r);
		client_auth_abort(c, r, "authentication failed temporarily: "
		    "%s", c->auth_fail);
		return;
	case 5:
		/* 535, 534, 538, 504 and any other refusal: next one */
		client_auth_note_reply(c, r);
		client_auth_next(c, r);
		return;
	}
	client_unexpected(c, r);
}

/*
 * The server demanded authentication (r, to MAIL or RCPT). Tells the
 * owner once per session, then either arranges the retry with AUTH and
 * returns 1, or returns 0 with o set to what the demand means for the
 * mail: temporary, never a bounce. The caller checks c->dying and
 * c->state afterwards (the owner may have dropped the session).
 */
static int
client_auth_demand(struct smtp_client *c, const struct smtp_reply *r,
    struct outcome *o)
{
	int offered = (c->ehlo.exts & SMTP_EXT_AUTH) != 0;
	int tl = (int)strcspn(r->text, "\n");
	const char *sp = r->enhanced[0] != '\0' ? " " : "";

	log_debug("%s: the server demands authentication: %d %s", c->peer,
	    r->code, r->enhanced);
	if (!c->auth_demanded) {
		c->auth_demanded = 1;
		if (c->cb.auth_required != NULL) {
			c->cb.auth_required(c, c->arg);
			if (c->dying || c->state == CS_CLOSED)
				return 0;
		}
	}
	if (offered && c->auth_secret != NULL) {
		c->auth_redo = 1;
		return 1;
	}
	if (offered || c->auth_secret == NULL)
		outcome_set(o, OUTCOME_TEMPORARY, OC_NOCRED, "server requires "
		    "authentication and no credentials are configured "
		    "(%d%s%s %.*s)", r->code, sp, r->enhanced, tl, r->text);
	else
		outcome_set(o, OUTCOME_TEMPORARY, OC_AUTH, "server requires "
		    "authentication but does not offer AUTH (%d%s%s %.*s)",
		    r->code, sp, r->enhanced, tl, r->text);
	o->code = r->code;
	snprintf(o->enhanced, sizeof(o->enhanced), "%s", r->enhanced);
	return 0;
}

/* MAIL rejected for lack of authentication. */
static int
client_mail_wants_auth(const struct smtp_client *c, const struct smtp_reply *r)
{
	return c->authed == NULL && (r->code == 530 ||
	    (r->code / 100 == 5 && strcmp(r->enhanced, "5.7.0") == 0));
}

/*
 * RCPT rejected while AUTH is offered and we have not authenticated. As
 * smtpmail does, any 550..554 is then worth one try with credentials when
 * we have them (many servers say "550 relaying denied" with no enhanced
 * code); the cost when it was a real "no such user" is one AUTH, after
 * which the same reply is final. Without credentials only a 5.7.x refusal
 * is taken as a demand for AUTH (deferred, never bounced); any other
 * 550..554 stays a permanent failure of that recipient.
 */
static int
client_rcpt_wants_auth(const struct smtp_client *c, const struct smtp_reply *r)
{
	if (c->authed != NULL || !(c->ehlo.exts & SMTP_EXT_AUTH) ||
	    r->code < 550 || r->code > 554)
		return 0;
	return c->auth_secret != NULL || strncmp(r->enhanced, "5.7.", 4) == 0;
}

/*
 * Every RCPT reply of this try is in. After an AUTH demand: RSET, then
 * AUTH. Otherwise the held outcomes go to the owner and DATA follows, or
 * the transaction ends.
 */
static void
client_rcpts_done(struct smtp_client *c)
{
	size_t i;

	if (c->auth_redo) {
		client_enter(c, CS_RSET);
		return;
	}
	if (c->hold) {
		c->hold = 0;
		for (i = 0; c->mail_ok && i < c->msg.nrcpts; i++) {
			c->cb.rcpt(c, i, &c->held[i], c->arg);
			if (c->dying || c->state != CS_RCPT)
				return;
		}
	}
	if (c->data_piped) {
		/* its reply comes in any case */
		if (c->mail_ok && c->rcpt_ok == 0)
			client_no_rcpt(c);
		client_enter(c, CS_DATA);
	} else if (c->mail_ok && c->rcpt_ok > 0) {
		client_enter(c, CS_DATA);
	} else {
		if (c->mail_ok)
			client_no_rcpt(c);
		client_txn_end(c, &c->txn, 1);
	}
}

/* ---- the state machine ---- */

static void
client_enter(struct smtp_client *c, enum client_state s)
{
	log_debug("%s: %s -> %s", c->peer, client_state_names[c->state],
	    client_state_names[s]);
	c->state = s;

	switch (s) {
	case CS_INIT:
	case CS_CLOSED:
		break;
	case CS_RESOLVE:
		client_resolve(c);
		break;
	case CS_CONNECT:
		client_connect_next(c);
		break;
	case CS_HANDSHAKE:
	case CS_GREETING:
		client_timer(c, c->timeout_command);
		break;
	case CS_EHLO:
		memset(&c->ehlo, 0, sizeof(c->ehlo));
		client_cmd(c, NULL, "EHLO %s", c->helo);
		client_timer(c, c->timeout_command);
		break;
	case CS_HELO:
		memset(&c->ehlo, 0, sizeof(c->ehlo));
		client_cmd(c, NULL, "HELO %s", c->helo);
		client_timer(c, c->timeout_command);
		break;
	case CS_STARTTLS:
		client_cmd(c, NULL, "STARTTLS");
		client_timer(c, c->timeout_command);
		break;
	case CS_AUTH: {
		char prefix[64], trace[80];
		const char *mech = sasl_name(c->sasl);

		/* the payload never reaches the trace */
		snprintf(prefix, sizeof(prefix), "AUTH %s ", mech);
		snprintf(trace, sizeof(trace), "AUTH %s%s", mech,
		    c->auth_out != NULL ? " <redacted>" : "");
		if (c->auth_out != NULL)
			client_cmd_secret(c, trace, prefix, c->auth_out,
			    c->auth_outlen, 1);
		else
			client_cmd(c, NULL, "AUTH %s", mech);
		client_timer(c, c->timeout_command);
		break;
	}
	case CS_AUTH_STEP:
		client_cmd_secret(c, "<redacted>", "", c->auth_out,
		    c->auth_outlen, 0);
		client_timer(c, c->timeout_command);
		break;
	case CS_AUTH_CANCEL:
		client_cmd(c, NULL, "*");
		client_timer(c, c->timeout_command);
		break;
	case CS_READY:
		client_timer(c, 0);
		client_txn_clear(c);
		if (c->quit_requested) {
			client_enter(c, CS_QUIT);
			break;
		}
		/* The owner may send, quit or free from here: nothing
		 * after this call may touch c. */
		c->cb.ready(c, c->arg);
		break;
	case CS_SIZE:
		client_timer(c, c->timeout_command);
		client_size_start(c);
		break;
	case CS_MAIL:
		client_send_mail(c);
		client_timer(c, c->timeout_command);
		break;
	case CS_RCPT:
		if (!c->pipelined)
			client_cmd(c, NULL, "RCPT TO:<%s>",
			    c->msg.rcpts[c->rcpt_idx]);
		client_timer(c, c->timeout_command);
		break;
	case CS_DATA:
		if (!c->data_piped)
			client_cmd(c, NULL, "DATA");
		client_timer(c, c->timeout_command);
		break;
	case CS_BODY:
		client_body_start(c);
		client_body_fill(c);
		break;
	case CS_EOM:
		/* the "." normally left with the last body chunk */
		if (c->abandon)
			client_cmd(c, NULL, ".");
		free(c->rbuf);
		c->rbuf = NULL;
		client_timer(c, c->timeout_data);
		break;
	case CS_REFUSED:
		client_timer(c, 0);
		event_active(c->ev_defer, EV_TIMEOUT, 1);
		break;
	case CS_RSET:
		client_cmd(c, NULL, "RSET");
		client_timer(c, c->timeout_command);
		break;
	case CS_QUIT:
		client_cmd(c, NULL, "QUIT");
		client_timer(c, c->timeout_command < CLIENT_QUIT_WAIT ?
		    c->timeout_command : CLIENT_QUIT_WAIT);
		break;
	case CS__COUNT:
		fatalx("%s: bad state", __func__);
	}
}

static void
client_after_ehlo(struct smtp_client *c)
{
	struct outcome o;

	if (c->tls == TLS_MODE_STARTTLS && !c->tls_active) {
		/* Never fall back to clear text: the mail waits instead. */
		if ((c->ehlo.exts & SMTP_EXT_STARTTLS) == 0) {
			outcome_set(&o, OUTCOME_TEMPORARY, OC_TLS,
			    "TLS: server does not offer STARTTLS");
			client_cancel(c, &o);
			return;
		}
		client_enter(c, CS_STARTTLS);
		return;
	}
	if (c->auth_first && c->auth_secret != NULL && c->authed == NULL) {
		if (c->ehlo.exts & SMTP_EXT_AUTH) {
			client_auth_start(c);
			return;
		}
		/* Nothing to authenticate with: the server decides. */
		log_debug("%s: the server does not offer AUTH; going on "
		    "without", c->peer);
	}
	client_enter(c, CS_READY);
}

static void
client_unexpected(struct smtp_client *c, const struct smtp_reply *r)
{
	client_close_msg(c, OC_PROTOCOL, "unexpected reply in state %s: %d %s",
	    client_state_names[c->state], r->code, r->text);
}

/*
 * Whether a break now would be a reused connection found gone: a
 * transaction ended on this connection before, the current one's first
 * command (MAIL, with the RCPTs and DATA when pipelined) is out, and no
 * reply to it came. That is what a server's idle timeout that struck
 * just as the command left looks like: the close (or the reset our
 * command drew, or the 421 the server sent before closing) says nothing
 * about the message, which the server never took any part of, so the
 * owner may send it again at once on a new connection. A timeout is not
 * such a break: a server that takes the command and stalls says nothing
 * about a connection gone stale. The same holds while the message's size
 * is still being counted (CS_SIZE), before MAIL left: a connection that
 * breaks then had nothing of the transaction.
 */
static int
client_is_stale(const struct smtp_client *c)
{
	return (c->state == CS_MAIL || c->state == CS_SIZE) && c->ntxn > 0 &&
	    !c->heard;
}

/*
 * 421 may come at any time (shutdown, idle timeout) and ends the session;
 * a transaction in progress gets it as its outcome.
 */
static void
client_reply_421(struct smtp_client *c, const struct smtp_reply *r)
{
	struct outcome o;

	c->stale = client_is_stale(c);
	outcome_from_reply(&o, r->code, r->enhanced, r->text);
	/* after a demand for AUTH, that is what the mail waits for */
	if (c->auth_demanded && c->authed == NULL)
		o.class = c->auth_secret != NULL ? OC_AUTH : OC_NOCRED;
	client_close(c, &o);
}

static void
client_reply_greeting(struct smtp_client *c, const struct smtp_reply *r)
{
	struct outcome o;

	if (r->code / 100 != 2) {
		/* 554: no service here; not worth a QUIT. */
		outcome_from_reply(&o, r->code, r->enhanced, r->text);
		client_close(c, &o);
		return;
	}
	c->greeted = 1;
	client_enter(c, CS_EHLO);
}

/* EHLO, or HELO after a server that does not know EHLO. */
static void
client_reply_ehlo(struct smtp_client *c, const struct smtp_reply *r)
{
	struct outcome o;

	if (r->code / 100 == 2) {
		if (c->state == CS_EHLO)
			smtp_ehlo_parse(r->text, &c->ehlo);
		client_after_ehlo(c);
	} else if (c->state == CS_EHLO &&
	    (r->code == 500 || r->code == 502) &&
	    c->tls != TLS_MODE_STARTTLS) {
		client_enter(c, CS_HELO);
	} else {
		outcome_from_reply(&o, r->code, r->enhanced, r->text);
		client_cancel(c, &o);
	}
}

static void
client_reply_starttls(struct smtp_client *c, const struct smtp_reply *r)
{
	struct outcome o;

	if (r->code == 220) {
		client_starttls(c);
		return;
	}
	/* A 5xx here says nothing about the message: temporary, so it
	 * waits for the server to fix TLS. */
	outcome_set(&o, OUTCOME_TEMPORARY, OC_TLS,
	    "TLS: STARTTLS refused: %d %s", r->code, r->text);
	client_cancel(c, &o);
}

static void
client_reply_mail(struct smtp_client *c, const struct smtp_reply *r)
{
	int cls = r->code / 100;

	if (cls == 2) {
		c->mail_ok = 1;
	} else if (cls == 4 || cls == 5) {
		outcome_from_reply(&c->txn, r->code, r->enhanced, r->text);
		if (client_mail_wants_auth(c, r)) {
			client_auth_demand(c, r, &c->txn);
			if (c->dying || c->state != CS_MAIL)
				return;
		} else if (r->code == 530) {
			/* authenticated and still refused: never a bounce
			 * for want of AUTH */
			c->txn.status = OUTCOME_TEMPORARY;
			c->txn.class = OC_AUTH;
		}
	} else {
		client_unexpected(c, r);
		return;
	}
	if (c->mail_ok || c->pipelined) {
		/* pipelined: the RCPT (and DATA) replies still come */
		c->rcpt_idx = 0;
		client_enter(c, CS_RCPT);
	} else if (c->auth_redo) {
		client_enter(c, CS_RSET);
	} else {
		client_txn_end(c, &c->txn, 1);
	}
}

/*
 * The reply to the current RCPT while the transaction stands: counts it,
 * keeps the transaction's outcome (a temporary refusal wins over a
 * permanent one) and reports it, or holds it while AUTH is due. Returns -1
 * when the session moved on (freed, or left CS_RCPT).
 */
static int
client_rcpt_result(struct smtp_client *c, const struct outcome *o)
{
	if (o->status == OUTCOME_OK) {
		c->rcpt_ok++;
	} else if (o->status == OUTCOME_TEMPORARY || !c->rcpt_temp) {
		c->txn = *o;
		if (o->status == OUTCOME_TEMPORARY)
			c->rcpt_temp = 1;
	}
	if (c->hold) {
		c->held[c->rcpt_idx] = *o;
		return 0;
	}
	c->cb.rcpt(c, c->rcpt_idx, o, c->arg);
	return c->dying || c->state != CS_RCPT ? -1 : 0;
}

static void
client_reply_rcpt(struct smtp_client *c, const struct smtp_reply *r)
{
	struct outcome o;
	int cls = r->code / 100;

	if (cls != 2 && cls != 4 && cls != 5) {
		client_unexpected(c, r);
		return;
	}
	if (c->mail_ok && !c->auth_redo) {
		outcome_from_reply(&o, r->code, r->enhanced, r->text);
		if (client_rcpt_wants_auth(c, r)) {
			client_auth_demand(c, r, &o);
			if (c->dying || c->state != CS_RCPT)
				return;
		}
		/* the demand may have made AUTH due: then o is not kept */
		if (c->mail_ok && !c->auth_redo &&
		    client_rcpt_result(c, &o) == -1)
			return;
	}
	/* without pipelining, no more RCPTs once AUTH is due */
	if (++c->rcpt_idx < c->msg.nrcpts && (c->pipelined || !c->auth_redo))
		client_enter(c, CS_RCPT);
	else
		client_rcpts_done(c);
}

static void
client_reply_data(struct smtp_client *c, const struct smtp_reply *r)
{
	int cls = r->code / 100;

	if (r->code == 354) {
		if (c->mail_ok && c->rcpt_ok > 0) {
			client_enter(c, CS_BODY);
			return;
		}
		/*
		 * RFC 2920 3.1: the server accepted DATA although nothing
		 * was accepted before it. End the empty message with a lone
		 * "."; the server has no recipient to deliver it to.
		 */
		c->abandon = 1;
		client_enter(c, CS_EOM);
	} else if (cls == 4 || cls == 5) {
		if (c->mail_ok && c->rcpt_ok > 0)
			outcome_from_reply(&c->txn, r->code, r->enhanced,
			    r->text);
		client_txn_end(c, &c->txn, 1);
	} else {
		client_unexpected(c, r);
	}
}

static void
client_reply_eom(struct smtp_client *c, const struct smtp_reply *r)
{
	struct outcome o;
	int cls = r->code / 100;

	if (c->abandon) {
		client_txn_end(c, &c->txn, 0);
	} else if (cls == 2 || cls == 4 || cls == 5) {
		outcome_from_reply(&o, r->code, r->enhanced, r->text);
		client_txn_end(c, &o, 0);
	} else {
		client_unexpected(c, r);
	}
}

static void
client_reply_rset(struct smtp_client *c, const struct smtp_reply *r)
{
	struct outcome o;

	if (r->code / 100 == 2 && c->auth_redo) {
		client_auth_start(c);
	} else if (r->code / 100 == 2) {
		client_enter(c, CS_READY);
	} else {
		outcome_set(&o, OUTCOME_TEMPORARY, OC_REPLY,
		    "RSET refused: %d %s", r->code, r->text);
		client_cancel(c, &o);
	}
}

/* One complete reply: dispatched by the state that is waiting for it. */
static void
client_reply(struct smtp_client *c, const struct smtp_reply *r)
{
	if (r->code == 421 && c->state != CS_QUIT) {
		client_reply_421(c, r);
		return;
	}
	c->heard = 1;

	switch (c->state) {
	case CS_GREETING:
		client_reply_greeting(c, r);
		break;
	case CS_EHLO:
	case CS_HELO:
		client_reply_ehlo(c, r);
		break;
	case CS_STARTTLS:
		client_reply_starttls(c, r);
		break;
	case CS_MAIL:
		client_reply_mail(c, r);
		break;
	case CS_RCPT:
		client_reply_rcpt(c, r);
		break;
	case CS_DATA:
		client_reply_data(c, r);
		break;
	case CS_EOM:
		client_reply_eom(c, r);
		break;
	case CS_AUTH:
	case CS_AUTH_STEP:
		client_auth_reply(c, r);
		break;
	case CS_AUTH_CANCEL:
		/* 501 as a rule: whatever it is, the mechanism failed,
		 * and why was noted when "*" was sent */
		client_auth_next(c, r);
		break;
	case CS_RSET:
		client_reply_rset(c, r);
		break;
	case CS_QUIT:
		client_close(c, &c->final);
		break;
	case CS_INIT:
	case CS_RESOLVE:
	case CS_CONNECT:
	case CS_HANDSHAKE:
	case CS_READY:
	case CS_SIZE:
	case CS_BODY:
	case CS_REFUSED:
	case CS_CLOSED:
	case CS__COUNT:
		/* a reply nobody asked for, e.g. a 5xx in the middle of
		 * the body */
		client_unexpected(c, r);
		break;
	}
}

/* ---- libevent callbacks ---- */

static void
client_read_replies(struct smtp_client *c, struct bufferevent *bev)
{
	struct evbuffer *in;
	struct evbuffer_ptr eol;
	size_t eol_len, len;
	char line[CLIENT_LINE_MAX + 1], trace[CLIENT_LINE_MAX + 1];

	/* Stop when the session changed under us: closed, freed, or the
	 * plain bufferevent replaced by the TLS filter. */
	while (!c->dying && c->bev == bev && c->state != CS_CLOSED &&
	    c->state != CS_HANDSHAKE && !c->auth_working) {
		in = bufferevent_get_input(bev);
		if (evbuffer_get_length(in) == 0)
			return;
		eol = evbuffer_search_eol(in, NULL, &eol_len,
		    EVBUFFER_EOL_CRLF);
		if (eol.pos < 0) {
			if (evbuffer_get_length(in) >= CLIENT_LINE_MAX)
				client_close_msg(c, OC_PROTOCOL,
				    "reply line longer than %d bytes",
				    CLIENT_LINE_MAX);
			return;
		}
		if ((size_t)eol.pos + eol_len > CLIENT_LINE_MAX) {
			client_close_msg(c, OC_PROTOCOL,
			    "reply line longer than %d bytes",
			    CLIENT_LINE_MAX);
			return;
		}
		len = (size_t)eol.pos;
		evbuffer_remove(in, line, len);
		evbuffer_drain(in, eol_len);
		line[len] = '\0';
		/* a challenge is no secret as such, but it is the other
		 * half of the exchange: redacted like our answers. The
		 * trace is only made when debugging: a copy per line. */
		if (!log_getdebug())
			trace[0] = '\0';
		else if ((c->state == CS_AUTH || c->state == CS_AUTH_STEP ||
		    c->state == CS_AUTH_CANCEL) && len >= 4 &&
		    strncmp(line, "334", 3) == 0)
			snprintf(trace, sizeof(trace), "334 <redacted>");
		else
			log_sanitize(trace, sizeof(trace), line, len);
		log_debug("%s: <<< %s", c->peer, trace);
		switch (smtp_reply_feed(&c->parser, line, len)) {
		case SMTP_REPLY_MORE:
			break;
		case SMTP_REPLY_DONE:
			client_reply(c, &c->parser.reply);
			break;
		case SMTP_REPLY_ERROR:
			client_close_msg(c, OC_PROTOCOL, "malformed reply: "
			    "%s", trace);
			return;
		case SMTP_REPLY_TOO_LONG:
			client_close_msg(c, OC_PROTOCOL, "reply of too many "
			    "lines (over %d)", SMTP_REPLY_MAX_LINES);
			return;
		}
	}
}

static void
client_read_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_client *c = arg;

	client_hold(c);
	client_read_replies(c, bev);
	client_release(c);
}

static void
client_write_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_client *c = arg;

	client_hold(c);
	if (c->bev == bev && !c->dying && c->state == CS_BODY)
		client_body_fill(c);
	client_release(c);
}

static void
client_io_failed(struct smtp_client *c, struct bufferevent *bev, short what)
{
	unsigned long e, first = 0;
	char why[256];
	int serr = EVUTIL_SOCKET_ERROR();
	SSL *ssl;

	while ((e = bufferevent_get_openssl_error(bev)) != 0)
		if (first == 0)
			first = e;

	c->stale = client_is_stale(c);
	switch (c->state) {
	case CS_QUIT:
		/* the server hung up instead of (or after) its 221 */
		client_close(c, &c->final);
		break;
	case CS_HANDSHAKE:
		ssl = bufferevent_openssl_get_ssl(bev);
		/* Whatever broke it, the next connection starts afresh
		 * rather than offer the same session again. */
		tls_session_forget(ssl);
		if (first != 0 || (c->verify && tls_verify_error(ssl) != NULL))
			client_close_msg(c, OC_TLS, "TLS: %s",
			    tls_handshake_error(ssl, first, why, sizeof(why)));
		else if (what & BEV_EVENT_EOF)
			client_close_msg(c, OC_TLS, "TLS: connection closed "
			    "by server during handshake");
		else
			client_close_msg(c, OC_TLS, "TLS: handshake failed: %s",
			    serr != 0 ? strerror(serr) : "connection lost");
		break;
	case CS_INIT:
	case CS_RESOLVE:
	case CS_CONNECT:
	case CS_GREETING:
	case CS_EHLO:
	case CS_HELO:
	case CS_STARTTLS:
	case CS_AUTH:
	case CS_AUTH_STEP:
	case CS_AUTH_CANCEL:
	case CS_READY:
	case CS_SIZE:
	case CS_MAIL:
	case CS_RCPT:
	case CS_DATA:
	case CS_BODY:
	case CS_EOM:
	case CS_REFUSED:
	case CS_RSET:
	case CS_CLOSED:
	case CS__COUNT:
		if (first != 0)
			client_close_msg(c, OC_TLS, "TLS: %s",
			    tls_handshake_error(NULL, first, why, sizeof(why)));
		else if ((what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) &&
		    c->auth_demanded && c->authed == NULL &&
		    c->auth_secret == NULL)
			/* A reset counts too: our RSET may reach a socket
			 * the server already closed. */
			client_close_msg(c, OC_NOCRED, "server requires "
			    "authentication and no credentials are configured "
			    "(it closed the connection)");
		else if ((what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) &&
		    c->auth_demanded && c->authed == NULL &&
		    c->state != CS_AUTH && c->state != CS_AUTH_STEP &&
		    c->state != CS_AUTH_CANCEL)
			/* the owner learned it: AUTH comes first next time,
			 * and that can be at once */
			client_close_msg(c, OC_AUTH_RETRY, "server requires "
			    "authentication and %s the connection before "
			    "AUTH", (what & BEV_EVENT_EOF) ? "closed" :
			    "dropped");
		else if ((what & BEV_EVENT_EOF) && c->auth_demanded &&
		    c->authed == NULL)
			client_close_msg(c, OC_AUTH, "server closed the "
			    "connection during AUTH");
		else if (what & BEV_EVENT_EOF)
			client_close_msg(c, OC_PROTOCOL,
			    "connection closed by server%s",
			    client_eom_note(c));
		else
			client_close_msg(c, OC_PROTOCOL, "connection error: "
			    "%s%s", serr != 0 ? strerror(serr) : "unknown",
			    client_eom_note(c));
		break;
	}
}

/*
 * The one duplicate window SMTP leaves open (RFC 1047): the connection
 * broke, or the reply did not come in time, after the final "." had left
 * our buffers. The server may have taken the message; we cannot know, and
 * retrying is the only choice that loses nothing (Postfix does the same),
 * so the outcome stays temporary and says it may arrive twice. If the "."
 * was still in our buffers, the server cannot have the message and the
 * retry is clean. Returns the note to append, or "".
 */
static const char *
client_eom_note(struct smtp_client *c)
{
	struct bufferevent *under;

	if (c->state != CS_EOM || c->bev == NULL)
		return "";
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
		return "";
	under = bufferevent_get_underlying(c->bev);
	if (under != NULL &&
	    evbuffer_get_length(bufferevent_get_output(under)) > 0)
		return "";
	return " after the end of data was sent (the server may have the "
	    "message: a retry may deliver it twice)";
}

static void
client_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct smtp_client *c = arg;

	client_hold(c);
	if (c->bev != bev || c->dying || c->state == CS_CLOSED)
		goto out;
	if (what & BEV_EVENT_CONNECTED) {
		/* only SSL bufferevents report this: handshake done */
		if (c->state == CS_HANDSHAKE)
			client_tls_up(c);
		goto out;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		/* a last reply may sit in the input, e.g. 421 then close */
		if (what & BEV_EVENT_EOF)
			client_read_replies(c, bev);
		if (c->bev == bev && !c->dying && c->state != CS_CLOSED)
			client_io_failed(c, bev, what);
	}
out:
	client_release(c);
}

static const char *
client_state_waiting(enum client_state s)
{
	switch (s) {
	case CS_INIT:
	case CS_RESOLVE:
	case CS_CONNECT:
	case CS_READY:
	case CS_REFUSED:
	case CS_CLOSED:
	case CS__COUNT:
		break;
	case CS_HANDSHAKE:
		return "the TLS handshake";
	case CS_GREETING:
		return "the greeting";
	case CS_EHLO:
		return "the reply to EHLO";
	case CS_HELO:
		return "the reply to HELO";
	case CS_STARTTLS:
		return "the reply to STARTTLS";
	case CS_AUTH:
		return "the reply to AUTH";
	case CS_AUTH_STEP:
		return "the reply to an AUTH response";
	case CS_AUTH_CANCEL:
		return "the reply to a cancelled AUTH";
	case CS_SIZE:
		return "the message size to be counted";
	case CS_MAIL:
		return "the reply to MAIL";
	case CS_RCPT:
		return "the reply to RCPT";
	case CS_DATA:
		return "the reply to DATA";
	case CS_BODY:
		return "the server to take the message body";
	case CS_EOM:
		return "the reply to the end of data";
	case CS_RSET:
		return "the reply to RSET";
	case CS_QUIT:
		return "the reply to QUIT";
	}
	return "the server";
}

static void
client_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_client *c = arg;
	struct outcome o;
	unsigned secs;

	client_hold(c);
	if (c->dying || c->state == CS_CLOSED)
		goto out;
	if (c->state == CS_QUIT) {
		client_close(c, &c->final);
		goto out;
	}
	if (c->state == CS_SIZE) {
		/* our own slowness (a stalled disk, a busy pool): the
		 * server did nothing wrong and gets a QUIT; the count's
		 * result is dropped when it comes */
		outcome_set(&o, OUTCOME_TEMPORARY, OC_LOCAL, "timeout after "
		    "%us waiting for %s", c->timeout_command,
		    client_state_waiting(c->state));
		client_cancel(c, &o);
		goto out;
	}
	if (c->state == CS_HANDSHAKE)
		tls_session_forget(bufferevent_openssl_get_ssl(c->bev));
	secs = c->state == CS_EOM ? c->timeout_data : c->timeout_command;
	client_close_msg(c, OC_TIMEOUT, "timeout after %us waiting for %s%s",
	    secs, client_state_waiting(c->state), client_eom_note(c));
out:
	client_release(c);
}

/* Work that must not run inside the public function that asked for it. */
static void
client_defer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_client *c = arg;

	client_hold(c);
	if (c->dying)
		goto out;
	if (c->close_pending) {
		c->close_pending = 0;
		c->cb.closed(c, &c->final, c->arg);
		goto out;
	}
	switch (c->state) {
	case CS_INIT:
		if (c->tls != TLS_MODE_NONE && c->ssl_ctx == NULL) {
			client_close_msg(c, OC_TLS, "TLS: no TLS context for "
			    "%s", c->host);
			break;
		}
		client_enter(c, CS_RESOLVE);
		break;
	case CS_REFUSED:
		client_txn_end(c, &c->txn, 0);
		break;
	case CS_RESOLVE:
	case CS_CONNECT:
	case CS_HANDSHAKE:
	case CS_GREETING:
	case CS_EHLO:
	case CS_HELO:
	case CS_STARTTLS:
	case CS_AUTH:
	case CS_AUTH_STEP:
	case CS_AUTH_CANCEL:
	case CS_READY:
	case CS_SIZE:
	case CS_MAIL:
	case CS_RCPT:
	case CS_DATA:
	case CS_BODY:
	case CS_EOM:
	case CS_RSET:
	case CS_QUIT:
	case CS_CLOSED:
	case CS__COUNT:
		break;
	}
out:
	client_release(c);
}

/* ---- public ---- */

struct smtp_client *
smtp_client_new(struct event_base *base, struct evdns_base *dns,
    const struct smtp_client_params *params, const struct smtp_client_cb *cb,
    void *arg)
{
	struct smtp_client *c;
	char *p;

	c = xcalloc(1, sizeof(*c));
	c->base = base;
	c->dns = dns;
	c->host = xstrdup(params->host);
	c->port = xstrdup(params->port);
	c->helo = xstrdup(params->helo != NULL ? params->helo : "localhost");
	/* config.c validates the name; this only keeps a bad one from
	 * turning into a second command line */
	for (p = c->helo; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	c->tls = params->tls;
	c->ssl_ctx = params->ssl_ctx;
	c->verify = c->ssl_ctx != NULL ? tls_ctx_verifies(c->ssl_ctx) : 0;
	c->timeout_connect = params->timeout_connect ? params->timeout_connect :
	    DEFAULT_TIMEOUT_CONNECT;
	c->timeout_command = params->timeout_command ? params->timeout_command :
	    DEFAULT_TIMEOUT_COMMAND;
	c->timeout_data = params->timeout_data ? params->timeout_data :
	    DEFAULT_TIMEOUT_DATA;
	c->line_limit = params->line_limit;
	c->worker = params->worker;
	c->cb = *cb;
	c->arg = arg;
	c->state = CS_INIT;
	c->conn_fd = -1;
	c->msg.body_fd = -1;
	snprintf(c->peer, sizeof(c->peer), "%s:%s", c->host, c->port);
	outcome_set(&c->final, OUTCOME_OK, OC_NONE, "session closed");
	smtp_reply_parser_init(&c->parser);
	c->ev_timer = evtimer_new(base, client_timer_cb, c);
	c->ev_defer = event_new(base, -1, 0, client_defer_cb, c);
	if (c->ev_timer == NULL || c->ev_defer == NULL)
		fatalx("%s: event_new", __func__);
	return c;
}

void
smtp_client_connect(struct smtp_client *c)
{
	if (c->state != CS_INIT || c->dying)
		return;
	/* from the loop, so even an immediate failure calls closed() after
	 * this returns */
	event_active(c->ev_defer, EV_TIMEOUT, 1);
}

/* Whether an address can go on a command line: no control characters (a
 * CR or LF would start a command of its own) and no longer than a path.
 * The server checked the syntax already; this is the last line of defence
 * against command injection, not a validator. */
static int
client_addr_sane(const char *a)
{
	const unsigned char *p;

	if (strlen(a) > SMTP_PATH_MAX)
		return 0;
	for (p = (const unsigned char *)a; *p != '\0'; p++)
		if (*p < 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

static void
client_refuse(struct smtp_client *c, enum outcome_status status,
    enum outcome_class class, int code, const char *enhanced,
    const char *fmt, ...)
{
	char text[OUTCOME_TEXT_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	outcome_set(&c->txn, status, class, "%s", text);
	c->txn.code = code;
	snprintf(c->txn.enhanced, sizeof(c->txn.enhanced), "%s", enhanced);
	client_enter(c, CS_REFUSED);
}

int
smtp_client_send(struct smtp_client *c, const struct smtp_client_msg *msg)
{
	size_t i;
	int sane;

	if (c == NULL || msg == NULL || c->dying || c->state != CS_READY ||
	    c->quit_requested || msg->nrcpts == 0 || msg->sender == NULL)
		return -1;
	client_hold(c);
	c->msg = *msg;
	c->pipelined = c->mail_ok = c->abandon = c->rcpt_temp = 0;
	c->heard = 0;
	c->data_piped = c->auth_redo = 0;
	c->rcpt_idx = c->rcpt_ok = 0;
	free(c->held);
	c->held = NULL;
	if ((c->hold = client_auth_possible(c)) != 0)
		c->held = xcalloc(msg->nrcpts, sizeof(*c->held));

	sane = client_addr_sane(msg->sender);
	for (i = 0; sane && i < msg->nrcpts; i++)
		sane = client_addr_sane(msg->rcpts[i]);
	if (!sane) {
		client_refuse(c, OUTCOME_PERMANENT, OC_LOCAL, 0, "5.1.3",
		    "address unfit for the SMTP command line");
	} else if (msg->smtputf8 && !(c->ehlo.exts & SMTP_EXT_SMTPUTF8)) {
		client_refuse(c, OUTCOME_PERMANENT, OC_REPLY, 554, "5.6.7",
		    "SMTPUTF8 is required, but was not offered by host %s",
		    c->peer);
	} else if (client_wire_size(c)) {
		client_enter(c, CS_SIZE);
	} else {
		client_size_check(c);
	}
	client_release(c);
	return 0;
}

void
smtp_client_quit(struct smtp_client *c)
{
	struct outcome o;

	if (c == NULL || c->dying)
		return;
	client_hold(c);
	switch (c->state) {
	case CS_INIT:
	case CS_RESOLVE:
	case CS_CONNECT:
	case CS_HANDSHAKE:
		/* no SMTP session yet (or none we can talk on): drop */
		outcome_set(&o, OUTCOME_OK, OC_NONE, "session closed before "
		    "it was established");
		client_close_later(c, &o);
		break;
	case CS_READY:
		client_enter(c, CS_QUIT);
		break;
	case CS_GREETING:
	case CS_EHLO:
	case CS_HELO:
	case CS_STARTTLS:
	case CS_AUTH:
	case CS_AUTH_STEP:
	case CS_AUTH_CANCEL:
	case CS_SIZE:
	case CS_MAIL:
	case CS_RCPT:
	case CS_DATA:
	case CS_BODY:
	case CS_EOM:
	case CS_REFUSED:
	case CS_RSET:
		/* QUIT when this exchange (or transaction) has ended */
		c->quit_requested = 1;
		break;
	case CS_QUIT:
	case CS_CLOSED:
	case CS__COUNT:
		break;
	}
	client_release(c);
}

void
smtp_client_free(struct smtp_client *c)
{
	if (c == NULL || c->dying)
		return;
	client_teardown(c);
	/* the secret goes now, even if the memory waits for an entry
	 * point to return */
	client_auth_clear(c);
	c->state = CS_CLOSED;
	c->close_pending = 0;
	c->dying = 1;
	if (c->refs == 0 && c->jobs == 0)
		client_destroy(c);
}

const char *
smtp_client_peer(const struct smtp_client *c)
{
	return c->peer;
}

const struct smtp_ehlo *
smtp_client_ehlo(const struct smtp_client *c)
{
	return &c->ehlo;
}

void
smtp_client_set_auth(struct smtp_client *c,
    const struct smtp_client_auth *auth)
{
	if (c == NULL || c->dying)
		return;
	client_auth_clear(c);
	if (auth == NULL || auth->secret == NULL)
		return;
	c->auth_user = xstrdup(auth->user != NULL ? auth->user : "");
	c->auth_secret = xstrdup(auth->secret);
	c->auth_order = auth->mechanisms != NULL && *auth->mechanisms != '\0' ?
	    xstrdup(auth->mechanisms) : NULL;
	c->auth_plaintext = auth->allow_plaintext;
	c->auth_first = auth->first;
}

const char *
smtp_client_auth_mech(const struct smtp_client *c)
{
	return c->authed;
}

int
smtp_client_stale(const struct smtp_client *c)
{
	return c->stale;
}

const SSL *
smtp_client_ssl(const struct smtp_client *c)
{
	return c->bev != NULL ? bufferevent_openssl_get_ssl(c->bev) : NULL;
}
