/*
 * The one way text we did not write ourselves (addresses, HELO names,
 * upstream replies, anything a client or a server sent) is made safe to
 * print into a log line or a header: no byte that a terminal, a log viewer
 * or a mail parser would act on survives. Pure, no allocation.
 */
#ifndef SMARTHOST_ESCAPE_H
#define SMARTHOST_ESCAPE_H

#include <stddef.h>

/*
 * Writes the printable form of in[0..len) to out: printable ASCII (0x20 to
 * 0x7e) and well-formed UTF-8 sequences of code points from U+00A0 up are
 * copied; every other byte (C0 controls, CR, LF, ESC, DEL, the C1 controls
 * U+0080..U+009F, stray or overlong UTF-8 bytes, NUL) becomes "\xHH" with
 * two lower-case hex digits. Backslashes are copied as they are (they are
 * legitimate in quoted local parts), so "\x1b" in the output may also be
 * those four bytes in the input; the escaped form never contains a
 * control byte, which is what matters.
 *
 * out always receives a NUL-terminated string (outsize > 0); when it is too
 * small the output is cut before an escape or sequence that would not fit.
 * Returns the number of bytes written, not counting the NUL. An out of
 * 4 * len + 1 bytes always holds the whole result.
 */
size_t escape_printable(char *out, size_t outsize, const char *in,
    size_t len);

/* The same for a NUL-terminated string. */
size_t escape_str(char *out, size_t outsize, const char *in);

/* The length (2 to 4) of the well-formed UTF-8 sequence of a code point
 * from U+0080 up at in (len > 0 bytes there), or 0 when there is none. */
size_t escape_utf8_len(const char *in, size_t len);

/* Returns 1 if in[0..len) is all ASCII and well-formed UTF-8 sequences,
 * none cut at either end; 0 otherwise. */
int escape_utf8_whole(const char *in, size_t len);

/* 1 when in[0..len) has a byte that escape_printable() would escape. */
int escape_needed(const char *in, size_t len);

#endif
