/*
 * Allocation that cannot return NULL: on exhaustion the process logs and
 * exits, because a relay that half-handles a message on ENOMEM is worse
 * than one that restarts and recovers its queue.
 */
#ifndef SMARTHOST_XMALLOC_H
#define SMARTHOST_XMALLOC_H

#include <stddef.h>

void *xmalloc(size_t size);
void *xcalloc(size_t nmemb, size_t size);
/* reallocarray(3) semantics with overflow checking. */
void *xreallocarray(void *ptr, size_t nmemb, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* Returns a newly allocated formatted string; the caller frees it. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Wipes len bytes of ptr (which may be NULL) and frees it. */
void xfree_secret(void *ptr, size_t len);
/* Wipes a NUL-terminated string (which may be NULL) and frees it. */
void xfree_secret_str(char *s);

#endif
