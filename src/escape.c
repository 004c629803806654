/*
 * Escaping for logs and headers. The UTF-8 decoder accepts exactly the
 * well-formed sequences of RFC 3629 (no overlong forms, no surrogates,
 * nothing above U+10FFFF), so a byte that is not part of one is escaped on
 * its own and cannot combine with what follows into a control sequence.
 */
#include <string.h>

#include "escape.h"

size_t
escape_utf8_len(const char *in, size_t len)
{
	const unsigned char *s = (const unsigned char *)in;
	unsigned long cp;
	size_t n, i;

	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
		cp = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		cp = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		cp = s[0] & 0x07;
	} else
		return 0;
	if (len < n)
		return 0;
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
	    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

int
escape_utf8_whole(const char *in, size_t len)
{
	size_t i = 0, n;

	while (i < len) {
		if ((unsigned char)in[i] < 0x80)
			n = 1;
		else if ((n = escape_utf8_len(in + i, len - i)) == 0)
			return 0;
		i += n;
	}
	return 1;
}

/* The length of the well-formed UTF-8 sequence at s (at most len bytes)
 * encoding a printable code point (U+00A0 and up), or 0: the C1 controls
 * U+0080..U+009F are C2 80..C2 9F. */
static size_t
utf8_printable_len(const unsigned char *s, size_t len)
{
	size_t n = escape_utf8_len((const char *)s, len);

	if (n == 2 && s[0] == 0xc2 && s[1] < 0xa0)
		return 0;
	return n;
}

/* How many input bytes at s form one printable unit (1 for printable
 * ASCII, 2..4 for a sequence), or 0 when s[0] must be escaped. */
static size_t
printable_len(const unsigned char *s, size_t len)
{
	if (s[0] >= 0x20 && s[0] < 0x7f)
		return 1;
	if (s[0] < 0x80)
		return 0;
	return utf8_printable_len(s, len);
}

size_t
escape_printable(char *out, size_t outsize, const char *in, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = (const unsigned char *)in;
	size_t i = 0, n = 0, u;

	if (outsize == 0)
		return 0;
	while (i < len) {
		if ((u = printable_len(s + i, len - i)) > 0) {
			if (n + u >= outsize)
				break;
			memcpy(out + n, s + i, u);
			n += u;
			i += u;
			continue;
		}
		if (n + 4 >= outsize)
			break;
		out[n++] = '\\';
		out[n++] = 'x';
		out[n++] = hex[s[i] >> 4];
		out[n++] = hex[s[i] & 0x0f];
		i++;
	}
	out[n] = '\0';
	return n;
}

size_t
escape_str(char *out, size_t outsize, const char *in)
{
	return escape_printable(out, outsize, in, strlen(in));
}

int
escape_needed(const char *in, size_t len)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t i = 0, u;

	while (i < len) {
		if ((u = printable_len(s + i, len - i)) == 0)
			return 1;
		i += u;
	}
	return 0;
}
