/*
 * smarthost-sendmail: the sendmail(8) interface of smarthostd, for the
 * programs that run /usr/sbin/sendmail (cron, mail(1), PHP, git
 * send-email, Emacs). It reads a message on stdin, completes its header
 * and submits it in SMTP over the daemon's Unix socket; when the daemon
 * cannot be reached it hands the message to smarthost-postdrop, which
 * puts it in the maildrop the daemon imports (with -bs, it holds the SMTP
 * dialogue itself and hands over each message it accepts). Invoked as mailq it lists
 * the queue, as newaliases it checks the configuration.
 *
 * Every way out goes through one exit code with a one-line reason on
 * stderr; the codes are sysexits(3) and are listed in the man page. The
 * exit status is 0 only when the daemon answered 250 to the end of DATA
 * or postdrop exited 0: only then is the message durably queued.
 */
#include <sys/random.h>
#include <sys/types.h>

#include <errno.h>
#include <stdint.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "ac-config.h"
#include "config.h"
#include "control.h"
#include "localaddr.h"
#include "localsmtp.h"
#include "log.h"
#include "message.h"
#include "outcome.h"
#include "submit.h"
#include "xmalloc.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#ifndef SBINDIR
#define SBINDIR "/usr/sbin"
#endif
#define DEFAULT_CONFIG SYSCONFDIR "/smarthostd/smarthostd.conf"
#define POSTDROP SBINDIR "/smarthost-postdrop"
#define CALL_TIMEOUT 30

static struct submit_opts opts;
static struct config *cfg;

/* One line on stderr, prefixed with our name. */
#define errmsg(...) log_tool(__VA_ARGS__)

static void
usage_print(FILE *f)
{
	fprintf(f,
	    "usage: smarthost-sendmail [-tiv] [-C config] [-f sender] "
	    "[-F name] [--] recipient ...\n"
	    "       smarthost-sendmail -bs | -bp | -bi | -q [-C config]\n"
	    "       mailq | newaliases\n"
	    "       smarthost-sendmail --help | --version\n");
}

/* ---- reading the message ---- */

/*
 * Reads stdin until its end or, without -i, a lone "." line. Returns 0
 * with the bytes in *buf, or a sysexits code after saying why.
 */
static int
read_input(char **buf, size_t *len)
{
	size_t cap = 65536, n = 0, from = 0, dot, limit;
	char *p = xmalloc(cap);
	ssize_t r;

	limit = cfg->max_message_size;
	for (;;) {
		if (cap - n < 4096) {
			cap *= 2;
			p = xreallocarray(p, cap, 1);
		}
		r = read(STDIN_FILENO, p + n, cap - n);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			errmsg("reading the message: %s", strerror(errno));
			free(p);
			return EX_IOERR;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (!opts.ignore_dots) {
			if ((dot = message_dot_end(p, n, from)) != (size_t)-1) {
				n = dot;
				break;
			}
			from = message_last_line(p, n);
		}
		if (n > limit) {
			errmsg("message larger than %zu bytes "
			    "(max_message_size in %s); not sent", limit,
			    cfg->file != NULL ? cfg->file : "the config");
			free(p);
			return EX_DATAERR;
		}
	}
	/* A "." on the last line without a line end ends the input too. */
	if (!opts.ignore_dots && (n - from == 1 || (n - from == 2 &&
	    p[n - 1] == '\r')) && p[from] == '.')
		n = from;
	*buf = p;
	*len = n;
	return EX_OK;
}

/* ---- the envelope and the header ---- */

struct prepared {
	struct message msg;
	char **rcpts;
	size_t nrcpts;
	char *sender;     /* "" for <> */
	char *login;      /* the caller's, NULL if unknown */
	char *fullname;   /* -F, or from GECOS */
};

static void
prepared_clear(struct prepared *pr)
{
	message_clear(&pr->msg);
	message_addrs_free(pr->rcpts, pr->nrcpts);
	free(pr->sender);
	free(pr->login);
	free(pr->fullname);
}

/* "-f <a@b>" is "a@b"; "-f <>" and "-f ''" are the null sender. */
static char *
sender_from_option(const char *s)
{
	size_t n = strlen(s);

	if (n >= 2 && s[0] == '<' && s[n - 1] == '>')
		return xstrndup(s + 1, n - 2);
	return xstrdup(s);
}

/* The caller's login and full name from the passwd entry of the real
 * uid: the login is who ran us, whatever the environment says. */
static void
caller(struct prepared *pr)
{
	struct passwd *pw = getpwuid(getuid());

	if (pw != NULL)
		pr->login = xstrdup(pw->pw_name);
	if (opts.fullname != NULL)
		pr->fullname = xstrdup(opts.fullname);
	else if (pw != NULL)
		pr->fullname = message_gecos_name(pw->pw_gecos, pw->pw_name);
	else
		pr->fullname = xstrdup("");
}

static int
recipients(struct prepared *pr)
{
	char err[1024];
	size_t i;

	for (i = 0; i < opts.nrcpts; i++) {
		if (message_addrlist_parse(opts.rcpts[i], &pr->rcpts,
		    &pr->nrcpts, err, sizeof(err)) == -1) {
			errmsg("recipient argument: %s", err);
			return EX_USAGE;
		}
	}
	if (opts.extract && message_recipients(&pr->msg,
	    message_has_resent(&pr->msg), &pr->rcpts, &pr->nrcpts, err,
	    sizeof(err)) == -1) {
		errmsg("-t: %s", err);
		return EX_DATAERR;
	}
	if (pr->nrcpts == 0) {
		errmsg("no recipients: none given as arguments%s; message not "
		    "sent", opts.extract ? " and none in To:, Cc: or Bcc:" :
		    " (use -t to take them from the header)");
		return EX_USAGE;
	}
	return EX_OK;
}

/* A Message-ID nobody else makes: the time, our pid and 64 random
 * bits, in the mail domain. */
static char *
message_id(void)
{
	unsigned char r[8];
	char date[32];
	struct tm tm;
	time_t now = time(NULL);
	size_t got = 0;
	ssize_t n;

	while (got < sizeof(r)) {
		n = getrandom(r + got, sizeof(r) - got, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			break;
		got += (size_t)n;
	}
	if (got < sizeof(r)) /* no entropy source: the clock must do */
		memcpy(r, &now, sizeof(now) < sizeof(r) ? sizeof(now) :
		    sizeof(r));
	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%Y%m%d%H%M%S", &tm);
	return xasprintf("<%s.%ld.%02x%02x%02x%02x%02x%02x%02x%02x@%s>",
	    date, (long)getpid(), r[0], r[1], r[2], r[3], r[4], r[5], r[6],
	    r[7], cfg->mail_domain);
}

/* From:, Date: and Message-ID: when the message has none. */
static int
complete_header(struct prepared *pr)
{
	char date[64], *v, *addr;

	if (message_find(&pr->msg, "From", 0) == -1) {
		if (opts.sender != NULL && pr->sender[0] != '\0')
			addr = strchr(pr->sender, '@') != NULL ?
			    xstrdup(pr->sender) : xasprintf("%s@%s",
			    pr->sender, cfg->mail_domain);
		else if (pr->login != NULL)
			addr = xasprintf("%s@%s", pr->login, cfg->mail_domain);
		else {
			errmsg("no From: in the message, no -f, and no "
			    "passwd entry for uid %u to make one from",
			    (unsigned)getuid());
			return EX_NOUSER;
		}
		v = message_from_value(pr->fullname, addr);
		message_add(&pr->msg, "From", v);
		free(v);
		free(addr);
	}
	if (message_find(&pr->msg, "Date", 0) == -1) {
		message_date(time(NULL), date, sizeof(date));
		message_add(&pr->msg, "Date", date);
	}
	if (message_find(&pr->msg, "Message-ID", 0) == -1) {
		v = message_id();
		message_add(&pr->msg, "Message-ID", v);
		free(v);
	}
	return EX_OK;
}

/* Turns the input into the message and envelope to submit. */
static int
prepare(const char *input, size_t len, struct prepared *pr)
{
	char err[512];
	int rc;

	memset(pr, 0, sizeof(*pr));
	if (message_parse(input, len, &pr->msg, err, sizeof(err)) !=
	    MESSAGE_OK) {
		errmsg("%s", err);
		return EX_DATAERR;
	}
	if ((rc = recipients(pr)) != EX_OK)
		return rc;
	/* Bcc: tells the sender's copy who else got it: never sent on. */
	message_remove(&pr->msg, "Bcc");
	message_remove(&pr->msg, "Resent-Bcc");
	caller(pr);
	if (opts.sender != NULL)
		pr->sender = sender_from_option(opts.sender);
	else if (pr->login != NULL)
		pr->sender = xasprintf("%s@%s", pr->login, cfg->mail_domain);
	else {
		errmsg("no passwd entry for uid %u and no -f sender",
		    (unsigned)getuid());
		return EX_NOUSER;
	}
	return complete_header(pr);
}

/* ---- submitting ---- */

/* The daemon cannot be reached: the maildrop takes the message. */
static int
to_maildrop(const struct listen_config *l, const char *why,
    const struct submit_envelope *env, const char *msg, size_t len)
{
	const char *postdrop = secure_getenv("SMARTHOST_POSTDROP");
	struct outcome o;
	char err[1024];
	int rc;

	if (postdrop == NULL || postdrop[0] == '\0')
		postdrop = POSTDROP;
	if (opts.verbose)
		errmsg("cannot connect to %s (%s); handing the message to %s",
		    submit_listener_name(l), why, postdrop);
	rc = submit_postdrop(postdrop, opts.config, env, msg, len, err,
	    sizeof(err));
	if (rc == 0)
		return EX_OK;
	if (rc > 0) {
		errmsg("smarthostd is not reachable at %s (%s) and %s "
		    "failed (exit status %d); message not sent",
		    submit_listener_name(l), why, postdrop, rc);
		return rc;
	}
	outcome_set(&o, OUTCOME_TEMPORARY, OC_CONNECT, "smarthostd is not "
	    "reachable at %s (%s), and the maildrop fallback failed: %s; "
	    "message not sent", submit_listener_name(l), why, err);
	errmsg("%s", o.text);
	return outcome_sysexit(&o);
}

static int
submit_message(const struct submit_envelope *env, const char *msg,
    size_t len)
{
	const struct listen_config *l = submit_listener(cfg);
	struct outcome o;
	int fd;

	if (l == NULL) {
		errmsg("%s: no listen entry to submit to", cfg->file);
		return EX_CONFIG;
	}
	if ((fd = submit_connect(l, SUBMIT_TIMEOUT)) == -1) {
		if (submit_unreachable(errno))
			return to_maildrop(l, strerror(errno), env, msg, len);
		outcome_set(&o, OUTCOME_TEMPORARY, OC_CONNECT, "cannot "
		    "connect to %s: %s; message not sent",
		    submit_listener_name(l), strerror(errno));
		errmsg("%s", o.text);
		return outcome_sysexit(&o);
	}
	if (submit_smtp(fd, env, msg, len, SUBMIT_TIMEOUT,
	    opts.verbose ? stderr : NULL, &o) == SUBMIT_REFUSED) {
		/* Shutting down or too busy: as good as not there. */
		close(fd);
		return to_maildrop(l, o.text, env, msg, len);
	}
	close(fd);
	if (o.status != OUTCOME_OK) {
		errmsg("%s; message not sent", o.text);
		return outcome_sysexit(&o);
	}
	if (opts.verbose)
		errmsg("submitted: %s", o.text);
	return EX_OK;
}

static int
run_deliver(void)
{
	struct prepared pr;
	struct submit_envelope env;
	char *input = NULL, *msg = NULL;
	size_t len, msglen;
	int rc;

	if ((rc = read_input(&input, &len)) != EX_OK)
		return rc;
	if ((rc = prepare(input, len, &pr)) == EX_OK) {
		msg = message_serialize(&pr.msg, &msglen);
		env.sender = pr.sender;
		env.rcpts = pr.rcpts;
		env.nrcpts = pr.nrcpts;
		rc = submit_message(&env, msg, msglen);
	}
	prepared_clear(&pr);
	free(msg);
	free(input);
	return rc;
}

/*
 * -bs with the daemon down: each message the local dialogue accepts goes
 * to the maildrop, and the client hears 250 only once postdrop has it.
 */
static void
local_deliver(const struct localsmtp_msg *m, char *reply, size_t replylen,
    void *arg)
{
	const char *postdrop = arg;
	struct submit_envelope env;
	char err[1024];
	int rc;

	env.sender = m->sender;
	env.rcpts = m->rcpts;
	env.nrcpts = m->nrcpts;
	rc = submit_postdrop(postdrop, opts.config, &env, m->data, m->len,
	    err, sizeof(err));
	if (rc == 0) {
		snprintf(reply, replylen, "250 2.0.0 Ok: queued in the "
		    "maildrop; smarthostd imports it when it starts");
		return;
	}
	if (rc > 0) {
		errmsg("-bs: %s failed (exit status %d); message not sent",
		    postdrop, rc);
		/* What postdrop refuses for the message itself (an
		 * address, the caller's permission) a retry will not mend. */
		snprintf(reply, replylen, "%s the maildrop refused the "
		    "message (%s exit status %d)", rc == EX_DATAERR ||
		    rc == EX_NOUSER || rc == EX_NOPERM || rc == EX_USAGE ?
		    "554 5.3.0" : "451 4.3.0", postdrop, rc);
		return;
	}
	errmsg("-bs: the maildrop fallback failed: %s; message not sent",
	    err);
	snprintf(reply, replylen, "451 4.3.0 smarthostd is not running and "
	    "the maildrop fallback failed; try again later");
}

/* -bs when the daemon cannot be reached: the dialogue is held here. */
static int
run_smtp_local(const struct listen_config *l, const char *why)
{
	const char *postdrop = secure_getenv("SMARTHOST_POSTDROP");
	struct localsmtp_params p;
	struct localsmtp *ls;
	int r;

	if (postdrop == NULL || postdrop[0] == '\0')
		postdrop = POSTDROP;
	if (opts.verbose)
		errmsg("cannot connect to %s (%s); the SMTP dialogue runs "
		    "here and each message goes to %s",
		    submit_listener_name(l), why, postdrop);
	memset(&p, 0, sizeof(p));
	p.hostname = cfg->hostname;
	p.max_size = cfg->max_message_size;
	p.max_recipients = cfg->max_recipients;
	p.local = cfg->local;
	p.deliver = local_deliver;
	p.arg = (void *)(uintptr_t)postdrop;
	ls = localsmtp_new(&p);
	r = submit_local(ls, STDIN_FILENO, STDOUT_FILENO, SUBMIT_TIMEOUT);
	localsmtp_free(ls);
	return r;
}

/* -bs: the daemon speaks SMTP to our caller through us, or, when it
 * cannot be reached, the local dialogue feeds the maildrop. */
static int
run_smtp(void)
{
	const struct listen_config *l = submit_listener(cfg);
	int fd, r;

	if (l == NULL) {
		printf("421 4.3.5 %s smarthostd has no listener configured\r\n",
		    cfg->hostname);
		errmsg("%s: no listen entry to submit to", cfg->file);
		return EX_CONFIG;
	}
	if ((fd = submit_connect(l, SUBMIT_TIMEOUT)) == -1) {
		if (submit_unreachable(errno)) {
			r = run_smtp_local(l, strerror(errno));
		} else {
			printf("421 4.3.0 %s cannot reach smarthostd; try "
			    "again later\r\n", cfg->hostname);
			errmsg("cannot connect to %s: %s",
			    submit_listener_name(l), strerror(errno));
			return EX_TEMPFAIL;
		}
	} else {
		r = submit_relay(fd, STDIN_FILENO, STDOUT_FILENO);
		close(fd);
	}
	if (r == -1) {
		errmsg("-bs: %s", strerror(errno));
		return EX_IOERR;
	}
	if (r == 1) {
		errmsg("-bs: the SMTP session ended without QUIT");
		return EX_PROTOCOL;
	}
	return EX_OK;
}

static void
flush_line(const char *line, void *arg)
{
	if (opts.verbose)
		printf("%s\n", line);
}

static int
run_control(void)
{
	char err[1024];
	int rc;

	if (opts.mode == SUBMIT_QUEUE)
		rc = control_print_queue(cfg->control_socket, CALL_TIMEOUT,
		    stdout, err, sizeof(err));
	else
		rc = control_run(cfg->control_socket, "flush", CALL_TIMEOUT,
		    flush_line, NULL, err, sizeof(err));
	if (rc != EX_OK)
		errmsg("%s", err);
	return rc;
}

int
main(int argc, char *argv[])
{
	const char *used;
	char err[1024];
	int rc = EX_SOFTWARE;

	log_init("smarthost-sendmail", 0);
	signal(SIGPIPE, SIG_IGN);
	/* A caller that ignores SIGCHLD (swaks --pipe does) passes that on:
	 * its children would be reaped by the kernel, and waiting for
	 * postdrop's exit status would fail with ECHILD. */
	signal(SIGCHLD, SIG_DFL);
	/* Only these two long options: every other argument is parsed as
	 * sendmail parses it, where "--" ends the options. */
	if (argc == 2 && strcmp(argv[1], "--help") == 0) {
		usage_print(stdout);
		return EX_OK;
	}
	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		printf("smarthost-sendmail %s\n", PACKAGE_VERSION);
		return EX_OK;
	}
	if (submit_opts_parse(argc, argv, &opts, err, sizeof(err)) == -1) {
		errmsg("%s", err);
		usage_print(stderr);
		return EX_USAGE;
	}
	if (opts.mode == SUBMIT_NOTHING)
		return EX_OK;
	if ((cfg = config_load_default(opts.config, DEFAULT_CONFIG, NULL, 0,
	    &used, err, sizeof(err))) == NULL) {
		errmsg("%s", err);
		if (opts.mode == SUBMIT_SMTP)
			printf("421 4.3.5 configuration error\r\n");
		return EX_CONFIG;
	}
	switch (opts.mode) {
	case SUBMIT_DELIVER:
		rc = run_deliver();
		break;
	case SUBMIT_SMTP:
		rc = run_smtp();
		break;
	case SUBMIT_QUEUE:
	case SUBMIT_FLUSH:
		rc = run_control();
		break;
	case SUBMIT_ALIASES:
		/* config_load() has read and checked the aliases file. */
		printf("%s: valid, %zu aliases\n", cfg->file,
		    localaddr_aliases_count(cfg->local));
		rc = EX_OK;
		break;
	case SUBMIT_NOTHING:
		rc = EX_OK;
		break;
	}
	if (fflush(stdout) == EOF && rc == EX_OK) {
		errmsg("stdout: %s", strerror(errno));
		rc = EX_IOERR;
	}
	config_free(cfg);
	return rc;
}
