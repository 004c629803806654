/*
 * smarthostctl: the operator's tool. It reads the daemon's configuration
 * file for the control socket, the relays and the credential files, then
 * either talks to the running daemon over the control socket (status,
 * queue, flush, auth-forget, credentials-changed, metrics) or works alone:
 * "credentials" answers which authinfo entry the daemon would use for a
 * host, and "login" tries a user and password against a server and offers
 * to save them.
 *
 * Output is meant for people and for scripts alike: stdout carries only
 * the result, in stable "key: value" lines where that fits; errors and
 * prompts go to stderr (or the terminal). Exit codes are sysexits(3) and
 * are listed in smarthostctl(8). No secret is ever printed unless the user
 * asked for it with --show-secret, and every buffer that held one is wiped.
 *
 * When run as root and the configuration names a daemon user, the
 * credential commands switch to that user first: the daemon reads its
 * files as that user, so ownership checks, "~" and gpg's keyring must be
 * that user's too, and a file that login creates must belong to it.
 */
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <dirent.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <termios.h>
#include <unistd.h>

#include <ctype.h>
#include <limits.h>

#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "authinfo.h"
#include "ac-config.h"
#include "config.h"
#include "control.h"
#include "daemon.h"
#include "fileio.h"
#include "import.h"
#include "json.h"
#include "log.h"
#include "outcome.h"
#include "sasl.h"
#include "secretcmd.h"
#include "smtp_client.h"
#include "tls.h"
#include "xmalloc.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define DEFAULT_CONFIG SYSCONFDIR "/smarthostd/smarthostd.conf"

#define CALL_TIMEOUT 30     /* seconds for one control request */
#define INPUT_MAX 1024      /* bytes of one answer at a prompt */
#define LOGIN_TIMEOUT_CONNECT 30
#define LOGIN_TIMEOUT_COMMAND 60

static struct config *cfg;
/* The daemon user we switched to (become_daemon_user), for messages. */
static char switched_to[64];

/* One line on stderr, prefixed with our name. */
#define errmsg(...) log_tool(__VA_ARGS__)

static void
usage_print(FILE *f)
{
	fprintf(f,
	    "usage: smarthostctl [-dhV] [-c file] command [argument ...]\n"
	    "  -c, --config FILE  the daemon's configuration file\n"
	    "  -d, --debug        the SMTP trace of login and check\n"
	    "  -h, --help         this text\n"
	    "  -V, --version      the version\n"
	    "commands:\n"
	    "  status [--json]         the daemon's state\n"
	    "  queue | mailq [--from S] [--to S] [--relay NAME]\n"
	    "        [--older-than DURATION] [--held] [--deferred] [--json]\n"
	    "                          list queued messages\n"
	    "  show ID [--headers] [--json]\n"
	    "                          a message's envelope and text\n"
	    "  hold ID... | release ID...\n"
	    "                          keep messages from delivery, or not\n"
	    "  delete ID... | --all    remove messages without a bounce\n"
	    "  flush [ID...]           try queued messages now\n"
	    "  reload                  re-read the configuration\n"
	    "  auth-forget HOST[:PORT] forget that a relay requires "
	    "authentication\n"
	    "  credentials-changed     retry mail deferred for credentials\n"
	    "  metrics                 counters, gauges and histograms "
	    "(Prometheus text)\n"
	    "  credentials HOST PORT [USER] [--show-secret] [--json]\n"
	    "                          which authinfo entry would be used\n"
	    "  check [RELAY] [--json]  connect to each relay (TLS, EHLO, AUTH),\n"
	    "                          send no mail, print what it offers\n"
	    "  login HOST[:PORT] [--user USER] [--file PATH]\n"
	    "        [--tls starttls|implicit|none] [--ca-file FILE] "
	    "[--no-verify]\n"
	    "                          try a user and password, offer to "
	    "save them\n"
	    "  import msmtp|ssmtp|nullmailer [FILE] [--write DIR]\n"
	    "                          translate another tool's "
	    "configuration\n");
}

static void __attribute__((noreturn))
usage(void)
{
	usage_print(stderr);
	exit(EX_USAGE);
}

/* ---- talking to the daemon ---- */

/*
 * Sends request and passes the data lines to each. Returns an exit code;
 * errors are reported here.
 */
static int
daemon_call(const char *request, control_line_fn *each, void *arg)
{
	char err[1024];
	int rc;

	if ((rc = control_run(cfg->control_socket, request, CALL_TIMEOUT,
	    each, arg, err, sizeof(err))) != EX_OK)
		errmsg("%s", err);
	return rc;
}

static void
print_line(const char *line, void *arg)
{
	size_t *n = arg;

	printf("%s\n", line);
	if (n != NULL)
		(*n)++;
}

static void
status_line(const char *line, void *arg)
{
	size_t *nauth = arg;

	if (strncmp(line, "auth-required: ", 15) == 0)
		(*nauth)++;
	printf("%s\n", line);
}

/*
 * Parses the options of a command whose options are all flags: each entry
 * of opts points its flag at the int getopt_long sets; anything else is a
 * usage error. Returns the index of the first operand.
 */
static int
flags_parse(int argc, char **argv, const struct option *opts)
{
	int ch;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1)
		if (ch != 0)
			usage();
	return optind;
}

static int
cmd_status(int argc, char **argv)
{
	size_t nauth = 0;
	int rc;

	if (argc == 2 && strcmp(argv[1], "--json") == 0)
		return daemon_call("status json", print_line, NULL);
	if (argc != 1)
		usage();
	if ((rc = daemon_call("status", status_line, &nauth)) == EX_OK &&
	    nauth == 0)
		printf("auth-required: none\n");
	return rc;
}

/* ---- the queue commands ---- */

/* Whether s can travel as one request argument: not empty, no blank or
 * control character. */
static int
request_word(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s <= 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

/* Appends " WORD" (prefix then s) to the request, or fails with usage. */
static void
request_add(char *req, size_t size, const char *prefix, const char *s)
{
	size_t n = strlen(req);

	if (!request_word(s)) {
		errmsg("\"%s\": an argument may not be empty or hold blanks",
		    s);
		exit(EX_USAGE);
	}
	if (snprintf(req + n, size - n, " %s%s", prefix, s) >=
	    (int)(size - n)) {
		errmsg("too many arguments for one request");
		exit(EX_USAGE);
	}
}

/* A duration: a number of seconds, or with s, m, h, d or w. */
static long long
duration_parse(const char *s)
{
	static const struct { char unit; long long mult; } units[] = {
		{ 's', 1 }, { 'm', 60 }, { 'h', 3600 }, { 'd', 86400 },
		{ 'w', 604800 },
	};
	long long v;
	char *end;
	size_t i;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || v < 0 || !isdigit((unsigned char)*s))
		return -1;
	if (*end == '\0')
		return v;
	for (i = 0; i < sizeof(units) / sizeof(*units); i++)
		if (tolower((unsigned char)*end) == units[i].unit &&
		    end[1] == '\0')
			return v > LLONG_MAX / units[i].mult ? -1 :
			    v * units[i].mult;
	return -1;
}

/* Prints a message line from the daemon: control characters but TAB
 * become '?', so a message cannot drive the terminal. */
static void
print_raw(const char *line)
{
	for (; *line != '\0'; line++)
		putchar((unsigned char)*line < 0x20 && *line != '\t' ? '?' :
		    *line == 0x7f ? '?' : *line);
	putchar('\n');
}

/* Collects JSON lines into an array printed at the end. */
struct json_lines {
	size_t n;
	int in_message;       /* show: past the envelope line */
	struct evbuffer *msg; /* show: the message text */
};

static void
json_array_line(const char *line, void *arg)
{
	struct json_lines *jl = arg;

	printf("%s%s\n", jl->n++ > 0 ? "," : "", line);
}

static void
queue_human_line(const char *line, void *arg)
{
	struct json_lines *jl = arg;

	if (line[0] != ' ')
		jl->n++;
	printf("%s\n", line);
}

static int
cmd_queue(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "from", required_argument, NULL, 'f' },
		{ "to", required_argument, NULL, 't' },
		{ "relay", required_argument, NULL, 'r' },
		{ "older-than", required_argument, NULL, 'o' },
		{ "held", no_argument, NULL, 'H' },
		{ "deferred", no_argument, NULL, 'D' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 }
	};
	struct json_lines jl = { 0, 0, NULL };
	char req[CONTROL_LINE_MAX - 1] = "queue", num[32];
	long long secs;
	int ch, json = 0, rc;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'f':
			request_add(req, sizeof(req), "from=", optarg);
			break;
		case 't':
			request_add(req, sizeof(req), "to=", optarg);
			break;
		case 'r':
			request_add(req, sizeof(req), "relay=", optarg);
			break;
		case 'o':
			if ((secs = duration_parse(optarg)) < 0) {
				errmsg("--older-than: \"%s\" is not a "
				    "duration (30m, 2h, 1d)", optarg);
				return EX_USAGE;
			}
			snprintf(num, sizeof(num), "%lld", secs);
			request_add(req, sizeof(req), "older-than=", num);
			break;
		case 'H':
			request_add(req, sizeof(req), "", "held");
			break;
		case 'D':
			request_add(req, sizeof(req), "", "deferred");
			break;
		case 'j':
			json = 1;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	if (json) {
		request_add(req, sizeof(req), "", "json");
		printf("[");
		rc = daemon_call(req, json_array_line, &jl);
		printf("]\n");
		return rc;
	}
	if ((rc = daemon_call(req, queue_human_line, &jl)) != EX_OK)
		return rc;
	if (jl.n == 0)
		printf("queue is empty\n");
	else
		printf("-- %zu message%s\n", jl.n, jl.n == 1 ? "" : "s");
	return EX_OK;
}

static void
show_human_line(const char *line, void *arg)
{
	print_raw(line);
}

/* The envelope's JSON object comes first, then an empty line and the
 * message, which becomes the object's "message" member. */
static void
show_json_line(const char *line, void *arg)
{
	struct json_lines *jl = arg;
	size_t len;

	if (!jl->in_message) {
		len = strlen(line);
		if (len > 0 && line[len - 1] == '}')
			len--;
		fwrite(line, 1, len, stdout);
		jl->in_message = 1;
		jl->n = 0;
		return;
	}
	if (jl->n++ == 0)
		return;       /* the empty line after the envelope */
	evbuffer_add(jl->msg, line, strlen(line));
	evbuffer_add(jl->msg, "\n", 1);
}

static int
cmd_show(int argc, char **argv)
{
	int json = 0, headers = 0, first, rc;
	const struct option opts[] = {
		{ "headers", no_argument, &headers, 1 },
		{ "json", no_argument, &json, 1 },
		{ NULL, 0, NULL, 0 }
	};
	struct json_lines jl = { 0, 0, NULL };
	struct evbuffer *out;
	char req[CONTROL_LINE_MAX - 1] = "show";

	first = flags_parse(argc, argv, opts);
	if (argc - first != 1)
		usage();
	request_add(req, sizeof(req), "", argv[first]);
	if (headers)
		request_add(req, sizeof(req), "", "headers");
	if (!json)
		return daemon_call(req, show_human_line, NULL);
	request_add(req, sizeof(req), "", "json");
	if ((jl.msg = evbuffer_new()) == NULL ||
	    (out = evbuffer_new()) == NULL) {
		errmsg("out of memory");
		return EX_OSERR;
	}
	if ((rc = daemon_call(req, show_json_line, &jl)) == EX_OK &&
	    jl.in_message) {
		json_key(out, 0, headers ? "headers" : "message");
		json_str_len(out, (const char *)evbuffer_pullup(jl.msg, -1),
		    evbuffer_get_length(jl.msg));
		evbuffer_add(out, "}\n", 2);
		fwrite(evbuffer_pullup(out, -1), 1, evbuffer_get_length(out),
		    stdout);
	}
	evbuffer_free(out);
	evbuffer_free(jl.msg);
	return rc;
}

/*
 * hold, release, flush, reload, metrics, credentials-changed: the command
 * and its arguments (ids) are the request, and every reply line is
 * printed (metrics: the Prometheus text as the daemon wrote it). main()
 * has checked the number of arguments.
 */
static int
cmd_daemon(int argc, char **argv)
{
	char req[CONTROL_LINE_MAX - 1];
	int i;

	snprintf(req, sizeof(req), "%s", argv[0]);
	for (i = 1; i < argc; i++)
		request_add(req, sizeof(req), "", argv[i]);
	return daemon_call(req, print_line, NULL);
}

static int
cmd_delete(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--all") == 0)
		return daemon_call("delete all", print_line, NULL);
	return cmd_daemon(argc, argv);
}

static int
cmd_auth_forget(int argc, char **argv)
{
	char *req;
	int rc;

	if (argv[1][0] == '\0' || strcspn(argv[1], " \t\r\n") !=
	    strlen(argv[1])) {
		errmsg("auth-forget: \"%s\" is not a host name", argv[1]);
		return EX_USAGE;
	}
	req = xasprintf("auth-forget %s", argv[1]);
	rc = daemon_call(req, print_line, NULL);
	free(req);
	return rc;
}

/* ---- credential files ---- */

/*
 * The daemon reads credential files as its configured user: do the same
 * when we are root, so that the owner check, gpg's keyring (HOME) and the
 * owner of a file we create match what the daemon sees.
 */
static int
become_daemon_user(void)
{
	struct passwd *pw;

	if (geteuid() != 0 || cfg->user == NULL)
		return EX_OK;
	if ((pw = getpwnam(cfg->user)) == NULL) {
		errmsg("%s: user \"%s\" does not exist", cfg->file,
		    cfg->user);
		return EX_CONFIG;
	}
	if (pw->pw_uid == 0)
		return EX_OK;
	if (setgroups(1, &pw->pw_gid) == -1 || setgid(pw->pw_gid) == -1 ||
	    setuid(pw->pw_uid) == -1) {
		errmsg("cannot switch to the daemon user %s: %s", cfg->user,
		    strerror(errno));
		return EX_OSERR;
	}
	if (setenv("HOME", pw->pw_dir, 1) == -1) {
		errmsg("setenv: %s", strerror(errno));
		return EX_OSERR;
	}
	snprintf(switched_to, sizeof(switched_to), "%s", cfg->user);
	return EX_OK;
}

static void
warn_cb(const char *file, unsigned line, const char *msg, void *arg)
{
	errmsg("%s:%u: %s", file, line, msg);
}

static int
is_gpg(const char *path)
{
	size_t n = strlen(path);

	return n > 4 && strcmp(path + n - 4, ".gpg") == 0;
}

/*
 * The checks authinfo_read_file makes, for the files we open ourselves
 * (encrypted files, the file login appends to), with the same wording.
 */
static int
file_check(const char *path, const struct stat *st, char *err, size_t errlen)
{
	struct passwd *pw;
	char who[64];
	int bad_owner, bad_mode;

	if (!S_ISREG(st->st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", path);
		return -1;
	}
	bad_owner = st->st_uid != geteuid();
	bad_mode = (st->st_mode & (S_IRWXG | S_IRWXO)) != 0;
	if (!bad_owner && !bad_mode)
		return 0;
	if ((pw = getpwuid(geteuid())) != NULL)
		snprintf(who, sizeof(who), "%s", pw->pw_name);
	else
		snprintf(who, sizeof(who), "%u", (unsigned)geteuid());
	if (bad_owner && bad_mode)
		snprintf(err, errlen, "%s: owned by uid %u, not by %s, and "
		    "open to group or others (mode %04o); refused, fix it "
		    "with: chown %s '%s' && chmod 600 '%s'", path,
		    (unsigned)st->st_uid, who, (unsigned)(st->st_mode & 07777),
		    who, path, path);
	else if (bad_owner)
		snprintf(err, errlen, "%s: owned by uid %u, not by %s; "
		    "refused, fix it with: chown %s '%s'", path,
		    (unsigned)st->st_uid, who, who, path);
	else
		snprintf(err, errlen, "%s: readable or writable by group or "
		    "others (mode %04o); refused, fix it with: chmod 600 '%s'",
		    path, (unsigned)(st->st_mode & 07777), path);
	return -1;
}

/*
 * Decrypts an authinfo.gpg file with "gpg --quiet --batch --decrypt",
 * which reads the file we opened and checked on its standard input, and
 * looks host/port/user up in it. Returns 0 with *out (NULL: no match, or
 * no such file), or -1 with err.
 */
static int
gpg_lookup(const char *path, const char *host, const char *port,
    const char *user, struct authinfo_entry **out, char *err, size_t errlen)
{
	struct authinfo *ai;
	const struct authinfo_entry *e;
	struct stat st;
	char *buf = NULL;
	size_t cap = 0, len = 0;
	ssize_t n;
	pid_t pid;
	int fd, p[2] = { -1, -1 }, status, rc = -1;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd == -1) {
		if (errno == ENOENT || errno == ENOTDIR)
			return 0;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (file_check(path, &st, err, errlen) == -1)
		goto out;
	if (pipe2(p, O_CLOEXEC) == -1 || (pid = fork()) == -1) {
		snprintf(err, errlen, "%s: cannot run gpg: %s", path,
		    strerror(errno));
		goto out;
	}
	if (pid == 0) {
		if (fcntl(fd, F_SETFL, 0) == -1 || dup2(fd, 0) == -1 ||
		    dup2(p[1], 1) == -1)
			_exit(127);
		execlp("gpg", "gpg", "--quiet", "--batch", "--decrypt",
		    (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	p[1] = -1;
	/* Grown through fresh buffers so no copy of the plain text is left
	 * behind unwiped. */
	for (;;) {
		if (cap - len < 4096) {
			char *nbuf = xmalloc(cap + 65536);

			if (len > 0)
				memcpy(nbuf, buf, len);
			xfree_secret(buf, cap);
			buf = nbuf;
			cap += 65536;
		}
		n = read(p[0], buf + len, cap - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len > AUTHINFO_FILE_MAX)
			break;
	}
	close(p[0]);
	p[0] = -1;
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	if (len > AUTHINFO_FILE_MAX) {
		snprintf(err, errlen, "%s: decrypts to more than %d bytes; "
		    "refused (not an authinfo file?)", path, AUTHINFO_FILE_MAX);
		goto out;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
		snprintf(err, errlen, "%s: cannot run gpg (is it installed?)",
		    path);
		goto out;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		snprintf(err, errlen, "%s: gpg --decrypt failed (%s %d)", path,
		    WIFEXITED(status) ? "exit status" : "signal",
		    WIFEXITED(status) ? WEXITSTATUS(status) :
		    WTERMSIG(status));
		goto out;
	}
	ai = authinfo_parse(buf, len, path, warn_cb, NULL);
	if ((e = authinfo_match(ai, host, port, user)) != NULL)
		*out = authinfo_entry_dup(e);
	authinfo_free(ai);
	rc = 0;
out:
	if (p[0] != -1)
		close(p[0]);
	if (p[1] != -1)
		close(p[1]);
	xfree_secret(buf, cap);
	close(fd);
	return rc;
}

/*
 * The daemon's lookup: the configured files in order, the first match
 * with a password wins (else the first match), and a refused file stops
 * the search. Encrypted files are read when skip_gpg is 0. Returns 0 with
 * *out (NULL: no match), or -1 with err.
 */
static int
credentials_lookup(const char *host, const char *port, const char *user,
    int skip_gpg, struct authinfo_entry **out, char *err, size_t errlen)
{
	struct authinfo_entry *e;
	size_t i;
	int r;

	*out = NULL;
	for (i = 0; i < cfg->nauthinfo && !authinfo_entry_complete(*out);
	    i++) {
		const char *f = cfg->authinfo[i];

		if (is_gpg(f)) {
			if (skip_gpg)
				continue;
			r = gpg_lookup(f, host, port, user, &e, err, errlen);
		} else
			r = authinfo_lookup(&f, 1, host, port, user, &e,
			    warn_cb, NULL, err, errlen);
		if (r == -1) {
			authinfo_entry_free(*out);
			*out = NULL;
			return -1;
		}
		authinfo_entry_prefer(out, e);
	}
	return 0;
}

/*
 * Replaces a gpg: token in e's password by its plain text, as the daemon
 * decrypts it. Returns 0, or -1 with err.
 */
static int
credentials_decrypt(struct authinfo_entry *e, char *err, size_t errlen)
{
	char *plain, why[256];
	size_t len;

	if (!authinfo_is_gpg_token(e->password))
		return 0;
	if (secretcmd_gpg_token(e->password, &plain, &len, why,
	    sizeof(why)) == -1) {
		snprintf(err, errlen, "%s:%u: the password is a gpg: token "
		    "that could not be decrypted: %s", e->file, e->line, why);
		return -1;
	}
	xfree_secret_str(e->password);
	e->password = xstrdup(plain);
	xfree_secret(plain, len + 1);
	return 0;
}

/* The entry as a JSON object on stdout; the password only with
 * --show-secret, else whether there is one. */
static void
credentials_json(const struct authinfo_entry *e, int show, int gpg_token)
{
	struct evbuffer *b;

	if ((b = evbuffer_new()) == NULL)
		fatalx("%s: evbuffer_new", __func__);
	evbuffer_add(b, "{", 1);
	json_key(b, 1, "file");
	json_str(b, e->file);
	json_key(b, 0, "line");
	evbuffer_add_printf(b, "%u", e->line);
	json_key(b, 0, "default");
	evbuffer_add_printf(b, "%s", e->is_default ? "true" : "false");
	json_key(b, 0, "host");
	json_str(b, e->is_default ? NULL : e->host);
	json_key(b, 0, "port");
	json_str(b, e->port);
	json_key(b, 0, "login");
	json_str(b, e->login);
	json_key(b, 0, "password");
	if (e->password == NULL)
		evbuffer_add(b, "null", 4);
	else if (show)
		json_str(b, e->password);
	else
		evbuffer_add(b, "\"present\"", 9);
	json_key(b, 0, "gpg_token");
	evbuffer_add_printf(b, "%s", gpg_token ? "true" : "false");
	json_key(b, 0, "smtp_auth");
	json_str(b, e->smtp_auth);
	evbuffer_add(b, "}\n", 2);
	fwrite(evbuffer_pullup(b, -1), 1, evbuffer_get_length(b), stdout);
	fflush(stdout);
	/* The password went through the buffer. */
	OPENSSL_cleanse(evbuffer_pullup(b, -1), evbuffer_get_length(b));
	evbuffer_free(b);
}

static int
cmd_credentials(int argc, char **argv)
{
	int show = 0, rc, gpg_token, json = 0, first;
	const struct option opts[] = {
		{ "show-secret", no_argument, &show, 1 },
		{ "json", no_argument, &json, 1 },
		{ NULL, 0, NULL, 0 }
	};
	struct authinfo_entry *e = NULL;
	const char *host, *port, *user = NULL;
	char err[2048];
	size_t i;

	first = flags_parse(argc, argv, opts);
	argc -= first;
	argv += first;
	if (argc < 2 || argc > 3)
		usage();
	host = argv[0];
	port = argv[1];
	if (argc == 3 && argv[2][0] != '\0')
		user = argv[2];
	if (host[0] == '\0') {
		errmsg("credentials: empty host name");
		return EX_USAGE;
	}
	if (authinfo_port_number(port) == -1) {
		errmsg("credentials: \"%s\" is not a port (a number, or smtp, "
		    "submission, submissions)", port);
		return EX_USAGE;
	}
	if ((rc = become_daemon_user()) != EX_OK)
		return rc;
	if (credentials_lookup(host, port, user, 0, &e, err,
	    sizeof(err)) == -1) {
		errmsg("%s%s%s%s", err, switched_to[0] != '\0' ?
		    " (read as " : "", switched_to, switched_to[0] != '\0' ?
		    ", the daemon's user, as smarthostd reads it)" : "");
		return EX_CONFIG;
	}
	if (e == NULL) {
		errmsg("no entry for %s port %s%s%s in:", host, port,
		    user != NULL ? " user " : "", user != NULL ? user : "");
		for (i = 0; i < cfg->nauthinfo; i++)
			fprintf(stderr, "  %s\n", cfg->authinfo[i]);
		fprintf(stderr, "add one with: smarthostctl login %s:%s\n",
		    host, port);
		return EX_NOUSER;
	}
	gpg_token = authinfo_is_gpg_token(e->password);
	if (credentials_decrypt(e, err, sizeof(err)) == -1) {
		errmsg("%s", err);
		authinfo_entry_free(e);
		return EX_CONFIG;
	}
	if (json) {
		credentials_json(e, show, gpg_token);
		authinfo_entry_free(e);
		return EX_OK;
	}
	printf("file: %s\n", e->file);
	printf("line: %u\n", e->line);
	if (e->is_default)
		printf("default: yes\n");
	else if (e->host != NULL)
		printf("host: %s\n", e->host);
	if (e->port != NULL)
		printf("port: %s\n", e->port);
	if (e->login != NULL) {
		printf("login: %s\n", e->login);
		printf("user: %s\n", e->login);
	}
	if (e->password == NULL)
		printf("password: missing\n");
	else if (show) {
		printf("password: %s\n", e->password);
		printf("secret: %s\n", e->password);
	} else
		printf("password: present\n");
	if (gpg_token)
		printf("gpg-token: yes\n");
	if (e->smtp_auth != NULL)
		printf("smtp-auth: %s\n", e->smtp_auth);
	fflush(stdout);
	authinfo_entry_free(e);
	return EX_OK;
}

/* ---- prompts ---- */

static int tty_fd = -1;        /* the terminal whose echo we turned off */
static struct termios tty_saved;

static void
tty_restore(void)
{
	if (tty_fd != -1) {
		tcsetattr(tty_fd, TCSAFLUSH, &tty_saved);
		tty_fd = -1;
	}
}

/* A signal while the echo is off: put the terminal back, then die of it. */
static void
tty_signal(int sig)
{
	if (tty_fd != -1)
		tcsetattr(tty_fd, TCSAFLUSH, &tty_saved);
	signal(sig, SIG_DFL);
	raise(sig);
}

struct input {
	int interactive;  /* prompts and answers on the terminal */
	int in;           /* where answers come from */
	FILE *prompt;     /* where prompts go */
};

/*
 * Reads one line into buf (without its line end), one byte at a time, so
 * that nothing beyond the line is consumed and no stdio buffer keeps a
 * copy of a password. Returns 0, or -1 at end of input with nothing read
 * or on an error or an overlong line (errno EMSGSIZE).
 */
static int
read_line(int fd, char *buf, size_t size)
{
	size_t len = 0;
	ssize_t n;
	char ch;

	for (;;) {
		n = read(fd, &ch, 1);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -1;
		if (n == 0) {
			if (len == 0)
				return -1;
			break;
		}
		if (ch == '\n')
			break;
		if (len + 1 >= size) {
			OPENSSL_cleanse(buf, size);
			errno = EMSGSIZE;
			return -1;
		}
		buf[len++] = ch;
	}
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	return 0;
}

/* Asks a question; echo 0 hides the answer on a terminal. */
static int
ask(struct input *in, const char *question, int echo, char *buf,
    size_t size)
{
	struct termios t;
	int r;

	fprintf(in->prompt, "%s", question);
	fflush(in->prompt);
	if (in->interactive && !echo && tcgetattr(in->in, &tty_saved) == 0) {
		t = tty_saved;
		t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
		t.c_lflag |= ICANON;
		tty_fd = in->in;
		if (tcsetattr(in->in, TCSAFLUSH, &t) == -1)
			tty_fd = -1;
	}
	r = read_line(in->in, buf, size);
	if (tty_fd != -1) {
		tty_restore();
		fprintf(in->prompt, "\n");
	} else if (!in->interactive)
		fprintf(in->prompt, "\n");
	fflush(in->prompt);
	return r;
}

/* ---- login: the SMTP session ---- */

struct login {
	struct event_base *base;
	int ready;                /* ready() came: the session is up */
	int closed;
	char mech[64];            /* what AUTH succeeded with */
	char offered[256];        /* the server's AUTH list */
	struct outcome failure;   /* closed() before ready() */
	int timed_out;
	/* check: called at ready(), before the QUIT, to look at the
	 * session; NULL for login */
	void (*seen)(struct smtp_client *c, void *arg);
	void *seen_arg;
};

static void
login_ready(struct smtp_client *c, void *arg)
{
	struct login *l = arg;
	const struct smtp_ehlo *ehlo = smtp_client_ehlo(c);
	const char *mech = smtp_client_auth_mech(c);

	if (l->ready)
		return;
	l->ready = 1;
	if (mech != NULL && l->mech[0] == '\0')
		snprintf(l->mech, sizeof(l->mech), "%s", mech);
	if (ehlo != NULL)
		snprintf(l->offered, sizeof(l->offered), "%s", ehlo->auth);
	if (l->seen != NULL)
		l->seen(c, l->seen_arg);
	/* Nothing to send: the question was whether AUTH works. */
	smtp_client_quit(c);
}

static void
login_authenticated(struct smtp_client *c, const char *mech, void *arg)
{
	struct login *l = arg;

	snprintf(l->mech, sizeof(l->mech), "%s", mech);
}

static void
login_closed(struct smtp_client *c, const struct outcome *o, void *arg)
{
	struct login *l = arg;

	if (!l->ready)
		l->failure = *o;
	l->closed = 1;
	event_base_loopbreak(l->base);
}

static void
login_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct login *l = arg;

	l->timed_out = 1;
	event_base_loopbreak(l->base);
}

static const struct smtp_client_cb login_cb = {
	.ready = login_ready,
	.closed = login_closed,
	.authenticated = login_authenticated,
};

struct login_params {
	const char *host;
	const char *port;
	enum tls_mode tls;
	const char *ca_file;
	int verify;
	const char *helo;
	const char *mechanisms;   /* NULL: the default order */
	int allow_plaintext;
	unsigned timeout_connect;
	unsigned timeout_command;
};

static int
is_numeric_host(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 ||
	    inet_pton(AF_INET6, host, buf) == 1;
}

/*
 * One session to lp's server on its own event loop: connect, TLS, EHLO,
 * AUTH right after EHLO with user and password when user is not NULL,
 * then QUIT at ready(). l (zeroed but for seen) records how it went.
 * Returns 0, or -1 when the TLS context cannot be made (the reason in
 * err).
 */
static int
session_run(const struct login_params *lp, const char *user,
    const char *password, struct login *l, char *err, size_t errlen)
{
	struct smtp_client_params sp;
	struct smtp_client_auth auth;
	struct smtp_client *c;
	struct evdns_base *dns = NULL;
	struct event *timer;
	struct timeval tv;
	SSL_CTX *ctx = NULL;

	if (evthread_use_pthreads() == -1 ||
	    (l->base = event_base_new()) == NULL)
		fatalx("cannot create an event loop");
	if (lp->tls != TLS_MODE_NONE &&
	    (ctx = tls_client_ctx_new(lp->ca_file, lp->verify, err,
	    errlen)) == NULL) {
		event_base_free(l->base);
		return -1;
	}
	if (!is_numeric_host(lp->host)) {
		dns = evdns_base_new(l->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
		if (dns == NULL && (dns = evdns_base_new(l->base, 0)) != NULL)
			evdns_base_load_hosts(dns, NULL);
	}

	memset(&sp, 0, sizeof(sp));
	sp.host = lp->host;
	sp.port = lp->port;
	sp.tls = lp->tls;
	sp.ssl_ctx = ctx;
	sp.helo = lp->helo;
	sp.timeout_connect = lp->timeout_connect;
	sp.timeout_command = lp->timeout_command;
	sp.timeout_data = lp->timeout_command;
	c = smtp_client_new(l->base, dns, &sp, &login_cb, l);
	if (user != NULL) {
		memset(&auth, 0, sizeof(auth));
		auth.user = user;
		auth.secret = password;
		auth.mechanisms = lp->mechanisms;
		auth.allow_plaintext = lp->allow_plaintext;
		auth.first = 1;
		smtp_client_set_auth(c, &auth);
	}
	smtp_client_connect(c);

	/* The client's own timeouts end every stage; this only bounds the
	 * whole in case a server trickles. */
	timer = evtimer_new(l->base, login_timeout, l);
	tv.tv_sec = (time_t)(lp->timeout_connect + 6 * lp->timeout_command);
	tv.tv_usec = 0;
	evtimer_add(timer, &tv);
	while (!l->closed && !l->timed_out)
		if (event_base_dispatch(l->base) == -1)
			break;
	smtp_client_free(c);
	event_free(timer);
	if (dns != NULL)
		evdns_base_free(dns, 0);
	event_base_free(l->base);
	tls_ctx_free(ctx);
	return 0;
}

/*
 * Connects, authenticates right after EHLO with user and password, and
 * QUITs. Returns EX_OK with the mechanism in mech, or an exit code after
 * reporting the failure.
 */
static int
login_try(const struct login_params *lp, const char *user,
    const char *password, char *mech, size_t mechlen)
{
	struct login l;
	const char *usable[SASL_MECH_MAX];
	char err[512];
	int rc;

	memset(&l, 0, sizeof(l));
	if (session_run(lp, user, password, &l, err, sizeof(err)) == -1) {
		errmsg("TLS: %s", err);
		return EX_CONFIG;
	}
	if (l.mech[0] != '\0') {
		snprintf(mech, mechlen, "%s", l.mech);
		rc = EX_OK;
	} else if (l.timed_out) {
		errmsg("%s: no answer in time", lp->host);
		rc = EX_TEMPFAIL;
	} else if (!l.ready) {
		errmsg("%s: %s", lp->host, l.failure.text);
		rc = outcome_sysexit(&l.failure);
		if (rc == EX_OK)
			rc = EX_PROTOCOL;
	} else if (l.offered[0] == '\0') {
		errmsg("%s does not offer authentication (no AUTH in its "
		    "EHLO reply)", lp->host);
		rc = EX_UNAVAILABLE;
	} else if (sasl_choose_order(l.offered, lp->mechanisms,
	    lp->tls != TLS_MODE_NONE, lp->allow_plaintext, usable,
	    SASL_MECH_MAX) == 0) {
		errmsg("%s offers AUTH %s, and none of it can be used%s",
		    lp->host, l.offered, lp->tls == TLS_MODE_NONE ? " without "
		    "TLS (PLAIN and LOGIN need TLS unless the relay sets "
		    "allow_plaintext_auth)" : "");
		rc = EX_UNAVAILABLE;
	} else {
		errmsg("%s: not authenticated (the server offers AUTH %s)",
		    lp->host, l.offered);
		rc = EX_NOPERM;
	}
	return rc;
}

/* ---- login: saving ---- */

/*
 * Appends "machine HOST port PORT login USER password SECRET" to path,
 * creating it 0600 when missing; refuses a file that authinfo_read_file
 * would refuse. Returns EX_OK with the new entry's line in *line.
 */
static int
save_entry(const char *path, const char *host, const char *port,
    const char *user, const char *secret, unsigned *line)
{
	char *qh = NULL, *qp = NULL, *qu = NULL, *qs = NULL, *text = NULL;
	char buf[4096], err[2048], last;
	struct stat st;
	off_t off;
	ssize_t n;
	size_t len;
	unsigned lines = 0;
	int fd = -1, rc = EX_SOFTWARE;

	qh = authinfo_quote(host);
	qp = authinfo_quote(port);
	qu = authinfo_quote(user);
	qs = authinfo_quote(secret);
	if (qh == NULL || qp == NULL || qu == NULL || qs == NULL) {
		errmsg("the %s cannot be written in an authinfo file (a line "
		    "break, or both kinds of quote with a backslash)",
		    qh == NULL ? "host" : qp == NULL ? "port" : qu == NULL ?
		    "user" : "password");
		rc = EX_DATAERR;
		goto out;
	}
	fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY |
	    O_NONBLOCK, 0600);
	if (fd == -1) {
		errmsg("%s: %s", path, strerror(errno));
		rc = EX_CANTCREAT;
		goto out;
	}
	if (fstat(fd, &st) == -1) {
		errmsg("%s: %s", path, strerror(errno));
		rc = EX_IOERR;
		goto out;
	}
	if (file_check(path, &st, err, sizeof(err)) == -1) {
		errmsg("%s", err);
		rc = EX_CONFIG;
		goto out;
	}
	/* Count the lines, and make sure ours starts on a fresh one. */
	last = '\n';
	for (off = 0;; off += n) {
		n = pread(fd, buf, sizeof(buf), off);
		if (n == -1 && errno == EINTR) {
			n = 0;
			continue;
		}
		if (n == -1) {
			errmsg("%s: %s", path, strerror(errno));
			rc = EX_IOERR;
			goto out;
		}
		if (n == 0)
			break;
		for (len = 0; len < (size_t)n; len++)
			if (buf[len] == '\n')
				lines++;
		last = buf[n - 1];
	}
	OPENSSL_cleanse(buf, sizeof(buf));
	if (last != '\n')
		lines++;
	text = xasprintf("%smachine %s port %s login %s password %s\n",
	    last != '\n' ? "\n" : "", qh, qp, qu, qs);
	len = strlen(text);
	if (fileio_write_all(fd, text, len) == -1) {
		errmsg("%s: %s", path, strerror(errno));
		rc = EX_IOERR;
		goto out;
	}
	if (fsync(fd) == -1) {
		errmsg("%s: fsync: %s", path, strerror(errno));
		rc = EX_IOERR;
		goto out;
	}
	*line = lines + 1;
	rc = EX_OK;
out:
	if (fd != -1)
		close(fd);
	free(qh);
	free(qp);
	free(qu);
	xfree_secret_str(qs);
	xfree_secret_str(text);
	return rc;
}

/*
 * After saving: would the daemon find the new entry? It reads only the
 * configured files, the first match wins, and a relay with a configured
 * user only takes entries for that user. Warnings only.
 */
static void
save_check(const char *path, unsigned line, const char *host,
    const char *port, const struct relay_config *rc)
{
	struct authinfo_entry *e = NULL;
	const char *want = rc != NULL ? rc->user : NULL;
	char err[2048];
	size_t i;

	for (i = 0; i < cfg->nauthinfo; i++)
		if (strcmp(cfg->authinfo[i], path) == 0)
			break;
	if (i == cfg->nauthinfo) {
		errmsg("warning: %s is not one of the authinfo files of %s, "
		    "so smarthostd does not read it", path, cfg->file);
		return;
	}
	if (credentials_lookup(host, port, want, 1, &e, err,
	    sizeof(err)) == -1) {
		errmsg("warning: %s", err);
		return;
	}
	if (e == NULL)
		errmsg("warning: smarthostd looks for user %s on %s (relay "
		    "%s), and the new entry is for another user", want, host,
		    rc->name);
	else if (strcmp(e->file, path) != 0 || e->line != line)
		errmsg("warning: %s:%u matches %s port %s first, so "
		    "smarthostd keeps using it: remove or edit that entry",
		    e->file, e->line, host, port);
	authinfo_entry_free(e);
}

/*
 * Whether the entry the daemon would use already holds user and password
 * (a login repeated to check a server, or after an outage): then saving
 * would only add a line that is never read. Says so when it does.
 */
static int
already_saved(const char *host, const char *port,
    const struct relay_config *rc, const char *user, const char *password)
{
	struct authinfo_entry *e = NULL;
	char err[2048];
	int same;

	if (credentials_lookup(host, port, rc != NULL ? rc->user : NULL, 1, &e,
	    err, sizeof(err)) == -1 || e == NULL)
		return 0;
	same = e->login != NULL && e->password != NULL &&
	    strcmp(e->login, user) == 0 && strcmp(e->password, password) == 0;
	if (same)
		printf("already saved in %s, line %u\n", e->file, e->line);
	authinfo_entry_free(e);
	return same;
}

/* ---- login ---- */

/* The configured relay for host (case-insensitive), preferring the one
 * on port when several share the host. NULL if none. */
static const struct relay_config *
relay_for(const char *host, const char *port)
{
	const struct relay_config *found = NULL;
	size_t i;

	for (i = 0; i < cfg->nrelays; i++) {
		const struct relay_config *r = &cfg->relays[i];

		if (r->type != RELAY_TYPE_SMTP || r->host == NULL ||
		    strcasecmp(r->host, host) != 0)
			continue;
		if (port == NULL || (r->port != NULL &&
		    authinfo_port_number(r->port) ==
		    authinfo_port_number(port)))
			return r;
		if (found == NULL)
			found = r;
	}
	return found;
}

/* "host", "host:port", "[v6]", "[v6]:port"; a bare v6 address has no
 * port. The results point into buf. */
static int
split_hostport(char *buf, char **host, char **port)
{
	char *p;

	*port = NULL;
	if (buf[0] == '[') {
		if ((p = strchr(buf, ']')) == NULL)
			return -1;
		*p++ = '\0';
		*host = buf + 1;
		if (*p == ':')
			*port = p + 1;
		else if (*p != '\0')
			return -1;
	} else {
		*host = buf;
		p = strchr(buf, ':');
		if (p != NULL && strchr(p + 1, ':') == NULL) {
			*p = '\0';
			*port = p + 1;
		}
	}
	if (**host == '\0' || (*port != NULL && **port == '\0'))
		return -1;
	return 0;
}

static char *
join_mechanisms(const struct relay_config *rc)
{
	char *s = NULL, *t;
	size_t i;

	for (i = 0; rc != NULL && i < rc->nmechanisms; i++) {
		t = xasprintf("%s%s%s", s != NULL ? s : "", s != NULL ? " " :
		    "", rc->mechanisms[i]);
		free(s);
		s = t;
	}
	return s;
}

/* ---- check: every relay, without sending mail ---- */

#define CHECK_ADDRS_MAX 16

struct check {
	const struct relay_config *rc;
	struct login l;            /* the session's progress */
	char port[16];
	char addrs[CHECK_ADDRS_MAX][INET6_ADDRSTRLEN + 8];
	size_t naddrs;
	char peer[256];
	char tls[128];             /* "TLSv1.3 TLS_AES_256_GCM_SHA384" */
	char subject[256];
	char issuer[256];
	int have_cert;
	int days_left;
	struct smtp_ehlo ehlo;
	int have_ehlo;
	char credentials[256];     /* "FILE:LINE user LOGIN", "" if none */
	const char *auth_learned;  /* "yes", "no", "unknown" */
	char error[1200];          /* why the relay cannot be used */
};

/* Every address host:port resolves to, numerically, as the connect will
 * try them (getaddrinfo's order; /etc/hosts first as the system says). */
static void
check_resolve(struct check *ck)
{
	struct addrinfo hints, *res, *ai;
	char host[INET6_ADDRSTRLEN];
	int e;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_ADDRCONFIG;
	if ((e = getaddrinfo(ck->rc->host, ck->port, &hints, &res)) != 0) {
		snprintf(ck->error, sizeof(ck->error), "cannot resolve %s: %s",
		    ck->rc->host, gai_strerror(e));
		return;
	}
	for (ai = res; ai != NULL && ck->naddrs < CHECK_ADDRS_MAX;
	    ai = ai->ai_next) {
		if (getnameinfo(ai->ai_addr, ai->ai_addrlen, host,
		    sizeof(host), NULL, 0, NI_NUMERICHOST) != 0)
			continue;
		snprintf(ck->addrs[ck->naddrs++], sizeof(ck->addrs[0]),
		    ai->ai_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host,
		    ck->port);
	}
	freeaddrinfo(res);
}

static void
check_x509_name(X509_NAME *name, char *buf, size_t len)
{
	if (name == NULL || X509_NAME_oneline(name, buf, (int)len) == NULL)
		snprintf(buf, len, "unknown");
}

/* What the TLS session says: version and cipher, and the server's
 * certificate. */
static void
check_tls(struct check *ck, const SSL *ssl)
{
	const ASN1_TIME *end;
	X509 *cert;
	int days, secs;

	tls_describe(ssl, ck->tls, sizeof(ck->tls));
	if ((cert = SSL_get1_peer_certificate(ssl)) == NULL)
		return;
	ck->have_cert = 1;
	check_x509_name(X509_get_subject_name(cert), ck->subject,
	    sizeof(ck->subject));
	check_x509_name(X509_get_issuer_name(cert), ck->issuer,
	    sizeof(ck->issuer));
	if ((end = X509_get0_notAfter(cert)) != NULL &&
	    ASN1_TIME_diff(&days, &secs, NULL, end) == 1)
		ck->days_left = days;
	X509_free(cert);
}

/* At ready(): what the session found, while its TLS is up. */
static void
check_seen(struct smtp_client *c, void *arg)
{
	struct check *ck = arg;
	const struct smtp_ehlo *ehlo = smtp_client_ehlo(c);
	const SSL *ssl = smtp_client_ssl(c);

	snprintf(ck->peer, sizeof(ck->peer), "%s", smtp_client_peer(c));
	if (ehlo != NULL) {
		ck->ehlo = *ehlo;
		ck->have_ehlo = 1;
	}
	if (ssl != NULL)
		check_tls(ck, ssl);
}

/* The relay's credentials as the daemon would use them: 0 with *e (NULL:
 * none), or -1 with ck->error. */
static int
check_credentials(struct check *ck, struct authinfo_entry **e)
{
	char err[1024];

	*e = NULL;
	if (ck->rc->auth == AUTH_POLICY_NEVER)
		return 0;
	if (credentials_lookup(ck->rc->host, ck->port, ck->rc->user, 0, e,
	    err, sizeof(err)) == -1 ||
	    (*e != NULL && credentials_decrypt(*e, err, sizeof(err)) == -1)) {
		snprintf(ck->error, sizeof(ck->error), "credentials: %s", err);
		authinfo_entry_free(*e);
		*e = NULL;
		return -1;
	}
	if (*e != NULL && (*e)->password == NULL) {
		authinfo_entry_free(*e);
		*e = NULL;
	}
	if (*e != NULL)
		snprintf(ck->credentials, sizeof(ck->credentials), "%s:%u%s%s",
		    (*e)->file, (*e)->line, (*e)->login != NULL ? " user " :
		    "", (*e)->login != NULL ? (*e)->login : "");
	return 0;
}

/* Connects, TLS, EHLO, AUTH when there are credentials, QUIT. */
static void
check_session(struct check *ck, const struct authinfo_entry *e)
{
	struct login_params lp;
	char *mechs = join_mechanisms(ck->rc), err[512];

	memset(&lp, 0, sizeof(lp));
	lp.host = ck->rc->host;
	lp.port = ck->port;
	lp.tls = ck->rc->tls;
	lp.ca_file = ck->rc->ca_file;
	lp.verify = ck->rc->tls_verify;
	lp.helo = ck->rc->helo != NULL ? ck->rc->helo : cfg->hostname;
	lp.mechanisms = e != NULL && e->smtp_auth != NULL ? e->smtp_auth :
	    mechs;
	lp.allow_plaintext = ck->rc->allow_plaintext_auth;
	lp.timeout_connect = ck->rc->timeout_connect;
	lp.timeout_command = ck->rc->timeout_command;
	ck->l.seen = check_seen;
	ck->l.seen_arg = ck;
	if (session_run(&lp, e != NULL ? (e->login != NULL ? e->login : "") :
	    NULL, e != NULL ? e->password : NULL, &ck->l, err,
	    sizeof(err)) == -1)
		snprintf(ck->error, sizeof(ck->error), "TLS: %s", err);
	else if (ck->l.timed_out)
		snprintf(ck->error, sizeof(ck->error), "no answer in time");
	else if (!ck->l.ready)
		snprintf(ck->error, sizeof(ck->error), "%s",
		    ck->l.failure.text);
	else if (e != NULL && ck->l.mech[0] == '\0')
		snprintf(ck->error, sizeof(ck->error), "not authenticated "
		    "(the server offers AUTH %s)", ck->have_ehlo &&
		    ck->ehlo.auth[0] != '\0' ? ck->ehlo.auth : "nothing");
	free(mechs);
}

/* status lines "auth-required: HOST[:PORT]" (a bare HOST: every port) */
static void
check_learned_line(const char *line, void *arg)
{
	struct check *ck = arg;
	char port[300], any[300];
	int v6 = strchr(ck->rc->host, ':') != NULL;

	snprintf(port, sizeof(port), "auth-required: %s%s%s:%s", v6 ? "[" :
	    "", ck->rc->host, v6 ? "]" : "", ck->port);
	snprintf(any, sizeof(any), "auth-required: %s", ck->rc->host);
	if (strcasecmp(line, port) == 0 || strcasecmp(line, any) == 0)
		ck->auth_learned = "yes";
}

/* Whether the running daemon has learned that the relay requires AUTH. */
static void
check_learned(struct check *ck)
{
	char err[512];

	ck->auth_learned = "no";
	if (control_run(cfg->control_socket, "status", CALL_TIMEOUT,
	    check_learned_line, ck, err, sizeof(err)) != EX_OK)
		ck->auth_learned = "unknown";
}

static const char *const ext_names[] = {
	"PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE", "STARTTLS",
	"ENHANCEDSTATUSCODES", "AUTH", "CHUNKING", "DSN",
};

static void
check_print(const struct check *ck)
{
	size_t i;

	printf("relay: %s\n", ck->rc->name);
	if (ck->rc->type == RELAY_TYPE_MAILDIR)
		printf("maildir: %s\n", ck->rc->maildir);
	else
		printf("server: %s port %s, %s\n", ck->rc->host, ck->port,
		    ck->rc->tls == TLS_MODE_NONE ? "no TLS" :
		    ck->rc->tls == TLS_MODE_IMPLICIT ? "TLS" : "STARTTLS");
	for (i = 0; i < ck->naddrs; i++)
		printf("address: %s\n", ck->addrs[i]);
	if (ck->peer[0] != '\0')
		printf("connected: %s\n", ck->peer);
	if (ck->tls[0] != '\0')
		printf("tls: %s\n", ck->tls);
	if (ck->have_cert) {
		printf("certificate-subject: %s\n", ck->subject);
		printf("certificate-issuer: %s\n", ck->issuer);
		printf("certificate-days-left: %d\n", ck->days_left);
	}
	if (ck->have_ehlo) {
		printf("extensions:");
		for (i = 0; i < sizeof(ext_names) / sizeof(*ext_names); i++)
			if (ck->ehlo.exts & (1u << i))
				printf(" %s", ext_names[i]);
		printf("\n");
		printf("mechanisms: %s\n", ck->ehlo.auth[0] != '\0' ?
		    ck->ehlo.auth : "none");
	}
	printf("credentials: %s\n", ck->credentials[0] != '\0' ?
	    ck->credentials : "none");
	if (ck->l.mech[0] != '\0')
		printf("authenticated: %s\n", ck->l.mech);
	printf("auth-required-learned: %s\n", ck->auth_learned);
	if (ck->error[0] != '\0')
		printf("error: %s\n", ck->error);
	printf("result: %s\n\n", ck->error[0] == '\0' ? "ok" : "failed");
}

static void
check_json(const struct check *ck, struct evbuffer *b)
{
	size_t i;
	int first = 1;

	evbuffer_add(b, "{", 1);
	json_key(b, 1, "relay");
	json_str(b, ck->rc->name);
	json_key(b, 0, "host");
	json_str(b, ck->rc->host);
	json_key(b, 0, "port");
	json_str(b, ck->port);
	json_key(b, 0, "tls_mode");
	json_str(b, ck->rc->tls == TLS_MODE_NONE ? "none" :
	    ck->rc->tls == TLS_MODE_IMPLICIT ? "implicit" : "starttls");
	json_key(b, 0, "addresses");
	evbuffer_add(b, "[", 1);
	for (i = 0; i < ck->naddrs; i++) {
		if (i > 0)
			evbuffer_add(b, ",", 1);
		json_str(b, ck->addrs[i]);
	}
	evbuffer_add(b, "]", 1);
	json_key(b, 0, "connected");
	json_str(b, ck->peer[0] != '\0' ? ck->peer : NULL);
	json_key(b, 0, "tls");
	json_str(b, ck->tls[0] != '\0' ? ck->tls : NULL);
	json_key(b, 0, "certificate");
	if (ck->have_cert) {
		evbuffer_add(b, "{", 1);
		json_key(b, 1, "subject");
		json_str(b, ck->subject);
		json_key(b, 0, "issuer");
		json_str(b, ck->issuer);
		json_key(b, 0, "days_left");
		evbuffer_add_printf(b, "%d}", ck->days_left);
	} else
		evbuffer_add(b, "null", 4);
	json_key(b, 0, "extensions");
	evbuffer_add(b, "[", 1);
	for (i = 0; ck->have_ehlo && i < sizeof(ext_names) /
	    sizeof(*ext_names); i++) {
		if (!(ck->ehlo.exts & (1u << i)))
			continue;
		if (!first)
			evbuffer_add(b, ",", 1);
		first = 0;
		json_str(b, ext_names[i]);
	}
	evbuffer_add(b, "]", 1);
	json_key(b, 0, "mechanisms");
	json_str(b, ck->have_ehlo ? ck->ehlo.auth : NULL);
	json_key(b, 0, "credentials");
	json_str(b, ck->credentials[0] != '\0' ? ck->credentials : NULL);
	json_key(b, 0, "authenticated");
	json_str(b, ck->l.mech[0] != '\0' ? ck->l.mech : NULL);
	json_key(b, 0, "auth_required_learned");
	json_str(b, ck->auth_learned);
	json_key(b, 0, "ok");
	evbuffer_add_printf(b, "%s", ck->error[0] == '\0' ? "true" : "false");
	json_key(b, 0, "error");
	json_str(b, ck->error[0] != '\0' ? ck->error : NULL);
	evbuffer_add(b, "}", 1);
}

/* One relay: fills ck; 1 when the relay can be used. */
static int
check_relay(struct check *ck, const struct relay_config *rc)
{
	struct authinfo_entry *e = NULL;
	int pn;

	memset(ck, 0, sizeof(*ck));
	ck->rc = rc;
	ck->auth_learned = "unknown";
	if (rc->type == RELAY_TYPE_MAILDIR) {
		snprintf(ck->port, sizeof(ck->port), "-");
		if (access(rc->maildir, W_OK | X_OK) == -1)
			snprintf(ck->error, sizeof(ck->error), "maildir %s: %s",
			    rc->maildir, strerror(errno));
		return ck->error[0] == '\0';
	}
	if ((pn = authinfo_port_number(rc->port)) != -1)
		snprintf(ck->port, sizeof(ck->port), "%d", pn);
	else
		snprintf(ck->port, sizeof(ck->port), "%s", rc->port);
	check_resolve(ck);
	check_learned(ck);
	if (ck->error[0] == '\0' && check_credentials(ck, &e) == 0)
		check_session(ck, e);
	authinfo_entry_free(e);
	return ck->error[0] == '\0';
}

static int
cmd_check(int argc, char **argv)
{
	int json = 0, first, rc;
	const struct option opts[] = {
		{ "json", no_argument, &json, 1 },
		{ NULL, 0, NULL, 0 }
	};
	struct evbuffer *b = NULL;
	struct check ck;
	const char *only = NULL;
	size_t i, nchecked = 0, nfailed = 0;

	first = flags_parse(argc, argv, opts);
	if (argc - first > 1)
		usage();
	if (argc - first == 1)
		only = argv[first];
	if (only != NULL && config_relay(cfg, only) == NULL) {
		errmsg("check: no relay \"%s\" in %s", only, cfg->file);
		return EX_USAGE;
	}
	/* The configuration was loaded (and so validated) by main. */
	if ((rc = become_daemon_user()) != EX_OK)
		return rc;
	if (json) {
		if ((b = evbuffer_new()) == NULL)
			fatalx("evbuffer_new");
		evbuffer_add(b, "{", 1);
		json_key(b, 1, "configuration");
		json_str(b, cfg->file);
		json_key(b, 0, "relays");
		evbuffer_add(b, "[", 1);
	} else
		printf("configuration: %s: valid\n\n", cfg->file);
	for (i = 0; i < cfg->nrelays; i++) {
		if (only != NULL && strcmp(cfg->relays[i].name, only) != 0)
			continue;
		if (!check_relay(&ck, &cfg->relays[i]))
			nfailed++;
		if (json) {
			if (nchecked > 0)
				evbuffer_add(b, ",", 1);
			check_json(&ck, b);
		} else
			check_print(&ck);
		nchecked++;
	}
	if (json) {
		evbuffer_add_printf(b, "],\"ok\":%s}\n", nfailed == 0 ?
		    "true" : "false");
		fwrite(evbuffer_pullup(b, -1), 1, evbuffer_get_length(b),
		    stdout);
		evbuffer_free(b);
	} else
		printf("%zu relay%s checked, %zu unusable\n", nchecked,
		    nchecked == 1 ? "" : "s", nfailed);
	return nfailed == 0 ? EX_OK : EX_UNAVAILABLE;
}

/* What "login" was given on its command line. */
struct login_opts {
	const char *target;       /* HOST, HOST:PORT or [ADDRESS]:PORT */
	const char *user;         /* --user, or NULL */
	const char *file;         /* --file, or NULL */
	const char *tls;          /* --tls, or NULL */
	const char *ca_file;      /* --ca-file, or NULL */
	int no_verify;            /* --no-verify */
};

/* login's options into o; anything else, or not exactly one target, is a
 * usage error. */
static void
login_options(int argc, char **argv, struct login_opts *o)
{
	static const struct option opts[] = {
		{ "user", required_argument, NULL, 'u' },
		{ "file", required_argument, NULL, 'f' },
		{ "tls", required_argument, NULL, 't' },
		{ "ca-file", required_argument, NULL, 'C' },
		{ "no-verify", no_argument, NULL, 'n' },
		{ NULL, 0, NULL, 0 }
	};
	int ch;

	memset(o, 0, sizeof(*o));
	optind = 0;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'u':
			o->user = optarg;
			break;
		case 'f':
			o->file = optarg;
			break;
		case 't':
			o->tls = optarg;
			break;
		case 'C':
			o->ca_file = optarg;
			break;
		case 'n':
			o->no_verify = 1;
			break;
		default:
			usage();
		}
	}
	if (argc - optind != 1)
		usage();
	o->target = argv[optind];
}

/*
 * Splits the target arg into host and port (NULL when it names none),
 * both pointing into *target, a copy for the caller to free. Returns
 * EX_OK, or EX_USAGE after saying what is wrong (and *target NULL).
 */
static int
login_target(const char *arg, char **target, char **host, char **port)
{
	*target = xstrdup(arg);
	if (split_hostport(*target, host, port) == -1) {
		errmsg("login: \"%s\" is not HOST, HOST:PORT or [ADDRESS]:PORT",
		    arg);
		goto fail;
	}
	if (*port != NULL && authinfo_port_number(*port) == -1) {
		errmsg("login: \"%s\" is not a port", *port);
		goto fail;
	}
	return EX_OK;
fail:
	free(*target);
	*target = NULL;
	return EX_USAGE;
}

/*
 * The session's parameters: the options first, then the relay configured
 * for host (rc, or NULL), then the defaults. port is the one the target
 * named, or NULL; where the port has a number it is written into portbuf,
 * since that is how the daemon's lookup will see it. lp->mechanisms stays
 * NULL for the caller. Returns EX_OK, or EX_USAGE after saying what is
 * wrong with --tls.
 */
static int
login_params_fill(struct login_params *lp, const struct login_opts *o,
    const struct relay_config *rc, const char *host, const char *port,
    char *portbuf, size_t portlen)
{
	int pn;

	memset(lp, 0, sizeof(*lp));
	lp->host = host;
	lp->tls = rc != NULL ? rc->tls : TLS_MODE_STARTTLS;
	if (o->tls != NULL) {
		if (strcmp(o->tls, "starttls") == 0)
			lp->tls = TLS_MODE_STARTTLS;
		else if (strcmp(o->tls, "implicit") == 0)
			lp->tls = TLS_MODE_IMPLICIT;
		else if (strcmp(o->tls, "none") == 0)
			lp->tls = TLS_MODE_NONE;
		else {
			errmsg("login: --tls must be starttls, implicit or "
			    "none");
			return EX_USAGE;
		}
	}
	/* The port as the daemon's lookup will see it: a number. */
	if (port == NULL)
		port = rc != NULL && o->tls == NULL ? rc->port :
		    lp->tls == TLS_MODE_IMPLICIT ? "465" :
		    lp->tls == TLS_MODE_NONE ? "25" : "587";
	if ((pn = authinfo_port_number(port)) != -1) {
		snprintf(portbuf, portlen, "%d", pn);
		port = portbuf;
	}
	lp->port = port;
	lp->ca_file = o->ca_file != NULL ? o->ca_file : rc != NULL ?
	    rc->ca_file : NULL;
	lp->verify = o->no_verify ? 0 : rc != NULL ? rc->tls_verify : 1;
	lp->helo = rc != NULL && rc->helo != NULL ? rc->helo : cfg->hostname;
	lp->allow_plaintext = rc != NULL ? rc->allow_plaintext_auth : 0;
	lp->timeout_connect = rc != NULL ? rc->timeout_connect :
	    LOGIN_TIMEOUT_CONNECT;
	lp->timeout_command = rc != NULL && rc->timeout_command <
	    LOGIN_TIMEOUT_COMMAND ? rc->timeout_command :
	    LOGIN_TIMEOUT_COMMAND;
	return EX_OK;
}

/* Where login saves without --file: the first configured authinfo file
 * that gpg does not encrypt. NULL, after saying so, when there is none. */
static const char *
login_default_file(void)
{
	size_t i;

	for (i = 0; i < cfg->nauthinfo; i++)
		if (!is_gpg(cfg->authinfo[i]))
			return cfg->authinfo[i];
	errmsg("login: no unencrypted authinfo file in %s; name one with "
	    "--file", cfg->file);
	return NULL;
}

/*
 * Answers come from the terminal, or one per line on stdin (for scripts).
 * *tty is the terminal opened for them, for the caller to close. Returns
 * EX_OK, or EX_NOINPUT when the terminal cannot be opened.
 */
static int
input_open(struct input *in, FILE **tty)
{
	memset(in, 0, sizeof(*in));
	in->interactive = isatty(STDIN_FILENO);
	if (in->interactive) {
		if ((*tty = fopen("/dev/tty", "r+e")) == NULL) {
			errmsg("/dev/tty: %s", strerror(errno));
			return EX_NOINPUT;
		}
		in->in = fileno(*tty);
		in->prompt = *tty;
	} else {
		in->in = STDIN_FILENO;
		in->prompt = stderr;
	}
	return EX_OK;
}

/*
 * The user (user_opt, or asked when that is NULL) and the password for
 * host, into the caller's buffers; the caller wipes the password. Returns
 * EX_OK, or EX_DATAERR when an answer is missing or empty.
 */
static int
login_ask(struct input *in, const char *host, const char *user_opt,
    char *user, size_t userlen, char *password, size_t passwordlen)
{
	char *q;

	if (user_opt != NULL)
		snprintf(user, userlen, "%s", user_opt);
	else {
		q = xasprintf("User for %s: ", host);
		if (ask(in, q, 1, user, userlen) == -1 || user[0] == '\0') {
			free(q);
			errmsg("login: no user given");
			return EX_DATAERR;
		}
		free(q);
	}
	q = xasprintf("Password for %s@%s: ", user, host);
	if (ask(in, q, 0, password, passwordlen) == -1 ||
	    password[0] == '\0') {
		free(q);
		errmsg("login: no password given");
		return EX_DATAERR;
	}
	free(q);
	return EX_OK;
}

/*
 * After a successful login: appends user and password to file when the
 * user says yes, unless the entry the daemon would use holds them
 * already. Returns EX_OK (saved, already saved, or declined) or
 * save_entry's code. *notify is 1 when the daemon has the credentials in
 * a file now and should retry what waits for them, 0 when it was
 * declined or failed.
 */
static int
login_save(struct input *in, const char *file, const char *host,
    const char *port, const struct relay_config *rc, const char *user,
    const char *password, int *notify)
{
	char answer[INPUT_MAX], *q;
	unsigned line;
	int rc_exit;

	*notify = 0;
	if (already_saved(host, port, rc, user, password)) {
		*notify = 1;
		return EX_OK;
	}
	q = xasprintf("Save to %s? [y/N] ", file);
	if (ask(in, q, 1, answer, sizeof(answer)) == -1 ||
	    (strcasecmp(answer, "y") != 0 && strcasecmp(answer, "yes") != 0)) {
		free(q);
		printf("not saved\n");
		return EX_OK;
	}
	free(q);
	if ((rc_exit = save_entry(file, host, port, user, password, &line)) !=
	    EX_OK)
		return rc_exit;
	printf("saved to %s, line %u\n", file, line);
	fflush(stdout);
	save_check(file, line, host, port, rc);
	*notify = 1;
	return EX_OK;
}

/*
 * The daemon re-reads changed files on its own, but mail already deferred
 * for credentials waits for its next try: wake it. Failing that only
 * warns; file is named when the daemon is not running.
 */
static void
login_notify(const char *file)
{
	char answer[INPUT_MAX];

	switch (control_call(cfg->control_socket, "credentials-changed",
	    CALL_TIMEOUT, NULL, NULL, answer, sizeof(answer))) {
	case CONTROL_OK:
		printf("smarthostd retries mail deferred for credentials\n");
		break;
	case CONTROL_UNAVAILABLE:
		if (errno == ENOENT || errno == ECONNREFUSED) {
			printf("smarthostd is not running; it reads %s when "
			    "it starts\n", file);
			break;
		}
		/* FALLTHROUGH */
	case CONTROL_ERROR:
	case CONTROL_FAILED:
		errmsg("warning: could not tell smarthostd: %s (run "
		    "\"smarthostctl credentials-changed\" as root)", answer);
		break;
	}
}

static int
cmd_login(int argc, char **argv)
{
	const struct relay_config *rc;
	struct login_opts o;
	struct login_params lp;
	struct input in;
	char *target = NULL, *host, *port, *mechs = NULL;
	char user[INPUT_MAX], password[INPUT_MAX];
	char mech[64], portbuf[16];
	FILE *tty = NULL;
	int rc_exit, notify;

	login_options(argc, argv, &o);
	if ((rc_exit = login_target(o.target, &target, &host, &port)) != EX_OK)
		return rc_exit;
	rc = relay_for(host, port);
	if ((rc_exit = login_params_fill(&lp, &o, rc, host, port, portbuf,
	    sizeof(portbuf))) != EX_OK) {
		free(target);
		return rc_exit;
	}
	mechs = join_mechanisms(rc);
	lp.mechanisms = mechs;
	if (o.user == NULL && rc != NULL)
		o.user = rc->user;

	if ((rc_exit = become_daemon_user()) != EX_OK)
		goto out;
	if (o.file == NULL && (o.file = login_default_file()) == NULL) {
		rc_exit = EX_CONFIG;
		goto out;
	}
	if ((rc_exit = input_open(&in, &tty)) != EX_OK)
		goto out;
	fprintf(in.prompt, "Logging in to %s port %s (%s%s%s)\n", host,
	    lp.port, lp.tls == TLS_MODE_NONE ? "no TLS" :
	    lp.tls == TLS_MODE_IMPLICIT ? "TLS" : "STARTTLS",
	    rc != NULL ? ", relay " : "", rc != NULL ? rc->name : "");
	if ((rc_exit = login_ask(&in, host, o.user, user, sizeof(user),
	    password, sizeof(password))) != EX_OK)
		goto out;
	if ((rc_exit = login_try(&lp, user, password, mech, sizeof(mech))) !=
	    EX_OK)
		goto out;
	printf("authenticated with %s\n", mech);
	fflush(stdout);
	rc_exit = login_save(&in, o.file, host, lp.port, rc, user, password,
	    &notify);
	if (rc_exit == EX_OK && notify)
		login_notify(o.file);
out:
	OPENSSL_cleanse(password, sizeof(password));
	tty_restore();
	if (tty != NULL)
		fclose(tty);
	free(mechs);
	free(target);
	return rc_exit;
}

/* ---- main ---- */

/* ---- import ---- */

/* Files larger than this are not configuration files. */
#define IMPORT_FILE_MAX (1024 * 1024)

/*
 * Reads path into f (buf NULL when it does not exist). Returns 0, or -1
 * with a message on stderr.
 */
static int
import_read(const char *path, struct import_file *f)
{
	struct stat st;
	char *buf;
	ssize_t n;
	size_t len = 0;
	int fd;

	f->path = path;
	f->buf = NULL;
	f->len = 0;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY |
	    O_NONBLOCK)) == -1) {
		if (errno == ENOENT)
			return 0;
		errmsg("import: %s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) ||
	    st.st_size > IMPORT_FILE_MAX) {
		errmsg("import: %s: not a regular file of at most %d bytes",
		    path, IMPORT_FILE_MAX);
		close(fd);
		return -1;
	}
	buf = xmalloc((size_t)st.st_size + 1);
	while (len < (size_t)st.st_size) {
		n = read(fd, buf + len, (size_t)st.st_size - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	f->buf = buf;
	f->len = len;
	return 0;
}

static void
import_files_free(struct import_file *f, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		/* the files may hold passwords */
		if (f[i].buf != NULL)
			xfree_secret((char *)(uintptr_t)f[i].buf, f[i].len + 1);
		free((char *)(uintptr_t)f[i].path);
	}
	free(f);
}

/* msmtp's own choice of file: the system one for root, else the user's. */
static char *
import_msmtp_default(const char *home)
{
	const char *xdg = getenv("XDG_CONFIG_HOME");
	char *p;

	if (getuid() == 0 || home == NULL)
		return xstrdup("/etc/msmtprc");
	p = xasprintf("%s/.msmtprc", home);
	if (access(p, F_OK) == 0)
		return p;
	free(p);
	p = xdg != NULL && *xdg == '/' ? xasprintf("%s/msmtp/config", xdg) :
	    xasprintf("%s/.config/msmtp/config", home);
	if (access(p, F_OK) == 0)
		return p;
	free(p);
	return xstrdup("/etc/msmtprc");
}

/* Every regular file of nullmailer's directory dir, sorted by name. */
static int
import_nullmailer_files(const char *dir, struct import_file **out,
    size_t *n)
{
	struct dirent **names;
	struct stat st;
	char *path;
	int i, count;

	*out = NULL;
	*n = 0;
	if ((count = scandir(dir, &names, NULL, alphasort)) == -1) {
		errmsg("import: %s: %s", dir, strerror(errno));
		return -1;
	}
	*out = xcalloc((size_t)count + 1, sizeof(**out));
	for (i = 0; i < count; i++) {
		path = xasprintf("%s/%s", dir, names[i]->d_name);
		if (names[i]->d_name[0] == '.' || stat(path, &st) == -1 ||
		    !S_ISREG(st.st_mode) ||
		    import_read(path, &(*out)[*n]) == -1) {
			free(path);
			free(names[i]);
			continue;
		}
		(*n)++;
		free(names[i]);
	}
	free(names);
	return 0;
}

/* Creates dir/name (which must not exist) with mode and text. */
static int
import_write(const char *dir, const char *name, const char *text,
    mode_t mode)
{
	char *path = xasprintf("%s/%s", dir, name);
	int fd, rc = -1;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
	    0600);
	if (fd == -1)
		errmsg("import: %s: %s", path, strerror(errno));
	else if (fchmod(fd, mode) == -1 ||
	    fileio_write_all(fd, text, strlen(text)) == -1 ||
	    fsync(fd) == -1)
		errmsg("import: %s: %s", path, strerror(errno));
	else {
		printf("wrote %s\n", path);
		rc = 0;
	}
	if (fd != -1 && close(fd) == -1 && rc == 0) {
		errmsg("import: %s: %s", path, strerror(errno));
		rc = -1;
	}
	free(path);
	return rc;
}

/*
 * Writes the result's files into dir, none of which may exist yet. Only
 * authinfo holds passwords: it is 0600. The others must stay readable by
 * the daemon's user, which re-reads them on SIGHUP after dropping
 * privileges: 0644, but 0600 for a config that names a command (a careless
 * passwordeval may carry the password itself).
 */
static int
import_write_all(const char *dir, const struct import_result *r)
{
	const char *names[] = { "smarthostd.conf", "authinfo", "sender-map",
		"aliases" };
	const char *texts[] = { r->config, r->authinfo, r->sender_map,
		r->aliases };
	int command = strstr(r->config, "\n    password_command = ") !=
	    NULL || strstr(r->config, "\n    oauth_command = ") != NULL;
	const mode_t modes[] = { command ? 0600 : 0644, 0600, 0644, 0644 };
	char *path;
	size_t i;

	for (i = 0; i < 4; i++) {
		path = xasprintf("%s/%s", dir, names[i]);
		if (texts[i] != NULL && access(path, F_OK) == 0) {
			errmsg("import: %s exists; nothing written (import "
			    "into another directory)", path);
			free(path);
			return -1;
		}
		free(path);
	}
	for (i = 0; i < 4; i++)
		if (texts[i] != NULL && import_write(dir, names[i],
		    texts[i], modes[i]) == -1)
			return -1;
	if (fileio_fsync_dir(dir) == -1)
		errmsg("import: %s: fsync: %s", dir, strerror(errno));
	printf("check it with: smarthostd -t -c %s/smarthostd.conf\n", dir);
	if (r->authinfo != NULL)
		printf("%s/authinfo must belong to the daemon's user (its "
		    "\"user\" setting), mode 0600: chown USER %s/authinfo\n",
		    dir, dir);
	if (command)
		printf("%s/smarthostd.conf names a password command and is "
		    "mode 0600: the daemon's user must be able to read it\n",
		    dir);
	return 0;
}

static int
cmd_import(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "write", required_argument, NULL, 'w' },
		{ NULL, 0, NULL, 0 }
	};
	struct import_opts io;
	struct import_file *files = NULL;
	struct import_result *r = NULL;
	struct passwd *pw = getpwuid(getuid());
	const char *home = getenv("HOME"), *tool;
	char *dir = NULL, *file = NULL, *abs = NULL, *paths[3] = { 0 };
	size_t nfiles = 0, i;
	int ch, rc = EX_OK;

	optind = 0;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'w':
			dir = optarg;
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1 || argc > 2)
		usage();
	tool = argv[0];
	if (home == NULL && pw != NULL)
		home = pw->pw_dir;
	memset(&io, 0, sizeof(io));
	io.home = home;
	io.login = pw != NULL ? pw->pw_name : NULL;
	io.features = import_features();
	if (dir != NULL) {
		/* the config names the files by absolute path */
		if (mkdir(dir, 0755) == -1 && errno != EEXIST) {
			errmsg("import: %s: %s", dir, strerror(errno));
			return EX_CANTCREAT;
		}
		if ((abs = realpath(dir, NULL)) == NULL) {
			errmsg("import: %s: %s", dir, strerror(errno));
			return EX_CANTCREAT;
		}
		io.authinfo_path = paths[0] = xasprintf("%s/authinfo", abs);
		io.sender_map_path = paths[1] = xasprintf("%s/sender-map", abs);
		io.aliases_path = paths[2] = xasprintf("%s/aliases", abs);
	}
	if (strcmp(tool, "msmtp") == 0) {
		file = argc == 2 ? xstrdup(argv[1]) :
		    import_msmtp_default(home);
		files = xcalloc(1, sizeof(*files));
		nfiles = 1;
		if (import_read(xstrdup(file), &files[0]) == -1)
			rc = EX_NOINPUT;
		else if (files[0].buf == NULL) {
			errmsg("import: %s: no such file", file);
			rc = EX_NOINPUT;
		} else
			r = import_msmtp(&files[0], &io);
	} else if (strcmp(tool, "ssmtp") == 0) {
		char *slash;

		file = xstrdup(argc == 2 ? argv[1] : "/etc/ssmtp/ssmtp.conf");
		files = xcalloc(2, sizeof(*files));
		nfiles = 2;
		slash = strrchr(file, '/');
		if (import_read(xstrdup(file), &files[0]) == -1 ||
		    import_read(slash != NULL ? xasprintf("%.*s/revaliases",
		    (int)(slash - file), file) : xstrdup("revaliases"),
		    &files[1]) == -1)
			rc = EX_NOINPUT;
		else if (files[0].buf == NULL) {
			errmsg("import: %s: no such file", file);
			rc = EX_NOINPUT;
		} else
			r = import_ssmtp(&files[0], &files[1], &io);
	} else if (strcmp(tool, "nullmailer") == 0) {
		file = xstrdup(argc == 2 ? argv[1] : "/etc/nullmailer");
		if (import_nullmailer_files(file, &files, &nfiles) == -1)
			rc = EX_NOINPUT;
		else
			r = import_nullmailer(files, nfiles, &io);
	} else {
		errmsg("import: \"%s\" is not msmtp, ssmtp or nullmailer",
		    tool);
		rc = EX_USAGE;
	}
	if (r != NULL) {
		for (i = 0; i < r->nnotes; i++)
			errmsg("import: %s", r->notes[i]);
		if (r->error)
			rc = EX_DATAERR;
		else if (dir != NULL)
			rc = import_write_all(abs, r) == 0 ? EX_OK :
			    EX_CANTCREAT;
		else
			fputs(r->config, stdout);
	}
	import_result_free(r);
	import_files_free(files, nfiles);
	for (i = 0; i < 3; i++)
		free(paths[i]);
	free(abs);
	free(file);
	return rc;
}

static const struct command {
	const char *name;
	int (*run)(int argc, char **argv);
	/* Arguments after the name that main() accepts; -1: the command
	 * checks them itself, or any number. */
	int min_args, max_args;
} commands[] = {
	{ "status", cmd_status, -1, -1 },
	{ "queue", cmd_queue, -1, -1 },
	{ "mailq", cmd_queue, -1, -1 },
	{ "flush", cmd_daemon, -1, -1 },
	{ "show", cmd_show, -1, -1 },
	{ "hold", cmd_daemon, 1, -1 },
	{ "release", cmd_daemon, 1, -1 },
	{ "delete", cmd_delete, 1, -1 },
	{ "reload", cmd_daemon, 0, 0 },
	{ "auth-forget", cmd_auth_forget, 1, 1 },
	{ "credentials-changed", cmd_daemon, 0, 0 },
	{ "metrics", cmd_daemon, 0, 0 },
	{ "credentials", cmd_credentials, -1, -1 },
	{ "login", cmd_login, -1, -1 },
	{ "check", cmd_check, -1, -1 },
	{ "import", cmd_import, -1, -1 },
};

int
main(int argc, char *argv[])
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };
	static const struct option long_opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "debug", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *file = NULL;
	const struct command *cmd = NULL;
	char err[1024];
	size_t i;
	int ch, rc, debug = 0;

	/* login holds a password in memory: no core file may keep it. */
	if (daemon_disable_core_dumps() == -1)
		perror("smarthostctl: cannot disable core dumps");
	while ((ch = getopt_long(argc, argv, "+c:dhV", long_opts, NULL)) !=
	    -1) {
		switch (ch) {
		case 'c':
			file = optarg;
			break;
		case 'd':
			debug = 1;
			break;
		case 'h':
			usage_print(stdout);
			return EX_OK;
		case 'V':
			printf("smarthostctl %s\n", PACKAGE_VERSION);
			return EX_OK;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	/* -d: the SMTP trace of login on stderr (AUTH payloads redacted). */
	log_init("smarthostctl", debug);
	if (argc < 1)
		usage();
	if (strcmp(argv[0], "help") == 0) {
		usage_print(stdout);
		return EX_OK;
	}
	for (i = 0; i < sizeof(commands) / sizeof(*commands); i++)
		if (strcmp(commands[i].name, argv[0]) == 0)
			cmd = &commands[i];
	if (cmd == NULL) {
		errmsg("unknown command \"%s\"", argv[0]);
		usage();
	}
	if ((cmd->min_args != -1 && argc - 1 < cmd->min_args) ||
	    (cmd->max_args != -1 && argc - 1 > cmd->max_args))
		usage();
	signal(SIGPIPE, SIG_IGN);
	for (i = 0; i < sizeof(sigs) / sizeof(*sigs); i++)
		signal(sigs[i], tty_signal);
	/* import makes a configuration: it needs none */
	if (cmd->run != cmd_import &&
	    (cfg = config_load_default(file, DEFAULT_CONFIG, NULL, 0, &file,
	    err, sizeof(err))) == NULL) {
		errmsg("%s", err);
		return EX_CONFIG;
	}
	rc = cmd->run(argc, argv);
	if (fflush(stdout) == EOF && rc == EX_OK) {
		errmsg("stdout: %s", strerror(errno));
		rc = EX_IOERR;
	}
	config_free(cfg);
	return rc;
}
