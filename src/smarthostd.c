/*
 * smarthostd: options, start-up order, signals and privilege drop. It wires
 * the modules together and holds no protocol logic.
 *
 * Start-up order matters: the config is read and checked first (so -t and a
 * broken file fail before anything is touched), sockets are bound while we
 * may still be root, the spool is opened and made ours, privileges are
 * dropped, the queue is loaded into the scheduler, and only then do we
 * accept connections and tell systemd we are ready.
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "ac-config.h"
#include "config.h"
#include "control.h"
#include "daemon.h"
#include "httpd.h"
#include "listener.h"
#include "log.h"
#include "maildrop.h"
#include "queue.h"
#include "scheduler.h"
#include "smtp_server.h"
#include "tls.h"
#include "worker.h"
#include "xmalloc.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define DEFAULT_CONFIG SYSCONFDIR "/smarthostd/smarthostd.conf"
/* Setting flags on one command line. */
#define MAX_OVERRIDES 64
/* Seconds between STATUS= updates to systemd. */
#define STATUS_INTERVAL 5

struct daemon_state {
	struct event_base *base;
	struct evdns_base *dns;
	struct config *cfg;
	struct config **retired; /* replaced by reload, freed at exit */
	size_t nretired;
	struct listeners *listeners;
	struct queue *queue;
	struct worker *worker;
	struct scheduler *scheduler;
	struct smtp_server *server;
	struct control *control;
	struct maildrop *maildrop;
	/* Settings from flags: applied over the file and the SMARTHOSTD_*
	 * variables at start and at every reload. */
	struct config_override ov[MAX_OVERRIDES];
	char origin[MAX_OVERRIDES][48]; /* "--relay", for messages */
	size_t nov;
	struct httpd *httpd;       /* metrics_listen, or NULL */
	int stopping;
};

static void
usage_print(FILE *f)
{
	size_t i;
	int w;

	fprintf(f,
	    "usage: smarthostd [-dhtV] [-c file] [--setting value ...]\n"
	    "  -c, --config FILE  the configuration file (default %s)\n"
	    "  -d, --debug        stay in the foreground, log debug lines\n"
	    "  -t, --test         check the configuration and exit\n"
	    "  -h, --help         this text\n"
	    "  -V, --version      the version\n"
	    "settings over the file (or without one), each also from its "
	    "variable:\n", DEFAULT_CONFIG);
	for (i = 0; config_options[i].key != NULL; i++) {
		w = fprintf(f, "  --%s %s", config_options[i].flag,
		    config_options[i].arg);
		fprintf(f, "%*s%s\n", w < 42 ? 42 - w : 1, "",
		    config_options[i].env);
	}
}

static void __attribute__((noreturn))
usage(void)
{
	usage_print(stderr);
	exit(EX_USAGE);
}

/* The long options: the fixed ones, then one per config_options entry
 * with val 256 + its index. The caller frees the table. */
static struct option *
long_options(void)
{
	static const struct option fixed[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "debug", no_argument, NULL, 'd' },
		{ "test", no_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
	};
	const size_t nfixed = sizeof(fixed) / sizeof(*fixed);
	struct option *lo;
	size_t i, n;

	for (n = 0; config_options[n].key != NULL; n++)
		;
	lo = xcalloc(nfixed + n + 1, sizeof(*lo));
	memcpy(lo, fixed, sizeof(fixed));
	for (i = 0; i < n; i++) {
		lo[nfixed + i].name = config_options[i].flag;
		lo[nfixed + i].has_arg = required_argument;
		lo[nfixed + i].val = 256 + (int)i;
	}
	return lo;
}

static void
queued_cb(struct envelope *env, void *arg)
{
	struct daemon_state *d = arg;

	scheduler_add(d->scheduler, env);
}

static void
found_cb(const char *id, void *arg)
{
	struct daemon_state *d = arg;

	scheduler_add_id(d->scheduler, id);
}

/*
 * Descriptors: the daemon needs one per session and connection, never one
 * per queued message, but a busy host runs many sessions: take the hard
 * limit, as the soft one is often a low default (1024).
 */
static void
nofile_raise(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1) {
		log_warn("getrlimit(RLIMIT_NOFILE)");
		return;
	}
	if (rl.rlim_cur == rl.rlim_max)
		return;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
		log_warn("setrlimit(RLIMIT_NOFILE)");
}

struct status_buf {
	char *buf;
	size_t len, off;
};

static void
status_relay(const struct scheduler_relay_state *st, void *arg)
{
	struct status_buf *sb = arg;
	int n;

	if (sb->off >= sb->len)
		return;
	n = snprintf(sb->buf + sb->off, sb->len - sb->off, "; relay %s %s",
	    st->name, st->state);
	if (n > 0)
		sb->off += (size_t)n;
	if (sb->off < sb->len && st->backoff_until > time(NULL)) {
		n = snprintf(sb->buf + sb->off, sb->len - sb->off,
		    " (backoff %llds)",
		    (long long)(st->backoff_until - time(NULL)));
		if (n > 0)
			sb->off += (size_t)n;
	}
}

/* systemd's STATUS=: "3 queued; relay main up; relay backup down (backoff
 * 120s)". */
static void
status_fill(char *buf, size_t len, void *arg)
{
	struct daemon_state *d = arg;
	struct status_buf sb = { buf, len, 0 };
	size_t n = scheduler_count(d->scheduler);
	int w;

	w = snprintf(buf, len, "%zu queued", n);
	if (w > 0)
		sb.off = (size_t)w;
	scheduler_relays(d->scheduler, status_relay, &sb);
}

/* Settings that only take effect at start. */
static int
same_string(const char *a, const char *b)
{
	return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

static void
reload_warn_static(const struct config *old, const struct config *cfg)
{
	int same = old->nlisten == cfg->nlisten;
	size_t i;

	for (i = 0; same && i < cfg->nlisten; i++) {
		const struct listen_config *a = &old->listen[i];
		const struct listen_config *b = &cfg->listen[i];

		same = a->kind == b->kind &&
		    (a->address == NULL) == (b->address == NULL) &&
		    (a->address == NULL || strcmp(a->address, b->address) == 0) &&
		    (a->port == NULL || strcmp(a->port, b->port) == 0) &&
		    (a->path == NULL || strcmp(a->path, b->path) == 0);
	}
	if (!same)
		log_warnx("reload: listen changes take effect at restart");
	if (strcmp(old->spool, cfg->spool) != 0)
		log_warnx("reload: spool changes take effect at restart");
	if (strcmp(old->maildrop, cfg->maildrop) != 0 ||
	    strcmp(old->maildrop_group, cfg->maildrop_group) != 0)
		log_warnx("reload: maildrop changes take effect at restart");
	if (!same_string(old->control_admin_group,
	    cfg->control_admin_group) ||
	    !same_string(old->control_read_group, cfg->control_read_group))
		log_warnx("reload: control group changes take effect at "
		    "restart");
	if (!same_string(old->metrics_address, cfg->metrics_address) ||
	    old->metrics_port != cfg->metrics_port)
		log_warnx("reload: metrics_listen changes take effect at "
		    "restart");
}

/* The gid of a control group setting into *gid, and gid; NULL when the
 * setting is unset. A group that does not exist is refused: a typo must
 * not lock the administrators out silently, nor let anyone in. */
static const gid_t *
control_gid(const struct config *cfg, const char *setting, const char *name,
    gid_t *gid)
{
	struct group *gr;

	if (name == NULL)
		return NULL;
	if ((gr = getgrnam(name)) == NULL)
		fatalx_code(EX_CONFIG, "%s: %s \"%s\": no such group",
		    cfg->file != NULL ? cfg->file : "settings", setting, name);
	*gid = gr->gr_gid;
	return gid;
}

/* SIGHUP and smarthostctl reload: 0, or -1 with the reason in err. */
static int
reload(void *arg, char *err, size_t errlen)
{
	struct daemon_state *d = arg;
	const char *file;
	struct config *cfg;

	daemon_reloading();
	log_info("reloading %s", d->cfg->file != NULL ? d->cfg->file :
	    "the settings (no file)");
	if ((cfg = config_load_default(d->cfg->file, DEFAULT_CONFIG, d->ov,
	    d->nov, &file, err, errlen)) == NULL) {
		log_warnx("reload failed, keeping the running config: %s",
		    err);
		daemon_ready("reload failed; running with the old config");
		return -1;
	}
	reload_warn_static(d->cfg, cfg);
	/*
	 * Sessions in progress keep pointers into the old config, so it is
	 * retired rather than freed: a few kilobytes per reload is cheaper
	 * than reference counting every relay_config.
	 */
	d->retired = xreallocarray(d->retired, d->nretired + 1,
	    sizeof(*d->retired));
	d->retired[d->nretired++] = d->cfg;
	d->cfg = cfg;
	smtp_server_set_config(d->server, cfg);
	maildrop_set_config(d->maildrop, cfg);
	listeners_set_config(d->listeners, cfg);
	httpd_set_config(d->httpd, cfg);
	scheduler_set_config(d->scheduler, cfg);
	log_info("reloaded");
	daemon_ready("reloaded");
	return 0;
}

static void
scheduler_stopped(void *arg)
{
	struct daemon_state *d = arg;

	event_base_loopexit(d->base, NULL);
}

static void
server_stopped(void *arg)
{
	struct daemon_state *d = arg;

	scheduler_shutdown(d->scheduler, d->cfg->shutdown_timeout,
	    scheduler_stopped, d);
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct daemon_state *d = arg;
	char err[1024];

	switch (sig) {
	case SIGHUP:
		if (!d->stopping)
			(void)reload(d, err, sizeof(err));
		break;
	case SIGUSR1:
		log_info("flushing the queue");
		scheduler_flush(d->scheduler);
		break;
	case SIGTERM:
	case SIGINT:
		if (d->stopping) {
			log_warnx("second stop signal: exiting now; "
			    "unacknowledged messages are discarded");
			event_base_loopbreak(d->base);
			break;
		}
		d->stopping = 1;
		log_info("stopping");
		daemon_stopping();
		httpd_stopping(d->httpd);
		listeners_stop(d->listeners);
		maildrop_stop(d->maildrop);
		smtp_server_shutdown(d->server, d->cfg->shutdown_timeout,
		    server_stopped, d);
		break;
	}
}

static uid_t spool_uid;
static gid_t spool_gid;
static struct stat maildrop_st; /* st_ino 0: no maildrop in the spool */

static int
spool_chown_one(const char *path, const struct stat *st, int type,
    struct FTW *ftw)
{
	/* The maildrop's files belong to the users who dropped them: the
	 * importer checks that owner. maildrop_prepare() sets its own. */
	if (maildrop_st.st_ino != 0 && st->st_dev == maildrop_st.st_dev &&
	    st->st_ino == maildrop_st.st_ino)
		return FTW_SKIP_SUBTREE;
	if (st->st_uid == spool_uid && st->st_gid == spool_gid)
		return FTW_CONTINUE;
	if (lchown(path, spool_uid, spool_gid) == -1) {
		log_warn("cannot chown %s", path);
		return FTW_STOP;
	}
	return FTW_CONTINUE;
}

/*
 * Creates the spool directory and gives it, with everything in it, to the
 * daemon user: a spool first used by a root-run daemon (or restored from a
 * backup) must not lock out the unprivileged one, which would then fail
 * to read mail it already acknowledged. Runs before the drop, at start-up
 * only, so walking the tree on the main thread is fine.
 */
static void
spool_prepare(const char *spool, const char *maildrop,
    const struct passwd *pw)
{
	if (mkdir(spool, 0700) == -1 && errno != EEXIST)
		fatal("cannot create spool %s", spool);
	if (pw == NULL)
		return;
	spool_uid = pw->pw_uid;
	spool_gid = pw->pw_gid;
	if (lstat(maildrop, &maildrop_st) == -1)
		memset(&maildrop_st, 0, sizeof(maildrop_st));
	if (nftw(spool, spool_chown_one, 16, FTW_PHYS | FTW_ACTIONRETVAL) != 0)
		fatalx_code(EX_CANTCREAT, "cannot give spool %s to %s", spool,
		    pw->pw_name);
}

/*
 * Each SMTP relay's TLS settings are tried once after the drop, so that a
 * CA file the daemon user cannot read stops the start instead of deferring
 * every message later.
 */
static void
relays_check_tls(const struct config *cfg)
{
	char err[512];
	SSL_CTX *ctx;
	size_t i;

	for (i = 0; i < cfg->nrelays; i++) {
		const struct relay_config *r = &cfg->relays[i];

		if (r->type != RELAY_TYPE_SMTP || r->tls == TLS_MODE_NONE)
			continue;
		if ((ctx = tls_client_ctx_new(r->ca_file, r->tls_verify, err,
		    sizeof(err))) == NULL)
			fatalx_code(EX_CONFIG, "%s: relay %s: %s",
			    cfg->file != NULL ? cfg->file : "settings",
			    r->name, err);
		tls_ctx_free(ctx);
	}
}

/*
 * The maildrop (see maildrop.h): owned by the daemon user, group
 * maildrop_group, mode 1730, so that smarthost-postdrop (setgid to that
 * group) can create files in it but nobody can list, read or remove
 * another user's. Made and fixed up only when we start as root; a daemon
 * started as its own user keeps whatever the administrator set up (or a
 * private 0700 directory that only it and root can drop into). Returns the
 * group's gid, or (gid_t)-1 when there is no such group.
 */
static gid_t
maildrop_prepare(const struct config *cfg, const struct passwd *pw)
{
	struct group *gr;
	struct stat st;
	gid_t gid = (gid_t)-1;
	uid_t uid;
	char *parent, *slash;

	if (geteuid() != 0) {
		if (mkdir(cfg->maildrop, 0700) == -1 && errno != EEXIST)
			fatal("cannot create maildrop %s", cfg->maildrop);
		return gid;
	}
	if ((gr = getgrnam(cfg->maildrop_group)) != NULL)
		gid = gr->gr_gid;
	else
		log_warnx("maildrop_group \"%s\" does not exist: only root "
		    "and the daemon user can use smarthost-postdrop",
		    cfg->maildrop_group);
	if (mkdir(cfg->maildrop, 01730) == -1 && errno != EEXIST)
		fatal("cannot create maildrop %s", cfg->maildrop);
	if (lstat(cfg->maildrop, &st) == -1 || !S_ISDIR(st.st_mode))
		fatalx_code(EX_CANTCREAT, "maildrop %s is not a directory",
		    cfg->maildrop);
	/* Only what differs: under systemd's CapabilityBoundingSet a chmod
	 * of a directory root does not own needs CAP_FOWNER. */
	uid = pw != NULL ? pw->pw_uid : 0;
	if (gid == (gid_t)-1)
		gid = pw != NULL ? pw->pw_gid : 0;
	if (((st.st_mode & 07777) != 01730 &&
	    chmod(cfg->maildrop, 01730) == -1) ||
	    ((st.st_uid != uid || st.st_gid != gid) &&
	    chown(cfg->maildrop, uid, gid) == -1))
		fatal("cannot set the owner and mode of maildrop %s",
		    cfg->maildrop);
	if (gr == NULL)
		gid = (gid_t)-1;
	/* Users must be able to reach it: a spool it lives in becomes
	 * searchable (0711), never listable; queue/ and the rest stay
	 * 0700. */
	parent = xstrdup(cfg->maildrop);
	if ((slash = strrchr(parent, '/')) != NULL && slash != parent) {
		*slash = '\0';
		if (strcmp(parent, cfg->spool) == 0 &&
		    stat(parent, &st) == 0 && (st.st_mode & 0711) != 0711 &&
		    chmod(parent, (st.st_mode & 07777) | 0711) == -1)
			fatal("cannot chmod %s", parent);
	}
	free(parent);
	return gid;
}

static void
drop_privileges(const struct passwd *pw, gid_t maildrop_gid)
{
	gid_t groups[2] = { pw->pw_gid, maildrop_gid };

	/* The maildrop group as a supplementary group: postdrop's files
	 * are readable by it (0640), not by the daemon user as such. */
	if (setgroups(maildrop_gid != (gid_t)-1 ? 2 : 1, groups) == -1 ||
	    setgid(pw->pw_gid) == -1 ||
	    setuid(pw->pw_uid) == -1)
		fatal("cannot drop privileges to %s", pw->pw_name);
	/* Credential helpers (gpg, password_command) look in $HOME. */
	if (setenv("HOME", pw->pw_dir, 1) == -1 ||
	    setenv("USER", pw->pw_name, 1) == -1 ||
	    setenv("LOGNAME", pw->pw_name, 1) == -1)
		fatal("setenv");
	/* Make sure there is no way back. */
	if (setuid(0) != -1)
		fatalx("could regain root after dropping privileges");
	log_info("running as %s (uid %lu)", pw->pw_name,
	    (unsigned long)pw->pw_uid);
}

/*
 * The event loop. With the epoll changelist, libevent applies each loop
 * iteration's event changes at once and drops the add/delete pairs that
 * cancel out, which SMTP's request/response rhythm produces on every
 * command: about half the epoll_ctl calls per message go away.
 */
static struct event_base *
loop_new(void)
{
	struct event_config *ec;
	struct event_base *base;

	if ((ec = event_config_new()) == NULL)
		return NULL;
	event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	base = event_base_new_with_config(ec);
	event_config_free(ec);
	return base;
}

static struct evdns_base *
dns_open(struct event_base *base)
{
	struct evdns_base *dns;

	/*
	 * Without a resolv.conf (containers) evdns would fail to start;
	 * /etc/hosts and numeric addresses still work then, so carry on.
	 */
	dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
	if (dns == NULL) {
		dns = evdns_base_new(base, 0);
		if (dns != NULL)
			evdns_base_load_hosts(dns, NULL);
		log_warnx("no usable resolv.conf: relay names resolve from "
		    "/etc/hosts only");
	}
	return dns;
}

/* The signals signal_cb handles, on the loop. */
static const int handled_signals[] = { SIGHUP, SIGUSR1, SIGTERM, SIGINT };
#define NSIGNALS (sizeof(handled_signals) / sizeof(*handled_signals))

/*
 * The command line: -c into *file, -d and -t into *debug and *check, and
 * every setting flag into d's overrides. Returns -1 to go on, or the exit
 * code after printing what --help or --version asked for or saying that
 * there are too many setting flags.
 */
static int
options_parse(int argc, char *argv[], struct daemon_state *d,
    const char **file, int *debug, int *check)
{
	struct option *lo;
	int ch;

	lo = long_options();
	while ((ch = getopt_long(argc, argv, "c:dhtV", lo, NULL)) != -1) {
		if (ch >= 256 && d->nov == MAX_OVERRIDES) {
			fprintf(stderr, "smarthostd: more than %d setting "
			    "flags\n", MAX_OVERRIDES);
			free(lo);
			return EX_USAGE;
		}
		if (ch >= 256) {
			snprintf(d->origin[d->nov], sizeof(d->origin[d->nov]),
			    "--%s", config_options[ch - 256].flag);
			d->ov[d->nov].key = config_options[ch - 256].key;
			d->ov[d->nov].value = optarg;
			d->ov[d->nov].origin = d->origin[d->nov];
			d->nov++;
			continue;
		}
		switch (ch) {
		case 'h':
			usage_print(stdout);
			free(lo);
			return EX_OK;
		case 'V':
			printf("smarthostd %s\n", PACKAGE_VERSION);
			free(lo);
			return EX_OK;
		case 'c':
			*file = optarg;
			break;
		case 'd':
			*debug = 1;
			break;
		case 't':
			*check = 1;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	free(lo);
	return -1;
}

/*
 * Reads and checks the configuration (file or the default, the
 * SMARTHOSTD_* variables, then d's overrides) into d->cfg, and looks up
 * its user into *pw: NULL when none is set, or when we are not root and so
 * have nothing to drop. Returns -1 to go on, or the exit code: EX_CONFIG
 * after saying what is wrong, EX_OK after -t's "configuration OK".
 */
static int
settings_load(struct daemon_state *d, const char *file, int check,
    struct passwd **pw)
{
	char err[1024];

	if ((d->cfg = config_load_default(file, DEFAULT_CONFIG, d->ov, d->nov,
	    &file, err, sizeof(err))) == NULL) {
		fprintf(stderr, "smarthostd: %s\n", err);
		return EX_CONFIG;
	}
	if (d->cfg->user != NULL && (*pw = getpwnam(d->cfg->user)) == NULL) {
		fprintf(stderr, "smarthostd: %s: user \"%s\" does not exist\n",
		    file != NULL ? file : "user", d->cfg->user);
		config_free(d->cfg);
		return EX_CONFIG;
	}
	if (check) {
		printf("%s: configuration OK\n", file != NULL ? file :
		    "settings");
		config_free(d->cfg);
		return EX_OK;
	}
	if (*pw != NULL && getuid() != 0)
		*pw = NULL; /* not root: nothing to drop */
	return -1;
}

/* The SMTP server, handing every committed message to the scheduler. */
static struct smtp_server *
server_new(struct daemon_state *d)
{
	struct smtp_server_params sp;

	memset(&sp, 0, sizeof(sp));
	sp.cfg = d->cfg;
	sp.queue = d->queue;
	sp.queued = queued_cb;
	sp.arg = d;
	return smtp_server_new(d->base, &sp);
}

/* The control socket for smarthostctl: made after the privilege drop, so
 * it belongs to the daemon user. Exits when it cannot be made. */
static void
control_open(struct daemon_state *d)
{
	struct control_params cp;
	gid_t admin_gid, read_gid;
	char err[1024];

	memset(&cp, 0, sizeof(cp));
	cp.path = d->cfg->control_socket;
	cp.scheduler = d->scheduler;
	cp.server = d->server;
	cp.queue = d->queue;
	cp.worker = d->worker;
	cp.reload = reload;
	cp.reload_arg = d;
	cp.uid = geteuid();
	/* control_new copies the gids: these locals may go after it. */
	cp.admin_gid = control_gid(d->cfg, "control_admin_group",
	    d->cfg->control_admin_group, &admin_gid);
	cp.read_gid = control_gid(d->cfg, "control_read_group",
	    d->cfg->control_read_group, &read_gid);
	cp.started = time(NULL);
	if ((d->control = control_new(d->base, &cp, err, sizeof(err))) == NULL)
		fatalx_code(EX_CANTCREAT, "%s", err);
}

/* An event on the loop for each of handled_signals, into sigev. Exits
 * when one cannot be added. */
static void
signals_install(struct daemon_state *d, struct event **sigev)
{
	size_t i;

	for (i = 0; i < NSIGNALS; i++) {
		sigev[i] = evsignal_new(d->base, handled_signals[i], signal_cb,
		    d);
		if (sigev[i] == NULL || event_add(sigev[i], NULL) == -1)
			fatalx("cannot install signal handler");
	}
}

/* The spool's messages into the scheduler, then the maildrop opened.
 * Exits when the maildrop cannot be opened. */
static void
spool_load(struct daemon_state *d)
{
	char err[1024];
	size_t n;

	/* Names only: envelopes are read as messages become due. */
	n = queue_scan(d->queue, found_cb, d);
	if (n > 0)
		log_info("found %zu queued message%s", n, n == 1 ? "" : "s");
	/* After the queue is scanned: the first scan of the maildrop runs
	 * from the loop and imports through the server. */
	if ((d->maildrop = maildrop_open(d->base, d->worker, d->cfg, d->server,
	    err, sizeof(err))) == NULL)
		fatalx_code(EX_CANTCREAT, "%s", err);
}

/* Starts accepting: SMTP on every listener, then the metrics and health
 * endpoint when there is one. Exits when the listeners cannot start. */
static void
accept_start(struct daemon_state *d)
{
	size_t i;

	if (listeners_start(d->listeners, d->base, d->server) == -1)
		fatalx("cannot start listeners");
	for (i = 0; i < listeners_count(d->listeners); i++)
		log_info("listening on %s",
		    listeners_describe(d->listeners, i));
	if (d->httpd != NULL) {
		httpd_start(d->httpd, d->scheduler, d->server);
		log_info("serving metrics and health on http://%s/",
		    httpd_describe(d->httpd));
	}
}

/*
 * Frees everything main made. Teardown runs the other way round, and the
 * scheduler goes last: pending worker jobs and queue updates call back
 * into it and read its envelopes.
 */
static void
teardown(struct daemon_state *d, struct event **sigev)
{
	size_t i;

	control_free(d->control);
	httpd_free(d->httpd);
	maildrop_free(d->maildrop);
	listeners_free(d->listeners);
	smtp_server_free(d->server);
	worker_free(d->worker);
	queue_close(d->queue);
	scheduler_free(d->scheduler);
	for (i = 0; i < NSIGNALS; i++)
		event_free(sigev[i]);
	if (d->dns != NULL)
		evdns_base_free(d->dns, 0);
	event_base_free(d->base);
	for (i = 0; i < d->nretired; i++)
		config_free(d->retired[i]);
	free(d->retired);
	config_free(d->cfg);
}

int
main(int argc, char *argv[])
{
	struct event *sigev[NSIGNALS];
	struct daemon_state d;
	const char *file = NULL;
	struct passwd *pw = NULL;
	gid_t maildrop_gid;
	char err[1024];
	int debug = 0, check = 0, rc;

	memset(&d, 0, sizeof(d));
	if (daemon_disable_core_dumps() == -1)
		perror("smarthostd: cannot disable core dumps");
	if ((rc = options_parse(argc, argv, &d, &file, &debug, &check)) != -1)
		return rc;
	log_init("smarthostd", debug);
	if ((rc = settings_load(&d, file, check, &pw)) != -1)
		return rc;

	signal(SIGPIPE, SIG_IGN);
	nofile_raise();
	if (evthread_use_pthreads() == -1)
		fatalx("libevent without pthreads support");
	if ((d.base = loop_new()) == NULL)
		fatalx("cannot create the event base");

	if ((d.listeners = listeners_open(d.cfg, err, sizeof(err))) == NULL)
		fatalx_code(EX_CONFIG, "%s", err);
	if (d.cfg->metrics_address != NULL && (d.httpd = httpd_open(d.base,
	    d.cfg, err, sizeof(err))) == NULL)
		fatalx_code(EX_CONFIG, "%s", err);
	spool_prepare(d.cfg->spool, d.cfg->maildrop, pw);
	maildrop_gid = maildrop_prepare(d.cfg, pw);
	if (pw != NULL)
		drop_privileges(pw, maildrop_gid);
	relays_check_tls(d.cfg);
	if ((d.queue = queue_open(d.base, d.cfg->spool, d.cfg->spool_sync,
	    d.cfg->spool_log_file_size, err, sizeof(err))) == NULL)
		fatalx_code(EX_CANTCREAT, "%s", err);
	queue_log_max(d.queue, d.cfg->spool_log_max);
	d.dns = dns_open(d.base);
	d.worker = worker_new(d.base, d.cfg->delivery_workers);
	d.scheduler = scheduler_new(d.base, d.dns, d.queue, d.worker, d.cfg);
	d.server = server_new(&d);
	control_open(&d);
	signals_install(&d, sigev);

	spool_load(&d);
	accept_start(&d);
	log_info("started, pid=%ld", (long)getpid());
	daemon_ready("accepting mail");
	daemon_watchdog_start(d.base);
	daemon_status_start(d.base, STATUS_INTERVAL, status_fill, &d);

	event_base_dispatch(d.base);

	teardown(&d, sigev);
	log_info("stopped");
	return EX_OK;
}
