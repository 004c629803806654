/*
 * Maildrop import (see maildrop.h).
 *
 * One file is imported at a time: the maildrop is a fallback for when the
 * daemon is down, so its throughput matters less than keeping one simple
 * in-order path. A scan lists the directory (names in arrival order, as
 * postdrop's names start with the time), then imports the files one by
 * one; an inotify event or the rescan timer during an import only marks
 * the directory dirty, and the scan is repeated once the list is done.
 *
 * The import speaks SMTP to an in-process server session over a
 * socketpair: EHLO, MAIL, RCPT..., then the message with BDAT (its exact
 * length is known, so no dot-stuffing), and waits for the 250 that the
 * server sends only once the queue committed the message.
 *
 * A message the session refuses for good (a 5xx to MAIL, to any RCPT, or
 * to the message) is returned to the user who dropped it, as Postfix
 * returns a postdrop'd message its cleanup rejects: the same import then
 * opens a second session, as the daemon's own user, and submits a
 * non-delivery notification (dsn_compose()) from <> to that user's local
 * name (so aliases and the catch-all apply: root's goes to whoever reads
 * root's mail) or, when no local name takes it, to the address sender
 * rewriting gives the user. The file is removed once that notification is
 * queued. Like the sendmail path, a message goes to all of its recipients
 * or to none: one refused recipient returns it for all. Only a file that
 * nobody can be told about (no passwd entry, no address takes the
 * notification) is moved aside like a corrupt one.
 *
 * The loop thread holds the SMTP conversations only. Every step that
 * touches the disk or the passwd database (listing the directory, opening
 * and checking a file, moving it aside with the sync of corrupt/, removing
 * it, looking up its owner and reading its header for a return) is a job
 * on the worker pool, one at a time (md->job): the next step starts from
 * the job's done() on the loop. maildrop_free() with a job in flight
 * leaves the freeing to that done(), which worker_free() runs.
 */
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <pwd.h>

#include "dropfile.h"
#include "dsn.h"
#include "fileio.h"
#include "localaddr.h"
#include "log.h"
#include "maildrop.h"
#include "smtp_proto.h"
#include "worker.h"
#include "xmalloc.h"

#define IMPORT_TIMEOUT 120       /* seconds for any one reply */
#define STALE_TMP (24 * 3600)    /* a postdrop temp file this old is dead */
#define REPLY_MAX 256

enum import_state {
	I_GREETING, /* waiting for 220 */
	I_EHLO,
	I_MAIL,
	I_RCPT,     /* waiting for the reply to rcpt[next_rcpt - 1] */
	I_BDAT,     /* message sent; waiting for "250 queued as" */
};
#define I__COUNT (I_BDAT + 1)

static const char *const import_state_names[] = {
	"GREETING",
	"EHLO",
	"MAIL",
	"RCPT",
	"BDAT",
};
_Static_assert(sizeof(import_state_names) / sizeof(import_state_names[0]) ==
    I__COUNT, "import_state_names out of step with enum import_state");

struct import {
	struct maildrop *md;
	char *name;
	int fd;                   /* the maildrop file */
	struct dropfile df;
	size_t hdrlen;
	off_t size;               /* message bytes */
	struct bufferevent *bev;  /* our end of the socketpair */
	enum import_state state;
	size_t next_rcpt;
	char reply[REPLY_MAX];    /* first line of the current reply */
	int have_first;
	time_t dropped;           /* the file's mtime */
	/* A refused message, and its return to the submitter. */
	char why[REPLY_MAX + 32]; /* "refused at STATE: reply" */
	char *refused_all;        /* the 5xx to MAIL or the message */
	char **refused;           /* per recipient: its 5xx, or NULL */
	size_t nrefused;
	int returning;            /* the session returning it runs */
	char *to[2];              /* who may take the notification */
	size_t nto, next_to;
	char *head;               /* the message's header section */
	size_t headlen;
	char *notice;             /* the notification being sent */
	size_t noticelen;
};

struct maildrop {
	struct event_base *base;
	struct worker *w;
	struct smtp_server *srv;
	const struct localaddr *local; /* the config's, kept by the daemon */
	char *hostname;
	char *dir;
	int dirfd;
	int corruptfd;
	uint64_t max_message_size;
	unsigned max_recipients;
	int inotify_fd;
	struct event *inotify_ev;
	struct event *rescan_ev;  /* periodic, and "scan now" */
	char **names;             /* the current scan's list */
	size_t nnames, next;
	struct import *cur;
	struct md_job *job;       /* the blocking step in flight, or NULL */
	int dirty;                /* rescan once the list is done */
	int stopped;
	int dying;                /* maildrop_free() waits for job */
	unsigned aside_seq;       /* numbers names in corrupt/ and DSNs;
	                             atomic: a job and the loop use it */
};

/* The blocking steps, run on the worker pool. */
enum md_job_kind {
	JOB_SCAN,   /* list the directory: names */
	JOB_OPEN,   /* open and check name: im, or NULL (gone or aside) */
	JOB_END,    /* remove name (its message is queued) or move it aside */
	JOB_RETURN, /* im's owner's name (pw_name) and header section */
};

struct md_job {
	struct maildrop *md;
	enum md_job_kind kind;
	char *name;
	/* JOB_OPEN: the limits when it started (a reload may change md's). */
	uint64_t max_size;
	unsigned max_rcpts;
	/* JOB_END */
	int aside;
	uid_t owner;
	char *why;
	/* Results. */
	char **names;
	size_t nnames;
	struct import *im;
	char *pw_name;
	int error;
	struct import *ret;       /* JOB_RETURN: md->cur, borrowed */
};

static void maildrop_next(struct maildrop *md);
static void job_start(struct md_job *job);

/* A file name made printable for the log. */
static const char *
pname(char *buf, size_t size, const char *name)
{
	return log_sanitize(buf, size, name, strlen(name));
}

/*
 * Worker pool. Moves name out of the maildrop into <spool>/corrupt as
 * maildrop.<time>.<pid>.<n> (the original name is in the log line; a
 * user-chosen name never becomes a path of ours).
 */
static void
move_aside(struct maildrop *md, const char *name, uid_t owner,
    const char *why)
{
	char target[96], nb[128];

	snprintf(target, sizeof(target), "maildrop.%jd.%ld.%u",
	    (intmax_t)time(NULL), (long)getpid(),
	    __atomic_add_fetch(&md->aside_seq, 1, __ATOMIC_RELAXED));
	if (renameat(md->dirfd, name, md->corruptfd, target) == -1) {
		log_warn("maildrop: %s (owner uid=%ju): %s; cannot move it "
		    "aside", pname(nb, sizeof(nb), name), (uintmax_t)owner,
		    why);
		return;
	}
	log_warnx("maildrop: %s (owner uid=%ju): %s; moved to corrupt/%s",
	    pname(nb, sizeof(nb), name), (uintmax_t)owner, why, target);
	(void)fsync(md->corruptfd);
}

/* ---- one import: validation ---- */

static void
import_free(struct import *im)
{
	size_t i;

	if (im == NULL)
		return;
	if (im->bev != NULL)
		bufferevent_free(im->bev);
	if (im->fd != -1)
		close(im->fd);
	if (im->refused != NULL)
		for (i = 0; i < im->df.nrcpts; i++)
			free(im->refused[i]);
	free(im->refused);
	free(im->refused_all);
	for (i = 0; i < im->nto; i++)
		free(im->to[i]);
	free(im->notice);
	free(im->head);
	dropfile_clear(&im->df);
	free(im->name);
	free(im);
}

/*
 * Worker pool. Opens and checks name against the limits max_size and
 * max_rcpts. Returns the import ready to send, or NULL when the file is
 * gone or was moved aside.
 */
static struct import *
import_open(struct maildrop *md, const char *name, uint64_t max_size,
    unsigned max_rcpts)
{
	struct import *im;
	struct stat st;
	char err[256], *head = NULL, tail[DROPFILE_TRAILER_MAX];
	size_t headlen, taillen;
	uid_t owner = (uid_t)-1;

	im = xcalloc(1, sizeof(*im));
	im->md = md;
	im->name = xstrdup(name);
	im->fd = openat(md->dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
	    O_NOCTTY | O_CLOEXEC);
	if (im->fd == -1) {
		if (errno == ENOENT)
			goto gone;
		if (fstatat(md->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
			owner = st.st_uid;
		snprintf(err, sizeof(err), "%s", errno == ELOOP ?
		    "a symbolic link" : strerror(errno));
		goto aside;
	}
	if (fstat(im->fd, &st) == -1) {
		snprintf(err, sizeof(err), "fstat: %s", strerror(errno));
		goto aside;
	}
	owner = st.st_uid;
	im->dropped = st.st_mtime;
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, sizeof(err), "not a regular file");
		goto aside;
	}
	if (st.st_nlink != 1) {
		snprintf(err, sizeof(err), "has %ju hard links",
		    (uintmax_t)st.st_nlink);
		goto aside;
	}
	if ((uint64_t)st.st_size > max_size + DROPFILE_HEADER_MAX +
	    DROPFILE_TRAILER_MAX) {
		snprintf(err, sizeof(err), "too large (%jd bytes)",
		    (intmax_t)st.st_size);
		goto aside;
	}
	headlen = (size_t)st.st_size < DROPFILE_HEADER_MAX ?
	    (size_t)st.st_size : DROPFILE_HEADER_MAX;
	head = xmalloc(headlen + 1);
	if (fileio_pread_all(im->fd, head, headlen, 0) == -1) {
		snprintf(err, sizeof(err), "read: %s", strerror(errno));
		goto aside;
	}
	if (dropfile_parse_header(head, headlen, &im->df, &im->hdrlen, err,
	    sizeof(err)) == -1)
		goto aside;
	if (im->df.uid != st.st_uid) {
		snprintf(err, sizeof(err), "claims uid %ju but is owned by "
		    "uid %ju", (uintmax_t)im->df.uid, (uintmax_t)st.st_uid);
		goto aside;
	}
	if (im->df.nrcpts > max_rcpts) {
		snprintf(err, sizeof(err), "%zu recipients, more than "
		    "max_recipients", im->df.nrcpts);
		goto aside;
	}
	taillen = (size_t)st.st_size - im->hdrlen < sizeof(tail) ?
	    (size_t)st.st_size - im->hdrlen : sizeof(tail);
	if (fileio_pread_all(im->fd, tail, taillen, st.st_size -
	    (off_t)taillen) == -1) {
		snprintf(err, sizeof(err), "read: %s", strerror(errno));
		goto aside;
	}
	if ((im->size = dropfile_check_trailer(tail, taillen, st.st_size,
	    im->hdrlen, err, sizeof(err))) == -1)
		goto aside;
	free(head);
	return im;

aside:
	move_aside(md, name, owner, err);
gone:
	free(head);
	import_free(im);
	return NULL;
}

/* ---- one import: the SMTP conversation ---- */

static void
import_send(struct import *im, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
import_send(struct import *im, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(im->bev);
	va_list ap;

	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

static struct md_job *job_new(struct maildrop *md, enum md_job_kind kind,
    const char *name);

/* The import ended: ok (imported, or returned: the file goes), permanent
 * (it is moved aside) or neither (it stays for the next scan). */
static void
import_end(struct import *im, int ok, int permanent)
{
	struct maildrop *md = im->md;
	struct md_job *job = NULL;
	char nb[128], why[2 * REPLY_MAX + 96];

	why[0] = '\0';
	if (ok && im->returning)
		log_info("maildrop: %s (owner uid=%ju): %s; returned to <%s>: "
		    "%s", pname(nb, sizeof(nb), im->name),
		    (uintmax_t)im->df.uid, im->why, im->to[im->next_to - 1],
		    im->reply);
	else if (ok)
		log_info("maildrop: %s: imported from uid=%ju: %s",
		    pname(nb, sizeof(nb), im->name), (uintmax_t)im->df.uid,
		    im->reply);
	else if (permanent && im->returning && im->nto == 0)
		snprintf(why, sizeof(why), "%s; cannot be returned: uid %ju "
		    "has no passwd entry", im->why, (uintmax_t)im->df.uid);
	else if (permanent && im->returning)
		snprintf(why, sizeof(why), "%s; cannot be returned: refused "
		    "at %s: %s", im->why, import_state_names[im->state],
		    im->reply);
	else if (permanent)
		snprintf(why, sizeof(why), "refused at %s: %s",
		    import_state_names[im->state], im->reply);
	else
		log_warnx("maildrop: %s: deferred at %s: %s",
		    pname(nb, sizeof(nb), im->name),
		    import_state_names[im->state],
		    im->reply[0] != '\0' ? im->reply : "connection lost");
	if (ok || permanent) {
		job = job_new(md, JOB_END, im->name);
		job->aside = !ok;
		job->owner = im->df.uid;
		job->why = xstrdup(ok ? (im->returning ? "returned" :
		    "imported") : why);
	}
	md->cur = NULL;
	import_free(im);
	if (job != NULL)
		job_start(job);
	else
		maildrop_next(md);
}

/* Sends the message: BDAT with its exact length, then its bytes. */
static int
import_send_message(struct import *im)
{
	struct evbuffer *out = bufferevent_get_output(im->bev);
	int fd;

	import_send(im, "BDAT %jd LAST", (intmax_t)im->size);
	if (im->size == 0)
		return 0;
	if ((fd = dup(im->fd)) == -1)
		return -1;
	/* evbuffer_add_file owns fd from here and closes it once sent. */
	return evbuffer_add_file(out, fd, (ev_off_t)im->hdrlen,
	    (ev_off_t)im->size);
}

static int import_start(struct import *im, uid_t uid);

/* ---- returning a refused message ---- */

/*
 * Where the notification may go: the submitter's local name (user, NULL
 * when the uid has no passwd entry), then the address sender rewriting
 * makes of it, when that is not local.
 */
static void
return_addresses(struct import *im, const char *user)
{
	char *mapped;

	if (user == NULL)
		return;
	im->to[im->nto++] = xstrdup(user);
	mapped = im->md->local != NULL ? localaddr_sender(im->md->local,
	    user) : NULL;
	if (mapped != NULL && !localaddr_is_local(im->md->local, mapped))
		im->to[im->nto++] = mapped;
	else
		free(mapped);
}

/* The enhanced status code of an SMTP reply line, "5.0.0" without one. */
static void
reply_status(const char *reply, char *status, size_t size)
{
	struct smtp_reply_parser p;

	smtp_reply_parser_init(&p);
	if (smtp_reply_feed(&p, reply, strlen(reply)) == SMTP_REPLY_DONE &&
	    p.reply.enhanced[0] != '\0')
		snprintf(status, size, "%s", p.reply.enhanced);
	else
		snprintf(status, size, "5.0.0");
}

/*
 * Composes the notification for the refused message into im->notice: to
 * im->to[im->next_to - 1], one entry per recipient, with the original
 * header section (im->head, read by the JOB_RETURN job).
 */
static void
return_compose(struct import *im)
{
	struct maildrop *md = im->md;
	struct envelope *orig;
	struct dsn_rcpt *dr;
	char (*status)[16], id[ENVELOPE_ID_MAX];
	size_t i;

	orig = envelope_new();
	free(orig->sender);
	/* The To: of the notification: a local name gets our host name. */
	orig->sender = strchr(im->to[im->next_to - 1], '@') != NULL ?
	    xstrdup(im->to[im->next_to - 1]) : xasprintf("%s@%s",
	    im->to[im->next_to - 1], md->hostname);
	snprintf(orig->id, sizeof(orig->id), "maildrop");
	orig->created = im->dropped;
	dr = xcalloc(im->df.nrcpts, sizeof(*dr));
	status = xcalloc(im->df.nrcpts, sizeof(*status));
	for (i = 0; i < im->df.nrcpts; i++) {
		const char *r = im->refused_all != NULL ? im->refused_all :
		    im->refused[i];

		dr[i].addr = im->df.rcpts[i];
		dr[i].action = DSN_ACTION_FAILED;
		dr[i].diagnostic = r;
		if (r != NULL)
			reply_status(r, status[i], sizeof(status[i]));
		else {
			snprintf(status[i], sizeof(status[i]), "5.0.0");
			dr[i].reason = "not sent: a message goes to all of "
			    "its recipients or to none, and another one was "
			    "refused";
		}
		dr[i].status = status[i];
	}
	snprintf(id, sizeof(id), "md%jx.%u", (uintmax_t)time(NULL),
	    __atomic_add_fetch(&md->aside_seq, 1, __ATOMIC_RELAXED));
	free(im->notice);
	im->notice = dsn_compose(orig, dr, im->df.nrcpts, im->head,
	    im->headlen, md->hostname, id, time(NULL), &im->noticelen);
	free(status);
	free(dr);
	envelope_free(orig);
}

/*
 * Ends the session that refused the message and looks up where to return
 * it (JOB_RETURN); return_looked_up() goes on. Returns -1: this session
 * is over.
 */
static int
import_return(struct import *im)
{
	struct md_job *job;
	char nb[128];

	log_info("maildrop: %s (owner uid=%ju): %s; returning it",
	    pname(nb, sizeof(nb), im->name), (uintmax_t)im->df.uid, im->why);
	bufferevent_free(im->bev);
	im->bev = NULL;
	im->returning = 1;
	job = job_new(im->md, JOB_RETURN, NULL);
	job->ret = im;
	job_start(job);
	return -1;
}

/* Worker pool: the owner's user name and the message's header section,
 * for the notification. */
static void
return_lookup(struct md_job *job)
{
	struct import *im = job->ret;
	struct passwd pw, *found = NULL;
	char *buf = NULL;
	size_t buflen = 1024, n;
	int error;

	do {
		buflen *= 2;
		buf = xreallocarray(buf, buflen, 1);
		error = getpwuid_r(im->df.uid, &pw, buf, buflen, &found);
	} while (error == ERANGE && buflen < 1024 * 1024);
	if (error != 0) {
		job->error = error;
		snprintf(im->reply, sizeof(im->reply), "cannot look up uid "
		    "%ju: %s", (uintmax_t)im->df.uid, strerror(error));
		free(buf);
		return;
	}
	if (found != NULL)
		job->pw_name = xstrdup(pw.pw_name);
	free(buf);
	n = (size_t)im->size < DSN_HEADERS_MAX ? (size_t)im->size :
	    DSN_HEADERS_MAX;
	im->head = xmalloc(n + 1);
	if (fileio_pread_all(im->fd, im->head, n, (off_t)im->hdrlen) == -1) {
		job->error = errno;
		snprintf(im->reply, sizeof(im->reply), "cannot read the "
		    "message: %s", strerror(errno));
		return;
	}
	im->headlen = dsn_header_length(im->head, n);
}

/* Loop: starts the session that returns the message, as the daemon's own
 * user, or ends the import. */
static void
return_looked_up(struct import *im, const struct md_job *job)
{
	struct maildrop *md = im->md;

	if (job->error != 0) {
		import_end(im, 0, 0);
		return;
	}
	return_addresses(im, job->pw_name);
	if (im->nto == 0) {
		import_end(im, 0, 1);
		return;
	}
	if (import_start(im, getuid()) == -1)
		maildrop_next(md); /* the file stays for the next scan */
}

/*
 * The session refused the message for good at im->state: remembers why;
 * once every recipient had its say, returns the message. Returns 0 to go
 * on, or -1 when this session is over (the import ended and im is freed,
 * or a job looks up where to return it).
 */
static int
import_refused(struct import *im)
{
	if (im->why[0] == '\0')
		snprintf(im->why, sizeof(im->why), "refused at %s: %s",
		    import_state_names[im->state], im->reply);
	if (im->state != I_RCPT) {
		im->refused_all = xstrdup(im->reply);
		return import_return(im);
	}
	if (im->refused == NULL)
		im->refused = xcalloc(im->df.nrcpts, sizeof(*im->refused));
	im->refused[im->next_rcpt - 1] = xstrdup(im->reply);
	im->nrefused++;
	if (im->next_rcpt < im->df.nrcpts) {
		import_send(im, "RCPT TO:<%s>", im->df.rcpts[im->next_rcpt++]);
		return 0;
	}
	return import_return(im);
}

/* Sends the notification once its address was accepted. */
static int
return_send(struct import *im)
{
	return_compose(im);
	import_send(im, "BDAT %zu LAST", im->noticelen);
	evbuffer_add(bufferevent_get_output(im->bev), im->notice,
	    im->noticelen);
	im->state = I_BDAT;
	return 0;
}

/* ---- the import's replies ---- */

/* The next command after a 2xx reply in state im->state, of the import
 * or of the session returning the message. Returns 0, or -1 when this
 * session is over (as import_refused()). */
static int
import_next(struct import *im)
{
	switch (im->state) {
	case I_GREETING:
		import_send(im, "EHLO localhost");
		im->state = I_EHLO;
		break;
	case I_EHLO:
		if (im->returning)
			import_send(im, "MAIL FROM:<> BODY=8BITMIME");
		else
			import_send(im, "MAIL FROM:<%s> BODY=8BITMIME%s",
			    im->df.sender, im->df.utf8 ? " SMTPUTF8" : "");
		im->state = I_MAIL;
		break;
	case I_MAIL:
	case I_RCPT:
		if (im->returning && im->state == I_MAIL) {
			import_send(im, "RCPT TO:<%s>",
			    im->to[im->next_to++]);
			im->state = I_RCPT;
			break;
		}
		if (im->returning)
			return return_send(im);
		if (im->next_rcpt < im->df.nrcpts) {
			import_send(im, "RCPT TO:<%s>",
			    im->df.rcpts[im->next_rcpt++]);
			im->state = I_RCPT;
			break;
		}
		if (im->nrefused > 0)
			return import_return(im);
		if (import_send_message(im) == -1) {
			snprintf(im->reply, sizeof(im->reply), "cannot send "
			    "the message: %s", strerror(errno));
			import_end(im, 0, 0);
			return -1;
		}
		im->state = I_BDAT;
		break;
	case I_BDAT:
		import_end(im, 1, 0);
		return -1;
	}
	return 0;
}

/* Acts on a complete reply with code; returns 0 to go on, or -1 when
 * this session is over (as import_refused()). */
static int
import_reply(struct import *im, int code)
{
	int klass = code / 100;
	char nb[128];

	log_debug("maildrop: %s: %s%s: %s", pname(nb, sizeof(nb), im->name),
	    im->returning ? "returning, " : "", import_state_names[im->state],
	    im->reply);
	if (klass == 2)
		return import_next(im);
	/* A refusal of the session itself is not about the message. */
	if (klass != 5 || im->state == I_GREETING || im->state == I_EHLO) {
		import_end(im, 0, klass == 5);
		return -1;
	}
	if (!im->returning)
		return import_refused(im);
	/* Returning: the next address may take it. */
	if (im->state == I_RCPT && im->next_to < im->nto) {
		import_send(im, "RCPT TO:<%s>", im->to[im->next_to++]);
		return 0;
	}
	import_end(im, 0, 1);
	return -1;
}

static void
import_read_cb(struct bufferevent *bev, void *arg)
{
	struct import *im = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char *line;
	size_t len;

	while ((line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF)) !=
	    NULL) {
		int last = len < 4 || line[3] != '-';
		int code = len >= 3 ? atoi(line) : 0;

		if (!im->have_first) {
			snprintf(im->reply, sizeof(im->reply), "%s", line);
			im->have_first = 1;
		}
		free(line);
		if (!last)
			continue;
		im->have_first = 0;
		if (code < 200 || code > 599)
			code = 451;
		if (import_reply(im, code) == -1)
			return; /* this session is over */
	}
}

static void
import_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct import *im = arg;

	if (what & BEV_EVENT_TIMEOUT)
		snprintf(im->reply, sizeof(im->reply), "timed out");
	else
		snprintf(im->reply, sizeof(im->reply), "session closed");
	import_end(im, 0, 0);
}

/* Starts a conversation as uid; returns -1 (the import ended, im freed)
 * if it cannot. */
static int
import_start(struct import *im, uid_t uid)
{
	struct maildrop *md = im->md;
	struct timeval tv = { IMPORT_TIMEOUT, 0 };
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
	    sv) == -1) {
		log_warn("maildrop: socketpair");
		if (md->cur == im)
			md->cur = NULL;
		import_free(im);
		return -1;
	}
	if ((im->bev = bufferevent_socket_new(md->base, sv[0],
	    BEV_OPT_CLOSE_ON_FREE)) == NULL)
		fatalx("maildrop: cannot set up an import");
	bufferevent_setcb(im->bev, import_read_cb, NULL, import_event_cb, im);
	bufferevent_set_timeouts(im->bev, &tv, NULL);
	bufferevent_enable(im->bev, EV_READ | EV_WRITE);
	im->state = I_GREETING;
	md->cur = im;
	smtp_server_accept_local(md->srv, sv[1], "maildrop", uid);
	return 0;
}

/* ---- scanning ---- */

static void
names_clear(struct maildrop *md)
{
	size_t i;

	for (i = 0; i < md->nnames; i++)
		free(md->names[i]);
	free(md->names);
	md->names = NULL;
	md->nnames = md->next = 0;
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Worker pool. A postdrop temporary file that outlived any postdrop run
 * is moved aside. */
static void
stale_tmp(struct maildrop *md, const char *name)
{
	struct stat st;

	if (strncmp(name, ".tmp.", 5) != 0 ||
	    fstatat(md->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == -1 ||
	    st.st_mtime > time(NULL) - STALE_TMP)
		return;
	move_aside(md, name, st.st_uid, "stale temporary file");
}

/* Worker pool. Lists the directory into job->names, sorted. */
static void
scan(struct md_job *job)
{
	struct maildrop *md = job->md;
	struct dirent *de;
	DIR *dir;
	int fd;
	size_t cap = 0;

	if ((fd = openat(md->dirfd, ".", O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) == -1 || (dir = fdopendir(fd)) == NULL) {
		log_warn("maildrop: cannot list %s", md->dir);
		if (fd != -1)
			close(fd);
		return;
	}
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.') {
			stale_tmp(md, de->d_name);
			continue;
		}
		if (job->nnames == cap) {
			cap = cap == 0 ? 16 : cap * 2;
			job->names = xreallocarray(job->names, cap,
			    sizeof(*job->names));
		}
		job->names[job->nnames++] = xstrdup(de->d_name);
	}
	closedir(dir);
	if (job->nnames > 1) /* names is NULL for an empty directory */
		qsort(job->names, job->nnames, sizeof(*job->names), name_cmp);
}

/* ---- the blocking steps ---- */

static struct md_job *
job_new(struct maildrop *md, enum md_job_kind kind, const char *name)
{
	struct md_job *job;

	job = xcalloc(1, sizeof(*job));
	job->md = md;
	job->kind = kind;
	job->name = name != NULL ? xstrdup(name) : NULL;
	return job;
}

static void
job_free(struct md_job *job)
{
	size_t i;

	for (i = 0; i < job->nnames; i++)
		free(job->names[i]);
	free(job->names);
	import_free(job->im);
	free(job->pw_name);
	free(job->why);
	free(job->name);
	free(job);
}

static void
job_work(void *arg)
{
	struct md_job *job = arg;
	struct maildrop *md = job->md;
	char nb[128];

	switch (job->kind) {
	case JOB_SCAN:
		scan(job);
		break;
	case JOB_OPEN:
		job->im = import_open(md, job->name, job->max_size,
		    job->max_rcpts);
		break;
	case JOB_END:
		if (job->aside)
			move_aside(md, job->name, job->owner, job->why);
		else if (unlinkat(md->dirfd, job->name, 0) == -1)
			log_warn("maildrop: %s: %s but cannot remove it (it "
			    "will be imported again)",
			    pname(nb, sizeof(nb), job->name), job->why);
		break;
	case JOB_RETURN:
		return_lookup(job);
		break;
	}
}

static void maildrop_destroy(struct maildrop *md);

static void
job_done(void *arg)
{
	struct md_job *job = arg;
	struct maildrop *md = job->md;
	struct import *im;

	md->job = NULL;
	if (md->dying) {
		job_free(job);
		maildrop_destroy(md);
		return;
	}
	switch (job->kind) {
	case JOB_SCAN:
		names_clear(md);
		md->names = job->names;
		md->nnames = job->nnames;
		job->names = NULL;
		job->nnames = 0;
		if (md->nnames > 0)
			log_debug("maildrop: %zu file%s to import",
			    md->nnames, md->nnames == 1 ? "" : "s");
		break;
	case JOB_OPEN:
		im = job->im;
		job->im = NULL;
		if (im != NULL && md->stopped)
			import_free(im);
		else if (im != NULL)
			(void)import_start(im, im->df.uid);
		break;
	case JOB_END:
		break;
	case JOB_RETURN:
		/* The import goes on from here, or ends. */
		return_looked_up(job->ret, job);
		job_free(job);
		return;
	}
	job_free(job);
	maildrop_next(md);
}

static void
job_start(struct md_job *job)
{
	struct maildrop *md = job->md;

	if (md->job != NULL)
		fatalx("maildrop: two blocking steps at once");
	md->job = job;
	worker_run(md->w, job_work, job_done, job);
}

/* Starts the next step unless one is under way: the next file of the
 * list, or a scan when the list is done and the directory changed. */
static void
maildrop_next(struct maildrop *md)
{
	struct md_job *job;

	if (md->stopped || md->cur != NULL || md->job != NULL)
		return;
	if (md->next < md->nnames) {
		job = job_new(md, JOB_OPEN, md->names[md->next++]);
		job->max_size = md->max_message_size;
		job->max_rcpts = md->max_recipients;
		job_start(job);
	} else if (md->dirty) {
		md->dirty = 0;
		job_start(job_new(md, JOB_SCAN, NULL));
	}
}

/* Something changed, or the timer fired: scan now or after the import. */
static void
maildrop_kick(struct maildrop *md)
{
	md->dirty = 1;
	maildrop_next(md);
}

static void
rescan_cb(evutil_socket_t fd, short what, void *arg)
{
	struct maildrop *md = arg;
	struct timeval tv = { MAILDROP_RESCAN, 0 };

	if (md->stopped)
		return;
	evtimer_add(md->rescan_ev, &tv);
	maildrop_kick(md);
}

static void
inotify_cb(evutil_socket_t fd, short what, void *arg)
{
	struct maildrop *md = arg;
	char buf[4096] __attribute__((aligned(__alignof__(struct
	    inotify_event))));
	ssize_t n;
	int i;

	/* The events only say "look again"; drain them (bounded). */
	for (i = 0; i < 64; i++) {
		n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
	}
	maildrop_kick(md);
}

/* ---- the public interface ---- */

struct maildrop *
maildrop_open(struct event_base *base, struct worker *w,
    const struct config *cfg, struct smtp_server *srv, char *err,
    size_t errlen)
{
	struct maildrop *md;
	struct timeval now = { 0, 0 };
	char *corrupt;

	md = xcalloc(1, sizeof(*md));
	md->base = base;
	md->w = w;
	md->srv = srv;
	md->dir = xstrdup(cfg->maildrop);
	md->inotify_fd = -1;
	md->corruptfd = -1;
	maildrop_set_config(md, cfg);
	if ((md->dirfd = open(md->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) ==
	    -1) {
		snprintf(err, errlen, "maildrop %s: %s", md->dir,
		    strerror(errno));
		goto fail;
	}
	corrupt = xasprintf("%s/corrupt", cfg->spool);
	md->corruptfd = open(corrupt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (md->corruptfd == -1)
		snprintf(err, errlen, "%s: %s", corrupt, strerror(errno));
	free(corrupt);
	if (md->corruptfd == -1)
		goto fail;

	/* Without inotify (no more instances) the rescan still finds
	 * everything, later. */
	md->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (md->inotify_fd == -1 || inotify_add_watch(md->inotify_fd,
	    md->dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_ONLYDIR) == -1) {
		log_warn("maildrop: cannot watch %s; rescanning every %d s",
		    md->dir, MAILDROP_RESCAN);
		if (md->inotify_fd != -1)
			close(md->inotify_fd);
		md->inotify_fd = -1;
	} else {
		md->inotify_ev = event_new(base, md->inotify_fd,
		    EV_READ | EV_PERSIST, inotify_cb, md);
		if (md->inotify_ev == NULL || event_add(md->inotify_ev,
		    NULL) == -1)
			fatalx("maildrop: cannot watch inotify");
	}
	if ((md->rescan_ev = evtimer_new(base, rescan_cb, md)) == NULL)
		fatalx("maildrop: evtimer_new");
	evtimer_add(md->rescan_ev, &now);
	return md;

fail:
	maildrop_free(md);
	return NULL;
}

void
maildrop_set_config(struct maildrop *md, const struct config *cfg)
{
	md->max_message_size = cfg->max_message_size;
	md->max_recipients = cfg->max_recipients;
	md->local = cfg->local;
	free(md->hostname);
	md->hostname = xstrdup(cfg->hostname);
}

void
maildrop_stop(struct maildrop *md)
{
	if (md == NULL)
		return;
	md->stopped = 1;
	if (md->inotify_ev != NULL)
		event_del(md->inotify_ev);
	if (md->rescan_ev != NULL)
		event_del(md->rescan_ev);
}

void
maildrop_free(struct maildrop *md)
{
	if (md == NULL)
		return;
	if (md->job != NULL) {
		/* The job uses md's descriptors: its done() frees md. */
		maildrop_stop(md);
		md->dying = 1;
		return;
	}
	maildrop_destroy(md);
}

static void
maildrop_destroy(struct maildrop *md)
{
	import_free(md->cur);
	names_clear(md);
	if (md->inotify_ev != NULL)
		event_free(md->inotify_ev);
	if (md->rescan_ev != NULL)
		event_free(md->rescan_ev);
	if (md->inotify_fd != -1)
		close(md->inotify_fd);
	if (md->dirfd != -1)
		close(md->dirfd);
	if (md->corruptfd != -1)
		close(md->corruptfd);
	free(md->hostname);
	free(md->dir);
	free(md);
}
