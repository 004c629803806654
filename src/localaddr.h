/*
 * Local addresses: which addresses are ours (no domain, or a local
 * domain), where mail to them goes (aliases, catch-all), and what our
 * local senders become on the way out (the sender rewrite map,
 * masquerading). Built once per configuration from its settings and
 * files, immutable afterwards; the SMTP server asks it at RCPT TO, at MAIL
 * FROM and for the header section of each message.
 */
#ifndef SMARTHOST_LOCALADDR_H
#define SMARTHOST_LOCALADDR_H

#include <stddef.h>

struct localaddr;

struct localaddr_params {
	const char *hostname;     /* our name */
	const char *mail_domain;  /* domain of local users' addresses */
	/* Local domains; NULL: "localhost" and hostname. */
	char *const *local_domains;
	size_t nlocal_domains;
	const char *aliases_file;   /* NULL: no aliases */
	const char *catch_all;      /* NULL: unknown local names refused */
	const char *sender_map_file; /* NULL: no map */
	int masquerade;
};

/*
 * Builds the local address policy, reading the aliases file and sender
 * map. On failure returns NULL with "file:line: reason" (or a reason
 * naming the setting) in err. Free with localaddr_free() (accepts NULL).
 */
struct localaddr *localaddr_new(const struct localaddr_params *params,
    char *err, size_t errlen);
void localaddr_free(struct localaddr *la);
/* The number of aliases read from the aliases file; 0 without one. */
size_t localaddr_aliases_count(const struct localaddr *la);

/* 1 if addr has no domain or a local domain (case-insensitive). */
int localaddr_is_local(const struct localaddr *la, const char *addr);
/* 1 if addr is a syntactically valid local name without a domain
 * ("root"), which we accept at MAIL and RCPT although RFC 5321 wants a
 * domain. */
int localaddr_unqualified_ok(const char *addr, int utf8);

/*
 * The recipients that RCPT TO:<addr> stands for: addr itself when it is
 * not local, else its alias expansion. At most max addresses. postmaster
 * (in any case, bare or in a local domain) is never unknown: without an
 * alias of its own or root's and without a catch-all it is
 * postmaster@mail_domain.
 *
 * Returns 0 with a malloc'd array of *nout malloc'd addresses in *out
 * (free with localaddr_list_free()), or -1 with a complete SMTP reply in
 * reply, such as "550 5.1.1 <bob>: no such local user bob (no alias)".
 */
int localaddr_rcpt(const struct localaddr *la, const char *addr, size_t max,
    char ***out, size_t *nout, char *reply, size_t replylen);
void localaddr_list_free(char **list, size_t n);

/*
 * What the local sender addr becomes: its sender map entry; else, with
 * masquerading or when it has no domain at all, local-part@mail_domain.
 * The map also applies to local-part@mail_domain, the address
 * smarthost-sendmail gives a local user, when mail_domain is not local.
 * Returns a malloc'd address, or NULL to keep addr (remote senders, the
 * null sender, and local ones with nothing to do).
 */
char *localaddr_sender(const struct localaddr *la, const char *addr);

/*
 * The header section hdr (len bytes) with localaddr_sender() applied to
 * the addresses of From:, Sender:, Reply-To: and their Resent- forms (see
 * rewrite_headers()).
 * Returns a malloc'd result and its length, or NULL when nothing changed.
 */
char *localaddr_headers(const struct localaddr *la, const char *hdr,
    size_t len, size_t *outlen);

#endif
