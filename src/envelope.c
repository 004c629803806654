/*
 * The envelope and its on-disk text. Everything here is a pure function over
 * memory: queue.c owns the files and decides what a decoding error means.
 *
 * Encoding, version 2 (every line ends with '\n', the block with an empty
 * line):
 *
 *	smarthostd-envelope 2
 *	id 01HF3C0A2B7D9E10
 *	sender alice@example.org
 *	relay upstream                  (only when set)
 *	client localhost[127.0.0.1]     (only when set)
 *	uid 1000                        (only when known)
 *	flags 0
 *	created 1700000000
 *	next-try 0
 *	attempts 0
 *	rcpt bob@example.org pending - -
 *	rcpt carol@example.org failed 5.1.1 550%205.1.1%20No%20such%20user
 *
 * Each line is a key and space-separated fields. A field is percent-escaped:
 * '%', bytes up to and including the space and bytes from 0x7f up are
 * written as %XX, so any byte but NUL (which a C string cannot hold)
 * round-trips and a field never contains a space or a line end. A field that
 * is exactly "-" means the empty string (a literal "-" is written "%2D"), so
 * the null sender <> is "sender -". A recipient's reply of NULL and of ""
 * are both written "-" and read back as NULL: "no reply".
 *
 * The decoder is strict. Unknown keys, a repeated key, a missing required
 * key, raw control bytes, bad escapes and out-of-range numbers are all
 * errors: a file this version does not fully understand is moved aside by
 * the queue rather than half-understood, because guessing wrong here means
 * sending mail twice or not at all. A new field means a new version number.
 * Version 2 added the optional "uid" key (the local user who submitted the
 * message); version 1 files, which cannot have it, are still read. An
 * envelope without a uid is written as version 1, so a spool stays readable
 * by the previous release as long as nothing needs the new key.
 *
 * body_size and body_offset are not encoded: they are only known once the
 * body has been written, and queue.c keeps them in its own fixed preamble.
 *
 * State records (envelope_state_record) are single lines appended after the
 * body each time delivery state changes:
 *
 *	S <attempts> <next-try> <flags> <nrcpts> {<status> <dsn> <reply>} <crc>
 *
 * with one status-dsn-reply triple per recipient, in envelope order.
 *
 * Every record is a full snapshot, not a delta, so the newest valid record
 * alone determines the state and a damaged record in the middle costs only
 * that update. <crc> is the CRC-32 (8 lowercase hex digits) of everything
 * before the space that precedes it; together with the final '\n' it tells a
 * complete record from a torn or garbled one, which matters on a spool
 * filesystem without a journal, where a crash can leave stale blocks at the
 * end of an extended file.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "log.h"
#include "strbuf.h"
#include "xmalloc.h"

#define ENVELOPE_MAGIC "smarthostd-envelope "
#define ENVELOPE_VERSION 2
#define ENVELOPE_VERSION_MIN 1

static const char *const rcpt_status_names[] = {
	[RCPT_PENDING] = "pending",
	[RCPT_SENT] = "sent",
	[RCPT_FAILED] = "failed",
};
_Static_assert(sizeof(rcpt_status_names) / sizeof(rcpt_status_names[0]) ==
    RCPT_FAILED + 1, "rcpt_status_names must name every rcpt_status");

static int
needs_escape(unsigned char c)
{
	return c <= ' ' || c >= 0x7f || c == '%';
}

/* Appends " " and the escaped field s (NULL or "" become "-"). */
static void
buf_add_field(struct strbuf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;
	char esc[3];

	strbuf_add(b, " ", 1);
	if (s == NULL || *s == '\0') {
		strbuf_add(b, "-", 1);
		return;
	}
	if (strcmp(s, "-") == 0) {
		strbuf_add(b, "%2D", 3);
		return;
	}
	for (p = (const unsigned char *)s; *p != '\0'; p++) {
		if (!needs_escape(*p)) {
			strbuf_add(b, (const char *)p, 1);
			continue;
		}
		esc[0] = '%';
		esc[1] = hex[*p >> 4];
		esc[2] = hex[*p & 0xf];
		strbuf_add(b, esc, 3);
	}
}

/*
 * CRC-32 (IEEE, as zlib), bit by bit: records are short and checked once at
 * start-up, so a table buys nothing.
 */
static uint32_t
crc32_buf(const void *data, size_t len)
{
	const unsigned char *p = data;
	uint32_t crc = 0xffffffffu;
	size_t i;
	int k;

	for (i = 0; i < len; i++) {
		crc ^= p[i];
		for (k = 0; k < 8; k++)
			crc = (crc & 1) ? 0xedb88320u ^ (crc >> 1) : crc >> 1;
	}
	return ~crc;
}

struct envelope *
envelope_new(void)
{
	struct envelope *env;

	env = xcalloc(1, sizeof(*env));
	env->sender = xstrdup("");
	return env;
}

struct envelope *
envelope_dup(const struct envelope *env)
{
	struct envelope *d;
	size_t i;

	d = xcalloc(1, sizeof(*d));
	*d = *env;
	d->sender = xstrdup(env->sender != NULL ? env->sender : "");
	d->relay = env->relay != NULL ? xstrdup(env->relay) : NULL;
	d->client = env->client != NULL ? xstrdup(env->client) : NULL;
	d->rcpts = NULL;
	if (env->nrcpts > 0) {
		d->rcpts = xcalloc(env->nrcpts, sizeof(*d->rcpts));
		for (i = 0; i < env->nrcpts; i++) {
			d->rcpts[i] = env->rcpts[i];
			d->rcpts[i].addr = xstrdup(env->rcpts[i].addr);
			d->rcpts[i].reply = env->rcpts[i].reply != NULL ?
			    xstrdup(env->rcpts[i].reply) : NULL;
		}
	}
	return d;
}

void
envelope_free(struct envelope *env)
{
	size_t i;

	if (env == NULL)
		return;
	for (i = 0; i < env->nrcpts; i++) {
		free(env->rcpts[i].addr);
		free(env->rcpts[i].reply);
	}
	free(env->rcpts);
	free(env->sender);
	free(env->relay);
	free(env->client);
	free(env);
}

void
envelope_add_rcpt(struct envelope *env, const char *addr)
{
	struct envelope_rcpt *r;

	env->rcpts = xreallocarray(env->rcpts, env->nrcpts + 1,
	    sizeof(*env->rcpts));
	r = &env->rcpts[env->nrcpts++];
	memset(r, 0, sizeof(*r));
	r->addr = xstrdup(addr);
	r->status = RCPT_PENDING;
}

size_t
envelope_count(const struct envelope *env, enum rcpt_status status)
{
	size_t i, n = 0;

	for (i = 0; i < env->nrcpts; i++)
		if (env->rcpts[i].status == status)
			n++;
	return n;
}

void
envelope_set_rcpt(struct envelope *env, size_t idx, enum rcpt_status status,
    const char *dsn, const char *reply)
{
	struct envelope_rcpt *r;

	if (idx >= env->nrcpts)
		fatalx("%s: recipient %zu of %zu", __func__, idx, env->nrcpts);
	r = &env->rcpts[idx];
	r->status = status;
	/* dsn is an enhanced status code ("5.1.1"): short by definition. */
	snprintf(r->dsn, sizeof(r->dsn), "%s", dsn != NULL ? dsn : "");
	free(r->reply);
	r->reply = reply != NULL ? xstrdup(reply) : NULL;
}

uint64_t
envelope_id_number(const char *id)
{
	return strtoull(id, NULL, 16);
}

void
envelope_id_text(uint64_t v, char *buf, size_t len)
{
	snprintf(buf, len, "%016" PRIX64, v);
}

char *
envelope_encode(const struct envelope *env, size_t *len)
{
	struct strbuf b = STRBUF_INIT;
	size_t i;

	strbuf_addf(&b, "%s%d\n", ENVELOPE_MAGIC,
	    env->uid_known ? ENVELOPE_VERSION : ENVELOPE_VERSION_MIN);
	strbuf_add(&b, "id", 2);
	buf_add_field(&b, env->id);
	strbuf_add(&b, "\nsender", 7);
	buf_add_field(&b, env->sender);
	if (env->relay != NULL) {
		strbuf_add(&b, "\nrelay", 6);
		buf_add_field(&b, env->relay);
	}
	if (env->client != NULL) {
		strbuf_add(&b, "\nclient", 7);
		buf_add_field(&b, env->client);
	}
	if (env->uid_known)
		strbuf_addf(&b, "\nuid %ju", (uintmax_t)env->uid);
	strbuf_addf(&b, "\nflags %u\ncreated %jd\nnext-try %jd\nattempts %u\n",
	    env->flags, (intmax_t)env->created, (intmax_t)env->next_try,
	    env->attempts);
	for (i = 0; i < env->nrcpts; i++) {
		strbuf_add(&b, "rcpt", 4);
		buf_add_field(&b, env->rcpts[i].addr);
		buf_add_field(&b, rcpt_status_names[env->rcpts[i].status]);
		buf_add_field(&b, env->rcpts[i].dsn);
		buf_add_field(&b, env->rcpts[i].reply);
		strbuf_add(&b, "\n", 1);
	}
	strbuf_add(&b, "\n", 1);
	return strbuf_take(&b, len);
}

/*
 * Decoding. A line is split in place into at most MAX_FIELDS fields; each
 * field is unescaped into a fresh string by field_decode().
 */
#define MAX_FIELDS 8

struct line {
	const char *f[MAX_FIELDS];
	size_t flen[MAX_FIELDS];
	size_t n;
};

/* Splits p[0..len) (no '\n') at single spaces; -1 on raw control bytes,
 * empty fields or too many fields. */
static int
line_split(const char *p, size_t len, struct line *l, size_t maxfields)
{
	size_t i, start = 0;
	unsigned char c;

	l->n = 0;
	for (i = 0; i <= len; i++) {
		if (i < len) {
			c = (unsigned char)p[i];
			if (c != ' ' && (c < 0x21 || c > 0x7e))
				return -1;
			if (c != ' ')
				continue;
		}
		if (i == start || l->n == maxfields)
			return -1;
		l->f[l->n] = p + start;
		l->flen[l->n] = i - start;
		l->n++;
		start = i + 1;
	}
	return 0;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Unescapes one field into a new string; NULL if the escape is bad or
 * decodes to NUL. "-" gives "". */
static char *
field_decode(const char *f, size_t len)
{
	char *out, *o;
	size_t i;
	int hi, lo;

	if (len == 1 && f[0] == '-')
		return xstrdup("");
	o = out = xmalloc(len + 1);
	for (i = 0; i < len; i++) {
		if (f[i] != '%') {
			*o++ = f[i];
			continue;
		}
		if (i + 2 >= len) {
			free(out);
			return NULL;
		}
		hi = hexval(f[i + 1]);
		lo = hexval(f[i + 2]);
		if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
			free(out);
			return NULL;
		}
		*o++ = (char)(hi << 4 | lo);
		i += 2;
	}
	*o = '\0';
	return out;
}

/* Exact comparison of a field with a literal. */
static int
field_is(const struct line *l, size_t i, const char *s)
{
	return l->flen[i] == strlen(s) && memcmp(l->f[i], s, l->flen[i]) == 0;
}

/* Strict unsigned decimal: no sign, no spaces, no leading zeros beyond
 * "0", at most max. */
static int
field_uint(const char *f, size_t len, uintmax_t max, uintmax_t *out)
{
	uintmax_t v = 0;
	size_t i;

	if (len == 0 || (len > 1 && f[0] == '0'))
		return -1;
	for (i = 0; i < len; i++) {
		if (f[i] < '0' || f[i] > '9')
			return -1;
		if (v > (max - (uintmax_t)(f[i] - '0')) / 10)
			return -1;
		v = v * 10 + (uintmax_t)(f[i] - '0');
	}
	*out = v;
	return 0;
}

static int
field_time(const char *f, size_t len, time_t *out)
{
	uintmax_t v;

	/* time_t is a signed 64-bit type on every platform we build for. */
	_Static_assert(sizeof(time_t) >= 8, "time_t must be 64 bits");
	if (field_uint(f, len, INT64_MAX, &v) == -1)
		return -1;
	*out = (time_t)v;
	return 0;
}

static int
status_parse(const char *f, size_t len, enum rcpt_status *out)
{
	size_t i;

	for (i = 0; i < sizeof(rcpt_status_names) /
	    sizeof(rcpt_status_names[0]); i++) {
		if (strlen(rcpt_status_names[i]) == len &&
		    memcmp(rcpt_status_names[i], f, len) == 0) {
			*out = (enum rcpt_status)i;
			return 0;
		}
	}
	return -1;
}

/* Decodes status, dsn and reply of one recipient from three fields. */
static int
rcpt_state_parse(const struct line *l, size_t i, struct envelope_rcpt *r)
{
	char *dsn;

	if (status_parse(l->f[i], l->flen[i], &r->status) == -1)
		return -1;
	if ((dsn = field_decode(l->f[i + 1], l->flen[i + 1])) == NULL)
		return -1;
	if (strlen(dsn) >= sizeof(r->dsn)) {
		free(dsn);
		return -1;
	}
	memcpy(r->dsn, dsn, strlen(dsn) + 1);
	free(dsn);
	if ((r->reply = field_decode(l->f[i + 2], l->flen[i + 2])) == NULL)
		return -1;
	if (r->reply[0] == '\0') {
		free(r->reply);
		r->reply = NULL;
	}
	return 0;
}

enum {
	SEEN_ID = 1 << 0,
	SEEN_SENDER = 1 << 1,
	SEEN_RELAY = 1 << 2,
	SEEN_CLIENT = 1 << 3,
	SEEN_FLAGS = 1 << 4,
	SEEN_CREATED = 1 << 5,
	SEEN_NEXT_TRY = 1 << 6,
	SEEN_ATTEMPTS = 1 << 7,
	SEEN_UID = 1 << 8,
	SEEN_REQUIRED = SEEN_ID | SEEN_SENDER | SEEN_FLAGS | SEEN_CREATED |
	    SEEN_NEXT_TRY | SEEN_ATTEMPTS,
};

/* Decodes one "key fields..." line of the envelope block into env. */
static int
envelope_decode_line(struct envelope *env, const struct line *l,
    int version, unsigned *seen, const char **why)
{
	uintmax_t v;
	char *s;
	unsigned bit;
	struct envelope_rcpt r;

	if (field_is(l, 0, "rcpt")) {
		if (l->n != 5) {
			*why = "rcpt: wrong number of fields";
			return -1;
		}
		memset(&r, 0, sizeof(r));
		if ((r.addr = field_decode(l->f[1], l->flen[1])) == NULL ||
		    rcpt_state_parse(l, 2, &r) == -1) {
			free(r.addr);
			free(r.reply);
			*why = "rcpt: malformed";
			return -1;
		}
		env->rcpts = xreallocarray(env->rcpts, env->nrcpts + 1,
		    sizeof(*env->rcpts));
		env->rcpts[env->nrcpts++] = r;
		return 0;
	}

	if (l->n != 2) {
		*why = "wrong number of fields";
		return -1;
	}
	if (field_is(l, 0, "id"))
		bit = SEEN_ID;
	else if (field_is(l, 0, "sender"))
		bit = SEEN_SENDER;
	else if (field_is(l, 0, "relay"))
		bit = SEEN_RELAY;
	else if (field_is(l, 0, "client"))
		bit = SEEN_CLIENT;
	else if (field_is(l, 0, "flags"))
		bit = SEEN_FLAGS;
	else if (field_is(l, 0, "created"))
		bit = SEEN_CREATED;
	else if (field_is(l, 0, "next-try"))
		bit = SEEN_NEXT_TRY;
	else if (field_is(l, 0, "attempts"))
		bit = SEEN_ATTEMPTS;
	else if (field_is(l, 0, "uid") && version >= 2)
		bit = SEEN_UID;
	else {
		*why = "unknown key";
		return -1;
	}
	if (*seen & bit) {
		*why = "repeated key";
		return -1;
	}
	*seen |= bit;

	switch (bit) {
	case SEEN_ID:
	case SEEN_SENDER:
	case SEEN_RELAY:
	case SEEN_CLIENT:
		if ((s = field_decode(l->f[1], l->flen[1])) == NULL) {
			*why = "bad escape";
			return -1;
		}
		if (bit == SEEN_ID) {
			if (strlen(s) >= sizeof(env->id)) {
				free(s);
				*why = "id too long";
				return -1;
			}
			memcpy(env->id, s, strlen(s) + 1);
			free(s);
		} else if (bit == SEEN_SENDER) {
			free(env->sender);
			env->sender = s;
		} else if (bit == SEEN_RELAY)
			env->relay = s;
		else
			env->client = s;
		return 0;
	case SEEN_FLAGS:
	case SEEN_ATTEMPTS:
		if (field_uint(l->f[1], l->flen[1], UINT_MAX, &v) == -1) {
			*why = "bad number";
			return -1;
		}
		if (bit == SEEN_FLAGS)
			env->flags = (unsigned)v;
		else
			env->attempts = (unsigned)v;
		return 0;
	case SEEN_UID:
		/* (uid_t)-1 means "no user" to the kernel: never a uid. */
		if (field_uint(l->f[1], l->flen[1], (uid_t)-1 - 1, &v) == -1) {
			*why = "bad number";
			return -1;
		}
		env->uid = (uid_t)v;
		env->uid_known = 1;
		return 0;
	case SEEN_CREATED:
	case SEEN_NEXT_TRY:
		if (field_time(l->f[1], l->flen[1], bit == SEEN_CREATED ?
		    &env->created : &env->next_try) == -1) {
			*why = "bad time";
			return -1;
		}
		return 0;
	}
	*why = "internal error";
	return -1;
}

struct envelope *
envelope_decode(const char *buf, size_t len, size_t *used, char *err,
    size_t errlen)
{
	struct envelope *env = NULL;
	struct line l;
	const char *p = buf, *end = buf + len, *nl, *why;
	unsigned seen = 0;
	size_t lineno = 1, vlen;
	int version;

	*used = 0;
	if ((nl = memchr(p, '\n', len)) == NULL) {
		snprintf(err, errlen, "truncated: no version line");
		return NULL;
	}
	vlen = strlen(ENVELOPE_MAGIC);
	if ((size_t)(nl - p) < vlen || memcmp(p, ENVELOPE_MAGIC, vlen) != 0) {
		snprintf(err, errlen, "not an envelope (bad magic)");
		return NULL;
	}
	if ((size_t)(nl - p) != vlen + 1 ||
	    p[vlen] < '0' + ENVELOPE_VERSION_MIN ||
	    p[vlen] > '0' + ENVELOPE_VERSION) {
		/* Quote the version only if it is one: err reaches the log. */
		p += vlen;
		vlen = strspn(p, "0123456789");
		if (vlen > 0 && vlen <= 9 && p + vlen == nl)
			snprintf(err, errlen, "unknown envelope version %.*s",
			    (int)vlen, p);
		else
			snprintf(err, errlen, "unknown envelope version");
		return NULL;
	}
	version = p[vlen] - '0';
	p = nl + 1;

	env = envelope_new();
	for (;;) {
		lineno++;
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL) {
			snprintf(err, errlen, "truncated at line %zu", lineno);
			goto fail;
		}
		if (nl == p)
			break;	/* the empty line ends the envelope */
		if (line_split(p, (size_t)(nl - p), &l, MAX_FIELDS) == -1) {
			snprintf(err, errlen, "line %zu: malformed", lineno);
			goto fail;
		}
		if (envelope_decode_line(env, &l, version, &seen,
		    &why) == -1) {
			snprintf(err, errlen, "line %zu: %.*s: %s", lineno,
			    (int)(l.flen[0] > 16 ? 16 : l.flen[0]), l.f[0],
			    why);
			goto fail;
		}
		p = nl + 1;
	}
	if ((seen & SEEN_REQUIRED) != SEEN_REQUIRED) {
		snprintf(err, errlen, "missing required key");
		goto fail;
	}
	*used = (size_t)(nl + 1 - buf);
	return env;

 fail:
	envelope_free(env);
	return NULL;
}

char *
envelope_state_record(const struct envelope *env, size_t *len)
{
	struct strbuf b = STRBUF_INIT;
	size_t i;
	uint32_t crc;

	strbuf_addf(&b, "S %u %jd %u %zu", env->attempts,
	    (intmax_t)env->next_try, env->flags, env->nrcpts);
	for (i = 0; i < env->nrcpts; i++) {
		buf_add_field(&b, rcpt_status_names[env->rcpts[i].status]);
		buf_add_field(&b, env->rcpts[i].dsn);
		buf_add_field(&b, env->rcpts[i].reply);
	}
	crc = crc32_buf(b.p, b.len);
	strbuf_addf(&b, " %08" PRIx32 "\n", crc);
	return strbuf_take(&b, len);
}

/* Splits a record line into fields without a fixed limit. */
static const char **
record_split(const char *p, size_t len, size_t **lens, size_t *n)
{
	const char **f = NULL;
	size_t i, start = 0, cap = 0;
	unsigned char c;

	*n = 0;
	*lens = NULL;
	for (i = 0; i <= len; i++) {
		if (i < len) {
			c = (unsigned char)p[i];
			if (c != ' ' && (c < 0x21 || c > 0x7e))
				goto fail;
			if (c != ' ')
				continue;
		}
		if (i == start)
			goto fail;
		if (*n == cap) {
			cap = cap ? cap * 2 : 16;
			f = xreallocarray(f, cap, sizeof(*f));
			*lens = xreallocarray(*lens, cap, sizeof(**lens));
		}
		f[*n] = p + start;
		(*lens)[*n] = i - start;
		(*n)++;
		start = i + 1;
	}
	return f;

 fail:
	free(f);
	free(*lens);
	*lens = NULL;
	*n = 0;
	return NULL;
}

int
envelope_apply_record(struct envelope *env, const char *line, size_t len)
{
	struct envelope_rcpt *st = NULL;
	const char **f = NULL;
	size_t *flen = NULL, nf = 0, i, body;
	uintmax_t attempts, flags, nrcpts;
	time_t next_try;
	uint32_t crc;
	char crchex[9];
	int ret = -1;
	struct line l;

	/* A record is complete only with its '\n'; a torn one has none. */
	if (len < 11 || line[len - 1] != '\n' ||
	    memchr(line, '\n', len - 1) != NULL)
		return -1;
	len--;
	/* " xxxxxxxx" at the end: the CRC of everything before it. */
	body = len - 9;
	if (line[body] != ' ')
		return -1;
	crc = crc32_buf(line, body);
	snprintf(crchex, sizeof(crchex), "%08" PRIx32, crc);
	if (memcmp(line + body + 1, crchex, 8) != 0)
		return -1;

	if ((f = record_split(line, body, &flen, &nf)) == NULL)
		return -1;
	if (nf < 5 || flen[0] != 1 || f[0][0] != 'S')
		goto done;
	if (field_uint(f[1], flen[1], UINT_MAX, &attempts) == -1 ||
	    field_time(f[2], flen[2], &next_try) == -1 ||
	    field_uint(f[3], flen[3], UINT_MAX, &flags) == -1 ||
	    field_uint(f[4], flen[4], SIZE_MAX, &nrcpts) == -1)
		goto done;
	/* A snapshot of a different recipient list is not ours. */
	if (nrcpts != env->nrcpts || (nf - 5) / 3 != nrcpts ||
	    (nf - 5) % 3 != 0)
		goto done;

	/* Parse everything first, so that a bad record changes nothing. */
	if (nrcpts > 0)
		st = xcalloc(nrcpts, sizeof(*st));
	for (i = 0; i < nrcpts; i++) {
		l.n = 3;
		l.f[0] = f[5 + 3 * i];
		l.flen[0] = flen[5 + 3 * i];
		l.f[1] = f[6 + 3 * i];
		l.flen[1] = flen[6 + 3 * i];
		l.f[2] = f[7 + 3 * i];
		l.flen[2] = flen[7 + 3 * i];
		if (rcpt_state_parse(&l, 0, &st[i]) == -1)
			goto done;
	}

	env->attempts = (unsigned)attempts;
	env->next_try = next_try;
	env->flags = (unsigned)flags;
	for (i = 0; i < nrcpts; i++) {
		env->rcpts[i].status = st[i].status;
		memcpy(env->rcpts[i].dsn, st[i].dsn, sizeof(st[i].dsn));
		free(env->rcpts[i].reply);
		env->rcpts[i].reply = st[i].reply;
		st[i].reply = NULL;
	}
	ret = 0;

 done:
	if (st != NULL) {
		for (i = 0; i < nrcpts; i++)
			free(st[i].reply);
		free(st);
	}
	free(f);
	free(flen);
	return ret;
}
