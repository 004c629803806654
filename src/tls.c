/*
 * OpenSSL client contexts and per-connection SSL objects for the upstream
 * side. Invariants: a context made with verify on always has
 * SSL_VERIFY_PEER and at least one CA source loaded (or creation failed);
 * an SSL made with verify on always carries the expected peer identity
 * (host name or IP address), so a certificate valid for another name is
 * refused by OpenSSL itself during the handshake, never checked afterwards.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"

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

SSL *
tls_client_ssl_new(SSL_CTX *ctx, const char *host, int verify)
{
	SSL *ssl;
	X509_VERIFY_PARAM *param;

	if ((ssl = SSL_new(ctx)) == NULL)
		return NULL;
	SSL_set_connect_state(ssl);
	if (host == NULL || host[0] == '\0')
		return ssl;

	if (tls_host_is_address(host)) {
		if (verify) {
			param = SSL_get0_param(ssl);
			if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1)
				goto fail;
		}
		return ssl;
	}

	if (SSL_set_tlsext_host_name(ssl, host) != 1)
		goto fail;
	if (verify) {
		SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (SSL_set1_host(ssl, host) != 1)
			goto fail;
	}
	return ssl;

fail:
	SSL_free(ssl);
	return NULL;
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
