/*
 * The outcome type and its two maps: to the dsn= code we log and put in
 * DSNs, and to sysexits(3) for the command-line tools.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

#include "outcome.h"

static const char *const outcome_status_names[] = {
	[OUTCOME_OK] = "ok",
	[OUTCOME_TEMPORARY] = "temporary",
	[OUTCOME_PERMANENT] = "permanent",
};
_Static_assert(sizeof(outcome_status_names) / sizeof(*outcome_status_names) ==
    OUTCOME_PERMANENT + 1, "outcome_status_names out of date");

static const char *const outcome_class_names[] = {
	[OC_NONE] = "none",
	[OC_DNS] = "dns",
	[OC_CONNECT] = "connect",
	[OC_TLS] = "tls",
	[OC_TIMEOUT] = "timeout",
	[OC_PROTOCOL] = "protocol",
	[OC_REPLY] = "reply",
	[OC_AUTH] = "auth",
	[OC_NOCRED] = "nocred",
	[OC_AUTH_RETRY] = "auth_retry",
	[OC_LOCAL] = "local",
	[OC_EXPIRED] = "expired",
	[OC_RESOURCE] = "resource",
};
_Static_assert(sizeof(outcome_class_names) / sizeof(*outcome_class_names) ==
    OC__COUNT, "outcome_class_names out of date");

void
outcome_set(struct outcome *o, enum outcome_status status,
    enum outcome_class class, const char *fmt, ...)
{
	va_list ap;

	memset(o, 0, sizeof(*o));
	o->status = status;
	o->class = class;
	va_start(ap, fmt);
	vsnprintf(o->text, sizeof(o->text), fmt, ap);
	va_end(ap);
}

void
outcome_from_reply(struct outcome *o, int code, const char *enhanced,
    const char *text)
{
	memset(o, 0, sizeof(*o));
	if (code >= 200 && code < 400)
		o->status = OUTCOME_OK;
	else if (code >= 400 && code < 500)
		o->status = OUTCOME_TEMPORARY;
	else
		o->status = OUTCOME_PERMANENT;
	o->class = o->status == OUTCOME_OK ? OC_NONE : OC_REPLY;
	o->code = code;
	if (enhanced != NULL)
		snprintf(o->enhanced, sizeof(o->enhanced), "%s", enhanced);
	if (o->enhanced[0] != '\0')
		snprintf(o->text, sizeof(o->text), "%d %s %s", code,
		    o->enhanced, text != NULL ? text : "");
	else
		snprintf(o->text, sizeof(o->text), "%d %s", code,
		    text != NULL ? text : "");
}

const char *
outcome_status_name(enum outcome_status status)
{
	return outcome_status_names[status];
}

const char *
outcome_class_name(enum outcome_class class)
{
	return outcome_class_names[class];
}

const char *
outcome_dsn_code(const struct outcome *o)
{
	int temp = o->status == OUTCOME_TEMPORARY;

	if (o->enhanced[0] != '\0')
		return o->enhanced;
	switch (o->class) {
	case OC_NONE:
		return "2.0.0";
	case OC_DNS:
		return temp ? "4.4.3" : "5.4.3";
	case OC_CONNECT:
		return temp ? "4.4.1" : "5.4.1";
	case OC_TLS:
		return temp ? "4.7.5" : "5.7.5";
	case OC_TIMEOUT:
		return temp ? "4.4.2" : "5.4.2";
	case OC_PROTOCOL:
		return temp ? "4.5.0" : "5.5.0";
	case OC_REPLY:
		if (o->code >= 200 && o->code < 300)
			return "2.0.0";
		return temp ? "4.0.0" : "5.0.0";
	case OC_AUTH:
	case OC_NOCRED:
		return temp ? "4.7.0" : "5.7.0";
	case OC_AUTH_RETRY:
		return "4.7.0";
	case OC_LOCAL:
		return temp ? "4.3.0" : "5.3.0";
	case OC_RESOURCE:
		return "4.3.0";
	case OC_EXPIRED:
		return "4.4.7";
	case OC__COUNT:
		break;
	}
	return temp ? "4.0.0" : "5.0.0";
}

int
outcome_sysexit(const struct outcome *o)
{
	if (o->status == OUTCOME_OK)
		return EX_OK;
	switch (o->class) {
	case OC_NONE:
		return EX_OK;
	case OC_DNS:
		return EX_NOHOST;
	case OC_CONNECT:
	case OC_TIMEOUT:
	case OC_EXPIRED:
	case OC_AUTH_RETRY:
		return EX_TEMPFAIL;
	case OC_TLS:
	case OC_PROTOCOL:
		return EX_PROTOCOL;
	case OC_AUTH:
	case OC_NOCRED:
		return EX_NOPERM;
	case OC_LOCAL:
		return EX_IOERR;
	case OC_RESOURCE:
		return EX_OSERR;
	case OC_REPLY:
		return o->status == OUTCOME_TEMPORARY ? EX_TEMPFAIL :
		    EX_UNAVAILABLE;
	case OC__COUNT:
		break;
	}
	return EX_SOFTWARE;
}
