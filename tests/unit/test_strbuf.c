/* Unit tests for the growing byte string: appends of every kind, the
 * hand-over, and a secret buffer's growth through fresh allocations. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "strbuf.h"

Test(strbuf, appends_and_take)
{
	struct strbuf b = STRBUF_INIT;
	size_t len, i;
	char *s;

	strbuf_adds(&b, "id");
	strbuf_add(&b, " x\0y", 4);
	strbuf_addf(&b, " %d %s", 42, "end");
	cr_assert_eq(b.len, 13);
	cr_assert_eq(memcmp(b.p, "id x\0y 42 end", 14), 0);
	s = strbuf_take(&b, &len);
	cr_assert_eq(len, 13);
	cr_assert_null(b.p);
	cr_assert_eq(b.len, 0);
	free(s);
	/* Nothing added: "", never NULL. */
	s = strbuf_take(&b, NULL);
	cr_assert_str_eq(s, "");
	free(s);
	/* Growth past many doublings, one byte and one long format. */
	for (i = 0; i < 5000; i++)
		strbuf_add(&b, "a", 1);
	strbuf_addf(&b, "%0*d", 3000, 7);
	cr_assert_eq(b.len, 8000);
	cr_assert_eq(strlen(b.p), 8000);
	cr_assert_eq(b.p[7999], '7');
	cr_assert_geq(b.cap, 8001);
	strbuf_free(&b);
	cr_assert_null(b.p);
	strbuf_free(&b);	/* twice is fine */
}

Test(strbuf, secret_grows_through_fresh_memory)
{
	struct strbuf b = STRBUF_SECRET;
	char *before;
	size_t i;

	strbuf_adds(&b, "n,,n=user,r=nonce");
	before = b.p;
	for (i = 0; i < 100; i++)
		strbuf_adds(&b, "0123456789");
	cr_assert_neq(b.p, before);
	cr_assert_eq(b.len, 17 + 1000);
	cr_assert_eq(memcmp(b.p, "n,,n=user,r=nonce0123", 21), 0);
	strbuf_free(&b);
	cr_assert_null(b.p);
	cr_assert_eq(b.secret, 1, "still secret after free");
}
