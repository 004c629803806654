/*
 * JSON string output: every byte sequence comes out as a valid JSON
 * string in valid UTF-8.
 */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <event2/buffer.h>

#include "json.h"

static char *
str(const char *in, size_t len)
{
	struct evbuffer *b = evbuffer_new();
	size_t n;
	char *out;

	cr_assert_not_null(b);
	json_str_len(b, in, len);
	n = evbuffer_get_length(b);
	out = malloc(n + 1);
	cr_assert_not_null(out);
	evbuffer_remove(b, out, n);
	out[n] = '\0';
	evbuffer_free(b);
	return out;
}

#define check(in, want) do { \
	char *got_ = str(in, sizeof(in) - 1); \
	cr_assert_str_eq(got_, want); \
	free(got_); \
} while (0)

Test(json, plain_and_escaped)
{
	check("", "\"\"");
	check("a@example.org", "\"a@example.org\"");
	check("say \"hi\" \\ o/", "\"say \\\"hi\\\" \\\\ o/\"");
	check("a\tb\r\nc", "\"a\\tb\\r\\nc\"");
	check("\x1b[31m\x7f", "\"\\u001b[31m\\u007f\"");
}

Test(json, nul_inside)
{
	check("a\0b", "\"a\\u0000b\"");
}

Test(json, utf8_copied_bad_bytes_replaced)
{
	check("J\xc3\xbcrgen \xe2\x82\xac \xf0\x9f\x93\xa7",
	    "\"J\xc3\xbcrgen \xe2\x82\xac \xf0\x9f\x93\xa7\"");
	/* stray continuation, overlong, surrogate, truncated; C1 escaped */
	check("\x80", "\"\\ufffd\"");
	check("\xc0\xaf", "\"\\ufffd\\ufffd\"");
	check("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");
	check("\xe2\x82", "\"\\ufffd\\ufffd\"");
	check("\xc2\x85 \xc2\xa0", "\"\\u0085 \xc2\xa0\"");
}

Test(json, null_keys_and_times)
{
	struct evbuffer *b = evbuffer_new();
	char out[128];
	size_t n;

	evbuffer_add(b, "{", 1);
	json_key(b, 1, "a");
	json_str(b, NULL);
	json_key(b, 0, "t");
	json_time(b, 0);
	json_key(b, 0, "u");
	json_time(b, 1764648306);
	evbuffer_add(b, "}", 1);
	n = evbuffer_remove(b, out, sizeof(out) - 1);
	out[n] = '\0';
	cr_assert_str_eq(out,
	    "{\"a\":null,\"t\":null,\"u\":\"2025-12-02T04:05:06Z\"}");
	evbuffer_free(b);
}
