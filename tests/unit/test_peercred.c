/*
 * Peer credentials: real loopback connections (IPv4, IPv6, a Unix
 * socketpair) looked up through the kernel. The client socket of one test
 * is opened by a child that changed its uid, so the lookup must find that
 * user and not ours.
 */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "peercred.h"

/* A listening loopback socket of family af on a port the kernel picks. */
static int
listen_loopback(int af, struct sockaddr_storage *ss, socklen_t *len)
{
	int fd = socket(af, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd == -1)
		return -1;
	memset(ss, 0, sizeof(*ss));
	if (af == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		*len = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_addr = in6addr_loopback;
		*len = sizeof(*sin6);
	}
	if (bind(fd, (struct sockaddr *)ss, *len) == -1 ||
	    listen(fd, 4) == -1 ||
	    getsockname(fd, (struct sockaddr *)ss, len) == -1) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Accepts one connection and looks up its owner; -1 on failure. */
static int
lookup_accepted(int lfd, uid_t *uid)
{
	struct sockaddr_storage local, peer;
	socklen_t llen = sizeof(local), plen = sizeof(peer);
	int fd, r;

	fd = accept(lfd, (struct sockaddr *)&peer, &plen);
	cr_assert_neq(fd, -1, "accept: %s", strerror(errno));
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&local, &llen), 0);
	r = peercred_tcp((struct sockaddr *)&local, (struct sockaddr *)&peer,
	    uid);
	close(fd);
	return r;
}

static void
same_process(int af)
{
	struct sockaddr_storage ss;
	socklen_t len;
	uid_t uid = (uid_t)-1;
	int lfd, cfd;

	lfd = listen_loopback(af, &ss, &len);
	if (lfd == -1 && af == AF_INET6)
		cr_skip_test("no IPv6 loopback");
	cr_assert_neq(lfd, -1);
	cfd = socket(af, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(connect(cfd, (struct sockaddr *)&ss, len), 0);
	cr_assert_eq(lookup_accepted(lfd, &uid), 0, "peercred_tcp: %s",
	    strerror(errno));
	cr_assert_eq(uid, geteuid());
	close(cfd);
	close(lfd);
}

Test(peercred, tcp_ipv4_own_uid)
{
	same_process(AF_INET);
}

Test(peercred, tcp_ipv6_own_uid)
{
	same_process(AF_INET6);
}

Test(peercred, tcp_other_user)
{
	struct sockaddr_storage ss;
	socklen_t len;
	uid_t uid = (uid_t)-1;
	int lfd, sync[2], status;
	pid_t pid;
	char c;

	if (geteuid() != 0)
		cr_skip_test("needs root to connect as another user");
	lfd = listen_loopback(AF_INET, &ss, &len);
	cr_assert_neq(lfd, -1);
	cr_assert_eq(pipe(sync), 0);
	if ((pid = fork()) == 0) {
		int cfd;

		if (setgid(65534) == -1 || setuid(65534) == -1)
			_exit(2);
		cfd = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(cfd, (struct sockaddr *)&ss, len) == -1)
			_exit(3);
		/* Keep the socket open until the parent looked. */
		_exit(read(sync[0], &c, 1) == 1 ? 0 : 4);
	}
	cr_assert_eq(lookup_accepted(lfd, &uid), 0, "peercred_tcp: %s",
	    strerror(errno));
	cr_assert_eq(uid, 65534);
	cr_assert_eq(write(sync[1], "x", 1), 1);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(lfd);
}

Test(peercred, tcp_refuses_non_loopback)
{
	struct sockaddr_in a, b;
	uid_t uid;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(25);
	inet_pton(AF_INET, "192.0.2.1", &a.sin_addr);
	b = a;
	inet_pton(AF_INET, "127.0.0.1", &b.sin_addr);
	cr_assert_eq(peercred_tcp((struct sockaddr *)&b, (struct sockaddr *)&a,
	    &uid), -1);
	cr_assert_eq(errno, EINVAL);
}

Test(peercred, tcp_no_such_socket)
{
	struct sockaddr_in a, b;
	uid_t uid;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	b = a;
	a.sin_port = htons(1); /* nothing connects from port 1 */
	b.sin_port = htons(2);
	cr_assert_eq(peercred_tcp((struct sockaddr *)&b, (struct sockaddr *)&a,
	    &uid), -1);
	cr_assert_eq(errno, ENOENT, "%s", strerror(errno));
}

Test(peercred, unix_socketpair)
{
	int sv[2];
	uid_t uid = (uid_t)-1;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	cr_assert_eq(peercred_unix(sv[0], &uid), 0);
	cr_assert_eq(uid, geteuid());
	close(sv[0]);
	close(sv[1]);
}

/* The process's netlink sockets: how many, and the last one's descriptor
 * and inode in *fd and *ino. */
static int
netlink_sockets(int *fd, ino_t *ino)
{
	DIR *d;
	struct dirent *de;
	struct stat st;
	int n = 0, i, dom;
	socklen_t len;

	cr_assert_not_null(d = opendir("/proc/self/fd"));
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		i = atoi(de->d_name);
		len = sizeof(dom);
		if (i == dirfd(d) || fstat(i, &st) == -1 ||
		    !S_ISSOCK(st.st_mode) ||
		    getsockopt(i, SOL_SOCKET, SO_DOMAIN, &dom, &len) == -1 ||
		    dom != AF_NETLINK)
			continue;
		n++;
		*fd = i;
		*ino = st.st_ino;
	}
	closedir(d);
	return n;
}

/* A connected loopback pair: the accepted end's addresses in local and
 * peer; the client's descriptor is returned, the others closed. */
static int
tcp_pair(struct sockaddr_in *local, struct sockaddr_in *peer)
{
	struct sockaddr_storage ss;
	socklen_t len, ll = sizeof(*local), pl = sizeof(*peer);
	int lfd, cfd, afd;

	cr_assert_neq(lfd = listen_loopback(AF_INET, &ss, &len), -1);
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(connect(cfd, (struct sockaddr *)&ss, len), 0);
	cr_assert_neq(afd = accept(lfd, (struct sockaddr *)peer, &pl), -1);
	cr_assert_eq(getsockname(afd, (struct sockaddr *)local, &ll), 0);
	close(afd);
	close(lfd);
	return cfd;
}

Test(peercred, tcp_lookups_keep_one_socket)
{
	struct sockaddr_in local, peer;
	uid_t uid;
	ino_t ino, ino2;
	int cfd, fd = -1, fd2 = -1, i;

	cr_assert_eq(netlink_sockets(&fd, &ino), 0);
	cfd = tcp_pair(&local, &peer);
	cr_assert_eq(peercred_tcp((struct sockaddr *)&local,
	    (struct sockaddr *)&peer, &uid), 0, "%s", strerror(errno));
	cr_assert_eq(netlink_sockets(&fd, &ino), 1, "no socket kept");
	for (i = 0; i < 20; i++) {
		cr_assert_eq(peercred_tcp((struct sockaddr *)&local,
		    (struct sockaddr *)&peer, &uid), 0, "%s", strerror(errno));
		cr_assert_eq(uid, geteuid());
	}
	/* A lookup the kernel answers with an error keeps it too. */
	peer.sin_port = htons(1);
	cr_assert_eq(peercred_tcp((struct sockaddr *)&local,
	    (struct sockaddr *)&peer, &uid), -1);
	cr_assert_eq(errno, ENOENT);
	cr_assert_eq(netlink_sockets(&fd2, &ino2), 1);
	cr_assert_eq(fd2, fd);
	cr_assert_eq(ino2, ino, "the socket was replaced");
	close(cfd);
}

/* Sends on peercred's own socket a request for local and peer whose reply
 * no lookup reads: what a lookup that timed out leaves behind. */
static void
plant_reply(int fd, const struct sockaddr_in *local,
    const struct sockaddr_in *peer)
{
	struct {
		struct nlmsghdr h;
		struct inet_diag_req_v2 r;
	} req;
	struct sockaddr_nl nl;

	memset(&req, 0, sizeof(req));
	req.h.nlmsg_len = sizeof(req);
	req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	req.h.nlmsg_flags = NLM_F_REQUEST;
	req.h.nlmsg_seq = 0xfee1dead;
	req.r.sdiag_family = AF_INET;
	req.r.sdiag_protocol = IPPROTO_TCP;
	req.r.idiag_states = ~0u;
	req.r.id.idiag_sport = peer->sin_port;
	memcpy(req.r.id.idiag_src, &peer->sin_addr, 4);
	req.r.id.idiag_dport = local->sin_port;
	memcpy(req.r.id.idiag_dst, &local->sin_addr, 4);
	req.r.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
	req.r.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
	memset(&nl, 0, sizeof(nl));
	nl.nl_family = AF_NETLINK;
	cr_assert_eq(sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&nl,
	    sizeof(nl)), (ssize_t)sizeof(req));
}

/*
 * A reply waiting in the shared socket from an earlier request is never
 * taken for the next lookup's: an answer that found a socket does not
 * make a lookup of a closed one succeed, and an error does not fail a
 * lookup of a live one.
 */
Test(peercred, tcp_stale_reply_is_not_taken)
{
	struct sockaddr_in local, peer, gone;
	uid_t uid = 4242;
	ino_t ino;
	int cfd, fd = -1;

	cfd = tcp_pair(&local, &peer);
	cr_assert_eq(peercred_tcp((struct sockaddr *)&local,
	    (struct sockaddr *)&peer, &uid), 0, "%s", strerror(errno));
	cr_assert_eq(netlink_sockets(&fd, &ino), 1);
	gone = peer;
	gone.sin_port = htons(1); /* nothing connects from port 1 */

	plant_reply(fd, &local, &peer);
	uid = 4242;
	cr_assert_eq(peercred_tcp((struct sockaddr *)&local,
	    (struct sockaddr *)&gone, &uid), -1, "took the stale reply");
	cr_assert_eq(errno, ENOENT, "%s", strerror(errno));
	cr_assert_eq(uid, 4242);

	plant_reply(fd, &local, &gone);
	cr_assert_eq(peercred_tcp((struct sockaddr *)&local,
	    (struct sockaddr *)&peer, &uid), 0, "took the stale error: %s",
	    strerror(errno));
	cr_assert_eq(uid, geteuid());
	close(cfd);
}
