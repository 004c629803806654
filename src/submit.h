/*
 * Submission from the command line to the running daemon, for
 * smarthost-sendmail(8): its options (a pure parser), the SMTP client that
 * hands one message to the daemon's Unix socket, the -bs byte relay, and
 * the smarthost-postdrop fallback for when the daemon cannot be reached
 * (with -bs, a local SMTP dialogue in front of it).
 *
 * The client speaks SMTP to the daemon like any other client, so limits,
 * aliases, sender rewriting and policy, and the Received: header apply to
 * sendmail's mail exactly as to mail submitted over TCP; the daemon knows
 * the submitting user from the socket's peer credentials. A message
 * counts as submitted only when the daemon answered 250 to the end of
 * DATA, which it does once the message is durably queued.
 */
#ifndef SMARTHOST_SUBMIT_H
#define SMARTHOST_SUBMIT_H

#include <stddef.h>
#include <stdio.h>

#include "config.h"
#include "outcome.h"

/* Seconds to wait for each reply of the daemon, and to connect. */
#define SUBMIT_TIMEOUT 300

enum submit_mode {
	SUBMIT_DELIVER, /* -bm (default): read a message, submit it */
	SUBMIT_QUEUE,   /* -bp, mailq: list the queue */
	SUBMIT_SMTP,    /* -bs: SMTP on stdin and stdout */
	SUBMIT_FLUSH,   /* -q: try every queued message now */
	SUBMIT_ALIASES, /* -bi, -I, newaliases: check the configuration */
	SUBMIT_NOTHING, /* -qINTERVAL: accepted, nothing to do */
};

struct submit_opts {
	enum submit_mode mode;
	const char *config;   /* -C FILE; NULL: the default */
	const char *sender;   /* -f/-r; NULL: the caller's address */
	const char *fullname; /* -F; NULL: from the passwd entry */
	int extract;          /* -t: recipients from the header */
	int ignore_dots;      /* -i, -oi: a lone "." is data */
	int verbose;          /* -v: the SMTP dialogue on stderr */
	char **rcpts;         /* the arguments after the options */
	size_t nrcpts;
};

/*
 * Parses a sendmail command line. The name argv[0] was run as chooses
 * the default mode ("mailq": SUBMIT_QUEUE, "newaliases": SUBMIT_ALIASES).
 * Option letters may be grouped ("-ti"); an option's argument may be
 * attached or the next argument; options end at "--" or at the first
 * argument not starting with '-'. Options sendmail accepts that do not
 * apply here are accepted and ignored (smarthost-sendmail(8) lists
 * them). Returns 0 with o filled (its strings point into argv), or -1
 * with a one-line reason in err for an unknown option, a missing
 * argument, an unsupported -b mode or recipients where none belong.
 */
int submit_opts_parse(int argc, char **argv, struct submit_opts *o,
    char *err, size_t errlen);

/*
 * The daemon's socket that sendmail talks to: the config's first Unix
 * listen entry, or the first TCP one when there is none. NULL when the
 * config lists no listener.
 */
const struct listen_config *submit_listener(const struct config *cfg);
/* "unix:PATH" or "ADDRESS:PORT" for messages; points into a static
 * buffer. */
const char *submit_listener_name(const struct listen_config *l);
/* Connects to l within timeout seconds. Returns the socket, or -1 with
 * errno (ENOENT, ECONNREFUSED, EACCES and ETIMEDOUT among others). */
int submit_connect(const struct listen_config *l, unsigned timeout);
/* Whether errno value e from submit_connect means that the daemon is
 * not there to take mail, so that it goes to the maildrop instead:
 * ENOENT, ECONNREFUSED, EACCES (and ENOTDIR, ENOTSOCK, EPERM). */
int submit_unreachable(int e);

struct submit_envelope {
	const char *sender;  /* "" for the null sender */
	char *const *rcpts;
	size_t nrcpts;
};

enum submit_result {
	SUBMIT_DONE,     /* the transaction ran: out says how it ended */
	SUBMIT_REFUSED,  /* the daemon is not taking connections now: a 421
	                    greeting (shutting down, too many sessions) or a
	                    close before any greeting; nothing was sent */
};

/*
 * One SMTP transaction on the connected socket fd: greeting, EHLO,
 * MAIL, a RCPT per recipient, DATA, the message (any line ends; it is
 * sent CRLF and dot-stuffed), then QUIT. Parameters the daemon announced
 * are used: SIZE, BODY=8BITMIME for 8-bit data, SMTPUTF8 for non-ASCII
 * addresses. A refused recipient ends the transaction before DATA, so
 * the message goes to all recipients or to none. out is OK only after a
 * 250 to the end of DATA; otherwise its text names the step and the
 * daemon's reply. trace, when not NULL, receives every line sent and
 * received. Returns SUBMIT_REFUSED (out set as well) when the daemon
 * turned the connection away before the transaction began, so that the
 * caller may take the path for a daemon that cannot be reached; else
 * SUBMIT_DONE. Does not close fd.
 */
enum submit_result submit_smtp(int fd, const struct submit_envelope *env,
    const char *msg, size_t len, unsigned timeout, FILE *trace,
    struct outcome *out);

/*
 * Relays bytes between in/out (the caller's SMTP client) and fd (the
 * daemon) until the daemon closes the connection; the end of in is passed
 * on as a half-close. Returns 0 when the daemon's last reply was 221
 * (the session ended with QUIT), 1 when it ended otherwise, -1 with errno
 * on an I/O error.
 */
int submit_relay(int fd, int in, int out);

struct localsmtp;

/*
 * -bs without the daemon: runs the local dialogue ls (localsmtp.h) over
 * in/out, writing its greeting and every reply as it comes, until it ends
 * or in reaches its end. Waits at most timeout seconds for each piece of
 * input. Returns 0 when the session ended with QUIT, 1 when it ended
 * otherwise (end of input, too many errors), -1 with errno on an I/O
 * error or a timeout (ETIMEDOUT).
 */
int submit_local(struct localsmtp *ls, int in, int out, unsigned timeout);

/*
 * Runs the postdrop helper at path as "path [-C config] -f SENDER --
 * RCPT..." with msg on its standard input, and waits for it. Returns its
 * exit status (0: the message is durably in the maildrop; otherwise a
 * sysexits code, the helper having said why on stderr), or -1 with a
 * reason in err when it could not be run or died of a signal.
 */
int submit_postdrop(const char *path, const char *config,
    const struct submit_envelope *env, const char *msg, size_t len,
    char *err, size_t errlen);

#endif
