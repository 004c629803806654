/*
 * SASL mechanisms against the RFC examples (RFC 2195 CRAM-MD5, RFC 4616
 * PLAIN, RFC 7677 SCRAM-SHA-256, RFC 5802 SCRAM-SHA-1, RFC 7628
 * OAUTHBEARER, Google's XOAUTH2 example), their error paths, the strict
 * base64 helpers and the mechanism order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "sasl.h"
#include "xmalloc.h"

/* Steps s with a text challenge (NULL for the first call). */
static enum sasl_status
step_str(struct sasl *s, const char *challenge, const unsigned char **out,
    size_t *outlen)
{
	return sasl_step(s, (const unsigned char *)challenge,
	    challenge ? strlen(challenge) : 0, out, outlen);
}

static void
expect_out(const unsigned char *out, size_t outlen, const void *want,
    size_t wantlen)
{
	cr_assert_not_null(out);
	cr_expect_eq(outlen, wantlen, "length %zu, expected %zu", outlen,
	    wantlen);
	if (outlen == wantlen)
		cr_expect_eq(memcmp(out, want, wantlen), 0, "got [%.*s]",
		    (int)outlen, out);
	cr_expect_eq(out[outlen], '\0', "response not NUL-terminated");
}

#define EXPECT_OUT_STR(out, outlen, s) \
	expect_out((out), (outlen), (s), strlen(s))

/* ---- base64 ---- */

Test(b64, rfc4648_vectors)
{
	static const char *pairs[][2] = {
		{ "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" },
		{ "foo", "Zm9v" }, { "foob", "Zm9vYg==" },
		{ "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
	};
	size_t i;

	for (i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		char *e = sasl_b64_encode(pairs[i][0], strlen(pairs[i][0]));
		unsigned char *d;
		size_t dlen;

		cr_expect_str_eq(e, pairs[i][1]);
		cr_assert_eq(sasl_b64_decode(pairs[i][1], strlen(pairs[i][1]),
		    &d, &dlen), 0, "decode %s", pairs[i][1]);
		cr_expect_eq(dlen, strlen(pairs[i][0]));
		cr_expect_eq(memcmp(d, pairs[i][0], dlen), 0);
		cr_expect_eq(d[dlen], '\0');
		xfree_secret(d, dlen + 1);
		xfree_secret_str(e);
	}
}

Test(b64, strict_decoding)
{
	static const char *bad[] = {
		"Zg=", "Zg", "Z===", "====", "=Zg=", "Zm9v\n", "Zm 9v",
		"Zg==Zg==", "Zm9*", "Zm9v\r\n", "Z=g=", "Zm9-",
		/* non-canonical: stray bits in the last quantum */
		"Zh==", "Zm9=",
	};
	unsigned char *d = (unsigned char *)1;
	size_t i, dlen = 99;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_expect_eq(sasl_b64_decode(bad[i], strlen(bad[i]), &d, &dlen),
		    -1, "accepted [%s]", bad[i]);
		cr_expect_null(d);
		cr_expect_eq(dlen, 0);
	}
}

Test(b64, binary_round_trip_across_chunks)
{
	size_t n = 100001, dlen;
	unsigned char *in = xmalloc(n), *d;
	char *e;
	size_t i;

	for (i = 0; i < n; i++)
		in[i] = (unsigned char)(i * 7 + (i >> 8));
	e = sasl_b64_encode(in, n);
	cr_expect_eq(strlen(e), 4 * ((n + 2) / 3));
	cr_assert_eq(sasl_b64_decode(e, strlen(e), &d, &dlen), 0);
	cr_assert_eq(dlen, n);
	cr_expect_eq(memcmp(d, in, n), 0);
	xfree_secret(d, dlen + 1);
	xfree_secret_str(e);
	free(in);
}

/* ---- mechanism table ---- */

Test(mech, names_and_flags)
{
	cr_expect_str_eq(sasl_mech_name("cram-md5"), "CRAM-MD5");
	cr_expect_str_eq(sasl_mech_name("Scram-Sha-256"), "SCRAM-SHA-256");
	cr_expect_null(sasl_mech_name("DIGEST-MD5"));
	cr_expect_null(sasl_mech_name("CRAM-MD"));
	cr_expect_eq(sasl_mech_flags("NOPE"), -1);
	cr_expect(sasl_mech_flags("PLAIN") & SASL_MECH_CLEARTEXT);
	cr_expect(sasl_mech_flags("LOGIN") & SASL_MECH_CLEARTEXT);
	cr_expect(sasl_mech_flags("XOAUTH2") & SASL_MECH_CLEARTEXT);
	cr_expect(sasl_mech_flags("OAUTHBEARER") & SASL_MECH_TOKEN);
	cr_expect_eq(sasl_mech_flags("CRAM-MD5") & SASL_MECH_CLEARTEXT, 0);
	cr_expect_eq(sasl_mech_flags("SCRAM-SHA-1") & SASL_MECH_CLEARTEXT, 0);
	cr_expect(sasl_mech_flags("SCRAM-SHA-1") & SASL_MECH_MUTUAL);
	cr_expect(sasl_mech_flags("PLAIN") & SASL_MECH_INITIAL);
	cr_expect_eq(sasl_mech_flags("LOGIN") & SASL_MECH_INITIAL, 0);
}

Test(mech, new_refuses_unknown_and_null)
{
	struct sasl *s;

	cr_expect_null(sasl_new("DIGEST-MD5", "u", "p"));
	cr_expect_null(sasl_new("PLAIN", NULL, "p"));
	cr_expect_null(sasl_new("PLAIN", "u", NULL));
	cr_expect_null(sasl_new(NULL, "u", "p"));
	s = sasl_new("plain", "u", "p");
	cr_assert_not_null(s);
	cr_expect_str_eq(sasl_name(s), "PLAIN");
	sasl_free(s);
	sasl_free(NULL);
}

/* ---- CRAM-MD5 (RFC 2195) ---- */

Test(cram_md5, rfc2195_example)
{
	struct sasl *s = sasl_new("CRAM-MD5", "tim", "tanstaaftanstaaf");
	const unsigned char *out = (const unsigned char *)"x";
	unsigned char *chal;
	size_t outlen = 7, clen;
	char *line;

	/* No initial response: AUTH CRAM-MD5 alone. */
	cr_assert_eq(sasl_step(s, NULL, 0, &out, &outlen), SASL_CONTINUE);
	cr_expect_null(out);
	cr_expect_eq(outlen, 0);
	cr_expect_eq(sasl_is_complete(s), 0);
	/* The challenge as the server sends it, decoded by the caller. */
	cr_assert_eq(sasl_b64_decode(
	    "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+", 56,
	    &chal, &clen), 0);
	cr_assert_eq(sasl_step(s, chal, clen, &out, &outlen), SASL_DONE);
	EXPECT_OUT_STR(out, outlen, "tim b913a602c7eda7a495b4e6e7334d3890");
	line = sasl_b64_encode(out, outlen);
	cr_expect_str_eq(line,
	    "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
	cr_expect_eq(sasl_is_complete(s), 1);
	/* Anything after DONE is a protocol error. */
	cr_expect_eq(sasl_step(s, chal, clen, &out, &outlen), SASL_ERROR);
	cr_expect_null(out);
	cr_expect_eq(sasl_is_complete(s), 0);
	xfree_secret_str(line);
	xfree_secret(chal, clen + 1);
	sasl_free(s);
}

Test(cram_md5, empty_challenge_is_an_error)
{
	struct sasl *s = sasl_new("CRAM-MD5", "tim", "tanstaaftanstaaf");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	cr_expect_eq(step_str(s, "", &out, &outlen), SASL_ERROR);
	sasl_free(s);
}

Test(cram_md5, caller_sent_auth_itself)
{
	struct sasl *s = sasl_new("CRAM-MD5", "tim", "tanstaaftanstaaf");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(step_str(s, "<1896.697170952@postoffice.reston.mci.net>",
	    &out, &outlen), SASL_DONE);
	EXPECT_OUT_STR(out, outlen, "tim b913a602c7eda7a495b4e6e7334d3890");
	sasl_free(s);
}

/* ---- PLAIN (RFC 4616) ---- */

Test(plain, rfc4616_initial_response)
{
	struct sasl *s = sasl_new("PLAIN", "tim", "tanstaaftanstaaf");
	const unsigned char *out;
	size_t outlen;
	char *line;

	cr_assert_eq(sasl_step(s, NULL, 0, &out, &outlen), SASL_DONE);
	expect_out(out, outlen, "\0tim\0tanstaaftanstaaf", 21);
	line = sasl_b64_encode(out, outlen);
	cr_expect_str_eq(line, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
	cr_expect_eq(sasl_is_complete(s), 1);
	cr_expect_eq(step_str(s, "", &out, &outlen), SASL_ERROR);
	xfree_secret_str(line);
	sasl_free(s);
}

Test(plain, after_an_empty_challenge)
{
	struct sasl *s = sasl_new("PLAIN", "Kurt", "xipj3plmq");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(step_str(s, "", &out, &outlen), SASL_DONE);
	expect_out(out, outlen, "\0Kurt\0xipj3plmq", 15);
	sasl_free(s);
}

/* ---- LOGIN ---- */

Test(login, username_then_password)
{
	struct sasl *s = sasl_new("LOGIN", "tim", "secret pw");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	cr_expect_null(out);
	cr_assert_eq(step_str(s, "Username:", &out, &outlen), SASL_CONTINUE);
	EXPECT_OUT_STR(out, outlen, "tim");
	cr_expect_eq(sasl_is_complete(s), 0);
	cr_assert_eq(step_str(s, "Password:", &out, &outlen), SASL_DONE);
	EXPECT_OUT_STR(out, outlen, "secret pw");
	cr_expect_eq(sasl_is_complete(s), 1);
	cr_expect_eq(step_str(s, "Password:", &out, &outlen), SASL_ERROR);
	sasl_free(s);
}

Test(login, prompts_by_order_or_by_word)
{
	struct sasl *s = sasl_new("LOGIN", "tim", "pw");
	const unsigned char *out;
	size_t outlen;

	/* Caller sent AUTH LOGIN itself; odd prompt wording. */
	cr_assert_eq(step_str(s, "User Name", &out, &outlen), SASL_CONTINUE);
	EXPECT_OUT_STR(out, outlen, "tim");
	cr_assert_eq(step_str(s, "Kennwort", &out, &outlen), SASL_DONE);
	EXPECT_OUT_STR(out, outlen, "pw");
	sasl_free(s);

	/* A server that asks for the password first. */
	s = sasl_new("LOGIN", "tim", "pw");
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	cr_assert_eq(step_str(s, "password:", &out, &outlen), SASL_DONE);
	EXPECT_OUT_STR(out, outlen, "pw");
	sasl_free(s);
}

/* ---- SCRAM (RFC 7677, RFC 5802) ---- */

Test(scram, rfc7677_sha256_example)
{
	struct sasl *s = sasl_new("SCRAM-SHA-256", "user", "pencil");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(sasl_set_nonce(s, "rOprNGfwEbeRWgbNEkqO"), 0);
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	EXPECT_OUT_STR(out, outlen, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
	cr_assert_eq(step_str(s, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIl"
	    "j)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", &out, &outlen),
	    SASL_CONTINUE);
	EXPECT_OUT_STR(out, outlen, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2Ra"
	    "TCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7And"
	    "VQ=");
	/* A 235 now would not be enough: the server has not proved
	 * itself yet. */
	cr_expect_eq(sasl_is_complete(s), 0);
	cr_assert_eq(step_str(s,
	    "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
	    &out, &outlen), SASL_DONE);
	cr_assert_not_null(out);
	cr_expect_eq(outlen, 0);
	cr_expect_eq(sasl_is_complete(s), 1);
	cr_expect_null(sasl_server_error(s));
	sasl_free(s);
}

/* The RFC 7677 exchange again, with PBKDF2 left to sasl_work(). */
Test(scram, async_work_gives_the_same_proof)
{
	struct sasl *s = sasl_new("SCRAM-SHA-256", "user", "pencil");
	const unsigned char *out;
	size_t outlen;

	sasl_set_async(s, 1);
	cr_assert_eq(sasl_set_nonce(s, "rOprNGfwEbeRWgbNEkqO"), 0);
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	cr_assert_eq(step_str(s, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIl"
	    "j)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", &out, &outlen),
	    SASL_WORK);
	cr_assert_null(out);
	/* Nothing else may be asked of it before the work is done. */
	sasl_work(s);
	cr_assert_eq(sasl_work_result(s, &out, &outlen), SASL_CONTINUE);
	EXPECT_OUT_STR(out, outlen, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2Ra"
	    "TCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7And"
	    "VQ=");
	cr_assert_eq(step_str(s,
	    "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
	    &out, &outlen), SASL_DONE);
	cr_expect_eq(sasl_is_complete(s), 1);
	sasl_free(s);
	/* Iterations above the cap are refused before any work. */
	s = sasl_new("SCRAM-SHA-256", "user", "pencil");
	sasl_set_async(s, 1);
	cr_assert_eq(sasl_set_nonce(s, "abc"), 0);
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	cr_assert_eq(step_str(s, "r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,"
	    "i=1000001", &out, &outlen), SASL_ERROR);
	sasl_free(s);
}

Test(scram, rfc5802_sha1_example)
{
	struct sasl *s = sasl_new("SCRAM-SHA-1", "user", "pencil");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(sasl_set_nonce(s, "fyko+d2lbbFgONRv9qkxdawL"), 0);
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	EXPECT_OUT_STR(out, outlen, "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
	cr_assert_eq(step_str(s, "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
	    "s=QSXCR+Q6sek8bf92,i=4096", &out, &outlen), SASL_CONTINUE);
	EXPECT_OUT_STR(out, outlen, "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHY"
	    "JY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=");
	cr_assert_eq(step_str(s, "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=", &out,
	    &outlen), SASL_DONE);
	cr_expect_eq(sasl_is_complete(s), 1);
	sasl_free(s);
}

/* Runs the RFC 7677 exchange up to the server-final message. */
static struct sasl *
scram_at_final(void)
{
	struct sasl *s = sasl_new("SCRAM-SHA-256", "user", "pencil");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(sasl_set_nonce(s, "rOprNGfwEbeRWgbNEkqO"), 0);
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	cr_assert_eq(step_str(s, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIl"
	    "j)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", &out, &outlen),
	    SASL_CONTINUE);
	return s;
}

Test(scram, wrong_server_signature_fails)
{
	struct sasl *s = scram_at_final();
	const unsigned char *out;
	size_t outlen;

	/* One bit off in the first byte (6 -> 7). */
	cr_expect_eq(step_str(s,
	    "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
	    &out, &outlen), SASL_ERROR);
	cr_expect_null(out);
	cr_expect_eq(sasl_is_complete(s), 0);
	sasl_free(s);

	/* Only padding bits differ: the same bytes, but not canonical
	 * base64, so refused as well. */
	s = scram_at_final();
	cr_expect_eq(step_str(s,
	    "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G5=",
	    &out, &outlen), SASL_ERROR);
	sasl_free(s);
}

Test(scram, truncated_or_garbled_server_final_fails)
{
	static const char *bad[] = {
		"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl9",
		"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4",
		"x=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
		"",
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct sasl *s = scram_at_final();
		const unsigned char *out;
		size_t outlen;

		cr_expect_eq(step_str(s, bad[i], &out, &outlen), SASL_ERROR,
		    "accepted [%s]", bad[i]);
		cr_expect_eq(sasl_is_complete(s), 0);
		sasl_free(s);
	}
}

Test(scram, server_error_is_reported)
{
	struct sasl *s = scram_at_final();
	const unsigned char *out;
	size_t outlen;

	cr_expect_eq(step_str(s, "e=invalid-proof", &out, &outlen),
	    SASL_ERROR);
	cr_assert_not_null(sasl_server_error(s));
	cr_expect_str_eq(sasl_server_error(s), "invalid-proof");
	sasl_free(s);
}

Test(scram, bad_server_first_messages)
{
	static const char *bad[] = {
		/* nonce does not extend ours */
		"r=XOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
		/* nonce not longer than ours */
		"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
		/* mandatory extension */
		"m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,"
		    "i=4096",
		/* missing salt */
		"r=rOprNGfwEbeRWgbNEkqOxyz,i=4096",
		/* bad salt */
		"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096",
		/* empty salt */
		"r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096",
		/* iteration counts */
		"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
		"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=",
		"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
		"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4k",
		"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,"
		    "i=1000001",
		"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,"
		    "i=99999999999999999999",
		/* order */
		"s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOxyz,i=4096",
		"",
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct sasl *s = sasl_new("SCRAM-SHA-256", "user", "pencil");
		const unsigned char *out;
		size_t outlen;

		cr_assert_eq(sasl_set_nonce(s, "rOprNGfwEbeRWgbNEkqO"), 0);
		cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
		cr_expect_eq(step_str(s, bad[i], &out, &outlen), SASL_ERROR,
		    "accepted [%s]", bad[i]);
		sasl_free(s);
	}
}

Test(scram, nul_in_server_first)
{
	static const char msg[] = "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7so"
	    "EsUEjb6gQ==,i=4096,x=a\0b";
	struct sasl *s = sasl_new("SCRAM-SHA-256", "user", "pencil");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(sasl_set_nonce(s, "rOprNGfwEbeRWgbNEkqO"), 0);
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	cr_expect_eq(sasl_step(s, (const unsigned char *)msg, sizeof(msg) - 1,
	    &out, &outlen), SASL_ERROR);
	sasl_free(s);
}

Test(scram, extension_after_iterations_is_ignored)
{
	struct sasl *s = sasl_new("SCRAM-SHA-256", "user", "pencil");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(sasl_set_nonce(s, "rOprNGfwEbeRWgbNEkqO"), 0);
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	/* The extension is part of the AuthMessage, so the proof changes;
	 * what matters is that it is accepted and the nonce is kept. */
	cr_assert_eq(step_str(s, "r=rOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsU"
	    "Ejb6gQ==,i=4096,x=future", &out, &outlen), SASL_CONTINUE);
	cr_expect(strncmp((const char *)out, "c=biws,r=rOprNGfwEbeRWgbNEkqOabc,"
	    "p=", 35) == 0, "%s", out);
	sasl_free(s);
}

Test(scram, saslname_escaping)
{
	struct sasl *s = sasl_new("SCRAM-SHA-1", "a,b=c", "p");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(sasl_set_nonce(s, "abc"), 0);
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	EXPECT_OUT_STR(out, outlen, "n,,n=a=2Cb=3Dc,r=abc");
	sasl_free(s);
}

Test(scram, random_nonces_differ)
{
	struct sasl *a = sasl_new("SCRAM-SHA-256", "user", "pencil");
	struct sasl *b = sasl_new("SCRAM-SHA-256", "user", "pencil");
	const unsigned char *out;
	size_t outlen;
	char first[128];

	cr_assert_eq(step_str(a, NULL, &out, &outlen), SASL_CONTINUE);
	cr_assert_lt(outlen, sizeof(first));
	memcpy(first, out, outlen + 1);
	/* "n,,n=user,r=" and 24 base64 characters from 18 random bytes */
	cr_expect_eq(outlen, 12 + 24, "%s", first);
	cr_expect(strchr(first + 12, ',') == NULL);
	cr_assert_eq(step_str(b, NULL, &out, &outlen), SASL_CONTINUE);
	cr_expect_neq(strcmp(first, (const char *)out), 0);
	sasl_free(a);
	sasl_free(b);
}

Test(scram, set_nonce_rules)
{
	struct sasl *s = sasl_new("SCRAM-SHA-256", "user", "pencil");
	struct sasl *p = sasl_new("PLAIN", "user", "pencil");
	const unsigned char *out;
	size_t outlen;

	cr_expect_eq(sasl_set_nonce(s, "has,comma"), -1);
	cr_expect_eq(sasl_set_nonce(s, "has space"), -1);
	cr_expect_eq(sasl_set_nonce(s, ""), -1);
	cr_expect_eq(sasl_set_nonce(p, "abc"), -1);
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_CONTINUE);
	cr_expect_eq(sasl_set_nonce(s, "abc"), -1);
	sasl_free(s);
	sasl_free(p);
}

Test(scram, server_speaking_first_is_an_error)
{
	struct sasl *s = sasl_new("SCRAM-SHA-256", "user", "pencil");
	const unsigned char *out;
	size_t outlen;

	cr_expect_eq(step_str(s, "r=abc", &out, &outlen), SASL_ERROR);
	sasl_free(s);
}

/* ---- XOAUTH2 and OAUTHBEARER ---- */

Test(oauth, xoauth2_google_example)
{
	struct sasl *s = sasl_new("XOAUTH2", "someuser@example.com",
	    "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg");
	const unsigned char *out;
	size_t outlen;
	char *line;

	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_DONE);
	line = sasl_b64_encode(out, outlen);
	cr_expect_str_eq(line, "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYX"
	    "JlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2c"
	    "BAQ==");
	cr_expect_eq(sasl_is_complete(s), 1);
	xfree_secret_str(line);
	sasl_free(s);
}

Test(oauth, xoauth2_error_challenge_gets_an_empty_answer)
{
	struct sasl *s = sasl_new("XOAUTH2", "u@example.com", "tok");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_DONE);
	cr_assert_eq(step_str(s, "{\"status\":\"401\"}", &out, &outlen),
	    SASL_DONE);
	cr_assert_not_null(out);
	cr_expect_eq(outlen, 0);
	cr_expect_eq(sasl_is_complete(s), 0);
	cr_expect_str_eq(sasl_server_error(s), "{\"status\":\"401\"}");
	cr_expect_eq(step_str(s, "again", &out, &outlen), SASL_ERROR);
	sasl_free(s);
}

Test(oauth, oauthbearer_rfc7628)
{
	struct sasl *s = sasl_new("OAUTHBEARER", "user@example.com",
	    "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==");
	const unsigned char *out;
	size_t outlen;

	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_DONE);
	EXPECT_OUT_STR(out, outlen, "n,a=user@example.com,\001auth=Bearer "
	    "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\001\001");
	cr_assert_eq(step_str(s, "{\"status\":\"invalid_token\"}", &out,
	    &outlen), SASL_DONE);
	EXPECT_OUT_STR(out, outlen, "\001");
	cr_expect_eq(sasl_is_complete(s), 0);
	sasl_free(s);

	s = sasl_new("OAUTHBEARER", "", "tok");
	cr_assert_eq(step_str(s, NULL, &out, &outlen), SASL_DONE);
	EXPECT_OUT_STR(out, outlen, "n,,\001auth=Bearer tok\001\001");
	sasl_free(s);
}

/* ---- order ---- */

static void
expect_order(const char *server, const char *order, int tls, int allow,
    const char *want)
{
	const char *out[SASL_MECH_MAX];
	char got[256] = "";
	size_t n, i;

	n = sasl_choose_order(server, order, tls, allow, out, SASL_MECH_MAX);
	for (i = 0; i < n; i++)
		snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s",
		    i ? " " : "", out[i]);
	cr_expect_str_eq(got, want, "server [%s] order [%s] tls %d allow %d",
	    server ? server : "(null)", order ? order : "(null)", tls,
	    allow);
}

Test(order, plaintext_mechanisms_need_tls)
{
	expect_order("PLAIN LOGIN CRAM-MD5", NULL, 0, 0, "CRAM-MD5");
	expect_order("PLAIN LOGIN", NULL, 0, 0, "");
	expect_order("PLAIN LOGIN CRAM-MD5", NULL, 1, 0,
	    "CRAM-MD5 PLAIN LOGIN");
	expect_order("PLAIN LOGIN CRAM-MD5", NULL, 0, 1,
	    "CRAM-MD5 PLAIN LOGIN");
	expect_order("XOAUTH2 OAUTHBEARER", "XOAUTH2 OAUTHBEARER", 0, 0, "");
	expect_order("XOAUTH2 OAUTHBEARER", "OAUTHBEARER XOAUTH2", 1, 0,
	    "OAUTHBEARER XOAUTH2");
	expect_order("SCRAM-SHA-1 PLAIN", NULL, 0, 0, "SCRAM-SHA-1");
}

Test(order, default_order_prefers_scram)
{
	expect_order("LOGIN PLAIN CRAM-MD5 SCRAM-SHA-1 SCRAM-SHA-256", NULL, 1,
	    0, "SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN");
	expect_order("login plain cram-md5", "", 1, 0, "CRAM-MD5 PLAIN LOGIN");
	/* Token mechanisms only when configured. */
	expect_order("XOAUTH2 PLAIN", NULL, 1, 0, "PLAIN");
}

Test(order, configured_order_is_kept)
{
	expect_order("PLAIN LOGIN CRAM-MD5", "plain, cram-md5", 1, 0,
	    "PLAIN CRAM-MD5");
	expect_order("PLAIN LOGIN CRAM-MD5", "LOGIN,NOPE,LOGIN PLAIN", 1, 0,
	    "LOGIN PLAIN");
	expect_order("PLAIN LOGIN CRAM-MD5", "SCRAM-SHA-256", 1, 0, "");
	expect_order("PLAINX LOGINS CRAM-MD5X", NULL, 1, 1, "");
	expect_order("PLAI LOGI CRAM-MD", NULL, 1, 1, "");
	expect_order(NULL, NULL, 1, 1, "");
	expect_order("", NULL, 1, 1, "");
}

Test(order, outmax_is_respected)
{
	const char *out[2] = { NULL, NULL };

	cr_expect_eq(sasl_choose_order("PLAIN LOGIN CRAM-MD5", NULL, 1, 0, out,
	    1), 1);
	cr_expect_str_eq(out[0], "CRAM-MD5");
	cr_expect_null(out[1]);
}

Test(order, check_for_the_configuration)
{
	char err[256] = "";

	cr_expect_eq(sasl_order_check("CRAM-MD5 plain,LOGIN", err,
	    sizeof(err)), 0);
	cr_expect_eq(sasl_order_check("CRAM-MD5 DIGEST-MD5", err, sizeof(err)),
	    -1);
	cr_expect(strstr(err, "\"DIGEST-MD5\"") != NULL, "%s", err);
	cr_expect_eq(sasl_order_check(" , ", err, sizeof(err)), -1);
	cr_expect(strstr(err, "no SASL mechanism") != NULL, "%s", err);
}
