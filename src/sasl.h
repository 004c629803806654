/*
 * Client SASL mechanisms as pure objects: no I/O, no base64 on the wire
 * side. The SMTP client drives one exchange like this:
 *
 *	s = sasl_new("CRAM-MD5", user, password);
 *	st = sasl_step(s, NULL, 0, &out, &outlen);
 *	    out != NULL: send "AUTH MECH " + base64(out) ("=" if outlen == 0)
 *	    out == NULL: send "AUTH MECH" (the mechanism has no initial
 *	                 response)
 *	on "334 TEXT": decode TEXT with sasl_b64_decode, then
 *	    st = sasl_step(s, challenge, len, &out, &outlen);
 *	    SASL_CONTINUE or SASL_DONE: send base64(out) (an empty line when
 *	                 outlen == 0)
 *	    SASL_ERROR:  send "*" to cancel; the attempt failed
 *	on "235": success only if sasl_is_complete(s) (for SCRAM: the server
 *	    proved it knows the password); else treat it as a failure
 *	on 535/504/...: the mechanism failed; sasl_server_error() may hold
 *	    what the server said inside the exchange (SCRAM "e=", OAuth JSON)
 *	sasl_free(s);
 *
 * SASL_DONE means the client has nothing more to say: the next server line
 * should be the final reply, and a further challenge makes the next step
 * return SASL_ERROR (except for the OAuth error challenge, answered as the
 * mechanism requires).
 *
 * Mechanisms: SCRAM-SHA-256 and SCRAM-SHA-1 (RFC 5802, RFC 7677; no
 * channel binding, gs2 header "n,,"; the server signature is verified),
 * CRAM-MD5 (RFC 2195), PLAIN (RFC 4616, as an initial response, empty
 * authorization identity), LOGIN (answers "Username:"/"Password:" prompts),
 * XOAUTH2 (Google's format) and OAUTHBEARER (RFC 7628), whose password is
 * the OAuth2 access token. User names and passwords go out as the UTF-8
 * bytes given.
 *
 * SCRAM hashes the password's bytes as given, without SASLprep (RFC
 * 4013). For a printable ASCII password, the norm, SASLprep changes
 * nothing, so the result is the same; SASLprep proper needs Unicode
 * normalization (NFKC) tables, which the daemon does not carry for the
 * rare non-ASCII password. Such a password must be written in the form
 * the server stored (NFKC), or used with another mechanism;
 * smarthostd.conf(5) says so under BUGS.
 *
 * Secrets: the object copies user and password, and every buffer that held
 * a secret or a response (responses carry proofs or passwords) is wiped
 * with OPENSSL_cleanse before it is freed. Nothing here logs a secret.
 */
#ifndef SMARTHOST_SASL_H
#define SMARTHOST_SASL_H

#include <stddef.h>

/* The client order when the configuration names none. */
#define SASL_DEFAULT_ORDER "SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN"
/* How many mechanisms exist: the size an output list of
 * sasl_choose_order() never needs to exceed. */
#define SASL_MECH_MAX 8
/* SCRAM iteration counts above this are refused: a server asking for
 * more is broken or hostile, and even on a worker thread (sasl_work) each
 * attempt costs CPU time. */
#define SASL_SCRAM_MAX_ITERATIONS 1000000

/* Mechanism flags (sasl_mech_flags). */
#define SASL_MECH_CLEARTEXT 0x01 /* sends a replayable secret: TLS only */
#define SASL_MECH_TOKEN     0x02 /* the password is an OAuth2 token */
#define SASL_MECH_INITIAL   0x04 /* the client speaks first */
#define SASL_MECH_MUTUAL    0x08 /* the server proves itself (SCRAM) */

enum sasl_status {
	SASL_CONTINUE, /* send *out; the server may challenge again */
	SASL_DONE,     /* send *out; then expect the final reply */
	SASL_ERROR,    /* cancel ("*"): bad challenge or server unproven */
	SASL_WORK,     /* async mode only: run sasl_work(), then take the
	                  step's result from sasl_work_result() */
};

struct sasl;

/* The flags of mechanism name (case-insensitive), or -1 if unknown. */
int sasl_mech_flags(const char *name);
/* The canonical (upper-case, static) name of mechanism name, or NULL. */
const char *sasl_mech_name(const char *name);

/*
 * Starts an exchange with mechanism mech (case-insensitive) for user and
 * password (both copied; OAUTHBEARER accepts an empty user, which leaves
 * out the authorization identity). Returns NULL when mech is unknown or
 * user or password is NULL. Free with sasl_free().
 */
struct sasl *sasl_new(const char *mech, const char *user,
    const char *password);
/* Wipes every secret and frees. Accepts NULL. */
void sasl_free(struct sasl *s);
/* The canonical name of the exchange's mechanism. */
const char *sasl_name(const struct sasl *s);

/*
 * For tests: the SCRAM client nonce to use instead of a random one (18
 * bytes from RAND_bytes, base64). Printable ASCII without ','. Returns 0,
 * or -1 if s is not SCRAM, the exchange has started, or the nonce is
 * invalid.
 */
int sasl_set_nonce(struct sasl *s, const char *nonce);

/*
 * One step: challenge is the decoded server challenge (NULL on the first
 * call, when the AUTH command is being built). On SASL_CONTINUE and
 * SASL_DONE, *out is the raw response (NUL-terminated after *outlen bytes
 * for convenience) or NULL on a first call that has no initial response;
 * it belongs to s and stays valid until the next sasl_step or sasl_free,
 * which wipe it. On SASL_ERROR *out is NULL and the exchange is over.
 */
enum sasl_status sasl_step(struct sasl *s, const unsigned char *challenge,
    size_t challenge_len, const unsigned char **out, size_t *outlen);
/*
 * Async mode (off by default): a step whose work is slow, SCRAM's PBKDF2
 * over the server's iteration count, returns SASL_WORK instead of doing
 * it. The caller then runs sasl_work(s) on another thread (no other call
 * on s until it returns: it reads the password and writes the response),
 * and back on its own thread sasl_work_result() gives what sasl_step would
 * have: SASL_CONTINUE with *out, or SASL_ERROR.
 */
void sasl_set_async(struct sasl *s, int async);
void sasl_work(struct sasl *s);
enum sasl_status sasl_work_result(struct sasl *s, const unsigned char **out,
    size_t *outlen);
/* 1 when the exchange finished as the mechanism requires (for SCRAM, the
 * server signature checked out), else 0. */
int sasl_is_complete(const struct sasl *s);
/* What the server reported inside the exchange (SCRAM "e=" value, OAuth
 * JSON error), printable ASCII, or NULL. Belongs to s. */
const char *sasl_server_error(const struct sasl *s);

/*
 * The mechanisms to try, in order: those of order (names separated by
 * spaces or commas, case-insensitive; NULL or "" means SASL_DEFAULT_ORDER;
 * unknown names and repeats are skipped, see sasl_order_check) that the
 * server offers in server_mechs (its EHLO AUTH list, space-separated,
 * case-insensitive). Without TLS (tls_active == 0), mechanisms flagged
 * SASL_MECH_CLEARTEXT (PLAIN, LOGIN, XOAUTH2, OAUTHBEARER) are left out
 * unless allow_plaintext. Stores at most outmax canonical static names in
 * out and returns how many.
 */
size_t sasl_choose_order(const char *server_mechs, const char *order,
    int tls_active, int allow_plaintext, const char **out, size_t outmax);
/* Checks an order for the configuration: 0, or -1 with a message in err
 * naming the first unknown mechanism (or saying the list is empty). */
int sasl_order_check(const char *order, char *err, size_t errlen);

/*
 * Base64 (RFC 4648, with padding) for the AUTH exchange. Encoding returns
 * a NUL-terminated string ("" for len 0); the caller frees it with
 * xfree_secret_str(), as it may encode a secret. Decoding is strict: only
 * the alphabet, length a multiple of 4, '=' only as final padding, no
 * blanks ("" decodes to 0 bytes); returns 0 with *out (NUL-terminated
 * after *outlen bytes) that the caller frees with xfree_secret(*out,
 * *outlen + 1), or -1.
 */
char *sasl_b64_encode(const void *in, size_t len);
int sasl_b64_decode(const char *in, size_t len, unsigned char **out,
    size_t *outlen);

#endif
