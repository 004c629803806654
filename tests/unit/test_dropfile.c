/*
 * The maildrop file format: what postdrop writes reads back, and every
 * kind of damage or forgery is refused with a reason.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "dropfile.h"

static const char body[] = "Subject: hi\r\n\r\nhello\r\n";

/* A whole file for the given header. */
static char *
file_for(const char *hdr, size_t hlen, const char *msg, size_t *len)
{
	char trailer[DROPFILE_TRAILER_MAX];
	size_t tlen = dropfile_trailer(trailer, sizeof(trailer),
	    (off_t)strlen(msg));
	char *f = malloc(hlen + strlen(msg) + tlen + 1);

	cr_assert_not_null(f);
	memcpy(f, hdr, hlen);
	memcpy(f + hlen, msg, strlen(msg));
	memcpy(f + hlen + strlen(msg), trailer, tlen);
	*len = hlen + strlen(msg) + tlen;
	f[*len] = '\0';
	return f;
}

/* Parses a whole file: 0 and the message size, or -1 with err. */
static int
parse(const char *f, size_t len, struct dropfile *df, off_t *size,
    char *err, size_t errlen)
{
	size_t hdrlen, taillen;

	if (dropfile_parse_header(f, len, df, &hdrlen, err, errlen) == -1)
		return -1;
	taillen = len - hdrlen < DROPFILE_TRAILER_MAX ? len - hdrlen :
	    DROPFILE_TRAILER_MAX;
	*size = dropfile_check_trailer(f + len - taillen, taillen, (off_t)len,
	    hdrlen, err, errlen);
	if (*size == -1) {
		dropfile_clear(df);
		return -1;
	}
	return 0;
}

Test(dropfile, roundtrip)
{
	const char *rcpts[] = { "bob@example.net", "carol@example.org" };
	struct dropfile df;
	char *hdr, *f, err[256];
	size_t hlen, len;
	off_t size;

	hdr = dropfile_header(1000, "alice@example.org", rcpts, 2, &hlen);
	cr_assert_str_eq(hdr, "smarthost-maildrop 1\nuid 1000\n"
	    "sender <alice@example.org>\nrcpt <bob@example.net>\n"
	    "rcpt <carol@example.org>\n\n");
	f = file_for(hdr, hlen, body, &len);
	cr_assert_eq(parse(f, len, &df, &size, err, sizeof(err)), 0, "%s",
	    err);
	cr_assert_eq(df.uid, 1000);
	cr_assert_str_eq(df.sender, "alice@example.org");
	cr_assert_eq(df.nrcpts, 2);
	cr_assert_str_eq(df.rcpts[1], "carol@example.org");
	cr_assert_eq(size, (off_t)strlen(body));
	cr_assert_not(df.utf8);
	dropfile_clear(&df);
	free(f);
	free(hdr);
}

Test(dropfile, null_sender_and_utf8)
{
	const char *rcpts[] = { "j\xc3\xb6rg@example.net" };
	struct dropfile df;
	char *hdr, *f, err[256];
	size_t hlen, len;
	off_t size;

	hdr = dropfile_header(0, "", rcpts, 1, &hlen);
	f = file_for(hdr, hlen, "", &len);
	cr_assert_eq(parse(f, len, &df, &size, err, sizeof(err)), 0, "%s",
	    err);
	cr_assert_str_eq(df.sender, "");
	cr_assert(df.utf8);
	cr_assert_eq(size, 0);
	dropfile_clear(&df);
	free(f);
	free(hdr);
}

static void
rejected(const char *f, size_t len, const char *why)
{
	struct dropfile df;
	char err[256];
	off_t size;

	cr_assert_eq(parse(f, len, &df, &size, err, sizeof(err)), -1,
	    "accepted: %.*s", (int)len, f);
	cr_assert_not_null(strstr(err, why), "\"%s\" not in \"%s\"", why, err);
}

#define HDR(rest) "smarthost-maildrop 1\nuid 5\nsender <a@b.example>\n" rest

Test(dropfile, damage_and_forgery_refused)
{
	const char *good = HDR("rcpt <c@d.example>\n\nhi\r\nend 4\n");
	size_t n = strlen(good), i;

	rejected("smarthost-maildrop 2\n", 21, "bad magic");
	rejected("From: x\n\nhi\n", 12, "bad magic");
	for (i = 0; i < n - 1; i++)
		rejected(good, i, "");    /* every truncation */
	rejected(HDR("rcpt <c@d.example>\n\nhi\r\nextra\r\nend 4\n"),
	    strlen(HDR("rcpt <c@d.example>\n\nhi\r\nextra\r\nend 4\n")),
	    "does not match");
	rejected(HDR("\n"), strlen(HDR("\n")), "lacks");
	rejected(HDR("rcpt <c@d.example>\nuid 6\n\nhi\r\nend 4\n"), n + 6,
	    "repeated uid");
	rejected(HDR("rcpt c@d.example\n\nhi\r\nend 4\n"), n - 2,
	    "bad recipient");
	rejected(HDR("rcpt <c@d.example>\nx-key 1\n\nhi\r\nend 4\n"), n + 8,
	    "unknown key");
	rejected(HDR("rcpt <c@d\x01.example>\n\nhi\r\nend 4\n"), n + 1,
	    "control byte");
	rejected("smarthost-maildrop 1\nuid -1\n", 28, "bad or repeated uid");
	rejected("smarthost-maildrop 1\nuid 4294967295\n", 36, "uid");
	rejected(HDR("rcpt <c@d.example>\n\nhi\r\nend 4x\n"), n + 1,
	    "malformed trailer");
	rejected(HDR("rcpt <c@d.example>\n\nhi\r\nEND 4\n"), n,
	    "no trailer");
	{
		struct dropfile df;
		char err[256];
		off_t size;

		cr_assert_eq(parse(good, n, &df, &size, err, sizeof(err)), 0,
		    "%s", err);
		dropfile_clear(&df);
	}
}
