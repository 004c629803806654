/*
 * Growing byte strings (see strbuf.h). The capacity doubles, from 256
 * bytes, so appending n bytes one at a time costs O(n); one byte is
 * always kept for the NUL.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "strbuf.h"
#include "xmalloc.h"

/* Makes room for more bytes and the NUL. */
static void
strbuf_reserve(struct strbuf *b, size_t more)
{
	size_t cap;
	char *p;

	if (more > SIZE_MAX / 2 - b->len - 1)
		fatalx("%s: size overflow", __func__);
	if (b->len + more + 1 <= b->cap)
		return;
	cap = b->cap == 0 ? 256 : b->cap;
	while (cap < b->len + more + 1)
		cap *= 2;
	if (!b->secret) {
		b->p = xreallocarray(b->p, cap, 1);
	} else {
		/* Not realloc: it could leave an unwiped copy behind. */
		p = xmalloc(cap);
		if (b->p != NULL) {
			memcpy(p, b->p, b->len + 1);
			xfree_secret(b->p, b->cap);
		}
		b->p = p;
	}
	b->cap = cap;
}

void
strbuf_add(struct strbuf *b, const void *s, size_t len)
{
	strbuf_reserve(b, len);
	if (len > 0)
		memcpy(b->p + b->len, s, len);
	b->len += len;
	b->p[b->len] = '\0';
}

void
strbuf_adds(struct strbuf *b, const char *s)
{
	strbuf_add(b, s, strlen(s));
}

void
strbuf_vaddf(struct strbuf *b, const char *fmt, va_list ap)
{
	va_list again;
	int n;

	va_copy(again, ap);
	n = vsnprintf(NULL, 0, fmt, again);
	va_end(again);
	if (n < 0)
		fatalx("%s: vsnprintf failed", __func__);
	strbuf_reserve(b, (size_t)n);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	b->len += (size_t)n;
}

void
strbuf_addf(struct strbuf *b, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	strbuf_vaddf(b, fmt, ap);
	va_end(ap);
}

char *
strbuf_take(struct strbuf *b, size_t *len)
{
	char *p;

	if (b->p == NULL)
		strbuf_add(b, "", 0);
	p = b->p;
	if (len != NULL)
		*len = b->len;
	b->p = NULL;
	b->len = b->cap = 0;
	return p;
}

void
strbuf_free(struct strbuf *b)
{
	if (b->p != NULL) {
		if (b->secret)
			xfree_secret(b->p, b->cap);
		else
			free(b->p);
	}
	b->p = NULL;
	b->len = b->cap = 0;
}
