/*
 * authinfo / netrc credentials: a pure parser over a buffer (tokens, key
 * and value pairs, entries), the smtpmail-style matcher, the file reader
 * with its ownership and mode checks, and a cache keyed on the file's
 * identity. The header states the grammar and the lookup rules.
 *
 * Invariants: every token and every value we hold may be a secret, so each
 * is wiped before it is freed, whatever its key; warnings never quote a
 * token, only keywords; the file's raw bytes are wiped after parsing.
 *
 * Where we differ from Emacs 28's auth-source.el, on purpose:
 *
 *   input                        Emacs 28                 here
 *   ---------------------------  -----------------------  ------------------
 *   host a ... / host b ...      one entry (last wins)    two entries
 *   MACHINE a login x ...        entry without machine:   entry for host a
 *                                matches every host
 *   password "pa\"ss"            pa\ then a stray ss"     pa"ss (\" and \\)
 *   password #x (bare #)         comment; value is the    comment; warning,
 *                                next line's first token  no value
 *   key at the end of a line     value from next line     warning, no value
 *   login x before any machine   entry matching any host  ignored, warning
 *   "abc  (no closing quote,     runs on to that later "  "abc, literally,
 *   a later " in the file)       across lines             with a warning
 *   password machine             error: lookup fails      warning, no value,
 *                                                         machine starts an
 *                                                         entry
 *   macdef NAME + body           body read as pairs       body skipped
 *   host SMTP.Example.com        literal compare          case-insensitive
 *   port submission vs 587       literal compare          587 = submission
 *   password "a<CR>b"            a<LF>b                   a<CR>b
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <sys/stat.h>
#include <sys/types.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "authinfo.h"
#include "xmalloc.h"

struct authinfo {
	struct authinfo_entry *entries;
	size_t n;
	size_t cap;
};

/* ---- tokens ---- */

enum tok_status {
	TOK_OK,
	TOK_EOL,        /* end of line, nothing more */
	TOK_COMMENT,    /* a '#' where a token could start: rest is comment */
	TOK_ERR_GLUED,  /* text right after a closing quote */
	TOK_ERR_NUL,    /* a NUL byte */
};

struct tok {
	char *text;   /* NUL-terminated copy, unescaped; wiped on free */
	size_t len;
	int quoted;
	int unclosed; /* a bare token that starts with a quote (no close) */
};

static int
is_blank(char c)
{
	/* CR counts as a blank so that CRLF files and stray CRs parse. */
	return c == ' ' || c == '\t' || c == '\r';
}

static void
tok_clear(struct tok *t)
{
	if (t->text != NULL)
		xfree_secret(t->text, t->len);
	t->text = NULL;
	t->len = 0;
	t->quoted = 0;
	t->unclosed = 0;
}

/*
 * Reads the next token of the line [*pp, end). Single quotes take every
 * byte literally up to the next single quote; double quotes do the same
 * except that \" and \\ stand for " and \ (the escapes Emacs writes with
 * %S). A quoted token must be followed by a blank, a comment or the end
 * of the line. A quote that does not close on its line opens no quoted
 * token: the token is bare, quote included (t->unclosed is set), which is
 * how Emacs reads it when no matching quote follows in the file.
 */
static enum tok_status
tok_next(const char **pp, const char *end, struct tok *t)
{
	const char *p = *pp, *s;
	size_t n;

	tok_clear(t);
	while (p < end && is_blank(*p))
		p++;
	*pp = p;
	if (p == end)
		return TOK_EOL;
	if (*p == '#') {
		*pp = end;
		return TOK_COMMENT;
	}
	if (*p == '\'' || *p == '"') {
		char q = *p++;
		char *o;

		for (s = p; s < end && *s != q; s++) {
			if (*s == '\0')
				return TOK_ERR_NUL;
			if (q == '"' && *s == '\\' && s + 1 < end &&
			    (s[1] == '"' || s[1] == '\\'))
				s++;
		}
		if (s == end) {
			p--;
			t->unclosed = 1;
			goto bare;
		}
		t->text = o = xmalloc((size_t)(s - p) + 1);
		for (; p < s; p++) {
			if (q == '"' && *p == '\\' && p + 1 < s &&
			    (p[1] == '"' || p[1] == '\\'))
				p++;
			*o++ = *p;
		}
		*o = '\0';
		t->len = (size_t)(o - t->text);
		t->quoted = 1;
		p = s + 1;
		*pp = p;
		if (p < end && !is_blank(*p) && *p != '#') {
			tok_clear(t);
			return TOK_ERR_GLUED;
		}
		return TOK_OK;
	}
bare:
	for (s = p; s < end && !is_blank(*s); s++)
		if (*s == '\0')
			return TOK_ERR_NUL;
	n = (size_t)(s - p);
	t->text = xstrndup(p, n);
	t->len = n;
	*pp = s;
	return TOK_OK;
}

/* ---- keys ---- */

enum ai_key {
	K_MACHINE,
	K_DEFAULT,
	K_LOGIN,
	K_PASSWORD,
	K_PORT,
	K_SMTP_AUTH,
	K_MACDEF,
	K_UNKNOWN,
};

static const struct {
	const char *word;
	enum ai_key key;
} ai_keywords[] = {
	{ "machine", K_MACHINE },
	{ "host", K_MACHINE },
	{ "default", K_DEFAULT },
	{ "login", K_LOGIN },
	{ "account", K_LOGIN },
	{ "user", K_LOGIN },
	{ "password", K_PASSWORD },
	{ "secret", K_PASSWORD },
	{ "port", K_PORT },
	{ "protocol", K_PORT },
	{ "smtp-auth", K_SMTP_AUTH },
	{ "macdef", K_MACDEF },
};

/* Looks a key token up; *word gets the keyword's own (lowercase) spelling
 * for warnings, so a warning never quotes file text. */
static enum ai_key
key_lookup(const struct tok *t, const char **word)
{
	size_t i;

	for (i = 0; i < sizeof(ai_keywords) / sizeof(ai_keywords[0]); i++)
		if (strcasecmp(t->text, ai_keywords[i].word) == 0) {
			*word = ai_keywords[i].word;
			return ai_keywords[i].key;
		}
	*word = "an unknown key";
	return K_UNKNOWN;
}

/* ---- parser ---- */

struct parser {
	struct authinfo *ai;
	const char *name;
	authinfo_warn_fn *warn;
	void *arg;
	unsigned lineno;
	int have_entry;     /* ai->entries[ai->n - 1] is the current entry */
	unsigned seen;      /* bit per enum ai_key set in the current entry */
	int outside_warned; /* warned about keys outside an entry this line */
};

static void parse_warn(struct parser *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

static void
parse_warn(struct parser *ps, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	if (ps->warn == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ps->warn(ps->name, ps->lineno, msg, ps->arg);
}

static struct authinfo_entry *
entry_start(struct parser *ps, int is_default)
{
	struct authinfo *ai = ps->ai;
	struct authinfo_entry *e;

	if (ai->n == ai->cap) {
		ai->cap = ai->cap ? ai->cap * 2 : 8;
		ai->entries = xreallocarray(ai->entries, ai->cap,
		    sizeof(*ai->entries));
	}
	e = &ai->entries[ai->n++];
	memset(e, 0, sizeof(*e));
	e->file = xstrdup(ps->name);
	e->line = ps->lineno;
	e->is_default = is_default;
	ps->have_entry = 1;
	ps->seen = 0;
	return e;
}

static void
entry_clear(struct authinfo_entry *e)
{
	/* Only the password is meant to be secret, but a misplaced token
	 * can land in any field: wipe them all. */
	free(e->file);
	xfree_secret_str(e->host);
	xfree_secret_str(e->port);
	xfree_secret_str(e->login);
	xfree_secret_str(e->password);
	xfree_secret_str(e->smtp_auth);
	memset(e, 0, sizeof(*e));
}

/* Stores the value of key (login, password, port, smtp-auth) in the
 * current entry, taking ownership of v's text. */
static void
entry_set(struct parser *ps, enum ai_key key, const char *word,
    struct tok *v)
{
	struct authinfo_entry *e;
	char **slot = NULL;

	if (!ps->have_entry) {
		if (!ps->outside_warned)
			parse_warn(ps, "%s before the first machine, host or "
			    "default entry is ignored", word);
		ps->outside_warned = 1;
		tok_clear(v);
		return;
	}
	e = &ps->ai->entries[ps->ai->n - 1];
	switch (key) {
	case K_LOGIN:
		slot = &e->login;
		break;
	case K_PASSWORD:
		slot = &e->password;
		break;
	case K_PORT:
		slot = &e->port;
		break;
	case K_SMTP_AUTH:
		slot = &e->smtp_auth;
		break;
	case K_MACHINE:
	case K_DEFAULT:
	case K_MACDEF:
	case K_UNKNOWN:
		tok_clear(v);
		return;
	}
	if (ps->seen & (1u << key))
		parse_warn(ps, "%s given twice in the entry of line %u; "
		    "the last one wins", word, e->line);
	ps->seen |= 1u << key;
	if (*slot != NULL)
		xfree_secret_str(*slot);
	*slot = v->text;
	v->text = NULL;
	v->len = 0;
}

static const char *
tok_error(enum tok_status st)
{
	switch (st) {
	case TOK_ERR_GLUED:
		return "text right after a closing quote";
	case TOK_ERR_NUL:
		return "a NUL byte";
	case TOK_OK:
	case TOK_EOL:
	case TOK_COMMENT:
		break;
	}
	return "a syntax error";
}

/* tok_next, with a warning for a token that starts with a quote that
 * never closes: a typo as often as a password that starts with a quote. */
static enum tok_status
parse_token(struct parser *ps, const char **pp, const char *end,
    struct tok *t)
{
	enum tok_status st = tok_next(pp, end, t);

	if (st == TOK_OK && t->unclosed)
		parse_warn(ps, "a value starts with a quote that does not "
		    "close on its line; it is taken literally, quote "
		    "included");
	return st;
}

/* Parses one line [p, end) without its line end. Returns 1 when the line
 * starts a macdef body, else 0. */
static int
parse_line(struct parser *ps, const char *p, const char *end)
{
	struct tok t = { NULL, 0, 0, 0 }, v = { NULL, 0, 0, 0 };
	enum tok_status st;
	enum ai_key key;
	const char *word;
	int macdef = 0, have_tok = 0;

	ps->outside_warned = 0;
	for (;;) {
		if (!have_tok) {
			st = parse_token(ps, &p, end, &t);
			if (st == TOK_EOL || st == TOK_COMMENT)
				break;
			if (st != TOK_OK) {
				parse_warn(ps, "%s; the rest of the line is "
				    "ignored", tok_error(st));
				break;
			}
		}
		have_tok = 0;
		key = key_lookup(&t, &word);
		if (key == K_DEFAULT) {
			entry_start(ps, 1);
			continue;
		}
		if (key == K_MACDEF) {
			/* The macro body starts on the next line; the
			 * rest of this one is the macro's name. */
			macdef = 1;
			break;
		}
		st = parse_token(ps, &p, end, &v);
		if (st == TOK_OK && !v.quoted &&
		    strcmp(v.text, "machine") == 0) {
			/* Emacs refuses the whole file here; we take it as
			 * a key whose value is missing. */
			parse_warn(ps, "%s has no value before \"machine\"",
			    word);
			tok_clear(&t);
			t = v;
			v.text = NULL;
			v.len = 0;
			have_tok = 1;
			continue;
		}
		if (st != TOK_OK) {
			if (st == TOK_COMMENT)
				parse_warn(ps, "%s has no value before the "
				    "comment (quote a value that starts with "
				    "#)", word);
			else if (st == TOK_EOL)
				parse_warn(ps, "%s has no value on its line",
				    word);
			else
				parse_warn(ps, "%s; the rest of the line is "
				    "ignored", tok_error(st));
			/* A bare "machine" still opens an entry, so that
			 * the keys after it do not land in the previous
			 * one; with no host it matches nothing. */
			if (key == K_MACHINE)
				entry_start(ps, 0);
			break;
		}
		if (key == K_MACHINE) {
			struct authinfo_entry *e = entry_start(ps, 0);

			e->host = v.text;
			v.text = NULL;
			v.len = 0;
		} else
			entry_set(ps, key, word, &v);
		tok_clear(&v);
	}
	tok_clear(&t);
	tok_clear(&v);
	return macdef;
}

static int
line_is_blank(const char *p, const char *end)
{
	for (; p < end; p++)
		if (!is_blank(*p))
			return 0;
	return 1;
}

struct authinfo *
authinfo_parse(const char *buf, size_t len, const char *name,
    authinfo_warn_fn *warn, void *arg)
{
	struct parser ps;
	const char *p = buf, *end = buf + len, *eol, *le;
	int in_macdef = 0;

	memset(&ps, 0, sizeof(ps));
	ps.ai = xcalloc(1, sizeof(*ps.ai));
	ps.name = name != NULL ? name : "<authinfo>";
	ps.warn = warn;
	ps.arg = arg;
	/* A UTF-8 byte order mark, as Windows editors write: Emacs decodes
	 * the file as utf-8-with-signature and never sees it. */
	if (len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0)
		p += 3;
	while (p < end) {
		ps.lineno++;
		eol = memchr(p, '\n', (size_t)(end - p));
		le = eol != NULL ? eol : end;
		if (in_macdef) {
			if (line_is_blank(p, le))
				in_macdef = 0;
		} else
			in_macdef = parse_line(&ps, p, le);
		p = eol != NULL ? eol + 1 : end;
	}
	return ps.ai;
}

void
authinfo_free(struct authinfo *ai)
{
	size_t i;

	if (ai == NULL)
		return;
	for (i = 0; i < ai->n; i++)
		entry_clear(&ai->entries[i]);
	free(ai->entries);
	free(ai);
}

size_t
authinfo_count(const struct authinfo *ai)
{
	return ai->n;
}

const struct authinfo_entry *
authinfo_get(const struct authinfo *ai, size_t i)
{
	return i < ai->n ? &ai->entries[i] : NULL;
}

/* ---- matching ---- */

static const struct {
	const char *name;
	int port;
} ai_services[] = {
	{ "smtp", 25 },
	{ "submission", 587 },
	{ "submissions", 465 },
	{ "smtps", 465 },
	{ "ssmtp", 465 },
};

int
authinfo_port_number(const char *port)
{
	const char *p;
	long v = 0;
	size_t i;

	if (port == NULL || *port == '\0')
		return -1;
	for (p = port; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (*p - '0');
		if (v > 65535)
			return -1;
	}
	if (*p == '\0')
		return v > 0 ? (int)v : -1;
	for (i = 0; i < sizeof(ai_services) / sizeof(ai_services[0]); i++)
		if (strcasecmp(port, ai_services[i].name) == 0)
			return ai_services[i].port;
	return -1;
}

static int
port_matches(const char *have, const char *want)
{
	int a, b;

	if (have == NULL || want == NULL)
		return 1;
	a = authinfo_port_number(have);
	b = authinfo_port_number(want);
	if (a > 0 && b > 0)
		return a == b;
	return strcasecmp(have, want) == 0;
}

int
authinfo_entry_matches(const struct authinfo_entry *e, const char *host,
    const char *port, const char *user)
{
	if (!e->is_default &&
	    (e->host == NULL || host == NULL || strcasecmp(e->host, host) != 0))
		return 0;
	if (!port_matches(e->port, port))
		return 0;
	/* As auth-source: an entry without a login matches any user. */
	if (user != NULL && *user != '\0' && e->login != NULL &&
	    strcmp(e->login, user) != 0)
		return 0;
	return 1;
}

const struct authinfo_entry *
authinfo_match(const struct authinfo *ai, const char *host, const char *port,
    const char *user)
{
	const struct authinfo_entry *first = NULL;
	size_t i;

	for (i = 0; i < ai->n; i++) {
		if (!authinfo_entry_matches(&ai->entries[i], host, port, user))
			continue;
		if (ai->entries[i].password != NULL)
			return &ai->entries[i];
		if (first == NULL)
			first = &ai->entries[i];
	}
	return first;
}

int
authinfo_entry_complete(const struct authinfo_entry *e)
{
	return e != NULL && e->password != NULL;
}

void
authinfo_entry_prefer(struct authinfo_entry **best,
    struct authinfo_entry *cand)
{
	if (cand == NULL)
		return;
	if (*best == NULL || ((*best)->password == NULL &&
	    cand->password != NULL)) {
		authinfo_entry_free(*best);
		*best = cand;
	} else
		authinfo_entry_free(cand);
}

int
authinfo_is_gpg_token(const char *password)
{
	return password != NULL && strncmp(password, "gpg:", 4) == 0;
}

static char *
strdup_or_null(const char *s)
{
	return s != NULL ? xstrdup(s) : NULL;
}

struct authinfo_entry *
authinfo_entry_dup(const struct authinfo_entry *e)
{
	struct authinfo_entry *d = xcalloc(1, sizeof(*d));

	d->file = strdup_or_null(e->file);
	d->line = e->line;
	d->is_default = e->is_default;
	d->host = strdup_or_null(e->host);
	d->port = strdup_or_null(e->port);
	d->login = strdup_or_null(e->login);
	d->password = strdup_or_null(e->password);
	d->smtp_auth = strdup_or_null(e->smtp_auth);
	return d;
}

void
authinfo_entry_free(struct authinfo_entry *e)
{
	if (e == NULL)
		return;
	entry_clear(e);
	free(e);
}

/* ---- writing a value back ---- */

char *
authinfo_quote(const char *value)
{
	const char *p;
	int bare = 1, squote = 0, dquote = 0, bad_backslash = 0;
	size_t i;

	if (*value == '\0')
		return xstrdup("\"\"");
	for (p = value; *p != '\0'; p++) {
		if (*p == '\n' || *p == '\r')
			return NULL;
		if (*p == ' ' || *p == '\t' || *p == '#')
			bare = 0;
		if (*p == '\'')
			squote = 1;
		if (*p == '"')
			dquote = 1;
		/* Inside double quotes we read \\ and \" as escapes and
		 * Emacs does not; a backslash before a backslash or at the
		 * end (before the closing quote) would differ. */
		if (*p == '\\' && (p[1] == '\\' || p[1] == '\0'))
			bad_backslash = 1;
	}
	if (value[0] == '\'' || value[0] == '"')
		bare = 0;
	/* A bare keyword would be read as one (and "machine" breaks
	 * Emacs), so quote those too. */
	for (i = 0; bare && i < sizeof(ai_keywords) / sizeof(ai_keywords[0]);
	    i++)
		if (strcasecmp(value, ai_keywords[i].word) == 0)
			bare = 0;
	if (bare)
		return xstrdup(value);
	if (!squote)
		return xasprintf("'%s'", value);
	if (!dquote && !bad_backslash)
		return xasprintf("\"%s\"", value);
	return NULL;
}

/* ---- files ---- */

/* Appends s to buf, in single quotes when a shell would split or expand
 * it, so that a "fix it with" command can be pasted as is. */
static void
shell_word(char *buf, size_t size, const char *s)
{
	size_t n = strlen(buf);
	const char *p;
	int plain = *s != '\0';

	static const char safe[] = "abcdefghijklmnopqrstuvwxyz"
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@%:,=~";

	for (p = s; *p != '\0'; p++)
		if (strchr(safe, *p) == NULL || (p == s && *p == '~'))
			plain = 0;
	if (plain) {
		snprintf(buf + n, size - n, "%s", s);
		return;
	}
	if (n + 1 < size)
		buf[n++] = '\'';
	for (p = s; *p != '\0' && n + 5 < size; p++) {
		if (*p == '\'') {
			memcpy(buf + n, "'\\''", 4);
			n += 4;
		} else
			buf[n++] = *p;
	}
	if (n + 1 < size)
		buf[n++] = '\'';
	buf[n < size ? n : size - 1] = '\0';
}

static void
euid_name(char *buf, size_t size)
{
	struct passwd pw, *res = NULL;
	char tmp[1024];
	uid_t uid = geteuid();

	if (getpwuid_r(uid, &pw, tmp, sizeof(tmp), &res) == 0 && res != NULL)
		snprintf(buf, size, "%s", res->pw_name);
	else
		snprintf(buf, size, "%u", (unsigned)uid);
}

/*
 * Refuses what a credentials file must not be: path was opened, st is the
 * opened file's stat, real the file's resolved name when it differs from
 * path (a symbolic link, a relative path; else NULL). Returns 0 or -1 with err set; the
 * message ends with the command that fixes the problem, and that command
 * names the real file: a chown or chmod of the link's name would act on
 * whatever the link points to by the time the administrator runs it.
 */
static int
file_check(const char *path, const char *real, const struct stat *st,
    char *err, size_t errlen)
{
	char who[256], fix[1024], name[PATH_MAX + 64];
	const char *target = real != NULL ? real : path;
	int bad_owner, bad_mode;

	if (real != NULL)
		snprintf(name, sizeof(name), "%s (that is, %s)", path,
		    real);
	else
		snprintf(name, sizeof(name), "%s", path);
	if (!S_ISREG(st->st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", name);
		return -1;
	}
	bad_owner = st->st_uid != geteuid();
	bad_mode = (st->st_mode & (S_IRWXG | S_IRWXO)) != 0;
	if (!bad_owner && !bad_mode)
		return 0;
	euid_name(who, sizeof(who));
	fix[0] = '\0';
	if (bad_owner) {
		snprintf(fix, sizeof(fix), "chown ");
		shell_word(fix, sizeof(fix), who);
		snprintf(fix + strlen(fix), sizeof(fix) - strlen(fix), " ");
		shell_word(fix, sizeof(fix), target);
		if (bad_mode)
			snprintf(fix + strlen(fix), sizeof(fix) - strlen(fix),
			    " && ");
	}
	if (bad_mode) {
		snprintf(fix + strlen(fix), sizeof(fix) - strlen(fix),
		    "chmod 600 ");
		shell_word(fix, sizeof(fix), target);
	}
	if (bad_owner && bad_mode)
		snprintf(err, errlen, "%s: owned by uid %u, not by %s, and "
		    "open to group or others (mode %04o); refused, fix it "
		    "with: %s", name, (unsigned)st->st_uid, who,
		    (unsigned)(st->st_mode & 07777), fix);
	else if (bad_owner)
		snprintf(err, errlen, "%s: owned by uid %u, not by %s; "
		    "refused, fix it with: %s", name, (unsigned)st->st_uid,
		    who, fix);
	else
		snprintf(err, errlen, "%s: readable or writable by group or "
		    "others (mode %04o); refused, fix it with: %s", name,
		    (unsigned)(st->st_mode & 07777), fix);
	return -1;
}

/*
 * A symbolic link at path itself must belong to us or to root: anyone
 * else who owns it decides which of our files we read as credentials.
 * Returns 0, or -1 with err set.
 */
static int
link_check(const char *path, char *err, size_t errlen)
{
	struct stat lst;
	char who[256];

	if (lstat(path, &lst) == -1 || !S_ISLNK(lst.st_mode))
		return 0;
	if (lst.st_uid == geteuid() || lst.st_uid == 0)
		return 0;
	euid_name(who, sizeof(who));
	snprintf(err, errlen, "%s: a symbolic link owned by uid %u, not by %s "
	    "or root; refused (replace it with the file itself or a link of "
	    "your own)", path, (unsigned)lst.st_uid, who);
	return -1;
}

/*
 * The resolved name of the opened file when path is not already it, for
 * file_check()'s messages; NULL otherwise. Freed by the caller.
 */
static char *
file_real_name(const char *path)
{
	char *real = realpath(path, NULL);

	if (real != NULL && strcmp(real, path) == 0) {
		free(real);
		real = NULL;
	}
	return real;
}

/*
 * Opens, checks, reads and parses path. Returns 0 with *out (NULL when the
 * file does not exist) and the opened file's stat in *st, or -1 with err.
 */
static int
file_load(const char *path, struct authinfo **out, struct stat *st,
    authinfo_warn_fn *warn, void *arg, char *err, size_t errlen)
{
	char *buf = NULL, *real;
	size_t cap = 0, len = 0;
	ssize_t r;
	int fd, ret = -1;

	*out = NULL;
	memset(st, 0, sizeof(*st));
	/* O_NONBLOCK: a FIFO planted at the path must not hang us; it is
	 * refused as not a regular file anyway. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd == -1) {
		if (errno == ENOENT || errno == ENOTDIR)
			return 0;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, st) == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto done;
	}
	if (link_check(path, err, errlen) == -1)
		goto done;
	real = file_real_name(path);
	r = file_check(path, real, st, err, errlen);
	free(real);
	if (r == -1)
		goto done;
	if (st->st_size > AUTHINFO_FILE_MAX)
		goto too_big;
	/* One byte more than the size, to see the file grow under us. */
	cap = (size_t)st->st_size + 1;
	buf = xmalloc(cap);
	for (;;) {
		if (len == cap) {
			if (cap > AUTHINFO_FILE_MAX)
				goto too_big;
			/* Grow through a fresh buffer: realloc could leave
			 * a copy of the secrets behind unwiped. */
			char *nbuf = xmalloc(cap * 2);

			memcpy(nbuf, buf, len);
			xfree_secret(buf, cap);
			buf = nbuf;
			cap *= 2;
		}
		r = read(fd, buf + len, cap - len);
		if (r == -1) {
			if (errno == EINTR)
				continue;
			snprintf(err, errlen, "%s: %s", path, strerror(errno));
			goto done;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	if (len > AUTHINFO_FILE_MAX)
		goto too_big;
	*out = authinfo_parse(buf, len, path, warn, arg);
	ret = 0;
	goto done;
too_big:
	snprintf(err, errlen, "%s: larger than %d bytes; refused (not an "
	    "authinfo file?)", path, AUTHINFO_FILE_MAX);
done:
	if (buf != NULL)
		xfree_secret(buf, cap);
	close(fd);
	return ret;
}

int
authinfo_read_file(const char *path, struct authinfo **out,
    authinfo_warn_fn *warn, void *arg, char *err, size_t errlen)
{
	struct stat st;

	return file_load(path, out, &st, warn, arg, err, errlen);
}

int
authinfo_lookup(const char *const *files, size_t nfiles, const char *host,
    const char *port, const char *user, struct authinfo_entry **out,
    authinfo_warn_fn *warn, void *arg, char *err, size_t errlen)
{
	struct authinfo *ai;
	const struct authinfo_entry *e;
	size_t i;

	*out = NULL;
	for (i = 0; i < nfiles && !authinfo_entry_complete(*out); i++) {
		if (authinfo_read_file(files[i], &ai, warn, arg, err,
		    errlen) == -1) {
			authinfo_entry_free(*out);
			*out = NULL;
			return -1;
		}
		if (ai == NULL)
			continue;
		if ((e = authinfo_match(ai, host, port, user)) != NULL)
			authinfo_entry_prefer(out, authinfo_entry_dup(e));
		authinfo_free(ai);
	}
	return 0;
}

/* ---- cache ---- */

enum cache_state {
	CF_UNKNOWN,  /* never looked at */
	CF_MISSING,  /* does not exist */
	CF_OK,       /* parsed */
	CF_ERROR,    /* refused or unreadable: error holds why */
};

struct cache_file {
	char *path;
	enum cache_state state;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtim;
	struct timespec ctim;
	mode_t mode;
	uid_t uid;
	struct authinfo *ai;
	char *error;
};

struct authinfo_cache {
	pthread_mutex_t mu;
	struct cache_file *files;
	size_t n;
	unsigned long generation;
};

struct authinfo_cache *
authinfo_cache_new(void)
{
	struct authinfo_cache *c = xcalloc(1, sizeof(*c));

	pthread_mutex_init(&c->mu, NULL);
	return c;
}

static void
cache_file_reset(struct cache_file *f)
{
	authinfo_free(f->ai);
	f->ai = NULL;
	free(f->error);
	f->error = NULL;
	f->state = CF_UNKNOWN;
}

void
authinfo_cache_flush(struct authinfo_cache *c)
{
	size_t i;

	pthread_mutex_lock(&c->mu);
	for (i = 0; i < c->n; i++) {
		cache_file_reset(&c->files[i]);
		free(c->files[i].path);
	}
	free(c->files);
	c->files = NULL;
	c->n = 0;
	c->generation++;
	pthread_mutex_unlock(&c->mu);
}

void
authinfo_cache_free(struct authinfo_cache *c)
{
	if (c == NULL)
		return;
	authinfo_cache_flush(c);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

unsigned long
authinfo_cache_generation(struct authinfo_cache *c)
{
	unsigned long g;

	pthread_mutex_lock(&c->mu);
	g = c->generation;
	pthread_mutex_unlock(&c->mu);
	return g;
}

static struct cache_file *
cache_get(struct authinfo_cache *c, const char *path)
{
	size_t i;

	for (i = 0; i < c->n; i++)
		if (strcmp(c->files[i].path, path) == 0)
			return &c->files[i];
	c->files = xreallocarray(c->files, c->n + 1, sizeof(*c->files));
	memset(&c->files[c->n], 0, sizeof(c->files[c->n]));
	c->files[c->n].path = xstrdup(path);
	c->files[c->n].state = CF_UNKNOWN;
	return &c->files[c->n++];
}

static int
same_identity(const struct cache_file *f, const struct stat *st)
{
	return f->dev == st->st_dev && f->ino == st->st_ino &&
	    f->size == st->st_size && f->mode == st->st_mode &&
	    f->uid == st->st_uid &&
	    f->mtim.tv_sec == st->st_mtim.tv_sec &&
	    f->mtim.tv_nsec == st->st_mtim.tv_nsec &&
	    f->ctim.tv_sec == st->st_ctim.tv_sec &&
	    f->ctim.tv_nsec == st->st_ctim.tv_nsec;
}

static void
remember_identity(struct cache_file *f, const struct stat *st)
{
	f->dev = st->st_dev;
	f->ino = st->st_ino;
	f->size = st->st_size;
	f->mode = st->st_mode;
	f->uid = st->st_uid;
	f->mtim = st->st_mtim;
	f->ctim = st->st_ctim;
}

/* Brings f up to date with the file system. Called with the lock held. */
static void
cache_refresh(struct authinfo_cache *c, struct cache_file *f,
    authinfo_warn_fn *warn, void *arg)
{
	struct stat st;
	char err[1024];

	if (stat(f->path, &st) == -1) {
		if (errno == ENOENT || errno == ENOTDIR) {
			if (f->state != CF_MISSING) {
				cache_file_reset(f);
				f->state = CF_MISSING;
				c->generation++;
			}
			return;
		}
		/* EACCES on a directory and the like: the open in
		 * file_load reports it in its own words, and a zero
		 * identity keeps us from re-reporting it every time. */
		memset(&st, 0, sizeof(st));
	}
	if ((f->state == CF_OK || f->state == CF_ERROR) &&
	    same_identity(f, &st))
		return;

	cache_file_reset(f);
	c->generation++;
	if (file_load(f->path, &f->ai, &st, warn, arg, err,
	    sizeof(err)) == -1) {
		f->state = CF_ERROR;
		f->error = xstrdup(err);
	} else if (f->ai == NULL) {
		f->state = CF_MISSING;
		return;
	} else
		f->state = CF_OK;
	remember_identity(f, &st);
}

int
authinfo_cache_lookup(struct authinfo_cache *c, const char *const *files,
    size_t nfiles, const char *host, const char *port, const char *user,
    struct authinfo_entry **out, authinfo_warn_fn *warn, void *arg,
    char *err, size_t errlen)
{
	const struct authinfo_entry *e;
	struct cache_file *f;
	size_t i;
	int ret = 0;

	*out = NULL;
	pthread_mutex_lock(&c->mu);
	for (i = 0; i < nfiles && !authinfo_entry_complete(*out); i++) {
		f = cache_get(c, files[i]);
		cache_refresh(c, f, warn, arg);
		if (f->state == CF_MISSING)
			continue;
		if (f->state == CF_ERROR) {
			snprintf(err, errlen, "%s", f->error);
			authinfo_entry_free(*out);
			*out = NULL;
			ret = -1;
			break;
		}
		if ((e = authinfo_match(f->ai, host, port, user)) != NULL)
			authinfo_entry_prefer(out, authinfo_entry_dup(e));
	}
	pthread_mutex_unlock(&c->mu);
	return ret;
}
