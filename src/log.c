/*
 * Log lines go to stderr. Under systemd (stderr not a terminal) each line
 * starts with an sd-daemon "<N>" priority prefix so journald files it at the
 * right severity; on a terminal lines carry a timestamp and the program name
 * instead. One write(2) per line keeps lines from different threads whole.
 * When stderr is the journal's stream, entries go to journald with fields
 * instead (log.h); the message text is the same in both.
 */
#include <sys/stat.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-journal.h>

#include "escape.h"
#include "log.h"

#define LOG_LINE_MAX 4096
#define QUEUE_ID_LEN 16
#define FIELD_MAX 256

static const char *log_ident = "smarthostd";
static int log_debug_enabled;
static int log_tty = -1;
static int log_to_journal = -1;

int
log_journal_stream_is(const char *value, unsigned long long dev,
    unsigned long long ino)
{
	unsigned long long d, i;
	char *end;

	if (value == NULL || value[0] < '0' || value[0] > '9')
		return 0;
	errno = 0;
	d = strtoull(value, &end, 10);
	if (errno != 0 || *end != ':' || end[1] < '0' || end[1] > '9')
		return 0;
	i = strtoull(end + 1, &end, 10);
	return errno == 0 && *end == '\0' && d == dev && i == ino;
}

/* Whether stderr is the stream JOURNAL_STREAM names. */
static int
journal_detect(void)
{
	struct stat st;

	if (fstat(STDERR_FILENO, &st) == -1)
		return 0;
	return log_journal_stream_is(getenv("JOURNAL_STREAM"),
	    (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
}

int
log_journal(void)
{
	if (log_to_journal == -1)
		log_to_journal = journal_detect();
	return log_to_journal;
}

void
log_init(const char *ident, int debug)
{
	log_ident = ident;
	log_debug_enabled = debug;
	log_tty = isatty(STDERR_FILENO);
	log_to_journal = journal_detect();
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
 * Appends "KEY=value" to e, value escaped and cut to cap bytes. The caps
 * (LOG_LINE_MAX for MESSAGE, FIELD_MAX for the rest) keep every field in
 * buf, whatever the values.
 */
static void
entry_add(struct log_entry *e, size_t *used, const char *key,
    const char *value, size_t cap)
{
	size_t klen = strlen(key), room = sizeof(e->buf) - *used, n;
	char *p = e->buf + *used;

	if (room > klen + 1 + cap + 1)
		room = klen + 1 + cap + 1;
	if (e->n == LOG_JOURNAL_FIELDS || room < klen + 2)
		return;
	memcpy(p, key, klen);
	p[klen] = '=';
	n = klen + 1 + escape_str(p + klen + 1, room - klen - 1, value);
	e->iov[e->n].iov_base = p;
	e->iov[e->n].iov_len = n;
	e->n++;
	*used += n + 1; /* keep the NUL escape_str wrote */
}

/* The queue id msg starts with ("<16 hex>: "), copied into id. */
static const char *
queue_id_of(const char *msg, char *id)
{
	size_t i;

	for (i = 0; i < QUEUE_ID_LEN; i++)
		if (!((msg[i] >= '0' && msg[i] <= '9') ||
		    (msg[i] >= 'A' && msg[i] <= 'F')))
			return NULL;
	if (msg[i] != ':' || msg[i + 1] != ' ')
		return NULL;
	memcpy(id, msg, QUEUE_ID_LEN);
	id[QUEUE_ID_LEN] = '\0';
	return id;
}

int
log_journal_entry(struct log_entry *e, int priority, const char *ident,
    const char *msg, int errnum, const struct log_fields *f)
{
	char num[16], id[QUEUE_ID_LEN + 1];
	const char *qid = f != NULL ? f->queue_id : NULL;
	size_t used = 0;

	e->n = 0;
	entry_add(e, &used, "MESSAGE", msg, LOG_LINE_MAX);
	snprintf(num, sizeof(num), "%d", priority);
	entry_add(e, &used, "PRIORITY", num, FIELD_MAX);
	entry_add(e, &used, "SYSLOG_IDENTIFIER", ident, FIELD_MAX);
	if (errnum != 0) {
		snprintf(num, sizeof(num), "%d", errnum);
		entry_add(e, &used, "ERRNO", num, FIELD_MAX);
	}
	if (qid == NULL)
		qid = queue_id_of(msg, id);
	if (qid != NULL)
		entry_add(e, &used, "QUEUE_ID", qid, FIELD_MAX);
	if (f != NULL && f->relay != NULL)
		entry_add(e, &used, "RELAY", f->relay, FIELD_MAX);
	if (f != NULL && f->status != NULL)
		entry_add(e, &used, "STATUS", f->status, FIELD_MAX);
	if (f != NULL && f->dsn != NULL)
		entry_add(e, &used, "DSN", f->dsn, FIELD_MAX);
	return e->n;
}

/*
 * Every line goes through escape_printable(): whatever a client or an
 * upstream sent (addresses, HELO names, replies) can reach a format
 * argument, and a CR, an ESC or a newline in it must not rewrite or split
 * the line on a terminal or in the journal. errnum, when not 0, adds
 * ": strerror(errnum)".
 */
static void
log_vwrite(int priority, const struct log_fields *f, const char *fmt,
    va_list ap, int errnum)
{
	char line[LOG_LINE_MAX], msg[LOG_LINE_MAX], text[LOG_LINE_MAX];
	char ebuf[128];
	size_t n = 0, tn = 0;
	int r;

	r = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (r > 0)
		tn = escape_printable(text, sizeof(text), msg,
		    (size_t)r < sizeof(msg) ? (size_t)r : sizeof(msg) - 1);
	text[tn] = '\0';
	if (errnum != 0 && tn < sizeof(text)) {
		r = snprintf(text + tn, sizeof(text) - tn, ": %s",
		    strerror_r(errnum, ebuf, sizeof(ebuf)));
		if (r > 0)
			tn = tn + (size_t)r < sizeof(text) ? tn + (size_t)r :
			    sizeof(text) - 1;
	}
	if (log_journal()) {
		struct log_entry e;

		log_journal_entry(&e, priority, log_ident, text, errnum, f);
		/* The function, not the macro: CODE_FILE= would name this
		 * file for every entry. */
		if ((sd_journal_sendv)(e.iov, e.n) >= 0)
			return;
	}
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
		if (r > 0)
			n += (size_t)r;
	} else if (priority >= 0 && priority <= 7) {
		/* sd-daemon's prefix, without a printf per line */
		line[n++] = '<';
		line[n++] = (char)('0' + priority);
		line[n++] = '>';
	} else if ((r = snprintf(line, sizeof(line), "<%d>", priority)) > 0)
		n += (size_t)r;
	/* The prefix and the text, cut so that the newline still fits. */
	if (n > sizeof(line) - 1)
		n = sizeof(line) - 1;
	if (tn > sizeof(line) - 1 - n)
		tn = sizeof(line) - 1 - n;
	memcpy(line + n, text, tn);
	n += tn;
	line[n++] = '\n';
	/* A log line that cannot be written has nowhere else to go. */
	if (write(STDERR_FILENO, line, n) < 0)
		return;
}

#define LOG_BODY(prio, errnum)                                           \
	do {                                                             \
		va_list ap;                                              \
		va_start(ap, fmt);                                       \
		log_vwrite(prio, NULL, fmt, ap, errnum);                 \
		va_end(ap);                                              \
	} while (0)

void
log_msg(int priority, const struct log_fields *f, const char *fmt, ...)
{
	va_list ap;

	if (priority == LOG_DEBUG && !log_debug_enabled)
		return;
	va_start(ap, fmt);
	log_vwrite(priority, f, fmt, ap, 0);
	va_end(ap);
}

void
log_warn(const char *fmt, ...)
{
	int e = errno;

	LOG_BODY(LOG_WARNING, e);
}

void
log_warnx(const char *fmt, ...)
{
	LOG_BODY(LOG_WARNING, 0);
}

void
log_info(const char *fmt, ...)
{
	LOG_BODY(LOG_INFO, 0);
}

void
log_notice(const char *fmt, ...)
{
	LOG_BODY(LOG_NOTICE, 0);
}

void
log_debug(const char *fmt, ...)
{
	if (!log_debug_enabled)
		return;
	LOG_BODY(LOG_DEBUG, 0);
}

void
fatal(const char *fmt, ...)
{
	int e = errno;

	LOG_BODY(LOG_CRIT, e);
	exit(EX_SOFTWARE);
}

void
fatalx(const char *fmt, ...)
{
	LOG_BODY(LOG_CRIT, 0);
	exit(EX_SOFTWARE);
}

void
fatalx_code(int code, const char *fmt, ...)
{
	LOG_BODY(LOG_CRIT, 0);
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
