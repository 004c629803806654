/*
 * The spool log's index at a size where its tables grow many times and
 * deletions shift long runs of linear probing: every live message is found
 * (and read back, its envelope's length coming from the record header),
 * no dead one is, before and after a replay from disk; and the log's many
 * files hold no descriptor each. Compaction, the preallocation given back
 * at a restart, and dead files reused: their old records never replayed,
 * at most two kept.
 */
#include <sys/stat.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "envelope.h"
#include "fixture.h"
#include "spoollog.h"

#define NMSG 30000
#define BATCH 500
/* Ids as queue.c makes them: a millisecond clock in the high bits, so
 * consecutive ones differ in few bits. */
#define ID(i) ((((uint64_t)1 << 40) + (uint64_t)(i) / 7) << 22 | (i) % 7)

static char spool[] = "/tmp/test_spoollog.XXXXXX";
static int spool_fd = -1;

static void
setup(void)
{
	cr_assert_not_null(mkdtemp(spool));
	spool_fd = open(spool, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert_neq(spool_fd, -1);
}

static void
teardown(void)
{
	if (spool_fd != -1)
		close(spool_fd);
	fixture_rmtree(spool);
}

TestSuite(spoollog, .init = setup, .fini = teardown);

static struct spoollog *
open_log(void)
{
	struct spoollog *log;
	char err[256];

	log = spoollog_open(spool_fd, spool, err, sizeof(err));
	cr_assert_not_null(log, "spoollog_open: %s", err);
	return log;
}

static void
flush_commit(struct spoollog *log)
{
	off_t base;

	cr_assert_eq(spoollog_flush(log, 0, &base), 0);
	spoollog_commit(log);
}

/* Stages message i: an envelope naming it, and a body of i % 50 + 1
 * bytes. */
static void
add_message(struct spoollog *log, size_t i)
{
	struct envelope *env = envelope_new();
	char body[64], *text;
	size_t len;

	envelope_id_text(ID(i), env->id, sizeof(env->id));
	free(env->sender);
	env->sender = strdup("a@example.org");
	env->client = strdup("localhost[127.0.0.1]");
	envelope_add_rcpt(env, "b@example.org");
	memset(body, 'x', sizeof(body));
	text = envelope_encode(env, &len);
	spoollog_add(log, LOGREC_MESSAGE, env->id, text, len, body,
	    i % 50 + 1);
	free(text);
	envelope_free(env);
}

/* The descriptors this process has open. */
static int
open_fds(void)
{
	DIR *d;
	int n = 0;

	cr_assert_not_null(d = opendir("/proc/self/fd"));
	while (readdir(d) != NULL)
		n++;
	closedir(d);
	return n - 3;	/* ".", ".." and d's own */
}

static int
is_dead(size_t i)
{
	return i % 3 == 1;
}

static void
count_one(const char *id, void *arg)
{
	(*(size_t *)arg)++;
}

/* Every message alive unless is_dead(), and a sample read back whole. */
static void
assert_index(struct spoollog *log)
{
	struct envelope *env;
	char id[ENVELOPE_ID_MAX];
	size_t i, n = 0;

	for (i = 0; i < NMSG; i++) {
		envelope_id_text(ID(i), id, sizeof(id));
		cr_assert_eq(spoollog_has(log, id), !is_dead(i), "message %zu",
		    i);
	}
	spoollog_foreach(log, count_one, &n);
	cr_assert_eq(n, NMSG - (NMSG + 1) / 3);
	for (i = 0; i < NMSG; i += 997) {
		if (is_dead(i))
			continue;
		envelope_id_text(ID(i), id, sizeof(id));
		cr_assert_not_null(env = spoollog_read(log, id), "read %s", id);
		cr_assert_str_eq(env->id, id);
		cr_assert_eq(env->nrcpts, 1);
		cr_assert_eq(env->body_size, (off_t)(i % 50 + 1));
		envelope_free(env);
	}
}

Test(spoollog, index_holds_thousands_through_growth_and_deletion)
{
	struct spoollog *log;
	struct spoollog_stats st;
	char id[ENVELOPE_ID_MAX];
	size_t i;
	int fds;

	fds = open_fds();
	log = open_log();
	/* Files of 64 KB: dozens of them. */
	spoollog_file_size(log, 64 * 1024);
	cr_assert_eq(spoollog_recover(log), 0);
	for (i = 0; i < NMSG; i++) {
		add_message(log, i);
		if ((i + 1) % BATCH == 0)
			flush_commit(log);
	}
	flush_commit(log);
	for (i = 0; i < NMSG; i++) {
		if (!is_dead(i))
			continue;
		envelope_id_text(ID(i), id, sizeof(id));
		spoollog_add(log, LOGREC_DONE, id, NULL, 0, NULL, 0);
	}
	flush_commit(log);
	assert_index(log);
	spoollog_stats(log, &st);
	cr_assert_eq(st.messages, NMSG - (NMSG + 1) / 3);
	cr_assert_gt(st.files, 40);
	/* log/, the file being written and the four kept for readers, none
	 * per file. */
	cr_assert_leq(open_fds(), fds + 6, "%d descriptors for %zu files",
	    open_fds() - fds, st.files);
	spoollog_free(log);
	cr_assert_eq(open_fds(), fds);

	log = open_log();
	cr_assert_eq(spoollog_recover(log), NMSG - (NMSG + 1) / 3);
	assert_index(log);
	cr_assert_leq(open_fds(), fds + 6);
	spoollog_free(log);
}

/* The log's clock in the tests below, moved by hand. */
static int64_t fake_now = 1000000;

static int64_t
fake_clock(void)
{
	return __atomic_load_n(&fake_now, __ATOMIC_SEQ_CST);
}

static void
fake_advance(int64_t secs)
{
	__atomic_add_fetch(&fake_now, secs, __ATOMIC_SEQ_CST);
}

static void
bury(struct spoollog *log, size_t i)
{
	char id[ENVELOPE_ID_MAX];

	envelope_id_text(ID(i), id, sizeof(id));
	spoollog_add(log, LOGREC_DONE, id, NULL, 0, NULL, 0);
}

#define DRAIN_MSG 3000
#define DRAIN_ROUNDS 60
/* The mail that waits (deferred): in every file. */
#define WAITS(i) ((i) % 100 == 0)

/*
 * A backlog drained over a minute, a second per round, every file losing
 * messages in every round: none is copied forward, though the dead bytes
 * would long have paid for it. The mail that waits afterwards, spread
 * over every file, is copied forward once 30 s passed without a delivery
 * (not at 29 s), and the files it pinned go.
 */
Test(spoollog, draining_file_left_alone_waiting_messages_copied)
{
	struct spoollog *log;
	struct spoollog_stats st;
	struct envelope *env;
	char id[ENVELOPE_ID_MAX];
	size_t i, r, waiting = 0, files;
	int k;

	log = open_log();
	spoollog_clock(log, fake_clock);
	spoollog_file_size(log, 64 * 1024);
	cr_assert_eq(spoollog_recover(log), 0);
	for (i = 0; i < DRAIN_MSG; i++) {
		add_message(log, i);
		if ((i + 1) % 100 == 0)
			flush_commit(log);
		waiting += WAITS(i);
	}
	spoollog_stats(log, &st);
	files = st.files;
	cr_assert_geq(files, 8);
	for (r = 0; r < DRAIN_ROUNDS; r++) {
		for (i = r; i < DRAIN_MSG; i += DRAIN_ROUNDS)
			if (!WAITS(i))
				bury(log, i);
		flush_commit(log);
		fake_advance(1);
		spoollog_maintain(log);
		spoollog_stats(log, &st);
		cr_assert_eq(st.copied, 0, "round %zu: %lu copied while "
		    "draining", r, st.copied);
	}
	cr_assert_eq(st.messages, waiting);
	cr_assert_geq(st.files, files, "a file pinned by waiting mail went");
	cr_assert_geq(st.bytes - st.live_bytes, 4 * 64 * 1024,
	    "too few dead bytes to want a copy");

	/* 29 s after the last delivery, then 31 s. */
	fake_advance(28);
	spoollog_maintain(log);
	spoollog_stats(log, &st);
	cr_assert_eq(st.copied, 0, "copied before 30 s without delivery");
	fake_advance(2);
	for (k = 0; k < 100 && (st.copied < waiting || st.files > 2); k++) {
		spoollog_maintain(log);
		spoollog_stats(log, &st);
	}
	cr_assert_eq(st.copied, waiting);
	cr_assert_leq(st.files, 2, "%zu files left", st.files);
	spoollog_free(log);

	log = open_log();
	cr_assert_eq(spoollog_recover(log), waiting);
	for (i = 0; i < DRAIN_MSG; i++) {
		envelope_id_text(ID(i), id, sizeof(id));
		cr_assert_eq(spoollog_has(log, id), WAITS(i), "message %zu", i);
		if (!WAITS(i))
			continue;
		cr_assert_not_null(env = spoollog_read(log, id), "read %s", id);
		cr_assert_eq(env->body_size, (off_t)(i % 50 + 1));
		envelope_free(env);
	}
	spoollog_free(log);
}

/* The log files in log/: their number, and in *seqs (if not NULL, up to
 * 16) their seqs, ascending as readdir need not give them. */
static int
log_files(uint32_t *seqs)
{
	struct dirent *de;
	uint32_t t;
	DIR *d;
	int fd, n = 0, i, j;

	cr_assert_neq(fd = openat(spool_fd, "log", O_RDONLY | O_DIRECTORY),
	    -1);
	cr_assert_not_null(d = fdopendir(fd));
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (seqs != NULL && n < 16)
			seqs[n] = (uint32_t)strtoul(de->d_name, NULL, 16);
		n++;
	}
	closedir(d);
	for (i = 1; seqs != NULL && i < n && i < 16; i++)
		for (j = i; j > 0 && seqs[j - 1] > seqs[j]; j--) {
			t = seqs[j];
			seqs[j] = seqs[j - 1];
			seqs[j - 1] = t;
		}
	return n;
}

/* Blocks allocated to log file seq. */
static long long
file_blocks(uint32_t seq)
{
	struct stat sb;
	char name[64];

	snprintf(name, sizeof(name), "log/%016X", seq);
	cr_assert_eq(fstatat(spool_fd, name, &sb, 0), 0, "%s", name);
	return (long long)sb.st_blocks * 512;
}

/* Messages from .. to-1 read back whole. */
static void
assert_readable(struct spoollog *log, size_t from, size_t to)
{
	struct envelope *env;
	char id[ENVELOPE_ID_MAX];
	size_t i;

	for (i = from; i < to; i++) {
		envelope_id_text(ID(i), id, sizeof(id));
		cr_assert_not_null(env = spoollog_read(log, id), "read %s", id);
		cr_assert_eq(env->body_size, (off_t)(i % 50 + 1));
		envelope_free(env);
	}
}

/*
 * A restart goes on writing in the newest file when its records end
 * cleanly: two runs of 20 messages, three starts, one file, preallocated
 * again for the next run, every message read back.
 */
Test(spoollog, restart_continues_the_newest_file)
{
	struct spoollog *log;
	struct spoollog_stats st;
	int run;

	for (run = 0; run < 3; run++) {
		log = open_log();
		spoollog_file_size(log, 1024 * 1024);
		cr_assert_eq(spoollog_recover(log), (size_t)(20 * run));
		assert_readable(log, 0, (size_t)(20 * run));
		if (run > 0)
			cr_assert_geq(file_blocks(1), 1024 * 1024,
			    "run %d: not preallocated again", run);
		for (size_t i = 0; i < 20 && run < 2; i++)
			add_message(log, (size_t)(20 * run) + i);
		if (run < 2)
			flush_commit(log);
		spoollog_stats(log, &st);
		cr_assert_eq(st.files, 1, "run %d: %zu files", run, st.files);
		spoollog_free(log);
	}
}

/*
 * A file that is not the newest, preallocated at 1 MB and holding a few
 * KB: a restart truncates the zeros after its records, and its messages
 * read back. The newest file here holds only a torn record: it is retired
 * at that start (too small to be kept as a spare), so at the next start
 * the first file is the newest, ends cleanly, and is continued:
 * preallocated again and written to.
 */
Test(spoollog, restart_gives_back_the_preallocation_of_old_files)
{
	struct spoollog *log;
	struct spoollog_stats st;
	unsigned char torn[100];
	int fd;

	log = open_log();
	spoollog_file_size(log, 1024 * 1024);
	cr_assert_eq(spoollog_recover(log), 0);
	for (size_t i = 0; i < 20; i++)
		add_message(log, i);
	flush_commit(log);
	spoollog_free(log);
	cr_assert_geq(file_blocks(1), 1024 * 1024, "not preallocated");
	memset(torn, 0xab, sizeof(torn));
	cr_assert_neq(fd = openat(spool_fd, "log/0000000000000002",
	    O_WRONLY | O_CREAT | O_EXCL, 0600), -1);
	cr_assert_eq(write(fd, torn, sizeof(torn)), (ssize_t)sizeof(torn));
	close(fd);

	log = open_log();
	spoollog_file_size(log, 1024 * 1024);
	cr_assert_eq(spoollog_recover(log), 20);
	cr_assert_leq(file_blocks(1), 64 * 1024, "%lld bytes still allocated",
	    file_blocks(1));
	assert_readable(log, 0, 20);
	spoollog_stats(log, &st);
	cr_assert_eq(st.files, 1);
	cr_assert_eq(faccessat(spool_fd, "log/0000000000000002", F_OK, 0), -1,
	    "the file of a torn record was kept");
	spoollog_free(log);

	log = open_log();
	spoollog_file_size(log, 1024 * 1024);
	cr_assert_eq(spoollog_recover(log), 20);
	cr_assert_geq(file_blocks(1), 1024 * 1024, "not preallocated again");
	add_message(log, 20);
	flush_commit(log);
	spoollog_stats(log, &st);
	cr_assert_eq(st.files, 1, "%zu files", st.files);
	assert_readable(log, 0, 21);
	spoollog_free(log);
}

#define LOOP_RUNS 300
#define LOOP_MSG 40
#define LOOP_FILE (64 * 1024)
#define LOOP_BOUND(live) (3 + (3 * (live) + LOOP_FILE - 1) / LOOP_FILE)

/*
 * A crash loop: the log opened, written and dropped 300 times, 5 s of the
 * test's clock a run (never the 30 s without a delivery that compacts a
 * file otherwise), each run delivering all but one of its 40 messages, so
 * that every run leaves a message that waits in the file it wrote. The
 * live messages grow (300 at the end, about 64 KB); the files must not
 * grow with the runs but with the live data: each start finds at most
 * LOOP_BOUND() files. The log copies the oldest file's messages forward
 * once the dead bytes behind it are a file's worth and twice its live
 * ones, so it holds the live bytes, up to twice as many dead ones, the
 * file being written and the one before it, each partly filled: 3 files
 * and 3 times the live bytes. (Without compaction after a start, each
 * restart left a file: 300.) Every message left reads back at the end.
 */
Test(spoollog, crash_loop_keeps_files_bounded_by_live_data)
{
	struct spoollog *log;
	struct spoollog_stats st;
	size_t i, run, base, most = 0;
	unsigned long copied = 0;

	log = open_log();
	spoollog_clock(log, fake_clock);
	spoollog_file_size(log, LOOP_FILE);
	cr_assert_eq(spoollog_recover(log), 0);
	for (run = 0; run < LOOP_RUNS; run++) {
		base = run * LOOP_MSG;
		for (i = 0; i < LOOP_MSG; i++)
			add_message(log, base + i);
		flush_commit(log);
		spoollog_maintain(log);
		/* All but the first of the run delivered. */
		for (i = 1; i < LOOP_MSG; i++)
			bury(log, base + i);
		flush_commit(log);
		spoollog_maintain(log);
		fake_advance(5);
		spoollog_stats(log, &st);
		copied += st.copied;
		spoollog_free(log);

		log = open_log();
		spoollog_clock(log, fake_clock);
		spoollog_file_size(log, LOOP_FILE);
		cr_assert_eq(spoollog_recover(log), run + 1);
		spoollog_stats(log, &st);
		if (st.files > most)
			most = st.files;
		cr_assert_leq(st.files, LOOP_BOUND(st.live_bytes), "restart "
		    "%zu found %zu files for %zu live messages (%llu bytes)",
		    run + 1, st.files, st.messages,
		    (unsigned long long)st.live_bytes);
	}
	cr_assert_gt(copied, 0UL, "nothing copied forward");
	for (run = 0; run < LOOP_RUNS; run++)
		assert_readable(log, run * LOOP_MSG, run * LOOP_MSG + 1);
	spoollog_free(log);
	cr_log_info("most files at a restart: %zu, %lu copied forward", most,
	    copied);
}

/*
 * Readers keep at most four log files open between them (the ones read
 * last), whatever the number of files read: each read and body open
 * takes a duplicate of a kept descriptor or opens its file. A file's
 * kept descriptor goes with the file.
 */
Test(spoollog, readers_keep_a_few_descriptors_closed_with_their_file)
{
	struct spoollog *log;
	struct spoollog_stats st;
	struct envelope *env;
	char id[ENVELOPE_ID_MAX];
	size_t i;
	off_t off;
	int fds, fd;

	fds = open_fds();
	log = open_log();
	spoollog_file_size(log, 64 * 1024);
	cr_assert_eq(spoollog_recover(log), 0);
	for (i = 0; i < 3000; i++) {
		add_message(log, i);
		if ((i + 1) % 100 == 0)
			flush_commit(log);
	}
	spoollog_stats(log, &st);
	cr_assert_geq(st.files, 8);
	for (i = 0; i < 3000; i++) {
		envelope_id_text(ID(i), id, sizeof(id));
		cr_assert_not_null(env = spoollog_read(log, id), "read %s", id);
		cr_assert_neq(fd = spoollog_body_open(log, id, &off), -1);
		cr_assert_eq(off, env->body_offset);
		close(fd);
		envelope_free(env);
		cr_assert_leq(open_fds(), fds + 6, "%d descriptors after %zu "
		    "reads", open_fds() - fds, i + 1);
	}
	for (i = 0; i < 3000; i++)
		bury(log, i);
	flush_commit(log);
	spoollog_maintain(log);
	spoollog_stats(log, &st);
	cr_assert_leq(st.files, 1, "%zu files left", st.files);
	/* log/ and the file being written, if it was not full. */
	cr_assert_leq(open_fds(), fds + 2, "%d descriptors for one file",
	    open_fds() - fds);
	spoollog_free(log);
	cr_assert_eq(open_fds(), fds);
}

#define RECYCLE_SIZE (16 * 1024)

/*
 * A log of files of RECYCLE_SIZE with messages 0..n-1 committed a batch of
 * 10 at a time, then every one buried: the full files among them are dead
 * and retired at the spoollog_maintain() that follows, two kept as spares;
 * the newest (not full) stays. Its stats in *st.
 */
static struct spoollog *
open_buried(size_t n, struct spoollog_stats *st)
{
	struct spoollog *log;
	size_t i;

	log = open_log();
	spoollog_file_size(log, RECYCLE_SIZE);
	cr_assert_eq(spoollog_recover(log), 0);
	for (i = 0; i < n; i++) {
		add_message(log, i);
		if ((i + 1) % 10 == 0)
			flush_commit(log);
	}
	flush_commit(log);
	for (i = 0; i < n; i++)
		bury(log, i);
	flush_commit(log);
	spoollog_maintain(log);
	spoollog_stats(log, st);
	cr_assert_eq(st->messages, 0);
	cr_assert_eq(st->spares, 2, "%zu spares", st->spares);
	return log;
}

/* None of the buried messages 0..n-1 is back. */
static void
assert_none_back(struct spoollog *log, size_t n)
{
	char id[ENVELOPE_ID_MAX];
	size_t i;

	for (i = 0; i < n; i++) {
		envelope_id_text(ID(i), id, sizeof(id));
		cr_assert(!spoollog_has(log, id), "stale message %zu back", i);
	}
}

/* The bytes of log/<seq>, and their length in *len. */
static unsigned char *
log_file_read(uint32_t seq, size_t *len)
{
	char name[32];
	struct stat sb;
	unsigned char *buf;
	int dfd, fd;

	snprintf(name, sizeof(name), "log/%016X", seq);
	cr_assert_neq(dfd = openat(spool_fd, ".", O_RDONLY | O_DIRECTORY),
	    -1);
	cr_assert_neq(fd = openat(dfd, name, O_RDONLY), -1, "%s", name);
	close(dfd);
	cr_assert_eq(fstat(fd, &sb), 0);
	*len = (size_t)sb.st_size;
	cr_assert_not_null(buf = malloc(*len + 1));
	cr_assert_eq(pread(fd, buf, *len, 0), (ssize_t)*len);
	close(fd);
	return buf;
}

struct offsets {
	size_t off[64];
	size_t n;
};

static int
note_offset(const struct logrec *rec, const unsigned char *payload,
    size_t offset, void *arg)
{
	struct offsets *o = arg;

	if (o->n < 64)
		o->off[o->n++] = offset;
	return 0;
}

/*
 * A reused file that is the newest at a start holds its new records and
 * then its earlier life's: the start does not go on in it (stale records,
 * not zeros, follow its records), so the next write starts another file,
 * the reused one is left as it was, and neither its stale records nor the
 * buried messages come back, then or after one more start.
 */
Test(spoollog, reused_newest_file_is_not_continued)
{
	struct spoollog *log;
	struct spoollog_stats st;
	unsigned char *before, *after;
	char id[ENVELOPE_ID_MAX];
	uint32_t seqs[16];
	size_t i, k, len, len2, valid;

	log = open_buried(200, &st);
	cr_assert_eq(log_files(seqs), 3);
	/* One message per group until both spares were taken, the second
	 * then the newest file; three more into it. */
	for (i = 1000; i < 1400; i++) {
		add_message(log, i);
		flush_commit(log);
		spoollog_stats(log, &st);
		if (st.recycled == 2)
			break;
	}
	cr_assert_eq(st.recycled, 2, "spares not both reused");
	for (k = 0; k < 3; k++) {
		add_message(log, ++i);
		flush_commit(log);
	}
	spoollog_free(log);
	before = log_file_read(seqs[2], &len);
	valid = logrec_scan(before, len, seqs[2], NULL, NULL);
	cr_assert_lt(valid, len);
	cr_assert_not_null(memmem(before + valid, len - valid, "SHLG", 4),
	    "no stale record after the new ones");

	log = open_log();
	spoollog_file_size(log, RECYCLE_SIZE);
	cr_assert_eq(spoollog_recover(log), i - 1000 + 1);
	add_message(log, 5000);
	flush_commit(log);
	cr_assert_gt(log_files(seqs), 0);
	after = log_file_read(seqs[2], &len2);
	cr_assert(len2 == len && memcmp(before, after, len) == 0,
	    "the reused file was written to after the start");
	free(after);
	free(before);
	spoollog_free(log);

	log = open_log();
	cr_assert_eq(spoollog_recover(log), i - 1000 + 2);
	assert_none_back(log, 200);
	envelope_id_text(ID(5000), id, sizeof(id));
	cr_assert(spoollog_has(log, id));
	spoollog_free(log);
}

/*
 * A dead file is renamed to become a later newest file, its old records
 * left in place: new records go over them from the start, and a replay
 * reads only the new ones. With the second new record torn (what a power
 * cut can leave), the replay ends there: neither the new records after it
 * nor the stale ones beyond come back, and nothing of the buried messages
 * does.
 */
Test(spoollog, recycled_file_replays_only_its_new_records)
{
	struct spoollog *log;
	struct spoollog_stats st;
	struct offsets offs = { .n = 0 };
	unsigned char *buf;
	char id[ENVELOPE_ID_MAX];
	uint32_t seqs[16], reused;
	size_t i, len, valid, first = 0, last;
	int dfd;

	log = open_buried(200, &st);
	cr_assert_eq(st.files, 1, "%zu files", st.files);
	cr_assert_eq(log_files(seqs), 3);
	reused = seqs[1];
	/* One message per group until the next file is the first spare,
	 * then five more into it. */
	for (i = 1000; i < 1400; i++) {
		add_message(log, i);
		flush_commit(log);
		spoollog_stats(log, &st);
		if (st.recycled == 1 && first == 0)
			first = i;
		if (first != 0 && i == first + 5)
			break;
	}
	cr_assert_neq(first, 0, "no file was reused");
	last = i;
	spoollog_stats(log, &st);
	cr_assert_eq(st.recycled, 1);
	cr_assert_eq(st.spares, 1);
	spoollog_free(log);

	/* The reused file: six new records, then the old file's. */
	buf = log_file_read(reused, &len);
	valid = logrec_scan(buf, len, reused, note_offset, &offs);
	cr_assert_eq(offs.n, 6, "%zu records", offs.n);
	cr_assert_lt(valid, len);
	cr_assert_not_null(memmem(buf + valid, len - valid, "SHLG", 4),
	    "no stale record after the new ones");
	cr_assert_eq(logrec_scan(buf + valid, len - valid, reused, NULL,
	    NULL), 0);

	log = open_log();
	cr_assert_eq(spoollog_recover(log), last - 1000 + 1);
	assert_none_back(log, 200);
	spoollog_free(log);

	/* The second new record torn. */
	buf[offs.off[1] + LOGREC_HEADER_LEN + 3] ^= 0x55;
	cr_assert_neq(dfd = openat(spool_fd, "log", O_RDONLY | O_DIRECTORY),
	    -1);
	{
		char name[32];
		int fd;

		snprintf(name, sizeof(name), "%016X", reused);
		cr_assert_neq(fd = openat(dfd, name, O_WRONLY), -1);
		cr_assert_eq(pwrite(fd, buf, len, 0), (ssize_t)len);
		close(fd);
	}
	close(dfd);
	free(buf);
	log = open_log();
	cr_assert_eq(spoollog_recover(log), first - 1000 + 1);
	for (i = 1000; i <= last; i++) {
		envelope_id_text(ID(i), id, sizeof(id));
		cr_assert_eq(spoollog_has(log, id), i <= first,
		    "message %zu", i);
	}
	assert_none_back(log, 200);
	spoollog_free(log);
}

/*
 * A crash after dead files were renamed into spares and before any record
 * went into them: the next start finds files with only stale records,
 * replays none of them, keeps them as spares again (renamed once more)
 * and deletes the rest.
 */
Test(spoollog, crash_after_recycling_before_first_record)
{
	struct spoollog *log;
	struct spoollog_stats st;
	uint32_t before[16], after[16];
	size_t i;

	log = open_buried(200, &st);
	cr_assert_eq(log_files(before), 3);
	spoollog_free(log);

	log = open_log();
	spoollog_file_size(log, RECYCLE_SIZE);
	cr_assert_eq(spoollog_recover(log), 0);
	assert_none_back(log, 200);
	spoollog_stats(log, &st);
	cr_assert_eq(st.spares, 2, "%zu spares", st.spares);
	cr_assert_eq(st.files, 0);
	/* The two spares under new names above the old ones; the file
	 * with the tombstones gone. */
	cr_assert_eq(log_files(after), 2);
	cr_assert_gt(after[0], before[2]);
	/* And they are used, under those names. */
	for (i = 300; i < 400; i++) {
		add_message(log, i);
		flush_commit(log);
	}
	spoollog_stats(log, &st);
	cr_assert_geq(st.recycled, 1);
	spoollog_free(log);
	log = open_log();
	cr_assert_eq(spoollog_recover(log), 100);
	spoollog_free(log);
}

/*
 * However many files die at once, at most two are kept: the rest are
 * deleted, and once the spares are used up the next file is a fresh one.
 */
Test(spoollog, recycling_is_bounded)
{
	struct spoollog *log;
	struct spoollog_stats st;
	size_t i, files;

	log = open_buried(2000, &st);
	cr_assert_leq(log_files(NULL), 3, "%d files", log_files(NULL));
	files = st.files;
	for (i = 3000; i < 3400 && st.files < files + 3; i++) {
		add_message(log, i);
		flush_commit(log);
		spoollog_stats(log, &st);
	}
	cr_assert_eq(st.files, files + 3);
	cr_assert_eq(st.recycled, 2);
	cr_assert_eq(st.spares, 0);
	spoollog_free(log);
}
