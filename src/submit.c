/*
 * sendmail's side of submission: the command line, a blocking SMTP client
 * for one message to the daemon, the -bs relay and the postdrop helper.
 * Everything blocks with a deadline (poll); nothing here runs inside the
 * daemon. A message is only ever reported submitted after the daemon's
 * 250 to the end of DATA or postdrop's exit status 0.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "localsmtp.h"
#include "message.h"
#include "smtp_proto.h"
#include "submit.h"
#include "xmalloc.h"

/* ---- the command line ---- */

/* Flags sendmail or Postfix accept that change nothing here:
 * -G (gateway), -U (initial submission), -n (no aliasing), -m (me too),
 * -c, -x. */
#define IGNORED_FLAGS "GUnmcx"
/* Options with an argument that change nothing here: -A (which .cf),
 * -B (body type), -e (error mode), -h (hop count), -L (log tag), -N (DSN
 * notify), -O (option=value), -p (protocol), -R (DSN return), -V (envid),
 * -X (traffic log). */
#define IGNORED_WITH_ARG "ABehLNOpRVX"

static const char *
base_name(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash != NULL ? slash + 1 : path;
}

static int
set_mode(struct submit_opts *o, const char *arg, char *err, size_t errlen)
{
	if (strcmp(arg, "m") == 0)
		o->mode = SUBMIT_DELIVER;
	else if (strcmp(arg, "p") == 0)
		o->mode = SUBMIT_QUEUE;
	else if (strcmp(arg, "s") == 0)
		o->mode = SUBMIT_SMTP;
	else if (strcmp(arg, "i") == 0)
		o->mode = SUBMIT_ALIASES;
	else {
		snprintf(err, errlen, "-b%s is not supported (only -bm, -bp, "
		    "-bs and -bi are)", arg);
		return -1;
	}
	return 0;
}

/* -q alone, -qRsite, -qSsender, -qIid, -qf: flush everything (the daemon
 * cannot select); -qINTERVAL (a daemon's run interval): nothing to do. */
static void
set_queue_run(struct submit_opts *o, const char *arg)
{
	if (arg[0] >= '0' && arg[0] <= '9')
		o->mode = SUBMIT_NOTHING;
	else
		o->mode = SUBMIT_FLUSH;
}

/* Handles option c with argument arg. */
static int
option_arg(struct submit_opts *o, char c, const char *arg, char *err,
    size_t errlen)
{
	switch (c) {
	case 'b':
		return set_mode(o, arg, err, errlen);
	case 'C':
		o->config = arg;
		break;
	case 'f':
	case 'r':
		o->sender = arg;
		break;
	case 'F':
		o->fullname = arg;
		break;
	case 'o':
		/* -oi is -i; -oem, -odb, -oQ... are sendmail.cf options. */
		if (arg[0] == 'i')
			o->ignore_dots = 1;
		break;
	}
	return 0;
}

/* One argument of grouped option letters. Returns 0, or -1 with err. */
static int
option_group(struct submit_opts *o, int argc, char **argv, int *i, char *err,
    size_t errlen)
{
	const char *a = argv[*i], *arg;
	size_t j;
	char c;

	for (j = 1; a[j] != '\0'; j++) {
		c = a[j];
		if (c == 't' || c == 'i' || c == 'v' || c == 'I' ||
		    strchr(IGNORED_FLAGS, c) != NULL) {
			if (c == 't')
				o->extract = 1;
			else if (c == 'i')
				o->ignore_dots = 1;
			else if (c == 'v')
				o->verbose = 1;
			else if (c == 'I')
				o->mode = SUBMIT_ALIASES;
			continue;
		}
		if (c == 'q') {
			set_queue_run(o, a + j + 1);
			return 0;
		}
		if (c == 'd')   /* sendmail's debug flags, attached: ignored */
			return 0;
		if (strchr("bCfFro" IGNORED_WITH_ARG, c) == NULL) {
			snprintf(err, errlen, "unknown option -%c", c);
			return -1;
		}
		if (a[j + 1] != '\0')
			arg = a + j + 1;
		else if (*i + 1 < argc)
			arg = argv[++*i];
		else {
			snprintf(err, errlen, "option -%c needs an argument",
			    c);
			return -1;
		}
		return option_arg(o, c, arg, err, errlen);
	}
	return 0;
}

int
submit_opts_parse(int argc, char **argv, struct submit_opts *o, char *err,
    size_t errlen)
{
	const char *name = argc > 0 ? base_name(argv[0]) : "sendmail";
	int i;

	memset(o, 0, sizeof(*o));
	o->mode = SUBMIT_DELIVER;
	if (strcmp(name, "mailq") == 0)
		o->mode = SUBMIT_QUEUE;
	else if (strcmp(name, "newaliases") == 0)
		o->mode = SUBMIT_ALIASES;
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (argv[i][0] != '-' || argv[i][1] == '\0')
			break;
		if (option_group(o, argc, argv, &i, err, errlen) == -1)
			return -1;
	}
	o->rcpts = argv + i;
	o->nrcpts = (size_t)(argc - i);
	if (o->nrcpts > 0 && o->mode != SUBMIT_DELIVER) {
		snprintf(err, errlen, "recipients are only taken when sending "
		    "a message (-bm), not with %s", o->mode == SUBMIT_QUEUE ?
		    "-bp" : o->mode == SUBMIT_SMTP ? "-bs" :
		    o->mode == SUBMIT_ALIASES ? "-bi" : "-q");
		return -1;
	}
	return 0;
}

/* ---- connecting ---- */

const struct listen_config *
submit_listener(const struct config *cfg)
{
	size_t i;

	for (i = 0; i < cfg->nlisten; i++)
		if (cfg->listen[i].kind == LISTEN_UNIX)
			return &cfg->listen[i];
	return cfg->nlisten > 0 ? &cfg->listen[0] : NULL;
}

const char *
submit_listener_name(const struct listen_config *l)
{
	static char name[512];

	if (l->kind == LISTEN_UNIX)
		snprintf(name, sizeof(name), "unix:%s", l->path);
	else if (strchr(l->address, ':') != NULL)
		snprintf(name, sizeof(name), "[%s]:%s", l->address,
		    l->port != NULL ? l->port : "25");
	else
		snprintf(name, sizeof(name), "%s:%s", l->address,
		    l->port != NULL ? l->port : "25");
	return name;
}

/* Waits until fd is ready for events or the deadline passes (ETIMEDOUT). */
static int
wait_fd(int fd, short events, const struct timespec *deadline)
{
	struct pollfd pfd = { fd, events, 0 };
	struct timespec now;
	long ms;
	int r;

	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		ms = (deadline->tv_sec - now.tv_sec) * 1000 +
		    (deadline->tv_nsec - now.tv_nsec) / 1000000;
		if (ms <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		r = poll(&pfd, 1, ms > 60000 ? 60000 : (int)ms);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1)
			return -1;
		if (r > 0)
			return 0;
	}
}

static void
deadline_in(struct timespec *d, unsigned seconds)
{
	clock_gettime(CLOCK_MONOTONIC, d);
	d->tv_sec += seconds;
}

/* A non-blocking connect finished within the deadline. */
static int
connect_wait(int fd, const struct sockaddr *sa, socklen_t len,
    unsigned timeout)
{
	struct timespec deadline;
	socklen_t elen = sizeof(int);
	int e = 0;

	if (connect(fd, sa, len) == 0)
		return 0;
	if (errno != EINPROGRESS)
		return -1;
	deadline_in(&deadline, timeout);
	if (wait_fd(fd, POLLOUT, &deadline) == -1)
		return -1;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) == -1)
		return -1;
	if (e != 0) {
		errno = e;
		return -1;
	}
	return 0;
}

static int
set_nonblock(int fd)
{
	int flags = fcntl(fd, F_GETFL);

	return flags == -1 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int
submit_connect(const struct listen_config *l, unsigned timeout)
{
	struct addrinfo hints, *res = NULL;
	struct sockaddr_un sun;
	int fd = -1, saved;

	if (l->kind == LISTEN_UNIX) {
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		if (strlen(l->path) >= sizeof(sun.sun_path)) {
			errno = ENAMETOOLONG;
			return -1;
		}
		memcpy(sun.sun_path, l->path, strlen(l->path));
		/* A blocking connect: on a Unix socket EAGAIN means a full
		 * backlog, not a connection in progress. */
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd != -1 && connect(fd, (struct sockaddr *)&sun,
		    sizeof(sun)) == 0 && set_nonblock(fd) == 0)
			return fd;
	} else {
		memset(&hints, 0, sizeof(hints));
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
		if (getaddrinfo(l->address, l->port != NULL ? l->port : "25",
		    &hints, &res) != 0) {
			errno = EINVAL;
			return -1;
		}
		fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC |
		    SOCK_NONBLOCK, 0);
		if (fd != -1 && connect_wait(fd, res->ai_addr,
		    res->ai_addrlen, timeout) == 0) {
			freeaddrinfo(res);
			return fd;
		}
		freeaddrinfo(res);
	}
	saved = errno;
	if (fd != -1)
		close(fd);
	errno = saved;
	return -1;
}

int
submit_unreachable(int e)
{
	return e == ENOENT || e == ECONNREFUSED || e == EACCES ||
	    e == ENOTDIR || e == ENOTSOCK || e == EPERM;
}

/* ---- the SMTP client ---- */

struct conn {
	int fd;
	unsigned timeout;
	FILE *trace;
	char in[8192];
	size_t inlen;
	struct smtp_reply_parser parser;
};

static int
conn_write(struct conn *c, const char *p, size_t n)
{
	struct timespec deadline;
	ssize_t w;

	deadline_in(&deadline, c->timeout);
	while (n > 0) {
		w = send(c->fd, p, n, MSG_NOSIGNAL);
		if (w == -1 && errno == EINTR)
			continue;
		if (w == -1 && errno == EAGAIN) {
			if (wait_fd(c->fd, POLLOUT, &deadline) == -1)
				return -1;
			continue;
		}
		if (w == -1)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Reads one complete reply into c->parser.reply. 0, or -1 with errno
 * (EPROTO for a malformed reply, ECONNRESET for a close). */
static int
conn_reply(struct conn *c)
{
	struct timespec deadline;
	enum smtp_reply_status st;
	char *lf;
	size_t n;
	ssize_t r;

	deadline_in(&deadline, c->timeout);
	smtp_reply_parser_init(&c->parser);
	for (;;) {
		while ((lf = memchr(c->in, '\n', c->inlen)) != NULL) {
			n = (size_t)(lf - c->in);
			if (n > 0 && c->in[n - 1] == '\r')
				n--;
			if (c->trace != NULL)
				fprintf(c->trace, "<<< %.*s\n", (int)n, c->in);
			st = smtp_reply_feed(&c->parser, c->in, n);
			c->inlen -= (size_t)(lf + 1 - c->in);
			memmove(c->in, lf + 1, c->inlen);
			if (st == SMTP_REPLY_DONE)
				return 0;
			if (st == SMTP_REPLY_ERROR ||
			    st == SMTP_REPLY_TOO_LONG) {
				errno = EPROTO;
				return -1;
			}
		}
		if (c->inlen == sizeof(c->in)) {
			errno = EPROTO;
			return -1;
		}
		if (wait_fd(c->fd, POLLIN, &deadline) == -1)
			return -1;
		r = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);
		if (r == -1 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r == -1)
			return -1;
		if (r == 0) {
			errno = ECONNRESET;
			return -1;
		}
		c->inlen += (size_t)r;
	}
}

/* Sends a command line and reads its reply; -1 with errno on I/O
 * failure. */
static int
conn_command(struct conn *c, const char *line)
{
	if (c->trace != NULL)
		fprintf(c->trace, ">>> %s\n", line);
	if (conn_write(c, line, strlen(line)) == -1 ||
	    conn_write(c, "\r\n", 2) == -1)
		return -1;
	return conn_reply(c);
}

/* An I/O failure during step into out. */
static void
io_failed(struct outcome *out, const char *step)
{
	if (errno == EPROTO)
		outcome_set(out, OUTCOME_TEMPORARY, OC_PROTOCOL, "%s: "
		    "malformed reply from smarthostd", step);
	else if (errno == ETIMEDOUT)
		outcome_set(out, OUTCOME_TEMPORARY, OC_TIMEOUT, "%s: no reply "
		    "from smarthostd in %u seconds", step, SUBMIT_TIMEOUT);
	else
		outcome_set(out, OUTCOME_TEMPORARY, OC_PROTOCOL, "%s: "
		    "connection to smarthostd lost: %s", step,
		    strerror(errno));
}

/* Whether reply code is the expected one; else sets out from the reply
 * with step in front. */
static int
reply_is(struct conn *c, int expected, const char *step, struct outcome *out)
{
	const struct smtp_reply *r = &c->parser.reply;
	enum outcome_status status;
	enum outcome_class class;

	if (r->code == expected)
		return 1;
	outcome_from_reply(out, r->code, r->enhanced, r->text);
	status = out->status;
	class = out->class;
	if (status == OUTCOME_OK) { /* a 2xx where another was due */
		status = OUTCOME_TEMPORARY;
		class = OC_PROTOCOL;
	}
	outcome_set(out, status, class, "%s: %d%s%s %s", step, r->code,
	    r->enhanced[0] != '\0' ? " " : "", r->enhanced, r->text);
	out->code = r->code;
	snprintf(out->enhanced, sizeof(out->enhanced), "%s", r->enhanced);
	return 0;
}

/* The envelope's MAIL FROM command, with the parameters that apply. */
static char *
mail_command(const struct submit_envelope *env, const struct smtp_ehlo *e,
    const char *msg, size_t len)
{
	char size[48] = "", *cmd;
	int utf8 = 0;
	size_t i;

	if (e->exts & SMTP_EXT_SIZE)
		snprintf(size, sizeof(size), " SIZE=%zu", len);
	if (e->exts & SMTP_EXT_SMTPUTF8) {
		utf8 = message_has_8bit(env->sender, strlen(env->sender));
		for (i = 0; i < env->nrcpts && !utf8; i++)
			utf8 = message_has_8bit(env->rcpts[i], strlen(env->rcpts[i]));
	}
	cmd = xasprintf("MAIL FROM:<%s>%s%s%s", env->sender, size,
	    (e->exts & SMTP_EXT_8BITMIME) && message_has_8bit(msg, len) ?
	    " BODY=8BITMIME" : "", utf8 ? " SMTPUTF8" : "");
	return cmd;
}

/* The message, CRLF and dot-stuffed, then the final dot. */
static int
send_body(struct conn *c, const char *msg, size_t len)
{
	struct smtp_body_encoder enc;
	char *out = xmalloc(2 * 65536 + 8);
	size_t off = 0, n, w;
	int rc = 0;

	smtp_body_encoder_init(&enc);
	while (off < len && rc == 0) {
		n = len - off < 65536 ? len - off : 65536;
		w = smtp_body_encode(&enc, msg + off, n, out);
		rc = conn_write(c, out, w);
		off += n;
	}
	if (rc == 0) {
		w = smtp_body_encode_finish(&enc, out);
		rc = conn_write(c, out, w);
	}
	free(out);
	if (rc == 0 && c->trace != NULL)
		fprintf(c->trace, ">>> (%zu bytes of message)\n>>> .\n", len);
	return rc;
}

/* The steps after the greeting; the transaction ends in out. */
static void
transaction(struct conn *c, const struct submit_envelope *env,
    const char *msg, size_t len, struct outcome *out)
{
	struct smtp_ehlo ehlo;
	char *cmd, step[SMTP_PATH_MAX + 16];
	size_t i;

	if (conn_command(c, "EHLO localhost") == -1)
		return io_failed(out, "EHLO");
	if (!reply_is(c, 250, "EHLO", out))
		return;
	smtp_ehlo_parse(c->parser.reply.text, &ehlo);
	cmd = mail_command(env, &ehlo, msg, len);
	snprintf(step, sizeof(step), "MAIL FROM:<%s>", env->sender);
	if (conn_command(c, cmd) == -1) {
		free(cmd);
		return io_failed(out, step);
	}
	free(cmd);
	if (!reply_is(c, 250, step, out))
		return;
	for (i = 0; i < env->nrcpts; i++) {
		snprintf(step, sizeof(step), "RCPT TO:<%s>", env->rcpts[i]);
		if (conn_command(c, step) == -1)
			return io_failed(out, step);
		if (c->parser.reply.code != 251 &&
		    !reply_is(c, 250, step, out))
			return;
	}
	if (conn_command(c, "DATA") == -1)
		return io_failed(out, "DATA");
	if (!reply_is(c, 354, "DATA", out))
		return;
	if (send_body(c, msg, len) == -1 || conn_reply(c) == -1)
		return io_failed(out, "end of DATA");
	if (!reply_is(c, 250, "end of DATA", out))
		return;
	outcome_from_reply(out, c->parser.reply.code,
	    c->parser.reply.enhanced, c->parser.reply.text);
}

enum submit_result
submit_smtp(int fd, const struct submit_envelope *env, const char *msg,
    size_t len, unsigned timeout, FILE *trace, struct outcome *out)
{
	struct conn *c = xcalloc(1, sizeof(*c));
	enum submit_result res = SUBMIT_DONE;

	c->fd = fd;
	c->timeout = timeout;
	c->trace = trace;
	outcome_set(out, OUTCOME_TEMPORARY, OC_PROTOCOL, "no transaction");
	if (conn_reply(c) == -1) {
		if (errno == ECONNRESET)
			res = SUBMIT_REFUSED;
		io_failed(out, "greeting");
	} else if (reply_is(c, 220, "greeting", out))
		transaction(c, env, msg, len, out);
	else if (c->parser.reply.code == 421)
		res = SUBMIT_REFUSED;
	/* A refused step leaves the transaction open: QUIT discards it. A
	 * QUIT that fails changes nothing once DATA was answered, and on a
	 * lost connection it fails at once. */
	c->timeout = 10;
	(void)conn_command(c, "QUIT");
	free(c);
	return res;
}

/* ---- -bs ---- */

/* Tracks the start of the daemon's last line, so that the end of the
 * session can be told from its last reply. */
struct last_line {
	char text[4];
	size_t len;
	int at_bol;
	char done[4]; /* the first bytes of the last complete line */
};

static void
last_line_feed(struct last_line *l, const char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (l->at_bol) {
			l->len = 0;
			l->at_bol = 0;
		}
		if (p[i] == '\n') {
			memcpy(l->done, l->text, sizeof(l->done));
			l->at_bol = 1;
			continue;
		}
		if (l->len < sizeof(l->text))
			l->text[l->len++] = p[i];
	}
}

int
submit_relay(int fd, int in, int out)
{
	struct pollfd pfd[2];
	struct last_line last = { "", 0, 1, "" };
	char buf[16384];
	ssize_t n;
	int in_open = 1, flags;

	/* Plain blocking writes: replies are small, and a message larger
	 * than the socket buffer must wait for the daemon, not fail. */
	if ((flags = fcntl(fd, F_GETFL)) == -1 ||
	    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == -1)
		return -1;
	for (;;) {
		pfd[0].fd = fd;
		pfd[0].events = POLLIN;
		pfd[1].fd = in_open ? in : -1;
		pfd[1].events = POLLIN;
		pfd[0].revents = pfd[1].revents = 0;
		if (poll(pfd, 2, -1) == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (pfd[0].revents != 0) {
			n = recv(fd, buf, sizeof(buf), 0);
			if (n == -1 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n <= 0)
				return n == 0 || errno == ECONNRESET ?
				    memcmp(last.done, "221", 3) != 0 : -1;
			last_line_feed(&last, buf, (size_t)n);
			if (fileio_write_all(out, buf, (size_t)n) == -1)
				return -1;
		}
		if (pfd[1].revents != 0) {
			n = read(in, buf, sizeof(buf));
			if (n == -1 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (n <= 0) {
				/* The client is done: tell the daemon. */
				shutdown(fd, SHUT_WR);
				in_open = 0;
				continue;
			}
			if (fileio_write_all(fd, buf, (size_t)n) == -1)
				return -1;
		}
	}
}

/* Writes out what ls has to say. */
static int
local_flush(struct localsmtp *ls, int out)
{
	const char *p;
	size_t n;

	p = localsmtp_output(ls, &n);
	if (n > 0 && fileio_write_all(out, p, n) == -1)
		return -1;
	localsmtp_output_clear(ls);
	return 0;
}

int
submit_local(struct localsmtp *ls, int in, int out, unsigned timeout)
{
	struct timespec deadline;
	char buf[16384];
	ssize_t n;
	int ended = 0;

	while (!ended) {
		if (local_flush(ls, out) == -1)
			return -1;
		deadline_in(&deadline, timeout);
		if (wait_fd(in, POLLIN, &deadline) == -1)
			return -1;
		n = read(in, buf, sizeof(buf));
		if (n == -1 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n == -1)
			return -1;
		if (n == 0)
			break;
		ended = localsmtp_input(ls, buf, (size_t)n);
	}
	if (local_flush(ls, out) == -1)
		return -1;
	return localsmtp_quit_seen(ls) ? 0 : 1;
}

/* ---- postdrop ---- */

static void
argv_free(char **argv)
{
	size_t i;

	for (i = 0; argv[i] != NULL; i++)
		free(argv[i]);
	free(argv);
}

int
submit_postdrop(const char *path, const char *config,
    const struct submit_envelope *env, const char *msg, size_t len,
    char *err, size_t errlen)
{
	char **argv;
	size_t i, k = 0;
	pid_t pid;
	int p[2], status, saved, werr = 0;

	if (access(path, X_OK) == -1) {
		snprintf(err, errlen, "cannot run %s: %s", path,
		    strerror(errno));
		return -1;
	}
	argv = xcalloc(env->nrcpts + 8, sizeof(*argv));
	argv[k++] = xstrdup(path);
	if (config != NULL) {
		argv[k++] = xstrdup("-C");
		argv[k++] = xstrdup(config);
	}
	argv[k++] = xstrdup("-f");
	argv[k++] = xstrdup(env->sender);
	argv[k++] = xstrdup("--");
	for (i = 0; i < env->nrcpts; i++)
		argv[k++] = xstrdup(env->rcpts[i]);
	argv[k] = NULL;
	if (pipe2(p, O_CLOEXEC) == -1 || (pid = fork()) == -1) {
		snprintf(err, errlen, "cannot run %s: %s", path,
		    strerror(errno));
		argv_free(argv);
		return -1;
	}
	if (pid == 0) {
		/* Its standard output is ours only to say nothing on: with
		 * -bs ours is the SMTP client's. */
		if (dup2(p[0], STDIN_FILENO) == -1 ||
		    dup2(STDERR_FILENO, STDOUT_FILENO) == -1)
			_exit(126);
		execv(path, argv);
		_exit(127);
	}
	argv_free(argv);
	close(p[0]);
	/* A helper that exits early (EPIPE) reports why itself. */
	if (fileio_write_all(p[1], msg, len) == -1 && errno != EPIPE)
		werr = errno;
	close(p[1]);
	while (waitpid(pid, &status, 0) == -1) {
		if (errno != EINTR) {
			saved = errno;
			snprintf(err, errlen, "waiting for %s: %s", path,
			    strerror(saved));
			return -1;
		}
	}
	if (WIFSIGNALED(status)) {
		snprintf(err, errlen, "%s died of signal %d", path,
		    WTERMSIG(status));
		return -1;
	}
	if (WEXITSTATUS(status) == 127) {
		snprintf(err, errlen, "%s could not be run", path);
		return -1;
	}
	if (WEXITSTATUS(status) == 0 && werr != 0) {
		/* It cannot have the whole message. */
		snprintf(err, errlen, "writing to %s: %s", path,
		    strerror(werr));
		return -1;
	}
	return WEXITSTATUS(status);
}
