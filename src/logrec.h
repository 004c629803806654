/*
 * Records of the spool log: the self-validating frame that an append-only
 * log of small messages needs, so that what a power cut leaves at the end
 * of a log file (a record written in part, a size that reached the disk
 * before the data, zeros) is recognised and ignored, never taken for a
 * message. Pure functions over buffers; the files belong to queue.c.
 *
 * A record is a 32-byte header followed by its payload:
 *
 *	offset	size	field (integers little-endian)
 *	0	4	magic "SHLG"
 *	4	2	type (enum logrec_type)
 *	6	2	reserved, 0
 *	8	4	payload length
 *	12	4	aux: LOGREC_MESSAGE: the envelope's length at the start
 *			of the payload (the body follows it); otherwise 0
 *	16	8	queue id, as the 64-bit number its 16 hex digits spell
 *	24	4	CRC32C of the payload
 *	28	4	CRC32C of the salt (8 bytes) and header bytes 0 to 27
 *
 * The header has a checksum of its own, so its length can be trusted before
 * the payload is read; the salt (the log file's sequence number) makes a
 * record valid only in the file it was written for, so a stale record in a
 * reused or copied file never passes for a current one. A record is
 * committed only when both checksums match: everything from the first
 * record that does not validate to the end of the file is ignored.
 */
#ifndef SMARTHOST_LOGREC_H
#define SMARTHOST_LOGREC_H

#include <stddef.h>
#include <stdint.h>

#define LOGREC_HEADER_LEN 32
/* The largest payload a header may announce; larger ones are invalid. */
#define LOGREC_PAYLOAD_MAX (64U * 1024 * 1024)

enum logrec_type {
	LOGREC_MESSAGE = 1, /* envelope (aux bytes) then body */
	LOGREC_STATE = 2,   /* one state record line (envelope.h) */
	LOGREC_DONE = 3,    /* the message is finished: forget it */
};

struct logrec {
	enum logrec_type type;
	uint64_t id;
	uint32_t aux;
	uint32_t len;		/* payload length */
	uint32_t payload_crc;
};

enum logrec_status {
	LOGREC_VALID,	/* a header that validates */
	LOGREC_ZERO,	/* all zeros: the clean end of a preallocated file */
	LOGREC_INVALID,	/* anything else: a torn or foreign record */
};

/* CRC32C (Castagnoli), continuing from crc (0 to start): with the CPU's
 * crc32 instruction where there is one (x86-64 with SSE4.2). */
uint32_t logrec_crc32c(uint32_t crc, const void *buf, size_t len);
/* The same from a table, a byte at a time, on any CPU; the fallback, and
 * what the tests compare the instruction with. */
uint32_t logrec_crc32c_table(uint32_t crc, const void *buf, size_t len);

/* Fills hdr for a record of the given type, id, aux and payload, to be
 * written in the log file whose salt is salt. len must not exceed
 * LOGREC_PAYLOAD_MAX. */
void logrec_header(unsigned char hdr[LOGREC_HEADER_LEN], uint64_t salt,
    enum logrec_type type, uint64_t id, uint32_t aux, const void *payload,
    uint32_t len);

/* Recomputes the header's own checksum for another salt: records can be
 * staged before the file they go to is chosen. */
void logrec_header_resalt(unsigned char hdr[LOGREC_HEADER_LEN],
    uint64_t salt);

/*
 * Checks a header read from the log file with salt salt. LOGREC_VALID
 * fills rec (the payload still needs logrec_payload_ok()); a valid header
 * has a known type, a reserved field of 0, len <= LOGREC_PAYLOAD_MAX, an
 * aux <= len for messages and 0 otherwise.
 */
enum logrec_status logrec_header_parse(const unsigned char *hdr,
    uint64_t salt, struct logrec *rec);
/* 1 if payload (rec->len bytes) matches the header's checksum, else 0. */
int logrec_payload_ok(const struct logrec *rec, const void *payload);

/*
 * Walks the records in buf[0..len), a log file's contents from offset 0,
 * calling each(rec, payload, offset, arg) for every complete, valid record
 * in order, and stops at the first that is not (or when each returns
 * non-zero). Returns the length of the valid prefix: where the next
 * record belongs.
 */
size_t logrec_scan(const void *buf, size_t len, uint64_t salt,
    int (*each)(const struct logrec *rec, const unsigned char *payload,
    size_t offset, void *arg), void *arg);

#endif
