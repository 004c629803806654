/*
 * Header address rewriting. A field body is cut into lexical tokens
 * (atoms, quoted strings, comments, domain literals, specials, white
 * space including folding); the token list is walked once to find each
 * mailbox's addr-spec as a range of tokens; the output is the input with
 * only those ranges replaced, and only where the callback asked. Anything
 * that does not tokenize (an unclosed quote or comment, a stray control
 * character) makes the whole field stay as it was: a header we do not
 * understand is better sent unchanged than mangled.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rewrite.h"
#include "xmalloc.h"

enum tok_type {
	T_ATOM,    /* atext run (bytes >= 0x80 count as atext) */
	T_QUOTED,  /* "..." */
	T_COMMENT, /* (...) with nesting */
	T_LITERAL, /* [...] */
	T_SPECIAL, /* one of < > : ; @ , . */
	T_WSP,     /* blanks, CR, LF: folding is white space */
};

struct tok {
	enum tok_type type;
	size_t start, end; /* byte offsets into the body */
};

struct toks {
	struct tok *v;
	size_t n, cap;
};

static int
is_atext(unsigned char c)
{
	if (c >= 0x80)
		return 1;
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return 1;
	return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static void
tok_push(struct toks *t, enum tok_type type, size_t start, size_t end)
{
	if (t->n == t->cap) {
		t->cap = t->cap != 0 ? t->cap * 2 : 32;
		t->v = xreallocarray(t->v, t->cap, sizeof(*t->v));
	}
	t->v[t->n].type = type;
	t->v[t->n].start = start;
	t->v[t->n].end = end;
	t->n++;
}

/* The end of the quoted string, comment or literal that opens at s[i],
 * or 0 when it does not close. A backslash quotes the next byte in all
 * three; only comments nest. */
static size_t
delimited_end(const char *s, size_t len, size_t i, char open, char close)
{
	unsigned depth = 1;

	for (i++; i < len; i++) {
		if (s[i] == '\\') {
			i++;
		} else if (s[i] == close) {
			if (--depth == 0)
				return i + 1;
		} else if (s[i] == open && open == '(') {
			depth++;
		}
	}
	return 0;
}

static int
is_wsp(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Tokenizes s; -1 when it does not lex. */
static int
tokenize(const char *s, size_t len, struct toks *t)
{
	size_t i = 0, j;
	unsigned char c;

	while (i < len) {
		c = (unsigned char)s[i];
		j = i + 1;
		if (is_wsp(s[i])) {
			while (j < len && is_wsp(s[j]))
				j++;
			tok_push(t, T_WSP, i, j);
		} else if (c == '"') {
			if ((j = delimited_end(s, len, i, '"', '"')) == 0)
				return -1;
			tok_push(t, T_QUOTED, i, j);
		} else if (c == '(') {
			if ((j = delimited_end(s, len, i, '(', ')')) == 0)
				return -1;
			tok_push(t, T_COMMENT, i, j);
		} else if (c == '[') {
			if ((j = delimited_end(s, len, i, '[', ']')) == 0)
				return -1;
			tok_push(t, T_LITERAL, i, j);
		} else if (c != '\0' && strchr("<>:;@,.", c) != NULL) {
			tok_push(t, T_SPECIAL, i, j);
		} else if (is_atext(c)) {
			while (j < len && is_atext((unsigned char)s[j]))
				j++;
			tok_push(t, T_ATOM, i, j);
		} else {
			return -1; /* ')', ']', '\\' or a control byte */
		}
		i = j;
	}
	return 0;
}

static int
is_special(const struct toks *t, const char *s, size_t i, char c)
{
	return t->v[i].type == T_SPECIAL && s[t->v[i].start] == c;
}

static int
significant(const struct tok *k)
{
	return k->type != T_WSP && k->type != T_COMMENT;
}

/*
 * Whether the significant tokens in [from, to) form an addr-spec:
 * word *("." word) ["@" (atom *("." atom) / domain-literal)], where a word
 * is an atom or a quoted string. No domain means a local name.
 */
static int
addr_spec_ok(const struct toks *t, const char *s, size_t from, size_t to)
{
	enum { LOCAL_WORD, LOCAL_DOT, DOMAIN_START, DOMAIN_ATOM, DOMAIN_DOT,
		DOMAIN_END } st = LOCAL_WORD;
	const struct tok *k;
	size_t i;

	for (i = from; i < to; i++) {
		k = &t->v[i];
		if (!significant(k))
			continue;
		switch (st) {
		case LOCAL_WORD:
			if (k->type != T_ATOM && k->type != T_QUOTED)
				return 0;
			st = LOCAL_DOT;
			break;
		case LOCAL_DOT:
			if (is_special(t, s, i, '.'))
				st = LOCAL_WORD;
			else if (is_special(t, s, i, '@'))
				st = DOMAIN_START;
			else
				return 0;
			break;
		case DOMAIN_START:
			if (k->type == T_LITERAL)
				st = DOMAIN_END;
			else if (k->type == T_ATOM)
				st = DOMAIN_ATOM;
			else
				return 0;
			break;
		case DOMAIN_ATOM:
			if (!is_special(t, s, i, '.'))
				return 0;
			st = DOMAIN_DOT;
			break;
		case DOMAIN_DOT:
			if (k->type != T_ATOM)
				return 0;
			st = DOMAIN_ATOM;
			break;
		case DOMAIN_END:
			return 0;
		}
	}
	return st == LOCAL_DOT || st == DOMAIN_ATOM || st == DOMAIN_END;
}

struct edit {
	size_t start, end; /* bytes replaced */
	char *text;
};

struct edits {
	struct edit *v;
	size_t n;
};

/*
 * One mailbox: tokens [from, to), with the angle brackets at aopen and
 * aclose when it has them (else aopen == to). Asks fn about its addr-spec
 * and records the replacement.
 */
static void
mailbox(const struct toks *t, const char *s, size_t from, size_t to,
    size_t aopen, size_t aclose, rewrite_fn fn, void *arg, struct edits *e)
{
	size_t i, j, first, last, alen = 0;
	char *addr, *repl;

	if (aopen != to) {
		from = aopen + 1;
		to = aclose;
		/* obs-route: "<@a,@b:user@host>" */
		for (i = from; i < to; i++)
			if (is_special(t, s, i, ':'))
				from = i + 1;
	}
	first = last = to;
	for (i = from; i < to; i++) {
		if (!significant(&t->v[i]))
			continue;
		if (first == to)
			first = i;
		last = i;
		alen += t->v[i].end - t->v[i].start;
	}
	if (first == to || !addr_spec_ok(t, s, first, last + 1))
		return;
	/* The significant tokens, unfolded: a quoted string may hold a
	 * fold, whose CRLF is not part of the address. */
	addr = xmalloc(alen + 1);
	alen = 0;
	for (i = first; i <= last; i++) {
		if (!significant(&t->v[i]))
			continue;
		for (j = t->v[i].start; j < t->v[i].end; j++)
			if (s[j] != '\r' && s[j] != '\n')
				addr[alen++] = s[j];
	}
	addr[alen] = '\0';
	repl = fn(addr, arg);
	free(addr);
	if (repl == NULL)
		return;
	e->v = xreallocarray(e->v, e->n + 1, sizeof(*e->v));
	e->v[e->n].start = t->v[first].start;
	e->v[e->n].end = t->v[last].end;
	e->v[e->n].text = repl;
	e->n++;
}

/* Walks the tokens: mailboxes are separated by ',' and a group's
 * "name:" ... ";" encloses some. Returns -1 on unbalanced brackets. */
static int
address_list(const struct toks *t, const char *s, rewrite_fn fn, void *arg,
    struct edits *e)
{
	size_t i, j, start = 0, aopen, aclose = 0;
	int in_group = 0;

	aopen = SIZE_MAX;
	for (i = 0; i < t->n; i++) {
		if (is_special(t, s, i, '<')) {
			if (aopen != SIZE_MAX)
				return -1;
			for (j = i + 1; j < t->n; j++)
				if (is_special(t, s, j, '>') ||
				    is_special(t, s, j, '<'))
					break;
			if (j == t->n || !is_special(t, s, j, '>'))
				return -1;
			aopen = i;
			aclose = j;
			i = j;
		} else if (is_special(t, s, i, '>')) {
			return -1;
		} else if (is_special(t, s, i, ',') ||
		    (in_group && is_special(t, s, i, ';'))) {
			mailbox(t, s, start, i, aopen == SIZE_MAX ? i : aopen,
			    aclose, fn, arg, e);
			if (is_special(t, s, i, ';'))
				in_group = 0;
			start = i + 1;
			aopen = SIZE_MAX;
		} else if (!in_group && aopen == SIZE_MAX &&
		    is_special(t, s, i, ':')) {
			in_group = 1; /* what came before is the group name */
			start = i + 1;
		}
	}
	mailbox(t, s, start, t->n, aopen == SIZE_MAX ? t->n : aopen, aclose,
	    fn, arg, e);
	return 0;
}

static void
edits_clear(struct edits *e)
{
	size_t i;

	for (i = 0; i < e->n; i++)
		free(e->v[i].text);
	free(e->v);
}

char *
rewrite_address_list(const char *body, size_t len, rewrite_fn fn, void *arg,
    size_t *outlen)
{
	struct toks t = { NULL, 0, 0 };
	struct edits e = { NULL, 0 };
	size_t i, pos = 0, size, o = 0;
	char *out = NULL;

	if (tokenize(body, len, &t) == -1 ||
	    address_list(&t, body, fn, arg, &e) == -1 || e.n == 0)
		goto done;
	size = len + 1;
	for (i = 0; i < e.n; i++)
		size += strlen(e.v[i].text);
	out = xmalloc(size);
	for (i = 0; i < e.n; i++) {
		memcpy(out + o, body + pos, e.v[i].start - pos);
		o += e.v[i].start - pos;
		memcpy(out + o, e.v[i].text, strlen(e.v[i].text));
		o += strlen(e.v[i].text);
		pos = e.v[i].end;
	}
	memcpy(out + o, body + pos, len - pos);
	o += len - pos;
	out[o] = '\0';
	*outlen = o;
done:
	edits_clear(&e);
	free(t.v);
	return out;
}

/* ---- the header section ---- */

/* Length of the line at p (through its LF, or to the end). */
static size_t
line_len(const char *p, size_t len)
{
	const char *nl = memchr(p, '\n', len);

	return nl != NULL ? (size_t)(nl - p) + 1 : len;
}

/* Bytes of the line ending (CRLF, LF or none) at the end of line l. */
static size_t
eol_len(const char *l, size_t n)
{
	if (n == 0 || l[n - 1] != '\n')
		return 0;
	return n >= 2 && l[n - 2] == '\r' ? 2 : 1;
}

/* The length of the field name of line l (before optional blanks and the
 * colon), or 0 when l is not a field line. *colon receives the colon's
 * offset. */
static size_t
field_name(const char *l, size_t n, size_t *colon)
{
	size_t i, name;

	for (i = 0; i < n && l[i] > 32 && l[i] < 127 && l[i] != ':'; i++)
		;
	name = i;
	while (i < n && (l[i] == ' ' || l[i] == '\t'))
		i++; /* obs-optional: "Subject :" */
	if (name == 0 || i == n || l[i] != ':')
		return 0;
	*colon = i;
	return name;
}

/* Whether the n bytes at l (no line end yet) can still begin a field
 * line: field-name bytes, optional blanks, a colon. */
static int
field_name_prefix(const char *l, size_t n)
{
	size_t i;

	for (i = 0; i < n && l[i] > 32 && l[i] < 127 && l[i] != ':'; i++)
		;
	while (i < n && (l[i] == ' ' || l[i] == '\t'))
		i++;
	return i == n || (l[i] == ':' && i > 0);
}

static int
is_blank_start(const char *l, size_t n)
{
	return n > 0 && (l[0] == ' ' || l[0] == '\t');
}

static int
rewritten_field(const char *name, size_t n)
{
	/* The originator fields and their resent block (RFC 5322 section
	 * 3.6.6; Resent-Reply-To is RFC 822's, still sent by old MUAs). */
	static const char *const fields[] = { "From", "Sender", "Reply-To",
		"Resent-From", "Resent-Sender", "Resent-Reply-To", NULL };
	size_t i;

	for (i = 0; fields[i] != NULL; i++)
		if (strlen(fields[i]) == n && strncasecmp(name, fields[i],
		    n) == 0)
			return 1;
	return 0;
}

int
rewrite_header_done(const char *buf, size_t len, size_t *cursor)
{
	size_t pos = *cursor, n, colon;
	const char *l;

	while (pos < len) {
		l = buf + pos;
		n = line_len(l, len - pos);
		if (l[n - 1] != '\n') {
			/* Incomplete; but a start that cannot be a field
			 * name settles it already (a long body line). */
			if (!is_blank_start(l, n) && !field_name_prefix(l, n))
				return 1;
			break;
		}
		if (n == eol_len(l, n))
			return 1; /* the empty line */
		if (!is_blank_start(l, n) && field_name(l, n, &colon) == 0)
			return 1; /* not a field: the body starts here */
		pos += n;
	}
	*cursor = pos;
	return 0;
}

size_t
rewrite_complete_fields(const char *hdr, size_t len)
{
	size_t pos = 0, n, last = 0;

	while (pos < len) {
		n = line_len(hdr + pos, len - pos);
		if (!is_blank_start(hdr + pos, n))
			last = pos;
		pos += n;
	}
	return last;
}

struct outbuf {
	char *p;
	size_t n, cap;
};

static void
out_add(struct outbuf *b, const char *p, size_t len)
{
	if (b->n + len + 1 > b->cap) {
		b->cap = b->n + len + 1 > b->cap * 2 ? b->n + len + 1 :
		    b->cap * 2;
		b->p = xreallocarray(b->p, b->cap, 1);
	}
	memcpy(b->p + b->n, p, len);
	b->n += len;
	b->p[b->n] = '\0';
}

char *
rewrite_headers(const char *hdr, size_t len, rewrite_fn fn, void *arg,
    size_t *outlen)
{
	struct outbuf out = { NULL, 0, 0 };
	size_t pos = 0, done = 0, n, end, colon, name, eol, rlen;
	const char *l;
	char *r;

	while (pos < len) {
		l = hdr + pos;
		n = line_len(l, len - pos);
		if (n == eol_len(l, n) || is_blank_start(l, n) ||
		    (name = field_name(l, n, &colon)) == 0)
			break; /* the end of the section, or a stray line */
		/* The field runs until a line that does not start blank. */
		end = pos + n;
		while (end < len && is_blank_start(hdr + end, len - end))
			end += line_len(hdr + end, len - end);
		if (!rewritten_field(l, name)) {
			pos = end;
			continue;
		}
		eol = eol_len(hdr + pos, end - pos);
		r = rewrite_address_list(l + colon + 1,
		    end - eol - (pos + colon + 1), fn, arg, &rlen);
		if (r != NULL) {
			/* Everything unchanged since the last edit, the
			 * name and colon, the new body, the line end. */
			out_add(&out, hdr + done, pos + colon + 1 - done);
			out_add(&out, r, rlen);
			done = end - eol;
			free(r);
		}
		pos = end;
	}
	if (out.p == NULL)
		return NULL;
	out_add(&out, hdr + done, len - done);
	*outlen = out.n;
	return out.p;
}
