/*
 * What the daemon learned about relays: the set of upstreams that demanded
 * authentication (a 530 to MAIL, or a 5.7.x to RCPT while AUTH was
 * offered). A relay in the set authenticates right after EHLO on every
 * later session, like one matching an auth_first regexp. The set survives
 * restarts in one file, which smarthostctl also reads (status) and asks
 * the daemon to edit (forget).
 *
 * The file: <state_dir>/auth-required
 *  - Plain ASCII text, one line per entry, lines end in LF (a CR before
 *    the LF is ignored on reading). At most AUTHSTATE_FILE_MAX bytes.
 *  - Blank lines, and lines whose first non-blank byte is '#', are
 *    ignored. The daemon writes a '#' comment header.
 *  - An entry line is exactly two fields separated by blanks (spaces or
 *    tabs), with optional leading and trailing blanks:
 *        HOST PORT
 *    HOST is the relay's host name as configured, in lower case (a
 *    numeric IPv6 address without brackets, e.g. "2001:db8::25").
 *    PORT is the decimal port number (1..65535) when the configured port
 *    has one (service names smtp, submission, submissions/smtps/ssmtp
 *    are written as 25, 587, 465); any other configured service name is
 *    written as configured, lower-cased.
 *    Fields are printable ASCII without blanks, at most 255 bytes each.
 *  - Any other line (one field, three fields, control bytes) is skipped
 *    with a warning naming its line number; the rest still counts.
 *    Duplicate entries count once. Order is the order learned.
 *  - The daemon replaces the file atomically (auth-required.tmp, fsync,
 *    rename, fsync of the directory), mode 0600, state_dir mode 0700.
 *  Example:
 *        # smarthostd: relays that require authentication (host port)
 *        smtp.example.com 587
 *        mail.example.org 465
 *
 * Not thread-safe: the loop thread owns the set; saving runs on the
 * worker pool with a snapshot.
 */
#ifndef SMARTHOST_AUTHSTATE_H
#define SMARTHOST_AUTHSTATE_H

#include <stddef.h>

#include "worker.h"

#define AUTHSTATE_FILE "auth-required"
#define AUTHSTATE_FILE_MAX (1024 * 1024)
#define AUTHSTATE_FIELD_MAX 255

struct authstate;

/* Receives one warning about line (from 1) of the parsed text. */
typedef void authstate_warn_fn(unsigned line, const char *msg, void *arg);

/* An empty set that lives only in memory (tests, or when the state
 * directory is unusable). Free with authstate_free(). */
struct authstate *authstate_new(void);

/*
 * Opens the set kept in dir: creates dir (mode 0700, not its parents) if
 * it is missing, and reads dir/auth-required (a missing file is an empty
 * set; unreadable lines are warned about through log_warnx). Changes are
 * saved through w's threads, or synchronously when w is NULL. Returns the
 * set, or NULL with a message in err when dir cannot be created or the
 * file cannot be read.
 */
struct authstate *authstate_open(struct worker *w, const char *dir,
    char *err, size_t errlen);
/* Frees the set. A save in progress finishes on its own (its completion,
 * on the loop thread or in worker_free, frees what is left). Accepts
 * NULL. */
void authstate_free(struct authstate *as);

/* Pure: adds the entries of len bytes of buf (the file format above) to
 * as. Returns how many lines were skipped as malformed. */
unsigned authstate_parse(struct authstate *as, const char *buf, size_t len,
    authstate_warn_fn *warn, void *arg);
/* Pure: the file's text for as, header included; the caller frees it.
 * *len (if not NULL) receives its length. */
char *authstate_format(const struct authstate *as, size_t *len);

/*
 * The normal form of an entry, as stored: host lower-cased without
 * brackets, port a number when it names one. Returns 0, or -1 when host
 * or port cannot be stored (empty, too long, blanks or control bytes).
 */
int authstate_normalize(const char *host, const char *port, char *nhost,
    size_t nhostlen, char *nport, size_t nportlen);

/* 1 if host/port (compared in normal form) is in the set, else 0. */
int authstate_has(const struct authstate *as, const char *host,
    const char *port);
/*
 * Adds host/port. When it is new, logs "relay HOST:PORT requires
 * authentication; will authenticate first from now on", saves the set
 * and returns 1; returns 0 if it was known, -1 if it cannot be stored.
 */
int authstate_learn(struct authstate *as, const char *host,
    const char *port);
/*
 * Removes entries: spec "host" removes every port of host; "host:port",
 * "[v6addr]:port" or "host port" removes that one (a spec with two or
 * more colons and no brackets is an IPv6 host). Saves when something was
 * removed and returns 0; returns -1 when nothing matched.
 */
int authstate_forget(struct authstate *as, const char *spec);
/* Calls each(host, port, arg) for every entry, in order; returns the
 * number of entries. each may be NULL. */
size_t authstate_list(const struct authstate *as,
    void (*each)(const char *host, const char *port, void *arg), void *arg);
/* 1 while a save runs on the worker pool or is due, else 0 (tests). */
int authstate_saving(const struct authstate *as);

#endif
