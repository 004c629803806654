/*
 * Sender-dependent routing: which relay a message goes to, chosen by its
 * envelope sender, as msmtp picks an account by its `from`, Postfix's
 * sender_dependent_relayhost_maps and Emacs's smtpmail-multi do.
 *
 * A rule matches the sender by the exact address, by its domain, or by a
 * POSIX extended regular expression; the first rule that matches names the
 * relay. Matching is a pure function over the rules and the address, so
 * config.c builds the rules (validating them with file and line) and the
 * scheduler asks at each delivery attempt.
 */
#ifndef SMARTHOST_ROUTE_H
#define SMARTHOST_ROUTE_H

#include <stddef.h>
#include <regex.h>

enum route_kind {
	ROUTE_SENDER, /* the whole address, without regard to case */
	ROUTE_DOMAIN, /* the part after the last "@", without regard to case */
	ROUTE_REGEXP, /* POSIX ERE, case-insensitive, searched in the address */
};

struct route {
	enum route_kind kind;
	char *pattern;  /* address, domain (no "@") or expression */
	regex_t re;     /* ROUTE_REGEXP only, after route_compile() */
	int compiled;   /* re holds a compiled expression */
	size_t relay;   /* index into the config's relays */
};

/*
 * Compiles r->pattern when r is a ROUTE_REGEXP rule (case-insensitive,
 * extended syntax); nothing to do for the others. Returns 0, or -1 with
 * regerror's text in err.
 */
int route_compile(struct route *r, char *err, size_t errlen);
/* Frees what r owns (pattern, compiled expression). Accepts NULL. */
void route_clear(struct route *r);

/*
 * The first of the n rules that matches sender (the envelope sender as
 * queued, without angle brackets; "" for the null sender, which only a
 * regular expression such as "^$" can match), or NULL when none does.
 */
const struct route *route_match(const struct route *routes, size_t n,
    const char *sender);

#endif
