/*
 * OpenSSL for the outbound side: one client context per relay (verification
 * on by default, system CAs or a CA file, TLS 1.2 at least), one SSL per
 * connection with SNI and the host name (or IP address) check, and the
 * words to say why a handshake failed. The bufferevent plumbing (implicit
 * TLS from the first byte, STARTTLS as a filter over the plain connection)
 * lives in smtp_client.c; nothing here does I/O, and the only global state
 * is two OpenSSL ex_data indices made once, so these functions may be
 * called from any thread.
 *
 * Session resumption: every context keeps the newest session per peer
 * (host and port) that a server gave it, TLS 1.3 tickets included, and a
 * new SSL for the same peer offers it. OpenSSL does not verify the
 * certificate of a resumed session again; it inherits the verify result,
 * host name check included, of the full handshake that made it. So a
 * session is only ever offered to the peer it was made with, by the
 * context that made it (its CAs and verify mode), and a verifying context
 * keeps only sessions that passed verification. Whoever changes the CAs or
 * verify mode makes a new context, which starts with an empty cache.
 */
#ifndef SMARTHOST_TLS_H
#define SMARTHOST_TLS_H

#include <stddef.h>
#include <openssl/ssl.h>

/*
 * Creates a client context: TLS_client_method with TLS 1.2 as the minimum,
 * no renegotiation, and a peer that closes without close_notify treated as
 * a clean end of stream (servers routinely do that after QUIT). When verify
 * is set, the peer must present a certificate chaining to a trusted CA
 * (SSL_VERIFY_PEER); the CAs are those in ca_file (PEM, one or more) or,
 * when ca_file is NULL, OpenSSL's default paths (the system store). With
 * verify off the CAs are still loaded but a bad certificate does not stop
 * the handshake.
 * Returns the context, which the caller frees with tls_ctx_free(), or NULL
 * with a message in err ("ca_file /x: No such file or directory", ...).
 */
SSL_CTX *tls_client_ctx_new(const char *ca_file, int verify, char *err,
    size_t errlen);
/* Accepts NULL. Contexts are reference counted by OpenSSL: an SSL made from
 * ctx keeps it alive until the SSL is freed. */
void tls_ctx_free(SSL_CTX *ctx);
/* 1 if ctx was made with verify on (SSL_VERIFY_PEER), 0 otherwise. */
int tls_ctx_verifies(SSL_CTX *ctx);

/*
 * Creates the SSL for one connection to host (a name or a numeric IPv4/IPv6
 * address, without brackets), in client (connect) state. For a name it sets
 * SNI and, when verify is set, the name the certificate must carry (no
 * partial wildcards); for an address it sets no SNI (RFC 6066 forbids
 * literals) and, when verify is set, the address the certificate's IP
 * subjectAltName must match. With a port too, the SSL belongs to the peer
 * "host port": it offers a copy of that peer's cached session, if any and
 * not expired (so a TLS 1.3 ticket serves every connection, not one), and
 * the sessions the server gives it go to ctx's cache. The
 * server may refuse the session; then the handshake is a full one (and
 * verifies) as if none had been offered. Returns the SSL (the caller, or
 * the bufferevent it is handed to, frees it), or NULL if OpenSSL fails.
 */
SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *host, const char *port,
    int verify);

/* 1 if ssl's handshake resumed a session, 0 if it was a full one. */
int tls_session_reused(const SSL *ssl);
/*
 * The connection on ssl ends without a TLS error (after QUIT, or an SMTP
 * level failure): its session stays resumable. Call it before the SSL is
 * freed: libevent frees SSLs without SSL_shutdown, and OpenSSL takes an SSL
 * freed that way for a broken connection and makes its session (the one
 * in the cache too) unresumable. A fatal TLS alert invalidates the session
 * inside OpenSSL whatever this says. Accepts NULL.
 */
void tls_session_end(SSL *ssl);
/* Drops the cached session of ssl's peer, after a handshake that failed,
 * so that the next connection makes a full handshake. Accepts NULL. */
void tls_session_forget(const SSL *ssl);

/*
 * The reason the peer's certificate was rejected, as OpenSSL words it
 * ("unable to get local issuer certificate", "hostname mismatch", ...), or
 * NULL when verification passed or was not reached. A static string.
 */
const char *tls_verify_error(const SSL *ssl);

/*
 * Writes into buf (and returns buf) why a handshake on ssl failed, without
 * the "TLS: " prefix the caller adds:
 *   "certificate verify failed: <tls_verify_error>" when the certificate
 *   was rejected; else the reason of OpenSSL error err ("wrong version
 *   number", ...; pass 0 to take the oldest error on this thread's queue,
 *   which is then cleared); else "handshake failed".
 * ssl may be NULL (then only err is used).
 */
const char *tls_handshake_error(const SSL *ssl, unsigned long err, char *buf,
    size_t len);

/* "TLSv1.3 TLS_AES_256_GCM_SHA384" for logs, into buf; returns buf. */
const char *tls_describe(const SSL *ssl, char *buf, size_t len);

#endif
