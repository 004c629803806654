/*
 * envelope.c: the text encoding round-trips every byte, the decoder refuses
 * what it does not fully understand, and state records apply whole or not
 * at all.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "envelope.h"

static struct envelope *
sample(void)
{
	struct envelope *env = envelope_new();

	snprintf(env->id, sizeof(env->id), "0123456789ABCDEF");
	free(env->sender);
	env->sender = strdup("alice@example.org");
	env->relay = strdup("upstream");
	env->client = strdup("localhost[127.0.0.1]");
	env->flags = ENVELOPE_8BITMIME | ENVELOPE_SMTPUTF8;
	env->created = 1700000000;
	env->next_try = 1700000300;
	env->attempts = 2;
	envelope_add_rcpt(env, "bob@example.org");
	envelope_add_rcpt(env, "carol@example.net");
	envelope_set_rcpt(env, 1, RCPT_FAILED, "5.1.1",
	    "550 5.1.1 <carol@example.net>: no such user");
	return env;
}

static void
assert_same(const struct envelope *a, const struct envelope *b)
{
	size_t i;

	cr_assert_str_eq(a->id, b->id);
	cr_assert_str_eq(a->sender, b->sender);
	if (a->relay == NULL)
		cr_assert_null(b->relay);
	else
		cr_assert_str_eq(a->relay, b->relay);
	if (a->client == NULL)
		cr_assert_null(b->client);
	else
		cr_assert_str_eq(a->client, b->client);
	cr_assert_eq(a->uid_known, b->uid_known);
	if (a->uid_known)
		cr_assert_eq(a->uid, b->uid);
	cr_assert_eq(a->flags, b->flags);
	cr_assert_eq(a->created, b->created);
	cr_assert_eq(a->next_try, b->next_try);
	cr_assert_eq(a->attempts, b->attempts);
	cr_assert_eq(a->nrcpts, b->nrcpts);
	for (i = 0; i < a->nrcpts; i++) {
		cr_assert_str_eq(a->rcpts[i].addr, b->rcpts[i].addr);
		cr_assert_eq(a->rcpts[i].status, b->rcpts[i].status, "rcpt %zu",
		    i);
		cr_assert_str_eq(a->rcpts[i].dsn, b->rcpts[i].dsn);
		if (a->rcpts[i].reply == NULL)
			cr_assert_null(b->rcpts[i].reply);
		else
			cr_assert_str_eq(a->rcpts[i].reply, b->rcpts[i].reply);
	}
}

static struct envelope *
roundtrip(const struct envelope *env)
{
	struct envelope *out;
	char *text, err[128];
	size_t len, used;

	text = envelope_encode(env, &len);
	cr_assert_not_null(text);
	cr_assert_eq(strlen(text), len, "encoding contains a NUL");
	cr_assert(len >= 2 && text[len - 1] == '\n' && text[len - 2] == '\n',
	    "encoding must end with an empty line");
	out = envelope_decode(text, len, &used, err, sizeof(err));
	cr_assert_not_null(out, "decode failed: %s\n%s", err, text);
	cr_assert_eq(used, len);
	free(text);
	return out;
}

/* Queue ids as numbers: 16 upper-case hex digits, zero-padded. */
Test(envelope, id_number_and_text)
{
	char buf[ENVELOPE_ID_MAX];

	envelope_id_text(0x1A2B3CULL, buf, sizeof(buf));
	cr_assert_str_eq(buf, "00000000001A2B3C");
	cr_assert_eq(envelope_id_number(buf), 0x1A2B3CULL);
	envelope_id_text(UINT64_MAX, buf, sizeof(buf));
	cr_assert_str_eq(buf, "FFFFFFFFFFFFFFFF");
	cr_assert_eq(envelope_id_number(buf), UINT64_MAX);
	cr_assert_eq(envelope_id_number("zz"), 0);
}

Test(envelope, roundtrip_basic)
{
	struct envelope *env = sample(), *out;

	out = roundtrip(env);
	assert_same(env, out);
	cr_assert_eq(envelope_count(out, RCPT_PENDING), 1);
	cr_assert_eq(envelope_count(out, RCPT_FAILED), 1);
	envelope_free(env);
	envelope_free(out);
}

Test(envelope, text_is_versioned_and_readable)
{
	struct envelope *env = sample();
	char *text;
	size_t len;

	text = envelope_encode(env, &len);
	cr_assert(strncmp(text, "smarthostd-envelope 1\n", 22) == 0, "%s",
	    text);
	cr_assert_not_null(strstr(text, "\nsender alice@example.org\n"), "%s",
	    text);
	free(text);
	envelope_free(env);
}

Test(envelope, roundtrip_odd_bytes)
{
	struct envelope *env = envelope_new(), *out;
	char all[256], *p;
	int c;

	/* Every byte but NUL, in one value, plus the characters that the
	 * encoding itself uses. */
	p = all;
	for (c = 255; c >= 1; c--)
		*p++ = (char)c;
	*p = '\0';
	snprintf(env->id, sizeof(env->id), "ID%%2D -\n");
	free(env->sender);
	env->sender = strdup(all);
	env->relay = strdup("-");
	env->client = strdup("");
	envelope_add_rcpt(env, "-");
	envelope_add_rcpt(env, "%41 \r\n.\r\n");
	envelope_add_rcpt(env, all);
	envelope_set_rcpt(env, 0, RCPT_SENT, "2.0.0", "250 ok: queued as %s\n");
	envelope_set_rcpt(env, 1, RCPT_PENDING, "4.4.1", "-");
	envelope_set_rcpt(env, 2, RCPT_PENDING, "", "\t");

	out = roundtrip(env);
	assert_same(env, out);
	envelope_free(env);
	envelope_free(out);
}

Test(envelope, null_sender)
{
	struct envelope *env = envelope_new(), *out;

	snprintf(env->id, sizeof(env->id), "0000000000000001");
	env->flags = ENVELOPE_BOUNCE;
	envelope_add_rcpt(env, "postmaster@example.org");
	out = roundtrip(env);
	cr_assert_str_eq(out->sender, "");
	cr_assert_null(out->relay);
	cr_assert_null(out->client);
	cr_assert_eq(out->flags, ENVELOPE_BOUNCE);
	envelope_free(env);
	envelope_free(out);
}

Test(envelope, many_recipients)
{
	struct envelope *env = envelope_new(), *out;
	char addr[64];
	size_t i;

	snprintf(env->id, sizeof(env->id), "00000000000000FF");
	for (i = 0; i < 1000; i++) {
		snprintf(addr, sizeof(addr), "user%zu@example.org", i);
		envelope_add_rcpt(env, addr);
		if (i % 3 == 1)
			envelope_set_rcpt(env, i, RCPT_SENT, "2.0.0", "250 OK");
	}
	out = roundtrip(env);
	assert_same(env, out);
	cr_assert_eq(envelope_count(out, RCPT_SENT), 333);
	envelope_free(env);
	envelope_free(out);
}

Test(envelope, empty_reply_reads_back_as_none)
{
	struct envelope *env = sample(), *out;

	envelope_set_rcpt(env, 0, RCPT_PENDING, "", "");
	out = roundtrip(env);
	cr_assert_null(out->rcpts[0].reply);
	envelope_free(env);
	envelope_free(out);
}

Test(envelope, decode_reports_bytes_used)
{
	struct envelope *env = sample(), *out;
	char *text, *buf, err[128];
	size_t len, used;

	text = envelope_encode(env, &len);
	buf = malloc(len + 5);
	memcpy(buf, text, len);
	memcpy(buf + len, "BODY\n", 5);
	out = envelope_decode(buf, len + 5, &used, err, sizeof(err));
	cr_assert_not_null(out, "%s", err);
	cr_assert_eq(used, len);
	envelope_free(out);
	free(buf);
	free(text);
	envelope_free(env);
}

Test(envelope, truncated_rejected)
{
	struct envelope *env = sample(), *out;
	char *text, err[128];
	size_t len, cut, used;

	text = envelope_encode(env, &len);
	/* Every proper prefix, including one that stops just before the
	 * terminating empty line, must be refused. */
	for (cut = 0; cut < len; cut++) {
		err[0] = '\0';
		used = 12345;
		out = envelope_decode(text, cut, &used, err, sizeof(err));
		cr_assert_null(out, "prefix of %zu/%zu bytes accepted", cut,
		    len);
		cr_assert_neq(err[0], '\0', "no reason for prefix %zu", cut);
		cr_assert_eq(used, 0);
	}
	free(text);
	envelope_free(env);
}

static void
assert_rejected(const char *text, const char *reason_part)
{
	struct envelope *out;
	char err[128];
	size_t used;

	err[0] = '\0';
	out = envelope_decode(text, strlen(text), &used, err, sizeof(err));
	cr_assert_null(out, "accepted: %s", text);
	if (reason_part != NULL)
		cr_assert_not_null(strstr(err, reason_part),
		    "reason \"%s\" lacks \"%s\"", err, reason_part);
}

#define GOOD_HEAD "smarthostd-envelope 1\nid 0123456789ABCDEF\nsender a@b\n" \
	"flags 0\ncreated 1\nnext-try 0\nattempts 0\n"

Test(envelope, well_formed_reference_accepted)
{
	struct envelope *out;
	const char *text = GOOD_HEAD "rcpt c@d pending - -\n\n";
	char err[128];
	size_t used;

	/* The rejection tests below are variations of this text. */
	out = envelope_decode(text, strlen(text), &used, err, sizeof(err));
	cr_assert_not_null(out, "%s", err);
	cr_assert_str_eq(out->rcpts[0].addr, "c@d");
	envelope_free(out);
}

Test(envelope, unknown_version_rejected)
{
	assert_rejected("smarthostd-envelope 3\nid X\n\n", "version 3");
	assert_rejected("smarthostd-envelope 0\nid X\n\n", "version 0");
	assert_rejected("smarthostd-envelope 10\nid X\n\n", "version");
	assert_rejected("smarthostd-envelope\nid X\n\n", NULL);
	assert_rejected("something-else 1\n\n", "magic");
}

Test(envelope, malformed_rejected)
{
	assert_rejected(GOOD_HEAD "colour blue\n\n", "unknown key");
	assert_rejected(GOOD_HEAD "sender x@y\n\n", "repeated");
	assert_rejected("smarthostd-envelope 1\nid 0123456789ABCDEF\n"
	    "flags 0\ncreated 1\nnext-try 0\nattempts 0\n\n", "missing");
	assert_rejected(GOOD_HEAD "rcpt c@d pending -\n\n", "rcpt");
	assert_rejected(GOOD_HEAD "rcpt c@d lost - -\n\n", "rcpt");
	assert_rejected(GOOD_HEAD "rcpt c@d sent 2.0.0.0.0.0.0.0.0.0 -\n\n",
	    "rcpt");
	assert_rejected(GOOD_HEAD "rcpt c%2 pending - -\n\n", "rcpt");
	assert_rejected(GOOD_HEAD "rcpt c%00 pending - -\n\n", "rcpt");
	assert_rejected(GOOD_HEAD "rcpt c\td pending - -\n\n", "malformed");
	assert_rejected(GOOD_HEAD "rcpt c@d  pending - -\n\n", "malformed");
	assert_rejected("smarthostd-envelope 1\nid 0123456789ABCDEF\n"
	    "sender a@b\nflags -1\ncreated 1\nnext-try 0\nattempts 0\n\n",
	    "number");
	assert_rejected("smarthostd-envelope 1\nid 0123456789ABCDEF\n"
	    "sender a@b\nflags 0\ncreated 1\nnext-try 0\n"
	    "attempts 99999999999\n\n", "number");
	assert_rejected("smarthostd-envelope 1\n"
	    "id 0123456789ABCDEF0123456789ABCDEF\nsender a@b\nflags 0\n"
	    "created 1\nnext-try 0\nattempts 0\n\n", "too long");
}

/* A copy of env whose recipients are all pending again, as a freshly
 * decoded envelope would be before its records are applied. */
static struct envelope *
pristine(const struct envelope *env)
{
	struct envelope *p = envelope_dup(env);
	size_t i;

	for (i = 0; i < p->nrcpts; i++)
		envelope_set_rcpt(p, i, RCPT_PENDING, "", NULL);
	p->attempts = 0;
	p->next_try = 0;
	return p;
}

Test(envelope, state_record_applied)
{
	struct envelope *env = sample(), *target;
	char *rec;
	size_t len;

	envelope_set_rcpt(env, 0, RCPT_SENT, "2.0.0",
	    "250 2.0.0 Ok: queued as 4F2A 9C1D\r");
	env->attempts = 3;
	env->next_try = 1700009999;
	env->flags |= ENVELOPE_HOLD;
	rec = envelope_state_record(env, &len);
	cr_assert(len > 0 && rec[len - 1] == '\n');
	cr_assert_null(memchr(rec, '\n', len - 1), "record spans lines");

	target = pristine(env);
	target->flags = 0;
	cr_assert_eq(envelope_apply_record(target, rec, len), 0, "%s", rec);
	assert_same(env, target);
	cr_assert(target->flags & ENVELOPE_HOLD);
	free(rec);
	envelope_free(target);
	envelope_free(env);
}

Test(envelope, later_record_wins)
{
	struct envelope *env = sample(), *target;
	char *r1, *r2;
	size_t l1, l2;

	env->attempts = 1;
	r1 = envelope_state_record(env, &l1);
	envelope_set_rcpt(env, 0, RCPT_SENT, "2.0.0", "250 OK");
	env->attempts = 2;
	r2 = envelope_state_record(env, &l2);
	target = pristine(env);
	cr_assert_eq(envelope_apply_record(target, r1, l1), 0);
	cr_assert_eq(target->rcpts[0].status, RCPT_PENDING);
	cr_assert_eq(envelope_apply_record(target, r2, l2), 0);
	cr_assert_eq(target->rcpts[0].status, RCPT_SENT);
	cr_assert_eq(target->attempts, 2);
	free(r1);
	free(r2);
	envelope_free(target);
	envelope_free(env);
}

Test(envelope, torn_record_ignored)
{
	struct envelope *env = sample(), *target;
	char *rec;
	size_t len, cut;

	envelope_set_rcpt(env, 0, RCPT_SENT, "2.0.0", "250 OK");
	env->attempts = 7;
	rec = envelope_state_record(env, &len);
	target = pristine(env);
	/* Every prefix of the record: none may change anything. */
	for (cut = 0; cut < len; cut++) {
		cr_assert_eq(envelope_apply_record(target, rec, cut), -1,
		    "torn record of %zu/%zu bytes applied", cut, len);
		cr_assert_eq(target->attempts, 0);
		cr_assert_eq(target->rcpts[0].status, RCPT_PENDING);
	}
	cr_assert_eq(envelope_apply_record(target, rec, len), 0);
	cr_assert_eq(target->attempts, 7);
	free(rec);
	envelope_free(target);
	envelope_free(env);
}

Test(envelope, malformed_record_rejected_whole)
{
	struct envelope *env = sample(), *target, *three;
	char *rec, *bad;
	size_t len, i;

	envelope_set_rcpt(env, 0, RCPT_SENT, "2.0.0", "250 OK");
	env->attempts = 5;
	rec = envelope_state_record(env, &len);
	target = pristine(env);

	/* Flip each byte but the final newline: the CRC (or the syntax)
	 * must catch it, and nothing may be half-applied. */
	bad = malloc(len);
	for (i = 0; i + 1 < len; i++) {
		memcpy(bad, rec, len);
		bad[i] ^= 0x01;
		cr_assert_eq(envelope_apply_record(target, bad, len), -1,
		    "corrupted byte %zu accepted", i);
		cr_assert_eq(target->attempts, 0);
		cr_assert_eq(target->rcpts[0].status, RCPT_PENDING);
		cr_assert_null(target->rcpts[0].reply);
	}
	/* Two records glued together (a torn one, then a good one). */
	memcpy(bad, rec, len);
	cr_assert_eq(envelope_apply_record(target, "S 1 0 0 2 pen", 13), -1);
	free(bad);
	bad = malloc(len + 13);
	memcpy(bad, "S 1 0 0 2 pen", 13);
	memcpy(bad + 13, rec, len);
	cr_assert_eq(envelope_apply_record(target, bad, len + 13), -1);
	/* A record for a different number of recipients. */
	three = envelope_dup(target);
	envelope_add_rcpt(three, "dave@example.com");
	cr_assert_eq(envelope_apply_record(three, rec, len), -1);
	cr_assert_eq(three->attempts, 0);
	/* Garbage and empty lines. */
	cr_assert_eq(envelope_apply_record(target, "\n", 1), -1);
	cr_assert_eq(envelope_apply_record(target, "hello world 12345678\n",
	    21), -1);
	cr_assert_eq(target->attempts, 0);
	free(bad);
	free(rec);
	envelope_free(three);
	envelope_free(target);
	envelope_free(env);
}

/* CRC-32 as the record format defines it, to forge well-sealed records. */
static unsigned long
crc32(const char *p, size_t len)
{
	unsigned long c = 0xffffffffUL;
	int k;

	while (len-- > 0) {
		c ^= (unsigned char)*p++;
		for (k = 0; k < 8; k++)
			c = (c & 1) ? 0xedb88320UL ^ (c >> 1) : c >> 1;
	}
	return ~c & 0xffffffffUL;
}

static int
apply_sealed(struct envelope *env, const char *body)
{
	char line[512];
	int n;

	n = snprintf(line, sizeof(line), "%s %08lx\n", body,
	    crc32(body, strlen(body)));
	return envelope_apply_record(env, line, (size_t)n);
}

Test(envelope, sealed_but_malformed_record_rejected_whole)
{
	struct envelope *env = sample(), *target;

	target = pristine(env);
	/* The reference: a well-formed record does apply. */
	cr_assert_eq(apply_sealed(target, "S 1 0 0 2 sent 2.0.0 250%20OK "
	    "pending - -"), 0);
	cr_assert_eq(target->attempts, 1);
	cr_assert_eq(target->rcpts[0].status, RCPT_SENT);
	envelope_free(target);

	target = pristine(env);
	/* The first recipient parses; the second does not. */
	cr_assert_eq(apply_sealed(target, "S 1 0 0 2 sent 2.0.0 250%20OK "
	    "bogus - -"), -1);
	cr_assert_eq(apply_sealed(target, "S 1 0 0 2 sent 2.0.0 250%20OK "
	    "pending 1.2.3.4.5.6.7.8.9 -"), -1);
	cr_assert_eq(apply_sealed(target, "S 1 0 0 2 sent 2.0.0 250%2"
	    " pending - -"), -1);
	cr_assert_eq(apply_sealed(target, "S 1 0 0 2 sent 2.0.0 250%20OK"),
	    -1);
	cr_assert_eq(apply_sealed(target, "S 1 0 0 3 sent - - pending - - "
	    "sent - -"), -1);
	cr_assert_eq(apply_sealed(target, "S x 0 0 2 sent - - pending - -"),
	    -1);
	cr_assert_eq(apply_sealed(target, "T 1 0 0 2 sent - - pending - -"),
	    -1);
	cr_assert_eq(target->attempts, 0);
	cr_assert_eq(target->rcpts[0].status, RCPT_PENDING);
	cr_assert_str_eq(target->rcpts[0].dsn, "");
	cr_assert_null(target->rcpts[0].reply);
	envelope_free(target);
	envelope_free(env);
}

Test(envelope, dup_is_deep)
{
	struct envelope *env = sample(), *d;

	d = envelope_dup(env);
	assert_same(env, d);
	cr_assert_neq((void *)d->sender, (void *)env->sender);
	cr_assert_neq((void *)d->rcpts, (void *)env->rcpts);
	cr_assert_neq((void *)d->rcpts[1].reply, (void *)env->rcpts[1].reply);
	envelope_free(env);
	cr_assert_str_eq(d->rcpts[1].reply,
	    "550 5.1.1 <carol@example.net>: no such user");
	envelope_free(d);
	envelope_free(NULL);
}

Test(envelope, uid_roundtrips_as_version_2)
{
	struct envelope *env = sample(), *out;
	char *text;
	size_t len;

	env->uid_known = 1;
	env->uid = 1000;
	text = envelope_encode(env, &len);
	cr_assert(strncmp(text, "smarthostd-envelope 2\n", 22) == 0, "%s",
	    text);
	cr_assert_not_null(strstr(text, "\nuid 1000\n"), "%s", text);
	free(text);
	out = roundtrip(env);
	assert_same(env, out);
	envelope_free(out);

	env->uid = 0; /* root is a uid like any other, not "unknown" */
	out = roundtrip(env);
	cr_assert(out->uid_known);
	cr_assert_eq(out->uid, 0);
	envelope_free(out);
	envelope_free(env);
}

Test(envelope, version_1_without_uid_still_read)
{
	const char *text = "smarthostd-envelope 1\nid X\nsender a@b\n"
	    "flags 0\ncreated 1\nnext-try 0\nattempts 0\n"
	    "rcpt c@d pending - -\n\n";
	struct envelope *out;
	char err[128];
	size_t used;

	out = envelope_decode(text, strlen(text), &used, err, sizeof(err));
	cr_assert_not_null(out, "%s", err);
	cr_assert_not(out->uid_known);
	envelope_free(out);
}

Test(envelope, uid_key_checked)
{
	const char *head = "id X\nsender a@b\nflags 0\ncreated 1\n"
	    "next-try 0\nattempts 0\n";
	const char *bad[][2] = {
		{ "1", "uid 5\n" },   /* not in version 1 */
		{ "2", "uid -1\n" },
		{ "2", "uid 4294967295\n" },
		{ "2", "uid 1\nuid 2\n" },
		{ "2", "uid 1x\n" },
	};
	struct envelope *out;
	char text[512], err[128];
	size_t i, used;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(text, sizeof(text), "smarthostd-envelope %s\n%s%s\n",
		    bad[i][0], head, bad[i][1]);
		cr_assert_null(envelope_decode(text, strlen(text), &used, err,
		    sizeof(err)), "accepted: %s", text);
	}
	snprintf(text, sizeof(text), "smarthostd-envelope 2\n%suid 7\n\n",
	    head);
	out = envelope_decode(text, strlen(text), &used, err, sizeof(err));
	cr_assert_not_null(out, "%s", err);
	cr_assert_eq(out->uid, 7);
	envelope_free(out);
}
