/*
 * Maildrop file encoding (see dropfile.h). Pure functions over memory.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dropfile.h"
#include "smtp_proto.h"
#include "xmalloc.h"

#define MAGIC "smarthost-maildrop 1\n"

char *
dropfile_header(uid_t uid, const char *sender, const char *const *rcpts,
    size_t nrcpts, size_t *len)
{
	size_t i, cap, n;
	char *p;

	cap = sizeof(MAGIC) + 32 + strlen(sender) + 16;
	for (i = 0; i < nrcpts; i++)
		cap += strlen(rcpts[i]) + 16;
	p = xmalloc(cap);
	n = (size_t)snprintf(p, cap, "%suid %ju\nsender <%s>\n", MAGIC,
	    (uintmax_t)uid, sender);
	for (i = 0; i < nrcpts; i++)
		n += (size_t)snprintf(p + n, cap - n, "rcpt <%s>\n", rcpts[i]);
	n += (size_t)snprintf(p + n, cap - n, "\n");
	*len = n;
	return p;
}

size_t
dropfile_trailer(char *buf, size_t bufsize, off_t size)
{
	int n = snprintf(buf, bufsize, "end %jd\n", (intmax_t)size);

	return n > 0 && (size_t)n < bufsize ? (size_t)n : 0;
}

void
dropfile_clear(struct dropfile *df)
{
	size_t i;

	free(df->sender);
	for (i = 0; i < df->nrcpts; i++)
		free(df->rcpts[i]);
	free(df->rcpts);
	memset(df, 0, sizeof(*df));
}

/* "<addr>" of n bytes into a new string; NULL if malformed. */
static char *
path_take(const char *p, size_t n, int allow_null, int *utf8)
{
	char *addr;
	size_t i;

	if (n < 2 || p[0] != '<' || p[n - 1] != '>' || n - 2 >= SMTP_PATH_MAX)
		return NULL;
	addr = xstrndup(p + 1, n - 2);
	for (i = 0; addr[i] != '\0'; i++)
		if ((unsigned char)addr[i] >= 0x80)
			*utf8 = 1;
	if (strlen(addr) != n - 2 || (addr[0] == '\0' ? !allow_null :
	    !smtp_mailbox_valid(addr, *utf8))) {
		free(addr);
		return NULL;
	}
	return addr;
}

/* A decimal uid, at most (uid_t)-2. */
static int
uid_parse(const char *p, size_t n, uid_t *out)
{
	uintmax_t v = 0;
	size_t i;

	if (n == 0 || n > 10 || (n > 1 && p[0] == '0'))
		return -1;
	for (i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		v = v * 10 + (uintmax_t)(p[i] - '0');
	}
	if (v >= (uid_t)-1)
		return -1;
	*out = (uid_t)v;
	return 0;
}

static int
header_line(struct dropfile *df, const char *p, size_t n, int *seen,
    const char **why)
{
	char *addr;
	size_t i;

	for (i = 0; i < n; i++)
		if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f) {
			*why = "control byte";
			return -1;
		}
	if (n > 4 && memcmp(p, "uid ", 4) == 0) {
		if (*seen & 1 || uid_parse(p + 4, n - 4, &df->uid) == -1) {
			*why = "bad or repeated uid";
			return -1;
		}
		*seen |= 1;
		return 0;
	}
	if (n > 7 && memcmp(p, "sender ", 7) == 0) {
		if (*seen & 2 || (addr = path_take(p + 7, n - 7, 1,
		    &df->utf8)) == NULL) {
			*why = "bad or repeated sender";
			return -1;
		}
		df->sender = addr;
		*seen |= 2;
		return 0;
	}
	if (n > 5 && memcmp(p, "rcpt ", 5) == 0) {
		if ((addr = path_take(p + 5, n - 5, 0, &df->utf8)) == NULL) {
			*why = "bad recipient";
			return -1;
		}
		df->rcpts = xreallocarray(df->rcpts, df->nrcpts + 1,
		    sizeof(*df->rcpts));
		df->rcpts[df->nrcpts++] = addr;
		return 0;
	}
	*why = "unknown key";
	return -1;
}

int
dropfile_parse_header(const char *buf, size_t len, struct dropfile *df,
    size_t *hdrlen, char *err, size_t errlen)
{
	const char *p = buf, *end, *nl, *why = NULL;
	size_t lineno = 1;
	int seen = 0;

	memset(df, 0, sizeof(*df));
	if (len > DROPFILE_HEADER_MAX)
		len = DROPFILE_HEADER_MAX;
	end = buf + len;
	if (len < sizeof(MAGIC) - 1 || memcmp(buf, MAGIC,
	    sizeof(MAGIC) - 1) != 0) {
		snprintf(err, errlen, "not a maildrop file (bad magic or "
		    "version)");
		return -1;
	}
	p += sizeof(MAGIC) - 1;
	for (;;) {
		lineno++;
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL) {
			snprintf(err, errlen, "header truncated or too long "
			    "at line %zu", lineno);
			goto fail;
		}
		if (nl == p)
			break;
		if (header_line(df, p, (size_t)(nl - p), &seen, &why) == -1) {
			snprintf(err, errlen, "header line %zu: %s", lineno,
			    why);
			goto fail;
		}
		p = nl + 1;
	}
	if (seen != 3 || df->nrcpts == 0) {
		snprintf(err, errlen, "header lacks uid, sender or recipient");
		goto fail;
	}
	*hdrlen = (size_t)(nl + 1 - buf);
	return 0;

fail:
	dropfile_clear(df);
	return -1;
}

off_t
dropfile_check_trailer(const char *tail, size_t taillen, off_t filesize,
    size_t hdrlen, char *err, size_t errlen)
{
	const char *p, *digits;
	size_t n;
	uintmax_t v = 0;

	if (taillen < 6 || tail[taillen - 1] != '\n') {
		snprintf(err, errlen, "truncated: no trailer");
		return -1;
	}
	/* The trailer is the last line. */
	p = tail + taillen - 1;
	while (p > tail && p[-1] != '\n')
		p--;
	n = (size_t)(tail + taillen - 1 - p);
	if (n < 5 || memcmp(p, "end ", 4) != 0) {
		snprintf(err, errlen, "truncated: no trailer");
		return -1;
	}
	digits = p + 4;
	n -= 4;
	if (n > 19 || strspn(digits, "0123456789") < n) {
		snprintf(err, errlen, "malformed trailer");
		return -1;
	}
	while (n-- > 0)
		v = v * 10 + (uintmax_t)(*digits++ - '0');
	/* header + message + trailer must be the whole file. */
	if ((uintmax_t)filesize != (uintmax_t)hdrlen + v +
	    (uintmax_t)(tail + taillen - p)) {
		snprintf(err, errlen, "truncated or extended: length does not "
		    "match the trailer");
		return -1;
	}
	return (off_t)v;
}
