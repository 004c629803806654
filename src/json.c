/*
 * JSON string output. The one subtle part is UTF-8: JSON text must be
 * valid Unicode, and what we print (addresses, upstream replies, message
 * lines) is whatever a client or a server sent, so stray bytes are
 * replaced rather than copied; escape.c's decoder decides what is
 * well-formed.
 */
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "escape.h"
#include "json.h"

void
json_str_len(struct evbuffer *out, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, run, n;

	evbuffer_add(out, "\"", 1);
	while (i < len) {
		/* Copy the longest run that needs nothing. */
		for (run = i; run < len && p[run] >= 0x20 && p[run] < 0x7f &&
		    p[run] != '"' && p[run] != '\\'; run++)
			;
		evbuffer_add(out, p + i, run - i);
		if ((i = run) == len)
			break;
		if (p[i] == '"' || p[i] == '\\')
			evbuffer_add_printf(out, "\\%c", p[i]);
		else if (p[i] == '\n')
			evbuffer_add(out, "\\n", 2);
		else if (p[i] == '\t')
			evbuffer_add(out, "\\t", 2);
		else if (p[i] == '\r')
			evbuffer_add(out, "\\r", 2);
		else if (p[i] < 0x20 || p[i] == 0x7f)
			evbuffer_add_printf(out, "\\u%04x", p[i]);
		else if ((n = escape_utf8_len(s + i, len - i)) == 2 &&
		    p[i] == 0xc2 && p[i + 1] < 0xa0) {
			/* C1 controls, escaped like C0: the output is
			 * printable, as the control protocol's lines must be */
			evbuffer_add_printf(out, "\\u%04x", p[i + 1]);
			i += 2;
			continue;
		} else if (n > 0) {
			evbuffer_add(out, p + i, n);
			i += n;
			continue;
		} else
			evbuffer_add(out, "\\ufffd", 6);
		i++;
	}
	evbuffer_add(out, "\"", 1);
}

void
json_str(struct evbuffer *out, const char *s)
{
	if (s == NULL)
		evbuffer_add(out, "null", 4);
	else
		json_str_len(out, s, strlen(s));
}

void
json_key(struct evbuffer *out, int first, const char *key)
{
	if (!first)
		evbuffer_add(out, ",", 1);
	json_str(out, key);
	evbuffer_add(out, ":", 1);
}

void
json_time(struct evbuffer *out, time_t t)
{
	struct tm tm;
	char buf[32];

	if (t == 0 || gmtime_r(&t, &tm) == NULL ||
	    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
		evbuffer_add(out, "null", 4);
		return;
	}
	json_str(out, buf);
}
