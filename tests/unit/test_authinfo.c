/*
 * authinfo: the corpus in tests/unit/authinfo (cases.tsv lists each lookup
 * and our expected answer; its Emacs column is checked against Emacs 28
 * by verify-emacs.sh), warnings with line numbers, the documented
 * differences from Emacs, quoting, ports, file checks, multi-file lookup
 * and the cache.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "authinfo.h"
#include "secretcmd.h"
#include "xmalloc.h"

/* ---- helpers ---- */

#define MAXWARN 32

struct warns {
	int n;
	unsigned line[MAXWARN];
	char file[MAXWARN][256];
	char msg[MAXWARN][256];
};

static void
collect(const char *file, unsigned line, const char *msg, void *arg)
{
	struct warns *w = arg;

	if (w->n >= MAXWARN)
		return;
	w->line[w->n] = line;
	snprintf(w->file[w->n], sizeof(w->file[0]), "%s", file);
	snprintf(w->msg[w->n], sizeof(w->msg[0]), "%s", msg);
	w->n++;
}

static struct authinfo *
parse_str(const char *s, struct warns *w)
{
	if (w != NULL)
		memset(w, 0, sizeof(*w));
	return authinfo_parse(s, strlen(s), "test", w ? collect : NULL, w);
}

static const char *
corpus_dir(void)
{
	static char dir[4096];
	const char *top = getenv("TOP_SRCDIR");
	const char *f = __FILE__, *slash;

	if (top != NULL && *top != '\0') {
		snprintf(dir, sizeof(dir), "%s/tests/unit/authinfo", top);
		return dir;
	}
	/* Run by hand: the corpus sits next to this source file. */
	slash = strrchr(f, '/');
	if (slash == NULL)
		return "authinfo";
	snprintf(dir, sizeof(dir), "%.*s/authinfo", (int)(slash - f), f);
	return dir;
}

static char *
slurp(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	char *buf;
	long n;

	cr_assert_not_null(fp, "cannot open %s: %s", path, strerror(errno));
	fseek(fp, 0, SEEK_END);
	n = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	buf = xmalloc((size_t)n + 1);
	cr_assert_eq(fread(buf, 1, (size_t)n, fp), (size_t)n);
	buf[n] = '\0';
	fclose(fp);
	*len = (size_t)n;
	return buf;
}

static struct authinfo *
parse_corpus(const char *name, struct warns *w)
{
	char path[4200];
	struct authinfo *ai;
	size_t len;
	char *buf;

	snprintf(path, sizeof(path), "%s/%s", corpus_dir(), name);
	buf = slurp(path, &len);
	if (w != NULL)
		memset(w, 0, sizeof(*w));
	ai = authinfo_parse(buf, len, name, w ? collect : NULL, w);
	free(buf);
	return ai;
}

static char tmpdir[256];

static void
tmp_setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_authinfo.XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir));
}

static void
tmp_teardown(void)
{
	char cmd[512];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		cr_log_warn("could not remove %s", tmpdir);
}

/* Writes content to tmpdir/name with mode; returns the path (static). */
static const char *
put_file(const char *name, const char *content, mode_t mode)
{
	static char paths[8][512];
	static int next;
	char *path = paths[next++ % 8];
	int fd;

	snprintf(path, 512, "%s/%s", tmpdir, name);
	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	cr_assert_neq(fd, -1, "open %s: %s", path, strerror(errno));
	cr_assert_eq(write(fd, content, strlen(content)),
	    (ssize_t)strlen(content));
	cr_assert_eq(fchmod(fd, mode), 0);
	close(fd);
	return path;
}

/* ---- the corpus ---- */

/* A cases.tsv field: "-" absent, '""' empty, \r a carriage return. */
static int
field_eq(const char *got, const char *want)
{
	char buf[1024], *o = buf;
	const char *p;

	if (strcmp(want, "-") == 0)
		return got == NULL;
	if (strcmp(want, "\"\"") == 0)
		return got != NULL && *got == '\0';
	for (p = want; *p != '\0' && o < buf + sizeof(buf) - 1; p++) {
		if (p[0] == '\\' && p[1] == 'r') {
			*o++ = '\r';
			p++;
		} else
			*o++ = *p;
	}
	*o = '\0';
	return got != NULL && strcmp(got, buf) == 0;
}

/*
 * A GNUPGHOME holding the corpus's token key (gpg-token-key.asc, a test
 * key without a passphrase), made on first use in the test's scratch
 * directory; gpg_home_done() stops its agent.
 */
static char gpg_home[300];

static void
gpg_home_setup(const char *scratch)
{
	char cmd[5000];

	if (gpg_home[0] != '\0')
		return;
	snprintf(gpg_home, sizeof(gpg_home), "%s/gnupg", scratch);
	cr_assert_eq(mkdir(gpg_home, 0700), 0, "mkdir %s", gpg_home);
	cr_assert_eq(setenv("GNUPGHOME", gpg_home, 1), 0);
	snprintf(cmd, sizeof(cmd), "gpg --batch --quiet --import "
	    "'%s/gpg-token-key.asc' >/dev/null 2>&1", corpus_dir());
	cr_assert_eq(system(cmd), 0, "gpg --import of the corpus key failed");
}

static void
gpg_home_done(void)
{
	char cmd[512];

	if (gpg_home[0] == '\0')
		return;
	snprintf(cmd, sizeof(cmd), "gpgconf --kill gpg-agent >/dev/null "
	    "2>&1; rm -rf '%s'", gpg_home);
	if (system(cmd) != 0)
		cr_log_warn("could not clean up %s", gpg_home);
	gpg_home[0] = '\0';
}

/* The password a lookup ends with: a gpg: token decrypted, as the daemon
 * does. Returns a copy to free, or NULL. */
static char *
corpus_password(const struct authinfo_entry *e, const char *scratch)
{
	char *plain, *copy, err[256];
	size_t len;

	if (e->password == NULL)
		return NULL;
	if (!authinfo_is_gpg_token(e->password))
		return xstrdup(e->password);
	gpg_home_setup(scratch);
	cr_assert_eq(secretcmd_gpg_token(e->password, &plain, &len, err,
	    sizeof(err)), 0, "%s:%u: token not decrypted: %s", e->file,
	    e->line, err);
	copy = xstrdup(plain);
	xfree_secret(plain, len + 1);
	return copy;
}

Test(corpus, every_case_in_cases_tsv, .init = tmp_setup,
    .fini = tmp_teardown)
{
	char path[4200], line[1024];
	FILE *fp;
	int ncases = 0;

	snprintf(path, sizeof(path), "%s/cases.tsv", corpus_dir());
	fp = fopen(path, "r");
	cr_assert_not_null(fp, "cannot open %s", path);
	while (fgets(line, sizeof(line), fp) != NULL) {
		char *f[8], *p = line, *nl;
		const struct authinfo_entry *e;
		struct authinfo *ai;
		const char *port, *user;
		unsigned want_line;
		char *pw;
		int i;

		if (line[0] == '#' || line[0] == '\n')
			continue;
		if ((nl = strchr(line, '\n')) != NULL)
			*nl = '\0';
		for (i = 0; i < 8; i++) {
			f[i] = p;
			p = strchr(p, '\t');
			if (p == NULL)
				break;
			*p++ = '\0';
		}
		cr_assert_eq(i, 7, "malformed cases.tsv line: %s", line);
		port = strcmp(f[2], "-") == 0 ? NULL : f[2];
		user = strcmp(f[3], "*") == 0 ? NULL : f[3];
		want_line = (unsigned)atoi(f[4]);
		ai = parse_corpus(f[0], NULL);
		e = authinfo_match(ai, f[1], port, user);
		if (want_line == 0) {
			cr_expect_null(e, "%s %s %s %s: expected no match, "
			    "got line %u", f[0], f[1], f[2], f[3],
			    e ? e->line : 0);
		} else if (e == NULL) {
			cr_expect_fail("%s %s %s %s: expected line %u, got "
			    "no match", f[0], f[1], f[2], f[3], want_line);
		} else {
			cr_expect_eq(e->line, want_line, "%s %s %s %s: line "
			    "%u, expected %u", f[0], f[1], f[2], f[3],
			    e->line, want_line);
			cr_expect(field_eq(e->login, f[5]), "%s %s %s %s: "
			    "login [%s], expected [%s]", f[0], f[1], f[2],
			    f[3], e->login ? e->login : "(none)", f[5]);
			pw = corpus_password(e, tmpdir);
			cr_expect(field_eq(pw, f[6]), "%s %s %s %s: "
			    "password [%s], expected [%s]", f[0], f[1], f[2],
			    f[3], pw ? pw : "(none)", f[6]);
			free(pw);
		}
		authinfo_free(ai);
		ncases++;
	}
	fclose(fp);
	gpg_home_done();
	cr_assert_geq(ncases, 60, "only %d cases read from %s", ncases, path);
}

Test(corpus, clean_files_give_no_warnings)
{
	static const char *clean[] = {
		"basic.authinfo", "quotes.authinfo", "comments.authinfo",
		"default-first.authinfo", "default-last.authinfo",
		"ports.authinfo", "duplicates.authinfo", "missing.authinfo",
		"crlf.authinfo", "tabs.authinfo", "empty.authinfo",
		"blank-lines.authinfo", "unknown-keys.authinfo",
		"smtp-auth.authinfo", "aliases.authinfo", "multiline.authinfo",
		"bom.authinfo", "missing-password.authinfo",
		"cr-in-quotes.authinfo", "gpg-token.authinfo",
		"host-keyword.authinfo", "capitals.authinfo",
		"backslash-quote.authinfo", "macdef.netrc",
		"host-case.authinfo",
	};
	struct warns w;
	size_t i;

	for (i = 0; i < sizeof(clean) / sizeof(clean[0]); i++) {
		struct authinfo *ai = parse_corpus(clean[i], &w);

		cr_expect_eq(w.n, 0, "%s: %d warnings, first: %u: %s",
		    clean[i], w.n, w.line[0], w.msg[0]);
		authinfo_free(ai);
	}
}

Test(corpus, entry_counts)
{
	struct authinfo *ai;

	ai = parse_corpus("empty.authinfo", NULL);
	cr_expect_eq(authinfo_count(ai), 0);
	authinfo_free(ai);
	ai = parse_corpus("basic.authinfo", NULL);
	cr_expect_eq(authinfo_count(ai), 3);
	authinfo_free(ai);
	ai = parse_corpus("comments.authinfo", NULL);
	cr_expect_eq(authinfo_count(ai), 4);
	authinfo_free(ai);
	/* The macro body's "machine" line is skipped. */
	ai = parse_corpus("macdef.netrc", NULL);
	cr_expect_eq(authinfo_count(ai), 2);
	authinfo_free(ai);
}

/* ---- warnings ---- */

Test(warnings, malformed_lines_name_their_line_and_the_rest_works)
{
	struct warns w;
	struct authinfo *ai = parse_corpus("malformed.authinfo", &w);
	int i;

	/* line 2: "unterminated is taken literally (a warning), and then
	 * s3cret is an unknown key without a value */
	cr_assert_eq(w.n, 3, "got %d warnings", w.n);
	cr_expect_eq(w.line[0], 2);
	cr_expect_str_eq(w.file[0], "malformed.authinfo");
	cr_expect(strstr(w.msg[0], "does not close on its line") != NULL,
	    "%s", w.msg[0]);
	cr_expect_eq(w.line[1], 2);
	cr_expect(strstr(w.msg[1], "unknown key has no value") != NULL, "%s",
	    w.msg[1]);
	cr_expect_eq(w.line[2], 4);
	cr_expect(strstr(w.msg[2], "password has no value") != NULL, "%s",
	    w.msg[2]);
	/* Warnings never quote file text: it may be a password. */
	for (i = 0; i < w.n; i++) {
		cr_expect(strstr(w.msg[i], "unterminated") == NULL);
		cr_expect(strstr(w.msg[i], "s3cret") == NULL);
	}
	cr_expect_not_null(authinfo_match(ai, "good3.example", "587", NULL));
	authinfo_free(ai);
}

Test(warnings, hash_value_explains_the_quotes)
{
	struct warns w;
	struct authinfo *ai = parse_corpus("hash-value.authinfo", &w);
	const struct authinfo_entry *e;

	cr_assert_eq(w.n, 1);
	cr_expect_eq(w.line[0], 1);
	cr_expect(strstr(w.msg[0], "quote a value that starts with #") !=
	    NULL, "%s", w.msg[0]);
	cr_expect(strstr(w.msg[0], "notacomment") == NULL);
	e = authinfo_match(ai, "h1.example", NULL, NULL);
	cr_assert_not_null(e);
	cr_expect_null(e->password);
	authinfo_free(ai);
}

Test(warnings, keys_outside_an_entry)
{
	struct warns w;
	struct authinfo *ai = parse_corpus("outside.authinfo", &w);

	cr_assert_eq(w.n, 1, "%d", w.n);
	cr_expect_eq(w.line[0], 1);
	cr_expect(strstr(w.msg[0], "before the first machine") != NULL, "%s",
	    w.msg[0]);
	cr_expect_eq(authinfo_count(ai), 1);
	authinfo_free(ai);
}

Test(warnings, duplicate_key_last_wins)
{
	struct warns w;
	struct authinfo *ai = parse_str(
	    "machine d.example login a login b password p\n", &w);
	const struct authinfo_entry *e = authinfo_get(ai, 0);

	cr_assert_not_null(e);
	cr_expect_str_eq(e->login, "b");
	cr_assert_eq(w.n, 1);
	cr_expect(strstr(w.msg[0], "login given twice") != NULL, "%s",
	    w.msg[0]);
	authinfo_free(ai);
}

Test(warnings, machine_where_a_value_belongs)
{
	struct warns w;
	struct authinfo *ai = parse_str("machine a.example login machine "
	    "b.example login x password y\n", &w);
	const struct authinfo_entry *e;

	cr_assert_eq(w.n, 1);
	cr_expect(strstr(w.msg[0], "login has no value before \"machine\"")
	    != NULL, "%s", w.msg[0]);
	cr_assert_eq(authinfo_count(ai), 2);
	cr_expect_null(authinfo_get(ai, 0)->login);
	e = authinfo_match(ai, "b.example", NULL, NULL);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->login, "x");
	cr_expect_str_eq(e->password, "y");
	authinfo_free(ai);
}

Test(warnings, glued_quote_and_nul)
{
	static const char buf[] = "machine a.example login 'x'y password p\n"
	    "machine b.example login u password p\0q\n"
	    "machine c.example login c password pc\n";
	struct warns w;
	struct authinfo *ai;
	const struct authinfo_entry *e;

	memset(&w, 0, sizeof(w));
	ai = authinfo_parse(buf, sizeof(buf) - 1, "glued", collect, &w);
	cr_assert_eq(w.n, 2);
	cr_expect_eq(w.line[0], 1);
	cr_expect(strstr(w.msg[0], "right after a closing quote") != NULL);
	cr_expect_eq(w.line[1], 2);
	cr_expect(strstr(w.msg[1], "NUL") != NULL);
	/* What came before the error on its line is kept. */
	e = authinfo_match(ai, "b.example", NULL, NULL);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->login, "u");
	cr_expect_null(e->password);
	e = authinfo_match(ai, "a.example", NULL, NULL);
	cr_assert_not_null(e);
	cr_expect_null(e->login);
	cr_expect_null(e->password);
	cr_expect_not_null(authinfo_match(ai, "c.example", NULL, NULL));
	authinfo_free(ai);
}

Test(warnings, bare_machine_does_not_feed_the_previous_entry)
{
	struct warns w;
	struct authinfo *ai = parse_str("machine a.example login a\n"
	    "machine\nlogin b password pb\n", &w);
	const struct authinfo_entry *e = authinfo_match(ai, "a.example", NULL,
	    NULL);

	cr_assert_not_null(e);
	cr_expect_str_eq(e->login, "a");
	cr_expect_null(e->password);
	cr_expect_eq(w.n, 1);
	cr_expect_eq(w.line[0], 2);
	authinfo_free(ai);
}

/* ---- grammar details ---- */

Test(grammar, entry_fields)
{
	struct authinfo *ai = parse_str("machine m.example port submission "
	    "login u password p smtp-auth cram-md5\ndefault login d\n", NULL);
	const struct authinfo_entry *e;

	cr_assert_eq(authinfo_count(ai), 2);
	e = authinfo_get(ai, 0);
	cr_expect_str_eq(e->file, "test");
	cr_expect_eq(e->line, 1);
	cr_expect_eq(e->is_default, 0);
	cr_expect_str_eq(e->host, "m.example");
	cr_expect_str_eq(e->port, "submission");
	cr_expect_str_eq(e->login, "u");
	cr_expect_str_eq(e->password, "p");
	cr_expect_str_eq(e->smtp_auth, "cram-md5");
	e = authinfo_get(ai, 1);
	cr_expect_eq(e->line, 2);
	cr_expect_eq(e->is_default, 1);
	cr_expect_null(e->host);
	cr_expect_null(e->password);
	cr_expect_null(authinfo_get(ai, 2));
	authinfo_free(ai);
}

Test(grammar, smtp_auth_from_corpus)
{
	struct authinfo *ai = parse_corpus("smtp-auth.authinfo", NULL);
	const struct authinfo_entry *e = authinfo_match(ai, "sa.example",
	    "587", NULL);

	cr_assert_not_null(e);
	cr_expect_str_eq(e->smtp_auth, "cram-md5");
	authinfo_free(ai);
}

Test(grammar, no_line_length_limit)
{
	size_t n = 100000;
	char *buf = xmalloc(n + 100), *pw = xmalloc(n + 1);
	struct authinfo *ai;
	const struct authinfo_entry *e;

	memset(pw, 'x', n);
	pw[n] = '\0';
	snprintf(buf, n + 100, "machine long.example login l password %s "
	    "port 587\n", pw);
	ai = parse_str(buf, NULL);
	e = authinfo_match(ai, "long.example", "587", NULL);
	cr_assert_not_null(e);
	cr_expect_eq(strlen(e->password), n);
	cr_expect_str_eq(e->port, "587");
	authinfo_free(ai);
	free(buf);
	free(pw);
}

Test(grammar, utf8_bom_is_skipped_only_at_the_start)
{
	struct warns w;
	struct authinfo *ai = parse_str("\xef\xbb\xbfmachine a.example login u "
	    "password p\nmachine b.example login v password \xef\xbb\xbfq\n",
	    &w);
	const struct authinfo_entry *e;

	e = authinfo_match(ai, "a.example", "587", NULL);
	cr_assert_not_null(e);
	cr_expect_eq(e->line, 1);
	cr_expect_str_eq(e->password, "p");
	/* elsewhere the bytes are part of a token like any other */
	e = authinfo_match(ai, "b.example", "587", NULL);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->password, "\xef\xbb\xbfq");
	cr_expect_eq(w.n, 0, "%d warnings", w.n);
	authinfo_free(ai);
}

Test(grammar, unclosed_quote_is_literal_with_a_warning)
{
	struct warns w;
	struct authinfo *ai = parse_str("machine a.example login u password "
	    "'it port 25\nmachine b.example password \"x y\n", &w);
	const struct authinfo_entry *e;

	e = authinfo_get(ai, 0);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->password, "'it");
	cr_expect_str_eq(e->port, "25", "the rest of the line still counts");
	e = authinfo_get(ai, 1);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->password, "\"x");
	cr_assert_geq(w.n, 2);
	cr_expect_eq(w.line[0], 1);
	cr_expect(strstr(w.msg[0], "quote included") != NULL, "%s", w.msg[0]);
	cr_expect(strstr(w.msg[0], "it") == NULL || strstr(w.msg[0],
	    "'it") == NULL, "never quotes the token");
	authinfo_free(ai);
}

Test(grammar, cr_inside_quotes_belongs_to_the_value)
{
	struct authinfo *ai = parse_str("machine a.example password "
	    "\"a\rb\r\"\r\nmachine b.example password '\rc'\n", NULL);

	cr_assert_eq(authinfo_count(ai), 2);
	cr_expect_str_eq(authinfo_get(ai, 0)->password, "a\rb\r");
	cr_expect_str_eq(authinfo_get(ai, 1)->password, "\rc");
	authinfo_free(ai);
}

Test(grammar, gpg_tokens_are_recognised_not_decoded_by_the_parser)
{
	struct authinfo *ai = parse_str("machine a.example password "
	    "gpg:AAAA\nmachine b.example password gpgx\n", NULL);

	cr_expect_str_eq(authinfo_get(ai, 0)->password, "gpg:AAAA");
	cr_expect(authinfo_is_gpg_token(authinfo_get(ai, 0)->password));
	cr_expect(!authinfo_is_gpg_token(authinfo_get(ai, 1)->password));
	cr_expect(!authinfo_is_gpg_token(NULL));
	authinfo_free(ai);
}

Test(grammar, gpg_token_with_bad_base64_is_an_error)
{
	char *out = NULL, err[256] = "";
	size_t len;

	cr_expect_eq(secretcmd_gpg_token("gpg:!!!notbase64", &out, &len, err,
	    sizeof(err)), -1);
	cr_expect_null(out);
	cr_expect(strstr(err, "base64") != NULL, "%s", err);
	cr_expect_eq(secretcmd_gpg_token("gpg:", &out, &len, err,
	    sizeof(err)), -1);
}

Test(grammar, no_trailing_newline_and_bare_cr)
{
	struct authinfo *ai = parse_str("machine a.example login u\rpassword "
	    "p", NULL);
	const struct authinfo_entry *e = authinfo_get(ai, 0);

	cr_assert_not_null(e);
	cr_expect_str_eq(e->login, "u");
	cr_expect_str_eq(e->password, "p");
	authinfo_free(ai);
}

Test(grammar, double_quote_escapes)
{
	struct authinfo *ai = parse_str(
	    "machine a login u password \"a\\\\b\\\"c\\d\"\n"
	    "machine b login u password 'x\\\"y'\n", NULL);

	/* \\ and \" are escapes in double quotes, \d is literal; single
	 * quotes have no escapes at all. */
	cr_expect_str_eq(authinfo_get(ai, 0)->password, "a\\b\"c\\d");
	cr_expect_str_eq(authinfo_get(ai, 1)->password, "x\\\"y");
	authinfo_free(ai);
}

/* The deliberate differences from Emacs 28, one by one. */

Test(emacs_differences, host_starts_an_entry)
{
	struct authinfo *ai = parse_corpus("host-keyword.authinfo", NULL);

	cr_expect_eq(authinfo_count(ai), 2);
	cr_expect_str_eq(authinfo_match(ai, "a.example", NULL, NULL)->password,
	    "pa");
	authinfo_free(ai);
}

Test(emacs_differences, capital_keywords)
{
	struct authinfo *ai = parse_corpus("capitals.authinfo", NULL);
	const struct authinfo_entry *e = authinfo_match(ai, "other.example",
	    NULL, NULL);

	cr_assert_not_null(e);
	cr_expect_str_eq(e->login, "ou");
	authinfo_free(ai);
}

Test(emacs_differences, backslash_quote)
{
	struct authinfo *ai = parse_corpus("backslash-quote.authinfo", NULL);
	const struct authinfo_entry *e = authinfo_get(ai, 0);

	cr_assert_not_null(e);
	cr_expect_str_eq(e->password, "pa\"ss");
	cr_expect_str_eq(e->port, "587");
	authinfo_free(ai);
}

Test(emacs_differences, host_and_port_comparisons)
{
	struct authinfo *ai = parse_str("machine Mail.Example.ORG login u "
	    "port smtps\n", NULL);

	cr_expect_not_null(authinfo_match(ai, "mail.example.org", "465",
	    NULL));
	cr_expect_not_null(authinfo_match(ai, "MAIL.example.org", "SMTPS",
	    NULL));
	cr_expect_null(authinfo_match(ai, "mail.example.org", "587", NULL));
	cr_expect_null(authinfo_match(ai, "mail.example.net", "465", NULL));
	authinfo_free(ai);
}

/* ---- matching ---- */

Test(match, user_filter)
{
	struct authinfo *ai = parse_str("machine h login alice password a\n"
	    "machine h password nologin\n"
	    "machine h login bob password b\n", NULL);

	cr_expect_eq(authinfo_match(ai, "h", NULL, NULL)->line, 1);
	cr_expect_eq(authinfo_match(ai, "h", NULL, "")->line, 1);
	cr_expect_eq(authinfo_match(ai, "h", NULL, "alice")->line, 1);
	/* An entry without a login matches any user (as auth-source). */
	cr_expect_eq(authinfo_match(ai, "h", NULL, "bob")->line, 2);
	/* Logins compare case-sensitively, as Emacs does. */
	cr_expect_eq(authinfo_match(ai, "h", NULL, "Alice")->line, 2);
	authinfo_free(ai);
}

Test(match, port_numbers)
{
	cr_expect_eq(authinfo_port_number("25"), 25);
	cr_expect_eq(authinfo_port_number("smtp"), 25);
	cr_expect_eq(authinfo_port_number("SMTP"), 25);
	cr_expect_eq(authinfo_port_number("submission"), 587);
	cr_expect_eq(authinfo_port_number("submissions"), 465);
	cr_expect_eq(authinfo_port_number("smtps"), 465);
	cr_expect_eq(authinfo_port_number("ssmtp"), 465);
	cr_expect_eq(authinfo_port_number("00587"), 587);
	cr_expect_eq(authinfo_port_number("65535"), 65535);
	cr_expect_eq(authinfo_port_number("65536"), -1);
	cr_expect_eq(authinfo_port_number("99999999999999999999"), -1);
	cr_expect_eq(authinfo_port_number("0"), -1);
	cr_expect_eq(authinfo_port_number(""), -1);
	cr_expect_eq(authinfo_port_number("587x"), -1);
	cr_expect_eq(authinfo_port_number("-25"), -1);
	cr_expect_eq(authinfo_port_number("imap"), -1);
}

Test(match, entry_dup_is_deep)
{
	struct authinfo *ai = parse_str("machine h login u password p port 25 "
	    "smtp-auth plain\n", NULL);
	struct authinfo_entry *d = authinfo_entry_dup(authinfo_get(ai, 0));

	authinfo_free(ai);
	cr_expect_str_eq(d->file, "test");
	cr_expect_str_eq(d->host, "h");
	cr_expect_str_eq(d->login, "u");
	cr_expect_str_eq(d->password, "p");
	cr_expect_str_eq(d->port, "25");
	cr_expect_str_eq(d->smtp_auth, "plain");
	authinfo_entry_free(d);
	authinfo_entry_free(NULL);
	authinfo_free(NULL);
}

/* ---- quoting for tools that write a line ---- */

Test(quote, round_trip)
{
	static const char *values[] = {
		"plain", "with space", "#hash", "in#side", "it's", "say \"hi\"",
		"back\\slash", "tab\there", "", "machine", "DEFAULT", "'lead",
		"\"lead", "a'b\"c", "a\\b 'c'",
	};
	size_t i;

	for (i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		char *q = authinfo_quote(values[i]), *line;
		struct authinfo *ai;
		struct warns w;

		cr_assert_not_null(q, "no quoting for [%s]", values[i]);
		line = xasprintf("machine h login x password %s port 25\n", q);
		ai = parse_str(line, &w);
		cr_expect_eq(w.n, 0, "[%s] as %s: %s", values[i], q, w.msg[0]);
		cr_assert_eq(authinfo_count(ai), 1, "[%s] as %s", values[i], q);
		cr_expect_str_eq(authinfo_get(ai, 0)->password, values[i],
		    "[%s] written as %s", values[i], q);
		cr_expect_str_eq(authinfo_get(ai, 0)->port, "25");
		authinfo_free(ai);
		free(line);
		xfree_secret_str(q);
	}
	cr_expect_null(authinfo_quote("line\nbreak"));
	cr_expect_null(authinfo_quote("both ' and \" spaced"));
	cr_expect_null(authinfo_quote("it's \\\\ two"));
}

Test(quote, simple_forms)
{
	char *q;

	q = authinfo_quote("plain");
	cr_expect_str_eq(q, "plain");
	free(q);
	q = authinfo_quote("a b");
	cr_expect_str_eq(q, "'a b'");
	free(q);
	q = authinfo_quote("it's here");
	cr_expect_str_eq(q, "\"it's here\"");
	free(q);
}

/* ---- files ---- */

TestSuite(file, .init = tmp_setup, .fini = tmp_teardown);

Test(file, mode_0644_refused_with_chmod_hint)
{
	struct authinfo *ai = (struct authinfo *)1;
	char err[1024], want[600];
	const char *path = put_file("authinfo", "machine h login u password "
	    "p\n", 0644);

	cr_assert_eq(authinfo_read_file(path, &ai, NULL, NULL, err,
	    sizeof(err)), -1);
	cr_expect_null(ai);
	snprintf(want, sizeof(want), "chmod 600 %s", path);
	cr_expect(strstr(err, want) != NULL, "err: %s", err);
	cr_expect(strncmp(err, path, strlen(path)) == 0, "err: %s", err);
	cr_expect(strstr(err, "0644") != NULL, "err: %s", err);
}

Test(file, group_or_other_bits_refused)
{
	static const mode_t modes[] = { 0640, 0620, 0604, 0602, 0610, 0601 };
	struct authinfo *ai;
	char err[1024];
	size_t i;

	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		const char *path = put_file("authinfo", "machine h\n",
		    modes[i]);

		cr_expect_eq(authinfo_read_file(path, &ai, NULL, NULL, err,
		    sizeof(err)), -1, "mode %04o accepted", modes[i]);
		cr_expect(strstr(err, "chmod 600") != NULL, "%s", err);
	}
}

Test(file, mode_0600_and_0400_accepted)
{
	static const mode_t modes[] = { 0600, 0400, 0700 };
	struct authinfo *ai;
	char err[1024];
	size_t i;

	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		const char *path = put_file("authinfo", "machine h login u "
		    "password p\n", modes[i]);

		err[0] = '\0';
		cr_assert_eq(authinfo_read_file(path, &ai, NULL, NULL, err,
		    sizeof(err)), 0, "mode %04o: %s", modes[i], err);
		cr_assert_not_null(ai);
		cr_expect_str_eq(authinfo_get(ai, 0)->password, "p");
		cr_expect_str_eq(authinfo_get(ai, 0)->file, path);
		authinfo_free(ai);
	}
}

Test(file, missing_is_skipped_silently)
{
	struct authinfo *ai = (struct authinfo *)1;
	char err[1024] = "", path[600];

	snprintf(path, sizeof(path), "%s/nope", tmpdir);
	cr_expect_eq(authinfo_read_file(path, &ai, NULL, NULL, err,
	    sizeof(err)), 0);
	cr_expect_null(ai);
	snprintf(path, sizeof(path), "%s/nodir/nope", tmpdir);
	cr_expect_eq(authinfo_read_file(path, &ai, NULL, NULL, err,
	    sizeof(err)), 0);
	cr_expect_null(ai);
	/* ENOTDIR: a path through a plain file (a ~ that is no home). */
	snprintf(path, sizeof(path), "%s/nope", put_file("plain", "", 0600));
	cr_expect_eq(authinfo_read_file(path, &ai, NULL, NULL, err,
	    sizeof(err)), 0, "%s", err);
	cr_expect_null(ai);
	cr_expect_str_eq(err, "");
}

Test(file, directory_refused)
{
	struct authinfo *ai;
	char err[1024];

	cr_expect_eq(authinfo_read_file(tmpdir, &ai, NULL, NULL, err,
	    sizeof(err)), -1);
	cr_expect(strstr(err, "not a regular file") != NULL, "%s", err);
}

Test(file, too_large_refused)
{
	size_t n = AUTHINFO_FILE_MAX + 10;
	char *big = xmalloc(n + 1), err[1024];
	struct authinfo *ai;
	const char *path;

	memset(big, '#', n);
	big[n] = '\0';
	path = put_file("big", big, 0600);
	cr_expect_eq(authinfo_read_file(path, &ai, NULL, NULL, err,
	    sizeof(err)), -1);
	cr_expect(strstr(err, "larger than") != NULL, "%s", err);
	free(big);
}

Test(file, just_under_the_cap_is_read)
{
	size_t n = AUTHINFO_FILE_MAX;
	char *big = xmalloc(n + 1), err[1024] = "";
	const char *entry = "machine big.example login b password pb\n";
	struct authinfo *ai;
	const char *path;

	memset(big, '\n', n);
	memcpy(big + n - strlen(entry), entry, strlen(entry));
	big[n] = '\0';
	path = put_file("big", big, 0600);
	cr_assert_eq(authinfo_read_file(path, &ai, NULL, NULL, err,
	    sizeof(err)), 0, "%s", err);
	cr_assert_eq(authinfo_count(ai), 1);
	cr_expect_eq(authinfo_get(ai, 0)->line, (unsigned)(n - strlen(entry)
	    + 1));
	authinfo_free(ai);
	free(big);
}

Test(file, wrong_owner_refused_with_chown_hint)
{
	struct authinfo *ai;
	char err[1024], want[600];
	const char *path;

	if (geteuid() != 0)
		cr_skip_test("needs root to give a file away");
	path = put_file("authinfo", "machine h\n", 0600);
	cr_assert_eq(chown(path, 65534, 65534), 0);
	cr_expect_eq(authinfo_read_file(path, &ai, NULL, NULL, err,
	    sizeof(err)), -1);
	snprintf(want, sizeof(want), "chown root %s", path);
	cr_expect(strstr(err, want) != NULL, "%s", err);
	cr_expect(strstr(err, "uid 65534") != NULL, "%s", err);
	cr_expect(strstr(err, "chmod") == NULL, "%s", err);
}

/* The hint names the file the link points to: "chmod 600 LINK" run later
 * acts on whatever the link points to then. */
Test(file, symlink_hint_names_the_real_file)
{
	struct authinfo *ai;
	char err[2048], want[2 * PATH_MAX], link[600], real[PATH_MAX];
	const char *path = put_file("target", "machine h\n", 0644);

	cr_assert_not_null(realpath(path, real));
	snprintf(link, sizeof(link), "%s/authinfo-link", tmpdir);
	unlink(link);
	cr_assert_eq(symlink(path, link), 0);
	cr_expect_eq(authinfo_read_file(link, &ai, NULL, NULL, err,
	    sizeof(err)), -1);
	snprintf(want, sizeof(want), "fix it with: chmod 600 %s", real);
	cr_expect(strstr(err, want) != NULL, "%s", err);
	snprintf(want, sizeof(want), "chmod 600 %s", link);
	cr_expect(strstr(err, want) == NULL, "%s", err);
	snprintf(want, sizeof(want), "%s (that is, %s)", link, real);
	cr_expect(strstr(err, want) != NULL, "%s", err);
}

/* A link that another user owns is refused, even to a good file. */
Test(file, foreign_symlink_refused)
{
	struct authinfo *ai;
	char err[2048], link[600];
	const char *path = put_file("target", "machine h\n", 0600);

	if (geteuid() != 0)
		cr_skip_test("needs root to give a link away");
	snprintf(link, sizeof(link), "%s/authinfo-link", tmpdir);
	unlink(link);
	cr_assert_eq(symlink(path, link), 0);
	cr_assert_eq(lchown(link, 65534, 65534), 0);
	cr_expect_eq(authinfo_read_file(link, &ai, NULL, NULL, err,
	    sizeof(err)), -1);
	cr_expect(strstr(err, "a symbolic link owned by uid 65534") != NULL,
	    "%s", err);
	/* Ours, to the same file: read. */
	cr_assert_eq(lchown(link, 0, 0), 0);
	cr_assert_eq(authinfo_read_file(link, &ai, NULL, NULL, err,
	    sizeof(err)), 0, "%s", err);
	authinfo_free(ai);
}

Test(file, path_with_space_is_quoted_in_the_hint)
{
	struct authinfo *ai;
	char err[1024], want[600];
	const char *path = put_file("my authinfo", "machine h\n", 0644);

	cr_expect_eq(authinfo_read_file(path, &ai, NULL, NULL, err,
	    sizeof(err)), -1);
	snprintf(want, sizeof(want), "chmod 600 '%s'", path);
	cr_expect(strstr(err, want) != NULL, "%s", err);
}

Test(file, warnings_carry_the_path)
{
	struct warns w;
	struct authinfo *ai;
	char err[1024];
	const char *path = put_file("authinfo", "machine h\n\nmachine h2 "
	    "login\n", 0600);

	memset(&w, 0, sizeof(w));
	cr_assert_eq(authinfo_read_file(path, &ai, collect, &w, err,
	    sizeof(err)), 0);
	cr_assert_eq(w.n, 1);
	cr_expect_str_eq(w.file[0], path);
	cr_expect_eq(w.line[0], 3);
	authinfo_free(ai);
}

/* ---- lookup across files ---- */

TestSuite(lookup, .init = tmp_setup, .fini = tmp_teardown);

Test(lookup, file_order_first_match_wins)
{
	char f1[600], f2[600], missing[600], err[1024] = "";
	const char *files[3];
	struct authinfo_entry *e;

	snprintf(f1, sizeof(f1), "%s", put_file("one", "machine a.example "
	    "login a1 password pa1\n", 0600));
	snprintf(f2, sizeof(f2), "%s", put_file("two", "machine a.example "
	    "login a2 password pa2\nmachine b.example login b2 password "
	    "pb2 port 587\n", 0600));
	snprintf(missing, sizeof(missing), "%s/missing", tmpdir);
	files[0] = missing;
	files[1] = f1;
	files[2] = f2;

	cr_assert_eq(authinfo_lookup(files, 3, "a.example", "587", NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->file, f1);
	cr_expect_str_eq(e->login, "a1");
	authinfo_entry_free(e);

	cr_assert_eq(authinfo_lookup(files, 3, "a.example", "587", "a2", &e,
	    NULL, NULL, err, sizeof(err)), 0);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->file, f2);
	cr_expect_eq(e->line, 1);
	authinfo_entry_free(e);

	cr_assert_eq(authinfo_lookup(files, 3, "b.example", "submission",
	    NULL, &e, NULL, NULL, err, sizeof(err)), 0);
	cr_assert_not_null(e);
	cr_expect_eq(e->line, 2);
	cr_expect_str_eq(e->password, "pb2");
	authinfo_entry_free(e);

	cr_assert_eq(authinfo_lookup(files, 3, "c.example", "587", NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0);
	cr_expect_null(e);
}

Test(match, entry_without_password_is_passed_over)
{
	struct authinfo *ai = parse_str(
	    "machine a.example login first\n"
	    "default login dflt\n"
	    "machine a.example login second password p2\n"
	    "machine b.example login only\n", NULL);
	const struct authinfo_entry *e;

	e = authinfo_match(ai, "a.example", "587", NULL);
	cr_assert_not_null(e);
	cr_expect_eq(e->line, 3);
	/* asking for a login only that login's entries count */
	e = authinfo_match(ai, "a.example", "587", "first");
	cr_assert_not_null(e);
	cr_expect_eq(e->line, 1);
	cr_expect_null(e->password);
	/* no match with a password: the first match, to name it */
	e = authinfo_match(ai, "b.example", "587", NULL);
	cr_assert_not_null(e);
	cr_expect_eq(e->line, 2);
	authinfo_free(ai);
}

Test(lookup, password_in_a_later_file_beats_none_in_an_earlier)
{
	const char *files[3];
	struct authinfo_entry *e = NULL;
	char err[512];

	files[0] = put_file("one", "machine a.example login u\n", 0600);
	files[1] = put_file("two", "machine b.example login v\n", 0600);
	files[2] = put_file("three", "default login u password p3\n", 0600);
	cr_assert_eq(authinfo_lookup(files, 3, "a.example", "587", NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->file, files[2]);
	cr_expect_str_eq(e->password, "p3");
	authinfo_entry_free(e);
	/* without one anywhere, the first match names the file to fix */
	cr_assert_eq(authinfo_lookup(files, 2, "b.example", "587", NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->file, files[1]);
	cr_expect_null(e->password);
	authinfo_entry_free(e);
	/* a refused file after a match without a password: the answer
	 * might be in it */
	files[1] = put_file("two", "machine a.example password x\n", 0644);
	cr_expect_eq(authinfo_lookup(files, 3, "a.example", "587", NULL, &e,
	    NULL, NULL, err, sizeof(err)), -1);
	cr_expect_null(e);
}

Test(lookup, refused_file_before_a_match_fails)
{
	char f1[600], f2[600], err[1024] = "";
	const char *files[2];
	struct authinfo_entry *e = (struct authinfo_entry *)1;

	snprintf(f1, sizeof(f1), "%s", put_file("one", "machine a.example "
	    "login a1 password pa1\n", 0600));
	snprintf(f2, sizeof(f2), "%s", put_file("two", "machine b.example "
	    "login b password pb\n", 0644));
	files[0] = f1;
	files[1] = f2;
	/* Found in the first file: the second is never read. */
	cr_assert_eq(authinfo_lookup(files, 2, "a.example", "25", NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0);
	cr_assert_not_null(e);
	authinfo_entry_free(e);
	/* Not in the first: the answer depends on the refused file. */
	cr_expect_eq(authinfo_lookup(files, 2, "b.example", "25", NULL, &e,
	    NULL, NULL, err, sizeof(err)), -1);
	cr_expect_null(e);
	cr_expect(strstr(err, "chmod 600") != NULL, "%s", err);
}

/* ---- cache ---- */

TestSuite(cache, .init = tmp_setup, .fini = tmp_teardown);

static void
rewrite(const char *path, const char *content)
{
	char tmp[600];
	int fd;

	/* Replace the file as editors do: new inode, rename over. */
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	cr_assert_neq(fd, -1);
	cr_assert_eq(write(fd, content, strlen(content)),
	    (ssize_t)strlen(content));
	close(fd);
	cr_assert_eq(rename(tmp, path), 0);
}

Test(cache, rereads_on_change_and_reports_warnings_once)
{
	struct authinfo_cache *c = authinfo_cache_new();
	struct authinfo_entry *e;
	struct warns w;
	char path[600], err[1024] = "";
	const char *files[1];
	unsigned long g0, g1, g2;

	memset(&w, 0, sizeof(w));
	snprintf(path, sizeof(path), "%s", put_file("authinfo", "machine "
	    "h login u password old\nmachine broken login\n", 0600));
	files[0] = path;
	g0 = authinfo_cache_generation(c);
	cr_assert_eq(authinfo_cache_lookup(c, files, 1, "h", "587", NULL, &e,
	    collect, &w, err, sizeof(err)), 0, "%s", err);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->password, "old");
	authinfo_entry_free(e);
	cr_expect_eq(w.n, 1);
	g1 = authinfo_cache_generation(c);
	cr_expect_gt(g1, g0);

	/* Unchanged: no re-read, no new warning, same generation. */
	cr_assert_eq(authinfo_cache_lookup(c, files, 1, "h", "587", NULL, &e,
	    collect, &w, err, sizeof(err)), 0);
	cr_assert_not_null(e);
	authinfo_entry_free(e);
	cr_expect_eq(w.n, 1);
	cr_expect_eq(authinfo_cache_generation(c), g1);

	rewrite(path, "machine h login u password new\n");
	cr_assert_eq(authinfo_cache_lookup(c, files, 1, "h", "587", NULL, &e,
	    collect, &w, err, sizeof(err)), 0);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->password, "new");
	authinfo_entry_free(e);
	g2 = authinfo_cache_generation(c);
	cr_expect_gt(g2, g1);

	/* Same size, new inode: still noticed. */
	rewrite(path, "machine h login u password NEW\n");
	cr_assert_eq(authinfo_cache_lookup(c, files, 1, "h", "587", NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->password, "NEW");
	authinfo_entry_free(e);
	authinfo_cache_free(c);
}

Test(cache, chmod_refuses_then_fix_accepts)
{
	struct authinfo_cache *c = authinfo_cache_new();
	struct authinfo_entry *e;
	char path[600], err[1024] = "";
	const char *files[1];

	snprintf(path, sizeof(path), "%s", put_file("authinfo", "machine "
	    "h login u password p\n", 0600));
	files[0] = path;
	cr_assert_eq(authinfo_cache_lookup(c, files, 1, "h", NULL, NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0);
	authinfo_entry_free(e);

	cr_assert_eq(chmod(path, 0644), 0);
	cr_expect_eq(authinfo_cache_lookup(c, files, 1, "h", NULL, NULL, &e,
	    NULL, NULL, err, sizeof(err)), -1);
	cr_expect_null(e);
	cr_expect(strstr(err, "chmod 600") != NULL, "%s", err);
	/* The error stays while the file does not change. */
	err[0] = '\0';
	cr_expect_eq(authinfo_cache_lookup(c, files, 1, "h", NULL, NULL, &e,
	    NULL, NULL, err, sizeof(err)), -1);
	cr_expect(strstr(err, "chmod 600") != NULL, "%s", err);

	cr_assert_eq(chmod(path, 0600), 0);
	cr_expect_eq(authinfo_cache_lookup(c, files, 1, "h", NULL, NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0, "%s", err);
	cr_expect_not_null(e);
	authinfo_entry_free(e);
	authinfo_cache_free(c);
}

Test(cache, vanishing_and_flush)
{
	struct authinfo_cache *c = authinfo_cache_new();
	struct authinfo_entry *e;
	char path[600], err[1024] = "";
	const char *files[1];
	unsigned long g;

	snprintf(path, sizeof(path), "%s", put_file("authinfo", "machine "
	    "h login u password p\n", 0600));
	files[0] = path;
	cr_assert_eq(authinfo_cache_lookup(c, files, 1, "h", NULL, NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0);
	cr_assert_not_null(e);
	authinfo_entry_free(e);
	g = authinfo_cache_generation(c);

	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(authinfo_cache_lookup(c, files, 1, "h", NULL, NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0);
	cr_expect_null(e);
	cr_expect_gt(authinfo_cache_generation(c), g);

	put_file("authinfo", "machine h login u2 password p2\n", 0600);
	g = authinfo_cache_generation(c);
	authinfo_cache_flush(c);
	cr_expect_gt(authinfo_cache_generation(c), g);
	cr_assert_eq(authinfo_cache_lookup(c, files, 1, "h", NULL, NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->login, "u2");
	authinfo_entry_free(e);
	authinfo_cache_free(c);
	authinfo_cache_free(NULL);
}

Test(cache, same_size_rewrite_with_restored_mtime_is_noticed)
{
	struct authinfo_cache *c = authinfo_cache_new();
	struct authinfo_entry *e;
	struct timespec times[2];
	struct stat st;
	char path[600], err[1024] = "";
	const char *files[1];
	int fd;

	snprintf(path, sizeof(path), "%s", put_file("authinfo", "machine "
	    "h login u password aaaa\n", 0600));
	files[0] = path;
	cr_assert_eq(authinfo_cache_lookup(c, files, 1, "h", NULL, NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0);
	cr_assert_not_null(e);
	authinfo_entry_free(e);
	cr_assert_eq(stat(path, &st), 0);

	/* Same inode, same size, and the old mtime put back (as some sync
	 * tools do): only the ctime tells. */
	fd = open(path, O_WRONLY);
	cr_assert_neq(fd, -1);
	cr_assert_eq(pwrite(fd, "bbbb", 4, 27), 4);
	close(fd);
	times[0] = st.st_atim;
	times[1] = st.st_mtim;
	cr_assert_eq(utimensat(AT_FDCWD, path, times, 0), 0);
	cr_assert_eq(authinfo_cache_lookup(c, files, 1, "h", NULL, NULL, &e,
	    NULL, NULL, err, sizeof(err)), 0);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->password, "bbbb");
	authinfo_entry_free(e);
	authinfo_cache_free(c);
}

Test(cache, password_in_a_later_file_beats_none_in_an_earlier)
{
	struct authinfo_cache *c = authinfo_cache_new();
	struct authinfo_entry *e = NULL;
	const char *files[2];
	char err[512];

	files[0] = put_file("one", "machine a.example login u\n", 0600);
	files[1] = put_file("two", "machine a.example login u password p\n",
	    0600);
	cr_assert_eq(authinfo_cache_lookup(c, files, 2, "a.example", "587",
	    "u", &e, NULL, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_not_null(e);
	cr_expect_str_eq(e->file, files[1]);
	cr_expect_str_eq(e->password, "p");
	authinfo_entry_free(e);
	authinfo_cache_free(c);
}
