/*
 * Relay sessions: the policy that sits above smtp_client. A session is
 * driven by the scheduler (ready -> send -> delivered -> ready ... -> quit
 * -> closed) and turns what the upstream said into recipient states:
 *
 *   RCPT 2xx     accepted; the DATA reply settles it (2xx sent, 5xx failed,
 *                4xx pending)
 *   RCPT 5xx     failed for good (a bounce follows)
 *   RCPT 4xx     pending, with the reply
 *   MAIL reject  applies to every recipient, like a DATA reply
 *   session gone every recipient not yet settled stays pending
 *
 * except when a reused connection was gone before the server answered
 * anything of the transaction (smtp_client_stale()): then the server has
 * no part of the message, no recipient is touched, and unsent() hands it
 * back to the scheduler, which sends it again on a new connection.
 *
 * Only a 5xx (or the client refusing the message itself) makes a
 * recipient fail: a TLS, authentication or DNS problem is something an
 * operator fixes, so it defers and never bounces. States are kept aside
 * during the transaction and written into the envelope only when it ends,
 * so an aborted session (shutdown) leaves the envelope exactly as it was
 * before the attempt.
 *
 * A maildir relay runs the same cycle with one worker job per message.
 *
 * Credentials: an SMTP session first looks its credentials up on the
 * worker pool (files are read and commands run there, never on the loop),
 * then connects, or refuses to when it must authenticate first and has
 * nothing to authenticate with. What a missing or rejected credential
 * means for the queue is always "deferred": an operator fixes it, and the
 * log line says how. Secrets live in the lookup job (wiped when it is
 * freed) and in smtp_client's copy (wiped with the client); nothing here
 * logs one.
 */
#include <sys/stat.h>
#include <sys/types.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <event2/event.h>

#include "authinfo.h"
#include "log.h"
#include "metrics.h"
#include "maildir.h"
#include "relay.h"
#include "sasl.h"
#include "secretcmd.h"
#include "smtp_client.h"
#include "tls.h"
#include "xmalloc.h"

/* A decrypted "*.gpg" credential file, kept until the file changes. */
struct gpg_file {
	char *path;
	int present;
	int decrypted;          /* gpg ran for this version of the file */
	unsigned long flushes;  /* relay's gpg_flushes when last looked */
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
	struct timespec ctime;
	struct authinfo *ai;    /* NULL when gpg failed */
	char err[512];          /* why, when it failed */
};

struct relay {
	struct event_base *base;
	struct evdns_base *dns;
	struct queue *q;
	struct worker *w;
	SSL_CTX *ssl_ctx;   /* NULL until a TLS session needs it */
	char *ca_file;      /* what ssl_ctx was made with */
	int verify;

	struct authstate *as;          /* shared; borrowed */
	struct authinfo_cache *cache;  /* thread-safe on its own */
	pthread_mutex_t gpg_mtx;       /* guards gpg, ngpg, gpg_gen */
	struct gpg_file *gpg;
	size_t ngpg;
	unsigned long gpg_gen;         /* grows when a *.gpg file changes */
	/* relay_credentials_flush runs on the loop and must not wait for a
	 * gpg holding gpg_mtx: it only counts, the workers act on it */
	atomic_ulong gpg_flushes;
	unsigned long cred_gen;        /* both generations at the last look */
	int refs;                      /* credential jobs in flight */
	int dead;                      /* relay_free ran; jobs free it */
};

/* What a credential lookup needs, copied from the config. */
struct cred_query {
	char *name;             /* relay name, for messages */
	char *hostport;
	char *host;
	char *port;
	char *user;             /* NULL: any login */
	char **files;
	size_t nfiles;
	char *password_command;
	char *oauth_command;
	char *mechanisms;       /* configured order, joined; NULL: none */
};

enum cred_status {
	CRED_OK,         /* login and secret */
	CRED_NONE,       /* nothing anywhere */
	CRED_INCOMPLETE, /* an entry without password, or without login */
	CRED_ERROR,      /* a refused file, a failed command */
};

struct cred_result {
	enum cred_status status;
	char *login;
	char *secret;           /* password or OAuth token; wiped */
	char *mechanisms;       /* the order to use; NULL: default */
	char *file;             /* where the entry was, NULL: none */
	unsigned line;
	int from_command;       /* the secret came from password_command */
	unsigned long gen;      /* the cache generation after the lookup */
	char reason[OUTCOME_TEXT_MAX]; /* for the recipients' deferral */
	char fix[1536];         /* the log line: what to do */
};

struct cred_job {
	struct relay *r;
	struct relay_session *rs;  /* NULL once the session was freed */
	struct cred_query q;
	struct cred_result res;
};

struct check_job {
	struct relay *r;
	struct cred_query q;
	unsigned long gen;
	void (*done)(int, void *);
	void *arg;
};

enum rs_state {
	RS_CONNECTING, /* start event pending, or smtp_client connecting */
	RS_READY,      /* inside the owner's ready(): send, idle or quit */
	RS_IDLE,       /* open with nothing to send: send or quit comes */
	RS_SENDING,    /* a message is in flight */
	RS_RESETTING,  /* transaction over, waiting for the client's ready */
	RS_QUITTING,   /* quit requested, closed() comes */
	RS_CLOSED,     /* closed() was called */
	RS__COUNT
};

static const char *const rs_state_names[] = {
	[RS_CONNECTING] = "connecting",
	[RS_READY] = "ready",
	[RS_IDLE] = "idle",
	[RS_SENDING] = "sending",
	[RS_RESETTING] = "resetting",
	[RS_QUITTING] = "quitting",
	[RS_CLOSED] = "closed",
};
_Static_assert(sizeof(rs_state_names) / sizeof(*rs_state_names) == RS__COUNT,
    "rs_state_names out of date");

enum tr_state {
	TR_WAITING,  /* no RCPT reply yet */
	TR_ACCEPTED, /* RCPT 2xx: the end of the transaction settles it */
	TR_SETTLED,  /* RCPT 4xx/5xx: final for this attempt */
};

/* One recipient of the message in flight. */
struct txn_rcpt {
	size_t idx;               /* in env->rcpts */
	enum tr_state state;
	enum rcpt_status status;  /* when settled */
	char dsn[16];
	char *reply;
};

struct maildir_job;

struct relay_session {
	enum rs_state state;
	enum relay_type type;
	struct relay *relay;
	const struct relay_session_cb *cb;
	void *arg;
	struct event *ev;        /* start, and closed() of a maildir quit */

	/* copied from the config */
	char *name;
	char *host;
	char *port;
	char *helo;
	char *maildir;
	char *hostname;
	enum tls_mode tls;
	unsigned timeout_connect;
	unsigned timeout_command;
	unsigned timeout_data;
	unsigned line_limit;
	SSL_CTX *ssl_ctx;        /* our own reference; NULL without TLS */
	struct outcome start_error;
	int start_failed;

	/* authentication */
	enum auth_policy auth;
	int auth_first_cfg;      /* the host matches an auth_first regexp */
	int allow_plaintext;
	struct cred_query *query; /* for the lookup at start */
	struct cred_job *cred_job; /* in flight */
	char *login;             /* what AUTH used, for the log */
	char *cred_file;         /* the entry's file and line, if any */
	unsigned cred_line;
	int cred_from_command;
	char *cred_fix;          /* log line for missing credentials */
	int fix_logged;
	struct outcome fail_after; /* end the session with this when ready */
	int have_fail_after;

	char hostport[300];      /* relay= before a connection */
	struct smtp_client *client;

	/* the message in flight: its body from the queue's memory
	 * (queue_body_take), else from its spool file */
	struct envelope *env;
	unsigned char *mem;
	int fd;
	struct txn_rcpt *rcpts;
	const char **addrs;
	size_t n;
	struct maildir_job *job;
};

/* Owns what the worker thread touches; the session may go away first. */
struct maildir_job {
	struct relay_session *rs; /* NULL once the session was freed */
	int fd;
	off_t offset;
	off_t size;
	char *path;
	char *hostname;
	int error;
	char file[256];
	char err[512];
};

static void rs_set_state(struct relay_session *, enum rs_state);

struct relay *
relay_new(struct event_base *base, struct evdns_base *dns, struct queue *q,
    struct worker *w, struct authstate *as)
{
	struct relay *r;
	int error;

	r = xcalloc(1, sizeof(*r));
	r->base = base;
	r->dns = dns;
	r->q = q;
	r->w = w;
	r->as = as;
	r->cache = authinfo_cache_new();
	if ((error = pthread_mutex_init(&r->gpg_mtx, NULL)) != 0) {
		errno = error;
		fatal("%s: pthread_mutex_init", __func__);
	}
	return r;
}

static void
gpg_files_clear(struct relay *r)
{
	size_t i;

	for (i = 0; i < r->ngpg; i++) {
		authinfo_free(r->gpg[i].ai);
		free(r->gpg[i].path);
	}
	free(r->gpg);
	r->gpg = NULL;
	r->ngpg = 0;
}

static void
relay_destroy(struct relay *r)
{
	authinfo_cache_free(r->cache);
	gpg_files_clear(r);
	pthread_mutex_destroy(&r->gpg_mtx);
	free(r);
}

void
relay_tls_flush(struct relay *r)
{
	tls_ctx_free(r->ssl_ctx);
	r->ssl_ctx = NULL;
	free(r->ca_file);
	r->ca_file = NULL;
}

void
relay_free(struct relay *r)
{
	if (r == NULL)
		return;
	tls_ctx_free(r->ssl_ctx);
	r->ssl_ctx = NULL;
	free(r->ca_file);
	r->ca_file = NULL;
	if (r->refs > 0) {
		r->dead = 1;	/* the last job's completion frees it */
		return;
	}
	relay_destroy(r);
}

/* A job on the worker pool holds the relay; returns 1 when the relay was
 * freed meanwhile (the caller must not call back then). */
static void
relay_hold(struct relay *r)
{
	r->refs++;
}

static int
relay_release(struct relay *r)
{
	if (--r->refs == 0 && r->dead) {
		relay_destroy(r);
		return 1;
	}
	return r->dead;
}

static int
streq_null(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

/*
 * The relay's TLS context, made on first use. Loading the system store
 * reads files on the loop thread; it happens once per relay (and after a
 * reload that changes ca_file or verify), which we accept.
 */
static SSL_CTX *
relay_ssl_ctx(struct relay *r, const struct relay_config *rc, char *err,
    size_t errlen)
{
	SSL_CTX *ctx;

	if (r->ssl_ctx != NULL && r->verify == rc->tls_verify &&
	    streq_null(r->ca_file, rc->ca_file))
		return r->ssl_ctx;
	if ((ctx = tls_client_ctx_new(rc->ca_file, rc->tls_verify, err,
	    errlen)) == NULL)
		return NULL;
	tls_ctx_free(r->ssl_ctx);
	free(r->ca_file);
	r->ssl_ctx = ctx;
	r->ca_file = rc->ca_file != NULL ? xstrdup(rc->ca_file) : NULL;
	r->verify = rc->tls_verify;
	return ctx;
}

/* ---- credentials ---- */

static const char *
rc_port(const struct relay_config *rc)
{
	if (rc->port != NULL)
		return rc->port;
	return rc->tls == TLS_MODE_IMPLICIT ? "465" :
	    rc->tls == TLS_MODE_NONE ? "25" : "587";
}

void
relay_hostport(const struct relay_config *rc, char *buf, size_t len)
{
	const char *host = rc->host != NULL ? rc->host : rc->name;

	if (strchr(host, ':') != NULL)
		snprintf(buf, len, "[%s]:%s", host, rc_port(rc));
	else
		snprintf(buf, len, "%s:%s", host, rc_port(rc));
}

static int
ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void
cred_query_free(struct cred_query *q)
{
	size_t i;

	free(q->name);
	free(q->hostport);
	free(q->host);
	free(q->port);
	free(q->user);
	for (i = 0; i < q->nfiles; i++)
		free(q->files[i]);
	free(q->files);
	free(q->password_command);
	free(q->oauth_command);
	free(q->mechanisms);
	memset(q, 0, sizeof(*q));
}

static char *
strdup_null(const char *s)
{
	return s != NULL ? xstrdup(s) : NULL;
}

static void
cred_query_init(struct cred_query *q, const struct config *cfg,
    const struct relay_config *rc)
{
	char hp[600];
	size_t i, len = 0;

	memset(q, 0, sizeof(*q));
	relay_hostport(rc, hp, sizeof(hp));
	q->name = xstrdup(rc->name);
	q->hostport = xstrdup(hp);
	q->host = xstrdup(rc->host);
	q->port = xstrdup(rc_port(rc));
	q->user = rc->user != NULL && *rc->user != '\0' ? xstrdup(rc->user) :
	    NULL;
	q->nfiles = cfg->nauthinfo;
	q->files = xcalloc(q->nfiles + 1, sizeof(*q->files));
	for (i = 0; i < q->nfiles; i++)
		q->files[i] = xstrdup(cfg->authinfo[i]);
	q->password_command = strdup_null(rc->password_command);
	q->oauth_command = strdup_null(rc->oauth_command);
	if (rc->nmechanisms > 0) {
		for (i = 0; i < rc->nmechanisms; i++)
			len += strlen(rc->mechanisms[i]) + 1;
		q->mechanisms = xcalloc(1, len + 1);
		for (i = 0; i < rc->nmechanisms; i++) {
			if (i > 0)
				strcat(q->mechanisms, " ");
			strcat(q->mechanisms, rc->mechanisms[i]);
		}
	}
}

static void
cred_result_clear(struct cred_result *res)
{
	free(res->login);
	xfree_secret_str(res->secret);
	free(res->mechanisms);
	free(res->file);
	res->login = res->secret = res->mechanisms = res->file = NULL;
}

/* Runs on the worker thread with the cache's mutex held (see authinfo.h):
 * warnings carry file and line only, never a token. */
static void
cred_warn(const char *file, unsigned line, const char *msg, void *arg)
{
	log_warnx("%s:%u: %s", file, line, msg);
}

/* With gpg_mtx held: the record of path, made on first use. */
static struct gpg_file *
gpg_get(struct relay *r, const char *path)
{
	struct gpg_file *g;
	size_t i;

	for (i = 0; i < r->ngpg; i++)
		if (strcmp(r->gpg[i].path, path) == 0)
			return &r->gpg[i];
	r->gpg = xreallocarray(r->gpg, r->ngpg + 1, sizeof(*r->gpg));
	g = &r->gpg[r->ngpg++];
	memset(g, 0, sizeof(*g));
	g->path = xstrdup(path);
	g->flushes = atomic_load(&r->gpg_flushes);
	return g;
}

/* With gpg_mtx held: notices a change of g's file (then its decrypted
 * entries are dropped and gpg_gen grows). */
static void
gpg_stat(struct relay *r, struct gpg_file *g)
{
	struct stat st;
	int present = stat(g->path, &st) == 0;
	unsigned long flushes = atomic_load(&r->gpg_flushes);

	if (flushes != g->flushes) {
		g->flushes = flushes;
		g->present = -1;	/* whatever it is now, it is news */
	}
	if (present == g->present && (!present || (st.st_dev == g->dev &&
	    st.st_ino == g->ino && st.st_size == g->size &&
	    st.st_mtim.tv_sec == g->mtime.tv_sec &&
	    st.st_mtim.tv_nsec == g->mtime.tv_nsec &&
	    st.st_ctim.tv_sec == g->ctime.tv_sec &&
	    st.st_ctim.tv_nsec == g->ctime.tv_nsec)))
		return;
	r->gpg_gen++;
	g->present = present;
	g->decrypted = 0;
	authinfo_free(g->ai);
	g->ai = NULL;
	g->err[0] = '\0';
	if (present) {
		g->dev = st.st_dev;
		g->ino = st.st_ino;
		g->size = st.st_size;
		g->mtime = st.st_mtim;
		g->ctime = st.st_ctim;
	}
}

/*
 * On a worker thread: looks host/port/user up in an encrypted file,
 * decrypting it with gpg when it is new or changed. A file that gpg cannot
 * decrypt (no key, no agent) is passed over with a warning, and its reason
 * goes to note: the later files may still have the answer.
 */
static void
gpg_lookup(struct relay *r, const char *path, const struct cred_query *q,
    struct authinfo_entry **out, char *note, size_t notelen)
{
	const char *argv[] = { "gpg", "--quiet", "--batch", "--no-tty",
		"--decrypt", path, NULL };
	const struct authinfo_entry *e;
	struct gpg_file *g;
	char *plain, err[256];
	size_t len;

	*out = NULL;
	pthread_mutex_lock(&r->gpg_mtx);
	g = gpg_get(r, path);
	gpg_stat(r, g);
	if (g->present && !g->decrypted) {
		g->decrypted = 1;
		if (secretcmd_exec(argv, SECRETCMD_TIMEOUT, &plain, &len, err,
		    sizeof(err)) == 0) {
			g->ai = authinfo_parse(plain, len, path, cred_warn,
			    NULL);
			xfree_secret(plain, len + 1);
		} else {
			snprintf(g->err, sizeof(g->err), "%s could not be "
			    "decrypted (gpg %s)", path, err);
			log_warnx("%s", g->err);
		}
	}
	if (g->present && g->ai != NULL) {
		if ((e = authinfo_match(g->ai, q->host, q->port, q->user)) !=
		    NULL)
			*out = authinfo_entry_dup(e);
	} else if (g->present && g->err[0] != '\0' &&
	    strlen(note) + strlen(g->err) + 3 < notelen) {
		strcat(note, "; ");
		strcat(note, g->err);
	}
	pthread_mutex_unlock(&r->gpg_mtx);
}

static unsigned long
cred_generation(struct relay *r)
{
	unsigned long g;

	pthread_mutex_lock(&r->gpg_mtx);
	g = r->gpg_gen;
	pthread_mutex_unlock(&r->gpg_mtx);
	return g + authinfo_cache_generation(r->cache);
}

/*
 * On a worker thread: the entry for q across the files in order, by the
 * rules of authinfo.h (the first match with a password, else the first
 * match). Returns 0 with *out (or NULL), or -1 with err when a file was
 * refused before such a match (its answer might have been the one).
 */
static int
cred_lookup(struct relay *r, const struct cred_query *q,
    struct authinfo_entry **out, char *note, size_t notelen, char *err,
    size_t errlen)
{
	struct authinfo_entry *e;
	const char *file;
	size_t i;

	*out = NULL;
	for (i = 0; i < q->nfiles && !authinfo_entry_complete(*out); i++) {
		file = q->files[i];
		if (ends_with(file, ".gpg"))
			gpg_lookup(r, file, q, &e, note, notelen);
		else if (authinfo_cache_lookup(r->cache, &file, 1, q->host,
		    q->port, q->user, &e, cred_warn, NULL, err, errlen) ==
		    -1) {
			authinfo_entry_free(*out);
			*out = NULL;
			return -1;
		}
		authinfo_entry_prefer(out, e);
	}
	return 0;
}

/* The files a "no entry" message names: those that exist or could. */
static void
cred_files_list(const struct cred_query *q, char *buf, size_t len,
    const char **add_to)
{
	size_t i, n = 0;

	buf[0] = '\0';
	*add_to = NULL;
	for (i = 0; i < q->nfiles; i++) {
		if (ends_with(q->files[i], ".gpg") &&
		    access(q->files[i], F_OK) == -1)
			continue;
		if (*add_to == NULL && !ends_with(q->files[i], ".gpg"))
			*add_to = q->files[i];
		if (n < len)
			n += (size_t)snprintf(buf + n, len - n, "%s%s",
			    n > 0 ? ", " : "", q->files[i]);
	}
	if (buf[0] == '\0')
		snprintf(buf, len, "(no credential file configured)");
}

/* The OAuth mechanisms of order, or the default OAuth order. */
static char *
oauth_order(const char *order)
{
	const char *names[SASL_MECH_MAX];
	char buf[128] = "";
	size_t n, i;
	int flags;

	if (order != NULL) {
		/* every known mechanism is "offered" here: only the filter
		 * by flags matters */
		n = sasl_choose_order(SASL_DEFAULT_ORDER " XOAUTH2 OAUTHBEARER",
		    order, 1, 1, names, SASL_MECH_MAX);
		for (i = 0; i < n; i++) {
			flags = sasl_mech_flags(names[i]);
			if (flags != -1 && (flags & SASL_MECH_TOKEN)) {
				if (buf[0] != '\0')
					strcat(buf, " ");
				strcat(buf, names[i]);
			}
		}
	}
	return xstrdup(buf[0] != '\0' ? buf : "OAUTHBEARER XOAUTH2");
}

/*
 * On a worker thread: everything the session needs to authenticate, or
 * the reason it cannot, worded for the log (res->fix) and for the
 * recipients' deferral (res->reason).
 */
static void
cred_resolve(struct relay *r, const struct cred_query *q,
    struct cred_result *res)
{
	struct authinfo_entry *e = NULL;
	char err[512], cerr[256], note[1100] = "", files[512], who[300];
	const char *add_to, *password = NULL, *login;
	char *cmdout = NULL, *token = NULL;
	size_t cmdlen = 0, toklen = 0;

	memset(res, 0, sizeof(*res));
	if (cred_lookup(r, q, &e, note, sizeof(note), err, sizeof(err)) ==
	    -1) {
		res->status = CRED_ERROR;
		snprintf(res->reason, sizeof(res->reason), "%s", err);
		snprintf(res->fix, sizeof(res->fix), "relay %s needs "
		    "credentials: %s", q->hostport, err);
		goto out;
	}
	if (e != NULL) {
		res->file = xstrdup(e->file);
		res->line = e->line;
	}
	if (q->password_command != NULL) {
		if (secretcmd_shell(q->password_command, SECRETCMD_TIMEOUT,
		    &cmdout, &cmdlen, cerr, sizeof(cerr)) == -1) {
			res->status = CRED_ERROR;
			snprintf(res->reason, sizeof(res->reason),
			    "password_command of relay %s failed: %s", q->name,
			    cerr);
			snprintf(res->fix, sizeof(res->fix), "relay %s needs "
			    "credentials: password_command of relay %s failed: "
			    "%s", q->hostport, q->name, cerr);
			goto out;
		}
		password = cmdout;
		res->from_command = 1;
	} else if (e != NULL && authinfo_is_gpg_token(e->password)) {
		if (secretcmd_gpg_token(e->password, &cmdout, &cmdlen, cerr,
		    sizeof(cerr)) == -1) {
			res->status = CRED_ERROR;
			snprintf(res->reason, sizeof(res->reason), "the gpg: "
			    "token at %s:%u could not be decrypted: %s",
			    e->file, e->line, cerr);
			snprintf(res->fix, sizeof(res->fix), "relay %s needs "
			    "credentials: the password at %s:%u is a gpg: "
			    "token that could not be decrypted (%s); the key "
			    "must be usable without a prompt, as for "
			    "encrypted files", q->hostport, e->file, e->line,
			    cerr);
			goto out;
		}
		password = cmdout;
	} else if (e != NULL)
		password = e->password;
	if (q->oauth_command != NULL) {
		if (secretcmd_shell(q->oauth_command, SECRETCMD_TIMEOUT,
		    &token, &toklen, cerr, sizeof(cerr)) == -1) {
			res->status = CRED_ERROR;
			snprintf(res->reason, sizeof(res->reason),
			    "oauth_command of relay %s failed: %s", q->name,
			    cerr);
			snprintf(res->fix, sizeof(res->fix), "relay %s needs "
			    "credentials: oauth_command of relay %s failed: %s",
			    q->hostport, q->name, cerr);
			goto out;
		}
		/* An account with oauth_command is an OAuth account: only
		 * the token mechanisms are tried (oauth_order()) and a
		 * password next to it is not used. Offering the token to a
		 * password mechanism would send it as a password, and the
		 * providers that issue tokens refuse passwords anyway. */
		password = token;
		res->from_command = 1;
	}
	login = e != NULL && e->login != NULL ? e->login : q->user;
	if (login == NULL && q->oauth_command != NULL)
		login = "";	/* OAUTHBEARER goes without */

	if (password != NULL && login != NULL) {
		res->status = CRED_OK;
		res->login = xstrdup(login);
		res->secret = xstrdup(password);
		if (q->oauth_command != NULL)
			res->mechanisms = oauth_order(q->mechanisms);
		else if (q->mechanisms != NULL)
			res->mechanisms = xstrdup(q->mechanisms);
		else if (e != NULL && e->smtp_auth != NULL)
			res->mechanisms = xstrdup(e->smtp_auth);
		goto out;
	}
	if (e != NULL) {
		snprintf(who, sizeof(who), "%s entry at %s:%u",
		    e->is_default ? "the default" : "the", e->file, e->line);
		res->status = CRED_INCOMPLETE;
		if (password == NULL) {
			snprintf(res->reason, sizeof(res->reason),
			    "no password in the credentials at %s:%u",
			    e->file, e->line);
			snprintf(res->fix, sizeof(res->fix), "relay %s needs "
			    "credentials: %s has no password; add \"password "
			    "SECRET\" to it, or run: smarthostctl login %s",
			    q->hostport, who, q->hostport);
		} else {
			snprintf(res->reason, sizeof(res->reason), "no login "
			    "in the credentials at %s:%u", e->file, e->line);
			snprintf(res->fix, sizeof(res->fix), "relay %s needs "
			    "credentials: %s has no login and relay %s names "
			    "no user; add \"login USER\" to it, or user = "
			    "\"USER\" to the relay", q->hostport, who,
			    q->name);
		}
		goto out;
	}
	res->status = CRED_NONE;
	cred_files_list(q, files, sizeof(files), &add_to);
	snprintf(res->reason, sizeof(res->reason), "no credentials for "
	    "machine %s port %s%s%s in %s", q->host, q->port,
	    q->user != NULL ? " login " : "", q->user != NULL ? q->user : "",
	    files);
	snprintf(res->fix, sizeof(res->fix), "relay %s needs credentials: no "
	    "entry for machine %s port %s%s%s in %s; add a line \"machine %s "
	    "port %s login %s password SECRET\"%s%s (chmod 600), or run: "
	    "smarthostctl login %s%s", q->hostport, q->host, q->port,
	    q->user != NULL ? " login " : "", q->user != NULL ? q->user : "",
	    files, q->host, q->port, q->user != NULL ? q->user : "USER",
	    add_to != NULL ? " to " : "", add_to != NULL ? add_to : "",
	    q->hostport, note);
out:
	res->gen = cred_generation(r);
	authinfo_entry_free(e);
	if (cmdout != NULL)
		xfree_secret(cmdout, cmdlen + 1);
	if (token != NULL)
		xfree_secret(token, toklen + 1);
}

void
relay_credentials_flush(struct relay *r)
{
	authinfo_cache_flush(r->cache);
	atomic_fetch_add(&r->gpg_flushes, 1);
}

static void
check_work(void *arg)
{
	struct check_job *j = arg;
	struct authinfo_entry *e = NULL, *found;
	struct gpg_file *g;
	const char *file;
	char err[512];
	size_t i;

	/* the same walk as a lookup, but *.gpg files are only stat'ed:
	 * running gpg every few seconds could prompt or hang */
	for (i = 0; i < j->q.nfiles; i++) {
		file = j->q.files[i];
		if (ends_with(file, ".gpg")) {
			pthread_mutex_lock(&j->r->gpg_mtx);
			g = gpg_get(j->r, file);
			gpg_stat(j->r, g);
			pthread_mutex_unlock(&j->r->gpg_mtx);
			continue;
		}
		if (authinfo_entry_complete(e))
			continue;
		if (authinfo_cache_lookup(j->r->cache, &file, 1, j->q.host,
		    j->q.port, j->q.user, &found, cred_warn, NULL, err,
		    sizeof(err)) == -1)
			break;
		authinfo_entry_prefer(&e, found);
	}
	authinfo_entry_free(e);
	j->gen = cred_generation(j->r);
}

static void
check_done(void *arg)
{
	struct check_job *j = arg;
	struct relay *r = j->r;
	int changed;

	if (!relay_release(r)) {
		changed = j->gen != r->cred_gen;
		r->cred_gen = j->gen;
		j->done(changed, j->arg);
	}
	cred_query_free(&j->q);
	free(j);
}

void
relay_credentials_check(struct relay *r, const struct config *cfg,
    const struct relay_config *rc, void (*done)(int changed, void *arg),
    void *arg)
{
	struct check_job *j;

	j = xcalloc(1, sizeof(*j));
	j->r = r;
	j->done = done;
	j->arg = arg;
	cred_query_init(&j->q, cfg, rc);
	relay_hold(r);
	worker_run(r->w, check_work, check_done, j);
}

/* ---- log lines and outcome text ---- */

static const char *
rcpt_status_word(enum rcpt_status status)
{
	switch (status) {
	case RCPT_PENDING:
		return "deferred";
	case RCPT_SENT:
		return "sent";
	case RCPT_FAILED:
		return "bounced";
	}
	return "deferred";
}

void
relay_outcome_text(const struct outcome *o, char *buf, size_t len)
{
	const char *prefix = "";
	size_t n, i;

	if (len == 0)
		return;
	if (o->class == OC_TLS && strncmp(o->text, "TLS:", 4) != 0)
		prefix = "TLS: ";
	if (o->text[0] == '\0')
		snprintf(buf, len, "%s%s failure", prefix,
		    outcome_class_name(o->class));
	else
		snprintf(buf, len, "%s%s", prefix, o->text);
	/* Multi-line replies are joined with '\n': one line for logs. */
	n = strlen(buf);
	for (i = 0; i < n; i++)
		if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
			buf[i] = ' ';
}

/* The dsn= code of o, made 4.x.x when the recipient stays pending. */
static void
outcome_dsn(const struct outcome *o, enum rcpt_status status, char *buf,
    size_t len)
{
	snprintf(buf, len, "%s", outcome_dsn_code(o));
	if (status == RCPT_PENDING && buf[0] == '5')
		buf[0] = '4';
}

/*
 * A permanent outcome fails a recipient only when it is about the message:
 * a server's 5xx, or the client's own refusal to send it (an address unfit
 * for the command line). Permanent-looking trouble with the relay itself
 * (DNS, TLS, credentials) is for an operator to fix, so it defers.
 */
static enum rcpt_status
outcome_rcpt_status(const struct outcome *o)
{
	switch (o->status) {
	case OUTCOME_OK:
		return RCPT_SENT;
	case OUTCOME_PERMANENT:
		switch (o->class) {
		case OC_REPLY:
		case OC_LOCAL:
		case OC_PROTOCOL:
			return RCPT_FAILED;
		case OC_NONE:
		case OC_DNS:
		case OC_CONNECT:
		case OC_TLS:
		case OC_TIMEOUT:
		case OC_AUTH:
		case OC_NOCRED:
		case OC_AUTH_RETRY:
		case OC_EXPIRED:
		case OC_RESOURCE:
		case OC__COUNT:
			break;
		}
		return RCPT_PENDING;
	case OUTCOME_TEMPORARY:
		return RCPT_PENDING;
	}
	return RCPT_PENDING;
}

void
relay_log_rcpt(const struct envelope *env, size_t idx, const char *relay,
    const char *status, const char *text)
{
	const struct envelope_rcpt *r = &env->rcpts[idx];
	const char *dsn = r->dsn[0] != '\0' ? r->dsn : "4.0.0";
	struct log_fields f = { env->id, relay, status, dsn };
	struct timespec ts;
	double delay;

	clock_gettime(CLOCK_REALTIME, &ts);
	delay = (double)(ts.tv_sec - env->created) + ts.tv_nsec / 1e9;
	if (delay < 0)
		delay = 0;
	if (text == NULL)
		text = r->reply != NULL ? r->reply : "";
	log_msg(LOG_INFO, &f, "%s: to=<%s>, relay=%s, delay=%.1f, dsn=%s, "
	    "status=%s (%s)", env->id, r->addr, relay, delay, dsn, status,
	    text);
	metrics_rcpt(relay, status, delay);
}

void
relay_defer_all(struct envelope *env, const char *relay,
    const struct outcome *o)
{
	char text[OUTCOME_TEXT_MAX + 8], dsn[16];
	size_t i;

	relay_outcome_text(o, text, sizeof(text));
	outcome_dsn(o, RCPT_PENDING, dsn, sizeof(dsn));
	for (i = 0; i < env->nrcpts; i++) {
		if (env->rcpts[i].status != RCPT_PENDING)
			continue;
		envelope_set_rcpt(env, i, RCPT_PENDING, dsn, text);
		relay_log_rcpt(env, i, relay, "deferred", NULL);
	}
}

/* ---- the message in flight ---- */

/* Collects env's pending recipients; returns how many. */
static size_t
txn_begin(struct relay_session *rs, struct envelope *env)
{
	size_t i, n = 0;

	for (i = 0; i < env->nrcpts; i++)
		if (env->rcpts[i].status == RCPT_PENDING)
			n++;
	if (n == 0)
		return 0;
	rs->rcpts = xcalloc(n, sizeof(*rs->rcpts));
	rs->addrs = xcalloc(n, sizeof(*rs->addrs));
	for (i = 0, n = 0; i < env->nrcpts; i++) {
		if (env->rcpts[i].status != RCPT_PENDING)
			continue;
		rs->rcpts[n].idx = i;
		rs->rcpts[n].state = TR_WAITING;
		rs->addrs[n] = env->rcpts[i].addr;
		n++;
	}
	rs->n = n;
	rs->env = env;
	return n;
}

static void
txn_clear(struct relay_session *rs)
{
	size_t i;

	for (i = 0; i < rs->n; i++)
		free(rs->rcpts[i].reply);
	free(rs->rcpts);
	free(rs->addrs);
	rs->rcpts = NULL;
	rs->addrs = NULL;
	rs->n = 0;
	if (rs->fd != -1)
		close(rs->fd);
	rs->fd = -1;
	free(rs->mem);
	rs->mem = NULL;
	rs->env = NULL;
}

static void
txn_settle(struct txn_rcpt *t, const struct outcome *o, int broken)
{
	char text[OUTCOME_TEXT_MAX + 8];

	t->state = TR_SETTLED;
	t->status = broken ? RCPT_PENDING : outcome_rcpt_status(o);
	outcome_dsn(o, t->status, t->dsn, sizeof(t->dsn));
	relay_outcome_text(o, text, sizeof(text));
	free(t->reply);
	t->reply = xstrdup(text);
}

/*
 * Ends the transaction: recipients not settled by their RCPT reply take
 * final's (pending whatever it says when the session broke), everything is
 * written into the envelope and logged, and delivered() runs.
 */
static void
txn_finish(struct relay_session *rs, const struct outcome *final, int broken)
{
	struct envelope *env = rs->env;
	const char *relay = relay_session_peer(rs);
	struct outcome ok;
	size_t i;

	for (i = 0; i < rs->n; i++) {
		struct txn_rcpt *t = &rs->rcpts[i];

		if (t->state == TR_WAITING && final->status == OUTCOME_OK &&
		    !broken) {
			struct outcome none;

			/* The client promised a reply per RCPT. */
			outcome_set(&none, OUTCOME_TEMPORARY, OC_PROTOCOL,
			    "no reply to RCPT TO");
			txn_settle(t, &none, 0);
		} else if (t->state != TR_SETTLED)
			txn_settle(t, final, broken);
		envelope_set_rcpt(env, t->idx, t->status, t->dsn, t->reply);
		relay_log_rcpt(env, t->idx, relay, rcpt_status_word(t->status),
		    NULL);
	}
	txn_clear(rs);
	if (broken) {
		rs->cb->delivered(rs, env, final, rs->arg);
		return;
	}
	outcome_set(&ok, OUTCOME_OK, OC_NONE, "transaction complete");
	rs_set_state(rs, RS_RESETTING);
	rs->cb->delivered(rs, env, &ok, rs->arg);
}

/* ---- smtp_client callbacks ---- */

/* Logs once per session what to do about missing credentials. */
static void
rs_log_fix(struct relay_session *rs)
{
	if (rs->fix_logged)
		return;
	rs->fix_logged = 1;
	if (rs->auth == AUTH_POLICY_NEVER)
		log_warnx("relay %s requires authentication, but relay %s "
		    "has auth = \"never\"", rs->hostport, rs->name);
	else if (rs->cred_fix != NULL)
		log_warnx("%s", rs->cred_fix);
	else
		log_warnx("relay %s requires authentication and no "
		    "credentials are configured", rs->hostport);
}

/*
 * A transaction met missing (or refused) credentials: its recipients are
 * deferred as usual, and then the session ends with o instead of taking
 * the next message, so that the scheduler backs the relay off.
 */
static void
rs_fail_after(struct relay_session *rs, const struct outcome *o)
{
	if (o->class == OC_NOCRED)
		rs_log_fix(rs);
	if (rs->have_fail_after)
		return;
	rs->fail_after = *o;
	rs->fail_after.status = OUTCOME_TEMPORARY;
	rs->have_fail_after = 1;
}

/* The connection became ready: says how (TLS, and whether the session
 * was resumed) and counts it. */
static void
rs_connected(struct relay_session *rs)
{
	const SSL *ssl = smtp_client_ssl(rs->client);
	int resumed = tls_session_reused(ssl);
	char desc[128];

	metrics_relay_connection(rs->name, resumed);
	if (ssl != NULL)
		log_info("relay=%s connected, %s, %s", relay_session_peer(rs),
		    tls_describe(ssl, desc, sizeof(desc)), resumed ?
		    "session resumed" : "full handshake");
	else
		log_debug("relay=%s connected, no TLS",
		    relay_session_peer(rs));
}

static void
client_ready(struct smtp_client *c, void *arg)
{
	struct relay_session *rs = arg;

	if (rs->state == RS_CONNECTING)
		rs_connected(rs);
	if (rs->have_fail_after) {
		rs_set_state(rs, RS_QUITTING);
		smtp_client_quit(c);
		return;
	}
	rs_set_state(rs, RS_READY);
	rs->cb->ready(rs, rs->arg);
}

static void
client_auth_required(struct smtp_client *c, void *arg)
{
	struct relay_session *rs = arg;

	if (rs->auth == AUTH_POLICY_NEVER || rs->relay->as == NULL)
		return;
	authstate_learn(rs->relay->as, rs->host, rs->port);
}

static void
client_authenticated(struct smtp_client *c, const char *mech, void *arg)
{
	struct relay_session *rs = arg;

	log_info("relay=%s authenticated as %s with %s",
	    relay_session_peer(rs), rs->login != NULL ? rs->login : "", mech);
}

/* Says how to fix rejected credentials (never the secret). */
static void
rs_log_auth_failure(struct relay_session *rs, const struct outcome *o)
{
	char text[OUTCOME_TEXT_MAX + 8];

	relay_outcome_text(o, text, sizeof(text));
	if (strncmp(o->text, "authentication failed:", 22) != 0)
		log_warnx("authentication to %s failed: %s", rs->hostport,
		    text);
	else if (rs->cred_from_command)
		log_warnx("authentication to %s failed: %s; fix the "
		    "password_command or oauth_command of relay %s",
		    rs->hostport, text, rs->name);
	else if (rs->cred_file != NULL)
		log_warnx("authentication to %s failed: %s; fix the "
		    "credentials in %s line %u or run smarthostctl login %s",
		    rs->hostport, text, rs->cred_file, rs->cred_line,
		    rs->hostport);
	else
		log_warnx("authentication to %s failed: %s; fix the "
		    "credentials or run smarthostctl login %s", rs->hostport,
		    text, rs->hostport);
}

static void
client_rcpt(struct smtp_client *c, size_t idx, const struct outcome *o,
    void *arg)
{
	struct relay_session *rs = arg;

	if (rs->state != RS_SENDING || idx >= rs->n) {
		log_warnx("relay %s: reply for recipient %zu out of place",
		    rs->name, idx);
		return;
	}
	if (o->status == OUTCOME_OK)
		rs->rcpts[idx].state = TR_ACCEPTED;
	else
		txn_settle(&rs->rcpts[idx], o, 0);
	if (o->class == OC_NOCRED)
		rs_fail_after(rs, o);
}

static void
client_done(struct smtp_client *c, const struct outcome *o, void *arg)
{
	struct relay_session *rs = arg;

	if (rs->state != RS_SENDING) {
		log_warnx("relay %s: transaction end out of place", rs->name);
		return;
	}
	if (o->class == OC_NOCRED || o->class == OC_AUTH)
		rs_fail_after(rs, o);
	txn_finish(rs, o, 0);
}

/*
 * The reused connection broke before the server said anything about the
 * message in flight (smtp_client_stale()): the envelope is handed back
 * untouched, nothing logged per recipient, and the owner decides whether
 * it goes again at once. Like a close while idle, this says nothing about
 * the relay, so closed() then follows with OUTCOME_OK.
 */
static void
rs_unsent(struct relay_session *rs, const struct outcome *o)
{
	struct envelope *env = rs->env;

	log_debug("relay %s: reused connection gone before a reply: %s",
	    rs->name, o->text);
	txn_clear(rs);
	rs_set_state(rs, RS_CLOSED);
	rs->cb->unsent(rs, env, o, rs->arg);
}

static void
client_closed(struct smtp_client *c, const struct outcome *o, void *arg)
{
	struct relay_session *rs = arg;
	struct outcome broke, ok;

	if (o->class == OC_AUTH && o->status != OUTCOME_OK)
		rs_log_auth_failure(rs, o);
	else if (o->class == OC_AUTH_RETRY && o->status != OUTCOME_OK)
		log_info("relay %s demanded authentication and closed the "
		    "connection; the message is retried at once with AUTH "
		    "first", rs->hostport);
	else if (o->class == OC_NOCRED && o->status != OUTCOME_OK)
		rs_log_fix(rs);
	switch (rs->state) {
	case RS_SENDING:
		if (smtp_client_stale(c)) {
			rs_unsent(rs, o);
			outcome_set(&ok, OUTCOME_OK, OC_NONE, "reused "
			    "connection gone");
			o = &ok;
			break;
		}
		if (o->status == OUTCOME_OK) {
			outcome_set(&broke, OUTCOME_TEMPORARY, OC_PROTOCOL,
			    "connection closed during the transaction");
			o = &broke;
		}
		rs_set_state(rs, RS_CLOSED);
		txn_finish(rs, o, 1);
		break;
	case RS_QUITTING:
		/* Everything was delivered: a messy QUIT says nothing about
		 * the relay's health. Missing credentials do. */
		if (o->status != OUTCOME_OK)
			log_debug("relay %s: after QUIT: %s", rs->name,
			    o->text);
		outcome_set(&ok, OUTCOME_OK, OC_NONE, "closed");
		o = rs->have_fail_after ? &rs->fail_after : &ok;
		break;
	case RS_IDLE:
		/* The server's own idle timeout, a 421, a restart: nothing
		 * was in flight, and it says nothing about the relay. */
		log_debug("relay %s: idle connection closed: %s", rs->name,
		    o->text);
		outcome_set(&ok, OUTCOME_OK, OC_NONE, "closed while idle");
		o = &ok;
		break;
	case RS_CONNECTING:
	case RS_READY:
	case RS_RESETTING:
	case RS_CLOSED:
	case RS__COUNT:
		break;
	}
	rs_set_state(rs, RS_CLOSED);
	rs->cb->closed(rs, o, rs->arg);
}

static const struct smtp_client_cb client_cb = {
	.ready = client_ready,
	.rcpt = client_rcpt,
	.done = client_done,
	.closed = client_closed,
	.auth_required = client_auth_required,
	.authenticated = client_authenticated,
};

/* ---- maildir ---- */

static void
maildir_work(void *arg)
{
	struct maildir_job *job = arg;

	if (maildir_deliver(job->path, job->fd, job->offset, job->size,
	    job->hostname, job->file, sizeof(job->file), job->err,
	    sizeof(job->err)) == -1)
		job->error = errno != 0 ? errno : EIO;
}

static void
maildir_job_free(struct maildir_job *job)
{
	if (job->fd != -1)
		close(job->fd);
	free(job->path);
	free(job->hostname);
	free(job);
}

static void
maildir_done(void *arg)
{
	struct maildir_job *job = arg;
	struct relay_session *rs = job->rs;
	struct outcome o;
	size_t i;

	if (rs == NULL) {
		maildir_job_free(job);
		return;
	}
	rs->job = NULL;
	if (job->error == 0)
		outcome_set(&o, OUTCOME_OK, OC_NONE,
		    "delivered to maildir as %s", job->file);
	else {
		outcome_set(&o, OUTCOME_TEMPORARY, OC_LOCAL, "maildir: %s",
		    job->err);
		/* RFC 3463: 4.3.1 is "mail system full". */
		if (job->error == ENOSPC || job->error == EDQUOT)
			snprintf(o.enhanced, sizeof(o.enhanced), "4.3.1");
	}
	maildir_job_free(job);
	for (i = 0; i < rs->n; i++)
		txn_settle(&rs->rcpts[i], &o, 0);
	txn_finish(rs, &o, 0);
	rs_set_state(rs, RS_READY);
	rs->cb->ready(rs, rs->arg);
}

static int
maildir_send(struct relay_session *rs, struct envelope *env)
{
	struct maildir_job *job;

	job = xcalloc(1, sizeof(*job));
	job->rs = rs;
	job->fd = rs->fd;	/* the job owns it from now on */
	rs->fd = -1;
	job->offset = env->body_offset;
	job->size = env->body_size;
	job->path = xstrdup(rs->maildir);
	job->hostname = xstrdup(rs->hostname);
	rs->job = job;
	rs_set_state(rs, RS_SENDING);
	worker_run(rs->relay->w, maildir_work, maildir_done, job);
	return 0;
}

/* ---- sessions ---- */

static void
rs_set_state(struct relay_session *rs, enum rs_state state)
{
	if (rs->state == state)
		return;
	log_debug("relay %s: session %s -> %s", rs->name,
	    rs_state_names[rs->state], rs_state_names[state]);
	rs->state = state;
}

static void
rs_connect(struct relay_session *rs, const struct smtp_client_auth *auth)
{
	struct smtp_client_params p;
	struct outcome ok;

	memset(&p, 0, sizeof(p));
	p.host = rs->host;
	p.port = rs->port;
	p.tls = rs->tls;
	p.ssl_ctx = rs->ssl_ctx;
	p.helo = rs->helo;
	p.timeout_connect = rs->timeout_connect;
	p.timeout_command = rs->timeout_command;
	p.timeout_data = rs->timeout_data;
	p.line_limit = rs->line_limit;
	p.worker = rs->relay->w;
	rs->client = smtp_client_new(rs->relay->base, rs->relay->dns, &p,
	    &client_cb, rs);
	if (rs->client == NULL) {
		outcome_set(&ok, OUTCOME_TEMPORARY, OC_LOCAL,
		    "cannot create an SMTP session");
		rs_set_state(rs, RS_CLOSED);
		rs->cb->closed(rs, &ok, rs->arg);
		return;
	}
	if (auth != NULL)
		smtp_client_set_auth(rs->client, auth);
	/* Whatever comes next, including failure, comes through callbacks. */
	smtp_client_connect(rs->client);
}

static void
cred_job_free(struct cred_job *j)
{
	cred_query_free(&j->q);
	cred_result_clear(&j->res);
	OPENSSL_cleanse(&j->res, sizeof(j->res));
	free(j);
}

static void
cred_work(void *arg)
{
	struct cred_job *j = arg;

	cred_resolve(j->r, &j->q, &j->res);
}

/*
 * On the loop: the lookup is done. Authenticate first, or keep the
 * credentials for a demand, or (first, but nothing to authenticate with)
 * end the session before it connects.
 */
static void
cred_done(void *arg)
{
	struct cred_job *j = arg;
	struct relay_session *rs = j->rs;
	struct cred_result *res = &j->res;
	struct smtp_client_auth auth;
	struct outcome o;
	int first;

	if (relay_release(j->r) || rs == NULL) {
		cred_job_free(j);
		return;
	}
	rs->cred_job = NULL;
	j->r->cred_gen = res->gen;
	first = rs->auth == AUTH_POLICY_ALWAYS || rs->auth_first_cfg ||
	    authstate_has(rs->relay->as, rs->host, rs->port);
	if (res->status != CRED_OK) {
		free(rs->cred_fix);
		rs->cred_fix = xstrdup(res->fix);
	}
	switch (res->status) {
	case CRED_OK:
		rs->login = xstrdup(res->login);
		rs->cred_file = res->file != NULL ? xstrdup(res->file) : NULL;
		rs->cred_line = res->line;
		rs->cred_from_command = res->from_command;
		memset(&auth, 0, sizeof(auth));
		auth.user = res->login;
		auth.secret = res->secret;
		auth.mechanisms = res->mechanisms;
		auth.allow_plaintext = rs->allow_plaintext;
		auth.first = first;
		log_debug("relay %s: credentials for %s from %s%s%u, %s",
		    rs->name, rs->hostport, res->file != NULL ? res->file :
		    "a command", res->file != NULL ? " line " : "",
		    res->file != NULL ? res->line : 0, first ?
		    "authenticating first" : "authenticating on demand");
		rs_connect(rs, &auth);
		break;
	case CRED_NONE:
	case CRED_INCOMPLETE:
	case CRED_ERROR:
		if (!first) {
			log_debug("relay %s: no usable credentials for %s; "
			    "going without AUTH", rs->name, rs->hostport);
			rs_connect(rs, NULL);
			break;
		}
		/* Trying without would only earn a 530, or worse, a ban:
		 * the mail waits for the credentials instead. */
		rs_log_fix(rs);
		outcome_set(&o, OUTCOME_TEMPORARY, OC_NOCRED, "%s",
		    res->reason);
		rs_set_state(rs, RS_CLOSED);
		rs->cb->closed(rs, &o, rs->arg);
		break;
	}
	cred_job_free(j);
}

static void
rs_start(struct relay_session *rs)
{
	struct cred_job *j;

	if (rs->start_failed) {
		rs_set_state(rs, RS_CLOSED);
		rs->cb->closed(rs, &rs->start_error, rs->arg);
		return;
	}
	if (rs->type == RELAY_TYPE_MAILDIR) {
		rs_set_state(rs, RS_READY);
		rs->cb->ready(rs, rs->arg);
		return;
	}
	if (rs->auth == AUTH_POLICY_NEVER || rs->query == NULL) {
		rs_connect(rs, NULL);
		return;
	}
	j = xcalloc(1, sizeof(*j));
	j->r = rs->relay;
	j->rs = rs;
	j->q = *rs->query;	/* the job owns the copies now */
	free(rs->query);
	rs->query = NULL;
	rs->cred_job = j;
	relay_hold(j->r);
	worker_run(j->r->w, cred_work, cred_done, j);
}

static void
rs_event(evutil_socket_t fd, short what, void *arg)
{
	struct relay_session *rs = arg;
	struct outcome ok;

	switch (rs->state) {
	case RS_CONNECTING:
		rs_start(rs);
		break;
	case RS_QUITTING:
		outcome_set(&ok, OUTCOME_OK, OC_NONE, "closed");
		rs_set_state(rs, RS_CLOSED);
		rs->cb->closed(rs, &ok, rs->arg);
		break;
	case RS_READY:
	case RS_IDLE:
	case RS_SENDING:
	case RS_RESETTING:
	case RS_CLOSED:
	case RS__COUNT:
		break;
	}
}

struct relay_session *
relay_session_new(struct relay *r, const struct config *cfg,
    const struct relay_config *rc, const struct relay_session_cb *cb,
    void *arg)
{
	struct relay_session *rs;
	const struct timeval now = { 0, 0 };
	char err[512];

	rs = xcalloc(1, sizeof(*rs));
	rs->state = RS_CONNECTING;
	rs->type = rc->type;
	rs->relay = r;
	rs->cb = cb;
	rs->arg = arg;
	rs->fd = -1;
	rs->name = xstrdup(rc->name);
	rs->hostname = xstrdup(cfg->hostname);
	rs->tls = rc->tls;
	rs->timeout_connect = rc->timeout_connect;
	rs->timeout_command = rc->timeout_command;
	rs->timeout_data = rc->timeout_data;
	rs->line_limit = rc->line_length_limit;
	switch (rc->type) {
	case RELAY_TYPE_SMTP:
		rs->host = xstrdup(rc->host);
		rs->port = xstrdup(rc->port != NULL ? rc->port :
		    rc->tls == TLS_MODE_IMPLICIT ? "465" :
		    rc->tls == TLS_MODE_NONE ? "25" : "587");
		rs->helo = xstrdup(rc->helo != NULL ? rc->helo :
		    cfg->hostname);
		relay_hostport(rc, rs->hostport, sizeof(rs->hostport));
		rs->auth = rc->auth;
		rs->allow_plaintext = rc->allow_plaintext_auth;
		rs->auth_first_cfg = rc->auth == AUTH_POLICY_AUTO &&
		    config_auth_first(cfg, rc->host);
		if (rc->auth != AUTH_POLICY_NEVER) {
			rs->query = xcalloc(1, sizeof(*rs->query));
			cred_query_init(rs->query, cfg, rc);
		}
		if (rc->tls != TLS_MODE_NONE) {
			SSL_CTX *ctx = relay_ssl_ctx(r, rc, err, sizeof(err));

			if (ctx == NULL) {
				rs->start_failed = 1;
				outcome_set(&rs->start_error,
				    OUTCOME_TEMPORARY, OC_TLS, "TLS: %s", err);
			} else {
				SSL_CTX_up_ref(ctx);
				rs->ssl_ctx = ctx;
			}
		}
		break;
	case RELAY_TYPE_MAILDIR:
		rs->maildir = xstrdup(rc->maildir);
		snprintf(rs->hostport, sizeof(rs->hostport), "maildir:%s",
		    rc->name);
		break;
	}
	if ((rs->ev = event_new(r->base, -1, 0, rs_event, rs)) == NULL)
		fatalx("%s: event_new", __func__);
	event_add(rs->ev, &now);
	return rs;
}

int
relay_session_send(struct relay_session *rs, struct envelope *env)
{
	struct smtp_client_msg msg;
	struct outcome o;
	int error;

	if (rs->state != RS_READY && rs->state != RS_IDLE)
		fatalx("%s: session is %s", __func__,
		    rs_state_names[rs->state]);
	if (txn_begin(rs, env) == 0) {
		errno = 0;
		return -1;	/* nothing pending: nothing to log */
	}
	if (rs->type == RELAY_TYPE_SMTP)
		rs->mem = queue_body_take(rs->relay->q, env);
	if (rs->mem == NULL &&
	    (rs->fd = queue_body_open(rs->relay->q, env)) == -1) {
		error = errno;
		txn_clear(rs);
		if (error != EMFILE && error != ENFILE) {
			outcome_set(&o, OUTCOME_TEMPORARY, OC_LOCAL,
			    "cannot open queue file: %s", strerror(error));
			relay_defer_all(env, relay_session_peer(rs), &o);
		}
		errno = error;
		return -1;
	}
	if (rs->type == RELAY_TYPE_MAILDIR)
		return maildir_send(rs, env);

	memset(&msg, 0, sizeof(msg));
	msg.sender = env->sender;
	msg.rcpts = rs->addrs;
	msg.nrcpts = rs->n;
	msg.body_fd = rs->fd;
	msg.body_mem = rs->mem;
	msg.body_offset = env->body_offset;
	msg.body_size = env->body_size;
	msg.eightbit = (env->flags & ENVELOPE_8BITMIME) != 0;
	msg.smtputf8 = (env->flags & ENVELOPE_SMTPUTF8) != 0;
	rs_set_state(rs, RS_SENDING);
	if (smtp_client_send(rs->client, &msg) == -1) {
		/*
		 * Cannot happen while the client says ready. Treat it as a
		 * broken session: the quit's closed() defers the message.
		 */
		log_warnx("relay %s: session refused a message", rs->name);
		smtp_client_quit(rs->client);
	}
	return 0;
}

void
relay_session_idle(struct relay_session *rs)
{
	if (rs->state != RS_READY)
		fatalx("%s: session is %s", __func__,
		    rs_state_names[rs->state]);
	rs_set_state(rs, RS_IDLE);
}

void
relay_session_quit(struct relay_session *rs)
{
	const struct timeval now = { 0, 0 };

	if (rs->state != RS_READY && rs->state != RS_IDLE)
		fatalx("%s: session is %s", __func__,
		    rs_state_names[rs->state]);
	rs_set_state(rs, RS_QUITTING);
	if (rs->type == RELAY_TYPE_MAILDIR)
		event_add(rs->ev, &now);
	else
		smtp_client_quit(rs->client);
}

void
relay_session_free(struct relay_session *rs)
{
	if (rs == NULL)
		return;
	smtp_client_free(rs->client);
	/* The worker may still be writing: the job frees itself. */
	if (rs->job != NULL)
		rs->job->rs = NULL;
	if (rs->cred_job != NULL)
		rs->cred_job->rs = NULL;
	if (rs->query != NULL) {
		cred_query_free(rs->query);
		free(rs->query);
	}
	free(rs->login);
	free(rs->cred_file);
	free(rs->cred_fix);
	txn_clear(rs);
	if (rs->ev != NULL)
		event_free(rs->ev);
	tls_ctx_free(rs->ssl_ctx);
	free(rs->name);
	free(rs->host);
	free(rs->port);
	free(rs->helo);
	free(rs->maildir);
	free(rs->hostname);
	free(rs);
}

const char *
relay_session_peer(const struct relay_session *rs)
{
	const char *p;

	/* The client's string lives as long as the client does. */
	if (rs->type == RELAY_TYPE_SMTP && rs->client != NULL &&
	    (p = smtp_client_peer(rs->client)) != NULL &&
	    strchr(p, '[') != NULL)
		return p;
	return rs->hostport;
}

const char *
relay_session_host(const struct relay_session *rs)
{
	return rs->type == RELAY_TYPE_SMTP ? rs->host : NULL;
}
