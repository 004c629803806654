/* failover.c: the verdict on a session's end, the state machine and the
 * choice of backup, with the clock passed in. */
#include <string.h>

#include <criterion/criterion.h>

#include "failover.h"
#include "outcome.h"

static enum failover_verdict
judge(int ready, enum outcome_status st, enum outcome_class cls)
{
	struct outcome o;

	outcome_set(&o, st, cls, "x");
	return failover_judge(ready, &o);
}

Test(failover, unreachable_is_a_temporary_failure_before_ready)
{
	static const enum outcome_class unreachable[] = { OC_DNS, OC_CONNECT,
		OC_TLS, OC_TIMEOUT, OC_PROTOCOL, OC_REPLY, OC_LOCAL };
	size_t i;

	for (i = 0; i < sizeof(unreachable) / sizeof(*unreachable); i++)
		cr_assert_eq(judge(0, OUTCOME_TEMPORARY, unreachable[i]),
		    FAILOVER_UNREACHABLE, "class %s",
		    outcome_class_name(unreachable[i]));
	/* closed before it could take a message, without a reason */
	cr_assert_eq(judge(0, OUTCOME_OK, OC_NONE), FAILOVER_UNREACHABLE);
}

Test(failover, a_421_greeting_is_unreachable_a_554_is_not)
{
	struct outcome o;

	outcome_from_reply(&o, 421, "4.3.2", "shutting down");
	cr_assert_eq(failover_judge(0, &o), FAILOVER_UNREACHABLE);
	outcome_from_reply(&o, 554, "5.3.2", "no service");
	cr_assert_eq(failover_judge(0, &o), FAILOVER_REACHED);
}

Test(failover, anything_after_ready_means_reached)
{
	cr_assert_eq(judge(1, OUTCOME_TEMPORARY, OC_CONNECT),
	    FAILOVER_REACHED);
	cr_assert_eq(judge(1, OUTCOME_TEMPORARY, OC_REPLY), FAILOVER_REACHED);
	cr_assert_eq(judge(1, OUTCOME_PERMANENT, OC_REPLY), FAILOVER_REACHED);
	cr_assert_eq(judge(1, OUTCOME_OK, OC_NONE), FAILOVER_REACHED);
}

Test(failover, credentials_are_not_reachability)
{
	/* rejected: the server answered; missing: maybe never connected */
	cr_assert_eq(judge(0, OUTCOME_TEMPORARY, OC_AUTH), FAILOVER_REACHED);
	cr_assert_eq(judge(0, OUTCOME_TEMPORARY, OC_AUTH_RETRY),
	    FAILOVER_REACHED);
	cr_assert_eq(judge(0, OUTCOME_TEMPORARY, OC_NOCRED),
	    FAILOVER_UNKNOWN);
}

Test(failover, goes_down_then_active_after_the_delay)
{
	struct failover f;

	memset(&f, 0, sizeof(f));
	cr_assert_eq(failover_update(&f, FAILOVER_UNREACHABLE, 1000, 600, 1),
	    FAILOVER_UP);
	cr_assert_eq(f.state, FAILOVER_DOWN);
	cr_assert_eq(f.down_since, 1000);
	cr_assert_eq(failover_deadline(&f, 600, 1), 1600);
	/* a later failure within the delay keeps the start of the run */
	cr_assert_eq(failover_update(&f, FAILOVER_UNREACHABLE, 1599, 600, 1),
	    FAILOVER_DOWN);
	cr_assert_eq(f.state, FAILOVER_DOWN);
	cr_assert_eq(f.down_since, 1000);
	cr_assert_eq(failover_update(&f, FAILOVER_UNREACHABLE, 1600, 600, 1),
	    FAILOVER_DOWN);
	cr_assert_eq(f.state, FAILOVER_ACTIVE);
	cr_assert_eq(failover_deadline(&f, 600, 1), 0);
	/* more failures: still failed over, same start */
	cr_assert_eq(failover_update(&f, FAILOVER_UNREACHABLE, 5000, 600, 1),
	    FAILOVER_ACTIVE);
	cr_assert_eq(f.state, FAILOVER_ACTIVE);
	cr_assert_eq(f.down_since, 1000);
}

Test(failover, reached_returns_from_any_state)
{
	struct failover f;

	memset(&f, 0, sizeof(f));
	failover_update(&f, FAILOVER_UNREACHABLE, 10, 0, 1);
	cr_assert_eq(f.state, FAILOVER_ACTIVE, "after 0: at once");
	cr_assert_eq(failover_update(&f, FAILOVER_REACHED, 20, 0, 1),
	    FAILOVER_ACTIVE);
	cr_assert_eq(f.state, FAILOVER_UP);
	cr_assert_eq(f.down_since, 0);
	/* a new run starts from its own first failure */
	failover_update(&f, FAILOVER_UNREACHABLE, 30, 5, 1);
	cr_assert_eq(f.state, FAILOVER_DOWN);
	cr_assert_eq(f.down_since, 30);
	failover_update(&f, FAILOVER_REACHED, 31, 5, 1);
	cr_assert_eq(f.state, FAILOVER_UP);
	failover_update(&f, FAILOVER_UNREACHABLE, 100, 5, 1);
	cr_assert_eq(f.state, FAILOVER_DOWN, "the earlier run is forgotten");
	cr_assert_eq(f.down_since, 100);
}

Test(failover, without_backups_never_active)
{
	struct failover f;

	memset(&f, 0, sizeof(f));
	failover_update(&f, FAILOVER_UNREACHABLE, 0, 0, 0);
	failover_update(&f, FAILOVER_UNREACHABLE, 100000, 0, 0);
	cr_assert_eq(f.state, FAILOVER_DOWN);
	cr_assert_eq(failover_deadline(&f, 0, 0), 0);
}

Test(failover, unknown_changes_nothing)
{
	struct failover f;

	memset(&f, 0, sizeof(f));
	failover_update(&f, FAILOVER_UNKNOWN, 5, 0, 1);
	cr_assert_eq(f.state, FAILOVER_UP);
	failover_update(&f, FAILOVER_UNREACHABLE, 5, 10, 1);
	failover_update(&f, FAILOVER_UNKNOWN, 50, 10, 1);
	cr_assert_eq(f.state, FAILOVER_DOWN, "no failure was observed at 50");
	cr_assert_eq(f.down_since, 5);
}

Test(failover, state_names)
{
	cr_assert_str_eq(failover_state_name(FAILOVER_UP), "up");
	cr_assert_str_eq(failover_state_name(FAILOVER_DOWN), "down");
	cr_assert_str_eq(failover_state_name(FAILOVER_ACTIVE), "failed-over");
	cr_assert_str_eq(failover_state_name(FAILOVER__COUNT), "?");
}

Test(failover, pick_first_free_else_soonest)
{
	time_t a[] = { 0, 0 };
	time_t b[] = { 200, 50, 150 };
	time_t c[] = { 200, 100, 100 };
	time_t d[] = { 200, 99, 30 };

	cr_assert_eq(failover_pick(a, 2, 100), 0);
	cr_assert_eq(failover_pick(b, 3, 100), 1, "free now");
	cr_assert_eq(failover_pick(b, 3, 10), 1, "soonest");
	cr_assert_eq(failover_pick(c, 3, 10), 1, "first on a tie");
	cr_assert_eq(failover_pick(c, 3, 100), 1, "first free now");
	cr_assert_eq(failover_pick(d, 3, 100), 1, "first free, in order");
}
