/*
 * The control socket: how smarthostctl talks to the running daemon.
 *
 * The daemon listens on a Unix stream socket (config control_socket,
 * default <spool>/control.sock), created after privileges are dropped so
 * that it belongs to the daemon user: mode 0600, or 0666 when a control
 * group is configured (then the daemon alone decides). Each connection is
 * checked with SO_PEERCRED and SO_PEERGROUPS: root, the daemon's own uid
 * and members of the admin group may use every command; members of the
 * read group only status, queue, show and metrics; everyone else is refused.
 *
 * The protocol is line based, one request at a time:
 *
 *	request:  COMMAND [ARG]LF          (CRLF accepted; at most
 *	                                    CONTROL_LINE_MAX bytes with LF)
 *	response: "ok" or "error MESSAGE"
 *	          zero or more data lines
 *	          "."
 *
 * Every response line ends with LF. A data line that starts with "." is
 * sent with one more "." in front (dot-stuffing, as in SMTP DATA), so the
 * lone "." always ends the response. A client may send several requests on
 * one connection; each gets its response in order. An overlong request, a
 * refused peer or too many connections get one "error" response and the
 * connection is closed.
 *
 * Commands (smarthostctl(8) has the arguments and the JSON):
 *	status [json]        pid, uptime, queued messages, inbound sessions,
 *	                     relays, relays learned to require authentication
 *	queue [FILTER] [json]  the queued messages and their recipients
 *	show ID [headers] [json]  one message's envelope, then its text
 *	hold/release ID...   take messages out of the schedule, or back
 *	delete ID...|all     remove messages without a bounce
 *	flush [ID...]        make every (or these) queued message(s) due now
 *	reload               re-read the configuration (as SIGHUP)
 *	auth-forget HOST     forget that HOST[:PORT] requires authentication
 *	credentials-changed  re-read credentials, retry mail deferred for them
 *	metrics              Prometheus text exposition (metrics.h)
 * All but status, queue, show and metrics change something: admin only.
 *
 * Everything runs on the loop thread; no command waits on the network.
 * queue answers "ok" at once and then streams its listing a page at a
 * time, the envelopes read on the worker pool, so neither the loop nor
 * the daemon's memory depends on the queue's size. show reads its
 * message there too, and answers when it has it.
 */
#ifndef SMARTHOST_CONTROL_H
#define SMARTHOST_CONTROL_H

#include <stddef.h>
#include <stdio.h>
#include <time.h>
#include <sys/types.h>
#include <event2/event.h>

#include "queue.h"
#include "scheduler.h"
#include "smtp_server.h"
#include "worker.h"

/* Longest request line, LF included. */
#define CONTROL_LINE_MAX 1024
/* Connections served at once; more get an error and are closed. */
#define CONTROL_CLIENTS_MAX 16
/* Seconds a client may stay silent, or leave a response unread. */
#define CONTROL_TIMEOUT 60

struct control;

struct control_params {
	const char *path;             /* socket path; copied */
	struct scheduler *scheduler;  /* borrowed; must outlive control */
	struct smtp_server *server;   /* borrowed; NULL: 0 sessions shown */
	struct queue *queue;          /* borrowed; for show's message */
	struct worker *worker;        /* borrowed; show reads on it */
	/* reload: re-reads the configuration; 0, or -1 with a reason in
	 * err (the running configuration is kept). NULL: unavailable. */
	int (*reload)(void *arg, char *err, size_t errlen);
	void *reload_arg;
	uid_t uid;                    /* may connect, besides root */
	const gid_t *admin_gid;       /* every command; NULL: no group */
	const gid_t *read_gid;        /* reading commands; NULL: no group */
	time_t started;               /* for the uptime in status */
};

/*
 * Creates the socket at params->path (removing a stale socket file left by
 * a previous run; refusing when another process listens there or the path
 * is not a socket), mode 0600, and starts accepting on base. Returns the
 * server, or NULL with a message in err naming the path.
 */
struct control *control_new(struct event_base *base,
    const struct control_params *params, char *err, size_t errlen);
/* Closes every client and the socket, and removes the socket file if it
 * is still the one we created. Accepts NULL. */
void control_free(struct control *c);

/* Whether a peer with uid peer may use the socket of a daemon running as
 * uid self: root and self may. 1 or 0. */
int control_peer_allowed(uid_t peer, uid_t self);

/* What a peer may do on the control socket. */
enum control_access {
	CONTROL_DENIED,
	CONTROL_READ,   /* status, queue, show */
	CONTROL_ADMIN,  /* every command */
};
/*
 * The access of a peer with uid and the groups gids[0..ngids) (primary
 * and supplementary) to the socket of a daemon running as self with the
 * given admin and read groups ((gid_t)-1 for none).
 */
enum control_access control_peer_access(uid_t uid, const gid_t *gids,
    size_t ngids, uid_t self, gid_t admin_gid, gid_t read_gid);
/* The uid of the peer of connected Unix socket fd (SO_PEERCRED) in *uid.
 * Returns 0, or -1 with errno. */
int control_peer_uid(int fd, uid_t *uid);

/*
 * The client side, for smarthostctl and tests: a blocking call.
 */
enum control_result {
	CONTROL_OK,          /* "ok": each() got every data line */
	CONTROL_ERROR,       /* the daemon answered "error MESSAGE" */
	CONTROL_UNAVAILABLE, /* cannot connect: errno says why (ENOENT,
	                        ECONNREFUSED: not running; EACCES) */
	CONTROL_FAILED,      /* the connection broke or timed out, or the
	                        response was malformed */
};

/* Receives one data line, unstuffed, without its LF; valid only during
 * the call. */
typedef void control_line_fn(const char *line, void *arg);

/*
 * Connects to the socket at path, sends request (one line, without LF),
 * and reads the response, failing after timeout seconds without any of
 * it arriving (a long listing may take longer in all), passing each data
 * line to each (which may be NULL). Returns CONTROL_OK; CONTROL_ERROR with
 * the daemon's MESSAGE in err; CONTROL_UNAVAILABLE with errno set and
 * "cannot connect to PATH: REASON" in err; or CONTROL_FAILED with the
 * reason in err. Data lines after an "error" line go to each as well.
 * A response line longer than 4 MiB makes the response malformed.
 */
enum control_result control_call(const char *path, const char *request,
    unsigned timeout, control_line_fn *each, void *arg, char *err,
    size_t errlen);

/*
 * control_call for command-line tools (smarthostctl, smarthost-sendmail):
 * returns a sysexits(3) code, EX_OK or, with a one-line reason for the
 * user in err: EX_NOPERM (neither root nor the daemon's user),
 * EX_UNAVAILABLE (the daemon is not running), EX_TEMPFAIL (too many
 * control connections), EX_DATAERR (another "error" answer) or
 * EX_PROTOCOL (the connection broke or timed out).
 */
int control_run(const char *path, const char *request, unsigned timeout,
    control_line_fn *each, void *arg, char *err, size_t errlen);
/*
 * The "queue" request printed to out for people: the daemon's lines,
 * then "queue is empty" or "-- N message(s)". Returns control_run's
 * code and reason.
 */
int control_print_queue(const char *path, unsigned timeout, FILE *out,
    char *err, size_t errlen);

#endif
