/*
 * Client SASL mechanisms: a table of mechanisms, each a step function over
 * one exchange object whose state is an explicit enum. Steps take decoded
 * challenge bytes and leave raw response bytes in the object; base64 is the
 * caller's, with the strict helpers at the end of this file.
 *
 * Invariants: the object owns every buffer it hands out, and every buffer
 * that held a password, a derived key, a proof or a response is wiped with
 * OPENSSL_cleanse before it is freed or reused. Debug traces name the
 * mechanism and the states, never data.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "log.h"
#include "sasl.h"
#include "strbuf.h"
#include "xmalloc.h"

enum sasl_state {
	SASL_ST_START,       /* nothing sent yet */
	SASL_ST_WAIT,        /* AUTH sent; waiting for the first challenge */
	SASL_ST_LOGIN_PASS,  /* LOGIN: user name sent; password prompt next */
	SASL_ST_SCRAM_WORK,  /* SCRAM: server-first parsed; PBKDF2 to run */
	SASL_ST_SCRAM_FINAL, /* SCRAM: client-final sent; server-final next */
	SASL_ST_DONE,        /* all said (and verified); final reply next */
	SASL_ST_REJECTED,    /* the server reported an error in the exchange */
	SASL_ST_FAILED,      /* over: a step returned SASL_ERROR */
};
#define SASL_ST_COUNT (SASL_ST_FAILED + 1)

static const char *const sasl_state_names[] = {
	"start",
	"wait",
	"login-pass",
	"scram-work",
	"scram-final",
	"done",
	"rejected",
	"failed",
};
_Static_assert(sizeof(sasl_state_names) / sizeof(sasl_state_names[0]) ==
    SASL_ST_COUNT, "sasl_state_names must name every state");

struct sasl_mech;

struct sasl {
	const struct sasl_mech *mech;
	enum sasl_state state;
	char *user;
	char *password;
	unsigned char *out;     /* last response, NUL-terminated */
	size_t outlen;
	char *nonce;            /* SCRAM client nonce */
	char *client_first_bare;
	unsigned char server_sig[EVP_MAX_MD_SIZE];
	size_t server_sig_len;
	char *server_error;
	int async;              /* leave SCRAM's PBKDF2 to sasl_work() */
	enum sasl_status work_status; /* sasl_work()'s result */
	/* SCRAM from the server-first message to the computation: */
	unsigned char *salt;
	size_t saltlen;
	unsigned long iter;
	char *final_bare;       /* client-final-message-without-proof */
	char *auth_message;
};

typedef enum sasl_status sasl_step_fn(struct sasl *, const unsigned char *,
    size_t);

struct sasl_mech {
	const char *name;
	unsigned flags;
	const EVP_MD *(*md)(void); /* SCRAM's hash */
	sasl_step_fn *step;
};

static sasl_step_fn step_scram, step_cram_md5, step_plain, step_login,
    step_xoauth2, step_oauthbearer;
static void scram_pending_clear(struct sasl *);
static enum sasl_status scram_compute(struct sasl *);

static const struct sasl_mech sasl_mechs[] = {
	{ "SCRAM-SHA-256", SASL_MECH_INITIAL | SASL_MECH_MUTUAL, EVP_sha256,
	    step_scram },
	{ "SCRAM-SHA-1", SASL_MECH_INITIAL | SASL_MECH_MUTUAL, EVP_sha1,
	    step_scram },
	{ "CRAM-MD5", 0, NULL, step_cram_md5 },
	{ "PLAIN", SASL_MECH_INITIAL | SASL_MECH_CLEARTEXT, NULL, step_plain },
	{ "LOGIN", SASL_MECH_CLEARTEXT, NULL, step_login },
	{ "XOAUTH2", SASL_MECH_INITIAL | SASL_MECH_CLEARTEXT | SASL_MECH_TOKEN,
	    NULL, step_xoauth2 },
	{ "OAUTHBEARER",
	    SASL_MECH_INITIAL | SASL_MECH_CLEARTEXT | SASL_MECH_TOKEN, NULL,
	    step_oauthbearer },
};
#define NMECHS (sizeof(sasl_mechs) / sizeof(sasl_mechs[0]))
_Static_assert(NMECHS <= SASL_MECH_MAX, "raise SASL_MECH_MAX");

static const struct sasl_mech *
mech_find(const char *name, size_t len)
{
	size_t i;

	for (i = 0; i < NMECHS; i++)
		if (strlen(sasl_mechs[i].name) == len &&
		    strncasecmp(sasl_mechs[i].name, name, len) == 0)
			return &sasl_mechs[i];
	return NULL;
}

int
sasl_mech_flags(const char *name)
{
	const struct sasl_mech *m = mech_find(name, strlen(name));

	return m != NULL ? (int)m->flags : -1;
}

const char *
sasl_mech_name(const char *name)
{
	const struct sasl_mech *m = mech_find(name, strlen(name));

	return m != NULL ? m->name : NULL;
}

/* ---- the exchange object ---- */

struct sasl *
sasl_new(const char *mech, const char *user, const char *password)
{
	const struct sasl_mech *m;
	struct sasl *s;

	if (mech == NULL || user == NULL || password == NULL)
		return NULL;
	if ((m = mech_find(mech, strlen(mech))) == NULL)
		return NULL;
	s = xcalloc(1, sizeof(*s));
	s->mech = m;
	s->state = SASL_ST_START;
	s->user = xstrdup(user);
	s->password = xstrdup(password);
	return s;
}

static void
out_clear(struct sasl *s)
{
	if (s->out != NULL)
		xfree_secret(s->out, s->outlen + 1);
	s->out = NULL;
	s->outlen = 0;
}

void
sasl_free(struct sasl *s)
{
	if (s == NULL)
		return;
	out_clear(s);
	xfree_secret_str(s->user);
	xfree_secret_str(s->password);
	xfree_secret_str(s->nonce);
	xfree_secret_str(s->client_first_bare);
	scram_pending_clear(s);
	free(s->server_error);
	OPENSSL_cleanse(s, sizeof(*s));
	free(s);
}

const char *
sasl_name(const struct sasl *s)
{
	return s->mech->name;
}

static void
sasl_enter(struct sasl *s, enum sasl_state state)
{
	log_debug("sasl %s: %s -> %s", s->mech->name,
	    sasl_state_names[s->state], sasl_state_names[state]);
	s->state = state;
}

/* Takes ownership of buf (len bytes plus a NUL) as the response. */
static void
respond_take(struct sasl *s, unsigned char *buf, size_t len)
{
	out_clear(s);
	s->out = buf;
	s->outlen = len;
}

static void
respond(struct sasl *s, const void *data, size_t len)
{
	unsigned char *buf = xmalloc(len + 1);

	if (len > 0)
		memcpy(buf, data, len);
	buf[len] = '\0';
	respond_take(s, buf, len);
}

/* Keeps a printable copy of what the server said went wrong. */
static void
set_server_error(struct sasl *s, const unsigned char *p, size_t len)
{
	size_t i;

	if (len > 256)
		len = 256;
	free(s->server_error);
	s->server_error = xmalloc(len + 1);
	for (i = 0; i < len; i++)
		s->server_error[i] = (p[i] >= 0x20 && p[i] < 0x7f) ?
		    (char)p[i] : '?';
	s->server_error[len] = '\0';
}

enum sasl_status
sasl_step(struct sasl *s, const unsigned char *challenge,
    size_t challenge_len, const unsigned char **out, size_t *outlen)
{
	enum sasl_status st;

	*out = NULL;
	*outlen = 0;
	out_clear(s);
	if (challenge == NULL)
		challenge_len = 0;
	st = s->mech->step(s, challenge, challenge_len);
	if (st == SASL_ERROR) {
		out_clear(s);
		if (s->state != SASL_ST_FAILED)
			sasl_enter(s, SASL_ST_FAILED);
		return SASL_ERROR;
	}
	*out = s->out;
	*outlen = s->outlen;
	return st;
}

void
sasl_set_async(struct sasl *s, int async)
{
	s->async = async;
}

void
sasl_work(struct sasl *s)
{
	s->work_status = scram_compute(s);
}

enum sasl_status
sasl_work_result(struct sasl *s, const unsigned char **out, size_t *outlen)
{
	*out = NULL;
	*outlen = 0;
	if (s->work_status == SASL_ERROR) {
		out_clear(s);
		if (s->state != SASL_ST_FAILED)
			sasl_enter(s, SASL_ST_FAILED);
		return SASL_ERROR;
	}
	*out = s->out;
	*outlen = s->outlen;
	return s->work_status;
}

int
sasl_is_complete(const struct sasl *s)
{
	return s->state == SASL_ST_DONE;
}

const char *
sasl_server_error(const struct sasl *s)
{
	return s->server_error;
}

int
sasl_set_nonce(struct sasl *s, const char *nonce)
{
	const char *p;

	if (!(s->mech->flags & SASL_MECH_MUTUAL) ||
	    s->state != SASL_ST_START || *nonce == '\0')
		return -1;
	for (p = nonce; *p != '\0'; p++)
		if (*p < 0x21 || *p > 0x7e || *p == ',')
			return -1;
	xfree_secret_str(s->nonce);
	s->nonce = xstrdup(nonce);
	return 0;
}

/* ---- PLAIN (RFC 4616) ---- */

static enum sasl_status
step_plain(struct sasl *s, const unsigned char *c, size_t len)
{
	size_t ul, pl, n;
	unsigned char *buf;

	switch (s->state) {
	case SASL_ST_START:
	case SASL_ST_WAIT:
		/* authzid (empty) NUL authcid NUL passwd; sent as the
		 * initial response, or after an empty 334 if the caller
		 * chose not to send one. */
		ul = strlen(s->user);
		pl = strlen(s->password);
		n = 1 + ul + 1 + pl;
		buf = xmalloc(n + 1);
		buf[0] = '\0';
		memcpy(buf + 1, s->user, ul);
		buf[1 + ul] = '\0';
		memcpy(buf + 2 + ul, s->password, pl);
		buf[n] = '\0';
		respond_take(s, buf, n);
		sasl_enter(s, SASL_ST_DONE);
		return SASL_DONE;
	case SASL_ST_LOGIN_PASS:
	case SASL_ST_SCRAM_WORK:
	case SASL_ST_SCRAM_FINAL:
	case SASL_ST_DONE:
	case SASL_ST_REJECTED:
	case SASL_ST_FAILED:
		break;
	}
	return SASL_ERROR;
}

/* ---- LOGIN ---- */

static int
prompt_is_password(const unsigned char *c, size_t len)
{
	return len >= 4 && strncasecmp((const char *)c, "pass", 4) == 0;
}

static enum sasl_status
step_login(struct sasl *s, const unsigned char *c, size_t len)
{
	switch (s->state) {
	case SASL_ST_START:
		if (c == NULL) {
			/* No initial response: many servers refuse one. */
			sasl_enter(s, SASL_ST_WAIT);
			return SASL_CONTINUE;
		}
		/* The caller sent AUTH LOGIN itself: this is the first
		 * prompt. */
		sasl_enter(s, SASL_ST_WAIT);
		return step_login(s, c, len);
	case SASL_ST_WAIT:
		if (c == NULL)
			return SASL_ERROR;
		/* The prompts are "Username:" and "Password:", but some
		 * servers word them differently: answer by order unless
		 * the first one plainly asks for the password. */
		if (prompt_is_password(c, len)) {
			respond(s, s->password, strlen(s->password));
			sasl_enter(s, SASL_ST_DONE);
			return SASL_DONE;
		}
		respond(s, s->user, strlen(s->user));
		sasl_enter(s, SASL_ST_LOGIN_PASS);
		return SASL_CONTINUE;
	case SASL_ST_LOGIN_PASS:
		if (c == NULL)
			return SASL_ERROR;
		respond(s, s->password, strlen(s->password));
		sasl_enter(s, SASL_ST_DONE);
		return SASL_DONE;
	case SASL_ST_SCRAM_WORK:
	case SASL_ST_SCRAM_FINAL:
	case SASL_ST_DONE:
	case SASL_ST_REJECTED:
	case SASL_ST_FAILED:
		break;
	}
	return SASL_ERROR;
}

/* ---- CRAM-MD5 (RFC 2195) ---- */

static enum sasl_status
step_cram_md5(struct sasl *s, const unsigned char *c, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int dlen = 0, i;
	size_t ul;
	unsigned char *buf;

	switch (s->state) {
	case SASL_ST_START:
		if (c == NULL) {
			sasl_enter(s, SASL_ST_WAIT);
			return SASL_CONTINUE;
		}
		sasl_enter(s, SASL_ST_WAIT);
		return step_cram_md5(s, c, len);
	case SASL_ST_WAIT:
		if (c == NULL || len == 0)
			return SASL_ERROR;
		if (HMAC(EVP_md5(), s->password, (int)strlen(s->password), c,
		    len, digest, &dlen) == NULL || dlen != 16)
			return SASL_ERROR;
		/* user SP 32 lower-case hex digits */
		ul = strlen(s->user);
		buf = xmalloc(ul + 1 + 2 * dlen + 1);
		memcpy(buf, s->user, ul);
		buf[ul] = ' ';
		for (i = 0; i < dlen; i++) {
			buf[ul + 1 + 2 * i] =
			    (unsigned char)hex[digest[i] >> 4];
			buf[ul + 2 + 2 * i] =
			    (unsigned char)hex[digest[i] & 15];
		}
		buf[ul + 1 + 2 * dlen] = '\0';
		OPENSSL_cleanse(digest, sizeof(digest));
		respond_take(s, buf, ul + 1 + 2 * dlen);
		sasl_enter(s, SASL_ST_DONE);
		return SASL_DONE;
	case SASL_ST_LOGIN_PASS:
	case SASL_ST_SCRAM_WORK:
	case SASL_ST_SCRAM_FINAL:
	case SASL_ST_DONE:
	case SASL_ST_REJECTED:
	case SASL_ST_FAILED:
		break;
	}
	return SASL_ERROR;
}

/* ---- SCRAM (RFC 5802, RFC 7677) ---- */

/* Messages are built in secret strbufs: they carry proofs and
 * passwords. */

/* RFC 5802 saslname: ',' and '=' become "=2C" and "=3D". */
static void
buf_add_saslname(struct strbuf *b, const char *name)
{
	for (; *name != '\0'; name++) {
		if (*name == ',')
			strbuf_adds(b, "=2C");
		else if (*name == '=')
			strbuf_adds(b, "=3D");
		else
			strbuf_add(b, name, 1);
	}
}

static enum sasl_status
scram_client_first(struct sasl *s)
{
	unsigned char rnd[18];
	struct strbuf b = STRBUF_SECRET;

	if (s->nonce == NULL) {
		/* 18 random bytes make 24 base64 characters, none a ','. */
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return SASL_ERROR;
		s->nonce = sasl_b64_encode(rnd, sizeof(rnd));
		OPENSSL_cleanse(rnd, sizeof(rnd));
	}
	strbuf_adds(&b, "n=");
	buf_add_saslname(&b, s->user);
	strbuf_adds(&b, ",r=");
	strbuf_adds(&b, s->nonce);
	s->client_first_bare = xstrdup(b.p);
	strbuf_free(&b);
	/* gs2-header "n,,": no channel binding, no authzid. */
	strbuf_adds(&b, "n,,");
	strbuf_adds(&b, s->client_first_bare);
	respond(s, b.p, b.len);
	strbuf_free(&b);
	sasl_enter(s, SASL_ST_WAIT);
	return SASL_CONTINUE;
}

/* Finds attribute "X=" at *p in [*p, end), returns its value span and
 * moves *p past the following ',' (or to end). */
static int
scram_attr(const char **p, const char *end, char name, const char **val,
    size_t *vlen)
{
	const char *q = *p, *comma;

	if (end - q < 2 || q[0] != name || q[1] != '=')
		return -1;
	q += 2;
	comma = memchr(q, ',', (size_t)(end - q));
	*val = q;
	*vlen = (size_t)((comma != NULL ? comma : end) - q);
	*p = comma != NULL ? comma + 1 : end;
	return 0;
}

static int
hmac(const EVP_MD *md, const void *key, size_t keylen, const void *data,
    size_t len, unsigned char *out)
{
	unsigned int n = 0;

	if (keylen > INT_MAX)
		return -1;
	if (HMAC(md, key, (int)keylen, data, len, out, &n) == NULL)
		return -1;
	return (int)n;
}

/* Forgets the parsed server-first message (wiping what derives from
 * it). */
static void
scram_pending_clear(struct sasl *s)
{
	if (s->salt != NULL)
		xfree_secret(s->salt, s->saltlen + 1);
	s->salt = NULL;
	s->saltlen = 0;
	s->iter = 0;
	xfree_secret_str(s->final_bare);
	s->final_bare = NULL;
	xfree_secret_str(s->auth_message);
	s->auth_message = NULL;
}

/*
 * Checks the server-first message and keeps what the proof needs; the
 * costly part (PBKDF2 over s->iter rounds) is scram_compute(), which runs
 * at once or, in async mode, from sasl_work() on another thread.
 */
static enum sasl_status
scram_client_final(struct sasl *s, const unsigned char *c, size_t len)
{
	const char *p = (const char *)c, *end = p + len, *nonce, *salt64, *it;
	size_t nlen, slen, ilen, i, cnl;
	struct strbuf msg = STRBUF_SECRET, wp = STRBUF_SECRET;
	unsigned long iter = 0;

	if (c == NULL || memchr(c, '\0', len) != NULL)
		return SASL_ERROR;
	/* r=NONCE,s=SALT,i=COUNT[,ext]; a leading m= is a mandatory
	 * extension we cannot know. */
	if (scram_attr(&p, end, 'r', &nonce, &nlen) == -1 ||
	    scram_attr(&p, end, 's', &salt64, &slen) == -1 ||
	    scram_attr(&p, end, 'i', &it, &ilen) == -1)
		return SASL_ERROR;
	/* The server's nonce extends ours. */
	cnl = strlen(s->nonce);
	if (nlen <= cnl || memcmp(nonce, s->nonce, cnl) != 0)
		return SASL_ERROR;
	for (i = 0; i < nlen; i++)
		if (nonce[i] < 0x21 || nonce[i] > 0x7e)
			return SASL_ERROR;
	if (ilen == 0 || ilen > 9)
		return SASL_ERROR;
	for (i = 0; i < ilen; i++) {
		if (it[i] < '0' || it[i] > '9')
			return SASL_ERROR;
		iter = iter * 10 + (unsigned long)(it[i] - '0');
	}
	if (iter == 0 || iter > SASL_SCRAM_MAX_ITERATIONS)
		return SASL_ERROR;
	scram_pending_clear(s);
	if (sasl_b64_decode(salt64, slen, &s->salt, &s->saltlen) == -1)
		return SASL_ERROR;
	if (s->saltlen == 0 || s->saltlen > INT_MAX) {
		scram_pending_clear(s);
		return SASL_ERROR;
	}
	s->iter = iter;
	/* c=base64("n,,") */
	strbuf_adds(&wp, "c=biws,r=");
	strbuf_add(&wp, nonce, nlen);
	strbuf_adds(&msg, s->client_first_bare);
	strbuf_adds(&msg, ",");
	strbuf_add(&msg, c, len);
	strbuf_adds(&msg, ",");
	strbuf_add(&msg, wp.p, wp.len);
	s->final_bare = xstrdup(wp.p);
	s->auth_message = xstrdup(msg.p);
	strbuf_free(&wp);
	strbuf_free(&msg);
	sasl_enter(s, SASL_ST_SCRAM_WORK);
	if (s->async)
		return SASL_WORK;
	return scram_compute(s);
}

/* The salted password, the client proof and the server signature we
 * expect; responds with the client-final message. */
static enum sasl_status
scram_compute(struct sasl *s)
{
	const EVP_MD *md = s->mech->md();
	unsigned char salted[EVP_MAX_MD_SIZE], ckey[EVP_MAX_MD_SIZE];
	unsigned char skey[EVP_MAX_MD_SIZE], stored[EVP_MAX_MD_SIZE];
	unsigned char csig[EVP_MAX_MD_SIZE], proof[EVP_MAX_MD_SIZE];
	unsigned int storedlen = 0;
	struct strbuf final = STRBUF_SECRET;
	char *proof64 = NULL;
	int mdlen = EVP_MD_get_size(md);
	size_t i, mlen;
	enum sasl_status ret = SASL_ERROR;

	if (s->state != SASL_ST_SCRAM_WORK || s->salt == NULL || mdlen <= 0)
		return SASL_ERROR;
	mlen = strlen(s->auth_message);
	if (PKCS5_PBKDF2_HMAC(s->password, (int)strlen(s->password), s->salt,
	    (int)s->saltlen, (int)s->iter, md, mdlen, salted) != 1)
		goto done;
	if (hmac(md, salted, (size_t)mdlen, "Client Key", 10, ckey) != mdlen)
		goto done;
	if (EVP_Digest(ckey, (size_t)mdlen, stored, &storedlen, md, NULL) != 1)
		goto done;
	if (hmac(md, stored, storedlen, s->auth_message, mlen, csig) != mdlen)
		goto done;
	for (i = 0; i < (size_t)mdlen; i++)
		proof[i] = ckey[i] ^ csig[i];
	if (hmac(md, salted, (size_t)mdlen, "Server Key", 10, skey) != mdlen)
		goto done;
	if (hmac(md, skey, (size_t)mdlen, s->auth_message, mlen,
	    s->server_sig) != mdlen)
		goto done;
	s->server_sig_len = (size_t)mdlen;
	proof64 = sasl_b64_encode(proof, (size_t)mdlen);
	strbuf_adds(&final, s->final_bare);
	strbuf_adds(&final, ",p=");
	strbuf_adds(&final, proof64);
	respond(s, final.p, final.len);
	sasl_enter(s, SASL_ST_SCRAM_FINAL);
	ret = SASL_CONTINUE;
done:
	OPENSSL_cleanse(salted, sizeof(salted));
	OPENSSL_cleanse(ckey, sizeof(ckey));
	OPENSSL_cleanse(skey, sizeof(skey));
	OPENSSL_cleanse(stored, sizeof(stored));
	OPENSSL_cleanse(csig, sizeof(csig));
	OPENSSL_cleanse(proof, sizeof(proof));
	xfree_secret_str(proof64);
	strbuf_free(&final);
	scram_pending_clear(s);
	return ret;
}

static enum sasl_status
scram_verify(struct sasl *s, const unsigned char *c, size_t len)
{
	const char *p = (const char *)c, *end = p + len, *v;
	unsigned char *sig = NULL;
	size_t vlen, siglen = 0;
	int ok;

	if (c == NULL)
		return SASL_ERROR;
	if (scram_attr(&p, end, 'e', &v, &vlen) == 0) {
		set_server_error(s, (const unsigned char *)v, vlen);
		return SASL_ERROR;
	}
	if (scram_attr(&p, end, 'v', &v, &vlen) == -1 ||
	    sasl_b64_decode(v, vlen, &sig, &siglen) == -1)
		return SASL_ERROR;
	ok = siglen == s->server_sig_len &&
	    CRYPTO_memcmp(sig, s->server_sig, siglen) == 0;
	xfree_secret(sig, siglen + 1);
	if (!ok)
		return SASL_ERROR;
	/* RFC 4954: the server-final message comes as a challenge, and
	 * the client answers it with an empty response. */
	respond(s, "", 0);
	sasl_enter(s, SASL_ST_DONE);
	return SASL_DONE;
}

static enum sasl_status
step_scram(struct sasl *s, const unsigned char *c, size_t len)
{
	switch (s->state) {
	case SASL_ST_START:
		/* A server that speaks first has nothing to say yet. */
		if (c != NULL && len > 0)
			return SASL_ERROR;
		return scram_client_first(s);
	case SASL_ST_WAIT:
		return scram_client_final(s, c, len);
	case SASL_ST_SCRAM_FINAL:
		return scram_verify(s, c, len);
	case SASL_ST_SCRAM_WORK: /* sasl_work() has not run */
	case SASL_ST_LOGIN_PASS:
	case SASL_ST_DONE:
	case SASL_ST_REJECTED:
	case SASL_ST_FAILED:
		break;
	}
	return SASL_ERROR;
}

/* ---- XOAUTH2 and OAUTHBEARER (RFC 7628) ---- */

static enum sasl_status
oauth_step(struct sasl *s, const unsigned char *c, size_t len, int bearer)
{
	struct strbuf b = STRBUF_SECRET;

	switch (s->state) {
	case SASL_ST_START:
	case SASL_ST_WAIT:
		if (bearer) {
			/* gs2-header with the authzid, then kvpairs. */
			strbuf_adds(&b, "n,");
			if (*s->user != '\0') {
				strbuf_adds(&b, "a=");
				buf_add_saslname(&b, s->user);
			}
			strbuf_adds(&b, ",\001");
		} else {
			strbuf_adds(&b, "user=");
			strbuf_adds(&b, s->user);
			strbuf_adds(&b, "\001");
		}
		strbuf_adds(&b, "auth=Bearer ");
		strbuf_adds(&b, s->password);
		strbuf_adds(&b, "\001\001");
		respond(s, b.p, b.len);
		strbuf_free(&b);
		sasl_enter(s, SASL_ST_DONE);
		return SASL_DONE;
	case SASL_ST_DONE:
		if (c == NULL)
			return SASL_ERROR;
		/* A challenge now carries a JSON error; the client must
		 * answer (XOAUTH2: empty; OAUTHBEARER: a lone ^A) and the
		 * server then fails the exchange. */
		set_server_error(s, c, len);
		respond(s, bearer ? "\001" : "", bearer ? 1 : 0);
		sasl_enter(s, SASL_ST_REJECTED);
		return SASL_DONE;
	case SASL_ST_LOGIN_PASS:
	case SASL_ST_SCRAM_WORK:
	case SASL_ST_SCRAM_FINAL:
	case SASL_ST_REJECTED:
	case SASL_ST_FAILED:
		break;
	}
	return SASL_ERROR;
}

static enum sasl_status
step_xoauth2(struct sasl *s, const unsigned char *c, size_t len)
{
	return oauth_step(s, c, len, 0);
}

static enum sasl_status
step_oauthbearer(struct sasl *s, const unsigned char *c, size_t len)
{
	return oauth_step(s, c, len, 1);
}

/* ---- mechanism order ---- */

/* The next word of a list separated by any of seps: returns its start and
 * length, or NULL at the end; *p moves past it. */
static const char *
next_word(const char **p, const char *seps, size_t *len)
{
	const char *s = *p;

	if (s == NULL)
		return NULL;
	s += strspn(s, seps);
	if (*s == '\0') {
		*p = s;
		return NULL;
	}
	*len = strcspn(s, seps);
	*p = s + *len;
	return s;
}

static int
offered(const char *server_mechs, const char *name)
{
	const char *p = server_mechs, *w;
	size_t len, nl = strlen(name);

	while ((w = next_word(&p, " \t", &len)) != NULL)
		if (len == nl && strncasecmp(w, name, len) == 0)
			return 1;
	return 0;
}

size_t
sasl_choose_order(const char *server_mechs, const char *order,
    int tls_active, int allow_plaintext, const char **out, size_t outmax)
{
	const struct sasl_mech *m;
	const char *p, *w;
	size_t len, n = 0, i;
	int dup;

	p = order;
	if (p == NULL || next_word(&p, " \t,", &len) == NULL)
		order = SASL_DEFAULT_ORDER;
	if (server_mechs == NULL)
		return 0;
	p = order;
	while ((w = next_word(&p, " \t,", &len)) != NULL && n < outmax) {
		if ((m = mech_find(w, len)) == NULL)
			continue;
		for (dup = 0, i = 0; i < n; i++)
			if (out[i] == m->name)
				dup = 1;
		if (dup || !offered(server_mechs, m->name))
			continue;
		/* Never a replayable secret over a clear connection,
		 * unless the configuration says so explicitly. */
		if ((m->flags & SASL_MECH_CLEARTEXT) && !tls_active &&
		    !allow_plaintext)
			continue;
		out[n++] = m->name;
	}
	return n;
}

int
sasl_order_check(const char *order, char *err, size_t errlen)
{
	const char *p = order, *w;
	size_t len;
	int any = 0;

	while ((w = next_word(&p, " \t,", &len)) != NULL) {
		if (mech_find(w, len) == NULL) {
			snprintf(err, errlen, "unknown SASL mechanism \"%.*s\" "
			    "(known: %s XOAUTH2 OAUTHBEARER)", (int)len, w,
			    SASL_DEFAULT_ORDER);
			return -1;
		}
		any = 1;
	}
	if (!any) {
		snprintf(err, errlen, "no SASL mechanism named");
		return -1;
	}
	return 0;
}

/* ---- base64 ---- */

/* Chunks keep EVP's int lengths safe; 3 * 4096 bytes make whole quanta. */
#define B64_CHUNK (3 * 4096)

char *
sasl_b64_encode(const void *in, size_t len)
{
	const unsigned char *p = in;
	size_t outcap = 4 * ((len + 2) / 3) + 1, n = 0, chunk;
	char *out = xmalloc(outcap);

	while (len > 0) {
		chunk = len < B64_CHUNK ? len : B64_CHUNK;
		n += (size_t)EVP_EncodeBlock((unsigned char *)out + n, p,
		    (int)chunk);
		p += chunk;
		len -= chunk;
	}
	out[n] = '\0';
	return out;
}

static int
b64_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	    (c >= '0' && c <= '9') || c == '+' || c == '/';
}

static int
b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	return c == '+' ? 62 : 63;
}

int
sasl_b64_decode(const char *in, size_t len, unsigned char **out,
    size_t *outlen)
{
	size_t i, pad = 0, n = 0, chunk, olen;
	unsigned char *buf;
	int r;

	*out = NULL;
	*outlen = 0;
	if (len % 4 != 0)
		return -1;
	if (len > 0 && in[len - 1] == '=')
		pad = (len > 1 && in[len - 2] == '=') ? 2 : 1;
	for (i = 0; i < len - pad; i++)
		if (!b64_char(in[i]))
			return -1;
	/* Canonical form only: the bits a padded quantum leaves over must
	 * be zero, or two strings would decode to the same bytes. */
	if (pad > 0 && (b64_value(in[len - pad - 1]) & (pad == 1 ? 3 : 15)))
		return -1;
	olen = len / 4 * 3 - pad;
	/* EVP_DecodeBlock writes whole quanta, padding included. */
	buf = xmalloc(len / 4 * 3 + 1);
	for (i = 0; i < len; i += chunk) {
		chunk = len - i < 4 * 4096 ? len - i : 4 * 4096;
		r = EVP_DecodeBlock(buf + n, (const unsigned char *)in + i,
		    (int)chunk);
		if (r < 0) {
			xfree_secret(buf, len / 4 * 3 + 1);
			return -1;
		}
		n += (size_t)r;
	}
	buf[olen] = '\0';
	*out = buf;
	*outlen = olen;
	return 0;
}
