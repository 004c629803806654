/*
 * The scheduler knows every queued message while the daemon runs and decides
 * when each is tried. Its memory and descriptors do not grow with the
 * queue: a message that waits is a 16-byte record (struct sched_rec: id,
 * next try, relay, flags) in a binary heap ordered by next try, with one
 * timer for the top, and its envelope stays on disk. Held messages
 * (ENVELOPE_HOLD) are records that are never due. Only the active set,
 * at most SCHED_ACTIVE_MAX messages, has envelopes in memory, in these
 * states:
 *
 *   LOADING    taken from the heap; its envelope is being read on the
 *              worker pool (queue_read), SCHED_LOAD_BATCH per job
 *   READY      due, in its relay's FIFO, waiting for a session
 *   INFLIGHT   handed to a relay session
 *   FINISHING  the attempt is over: bounce, then persist or remove
 *
 * and a message goes back to the heap (msg_park: its envelope freed) once
 * its state on disk is what memory knows. At start-up the queue gives only
 * names (scheduler_add_id): such unread records count as due, after new
 * mail, and a message found not due when read goes back to wait without an
 * attempt. Like Postfix's active queue, this makes the cost of a backlog
 * the records alone: a million waiting messages take about 17 MB here
 * (the heap's array grows by half), and the spool log's index 32 to 40
 * bytes more for each message it holds (spoollog.h): 67.5 MiB RSS in all
 * with a million queued, measured (doc/RELIABILITY.md).
 *
 * Per relay, at most max_connections sessions run; a session takes the
 * relay's due messages one after another (connection reuse) up to
 * max_messages_per_connection, then QUITs. A session that finds nothing
 * to send waits idle for the relay's timeout_idle (its ev_idle) before it
 * QUITs, and a message due meanwhile goes to it before any new session
 * is opened: a lone client's messages, each due after the last was
 * relayed, then share one connection (and one TLS handshake) instead of
 * paying for one each. A reload or a shutdown ends idle sessions at once.
 * A message due while every session is busy waits for one of them when
 * that session will be free to start it sooner than a new connection
 * would be ready, as moving averages of the relay's set-up and
 * transaction times predict (relay_carried: for SCHED_BUSY_WAIT_MS and
 * SCHED_CARRY_MAX messages per session at most); only the rest opens new
 * sessions. A session late on its transaction carries nothing, so mail
 * never waits behind a stuck one, and with no session open mail goes at
 * once; before anything was measured, an open session is counted on for
 * SCHED_BUSY_WAIT_MS. With 20 clients end to end this took
 * the upstream connections per 2,000 messages from 31-35 to 20-25
 * (max_messages_per_connection, 100, makes 20 the floor; interleaved
 * runs on a loaded 2-core VM).
 * A TLS relay with no session to resume (since start, or a reload that
 * made its TLS context again) opens one session first and the others
 * once that one is ready, so that they resume its TLS session instead of
 * each making a full handshake (relay_start, sched_relay.tls_warm).
 * A message given to a reused session just as the server closed that
 * connection (its idle timeout struck as our MAIL left) is not failed
 * with it: when the connection is closed, reset or given a 421 before the
 * server answered anything of the transaction (relay.h's unsent()), the
 * server has no part of the message, so it is not an attempt and goes
 * first on a new session opened at once in the old one's place, as
 * Postfix does with a cached connection found dead. Once per message
 * while active (sess_unsent): a second such end is a failed attempt.
 * When a session fails to connect
 * (DNS, connect, TLS, timeout) the relay itself backs off, with the same
 * doubling as messages, and everything waiting for it is deferred with the
 * same reason, as Postfix does for a dead site; a session that comes up
 * clears the backoff. A session that fails before it is ready while other
 * sessions to the same relay are open says that connection failed, not
 * the relay: the others judge it (the last to fail backs it off), its
 * first message goes back to the ready list without an attempt, and the
 * relay opens no more sessions than it has until one is ready
 * (sess_failed_among_others). A message due for a relay in backoff waits
 * in the heap until the backoff ends rather than take a place in the
 * active set.
 *
 * After an attempt the recipients' states are final (sent, failed) or
 * pending. Failures get a DSN first, which is committed before the state
 * that says the recipient failed: a crash in between can send a second
 * notification but never loses one. Then the message is removed (nothing
 * pending) or its attempts, next_try and states are appended to its queue
 * file, with next_try doubling from retry_min up to retry_max. A message
 * older than its lifetime after an attempt fails its pending recipients
 * ("expired") and is bounced. When that write or removal fails for a local
 * reason, the message stays active with its outcome in memory and the
 * write is retried (msg_write_failed), so a recipient the upstream
 * accepted is never sent again because of a local error. A local shortage
 * of descriptors (opening the body, connecting: OC_RESOURCE) is not an
 * attempt: the message waits SCHED_LOCAL_RETRY seconds and is taken again.
 * Before any of that, the moment the upstream accepted recipients, their
 * new state is written into the queue file without a sync (msg_note,
 * queue_note()), before the session sends its next message: a crash of
 * the daemon itself then never sends them again, and only a crash of the
 * machine within the group commit that follows can. The session does not
 * wait for that sync: one message per connection per sync round would cap
 * a drain at max_connections messages per group commit (doc/RELIABILITY.md
 * has the figures).
 * A message that still has pending recipients after an attempt and is older
 * than delay_warning gets one delay notification (Action: delayed) for
 * them, unless dsn_wanted() refuses; ENVELOPE_DELAY_WARNED, set before the
 * state record is appended and so written in it, makes it once per
 * message across restarts. As with bounces, the notification is committed
 * first: a crash before the record can send a second warning but never
 * loses the first.
 *
 * Missing or rejected credentials (OC_NOCRED, OC_AUTH) back the relay off
 * like a connection failure, so the same rejected password is not tried
 * again before the backoff ends. While some relay waits for credentials,
 * a timer asks its relay every SCHED_CRED_CHECK seconds whether the
 * credential files changed; when they did, the relay's backoff goes and its
 * deferred mail is due at once. The scheduler also owns the learned
 * "requires authentication" set (authstate.h) that every relay shares.
 * A server that demands AUTH and then hangs up before the client could
 * give it (OC_AUTH_RETRY) says nothing bad about the relay: the relay has
 * learned to authenticate first, so the message is tried again at once,
 * once; a second such end in a row is an ordinary deferral.
 *
 * Routing is decided at each attempt, not at enqueue: a message pinned to
 * a relay (envelope relay) goes there, any other to the relay of the
 * first route its sender matches, else to the default relay. So a reload
 * that changes the routes moves queued mail too, and nothing derived from
 * the config is stored in the queue file to go stale. When that relay
 * has backups and has been unreachable for its failover_after
 * (failover.h), the message goes to the first backup free to take it
 * instead; the relay itself is probed with a session that only connects
 * and quits, at the end of each of its backoffs, and its mail comes back
 * when a session reaches it. Both changes make the relay's deferred mail
 * due at once. Backups of a backup are not followed.
 *
 * Every asynchronous step (worker job, load job, queue update, DSN) carries
 * the message; scheduler_free leaves messages with a queue operation or a
 * read in flight to that operation's callback (m->s == NULL) instead of
 * freeing them under it, because the queue reads the envelope until then.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/event.h>

#include "authstate.h"
#include "clock.h"
#include "dsn.h"
#include "failover.h"
#include "log.h"
#include "metrics.h"
#include "relay.h"
#include "scheduler.h"
#include "xmalloc.h"

/* Seconds between looks at the credential files while a relay waits for
 * credentials: a stat of each file, on the worker pool. */
#define SCHED_CRED_CHECK 5
/*
 * Active messages at most: loading, ready, in flight or finishing. Only
 * these have their envelope in memory; the rest of the queue is a 24-byte
 * record each, so memory follows this bound and the number of messages,
 * not their envelopes. Like Postfix's active queue limit, it is far above
 * what the sessions can keep busy.
 */
#define SCHED_ACTIVE_MAX 4096
/* Envelopes read per job on the worker pool, and jobs at once. */
#define SCHED_LOAD_BATCH 64
#define SCHED_LOAD_JOBS 4
/* Seconds before a message is taken again after a local shortage
 * (no descriptor, unreadable file), and the longest wait before retrying
 * a failed state write. */
#define SCHED_LOCAL_RETRY 1
#define SCHED_WRITE_RETRY_MAX 60
/*
 * Carrying ready mail on open sessions instead of new ones (relay_carried):
 * a ready message waits at most SCHED_BUSY_WAIT_MS for a session, and one
 * session is counted on for at most SCHED_CARRY_MAX waiting messages. A
 * session whose transaction (or set-up) has taken longer than the average
 * plus four mean deviations, and at least SCHED_LATE_FACTOR times the
 * average, is late and counted on for nothing (avg_late).
 */
#define SCHED_BUSY_WAIT_MS 1000
#define SCHED_CARRY_MAX 32
#define SCHED_LATE_FACTOR 2

/* A moving average and mean deviation of a duration, in microseconds,
 * weighted 1/8 and 1/4 as TCP's round-trip estimate is (RFC 6298). */
struct sched_avg {
	uint64_t mean;           /* 0: nothing measured yet */
	uint64_t dev;
};

enum msg_state {
	MSG_LOADING,
	MSG_READY,
	MSG_INFLIGHT,
	MSG_FINISHING,
	MSG__COUNT
};

static const char *const msg_state_names[] = {
	[MSG_LOADING] = "loading",
	[MSG_READY] = "ready",
	[MSG_INFLIGHT] = "inflight",
	[MSG_FINISHING] = "finishing",
};
_Static_assert(sizeof(msg_state_names) / sizeof(*msg_state_names) ==
    MSG__COUNT, "msg_state_names out of date");

/* Values of sched_msg.tried[i]. */
enum {
	TRIED_NO = 0,      /* not pending when the attempt began */
	TRIED_YES = 1,     /* pending when the attempt began */
	TRIED_EXPIRED = 2, /* ... and failed because the lifetime ended */
};

/*
 * A queued message that waits, held or due but not yet taken: all the
 * scheduler keeps of it (24 bytes, in the heap array). Its envelope stays
 * on disk until the message is taken for an attempt.
 */
struct sched_rec {
	uint64_t id;             /* the queue id as a number */
	uint32_t key;            /* next try (seconds since the epoch, which
	                            fit until 2106; key_of() clamps); REC_HELD:
	                            KEY_HELD */
	uint16_t relay;          /* its primary relay when it went to wait:
	                            index into s->rnames; RELAY_UNKNOWN when
	                            not known (not read yet, or a reload
	                            may have re-routed it) */
	uint16_t flags;          /* REC_* */
};
/* One per waiting message: the heap's array is most of what a backlog
 * costs besides the spool log's index. */
_Static_assert(sizeof(struct sched_rec) == 16, "struct sched_rec is 16 bytes");

enum {
	REC_UNREAD = 1 << 0, /* not read since start: key is a guess (due) */
	REC_HELD = 1 << 1,   /* ENVELOPE_HOLD: never due */
	REC_FLUSHED = 1 << 2, /* made due by a flush, whatever its file says */
	REC_PINNED = 1 << 3, /* its envelope names its relay: no route, so
	                        a reload leaves relay alone */
};
#define RELAY_UNKNOWN UINT16_MAX
/* The key of an unread message: due, but after new mail (key 0). */
#define KEY_UNREAD 1
/* The key of a held message: never due. */
#define KEY_HELD UINT32_MAX

/* A record's key for a next try: before the epoch is due now, after 2106
 * the latest time a key holds. */
static uint32_t
key_of(int64_t t)
{
	if (t < 0)
		return 0;
	if (t >= (int64_t)KEY_HELD)
		return KEY_HELD - 1;
	return (uint32_t)t;
}

/* An active message: taken from the heap, with its envelope in memory. */
struct sched_msg {
	struct scheduler *s;     /* NULL: orphaned by scheduler_free */
	struct envelope *env;    /* NULL while LOADING */
	enum msg_state state;
	uint64_t id;             /* the queue id as a number */
	uint32_t rec_flags;      /* REC_* it had in the heap */
	int load_error;          /* LOADING: errno of a failed read */
	int flush;               /* made due while LOADING or FINISHING */
	unsigned retry_delay;    /* seconds before retrying a failed state
	                            write or removal */
	struct event *ev_retry;  /* that retry, created when first needed */
	char idstr[ENVELOPE_ID_MAX];
	int auth_retry;          /* this attempt ended in OC_AUTH_RETRY */
	int auth_retried;        /* ... and so did the one before, which was
	                            retried at once: no second time in a
	                            row */
	int stale_retried;       /* sent again at once after a reused
	                            connection was found gone (sess_unsent):
	                            not twice while it is active */
	unsigned char *tried;    /* per recipient, for this attempt */
	struct dsn_job *dsn;     /* bounce or delay warning in progress */
	TAILQ_ENTRY(sched_msg) all;
	TAILQ_ENTRY(sched_msg) ready;
};

struct sched_session;

struct sched_relay {
	TAILQ_ENTRY(sched_relay) entry;
	struct scheduler *s;
	char *name;
	struct relay *relay;
	TAILQ_HEAD(, sched_msg) ready;
	TAILQ_HEAD(, sched_session) sessions;
	unsigned nsessions;
	unsigned cap;            /* sessions at most for now, below
	                            max_connections; 0: no cap */
	unsigned failures;       /* consecutive session failures */
	int tls_warm;            /* a TLS session reached ready() since
	                            the TLS context was last made: its
	                            session is there to resume */
	time_t backoff_until;    /* no new session before */
	int cred_wait;           /* backed off for missing/rejected
	                            credentials: watch the files */
	int cred_checking;       /* a relay_credentials_check runs */
	struct failover fo;      /* reachability, failover to backups */
	/* How long a new session took from session_open() to ready(), and
	 * a transaction from its send to delivered(). */
	struct sched_avg setup;
	struct sched_avg txn;
	/* For smarthostctl status, since start: recipients sent, deferred
	 * and failed through this relay, and what went wrong last. */
	unsigned long nsent, ndeferred, nfailed;
	time_t last_delivery;
	time_t last_error_at;
	char last_error[OUTCOME_TEXT_MAX + 8];
};

struct sched_session {
	TAILQ_ENTRY(sched_session) entry;
	struct scheduler *s;
	struct sched_relay *sr;
	struct relay_session *rs;
	struct sched_msg *first; /* given at start, sent at the first ready */
	struct sched_msg *cur;   /* in flight */
	struct sched_msg *again; /* handed back by unsent(): goes first on
	                            a new session once this one closed */
	unsigned sent;
	unsigned max_msgs;
	unsigned idle_time;      /* the relay's timeout_idle at the start */
	uint64_t opened_us;      /* session_open() (clock_mono_us) */
	uint64_t sent_us;        /* cur was sent; 0 while nothing is */
	int ready;               /* got as far as ready(): reachable */
	int quitting;            /* QUIT asked: takes nothing more */
	int idle;                /* relay_session_idle: waiting for mail */
	struct event *ev_idle;   /* the end of that wait */
};

struct scheduler {
	struct event_base *base;
	struct evdns_base *dns;
	struct queue *q;
	struct worker *w;
	const struct config *cfg;

	struct event *ev_timer;    /* next due message or relay backoff */
	struct event *ev_stopped;  /* calls done() outside other callbacks */
	struct event *ev_deadline; /* shutdown timeout */
	struct event *ev_cred;     /* credential files check */
	struct event *ev_carry;    /* mail waiting for a busy session is
	                              looked at again (relay_carried) */

	struct authstate *as;      /* learned "requires authentication" */
	char *state_dir;           /* where as lives */

	TAILQ_HEAD(sched_msgs, sched_msg) msgs; /* active messages */
	size_t nactive;
	struct sched_rec *heap;       /* waiting, held and untaken due ones */
	size_t nheap;
	size_t heapcap;
	char **rnames;                /* names of the primary relays of
	                                 records */
	uint32_t nrnames;
	unsigned nloading;            /* load jobs on the worker pool */
	size_t nunread;               /* found at start, not read yet */

	TAILQ_HEAD(, sched_relay) relays;

	int stopping;
	void (*done)(void *);
	void *done_arg;
};

static void msg_attempted(struct scheduler *, struct sched_msg *,
    const char *);
static uint64_t id_valid(const char *);
static void msg_persist(struct scheduler *, struct sched_msg *);

unsigned
scheduler_backoff(unsigned retry_min, unsigned retry_max, unsigned attempts)
{
	unsigned long long d;

	if (attempts == 0 || retry_min == 0)
		return 0;
	if (retry_min >= retry_max)
		return retry_max;
	/* d stays below 2 * retry_max, so 64 bits never overflow and the
	 * loop ends after at most 32 rounds whatever attempts is. */
	d = retry_min;
	while (--attempts > 0 && d < retry_max)
		d *= 2;
	return d > retry_max ? retry_max : (unsigned)d;
}

/* ---- the heap of waiting messages ---- */

/* Earlier key first; among equals (all new mail has 0), lower id: ids
 * sort by arrival time, so mail leaves in the order it came. */
static int
rec_before(const struct sched_rec *a, const struct sched_rec *b)
{
	if (a->key != b->key)
		return a->key < b->key;
	return a->id < b->id;
}

static void
heap_up(struct scheduler *s, size_t i)
{
	struct sched_rec r = s->heap[i];
	size_t p;

	while (i > 0) {
		p = (i - 1) / 2;
		if (!rec_before(&r, &s->heap[p]))
			break;
		s->heap[i] = s->heap[p];
		i = p;
	}
	s->heap[i] = r;
}

static void
heap_down(struct scheduler *s, size_t i)
{
	struct sched_rec r = s->heap[i];
	size_t c;

	for (;;) {
		c = 2 * i + 1;
		if (c >= s->nheap)
			break;
		if (c + 1 < s->nheap && rec_before(&s->heap[c + 1],
		    &s->heap[c]))
			c++;
		if (!rec_before(&s->heap[c], &r))
			break;
		s->heap[i] = s->heap[c];
		i = c;
	}
	s->heap[i] = r;
}

/* After keys changed everywhere: rebuild bottom-up. */
static void
heap_rebuild(struct scheduler *s)
{
	size_t i;

	for (i = s->nheap / 2; i-- > 0;)
		heap_down(s, i);
}

static void
heap_push(struct scheduler *s, const struct sched_rec *r)
{
	if (s->nheap == s->heapcap) {
		/* Grows by half: the array is most of the memory a large
		 * backlog costs, and doubling would leave up to half of it
		 * unused. */
		s->heapcap = s->heapcap < 64 ? 64 : s->heapcap + s->heapcap / 2;
		s->heap = xreallocarray(s->heap, s->heapcap,
		    sizeof(*s->heap));
	}
	s->heap[s->nheap++] = *r;
	heap_up(s, s->nheap - 1);
}

static struct sched_rec
heap_pop(struct scheduler *s)
{
	struct sched_rec r = s->heap[0];

	if (--s->nheap > 0) {
		s->heap[0] = s->heap[s->nheap];
		heap_down(s, 0);
	}
	return r;
}

/* ---- queue ids and relay names in records ---- */

/* qsort by id, for structs whose first member is their uint64_t id. */
static int
id_first_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The index of a relay's name in s->rnames, added if new. */
static uint16_t
rname_index(struct scheduler *s, const char *name)
{
	uint32_t i;

	for (i = 0; i < s->nrnames; i++)
		if (strcmp(s->rnames[i], name) == 0)
			return (uint16_t)i;
	/* Each relay name a message was routed to: a handful. */
	if (s->nrnames == RELAY_UNKNOWN - 1)
		return RELAY_UNKNOWN;
	s->rnames = xreallocarray(s->rnames, s->nrnames + 1,
	    sizeof(*s->rnames));
	s->rnames[s->nrnames] = xstrdup(name);
	return (uint16_t)s->nrnames++;
}

/* The relay m goes to before any failover: the one pinned in its
 * envelope, else its sender's route; NULL when the pinned relay is no
 * longer configured. */
static const struct relay_config *
msg_primary(const struct scheduler *s, const struct sched_msg *m)
{
	if (m->env->relay != NULL)
		return config_relay(s->cfg, m->env->relay);
	return config_route(s->cfg, m->env->sender);
}

/* For m's record: the index of its primary relay's name, or
 * RELAY_UNKNOWN. */
static uint16_t
msg_primary_index(struct scheduler *s, const struct sched_msg *m)
{
	const struct relay_config *rc = msg_primary(s, m);

	return rc != NULL ? rname_index(s, rc->name) : RELAY_UNKNOWN;
}

/* ---- messages ---- */

static void
msg_set_state(struct sched_msg *m, enum msg_state state)
{
	log_debug("%s: scheduler %s -> %s", m->idstr,
	    msg_state_names[m->state], msg_state_names[state]);
	m->state = state;
}

static void
msg_free(struct sched_msg *m)
{
	if (m->ev_retry != NULL)
		event_free(m->ev_retry);
	envelope_free(m->env);
	free(m->tried);
	free(m);
}

/* Runs the dispatcher on the next loop iteration: callers may be deep in
 * callbacks, and many events in one iteration share one pass. */
static void
sched_kick(struct scheduler *s)
{
	const struct timeval now = { 0, 0 };

	if (!s->stopping)
		evtimer_add(s->ev_timer, &now);
}

/* A message left the active set: what its place lets in may be due. */
static void
msg_unlink(struct scheduler *s, struct sched_msg *m)
{
	TAILQ_REMOVE(&s->msgs, m, all);
	s->nactive--;
	if (s->nheap > 0 && s->heap[0].key <= (int64_t)time(NULL))
		sched_kick(s);
}

/* Unlinks m from the scheduler and frees it: the message is gone. */
static void
msg_drop(struct scheduler *s, struct sched_msg *m)
{
	if (s != NULL)
		msg_unlink(s, m);
	msg_free(m);
}

/* An active message for id (not yet linked), LOADING with no envelope. */
static struct sched_msg *
msg_new(struct scheduler *s, uint64_t id)
{
	struct sched_msg *m;

	m = xcalloc(1, sizeof(*m));
	m->s = s;
	m->id = id;
	envelope_id_text(id, m->idstr, sizeof(m->idstr));
	m->state = MSG_LOADING;
	return m;
}

static void
msg_link(struct scheduler *s, struct sched_msg *m)
{
	TAILQ_INSERT_TAIL(&s->msgs, m, all);
	s->nactive++;
}

/*
 * Parks an active message in the heap, due at key, and frees everything
 * but its record: the envelope is read again when it is next taken. Only
 * for a message whose state on disk is what memory says (no queue
 * operation in flight or failed).
 */
static void
msg_park(struct scheduler *s, struct sched_msg *m, int64_t key)
{
	struct sched_rec r;

	r.id = m->id;
	r.flags = m->env == NULL ?
	    (uint16_t)(m->rec_flags & (REC_UNREAD | REC_FLUSHED)) : 0;
	r.relay = m->env == NULL ? RELAY_UNKNOWN : msg_primary_index(s, m);
	if (m->env != NULL && m->env->relay != NULL)
		r.flags |= REC_PINNED;
	if (m->env != NULL && (m->env->flags & ENVELOPE_HOLD)) {
		r.flags |= REC_HELD;
		r.key = KEY_HELD;
	} else
		r.key = key_of(key);
	log_debug("%s: scheduler %s -> %s", m->idstr,
	    msg_state_names[m->state], (r.flags & REC_HELD) ? "held" :
	    "waiting");
	msg_unlink(s, m);
	msg_free(m);
	heap_push(s, &r);
}

/* Back to the heap without an attempt (shutdown, no descriptor). */
static void
msg_requeue(struct scheduler *s, struct sched_msg *m, int64_t key)
{
	free(m->tried);
	m->tried = NULL;
	msg_park(s, m, key);
	sched_kick(s);
}

/* Remembers which recipients this attempt is about. */
static void
msg_begin_attempt(struct sched_msg *m)
{
	size_t i;

	free(m->tried);
	m->tried = xcalloc(m->env->nrcpts > 0 ? m->env->nrcpts : 1, 1);
	for (i = 0; i < m->env->nrcpts; i++)
		if (m->env->rcpts[i].status == RCPT_PENDING)
			m->tried[i] = TRIED_YES;
	msg_set_state(m, MSG_INFLIGHT);
}

/* Defers an attempt that never reached a relay. */
static void
msg_defer(struct scheduler *s, struct sched_msg *m, const char *relay,
    const struct outcome *o)
{
	if (m->state != MSG_INFLIGHT)
		msg_begin_attempt(m);
	relay_defer_all(m->env, relay, o);
	msg_attempted(s, m, NULL);
}

static void msg_removed(int error, void *arg);
static void msg_updated(int error, void *arg);

static void
msg_retry_write(evutil_socket_t fd, short what, void *arg)
{
	struct sched_msg *m = arg;
	struct scheduler *s = m->s;

	if (m->env == NULL || envelope_count(m->env, RCPT_PENDING) == 0)
		queue_remove(s->q, m->idstr, msg_removed, m);
	else
		queue_update(s->q, m->env, msg_updated, m);
}

/*
 * A state write or removal failed for a local reason (no descriptor, disk
 * full, I/O error). The outcome stays in memory, where it is the truth,
 * and the write is tried again after a delay doubling from 1 s to
 * SCHED_WRITE_RETRY_MAX; the message stays active meanwhile, so it is
 * never tried again from a state on disk that says less than it knows. A
 * stop or crash before a write succeeds sends its recipients again.
 */
static void
msg_write_failed(struct scheduler *s, struct sched_msg *m, const char *what,
    int error)
{
	struct timeval tv;

	m->retry_delay = m->retry_delay == 0 ? 1 : m->retry_delay * 2;
	if (m->retry_delay > SCHED_WRITE_RETRY_MAX)
		m->retry_delay = SCHED_WRITE_RETRY_MAX;
	log_warnx("%s: cannot %s: %s; kept in memory, retrying in %us",
	    m->idstr, what, strerror(error), m->retry_delay);
	if (m->ev_retry == NULL &&
	    (m->ev_retry = evtimer_new(s->base, msg_retry_write, m)) == NULL)
		fatalx("%s: evtimer_new", __func__);
	tv.tv_sec = m->retry_delay;
	tv.tv_usec = 0;
	evtimer_add(m->ev_retry, &tv);
}

static void
msg_removed(int error, void *arg)
{
	struct sched_msg *m = arg;

	if (m->s != NULL && error != 0 && error != ENOENT) {
		msg_write_failed(m->s, m, "remove from the queue", error);
		return;
	}
	log_info("%s: removed", m->idstr);
	msg_drop(m->s, m);
}

static void
msg_updated(int error, void *arg)
{
	struct sched_msg *m = arg;
	struct scheduler *s = m->s;

	if (s == NULL) {
		msg_free(m);
		return;
	}
	if (error == ENOENT) {
		log_warnx("%s: gone from the spool; forgotten", m->idstr);
		msg_drop(s, m);
		return;
	}
	if (error != 0) {
		msg_write_failed(s, m, "record delivery state", error);
		return;
	}
	m->retry_delay = 0;
	msg_park(s, m, m->flush ? 0 : (int64_t)m->env->next_try);
	sched_kick(s);
}

static void msg_persist_now(struct scheduler *, struct sched_msg *);

int
scheduler_delay_warning_due(const struct envelope *env,
    unsigned delay_warning, time_t now)
{
	if (delay_warning == 0 || (env->flags & ENVELOPE_DELAY_WARNED))
		return 0;
	if (!dsn_wanted(env) || envelope_count(env, RCPT_PENDING) == 0)
		return 0;
	return now - env->created >= (time_t)delay_warning;
}

static void
msg_warned(struct envelope *dsn, void *arg)
{
	struct sched_msg *m = arg;
	struct scheduler *s = m->s;

	m->dsn = NULL;
	if (dsn != NULL)
		scheduler_add(s, dsn);
	else
		/* Not sent: try again after the next attempt. */
		m->env->flags &= ~(unsigned)ENVELOPE_DELAY_WARNED;
	msg_persist_now(s, m);
}

/* Sends the delay notification for the pending recipients of m. */
static void
msg_warn_delay(struct scheduler *s, struct sched_msg *m)
{
	struct envelope *env = m->env;
	struct dsn_rcpt *dr;
	size_t i, n = 0;

	dr = xcalloc(env->nrcpts > 0 ? env->nrcpts : 1, sizeof(*dr));
	for (i = 0; i < env->nrcpts; i++) {
		const struct envelope_rcpt *r = &env->rcpts[i];

		if (r->status != RCPT_PENDING)
			continue;
		dr[n].addr = r->addr;
		dr[n].status = r->dsn;
		if (dsn_is_server_reply(r->reply))
			dr[n].diagnostic = r->reply;
		dr[n].reason = r->reply != NULL ? r->reply :
		    "not yet delivered";
		dr[n].action = DSN_ACTION_DELAYED;
		dr[n].retry_until = env->created + (time_t)s->cfg->lifetime;
		n++;
	}
	env->flags |= ENVELOPE_DELAY_WARNED;
	m->dsn = dsn_send(s->q, s->w, env, dr, n, s->cfg->hostname,
	    msg_warned, m);
	free(dr);
}

/* Writes the outcome of the attempt: removal, or a delay warning when one
 * is due and then the next try. */
static void
msg_persist(struct scheduler *s, struct sched_msg *m)
{
	free(m->tried);
	m->tried = NULL;
	msg_set_state(m, MSG_FINISHING);
	if (scheduler_delay_warning_due(m->env, s->cfg->delay_warning,
	    time(NULL))) {
		msg_warn_delay(s, m);
		return;
	}
	msg_persist_now(s, m);
}

static void
msg_persist_now(struct scheduler *s, struct sched_msg *m)
{
	struct envelope *env = m->env;
	unsigned delay;

	if (envelope_count(env, RCPT_PENDING) == 0) {
		queue_remove(s->q, env->id, msg_removed, m);
		return;
	}
	if (m->auth_retry && !m->auth_retried) {
		/* The server hung up on its demand for AUTH; the relay has
		 * learned that and the next session authenticates first.
		 * Not an attempt of its own: once, at once. */
		m->auth_retry = 0;
		m->auth_retried = 1;
		env->next_try = time(NULL);
		log_info("%s: retrying at once with authentication first",
		    env->id);
		queue_update(s->q, env, msg_updated, m);
		return;
	}
	m->auth_retried = m->auth_retry;
	m->auth_retry = 0;
	env->attempts++;
	delay = scheduler_backoff(s->cfg->retry_min, s->cfg->retry_max,
	    env->attempts);
	env->next_try = time(NULL) + delay;
	log_debug("%s: attempt %u failed, next in %us", env->id,
	    env->attempts, delay);
	queue_update(s->q, env, msg_updated, m);
}

static void
msg_bounced(struct envelope *dsn, void *arg)
{
	struct sched_msg *m = arg;
	struct scheduler *s = m->s;

	m->dsn = NULL;
	if (dsn != NULL)
		scheduler_add(s, dsn);
	msg_persist(s, m);
}

/* The pending recipients of a message that outlived its lifetime fail. */
static void
msg_expire(struct scheduler *s, struct sched_msg *m)
{
	struct envelope *env = m->env;
	char dsn[16], *last, *text;
	size_t i;

	for (i = 0; i < env->nrcpts; i++) {
		struct envelope_rcpt *r = &env->rcpts[i];

		if (r->status != RCPT_PENDING)
			continue;
		/* Keep the last reply: it is the DSN's Diagnostic-Code. */
		last = r->reply != NULL ? xstrdup(r->reply) : NULL;
		snprintf(dsn, sizeof(dsn), "%s", r->dsn[0] == '4' ? r->dsn :
		    "4.4.7");
		envelope_set_rcpt(env, i, RCPT_FAILED, dsn, last);
		text = xasprintf("message lifetime exceeded%s%s",
		    last != NULL ? "; last error: " : "",
		    last != NULL ? last : "");
		relay_log_rcpt(env, i, "none", "expired", text);
		free(text);
		free(last);
		if (m->tried != NULL)
			m->tried[i] = TRIED_EXPIRED;
	}
}

/*
 * The attempt is over (the relay wrote and logged the recipients' states):
 * expire, bounce what failed in this attempt, then persist.
 */
static void
msg_attempted(struct scheduler *s, struct sched_msg *m, const char *remote)
{
	struct envelope *env = m->env;
	struct dsn_rcpt *dr;
	char **reasons;
	size_t i, n = 0;
	time_t now = time(NULL);

	msg_set_state(m, MSG_FINISHING);
	if (envelope_count(env, RCPT_PENDING) > 0 &&
	    now - env->created >= (time_t)s->cfg->lifetime)
		msg_expire(s, m);

	for (i = 0; m->tried != NULL && i < env->nrcpts; i++)
		if (m->tried[i] != TRIED_NO &&
		    env->rcpts[i].status == RCPT_FAILED)
			n++;
	if (n == 0) {
		msg_persist(s, m);
		return;
	}
	if (!dsn_wanted(env)) {
		log_info("%s: no non-delivery notification for %s",
		    env->id, env->sender[0] == '\0' ? "the null sender" :
		    "a non-delivery notification");
		msg_persist(s, m);
		return;
	}

	dr = xcalloc(n, sizeof(*dr));
	reasons = xcalloc(n, sizeof(*reasons));
	for (i = 0, n = 0; i < env->nrcpts; i++) {
		const struct envelope_rcpt *r = &env->rcpts[i];

		if (m->tried[i] == TRIED_NO || r->status != RCPT_FAILED)
			continue;
		dr[n].addr = r->addr;
		dr[n].status = r->dsn;
		if (dsn_is_server_reply(r->reply)) {
			dr[n].diagnostic = r->reply;
			dr[n].remote_mta = remote;
		}
		if (m->tried[i] == TRIED_EXPIRED) {
			reasons[n] = xasprintf("delivery time expired "
			    "(last error: %s)", r->reply != NULL ? r->reply :
			    "none");
			dr[n].reason = reasons[n];
		} else
			dr[n].reason = r->reply;
		n++;
	}
	m->dsn = dsn_send(s->q, s->w, env, dr, n, s->cfg->hostname,
	    msg_bounced, m);
	for (i = 0; i < n; i++)
		free(reasons[i]);
	free(reasons);
	free(dr);
}

/* ---- relays ---- */

static struct sched_relay *
sched_relay_find(struct scheduler *s, const char *name)
{
	struct sched_relay *sr;

	TAILQ_FOREACH(sr, &s->relays, entry)
		if (strcmp(sr->name, name) == 0)
			return sr;
	return NULL;
}

static struct sched_relay *
sched_relay_get(struct scheduler *s, const char *name)
{
	struct sched_relay *sr;

	if ((sr = sched_relay_find(s, name)) != NULL)
		return sr;
	sr = xcalloc(1, sizeof(*sr));
	sr->s = s;
	sr->name = xstrdup(name);
	sr->relay = relay_new(s->base, s->dns, s->q, s->w, s->as);
	TAILQ_INIT(&sr->ready);
	TAILQ_INIT(&sr->sessions);
	TAILQ_INSERT_TAIL(&s->relays, sr, entry);
	return sr;
}

/* Failures that say the relay, not one message, is the problem. */
static int
relay_failure(const struct outcome *o)
{
	if (o->status == OUTCOME_OK)
		return 0;
	switch (o->class) {
	case OC_DNS:
	case OC_CONNECT:
	case OC_TLS:
	case OC_TIMEOUT:
	case OC_AUTH:
	case OC_NOCRED:
		return 1;
	case OC_AUTH_RETRY:	/* learned: the next session authenticates */
	case OC_NONE:
	case OC_PROTOCOL:
	case OC_REPLY:
	case OC_LOCAL:
	case OC_RESOURCE:
	case OC_EXPIRED:
	case OC__COUNT:
		break;
	}
	return 0;
}

static void
cred_timer_arm(struct scheduler *s)
{
	const struct timeval tv = { SCHED_CRED_CHECK, 0 };

	if (!s->stopping && !evtimer_pending(s->ev_cred, NULL))
		evtimer_add(s->ev_cred, &tv);
}

/*
 * Makes the waiting mail whose primary relay is sr due now (mail being
 * persisted as soon as that is done). Waiting messages are matched by the
 * primary relay they had when they went to wait; a reload forgets that of
 * every message it may have re-routed (scheduler_set_config), and those
 * are made due too, since sr may be theirs now: read, each goes to its
 * relay of today, waiting without an attempt if that one is backed off.
 * The cost is one early try, at most once per reload, for such a message
 * whose relay is another one and up.
 */
static void
relay_mail_due(struct scheduler *s, struct sched_relay *sr)
{
	const struct relay_config *rc;
	struct sched_msg *m;
	struct sched_rec *r;
	uint32_t mine;
	size_t i;

	TAILQ_FOREACH(m, &s->msgs, all) {
		if (m->state != MSG_FINISHING || m->env == NULL)
			continue;	/* (without one: being deleted) */
		if ((rc = msg_primary(s, m)) == NULL ||
		    strcmp(rc->name, sr->name) != 0)
			continue;
		m->flush = 1;
	}
	for (mine = 0; mine < s->nrnames; mine++)
		if (strcmp(s->rnames[mine], sr->name) == 0)
			break;
	for (i = 0; i < s->nheap; i++) {
		r = &s->heap[i];
		if (r->flags & (REC_HELD | REC_UNREAD))
			continue;	/* never due; due already */
		if ((mine < s->nrnames && r->relay == mine) ||
		    r->relay == RELAY_UNKNOWN)
			r->key = 0;
	}
	heap_rebuild(s);
	sched_kick(s);
}

static void msg_route(struct scheduler *, struct sched_msg *);
static void session_open(struct scheduler *, struct sched_relay *,
    const struct relay_config *, struct sched_msg *);

/*
 * Applies verdict v about sr's reachability to its failover state. When
 * that starts a failover, the mail waiting in sr's queue moves to a backup
 * now and its deferred mail is due now; when it ends one, its deferred
 * mail is due now, back on sr.
 */
static void
relay_failover_note(struct scheduler *s, struct sched_relay *sr,
    enum failover_verdict v)
{
	const struct relay_config *rc = config_relay(s->cfg, sr->name);
	enum failover_state was;
	struct sched_msg *m;
	char *list;
	size_t i;

	was = failover_update(&sr->fo, v, time(NULL),
	    rc != NULL ? rc->failover_after : 0, rc != NULL &&
	    rc->nbackup > 0);
	if (was == sr->fo.state)
		return;
	if (sr->fo.state == FAILOVER_ACTIVE) {
		list = xstrdup(rc->backup[0]);
		for (i = 1; i < rc->nbackup; i++) {
			char *more = xasprintf("%s, %s", list, rc->backup[i]);

			free(list);
			list = more;
		}
		log_info("relay %s: unreachable for %llds; failing over to "
		    "%s", sr->name, (long long)(time(NULL) -
		    sr->fo.down_since), list);
		free(list);
		while ((m = TAILQ_FIRST(&sr->ready)) != NULL) {
			TAILQ_REMOVE(&sr->ready, m, ready);
			msg_route(s, m);
		}
	} else if (was == FAILOVER_ACTIVE)
		log_info("relay %s: reachable again; its mail returns from "
		    "the backup relays", sr->name);
	else
		return;
	relay_mail_due(s, sr);
}

/* Backs the relay off (once per failure round) and defers what waits. A
 * relay on its way to a failover is tried again by its deadline. */
static void
relay_backoff(struct scheduler *s, struct sched_relay *sr,
    const struct outcome *o, const char *peer)
{
	const struct relay_config *rc = config_relay(s->cfg, sr->name);
	struct sched_msg *m;
	char text[OUTCOME_TEXT_MAX + 8];
	time_t now = time(NULL), deadline = 0;
	unsigned delay;

	if (o->class == OC_AUTH)
		metrics_auth_failure(sr->name);
	if (o->class == OC_NOCRED || o->class == OC_AUTH) {
		sr->cred_wait = 1;
		cred_timer_arm(s);
	}

	if (sr->backoff_until <= now) {
		sr->failures++;
		delay = scheduler_backoff(s->cfg->retry_min,
		    s->cfg->retry_max, sr->failures);
		if (rc != NULL)
			deadline = failover_deadline(&sr->fo,
			    rc->failover_after, rc->nbackup > 0);
		if (deadline != 0 && deadline < now + (time_t)delay)
			delay = deadline > now ? (unsigned)(deadline - now) : 1;
		sr->backoff_until = now + delay;
		relay_outcome_text(o, text, sizeof(text));
		snprintf(sr->last_error, sizeof(sr->last_error), "%s", text);
		sr->last_error_at = now;
		log_info("relay %s: no new session for %us after failure "
		    "%u: %s", sr->name, delay, sr->failures, text);
	}
	while ((m = TAILQ_FIRST(&sr->ready)) != NULL) {
		TAILQ_REMOVE(&sr->ready, m, ready);
		msg_defer(s, m, peer, o);
	}
}

static void
relay_ok(struct scheduler *s, struct sched_relay *sr)
{
	if (sr->failures > 0 && sr->fo.state != FAILOVER_ACTIVE)
		log_info("relay %s: reachable again", sr->name);
	sr->failures = 0;
	sr->cap = 0;
	sr->backoff_until = 0;
	sr->cred_wait = 0;
	relay_failover_note(s, sr, FAILOVER_REACHED);
}

/* ---- credentials ---- */

/* Clears sr's backoff and makes its deferred mail due now. */
static void
relay_retry_now(struct scheduler *s, struct sched_relay *sr)
{
	sr->failures = 0;
	sr->backoff_until = 0;
	sr->cred_wait = 0;
	relay_mail_due(s, sr);
}

static int
cred_waiting(const struct scheduler *s)
{
	const struct sched_relay *sr;

	TAILQ_FOREACH(sr, &s->relays, entry)
		if (sr->cred_wait)
			return 1;
	return 0;
}

static void
cred_checked(int changed, void *arg)
{
	struct sched_relay *sr = arg;
	struct scheduler *s = sr->s;
	const struct relay_config *rc;
	char hp[600];

	sr->cred_checking = 0;
	if (changed && sr->cred_wait && !s->stopping) {
		if ((rc = config_relay(s->cfg, sr->name)) != NULL &&
		    rc->type == RELAY_TYPE_SMTP)
			relay_hostport(rc, hp, sizeof(hp));
		else
			snprintf(hp, sizeof(hp), "%s", sr->name);
		log_info("credentials for %s changed; retrying deferred mail",
		    hp);
		relay_retry_now(s, sr);
	}
	if (cred_waiting(s))
		cred_timer_arm(s);
}

/* Every SCHED_CRED_CHECK seconds while a relay waits for credentials. */
static void
sched_cred_tick(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	const struct relay_config *rc;
	struct sched_relay *sr;
	int waiting = 0;

	if (s->stopping)
		return;
	TAILQ_FOREACH(sr, &s->relays, entry) {
		if (!sr->cred_wait)
			continue;
		rc = config_relay(s->cfg, sr->name);
		if (rc == NULL || rc->type != RELAY_TYPE_SMTP) {
			sr->cred_wait = 0;
			continue;
		}
		waiting = 1;
		if (sr->cred_checking)
			continue;
		sr->cred_checking = 1;
		relay_credentials_check(sr->relay, s->cfg, rc, cred_checked,
		    sr);
	}
	if (waiting)
		cred_timer_arm(s);
}

/* ---- sessions ---- */

static void
session_unlink(struct scheduler *s, struct sched_session *ss)
{
	TAILQ_REMOVE(&ss->sr->sessions, ss, entry);
	ss->sr->nsessions--;
}

unsigned
scheduler_sessions_open(const struct scheduler *s)
{
	const struct sched_relay *sr;
	unsigned n = 0;

	TAILQ_FOREACH(sr, &s->relays, entry)
		n += sr->nsessions;
	return n;
}

static void
session_free(struct sched_session *ss)
{
	relay_session_free(ss->rs);
	if (ss->ev_idle != NULL)
		event_free(ss->ev_idle);
	free(ss);
}

/* Drops a session now; its messages go back to the heap untouched. */
static void
session_abort(struct scheduler *s, struct sched_session *ss)
{
	if (ss->first != NULL)
		msg_requeue(s, ss->first, 0);
	if (ss->cur != NULL)
		msg_requeue(s, ss->cur, 0);
	if (ss->again != NULL)
		msg_requeue(s, ss->again, 0);
	session_unlink(s, ss);
	session_free(ss);
}

/* The session QUITs and is counted on for no more mail. */
static void
session_quit(struct sched_session *ss)
{
	ss->quitting = 1;
	relay_session_quit(ss->rs);
}

/* An idle session QUITs: its wait ended, or a reload or shutdown came. */
static void
session_idle_end(struct sched_session *ss)
{
	if (!ss->idle)
		return;
	ss->idle = 0;
	evtimer_del(ss->ev_idle);
	log_debug("relay %s: idle session closes", ss->sr->name);
	session_quit(ss);
}

static void
session_idle_cb(evutil_socket_t fd, short what, void *arg)
{
	session_idle_end(arg);
}

/* Nothing to send now: wait for mail for timeout_idle, or QUIT. */
static void
session_wait(struct scheduler *s, struct sched_session *ss)
{
	struct timeval tv = { (time_t)ss->idle_time, 0 };

	if (s->stopping || ss->idle_time == 0 || ss->sent >= ss->max_msgs) {
		session_quit(ss);
		return;
	}
	if (ss->ev_idle == NULL &&
	    (ss->ev_idle = evtimer_new(s->base, session_idle_cb, ss)) == NULL)
		fatalx("%s: evtimer_new", __func__);
	relay_session_idle(ss->rs);
	ss->idle = 1;
	evtimer_add(ss->ev_idle, &tv);
}

static void
shutdown_check(struct scheduler *s)
{
	const struct timeval now = { 0, 0 };

	if (s->stopping && s->done != NULL && scheduler_sessions_open(s) == 0)
		evtimer_add(s->ev_stopped, &now);
}

/*
 * Gives the session its next message: its first, else the relay's next
 * ready one; with none (or its limit reached, or a shutdown) it waits
 * idle or QUITs. Called from ready() and for a session woken from idle.
 */
static void
sess_feed(struct scheduler *s, struct sched_session *ss)
{
	struct relay_session *rs = ss->rs;
	struct sched_relay *sr = ss->sr;
	struct sched_msg *m;

	for (;;) {
		if ((m = ss->first) != NULL) {
			ss->first = NULL;
			if (s->stopping) {
				msg_requeue(s, m, 0);
				session_quit(ss);
				return;
			}
		} else {
			if (s->stopping || ss->sent >= ss->max_msgs ||
			    (m = TAILQ_FIRST(&sr->ready)) == NULL) {
				session_wait(s, ss);
				return;
			}
			TAILQ_REMOVE(&sr->ready, m, ready);
			msg_begin_attempt(m);
		}
		ss->sent++;
		ss->cur = m;
		ss->sent_us = clock_mono_us();
		if (relay_session_send(rs, m->env) == 0)
			return;
		ss->cur = NULL;
		ss->sent_us = 0;
		if (errno == EMFILE || errno == ENFILE) {
			/* No descriptor for its file: not an attempt. */
			log_warnx("%s: cannot open queue file: %s; retrying "
			    "in %us", m->idstr, strerror(errno),
			    SCHED_LOCAL_RETRY);
			msg_requeue(s, m, (int64_t)time(NULL) +
			    SCHED_LOCAL_RETRY);
			continue;
		}
		/* Not started (body unreadable): already deferred. */
		msg_attempted(s, m, NULL);
	}
}

/* Adds a measure of sample microseconds to a. */
static void
avg_note(struct sched_avg *a, uint64_t sample)
{
	uint64_t diff;

	if (sample == 0)
		sample = 1;
	if (a->mean == 0) {
		a->mean = sample;
		a->dev = sample / 2;
		return;
	}
	diff = sample > a->mean ? sample - a->mean : a->mean - sample;
	a->dev = (3 * a->dev + diff) / 4;
	a->mean = (7 * a->mean + sample) / 8;
	if (a->mean == 0)
		a->mean = 1;
}

/* How long after its start a step measured by a is late. */
static uint64_t
avg_late(const struct sched_avg *a)
{
	uint64_t slack = 4 * a->dev;

	if (slack < (SCHED_LATE_FACTOR - 1) * a->mean)
		slack = (SCHED_LATE_FACTOR - 1) * a->mean;
	return a->mean + slack;
}

static void
sess_ready(struct relay_session *rs, void *arg)
{
	struct sched_session *ss = arg;

	if (!ss->ready)
		avg_note(&ss->sr->setup, clock_mono_us() - ss->opened_us);
	ss->ready = 1;
	relay_ok(ss->s, ss->sr);
	if (!ss->sr->tls_warm) {
		/* sessions held back by relay_start() may open now */
		ss->sr->tls_warm = 1;
		sched_kick(ss->s);
	}
	sess_feed(ss->s, ss);
}

/* Counts the recipients this attempt through sr sent, deferred or
 * failed, for status. */
static void
relay_count(struct sched_relay *sr, const struct sched_msg *m)
{
	const struct envelope_rcpt *r;
	size_t i;

	for (i = 0; m->tried != NULL && i < m->env->nrcpts; i++) {
		if (m->tried[i] != TRIED_YES)
			continue;
		r = &m->env->rcpts[i];
		switch (r->status) {
		case RCPT_SENT:
			sr->nsent++;
			sr->last_delivery = time(NULL);
			break;
		case RCPT_FAILED:
		case RCPT_PENDING:
			if (r->status == RCPT_FAILED)
				sr->nfailed++;
			else
				sr->ndeferred++;
			if (r->reply != NULL) {
				snprintf(sr->last_error, sizeof(sr->last_error),
				    "%s", r->reply);
				sr->last_error_at = time(NULL);
			}
			break;
		}
	}
}

/*
 * Writes what this attempt delivered into m's queue file at once, unsynced
 * (queue_note()), so that the daemon's own crash before the state record
 * is synced does not send those recipients again. Recipients that failed
 * in this attempt are written as still pending: their bounce is not
 * committed yet, and a crash must not lose it.
 */
static void
msg_note(struct scheduler *s, struct sched_msg *m)
{
	struct envelope *env = m->env;
	enum rcpt_status *saved;
	size_t i, nsent = 0;

	for (i = 0; m->tried != NULL && i < env->nrcpts; i++)
		if (m->tried[i] != TRIED_NO && env->rcpts[i].status == RCPT_SENT)
			nsent++;
	if (nsent == 0)
		return;
	saved = xcalloc(env->nrcpts, sizeof(*saved));
	for (i = 0; i < env->nrcpts; i++) {
		saved[i] = env->rcpts[i].status;
		if (m->tried[i] != TRIED_NO && saved[i] == RCPT_FAILED)
			env->rcpts[i].status = RCPT_PENDING;
	}
	if (queue_note(s->q, env) == -1)
		log_warn("%s: cannot note the delivery before its sync",
		    m->idstr);
	else
		log_debug("%s: delivery noted, not yet synced", m->idstr);
	for (i = 0; i < env->nrcpts; i++)
		env->rcpts[i].status = saved[i];
	free(saved);
}

static void
sess_delivered(struct relay_session *rs, struct envelope *env,
    const struct outcome *o, void *arg)
{
	struct sched_session *ss = arg;
	struct sched_msg *m = ss->cur;

	if (m == NULL || m->env != env)
		fatalx("%s: delivery report for a message not in flight",
		    __func__);
	ss->cur = NULL;
	if (o->status == OUTCOME_OK)
		avg_note(&ss->sr->txn, clock_mono_us() - ss->sent_us);
	ss->sent_us = 0;
	msg_note(ss->s, m);
	m->auth_retry = o->class == OC_AUTH_RETRY &&
	    o->status != OUTCOME_OK;
	relay_count(ss->sr, m);
	msg_attempted(ss->s, m, relay_session_host(rs));
}

/*
 * The session's reused connection was gone before the server answered
 * anything of m's transaction (the server closed it for being idle just
 * as m was given to it): the server has no part of m, so this is not an
 * attempt. m goes first on a new session, opened at once in this one's
 * place when it closes (sess_closed, sess_again), instead of waiting
 * retry_min as a failed attempt would. Once per message while it is
 * active: a second such end in a row is deferred as a failed attempt, so
 * a server that drops every reused connection cannot keep a message
 * going round (and the new session's first transaction is never on a
 * reused connection anyway).
 */
static void
sess_unsent(struct relay_session *rs, struct envelope *env,
    const struct outcome *o, void *arg)
{
	struct sched_session *ss = arg;
	struct sched_msg *m = ss->cur;
	char text[OUTCOME_TEXT_MAX + 8];

	if (m == NULL || m->env != env)
		fatalx("%s: unsent report for a message not in flight",
		    __func__);
	ss->cur = NULL;
	ss->sent_us = 0;
	if (m->stale_retried) {
		relay_defer_all(m->env, relay_session_peer(rs), o);
		relay_count(ss->sr, m);
		msg_attempted(ss->s, m, NULL);
		return;
	}
	m->stale_retried = 1;
	relay_outcome_text(o, text, sizeof(text));
	log_info("%s: relay=%s: the reused connection was gone before the "
	    "server answered (%s); not an attempt, sending it again at once "
	    "on a new connection", m->idstr, relay_session_peer(rs), text);
	ss->again = m;
}

/* m, handed back by sess_unsent, goes first on a new session to sr; or,
 * when sr takes no new session now (shutdown, backoff, removed by a
 * reload), back to the heap untouched, due at once. */
static void
sess_again(struct scheduler *s, struct sched_relay *sr, struct sched_msg *m)
{
	const struct relay_config *rc;

	if (s->stopping || sr->backoff_until > time(NULL) ||
	    (rc = config_relay(s->cfg, sr->name)) == NULL) {
		msg_requeue(s, m, 0);
		return;
	}
	session_open(s, sr, rc, m);
}

/*
 * A session failed before it was ready, but sr has other sessions open:
 * one refused or dropped connection while others are up or on their way
 * says that connection failed (a limit of the upstream's, a transient
 * error), not that the relay is down, which a backoff would act on by
 * deferring every message waiting for sr for retry_min. So the relay is
 * judged by the sessions still open (the last of them to fail backs it
 * off as usual); the failed session's first message goes back to the
 * head of the ready list, not an attempt since nothing was offered; and
 * sr opens no more sessions than it has now until one of them is ready
 * (relay_ok), so an upstream that takes only so many connections costs
 * one failed connection per new session, not a loop of them.
 */
static int
sess_failed_among_others(struct scheduler *s, struct sched_session *ss,
    const struct outcome *o)
{
	struct sched_relay *sr = ss->sr;
	struct sched_msg *m;
	char text[OUTCOME_TEXT_MAX + 8];
	unsigned others = sr->nsessions - 1;

	/* The failures a backoff is for, less credentials' (the verdict
	 * of failover.h): this connection could not be had. */
	if (ss->ready || others == 0 ||
	    failover_judge(0, o) != FAILOVER_UNREACHABLE)
		return 0;
	if ((m = ss->first) != NULL) {
		ss->first = NULL;
		free(m->tried);
		m->tried = NULL;
		msg_set_state(m, MSG_READY);
		TAILQ_INSERT_HEAD(&sr->ready, m, ready);
	}
	sr->cap = others;
	relay_outcome_text(o, text, sizeof(text));
	log_info("relay %s: a new session failed while %u other%s open "
	    "(%s); no backoff, at most %u session%s until one is ready",
	    sr->name, others, others == 1 ? " is" : "s are", text, others,
	    others == 1 ? "" : "s");
	return 1;
}

static void
sess_closed(struct relay_session *rs, const struct outcome *o, void *arg)
{
	struct sched_session *ss = arg;
	struct scheduler *s = ss->s;
	struct sched_msg *m;
	struct outcome gone;
	enum failover_verdict v;
	int judged;

	if (o->status == OUTCOME_OK && ss->first != NULL) {
		outcome_set(&gone, OUTCOME_TEMPORARY, OC_PROTOCOL,
		    "session closed before it was ready");
		o = &gone;
	}
	/* Judged by the sessions still open: no verdict, no backoff. */
	judged = !s->stopping && sess_failed_among_others(s, ss, o);
	if ((m = ss->first) != NULL && o->class == OC_RESOURCE) {
		/* We ran out of descriptors, the relay did nothing wrong:
		 * not an attempt, and no backoff. */
		ss->first = NULL;
		msg_requeue(s, m, (int64_t)time(NULL) + SCHED_LOCAL_RETRY);
	} else if (m != NULL) {
		ss->first = NULL;
		msg_defer(s, m, relay_session_peer(rs), o);
	}
	if ((m = ss->cur) != NULL) {
		/* The relay reports delivered() first; be safe anyway. */
		ss->cur = NULL;
		msg_requeue(s, m, 0);
	}
	if (!judged) {
		/* A session that was ready told relay_ok() already. */
		v = ss->ready ? FAILOVER_REACHED : failover_judge(0, o);
		if (!ss->ready)
			relay_failover_note(s, ss->sr, v);
		if (relay_failure(o) || v == FAILOVER_UNREACHABLE)
			relay_backoff(s, ss->sr, o, relay_session_peer(rs));
	}
	session_unlink(s, ss);
	if ((m = ss->again) != NULL) {
		ss->again = NULL;
		sess_again(s, ss->sr, m);
	}
	session_free(ss);
	if (s->stopping)
		shutdown_check(s);
	else
		sched_kick(s);
}

static const struct relay_session_cb sess_cb = {
	.ready = sess_ready,
	.delivered = sess_delivered,
	.unsent = sess_unsent,
	.closed = sess_closed,
};

/* ---- dispatch ---- */

/* Where mail for rc goes now: rc, or while rc is failed over, the backup
 * that failover_pick() chooses. */
static const struct relay_config *
relay_failover_target(struct scheduler *s, const struct relay_config *rc)
{
	const struct relay_config *b;
	struct sched_relay *sr, *bsr;
	time_t *free_at;
	size_t i;

	sr = sched_relay_find(s, rc->name);
	if (sr == NULL || sr->fo.state != FAILOVER_ACTIVE || rc->nbackup == 0)
		return rc;
	free_at = xcalloc(rc->nbackup, sizeof(*free_at));
	for (i = 0; i < rc->nbackup; i++)
		if ((bsr = sched_relay_find(s, rc->backup[i])) != NULL)
			free_at[i] = bsr->backoff_until;
	i = failover_pick(free_at, rc->nbackup, time(NULL));
	free(free_at);
	/* Validated at load: every backup names a relay. */
	if ((b = config_relay(s->cfg, rc->backup[i])) == NULL)
		return rc;
	return b;
}

static void
msg_route(struct scheduler *s, struct sched_msg *m)
{
	const struct relay_config *rc, *primary;
	struct sched_relay *sr;
	struct outcome o;

	primary = msg_primary(s, m);
	rc = primary != NULL ? relay_failover_target(s, primary) : NULL;
	if (rc != NULL && rc != primary)
		log_debug("%s: relay %s is failed over; trying %s", m->env->id,
		    primary->name, rc->name);
	if (rc == NULL) {
		outcome_set(&o, OUTCOME_TEMPORARY, OC_LOCAL,
		    "relay %s is not configured", m->env->relay);
		msg_defer(s, m, "none", &o);
		return;
	}
	sr = sched_relay_get(s, rc->name);
	if (sr->backoff_until > time(NULL)) {
		/* Nothing starts before the backoff ends: wait in the heap
		 * rather than hold a place in the active set. */
		msg_park(s, m, (int64_t)sr->backoff_until);
		return;
	}
	msg_set_state(m, MSG_READY);
	TAILQ_INSERT_TAIL(&sr->ready, m, ready);
}

/* Opens a session to rc for sr; first is the message it sends first, or
 * NULL for a probe, which takes what is ready once up and else quits. */
static void
session_open(struct scheduler *s, struct sched_relay *sr,
    const struct relay_config *rc, struct sched_msg *first)
{
	struct sched_session *ss;

	ss = xcalloc(1, sizeof(*ss));
	ss->s = s;
	ss->sr = sr;
	ss->first = first;
	ss->max_msgs = rc->max_msgs_per_conn > 0 ? rc->max_msgs_per_conn : 1;
	ss->idle_time = rc->timeout_idle;
	ss->opened_us = clock_mono_us();
	TAILQ_INSERT_TAIL(&sr->sessions, ss, entry);
	sr->nsessions++;
	ss->rs = relay_session_new(sr->relay, s->cfg, rc, &sess_cb, ss);
}

/* When sr, found unreachable and having backups, is to be probed (the
 * end of its backoff), or 0 when it is not. */
static time_t
relay_probe_at(struct scheduler *s, const struct sched_relay *sr)
{
	const struct relay_config *rc;

	if (sr->fo.state == FAILOVER_UP || sr->nsessions > 0 ||
	    (rc = config_relay(s->cfg, sr->name)) == NULL || rc->nbackup == 0)
		return 0;
	return sr->backoff_until > 0 ? sr->backoff_until : 1;
}

/*
 * When a record names a relay in backoff, the time the backoff ends, else
 * 0: such a message need not even be read before then.
 */
static time_t
rec_relay_backoff(struct scheduler *s, const struct sched_rec *r,
    time_t now)
{
	const struct relay_config *rc;
	const struct sched_relay *sr;

	if (r->relay == RELAY_UNKNOWN ||
	    (rc = config_relay(s->cfg, s->rnames[r->relay])) == NULL ||
	    (sr = sched_relay_find(s, relay_failover_target(s, rc)->name)) ==
	    NULL)
		return 0;
	return sr->backoff_until > now ? sr->backoff_until : 0;
}

/* ---- loading envelopes ---- */

/* Envelopes to read on the worker pool, for messages taken from the heap. */
struct load_job {
	struct queue *q;
	size_t n;
	struct sched_msg *m[SCHED_LOAD_BATCH];
};

/* On a pool thread: touches only env and load_error of each message. */
static void
load_work(void *arg)
{
	struct load_job *job = arg;
	struct sched_msg *m;
	size_t i;

	for (i = 0; i < job->n; i++) {
		m = job->m[i];
		if ((m->env = queue_read(job->q, m->idstr)) == NULL)
			m->load_error = errno;
	}
}

/* A message's envelope was read (or not): decide where it goes. */
/* n more messages found at start are read (or known gone). */
static void
unread_done(struct scheduler *s, size_t n)
{
	if (n == 0 || s->nunread == 0)
		return;
	s->nunread -= n < s->nunread ? n : s->nunread;
	if (s->nunread == 0)
		log_info("every message found at start has been read");
}

static void
msg_loaded(struct scheduler *s, struct sched_msg *m, time_t now)
{
	struct envelope *env = m->env;

	if ((m->rec_flags & REC_UNREAD) && (env != NULL ||
	    m->load_error == ENOENT || m->load_error == EBADMSG))
		unread_done(s, 1);
	if (env == NULL) {
		if (m->load_error == ENOENT || m->load_error == EBADMSG) {
			/* Gone, or moved to corrupt/ with a log line. */
			log_warnx("%s: %s; forgotten", m->idstr,
			    m->load_error == ENOENT ? "gone from the spool" :
			    "unreadable");
			msg_drop(s, m);
			return;
		}
		/* Transient (no descriptor, I/O error), logged: again soon,
		 * never forgotten. */
		msg_park(s, m, (int64_t)now + SCHED_LOCAL_RETRY);
		return;
	}
	if (s->stopping || (env->flags & ENVELOPE_HOLD)) {
		msg_park(s, m, m->flush ? 0 : (int64_t)env->next_try);
		return;
	}
	if (envelope_count(env, RCPT_PENDING) == 0) {
		/* Finished before a crash or restart: only removal is left. */
		msg_persist(s, m);
		return;
	}
	if ((m->rec_flags & REC_UNREAD) && !(m->rec_flags & REC_FLUSHED) &&
	    !m->flush && env->next_try > now) {
		/* Read for the first time since start: not due yet. */
		msg_park(s, m, (int64_t)env->next_try);
		return;
	}
	m->flush = 0;
	msg_route(s, m);
}

static void
load_done(void *arg)
{
	struct load_job *job = arg;
	struct scheduler *s = job->m[0]->s;
	time_t now = time(NULL);
	size_t i;

	if (s == NULL) {
		/* Orphaned by scheduler_free. */
		for (i = 0; i < job->n; i++)
			msg_free(job->m[i]);
		free(job);
		return;
	}
	s->nloading--;
	for (i = 0; i < job->n; i++)
		msg_loaded(s, job->m[i], now);
	free(job);
	sched_kick(s);
}

/*
 * Takes due records off the heap while the active set has room, and reads
 * their envelopes on the worker pool, SCHED_LOAD_BATCH per job and at most
 * SCHED_LOAD_JOBS jobs at once. Each finished job kicks the dispatcher.
 */
static void
sched_take(struct scheduler *s, time_t now)
{
	struct load_job *job = NULL;
	struct sched_msg *m;
	struct sched_rec r;
	time_t until;

	while (s->nheap > 0 && s->heap[0].key <= (int64_t)now &&
	    s->nactive < SCHED_ACTIVE_MAX) {
		if (job == NULL && s->nloading >= SCHED_LOAD_JOBS)
			break;
		r = heap_pop(s);
		if ((until = rec_relay_backoff(s, &r, now)) != 0) {
			r.key = key_of((int64_t)until);
			heap_push(s, &r);
			continue;
		}
		m = msg_new(s, r.id);
		m->rec_flags = r.flags;
		msg_link(s, m);
		if (job == NULL) {
			job = xcalloc(1, sizeof(*job));
			job->q = s->q;
			s->nloading++;
		}
		job->m[job->n++] = m;
		if (job->n == SCHED_LOAD_BATCH) {
			worker_run(s->w, load_work, load_done, job);
			job = NULL;
		}
	}
	if (job != NULL)
		worker_run(s->w, load_work, load_done, job);
}

/*
 * When session ss can start a further message of its relay, from what is
 * known of it now (us), into *free_at, and the moment it is late, into
 * *late_at. Returns how many more messages it can take, 0 when it is
 * counted on for none: quitting, at its max_msgs, its connection gone,
 * idle (it was given mail already, or there is none), or late.
 */
static unsigned
session_free_at(const struct sched_session *ss, uint64_t us,
    uint64_t *free_at, uint64_t *late_at)
{
	const struct sched_relay *sr = ss->sr;
	unsigned used = ss->sent + (ss->first != NULL);
	uint64_t start, up;

	if (ss->quitting || ss->idle || ss->again != NULL ||
	    used >= ss->max_msgs)
		return 0;
	/* Before a step was ever measured, a session is counted on until
	 * the longest wait has passed (the cap below). */
	if (!ss->ready) {
		/* Connecting: ready about setup.mean after it opened,
		 * then busy with its first message. */
		start = ss->opened_us;
		*late_at = sr->setup.mean == 0 ? UINT64_MAX :
		    start + avg_late(&sr->setup);
		up = start + sr->setup.mean;
		*free_at = (up > us ? up : us) +
		    (ss->first != NULL ? sr->txn.mean : 0);
	} else if (ss->cur != NULL && ss->sent_us != 0) {
		/* Waiting longer for it than a new session takes to set
		 * up is worth it only while the transaction is not far out
		 * of the usual: a loaded loop slows every transaction. */
		start = ss->sent_us;
		*late_at = sr->txn.mean == 0 ? UINT64_MAX :
		    start + avg_late(&sr->txn) + sr->setup.mean;
		up = start + sr->txn.mean;
		*free_at = up > us ? up : us;
	} else {
		/* Between a delivery and its next ready(): free now. */
		*late_at = UINT64_MAX;
		*free_at = us;
		return ss->max_msgs - used;
	}
	/* Nothing waits for one step of it longer than the longest wait. */
	if (*late_at > start + SCHED_BUSY_WAIT_MS * 1000)
		*late_at = start + SCHED_BUSY_WAIT_MS * 1000;
	if (us >= *late_at)
		return 0;
	return ss->max_msgs - used;
}

/*
 * How many of sr's ready messages its open sessions will carry soon: a
 * message waits for an open session, rather than have a new one opened
 * for it, when that session will be free to start it sooner than a new
 * connection would be ready (the average set-up time from now), and
 * within SCHED_BUSY_WAIT_MS; each session starts one message per average
 * transaction time, for at most SCHED_CARRY_MAX of them. So a steady
 * stream that one connection can carry uses one connection, while a
 * burst still opens up to max_connections: a busy session takes only
 * what it will get to before a new one could. A late session (its
 * transaction or set-up has taken far longer than usual, avg_late: a slow
 * server, a stuck transaction) carries nothing, so mail behind it gets a
 * new connection. *recheck is set to the first moment a carrying session
 * turns late (or 0 when nothing is carried): the dispatcher looks again
 * then, in case the session is not done by that time.
 */
static size_t
relay_carried(const struct sched_relay *sr, uint64_t us, uint64_t *recheck)
{
	const struct sched_session *ss;
	uint64_t horizon, free_at = 0, late_at = 0, n;
	size_t carried = 0;
	unsigned left;

	*recheck = 0;
	/* With nothing measured yet (a relay's first session), a new
	 * connection is counted as slow as the longest wait, and an open
	 * one on for as many as it may carry. */
	horizon = sr->setup.mean != 0 && sr->setup.mean <
	    SCHED_BUSY_WAIT_MS * 1000 ? sr->setup.mean :
	    SCHED_BUSY_WAIT_MS * 1000;
	TAILQ_FOREACH(ss, &sr->sessions, entry) {
		if ((left = session_free_at(ss, us, &free_at, &late_at)) == 0 ||
		    free_at >= us + horizon)
			continue;
		/* starts at free_at, free_at + txn.mean, ... before the
		 * horizon */
		n = sr->txn.mean == 0 ? SCHED_CARRY_MAX : (us + horizon -
		    free_at + sr->txn.mean - 1) / sr->txn.mean;
		if (n > left)
			n = left;
		if (n > SCHED_CARRY_MAX)
			n = SCHED_CARRY_MAX;
		carried += (size_t)n;
		/* (one free now takes it from its next ready()) */
		if (late_at != UINT64_MAX &&
		    (*recheck == 0 || late_at < *recheck))
			*recheck = late_at;
	}
	return carried;
}

/*
 * Starts what sr's ready messages need now: idle sessions take them
 * first, the rest go on new sessions within max_connections, less those
 * that open sessions will carry soon (relay_carried). *recheck is set
 * when some wait for a busy session: when to look again (clock_mono_us),
 * else left alone.
 */
static void
relay_start(struct scheduler *s, struct sched_relay *sr, time_t now,
    uint64_t us, uint64_t *recheck)
{
	const struct relay_config *rc;
	struct sched_session *ss;
	struct sched_msg *m, *next;
	struct outcome o;
	unsigned max;
	time_t probe;
	size_t carried, i;
	uint64_t when;

	if (TAILQ_EMPTY(&sr->ready)) {
		/* No mail needs it, but the mail of its failover does. */
		if ((probe = relay_probe_at(s, sr)) != 0 && probe <= now) {
			log_info("relay %s: probing whether it is reachable "
			    "(%s)", sr->name,
			    failover_state_name(sr->fo.state));
			session_open(s, sr, config_relay(s->cfg, sr->name),
			    NULL);
		}
		return;
	}
	if ((rc = config_relay(s->cfg, sr->name)) == NULL) {
		/* Removed by a reload while messages waited for it. */
		outcome_set(&o, OUTCOME_TEMPORARY, OC_LOCAL,
		    "relay %s is not configured", sr->name);
		while ((m = TAILQ_FIRST(&sr->ready)) != NULL) {
			TAILQ_REMOVE(&sr->ready, m, ready);
			msg_defer(s, m, "none", &o);
		}
		return;
	}
	if (sr->backoff_until > now)
		return;
	/* Idle sessions first: they are up already. */
	TAILQ_FOREACH(ss, &sr->sessions, entry) {
		if (TAILQ_EMPTY(&sr->ready))
			return;
		if (!ss->idle)
			continue;
		ss->idle = 0;
		evtimer_del(ss->ev_idle);
		sess_feed(s, ss);
	}
	max = rc->max_connections > 0 ? rc->max_connections : 1;
	if (sr->cap > 0 && sr->cap < max)
		max = sr->cap;
	/*
	 * A TLS relay with no session to resume yet (since start or a
	 * reload) gets one connection first; the others open once it is
	 * ready, when the server's ticket has come with its reply to EHLO,
	 * and resume it. Opened at once, each would make a full handshake
	 * (the bench saw 16 of 20 parallel first connections do so). The
	 * cost is that connection's set-up time, once, for the messages
	 * beyond the first; and nothing in round trips later, since a TLS
	 * 1.3 resumption takes as many as a full handshake: what it saves
	 * is the certificate and signature work on both ends.
	 */
	if (rc->type == RELAY_TYPE_SMTP && rc->tls != TLS_MODE_NONE &&
	    !sr->tls_warm)
		max = 1;
	if (sr->nsessions >= max)
		return;
	/* The first messages wait for the sessions that carry them; those
	 * after them get new sessions. */
	carried = relay_carried(sr, us, &when);
	m = TAILQ_FIRST(&sr->ready);
	for (i = 0; i < carried && m != NULL; i++)
		m = TAILQ_NEXT(m, ready);
	if (i > 0 && when != 0 && (*recheck == 0 || when < *recheck))
		*recheck = when;
	for (; sr->nsessions < max && m != NULL; m = next) {
		next = TAILQ_NEXT(m, ready);
		TAILQ_REMOVE(&sr->ready, m, ready);
		msg_begin_attempt(m);
		session_open(s, sr, rc, m);
	}
}

static void
sched_dispatch(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	struct sched_relay *sr;
	struct timeval tv;
	time_t now = time(NULL), wake = 0, probe;
	uint64_t us = clock_mono_us(), recheck = 0;

	if (s->stopping)
		return;
	sched_take(s, now);
	TAILQ_FOREACH(sr, &s->relays, entry)
		relay_start(s, sr, now, us, &recheck);
	if (recheck != 0) {
		recheck = recheck > us ? recheck - us : 0;
		tv.tv_sec = (time_t)(recheck / 1000000);
		tv.tv_usec = (suseconds_t)(recheck % 1000000);
		evtimer_add(s->ev_carry, &tv);
	} else
		evtimer_del(s->ev_carry);

	/* A due record that could not be taken waits for a place in the
	 * active set or a load job: their ends kick the dispatcher. */
	if (s->nheap > 0 && s->heap[0].key > (int64_t)now &&
	    s->heap[0].key != KEY_HELD)
		wake = (time_t)s->heap[0].key;
	TAILQ_FOREACH(sr, &s->relays, entry) {
		if (!TAILQ_EMPTY(&sr->ready) && sr->backoff_until > now &&
		    (wake == 0 || sr->backoff_until < wake))
			wake = sr->backoff_until;
		if ((probe = relay_probe_at(s, sr)) > now &&
		    (wake == 0 || probe < wake))
			wake = probe;
	}
	if (wake != 0) {
		tv.tv_sec = wake > now ? wake - now : 0;
		tv.tv_usec = 0;
		evtimer_add(s->ev_timer, &tv);
	}
}

/* ---- shutdown ---- */

static void
sched_stopped(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	void (*done)(void *) = s->done;

	evtimer_del(s->ev_deadline);
	s->done = NULL;
	if (done != NULL)
		done(s->done_arg);
}

static void
sched_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	struct sched_relay *sr;
	struct sched_session *ss;
	unsigned n = scheduler_sessions_open(s);

	if (n > 0)
		log_warnx("shutdown: aborting %u relay session%s; their "
		    "messages stay queued", n, n == 1 ? "" : "s");
	TAILQ_FOREACH(sr, &s->relays, entry)
		while ((ss = TAILQ_FIRST(&sr->sessions)) != NULL)
			session_abort(s, ss);
	sched_stopped(-1, 0, s);
}

/* ---- the public face ---- */

/* Opens the learned set in cfg's state_dir; without a usable directory it
 * lives in memory only (and says so). */
static void
sched_open_authstate(struct scheduler *s)
{
	char err[512];

	authstate_free(s->as);
	free(s->state_dir);
	s->state_dir = xstrdup(s->cfg->state_dir);
	if ((s->as = authstate_open(s->w, s->state_dir, err, sizeof(err))) ==
	    NULL) {
		log_warnx("%s; relays learned to require authentication are "
		    "kept in memory only", err);
		s->as = authstate_new();
	}
}

struct scheduler *
scheduler_new(struct event_base *base, struct evdns_base *dns,
    struct queue *q, struct worker *w, const struct config *cfg)
{
	struct scheduler *s;

	s = xcalloc(1, sizeof(*s));
	s->base = base;
	s->dns = dns;
	s->q = q;
	s->w = w;
	s->cfg = cfg;
	TAILQ_INIT(&s->msgs);
	TAILQ_INIT(&s->relays);
	if ((s->ev_timer = evtimer_new(base, sched_dispatch, s)) == NULL ||
	    (s->ev_stopped = evtimer_new(base, sched_stopped, s)) == NULL ||
	    (s->ev_deadline = evtimer_new(base, sched_deadline, s)) == NULL ||
	    (s->ev_cred = evtimer_new(base, sched_cred_tick, s)) == NULL ||
	    (s->ev_carry = evtimer_new(base, sched_dispatch, s)) == NULL)
		fatalx("%s: evtimer_new", __func__);
	sched_open_authstate(s);
	return s;
}

void
scheduler_free(struct scheduler *s)
{
	struct sched_relay *sr;
	struct sched_session *ss;
	struct sched_msg *m;

	if (s == NULL)
		return;
	while ((sr = TAILQ_FIRST(&s->relays)) != NULL) {
		while ((ss = TAILQ_FIRST(&sr->sessions)) != NULL) {
			TAILQ_REMOVE(&sr->sessions, ss, entry);
			session_free(ss);
		}
		TAILQ_REMOVE(&s->relays, sr, entry);
		relay_free(sr->relay);
		free(sr->name);
		free(sr);
	}
	authstate_free(s->as);
	free(s->state_dir);
	while ((m = TAILQ_FIRST(&s->msgs)) != NULL) {
		TAILQ_REMOVE(&s->msgs, m, all);
		if (m->state == MSG_FINISHING && m->dsn != NULL) {
			dsn_cancel(m->dsn);
			msg_free(m);
		} else if (m->state == MSG_FINISHING && (m->ev_retry == NULL ||
		    !evtimer_pending(m->ev_retry, NULL)))
			m->s = NULL;	/* the queue's callback frees it */
		else if (m->state == MSG_LOADING)
			m->s = NULL;	/* the load job's callback frees it */
		else
			msg_free(m);
	}
	event_free(s->ev_timer);
	event_free(s->ev_stopped);
	event_free(s->ev_deadline);
	event_free(s->ev_cred);
	event_free(s->ev_carry);
	free(s->heap);
	while (s->nrnames > 0)
		free(s->rnames[--s->nrnames]);
	free(s->rnames);
	free(s);
}

void
scheduler_add(struct scheduler *s, struct envelope *env)
{
	struct sched_msg *m;

	m = msg_new(s, envelope_id_number(env->id));
	m->env = env;
	msg_link(s, m);
	if (env->flags & ENVELOPE_HOLD) {
		msg_park(s, m, 0);
		return;
	}
	if (envelope_count(env, RCPT_PENDING) == 0) {
		/* Finished before a crash or restart: only removal is left. */
		msg_persist(s, m);
		return;
	}
	/* New mail is tried at once, its envelope at hand, unless the
	 * active set is full (then it is read again when taken). */
	if (s->stopping || env->next_try > time(NULL) ||
	    s->nactive > SCHED_ACTIVE_MAX)
		msg_park(s, m, (int64_t)env->next_try);
	else
		msg_route(s, m);
	sched_kick(s);
}

void
scheduler_add_id(struct scheduler *s, const char *id)
{
	struct sched_rec r;

	r.id = envelope_id_number(id);
	r.key = KEY_UNREAD;
	r.relay = RELAY_UNKNOWN;
	r.flags = REC_UNREAD;
	heap_push(s, &r);
	s->nunread++;
	sched_kick(s);
}

void
scheduler_flush(struct scheduler *s)
{
	struct sched_relay *sr;
	struct sched_msg *m;
	size_t i;

	TAILQ_FOREACH(m, &s->msgs, all)
		if (m->state == MSG_FINISHING || m->state == MSG_LOADING)
			m->flush = 1;
	/* Due now for real, whatever the file says. */
	for (i = 0; i < s->nheap; i++) {
		if (!(s->heap[i].flags & REC_HELD)) {
			s->heap[i].key = 0;
			s->heap[i].flags |= REC_FLUSHED;
		}
	}
	heap_rebuild(s);
	TAILQ_FOREACH(sr, &s->relays, entry) {
		sr->failures = 0;
		sr->backoff_until = 0;
	}
	sched_kick(s);
}

void
scheduler_set_config(struct scheduler *s, const struct config *cfg)
{
	struct sched_relay *sr;
	struct sched_session *ss;
	size_t i;

	s->cfg = cfg;
	/* The routes may have changed: a waiting message's relay is known
	 * again when it is next read (a pinned one keeps its own). Until
	 * then a backoff of the relay it had does not hold it back. */
	for (i = 0; i < s->nheap; i++)
		if (!(s->heap[i].flags & REC_PINNED))
			s->heap[i].relay = RELAY_UNKNOWN;
	/* HUP re-reads the credential files, whatever their mtime says,
	 * and mail waiting for credentials is checked now rather than at
	 * the next tick. The TLS context is made again too (the CA file
	 * may have changed under the same name), so no session is resumed
	 * across a reload, and idle sessions, made with the old settings,
	 * close. */
	TAILQ_FOREACH(sr, &s->relays, entry) {
		relay_credentials_flush(sr->relay);
		relay_tls_flush(sr->relay);
		sr->tls_warm = 0;
		TAILQ_FOREACH(ss, &sr->sessions, entry)
			session_idle_end(ss);
	}
	if (!s->stopping && cred_waiting(s)) {
		evtimer_del(s->ev_cred);
		event_active(s->ev_cred, EV_TIMEOUT, 0);
	}
	/* The relays keep pointing at the old set: it moves with them only
	 * when a reload names another state directory, which is rare
	 * enough to cost a restart. */
	if (strcmp(cfg->state_dir, s->state_dir) != 0)
		log_warnx("state_dir changed to %s: takes effect after a "
		    "restart", cfg->state_dir);
	sched_kick(s);
}

void
scheduler_shutdown(struct scheduler *s, unsigned timeout,
    void (*done)(void *arg), void *arg)
{
	const struct timeval deadline = { (time_t)timeout, 0 };
	struct sched_relay *sr;
	struct sched_session *ss, *next;

	s->stopping = 1;
	s->done = done;
	s->done_arg = arg;
	evtimer_del(s->ev_timer);
	evtimer_del(s->ev_cred);
	/* Sessions still connecting (probes too) carry no transaction yet:
	 * drop them. Idle ones QUIT now. */
	TAILQ_FOREACH(sr, &s->relays, entry) {
		for (ss = TAILQ_FIRST(&sr->sessions); ss != NULL; ss = next) {
			next = TAILQ_NEXT(ss, entry);
			if (!ss->ready)
				session_abort(s, ss);
			else
				session_idle_end(ss);
		}
	}
	if (scheduler_sessions_open(s) > 0)
		evtimer_add(s->ev_deadline, &deadline);
	shutdown_check(s);
}

size_t
scheduler_count(const struct scheduler *s)
{
	return s->nheap + s->nactive;
}

/* ---- control socket (smarthostctl queue); kept apart for its owner ---- */

struct listed {
	uint64_t id;
	const struct sched_msg *m;    /* NULL: a record */
	const struct sched_rec *r;    /* NULL: an active message */
};

/*
 * Records have no envelope in memory, so their files are read here, on
 * the calling thread: for tests and tools, never for the daemon's control
 * socket, which lists through scheduler_list_* off the loop.
 */
void
scheduler_foreach(struct scheduler *s,
    void (*each)(const struct envelope *env, void *arg), void *arg)
{
	const struct sched_msg *m;
	struct listed *l;
	struct envelope *env;
	char id[ENVELOPE_ID_MAX];
	size_t n = 0, i;

	l = xreallocarray(NULL, s->nheap + s->nactive + 1, sizeof(*l));
	TAILQ_FOREACH(m, &s->msgs, all) {
		l[n].id = m->id;
		l[n].m = m;
		l[n++].r = NULL;
	}
	for (i = 0; i < s->nheap; i++) {
		l[n].id = s->heap[i].id;
		l[n].m = NULL;
		l[n++].r = &s->heap[i];
	}
	qsort(l, n, sizeof(*l), id_first_cmp);
	for (i = 0; i < n; i++) {
		if (l[i].m != NULL && l[i].m->state != MSG_LOADING) {
			each(l[i].m->env, arg);
			continue;
		}
		envelope_id_text(l[i].id, id, sizeof(id));
		if ((env = queue_read(s->q, id)) == NULL)
			continue;	/* gone since, or logged */
		/* Memory knows better than the file when it is due. */
		if (l[i].r != NULL && !(l[i].r->flags & (REC_UNREAD |
		    REC_HELD)))
			env->next_try = (time_t)l[i].r->key;
		each(env, arg);
		envelope_free(env);
	}
	free(l);
}

/*
 * A listing walks the queue in id order, a page at a time, with a cursor
 * (the last id listed) rather than a copy of the queue: each page is
 * picked on the loop by one pass over the heap and the active set (the
 * page's ids kept in a small max-heap), so a listing costs O(page) memory
 * and a few milliseconds of loop time per page with a million queued.
 * Records' envelopes are read (queue_peek, which changes nothing) on the
 * worker pool; active messages' envelopes are copied on the loop.
 */
struct list_item {
	uint64_t id;
	int64_t key;               /* a record's next try */
	uint32_t flags;            /* a record's REC_*; LIST_ITEM_ACTIVE */
	const struct sched_msg *m; /* active: while the page is picked */
	struct envelope *env;      /* copied, or read on the pool */
};
#define LIST_ITEM_ACTIVE (1U << 31)

struct list_job {
	struct scheduler_list *l;  /* NULL: the listing was freed */
	struct queue *q;
	struct list_item *items;
	size_t n;
	int last;                  /* fewer than asked: the end */
	scheduler_list_each_fn *each;
	scheduler_list_done_fn *done;
	void *arg;
};

struct scheduler_list {
	struct scheduler *s;
	uint64_t after;            /* every id up to this one was listed */
	struct list_job *job;      /* the page on the worker pool */
};

static void
list_sift_down(struct list_item *h, size_t n, size_t i)
{
	struct list_item x = h[i];
	size_t c;

	for (;;) {
		c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && h[c + 1].id > h[c].id)
			c++;
		if (h[c].id <= x.id)
			break;
		h[i] = h[c];
		i = c;
	}
	h[i] = x;
}

/* Offers one message to the page: h is a max-heap by id of the *n
 * smallest ids after the cursor seen so far, max of them at most. */
static void
list_offer(struct list_item *h, size_t *n, size_t max,
    const struct list_item *it)
{
	size_t i, p;

	if (*n < max) {
		for (i = (*n)++; i > 0; i = p) {
			p = (i - 1) / 2;
			if (h[p].id >= it->id)
				break;
			h[i] = h[p];
		}
		h[i] = *it;
		return;
	}
	if (it->id >= h[0].id)
		return;
	h[0] = *it;
	list_sift_down(h, *n, 0);
}

/* On a pool thread: reads the records' envelopes of one page. */
static void
list_work(void *arg)
{
	struct list_job *job = arg;
	struct list_item *it;
	char id[ENVELOPE_ID_MAX];
	size_t i;

	for (i = 0; i < job->n; i++) {
		it = &job->items[i];
		if (it->env != NULL)
			continue;
		envelope_id_text(it->id, id, sizeof(id));
		if ((it->env = queue_peek(job->q, id)) == NULL)
			continue;	/* gone since, or unreadable now */
		/* Memory knows better than the file when it is due. */
		if (!(it->flags & (LIST_ITEM_ACTIVE | REC_UNREAD | REC_HELD)))
			it->env->next_try = (time_t)it->key;
	}
}

static void
list_job_free(struct list_job *job)
{
	size_t i;

	for (i = 0; i < job->n; i++)
		envelope_free(job->items[i].env);
	free(job->items);
	free(job);
}

static void
list_done(void *arg)
{
	struct list_job *job = arg;
	struct scheduler_list *l = job->l;
	size_t i;

	if (l == NULL) {
		list_job_free(job);
		return;
	}
	l->job = NULL;
	for (i = 0; i < job->n; i++)
		if (job->items[i].env != NULL)
			job->each(job->items[i].env, job->arg);
	if (job->n > 0)
		l->after = job->items[job->n - 1].id;
	/* done() may free the listing or ask for the next page. */
	job->done(job->last, job->arg);
	list_job_free(job);
}

struct scheduler_list *
scheduler_list_new(struct scheduler *s)
{
	struct scheduler_list *l;

	l = xcalloc(1, sizeof(*l));
	l->s = s;
	return l;
}

void
scheduler_list_next(struct scheduler_list *l, size_t max,
    scheduler_list_each_fn *each, scheduler_list_done_fn *done, void *arg)
{
	struct scheduler *s = l->s;
	struct list_job *job;
	struct list_item it;
	const struct sched_msg *m;
	size_t i, n = 0;

	if (l->job != NULL)
		fatalx("%s: a page is already being read", __func__);
	if (max == 0 || max > SCHEDULER_LIST_MAX)
		max = SCHEDULER_LIST_MAX;
	job = xcalloc(1, sizeof(*job));
	job->l = l;
	job->q = s->q;
	job->each = each;
	job->done = done;
	job->arg = arg;
	job->items = xreallocarray(NULL, max, sizeof(*job->items));
	memset(&it, 0, sizeof(it));
	for (i = 0; i < s->nheap; i++) {
		if (s->heap[i].id <= l->after)
			continue;
		it.id = s->heap[i].id;
		it.key = s->heap[i].key;
		it.flags = s->heap[i].flags;
		list_offer(job->items, &n, max, &it);
	}
	it.key = 0;
	it.flags = LIST_ITEM_ACTIVE;
	TAILQ_FOREACH(m, &s->msgs, all) {
		/* Without an envelope while finishing: being deleted, gone
		 * for the listing though its file may still be there. */
		if (m->id <= l->after ||
		    (m->state == MSG_FINISHING && m->env == NULL))
			continue;
		it.id = m->id;
		it.m = m;
		list_offer(job->items, &n, max, &it);
	}
	qsort(job->items, n, sizeof(*job->items), id_first_cmp);
	/* The active ones' envelopes are the truth, and may be freed
	 * before the pool is done: copies (a LOADING one is read). */
	for (i = 0; i < n; i++) {
		if ((m = job->items[i].m) != NULL && m->env != NULL)
			job->items[i].env = envelope_dup(m->env);
		job->items[i].m = NULL;
	}
	job->n = n;
	job->last = n < max;
	l->job = job;
	worker_run(s->w, list_work, list_done, job);
}

void
scheduler_list_seek(struct scheduler_list *l, const char *id)
{
	uint64_t n = id_valid(id);

	l->after = n > 0 ? n - 1 : 0;
}

void
scheduler_list_free(struct scheduler_list *l)
{
	if (l == NULL)
		return;
	if (l->job != NULL)
		l->job->l = NULL;	/* list_done frees it */
	free(l);
}

time_t
scheduler_oldest(const struct scheduler *s)
{
	const struct sched_msg *m;
	uint64_t min = UINT64_MAX;
	char id[ENVELOPE_ID_MAX];
	size_t i;

	for (i = 0; i < s->nheap; i++)
		if (s->heap[i].id < min)
			min = s->heap[i].id;
	TAILQ_FOREACH(m, &s->msgs, all)
		if (m->id < min)
			min = m->id;
	if (min == UINT64_MAX)
		return 0;
	envelope_id_text(min, id, sizeof(id));
	return queue_id_time(id);
}

size_t
scheduler_auth_required_list(struct scheduler *s,
    void (*each)(const char *host, const char *port, void *arg), void *arg)
{
	return authstate_list(s->as, each, arg);
}

int
scheduler_auth_forget(struct scheduler *s, const char *host)
{
	return authstate_forget(s->as, host);
}

void
scheduler_relays(struct scheduler *s,
    void (*each)(const struct scheduler_relay_state *st, void *arg),
    void *arg)
{
	struct scheduler_relay_state st;
	const struct sched_relay *sr;
	size_t i;

	for (i = 0; i < s->cfg->nrelays; i++) {
		memset(&st, 0, sizeof(st));
		st.name = s->cfg->relays[i].name;
		st.state = failover_state_name(FAILOVER_UP);
		if ((sr = sched_relay_find(s, st.name)) != NULL) {
			st.state = failover_state_name(sr->fo.state);
			st.down_since = sr->fo.down_since;
			st.backoff_until = sr->backoff_until;
			st.sessions = sr->nsessions;
			st.sent = sr->nsent;
			st.deferred = sr->ndeferred;
			st.failed = sr->nfailed;
			st.last_delivery = sr->last_delivery;
			st.last_error_at = sr->last_error_at;
			st.last_error = sr->last_error_at != 0 ? sr->last_error :
			    NULL;
		}
		each(&st, arg);
	}
}

void
scheduler_credentials_changed(struct scheduler *s)
{
	struct sched_relay *sr;

	TAILQ_FOREACH(sr, &s->relays, entry) {
		relay_credentials_flush(sr->relay);
		if (sr->cred_wait) {
			log_info("relay %s: credentials changed; retrying "
			    "deferred mail", sr->name);
			relay_retry_now(s, sr);
		}
	}
}

/* ---- one message by id (smarthostctl show, hold, release, delete) ---- */

static struct sched_msg *
msg_find(struct scheduler *s, uint64_t id)
{
	struct sched_msg *m;

	TAILQ_FOREACH(m, &s->msgs, all)
		if (m->id == id)
			return m;
	return NULL;
}

/* The heap index of id's record, or SIZE_MAX. A linear search: these are
 * an operator's commands, not the delivery path. */
static size_t
rec_find(const struct scheduler *s, uint64_t id)
{
	size_t i;

	for (i = 0; i < s->nheap; i++)
		if (s->heap[i].id == id)
			return (uint16_t)i;
	return SIZE_MAX;
}

static void
heap_remove_at(struct scheduler *s, size_t i)
{
	if (--s->nheap == i)
		return;
	s->heap[i] = s->heap[s->nheap];
	heap_down(s, i);
	heap_up(s, i);
}

/* A queue id as the number records hold, or 0 when it is not one. */
static uint64_t
id_valid(const char *id)
{
	size_t n = strspn(id, "0123456789ABCDEF");

	return n > 0 && n < ENVELOPE_ID_MAX && id[n] == '\0' ?
	    envelope_id_number(id) : 0;
}

const char *
scheduler_relay_of(struct scheduler *s, const struct envelope *env)
{
	const struct relay_config *rc;

	rc = env->relay != NULL ? config_relay(s->cfg, env->relay) :
	    config_route(s->cfg, env->sender);
	return rc != NULL ? rc->name : NULL;
}

/* Takes a READY message out of its relay's ready list. */
static void
ready_remove(struct scheduler *s, struct sched_msg *m)
{
	struct sched_relay *sr;
	struct sched_msg *r;

	TAILQ_FOREACH(sr, &s->relays, entry) {
		TAILQ_FOREACH(r, &sr->ready, ready)
			if (r == m)
				break;
		if (r != NULL) {
			TAILQ_REMOVE(&sr->ready, m, ready);
			return;
		}
	}
}

/*
 * The message with that id as an active message, taken out of the
 * schedule (its record out of the heap, or out of its relay's ready list)
 * and FINISHING, so that a queue operation may start on it; NULL with
 * errno (scheduler.h) for the others. With read, a record's envelope is
 * read from the queue on this thread (one file; an operator's command
 * names at most a few dozen); without, a record comes without one
 * (m->env NULL: only its removal may follow).
 */
static struct sched_msg *
msg_take(struct scheduler *s, const char *id, int read)
{
	struct sched_msg *m;
	struct sched_rec rec;
	struct envelope *env;
	uint64_t n;
	size_t i;

	if ((n = id_valid(id)) == 0) {
		errno = ENOENT;
		return NULL;
	}
	if ((m = msg_find(s, n)) != NULL) {
		switch (m->state) {
		case MSG_READY:
			ready_remove(s, m);
			msg_set_state(m, MSG_FINISHING);
			return m;
		case MSG_LOADING:
		case MSG_INFLIGHT:
		case MSG_FINISHING:
			errno = EBUSY;
			return NULL;
		case MSG__COUNT:
			fatalx("%s: bad state", __func__);
		}
	}
	if ((i = rec_find(s, n)) == SIZE_MAX) {
		errno = ENOENT;
		return NULL;
	}
	/* One envelope read on the loop: hold and release need it for
	 * the state record, and an operator's request names at most a few
	 * dozen messages, each a few tens of microseconds when cached;
	 * what reads the whole queue or a message's text goes through the
	 * worker pool (scheduler_list_*, show). */
	if (!read)
		env = NULL;
	else if ((env = queue_read(s->q, id)) == NULL)
		return NULL;
	rec = s->heap[i];
	heap_remove_at(s, i);
	if (rec.flags & REC_UNREAD)
		unread_done(s, 1);
	m = msg_new(s, n);
	m->rec_flags = rec.flags;
	m->env = env;
	if (env != NULL && !(rec.flags & (REC_UNREAD | REC_HELD)))
		env->next_try = (time_t)rec.key;
	msg_link(s, m);
	msg_set_state(m, MSG_FINISHING);
	return m;
}

/* Whether id is held now: 1, 0, or -1 when it is not queued. */
static int
msg_is_held(struct scheduler *s, const char *id)
{
	struct sched_msg *m;
	uint64_t n;
	size_t i;

	if ((n = id_valid(id)) == 0)
		return -1;
	if ((m = msg_find(s, n)) != NULL)
		return m->env != NULL && (m->env->flags & ENVELOPE_HOLD);
	if ((i = rec_find(s, n)) == SIZE_MAX)
		return -1;
	return (s->heap[i].flags & REC_HELD) != 0;
}

/* Persists a held or released message's flags; msg_updated parks it
 * where they say (held: never due; released: due now). */
static int
msg_set_hold(struct scheduler *s, const char *id, int hold)
{
	struct sched_msg *m;
	int held = msg_is_held(s, id);

	if (held != -1 && held == (hold != 0)) {
		errno = EALREADY;
		return -1;
	}
	if ((m = msg_take(s, id, 1)) == NULL)
		return -1;
	if (hold) {
		m->env->flags |= ENVELOPE_HOLD;
		log_info("%s: held", id);
	} else {
		m->env->flags &= ~(unsigned)ENVELOPE_HOLD;
		m->env->next_try = 0;
		log_info("%s: released", id);
	}
	queue_update(s->q, m->env, msg_updated, m);
	return 0;
}

int
scheduler_hold(struct scheduler *s, const char *id)
{
	return msg_set_hold(s, id, 1);
}

int
scheduler_release(struct scheduler *s, const char *id)
{
	return msg_set_hold(s, id, 0);
}

/* Removes active message m, taken out of the schedule; its envelope may
 * be NULL (removal needs none). */
static void
msg_delete(struct scheduler *s, struct sched_msg *m)
{
	msg_set_state(m, MSG_FINISHING);
	log_info("%s: deleted by the administrator", m->idstr);
	queue_remove(s->q, m->idstr, msg_removed, m);
}

int
scheduler_delete(struct scheduler *s, const char *id)
{
	struct sched_msg *m;

	if ((m = msg_take(s, id, 0)) == NULL)
		return -1;
	msg_delete(s, m);
	return 0;
}

size_t
scheduler_delete_all(struct scheduler *s,
    void (*each)(const char *id, int error, void *arg), void *arg)
{
	struct sched_msg *m, *next, *last;
	struct sched_rec *recs;
	size_t n, i, deleted = 0;

	/* The active ones (the records below join the active set, after
	 * last). */
	last = TAILQ_LAST(&s->msgs, sched_msgs);
	for (m = TAILQ_FIRST(&s->msgs); m != NULL; m = next) {
		next = m == last ? NULL : TAILQ_NEXT(m, all);
		if (m->state != MSG_READY) {
			each(m->idstr, EBUSY, arg);
			continue;
		}
		ready_remove(s, m);
		msg_delete(s, m);
		each(m->idstr, 0, arg);
		deleted++;
	}
	/* Every record, in one pass and in arrival order: the heap is
	 * emptied first. Nothing is read; each removal is an active
	 * message without an envelope until its callback. */
	recs = s->heap;
	n = s->nheap;
	s->heap = NULL;
	s->nheap = s->heapcap = 0;
	qsort(recs, n, sizeof(*recs), id_first_cmp);
	for (i = 0; i < n; i++) {
		if (recs[i].flags & REC_UNREAD)
			unread_done(s, 1);
		m = msg_new(s, recs[i].id);
		m->rec_flags = recs[i].flags;
		msg_link(s, m);
		msg_delete(s, m);
		each(m->idstr, 0, arg);
		deleted++;
	}
	free(recs);
	return deleted;
}

int
scheduler_flush_one(struct scheduler *s, const char *id)
{
	struct sched_msg *m;
	uint64_t n;
	size_t i;

	if ((n = id_valid(id)) == 0) {
		errno = ENOENT;
		return -1;
	}
	if ((m = msg_find(s, n)) != NULL) {
		/* Active with the flag set: its hold's state record may
		 * still be on its way to disk, and msg_updated then parks it
		 * held whatever m->flush says. */
		if (m->env != NULL && (m->env->flags & ENVELOPE_HOLD)) {
			errno = EPERM;
			return -1;
		}
		if (m->state == MSG_LOADING || m->state == MSG_FINISHING)
			m->flush = 1;
		return 0;
	}
	if ((i = rec_find(s, n)) == SIZE_MAX) {
		errno = ENOENT;
		return -1;
	}
	if (s->heap[i].flags & REC_HELD) {
		errno = EPERM;
		return -1;
	}
	s->heap[i].key = 0;
	s->heap[i].flags |= REC_FLUSHED;
	heap_up(s, i);
	sched_kick(s);
	return 0;
}
