/*
 * control.c: the daemon's side over a real Unix socket in a temporary
 * directory, with a real queue and scheduler on the test's loop, talked to
 * by control_call() from a thread (it blocks) or by raw sockets (for what
 * control_call never sends); and control_call() against scripted servers.
 */
#define _GNU_SOURCE 1 /* mkdtemp */

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include <event2/event.h>
#include <event2/thread.h>

#include "config.h"
#include "control.h"
#include "envelope.h"
#include "log.h"
#include "queue.h"
#include "scheduler.h"
#include "worker.h"
#include "xmalloc.h"

/* A Unix socket address for path (which must fit). */
static void
sun_set(struct sockaddr_un *sun, const char *path)
{
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	cr_assert_lt(strlen(path), sizeof(sun->sun_path));
	memcpy(sun->sun_path, path, strlen(path));
}

/* ---- pure parts ---- */

Test(peer, root_and_self_only)
{
	cr_assert(control_peer_allowed(0, 1000));
	cr_assert(control_peer_allowed(1000, 1000));
	cr_assert(control_peer_allowed(0, 0));
	cr_assert_not(control_peer_allowed(1001, 1000));
	cr_assert_not(control_peer_allowed(65534, 0));
}

Test(peer, control_groups)
{
	const gid_t none = (gid_t)-1, g[] = { 100, 50, 60 };

	/* root and self, whatever the groups */
	cr_assert_eq(control_peer_access(0, NULL, 0, 1000, none, none),
	    CONTROL_ADMIN);
	cr_assert_eq(control_peer_access(1000, g, 3, 1000, 7, 8),
	    CONTROL_ADMIN);
	/* no groups configured: nobody else */
	cr_assert_eq(control_peer_access(1001, g, 3, 1000, none, none),
	    CONTROL_DENIED);
	/* a supplementary group grants; admin wins over read */
	cr_assert_eq(control_peer_access(1001, g, 3, 1000, none, 60),
	    CONTROL_READ);
	cr_assert_eq(control_peer_access(1001, g, 3, 1000, 50, 100),
	    CONTROL_ADMIN);
	cr_assert_eq(control_peer_access(1001, g, 3, 1000, 70, 80),
	    CONTROL_DENIED);
	cr_assert_eq(control_peer_access(1001, g, 1, 1000, none, 50),
	    CONTROL_DENIED);
}

Test(peer, uid_of_a_socketpair_is_ours)
{
	int sv[2];
	uid_t uid = (uid_t)-1;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	cr_assert_eq(control_peer_uid(sv[0], &uid), 0);
	cr_assert_eq(uid, geteuid());
	close(sv[0]);
	close(sv[1]);
	cr_assert_eq(control_peer_uid(-1, &uid), -1);
	cr_assert_eq(errno, EBADF);
}

/* ---- fixture: directory, loop, queue, worker, scheduler, control ---- */

static char topdir[64];
static char spool[80];
static char sockpath[96];
static struct event_base *base;
static struct queue *q;
static struct worker *w;
static struct config *cfg;
static struct scheduler *sched;
static struct control *ctl;

/* A port on 127.0.0.1 that nobody listens on. */
static int
closed_port(void)
{
	int port = fixture_closed_port();

	cr_assert_gt(port, 0);
	return port;
}

static void
setup(void)
{
	struct control_params cp;
	char text[1024], err[512];
	FILE *f;

	log_init("test_control", 0);
	snprintf(topdir, sizeof(topdir), "/tmp/test_control.XXXXXX");
	cr_assert_not_null(mkdtemp(topdir));
	snprintf(spool, sizeof(spool), "%s/spool", topdir);
	snprintf(sockpath, sizeof(sockpath), "%s/control.sock", spool);
	cr_assert_eq(mkdir(spool, 0700), 0);
	cr_assert_eq(evthread_use_pthreads(), 0);
	cr_assert_not_null(base = event_base_new());
	q = queue_open(base, spool, SPOOL_SYNC_FSYNC, 0, err, sizeof(err));
	cr_assert_not_null(q, "%s", err);
	w = worker_new(base, 2);
	snprintf(text, sizeof(text),
	    "hostname = \"mx.test.example\";\n"
	    "spool = \"%s\";\n"
	    "queue = { retry_min = 600; retry_max = 600; };\n"
	    "relays = { up = { host = \"127.0.0.1\"; port = \"%d\"; "
	    "tls = \"none\"; }; };\n", spool, closed_port());
	cfg = config_parse_string(text, "test.conf", err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	cr_assert_str_eq(cfg->control_socket, sockpath);
	/* Two relays learned to require authentication, as a previous run
	 * left them (authstate.h). */
	snprintf(text, sizeof(text), "%s/state", spool);
	cr_assert_eq(mkdir(text, 0700), 0);
	snprintf(text, sizeof(text), "%s/state/auth-required", spool);
	cr_assert_not_null(f = fopen(text, "w"));
	fprintf(f, "smtp.example.com 587\n2001:db8::25 465\n");
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(chmod(text, 0600), 0);
	sched = scheduler_new(base, NULL, q, w, cfg);

	memset(&cp, 0, sizeof(cp));
	cp.path = cfg->control_socket;
	cp.scheduler = sched;
	cp.queue = q;
	cp.worker = w;
	cp.uid = geteuid();
	cp.started = time(NULL) - 42;
	ctl = control_new(base, &cp, err, sizeof(err));
	cr_assert_not_null(ctl, "%s", err);
}

static void
teardown(void)
{
	control_free(ctl);
	ctl = NULL;
	fixture_stop(&w, &q, &sched);
	config_free(cfg);
	cfg = NULL;
	if (base != NULL)
		event_base_free(base);
	base = NULL;
	fixture_rmtree(topdir);
}

TestSuite(control, .init = setup, .fini = teardown, .timeout = 60);

/* Runs the loop in 20 ms slices until cond(arg) holds or secs pass. */
static int
run_until(int (*cond)(void *), void *arg, double secs)
{
	return fixture_run_until(base, cond, arg, secs, 20);
}

/* ---- control_call from a thread while the loop runs here ---- */

struct call {
	const char *path;
	const char *req;
	enum control_result r;
	int err_no;
	char err[512];
	char out[65536];   /* data lines, each followed by "\n" */
	size_t outlen;
	size_t nlines;
	int done;
};

static void
collect(const char *line, void *arg)
{
	struct call *c = arg;
	int n;

	n = snprintf(c->out + c->outlen, sizeof(c->out) - c->outlen, "%s\n",
	    line);
	cr_assert(n > 0 && (size_t)n < sizeof(c->out) - c->outlen);
	c->outlen += (size_t)n;
	c->nlines++;
}

static void *
call_thread(void *arg)
{
	struct call *c = arg;

	c->r = control_call(c->path, c->req, 10, collect, c, c->err,
	    sizeof(c->err));
	c->err_no = errno;
	__atomic_store_n(&c->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static int
call_done(void *arg)
{
	struct call *c = arg;

	return __atomic_load_n(&c->done, __ATOMIC_SEQ_CST);
}

static struct call *
call(const char *req)
{
	struct call *c = xcalloc(1, sizeof(*c));
	pthread_t t;

	c->path = sockpath;
	c->req = req;
	cr_assert_eq(pthread_create(&t, NULL, call_thread, c), 0);
	cr_assert(run_until(call_done, c, 15), "no answer to %s", req);
	pthread_join(t, NULL);
	return c;
}

/* ---- raw sockets, for requests control_call never sends ---- */

static int
raw_connect(void)
{
	struct sockaddr_un sun;
	int fd;

	sun_set(&sun, sockpath);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0,
	    "connect: %s", strerror(errno));
	return fd;
}

struct raw {
	int fd;
	const char *send;
	size_t sendlen, sent;
	int shut;          /* shutdown(SHUT_WR) after sending */
	const char *until; /* stop once the input contains it (or EOF) */
	char in[8192];
	size_t inlen;
	int eof;
};

static int
raw_step(void *arg)
{
	struct raw *r = arg;
	ssize_t n;

	while (r->sent < r->sendlen) {
		n = send(r->fd, r->send + r->sent, r->sendlen - r->sent,
		    MSG_NOSIGNAL);
		if (n == -1)
			break;
		r->sent += (size_t)n;
	}
	if (r->sent == r->sendlen && r->shut == 1) {
		shutdown(r->fd, SHUT_WR);
		r->shut = 2;
	}
	while (!r->eof && r->inlen < sizeof(r->in) - 1) {
		n = recv(r->fd, r->in + r->inlen, sizeof(r->in) - 1 -
		    r->inlen, 0);
		if (n == 0)
			r->eof = 1;
		if (n <= 0)
			break;
		r->inlen += (size_t)n;
	}
	r->in[r->inlen] = '\0';
	return r->eof || (r->until != NULL && strstr(r->in, r->until) !=
	    NULL);
}

/* Sends len bytes of data on fd and reads until `until` or EOF. */
static void
raw_exchange(struct raw *r, int fd, const char *data, size_t len,
    const char *until, int shut)
{
	memset(r, 0, sizeof(*r));
	r->fd = fd;
	r->send = data;
	r->sendlen = len;
	r->until = until;
	r->shut = shut;
	cr_assert(run_until(raw_step, r, 10), "no answer; got \"%s\"", r->in);
}

/* ---- messages ---- */

static int committed;
static struct envelope *committed_env;

static void
commit_cb(int error, struct envelope *env, void *arg)
{
	cr_assert_eq(error, 0, "commit: %s", strerror(error));
	committed_env = env;
	committed = 1;
}

static int
is_committed(void *arg)
{
	return committed;
}

static int updated;

static void
update_cb(int error, void *arg)
{
	cr_assert_eq(error, 0, "update: %s", strerror(error));
	updated = 1;
}

static int
is_updated(void *arg)
{
	return updated;
}

/*
 * Commits a message as the server does, records next_try, flags and the
 * first recipient_sent recipients as sent in its file (the scheduler reads
 * messages back from the queue when they are due), and hands it to the
 * scheduler. Returns a copy for the test to read (the scheduler may free
 * its own at any time); the caller frees it.
 */
static struct envelope *
enqueue_sent(const char *sender, const char *const *rcpts, const char *body,
    time_t next_try, unsigned flags, size_t recipient_sent)
{
	struct envelope *env = envelope_new(), *copy;
	struct queue_txn *txn;

	free(env->sender);
	env->sender = xstrdup(sender);
	for (; *rcpts != NULL; rcpts++)
		envelope_add_rcpt(env, *rcpts);
	env->created = time(NULL);
	txn = queue_txn_begin(q, env);
	cr_assert_not_null(txn);
	envelope_free(env);
	cr_assert_eq(queue_txn_write(txn, body, strlen(body)), 0);
	committed = 0;
	committed_env = NULL;
	queue_txn_commit(txn, commit_cb, NULL);
	cr_assert(run_until(is_committed, NULL, 10), "commit timed out");
	env = committed_env;
	env->next_try = next_try;
	env->flags |= flags;
	if (recipient_sent > 0)
		envelope_set_rcpt(env, recipient_sent, RCPT_SENT, "2.0.0",
		    "250 2.0.0 Ok\r\nyes");
	updated = 0;
	queue_update(q, env, update_cb, NULL);
	cr_assert(run_until(is_updated, NULL, 10), "update timed out");
	copy = envelope_dup(env);
	scheduler_add(sched, env);
	return copy;
}

static struct envelope *
enqueue(const char *sender, const char *const *rcpts, const char *body,
    time_t next_try, unsigned flags)
{
	return enqueue_sent(sender, rcpts, body, next_try, flags, 0);
}

struct lookup {
	const char *id;
	unsigned attempts;
	int found;
};

static void
lookup_each(const struct envelope *env, void *arg)
{
	struct lookup *l = arg;

	if (strcmp(env->id, l->id) == 0) {
		l->found = 1;
		l->attempts = env->attempts;
	}
}

/* ---- the socket itself ---- */

Test(control, socket_is_owner_only)
{
	struct stat st;

	cr_assert_eq(lstat(sockpath, &st), 0);
	cr_assert(S_ISSOCK(st.st_mode));
	cr_assert_eq(st.st_mode & 07777, 0600, "mode %o", st.st_mode & 07777);
	cr_assert_eq(st.st_uid, geteuid());
}

Test(control, live_socket_refused_stale_replaced_free_removes)
{
	struct control_params cp;
	struct control *c2;
	char err[512], other[160];
	int fd;

	memset(&cp, 0, sizeof(cp));
	cp.path = sockpath;
	cp.scheduler = sched;
	cp.uid = geteuid();
	c2 = control_new(base, &cp, err, sizeof(err));
	cr_assert_null(c2);
	cr_assert(strstr(err, "another process is listening there") != NULL,
	    "%s", err);
	cr_assert(strstr(err, sockpath) != NULL, "%s", err);

	/* Freeing removes the file; a stale socket file (bound, then its
	 * process gone) is replaced. */
	control_free(ctl);
	ctl = NULL;
	cr_assert_eq(access(sockpath, F_OK), -1);
	{
		struct sockaddr_un sun;

		sun_set(&sun, sockpath);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof(sun)),
		    0);
		close(fd);
	}
	ctl = control_new(base, &cp, err, sizeof(err));
	cr_assert_not_null(ctl, "%s", err);

	/* A file that is not a socket is not ours to remove. */
	snprintf(other, sizeof(other), "%s/plain", spool);
	fd = open(other, O_CREAT | O_WRONLY, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
	cp.path = other;
	cr_assert_null(control_new(base, &cp, err, sizeof(err)));
	cr_assert(strstr(err, "exists and is not a socket") != NULL, "%s",
	    err);
	cr_assert_eq(access(other, F_OK), 0);
}

/* ---- commands ---- */

Test(control, status_reports_pid_uptime_queue_sessions)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct call *c;
	char want[64];
	long uptime = -1;
	const char *p;

	envelope_free(enqueue("alice@example.org", rcpts,
	    "Subject: a\r\n\r\na\r\n", time(NULL) + 3600, 0));
	envelope_free(enqueue("alice@example.org", rcpts,
	    "Subject: b\r\n\r\nb\r\n", 0, ENVELOPE_HOLD));
	c = call("status");
	cr_assert_eq(c->r, CONTROL_OK, "%s", c->err);
	snprintf(want, sizeof(want), "pid: %ld\n", (long)getpid());
	cr_assert(strncmp(c->out, want, strlen(want)) == 0, "%s", c->out);
	cr_assert(strstr(c->out, "\nqueued: 2\n") != NULL, "%s", c->out);
	cr_assert(strstr(c->out, "\nsessions: 0\n") != NULL, "%s", c->out);
	cr_assert(strstr(c->out, "\nstarted: ") != NULL, "%s", c->out);
	p = strstr(c->out, "\nuptime: ");
	cr_assert_not_null(p, "%s", c->out);
	uptime = strtol(p + 9, NULL, 10);
	cr_assert(uptime >= 42 && uptime < 60, "uptime %ld", uptime);
	/* Learned relays last, host:port, IPv6 in brackets. */
	p = strstr(c->out, "\nauth-required: ");
	cr_assert_not_null(p, "%s", c->out);
	cr_assert_str_eq(p, "\nauth-required: smtp.example.com:587\n"
	    "auth-required: [2001:db8::25]:465\n");
	free(c);
}

Test(control, queue_lists_messages_recipients_and_replies)
{
	static const char *const two[] = { "bob@example.net",
	    "carol@example.net", NULL };
	static const char *const one[] = { "dave@example.net", NULL };
	struct envelope *a, *b;
	struct call *c;
	char want[512];

	c = call("queue");
	cr_assert_eq(c->r, CONTROL_OK, "%s", c->err);
	cr_assert_eq(c->nlines, 0, "empty queue, no lines: %s", c->out);
	free(c);

	a = enqueue_sent("alice@example.org", two,
	    "Subject: a\r\n\r\n0123\r\n", time(NULL) + 3600, 0, 1);
	cr_assert_eq(a->body_size, 20);
	b = enqueue("", one, "Subject: b\r\n\r\nb\r\n", 0, ENVELOPE_HOLD);
	cr_assert_eq(b->body_size, 17);
	c = call("queue");
	cr_assert_eq(c->r, CONTROL_OK, "%s", c->err);
	cr_assert_eq(c->nlines, 5, "%s", c->out);
	/* Arrival order; size is the body's; the future next try is a
	 * time, the held message is marked. */
	snprintf(want, sizeof(want), "%s size=20 from=<alice@example.org> "
	    "arrival=", a->id);
	cr_assert(strncmp(c->out, want, strlen(want)) == 0, "%s", c->out);
	cr_assert(strstr(c->out, " attempts=0 next_try=20") != NULL, "%s",
	    c->out);
	cr_assert(strstr(c->out, "\n  to=<bob@example.net> status=pending\n"
	    "  to=<carol@example.net> status=sent dsn=2.0.0 "
	    "(250 2.0.0 Ok\\x0d\\x0ayes)\n") != NULL, "reply on one line: %s",
	    c->out);
	snprintf(want, sizeof(want), "\n%s size=17 from=<> arrival=", b->id);
	cr_assert(strstr(c->out, want) != NULL, "%s", c->out);
	cr_assert(strstr(c->out, "next_try=now held\n  to=<dave@example.net> "
	    "status=pending\n") != NULL, "%s", c->out);
	free(c);
	envelope_free(a);
	envelope_free(b);
}

static struct envelope *watched;

/* The scheduler's view of the watched message, read from its file when it
 * waits. */
static int
watched_attempted(void *arg)
{
	struct lookup l = { watched->id, 0, 0 };

	scheduler_foreach(sched, lookup_each, &l);
	return l.found && l.attempts >= 1;
}

Test(control, flush_makes_deferred_mail_due)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct call *c;

	watched = enqueue("alice@example.org", rcpts, "Subject: a\r\n\r\na\r\n",
	    time(NULL) + 3600, 0);
	/* Not due: nothing happens on its own. */
	cr_assert_not(run_until(watched_attempted, NULL, 0.3));
	c = call("flush");
	cr_assert_eq(c->r, CONTROL_OK, "%s", c->err);
	cr_assert_str_eq(c->out, "flushed: 1\n");
	free(c);
	cr_assert(run_until(watched_attempted, NULL, 10), "never attempted");

	/* The listing shows why it is still queued. */
	c = call("queue");
	cr_assert_eq(c->r, CONTROL_OK, "%s", c->err);
	cr_assert(strstr(c->out, " attempts=1 ") != NULL, "%s", c->out);
	cr_assert(strstr(c->out, "  to=<bob@example.net> status=pending "
	    "dsn=4.4.1 (") != NULL, "%s", c->out);
	free(c);
	envelope_free(watched);
}

Test(control, credentials_changed_and_auth_forget)
{
	struct call *c;

	c = call("credentials-changed");
	cr_assert_eq(c->r, CONTROL_OK, "%s", c->err);
	cr_assert_eq(c->nlines, 0);
	free(c);
	c = call("auth-forget never-seen.example");
	cr_assert_eq(c->r, CONTROL_ERROR);
	cr_assert_str_eq(c->err, "never-seen.example is not marked as "
	    "requiring authentication");
	free(c);

	c = call("auth-forget smtp.example.com");
	cr_assert_eq(c->r, CONTROL_OK, "%s", c->err);
	cr_assert_str_eq(c->out, "forgotten: smtp.example.com\n");
	free(c);
	c = call("auth-forget [2001:db8::25]:465");
	cr_assert_eq(c->r, CONTROL_OK, "%s", c->err);
	free(c);
	c = call("status");
	cr_assert_eq(c->r, CONTROL_OK, "%s", c->err);
	cr_assert_null(strstr(c->out, "auth-required"), "%s", c->out);
	free(c);
	c = call("auth-forget smtp.example.com");
	cr_assert_eq(c->r, CONTROL_ERROR, "forgotten only once");
	free(c);
}

Test(control, unknown_commands_and_bad_arguments)
{
	static const struct {
		const char *req;
		const char *err;
	} cases[] = {
		{ "bogus", "unknown command \"bogus\"" },
		{ "STATUS", "unknown command \"STATUS\"" },
		{ "status now", "usage: status [json]" },
		{ "reload now", "usage: reload" },
		{ "show", "usage: show ID [headers] [json]" },
		{ "hold", "usage: hold ID... (at most 64)" },
		{ "queue soon", "unknown queue filter \"soon\"" },
		{ "queue older-than=x", "older-than takes seconds" },
		{ "auth-forget", "usage: auth-forget HOST[:PORT]" },
		{ "auth-forget a b", "usage: auth-forget HOST[:PORT]" },
		{ "", "empty request" },
		{ "   ", "empty request" },
	};
	struct call *c;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		c = call(cases[i].req);
		cr_assert_eq(c->r, CONTROL_ERROR, "\"%s\"", cases[i].req);
		cr_assert_str_eq(c->err, cases[i].err, "\"%s\"", cases[i].req);
		cr_assert_eq(c->nlines, 0);
		free(c);
	}
	/* Blanks around the command are fine. */
	c = call("  queue\t ");
	cr_assert_eq(c->r, CONTROL_OK, "%s", c->err);
	free(c);
}

Test(control, overlong_request_gets_an_error_and_close)
{
	struct raw r;
	char *big;
	int fd;

	/* Exactly the limit (1023 bytes and LF) is still a request. */
	big = xmalloc(4 * CONTROL_LINE_MAX);
	memset(big, 'x', CONTROL_LINE_MAX - 1);
	big[CONTROL_LINE_MAX - 1] = '\n';
	fd = raw_connect();
	raw_exchange(&r, fd, big, CONTROL_LINE_MAX, "\n.\n", 0);
	cr_assert(strncmp(r.in, "error unknown command \"xxxx", 27) == 0,
	    "%s", r.in);
	cr_assert_not(r.eof, "the connection stays open");
	close(fd);

	/* One more byte is too long; the answer comes before the LF. */
	memset(big, 'x', 4 * CONTROL_LINE_MAX);
	fd = raw_connect();
	raw_exchange(&r, fd, big, CONTROL_LINE_MAX, "\n.\n", 0);
	cr_assert_str_eq(r.in, "error request too long\n.\n");
	raw_exchange(&r, fd, "status\n", 7, NULL, 0);
	cr_assert(r.eof, "closed after the error");
	cr_assert_eq(r.inlen, 0, "%s", r.in);
	close(fd);

	/* Also when the long line does end in a LF. */
	big[CONTROL_LINE_MAX] = '\n';
	fd = raw_connect();
	raw_exchange(&r, fd, big, CONTROL_LINE_MAX + 1, NULL, 0);
	cr_assert_str_eq(r.in, "error request too long\n.\n");
	cr_assert(r.eof);
	close(fd);
	free(big);
}

Test(control, pipelined_crlf_requests_and_half_close)
{
	struct raw r;
	const char *p;
	int fd;

	fd = raw_connect();
	raw_exchange(&r, fd, "queue\r\nflush\nnope\n", 18,
	    "unknown command \"nope\"\n.\n", 0);
	cr_assert_str_eq(r.in, "ok\n.\nok\nflushed: 0\n.\nerror unknown "
	    "command \"nope\"\n.\n");
	close(fd);

	/* printf status | socat - UNIX-CONNECT:...: no LF, then EOF. */
	fd = raw_connect();
	raw_exchange(&r, fd, "status", 6, NULL, 1);
	cr_assert(r.eof);
	cr_assert(strncmp(r.in, "ok\npid: ", 8) == 0, "%s", r.in);
	p = r.in + r.inlen - 3;
	cr_assert_str_eq(p, "\n.\n");
	close(fd);

	/* Control characters are refused, not echoed. */
	fd = raw_connect();
	raw_exchange(&r, fd, "sta\001tus\n", 8, "\n.\n", 0);
	cr_assert_str_eq(r.in, "error malformed request: control "
	    "characters\n.\n");
	close(fd);
}

Test(control, connection_limit)
{
	struct raw r;
	int fds[CONTROL_CLIENTS_MAX], fd, i;

	for (i = 0; i < CONTROL_CLIENTS_MAX; i++) {
		fds[i] = raw_connect();
		raw_exchange(&r, fds[i], "queue\n", 6, "\n.\n", 0);
		cr_assert_str_eq(r.in, "ok\n.\n");
	}
	fd = raw_connect();
	raw_exchange(&r, fd, "", 0, NULL, 0);
	cr_assert_str_eq(r.in, "error too many control connections\n.\n");
	cr_assert(r.eof);
	close(fd);
	close(fds[0]);
	/* Once one leaves, the next is served. */
	fd = raw_connect();
	raw_exchange(&r, fd, "queue\n", 6, "\n.\n", 0);
	cr_assert_str_eq(r.in, "ok\n.\n");
	close(fd);
	for (i = 1; i < CONTROL_CLIENTS_MAX; i++)
		close(fds[i]);
}

static pid_t child;

static int
child_exited(void *arg)
{
	int *status = arg;

	return waitpid(child, status, WNOHANG) == child;
}

Test(control, other_users_are_refused)
{
	int status = -1;

	if (geteuid() != 0)
		cr_skip_test("needs root to connect as another user");
	/* Let nobody reach the socket: only the peer check stands. */
	cr_assert_eq(chmod(topdir, 0711), 0);
	cr_assert_eq(chmod(spool, 0711), 0);
	cr_assert_eq(chmod(sockpath, 0666), 0);
	child = fork();
	cr_assert_geq(child, 0);
	if (child == 0) {
		char err[512];
		enum control_result r;

		if (setgid(65534) == -1 || setuid(65534) == -1)
			_exit(10);
		r = control_call(sockpath, "flush", 10, NULL, NULL, err,
		    sizeof(err));
		if (r != CONTROL_ERROR)
			_exit(20 + (int)r);
		_exit(strcmp(err, "permission denied") == 0 ? 0 : 30);
	}
	cr_assert(run_until(child_exited, &status, 15), "child hangs");
	cr_assert(WIFEXITED(status));
	cr_assert_eq(WEXITSTATUS(status), 0, "child exit %d",
	    WEXITSTATUS(status));
}

/* ---- control_call against scripted servers ---- */

Test(client, nobody_listening)
{
	char err[512], path[160];
	enum control_result r;
	int fd;

	r = control_call("/nonexistent/control.sock", "status", 5, NULL, NULL,
	    err, sizeof(err));
	cr_assert_eq(r, CONTROL_UNAVAILABLE);
	cr_assert_eq(errno, ENOENT);
	cr_assert_str_eq(err, "cannot connect to /nonexistent/control.sock: "
	    "No such file or directory");

	/* A stale socket file: connection refused. */
	snprintf(path, sizeof(path), "/tmp/test_control_stale.%ld.sock",
	    (long)getpid());
	{
		struct sockaddr_un sun;

		sun_set(&sun, path);
		unlink(path);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof(sun)),
		    0);
		close(fd);
	}
	r = control_call(path, "status", 5, NULL, NULL, err, sizeof(err));
	unlink(path);
	cr_assert_eq(r, CONTROL_UNAVAILABLE);
	cr_assert_eq(errno, ECONNREFUSED);
}

/* A path that does not fit in sun_path is refused before any socket. */
Test(client, path_too_long)
{
	char err[512], path[200];
	enum control_result r;

	memset(path, 'x', sizeof(path) - 1);
	path[0] = '/';
	path[sizeof(path) - 1] = '\0';
	r = control_call(path, "status", 5, NULL, NULL, err, sizeof(err));
	cr_assert_eq(r, CONTROL_UNAVAILABLE);
	cr_assert_eq(errno, ENAMETOOLONG);
	cr_assert(strncmp(err, "cannot connect to /xxx", 22) == 0, "%s", err);
	cr_assert(strstr(err, ": path too long") != NULL, "%s", err);
}

struct script {
	int lfd;
	const char *reply;   /* sent after the request line; NULL: nothing */
	int hold;            /* keep the connection open after the reply */
	char request[256];
};

static void *
script_thread(void *arg)
{
	struct script *s = arg;
	size_t len = 0;
	ssize_t n;
	int fd;

	if ((fd = accept(s->lfd, NULL, NULL)) == -1)
		return NULL;
	while (len < sizeof(s->request) - 1 &&
	    memchr(s->request, '\n', len) == NULL) {
		n = read(fd, s->request + len, sizeof(s->request) - 1 - len);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	if (s->reply != NULL) {
		n = write(fd, s->reply, strlen(s->reply));
		cr_assert_eq(n, (ssize_t)strlen(s->reply));
	}
	if (s->hold)
		sleep(3);
	close(fd);
	return NULL;
}

static enum control_result
scripted(const char *reply, int hold, unsigned timeout, struct call *c)
{
	struct sockaddr_un sun;
	struct script s;
	pthread_t t;
	char path[160];

	memset(&s, 0, sizeof(s));
	memset(c, 0, sizeof(*c));
	snprintf(path, sizeof(path), "/tmp/test_control_script.%ld.sock",
	    (long)getpid());
	unlink(path);
	sun_set(&sun, path);
	s.lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_eq(bind(s.lfd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	cr_assert_eq(listen(s.lfd, 1), 0);
	s.reply = reply;
	s.hold = hold;
	cr_assert_eq(pthread_create(&t, NULL, script_thread, &s), 0);
	c->r = control_call(path, "queue", timeout, collect, c, c->err,
	    sizeof(c->err));
	pthread_join(t, NULL);
	close(s.lfd);
	unlink(path);
	cr_assert_str_eq(s.request, "queue\n");
	return c->r;
}

Test(client, unstuffs_data_lines)
{
	struct call c;

	cr_assert_eq(scripted("ok\n..hidden\n...\nplain\r\n.\n", 0, 5, &c),
	    CONTROL_OK, "%s", c.err);
	cr_assert_str_eq(c.out, ".hidden\n..\nplain\n");
	cr_assert_eq(c.nlines, 3);
}

Test(client, error_reply)
{
	struct call c;

	cr_assert_eq(scripted("error no such thing\n.\n", 0, 5, &c),
	    CONTROL_ERROR);
	cr_assert_str_eq(c.err, "no such thing");
	/* A refusal cut short by the close still counts as the answer. */
	cr_assert_eq(scripted("error permission denied\n", 0, 5, &c),
	    CONTROL_ERROR);
	cr_assert_str_eq(c.err, "permission denied");
}

Test(client, malformed_truncated_and_slow_replies_fail)
{
	struct call c;

	cr_assert_eq(scripted("hello\n.\n", 0, 5, &c), CONTROL_FAILED);
	cr_assert(strstr(c.err, "malformed response") != NULL, "%s", c.err);
	cr_assert_eq(scripted("ok\nline\n", 0, 5, &c), CONTROL_FAILED);
	cr_assert(strstr(c.err, "connection closed before the end") != NULL,
	    "%s", c.err);
	cr_assert_str_eq(c.out, "line\n");
	cr_assert_eq(scripted(NULL, 0, 5, &c), CONTROL_FAILED);
	cr_assert_eq(scripted("ok\n", 1, 1, &c), CONTROL_FAILED);
	cr_assert(strstr(c.err, "no response in time") != NULL, "%s", c.err);
}
