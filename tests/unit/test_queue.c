/*
 * queue.c and worker.c against a real spool in a temporary directory.
 *
 * Faults are injected with the linker: this test is linked with
 * -Wl,--wrap=write,--wrap=fdatasync,--wrap=syncfs,--wrap=fsync (Makefile.am),
 * so every call queue.c makes to those goes through the __wrap_ functions
 * below, which pass through to the real call unless a test armed a fault.
 * envelope_encode is wrapped too, as a point in the commit thread's copy
 * forward of a log message where a test interleaves a note (copy_hook),
 * and clock_gettime, so that a test can run queue.c on a fake monotonic
 * clock (fake_mono_ms) that only it and the loop's syncs move.
 * Only descriptors above 2 are affected, so log lines still reach stderr.
 * The counting wrappers check what they sync by its identity (device and
 * inode), so syncing the wrong thing does not pass: __wrap_fsync counts
 * (and may slow down) fsync()s of the spool's queue/ directory only,
 * __wrap_fdatasync records which files it synced, __wrap_syncfs counts
 * only a syncfs of the spool's filesystem.
 */
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include <event2/event.h>
#include <event2/thread.h>

#include "envelope.h"
#include "logrec.h"
#include "queue.h"
#include "worker.h"

/* Fault injection. */

ssize_t __real_write(int fd, const void *buf, size_t len);
ssize_t __wrap_write(int fd, const void *buf, size_t len);
ssize_t __real_pwrite(int fd, const void *buf, size_t len, off_t off);
ssize_t __wrap_pwrite(int fd, const void *buf, size_t len, off_t off);
int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);
int __real_syncfs(int fd);
int __wrap_syncfs(int fd);
int __real_fsync(int fd);
int __wrap_fsync(int fd);
char *__real_envelope_encode(const struct envelope *env, size_t *len);
char *__wrap_envelope_encode(const struct envelope *env, size_t *len);
int __real_clock_gettime(clockid_t clk, struct timespec *ts);
int __wrap_clock_gettime(clockid_t clk, struct timespec *ts);

static long fault_write_budget = -1;	/* bytes until ENOSPC, -1: off */
static int fault_sync_errno;		/* fdatasync/syncfs fail with it */
static int fault_sync_delay_ms;		/* a slow disk */
static int count_fdatasync;
static int count_fdatasync_loop;	/* of them, on the test's thread */
static pthread_t test_thread;		/* the loop's */
static int count_syncfs;		/* of the spool's filesystem */
static int count_dir_fsync;		/* fsync()s of queue/ itself */
static int count_log_dir_fsync;		/* fsync()s of log/ itself */
static int fault_dirsync_delay_ms;	/* a slow directory fsync */
/* CLOCK_MONOTONIC in ms when not 0, and what each fdatasync on the loop's
 * thread adds to it (a sync that took that long). */
static uint64_t fake_mono_ms;
static uint64_t fake_loop_sync_ms;
#define SYNCED_MAX 1024
static ino_t synced_ino[SYNCED_MAX];	/* files fdatasync()ed, in order */
static int nsynced;

static char spool[128];

/* Whether st is the spool's subdirectory sub ("" for the spool). */
static int
is_spool_dir(const struct stat *st, const char *sub)
{
	char path[192];
	struct stat want;

	snprintf(path, sizeof(path), "%s/%s", spool, sub);
	return stat(path, &want) == 0 && want.st_dev == st->st_dev &&
	    want.st_ino == st->st_ino;
}

/* Whether the message file queue/<id> was fdatasync()ed. */
static int
file_was_synced(const char *id)
{
	char path[192];
	struct stat st;
	int i, n = __atomic_load_n(&nsynced, __ATOMIC_SEQ_CST);

	snprintf(path, sizeof(path), "%s/queue/%s", spool, id);
	if (stat(path, &st) == -1)
		return 0;
	for (i = 0; i < n && i < SYNCED_MAX; i++)
		if (synced_ino[i] == st.st_ino)
			return 1;
	return 0;
}

/* What the disk takes of a write of *len bytes to fd under
 * fault_write_budget: -1 (ENOSPC) when full, else *len cut to the room
 * left (a short write, then full). */
static int
fault_write(int fd, size_t *len)
{
	long budget;

	budget = __atomic_load_n(&fault_write_budget, __ATOMIC_SEQ_CST);
	if (fd <= 2 || budget < 0)
		return 0;
	if (budget == 0) {
		errno = ENOSPC;
		return -1;
	}
	if (*len > (size_t)budget)
		*len = (size_t)budget;
	__atomic_store_n(&fault_write_budget, budget - (long)*len,
	    __ATOMIC_SEQ_CST);
	return 0;
}

ssize_t
__wrap_write(int fd, const void *buf, size_t len)
{
	if (fault_write(fd, &len) == -1)
		return -1;
	return __real_write(fd, buf, len);
}

ssize_t
__wrap_pwrite(int fd, const void *buf, size_t len, off_t off)
{
	if (fault_write(fd, &len) == -1)
		return -1;
	return __real_pwrite(fd, buf, len, off);
}

static int
fault_sync(void)
{
	struct timespec ts;
	int ms, e;

	if ((ms = __atomic_load_n(&fault_sync_delay_ms, __ATOMIC_SEQ_CST))) {
		ts.tv_sec = ms / 1000;
		ts.tv_nsec = (ms % 1000) * 1000000L;
		nanosleep(&ts, NULL);
	}
	if ((e = __atomic_load_n(&fault_sync_errno, __ATOMIC_SEQ_CST))) {
		errno = e;
		return -1;
	}
	return 0;
}

/*
 * A copy forward of one log message (copy_hook.id) on the commit thread,
 * and something done to it at one of two points: when the commit thread
 * encodes the copy (it has read the message and its state) or at the
 * copy's fdatasync (the copy is written, not yet in the index). A note
 * there comes from the commit thread itself rather than the loop's, which
 * is the same interleaving made certain.
 */
enum copy_hook_at {
	COPY_NOTE_AFTER_READ,	/* queue_note() when the copy is encoded */
	COPY_NOTE_AT_SYNC,	/* queue_note() at the copy's fdatasync */
	COPY_SYNC_FAILS,	/* the copy's fdatasync fails with EIO */
};
static struct {
	int armed;		/* 1: waiting for the encode, 2: for the sync */
	enum copy_hook_at at;
	pthread_t loop;		/* the test's thread, never hooked */
	struct queue *q;
	const struct envelope *env;	/* noted */
	int fired;
	int note_error;		/* queue_note()'s errno, or 0 */
} copy_hook;

static void
copy_hook_note(void)
{
	copy_hook.note_error = queue_note(copy_hook.q, copy_hook.env) == 0 ?
	    0 : errno;
	copy_hook.fired++;
	__atomic_store_n(&copy_hook.armed, 0, __ATOMIC_SEQ_CST);
}

char *
__wrap_envelope_encode(const struct envelope *env, size_t *len)
{
	if (__atomic_load_n(&copy_hook.armed, __ATOMIC_SEQ_CST) == 1 &&
	    !pthread_equal(pthread_self(), copy_hook.loop) &&
	    strcmp(env->id, copy_hook.env->id) == 0) {
		if (copy_hook.at == COPY_NOTE_AFTER_READ)
			copy_hook_note();
		else
			__atomic_store_n(&copy_hook.armed, 2,
			    __ATOMIC_SEQ_CST);
	}
	return __real_envelope_encode(env, len);
}

int
__wrap_fdatasync(int fd)
{
	struct stat st;
	uint64_t took;
	int i;

	if (__atomic_load_n(&copy_hook.armed, __ATOMIC_SEQ_CST) == 2 &&
	    !pthread_equal(pthread_self(), copy_hook.loop)) {
		if (copy_hook.at == COPY_NOTE_AT_SYNC)
			copy_hook_note();
		else {
			copy_hook.fired++;
			__atomic_store_n(&copy_hook.armed, 0,
			    __ATOMIC_SEQ_CST);
			errno = EIO;
			return -1;
		}
	}
	__atomic_add_fetch(&count_fdatasync, 1, __ATOMIC_SEQ_CST);
	if (pthread_equal(pthread_self(), test_thread)) {
		__atomic_add_fetch(&count_fdatasync_loop, 1, __ATOMIC_SEQ_CST);
		took = __atomic_load_n(&fake_loop_sync_ms, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&fake_mono_ms, __ATOMIC_SEQ_CST) != 0)
			__atomic_add_fetch(&fake_mono_ms, took,
			    __ATOMIC_SEQ_CST);
	}
	if (fault_sync() == -1)
		return -1;
	if (__real_fdatasync(fd) == -1)
		return -1;
	/* Recorded once it succeeded: a file is durable from here on. */
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
		i = __atomic_fetch_add(&nsynced, 1, __ATOMIC_SEQ_CST);
		if (i < SYNCED_MAX)
			synced_ino[i] = st.st_ino;
	}
	return 0;
}

int
__wrap_syncfs(int fd)
{
	struct stat st, sp;

	if (fstat(fd, &st) == 0 && stat(spool, &sp) == 0 &&
	    st.st_dev == sp.st_dev)
		__atomic_add_fetch(&count_syncfs, 1, __ATOMIC_SEQ_CST);
	if (fault_sync() == -1)
		return -1;
	return __real_syncfs(fd);
}

int
__wrap_clock_gettime(clockid_t clk, struct timespec *ts)
{
	uint64_t ms = __atomic_load_n(&fake_mono_ms, __ATOMIC_SEQ_CST);

	if (clk != CLOCK_MONOTONIC || ms == 0)
		return __real_clock_gettime(clk, ts);
	ts->tv_sec = (time_t)(ms / 1000);
	ts->tv_nsec = (long)(ms % 1000) * 1000000L;
	return 0;
}

/* Counts fsync()s of queue/ (not of tmp/ or any other directory);
 * fault_dirsync_delay_ms slows every directory fsync. */
int
__wrap_fsync(int fd)
{
	struct timespec ts;
	struct stat st;
	int ms;

	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		if (is_spool_dir(&st, "queue"))
			__atomic_add_fetch(&count_dir_fsync, 1,
			    __ATOMIC_SEQ_CST);
		if (is_spool_dir(&st, "log"))
			__atomic_add_fetch(&count_log_dir_fsync, 1,
			    __ATOMIC_SEQ_CST);
		ms = __atomic_load_n(&fault_dirsync_delay_ms, __ATOMIC_SEQ_CST);
		if (ms) {
			ts.tv_sec = ms / 1000;
			ts.tv_nsec = (ms % 1000) * 1000000L;
			nanosleep(&ts, NULL);
		}
	}
	return __real_fsync(fd);
}

/* Fixture: a spool under a fresh directory in /tmp, an event base. */

static char topdir[64];
static struct event_base *base;

static void
setup(void)
{
	snprintf(topdir, sizeof(topdir), "/tmp/test_queue.XXXXXX");
	cr_assert_not_null(mkdtemp(topdir));
	snprintf(spool, sizeof(spool), "%s/spool", topdir);
	cr_assert_eq(evthread_use_pthreads(), 0);
	cr_assert_not_null(base = event_base_new());
	test_thread = pthread_self();
}

static void
teardown(void)
{
	if (base != NULL)
		event_base_free(base);
	base = NULL;
	fixture_rmtree(topdir);
}

TestSuite(queue, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(worker, .init = setup, .fini = teardown, .timeout = 60);

/* Runs the loop until *counter reaches target, at most 10 seconds. */
static int loop_counter, loop_target;

static void
loop_tick(void)
{
	if (++loop_counter >= loop_target)
		event_base_loopbreak(base);
}

static void
run_loop(int target)
{
	struct timeval tv = { 10, 0 };

	loop_target = target;
	if (loop_counter >= loop_target)
		return;
	cr_assert_eq(event_base_loopexit(base, &tv), 0);
	event_base_dispatch(base);
	cr_assert_geq(loop_counter, target,
	    "timed out: %d of %d callbacks ran", loop_counter, target);
}

/* A queue that puts every message in a file of its own: the tests of the
 * file format (large messages, and spools of earlier versions). */
static struct queue *
open_queue(enum spool_sync sync)
{
	struct queue *q;
	char err[256];

	q = queue_open(base, spool, sync, 0, err, sizeof(err));
	cr_assert_not_null(q, "queue_open: %s", err);
	queue_log_max(q, 0);
	return q;
}

/* The log's clock in the tests of copies forward: every look is an hour
 * after the one before, so the oldest file has always gone long enough
 * without a delivery for its mail to be copied forward, and the tests see
 * the copy at once. */
static int64_t
clock_hour_per_look(void)
{
	static int64_t looks;
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec +
	    3600 * __atomic_add_fetch(&looks, 1, __ATOMIC_SEQ_CST);
}

/* A queue with the spool log on, as the daemon runs it. */
static struct queue *
open_log_queue(enum spool_sync sync)
{
	struct queue *q;
	char err[256];

	q = queue_open(base, spool, sync, 0, err, sizeof(err));
	cr_assert_not_null(q, "queue_open: %s", err);
	return q;
}

static struct envelope *
make_env(const char *sender, size_t nrcpts)
{
	struct envelope *env = envelope_new();
	char addr[64];
	size_t i;

	free(env->sender);
	env->sender = strdup(sender);
	env->client = strdup("localhost[127.0.0.1]");
	env->created = time(NULL);
	for (i = 0; i < nrcpts; i++) {
		snprintf(addr, sizeof(addr), "rcpt%zu@example.org", i);
		envelope_add_rcpt(env, addr);
	}
	return env;
}

/* Counts the entries of <spool>/<sub>, minus "." and "..". */
static int
count_dir(const char *sub)
{
	char path[256];
	int n;

	snprintf(path, sizeof(path), "%s/%s", spool, sub);
	cr_assert_geq(n = fixture_count_dir(path), 0, "%s", path);
	return n;
}

static int
exists(const char *sub, const char *name)
{
	char path[256];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s/%s", spool, sub, name);
	return stat(path, &st) == 0;
}

static int
tombstone_each(const struct logrec *rec, const unsigned char *payload,
    size_t offset, void *arg)
{
	if (rec->type == LOGREC_DONE)
		(*(int *)arg)++;
	return 0;
}

/* Tombstones written to the spool log so far, synced or not. */
static int
log_tombstones(void)
{
	char path[512], *buf;
	DIR *d;
	struct dirent *de;
	struct stat st;
	int n = 0, fd;

	snprintf(path, sizeof(path), "%s/log", spool);
	cr_assert_not_null(d = opendir(path), "%s", path);
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/log/%s", spool, de->d_name);
		cr_assert_neq(fd = open(path, O_RDONLY), -1, "%s", path);
		cr_assert_eq(fstat(fd, &st), 0);
		buf = malloc((size_t)st.st_size + 1);
		cr_assert_eq(read(fd, buf, (size_t)st.st_size), st.st_size);
		close(fd);
		(void)logrec_scan(buf, (size_t)st.st_size,
		    strtoull(de->d_name, NULL, 16), tombstone_each, &n);
		free(buf);
	}
	closedir(d);
	return n;
}

static off_t
file_size(const char *sub, const char *name)
{
	char path[256];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s/%s", spool, sub, name);
	cr_assert_eq(stat(path, &st), 0, "%s", path);
	return st.st_size;
}

/* A commit result. */
struct result {
	int called;
	int error;
	struct envelope *env;
};

static void
commit_cb(int error, struct envelope *env, void *arg)
{
	struct result *r = arg;

	r->called++;
	r->error = error;
	r->env = env;
	loop_tick();
}

static void
done_cb(int error, void *arg)
{
	struct result *r = arg;

	r->called++;
	r->error = error;
	loop_tick();
}

/* Body bytes with every byte value, CRLF lines and a lone "." line. */
static char *
make_body(size_t len)
{
	char *b = malloc(len);
	size_t i;

	for (i = 0; i < len; i++)
		b[i] = (char)((i * 7 + i / 251) & 0xff);
	if (len > 16)
		memcpy(b, "Subject: x\r\n.\r\n", 15);
	return b;
}

/* Begins, writes body in chunks, commits and waits. Returns the committed
 * envelope, which the caller frees. */
static struct envelope *
commit_one(struct queue *q, const struct envelope *env, const char *body,
    size_t len)
{
	struct queue_txn *txn;
	struct result r = { 0, -1, NULL };
	char id[ENVELOPE_ID_MAX];
	size_t off, n;

	txn = queue_txn_begin(q, env);
	cr_assert_not_null(txn, "begin: %s", strerror(errno));
	snprintf(id, sizeof(id), "%s", queue_txn_id(txn));
	for (off = 0; off < len; off += n) {
		n = len - off < 1000 ? len - off : 1000;
		cr_assert_eq(queue_txn_write(txn, body + off, n), 0);
	}
	cr_assert_eq(queue_txn_size(txn), (off_t)len);
	cr_assert(exists("tmp", id));
	queue_txn_commit(txn, commit_cb, &r);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.called, 1);
	cr_assert_eq(r.error, 0, "commit: %s", strerror(r.error));
	cr_assert_not_null(r.env);
	cr_assert_str_eq(r.env->id, id);
	cr_assert_eq(r.env->body_size, (off_t)len);
	cr_assert(!exists("tmp", id), "tmp/%s still there", id);
	cr_assert(exists("queue", id), "queue/%s missing", id);
	return r.env;
}

/* Begins a txn, writes len bytes of body in one piece and asks for the
 * commit, whose result goes to *r; the caller runs the loop. */
static struct queue_txn *
txn_written(struct queue *q, const struct envelope *env, const char *body,
    size_t len)
{
	struct queue_txn *txn;

	cr_assert_not_null(txn = queue_txn_begin(q, env));
	cr_assert_eq(queue_txn_write(txn, body, len), 0);
	return txn;
}

static void
commit_start(struct queue *q, const struct envelope *env, const char *body,
    size_t len, struct result *r)
{
	*r = (struct result){ 0, -1, NULL };
	queue_txn_commit(txn_written(q, env, body, len), commit_cb, r);
}

/* The same through queue_txn_commit_alone(), as for the only session. */
static void
lone_start(struct queue *q, const struct envelope *env, const char *body,
    size_t len, struct result *r)
{
	*r = (struct result){ 0, -1, NULL };
	queue_txn_commit_alone(txn_written(q, env, body, len), commit_cb, r);
}

/* lone_start() and a wait for a successful callback. */
static void
lone_wait(struct queue *q, const struct envelope *env, const char *body,
    size_t len, struct result *r)
{
	lone_start(q, env, body, len, r);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r->error, 0, "commit: %s", strerror(r->error));
}

/* queue_read() that must find the message. */
static struct envelope *
read_ok(struct queue *q, const char *id)
{
	struct envelope *env = queue_read(q, id);

	cr_assert_not_null(env, "read: %s", strerror(errno));
	return env;
}

/* queue_update() and a wait for its callback; returns its error. */
static int
update_wait(struct queue *q, const struct envelope *env)
{
	struct result r = { 0, -1, NULL };

	queue_update(q, env, done_cb, &r);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.called, 1);
	return r.error;
}

/* queue_remove() and a wait for its callback; returns its error. */
static int
remove_wait(struct queue *q, const char *id)
{
	struct result r = { 0, -1, NULL };

	queue_remove(q, id, done_cb, &r);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.called, 1);
	return r.error;
}

/* queue_note() that succeeds without a sync. */
static void
note_unsynced(struct queue *q, const struct envelope *env)
{
	int syncs = __atomic_load_n(&count_fdatasync, __ATOMIC_SEQ_CST);

	cr_assert_eq(queue_note(q, env), 0, "note: %s", strerror(errno));
	cr_assert_eq(__atomic_load_n(&count_fdatasync, __ATOMIC_SEQ_CST),
	    syncs, "queue_note synced");
}

/* queue_note() on a disk that fills after 5 bytes: it fails with ENOSPC. */
static void
note_fails_enospc(struct queue *q, const struct envelope *env)
{
	__atomic_store_n(&fault_write_budget, 5, __ATOMIC_SEQ_CST);
	errno = 0;
	cr_assert_eq(queue_note(q, env), -1);
	cr_assert_eq(errno, ENOSPC);
	__atomic_store_n(&fault_write_budget, -1, __ATOMIC_SEQ_CST);
}

static void
assert_body(struct queue *q, const struct envelope *env, const char *body,
    size_t len)
{
	char *got = malloc(len + 1);
	ssize_t n;
	int fd;

	fd = queue_body_open(q, env);
	cr_assert_geq(fd, 0, "body_open: %s", strerror(errno));
	n = pread(fd, got, len + 1, env->body_offset);
	cr_assert_geq(n, (ssize_t)len);
	cr_assert_eq(env->body_size, (off_t)len);
	cr_assert(memcmp(got, body, len) == 0, "body differs");
	close(fd);
	free(got);
}

/* queue_load into an array. */
struct loaded {
	struct envelope *env[64];
	size_t n;
};

static void
load_each(struct envelope *env, void *arg)
{
	struct loaded *l = arg;

	cr_assert_lt(l->n, 64);
	l->env[l->n++] = env;
}

static void
loaded_free(struct loaded *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		envelope_free(l->env[i]);
	l->n = 0;
}

static struct envelope *
loaded_find(struct loaded *l, const char *id)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		if (strcmp(l->env[i]->id, id) == 0)
			return l->env[i];
	return NULL;
}

/* Opens the spool with open (open_queue or open_log_queue), as a start
 * does, and loads every message into *ld: there must be n. */
static struct queue *
open_load(struct queue *(*open)(enum spool_sync), struct loaded *ld,
    size_t n)
{
	struct queue *q = open(SPOOL_SYNC_FSYNC);

	cr_assert_eq(queue_load(q, load_each, ld), n);
	return q;
}

/* Opens the spool with open, as a start does, checks that it loads the n
 * messages whose ids follow and nothing else, and closes it. */
static void
assert_loads_only(struct queue *(*open)(enum spool_sync), size_t n, ...)
{
	struct loaded ld = { .n = 0 };
	struct queue *q = open_load(open, &ld, n);
	const char *id;
	va_list ap;
	size_t i;

	va_start(ap, n);
	for (i = 0; i < n; i++) {
		id = va_arg(ap, const char *);
		cr_assert_not_null(loaded_find(&ld, id), "%s not loaded", id);
	}
	va_end(ap);
	queue_close(q);
	loaded_free(&ld);
}

static int
valid_id(const char *id)
{
	return strlen(id) == 16 && strspn(id, "0123456789ABCDEF") == 16;
}

Test(queue, commit_then_load_in_fresh_queue)
{
	struct queue *q;
	struct envelope *env, *c, *l;
	struct loaded ld = { .n = 0 };
	size_t len = 200 * 1024 + 17;
	char *body = make_body(len);

	q = open_load(open_queue, &ld, 0);
	env = make_env("alice@example.org", 3);
	env->relay = strdup("upstream");
	env->flags = ENVELOPE_8BITMIME;
	snprintf(env->id, sizeof(env->id), "IGNORED");
	c = commit_one(q, env, body, len);
	cr_assert(valid_id(c->id), "id %s", c->id);
	cr_assert_str_eq(env->id, "IGNORED", "caller's envelope changed");
	cr_assert_str_eq(c->sender, "alice@example.org");
	cr_assert_eq(c->nrcpts, 3);
	assert_body(q, c, body, len);
	queue_close(q);

	q = open_load(open_queue, &ld, 1);
	l = ld.env[0];
	cr_assert_str_eq(l->id, c->id);
	cr_assert_str_eq(l->sender, "alice@example.org");
	cr_assert_str_eq(l->relay, "upstream");
	cr_assert_str_eq(l->client, "localhost[127.0.0.1]");
	cr_assert_eq(l->flags, ENVELOPE_8BITMIME);
	cr_assert_eq(l->created, env->created);
	cr_assert_eq(l->nrcpts, 3);
	cr_assert_str_eq(l->rcpts[2].addr, "rcpt2@example.org");
	cr_assert_eq(l->body_offset, c->body_offset);
	assert_body(q, l, body, len);
	queue_close(q);

	loaded_free(&ld);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

Test(queue, empty_body_and_null_sender)
{
	struct queue *q;
	struct envelope *env, *c;
	struct loaded ld = { .n = 0 };

	q = open_queue(SPOOL_SYNC_SYNCFS);
	env = make_env("", 1);
	c = commit_one(q, env, "", 0);
	queue_close(q);
	q = open_queue(SPOOL_SYNC_SYNCFS);
	cr_assert_eq(queue_load(q, load_each, &ld), 1);
	cr_assert_str_eq(ld.env[0]->sender, "");
	cr_assert_eq(ld.env[0]->body_size, 0);
	queue_close(q);
	loaded_free(&ld);
	envelope_free(c);
	envelope_free(env);
}

Test(queue, abort_leaves_nothing)
{
	struct queue *q;
	struct queue_txn *txn;
	struct envelope *env = make_env("a@b", 1);
	char id[ENVELOPE_ID_MAX];

	q = open_queue(SPOOL_SYNC_FSYNC);
	cr_assert_not_null(txn = queue_txn_begin(q, env));
	snprintf(id, sizeof(id), "%s", queue_txn_id(txn));
	cr_assert_eq(queue_txn_write(txn, "hello\r\n", 7), 0);
	cr_assert(exists("tmp", id));
	queue_txn_abort(txn);
	queue_close(q);	/* waits for the unlink */
	cr_assert_eq(count_dir("tmp"), 0);
	cr_assert_eq(count_dir("queue"), 0);
	assert_loads_only(open_queue, 0);
	envelope_free(env);
}

Test(queue, close_drains_pending_commit)
{
	struct queue *q;
	struct queue_txn *txn;
	struct envelope *env = make_env("a@b", 1);
	struct result r = { 0, -1, NULL };
	char id[ENVELOPE_ID_MAX];

	q = open_queue(SPOOL_SYNC_FSYNC);
	cr_assert_not_null(txn = queue_txn_begin(q, env));
	snprintf(id, sizeof(id), "%s", queue_txn_id(txn));
	cr_assert_eq(queue_txn_write(txn, "x\r\n", 3), 0);
	queue_txn_commit(txn, commit_cb, &r);
	cr_assert_eq(r.called, 0, "callback ran before the loop did");
	queue_close(q);
	cr_assert_eq(r.called, 1, "queue_close did not run the callback");
	cr_assert_eq(r.error, 0);
	cr_assert_str_eq(r.env->id, id);
	cr_assert(exists("queue", id));
	envelope_free(r.env);
	envelope_free(env);
}

Test(queue, update_then_reload_shows_states)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 3), *c, *l;
	struct loaded ld = { .n = 0 };
	struct result r1 = { 0, -1, NULL }, r2 = { 0, -1, NULL };
	char *body = make_body(5000);
	off_t before;

	q = open_queue(SPOOL_SYNC_FSYNC);
	c = commit_one(q, env, body, 5000);
	before = file_size("queue", c->id);

	envelope_set_rcpt(c, 0, RCPT_SENT, "2.0.0", "250 2.0.0 Ok: queued");
	c->attempts = 1;
	queue_update(q, c, done_cb, &r1);
	envelope_set_rcpt(c, 2, RCPT_FAILED, "5.1.1", "550 5.1.1 unknown");
	envelope_set_rcpt(c, 1, RCPT_PENDING, "4.2.0", "451 try later");
	c->attempts = 2;
	c->next_try = 1900000000;
	queue_update(q, c, done_cb, &r2);
	loop_counter = 0;
	run_loop(2);
	cr_assert_eq(r1.error, 0);
	cr_assert_eq(r2.error, 0);
	cr_assert_gt(file_size("queue", c->id), before);
	queue_close(q);

	q = open_load(open_queue, &ld, 1);
	l = ld.env[0];
	cr_assert_eq(l->attempts, 2);
	cr_assert_eq(l->next_try, 1900000000);
	cr_assert_eq(l->rcpts[0].status, RCPT_SENT);
	cr_assert_str_eq(l->rcpts[0].reply, "250 2.0.0 Ok: queued");
	cr_assert_eq(l->rcpts[1].status, RCPT_PENDING);
	cr_assert_str_eq(l->rcpts[1].dsn, "4.2.0");
	cr_assert_eq(l->rcpts[2].status, RCPT_FAILED);
	cr_assert_str_eq(l->rcpts[2].dsn, "5.1.1");
	/* The records live after the body, which is untouched. */
	assert_body(q, l, body, 5000);
	queue_close(q);

	loaded_free(&ld);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

/* queue_note() writes the record at once, without a sync: a reader (the
 * daemon after its own crash) sees it; the durable update follows. */
Test(queue, note_is_read_back_without_a_sync)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 2), *c, *l;
	char *body = make_body(3000);
	off_t before;

	q = open_queue(SPOOL_SYNC_FSYNC);
	c = commit_one(q, env, body, 3000);
	before = file_size("queue", c->id);
	envelope_set_rcpt(c, 0, RCPT_SENT, "2.0.0", "250 2.0.0 Ok: queued");
	note_unsynced(q, c);
	cr_assert_gt(file_size("queue", c->id), before);
	l = read_ok(q, c->id);
	cr_assert_eq(l->rcpts[0].status, RCPT_SENT);
	cr_assert_eq(l->rcpts[1].status, RCPT_PENDING);
	assert_body(q, l, body, 3000);
	envelope_free(l);
	cr_assert_eq(update_wait(q, c), 0);
	queue_close(q);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

/* A note that cannot be written whole leaves the file as it was, so the
 * next record does not start glued to half of it. */
Test(queue, failed_note_leaves_no_partial_record)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c, *l;
	char *body = make_body(1000);
	off_t before;

	q = open_queue(SPOOL_SYNC_FSYNC);
	c = commit_one(q, env, body, 1000);
	before = file_size("queue", c->id);
	envelope_set_rcpt(c, 0, RCPT_SENT, "2.0.0", "250 2.0.0 Ok");
	note_fails_enospc(q, c);
	cr_assert_eq(file_size("queue", c->id), before);

	c->attempts = 3;
	cr_assert_eq(update_wait(q, c), 0);
	l = read_ok(q, c->id);
	cr_assert_eq(l->rcpts[0].status, RCPT_SENT);
	cr_assert_eq(l->attempts, 3);
	envelope_free(l);
	queue_close(q);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

Test(queue, remove)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c1, *c2;

	q = open_queue(SPOOL_SYNC_FSYNC);
	c1 = commit_one(q, env, "one\r\n", 5);
	c2 = commit_one(q, env, "two\r\n", 5);
	cr_assert_eq(remove_wait(q, c1->id), 0);
	cr_assert(!exists("queue", c1->id));
	cr_assert(exists("queue", c2->id));
	/* Removing what is gone reports it. */
	cr_assert_eq(remove_wait(q, c1->id), ENOENT);
	queue_close(q);

	assert_loads_only(open_queue, 1, c2->id);
	envelope_free(c1);
	envelope_free(c2);
	envelope_free(env);
}

/* Records the order in which done callbacks run. */
static char order[16];
static size_t norder;

static void
order_cb(int error, void *arg)
{
	cr_assert_eq(error, 0, "op %s: %s", (char *)arg, strerror(error));
	order[norder++] = *(char *)arg;
	loop_tick();
}

Test(queue, update_and_remove_keep_order)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c;
	struct result r = { 0, -1, NULL };
	static char u[] = "u", rm[] = "r";

	q = open_queue(SPOOL_SYNC_FSYNC);
	c = commit_one(q, env, "x\r\n", 3);
	/* Issued back to back, they may land in one group: the update must
	 * still find the file, and the remove must still win. */
	envelope_set_rcpt(c, 0, RCPT_SENT, "2.0.0", "250 OK");
	queue_update(q, c, order_cb, u);
	queue_remove(q, c->id, order_cb, rm);
	queue_update(q, c, done_cb, &r);
	loop_counter = 0;
	run_loop(3);
	cr_assert_eq(norder, 2);
	cr_assert_eq(order[0], 'u');
	cr_assert_eq(order[1], 'r');
	cr_assert_eq(r.error, ENOENT, "update after remove: %d", r.error);
	cr_assert(!exists("queue", c->id));
	queue_close(q);
	envelope_free(c);
	envelope_free(env);
}

/* 50 sessions finishing DATA at once share syncs. */
static void
group_commit(enum spool_sync mode)
{
	struct queue *q;
	struct queue_txn *txn[50];
	struct envelope *env = make_env("a@b", 2);
	struct result r[50];
	struct queue_stats st;
	struct loaded ld = { .n = 0 };
	char line[64];
	int i, j;

	q = open_queue(mode);
	/* Every sync takes 20 ms, as on a real disk, so that the outcome
	 * does not depend on how fast the spool's filesystem is. */
	__atomic_store_n(&fault_sync_delay_ms, 20, __ATOMIC_SEQ_CST);
	for (i = 0; i < 50; i++) {
		cr_assert_not_null(txn[i] = queue_txn_begin(q, env));
		snprintf(line, sizeof(line), "message %d\r\n", i);
		cr_assert_eq(queue_txn_write(txn[i], line, strlen(line)), 0);
		r[i].called = 0;
		r[i].error = -1;
		r[i].env = NULL;
	}
	for (i = 0; i < 50; i++)
		queue_txn_commit(txn[i], commit_cb, &r[i]);
	loop_counter = 0;
	run_loop(50);
	for (i = 0; i < 50; i++) {
		cr_assert_eq(r[i].called, 1);
		cr_assert_eq(r[i].error, 0);
		for (j = 0; j < i; j++)
			cr_assert_str_neq(r[i].env->id, r[j].env->id);
	}
	queue_stats(q, &st);
	cr_assert_eq(st.commits, 50);
	cr_assert_geq(st.sync_groups, 1);
	cr_assert_lt(st.sync_groups, st.commits,
	    "no grouping: %lu groups for %lu commits", st.sync_groups,
	    st.commits);
	/*
	 * Typically two groups: the first commit syncs alone while the other
	 * 49 queue up behind it. The bound leaves room for a loaded machine
	 * preempting the loop mid-burst and still demands real grouping.
	 */
	cr_assert_leq(st.sync_groups, 10, "%lu groups", st.sync_groups);
	if (mode == SPOOL_SYNC_SYNCFS) {
		cr_assert_eq(count_syncfs, (int)st.sync_groups);
		cr_assert_eq(count_fdatasync, 0);
	} else {
		cr_assert_eq(count_fdatasync, 50);
		cr_assert_eq(count_syncfs, 0);
		for (i = 0; i < 50; i++)
			cr_assert(file_was_synced(r[i].env->id),
			    "%s committed, never fdatasync()ed",
			    r[i].env->id);
	}
	cr_assert_eq(count_dir("queue"), 50);
	cr_assert_eq(count_dir("tmp"), 0);
	__atomic_store_n(&fault_sync_delay_ms, 0, __ATOMIC_SEQ_CST);
	queue_close(q);

	q = open_queue(mode);
	cr_assert_eq(queue_load(q, load_each, &ld), 50);
	for (i = 0; i < 50; i++) {
		cr_assert_not_null(loaded_find(&ld, r[i].env->id));
		envelope_free(r[i].env);
	}
	queue_close(q);
	loaded_free(&ld);
	envelope_free(env);
}

Test(queue, group_commit_fsync)
{
	group_commit(SPOOL_SYNC_FSYNC);
}

Test(queue, group_commit_syncfs)
{
	group_commit(SPOOL_SYNC_SYNCFS);
}

Test(queue, ids_unique_and_time_ordered)
{
	struct queue *q;
	struct queue_txn *txn;
	struct envelope *env = make_env("a@b", 1);
	char prev[ENVELOPE_ID_MAX] = "", id[ENVELOPE_ID_MAX];
	int i;

	q = open_queue(SPOOL_SYNC_FSYNC);
	for (i = 0; i < 3000; i++) {
		cr_assert_not_null(txn = queue_txn_begin(q, env));
		snprintf(id, sizeof(id), "%s", queue_txn_id(txn));
		cr_assert(valid_id(id), "bad id %s", id);
		cr_assert_gt(strcmp(id, prev), 0, "%s after %s", id, prev);
		snprintf(prev, sizeof(prev), "%s", id);
		queue_txn_abort(txn);
	}
	queue_close(q);
	cr_assert_eq(count_dir("tmp"), 0);
	envelope_free(env);
}

Test(queue, second_writer_refused)
{
	struct queue *q, *q2;
	char err[256] = "";

	q = open_queue(SPOOL_SYNC_FSYNC);
	q2 = queue_open(base, spool, SPOOL_SYNC_FSYNC, 0, err, sizeof(err));
	cr_assert_null(q2);
	cr_assert_not_null(strstr(err, "in use"), "%s", err);
	queue_close(q);
}

/* Runs queue_load with stderr captured into buf. */
static size_t
load_capturing(struct queue *q, struct loaded *ld, char *buf, size_t len)
{
	char path[256];
	size_t n, ret;
	int fd, saved;
	ssize_t got;

	snprintf(path, sizeof(path), "%s/stderr", topdir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	cr_assert_geq(fd, 0);
	saved = dup(2);
	dup2(fd, 2);
	ret = queue_load(q, load_each, ld);
	dup2(saved, 2);
	close(saved);
	got = pread(fd, buf, len - 1, 0);
	n = got > 0 ? (size_t)got : 0;
	buf[n] = '\0';
	close(fd);
	return ret;
}

static void
write_file(const char *sub, const char *name, const void *data, size_t len)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s/%s", spool, sub, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	cr_assert_geq(fd, 0, "%s", path);
	cr_assert_eq(write(fd, data, len), (ssize_t)len);
	close(fd);
}

/* Reads a whole spool file into a new buffer. */
static char *
read_file(const char *sub, const char *name, size_t *len)
{
	char path[256], *buf;
	int fd;

	*len = (size_t)file_size(sub, name);
	snprintf(path, sizeof(path), "%s/%s/%s", spool, sub, name);
	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0);
	buf = malloc(*len + 1);
	cr_assert_eq(read(fd, buf, *len), (ssize_t)*len);
	close(fd);
	return buf;
}

Test(queue, corrupt_files_moved_aside)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c[4];
	struct loaded ld = { .n = 0 };
	char log[8192], path[256], expect[256], *data, garbage[500];
	char *body = make_body(3000);
	size_t len;
	int i;

	q = open_queue(SPOOL_SYNC_FSYNC);
	for (i = 0; i < 4; i++)
		c[i] = commit_one(q, env, body, 3000);
	queue_close(q);

	/* c[0]: cut in the middle of the body. */
	snprintf(path, sizeof(path), "%s/queue/%s", spool, c[0]->id);
	cr_assert_eq(truncate(path, c[0]->body_offset + 1000), 0);
	/* c[1]: garbage over a valid name. */
	memset(garbage, 'x', sizeof(garbage));
	write_file("queue", c[1]->id, garbage, sizeof(garbage));
	/* c[2]: a file shorter than the preamble. */
	snprintf(path, sizeof(path), "%s/queue/%s", spool, c[2]->id);
	cr_assert_eq(truncate(path, 10), 0);
	/* c[3] stays good; a copy of it under another id does not. */
	data = read_file("queue", c[3]->id, &len);
	write_file("queue", "00000000000000AA", data, len);
	/* A valid preamble, then an envelope of a version from the future. */
	cr_assert(memcmp(data + 64, "smarthostd-envelope 1\n", 22) == 0);
	data[64 + 20] = '7';
	memcpy(data + 64 + 24, "00000000000000BB", 16);
	write_file("queue", "00000000000000BB", data, len);
	/* A name we never make. */
	write_file("queue", "notes.txt", "hello\n", 6);
	free(data);

	q = open_queue(SPOOL_SYNC_FSYNC);
	cr_assert_eq(load_capturing(q, &ld, log, sizeof(log)), 1, "%s", log);
	cr_assert_str_eq(ld.env[0]->id, c[3]->id);
	assert_body(q, ld.env[0], body, 3000);
	queue_close(q);

	cr_assert_eq(count_dir("queue"), 1);
	cr_assert_eq(count_dir("corrupt"), 6);
	cr_assert(exists("corrupt", c[0]->id));
	cr_assert(exists("corrupt", c[1]->id));
	cr_assert(exists("corrupt", c[2]->id));
	cr_assert(exists("corrupt", "00000000000000AA"));
	cr_assert(exists("corrupt", "notes.txt"));
	snprintf(expect, sizeof(expect),
	    "%s: moved to corrupt/: body length past end of file", c[0]->id);
	cr_assert_not_null(strstr(log, expect), "log:\n%s", log);
	snprintf(expect, sizeof(expect), "%s: moved to corrupt/: bad preamble",
	    c[1]->id);
	cr_assert_not_null(strstr(log, expect), "log:\n%s", log);
	snprintf(expect, sizeof(expect), "%s: moved to corrupt/: short file",
	    c[2]->id);
	cr_assert_not_null(strstr(log, expect), "log:\n%s", log);
	cr_assert_not_null(strstr(log, "00000000000000BB: moved to corrupt/: "
	    "envelope: unknown envelope version 7"), "log:\n%s", log);
	cr_assert_not_null(strstr(log, "00000000000000AA: moved to corrupt/: "
	    "envelope id does not match"), "log:\n%s", log);

	/* A second load finds only the good one and moves nothing. */
	loaded_free(&ld);
	q = open_load(open_queue, &ld, 1);
	queue_close(q);
	cr_assert_eq(count_dir("corrupt"), 6);

	loaded_free(&ld);
	for (i = 0; i < 4; i++)
		envelope_free(c[i]);
	envelope_free(env);
	free(body);
}

Test(queue, torn_state_record_ignored_and_cut)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 2), *c;
	struct loaded ld = { .n = 0 };
	char path[256], log[4096], *rec;
	size_t reclen;
	off_t good;
	int fd;

	q = open_queue(SPOOL_SYNC_FSYNC);
	c = commit_one(q, env, "body\r\n", 6);
	envelope_set_rcpt(c, 0, RCPT_SENT, "2.0.0", "250 OK");
	c->attempts = 1;
	cr_assert_eq(update_wait(q, c), 0);
	queue_close(q);
	good = file_size("queue", c->id);

	/* A crash in the middle of appending the next record. */
	envelope_set_rcpt(c, 1, RCPT_SENT, "2.0.0", "250 OK");
	c->attempts = 2;
	rec = envelope_state_record(c, &reclen);
	snprintf(path, sizeof(path), "%s/queue/%s", spool, c->id);
	cr_assert_geq(fd = open(path, O_WRONLY | O_APPEND), 0);
	cr_assert_eq(write(fd, rec, reclen - 5), (ssize_t)reclen - 5);
	close(fd);

	q = open_queue(SPOOL_SYNC_FSYNC);
	cr_assert_eq(load_capturing(q, &ld, log, sizeof(log)), 1, "%s", log);
	cr_assert_not_null(strstr(log, "torn state record"), "%s", log);
	cr_assert_eq(ld.env[0]->attempts, 1);
	cr_assert_eq(ld.env[0]->rcpts[0].status, RCPT_SENT);
	cr_assert_eq(ld.env[0]->rcpts[1].status, RCPT_PENDING);
	cr_assert_eq(file_size("queue", c->id), good, "torn tail not cut");

	/* The next update after the restart lands on a line of its own. */
	cr_assert_eq(update_wait(q, c), 0);
	queue_close(q);
	loaded_free(&ld);
	q = open_queue(SPOOL_SYNC_FSYNC);
	cr_assert_eq(load_capturing(q, &ld, log, sizeof(log)), 1, "%s", log);
	cr_assert_null(strstr(log, "state record"), "%s", log);
	cr_assert_eq(ld.env[0]->attempts, 2);
	cr_assert_eq(ld.env[0]->rcpts[1].status, RCPT_SENT);
	queue_close(q);

	loaded_free(&ld);
	free(rec);
	envelope_free(c);
	envelope_free(env);
}

Test(queue, malformed_middle_record_skipped)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c;
	struct loaded ld = { .n = 0 };
	char path[256], log[4096], *rec;
	size_t reclen;
	int fd;

	q = open_queue(SPOOL_SYNC_FSYNC);
	c = commit_one(q, env, "body\r\n", 6);
	queue_close(q);
	snprintf(path, sizeof(path), "%s/queue/%s", spool, c->id);
	cr_assert_geq(fd = open(path, O_WRONLY | O_APPEND), 0);
	cr_assert_eq(write(fd, "S 9 0 0 1 sent - - 00000000\n", 28), 28);
	c->attempts = 4;
	rec = envelope_state_record(c, &reclen);
	cr_assert_eq(write(fd, rec, reclen), (ssize_t)reclen);
	close(fd);

	q = open_queue(SPOOL_SYNC_FSYNC);
	cr_assert_eq(load_capturing(q, &ld, log, sizeof(log)), 1, "%s", log);
	cr_assert_not_null(strstr(log, "malformed state record"), "%s", log);
	cr_assert_eq(ld.env[0]->attempts, 4);
	cr_assert_eq(ld.env[0]->rcpts[0].status, RCPT_PENDING);
	queue_close(q);
	loaded_free(&ld);
	free(rec);
	envelope_free(c);
	envelope_free(env);
}

Test(queue, tmp_leftovers_removed_on_load)
{
	struct queue *q;
	struct queue_txn *txn;
	struct envelope *env = make_env("a@b", 1);
	struct loaded ld = { .n = 0 };

	q = open_queue(SPOOL_SYNC_FSYNC);
	/* An unfinished message as a crash leaves it, and a stray file. */
	cr_assert_not_null(txn = queue_txn_begin(q, env));
	cr_assert_eq(queue_txn_write(txn, "half a mess", 11), 0);
	write_file("tmp", "stray", "x", 1);
	cr_assert_eq(count_dir("tmp"), 2);
	cr_assert_eq(queue_load(q, load_each, &ld), 0);
	cr_assert_eq(count_dir("tmp"), 0);
	cr_assert_eq(count_dir("queue"), 0);
	queue_txn_abort(txn);
	queue_close(q);
	envelope_free(env);
}

Test(queue, enospc_during_write_fails_commit)
{
	struct queue *q;
	struct queue_txn *txn;
	struct envelope *env = make_env("a@b", 1);
	struct result r = { 0, -1, NULL };
	struct queue_stats st;
	char *body = make_body(8192);

	q = open_queue(SPOOL_SYNC_FSYNC);
	cr_assert_not_null(txn = queue_txn_begin(q, env));
	cr_assert_eq(queue_txn_write(txn, body, 1000), 0);
	/* 1500 more bytes fit, then the disk is full. */
	__atomic_store_n(&fault_write_budget, 1500, __ATOMIC_SEQ_CST);
	errno = 0;
	cr_assert_eq(queue_txn_write(txn, body, 4096), -1);
	cr_assert_eq(errno, ENOSPC);
	/* The disk has room again; the message is still lost. */
	__atomic_store_n(&fault_write_budget, -1, __ATOMIC_SEQ_CST);
	cr_assert_eq(queue_txn_write(txn, body, 100), -1);
	cr_assert_eq(errno, ENOSPC);
	queue_txn_commit(txn, commit_cb, &r);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.error, ENOSPC, "commit error %d", r.error);
	cr_assert_null(r.env);
	cr_assert_eq(count_dir("tmp"), 0, "tmp file left behind");
	cr_assert_eq(count_dir("queue"), 0, "half a message queued");
	queue_stats(q, &st);
	cr_assert_eq(st.commits, 0);
	queue_close(q);
	envelope_free(env);
	free(body);
}

Test(queue, enospc_at_begin)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1);

	q = open_queue(SPOOL_SYNC_FSYNC);
	__atomic_store_n(&fault_write_budget, 10, __ATOMIC_SEQ_CST);
	errno = 0;
	cr_assert_null(queue_txn_begin(q, env));
	cr_assert_eq(errno, ENOSPC);
	__atomic_store_n(&fault_write_budget, -1, __ATOMIC_SEQ_CST);
	queue_close(q);
	cr_assert_eq(count_dir("tmp"), 0);
	cr_assert_eq(count_dir("queue"), 0);
	envelope_free(env);
}

static void
sync_failure(enum spool_sync mode)
{
	struct queue *q;
	struct queue_txn *txn;
	struct envelope *env = make_env("a@b", 1), *c;
	struct result r = { 0, -1, NULL }, u = { 0, -1, NULL };
	struct loaded ld = { .n = 0 };

	q = open_queue(mode);
	c = commit_one(q, env, "first\r\n", 7);
	cr_assert_not_null(txn = queue_txn_begin(q, env));
	cr_assert_eq(queue_txn_write(txn, "second\r\n", 8), 0);
	__atomic_store_n(&fault_sync_errno, EIO, __ATOMIC_SEQ_CST);
	queue_txn_commit(txn, commit_cb, &r);
	c->attempts = 9;
	queue_update(q, c, done_cb, &u);
	loop_counter = 0;
	run_loop(2);
	__atomic_store_n(&fault_sync_errno, 0, __ATOMIC_SEQ_CST);
	cr_assert_eq(r.error, EIO);
	cr_assert_null(r.env);
	cr_assert_eq(u.error, EIO);
	cr_assert_eq(count_dir("tmp"), 0);
	cr_assert_eq(count_dir("queue"), 1);
	queue_close(q);
	q = open_queue(mode);
	cr_assert_eq(queue_load(q, load_each, &ld), 1);
	cr_assert_str_eq(ld.env[0]->id, c->id);
	/* The failed update left no record behind. */
	cr_assert_eq(ld.env[0]->attempts, 0);
	queue_close(q);
	loaded_free(&ld);
	envelope_free(c);
	envelope_free(env);
}

Test(queue, eio_at_fdatasync)
{
	sync_failure(SPOOL_SYNC_FSYNC);
}

Test(queue, eio_at_syncfs)
{
	sync_failure(SPOOL_SYNC_SYNCFS);
}

Test(queue, spool_file_mode_is_private)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c;
	char path[256];
	struct stat st;

	q = open_queue(SPOOL_SYNC_FSYNC);
	c = commit_one(q, env, "x\r\n", 3);
	snprintf(path, sizeof(path), "%s/queue/%s", spool, c->id);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
	queue_close(q);
	envelope_free(c);
	envelope_free(env);
}

/* worker.c */

static pthread_t main_thread;
static int work_ran, done_ran, done_off_thread;

static void
work_fn(void *arg)
{
	struct timespec ts = { 0, 1000000 };

	if (pthread_equal(pthread_self(), main_thread))
		__atomic_add_fetch(&done_off_thread, 1000, __ATOMIC_SEQ_CST);
	nanosleep(&ts, NULL);
	__atomic_add_fetch(&work_ran, 1, __ATOMIC_SEQ_CST);
	*(int *)arg = 1;
}

static void
done_fn(void *arg)
{
	cr_assert_eq(*(int *)arg, 1, "done before work");
	if (!pthread_equal(pthread_self(), main_thread))
		done_off_thread++;
	done_ran++;
	*(int *)arg = 2;
	loop_tick();
}

Test(worker, jobs_run_off_loop_and_complete_on_it)
{
	struct worker *w;
	int flags[100] = { 0 }, i;

	main_thread = pthread_self();
	w = worker_new(base, 4);
	for (i = 0; i < 100; i++)
		worker_run(w, work_fn, done_fn, &flags[i]);
	loop_counter = 0;
	run_loop(100);
	cr_assert_eq(work_ran, 100);
	cr_assert_eq(done_ran, 100);
	cr_assert_eq(done_off_thread, 0, "work on the loop thread or done "
	    "off it (%d)", done_off_thread);
	for (i = 0; i < 100; i++)
		cr_assert_eq(flags[i], 2);
	worker_free(w);
}

Test(worker, free_drains_on_caller_thread)
{
	struct worker *w;
	int flags[40] = { 0 }, i;

	main_thread = pthread_self();
	w = worker_new(base, 2);
	for (i = 0; i < 40; i++)
		worker_run(w, work_fn, done_fn, &flags[i]);
	worker_free(w);
	cr_assert_eq(work_ran, 40);
	cr_assert_eq(done_ran, 40);
	cr_assert_eq(done_off_thread, 0);
	worker_free(NULL);
}

/*
 * Spare files: a removed message's file is kept in spare/ and the next
 * message is written over it.
 */

/* Like commit_one(), for a txn that may have taken a spare (so it has no
 * tmp/<id>); reused says whether it did. */
static struct envelope *
commit_any(struct queue *q, const struct envelope *env, const char *body,
    size_t len, int *reused)
{
	struct queue_txn *txn;
	struct result r = { 0, -1, NULL };

	txn = queue_txn_begin(q, env);
	cr_assert_not_null(txn, "begin: %s", strerror(errno));
	*reused = !exists("tmp", queue_txn_id(txn));
	if (len > 0)
		cr_assert_eq(queue_txn_write(txn, body, len), 0);
	queue_txn_commit(txn, commit_cb, &r);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.error, 0, "commit: %s", strerror(r.error));
	cr_assert_not_null(r.env);
	cr_assert(exists("queue", r.env->id));
	return r.env;
}

static void
remove_one(struct queue *q, const char *id)
{
	int error = remove_wait(q, id);

	cr_assert_eq(error, 0, "remove: %s", strerror(error));
	cr_assert(!exists("queue", id));
}

static void
spare_reuse_shorter(enum spool_sync mode)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 2), *old, *c;
	struct loaded ld = { .n = 0 };
	size_t biglen = 50000, len = 300;
	char *big = make_body(biglen), *body = make_body(len);
	int reused;

	q = open_queue(mode);
	/* A long message with a state record that marks rcpt 0 sent. */
	old = commit_one(q, env, big, biglen);
	envelope_set_rcpt(old, 0, RCPT_SENT, "2.0.0", "250 OK");
	old->attempts = 7;
	cr_assert_eq(update_wait(q, old), 0);
	remove_one(q, old->id);
	cr_assert_eq(count_dir("spare"), 1, "removed file not kept");

	/* The next message goes over it and is much shorter. */
	c = commit_any(q, env, body, len, &reused);
	cr_assert(reused, "the spare was not reused");
	cr_assert_eq(count_dir("spare"), 0);
	cr_assert_eq(count_dir("tmp"), 0);
	cr_assert_eq(file_size("queue", c->id), c->body_offset + (off_t)len,
	    "stale tail of the old message left in the file");
	assert_body(q, c, body, len);
	queue_close(q);

	q = open_queue(mode);
	cr_assert_eq(queue_load(q, load_each, &ld), 1);
	cr_assert_str_eq(ld.env[0]->id, c->id);
	cr_assert_eq(ld.env[0]->body_size, (off_t)len);
	/* Nothing of the old message's state leaked into the new one. */
	cr_assert_eq(ld.env[0]->attempts, 0);
	cr_assert_eq(ld.env[0]->rcpts[0].status, RCPT_PENDING);
	cr_assert_eq(ld.env[0]->rcpts[1].status, RCPT_PENDING);
	assert_body(q, ld.env[0], body, len);
	cr_assert_eq(count_dir("corrupt"), 0);
	queue_close(q);

	loaded_free(&ld);
	envelope_free(old);
	envelope_free(c);
	envelope_free(env);
	free(big);
	free(body);
}

Test(queue, spare_reused_shorter_loads_exactly_fsync)
{
	spare_reuse_shorter(SPOOL_SYNC_FSYNC);
}

Test(queue, spare_reused_shorter_loads_exactly_syncfs)
{
	spare_reuse_shorter(SPOOL_SYNC_SYNCFS);
}

Test(queue, spare_reused_longer_and_aborted)
{
	struct queue *q;
	struct queue_txn *txn;
	struct envelope *env = make_env("a@b", 1), *old, *c;
	struct loaded ld = { .n = 0 };
	size_t len = 70000;
	char *body = make_body(len);
	int reused;

	q = open_queue(SPOOL_SYNC_FSYNC);
	old = commit_one(q, env, "short\r\n", 7);
	remove_one(q, old->id);
	/* An aborted message in a spare leaves nothing behind. */
	cr_assert_not_null(txn = queue_txn_begin(q, env));
	cr_assert(!exists("tmp", queue_txn_id(txn)));
	cr_assert_eq(queue_txn_write(txn, body, 100), 0);
	queue_txn_abort(txn);
	cr_assert_eq(count_dir("queue"), 0);
	envelope_free(old);
	old = commit_one(q, env, "short\r\n", 7);
	remove_one(q, old->id);
	c = commit_any(q, env, body, len, &reused);
	cr_assert(reused);
	cr_assert_eq(file_size("queue", c->id), c->body_offset + (off_t)len);
	queue_close(q);
	cr_assert_eq(count_dir("tmp"), 0);
	cr_assert_eq(count_dir("spare"), 0);

	q = open_load(open_queue, &ld, 1);
	assert_body(q, ld.env[0], body, len);
	queue_close(q);
	loaded_free(&ld);
	envelope_free(old);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

Test(queue, spares_never_loaded_and_pool_capped)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c[80];
	struct loaded ld = { .n = 0 };
	struct result r[80];
	int i, nspare;

	q = open_queue(SPOOL_SYNC_SYNCFS);
	for (i = 0; i < 80; i++)
		c[i] = commit_one(q, env, "body\r\n", 6);
	/* Removed in one burst, as a busy relay does. */
	for (i = 0; i < 80; i++) {
		r[i].called = 0;
		queue_remove(q, c[i]->id, done_cb, &r[i]);
	}
	loop_counter = 0;
	run_loop(80);
	for (i = 0; i < 80; i++)
		cr_assert_eq(r[i].error, 0);
	cr_assert_eq(count_dir("queue"), 0);
	nspare = count_dir("spare");
	cr_assert_gt(nspare, 0);
	cr_assert_leq(nspare, 64, "pool not capped: %d spares", nspare);
	queue_close(q);

	/* A restart takes none of them for a message, and drops them. */
	q = open_queue(SPOOL_SYNC_SYNCFS);
	cr_assert_eq(queue_load(q, load_each, &ld), 0);
	cr_assert_eq(count_dir("spare"), 0);
	cr_assert_eq(count_dir("corrupt"), 0);
	cr_assert_eq(count_dir("queue"), 0);
	queue_close(q);
	for (i = 0; i < 80; i++)
		envelope_free(c[i]);
	envelope_free(env);
}

/*
 * The rename into queue/ is made durable before the 250: at least one
 * fsync of a directory per sync group, and before the commit's callback.
 */
static void
dir_fsync_per_group(enum spool_sync mode)
{
	struct queue *q;
	struct queue_txn *txn[50];
	struct envelope *env = make_env("a@b", 1);
	struct result r[50];
	struct queue_stats st;
	char line[64];
	int i;

	q = open_queue(mode);
	__atomic_store_n(&count_dir_fsync, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&fault_sync_delay_ms, 20, __ATOMIC_SEQ_CST);
	for (i = 0; i < 50; i++) {
		cr_assert_not_null(txn[i] = queue_txn_begin(q, env));
		snprintf(line, sizeof(line), "message %d\r\n", i);
		cr_assert_eq(queue_txn_write(txn[i], line, strlen(line)), 0);
		r[i].called = 0;
		r[i].error = -1;
		r[i].env = NULL;
	}
	for (i = 0; i < 50; i++)
		queue_txn_commit(txn[i], commit_cb, &r[i]);
	loop_counter = 0;
	run_loop(50);
	for (i = 0; i < 50; i++) {
		cr_assert_eq(r[i].called, 1);
		cr_assert_eq(r[i].error, 0);
		envelope_free(r[i].env);
	}
	queue_stats(q, &st);
	cr_assert_eq(st.commits, 50);
	cr_assert_geq(st.sync_groups, 1);
	cr_assert_geq(count_dir_fsync, (int)st.sync_groups,
	    "%d directory fsyncs for %lu sync groups", count_dir_fsync,
	    st.sync_groups);
	__atomic_store_n(&fault_sync_delay_ms, 0, __ATOMIC_SEQ_CST);
	queue_close(q);
	envelope_free(env);
}

Test(queue, dir_fsync_per_group_fsync)
{
	dir_fsync_per_group(SPOOL_SYNC_FSYNC);
}

Test(queue, dir_fsync_per_group_syncfs)
{
	dir_fsync_per_group(SPOOL_SYNC_SYNCFS);
}

/* A single commit: the directory is synced before its callback runs. */
static int dir_fsyncs_seen;

static int file_synced_at_commit;

static void
count_at_commit_cb(int error, struct envelope *env, void *arg)
{
	dir_fsyncs_seen = __atomic_load_n(&count_dir_fsync, __ATOMIC_SEQ_CST);
	file_synced_at_commit = env != NULL && file_was_synced(env->id);
	commit_cb(error, env, arg);
}

Test(queue, dir_fsync_before_commit_callback)
{
	struct queue *q;
	struct queue_txn *txn;
	struct envelope *env = make_env("a@b", 1);
	struct result r = { 0, -1, NULL };

	q = open_queue(SPOOL_SYNC_FSYNC);
	__atomic_store_n(&count_dir_fsync, 0, __ATOMIC_SEQ_CST);
	cr_assert_not_null(txn = queue_txn_begin(q, env));
	cr_assert_eq(queue_txn_write(txn, "x\r\n", 3), 0);
	dir_fsyncs_seen = -1;
	queue_txn_commit(txn, count_at_commit_cb, &r);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.error, 0);
	cr_assert_geq(dir_fsyncs_seen, 1,
	    "commit reported before any fsync of queue/");
	cr_assert(file_synced_at_commit,
	    "commit reported before its file was fdatasync()ed");
	envelope_free(r.env);
	queue_close(q);
	envelope_free(env);
}

/*
 * No stall: while a commit's file and directory syncs take 1.5 s each on
 * a slow disk, the loop keeps running: a timer due 50 ms after the commit
 * started fires within 200 ms, long before the commit's callback.
 */
static struct timespec stall_t0;
static double timer_at_ms = -1, commit_at_ms = -1;

static double
ms_since_t0(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - stall_t0.tv_sec) * 1000.0 +
	    (double)(now.tv_nsec - stall_t0.tv_nsec) / 1e6;
}

static void
stall_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	timer_at_ms = ms_since_t0();
	loop_tick();
}

static void
stall_commit_cb(int error, struct envelope *env, void *arg)
{
	commit_at_ms = ms_since_t0();
	commit_cb(error, env, arg);
}

static void
no_stall(enum spool_sync mode)
{
	struct queue *q;
	struct queue_txn *txn;
	struct envelope *env = make_env("a@b", 1);
	struct result r = { 0, -1, NULL };
	struct event *timer;
	struct timeval tv = { 0, 50 * 1000 };

	q = open_queue(mode);
	cr_assert_not_null(txn = queue_txn_begin(q, env));
	cr_assert_eq(queue_txn_write(txn, "slow disk\r\n", 11), 0);
	__atomic_store_n(&fault_sync_delay_ms, 1500, __ATOMIC_SEQ_CST);
	__atomic_store_n(&fault_dirsync_delay_ms, 1500, __ATOMIC_SEQ_CST);
	cr_assert_not_null(timer = evtimer_new(base, stall_timer_cb, NULL));
	clock_gettime(CLOCK_MONOTONIC, &stall_t0);
	queue_txn_commit(txn, stall_commit_cb, &r);
	cr_assert_eq(evtimer_add(timer, &tv), 0);
	loop_counter = 0;
	run_loop(2);
	__atomic_store_n(&fault_sync_delay_ms, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&fault_dirsync_delay_ms, 0, __ATOMIC_SEQ_CST);
	cr_assert_eq(r.called, 1);
	cr_assert_eq(r.error, 0, "commit: %s", strerror(r.error));
	cr_assert_geq(timer_at_ms, 0.0, "the timer never fired");
	cr_assert_lt(timer_at_ms, 200.0,
	    "the loop stalled: a 50 ms timer fired after %.0f ms",
	    timer_at_ms);
	/* The commit really was slow, and reported after its syncs. */
	cr_assert_geq(commit_at_ms, 1400.0, "commit after %.0f ms",
	    commit_at_ms);
	cr_assert_lt(timer_at_ms, commit_at_ms);
	cr_assert_geq(count_dir_fsync, 1);
	event_free(timer);
	envelope_free(r.env);
	queue_close(q);
	envelope_free(env);
}

Test(queue, slow_sync_does_not_stall_loop_fsync)
{
	no_stall(SPOOL_SYNC_FSYNC);
}

Test(queue, slow_sync_does_not_stall_loop_syncfs)
{
	no_stall(SPOOL_SYNC_SYNCFS);
}

/* ---- reading lazily, and running out of descriptors ---- */

static void
scan_each(const char *id, void *arg)
{
	struct loaded *ld = arg;
	struct envelope *env = envelope_new();

	snprintf(env->id, sizeof(env->id), "%s", id);
	cr_assert_lt(ld->n, 64);
	ld->env[ld->n++] = env;
}

/*
 * queue_scan gives names only: committed ids, tmp/ emptied, names that are
 * not ids moved to corrupt/. queue_read then reads one message, and tells
 * a vanished one (ENOENT) from an unreadable one (EBADMSG, moved aside).
 */
Test(queue, scan_lists_ids_and_read_loads_one)
{
	static const char body[] = "Subject: s\r\n\r\nscan\r\n";
	struct envelope *env = make_env("a@b", 2), *c1, *c2, *got;
	struct loaded ld = { { NULL }, 0 };
	struct queue *q;

	q = open_queue(SPOOL_SYNC_FSYNC);
	c1 = commit_one(q, env, body, sizeof(body) - 1);
	c2 = commit_one(q, env, body, sizeof(body) - 1);
	queue_close(q);
	write_file("tmp", "0000000000000001", "unfinished", 10);
	write_file("queue", "not-an-id", "junk", 4);
	write_file("queue", "00000000000000AB", "smarthostd-spool 1 x", 20);

	q = open_queue(SPOOL_SYNC_FSYNC);
	cr_assert_eq(queue_scan(q, scan_each, &ld), 3);
	cr_assert_not_null(loaded_find(&ld, c1->id));
	cr_assert_not_null(loaded_find(&ld, c2->id));
	cr_assert_not_null(loaded_find(&ld, "00000000000000AB"));
	cr_assert_eq(count_dir("tmp"), 0);
	cr_assert(exists("corrupt", "not-an-id"));

	got = queue_read(q, c2->id);
	cr_assert_not_null(got, "%s", strerror(errno));
	cr_assert_str_eq(got->id, c2->id);
	cr_assert_eq(got->nrcpts, 2);
	cr_assert_eq(got->body_size, (off_t)sizeof(body) - 1);
	assert_body(q, got, body, sizeof(body) - 1);
	envelope_free(got);

	errno = 0;
	cr_assert_null(queue_read(q, "00000000000000AB"));
	cr_assert_eq(errno, EBADMSG);
	cr_assert(exists("corrupt", "00000000000000AB"));
	errno = 0;
	cr_assert_null(queue_read(q, "00000000000000CD"));
	cr_assert_eq(errno, ENOENT);

	queue_close(q);
	loaded_free(&ld);
	envelope_free(c1);
	envelope_free(c2);
	envelope_free(env);
}

static int
open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	cr_assert_not_null(d);
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;	/* the directory stream's own */
}

/*
 * Many state records at once with few descriptors left: each holds its file
 * open until the group's sync, so the group cannot take them all. The
 * queue ends the group where descriptors ran out and writes the rest in
 * the next ones: every update succeeds, none is lost or reordered.
 */
Test(queue, updates_out_of_descriptors_wait_for_the_next_group)
{
	enum { N = 150 };
	struct envelope *env = make_env("a@b", 1), *c[N], *got;
	struct result r[N];
	struct rlimit rl, low;
	struct queue *q;
	int i;

	q = open_queue(SPOOL_SYNC_FSYNC);
	for (i = 0; i < N; i++)
		c[i] = commit_one(q, env, "x\r\n", 3);
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	low = rl;
	low.rlim_cur = (rlim_t)open_fds() + 24;
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	memset(r, 0, sizeof(r));
	for (i = 0; i < N; i++) {
		c[i]->attempts = 7;
		queue_update(q, c[i], done_cb, &r[i]);
	}
	loop_counter = 0;
	run_loop(N);
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	for (i = 0; i < N; i++) {
		cr_assert_eq(r[i].called, 1);
		cr_assert_eq(r[i].error, 0, "update %d: %s", i,
		    strerror(r[i].error));
		got = queue_read(q, c[i]->id);
		cr_assert_not_null(got, "%s", strerror(errno));
		cr_assert_eq(got->attempts, 7);
		envelope_free(got);
		envelope_free(c[i]);
	}
	queue_close(q);
	envelope_free(env);
}

/* ---- the spool log (spoollog.h): messages up to queue_log_max() ---- */

/* Begins, writes and commits a small message into the log; returns the
 * committed envelope. Nothing of it may appear in tmp/ or queue/. */
static struct envelope *
log_commit_one(struct queue *q, const struct envelope *env, const char *body,
    size_t len)
{
	struct queue_txn *txn;
	struct result r = { 0, -1, NULL };
	char id[ENVELOPE_ID_MAX];

	txn = queue_txn_begin(q, env);
	cr_assert_not_null(txn, "begin: %s", strerror(errno));
	snprintf(id, sizeof(id), "%s", queue_txn_id(txn));
	cr_assert_eq(queue_txn_write(txn, body, len), 0);
	queue_txn_commit(txn, commit_cb, &r);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.error, 0, "commit: %s", strerror(r.error));
	cr_assert_str_eq(r.env->id, id);
	cr_assert_eq(r.env->body_size, (off_t)len);
	cr_assert(!exists("tmp", id) && !exists("queue", id));
	return r.env;
}

/* The path of the only (or the newest) file in log/. */
static void
newest_log_file(char *path, size_t len)
{
	char dir[256], best[256] = "";
	DIR *d;
	struct dirent *de;

	snprintf(dir, sizeof(dir), "%s/log", spool);
	cr_assert_not_null(d = opendir(dir));
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.' && strcmp(de->d_name, best) > 0)
			memcpy(best, de->d_name, strlen(de->d_name) + 1);
	closedir(d);
	cr_assert_neq(best[0], '\0', "no log file");
	cr_assert_lt(strlen(dir) + strlen(best) + 2, len);
	memcpy(path, dir, strlen(dir));
	path[strlen(dir)] = '/';
	memcpy(path + strlen(dir) + 1, best, strlen(best) + 1);
}

Test(queue, log_commits_load_after_reopen_with_state)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 2), *c[5], *l;
	struct loaded ld = { .n = 0 };
	char *body = make_body(4096);
	size_t i;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	for (i = 0; i < 5; i++)
		c[i] = log_commit_one(q, env, body, 100 + i * 900);
	cr_assert_eq(count_dir("queue"), 0);
	cr_assert_eq(count_dir("tmp"), 0);
	cr_assert_eq(count_dir("log"), 1);
	assert_body(q, c[3], body, 100 + 3 * 900);
	envelope_set_rcpt(c[1], 0, RCPT_SENT, "2.0.0", "250 ok");
	c[1]->attempts = 1;
	c[1]->flags |= ENVELOPE_HOLD;
	cr_assert_eq(update_wait(q, c[1]), 0);
	queue_close(q);

	q = open_load(open_log_queue, &ld, 5);
	for (i = 0; i < 5; i++) {
		cr_assert_not_null(l = loaded_find(&ld, c[i]->id));
		assert_body(q, l, body, 100 + i * 900);
		cr_assert_str_eq(l->sender, "a@b");
	}
	l = loaded_find(&ld, c[1]->id);
	cr_assert_eq(l->rcpts[0].status, RCPT_SENT);
	cr_assert_str_eq(l->rcpts[0].reply, "250 ok");
	cr_assert_eq(l->rcpts[1].status, RCPT_PENDING);
	cr_assert_eq(l->attempts, 1);
	cr_assert(l->flags & ENVELOPE_HOLD);
	queue_close(q);
	loaded_free(&ld);
	for (i = 0; i < 5; i++)
		envelope_free(c[i]);
	envelope_free(env);
	free(body);
}

Test(queue, log_lone_commit_costs_one_fdatasync_and_no_dir_fsync)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c;
	char *body = make_body(4096), path[256];
	struct stat st;
	int i, n;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	/* The first commit creates the log file and syncs log/ once. */
	envelope_free(log_commit_one(q, env, body, 4096));
	cr_assert_eq(count_log_dir_fsync, 1);
	newest_log_file(path, sizeof(path));
	cr_assert_eq(stat(path, &st), 0);
	__atomic_store_n(&count_fdatasync, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&nsynced, 0, __ATOMIC_SEQ_CST);
	for (i = 0; i < 10; i++) {
		c = log_commit_one(q, env, body, 4096);
		/* The 250 may go out now: its record was synced, and it
		 * was the log file that was. */
		n = __atomic_load_n(&nsynced, __ATOMIC_SEQ_CST);
		cr_assert_eq(n, i + 1);
		cr_assert_eq(synced_ino[i], st.st_ino);
		envelope_free(c);
	}
	cr_assert_eq(count_fdatasync, 10, "%d fdatasyncs for 10 commits",
	    count_fdatasync);
	cr_assert_eq(count_log_dir_fsync, 1);
	cr_assert_eq(count_dir_fsync, 0);
	queue_close(q);
	envelope_free(env);
	free(body);
}

Test(queue, log_concurrent_commits_share_one_fdatasync)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1);
	struct result r[20];
	char *body = make_body(4096);
	int i;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	envelope_free(log_commit_one(q, env, body, 10));
	__atomic_store_n(&count_fdatasync, 0, __ATOMIC_SEQ_CST);
	/* A slow disk: the twenty commits queue up behind the first. */
	__atomic_store_n(&fault_sync_delay_ms, 50, __ATOMIC_SEQ_CST);
	loop_counter = 0;
	for (i = 0; i < 20; i++) {
		commit_start(q, env, body, 4096, &r[i]);
	}
	run_loop(20);
	for (i = 0; i < 20; i++) {
		cr_assert_eq(r[i].error, 0);
		envelope_free(r[i].env);
	}
	cr_assert_leq(count_fdatasync, 2, "%d fdatasyncs for 20 commits",
	    count_fdatasync);
	__atomic_store_n(&fault_sync_delay_ms, 0, __ATOMIC_SEQ_CST);
	queue_close(q);
	envelope_free(env);
	free(body);
}

Test(queue, log_removed_never_comes_back)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c1, *c2;
	char *body = make_body(3000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c1 = log_commit_one(q, env, body, 3000);
	c2 = log_commit_one(q, env, body, 2000);
	cr_assert_eq(remove_wait(q, c1->id), 0);
	/* Gone for readers at once, and for good. */
	cr_assert_null(queue_read(q, c1->id));
	cr_assert_eq(errno, ENOENT);
	cr_assert_eq(update_wait(q, c1), ENOENT);
	queue_close(q);

	assert_loads_only(open_log_queue, 1, c2->id);
	envelope_free(c1);
	envelope_free(c2);
	envelope_free(env);
	free(body);
}

Test(queue, log_large_message_gets_its_own_file)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *small, *big;
	struct loaded ld = { .n = 0 };
	char *body = make_body(200000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	queue_log_max(q, 65536);
	small = log_commit_one(q, env, body, 65536);
	/* Written in 1000-byte pieces: it leaves memory for a file of its
	 * own when it outgrows the log. */
	big = commit_one(q, env, body, 200000);
	assert_body(q, big, body, 200000);
	cr_assert_eq(count_dir("queue"), 1);
	queue_close(q);

	q = open_load(open_log_queue, &ld, 2);
	assert_body(q, loaded_find(&ld, small->id), body, 65536);
	assert_body(q, loaded_find(&ld, big->id), body, 200000);
	queue_close(q);
	loaded_free(&ld);
	envelope_free(small);
	envelope_free(big);
	envelope_free(env);
	free(body);
}

/* ---- bodies kept after their commit (queue_body_take) ---- */

/* Takes the kept body of env: 1 when it was there and equal to body. */
static int
took_body(struct queue *q, const struct envelope *env, const char *body)
{
	unsigned char *got;
	int same;

	if ((got = queue_body_take(q, env)) == NULL)
		return 0;
	same = memcmp(got, body, (size_t)env->body_size) == 0;
	free(got);
	cr_assert(same, "%s: the kept body differs from the message", env->id);
	return 1;
}

Test(queue, log_body_is_kept_for_one_take)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c;
	struct queue_stats st;
	char *body = make_body(3000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c = log_commit_one(q, env, body, 3000);
	cr_assert(took_body(q, c, body), "the body was not kept");
	/* Handed out once; the spool still has it. */
	cr_assert_null(queue_body_take(q, c));
	assert_body(q, c, body, 3000);
	queue_stats(q, &st);
	cr_assert_eq(st.bodies_taken, 1);
	queue_close(q);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

Test(queue, file_message_body_is_not_kept)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *big;
	char *body = make_body(200000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	queue_log_max(q, 65536);
	big = commit_one(q, env, body, 200000);
	cr_assert_null(queue_body_take(q, big));
	assert_body(q, big, body, 200000);
	queue_close(q);
	envelope_free(big);
	envelope_free(env);
	free(body);
}

Test(queue, removed_message_body_is_dropped)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c;
	char *body = make_body(3000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c = log_commit_one(q, env, body, 3000);
	cr_assert_eq(remove_wait(q, c->id), 0);
	cr_assert_null(queue_body_take(q, c));
	queue_close(q);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

Test(queue, kept_body_of_another_size_is_not_handed_out)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c;
	char *body = make_body(3000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c = log_commit_one(q, env, body, 3000);
	c->body_size = 2999;
	cr_assert_null(queue_body_take(q, c));
	/* Dropped, not kept for a later caller either. */
	c->body_size = 3000;
	cr_assert_null(queue_body_take(q, c));
	queue_close(q);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

/* 200 messages whose buffers (8 KB each) add up to three times the
 * bound: only the newest are kept, and never more than the bound. */
Test(queue, kept_bodies_stay_within_their_bound)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c[200];
	char *body = make_body(5000);
	int i, kept = 0, first = -1;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	for (i = 0; i < 200; i++)
		c[i] = log_commit_one(q, env, body, 5000);
	for (i = 0; i < 200; i++) {
		if (took_body(q, c[i], body)) {
			kept++;
			if (first == -1)
				first = i;
		} else
			cr_assert_eq(first, -1, "message %d dropped after "
			    "an older one was kept", i);
	}
	/* 512 KB of 8 KB buffers. */
	cr_assert_eq(kept, 64, "%d bodies kept", kept);
	cr_assert_eq(first, 200 - 64);
	for (i = 0; i < 200; i++)
		assert_body(q, c[i], body, 5000);
	queue_close(q);
	for (i = 0; i < 200; i++)
		envelope_free(c[i]);
	envelope_free(env);
	free(body);
}

Test(queue, log_and_files_of_earlier_versions_load_together)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *old[3], *c;
	struct loaded ld = { .n = 0 };
	char *body = make_body(4096);
	int i;

	/* A spool as versions without the log wrote it. */
	q = open_queue(SPOOL_SYNC_FSYNC);
	for (i = 0; i < 3; i++)
		old[i] = commit_one(q, env, body, 1000 + (size_t)i);
	queue_close(q);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c = log_commit_one(q, env, body, 4096);
	cr_assert_eq(queue_load(q, load_each, &ld), 4);
	for (i = 0; i < 3; i++)
		assert_body(q, loaded_find(&ld, old[i]->id), body,
		    1000 + (size_t)i);
	assert_body(q, loaded_find(&ld, c->id), body, 4096);
	/* Updates and removals of the old files work as before. */
	cr_assert_eq(remove_wait(q, old[0]->id), 0);
	cr_assert(!exists("queue", old[0]->id));
	queue_close(q);
	loaded_free(&ld);
	for (i = 0; i < 3; i++)
		envelope_free(old[i]);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

/* Appends bytes at the end of the valid records of the newest log file:
 * what a power cut can leave after the last synced record. */
static void
log_tail_damage(const void *bytes, size_t len, off_t at)
{
	char path[256];
	int fd;

	newest_log_file(path, sizeof(path));
	cr_assert_geq(fd = open(path, O_WRONLY), 0);
	cr_assert_eq(pwrite(fd, bytes, len, at), (ssize_t)len);
	close(fd);
}

Test(queue, log_torn_tail_ignored)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c1, *c2;
	struct loaded ld = { .n = 0 };
	char *body = make_body(3000), path[256];
	unsigned char junk[64];
	off_t end;
	int fd;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c1 = log_commit_one(q, env, body, 3000);
	c2 = log_commit_one(q, env, body, 3000);
	queue_close(q);
	/* The second record torn in half: only the first is mail. */
	newest_log_file(path, sizeof(path));
	end = c2->body_offset + c2->body_size;
	cr_assert_geq(fd = open(path, O_RDWR), 0);
	memset(junk, 0, sizeof(junk));
	cr_assert_eq(pwrite(fd, junk, sizeof(junk), end - 1500), 64);
	close(fd);
	/* And garbage after it. */
	memset(junk, 'x', sizeof(junk));
	log_tail_damage(junk, sizeof(junk), end + 10);

	q = open_load(open_log_queue, &ld, 1);
	cr_assert_str_eq(ld.env[0]->id, c1->id);
	assert_body(q, ld.env[0], body, 3000);
	/* New commits go to a fresh file, never after the torn bytes. */
	envelope_free(c2);
	c2 = log_commit_one(q, env, body, 100);
	cr_assert_eq(count_dir("log"), 2);
	queue_close(q);
	loaded_free(&ld);

	assert_loads_only(open_log_queue, 2, c1->id, c2->id);
	envelope_free(c1);
	envelope_free(c2);
	envelope_free(env);
	free(body);
}

Test(queue, log_failed_sync_fails_commit_and_is_buried)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c0, *c;
	struct result r = { 0, -1, NULL };
	char *body = make_body(2000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c0 = log_commit_one(q, env, body, 10);
	__atomic_store_n(&fault_sync_errno, EIO, __ATOMIC_SEQ_CST);
	commit_start(q, env, body, 2000, &r);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.error, EIO);
	cr_assert_null(r.env);
	__atomic_store_n(&fault_sync_errno, 0, __ATOMIC_SEQ_CST);
	c = log_commit_one(q, env, body, 2000);
	queue_close(q);

	/* The failed one reached the file, but a tombstone followed it. */
	assert_loads_only(open_log_queue, 2, c0->id, c->id);
	envelope_free(c0);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

Test(queue, log_abort_leaves_nothing)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1);
	struct queue_txn *txn;
	char *body = make_body(2000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	cr_assert_not_null(txn = queue_txn_begin(q, env));
	cr_assert_eq(queue_txn_write(txn, body, 2000), 0);
	queue_txn_abort(txn);
	queue_close(q);
	assert_loads_only(open_log_queue, 0);
	envelope_free(env);
	free(body);
}

Test(queue, log_files_reclaimed_and_deferred_mail_copied_forward)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c[200], *kept, *l;
	struct loaded ld = { .n = 0 };
	char *body = make_body(2000);
	int i, removed = 0;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	queue_log_file_size(q, 32 * 1024);
	queue_log_clock(q, clock_hour_per_look);
	for (i = 0; i < 200; i++)
		c[i] = log_commit_one(q, env, body, 2000);
	cr_assert_geq(count_dir("log"), 10);
	/* The first one is deferred, with a state to carry along. */
	c[0]->attempts = 3;
	c[0]->next_try = 1900000000;
	cr_assert_eq(update_wait(q, c[0]), 0);
	/* Read now, copied forward later: the body must still be found. */
	kept = queue_read(q, c[0]->id);
	cr_assert_not_null(kept);
	for (i = 1; i < 200; i++) {
		cr_assert_eq(remove_wait(q, c[i]->id), 0);
		removed++;
	}
	/* A few more groups let the commit thread finish reclaiming. */
	for (i = 0; i < 3; i++)
		envelope_free(log_commit_one(q, env, body, 10));
	cr_assert_leq(count_dir("log"), 3, "%d log files left",
	    count_dir("log"));
	assert_body(q, kept, body, 2000);
	queue_close(q);

	q = open_load(open_log_queue, &ld, 4);
	cr_assert_not_null(l = loaded_find(&ld, c[0]->id));
	cr_assert_eq(l->attempts, 3);
	cr_assert_eq(l->next_try, 1900000000);
	assert_body(q, l, body, 2000);
	for (i = 1; i < 200; i++)
		cr_assert_null(loaded_find(&ld, c[i]->id));
	queue_close(q);
	loaded_free(&ld);
	envelope_free(kept);
	for (i = 0; i < 200; i++)
		envelope_free(c[i]);
	envelope_free(env);
	free(body);
	cr_assert_eq(removed, 199);
}

Test(queue, log_scan_lists_log_ids)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c;
	struct loaded ld = { .n = 0 };
	char *body = make_body(100);
	struct envelope *got;

	q = open_log_queue(SPOOL_SYNC_SYNCFS);
	c = log_commit_one(q, env, body, 100);
	cr_assert_eq(count_syncfs, 1);
	queue_close(q);
	q = open_log_queue(SPOOL_SYNC_SYNCFS);
	cr_assert_eq(queue_scan(q, scan_each, &ld), 1);
	cr_assert_str_eq(ld.env[0]->id, c->id);
	loaded_free(&ld);
	cr_assert_not_null(got = queue_read(q, c->id));
	assert_body(q, got, body, 100);
	queue_close(q);
	envelope_free(got);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

Test(queue, log_tombstone_shares_the_next_sync_or_waits_for_a_timer)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c1, *c2;
	struct result r = { 0, -1, NULL }, r2 = { 0, -1, NULL };
	struct timespec ts = { 0, 200 * 1000000L }, t0, t1;
	char *body = make_body(1000);
	int syncs;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c1 = log_commit_one(q, env, body, 1000);
	/* The commit thread finishes its round after the callback: let it
	 * go to sleep, or it would find the removal at once. */
	nanosleep(&ts, NULL);
	__atomic_store_n(&count_fdatasync, 0, __ATOMIC_SEQ_CST);
	queue_remove(q, c1->id, done_cb, &r);
	/* A removal alone does not wake the commit thread: until the loop's
	 * timer does, nothing is written (the message is still live; a
	 * crash replays it, never loses it). */
	nanosleep(&ts, NULL);
	cr_assert_eq(log_tombstones(), 0, "written without the loop");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	loop_counter = 0;
	run_loop(1);
	syncs = __atomic_load_n(&count_fdatasync, __ATOMIC_SEQ_CST);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	cr_assert_eq(r.error, 0);
	cr_assert_eq(log_tombstones(), 1);
	/* Written, not synced yet: only a duplicate could come of a power
	 * cut now, never a loss. Its sync waits 20 ms after the write,
	 * which came after t0: a loop slower than that may have seen it. */
	if ((t1.tv_sec - t0.tv_sec) * 1000 +
	    (t1.tv_nsec - t0.tv_nsec) / 1000000 < 20)
		cr_assert_eq(syncs, 0);
	nanosleep(&ts, NULL);
	cr_assert_eq(count_fdatasync, 1, "the tombstone was never synced");
	/* A removal followed by a commit: one sync covers both. */
	r = (struct result){ 0, -1, NULL };
	c2 = log_commit_one(q, env, body, 1000);
	__atomic_store_n(&count_fdatasync, 0, __ATOMIC_SEQ_CST);
	queue_remove(q, c2->id, done_cb, &r);
	commit_start(q, env, body, 10, &r2);
	loop_counter = 0;
	run_loop(2);
	cr_assert_eq(r.error, 0);
	cr_assert_eq(r2.error, 0);
	cr_assert_eq(count_fdatasync, 1);
	queue_close(q);
	assert_loads_only(open_log_queue, 1, r2.env->id);
	envelope_free(r2.env);
	envelope_free(c1);
	envelope_free(c2);
	envelope_free(env);
	free(body);
}

/* A note of a log message: a state record in the newest log file, written
 * at once without a sync; read back now and by a restart with no durable
 * update after it (the daemon's own crash). */
Test(queue, log_note_is_read_back_without_a_sync)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 2), *c, *l;
	struct loaded ld = { .n = 0 };
	char *body = make_body(3000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c = log_commit_one(q, env, body, 3000);
	envelope_set_rcpt(c, 0, RCPT_SENT, "2.0.0", "250 2.0.0 Ok: noted");
	note_unsynced(q, c);
	cr_assert(!exists("queue", c->id), "a note made a queue file");
	l = read_ok(q, c->id);
	cr_assert_eq(l->rcpts[0].status, RCPT_SENT);
	cr_assert_eq(l->rcpts[1].status, RCPT_PENDING);
	assert_body(q, l, body, 3000);
	envelope_free(l);
	queue_close(q);

	q = open_load(open_log_queue, &ld, 1);
	l = ld.env[0];
	cr_assert_str_eq(l->id, c->id);
	cr_assert_eq(l->rcpts[0].status, RCPT_SENT);
	cr_assert_str_eq(l->rcpts[0].reply, "250 2.0.0 Ok: noted");
	cr_assert_eq(l->rcpts[1].status, RCPT_PENDING);
	assert_body(q, l, body, 3000);
	/* The durable update still works after it, now from the first file
	 * of this run, which the note started. */
	cr_assert_eq(queue_note(q, c), 0, "note: %s", strerror(errno));
	c->attempts = 2;
	cr_assert_eq(update_wait(q, c), 0);
	queue_close(q);
	loaded_free(&ld);

	q = open_load(open_log_queue, &ld, 1);
	cr_assert_eq(ld.env[0]->rcpts[0].status, RCPT_SENT);
	cr_assert_eq(ld.env[0]->attempts, 2);
	queue_close(q);
	loaded_free(&ld);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

/* A note that cannot be written whole ends writes to its log file: the
 * durable update goes to a new file, never after the torn bytes, where
 * replay would not reach it. */
Test(queue, log_failed_note_leaves_no_partial_record)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c, *l;
	struct loaded ld = { .n = 0 };
	char *body = make_body(1000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c = log_commit_one(q, env, body, 1000);
	cr_assert_eq(count_dir("log"), 1);
	envelope_set_rcpt(c, 0, RCPT_SENT, "2.0.0", "250 2.0.0 Ok");
	note_fails_enospc(q, c);
	/* The previous state holds until the durable update. */
	l = read_ok(q, c->id);
	cr_assert_eq(l->rcpts[0].status, RCPT_PENDING);
	envelope_free(l);

	c->attempts = 3;
	cr_assert_eq(update_wait(q, c), 0);
	cr_assert_eq(count_dir("log"), 2);
	l = read_ok(q, c->id);
	cr_assert_eq(l->rcpts[0].status, RCPT_SENT);
	cr_assert_eq(l->attempts, 3);
	envelope_free(l);
	queue_close(q);

	q = open_load(open_log_queue, &ld, 1);
	l = ld.env[0];
	cr_assert_eq(l->rcpts[0].status, RCPT_SENT);
	cr_assert_eq(l->attempts, 3);
	assert_body(q, l, body, 1000);
	queue_close(q);
	loaded_free(&ld);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

/* A power cut that tears a note (it was never synced): its CRC fails, the
 * replay of the file ends there, and the message keeps its previous
 * state. A duplicate at worst, never a loss. */
Test(queue, log_torn_note_keeps_previous_state)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 2), *c, *l;
	struct loaded ld = { .n = 0 };
	char *body = make_body(2000);
	unsigned char junk[8];
	off_t note;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	c = log_commit_one(q, env, body, 2000);
	/* The note goes right after the message's record. */
	note = c->body_offset + c->body_size;
	envelope_set_rcpt(c, 0, RCPT_SENT, "2.0.0", "250 2.0.0 Ok: torn");
	cr_assert_eq(queue_note(q, c), 0, "note: %s", strerror(errno));
	queue_close(q);
	memset(junk, 'x', sizeof(junk));
	log_tail_damage(junk, sizeof(junk), note + 40);

	q = open_load(open_log_queue, &ld, 1);
	l = ld.env[0];
	cr_assert_str_eq(l->id, c->id);
	cr_assert_eq(l->rcpts[0].status, RCPT_PENDING);
	cr_assert_eq(l->rcpts[1].status, RCPT_PENDING);
	assert_body(q, l, body, 2000);
	queue_close(q);
	loaded_free(&ld);
	envelope_free(c);
	envelope_free(env);
	free(body);
}

/* Notes from the loop while the commit thread writes, syncs and starts
 * new files (small ones): after a restart every committed message is
 * there with its body, and every note is read back. */
Test(queue, log_notes_interleaved_with_commits)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c[20], *l;
	struct result r[20];
	struct loaded ld = { .n = 0 };
	char *body = make_body(4096);
	int i;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	queue_log_file_size(q, 32 * 1024);
	for (i = 0; i < 20; i++)
		c[i] = log_commit_one(q, env, body, 3000);
	__atomic_store_n(&fault_sync_delay_ms, 5, __ATOMIC_SEQ_CST);
	loop_counter = 0;
	for (i = 0; i < 20; i++) {
		commit_start(q, env, body, 4096, &r[i]);
		envelope_set_rcpt(c[i], 0, RCPT_SENT, "2.0.0", "250 noted");
		cr_assert_eq(queue_note(q, c[i]), 0, "note %d: %s", i,
		    strerror(errno));
	}
	run_loop(20);
	__atomic_store_n(&fault_sync_delay_ms, 0, __ATOMIC_SEQ_CST);
	for (i = 0; i < 20; i++)
		cr_assert_eq(r[i].error, 0);
	cr_assert_geq(count_dir("log"), 2);
	queue_close(q);

	q = open_load(open_log_queue, &ld, 40);
	for (i = 0; i < 20; i++) {
		cr_assert_not_null(l = loaded_find(&ld, c[i]->id));
		cr_assert_eq(l->rcpts[0].status, RCPT_SENT, "note %d lost", i);
		assert_body(q, l, body, 3000);
		cr_assert_not_null(l = loaded_find(&ld, r[i].env->id));
		cr_assert_eq(l->rcpts[0].status, RCPT_PENDING);
		assert_body(q, l, body, 4096);
	}
	queue_close(q);
	loaded_free(&ld);
	for (i = 0; i < 20; i++) {
		envelope_free(c[i]);
		envelope_free(r[i].env);
	}
	envelope_free(env);
	free(body);
}

/*
 * A deferred log message copied forward (small log files, the others
 * removed) while at copy_hook's point something happens to it. Returns
 * the queue, open; the message, c, was updated to 1 attempt.
 */
static struct queue *
copy_with_hook(enum copy_hook_at at, struct envelope **c, const char *body,
    size_t len)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 2), *other[40];
	struct result r;
	int i;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	queue_log_file_size(q, 32 * 1024);
	queue_log_clock(q, clock_hour_per_look);
	*c = log_commit_one(q, env, body, len);
	for (i = 1; i < 40; i++)
		other[i] = log_commit_one(q, env, body, len);
	cr_assert_geq(count_dir("log"), 2);
	(*c)->attempts = 1;
	cr_assert_eq(update_wait(q, *c), 0);
	envelope_set_rcpt(*c, 0, RCPT_SENT, "2.0.0", "250 2.0.0 Ok: noted");
	copy_hook.at = at;
	copy_hook.loop = pthread_self();
	copy_hook.q = q;
	copy_hook.env = *c;
	__atomic_store_n(&copy_hook.armed, 1, __ATOMIC_SEQ_CST);
	/* Removing the others makes the oldest file's dead bytes worth a
	 * copy of the one left in it. */
	for (i = 1; i < 40; i++) {
		r = (struct result){ 0, -1, NULL };
		queue_remove(q, other[i]->id, done_cb, &r);
		loop_counter = 0;
		run_loop(1);
		cr_assert_eq(r.error, 0);
		envelope_free(other[i]);
	}
	/* A few more groups for the commit thread to finish reclaiming. */
	for (i = 0; i < 3; i++)
		envelope_free(log_commit_one(q, env, body, 10));
	__atomic_store_n(&copy_hook.armed, 0, __ATOMIC_SEQ_CST);
	cr_assert_eq(copy_hook.fired, 1, "the message was never copied");
	envelope_free(env);
	return q;
}

/* Checks the message copy_with_hook() copied: its body, 1 attempt, and
 * the first recipient's state. */
static void
assert_copied(struct queue *q, const struct envelope *l, const char *body,
    size_t len, enum rcpt_status first)
{
	cr_assert_eq(l->attempts, 1);
	cr_assert_eq(l->rcpts[0].status, first, "recipient 0: %d",
	    (int)l->rcpts[0].status);
	cr_assert_eq(l->rcpts[1].status, RCPT_PENDING);
	assert_body(q, l, body, len);
}

/* A note from the loop at copy_hook's point of a copy forward: read back
 * now (the index) and after a restart with no durable update (replay). */
static void
note_during_copy(enum copy_hook_at at)
{
	struct queue *q;
	struct envelope *c, *l;
	struct loaded ld = { .n = 0 };
	char *body = make_body(2000);

	q = copy_with_hook(at, &c, body, 2000);
	cr_assert_eq(copy_hook.note_error, 0, "note: %s",
	    strerror(copy_hook.note_error));
	cr_assert_leq(count_dir("log"), 3, "%d log files left",
	    count_dir("log"));
	cr_assert_not_null(l = queue_read(q, c->id), "read: %s",
	    strerror(errno));
	assert_copied(q, l, body, 2000, RCPT_SENT);
	envelope_free(l);
	queue_close(q);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	cr_assert_eq(queue_load(q, load_each, &ld), 4);
	cr_assert_not_null(l = loaded_find(&ld, c->id));
	assert_copied(q, l, body, 2000, RCPT_SENT);
	queue_close(q);
	loaded_free(&ld);
	envelope_free(c);
	free(body);
}

/* Written after the copy read the message's state and before the copy
 * was written: the copy, which replaces every state before it, must not
 * undo the note. */
Test(queue, log_note_during_copy_forward_survives)
{
	note_during_copy(COPY_NOTE_AFTER_READ);
}

/* Written after the copy and before the copy is in the index: the index
 * keeps the note, which lies after the copy (as replay reads it). */
Test(queue, log_note_before_copy_is_indexed_survives)
{
	note_during_copy(COPY_NOTE_AT_SYNC);
}

/* A copy forward whose sync fails leaves the message where it was (no
 * tombstone: it is live), and a later copy moves it. */
Test(queue, log_failed_copy_forward_keeps_the_message)
{
	struct queue *q;
	struct envelope *c, *l;
	struct loaded ld = { .n = 0 };
	char *body = make_body(2000);

	q = copy_with_hook(COPY_SYNC_FAILS, &c, body, 2000);
	cr_assert_not_null(l = queue_read(q, c->id), "read: %s",
	    strerror(errno));
	assert_copied(q, l, body, 2000, RCPT_PENDING);
	envelope_free(l);
	cr_assert_leq(count_dir("log"), 3, "%d log files left",
	    count_dir("log"));
	queue_close(q);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	cr_assert_eq(queue_load(q, load_each, &ld), 4);
	cr_assert_not_null(l = loaded_find(&ld, c->id), "the message is lost");
	assert_copied(q, l, body, 2000, RCPT_PENDING);
	queue_close(q);
	loaded_free(&ld);
	envelope_free(c);
	free(body);
}

/*
 * The lone commit (queue_txn_commit_alone): on an idle queue the group is
 * written and synced on the caller's thread, before the call returns, and
 * the callback still comes from the loop afterwards, never from inside
 * the call. The message is as durable as any: a fresh queue loads it.
 */
Test(queue, lone_commit_syncs_on_the_caller)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1);
	struct loaded ld = { .n = 0 };
	struct queue_stats stats;
	struct result r;
	char *body = make_body(3000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	lone_start(q, env, body, 3000, &r);
	cr_assert_eq(count_fdatasync_loop, 1, "not synced on the caller");
	cr_assert_eq(r.called, 0, "called back from inside the call");
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.error, 0, "commit: %s", strerror(r.error));
	cr_assert_eq(r.env->body_size, 3000);
	assert_body(q, r.env, body, 3000);
	queue_stats(q, &stats);
	cr_assert_eq(stats.commits, 1);
	cr_assert_eq(stats.lone_groups, 1);
	queue_close(q);

	q = open_load(open_log_queue, &ld, 1);
	cr_assert_str_eq(ld.env[0]->id, r.env->id);
	assert_body(q, ld.env[0], body, 3000);
	queue_close(q);
	loaded_free(&ld);
	envelope_free(r.env);
	envelope_free(env);
	free(body);
}

/* A lone commit whose sync fails is reported failed, and the record that
 * reached the file anyway is buried: a restart does not take it for mail. */
Test(queue, lone_commit_sync_failure_fails_it)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1);
	struct result r, r2;
	char *body = make_body(2000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	__atomic_store_n(&fault_sync_errno, EIO, __ATOMIC_SEQ_CST);
	lone_start(q, env, body, 2000, &r);
	__atomic_store_n(&fault_sync_errno, 0, __ATOMIC_SEQ_CST);
	cr_assert_eq(count_fdatasync_loop, 1);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.error, EIO);
	cr_assert_null(r.env);
	lone_wait(q, env, body, 1000, &r2);
	queue_close(q);

	assert_loads_only(open_log_queue, 1, r2.env->id);
	envelope_free(r2.env);
	envelope_free(env);
	free(body);
}

/* With a commit in the thread's hands (waiting, or being synced), a lone
 * commit goes behind it through the thread: the loop never waits for
 * someone else's sync, and the order of commits holds. */
Test(queue, lone_commit_goes_behind_a_busy_thread)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1);
	struct queue_stats stats;
	struct result r1, r2;
	char *body = make_body(2000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	__atomic_store_n(&fault_sync_delay_ms, 20, __ATOMIC_SEQ_CST);
	commit_start(q, env, body, 2000, &r1);
	lone_start(q, env, body, 1000, &r2);
	cr_assert_eq(r2.called, 0);
	loop_counter = 0;
	run_loop(2);
	__atomic_store_n(&fault_sync_delay_ms, 0, __ATOMIC_SEQ_CST);
	cr_assert_eq(r1.error, 0);
	cr_assert_eq(r2.error, 0);
	cr_assert_lt(strcmp(r1.env->id, r2.env->id), 0);
	cr_assert_eq(count_fdatasync_loop, 0, "the loop synced");
	queue_stats(q, &stats);
	cr_assert_eq(stats.lone_groups, 0);
	queue_close(q);
	envelope_free(r1.env);
	envelope_free(r2.env);
	envelope_free(env);
	free(body);
}

/* The bound on the loop's wait: after a sync as slow as a stalling disk's
 * (100 ms or more), lone commits go through the thread for a while. */
Test(queue, lone_commit_goes_to_the_thread_after_a_slow_sync)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1);
	struct queue_stats stats;
	struct result r1, r2;
	char *body = make_body(2000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	__atomic_store_n(&fault_sync_delay_ms, 120, __ATOMIC_SEQ_CST);
	lone_start(q, env, body, 2000, &r1);
	__atomic_store_n(&fault_sync_delay_ms, 0, __ATOMIC_SEQ_CST);
	cr_assert_eq(count_fdatasync_loop, 1);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r1.error, 0);
	lone_wait(q, env, body, 1000, &r2);
	cr_assert_eq(count_fdatasync_loop, 1, "the loop synced again");
	queue_stats(q, &stats);
	cr_assert_eq(stats.commits, 2);
	cr_assert_eq(stats.lone_groups, 1);
	queue_close(q);
	envelope_free(r1.env);
	envelope_free(r2.env);
	envelope_free(env);
	free(body);
}

/* A removal waiting in the FIFO without a wake-up shares the lone
 * commit's write and sync, as it would the thread's. */
Test(queue, lone_commit_carries_a_waiting_removal)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1);
	struct queue_stats stats;
	struct result r1, r2, rm = { 0, -1, NULL };
	char *body = make_body(2000);

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	lone_wait(q, env, body, 2000, &r1);
	__atomic_store_n(&count_fdatasync, 0, __ATOMIC_SEQ_CST);
	queue_remove(q, r1.env->id, done_cb, &rm);
	lone_start(q, env, body, 1000, &r2);
	cr_assert_eq(count_fdatasync, 1);
	cr_assert_eq(log_tombstones(), 1);
	loop_counter = 0;
	run_loop(2);
	cr_assert_eq(rm.error, 0);
	cr_assert_eq(r2.error, 0);
	cr_assert_eq(count_fdatasync, 1);
	queue_stats(q, &stats);
	cr_assert_eq(stats.lone_groups, 2);
	queue_close(q);

	assert_loads_only(open_log_queue, 1, r2.env->id);
	envelope_free(r1.env);
	envelope_free(r2.env);
	envelope_free(env);
	free(body);
}

static struct envelope *order_env;

/* Records a commit's callback as 'c' in order[]. */
static void
order_commit_cb(int error, struct envelope *env, void *arg)
{
	cr_assert_eq(error, 0, "commit: %s", strerror(error));
	order[norder++] = 'c';
	order_env = env;
	loop_tick();
}

/* A commit's callback (a client's 250) runs before those of the
 * removals synced in its group, on the loop and on the thread alike. */
Test(queue, commit_answered_before_the_removals_of_its_group)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *done[2];
	struct result r1;
	static char rm[] = "r";
	char *body = make_body(2000);
	int i;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	lone_wait(q, env, body, 2000, &r1);
	for (i = 0; i < 2; i++) {
		norder = 0;
		queue_remove(q, i == 0 ? r1.env->id : done[0]->id, order_cb,
		    rm);
		if (i == 0)
			queue_txn_commit_alone(txn_written(q, env, body, 1000),
			    order_commit_cb, NULL);
		else
			queue_txn_commit(txn_written(q, env, body, 1000),
			    order_commit_cb, NULL);
		loop_counter = 0;
		run_loop(2);
		cr_assert_eq(norder, 2);
		cr_assert_eq(order[0], 'c', "round %d: %.2s", i, order);
		cr_assert_eq(order[1], 'r', "round %d: %.2s", i, order);
		done[i] = order_env;
	}
	queue_close(q);
	envelope_free(r1.env);
	envelope_free(done[0]);
	envelope_free(done[1]);
	envelope_free(env);
	free(body);
}

/* A message too large for the log needs its file renamed and the
 * directory synced: that stays on the commit thread. */
Test(queue, lone_commit_of_a_file_goes_to_the_thread)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1);
	struct queue_txn *txn;
	struct result r = { 0, -1, NULL };
	char *body = make_body(200000), id[ENVELOPE_ID_MAX];
	size_t off;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	cr_assert_not_null(txn = queue_txn_begin(q, env));
	snprintf(id, sizeof(id), "%s", queue_txn_id(txn));
	for (off = 0; off < 200000; off += 1000)
		cr_assert_eq(queue_txn_write(txn, body + off, 1000), 0);
	queue_txn_commit_alone(txn, commit_cb, &r);
	loop_counter = 0;
	run_loop(1);
	cr_assert_eq(r.error, 0);
	cr_assert_eq(count_fdatasync_loop, 0);
	cr_assert(exists("queue", id));
	queue_close(q);
	envelope_free(r.env);
	envelope_free(env);
	free(body);
}

/* Whether log/ has at most *arg files, after a moment of the loop. */
static int
log_files_at_most(void *arg)
{
	return count_dir("log") <= *(int *)arg;
}

/* Log files are still reclaimed when every commit is a lone one, carrying
 * the removals, and the commit thread runs no group: the loop's timer
 * wakes it for that. Two of the dead files may stay as spares (spoollog.c,
 * SPOOLLOG_SPARES). */
Test(queue, lone_commits_still_reclaim_log_files)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c[150];
	struct result r, rm;
	char *body = make_body(2000);
	int i, five = 5;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	queue_log_file_size(q, 32 * 1024);
	for (i = 0; i < 150; i++)
		c[i] = log_commit_one(q, env, body, 2000);
	cr_assert_geq(count_dir("log"), 9);
	for (i = 0; i < 150; i++) {
		rm = (struct result){ 0, -1, NULL };
		queue_remove(q, c[i]->id, done_cb, &rm);
		lone_start(q, env, body, 10, &r);
		loop_counter = 0;
		run_loop(2);
		cr_assert_eq(rm.error, 0);
		cr_assert_eq(r.error, 0);
		envelope_free(r.env);
	}
	cr_assert(fixture_run_until(base, log_files_at_most, &five, 5.0, 20),
	    "%d log files left", count_dir("log"));
	queue_close(q);
	for (i = 0; i < 150; i++)
		envelope_free(c[i]);
	envelope_free(env);
	free(body);
}

/*
 * Commits a message through queue_txn_commit_alone() until one runs on the
 * loop, at most tries times; returns whether one did. A commit also goes
 * through the thread while the thread owns the log, reclaiming log files
 * after a group of its own, so one commit through the thread right after
 * another is no proof that the lone path is closed; tries of them are.
 */
static int
lone_commit_on_loop(struct queue *q, const struct envelope *env,
    const char *body, int tries)
{
	struct queue_stats before, after;
	struct result r;
	int i;

	for (i = 0; i < tries; i++) {
		queue_stats(q, &before);
		lone_wait(q, env, body, 100, &r);
		envelope_free(r.env);
		queue_stats(q, &after);
		if (after.lone_groups > before.lone_groups)
			return 1;
	}
	return 0;
}

/*
 * The backoff of the lone path on a fake monotonic clock: every sync on the
 * loop takes 150 ms, so every lone commit finds the disk slow, and the
 * path stays closed 5 s after the first, then 10 s, 20 s, 40 s, 80 s,
 * 160 s, and then 5 minutes each time, never longer: a commit a
 * millisecond before the window ends goes through the thread, one at its
 * end runs on the loop again.
 */
Test(queue, lone_commit_backoff_stops_at_five_minutes)
{
	static const uint64_t window_s[] = { 5, 10, 20, 40, 80, 160, 300, 300,
		300 };
	struct queue *q;
	struct envelope *env = make_env("a@b", 1);
	char *body = make_body(100);
	uint64_t slow_at;
	size_t i;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	__atomic_store_n(&fake_loop_sync_ms, 150, __ATOMIC_SEQ_CST);
	__atomic_store_n(&fake_mono_ms, 1000000, __ATOMIC_SEQ_CST);
	cr_assert(lone_commit_on_loop(q, env, body, 1));
	for (i = 0; i < sizeof(window_s) / sizeof(window_s[0]); i++) {
		slow_at = __atomic_load_n(&fake_mono_ms, __ATOMIC_SEQ_CST);
		__atomic_store_n(&fake_mono_ms, slow_at + window_s[i] * 1000 - 1,
		    __ATOMIC_SEQ_CST);
		cr_assert(!lone_commit_on_loop(q, env, body, 5),
		    "slow sync %zu: the loop synced before %ju s", i + 1,
		    (uintmax_t)window_s[i]);
		__atomic_store_n(&fake_mono_ms, slow_at + window_s[i] * 1000,
		    __ATOMIC_SEQ_CST);
		cr_assert(lone_commit_on_loop(q, env, body, 50),
		    "slow sync %zu: commits stay off the loop past %ju s",
		    i + 1, (uintmax_t)window_s[i]);
	}
	queue_close(q);
	__atomic_store_n(&fake_mono_ms, 0, __ATOMIC_SEQ_CST);
	envelope_free(env);
	free(body);
}

/* The size given to queue_open() already holds for the replay at start: a
 * restart goes on writing in the newest log file, and preallocates it to
 * the configured size, not to the default 8 MB. */
Test(queue, restart_keeps_the_configured_log_file_size)
{
	struct queue *q;
	struct envelope *env = make_env("a@b", 1), *c[3];
	char *body = make_body(2000), err[256], path[512];
	struct stat st;
	size_t i;

	q = open_log_queue(SPOOL_SYNC_FSYNC);
	queue_log_file_size(q, 32 * 1024);
	for (i = 0; i < 3; i++)
		c[i] = log_commit_one(q, env, body, 2000);
	queue_close(q);

	q = queue_open(base, spool, SPOOL_SYNC_FSYNC, 32 * 1024, err,
	    sizeof(err));
	cr_assert_not_null(q, "queue_open: %s", err);
	cr_assert_eq(count_dir("log"), 1, "the newest file goes on");
	newest_log_file(path, sizeof(path));
	cr_assert_eq(stat(path, &st), 0, "%s", path);
	cr_assert_leq(st.st_size, 32 * 1024, "%jd bytes",
	    (intmax_t)st.st_size);
	cr_assert_leq(st.st_blocks * 512, 64 * 1024, "%jd bytes allocated",
	    (intmax_t)(st.st_blocks * 512));
	queue_close(q);
	for (i = 0; i < 3; i++)
		envelope_free(c[i]);
	envelope_free(env);
	free(body);
}
