/*
 * libFuzzer target for the client SASL mechanisms: a hostile server's
 * challenges (split at NUL bytes into successive steps) must never crash
 * a mechanism, and base64 decoding must agree with encoding.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sasl.h"
#include "xmalloc.h"

static const char *const mechs[] = { "SCRAM-SHA-256", "SCRAM-SHA-1",
	"CRAM-MD5", "PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER" };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const unsigned char *out, *p, *end = data + size, *z;
	unsigned char *dec;
	size_t outlen, declen, m;
	char *enc;
	struct sasl *s;

	enc = sasl_b64_encode(data, size);
	assert(sasl_b64_decode(enc, strlen(enc), &dec, &declen) == 0);
	assert(declen == size && memcmp(dec, data, size) == 0);
	xfree_secret(dec, declen + 1);
	xfree_secret_str(enc);
	if (sasl_b64_decode((const char *)data, size, &dec, &declen) == 0)
		xfree_secret(dec, declen + 1);

	for (m = 0; m < sizeof(mechs) / sizeof(*mechs); m++) {
		s = sasl_new(mechs[m], "user", "pencil");
		assert(s != NULL);
		if (strncmp(mechs[m], "SCRAM", 5) == 0)
			(void)sasl_set_nonce(s, "rOprNGfwEbeRWgbNEkqO");
		if (sasl_step(s, NULL, 0, &out, &outlen) == SASL_ERROR) {
			sasl_free(s);
			continue;
		}
		for (p = data; p <= end; p = z + 1) {
			z = memchr(p, '\0', (size_t)(end - p));
			if (z == NULL)
				z = end;
			if (sasl_step(s, p, (size_t)(z - p), &out, &outlen) ==
			    SASL_ERROR)
				break;
			if (z == end)
				break;
		}
		(void)sasl_is_complete(s);
		sasl_free(s);
	}
	return 0;
}
