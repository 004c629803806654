/*
 * The spool log's record frame: checksums, round trips, and what a power
 * cut can leave at the end of a log file (a torn record, zeros, a record
 * of another file) never validating.
 */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "logrec.h"

#define SALT 0x1122334455667788ULL

/* Appends one record to buf at *len. */
static void
put(unsigned char *buf, size_t *len, uint64_t salt, enum logrec_type type,
    uint64_t id, uint32_t aux, const char *payload)
{
	uint32_t n = (uint32_t)strlen(payload);

	logrec_header(buf + *len, salt, type, id, aux, payload, n);
	memcpy(buf + *len + LOGREC_HEADER_LEN, payload, n);
	*len += LOGREC_HEADER_LEN + n;
}

struct seen {
	int n;
	struct logrec recs[8];
	size_t offs[8];
	char payloads[8][64];
};

static int
collect(const struct logrec *rec, const unsigned char *payload,
    size_t offset, void *arg)
{
	struct seen *s = arg;

	cr_assert_lt(s->n, 8);
	s->recs[s->n] = *rec;
	s->offs[s->n] = offset;
	memcpy(s->payloads[s->n], payload, rec->len);
	s->payloads[s->n][rec->len] = '\0';
	s->n++;
	return 0;
}

/* Three records: a message, a state record and a tombstone. */
static size_t
sample(unsigned char *buf)
{
	size_t len = 0;

	put(buf, &len, SALT, LOGREC_MESSAGE, 0x0123456789ABCDEFULL, 5,
	    "envelbody bytes");
	put(buf, &len, SALT, LOGREC_STATE, 0x0123456789ABCDEFULL, 0,
	    "S 2 1700000000 1 0\n");
	put(buf, &len, SALT, LOGREC_DONE, 0x0123456789ABCDEFULL, 0, "");
	return len;
}

Test(logrec, crc32c_check_values)
{
	/* The standard check value and RFC 3720's test vectors. */
	unsigned char zeros[32], ones[32], inc[32];
	int i;

	for (i = 0; i < 32; i++) {
		zeros[i] = 0;
		ones[i] = 0xff;
		inc[i] = (unsigned char)i;
	}
	cr_assert_eq(logrec_crc32c(0, "123456789", 9), 0xE3069283U);
	cr_assert_eq(logrec_crc32c(0, zeros, 32), 0x8A9136AAU);
	cr_assert_eq(logrec_crc32c(0, ones, 32), 0x62A8AB43U);
	cr_assert_eq(logrec_crc32c(0, inc, 32), 0x46DD794EU);
	/* Continuing a CRC equals computing it in one go. */
	cr_assert_eq(logrec_crc32c(logrec_crc32c(0, "1234", 4), "56789", 5),
	    0xE3069283U);
}

/* The crc32 instruction and the table agree at every alignment and length
 * (the instruction takes 8 bytes at a time from an aligned address). */
Test(logrec, crc32c_instruction_matches_table)
{
	unsigned char buf[4096 + 16];
	uint32_t x = 0x12345678U;
	size_t i, off, len;

	for (i = 0; i < sizeof(buf); i++) {
		x = x * 1103515245U + 12345U;
		buf[i] = (unsigned char)(x >> 16);
	}
	cr_assert_eq(logrec_crc32c_table(0, "123456789", 9), 0xE3069283U);
	for (off = 0; off < 16; off++)
		for (len = 0; len + off <= sizeof(buf); len += len < 64 ? 1 :
		    97)
			cr_assert_eq(logrec_crc32c(7, buf + off, len),
			    logrec_crc32c_table(7, buf + off, len),
			    "offset %zu, length %zu", off, len);
}

Test(logrec, records_round_trip)
{
	unsigned char buf[512];
	struct seen s = { 0 };
	size_t len = sample(buf);

	cr_assert_eq(logrec_scan(buf, len, SALT, collect, &s), len);
	cr_assert_eq(s.n, 3);
	cr_assert_eq(s.recs[0].type, LOGREC_MESSAGE);
	cr_assert_eq(s.recs[0].id, 0x0123456789ABCDEFULL);
	cr_assert_eq(s.recs[0].aux, 5);
	cr_assert_str_eq(s.payloads[0], "envelbody bytes");
	cr_assert_eq(s.offs[0], 0);
	cr_assert_eq(s.recs[1].type, LOGREC_STATE);
	cr_assert_str_eq(s.payloads[1], "S 2 1700000000 1 0\n");
	cr_assert_eq(s.offs[1], LOGREC_HEADER_LEN + 15);
	cr_assert_eq(s.recs[2].type, LOGREC_DONE);
	cr_assert_eq(s.recs[2].len, 0);
}

Test(logrec, torn_tail_keeps_only_whole_records)
{
	unsigned char buf[512], cut[512];
	size_t len = sample(buf), n, want, ends[3];
	struct seen s = { 0 };

	logrec_scan(buf, len, SALT, collect, &s);
	ends[0] = s.offs[1];
	ends[1] = s.offs[2];
	ends[2] = len;
	/* Every prefix, and every prefix followed by zeros (a size that
	 * reached the disk before the data): only whole records count. */
	for (n = 0; n <= len; n++) {
		want = n >= ends[2] ? ends[2] : n >= ends[1] ? ends[1] :
		    n >= ends[0] ? ends[0] : 0;
		cr_assert_eq(logrec_scan(buf, n, SALT, NULL, NULL), want,
		    "prefix %zu", n);
		memset(cut, 0, sizeof(cut));
		memcpy(cut, buf, n);
		cr_assert_eq(logrec_scan(cut, len, SALT, NULL, NULL), want,
		    "prefix %zu then zeros", n);
	}
}

Test(logrec, any_flipped_bit_stops_the_scan_there)
{
	unsigned char buf[512];
	size_t len = sample(buf), i, got, start;
	struct seen s = { 0 };
	int bit;

	logrec_scan(buf, len, SALT, collect, &s);
	for (i = 0; i < len; i++) {
		for (bit = 0; bit < 8; bit++) {
			buf[i] ^= (unsigned char)(1 << bit);
			got = logrec_scan(buf, len, SALT, NULL, NULL);
			buf[i] ^= (unsigned char)(1 << bit);
			start = i >= s.offs[2] ? s.offs[2] :
			    i >= s.offs[1] ? s.offs[1] : 0;
			cr_assert_eq(got, start, "byte %zu bit %d", i, bit);
		}
	}
}

Test(logrec, another_files_record_is_invalid)
{
	unsigned char buf[512];
	size_t len = sample(buf);
	struct logrec rec;

	cr_assert_eq(logrec_scan(buf, len, SALT + 1, NULL, NULL), 0);
	cr_assert_eq(logrec_header_parse(buf, SALT + 1, &rec),
	    LOGREC_INVALID);
	cr_assert_eq(logrec_header_parse(buf, SALT, &rec), LOGREC_VALID);
}

Test(logrec, zeros_are_the_clean_end)
{
	unsigned char zero[LOGREC_HEADER_LEN] = { 0 };
	struct logrec rec;

	cr_assert_eq(logrec_header_parse(zero, SALT, &rec), LOGREC_ZERO);
	cr_assert_eq(logrec_scan(zero, sizeof(zero), SALT, NULL, NULL), 0);
}

/* Recomputes a header's own checksum after a test changed a field. */
static void
reseal(unsigned char *hdr, uint64_t salt)
{
	unsigned char s[8];
	uint32_t crc;
	int i;

	for (i = 0; i < 8; i++)
		s[i] = (unsigned char)(salt >> (8 * i));
	crc = logrec_crc32c(logrec_crc32c(0, s, 8), hdr, 28);
	for (i = 0; i < 4; i++)
		hdr[28 + i] = (unsigned char)(crc >> (8 * i));
}

Test(logrec, headers_out_of_range_are_invalid)
{
	unsigned char hdr[LOGREC_HEADER_LEN];
	struct logrec rec;

	/* A message whose envelope is longer than its payload. */
	logrec_header(hdr, SALT, LOGREC_MESSAGE, 1, 6, "12345", 5);
	cr_assert_eq(logrec_header_parse(hdr, SALT, &rec), LOGREC_INVALID);
	/* aux on a tombstone. */
	logrec_header(hdr, SALT, LOGREC_DONE, 1, 1, "", 0);
	cr_assert_eq(logrec_header_parse(hdr, SALT, &rec), LOGREC_INVALID);
	/* An unknown type. */
	logrec_header(hdr, SALT, (enum logrec_type)9, 1, 0, "", 0);
	cr_assert_eq(logrec_header_parse(hdr, SALT, &rec), LOGREC_INVALID);
	/* A length beyond the limit, with a header checksum that matches. */
	logrec_header(hdr, SALT, LOGREC_STATE, 1, 0, "", 0);
	cr_assert_eq(logrec_header_parse(hdr, SALT, &rec), LOGREC_VALID);
	hdr[8] = hdr[9] = hdr[10] = hdr[11] = 0xff;
	reseal(hdr, SALT);
	cr_assert_eq(logrec_header_parse(hdr, SALT, &rec), LOGREC_INVALID);
	/* A reserved field that is not 0. */
	logrec_header(hdr, SALT, LOGREC_STATE, 1, 0, "", 0);
	hdr[6] = 1;
	reseal(hdr, SALT);
	cr_assert_eq(logrec_header_parse(hdr, SALT, &rec), LOGREC_INVALID);
}

Test(logrec, a_payload_longer_than_the_buffer_stops_the_scan)
{
	unsigned char buf[512];
	size_t len = 0;

	put(buf, &len, SALT, LOGREC_STATE, 7, 0, "a line\n");
	cr_assert_eq(logrec_scan(buf, len - 1, SALT, NULL, NULL), 0);
	cr_assert_eq(logrec_scan(buf, len, SALT, NULL, NULL), len);
}

static int
stop_at_second(const struct logrec *rec, const unsigned char *payload,
    size_t offset, void *arg)
{
	int *n = arg;

	return ++*n == 2;
}

Test(logrec, the_callback_can_stop_the_scan)
{
	unsigned char buf[512];
	size_t len = sample(buf);
	int n = 0;

	cr_assert_eq(logrec_scan(buf, len, SALT, stop_at_second, &n),
	    LOGREC_HEADER_LEN + 15);
	cr_assert_eq(n, 2);
}
