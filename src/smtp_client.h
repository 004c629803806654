/*
 * One outbound SMTP session: connect (every address of the host in turn,
 * IPv4 and IPv6), TLS (STARTTLS or implicit), EHLO, then any number of
 * transactions (MAIL, RCPT..., DATA, pipelined when offered), then QUIT.
 * It speaks SMTP and reports through callbacks; what a reply means for the
 * queue is relay.c's business. Abort (smtp_client_free: drop now) and
 * cancel (smtp_client_quit: QUIT politely) differ.
 *
 * Authentication (smtp_client_set_auth) runs between EHLO and the first
 * MAIL when asked to go first, or on demand after a 530 to MAIL (or a 5.7.x
 * refusal of RCPT while AUTH is offered), in the same session.
 */
#ifndef SMARTHOST_SMTP_CLIENT_H
#define SMARTHOST_SMTP_CLIENT_H

#include <stddef.h>
#include <sys/types.h>
#include <openssl/ssl.h>
#include <event2/event.h>
#include <event2/dns.h>

#include "config.h"
#include "outcome.h"
#include "smtp_proto.h"

struct smtp_client;

struct worker;

struct smtp_client_params {
	const char *host;      /* name or numeric address; copied */
	const char *port;      /* number or service name; copied */
	enum tls_mode tls;
	SSL_CTX *ssl_ctx;      /* from tls_client_ctx_new; borrowed */
	const char *helo;      /* EHLO argument; copied */
	unsigned timeout_connect;
	unsigned timeout_command;
	unsigned timeout_data;
	/* Message lines longer than this many characters are broken with
	 * "\r\n " as smtp_proto.h describes; 0: sent as they are. MAIL's
	 * SIZE counts the inserted bytes: a bound, or, when the bound is
	 * over the server's limit, the exact count (the body is read once
	 * more for it, on the worker pool; the command timeout bounds the
	 * wait). */
	size_t line_limit;
	/* Where slow computations run (SCRAM's PBKDF2, the exact SIZE
	 * count); borrowed, must outlive the client: a job still running
	 * when the client is freed finishes on it. NULL: on the caller's
	 * thread. */
	struct worker *worker;
};

struct smtp_client_msg {
	const char *sender;           /* "" for <> */
	const char *const *rcpts;
	size_t nrcpts;
	int body_fd;                  /* read with pread; borrowed */
	off_t body_offset;
	off_t body_size;
	/* The body_size bytes of the body in memory, borrowed until the
	 * transaction's done() or the session's failed(): then body_fd is
	 * not used (body_offset still names the body's first byte). NULL:
	 * read from body_fd. */
	const unsigned char *body_mem;
	int eightbit;                 /* send BODY=8BITMIME */
	int smtputf8;                 /* send SMTPUTF8 */
};

struct smtp_client_cb {
	/* Connected, greeted, TLS up, EHLO done: ready for a transaction.
	 * Also called again after each transaction (session reuse). */
	void (*ready)(struct smtp_client *c, void *arg);
	/* The reply to RCPT number idx of the current message. */
	void (*rcpt)(struct smtp_client *c, size_t idx,
	    const struct outcome *o, void *arg);
	/* The current transaction ended: o is the final DATA reply, or the
	 * MAIL rejection (then no rcpt callbacks follow), or "no recipient
	 * accepted". The session stays usable unless failed() follows. */
	void (*done)(struct smtp_client *c, const struct outcome *o, void *arg);
	/* The session broke (connect, DNS, TLS, timeout, 421, protocol, drop)
	 * or, after smtp_client_quit, closed: o->status is OUTCOME_OK for a
	 * clean close. If a transaction was in progress, its outcome is o
	 * and done() is not called. A server that demanded AUTH and then
	 * hung up before we could give it gets OC_AUTH_RETRY (try again at
	 * once, authenticating first). Last callback; the owner then calls
	 * smtp_client_free (it may do so from inside this callback). */
	void (*closed)(struct smtp_client *c, const struct outcome *o,
	    void *arg);
	/* Optional (may be NULL). The server demanded authentication: a
	 * 530 or 5.7.0 to MAIL, or a 550..554 to RCPT (with a 5.7.x code
	 * when there are no credentials) while AUTH is offered and the
	 * session has not authenticated.
	 * Called before the client retries the transaction with AUTH (when
	 * it has credentials) or ends it with a TEMPORARY OC_NOCRED
	 * outcome (when it has none), so the owner can remember the relay
	 * requires authentication. */
	void (*auth_required)(struct smtp_client *c, void *arg);
	/* Optional. AUTH succeeded with mechanism mech. */
	void (*authenticated)(struct smtp_client *c, const char *mech,
	    void *arg);
};

/*
 * Credentials for AUTH. The client tries the mechanisms of the order that
 * the server offers, each in turn (sasl_choose_order): 535, 534, 538 or
 * 504 moves on to the next; a 4xx is temporary and ends the session with a
 * TEMPORARY OC_AUTH outcome, as does the failure of every mechanism (the
 * text lists each mechanism and its reply). No mechanism at all is used
 * without TLS unless allow_plaintext (then the session ends with a
 * TEMPORARY OC_AUTH). A server that offers no AUTH is used without it.
 */
struct smtp_client_auth {
	const char *user;        /* copied */
	const char *secret;      /* password or OAuth token; copied into
	                            memory that is wiped on free */
	const char *mechanisms;  /* order, space-separated; NULL: default */
	int allow_plaintext;
	int first;               /* authenticate right after EHLO, before
	                            any MAIL; else only when demanded */
};

/* Creates a session; nothing happens until smtp_client_connect. dns may
 * be NULL when host is numeric. */
struct smtp_client *smtp_client_new(struct event_base *base,
    struct evdns_base *dns, const struct smtp_client_params *params,
    const struct smtp_client_cb *cb, void *arg);
void smtp_client_connect(struct smtp_client *c);
/* Starts a transaction; only valid after ready(). msg's strings and fd
 * must stay valid until done() or closed(). Returns 0, or -1 if the
 * session is not ready. */
int smtp_client_send(struct smtp_client *c, const struct smtp_client_msg *msg);
/* Sends QUIT (or RSET if needed then QUIT) and closes; closed() follows. */
void smtp_client_quit(struct smtp_client *c);
/* Drops the connection at once without callbacks. Accepts NULL. */
void smtp_client_free(struct smtp_client *c);
/* "host[address]:port" of the current peer, for logs. */
const char *smtp_client_peer(const struct smtp_client *c);
/* The EHLO extensions of the current session. */
const struct smtp_ehlo *smtp_client_ehlo(const struct smtp_client *c);
/* Sets or (auth NULL) clears the credentials. Valid before
 * smtp_client_connect and between transactions. */
void smtp_client_set_auth(struct smtp_client *c,
    const struct smtp_client_auth *auth);
/* The mechanism this session authenticated with, or NULL. */
const char *smtp_client_auth_mech(const struct smtp_client *c);
/*
 * Inside closed() (or after it): 1 when the session broke on a reused
 * connection before the server said anything about the transaction in
 * progress, else 0. That is: a transaction had ended on this connection,
 * the current one's first command had left (or its size was still being
 * counted, before any command), and then the connection was closed or
 * reset, or a 421 came, with no reply to that command before.
 * So does a connection look that the server closed for its own idle
 * timeout just as the command left. The server has no part of the
 * message: sending it again at once on a new connection cannot deliver
 * it twice. A timeout is never stale.
 */
int smtp_client_stale(const struct smtp_client *c);
/* The session's TLS connection (borrowed, valid until the session
 * closes), or NULL when the session has no TLS (yet). */
const SSL *smtp_client_ssl(const struct smtp_client *c);

#endif
