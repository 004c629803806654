/*
 * libFuzzer target for the SMTP syntax in smtp_proto.c: the reply parser
 * (fed line by line), the EHLO keyword parser, command splitting, path and
 * parameter parsing, mailbox checks and the body encoder, whose output
 * must stay within the bound its header promises, be CRLF-only and match
 * a byte-at-a-time reference.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* The encoder's rules one byte at a time, the way the header states
 * them: smtp_body_encode() copies runs at once and must agree. */
static size_t
body_reference(struct smtp_body_encoder *e, const char *in, size_t len,
    char *out)
{
	size_t i, n = 0;

	for (i = 0; i < len; i++) {
		char c = in[i];

		if (e->saw_cr) {
			e->saw_cr = 0;
			if (c == '\n')
				continue;
		}
		if (c == '\r' || c == '\n') {
			out[n++] = '\r';
			out[n++] = '\n';
			e->saw_cr = c == '\r';
			e->at_bol = 1;
			continue;
		}
		if (c == '\0')
			continue;
		if (e->at_bol && c == '.')
			out[n++] = '.';
		e->at_bol = 0;
		out[n++] = c;
	}
	return n;
}

static void
fuzz_body(const char *data, size_t size)
{
	struct smtp_body_encoder e, r;
	char *out = malloc(2 * size + 8), *ref = malloc(2 * size + 8);
	size_t n, rn, i, half = size / 2;

	smtp_body_encoder_init(&e);
	n = smtp_body_encode(&e, data, half, out);
	n += smtp_body_encode(&e, data + half, size - half, out + n);
	assert(n <= 2 * size);
	smtp_body_encoder_init(&r);
	rn = body_reference(&r, data, half, ref);
	rn += body_reference(&r, data + half, size - half, ref + rn);
	assert(rn == n && memcmp(ref, out, n) == 0);
	assert(r.at_bol == e.at_bol && r.saw_cr == e.saw_cr);
	n += smtp_body_encode_finish(&e, out + n);
	assert(n <= 2 * size + 5);
	/* Every LF is preceded by CR, every CR followed by LF. */
	for (i = 0; i < n; i++) {
		if (out[i] == '\n')
			assert(i > 0 && out[i - 1] == '\r');
		if (out[i] == '\r')
			assert(i + 1 < n && out[i + 1] == '\n');
	}
	assert(n >= 3 && memcmp(out + n - 3, ".\r\n", 3) == 0);
	free(out);
	free(ref);
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
