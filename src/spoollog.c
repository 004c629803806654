/*
 * The spool log (see spoollog.h for the format and the rules). Invariants:
 *  - a record is in the index only after the write that holds it was
 *    synced (spoollog_commit() runs after spoollog_flush() succeeded);
 *  - only the newest file (log->wfd) is ever written to, and after a failed
 *    write or sync it is abandoned: the next flush starts a new file, so a
 *    record never follows bytes that may be torn;
 *  - files are retired (deleted, or renamed to a seq above every other's
 *    as a spare, see file_retire) oldest first, one directory sync each,
 *    and only when no live message record is in them (copies forward are
 *    synced first);
 *  - a spare's new name is durable before a record salted with it is
 *    written, and seqs are never given twice, so the only records of a
 *    file's seq in it are those written since it took that seq;
 *  - a start appends to a replayed file only after cutting it at the end
 *    of its valid records and syncing that (file_continue), so nothing of
 *    an earlier run beyond those records is ever read after a new one.
 * The mutex guards the index and the file table; the commit thread holds it
 * only to change them, never across I/O, so readers wait for microseconds.
 *
 * Notes (spoollog_note) are written by another thread, the event loop's,
 * into the newest file. The write mutex makes the file's writers take
 * turns: it guards the newest file (wfd, wseq, wend, broken, prealloc,
 * wzero, last_seq) and the spares, and is held across every write into
 * it, the commit thread's and the notes', though across a sync only when
 * a file is started or retired (rare: about once per file_size of
 * records, or once after a restart). So every byte before a
 * reserved range is written (into the page cache at least) before that
 * range is, and a sync of the file covers the notes before the records it
 * was for: a note torn by a power cut is never followed by a record that a
 * sync acknowledged. A note that fails part-way makes the file broken like
 * any failed write. Lock order: the write mutex, then the mutex.
 */
#include <sys/stat.h>
#include <sys/types.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "envelope.h"
#include "fileio.h"
#include "log.h"
#include "logrec.h"
#include "spoollog.h"
#include "xmalloc.h"

/*
 * Bytes after which a log file is full and the next flush starts another.
 * Preallocated at creation (or reused whole), so appends do not change the
 * file's size. Small
 * enough that a file is freed soon after its messages are delivered, large
 * enough that creating one (with its directory sync) is rare: about 2,000
 * messages of 4 KB.
 */
#define SPOOLLOG_FILE_SIZE (8U * 1024 * 1024)
/*
 * Room kept in a log file for state records and tombstones when the disk
 * is too full to preallocate a whole file: they then always fit, so
 * delivered mail can still be removed and its space freed, whereas new
 * messages get 452 until there is room again.
 */
#define SPOOLLOG_RESERVE (64U * 1024)
/* Messages copied forward per spoollog_maintain() call, so a copy never
 * holds up the commits waiting behind it for long. */
#define SPOOLLOG_COPY_MAX 64
/*
 * Seconds the oldest file must go without a delivery (a tombstone of one
 * of its messages) before its live messages are copied forward. A file
 * being drained loses its messages to delivery within seconds anyway:
 * copying them first wrote them twice and held the drain up behind the
 * copies' syncs (29,495 of a 100,000 backlog were copied during its
 * drain). A file whose messages wait (deferred, the upstream down) sees
 * no delivery, so it is compacted after this long, a short delay beside
 * the minutes such mail waits (retry_min is 5 minutes by default) and far
 * longer than the gap between two deliveries of a queue that drains.
 * State records do not count: a deferred message gets one at each retry
 * without leaving its file. The files found at start count as idle for
 * this long already (start_idle), so a daemon restarted more often than
 * this still compacts.
 */
#define SPOOLLOG_COPY_IDLE 30
/*
 * Dead log files kept for reuse (see file_retire). Writing into blocks
 * that were written and synced before costs fdatasync the data and a
 * cache flush; writing into preallocated (unwritten) blocks also commits
 * the file system's journal for the extents it converts, at every sync
 * (doc/PERFORMANCE.md: 1.3 times the commits a second on ext4 for the
 * former). One dead file a file's worth of records makes the steady state;
 * the second absorbs a burst. Each holds file_size of disk.
 */
#define SPOOLLOG_SPARES 2
/*
 * A newest file whose blocks were not written before (a fresh file, or the
 * part of a reused one its previous records never reached) is written with
 * zeros up to this far ahead of its records, in one write once the records
 * come within half of it of the zeros' end: the sync of that group
 * converts the extents once for SPOOLLOG_FILL_AHEAD bytes of records, not
 * once per group. The cost is the zeros written (up to a file's worth,
 * once per fresh file; nothing for a file reused whole).
 */
#define SPOOLLOG_FILL_AHEAD (1024U * 1024)
/* Window for replaying a file at start-up. */
#define SPOOLLOG_SCAN_WINDOW (1024 * 1024)
/*
 * Log files kept open for readers (file_open). A delivery reads its
 * message's envelope on the worker pool, then opens the body to send it:
 * each an openat(2) of the log file, about 2 % of a drain's CPU between
 * them (perf, doc/RELIABILITY.md). A drain reads the messages in the
 * order they came, so nearly every read is of one of the last few files
 * read, and a dup(2) of a kept descriptor does instead.
 */
#define SPOOLLOG_READ_FDS 4
#define SPOOLLOG_NAME_LEN 16

/*
 * A live message: where its message record and latest state record are.
 * Packed to 28 bytes (4-byte aligned): the index holds one per queued
 * message, so it is most of what a large backlog costs in memory. The
 * envelope's length (the record header's aux) is not kept: it is read
 * with the header when the record is.
 */
struct __attribute__((packed, aligned(4))) entry {
	uint64_t id;		/* 0: free slot */
	uint32_t seq;		/* file of the message record */
	uint32_t off;		/* offset of its header */
	uint32_t len;		/* payload length */
	uint32_t st_seq;	/* file of the latest state record, 0: none */
	uint32_t st_off;
};
_Static_assert(sizeof(struct entry) == 28, "struct entry is 28 bytes");

/*
 * The index is SPOOLLOG_SHARDS open-addressing tables (linear probing),
 * a message's shard chosen by its hash. A table grows by a quarter when
 * it is 7/8 full, so the index costs 32 to 40 bytes a message; and since
 * each shard grows on its own, the old and new arrays that coexist
 * while one is rehashed are a 64th of the index, not all of it twice
 * over (a single table of a million messages would peak near 65 MB
 * there).
 */
#define SPOOLLOG_SHARDS 64
#define SPOOLLOG_SHARD_MIN 16

struct shard {
	struct entry *slots;
	uint32_t nslots;	/* any size, or 0 */
	uint32_t nlive;
};

/* A log file. At most SPOOLLOG_READ_FDS are held open for reading (the
 * ones read last, see file_open), so one descriptor per file (a million
 * messages of 4 KB fill about 530) never accrues. */
struct logfile {
	uint32_t seq;
	uint64_t end;		/* bytes of valid records */
	uint64_t live_bytes;	/* of live message records */
	size_t live;		/* live message records */
	int64_t delivered;	/* log->clock when a message of it was last
				   done, or it was added (see copy_wanted) */
	uint64_t written;	/* bytes from its start known written (records
				   or zeros), for file_retire */
	int unread;		/* replay could not read it to its end */
};

/* A dead file renamed to a seq above every file's, to become the newest
 * file later (file_retire). */
struct spare {
	uint32_t seq;
	uint64_t written;	/* as struct logfile's */
};

/* A record staged for the next flush. */
struct staged {
	enum logrec_type type;
	uint64_t id;
	uint32_t rel;		/* offset in the staging buffer */
	uint32_t len;
	uint32_t aux;
};

/* A log file kept open for readers; fd -1: a free slot. */
struct readfd {
	uint32_t seq;
	int fd;
	uint64_t used;		/* log->readtick when last taken */
};

struct spoollog {
	char *spool;
	int dir_fd;		/* <spool>/log */
	struct readfd readfds[SPOOLLOG_READ_FDS]; /* under mtx */
	uint64_t readtick;

	pthread_mutex_t mtx;	/* guards the index and files[] */
	pthread_mutex_t wmtx;	/* guards the newest file, see above */
	struct shard shards[SPOOLLOG_SHARDS];
	size_t nlive;
	struct logfile *files;	/* by seq, oldest first */
	size_t nfiles;
	unsigned long copied;
	int64_t (*clock)(void);	/* seconds, monotonic; tests set another */
	int64_t now;		/* clock() when the records being applied
				   to the index were committed */

	/* The newest file: written under wmtx, by the commit thread and by
	 * a note that finds no file (wfd -1); the commit thread may read
	 * them without it. */
	uint32_t last_seq;	/* highest seq ever seen or made */
	int wfd;		/* the newest file, for writing; -1: none */
	uint32_t wseq;
	off_t wend;		/* where its next record goes */
	int broken;		/* the newest file failed: start another */
	size_t prealloc;	/* bytes preallocated in it: file_size, or
				   less when the disk was nearly full */
	uint64_t wzero;		/* bytes from its start known written */
	struct spare spares[SPOOLLOG_SPARES];	/* ascending seq */
	size_t nspares;
	unsigned long recycled;	/* files reused since start */
	uint64_t zeroed;	/* bytes of zeros written ahead since start */

	/* Commit thread only. */
	int unsynced;		/* it has records written but not synced */
	int written;		/* the staged records went to the file */
	unsigned char *stage;
	size_t stagelen, stagecap;
	struct staged *staged;
	size_t nstaged, stagedcap;
	off_t flushed_base;
	uint32_t flushed_seq;
	size_t file_size;	/* SPOOLLOG_FILE_SIZE unless a test says */
	/* Messages whose commit failed after their record was written: a
	 * tombstone for each goes with the next flush, so a record that
	 * reached the disk anyway is not taken for mail at the next start. */
	uint64_t *bury;
	size_t nbury;
};

static int64_t
clock_monotonic(void)
{
	return (int64_t)(clock_mono_ms() / 1000);
}

/* splitmix64's finaliser: ids are mostly a clock, so mix them. */
static uint64_t
id_hash(uint64_t id)
{
	id ^= id >> 30;
	id *= 0xbf58476d1ce4e5b9ULL;
	id ^= id >> 27;
	id *= 0x94d049bb133111ebULL;
	id ^= id >> 31;
	return id;
}

/* The hash's low bits pick the shard, its high 32 bits the home slot
 * (scaled to the table's size, which need not be a power of two). */
static struct shard *
id_shard(struct spoollog *log, uint64_t h)
{
	return &log->shards[h % SPOOLLOG_SHARDS];
}

static uint32_t
id_home(uint64_t h, uint32_t nslots)
{
	return (uint32_t)(((h >> 32) * nslots) >> 32);
}

static uint32_t
slot_next(const struct shard *sh, uint32_t i)
{
	return i + 1 < sh->nslots ? i + 1 : 0;
}

static struct entry *
index_find(struct spoollog *log, uint64_t id)
{
	uint64_t h = id_hash(id);
	struct shard *sh = id_shard(log, h);
	uint32_t i;

	if (sh->nslots == 0)
		return NULL;
	for (i = id_home(h, sh->nslots); sh->slots[i].id != 0;
	    i = slot_next(sh, i))
		if (sh->slots[i].id == id)
			return &sh->slots[i];
	return NULL;
}

/* Places e in a table known to have room and not to hold its id. */
static struct entry *
shard_place(struct shard *sh, const struct entry *e)
{
	uint32_t i;

	for (i = id_home(id_hash(e->id), sh->nslots); sh->slots[i].id != 0;
	    i = slot_next(sh, i))
		;
	sh->slots[i] = *e;
	return &sh->slots[i];
}

static void
shard_grow(struct shard *sh)
{
	struct entry *old = sh->slots;
	uint32_t n = sh->nslots, i;

	if (n > UINT32_MAX / 5 * 4)
		fatalx("%s: %" PRIu32 " slots", __func__, n);
	sh->nslots = n < SPOOLLOG_SHARD_MIN ? SPOOLLOG_SHARD_MIN : n + n / 4;
	sh->slots = xcalloc(sh->nslots, sizeof(*sh->slots));
	for (i = 0; i < n; i++)
		if (old[i].id != 0)
			shard_place(sh, &old[i]);
	free(old);
}

/* Returns the entry for id, a new zeroed one (id set) if absent. */
static struct entry *
index_get(struct spoollog *log, uint64_t id, int *created)
{
	struct shard *sh = id_shard(log, id_hash(id));
	struct entry *e, fresh;

	*created = 0;
	if ((e = index_find(log, id)) != NULL)
		return e;
	if (((uint64_t)sh->nlive + 1) * 8 > (uint64_t)sh->nslots * 7)
		shard_grow(sh);
	memset(&fresh, 0, sizeof(fresh));
	fresh.id = id;
	sh->nlive++;
	log->nlive++;
	*created = 1;
	return shard_place(sh, &fresh);
}

/* Linear probing's deletion: shift later members of the run back. */
static void
index_delete(struct spoollog *log, struct entry *e)
{
	struct shard *sh = id_shard(log, id_hash(e->id));
	uint32_t i, j, k;

	i = (uint32_t)(e - sh->slots);
	sh->slots[i].id = 0;
	for (j = slot_next(sh, i); sh->slots[j].id != 0;
	    j = slot_next(sh, j)) {
		k = id_home(id_hash(sh->slots[j].id), sh->nslots);
		/* Move j to i unless its home k lies cyclically in (i, j]. */
		if ((j > i && (k <= i || k > j)) ||
		    (j < i && (k <= i && k > j))) {
			sh->slots[i] = sh->slots[j];
			sh->slots[j].id = 0;
			i = j;
		}
	}
	sh->nlive--;
	log->nlive--;
}

static struct logfile *
file_find(struct spoollog *log, uint32_t seq)
{
	size_t lo = 0, hi = log->nfiles, mid;

	while (lo < hi) {
		mid = (lo + hi) / 2;
		if (log->files[mid].seq == seq)
			return &log->files[mid];
		if (log->files[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static void
file_name(uint32_t seq, char *buf, size_t len)
{
	snprintf(buf, len, "%016" PRIX32, seq);
}

/* Whether the record at (seq, off) lies before the one at (seq2, off2) in
 * the log's order, which is replay's. */
static int
pos_before(uint32_t seq, uint32_t off, uint32_t seq2, uint32_t off2)
{
	return seq < seq2 || (seq == seq2 && off < off2);
}

/*
 * Applies one synced (or replayed) record to the index. Locked. A message
 * of the index has the state of the last state record after its message
 * record in the log's order, as replay reads it. Replay applies records
 * in that order; a commit may not, since a note written after the
 * commit's records (spoollog_note) can reach the index before them: so a
 * record changes the state only when it lies after the state's record.
 */
static void
index_apply(struct spoollog *log, enum logrec_type type, uint64_t id,
    uint32_t seq, uint32_t off, uint32_t len)
{
	struct entry *e;
	struct logfile *f;
	int created;

	if (id == 0)
		return;	/* never a queue id; 0 marks a free slot */
	switch (type) {
	case LOGREC_MESSAGE:
		e = index_get(log, id, &created);
		/* A copy forward: the older record is dead now. */
		if (!created && (f = file_find(log, e->seq)) != NULL) {
			f->live--;
			f->live_bytes -= LOGREC_HEADER_LEN + (uint64_t)e->len;
		}
		e->seq = seq;
		e->off = off;
		e->len = len;
		if (e->st_seq == 0 || !pos_before(seq, off, e->st_seq,
		    e->st_off)) {
			e->st_seq = 0;
			e->st_off = 0;
		}
		if ((f = file_find(log, seq)) != NULL) {
			f->live++;
			f->live_bytes += LOGREC_HEADER_LEN + (uint64_t)len;
		}
		break;
	case LOGREC_STATE:
		if ((e = index_find(log, id)) != NULL &&
		    pos_before(e->seq, e->off, seq, off) &&
		    (e->st_seq == 0 || pos_before(e->st_seq, e->st_off, seq,
		    off))) {
			e->st_seq = seq;
			e->st_off = off;
		}
		break;
	case LOGREC_DONE:
		if ((e = index_find(log, id)) == NULL)
			break;
		if ((f = file_find(log, e->seq)) != NULL) {
			f->live--;
			f->live_bytes -= LOGREC_HEADER_LEN + (uint64_t)e->len;
			f->delivered = log->now;
		}
		index_delete(log, e);
		break;
	}
}

struct spoollog *
spoollog_open(int spool_fd, const char *spool, char *err, size_t errlen)
{
	struct spoollog *log;
	size_t i;
	int created = 0;

	log = xcalloc(1, sizeof(*log));
	log->spool = xstrdup(spool);
	log->wfd = -1;
	log->dir_fd = -1;
	for (i = 0; i < SPOOLLOG_READ_FDS; i++)
		log->readfds[i].fd = -1;
	log->file_size = SPOOLLOG_FILE_SIZE;
	log->clock = clock_monotonic;
	pthread_mutex_init(&log->mtx, NULL);
	pthread_mutex_init(&log->wmtx, NULL);
	if (mkdirat(spool_fd, "log", 0700) == 0)
		created = 1;
	else if (errno != EEXIST) {
		snprintf(err, errlen, "%s/log: %s", spool, strerror(errno));
		goto fail;
	}
	if ((log->dir_fd = openat(spool_fd, "log",
	    O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		snprintf(err, errlen, "%s/log: %s", spool, strerror(errno));
		goto fail;
	}
	/* Its files are created and synced in it later; the directory's own
	 * name must be durable before the first of them is trusted. */
	if (created && fsync(spool_fd) == -1) {
		snprintf(err, errlen, "%s: fsync: %s", spool, strerror(errno));
		goto fail;
	}
	return log;

 fail:
	spoollog_free(log);
	return NULL;
}

void
spoollog_free(struct spoollog *log)
{
	size_t i;

	if (log == NULL)
		return;
	if (log->wfd != -1)
		close(log->wfd);
	if (log->dir_fd != -1)
		close(log->dir_fd);
	for (i = 0; i < SPOOLLOG_READ_FDS; i++)
		if (log->readfds[i].fd != -1)
			close(log->readfds[i].fd);
	pthread_mutex_destroy(&log->mtx);
	pthread_mutex_destroy(&log->wmtx);
	free(log->files);
	for (i = 0; i < SPOOLLOG_SHARDS; i++)
		free(log->shards[i].slots);
	free(log->stage);
	free(log->staged);
	free(log->bury);
	free(log->spool);
	free(log);
}

/* Adds a file to the table (seq above every other). Locked. */
static struct logfile *
file_add(struct spoollog *log, uint32_t seq)
{
	struct logfile *f;

	log->files = xreallocarray(log->files, log->nfiles + 1,
	    sizeof(*log->files));
	f = &log->files[log->nfiles++];
	memset(f, 0, sizeof(*f));
	f->seq = seq;
	f->delivered = log->clock();
	return f;
}

/* Bytes of the newest file known written: its records, or the zeros
 * written ahead of them if those reach further. Write-locked. */
static uint64_t
newest_written(const struct spoollog *log)
{
	return log->wzero > (uint64_t)log->wend ? log->wzero :
	    (uint64_t)log->wend;
}

/* Notes in the newest file's entry how much of it is written, for when it
 * is retired (file_retire). Write-locked and locked. */
static void
file_keep_written(struct spoollog *log)
{
	struct logfile *f;

	if ((f = file_find(log, log->wseq)) != NULL)
		f->written = newest_written(log);
}

/*
 * Opens log file seq for reading, for the caller to close: with the mutex
 * held, while the file is in the table, so it is not deleted yet (reclaim
 * unlinks a file only after taking it out of the table, and closes its
 * kept descriptor then: file_forget). The descriptor is a duplicate of
 * one kept in log->readfds, which holds the files read last (the least
 * recently taken goes). Reads use pread, so the shared offset does not
 * matter. -1 with errno.
 */
static int
file_open(struct spoollog *log, uint32_t seq)
{
	struct readfd *r, *victim = &log->readfds[0];
	char name[SPOOLLOG_NAME_LEN + 1];
	size_t i;
	int fd;

	for (i = 0; i < SPOOLLOG_READ_FDS; i++) {
		r = &log->readfds[i];
		if (r->fd != -1 && r->seq == seq) {
			r->used = ++log->readtick;
			return fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
		}
		if (victim->fd != -1 && (r->fd == -1 || r->used < victim->used))
			victim = r;
	}
	file_name(seq, name, sizeof(name));
	if ((fd = openat(log->dir_fd, name, O_RDONLY | O_CLOEXEC |
	    O_NOFOLLOW)) == -1)
		return -1;
	if (victim->fd != -1)
		close(victim->fd);
	victim->seq = seq;
	victim->fd = fd;
	victim->used = ++log->readtick;
	return fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

/* Closes the kept descriptor of file seq, if any. Locked. */
static void
file_forget(struct spoollog *log, uint32_t seq)
{
	size_t i;

	for (i = 0; i < SPOOLLOG_READ_FDS; i++)
		if (log->readfds[i].fd != -1 && log->readfds[i].seq == seq) {
			close(log->readfds[i].fd);
			log->readfds[i].fd = -1;
		}
}

/* Takes entry i out of the file table and closes a reader's kept
 * descriptor of it. Locked. */
static struct logfile
file_take(struct spoollog *log, size_t i)
{
	struct logfile f = log->files[i];

	memmove(log->files + i, log->files + i + 1,
	    (log->nfiles - i - 1) * sizeof(*log->files));
	log->nfiles--;
	file_forget(log, f.seq);
	return f;
}

struct replay {
	struct spoollog *log;
	uint32_t seq;
	off_t base;
};

static int
replay_one(const struct logrec *rec, const unsigned char *payload,
    size_t offset, void *arg)
{
	struct replay *r = arg;

	index_apply(r->log, rec->type, rec->id, r->seq,
	    (uint32_t)(r->base + (off_t)offset), rec->len);
	return 0;
}

/* Replays one file up to its first record that does not validate.
 * Returns 1 if what follows there is zeros (the unused preallocated
 * tail), 0 otherwise (the end of the file, a torn or foreign record, or a
 * read error: then f->end may be short of the valid records). */
static int
file_replay(struct spoollog *log, struct logfile *f, int fd)
{
	struct replay r = { log, f->seq, 0 };
	struct logrec rec;
	unsigned char *buf;
	size_t cap = SPOOLLOG_SCAN_WINDOW, valid;
	ssize_t n;
	char name[SPOOLLOG_NAME_LEN + 1];
	int zeros = 0;

	buf = xmalloc(cap);
	for (;;) {
		if ((n = pread(fd, buf, cap, r.base)) == -1) {
			file_name(f->seq, name, sizeof(name));
			log_warn("%s/log/%s: read", log->spool, name);
			f->unread = 1;
			break;
		}
		pthread_mutex_lock(&log->mtx);
		valid = logrec_scan(buf, (size_t)n, f->seq, replay_one, &r);
		pthread_mutex_unlock(&log->mtx);
		r.base += (off_t)valid;
		if (valid > 0)
			continue;
		/* Nothing whole in the window: a record larger than it, or
		 * the end of the valid records. */
		if ((size_t)n == cap && logrec_header_parse(buf, f->seq, &rec) ==
		    LOGREC_VALID && LOGREC_HEADER_LEN + (size_t)rec.len > cap) {
			cap = LOGREC_HEADER_LEN + (size_t)rec.len;
			buf = xreallocarray(buf, cap, 1);
			continue;
		}
		zeros = (size_t)n >= LOGREC_HEADER_LEN &&
		    logrec_header_parse(buf, f->seq, &rec) == LOGREC_ZERO;
		break;
	}
	free(buf);
	f->end = (uint64_t)r.base;
	return zeros;
}

/*
 * Gives back the preallocated space after the records of a replayed file
 * that is not the newest: no record is ever appended to it again (a start
 * goes on in the newest file or a new one, and the spool's lock keeps any
 * other process out), so the zeros after f->end are of no use. Only bytes
 * that replay ignores go, so a crash before, during or after the
 * truncation, or a power cut that forgets it, leaves the same records to
 * the next start, which truncates again. Not synced for that reason.
 */
static void
file_trim(struct spoollog *log, const struct logfile *f, int fd)
{
	struct stat st;
	char name[SPOOLLOG_NAME_LEN + 1];

	if (fstat(fd, &st) == -1 || st.st_size <= (off_t)f->end ||
	    ftruncate(fd, (off_t)f->end) == 0)
		return;
	file_name(f->seq, name, sizeof(name));
	log_warn("%s/log/%s: truncate", log->spool, name);
}

/*
 * Makes the newest replayed file, whose records end cleanly (zeros or the
 * file's end follow them: see file_replay), the file the next records go
 * to, instead of starting a new file at every start: a daemon restarted
 * again and again (a crash loop) otherwise made a file per run, each
 * replayed at every later start until the oldest live message in them
 * went. Everything after f->end is cut off and the file preallocated
 * again (zeros), and that is synced before anything is appended: bytes of
 * the last run beyond its valid records (records written after one that a
 * power cut lost, never synced, so never promised) can then never be read
 * as records after the ones this run writes. The records before f->end,
 * some maybe never synced by the run that wrote them, are in the page
 * cache and go to disk with this sync. A file that is full, whose
 * records end in a torn or foreign record (a media error there would
 * leave records after it that a human may want), or that cannot be
 * preallocated again, is left to replay as before, and the first write
 * starts a new file. Returns 0 if fd is now the newest file's (the log
 * keeps it), -1 if not.
 */
static int
file_continue(struct spoollog *log, struct logfile *f, int fd, int clean)
{
	struct stat st;
	char name[SPOOLLOG_NAME_LEN + 1];

	if (!clean && (fstat(fd, &st) == -1 || st.st_size != (off_t)f->end))
		return -1;
	if (f->end >= log->file_size)
		return -1;
	file_name(f->seq, name, sizeof(name));
	/* As file_new: without room for the whole file, a new one (with its
	 * reserve) will do; without support, appends grow the file. */
	if (ftruncate(fd, (off_t)f->end) == -1 ||
	    (fallocate(fd, 0, 0, (off_t)log->file_size) == -1 &&
	    (errno == ENOSPC || errno == EDQUOT)) || fsync(fd) == -1) {
		log_warn("%s/log/%s: continue", log->spool, name);
		return -1;
	}
	pthread_mutex_lock(&log->wmtx);
	log->wfd = fd;
	log->wseq = f->seq;
	log->wend = (off_t)f->end;
	log->wzero = f->end;	/* the blocks after it were preallocated */
	log->broken = 0;
	log->prealloc = log->file_size;
	pthread_mutex_unlock(&log->wmtx);
	log_debug("%s/log/%s: continued at %" PRIu64, log->spool, name,
	    f->end);
	return 0;
}

static int
seq_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* The seqs of the files in log/, sorted; other names are logged. */
static uint32_t *
list_files(struct spoollog *log, size_t *n)
{
	DIR *d;
	struct dirent *de;
	uint32_t *seqs = NULL;
	unsigned long long v;
	char *end;
	int fd;

	*n = 0;
	if ((fd = openat(log->dir_fd, ".", O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) == -1 || (d = fdopendir(fd)) == NULL) {
		log_warn("%s/log", log->spool);
		if (fd != -1)
			close(fd);
		return NULL;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		v = strtoull(de->d_name, &end, 16);
		if (strlen(de->d_name) != SPOOLLOG_NAME_LEN || *end != '\0' ||
		    v == 0 || v > UINT32_MAX) {
			log_warnx("%s/log: ignoring %s: not a log file name",
			    log->spool, de->d_name);
			continue;
		}
		seqs = xreallocarray(seqs, *n + 1, sizeof(*seqs));
		seqs[(*n)++] = (uint32_t)v;
	}
	closedir(d);
	if (*n > 0)
		qsort(seqs, *n, sizeof(*seqs), seq_cmp);
	return seqs;
}

/*
 * Whether the oldest file may go: nothing live in it and, if it is the one
 * being written (then the only one), it takes no more messages anyway
 * (full, failed, or cut short by a full disk). Locked.
 */
static int
oldest_done(struct spoollog *log)
{
	struct logfile *f;

	if (log->nfiles == 0)
		return 0;
	f = &log->files[0];
	if (f->live > 0)
		return 0;
	if (log->wfd == -1 || f->seq != log->wseq)
		return 1;
	return log->broken || f->end >= log->file_size ||
	    log->prealloc < log->file_size;
}

/*
 * Takes a file out of the log for good: renamed to the seq after every
 * other (last_seq + 1) as a spare, to become a newest file later without
 * a new inode or a preallocation (file_new), while fewer than
 * SPOOLLOG_SPARES wait and it has a whole file's blocks; otherwise
 * deleted. Either way log/ is synced before it returns, so the file's old
 * name never comes back after a crash once a newer file (with the
 * tombstones that bury its messages) may go, and a spare's new name is
 * durable before a record salted with it is written.
 *
 * Why a renamed file's old records are never replayed: they are salted
 * with its old seq (logrec.h), so under its new name the first of them
 * fails its header's checksum and ends the file's records, exactly as the
 * zeros after the end of a fresh file do; and a record salted with its new
 * seq can only have been written under that name, since seqs are never
 * given twice (every file, spares included, has a log/ name, so a start
 * finds last_seq above them all). A power cut after the rename and before
 * the first new record leaves a file with no valid record (retired again
 * at the next start); one that tears a new record, or keeps a later write
 * of it but not an earlier one, ends the records there as in a fresh file:
 * whatever follows, stale or new, is never read.
 *
 * Called write-locked, f out of the table; returns unlocked. A rename
 * holds the write mutex across its directory sync (a spare's seq must
 * stay above the newest file's, which a note may start meanwhile), as
 * file_new's sync of a created file does; about once per file either way.
 * A deletion syncs without it. Returns 0, or -1 with errno (logged).
 */
static int
file_retire(struct spoollog *log, uint32_t seq, uint64_t written)
{
	char name[SPOOLLOG_NAME_LEN + 1], spare[SPOOLLOG_NAME_LEN + 1];
	struct stat st;
	uint32_t to = log->last_seq + 1;
	int error;

	file_name(seq, name, sizeof(name));
	if (log->nspares < SPOOLLOG_SPARES &&
	    fstatat(log->dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISREG(st.st_mode) && (uint64_t)st.st_size >= log->file_size &&
	    (uint64_t)st.st_blocks * 512 >= log->file_size) {
		file_name(to, spare, sizeof(spare));
		if (renameat(log->dir_fd, name, log->dir_fd, spare) == 0) {
			log->last_seq = to;
			if ((error = fsync(log->dir_fd)) == 0) {
				log->spares[log->nspares].seq = to;
				log->spares[log->nspares].written = written;
				log->nspares++;
			}
			pthread_mutex_unlock(&log->wmtx);
			if (error == -1) {
				/* It may come back under either name: with
				 * no valid record under the new one, retired
				 * at the next start. */
				log_warn("%s/log/%s: recycle", log->spool,
				    name);
				return -1;
			}
			log_debug("%s/log/%s: kept as %s", log->spool, name,
			    spare);
			return 0;
		}
		log_warn("%s/log/%s: rename to %s", log->spool, name, spare);
	}
	pthread_mutex_unlock(&log->wmtx);
	if (unlinkat(log->dir_fd, name, 0) == -1 ||
	    fsync(log->dir_fd) == -1) {
		log_warn("%s/log/%s: delete", log->spool, name);
		return -1;
	}
	log_debug("%s/log/%s: deleted", log->spool, name);
	return 0;
}

/* Retires the oldest files (file_retire) while nothing in them is live
 * (oldest_done). Returns the number retired. */
static size_t
reclaim(struct spoollog *log)
{
	struct logfile f;
	size_t n = 0;

	for (;;) {
		pthread_mutex_lock(&log->wmtx);
		pthread_mutex_lock(&log->mtx);
		if (!oldest_done(log)) {
			pthread_mutex_unlock(&log->mtx);
			pthread_mutex_unlock(&log->wmtx);
			return n;
		}
		f = file_take(log, 0);
		/* A drain that emptied f goes on into the next file: from
		 * its first delivery there it has SPOOLLOG_COPY_IDLE, not
		 * from when it became the oldest. A file emptied by copies
		 * passes on nothing newer than the next one has. */
		if (log->nfiles > 0 && log->files[0].delivered < f.delivered)
			log->files[0].delivered = f.delivered;
		pthread_mutex_unlock(&log->mtx);
		if (log->wfd != -1 && f.seq == log->wseq) {
			/* Everything in it is dead, its tombstones too:
			 * no sync needed before it goes. */
			f.written = newest_written(log);
			close(log->wfd);
			log->wfd = -1;
			log->unsynced = 0;
		}
		if (file_retire(log, f.seq, f.written) == -1)
			return n;
		n++;
	}
}

/*
 * The files found at start count as not delivered from for
 * SPOOLLOG_COPY_IDLE already: a start does not know when they last were,
 * and taking it as now (as before) meant that a daemon restarted more
 * often than every 30 s compacted nothing, so a message that waited
 * pinned its file and every later one for as long as the restarts went
 * on. A backlog found at start is still drained where it is: copy_wanted()
 * wants dead bytes a file's worth and twice the oldest file's live ones,
 * which a backlog does not have, and the first delivery from the oldest
 * file (the scheduler takes the messages found at start oldest first)
 * gives it its 30 s again; at most a copy's batch can go before it.
 */
static void
start_idle(struct spoollog *log)
{
	size_t i;

	pthread_mutex_lock(&log->mtx);
	for (i = 0; i < log->nfiles; i++)
		log->files[i].delivered = log->clock() - SPOOLLOG_COPY_IDLE;
	pthread_mutex_unlock(&log->mtx);
}

/*
 * Retires the files that replay read through and found no valid record
 * in (a spare, a file renamed or started just before a crash): they add
 * nothing to the index and bury nothing, so they may go in any order, and
 * as spares they are reused rather than left behind live files. Called by
 * spoollog_recover.
 */
static void
retire_empty(struct spoollog *log)
{
	struct logfile f;
	size_t i = 0;

	for (;;) {
		pthread_mutex_lock(&log->wmtx);
		pthread_mutex_lock(&log->mtx);
		while (i < log->nfiles && (log->files[i].end > 0 ||
		    log->files[i].unread))
			i++;
		if (i == log->nfiles) {
			pthread_mutex_unlock(&log->mtx);
			pthread_mutex_unlock(&log->wmtx);
			return;
		}
		f = file_take(log, i);
		pthread_mutex_unlock(&log->mtx);
		if (file_retire(log, f.seq, 0) == -1)
			return;
	}
}

size_t
spoollog_recover(struct spoollog *log)
{
	struct logfile *f;
	uint32_t *seqs;
	size_t n, i, live;
	char name[SPOOLLOG_NAME_LEN + 1];
	int fd, clean;

	pthread_mutex_lock(&log->mtx);
	log->now = log->clock();
	pthread_mutex_unlock(&log->mtx);
	seqs = list_files(log, &n);
	for (i = 0; i < n; i++) {
		file_name(seqs[i], name, sizeof(name));
		if (seqs[i] > log->last_seq)
			log->last_seq = seqs[i];
		/* Read-write, for file_trim and file_continue. */
		if ((fd = openat(log->dir_fd, name,
		    O_RDWR | O_CLOEXEC | O_NOFOLLOW)) == -1) {
			log_warn("%s/log/%s: open", log->spool, name);
			continue;
		}
		pthread_mutex_lock(&log->mtx);
		f = file_add(log, seqs[i]);
		pthread_mutex_unlock(&log->mtx);
		clean = file_replay(log, f, fd);
		f->written = f->end;
		/* An empty newest file is retired below, like any empty one. */
		if (i + 1 == n && f->end > 0 &&
		    file_continue(log, f, fd, clean) == 0)
			continue;	/* fd is the newest file's now */
		/* A file with no record is retired below, whole. */
		if (clean && f->end > 0)
			file_trim(log, f, fd);
		close(fd);
	}
	free(seqs);
	retire_empty(log);
	start_idle(log);
	reclaim(log);
	pthread_mutex_lock(&log->mtx);
	live = log->nlive;
	pthread_mutex_unlock(&log->mtx);
	return live;
}

void
spoollog_foreach(struct spoollog *log,
    void (*each)(const char *id, void *arg), void *arg)
{
	char id[ENVELOPE_ID_MAX];
	uint64_t *ids = NULL;
	const struct shard *sh;
	size_t i, n = 0;
	uint32_t j;

	pthread_mutex_lock(&log->mtx);
	if (log->nlive > 0)
		ids = xreallocarray(NULL, log->nlive, sizeof(*ids));
	for (i = 0; i < SPOOLLOG_SHARDS; i++) {
		sh = &log->shards[i];
		for (j = 0; j < sh->nslots; j++)
			if (sh->slots[j].id != 0)
				ids[n++] = sh->slots[j].id;
	}
	pthread_mutex_unlock(&log->mtx);
	for (i = 0; i < n; i++) {
		envelope_id_text(ids[i], id, sizeof(id));
		each(id, arg);
	}
	free(ids);
}

int
spoollog_has(struct spoollog *log, const char *id)
{
	int found;

	pthread_mutex_lock(&log->mtx);
	found = index_find(log, envelope_id_number(id)) != NULL;
	pthread_mutex_unlock(&log->mtx);
	return found;
}

/* A copy of id's entry and descriptors of its files (opened for the
 * caller), taken under the lock so a file deleted right after stays
 * readable. */
static int
entry_take(struct spoollog *log, uint64_t id, struct entry *out, int *fd,
    int *st_fd)
{
	struct entry *e;
	struct logfile *f, *sf = NULL;
	int error = 0;

	*fd = *st_fd = -1;
	pthread_mutex_lock(&log->mtx);
	if ((e = index_find(log, id)) == NULL ||
	    (f = file_find(log, e->seq)) == NULL ||
	    (e->st_seq != 0 && (sf = file_find(log, e->st_seq)) == NULL))
		error = ENOENT;
	else if ((*fd = file_open(log, f->seq)) == -1 ||
	    (sf != NULL && (*st_fd = file_open(log, sf->seq)) == -1))
		error = errno;
	else
		*out = *e;
	pthread_mutex_unlock(&log->mtx);
	if (error != 0) {
		if (*fd != -1)
			close(*fd);
		*fd = -1;
		errno = error;
		return -1;
	}
	return 0;
}

/* Reads a record's header and payload at off; checks both. */
static unsigned char *
record_read(struct spoollog *log, int fd, uint32_t seq, uint32_t off,
    uint64_t id, size_t len, struct logrec *rec)
{
	unsigned char *buf;

	buf = xmalloc(LOGREC_HEADER_LEN + len + 1);
	if (fileio_pread_all(fd, buf, LOGREC_HEADER_LEN + len, off) == -1) {
		free(buf);
		return NULL;
	}
	if (logrec_header_parse(buf, seq, rec) != LOGREC_VALID ||
	    rec->id != id || rec->len < len) {
		free(buf);
		errno = EBADMSG;
		return NULL;
	}
	buf[LOGREC_HEADER_LEN + len] = '\0';
	return buf;
}

/* Reads and checks the header of message id's record of the given type
 * at (seq, off). -1 with errno (EBADMSG if it does not check). */
static int
header_read(int fd, uint32_t seq, uint32_t off, uint64_t id,
    enum logrec_type type, struct logrec *rec)
{
	unsigned char hdr[LOGREC_HEADER_LEN];

	if (fileio_pread_all(fd, hdr, sizeof(hdr), off) == -1)
		return -1;
	if (logrec_header_parse(hdr, seq, rec) != LOGREC_VALID ||
	    rec->type != type || rec->id != id || rec->aux > rec->len) {
		errno = EBADMSG;
		return -1;
	}
	return 0;
}

/* Reads the state record at (seq, off) of message id, whatever its length;
 * *len is its payload's. NULL with errno (EBADMSG if it does not check). */
static unsigned char *
state_read(struct spoollog *log, int fd, uint32_t seq, uint32_t off,
    uint64_t id, size_t *len)
{
	struct logrec rec;
	unsigned char *buf;

	if (header_read(fd, seq, off, id, LOGREC_STATE, &rec) == -1)
		return NULL;
	if ((buf = record_read(log, fd, seq, off, id, rec.len, &rec)) != NULL)
		*len = rec.len;
	return buf;
}

/* Decodes a message with its state, from an entry taken by entry_take. */
static struct envelope *
entry_read(struct spoollog *log, const struct entry *e, int fd, int st_fd)
{
	struct envelope *env = NULL;
	struct logrec rec;
	unsigned char *buf = NULL, *sbuf = NULL;
	char id[ENVELOPE_ID_MAX], derr[128];
	size_t used, slen;
	int error = 0;

	envelope_id_text(e->id, id, sizeof(id));
	/* The header first, for the envelope's length: then the envelope
	 * alone (the body is read when it is sent). */
	if (header_read(fd, e->seq, e->off, e->id, LOGREC_MESSAGE,
	    &rec) == -1 || (buf = record_read(log, fd, e->seq, e->off, e->id,
	    rec.aux, &rec)) == NULL) {
		error = errno;
		log_warn("%s: read log record", id);
		goto done;
	}
	if ((env = envelope_decode((char *)buf + LOGREC_HEADER_LEN, rec.aux,
	    &used, derr, sizeof(derr))) == NULL || used != rec.aux ||
	    strcmp(env->id, id) != 0) {
		log_warnx("%s: log record does not decode: %s", id,
		    env == NULL ? derr : "bad envelope");
		envelope_free(env);
		env = NULL;
		error = EBADMSG;
		goto done;
	}
	if (st_fd != -1) {
		errno = 0;
		if ((sbuf = state_read(log, st_fd, e->st_seq, e->st_off,
		    e->id, &slen)) == NULL) {
			error = errno != 0 ? errno : EIO;
			log_warn("%s: read state record", id);
			envelope_free(env);
			env = NULL;
			goto done;
		}
		if (envelope_apply_record(env,
		    (char *)sbuf + LOGREC_HEADER_LEN, slen) == -1)
			log_warnx("%s: ignoring malformed state record", id);
	}
	env->body_offset = (off_t)e->off + LOGREC_HEADER_LEN + rec.aux;
	env->body_size = (off_t)(rec.len - rec.aux);
 done:
	free(buf);
	free(sbuf);
	if (env == NULL)
		errno = error;
	return env;
}

struct envelope *
spoollog_read(struct spoollog *log, const char *id)
{
	struct envelope *env;
	struct entry e;
	int fd, st_fd, error;

	if (entry_take(log, envelope_id_number(id), &e, &fd, &st_fd) == -1)
		return NULL;
	env = entry_read(log, &e, fd, st_fd);
	error = errno;
	close(fd);
	if (st_fd != -1)
		close(st_fd);
	errno = error;
	return env;
}

int
spoollog_body_open(struct spoollog *log, const char *id, off_t *body_offset)
{
	struct entry e;
	struct logrec rec;
	int fd, st_fd, error;

	if (entry_take(log, envelope_id_number(id), &e, &fd, &st_fd) == -1)
		return -1;
	if (st_fd != -1)
		close(st_fd);
	if (header_read(fd, e.seq, e.off, e.id, LOGREC_MESSAGE, &rec) == -1) {
		error = errno;
		close(fd);
		errno = error;
		return -1;
	}
	*body_offset = (off_t)e.off + LOGREC_HEADER_LEN + rec.aux;
	return fd;
}

size_t
spoollog_add(struct spoollog *log, enum logrec_type type, const char *id,
    const void *text, size_t textlen, const void *body, size_t bodylen)
{
	unsigned char *p;
	struct staged *st;
	size_t need = LOGREC_HEADER_LEN + textlen + bodylen, rel;

	if (textlen + bodylen > LOGREC_PAYLOAD_MAX)
		fatalx("%s: record of %zu bytes", __func__, textlen + bodylen);
	if (log->stagelen + need > log->stagecap) {
		log->stagecap = (log->stagelen + need) * 2;
		log->stage = xreallocarray(log->stage, log->stagecap, 1);
	}
	rel = log->stagelen;
	p = log->stage + rel;
	if (textlen > 0)
		memcpy(p + LOGREC_HEADER_LEN, text, textlen);
	if (bodylen > 0)
		memcpy(p + LOGREC_HEADER_LEN + textlen, body, bodylen);
	/* Salted for real once the file is chosen (spoollog_flush). */
	logrec_header(p, 0, type, envelope_id_number(id),
	    type == LOGREC_MESSAGE ? (uint32_t)textlen : 0,
	    p + LOGREC_HEADER_LEN, (uint32_t)(textlen + bodylen));
	log->stagelen += need;
	if (log->nstaged == log->stagedcap) {
		log->stagedcap = log->stagedcap == 0 ? 16 : log->stagedcap * 2;
		log->staged = xreallocarray(log->staged, log->stagedcap,
		    sizeof(*log->staged));
	}
	st = &log->staged[log->nstaged++];
	st->type = type;
	st->id = envelope_id_number(id);
	st->rel = (uint32_t)rel;
	st->len = (uint32_t)(textlen + bodylen);
	st->aux = type == LOGREC_MESSAGE ? (uint32_t)textlen : 0;
	return rel;
}

int
spoollog_pending(const struct spoollog *log)
{
	return log->nstaged > 0;
}

static int sync_locked(struct spoollog *log);

/*
 * Opens the oldest spare as the newest file: its name was made durable when
 * it was renamed (file_retire), so this costs no directory sync. Returns the
 * descriptor, or -1 (logged) when none is left or it cannot be opened (it
 * is then dropped, and the caller creates a file as if none had been
 * there). Write-locked.
 */
static int
spare_take(struct spoollog *log, struct spare *sp)
{
	char name[SPOOLLOG_NAME_LEN + 1];
	int wfd;

	while (log->nspares > 0) {
		*sp = log->spares[0];
		memmove(log->spares, log->spares + 1,
		    --log->nspares * sizeof(*log->spares));
		file_name(sp->seq, name, sizeof(name));
		if ((wfd = openat(log->dir_fd, name, O_WRONLY | O_CLOEXEC |
		    O_NOFOLLOW)) != -1)
			return wfd;
		/* Its seq stays used: last_seq is above it already. */
		log_warn("%s/log/%s: open spare", log->spool, name);
	}
	return -1;
}

/*
 * Starts the next log file: a spare (see file_retire) when there is one,
 * otherwise log/<seq> created, preallocated, and its name made durable by a
 * sync of log/ (once per file, never per message). Write-locked; a note
 * calls it only when there is no newest file, so it never syncs one.
 */
static int
file_new(struct spoollog *log)
{
	char name[SPOOLLOG_NAME_LEN + 1];
	struct spare sp;
	uint32_t seq = log->last_seq + 1;
	size_t prealloc;
	uint64_t wzero = 0;
	int wfd = -1, error;

	if ((wfd = spare_take(log, &sp)) != -1) {
		seq = sp.seq;
		wzero = sp.written;
		prealloc = log->file_size;
		log->recycled++;
		file_name(seq, name, sizeof(name));
		goto started;
	}
	file_name(seq, name, sizeof(name));
	if ((wfd = openat(log->dir_fd, name, O_WRONLY | O_CREAT | O_EXCL |
	    O_CLOEXEC | O_NOFOLLOW, 0600)) == -1)
		goto fail;
	log->last_seq = seq;
	/*
	 * Preallocated so that appends change no size and never run out of
	 * space. With no room for a whole file, a reserve will do (see
	 * SPOOLLOG_RESERVE); with no room for that either, no file. Without
	 * support (or under a file size limit) appends grow the file.
	 */
	prealloc = log->file_size;
	if (fallocate(wfd, 0, 0, (off_t)log->file_size) == -1 &&
	    (errno == ENOSPC || errno == EDQUOT)) {
		prealloc = 2 * SPOOLLOG_RESERVE < log->file_size ?
		    2 * SPOOLLOG_RESERVE : log->file_size;
		if (fallocate(wfd, 0, 0, (off_t)prealloc) == -1 &&
		    (errno == ENOSPC || errno == EDQUOT))
			goto fail_unlink;
		log_warnx("%s/log/%s: disk nearly full: %zu bytes "
		    "preallocated", log->spool, name, prealloc);
	}
	if (fsync(log->dir_fd) == -1)
		goto fail_unlink;
 started:
	if (log->wfd != -1) {
		/* Tombstones written lazily to the old file: synced before
		 * anything goes to the new one, so the files never disagree
		 * about what a power cut kept. */
		(void)sync_locked(log);
		close(log->wfd);
	}
	pthread_mutex_lock(&log->mtx);
	file_keep_written(log);
	file_add(log, seq);
	pthread_mutex_unlock(&log->mtx);
	log->wfd = wfd;
	log->wseq = seq;
	log->wend = 0;
	log->wzero = wzero;
	log->broken = 0;
	log->prealloc = prealloc;
	log_debug("%s/log/%s: started%s", log->spool, name,
	    wzero > 0 ? " (reused)" : "");
	return 0;

 fail_unlink:
	error = errno;
	(void)unlinkat(log->dir_fd, name, 0);
	errno = error;
 fail:
	error = errno;
	log_warn("%s/log/%s: create", log->spool, name);
	if (wfd != -1)
		close(wfd);
	errno = error;
	return -1;
}

/*
 * Writes zeros ahead of the newest file's records (SPOOLLOG_FILL_AHEAD)
 * where its blocks were not written before, so that the next groups'
 * syncs find them written. Only bytes after every record are written, and
 * zeros there read as the end of the records, as the preallocation did, so
 * a power cut that keeps any part of this write, or none, changes nothing
 * replay sees. A failure only ends the filling of this file. Write-locked,
 * with the file's records written up to wend.
 */
static void
fill_ahead(struct spoollog *log)
{
	static const unsigned char zeros[64 * 1024];
	char name[SPOOLLOG_NAME_LEN + 1];
	uint64_t from, to, end = (uint64_t)log->wend;
	size_t n;

	if (log->wzero < end)
		log->wzero = end;
	if (log->wzero >= log->prealloc ||
	    log->wzero >= end + SPOOLLOG_FILL_AHEAD / 2)
		return;
	from = log->wzero;
	to = end + SPOOLLOG_FILL_AHEAD;
	if (to > log->prealloc)
		to = log->prealloc;
	for (; from < to; from += n) {
		n = to - from < sizeof(zeros) ? (size_t)(to - from) :
		    sizeof(zeros);
		if (fileio_pwrite_all(log->wfd, zeros, n, (off_t)from) == -1) {
			file_name(log->wseq, name, sizeof(name));
			log_warn("%s/log/%s: write zeros", log->spool, name);
			to = log->prealloc;
			break;
		}
		log->zeroed += n;
	}
	log->wzero = to;
}

static int
staged_messages(const struct spoollog *log)
{
	size_t i;

	for (i = 0; i < log->nstaged; i++)
		if (log->staged[i].type == LOGREC_MESSAGE)
			return 1;
	return 0;
}

/*
 * Whether the staged records, messages among them, go in the newest file
 * at end: it is not full, and in a file cut short by a full disk they
 * leave SPOOLLOG_RESERVE for the state records and tombstones to come.
 * (Those alone always go to the newest file, full or not.)
 */
static int
room_for_messages(const struct spoollog *log, off_t end)
{
	if ((size_t)end >= log->file_size)
		return 0;
	return log->prealloc >= log->file_size ||
	    (size_t)end + log->stagelen + SPOOLLOG_RESERVE <= log->prealloc;
}

/*
 * Stages, after the copies forward staged, the state records that notes
 * wrote for those messages since copy_forward() read them: a copy
 * replaces every state before it, so such a note must follow it again.
 * Write-locked, so no other note comes in before the copies are written;
 * a note written after them lies after them and needs nothing. Returns
 * -1 with errno if such a note cannot be read back (then the copies must
 * not be written: they would undo it).
 */
static int
restate_copies(struct spoollog *log, const struct entry *copies, size_t n)
{
	struct entry *e, now;
	struct logfile *f;
	unsigned char *buf;
	size_t i, len;
	char id[ENVELOPE_ID_MAX];
	int fd, error;

	for (i = 0; i < n; i++) {
		fd = -2;
		error = 0;
		pthread_mutex_lock(&log->mtx);
		if ((e = index_find(log, copies[i].id)) != NULL &&
		    e->st_seq != 0 && (e->st_seq != copies[i].st_seq ||
		    e->st_off != copies[i].st_off)) {
			now = *e;
			if ((f = file_find(log, e->st_seq)) == NULL)
				error = ENOENT;
			else if ((fd = file_open(log, f->seq)) == -1)
				error = errno;
		}
		pthread_mutex_unlock(&log->mtx);
		if (fd == -2)
			continue;
		envelope_id_text(copies[i].id, id, sizeof(id));
		buf = NULL;
		if (error == 0 && (buf = state_read(log, fd, now.st_seq,
		    now.st_off, now.id, &len)) == NULL)
			error = errno;
		if (fd >= 0)
			close(fd);
		if (buf == NULL) {
			errno = error;
			log_warn("%s: read a note to copy forward", id);
			errno = error;
			return -1;
		}
		spoollog_add(log, LOGREC_STATE, id, buf + LOGREC_HEADER_LEN,
		    len, NULL, 0);
		free(buf);
	}
	return 0;
}

/* spoollog_flush(), and for copy_forward() the state each copied message
 * had when it was read (restate_copies). */
static int
flush_records(struct spoollog *log, int sync, off_t *base,
    const struct entry *copies, size_t ncopies)
{
	off_t end;
	size_t i;
	char name[ENVELOPE_ID_MAX];
	int error, fd;

	for (i = 0; i < log->nbury; i++) {
		envelope_id_text(log->bury[i], name, sizeof(name));
		spoollog_add(log, LOGREC_DONE, name, NULL, 0, NULL, 0);
	}
	pthread_mutex_lock(&log->wmtx);
	if (ncopies > 0 && restate_copies(log, copies, ncopies) == -1) {
		error = errno;
		pthread_mutex_unlock(&log->wmtx);
		errno = error;
		return -1;
	}
	end = log->wend;
	if (log->wfd == -1 || log->broken ||
	    (uint64_t)end + log->stagelen > UINT32_MAX ||
	    (staged_messages(log) && !room_for_messages(log, end))) {
		if (file_new(log) == -1) {
			error = errno;
			pthread_mutex_unlock(&log->wmtx);
			errno = error;
			return -1;
		}
		end = 0;
	}
	for (i = 0; i < log->nstaged; i++)
		logrec_header_resalt(log->stage + log->staged[i].rel,
		    log->wseq);
	log->flushed_base = end;
	log->flushed_seq = log->wseq;
	*base = end;
	fd = log->wfd;
	file_name(log->wseq, name, sizeof(name));
	/* From here on a failure leaves bytes that may be torn: the file
	 * is never appended to again (see spoollog_discard). */
	log->written = 1;
	log->wend = end + (off_t)log->stagelen;
	if (fileio_pwrite_all(fd, log->stage, log->stagelen, end) == -1) {
		error = errno;
		log->broken = 1;
		pthread_mutex_unlock(&log->wmtx);
		log_warn("%s/log/%s: write", log->spool, name);
		errno = error;
		return -1;
	}
	fill_ahead(log);
	pthread_mutex_unlock(&log->wmtx);
	/* Notes written meanwhile go after these records; this sync covers
	 * those written before them. */
	if (sync && fdatasync(fd) == -1) {
		error = errno;
		pthread_mutex_lock(&log->wmtx);
		log->broken = 1;
		pthread_mutex_unlock(&log->wmtx);
		log_warn("%s/log/%s: fdatasync", log->spool, name);
		errno = error;
		return -1;
	}
	log->unsynced = !sync;
	return 0;
}

int
spoollog_flush(struct spoollog *log, int sync, off_t *base)
{
	return flush_records(log, sync, base, NULL, 0);
}

int
spoollog_note(struct spoollog *log, const char *id, const void *text,
    size_t textlen)
{
	unsigned char *rec;
	struct entry *e;
	struct logfile *f;
	uint64_t num = envelope_id_number(id);
	size_t len = LOGREC_HEADER_LEN + textlen;
	char name[SPOOLLOG_NAME_LEN + 1];
	off_t at;
	int error = 0;

	if (textlen > LOGREC_PAYLOAD_MAX) {
		errno = EMSGSIZE;
		return -1;
	}
	rec = xmalloc(len);
	memcpy(rec + LOGREC_HEADER_LEN, text, textlen);
	pthread_mutex_lock(&log->wmtx);
	/* After a restart the first file is started by whichever write
	 * comes first; after a failure only the commit thread starts one
	 * (it syncs the old file first). */
	if (log->wfd == -1 && file_new(log) == -1)
		error = errno;
	else if (log->broken)
		error = EIO;
	else if ((uint64_t)log->wend + len > UINT32_MAX)
		error = EFBIG;
	if (error != 0)
		goto done;
	at = log->wend;
	logrec_header(rec, log->wseq, LOGREC_STATE, num, 0,
	    rec + LOGREC_HEADER_LEN, (uint32_t)textlen);
	/* Written at the file's end of records: in the page cache when it
	 * returns, so it outlives the process without a sync. */
	if (fileio_pwrite_all(log->wfd, rec, len, at) == -1) {
		error = errno;
		/* Part of it may be there: nothing goes after it. */
		log->broken = 1;
		file_name(log->wseq, name, sizeof(name));
		log_warn("%s/log/%s: note %s", log->spool, name, id);
		goto done;
	}
	log->wend = at + (off_t)len;
	/* Readers see it now, as a restart after a crash of the process
	 * would. */
	pthread_mutex_lock(&log->mtx);
	if ((f = file_find(log, log->wseq)) != NULL &&
	    f->end < (uint64_t)log->wend)
		f->end = (uint64_t)log->wend;
	if ((e = index_find(log, num)) != NULL) {
		e->st_seq = log->wseq;
		e->st_off = (uint32_t)at;
	}
	pthread_mutex_unlock(&log->mtx);
 done:
	pthread_mutex_unlock(&log->wmtx);
	free(rec);
	errno = error;
	return error == 0 ? 0 : -1;
}

int
spoollog_unsynced(const struct spoollog *log)
{
	return log->unsynced;
}

void
spoollog_synced(struct spoollog *log)
{
	log->unsynced = 0;
}

/* spoollog_sync() with the write mutex held. */
static int
sync_locked(struct spoollog *log)
{
	char name[SPOOLLOG_NAME_LEN + 1];

	if (!log->unsynced || log->wfd == -1)
		return 0;
	log->unsynced = 0;
	if (fdatasync(log->wfd) == 0)
		return 0;
	/* Only tombstones and notes wait for this sync: a power cut may now
	 * bring their messages back, to be delivered once more. */
	file_name(log->wseq, name, sizeof(name));
	log_warn("%s/log/%s: fdatasync", log->spool, name);
	log->broken = 1;
	return -1;
}

int
spoollog_sync(struct spoollog *log)
{
	char name[SPOOLLOG_NAME_LEN + 1];
	int fd;

	/* Only this thread closes or replaces a file it may read here, so
	 * the sync itself runs without the write mutex. */
	pthread_mutex_lock(&log->wmtx);
	fd = log->wfd;
	file_name(log->wseq, name, sizeof(name));
	pthread_mutex_unlock(&log->wmtx);
	if (!log->unsynced || fd == -1)
		return 0;
	log->unsynced = 0;
	if (fdatasync(fd) == 0)
		return 0;
	log_warn("%s/log/%s: fdatasync", log->spool, name);
	pthread_mutex_lock(&log->wmtx);
	log->broken = 1;
	pthread_mutex_unlock(&log->wmtx);
	return -1;
}

void
spoollog_commit(struct spoollog *log)
{
	struct logfile *f;
	struct staged *st;
	size_t i;

	pthread_mutex_lock(&log->mtx);
	log->now = log->clock();
	/* Notes may already lie beyond these records. */
	if ((f = file_find(log, log->flushed_seq)) != NULL &&
	    f->end < (uint64_t)log->flushed_base + log->stagelen)
		f->end = (uint64_t)log->flushed_base + log->stagelen;
	for (i = 0; i < log->nstaged; i++) {
		st = &log->staged[i];
		index_apply(log, st->type, st->id, log->flushed_seq,
		    (uint32_t)log->flushed_base + st->rel, st->len);
	}
	pthread_mutex_unlock(&log->mtx);
	log->stagelen = 0;
	log->nstaged = 0;
	log->nbury = 0;
	log->written = 0;
}

/* spoollog_discard(); bury 0 for copies forward, whose messages live on
 * in their older records (a copy that reached the disk anyway is a
 * harmless duplicate of the message, as it was when read). */
static void
discard(struct spoollog *log, int bury)
{
	size_t i, n = 0;

	/* Records that reached the file, unsynced or torn: never append
	 * after them. (A failure before the write, such as no room for a
	 * new file, leaves the newest file as good as it was.) */
	if (log->written) {
		pthread_mutex_lock(&log->wmtx);
		log->broken = 1;
		pthread_mutex_unlock(&log->wmtx);
	}
	log->written = 0;
	/* The tombstones already staged for earlier failures stay listed;
	 * add this flush's messages. */
	for (i = 0; bury && i < log->nstaged; i++)
		if (log->staged[i].type == LOGREC_MESSAGE)
			n++;
	log->bury = xreallocarray(log->bury, log->nbury + n + 1,
	    sizeof(*log->bury));
	for (i = 0; bury && i < log->nstaged; i++)
		if (log->staged[i].type == LOGREC_MESSAGE)
			log->bury[log->nbury++] = log->staged[i].id;
	log->stagelen = 0;
	log->nstaged = 0;
}

void
spoollog_discard(struct spoollog *log)
{
	discard(log, 1);
}

void
spoollog_file_size(struct spoollog *log, size_t size)
{
	log->file_size = size;
}

void
spoollog_clock(struct spoollog *log, int64_t (*clock)(void))
{
	pthread_mutex_lock(&log->mtx);
	log->clock = clock;
	pthread_mutex_unlock(&log->mtx);
}

/*
 * Whether to copy the oldest file's live messages forward: when no
 * message of it was delivered for SPOOLLOG_COPY_IDLE (its messages wait;
 * a file being drained is left to the drain), and the dead bytes in the
 * files (other than the newest) are at least twice its live bytes and at
 * least a file's worth, so that copying frees more than it writes and a
 * small spool is left alone. Locked.
 */
static int
copy_wanted(struct spoollog *log)
{
	uint64_t dead = 0;
	size_t i;

	if (log->nfiles < 2 || log->files[0].seq == log->wseq ||
	    log->clock() - log->files[0].delivered < SPOOLLOG_COPY_IDLE)
		return 0;
	for (i = 0; i < log->nfiles; i++)
		if (log->files[i].seq != log->wseq)
			dead += log->files[i].end - log->files[i].live_bytes;
	return dead >= log->file_size &&
	    dead >= 2 * log->files[0].live_bytes;
}

/* Copies of up to max entries whose message record is in file f, in *n.
 * Locked. */
static struct entry *
index_collect(struct spoollog *log, const struct logfile *f, size_t max,
    size_t *n)
{
	struct entry *out = NULL;
	const struct shard *sh;
	size_t i;
	uint32_t j;

	*n = 0;
	if (max > f->live)
		max = f->live;
	for (i = 0; i < SPOOLLOG_SHARDS && *n < max; i++) {
		sh = &log->shards[i];
		for (j = 0; j < sh->nslots && *n < max; j++) {
			if (sh->slots[j].id == 0 || sh->slots[j].seq != f->seq)
				continue;
			out = xreallocarray(out, *n + 1, sizeof(*out));
			out[(*n)++] = sh->slots[j];
		}
	}
	return out;
}

/*
 * Copies up to SPOOLLOG_COPY_MAX live messages of the oldest file to the
 * newest, with their current state in the envelope. A note (from the
 * loop) may come in for one of them while it is copied: one written
 * before the copy is written follows it again (restate_copies), one
 * written after it lies after it anyway, and the index keeps whichever
 * state record lies last (index_apply). A copy that fails leaves the
 * messages where they were, and the next call tries again.
 */
static void
copy_forward(struct spoollog *log)
{
	struct entry *todo, e;
	struct envelope *env;
	size_t i, n, textlen;
	char id[ENVELOPE_ID_MAX], *text, *body;
	int fd, st_fd, copied = 0;
	off_t base;

	pthread_mutex_lock(&log->mtx);
	todo = index_collect(log, &log->files[0], SPOOLLOG_COPY_MAX, &n);
	pthread_mutex_unlock(&log->mtx);
	for (i = 0; i < n; i++) {
		if (entry_take(log, todo[i].id, &e, &fd, &st_fd) == -1)
			continue;
		env = entry_read(log, &e, fd, st_fd);
		body = NULL;
		if (env != NULL) {
			body = xmalloc((size_t)env->body_size + 1);
			if (fileio_pread_all(fd, body, (size_t)env->body_size,
			    env->body_offset) == -1) {
				log_warn("%s: read log record", env->id);
				free(body);
				body = NULL;
			}
		}
		close(fd);
		if (st_fd != -1)
			close(st_fd);
		if (body != NULL) {
			envelope_id_text(e.id, id, sizeof(id));
			text = envelope_encode(env, &textlen);
			spoollog_add(log, LOGREC_MESSAGE, id, text, textlen,
			    body, (size_t)env->body_size);
			free(text);
			/* The state it was read with, for restate_copies. */
			todo[copied++] = e;
		}
		free(body);
		envelope_free(env);
	}
	if (copied == 0 || flush_records(log, 1, &base, todo,
	    (size_t)copied) == -1) {
		discard(log, 0);
		free(todo);
		return;
	}
	free(todo);
	spoollog_commit(log);
	pthread_mutex_lock(&log->mtx);
	log->copied += (unsigned long)copied;
	pthread_mutex_unlock(&log->mtx);
	log_debug("%s/log: copied %d messages forward", log->spool, copied);
}

void
spoollog_maintain(struct spoollog *log)
{
	int want;

	if (log->nstaged > 0)
		fatalx("%s: records staged", __func__);
	reclaim(log);
	pthread_mutex_lock(&log->wmtx);
	pthread_mutex_lock(&log->mtx);
	want = copy_wanted(log);
	pthread_mutex_unlock(&log->mtx);
	pthread_mutex_unlock(&log->wmtx);
	if (want) {
		copy_forward(log);
		reclaim(log);
	}
}

void
spoollog_stats(struct spoollog *log, struct spoollog_stats *out)
{
	size_t i;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&log->wmtx);
	out->spares = log->nspares;
	out->recycled = log->recycled;
	out->zeroed = log->zeroed;
	pthread_mutex_unlock(&log->wmtx);
	pthread_mutex_lock(&log->mtx);
	out->messages = log->nlive;
	out->files = log->nfiles;
	for (i = 0; i < log->nfiles; i++) {
		out->bytes += log->files[i].end;
		out->live_bytes += log->files[i].live_bytes;
	}
	out->copied = log->copied;
	pthread_mutex_unlock(&log->mtx);
}
