/*
 * Log lines go to stderr. Under systemd (stderr not a terminal) each line
 * starts with an sd-daemon "<N>" priority prefix so journald files it at the
 * right severity; on a terminal lines carry a timestamp and the program name
 * instead. One write(2) per line keeps lines from different threads whole.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "escape.h"
#include "log.h"

#define LOG_LINE_MAX 4096

static const char *log_ident = "smarthostd";
static int log_debug_enabled;
static int log_tty = -1;

void
log_init(const char *ident, int debug)
{
	log_ident = ident;
	log_debug_enabled = debug;
	log_tty = isatty(STDERR_FILENO);
}

void
log_setdebug(int debug)
{
	log_debug_enabled = debug;
}

int
log_getdebug(void)
{
	return log_debug_enabled;
}

/*
 * Every line goes through escape_printable(): whatever a client or an
 * upstream sent (addresses, HELO names, replies) can reach a format
 * argument, and a CR, an ESC or a newline in it must not rewrite or split
 * the line on a terminal or in the journal.
 */
static void
log_vwrite(const char *prio, const char *fmt, va_list ap, const char *err)
{
	char line[LOG_LINE_MAX], msg[LOG_LINE_MAX];
	size_t n = 0;
	int r;

	if (log_tty == -1)
		log_tty = isatty(STDERR_FILENO);
	if (log_tty) {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		n = strftime(line, sizeof(line), "%H:%M:%S", &tm);
		r = snprintf(line + n, sizeof(line) - n, ".%03ld %s: ",
		    ts.tv_nsec / 1000000, log_ident);
	} else
		r = snprintf(line, sizeof(line), "%s", prio);
	if (r > 0)
		n += (size_t)r;
	if (n < sizeof(line)) {
		r = vsnprintf(msg, sizeof(msg), fmt, ap);
		if (r > 0)
			n += escape_printable(line + n, sizeof(line) - n, msg,
			    (size_t)r < sizeof(msg) ? (size_t)r :
			    sizeof(msg) - 1);
	}
	if (err != NULL && n < sizeof(line)) {
		r = snprintf(line + n, sizeof(line) - n, ": %s", err);
		if (r > 0)
			n += (size_t)r;
	}
	if (n >= sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* A log line that cannot be written has nowhere else to go. */
	if (write(STDERR_FILENO, line, n) < 0)
		return;
}

#define LOG_BODY(prio, err)                                              \
	do {                                                             \
		va_list ap;                                              \
		va_start(ap, fmt);                                       \
		log_vwrite(prio, fmt, ap, err);                          \
		va_end(ap);                                              \
	} while (0)

void
log_warn(const char *fmt, ...)
{
	char ebuf[128];
	const char *e = strerror_r(errno, ebuf, sizeof(ebuf));

	LOG_BODY(SD_WARNING, e);
}

void
log_warnx(const char *fmt, ...)
{
	LOG_BODY(SD_WARNING, NULL);
}

void
log_info(const char *fmt, ...)
{
	LOG_BODY(SD_INFO, NULL);
}

void
log_notice(const char *fmt, ...)
{
	LOG_BODY(SD_NOTICE, NULL);
}

void
log_debug(const char *fmt, ...)
{
	if (!log_debug_enabled)
		return;
	LOG_BODY(SD_DEBUG, NULL);
}

void
fatal(const char *fmt, ...)
{
	char ebuf[128];
	const char *e = strerror_r(errno, ebuf, sizeof(ebuf));

	LOG_BODY(SD_CRIT, e);
	exit(EX_SOFTWARE);
}

void
fatalx(const char *fmt, ...)
{
	LOG_BODY(SD_CRIT, NULL);
	exit(EX_SOFTWARE);
}

void
fatalx_code(int code, const char *fmt, ...)
{
	LOG_BODY(SD_CRIT, NULL);
	exit(code);
}

const char *
log_sanitize(char *buf, size_t bufsize, const char *line, size_t len)
{
	size_t i, n = 0, keep = len;

	if (bufsize == 0)
		return "";
	/*
	 * "AUTH MECH secret": keep the verb and the mechanism only. A line
	 * that does not look like a command inside an AUTH exchange is the
	 * caller's to redact (it knows the session is mid-AUTH).
	 */
	if (len >= 5 && strncasecmp(line, "AUTH ", 5) == 0) {
		const char *sp = memchr(line + 5, ' ', len - 5);

		if (sp != NULL)
			keep = (size_t)(sp - line);
	}
	n = escape_printable(buf, bufsize, line, keep);
	if (keep < len) {
		const char *red = " <redacted>";

		for (i = 0; red[i] != '\0' && n + 1 < bufsize; i++)
			buf[n++] = red[i];
	}
	buf[n] = '\0';
	return buf;
}

void
log_tool(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "%s: ", log_ident);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
}
