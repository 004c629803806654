/*
 * Who is on the other end of a local connection: the uid of the process
 * that opened it. For a Unix socket the kernel tells us directly
 * (SO_PEERCRED); for loopback TCP the client's socket is looked up in the
 * kernel's socket table (sock_diag netlink, inet_diag_req_v2) by the exact
 * four-tuple of the accepted connection, and its owner is read from
 * idiag_uid. Nothing here trusts what the client says.
 */
#ifndef SMARTHOST_PEERCRED_H
#define SMARTHOST_PEERCRED_H

#include <sys/types.h>
#include <sys/socket.h>

/*
 * The uid of the process that connected to the Unix stream socket fd.
 * Returns 0, or -1 with errno set.
 */
int peercred_unix(int fd, uid_t *uid);

/*
 * The owner of the loopback TCP socket that connected to us: local is our
 * end of the accepted connection (getsockname), peer the client's end.
 * Both must be loopback addresses of the same family (an IPv4-mapped IPv6
 * pair is looked up as IPv4). One netlink request and reply to the kernel,
 * bounded by a 250 ms receive timeout, so it cannot stall the caller for
 * long, on a netlink socket that the first lookup opens and later ones
 * reuse (one descriptor, close-on-exec, held while the process runs; any
 * thread may call). Returns 0, or -1 with errno set: EINVAL for a non-loopback or
 * unsupported address, ENOENT when the kernel has no such socket (the
 * client already closed it), anything else when sock_diag is unusable.
 */
int peercred_tcp(const struct sockaddr *local, const struct sockaddr *peer,
    uid_t *uid);

#endif
