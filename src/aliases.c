/*
 * The aliases table: parsed once from text into entries (lower-cased name,
 * targets, line) plus an index sorted by name for look-ups. The table never
 * changes after parsing; a reload parses a new one. Expansion is a
 * depth-first walk that keeps the chain of names it is inside, which is
 * both the loop check and the text of the error.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aliases.h"
#include "smtp_proto.h"
#include "xmalloc.h"

struct alias_entry {
	char *name;
	char **targets;
	size_t ntargets;
	unsigned line;
};

struct aliases {
	struct alias_entry *entries;
	size_t n;
	size_t *index; /* entry numbers sorted by name */
};

struct parser {
	const char *name; /* file name for messages */
	unsigned line;    /* line of the entry being parsed */
	char *err;
	size_t errlen;
};

static int parse_fail(struct parser *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

static int
parse_fail(struct parser *p, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (p->err == NULL || p->errlen == 0)
		return -1;
	n = snprintf(p->err, p->errlen, "%s:%u: ", p->name, p->line);
	if (n < 0 || (size_t)n >= p->errlen)
		return -1;
	va_start(ap, fmt);
	vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

static int
is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static void
lower(char *s)
{
	for (; *s != '\0'; s++)
		*s = (char)tolower((unsigned char)*s);
}

/* Whether s (a local name or an address) has a syntax we can relay. */
static int
target_syntax_ok(const char *s)
{
	char *full;
	int ok;

	if (strchr(s, '@') != NULL)
		return smtp_mailbox_valid(s, 1);
	full = xasprintf("%s@localhost", s);
	ok = smtp_mailbox_valid(full, 1);
	free(full);
	return ok;
}

/* The text of a target as a local delivery agent would see it: the
 * content of a target that is one quoted string, else the target. */
static char *
target_unquoted(const char *t)
{
	size_t len = strlen(t), i;
	char *u, *o;

	if (len < 2 || t[0] != '"' || t[len - 1] != '"')
		return xstrdup(t);
	for (i = 1; i < len - 1; i++)
		if (t[i] == '\\')
			i++;
		else if (t[i] == '"')
			return xstrdup(t); /* "a"@b or "a""b": not one string */
	if (i != len - 1)
		return xstrdup(t);
	u = o = xmalloc(len);
	for (i = 1; i < len - 1; i++) {
		if (t[i] == '\\')
			i++;
		*o++ = t[i];
	}
	*o = '\0';
	return u;
}

/* Checks one target; 0 if it may be kept, -1 with the error written. */
static int
target_check(struct parser *p, const char *alias, const char *t)
{
	char *u = target_unquoted(t);
	int rc = -1;

	if (strncasecmp(u, ":include:", 9) == 0)
		parse_fail(p, "alias %s: \"%s\": :include: files are not "
		    "supported (smarthostd only relays; list the addresses "
		    "here)", alias, t);
	else if (u[0] == '|')
		parse_fail(p, "alias %s: \"%s\": delivery to a command is not "
		    "supported (smarthostd only relays)", alias, t);
	else if (u[0] == '/')
		parse_fail(p, "alias %s: \"%s\": delivery to a file is not "
		    "supported (smarthostd only relays)", alias, t);
	else if (u[0] == '\\')
		parse_fail(p, "alias %s: \"%s\": delivery to a local mailbox "
		    "is not supported (smarthostd only relays)", alias, t);
	else if (!target_syntax_ok(t))
		parse_fail(p, "alias %s: \"%s\" is not an address or a local "
		    "name", alias, t);
	else
		rc = 0;
	free(u);
	return rc;
}

/* Length of the quoted string at s (which starts with '"'), including
 * both quotes, or 0 when it does not close within len bytes. */
static size_t
quoted_len(const char *s, size_t len)
{
	size_t i;

	for (i = 1; i < len; i++) {
		if (s[i] == '\\')
			i++;
		else if (s[i] == '"')
			return i + 1;
	}
	return 0;
}

static char *
trimmed_dup(const char *s, size_t len)
{
	while (len > 0 && is_blank(*s)) {
		s++;
		len--;
	}
	while (len > 0 && is_blank(s[len - 1]))
		len--;
	return xstrndup(s, len);
}

/* Parses the name of a logical line; *pos is left after the ':'. */
static char *
entry_name(struct parser *p, const char *s, size_t len, size_t *pos)
{
	size_t i = 0, j, q;
	char *name, *u;

	if (s[0] == '"') {
		if ((q = quoted_len(s, len)) == 0) {
			parse_fail(p, "unterminated quoted alias name");
			return NULL;
		}
		i = q;
		while (i < len && is_blank(s[i]))
			i++;
		if (i == len || s[i] != ':') {
			parse_fail(p, "expected ':' after the alias name");
			return NULL;
		}
		u = xstrndup(s, q);
		name = target_unquoted(u);
		free(u);
	} else {
		while (i < len && s[i] != ':')
			i++;
		if (i == len) {
			parse_fail(p, "expected \"name: address, ...\" (no "
			    "':' on this line)");
			return NULL;
		}
		name = trimmed_dup(s, i);
		if (strpbrk(name, " \t\"") != NULL) {
			parse_fail(p, "alias name \"%s\" has blanks or quotes; "
			    "quote the whole name", name);
			free(name);
			return NULL;
		}
	}
	if (name[0] == '\0') {
		parse_fail(p, "empty alias name");
		free(name);
		return NULL;
	}
	for (j = 0; name[j] != '\0'; j++)
		if ((unsigned char)name[j] < 0x20 || name[j] == 0x7f) {
			parse_fail(p, "control character in alias name");
			free(name);
			return NULL;
		}
	lower(name);
	*pos = i + 1;
	return name;
}

/* Parses one logical line (continuations joined) into e. */
static int
entry_parse(struct parser *p, const char *s, size_t len,
    struct alias_entry *e)
{
	size_t pos, start, q;
	char *t;

	memset(e, 0, sizeof(*e));
	e->line = p->line;
	if ((e->name = entry_name(p, s, len, &pos)) == NULL)
		return -1;
	start = pos;
	while (pos <= len) {
		if (pos < len && s[pos] == '"') {
			if ((q = quoted_len(s + pos, len - pos)) == 0)
				return parse_fail(p, "alias %s: unterminated "
				    "quoted string", e->name);
			pos += q;
			continue;
		}
		if (pos < len && s[pos] != ',') {
			pos++;
			continue;
		}
		t = trimmed_dup(s + start, pos - start);
		if (t[0] == '\0') {
			free(t);
		} else {
			e->targets = xreallocarray(e->targets, e->ntargets + 1,
			    sizeof(*e->targets));
			e->targets[e->ntargets++] = t;
			if (target_check(p, e->name, t) == -1)
				return -1;
		}
		start = ++pos;
	}
	if (e->ntargets == 0)
		return parse_fail(p, "alias %s has no targets", e->name);
	return 0;
}

static void
entry_clear(struct alias_entry *e)
{
	aliases_list_free(e->targets, e->ntargets);
	free(e->name);
}

static int
index_cmp(const void *a, const void *b, void *arg)
{
	const struct aliases *al = arg;

	return strcmp(al->entries[*(const size_t *)a].name,
	    al->entries[*(const size_t *)b].name);
}

static struct alias_entry *
entry_find(const struct aliases *al, const char *name)
{
	size_t lo = 0, hi, mid;
	int c;

	if (al == NULL)
		return NULL;
	hi = al->n;
	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		c = strcasecmp(name, al->entries[al->index[mid]].name);
		if (c == 0)
			return &al->entries[al->index[mid]];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* Sorts the index and refuses a name given twice. */
static int
index_build(struct parser *p, struct aliases *al)
{
	size_t i;
	const struct alias_entry *a, *b;

	al->index = xcalloc(al->n + 1, sizeof(*al->index));
	for (i = 0; i < al->n; i++)
		al->index[i] = i;
	qsort_r(al->index, al->n, sizeof(*al->index), index_cmp, al);
	for (i = 1; i < al->n; i++) {
		a = &al->entries[al->index[i - 1]];
		b = &al->entries[al->index[i]];
		if (strcmp(a->name, b->name) != 0)
			continue;
		if (a->line > b->line) {
			const struct alias_entry *tmp = a;

			a = b;
			b = tmp;
		}
		p->line = b->line;
		return parse_fail(p, "alias %s given twice (first at line %u)",
		    b->name, a->line);
	}
	return 0;
}

/* Adds the logical line buf (blen bytes) to al. */
static int
aliases_add(struct parser *p, struct aliases *al, const char *buf,
    size_t blen)
{
	al->entries = xreallocarray(al->entries, al->n + 1,
	    sizeof(*al->entries));
	if (entry_parse(p, buf, blen, &al->entries[al->n]) == -1) {
		entry_clear(&al->entries[al->n]);
		return -1;
	}
	al->n++;
	return 0;
}

struct aliases *
aliases_parse(const char *text, size_t len, const char *name, char *err,
    size_t errlen)
{
	struct parser p = { name, 0, err, errlen };
	struct aliases *al = xcalloc(1, sizeof(*al));
	char *buf = xmalloc(len + 1);
	size_t pos = 0, blen = 0, llen, i;
	unsigned lineno = 0, entry_line = 0;
	const char *line, *nl;
	int have = 0;

	while (pos < len) {
		line = text + pos;
		nl = memchr(line, '\n', len - pos);
		llen = nl != NULL ? (size_t)(nl - line) : len - pos;
		pos += llen + (nl != NULL);
		if (llen > 0 && line[llen - 1] == '\r')
			llen--;
		lineno++;
		if (memchr(line, '\0', llen) != NULL) {
			p.line = lineno;
			parse_fail(&p, "NUL byte in line");
			goto fail;
		}
		for (i = 0; i < llen && is_blank(line[i]); i++)
			;
		if (i == llen || line[i] == '#')
			continue;
		if (i > 0) {
			if (!have) {
				p.line = lineno;
				parse_fail(&p, "continuation line (starting "
				    "with a blank) without an alias above");
				goto fail;
			}
			buf[blen++] = ' ';
			memcpy(buf + blen, line + i, llen - i);
			blen += llen - i;
			continue;
		}
		p.line = entry_line;
		if (have && aliases_add(&p, al, buf, blen) == -1)
			goto fail;
		memcpy(buf, line, llen);
		blen = llen;
		entry_line = lineno;
		have = 1;
	}
	p.line = entry_line;
	if (have && aliases_add(&p, al, buf, blen) == -1)
		goto fail;
	if (index_build(&p, al) == -1)
		goto fail;
	free(buf);
	return al;
fail:
	free(buf);
	aliases_free(al);
	return NULL;
}

struct aliases *
aliases_load(const char *path, char *err, size_t errlen)
{
	struct aliases *al = NULL;
	struct stat st;
	char *text = NULL;
	size_t len = 0;
	ssize_t r;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1 ||
	    fstat(fd, &st) == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > ALIASES_FILE_MAX) {
		snprintf(err, errlen, "%s: %s", path, S_ISREG(st.st_mode) ?
		    "file too large" : "not a regular file");
		goto out;
	}
	text = xmalloc((size_t)st.st_size + 1);
	while (len <= (size_t)st.st_size) {
		r = read(fd, text + len, (size_t)st.st_size + 1 - len);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			snprintf(err, errlen, "%s: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	if (len > (size_t)st.st_size) {
		snprintf(err, errlen, "%s: changed while being read", path);
		goto out;
	}
	al = aliases_parse(text, len, path, err, errlen);
out:
	if (fd != -1)
		close(fd);
	free(text);
	return al;
}

void
aliases_free(struct aliases *al)
{
	size_t i;

	if (al == NULL)
		return;
	for (i = 0; i < al->n; i++)
		entry_clear(&al->entries[i]);
	free(al->entries);
	free(al->index);
	free(al);
}

size_t
aliases_count(const struct aliases *al)
{
	return al != NULL ? al->n : 0;
}

const char *
aliases_name(const struct aliases *al, size_t i)
{
	return al->entries[i].name;
}

const char *const *
aliases_targets(const struct aliases *al, size_t i, size_t *ntargets)
{
	*ntargets = al->entries[i].ntargets;
	return (const char *const *)al->entries[i].targets;
}

unsigned
aliases_line(const struct aliases *al, size_t i)
{
	return al->entries[i].line;
}

const char *const *
aliases_lookup(const struct aliases *al, const char *name, size_t *ntargets)
{
	const struct alias_entry *e = entry_find(al, name);

	*ntargets = 0;
	if (e == NULL)
		return NULL;
	*ntargets = e->ntargets;
	return (const char *const *)e->targets;
}

/* ---- expansion ---- */

struct expansion {
	const struct aliases_resolver *r;
	char **out;
	size_t n;
	const char *chain[ALIASES_MAX_DEPTH]; /* names being expanded */
	size_t depth;
	size_t steps;
	char *why;
	size_t whylen;
};

int
aliases_same_address(const char *a, const char *b)
{
	const char *da = strrchr(a, '@'), *db = strrchr(b, '@');
	size_t la = da != NULL ? (size_t)(da - a) : strlen(a);
	size_t lb = db != NULL ? (size_t)(db - b) : strlen(b);

	if (la != lb || memcmp(a, b, la) != 0)
		return 0;
	if (da == NULL || db == NULL)
		return da == db;
	return strcasecmp(da, db) == 0;
}

static enum aliases_result expand_fail(struct expansion *,
    enum aliases_result, const char *, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes why: the message, then the chain of aliases it happened in. */
static enum aliases_result
expand_fail(struct expansion *x, enum aliases_result res, const char *fmt,
    ...)
{
	va_list ap;
	size_t used, i;

	if (x->whylen == 0)
		return res;
	va_start(ap, fmt);
	vsnprintf(x->why, x->whylen, fmt, ap);
	va_end(ap);
	if (x->depth == 0 || res == ALIASES_LOOP)
		return res;
	for (i = 0; i < x->depth; i++) {
		used = strlen(x->why);
		snprintf(x->why + used, x->whylen - used, "%s%s",
		    i == 0 ? " (via " : " -> ", x->chain[i]);
	}
	used = strlen(x->why);
	snprintf(x->why + used, x->whylen - used, ")");
	return res;
}

static enum aliases_result
expand_add(struct expansion *x, const char *addr)
{
	size_t i;

	for (i = 0; i < x->n; i++)
		if (aliases_same_address(x->out[i], addr))
			return ALIASES_OK;
	if (x->n >= x->r->max_results)
		return expand_fail(x, ALIASES_TOO_MANY, "expands to more than "
		    "%zu addresses", x->r->max_results);
	x->out = xreallocarray(x->out, x->n + 1, sizeof(*x->out));
	x->out[x->n++] = xstrdup(addr);
	return ALIASES_OK;
}

/* Writes "a -> b -> name" (the loop) to why. */
static enum aliases_result
expand_loop(struct expansion *x, const char *name)
{
	size_t i, used;

	if (x->whylen == 0)
		return ALIASES_LOOP;
	snprintf(x->why, x->whylen, "alias loop: ");
	for (i = 0; i < x->depth; i++) {
		used = strlen(x->why);
		snprintf(x->why + used, x->whylen - used, "%s -> ",
		    x->chain[i]);
	}
	used = strlen(x->why);
	snprintf(x->why + used, x->whylen - used, "%s", name);
	return ALIASES_LOOP;
}

static enum aliases_result
expand_one(struct expansion *x, const char *addr)
{
	const struct alias_entry *e;
	enum aliases_result res;
	char name[1024];
	size_t i;
	int postmaster;

	if (!x->r->local_name(addr, name, sizeof(name), x->r->arg))
		return expand_add(x, addr);
	if (++x->steps > ALIASES_MAX_STEPS)
		return expand_fail(x, ALIASES_TOO_MANY, "more than %d alias "
		    "look-ups", ALIASES_MAX_STEPS);
	/* RFC 5321 4.5.1: mail to postmaster must be accepted; without an
	 * alias of its own it goes where root's goes, as in the aliases
	 * file Debian ships, and where nothing takes root's mail, to the
	 * resolver's postmaster (the name local_name() gives is
	 * lower-cased, so this is case-insensitive). */
	postmaster = strcmp(name, "postmaster") == 0;
	if ((e = entry_find(x->r->aliases, name)) == NULL && postmaster)
		e = entry_find(x->r->aliases, "root");
	if (e == NULL) {
		if (x->r->catch_all != NULL)
			return expand_add(x, x->r->catch_all);
		if (postmaster && x->r->postmaster != NULL)
			return expand_add(x, x->r->postmaster);
		return expand_fail(x, ALIASES_UNKNOWN, "no such local user %s "
		    "(no alias)", name);
	}
	for (i = 0; i < x->depth; i++)
		if (strcmp(x->chain[i], e->name) == 0)
			return expand_loop(x, e->name);
	if (x->depth == ALIASES_MAX_DEPTH)
		return expand_fail(x, ALIASES_TOO_DEEP, "aliases nested more "
		    "than %d deep", ALIASES_MAX_DEPTH);
	x->chain[x->depth++] = e->name;
	for (i = 0; i < e->ntargets; i++)
		if ((res = expand_one(x, e->targets[i])) != ALIASES_OK)
			return res;
	x->depth--;
	return ALIASES_OK;
}

enum aliases_result
aliases_expand(const struct aliases_resolver *r, const char *addr,
    char ***out, size_t *nout, char *why, size_t whylen)
{
	struct expansion x;
	enum aliases_result res;

	memset(&x, 0, sizeof(x));
	x.r = r;
	x.why = why;
	x.whylen = whylen;
	if (whylen > 0)
		why[0] = '\0';
	res = expand_one(&x, addr);
	if (res != ALIASES_OK) {
		aliases_list_free(x.out, x.n);
		*out = NULL;
		*nout = 0;
		return res;
	}
	*out = x.out;
	*nout = x.n;
	return ALIASES_OK;
}

void
aliases_list_free(char **list, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(list[i]);
	free(list);
}
