/*
 * scheduler.c, relay.c and maildir.c: the pure parts (backoff, outcome
 * text, CRLF to LF) directly, and delivery end to end inside the process
 * with the real queue, worker pool and SMTP client, against a Maildir, a
 * closed port and a scripted SMTP server on port 0 that runs on the same
 * event loop.
 *
 * Faults are injected with the linker: this test is linked with
 * -Wl,--wrap=fdatasync (Makefile.am), so queue.c's data syncs go through
 * __wrap_fdatasync below, which fails the next fault_fdatasync_fail calls.
 */
#define _GNU_SOURCE 1 /* mkdtemp */

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "config.h"
#include "envelope.h"
#include "log.h"
#include "maildir.h"
#include "outcome.h"
#include "queue.h"
#include "relay.h"
#include "sasl.h"
#include "scheduler.h"
#include "worker.h"
#include "xmalloc.h"

/* ---- fault injection ---- */

int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);

static int fault_fdatasync_fail;	/* next calls that fail with EIO */
static int fdatasync_ok_after_fault;	/* successes since one failed */

int
__wrap_fdatasync(int fd)
{
	if (__atomic_load_n(&fault_fdatasync_fail, __ATOMIC_SEQ_CST) > 0) {
		__atomic_sub_fetch(&fault_fdatasync_fail, 1, __ATOMIC_SEQ_CST);
		errno = EIO;
		return -1;
	}
	if (__real_fdatasync(fd) == -1)
		return -1;
	__atomic_add_fetch(&fdatasync_ok_after_fault, 1, __ATOMIC_SEQ_CST);
	return 0;
}

/* ---- pure functions ---- */

Test(backoff, doubles_from_min)
{
	cr_assert_eq(scheduler_backoff(300, 4000, 1), 300);
	cr_assert_eq(scheduler_backoff(300, 4000, 2), 600);
	cr_assert_eq(scheduler_backoff(300, 4000, 3), 1200);
	cr_assert_eq(scheduler_backoff(300, 4000, 4), 2400);
}

Test(backoff, clamps_to_max)
{
	cr_assert_eq(scheduler_backoff(300, 4000, 5), 4000);
	cr_assert_eq(scheduler_backoff(300, 4000, 6), 4000);
	cr_assert_eq(scheduler_backoff(300, 300, 1), 300);
	cr_assert_eq(scheduler_backoff(300, 300, 9), 300);
	/* A max below the min still wins: it is the clamp. */
	cr_assert_eq(scheduler_backoff(300, 100, 1), 100);
}

Test(backoff, huge_attempts_do_not_overflow)
{
	cr_assert_eq(scheduler_backoff(300, 4000, 1000), 4000);
	cr_assert_eq(scheduler_backoff(300, 4000, UINT_MAX), 4000);
	cr_assert_eq(scheduler_backoff(1, UINT_MAX, 31), 1u << 30);
	cr_assert_eq(scheduler_backoff(1, UINT_MAX, 33), UINT_MAX);
	cr_assert_eq(scheduler_backoff(1, UINT_MAX, UINT_MAX), UINT_MAX);
	cr_assert_eq(scheduler_backoff(UINT_MAX / 2 + 1, UINT_MAX, 2),
	    UINT_MAX);
}

Test(backoff, no_attempt_yet_means_now)
{
	cr_assert_eq(scheduler_backoff(300, 4000, 0), 0);
}

Test(relay_text, tls_prefix_and_one_line)
{
	struct outcome o;
	char buf[OUTCOME_TEXT_MAX + 8];

	outcome_set(&o, OUTCOME_TEMPORARY, OC_TLS,
	    "certificate verify failed: hostname mismatch");
	relay_outcome_text(&o, buf, sizeof(buf));
	cr_assert_str_eq(buf, "TLS: certificate verify failed: hostname "
	    "mismatch");
	outcome_set(&o, OUTCOME_TEMPORARY, OC_TLS,
	    "TLS: server does not offer STARTTLS");
	relay_outcome_text(&o, buf, sizeof(buf));
	cr_assert_str_eq(buf, "TLS: server does not offer STARTTLS");
	outcome_from_reply(&o, 550, "5.1.1", "no such user\nreally");
	relay_outcome_text(&o, buf, sizeof(buf));
	cr_assert_str_eq(buf, "550 5.1.1 no such user really");
}

Test(relay_text, defer_all_only_touches_pending)
{
	struct envelope *env = envelope_new();
	struct outcome o;

	snprintf(env->id, sizeof(env->id), "0123456789ABCDEF");
	envelope_add_rcpt(env, "a@example.org");
	envelope_add_rcpt(env, "b@example.org");
	envelope_set_rcpt(env, 0, RCPT_SENT, "2.0.0", "250 ok");
	outcome_set(&o, OUTCOME_PERMANENT, OC_CONNECT, "connect to x: refused");
	relay_defer_all(env, "x:25", &o);
	cr_assert_eq(env->rcpts[0].status, RCPT_SENT);
	cr_assert_str_eq(env->rcpts[0].reply, "250 ok");
	cr_assert_eq(env->rcpts[1].status, RCPT_PENDING);
	cr_assert_str_eq(env->rcpts[1].reply, "connect to x: refused");
	/* Pending recipients never carry a permanent code. */
	cr_assert_str_eq(env->rcpts[1].dsn, "4.4.1");
	envelope_free(env);
}

static size_t
lf_all(const char *in, size_t split, char *out)
{
	struct maildir_lf c;
	size_t n;

	maildir_lf_init(&c);
	n = maildir_lf_convert(&c, in, split, out);
	n += maildir_lf_convert(&c, in + split, strlen(in) - split, out + n);
	n += maildir_lf_finish(&c, out + n);
	out[n] = '\0';
	return n;
}

Test(maildir_lf, crlf_becomes_lf_at_any_split)
{
	const char *in = "a\r\nb\r\n\r\nc\rd\r";
	char out[64];
	size_t i;

	for (i = 0; i <= strlen(in); i++) {
		lf_all(in, i, out);
		cr_assert_str_eq(out, "a\nb\n\nc\rd\r", "split at %zu", i);
	}
}

/* ---- fixture: spool, Maildir, loop, queue, worker ---- */

static char topdir[64];
static char spool[128];
static char mdir[128];
static struct event_base *base;
static struct queue *q;
static struct worker *w;
static struct config *cfg;
static struct scheduler *sched;
static char cfg_extra[1024];    /* top-level settings for load_config */

static void
setup(void)
{
	char err[256];

	log_init("test_scheduler", 0);
	snprintf(topdir, sizeof(topdir), "/tmp/test_scheduler.XXXXXX");
	cr_assert_not_null(mkdtemp(topdir));
	snprintf(spool, sizeof(spool), "%s/spool", topdir);
	snprintf(mdir, sizeof(mdir), "%s/Maildir", topdir);
	cr_assert_eq(mkdir(spool, 0700), 0);
	cr_assert_eq(evthread_use_pthreads(), 0);
	cr_assert_not_null(base = event_base_new());
	q = queue_open(base, spool, SPOOL_SYNC_FSYNC, 0, err, sizeof(err));
	cr_assert_not_null(q, "%s", err);
	/* Messages as files: the tests count them in queue/. (The daemon's
	 * default, the spool log, is covered by test_queue and e2e.) */
	queue_log_max(q, 0);
	w = worker_new(base, 2);
}

/* The daemon's teardown order (fixture.h). */
static void
stop_all(void)
{
	fixture_stop(&w, &q, &sched);
}

static void
teardown(void)
{
	stop_all();
	config_free(cfg);
	cfg = NULL;
	if (base != NULL)
		event_base_free(base);
	base = NULL;
	fixture_rmtree(topdir);
}

TestSuite(deliver, .init = setup, .fini = teardown, .timeout = 60);

static void
load_config(const char *relays, const char *queue_opts)
{
	char text[2048], err[512];

	snprintf(text, sizeof(text),
	    "hostname = \"mx.test.example\";\n"
	    "spool = \"%s\";\n"
	    "queue = { %s };\n"
	    "relays = { %s };\n%s", spool, queue_opts, relays, cfg_extra);
	cfg = config_parse_string(text, "test.conf", err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	sched = scheduler_new(base, NULL, q, w, cfg);
}

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
call_cond(void *arg)
{
	int (**cond)(void) = arg;

	return (*cond)();
}

/* Runs the loop in 20 ms slices until cond() holds or secs pass. */
static int
run_until(int (*cond)(void), double secs)
{
	return fixture_run_until(base, call_cond, &cond, secs, 20);
}

static int
is_committed(void)
{
	return committed;
}

/* Commits a message the way the server does; returns its envelope. */
static struct envelope *
enqueue(const char *sender, const char *const *rcpts, const char *body,
    time_t created)
{
	struct envelope *env = envelope_new();
	struct queue_txn *txn;

	free(env->sender);
	env->sender = xstrdup(sender);
	for (; *rcpts != NULL; rcpts++)
		envelope_add_rcpt(env, *rcpts);
	env->created = created;
	txn = queue_txn_begin(q, env);
	cr_assert_not_null(txn);
	envelope_free(env);
	cr_assert_eq(queue_txn_write(txn, body, strlen(body)), 0);
	committed = 0;
	committed_env = NULL;
	queue_txn_commit(txn, commit_cb, NULL);
	cr_assert(run_until(is_committed, 10), "commit timed out");
	return committed_env;
}

static size_t
dir_count(const char *dir, char *first, size_t firstlen)
{
	DIR *d;
	struct dirent *de;
	size_t n = 0;

	if ((d = opendir(dir)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (n++ == 0 && first != NULL)
			snprintf(first, firstlen, "%s", de->d_name);
	}
	closedir(d);
	return n;
}

static int
queue_empty(void)
{
	char dir[256];

	snprintf(dir, sizeof(dir), "%s/queue", spool);
	return scheduler_count(sched) == 0 && dir_count(dir, NULL, 0) == 0;
}

static char *
slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "r");
	char *buf;

	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	buf = xmalloc(65536);
	*len = fread(buf, 1, 65535, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

Test(deliver, maildir_gets_lf_message_and_queue_file_goes)
{
	static const char *const rcpts[] = { "bob@example.net",
	    "carol@example.net", NULL };
	const char *body = "Subject: hi\r\nFrom: alice@example.org\r\n\r\n"
	    "line one\r\n.dot line\r\n";
	char relays[512], newdir[256], name[256], path[600], *got;
	struct envelope *env;
	size_t len;

	snprintf(relays, sizeof(relays), "box = { type = \"maildir\"; "
	    "path = \"%s\"; };", mdir);
	load_config(relays, "retry_min = 60; retry_max = 600;");
	env = enqueue("alice@example.org", rcpts, body, time(NULL));
	scheduler_add(sched, env);
	cr_assert_eq(scheduler_count(sched), 1);
	cr_assert(run_until(queue_empty, 10), "message still queued");

	snprintf(newdir, sizeof(newdir), "%s/new", mdir);
	cr_assert_eq(dir_count(newdir, name, sizeof(name)), 1,
	    "one file per message, not per recipient");
	snprintf(path, sizeof(path), "%s/%s", newdir, name);
	got = slurp(path, &len);
	cr_assert_str_eq(got, "Subject: hi\nFrom: alice@example.org\n\n"
	    "line one\n.dot line\n");
	cr_assert_null(memchr(got, '\r', len));
	free(got);
	snprintf(path, sizeof(path), "%s/tmp", mdir);
	cr_assert_eq(dir_count(path, NULL, 0), 0, "nothing left in tmp/");
	snprintf(path, sizeof(path), "%s/cur", mdir);
	cr_assert_eq(dir_count(path, NULL, 0), 0);
}

/* A port on 127.0.0.1 that nobody listens on. */
static int
closed_port(void)
{
	int port = fixture_closed_port();

	cr_assert_gt(port, 0);
	return port;
}

struct lookup {
	const char *id;
	struct envelope *env;
};

static void
lookup_each(const struct envelope *env, void *arg)
{
	struct lookup *l = arg;

	if (strcmp(env->id, l->id) == 0) {
		envelope_free(l->env);
		l->env = envelope_dup(env);
	}
}

/* Refreshes *snap, a copy, from the scheduler's view of that message (read
 * from its file while it waits); the scheduler may free its own envelope
 * at any time after scheduler_add(). */
static void
refresh(struct envelope **snap)
{
	struct lookup l = { (*snap)->id, NULL };

	scheduler_foreach(sched, lookup_each, &l);
	if (l.env != NULL) {
		envelope_free(*snap);
		*snap = l.env;
	}
}

/* A copy of the message the test watches. */
static struct envelope *watched;

/* Queues a message from alice@example.org to rcpts whose subject and
 * body are letter, hands it to the scheduler, and watches it. */
static void
submit_watched(const char *const *rcpts, const char *letter)
{
	char body[64];
	struct envelope *env;

	snprintf(body, sizeof(body), "Subject: %s\r\n\r\n%s\r\n", letter,
	    letter);
	env = enqueue("alice@example.org", rcpts, body, time(NULL));
	watched = envelope_dup(env);
	scheduler_add(sched, env);
}

static int
watched_attempted(void)
{
	refresh(&watched);
	return watched->attempts >= 1;
}

static struct envelope *loaded[8];
static size_t nloaded;

static void
load_cb(struct envelope *env, void *arg)
{
	cr_assert_lt(nloaded, 8);
	loaded[nloaded++] = env;
}

/* Closes everything and reads the spool back as a restart would. */
static void
reload_queue(void)
{
	char err[256];

	stop_all();
	q = queue_open(base, spool, SPOOL_SYNC_FSYNC, 0, err, sizeof(err));
	cr_assert_not_null(q, "%s", err);
	queue_log_max(q, 0);
	nloaded = 0;
	queue_load(q, load_cb, NULL);
}

Test(deliver, closed_port_defers_and_persists)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512], id[ENVELOPE_ID_MAX];
	struct envelope *env;
	time_t before;

	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; };", closed_port());
	load_config(relays, "retry_min = 60; retry_max = 600;");
	env = enqueue("alice@example.org", rcpts, "Subject: x\r\n\r\nx\r\n",
	    time(NULL));
	snprintf(id, sizeof(id), "%s", env->id);
	before = time(NULL);
	watched = envelope_dup(env);
	scheduler_add(sched, env);
	cr_assert(run_until(watched_attempted, 10), "never attempted");
	cr_assert_eq(watched->attempts, 1);
	cr_assert_eq(watched->rcpts[0].status, RCPT_PENDING);
	cr_assert_geq(watched->next_try, before + 60);
	cr_assert_leq(watched->next_try, time(NULL) + 60);
	cr_assert_eq(scheduler_count(sched), 1);

	/* What a restart finds. */
	reload_queue();
	cr_assert_eq(nloaded, 1);
	cr_assert_str_eq(loaded[0]->id, id);
	cr_assert_eq(loaded[0]->attempts, 1);
	cr_assert_geq(loaded[0]->next_try, before + 60);
	cr_assert_leq(loaded[0]->next_try, time(NULL) + 60);
	cr_assert_eq(loaded[0]->rcpts[0].status, RCPT_PENDING);
	cr_assert_str_eq(loaded[0]->rcpts[0].dsn, "4.4.1");
	cr_assert_not_null(loaded[0]->rcpts[0].reply);
	envelope_free(loaded[0]);
}

static int
only_dsn_left(void)
{
	char dir[256];

	snprintf(dir, sizeof(dir), "%s/queue", spool);
	return watched == NULL && dir_count(dir, NULL, 0) == 1 &&
	    scheduler_count(sched) == 1;
}

static int removed_seen;

/* Detects the original message's removal: its envelope is freed, so we
 * watch the spool file instead. */
static char watched_path[512];

static int
watched_gone(void)
{
	if (access(watched_path, F_OK) == -1 && errno == ENOENT) {
		envelope_free(watched);
		watched = NULL;
		removed_seen = 1;
	}
	return only_dsn_left();
}

/* The text of env's message in the queue; caller frees. */
static char *
queued_text(struct envelope *env)
{
	char *text;
	ssize_t r;
	int fd;

	fd = queue_body_open(q, env);
	cr_assert_geq(fd, 0);
	text = xcalloc(1, (size_t)env->body_size + 1);
	r = pread(fd, text, (size_t)env->body_size, env->body_offset);
	cr_assert_eq(r, env->body_size);
	close(fd);
	return text;
}

Test(deliver, expired_message_bounces_to_sender)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512], *text;
	struct envelope *env, *dsn;

	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; };", closed_port());
	load_config(relays, "retry_min = 60; retry_max = 600; lifetime = 10;");
	/* Queued long ago: the first failure is its last. */
	env = enqueue("alice@example.org", rcpts,
	    "Subject: old news\r\nX-Marker: kept\r\n\r\nbody\r\n",
	    time(NULL) - 100);
	snprintf(watched_path, sizeof(watched_path), "%s/queue/%s", spool,
	    env->id);
	watched = envelope_dup(env);
	scheduler_add(sched, env);
	cr_assert(run_until(watched_gone, 10), "no bounce replaced it");
	cr_assert(removed_seen);

	reload_queue();
	cr_assert_eq(nloaded, 1);
	dsn = loaded[0];
	cr_assert_str_eq(dsn->sender, "");
	cr_assert(dsn->flags & ENVELOPE_BOUNCE);
	cr_assert_eq(dsn->nrcpts, 1);
	cr_assert_str_eq(dsn->rcpts[0].addr, "alice@example.org");

	text = queued_text(dsn);
	cr_assert_not_null(strstr(text, "To: <alice@example.org>\r\n"));
	cr_assert_not_null(strstr(text,
	    "Final-Recipient: rfc822; bob@example.net\r\n"));
	cr_assert_not_null(strstr(text, "Action: failed\r\n"));
	cr_assert_not_null(strstr(text, "Status: 4.4.1\r\n"));
	cr_assert_not_null(strstr(text, "X-Marker: kept\r\n"));
	cr_assert_null(strstr(text, "body\r\n"), "only the headers return");
	free(text);
	envelope_free(dsn);
}

Test(deliver, held_message_never_expires_until_released)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512], id[ENVELOPE_ID_MAX], dir[256];
	struct envelope *env, *dsn;

	snprintf(dir, sizeof(dir), "%s/queue", spool);
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; };", closed_port());
	load_config(relays, "retry_min = 60; retry_max = 600; lifetime = 10;");
	/* Past its lifetime: one failed attempt would expire it. */
	env = enqueue("alice@example.org", rcpts,
	    "Subject: held\r\n\r\nbody\r\n", time(NULL) - 100);
	snprintf(id, sizeof(id), "%s", env->id);
	snprintf(watched_path, sizeof(watched_path), "%s/queue/%s", spool,
	    env->id);
	watched = envelope_dup(env);
	scheduler_add(sched, env);
	cr_assert_eq(scheduler_hold(sched, id), 0, "hold: %s",
	    strerror(errno));
	scheduler_flush(sched);
	run_until(queue_empty, 1);
	cr_assert_eq(scheduler_count(sched), 1, "expired while held");
	cr_assert_eq(dir_count(dir, NULL, 0), 1, "a notification was queued");
	refresh(&watched);
	cr_assert_eq(watched->attempts, 0);
	cr_assert(watched->flags & ENVELOPE_HOLD);

	/* Released: tried at once, and the failure is its last. */
	cr_assert_eq(scheduler_release(sched, id), 0, "release: %s",
	    strerror(errno));
	cr_assert(run_until(watched_gone, 10), "not expired once released");
	reload_queue();
	cr_assert_eq(nloaded, 1);
	dsn = loaded[0];
	cr_assert(dsn->flags & ENVELOPE_BOUNCE);
	cr_assert_str_eq(dsn->rcpts[0].addr, "alice@example.org");
}

static unsigned watched_min_attempts;

/* The watched message was tried often enough and its last state record
 * is on disk (the flush after the record's append has run). */
static int
watched_retried(void)
{
	refresh(&watched);
	return watched->attempts >= watched_min_attempts;
}

/* Splits loaded[] into the original and the notifications (counted). */
static struct envelope *
loaded_split(struct envelope **dsn, size_t *ndsn)
{
	struct envelope *orig = NULL;
	size_t i;

	*ndsn = 0;
	for (i = 0; i < nloaded; i++) {
		if (loaded[i]->flags & ENVELOPE_BOUNCE) {
			*dsn = loaded[i];
			(*ndsn)++;
		} else
			orig = loaded[i];
	}
	cr_assert_not_null(orig);
	return orig;
}

Test(deliver, delay_warning_is_sent_once_and_survives_restart)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512], id[ENVELOPE_ID_MAX], dir[256], *text;
	struct envelope *env, *orig, *dsn = NULL;
	size_t ndsn, i;
	unsigned attempts;

	snprintf(dir, sizeof(dir), "%s/queue", spool);
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; };", closed_port());
	load_config(relays, "retry_min = 1; retry_max = 1; lifetime = \"1h\"; "
	    "delay_warning = 10;");
	/* Older than delay_warning, far from its lifetime. */
	env = enqueue("alice@example.org", rcpts,
	    "Subject: slow\r\nX-Marker: kept\r\n\r\nbody\r\n",
	    time(NULL) - 100);
	snprintf(id, sizeof(id), "%s", env->id);
	watched = envelope_dup(env);
	watched_min_attempts = 3;
	scheduler_add(sched, env);
	cr_assert(run_until(watched_retried, 20), "not retried");
	cr_assert(watched->flags & ENVELOPE_DELAY_WARNED);
	cr_assert_eq(watched->rcpts[0].status, RCPT_PENDING);
	envelope_free(watched);

	/* Three attempts, one warning: the original and one notification. */
	reload_queue();
	cr_assert_eq(nloaded, 2);
	orig = loaded_split(&dsn, &ndsn);
	cr_assert_eq(ndsn, 1);
	cr_assert_str_eq(orig->id, id);
	cr_assert(orig->flags & ENVELOPE_DELAY_WARNED, "flag not persisted");
	cr_assert_str_eq(dsn->sender, "");
	cr_assert_str_eq(dsn->rcpts[0].addr, "alice@example.org");
	text = queued_text(dsn);
	cr_assert_not_null(strstr(text,
	    "Subject: Delayed Mail (still being retried)\r\n"));
	cr_assert_not_null(strstr(text, "Action: delayed\r\n"));
	cr_assert_not_null(strstr(text, "Status: 4.4.1\r\n"));
	cr_assert_not_null(strstr(text, "Will-Retry-Until: "));
	cr_assert_not_null(strstr(text, "X-Marker: kept\r\n"));
	free(text);

	/* After a restart the flag holds: more attempts, no second one. */
	w = worker_new(base, 2);
	sched = scheduler_new(base, NULL, q, w, cfg);
	attempts = orig->attempts;
	watched = envelope_dup(orig);
	watched_min_attempts = attempts + 2;
	for (i = 0; i < nloaded; i++)
		scheduler_add(sched, loaded[i]);
	cr_assert(run_until(watched_retried, 20), "not retried after restart");
	cr_assert_eq(dir_count(dir, NULL, 0), 2, "a second warning was queued");
	envelope_free(watched);
	watched = NULL;
}

Test(deliver, no_delay_warning_for_the_null_sender)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512], dir[256];
	struct envelope *b;

	snprintf(dir, sizeof(dir), "%s/queue", spool);
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; };", closed_port());
	load_config(relays, "retry_min = 1; retry_max = 1; lifetime = \"1h\"; "
	    "delay_warning = 10;");
	b = enqueue("", rcpts, "Subject: b\r\n\r\nx\r\n", time(NULL) - 100);
	watched = envelope_dup(b);
	scheduler_add(sched, b);
	watched_min_attempts = 2;
	cr_assert(run_until(watched_retried, 20), "not retried");
	cr_assert_eq(dir_count(dir, NULL, 0), 1);
	cr_assert_not(watched->flags & ENVELOPE_DELAY_WARNED);
	envelope_free(watched);
	watched = NULL;
}

Test(delay_warning, due_rules)
{
	struct envelope *env = envelope_new();
	time_t now = 1700000000;

	free(env->sender);
	env->sender = xstrdup("alice@example.org");
	envelope_add_rcpt(env, "bob@example.net");
	env->created = now - 3600;
	cr_assert(scheduler_delay_warning_due(env, 3600, now));
	cr_assert_not(scheduler_delay_warning_due(env, 3601, now),
	    "not old enough");
	cr_assert_not(scheduler_delay_warning_due(env, 0, now), "0 disables");
	env->flags = ENVELOPE_DELAY_WARNED;
	cr_assert_not(scheduler_delay_warning_due(env, 60, now), "once");
	env->flags = ENVELOPE_BOUNCE;
	cr_assert_not(scheduler_delay_warning_due(env, 60, now),
	    "never about a notification");
	env->flags = 0;
	envelope_set_rcpt(env, 0, RCPT_SENT, "2.0.0", NULL);
	cr_assert_not(scheduler_delay_warning_due(env, 60, now),
	    "nothing pending");
	envelope_set_rcpt(env, 0, RCPT_PENDING, "4.4.1", NULL);
	free(env->sender);
	env->sender = xstrdup("");
	cr_assert_not(scheduler_delay_warning_due(env, 60, now),
	    "never to the null sender");
	envelope_free(env);
}

/* ---- a scripted SMTP server on the test's own loop ---- */

#define FAKE_MAX 96

struct fake_msg {
	int conn;
	char from[256];
	char rcpts[512];
	char *data;
};

static struct {
	struct evconnlistener *l;
	int port;
	int nconn;
	int nmsgs;
	int nmail;            /* MAIL commands answered 250 */
	int in_data;          /* a client is sending a body */
	int eom_delay_ms;     /* hold the reply to "."; -1: forever */
	int per_conn[FAKE_MAX];
	struct fake_msg msgs[FAKE_MAX];
	/* AUTH CRAM-MD5 (offered and required when auth is set) */
	int auth;
	char user[64];
	char password[64];
	int nauth_ok;
	int nauth_bad;
	int n530;
	int authed_before_mail[FAKE_MAX]; /* first MAIL came after 235 */
	int saw_mail[FAKE_MAX];
	int close_after_530;  /* hang up after this many more 530s */
	int active;           /* connections open now */
	int max_active;       /* ... at most, so far */
	const char *greeting; /* NULL: 220 */
	int drop_reused_mail; /* hang up on this many MAILs, without a
	                         reply, on connections that took a message */
	int ndropped;
	int greeting_delay_ms; /* a slow connection set-up */
	int eom_stall;        /* the next this many "." get no reply */
	int nstalled;         /* ... so far: not in nmsgs */
} fake;

#define FAKE_CHALLENGE "<4711.1234567890@fake.test>"


struct fake_conn {
	int id;
	struct bufferevent *bev;
	struct event *ev_greet; /* greeting_delay_ms */
	int authed;
	int auth_step;        /* CRAM-MD5 challenge sent */
	int in_data;
	int closing;
	int drop;             /* hang up now, without a reply */
	int nok;
	char from[256];
	char rcpts[512];
	struct evbuffer *data;
};

static void
fake_reply(struct bufferevent *bev, const char *s)
{
	bufferevent_write(bev, s, strlen(s));
}

static void
fake_free(struct bufferevent *bev, struct fake_conn *fc)
{
	fake.active--;
	if (fc->ev_greet != NULL)
		event_free(fc->ev_greet);
	evbuffer_free(fc->data);
	free(fc);
	bufferevent_free(bev);
}

static void
fake_write_cb(struct bufferevent *bev, void *arg)
{
	struct fake_conn *fc = arg;

	if (fc->closing)
		fake_free(bev, fc);
}

static void
fake_event_cb(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		fake_free(bev, arg);
}

static void
fake_eom_reply(evutil_socket_t fd, short what, void *arg)
{
	fake_reply(arg, "250 2.0.0 Ok: queued\r\n");
}

static void
fake_line(struct bufferevent *bev, struct fake_conn *fc, const char *line)
{
	struct fake_msg *m;
	size_t len;

	if (fc->in_data) {
		if (strcmp(line, ".") == 0) {
			fc->in_data = 0;
			if (fake.eom_stall > 0) {
				fake.eom_stall--;
				fake.nstalled++;
				return;
			}
			if (fake.eom_delay_ms != 0) {
				struct timeval tv = { 0,
				    fake.eom_delay_ms * 1000 };

				/* Counted only once answered. */
				if (fake.eom_delay_ms > 0)
					event_base_once(base, -1, EV_TIMEOUT,
					    fake_eom_reply, bev, &tv);
				fake.per_conn[fc->id]++;
				fake.nmsgs++;
				return;
			}
			cr_assert_lt(fake.nmsgs, FAKE_MAX);
			m = &fake.msgs[fake.nmsgs++];
			m->conn = fc->id;
			snprintf(m->from, sizeof(m->from), "%s", fc->from);
			snprintf(m->rcpts, sizeof(m->rcpts), "%s", fc->rcpts);
			len = evbuffer_get_length(fc->data);
			m->data = xcalloc(1, len + 1);
			evbuffer_remove(fc->data, m->data, len);
			fake.per_conn[fc->id]++;
			fake_reply(bev, "250 2.0.0 Ok: queued\r\n");
			return;
		}
		evbuffer_add_printf(fc->data, "%s\r\n",
		    line[0] == '.' ? line + 1 : line);
		return;
	}
	if (fc->auth_step) {
		unsigned char *resp = NULL, d[EVP_MAX_MD_SIZE];
		unsigned int dl = 0, i;
		char want[256];
		size_t rl, n;

		fc->auth_step = 0;
		HMAC(EVP_md5(), fake.password, (int)strlen(fake.password),
		    (const unsigned char *)FAKE_CHALLENGE,
		    strlen(FAKE_CHALLENGE), d, &dl);
		n = (size_t)snprintf(want, sizeof(want), "%s ", fake.user);
		for (i = 0; i < dl; i++)
			n += (size_t)snprintf(want + n, sizeof(want) - n,
			    "%02x", d[i]);
		if (sasl_b64_decode(line, strlen(line), &resp, &rl) == 0 &&
		    strcmp((char *)resp, want) == 0) {
			fc->authed = 1;
			fake.nauth_ok++;
			fake_reply(bev, "235 2.7.0 Authentication "
			    "successful\r\n");
		} else {
			fake.nauth_bad++;
			fake_reply(bev, "535 5.7.8 Error: authentication "
			    "failed\r\n");
		}
		if (resp != NULL)
			free(resp);
		return;
	}
	if (strncasecmp(line, "EHLO", 4) == 0)
		fake_reply(bev, fake.auth ? "250-fake.test\r\n250-8BITMIME\r\n"
		    "250-AUTH PLAIN CRAM-MD5\r\n250 ENHANCEDSTATUSCODES\r\n" :
		    "250-fake.test\r\n250-8BITMIME\r\n"
		    "250 ENHANCEDSTATUSCODES\r\n");
	else if (fake.auth && strcasecmp(line, "AUTH CRAM-MD5") == 0) {
		char *b64 = sasl_b64_encode(FAKE_CHALLENGE,
		    strlen(FAKE_CHALLENGE));

		fc->auth_step = 1;
		fake_reply(bev, "334 ");
		fake_reply(bev, b64);
		fake_reply(bev, "\r\n");
		free(b64);
	} else if (fake.auth && !fc->authed &&
	    strncasecmp(line, "MAIL FROM:", 10) == 0) {
		fake.saw_mail[fc->id] = 1;
		fake.n530++;
		fake_reply(bev, "530 5.7.0 Authentication required\r\n");
		if (fake.close_after_530 > 0) {
			/* and hangs up once the reply is out */
			fake.close_after_530--;
			fc->closing = 1;
		}
	} else if (strncasecmp(line, "MAIL FROM:", 10) == 0 &&
	    fake.drop_reused_mail > 0 && fake.per_conn[fc->id] > 0) {
		/* an idle timeout that struck as MAIL came */
		fake.drop_reused_mail--;
		fake.ndropped++;
		fc->closing = fc->drop = 1;
	} else if (strncasecmp(line, "MAIL FROM:", 10) == 0) {
		if (!fake.saw_mail[fc->id] && fc->authed)
			fake.authed_before_mail[fc->id] = 1;
		fake.saw_mail[fc->id] = 1;
		fake.nmail++;
		snprintf(fc->from, sizeof(fc->from), "%s", line + 10);
		fc->rcpts[0] = '\0';
		fc->nok = 0;
		fake_reply(bev, "250 2.1.0 Ok\r\n");
	} else if (strncasecmp(line, "RCPT TO:", 8) == 0) {
		if (strstr(line, "bad@") != NULL)
			fake_reply(bev, "550 5.1.1 <bad@example.net>: "
			    "Recipient address rejected\r\n");
		else if (strstr(line, "later@") != NULL)
			fake_reply(bev, "450 4.2.0 try later\r\n");
		else {
			size_t n = strlen(fc->rcpts);

			snprintf(fc->rcpts + n, sizeof(fc->rcpts) - n, "%s ",
			    line + 8);
			fc->nok++;
			fake_reply(bev, "250 2.1.5 Ok\r\n");
		}
	} else if (strcasecmp(line, "DATA") == 0) {
		if (fc->nok == 0)
			fake_reply(bev, "554 5.5.1 no valid recipients\r\n");
		else {
			fc->in_data = 1;
			fake.in_data = 1;
			fake_reply(bev, "354 go ahead\r\n");
		}
	} else if (strcasecmp(line, "RSET") == 0 ||
	    strcasecmp(line, "NOOP") == 0)
		fake_reply(bev, "250 2.0.0 Ok\r\n");
	else if (strcasecmp(line, "QUIT") == 0) {
		fc->closing = 1;
		fake_reply(bev, "221 2.0.0 Bye\r\n");
	} else
		fake_reply(bev, "502 5.5.2 what?\r\n");
}

static void
fake_read_cb(struct bufferevent *bev, void *arg)
{
	struct fake_conn *fc = arg;
	char *line;
	size_t len;

	while (!fc->closing && (line = evbuffer_readln(bufferevent_get_input(
	    bev), &len, EVBUFFER_EOL_CRLF_STRICT)) != NULL) {
		fake_line(bev, fc, line);
		free(line);
	}
	if (fc->drop)
		fake_free(bev, fc);
}

static void
fake_greet(evutil_socket_t fd, short what, void *arg)
{
	struct fake_conn *fc = arg;

	fake_reply(fc->bev, fake.greeting != NULL ? fake.greeting :
	    "220 fake.test ESMTP\r\n");
}

static void
fake_accept(struct evconnlistener *l, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct bufferevent *bev;
	struct fake_conn *fc;
	struct timeval tv;

	bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	fc = xcalloc(1, sizeof(*fc));
	cr_assert_lt(fake.nconn, FAKE_MAX);
	fc->id = fake.nconn++;
	if (++fake.active > fake.max_active)
		fake.max_active = fake.active;
	fc->data = evbuffer_new();
	fc->bev = bev;
	bufferevent_setcb(bev, fake_read_cb, fake_write_cb, fake_event_cb, fc);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	if (fake.greeting_delay_ms > 0) {
		tv.tv_sec = fake.greeting_delay_ms / 1000;
		tv.tv_usec = fake.greeting_delay_ms % 1000 * 1000;
		cr_assert_not_null(fc->ev_greet = evtimer_new(base, fake_greet,
		    fc));
		evtimer_add(fc->ev_greet, &tv);
	} else
		fake_greet(-1, 0, fc);
}

/* Listens on 127.0.0.1:port (0: any), keeping what fake recorded. */
static void
fake_listen(int port)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((in_port_t)port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fake.l = evconnlistener_new_bind(base, fake_accept, NULL,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
	    (struct sockaddr *)&sin, sizeof(sin));
	cr_assert_not_null(fake.l);
	cr_assert_eq(getsockname(evconnlistener_get_fd(fake.l),
	    (struct sockaddr *)&sin, &sl), 0);
	fake.port = ntohs(sin.sin_port);
}

/* A bound socket that does not listen yet: connections to its port are
 * refused, and no other process can take the port before
 * fake_listen_on() makes it the fake server's. */
static int
fake_reserve(void)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	int fd;

	memset(&fake, 0, sizeof(fake));
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	cr_assert_geq(fd, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	fake.port = ntohs(sin.sin_port);
	return fd;
}

static void
fake_listen_on(int fd)
{
	fake.l = evconnlistener_new(base, fake_accept, NULL,
	    LEV_OPT_CLOSE_ON_FREE, 16, fd);
	cr_assert_not_null(fake.l);
}

static void
fake_start(void)
{
	memset(&fake, 0, sizeof(fake));
	fake_listen(0);
}

static int
four_messages_and_one_left(void)
{
	return fake.nmsgs >= 4 && scheduler_count(sched) == 1;
}

Test(deliver, smtp_reuses_sessions_maps_replies_and_bounces)
{
	static const char *const r1[] = { "good@example.net",
	    "bad@example.net", "later@example.net", NULL };
	static const char *const r2[] = { "one@example.net", NULL };
	static const char *const r3[] = { "two@example.net", NULL };
	struct envelope *e1, *e2, *e3;
	char relays[512];
	const struct fake_msg *dsn = NULL;
	int i;

	fake_start();
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; max_connections = 1; "
	    "max_messages_per_connection = 2; };", fake.port);
	load_config(relays, "retry_min = 60; retry_max = 600;");
	e1 = enqueue("alice@example.org", r1,
	    "Subject: mixed\r\nX-Marker: m1\r\n\r\nhello\r\n", time(NULL));
	e2 = enqueue("alice@example.org", r2, "Subject: 2\r\n\r\n2\r\n",
	    time(NULL));
	e3 = enqueue("alice@example.org", r3, "Subject: 3\r\n\r\n3\r\n",
	    time(NULL));
	watched = envelope_dup(e1);
	scheduler_add(sched, e1);
	scheduler_add(sched, e2);
	scheduler_add(sched, e3);
	/* e1 (good), e2, e3 and the bounce for bad@ reach the server;
	 * later@ keeps e1 queued. */
	cr_assert(run_until(four_messages_and_one_left, 15),
	    "server saw %d messages, %zu queued", fake.nmsgs,
	    scheduler_count(sched));
	refresh(&watched);
	e1 = watched;

	cr_assert_eq(e1->rcpts[0].status, RCPT_SENT);
	cr_assert_str_eq(e1->rcpts[0].dsn, "2.0.0");
	cr_assert_eq(e1->rcpts[1].status, RCPT_FAILED);
	cr_assert_str_eq(e1->rcpts[1].dsn, "5.1.1");
	cr_assert_not_null(strstr(e1->rcpts[1].reply, "550 5.1.1"));
	cr_assert_eq(e1->rcpts[2].status, RCPT_PENDING);
	cr_assert_str_eq(e1->rcpts[2].dsn, "4.2.0");
	cr_assert_eq(e1->attempts, 1);

	/* At most two messages per session, one session at a time. */
	cr_assert_eq(fake.max_active, 1, "%d sessions at once",
	    fake.max_active);
	cr_assert_geq(fake.nconn, 2);
	for (i = 0; i < fake.nconn; i++)
		cr_assert_leq(fake.per_conn[i], 2, "connection %d", i);
	cr_assert_eq(fake.per_conn[0], 2, "the first session was reused");

	for (i = 0; i < fake.nmsgs; i++)
		if (strcmp(fake.msgs[i].from, "<>") == 0)
			dsn = &fake.msgs[i];
	cr_assert_not_null(dsn, "no bounce was relayed");
	cr_assert_not_null(strstr(dsn->rcpts, "<alice@example.org>"));
	cr_assert_not_null(strstr(dsn->data,
	    "Final-Recipient: rfc822; bad@example.net\r\n"));
	cr_assert_not_null(strstr(dsn->data, "Status: 5.1.1\r\n"));
	cr_assert_not_null(strstr(dsn->data, "Remote-MTA: dns; 127.0.0.1\r\n"));
	cr_assert_not_null(strstr(dsn->data, "Diagnostic-Code: smtp; 550 "
	    "5.1.1 <bad@example.net>: Recipient address rejected\r\n"));
	cr_assert_not_null(strstr(dsn->data, "X-Marker: m1\r\n"));
	cr_assert_null(strstr(dsn->data, "good@example.net\r\n"),
	    "delivered recipients are not reported");
	for (i = 0; i < fake.nmsgs; i++)
		free(fake.msgs[i].data);
	evconnlistener_free(fake.l);
}

/* ---- idle sessions ---- */

static int
one_message_seen(void)
{
	return fake.nmsgs >= 1 && scheduler_count(sched) == 0;
}

static int
two_messages_seen_queue_empty(void)
{
	return fake.nmsgs >= 2 && scheduler_count(sched) == 0;
}

static int
no_connection_open(void)
{
	return fake.active == 0;
}

static double
now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One message, then (after it was relayed, the queue empty) another, as a
 * lone client sends them: with timeout_idle the second takes the first's
 * connection, which then closes once idle that long; with 0 each opens its
 * own. Returns the connections the server saw. */
static int
idle_run(unsigned idle, double *closed_after)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512];
	double t0;
	int i;

	fake_start();
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; timeout_idle = %u; };",
	    fake.port, idle);
	load_config(relays, "retry_min = 60;");
	scheduler_add(sched, enqueue("alice@example.org", rcpts,
	    "Subject: 1\r\n\r\n1\r\n", time(NULL)));
	cr_assert(run_until(one_message_seen, 10), "first not relayed");
	scheduler_add(sched, enqueue("alice@example.org", rcpts,
	    "Subject: 2\r\n\r\n2\r\n", time(NULL)));
	cr_assert(run_until(two_messages_seen_queue_empty, 10),
	    "second not relayed");
	t0 = now_mono();
	cr_assert(run_until(no_connection_open, idle + 5.0),
	    "the idle connection stays open");
	*closed_after = now_mono() - t0;
	for (i = 0; i < fake.nmsgs; i++)
		free(fake.msgs[i].data);
	evconnlistener_free(fake.l);
	return fake.nconn;
}

Test(deliver, idle_session_takes_the_next_message)
{
	double closed_after;

	cr_assert_eq(idle_run(2, &closed_after), 1, "%d connections",
	    fake.nconn);
	cr_assert_eq(fake.per_conn[0], 2);
	/* QUIT after timeout_idle */
	cr_assert_gt(closed_after, 1.5, "closed after %.2f s", closed_after);
}

Test(deliver, timeout_idle_0_quits_at_once)
{
	double closed_after;

	cr_assert_eq(idle_run(0, &closed_after), 2, "%d connections",
	    fake.nconn);
	cr_assert_lt(closed_after, 0.5, "closed after %.2f s", closed_after);
}

/*
 * The server closes the idle connection just as the next message's MAIL
 * comes (its idle timeout, struck at that moment): the message is not
 * an attempt and goes at once on a new connection, once, instead of
 * waiting retry_min.
 */
Test(deliver, reused_connection_gone_sends_the_message_again_at_once)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512];
	double t0;

	fake_start();
	fake.drop_reused_mail = 1;
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; timeout_idle = 30; };",
	    fake.port);
	load_config(relays, "retry_min = 600;");
	scheduler_add(sched, enqueue("alice@example.org", rcpts,
	    "Subject: 1\r\n\r\n1\r\n", time(NULL)));
	cr_assert(run_until(one_message_seen, 10), "first not relayed");
	t0 = now_mono();
	scheduler_add(sched, enqueue("alice@example.org", rcpts,
	    "Subject: 2\r\n\r\n2\r\n", time(NULL)));
	cr_assert(run_until(two_messages_seen_queue_empty, 10),
	    "second not relayed: %d messages, %d dropped, %zu queued",
	    fake.nmsgs, fake.ndropped, scheduler_count(sched));
	cr_assert_lt(now_mono() - t0, 5.0, "it waited");
	cr_assert_eq(fake.ndropped, 1);
	cr_assert_eq(fake.nconn, 2, "%d connections", fake.nconn);
	cr_assert_eq(fake.per_conn[0], 1);
	cr_assert_eq(fake.per_conn[1], 1, "the second went on a new one");
	cr_assert_eq(fake.nmsgs, 2, "sent once each");
	free(fake.msgs[0].data);
	free(fake.msgs[1].data);
	evconnlistener_free(fake.l);
}

static int session_done;

static void
stopped_cb(void *arg)
{
	session_done = 1;
}

static int
is_stopped(void)
{
	return session_done;
}

Test(deliver, shutdown_without_sessions_calls_done)
{
	char relays[512];

	snprintf(relays, sizeof(relays), "box = { type = \"maildir\"; "
	    "path = \"%s\"; };", mdir);
	load_config(relays, "retry_min = 60;");
	session_done = 0;
	scheduler_shutdown(sched, 5, stopped_cb, NULL);
	cr_assert_eq(session_done, 0, "done() must not run inside the call");
	cr_assert(run_until(is_stopped, 5));
}

Test(deliver, held_message_is_not_tried)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512], newdir[256];
	struct envelope *env;

	snprintf(relays, sizeof(relays), "box = { type = \"maildir\"; "
	    "path = \"%s\"; };", mdir);
	load_config(relays, "retry_min = 60;");
	env = enqueue("alice@example.org", rcpts, "Subject: h\r\n\r\nh\r\n",
	    time(NULL));
	env->flags |= ENVELOPE_HOLD;
	watched = envelope_dup(env);
	scheduler_add(sched, env);
	scheduler_flush(sched);
	run_until(queue_empty, 0.5);
	cr_assert_eq(scheduler_count(sched), 1);
	snprintf(newdir, sizeof(newdir), "%s/new", mdir);
	cr_assert_eq(dir_count(newdir, NULL, 0), 0);
	refresh(&watched);
	cr_assert_eq(watched->attempts, 0);
}

static int
queue_empty_and_server_idle(void)
{
	return queue_empty() && fake.nconn > 0;
}

Test(deliver, null_sender_failure_is_dropped_not_bounced)
{
	static const char *const rcpts[] = { "bad@example.net", NULL };
	char relays[512];
	struct envelope *env;

	fake_start();
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; };", fake.port);
	load_config(relays, "retry_min = 60;");
	env = enqueue("", rcpts, "Subject: bounce\r\n\r\nx\r\n", time(NULL));
	scheduler_add(sched, env);
	cr_assert(run_until(queue_empty_and_server_idle, 10),
	    "message still queued");
	/* Let a wrongly made bounce reach the queue or the server. */
	run_until(queue_empty_and_server_idle, 0.3);
	cr_assert_eq(scheduler_count(sched), 0);
	cr_assert_eq(fake.nmsgs, 0, "nothing may be sent to <>");
	evconnlistener_free(fake.l);
}

static int
server_in_data(void)
{
	return fake.in_data;
}

static int
msg_gone(void)
{
	return access(watched_path, F_OK) == -1 && errno == ENOENT;
}

Test(deliver, shutdown_lets_the_transaction_finish)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512];
	struct envelope *env;

	fake_start();
	fake.eom_delay_ms = 300;
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; };", fake.port);
	load_config(relays, "retry_min = 60;");
	env = enqueue("alice@example.org", rcpts, "Subject: s\r\n\r\ns\r\n",
	    time(NULL));
	snprintf(watched_path, sizeof(watched_path), "%s/queue/%s", spool,
	    env->id);
	scheduler_add(sched, env);
	cr_assert(run_until(server_in_data, 10), "never reached DATA");
	session_done = 0;
	scheduler_shutdown(sched, 10, stopped_cb, NULL);
	cr_assert(run_until(is_stopped, 5), "done() never ran");
	/* env may be gone already: judge by the spool. The removal is
	 * drained by queue_close at the latest, as in the daemon. */
	stop_all();
	cr_assert(msg_gone(), "delivered message still queued");
	evconnlistener_free(fake.l);
}

Test(deliver, shutdown_deadline_aborts_and_keeps_mail)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512], id[ENVELOPE_ID_MAX];
	struct envelope *env;
	struct timespec t0, t1;

	fake_start();
	fake.eom_delay_ms = -1;
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; };", fake.port);
	load_config(relays, "retry_min = 60;");
	env = enqueue("alice@example.org", rcpts, "Subject: s\r\n\r\ns\r\n",
	    time(NULL));
	snprintf(id, sizeof(id), "%s", env->id);
	scheduler_add(sched, env);
	cr_assert(run_until(server_in_data, 10), "never reached DATA");
	session_done = 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	scheduler_shutdown(sched, 1, stopped_cb, NULL);
	cr_assert(run_until(is_stopped, 5), "done() never ran");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	cr_assert_geq(t1.tv_sec - t0.tv_sec + (t1.tv_nsec - t0.tv_nsec) / 1e9,
	    0.9, "aborted before the deadline");
	cr_assert_eq(scheduler_count(sched), 1);

	reload_queue();
	cr_assert_eq(nloaded, 1);
	cr_assert_str_eq(loaded[0]->id, id);
	cr_assert_eq(loaded[0]->attempts, 0,
	    "an aborted attempt is no attempt");
	cr_assert_eq(loaded[0]->rcpts[0].status, RCPT_PENDING);
	envelope_free(loaded[0]);
	evconnlistener_free(fake.l);
}

static struct envelope *watched2;

static int
watched2_attempted(void)
{
	refresh(&watched2);
	return watched2->attempts >= 1;
}

Test(deliver, relay_backoff_holds_new_mail_until_flush)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512];
	struct envelope *e1, *e2;

	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; };", closed_port());
	load_config(relays, "retry_min = 60; retry_max = 600;");
	e1 = enqueue("alice@example.org", rcpts, "Subject: 1\r\n\r\n1\r\n",
	    time(NULL));
	watched = envelope_dup(e1);
	scheduler_add(sched, e1);
	cr_assert(run_until(watched_attempted, 10), "never attempted");

	/* The relay is backed off now: new mail waits for it. */
	e2 = enqueue("alice@example.org", rcpts, "Subject: 2\r\n\r\n2\r\n",
	    time(NULL));
	watched2 = envelope_dup(e2);
	scheduler_add(sched, e2);
	cr_assert_not(run_until(watched2_attempted, 0.5),
	    "tried a backed-off relay");
	cr_assert_null(watched2->rcpts[0].reply);

	/* A flush forgets every backoff. */
	scheduler_flush(sched);
	cr_assert(run_until(watched2_attempted, 10), "flush did not retry");
	cr_assert_eq(watched2->rcpts[0].status, RCPT_PENDING);
	cr_assert(run_until(watched_attempted, 0.2));
	cr_assert_eq(scheduler_count(sched), 2);
}

Test(deliver, missing_starttls_defers_with_tls_reason)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512];

	fake_start();	/* does not offer STARTTLS */
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"starttls\"; };", fake.port);
	load_config(relays, "retry_min = 60;");
	submit_watched(rcpts, "t");
	cr_assert(run_until(watched_attempted, 10), "never attempted");
	cr_assert_eq(watched->rcpts[0].status, RCPT_PENDING);
	cr_assert_not_null(watched->rcpts[0].reply);
	cr_assert(strncmp(watched->rcpts[0].reply, "TLS: ", 5) == 0,
	    "reply: %s", watched->rcpts[0].reply);
	cr_assert_eq(watched->rcpts[0].dsn[0], '4');
	cr_assert_eq(fake.nmsgs, 0, "nothing sent in clear text");
	evconnlistener_free(fake.l);
}

/* ---- authentication ---- */

static char authfile[128];

static void
write_authinfo(const char *text, mode_t mode)
{
	char tmp[300];
	FILE *f;

	/* rename into place, as an editor would: the file appears whole */
	snprintf(tmp, sizeof(tmp), "%s.tmp", authfile);
	cr_assert_not_null(f = fopen(tmp, "w"));
	fputs(text, f);
	fclose(f);
	cr_assert_eq(chmod(tmp, mode), 0);
	cr_assert_eq(rename(tmp, authfile), 0);
}

/* An smtp relay to the fake server whose host matches auth_first (or
 * not), with authinfo as its only credential file; the fake server has
 * no TLS, so AUTH needs allow_plaintext_auth. */
static void
auth_config(int auth_first, const char *relay_opts)
{
	char relays[512];

	snprintf(authfile, sizeof(authfile), "%s/authinfo", topdir);
	snprintf(cfg_extra, sizeof(cfg_extra), "authinfo = [ \"%s\" ];\n%s",
	    authfile, auth_first ?
	    "auth_first = [ \"^127\\\\.0\\\\.0\\\\.1$\" ];\n" : "");
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; allow_plaintext_auth = true; "
	    "%s };", fake.port, relay_opts);
	load_config(relays, "retry_min = 60; retry_max = 600;");
}

/* Starts the fake server asking for AUTH as user with password. */
static void
fake_start_auth(const char *user, const char *password)
{
	fake_start();
	fake.auth = 1;
	snprintf(fake.user, sizeof(fake.user), "%s", user);
	snprintf(fake.password, sizeof(fake.password), "%s", password);
}

/* Debug and info lines go to stderr: catch them in a file. */
static char cap_path[64];
static int cap_saved = -1;

static void
capture_begin(void)
{
	int fd;

	snprintf(cap_path, sizeof(cap_path), "/tmp/test_sched_log.XXXXXX");
	cr_assert_neq(fd = mkstemp(cap_path), -1);
	cap_saved = dup(STDERR_FILENO);
	dup2(fd, STDERR_FILENO);
	close(fd);
}

static char *
capture_end(void)
{
	size_t len;
	char *text;

	dup2(cap_saved, STDERR_FILENO);
	close(cap_saved);
	cap_saved = -1;
	text = slurp(cap_path, &len);
	unlink(cap_path);
	return text;
}

Test(deliver, auth_first_without_credentials_defers_without_connecting)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct envelope *env;
	char *log, want[1024];

	fake_start();
	fake.auth = 1;
	auth_config(1, "");
	env = enqueue("alice@example.org", rcpts, "Subject: a\r\n\r\na\r\n",
	    time(NULL));
	watched = envelope_dup(env);
	capture_begin();
	scheduler_add(sched, env);
	cr_assert(run_until(watched_attempted, 10), "never attempted");
	/* a connection would have shown up by now */
	run_until(queue_empty, 0.3);
	log = capture_end();

	cr_assert_eq(fake.nconn, 0, "connected without credentials");
	cr_assert_eq(watched->rcpts[0].status, RCPT_PENDING);
	cr_assert_str_eq(watched->rcpts[0].dsn, "4.7.0");
	snprintf(want, sizeof(want), "no credentials for machine 127.0.0.1 "
	    "port %d in %s", fake.port, authfile);
	cr_assert_not_null(strstr(watched->rcpts[0].reply, want), "%s",
	    watched->rcpts[0].reply);
	cr_assert_not_null(strstr(log, "status=deferred (no credentials"),
	    "%s", log);
	snprintf(want, sizeof(want), "relay 127.0.0.1:%d needs credentials: "
	    "no entry for machine 127.0.0.1 port %d in %s; add a line "
	    "\"machine 127.0.0.1 port %d login USER password SECRET\" to %s "
	    "(chmod 600), or run: smarthostctl login 127.0.0.1:%d", fake.port,
	    fake.port, authfile, fake.port, authfile, fake.port);
	cr_assert_not_null(strstr(log, want), "%s", log);
	free(log);
	evconnlistener_free(fake.l);
}

static int
queue_empty_and_delivered(void)
{
	return queue_empty() && fake.nmsgs >= 1;
}

Test(deliver, credentials_file_appearing_retries_without_restart)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char line[256];

	fake_start_auth("alice", "s3cret pass");
	auth_config(1, "");
	submit_watched(rcpts, "b");
	cr_assert(run_until(watched_attempted, 10), "never attempted");
	cr_assert_eq(fake.nconn, 0);
	cr_assert_geq(watched->next_try, time(NULL) + 30, "backed off");

	snprintf(line, sizeof(line), "machine 127.0.0.1 port %d login alice "
	    "password \"s3cret pass\"\n", fake.port);
	write_authinfo(line, 0600);
	/* the message's own retry is a minute away: only noticing the file
	 * can deliver it this soon */
	cr_assert(run_until(queue_empty_and_delivered, 20),
	    "not retried after the credentials appeared (%d connections)",
	    fake.nconn);
	cr_assert_eq(fake.nauth_ok, 1);
	cr_assert_eq(fake.n530, 0, "authenticated first");
	cr_assert_eq(fake.authed_before_mail[0], 1);
	cr_assert_eq(fake.nmsgs, 1);
	free(fake.msgs[0].data);
	evconnlistener_free(fake.l);
}

Test(deliver, world_readable_authinfo_is_refused_with_the_fix)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char line[256];

	fake_start();
	fake.auth = 1;
	auth_config(1, "");
	snprintf(line, sizeof(line), "machine 127.0.0.1 login alice password "
	    "pw\n");
	write_authinfo(line, 0644);
	submit_watched(rcpts, "c");
	cr_assert(run_until(watched_attempted, 10), "never attempted");
	cr_assert_eq(fake.nconn, 0);
	cr_assert_eq(watched->rcpts[0].status, RCPT_PENDING);
	cr_assert_not_null(strstr(watched->rcpts[0].reply, "chmod 600"), "%s",
	    watched->rcpts[0].reply);
	cr_assert_not_null(strstr(watched->rcpts[0].reply, authfile), "%s",
	    watched->rcpts[0].reply);
	evconnlistener_free(fake.l);
}

static int
two_delivered(void)
{
	return queue_empty() && fake.nmsgs >= 2;
}

Test(deliver, demand_authenticates_in_session_and_is_learned)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct envelope *e1, *e2;
	char line[256], path[300], *state;
	size_t len;

	fake_start_auth("alice", "pw");
	auth_config(0, "max_messages_per_connection = 1;");
	snprintf(line, sizeof(line), "machine 127.0.0.1 login alice "
	    "password pw\n");
	write_authinfo(line, 0600);

	e1 = enqueue("alice@example.org", rcpts, "Subject: 1\r\n\r\n1\r\n",
	    time(NULL));
	scheduler_add(sched, e1);
	cr_assert(run_until(queue_empty_and_delivered, 10), "not delivered");
	cr_assert_eq(fake.n530, 1, "MAIL went first, once");
	cr_assert_eq(fake.nauth_ok, 1);
	cr_assert_eq(fake.nconn, 1, "in the same session");
	cr_assert_eq(scheduler_auth_required_list(sched, NULL, NULL), 1);

	e2 = enqueue("alice@example.org", rcpts, "Subject: 2\r\n\r\n2\r\n",
	    time(NULL));
	scheduler_add(sched, e2);
	cr_assert(run_until(two_delivered, 10), "second not delivered");
	cr_assert_eq(fake.nconn, 2);
	cr_assert_eq(fake.n530, 1, "the learned relay authenticated first");
	cr_assert_eq(fake.authed_before_mail[1], 1);

	/* kept on disk for the next start and for smarthostctl */
	snprintf(path, sizeof(path), "%s/state/auth-required", spool);
	cr_assert(run_until(queue_empty, 10));
	state = slurp(path, &len);
	snprintf(line, sizeof(line), "\n127.0.0.1 %d\n", fake.port);
	cr_assert_not_null(strstr(state, line), "%s", state);
	free(state);
	cr_assert_eq(scheduler_auth_forget(sched, "127.0.0.1"), 0);
	cr_assert_eq(scheduler_auth_forget(sched, "127.0.0.1"), -1);
	cr_assert_eq(scheduler_auth_required_list(sched, NULL, NULL), 0);
	free(fake.msgs[0].data);
	free(fake.msgs[1].data);
	evconnlistener_free(fake.l);
}

static int
learned_and_delivered(void)
{
	return queue_empty() && fake.nmsgs >= 1 && fake.nconn >= 2;
}

Test(deliver, close_after_530_retries_at_once_authenticating_first)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct envelope *env;
	char relays[512], line[256], *log;
	time_t t0;

	fake_start();
	fake.auth = 1;
	fake.close_after_530 = 1;
	snprintf(fake.user, sizeof(fake.user), "alice");
	snprintf(fake.password, sizeof(fake.password), "pw");
	snprintf(authfile, sizeof(authfile), "%s/authinfo", topdir);
	snprintf(cfg_extra, sizeof(cfg_extra), "authinfo = [ \"%s\" ];\n",
	    authfile);
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; allow_plaintext_auth = true; "
	    "mechanisms = [ \"CRAM-MD5\" ]; };", fake.port);
	/* a normal deferral would wait ten minutes */
	load_config(relays, "retry_min = 600; retry_max = 3600;");
	snprintf(line, sizeof(line), "machine 127.0.0.1 login alice "
	    "password pw\n");
	write_authinfo(line, 0600);

	env = enqueue("alice@example.org", rcpts, "Subject: r\r\n\r\nr\r\n",
	    time(NULL));
	t0 = time(NULL);
	capture_begin();
	scheduler_add(sched, env);
	if (!run_until(learned_and_delivered, 5)) {
		free(capture_end());
		cr_assert_fail("not delivered at once (%d connections, %d "
		    "530s, %d auth ok)", fake.nconn, fake.n530,
		    fake.nauth_ok);
	}
	log = capture_end();
	cr_assert_leq(time(NULL) - t0, 4);
	cr_assert_eq(fake.nconn, 2, "%d connections", fake.nconn);
	cr_assert_eq(fake.n530, 1, "MAIL without AUTH once");
	cr_assert_eq(fake.saw_mail[0], 1);
	cr_assert_eq(fake.nauth_ok, 1);
	cr_assert_eq(fake.authed_before_mail[1], 1,
	    "the second session authenticated first");
	cr_assert_eq(scheduler_auth_required_list(sched, NULL, NULL), 1);
	/* the relay was not backed off for it */
	cr_assert_null(strstr(log, "no new session for"), "%s", log);
	free(log);
	free(fake.msgs[0].data);
	evconnlistener_free(fake.l);
}

/* The fake server as relay "up", in clear text, with more relay settings
 * in opts. */
static void
load_fake_relay(const char *opts, const char *queue_opts)
{
	char relays[512];

	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; %s };", fake.port, opts);
	load_config(relays, queue_opts);
}

static int
six_delivered(void)
{
	return queue_empty() && fake.nmsgs >= 6;
}

Test(deliver, max_connections_bounds_concurrent_sessions)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct envelope *env;
	int i;

	fake_start();
	/* slow final replies keep sessions open side by side */
	fake.eom_delay_ms = 200;
	load_fake_relay("max_connections = 2; max_messages_per_connection = 1;",
	    "retry_min = 60; retry_max = 600;");
	for (i = 0; i < 6; i++) {
		env = enqueue("alice@example.org", rcpts,
		    "Subject: c\r\n\r\nc\r\n", time(NULL));
		scheduler_add(sched, env);
	}
	cr_assert(run_until(six_delivered, 15), "server saw %d messages, "
	    "%zu queued", fake.nmsgs, scheduler_count(sched));
	cr_assert_eq(fake.nconn, 6, "one message per session");
	cr_assert_leq(fake.max_active, 2, "%d sessions at once",
	    fake.max_active);
	cr_assert_eq(fake.max_active, 2, "the limit was never reached");
	evconnlistener_free(fake.l);
}

/* ---- carrying mail on open sessions ---- */

static int carry_want;

static int
carry_delivered(void)
{
	return fake.nmsgs >= carry_want && scheduler_count(sched) == 0;
}

/*
 * A relay whose connections take 50 ms to set up (a slow greeting, as a
 * distant or TLS server's), at most 4 of them, and one message through
 * it first: the scheduler has then measured a set-up and a transaction,
 * and the session waits idle.
 */
static void
carry_setup(void)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };

	fake_start();
	fake.greeting_delay_ms = 50;
	load_fake_relay("max_connections = 4; timeout_idle = 30;",
	    "retry_min = 60;");
	scheduler_add(sched, enqueue("alice@example.org", rcpts,
	    "Subject: warm\r\n\r\nw\r\n", time(NULL)));
	carry_want = 1;
	cr_assert(run_until(carry_delivered, 10), "first not relayed");
	cr_assert_eq(fake.nconn, 1);
}

/* Commits n messages into env. */
static void
carry_commit(struct envelope **env, int n)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	int i;

	for (i = 0; i < n; i++)
		env[i] = enqueue("alice@example.org", rcpts,
		    "Subject: c\r\n\r\nc\r\n", time(NULL));
}

/* Hands n committed messages to the scheduler at once. */
static void
carry_add(struct envelope **env, int n)
{
	int i;

	for (i = 0; i < n; i++)
		scheduler_add(sched, env[i]);
}

static void
carry_free(void)
{
	int i;

	for (i = 0; i < fake.nmsgs; i++)
		free(fake.msgs[i].data);
	evconnlistener_free(fake.l);
}

/*
 * A steady stream, two messages at a time once the last ones were
 * relayed: the idle session takes the first of each pair at once, and
 * the second waits for that session, which will be free long before a
 * new connection could be up. One connection carries the stream.
 */
Test(deliver, steady_stream_uses_one_connection)
{
	struct envelope *env[2];
	int round;

	carry_setup();
	for (round = 1; round <= 6; round++) {
		carry_commit(env, 2);
		carry_add(env, 2);
		carry_want = 1 + 2 * round;
		cr_assert(run_until(carry_delivered, 10), "round %d: %d "
		    "relayed", round, fake.nmsgs);
		cr_assert_eq(scheduler_sessions_open(sched), 1, "round %d",
		    round);
	}
	cr_assert_eq(fake.nconn, 1, "%d connections", fake.nconn);
	cr_assert_eq(fake.per_conn[0], 13);
	carry_free();
}

/*
 * A burst: more mail at once than the busy session would get to before
 * a new connection could be up (and more than it is ever counted on
 * for) opens as many connections as max_connections allows.
 */
Test(deliver, burst_opens_max_connections)
{
	struct envelope *env[60];
	int i;

	carry_setup();
	carry_commit(env, 60);
	carry_add(env, 60);
	carry_want = 61;
	cr_assert(run_until(carry_delivered, 30), "%d relayed, %zu queued",
	    fake.nmsgs, scheduler_count(sched));
	cr_assert_eq(fake.max_active, 4, "%d sessions at once",
	    fake.max_active);
	cr_assert_eq(fake.nconn, 4, "%d connections", fake.nconn);
	for (i = 0; i < 4; i++)
		cr_assert_gt(fake.per_conn[i], 0, "connection %d idle", i);
	carry_free();
}

static int
one_stalled(void)
{
	return fake.nstalled == 1;
}

static int
second_relayed(void)
{
	return fake.nmsgs >= 2;
}

/* The upstream counts a message at its 250; the scheduler forgets it only
 * once the delivery's state record is committed, a sync later. */
static int
only_the_stuck_one_left(void)
{
	return scheduler_count(sched) == 1;
}

/*
 * A transaction that gets no reply (a stuck server) holds no mail behind
 * it: the next message, which waits at first for the busy session, gets
 * a new connection once that session is late, well before the longest
 * wait (SCHED_BUSY_WAIT_MS, 1 s).
 */
Test(deliver, message_behind_a_slow_transaction_gets_a_new_connection)
{
	struct envelope *env[1];
	double t0, took;

	carry_setup();
	fake.eom_stall = 1;
	carry_commit(env, 1);
	carry_add(env, 1);
	cr_assert(run_until(one_stalled, 10), "never reached the end of data");
	carry_commit(env, 1);
	t0 = now_mono();
	carry_add(env, 1);
	cr_assert(run_until(second_relayed, 5), "the second waits: %d "
	    "relayed, %d connections", fake.nmsgs, fake.nconn);
	took = now_mono() - t0;
	cr_assert_lt(took, 0.8, "relayed after %.3f s", took);
	cr_assert_eq(fake.nconn, 2, "%d connections", fake.nconn);
	cr_assert_eq(fake.msgs[1].conn, 1, "not on the new connection");
	cr_assert(run_until(only_the_stuck_one_left, 10),
	    "%zu queued after the second was relayed", scheduler_count(sched));
	carry_free();
}

Test(deliver, rejected_password_defers_then_fixed_file_delivers)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct envelope *env, *env2;
	char line[256], want[1024], *log;

	fake_start_auth("alice", "right-one");
	/* CRAM-MD5 only: the one failed AUTH per try is easy to count
	 * (with plaintext allowed, PLAIN would follow it) */
	auth_config(1, "mechanisms = [ \"CRAM-MD5\" ];");
	snprintf(line, sizeof(line), "# creds\nmachine 127.0.0.1 login alice "
	    "password wrong-one\n");
	write_authinfo(line, 0600);
	env = enqueue("alice@example.org", rcpts, "Subject: d\r\n\r\nd\r\n",
	    time(NULL));
	watched = envelope_dup(env);
	capture_begin();
	scheduler_add(sched, env);
	if (!run_until(watched_attempted, 10)) {
		free(capture_end());
		cr_assert_fail("never attempted");
	}
	/* backed off: no second try with the same password */
	run_until(queue_empty, 1);
	log = capture_end();
	cr_assert_eq(fake.nauth_bad, 1, "tried %d times", fake.nauth_bad);
	cr_assert_eq(watched->rcpts[0].status, RCPT_PENDING);
	cr_assert_not_null(strstr(watched->rcpts[0].reply, "authentication "
	    "failed: CRAM-MD5: 535 5.7.8"), "%s", watched->rcpts[0].reply);
	cr_assert_str_eq(watched->rcpts[0].dsn, "4.7.8");
	snprintf(want, sizeof(want), "authentication to 127.0.0.1:%d failed: "
	    "authentication failed: CRAM-MD5: 535 5.7.8 Error: authentication "
	    "failed; fix the credentials in %s line 2 or run smarthostctl "
	    "login 127.0.0.1:%d", fake.port, authfile, fake.port);
	cr_assert_not_null(strstr(log, want), "%s", log);
	cr_assert_null(strstr(log, "wrong-one"), "a password in the log");
	free(log);

	/* new mail for the backed-off relay does not try the rejected
	 * credentials again either: it waits for the backoff or the file */
	env2 = enqueue("alice@example.org", rcpts, "Subject: d2\r\n\r\nd2\r\n",
	    time(NULL));
	watched2 = envelope_dup(env2);
	scheduler_add(sched, env2);
	run_until(queue_empty, 1.5);
	cr_assert_eq(fake.nauth_bad, 1, "the rejected credentials were tried "
	    "%d times", fake.nauth_bad);
	cr_assert_eq(fake.nconn, 1, "%d connections", fake.nconn);
	refresh(&watched2);
	cr_assert_eq(watched2->rcpts[0].status, RCPT_PENDING);
	cr_assert_eq(scheduler_count(sched), 2);

	snprintf(line, sizeof(line), "# creds\nmachine 127.0.0.1 login alice "
	    "password right-one\n");
	write_authinfo(line, 0600);
	cr_assert(run_until(two_delivered, 20), "not retried after the fix");
	cr_assert_eq(fake.nauth_bad, 1);
	cr_assert_geq(fake.nauth_ok, 1);
	free(fake.msgs[0].data);
	free(fake.msgs[1].data);
	evconnlistener_free(fake.l);
}

Test(deliver, credentials_changed_call_retries_at_once)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char line[256];

	fake_start_auth("alice", "pw");
	auth_config(1, "");
	submit_watched(rcpts, "e");
	cr_assert(run_until(watched_attempted, 10), "never attempted");
	snprintf(line, sizeof(line), "machine 127.0.0.1 login alice "
	    "password pw\n");
	write_authinfo(line, 0600);
	/* what smarthostctl login does after saving: no waiting for the
	 * periodic check */
	scheduler_credentials_changed(sched);
	cr_assert(run_until(queue_empty_and_delivered, 3),
	    "not retried at once");
	free(fake.msgs[0].data);
	evconnlistener_free(fake.l);
}

Test(deliver, demand_without_credentials_defers_and_learns)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct envelope *env;
	char *log;

	fake_start();
	fake.auth = 1;
	auth_config(0, "");
	env = enqueue("alice@example.org", rcpts, "Subject: f\r\n\r\nf\r\n",
	    time(NULL));
	watched = envelope_dup(env);
	capture_begin();
	scheduler_add(sched, env);
	if (!run_until(watched_attempted, 10)) {
		free(capture_end());
		cr_assert_fail("never attempted");
	}
	run_until(queue_empty, 0.3);
	log = capture_end();
	cr_assert_eq(fake.n530, 1, "tried once without AUTH");
	cr_assert_eq(watched->rcpts[0].status, RCPT_PENDING, "never a bounce");
	cr_assert_eq(watched->rcpts[0].dsn[0], '4');
	cr_assert_not_null(strstr(watched->rcpts[0].reply, "server requires "
	    "authentication and no credentials are configured"), "%s",
	    watched->rcpts[0].reply);
	cr_assert_eq(scheduler_auth_required_list(sched, NULL, NULL), 1,
	    "learned");
	cr_assert_not_null(strstr(log, "needs credentials: no entry for "
	    "machine 127.0.0.1"), "%s", log);
	free(log);
	evconnlistener_free(fake.l);
}

static int gpg_home_made;
static char gpg_home[160];

static void
gpg_cleanup(void)
{
	char cmd[256];

	if (!gpg_home_made)
		return;
	snprintf(cmd, sizeof(cmd), "GNUPGHOME=%s gpgconf --kill gpg-agent "
	    ">/dev/null 2>&1", gpg_home);
	if (system(cmd) == -1)
		return;
}

/* A GNUPGHOME in topdir with a key t@test without a passphrase. */
static void
gpg_key_setup(void)
{
	if (access("/usr/bin/gpg", X_OK) == -1)
		cr_skip_test("gpg is not installed");
	snprintf(gpg_home, sizeof(gpg_home), "%s/gnupg", topdir);
	cr_assert_eq(mkdir(gpg_home, 0700), 0);
	gpg_home_made = 1;
	cr_assert_eq(setenv("GNUPGHOME", gpg_home, 1), 0);
	if (system("gpg --batch --quiet --pinentry-mode loopback "
	    "--passphrase '' --quick-gen-key 'smarthostd test <t@test>' "
	    "future-default default never >/dev/null 2>&1") != 0) {
		gpg_cleanup();
		cr_skip_test("cannot make a gpg key here");
	}
}

/*
 * Sends one message through the fake server (which wants AUTH) with the
 * credential files a and b (b may be NULL), on a relay that
 * authenticates first: it must be delivered after exactly one good AUTH.
 * Then stops the fake server and the gpg agent.
 */
static void
gpg_deliver(const char *a, const char *b)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512];

	snprintf(cfg_extra, sizeof(cfg_extra), "authinfo = [ \"%s\"%s%s%s ];\n"
	    "auth_first = [ \".\" ];\n", a, b != NULL ? ", \"" : "",
	    b != NULL ? b : "", b != NULL ? "\"" : "");
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; allow_plaintext_auth = true; };",
	    fake.port);
	load_config(relays, "retry_min = 60;");
	scheduler_add(sched, enqueue("alice@example.org", rcpts,
	    "Subject: g\r\n\r\ng\r\n", time(NULL)));
	cr_assert(run_until(queue_empty_and_delivered, 20), "not delivered "
	    "(%d auth ok, %d bad)", fake.nauth_ok, fake.nauth_bad);
	cr_assert_eq(fake.nauth_ok, 1);
	cr_assert_eq(fake.nauth_bad, 0);
	cr_assert_eq(fake.n530, 0);
	free(fake.msgs[0].data);
	evconnlistener_free(fake.l);
	gpg_cleanup();
}

/*
 * A plain authinfo file whose first matching entry has no password (passed
 * over, as Emacs's :require '(:secret) does) and whose second holds the
 * password as an Emacs gpg: token, decrypted through gpg like an
 * encrypted file.
 */
Test(deliver, gpg_token_after_an_entry_without_password)
{
	char token[4096];
	FILE *f;
	size_t n;

	gpg_key_setup();
	f = popen("printf %s from-token | gpg --batch --quiet --armor "
	    "--trust-model always -r t@test -e | base64 -w0", "r");
	cr_assert_not_null(f);
	n = fread(token, 1, sizeof(token) - 1, f);
	cr_assert_eq(pclose(f), 0, "gpg --encrypt failed");
	token[n] = '\0';
	cr_assert_gt(n, 100);

	fake_start_auth("alice", "from-token");
	snprintf(authfile, sizeof(authfile), "%s/authinfo", topdir);
	cr_assert_not_null(f = fopen(authfile, "w"));
	fprintf(f, "machine 127.0.0.1 port %d login alice\n"
	    "machine 127.0.0.1 port %d login alice password gpg:%s\n",
	    fake.port, fake.port, token);
	fclose(f);
	cr_assert_eq(chmod(authfile, 0600), 0);
	gpg_deliver(authfile, NULL);
}

Test(deliver, gpg_encrypted_authinfo_is_decrypted)
{
	char cmd[1024], plain[300], none[300];
	FILE *f;

	gpg_key_setup();
	snprintf(plain, sizeof(plain), "%s/plain", topdir);
	fake_start_auth("alice", "from-gpg");
	cr_assert_not_null(f = fopen(plain, "w"));
	fprintf(f, "machine 127.0.0.1 port %d login alice password from-gpg\n",
	    fake.port);
	fclose(f);
	snprintf(authfile, sizeof(authfile), "%s/authinfo.gpg", topdir);
	snprintf(cmd, sizeof(cmd), "gpg --batch --quiet --yes --trust-model "
	    "always -r t@test -o %s -e %s >/dev/null 2>&1", authfile, plain);
	cr_assert_eq(system(cmd), 0, "gpg --encrypt failed");
	unlink(plain);

	/* a missing plain file first, then the encrypted one */
	snprintf(none, sizeof(none), "%s/none", topdir);
	gpg_deliver(none, authfile);
}

/* ---- routing and failover ---- */

static char mdir2[160];

static size_t
maildir_new(const char *dir)
{
	char newdir[256];

	snprintf(newdir, sizeof(newdir), "%s/new", dir);
	return dir_count(newdir, NULL, 0);
}

static const char *relay_state_want;
static const char *relay_state_name;
static int relay_state_seen;

static void
relay_state_each(const struct scheduler_relay_state *st, void *arg)
{
	if (strcmp(st->name, relay_state_name) == 0 &&
	    strcmp(st->state, relay_state_want) == 0)
		relay_state_seen = 1;
}

/* Whether relay "up" is in state relay_state_want now. */
static int
up_in_state(void)
{
	relay_state_name = "up";
	relay_state_seen = 0;
	scheduler_relays(sched, relay_state_each, NULL);
	return relay_state_seen;
}

static int
maildir_has_one(void)
{
	return maildir_new(mdir) == 1;
}

static int
fake_has_one(void)
{
	return fake.nmsgs == 1;
}

static int
watched_attempts_3(void)
{
	refresh(&watched);
	return watched->attempts >= 3;
}

Test(deliver, routes_send_each_sender_to_its_relay)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512];
	struct envelope *e1, *e2, *e3;

	snprintf(mdir2, sizeof(mdir2), "%s/Maildir2", topdir);
	snprintf(relays, sizeof(relays), "home = { type = \"maildir\"; "
	    "path = \"%s\"; }; work = { type = \"maildir\"; path = \"%s\"; };",
	    mdir, mdir2);
	snprintf(cfg_extra, sizeof(cfg_extra), "routes = ( { domain = "
	    "\"work.example\"; relay = \"work\"; } );\n");
	load_config(relays, "retry_min = 60; retry_max = 600;");
	cfg_extra[0] = '\0';
	e1 = enqueue("me@work.example", rcpts, "Subject: w\r\n\r\nw\r\n",
	    time(NULL));
	e2 = enqueue("me@home.example", rcpts, "Subject: h\r\n\r\nh\r\n",
	    time(NULL));
	e3 = enqueue("boss@WORK.example", rcpts, "Subject: b\r\n\r\nb\r\n",
	    time(NULL));
	scheduler_add(sched, e1);
	scheduler_add(sched, e2);
	scheduler_add(sched, e3);
	cr_assert(run_until(queue_empty, 10), "mail still queued");
	cr_assert_eq(maildir_new(mdir), 1, "home got the home sender's mail");
	cr_assert_eq(maildir_new(mdir2), 2, "work got both work senders'");
}

/*
 * A message from me@work.example deferred at "up" (a closed port, backed
 * off for 600 s), then a reload that routes that sender to the Maildir
 * relay "box". Returns the message's id in id.
 */
static void
deferred_then_rerouted(char *id, size_t idlen)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	char relays[512], text[1024], err[512];
	struct config *old, *next;
	struct envelope *env;

	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; }; box = { type = \"maildir\"; "
	    "path = \"%s\"; };", closed_port(), mdir);
	load_config(relays, "retry_min = 600; retry_max = 600;");
	env = enqueue("me@work.example", rcpts, "Subject: r\r\n\r\nr\r\n",
	    time(NULL));
	watched = envelope_dup(env);
	snprintf(id, idlen, "%s", env->id);
	scheduler_add(sched, env);
	cr_assert(run_until(watched_attempted, 10), "never attempted");
	cr_assert_eq(maildir_new(mdir), 0);

	snprintf(text, sizeof(text), "spool = \"%s\";\nrelays = { %s };\n"
	    "routes = ( { sender = \"me@work.example\"; relay = \"box\"; } );\n",
	    spool, relays);
	next = config_parse_string(text, "test.conf", err, sizeof(err));
	cr_assert_not_null(next, "%s", err);
	old = cfg;
	cfg = next;
	scheduler_set_config(sched, cfg);
	config_free(old);
}

Test(deliver, reload_reroutes_queued_mail)
{
	char id[ENVELOPE_ID_MAX];

	/* The queued message follows the new route at its next attempt
	 * (made now by a flush). */
	deferred_then_rerouted(id, sizeof(id));
	scheduler_flush(sched);
	cr_assert(run_until(queue_empty, 10), "not re-routed");
	cr_assert_eq(maildir_new(mdir), 1);
}

/*
 * flush_one makes the message due while its old relay is still backed off
 * (a flush would clear that backoff), so it is delivered only if the
 * scheduler follows the new route rather than the relay the message had
 * when it went to wait.
 */
Test(deliver, reload_reroutes_a_waiting_message_past_its_old_relays_backoff)
{
	char id[ENVELOPE_ID_MAX];

	deferred_then_rerouted(id, sizeof(id));
	cr_assert_eq(scheduler_flush_one(sched, id), 0);
	cr_assert(run_until(queue_empty, 10), "waits for its old relay");
	cr_assert_eq(maildir_new(mdir), 1);
}

/* Primary "up" on the fake server's port with a Maildir backup "box". */
static void
load_failover_config(unsigned failover_after)
{
	char relays[512];

	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; backup = [ \"box\" ]; "
	    "failover_after = %u; }; box = { type = \"maildir\"; "
	    "path = \"%s\"; };", fake.port, failover_after, mdir);
	load_config(relays, "retry_min = 1; retry_max = 1;");
}

Test(deliver, failover_to_backup_after_delay_and_back_on_recovery)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct envelope *env;
	int fd;

	fd = fake_reserve();	/* the primary is down */
	load_failover_config(2);
	submit_watched(rcpts, "f");
	cr_assert(run_until(watched_attempted, 10), "never attempted");
	relay_state_want = "down";
	cr_assert(up_in_state(), "a refused connection: down");
	/* Unreachable for less than 2 s: the mail waits for the primary
	 * (time() has 1 s steps, so 2 s are at least 1 s more). */
	cr_assert_not(run_until(maildir_has_one, 0.9),
	    "failed over too early");
	cr_assert(run_until(queue_empty, 10), "never failed over");
	cr_assert_eq(maildir_new(mdir), 1);
	relay_state_want = "failed-over";
	cr_assert(up_in_state());

	/* The primary comes back: a probe finds it, new mail goes there. */
	fake_listen_on(fd);
	relay_state_want = "up";
	cr_assert(run_until(up_in_state, 10), "recovery not noticed");
	cr_assert_geq(fake.nconn, 1, "the probe connected");
	cr_assert_eq(fake.nmsgs, 0, "a probe sends no mail");
	env = enqueue("alice@example.org", rcpts, "Subject: g\r\n\r\ng\r\n",
	    time(NULL));
	scheduler_add(sched, env);
	cr_assert(run_until(fake_has_one, 10), "not back on the primary");
	cr_assert(run_until(queue_empty, 10));
	cr_assert_eq(maildir_new(mdir), 1, "nothing more at the backup");
	evconnlistener_free(fake.l);
}

Test(deliver, a_421_greeting_fails_over)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct envelope *env;

	fake_start();
	fake.greeting = "421 4.3.2 fake.test busy\r\n";
	load_failover_config(0);
	env = enqueue("alice@example.org", rcpts, "Subject: b\r\n\r\nb\r\n",
	    time(NULL));
	scheduler_add(sched, env);
	cr_assert(run_until(queue_empty, 10), "never failed over");
	cr_assert_eq(maildir_new(mdir), 1);
	cr_assert_geq(fake.nconn, 1);
	evconnlistener_free(fake.l);
}

/* A 554 greeting and a 450 to RCPT come from a server that is there:
 * the mail is retried on the primary and never goes to the backup, even
 * with failover_after = 0. */
static void
never_fails_over(const char *greeting, const char *rcpt)
{
	const char *rcpts[] = { rcpt, NULL };

	fake_start();
	fake.greeting = greeting;
	load_failover_config(0);
	submit_watched(rcpts, "n");
	cr_assert(run_until(watched_attempts_3, 15), "not retried");
	cr_assert_eq(watched->rcpts[0].status, RCPT_PENDING);
	cr_assert_eq(maildir_new(mdir), 0, "failed over");
	relay_state_want = "up";
	cr_assert(up_in_state());
	/* A 554 greeting ends each connection; after a 450 to RCPT the
	 * idle connection takes the retry */
	cr_assert_geq(greeting != NULL ? fake.nconn : fake.nmail, 3,
	    "every attempt went to the primary");
	evconnlistener_free(fake.l);
}

Test(deliver, a_554_greeting_never_fails_over)
{
	never_fails_over("554 5.3.2 fake.test no service\r\n",
	    "bob@example.net");
}

Test(deliver, a_4xx_to_rcpt_never_fails_over)
{
	never_fails_over(NULL, "later@example.net");
}

static int
fake_connected(void)
{
	return fake.nconn >= 1;
}

/* A probe still waiting for the greeting carries no mail: shutdown drops
 * it at once, like any session that is not ready yet. */
Test(deliver, shutdown_drops_a_probe_that_is_not_ready)
{
	static const char *const rcpts[] = { "bob@example.net", NULL };
	struct envelope *env;
	int port;

	fake_start();
	port = fake.port;
	evconnlistener_free(fake.l);	/* down: the first attempt fails */
	fake.l = NULL;
	load_failover_config(0);
	env = enqueue("alice@example.org", rcpts, "Subject: p\r\n\r\np\r\n",
	    time(NULL));
	scheduler_add(sched, env);
	cr_assert(run_until(queue_empty, 10), "never failed over");
	/* Back, but silent: the probe connects and waits for a greeting. */
	fake_listen(port);
	fake.greeting = "";
	cr_assert(run_until(fake_connected, 10), "no probe");
	session_done = 0;
	scheduler_shutdown(sched, 30, stopped_cb, NULL);
	cr_assert(run_until(is_stopped, 3), "shutdown waited for the probe");
	evconnlistener_free(fake.l);
}

/* ---- a state record that cannot be written ---- */

static int
fault_spent_and_synced_again(void)
{
	return __atomic_load_n(&fault_fdatasync_fail, __ATOMIC_SEQ_CST) == 0 &&
	    __atomic_load_n(&fdatasync_ok_after_fault, __ATOMIC_SEQ_CST) > 0;
}

static int
two_messages_seen(void)
{
	return fake.nmsgs >= 2;
}

static int
watched_attempted_twice(void)
{
	refresh(&watched);
	return watched->attempts >= 2;
}

/*
 * The upstream accepted one recipient and deferred the other; the record
 * saying so cannot be synced. The outcome stays in memory and the record is
 * written again, so the file ends up knowing good@ was sent, and a flush
 * (or a restart) sends only later@: never good@ twice because of a local
 * error.
 */
Test(deliver, unrecorded_delivery_is_kept_and_written_again)
{
	static const char *const rcpts[] = { "good@example.net",
	    "later@example.net", NULL };
	char relays[512], id[ENVELOPE_ID_MAX], *log;
	struct envelope *env;
	int ok;

	fake_start();
	snprintf(relays, sizeof(relays), "up = { host = \"127.0.0.1\"; "
	    "port = \"%d\"; tls = \"none\"; };", fake.port);
	load_config(relays, "retry_min = 60; retry_max = 600;");
	env = enqueue("alice@example.org", rcpts, "Subject: u\r\n\r\nu\r\n",
	    time(NULL));
	snprintf(id, sizeof(id), "%s", env->id);
	__atomic_store_n(&fdatasync_ok_after_fault, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&fault_fdatasync_fail, 1, __ATOMIC_SEQ_CST);
	capture_begin();
	scheduler_add(sched, env);
	ok = run_until(fault_spent_and_synced_again, 10);
	/* let the update's callback run and the message go back to wait */
	run_until(two_messages_seen, 0.3);
	log = capture_end();
	cr_assert(ok, "the record was not written again");
	cr_assert_not_null(strstr(log, "cannot record delivery state: "
	    "Input/output error; kept in memory, retrying in 1s"), "%s", log);
	free(log);
	cr_assert_eq(fake.nmsgs, 1);

	/* The file, not memory, knows good@ was sent. */
	env = queue_read(q, id);
	cr_assert_not_null(env, "%s: %s", id, strerror(errno));
	cr_assert_eq(env->attempts, 1);
	cr_assert_eq(env->rcpts[0].status, RCPT_SENT);
	cr_assert_eq(env->rcpts[1].status, RCPT_PENDING);
	envelope_free(env);

	/* The second attempt offers only later@, which the server defers
	 * again: no second message. good@ again would have made one. */
	watched = queue_read(q, id);
	scheduler_flush(sched);
	cr_assert(run_until(watched_attempted_twice, 10), "not retried");
	cr_assert_eq(fake.nmsgs, 1, "a recipient was sent twice");
	cr_assert_eq(watched->rcpts[0].status, RCPT_SENT);
	envelope_free(watched);
	watched = NULL;
	free(fake.msgs[0].data);
	evconnlistener_free(fake.l);
}
