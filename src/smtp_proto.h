/*
 * What both SMTP directions share, with no I/O: command and reply parsing,
 * path (address) syntax, ESMTP parameters and the body encoder that makes
 * what we send upstream CRLF-only and dot-stuffed. Everything here is a pure
 * function over buffers so it can be unit-tested and fuzzed directly.
 */
#ifndef SMARTHOST_SMTP_PROTO_H
#define SMARTHOST_SMTP_PROTO_H

#include <stddef.h>

#define SMTP_PATH_MAX 256     /* RFC 5321 4.5.3.1.3 path length */
#define SMTP_DOMAIN_MAX 255   /* 4.5.3.1.2 domain length */
#define SMTP_REPLY_LINE_MAX 512

/* ---- commands (server side) ---- */

/*
 * Splits a command line (without its CRLF) into verb and argument. The verb
 * is the first word, matched case-insensitively by the caller; arg points
 * into line after the single separating space (or at "" when there is
 * none). Returns 0, or -1 if the line is empty or has a NUL byte.
 * verb receives at most verbsize-1 bytes, upper-cased.
 */
int smtp_cmd_split(const char *line, size_t len, char *verb, size_t verbsize,
    const char **arg);

/*
 * Parses "FROM:<path> params" (MAIL) or "TO:<path> params" (RCPT): prefix
 * is "FROM:" or "TO:", matched case-insensitively, with optional spaces
 * after the colon for lenient clients. On success writes the mailbox (without
 * brackets; "" for the null path <>) to addr and points *params at the
 * parameter list (possibly ""). Source routes (<@a,@b:user@d>) are accepted
 * and dropped as RFC 5321 requires. Returns 0, or -1 with a short reason in
 * *why (a static string) when the syntax is wrong.
 */
int smtp_path_parse(const char *arg, const char *prefix, char *addr,
    size_t addrsize, const char **params, const char **why);

/*
 * Whether a mailbox has RFC 5321's syntax (4.1.2 Mailbox): a Local-part
 * that is a Dot-string (atoms of RFC 5322 atext joined by single dots) or
 * a Quoted-string (of any length within SMTP_PATH_MAX: RFC 5321 4.5.3.1
 * asks for no limit where none is needed, long VERP and SRS senders
 * exceed its 64 octets, and Postfix takes them), then '@' and a Domain
 * (letters, digits and inner hyphens in labels of at most 63 octets,
 * single dots, at most SMTP_DOMAIN_MAX octets; an underscore is taken as a
 * letter) or an address literal ([192.0.2.1], [IPv6:2001:db8::1], or
 * [tag:text]). No control character anywhere, escaped or not. Non-ASCII
 * bytes are allowed only when utf8 is set (SMTPUTF8, RFC 6531: in atoms,
 * quoted strings and domain labels), and then only as well-formed UTF-8 of
 * printable characters (a C1 control such as U+009B is a terminal's CSI).
 */
int smtp_mailbox_valid(const char *addr, int utf8);

/*
 * Iterates over ESMTP parameters "KEY=VALUE KEY2": each call stores the
 * next keyword (upper-cased) and value ("" if none) and advances *cursor.
 * Returns 1 when a parameter was produced, 0 at the end, -1 on syntax error.
 */
int smtp_param_next(const char **cursor, char *key, size_t keysize,
    char *value, size_t valuesize);

/* ---- replies (client side) ---- */

struct smtp_reply {
	int code;            /* 200..599 */
	char enhanced[16];   /* "2.0.0" or "" when the server gave none */
	char text[2048];     /* lines joined with '\n', code and enhanced
	                        code stripped, truncated to fit */
	unsigned nlines;
};

struct smtp_reply_parser {
	struct smtp_reply reply;
	int in_progress;
};

/*
 * RFC 5321 sets no limit on a reply's lines. Real replies have a few tens
 * at most (an EHLO list, a long explanation); a server still sending
 * continuation lines past this is broken or hostile, and waiting for its
 * last line would keep the session until the command's timeout.
 */
#define SMTP_REPLY_MAX_LINES 512

enum smtp_reply_status {
	SMTP_REPLY_MORE,     /* a continuation line was consumed */
	SMTP_REPLY_DONE,     /* parser->reply holds a complete reply */
	SMTP_REPLY_ERROR,    /* malformed line or code changed mid-reply */
	SMTP_REPLY_TOO_LONG, /* more than SMTP_REPLY_MAX_LINES lines */
};

void smtp_reply_parser_init(struct smtp_reply_parser *p);
/* Feeds one line without its line end. After DONE the parser is ready for
 * the next reply (the reply stays readable until then). */
enum smtp_reply_status smtp_reply_feed(struct smtp_reply_parser *p,
    const char *line, size_t len);

/* ---- EHLO keywords ---- */

enum smtp_ext {
	SMTP_EXT_PIPELINING = 1 << 0,
	SMTP_EXT_8BITMIME = 1 << 1,
	SMTP_EXT_SMTPUTF8 = 1 << 2,
	SMTP_EXT_SIZE = 1 << 3,
	SMTP_EXT_STARTTLS = 1 << 4,
	SMTP_EXT_ENHANCEDSTATUSCODES = 1 << 5,
	SMTP_EXT_AUTH = 1 << 6,
	SMTP_EXT_CHUNKING = 1 << 7,
	SMTP_EXT_DSN = 1 << 8,
};

struct smtp_ehlo {
	unsigned exts;        /* enum smtp_ext bits */
	unsigned long size;   /* SIZE limit, 0 when none given */
	char auth[256];       /* AUTH mechanisms, space-separated, upper */
};

/* Parses a complete EHLO reply's text (lines joined with '\n', the first
 * being the greeting name). */
void smtp_ehlo_parse(const char *text, struct smtp_ehlo *out);

/* ---- body encoding (client side) ---- */

/*
 * Streaming encoder for DATA: turns any line ends (CRLF, bare LF, bare CR)
 * into CRLF, drops NUL bytes (which SMTP text may not carry; the server
 * refuses them, so only a spool file from elsewhere has any) and doubles a
 * leading '.' on every line, after any dropped NUL. Feed the body in
 * pieces of any size; smtp_body_encode_finish() adds a CRLF if the body
 * did not end with one, then ".\r\n". out must have room for
 * smtp_body_encode_space(e, len) bytes (encode) or SMTP_BODY_FINISH_MAX
 * bytes (finish). Returns bytes written.
 *
 * With a line limit set (smtp_body_encoder_fold), a line of more than
 * limit characters is broken as Postfix's smtp_line_length_limit breaks
 * it, header and body alike: after limit characters "\r\n " is inserted
 * and the line goes on, so every line sent holds at most limit
 * characters before its CRLF (RFC 5321 4.5.3.1.6: 998 with limit 998). The
 * stuffed dot is not counted (RFC 5321 does not count it either) and
 * dropped NULs are not characters. A line of exactly limit characters is
 * left alone: the break is made only once the next character shows that
 * the line goes on, which may be in the next piece. A continuation starts
 * with the space, so it is never dot-stuffed and never a lone ".".
 *
 * Unlike Postfix, a break never falls inside a well-formed UTF-8
 * character (RFC 3629; dropped NULs do not count between its bytes): when
 * one would straddle the limit, the break comes before it, up to 3
 * characters early, and the character starts the continuation. For that
 * the encoder holds back the (at most 3) bytes of a character that starts
 * in the last 3 columns and cannot end by the limit, until the next byte
 * says where the break goes; a line end or the finish sends them as they
 * are. Bytes that are not part of a well-formed character (Latin-1, a cut
 * sequence) may be broken anywhere. A limit under SMTP_FOLD_UTF8_MIN has
 * no room for a space and a 4-byte character, and breaks there at the
 * limit, whatever the bytes.
 */
#define SMTP_FOLD_UTF8_MIN 5
/* The most smtp_body_encode_finish() writes: held-back bytes, CRLF, and
 * ".\r\n". */
#define SMTP_BODY_FINISH_MAX 8

struct smtp_body_encoder {
	int at_bol;   /* next byte starts a line */
	int saw_cr;   /* previous byte was a CR */
	size_t limit; /* characters per line before a break; 0: none */
	size_t col;   /* characters of the current line so far, the held
	                 ones included */
	unsigned char held[4]; /* the start of a UTF-8 character at the
	                 limit, not yet written (room for the next byte) */
	size_t nheld; /* 0 to 3 */
	unsigned long long folds; /* "\r\n " inserted since init */
};

/* Starts a body: no line limit, no folds counted. */
void smtp_body_encoder_init(struct smtp_body_encoder *e);
/* Sets the line limit (0: lines go as they are). A limit of 1 is taken
 * as 2: a continuation needs room for its space and one character. */
void smtp_body_encoder_fold(struct smtp_body_encoder *e, size_t limit);
/* The most bytes encoding len input bytes may write with e's limit. */
size_t smtp_body_encode_space(const struct smtp_body_encoder *e,
    size_t len);
size_t smtp_body_encode(struct smtp_body_encoder *e, const char *in,
    size_t len, char *out);
/* Ends the body and starts the next one; the limit and the fold count
 * stay. */
size_t smtp_body_encode_finish(struct smtp_body_encoder *e, char *out);
/*
 * The most "\r\n " breaks a body of size bytes can get with limit (0:
 * none). A line of n > limit characters has at least limit - 3 of them
 * before its first break (a character moved whole to the continuation
 * has at most 3 bytes on the line it leaves) and limit - 4 on each full
 * continuation (whose space takes one column), and at least one after
 * its last break; so it gets at most (n - 2) / (limit - 4) breaks, and
 * (n - 2) / (limit - 1) under SMTP_FOLD_UTF8_MIN, where breaks are always
 * at the limit. The lines' lengths add up to at most size, so size + 3 *
 * this bounds the folded message. With limit 998: 3 bytes per 994.
 */
unsigned long long smtp_body_fold_bound(unsigned long long size,
    size_t limit);

#endif
