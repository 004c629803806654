/*
 * Address rewriting in message headers (RFC 5322 section 3.4, with the
 * obsolete syntax of section 4.4). Only the addr-spec of a mailbox is ever
 * replaced; display names, comments, folding, encoded words (RFC 2047),
 * group syntax and every address the callback keeps stay byte for byte as
 * they were. A field that does not parse as an address list is left
 * alone. Pure functions over buffers: no I/O, no allocation the caller
 * does not get back.
 */
#ifndef SMARTHOST_REWRITE_H
#define SMARTHOST_REWRITE_H

#include <stddef.h>

/*
 * Called with each addr-spec found, comments and folding removed
 * ("user", "user@host", "\"a b\"@host"). Returns a malloc'd replacement
 * (which must be a valid addr-spec without CR or LF) or NULL to keep the
 * address. It may be called for addresses of a field that then turns
 * out not to parse; such a field is left as it was and the replacements
 * are freed, so the callback must have no other effect.
 */
typedef char *(*rewrite_fn)(const char *addr, void *arg);

/*
 * Rewrites the addresses of one address-list field body: the bytes after
 * the field name's colon up to (not including) the line end of its last
 * line; folded lines are part of it. Returns a malloc'd body and its
 * length in *outlen, or NULL when nothing changed (or the body does not
 * parse).
 */
char *rewrite_address_list(const char *body, size_t len, rewrite_fn fn,
    void *arg, size_t *outlen);

/*
 * Rewrites the From:, Sender: and Reply-To: fields and their resent
 * forms Resent-From:, Resent-Sender: and Resent-Reply-To: (names compared
 * without regard to case) of the header section at the start of hdr (len
 * bytes; lines end with CRLF or LF). The section ends at an empty line or
 * at the first line that is neither a field nor a continuation; it and
 * everything after it are copied unchanged. Returns a malloc'd copy with
 * the changes and its length in *outlen, or NULL when nothing changed.
 */
char *rewrite_headers(const char *hdr, size_t len, rewrite_fn fn, void *arg,
    size_t *outlen);

/*
 * Whether the end of the header section is known in a buffer that grows:
 * 1 once the complete lines hold the empty line that ends it or a line
 * that is neither a field nor a continuation (the body starts there), 0
 * while more input is needed. Lines are examined from *cursor (0 at
 * first), which advances past the complete lines seen, so each byte is
 * looked at once.
 */
int rewrite_header_done(const char *buf, size_t len, size_t *cursor);

/*
 * The start of the last field line (a line not starting with a blank) in
 * hdr, so that hdr[0..result) holds only complete fields; 0 if none.
 * Used to rewrite a header section cut at a size limit.
 */
size_t rewrite_complete_fields(const char *hdr, size_t len);

#endif
