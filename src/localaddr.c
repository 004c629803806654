/*
 * The local address policy: local domains, the aliases table with its
 * catch-all, and the sender rewrite map with masquerading. It owns the two
 * parsed files; everything is read-only after localaddr_new(), so sessions
 * of an old configuration may keep using it after a reload.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aliases.h"
#include "localaddr.h"
#include "rewrite.h"
#include "smtp_proto.h"
#include "xmalloc.h"

struct localaddr {
	char **domains;
	size_t ndomains;
	char *mail_domain;
	char *catch_all;
	char *postmaster; /* postmaster@mail_domain */
	struct aliases *aliases;
	struct aliases *sender_map;
	int masquerade;
};

/* The '@' before the domain, or NULL when addr has no domain. */
static const char *
domain_at(const char *addr)
{
	const char *at = strrchr(addr, '@');

	if (at == NULL || strchr(at, '"') != NULL)
		return NULL; /* "a@b" is a quoted local part */
	return at;
}

int
localaddr_is_local(const struct localaddr *la, const char *addr)
{
	const char *at = domain_at(addr);
	size_t i;

	if (at == NULL)
		return 1;
	for (i = 0; i < la->ndomains; i++)
		if (strcasecmp(at + 1, la->domains[i]) == 0)
			return 1;
	return 0;
}

int
localaddr_unqualified_ok(const char *addr, int utf8)
{
	char *full;
	int ok;

	if (*addr == '\0' || domain_at(addr) != NULL)
		return 0;
	full = xasprintf("%s@localhost", addr);
	ok = smtp_mailbox_valid(full, utf8);
	free(full);
	return ok;
}

/* The alias key of an address: its local part, unquoted when it is one
 * quoted string, lower-cased. */
static void
part_key(const char *addr, char *name, size_t namesize)
{
	const char *at = domain_at(addr);
	size_t len = at != NULL ? (size_t)(at - addr) : strlen(addr), i, o = 0;

	if (len >= 2 && addr[0] == '"' && addr[len - 1] == '"') {
		addr++;
		len -= 2;
	}
	for (i = 0; i < len && o + 1 < namesize; i++) {
		if (addr[i] == '\\' && i + 1 < len)
			i++;
		name[o++] = (char)tolower((unsigned char)addr[i]);
	}
	/* A name too long for the buffer matches nothing (names are never
	 * empty) rather than a truncated one. */
	name[i < len ? 0 : o] = '\0';
}

/* The alias key of a local address; 0 if addr is not local. */
static int
local_key(const struct localaddr *la, const char *addr, char *name,
    size_t namesize)
{
	if (!localaddr_is_local(la, addr))
		return 0;
	part_key(addr, name, namesize);
	return 1;
}

static int
resolver_local_name(const char *addr, char *name, size_t namesize,
    void *arg)
{
	return local_key(arg, addr, name, namesize);
}

/* Every sender map entry must name exactly one full address. */
static int
sender_map_check(const struct aliases *map, const char *file, char *err,
    size_t errlen)
{
	const char *const *t;
	size_t i, n;

	for (i = 0; i < aliases_count(map); i++) {
		t = aliases_targets(map, i, &n);
		if (n == 1 && domain_at(t[0]) != NULL)
			continue;
		snprintf(err, errlen, "%s:%u: %s: the sender map needs exactly "
		    "one address with a domain (user: name@example.com)",
		    file, aliases_line(map, i), aliases_name(map, i));
		return -1;
	}
	return 0;
}

struct localaddr *
localaddr_new(const struct localaddr_params *p, char *err, size_t errlen)
{
	struct localaddr *la = xcalloc(1, sizeof(*la));
	size_t i;

	if (p->local_domains != NULL) {
		la->domains = xcalloc(p->nlocal_domains + 1,
		    sizeof(*la->domains));
		for (i = 0; i < p->nlocal_domains; i++)
			la->domains[i] = xstrdup(p->local_domains[i]);
		la->ndomains = p->nlocal_domains;
	} else {
		la->domains = xcalloc(3, sizeof(*la->domains));
		la->domains[la->ndomains++] = xstrdup("localhost");
		if (strcasecmp(p->hostname, "localhost") != 0)
			la->domains[la->ndomains++] = xstrdup(p->hostname);
	}
	la->mail_domain = xstrdup(p->mail_domain != NULL ? p->mail_domain :
	    p->hostname);
	la->catch_all = p->catch_all != NULL ? xstrdup(p->catch_all) : NULL;
	la->postmaster = xasprintf("postmaster@%s", la->mail_domain);
	la->masquerade = p->masquerade;
	if (p->aliases_file != NULL && (la->aliases =
	    aliases_load(p->aliases_file, err, errlen)) == NULL)
		goto fail;
	if (p->sender_map_file != NULL && ((la->sender_map =
	    aliases_load(p->sender_map_file, err, errlen)) == NULL ||
	    sender_map_check(la->sender_map, p->sender_map_file, err,
	    errlen) == -1))
		goto fail;
	return la;
fail:
	localaddr_free(la);
	return NULL;
}

void
localaddr_free(struct localaddr *la)
{
	size_t i;

	if (la == NULL)
		return;
	for (i = 0; i < la->ndomains; i++)
		free(la->domains[i]);
	free(la->domains);
	free(la->mail_domain);
	free(la->catch_all);
	free(la->postmaster);
	aliases_free(la->aliases);
	aliases_free(la->sender_map);
	free(la);
}

size_t
localaddr_aliases_count(const struct localaddr *la)
{
	return la->aliases != NULL ? aliases_count(la->aliases) : 0;
}

int
localaddr_rcpt(const struct localaddr *la, const char *addr, size_t max,
    char ***out, size_t *nout, char *reply, size_t replylen)
{
	struct aliases_resolver r;
	const char *code = "550 5.1.1";
	char why[400];

	memset(&r, 0, sizeof(r));
	r.aliases = la->aliases;
	r.local_name = resolver_local_name;
	r.arg = (void *)(uintptr_t)la;
	r.catch_all = la->catch_all;
	/* A relay has no local mailbox: postmaster without an alias goes
	 * where Postfix's null client sends it, qualified with the domain
	 * of local users' addresses (myorigin there), to the upstream. */
	r.postmaster = la->postmaster;
	r.max_results = max;
	switch (aliases_expand(&r, addr, out, nout, why, sizeof(why))) {
	case ALIASES_OK:
		return 0;
	case ALIASES_UNKNOWN:
		code = "550 5.1.1";
		break;
	case ALIASES_LOOP:
	case ALIASES_TOO_DEEP:
		code = "550 5.4.6";
		break;
	case ALIASES_TOO_MANY:
		code = "550 5.5.3";
		break;
	}
	snprintf(reply, replylen, "%s <%s>: %s", code, addr, why);
	return -1;
}

void
localaddr_list_free(char **list, size_t n)
{
	aliases_list_free(list, n);
}

char *
localaddr_sender(const struct localaddr *la, const char *addr)
{
	const char *const *t;
	const char *at;
	char name[SMTP_PATH_MAX + 1];
	size_t n;
	int own;

	if (*addr == '\0')
		return NULL;
	/* user@mail_domain is what smarthost-sendmail makes of a local
	 * user's address, so the map applies to it as to the bare login,
	 * even where mail_domain is not a local domain. */
	at = domain_at(addr);
	own = at != NULL && strcasecmp(at + 1, la->mail_domain) == 0;
	if (!own && !localaddr_is_local(la, addr))
		return NULL;
	part_key(addr, name, sizeof(name));
	if ((t = aliases_lookup(la->sender_map, name, &n)) != NULL)
		return xstrdup(t[0]);
	if (own || (at != NULL && !la->masquerade))
		return NULL;
	return xasprintf("%.*s@%s", at != NULL ? (int)(at - addr) :
	    (int)strlen(addr), addr, la->mail_domain);
}

static char *
header_sender(const char *addr, void *arg)
{
	return localaddr_sender(arg, addr);
}

char *
localaddr_headers(const struct localaddr *la, const char *hdr, size_t len,
    size_t *outlen)
{
	return rewrite_headers(hdr, len, header_sender,
	    (void *)(uintptr_t)la, outlen);
}
