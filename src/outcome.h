/*
 * One outcome type for everything that can succeed or fail on the way to the
 * upstream: ok, temporary or permanent, with a class saying what failed and,
 * when a server said it, the reply. It maps to queue actions in relay.c and
 * scheduler.c and to sysexits here, in one place.
 */
#ifndef SMARTHOST_OUTCOME_H
#define SMARTHOST_OUTCOME_H

enum outcome_status {
	OUTCOME_OK,
	OUTCOME_TEMPORARY,
	OUTCOME_PERMANENT,
};

enum outcome_class {
	OC_NONE,     /* success */
	OC_DNS,      /* name did not resolve */
	OC_CONNECT,  /* no address accepted a connection */
	OC_TLS,      /* handshake, certificate or STARTTLS missing */
	OC_TIMEOUT,  /* the peer stalled */
	OC_PROTOCOL, /* malformed reply, unexpected close */
	OC_REPLY,    /* the server answered with a 4xx/5xx */
	OC_AUTH,     /* authentication failed or was required */
	OC_NOCRED,   /* no usable credentials */
	OC_AUTH_RETRY, /* the server demanded AUTH, then hung up before we
	                  could give it: try again at once, AUTH first */
	OC_LOCAL,    /* our side: disk full, I/O error, config */
	OC_EXPIRED,  /* message lifetime ended */
	OC_RESOURCE, /* our side ran out of descriptors: retried soon, not
	                counted as an attempt */
	OC__COUNT
};

#define OUTCOME_TEXT_MAX 512

struct outcome {
	enum outcome_status status;
	enum outcome_class class;
	int code;          /* SMTP reply code, 0 if none */
	char enhanced[16]; /* "4.7.0", "" if none */
	char text[OUTCOME_TEXT_MAX]; /* reply text or our description */
};

/* Sets every field; text is printf-formatted and truncated to fit. */
void outcome_set(struct outcome *o, enum outcome_status status,
    enum outcome_class class, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Sets o from an SMTP reply code, enhanced code (may be NULL or "") and
 * text: 2xx ok, 4xx temporary, 5xx permanent, class OC_REPLY. */
void outcome_from_reply(struct outcome *o, int code, const char *enhanced,
    const char *text);
const char *outcome_status_name(enum outcome_status status);
const char *outcome_class_name(enum outcome_class class);
/* The dsn= value for logs and DSNs: o->enhanced, or a default derived from
 * status and class ("4.4.1" for a connection failure, ...). */
const char *outcome_dsn_code(const struct outcome *o);
/* sysexits(3) code for command-line tools: EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE,
 * EX_NOHOST, EX_PROTOCOL, EX_NOPERM, EX_IOERR, EX_CONFIG. */
int outcome_sysexit(const struct outcome *o);

#endif
