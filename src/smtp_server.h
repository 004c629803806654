/*
 * Inbound SMTP sessions (RFC 5321): a table of commands, one state machine
 * per session and a transaction object that exists only between MAIL and
 * the end of DATA/BDAT. Message data streams into the queue as it arrives;
 * the 250 after DATA is sent only when the queue reports the commit durable
 * and carries the queue id.
 */
#ifndef SMARTHOST_SMTP_SERVER_H
#define SMARTHOST_SMTP_SERVER_H

#include <sys/socket.h>
#include <event2/event.h>
#include <event2/util.h>

#include "config.h"
#include "envelope.h"
#include "queue.h"

struct smtp_server;

struct smtp_server_params {
	const struct config *cfg;  /* limits, hostname; see set_config */
	struct queue *queue;
	/* Called for each committed message after the 250 is queued for
	 * sending; the callee owns env (normally scheduler_add). */
	void (*queued)(struct envelope *env, void *arg);
	void *arg;
};

struct smtp_server *smtp_server_new(struct event_base *base,
    const struct smtp_server_params *params);
/* Closes every session at once. Accepts NULL. */
void smtp_server_free(struct smtp_server *srv);
/*
 * Starts a session on fd (which the server now owns; it must already be
 * non-blocking, as accept4 with SOCK_NONBLOCK makes it). sa is the peer
 * (AF_UNIX for local sockets); local, when not NULL, is the socket's own
 * address (a listener bound to one address knows it), else it is asked
 * with getsockname when needed. Beyond max_sessions the client gets a 421
 * and the socket is closed. The local user behind the peer is recorded
 * when it can be known: SO_PEERCRED for a Unix socket, the kernel's socket
 * table for a loopback TCP client (see peercred.h). TCP_NODELAY is the
 * listening socket's to set: accepted sockets inherit it.
 */
void smtp_server_accept(struct smtp_server *srv, evutil_socket_t fd,
    const struct sockaddr *sa, socklen_t salen,
    const struct sockaddr *local);
/*
 * Starts a session on fd (non-blocking) for a peer the caller vouches
 * for: an in-process client such as the maildrop importer. The session
 * is the same as for a socket client (limits, sender policy, Received:
 * header) but its client is "localhost[label]" and its local user is
 * uid, and the messages it commits count under source=label in the
 * accepted metric (metrics.h).
 */
void smtp_server_accept_local(struct smtp_server *srv, evutil_socket_t fd,
    const char *label, uid_t uid);
/* New sessions use cfg from now on. */
void smtp_server_set_config(struct smtp_server *srv, const struct config *cfg);
/* Sessions currently open. */
unsigned smtp_server_sessions(const struct smtp_server *srv);
/*
 * Graceful stop: idle sessions get "421 4.3.2 shutting down" and close;
 * a session inside a transaction may finish it (its message is committed
 * and answered) and then gets the 421. done(arg) runs once no session is
 * left, or after timeout seconds, when the rest are dropped (a message
 * not yet answered 250 is discarded, so nothing is lost that was
 * acknowledged).
 */
void smtp_server_shutdown(struct smtp_server *srv, unsigned timeout,
    void (*done)(void *arg), void *arg);

#endif
