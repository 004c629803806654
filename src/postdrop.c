/*
 * smarthost-postdrop: puts one message into the maildrop directory while
 * the daemon is not running, for smarthost-sendmail (and nothing else).
 *
 *	smarthost-postdrop [-C config] [-f sender] -- rcpt...  < message
 *
 * The sender defaults to the caller's login; a sender without a domain
 * gets "@mail_domain".
 * It is installed setgid to maildrop_group, the only group that may
 * create files in the maildrop (mode 1730): users can add files but not
 * list, read or remove anyone's. Being setgid it trusts nothing from the
 * caller: the environment is cleared, fds 0-2 are made to exist, and a
 * config given with -C is used with the group only if root controls it:
 * the file and every directory above it (symbolic links resolved first)
 * are owned by root and writable by nobody else (a root-owned directory
 * with the sticky bit, like /tmp, counts as safe: others cannot replace
 * its entries). Any other config makes postdrop give up the group first,
 * so a user-written config can only make it write where the user could
 * write anyway. The daemon checks every file again (owner, format,
 * length) before importing it; postdrop's checks only make honest mistakes
 * fail early with a clear message.
 *
 * The message is written to a temporary name (".tmp.NAME", which the
 * daemon ignores), fsynced, renamed to NAME and the directory fsynced; only
 * then does postdrop exit 0. Bare LF line ends become CRLF, and a final
 * line end is added when missing, as the SMTP path does. Failures exit
 * with a sysexits code and one line on stderr, and leave no file behind.
 */
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "ac-config.h"
#include "config.h"
#include "dropfile.h"
#include "fileio.h"
#include "smtp_proto.h"
#include "xmalloc.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define DEFAULT_CONFIG SYSCONFDIR "/smarthostd/smarthostd.conf"
#define IOBUF 65536

/*
 * LeakSanitizer cannot work in a set-group-ID process (the kernel makes it
 * non-dumpable, so it cannot inspect itself) and would fail every run of
 * a sanitizer build; postdrop's leaks are checked when it runs without the
 * bit.
 */
#if defined(__SANITIZE_ADDRESS__)
#define POSTDROP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POSTDROP_ASAN 1
#endif
#endif
#ifdef POSTDROP_ASAN
int __lsan_is_turned_off(void);

int
__lsan_is_turned_off(void)
{
	return getegid() != getgid();
}
#endif

/* The sender, at file scope so that it stays reachable (for
 * LeakSanitizer) when die() exits from deep inside main(). */
static char *sender;

/* For the signal handler: the temporary file to remove. */
static volatile sig_atomic_t tmp_active;
static int tmp_dirfd = -1;
static char tmp_name[96];

static void
tmp_remove(void)
{
	if (tmp_active) {
		(void)unlinkat(tmp_dirfd, tmp_name, 0);
		tmp_active = 0;
	}
}

static void die(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

static void
die(int code, const char *fmt, ...)
{
	va_list ap;

	tmp_remove();
	fputs("smarthost-postdrop: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static void
on_signal(int sig)
{
	if (tmp_active)
		(void)unlinkat(tmp_dirfd, tmp_name, 0);
	_exit(EX_TEMPFAIL);
}

/* The hygiene of a set-group-ID program. */
static void
sanitize(void)
{
	struct sigaction sa;
	int fd;

	/* A closed 0, 1 or 2 would make our next open() stand in for it. */
	while ((fd = open("/dev/null", O_RDWR)) >= 0 && fd <= 2)
		;
	if (fd > 2)
		close(fd);
	if (clearenv() != 0)
		die(EX_OSERR, "cannot clear the environment");
	umask(077);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGQUIT, &sa, NULL);
	sigaction(SIGXFSZ, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* Gives up the set-group-ID group for good. */
static void
drop_group(void)
{
	gid_t g = getgid();

	if (setresgid(g, g, g) == -1)
		die(EX_OSERR, "cannot drop the maildrop group: %s",
		    strerror(errno));
}

/*
 * The resolved path of file if root controls it (see above), else NULL.
 * Resolving first and then checking every component closes the window in
 * which a user could swap a symbolic link of theirs between the check and
 * the read: no component of the resolved path is theirs to change.
 */
static char *
config_trusted(const char *file)
{
	struct stat st;
	char *real, *p;
	int sticky_ok;

	if ((real = realpath(file, NULL)) == NULL)
		return NULL;
	if (stat(real, &st) == -1 || !S_ISREG(st.st_mode) || st.st_uid != 0 ||
	    (st.st_mode & 022) != 0)
		goto untrusted;
	p = xstrdup(real);
	for (;;) {
		char *slash = strrchr(p, '/');

		if (slash == NULL)
			break;
		if (slash == p)
			slash[1] = '\0';
		else
			*slash = '\0';
		sticky_ok = 0;
		if (stat(p, &st) == -1 || st.st_uid != 0) {
			free(p);
			goto untrusted;
		}
		sticky_ok = (st.st_mode & S_ISVTX) != 0;
		if ((st.st_mode & 022) != 0 && !sticky_ok) {
			free(p);
			goto untrusted;
		}
		if (strcmp(p, "/") == 0)
			break;
	}
	free(p);
	return real;

untrusted:
	free(real);
	return NULL;
}

static void
usage_print(FILE *f)
{
	fprintf(f, "usage: smarthost-postdrop [-C config] [-f sender] "
	    "-- recipient ...\n"
	    "  -C, --config FILE    the configuration file\n"
	    "  -f, --sender ADDRESS the envelope sender\n"
	    "  -h, --help           this text\n"
	    "  -V, --version        the version\n");
}

static void __attribute__((noreturn))
usage(void)
{
	usage_print(stderr);
	exit(EX_USAGE);
}

static int
is_utf8(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s >= 0x80)
			return 1;
	return 0;
}

static void
check_address(const char *what, const char *addr, int allow_null)
{
	if (addr[0] == '\0' && allow_null)
		return;
	if (strlen(addr) >= SMTP_PATH_MAX ||
	    !smtp_mailbox_valid(addr, is_utf8(addr)))
		die(EX_DATAERR, "bad %s address: %s", what, addr);
}

/* The sender when -f is absent: the caller's login name. */
static char *
default_sender(void)
{
	struct passwd *pw = getpwuid(getuid());

	if (pw == NULL)
		die(EX_NOUSER, "no passwd entry for uid %lu: give -f",
		    (unsigned long)getuid());
	return xstrdup(pw->pw_name);
}

/* Output with a buffer, so CRLF conversion does not write byte-wise. */
struct out {
	int fd;
	char buf[IOBUF];
	size_t len;
};

static void
out_flush(struct out *o)
{
	if (o->len > 0 && fileio_write_all(o->fd, o->buf, o->len) == -1)
		die(errno == ENOSPC || errno == EDQUOT ? EX_TEMPFAIL :
		    EX_IOERR, "cannot write to the maildrop: %s",
		    strerror(errno));
	o->len = 0;
}

static void
out_add(struct out *o, const char *p, size_t n)
{
	if (o->len + n > sizeof(o->buf))
		out_flush(o);
	if (n > sizeof(o->buf)) {
		o->len = 0;
		if (fileio_write_all(o->fd, p, n) == -1)
			die(EX_IOERR, "cannot write to the maildrop: %s",
			    strerror(errno));
		return;
	}
	memcpy(o->buf + o->len, p, n);
	o->len += n;
}

/* Copies stdin to o with CRLF line ends; returns the bytes written. */
static off_t
copy_message(struct out *o, uint64_t max)
{
	char in[IOBUF];
	ssize_t n, i, start;
	uint64_t size = 0;
	int prev_cr = 0, at_bol = 1;

	for (;;) {
		n = read(STDIN_FILENO, in, sizeof(in));
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			die(EX_IOERR, "cannot read the message: %s",
			    strerror(errno));
		if (n == 0)
			break;
		for (start = 0, i = 0; i < n; i++) {
			if (in[i] != '\n' || (i > 0 ? in[i - 1] == '\r' :
			    prev_cr))
				continue;
			out_add(o, in + start, (size_t)(i - start));
			out_add(o, "\r", 1);
			size += (uint64_t)(i - start) + 1;
			start = i;
		}
		out_add(o, in + start, (size_t)(n - start));
		size += (uint64_t)(n - start);
		prev_cr = in[n - 1] == '\r';
		at_bol = in[n - 1] == '\n';
		if (size > max)
			die(EX_DATAERR, "message too large (more than %ju "
			    "bytes, the limit of max_message_size)",
			    (uintmax_t)max);
	}
	if (size > 0 && !at_bol) {
		out_add(o, prev_cr ? "\n" : "\r\n", prev_cr ? 1 : 2);
		size += prev_cr ? 1 : 2;
	}
	return (off_t)size;
}

/* NAME: time, pid and 64 random bits, so names are unique and cannot be
 * guessed by another user. */
static void
make_name(char *name, size_t size)
{
	uint64_t r;

	if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
		die(EX_OSERR, "getrandom: %s", strerror(errno));
	snprintf(name, size, "%jd.%ld.%016jx", (intmax_t)time(NULL),
	    (long)getpid(), (uintmax_t)r);
}

/* Whether tmp_dirfd can be fsynced (see open_maildrop). */
static int dir_syncable;

/*
 * Opens the maildrop. Its mode (1730) gives the group search and write
 * but not read permission, so a setgid postdrop cannot open it for
 * reading: it then holds an O_PATH descriptor, which is enough to create
 * and rename files in it, and makes the rename durable with syncfs(2) on
 * the file instead of fsync(2) on the directory.
 */
static int
open_maildrop(const char *path)
{
	struct stat st;
	int dfd;

	dir_syncable = 1;
	dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd == -1 && errno == EACCES) {
		dir_syncable = 0;
		dfd = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	}
	if (dfd == -1) {
		if (errno == EACCES || errno == EPERM)
			die(EX_NOPERM, "maildrop %s: %s", path,
			    strerror(errno));
		die(EX_CANTCREAT, "maildrop %s: %s (smarthostd creates it "
		    "when it starts)", path, strerror(errno));
	}
	if (fstat(dfd, &st) == -1 || !S_ISDIR(st.st_mode))
		die(EX_CANTCREAT, "maildrop %s is not a directory", path);
	return dfd;
}

/*
 * The options: -C into *file, -f into sender. Returns -1 to go on, with
 * optind at the first recipient, or the exit code after printing what
 * --help or --version asked for.
 */
static int
options_parse(int argc, char *argv[], const char **file)
{
	static const struct option long_opts[] = {
		{ "config", required_argument, NULL, 'C' },
		{ "sender", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	while ((ch = getopt_long(argc, argv, "C:f:hV", long_opts, NULL)) !=
	    -1) {
		switch (ch) {
		case 'h':
			usage_print(stdout);
			return EX_OK;
		case 'V':
			printf("smarthost-postdrop %s\n", PACKAGE_VERSION);
			return EX_OK;
		case 'C':
			*file = optarg;
			break;
		case 'f':
			free(sender);
			sender = xstrdup(optarg);
			break;
		default:
			usage();
		}
	}
	return -1;
}

/* The envelope sender as the SMTP path needs it: -f's, or the caller's
 * login, without angle brackets, and with "@mail_domain" when bare. */
static void
sender_qualify(const struct config *cfg)
{
	if (sender == NULL)
		sender = default_sender();
	/* Angle brackets are the caller's business, not part of the path. */
	if (sender[0] == '<' && sender[strlen(sender) - 1] == '>') {
		memmove(sender, sender + 1, strlen(sender));
		sender[strlen(sender) - 1] = '\0';
	}
	/* A bare login is a local user: qualify it as the SMTP path
	 * needs. */
	if (sender[0] != '\0' && strchr(sender, '@') == NULL) {
		char *q = xasprintf("%s@%s", sender, cfg->mail_domain);

		free(sender);
		sender = q;
	}
}

/* Exits on a bad sender or recipient address, or on more recipients
 * than max_recipients: the daemon would refuse the file. */
static void
addresses_check(const struct config *cfg, int nrcpts, char *rcpts[])
{
	int i;

	check_address("sender", sender, 1);
	for (i = 0; i < nrcpts; i++)
		check_address("recipient", rcpts[i], 0);
	if ((unsigned)nrcpts > cfg->max_recipients)
		die(EX_DATAERR, "too many recipients (%d, max_recipients is "
		    "%u)", nrcpts, cfg->max_recipients);
}

/*
 * Opens the maildrop (tmp_dirfd), picks the file's NAME (into name) and
 * creates ".tmp.NAME" there; from then on die() and the signal handlers
 * remove it. Returns its descriptor.
 */
static int
tmp_create(const struct config *cfg, char *name, size_t namelen)
{
	int fd;

	tmp_dirfd = open_maildrop(cfg->maildrop);
	make_name(name, namelen);
	snprintf(tmp_name, sizeof(tmp_name), ".tmp.%s", name);
	fd = openat(tmp_dirfd, tmp_name, O_WRONLY | O_CREAT | O_EXCL |
	    O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd == -1)
		die(errno == EACCES || errno == EPERM ? EX_NOPERM :
		    EX_CANTCREAT, "cannot create a file in %s: %s%s",
		    cfg->maildrop, strerror(errno), errno == EACCES ?
		    " (is smarthost-postdrop setgid to maildrop_group?)" : "");
	tmp_active = 1;
	/* Readable by the maildrop group (the daemon), nobody else. */
	if (fchmod(fd, 0640) == -1)
		die(EX_IOERR, "fchmod: %s", strerror(errno));
	return fd;
}

/* Writes the drop file to fd: the header (our uid, the sender and the
 * recipients), the message from stdin, then the trailer with its size. */
static void
drop_write(int fd, const struct config *cfg, int nrcpts, char *rcpts[])
{
	char trailer[DROPFILE_TRAILER_MAX], *hdr;
	struct out *o;
	size_t hlen, tlen;
	off_t size;

	o = xcalloc(1, sizeof(*o));
	o->fd = fd;
	hdr = dropfile_header(getuid(), sender, (const char *const *)rcpts,
	    (size_t)nrcpts, &hlen);
	out_add(o, hdr, hlen);
	free(hdr);
	size = copy_message(o, cfg->max_message_size);
	tlen = dropfile_trailer(trailer, sizeof(trailer), size);
	out_add(o, trailer, tlen);
	out_flush(o);
	free(o);
}

/*
 * Makes the written file durable under its NAME: fsync, rename, then
 * fsync the maildrop (or syncfs the file when the maildrop could not be
 * opened for reading), and closes fd. Exits on any failure, leaving no
 * file behind.
 */
static void
drop_commit(int fd, const char *name)
{
	if (fsync(fd) == -1)
		die(EX_IOERR, "cannot write to the maildrop: %s",
		    strerror(errno));
	if (renameat(tmp_dirfd, tmp_name, tmp_dirfd, name) == -1)
		die(EX_IOERR, "cannot rename in the maildrop: %s",
		    strerror(errno));
	tmp_active = 0;
	if ((dir_syncable ? fsync(tmp_dirfd) : syncfs(fd)) == -1 ||
	    close(fd) == -1) {
		/* The file is complete under its name; only its durability is
		 * in doubt. Remove it rather than claim success. */
		(void)unlinkat(tmp_dirfd, name, 0);
		die(EX_IOERR, "cannot sync the maildrop: %s", strerror(errno));
	}
}

int
main(int argc, char *argv[])
{
	struct config *cfg;
	const char *file = DEFAULT_CONFIG;
	char name[64], err[1024];
	char *real = NULL;
	int rc, fd;

	sanitize();
	if ((rc = options_parse(argc, argv, &file)) != -1)
		return rc;
	argc -= optind;
	argv += optind;
	if (argc < 1)
		usage();
	/* A config of the caller's choosing gets no more rights than the
	 * caller has: the maildrop it names is written without the group. */
	if (getegid() != getgid() && (real = config_trusted(file)) == NULL)
		drop_group();
	if ((cfg = config_load(real != NULL ? real : file, err,
	    sizeof(err))) == NULL)
		die(EX_CONFIG, "%s", err);
	free(real);
	sender_qualify(cfg);
	addresses_check(cfg, argc, argv);

	fd = tmp_create(cfg, name, sizeof(name));
	drop_write(fd, cfg, argc, argv);
	drop_commit(fd, name);
	close(tmp_dirfd);
	free(sender);
	config_free(cfg);
	return EX_OK;
}
