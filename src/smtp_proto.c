/*
 * SMTP syntax shared by the server and the client. No I/O, no allocation:
 * every function works on caller buffers and either succeeds or reports a
 * syntax error the caller turns into a reply or an outcome.
 */
#include <sys/socket.h>
#include <arpa/inet.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "escape.h"
#include "smtp_proto.h"

int
smtp_cmd_split(const char *line, size_t len, char *verb, size_t verbsize,
    const char **arg)
{
	size_t i, n = 0;

	if (len == 0 || memchr(line, '\0', len) != NULL || verbsize == 0)
		return -1;
	for (i = 0; i < len && line[i] != ' '; i++)
		if (n + 1 < verbsize)
			verb[n++] = (char)toupper((unsigned char)line[i]);
	verb[n] = '\0';
	if (i < len)
		i++; /* the separating space */
	*arg = line + i;
	return 0;
}

/* Copies the angle-bracketed path at *p into addr, dropping a source
 * route. Returns 0 and advances *p past '>', or -1. */
static int
path_copy(const char **p, char *addr, size_t addrsize, const char **why)
{
	const char *s = *p, *end;
	size_t n;
	int quoted = 0;

	if (*s != '<') {
		*why = "path must be enclosed in <>";
		return -1;
	}
	s++;
	/* A source route "@a,@b:" is obsolete; RFC 5321 C says to accept
	 * and ignore it. */
	if (*s == '@') {
		const char *colon = strchr(s, ':');

		if (colon == NULL) {
			*why = "bad source route";
			return -1;
		}
		s = colon + 1;
	}
	for (end = s; *end != '\0'; end++) {
		if (*end == '\\' && quoted && end[1] != '\0') {
			end++;
			continue;
		}
		if (*end == '"')
			quoted = !quoted;
		else if (*end == '>' && !quoted)
			break;
	}
	if (*end != '>') {
		*why = "missing closing >";
		return -1;
	}
	n = (size_t)(end - s);
	if (n >= addrsize || n >= SMTP_PATH_MAX) {
		*why = "path too long";
		return -1;
	}
	memcpy(addr, s, n);
	addr[n] = '\0';
	*p = end + 1;
	return 0;
}

int
smtp_path_parse(const char *arg, const char *prefix, char *addr,
    size_t addrsize, const char **params, const char **why)
{
	size_t plen = strlen(prefix);
	const char *p = arg;

	*why = "syntax error";
	if (strncasecmp(p, prefix, plen) != 0) {
		*why = prefix[0] == 'F' || prefix[0] == 'f' ?
		    "expected MAIL FROM:<address>" : "expected RCPT TO:<address>";
		return -1;
	}
	p += plen;
	while (*p == ' ')
		p++;
	if (path_copy(&p, addr, addrsize, why) == -1)
		return -1;
	if (*p != '\0' && *p != ' ') {
		*why = "garbage after path";
		return -1;
	}
	while (*p == ' ')
		p++;
	*params = p;
	return 0;
}

/* RFC 5322 3.2.3 atext, the characters of a Dot-string's atoms. */
static int
is_atext(unsigned char c)
{
	return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/*
 * RFC 5321 Local-part: a Dot-string (atoms of atext joined by single dots)
 * or a Quoted-string (printable ASCII, '"' and '\' only escaped), of any
 * length (see smtp_mailbox_valid()); with utf8, RFC 6531 adds UTF-8 (the
 * caller checked that it is well formed) to both.
 */
static int
local_part_valid(const char *s, size_t len, int utf8)
{
	size_t i;

	if (len == 0)
		return 0;
	if (s[0] == '"') {
		for (i = 1; i < len - 1; i++)
			if (s[i] == '\\')
				i++; /* the escaped byte was checked */
			else if (s[i] == '"')
				return 0;
		return len >= 2 && i == len - 1 && s[len - 1] == '"';
	}
	if (s[0] == '.' || s[len - 1] == '.')
		return 0;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '.' ? s[i + 1] == '.' :
		    !is_atext(c) && !(utf8 && c >= 0x80))
			return 0;
	}
	return 1;
}

/* RFC 5321 Snum: 1 to 3 digits, at most 255. Returns the digits taken, or
 * 0. */
static size_t
snum_len(const char *s, size_t len)
{
	size_t i;
	int v = 0;

	for (i = 0; i < len && i < 3 && isdigit((unsigned char)s[i]); i++)
		v = v * 10 + (s[i] - '0');
	return v <= 255 ? i : 0;
}

/*
 * RFC 5321 address-literal, without its brackets: an IPv4 address
 * (four Snums), "IPv6:" and an address inet_pton() takes, or a
 * General-address-literal (an Ldh-str tag, ':', and printable ASCII but
 * '[', '\' and ']').
 */
static int
literal_valid(const char *s, size_t len)
{
	char buf[64];
	unsigned char a6[16];
	size_t i, n;
	int part;

	if (len > 5 && strncasecmp(s, "IPv6:", 5) == 0) {
		if (len - 5 >= sizeof(buf))
			return 0;
		memcpy(buf, s + 5, len - 5);
		buf[len - 5] = '\0';
		return inet_pton(AF_INET6, buf, a6) == 1;
	}
	if (len > 0 && isdigit((unsigned char)s[0])) {
		for (i = 0, part = 0; part < 4; part++) {
			if (part > 0 && (i >= len || s[i++] != '.'))
				return 0;
			if ((n = snum_len(s + i, len - i)) == 0)
				return 0;
			i += n;
		}
		return i == len;
	}
	for (i = 0; i < len && (isalnum((unsigned char)s[i]) || s[i] == '-');
	    i++)
		;
	if (i == 0 || i == len || s[i] != ':' || s[i - 1] == '-' ||
	    i + 1 == len)
		return 0;
	for (i++; i < len; i++)
		if (s[i] < 33 || s[i] > 126 || s[i] == '[' || s[i] == '\\' ||
		    s[i] == ']')
			return 0;
	return 1;
}

/*
 * RFC 5321 Domain: labels of letters, digits and inner hyphens, joined by
 * single dots, at most 255 octets, each label at most 63; or an
 * address-literal in brackets. Lenient where mail systems are: an
 * underscore counts as a letter (host names with one are common enough,
 * and Postfix takes them), and with utf8 a label may hold UTF-8 (an
 * RFC 6531 U-label, whose length DNS counts in its A-label form).
 */
static int
domain_valid(const char *s, size_t len, int utf8)
{
	size_t i, label = 0;
	int ascii = 1;

	if (len == 0 || len > SMTP_DOMAIN_MAX)
		return 0;
	if (s[0] == '[')
		return len >= 2 && s[len - 1] == ']' &&
		    literal_valid(s + 1, len - 2);
	for (i = 0; i <= len; i++) {
		unsigned char c = i < len ? (unsigned char)s[i] : '.';

		if (c == '.') {
			if (label == 0 || s[i - 1] == '-' ||
			    (ascii && label > 63))
				return 0;
			label = 0;
			ascii = 1;
			continue;
		}
		if (c >= 0x80 && utf8)
			ascii = 0;
		else if (c == '-' ? label == 0 : !isalnum(c) && c != '_')
			return 0;
		label++;
	}
	return 1;
}

int
smtp_mailbox_valid(const char *addr, int utf8)
{
	const char *at, *p;
	int quoted = 0;

	if (*addr == '\0')
		return 0;
	/* Every byte, a quoted-pair's escaped one included: RFC 5321's
	 * quoted-pairSMTP only escapes printable ASCII, and a CR or ESC
	 * behind a backslash is as dangerous in a log or a header. */
	for (p = addr; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;

		if (c < 0x20 || c == 0x7f)
			return 0;
		if (c >= 0x80 && !utf8)
			return 0;
	}
	/* With SMTPUTF8: a stray byte or a C1 control is what the log and
	 * header escaping would have to catch later, and no upstream takes
	 * an address that is not UTF-8. */
	if (utf8 && escape_needed(addr, (size_t)(p - addr)))
		return 0;
	/* The '@' after the local part: the first one outside quotes (a
	 * Dot-string has none, a Quoted-string may). */
	for (at = addr; *at != '\0'; at++) {
		if (*at == '\\' && quoted && at[1] != '\0')
			at++;
		else if (*at == '"')
			quoted = !quoted;
		else if (*at == '@' && !quoted)
			break;
	}
	if (*at != '@')
		return 0;
	return local_part_valid(addr, (size_t)(at - addr), utf8) &&
	    domain_valid(at + 1, strlen(at + 1), utf8);
}

int
smtp_param_next(const char **cursor, char *key, size_t keysize,
    char *value, size_t valuesize)
{
	const char *p = *cursor;
	size_t k = 0, v = 0;

	while (*p == ' ')
		p++;
	if (*p == '\0') {
		*cursor = p;
		return 0;
	}
	if (keysize == 0 || valuesize == 0)
		return -1;
	while (*p != '\0' && *p != ' ' && *p != '=') {
		unsigned char c = (unsigned char)*p;

		if (!isalnum(c) && c != '-')
			return -1;
		if (k + 1 >= keysize)
			return -1;
		key[k++] = (char)toupper(c);
		p++;
	}
	key[k] = '\0';
	if (k == 0)
		return -1;
	if (*p == '=') {
		p++;
		while (*p != '\0' && *p != ' ') {
			unsigned char c = (unsigned char)*p;

			if (c < 0x21 || c == 0x7f || c == '=')
				return -1;
			if (v + 1 >= valuesize)
				return -1;
			value[v++] = *p++;
		}
		if (v == 0)
			return -1;
	}
	value[v] = '\0';
	*cursor = p;
	return 1;
}

void
smtp_reply_parser_init(struct smtp_reply_parser *p)
{
	memset(p, 0, sizeof(*p));
}

/* Appends s[0..n) to the reply text, truncating silently: the text is for
 * logs and DSNs, the code is what the protocol acts on. */
static void
reply_append(struct smtp_reply *r, const char *s, size_t n)
{
	size_t have = strlen(r->text), room;

	if (have + 1 >= sizeof(r->text))
		return;
	room = sizeof(r->text) - have - 1;
	if (n > room)
		n = room;
	memcpy(r->text + have, s, n);
	r->text[have + n] = '\0';
}

/* Recognises an enhanced status code "c.sss.ddd " matching the reply
 * class; returns its length including the trailing space, or 0. */
static size_t
enhanced_len(const char *s, size_t n, int code)
{
	size_t i = 0, digits;
	int part;

	if (n < 6 || s[0] != '0' + code / 100 || s[1] != '.')
		return 0;
	i = 2;
	for (part = 0; part < 2; part++) {
		for (digits = 0; i < n && isdigit((unsigned char)s[i]);
		    digits++, i++)
			;
		if (digits == 0 || digits > 3)
			return 0;
		if (part == 0) {
			if (i >= n || s[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < n && s[i] != ' ')
		return 0;
	return i < n ? i + 1 : i;
}

enum smtp_reply_status
smtp_reply_feed(struct smtp_reply_parser *p, const char *line, size_t len)
{
	struct smtp_reply *r = &p->reply;
	int code, last;
	size_t elen;

	if (len < 3 || !isdigit((unsigned char)line[0]) ||
	    !isdigit((unsigned char)line[1]) ||
	    !isdigit((unsigned char)line[2]))
		return SMTP_REPLY_ERROR;
	if (len > 3 && line[3] != ' ' && line[3] != '-')
		return SMTP_REPLY_ERROR;
	code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	if (code < 200 || code > 599)
		return SMTP_REPLY_ERROR;
	last = len == 3 || line[3] == ' ';
	if (!p->in_progress) {
		memset(r, 0, sizeof(*r));
		r->code = code;
		p->in_progress = 1;
	} else if (code != r->code) {
		p->in_progress = 0;
		return SMTP_REPLY_ERROR;
	}
	line += len > 3 ? 4 : 3;
	len -= len > 3 ? 4 : 3;
	elen = enhanced_len(line, len, code);
	if (elen > 0) {
		if (r->nlines == 0) {
			size_t n = line[elen - 1] == ' ' ? elen - 1 : elen;

			if (n < sizeof(r->enhanced)) {
				memcpy(r->enhanced, line, n);
				r->enhanced[n] = '\0';
			}
		}
		line += elen;
		len -= elen;
	}
	if (r->nlines > 0)
		reply_append(r, "\n", 1);
	reply_append(r, line, len);
	r->nlines++;
	if (!last && r->nlines >= SMTP_REPLY_MAX_LINES) {
		p->in_progress = 0;
		return SMTP_REPLY_TOO_LONG;
	}
	if (!last)
		return SMTP_REPLY_MORE;
	p->in_progress = 0;
	return SMTP_REPLY_DONE;
}

void
smtp_ehlo_parse(const char *text, struct smtp_ehlo *out)
{
	const char *line = text, *nl;
	char kw[64];
	size_t n, i;

	memset(out, 0, sizeof(*out));
	/* The first line is the server's name and greeting. */
	if ((nl = strchr(line, '\n')) == NULL)
		return;
	for (line = nl + 1; *line != '\0'; line = nl + 1) {
		const char *args;

		nl = strchr(line, '\n');
		n = nl != NULL ? (size_t)(nl - line) : strlen(line);
		for (i = 0; i < n && i + 1 < sizeof(kw) && line[i] != ' ' &&
		    line[i] != '='; i++)
			kw[i] = (char)toupper((unsigned char)line[i]);
		kw[i] = '\0';
		args = line + i + (i < n ? 1 : 0);
		if (strcmp(kw, "PIPELINING") == 0)
			out->exts |= SMTP_EXT_PIPELINING;
		else if (strcmp(kw, "8BITMIME") == 0)
			out->exts |= SMTP_EXT_8BITMIME;
		else if (strcmp(kw, "SMTPUTF8") == 0)
			out->exts |= SMTP_EXT_SMTPUTF8;
		else if (strcmp(kw, "STARTTLS") == 0)
			out->exts |= SMTP_EXT_STARTTLS;
		else if (strcmp(kw, "ENHANCEDSTATUSCODES") == 0)
			out->exts |= SMTP_EXT_ENHANCEDSTATUSCODES;
		else if (strcmp(kw, "CHUNKING") == 0)
			out->exts |= SMTP_EXT_CHUNKING;
		else if (strcmp(kw, "DSN") == 0)
			out->exts |= SMTP_EXT_DSN;
		else if (strcmp(kw, "SIZE") == 0) {
			out->exts |= SMTP_EXT_SIZE;
			if (i < n)
				out->size = strtoul(args, NULL, 10);
		} else if (strcmp(kw, "AUTH") == 0 && i < n) {
			size_t alen = n - (size_t)(args - line), have, j;

			out->exts |= SMTP_EXT_AUTH;
			/* Servers may repeat AUTH (and old ones send
			 * AUTH=); collect every mechanism once. */
			have = strlen(out->auth);
			if (have > 0 && have + 1 < sizeof(out->auth))
				out->auth[have++] = ' ';
			for (j = 0; j < alen && have + 1 < sizeof(out->auth);
			    j++)
				out->auth[have++] =
				    (char)toupper((unsigned char)args[j]);
			out->auth[have] = '\0';
		}
		if (nl == NULL)
			break;
	}
}

void
smtp_body_encoder_init(struct smtp_body_encoder *e)
{
	e->at_bol = 1;
	e->saw_cr = 0;
	e->limit = 0;
	e->col = 0;
	e->nheld = 0;
	e->folds = 0;
}

void
smtp_body_encoder_fold(struct smtp_body_encoder *e, size_t limit)
{
	e->limit = limit == 1 ? 2 : limit;
}

/* Whether breaks keep UTF-8 characters whole: a continuation must have
 * room for its space and a 4-byte character. */
static int
fold_utf8(size_t limit)
{
	return limit >= SMTP_FOLD_UTF8_MIN;
}

/* The fewest characters of the message a continuation line carries. */
static size_t
fold_min(size_t limit)
{
	return fold_utf8(limit) ? limit - 4 : limit - 1;
}

size_t
smtp_body_encode_space(const struct smtp_body_encoder *e, size_t len)
{
	/* Each byte makes at most two (CRLF for a CR or LF, ".." for a
	 * leading dot), and up to 3 bytes held back by the last piece may
	 * go out. Breaks are at least fold_min() characters apart, and one
	 * may come before the first character (the line reached the limit
	 * at the end of the last piece). */
	if (e->limit == 0)
		return 2 * len + 2;
	return 2 * len + 2 + 3 + 3 * (1 + (len + 3) / fold_min(e->limit));
}

unsigned long long
smtp_body_fold_bound(unsigned long long size, size_t limit)
{
	if (limit == 0 || size <= limit)
		return 0;
	if (limit == 1)
		limit = 2;
	return (size - 2) / fold_min(limit);
}

/*
 * The length (2 to 4) of the UTF-8 character whose first n bytes are s,
 * when those bytes can start a well-formed one (RFC 3629: no overlong
 * form, no surrogate, nothing over U+10FFFF), else 0.
 */
static size_t
utf8_prefix(const unsigned char *s, size_t n)
{
	size_t len, i;
	unsigned char lo = 0x80, hi = 0xbf;

	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4;
	else
		return 0;
	if (n > len)
		return 0;
	/* the second byte's range depends on the first */
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	if (n > 1 && (s[1] < lo || s[1] > hi))
		return 0;
	for (i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

/* Sends the bytes held back at the end of the line as they are. */
static size_t
fold_release(struct smtp_body_encoder *e, char *out)
{
	size_t n = e->nheld;

	memcpy(out, e->held, n);
	e->nheld = 0;
	return n;
}

/*
 * One character of a line near its limit, where a break may be due. A
 * character the line has no room for starts a continuation. A UTF-8
 * lead byte whose character would not end by the limit is held back with
 * what follows of it; when the limit is reached and the next byte still
 * continues it, the break goes before it and the character moves whole
 * to the continuation. Anything else releases the held bytes where they
 * are: they were ill-formed, and may be cut. Returns bytes written.
 */
static size_t
fold_char(struct smtp_body_encoder *e, unsigned char c, char *out)
{
	size_t n = 0, len;

	if (e->nheld > 0) {
		e->held[e->nheld] = c;
		if (utf8_prefix(e->held, e->nheld + 1) != 0) {
			if (e->col < e->limit) {
				e->nheld++;
				e->col++;
				return 0;
			}
			memcpy(out, "\r\n ", 3);
			memcpy(out + 3, e->held, e->nheld + 1);
			n = 3 + e->nheld + 1;
			e->col = 1 + e->nheld + 1;
			e->nheld = 0;
			e->folds++;
			return n;
		}
		n = fold_release(e, out);
	}
	if (e->col == e->limit) {
		memcpy(out + n, "\r\n ", 3);
		n += 3;
		e->col = 1;
		e->folds++;
	}
	e->col++;
	if (fold_utf8(e->limit) && (len = utf8_prefix(&c, 1)) != 0 &&
	    e->col + len - 1 > e->limit) {
		e->held[0] = c;
		e->nheld = 1;
		return n;
	}
	out[n++] = (char)c;
	return n;
}

/* The bytes from p (at most len) before the first CR, LF or NUL. */
static size_t
plain_span(const char *p, size_t len)
{
	const char *q;

	if ((q = memchr(p, '\n', len)) != NULL)
		len = (size_t)(q - p);
	if ((q = memchr(p, '\r', len)) != NULL)
		len = (size_t)(q - p);
	if ((q = memchr(p, '\0', len)) != NULL)
		len = (size_t)(q - p);
	return len;
}

/* Copies span characters of one line to out, breaking it as the header
 * says each time it reaches e->limit characters and goes on. Returns
 * bytes written. */
static size_t
copy_folded(struct smtp_body_encoder *e, const char *in, size_t span,
    char *out)
{
	size_t n = 0, take, i, near;

	if (e->limit == 0) {
		memcpy(out, in, span);
		e->col += span;
		return span;
	}
	/* No character that starts before the last 3 of the line can
	 * cross the limit: those go in one copy, the rest one by one. */
	near = fold_utf8(e->limit) ? e->limit - 3 : e->limit;
	i = 0;
	while (i < span) {
		if (e->nheld == 0 && e->col < near) {
			take = near - e->col;
			if (take > span - i)
				take = span - i;
			memcpy(out + n, in + i, take);
			n += take;
			i += take;
			e->col += take;
			continue;
		}
		n += fold_char(e, (unsigned char)in[i++], out + n);
	}
	return n;
}

size_t
smtp_body_encode(struct smtp_body_encoder *e, const char *in, size_t len,
    char *out)
{
	size_t i = 0, n = 0, span;

	while (i < len) {
		char c = in[i];

		/* A CR was already written out as CRLF: its LF is done. */
		if (e->saw_cr) {
			e->saw_cr = 0;
			if (c == '\n') {
				i++;
				continue;
			}
		}
		if (c == '\r' || c == '\n') {
			n += fold_release(e, out + n);
			out[n++] = '\r';
			out[n++] = '\n';
			e->saw_cr = c == '\r';
			e->at_bol = 1;
			e->col = 0;
			i++;
			continue;
		}
		/* The server refuses NUL; one from elsewhere is dropped,
		 * so "NUL." cannot become an unstuffed dot for an upstream
		 * that drops NUL itself. */
		if (c == '\0') {
			i++;
			continue;
		}
		if (e->at_bol && c == '.')
			out[n++] = '.';
		e->at_bol = 0;
		/* The rest of the line up to a byte that needs a look of
		 * its own goes in one copy: the body is mostly such runs. */
		span = plain_span(in + i, len - i);
		n += copy_folded(e, in + i, span, out + n);
		i += span;
	}
	return n;
}

size_t
smtp_body_encode_finish(struct smtp_body_encoder *e, char *out)
{
	size_t n = 0;

	if (!e->at_bol) {
		n += fold_release(e, out);
		out[n++] = '\r';
		out[n++] = '\n';
	}
	memcpy(out + n, ".\r\n", 3);
	n += 3;
	e->at_bol = 1;
	e->saw_cr = 0;
	e->col = 0;
	return n;
}
