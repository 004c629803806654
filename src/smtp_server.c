/*
 * Inbound SMTP (RFC 5321) with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
 * ENHANCEDSTATUSCODES and CHUNKING.
 *
 * One struct session per connection, driven by an explicit state enum. A
 * command line is looked up in a table (verb, states it is allowed in,
 * action, flags); the mail transaction is its own object, present only from
 * MAIL until the end of DATA/BDAT has been answered (or the transaction was
 * reset). Message data streams into the queue as it arrives and is never
 * held whole in memory.
 *
 * Invariants:
 * - Replies are appended to the output buffer in command order, so
 *   pipelined commands get pipelined replies that flush on their own.
 * - While the queue commits a message (S_COMMIT) no input is processed:
 *   the 250 that carries the queue id must precede every later reply.
 *   Input is still read (up to READ_HIWAT) so that reading need not be
 *   switched off and on around every commit; an end of input seen then
 *   waits until the commit is answered.
 * - The socket is driven by two plain events, not a bufferevent: one
 *   read() of up to READ_SIZE bytes per readable event (a bufferevent
 *   adds an ioctl(FIONREAD) to each read and reads 4 KB at most), and
 *   replies are written by session_flush() at the end of each callback,
 *   one write for all the replies it produced; the write event is armed
 *   only while some are left over, so a session costs epoll_ctl calls
 *   only at its start and end.
 * - A session is freed only from a top-level callback (read, write, event,
 *   resume, commit), never from inside command processing: code below the
 *   callbacks enters S_QUIT and the callback closes once output drained.
 * - A commit outlives its session: the commit record is detached when the
 *   session (or the server) goes away and the callback then still hands a
 *   durable message to the scheduler, so nothing on disk is orphaned.
 */
#include <sys/types.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "aliases.h"
#include "envelope.h"
#include "escape.h"
#include "localaddr.h"
#include "log.h"
#include "message.h"
#include "metrics.h"
#include "peercred.h"
#include "queue.h"
#include "rewrite.h"
#include "senderpolicy.h"
#include "smtp_proto.h"
#include "smtp_server.h"
#include "xmalloc.h"

/*
 * Memory bounds per session. Input stops being read once READ_HIWAT bytes
 * wait (a slow disk throttles the client through TCP instead of growing
 * our buffers); commands stop being processed while more than OUT_HIWAT
 * bytes of replies wait for a client that pipelines but does not read.
 * DATA is scanned DATA_CHUNK bytes at a time, so a line longer than that
 * is stored in pieces; pieces of body smaller than BODY_BUFSIZE are
 * gathered into a buffer of that size before a queue write (larger ones,
 * the runs of lines data_scan() finds in a big message, go straight on).
 * Small: each transaction in flight holds one, twenty clients twenty.
 */
#define READ_HIWAT (256 * 1024)
#define READ_SIZE (16 * 1024)
#define OUT_HIWAT (64 * 1024)
#define DATA_CHUNK (64 * 1024)
#define BODY_BUFSIZE (8 * 1024)
#define HELO_MAX 255
/* The header section is held back until its end (for sender rewriting)
 * up to this many bytes, Postfix's header_size_limit; what follows a
 * longer one streams on as it came. */
#define HEADER_MAX (100 * 1024)
#define VERB_MAX 16
#define PEER_MAX 96
#define SOURCE_MAX 16

enum session_state {
	S_CONNECTED, /* greeted, no HELO/EHLO yet */
	S_READY,     /* identified, no transaction */
	S_MAIL,      /* MAIL accepted, no recipient yet */
	S_RCPT,      /* at least one recipient accepted */
	S_DATA,      /* reading DATA lines */
	S_BDAT,      /* reading the octets of a BDAT chunk */
	S_CHUNKED,   /* between BDAT chunks of one transaction */
	S_COMMIT,    /* the queue is committing; input paused */
	S_QUIT,      /* last reply queued; close once it is sent */
};
/* Outside the enum so that -Wswitch checks every real state; S_QUIT
 * must stay the last one. */
#define S__COUNT (S_QUIT + 1)

static const char *const session_state_names[] = {
	"CONNECTED",
	"READY",
	"MAIL",
	"RCPT",
	"DATA",
	"BDAT",
	"CHUNKED",
	"COMMIT",
	"QUIT",
};
_Static_assert(sizeof(session_state_names) / sizeof(session_state_names[0]) ==
    S__COUNT, "session_state_names out of step with enum session_state");

#define SB(st) (1u << (st))
/* States in which input is read as command lines. */
#define ST_COMMANDS                                                     \
	(SB(S_CONNECTED) | SB(S_READY) | SB(S_MAIL) | SB(S_RCPT) |      \
	    SB(S_CHUNKED))

struct session;

/* A queue commit in flight; see the invariants above. */
struct commit {
	TAILQ_ENTRY(commit) entry;
	struct session *s;       /* NULL once the session is gone */
	struct smtp_server *srv; /* NULL once the server is gone */
	struct timespec started; /* for the commit latency metric */
	char source[SOURCE_MAX]; /* the session's metrics source */
};

struct txn {
	struct envelope *env;     /* sender, recipients, flags, client */
	struct queue_txn *qtxn;   /* from DATA/first BDAT until commit */
	int utf8;                 /* SMTPUTF8 given: UTF-8 addresses */
	int chunked;              /* BDAT used */
	uint64_t datalen;         /* message bytes received (normalised) */
	int too_big;              /* datalen passed max_message_size */
	int has_nul;              /* a NUL byte came: the message is refused */
	int write_error;          /* errno of the first failed queue write */
	int at_bol;               /* DATA: the next byte starts a line */
	int prev_crlf;            /* DATA: the last line ended with CRLF */
	char *buf;                /* body bytes not yet written */
	size_t buflen;
	/* The header section while it is held back for rewriting. */
	char *hdr;
	size_t hdrlen, hdrsize;
	size_t hdrscan;           /* rewrite_header_done()'s cursor */
	int hdr_done;             /* the rest of the message streams */
};

/* Limits copied from the config at accept: a reload does not change a
 * running session, and the old config may be freed under it. */
struct limits {
	size_t max_line;
	uint64_t max_message_size;
	unsigned max_recipients;
	unsigned max_errors;
	unsigned idle_timeout;
	unsigned session_timeout;
};

struct session {
	TAILQ_ENTRY(session) entry;
	struct smtp_server *srv;
	unsigned id;              /* for traces */
	enum session_state state;
	evutil_socket_t fd;
	struct evbuffer *in;      /* bytes read, not yet processed */
	struct evbuffer *out;     /* replies not yet written */
	struct event *read_ev;    /* persistent, with the idle timeout */
	struct event *write_ev;   /* added only while replies are left */
	int reading;              /* read_ev is added */
	int writing;              /* write_ev is added */
	int eof;                  /* the client closed its sending side */
	size_t read_hiwat;        /* stop reading with this much input */
	struct event *resume_ev;  /* processes buffered input later */
	struct event *deadline_ev; /* the session_timeout, NULL if none */
	int expired;              /* deadline passed during a commit */
	struct limits lim;
	/* Aliases and sender rewriting of the config at accept; the daemon
	 * retires replaced configs instead of freeing them. */
	const struct localaddr *local;
	char *hostname;
	char peer_name[32];       /* "localhost" or "unknown": no DNS */
	char peer_addr[PEER_MAX]; /* "127.0.0.1", "::1", "unix:uid=N" */
	int peer_family;
	/* Counted under this source in the accepted metric: "smtp", or an
	 * in-process client's label ("maildrop"). */
	char source[SOURCE_MAX];
	char *client;             /* "name[addr]" */
	int uid_known;            /* the local user behind the peer is known */
	uid_t uid;                /* ... and is this one */
	/* From the config at accept; retired configs outlive sessions. */
	const struct sender_policy *policy;
	char *mail_domain;
	char helo[HELO_MAX + 1];  /* "" until HELO/EHLO */
	int esmtp;                /* EHLO rather than HELO */
	unsigned errors;
	int discarding;           /* skipping the rest of an overlong line */
	int out_blocked;          /* paused until the client reads replies */
	char *line;               /* max_line + 1 bytes */
	struct txn *txn;
	struct commit *commit;
	/* BDAT chunk being read */
	uint64_t bdat_left;
	int bdat_last;
	const char *bdat_reject;  /* reply to give instead, NULL if none */
	int bdat_reject_counts;   /* that reply counts as a client error */
	int bdat_reject_reset;    /* ... and ends the transaction */
	enum session_state bdat_prev;
};

TAILQ_HEAD(session_list, session);
TAILQ_HEAD(commit_list, commit);

struct smtp_server {
	struct event_base *base;
	struct smtp_server_params params;
	const struct config *cfg;
	struct session_list sessions;
	struct commit_list commits;
	unsigned nsessions;
	unsigned next_id;
	/* The Received: header's date of the second date_time, formatted
	 * once a second rather than per message. */
	time_t date_time;
	char date[64];
	int shutting_down;
	struct event *shutdown_ev;
	void (*shutdown_done)(void *);
	void *shutdown_arg;
};

enum command_flags {
	CMD_NOARG = 1 << 0, /* takes no argument: 501 otherwise */
};

struct command {
	const char *verb;
	unsigned states; /* SB() bits of the states it is allowed in */
	void (*action)(struct session *, const char *arg);
	unsigned flags;  /* enum command_flags */
};

static void cmd_helo(struct session *, const char *);
static void cmd_ehlo(struct session *, const char *);
static void cmd_mail(struct session *, const char *);
static void cmd_rcpt(struct session *, const char *);
static void cmd_data(struct session *, const char *);
static void cmd_bdat(struct session *, const char *);
static void cmd_rset(struct session *, const char *);
static void cmd_noop(struct session *, const char *);
static void cmd_quit(struct session *, const char *);
static void cmd_vrfy(struct session *, const char *);
static void cmd_help(struct session *, const char *);
static void cmd_starttls(struct session *, const char *);

/*
 * BDAT is allowed in every command state because its chunk must be read
 * (and discarded) whatever the state: otherwise the octets would be taken
 * for commands. cmd_bdat() checks the sequence itself.
 */
static const struct command commands[] = {
	{ "HELO", ST_COMMANDS, cmd_helo, 0 },
	{ "EHLO", ST_COMMANDS, cmd_ehlo, 0 },
	{ "MAIL", SB(S_READY), cmd_mail, 0 },
	{ "RCPT", SB(S_MAIL) | SB(S_RCPT), cmd_rcpt, 0 },
	{ "DATA", SB(S_RCPT), cmd_data, CMD_NOARG },
	{ "BDAT", ST_COMMANDS, cmd_bdat, 0 },
	{ "RSET", ST_COMMANDS, cmd_rset, CMD_NOARG },
	{ "NOOP", ST_COMMANDS, cmd_noop, 0 },
	{ "QUIT", ST_COMMANDS, cmd_quit, CMD_NOARG },
	{ "VRFY", ST_COMMANDS, cmd_vrfy, 0 },
	{ "HELP", ST_COMMANDS, cmd_help, 0 },
	{ "STARTTLS", ST_COMMANDS, cmd_starttls, 0 },
};

static void session_free(struct session *);
static void session_expire(struct session *);
static void session_run(struct session *);
static void session_update_read(struct session *);
static int session_flush(struct session *);
static int session_flush_close(struct session *);

/* ---- replies ---- */

static void
trace(const struct session *s, const char *dir, const char *line, size_t len)
{
	char buf[256];

	if (!log_getdebug())
		return;
	log_debug("smtp %u: %s %s", s->id, dir,
	    log_sanitize(buf, sizeof(buf), line, len));
}

static void reply(struct session *, const char *, ...)
    __attribute__((format(printf, 2, 3)));
static void reply_error(struct session *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

static void
vreply(struct session *s, const char *fmt, va_list ap)
{
	char buf[SMTP_REPLY_LINE_MAX];
	int n;

	n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	if (n < 0)
		n = 0;
	else if ((size_t)n > sizeof(buf) - 3)
		n = (int)sizeof(buf) - 3; /* truncated: still a reply */
	trace(s, ">", buf, (size_t)n);
	buf[n++] = '\r';
	buf[n++] = '\n';
	evbuffer_add(s->out, buf, (size_t)n);
}

/* One reply line (a multi-line reply is several calls with "NNN-"). */
static void
reply(struct session *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreply(s, fmt, ap);
	va_end(ap);
}

static void
session_enter(struct session *s, enum session_state state)
{
	if (s->state != state)
		log_debug("smtp %u: %s -> %s", s->id,
		    session_state_names[s->state],
		    session_state_names[state]);
	s->state = state;
	if (state == S_QUIT)
		session_update_read(s);
}

/* Counts one client error; past max_errors the session ends. */
static void
session_error(struct session *s)
{
	if (++s->errors > s->lim.max_errors && s->state != S_QUIT) {
		log_info("smtp: client=%s: too many errors (%u), closing",
		    s->client, s->errors);
		reply(s, "421 4.7.0 Too many errors, closing connection");
		session_enter(s, S_QUIT);
	}
}

/* A reply that blames the client. */
static void
reply_error(struct session *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreply(s, fmt, ap);
	va_end(ap);
	session_error(s);
}

/* The reply for a failed queue write or commit. */
static const char *
storage_reply(int error)
{
	if (error == ENOSPC || error == EDQUOT || error == EFBIG)
		return "452 4.3.1 Insufficient system storage";
	return "451 4.3.0 Error: queue file write error";
}

/* ---- the transaction ---- */

static struct txn *
txn_new(void)
{
	struct txn *t;

	t = xcalloc(1, sizeof(*t));
	t->env = envelope_new();
	return t;
}

/* Frees t; a message being written is dropped with its spool file. */
static void
txn_free(struct txn *t)
{
	if (t == NULL)
		return;
	if (t->qtxn != NULL)
		queue_txn_abort(t->qtxn);
	envelope_free(t->env);
	free(t->buf);
	free(t->hdr);
	free(t);
}

static void
txn_flush(struct txn *t)
{
	if (t->buflen == 0 || t->write_error)
		return;
	if (queue_txn_write(t->qtxn, t->buf, t->buflen) == -1)
		t->write_error = errno != 0 ? errno : EIO;
	t->buflen = 0;
}

/* Queues bytes for the spool file, batching small writes. */
static void
txn_write(struct txn *t, const void *p, size_t len)
{
	if (t->write_error)
		return;
	if (t->buflen + len > BODY_BUFSIZE) {
		txn_flush(t);
		if (t->write_error)
			return;
		if (len >= BODY_BUFSIZE / 2) {
			if (queue_txn_write(t->qtxn, p, len) == -1)
				t->write_error = errno != 0 ? errno : EIO;
			return;
		}
	}
	if (t->buf == NULL)
		t->buf = xmalloc(BODY_BUFSIZE);
	memcpy(t->buf + t->buflen, p, len);
	t->buflen += len;
}

/* Writes the held-back header section: its first upto bytes with local
 * sender addresses rewritten, the rest as it is. */
static void
txn_header_flush(struct session *s, size_t upto)
{
	struct txn *t = s->txn;
	size_t outlen;
	char *out;

	if (t->hdr_done)
		return;
	t->hdr_done = 1;
	if (t->hdrlen == 0)
		return;
	if ((out = localaddr_headers(s->local, t->hdr, upto, &outlen)) !=
	    NULL) {
		txn_write(t, out, outlen);
		free(out);
	} else
		txn_write(t, t->hdr, upto);
	txn_write(t, t->hdr + upto, t->hdrlen - upto);
	free(t->hdr);
	t->hdr = NULL;
}

/*
 * Message bytes for the spool: held back until the header section is
 * complete (or HEADER_MAX bytes long), then streamed.
 *
 * A message whose first line starts with SP or HTAB would continue the
 * last field before it, our Received: header (RFC 5322 2.2.3): the client
 * could write into our trace field. A header section cannot start with a
 * continuation line, so such a message has none of its own: an empty line
 * goes first and the client's text is all body, as Postfix's smtpd does.
 * The empty line is ours, like the Received: header: it counts towards
 * neither max_message_size nor the octets a BDAT reply reports.
 */
static void
txn_message(struct session *s, const void *p, size_t len)
{
	struct txn *t = s->txn;
	size_t take;
	char first;

	/* Nothing to add (an empty piece), and t->hdr may still be NULL:
	 * even t->hdr + 0 would be undefined then. */
	if (len == 0)
		return;
	if (t->hdr_done) {
		txn_write(t, p, len);
		return;
	}
	first = *(const char *)p;
	if (t->hdrlen == 0 && (first == ' ' || first == '\t')) {
		t->hdr_done = 1;
		txn_write(t, "\r\n", 2);
		txn_write(t, p, len);
		return;
	}
	take = HEADER_MAX - t->hdrlen < len ? HEADER_MAX - t->hdrlen : len;
	if (t->hdrlen + take > t->hdrsize) {
		t->hdrsize = t->hdrsize * 2 > t->hdrlen + take ?
		    t->hdrsize * 2 : t->hdrlen + take + 4096;
		if (t->hdrsize > HEADER_MAX)
			t->hdrsize = HEADER_MAX;
		t->hdr = xreallocarray(t->hdr, t->hdrsize, 1);
	}
	memcpy(t->hdr + t->hdrlen, p, take);
	t->hdrlen += take;
	if (rewrite_header_done(t->hdr, t->hdrlen, &t->hdrscan)) {
		txn_header_flush(s, t->hdrlen);
	} else if (t->hdrlen == HEADER_MAX) {
		log_info("%s: header section longer than %d bytes; the rest is "
		    "not rewritten", queue_txn_id(t->qtxn), HEADER_MAX);
		txn_header_flush(s, rewrite_complete_fields(t->hdr,
		    t->hdrlen));
	}
	if (take < len)
		txn_write(t, (const char *)p + take, len - take);
}

/* Message data from the client: counted against the size limit, then
 * discarded once the message is too big or the spool failed. */
static void
txn_body(struct session *s, const void *p, size_t len)
{
	struct txn *t = s->txn;

	t->datalen += len;
	if (t->datalen > s->lim.max_message_size)
		t->too_big = 1;
	/* RFC 5321 2.3.8 and 4.1.1.4 allow no NUL in mail text; relayed,
	 * it is dropped or mangled by some upstreams, and one that drops
	 * it would read "NUL." at the start of a line as a lone dot. So
	 * the message is refused, whole, at its end. */
	if (!t->has_nul && memchr(p, '\0', len) != NULL)
		t->has_nul = 1;
	if (t->too_big || t->has_nul || t->write_error)
		return;
	txn_message(s, p, len);
}

/* Drops the transaction; the session is identified again. */
static void
session_reset(struct session *s)
{
	txn_free(s->txn);
	s->txn = NULL;
	session_enter(s, s->helo[0] != '\0' ? S_READY : S_CONNECTED);
}

/*
 * Starts the message in the queue (so it has an id) and writes our
 * Received: header (RFC 5321 4.4) first. Returns 0, or -1 with errno.
 */
static int
txn_start(struct session *s)
{
	struct txn *t = s->txn;
	const char *id, *proto, *date;
	char addr[PEER_MAX + 8], rcpt[4 * SMTP_PATH_MAX], who[48];
	char *hdr;
	time_t now;

	now = time(NULL);
	t->env->created = now;
	if ((t->qtxn = queue_txn_begin(s->srv->params.queue, t->env)) == NULL)
		return -1;
	id = queue_txn_id(t->qtxn);

	/* Not strftime(): its tzset() rereads /etc/localtime each time.
	 * The zone's offset changes only at a second's start. */
	if (now != s->srv->date_time) {
		message_date(now, s->srv->date, sizeof(s->srv->date));
		s->srv->date_time = now;
	}
	date = s->srv->date;
	/* RFC 3848 / RFC 6531 protocol names; no TLS or AUTH here. */
	if (t->utf8)
		proto = "UTF8SMTP"; /* SMTPUTF8 implies EHLO */
	else
		proto = s->esmtp ? "ESMTP" : "SMTP";
	snprintf(addr, sizeof(addr), "%s%s",
	    s->peer_family == AF_INET6 ? "IPv6:" : "", s->peer_addr);
	/* The submitting user, where Postfix puts it: "(Postfix, from
	 * userid 1000)". */
	if (s->uid_known)
		snprintf(who, sizeof(who), ", from userid %ju",
		    (uintmax_t)s->uid);
	else
		who[0] = '\0';
	if (t->env->nrcpts == 1) {
		/* RCPT refused control bytes already; escaping here keeps
		 * the header one line whatever the address check lets by. */
		escape_str(rcpt, sizeof(rcpt), t->env->rcpts[0].addr);
		hdr = xasprintf("Received: from %s (%s [%s])\r\n"
		    "\tby %s (smarthostd%s) with %s id %s\r\n"
		    "\tfor <%s>; %s\r\n",
		    s->helo, s->peer_name, addr, s->hostname, who, proto, id,
		    rcpt, date);
	} else
		hdr = xasprintf("Received: from %s (%s [%s])\r\n"
		    "\tby %s (smarthostd%s) with %s id %s;\r\n"
		    "\t%s\r\n",
		    s->helo, s->peer_name, addr, s->hostname, who, proto, id,
		    date);
	txn_write(t, hdr, strlen(hdr));
	free(hdr);
	return 0;
}

static void commit_done(int error, struct envelope *env, void *arg);

/*
 * The end of DATA or of the last BDAT chunk: reject what broke a limit or
 * the spool, otherwise hand the message to the queue and pause input until
 * it is durable.
 */
static void
txn_finish(struct session *s)
{
	struct txn *t = s->txn;
	struct queue_txn *qtxn;
	struct commit *c;

	if (!t->too_big) {
		txn_header_flush(s, t->hdrlen); /* a message of headers only */
		txn_flush(t);
	}
	if (t->too_big) {
		log_info("%s: reject: message too large (more than %" PRIu64
		    " bytes) from client=%s", queue_txn_id(t->qtxn),
		    s->lim.max_message_size, s->client);
		reply(s, "552 5.3.4 Message size exceeds fixed maximum "
		    "message size");
		session_reset(s);
		return;
	}
	if (t->has_nul) {
		log_info("%s: reject: message contains a NUL byte, client=%s",
		    queue_txn_id(t->qtxn), s->client);
		reply(s, "554 5.6.0 Message contains NUL bytes, not "
		    "accepted");
		session_reset(s);
		return;
	}
	if (t->write_error) {
		log_warnx("%s: refused, queue write failed: %s, client=%s",
		    queue_txn_id(t->qtxn), strerror(t->write_error),
		    s->client);
		reply(s, "%s", storage_reply(t->write_error));
		session_reset(s);
		return;
	}

	c = xcalloc(1, sizeof(*c));
	c->s = s;
	c->srv = s->srv;
	clock_gettime(CLOCK_MONOTONIC, &c->started);
	memcpy(c->source, s->source, sizeof(c->source));
	TAILQ_INSERT_TAIL(&s->srv->commits, c, entry);
	s->commit = c;
	qtxn = t->qtxn;
	t->qtxn = NULL;
	session_enter(s, S_COMMIT);
	session_update_read(s);
	/*
	 * The only session: nothing of ours waits for the loop, so the
	 * queue may sync on it and spare the two thread hops, which at one
	 * client cost as much as the sync ("The lone commit" in queue.c).
	 * With others connected the loop must stay free for them, and their
	 * commits share the commit thread's syncs.
	 */
	if (s->srv->nsessions == 1)
		queue_txn_commit_alone(qtxn, commit_done, c);
	else
		queue_txn_commit(qtxn, commit_done, c);
}

/* Runs on the loop thread once the queue has the message on disk (or
 * failed to put it there). */
static void
commit_done(int error, struct envelope *env, void *arg)
{
	struct commit *c = arg;
	struct session *s = c->s;
	struct smtp_server *srv = c->srv;
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (error == 0)
		metrics_accepted(c->source,
		    (double)(now.tv_sec - c->started.tv_sec) +
		    (now.tv_nsec - c->started.tv_nsec) / 1e9);
	if (srv != NULL)
		TAILQ_REMOVE(&srv->commits, c, entry);
	free(c);
	if (s != NULL)
		s->commit = NULL;

	if (error == 0) {
		if (s != NULL) {
			reply(s, "250 2.0.0 Ok: queued as %s", env->id);
			/*
			 * Out now, before the log lines below, the other
			 * completions of this group and the resume pass: the
			 * client waits for nothing else, and formats and
			 * writes its next command while they run. With
			 * pipelined commands waiting, their replies follow it
			 * in one write instead.
			 */
			if (evbuffer_get_length(s->in) == 0)
				(void)session_flush(s);
		}
		if (env->uid_known)
			log_info("%s: client=%s, uid=%ju", env->id,
			    env->client != NULL ? env->client : "unknown",
			    (uintmax_t)env->uid);
		else
			log_info("%s: client=%s", env->id,
			    env->client != NULL ? env->client : "unknown");
		log_info("%s: from=<%s>, size=%lld, nrcpt=%zu (queued)",
		    env->id, env->sender != NULL ? env->sender : "",
		    (long long)env->body_size, env->nrcpts);
		if (s == NULL)
			log_info("%s: client went away before the reply; "
			    "delivering anyway", env->id);
		/* The message is durable: even without a session to answer
		 * it must reach the scheduler (a duplicate beats a loss). */
		if (srv != NULL && srv->params.queued != NULL)
			srv->params.queued(env, srv->params.arg);
		else
			envelope_free(env);
	} else {
		log_warnx("queue commit failed for client=%s: %s",
		    s != NULL ? s->client : "(gone)", strerror(error));
		if (s != NULL)
			reply(s, "%s", storage_reply(error));
	}
	if (s == NULL)
		return;
	session_reset(s);
	if (s->expired) {
		session_expire(s);
		(void)session_flush_close(s);
		return;
	}
	session_update_read(s);
	/* Pipelined commands may already wait in the input buffer; the
	 * read callback only fires for new bytes. Their replies and the 250
	 * then leave in one write. */
	event_active(s->resume_ev, EV_TIMEOUT, 1);
}

/* ---- DATA ---- */

/*
 * Consumes DATA from buf (len bytes, the start of the input buffer; full
 * says buf is DATA_CHUNK bytes, the most we look at at once). Returns the
 * bytes used and sets *eod when the end-of-data line was among them.
 *
 * SMTP smuggling: the end of data is ONLY a line that is exactly "."
 * ended by CRLF, whose preceding line also ended with CRLF (the start of
 * the data counts as after CRLF). Any other spelling ("\n.\n",
 * "\r\n.\n", "\n.\r\n") is data, so a client, or a sloppy MUA feeding one,
 * can never make us see two messages where an upstream server would see
 * one, or the reverse. Such a lone "." is stored as "."; the upstream
 * encoder dot-stuffs it again.
 *
 * Every line is stored with CRLF, whatever ended it (a bare LF too). A
 * leading '.' followed by more bytes is removed (dot-unstuffing); doing it
 * after a bare LF as well is harmless because the encoder re-stuffs every
 * line that starts with '.'. A bare CR inside a line is stored as is: the
 * upstream encoder turns it into CRLF and stuffs what follows.
 *
 * Most lines are stored exactly as they came (ended by CRLF, no leading
 * dot to remove): a run of such lines goes to txn_body() in one piece, not
 * line by line, which cost a sixth of the loop's instructions per message.
 */
static size_t
data_scan(struct session *s, const char *buf, size_t len, int full, int *eod)
{
	struct txn *t = s->txn;
	size_t pos = 0, run = 0, n, clen, skip;
	const char *line, *lf;
	int crlf;

	/* buf[run..pos) holds lines stored as they are, not yet passed on. */
#define RUN_FLUSH()                                                     \
	do {                                                            \
		if (pos > run)                                          \
			txn_body(s, buf + run, pos - run);              \
	} while (0)
	*eod = 0;
	while (pos < len) {
		line = buf + pos;
		lf = memchr(line, '\n', len - pos);
		if (lf == NULL) {
			if (pos > 0 || !full)
				break; /* wait for the rest of the line */
			/*
			 * A full chunk without a line end: a long line,
			 * stored in pieces. A final CR stays in the input
			 * since it may be half of the CRLF.
			 */
			n = len;
			if (line[n - 1] == '\r')
				n--;
			skip = t->at_bol && line[0] == '.';
			txn_body(s, line + skip, n - skip);
			t->at_bol = 0;
			return n;
		}
		n = (size_t)(lf - line) + 1;
		crlf = n >= 2 && lf[-1] == '\r';
		clen = n - 1 - (size_t)crlf;
		if (crlf && !(t->at_bol && clen >= 1 && line[0] == '.')) {
			/* Stored as it is: the run grows. */
		} else if (t->at_bol && clen == 1 && line[0] == '.') {
			RUN_FLUSH();
			if (crlf && t->prev_crlf) {
				*eod = 1;
				return pos + n;
			}
			txn_body(s, ".\r\n", 3); /* see above: not the end */
			run = pos + n;
		} else {
			RUN_FLUSH();
			skip = t->at_bol && clen > 1 && line[0] == '.';
			txn_body(s, line + skip, clen - skip);
			txn_body(s, "\r\n", 2);
			run = pos + n;
		}
		t->at_bol = 1;
		t->prev_crlf = crlf;
		pos += n;
	}
	RUN_FLUSH();
#undef RUN_FLUSH
	return pos;
}

/* Returns 1 when the state may have changed, 0 when more input is
 * needed. */
static int
data_process(struct session *s)
{
	struct evbuffer *in = s->in;
	size_t avail, n, used;
	unsigned char *p;
	int eod;

	for (;;) {
		if ((avail = evbuffer_get_length(in)) == 0)
			return 0;
		n = avail < DATA_CHUNK ? avail : DATA_CHUNK;
		if ((p = evbuffer_pullup(in, (ev_ssize_t)n)) == NULL)
			fatalx("evbuffer_pullup");
		used = data_scan(s, (const char *)p, n, n == DATA_CHUNK, &eod);
		evbuffer_drain(in, used);
		if (eod) {
			txn_finish(s);
			return 1;
		}
		if (used == 0)
			return 0;
	}
}

/* ---- BDAT ---- */

static void
bdat_finish(struct session *s)
{
	struct txn *t = s->txn;

	if (s->bdat_reject != NULL) {
		reply(s, "%s", s->bdat_reject);
		if (s->bdat_reject_reset)
			session_reset(s);
		else
			session_enter(s, s->bdat_prev);
		if (s->bdat_reject_counts)
			session_error(s);
		return;
	}
	if (!t->too_big)
		txn_flush(t);
	if (t->too_big || t->has_nul || t->write_error || s->bdat_last) {
		/* The same end as DATA: reject or commit. */
		txn_finish(s);
		return;
	}
	reply(s, "250 2.0.0 Ok: %" PRIu64 " octets received", t->datalen);
	session_enter(s, S_CHUNKED);
}

/* Reads chunk octets as they are, with no line or dot processing (RFC
 * 3030). Returns 1 when the chunk ended, 0 when more input is needed. */
static int
bdat_process(struct session *s)
{
	struct evbuffer *in = s->in;
	size_t avail, n;
	unsigned char *p;

	while (s->bdat_left > 0) {
		if ((avail = evbuffer_get_length(in)) == 0)
			return 0;
		n = avail < DATA_CHUNK ? avail : DATA_CHUNK;
		if (n > s->bdat_left)
			n = (size_t)s->bdat_left;
		if (s->bdat_reject == NULL) {
			if ((p = evbuffer_pullup(in, (ev_ssize_t)n)) == NULL)
				fatalx("evbuffer_pullup");
			txn_body(s, p, n);
		}
		evbuffer_drain(in, n);
		s->bdat_left -= n;
	}
	bdat_finish(s);
	return 1;
}

/* ---- commands ---- */

/* Checks and copies a HELO/EHLO argument: a domain or address literal. */
static int
helo_set(struct session *s, const char *arg)
{
	size_t i, n;

	n = strcspn(arg, " ");
	if (n == 0 || n > HELO_MAX)
		return -1;
	/* Only what keeps the Received: header well formed. */
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)arg[i];

		if (!isalnum(c) && strchr("-._:[]", c) == NULL)
			return -1;
	}
	memcpy(s->helo, arg, n);
	s->helo[n] = '\0';
	return 0;
}

static void
cmd_helo(struct session *s, const char *arg)
{
	if (helo_set(s, arg) == -1) {
		reply_error(s, "501 5.5.4 Syntax: HELO hostname");
		return;
	}
	s->esmtp = 0;
	txn_free(s->txn);
	s->txn = NULL;
	session_enter(s, S_READY);
	reply(s, "250 %s", s->hostname);
}

static void
cmd_ehlo(struct session *s, const char *arg)
{
	if (helo_set(s, arg) == -1) {
		reply_error(s, "501 5.5.4 Syntax: EHLO hostname");
		return;
	}
	s->esmtp = 1;
	/* RFC 5321 4.1.4: EHLO in a transaction resets it, like RSET. */
	txn_free(s->txn);
	s->txn = NULL;
	session_enter(s, S_READY);
	reply(s, "250-%s Hello %s [%s]", s->hostname, s->helo, s->peer_addr);
	reply(s, "250-PIPELINING");
	reply(s, "250-SIZE %" PRIu64, s->lim.max_message_size);
	reply(s, "250-8BITMIME");
	reply(s, "250-SMTPUTF8");
	reply(s, "250-ENHANCEDSTATUSCODES");
	reply(s, "250 CHUNKING");
}

/* Parses a decimal number made of digits only. */
static int
parse_u64(const char *v, uint64_t *out)
{
	uint64_t n = 0;

	if (*v == '\0')
		return -1;
	for (; *v != '\0'; v++) {
		if (*v < '0' || *v > '9')
			return -1;
		if (n > (UINT64_MAX - 9) / 10)
			return -1;
		n = n * 10 + (uint64_t)(*v - '0');
	}
	*out = n;
	return 0;
}

/* Whether addr has bytes beyond ASCII. An alias target or a rewritten
 * sender may have them where the client's address had none; the message
 * then needs SMTPUTF8 upstream. */
static int
addr_8bit(const char *addr)
{
	for (; *addr != '\0'; addr++)
		if ((unsigned char)*addr >= 0x80)
			return 1;
	return 0;
}

/*
 * The user's own addresses that the local address settings add to those
 * sender_policy knows: login@ any of local_domains, and the address the
 * sender_rewrite map gives the login.
 */
static int
sender_own_local(const struct session *s, const struct sender_identity *who,
    const char *addr)
{
	const char *at = strrchr(addr, '@');
	size_t llen;
	char *mapped;
	int own;

	if (who->login == NULL || s->local == NULL)
		return 0;
	llen = strlen(who->login);
	if (at != NULL && (size_t)(at - addr) == llen &&
	    strncasecmp(addr, who->login, llen) == 0 &&
	    localaddr_is_local(s->local, addr))
		return 1;
	if ((mapped = localaddr_sender(s->local, who->login)) == NULL)
		return 0;
	own = strcasecmp(mapped, addr) == 0;
	free(mapped);
	return own;
}

/*
 * The sender policy: a session with a known local user may use only the
 * senders the policy grants that user. Sessions without one (clients from
 * allow_networks) are not subject to it. Replies 553 and returns 1 when
 * the sender is refused.
 */
static int
sender_refused(struct session *s, const char *addr)
{
	struct sender_identity who;
	const char *domains[3];
	char name[32];
	int refused;

	if (!s->uid_known || sender_policy_mode(s->policy) ==
	    SENDER_POLICY_ANY)
		return 0;
	domains[0] = "localhost";
	domains[1] = s->hostname;
	domains[2] = s->mail_domain;
	(void)sender_identity_lookup(s->uid, &who);
	refused = sender_policy_check(s->policy, &who, addr, domains, 3) != 0 &&
	    !sender_own_local(s, &who, addr);
	if (refused) {
		if (who.login != NULL)
			snprintf(name, sizeof(name), "%s", who.login);
		else
			snprintf(name, sizeof(name), "%ju",
			    (uintmax_t)s->uid);
		log_info("smtp: client=%s, uid=%ju: sender <%s> refused: not "
		    "owned by user %s", s->client, (uintmax_t)s->uid, addr,
		    name);
		reply(s, "553 5.7.1 <%s>: sender not owned by user %s", addr,
		    name);
	}
	sender_identity_free(&who);
	return refused;
}

static void
cmd_mail(struct session *s, const char *arg)
{
	char addr[SMTP_PATH_MAX], key[32], value[64];
	const char *params, *why, *cur;
	char *sender;
	unsigned flags = 0;
	uint64_t size;
	int r, utf8 = 0;

	if (smtp_path_parse(arg, "FROM:", addr, sizeof(addr), &params,
	    &why) == -1) {
		reply_error(s, "501 5.5.4 Syntax: MAIL FROM:<address> (%s)",
		    why);
		return;
	}
	if (*params != '\0' && !s->esmtp) {
		reply_error(s, "555 5.5.4 MAIL parameters need EHLO");
		return;
	}
	cur = params;
	while ((r = smtp_param_next(&cur, key, sizeof(key), value,
	    sizeof(value))) == 1) {
		if (strcmp(key, "SIZE") == 0) {
			if (parse_u64(value, &size) == -1) {
				reply_error(s, "501 5.5.4 Bad SIZE parameter");
				return;
			}
			if (size > s->lim.max_message_size) {
				reply(s, "552 5.3.4 Message size exceeds "
				    "fixed maximum message size");
				return;
			}
		} else if (strcmp(key, "BODY") == 0) {
			if (strcasecmp(value, "8BITMIME") == 0)
				flags |= ENVELOPE_8BITMIME;
			else if (strcasecmp(value, "7BIT") != 0) {
				reply_error(s, "501 5.5.4 Unsupported BODY "
				    "type");
				return;
			}
		} else if (strcmp(key, "SMTPUTF8") == 0 && value[0] == '\0') {
			utf8 = 1;
			flags |= ENVELOPE_SMTPUTF8;
		} else {
			reply_error(s, "555 5.5.4 Unsupported parameter %s",
			    key);
			return;
		}
	}
	if (r == -1) {
		reply_error(s, "501 5.5.4 Syntax error in parameters");
		return;
	}
	/* The null sender <> is allowed (bounces), and a local name
	 * without a domain, which sender rewriting qualifies. */
	if (addr[0] != '\0' && !smtp_mailbox_valid(addr, utf8) &&
	    !localaddr_unqualified_ok(addr, utf8)) {
		reply_error(s, "501 5.1.7 Bad sender address syntax");
		return;
	}
	if (sender_refused(s, addr))
		return;
	/* After any check of the sender as the client gave it: a local
	 * sender becomes its configured address. */
	if ((sender = localaddr_sender(s->local, addr)) != NULL)
		log_info("client=%s: sender <%s> rewritten to <%s>",
		    s->client, addr, sender);
	else
		sender = xstrdup(addr);

	s->txn = txn_new();
	s->txn->utf8 = utf8;
	free(s->txn->env->sender);
	s->txn->env->sender = sender;
	if (addr_8bit(sender))
		flags |= ENVELOPE_SMTPUTF8;
	free(s->txn->env->client);
	s->txn->env->client = xstrdup(s->client);
	s->txn->env->uid_known = s->uid_known;
	s->txn->env->uid = s->uid;
	s->txn->env->flags |= flags;
	session_enter(s, S_MAIL);
	reply(s, "250 2.1.0 Ok");
}

/*
 * Adds the recipients that addr stands for: itself, or for a local
 * address its aliases. Every address of an expansion counts against
 * max_recipients; an expansion larger than that is refused for good, one
 * that only overflows this transaction gets a 452 so that the client
 * sends it again in the next. Addresses already in the envelope are not
 * added twice. Replies and returns -1 when refused.
 */
static int
rcpt_add(struct session *s, const char *addr)
{
	struct envelope *env = s->txn->env;
	char text[512], **list;
	size_t n, i, j, fresh = 0;
	int aliased;

	if (localaddr_rcpt(s->local, addr, s->lim.max_recipients, &list, &n,
	    text, sizeof(text)) == -1) {
		log_info("reject: RCPT from client=%s: %s", s->client, text);
		reply_error(s, "%s", text);
		return -1;
	}
	aliased = n != 1 || strcmp(list[0], addr) != 0;
	for (i = 0; i < n; i++) {
		for (j = 0; j < env->nrcpts; j++)
			if (aliases_same_address(env->rcpts[j].addr, list[i]))
				break;
		if (j < env->nrcpts) {
			free(list[i]);
			list[i] = NULL;
		} else
			fresh++;
	}
	if (env->nrcpts + fresh > s->lim.max_recipients) {
		localaddr_list_free(list, n);
		reply(s, "452 4.5.3 Too many recipients");
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (list[i] == NULL)
			continue;
		envelope_add_rcpt(env, list[i]);
		if (addr_8bit(list[i]))
			env->flags |= ENVELOPE_SMTPUTF8;
	}
	if (aliased)
		log_info("client=%s: <%s> is an alias for %zu address%s",
		    s->client, addr, n, n == 1 ? "" : "es");
	localaddr_list_free(list, n);
	return 0;
}

static void
cmd_rcpt(struct session *s, const char *arg)
{
	char addr[SMTP_PATH_MAX];
	const char *params, *why;
	struct envelope *env = s->txn->env;

	if (smtp_path_parse(arg, "TO:", addr, sizeof(addr), &params,
	    &why) == -1) {
		reply_error(s, "501 5.5.4 Syntax: RCPT TO:<address> (%s)", why);
		return;
	}
	if (*params != '\0') {
		reply_error(s, "555 5.5.4 RCPT parameters not supported");
		return;
	}
	if (!smtp_mailbox_valid(addr, s->txn->utf8) &&
	    !localaddr_unqualified_ok(addr, s->txn->utf8)) {
		reply_error(s, "501 5.1.3 Bad recipient address syntax");
		return;
	}
	if (env->nrcpts >= s->lim.max_recipients) {
		/* Not a client error: RFC 5321 4.5.3.1.10 expects clients
		 * to send the rest in another transaction. */
		reply(s, "452 4.5.3 Too many recipients");
		return;
	}
	if (rcpt_add(s, addr) == -1)
		return;
	session_enter(s, S_RCPT);
	reply(s, "250 2.1.5 Ok");
}

static void
cmd_data(struct session *s, const char *arg)
{
	if (txn_start(s) == -1) {
		int error = errno;

		log_warnx("queue: cannot start a message for client=%s: %s",
		    s->client, strerror(error));
		reply(s, "%s", storage_reply(error));
		session_reset(s);
		return;
	}
	s->txn->at_bol = 1;
	s->txn->prev_crlf = 1; /* the start of data counts as after CRLF */
	session_enter(s, S_DATA);
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void
bdat_reject(struct session *s, const char *text, int counts, int reset)
{
	s->bdat_reject = text;
	s->bdat_reject_counts = counts;
	s->bdat_reject_reset = reset;
}

static void
cmd_bdat(struct session *s, const char *arg)
{
	char num[24];
	const char *rest;
	uint64_t size;
	size_t n;

	n = strspn(arg, "0123456789");
	rest = arg + n;
	if (n == 0 || n >= sizeof(num) ||
	    (*rest != '\0' && strcasecmp(rest, " LAST") != 0)) {
		/*
		 * Without a size we cannot tell where the chunk ends, and
		 * its octets must never be read as commands: close.
		 */
		reply(s, "501 5.5.4 Syntax: BDAT size [LAST]");
		session_enter(s, S_QUIT);
		return;
	}
	memcpy(num, arg, n);
	num[n] = '\0';
	if (parse_u64(num, &size) == -1) {
		reply(s, "501 5.5.4 Syntax: BDAT size [LAST]");
		session_enter(s, S_QUIT);
		return;
	}

	s->bdat_left = size;
	s->bdat_last = *rest != '\0';
	s->bdat_prev = s->state;
	bdat_reject(s, NULL, 0, 0);
	switch (s->state) {
	case S_CONNECTED:
		bdat_reject(s, "503 5.5.1 Error: send HELO/EHLO first", 1, 0);
		break;
	case S_READY:
		bdat_reject(s, "503 5.5.1 Error: need MAIL command", 1, 0);
		break;
	case S_MAIL:
		bdat_reject(s, "503 5.5.1 Error: need RCPT command", 1, 0);
		break;
	case S_RCPT:
		if (txn_start(s) == -1) {
			int error = errno;

			log_warnx("queue: cannot start a message for "
			    "client=%s: %s", s->client, strerror(error));
			bdat_reject(s, storage_reply(error), 0, 1);
		}
		s->txn->chunked = 1;
		break;
	case S_CHUNKED:
		break;
	case S_DATA:
	case S_BDAT:
	case S_COMMIT:
	case S_QUIT:
		fatalx("BDAT in state %s", session_state_names[s->state]);
	}
	session_enter(s, S_BDAT);
}

static void
cmd_rset(struct session *s, const char *arg)
{
	session_reset(s);
	reply(s, "250 2.0.0 Ok");
}

static void
cmd_noop(struct session *s, const char *arg)
{
	reply(s, "250 2.0.0 Ok");
}

static void
cmd_quit(struct session *s, const char *arg)
{
	txn_free(s->txn);
	s->txn = NULL;
	reply(s, "221 2.0.0 Bye");
	session_enter(s, S_QUIT);
}

static void
cmd_vrfy(struct session *s, const char *arg)
{
	/* We relay: we cannot know, and would not tell. */
	reply(s, "252 2.5.2 Cannot VRFY user, but will accept message "
	    "and attempt delivery");
}

static void
cmd_help(struct session *s, const char *arg)
{
	reply(s, "214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP "
	    "QUIT VRFY HELP");
	reply(s, "214 2.0.0 See RFC 5321");
}

static void
cmd_starttls(struct session *s, const char *arg)
{
	/* Not offered: the listeners are loopback or Unix sockets. */
	reply(s, "502 5.5.1 STARTTLS not supported");
}

/* The 503 for a command valid in SMTP but not now. */
static void
sequence_error(struct session *s, const struct command *c)
{
	const char *why = "Bad sequence of commands";

	if (s->state == S_CONNECTED)
		why = "Error: send HELO/EHLO first";
	else if (strcmp(c->verb, "MAIL") == 0)
		why = "Error: nested MAIL command";
	else if (s->state == S_CHUNKED)
		why = "Error: only BDAT may follow BDAT";
	else if (s->txn == NULL)
		why = "Error: need MAIL command";
	else if (strcmp(c->verb, "DATA") == 0)
		why = "Error: need RCPT command";
	reply_error(s, "503 5.5.1 %s", why);
}

/* Looks verb up in the command table and runs it, or refuses it. */
static void
command_run(struct session *s, const char *verb, const char *arg)
{
	const struct command *c = NULL;
	size_t i;

	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(verb, commands[i].verb) == 0) {
			c = &commands[i];
			break;
		}
	if (c == NULL) {
		reply_error(s, "500 5.5.1 Error: command not recognized");
		return;
	}
	if ((c->flags & CMD_NOARG) && *arg != '\0') {
		reply_error(s, "501 5.5.4 Syntax: %s", c->verb);
		return;
	}
	if (!(c->states & SB(s->state))) {
		sequence_error(s, c);
		return;
	}
	c->action(s, arg);
}

/*
 * A DATA that was refused while more input already waits behind it. RFC
 * 2920 makes DATA the last command of a pipelined group: the client must
 * wait for the 354. What it sent without waiting is its message, and read
 * as commands a RCPT and a DATA in that text would queue it, or a part of
 * it, for whoever the text names. So the session ends instead. Input that
 * arrives only after the refusal was sent cannot be told apart from
 * commands; a client that waits as it must sends none.
 */
static void
data_refused(struct session *s)
{
	if (s->state == S_QUIT || evbuffer_get_length(s->in) == 0)
		return;
	log_info("smtp: client=%s: input pipelined after a refused DATA, "
	    "closing", s->client);
	reply(s, "421 4.5.0 Improper command pipelining after DATA, closing "
	    "connection");
	txn_free(s->txn);
	s->txn = NULL;
	session_enter(s, S_QUIT);
}

static void
command_dispatch(struct session *s, char *line, size_t len)
{
	char verb[VERB_MAX];
	const char *arg;

	/* Trailing blanks are a common client sloppiness; drop them. */
	while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
		line[--len] = '\0';
	trace(s, "<", line, len);
	if (smtp_cmd_split(line, len, verb, sizeof(verb), &arg) == -1) {
		reply_error(s, "500 5.5.2 Error: bad syntax");
		return;
	}
	command_run(s, verb, arg);
	if (strcmp(verb, "DATA") == 0 && s->state != S_DATA)
		data_refused(s);
}

/*
 * Takes one command line from the input. Lines may end with a bare LF
 * (lenient); a line longer than max_line (with its CRLF) is answered 500
 * and skipped up to its LF. Returns 1 when something was consumed, 0
 * when more input is needed.
 */
static int
line_process(struct session *s)
{
	struct evbuffer *in = s->in;
	struct evbuffer_ptr p;
	size_t eol_len, n, avail;

	avail = evbuffer_get_length(in);
	if (avail == 0)
		return 0;
	p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
	if (p.pos == -1) {
		if (s->discarding) {
			evbuffer_drain(in, avail);
			return 0;
		}
		if (avail < s->lim.max_line)
			return 0;
		evbuffer_drain(in, avail);
		s->discarding = 1;
		log_info("smtp: client=%s: line too long", s->client);
		reply_error(s, "500 5.5.2 Line too long");
		return 1;
	}
	n = (size_t)p.pos + 1;
	if (s->discarding) {
		evbuffer_drain(in, n);
		s->discarding = 0;
		return 1;
	}
	if (n > s->lim.max_line) {
		evbuffer_drain(in, n);
		log_info("smtp: client=%s: line too long", s->client);
		reply_error(s, "500 5.5.2 Line too long");
		return 1;
	}
	if (evbuffer_remove(in, s->line, n) != (int)n)
		fatalx("evbuffer_remove");
	n--; /* LF */
	if (n > 0 && s->line[n - 1] == '\r')
		n--;
	s->line[n] = '\0';
	command_dispatch(s, s->line, n);
	return 1;
}

/* ---- session plumbing ---- */

/* Reading is on unless the session waits for the client to read its
 * replies, holds READ_HIWAT bytes of input already, saw the end of input,
 * or is closing. Only a change costs an epoll_ctl. */
static void
session_update_read(struct session *s)
{
	struct timeval tv;
	int want;

	want = s->state != S_QUIT && !s->out_blocked && !s->eof &&
	    evbuffer_get_length(s->in) < s->read_hiwat;
	if (want == s->reading)
		return;
	if (want) {
		tv.tv_sec = s->lim.idle_timeout;
		tv.tv_usec = 0;
		event_add(s->read_ev, s->lim.idle_timeout > 0 ? &tv : NULL);
	} else
		event_del(s->read_ev);
	s->reading = want;
}

/*
 * Writes the queued replies straight to the socket. They nearly always
 * fit its buffer at once, so the write event is armed only when some are
 * left (a client slow to read them) or the write failed (the write
 * callback then retries and sees the error): arming and disarming it for
 * every reply cost two epoll_ctl calls. Returns 1 when nothing is left
 * to write.
 */
static int
session_flush(struct session *s)
{
	struct timeval tv;

	if (s->writing)
		return 0; /* the socket was full: the write event waits */
	if (evbuffer_get_length(s->out) > 0)
		(void)evbuffer_write(s->out, s->fd);
	if (evbuffer_get_length(s->out) == 0)
		return 1;
	tv.tv_sec = s->lim.idle_timeout;
	tv.tv_usec = 0;
	event_add(s->write_ev, s->lim.idle_timeout > 0 ? &tv : NULL);
	s->writing = 1;
	return 0;
}

/* Flushes, and frees a session in S_QUIT whose replies are all out.
 * Returns 1 when s was freed; only for top-level callbacks. */
static int
session_flush_close(struct session *s)
{
	if (session_flush(s) && s->state == S_QUIT) {
		session_free(s);
		return 1;
	}
	return 0;
}

static void
session_process(struct session *s)
{
	struct evbuffer *out = s->out;

	for (;;) {
		switch (s->state) {
		case S_COMMIT:
		case S_QUIT:
			return;
		case S_DATA:
			if (!data_process(s))
				return;
			break;
		case S_BDAT:
			if (!bdat_process(s))
				return;
			break;
		case S_CONNECTED:
		case S_READY:
		case S_MAIL:
		case S_RCPT:
		case S_CHUNKED:
			if (s->srv->shutting_down && s->txn == NULL) {
				reply(s, "421 4.3.2 %s Service shutting down",
				    s->hostname);
				session_enter(s, S_QUIT);
				return;
			}
			if (evbuffer_get_length(out) > OUT_HIWAT) {
				s->out_blocked = 1;
				session_update_read(s);
				return;
			}
			if (!line_process(s))
				return;
			break;
		}
	}
}

/* Processes input, sends the replies and closes a finished session; s
 * may be freed. */
static void
session_run(struct session *s)
{
	session_process(s);
	if (s->eof && s->state != S_COMMIT && s->state != S_QUIT) {
		/* The client shut down its sending side: it still gets the
		 * replies to what it sent, then the session ends. */
		if (s->txn != NULL)
			log_info("smtp: client=%s: lost connection in state %s",
			    s->client, session_state_names[s->state]);
		txn_free(s->txn);
		s->txn = NULL;
		session_enter(s, S_QUIT);
	}
	if (session_flush_close(s))
		return;
	if (s->out_blocked && evbuffer_get_length(s->out) == 0) {
		/* The replies that stopped processing are out already. */
		s->out_blocked = 0;
		event_active(s->resume_ev, EV_TIMEOUT, 1);
	}
	session_update_read(s);
}

/* A read or write that failed for now and may be tried again. */
static int
io_retry(int error)
{
	if (error == EINTR || error == EAGAIN)
		return 1;
#if EWOULDBLOCK != EAGAIN
	if (error == EWOULDBLOCK)
		return 1;
#endif
	return 0;
}

/* The connection broke (or a write timed out): nothing more can be said
 * to the client. */
static void
session_lost(struct session *s, const char *why)
{
	log_debug("smtp %u: connection error: %s", s->id, why);
	if (s->txn != NULL && s->state != S_COMMIT)
		log_info("smtp: client=%s: lost connection in state %s",
		    s->client, session_state_names[s->state]);
	session_free(s);
}

/* No byte from the client for idle_timeout. Waiting for our own commit
 * is not the client's idleness: the reply to it is owed first. */
static void
session_idle(struct session *s)
{
	if (s->state == S_COMMIT || s->state == S_QUIT)
		return;
	log_info("smtp: client=%s: idle timeout in state %s", s->client,
	    session_state_names[s->state]);
	reply(s, "421 4.4.2 Idle timeout, closing connection");
	txn_free(s->txn);
	s->txn = NULL;
	session_enter(s, S_QUIT);
	(void)session_flush_close(s);
}

/* One read() into the input buffer, then processing. */
static void
session_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	struct evbuffer_iovec v[2];
	struct iovec iov[2];
	size_t left;
	ssize_t n;
	int i, nv, used;

	if (what & EV_TIMEOUT) {
		session_idle(s);
		return;
	}
	if ((nv = evbuffer_reserve_space(s->in, READ_SIZE, v, 2)) < 1)
		fatalx("smtp: evbuffer_reserve_space");
	for (i = 0; i < nv; i++) {
		iov[i].iov_base = v[i].iov_base;
		iov[i].iov_len = v[i].iov_len;
	}
	n = readv(fd, iov, nv);
	if (n == -1 && io_retry(errno))
		n = 0;
	else if (n == -1) {
		evbuffer_commit_space(s->in, v, 0);
		session_lost(s, strerror(errno));
		return;
	} else if (n == 0)
		s->eof = 1;
	left = (size_t)n;
	for (used = 0; used < nv && left > 0; used++) {
		if (v[used].iov_len > left)
			v[used].iov_len = left;
		left -= v[used].iov_len;
	}
	if (evbuffer_commit_space(s->in, v, used) == -1)
		fatalx("smtp: evbuffer_commit_space");
	session_run(s);
}

static void
session_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	session_run(arg);
}

/* The socket takes more of the replies that were left over; once they
 * are all out the write event goes back to sleep. */
static void
session_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;

	if (what & EV_TIMEOUT) {
		session_lost(s, "write timeout");
		return;
	}
	if (evbuffer_write(s->out, fd) == -1 &&
	    !io_retry(errno)) {
		session_lost(s, strerror(errno));
		return;
	}
	if (evbuffer_get_length(s->out) > 0)
		return;
	event_del(s->write_ev);
	s->writing = 0;
	if (s->state == S_QUIT) {
		session_free(s);
		return;
	}
	if (s->out_blocked) {
		s->out_blocked = 0;
		session_run(s);
	}
}

/* Ends a session that outlived session_timeout: 421, then close once
 * the reply is out. Whatever transaction was open is dropped. */
static void
session_expire(struct session *s)
{
	log_info("smtp: client=%s: session time limit (%us) reached in "
	    "state %s", s->client, s->lim.session_timeout,
	    session_state_names[s->state]);
	reply(s, "421 4.4.2 Session time limit exceeded, closing connection");
	txn_free(s->txn);
	s->txn = NULL;
	session_enter(s, S_QUIT);
}

/*
 * The overall deadline: unlike the idle timeout, no byte resets it, so a
 * client feeding one byte at a time (slowloris) cannot hold a slot for
 * ever. A commit in flight finishes first: its reply is owed.
 */
static void
session_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;

	switch (s->state) {
	case S_QUIT:
		return;
	case S_COMMIT:
		s->expired = 1;
		return;
	case S_CONNECTED:
	case S_READY:
	case S_MAIL:
	case S_RCPT:
	case S_DATA:
	case S_BDAT:
	case S_CHUNKED:
		break;
	}
	session_expire(s);
	(void)session_flush_close(s);
}

static void
session_free(struct session *s)
{
	struct smtp_server *srv = s->srv;

	log_debug("smtp %u: disconnect client=%s", s->id, s->client);
	if (s->commit != NULL)
		s->commit->s = NULL;
	txn_free(s->txn);
	event_free(s->read_ev);
	event_free(s->write_ev);
	evutil_closesocket(s->fd);
	evbuffer_free(s->in);
	evbuffer_free(s->out);
	event_free(s->resume_ev);
	if (s->deadline_ev != NULL)
		event_free(s->deadline_ev);
	TAILQ_REMOVE(&srv->sessions, s, entry);
	srv->nsessions--;
	free(s->line);
	free(s->client);
	free(s->hostname);
	free(s->mail_domain);
	free(s);
	if (srv->shutting_down && srv->nsessions == 0 &&
	    srv->shutdown_ev != NULL) {
		struct timeval now = { 0, 0 };

		evtimer_add(srv->shutdown_ev, &now);
	}
}

/* Fills peer_name, peer_addr and client. */
static void
session_peer(struct session *s, evutil_socket_t fd,
    const struct sockaddr *sa, socklen_t salen)
{
	const char *name = "unknown";
	uid_t uid;

	s->peer_family = sa != NULL ? sa->sa_family : AF_UNSPEC;
	snprintf(s->peer_addr, sizeof(s->peer_addr), "unknown");
	switch (s->peer_family) {
	case AF_INET: {
		const struct sockaddr_in *sin = (const void *)sa;

		inet_ntop(AF_INET, &sin->sin_addr, s->peer_addr,
		    sizeof(s->peer_addr));
		if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127)
			name = "localhost";
		break;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *sin6 = (const void *)sa;

		inet_ntop(AF_INET6, &sin6->sin6_addr, s->peer_addr,
		    sizeof(s->peer_addr));
		if (IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr))
			name = "localhost";
		break;
	}
	case AF_UNIX:
		name = "localhost";
		if (peercred_unix(fd, &uid) == 0) {
			snprintf(s->peer_addr, sizeof(s->peer_addr),
			    "unix:uid=%ju", (uintmax_t)uid);
			s->uid = uid;
			s->uid_known = 1;
		} else
			snprintf(s->peer_addr, sizeof(s->peer_addr), "unix");
		break;
	default:
		break;
	}
	snprintf(s->peer_name, sizeof(s->peer_name), "%s", name);
	s->client = xasprintf("%s[%s]", s->peer_name, s->peer_addr);
}

/* A loopback TCP client: its socket's owner, from the kernel (a
 * sock_diag request and reply, and a getsockname first when the local
 * address is not known). */
static void
session_owner(struct session *s, evutil_socket_t fd,
    const struct sockaddr *sa, const struct sockaddr *local)
{
	struct sockaddr_storage ss;
	socklen_t llen = sizeof(ss);
	uid_t uid;

	if (sa == NULL || s->peer_family == AF_UNIX ||
	    strcmp(s->peer_name, "localhost") != 0)
		return;
	if (local == NULL) {
		if (getsockname(fd, (struct sockaddr *)&ss, &llen) == -1)
			return;
		local = (struct sockaddr *)&ss;
	}
	if (peercred_tcp(local, sa, &uid) == 0) {
		s->uid = uid;
		s->uid_known = 1;
	} else
		log_debug("smtp %u: no owner found for %s: %s", s->id,
		    s->peer_addr, strerror(errno));
}

/*
 * How many sessions the client of the new session ns already has: the
 * same local user when its uid is known (Unix socket, or loopback TCP
 * through the kernel's socket table), otherwise the same peer address.
 */
static unsigned
client_sessions(const struct smtp_server *srv, const struct session *ns)
{
	const struct session *s;
	unsigned n = 0;

	TAILQ_FOREACH(s, &srv->sessions, entry) {
		if (ns->uid_known ? s->uid_known && s->uid == ns->uid :
		    !s->uid_known && strcmp(s->peer_addr, ns->peer_addr) == 0)
			n++;
	}
	return n;
}

/* Answers and closes a connection we will not serve. */
static void
refuse(evutil_socket_t fd, const char *text)
{
	ssize_t r;

	/* Best effort: the socket is fresh, the buffer empty. */
	r = send(fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)r;
	evutil_closesocket(fd);
}

/* ---- the server ---- */

struct smtp_server *
smtp_server_new(struct event_base *base,
    const struct smtp_server_params *params)
{
	struct smtp_server *srv;

	srv = xcalloc(1, sizeof(*srv));
	srv->base = base;
	srv->params = *params;
	srv->cfg = params->cfg;
	srv->date_time = (time_t)-1;
	TAILQ_INIT(&srv->sessions);
	TAILQ_INIT(&srv->commits);
	return srv;
}

void
smtp_server_free(struct smtp_server *srv)
{
	struct session *s;
	struct commit *c;

	if (srv == NULL)
		return;
	/* Commits in flight finish without us; their messages stay in the
	 * spool for the next start-up to load. */
	while ((c = TAILQ_FIRST(&srv->commits)) != NULL) {
		TAILQ_REMOVE(&srv->commits, c, entry);
		c->srv = NULL;
	}
	srv->shutting_down = 0; /* no done() from here */
	while ((s = TAILQ_FIRST(&srv->sessions)) != NULL)
		session_free(s);
	if (srv->shutdown_ev != NULL)
		event_free(srv->shutdown_ev);
	free(srv);
}

/*
 * Starts a session on fd. When label is set the caller vouches for the
 * peer (the maildrop importer): the client is "localhost[label]" and its
 * user is *uid, whatever the socket says.
 */
static void
session_start(struct smtp_server *srv, evutil_socket_t fd,
    const struct sockaddr *sa, socklen_t salen, const struct sockaddr *local,
    const char *label, const uid_t *uid)
{
	const struct config *cfg = srv->cfg;
	struct session *s;
	struct timeval tv;
	int owner_later;

	if (srv->shutting_down) {
		refuse(fd, "421 4.3.2 Service shutting down\r\n");
		return;
	}
	if (srv->nsessions >= cfg->max_sessions) {
		log_info("smtp: too many sessions (%u), refusing a connection",
		    srv->nsessions);
		refuse(fd, "421 4.3.2 Too many connections, try again "
		    "later\r\n");
		return;
	}
	s = xcalloc(1, sizeof(*s));
	s->srv = srv;
	s->id = ++srv->next_id;
	s->state = S_CONNECTED;
	s->lim.max_line = cfg->max_line < 16 ? 16 : cfg->max_line;
	s->lim.max_message_size = cfg->max_message_size;
	s->lim.max_recipients = cfg->max_recipients;
	s->lim.max_errors = cfg->max_errors;
	s->lim.idle_timeout = cfg->idle_timeout;
	s->local = cfg->local;
	s->lim.session_timeout = cfg->session_timeout;
	if (label != NULL) {
		s->peer_family = AF_UNIX;
		snprintf(s->peer_name, sizeof(s->peer_name), "localhost");
		snprintf(s->peer_addr, sizeof(s->peer_addr), "%s", label);
		s->client = xasprintf("%s[%s]", s->peer_name, s->peer_addr);
		s->uid = *uid;
		s->uid_known = 1;
	} else
		session_peer(s, fd, sa, salen);
	/*
	 * A loopback TCP client's owner counts in the per-client limit, so
	 * it is looked up before the greeting only when that limit could
	 * refuse this session (the client's sessions are among the others).
	 * Otherwise it is looked up just after the 220 is written, while the
	 * client reads it and sends its first command: at one client each
	 * connection's greeting does not wait for the sock_diag request and
	 * reply. The callback that writes the greeting
	 * looks it up, so no command is read before it is known.
	 */
	owner_later = label == NULL &&
	    srv->nsessions < cfg->max_sessions_per_client;
	if (label == NULL && !owner_later)
		session_owner(s, fd, sa, local);
	snprintf(s->source, sizeof(s->source), "%s", label != NULL ? label :
	    "smtp");
	if (client_sessions(srv, s) >= cfg->max_sessions_per_client) {
		log_info("smtp: too many sessions from client=%s (%u), "
		    "refusing a connection", s->client,
		    cfg->max_sessions_per_client);
		refuse(fd, "421 4.7.0 Too many connections from you, try "
		    "again later\r\n");
		free(s->client);
		free(s);
		return;
	}
	s->hostname = xstrdup(cfg->hostname != NULL ? cfg->hostname :
	    "localhost");
	s->mail_domain = xstrdup(cfg->mail_domain != NULL ? cfg->mail_domain :
	    s->hostname);
	s->policy = cfg->sender_policy;
	s->line = xmalloc(s->lim.max_line + 1);

	s->fd = fd;
	s->in = evbuffer_new();
	s->out = evbuffer_new();
	s->read_ev = event_new(srv->base, fd, EV_READ | EV_PERSIST,
	    session_read_cb, s);
	s->write_ev = event_new(srv->base, fd, EV_WRITE | EV_PERSIST,
	    session_write_cb, s);
	s->resume_ev = event_new(srv->base, -1, 0, session_resume_cb, s);
	if (s->in == NULL || s->out == NULL || s->read_ev == NULL ||
	    s->write_ev == NULL || s->resume_ev == NULL)
		fatalx("smtp: cannot set up a session");
	/* The input must hold one whole command line. */
	s->read_hiwat = s->lim.max_line * 2 > READ_HIWAT ?
	    s->lim.max_line * 2 : READ_HIWAT;
	if (s->lim.session_timeout > 0) {
		s->deadline_ev = evtimer_new(srv->base, session_deadline_cb, s);
		if (s->deadline_ev == NULL)
			fatalx("smtp: cannot set up a session");
		tv.tv_sec = s->lim.session_timeout;
		tv.tv_usec = 0;
		evtimer_add(s->deadline_ev, &tv);
	}
	TAILQ_INSERT_TAIL(&srv->sessions, s, entry);
	srv->nsessions++;
	metrics_session();

	log_debug("smtp %u: connect from %s", s->id, s->client);
	reply(s, "220 %s ESMTP smarthostd", s->hostname);
	session_update_read(s);
	(void)session_flush(s);
	if (owner_later)
		session_owner(s, fd, sa, local);
}

void
smtp_server_accept(struct smtp_server *srv, evutil_socket_t fd,
    const struct sockaddr *sa, socklen_t salen, const struct sockaddr *local)
{
	session_start(srv, fd, sa, salen, local, NULL, NULL);
}

void
smtp_server_accept_local(struct smtp_server *srv, evutil_socket_t fd,
    const char *label, uid_t uid)
{
	session_start(srv, fd, NULL, 0, NULL, label, &uid);
}

void
smtp_server_set_config(struct smtp_server *srv, const struct config *cfg)
{
	srv->cfg = cfg;
	srv->params.cfg = cfg;
}

unsigned
smtp_server_sessions(const struct smtp_server *srv)
{
	return srv->nsessions;
}

/* Runs when the last session closed or the grace period ended. */
static void
shutdown_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_server *srv = arg;
	void (*done)(void *) = srv->shutdown_done;
	struct session *s;

	srv->shutdown_done = NULL;
	while ((s = TAILQ_FIRST(&srv->sessions)) != NULL) {
		log_info("smtp: dropping client=%s in state %s at shutdown",
		    s->client, session_state_names[s->state]);
		session_free(s);
	}
	if (done != NULL)
		done(srv->shutdown_arg);
}

void
smtp_server_shutdown(struct smtp_server *srv, unsigned timeout,
    void (*done)(void *arg), void *arg)
{
	struct session *s, *next;
	struct timeval tv = { 0, 0 };

	srv->shutting_down = 1;
	srv->shutdown_done = done;
	srv->shutdown_arg = arg;
	if (srv->shutdown_ev == NULL &&
	    (srv->shutdown_ev = evtimer_new(srv->base, shutdown_cb, srv)) ==
	    NULL)
		fatalx("smtp: evtimer_new");
	/* Idle sessions go now; the others once their transaction ends
	 * (session_process checks between commands). */
	for (s = TAILQ_FIRST(&srv->sessions); s != NULL; s = next) {
		next = TAILQ_NEXT(s, entry);
		if (s->txn != NULL || s->state == S_QUIT)
			continue;
		reply(s, "421 4.3.2 %s Service shutting down", s->hostname);
		session_enter(s, S_QUIT);
		(void)session_flush_close(s);
	}
	if (srv->nsessions > 0)
		tv.tv_sec = timeout;
	evtimer_add(srv->shutdown_ev, &tv);
}
