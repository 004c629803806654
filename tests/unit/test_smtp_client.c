/*
 * Protocol tests for smtp_client: the session runs on a real libevent loop
 * in the test's main thread and talks over real TCP (127.0.0.1, port 0) to a
 * scripted SMTP server in a second thread. The server is blocking and
 * simple (one script function per test), records every byte it receives,
 * and can speak TLS with a certificate made here, signed by a CA made here.
 * Every wait is bounded: socket timeouts on the server, a loop exit timer
 * on the client, Criterion's timeout on the test.
 */
#include <sys/types.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "outcome.h"
#include "sasl.h"
#include "smtp_client.h"
#include "tls.h"
#include "worker.h"
#include "xmalloc.h"

#define PEER_TIMEOUT 10   /* seconds any server read or accept may take */
#define LOOP_TIMEOUT 15   /* seconds the client loop may run */

/* ---- the scripted server ---- */

struct peer;
typedef void (*peer_script)(struct peer *);

struct peer {
	int lfd;
	int fd;
	unsigned short port;
	pthread_t thread;
	int started;
	peer_script script;
	SSL_CTX *sctx;       /* for STARTTLS and implicit TLS */
	SSL *ssl;
	char in[65536];
	size_t inlen;
	unsigned nreads;     /* reads from the socket so far */
	char rx[65536];      /* every byte received, in order */
	size_t rxlen;
	int rx_off;          /* large bodies: do not record */
	char fail[512];      /* first script failure */
	char sni[256];
	int tls_failed;
	int implicit;        /* TLS from the first byte */
	/* per test */
	size_t body_lines;   /* large body: lines that matched */
	unsigned data_reads; /* reads it took to get body and "." */
	char batch[4096];    /* first read after the EHLO reply */
};

static void
peer_failf(struct peer *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
peer_failf(struct peer *p, const char *fmt, ...)
{
	va_list ap;

	if (p->fail[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(p->fail, sizeof(p->fail), fmt, ap);
	va_end(ap);
}

static void
rx_append(struct peer *p, const char *s, size_t n)
{
	if (p->rx_off)
		return;
	if (p->rxlen + n + 1 > sizeof(p->rx)) {
		peer_failf(p, "more than %zu bytes to record", sizeof(p->rx));
		return;
	}
	memcpy(p->rx + p->rxlen, s, n);
	p->rxlen += n;
	p->rx[p->rxlen] = '\0';
}

static ssize_t
peer_read(struct peer *p)
{
	ssize_t n;

	if (p->inlen == sizeof(p->in))
		return -1;
	if (p->ssl != NULL) {
		n = SSL_read(p->ssl, p->in + p->inlen,
		    (int)(sizeof(p->in) - p->inlen));
		if (n <= 0)
			return -1;
	} else {
		n = recv(p->fd, p->in + p->inlen, sizeof(p->in) - p->inlen, 0);
		if (n <= 0)
			return -1;
	}
	p->inlen += (size_t)n;
	p->nreads++;
	return n;
}

/* Reads one line; returns its length without the line end, or -1. */
static int
peer_line(struct peer *p, char *line, size_t size)
{
	char *nl;
	size_t n, l;

	for (;;) {
		if ((nl = memchr(p->in, '\n', p->inlen)) != NULL) {
			n = (size_t)(nl - p->in) + 1;
			rx_append(p, p->in, n);
			l = n - 1;
			if (l > 0 && p->in[l - 1] == '\r')
				l--;
			if (size > 0) {
				memcpy(line, p->in, l < size ? l : size - 1);
				line[l < size ? l : size - 1] = '\0';
			}
			memmove(p->in, p->in + n, p->inlen - n);
			p->inlen -= n;
			return (int)l;
		}
		if (peer_read(p) < 0)
			return -1;
	}
}

static int
peer_send(struct peer *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
peer_send(struct peer *p, const char *fmt, ...)
{
	char buf[8192];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf))
		abort();
	if (p->ssl != NULL) {
		if (SSL_write(p->ssl, buf, n) != n)
			return -1;
	} else if (send(p->fd, buf, (size_t)n, MSG_NOSIGNAL) != n) {
		return -1;
	}
	return 0;
}

/* Reads a line and checks it starts with want (case-sensitive). */
static int
peer_expect(struct peer *p, const char *want)
{
	char line[4096];

	if (peer_line(p, line, sizeof(line)) < 0) {
		peer_failf(p, "expected \"%s\", got EOF or timeout", want);
		return -1;
	}
	if (strncmp(line, want, strlen(want)) != 0) {
		peer_failf(p, "expected \"%s\", got \"%s\"", want, line);
		return -1;
	}
	return 0;
}

/* Reads the message up to and including the "." line; the bytes land in
 * rx. Counts the socket reads it took. */
static int
peer_data(struct peer *p)
{
	char line[4096];
	unsigned before = p->nreads;
	int n;

	for (;;) {
		if ((n = peer_line(p, line, sizeof(line))) < 0) {
			peer_failf(p, "EOF inside DATA");
			return -1;
		}
		if (n == 1 && line[0] == '.')
			break;
	}
	p->data_reads = p->nreads - before;
	return 0;
}

static int
peer_starttls(struct peer *p)
{
	if (p->inlen != 0) {
		peer_failf(p, "client sent data before the handshake");
		return -1;
	}
	p->ssl = SSL_new(p->sctx);
	SSL_set_fd(p->ssl, p->fd);
	if (SSL_accept(p->ssl) != 1) {
		p->tls_failed = 1;
		SSL_free(p->ssl);
		p->ssl = NULL;
		return -1;
	}
	if (SSL_get_servername(p->ssl, TLSEXT_NAMETYPE_host_name) != NULL)
		snprintf(p->sni, sizeof(p->sni), "%s",
		    SSL_get_servername(p->ssl, TLSEXT_NAMETYPE_host_name));
	return 0;
}

/* Waits until the client closes (or the timeout). */
static void
peer_drain(struct peer *p)
{
	char line[4096];

	while (peer_line(p, line, sizeof(line)) >= 0)
		;
}

/* The usual opening: the 220 greeting, a line starting with ehlo, then
 * reply. */
static int
peer_greet(struct peer *p, const char *ehlo, const char *reply)
{
	return peer_send(p, "220 mx.test ESMTP\r\n") ||
	    peer_expect(p, ehlo) ||
	    peer_send(p, "%s", reply);
}

/* The usual end: QUIT, answered with 221. */
static int
peer_quit(struct peer *p)
{
	return peer_expect(p, "QUIT") ||
	    peer_send(p, "221 Bye\r\n");
}

static void *
peer_main(void *arg)
{
	struct peer *p = arg;
	struct pollfd pfd = { .fd = p->lfd, .events = POLLIN };
	struct timeval tv = { .tv_sec = PEER_TIMEOUT };

	if (poll(&pfd, 1, PEER_TIMEOUT * 1000) != 1) {
		peer_failf(p, "no connection");
		return NULL;
	}
	if ((p->fd = accept(p->lfd, NULL, NULL)) == -1) {
		peer_failf(p, "accept: %s", strerror(errno));
		return NULL;
	}
	setsockopt(p->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(p->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	p->script(p);
	if (p->ssl != NULL) {
		SSL_free(p->ssl);
		p->ssl = NULL;
	}
	close(p->fd);
	p->fd = -1;
	return NULL;
}

static void
peer_start(struct peer *p, peer_script script)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	p->fd = -1;
	p->script = script;
	p->lfd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_neq(p->lfd, -1);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(p->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(p->lfd, 8), 0);
	cr_assert_eq(getsockname(p->lfd, (struct sockaddr *)&sin, &len), 0);
	p->port = ntohs(sin.sin_port);
	cr_assert_eq(pthread_create(&p->thread, NULL, peer_main, p), 0);
	p->started = 1;
}

static void
peer_join(struct peer *p)
{
	if (p->started)
		pthread_join(p->thread, NULL);
	p->started = 0;
	close(p->lfd);
}

/* ---- the client side ---- */

struct run {
	struct event_base *base;
	struct evdns_base *dns;
	struct smtp_client *c;
	struct smtp_client_params params;
	char portstr[16];
	int loop_timeout;    /* seconds; LOOP_TIMEOUT unless a test needs more */
	/* what to send on each ready() */
	struct smtp_client_msg msgs[3];
	int nmsgs;
	int nsent;
	int send_rc;
	int free_in_rcpt;    /* smtp_client_free from the first rcpt() */
	int quit_in_done;    /* smtp_client_quit from done() */
	/* what happened */
	int nready;
	int nrcpt;
	size_t rcpt_idx[8];
	struct outcome rcpt[8];
	int ndone;
	struct outcome done[4];
	int nclosed;
	struct outcome closed;
	int stale;           /* smtp_client_stale() in closed() */
	char peer_at_close[1200];
	double elapsed;
	/* authentication */
	struct smtp_client_auth auth;
	int have_auth;       /* smtp_client_set_auth(&auth) before connect */
	int nauth_required;
	int nauthenticated;
	char authed[32];     /* mechanism reported by authenticated() */
	char mech_at_ready[32]; /* smtp_client_auth_mech at the last ready */
	int rcpts_at_auth_required; /* rcpt() calls before the demand */
};

static void
cb_ready(struct smtp_client *c, void *arg)
{
	struct run *r = arg;
	const char *mech = smtp_client_auth_mech(c);

	r->nready++;
	snprintf(r->mech_at_ready, sizeof(r->mech_at_ready), "%s",
	    mech != NULL ? mech : "");
	if (r->nsent < r->nmsgs) {
		if (smtp_client_send(c, &r->msgs[r->nsent++]) != 0)
			r->send_rc = -1;
	} else {
		smtp_client_quit(c);
	}
}

static void
cb_rcpt(struct smtp_client *c, size_t idx, const struct outcome *o,
    void *arg)
{
	struct run *r = arg;

	if (r->nrcpt < 8) {
		r->rcpt_idx[r->nrcpt] = idx;
		r->rcpt[r->nrcpt] = *o;
	}
	r->nrcpt++;
	if (r->free_in_rcpt) {
		/* the owner drops the session from inside a callback while
		 * more pipelined replies are buffered */
		smtp_client_free(c);
		r->c = NULL;
		event_base_loopbreak(r->base);
	}
}

static void
cb_done(struct smtp_client *c, const struct outcome *o, void *arg)
{
	struct run *r = arg;

	if (r->ndone < 4)
		r->done[r->ndone] = *o;
	r->ndone++;
	if (r->quit_in_done)
		smtp_client_quit(c);
}

static void
cb_closed(struct smtp_client *c, const struct outcome *o, void *arg)
{
	struct run *r = arg;

	r->nclosed++;
	r->closed = *o;
	r->stale = smtp_client_stale(c);
	snprintf(r->peer_at_close, sizeof(r->peer_at_close), "%s",
	    smtp_client_peer(c));
	/* freeing from inside the last callback is allowed */
	smtp_client_free(c);
	r->c = NULL;
	event_base_loopbreak(r->base);
}

static void
cb_auth_required(struct smtp_client *c, void *arg)
{
	struct run *r = arg;

	if (r->nauth_required++ == 0)
		r->rcpts_at_auth_required = r->nrcpt;
}

static void
cb_authenticated(struct smtp_client *c, const char *mech, void *arg)
{
	struct run *r = arg;

	r->nauthenticated++;
	snprintf(r->authed, sizeof(r->authed), "%s", mech);
}

static const struct smtp_client_cb run_cb = {
	.ready = cb_ready,
	.rcpt = cb_rcpt,
	.done = cb_done,
	.closed = cb_closed,
	.auth_required = cb_auth_required,
	.authenticated = cb_authenticated,
};

static void
run_init(struct run *r, unsigned short port, enum tls_mode tls)
{
	memset(r, 0, sizeof(*r));
	r->base = event_base_new();
	cr_assert_not_null(r->base);
	snprintf(r->portstr, sizeof(r->portstr), "%u", port);
	r->params.host = "127.0.0.1";
	r->params.port = r->portstr;
	r->params.tls = tls;
	r->params.helo = "client.example";
	r->params.timeout_connect = 5;
	r->params.timeout_command = 5;
	r->params.timeout_data = 5;
	r->loop_timeout = LOOP_TIMEOUT;
}

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
run_go(struct run *r)
{
	struct timeval tv = { .tv_sec = r->loop_timeout };
	double t0 = now();

	r->c = smtp_client_new(r->base, r->dns, &r->params, &run_cb, r);
	cr_assert_not_null(r->c);
	if (r->have_auth)
		smtp_client_set_auth(r->c, &r->auth);
	smtp_client_connect(r->c);
	event_base_loopexit(r->base, &tv);
	event_base_dispatch(r->base);
	r->elapsed = now() - t0;
	if (r->c != NULL) {
		smtp_client_free(r->c);
		r->c = NULL;
	}
	/* libevent closes a freed bufferevent's socket from the loop (its
	 * finalizer); let it run so the server sees the close now */
	event_base_loop(r->base, EVLOOP_NONBLOCK);
	event_base_loop(r->base, EVLOOP_NONBLOCK);
}

static void
run_fini(struct run *r)
{
	if (r->dns != NULL)
		evdns_base_free(r->dns, 0);
	event_base_free(r->base);
}

/* A body file: unlinked at once, read through the fd. */
static int
body_fd(const char *content, size_t len)
{
	char path[] = "/tmp/test_smtp_client.XXXXXX";
	int fd = mkstemp(path);

	cr_assert_neq(fd, -1);
	unlink(path);
	cr_assert_eq(write(fd, content, len), (ssize_t)len);
	return fd;
}

static void
msg_init(struct smtp_client_msg *m, const char *sender,
    const char *const *rcpts, size_t n, int fd, off_t size)
{
	memset(m, 0, sizeof(*m));
	m->sender = sender;
	m->rcpts = rcpts;
	m->nrcpts = n;
	m->body_fd = fd;
	m->body_size = size;
}

/*
 * The usual setup: the server runs script and r holds one message of
 * "hi\n" from a@example.org to rcpts. Returns the body's fd, for the caller
 * to close. Anything else r needs is set before session_go().
 */
static int
one_msg_init(struct peer *p, struct run *r, peer_script script,
    enum tls_mode tls, const char *const *rcpts, size_t n)
{
	int fd;

	peer_start(p, script);
	run_init(r, p->port, tls);
	fd = body_fd("hi\n", 3);
	msg_init(&r->msgs[0], "a@example.org", rcpts, n, fd, 3);
	r->nmsgs = 1;
	return fd;
}

/* Runs the session, waits for the server and checks it saw no fault. */
static void
session_go(struct peer *p, struct run *r)
{
	run_go(r);
	peer_join(p);
	cr_assert_str_empty(p->fail, "server: %s", p->fail);
}

/* one_msg_init() and session_go() with nothing in between. */
static int
one_message(struct peer *p, struct run *r, peer_script script,
    enum tls_mode tls, const char *const *rcpts, size_t n)
{
	int fd = one_msg_init(p, r, script, tls, rcpts, n);

	session_go(p, r);
	return fd;
}

/* A resolver that knows only the names in hosts (no name servers). */
static struct evdns_base *
dns_with_hosts(struct event_base *base, const char *hosts)
{
	char path[] = "/tmp/test_smtp_client_hosts.XXXXXX";
	struct evdns_base *dns;
	int fd = mkstemp(path);

	cr_assert_neq(fd, -1);
	cr_assert_eq(write(fd, hosts, strlen(hosts)), (ssize_t)strlen(hosts));
	close(fd);
	dns = evdns_base_new(base, 0);
	cr_assert_not_null(dns);
	cr_assert_eq(evdns_base_load_hosts(dns, path), 0);
	unlink(path);
	return dns;
}

/* ---- certificates made in the test ---- */

struct pki {
	EVP_PKEY *cakey;
	X509 *ca;
	EVP_PKEY *key;
	X509 *leaf;
	char cafile[64];
	SSL_CTX *sctx;    /* the server's */
};

static void
cert_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);

	cr_assert_not_null(ext, "extension %d %s", nid, value);
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
}

static X509 *
cert_make(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *ikey,
    const char *san)
{
	static long serial = 1;
	X509 *x = X509_new();
	X509_NAME *name;
	X509V3_CTX v3;

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, key);
	name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
	    (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(x, issuer != NULL ?
	    X509_get_subject_name(issuer) : name);
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, issuer != NULL ? issuer : x, x, NULL, NULL, 0);
	cert_ext(x, &v3, NID_subject_key_identifier, "hash");
	if (issuer == NULL) {
		cert_ext(x, &v3, NID_basic_constraints, "critical,CA:TRUE");
		cert_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		cert_ext(x, &v3, NID_authority_key_identifier, "keyid:always");
		cert_ext(x, &v3, NID_basic_constraints, "CA:FALSE");
		cert_ext(x, &v3, NID_key_usage, "critical,digitalSignature");
		cert_ext(x, &v3, NID_ext_key_usage, "serverAuth");
		cert_ext(x, &v3, NID_subject_alt_name, san);
	}
	cr_assert_gt(X509_sign(x, ikey != NULL ? ikey : key, EVP_sha256()), 0);
	return x;
}

static void
pki_init(struct pki *k)
{
	FILE *f;
	int fd;

	memset(k, 0, sizeof(*k));
	k->cakey = EVP_EC_gen("P-256");
	k->key = EVP_EC_gen("P-256");
	cr_assert(k->cakey != NULL && k->key != NULL);
	k->ca = cert_make(k->cakey, "smarthostd test CA", NULL, NULL, NULL);
	k->leaf = cert_make(k->key, "mx.test", k->ca, k->cakey,
	    "DNS:mx.test,IP:127.0.0.1");

	snprintf(k->cafile, sizeof(k->cafile), "/tmp/test_smtp_ca.XXXXXX");
	fd = mkstemp(k->cafile);
	cr_assert_neq(fd, -1);
	f = fdopen(fd, "w");
	cr_assert_eq(PEM_write_X509(f, k->ca), 1);
	fclose(f);

	k->sctx = SSL_CTX_new(TLS_server_method());
	cr_assert_not_null(k->sctx);
	cr_assert_eq(SSL_CTX_use_certificate(k->sctx, k->leaf), 1);
	cr_assert_eq(SSL_CTX_use_PrivateKey(k->sctx, k->key), 1);
}

static void
pki_fini(struct pki *k)
{
	unlink(k->cafile);
	SSL_CTX_free(k->sctx);
	X509_free(k->leaf);
	X509_free(k->ca);
	EVP_PKEY_free(k->key);
	EVP_PKEY_free(k->cakey);
}

static SSL_CTX *
client_ctx(const char *cafile, int verify)
{
	char err[256];
	SSL_CTX *ctx = tls_client_ctx_new(cafile, verify, err, sizeof(err));

	cr_assert_not_null(ctx, "tls_client_ctx_new: %s", err);
	return ctx;
}

/* ---- fixture ---- */

static void
setup(void)
{
	signal(SIGPIPE, SIG_IGN);
	evthread_use_pthreads();
	log_init("test_smtp_client", getenv("TEST_DEBUG") != NULL);
}

TestSuite(smtp_client, .init = setup, .timeout = 60);

/* ---- scripts ---- */

static const char simple_body[] =
    "Subject: t\n\n.leading dot\nline2\r\nbare cr\rend";

/* The one message of r: simple_body from a@example.org to rcpts (one
 * recipient). Returns its body's descriptor, for the caller to close. */
static int
simple_msg(struct run *r, const char *const *rcpts)
{
	int fd = body_fd(simple_body, strlen(simple_body));

	msg_init(&r->msgs[0], "a@example.org", rcpts, 1, fd,
	    (off_t)strlen(simple_body));
	r->nmsgs = 1;
	return fd;
}

static const char simple_wire[] =
    "Subject: t\r\n\r\n..leading dot\r\nline2\r\nbare cr\r\nend\r\n.\r\n";

/* No PIPELINING: one command at a time. */
static void
script_simple(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 ENHANCEDSTATUSCODES\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "250 2.1.0 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_send(p, "250 2.1.5 Ok\r\n") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "354 go ahead\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 2.0.0 Ok: queued as 1234\r\n") ||
	    peer_expect(p, "QUIT") ||
	    peer_send(p, "221 2.0.0 Bye\r\n"))
		return;
	peer_drain(p);
}

Test(smtp_client, simple_delivery)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	char want[1024];
	int fd;

	peer_start(&p, script_simple);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = simple_msg(&r, rcpts);
	session_go(&p, &r);

	cr_assert_eq(r.send_rc, 0);
	cr_assert_eq(r.nready, 2);
	cr_assert_eq(r.nrcpt, 1);
	cr_assert_eq(r.rcpt[0].status, OUTCOME_OK);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	cr_assert_eq(r.done[0].code, 250);
	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_OK, "closed: %s", r.closed.text);
	snprintf(want, sizeof(want), "EHLO client.example\r\n"
	    "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
	    "DATA\r\n%sQUIT\r\n", simple_wire);
	cr_assert_str_eq(p.rx, want);
	/* the last body bytes and the "." arrived together */
	cr_assert_eq(p.data_reads, 1);
	snprintf(want, sizeof(want), "127.0.0.1[127.0.0.1]:%u", p.port);
	cr_assert_str_eq(r.peer_at_close, want);
	close(fd);
	run_fini(&r);
}

/* A body in memory goes out as the same bytes as from a file. */
Test(smtp_client, simple_delivery_from_memory)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	char want[1024];

	peer_start(&p, script_simple);
	run_init(&r, p.port, TLS_MODE_NONE);
	msg_init(&r.msgs[0], "a@example.org", rcpts, 1, -1,
	    (off_t)strlen(simple_body));
	r.msgs[0].body_mem = (const unsigned char *)simple_body;
	r.nmsgs = 1;
	session_go(&p, &r);

	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK, "%s", r.done[0].text);
	snprintf(want, sizeof(want), "EHLO client.example\r\n"
	    "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
	    "DATA\r\n%sQUIT\r\n", simple_wire);
	cr_assert_str_eq(p.rx, want);
	cr_assert_eq(p.data_reads, 1);
	run_fini(&r);
}

static void
script_pipelined(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n"
	    "250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"))
		return;
	/* Everything up to DATA must be here before we answer anything. */
	if (peer_read(p) < 0) {
		peer_failf(p, "EOF after EHLO");
		return;
	}
	memcpy(p->batch, p->in, p->inlen < sizeof(p->batch) - 1 ? p->inlen :
	    sizeof(p->batch) - 1);
	if (peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_expect(p, "RCPT TO:<b1@example.net>") ||
	    peer_expect(p, "RCPT TO:<b2@example.net>") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
	    "550 5.1.1 <b2@example.net>: no such user\r\n354 go ahead\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 2.0.0 Ok: queued\r\n") ||
	    peer_expect(p, "QUIT") ||
	    peer_send(p, "221 2.0.0 Bye\r\n"))
		return;
	peer_drain(p);
}

Test(smtp_client, pipelined_one_batch_and_rcpt_550)
{
	static const char *const rcpts[] = { "b1@example.net",
		"b2@example.net" };
	struct peer p = { 0 };
	struct run r;
	char want[512];
	int fd;

	peer_start(&p, script_pipelined);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = body_fd(simple_body, strlen(simple_body));
	msg_init(&r.msgs[0], "a@example.org", rcpts, 2, fd,
	    (off_t)strlen(simple_body));
	r.msgs[0].eightbit = 1;
	r.msgs[0].smtputf8 = 1;
	r.nmsgs = 1;
	session_go(&p, &r);

	snprintf(want, sizeof(want), "MAIL FROM:<a@example.org> SIZE=%zu "
	    "BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<b1@example.net>\r\n"
	    "RCPT TO:<b2@example.net>\r\nDATA\r\n", strlen(simple_body));
	cr_assert_str_eq(p.batch, want);
	cr_assert_eq(r.nrcpt, 2);
	cr_assert_eq(r.rcpt_idx[0], 0);
	cr_assert_eq(r.rcpt[0].status, OUTCOME_OK);
	cr_assert_eq(r.rcpt_idx[1], 1);
	cr_assert_eq(r.rcpt[1].status, OUTCOME_PERMANENT);
	cr_assert_eq(r.rcpt[1].code, 550);
	cr_assert_str_eq(r.rcpt[1].enhanced, "5.1.1");
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	cr_assert_not_null(strstr(p.rx, simple_wire));
	close(fd);
	run_fini(&r);
}

static void
script_rcpt_550_first(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250 mx.test\r\n") ||
	    peer_expect(p, "MAIL FROM:<>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<x@example.net>") ||
	    peer_send(p, "550 5.1.1 unknown\r\n") ||
	    peer_expect(p, "RCPT TO:<y@example.net>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "354 go\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, rcpt_550_one_of_two_unpipelined)
{
	static const char *const rcpts[] = { "x@example.net",
		"y@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	peer_start(&p, script_rcpt_550_first);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = body_fd("hi\n", 3);
	msg_init(&r.msgs[0], "", rcpts, 2, fd, 3);
	r.nmsgs = 1;
	session_go(&p, &r);

	cr_assert_eq(r.nrcpt, 2);
	cr_assert_eq(r.rcpt[0].status, OUTCOME_PERMANENT);
	cr_assert_eq(r.rcpt[0].code, 550);
	cr_assert_eq(r.rcpt[1].status, OUTCOME_OK);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	cr_assert_not_null(strstr(p.rx, "DATA\r\nhi\r\n.\r\n"));
	close(fd);
	run_fini(&r);
}

static void
script_mail_451(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250 mx.test\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "451 4.3.0 try later\r\n") ||
	    peer_expect(p, "RSET") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, mail_451_done_temporary)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_mail_451, TLS_MODE_NONE, rcpts, 1);

	cr_assert_eq(r.nrcpt, 0);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.done[0].code, 451);
	cr_assert_str_eq(r.done[0].enhanced, "4.3.0");
	cr_assert_eq(r.nready, 2);
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	cr_assert_null(strstr(p.rx, "RCPT"));
	close(fd);
	run_fini(&r);
}

static void
script_mail_451_pipelined(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250-mx.test\r\n250 PIPELINING\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n"
	    "503 5.5.1 need RCPT\r\n") ||
	    peer_expect(p, "RSET") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, quit_from_done_sends_rset_then_quit)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_msg_init(&p, &r, script_mail_451, TLS_MODE_NONE, rcpts, 1);
	r.quit_in_done = 1;
	session_go(&p, &r);

	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.nready, 1);   /* no ready() once quit was asked */
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	close(fd);
	run_fini(&r);
}

Test(smtp_client, mail_451_pipelined_no_rcpt_callbacks)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_mail_451_pipelined,
	    TLS_MODE_NONE, rcpts, 1);

	cr_assert_eq(r.nrcpt, 0);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.done[0].code, 451);
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	close(fd);
	run_fini(&r);
}

static void
script_no_rcpt_pipelined(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250-mx.test\r\n250 PIPELINING\r\n") ||
	    peer_expect(p, "MAIL") ||
	    peer_expect(p, "RCPT") ||
	    peer_expect(p, "RCPT") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "250 Ok\r\n550 5.1.1 no\r\n553 5.1.3 bad\r\n"
	    "554 5.5.1 no valid recipients\r\n") ||
	    peer_expect(p, "RSET") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, no_recipient_accepted_pipelined_permanent)
{
	static const char *const rcpts[] = { "x@example.net",
		"y@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_no_rcpt_pipelined,
	    TLS_MODE_NONE, rcpts, 2);

	cr_assert_eq(r.nrcpt, 2);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_PERMANENT);
	cr_assert_not_null(strstr(r.done[0].text, "no recipient accepted"),
	    "%s", r.done[0].text);
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	close(fd);
	run_fini(&r);
}

static void
script_no_rcpt_but_354(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250-mx.test\r\n250 PIPELINING\r\n") ||
	    peer_expect(p, "MAIL") ||
	    peer_expect(p, "RCPT") ||
	    peer_expect(p, "DATA") ||
	    /* RFC 2920 3.1: a server may say 354 all the same */
	    peer_send(p, "250 Ok\r\n550 5.1.1 no\r\n354 go\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "554 5.5.1 no valid recipients\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, no_recipient_but_354_sends_lone_dot)
{
	static const char *const rcpts[] = { "x@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	peer_start(&p, script_no_rcpt_but_354);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = body_fd("secret body\n", 12);
	msg_init(&r.msgs[0], "a@example.org", rcpts, 1, fd, 12);
	r.nmsgs = 1;
	session_go(&p, &r);

	cr_assert_not_null(strstr(p.rx, "DATA\r\n.\r\nQUIT\r\n"));
	cr_assert_null(strstr(p.rx, "secret"));
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_PERMANENT);
	cr_assert_eq(r.done[0].code, 550);
	cr_assert_not_null(strstr(r.done[0].text, "no recipient accepted"));
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	close(fd);
	run_fini(&r);
}

static void
script_no_rcpt_temp(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250 mx.test\r\n") ||
	    peer_expect(p, "MAIL") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<x@example.net>") ||
	    peer_send(p, "450 4.2.0 mailbox busy\r\n") ||
	    peer_expect(p, "RCPT TO:<y@example.net>") ||
	    peer_send(p, "550 5.1.1 no\r\n") ||
	    /* no DATA without a recipient */
	    peer_expect(p, "RSET") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, no_recipient_accepted_temporary_when_any_4xx)
{
	static const char *const rcpts[] = { "x@example.net",
		"y@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_no_rcpt_temp, TLS_MODE_NONE, rcpts, 2);

	cr_assert_eq(r.nrcpt, 2);
	cr_assert_eq(r.rcpt[0].status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.rcpt[1].status, OUTCOME_PERMANENT);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.done[0].code, 450);
	cr_assert_not_null(strstr(r.done[0].text, "no recipient accepted"));
	cr_assert_null(strstr(p.rx, "DATA"));
	close(fd);
	run_fini(&r);
}

static void
script_greeting_421(struct peer *p)
{
	peer_send(p, "421 4.3.2 too busy\r\n");
}

Test(smtp_client, greeting_421_closed_temporary)
{
	struct peer p = { 0 };
	struct run r;

	peer_start(&p, script_greeting_421);
	run_init(&r, p.port, TLS_MODE_NONE);
	run_go(&r);
	peer_join(&p);

	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.code, 421);
	cr_assert_str_eq(r.closed.enhanced, "4.3.2");
	run_fini(&r);
}

static void
script_greeting_554(struct peer *p)
{
	if (peer_send(p, "554 5.7.1 go away\r\n"))
		return;
	peer_drain(p);
}

Test(smtp_client, greeting_554_closed_permanent)
{
	struct peer p = { 0 };
	struct run r;

	peer_start(&p, script_greeting_554);
	run_init(&r, p.port, TLS_MODE_NONE);
	run_go(&r);
	peer_join(&p);

	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.closed.status, OUTCOME_PERMANENT);
	cr_assert_eq(r.closed.code, 554);
	cr_assert_eq(p.rxlen, 0);   /* not even EHLO */
	run_fini(&r);
}

static void
script_421_mid_transaction(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250 mx.test\r\n") ||
	    peer_expect(p, "MAIL") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT") ||
	    peer_send(p, "421 4.4.2 shutting down\r\n"))
		return;
}

Test(smtp_client, reply_421_in_transaction_closes_without_done)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_421_mid_transaction,
	    TLS_MODE_NONE, rcpts, 1);

	cr_assert_eq(r.ndone, 0);
	cr_assert_eq(r.nrcpt, 0);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.code, 421);
	close(fd);
	run_fini(&r);
}

static void
script_close_after_mail(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250 mx.test\r\n") ||
	    peer_expect(p, "MAIL"))
		return;
	/* hang up without a word */
}

Test(smtp_client, unexpected_close_is_protocol_error)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	peer_start(&p, script_close_after_mail);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = body_fd("hi\n", 3);
	msg_init(&r.msgs[0], "a@example.org", rcpts, 1, fd, 3);
	r.nmsgs = 1;
	run_go(&r);
	peer_join(&p);

	cr_assert_eq(r.ndone, 0);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_PROTOCOL);
	cr_assert_str_eq(r.closed.text, "connection closed by server");
	cr_assert_eq(r.stale, 0, "the first transaction of a connection");
	close(fd);
	run_fini(&r);
}

static void
script_long_line(struct peer *p)
{
	char line[3000];

	memset(line, 'x', sizeof(line) - 1);
	line[sizeof(line) - 1] = '\0';
	if (peer_send(p, "220-%s\r\n220 ok\r\n", line))
		return;
	peer_drain(p);
}

Test(smtp_client, reply_line_over_2048_is_protocol_error)
{
	struct peer p = { 0 };
	struct run r;

	peer_start(&p, script_long_line);
	run_init(&r, p.port, TLS_MODE_NONE);
	run_go(&r);
	peer_join(&p);

	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_PROTOCOL);
	run_fini(&r);
}

static void
script_malformed(struct peer *p)
{
	if (peer_send(p, "hello there\r\n"))
		return;
	peer_drain(p);
}

Test(smtp_client, malformed_reply_is_protocol_error)
{
	struct peer p = { 0 };
	struct run r;

	peer_start(&p, script_malformed);
	run_init(&r, p.port, TLS_MODE_NONE);
	run_go(&r);
	peer_join(&p);

	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_PROTOCOL);
	run_fini(&r);
}

static void
script_helo_fallback(struct peer *p)
{
	if (peer_send(p, "220 old.test SMTP\r\n") ||
	    peer_expect(p, "EHLO client.example") ||
	    peer_send(p, "502 5.5.2 what?\r\n") ||
	    peer_expect(p, "HELO client.example") ||
	    peer_send(p, "250 old.test\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "354 go\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

/* Greeting to the DATA command of one message to one recipient. */
static int
peer_upto_data(struct peer *p)
{
	return peer_greet(p, "EHLO client.example", "250 mx.test\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "DATA");
}

/* The server reads the whole message, "." included, then hangs up
 * without a reply: the one duplicate window SMTP leaves open. */
static void
script_drop_after_dot(struct peer *p)
{
	if (peer_upto_data(p) || peer_send(p, "354 go\r\n") || peer_data(p))
		return;
}

/* ... and one that hangs up when DATA comes, before its 354. */
static void
script_drop_at_data(struct peer *p)
{
	peer_upto_data(p);
}

/* A drop after the "." is temporary (the mail is retried: nothing is
 * lost) and the outcome says a duplicate may follow; a drop before it
 * says nothing of the kind. */
Test(smtp_client, drop_after_final_dot_names_the_duplicate_window)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_drop_after_dot, TLS_MODE_NONE,
	    rcpts, 1);
	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_not_null(strstr(r.closed.text, "after the end of data"),
	    "%s", r.closed.text);
	cr_assert_not_null(strstr(r.closed.text, "twice"), "%s",
	    r.closed.text);
	close(fd);
	run_fini(&r);

	memset(&p, 0, sizeof(p));
	fd = one_message(&p, &r, script_drop_at_data, TLS_MODE_NONE,
	    rcpts, 1);
	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_null(strstr(r.closed.text, "twice"), "%s", r.closed.text);
	close(fd);
	run_fini(&r);
}

Test(smtp_client, helo_when_ehlo_unknown)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_msg_init(&p, &r, script_helo_fallback,
	    TLS_MODE_NONE, rcpts, 1);
	/* 8BITMIME not offered: no BODY= parameter */
	r.msgs[0].eightbit = 1;
	session_go(&p, &r);

	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	cr_assert_not_null(strstr(p.rx, "MAIL FROM:<a@example.org>\r\n"));
	close(fd);
	run_fini(&r);
}

static void
script_two_messages(struct peer *p)
{
	int i;

	if (peer_greet(p, "EHLO", "250-mx.test\r\n250 PIPELINING\r\n"))
		return;
	for (i = 0; i < 2; i++) {
		if (peer_expect(p, "MAIL") ||
		    peer_expect(p, "RCPT") ||
		    peer_expect(p, "DATA") ||
		    peer_send(p, "250 Ok\r\n250 Ok\r\n354 go\r\n") ||
		    peer_data(p) ||
		    peer_send(p, "250 2.0.0 Ok: queued as %d\r\n", i + 1))
			return;
	}
	if (peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, two_messages_one_session)
{
	static const char *const rcpts1[] = { "one@example.net" };
	static const char *const rcpts2[] = { "two@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd1, fd2;

	peer_start(&p, script_two_messages);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd1 = body_fd("first\n", 6);
	fd2 = body_fd("xxsecond\n", 9);
	msg_init(&r.msgs[0], "a@example.org", rcpts1, 1, fd1, 6);
	/* a message may start inside its file */
	msg_init(&r.msgs[1], "a@example.org", rcpts2, 1, fd2, 7);
	r.msgs[1].body_offset = 2;
	r.nmsgs = 2;
	session_go(&p, &r);

	cr_assert_eq(r.nready, 3);
	cr_assert_eq(r.ndone, 2);
	cr_assert_str_eq(r.done[0].text, "250 2.0.0 Ok: queued as 1");
	cr_assert_str_eq(r.done[1].text, "250 2.0.0 Ok: queued as 2");
	cr_assert_not_null(strstr(p.rx, "RCPT TO:<one@example.net>\r\n"
	    "DATA\r\nfirst\r\n.\r\n"));
	cr_assert_not_null(strstr(p.rx, "RCPT TO:<two@example.net>\r\n"
	    "DATA\r\nsecond\r\n.\r\nQUIT\r\n"));
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	close(fd1);
	close(fd2);
	run_fini(&r);
}

/* ---- a reused connection found gone ---- */

/* ends: how the server ends the second transaction of a connection */
enum second_end {
	END_CLOSE,        /* hang up on its MAIL without a word */
	END_RESET,        /* the same with a reset */
	END_421,          /* 421 to its MAIL, then hang up */
	END_CLOSE_IN_RCPT, /* MAIL 250, then hang up on its RCPT */
};

static enum second_end second_end;

/* One message delivered, then the second transaction's MAIL meets what
 * second_end says; PIPELINING is not offered, so MAIL goes alone. */
static void
script_second_transaction_ends(struct peer *p)
{
	struct linger lg = { 1, 0 };

	if (peer_greet(p, "EHLO", "250 mx.test\r\n") ||
	    peer_expect(p, "MAIL") || peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT") || peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "DATA") || peer_send(p, "354 go\r\n") ||
	    peer_data(p) || peer_send(p, "250 2.0.0 Ok: queued\r\n") ||
	    peer_expect(p, "MAIL"))
		return;
	switch (second_end) {
	case END_CLOSE:
		break;
	case END_RESET:
		setsockopt(p->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		break;
	case END_421:
		peer_send(p, "421 4.4.2 mx.test Error: timeout exceeded\r\n");
		break;
	case END_CLOSE_IN_RCPT:
		if (peer_send(p, "250 Ok\r\n") || peer_expect(p, "RCPT"))
			return;
		break;
	}
}

/* Two messages on one connection, the second ended by end: returns the
 * session's outcome; r says the rest. */
static void
second_transaction_run(struct run *r, enum second_end end)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	int fd;

	second_end = end;
	fd = one_msg_init(&p, r, script_second_transaction_ends,
	    TLS_MODE_NONE, rcpts, 1);
	msg_init(&r->msgs[1], "a@example.org", rcpts, 1, fd, 3);
	r->nmsgs = 2;
	session_go(&p, r);
	close(fd);
	cr_assert_eq(r->ndone, 1, "the first message was done");
	cr_assert_eq(r->done[0].status, OUTCOME_OK);
	cr_assert_eq(r->nclosed, 1);
	cr_assert_eq(r->closed.status, OUTCOME_TEMPORARY);
}

Test(smtp_client, close_on_a_reused_connections_mail_is_stale)
{
	struct run r;

	second_transaction_run(&r, END_CLOSE);
	cr_assert_eq(r.closed.class, OC_PROTOCOL, "%s", r.closed.text);
	cr_assert_eq(r.stale, 1, "%s", r.closed.text);
	run_fini(&r);
}

Test(smtp_client, reset_on_a_reused_connections_mail_is_stale)
{
	struct run r;

	second_transaction_run(&r, END_RESET);
	cr_assert_eq(r.stale, 1, "%s", r.closed.text);
	run_fini(&r);
}

Test(smtp_client, a_421_to_a_reused_connections_mail_is_stale)
{
	struct run r;

	second_transaction_run(&r, END_421);
	cr_assert_eq(r.closed.code, 421, "%s", r.closed.text);
	cr_assert_eq(r.stale, 1, "%s", r.closed.text);
	run_fini(&r);
}

Test(smtp_client, a_close_after_the_mail_reply_is_not_stale)
{
	struct run r;

	second_transaction_run(&r, END_CLOSE_IN_RCPT);
	cr_assert_eq(r.closed.class, OC_PROTOCOL, "%s", r.closed.text);
	cr_assert_eq(r.stale, 0, "the server had answered MAIL");
	run_fini(&r);
}

static void
script_ehlo_then_quit(struct peer *p)
{
	if (peer_greet(p, "EHLO",
	    "250-mx.test\r\n250-SIZE 100\r\n250 PIPELINING\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, smtputf8_not_offered_done_permanent_without_mail)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_msg_init(&p, &r, script_ehlo_then_quit,
	    TLS_MODE_NONE, rcpts, 1);
	r.msgs[0].smtputf8 = 1;
	session_go(&p, &r);

	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_PERMANENT);
	cr_assert_str_eq(r.done[0].enhanced, "5.6.7");
	cr_assert_eq(r.nready, 2);
	cr_assert_null(strstr(p.rx, "MAIL"));
	close(fd);
	run_fini(&r);
}

Test(smtp_client, size_over_limit_done_permanent_without_mail)
{
	static const char *const rcpts[] = { "b@example.net" };
	static char big[200];
	struct peer p = { 0 };
	struct run r;
	int fd;

	memset(big, 'a', sizeof(big));
	peer_start(&p, script_ehlo_then_quit);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = body_fd(big, sizeof(big));
	msg_init(&r.msgs[0], "a@example.org", rcpts, 1, fd, sizeof(big));
	r.nmsgs = 1;
	session_go(&p, &r);

	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_PERMANENT);
	cr_assert_str_eq(r.done[0].enhanced, "5.3.4");
	cr_assert_null(strstr(p.rx, "MAIL"));
	close(fd);
	run_fini(&r);
}

Test(smtp_client, address_with_crlf_refused_not_sent)
{
	static const char *const rcpts[] = { "b@example.net\r\nRSET" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_ehlo_then_quit,
	    TLS_MODE_NONE, rcpts, 1);

	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_PERMANENT);
	cr_assert_null(strstr(p.rx, "MAIL"));
	close(fd);
	run_fini(&r);
}

Test(smtp_client, send_only_when_ready)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct smtp_client_msg m;
	struct run r;
	struct smtp_client *c;

	run_init(&r, 25, TLS_MODE_NONE);
	msg_init(&m, "a@example.org", rcpts, 1, -1, 0);
	c = smtp_client_new(r.base, NULL, &r.params, &run_cb, &r);
	cr_assert_eq(smtp_client_send(c, &m), -1);
	smtp_client_free(c);
	smtp_client_free(NULL);
	run_fini(&r);
}

/* ---- connecting ---- */

Test(smtp_client, connection_refused)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	struct run r;
	int s;

	/* bound but not listening: connect gets RST */
	s = socket(AF_INET, SOCK_STREAM, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(s, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(getsockname(s, (struct sockaddr *)&sin, &len), 0);
	run_init(&r, ntohs(sin.sin_port), TLS_MODE_NONE);
	run_go(&r);

	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_CONNECT);
	cr_assert_not_null(strstr(r.closed.text, "Connection refused"), "%s",
	    r.closed.text);
	cr_assert_not_null(strstr(r.closed.text, "127.0.0.1"));
	close(s);
	run_fini(&r);
}

Test(smtp_client, name_without_resolver_is_dns_failure)
{
	struct run r;

	run_init(&r, 25, TLS_MODE_NONE);
	r.params.host = "mx.invalid";
	run_go(&r);

	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_DNS);
	cr_assert_not_null(strstr(r.closed.text, "mx.invalid"));
	run_fini(&r);
}

Test(smtp_client, every_address_is_tried)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	char want[128];
	int fd;

	peer_start(&p, script_simple);
	run_init(&r, p.port, TLS_MODE_NONE);
	/*
	 * Dead addresses on both sides of the live one, so whichever order
	 * the resolver returns them in, at least one fails first: ::1 and
	 * 127.0.0.2/3 have nothing on this port.
	 */
	r.dns = dns_with_hosts(r.base, "127.0.0.2 multi.test\n"
	    "::1 multi.test\n127.0.0.1 multi.test\n127.0.0.3 multi.test\n");
	r.params.host = "multi.test";
	fd = simple_msg(&r, rcpts);
	session_go(&p, &r);

	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	snprintf(want, sizeof(want), "multi.test[127.0.0.1]:%u", p.port);
	cr_assert_str_eq(r.peer_at_close, want);
	close(fd);
	run_fini(&r);
}

Test(smtp_client, all_addresses_refused)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	struct run r;
	int s;

	s = socket(AF_INET, SOCK_STREAM, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(s, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(getsockname(s, (struct sockaddr *)&sin, &len), 0);
	run_init(&r, ntohs(sin.sin_port), TLS_MODE_NONE);
	r.dns = dns_with_hosts(r.base, "127.0.0.1 dead.test\n"
	    "127.0.0.2 dead.test\n");
	r.params.host = "dead.test";
	run_go(&r);

	cr_assert_eq(r.closed.class, OC_CONNECT);
	cr_assert_not_null(strstr(r.closed.text, "2 addresses tried"), "%s",
	    r.closed.text);
	close(s);
	run_fini(&r);
}

static void
script_silent(struct peer *p)
{
	peer_drain(p);
}

Test(smtp_client, greeting_timeout)
{
	struct peer p = { 0 };
	struct run r;

	peer_start(&p, script_silent);
	run_init(&r, p.port, TLS_MODE_NONE);
	r.params.timeout_command = 1;
	run_go(&r);
	peer_join(&p);

	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_TIMEOUT);
	cr_assert_gt(r.elapsed, 0.9);
	cr_assert_lt(r.elapsed, 5.0);
	run_fini(&r);
}

static void
script_stall_at_dot(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250-mx.test\r\n250 PIPELINING\r\n") ||
	    peer_expect(p, "MAIL") ||
	    peer_expect(p, "RCPT") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "250 Ok\r\n250 Ok\r\n354 go\r\n") ||
	    peer_data(p))
		return;
	peer_drain(p);
}

Test(smtp_client, data_timeout_applies_to_final_dot)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	peer_start(&p, script_stall_at_dot);
	run_init(&r, p.port, TLS_MODE_NONE);
	r.params.timeout_command = 5;
	r.params.timeout_data = 1;
	fd = body_fd("hi\n", 3);
	msg_init(&r.msgs[0], "a@example.org", rcpts, 1, fd, 3);
	r.nmsgs = 1;
	run_go(&r);
	peer_join(&p);

	cr_assert_eq(r.ndone, 0);
	cr_assert_eq(r.closed.class, OC_TIMEOUT);
	cr_assert_lt(r.elapsed, 4.0);
	close(fd);
	run_fini(&r);
}

Test(smtp_client, quit_before_session_closes_ok)
{
	struct run r;

	run_init(&r, 9, TLS_MODE_NONE);
	r.c = smtp_client_new(r.base, NULL, &r.params, &run_cb, &r);
	smtp_client_connect(r.c);
	smtp_client_quit(r.c);
	cr_assert_eq(r.nclosed, 0);   /* not from inside quit() */
	{
		struct timeval tv = { .tv_sec = 5 };

		event_base_loopexit(r.base, &tv);
		event_base_dispatch(r.base);
	}
	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	cr_assert_eq(r.nready, 0);
	run_fini(&r);
}

static void
stop_loop(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

Test(smtp_client, free_while_resolving)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	struct timeval tv = { 0, 200000 };
	struct event *ev;
	struct run r;
	char ns[64];
	int s;

	/* a name server that never answers */
	s = socket(AF_INET, SOCK_DGRAM, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(s, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(getsockname(s, (struct sockaddr *)&sin, &len), 0);
	run_init(&r, 25, TLS_MODE_NONE);
	r.dns = evdns_base_new(r.base, 0);
	snprintf(ns, sizeof(ns), "127.0.0.1:%u", ntohs(sin.sin_port));
	cr_assert_eq(evdns_base_nameserver_ip_add(r.dns, ns), 0);
	r.params.host = "slow.test";
	r.c = smtp_client_new(r.base, r.dns, &r.params, &run_cb, &r);
	smtp_client_connect(r.c);
	ev = evtimer_new(r.base, stop_loop, r.base);
	evtimer_add(ev, &tv);
	event_base_dispatch(r.base);   /* the lookup is pending now */
	smtp_client_free(r.c);
	r.c = NULL;
	evtimer_add(ev, &tv);
	event_base_dispatch(r.base);   /* the cancelled lookup reports */
	cr_assert_eq(r.nclosed, 0);
	event_free(ev);
	close(s);
	run_fini(&r);
}

static void
script_pipelined_two_rcpts(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250-mx.test\r\n250 PIPELINING\r\n") ||
	    peer_expect(p, "MAIL") ||
	    peer_expect(p, "RCPT") ||
	    peer_expect(p, "RCPT") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n"))
		return;
	peer_drain(p);
}

Test(smtp_client, free_inside_rcpt_callback)
{
	static const char *const rcpts[] = { "x@example.net",
		"y@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	peer_start(&p, script_pipelined_two_rcpts);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = body_fd("hi\n", 3);
	msg_init(&r.msgs[0], "a@example.org", rcpts, 2, fd, 3);
	r.nmsgs = 1;
	r.free_in_rcpt = 1;
	run_go(&r);
	peer_join(&p);

	/* the second RCPT reply was already buffered: no callback for it */
	cr_assert_eq(r.nrcpt, 1);
	cr_assert_eq(r.ndone, 0);
	cr_assert_eq(r.nclosed, 0);
	close(fd);
	run_fini(&r);
}

/* ---- large bodies stream ---- */

#define BIG_LINE ".0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklm"
#define BIG_LINES 300000   /* 61 bytes each: about 18 MB, 19 on the wire */

static void
script_big_body(struct peer *p)
{
	char line[256];
	int n;

	if (p->implicit && peer_starttls(p))
		return;
	if (peer_greet(p, "EHLO",
	    "250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n"))
		return;
	if (p->sctx != NULL && !p->implicit) {
		if (peer_expect(p, "STARTTLS") ||
		    peer_send(p, "220 go ahead\r\n") ||
		    peer_starttls(p) ||
		    peer_expect(p, "EHLO") ||
		    peer_send(p, "250-mx.test\r\n250 PIPELINING\r\n"))
			return;
	}
	if (peer_expect(p, "MAIL") ||
	    peer_expect(p, "RCPT") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "250 Ok\r\n250 Ok\r\n354 go\r\n"))
		return;
	p->rx_off = 1;
	for (;;) {
		if ((n = peer_line(p, line, sizeof(line))) < 0) {
			peer_failf(p, "EOF in body after %zu lines",
			    p->body_lines);
			return;
		}
		if (n == 1 && line[0] == '.')
			break;
		if (line[0] != '.' || strcmp(line + 1, BIG_LINE) != 0) {
			peer_failf(p, "body line %zu wrong: %.70s",
			    p->body_lines, line);
			return;
		}
		p->body_lines++;
	}
	p->rx_off = 0;
	if (peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

static int
big_body_fd(off_t *size)
{
	char path[] = "/tmp/test_smtp_client_big.XXXXXX";
	static const char line[] = BIG_LINE "\n";
	const size_t ll = sizeof(line) - 1;
	static char chunk[(sizeof(line) - 1) * 1000];
	int fd = mkstemp(path), i, j;

	cr_assert_neq(fd, -1);
	unlink(path);
	for (j = 0; j < 1000; j++)
		memcpy(chunk + j * ll, line, ll);
	for (i = 0; i < BIG_LINES / 1000; i++)
		cr_assert_eq(write(fd, chunk, sizeof(chunk)),
		    (ssize_t)sizeof(chunk));
	*size = (off_t)BIG_LINES * (off_t)ll;
	return fd;
}

static long
maxrss_kb(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

static void
big_body_run(enum tls_mode mode)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct pki k;
	struct run r;
	off_t size;
	long before;
	int fd, tls = mode != TLS_MODE_NONE;

	if (tls) {
		pki_init(&k);
		p.sctx = k.sctx;
		p.implicit = mode == TLS_MODE_IMPLICIT;
	}
	fd = big_body_fd(&size);
	peer_start(&p, script_big_body);
	run_init(&r, p.port, mode);
	/* 19 MB through a sanitizer build on a loaded machine can take
	 * longer than the 5 s per step and 15 s in all that the other tests
	 * allow; this test is about memory, not timeouts. */
	r.params.timeout_command = 50;
	r.params.timeout_data = 50;
	r.loop_timeout = 50;
	if (tls)
		r.params.ssl_ctx = client_ctx(k.cafile, 1);
	msg_init(&r.msgs[0], "a@example.org", rcpts, 1, fd, size);
	r.nmsgs = 1;
	before = maxrss_kb();
	session_go(&p, &r);

	cr_assert_eq(p.body_lines, BIG_LINES);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	/* 19 MB went out; had it been buffered, RSS would show it. (Not
	 * under AddressSanitizer, whose quarantine keeps freed memory.) */
#ifndef __SANITIZE_ADDRESS__
	cr_assert_lt(maxrss_kb() - before, 8 * 1024, "RSS grew by %ld KiB",
	    maxrss_kb() - before);
#else
	(void)before;
#endif
	close(fd);
	if (tls) {
		tls_ctx_free(r.params.ssl_ctx);
		pki_fini(&k);
	}
	run_fini(&r);
}

Test(smtp_client, big_body_streams_plain)
{
	big_body_run(TLS_MODE_NONE);
}

/* 19 MB from memory: the output is refilled from the buffer as it
 * drains, every line arrives, and nothing but the body is held. */
Test(smtp_client, big_body_streams_from_memory)
{
	static const char *const rcpts[] = { "b@example.net" };
	static const char line[] = BIG_LINE "\n";
	const size_t ll = sizeof(line) - 1;
	struct peer p = { 0 };
	struct run r;
	char *body;
	size_t i;

	body = malloc((size_t)BIG_LINES * ll);
	cr_assert_not_null(body);
	for (i = 0; i < BIG_LINES; i++)
		memcpy(body + i * ll, line, ll);
	peer_start(&p, script_big_body);
	run_init(&r, p.port, TLS_MODE_NONE);
	r.params.timeout_command = 50;
	r.params.timeout_data = 50;
	r.loop_timeout = 50;
	msg_init(&r.msgs[0], "a@example.org", rcpts, 1, -1,
	    (off_t)BIG_LINES * (off_t)ll);
	r.msgs[0].body_mem = (const unsigned char *)body;
	r.nmsgs = 1;
	session_go(&p, &r);

	cr_assert_eq(p.body_lines, BIG_LINES);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK, "%s", r.done[0].text);
	free(body);
	run_fini(&r);
}

Test(smtp_client, big_body_streams_over_starttls)
{
	big_body_run(TLS_MODE_STARTTLS);
}

Test(smtp_client, big_body_streams_over_implicit_tls)
{
	big_body_run(TLS_MODE_IMPLICIT);
}

/* ---- TLS ---- */

static void
script_no_starttls(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250-mx.test\r\n250 PIPELINING\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, starttls_not_offered_closes_without_mail)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_msg_init(&p, &r, script_no_starttls,
	    TLS_MODE_STARTTLS, rcpts, 1);
	r.params.ssl_ctx = client_ctx(NULL, 1);
	session_go(&p, &r);

	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_TLS);
	cr_assert_str_eq(r.closed.text, "TLS: server does not offer STARTTLS");
	cr_assert_null(strstr(p.rx, "MAIL"));
	tls_ctx_free(r.params.ssl_ctx);
	close(fd);
	run_fini(&r);
}

static void
script_starttls(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n") ||
	    peer_expect(p, "STARTTLS") ||
	    peer_send(p, "220 2.0.0 go ahead\r\n") ||
	    peer_starttls(p))
		return;
	if (peer_expect(p, "EHLO client.example") ||
	    peer_send(p, "250-mx.test\r\n250 PIPELINING\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "250 Ok\r\n250 Ok\r\n354 go\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 2.0.0 Ok: queued over TLS\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

static void
starttls_run(struct run *r, struct peer *p, struct pki *k, const char *host,
    const char *hosts, const char *cafile, int verify, int *fd)
{
	static const char *const rcpts[] = { "b@example.net" };

	pki_init(k);
	p->sctx = k->sctx;
	peer_start(p, script_starttls);
	run_init(r, p->port, TLS_MODE_STARTTLS);
	if (hosts != NULL)
		r->dns = dns_with_hosts(r->base, hosts);
	r->params.host = host;
	r->params.ssl_ctx = client_ctx(cafile != NULL ? (strcmp(cafile,
	    "CA") == 0 ? k->cafile : cafile) : NULL, verify);
	*fd = body_fd(simple_body, strlen(simple_body));
	msg_init(&r->msgs[0], "a@example.org", rcpts, 1, *fd,
	    (off_t)strlen(simple_body));
	r->nmsgs = 1;
	run_go(r);
	peer_join(p);
}

static void
starttls_fini(struct run *r, struct pki *k, int fd)
{
	tls_ctx_free(r->params.ssl_ctx);
	pki_fini(k);
	close(fd);
	run_fini(r);
}

Test(smtp_client, starttls_trusted_ca_delivers)
{
	struct peer p = { 0 };
	struct pki k;
	struct run r;
	int fd;

	starttls_run(&r, &p, &k, "127.0.0.1", NULL, "CA", 1, &fd);
	cr_assert_str_empty(p.fail, "server: %s", p.fail);
	cr_assert_eq(p.tls_failed, 0);
	cr_assert_str_empty(p.sni);   /* no SNI for an address */
	cr_assert_eq(r.ndone, 1, "closed: %s", r.closed.text);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	cr_assert_str_eq(r.done[0].text, "250 2.0.0 Ok: queued over TLS");
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	/* the MAIL went over TLS only (rx holds plaintext of both) */
	cr_assert_not_null(strstr(p.rx, "STARTTLS\r\nEHLO client.example\r\n"
	    "MAIL"));
	starttls_fini(&r, &k, fd);
}

Test(smtp_client, starttls_by_name_sends_sni_and_checks_name)
{
	struct peer p = { 0 };
	struct pki k;
	struct run r;
	int fd;

	starttls_run(&r, &p, &k, "mx.test", "127.0.0.1 mx.test\n", "CA", 1,
	    &fd);
	cr_assert_str_empty(p.fail, "server: %s", p.fail);
	cr_assert_str_eq(p.sni, "mx.test");
	cr_assert_eq(r.ndone, 1, "closed: %s", r.closed.text);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	starttls_fini(&r, &k, fd);
}

Test(smtp_client, starttls_untrusted_certificate_closes_tls)
{
	struct peer p = { 0 };
	struct pki k;
	struct run r;
	int fd;

	/* verify on, system CAs only: our test CA is unknown */
	starttls_run(&r, &p, &k, "127.0.0.1", NULL, NULL, 1, &fd);
	cr_assert_eq(p.tls_failed, 1);
	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.ndone, 0);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_TLS);
	cr_assert_str_eq(r.closed.text, "TLS: certificate verify failed: "
	    "unable to get local issuer certificate");
	cr_assert_null(strstr(p.rx, "MAIL"));
	starttls_fini(&r, &k, fd);
}

Test(smtp_client, starttls_wrong_name_closes_tls)
{
	struct peer p = { 0 };
	struct pki k;
	struct run r;
	int fd;

	starttls_run(&r, &p, &k, "other.test", "127.0.0.1 other.test\n", "CA",
	    1, &fd);
	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.closed.class, OC_TLS);
	cr_assert_str_eq(r.closed.text, "TLS: certificate verify failed: "
	    "hostname mismatch");
	starttls_fini(&r, &k, fd);
}

Test(smtp_client, starttls_verify_off_accepts_unknown_ca)
{
	struct peer p = { 0 };
	struct pki k;
	struct run r;
	int fd;

	starttls_run(&r, &p, &k, "other.test", "127.0.0.1 other.test\n", NULL,
	    0, &fd);
	cr_assert_str_empty(p.fail, "server: %s", p.fail);
	cr_assert_eq(r.ndone, 1, "closed: %s", r.closed.text);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	starttls_fini(&r, &k, fd);
}

static void
script_starttls_injection(struct peer *p)
{
	if (peer_greet(p, "EHLO", "250-mx.test\r\n250 STARTTLS\r\n") ||
	    peer_expect(p, "STARTTLS") ||
	    peer_send(p, "220 go ahead\r\n250-injected\r\n"))
		return;
	peer_drain(p);
}

Test(smtp_client, bytes_after_starttls_220_are_refused)
{
	struct peer p = { 0 };
	struct run r;

	peer_start(&p, script_starttls_injection);
	run_init(&r, p.port, TLS_MODE_STARTTLS);
	r.params.ssl_ctx = client_ctx(NULL, 1);
	run_go(&r);
	peer_join(&p);

	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_PROTOCOL);
	tls_ctx_free(r.params.ssl_ctx);
	run_fini(&r);
}

static void
script_implicit(struct peer *p)
{
	if (peer_starttls(p) ||
	    peer_send(p, "220 mx.test ESMTP over TLS\r\n") ||
	    peer_expect(p, "EHLO client.example") ||
	    peer_send(p, "250-mx.test\r\n250 PIPELINING\r\n") ||
	    peer_expect(p, "MAIL") ||
	    peer_expect(p, "RCPT") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "250 Ok\r\n250 Ok\r\n354 go\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, implicit_tls_delivers)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct pki k;
	struct run r;
	int fd;

	pki_init(&k);
	p.sctx = k.sctx;
	peer_start(&p, script_implicit);
	run_init(&r, p.port, TLS_MODE_IMPLICIT);
	r.params.ssl_ctx = client_ctx(k.cafile, 1);
	fd = simple_msg(&r, rcpts);
	session_go(&p, &r);

	cr_assert_eq(r.ndone, 1, "closed: %s", r.closed.text);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	cr_assert_not_null(strstr(p.rx, simple_wire));
	tls_ctx_free(r.params.ssl_ctx);
	pki_fini(&k);
	close(fd);
	run_fini(&r);
}

Test(smtp_client, implicit_tls_untrusted)
{
	struct peer p = { 0 };
	struct pki k;
	struct run r;

	pki_init(&k);
	p.sctx = k.sctx;
	peer_start(&p, script_implicit);
	run_init(&r, p.port, TLS_MODE_IMPLICIT);
	r.params.ssl_ctx = client_ctx(NULL, 1);
	run_go(&r);
	peer_join(&p);

	cr_assert_eq(r.closed.class, OC_TLS);
	cr_assert_not_null(strstr(r.closed.text, "certificate verify failed"),
	    "%s", r.closed.text);
	tls_ctx_free(r.params.ssl_ctx);
	pki_fini(&k);
	run_fini(&r);
}

Test(tls, ctx_missing_ca_file_says_why)
{
	char err[256];

	cr_assert_null(tls_client_ctx_new("/nonexistent/ca.pem", 1, err,
	    sizeof(err)));
	cr_assert_not_null(strstr(err, "/nonexistent/ca.pem"), "%s", err);
	cr_assert_not_null(strstr(err, "No such file"), "%s", err);
}

Test(tls, ctx_minimum_version_and_verify_mode)
{
	char err[256];
	SSL_CTX *ctx = tls_client_ctx_new(NULL, 1, err, sizeof(err));
	SSL_CTX *nov = tls_client_ctx_new(NULL, 0, err, sizeof(err));

	cr_assert_not_null(ctx);
	cr_assert_eq(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
	cr_assert_eq(tls_ctx_verifies(ctx), 1);
	cr_assert_eq(tls_ctx_verifies(nov), 0);
	tls_ctx_free(ctx);
	tls_ctx_free(nov);
	tls_ctx_free(NULL);
}

Test(tls, ssl_sni_for_names_only)
{
	char err[256];
	SSL_CTX *ctx = tls_client_ctx_new(NULL, 1, err, sizeof(err));
	SSL *a = tls_client_ssl_new(ctx, "mx.example.org", "25", 1);
	SSL *b = tls_client_ssl_new(ctx, "192.0.2.1", "25", 1);
	SSL *c = tls_client_ssl_new(ctx, "2001:db8::1", NULL, 1);
	char *ip;

	cr_assert_str_eq(SSL_get_servername(a, TLSEXT_NAMETYPE_host_name),
	    "mx.example.org");
	cr_assert_str_eq(X509_VERIFY_PARAM_get0_host(SSL_get0_param(a), 0),
	    "mx.example.org");
	cr_assert_null(SSL_get_servername(b, TLSEXT_NAMETYPE_host_name));
	ip = X509_VERIFY_PARAM_get1_ip_asc(SSL_get0_param(b));
	cr_assert_str_eq(ip, "192.0.2.1");
	OPENSSL_free(ip);
	cr_assert_null(X509_VERIFY_PARAM_get0_host(SSL_get0_param(b), 0));
	cr_assert_null(SSL_get_servername(c, TLSEXT_NAMETYPE_host_name));
	cr_assert_null(tls_verify_error(a));
	SSL_free(a);
	SSL_free(b);
	SSL_free(c);
	tls_ctx_free(ctx);
}

/* ---- authentication ---- */

/* RFC 2195's example: user, password, challenge and digest. */
static const char cram_user[] = "tim";
static const char cram_pass[] = "tanstaaftanstaaf";
static const char cram_challenge[] =
    "<1896.697170952@postoffice.reston.mci.net>";
static const char cram_digest[] = "b913a602c7eda7a495b4e6e7334d3890";

/* Reads a line that must be exactly want. */
static int
peer_expect_eq(struct peer *p, const char *want)
{
	char line[4096];

	if (peer_line(p, line, sizeof(line)) < 0) {
		peer_failf(p, "expected \"%s\", got EOF or timeout", want);
		return -1;
	}
	if (strcmp(line, want) != 0) {
		peer_failf(p, "expected \"%s\", got \"%s\"", want, line);
		return -1;
	}
	return 0;
}

/* Reads a line "prefix BASE64" (prefix "" for a bare response) and
 * decodes it into out, NUL-terminated. */
static int
peer_b64_line(struct peer *p, const char *prefix, char *out, size_t outsize,
    size_t *outlen)
{
	char line[4096];
	unsigned char *dec;
	size_t pl = strlen(prefix), dl;

	if (peer_line(p, line, sizeof(line)) < 0) {
		peer_failf(p, "expected \"%s...\", got EOF", prefix);
		return -1;
	}
	if (strncmp(line, prefix, pl) != 0) {
		peer_failf(p, "expected \"%s...\", got \"%s\"", prefix, line);
		return -1;
	}
	if (sasl_b64_decode(line + pl, strlen(line + pl), &dec, &dl) == -1 ||
	    dl >= outsize) {
		peer_failf(p, "bad base64 after \"%s\": \"%s\"", prefix, line);
		return -1;
	}
	memcpy(out, dec, dl);
	out[dl] = '\0';
	*outlen = dl;
	xfree_secret(dec, dl + 1);
	return 0;
}

static int
peer_send_b64(struct peer *p, const char *code, const void *data, size_t len)
{
	char *b64 = sasl_b64_encode(data, len);
	int rc = peer_send(p, "%s %s\r\n", code, b64);

	free(b64);
	return rc;
}

/* Serves one CRAM-MD5 exchange and checks the digest as RFC 2195
 * computes it from our challenge; then sends final. */
static int
peer_cram_md5(struct peer *p, const char *final)
{
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int dl = 0, i;
	char resp[512], want[128];
	size_t rl, n;

	if (peer_expect_eq(p, "AUTH CRAM-MD5") ||
	    peer_send_b64(p, "334", cram_challenge, strlen(cram_challenge)) ||
	    peer_b64_line(p, "", resp, sizeof(resp), &rl))
		return -1;
	HMAC(EVP_md5(), cram_pass, (int)strlen(cram_pass),
	    (const unsigned char *)cram_challenge, strlen(cram_challenge), d,
	    &dl);
	n = (size_t)snprintf(want, sizeof(want), "%s ", cram_user);
	for (i = 0; i < dl; i++)
		n += (size_t)snprintf(want + n, sizeof(want) - n, "%02x", d[i]);
	if (strcmp(want + strlen(cram_user) + 1, cram_digest) != 0) {
		peer_failf(p, "HMAC-MD5 does not give RFC 2195's digest");
		return -1;
	}
	if (strcmp(resp, want) != 0) {
		peer_failf(p, "CRAM-MD5 response \"%s\", want \"%s\"", resp,
		    want);
		return -1;
	}
	return peer_send(p, "%s", final);
}

static void
auth_set(struct run *r, const char *user, const char *secret,
    const char *mechs, int plaintext, int first)
{
	r->have_auth = 1;
	r->auth.user = user;
	r->auth.secret = secret;
	r->auth.mechanisms = mechs;
	r->auth.allow_plaintext = plaintext;
	r->auth.first = first;
}

/* Debug traces go to stderr: catch them in a file for one run. */
struct capture {
	char path[64];
	int saved;
};

static void
capture_begin(struct capture *cap)
{
	int fd;

	snprintf(cap->path, sizeof(cap->path), "/tmp/test_smtp_log.XXXXXX");
	fd = mkstemp(cap->path);
	cr_assert_neq(fd, -1);
	cap->saved = dup(STDERR_FILENO);
	cr_assert_neq(cap->saved, -1);
	cr_assert_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
	close(fd);
	log_setdebug(1);
}

/* Returns what was logged; the caller frees it. */
static char *
capture_end(struct capture *cap)
{
	FILE *f;
	char *buf = calloc(1, 1 << 20);
	size_t n;

	log_setdebug(getenv("TEST_DEBUG") != NULL);
	dup2(cap->saved, STDERR_FILENO);
	close(cap->saved);
	cr_assert_not_null(f = fopen(cap->path, "r"));
	n = fread(buf, 1, (1 << 20) - 1, f);
	buf[n] = '\0';
	fclose(f);
	unlink(cap->path);
	return buf;
}

/* session_go(), returning what the client logged meanwhile (malloc'd). */
static char *
session_go_logged(struct peer *p, struct run *r)
{
	struct capture cap;
	char *log;

	capture_begin(&cap);
	run_go(r);
	log = capture_end(&cap);
	peer_join(p);
	cr_assert_str_empty(p->fail, "server: %s", p->fail);
	return log;
}

static void
script_auth_first_cram(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n"
	    "250 PIPELINING\r\n") ||
	    peer_cram_md5(p, "235 2.7.0 Authentication successful\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "250 Ok\r\n250 Ok\r\n354 go\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 2.0.0 Ok: queued\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, auth_first_cram_md5_before_mail)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	char want[128], *log, *resp64;
	int fd;

	peer_start(&p, script_auth_first_cram);
	run_init(&r, p.port, TLS_MODE_NONE);
	/* no TLS, allow_plaintext: CRAM-MD5 comes first of the three */
	auth_set(&r, cram_user, cram_pass, NULL, 1, 1);
	fd = simple_msg(&r, rcpts);
	log = session_go_logged(&p, &r);

	cr_assert_eq(r.nauthenticated, 1);
	cr_assert_str_eq(r.authed, "CRAM-MD5");
	cr_assert_str_eq(r.mech_at_ready, "CRAM-MD5");
	cr_assert_eq(r.nauth_required, 0);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	cr_assert(strncmp(p.rx, "EHLO client.example\r\nAUTH CRAM-MD5\r\n",
	    36) == 0, "AUTH right after EHLO: %s", p.rx);

	/* the trace shows the exchange but neither secret nor proof */
	snprintf(want, sizeof(want), "%s %s", cram_user, cram_digest);
	resp64 = sasl_b64_encode(want, strlen(want));
	cr_assert_not_null(strstr(log, ">>> AUTH CRAM-MD5\n"), "%s", log);
	cr_assert_not_null(strstr(log, "<<< 334 <redacted>\n"), "%s", log);
	cr_assert_not_null(strstr(log, ">>> <redacted>\n"), "%s", log);
	cr_assert_null(strstr(log, cram_pass));
	cr_assert_null(strstr(log, resp64));
	cr_assert_null(strstr(log, cram_digest));
	free(resp64);
	free(log);
	close(fd);
	run_fini(&r);
}

static void
script_cram_535_then_plain(struct peer *p)
{
	char plain[256];
	size_t len;

	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH CRAM-MD5 PLAIN\r\n") ||
	    peer_cram_md5(p, "535 5.7.8 Error: authentication failed\r\n") ||
	    peer_b64_line(p, "AUTH PLAIN ", plain, sizeof(plain), &len))
		return;
	if (len != 1 + strlen(cram_user) + 1 + strlen(cram_pass) ||
	    plain[0] != '\0' || strcmp(plain + 1, cram_user) != 0 ||
	    strcmp(plain + 2 + strlen(cram_user), cram_pass) != 0) {
		peer_failf(p, "PLAIN response is not \\0user\\0password");
		return;
	}
	if (peer_send(p, "235 2.7.0 Authentication successful\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "354 go\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, auth_cram_535_falls_back_to_plain)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	char *log;
	int fd;

	peer_start(&p, script_cram_535_then_plain);
	run_init(&r, p.port, TLS_MODE_NONE);
	auth_set(&r, cram_user, cram_pass, NULL, 1, 1);
	fd = simple_msg(&r, rcpts);
	log = session_go_logged(&p, &r);

	cr_assert_eq(r.nauthenticated, 1);
	cr_assert_str_eq(r.authed, "PLAIN");
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	cr_assert_not_null(strstr(log, ">>> AUTH PLAIN <redacted>\n"), "%s",
	    log);
	cr_assert_null(strstr(log, cram_pass));
	free(log);
	close(fd);
	run_fini(&r);
}

static void
script_mail_530(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250-PIPELINING\r\n"
	    "250-AUTH CRAM-MD5\r\n250 ENHANCEDSTATUSCODES\r\n"))
		return;
	if (peer_read(p) < 0) {
		peer_failf(p, "EOF after EHLO");
		return;
	}
	memcpy(p->batch, p->in, p->inlen < sizeof(p->batch) - 1 ? p->inlen :
	    sizeof(p->batch) - 1);
	if (peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_send(p, "530 5.7.0 Authentication required\r\n"
	    "503 5.5.1 Error: need MAIL command\r\n") ||
	    peer_expect_eq(p, "RSET") ||
	    peer_send(p, "250 2.0.0 Ok\r\n") ||
	    peer_cram_md5(p, "235 2.7.0 Authentication successful\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "250 Ok\r\n250 Ok\r\n354 go\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 2.0.0 Ok: queued\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, mail_530_rset_auth_and_mail_again)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	const char *m;
	int fd, nmail = 0;

	peer_start(&p, script_mail_530);
	run_init(&r, p.port, TLS_MODE_NONE);
	auth_set(&r, cram_user, cram_pass, NULL, 1, 0);
	fd = simple_msg(&r, rcpts);
	session_go(&p, &r);

	/* the first try did not pipeline DATA: AUTH may still be due */
	cr_assert_str_eq(p.batch, "MAIL FROM:<a@example.org>\r\n"
	    "RCPT TO:<b@example.net>\r\n");
	cr_assert_eq(r.nauth_required, 1);
	cr_assert_eq(r.nauthenticated, 1);
	cr_assert_eq(r.nrcpt, 1, "only the second try reports recipients");
	cr_assert_eq(r.rcpt[0].status, OUTCOME_OK);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK, "%s", r.done[0].text);
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	cr_assert_not_null(strstr(p.rx, "RSET\r\nAUTH CRAM-MD5\r\n"));
	for (m = p.rx; (m = strstr(m, "MAIL FROM:")) != NULL; m++)
		nmail++;
	cr_assert_eq(nmail, 2, "one connection, MAIL twice");
	cr_assert_not_null(strstr(p.rx, simple_wire));
	close(fd);
	run_fini(&r);
}

static void
script_rcpt_571(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250-AUTH CRAM-MD5\r\n"
	    "250 ENHANCEDSTATUSCODES\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "250 2.1.0 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<x@example.net>") ||
	    peer_send(p, "250 2.1.5 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<y@example.net>") ||
	    peer_send(p, "554 5.7.1 <y@example.net>: Relay access "
	    "denied\r\n") ||
	    /* no third RCPT: the client authenticates first */
	    peer_expect_eq(p, "RSET") ||
	    peer_send(p, "250 2.0.0 Ok\r\n") ||
	    peer_cram_md5(p, "235 2.7.0 Authentication successful\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "250 2.1.0 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<x@example.net>") ||
	    peer_send(p, "250 2.1.5 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<y@example.net>") ||
	    peer_send(p, "250 2.1.5 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<z@example.net>") ||
	    peer_send(p, "250 2.1.5 Ok\r\n") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "354 go\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 2.0.0 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, rcpt_554_571_with_auth_offered_reauths_and_redoes)
{
	static const char *const rcpts[] = { "x@example.net",
		"y@example.net", "z@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd, i;

	fd = one_msg_init(&p, &r, script_rcpt_571, TLS_MODE_NONE, rcpts, 3);
	auth_set(&r, cram_user, cram_pass, NULL, 1, 0);
	session_go(&p, &r);

	cr_assert_eq(r.nauth_required, 1);
	cr_assert_eq(r.rcpts_at_auth_required, 0,
	    "the first try's accepted RCPT was held back");
	cr_assert_eq(r.nrcpt, 3);
	for (i = 0; i < 3; i++) {
		cr_assert_eq(r.rcpt_idx[i], (size_t)i);
		cr_assert_eq(r.rcpt[i].status, OUTCOME_OK);
	}
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK);
	cr_assert_str_eq(r.authed, "CRAM-MD5");
	close(fd);
	run_fini(&r);
}

static void
script_rcpt_550_plain(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH CRAM-MD5\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    /* no enhanced code at all, as many servers answer */
	    peer_send(p, "550 relaying denied\r\n") ||
	    peer_expect_eq(p, "RSET") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_cram_md5(p, "235 Authentication successful\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "354 go\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, rcpt_550_without_enhanced_code_reauths_with_credentials)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_msg_init(&p, &r, script_rcpt_550_plain,
	    TLS_MODE_NONE, rcpts, 1);
	auth_set(&r, cram_user, cram_pass, NULL, 1, 0);
	session_go(&p, &r);

	cr_assert_eq(r.nauth_required, 1);
	cr_assert_eq(r.nrcpt, 1);
	cr_assert_eq(r.rcpt[0].status, OUTCOME_OK);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK, "%s", r.done[0].text);
	cr_assert_str_eq(r.authed, "CRAM-MD5");
	close(fd);
	run_fini(&r);
}

static void
script_rcpt_511_no_cred(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH CRAM-MD5\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_send(p, "550 5.1.1 no such user\r\n") ||
	    peer_expect_eq(p, "RSET") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, rcpt_511_without_credentials_stays_permanent)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_rcpt_511_no_cred,
	    TLS_MODE_NONE, rcpts, 1);

	cr_assert_eq(r.nauth_required, 0);
	cr_assert_eq(r.nrcpt, 1);
	cr_assert_eq(r.rcpt[0].status, OUTCOME_PERMANENT);
	cr_assert_str_eq(r.rcpt[0].enhanced, "5.1.1");
	cr_assert_null(strstr(p.rx, "AUTH"));
	close(fd);
	run_fini(&r);
}

static void
script_mail_530_no_cred(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250-AUTH PLAIN CRAM-MD5\r\n"
	    "250 ENHANCEDSTATUSCODES\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "530 5.7.0 Authentication required\r\n") ||
	    peer_expect_eq(p, "RSET") ||
	    peer_send(p, "250 2.0.0 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, mail_530_without_credentials_is_temporary_nocred)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_mail_530_no_cred,
	    TLS_MODE_NONE, rcpts, 1);

	cr_assert_eq(r.nauth_required, 1);
	cr_assert_eq(r.nrcpt, 0);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.done[0].class, OC_NOCRED);
	cr_assert_not_null(strstr(r.done[0].text, "server requires "
	    "authentication and no credentials are configured"), "%s",
	    r.done[0].text);
	cr_assert_null(strstr(p.rx, "AUTH"));
	run_fini(&r);
	close(fd);
}

static void
script_rcpt_571_no_cred(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH CRAM-MD5\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_send(p, "554 5.7.1 Relay access denied\r\n") ||
	    peer_expect_eq(p, "RSET") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, rcpt_571_without_credentials_never_permanent)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_rcpt_571_no_cred,
	    TLS_MODE_NONE, rcpts, 1);

	cr_assert_eq(r.nauth_required, 1);
	cr_assert_eq(r.nrcpt, 1);
	cr_assert_eq(r.rcpt[0].status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.rcpt[0].class, OC_NOCRED);
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.done[0].class, OC_NOCRED);
	run_fini(&r);
	close(fd);
}

static void
script_plain_only(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

/* The session ended without credentials sent over plain text, and the
 * reason says how to allow it. */
static void
assert_plaintext_refused(const struct run *r, const struct peer *p)
{
	cr_assert_eq(r->nauthenticated, 0);
	cr_assert_eq(r->closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r->closed.class, OC_AUTH);
	cr_assert_str_eq(r->closed.text, "refusing to send credentials over "
	    "an unencrypted connection (set allow_plaintext_auth = true to "
	    "allow)");
	cr_assert_null(strstr(p->rx, "AUTH"), "%s", p->rx);
}

/* A server without TLS offering what script offers, and a client that
 * must authenticate first: it gives up before AUTH. */
static void
refused_before_auth(peer_script script)
{
	struct peer p = { 0 };
	struct run r;

	peer_start(&p, script);
	run_init(&r, p.port, TLS_MODE_NONE);
	auth_set(&r, cram_user, cram_pass, NULL, 0, 1);
	session_go(&p, &r);

	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.nclosed, 1);
	assert_plaintext_refused(&r, &p);
	run_fini(&r);
}

Test(smtp_client, plain_only_without_tls_is_refused_before_auth)
{
	refused_before_auth(script_plain_only);
}

static void
script_auth_454(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH CRAM-MD5 PLAIN\r\n") ||
	    peer_expect_eq(p, "AUTH CRAM-MD5") ||
	    peer_send(p, "454 4.7.0 Temporary authentication failure\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, auth_454_is_temporary_and_stops)
{
	struct peer p = { 0 };
	struct run r;

	peer_start(&p, script_auth_454);
	run_init(&r, p.port, TLS_MODE_NONE);
	auth_set(&r, cram_user, cram_pass, NULL, 1, 1);
	session_go(&p, &r);

	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_AUTH);
	cr_assert_eq(r.closed.code, 454);
	cr_assert_not_null(strstr(r.closed.text, "CRAM-MD5: 454 4.7.0 "
	    "Temporary authentication failure"), "%s", r.closed.text);
	cr_assert_null(strstr(p.rx, "AUTH PLAIN"), "no other mechanism");
	run_fini(&r);
}

static void
script_all_fail(struct peer *p)
{
	char resp[256];
	size_t len;

	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH LOGIN PLAIN CRAM-MD5\r\n") ||
	    peer_cram_md5(p, "535 5.7.8 Error: CRAM no\r\n") ||
	    peer_b64_line(p, "AUTH PLAIN ", resp, sizeof(resp), &len) ||
	    peer_send(p, "535 5.7.8 PLAIN no\r\n") ||
	    peer_expect_eq(p, "AUTH LOGIN") ||
	    peer_send(p, "334 VXNlcm5hbWU6\r\n") ||
	    peer_b64_line(p, "", resp, sizeof(resp), &len))
		return;
	if (strcmp(resp, cram_user) != 0) {
		peer_failf(p, "LOGIN user \"%s\"", resp);
		return;
	}
	if (peer_send(p, "334 UGFzc3dvcmQ6\r\n") ||
	    peer_b64_line(p, "", resp, sizeof(resp), &len))
		return;
	if (strcmp(resp, cram_pass) != 0) {
		peer_failf(p, "LOGIN password is not the password");
		return;
	}
	if (peer_send(p, "535 5.7.8 LOGIN no\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, every_mechanism_fails_lists_each_reply)
{
	struct peer p = { 0 };
	struct run r;
	char *log;

	peer_start(&p, script_all_fail);
	run_init(&r, p.port, TLS_MODE_NONE);
	auth_set(&r, cram_user, cram_pass, NULL, 1, 1);
	log = session_go_logged(&p, &r);

	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.nauthenticated, 0);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_AUTH);
	cr_assert_str_eq(r.closed.text, "authentication failed: "
	    "CRAM-MD5: 535 5.7.8 Error: CRAM no, PLAIN: 535 5.7.8 PLAIN no, "
	    "LOGIN: 535 5.7.8 LOGIN no");
	cr_assert_null(strstr(r.closed.text, cram_pass));
	/* LOGIN's answers are redacted as well */
	cr_assert_not_null(strstr(log, ">>> AUTH LOGIN\n"), "%s", log);
	cr_assert_not_null(strstr(log, ">>> AUTH PLAIN <redacted>\n"));
	cr_assert_null(strstr(log, cram_pass));
	cr_assert_null(strstr(log, "dGFuc3RhYWZ0YW5zdGFhZg=="), "base64 "
	    "of the password");
	cr_assert_null(strstr(log, "VXNlcm5hbWU6"), "challenges redacted");
	free(log);
	run_fini(&r);
}

/* ---- SCRAM-SHA-256 against a server computed here (RFC 5802/7677) ---- */

static const char scram_salt[] = "W22ZaJ0SNY7soEsUEjb6gQ==";
static const char scram_snonce[] = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
/* The iteration count the test server asks for. */
static int scram_iter = 4096;

/* The client proof and server signature for authmsg, base64. */
static void
scram_compute(const char *password, const char *authmsg, char *proof,
    char *sig)
{
	unsigned char *salt, salted[32], ckey[32], stored[32], csig[32],
	    skey[32], ssig[32], p[32];
	unsigned int l;
	size_t saltlen, i;
	char *b;

	cr_assert_eq(sasl_b64_decode(scram_salt, strlen(scram_salt), &salt,
	    &saltlen), 0);
	cr_assert_eq(PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt,
	    (int)saltlen, scram_iter, EVP_sha256(), 32, salted), 1);
	free(salt);
	HMAC(EVP_sha256(), salted, 32, (const unsigned char *)"Client Key",
	    10, ckey, &l);
	SHA256(ckey, 32, stored);
	HMAC(EVP_sha256(), stored, 32, (const unsigned char *)authmsg,
	    strlen(authmsg), csig, &l);
	for (i = 0; i < 32; i++)
		p[i] = ckey[i] ^ csig[i];
	HMAC(EVP_sha256(), salted, 32, (const unsigned char *)"Server Key",
	    10, skey, &l);
	HMAC(EVP_sha256(), skey, 32, (const unsigned char *)authmsg,
	    strlen(authmsg), ssig, &l);
	b = sasl_b64_encode(p, 32);
	strcpy(proof, b);
	free(b);
	b = sasl_b64_encode(ssig, 32);
	strcpy(sig, b);
	free(b);
}

Test(smtp_client, scram_test_server_matches_rfc7677)
{
	char proof[64], sig[64];

	/* the RFC's own exchange, to trust the server side below */
	scram_compute("pencil", "n=user,r=rOprNGfwEbeRWgbNEkqO,"
	    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
	    "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,"
	    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", proof, sig);
	cr_assert_str_eq(proof, "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
	cr_assert_str_eq(sig, "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

static int scram_bad_signature;

static void
script_scram(struct peer *p)
{
	char cf[512], sf[1024], cfin[512], authmsg[2048], proof[64], sig[64];
	char v[128], *pp;
	const char *nonce;
	size_t len;

	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n"
	    "250 AUTH SCRAM-SHA-256 CRAM-MD5\r\n") ||
	    peer_b64_line(p, "AUTH SCRAM-SHA-256 ", cf, sizeof(cf), &len))
		return;
	if (strncmp(cf, "n,,n=user,r=", 12) != 0) {
		peer_failf(p, "client-first \"%s\"", cf);
		return;
	}
	nonce = cf + 12;
	snprintf(sf, sizeof(sf), "r=%s%s,s=%s,i=%d", nonce, scram_snonce,
	    scram_salt, scram_iter);
	if (peer_send_b64(p, "334", sf, strlen(sf)) ||
	    peer_b64_line(p, "", cfin, sizeof(cfin), &len))
		return;
	if ((pp = strstr(cfin, ",p=")) == NULL) {
		peer_failf(p, "client-final \"%s\"", cfin);
		return;
	}
	*pp = '\0';
	snprintf(authmsg, sizeof(authmsg), "%s,%s,%s", cf + 3, sf, cfin);
	scram_compute("pencil", authmsg, proof, sig);
	if (strcmp(pp + 3, proof) != 0) {
		peer_failf(p, "client proof %s, want %s", pp + 3, proof);
		return;
	}
	if (scram_bad_signature)
		sig[0] = sig[0] == 'A' ? 'B' : 'A';
	snprintf(v, sizeof(v), "v=%s", sig);
	if (peer_send_b64(p, "334", v, strlen(v)))
		return;
	if (scram_bad_signature) {
		/* the client must cancel, not take our word */
		if (peer_expect_eq(p, "*") ||
		    peer_send(p, "501 5.7.0 Authentication aborted\r\n") ||
		    peer_expect(p, "QUIT") ||
		    peer_send(p, "221 Bye\r\n"))
			return;
		peer_drain(p);
		return;
	}
	if (peer_expect_eq(p, "") ||
	    peer_send(p, "235 2.7.0 Authentication successful\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, scram_sha_256_verifies_the_server)
{
	struct peer p = { 0 };
	struct run r;

	scram_bad_signature = 0;
	peer_start(&p, script_scram);
	run_init(&r, p.port, TLS_MODE_NONE);
	auth_set(&r, "user", "pencil", "SCRAM-SHA-256", 1, 1);
	session_go(&p, &r);

	cr_assert_eq(r.nauthenticated, 1);
	cr_assert_str_eq(r.authed, "SCRAM-SHA-256");
	cr_assert_eq(r.nready, 1);
	cr_assert_eq(r.closed.status, OUTCOME_OK, "%s", r.closed.text);
	run_fini(&r);
}

/* Ticks on the client's loop while it authenticates: the longest gap. */
struct ticker {
	struct event *ev;
	double last;
	double max_gap;
};

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ticker *t = arg;
	double n = now();

	if (n - t->last > t->max_gap)
		t->max_gap = n - t->last;
	t->last = n;
}

/*
 * SCRAM with the largest iteration count we accept: PBKDF2 runs on the
 * worker pool, so the loop, and every other session on it, keeps being
 * served meanwhile. The loop's longest stall must stay well under what
 * one PBKDF2 of that size takes here.
 */
Test(smtp_client, scram_pbkdf2_runs_off_the_loop)
{
	struct timeval every = { 0, 5000 };
	struct peer p = { 0 };
	struct ticker t = { 0 };
	unsigned char *salt, out[32];
	size_t saltlen;
	double t0, pbkdf2;
	struct run r;

	cr_assert_eq(evthread_use_pthreads(), 0);
	cr_assert_eq(sasl_b64_decode(scram_salt, strlen(scram_salt), &salt,
	    &saltlen), 0);
	t0 = now();
	cr_assert_eq(PKCS5_PBKDF2_HMAC("pencil", 6, salt, (int)saltlen,
	    SASL_SCRAM_MAX_ITERATIONS, EVP_sha256(), 32, out), 1);
	pbkdf2 = now() - t0;
	free(salt);

	scram_iter = SASL_SCRAM_MAX_ITERATIONS;
	scram_bad_signature = 0;
	peer_start(&p, script_scram);
	run_init(&r, p.port, TLS_MODE_NONE);
	r.params.timeout_command = 60;
	r.params.worker = worker_new(r.base, 1);
	auth_set(&r, "user", "pencil", "SCRAM-SHA-256", 1, 1);
	t.ev = event_new(r.base, -1, EV_PERSIST, tick_cb, &t);
	t.last = now();
	event_add(t.ev, &every);
	run_go(&r);
	peer_join(&p);
	event_free(t.ev);
	worker_free(r.params.worker);

	cr_assert_str_empty(p.fail, "server: %s", p.fail);
	cr_assert_eq(r.nauthenticated, 1);
	cr_assert_str_eq(r.authed, "SCRAM-SHA-256");
	cr_assert_eq(r.closed.status, OUTCOME_OK, "%s", r.closed.text);
	cr_log_info("PBKDF2 with %d iterations: %.3fs; longest loop stall "
	    "while authenticating: %.3fs", SASL_SCRAM_MAX_ITERATIONS, pbkdf2,
	    t.max_gap);
	cr_assert_lt(t.max_gap, pbkdf2 / 2, "the loop stalled %.3fs (one "
	    "PBKDF2 takes %.3fs)", t.max_gap, pbkdf2);
	run_fini(&r);
}

Test(smtp_client, scram_wrong_server_signature_is_refused)
{
	struct peer p = { 0 };
	struct run r;

	scram_bad_signature = 1;
	peer_start(&p, script_scram);
	run_init(&r, p.port, TLS_MODE_NONE);
	/* only SCRAM in the order: no fallback to CRAM-MD5 */
	auth_set(&r, "user", "pencil", "SCRAM-SHA-256", 1, 1);
	session_go(&p, &r);

	cr_assert_eq(r.nauthenticated, 0);
	cr_assert_eq(r.nready, 0);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_AUTH);
	cr_assert_not_null(strstr(r.closed.text, "SCRAM-SHA-256"), "%s",
	    r.closed.text);
	run_fini(&r);
}

static void
script_no_auth_offered(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example", "250 mx.test\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, auth_first_without_auth_offered_goes_on)
{
	struct peer p = { 0 };
	struct run r;

	peer_start(&p, script_no_auth_offered);
	run_init(&r, p.port, TLS_MODE_NONE);
	auth_set(&r, cram_user, cram_pass, NULL, 0, 1);
	session_go(&p, &r);

	cr_assert_eq(r.nready, 1);
	cr_assert_str_eq(r.mech_at_ready, "");
	cr_assert_eq(r.closed.status, OUTCOME_OK);
	run_fini(&r);
}

static void
script_530_then_close(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH CRAM-MD5\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>"))
		return;
	peer_send(p, "530 5.7.0 Authentication required\r\n");
	/* and hangs up, as some servers do */
}

Test(smtp_client, close_after_530_reports_auth_retry)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_msg_init(&p, &r, script_530_then_close,
	    TLS_MODE_NONE, rcpts, 1);
	auth_set(&r, cram_user, cram_pass, NULL, 0, 0);
	session_go(&p, &r);

	cr_assert_eq(r.nauth_required, 1);
	cr_assert_eq(r.ndone, 0);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_AUTH_RETRY, "%s: %s",
	    outcome_class_name(r.closed.class), r.closed.text);
	cr_assert_str_eq(outcome_dsn_code(&r.closed), "4.7.0");
	cr_assert_null(strstr(p.rx, "AUTH"), "%s", p.rx);
	run_fini(&r);
	close(fd);
}

static void
script_530_then_reset(struct peer *p)
{
	const struct linger lg = { 1, 0 };

	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH CRAM-MD5\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "530 5.7.0 Authentication required\r\n") ||
	    peer_expect(p, "RSET"))
		return;
	/* the close that ends the thread sends a reset, not a FIN */
	if (setsockopt(p->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == -1)
		peer_failf(p, "SO_LINGER: %s", strerror(errno));
}

Test(smtp_client, reset_after_530_reports_auth_retry)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_msg_init(&p, &r, script_530_then_reset,
	    TLS_MODE_NONE, rcpts, 1);
	auth_set(&r, cram_user, cram_pass, NULL, 1, 0);
	session_go(&p, &r);

	cr_assert_eq(r.nauth_required, 1);
	cr_assert_eq(r.ndone, 0);
	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_AUTH_RETRY, "%s: %s",
	    outcome_class_name(r.closed.class), r.closed.text);
	run_fini(&r);
	close(fd);
}

Test(smtp_client, close_after_530_without_credentials_is_nocred)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_message(&p, &r, script_530_then_close,
	    TLS_MODE_NONE, rcpts, 1);

	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	/* nothing to retry with: never the at-once retry */
	cr_assert_eq(r.closed.class, OC_NOCRED, "%s: %s",
	    outcome_class_name(r.closed.class), r.closed.text);
	run_fini(&r);
	close(fd);
}

static void
script_cram_only_no_tls(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH SCRAM-SHA-256 "
	    "CRAM-MD5\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, hashed_mechanisms_without_tls_are_refused_too)
{
	refused_before_auth(script_cram_only_no_tls);
}

static void
script_530_no_tls(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example",
	    "250-mx.test\r\n250 AUTH CRAM-MD5\r\n") ||
	    peer_expect(p, "MAIL FROM:<a@example.org>") ||
	    peer_send(p, "530 5.7.0 Authentication required\r\n") ||
	    peer_expect(p, "RSET") ||
	    peer_send(p, "250 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

Test(smtp_client, on_demand_auth_without_tls_is_refused)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	fd = one_msg_init(&p, &r, script_530_no_tls, TLS_MODE_NONE, rcpts, 1);
	auth_set(&r, cram_user, cram_pass, NULL, 0, 0);
	session_go(&p, &r);

	cr_assert_eq(r.nauth_required, 1);
	cr_assert_eq(r.ndone, 0);
	assert_plaintext_refused(&r, &p);
	run_fini(&r);
	close(fd);
}

/* ---- session resumption (tls.c), over memory BIOs ---- */

/* A server context with k's certificate: a new one has new ticket keys,
 * so it refuses every session another context gave. */
static SSL_CTX *
server_ctx(struct pki *k, int max_version)
{
	SSL_CTX *s = SSL_CTX_new(TLS_server_method());

	cr_assert_not_null(s);
	cr_assert_eq(SSL_CTX_use_certificate(s, k->leaf), 1);
	cr_assert_eq(SSL_CTX_use_PrivateKey(s, k->key), 1);
	if (max_version != 0)
		cr_assert_eq(SSL_CTX_set_max_proto_version(s, max_version), 1);
	return s;
}

/*
 * One connection from a new client SSL for host and port to a server of
 * sctx through a BIO pair: the handshake, then a few bytes from the server,
 * which the client reads (and with them, in TLS 1.3, the session tickets
 * the server sent after the handshake). Returns 1 when the handshake
 * completed and the session was resumed, 0 when it completed in full, -1
 * when it failed; *verr gets the client's verify result.
 */
static int
mem_connect(SSL_CTX *ctx, SSL_CTX *sctx, const char *host, const char *port,
    long *verr)
{
	SSL *cl, *sv;
	BIO *cb, *sb;
	char buf[16];
	int i, n, cdone = 0, sdone = 0, ret = -1;

	cl = tls_client_ssl_new(ctx, host, port, tls_ctx_verifies(ctx));
	cr_assert_not_null(cl);
	sv = SSL_new(sctx);
	cr_assert_not_null(sv);
	cr_assert_eq(BIO_new_bio_pair(&cb, 0, &sb, 0), 1);
	SSL_set_bio(cl, cb, cb);
	SSL_set_bio(sv, sb, sb);
	SSL_set_accept_state(sv);
	for (i = 0; i < 50 && !(cdone && sdone); i++) {
		if (!cdone && (n = SSL_do_handshake(cl)) != 1 &&
		    SSL_get_error(cl, n) != SSL_ERROR_WANT_READ)
			break;
		cdone = cdone || n == 1;
		if (!sdone && (n = SSL_do_handshake(sv)) != 1 &&
		    SSL_get_error(sv, n) != SSL_ERROR_WANT_READ)
			break;
		sdone = sdone || n == 1;
	}
	*verr = SSL_get_verify_result(cl);
	if (cdone && sdone) {
		cr_assert_eq(SSL_write(sv, "hello", 5), 5);
		cr_assert_eq(SSL_read(cl, buf, sizeof(buf)), 5);
		ret = tls_session_reused(cl);
		cr_assert_eq(ret, SSL_session_reused(sv));
		tls_session_end(cl);
	}
	ERR_clear_error();
	SSL_free(sv);
	SSL_free(cl);
	return ret;
}

Test(tls, second_connection_resumes_and_stays_verified)
{
	struct pki k;
	SSL_CTX *ctx;
	long verr;

	pki_init(&k);
	ctx = client_ctx(k.cafile, 1);
	cr_assert_eq(mem_connect(ctx, k.sctx, "127.0.0.1", "587", &verr), 0);
	cr_assert_eq(verr, X509_V_OK);
	/* TLS 1.3: the ticket came after the handshake, and is offered */
	cr_assert_eq(mem_connect(ctx, k.sctx, "127.0.0.1", "587", &verr), 1);
	cr_assert_eq(verr, X509_V_OK);
	cr_assert_eq(mem_connect(ctx, k.sctx, "127.0.0.1", "587", &verr), 1);
	tls_ctx_free(ctx);
	pki_fini(&k);
}

/*
 * Postfix's smtpd keeps its own ticket keys and never asks for a ticket
 * to be renewed: one ticket after a full handshake, none after a
 * resumption. This callback does the same with one fixed key.
 */
static int
ticket_key_once(SSL *s, unsigned char name[16], unsigned char *iv,
    EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
	static const unsigned char key_name[16] = "ticket-key-test";
	static unsigned char aes[32] = { 1 }, mac[32] = { 2 };
	static char digest[] = "SHA256";
	OSSL_PARAM params[3];

	if (enc) {
		memcpy(name, key_name, sizeof(key_name));
		if (RAND_bytes(iv, 16) != 1 || EVP_EncryptInit_ex(cctx,
		    EVP_aes_256_cbc(), NULL, aes, iv) != 1)
			return -1;
	} else {
		if (memcmp(name, key_name, sizeof(key_name)) != 0)
			return 0;
		if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, aes,
		    iv) != 1)
			return -1;
	}
	params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY,
	    mac, sizeof(mac));
	params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
	    digest, 0);
	params[2] = OSSL_PARAM_construct_end();
	return EVP_MAC_CTX_set_params(hctx, params) == 1 ? 1 : -1;
}

/* Against such a server every later connection resumes: each is offered
 * the one ticket the first full handshake gave, which OpenSSL would
 * otherwise spend on the first resumption. */
Test(tls, one_ticket_serves_every_later_connection)
{
	struct pki k;
	SSL_CTX *ctx, *once;
	long verr;
	int i;

	pki_init(&k);
	once = server_ctx(&k, 0);
	cr_assert_eq(SSL_CTX_set_num_tickets(once, 1), 1);
	cr_assert_eq(SSL_CTX_set_tlsext_ticket_key_evp_cb(once,
	    ticket_key_once), 1);
	ctx = client_ctx(k.cafile, 1);
	cr_assert_eq(mem_connect(ctx, once, "mx.test", "25", &verr), 0);
	for (i = 0; i < 4; i++) {
		cr_assert_eq(mem_connect(ctx, once, "mx.test", "25", &verr),
		    1, "connection %d after the first", i + 1);
		cr_assert_eq(verr, X509_V_OK);
	}
	tls_ctx_free(ctx);
	SSL_CTX_free(once);
	pki_fini(&k);
}

Test(tls, tls12_session_resumes)
{
	struct pki k;
	SSL_CTX *ctx, *s12;
	long verr;

	pki_init(&k);
	s12 = server_ctx(&k, TLS1_2_VERSION);
	ctx = client_ctx(k.cafile, 1);
	cr_assert_eq(mem_connect(ctx, s12, "mx.test", "25", &verr), 0);
	cr_assert_eq(mem_connect(ctx, s12, "mx.test", "25", &verr), 1);
	cr_assert_eq(verr, X509_V_OK);
	tls_ctx_free(ctx);
	SSL_CTX_free(s12);
	pki_fini(&k);
}

/* The certificate is for mx.test and 127.0.0.1: a session made with
 * mx.test must not let other.test skip the name check. */
Test(tls, session_never_offered_to_another_name_or_port)
{
	struct pki k;
	SSL_CTX *ctx;
	long verr;

	pki_init(&k);
	ctx = client_ctx(k.cafile, 1);
	cr_assert_eq(mem_connect(ctx, k.sctx, "mx.test", "25", &verr), 0);
	cr_assert_eq(mem_connect(ctx, k.sctx, "other.test", "25", &verr), -1);
	cr_assert_eq(verr, X509_V_ERR_HOSTNAME_MISMATCH);
	cr_assert_eq(mem_connect(ctx, k.sctx, "mx.test", "587", &verr), 0);
	cr_assert_eq(mem_connect(ctx, k.sctx, "mx.test", "25", &verr), 1);
	/* a failed handshake of another peer left mx.test's alone, and
	 * none was cached for other.test */
	cr_assert_eq(mem_connect(ctx, k.sctx, "other.test", "25", &verr), -1);
	cr_assert_eq(verr, X509_V_ERR_HOSTNAME_MISMATCH);
	tls_ctx_free(ctx);
	pki_fini(&k);
}

/* A new context (what relay.c makes when the CA file or verify changes,
 * and after a reload) starts with nothing to resume. */
Test(tls, new_context_never_resumes)
{
	struct pki k;
	SSL_CTX *a, *b;
	long verr;

	pki_init(&k);
	a = client_ctx(k.cafile, 1);
	b = client_ctx(k.cafile, 1);
	cr_assert_eq(mem_connect(a, k.sctx, "mx.test", "25", &verr), 0);
	cr_assert_eq(mem_connect(b, k.sctx, "mx.test", "25", &verr), 0);
	cr_assert_eq(mem_connect(a, k.sctx, "mx.test", "25", &verr), 1);
	tls_ctx_free(a);
	tls_ctx_free(b);
	pki_fini(&k);
}

/* A server that does not know the session (restarted, new ticket keys)
 * gets a full, verified handshake; the session it gives is used next. */
Test(tls, refused_session_falls_back_to_full_handshake)
{
	struct pki k;
	SSL_CTX *ctx, *other;
	long verr;

	pki_init(&k);
	other = server_ctx(&k, 0);
	ctx = client_ctx(k.cafile, 1);
	cr_assert_eq(mem_connect(ctx, k.sctx, "mx.test", "25", &verr), 0);
	cr_assert_eq(mem_connect(ctx, other, "mx.test", "25", &verr), 0);
	cr_assert_eq(verr, X509_V_OK);
	cr_assert_eq(mem_connect(ctx, other, "mx.test", "25", &verr), 1);
	tls_ctx_free(ctx);
	SSL_CTX_free(other);
	pki_fini(&k);
}

Test(tls, forgotten_session_is_not_offered)
{
	struct pki k;
	SSL_CTX *ctx;
	SSL *ssl;
	long verr;

	pki_init(&k);
	ctx = client_ctx(k.cafile, 1);
	cr_assert_eq(mem_connect(ctx, k.sctx, "mx.test", "25", &verr), 0);
	ssl = tls_client_ssl_new(ctx, "mx.test", "25", 1);
	cr_assert_not_null(SSL_get_session(ssl), "a session is offered");
	tls_session_forget(ssl);
	SSL_free(ssl);
	ssl = tls_client_ssl_new(ctx, "mx.test", "25", 1);
	cr_assert_null(SSL_get_session(ssl));
	SSL_free(ssl);
	tls_session_forget(NULL);
	cr_assert_eq(mem_connect(ctx, k.sctx, "mx.test", "25", &verr), 0);
	tls_ctx_free(ctx);
	pki_fini(&k);
}

/* ---- the exact SIZE count on the worker pool ---- */

/*
 * A job that keeps the pool's only thread until released (bounded by
 * PEER_TIMEOUT), so a count queued behind it waits as long as the test
 * wants: as if the disk stalled.
 */
struct blocker {
	int fds[2];
};

static void
blocker_work(void *arg)
{
	struct blocker *b = arg;
	struct pollfd pfd = { .fd = b->fds[0], .events = POLLIN };

	(void)poll(&pfd, 1, PEER_TIMEOUT * 1000);
}

static struct worker *
blocked_worker(struct run *r, struct blocker *b)
{
	struct worker *w = worker_new(r->base, 1);

	cr_assert_eq(pipe(b->fds), 0);
	worker_run(w, blocker_work, NULL, b);
	return w;
}

static void
blocker_release(struct blocker *b)
{
	if (b->fds[1] != -1)
		cr_assert_eq(write(b->fds[1], "x", 1), 1);
	b->fds[1] = -1;
}

/* Releases the pool, lets the jobs' done() run (the count's on a session
 * long gone, maybe), and frees it. */
static void
blocked_worker_free(struct worker *w, struct blocker *b)
{
	int wfd = b->fds[1];

	blocker_release(b);
	worker_free(w);
	close(b->fds[0]);
	if (wfd != -1)
		close(wfd);
}

/*
 * A body whose bound on the breaks is over the server's SIZE limit while
 * its exact size is not: one line of 2500 characters (2 breaks), then
 * short lines. count_ehlo offers SIZE with 4 bytes to spare; count_mail
 * is the MAIL line with the exact size.
 */
static char count_body[20000];
static char count_ehlo[128];
static char count_mail[128];
static int count_mail_seen;  /* the server read MAIL (atomic) */

static int
count_msg_init(struct run *r, const char *const *rcpts)
{
	size_t i, n = 0;
	int fd;

	memset(count_body, 'x', 2500);
	memcpy(count_body + 2500, "\r\n", 2);
	for (i = 2502; i + 77 <= sizeof(count_body); i += 77) {
		memset(count_body + i, 'y', 75);
		memcpy(count_body + i + 75, "\r\n", 2);
	}
	n = i;
	snprintf(count_ehlo, sizeof(count_ehlo), "250-mx.test\r\n"
	    "250 SIZE %zu\r\n", n + 6 + 4);
	snprintf(count_mail, sizeof(count_mail), "MAIL FROM:<a@example.org> "
	    "SIZE=%zu", n + 6);
	cr_assert_gt(n + 3 * smtp_body_fold_bound(n, 998), n + 6 + 4,
	    "the bound alone must be over the limit");
	__atomic_store_n(&count_mail_seen, 0, __ATOMIC_SEQ_CST);
	fd = body_fd(count_body, n);
	msg_init(&r->msgs[0], "a@example.org", rcpts, 1, fd, (off_t)n);
	r->nmsgs = 1;
	r->params.line_limit = 998;
	return fd;
}

static void
script_counted(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example", count_ehlo) ||
	    peer_expect_eq(p, count_mail))
		return;
	__atomic_store_n(&count_mail_seen, 1, __ATOMIC_SEQ_CST);
	if (peer_send(p, "250 2.1.0 Ok\r\n") ||
	    peer_expect(p, "RCPT TO:<b@example.net>") ||
	    peer_send(p, "250 2.1.5 Ok\r\n") ||
	    peer_expect(p, "DATA") ||
	    peer_send(p, "354 go ahead\r\n") ||
	    peer_data(p) ||
	    peer_send(p, "250 2.0.0 Ok\r\n") ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

/* Without a pool the count runs at once, on the caller's thread. */
Test(smtp_client, size_counted_exactly_without_a_worker)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	peer_start(&p, script_counted);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = count_msg_init(&r, rcpts);
	session_go(&p, &r);

	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK, "%s", r.done[0].text);
	close(fd);
	run_fini(&r);
}

/* A body in memory is counted on the loop even with a pool: its owner
 * frees it with the transaction, which a pool job could outlive. */
Test(smtp_client, size_counted_exactly_from_memory)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct run r;
	int fd;

	peer_start(&p, script_counted);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = count_msg_init(&r, rcpts);
	close(fd);
	r.msgs[0].body_fd = -1;
	r.msgs[0].body_mem = (const unsigned char *)count_body;
	r.params.worker = worker_new(r.base, 1);
	session_go(&p, &r);

	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK, "%s", r.done[0].text);
	worker_free(r.params.worker);
	run_fini(&r);
}

/* What the loop saw while the count was held. */
struct count_tick {
	struct event *ev;
	struct blocker *b;
	struct run *r;
	int ticks;
	int mail_seen;       /* the server had MAIL at the tick */
	int free_client;     /* drop the session at the tick */
	int body_fd;         /* ... and close the body's descriptor */
};

static void
count_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct count_tick *t = arg;

	t->ticks++;
	t->mail_seen = __atomic_load_n(&count_mail_seen, __ATOMIC_SEQ_CST);
	if (t->free_client) {
		smtp_client_free(t->r->c);
		t->r->c = NULL;
		close(t->body_fd);
		event_base_loopbreak(t->r->base);
		return;
	}
	blocker_release(t->b);
}

static void
count_tick_start(struct count_tick *t, struct run *r, struct blocker *b)
{
	struct timeval tv = { 0, 200000 };

	t->r = r;
	t->b = b;
	t->ev = evtimer_new(r->base, count_tick_cb, t);
	cr_assert_not_null(t->ev);
	evtimer_add(t->ev, &tv);
}

/*
 * The count waits on the pool (held by a job ahead of it) while the loop
 * goes on: a timer fires 200 ms in, MAIL has not left yet, and once the
 * pool is free the session sends the exact SIZE and delivers.
 */
Test(smtp_client, size_count_runs_off_the_loop_and_the_session_goes_on)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct count_tick t = { 0 };
	struct blocker b;
	struct run r;
	int fd;

	peer_start(&p, script_counted);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = count_msg_init(&r, rcpts);
	r.params.worker = blocked_worker(&r, &b);
	count_tick_start(&t, &r, &b);
	session_go(&p, &r);
	event_free(t.ev);
	blocked_worker_free(r.params.worker, &b);

	cr_assert_eq(t.ticks, 1, "the loop stood still while counting");
	cr_assert_eq(t.mail_seen, 0, "MAIL left before the count was done");
	cr_assert_eq(r.ndone, 1);
	cr_assert_eq(r.done[0].status, OUTCOME_OK, "%s", r.done[0].text);
	cr_assert_eq(r.closed.status, OUTCOME_OK, "%s", r.closed.text);
	close(fd);
	run_fini(&r);
}

static void
script_421_while_counting(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example", count_ehlo) ||
	    peer_send(p, "421 4.3.2 shutting down\r\n"))
		return;
	peer_drain(p);
}

static void
script_wait_while_counting(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example", count_ehlo))
		return;
	peer_drain(p);
}

/*
 * The session goes away while its count waits on the pool: a 421 from
 * the server (closed(), which frees the client), or the owner's
 * smtp_client_free with the body's descriptor closed at once. The count
 * then runs on its own descriptor and its result is dropped: nothing
 * else reaches the owner, nothing touches freed memory (ASan), MAIL never
 * leaves.
 */
Test(smtp_client, close_while_counting_is_safe)
{
	static const char *const rcpts[] = { "b@example.net" };
	static const peer_script scripts[] = { script_421_while_counting,
		script_wait_while_counting };
	struct peer p;
	struct count_tick t;
	struct blocker b;
	struct run r;
	size_t i;
	int fd;

	for (i = 0; i < 2; i++) {
		memset(&p, 0, sizeof(p));
		memset(&t, 0, sizeof(t));
		peer_start(&p, scripts[i]);
		run_init(&r, p.port, TLS_MODE_NONE);
		fd = count_msg_init(&r, rcpts);
		r.params.worker = blocked_worker(&r, &b);
		if (i == 1) {
			t.free_client = 1;
			t.body_fd = fd;
			count_tick_start(&t, &r, &b);
		}
		session_go(&p, &r);
		if (t.ev != NULL)
			event_free(t.ev);
		if (i == 0)
			close(fd);
		blocked_worker_free(r.params.worker, &b);

		cr_assert_eq(__atomic_load_n(&count_mail_seen,
		    __ATOMIC_SEQ_CST), 0);
		cr_assert_eq(r.ndone, 0);
		if (i == 0) {
			cr_assert_eq(r.nclosed, 1);
			cr_assert_eq(r.closed.code, 421, "%s", r.closed.text);
			cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
		} else {
			cr_assert_eq(t.ticks, 1);
			cr_assert_eq(r.nclosed, 0);
		}
		cr_assert_null(strstr(p.rx, "MAIL"), "%s", p.rx);
		run_fini(&r);
	}
}

static void
script_quit_while_counting(struct peer *p)
{
	if (peer_greet(p, "EHLO client.example", count_ehlo) ||
	    peer_quit(p))
		return;
	peer_drain(p);
}

/* A count that does not come back within the command timeout ends the
 * session politely (QUIT): our slowness, not the server's, so OC_LOCAL,
 * and temporary. */
Test(smtp_client, count_that_does_not_come_back_times_out)
{
	static const char *const rcpts[] = { "b@example.net" };
	struct peer p = { 0 };
	struct blocker b;
	struct run r;
	int fd;

	peer_start(&p, script_quit_while_counting);
	run_init(&r, p.port, TLS_MODE_NONE);
	fd = count_msg_init(&r, rcpts);
	r.params.timeout_command = 1;
	r.params.worker = blocked_worker(&r, &b);
	session_go(&p, &r);
	close(fd);
	blocked_worker_free(r.params.worker, &b);

	cr_assert_eq(r.ndone, 0);
	cr_assert_eq(r.nclosed, 1);
	cr_assert_eq(r.closed.status, OUTCOME_TEMPORARY);
	cr_assert_eq(r.closed.class, OC_LOCAL, "%s", r.closed.text);
	cr_assert_not_null(strstr(r.closed.text, "counted"), "%s",
	    r.closed.text);
	cr_assert_geq(r.elapsed, 0.9);
	cr_assert_lt(r.elapsed, 5.0);
	cr_assert_null(strstr(p.rx, "MAIL"), "%s", p.rx);
	run_fini(&r);
}
