/*
 * The control socket: the daemon's side (a listener and one bufferevent per
 * client, all on the loop thread) and the blocking client that smarthostctl
 * uses. control.h describes the protocol.
 *
 * Invariants: a client is on c->clients from accept until client_free. A
 * client marked closing reads nothing more; it is freed as soon as its
 * output is written, or on a write error or timeout. Every command but
 * queue answers at once from what is in memory, so its response is
 * complete when it is queued; queue streams its listing a page at a time
 * (envelopes read on the worker pool), and the next request on the
 * connection is read only after the response's end. A client that leaves
 * its responses unread stops being read, and gets no next page, once
 * CONTROL_OUTPUT_PAUSE bytes are waiting, so no client can make the daemon
 * buffer much more than that on its behalf, whatever the queue's size.
 */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/queue.h>
#include <sys/un.h>

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "control.h"
#include "escape.h"
#include "envelope.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "strbuf.h"
#include "xmalloc.h"

/* Stop reading requests while this much output waits for the client. */
#define CONTROL_OUTPUT_PAUSE (1024 * 1024)
/* Longest response line the client accepts: a JSON line holds a whole
 * message's envelope. */
#define CONTROL_REPLY_LINE_MAX (4 * 1024 * 1024)
/* Message lines longer than this are shown as several lines. */
#define CONTROL_BODY_LINE_MAX (64 * 1024)
/* Messages per page of a queue listing. */
#define CONTROL_LIST_PAGE 256
/* Most message ids one request may name. */
#define CONTROL_IDS_MAX 64
/* Longest piece of a bad request echoed back in an error. */
#define CONTROL_ECHO_MAX 64

struct control_client {
	TAILQ_ENTRY(control_client) entry;
	struct control *c;
	struct bufferevent *bev;
	unsigned long uid;
	enum control_access access;
	int closing;  /* answer written, then free */
	int paused;   /* reading stopped until the output drains */
	/* A queue listing being sent, a page at a time: no request is read
	 * meanwhile. list_wait: the next page waits for the output to
	 * drain. */
	struct scheduler_list *list;
	struct queue_filter *filter;
	int list_wait;
	struct show_job *show;    /* a show being read */
};

struct control {
	struct event_base *base;
	struct evconnlistener *listener;
	struct event *ev_resume;  /* re-enables accept after an error */
	char *path;
	dev_t dev;                /* of the socket file we created */
	ino_t ino;
	struct scheduler *sched;
	struct smtp_server *server;
	struct queue *queue;
	struct worker *worker;
	int (*reload)(void *, char *, size_t);
	void *reload_arg;
	uid_t uid;
	gid_t admin_gid;
	gid_t read_gid;
	time_t started;
	TAILQ_HEAD(, control_client) clients;
	unsigned nclients;
};

/* ---- building responses ---- */

/*
 * One data line: formatted, control characters (a reply text may carry
 * anything an upstream sent) replaced with '?', dot-stuffed, LF added.
 */
static void reply_line(struct evbuffer *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

static void
reply_line(struct evbuffer *out, const char *fmt, ...)
{
	struct strbuf line = STRBUF_INIT;
	va_list ap;
	char *safe;
	size_t len;

	va_start(ap, fmt);
	strbuf_vaddf(&line, fmt, ap);
	va_end(ap);
	/* Addresses and upstream replies reach the line: one line each,
	 * and nothing a terminal acts on. */
	safe = xmalloc(4 * line.len + 1);
	len = escape_printable(safe, 4 * line.len + 1, line.p, line.len);
	strbuf_free(&line);
	if (safe[0] == '.')
		evbuffer_add(out, ".", 1);
	evbuffer_add(out, safe, len);
	evbuffer_add(out, "\n", 1);
	free(safe);
}

/* A piece of a request, safe to put in an error message. */
static void
echo_copy(char *buf, size_t len, const char *s)
{
	size_t i;

	for (i = 0; i + 1 < len && i < CONTROL_ECHO_MAX && s[i] != '\0'; i++)
		buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' :
		    s[i];
	buf[i] = '\0';
}

static const char *
iso_time(time_t t, char *buf, size_t len)
{
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL ||
	    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, len, "%lld", (long long)t);
	return buf;
}

/* ---- commands ---- */

/*
 * A command appends data lines to out and returns 0, or returns -1 with
 * the message of the error response in err (data lines it added are sent
 * after the error line), or CMD_STREAMING: "ok" and out go now, and the
 * command sends the rest of its data lines and the final "." itself,
 * later (no request is read meanwhile; the command starts reading again
 * when it is done). argv holds the request's
 * arguments, argc of them.
 */
#define CMD_STREAMING 1
/* Or CMD_LATER: the command writes its whole response itself, later. */
#define CMD_LATER 2
typedef int control_cmd_fn(struct control_client *cl, int argc,
    char **argv, struct evbuffer *out, char *err, size_t errlen);

/* Takes "json" out of argv; 1 when it was there. */
static int
take_json(int *argc, char **argv)
{
	int i, found = 0, n = 0;

	for (i = 0; i < *argc; i++) {
		if (strcmp(argv[i], "json") == 0)
			found = 1;
		else
			argv[n++] = argv[i];
	}
	*argc = n;
	return found;
}

/* Appends the JSON object of a buffer as one data line. */
static void
json_line(struct evbuffer *out, struct evbuffer *obj)
{
	evbuffer_add(obj, "", 1);
	reply_line(out, "%s", (const char *)evbuffer_pullup(obj, -1));
	evbuffer_free(obj);
}

static struct evbuffer *
json_new(void)
{
	struct evbuffer *b;

	if ((b = evbuffer_new()) == NULL)
		fatalx("%s: evbuffer_new", __func__);
	return b;
}

static void
status_auth_each(const char *host, const char *port, void *arg)
{
	struct evbuffer *out = arg;
	int v6 = strchr(host, ':') != NULL;

	if (port == NULL || port[0] == '\0')
		reply_line(out, "auth-required: %s", host);
	else
		reply_line(out, "auth-required: %s%s%s:%s", v6 ? "[" : "",
		    host, v6 ? "]" : "", port);
}

/* "relay: NAME STATE [since=T] [retry=T] [sessions=N]" */
static void
status_relay_each(const struct scheduler_relay_state *st, void *arg)
{
	struct evbuffer *out = arg;
	char since[64] = "", retry[64] = "", sessions[32] = "", t[48];

	if (st->down_since != 0)
		snprintf(since, sizeof(since), " since=%s",
		    iso_time(st->down_since, t, sizeof(t)));
	if (st->backoff_until > time(NULL))
		snprintf(retry, sizeof(retry), " retry=%s",
		    iso_time(st->backoff_until, t, sizeof(t)));
	if (st->sessions > 0)
		snprintf(sessions, sizeof(sessions), " sessions=%u",
		    st->sessions);
	reply_line(out, "relay: %s %s%s%s%s", st->name, st->state, since,
	    retry, sessions);
}

/* Counts since start, summed over the relays for status. */
struct status_counts {
	struct evbuffer *out;
	unsigned long sent, deferred, failed;
};

/* "relay-stats: NAME sent=N deferred=N failed=N [last-delivery=T]
 * [last-error=T TEXT]" */
static void
status_stats_each(const struct scheduler_relay_state *st, void *arg)
{
	struct status_counts *n = arg;
	struct evbuffer *out = n->out;
	char last[64] = "", t[48], t2[48];

	n->sent += st->sent;
	n->deferred += st->deferred;
	n->failed += st->failed;
	if (st->last_delivery != 0)
		snprintf(last, sizeof(last), " last-delivery=%s",
		    iso_time(st->last_delivery, t, sizeof(t)));
	reply_line(out, "relay-stats: %s sent=%lu deferred=%lu failed=%lu%s%s"
	    "%s%s%s", st->name, st->sent, st->deferred, st->failed, last,
	    st->last_error != NULL ? " last-error=" : "",
	    st->last_error != NULL ? iso_time(st->last_error_at, t2,
	    sizeof(t2)) : "", st->last_error != NULL ? " " : "",
	    st->last_error != NULL ? st->last_error : "");
}

struct json_list {
	struct evbuffer *b;
	int n;
};

static void
status_relay_json(const struct scheduler_relay_state *st, void *arg)
{
	struct json_list *l = arg;

	if (l->n++ > 0)
		evbuffer_add(l->b, ",", 1);
	evbuffer_add(l->b, "{", 1);
	json_key(l->b, 1, "name");
	json_str(l->b, st->name);
	json_key(l->b, 0, "state");
	json_str(l->b, st->state);
	json_key(l->b, 0, "down_since");
	json_time(l->b, st->down_since);
	json_key(l->b, 0, "backoff_until");
	json_time(l->b, st->backoff_until > time(NULL) ? st->backoff_until :
	    0);
	json_key(l->b, 0, "sessions");
	evbuffer_add_printf(l->b, "%u", st->sessions);
	json_key(l->b, 0, "sent");
	evbuffer_add_printf(l->b, "%lu", st->sent);
	json_key(l->b, 0, "deferred");
	evbuffer_add_printf(l->b, "%lu", st->deferred);
	json_key(l->b, 0, "failed");
	evbuffer_add_printf(l->b, "%lu", st->failed);
	json_key(l->b, 0, "last_delivery");
	json_time(l->b, st->last_delivery);
	json_key(l->b, 0, "last_error");
	json_str(l->b, st->last_error);
	json_key(l->b, 0, "last_error_at");
	json_time(l->b, st->last_error_at);
	evbuffer_add(l->b, "}", 1);
}

static void
status_auth_json(const char *host, const char *port, void *arg)
{
	struct json_list *l = arg;

	if (l->n++ > 0)
		evbuffer_add(l->b, ",", 1);
	evbuffer_add(l->b, "{", 1);
	json_key(l->b, 1, "host");
	json_str(l->b, host);
	json_key(l->b, 0, "port");
	json_str(l->b, port != NULL && port[0] != '\0' ? port : NULL);
	evbuffer_add(l->b, "}", 1);
}

static void
status_json(struct control *c, struct evbuffer *out)
{
	struct json_list l = { json_new(), 0 };
	time_t now = time(NULL);

	evbuffer_add(l.b, "{", 1);
	json_key(l.b, 1, "pid");
	evbuffer_add_printf(l.b, "%ld", (long)getpid());
	json_key(l.b, 0, "started");
	json_time(l.b, c->started);
	json_key(l.b, 0, "uptime");
	evbuffer_add_printf(l.b, "%lld", (long long)(now > c->started ?
	    now - c->started : 0));
	json_key(l.b, 0, "queued");
	evbuffer_add_printf(l.b, "%zu", scheduler_count(c->sched));
	json_key(l.b, 0, "sessions");
	evbuffer_add_printf(l.b, "%u", c->server != NULL ?
	    smtp_server_sessions(c->server) : 0);
	json_key(l.b, 0, "relays");
	evbuffer_add(l.b, "[", 1);
	scheduler_relays(c->sched, status_relay_json, &l);
	evbuffer_add(l.b, "]", 1);
	json_key(l.b, 0, "auth_required");
	evbuffer_add(l.b, "[", 1);
	l.n = 0;
	scheduler_auth_required_list(c->sched, status_auth_json, &l);
	evbuffer_add(l.b, "]}", 2);
	json_line(out, l.b);
}

static int
cmd_status(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	struct control *c = cl->c;
	struct status_counts n = { out, 0, 0, 0 };
	time_t now = time(NULL);
	char buf[64];

	if (take_json(&argc, argv) && argc == 0) {
		status_json(c, out);
		return 0;
	}
	if (argc != 0) {
		snprintf(err, errlen, "usage: status [json]");
		return -1;
	}
	reply_line(out, "pid: %ld", (long)getpid());
	reply_line(out, "started: %s", iso_time(c->started, buf,
	    sizeof(buf)));
	reply_line(out, "uptime: %lld", (long long)(now > c->started ?
	    now - c->started : 0));
	reply_line(out, "queued: %zu", scheduler_count(c->sched));
	reply_line(out, "sessions: %u", c->server != NULL ?
	    smtp_server_sessions(c->server) : 0);
	scheduler_relays(c->sched, status_relay_each, out);
	scheduler_relays(c->sched, status_stats_each, &n);
	reply_line(out, "sent: %lu", n.sent);
	reply_line(out, "deferred: %lu", n.deferred);
	reply_line(out, "failed: %lu", n.failed);
	scheduler_auth_required_list(c->sched, status_auth_each, out);
	return 0;
}

static const char *const rcpt_status_names[] = {
	[RCPT_PENDING] = "pending",
	[RCPT_SENT] = "sent",
	[RCPT_FAILED] = "failed",
};
_Static_assert(sizeof(rcpt_status_names) / sizeof(*rcpt_status_names) ==
    RCPT_FAILED + 1, "rcpt_status_names out of date");

static const char *
rcpt_status_name(enum rcpt_status st)
{
	return (size_t)st < sizeof(rcpt_status_names) /
	    sizeof(*rcpt_status_names) ? rcpt_status_names[st] : "unknown";
}

/* The queue listing's filters ("queue" arguments); the strings are its
 * own. */
struct queue_filter {
	struct control *c;
	struct evbuffer *out;
	int json;
	int held;              /* only held messages */
	int deferred;          /* only messages tried at least once, not held */
	char *from;            /* sender contains, case-insensitive */
	char *to;              /* some recipient contains */
	char *relay;           /* the relay it goes to now */
	long long older_than;  /* seconds; -1: any age */
	size_t shown;
};

static void
queue_filter_free(struct queue_filter *f)
{
	if (f == NULL)
		return;
	free(f->from);
	free(f->to);
	free(f->relay);
	free(f);
}

static int
queue_filter_parse(struct queue_filter *f, int argc, char **argv,
    char *err, size_t errlen)
{
	char *end;
	int i;

	f->older_than = -1;
	for (i = 0; i < argc; i++) {
		if (strcmp(argv[i], "held") == 0)
			f->held = 1;
		else if (strcmp(argv[i], "deferred") == 0)
			f->deferred = 1;
		else if (strncmp(argv[i], "from=", 5) == 0) {
			free(f->from);
			f->from = xstrdup(argv[i] + 5);
		} else if (strncmp(argv[i], "to=", 3) == 0) {
			free(f->to);
			f->to = xstrdup(argv[i] + 3);
		} else if (strncmp(argv[i], "relay=", 6) == 0) {
			free(f->relay);
			f->relay = xstrdup(argv[i] + 6);
		}
		else if (strncmp(argv[i], "older-than=", 11) == 0) {
			errno = 0;
			f->older_than = strtoll(argv[i] + 11, &end, 10);
			if (errno != 0 || end == argv[i] + 11 || *end != '\0' ||
			    f->older_than < 0) {
				snprintf(err, errlen, "older-than takes "
				    "seconds");
				return -1;
			}
		} else {
			char echo[CONTROL_ECHO_MAX + 1];

			echo_copy(echo, sizeof(echo), argv[i]);
			snprintf(err, errlen, "unknown queue filter \"%s\"",
			    echo);
			return -1;
		}
	}
	return 0;
}

static int
queue_filter_match(const struct queue_filter *f, const struct envelope *env)
{
	const char *relay;
	size_t i;

	if (f->held && !(env->flags & ENVELOPE_HOLD))
		return 0;
	if (f->deferred && ((env->flags & ENVELOPE_HOLD) ||
	    env->attempts == 0))
		return 0;
	if (f->from != NULL && strcasestr(env->sender, f->from) == NULL)
		return 0;
	if (f->older_than >= 0 &&
	    time(NULL) - env->created < (time_t)f->older_than)
		return 0;
	if (f->relay != NULL && ((relay = scheduler_relay_of(f->c->sched,
	    env)) == NULL || strcmp(relay, f->relay) != 0))
		return 0;
	if (f->to == NULL)
		return 1;
	for (i = 0; i < env->nrcpts; i++)
		if (strcasestr(env->rcpts[i].addr, f->to) != NULL)
			return 1;
	return 0;
}

/* One message as a JSON object: the queue listing's and show's. */
static void
envelope_json(struct control *c, struct evbuffer *b,
    const struct envelope *env)
{
	size_t i;

	evbuffer_add(b, "{", 1);
	json_key(b, 1, "id");
	json_str(b, env->id);
	json_key(b, 0, "sender");
	json_str(b, env->sender);
	json_key(b, 0, "size");
	evbuffer_add_printf(b, "%lld", (long long)env->body_size);
	json_key(b, 0, "arrival");
	json_time(b, env->created);
	json_key(b, 0, "attempts");
	evbuffer_add_printf(b, "%u", env->attempts);
	json_key(b, 0, "next_try");
	json_time(b, (env->flags & ENVELOPE_HOLD) ? 0 : env->next_try == 0 ?
	    time(NULL) : env->next_try);
	json_key(b, 0, "held");
	evbuffer_add_printf(b, "%s", (env->flags & ENVELOPE_HOLD) ? "true" :
	    "false");
	json_key(b, 0, "relay");
	json_str(b, scheduler_relay_of(c->sched, env));
	json_key(b, 0, "pinned_relay");
	json_str(b, env->relay);
	json_key(b, 0, "client");
	json_str(b, env->client);
	json_key(b, 0, "uid");
	if (env->uid_known)
		evbuffer_add_printf(b, "%lu", (unsigned long)env->uid);
	else
		evbuffer_add(b, "null", 4);
	json_key(b, 0, "recipients");
	evbuffer_add(b, "[", 1);
	for (i = 0; i < env->nrcpts; i++) {
		const struct envelope_rcpt *r = &env->rcpts[i];

		evbuffer_add(b, i > 0 ? ",{" : "{", i > 0 ? 2 : 1);
		json_key(b, 1, "address");
		json_str(b, r->addr);
		json_key(b, 0, "status");
		json_str(b, rcpt_status_name(r->status));
		json_key(b, 0, "dsn");
		json_str(b, r->dsn[0] != '\0' ? r->dsn : NULL);
		json_key(b, 0, "reply");
		json_str(b, r->reply);
		evbuffer_add(b, "}", 1);
	}
	evbuffer_add(b, "]}", 2);
}

static void
queue_text(const struct envelope *env, struct evbuffer *out)
{
	char created[32], next[32];
	size_t i;

	if (env->next_try == 0 || env->next_try <= time(NULL))
		snprintf(next, sizeof(next), "now");
	else
		iso_time(env->next_try, next, sizeof(next));
	reply_line(out, "%s size=%lld from=<%s> arrival=%s attempts=%u "
	    "next_try=%s%s%s%s", env->id, (long long)env->body_size,
	    env->sender, iso_time(env->created, created, sizeof(created)),
	    env->attempts, next, env->relay != NULL ? " relay=" : "",
	    env->relay != NULL ? env->relay : "",
	    (env->flags & ENVELOPE_HOLD) ? " held" : "");
	for (i = 0; i < env->nrcpts; i++) {
		const struct envelope_rcpt *r = &env->rcpts[i];

		reply_line(out, "  to=<%s> status=%s%s%s%s%s%s", r->addr,
		    rcpt_status_name(r->status),
		    r->dsn[0] != '\0' ? " dsn=" : "", r->dsn,
		    r->reply != NULL ? " (" : "",
		    r->reply != NULL ? r->reply : "",
		    r->reply != NULL ? ")" : "");
	}
}

static void
queue_each(const struct envelope *env, void *arg)
{
	struct control_client *cl = arg;
	struct queue_filter *f = cl->filter;
	struct evbuffer *b;

	if (!queue_filter_match(f, env))
		return;
	f->shown++;
	if (!f->json) {
		queue_text(env, f->out);
		return;
	}
	b = json_new();
	envelope_json(f->c, b, env);
	json_line(f->out, b);
}

static void client_read(struct bufferevent *, void *);

/* A page of the listing was sent: the next one, or the end. */
static void
queue_page_done(int last, void *arg)
{
	struct control_client *cl = arg;
	struct evbuffer *out = bufferevent_get_output(cl->bev);

	if (!last) {
		/* Bounded output: the next page once the client has read
		 * this much (client_write). */
		if (evbuffer_get_length(out) >= CONTROL_OUTPUT_PAUSE)
			cl->list_wait = 1;
		else
			scheduler_list_next(cl->list, CONTROL_LIST_PAGE,
			    queue_each, queue_page_done, cl);
		return;
	}
	evbuffer_add(out, ".\n", 2);
	scheduler_list_free(cl->list);
	cl->list = NULL;
	queue_filter_free(cl->filter);
	cl->filter = NULL;
	if (cl->closing)
		return;		/* freed once the end is written */
	bufferevent_enable(cl->bev, EV_READ);
	client_read(cl->bev, cl);
}

/*
 * queue [FILTER...] [json]: answers "ok" at once, then streams the
 * listing a page at a time (scheduler_list_*, envelopes read on the
 * worker pool) while the loop goes on serving; the next page is read only
 * once the client has taken most of the last, so a listing holds about
 * CONTROL_OUTPUT_PAUSE bytes whatever the size of the queue.
 */
static int
cmd_queue(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	struct queue_filter *f;

	f = xcalloc(1, sizeof(*f));
	f->c = cl->c;
	f->out = bufferevent_get_output(cl->bev);
	f->json = take_json(&argc, argv);
	if (queue_filter_parse(f, argc, argv, err, errlen) == -1) {
		queue_filter_free(f);
		return -1;
	}
	cl->filter = f;
	cl->list = scheduler_list_new(cl->c->sched);
	cl->list_wait = 0;
	bufferevent_disable(cl->bev, EV_READ);
	scheduler_list_next(cl->list, CONTROL_LIST_PAGE, queue_each,
	    queue_page_done, cl);
	return CMD_STREAMING;
}

/* One message line as a data line, unescaped (smarthostctl makes it
 * safe to print): only dot-stuffed. */
static void
show_data(struct evbuffer *out, const char *p, size_t len)
{
	if (len > 0 && p[0] == '.')
		evbuffer_add(out, ".", 1);
	evbuffer_add(out, p, len);
	evbuffer_add(out, "\n", 1);
}

/* The message lines of env's body (CRLF taken off; a line longer than
 * CONTROL_BODY_LINE_MAX is cut into several), up to the first empty line
 * when headers_only. */
static int
show_body(struct queue *q, const struct envelope *env, int headers_only,
    struct evbuffer *out, char *err, size_t errlen)
{
	char buf[65536], *line;
	off_t off = 0;
	ssize_t n;
	size_t i, len, llen = 0;
	int fd, rc = 0;

	/* On the worker pool (show_work): a message may be as large as
	 * the size limit, and not in the page cache. */
	if ((fd = queue_body_open(q, env)) == -1) {
		snprintf(err, errlen, "%s: cannot read the message: %s",
		    env->id, strerror(errno));
		return -1;
	}
	line = xmalloc(CONTROL_BODY_LINE_MAX);
	while (off < env->body_size) {
		len = env->body_size - off < (off_t)sizeof(buf) ?
		    (size_t)(env->body_size - off) : sizeof(buf);
		if ((n = pread(fd, buf, len, env->body_offset + off)) <= 0) {
			snprintf(err, errlen, "%s: cannot read the message: "
			    "%s", env->id, n == 0 ? "truncated" :
			    strerror(errno));
			rc = -1;
			goto done;
		}
		off += n;
		for (i = 0; i < (size_t)n; i++) {
			if (buf[i] != '\n') {
				if (llen == CONTROL_BODY_LINE_MAX) {
					show_data(out, line, llen);
					llen = 0;
				}
				line[llen++] = buf[i];
				continue;
			}
			if (llen > 0 && line[llen - 1] == '\r')
				llen--;
			if (headers_only && llen == 0)
				goto done;
			show_data(out, line, llen);
			llen = 0;
		}
	}
	if (llen > 0)
		show_data(out, line, llen);
done:
	free(line);
	close(fd);
	return rc;
}

static void
show_envelope(struct control *c, const struct envelope *env,
    struct evbuffer *out)
{
	char t[32];
	const char *relay = scheduler_relay_of(c->sched, env);
	size_t i;

	reply_line(out, "id: %s", env->id);
	reply_line(out, "sender: <%s>", env->sender);
	reply_line(out, "size: %lld", (long long)env->body_size);
	reply_line(out, "arrival: %s", iso_time(env->created, t, sizeof(t)));
	reply_line(out, "attempts: %u", env->attempts);
	if (env->flags & ENVELOPE_HOLD)
		reply_line(out, "next-try: never (held)");
	else
		reply_line(out, "next-try: %s", env->next_try == 0 ||
		    env->next_try <= time(NULL) ? "now" :
		    iso_time(env->next_try, t, sizeof(t)));
	reply_line(out, "held: %s", (env->flags & ENVELOPE_HOLD) ? "yes" :
	    "no");
	reply_line(out, "relay: %s%s", relay != NULL ? relay :
	    "(not configured)", env->relay != NULL ? " (pinned)" : "");
	if (env->client != NULL)
		reply_line(out, "client: %s", env->client);
	if (env->uid_known)
		reply_line(out, "uid: %lu", (unsigned long)env->uid);
	for (i = 0; i < env->nrcpts; i++) {
		const struct envelope_rcpt *r = &env->rcpts[i];

		reply_line(out, "recipient: <%s> %s%s%s%s%s", r->addr,
		    rcpt_status_name(r->status),
		    r->dsn[0] != '\0' ? " " : "", r->dsn,
		    r->reply != NULL ? " " : "",
		    r->reply != NULL ? r->reply : "");
	}
}

/*
 * show ID [headers] [json]: the envelope (key: value lines, or one JSON
 * line), an empty line, then the message. Nothing is read on the loop:
 * the envelope comes from a one-message page of a listing that starts at
 * ID (scheduler_list_*), the message text from a job on the worker pool;
 * the response is written when both are done.
 */
struct show_job {
	struct control_client *cl; /* NULL: the client went away */
	struct queue *q;
	char id[ENVELOPE_ID_MAX];
	int headers, json;
	struct envelope *env;      /* a copy */
	struct evbuffer *data;     /* the message's lines */
	int rc;
	char err[512];
};

static void
show_job_free(struct show_job *job)
{
	envelope_free(job->env);
	if (job->data != NULL)
		evbuffer_free(job->data);
	free(job);
}

/* The show is answered (or the client gone): reading may go on. */
static void
show_end(struct control_client *cl)
{
	cl->show = NULL;
	if (cl->closing)
		return;		/* freed once the answer is written */
	bufferevent_enable(cl->bev, EV_READ);
	client_read(cl->bev, cl);
}

/* On a pool thread. */
static void
show_work(void *arg)
{
	struct show_job *job = arg;

	if ((job->data = evbuffer_new()) == NULL)
		fatalx("%s: evbuffer_new", __func__);
	job->rc = show_body(job->q, job->env, job->headers, job->data,
	    job->err, sizeof(job->err));
}

static void
show_done(void *arg)
{
	struct show_job *job = arg;
	struct control_client *cl = job->cl;
	struct evbuffer *out, *b;

	if (cl == NULL) {
		show_job_free(job);
		return;
	}
	out = bufferevent_get_output(cl->bev);
	if (job->rc == 0)
		evbuffer_add(out, "ok\n", 3);
	else
		evbuffer_add_printf(out, "error %s\n", job->err);
	if (job->json) {
		b = json_new();
		envelope_json(cl->c, b, job->env);
		json_line(out, b);
	} else
		show_envelope(cl->c, job->env, out);
	reply_line(out, "%s", "");
	evbuffer_add_buffer(out, job->data);
	evbuffer_add(out, ".\n", 2);
	show_job_free(job);
	show_end(cl);
}

static void
show_each(const struct envelope *env, void *arg)
{
	struct control_client *cl = arg;
	struct show_job *job = cl->show;

	if (strcmp(env->id, job->id) == 0)
		job->env = envelope_dup(env);
}

/* The page of one message was read: it is the one asked for, or there is
 * none. */
static void
show_found(int last, void *arg)
{
	struct control_client *cl = arg;
	struct show_job *job = cl->show;
	struct evbuffer *out = bufferevent_get_output(cl->bev);

	scheduler_list_free(cl->list);
	cl->list = NULL;
	if (job->env == NULL) {
		evbuffer_add_printf(out, "error %s: no such message\n.\n",
		    job->id);
		show_job_free(job);
		show_end(cl);
		return;
	}
	worker_run(cl->c->worker, show_work, show_done, job);
}

static int
cmd_show(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	struct show_job *job;
	char echo[CONTROL_ECHO_MAX + 1];
	int json, headers = 0;

	json = take_json(&argc, argv);
	if (argc == 2 && strcmp(argv[1], "headers") == 0)
		headers = 1;
	else if (argc != 1) {
		snprintf(err, errlen, "usage: show ID [headers] [json]");
		return -1;
	}
	if (strlen(argv[0]) >= ENVELOPE_ID_MAX) {
		echo_copy(echo, sizeof(echo), argv[0]);
		snprintf(err, errlen, "%s: no such message", echo);
		return -1;
	}
	job = xcalloc(1, sizeof(*job));
	job->cl = cl;
	job->q = cl->c->queue;
	snprintf(job->id, sizeof(job->id), "%s", argv[0]);
	job->headers = headers;
	job->json = json;
	cl->show = job;
	cl->list = scheduler_list_new(cl->c->sched);
	scheduler_list_seek(cl->list, job->id);
	bufferevent_disable(cl->bev, EV_READ);
	scheduler_list_next(cl->list, 1, show_each, show_found, cl);
	return CMD_LATER;
}

/* The reason a per-message operation failed (scheduler.h's errno). */
static const char *
msg_op_error(int error, const char *op)
{
	switch (error) {
	case ENOENT:
		return "no such message";
	case EBUSY:
		return "being delivered now; try again when the attempt is "
		    "over";
	case EALREADY:
		return strcmp(op, "hold") == 0 ? "already held" : "not held";
	case EPERM:
		return "held; release it first";
	}
	return strerror(error);
}

/*
 * Runs op on each id: one data line "ID: OP-ED" or "ID: REASON" each.
 * Fails (after doing the rest) when one did, naming how many.
 */
static int
msg_ops(struct control_client *cl, int argc, char **argv,
    int (*op)(struct scheduler *, const char *), const char *name,
    const char *done, struct evbuffer *out, char *err, size_t errlen)
{
	int i, failed = 0;

	if (argc < 1 || argc > CONTROL_IDS_MAX) {
		snprintf(err, errlen, "usage: %s ID... (at most %d)", name,
		    CONTROL_IDS_MAX);
		return -1;
	}
	for (i = 0; i < argc; i++) {
		if (op(cl->c->sched, argv[i]) == -1) {
			reply_line(out, "%s: %s", argv[i],
			    msg_op_error(errno, name));
			failed++;
			continue;
		}
		log_info("control: %s %s, requested by uid %lu", name,
		    argv[i], cl->uid);
		reply_line(out, "%s: %s", argv[i], done);
	}
	if (failed > 0) {
		snprintf(err, errlen, "%s failed for %d of %d message%s", name,
		    failed, argc, argc == 1 ? "" : "s");
		return -1;
	}
	return 0;
}

static int
cmd_hold(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	return msg_ops(cl, argc, argv, scheduler_hold, "hold", "held", out,
	    err, errlen);
}

static int
cmd_release(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	return msg_ops(cl, argc, argv, scheduler_release, "release",
	    "released", out, err, errlen);
}

struct delete_all {
	struct evbuffer *out;
	size_t kept;
};

static void
delete_all_each(const char *id, int error, void *arg)
{
	struct delete_all *d = arg;

	if (error != 0) {
		reply_line(d->out, "%s: %s", id, msg_op_error(error, "delete"));
		d->kept++;
	} else
		reply_line(d->out, "%s: deleted", id);
}

/* delete ID... | delete all: messages being delivered are left alone
 * (and named); the rest are removed without a bounce, and without
 * reading their files. */
static int
cmd_delete(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	struct delete_all d = { out, 0 };
	size_t n;

	if (argc != 1 || strcmp(argv[0], "all") != 0)
		return msg_ops(cl, argc, argv, scheduler_delete, "delete",
		    "deleted", out, err, errlen);
	n = scheduler_delete_all(cl->c->sched, delete_all_each, &d);
	log_info("control: deleted %zu message%s, requested by uid %lu", n,
	    n == 1 ? "" : "s", cl->uid);
	if (d.kept > 0) {
		snprintf(err, errlen, "%zu message%s being delivered were "
		    "kept", d.kept, d.kept == 1 ? "" : "s");
		return -1;
	}
	return 0;
}

static int
cmd_flush(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	size_t n = scheduler_count(cl->c->sched);

	if (argc > 0)
		return msg_ops(cl, argc, argv, scheduler_flush_one, "flush",
		    "due now", out, err, errlen);
	log_info("control: flushing the queue (%zu message%s), requested by "
	    "uid %lu", n, n == 1 ? "" : "s", cl->uid);
	scheduler_flush(cl->c->sched);
	reply_line(out, "flushed: %zu", n);
	return 0;
}

static int
cmd_reload(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	log_info("control: reload requested by uid %lu", cl->uid);
	if (cl->c->reload == NULL) {
		snprintf(err, errlen, "reload is not available");
		return -1;
	}
	return cl->c->reload(cl->c->reload_arg, err, errlen);
}

static int
cmd_auth_forget(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	if (scheduler_auth_forget(cl->c->sched, argv[0]) == -1) {
		snprintf(err, errlen, "%s is not marked as requiring "
		    "authentication", argv[0]);
		return -1;
	}
	log_info("control: forgot that %s requires authentication", argv[0]);
	reply_line(out, "forgotten: %s", argv[0]);
	return 0;
}

static int
cmd_credentials_changed(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	log_info("control: credentials changed; retrying mail deferred for "
	    "credentials");
	scheduler_credentials_changed(cl->c->sched);
	return 0;
}

/* The Prometheus text exposition (metrics.h), one data line per line. */
static int
cmd_metrics(struct control_client *cl, int argc, char **argv,
    struct evbuffer *out, char *err, size_t errlen)
{
	char *text, *line, *next;

	text = metrics_collect(cl->c->sched, cl->c->server);
	for (line = text; *line != '\0'; line = next) {
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		else
			next = line + strlen(line);
		reply_line(out, "%s", line);
	}
	free(text);
	return 0;
}

/* How many arguments a command takes. */
enum control_args {
	ARGS_NONE,
	ARGS_ONE,
	ARGS_ANY,   /* zero or more, the command checks them */
};

static const struct control_cmd {
	const char *name;
	enum control_args args;
	enum control_access needs;
	const char *usage;
	control_cmd_fn *run;
} control_cmds[] = {
	{ "status", ARGS_ANY, CONTROL_READ, "status [json]", cmd_status },
	{ "queue", ARGS_ANY, CONTROL_READ, "queue [FILTER...] [json]",
	    cmd_queue },
	{ "show", ARGS_ANY, CONTROL_READ, "show ID [headers] [json]",
	    cmd_show },
	{ "hold", ARGS_ANY, CONTROL_ADMIN, "hold ID...", cmd_hold },
	{ "release", ARGS_ANY, CONTROL_ADMIN, "release ID...", cmd_release },
	{ "delete", ARGS_ANY, CONTROL_ADMIN, "delete ID...|all", cmd_delete },
	{ "flush", ARGS_ANY, CONTROL_ADMIN, "flush [ID...]", cmd_flush },
	{ "reload", ARGS_NONE, CONTROL_ADMIN, "reload", cmd_reload },
	{ "auth-forget", ARGS_ONE, CONTROL_ADMIN, "auth-forget HOST[:PORT]",
	    cmd_auth_forget },
	{ "credentials-changed", ARGS_NONE, CONTROL_ADMIN,
	    "credentials-changed", cmd_credentials_changed },
	{ "metrics", ARGS_NONE, CONTROL_READ, "metrics", cmd_metrics },
};

/* ---- clients ---- */

static void
client_free(struct control_client *cl)
{
	struct control *c = cl->c;

	TAILQ_REMOVE(&c->clients, cl, entry);
	c->nclients--;
	if (cl->show != NULL && cl->list != NULL)
		show_job_free(cl->show);	/* not on the pool yet */
	else if (cl->show != NULL)
		cl->show->cl = NULL;		/* show_done frees it */
	scheduler_list_free(cl->list);
	queue_filter_free(cl->filter);
	bufferevent_free(cl->bev);
	free(cl);
}

/* Ends the connection once what is queued has been written. */
static void
client_close(struct control_client *cl)
{
	cl->closing = 1;
	bufferevent_disable(cl->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(cl->bev)) == 0)
		client_free(cl);
}

static void
client_error(struct control_client *cl, const char *msg)
{
	struct evbuffer *out = bufferevent_get_output(cl->bev);

	evbuffer_add_printf(out, "error %s\n.\n", msg);
}

/* Runs one request line (NUL-terminated, without its line end). */
static void
client_request(struct control_client *cl, char *line, size_t len)
{
	struct evbuffer *data, *out = bufferevent_get_output(cl->bev);
	const struct control_cmd *cmd;
	char err[512], echo[CONTROL_ECHO_MAX + 1], *argv[CONTROL_IDS_MAX + 8];
	char *p;
	size_t i;
	int argc = 0, rc;

	for (i = 0; i < len; i++) {
		if ((unsigned char)line[i] < 0x20 && line[i] != '\t') {
			client_error(cl, "malformed request: control "
			    "characters");
			return;
		}
	}
	/* COMMAND, then its arguments, separated by blanks. */
	for (p = strtok(line, " \t"); p != NULL; p = strtok(NULL, " \t")) {
		if (argc == (int)(sizeof(argv) / sizeof(*argv))) {
			client_error(cl, "too many arguments");
			return;
		}
		argv[argc++] = p;
	}
	if (argc == 0) {
		client_error(cl, "empty request");
		return;
	}
	for (i = 0; i < sizeof(control_cmds) / sizeof(*control_cmds); i++)
		if (strcmp(control_cmds[i].name, argv[0]) == 0)
			break;
	if (i == sizeof(control_cmds) / sizeof(*control_cmds)) {
		echo_copy(echo, sizeof(echo), argv[0]);
		snprintf(err, sizeof(err), "unknown command \"%s\"", echo);
		client_error(cl, err);
		return;
	}
	cmd = &control_cmds[i];
	if ((cmd->args == ARGS_ONE && argc != 2) ||
	    (cmd->args == ARGS_NONE && argc != 1)) {
		snprintf(err, sizeof(err), "usage: %s", cmd->usage);
		client_error(cl, err);
		return;
	}
	if (cl->access < cmd->needs) {
		log_warnx("control: refused %s to uid %lu: reading access "
		    "only", cmd->name, cl->uid);
		snprintf(err, sizeof(err), "permission denied: %s needs "
		    "root, the daemon's user or the control_admin_group",
		    cmd->name);
		client_error(cl, err);
		return;
	}
	log_debug("control: uid %lu: %s%s%s", cl->uid, cmd->name,
	    argc > 1 ? " " : "", argc > 1 ? argv[1] : "");
	if ((data = evbuffer_new()) == NULL)
		fatalx("%s: evbuffer_new", __func__);
	err[0] = '\0';
	/* A streaming command's pages come from the loop later, after
	 * this "ok". */
	rc = cmd->run(cl, argc - 1, argv + 1, data, err, sizeof(err));
	if (rc == CMD_LATER) {
		evbuffer_free(data);
		return;
	}
	if (rc == 0 || rc == CMD_STREAMING)
		evbuffer_add(out, "ok\n", 3);
	else if (rc == -1)
		evbuffer_add_printf(out, "error %s\n", err[0] != '\0' ? err :
		    "failed");
	evbuffer_add_buffer(out, data);
	if (rc != CMD_STREAMING)
		evbuffer_add(out, ".\n", 2);
	evbuffer_free(data);
}

static void
client_overlong(struct control_client *cl)
{
	struct evbuffer *in = bufferevent_get_input(cl->bev);

	log_warnx("control: uid %lu sent a request longer than %d bytes; "
	    "closing", cl->uid, CONTROL_LINE_MAX);
	evbuffer_drain(in, evbuffer_get_length(in));
	client_error(cl, "request too long");
	client_close(cl);
}

/* Takes the complete lines out of the input, one response each. */
static void
client_read(struct bufferevent *bev, void *arg)
{
	struct control_client *cl = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer *out = bufferevent_get_output(bev);
	struct evbuffer_ptr eol;
	size_t eol_len, len;
	char *line;

	while (!cl->closing && cl->list == NULL && cl->show == NULL) {
		if (evbuffer_get_length(out) >= CONTROL_OUTPUT_PAUSE) {
			/* Resumed by client_write once the client reads. */
			cl->paused = 1;
			bufferevent_disable(bev, EV_READ);
			return;
		}
		eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (eol.pos == -1) {
			if (evbuffer_get_length(in) >= CONTROL_LINE_MAX)
				client_overlong(cl);
			return;
		}
		len = (size_t)eol.pos;
		if (len + 1 > CONTROL_LINE_MAX) {
			client_overlong(cl);
			return;
		}
		line = xmalloc(len + 1);
		evbuffer_remove(in, line, len);
		evbuffer_drain(in, 1);
		line[len] = '\0';
		if (len > 0 && line[len - 1] == '\r')
			line[--len] = '\0';
		client_request(cl, line, len);
		free(line);
	}
}

static void
client_write(struct bufferevent *bev, void *arg)
{
	struct control_client *cl = arg;

	if (cl->show != NULL)
		return;		/* its answer comes later */
	if (cl->list != NULL) {
		/* A listing is being sent: the client took the last page. */
		if (cl->list_wait) {
			cl->list_wait = 0;
			scheduler_list_next(cl->list, CONTROL_LIST_PAGE,
			    queue_each, queue_page_done, cl);
		}
		return;
	}
	if (cl->closing) {
		client_free(cl);
		return;
	}
	if (cl->paused) {
		cl->paused = 0;
		bufferevent_enable(bev, EV_READ);
		client_read(bev, cl);
	}
}

static void
client_event(struct bufferevent *bev, short what, void *arg)
{
	struct control_client *cl = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t len;
	char *line;

	if ((what & BEV_EVENT_EOF) && !cl->closing) {
		/* The client closed its side: a last request without a line
		 * end still gets its answer ("printf status | socat ..."). */
		len = evbuffer_get_length(in);
		if (len >= CONTROL_LINE_MAX) {
			client_overlong(cl);
			return;
		}
		if (len > 0 && !cl->paused) {
			line = xmalloc(len + 1);
			evbuffer_remove(in, line, len);
			line[len] = '\0';
			if (line[len - 1] == '\r')
				line[--len] = '\0';
			client_request(cl, line, len);
			free(line);
		}
		client_close(cl);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT)
		log_debug("control: uid %lu timed out", cl->uid);
	else if ((what & BEV_EVENT_ERROR) && errno != EPIPE &&
	    errno != ECONNRESET)
		log_warn("control: uid %lu", cl->uid);
	client_free(cl);
}

/* ---- the listener ---- */

int
control_peer_allowed(uid_t peer, uid_t self)
{
	return peer == 0 || peer == self;
}

enum control_access
control_peer_access(uid_t uid, const gid_t *gids, size_t ngids, uid_t self,
    gid_t admin_gid, gid_t read_gid)
{
	enum control_access a = CONTROL_DENIED;
	size_t i;

	if (control_peer_allowed(uid, self))
		return CONTROL_ADMIN;
	for (i = 0; i < ngids; i++) {
		if (admin_gid != (gid_t)-1 && gids[i] == admin_gid)
			return CONTROL_ADMIN;
		if (read_gid != (gid_t)-1 && gids[i] == read_gid)
			a = CONTROL_READ;
	}
	return a;
}

/* The peer's primary group (SO_PEERCRED) and supplementary groups
 * (SO_PEERGROUPS, as they were at connect) into gids; how many, or -1. */
static int
peer_groups(int fd, gid_t *gids, size_t max)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (max < 1 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred,
	    &len) == -1)
		return -1;
	gids[0] = cred.gid;
	len = (socklen_t)((max - 1) * sizeof(*gids));
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, gids + 1, &len) == -1)
		return -1;   /* ERANGE: more groups than we look at */
	return 1 + (int)(len / sizeof(*gids));
}

int
control_peer_uid(int fd, uid_t *uid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1)
		return -1;
	if (len != sizeof(cred)) {
		errno = EINVAL;
		return -1;
	}
	*uid = cred.uid;
	return 0;
}

/* Answers a connection we will not serve and closes it. The socket is
 * fresh, so the short answer fits in its buffer; if not, it is lost. */
static void
refuse(evutil_socket_t fd, const char *msg)
{
	char buf[256];
	int n;

	n = snprintf(buf, sizeof(buf), "error %s\n.\n", msg);
	if (n > 0 && (size_t)n < sizeof(buf) &&
	    send(fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) == -1)
		log_debug("control: refusal not sent: %s", strerror(errno));
	evutil_closesocket(fd);
}

static void
control_accept(struct evconnlistener *lev, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	const struct timeval tv = { CONTROL_TIMEOUT, 0 };
	struct control *c = arg;
	struct control_client *cl;
	uid_t uid;
	gid_t gids[256];
	enum control_access access;
	int ngids;

	if (control_peer_uid(fd, &uid) == -1) {
		log_warn("control: cannot identify the peer");
		refuse(fd, "permission denied");
		return;
	}
	if (control_peer_allowed(uid, c->uid))
		access = CONTROL_ADMIN;
	else if (c->admin_gid == (gid_t)-1 && c->read_gid == (gid_t)-1)
		access = CONTROL_DENIED;
	else if ((ngids = peer_groups(fd, gids, sizeof(gids) /
	    sizeof(*gids))) == -1) {
		log_warn("control: cannot read the groups of uid %lu",
		    (unsigned long)uid);
		access = CONTROL_DENIED;
	} else
		access = control_peer_access(uid, gids, (size_t)ngids, c->uid,
		    c->admin_gid, c->read_gid);
	if (access == CONTROL_DENIED) {
		log_warnx("control: refused uid %lu: only root, uid %lu and "
		    "the control groups may use %s", (unsigned long)uid,
		    (unsigned long)c->uid, c->path);
		refuse(fd, "permission denied");
		return;
	}
	if (c->nclients >= CONTROL_CLIENTS_MAX) {
		log_warnx("control: refused uid %lu: %d connections already",
		    (unsigned long)uid, CONTROL_CLIENTS_MAX);
		refuse(fd, "too many control connections");
		return;
	}
	cl = xcalloc(1, sizeof(*cl));
	cl->c = c;
	cl->uid = (unsigned long)uid;
	cl->access = access;
	cl->bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (cl->bev == NULL) {
		log_warnx("control: bufferevent_socket_new failed");
		evutil_closesocket(fd);
		free(cl);
		return;
	}
	TAILQ_INSERT_TAIL(&c->clients, cl, entry);
	c->nclients++;
	bufferevent_setcb(cl->bev, client_read, client_write, client_event,
	    cl);
	bufferevent_set_timeouts(cl->bev, &tv, &tv);
	bufferevent_enable(cl->bev, EV_READ | EV_WRITE);
}

static void
control_resume(evutil_socket_t fd, short what, void *arg)
{
	struct control *c = arg;

	evconnlistener_enable(c->listener);
}

/* accept(2) failed (EMFILE, ...): a level-triggered listener would spin,
 * so pause for a second. */
static void
control_accept_error(struct evconnlistener *lev, void *arg)
{
	const struct timeval tv = { 1, 0 };
	struct control *c = arg;

	log_warn("control: accept on %s", c->path);
	evconnlistener_disable(lev);
	evtimer_add(c->ev_resume, &tv);
}

/* Whether something accepts connections on the Unix socket at sun. */
static int
socket_in_use(const struct sockaddr_un *sun)
{
	int fd, r;

	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return 0;
	r = connect(fd, (const struct sockaddr *)sun, sizeof(*sun));
	close(fd);
	return r == 0;
}

static int
socket_open(const char *path, int shared, dev_t *dev, ino_t *ino,
    char *err, size_t errlen)
{
	struct sockaddr_un sun;
	struct stat st;
	mode_t old;
	int fd, saved;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "control socket %s: path too long",
		    path);
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path));
	/* A stale socket from a previous run is removed; a live one means
	 * another daemon uses this spool; other files are not ours. */
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen, "control socket %s: exists and "
			    "is not a socket", path);
			return -1;
		}
		if (socket_in_use(&sun)) {
			snprintf(err, errlen, "control socket %s: another "
			    "process is listening there", path);
			return -1;
		}
		if (unlink(path) == -1) {
			snprintf(err, errlen, "control socket %s: cannot "
			    "remove the stale socket: %s", path,
			    strerror(errno));
			return -1;
		}
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1) {
		snprintf(err, errlen, "control socket %s: %s", path,
		    strerror(errno));
		return -1;
	}
	/* Owner-only from the start: never a moment open to others. With
	 * control groups, open to all: the daemon checks every peer. */
	old = umask(shared ? 0111 : 0177);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		umask(old);
		snprintf(err, errlen, "control socket %s: bind: %s", path,
		    strerror(errno));
		close(fd);
		return -1;
	}
	umask(old);
	/* No chmod by path: the umask made it 0600 (or 0666), and a chmod
	 * would follow a symlink put there since the bind. */
	if (lstat(path, &st) == -1 ||
	    listen(fd, CONTROL_CLIENTS_MAX) == -1) {
		saved = errno;
		/* sun_path, not path: gcc's UBSan build cannot prove path
		 * non-null here and -Wformat-truncation would fail. */
		snprintf(err, errlen, "control socket %s: %s", sun.sun_path,
		    strerror(saved));
		unlink(path);
		close(fd);
		return -1;
	}
	*dev = st.st_dev;
	*ino = st.st_ino;
	return fd;
}

struct control *
control_new(struct event_base *base, const struct control_params *params,
    char *err, size_t errlen)
{
	struct control *c;
	int fd;

	c = xcalloc(1, sizeof(*c));
	c->base = base;
	c->path = xstrdup(params->path);
	c->sched = params->scheduler;
	c->server = params->server;
	c->queue = params->queue;
	c->worker = params->worker;
	c->reload = params->reload;
	c->reload_arg = params->reload_arg;
	c->uid = params->uid;
	c->admin_gid = params->admin_gid != NULL ? *params->admin_gid :
	    (gid_t)-1;
	c->read_gid = params->read_gid != NULL ? *params->read_gid :
	    (gid_t)-1;
	c->started = params->started;
	TAILQ_INIT(&c->clients);
	if ((fd = socket_open(params->path, c->admin_gid != (gid_t)-1 ||
	    c->read_gid != (gid_t)-1, &c->dev, &c->ino, err, errlen)) == -1) {
		free(c->path);
		free(c);
		return NULL;
	}
	c->listener = evconnlistener_new(base, control_accept, c,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
	if (c->listener == NULL ||
	    (c->ev_resume = evtimer_new(base, control_resume, c)) == NULL)
		fatalx("%s: cannot listen on %s", __func__, c->path);
	evconnlistener_set_error_cb(c->listener, control_accept_error);
	log_info("control socket at %s", c->path);
	return c;
}

void
control_free(struct control *c)
{
	struct control_client *cl;
	struct stat st;

	if (c == NULL)
		return;
	while ((cl = TAILQ_FIRST(&c->clients)) != NULL)
		client_free(cl);
	evconnlistener_free(c->listener);
	event_free(c->ev_resume);
	/* Only our own socket: a second daemon may have replaced it. */
	if (lstat(c->path, &st) == 0 && st.st_dev == c->dev &&
	    st.st_ino == c->ino && unlink(c->path) == -1)
		log_warn("unlink %s", c->path);
	free(c->path);
	free(c);
}

/* ---- the client side ---- */

static long
ms_left(const struct timespec *deadline)
{
	struct timespec now;
	long ms;

	clock_gettime(CLOCK_MONOTONIC, &now);
	ms = (long)(deadline->tv_sec - now.tv_sec) * 1000 +
	    (deadline->tv_nsec - now.tv_nsec) / 1000000;
	return ms > 0 ? ms : 0;
}

/* Waits for events on fd until the deadline: 0 ready, -1 with errno. */
static int
wait_fd(int fd, short events, const struct timespec *deadline)
{
	struct pollfd pfd = { fd, events, 0 };
	int r;

	do {
		r = poll(&pfd, 1, (int)ms_left(deadline));
	} while (r == -1 && errno == EINTR);
	if (r == 0) {
		errno = ETIMEDOUT;
		return -1;
	}
	return r == 1 ? 0 : -1;
}

struct reply_reader {
	int state;          /* 0: status line next, 1: data lines */
	enum control_result result;
	control_line_fn *each;
	void *arg;
	char *err;
	size_t errlen;
};

/* One response line; returns 1 at the final ".", 0 to go on, -1 if the
 * line is malformed. */
static int
reply_take(struct reply_reader *rr, char *line)
{
	size_t len = strlen(line);

	if (len > 0 && line[len - 1] == '\r')
		line[--len] = '\0';
	if (rr->state == 0) {
		rr->state = 1;
		if (strcmp(line, "ok") == 0) {
			rr->result = CONTROL_OK;
			return 0;
		}
		if (strncmp(line, "error ", 6) == 0) {
			rr->result = CONTROL_ERROR;
			snprintf(rr->err, rr->errlen, "%s", line + 6);
			return 0;
		}
		return -1;
	}
	if (strcmp(line, ".") == 0)
		return 1;
	if (rr->each != NULL)
		rr->each(line[0] == '.' ? line + 1 : line, rr->arg);
	return 0;
}

/* The reason a poll, send or recv just failed (errno), in err. */
static void
call_fail(const char *path, char *err, size_t errlen)
{
	snprintf(err, errlen, "%s: %s", path, errno == ETIMEDOUT ?
	    "no response in time" : strerror(errno));
}

/*
 * A blocking connection to the control socket at path: the descriptor, or
 * -1 with errno and the reason in err (a path too long for sun_path is
 * ENAMETOOLONG).
 */
static int
call_connect(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sun;
	int fd, saved;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "cannot connect to %s: path too long",
		    path);
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path));
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		saved = errno;
		snprintf(err, errlen, "cannot connect to %s: %s", path,
		    strerror(saved));
		if (fd != -1)
			close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/*
 * Sends the request line req (with its "\n") before the deadline. Returns
 * 0 when it is sent, or when the daemon refused it at once by closing
 * (EPIPE or ECONNRESET in *send_error: its reason may still wait to be
 * read); -1 with errno on any other failure or the deadline.
 */
static int
call_send(int fd, const char *req, const struct timespec *deadline,
    int *send_error)
{
	size_t off = 0, reqlen = strlen(req);
	ssize_t n;

	while (off < reqlen) {
		if (wait_fd(fd, POLLOUT, deadline) == -1)
			return -1;
		n = send(fd, req + off, reqlen - off, MSG_NOSIGNAL |
		    MSG_DONTWAIT);
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n == -1 && (errno == EPIPE || errno == ECONNRESET)) {
			/* Refused at once: the reason may wait unread. */
			*send_error = errno;
			break;
		}
		if (n == -1)
			return -1;
		off += (size_t)n;
	}
	return 0;
}

/*
 * Hands the complete lines at the start of buf (*len bytes) to rr and
 * drops them from buf. Returns 1 after the response's final ".", 0 when
 * more must be read, -1 (the reason in rr->err) for a malformed line.
 */
static int
reply_lines(struct reply_reader *rr, const char *path, char *buf,
    size_t *len)
{
	char *nl;
	int r;

	while (*len > 0 && (nl = memchr(buf, '\n', *len)) != NULL) {
		*nl = '\0';
		r = reply_take(rr, buf);
		*len -= (size_t)(nl + 1 - buf);
		memmove(buf, nl + 1, *len);
		if (r == -1) {
			snprintf(rr->err, rr->errlen, "%s: malformed response",
			    path);
			return -1;
		}
		if (r == 1)
			return 1;
	}
	return 0;
}

/*
 * Reads the response on fd through rr until its final "." and returns its
 * result (an "error" status also when the close cuts it short), or
 * CONTROL_FAILED with the reason in rr->err when it is malformed, too
 * long, late or cut short. send_error is call_send's: a close before the
 * status line is then reported as the refused send.
 */
static enum control_result
reply_read(int fd, const char *path, unsigned timeout,
    struct timespec *deadline, struct reply_reader *rr, int send_error)
{
	char *buf = NULL, *err = rr->err;
	size_t len = 0, cap = 0, errlen = rr->errlen;
	ssize_t n;
	int r;
	enum control_result result = CONTROL_FAILED;

	for (;;) {
		/* Complete lines first, then read more. */
		if ((r = reply_lines(rr, path, buf, &len)) == -1)
			goto out;
		if (r == 1) {
			result = rr->result;
			goto out;
		}
		if (len > CONTROL_REPLY_LINE_MAX) {
			snprintf(err, errlen, "%s: response line too long",
			    path);
			goto out;
		}
		if (cap - len < 4096) {
			cap = cap == 0 ? 8192 : cap * 2;
			buf = xreallocarray(buf, cap, 1);
		}
		if (wait_fd(fd, POLLIN, deadline) == -1)
			goto fail_errno;
		n = recv(fd, buf + len, cap - len, MSG_DONTWAIT);
		if (n == -1 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n == -1)
			goto fail_errno;
		if (n == 0) {
			/* A refusal may end at the close without its ".". */
			if (rr->result == CONTROL_ERROR)
				result = CONTROL_ERROR;
			else if (send_error != 0 && rr->state == 0)
				snprintf(err, errlen, "%s: %s", path,
				    strerror(send_error));
			else
				snprintf(err, errlen, "%s: connection closed "
				    "before the end of the response", path);
			goto out;
		}
		len += (size_t)n;
		/* A long listing streams: the timeout is for silence. */
		clock_gettime(CLOCK_MONOTONIC, deadline);
		deadline->tv_sec += timeout;
	}

fail_errno:
	call_fail(path, err, errlen);
out:
	free(buf);
	return result;
}

enum control_result
control_call(const char *path, const char *request, unsigned timeout,
    control_line_fn *each, void *arg, char *err, size_t errlen)
{
	struct reply_reader rr = { 0, CONTROL_FAILED, each, arg, err,
	    errlen };
	struct timespec deadline;
	char *req;
	int fd, send_error = 0;
	enum control_result result;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += timeout;
	if ((fd = call_connect(path, err, errlen)) == -1)
		return CONTROL_UNAVAILABLE;
	req = xasprintf("%s\n", request);
	if (call_send(fd, req, &deadline, &send_error) == -1) {
		call_fail(path, err, errlen);
		result = CONTROL_FAILED;
	} else
		result = reply_read(fd, path, timeout, &deadline, &rr,
		    send_error);
	close(fd);
	free(req);
	return result;
}

int
control_run(const char *path, const char *request, unsigned timeout,
    control_line_fn *each, void *arg, char *err, size_t errlen)
{
	char msg[1024];
	int saved;

	switch (control_call(path, request, timeout, each, arg, msg,
	    sizeof(msg))) {
	case CONTROL_OK:
		return EX_OK;
	case CONTROL_ERROR:
		if (strcmp(msg, "permission denied") == 0) {
			snprintf(err, errlen, "%s: permission denied: only "
			    "root and the daemon's user (and the control "
			    "groups) may use it", path);
			return EX_NOPERM;
		}
		if (strncmp(msg, "permission denied: ", 19) == 0) {
			snprintf(err, errlen, "%s", msg);
			return EX_NOPERM;
		}
		if (strcmp(msg, "too many control connections") == 0) {
			snprintf(err, errlen, "%s: %s; try again", path, msg);
			return EX_TEMPFAIL;
		}
		snprintf(err, errlen, "%s", msg);
		return EX_DATAERR;
	case CONTROL_UNAVAILABLE:
		saved = errno;
		if (saved == EACCES || saved == EPERM) {
			snprintf(err, errlen, "cannot connect to %s: %s (only "
			    "root and the daemon's user may use it)", path,
			    strerror(saved));
			return EX_NOPERM;
		}
		snprintf(err, errlen, "cannot connect to %s: is smarthostd "
		    "running?", path);
		return EX_UNAVAILABLE;
	case CONTROL_FAILED:
		snprintf(err, errlen, "%s", msg);
		return EX_PROTOCOL;
	}
	snprintf(err, errlen, "%s: unexpected result", path);
	return EX_SOFTWARE;
}

struct queue_print {
	FILE *out;
	size_t nmsgs;
};

/* Message lines start with the id; recipient lines with blanks. */
static void
queue_line(const char *line, void *arg)
{
	struct queue_print *qp = arg;

	if (line[0] != ' ')
		qp->nmsgs++;
	fprintf(qp->out, "%s\n", line);
}

int
control_print_queue(const char *path, unsigned timeout, FILE *out,
    char *err, size_t errlen)
{
	struct queue_print qp = { out, 0 };
	int rc;

	if ((rc = control_run(path, "queue", timeout, queue_line, &qp, err,
	    errlen)) != EX_OK)
		return rc;
	if (qp.nmsgs == 0)
		fprintf(out, "queue is empty\n");
	else
		fprintf(out, "-- %zu message%s\n", qp.nmsgs,
		    qp.nmsgs == 1 ? "" : "s");
	return EX_OK;
}
