/*
 * The spool. Layout under the spool directory:
 *
 *	tmp/<id>	a message being received; never taken for a message
 *	queue/<id>	a committed message
 *	corrupt/<id>	files queue_load() could not read, kept for a human
 *	spare/<name>	a removed message's file kept for reuse, or a
 *			message being received into such a file; never
 *			taken for a message
 *	log/<seq>	the spool log (spoollog.h): every message of up to
 *			log_max bytes, its state records and tombstone
 *
 * A queue file is a fixed 64-byte preamble, the envelope text (envelope.h),
 * the body, then state records appended one line per update:
 *
 *	"smarthostd-spool 1 <body offset> <body size>" (16 hex digits each,
 *	padded with spaces to 63 bytes, then '\n')
 *
 * The preamble is written with a zero size when the message starts, and
 * filled in at commit, so the loader knows exactly where the body ends and
 * the records begin without scanning the body.
 *
 * Invariant: a file appears in queue/ only after its data is on stable
 * storage (fdatasync or syncfs), and a commit is reported only after the
 * rename into queue/ is on stable storage too (fsync of the queue
 * directory). Without the directory fsync the rename lives only in the page
 * cache: a crash after our 250 could forget the name, and the message with
 * it, even though its blocks were safely written.
 *
 * Group commit. Syncing is the whole cost of accepting mail on this class of
 * machine: about 3 ms for one message committed alone, while the writes cost
 * microseconds. So commits are not synced one by one: queue_txn_commit()
 * hands the txn to one commit thread, which takes what is waiting at that
 * moment (up to QUEUE_GROUP_MAX operations, since each holds its file open
 * until the sync), syncs the lot (one fdatasync per file, issued several at a
 * time so the disk's cache flushes merge, or a single syncfs on a dedicated
 * spool filesystem), renames them all and syncs the queue directory once.
 * While one group syncs, the next accumulates, so the group size adapts to
 * the load by itself: one client sees single-message latency, twenty
 * clients share one directory sync per round. Completions come back to
 * the loop through an event.
 *
 * The lone commit. At one client the two thread hops of a commit (the loop
 * waking the commit thread, the thread waking the loop) cost about as much
 * as the write and the fdatasync they wrap: each is a futex or an eventfd,
 * a context switch, and on a busy machine a wait for a core (see
 * doc/PERFORMANCE.md, "One client"). So queue_txn_commit_alone(), which the
 * server calls when its session is the only one, runs the group on the
 * calling thread instead when nothing could be held up by that: the
 * message goes to the log, the commit thread is idle, and only removals
 * queued without waking it (which then share the sync) wait in the FIFO.
 * The group is the same group_run() the thread runs, so the durability
 * contract is the same: the callback, still run from ev_done and never from
 * inside the call, hears of the commit only after the sync returned, or of
 * its error. The cost is that the loop waits for that sync and so does
 * everything else on it (the relay, a connection arriving meanwhile). That
 * is bounded: only when the disk was fast lately. A group whose disk work
 * took QUEUE_INLINE_SLOW_MS or more, on either thread, sends every commit
 * through the commit thread for a backoff (5 s, doubled up to 5 minutes
 * while lone commits keep finding the disk slow), so a disk that stalls
 * freezes the loop for the one sync that found it out, then for one sync
 * after 5 s, 10 s, 20 s and so on; slow syncs of the thread's groups
 * meanwhile keep the path closed without freezing anything. The busy flag
 * is what keeps the two threads apart: whichever set it under the mutex
 * owns the log's writing side and the group until it clears it, and the
 * thread takes no group meanwhile.
 * The thread still reclaims log files (spoollog_maintain) after inline
 * groups, woken by a timer on the loop (QUEUE_MAINTAIN_WAIT_MS), not per
 * message.
 *
 * Updates (state records), removals and aborts go through the same thread
 * and the same FIFO, so the operations on one message apply in the order
 * they were asked for (an update and a later remove of the same id never
 * swap), and they share the group's syncs too.
 *
 * Reading. queue_scan() lists names only, so a restart costs a directory
 * read whatever the backlog; queue_read() reads one message's envelope and
 * state records when its owner needs them. Neither keeps a file open.
 *
 * Spare files. Creating and deleting an inode per message is the largest
 * cost of the spool after the syncs on ext4 (inode allocation scans for
 * recently deleted inodes, freeing truncates and frees blocks, and a
 * delayed-allocation file needs its blocks allocated at write-back). So a
 * removal renames queue/<id> to spare/<name> instead of unlinking it, and
 * queue_txn_begin() writes the next message over a spare from offset 0
 * instead of creating tmp/<id>. The commit then truncates the file to the
 * new message's length before the data sync (so nothing of the old
 * message, its state records least of all, can follow the new body), and
 * renames spare/<name> to queue/<id> exactly as a fresh file moves from
 * tmp/. A spare enters the pool only after the directory sync that made its
 * removal from queue/ durable, so a crash can never bring the old name back
 * pointing at the new content; spare/ is emptied by queue_load(), which
 * also covers a rename to spare/ that a crash half-applied. At most
 * QUEUE_SPARES are kept; further removals unlink their file. A reader of a
 * removed message must have closed its queue_body_open() descriptor before
 * asking for the removal (the scheduler removes only after the attempt,
 * and with it the read, finished).
 *
 * The spool log. A message of up to log_max bytes (spool_log_max, 64 KB
 * by default) is kept in memory while it streams in, and its commit appends
 * one record to the newest log file instead of creating, syncing, renaming
 * and directory-syncing a file of its own: the group's records go out in
 * one pwrite and one fdatasync (or the group's syncfs), and the log file's
 * name was made durable once, when it was created. A message that outgrows
 * log_max moves to tmp/ (or a spare) with what it has and goes on as a
 * file. State records and removals of a log message are log records too
 * (a state record, a tombstone), in the same group as everything else, so
 * the order of operations on one message holds across both kinds. A
 * group whose only log records are tombstones writes them at once but
 * leaves their sync to the next group's records, or to QUEUE_LOG_LAZY_MS
 * of quiet: the page cache keeps them across a crash of the process, and a
 * power cut in between can only deliver such a message once more, never
 * lose one. The removal of a log message does not even wake the commit
 * thread: it waits in the FIFO for the next operation that does (at one
 * client, the next message's commit, which then writes and syncs both in
 * one pwrite and one fdatasync), or for QUEUE_REMOVE_WAIT_MS on a timer of
 * the loop, which wakes the thread to write it (synced as above). Waking
 * the thread and then the loop for each removal cost two thread hops per
 * message, as many as the commit itself. Until its tombstone is written
 * the message is live in the log, so a crash of the process then replays
 * it: with the upstream's 250 in its state (queue_note) it is only
 * removed, but a recipient that failed (its bounce committed) is tried
 * again. That window was there before, a removal waiting behind a group's
 * sync; the timer keeps it that short. Between groups the thread lets the
 * log reclaim its oldest files (spoollog_maintain). Files in queue/ are
 * read as ever, so a spool of an earlier version loses nothing.
 *
 * Bodies kept after the commit. A message of the log was in memory until
 * its commit, and the relay usually asks for it a moment later: reading it
 * back would cost a descriptor duplicated and closed, a pread of its
 * record's header and a pread of the body, four system calls a message.
 * So a committed log message's buffer is kept (qop_finish, on the loop)
 * for queue_body_take(), which hands it over once; the relay then reads no
 * file. Only the newest bodies are kept, QUEUE_HOT_MAX bytes of buffers in
 * all (the oldest go first), and a removal drops its message's body. Loop
 * thread only, so no lock. A body that was taken, dropped or never kept is
 * read from the spool as ever: it is the same bytes, the buffer the
 * commit's record was copied from.
 *
 * The duplicate window: a message whose upstream said 250 is marked sent
 * durably only when its state record is synced. A crash in between, or a
 * failure to write the record, means the message is sent again after
 * restart. That window is inherent (Postfix has it too); we keep it as
 * short as one group commit and never trade it for the opposite failure,
 * losing mail. For the commonest crash, the daemon's own death, it is
 * closed further: queue_note() writes the record into the page cache the
 * moment the 250 arrives, where it outlives the process; only a crash of
 * the machine before the group's sync can still lose it. A message of the
 * log gets that record in the newest log file (spoollog_note), written on
 * the calling thread, not the commit thread, and never behind it: the
 * log's write mutex orders the two, so whatever sync follows covers it.
 */
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "clock.h"
#include "envelope.h"
#include "fileio.h"
#include "log.h"
#include "queue.h"
#include "spoollog.h"
#include "xmalloc.h"

#define PREAMBLE_LEN 64
#define PREAMBLE_MAGIC "smarthostd-spool 1 "
#define QUEUE_ID_LEN 16
/*
 * Concurrent fdatasync()s per group in SPOOL_SYNC_FSYNC mode. Each
 * fdatasync ends in a flush of the disk's write cache, and one at a time
 * they cost a flush each (about 3 ms here); issued together, the block
 * layer merges their flushes. Measured on the reference machine, 20 files
 * sync in about 60 ms one after another and in 7 to 15 ms four at a time;
 * more threads do not help.
 */
#define QUEUE_SYNC_THREADS 4
/*
 * Spare files kept open for reuse (see "Spare files" above). Each holds a
 * descriptor; at 20 concurrent clients about 20 to 40 messages are in
 * flight, so this covers a burst with room to spare.
 */
#define QUEUE_SPARES 64
#define SPARE_NAME_MAX 24
/*
 * Operations taken into one group at most. Each commit or update holds its
 * file open from its write until the group's sync, so this bounds the
 * commit thread's descriptors whatever the backlog: a relay that fails
 * defers thousands of messages at once, and one group holding all their
 * files open ran the process out of descriptors. Larger groups gain
 * little: the sync cost per group levels off long before.
 */
#define QUEUE_GROUP_MAX 128
/*
 * Out of descriptors (EMFILE, ENFILE) when opening a queue file off the
 * loop: wait and try again this many times, doubling from 1 ms (about a
 * second in all), before reporting the error; descriptors are freed as
 * sessions end.
 */
#define QUEUE_OPEN_TRIES 11
/* A tombstone waits at most this long for a sync it can share. */
#define QUEUE_LOG_LAZY_MS 20
/* The removal of a log message waits at most this long for an operation
 * that wakes the commit thread (see "The spool log" above). */
#define QUEUE_REMOVE_WAIT_MS 5
/*
 * A group whose disk work took this long makes the disk slow: commits skip
 * the lone path (see "The lone commit" above) for a backoff after it, which
 * starts at QUEUE_INLINE_BACKOFF_MS and doubles, up to
 * QUEUE_INLINE_BACKOFF_MAX_MS, each time a lone commit finds the disk slow
 * again; a fast lone commit resets it. The threshold is above anything the
 * shared disk of the reference machine took under a load average of 10 to
 * 20 (over 2,000 fdatasyncs: 99th percentile 15 ms, slowest 60 to 85 ms)
 * and far below a stall (seconds).
 */
#define QUEUE_INLINE_SLOW_MS 100
#define QUEUE_INLINE_BACKOFF_MS 5000
#define QUEUE_INLINE_BACKOFF_MAX_MS (300 * 1000)
/* After a lone commit the commit thread reclaims log files within this
 * long, instead of being woken for every message. */
#define QUEUE_MAINTAIN_WAIT_MS 100
/* Messages up to this many bytes go to the spool log unless
 * queue_log_max() says otherwise. */
#define QUEUE_LOG_MAX (64 * 1024)
/* Bytes of message buffers kept after their commit for
 * queue_body_take(): at twenty clients the relay takes each within a few
 * messages, so this holds the window many times over. */
#define QUEUE_HOT_MAX (512 * 1024)
/* Sanity limits for the loader: far beyond anything we write. */
#define ENVELOPE_MAX (64 * 1024 * 1024)
#define RECORDS_MAX (256 * 1024 * 1024)

enum qop_type {
	QOP_COMMIT,
	QOP_UPDATE,
	QOP_REMOVE,
	QOP_ABORT,
};

struct queue_txn {
	struct queue *q;
	int fd;
	struct envelope *env;	/* our copy; env->id is the new id */
	off_t body_offset;
	off_t size;		/* body bytes written */
	int error;		/* first write error, 0 if none */
	/* A reused spare: its name in spare/ and its length before we
	 * wrote over it. spare[0] == '\0': a fresh file, tmp/<id>. */
	char spare[SPARE_NAME_MAX];
	off_t old_size;
	/* A message for the log: its body in memory (fd is -1) until it
	 * outgrows the queue's log_max and moves to a file of its own. */
	int inmem;
	unsigned char *mem;
	size_t memcap;
};

/* A committed message's body kept for queue_body_take(). */
struct hot {
	struct hot *next;
	char id[ENVELOPE_ID_MAX];
	unsigned char *data;
	size_t len;
	size_t cap;		/* bytes allocated, what QUEUE_HOT_MAX counts */
};

/* An idle spare file, open for writing at offset 0. */
struct spare {
	struct spare *next;
	int fd;
	off_t size;
	char name[SPARE_NAME_MAX];
};

/* One request to the commit thread, and later its completion. */
struct qop {
	struct qop *next;
	enum qop_type type;
	char id[ENVELOPE_ID_MAX];
	struct queue_txn *txn;	/* COMMIT, ABORT */
	char *record;		/* UPDATE */
	size_t reclen;
	off_t old_size;		/* UPDATE: file size before the record */
	int fd;			/* COMMIT, UPDATE: file being synced */
	int error;
	int renamed;		/* COMMIT: now in queue/ */
	int logged;		/* a record in the spool log, not a file */
	int lazy;		/* queued without waking the thread */
	off_t log_body;		/* logged COMMIT: body offset in the log */
	size_t log_rel;		/* its record's offset in the staged bytes */
	size_t log_envlen;
	queue_commit_cb commit_cb;
	queue_done_cb done_cb;
	void *arg;
};

struct qop_list {
	struct qop *head;
	struct qop **tailp;
};

struct queue {
	struct event_base *base;
	char *spool;
	enum spool_sync sync;
	int spool_fd;		/* also holds the one-writer flock */
	int tmp_fd;
	int queue_fd;
	int corrupt_fd;
	int spare_fd;
	struct spoollog *log;
	size_t log_max;		/* largest message for the log, 0: none */
	unsigned long spare_seq;	/* commit thread only */
	size_t group_max;		/* commit thread only: operations per
					   group, QUEUE_GROUP_MAX or fewer
					   after running out of descriptors */
	struct qop *group_first;	/* commit thread only: the group */

	pthread_t thread;
	int thread_started;
	struct event *ev_done;
	struct event *ev_lazy;	/* loop: wakes the thread for removals
				   queued without waking it */
	struct event *ev_maint;	/* loop: wakes the thread to reclaim log
				   files after lone commits */

	/* SPOOL_SYNC_FSYNC: helpers that fdatasync a group's files in
	 * parallel with the commit thread; see sync_parallel(). */
	pthread_t helpers[QUEUE_SYNC_THREADS - 1];
	unsigned nhelpers;
	pthread_mutex_t sync_mtx;
	pthread_cond_t sync_start;
	pthread_cond_t sync_done;
	struct qop **sync_ops;
	size_t sync_n;
	size_t sync_next;	/* next index to take */
	size_t sync_finished;
	unsigned long sync_round;
	int sync_stop;

	pthread_mutex_t mtx;	/* guards everything below */
	pthread_cond_t cv_work;	/* pending became non-empty, or stopping */
	pthread_cond_t cv_idle;	/* a group finished */
	struct qop_list pending;
	struct qop_list done;
	int busy;		/* a group is being worked on, by the thread
				   or by a lone commit on the loop */
	int stopping;
	int maintain_due;	/* the thread should reclaim log files */
	uint64_t slow_until;	/* ms (CLOCK_MONOTONIC): no lone commits
				   before then, the disk was slow */
	uint64_t backoff;	/* ms: the next slow_until - now */
	unsigned long commits;
	unsigned long sync_groups;
	unsigned long lone_groups;
	struct spare *spares;	/* idle spares, most recent first */
	unsigned nspares;

	/* Loop thread only: bodies kept after their commit, oldest first. */
	struct hot *hot_head;
	struct hot **hot_tailp;
	size_t hot_bytes;
	unsigned long hot_taken;
};

/*
 * Queue ids: 16 uppercase hex digits of a 64-bit number,
 *
 *	42 bits  milliseconds since 2020-01-01 UTC (good for 139 years)
 *	10 bits  the process id, modulo 1024
 *	12 bits  a counter within the millisecond
 *
 * so ids sort by time as text, are unique within a process (a logical clock
 * that never runs backwards, and that borrows the next millisecond when
 * 4096 ids were handed out in one), and differ across a restart within the
 * same millisecond through the pid bits. queue_load() also advances the
 * clock past every id already in the spool, which covers a wall clock that
 * stepped back across a restart. As a last line of defence the commit
 * renames with RENAME_NOREPLACE: a collision fails one commit with EEXIST
 * instead of overwriting another message.
 */
#define ID_EPOCH_MS 1577836800000ULL
#define ID_TIME_BITS 42
#define ID_PID_BITS 10
#define ID_COUNTER_BITS 12

static pthread_mutex_t id_mtx = PTHREAD_MUTEX_INITIALIZER;
static uint64_t id_last_ms;
static unsigned id_counter;
/* The pid, read once per process (a system call per message otherwise:
 * glibc no longer caches it); a fork's child reads its own. */
static pid_t id_pid;
static pthread_once_t id_once = PTHREAD_ONCE_INIT;

static void
id_pid_forget(void)
{
	id_pid = 0;
}

static void
id_pid_init(void)
{
	(void)pthread_atfork(NULL, NULL, id_pid_forget);
}

static void
queue_id_next(char *id, size_t idlen)
{
	struct timespec ts;
	uint64_t ms, v;

	clock_gettime(CLOCK_REALTIME, &ts);
	ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	ms = ms > ID_EPOCH_MS ? ms - ID_EPOCH_MS : 0;

	(void)pthread_once(&id_once, id_pid_init);
	pthread_mutex_lock(&id_mtx);
	if (id_pid == 0)
		id_pid = getpid();
	if (ms > id_last_ms) {
		id_last_ms = ms;
		id_counter = 0;
	} else if (++id_counter == 1U << ID_COUNTER_BITS) {
		id_last_ms++;
		id_counter = 0;
	}
	v = (id_last_ms & ((1ULL << ID_TIME_BITS) - 1))
	    << (ID_PID_BITS + ID_COUNTER_BITS);
	v |= ((uint64_t)id_pid & ((1U << ID_PID_BITS) - 1))
	    << ID_COUNTER_BITS;
	v |= id_counter;
	pthread_mutex_unlock(&id_mtx);
	envelope_id_text(v, id, idlen);
}

time_t
queue_id_time(const char *id)
{
	uint64_t ms;

	ms = envelope_id_number(id) >> (ID_PID_BITS + ID_COUNTER_BITS);
	return (time_t)((ms + ID_EPOCH_MS) / 1000);
}

/* Makes the clock run at least past the time encoded in id. */
static void
queue_id_seen(const char *id)
{
	uint64_t ms;

	ms = envelope_id_number(id) >> (ID_PID_BITS + ID_COUNTER_BITS);
	pthread_mutex_lock(&id_mtx);
	if (ms > id_last_ms) {
		id_last_ms = ms;
		id_counter = (1U << ID_COUNTER_BITS) - 1; /* next is ms + 1 */
	}
	pthread_mutex_unlock(&id_mtx);
}

/* 1 if s is a queue id as we make them; the only names we open. */
static int
queue_id_valid(const char *s)
{
	size_t i;

	for (i = 0; i < QUEUE_ID_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') ||
		    (s[i] >= 'A' && s[i] <= 'F')))
			return 0;
	return s[i] == '\0';
}

static void
qop_list_init(struct qop_list *l)
{
	l->head = NULL;
	l->tailp = &l->head;
}

static void
qop_list_push(struct qop_list *l, struct qop *op)
{
	op->next = NULL;
	*l->tailp = op;
	l->tailp = &op->next;
}

static struct qop *
qop_list_take(struct qop_list *l)
{
	struct qop *head = l->head;

	qop_list_init(l);
	return head;
}

/* Takes up to max operations off the front of l, in order. */
static struct qop *
qop_list_take_max(struct qop_list *l, size_t max)
{
	struct qop *head = l->head, **pp = &l->head;
	size_t n;

	for (n = 0; n < max && *pp != NULL; n++)
		pp = &(*pp)->next;
	if (*pp == NULL)
		return qop_list_take(l);
	l->head = *pp;
	*pp = NULL;
	return head;
}

/*
 * openat() that waits for a descriptor when the process or the system has
 * none left, for about a second. Only for the queue's own threads and
 * callers off the loop.
 */
static int
openat_wait(int dirfd, const char *name, int flags)
{
	struct timespec ts;
	long ms = 1;
	int fd, i;

	for (i = 0;; i++) {
		if ((fd = openat(dirfd, name, flags)) != -1 ||
		    (errno != EMFILE && errno != ENFILE) ||
		    i + 1 >= QUEUE_OPEN_TRIES)
			return fd;
		ts.tv_sec = ms / 1000;
		ts.tv_nsec = (ms % 1000) * 1000000;
		nanosleep(&ts, NULL);
		ms *= 2;
	}
}

static void
qop_free(struct qop *op)
{
	if (op->txn != NULL) {
		envelope_free(op->txn->env);
		free(op->txn->mem);
		free(op->txn);
	}
	free(op->record);
	free(op);
}

static void
preamble_format(char *buf, off_t body_offset, off_t body_size)
{
	int n;

	n = snprintf(buf, PREAMBLE_LEN, "%s%016jx %016jx", PREAMBLE_MAGIC,
	    (uintmax_t)body_offset, (uintmax_t)body_size);
	memset(buf + n, ' ', PREAMBLE_LEN - (size_t)n);
	buf[PREAMBLE_LEN - 1] = '\n';
}

static int
hex16_parse(const char *p, uint64_t *out)
{
	uint64_t v = 0;
	int i, d;

	for (i = 0; i < 16; i++) {
		if (p[i] >= '0' && p[i] <= '9')
			d = p[i] - '0';
		else if (p[i] >= 'a' && p[i] <= 'f')
			d = p[i] - 'a' + 10;
		else
			return -1;
		v = v << 4 | (uint64_t)d;
	}
	*out = v;
	return 0;
}

static int
preamble_parse(const char *buf, uint64_t *body_offset, uint64_t *body_size)
{
	size_t m = strlen(PREAMBLE_MAGIC), i;

	if (memcmp(buf, PREAMBLE_MAGIC, m) != 0 ||
	    hex16_parse(buf + m, body_offset) == -1 || buf[m + 16] != ' ' ||
	    hex16_parse(buf + m + 17, body_size) == -1)
		return -1;
	for (i = m + 33; i < PREAMBLE_LEN - 1; i++)
		if (buf[i] != ' ')
			return -1;
	return buf[PREAMBLE_LEN - 1] == '\n' ? 0 : -1;
}

/*
 * Takes a failed state record back off the end of its file: a partial one
 * would glue the next record to garbage (and lose it with it), and one that
 * did not sync must not count later, since its caller was told it failed.
 */
static void
update_undo(struct qop *op)
{
	if (ftruncate(op->fd, op->old_size) == -1)
		log_warn("%s: truncate after failed update", op->id);
}

/*
 * The commit thread's work on one group, in four phases so that every
 * expensive step is done once for the whole group:
 *  1. finish each file: the preamble of commits, the record of updates,
 *     and start write-back of everything at once;
 *  2. make the data durable: fdatasync each file, or one syncfs;
 *  3. publish: rename commits into queue/, unlink removals and aborts;
 *  4. fsync the queue directory once if any name changed there.
 * A failed message is unlinked from tmp/ (or, if phase 4 fails, from
 * queue/) before its callback hears of it, so an error never leaves
 * anything behind that could be taken for a message.
 */
/* Stages a message kept in memory as a record of the spool log. */
static void
group_log_commit(struct queue *q, struct qop *op)
{
	struct queue_txn *txn = op->txn;
	char *text;
	size_t len;

	text = envelope_encode(txn->env, &len);
	op->log_rel = spoollog_add(q->log, LOGREC_MESSAGE, op->id, text, len,
	    txn->mem, (size_t)txn->size);
	op->log_envlen = len;
	op->logged = 1;
	free(text);
}

/* Phase 1 of a commit: its preamble (a reused spare cut to length), or
 * its record in the log. Returns 1 when it wrote a file of its own. */
static int
group_write_commit(struct queue *q, struct qop *op)
{
	struct queue_txn *txn = op->txn;
	char pre[PREAMBLE_LEN];
	off_t end;

	op->fd = txn->fd;
	txn->fd = -1;
	if ((op->error = txn->error) != 0)
		return 0;
	if (txn->inmem) {
		group_log_commit(q, op);
		return 0;
	}
	preamble_format(pre, txn->body_offset, txn->size);
	if (fileio_pwrite_all(op->fd, pre, sizeof(pre), 0) == -1) {
		op->error = errno;
		log_warn("%s: queue file preamble", op->id);
		return 0;
	}
	end = txn->body_offset + txn->size;
	/*
	 * A reused spare may be longer than this message: cut the old tail
	 * off before the sync, so the size the loader sees (and fdatasync
	 * persists, as it does any size change) is this message's, with
	 * nothing of the old one (its state records least of all) after
	 * the new body.
	 */
	if (txn->old_size > end && ftruncate(op->fd, end) == -1) {
		op->error = errno;
		log_warn("%s: truncate reused spool file", op->id);
		return 0;
	}
	return 1;
}

/* Phase 1 of an update: its state record appended to the message's file,
 * or to the log. Returns 1 when it wrote a file of its own. */
static int
group_write_update(struct queue *q, struct qop *group, struct qop *op)
{
	struct stat st;
	struct qop *p;

	/*
	 * Removals only take effect in phase 3: an update asked for after a
	 * removal of the same message in this group must fail as it would
	 * have in a later group.
	 */
	for (p = group; p != op; p = p->next) {
		if (p->type == QOP_REMOVE && strcmp(p->id, op->id) == 0) {
			op->error = ENOENT;
			return 0;
		}
	}
	if (spoollog_has(q->log, op->id)) {
		spoollog_add(q->log, LOGREC_STATE, op->id, op->record,
		    op->reclen, NULL, 0);
		op->logged = 1;
		return 0;
	}
	/*
	 * Out of descriptors with files of this group open: waiting would
	 * not help (they close only after the sync), so the caller ends the
	 * group here and retries the rest in the next one. The first of a
	 * group waits for others to close theirs.
	 */
	if (op == group)
		op->fd = openat_wait(q->queue_fd, op->id,
		    O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
	else
		op->fd = openat(q->queue_fd, op->id,
		    O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
	if (op->fd == -1 && op != group &&
	    (errno == EMFILE || errno == ENFILE)) {
		op->error = errno;
		return 0;
	}
	if (op->fd == -1 || fstat(op->fd, &st) == -1) {
		op->error = errno;
		if (errno != ENOENT)
			log_warn("%s: open for update", op->id);
		return 0;
	}
	op->old_size = st.st_size;
	if (fileio_write_all(op->fd, op->record, op->reclen) == -1) {
		op->error = errno;
		log_warn("%s: state record", op->id);
		/*
		 * Cut off a partial record, so the next one starts on a line
		 * of its own instead of being glued to garbage and lost with
		 * it.
		 */
		update_undo(op);
		return 0;
	}
	return 1;
}

/* Phase 1: what op writes before the group's sync. */
static void
group_write(struct queue *q, struct qop *group, struct qop *op)
{
	int wrote = 0;

	switch (op->type) {
	case QOP_COMMIT:
		wrote = group_write_commit(q, op);
		break;
	case QOP_UPDATE:
		wrote = group_write_update(q, group, op);
		break;
	case QOP_REMOVE:
		/* A tombstone buries a message of the log. */
		if (spoollog_has(q->log, op->id)) {
			spoollog_add(q->log, LOGREC_DONE, op->id, NULL, 0, NULL,
			    0);
			op->logged = 1;
		}
		break;
	case QOP_ABORT:
		break;
	}
	/*
	 * Start write-back now, for the whole group, so that the
	 * fdatasync()s below mostly wait for I/O already in flight instead
	 * of issuing it one file at a time. Errors surface in fdatasync.
	 */
	if (wrote && q->sync == SPOOL_SYNC_FSYNC)
		(void)sync_file_range(op->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

static void
sync_one(struct qop *op)
{
	if (fdatasync(op->fd) == 0)
		return;
	op->error = errno;
	log_warn("%s: fdatasync", op->id);
	if (op->type == QOP_UPDATE)
		update_undo(op);
}

/* Takes and syncs files of the current round until none is left. Called
 * and returns with sync_mtx held. */
static void
sync_take(struct queue *q)
{
	struct qop *op;

	while (q->sync_next < q->sync_n) {
		op = q->sync_ops[q->sync_next++];
		pthread_mutex_unlock(&q->sync_mtx);
		sync_one(op);
		pthread_mutex_lock(&q->sync_mtx);
		if (++q->sync_finished == q->sync_n)
			pthread_cond_signal(&q->sync_done);
	}
}

static void *
sync_helper(void *arg)
{
	struct queue *q = arg;
	unsigned long seen = 0;

	pthread_mutex_lock(&q->sync_mtx);
	for (;;) {
		while (q->sync_round == seen && !q->sync_stop)
			pthread_cond_wait(&q->sync_start, &q->sync_mtx);
		if (q->sync_stop)
			break;
		seen = q->sync_round;
		sync_take(q);
	}
	pthread_mutex_unlock(&q->sync_mtx);
	return NULL;
}

/*
 * fdatasync()s every file of the group that is still healthy, up to
 * QUEUE_SYNC_THREADS at a time: the commit thread takes files from the same
 * list as the helpers and returns when all are synced.
 */
static void
sync_parallel(struct queue *q, struct qop *group)
{
	struct qop *op, **ops = NULL;
	size_t n = 0;

	for (op = group; op != NULL; op = op->next) {
		if (op->fd == -1 || op->error != 0)
			continue;
		ops = xreallocarray(ops, n + 1, sizeof(*ops));
		ops[n++] = op;
	}
	if (n <= 1 || q->nhelpers == 0) {
		while (n > 0)
			sync_one(ops[--n]);
		free(ops);
		return;
	}
	pthread_mutex_lock(&q->sync_mtx);
	q->sync_ops = ops;
	q->sync_n = n;
	q->sync_next = q->sync_finished = 0;
	q->sync_round++;
	pthread_cond_broadcast(&q->sync_start);
	sync_take(q);
	while (q->sync_finished < q->sync_n)
		pthread_cond_wait(&q->sync_done, &q->sync_mtx);
	q->sync_ops = NULL;
	q->sync_n = 0;
	pthread_mutex_unlock(&q->sync_mtx);
	free(ops);
}

static int
rename_noreplace(int fromfd, const char *from, int tofd, const char *to)
{
	if (renameat2(fromfd, from, tofd, to, RENAME_NOREPLACE) == 0)
		return 0;
	/* Filesystems without RENAME_NOREPLACE: the id scheme must do. */
	if (errno == EINVAL || errno == ENOSYS)
		return renameat(fromfd, from, tofd, to);
	return -1;
}

/* Where a txn's file lives until the commit renames it into queue/. */
static int
txn_dirfd(const struct queue_txn *txn)
{
	return txn->spare[0] != '\0' ? txn->q->spare_fd : txn->q->tmp_fd;
}

static const char *
txn_name(const struct queue_txn *txn)
{
	return txn->spare[0] != '\0' ? txn->spare : txn->env->id;
}

static void
txn_unlink(struct queue_txn *txn)
{
	if (unlinkat(txn_dirfd(txn), txn_name(txn), 0) == -1 &&
	    errno != ENOENT)
		log_warn("%s: unlink %s/%s", txn->env->id,
		    txn->spare[0] != '\0' ? "spare" : "tmp", txn_name(txn));
}

static void
spare_discard(struct queue *q, struct spare *sp)
{
	close(sp->fd);
	if (unlinkat(q->spare_fd, sp->name, 0) == -1 && errno != ENOENT)
		log_warn("spare/%s: unlink", sp->name);
	free(sp);
}

/*
 * Removes queue/<id> by moving it to spare/ for reuse. Returns 0 with the
 * spare in *out, or -1 with errno; *out is NULL when the pool is full or
 * the move failed for a reason other than ENOENT, and the caller unlinks.
 */
static int
spare_take_removed(struct queue *q, const char *id, unsigned pending,
    struct spare **out)
{
	struct spare *sp;
	struct stat st;
	unsigned n;
	int i;

	*out = NULL;
	pthread_mutex_lock(&q->mtx);
	n = q->nspares;
	pthread_mutex_unlock(&q->mtx);
	if (n + pending >= QUEUE_SPARES)
		return 0;
	sp = xcalloc(1, sizeof(*sp));
	if ((sp->fd = openat(q->queue_fd, id,
	    O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)) == -1) {
		i = errno;
		free(sp);
		errno = i;
		return errno == ENOENT ? -1 : 0;
	}
	if (fstat(sp->fd, &st) == -1 || !S_ISREG(st.st_mode))
		goto fail;
	sp->size = st.st_size;
	for (i = 0; i < 10; i++) {
		snprintf(sp->name, sizeof(sp->name), "s%lu", q->spare_seq++);
		if (rename_noreplace(q->queue_fd, id, q->spare_fd, sp->name) ==
		    0) {
			*out = sp;
			return 0;
		}
		if (errno != EEXIST)
			break;
	}
	if (errno == ENOENT) {
		close(sp->fd);
		free(sp);
		errno = ENOENT;
		return -1;
	}
 fail:
	close(sp->fd);
	free(sp);
	return 0;
}

/*
 * Ends the group after op, whose successor could not get a descriptor (and
 * wrote nothing):
 * the rest goes back to the front of the pending list, untouched and in
 * order, for the next group, which is made smaller. Groups grow back as
 * they succeed.
 */
static void
group_split(struct queue *q, struct qop *op)
{
	struct qop *rest = op->next, *last;
	size_t n = 0;

	op->next = NULL;
	rest->error = 0;
	rest->fd = -1;
	for (last = rest; last->next != NULL; last = last->next)
		;
	pthread_mutex_lock(&q->mtx);
	last->next = q->pending.head;
	if (q->pending.head == NULL)
		q->pending.tailp = &last->next;
	q->pending.head = rest;
	pthread_mutex_unlock(&q->mtx);
	for (op = q->group_first; op != NULL; op = op->next)
		n++;
	q->group_max = n > 1 ? n / 2 : 1;
	log_warnx("%s: out of descriptors; syncing %zu queue file%s at a "
	    "time", q->spool, q->group_max, q->group_max == 1 ? "" : "s");
}

/*
 * After the log's write and sync: the index learns the group's records, or
 * every operation that went to the log fails with the error.
 */
static void
group_log_done(struct queue *q, struct qop *group, int error, off_t base)
{
	struct qop *op;

	if (error == 0)
		spoollog_commit(q->log);
	else
		spoollog_discard(q->log);
	for (op = group; op != NULL; op = op->next) {
		if (!op->logged)
			continue;
		if (error != 0)
			op->error = error;
		else if (op->type == QOP_COMMIT)
			op->log_body = base + (off_t)(op->log_rel +
			    LOGREC_HEADER_LEN + op->log_envlen);
	}
}

/*
 * Phase 2: the log's records of the whole group, one write and one sync,
 * and the sync of the group's files. Only tombstones: written now, synced
 * with the next group's records or after QUEUE_LOG_LAZY_MS of quiet (see
 * "The spool log" above).
 */
static void
group_sync(struct queue *q, struct qop *group)
{
	struct qop *op;
	int error, logged, lazy = 1, log_error = 0;
	off_t log_base = 0;

	for (op = group; op != NULL; op = op->next)
		if (op->logged && op->type != QOP_REMOVE)
			lazy = 0;
	if ((logged = spoollog_pending(q->log)) &&
	    spoollog_flush(q->log, q->sync == SPOOL_SYNC_FSYNC && !lazy,
	    &log_base) == -1)
		log_error = errno != 0 ? errno : EIO;
	switch (q->sync) {
	case SPOOL_SYNC_FSYNC:
		sync_parallel(q, group);
		break;
	case SPOOL_SYNC_SYNCFS:
		/* One sync for every file of the group: the reason to give
		 * the spool a filesystem of its own. */
		for (op = group; op != NULL; op = op->next)
			if (op->fd != -1 && op->error == 0)
				break;
		if (op == NULL && (!logged || lazy || log_error != 0))
			break;
		if (syncfs(q->spool_fd) == 0) {
			spoollog_synced(q->log);
			break;
		}
		error = errno;
		log_warn("%s: syncfs", q->spool);
		if (logged && log_error == 0)
			log_error = error;
		for (op = group; op != NULL; op = op->next) {
			if (op->fd == -1 || op->error != 0)
				continue;
			op->error = error;
			if (op->type == QOP_UPDATE)
				update_undo(op);
		}
		break;
	}
	if (logged)
		group_log_done(q, group, log_error, log_base);
}

/*
 * Phase 3: closes the group's files and gives the messages of files their
 * names: commits renamed into queue/, aborts unlinked, removals moved to
 * spare/ (returned in *newspares, not yet in the pool) or unlinked.
 * Returns 1 when queue/ changed and needs its sync.
 */
static int
group_place(struct queue *q, struct qop *group, struct spare **newspares)
{
	struct qop *op;
	struct spare *sp;
	unsigned nnew = 0;
	int dirty = 0;

	for (op = group; op != NULL; op = op->next) {
		if (op->fd != -1) {
			close(op->fd);
			op->fd = -1;
		}
		if (op->logged)
			continue;
		switch (op->type) {
		case QOP_COMMIT:
			if (op->error == 0) {
				if (rename_noreplace(txn_dirfd(op->txn),
				    txn_name(op->txn), q->queue_fd,
				    op->id) == 0) {
					op->renamed = 1;
					dirty = 1;
					break;
				}
				op->error = errno;
				log_warn("%s: rename into queue", op->id);
			}
			txn_unlink(op->txn);
			break;
		case QOP_ABORT:
			txn_unlink(op->txn);
			break;
		case QOP_REMOVE:
			if (spare_take_removed(q, op->id, nnew, &sp) == -1) {
				op->error = errno;
				break;
			}
			if (sp != NULL) {
				sp->next = *newspares;
				*newspares = sp;
				nnew++;
				dirty = 1;
				break;
			}
			if (unlinkat(q->queue_fd, op->id, 0) == -1) {
				op->error = errno;
				if (errno != ENOENT)
					log_warn("%s: unlink", op->id);
			} else
				dirty = 1;
			break;
		case QOP_UPDATE:
			break;
		}
	}
	return dirty;
}

/* Phase 4: the sync of queue/ (when dirty) that makes phase 3 durable;
 * then the new spares join the pool. */
static void
group_dir_sync(struct queue *q, struct qop *group, struct spare *newspares,
    int dirty)
{
	struct qop *op;
	struct spare *sp;
	int error;

	if (dirty && fsync(q->queue_fd) == -1) {
		error = errno;
		log_warn("%s/queue: fsync", q->spool);
		/*
		 * The renames may or may not survive a crash. Take the
		 * messages back out and report the error: the clients retry.
		 * Should the renames nevertheless be on disk after a crash,
		 * the messages are delivered once more than answered for,
		 * which is the side to err on.
		 */
		for (op = group; op != NULL; op = op->next) {
			if (op->type == QOP_COMMIT && op->renamed) {
				if (unlinkat(q->queue_fd, op->id, 0) == -1)
					log_warn("%s: unlink", op->id);
				op->renamed = 0;
				op->error = error;
			} else if (op->type == QOP_REMOVE && op->error == 0)
				op->error = error;
		}
		/* Their old names might come back: never reuse them. */
		while ((sp = newspares) != NULL) {
			newspares = sp->next;
			spare_discard(q, sp);
		}
	}
	if (newspares != NULL) {
		pthread_mutex_lock(&q->mtx);
		while ((sp = newspares) != NULL) {
			newspares = sp->next;
			sp->next = q->spares;
			q->spares = sp;
			q->nspares++;
		}
		pthread_mutex_unlock(&q->mtx);
	}
}

/* Runs a group on the calling thread, which owns it (q->busy). Returns the
 * milliseconds its disk work took, phases 2 to 4. */
static uint64_t
group_run(struct queue *q, struct qop *group, int *ncommitted)
{
	struct qop *op, *prev;
	struct spare *newspares = NULL;
	uint64_t t0;
	int dirty;

	*ncommitted = 0;
	q->group_first = group;
	for (prev = NULL, op = group; op != NULL; prev = op, op = op->next) {
		group_write(q, group, op);
		if (prev != NULL && op->fd == -1 && (op->error == EMFILE ||
		    op->error == ENFILE)) {
			group_split(q, prev);
			break;
		}
	}
	t0 = clock_mono_ms();
	group_sync(q, group);
	dirty = group_place(q, group, &newspares);
	group_dir_sync(q, group, newspares, dirty);
	for (op = group; op != NULL; op = op->next)
		if (op->type == QOP_COMMIT && (op->renamed ||
		    (op->logged && op->error == 0)))
			(*ncommitted)++;
	return clock_mono_ms() - t0;
}

/*
 * Called with mtx held once a group ran (lone: on the loop): counts it,
 * notes a slow disk (see "The lone commit" above) and hands the group's
 * completions to the loop.
 */
static void
group_finish(struct queue *q, struct qop *group, int n, uint64_t ms,
    int lone)
{
	uint64_t now;
	int wake;

	if (n > 0) {
		q->commits += (unsigned long)n;
		q->sync_groups++;
	}
	if (ms >= QUEUE_INLINE_SLOW_MS) {
		now = clock_mono_ms();
		if (q->slow_until <= now)
			log_info("%s: a sync took %ju ms; commits stay off "
			    "the loop for %ju s", q->spool, (uintmax_t)ms,
			    (uintmax_t)q->backoff / 1000);
		q->slow_until = now + q->backoff;
		/* Doubled but clamped: 160 s doubled is over the cap. */
		if (lone)
			q->backoff = q->backoff > QUEUE_INLINE_BACKOFF_MAX_MS / 2 ?
			    QUEUE_INLINE_BACKOFF_MAX_MS : q->backoff * 2;
	} else if (lone)
		q->backoff = QUEUE_INLINE_BACKOFF_MS;
	wake = q->done.head == NULL;
	*q->done.tailp = group;
	while (*q->done.tailp != NULL)
		q->done.tailp = &(*q->done.tailp)->next;
	if (wake)
		event_active(q->ev_done, EV_READ, 0);
}

/*
 * Waits with mtx held until there is work for the thread: a group to take,
 * log files to reclaim, or the end. Writes the log's lazy tombstones to
 * disk after QUEUE_LOG_LAZY_MS of quiet. Never while a lone commit owns
 * the log (busy): the thread takes nothing then.
 */
static void
queue_thread_wait(struct queue *q)
{
	struct timespec ts;

	while (!q->stopping && (q->busy || (q->pending.head == NULL &&
	    !q->maintain_due))) {
		if (q->busy || !spoollog_unsynced(q->log)) {
			pthread_cond_wait(&q->cv_work, &q->mtx);
			continue;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += QUEUE_LOG_LAZY_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		if (pthread_cond_timedwait(&q->cv_work, &q->mtx, &ts) ==
		    ETIMEDOUT && q->pending.head == NULL && !q->busy) {
			q->busy = 1;
			pthread_mutex_unlock(&q->mtx);
			(void)spoollog_sync(q->log);
			pthread_mutex_lock(&q->mtx);
			q->busy = 0;
			pthread_cond_broadcast(&q->cv_idle);
		}
	}
}

/* Reclaims log files (spoollog_maintain) with mtx held on entry and
 * return, owning the log meanwhile. */
static void
queue_thread_maintain(struct queue *q)
{
	q->maintain_due = 0;
	q->busy = 1;
	pthread_mutex_unlock(&q->mtx);
	spoollog_maintain(q->log);
	pthread_mutex_lock(&q->mtx);
	q->busy = 0;
	pthread_cond_broadcast(&q->cv_idle);
}

static void *
queue_thread(void *arg)
{
	struct queue *q = arg;
	struct qop *group;
	uint64_t ms;
	size_t max;
	int n;

	pthread_mutex_lock(&q->mtx);
	for (;;) {
		queue_thread_wait(q);
		if (q->pending.head == NULL && q->stopping) {
			/* Nothing left to do. */
			pthread_mutex_unlock(&q->mtx);
			(void)spoollog_sync(q->log);
			pthread_mutex_lock(&q->mtx);
			break;
		}
		if (q->pending.head == NULL) {
			queue_thread_maintain(q);
			continue;
		}
		group = qop_list_take_max(&q->pending, q->group_max);
		q->busy = 1;
		pthread_mutex_unlock(&q->mtx);

		max = q->group_max;
		ms = group_run(q, group, &n);
		if (q->group_max == max && max < QUEUE_GROUP_MAX)
			q->group_max = max * 2 < QUEUE_GROUP_MAX ? max * 2 :
			    QUEUE_GROUP_MAX;

		pthread_mutex_lock(&q->mtx);
		group_finish(q, group, n, ms, 0);
		/* Reclaiming the log waits until the group's callbacks are
		 * on their way, and holds up only the next group. */
		queue_thread_maintain(q);
	}
	pthread_mutex_unlock(&q->mtx);
	return NULL;
}

/* Unlinks and returns the kept body of id, or NULL. */
static struct hot *
hot_unlink(struct queue *q, const char *id)
{
	struct hot **pp, *h;

	for (pp = &q->hot_head; (h = *pp) != NULL; pp = &h->next) {
		if (strcmp(h->id, id) != 0)
			continue;
		*pp = h->next;
		if (q->hot_tailp == &h->next)
			q->hot_tailp = pp;
		q->hot_bytes -= h->cap;
		return h;
	}
	return NULL;
}

static void
hot_free(struct hot *h)
{
	if (h != NULL) {
		free(h->data);
		free(h);
	}
}

/* Keeps the body of a message just committed to the log, taking txn's
 * buffer, when it fits (see "Bodies kept after the commit" above). */
static void
hot_keep(struct queue *q, struct queue_txn *txn, const char *id)
{
	struct hot *h;

	if (txn->mem == NULL || txn->memcap > QUEUE_HOT_MAX)
		return;
	while (q->hot_head != NULL && q->hot_bytes + txn->memcap >
	    QUEUE_HOT_MAX)
		hot_free(hot_unlink(q, q->hot_head->id));
	h = xcalloc(1, sizeof(*h));
	snprintf(h->id, sizeof(h->id), "%s", id);
	h->data = txn->mem;
	h->len = (size_t)txn->size;
	h->cap = txn->memcap;
	txn->mem = NULL;
	txn->memcap = 0;
	*q->hot_tailp = h;
	q->hot_tailp = &h->next;
	q->hot_bytes += h->cap;
}

/* Runs the callback of a finished operation and frees it. */
static void
qop_finish(struct qop *op)
{
	struct envelope *env;

	switch (op->type) {
	case QOP_COMMIT:
		env = NULL;
		if (op->error == 0) {
			env = op->txn->env;
			op->txn->env = NULL;
			env->body_offset = op->logged ? op->log_body :
			    op->txn->body_offset;
			env->body_size = op->txn->size;
			log_debug("%s: committed, size=%jd", op->id,
			    (intmax_t)env->body_size);
			if (op->logged)
				hot_keep(op->txn->q, op->txn, op->id);
		}
		if (op->commit_cb != NULL)
			op->commit_cb(op->error, env, op->arg);
		else
			envelope_free(env);
		break;
	case QOP_UPDATE:
	case QOP_REMOVE:
		if (op->done_cb != NULL)
			op->done_cb(op->error, op->arg);
		break;
	case QOP_ABORT:
		break;
	}
	qop_free(op);
}

/*
 * Runs the callbacks of finished operations on the calling thread: the
 * commits' first, each kind in its order. A commit's callback owes a
 * client its 250; the removals synced in the same group (at one client,
 * the tombstone of the message relayed before, which waited for this
 * commit's sync) only log and free, and need not run before it.
 */
static void
queue_run_done(struct queue *q)
{
	struct qop *op, *next, *rest = NULL, **tail = &rest;

	pthread_mutex_lock(&q->mtx);
	op = qop_list_take(&q->done);
	pthread_mutex_unlock(&q->mtx);
	for (; op != NULL; op = next) {
		next = op->next;
		if (op->type != QOP_COMMIT) {
			op->next = NULL;
			*tail = op;
			tail = &op->next;
			continue;
		}
		qop_finish(op);
	}
	for (op = rest; op != NULL; op = next) {
		next = op->next;
		qop_finish(op);
	}
}

static void
queue_done_ev(evutil_socket_t fd, short events, void *arg)
{
	queue_run_done(arg);
}

/* Hands op to the commit thread; wake 0 leaves it for the next operation
 * that wakes the thread, or for the loop's timer (ev_lazy). */
static void
queue_submit_wake(struct queue *q, struct qop *op, int wake)
{
	op->fd = -1;
	op->lazy = !wake;
	pthread_mutex_lock(&q->mtx);
	if (q->stopping)
		fatalx("%s: queue is closed", __func__);
	qop_list_push(&q->pending, op);
	if (wake)
		pthread_cond_signal(&q->cv_work);
	pthread_mutex_unlock(&q->mtx);
}

static void
queue_submit(struct queue *q, struct qop *op)
{
	queue_submit_wake(q, op, 1);
}

/* The loop's timer: removals queued without waking the thread have waited
 * long enough. */
static void
queue_lazy_ev(evutil_socket_t fd, short events, void *arg)
{
	struct queue *q = arg;

	pthread_mutex_lock(&q->mtx);
	if (q->pending.head != NULL)
		pthread_cond_signal(&q->cv_work);
	pthread_mutex_unlock(&q->mtx);
}

/* The loop's timer after lone commits: the thread reclaims log files. */
static void
queue_maint_ev(evutil_socket_t fd, short events, void *arg)
{
	struct queue *q = arg;

	pthread_mutex_lock(&q->mtx);
	q->maintain_due = 1;
	pthread_cond_signal(&q->cv_work);
	pthread_mutex_unlock(&q->mtx);
}

/* Closes the idle spares; their files stay in spare/ for queue_load(). */
static void
spares_free(struct queue *q)
{
	struct spare *sp;

	while ((sp = q->spares) != NULL) {
		q->spares = sp->next;
		close(sp->fd);
		free(sp);
	}
	q->nspares = 0;
}

static int
open_subdir(int dirfd, const char *name, const char *spool, char *err,
    size_t errlen)
{
	int fd;

	if (mkdirat(dirfd, name, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "%s/%s: %s", spool, name,
		    strerror(errno));
		return -1;
	}
	if ((fd = openat(dirfd, name,
	    O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		snprintf(err, errlen, "%s/%s: %s", spool, name,
		    strerror(errno));
		return -1;
	}
	return fd;
}

struct queue *
queue_open(struct event_base *base, const char *spool, enum spool_sync sync,
    size_t log_file_size, char *err, size_t errlen)
{
	struct queue *q;
	int error;

	q = xcalloc(1, sizeof(*q));
	q->base = base;
	q->spool = xstrdup(spool);
	q->sync = sync;
	q->spool_fd = q->tmp_fd = q->queue_fd = q->corrupt_fd = -1;
	q->spare_fd = -1;
	qop_list_init(&q->pending);
	qop_list_init(&q->done);
	pthread_mutex_init(&q->mtx, NULL);
	pthread_cond_init(&q->cv_work, NULL);
	pthread_cond_init(&q->cv_idle, NULL);
	pthread_mutex_init(&q->sync_mtx, NULL);
	pthread_cond_init(&q->sync_start, NULL);
	pthread_cond_init(&q->sync_done, NULL);

	if (mkdir(spool, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "%s: %s", spool, strerror(errno));
		goto fail;
	}
	if ((q->spool_fd = open(spool, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) ==
	    -1) {
		snprintf(err, errlen, "%s: %s", spool, strerror(errno));
		goto fail;
	}
	/* One writer: a second daemon on the same spool would hand out
	 * its own ids and remove our files under us. */
	if (flock(q->spool_fd, LOCK_EX | LOCK_NB) == -1) {
		snprintf(err, errlen, "%s: %s", spool, errno == EWOULDBLOCK ?
		    "in use by another process" : strerror(errno));
		goto fail;
	}
	if ((q->tmp_fd = open_subdir(q->spool_fd, "tmp", spool, err,
	    errlen)) == -1 ||
	    (q->queue_fd = open_subdir(q->spool_fd, "queue", spool, err,
	    errlen)) == -1 ||
	    (q->corrupt_fd = open_subdir(q->spool_fd, "corrupt", spool, err,
	    errlen)) == -1 ||
	    (q->spare_fd = open_subdir(q->spool_fd, "spare", spool, err,
	    errlen)) == -1 ||
	    (q->log = spoollog_open(q->spool_fd, spool, err, errlen)) ==
	    NULL)
		goto fail;
	if (log_file_size != 0)
		spoollog_file_size(q->log, log_file_size);
	/* Replayed now, before anything can append to the log. */
	spoollog_recover(q->log);
	q->log_max = QUEUE_LOG_MAX;
	/* Spare names only need to be new within spare/; starting from the
	 * clock keeps clear of any a previous run left there. */
	q->spare_seq = (unsigned long)time(NULL) << 16;
	q->hot_tailp = &q->hot_head;
	q->group_max = QUEUE_GROUP_MAX;
	q->backoff = QUEUE_INLINE_BACKOFF_MS;
	if ((q->ev_done = event_new(base, -1, 0, queue_done_ev, q)) == NULL ||
	    (q->ev_lazy = evtimer_new(base, queue_lazy_ev, q)) == NULL ||
	    (q->ev_maint = evtimer_new(base, queue_maint_ev, q)) == NULL) {
		snprintf(err, errlen, "event_new failed");
		goto fail;
	}
	if ((error = pthread_create(&q->thread, NULL, queue_thread, q)) != 0) {
		snprintf(err, errlen, "pthread_create: %s", strerror(error));
		goto fail;
	}
	q->thread_started = 1;
	if (sync == SPOOL_SYNC_FSYNC) {
		while (q->nhelpers < QUEUE_SYNC_THREADS - 1) {
			if ((error = pthread_create(&q->helpers[q->nhelpers],
			    NULL, sync_helper, q)) != 0) {
				snprintf(err, errlen, "pthread_create: %s",
				    strerror(error));
				goto fail;
			}
			q->nhelpers++;
		}
	}
	return q;

 fail:
	queue_close(q);
	return NULL;
}

void
queue_close(struct queue *q)
{
	struct spoollog_stats lst;
	int idle;

	if (q == NULL)
		return;
	if (q->thread_started) {
		/*
		 * Drain like worker_free(): a callback run here may ask for
		 * more (an update after a commit), which must still happen.
		 */
		for (;;) {
			pthread_mutex_lock(&q->mtx);
			/* Removals may wait for a wake-up (queue_remove). */
			if (q->pending.head != NULL)
				pthread_cond_signal(&q->cv_work);
			while (q->pending.head != NULL || q->busy)
				pthread_cond_wait(&q->cv_idle, &q->mtx);
			idle = q->done.head == NULL;
			if (idle) {
				q->stopping = 1;
				pthread_cond_signal(&q->cv_work);
			}
			pthread_mutex_unlock(&q->mtx);
			if (idle)
				break;
			queue_run_done(q);
		}
		pthread_join(q->thread, NULL);
	}
	if (q->nhelpers > 0) {
		pthread_mutex_lock(&q->sync_mtx);
		q->sync_stop = 1;
		pthread_cond_broadcast(&q->sync_start);
		pthread_mutex_unlock(&q->sync_mtx);
		while (q->nhelpers > 0)
			pthread_join(q->helpers[--q->nhelpers], NULL);
	}
	spares_free(q);
	while (q->hot_head != NULL)
		hot_free(hot_unlink(q, q->hot_head->id));
	if (q->log != NULL) {
		/* What compaction cost this run, for the backlog benchmark
		 * and the administrator: a message copied is written twice,
		 * and so is a byte of zeros written ahead in a fresh file. */
		spoollog_stats(q->log, &lst);
		log_info("spool log: %lu messages copied forward since start, "
		    "%zu files left, %lu files reused, %zu kept for reuse, "
		    "%" PRIu64 " bytes of zeros written ahead", lst.copied,
		    lst.files, lst.recycled, lst.spares, lst.zeroed);
	}
	spoollog_free(q->log);
	if (q->ev_done != NULL)
		event_free(q->ev_done);
	if (q->ev_lazy != NULL)
		event_free(q->ev_lazy);
	if (q->ev_maint != NULL)
		event_free(q->ev_maint);
	if (q->spare_fd != -1)
		close(q->spare_fd);
	if (q->corrupt_fd != -1)
		close(q->corrupt_fd);
	if (q->queue_fd != -1)
		close(q->queue_fd);
	if (q->tmp_fd != -1)
		close(q->tmp_fd);
	if (q->spool_fd != -1)
		close(q->spool_fd);	/* releases the flock */
	pthread_cond_destroy(&q->sync_done);
	pthread_cond_destroy(&q->sync_start);
	pthread_mutex_destroy(&q->sync_mtx);
	pthread_cond_destroy(&q->cv_idle);
	pthread_cond_destroy(&q->cv_work);
	pthread_mutex_destroy(&q->mtx);
	free(q->spool);
	free(q);
}

/* Copies name for a log line with anything unprintable as '?'. */
static const char *
name_sanitize(char *buf, size_t len, const char *name)
{
	size_t i;

	for (i = 0; i + 1 < len && name[i] != '\0'; i++)
		buf[i] = name[i] > ' ' && name[i] < 0x7f ? name[i] : '?';
	buf[i] = '\0';
	return buf;
}

static void
queue_move_corrupt(struct queue *q, const char *name, const char *reason)
{
	char safe[64], *to = NULL;
	int i;

	name_sanitize(safe, sizeof(safe), name);
	for (i = 0; i < 100; i++) {
		free(to);
		to = i == 0 ? xstrdup(name) : xasprintf("%s.%d", name, i);
		if (rename_noreplace(q->queue_fd, name, q->corrupt_fd, to) == 0)
			break;
		if (errno != EEXIST) {
			log_warn("%s: cannot move to corrupt/ (%s)", safe,
			    reason);
			free(to);
			return;
		}
	}
	free(to);
	if (i == 100) {
		log_warnx("%s: cannot move to corrupt/ (%s): too many "
		    "copies there", safe, reason);
		return;
	}
	log_warnx("%s: moved to corrupt/: %s", safe, reason);
}

/*
 * Applies the state records in buf[0..len), which starts right after the
 * body at file offset off. Returns the length of the complete lines, so the
 * caller can cut a torn tail off.
 */
static size_t
queue_apply_records(const char *id, struct envelope *env, const char *buf,
    size_t len, off_t off)
{
	const char *p = buf, *nl;
	size_t n;

	while ((nl = memchr(p, '\n', len - (size_t)(p - buf))) != NULL) {
		n = (size_t)(nl + 1 - p);
		/* Records are snapshots: skipping a bad one loses only it. */
		if (envelope_apply_record(env, p, n) == -1)
			log_warnx("%s: ignoring malformed state record at "
			    "offset %jd", id, (intmax_t)(off + (p - buf)));
		p = nl + 1;
	}
	return (size_t)(p - buf);
}

/*
 * Checks fd's size and preamble: the body's offset and size, within the
 * file. Returns 0, or -1 with why set (the file is bad) or *leave set (a
 * transient error, logged).
 */
static int
queue_file_layout(int fd, const char *name, off_t *size,
    uint64_t *body_offset, uint64_t *body_size, char *why, size_t whylen,
    int *leave)
{
	struct stat st;
	char pre[PREAMBLE_LEN];

	if (fstat(fd, &st) == -1) {
		*leave = errno != 0 ? errno : EIO;
		log_warn("%s: fstat", name);
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(why, whylen, "not a regular file");
		return -1;
	}
	if (st.st_size < PREAMBLE_LEN) {
		snprintf(why, whylen, "short file (%jd bytes)",
		    (intmax_t)st.st_size);
		return -1;
	}
	if (fileio_pread_all(fd, pre, sizeof(pre), 0) == -1) {
		*leave = errno != 0 ? errno : EIO;
		log_warn("%s: read", name);
		return -1;
	}
	if (preamble_parse(pre, body_offset, body_size) == -1) {
		snprintf(why, whylen, "bad preamble");
		return -1;
	}
	if (*body_offset < PREAMBLE_LEN ||
	    *body_offset > (uint64_t)st.st_size) {
		snprintf(why, whylen, "body offset past end of file");
		return -1;
	}
	if (*body_size > (uint64_t)st.st_size - *body_offset) {
		snprintf(why, whylen, "body length past end of file "
		    "(%" PRIu64 "+%" PRIu64 " > %jd)", *body_offset,
		    *body_size, (intmax_t)st.st_size);
		return -1;
	}
	*size = st.st_size;
	return 0;
}

/*
 * Applies the state records that follow env's body in fd (size bytes in
 * all). A torn last record is cut off unless readonly. Returns 0, or -1
 * with why or *leave set, as queue_file_layout().
 */
static int
queue_file_records(int fd, const char *name, struct envelope *env,
    off_t size, int readonly, char *why, size_t whylen, int *leave)
{
	off_t end = env->body_offset + env->body_size;
	uint64_t reclen = (uint64_t)(size - end);
	char *recs;
	size_t good;

	if (reclen > RECORDS_MAX) {
		snprintf(why, whylen, "state records too large");
		return -1;
	}
	if (reclen == 0)
		return 0;
	recs = xmalloc(reclen);
	if (fileio_pread_all(fd, recs, reclen, end) == -1) {
		*leave = errno != 0 ? errno : EIO;
		log_warn("%s: read", name);
		free(recs);
		return -1;
	}
	good = queue_apply_records(name, env, recs, reclen, end);
	if (good != reclen && !readonly) {
		/*
		 * A crash while appending: the last record has no '\n' and
		 * never counted. Cut it off so the next update starts on a
		 * fresh line.
		 */
		log_warnx("%s: ignoring torn state record at offset %jd",
		    name, (intmax_t)(end + (off_t)good));
		if (ftruncate(fd, end + (off_t)good) == -1 ||
		    fdatasync(fd) == -1)
			log_warn("%s: truncate torn record", name);
	}
	free(recs);
	return 0;
}

/*
 * Reads one queue file. Returns the envelope, or NULL with a reason for
 * corrupt/ in why, or NULL with *leave set to an errno value when the file
 * should be left alone: ENOENT (gone, not logged) or a transient failure
 * such as EMFILE or EIO (logged). Unless readonly, a torn last state
 * record is cut off the file; readonly opens it for reading only and
 * changes nothing, so it may run while the file is being updated.
 */
static struct envelope *
queue_load_one(struct queue *q, const char *name, char *why, size_t whylen,
    int *leave, int readonly)
{
	struct envelope *env = NULL;
	char derr[128], *text = NULL;
	uint64_t body_offset, body_size, envlen;
	off_t size;
	size_t used;
	int fd;

	*leave = 0;
	if (!queue_id_valid(name)) {
		snprintf(why, whylen, "not a queue file name");
		return NULL;
	}
	if ((fd = openat_wait(q->queue_fd, name, (readonly ? O_RDONLY :
	    O_RDWR) | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)) == -1) {
		if (errno == ELOOP || errno == EISDIR || errno == ENXIO) {
			snprintf(why, whylen, "not a regular file");
			return NULL;
		}
		*leave = errno;
		if (errno != ENOENT)
			log_warn("%s: open", name);
		return NULL;
	}
	if (queue_file_layout(fd, name, &size, &body_offset, &body_size, why,
	    whylen, leave) == -1)
		goto done;
	envlen = body_offset - PREAMBLE_LEN;
	if (envlen > ENVELOPE_MAX) {
		snprintf(why, whylen, "envelope too large");
		goto done;
	}
	text = xmalloc(envlen + 1);
	if (fileio_pread_all(fd, text, envlen, PREAMBLE_LEN) == -1) {
		*leave = errno != 0 ? errno : EIO;
		log_warn("%s: read", name);
		goto done;
	}
	if ((env = envelope_decode(text, envlen, &used, derr,
	    sizeof(derr))) == NULL) {
		snprintf(why, whylen, "envelope: %s", derr);
		goto done;
	}
	if (used != envlen) {
		snprintf(why, whylen, "junk after envelope");
		goto fail;
	}
	if (strcmp(env->id, name) != 0) {
		snprintf(why, whylen, "envelope id does not match file name");
		goto fail;
	}
	env->body_offset = (off_t)body_offset;
	env->body_size = (off_t)body_size;
	if (queue_file_records(fd, name, env, size, readonly, why, whylen,
	    leave) == -1)
		goto fail;
	goto done;

 fail:
	envelope_free(env);
	env = NULL;
 done:
	free(text);
	close(fd);
	return env;
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists the names in dirfd, except "." and "..", sorted. */
static char **
dir_list(int dirfd, const char *what, size_t *n)
{
	DIR *d;
	struct dirent *de;
	char **names = NULL;
	size_t count = 0;
	int fd;

	*n = 0;
	if ((fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) ==
	    -1 || (d = fdopendir(fd)) == NULL) {
		log_warn("%s", what);
		if (fd != -1)
			close(fd);
		return NULL;
	}
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		names = xreallocarray(names, count + 1, sizeof(*names));
		names[count++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (names != NULL)
		qsort(names, count, sizeof(*names), name_cmp);
	*n = count;
	return names;
}

/*
 * Removes what a previous run left in tmp/ and spare/. Leftovers in tmp/
 * are messages that never committed: their clients were never told 250,
 * so they still hold the mail.
 */
static void
queue_clean_leftovers(struct queue *q)
{
	char **names, safe[64];
	size_t n, i;

	names = dir_list(q->tmp_fd, "tmp", &n);
	for (i = 0; i < n; i++) {
		if (queue_id_valid(names[i]))
			queue_id_seen(names[i]);
		if (unlinkat(q->tmp_fd, names[i], 0) == -1)
			log_warn("tmp/%s: unlink",
			    name_sanitize(safe, sizeof(safe), names[i]));
		else
			log_info("tmp/%s: removed unfinished message",
			    name_sanitize(safe, sizeof(safe), names[i]));
		free(names[i]);
	}
	free(names);

	/*
	 * Spares are never messages. A crash may even have left one as a
	 * second name of a queued message (a rename half on disk), so they
	 * are dropped, never reused across a restart.
	 */
	pthread_mutex_lock(&q->mtx);
	spares_free(q);
	pthread_mutex_unlock(&q->mtx);
	names = dir_list(q->spare_fd, "spare", &n);
	for (i = 0; i < n; i++) {
		if (unlinkat(q->spare_fd, names[i], 0) == -1)
			log_warn("spare/%s: unlink",
			    name_sanitize(safe, sizeof(safe), names[i]));
		free(names[i]);
	}
	free(names);
}

/* Makes moves into corrupt/ durable, once for all of them. */
static void
queue_sync_corrupt(struct queue *q)
{
	if (fsync(q->corrupt_fd) == -1 || fsync(q->queue_fd) == -1)
		log_warn("%s: fsync after moving files to corrupt/", q->spool);
}

struct log_scan {
	void (*each)(const char *id, void *arg);
	void *arg;
	size_t n;
};

static void
log_scan_one(const char *id, void *arg)
{
	struct log_scan *ls = arg;

	queue_id_seen(id);
	ls->each(id, ls->arg);
	ls->n++;
}

/* Calls each(id, arg) for every message in the log. */
static size_t
queue_scan_log(struct queue *q, void (*each)(const char *id, void *arg),
    void *arg)
{
	struct log_scan ls = { each, arg, 0 };

	spoollog_foreach(q->log, log_scan_one, &ls);
	return ls.n;
}

size_t
queue_scan(struct queue *q, void (*each)(const char *id, void *arg),
    void *arg)
{
	DIR *d;
	struct dirent *de;
	char **bad = NULL;
	size_t n = 0, nbad = 0, i;
	int fd;

	queue_clean_leftovers(q);
	if ((fd = openat(q->queue_fd, ".", O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) == -1 || (d = fdopendir(fd)) == NULL) {
		log_warn("%s/queue", q->spool);
		if (fd != -1)
			close(fd);
		return 0;
	}
	/* One pass over the names, nothing kept per message: a million
	 * entries take about a second. */
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		if (!queue_id_valid(de->d_name) ||
		    (de->d_type != DT_REG && de->d_type != DT_UNKNOWN)) {
			/* Moved after the listing: renaming entries while
			 * readdir() runs may show some twice or never. */
			bad = xreallocarray(bad, nbad + 1, sizeof(*bad));
			bad[nbad++] = xstrdup(de->d_name);
			continue;
		}
		queue_id_seen(de->d_name);
		each(de->d_name, arg);
		n++;
	}
	closedir(d);
	for (i = 0; i < nbad; i++) {
		queue_move_corrupt(q, bad[i], queue_id_valid(bad[i]) ?
		    "not a regular file" : "not a queue file name");
		free(bad[i]);
	}
	free(bad);
	if (nbad > 0)
		queue_sync_corrupt(q);
	return n + queue_scan_log(q, each, arg);
}

/*
 * queue_read() and queue_peek(): the log first, then a file of its own.
 * Only a reader that may change the spool (readonly 0) moves an unreadable
 * file to corrupt/.
 */
static struct envelope *
queue_get(struct queue *q, const char *id, int readonly)
{
	struct envelope *env;
	char why[256];
	int leave;

	if (spoollog_has(q->log, id) &&
	    ((env = spoollog_read(q->log, id)) != NULL || errno != ENOENT))
		return env;
	why[0] = '\0';
	if ((env = queue_load_one(q, id, why, sizeof(why), &leave,
	    readonly)) != NULL)
		return env;
	if (leave == 0 && !readonly) {
		queue_move_corrupt(q, id, why);
		queue_sync_corrupt(q);
	}
	errno = leave != 0 ? leave : EBADMSG;
	return NULL;
}

struct envelope *
queue_read(struct queue *q, const char *id)
{
	return queue_get(q, id, 0);
}

struct envelope *
queue_peek(struct queue *q, const char *id)
{
	return queue_get(q, id, 1);
}

struct log_load {
	struct queue *q;
	void (*each)(struct envelope *env, void *arg);
	void *arg;
	size_t n;
};

static void
log_load_one(const char *id, void *arg)
{
	struct log_load *ll = arg;
	struct envelope *env;

	queue_id_seen(id);
	if ((env = spoollog_read(ll->q->log, id)) == NULL)
		return;
	ll->n++;
	ll->each(env, ll->arg);
}

/* Reads every message in the log, in id order. */
static size_t
queue_load_log(struct queue *q, void (*each)(struct envelope *env,
    void *arg), void *arg)
{
	struct log_load ll = { q, each, arg, 0 };

	spoollog_foreach(q->log, log_load_one, &ll);
	return ll.n;
}

size_t
queue_load(struct queue *q, void (*each)(struct envelope *env, void *arg),
    void *arg)
{
	struct envelope *env;
	char **names;
	size_t n, i, loaded = 0;

	queue_clean_leftovers(q);
	names = dir_list(q->queue_fd, "queue", &n);
	for (i = 0; i < n; i++) {
		if (queue_id_valid(names[i]))
			queue_id_seen(names[i]);
		if ((env = queue_read(q, names[i])) != NULL) {
			loaded++;
			each(env, arg);
		}
		free(names[i]);
	}
	free(names);
	return loaded + queue_load_log(q, each, arg);
}

/*
 * Gives txn a file of its own: a spare written over from offset 0, or a new
 * tmp/<id>, then the preamble and the envelope. A new id is drawn unless
 * keep_id (a message moving out of memory has one already). Returns 0, or
 * -1 with errno; txn->fd is then the file if it was created (the caller
 * aborts to remove it) or -1.
 */
static int
txn_file_open(struct queue_txn *txn, int keep_id)
{
	struct queue *q = txn->q;
	struct spare *sp;
	char *text;
	size_t len;
	int i, error;

	pthread_mutex_lock(&q->mtx);
	if ((sp = q->spares) != NULL) {
		q->spares = sp->next;
		q->nspares--;
	}
	pthread_mutex_unlock(&q->mtx);
	if (sp != NULL) {
		/* Opened by the commit thread, at offset 0. */
		txn->fd = sp->fd;
		txn->old_size = sp->size;
		memcpy(txn->spare, sp->name, sizeof(txn->spare));
		free(sp);
		if (!keep_id)
			queue_id_next(txn->env->id, sizeof(txn->env->id));
	}
	for (i = 0; txn->fd == -1 && i < 10; i++) {
		if (!keep_id)
			queue_id_next(txn->env->id, sizeof(txn->env->id));
		if ((txn->fd = openat(q->tmp_fd, txn->env->id,
		    O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) != -1 ||
		    errno != EEXIST || keep_id)
			break;
	}
	if (txn->fd == -1) {
		error = errno;
		log_warn("%s: create tmp/%s", q->spool, txn->env->id);
		errno = error;
		return -1;
	}

	/* One write for the preamble and the envelope. */
	text = envelope_encode(txn->env, &len);
	text = xreallocarray(text, PREAMBLE_LEN + len + 1, 1);
	memmove(text + PREAMBLE_LEN, text, len);
	txn->body_offset = PREAMBLE_LEN + (off_t)len;
	preamble_format(text, txn->body_offset, 0);
	if (fileio_write_all(txn->fd, text, PREAMBLE_LEN + len) == -1) {
		error = errno;
		free(text);
		log_warn("%s: write", txn->env->id);
		errno = error;
		return -1;
	}
	free(text);
	return 0;
}

struct queue_txn *
queue_txn_begin(struct queue *q, const struct envelope *env)
{
	struct queue_txn *txn;
	int error;

	txn = xcalloc(1, sizeof(*txn));
	txn->q = q;
	txn->env = envelope_dup(env);
	txn->env->body_offset = txn->env->body_size = 0;
	txn->fd = -1;
	if (q->log_max > 0) {
		/* Small until proven otherwise: kept in memory for the
		 * log, nothing on disk yet. */
		queue_id_next(txn->env->id, sizeof(txn->env->id));
		txn->inmem = 1;
		return txn;
	}
	if (txn_file_open(txn, 0) == -1) {
		error = errno;
		if (txn->fd != -1)
			queue_txn_abort(txn);
		else {
			envelope_free(txn->env);
			free(txn);
		}
		errno = error;
		return NULL;
	}
	return txn;
}

/* The message outgrew the log: to a file of its own with what it has. */
static int
txn_spill(struct queue_txn *txn)
{
	txn->inmem = 0;
	if (txn_file_open(txn, 1) == -1 || (txn->size > 0 &&
	    fileio_write_all(txn->fd, txn->mem, (size_t)txn->size) == -1)) {
		if (txn->fd == -1)
			txn->inmem = 1;	/* nothing on disk to remove */
		return -1;
	}
	free(txn->mem);
	txn->mem = NULL;
	txn->memcap = 0;
	return 0;
}

const char *
queue_txn_id(const struct queue_txn *txn)
{
	return txn->env->id;
}

int
queue_txn_write(struct queue_txn *txn, const void *buf, size_t len)
{
	/* The page cache absorbs this; only the sync may block for long,
	 * and that happens on the commit thread. */
	if (txn->error != 0) {
		errno = txn->error;
		return -1;
	}
	if (len == 0)
		return 0;
	if (txn->inmem && (size_t)txn->size + len <= txn->q->log_max) {
		if ((size_t)txn->size + len > txn->memcap) {
			txn->memcap = txn->memcap == 0 ? 8192 : txn->memcap * 2;
			while (txn->memcap < (size_t)txn->size + len)
				txn->memcap *= 2;
			txn->mem = xreallocarray(txn->mem, txn->memcap, 1);
		}
		memcpy(txn->mem + txn->size, buf, len);
		txn->size += (off_t)len;
		return 0;
	}
	if (txn->inmem && txn_spill(txn) == -1) {
		txn->error = errno;
		log_warn("%s: write", txn->env->id);
		errno = txn->error;
		return -1;
	}
	if (fileio_write_all(txn->fd, buf, len) == -1) {
		txn->error = errno;
		log_warn("%s: write", txn->env->id);
		errno = txn->error;	/* logging may change it */
		return -1;
	}
	txn->size += (off_t)len;
	return 0;
}

off_t
queue_txn_size(const struct queue_txn *txn)
{
	return txn->size;
}

static struct qop *
commit_op_new(struct queue_txn *txn, queue_commit_cb cb, void *arg)
{
	struct qop *op;

	op = xcalloc(1, sizeof(*op));
	op->type = QOP_COMMIT;
	snprintf(op->id, sizeof(op->id), "%s", txn->env->id);
	op->txn = txn;
	op->commit_cb = cb;
	op->arg = arg;
	op->fd = -1;
	return op;
}

void
queue_txn_commit(struct queue_txn *txn, queue_commit_cb cb, void *arg)
{
	queue_submit(txn->q, commit_op_new(txn, cb, arg));
}

/*
 * Takes the group of a lone commit (see "The lone commit" above): the lazy
 * removals waiting in the FIFO, then op. Returns NULL, leaving everything
 * as it was, when the commit must go through the thread.
 */
static struct qop *
lone_take(struct queue *q, struct qop *op)
{
	struct qop *p, *group;
	size_t n = 1;

	pthread_mutex_lock(&q->mtx);
	if (q->stopping)
		fatalx("%s: queue is closed", __func__);
	if (q->busy || clock_mono_ms() < q->slow_until)
		goto no;
	for (p = q->pending.head; p != NULL; p = p->next)
		if (!p->lazy || ++n > q->group_max)
			goto no;
	q->busy = 1;
	if ((group = qop_list_take(&q->pending)) == NULL)
		group = op;
	else {
		for (p = group; p->next != NULL; p = p->next)
			;
		p->next = op;
	}
	pthread_mutex_unlock(&q->mtx);
	return group;
 no:
	pthread_mutex_unlock(&q->mtx);
	return NULL;
}

void
queue_txn_commit_alone(struct queue_txn *txn, queue_commit_cb cb, void *arg)
{
	struct queue *q = txn->q;
	struct qop *op, *group;
	struct timeval tv = { 0, QUEUE_MAINTAIN_WAIT_MS * 1000 };
	uint64_t ms;
	int n;

	op = commit_op_new(txn, cb, arg);
	if (!txn->inmem || txn->error != 0 ||
	    (group = lone_take(q, op)) == NULL) {
		queue_submit(q, op);
		return;
	}
	ms = group_run(q, group, &n);
	pthread_mutex_lock(&q->mtx);
	group_finish(q, group, n, ms, 1);
	q->lone_groups++;
	q->busy = 0;
	pthread_cond_broadcast(&q->cv_idle);
	pthread_mutex_unlock(&q->mtx);
	if (!evtimer_pending(q->ev_maint, NULL))
		evtimer_add(q->ev_maint, &tv);
}

void
queue_txn_abort(struct queue_txn *txn)
{
	struct qop *op;

	if (txn->inmem) {
		/* Nothing on disk. */
		envelope_free(txn->env);
		free(txn->mem);
		free(txn);
		return;
	}
	if (txn->fd != -1) {
		close(txn->fd);
		txn->fd = -1;
	}
	/* The unlink, cheap as it usually is, still goes off the loop. */
	op = xcalloc(1, sizeof(*op));
	op->type = QOP_ABORT;
	snprintf(op->id, sizeof(op->id), "%s", txn->env->id);
	op->txn = txn;
	queue_submit(txn->q, op);
}

int
queue_body_open(struct queue *q, const struct envelope *env)
{
	off_t off;
	int fd;

	if (!queue_id_valid(env->id)) {
		errno = EINVAL;
		return -1;
	}
	/*
	 * A message of the log may have been copied forward since env was
	 * read: the body is where the log says now. body_offset is owned by
	 * queue.c (envelope.h), so it is updated in place.
	 */
	if ((fd = spoollog_body_open(q->log, env->id, &off)) != -1) {
		((struct envelope *)(uintptr_t)env)->body_offset = off;
		return fd;
	}
	if (errno != ENOENT)
		return -1;
	return openat(q->queue_fd, env->id, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
}

unsigned char *
queue_body_take(struct queue *q, const struct envelope *env)
{
	struct hot *h;
	unsigned char *data;

	if ((h = hot_unlink(q, env->id)) == NULL)
		return NULL;
	data = NULL;
	if ((off_t)h->len == env->body_size) {
		data = h->data;
		h->data = NULL;
		q->hot_taken++;
	}
	hot_free(h);
	return data;
}

void
queue_update(struct queue *q, const struct envelope *env, queue_done_cb cb,
    void *arg)
{
	struct qop *op;

	op = xcalloc(1, sizeof(*op));
	op->type = QOP_UPDATE;
	snprintf(op->id, sizeof(op->id), "%s", env->id);
	/* Encoded now: the record is the state at the time of the call. */
	op->record = envelope_state_record(env, &op->reclen);
	op->done_cb = cb;
	op->arg = arg;
	if (!queue_id_valid(op->id))
		fatalx("%s: bad queue id", __func__);
	queue_submit(q, op);
}

int
queue_note(struct queue *q, const struct envelope *env)
{
	struct stat st;
	char *record;
	size_t len;
	int fd, error = 0;

	if (!queue_id_valid(env->id)) {
		errno = EINVAL;
		return -1;
	}
	record = envelope_state_record(env, &len);
	/* A message of the log: a state record in the newest log file, read
	 * back at replay as one the commit thread wrote. */
	if (spoollog_has(q->log, env->id)) {
		if (spoollog_note(q->log, env->id, record, len) == -1)
			error = errno;
		free(record);
		errno = error;
		return error == 0 ? 0 : -1;
	}
	if ((fd = openat(q->queue_fd, env->id,
	    O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		error = errno;
		free(record);
		errno = error;
		return -1;
	}
	if (fstat(fd, &st) == -1)
		error = errno;
	else if (fileio_write_all(fd, record, len) == -1) {
		error = errno;
		/* As update_undo(): no partial record for the next one to be
		 * glued to. */
		if (ftruncate(fd, st.st_size) == -1)
			log_warn("%s: truncate after failed note", env->id);
	}
	free(record);
	close(fd);
	errno = error;
	return error == 0 ? 0 : -1;
}

void
queue_remove(struct queue *q, const char *id, queue_done_cb cb, void *arg)
{
	struct qop *op;

	if (!queue_id_valid(id))
		fatalx("%s: bad queue id", __func__);
	hot_free(hot_unlink(q, id));
	op = xcalloc(1, sizeof(*op));
	op->type = QOP_REMOVE;
	snprintf(op->id, sizeof(op->id), "%s", id);
	op->done_cb = cb;
	op->arg = arg;
	/* A tombstone is written lazily anyway: it need not wake the
	 * thread (see "The spool log" above). A file's removal does. */
	if (spoollog_has(q->log, id)) {
		queue_submit_wake(q, op, 0);
		if (!evtimer_pending(q->ev_lazy, NULL)) {
			struct timeval tv = { 0, QUEUE_REMOVE_WAIT_MS * 1000 };

			evtimer_add(q->ev_lazy, &tv);
		}
	} else
		queue_submit(q, op);
}

void
queue_log_max(struct queue *q, size_t max)
{
	q->log_max = max > LOGREC_PAYLOAD_MAX / 2 ? LOGREC_PAYLOAD_MAX / 2 :
	    max;
}

void
queue_log_file_size(struct queue *q, size_t size)
{
	spoollog_file_size(q->log, size);
}

void
queue_log_clock(struct queue *q, int64_t (*clock)(void))
{
	spoollog_clock(q->log, clock);
}

void
queue_stats(const struct queue *q, struct queue_stats *out)
{
	struct queue *mq = (struct queue *)(uintptr_t)q;

	/* The counters change on the commit thread; the mutex is not part
	 * of the logical (const) state. */
	pthread_mutex_lock(&mq->mtx);
	out->commits = q->commits;
	out->sync_groups = q->sync_groups;
	out->lone_groups = q->lone_groups;
	pthread_mutex_unlock(&mq->mtx);
	out->bodies_taken = q->hot_taken;
}
