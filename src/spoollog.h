/*
 * The spool log: where small messages live, so that committing one costs
 * one fdatasync of a file that already exists instead of a file of its
 * own, its data sync, a rename and a directory sync. queue.c decides which
 * messages go here and drives it from its commit thread; this module owns
 * <spool>/log and an index of the messages in it.
 *
 * The log is a sequence of files log/<seq> (16 hex digits, seq counting up
 * from 1, never given twice), holding records (logrec.h) salted with seq: a
 * message (its envelope text, state included, then its body), a state
 * record for a message (replacing the state of any earlier record of it),
 * or a tombstone (the message is done). Only the newest file is appended
 * to; a restart goes on appending to it when its records end cleanly, else
 * the next newest file is started (see spoollog_recover), so restarts do
 * not add files. Replaying every file in seq order, each up to its first
 * record that does not validate, gives the live messages: a message record
 * adds its id (or moves it, when it is a copy), a tombstone removes it.
 *
 * A newest file is a dead one reused when there is one (see Reclaiming),
 * its blocks written and synced in its earlier life, so a commit's
 * fdatasync writes the data and flushes the cache but changes no extent;
 * otherwise a new file, preallocated (the space it did not use is given
 * back at the next start), its name made durable by one directory sync,
 * and written with zeros a little ahead of its records, so that not every
 * sync has to convert preallocated extents in the file system's journal.
 *
 * Reclaiming. A file is retired when it is the oldest and none of its
 * messages is live, and the directory is synced before the next one goes,
 * so a tombstone never disappears while the message it buries can still
 * come back. Up to two retired files are kept as spares: renamed to the
 * seqs after the newest (their old records, salted with their old seq,
 * then end their replay as zeros would), to be the next newest files. The
 * others are deleted. A long-deferred message would pin its file, and every newer
 * file behind it, forever: so when the dead bytes behind the oldest file
 * outweigh its live ones and none of its messages was delivered for 30
 * seconds (the files found at start count as idle that long already), its
 * live messages are copied forward (a new message record
 * with their current state, followed by any note written for them while
 * they were copied) and, once the copies are synced, the old file goes.
 * A file being drained is left alone: its messages are delivered from
 * where they are, rather than written twice. Disk use stays within a few
 * times the live data plus four files (two of them spares), once the mail
 * that waits has waited 30 seconds.
 *
 * Memory: a 28-byte entry per live message in open-addressing hash tables
 * (64 shards, each grown by a quarter when 7/8 full: 32 to 40 bytes a
 * message). Only the newest log file is held open for writing, and the
 * four files read last for readers (a read takes a duplicate of a kept
 * descriptor, or opens the file it needs), so descriptors do not grow
 * with the log.
 *
 * Threads: spoollog_add(), spoollog_flush(), spoollog_maintain() run on one
 * thread at a time (the queue's commit thread, or the loop for a lone
 * commit; queue.c hands the log from one to the other under its mutex,
 * never both at once); spoollog_note() and the readers
 * (spoollog_has, spoollog_read, spoollog_body_open, spoollog_foreach) on
 * any thread.
 */
#ifndef SMARTHOST_SPOOLLOG_H
#define SMARTHOST_SPOOLLOG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "envelope.h"
#include "logrec.h"

struct spoollog;

/* Creates <spool>/log if needed (syncing the spool directory) and opens
 * it. Returns NULL with a message in err. */
struct spoollog *spoollog_open(int spool_fd, const char *spool, char *err,
    size_t errlen);
void spoollog_free(struct spoollog *log);

/*
 * Replays every log file (see above), builds the index, and returns the
 * number of live messages. The newest file, if it has records, they end
 * cleanly (zeros or the file's end follow them) and it is not full, is
 * the one written next: what lies after its records is cut off, it is
 * preallocated again and synced before anything is appended, so no stale
 * byte of it can ever be read after a new record. The other files' unused
 * preallocated tails (the zeros after their records: they are never
 * appended to again) are truncated, and files with nothing live in them
 * are retired (spares kept from the last run among them: renamed again).
 * Call once, before anything else. Unreadable files are logged and kept.
 */
size_t spoollog_recover(struct spoollog *log);

/* Calls each(id) for every live message; id is its 16-digit queue id. */
void spoollog_foreach(struct spoollog *log,
    void (*each)(const char *id, void *arg), void *arg);

/* 1 if the message with this queue id lives in the log. */
int spoollog_has(struct spoollog *log, const char *id);

/*
 * Reads a live message's envelope with its latest state applied and sets
 * body_offset and body_size within its log file. Returns NULL with errno
 * ENOENT (not in the log), EBADMSG (its record does not decode; logged),
 * or a read error (logged).
 */
struct envelope *spoollog_read(struct spoollog *log, const char *id);

/*
 * Opens the log file that holds the message's body now and stores where
 * the body starts in it in *body_offset (it moves when the message is
 * copied forward). Returns a descriptor the caller closes, or -1 with
 * errno (ENOENT: not in the log; EBADMSG: its record's header does not
 * check; or a read error).
 */
int spoollog_body_open(struct spoollog *log, const char *id,
    off_t *body_offset);

/*
 * Commit thread. spoollog_add() stages one record for the next flush and
 * returns its offset from the start of the staged bytes: a message record
 * (text is the envelope, aux its length, then body), a state record (text
 * is the line) or a tombstone (no text). spoollog_flush() appends what is
 * staged to the newest log file (starting a new one when it is full) and
 * syncs it unless sync is 0 (the caller syncs the whole filesystem);
 * then spoollog_commit() applies the staged records to the index, or
 * spoollog_discard() drops them after a failure (sync or otherwise: the
 * file they went to is never appended to again). Returns 0 or -1 with
 * errno from spoollog_flush(), and in *base the file offset the staged
 * offsets start at.
 */
size_t spoollog_add(struct spoollog *log, enum logrec_type type,
    const char *id, const void *text, size_t textlen, const void *body,
    size_t bodylen);
int spoollog_pending(const struct spoollog *log);
int spoollog_flush(struct spoollog *log, int sync, off_t *base);
void spoollog_commit(struct spoollog *log);
void spoollog_discard(struct spoollog *log);
/*
 * Any thread (the event loop's): appends a state record for a live message
 * to the newest log file at once, with write(2) and without a sync, and
 * points the index at it. It outlives a crash of the process, where replay
 * reads it as any state record; a power cut before the file's next sync
 * may tear it or lose it, and a torn record fails its CRC, which ends the
 * file's replay there: the message keeps its previous state, and nothing
 * synced follows a note that was not (the write mutex, see spoollog.c).
 * A later state record or tombstone of the message must still follow to
 * make the outcome durable. It waits for a commit thread's write into the
 * page cache, and after a restart may start the first file itself.
 * Returns 0, or -1 with errno: EIO (the newest file failed and none was
 * started since), the write's or the file creation's error (the file is
 * then never appended to again, so nothing follows a partial note).
 */
int spoollog_note(struct spoollog *log, const char *id, const void *text,
    size_t textlen);
/*
 * Written without a sync (spoollog_flush with sync 0): spoollog_unsynced()
 * says so until a later flush with sync, spoollog_synced() (the caller
 * synced the filesystem) or spoollog_sync() (fdatasync now; -1 if it
 * failed, logged). Starting a new file syncs the old one first.
 */
int spoollog_unsynced(const struct spoollog *log);
void spoollog_synced(struct spoollog *log);
int spoollog_sync(struct spoollog *log);

/*
 * Commit thread, between groups: retires the oldest files while nothing
 * in them is live, and copies a bounded number of the oldest file's live
 * messages forward when that frees enough. Errors are logged and retried
 * on the next call.
 */
void spoollog_maintain(struct spoollog *log);

/* The size at which a log file is full (8 MB unless set; tests use
 * small ones to exercise reclaiming). */
void spoollog_file_size(struct spoollog *log, size_t size);
/* The clock, in seconds, that says how long a file went without a
 * delivery (CLOCK_MONOTONIC's unless set; tests set their own). Called on
 * any thread, with the log's mutex held. */
void spoollog_clock(struct spoollog *log, int64_t (*clock)(void));

struct spoollog_stats {
	size_t messages;	/* live messages */
	size_t files;		/* log files */
	uint64_t bytes;		/* bytes of records in them */
	uint64_t live_bytes;	/* of which live message records */
	unsigned long copied;	/* messages copied forward since start */
	size_t spares;		/* dead files kept for reuse, not in files */
	unsigned long recycled;	/* newest files that were spares, since start */
	uint64_t zeroed;	/* bytes of zeros written ahead, since start */
};
void spoollog_stats(struct spoollog *log, struct spoollog_stats *out);

#endif
