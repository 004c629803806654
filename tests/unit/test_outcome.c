/* Unit tests for the outcome type and its maps. */
#include <sysexits.h>

#include <criterion/criterion.h>

#include "outcome.h"

Test(outcome, from_reply_classifies)
{
	struct outcome o;

	outcome_from_reply(&o, 250, "2.0.0", "OK");
	cr_assert_eq(o.status, OUTCOME_OK);
	cr_assert_str_eq(o.text, "250 2.0.0 OK");
	outcome_from_reply(&o, 451, "", "try later");
	cr_assert_eq(o.status, OUTCOME_TEMPORARY);
	cr_assert_eq(o.class, OC_REPLY);
	cr_assert_str_eq(outcome_dsn_code(&o), "4.0.0");
	cr_assert_str_eq(o.text, "451 try later");
	outcome_from_reply(&o, 550, "5.1.1", "no such user");
	cr_assert_eq(o.status, OUTCOME_PERMANENT);
	cr_assert_str_eq(outcome_dsn_code(&o), "5.1.1");
	cr_assert_eq(outcome_sysexit(&o), EX_UNAVAILABLE);
}

Test(outcome, classes_map_to_codes_and_sysexits)
{
	struct outcome o;

	outcome_set(&o, OUTCOME_TEMPORARY, OC_CONNECT, "refused %d", 1);
	cr_assert_str_eq(o.text, "refused 1");
	cr_assert_str_eq(outcome_dsn_code(&o), "4.4.1");
	cr_assert_eq(outcome_sysexit(&o), EX_TEMPFAIL);
	outcome_set(&o, OUTCOME_TEMPORARY, OC_TLS, "x");
	cr_assert_str_eq(outcome_dsn_code(&o), "4.7.5");
	cr_assert_eq(outcome_sysexit(&o), EX_PROTOCOL);
	outcome_set(&o, OUTCOME_PERMANENT, OC_EXPIRED, "x");
	cr_assert_str_eq(outcome_dsn_code(&o), "4.4.7");
	outcome_set(&o, OUTCOME_TEMPORARY, OC_NOCRED, "x");
	cr_assert_eq(outcome_sysexit(&o), EX_NOPERM);
	cr_assert_str_eq(outcome_class_name(OC_NOCRED), "nocred");
	outcome_set(&o, OUTCOME_TEMPORARY, OC_AUTH_RETRY, "x");
	cr_assert_str_eq(outcome_dsn_code(&o), "4.7.0");
	cr_assert_eq(outcome_sysexit(&o), EX_TEMPFAIL);
	cr_assert_str_eq(outcome_class_name(OC_AUTH_RETRY), "auth_retry");
	cr_assert_str_eq(outcome_status_name(OUTCOME_PERMANENT), "permanent");
}
