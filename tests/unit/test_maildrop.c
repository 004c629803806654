/*
 * The maildrop importer with the real server, queue and worker pool: a
 * drop file is imported and removed; a file that fails its checks is
 * moved aside while the loop keeps running, because the sync of corrupt/
 * runs on the worker pool (fsync is wrapped to wait for the loop).
 */
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "dropfile.h"
#include "envelope.h"
#include "fixture.h"
#include "log.h"
#include "maildrop.h"
#include "queue.h"
#include "smtp_server.h"
#include "worker.h"

#define MAXQUEUED 8

static struct harness {
	struct event_base *base;
	struct config *cfg;
	struct queue *q;
	struct worker *w;
	struct smtp_server *srv;
	struct maildrop *md;
	struct event *tick;
	struct envelope *queued[MAXQUEUED];
	size_t nqueued;
	char top[64];
	char drop[128];
	char corrupt[160];
} h;

/*
 * fsync of corrupt/ waits until the loop thread has run a timer since it
 * began (or 5 s): run on the loop, it could never see that and would time
 * out.
 */
int __real_fsync(int fd);
int __wrap_fsync(int fd);

static ino_t corrupt_ino;
static int in_fsync, released, fsync_stalled, corrupt_syncs;

int
__wrap_fsync(int fd)
{
	struct timespec ms = { 0, 1000000L };
	struct stat st;
	int i;

	if (corrupt_ino == 0 || fstat(fd, &st) == -1 ||
	    st.st_ino != corrupt_ino)
		return __real_fsync(fd);
	__atomic_store_n(&released, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&in_fsync, 1, __ATOMIC_SEQ_CST);
	for (i = 0; i < 5000 && !__atomic_load_n(&released, __ATOMIC_SEQ_CST);
	    i++)
		nanosleep(&ms, NULL);
	if (!__atomic_load_n(&released, __ATOMIC_SEQ_CST))
		__atomic_store_n(&fsync_stalled, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&in_fsync, 0, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&corrupt_syncs, 1, __ATOMIC_SEQ_CST);
	return __real_fsync(fd);
}

/* Every 5 ms on the loop: lets a waiting fsync of corrupt/ go. */
static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	if (__atomic_load_n(&in_fsync, __ATOMIC_SEQ_CST))
		__atomic_store_n(&released, 1, __ATOMIC_SEQ_CST);
}

static void
queued_cb(struct envelope *env, void *arg)
{
	cr_assert_lt(h.nqueued, MAXQUEUED);
	h.queued[h.nqueued++] = env;
}

static void
setup(void)
{
	struct smtp_server_params params;
	struct timeval tv = { 0, 5000 };
	struct stat st;
	char err[512], text[1024], spool[96];

	log_init("test_maildrop", 0);
	signal(SIGPIPE, SIG_IGN);
	cr_assert_eq(evthread_use_pthreads(), 0);
	memset(&h, 0, sizeof(h));
	cr_assert_not_null(h.base = event_base_new());
	snprintf(h.top, sizeof(h.top), "/tmp/test_maildrop.XXXXXX");
	cr_assert_not_null(mkdtemp(h.top));
	snprintf(spool, sizeof(spool), "%s/spool", h.top);
	snprintf(h.drop, sizeof(h.drop), "%s/maildrop", h.top);
	snprintf(h.corrupt, sizeof(h.corrupt), "%s/corrupt", spool);
	cr_assert_eq(mkdir(h.drop, 0700), 0);
	snprintf(text, sizeof(text),
	    "hostname = \"mx.test\";\n"
	    "spool = \"%s\";\n"
	    "maildrop = \"%s\";\n"
	    "relays = { cap = { type = \"maildir\"; path = \"%s/md\"; }; };\n",
	    spool, h.drop, h.top);
	h.cfg = config_parse_string(text, "test.conf", err, sizeof(err));
	cr_assert_not_null(h.cfg, "config: %s", err);
	h.q = queue_open(h.base, spool, SPOOL_SYNC_FSYNC, 0, err, sizeof(err));
	cr_assert_not_null(h.q, "queue_open: %s", err);
	cr_assert_eq(stat(h.corrupt, &st), 0, "%s", h.corrupt);
	corrupt_ino = st.st_ino;
	h.w = worker_new(h.base, 2);
	memset(&params, 0, sizeof(params));
	params.cfg = h.cfg;
	params.queue = h.q;
	params.queued = queued_cb;
	cr_assert_not_null(h.srv = smtp_server_new(h.base, &params));
	h.tick = event_new(h.base, -1, EV_PERSIST, tick_cb, NULL);
	cr_assert_eq(event_add(h.tick, &tv), 0);
}

static void
teardown(void)
{
	size_t i;

	corrupt_ino = 0;
	maildrop_free(h.md);
	smtp_server_free(h.srv);
	worker_free(h.w);
	queue_close(h.q);
	for (i = 0; i < h.nqueued; i++)
		envelope_free(h.queued[i]);
	event_free(h.tick);
	config_free(h.cfg);
	event_base_free(h.base);
	fixture_rmtree(h.top);
}

TestSuite(maildrop, .init = setup, .fini = teardown, .timeout = 60);

/* Writes name into the maildrop: a drop file of ours unless raw. */
static void
drop_file(const char *name, const char *raw)
{
	const char *rcpts[] = { "bob@example.net" };
	const char *body = "Subject: t\r\n\r\nhello\r\n";
	char path[160], trailer[DROPFILE_TRAILER_MAX], *hdr;
	size_t hlen, tlen;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", h.drop, name);
	cr_assert_not_null(f = fopen(path, "w"));
	if (raw != NULL) {
		fputs(raw, f);
	} else {
		hdr = dropfile_header(getuid(), "alice@example.org", rcpts, 1,
		    &hlen);
		tlen = dropfile_trailer(trailer, sizeof(trailer),
		    (off_t)strlen(body));
		cr_assert_eq(fwrite(hdr, 1, hlen, f), hlen);
		fputs(body, f);
		cr_assert_eq(fwrite(trailer, 1, tlen, f), tlen);
		free(hdr);
	}
	cr_assert_eq(fclose(f), 0);
}

/* Entries of dir, minus "." and "..". */
static int
count_dir(const char *dir)
{
	int n;

	cr_assert_geq(n = fixture_count_dir(dir), 0, "%s", dir);
	return n;
}

static int
imported(void *arg)
{
	return h.nqueued == 1 && count_dir(h.drop) == 0;
}

static int
moved_aside(void *arg)
{
	return count_dir(h.corrupt) == 1 && count_dir(h.drop) == 0 &&
	    __atomic_load_n(&corrupt_syncs, __ATOMIC_SEQ_CST) == 1;
}

static int
syncing(void *arg)
{
	return __atomic_load_n(&in_fsync, __ATOMIC_SEQ_CST);
}

static void
open_maildrop(void)
{
	char err[256];

	h.md = maildrop_open(h.base, h.w, h.cfg, h.srv, err, sizeof(err));
	cr_assert_not_null(h.md, "maildrop_open: %s", err);
}

Test(maildrop, drop_is_imported_then_removed)
{
	drop_file("1.a", NULL);
	open_maildrop();
	cr_assert(fixture_run_until(h.base, imported, NULL, 10, 20),
	    "%zu queued, %d left in the maildrop", h.nqueued,
	    count_dir(h.drop));
	cr_assert_str_eq(h.queued[0]->sender, "alice@example.org");
	cr_assert_eq(h.queued[0]->nrcpts, 1);
	cr_assert_str_eq(h.queued[0]->rcpts[0].addr, "bob@example.net");
}

/* A file that fails its checks goes to corrupt/, synced off the loop. */
Test(maildrop, bad_file_moved_aside_without_blocking_the_loop)
{
	drop_file("1.bad", "not a drop file\n");
	open_maildrop();
	cr_assert(fixture_run_until(h.base, moved_aside, NULL, 10, 20),
	    "%d in corrupt/, %d left in the maildrop", count_dir(h.corrupt),
	    count_dir(h.drop));
	cr_assert_not(__atomic_load_n(&fsync_stalled, __ATOMIC_SEQ_CST),
	    "the sync of corrupt/ ran on the loop thread");
	cr_assert_eq(h.nqueued, 0);
}

/* maildrop_free() while a step runs on the pool: that step's completion,
 * which worker_free() runs, frees the maildrop (ASan sees the rest). */
Test(maildrop, free_during_a_blocking_step)
{
	drop_file("1.bad", "not a drop file\n");
	open_maildrop();
	cr_assert(fixture_run_until(h.base, syncing, NULL, 10, 1));
	maildrop_free(h.md);
	h.md = NULL;
	cr_assert(fixture_run_until(h.base, moved_aside, NULL, 10, 20));
	worker_free(h.w);
	h.w = NULL;
	cr_assert_not(__atomic_load_n(&fsync_stalled, __ATOMIC_SEQ_CST));
}
