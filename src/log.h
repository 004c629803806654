/*
 * Logging: one line per event on stderr with sd-daemon priority prefixes
 * ("<3>...") so journald keeps the severity, or plain lines to a terminal.
 * Lines are key=value in the spirit of Postfix and always carry the queue id
 * when one exists. Secrets must never be passed here: callers redact first.
 */
#ifndef SMARTHOST_LOG_H
#define SMARTHOST_LOG_H

#include <stdarg.h>

/* debug != 0 enables log_debug(). ident prefixes terminal output. */
void log_init(const char *ident, int debug);
void log_setdebug(int debug);
int log_getdebug(void);

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

#endif
