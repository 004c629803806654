/*
 * The spool log's record frame (see logrec.h). CRC32C is computed with the
 * SSE4.2 crc32 instruction where the CPU has it (8 bytes per instruction;
 * the table, a byte at a time, cost 38,000 instructions for a 4 KB message
 * record, a tenth of all the daemon spent per message), otherwise from a
 * table built on first use, a byte at a time, which needs nothing beyond
 * the C library. Both give the same values (the unit tests compare them).
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define LOGREC_HAVE_SSE42 1
#endif

#include "logrec.h"

#define LOGREC_MAGIC "SHLG"
#define CRC32C_POLY 0x82f63b78U /* Castagnoli, reflected */

static uint32_t crc_table[256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static int crc_hw;	/* the crc32 instruction is there */

static void
crc_table_init(void)
{
	uint32_t c;
	unsigned i, k;

	for (i = 0; i < 256; i++) {
		c = i;
		for (k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
		crc_table[i] = c;
	}
}

static void
crc_init(void)
{
#ifdef LOGREC_HAVE_SSE42
	__builtin_cpu_init();
	crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t
logrec_crc32c_table(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	pthread_once(&table_once, crc_table_init);
	crc = ~crc;
	while (len-- > 0)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

#ifdef LOGREC_HAVE_SSE42
__attribute__((target("sse4.2"))) static uint32_t
crc32c_sse42(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	uint64_t c = ~crc, w;

	for (; len > 0 && ((uintptr_t)p & 7) != 0; len--)
		c = _mm_crc32_u8((uint32_t)c, *p++);
	for (; len >= 8; len -= 8, p += 8) {
		memcpy(&w, p, 8);
		c = _mm_crc32_u64(c, w);
	}
	for (; len > 0; len--)
		c = _mm_crc32_u8((uint32_t)c, *p++);
	return ~(uint32_t)c;
}
#endif

uint32_t
logrec_crc32c(uint32_t crc, const void *buf, size_t len)
{
	pthread_once(&crc_once, crc_init);
#ifdef LOGREC_HAVE_SSE42
	if (crc_hw)
		return crc32c_sse42(crc, buf, len);
#endif
	return logrec_crc32c_table(crc, buf, len);
}

static void
put16(unsigned char *p, uint16_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
}

static void
put32(unsigned char *p, uint32_t v)
{
	put16(p, (uint16_t)v);
	put16(p + 2, (uint16_t)(v >> 16));
}

static void
put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static uint16_t
get16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
get32(const unsigned char *p)
{
	return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16;
}

static uint64_t
get64(const unsigned char *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static uint32_t
header_crc(const unsigned char *hdr, uint64_t salt)
{
	unsigned char s[8];

	put64(s, salt);
	return logrec_crc32c(logrec_crc32c(0, s, sizeof(s)), hdr, 28);
}

void
logrec_header(unsigned char hdr[LOGREC_HEADER_LEN], uint64_t salt,
    enum logrec_type type, uint64_t id, uint32_t aux, const void *payload,
    uint32_t len)
{
	memcpy(hdr, LOGREC_MAGIC, 4);
	put16(hdr + 4, (uint16_t)type);
	put16(hdr + 6, 0);
	put32(hdr + 8, len);
	put32(hdr + 12, aux);
	put64(hdr + 16, id);
	put32(hdr + 24, logrec_crc32c(0, payload, len));
	put32(hdr + 28, header_crc(hdr, salt));
}

void
logrec_header_resalt(unsigned char hdr[LOGREC_HEADER_LEN], uint64_t salt)
{
	put32(hdr + 28, header_crc(hdr, salt));
}

enum logrec_status
logrec_header_parse(const unsigned char *hdr, uint64_t salt,
    struct logrec *rec)
{
	static const unsigned char zero[LOGREC_HEADER_LEN];
	unsigned type;

	if (memcmp(hdr, zero, LOGREC_HEADER_LEN) == 0)
		return LOGREC_ZERO;
	if (memcmp(hdr, LOGREC_MAGIC, 4) != 0 ||
	    get32(hdr + 28) != header_crc(hdr, salt) || get16(hdr + 6) != 0)
		return LOGREC_INVALID;
	type = get16(hdr + 4);
	rec->len = get32(hdr + 8);
	rec->aux = get32(hdr + 12);
	rec->id = get64(hdr + 16);
	rec->payload_crc = get32(hdr + 24);
	if (rec->len > LOGREC_PAYLOAD_MAX)
		return LOGREC_INVALID;
	switch (type) {
	case LOGREC_MESSAGE:
		if (rec->aux > rec->len)
			return LOGREC_INVALID;
		break;
	case LOGREC_STATE:
	case LOGREC_DONE:
		if (rec->aux != 0)
			return LOGREC_INVALID;
		break;
	default:
		return LOGREC_INVALID;
	}
	rec->type = (enum logrec_type)type;
	return LOGREC_VALID;
}

int
logrec_payload_ok(const struct logrec *rec, const void *payload)
{
	return logrec_crc32c(0, payload, rec->len) == rec->payload_crc;
}

size_t
logrec_scan(const void *buf, size_t len, uint64_t salt,
    int (*each)(const struct logrec *rec, const unsigned char *payload,
    size_t offset, void *arg), void *arg)
{
	const unsigned char *p = buf;
	struct logrec rec;
	size_t off = 0;

	while (len - off >= LOGREC_HEADER_LEN) {
		if (logrec_header_parse(p + off, salt, &rec) != LOGREC_VALID ||
		    rec.len > len - off - LOGREC_HEADER_LEN ||
		    !logrec_payload_ok(&rec, p + off + LOGREC_HEADER_LEN))
			break;
		if (each != NULL && each(&rec, p + off + LOGREC_HEADER_LEN, off,
		    arg) != 0)
			break;
		off += LOGREC_HEADER_LEN + rec.len;
	}
	return off;
}
