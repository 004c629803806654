/*
 * The learned "requires authentication" set and its file (format in
 * authstate.h). The set is small (one entry per upstream), so it is a plain
 * array searched linearly.
 *
 * Invariants:
 * - Entries are stored in normal form (authstate_normalize) and unique.
 * - At most one save runs at a time. A change during a save marks the set
 *   dirty and the save's completion starts another one with a fresh
 *   snapshot, so an older snapshot can never overwrite a newer file.
 * - A set freed while its save runs is only marked dead; the completion
 *   frees it.
 */
#include <sys/stat.h>
#include <sys/types.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "authinfo.h"
#include "authstate.h"
#include "fileio.h"
#include "log.h"
#include "xmalloc.h"

struct as_entry {
	char *host;
	char *port;
};

struct authstate {
	struct as_entry *v;
	size_t n;
	size_t cap;
	struct worker *w;
	char *dir;          /* NULL: memory only */
	char *path;
	int saving;         /* a save job is in flight */
	int dirty;          /* changed since the snapshot being saved */
	int dead;           /* freed by the owner while saving */
};

struct as_save {
	struct authstate *as;
	char *dir;
	char *path;
	char *data;
	size_t len;
	int error;
	char what[64];
};

static void as_save_start(struct authstate *);

struct authstate *
authstate_new(void)
{
	return xcalloc(1, sizeof(struct authstate));
}

static void
as_destroy(struct authstate *as)
{
	size_t i;

	for (i = 0; i < as->n; i++) {
		free(as->v[i].host);
		free(as->v[i].port);
	}
	free(as->v);
	free(as->dir);
	free(as->path);
	free(as);
}

void
authstate_free(struct authstate *as)
{
	if (as == NULL)
		return;
	if (as->saving) {
		as->dead = 1;
		return;
	}
	as_destroy(as);
}

static int
field_ok(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || len > AUTHSTATE_FIELD_MAX)
		return 0;
	for (i = 0; i < len; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			return 0;
	return 1;
}

int
authstate_normalize(const char *host, const char *port, char *nhost,
    size_t nhostlen, char *nport, size_t nportlen)
{
	size_t hl, i;
	int num;

	if (host == NULL || port == NULL)
		return -1;
	hl = strlen(host);
	if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
		host++;
		hl -= 2;
	}
	if (!field_ok(host, hl) || hl >= nhostlen)
		return -1;
	for (i = 0; i < hl; i++)
		nhost[i] = (char)tolower((unsigned char)host[i]);
	nhost[hl] = '\0';
	if ((num = authinfo_port_number(port)) > 0) {
		snprintf(nport, nportlen, "%d", num);
		return 0;
	}
	if (!field_ok(port, strlen(port)) || strlen(port) >= nportlen)
		return -1;
	for (i = 0; port[i] != '\0'; i++)
		nport[i] = (char)tolower((unsigned char)port[i]);
	nport[i] = '\0';
	return 0;
}

static ssize_t
as_find(const struct authstate *as, const char *nhost, const char *nport)
{
	size_t i;

	for (i = 0; i < as->n; i++)
		if (strcmp(as->v[i].host, nhost) == 0 &&
		    strcmp(as->v[i].port, nport) == 0)
			return (ssize_t)i;
	return -1;
}

/* Adds a normalized entry; returns 1 if new, 0 if present. */
static int
as_add(struct authstate *as, const char *nhost, const char *nport)
{
	if (as_find(as, nhost, nport) != -1)
		return 0;
	if (as->n == as->cap) {
		as->cap = as->cap == 0 ? 8 : as->cap * 2;
		as->v = xreallocarray(as->v, as->cap, sizeof(*as->v));
	}
	as->v[as->n].host = xstrdup(nhost);
	as->v[as->n].port = xstrdup(nport);
	as->n++;
	return 1;
}

static void
as_remove(struct authstate *as, size_t i)
{
	free(as->v[i].host);
	free(as->v[i].port);
	memmove(&as->v[i], &as->v[i + 1], (as->n - i - 1) * sizeof(*as->v));
	as->n--;
}

unsigned
authstate_parse(struct authstate *as, const char *buf, size_t len,
    authstate_warn_fn *warn, void *arg)
{
	const char *p = buf, *end = buf + len, *eol, *f[3];
	size_t fl[3], nf, ll, i;
	char host[AUTHSTATE_FIELD_MAX + 1], port[AUTHSTATE_FIELD_MAX + 1];
	char nhost[AUTHSTATE_FIELD_MAX + 1], nport[AUTHSTATE_FIELD_MAX + 1];
	unsigned line = 0, bad = 0;

	while (p < end) {
		line++;
		if ((eol = memchr(p, '\n', (size_t)(end - p))) == NULL)
			eol = end;
		ll = (size_t)(eol - p);
		if (ll > 0 && p[ll - 1] == '\r')
			ll--;
		/* split into blank-separated fields */
		nf = 0;
		for (i = 0; i < ll;) {
			if (p[i] == ' ' || p[i] == '\t') {
				i++;
				continue;
			}
			if (nf == 0 && p[i] == '#')
				break;
			if (nf < 3) {
				f[nf] = p + i;
				fl[nf] = 0;
			}
			while (i < ll && p[i] != ' ' && p[i] != '\t') {
				if (nf < 3)
					fl[nf]++;
				i++;
			}
			nf++;
		}
		if (nf == 0) {
			/* blank or comment */
		} else if (nf != 2 || !field_ok(f[0], fl[0]) ||
		    !field_ok(f[1], fl[1])) {
			bad++;
			if (warn != NULL)
				warn(line, nf != 2 ? "expected \"host port\"; "
				    "line skipped" : "invalid byte or field "
				    "too long; line skipped", arg);
		} else {
			memcpy(host, f[0], fl[0]);
			host[fl[0]] = '\0';
			memcpy(port, f[1], fl[1]);
			port[fl[1]] = '\0';
			if (authstate_normalize(host, port, nhost,
			    sizeof(nhost), nport, sizeof(nport)) == 0)
				as_add(as, nhost, nport);
			else {
				bad++;
				if (warn != NULL)
					warn(line, "invalid host or port; "
					    "line skipped", arg);
			}
		}
		p = eol < end ? eol + 1 : end;
	}
	return bad;
}

char *
authstate_format(const struct authstate *as, size_t *len)
{
	static const char header[] = "# smarthostd: relays that require "
	    "authentication (host port).\n# Written by the daemon; "
	    "remove entries with: smarthostctl forget HOST[:PORT]\n";
	size_t i, n = sizeof(header) - 1, off;
	char *buf;

	for (i = 0; i < as->n; i++)
		n += strlen(as->v[i].host) + 1 + strlen(as->v[i].port) + 1;
	buf = xmalloc(n + 1);
	memcpy(buf, header, sizeof(header) - 1);
	off = sizeof(header) - 1;
	for (i = 0; i < as->n; i++)
		off += (size_t)snprintf(buf + off, n + 1 - off, "%s %s\n",
		    as->v[i].host, as->v[i].port);
	buf[off] = '\0';
	if (len != NULL)
		*len = off;
	return buf;
}

/* ---- the file ---- */

static void
open_warn(unsigned line, const char *msg, void *arg)
{
	log_warnx("%s:%u: %s", (const char *)arg, line, msg);
}

struct authstate *
authstate_open(struct worker *w, const char *dir, char *err, size_t errlen)
{
	struct authstate *as;
	struct stat st;
	char *path, *buf;
	ssize_t n;
	size_t len = 0;
	int fd;

	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "%s: cannot create: %s", dir,
		    strerror(errno));
		return NULL;
	}
	if (stat(dir, &st) == -1 || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "%s: not a directory", dir);
		return NULL;
	}
	path = xasprintf("%s/%s", dir, AUTHSTATE_FILE);
	as = authstate_new();
	as->w = w;
	as->dir = xstrdup(dir);
	as->path = path;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		if (errno == ENOENT)
			return as;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		as_destroy(as);
		return NULL;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) ||
	    st.st_size > AUTHSTATE_FILE_MAX) {
		snprintf(err, errlen, "%s: not a regular file of at most %d "
		    "bytes", path, AUTHSTATE_FILE_MAX);
		close(fd);
		as_destroy(as);
		return NULL;
	}
	buf = xmalloc((size_t)st.st_size + 1);
	while (len < (size_t)st.st_size) {
		n = read(fd, buf + len, (size_t)st.st_size - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			snprintf(err, errlen, "%s: %s", path, strerror(errno));
			free(buf);
			close(fd);
			as_destroy(as);
			return NULL;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	authstate_parse(as, buf, len, open_warn, path);
	free(buf);
	return as;
}

/* On a worker thread: write tmp, fsync, rename, fsync the directory. */
static void
as_save_work(void *arg)
{
	struct as_save *j = arg;
	char *tmp = xasprintf("%s.tmp", j->path);
	int fd = -1;

	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC |
	    O_NOFOLLOW, 0600)) == -1) {
		snprintf(j->what, sizeof(j->what), "open %s", AUTHSTATE_FILE
		    ".tmp");
		goto fail;
	}
	if (fileio_write_all(fd, j->data, j->len) == -1) {
		snprintf(j->what, sizeof(j->what), "write");
		goto fail;
	}
	if (fsync(fd) == -1) {
		snprintf(j->what, sizeof(j->what), "fsync");
		goto fail;
	}
	if (close(fd) == -1) {
		fd = -1;
		snprintf(j->what, sizeof(j->what), "close");
		goto fail;
	}
	fd = -1;
	if (rename(tmp, j->path) == -1) {
		snprintf(j->what, sizeof(j->what), "rename");
		goto fail;
	}
	if (fileio_fsync_dir(j->dir) == -1) {
		snprintf(j->what, sizeof(j->what), "fsync of the directory");
		goto fail;
	}
	free(tmp);
	return;
fail:
	j->error = errno != 0 ? errno : EIO;
	if (fd != -1) {
		close(fd);
		unlink(tmp);
	}
	free(tmp);
}

static void
as_save_done(void *arg)
{
	struct as_save *j = arg;
	struct authstate *as = j->as;

	if (j->error != 0)
		log_warnx("%s: cannot save: %s: %s", j->path, j->what,
		    strerror(j->error));
	free(j->dir);
	free(j->path);
	free(j->data);
	free(j);
	as->saving = 0;
	if (as->dead) {
		as_destroy(as);
		return;
	}
	if (as->dirty)
		as_save_start(as);
}

static void
as_save_start(struct authstate *as)
{
	struct as_save *j;

	as->dirty = 0;
	as->saving = 1;
	j = xcalloc(1, sizeof(*j));
	j->as = as;
	j->dir = xstrdup(as->dir);
	j->path = xstrdup(as->path);
	j->data = authstate_format(as, &j->len);
	if (as->w == NULL) {
		as_save_work(j);
		as_save_done(j);
		return;
	}
	worker_run(as->w, as_save_work, as_save_done, j);
}

/* The set changed: save it now, or after the save in flight. */
static void
as_changed(struct authstate *as)
{
	if (as->path == NULL)
		return;
	if (as->saving) {
		as->dirty = 1;
		return;
	}
	as_save_start(as);
}

int
authstate_saving(const struct authstate *as)
{
	return as->saving || as->dirty;
}

/* ---- queries and changes ---- */

int
authstate_has(const struct authstate *as, const char *host, const char *port)
{
	char nhost[AUTHSTATE_FIELD_MAX + 1], nport[AUTHSTATE_FIELD_MAX + 1];

	if (as == NULL || authstate_normalize(host, port, nhost,
	    sizeof(nhost), nport, sizeof(nport)) == -1)
		return 0;
	return as_find(as, nhost, nport) != -1;
}

int
authstate_learn(struct authstate *as, const char *host, const char *port)
{
	char nhost[AUTHSTATE_FIELD_MAX + 1], nport[AUTHSTATE_FIELD_MAX + 1];

	if (authstate_normalize(host, port, nhost, sizeof(nhost), nport,
	    sizeof(nport)) == -1)
		return -1;
	if (!as_add(as, nhost, nport))
		return 0;
	log_info("relay %s%s%s:%s requires authentication; will authenticate "
	    "first from now on", strchr(nhost, ':') != NULL ? "[" : "", nhost,
	    strchr(nhost, ':') != NULL ? "]" : "", nport);
	as_changed(as);
	return 1;
}

int
authstate_forget(struct authstate *as, const char *spec)
{
	char host[AUTHSTATE_FIELD_MAX + 1], port[AUTHSTATE_FIELD_MAX + 1];
	char nhost[AUTHSTATE_FIELD_MAX + 1], nport[AUTHSTATE_FIELD_MAX + 1];
	const char *sep = NULL, *colon;
	size_t i, hl, removed = 0;
	int any_port;

	if (spec == NULL || *spec == '\0')
		return -1;
	if (spec[0] == '[') {
		/* [v6]:port or [v6] */
		const char *rb = strchr(spec, ']');

		if (rb == NULL)
			return -1;
		hl = (size_t)(rb - spec - 1);
		if (rb[1] == ':')
			sep = rb + 1;
		else if (rb[1] != '\0')
			return -1;
		if (hl >= sizeof(host))
			return -1;
		memcpy(host, spec + 1, hl);
		host[hl] = '\0';
	} else {
		if ((sep = strpbrk(spec, " \t")) == NULL &&
		    (colon = strchr(spec, ':')) != NULL &&
		    strchr(colon + 1, ':') == NULL)
			sep = colon;	/* one colon: host:port */
		hl = sep != NULL ? (size_t)(sep - spec) : strlen(spec);
		if (hl >= sizeof(host))
			return -1;
		memcpy(host, spec, hl);
		host[hl] = '\0';
	}
	any_port = sep == NULL;
	if (!any_port) {
		sep++;
		while (*sep == ' ' || *sep == '\t')
			sep++;
		if (strlen(sep) >= sizeof(port))
			return -1;
		snprintf(port, sizeof(port), "%s", sep);
	} else
		/* any valid port: only the host is compared */
		snprintf(port, sizeof(port), "25");
	if (authstate_normalize(host, port, nhost, sizeof(nhost), nport,
	    sizeof(nport)) == -1)
		return -1;
	for (i = 0; i < as->n;) {
		if (strcmp(as->v[i].host, nhost) == 0 &&
		    (any_port || strcmp(as->v[i].port, nport) == 0)) {
			log_info("relay %s:%s: forgot that it requires "
			    "authentication", as->v[i].host, as->v[i].port);
			as_remove(as, i);
			removed++;
		} else
			i++;
	}
	if (removed == 0)
		return -1;
	as_changed(as);
	return 0;
}

size_t
authstate_list(const struct authstate *as,
    void (*each)(const char *host, const char *port, void *arg), void *arg)
{
	size_t i;

	if (as == NULL)
		return 0;
	for (i = 0; each != NULL && i < as->n; i++)
		each(as->v[i].host, as->v[i].port, arg);
	return as->n;
}
