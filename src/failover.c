/*
 * The failover state machine of failover.h: no I/O, no clock of its own.
 */
#include "failover.h"

static const char *const failover_state_names[] = {
	[FAILOVER_UP] = "up",
	[FAILOVER_DOWN] = "down",
	[FAILOVER_ACTIVE] = "failed-over",
};
_Static_assert(sizeof(failover_state_names) /
    sizeof(*failover_state_names) == FAILOVER__COUNT,
    "failover_state_names out of date");

const char *
failover_state_name(enum failover_state state)
{
	if ((unsigned)state >= FAILOVER__COUNT)
		return "?";
	return failover_state_names[state];
}

enum failover_verdict
failover_judge(int ready, const struct outcome *o)
{
	if (ready)
		return FAILOVER_REACHED;
	/* Ended before ready without a failure: it never took a message,
	 * so it is no better than a refused connection. */
	if (o->status == OUTCOME_OK)
		return FAILOVER_UNREACHABLE;
	switch (o->class) {
	case OC_NOCRED:		/* may never have connected */
	case OC_RESOURCE:	/* we had no descriptor to try */
		return FAILOVER_UNKNOWN;
	case OC_AUTH:
	case OC_AUTH_RETRY:
		return FAILOVER_REACHED;
	case OC_NONE:
	case OC_DNS:
	case OC_CONNECT:
	case OC_TLS:
	case OC_TIMEOUT:
	case OC_PROTOCOL:
	case OC_REPLY:
	case OC_LOCAL:
	case OC_EXPIRED:
	case OC__COUNT:
		break;
	}
	return o->status == OUTCOME_PERMANENT ? FAILOVER_REACHED :
	    FAILOVER_UNREACHABLE;
}

enum failover_state
failover_update(struct failover *f, enum failover_verdict v, time_t now,
    unsigned after, int backups)
{
	enum failover_state was = f->state;

	switch (v) {
	case FAILOVER_REACHED:
		f->state = FAILOVER_UP;
		f->down_since = 0;
		break;
	case FAILOVER_UNREACHABLE:
		if (f->state == FAILOVER_UP) {
			f->state = FAILOVER_DOWN;
			f->down_since = now;
		}
		if (f->state == FAILOVER_DOWN && backups &&
		    now - f->down_since >= (time_t)after)
			f->state = FAILOVER_ACTIVE;
		break;
	case FAILOVER_UNKNOWN:
		break;
	}
	return was;
}

time_t
failover_deadline(const struct failover *f, unsigned after, int backups)
{
	if (f->state != FAILOVER_DOWN || !backups)
		return 0;
	return f->down_since + (time_t)after;
}

size_t
failover_pick(const time_t *free, size_t n, time_t now)
{
	size_t i, best = 0;

	for (i = 0; i < n; i++) {
		if (free[i] <= now)
			return i;
		if (free[i] < free[best])
			best = i;
	}
	return best;
}
