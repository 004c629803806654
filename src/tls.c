/*
 * OpenSSL client contexts and per-connection SSL objects for the upstream
 * side. Invariants: a context made with verify on always has
 * SSL_VERIFY_PEER and at least one CA source loaded (or creation failed);
 * an SSL made with verify on always carries the expected peer identity
 * (host name or IP address), so a certificate valid for another name is
 * refused by OpenSSL itself during the handshake, never checked afterwards.
 *
 * Session resumption: each context owns a small cache (ex_data of the
 * SSL_CTX, freed with it) of the newest session per peer, where a peer is
 * the host and port an SSL was made for (ex_data of the SSL). OpenSSL does
 * not verify the certificate again when it resumes: the resumed connection
 * inherits the verify result and peer certificate of the handshake that
 * made the session. That is sound only if the session was verified under
 * the same rules for the same name, hence the rules here: a session is
 * offered only to the peer it was made with, only by the context (CAs and
 * verify mode) that made it, and a context that verifies caches only
 * sessions whose verification passed. Each connection is offered a copy
 * of the cached session (tls_cache_offer), so one session serves every
 * connection until it expires or the server gives a newer one. The cache
 * has its own mutex, so the "any thread" promise of tls.h still holds.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "xmalloc.h"

/* Peers one context remembers sessions for; a relay's context has one. */
#define TLS_CACHE_PEERS 8

struct tls_cache_entry {
	char *peer;             /* "host port" */
	SSL_SESSION *sess;
	unsigned long used;     /* tick of the last store, for eviction */
};

struct tls_cache {
	pthread_mutex_t mtx;
	struct tls_cache_entry e[TLS_CACHE_PEERS];
	unsigned long tick;
};

static pthread_once_t tls_index_once = PTHREAD_ONCE_INIT;
static int tls_ctx_index = -1;	/* SSL_CTX ex_data: struct tls_cache */
static int tls_ssl_index = -1;	/* SSL ex_data: the peer, malloc'd */

static void
tls_cache_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
    long argl, void *argp)
{
	struct tls_cache *cache = ptr;
	size_t i;

	if (cache == NULL)
		return;
	for (i = 0; i < TLS_CACHE_PEERS; i++) {
		free(cache->e[i].peer);
		SSL_SESSION_free(cache->e[i].sess);
	}
	pthread_mutex_destroy(&cache->mtx);
	free(cache);
}

static void
tls_peer_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
    long argl, void *argp)
{
	free(ptr);
}

static void
tls_index_init(void)
{
	tls_ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL,
	    tls_cache_free);
	tls_ssl_index = SSL_get_ex_new_index(0, NULL, NULL, NULL,
	    tls_peer_free);
}

static struct tls_cache *
tls_cache_of(const SSL_CTX *ctx)
{
	if (tls_ctx_index < 0)
		return NULL;
	return SSL_CTX_get_ex_data(ctx, tls_ctx_index);
}

static const char *
tls_peer_of(const SSL *ssl)
{
	if (tls_ssl_index < 0)
		return NULL;
	return SSL_get_ex_data(ssl, tls_ssl_index);
}

/* The entry for peer, or NULL. Called with the mutex held. */
static struct tls_cache_entry *
tls_cache_find(struct tls_cache *cache, const char *peer)
{
	size_t i;

	for (i = 0; i < TLS_CACHE_PEERS; i++)
		if (cache->e[i].peer != NULL &&
		    strcmp(cache->e[i].peer, peer) == 0)
			return &cache->e[i];
	return NULL;
}

static void
tls_cache_entry_clear(struct tls_cache_entry *e)
{
	free(e->peer);
	SSL_SESSION_free(e->sess);
	e->peer = NULL;
	e->sess = NULL;
	e->used = 0;
}

/*
 * OpenSSL's new-session callback: a full handshake that gave a session
 * (TLS 1.2), or a ticket the server sent after the handshake (TLS 1.3,
 * during a later SSL_read). Keeps the newest one per peer. Returns 1 when
 * the cache took the reference OpenSSL hands over.
 */
static int
tls_new_session(SSL *ssl, SSL_SESSION *sess)
{
	struct tls_cache *cache = tls_cache_of(SSL_get_SSL_CTX(ssl));
	const char *peer = tls_peer_of(ssl);
	struct tls_cache_entry *e, *oldest;
	size_t i;

	if (cache == NULL || peer == NULL || !SSL_SESSION_is_resumable(sess))
		return 0;
	/* With verify on a failed verification ends the handshake anyway;
	 * this keeps that true whatever OpenSSL does with the callback. */
	if ((SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) &&
	    SSL_get_verify_result(ssl) != X509_V_OK)
		return 0;
	pthread_mutex_lock(&cache->mtx);
	if ((e = tls_cache_find(cache, peer)) == NULL) {
		oldest = &cache->e[0];
		for (i = 0; i < TLS_CACHE_PEERS; i++) {
			if (cache->e[i].peer == NULL) {
				oldest = &cache->e[i];
				break;
			}
			if (cache->e[i].used < oldest->used)
				oldest = &cache->e[i];
		}
		e = oldest;
		tls_cache_entry_clear(e);
		e->peer = xstrdup(peer);
	}
	SSL_SESSION_free(e->sess);
	e->sess = sess;
	e->used = ++cache->tick;
	pthread_mutex_unlock(&cache->mtx);
	return 1;
}

/*
 * Offers ssl a copy of the cached session of peer, if there is one still
 * valid. An expired one is dropped (a TLS 1.2 server would refuse it
 * anyway). A copy, because OpenSSL 3 marks a TLS 1.3 session it resumed
 * not resumable once the handshake is done (it would have each ticket
 * used once): offering the cached object itself would spend it on one
 * connection, and against a server that sends no new ticket after a
 * resumption (Postfix's smtpd) every other connection would then make a
 * full handshake. The copy carries the same ticket, so the server sees
 * it again; that only lets it link our connections, which come from one
 * client to its own relay anyway (Postfix's client reuses its cached
 * sessions the same way). A server that takes each ticket once refuses
 * it and the handshake is a full one, whose ticket replaces it here.
 */
static void
tls_cache_offer(SSL_CTX *ctx, SSL *ssl, const char *peer)
{
	struct tls_cache *cache = tls_cache_of(ctx);
	struct tls_cache_entry *e;
	SSL_SESSION *copy = NULL;
	long now = (long)time(NULL);

	if (cache == NULL)
		return;
	pthread_mutex_lock(&cache->mtx);
	if ((e = tls_cache_find(cache, peer)) != NULL) {
		if (SSL_SESSION_get_time(e->sess) +
		    SSL_SESSION_get_timeout(e->sess) < now)
			tls_cache_entry_clear(e);
		else if ((copy = SSL_SESSION_dup(e->sess)) == NULL ||
		    SSL_set_session(ssl, copy) != 1)
			ERR_clear_error();
	}
	pthread_mutex_unlock(&cache->mtx);
	/* ssl holds its own reference */
	SSL_SESSION_free(copy);
}

static void
tls_errstr(char *buf, size_t len, const char *what)
{
	unsigned long e;
	const char *reason = NULL;

	/* The oldest error is usually the root cause; drain the rest so
	 * they do not leak into the next caller on this thread. */
	e = ERR_get_error();
	if (e != 0)
		reason = ERR_reason_error_string(e);
	ERR_clear_error();
	if (reason != NULL)
		snprintf(buf, len, "%s: %s", what, reason);
	else if (e != 0)
		snprintf(buf, len, "%s: OpenSSL error %lx", what, e);
	else
		snprintf(buf, len, "%s failed", what);
}

SSL_CTX *
tls_client_ctx_new(const char *ca_file, int verify, char *err, size_t errlen)
{
	SSL_CTX *ctx;
	struct tls_cache *cache;
	char what[300];

	if (errlen > 0)
		err[0] = '\0';
	ERR_clear_error();
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
		tls_errstr(err, errlen, "SSL_CTX_new");
		return NULL;
	}
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
		tls_errstr(err, errlen, "TLS minimum version");
		goto fail;
	}
	/*
	 * SSL_OP_IGNORE_UNEXPECTED_EOF: SMTP servers often close the TCP
	 * connection after 221 without a close_notify; OpenSSL 3 would call
	 * that an error. SMTP has its own end marker (the 250 after ".",
	 * the 221 after QUIT), so a truncation cannot go unnoticed.
	 */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
	/*
	 * libevent retries a blocked SSL_write from wherever its buffer has
	 * moved to. Partial writes stay off: libevent's bufferevent moves on
	 * to the next chunk after any positive return, so a short write
	 * would silently drop the rest of the chunk.
	 */
	SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

	if (ca_file != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			int saved = errno;

			/* "No such file" says more than OpenSSL's "system
			 * lib"; keep OpenSSL's reason for a bad PEM. */
			if (access(ca_file, R_OK) == -1) {
				ERR_clear_error();
				snprintf(err, errlen, "ca_file %s: %s", ca_file,
				    strerror(errno));
			} else {
				snprintf(what, sizeof(what), "ca_file %s",
				    ca_file);
				tls_errstr(err, errlen, what);
			}
			errno = saved;
			goto fail;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		if (verify) {
			tls_errstr(err, errlen, "system CA store");
			goto fail;
		}
		ERR_clear_error();
	}
	SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
	    NULL);

	/* Client sessions go to our own cache only (see the top). */
	pthread_once(&tls_index_once, tls_index_init);
	if (tls_ctx_index < 0 || tls_ssl_index < 0) {
		snprintf(err, errlen, "no OpenSSL ex_data index for the "
		    "session cache");
		goto fail;
	}
	cache = xcalloc(1, sizeof(*cache));
	pthread_mutex_init(&cache->mtx, NULL);
	if (SSL_CTX_set_ex_data(ctx, tls_ctx_index, cache) != 1) {
		pthread_mutex_destroy(&cache->mtx);
		free(cache);
		tls_errstr(err, errlen, "session cache");
		goto fail;
	}
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
	    SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ctx, tls_new_session);
	return ctx;

fail:
	SSL_CTX_free(ctx);
	return NULL;
}

void
tls_ctx_free(SSL_CTX *ctx)
{
	SSL_CTX_free(ctx);
}

int
tls_ctx_verifies(SSL_CTX *ctx)
{
	return (SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER) != 0;
}

static int
tls_host_is_address(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 ||
	    inet_pton(AF_INET6, host, buf) == 1;
}

/* Sets what the peer must prove: SNI and the name, or the address. */
static int
tls_ssl_identity(SSL *ssl, const char *host, int verify)
{
	X509_VERIFY_PARAM *param;

	if (tls_host_is_address(host)) {
		if (verify) {
			param = SSL_get0_param(ssl);
			if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1)
				return -1;
		}
		return 0;
	}
	if (SSL_set_tlsext_host_name(ssl, host) != 1)
		return -1;
	if (verify) {
		SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (SSL_set1_host(ssl, host) != 1)
			return -1;
	}
	return 0;
}

SSL *
tls_client_ssl_new(SSL_CTX *ctx, const char *host, const char *port,
    int verify)
{
	SSL *ssl;
	char *peer;
	size_t len;

	if ((ssl = SSL_new(ctx)) == NULL)
		return NULL;
	SSL_set_connect_state(ssl);
	if (host == NULL || host[0] == '\0')
		return ssl;
	if (tls_ssl_identity(ssl, host, verify) == -1)
		goto fail;
	if (port == NULL || tls_ssl_index < 0)
		return ssl;
	len = strlen(host) + strlen(port) + 2;
	peer = xmalloc(len);
	snprintf(peer, len, "%s %s", host, port);
	if (SSL_set_ex_data(ssl, tls_ssl_index, peer) != 1) {
		free(peer);
		goto fail;
	}
	tls_cache_offer(ctx, ssl, peer);
	return ssl;

fail:
	SSL_free(ssl);
	return NULL;
}

int
tls_session_reused(const SSL *ssl)
{
	return ssl != NULL && SSL_session_reused(ssl) == 1;
}

void
tls_session_end(SSL *ssl)
{
	/* Only a completed handshake has a session worth keeping. */
	if (ssl != NULL && SSL_is_init_finished(ssl))
		SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) |
		    SSL_SENT_SHUTDOWN);
}

void
tls_session_forget(const SSL *ssl)
{
	struct tls_cache *cache;
	struct tls_cache_entry *e;
	const char *peer;

	if (ssl == NULL || (peer = tls_peer_of(ssl)) == NULL ||
	    (cache = tls_cache_of(SSL_get_SSL_CTX(ssl))) == NULL)
		return;
	pthread_mutex_lock(&cache->mtx);
	if ((e = tls_cache_find(cache, peer)) != NULL)
		tls_cache_entry_clear(e);
	pthread_mutex_unlock(&cache->mtx);
}

const char *
tls_verify_error(const SSL *ssl)
{
	long r;

	if (ssl == NULL)
		return NULL;
	r = SSL_get_verify_result(ssl);
	if (r == X509_V_OK)
		return NULL;
	return X509_verify_cert_error_string(r);
}

const char *
tls_handshake_error(const SSL *ssl, unsigned long err, char *buf, size_t len)
{
	const char *verr, *reason = NULL;

	if (len == 0)
		return buf;
	if (err == 0) {
		err = ERR_get_error();
		ERR_clear_error();
	}
	/*
	 * A failed verification shows in the error queue only as "certificate
	 * verify failed"; the useful part (which check failed) is the verify
	 * result. With verify off the result may be set while the handshake
	 * failed for another reason, so it is consulted only when the peer
	 * is verified and OpenSSL says verification was the cause, or when
	 * the queue is empty.
	 */
	verr = NULL;
	if (ssl != NULL && (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER))
		verr = tls_verify_error(ssl);
	if (verr != NULL && (err == 0 || (ERR_GET_LIB(err) == ERR_LIB_SSL &&
	    ERR_GET_REASON(err) == SSL_R_CERTIFICATE_VERIFY_FAILED))) {
		snprintf(buf, len, "certificate verify failed: %s", verr);
		return buf;
	}
	if (err != 0)
		reason = ERR_reason_error_string(err);
	if (reason != NULL)
		snprintf(buf, len, "%s", reason);
	else if (err != 0)
		snprintf(buf, len, "OpenSSL error %lx", err);
	else
		snprintf(buf, len, "handshake failed");
	return buf;
}

const char *
tls_describe(const SSL *ssl, char *buf, size_t len)
{
	const SSL_CIPHER *cipher;

	if (len == 0)
		return buf;
	if (ssl == NULL) {
		snprintf(buf, len, "none");
		return buf;
	}
	cipher = SSL_get_current_cipher(ssl);
	snprintf(buf, len, "%s %s", SSL_get_version(ssl),
	    cipher != NULL ? SSL_CIPHER_get_name(cipher) : "(none)");
	return buf;
}
