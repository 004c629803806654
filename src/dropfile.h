/*
 * The maildrop file: one message that smarthost-postdrop left for the
 * daemon while it was not running. Encoding and decoding are pure
 * functions; postdrop.c writes the files and maildrop.c imports them.
 *
 * Format, version 1 (lines end with '\n'):
 *
 *	smarthost-maildrop 1
 *	uid 1000
 *	sender <alice@example.org>       ("<>" for the null sender)
 *	rcpt <bob@example.net>           (one line per recipient, at least one)
 *	                                 (an empty line ends the header)
 *	<message: CRLF lines, N bytes>
 *	end N
 *
 * The trailer repeats the message length, so a file cut short anywhere
 * (or grown) does not parse: the daemon never imports half a message. The
 * header is strict: unknown keys, repeated uid or sender, addresses that
 * are not valid mailboxes, control bytes and a header longer than
 * DROPFILE_HEADER_MAX are errors. The uid is checked against the file's
 * owner by the importer, not here.
 */
#ifndef SMARTHOST_DROPFILE_H
#define SMARTHOST_DROPFILE_H

#include <stddef.h>
#include <sys/types.h>

#define DROPFILE_HEADER_MAX (1024 * 1024)
#define DROPFILE_TRAILER_MAX 32 /* "end " + 20 digits + '\n', rounded */

struct dropfile {
	uid_t uid;
	char *sender;  /* "" for <> */
	char **rcpts;
	size_t nrcpts;
	int utf8;      /* an address is not ASCII: needs SMTPUTF8 */
};

/*
 * The header for uid, sender and rcpts (nrcpts >= 1, each a valid
 * mailbox; the caller checked). Returns a malloc'd string; *len its size.
 */
char *dropfile_header(uid_t uid, const char *sender,
    const char *const *rcpts, size_t nrcpts, size_t *len);
/* The trailer for a message of size bytes into buf (>= DROPFILE_TRAILER_MAX);
 * returns its length. */
size_t dropfile_trailer(char *buf, size_t bufsize, off_t size);

/*
 * Parses the header at the start of buf (len bytes: the first bytes of the
 * file, at most DROPFILE_HEADER_MAX). On success fills df (free with
 * dropfile_clear) and *hdrlen (the bytes up to and including the empty
 * line). Returns -1 with a reason in err otherwise.
 */
int dropfile_parse_header(const char *buf, size_t len, struct dropfile *df,
    size_t *hdrlen, char *err, size_t errlen);
/*
 * Checks the tail of a file of filesize bytes whose header is hdrlen bytes
 * long: tail is its last taillen bytes (taillen >= the trailer). Returns
 * the message size, or -1 with a reason in err when the trailer is missing
 * or does not match the file's length.
 */
off_t dropfile_check_trailer(const char *tail, size_t taillen,
    off_t filesize, size_t hdrlen, char *err, size_t errlen);
void dropfile_clear(struct dropfile *df);

#endif
