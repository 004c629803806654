/*
 * Logging: one line per event on stderr with sd-daemon priority prefixes
 * ("<3>...") so journald keeps the severity, or plain lines to a terminal.
 * Lines are key=value in the spirit of Postfix and always carry the queue id
 * when one exists. Secrets must never be passed here: callers redact first.
 *
 * When stderr is the journal (JOURNAL_STREAM names stderr's device and
 * inode, as systemd sets it for a service), each event goes to journald
 * as one structured entry instead (sd_journal_sendv): MESSAGE= the line's
 * text, PRIORITY=, SYSLOG_IDENTIFIER= the ident, ERRNO= for log_warn,
 * and the fields of struct log_fields. A line that starts with a queue id
 * and ": " carries QUEUE_ID= without being told. Should the journal
 * refuse an entry, the line goes to stderr as before.
 */
#ifndef SMARTHOST_LOG_H
#define SMARTHOST_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <sys/uio.h>

/* debug != 0 enables log_debug(). ident prefixes terminal output. */
void log_init(const char *ident, int debug);
void log_setdebug(int debug);
int log_getdebug(void);

/*
 * What a log line says about one message, as journal fields; any may be
 * NULL (left out). Values are escaped like the line (escape_printable).
 */
struct log_fields {
	const char *queue_id; /* QUEUE_ID=, else taken from the line */
	const char *relay;    /* RELAY=, the line's relay= text */
	const char *status;   /* STATUS=: sent, deferred, bounced, expired */
	const char *dsn;      /* DSN=, the status code, e.g. 2.0.0 */
};

/* log_info() and friends with fields: priority is a syslog(3) level
 * (LOG_INFO, ...); f may be NULL. */
void log_msg(int priority, const struct log_fields *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* log_warn appends ": strerror(errno)"; log_warnx does not. */
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Start-up failures and broken invariants only; exit with EX_SOFTWARE
 * (fatal*) or the given sysexits code (fatalx_code). */
void fatal(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
void fatalx(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
void fatalx_code(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

/*
 * A command-line tool's message to its user (smarthostctl,
 * smarthost-sendmail): "ident: message" and a newline on stderr, after
 * stdout is flushed so the two stay in order; no priority prefix or
 * timestamp, whatever stderr is.
 */
void log_tool(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Copies a protocol line into buf for a trace, replacing the argument of
 * AUTH commands and SASL continuation lines with "<redacted>" so a debug
 * trace never shows credentials. Other bytes are escaped as
 * escape_printable() does.
 */
const char *log_sanitize(char *buf, size_t bufsize, const char *line,
    size_t len);

/* Whether log lines go to the journal (see above); decided at log_init. */
int log_journal(void);

#define LOG_JOURNAL_FIELDS 10
#define LOG_JOURNAL_BUF 8192 /* a 4 KiB MESSAGE and every other field */

/* One journal entry's fields, pointing into buf. */
struct log_entry {
	struct iovec iov[LOG_JOURNAL_FIELDS];
	int n;
	char buf[LOG_JOURNAL_BUF];
};

/*
 * Pure: fills e with the entry for message msg (already escaped, as the
 * line would show it): MESSAGE=, PRIORITY=, SYSLOG_IDENTIFIER=ident,
 * ERRNO=errnum when errnum is not 0, then f's fields, each value escaped
 * with escape_printable() and cut (MESSAGE at 4 KiB, the others at 256
 * bytes, so every field fits); QUEUE_ID= from msg's start when f has
 * none. Returns e->n.
 */
int log_journal_entry(struct log_entry *e, int priority, const char *ident,
    const char *msg, int errnum, const struct log_fields *f);

/*
 * Pure: whether "dev:ino" (JOURNAL_STREAM's form, decimal) names the file
 * with st_dev dev and st_ino ino.
 */
int log_journal_stream_is(const char *value, unsigned long long dev,
    unsigned long long ino);

#endif
