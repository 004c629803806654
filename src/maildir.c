/*
 * Maildir delivery. The sequence is the one that makes a Maildir safe to
 * read while it is written and after a crash: a unique file in tmp/
 * (O_EXCL), the whole message, fsync, rename into new/, fsync of new/.
 * A reader only ever sees complete files in new/; a crash leaves at worst
 * a stray file in tmp/, which Maildir readers clean up by age.
 *
 * Unique names follow the Maildir convention "time.MusecPpidQn.host",
 * with a process-wide counter so that worker threads never collide.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "fileio.h"
#include "maildir.h"

#define MAILDIR_CHUNK (64 * 1024)

static atomic_uint maildir_counter;

void
maildir_lf_init(struct maildir_lf *c)
{
	c->saw_cr = 0;
}

size_t
maildir_lf_convert(struct maildir_lf *c, const char *in, size_t len,
    char *out)
{
	size_t i, n = 0;

	for (i = 0; i < len; i++) {
		if (c->saw_cr) {
			c->saw_cr = 0;
			if (in[i] == '\n') {
				out[n++] = '\n';
				continue;
			}
			out[n++] = '\r';	/* a bare CR stays */
		}
		if (in[i] == '\r')
			c->saw_cr = 1;
		else
			out[n++] = in[i];
	}
	return n;
}

size_t
maildir_lf_finish(struct maildir_lf *c, char *out)
{
	if (!c->saw_cr)
		return 0;
	c->saw_cr = 0;
	out[0] = '\r';
	return 1;
}

static int
mkdir_at(int dirfd, const char *name, const char *path, char *err,
    size_t errlen)
{
	if (mkdirat(dirfd, name, 0700) == -1 && errno != EEXIST) {
		int saved = errno;

		snprintf(err, errlen, "cannot create %s/%s: %s", path, name,
		    strerror(saved));
		errno = saved;
		return -1;
	}
	return 0;
}

int
maildir_create(const char *path, char *err, size_t errlen)
{
	static const char *const sub[] = { "tmp", "new", "cur" };
	int saved, fd;
	size_t i;

	if (mkdir(path, 0700) == -1 && errno != EEXIST) {
		saved = errno;
		snprintf(err, errlen, "cannot create %s: %s", path,
		    strerror(saved));
		errno = saved;
		return -1;
	}
	if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1) {
		saved = errno;
		snprintf(err, errlen, "cannot open %s: %s", path,
		    strerror(saved));
		errno = saved;
		return -1;
	}
	for (i = 0; i < sizeof(sub) / sizeof(*sub); i++) {
		if (mkdir_at(fd, sub[i], path, err, errlen) == -1) {
			saved = errno;
			close(fd);
			errno = saved;
			return -1;
		}
	}
	close(fd);
	return 0;
}

/* The host part of a unique name: '/' and ':' are escaped as the Maildir
 * specification asks, because they would break the path or the info. */
static void
maildir_host(const char *hostname, char *buf, size_t len)
{
	size_t n = 0;
	const char *p;

	for (p = hostname; *p != '\0' && n + 5 < len; p++) {
		if (*p == '/')
			n += (size_t)snprintf(buf + n, len - n, "\\057");
		else if (*p == ':')
			n += (size_t)snprintf(buf + n, len - n, "\\072");
		else
			buf[n++] = *p;
	}
	buf[n] = '\0';
}

/* Copies the body into wfd with LF line ends. */
static int
copy_body(int wfd, int rfd, off_t offset, off_t size, const char **what)
{
	struct maildir_lf conv;
	char *in, *out;
	off_t done = 0;
	ssize_t r;
	size_t want, n;
	int rc = -1, saved = 0;

	in = malloc(MAILDIR_CHUNK);
	out = malloc(MAILDIR_CHUNK + 1);
	if (in == NULL || out == NULL) {
		saved = ENOMEM;
		*what = "memory";
		goto out;
	}
	maildir_lf_init(&conv);
	while (done < size) {
		want = size - done > MAILDIR_CHUNK ? MAILDIR_CHUNK :
		    (size_t)(size - done);
		r = pread(rfd, in, want, offset + done);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0) {
			saved = r == 0 ? EIO : errno;	/* truncated spool */
			*what = "read queue file";
			goto out;
		}
		done += r;
		n = maildir_lf_convert(&conv, in, (size_t)r, out);
		if (fileio_write_all(wfd, out, n) == -1) {
			saved = errno;
			*what = "write";
			goto out;
		}
	}
	n = maildir_lf_finish(&conv, out);
	if (fileio_write_all(wfd, out, n) == -1) {
		saved = errno;
		*what = "write";
		goto out;
	}
	rc = 0;
out:
	free(in);
	free(out);
	errno = saved;
	return rc;
}

int
maildir_deliver(const char *path, int fd, off_t offset, off_t size,
    const char *hostname, char *name, size_t namelen, char *err,
    size_t errlen)
{
	char host[256], tmppath[4096], newpath[4096];
	const char *what = NULL;
	struct timeval tv;
	int wfd = -1, saved = 0, rc = -1;
	unsigned n;

	if (maildir_create(path, err, errlen) == -1)
		return -1;

	gettimeofday(&tv, NULL);
	n = atomic_fetch_add(&maildir_counter, 1);
	maildir_host(hostname, host, sizeof(host));
	snprintf(name, namelen, "%lld.M%06ldP%ldQ%u.%s", (long long)tv.tv_sec,
	    (long)tv.tv_usec, (long)getpid(), n, host);
	if ((size_t)snprintf(tmppath, sizeof(tmppath), "%s/tmp/%s", path,
	    name) >= sizeof(tmppath) ||
	    (size_t)snprintf(newpath, sizeof(newpath), "%s/new/%s", path,
	    name) >= sizeof(newpath)) {
		snprintf(err, errlen, "%s: path too long", path);
		errno = ENAMETOOLONG;
		return -1;
	}

	wfd = open(tmppath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (wfd == -1) {
		saved = errno;
		snprintf(err, errlen, "cannot create %s: %s", tmppath,
		    strerror(saved));
		goto out;
	}
	if (copy_body(wfd, fd, offset, size, &what) == -1) {
		saved = errno;
		snprintf(err, errlen, "%s: %s: %s", tmppath, what,
		    strerror(saved));
		goto unlink;
	}
	if (fsync(wfd) == -1) {
		saved = errno;
		snprintf(err, errlen, "%s: fsync: %s", tmppath,
		    strerror(saved));
		goto unlink;
	}
	/* close() can report a deferred write error (NFS): heed it. */
	if (close(wfd) == -1) {
		wfd = -1;
		saved = errno;
		snprintf(err, errlen, "%s: close: %s", tmppath,
		    strerror(saved));
		goto unlink;
	}
	wfd = -1;
	if (rename(tmppath, newpath) == -1) {
		saved = errno;
		snprintf(err, errlen, "cannot rename %s to new/: %s", tmppath,
		    strerror(saved));
		goto unlink;
	}
	/*
	 * The rename is durable only once the directory is synced. If that
	 * fails the message is visible but may not survive a crash: report a
	 * failure and take the file back, so the retry cannot duplicate it.
	 */
	snprintf(tmppath, sizeof(tmppath), "%s/new", path);
	if (fileio_fsync_dir(tmppath) == -1) {
		saved = errno;
		snprintf(err, errlen, "%s: fsync: %s", tmppath,
		    strerror(saved));
		unlink(newpath);
		goto out;
	}
	rc = 0;
	goto out;
unlink:
	unlink(tmppath);
out:
	if (wfd != -1)
		close(wfd);
	if (rc == -1)
		errno = saved;
	return rc;
}
