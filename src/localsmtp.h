/*
 * The SMTP dialogue that smarthost-sendmail -bs holds itself when the
 * daemon cannot be reached: it answers the caller's commands on stdin and
 * stdout and hands each accepted message to a delivery callback (the
 * maildrop, through smarthost-postdrop), so that a -bs caller (swaks
 * --pipe, Emacs's smtpmail, PHP) never loses mail while the daemon is
 * stopped. Pure: bytes in, replies out, no I/O of its own.
 *
 * It offers what the daemon's server offers for a submission on the Unix
 * socket, less what needs the daemon: PIPELINING, 8BITMIME, SIZE and
 * ENHANCEDSTATUSCODES; no AUTH, STARTTLS, CHUNKING or SMTPUTF8. Addresses
 * are checked as the daemon checks them (local names without a domain
 * allowed; a local recipient without an alias refused at RCPT with the
 * daemon's reply); the daemon applies its policy again when it imports
 * the message. The end of data is a "." line between CRLFs only, as in
 * the daemon (see smtp_server.c on SMTP smuggling); lines are stored with
 * CRLF and dot-unstuffed; NUL bytes are refused with 554 5.6.0.
 */
#ifndef SMARTHOST_LOCALSMTP_H
#define SMARTHOST_LOCALSMTP_H

#include <stddef.h>

#include "localaddr.h"

/* Longest command line, CRLF included (RFC 5321 4.5.3.1.4 says 512;
 * clients with long parameters exceed it). */
#define LOCALSMTP_LINE_MAX 4096
/* Client errors before the session ends with 421. */
#define LOCALSMTP_MAX_ERRORS 20

/* A message the dialogue accepted, to deliver. */
struct localsmtp_msg {
	const char *sender;    /* "" for the null sender <> */
	char *const *rcpts;    /* as the client gave them */
	size_t nrcpts;
	const char *data;      /* CRLF lines, dot-unstuffed, no final dot */
	size_t len;
};

/*
 * Delivers m; writes the complete reply to the end of data, without its
 * CRLF, to reply (replylen bytes, at least 256): "250 ..." only once the
 * message is durably stored, else a 4xx or 5xx reply saying why.
 */
typedef void (*localsmtp_deliver_fn)(const struct localsmtp_msg *m,
    char *reply, size_t replylen, void *arg);

struct localsmtp_params {
	const char *hostname;          /* the greeting's and EHLO's name */
	size_t max_size;               /* bytes; SIZE advertised and enforced */
	unsigned max_recipients;       /* per message */
	const struct localaddr *local; /* aliases and local domains; NULL:
	                                  no local recipient checks */
	localsmtp_deliver_fn deliver;
	void *arg;
};

struct localsmtp;

/* A new dialogue with the 220 greeting already in its output. The
 * strings of p must outlive it. Cannot fail. */
struct localsmtp *localsmtp_new(const struct localsmtp_params *p);
/* Accepts NULL. */
void localsmtp_free(struct localsmtp *s);

/*
 * Takes len bytes the client sent (any split: lines may span calls).
 * Replies are appended to the output; the delivery callback runs when a
 * message's end of data arrives. Returns 1 once the session has ended
 * (QUIT answered with 221, or 421 after too many errors; what follows is
 * ignored), else 0.
 */
int localsmtp_input(struct localsmtp *s, const char *buf, size_t len);

/* The replies waiting to be written, CRLF-terminated; *len bytes. The
 * pointer is valid until the next call on s. */
const char *localsmtp_output(const struct localsmtp *s, size_t *len);
/* Forgets the output once it has been written. */
void localsmtp_output_clear(struct localsmtp *s);

/* 1 if the client ended the session with QUIT. */
int localsmtp_quit_seen(const struct localsmtp *s);
/* Messages delivered with a 2xx reply so far. */
unsigned localsmtp_delivered(const struct localsmtp *s);

#endif
