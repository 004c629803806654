/*
 * Delivery attempts, over sessions that the scheduler drives. A relay
 * session is one SMTP connection to an upstream (connect, TLS, EHLO, then
 * one transaction per message, then QUIT) or, for a maildir relay, a
 * sequence of Maildir deliveries run on the worker pool. The session sends
 * only a message's pending recipients, maps every reply to a recipient
 * state (2xx sent, 5xx failed, 4xx and every session failure pending),
 * writes those states into the envelope, logs one line per recipient, and
 * reports through callbacks. What happens next to the message (retry,
 * bounce, removal) is the scheduler's business; this module never touches
 * the queue except to open bodies.
 *
 * Authentication policy lives here too. Before an SMTP session connects
 * (unless the relay says auth = "never") its credentials are looked up on
 * the worker pool: the authinfo files in order (a "*.gpg" file that exists
 * is decrypted with gpg), password_command and oauth_command. The relay
 * authenticates first when auth = "always", or "auto" and the host
 * matches auth_first or was learned to require it; then missing
 * credentials end the session before it connects, with a TEMPORARY
 * OC_NOCRED outcome and a log line saying what to fix. Otherwise it goes
 * without AUTH, hands its credentials (if any) to the client for a
 * demand, and learns the relay when the server demands. A session that
 * hits missing or rejected credentials ends with a TEMPORARY OC_NOCRED or
 * OC_AUTH outcome (never a bounce), so the scheduler backs the relay off.
 * A server that demands AUTH and hangs up before the client could give it,
 * while credentials exist, ends the session (and the message's attempt)
 * with a TEMPORARY OC_AUTH_RETRY outcome instead: the relay is learned,
 * and the scheduler tries the message again at once, without a backoff.
 *
 * Only scheduler.c uses this header.
 */
#ifndef SMARTHOST_RELAY_H
#define SMARTHOST_RELAY_H

#include <stddef.h>
#include <event2/event.h>
#include <event2/dns.h>

#include "config.h"
#include "envelope.h"
#include "outcome.h"
#include "authstate.h"
#include "queue.h"
#include "worker.h"

/* What outlives the sessions of one relay: its TLS context, made on first
 * use from the relay's ca_file and verify settings (and made again when a
 * reload changes them), and its credential cache (parsed authinfo files,
 * decrypted *.gpg files), which is re-read when a file changes. */
struct relay;
struct relay_session;

/* as (borrowed, may be NULL) is the learned "requires authentication"
 * set that every relay shares; it must outlive the relay. */
struct relay *relay_new(struct event_base *base, struct evdns_base *dns,
    struct queue *q, struct worker *w, struct authstate *as);
/* Accepts NULL. Sessions hold their own reference to the TLS context, so
 * a relay may be freed before its sessions; a credential job still on the
 * worker pool finishes without calling back. */
void relay_free(struct relay *r);

/* Forgets the parsed credential files (HUP, smarthostctl login): the next
 * lookup reads them again. */
void relay_credentials_flush(struct relay *r);
/* Forgets the TLS context, and with it the TLS sessions it would resume
 * (a reload): the next session makes a new one from the configuration of
 * the day, reading the CA file again. Sessions open now keep theirs. */
void relay_tls_flush(struct relay *r);

/*
 * Whether the credentials for rc changed since the relay last looked them
 * up: on the worker pool, the lookup of rc's credentials runs again through
 * the cache (which stats every file it reaches and re-reads changed ones;
 * *.gpg files are only stat'ed, not decrypted). Then done(changed, arg)
 * runs on the loop thread, changed 1 when a file changed, appeared or
 * vanished since then; never from inside this call, and never after
 * relay_free. A password_command's output is not watched.
 */
void relay_credentials_check(struct relay *r, const struct config *cfg,
    const struct relay_config *rc, void (*done)(int changed, void *arg),
    void *arg);

/* "host:port" of an smtp relay as logs and smarthostctl name it (the
 * default port filled in, "[v6]:port" for an IPv6 address). */
void relay_hostport(const struct relay_config *rc, char *buf, size_t len);

struct relay_session_cb {
	/* The session can take a message: the first call comes once the
	 * session is up (connected, TLS, EHLO; at once for a maildir), then
	 * one after each delivered(). The callee must call
	 * relay_session_send(), relay_session_idle() or relay_session_quit()
	 * before returning. */
	void (*ready)(struct relay_session *rs, void *arg);
	/* The attempt for env ended. Every recipient that was pending when
	 * it was sent now has its new status, dsn and reply, and was logged.
	 * o is OUTCOME_OK when the transaction ran to its end (whatever the
	 * server said about single recipients), else the failure that broke
	 * the session (then closed() follows with it). */
	void (*delivered)(struct relay_session *rs, struct envelope *env,
	    const struct outcome *o, void *arg);
	/* The attempt for env did not happen after all: the session's
	 * reused connection was closed, reset or given a 421 before the
	 * server answered the transaction's first command
	 * (smtp_client_stale()), so the server has no part of the message.
	 * env is as it was before relay_session_send(): no recipient was
	 * updated or logged. o says what broke. The owner sends env again
	 * (on another session: closed() follows at once, with OUTCOME_OK
	 * since this says nothing about the relay) or defers it with
	 * relay_defer_all(). */
	void (*unsent)(struct relay_session *rs, struct envelope *env,
	    const struct outcome *o, void *arg);
	/* The session ended: o->status is OUTCOME_OK after a requested
	 * quit, else the failure (class OC_CONNECT, OC_TLS, ...). A message
	 * in flight was reported through delivered() or unsent() first.
	 * Last callback; the callee frees the session with
	 * relay_session_free(), which it may do from inside this callback. */
	void (*closed)(struct relay_session *rs, const struct outcome *o,
	    void *arg);
};

/*
 * Starts a session for relay configuration rc (everything needed from cfg
 * and rc is copied). Nothing happens before the loop runs again, and no
 * callback ever runs from inside this function: a failure to start (no
 * TLS context, say) is reported later through closed().
 */
struct relay_session *relay_session_new(struct relay *r,
    const struct config *cfg, const struct relay_config *rc,
    const struct relay_session_cb *cb, void *arg);
/*
 * Starts the attempt for env's pending recipients; only valid from inside
 * ready() or while the session is idle. env is borrowed until delivered(). Returns 0 (delivered()
 * follows, never from inside this call), or -1 when the attempt could not
 * start (the body cannot be opened, ...): then the pending recipients were
 * already updated and logged as deferred, delivered() does not follow and
 * the session may take another message at once. When the body could not be
 * opened for lack of descriptors, errno is EMFILE or ENFILE and nothing was
 * updated: the caller tries the message again later, not as an attempt.
 */
int relay_session_send(struct relay_session *rs, struct envelope *env);
/*
 * Keeps the session open with nothing to send; only valid from inside
 * ready(). Nothing is sent until relay_session_send() or
 * relay_session_quit(), which the owner may call at any time (and which
 * it must call in the end: the owner times the wait). If the server
 * closes the connection meanwhile (its own idle timeout, a 421, a
 * restart), closed() follows with OUTCOME_OK: nothing was in flight.
 */
void relay_session_idle(struct relay_session *rs);
/* Ends the session politely (QUIT); closed() follows. Only valid from
 * inside ready() or while the session is idle. */
void relay_session_quit(struct relay_session *rs);
/* Drops the session at once, without callbacks. A message in flight keeps
 * the recipient states it had when it was sent. Accepts NULL. */
void relay_session_free(struct relay_session *rs);
/* The relay= value for logs: "host[address]:port" once connected,
 * "host:port" before, "maildir:NAME" for a maildir relay. */
const char *relay_session_peer(const struct relay_session *rs);
/* The upstream's host name (for Remote-MTA in DSNs), NULL for a maildir
 * relay. */
const char *relay_session_host(const struct relay_session *rs);

/*
 * Logs one recipient line:
 * "ID: to=<addr>, relay=R, delay=D.D, dsn=X.Y.Z, status=S (text)"
 * with the delay since env->created; text NULL means the recipient's reply.
 * In the journal the entry carries QUEUE_ID=, RELAY=, STATUS= and DSN=
 * (log.h). Counts the outcome in the metrics.
 */
void relay_log_rcpt(const struct envelope *env, size_t idx,
    const char *relay, const char *status, const char *text);
/* Marks every pending recipient of env deferred with o's text and dsn (made
 * temporary) and logs each, for an attempt that never reached a server. */
void relay_defer_all(struct envelope *env, const char *relay,
    const struct outcome *o);
/* The text a log line and a recipient's reply carry for o: the server's
 * reply or our reason on one line, "TLS: " first for a TLS failure. */
void relay_outcome_text(const struct outcome *o, char *buf, size_t len);

#endif
