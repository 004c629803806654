/*
 * A message as smarthost-sendmail(8) reads it from a program: the bytes a
 * caller writes on stdin, turned into an RFC 5322 message with CRLF line
 * ends, a header section and a body. No I/O here: everything is a pure
 * function over buffers, unit-tested directly.
 *
 * The rules (smarthost-sendmail(8) documents them for users):
 * - Any line end (CRLF, bare LF, bare CR) becomes CRLF; a missing final
 *   line end is added.
 * - A NUL byte anywhere refuses the message (MESSAGE_NUL): a NUL cannot
 *   travel through SMTP intact, and dropping or replacing it silently
 *   would change the mail behind the caller's back.
 * - A line longer than MESSAGE_LINE_MAX bytes (RFC 5322's 998, CRLF not
 *   counted) is split: a header line is folded (at its last blank within
 *   the limit, else CRLF SP inserted), a body line is broken with a bare
 *   CRLF, which adds a line break and no character to the text. Neither
 *   break falls inside a UTF-8 character: it moves back to the
 *   character's first byte. (Postfix's smtp_line_length_limit, which the
 *   relay's line_length_limit follows, inserts CRLF SP in the body too,
 *   and may cut a character; the relay folds only what is still too long
 *   when it sends, never inside a UTF-8 character either.)
 * - The header section ends at the first empty line; or at the first line
 *   that is neither a header field ("Name: value", the name and its colon
 *   within MESSAGE_LINE_MAX bytes) nor a continuation of one, which starts
 *   the body (an empty line is put before it); or at the end of input. A
 *   leading mbox "From " line is dropped.
 */
#ifndef SMARTHOST_MESSAGE_H
#define SMARTHOST_MESSAGE_H

#include <stddef.h>
#include <time.h>

#define MESSAGE_LINE_MAX 998

enum message_status {
	MESSAGE_OK,
	MESSAGE_NUL,   /* a NUL byte; err names the line */
};

struct message_field {
	char *name;   /* as written, without the colon */
	char *text;   /* the whole field: "Name: value" with every folded
	                 line, CRLF after each line */
};

struct message {
	struct message_field *fields;
	size_t nfields;
	char *body;   /* CRLF lines (possibly empty); NUL-terminated */
	size_t bodylen;
};

/*
 * Where input ends for sendmail without -i: the offset of the start of
 * the first line after offset from that is a lone "." (".\n" or ".\r\n")
 * and starts at the beginning of a line, or (size_t)-1 when buf[0..len)
 * holds none. from must be 0 or the start of a line (the caller passes
 * the start of the last incomplete line when more input arrives).
 */
size_t message_dot_end(const char *buf, size_t len, size_t from);
/* The start of the last incomplete line in buf[0..len): len when buf
 * ends with LF. */
size_t message_last_line(const char *buf, size_t len);

/*
 * Parses buf[0..len) by the rules above. Returns MESSAGE_OK and fills m
 * (release it with message_clear()), or an error with m empty and a
 * one-line reason in err.
 */
enum message_status message_parse(const char *buf, size_t len,
    struct message *m, char *err, size_t errlen);
void message_clear(struct message *m);

/* The index of the first field called name (case-insensitive), from
 * index start on, or -1. */
long message_find(const struct message *m, const char *name, size_t start);
/* Whether any field's name starts with "Resent-" (case-insensitive). */
int message_has_resent(const struct message *m);
/* Removes every field called name; returns how many were removed. */
size_t message_remove(struct message *m, const char *name);
/* Appends the field "name: value" at the end of the header section;
 * value must not hold line ends. */
void message_add(struct message *m, const char *name, const char *value);
/* The field's value unfolded: the text after the colon, line ends of
 * folded lines removed, leading and trailing blanks trimmed. Caller
 * frees. */
char *message_value(const struct message_field *f);

/*
 * The recipients sendmail -t finds: the addresses in every To:, Cc: and
 * Bcc: field, or, when resent is set, in Resent-To:, Resent-Cc: and
 * Resent-Bcc:. Appended to *rcpts (a growing array of malloc'ed strings,
 * *nrcpts long); an address already there is not added again. Returns 0,
 * or -1 with a reason in err when a field cannot be parsed.
 */
int message_recipients(const struct message *m, int resent, char ***rcpts,
    size_t *nrcpts, char *err, size_t errlen);

/*
 * Parses an RFC 5322 address list (a header value, unfolded): display
 * names, comments, quoted strings, angle addresses (source routes
 * dropped) and groups. Appends each addr-spec to *addrs as above.
 * Returns 0, or -1 with a reason in err (unbalanced quote, comment or
 * bracket). An empty list or group adds nothing.
 */
int message_addrlist_parse(const char *value, char ***addrs, size_t *naddrs,
    char *err, size_t errlen);
/* Appends a copy of addr to the array unless it is already there
 * (case-insensitive); returns 1 when added, 0 when it was there. */
int message_addr_append(char ***addrs, size_t *naddrs, const char *addr);
/* Frees an array made by the functions above. */
void message_addrs_free(char **addrs, size_t naddrs);

/* Whether buf[0..len) holds a byte with the high bit set. */
int message_has_8bit(const char *buf, size_t len);

/* ---- completion ---- */

/* An RFC 5322 date for t in the local time zone into buf (at least 64
 * bytes): "Wed, 02 Dec 2026 03:04:05 +0100". */
void message_date(time_t t, char *buf, size_t bufsize);
/*
 * The From: value for address and display name (NULL or "" for none):
 * "Name <address>", the name quoted when it holds specials and encoded
 * as an RFC 2047 word when it holds non-ASCII bytes. Caller frees.
 */
char *message_from_value(const char *name, const char *address);
/* The full name from a passwd GECOS field: its first comma-separated
 * part, '&' replaced by login with the first letter upper-cased. Caller
 * frees; "" when there is none. */
char *message_gecos_name(const char *gecos, const char *login);

/* Everything as one buffer: header fields, an empty line, the body.
 * Caller frees; *len receives its length (it is NUL-terminated too). */
char *message_serialize(const struct message *m, size_t *len);

#endif
