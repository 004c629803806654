/*
 * The -bs dialogue without the daemon (see localsmtp.h).
 *
 * Input is split into lines here, since the caller reads whatever the
 * pipe holds. In the command states a line is at most LOCALSMTP_LINE_MAX
 * bytes; a longer one is skipped to its end and answered 500. In DATA
 * the message, line buffer included, is at most max_size bytes: beyond
 * that the rest is read and dropped, and the end of data is answered 552.
 * Memory is thus bounded by max_size plus a line.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "localsmtp.h"
#include "log.h"
#include "smtp_proto.h"
#include "strbuf.h"
#include "xmalloc.h"

enum ls_state {
	LS_START,   /* greeted; no HELO/EHLO yet */
	LS_READY,   /* after HELO/EHLO or a finished transaction */
	LS_MAIL,    /* MAIL accepted, no recipient yet */
	LS_RCPT,    /* at least one recipient */
	LS_DATA,    /* reading the message */
	LS_DONE,    /* QUIT answered or 421 sent: input ignored */
};
#define LS__COUNT (LS_DONE + 1)

static const char *const ls_state_names[] = {
	"START",
	"READY",
	"MAIL",
	"RCPT",
	"DATA",
	"DONE",
};
_Static_assert(sizeof(ls_state_names) / sizeof(ls_state_names[0]) ==
    LS__COUNT, "ls_state_names out of step with enum ls_state");

struct localsmtp {
	struct localsmtp_params p;
	enum ls_state state;
	int esmtp;           /* EHLO, not HELO */
	int quit;
	unsigned errors;
	unsigned delivered;
	struct strbuf out;   /* replies not yet written */
	struct strbuf line;  /* the line being read */
	int skipping;        /* dropping the rest of an overlong line */
	int skipped_cr;      /* the last byte dropped was a CR */
	/* the transaction */
	char *sender;
	char **rcpts;
	size_t nrcpts;
	struct strbuf msg;
	int prev_crlf;       /* the previous data line ended with CRLF */
	int oversize;
	int nul;
};

static void reply(struct localsmtp *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
reply(struct localsmtp *s, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n > sizeof(line) - 3)
		n = (int)(sizeof(line) - 3);
	memcpy(line + n, "\r\n", 2);
	strbuf_add(&s->out, line, (size_t)n + 2);
}

static void
enter(struct localsmtp *s, enum ls_state next)
{
	log_debug("localsmtp: %s -> %s", ls_state_names[s->state],
	    ls_state_names[next]);
	s->state = next;
}

/* Counts one client error; past LOCALSMTP_MAX_ERRORS the session ends.
 * Returns 1 when it did. */
static int
client_error(struct localsmtp *s)
{
	if (++s->errors <= LOCALSMTP_MAX_ERRORS)
		return 0;
	reply(s, "421 4.7.0 Too many errors, closing the session");
	enter(s, LS_DONE);
	return 1;
}

static void
txn_clear(struct localsmtp *s)
{
	size_t i;

	free(s->sender);
	s->sender = NULL;
	for (i = 0; i < s->nrcpts; i++)
		free(s->rcpts[i]);
	free(s->rcpts);
	s->rcpts = NULL;
	s->nrcpts = 0;
	strbuf_free(&s->msg);
	s->oversize = s->nul = 0;
}

/* ---- commands ---- */

static void
cmd_helo(struct localsmtp *s, const char *arg, int ehlo)
{
	if (arg[0] == '\0') {
		reply(s, "501 5.5.4 Syntax: %s hostname", ehlo ? "EHLO" :
		    "HELO");
		client_error(s);
		return;
	}
	txn_clear(s);
	s->esmtp = ehlo;
	if (ehlo)
		reply(s, "250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
		    "250-SIZE %zu\r\n250 ENHANCEDSTATUSCODES", s->p.hostname,
		    s->p.max_size);
	else
		reply(s, "250 %s", s->p.hostname);
	enter(s, LS_READY);
}

/* Checks MAIL's parameters. Returns 0, or -1 after replying. */
static int
mail_params(struct localsmtp *s, const char *params)
{
	char key[32], value[64], *end;
	unsigned long long size;
	int r;

	if (*params != '\0' && !s->esmtp) {
		reply(s, "555 5.5.4 MAIL parameters need EHLO");
		return -1;
	}
	while ((r = smtp_param_next(&params, key, sizeof(key), value,
	    sizeof(value))) == 1) {
		if (strcmp(key, "SIZE") == 0) {
			errno = 0;
			size = strtoull(value, &end, 10);
			if (value[0] < '0' || value[0] > '9' || *end != '\0' ||
			    errno != 0) {
				reply(s, "501 5.5.4 Bad SIZE parameter");
				return -1;
			}
			if (size > s->p.max_size) {
				reply(s, "552 5.3.4 Message size exceeds "
				    "fixed maximum message size");
				return -1;
			}
		} else if (strcmp(key, "BODY") == 0) {
			if (strcasecmp(value, "8BITMIME") != 0 &&
			    strcasecmp(value, "7BIT") != 0) {
				reply(s, "501 5.5.4 Unsupported BODY type");
				return -1;
			}
		} else {
			reply(s, "555 5.5.4 Unsupported parameter %s", key);
			return -1;
		}
	}
	if (r == -1) {
		reply(s, "501 5.5.4 Syntax error in parameters");
		return -1;
	}
	return 0;
}

static void
cmd_mail(struct localsmtp *s, const char *arg)
{
	char addr[SMTP_PATH_MAX];
	const char *params, *why;

	if (s->state != LS_READY) {
		reply(s, "503 5.5.1 %s", s->state == LS_START ?
		    "Send HELO or EHLO first" : "Nested MAIL command");
		client_error(s);
		return;
	}
	if (smtp_path_parse(arg, "FROM:", addr, sizeof(addr), &params,
	    &why) == -1) {
		reply(s, "501 5.5.4 Syntax: MAIL FROM:<address> (%s)", why);
		client_error(s);
		return;
	}
	if (mail_params(s, params) == -1) {
		client_error(s);
		return;
	}
	if (addr[0] != '\0' && !smtp_mailbox_valid(addr, 0) &&
	    !localaddr_unqualified_ok(addr, 0)) {
		reply(s, "501 5.1.7 Bad sender address syntax");
		client_error(s);
		return;
	}
	s->sender = xstrdup(addr);
	reply(s, "250 2.1.0 Ok");
	enter(s, LS_MAIL);
}

static void
cmd_rcpt(struct localsmtp *s, const char *arg)
{
	char addr[SMTP_PATH_MAX], text[512], **list;
	const char *params, *why;
	size_t n;

	if (s->state != LS_MAIL && s->state != LS_RCPT) {
		reply(s, "503 5.5.1 Need MAIL before RCPT");
		client_error(s);
		return;
	}
	if (smtp_path_parse(arg, "TO:", addr, sizeof(addr), &params,
	    &why) == -1) {
		reply(s, "501 5.5.4 Syntax: RCPT TO:<address> (%s)", why);
		client_error(s);
		return;
	}
	if (*params != '\0') {
		reply(s, "555 5.5.4 RCPT parameters not supported");
		client_error(s);
		return;
	}
	if (!smtp_mailbox_valid(addr, 0) && !localaddr_unqualified_ok(addr,
	    0)) {
		reply(s, "501 5.1.3 Bad recipient address syntax");
		client_error(s);
		return;
	}
	if (s->nrcpts >= s->p.max_recipients) {
		reply(s, "452 4.5.3 Too many recipients");
		return;
	}
	/* The daemon expands aliases when it imports the message; here
	 * only a local name it would refuse is refused. */
	if (s->p.local != NULL) {
		if (localaddr_rcpt(s->p.local, addr, s->p.max_recipients,
		    &list, &n, text, sizeof(text)) == -1) {
			reply(s, "%s", text);
			client_error(s);
			return;
		}
		localaddr_list_free(list, n);
	}
	s->rcpts = xreallocarray(s->rcpts, s->nrcpts + 1,
	    sizeof(*s->rcpts));
	s->rcpts[s->nrcpts++] = xstrdup(addr);
	reply(s, "250 2.1.5 Ok");
	enter(s, LS_RCPT);
}

static void
cmd_data(struct localsmtp *s, const char *arg)
{
	if (s->state != LS_RCPT) {
		reply(s, "503 5.5.1 %s", s->state == LS_MAIL ?
		    "No valid recipients" : "Need MAIL and RCPT before DATA");
		client_error(s);
		return;
	}
	if (arg[0] != '\0') {
		reply(s, "501 5.5.4 Syntax: DATA");
		client_error(s);
		return;
	}
	s->prev_crlf = 1;
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
	enter(s, LS_DATA);
}

static void
cmd_rset(struct localsmtp *s, const char *arg)
{
	txn_clear(s);
	reply(s, "250 2.0.0 Ok");
	if (s->state != LS_START)
		enter(s, LS_READY);
}

static void
cmd_noop(struct localsmtp *s, const char *arg)
{
	reply(s, "250 2.0.0 Ok");
}

static void
cmd_vrfy(struct localsmtp *s, const char *arg)
{
	reply(s, "252 2.5.0 Cannot VRFY; send some mail and see");
}

static void
cmd_quit(struct localsmtp *s, const char *arg)
{
	reply(s, "221 2.0.0 Bye");
	s->quit = 1;
	enter(s, LS_DONE);
}

static void
cmd_ehlo(struct localsmtp *s, const char *arg)
{
	cmd_helo(s, arg, 1);
}

static void
cmd_helo_only(struct localsmtp *s, const char *arg)
{
	cmd_helo(s, arg, 0);
}

static const struct {
	const char *verb;
	void (*fn)(struct localsmtp *, const char *);
} commands[] = {
	{ "EHLO", cmd_ehlo },
	{ "HELO", cmd_helo_only },
	{ "MAIL", cmd_mail },
	{ "RCPT", cmd_rcpt },
	{ "DATA", cmd_data },
	{ "RSET", cmd_rset },
	{ "NOOP", cmd_noop },
	{ "VRFY", cmd_vrfy },
	{ "QUIT", cmd_quit },
};

static void
command(struct localsmtp *s, const char *line, size_t len)
{
	char verb[16];
	const char *arg;
	size_t i;

	if (smtp_cmd_split(line, len, verb, sizeof(verb), &arg) == -1) {
		reply(s, "500 5.5.2 Syntax error");
		client_error(s);
		return;
	}
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(verb, commands[i].verb) == 0) {
			commands[i].fn(s, arg);
			return;
		}
	}
	if (strcmp(verb, "AUTH") == 0 || strcmp(verb, "STARTTLS") == 0 ||
	    strcmp(verb, "BDAT") == 0)
		reply(s, "502 5.5.1 %s not available while smarthostd is "
		    "not running", verb);
	else
		reply(s, "500 5.5.2 Command not recognized");
	client_error(s);
}

/* ---- DATA ---- */

static void
data_add(struct localsmtp *s, const char *p, size_t n)
{
	if (s->oversize)
		return;
	if (s->msg.len + n > s->p.max_size) {
		s->oversize = 1;
		strbuf_free(&s->msg);
		return;
	}
	if (memchr(p, '\0', n) != NULL)
		s->nul = 1;
	strbuf_add(&s->msg, p, n);
}

static void
data_end(struct localsmtp *s)
{
	struct localsmtp_msg m;
	char text[512];

	if (s->oversize)
		reply(s, "552 5.3.4 Message size exceeds fixed maximum "
		    "message size");
	else if (s->nul)
		reply(s, "554 5.6.0 NUL bytes are not allowed in a message");
	else {
		m.sender = s->sender;
		m.rcpts = s->rcpts;
		m.nrcpts = s->nrcpts;
		m.data = s->msg.p != NULL ? s->msg.p : "";
		m.len = s->msg.len;
		snprintf(text, sizeof(text), "451 4.3.0 not delivered");
		s->p.deliver(&m, text, sizeof(text), s->p.arg);
		reply(s, "%s", text);
		if (text[0] == '2')
			s->delivered++;
	}
	txn_clear(s);
	enter(s, LS_READY);
}

/* One data line without its line end; crlf: it ended with CRLF. */
static void
data_line(struct localsmtp *s, const char *p, size_t n, int crlf)
{
	int prev_crlf = s->prev_crlf;

	s->prev_crlf = crlf;
	if (n == 1 && p[0] == '.') {
		if (crlf && prev_crlf) {
			data_end(s);
			return;
		}
		data_add(s, ".\r\n", 3);  /* not the end: see localsmtp.h */
		return;
	}
	if (n > 1 && p[0] == '.') {
		p++;
		n--;
	}
	data_add(s, p, n);
	data_add(s, "\r\n", 2);
}

/* ---- input ---- */

/* One line, its LF removed; p is NUL-terminated and writable. */
static void
line_done(struct localsmtp *s, char *p, size_t n)
{
	int crlf = n > 0 && p[n - 1] == '\r';

	if (crlf)
		p[--n] = '\0';	/* commands' arguments end at the line end */
	switch (s->state) {
	case LS_DATA:
		data_line(s, p, n, crlf);
		break;
	case LS_START:
	case LS_READY:
	case LS_MAIL:
	case LS_RCPT:
		command(s, p, n);
		break;
	case LS_DONE:
		break;
	}
}

int
localsmtp_input(struct localsmtp *s, const char *buf, size_t len)
{
	const char *lf;
	size_t n, limit;

	while (len > 0 && s->state != LS_DONE) {
		lf = memchr(buf, '\n', len);
		n = lf != NULL ? (size_t)(lf - buf) : len;
		limit = s->state == LS_DATA ? s->p.max_size + 2 :
		    LOCALSMTP_LINE_MAX;
		if (!s->skipping && s->line.len + n > limit) {
			/* Overlong: drop it; a data line makes the message
			 * too large, a command line gets a 500. */
			s->skipping = 1;
			strbuf_free(&s->line);
			if (s->state == LS_DATA) {
				s->oversize = 1;
				strbuf_free(&s->msg);
			}
		}
		if (!s->skipping)
			strbuf_add(&s->line, buf, n);
		else if (n > 0)
			s->skipped_cr = buf[n - 1] == '\r';
		if (lf == NULL)
			return 0;
		buf += n + 1;
		len -= n + 1;
		if (s->skipping) {
			s->skipping = 0;
			if (s->state == LS_DATA)
				s->prev_crlf = s->skipped_cr;
			else {
				reply(s, "500 5.5.2 Line too long");
				client_error(s);
			}
			continue;
		}
		line_done(s, s->line.p, s->line.len);
		s->line.len = 0;
	}
	return s->state == LS_DONE;
}

/* ---- the object ---- */

struct localsmtp *
localsmtp_new(const struct localsmtp_params *p)
{
	struct localsmtp *s = xcalloc(1, sizeof(*s));

	s->p = *p;
	reply(s, "220 %s ESMTP smarthost-sendmail: smarthostd is not "
	    "running, mail goes to the maildrop", p->hostname);
	return s;
}

void
localsmtp_free(struct localsmtp *s)
{
	if (s == NULL)
		return;
	txn_clear(s);
	strbuf_free(&s->out);
	strbuf_free(&s->line);
	free(s);
}

const char *
localsmtp_output(const struct localsmtp *s, size_t *len)
{
	*len = s->out.len;
	return s->out.p != NULL ? s->out.p : "";
}

void
localsmtp_output_clear(struct localsmtp *s)
{
	s->out.len = 0;
	if (s->out.p != NULL)
		s->out.p[0] = '\0';
}

int
localsmtp_quit_seen(const struct localsmtp *s)
{
	return s->quit;
}

unsigned
localsmtp_delivered(const struct localsmtp *s)
{
	return s->delivered;
}
