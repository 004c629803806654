/*
 * The envelope of one queued message: id, sender, recipients with their
 * delivery state, attempts and next try. Its on-disk encoding is versioned
 * text (one "key value" line each, values percent-escaped) so a spool can be
 * read by a human and by the next version of this program. Encoding and
 * decoding are pure functions; queue.c owns the files.
 */
#ifndef SMARTHOST_ENVELOPE_H
#define SMARTHOST_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define ENVELOPE_ID_MAX 32 /* including NUL */

enum rcpt_status {
	RCPT_PENDING, /* not yet delivered; retried */
	RCPT_SENT,    /* the upstream (or maildir) accepted it */
	RCPT_FAILED,  /* permanent failure; a DSN was (or will be) sent */
};

struct envelope_rcpt {
	char *addr;
	enum rcpt_status status;
	char *reply;       /* last reply or error text, NULL if none */
	char dsn[16];      /* enhanced code of the last outcome, "" if none */
};

enum envelope_flags {
	ENVELOPE_8BITMIME = 1 << 0, /* BODY=8BITMIME */
	ENVELOPE_SMTPUTF8 = 1 << 1, /* SMTPUTF8 */
	ENVELOPE_BOUNCE = 1 << 2,   /* a DSN we made: never bounce it */
	ENVELOPE_HOLD = 1 << 3,     /* on hold: not scheduled */
	ENVELOPE_DELAY_WARNED = 1 << 4, /* the sender got its delay
	                               notification (delay_warning) */
};

struct envelope {
	char id[ENVELOPE_ID_MAX];
	char *sender;                 /* "" for the null sender <> */
	struct envelope_rcpt *rcpts;
	size_t nrcpts;
	char *relay;                  /* relay name, NULL: default relay */
	char *client;                 /* "name[addr]" of the submitter */
	int uid_known;                /* uid below is the submitting user */
	uid_t uid;                    /* local user who submitted it */
	unsigned flags;               /* enum envelope_flags */
	time_t created;
	time_t next_try;              /* 0: as soon as possible */
	unsigned attempts;
	off_t body_size;              /* bytes of message data (CRLF lines) */
	/* Owned by queue.c: where the body starts in the spool file. */
	off_t body_offset;
};

struct envelope *envelope_new(void);
/* Deep copy. */
struct envelope *envelope_dup(const struct envelope *env);
void envelope_free(struct envelope *env);
/* Appends a pending recipient (copied). */
void envelope_add_rcpt(struct envelope *env, const char *addr);
/* Number of recipients in the given status. */
size_t envelope_count(const struct envelope *env, enum rcpt_status status);
/* Sets a recipient's status, reply text (copied, may be NULL) and dsn. */
void envelope_set_rcpt(struct envelope *env, size_t idx,
    enum rcpt_status status, const char *dsn, const char *reply);

/*
 * A queue id is a 64-bit number written as 16 upper-case hex digits
 * (queue.c makes them). envelope_id_number() gives the number of id (as
 * strtoull() reads its leading hex digits: 0 if there are none);
 * envelope_id_text() writes the id of v into buf (len bytes; 17 hold it).
 */
uint64_t envelope_id_number(const char *id);
void envelope_id_text(uint64_t v, char *buf, size_t len);

/*
 * Encodes the envelope as text ending with an empty line: every field but
 * body_size and body_offset, which queue.c keeps. A recipient's reply ""
 * reads back as NULL. Returns a malloc'd buffer (caller frees) and its
 * length in *len.
 */
char *envelope_encode(const struct envelope *env, size_t *len);
/*
 * Decodes text produced by envelope_encode() (up to and including the
 * empty line) into a new envelope. Returns NULL and a reason in err when
 * the text is truncated, of an unknown version or malformed. *used receives
 * the number of bytes consumed.
 */
struct envelope *envelope_decode(const char *buf, size_t len, size_t *used,
    char *err, size_t errlen);

/*
 * A state record: one line that updates attempts, next_try and every
 * recipient's status (and flags), appended to the spool file after each
 * attempt.
 * envelope_apply_record() applies one complete line (with its '\n') and
 * returns 0, or -1 if it is malformed (the caller ignores a torn last line).
 */
char *envelope_state_record(const struct envelope *env, size_t *len);
int envelope_apply_record(struct envelope *env, const char *line, size_t len);

#endif
