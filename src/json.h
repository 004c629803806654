/*
 * Writing JSON, for smarthostctl's --json output and the control socket's
 * json answers: string literals and a few helpers for objects, appended
 * to an evbuffer. Pure apart from the buffer; nothing is parsed here.
 */
#ifndef SMARTHOST_JSON_H
#define SMARTHOST_JSON_H

#include <stddef.h>
#include <time.h>

struct evbuffer;

/*
 * Appends s[0..len) as a JSON string, quotes included: '"' and '\' are
 * escaped, control characters (C0, DEL and the C1 U+0080..U+009F) become
 * \n, \t, \r or \u00XX, other well-formed UTF-8 is copied, and every byte
 * that is not part of a well-formed UTF-8 sequence becomes \ufffd, so the
 * result is always printable, valid UTF-8.
 */
void json_str_len(struct evbuffer *out, const char *s, size_t len);
/* The same for a NUL-terminated string; NULL becomes null. */
void json_str(struct evbuffer *out, const char *s);
/* "key": as the start of a member; first is 1 for the first member of an
 * object (no comma before it). */
void json_key(struct evbuffer *out, int first, const char *key);
/* A time as a string in ISO 8601 UTC ("2026-12-02T04:05:06Z"), or null
 * when t is 0. */
void json_time(struct evbuffer *out, time_t t);

#endif
