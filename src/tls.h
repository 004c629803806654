/*
 * OpenSSL for the outbound side: one client context per relay (verification
 * on by default, system CAs or a CA file, TLS 1.2 at least), one SSL per
 * connection with SNI and the host name (or IP address) check, and the
 * words to say why a handshake failed. The bufferevent plumbing (implicit
 * TLS from the first byte, STARTTLS as a filter over the plain connection)
 * lives in smtp_client.c; nothing here does I/O or keeps global state, so
 * these functions may be called from any thread.
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
 * subjectAltName must match. Returns the SSL (the caller, or the
 * bufferevent it is handed to, frees it), or NULL if OpenSSL fails.
 */
SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *host, int verify);

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
