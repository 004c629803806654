/*
 * A growing byte string: what the encoders and composers of the tree
 * build their output in (envelopes, notifications, messages, SCRAM
 * exchanges, imported configurations, SMTP replies). Allocation cannot
 * fail (xmalloc). The bytes are always NUL-terminated once anything was
 * added, so text can be used as a C string.
 *
 * A buffer marked secret (it will hold a password or a proof) never
 * leaves a copy behind: it grows through a fresh allocation, the old one
 * wiped, never realloc, and strbuf_free() wipes it.
 *
 * Start with STRBUF_INIT (or STRBUF_SECRET), or zeroed memory.
 */
#ifndef SMARTHOST_STRBUF_H
#define SMARTHOST_STRBUF_H

#include <stdarg.h>
#include <stddef.h>

struct strbuf {
	char *p;      /* NULL until something is added */
	size_t len;   /* bytes, not counting the NUL */
	size_t cap;
	int secret;
};

#define STRBUF_INIT { NULL, 0, 0, 0 }
#define STRBUF_SECRET { NULL, 0, 0, 1 }

/* Appends len bytes of s (any bytes, NUL too). */
void strbuf_add(struct strbuf *b, const void *s, size_t len);
/* Appends the string s. */
void strbuf_adds(struct strbuf *b, const char *s);
/* Appends printf output. */
void strbuf_addf(struct strbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends vprintf output; ap is used up, as by vsnprintf. */
void strbuf_vaddf(struct strbuf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/*
 * Hands the bytes over: returns them (a malloc'd string, "" when nothing
 * was added; never NULL), their length in *len when len is not NULL, and
 * leaves b empty. The caller frees, and wipes what is secret.
 */
char *strbuf_take(struct strbuf *b, size_t *len);
/* Frees the bytes (wiped when secret) and leaves b empty, still secret
 * if it was. */
void strbuf_free(struct strbuf *b);

#endif
