/*
 * Which envelope senders a local user may use (config sender_policy), in
 * the spirit of Postfix's local_login_sender_maps: on a shared server one
 * local user must not send through the company account as another.
 *
 * Modes: "any" (no check), "own" (the user's own addresses only), "map"
 * (own addresses plus what a map file grants the user or one of their
 * groups). Users (or %groups) in the exempt list may use any sender. The
 * null sender <> is always allowed: it claims nobody's address. Sessions
 * without a known local user (clients from allow_networks) are not subject
 * to the policy; the caller decides that.
 *
 * Own addresses of user LOGIN: "LOGIN" without a domain and LOGIN@D for D
 * in the local domains the caller passes (localhost, hostname,
 * mail_domain). Comparison ignores case.
 *
 * Map file: one "key: value, value, ..." entry a line; key is a login or
 * %group; a value is an address, "@domain" (any address in that domain) or
 * "*" (any sender). '#' starts a comment; a line starting with blanks
 * continues the previous one. Parsing and checking are pure functions; only
 * sender_policy_load_map() and sender_identity_lookup() touch the system.
 */
#ifndef SMARTHOST_SENDERPOLICY_H
#define SMARTHOST_SENDERPOLICY_H

#include <stddef.h>
#include <sys/types.h>

enum sender_policy_mode {
	SENDER_POLICY_ANY,
	SENDER_POLICY_OWN,
	SENDER_POLICY_MAP,
};

struct sender_policy;

/* The local user behind a session: login name and group names. */
struct sender_identity {
	uid_t uid;
	char *login;     /* NULL when the uid has no passwd entry */
	char **groups;   /* primary and supplementary group names */
	size_t ngroups;
};

/* A policy with no map and no exemptions. */
struct sender_policy *sender_policy_new(enum sender_policy_mode mode);
void sender_policy_free(struct sender_policy *p);
enum sender_policy_mode sender_policy_mode(const struct sender_policy *p);
/* Adds a login or "%group" that may use any sender. */
void sender_policy_exempt(struct sender_policy *p, const char *who);
/*
 * Parses map text (len bytes). On error returns -1 with "name:line:
 * reason" in err; the policy is then unchanged only up to the bad line, so
 * callers discard it.
 */
int sender_policy_parse_map(struct sender_policy *p, const char *text,
    size_t len, const char *name, char *err, size_t errlen);
/* Reads and parses the map file at path (at most 16 MiB). */
int sender_policy_load_map(struct sender_policy *p, const char *path,
    char *err, size_t errlen);

/*
 * 0 if who may use sender (an address without angle brackets, "" for <>),
 * -1 if not. domains are the local domains (ndomains of them).
 */
int sender_policy_check(const struct sender_policy *p,
    const struct sender_identity *who, const char *sender,
    const char *const *domains, size_t ndomains);

/* Fills who from the passwd and group databases; 0, or -1 if uid has no
 * passwd entry (who->login is NULL then; free it anyway). */
int sender_identity_lookup(uid_t uid, struct sender_identity *who);
void sender_identity_free(struct sender_identity *who);

#endif
