/*
 * The spool: the only code that touches queued files. It knows nothing about
 * SMTP. A message is written to a temporary file as it streams in, then
 * committed: the commit thread groups every message waiting for commit,
 * syncs them all at once (fdatasync per file, or one syncfs), renames them
 * into the queue and syncs the directory once. Only then does the commit
 * callback run, on the loop thread, so a 250 is never sent for a message
 * that a crash could lose. Concurrent sessions share syncs (group commit).
 *
 * Small messages (queue_log_max()) are committed to the spool log instead
 * (spoollog.h): one append and one fdatasync per group, no file and no
 * directory sync per message. The others are one file per message: "<id>"
 * in <spool>/queue holds the encoded envelope,
 * the body, then appended state records (see envelope.h). A removed
 * message's file may be kept in spare/ and reused for a later message
 * instead of being unlinked. Files in tmp/ and spare/ are never taken for
 * messages (queue_scan() and queue_load() empty both); files that cannot
 * be read are moved to corrupt/ with a log line.
 *
 * Descriptors: the queue holds its directories, up to QUEUE_SPARES idle
 * spare files, and the files of the group being synced (at most
 * QUEUE_GROUP_MAX operations per group), whatever the number of queued
 * messages. Out of descriptors when opening a file, its threads wait and
 * retry for about a second before reporting EMFILE or ENFILE.
 */
#ifndef SMARTHOST_QUEUE_H
#define SMARTHOST_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <event2/event.h>

#include "config.h"
#include "envelope.h"

struct queue;
struct queue_txn;

/* Creates <spool>/{tmp,queue,corrupt,spare} as needed, opens them, takes
 * an exclusive flock(2) on the spool directory, replays the spool log and
 * starts the commit thread. log_file_size is the size at which a log file
 * is full (spool_log_file_size; 0 for the default, 8 MB): the replay
 * already uses it, since it may go on writing in the newest file. The lock is held until queue_close(), so a second queue on the
 * same spool, in this process or another, fails with "in use by another
 * process". Returns NULL with a message in err on failure. */
struct queue *queue_open(struct event_base *base, const char *spool,
    enum spool_sync sync, size_t log_file_size, char *err, size_t errlen);
/* Waits for pending commits and updates, stops threads, frees. Accepts
 * NULL. Must be called on the loop thread. */
void queue_close(struct queue *q);

/*
 * Start-up, the fast way: removes the leftovers in tmp/ and spare/, then
 * calls each(id, arg) for every queue id in queue/, in directory order,
 * reading names only (a million messages take about a second). Names that
 * are not queue ids, and entries that are not regular files, are moved to
 * corrupt/ with a log line. Returns the number of ids. Call it once, before
 * the first queue_txn_begin(); read the envelopes later with queue_read().
 */
size_t queue_scan(struct queue *q, void (*each)(const char *id, void *arg),
    void *arg);
/*
 * Reads one committed message: its envelope with the state records
 * applied (a torn last record is cut off the file). Blocking; safe on any
 * thread, so call it off the loop (worker pool) but never while a
 * queue_update() or queue_remove() of the same message is in progress.
 * Returns a new envelope the caller owns, or NULL with errno: ENOENT if
 * the message is gone, EBADMSG if the file was unreadable and has been
 * moved to corrupt/ (logged), or a transient error such as EMFILE or EIO
 * (logged; the file is left in place, try again later).
 */
struct envelope *queue_read(struct queue *q, const char *id);

/* When the message with queue id id was queued (its id holds the time,
 * to the millisecond, borrowed ahead by at most a little when thousands
 * arrive in one millisecond). */
time_t queue_id_time(const char *id);

/*
 * queue_read for looking only (smarthostctl queue, show): opens the file
 * read-only and changes nothing in the spool, so it may run on any thread
 * while the message is being delivered, updated or removed. Then it may
 * miss the newest state record, and a message removed meanwhile (its file
 * gone, or reused for another message) gives NULL. Returns a new envelope
 * the caller owns, or NULL with errno: ENOENT (gone), EBADMSG (unreadable
 * now; nothing is moved to corrupt/ or logged), or a transient error.
 */
struct envelope *queue_peek(struct queue *q, const char *id);

/*
 * Reads every committed message at start-up, calling each(env, arg) with a
 * new envelope the callee owns, in id order, which is arrival order.
 * Unreadable or truncated files are moved to corrupt/ with a log line.
 * Returns the number of messages loaded.
 * Call it once, before the first queue_txn_begin(): it deletes everything
 * in tmp/ and spare/. It reads synchronously on the caller's thread, which
 * is acceptable only at start-up.
 */
size_t queue_load(struct queue *q,
    void (*each)(struct envelope *env, void *arg), void *arg);

/*
 * Starts a message: assigns a fresh id (env->id is overwritten in the
 * txn's own copy; read it with queue_txn_id()), creates the temporary file
 * and writes the envelope. Returns NULL with errno set (ENOSPC, EIO, ...).
 */
struct queue_txn *queue_txn_begin(struct queue *q, const struct envelope *env);
const char *queue_txn_id(const struct queue_txn *txn);
/* Appends body bytes. Returns 0, or -1 with errno. After a failure later
 * writes are ignored and also return -1 with errno set to that first
 * error (so a caller may stop reading the body early or not); the commit
 * reports the first error. */
int queue_txn_write(struct queue_txn *txn, const void *buf, size_t len);
/* Bytes of body written so far. */
off_t queue_txn_size(const struct queue_txn *txn);

/*
 * Called on the loop thread when a commit finished: error is 0 and env the
 * committed envelope (the callee owns it), or error is an errno value, env
 * is NULL and nothing of the message remains in the spool.
 */
typedef void (*queue_commit_cb)(int error, struct envelope *env, void *arg);
/* Finishes the message durably in the background; consumes txn. */
void queue_txn_commit(struct queue_txn *txn, queue_commit_cb cb, void *arg);
/*
 * The same for a caller with nothing else waiting on its thread (the
 * server's only session), on the loop thread: when the message is one for
 * the spool log, the commit thread is idle and no sync took long lately,
 * the commit is written and synced on the calling thread before this
 * returns, which saves two thread hops but blocks the caller for the sync
 * (see "The lone commit" in queue.c). Otherwise as queue_txn_commit().
 * Either way cb runs later from the loop, never from inside this call.
 */
void queue_txn_commit_alone(struct queue_txn *txn, queue_commit_cb cb,
    void *arg);
/* Drops the message and its temporary file; consumes txn. */
void queue_txn_abort(struct queue_txn *txn);

/*
 * Opens the body of a committed message for reading. Returns a file
 * descriptor positioned nowhere in particular (use pread or lseek from
 * env->body_offset for env->body_size bytes) that the caller closes, or -1
 * with errno.
 */
int queue_body_open(struct queue *q, const struct envelope *env);
/*
 * The body of a message committed moments ago, if the queue still holds
 * it in memory (messages of the spool log only; see "Bodies kept after the
 * commit" in queue.c): env->body_size bytes, malloc'd, for the caller to
 * free. Each body is handed out once; NULL means read it with
 * queue_body_open(). Loop thread only.
 */
unsigned char *queue_body_take(struct queue *q, const struct envelope *env);

typedef void (*queue_done_cb)(int error, void *arg);
/*
 * Persists env's attempts, next_try and recipient states by appending a
 * state record and syncing it, off the loop thread; cb (may be NULL) runs
 * on the loop thread afterwards, with ENOENT if the message is gone. env
 * must stay alive until then. The record also carries env->flags, so
 * ENVELOPE_HOLD persists this way. Updates and removes run in the order
 * they were called.
 */
void queue_update(struct queue *q, const struct envelope *env,
    queue_done_cb cb, void *arg);
/*
 * Appends env's state record to its queue file (or, for a message of the
 * spool log, to the newest log file: spoollog_note()) at once, on the
 * calling thread, without syncing it: a small write into the page cache,
 * which the loop thread may do as it does queue_txn_write(). The record
 * survives the
 * process (SIGKILL, a crash, the OOM killer) though not a power cut, so a
 * queue_update() or queue_remove() must still follow to make the outcome
 * durable. Call it when an upstream has just accepted recipients, before
 * sending anything else: a crash of the daemon before the durable write
 * then does not send them again. Never while a queue_update() or
 * queue_remove() of the message is in progress, and never with a state the
 * queue must not know before something else is durable (a recipient that
 * failed before its bounce is committed). Returns 0, or -1 with errno
 * (the queue file is left as it was, a log file is written to no more;
 * either way no partial record is read back, and the durable write still
 * follows).
 */
int queue_note(struct queue *q, const struct envelope *env);
/* Removes a finished message off the loop thread; cb may be NULL. Close
 * every queue_body_open() descriptor of the message first: its file may
 * be reused for another message once cb ran. The removal of a message of
 * the log waits for the next operation that wakes the commit thread, or
 * 5 ms, so cb may come that much later. Call it on the loop thread. */
void queue_remove(struct queue *q, const char *id, queue_done_cb cb,
    void *arg);

/*
 * Messages of up to max bytes of data are committed to the spool log
 * (spoollog.h) instead of a file of their own; 0 puts every message in a
 * file. The default is 65536. Applies to transactions begun afterwards.
 */
void queue_log_max(struct queue *q, size_t max);

/* Changes the size given to queue_open() at which a log file is full and
 * the next is started. Call before the first commit; tests use small ones. */
void queue_log_file_size(struct queue *q, size_t size);
/* The log's clock (spoollog_clock()): a log file's mail is copied forward
 * only when none of it was delivered for 30 s of it. For tests. */
void queue_log_clock(struct queue *q, int64_t (*clock)(void));

/* Counters for status and benchmarks. */
struct queue_stats {
	unsigned long commits;      /* messages committed */
	unsigned long sync_groups;  /* sync rounds; commits/sync_groups is
	                               the mean group size */
	unsigned long lone_groups;  /* of them, run on the caller's thread
	                               by queue_txn_commit_alone() */
	unsigned long bodies_taken; /* bodies queue_body_take() handed out */
};
void queue_stats(const struct queue *q, struct queue_stats *out);

#endif
