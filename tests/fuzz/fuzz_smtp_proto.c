/*
 * libFuzzer target for the SMTP syntax in smtp_proto.c: the reply parser
 * (fed line by line), the EHLO keyword parser, command splitting, path and
 * parameter parsing, mailbox checks and the body encoder, whose output
 * must stay within the bound its header promises, be CRLF-only, match
 * a byte-at-a-time reference and keep every well-formed UTF-8 character
 * whole (counted by escape.c's decoder), with and without a line limit (a
 * small one taken from the input, so short inputs reach the breaks).
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "escape.h"
#include "smtp_proto.h"

static void
fuzz_reply(const char *data, size_t size)
{
	struct smtp_reply_parser p;
	const char *line = data, *end = data + size, *nl;

	smtp_reply_parser_init(&p);
	while (line < end) {
		nl = memchr(line, '\n', (size_t)(end - line));
		if (nl == NULL)
			nl = end;
		if (smtp_reply_feed(&p, line, (size_t)(nl - line)) ==
		    SMTP_REPLY_DONE) {
			assert(p.reply.code >= 200 && p.reply.code <= 599);
			assert(strlen(p.reply.text) < sizeof(p.reply.text));
			assert(p.reply.nlines <= SMTP_REPLY_MAX_LINES);
		}
		line = nl + 1;
	}
}

static void
fuzz_command(const char *s, size_t size)
{
	char verb[16], addr[SMTP_PATH_MAX], key[64], value[256];
	struct smtp_ehlo ehlo;
	const char *arg, *params, *why, *cur;

	smtp_ehlo_parse(s, &ehlo);
	if (smtp_cmd_split(s, size, verb, sizeof(verb), &arg) == -1)
		return;
	assert(strlen(verb) < sizeof(verb));
	if (smtp_path_parse(arg, "FROM:", addr, sizeof(addr), &params,
	    &why) == 0 || smtp_path_parse(arg, "TO:", addr, sizeof(addr),
	    &params, &why) == 0) {
		assert(strlen(addr) < sizeof(addr));
		(void)smtp_mailbox_valid(addr, 0);
		(void)smtp_mailbox_valid(addr, 1);
		cur = params;
		while (smtp_param_next(&cur, key, sizeof(key), value,
		    sizeof(value)) == 1)
			;
	}
}

/* The length of the UTF-8 character that s[0..n) (n of 1 to 3) can be
 * the start of, or 0: escape.c's decoder, asked about the prefix
 * completed with every possible second byte and 0x80 after it. */
static size_t
ref_prefix(const unsigned char *s, size_t n)
{
	unsigned char t[4];
	unsigned b;
	size_t len;

	for (b = 0x80; b <= 0xbf; b++) {
		memset(t, 0x80, sizeof(t));
		memcpy(t, s, n);
		if (n == 1)
			t[1] = (unsigned char)b;
		len = escape_utf8_len((const char *)t, sizeof(t));
		if (len >= n && len > 0)
			return len;
		if (n > 1)
			break;
	}
	return 0;
}

/* The encoder's rules one byte at a time, the way the header states
 * them: smtp_body_encode() copies runs at once and must agree. */
static size_t
body_reference(struct smtp_body_encoder *e, const char *in, size_t len,
    char *out)
{
	int utf8 = e->limit >= SMTP_FOLD_UTF8_MIN;
	size_t i, n = 0, clen;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];

		if (e->saw_cr) {
			e->saw_cr = 0;
			if (c == '\n')
				continue;
		}
		if (c == '\r' || c == '\n') {
			memcpy(out + n, e->held, e->nheld);
			n += e->nheld;
			e->nheld = 0;
			out[n++] = '\r';
			out[n++] = '\n';
			e->saw_cr = c == '\r';
			e->at_bol = 1;
			e->col = 0;
			continue;
		}
		if (c == '\0')
			continue;
		if (e->at_bol && c == '.')
			out[n++] = '.';
		e->at_bol = 0;
		if (e->nheld > 0) {
			/* a character held at the limit: whole to the
			 * continuation, or out as it is when c shows it is
			 * ill-formed */
			e->held[e->nheld] = c;
			if (ref_prefix(e->held, e->nheld + 1) > 0) {
				if (e->col < e->limit) {
					e->nheld++;
					e->col++;
					continue;
				}
				memcpy(out + n, "\r\n ", 3);
				memcpy(out + n + 3, e->held, e->nheld + 1);
				n += 3 + e->nheld + 1;
				e->col = 1 + e->nheld + 1;
				e->nheld = 0;
				e->folds++;
				continue;
			}
			memcpy(out + n, e->held, e->nheld);
			n += e->nheld;
			e->nheld = 0;
		}
		if (e->limit > 0 && e->col == e->limit) {
			memcpy(out + n, "\r\n ", 3);
			n += 3;
			e->col = 1;
			e->folds++;
		}
		e->col++;
		/* a character that cannot end by the limit waits (none
		 * is longer than 4: the decoder is asked only near it) */
		if (utf8 && e->col + 3 > e->limit &&
		    (clen = ref_prefix(&c, 1)) > 0 &&
		    e->col + clen - 1 > e->limit) {
			e->held[0] = c;
			e->nheld = 1;
			continue;
		}
		out[n++] = (char)c;
	}
	return n;
}

/* The well-formed UTF-8 characters in s[0..n), NULs skipped. */
static size_t
utf8_count(const char *s, size_t n)
{
	char *t = malloc(n + 1);
	size_t i, m = 0, count = 0, l;

	for (i = 0; i < n; i++)
		if (s[i] != '\0')
			t[m++] = s[i];
	for (i = 0; i < m; i += l > 0 ? l : 1)
		if ((l = escape_utf8_len(t + i, m - i)) > 0)
			count++;
	free(t);
	return count;
}

/* Every LF is preceded by CR, every CR followed by LF; with a limit, no
 * line holds more than limit characters besides a stuffed dot. */
static void
body_check_lines(const char *out, size_t n, size_t limit)
{
	size_t i, col = 0;
	int bol = 1;

	for (i = 0; i < n; i++) {
		if (out[i] == '\n') {
			assert(i > 0 && out[i - 1] == '\r');
			col = 0;
			bol = 1;
			continue;
		}
		if (out[i] == '\r') {
			assert(i + 1 < n && out[i + 1] == '\n');
			continue;
		}
		/* a stuffed dot is not counted; the one after it is */
		if (!(bol && out[i] == '.' && i + 1 < n && out[i + 1] == '.'))
			col++;
		bol = 0;
		assert(limit == 0 || col <= limit);
	}
}

static void
fuzz_body_limit(const char *data, size_t size, size_t limit)
{
	struct smtp_body_encoder e, r;
	size_t n, rn, half = size / 2, cap;
	char *out, *ref;

	smtp_body_encoder_init(&e);
	smtp_body_encoder_fold(&e, limit);
	cap = smtp_body_encode_space(&e, half) +
	    smtp_body_encode_space(&e, size - half) + SMTP_BODY_FINISH_MAX;
	out = malloc(cap);
	ref = malloc(cap);
	n = smtp_body_encode(&e, data, half, out);
	assert(n <= smtp_body_encode_space(&e, half));
	rn = smtp_body_encode(&e, data + half, size - half, out + n);
	assert(rn <= smtp_body_encode_space(&e, size - half));
	n += rn;
	smtp_body_encoder_init(&r);
	smtp_body_encoder_fold(&r, limit);
	rn = body_reference(&r, data, half, ref);
	rn += body_reference(&r, data + half, size - half, ref + rn);
	assert(rn == n && memcmp(ref, out, n) == 0);
	assert(r.at_bol == e.at_bol && r.saw_cr == e.saw_cr &&
	    r.col == e.col && r.folds == e.folds && r.nheld == e.nheld &&
	    memcmp(r.held, e.held, r.nheld) == 0);
	assert(e.folds <= smtp_body_fold_bound(size, limit));
	n += smtp_body_encode_finish(&e, out + n);
	assert(n <= cap);
	body_check_lines(out, n, e.limit);
	assert(n >= 3 && memcmp(out + n - 3, ".\r\n", 3) == 0);
	if (e.limit == 0 || e.limit >= SMTP_FOLD_UTF8_MIN)
		assert(utf8_count(out, n) == utf8_count(data, size));
	free(out);
	free(ref);
}

static void
fuzz_body(const char *data, size_t size)
{
	fuzz_body_limit(data, size, 0);
	fuzz_body_limit(data, size, size > 0 ?
	    1 + (unsigned char)data[0] % 32 : 998);
	fuzz_body_limit(data, size, 998);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	memcpy(s, data, size);
	s[size] = '\0';
	fuzz_reply(s, size);
	fuzz_command(s, strlen(s));
	fuzz_body(s, size);
	free(s);
	return 0;
}
