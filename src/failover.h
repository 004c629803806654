/*
 * Failover of a relay to its backup relays: one small state machine per
 * relay, pure (the time is passed in), that the scheduler drives with what
 * each session's end says about the relay.
 *
 *   UP      reachable, as far as we know
 *   DOWN    unreachable at every attempt since down_since, for less than
 *           failover_after so far: its mail waits for it
 *   ACTIVE  unreachable for failover_after or longer: its mail goes to its
 *           backups, while the relay itself is probed (a session that
 *           connects and quits) at each end of its backoff
 *
 * "Unreachable" is a session that ended before it was ready to take a
 * message, with a temporary failure: DNS, connection refused or timed
 * out, TLS handshake or certificate failure, a 4xx greeting or 421 before
 * the first transaction, a server that hangs up on the greeting. A
 * session that got that far proves the relay reachable, whatever the
 * server then says to MAIL, RCPT or DATA (a 4xx there is about the
 * message, not about the relay). So does a 5xx at connect: the server is
 * there and refuses, and permanent refusals never fail over. So do
 * rejected credentials: the server answered, and another account would
 * only hide the mistake. Missing credentials (the relay never connected)
 * say nothing either way.
 *
 * A relay without backups goes DOWN but never ACTIVE.
 */
#ifndef SMARTHOST_FAILOVER_H
#define SMARTHOST_FAILOVER_H

#include <stddef.h>
#include <time.h>

#include "outcome.h"

enum failover_state {
	FAILOVER_UP,
	FAILOVER_DOWN,
	FAILOVER_ACTIVE,
	FAILOVER__COUNT
};

enum failover_verdict {
	FAILOVER_REACHED,     /* the server answered */
	FAILOVER_UNREACHABLE, /* no usable session could be had */
	FAILOVER_UNKNOWN,     /* the attempt says nothing about the server */
};

struct failover {
	enum failover_state state;
	time_t down_since; /* first unreachable attempt of this run; 0: UP */
};

/* "up", "down", "failed-over" (for logs and smarthostctl status). */
const char *failover_state_name(enum failover_state state);

/*
 * What the end of a session says about its relay: ready is 1 when the
 * session got as far as taking a message (connected, TLS, EHLO, AUTH
 * when it authenticates first), o is how it ended.
 */
enum failover_verdict failover_judge(int ready, const struct outcome *o);

/*
 * Applies verdict v, observed at now, to f: after is the relay's
 * failover_after in seconds, backups whether it has any. Returns the
 * previous state, so that the caller can log a transition. UNREACHABLE
 * moves UP to DOWN (down_since = now), and DOWN to ACTIVE once
 * now - down_since >= after (at once when after is 0) if backups;
 * REACHED moves any state to UP; UNKNOWN changes nothing.
 */
enum failover_state failover_update(struct failover *f,
    enum failover_verdict v, time_t now, unsigned after, int backups);

/*
 * The latest time at which a DOWN relay with backups must be tried again
 * so that its failover is not late (down_since + after); 0 in every other
 * case.
 */
time_t failover_deadline(const struct failover *f, unsigned after,
    int backups);

/*
 * Which of n backups (n > 0, in the configured order) takes the mail:
 * free[i] is when backup i may take a new session (the end of its
 * backoff; 0 or a time not after now: at once). The first one free now,
 * else the one free soonest (the first of those on a tie).
 */
size_t failover_pick(const time_t *free, size_t n, time_t now);

#endif
