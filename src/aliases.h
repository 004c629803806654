/*
 * Aliases in /etc/aliases syntax (aliases(5)), and their recursive
 * expansion.
 *
 * The file syntax, as Postfix and sendmail read it:
 *   - a line whose first non-blank character is '#', and a blank line, are
 *     ignored;
 *   - a line that starts with a space or a tab continues the entry above;
 *   - an entry is "name: target, target, ...". The name may be quoted
 *     ("john doe": ...); names are case-insensitive (stored lower-cased).
 *     Targets are addresses (user@domain) or local names, separated by
 *     commas outside quotes.
 * This daemon only relays, so the targets that deliver locally are refused
 * with the file and line: ":include:file", "/file", "|command" (quoted or
 * not) and "\user". An entry without targets, a name given twice and a
 * target that is not an address are refused too.
 *
 * The same syntax serves the sender rewrite map ("user: address" lines),
 * so both are parsed here.
 */
#ifndef SMARTHOST_ALIASES_H
#define SMARTHOST_ALIASES_H

#include <stddef.h>

/* Files bigger than this are refused rather than read into memory. */
#define ALIASES_FILE_MAX (16 * 1024 * 1024)
/* Expansion bounds: nesting of aliases, and alias look-ups per address
 * (which bounds the work a diamond-shaped alias graph can cause). */
#define ALIASES_MAX_DEPTH 16
#define ALIASES_MAX_STEPS 10000

struct aliases;

/*
 * Parses text (len bytes, need not be NUL-terminated) in the syntax above.
 * name is used in messages. On failure returns NULL and writes
 * "name:line: reason" to err. The caller frees the result with
 * aliases_free(). Pure: no I/O.
 */
struct aliases *aliases_parse(const char *text, size_t len, const char *name,
    char *err, size_t errlen);
/* Reads and parses the file path; errors as aliases_parse(), or
 * "path: reason" when the file cannot be read. */
struct aliases *aliases_load(const char *path, char *err, size_t errlen);
/* Accepts NULL. */
void aliases_free(struct aliases *al);

/* Number of entries. */
size_t aliases_count(const struct aliases *al);
/* The i-th entry (file order): its lower-cased name, targets and line. */
const char *aliases_name(const struct aliases *al, size_t i);
const char *const *aliases_targets(const struct aliases *al, size_t i,
    size_t *ntargets);
unsigned aliases_line(const struct aliases *al, size_t i);
/*
 * The targets of name (compared case-insensitively), or NULL when there is
 * no such entry; *ntargets receives their number. The pointers belong to
 * al. al may be NULL (no aliases file).
 */
const char *const *aliases_lookup(const struct aliases *al, const char *name,
    size_t *ntargets);

/* ---- expansion ---- */

enum aliases_result {
	ALIASES_OK,
	ALIASES_UNKNOWN,  /* a local name without alias and no catch-all */
	ALIASES_LOOP,     /* an alias that (indirectly) contains itself */
	ALIASES_TOO_DEEP, /* nested more than ALIASES_MAX_DEPTH */
	ALIASES_TOO_MANY, /* more than max_results addresses or steps */
};

struct aliases_resolver {
	const struct aliases *aliases; /* NULL: no aliases */
	/*
	 * Whether addr is local; if so writes its alias key (the local
	 * part, lower-cased) to name (namesize bytes) and returns 1.
	 * Returns 0 for a remote address.
	 */
	int (*local_name)(const char *addr, char *name, size_t namesize,
	    void *arg);
	void *arg;
	/* Where local names without an alias go; NULL: they are refused.
	 * Must not itself be local. */
	const char *catch_all;
	/* Where postmaster goes when neither it nor root has an alias and
	 * there is no catch-all (RFC 5321 4.5.1: it must be accepted);
	 * taken as it is, never looked up. NULL: refused like any name. */
	const char *postmaster;
	size_t max_results;
};

/*
 * Expands addr: a remote address is itself; a local one is replaced by its
 * alias targets, recursively; a local name without an alias becomes the
 * catch-all, or fails. postmaster (any case) without an alias of its own
 * is root, and without that either the catch-all, then r->postmaster. The result is de-duplicated (domains compared
 * case-insensitively) and in first-seen order.
 *
 * On ALIASES_OK, *out is a malloc'd array of *nout malloc'd strings that
 * the caller frees with aliases_list_free(). Otherwise *out is NULL and
 * why (whylen bytes) says which name failed and how, for example
 * "alias loop: root -> ops -> root" or "no such local user bob (no
 * alias)".
 */
enum aliases_result aliases_expand(const struct aliases_resolver *r,
    const char *addr, char ***out, size_t *nout, char *why, size_t whylen);
void aliases_list_free(char **list, size_t n);

/* 1 if a and b are the same address: local parts compared exactly,
 * domains without regard to case. */
int aliases_same_address(const char *a, const char *b);

#endif
