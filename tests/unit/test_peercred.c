/*
 * Peer credentials: real loopback connections (IPv4, IPv6, a Unix
 * socketpair) looked up through the kernel. The client socket of one test
 * is opened by a child that changed its uid, so the lookup must find that
 * user and not ours.
 */
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
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
