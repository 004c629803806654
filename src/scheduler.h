/*
 * When to try what. The scheduler knows every queued message, ordered by
 * next try (a small record each; envelopes are read from the queue only for
 * the messages being delivered), and starts delivery attempts through
 * relay.c within each relay's connection limit, opening a new connection
 * only for the mail that the open ones will not carry sooner. After an
 * attempt it persists the outcome (queue_update) or removes the finished
 * message (queue_remove), computes the next try with exponential backoff clamped
 * between retry_min and retry_max, backs a whole relay off after
 * connection failures, and bounces what outlived the configured lifetime.
 * New mail is tried at once.
 */
#ifndef SMARTHOST_SCHEDULER_H
#define SMARTHOST_SCHEDULER_H

#include <stddef.h>
#include <time.h>
#include <event2/event.h>
#include <event2/dns.h>

#include "config.h"
#include "envelope.h"
#include "queue.h"
#include "worker.h"

struct scheduler;

/* cfg must outlive the scheduler or be replaced with scheduler_set_config.
 * dns may be NULL when every relay host is numeric. */
struct scheduler *scheduler_new(struct event_base *base,
    struct evdns_base *dns, struct queue *q, struct worker *w,
    const struct config *cfg);
/* Aborts sessions and frees every envelope. Accepts NULL. */
void scheduler_free(struct scheduler *s);
/* Takes ownership of env (new mail, committed to the queue) and schedules
 * it: at once when env->next_try is 0 or past. The envelope may be freed
 * at any time after (the message waits as a record and is read from the
 * queue again when due): callers must not keep pointers to it. */
void scheduler_add(struct scheduler *s, struct envelope *env);
/* Start-up: a message found by queue_scan(), not read yet. It counts as
 * due; its envelope is read when it is taken, and if its next try is
 * still ahead it goes back to wait until then, unread records after new
 * mail. */
void scheduler_add_id(struct scheduler *s, const char *id);
/* Makes every queued message due now, ignoring backoff (SIGUSR1). */
void scheduler_flush(struct scheduler *s);
/* New sessions use cfg from now on; the old one may be freed after. */
void scheduler_set_config(struct scheduler *s, const struct config *cfg);
/* Stops starting attempts, lets current transactions finish (QUIT after
 * them), and calls done(arg) once every session has closed or after
 * timeout seconds (then aborting the rest; their mail stays queued). */
void scheduler_shutdown(struct scheduler *s, unsigned timeout,
    void (*done)(void *arg), void *arg);
/* Messages queued (waiting, held, in flight or finishing). */
size_t scheduler_count(const struct scheduler *s);
/* Upstream sessions open now, of every relay: connecting, sending, idle
 * or quitting. */
unsigned scheduler_sessions_open(const struct scheduler *s);
/*
 * Calls each(env, arg) for every queued message (held, waiting, in flight
 * or finishing), in arrival order. Envelopes of waiting messages are read
 * from the queue for the call, on the calling thread, which blocks for as
 * long as that takes: for tests and tools, never on a daemon's loop (the
 * control socket lists with scheduler_list_*). env is borrowed for the
 * call only; each must not modify it and must not call back into the
 * scheduler.
 */
void scheduler_foreach(struct scheduler *s,
    void (*each)(const struct envelope *env, void *arg), void *arg);

/*
 * Listing the queue without stopping the loop (smarthostctl queue): a
 * listing walks the queued messages in arrival (id) order, a page at a
 * time, with a cursor, so it holds one page in memory whatever the size
 * of the queue. scheduler_list_next picks the next page of at most max
 * messages (0 or more than SCHEDULER_LIST_MAX: that many) on the loop
 * thread, reads the envelopes of the waiting ones on the worker pool
 * (queue_peek) and then, on the loop thread and never from inside the
 * call, calls each(env, arg) for each message of the page still queued,
 * in order, then done(last, arg): last is 1 when the listing has reached
 * the end. One page at a time; call scheduler_list_next again (from done
 * too) for the next one.
 *
 * A message is listed as it is when its page is read: one added after
 * the listing began is listed when its id comes after the cursor; one
 * that left the queue before its page was read is not listed. env is
 * borrowed for the call; each must not call back into the scheduler or
 * free the listing (done may). scheduler_list_free may be called at any
 * time, with a page on the worker pool too (then neither each nor done
 * runs again); it accepts NULL. A listing must be freed before the
 * scheduler.
 */
#define SCHEDULER_LIST_MAX 512
struct scheduler_list;
typedef void scheduler_list_each_fn(const struct envelope *env, void *arg);
typedef void scheduler_list_done_fn(int last, void *arg);
struct scheduler_list *scheduler_list_new(struct scheduler *s);
void scheduler_list_next(struct scheduler_list *l, size_t max,
    scheduler_list_each_fn *each, scheduler_list_done_fn *done, void *arg);
/* Moves the cursor: the next page starts with the message whose id is
 * id, or the first after it (an id that is not a queue id: the start). */
void scheduler_list_seek(struct scheduler_list *l, const char *id);
void scheduler_list_free(struct scheduler_list *l);

/* When the oldest queued message arrived (from its queue id, without
 * reading its file), or 0 with an empty queue. */
time_t scheduler_oldest(const struct scheduler *s);

/*
 * One message by queue id, for smarthostctl hold, release, delete and
 * flush (show reads through a listing, scheduler_list_seek).
 *
 * scheduler_relay_of names the relay a message would be tried on now
 * (its pinned relay, else its sender's route, else the default relay;
 * failover aside), or NULL when that relay is not configured.
 *
 * The others return 0, or -1 with errno:
 *	ENOENT    no message has that id
 *	EBUSY     it is being delivered, or its state is being written:
 *	          try again when the attempt is over
 *	EALREADY  hold of a held message, release of one not held
 *	EPERM     flush of a held message (release it instead)
 * scheduler_hold takes a waiting message out of the schedule and
 * persists ENVELOPE_HOLD with its state (reading its file, one, on the
 * calling thread): held mail is never tried, and
 * its lifetime is only checked after an attempt, so it never expires
 * while held, across restarts too. scheduler_release clears the flag,
 * persists that and makes the message due now. scheduler_delete removes
 * the message from the spool without a bounce. scheduler_flush_one makes
 * one message due now (its relay's backoff stays).
 */
const char *scheduler_relay_of(struct scheduler *s,
    const struct envelope *env);
int scheduler_hold(struct scheduler *s, const char *id);
int scheduler_release(struct scheduler *s, const char *id);
int scheduler_delete(struct scheduler *s, const char *id);
/* delete all: scheduler_delete of every queued message without reading
 * any file, in arrival order for the waiting ones; each(id, error, arg)
 * is called for every message, error 0 when deleted or EBUSY when it is
 * being delivered or written (kept). Returns how many were deleted. */
size_t scheduler_delete_all(struct scheduler *s,
    void (*each)(const char *id, int error, void *arg), void *arg);
int scheduler_flush_one(struct scheduler *s, const char *id);

/*
 * Authentication state, for the control socket (smarthostctl status,
 * forget, login).
 *
 * scheduler_auth_required_list calls each(host, port, arg) once for every
 * relay learned to require authentication (the <state_dir>/auth-required
 * set, see authstate.h), in file order, and returns how many it listed.
 * host is lower-case; both strings are valid only during the call. each
 * may be NULL to just count.
 *
 * scheduler_auth_forget removes host from that set: "host" forgets every
 * port of that host, "host:port" (or "[v6]:port") only that one. The
 * change is saved on disk in the background. Returns 0 when at least one
 * entry was removed, -1 when nothing matched.
 *
 * scheduler_credentials_changed re-reads the credential files now (as the
 * periodic check does) and, for every relay whose mail is deferred for
 * missing or rejected credentials, clears the relay's backoff and makes
 * its deferred messages due now. Call it after writing an authinfo file
 * (smarthostctl login). Never fails.
 */
size_t scheduler_auth_required_list(struct scheduler *s,
    void (*each)(const char *host, const char *port, void *arg), void *arg);
int scheduler_auth_forget(struct scheduler *s, const char *host);
void scheduler_credentials_changed(struct scheduler *s);

/*
 * Relay reachability, for smarthostctl status: calls each(st, arg) for
 * every configured relay, in the config's order. st is valid only during
 * the call. A relay not tried yet is "up".
 */
struct scheduler_relay_state {
	const char *name;
	const char *state;    /* "up", "down" or "failed-over" (failover.h) */
	time_t down_since;    /* unreachable since; 0 when up */
	time_t backoff_until; /* no new session before; 0 when none */
	unsigned sessions;    /* upstream sessions open now */
	/* Since start: recipients sent, deferred and failed through it, the
	 * last delivery, and the last error (a reply or the reason of its
	 * last backoff) with its time; NULL and 0 when none. */
	unsigned long sent, deferred, failed;
	time_t last_delivery;
	const char *last_error;
	time_t last_error_at;
};
void scheduler_relays(struct scheduler *s,
    void (*each)(const struct scheduler_relay_state *st, void *arg),
    void *arg);

/* Pure: 1 if env is due its one delay notification at now: delay_warning
 * is not 0, env is at least that old, has pending recipients, was not
 * warned about yet (ENVELOPE_DELAY_WARNED) and dsn_wanted() agrees. */
int scheduler_delay_warning_due(const struct envelope *env,
    unsigned delay_warning, time_t now);

/* Pure backoff: delay before attempt number attempts+1, doubling from
 * retry_min and clamped to retry_max. Exposed for tests. */
unsigned scheduler_backoff(unsigned retry_min, unsigned retry_max,
    unsigned attempts);

#endif
