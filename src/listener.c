/*
 * Listening sockets. They are bound while we still have privileges (port
 * 25, /run), or adopted from systemd socket activation, which then takes
 * precedence over the config. Binding and accepting are separate steps so
 * main can drop privileges in between.
 *
 * Invariants:
 * - A TCP listener on a non-loopback address exists only when the config
 *   names networks allowed to submit; every accepted peer is checked
 *   against the config in force (config_peer_allowed) before the SMTP
 *   server sees it.
 * - A Unix socket file is removed only by the instance that created it,
 *   and only while it is still the same file (device and inode).
 * - Out of descriptors (EMFILE, ENFILE), waiting clients are not left
 *   hanging: a descriptor kept in reserve is freed to accept each one and
 *   answer it 421, then taken again.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include <systemd/sd-daemon.h>

#include "config.h"
#include "listener.h"
#include "log.h"
#include "smtp_server.h"
#include "xmalloc.h"

#define DESC_MAX 128
/* After an accept error such as EMFILE the socket stays readable: pause
 * instead of spinning. */
#define ACCEPT_PAUSE_SEC 1

struct listener {
	struct listeners *owner;
	int fd;                    /* -1 once an evconnlistener owns it */
	int family;
	char desc[DESC_MAX];       /* "127.0.0.1:25", "[::1]:25", "unix:/p" */
	/* The bound address when it is one address, the local end of every
	 * connection it accepts; unset (family 0) for a wildcard or Unix
	 * socket. */
	struct sockaddr_storage local;
	char *path;                /* Unix socket file we created, or NULL */
	dev_t dev;                 /* ... and its identity */
	ino_t ino;
	struct evconnlistener *evl;
	struct event *pause_ev;
};

struct listeners {
	struct listener *v;
	size_t n;
	const struct config *cfg;
	struct smtp_server *srv;
	int reserve;               /* /dev/null, given up to refuse at EMFILE */
};

/* Describes a bound socket from getsockname(). */
static void
describe(int fd, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t slen = sizeof(ss);
	char host[INET6_ADDRSTRLEN];

	snprintf(buf, len, "fd %d", fd);
	if (getsockname(fd, (struct sockaddr *)&ss, &slen) == -1)
		return;
	switch (ss.ss_family) {
	case AF_INET: {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(sin->sin_port));
		break;
	}
	case AF_INET6: {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
		break;
	}
	case AF_UNIX: {
		struct sockaddr_un *sun = (struct sockaddr_un *)&ss;

		if (slen > offsetof(struct sockaddr_un, sun_path) &&
		    sun->sun_path[0] != '\0')
			snprintf(buf, len, "unix:%.*s",
			    (int)(slen - offsetof(struct sockaddr_un,
			    sun_path)), sun->sun_path);
		else
			snprintf(buf, len, "unix:(unnamed)");
		break;
	}
	default:
		break;
	}
}

static int
sockaddr_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const void *)sa;

		return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const void *)sa;
		const unsigned char *a = sin6->sin6_addr.s6_addr;

		if (IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr))
			return 1;
		return IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) && a[12] == 127;
	}
	return sa->sa_family == AF_UNIX;
}

/*
 * A TCP listener: TCP_NODELAY is set on it once, since accepted sockets
 * inherit it (one setsockopt less per connection). Replies leave one
 * write per command, or one per batch of pipelined commands, so Nagle's
 * algorithm could only hold a reply back for the client's delayed ACK.
 * The bound address is kept when it is one address, so a connection's
 * local end need not be asked for.
 */
static void
tcp_prepare(struct listener *li)
{
	struct sockaddr_storage ss;
	socklen_t slen = sizeof(ss);
	int one = 1;

	if (setsockopt(li->fd, IPPROTO_TCP, TCP_NODELAY, &one,
	    sizeof(one)) == -1)
		log_warn("%s: TCP_NODELAY", li->desc);
	if (getsockname(li->fd, (struct sockaddr *)&ss, &slen) == -1)
		return;
	if ((ss.ss_family == AF_INET &&
	    ((struct sockaddr_in *)&ss)->sin_addr.s_addr !=
	    htonl(INADDR_ANY)) ||
	    (ss.ss_family == AF_INET6 && !IN6_IS_ADDR_UNSPECIFIED(
	    &((struct sockaddr_in6 *)&ss)->sin6_addr)))
		li->local = ss;
}

static struct listener *
listener_add(struct listeners *l, int fd, int family)
{
	struct listener *li;

	l->v = xreallocarray(l->v, l->n + 1, sizeof(*l->v));
	li = &l->v[l->n++];
	memset(li, 0, sizeof(*li));
	li->owner = l;
	li->fd = fd;
	li->family = family;
	describe(fd, li->desc, sizeof(li->desc));
	if (family == AF_INET || family == AF_INET6)
		tcp_prepare(li);
	return li;
}

static int
tcp_open(struct listeners *l, const struct listen_config *lc, char *err,
    size_t errlen)
{
	struct addrinfo hints, *res = NULL;
	int fd = -1, one = 1, r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE;
	if ((r = getaddrinfo(lc->address, lc->port != NULL ? lc->port : "25",
	    &hints, &res)) != 0) {
		snprintf(err, errlen, "listen %s port %s: %s", lc->address,
		    lc->port != NULL ? lc->port : "25", gai_strerror(r));
		return -1;
	}
	if (!sockaddr_is_loopback(res->ai_addr) && l->cfg->nallow == 0) {
		snprintf(err, errlen, "listen address %s is not loopback: set "
		    "allow_networks to the networks allowed to submit mail "
		    "(never an open relay)", lc->address);
		goto fail;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(err, errlen, "socket for %s: %s", lc->address,
		    strerror(errno));
		goto fail;
	}
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1)
		log_warn("listen %s: SO_REUSEADDR", lc->address);
	/* "::" must not take IPv4 too: 0.0.0.0 is a listener of its own. */
	if (res->ai_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6,
	    IPV6_V6ONLY, &one, sizeof(one)) == -1)
		log_warn("listen %s: IPV6_V6ONLY", lc->address);
	if (bind(fd, res->ai_addr, res->ai_addrlen) == -1) {
		snprintf(err, errlen, "bind %s%s%s:%s: %s",
		    res->ai_family == AF_INET6 ? "[" : "", lc->address,
		    res->ai_family == AF_INET6 ? "]" : "",
		    lc->port != NULL ? lc->port : "25", strerror(errno));
		goto fail;
	}
	if (listen(fd, SOMAXCONN) == -1) {
		snprintf(err, errlen, "listen %s: %s", lc->address,
		    strerror(errno));
		goto fail;
	}
	listener_add(l, fd, res->ai_family);
	freeaddrinfo(res);
	return 0;

fail:
	if (fd != -1)
		close(fd);
	freeaddrinfo(res);
	return -1;
}

/* Whether something accepts connections on the Unix socket at path. */
static int
unix_in_use(const struct sockaddr_un *sun)
{
	int fd, r;

	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return 0;
	r = connect(fd, (const struct sockaddr *)sun, sizeof(*sun));
	close(fd);
	return r == 0;
}

/*
 * Binds fd to sun->sun_path with the configured mode and group without
 * ever acting on the path again by name: the mode comes from the umask at
 * bind (the file is born with it), and the group is set through a
 * descriptor opened with O_PATH | O_NOFOLLOW that must be the socket we
 * just created (a socket, owned by us). A chmod or chown by path would
 * follow a symlink that someone with write access to the directory put
 * there after the bind, and act on its target. Fills *st from that
 * descriptor. Returns 0, or -1 with a message in err; *ours then says
 * whether the path is our socket, for the caller to remove.
 */
static int
unix_bind(int fd, const struct sockaddr_un *sun,
    const struct listen_config *lc, struct stat *st, int *ours, char *err,
    size_t errlen)
{
	struct group *gr = NULL;
	mode_t old;
	int pfd = -1, r;

	*ours = 0;
	if (lc->group != NULL && (gr = getgrnam(lc->group)) == NULL) {
		snprintf(err, errlen, "listen %s: unknown group %s", lc->path,
		    lc->group);
		return -1;
	}
	old = umask(~lc->mode & 0777);
	r = bind(fd, (const struct sockaddr *)sun, sizeof(*sun));
	umask(old);
	if (r == -1) {
		snprintf(err, errlen, "bind %s: %s", lc->path, strerror(errno));
		return -1;
	}
	if ((pfd = open(lc->path, O_PATH | O_NOFOLLOW | O_CLOEXEC)) == -1 ||
	    fstat(pfd, st) == -1) {
		snprintf(err, errlen, "listen %s: cannot open the socket just "
		    "bound: %s", lc->path, strerror(errno));
		goto fail;
	}
	if (!S_ISSOCK(st->st_mode) || st->st_uid != geteuid()) {
		snprintf(err, errlen, "listen %s: replaced by another file "
		    "right after bind", lc->path);
		goto fail;
	}
	*ours = 1;
	if (gr != NULL && fchownat(pfd, "", (uid_t)-1, gr->gr_gid,
	    AT_EMPTY_PATH) == -1) {
		snprintf(err, errlen, "chown %s to group %s: %s", lc->path,
		    lc->group, strerror(errno));
		goto fail;
	}
	close(pfd);
	return 0;

fail:
	if (pfd != -1)
		close(pfd);
	return -1;
}

static int
unix_open(struct listeners *l, const struct listen_config *lc, char *err,
    size_t errlen)
{
	struct sockaddr_un sun;
	struct listener *li;
	struct stat st;
	int fd = -1, ours;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(lc->path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "listen %s: path too long", lc->path);
		return -1;
	}
	memcpy(sun.sun_path, lc->path, strlen(lc->path));

	/* A stale socket file from a previous run is removed; a live one
	 * means another instance is running. Other files are not ours. */
	if (lstat(lc->path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen, "listen %s: exists and is not "
			    "a socket", lc->path);
			return -1;
		}
		if (unix_in_use(&sun)) {
			snprintf(err, errlen, "listen %s: another process "
			    "is listening there", lc->path);
			return -1;
		}
		if (unlink(lc->path) == -1) {
			snprintf(err, errlen, "unlink stale socket %s: %s",
			    lc->path, strerror(errno));
			return -1;
		}
	}

	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1) {
		snprintf(err, errlen, "socket for %s: %s", lc->path,
		    strerror(errno));
		return -1;
	}
	if (unix_bind(fd, &sun, lc, &st, &ours, err, errlen) == -1) {
		if (ours)
			goto fail_unlink;
		goto fail;
	}
	if (listen(fd, SOMAXCONN) == -1) {
		snprintf(err, errlen, "listen %s: %s", lc->path,
		    strerror(errno));
		goto fail_unlink;
	}
	li = listener_add(l, fd, AF_UNIX);
	li->path = xstrdup(lc->path);
	li->dev = st.st_dev;
	li->ino = st.st_ino;
	snprintf(li->desc, sizeof(li->desc), "unix:%s", lc->path);
	return 0;

fail_unlink:
	unlink(lc->path);
fail:
	close(fd);
	return -1;
}

/* Adopts the sockets systemd passed. Returns the count, or -1. */
static int
activation_open(struct listeners *l, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t slen;
	int i, n, fd, flags;

	if ((n = sd_listen_fds(1)) <= 0) {
		if (n < 0)
			log_warnx("socket activation: %s", strerror(-n));
		return 0;
	}
	for (i = 0; i < n; i++) {
		fd = SD_LISTEN_FDS_START + i;
		if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
			snprintf(err, errlen, "socket activation: fd %d is "
			    "not a listening stream socket", fd);
			return -1;
		}
		slen = sizeof(ss);
		if (getsockname(fd, (struct sockaddr *)&ss, &slen) == -1) {
			snprintf(err, errlen, "socket activation: fd %d: %s",
			    fd, strerror(errno));
			return -1;
		}
		/* The same rule as for configured listeners. */
		if (!sockaddr_is_loopback((struct sockaddr *)&ss) &&
		    l->cfg->nallow == 0) {
			char desc[DESC_MAX];

			describe(fd, desc, sizeof(desc));
			snprintf(err, errlen, "socket activation: %s is not "
			    "loopback: set allow_networks to the networks "
			    "allowed to submit mail", desc);
			return -1;
		}
		if ((flags = fcntl(fd, F_GETFD)) != -1)
			(void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
		if (evutil_make_socket_nonblocking(fd) == -1) {
			snprintf(err, errlen, "socket activation: fd %d: "
			    "nonblocking: %s", fd, strerror(errno));
			return -1;
		}
		/* systemd owns the socket file: path stays NULL. */
		listener_add(l, fd, ss.ss_family);
	}
	return n;
}

struct listeners *
listeners_open(const struct config *cfg, char *err, size_t errlen)
{
	struct listeners *l;
	size_t i;
	int r;

	l = xcalloc(1, sizeof(*l));
	l->cfg = cfg;
	l->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if ((r = activation_open(l, err, errlen)) == -1)
		goto fail;
	if (r > 0) {
		log_info("using %d socket(s) from systemd; the listen setting "
		    "is ignored", r);
		return l;
	}
	for (i = 0; i < cfg->nlisten; i++) {
		const struct listen_config *lc = &cfg->listen[i];

		switch (lc->kind) {
		case LISTEN_TCP:
			r = tcp_open(l, lc, err, errlen);
			break;
		case LISTEN_UNIX:
			r = unix_open(l, lc, err, errlen);
			break;
		}
		if (r == -1)
			goto fail;
	}
	if (l->n == 0) {
		snprintf(err, errlen, "no listeners configured");
		goto fail;
	}
	return l;

fail:
	listeners_free(l);
	return NULL;
}

static void
accept_cb(struct evconnlistener *evl, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	static const char denied[] = "554 5.7.1 Access denied\r\n";
	struct listener *li = arg;
	struct listeners *l = li->owner;
	ssize_t r;

	if (sa == NULL || !config_peer_allowed(l->cfg, sa)) {
		char host[INET6_ADDRSTRLEN] = "unknown";

		if (sa != NULL && sa->sa_family == AF_INET)
			inet_ntop(AF_INET,
			    &((struct sockaddr_in *)sa)->sin_addr, host,
			    sizeof(host));
		else if (sa != NULL && sa->sa_family == AF_INET6)
			inet_ntop(AF_INET6,
			    &((struct sockaddr_in6 *)sa)->sin6_addr, host,
			    sizeof(host));
		log_info("reject: connection from %s on %s: not in "
		    "allow_networks", host, li->desc);
		r = send(fd, denied, sizeof(denied) - 1,
		    MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)r;
		evutil_closesocket(fd);
		return;
	}
	smtp_server_accept(l->srv, fd, sa, (socklen_t)salen,
	    li->local.ss_family != 0 ? (struct sockaddr *)&li->local : NULL);
}

static void
resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct listener *li = arg;

	if (li->evl != NULL)
		evconnlistener_enable(li->evl);
}

/*
 * Out of descriptors: answers every connection waiting on evl with a 421,
 * each through the reserve descriptor. Returns how many were refused; the
 * reserve is taken again before returning (if it can be).
 */
static unsigned
refuse_all(struct listeners *l, struct evconnlistener *evl)
{
	static const char busy[] = "421 4.3.2 Out of resources, try again "
	    "later\r\n";
	unsigned n = 0;
	ssize_t r;
	int fd;

	while (l->reserve != -1 && n < 10000) {
		close(l->reserve);
		fd = accept4(evconnlistener_get_fd(evl), NULL, NULL,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd != -1) {
			r = send(fd, busy, sizeof(busy) - 1,
			    MSG_NOSIGNAL | MSG_DONTWAIT);
			(void)r;
			close(fd);
			n++;
		}
		l->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (fd == -1)
			break;
	}
	return n;
}

static void
accept_error_cb(struct evconnlistener *evl, void *arg)
{
	struct listener *li = arg;
	struct timeval tv = { ACCEPT_PAUSE_SEC, 0 };
	int error = EVUTIL_SOCKET_ERROR();
	unsigned refused;

	if (error == EMFILE || error == ENFILE) {
		refused = refuse_all(li->owner, evl);
		log_warnx("accept on %s: %s; %u connection%s refused with 421",
		    li->desc, evutil_socket_error_to_string(error), refused,
		    refused == 1 ? "" : "s");
		if (refused > 0)
			return;
	}
	log_warnx("accept on %s: %s; pausing %d s", li->desc,
	    evutil_socket_error_to_string(error), ACCEPT_PAUSE_SEC);
	evconnlistener_disable(evl);
	evtimer_add(li->pause_ev, &tv);
}

int
listeners_start(struct listeners *l, struct event_base *base,
    struct smtp_server *srv)
{
	size_t i;

	l->srv = srv;
	for (i = 0; i < l->n; i++) {
		struct listener *li = &l->v[i];

		if (li->evl != NULL)
			continue;
		li->pause_ev = evtimer_new(base, resume_cb, li);
		li->evl = evconnlistener_new(base, accept_cb, li,
		    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
		    LEV_OPT_CLOSE_ON_EXEC, 0, li->fd);
		if (li->evl == NULL || li->pause_ev == NULL) {
			log_warnx("cannot start listener %s", li->desc);
			return -1;
		}
		li->fd = -1; /* the evconnlistener closes it now */
		evconnlistener_set_error_cb(li->evl, accept_error_cb);
	}
	return 0;
}

void
listeners_set_config(struct listeners *l, const struct config *cfg)
{
	l->cfg = cfg;
}

void
listeners_stop(struct listeners *l)
{
	size_t i;

	if (l == NULL)
		return;
	for (i = 0; i < l->n; i++) {
		if (l->v[i].evl != NULL)
			evconnlistener_disable(l->v[i].evl);
		if (l->v[i].pause_ev != NULL)
			evtimer_del(l->v[i].pause_ev);
	}
}

void
listeners_free(struct listeners *l)
{
	struct stat st;
	size_t i;

	if (l == NULL)
		return;
	for (i = 0; i < l->n; i++) {
		struct listener *li = &l->v[i];

		if (li->evl != NULL)
			evconnlistener_free(li->evl);
		else if (li->fd != -1)
			close(li->fd);
		if (li->pause_ev != NULL)
			event_free(li->pause_ev);
		/* Only the very file we created: a newer instance may
		 * have replaced it. After the privilege drop the directory
		 * may be root's (systemd's RuntimeDirectory=): then the
		 * next start, which removes stale sockets, does it. */
		if (li->path != NULL && lstat(li->path, &st) == 0 &&
		    st.st_dev == li->dev && st.st_ino == li->ino &&
		    unlink(li->path) == -1) {
			if (errno == EACCES || errno == EPERM)
				log_debug("leaving %s to the next start: %s",
				    li->path, strerror(errno));
			else
				log_warn("unlink %s", li->path);
		}
		free(li->path);
	}
	if (l->reserve != -1)
		close(l->reserve);
	free(l->v);
	free(l);
}

size_t
listeners_count(const struct listeners *l)
{
	return l != NULL ? l->n : 0;
}

const char *
listeners_describe(const struct listeners *l, size_t i)
{
	if (l == NULL || i >= l->n)
		return NULL;
	return l->v[i].desc;
}
