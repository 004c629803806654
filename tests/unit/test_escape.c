/*
 * The escaping helper, and the places that must use it: every log line
 * and the control protocol's lines.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "escape.h"
#include "log.h"

static const char *
esc(const char *in, size_t len)
{
	static char out[256];

	escape_printable(out, sizeof(out), in, len);
	return out;
}

#define ESC(lit) esc(lit, sizeof(lit) - 1)

Test(escape, printable_ascii_and_utf8_unchanged)
{
	cr_assert_str_eq(ESC("a.b+c@example.org"), "a.b+c@example.org");
	cr_assert_str_eq(ESC("\"a\\\"b\"@x"), "\"a\\\"b\"@x");
	cr_assert_str_eq(ESC("j\xc3\xb6rg \xe2\x82\xac \xf0\x9f\x93\xa7"),
	    "j\xc3\xb6rg \xe2\x82\xac \xf0\x9f\x93\xa7");
	cr_assert_not(escape_needed("j\xc3\xb6rg", 5));
}

Test(escape, controls_and_bad_bytes_escaped)
{
	cr_assert_str_eq(ESC("a\rX-Injected: yes\r\x1b[31m"),
	    "a\\x0dX-Injected: yes\\x0d\\x1b[31m");
	cr_assert_str_eq(ESC("\n\t\x7f"), "\\x0a\\x09\\x7f");
	cr_assert_str_eq(ESC("a\0b"), "a\\x00b");
	/* C1 controls (the 8-bit CSI U+009B), stray and overlong bytes,
	 * surrogates, a truncated sequence. */
	cr_assert_str_eq(ESC("\xc2\x9b"), "\\xc2\\x9b");
	cr_assert_str_eq(ESC("\xff\x80"), "\\xff\\x80");
	cr_assert_str_eq(ESC("\xc0\xaf"), "\\xc0\\xaf");
	cr_assert_str_eq(ESC("\xed\xa0\x80"), "\\xed\\xa0\\x80");
	cr_assert_str_eq(ESC("\xe2\x82"), "\\xe2\\x82");
	cr_assert(escape_needed("a\rb", 3));
}

Test(escape, utf8_whole)
{
	cr_assert(escape_utf8_whole("", 0));
	cr_assert(escape_utf8_whole("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10));
	/* Cut at either end, a lone continuation byte, Latin-1, an overlong
	 * form and a surrogate. */
	cr_assert_not(escape_utf8_whole("a\xc3", 2));
	cr_assert_not(escape_utf8_whole("\xa9a", 2));
	cr_assert_not(escape_utf8_whole("\xe9t\xe9", 3));
	cr_assert_not(escape_utf8_whole("\xe0\x80\xaf", 3));
	cr_assert_not(escape_utf8_whole("\xed\xa0\x80", 3));
}

Test(escape, truncates_whole_units)
{
	char out[8];

	cr_assert_eq(escape_printable(out, sizeof(out), "abc\rdef", 7), 7);
	cr_assert_str_eq(out, "abc\\x0d");
	cr_assert_eq(escape_printable(out, 6, "abcd\r", 5), 4);
	cr_assert_str_eq(out, "abcd");
	cr_assert_eq(escape_printable(out, 5, "ab\xe2\x82\xac", 5), 2);
	cr_assert_str_eq(out, "ab");
	cr_assert_eq(escape_printable(out, 1, "x", 1), 0);
	cr_assert_str_eq(out, "");
}

/* Runs f with stderr redirected to a file; returns what it wrote. */
static char *
capture_stderr(void (*f)(void))
{
	char path[] = "/tmp/test_escape.XXXXXX", *buf;
	int fd, saved;
	off_t len;

	fd = mkstemp(path);
	cr_assert_neq(fd, -1);
	unlink(path);
	saved = dup(STDERR_FILENO);
	cr_assert_neq(dup2(fd, STDERR_FILENO), -1);
	f();
	cr_assert_neq(dup2(saved, STDERR_FILENO), -1);
	close(saved);
	len = lseek(fd, 0, SEEK_END);
	buf = calloc(1, (size_t)len + 1);
	cr_assert_not_null(buf);
	cr_assert_eq(pread(fd, buf, (size_t)len, 0), len);
	close(fd);
	return buf;
}

static void
log_hostile(void)
{
	log_init("test_escape", 1);
	log_info("%s: to=<%s>, status=sent (%s)", "ID",
	    "\"\\\rX-Injected: yes\\\r\\\x1b[31m\"@y.z",
	    "250 ok\r\nline two");
	log_debug("helo=%s", "a\x1b]0;title\x07");
}

Test(escape, log_lines_are_escaped)
{
	char *out = capture_stderr(log_hostile);
	char *nl = strchr(out, '\n');

	cr_assert_not_null(nl);
	cr_assert_null(strchr(out, '\r'));
	cr_assert_null(strchr(out, '\x1b'));
	cr_assert_null(strchr(out, '\x07'));
	/* Exactly two lines: the reply's CRLF did not split the first. */
	cr_assert_not_null(strchr(nl + 1, '\n'));
	cr_assert_null(strchr(strchr(nl + 1, '\n') + 1, '\n'));
	cr_assert_not_null(strstr(out, "to=<\"\\\\x0dX-Injected: yes\\\\x0d"
	    "\\\\x1b[31m\"@y.z>"), "%s", out);
	cr_assert_not_null(strstr(out, "(250 ok\\x0d\\x0aline two)"));
	free(out);
}

Test(escape, log_sanitize_keeps_redaction)
{
	char buf[64];

	cr_assert_str_eq(log_sanitize(buf, sizeof(buf), "AUTH PLAIN AGFAYg==",
	    19), "AUTH PLAIN <redacted>");
	cr_assert_str_eq(log_sanitize(buf, sizeof(buf), "RCPT TO:<\x1b>", 11),
	    "RCPT TO:<\\x1b>");
}
