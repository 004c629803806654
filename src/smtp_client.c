/*
 * One outbound SMTP session on the libevent loop: resolve, connect to each
 * address in turn, TLS (implicit from the first byte, or STARTTLS as an
 * OpenSSL filter over the plain bufferevent), EHLO, then transactions
 * (MAIL, RCPT..., DATA; one write when PIPELINING is offered), RSET after a
 * failed transaction, QUIT. It speaks SMTP and reports through the
 * callbacks of smtp_client.h; relay.c decides what the replies mean.
 *
 * Invariants:
 * - c->state says what the session waits for. client_enter() is the only
 *   place that sends commands and arms the timer (the body streamer it
 *   starts re-arms it on progress); client_reply() is the only place that
 *   interprets replies. Neither has a default: case.
 * - Nothing is sent in clear text after EHLO in STARTTLS mode unless TLS is
 *   up; a missing STARTTLS ends the session before MAIL.
 * - After closed() (state CLOSED) no callback follows and no I/O remains.
 * - The struct outlives every one of our functions that is running: each
 *   entry point (libevent callback or public function) holds a reference,
 *   and smtp_client_free() drops the connection at once but frees the
 *   memory only when the outermost entry point returns. After calling an
 *   owner callback, code checks c->dying before touching the session.
 * - The message body is streamed: at most BODY_HIWAT plus one encoded
 *   chunk sits in the output buffer, whatever the message size.
 *
 * A timeout of 0 in the parameters means the RFC 5321 default (connect 30s,
 * commands 5 min, final "." 10 min).
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
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
#include "smtp_client.h"
#include "smtp_proto.h"
#include "tls.h"
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
	/*
	 * AUTH (a later issue) slots in here: CS_AUTH and CS_AUTH_STEP, entered
	 * from client_after_ehlo() instead of CS_READY, and from the MAIL
	 * reply handler on a 530 (then MAIL is sent again after 235).
	 */
	CS_READY,     /* idle between transactions; ready() was called */
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
	[CS_READY] = "READY",
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
	struct smtp_client_cb cb;
	void *arg;

	enum client_state state;
	int refs;            /* entry points running */
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
	int tls_active;
	int greeted;
	struct event *ev_timer;
	struct event *ev_defer;
	struct smtp_reply_parser parser;
	struct smtp_ehlo ehlo;

	/* transaction: valid from smtp_client_send to done() */
	struct smtp_client_msg msg;
	int pipelined;        /* MAIL..DATA went out in one write */
	int mail_ok;
	size_t rcpt_idx;
	size_t rcpt_ok;
	int rcpt_temp;        /* some RCPT got a 4xx */
	int abandon;          /* "." sent only to end a DATA that got 354 */
	struct outcome txn;   /* outcome when the transaction ends early */
	struct smtp_body_encoder enc;
	off_t body_pos;
	off_t body_end;
	off_t body_wire;      /* encoded bytes sent, for the trace */
	char *rbuf;           /* BODY_CHUNK bytes while in CS_BODY */
};

static void client_enter(struct smtp_client *, enum client_state);
static void client_reply(struct smtp_client *, const struct smtp_reply *);
static void client_read_cb(struct bufferevent *, void *);
static void client_write_cb(struct bufferevent *, void *);
static void client_event_cb(struct bufferevent *, short, void *);
static void client_connect_next(struct smtp_client *);
static void client_read_replies(struct smtp_client *, struct bufferevent *);

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
	free(c->rbuf);
	free(c->host);
	free(c->port);
	free(c->helo);
	free(c);
}

/* Ends an entry point; c may be gone afterwards. */
static void
client_release(struct smtp_client *c)
{
	if (--c->refs == 0 && c->dying)
		client_destroy(c);
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
	if (c->bev != NULL) {
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
	log_debug("%s: >>> %s", c->peer, log_sanitize(trace, sizeof(trace),
	    line, (size_t)n));
	line[n++] = '\r';
	line[n++] = '\n';
	if (out == NULL)
		out = bufferevent_get_output(c->bev);
	if (evbuffer_add(out, line, (size_t)n) == -1)
		fatalx("%s: out of memory", __func__);
	if (line != buf)
		free(line);
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

static void
client_bev_setup(struct smtp_client *c)
{
	bufferevent_setcb(c->bev, client_read_cb, client_write_cb,
	    client_event_cb, c);
	/* The write callback refills the body when the output drains to
	 * BODY_LOWAT; outside CS_BODY it does nothing. */
	bufferevent_setwatermark(c->bev, EV_WRITE, BODY_LOWAT, 0);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void
client_connected(struct smtp_client *c, int fd)
{
	SSL *ssl;
	char why[256];
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

	if (c->tls == TLS_MODE_IMPLICIT) {
		if ((ssl = tls_client_ssl_new(c->ssl_ctx, c->host,
		    c->verify)) == NULL) {
			close(fd);
			client_close_msg(c, OC_TLS, "TLS: %s",
			    tls_handshake_error(NULL, 0, why, sizeof(why)));
			return;
		}
		c->bev = bufferevent_openssl_socket_new(c->base, fd, ssl,
		    BUFFEREVENT_SSL_CONNECTING,
		    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (c->bev == NULL) {
			SSL_free(ssl);
			close(fd);
			fatalx("%s: bufferevent_openssl_socket_new", __func__);
		}
		bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
		client_bev_setup(c);
		client_enter(c, CS_HANDSHAKE);
		return;
	}
	c->bev = bufferevent_socket_new(c->base, fd,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (c->bev == NULL) {
		close(fd);
		fatalx("%s: bufferevent_socket_new", __func__);
	}
	client_bev_setup(c);
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
	if (c->ntried > 1)
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

static void
client_starttls(struct smtp_client *c)
{
	struct bufferevent *tlsbev;
	SSL *ssl;
	char why[256];

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
	if ((ssl = tls_client_ssl_new(c->ssl_ctx, c->host, c->verify)) ==
	    NULL) {
		client_close_msg(c, OC_TLS, "TLS: %s",
		    tls_handshake_error(NULL, 0, why, sizeof(why)));
		return;
	}
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
	client_bev_setup(c);
	client_enter(c, CS_HANDSHAKE);
}

static void
client_tls_up(struct smtp_client *c)
{
	char desc[128];

	c->tls_active = 1;
	log_debug("%s: TLS established: %s", c->peer,
	    tls_describe(bufferevent_openssl_get_ssl(c->bev), desc,
	    sizeof(desc)));
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
		    (long long)m->body_size);
	/* XXX: 8-bit data to a server without 8BITMIME goes as is, as
	 * Postfix does by default; converting to quoted-printable is not
	 * done. */
	if (m->eightbit && (c->ehlo.exts & SMTP_EXT_8BITMIME))
		n += snprintf(params + n, sizeof(params) - n,
		    " BODY=8BITMIME");
	if (m->smtputf8 && (c->ehlo.exts & SMTP_EXT_SMTPUTF8))
		snprintf(params + n, sizeof(params) - n, " SMTPUTF8");

	/*
	 * With PIPELINING, MAIL, every RCPT and DATA leave in one write
	 * (RFC 2920): one round trip for the envelope instead of 2 + nrcpts.
	 * The replies are then read in order by the same states as without.
	 */
	c->pipelined = (c->ehlo.exts & SMTP_EXT_PIPELINING) != 0;
	if ((batch = evbuffer_new()) == NULL)
		fatalx("%s: evbuffer_new", __func__);
	client_cmd(c, batch, "MAIL FROM:<%s>%s", m->sender, params);
	if (c->pipelined) {
		for (i = 0; i < m->nrcpts; i++)
			client_cmd(c, batch, "RCPT TO:<%s>", m->rcpts[i]);
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

	/* rep.text is outcome_from_reply's "550 5.1.1 text" */
	outcome_set(&c->txn, rep.status, OC_REPLY, "no recipient accepted "
	    "(last reply: %s)", rep.text);
	c->txn.code = rep.code;
	memcpy(c->txn.enhanced, rep.enhanced, sizeof(c->txn.enhanced));
}

static void
client_body_start(struct smtp_client *c)
{
	smtp_body_encoder_init(&c->enc);
	c->body_pos = c->msg.body_offset;
	c->body_end = c->msg.body_offset + c->msg.body_size;
	c->body_wire = 0;
	if (c->rbuf == NULL)
		c->rbuf = xmalloc(BODY_CHUNK);
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
	size_t want, got, enc;
	ssize_t n;
	int last;

	out = bufferevent_get_output(c->bev);
	while (evbuffer_get_length(out) < BODY_HIWAT) {
		want = BODY_CHUNK;
		if ((off_t)want > c->body_end - c->body_pos)
			want = (size_t)(c->body_end - c->body_pos);
		for (got = 0; got < want; got += (size_t)n) {
			n = pread(c->msg.body_fd, c->rbuf + got, want - got,
			    c->body_pos + (off_t)got);
			if (n == -1 && errno == EINTR) {
				n = 0;
				continue;
			}
			/* A half-sent body cannot be taken back: drop the
			 * connection so the server discards it. */
			if (n == -1) {
				client_close_msg(c, OC_LOCAL, "read message "
				    "body: %s", strerror(errno));
				return;
			}
			if (n == 0) {
				client_close_msg(c, OC_LOCAL, "read message "
				    "body: file shorter than %lld bytes",
				    (long long)c->msg.body_size);
				return;
			}
		}
		c->body_pos += (off_t)got;
		last = c->body_pos == c->body_end;
		/* smtp_body_encode needs 2 * len + 2, the finish 5 */
		if (evbuffer_reserve_space(out, 2 * got + 7, &vec, 1) < 1)
			fatalx("%s: evbuffer_reserve_space", __func__);
		enc = smtp_body_encode(&c->enc, c->rbuf, got, vec.iov_base);
		if (last)
			enc += smtp_body_encode_finish(&c->enc,
			    (char *)vec.iov_base + enc);
		vec.iov_len = enc;
		if (evbuffer_commit_space(out, &vec, 1) == -1)
			fatalx("%s: evbuffer_commit_space", __func__);
		c->body_wire += (off_t)enc;
		if (last) {
			log_debug("%s: >>> [body: %lld bytes from file, %lld "
			    "on the wire, \".\" included]", c->peer,
			    (long long)c->msg.body_size,
			    (long long)c->body_wire);
			client_enter(c, CS_EOM);
			return;
		}
	}
	/* progress: the data block timeout starts again */
	client_timer(c, c->timeout_command);
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
		if (!c->pipelined)
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
	/* AUTH (a later issue): enter CS_AUTH here when this relay must
	 * authenticate first. */
	client_enter(c, CS_READY);
}

static void
client_unexpected(struct smtp_client *c, const struct smtp_reply *r)
{
	client_close_msg(c, OC_PROTOCOL, "unexpected reply in state %s: %d %s",
	    client_state_names[c->state], r->code, r->text);
}

static void
client_reply(struct smtp_client *c, const struct smtp_reply *r)
{
	struct outcome o;
	int cls = r->code / 100;

	/* 421 may come at any time (shutdown, idle timeout) and ends the
	 * session; a transaction in progress gets it as its outcome. */
	if (r->code == 421 && c->state != CS_QUIT) {
		outcome_from_reply(&o, r->code, r->enhanced, r->text);
		client_close(c, &o);
		return;
	}

	switch (c->state) {
	case CS_GREETING:
		if (cls != 2) {
			/* 554: no service here; not worth a QUIT. */
			outcome_from_reply(&o, r->code, r->enhanced, r->text);
			client_close(c, &o);
			return;
		}
		c->greeted = 1;
		client_enter(c, CS_EHLO);
		break;
	case CS_EHLO:
		if (cls == 2) {
			smtp_ehlo_parse(r->text, &c->ehlo);
			client_after_ehlo(c);
		} else if ((r->code == 500 || r->code == 502) &&
		    c->tls != TLS_MODE_STARTTLS) {
			client_enter(c, CS_HELO);
		} else {
			outcome_from_reply(&o, r->code, r->enhanced, r->text);
			client_cancel(c, &o);
		}
		break;
	case CS_HELO:
		if (cls == 2) {
			client_after_ehlo(c);
		} else {
			outcome_from_reply(&o, r->code, r->enhanced, r->text);
			client_cancel(c, &o);
		}
		break;
	case CS_STARTTLS:
		if (r->code == 220) {
			client_starttls(c);
		} else {
			/* A 5xx here says nothing about the message:
			 * temporary, so it waits for the server to fix TLS. */
			outcome_set(&o, OUTCOME_TEMPORARY, OC_TLS,
			    "TLS: STARTTLS refused: %d %s", r->code, r->text);
			client_cancel(c, &o);
		}
		break;
	case CS_MAIL:
		if (cls == 2) {
			c->mail_ok = 1;
		} else if (cls == 4 || cls == 5) {
			/* AUTH (a later issue): on 530, authenticate and
			 * send MAIL again instead of failing. */
			outcome_from_reply(&c->txn, r->code, r->enhanced,
			    r->text);
		} else {
			client_unexpected(c, r);
			return;
		}
		if (c->mail_ok || c->pipelined) {
			/* pipelined: the RCPT and DATA replies still come */
			c->rcpt_idx = 0;
			client_enter(c, CS_RCPT);
		} else {
			client_txn_end(c, &c->txn, 1);
		}
		break;
	case CS_RCPT:
		if (cls != 2 && cls != 4 && cls != 5) {
			client_unexpected(c, r);
			return;
		}
		if (c->mail_ok) {
			outcome_from_reply(&o, r->code, r->enhanced, r->text);
			if (cls == 2) {
				c->rcpt_ok++;
			} else if (cls == 4 || !c->rcpt_temp) {
				c->txn = o;
				if (cls == 4)
					c->rcpt_temp = 1;
			}
			c->cb.rcpt(c, c->rcpt_idx, &o, c->arg);
			if (c->dying || c->state != CS_RCPT)
				return;
		}
		if (++c->rcpt_idx < c->msg.nrcpts) {
			client_enter(c, CS_RCPT);
		} else if (c->pipelined) {
			if (c->mail_ok && c->rcpt_ok == 0)
				client_no_rcpt(c);
			client_enter(c, CS_DATA);
		} else if (c->rcpt_ok > 0) {
			client_enter(c, CS_DATA);
		} else {
			client_no_rcpt(c);
			client_txn_end(c, &c->txn, 1);
		}
		break;
	case CS_DATA:
		if (r->code == 354) {
			if (c->mail_ok && c->rcpt_ok > 0) {
				client_enter(c, CS_BODY);
				break;
			}
			/*
			 * RFC 2920 3.1: the server accepted DATA although
			 * nothing was accepted before it. End the empty
			 * message with a lone "."; the server has no
			 * recipient to deliver it to.
			 */
			c->abandon = 1;
			client_enter(c, CS_EOM);
		} else if (cls == 4 || cls == 5) {
			if (c->mail_ok && c->rcpt_ok > 0)
				outcome_from_reply(&c->txn, r->code,
				    r->enhanced, r->text);
			client_txn_end(c, &c->txn, 1);
		} else {
			client_unexpected(c, r);
		}
		break;
	case CS_EOM:
		if (c->abandon) {
			client_txn_end(c, &c->txn, 0);
		} else if (cls == 2 || cls == 4 || cls == 5) {
			outcome_from_reply(&o, r->code, r->enhanced, r->text);
			client_txn_end(c, &o, 0);
		} else {
			client_unexpected(c, r);
		}
		break;
	case CS_RSET:
		if (cls == 2) {
			client_enter(c, CS_READY);
		} else {
			outcome_set(&o, OUTCOME_TEMPORARY, OC_REPLY,
			    "RSET refused: %d %s", r->code, r->text);
			client_cancel(c, &o);
		}
		break;
	case CS_QUIT:
		client_close(c, &c->final);
		break;
	case CS_INIT:
	case CS_RESOLVE:
	case CS_CONNECT:
	case CS_HANDSHAKE:
	case CS_READY:
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
	    c->state != CS_HANDSHAKE) {
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
		log_debug("%s: <<< %s", c->peer, log_sanitize(trace,
		    sizeof(trace), line, len));
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

	switch (c->state) {
	case CS_QUIT:
		/* the server hung up instead of (or after) its 221 */
		client_close(c, &c->final);
		break;
	case CS_HANDSHAKE:
		ssl = bufferevent_openssl_get_ssl(bev);
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
	case CS_READY:
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
		else if (what & BEV_EVENT_EOF)
			client_close_msg(c, OC_PROTOCOL,
			    "connection closed by server");
		else
			client_close_msg(c, OC_PROTOCOL, "connection error: %s",
			    serr != 0 ? strerror(serr) : "unknown");
		break;
	}
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
	unsigned secs;

	client_hold(c);
	if (c->dying || c->state == CS_CLOSED)
		goto out;
	if (c->state == CS_QUIT) {
		client_close(c, &c->final);
		goto out;
	}
	secs = c->state == CS_EOM ? c->timeout_data : c->timeout_command;
	client_close_msg(c, OC_TIMEOUT, "timeout after %us waiting for %s",
	    secs, client_state_waiting(c->state));
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
	case CS_READY:
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
client_refuse(struct smtp_client *c, enum outcome_class class, int code,
    const char *enhanced, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void
client_refuse(struct smtp_client *c, enum outcome_class class, int code,
    const char *enhanced, const char *fmt, ...)
{
	char text[OUTCOME_TEXT_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	outcome_set(&c->txn, OUTCOME_PERMANENT, class, "%s", text);
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
	c->rcpt_idx = c->rcpt_ok = 0;

	sane = client_addr_sane(msg->sender);
	for (i = 0; sane && i < msg->nrcpts; i++)
		sane = client_addr_sane(msg->rcpts[i]);
	if (!sane) {
		client_refuse(c, OC_LOCAL, 0, "5.1.3", "address unfit for the "
		    "SMTP command line");
	} else if (msg->smtputf8 && !(c->ehlo.exts & SMTP_EXT_SMTPUTF8)) {
		client_refuse(c, OC_REPLY, 554, "5.6.7", "SMTPUTF8 is "
		    "required, but was not offered by host %s", c->peer);
	} else if ((c->ehlo.exts & SMTP_EXT_SIZE) && c->ehlo.size > 0 &&
	    (unsigned long long)msg->body_size > c->ehlo.size) {
		client_refuse(c, OC_REPLY, 552, "5.3.4", "message size %lld "
		    "exceeds size limit %lu of host %s",
		    (long long)msg->body_size, c->ehlo.size, c->peer);
	} else {
		client_enter(c, CS_MAIL);
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
	c->state = CS_CLOSED;
	c->close_pending = 0;
	c->dying = 1;
	if (c->refs == 0)
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
