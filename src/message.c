/*
 * The message sendmail reads: line-end normalisation, the header/body
 * split, overlong lines, address lists for -t and the header fields it
 * adds. Pure functions over buffers; message.h states the rules.
 *
 * Invariant of struct message: every field's text and the body consist of
 * complete lines ended by CRLF, no line longer than MESSAGE_LINE_MAX bytes
 * before its CRLF, and no NUL byte anywhere.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "aliases.h"
#include "message.h"
#include "strbuf.h"
#include "xmalloc.h"

/* ---- input end ---- */

size_t
message_dot_end(const char *buf, size_t len, size_t from)
{
	size_t s = from;
	const char *lf;

	while (s < len) {
		if (buf[s] == '.' && ((s + 1 < len && buf[s + 1] == '\n') ||
		    (s + 2 < len && buf[s + 1] == '\r' && buf[s + 2] == '\n')))
			return s;
		if ((lf = memchr(buf + s, '\n', len - s)) == NULL)
			break;
		s = (size_t)(lf - buf) + 1;
	}
	return (size_t)-1;
}

size_t
message_last_line(const char *buf, size_t len)
{
	size_t i = len;

	while (i > 0 && buf[i - 1] != '\n')
		i--;
	return i;
}

/* ---- parsing ---- */

/* The next line of buf[*pos..len): its start and length without the line
 * end, which may be CRLF, LF or a bare CR. Returns 0 at the end. */
static int
next_line(const char *buf, size_t len, size_t *pos, const char **line,
    size_t *n)
{
	size_t i = *pos;

	if (i >= len)
		return 0;
	*line = buf + i;
	while (i < len && buf[i] != '\n' && buf[i] != '\r')
		i++;
	*n = i - *pos;
	if (i < len && buf[i] == '\r') {
		i++;
		if (i < len && buf[i] == '\n')
			i++;
	} else if (i < len)
		i++;
	*pos = i;
	return 1;
}

/*
 * "Name:" with a name of printable ASCII other than the colon, the name
 * and its colon within one line's limit: a longer line is folded, and
 * never inside the name (it holds no blank), so a longer name would come
 * out broken across lines that a reader no longer takes for a field.
 */
static size_t
field_name_len(const char *line, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)line[i];

		if (c == ':')
			return i < MESSAGE_LINE_MAX ? i : 0;
		if (c < 33 || c > 126)
			return 0;
	}
	return 0;
}

/*
 * Where to break a line longer than room bytes that has no blank to fold
 * at: room, or, when that would cut a UTF-8 character, the start of that
 * character (at most 3 bytes back), so each piece stays valid UTF-8 when
 * the line was. Text that is not UTF-8 there (Latin-1, a continuation
 * byte without its lead) is broken at room.
 */
static size_t
char_cut(const char *line, size_t room)
{
	size_t cut = room;
	unsigned char lead;

	while (cut + 3 > room && ((unsigned char)line[cut] & 0xc0) == 0x80)
		cut--;
	lead = (unsigned char)line[cut];
	return cut < room && lead >= 0xc2 && lead <= 0xf4 ? cut : room;
}

/* Appends a header line, folded where it is too long: at the last blank
 * within the limit when there is one (nothing inserted), else by
 * inserting CRLF SP. */
static void
add_header_line(struct strbuf *b, const char *line, size_t n)
{
	size_t cut, room = MESSAGE_LINE_MAX;

	while (n > room) {
		for (cut = room; cut > 1; cut--)
			if (line[cut] == ' ' || line[cut] == '\t')
				break;
		if (cut > 1) {
			strbuf_add(b, line, cut);
			strbuf_add(b, "\r\n", 2);
			line += cut;
			n -= cut;
			room = MESSAGE_LINE_MAX;
		} else {
			cut = char_cut(line, room);
			strbuf_add(b, line, cut);
			strbuf_add(b, "\r\n ", 3);
			line += cut;
			n -= cut;
			room = MESSAGE_LINE_MAX - 1;
		}
	}
	strbuf_add(b, line, n);
	strbuf_add(b, "\r\n", 2);
}

/* Appends a body line, broken into pieces of at most the limit, never
 * inside a UTF-8 character. */
static void
add_body_line(struct strbuf *b, const char *line, size_t n)
{
	size_t cut;

	while (n > MESSAGE_LINE_MAX) {
		cut = char_cut(line, MESSAGE_LINE_MAX);
		strbuf_add(b, line, cut);
		strbuf_add(b, "\r\n", 2);
		line += cut;
		n -= cut;
	}
	strbuf_add(b, line, n);
	strbuf_add(b, "\r\n", 2);
}

static void
field_start(struct message *m, const char *line, size_t namelen)
{
	m->fields = xreallocarray(m->fields, m->nfields + 1,
	    sizeof(*m->fields));
	m->fields[m->nfields].name = xstrndup(line, namelen);
	m->fields[m->nfields].text = NULL;
	m->nfields++;
}

enum message_status
message_parse(const char *buf, size_t len, struct message *m, char *err,
    size_t errlen)
{
	struct strbuf field = STRBUF_INIT, body = STRBUF_INIT;
	const char *line, *nul;
	size_t pos = 0, n, namelen, lineno;
	int in_header = 1;

	memset(m, 0, sizeof(*m));
	if ((nul = memchr(buf, '\0', len)) != NULL) {
		lineno = 1;
		for (line = buf; line < nul; line++)
			if (*line == '\n')
				lineno++;
		snprintf(err, errlen, "line %zu contains a NUL byte; message "
		    "not sent", lineno);
		return MESSAGE_NUL;
	}
	/* An mbox "From " line some programs put first is not a field. */
	if (len >= 5 && memcmp(buf, "From ", 5) == 0)
		next_line(buf, len, &pos, &line, &n);
	while (next_line(buf, len, &pos, &line, &n)) {
		if (!in_header) {
			add_body_line(&body, line, n);
			continue;
		}
		if (n == 0) {
			in_header = 0;
			continue;
		}
		if ((line[0] == ' ' || line[0] == '\t') && m->nfields > 0) {
			add_header_line(&field, line, n);
			continue;
		}
		if ((namelen = field_name_len(line, n)) == 0) {
			/* Not a header: the body starts here. */
			in_header = 0;
			add_body_line(&body, line, n);
			continue;
		}
		if (m->nfields > 0) {
			m->fields[m->nfields - 1].text = strbuf_take(&field,
			    NULL);
		}
		field_start(m, line, namelen);
		add_header_line(&field, line, n);
	}
	if (m->nfields > 0)
		m->fields[m->nfields - 1].text = strbuf_take(&field, NULL);
	m->body = strbuf_take(&body, &m->bodylen);
	return MESSAGE_OK;
}

void
message_clear(struct message *m)
{
	size_t i;

	for (i = 0; i < m->nfields; i++) {
		free(m->fields[i].name);
		free(m->fields[i].text);
	}
	free(m->fields);
	free(m->body);
	memset(m, 0, sizeof(*m));
}

/* ---- fields ---- */

long
message_find(const struct message *m, const char *name, size_t start)
{
	size_t i;

	for (i = start; i < m->nfields; i++)
		if (strcasecmp(m->fields[i].name, name) == 0)
			return (long)i;
	return -1;
}

int
message_has_resent(const struct message *m)
{
	size_t i;

	for (i = 0; i < m->nfields; i++)
		if (strncasecmp(m->fields[i].name, "Resent-", 7) == 0)
			return 1;
	return 0;
}

size_t
message_remove(struct message *m, const char *name)
{
	size_t i, j, removed = 0;

	for (i = 0, j = 0; i < m->nfields; i++) {
		if (strcasecmp(m->fields[i].name, name) == 0) {
			free(m->fields[i].name);
			free(m->fields[i].text);
			removed++;
			continue;
		}
		m->fields[j++] = m->fields[i];
	}
	m->nfields = j;
	return removed;
}

void
message_add(struct message *m, const char *name, const char *value)
{
	struct strbuf b = STRBUF_INIT;
	char *line = xasprintf("%s: %s", name, value);

	add_header_line(&b, line, strlen(line));
	free(line);
	field_start(m, name, strlen(name));
	m->fields[m->nfields - 1].text = strbuf_take(&b, NULL);
}

char *
message_value(const struct message_field *f)
{
	const char *p = strchr(f->text, ':');
	char *v, *q;
	size_t n;

	p = p != NULL ? p + 1 : f->text + strlen(f->text);
	v = xstrdup(p);
	for (p = v, q = v; *p != '\0'; p++)
		if (*p != '\r' && *p != '\n')
			*q++ = *p;
	*q = '\0';
	for (p = v; *p == ' ' || *p == '\t'; p++)
		;
	n = strlen(p);
	while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	memmove(v, p, n);
	v[n] = '\0';
	return v;
}

/* ---- address lists ---- */

int
message_addr_append(char ***addrs, size_t *naddrs, const char *addr)
{
	size_t i;

	for (i = 0; i < *naddrs; i++)
		if (strcmp((*addrs)[i], addr) == 0)
			return 0;
	*addrs = xreallocarray(*addrs, *naddrs + 1, sizeof(**addrs));
	(*addrs)[(*naddrs)++] = xstrdup(addr);
	return 1;
}

void
message_addrs_free(char **addrs, size_t naddrs)
{
	aliases_list_free(addrs, naddrs); /* the same kind of list */
}

/* The address of one mailbox: inside the angle brackets (a source route
 * dropped) when there were some, else the text outside comments with
 * unquoted blanks removed. */
static void
mailbox_finish(struct strbuf *outside, struct strbuf *angle, int has_angle,
    char ***addrs, size_t *naddrs)
{
	struct strbuf a = STRBUF_INIT;
	const char *s, *colon;
	int quoted = 0;

	if (has_angle) {
		s = angle->p != NULL ? angle->p : "";
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s == '@' && (colon = strchr(s, ':')) != NULL)
			s = colon + 1;
	} else
		s = outside->p != NULL ? outside->p : "";
	for (; *s != '\0'; s++) {
		if (*s == '"')
			quoted = !quoted;
		if (!quoted && (*s == ' ' || *s == '\t'))
			continue;
		strbuf_add(&a, s, 1);
	}
	if (a.len > 0)
		message_addr_append(addrs, naddrs, a.p);
	strbuf_free(&a);
	outside->len = 0;
	angle->len = 0;
	if (outside->p != NULL)
		outside->p[0] = '\0';
	if (angle->p != NULL)
		angle->p[0] = '\0';
}

/* Skips the comment at value[*i] == '('; nested comments and quoted
 * pairs are honoured. -1 when it never closes. */
static int
skip_comment(const char *value, size_t *i)
{
	size_t depth = 0;

	for (; value[*i] != '\0'; (*i)++) {
		if (value[*i] == '\\' && value[*i + 1] != '\0')
			(*i)++;
		else if (value[*i] == '(')
			depth++;
		else if (value[*i] == ')' && --depth == 0)
			return 0;
	}
	return -1;
}

/* Copies the quoted string at value[*i] == '"' into b, quotes and quoted
 * pairs included; *i ends on the closing quote. -1 when it never closes. */
static int
copy_quoted(const char *value, size_t *i, struct strbuf *b)
{
	strbuf_add(b, value + (*i)++, 1);
	for (; value[*i] != '\0'; (*i)++) {
		if (value[*i] == '\\' && value[*i + 1] != '\0') {
			strbuf_add(b, value + *i, 2);
			(*i)++;
			continue;
		}
		strbuf_add(b, value + *i, 1);
		if (value[*i] == '"')
			return 0;
	}
	return -1;
}

int
message_addrlist_parse(const char *value, char ***addrs, size_t *naddrs,
    char *err, size_t errlen)
{
	struct strbuf outside = STRBUF_INIT, angle = STRBUF_INIT;
	size_t i;
	int in_angle = 0, has_angle = 0, in_group = 0, rc = -1;

	for (i = 0; value[i] != '\0'; i++) {
		char c = value[i];
		struct strbuf *target = in_angle ? &angle : &outside;

		if (c == '(') {
			if (skip_comment(value, &i) == -1) {
				snprintf(err, errlen, "unbalanced comment in "
				    "\"%s\"", value);
				goto out;
			}
			strbuf_add(target, " ", 1);
		} else if (c == '"') {
			if (copy_quoted(value, &i, target) == -1) {
				snprintf(err, errlen, "unterminated quoted "
				    "string in \"%s\"", value);
				goto out;
			}
		} else if (c == '<' && !in_angle) {
			in_angle = has_angle = 1;
			angle.len = 0;
		} else if (c == '>' && in_angle) {
			in_angle = 0;
		} else if (c == ':' && !in_angle && !in_group) {
			/* A group: what came before is its name. */
			in_group = 1;
			outside.len = 0;
			if (outside.p != NULL)
				outside.p[0] = '\0';
		} else if ((c == ',' || (c == ';' && in_group)) && !in_angle) {
			mailbox_finish(&outside, &angle, has_angle, addrs,
			    naddrs);
			has_angle = 0;
			if (c == ';')
				in_group = 0;
		} else
			strbuf_add(target, &value[i], 1);
	}
	if (in_angle) {
		snprintf(err, errlen, "unclosed \"<\" in \"%s\"", value);
		goto out;
	}
	mailbox_finish(&outside, &angle, has_angle, addrs, naddrs);
	rc = 0;
out:
	strbuf_free(&outside);
	strbuf_free(&angle);
	return rc;
}

int
message_recipients(const struct message *m, int resent, char ***rcpts,
    size_t *nrcpts, char *err, size_t errlen)
{
	static const char *const plain[] = { "To", "Cc", "Bcc" };
	static const char *const re[] = { "Resent-To", "Resent-Cc",
		"Resent-Bcc" };
	const char *const *names = resent ? re : plain;
	char *value, why[512];
	size_t i, k;
	int rc;

	for (i = 0; i < m->nfields; i++) {
		for (k = 0; k < 3; k++)
			if (strcasecmp(m->fields[i].name, names[k]) == 0)
				break;
		if (k == 3)
			continue;
		value = message_value(&m->fields[i]);
		rc = message_addrlist_parse(value, rcpts, nrcpts, why,
		    sizeof(why));
		free(value);
		if (rc == -1) {
			snprintf(err, errlen, "%s: %s", m->fields[i].name, why);
			return -1;
		}
	}
	return 0;
}

int
message_has_8bit(const char *buf, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if ((unsigned char)buf[i] >= 0x80)
			return 1;
	return 0;
}

/* ---- completion ---- */

void
message_date(time_t t, char *buf, size_t bufsize)
{
	static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu",
		"Fri", "Sat" };
	static const char *const months[] = { "Jan", "Feb", "Mar", "Apr",
		"May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	struct tm tm;
	long off;

	localtime_r(&t, &tm);
	off = tm.tm_gmtoff / 60;
	snprintf(buf, bufsize, "%s, %02d %s %d %02d:%02d:%02d %c%02ld%02ld",
	    days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
	    tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
	    off < 0 ? '-' : '+', labs(off) / 60, labs(off) % 60);
}

/* RFC 2047 encoded words ("B" encoding, UTF-8), split at character
 * boundaries so that each word stays within 75 characters. */
static void
encode_words(struct strbuf *b, const char *s)
{
	unsigned char out[64];
	size_t n, len = strlen(s);
	int w;

	while (len > 0) {
		n = len < 45 ? len : 45;
		while (n < len && n > 1 && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
		w = EVP_EncodeBlock(out, (const unsigned char *)s, (int)n);
		if (b->len > 0 && b->p[b->len - 1] == '=')
			strbuf_adds(b, " ");
		strbuf_adds(b, "=?UTF-8?B?");
		strbuf_add(b, (const char *)out, (size_t)w);
		strbuf_adds(b, "?=");
		s += n;
		len -= n;
	}
}

char *
message_from_value(const char *name, const char *address)
{
	struct strbuf b = STRBUF_INIT;
	const char *p;
	int special = 0, eight = 0;

	if (name == NULL || name[0] == '\0') {
		strbuf_adds(&b, address);
		return strbuf_take(&b, NULL);
	}
	for (p = name; *p != '\0'; p++) {
		if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20 ||
		    *p == 0x7f)
			eight = 1;
		else if (strchr("()<>[]:;@\\,.\"", *p) != NULL)
			special = 1;
	}
	if (eight)
		encode_words(&b, name);
	else if (special) {
		strbuf_adds(&b, "\"");
		for (p = name; *p != '\0'; p++) {
			if (*p == '"' || *p == '\\')
				strbuf_adds(&b, "\\");
			strbuf_add(&b, p, 1);
		}
		strbuf_adds(&b, "\"");
	} else
		strbuf_adds(&b, name);
	strbuf_adds(&b, " <");
	strbuf_adds(&b, address);
	strbuf_adds(&b, ">");
	return strbuf_take(&b, NULL);
}

char *
message_gecos_name(const char *gecos, const char *login)
{
	struct strbuf b = STRBUF_INIT;
	const char *p;
	char first;

	for (p = gecos != NULL ? gecos : ""; *p != '\0' && *p != ','; p++) {
		if (*p != '&') {
			strbuf_add(&b, p, 1);
			continue;
		}
		if (login[0] == '\0')
			continue;
		first = (char)toupper((unsigned char)login[0]);
		strbuf_add(&b, &first, 1);
		strbuf_adds(&b, login + 1);
	}
	return strbuf_take(&b, NULL);
}

char *
message_serialize(const struct message *m, size_t *len)
{
	struct strbuf b = STRBUF_INIT;
	size_t i;

	for (i = 0; i < m->nfields; i++)
		strbuf_adds(&b, m->fields[i].text);
	strbuf_add(&b, "\r\n", 2);
	strbuf_add(&b, m->body, m->bodylen);
	return strbuf_take(&b, len);
}
