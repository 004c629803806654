/*
 * The importer: each tool's files are read into one model (relays,
 * routes, credentials, the local settings), and the model is written out
 * as smarthostd.conf text. The header lists what maps to what.
 *
 * Invariants: a password lives only in a cred of the model and in the
 * authinfo text, both wiped when freed; every setting read either changes
 * the model or adds a note (once per source line); a value is written into
 * the config only through cfg_str, which quotes it for libconfig.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "authinfo.h"
#include "config.h"
#include "import.h"
#include "strbuf.h"
#include "xmalloc.h"

/* ---- growing strings ---- */

/*
 * The text we build can hold credentials: every buffer here is secret
 * (strbuf.h), and hands over NULL when nothing was written.
 */
static char *
sb_take(struct strbuf *b)
{
	if (b->p == NULL)
		return NULL;
	return strbuf_take(b, NULL);
}

/* Appends s as a libconfig string literal. */
static void
cfg_str(struct strbuf *b, const char *s)
{
	strbuf_addf(b, "\"");
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			strbuf_addf(b, "\\%c", c);
		else if (c == '\n')
			strbuf_addf(b, "\\n");
		else if (c == '\t')
			strbuf_addf(b, "\\t");
		else if (c < 0x20 || c == 0x7f)
			strbuf_addf(b, "\\x%02x", c);
		else
			strbuf_addf(b, "%c", c);
	}
	strbuf_addf(b, "\"");
}

/* Appends PAD KEY = "value";\n when value is set. */
static void
cfg_set(struct strbuf *b, const char *pad, const char *key, const char *value)
{
	if (value == NULL)
		return;
	strbuf_addf(b, "%s%s = ", pad, key);
	cfg_str(b, value);
	strbuf_addf(b, ";\n");
}

/* ---- the model ---- */

struct relay_out {
	char *name;
	char *origin;       /* where it came from, for a comment */
	char *host;
	char *port;         /* NULL: the daemon's default for tls */
	const char *tls;    /* "starttls", "implicit", "none" */
	int no_verify;
	char *ca_file;
	char *helo;
	char *user;
	const char *auth;   /* NULL: default ("auto") */
	char *mechanisms;   /* libconfig list body, or NULL */
	int plaintext_auth;
	char *password_command;
	char *oauth_command;
	unsigned timeout;   /* seconds, 0: default */
	char **backup;
	size_t nbackup;
	int failover_now;   /* failover_after = 0 */
};

struct route_out {
	const char *kind;   /* "sender", "domain", "regexp" */
	char *value;
	char *relay;
	char *origin;
};

struct cred_out {
	char *host, *port, *login, *password, *origin;
};

struct model {
	struct import_result *res;
	const struct import_opts *o;
	const char *tool;
	struct relay_out *relays;
	size_t nrelays;
	struct route_out *routes;
	size_t nroutes;
	struct cred_out *creds;
	size_t ncreds;
	char *default_relay;
	char *hostname;
	char *mail_domain;
	int masquerade;
	char *aliases_file;     /* an existing aliases file to name */
	char *catch_all;
	struct strbuf sender_map; /* lines of the map we write */
	struct strbuf aliases;    /* lines of the aliases file we write */
	/* where each note of res points, to sort them */
	struct note_at {
		const char *path;
		unsigned line;
	} *note_at;
	/* source lines already noted, so a line gives one note */
	const char *noted_path;
	unsigned *noted;
	size_t nnoted;
};

static void note(struct model *, const char *, unsigned, const char *, ...)
    __attribute__((format(printf, 4, 5)));

/* Adds "path:line: text" to the notes (line 0: "path: text"). */
static void
note(struct model *m, const char *path, unsigned line, const char *fmt, ...)
{
	struct import_result *r = m->res;
	char text[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	r->notes = xreallocarray(r->notes, r->nnotes + 1, sizeof(*r->notes));
	m->note_at = xreallocarray(m->note_at, r->nnotes + 1,
	    sizeof(*m->note_at));
	m->note_at[r->nnotes].path = path;
	m->note_at[r->nnotes].line = line;
	if (line > 0)
		r->notes[r->nnotes++] = xasprintf("%s:%u: %s", path, line,
		    text);
	else
		r->notes[r->nnotes++] = xasprintf("%s: %s", path, text);
}

/* Whether path:line has had its note; marks it. */
static int
noted_before(struct model *m, const char *path, unsigned line)
{
	size_t i;

	if (m->noted_path == NULL || strcmp(m->noted_path, path) != 0) {
		free(m->noted);
		m->noted = NULL;
		m->nnoted = 0;
		m->noted_path = path;
	}
	for (i = 0; i < m->nnoted; i++)
		if (m->noted[i] == line)
			return 1;
	m->noted = xreallocarray(m->noted, m->nnoted + 1, sizeof(*m->noted));
	m->noted[m->nnoted++] = line;
	return 0;
}

static void note_once(struct model *, const char *, unsigned, const char *,
    ...) __attribute__((format(printf, 4, 5)));

static void
note_once(struct model *m, const char *path, unsigned line, const char *fmt,
    ...)
{
	char text[1024];
	va_list ap;

	if (line > 0 && noted_before(m, path, line))
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	note(m, path, line, "%s", text);
}

/*
 * Whether the daemon accepts feature f; if not, notes that setting (at
 * path:line) is not mapped for that reason. Returns 1 or 0.
 */
static int
feature(struct model *m, unsigned f, const char *path, unsigned line,
    const char *setting, const char *option)
{
	if ((m->o->features & f) != 0)
		return 1;
	note_once(m, path, line, "%s: not mapped: this smarthostd has no %s "
	    "setting", setting, option);
	return 0;
}

/* A libconfig setting name made of s: [A-Za-z][-A-Za-z0-9_]*, unique. */
static char *
relay_name(struct model *m, const char *s)
{
	char *name, *p;
	size_t i;
	int n = 1;

	name = xasprintf("%s%s", isalpha((unsigned char)*s) ? "" : "r", s);
	for (p = name; *p != '\0'; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
			*p = '_';
	for (;;) {
		for (i = 0; i < m->nrelays; i++)
			if (strcmp(m->relays[i].name, name) == 0)
				break;
		if (i == m->nrelays)
			return name;
		free(name);
		name = xasprintf("%s_%d", s, ++n);
		for (p = name; *p != '\0'; p++)
			if (!isalnum((unsigned char)*p) && *p != '-' &&
			    *p != '_')
				*p = '_';
	}
}

static struct relay_out *
relay_add(struct model *m, const char *name, const char *origin)
{
	struct relay_out *r;
	char *n = relay_name(m, name);

	m->relays = xreallocarray(m->relays, m->nrelays + 1,
	    sizeof(*m->relays));
	r = &m->relays[m->nrelays++];
	memset(r, 0, sizeof(*r));
	r->name = n;
	r->origin = xstrdup(origin);
	r->tls = "none";
	return r;
}

static void
route_add(struct model *m, const char *kind, const char *value,
    const char *relay, const char *origin)
{
	struct route_out *r;

	m->routes = xreallocarray(m->routes, m->nroutes + 1,
	    sizeof(*m->routes));
	r = &m->routes[m->nroutes++];
	r->kind = kind;
	r->value = xstrdup(value);
	r->relay = xstrdup(relay);
	r->origin = xstrdup(origin);
}

/* A credential for host/port/login; password is copied. A second one for
 * the same host, port and login would never be found: noted. */
static void
cred_add(struct model *m, const struct relay_out *r, const char *password,
    const char *path, unsigned line)
{
	struct cred_out *c;
	const char *port = r->port != NULL ? r->port :
	    strcmp(r->tls, "implicit") == 0 ? "465" :
	    strcmp(r->tls, "starttls") == 0 ? "587" : "25";
	size_t i;

	for (i = 0; i < m->ncreds; i++) {
		c = &m->creds[i];
		if (strcasecmp(c->host, r->host) == 0 &&
		    strcmp(c->port, port) == 0 &&
		    strcmp(c->login != NULL ? c->login : "",
		    r->user != NULL ? r->user : "") == 0) {
			if (strcmp(c->password, password) != 0)
				note(m, path, line, "password: a second "
				    "password for %s port %s login %s; the "
				    "authinfo lookup finds only the first (%s)",
				    r->host, port, r->user != NULL ? r->user :
				    "(none)", c->origin);
			return;
		}
	}
	m->creds = xreallocarray(m->creds, m->ncreds + 1, sizeof(*m->creds));
	c = &m->creds[m->ncreds++];
	c->host = xstrdup(r->host);
	c->port = xstrdup(port);
	c->login = r->user != NULL ? xstrdup(r->user) : NULL;
	c->password = xstrdup(password);
	c->origin = xasprintf("%s:%u", path, line);
}

static void
set_str(char **slot, const char *v)
{
	free(*slot);
	*slot = v != NULL ? xstrdup(v) : NULL;
}

static struct model *
model_new(const char *tool, const struct import_opts *o)
{
	struct model *m = xcalloc(1, sizeof(*m));

	m->sender_map.secret = m->aliases.secret = 1;
	m->res = xcalloc(1, sizeof(*m->res));
	m->o = o;
	m->tool = tool;
	return m;
}

static void
relay_clear(struct relay_out *r)
{
	size_t i;

	free(r->name);
	free(r->origin);
	free(r->host);
	free(r->port);
	free(r->ca_file);
	free(r->helo);
	free(r->user);
	free(r->mechanisms);
	free(r->password_command);
	free(r->oauth_command);
	for (i = 0; i < r->nbackup; i++)
		free(r->backup[i]);
	free(r->backup);
}

static void
model_free(struct model *m)
{
	size_t i;

	for (i = 0; i < m->nrelays; i++)
		relay_clear(&m->relays[i]);
	free(m->relays);
	for (i = 0; i < m->nroutes; i++) {
		free(m->routes[i].value);
		free(m->routes[i].relay);
		free(m->routes[i].origin);
	}
	free(m->routes);
	for (i = 0; i < m->ncreds; i++) {
		free(m->creds[i].host);
		free(m->creds[i].port);
		free(m->creds[i].login);
		xfree_secret_str(m->creds[i].password);
		free(m->creds[i].origin);
	}
	free(m->creds);
	free(m->default_relay);
	free(m->hostname);
	free(m->mail_domain);
	free(m->aliases_file);
	free(m->catch_all);
	strbuf_free(&m->sender_map);
	strbuf_free(&m->aliases);
	free(m->noted);
	free(m->note_at);
	free(m);
}

/* Puts the notes in file and line order (stable: the order of a file's
 * whole-file notes is kept). */
static void
notes_sort(struct model *m)
{
	struct import_result *r = m->res;
	struct note_at at;
	char *text;
	size_t i, j;
	int c;

	for (i = 1; i < r->nnotes; i++) {
		at = m->note_at[i];
		text = r->notes[i];
		for (j = i; j > 0; j--) {
			c = strcmp(m->note_at[j - 1].path, at.path);
			if (c < 0 || (c == 0 && m->note_at[j - 1].line <=
			    at.line))
				break;
			m->note_at[j] = m->note_at[j - 1];
			r->notes[j] = r->notes[j - 1];
		}
		m->note_at[j] = at;
		r->notes[j] = text;
	}
}

/* ---- writing the config ---- */

static void
emit_relay(struct strbuf *b, const struct relay_out *r)
{
	size_t i;

	strbuf_addf(b, "  # %s\n  %s = {\n    host = ", r->origin, r->name);
	cfg_str(b, r->host);
	strbuf_addf(b, ";\n");
	cfg_set(b, "    ", "port", r->port);
	strbuf_addf(b, "    tls = \"%s\";\n", r->tls);
	if (r->no_verify)
		strbuf_addf(b, "    verify = false;  # as the source: the "
		    "certificate is not checked\n");
	cfg_set(b, "    ", "ca_file", r->ca_file);
	cfg_set(b, "    ", "helo", r->helo);
	cfg_set(b, "    ", "user", r->user);
	if (r->auth != NULL)
		strbuf_addf(b, "    auth = \"%s\";\n", r->auth);
	if (r->mechanisms != NULL)
		strbuf_addf(b, "    mechanisms = [ %s ];\n", r->mechanisms);
	if (r->plaintext_auth)
		strbuf_addf(b, "    allow_plaintext_auth = true;  # as the "
		    "source: credentials without TLS\n");
	cfg_set(b, "    ", "password_command", r->password_command);
	cfg_set(b, "    ", "oauth_command", r->oauth_command);
	if (r->timeout > 0)
		strbuf_addf(b, "    timeout_connect = %u;\n    timeout_command = "
		    "%u;\n", r->timeout, r->timeout);
	if (r->nbackup > 0) {
		strbuf_addf(b, "    backup = [ ");
		for (i = 0; i < r->nbackup; i++) {
			cfg_str(b, r->backup[i]);
			strbuf_addf(b, "%s", i + 1 < r->nbackup ? ", " : " ");
		}
		strbuf_addf(b, "];\n");
	}
	if (r->failover_now)
		strbuf_addf(b, "    failover_after = 0;  # the next one at "
		    "once, as the source did\n");
	strbuf_addf(b, "  };\n");
}

/* The authinfo line of c, with its password or "..." in its place; NULL
 * when a value cannot be written so that Emacs and we read it back. */
static char *
cred_line(const struct cred_out *c, int with_password)
{
	char *h = authinfo_quote(c->host), *p = authinfo_quote(c->port);
	char *l = c->login != NULL ? authinfo_quote(c->login) : NULL;
	char *s = with_password ? authinfo_quote(c->password) : xstrdup("...");
	char *line = NULL;

	if (h != NULL && p != NULL && s != NULL &&
	    (c->login == NULL || l != NULL))
		line = xasprintf("machine %s port %s%s%s password %s", h, p,
		    l != NULL ? " login " : "", l != NULL ? l : "", s);
	xfree_secret_str(h);
	xfree_secret_str(p);
	xfree_secret_str(l);
	xfree_secret_str(s);
	return line;
}

/* Appends each line of text as a comment. */
static void
commented(struct strbuf *b, const char *text)
{
	const char *eol;

	for (; *text != '\0'; text = *eol != '\0' ? eol + 1 : eol) {
		eol = strchr(text, '\n');
		if (eol == NULL)
			eol = text + strlen(text);
		strbuf_addf(b, "#   %.*s\n", (int)(eol - text), text);
	}
}

static void
emit_local(struct model *m, struct strbuf *b)
{
	const struct import_opts *o = m->o;

	cfg_set(b, "", "hostname", m->hostname);
	cfg_set(b, "", "mail_domain", m->mail_domain);
	if (m->aliases.len > 0 && o->aliases_path != NULL) {
		strbuf_addf(b, "aliases = ");
		cfg_str(b, o->aliases_path);
		strbuf_addf(b, ";\n");
	} else if (m->aliases_file != NULL) {
		strbuf_addf(b, "aliases = ");
		cfg_str(b, m->aliases_file);
		strbuf_addf(b, ";\n");
	}
	if (m->aliases.len > 0 && o->aliases_path == NULL) {
		strbuf_addf(b, "# aliases: the lines below go to an aliases "
		    "file (--write DIR writes DIR/aliases):\n");
		commented(b, m->aliases.p);
	}
	cfg_set(b, "", "local_catch_all", m->catch_all);
	if (m->masquerade || m->sender_map.len > 0) {
		strbuf_addf(b, "sender_rewrite = {");
		if (m->sender_map.len > 0 && o->sender_map_path != NULL) {
			strbuf_addf(b, " map = ");
			cfg_str(b, o->sender_map_path);
			strbuf_addf(b, ";");
		}
		if (m->masquerade)
			strbuf_addf(b, " masquerade = true;");
		strbuf_addf(b, " };\n");
		if (m->sender_map.len > 0 && o->sender_map_path == NULL) {
			strbuf_addf(b, "# sender_rewrite map lines (--write DIR "
			    "writes DIR/sender-map and names it here):\n");
			commented(b, m->sender_map.p);
		}
	}
}

static void
emit_routes(struct model *m, struct strbuf *b)
{
	size_t i;

	if (m->nroutes == 0)
		return;
	strbuf_addf(b, "routes = (\n");
	for (i = 0; i < m->nroutes; i++) {
		strbuf_addf(b, "  { %s = ", m->routes[i].kind);
		cfg_str(b, m->routes[i].value);
		strbuf_addf(b, "; relay = ");
		cfg_str(b, m->routes[i].relay);
		strbuf_addf(b, "; }%s  # %s\n", i + 1 < m->nroutes ? "," : "",
		    m->routes[i].origin);
	}
	strbuf_addf(b, ");\n");
}

static void
emit_creds(struct model *m, struct strbuf *b)
{
	struct strbuf a = STRBUF_SECRET;
	char *line;
	size_t i;

	if (m->ncreds == 0)
		return;
	if (m->o->authinfo_path != NULL) {
		strbuf_addf(b, "authinfo = [ ");
		cfg_str(b, m->o->authinfo_path);
		strbuf_addf(b, " ];\n");
	} else
		strbuf_addf(b, "# Credentials: add these lines, with the "
		    "passwords from the files named, to\n# ~/.authinfo of "
		    "the daemon's user (mode 0600), or import again with\n"
		    "# --write DIR, which writes them to DIR/authinfo:\n");
	for (i = 0; i < m->ncreds; i++) {
		if ((line = cred_line(&m->creds[i], 1)) == NULL) {
			note(m, m->creds[i].origin, 0, "password: cannot be "
			    "written in an authinfo file (a line break, or "
			    "both kinds of quote); use password_command");
			continue;
		}
		strbuf_addf(&a, "%s\n", line);
		xfree_secret_str(line);
		if (m->o->authinfo_path == NULL) {
			line = cred_line(&m->creds[i], 0);
			strbuf_addf(b, "#   %s  (%s)\n", line,
			    m->creds[i].origin);
			free(line);
		}
	}
	m->res->authinfo = sb_take(&a);
}

/* Writes the model out into m->res; a model without relays is an error. */
static struct import_result *
model_finish(struct model *m, const char *source)
{
	struct import_result *r = m->res;
	struct strbuf b = STRBUF_SECRET, body = STRBUF_SECRET;
	size_t i;

	if (m->nrelays == 0) {
		note(m, source, 0, "no server to relay to: nothing to "
		    "import");
		r->error = 1;
	}
	emit_local(m, &body);
	emit_creds(m, &body);
	if (m->nrelays > 0) {
		strbuf_addf(&body, "default_relay = ");
		cfg_str(&body, m->default_relay != NULL ? m->default_relay :
		    m->relays[0].name);
		strbuf_addf(&body, ";\nrelays = {\n");
		for (i = 0; i < m->nrelays; i++)
			emit_relay(&body, &m->relays[i]);
		strbuf_addf(&body, "};\n");
	}
	emit_routes(m, &body);
	notes_sort(m);

	strbuf_addf(&b, "# smarthostd.conf(5) made by `smarthostctl import %s` "
	    "from %s.\n# Only what the %s configuration sets is here; every "
	    "other setting has\n# its default. Check it with: smarthostd -t "
	    "-c FILE\n", m->tool, source, m->tool);
	if (r->nnotes > 0) {
		strbuf_addf(&b, "#\n# Not mapped, or behaving differently (also "
		    "reported on standard error):\n");
		for (i = 0; i < r->nnotes; i++)
			strbuf_addf(&b, "#   %s\n", r->notes[i]);
	}
	strbuf_addf(&b, "\n%s", body.p != NULL ? body.p : "");
	strbuf_free(&body);
	r->config = sb_take(&b);
	if (m->sender_map.len > 0 && m->o->sender_map_path != NULL)
		r->sender_map = sb_take(&m->sender_map);
	if (m->aliases.len > 0 && m->o->aliases_path != NULL)
		r->aliases = sb_take(&m->aliases);
	m->res = NULL;
	model_free(m);
	return r;
}

void
import_result_free(struct import_result *r)
{
	size_t i;

	if (r == NULL)
		return;
	free(r->config);
	xfree_secret_str(r->authinfo);
	free(r->sender_map);
	free(r->aliases);
	for (i = 0; i < r->nnotes; i++)
		free(r->notes[i]);
	free(r->notes);
	free(r);
}

/* ---- what the config loader accepts ---- */

unsigned
import_features(void)
{
	static const struct {
		unsigned f;
		const char *text;
	} probes[] = {
		{ IMPORT_F_ROUTES, "routes = ( { sender = \"a@example.org\"; "
		    "relay = \"b\"; } );" },
		{ IMPORT_F_BACKUP, "" },
		{ IMPORT_F_MAIL_DOMAIN, "mail_domain = \"example.org\";" },
		{ IMPORT_F_ALIASES, "local_catch_all = \"a@example.org\";" },
		{ IMPORT_F_SENDER_REWRITE, "sender_rewrite = { masquerade = "
		    "true; };" },
	};
	struct config *cfg;
	unsigned features = 0;
	char err[512], *text;
	size_t i;

	for (i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
		text = xasprintf("relays = { a = { host = \"127.0.0.1\";%s }; "
		    "b = { host = \"127.0.0.2\"; }; };\n%s\n",
		    probes[i].f == IMPORT_F_BACKUP ? " backup = [ \"b\" ];" :
		    "", probes[i].text);
		if ((cfg = config_parse_string(text, "probe", err,
		    sizeof(err))) != NULL)
			features |= probes[i].f;
		config_free(cfg);
		free(text);
	}
	return features;
}

/* ---- settings without a counterpart ---- */

struct why {
	const char *key;
	const char *why;
};

#define NITEMS(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Notes key at path:line (once) unless it is in mapped: with its reason
 * from unmapped, else as unknown to this importer (what names the kind of
 * setting). cmp compares names (strcmp or strcasecmp).
 */
static void
note_setting(struct model *m, const char *path, unsigned line,
    const char *key, const char *const *mapped, size_t nmapped,
    const struct why *unmapped, size_t nunmapped,
    int (*cmp)(const char *, const char *), const char *what)
{
	size_t i;

	for (i = 0; i < nmapped; i++)
		if (cmp(key, mapped[i]) == 0)
			return;
	for (i = 0; i < nunmapped; i++)
		if (cmp(key, unmapped[i].key) == 0) {
			note_once(m, path, line, "%s: not mapped: %s", key,
			    unmapped[i].why);
			return;
		}
	note_once(m, path, line, "%s: not %s this importer knows; not mapped",
	    key, what);
}

/* ---- lines ---- */

/* Calls fn for each line of f (without its line end), numbered from 1. */
static void
each_line(const struct import_file *f, void (*fn)(void *, char *, unsigned),
    void *arg)
{
	const char *p = f->buf, *end = f->buf + f->len, *eol;
	unsigned lineno = 0;
	char *line;
	size_t n;

	while (p != NULL && p < end) {
		lineno++;
		eol = memchr(p, '\n', (size_t)(end - p));
		n = (size_t)((eol != NULL ? eol : end) - p);
		if (n > 0 && p[n - 1] == '\r')
			n--;
		line = xstrndup(p, n);
		fn(arg, line, lineno);
		xfree_secret_str(line);
		p = eol != NULL ? eol + 1 : end;
	}
}

static char *
trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/* The domain of an address (after the last @), or NULL. */
static const char *
domain_of(const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at != NULL && at[1] != '\0' ? at + 1 : NULL;
}

/* Whether s looks like a mail address: local@domain, no blanks. */
static int
is_address(const char *s)
{
	const char *at = strchr(s, '@');

	return at != NULL && at != s && at[1] != '\0' &&
	    strchr(at + 1, '@') == NULL && strpbrk(s, " \t,<>\"") == NULL;
}


/* ---- msmtp ---- */

struct ms_set {
	char *key;
	char *val;     /* unquoted; "" for a command without argument */
	unsigned line;
};

struct ms_acct {
	char *name;
	unsigned line;
	struct ms_set *set;   /* defaults, inherited, own: the last wins */
	size_t nset;
	size_t own;           /* set[own..] are the account's own lines */
	char *parents;        /* "a,b" after the colon, or NULL */
};

struct ms_parse {
	struct model *m;
	const struct import_file *f;
	struct ms_set *defaults;
	size_t ndefaults;
	struct ms_acct *accts;
	size_t naccts;
	struct ms_acct *cur;  /* NULL: in the defaults section */
};

static void
ms_push(struct ms_set **v, size_t *n, const char *key, const char *val,
    unsigned line)
{
	*v = xreallocarray(*v, *n + 1, sizeof(**v));
	(*v)[*n].key = xstrdup(key);
	(*v)[*n].val = xstrdup(val);
	(*v)[(*n)++].line = line;
}

static void
ms_free_sets(struct ms_set *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		free(v[i].key);
		xfree_secret_str(v[i].val);
	}
	free(v);
}

/* The setting key of a, the last one given, or NULL. */
static const struct ms_set *
ms_get(const struct ms_acct *a, const char *key)
{
	size_t i;

	for (i = a->nset; i > 0; i--)
		if (strcmp(a->set[i - 1].key, key) == 0)
			return &a->set[i - 1];
	return NULL;
}

static struct ms_acct *
ms_find(struct ms_parse *ps, const char *name)
{
	size_t i;

	for (i = 0; i < ps->naccts; i++)
		if (strcmp(ps->accts[i].name, name) == 0)
			return &ps->accts[i];
	return NULL;
}

/*
 * msmtp's argument: the rest of the line, trimmed; in double quotes, the
 * text up to the closing quote with \" and \\ unescaped. Returns 0 or -1
 * (no closing quote).
 */
static int
ms_unquote(char *arg)
{
	char *o = arg, *p = arg + 1;

	if (*arg != '"')
		return 0;
	for (; *p != '\0' && *p != '"'; p++) {
		if (*p == '\\' && p[1] != '\0')
			p++;
		*o++ = *p;
	}
	if (*p != '"')
		return -1;
	*o = '\0';
	return 0;
}

static void
ms_account_start(struct ms_parse *ps, char *arg, unsigned line)
{
	struct ms_acct *a, *parent;
	char *colon = strchr(arg, ':'), *name, *list, *tok, *save;
	size_t i;

	if (colon != NULL)
		*colon = '\0';
	name = trim(arg);
	list = colon != NULL ? trim(colon + 1) : NULL;
	if (*name == '\0') {
		note(ps->m, ps->f->path, line, "account: no name; the lines "
		    "up to the next account are ignored");
		ps->cur = NULL;
		return;
	}
	if (ms_find(ps, name) != NULL)
		note(ps->m, ps->f->path, line, "account %s: defined again; "
		    "the later definition is used", name);
	ps->accts = xreallocarray(ps->accts, ps->naccts + 1,
	    sizeof(*ps->accts));
	a = &ps->accts[ps->naccts++];
	memset(a, 0, sizeof(*a));
	a->name = xstrdup(name);
	a->line = line;
	for (i = 0; i < ps->ndefaults; i++)
		ms_push(&a->set, &a->nset, ps->defaults[i].key,
		    ps->defaults[i].val, ps->defaults[i].line);
	if (list != NULL) {
		a->parents = xstrdup(list);
		for (tok = strtok_r(list, ",", &save); tok != NULL;
		    tok = strtok_r(NULL, ",", &save)) {
			tok = trim(tok);
			if ((parent = ms_find(ps, tok)) == NULL ||
			    parent == a) {
				note(ps->m, ps->f->path, line, "account %s: "
				    "inherits from %s, which is not defined "
				    "before it; ignored", a->name, tok);
				continue;
			}
			/* all of it, what it inherited too, as msmtp does */
			for (i = 0; i < parent->nset; i++)
				ms_push(&a->set, &a->nset, parent->set[i].key,
				    parent->set[i].val, parent->set[i].line);
		}
	}
	a->own = a->nset;
	ps->cur = a;
}

static void
ms_line(void *arg, char *text, unsigned line)
{
	struct ms_parse *ps = arg;
	char *p = trim(text), *key, *val;

	if (*p == '\0' || *p == '#')
		return;
	key = p;
	while (*p != '\0' && !isspace((unsigned char)*p))
		p++;
	if (*p != '\0')
		*p++ = '\0';
	val = trim(p);
	if (ms_unquote(val) == -1) {
		note(ps->m, ps->f->path, line, "%s: no closing quote; line "
		    "ignored", key);
		return;
	}
	if (strcmp(key, "defaults") == 0) {
		ps->cur = NULL;
		return;
	}
	if (strcmp(key, "account") == 0) {
		ms_account_start(ps, val, line);
		return;
	}
	if (ps->cur == NULL)
		ms_push(&ps->defaults, &ps->ndefaults, key, val, line);
	else
		ms_push(&ps->cur->set, &ps->cur->nset, key, val, line);
}

/* msmtp's own commands that have no counterpart, with the reason. */
static const struct why ms_unmapped[] = {
	{ "logfile", "smarthostd logs every delivery to syslog" },
	{ "logfile_time_format", "smarthostd logs every delivery to syslog" },
	{ "syslog", "smarthostd logs every delivery to syslog (facility "
	    "mail)" },
	{ "tls_fingerprint", "smarthostd checks certificates against CAs "
	    "(ca_file), not by fingerprint" },
	{ "tls_key_file", "client certificates are not supported" },
	{ "tls_cert_file", "client certificates are not supported" },
	{ "tls_crl_file", "CRL files are not supported" },
	{ "tls_priorities", "smarthostd uses OpenSSL's defaults, TLS 1.2 "
	    "at least" },
	{ "tls_min_dh_prime_bits", "smarthostd uses OpenSSL's defaults" },
	{ "tls_host_override", "the certificate must name the relay's host" },
	{ "source_ip", "the system chooses the source address" },
	{ "proxy_host", "SOCKS proxies are not supported" },
	{ "proxy_port", "SOCKS proxies are not supported" },
	{ "socket", "relays are reached over TCP only" },
	{ "protocol", "relays speak SMTP only" },
	{ "ntlmdomain", "NTLM is not supported" },
	{ "dsn_notify", "smarthostd passes on the DSN parameters a client "
	    "gives and returns its own notifications" },
	{ "dsn_return", "smarthostd passes on the DSN parameters a client "
	    "gives and returns its own notifications" },
	{ "keepbcc", "smarthost-sendmail -t removes Bcc:" },
	{ "remove_bcc_headers", "smarthost-sendmail -t removes Bcc:" },
	{ "undisclosed_recipients", "no counterpart" },
	{ "set_from_header", "smarthost-sendmail adds a From: when there "
	    "is none; an existing one is kept" },
	{ "add_missing_from_header", "smarthost-sendmail adds a From: "
	    "when there is none" },
	{ "set_date_header", "smarthost-sendmail adds a Date: when there "
	    "is none" },
	{ "add_missing_date_header", "smarthost-sendmail adds a Date: "
	    "when there is none" },
	{ "set_msgid_header", "smarthost-sendmail adds a Message-ID: when "
	    "there is none" },
	{ "allow_from_override", "the sender is the one the client gives; "
	    "limit it with sender_policy" },
	{ "auto_from", "set mail_domain (local users send as "
	    "login@mail_domain)" },
	{ "eval", "a command's output cannot be imported; put its result "
	    "in the file and import again" },
};

/* msmtp's commands that the mapping reads. */
static const char *const ms_mapped[] = { "host", "port", "tls",
	"tls_starttls", "tls_trust_file", "tls_certcheck", "auth", "user",
	"password", "passwordeval", "from", "domain", "maildomain", "aliases",
	"timeout" };

/* Notes every line whose command is not mapped (once per line). */
static void
ms_note_unmapped(struct ms_parse *ps, const struct ms_set *s)
{
	note_setting(ps->m, ps->f->path, s->line, s->key, ms_mapped,
	    NITEMS(ms_mapped), ms_unmapped, NITEMS(ms_unmapped), strcmp,
	    "an msmtp command");
}

/* An msmtp on/off value: 1, 0, or -1 (neither; noted). */
static int
ms_bool(struct ms_parse *ps, const struct ms_set *s)
{
	if (*s->val == '\0' || strcmp(s->val, "on") == 0)
		return 1;
	if (strcmp(s->val, "off") == 0)
		return 0;
	note_once(ps->m, ps->f->path, s->line, "%s: \"%s\" is neither on nor "
	    "off; ignored", s->key, s->val);
	return -1;
}

/* ~/x against the importing user's home. */
static char *
ms_path(struct ms_parse *ps, const char *v)
{
	if (v[0] == '~' && v[1] == '/' && ps->m->o->home != NULL)
		return xasprintf("%s%s", ps->m->o->home, v + 1);
	return xstrdup(v);
}

/* The TLS mode, port, CA file and certificate check of account a. */
static void
ms_tls(struct ms_parse *ps, const struct ms_acct *a, struct relay_out *r)
{
	const struct ms_set *tls = ms_get(a, "tls");
	const struct ms_set *st = ms_get(a, "tls_starttls");
	const struct ms_set *tf = ms_get(a, "tls_trust_file");
	const struct ms_set *cc = ms_get(a, "tls_certcheck");
	const struct ms_set *port = ms_get(a, "port");
	int on = tls != NULL && ms_bool(ps, tls) == 1;
	int starttls = st == NULL || ms_bool(ps, st) != 0;

	r->tls = !on ? "none" : starttls ? "starttls" : "implicit";
	/* msmtp's default ports, which are not ours (587 for starttls) */
	r->port = xstrdup(port != NULL && *port->val != '\0' ? port->val :
	    on && !starttls ? "465" : "25");
	if (!on) {
		if (tf != NULL)
			note_once(ps->m, ps->f->path, tf->line, "%s: not "
			    "mapped: TLS is off for account %s", tf->key,
			    a->name);
		return;
	}
	if (tf != NULL && strcmp(tf->val, "system") != 0) {
		if (*tf->val == '\0')
			note_once(ps->m, ps->f->path, tf->line, "%s: empty "
			    "(trust no CA): not mapped; smarthostd checks the "
			    "certificate against the system's CAs", tf->key);
		else
			r->ca_file = ms_path(ps, tf->val);
	}
	if (cc != NULL && ms_bool(ps, cc) == 0) {
		r->no_verify = 1;
		note_once(ps->m, ps->f->path, cc->line, "%s off: mapped to "
		    "verify = false; the connection can be intercepted",
		    cc->key);
	}
}

/* The upper-case SASL name of an msmtp auth method, or NULL. */
static const char *
ms_mechanism(const char *method, int *oauth)
{
	static const char *const names[] = { "PLAIN", "LOGIN", "CRAM-MD5",
		"SCRAM-SHA-1", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER" };
	size_t i;

	*oauth = 0;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcasecmp(method, names[i]) == 0) {
			*oauth = i >= 5;
			return names[i];
		}
	return NULL;
}

/* auth, user, password and passwordeval of account a. */
static void
ms_auth(struct ms_parse *ps, const struct ms_acct *a, struct relay_out *r)
{
	const struct ms_set *auth = ms_get(a, "auth");
	const struct ms_set *user = ms_get(a, "user");
	const struct ms_set *pw = ms_get(a, "password");
	const struct ms_set *pe = ms_get(a, "passwordeval");
	const char *mech = NULL;
	int enabled = 0, oauth = 0;

	if (user != NULL && *user->val != '\0')
		r->user = xstrdup(user->val);
	if (auth != NULL) {
		if (*auth->val == '\0' || strcmp(auth->val, "on") == 0)
			enabled = 1;
		else if (strcmp(auth->val, "off") == 0)
			r->auth = "never";
		else if ((mech = ms_mechanism(auth->val, &oauth)) != NULL)
			enabled = 1;
		else {
			enabled = 1;
			note_once(ps->m, ps->f->path, auth->line, "auth %s: "
			    "not mapped: smarthostd does not have that "
			    "mechanism; it tries the ones it has", auth->val);
		}
	}
	if (enabled) {
		r->auth = "always";
		if (mech != NULL)
			r->mechanisms = xasprintf("\"%s\"", mech);
	}
	if (enabled && strcmp(r->tls, "none") == 0) {
		r->plaintext_auth = 1;
		/* msmtp picks only methods that hide the password when TLS
		 * is off, unless one was named */
		if (mech == NULL)
			r->mechanisms = xstrdup("\"SCRAM-SHA-256\", "
			    "\"SCRAM-SHA-1\", \"CRAM-MD5\"");
		note_once(ps->m, ps->f->path, auth->line, "auth without TLS: "
		    "mapped to allow_plaintext_auth = true for relay %s, as "
		    "msmtp did%s", r->name, mech == NULL ? " (and only the "
		    "mechanisms that do not send the password)" : "");
	}
	if (pe != NULL && *pe->val != '\0') {
		if (oauth)
			r->oauth_command = xstrdup(pe->val);
		else
			r->password_command = xstrdup(pe->val);
		note_once(ps->m, ps->f->path, pe->line, "passwordeval: mapped "
		    "to %s of relay %s; it now runs as the daemon's user, with "
		    "that user's HOME and keys", oauth ? "oauth_command" :
		    "password_command", r->name);
	} else if (pw != NULL && *pw->val != '\0')
		cred_add(ps->m, r, pw->val, ps->f->path, pw->line);
	else if (enabled)
		note_once(ps->m, ps->f->path, auth->line, "auth: no password "
		    "or passwordeval for account %s (msmtp took it from a key "
		    "ring, ~/.netrc or a prompt): add it to an authinfo file "
		    "with: smarthostctl login %s:%s", a->name, r->host,
		    r->port);
}

/* One account with a host as a relay. */
static struct relay_out *
ms_relay(struct ms_parse *ps, const struct ms_acct *a)
{
	const struct ms_set *host = ms_get(a, "host");
	const struct ms_set *dom = ms_get(a, "domain");
	const struct ms_set *to = ms_get(a, "timeout");
	struct relay_out *r;
	char origin[600];
	long t;

	snprintf(origin, sizeof(origin), "msmtp account %s (%s:%u)", a->name,
	    ps->f->path, a->line);
	r = relay_add(ps->m, a->name, origin);
	r->host = xstrdup(host->val);
	ms_tls(ps, a, r);
	ms_auth(ps, a, r);
	if (dom != NULL && *dom->val != '\0') {
		if (strchr(dom->val, '%') != NULL)
			note_once(ps->m, ps->f->path, dom->line, "domain %s: "
			    "not mapped: the EHLO name is the config's "
			    "hostname", dom->val);
		else
			r->helo = xstrdup(dom->val);
	}
	if (to != NULL && strcmp(to->val, "off") != 0) {
		t = strtol(to->val, NULL, 10);
		if (t > 0 && t < 86400)
			r->timeout = (unsigned)t;
		else
			note_once(ps->m, ps->f->path, to->line, "timeout: "
			    "\"%s\" is not a number of seconds; ignored",
			    to->val);
	}
	return r;
}

/* Appends an ERE for the shell pattern glob (anchored). */
static char *
glob_regexp(const char *glob)
{
	struct strbuf b = STRBUF_SECRET;
	const char *p;

	strbuf_addf(&b, "^");
	for (p = glob; *p != '\0'; p++) {
		if (*p == '*')
			strbuf_addf(&b, ".*");
		else if (*p == '?')
			strbuf_addf(&b, ".");
		else if (*p == '[' && strchr(p + 1, ']') != NULL) {
			const char *e = strchr(p + 2, ']') != NULL &&
			    p[1] == ']' ? strchr(p + 2, ']') :
			    strchr(p + 1, ']');

			strbuf_addf(&b, "[");
			p++;
			if (*p == '!') {
				strbuf_addf(&b, "^");
				p++;
			}
			strbuf_addf(&b, "%.*s]", (int)(e - p), p);
			p = e;
		} else if (strchr(".+()|{}^$\\[]", *p) != NULL)
			strbuf_addf(&b, "\\%c", *p);
		else
			strbuf_addf(&b, "%c", *p);
	}
	strbuf_addf(&b, "$");
	return sb_take(&b);
}

/* The route for account a's from (s), to relay. */
static void
ms_route(struct ms_parse *ps, const struct ms_set *s, const char *relay)
{
	const char *v = s->val, *dom = domain_of(v);
	char origin[600], *re;
	int wild = strpbrk(v, "*?[") != NULL;

	snprintf(origin, sizeof(origin), "from %s:%u", ps->f->path, s->line);
	if (!feature(ps->m, IMPORT_F_ROUTES, ps->f->path, s->line, "from "
	    "(choosing the account by sender)", "routes"))
		return;
	if (dom != NULL && strpbrk(dom, "*?[%") == NULL &&
	    (strncmp(v, "*@", 2) == 0 || strncmp(v, "%U@", 3) == 0))
		route_add(ps->m, "domain", dom, relay, origin);
	else if (strchr(v, '%') != NULL)
		note_once(ps->m, ps->f->path, s->line, "from %s: not mapped "
		    "as a route: its %%H/%%C/%%M/%%U depend on the sending "
		    "host and user", v);
	else if (wild) {
		re = glob_regexp(v);
		route_add(ps->m, "regexp", re, relay, origin);
		free(re);
	} else if (is_address(v))
		route_add(ps->m, "sender", v, relay, origin);
	else
		note_once(ps->m, ps->f->path, s->line, "from %s: not an "
		    "address; not mapped", v);
}

/* The default account's from: the domain of local senders. */
static void
ms_default_from(struct ms_parse *ps, const struct ms_acct *a)
{
	const struct ms_set *from = ms_get(a, "from");
	const struct ms_set *md = ms_get(a, "maildomain");
	struct model *m = ps->m;
	const char *dom;

	if (from != NULL && (dom = domain_of(from->val)) != NULL &&
	    strpbrk(dom, "*?[%") == NULL && feature(m, IMPORT_F_MAIL_DOMAIN,
	    ps->f->path, from->line, "from (of the default account)",
	    "mail_domain")) {
		set_str(&m->mail_domain, dom);
		if (strncmp(from->val, "%U@", 3) == 0) {
			if (feature(m, IMPORT_F_SENDER_REWRITE, ps->f->path,
			    from->line, "from %U@ (of the default account)",
			    "sender_rewrite"))
				m->masquerade = 1;
		} else if (is_address(from->val) && m->o->login != NULL &&
		    feature(m, IMPORT_F_SENDER_REWRITE, ps->f->path,
		    from->line, "from (of the default account)",
		    "sender_rewrite")) {
			strbuf_addf(&m->sender_map, "%s: %s\n", m->o->login,
			    from->val);
			note_once(m, ps->f->path, from->line, "from %s: mail "
			    "of %s is sent as %s (sender_rewrite map); other "
			    "local users send as login@%s", from->val,
			    m->o->login, from->val, dom);
		}
		return;
	}
	if (md != NULL && *md->val != '\0' && feature(m,
	    IMPORT_F_MAIL_DOMAIN, ps->f->path, md->line, "maildomain",
	    "mail_domain"))
		set_str(&m->mail_domain, md->val);
}

/* Whether a is `account default : X` with nothing of its own: an alias. */
static const struct ms_acct *
ms_alias_of(struct ms_parse *ps, const struct ms_acct *a)
{
	if (a->nset != a->own || a->parents == NULL ||
	    strchr(a->parents, ',') != NULL)
		return NULL;
	return ms_find(ps, a->parents);
}

static void
ms_aliases(struct ms_parse *ps, const struct ms_acct *a)
{
	const struct ms_set *al = ms_get(a, "aliases");
	struct model *m = ps->m;
	char *path;

	if (al == NULL || *al->val == '\0' || !feature(m, IMPORT_F_ALIASES,
	    ps->f->path, al->line, "aliases", "aliases"))
		return;
	path = ms_path(ps, al->val);
	if (m->aliases_file != NULL && strcmp(m->aliases_file, path) != 0)
		note_once(m, ps->f->path, al->line, "aliases %s: smarthostd "
		    "has one aliases file for all mail; %s is used",
		    al->val, m->aliases_file);
	else if (m->aliases_file == NULL) {
		m->aliases_file = xstrdup(path);
		note_once(m, ps->f->path, al->line, "aliases: mapped to "
		    "aliases = \"%s\"; its \"default:\" line, if any, is not "
		    "a catch-all there: set local_catch_all instead", path);
	}
	free(path);
}

struct import_result *
import_msmtp(const struct import_file *rc, const struct import_opts *opts)
{
	struct ms_parse ps;
	const struct ms_acct *a, *alias, *dflt = NULL;
	const struct ms_set *from;
	struct relay_out *r;
	char **names;
	size_t i, j;

	memset(&ps, 0, sizeof(ps));
	ps.m = model_new("msmtp", opts);
	ps.f = rc;
	each_line(rc, ms_line, &ps);
	for (i = 0; i < ps.ndefaults; i++)
		ms_note_unmapped(&ps, &ps.defaults[i]);
	names = xcalloc(ps.naccts + 1, sizeof(*names));
	for (i = 0; i < ps.naccts; i++) {
		a = &ps.accts[i];
		for (j = a->own; j < a->nset; j++)
			ms_note_unmapped(&ps, &a->set[j]);
		if (strcmp(a->name, "default") == 0)
			dflt = a;
		if ((alias = ms_alias_of(&ps, a)) != NULL &&
		    strcmp(a->name, "default") == 0)
			continue;
		if (ms_get(a, "host") == NULL ||
		    *ms_get(a, "host")->val == '\0') {
			note(ps.m, rc->path, a->line, "account %s: no host; "
			    "not a relay", a->name);
			continue;
		}
		r = ms_relay(&ps, a);
		names[i] = xstrdup(r->name);
		ms_aliases(&ps, a);
	}
	/* the default relay: account "default", or the one it names */
	if (dflt != NULL) {
		alias = ms_alias_of(&ps, dflt);
		a = alias != NULL ? alias : dflt;
		if (names[a - ps.accts] != NULL)
			set_str(&ps.m->default_relay, names[a - ps.accts]);
		ms_default_from(&ps, a);
	} else if (ps.m->nrelays > 0) {
		note(ps.m, rc->path, 0, "no account \"default\": relay %s, "
		    "the first account, is the default relay",
		    ps.m->relays[0].name);
		for (i = 0; i < ps.naccts; i++)
			if (names[i] != NULL) {
				ms_default_from(&ps, &ps.accts[i]);
				break;
			}
	}
	/* with several relays, each account's from chooses its relay */
	for (i = 0; i < ps.naccts; i++) {
		if (names[i] == NULL ||
		    (from = ms_get(&ps.accts[i], "from")) == NULL)
			continue;
		if (ps.m->nrelays > 1)
			ms_route(&ps, from, names[i]);
	}
	for (i = 0; i < ps.naccts; i++) {
		free(names[i]);
		free(ps.accts[i].name);
		free(ps.accts[i].parents);
		ms_free_sets(ps.accts[i].set, ps.accts[i].nset);
	}
	free(names);
	free(ps.accts);
	ms_free_sets(ps.defaults, ps.ndefaults);
	return model_finish(ps.m, rc->path);
}

/* ---- ssmtp ---- */

struct ss_parse {
	struct model *m;
	const struct import_file *f;
	struct ms_set *set;   /* Key=Value lines, keys as written */
	size_t n;
	struct relay_out *hub;
};

static void
ss_line(void *arg, char *text, unsigned line)
{
	struct ss_parse *ps = arg;
	char *p = trim(text), *eq;

	if (*p == '\0' || *p == '#')
		return;
	if ((eq = strchr(p, '=')) == NULL) {
		note(ps->m, ps->f->path, line, "not a Key=Value line; "
		    "ignored");
		return;
	}
	*eq = '\0';
	ms_push(&ps->set, &ps->n, trim(p), trim(eq + 1), line);
}

/* The last Key=Value of key (case-insensitive), or NULL. */
static const struct ms_set *
ss_get(const struct ss_parse *ps, const char *key)
{
	size_t i;

	for (i = ps->n; i > 0; i--)
		if (strcasecmp(ps->set[i - 1].key, key) == 0)
			return &ps->set[i - 1];
	return NULL;
}

static int
ss_yes(const struct ss_parse *ps, const char *key)
{
	const struct ms_set *s = ss_get(ps, key);

	return s != NULL && strcasecmp(s->val, "yes") == 0;
}

/* Splits "host[:port]" into r's host and port. */
static void
ss_hub(struct relay_out *r, const char *hub, const char *dflt_port)
{
	const char *colon = strrchr(hub, ':');

	if (colon != NULL && strchr(hub, ':') == colon && colon[1] != '\0') {
		r->host = xstrndup(hub, (size_t)(colon - hub));
		r->port = xstrdup(colon + 1);
	} else {
		r->host = xstrdup(hub);
		r->port = xstrdup(dflt_port);
	}
}

static const struct why ss_unmapped[] = {
	{ "Debug", "smarthostd logs every delivery to syslog; run it with "
	    "-d for more" },
	{ "TLS_CA_Dir", "give the CA file (ca_file) instead of a directory" },
	{ "UseTLSCert", "client certificates are not supported" },
	{ "TLSCert", "client certificates are not supported" },
	{ "TLSKey", "client certificates are not supported" },
};

static const char *const ss_mapped[] = { "mailhub", "UseTLS",
	"UseSTARTTLS", "TLS_CA_File", "AuthUser", "AuthPass", "AuthMethod",
	"rewriteDomain", "hostname", "FromLineOverride", "root" };

static void
ss_note_unmapped(struct ss_parse *ps, const struct ms_set *s)
{
	note_setting(ps->m, ps->f->path, s->line, s->key, ss_mapped,
	    NITEMS(ss_mapped), ss_unmapped, NITEMS(ss_unmapped), strcasecmp,
	    "an ssmtp setting");
}

/* TLS and authentication of the mailhub relay. */
static void
ss_relay(struct ss_parse *ps, const struct ms_set *hub)
{
	const struct ms_set *user = ss_get(ps, "AuthUser");
	const struct ms_set *pass = ss_get(ps, "AuthPass");
	const struct ms_set *meth = ss_get(ps, "AuthMethod");
	const struct ms_set *ca = ss_get(ps, "TLS_CA_File");
	int starttls = ss_yes(ps, "UseSTARTTLS");
	int tls = starttls || ss_yes(ps, "UseTLS");
	char origin[600];
	struct relay_out *r;

	snprintf(origin, sizeof(origin), "ssmtp mailhub (%s:%u)",
	    ps->f->path, hub->line);
	r = ps->hub = relay_add(ps->m, "mailhub", origin);
	r->tls = !tls ? "none" : starttls ? "starttls" : "implicit";
	ss_hub(r, hub->val, tls && !starttls ? "465" : "25");
	if (tls && ca != NULL && *ca->val != '\0')
		r->ca_file = xstrdup(ca->val);
	else if (tls)
		note(ps->m, ps->f->path, hub->line, "mailhub: smarthostd checks "
		    "the server's certificate against the system's CAs; "
		    "ssmtp did not without TLS_CA_File");
	if (user == NULL || *user->val == '\0')
		return;
	r->user = xstrdup(user->val);
	r->auth = "always";
	if (meth != NULL && strcasecmp(meth->val, "cram-md5") == 0)
		r->mechanisms = xstrdup("\"CRAM-MD5\"");
	else if (meth != NULL && *meth->val != '\0')
		note_once(ps->m, ps->f->path, meth->line, "AuthMethod %s: not "
		    "mapped: smarthostd tries each mechanism it has",
		    meth->val);
	if (!tls) {
		r->plaintext_auth = 1;
		note_once(ps->m, ps->f->path, user->line, "AuthUser without "
		    "TLS: mapped to allow_plaintext_auth = true, as ssmtp "
		    "sent the password in clear text");
	}
	if (pass != NULL && *pass->val != '\0')
		cred_add(ps->m, r, pass->val, ps->f->path, pass->line);
	else
		note_once(ps->m, ps->f->path, user->line, "AuthUser: no "
		    "AuthPass: add the password with: smarthostctl login "
		    "%s:%s", r->host, r->port);
}

/* rewriteDomain, hostname, FromLineOverride and root. */
static void
ss_local(struct ss_parse *ps)
{
	const struct ms_set *rd = ss_get(ps, "rewriteDomain");
	const struct ms_set *hn = ss_get(ps, "hostname");
	const struct ms_set *flo = ss_get(ps, "FromLineOverride");
	const struct ms_set *root = ss_get(ps, "root");
	struct model *m = ps->m;

	if (hn != NULL && *hn->val != '\0')
		set_str(&m->hostname, hn->val);
	if (rd != NULL && *rd->val != '\0' && feature(m,
	    IMPORT_F_MAIL_DOMAIN, ps->f->path, rd->line, "rewriteDomain",
	    "mail_domain")) {
		set_str(&m->mail_domain, rd->val);
		if (feature(m, IMPORT_F_SENDER_REWRITE, ps->f->path, rd->line,
		    "rewriteDomain (masquerading)", "sender_rewrite"))
			m->masquerade = 1;
	}
	if (flo != NULL && strcasecmp(flo->val, "yes") != 0)
		note_once(m, ps->f->path, flo->line, "FromLineOverride=%s: "
		    "not mapped: smarthostd rewrites only local senders (user, "
		    "user@localhost, user@hostname); a From: with another "
		    "domain is kept", flo->val);
	if (root != NULL && *root->val != '\0' && feature(m,
	    IMPORT_F_ALIASES, ps->f->path, root->line, "root", "aliases")) {
		strbuf_addf(&m->aliases, "root: %s\n", root->val);
		note_once(m, ps->f->path, root->line, "root=%s: mapped to the "
		    "alias \"root: %s\"; ssmtp also sent mail for the other "
		    "users below uid 1000 there: add them to the aliases "
		    "file, or set local_catch_all", root->val, root->val);
	}
}

/* A relay like the mailhub (relays[0]) for another host and port. */
static struct relay_out *
ss_hub_copy(struct model *m, char *host, char *port, const char *origin)
{
	struct relay_out *n = relay_add(m, host, origin), *hub = &m->relays[0];
	size_t i;

	n->host = host;
	n->port = port;
	n->tls = hub->tls;
	n->ca_file = hub->ca_file != NULL ? xstrdup(hub->ca_file) : NULL;
	n->user = hub->user != NULL ? xstrdup(hub->user) : NULL;
	n->auth = hub->auth;
	n->mechanisms = hub->mechanisms != NULL ? xstrdup(hub->mechanisms) :
	    NULL;
	n->plaintext_auth = hub->plaintext_auth;
	/* ssmtp gives every hub the same AuthUser and AuthPass */
	for (i = 0; i < m->ncreds; i++)
		if (strcasecmp(m->creds[i].host, hub->host) == 0) {
			char *pw = xstrdup(m->creds[i].password);
			char *at = xstrdup(m->creds[i].origin), *colon;
			unsigned line = 0;

			if ((colon = strrchr(at, ':')) != NULL) {
				*colon = '\0';
				line = (unsigned)strtoul(colon + 1, NULL, 10);
			}
			cred_add(m, n, pw, at, line);
			xfree_secret_str(pw);
			free(at);
			break;
		}
	return n;
}

/* A revaliases line "local:address[:mailhub[:port]]". */
static void
ss_revalias(void *arg, char *text, unsigned line)
{
	struct ss_parse *ps = arg;
	struct model *m = ps->m;
	const char *path = ps->f->path;
	char *p = trim(text), *local, *addr, *hub, origin[600];
	struct relay_out tmp, *n;
	size_t i;

	if (*p == '\0' || *p == '#')
		return;
	local = p;
	if ((addr = strchr(local, ':')) == NULL) {
		note(m, path, line, "not a local:address line; ignored");
		return;
	}
	*addr++ = '\0';
	if ((hub = strchr(addr, ':')) != NULL)
		*hub++ = '\0';
	local = trim(local);
	addr = trim(addr);
	if (*local == '\0' || !is_address(addr)) {
		note(m, path, line, "not a local:address line; ignored");
		return;
	}
	if (feature(m, IMPORT_F_SENDER_REWRITE, path, line, "revaliases",
	    "sender_rewrite"))
		strbuf_addf(&m->sender_map, "%s: %s\n", local, addr);
	if (hub == NULL || *(hub = trim(hub)) == '\0' || ps->hub == NULL)
		return;
	memset(&tmp, 0, sizeof(tmp));
	ss_hub(&tmp, hub, m->relays[0].port);
	for (i = 0; i < m->nrelays; i++)
		if (strcasecmp(m->relays[i].host, tmp.host) == 0 &&
		    strcmp(m->relays[i].port, tmp.port) == 0)
			break;
	/* ssmtp.conf's own mailhub: the default relay has it already */
	if (i == 0 || !feature(m, IMPORT_F_ROUTES, path, line, "revaliases "
	    "mailhub", "routes")) {
		free(tmp.host);
		free(tmp.port);
		return;
	}
	if (i < m->nrelays) {
		n = &m->relays[i];
		free(tmp.host);
		free(tmp.port);
	} else {
		snprintf(origin, sizeof(origin), "ssmtp revaliases mailhub "
		    "for %s (%s:%u)", local, path, line);
		n = ss_hub_copy(m, tmp.host, tmp.port, origin);
		ps->hub = &m->relays[0];
	}
	snprintf(origin, sizeof(origin), "revaliases %s:%u", path, line);
	route_add(m, "sender", addr, n->name, origin);
}

struct import_result *
import_ssmtp(const struct import_file *conf,
    const struct import_file *revaliases, const struct import_opts *opts)
{
	struct ss_parse ps;
	const struct ms_set *hub;
	size_t i;

	memset(&ps, 0, sizeof(ps));
	ps.m = model_new("ssmtp", opts);
	ps.f = conf;
	each_line(conf, ss_line, &ps);
	for (i = 0; i < ps.n; i++)
		ss_note_unmapped(&ps, &ps.set[i]);
	if ((hub = ss_get(&ps, "mailhub")) != NULL && *hub->val != '\0')
		ss_relay(&ps, hub);
	ss_local(&ps);
	if (revaliases != NULL && revaliases->buf != NULL) {
		ps.f = revaliases;
		each_line(revaliases, ss_revalias, &ps);
	}
	ms_free_sets(ps.set, ps.n);
	return model_finish(ps.m, conf->path);
}

/* ---- nullmailer ---- */

struct nm_parse {
	struct model *m;
	const struct import_file *f;   /* the remotes file, while read */
	unsigned nremote;
	const char *helo;
};

/* The file of files named name (the last path component), or NULL. */
static const struct import_file *
nm_file(const struct import_file *files, size_t n, const char *name)
{
	const char *base;
	size_t i;

	for (i = 0; i < n; i++) {
		base = strrchr(files[i].path, '/');
		base = base != NULL ? base + 1 : files[i].path;
		if (strcmp(base, name) == 0 && files[i].buf != NULL)
			return &files[i];
	}
	return NULL;
}

/* The first non-comment line of f, trimmed (the caller frees it), and
 * its number in *line; NULL when there is none. */
static char *
nm_value(const struct import_file *f, unsigned *line)
{
	const char *p = f->buf, *end = f->buf + f->len, *eol;
	char *v, *t;

	*line = 0;
	while (p < end) {
		(*line)++;
		eol = memchr(p, '\n', (size_t)(end - p));
		v = xstrndup(p, (size_t)((eol != NULL ? eol : end) - p));
		t = trim(v);
		if (*t != '\0' && *t != '#') {
			t = xstrdup(t);
			free(v);
			return t;
		}
		free(v);
		p = eol != NULL ? eol + 1 : end;
	}
	return NULL;
}

/* One option of a remotes line; v is its value or NULL. */
static void
nm_option(struct nm_parse *ps, struct relay_out *r, const char *opt,
    const char *v, unsigned line, char **pass)
{
	const char *path = ps->f->path;

	if (strcmp(opt, "port") == 0 && v != NULL)
		set_str(&r->port, v);
	else if (strcmp(opt, "user") == 0 && v != NULL)
		set_str(&r->user, v);
	else if (strcmp(opt, "pass") == 0 && v != NULL) {
		xfree_secret_str(*pass);
		*pass = xstrdup(v);
	} else if (strcmp(opt, "ssl") == 0)
		r->tls = "implicit";
	else if (strcmp(opt, "starttls") == 0)
		r->tls = "starttls";
	else if (strcmp(opt, "insecure") == 0) {
		r->no_verify = 1;
		note(ps->m, path, line, "--insecure: mapped to verify = false; "
		    "the connection can be intercepted");
	} else if (strcmp(opt, "x509cafile") == 0 && v != NULL)
		set_str(&r->ca_file, v);
	else if (strcmp(opt, "auth-login") == 0)
		set_str(&r->mechanisms, "\"LOGIN\"");
	else
		note(ps->m, path, line, "--%s: not mapped: %s", opt,
		    strncmp(opt, "x509", 4) == 0 || strcmp(opt,
		    "tls-anon-auth") == 0 ? "client certificates, CRLs and "
		    "anonymous TLS are not supported" : strcmp(opt,
		    "source") == 0 ? "the system chooses the source address" :
		    "not an option this importer knows");
}

/* Options that take a value (also written "--opt value"). */
static int
nm_takes_value(const char *opt)
{
	static const char *const with[] = { "port", "user", "pass", "source",
		"x509cafile", "x509certfile", "x509keyfile", "x509crlfile" };
	size_t i;

	for (i = 0; i < sizeof(with) / sizeof(with[0]); i++)
		if (strcmp(opt, with[i]) == 0)
			return 1;
	return 0;
}

/* A remotes line "host protocol [--option[=value]]...". */
static void
nm_remote(void *arg, char *text, unsigned line)
{
	struct nm_parse *ps = arg;
	struct model *m = ps->m;
	char *p = trim(text), *tok[64], *save, *pass = NULL, *eq, *opt;
	char name[32], origin[600];
	struct relay_out *r;
	size_t n = 0, i;

	if (*p == '\0' || *p == '#')
		return;
	for (tok[n] = strtok_r(p, " \t", &save); tok[n] != NULL && n < 63;
	    tok[n] = strtok_r(NULL, " \t", &save))
		n++;
	if (n < 2 || strcmp(tok[1], "smtp") != 0) {
		note(m, ps->f->path, line, "%s: not mapped: smarthostd relays "
		    "over SMTP only", n < 2 ? "a remote without protocol" :
		    tok[1]);
		return;
	}
	snprintf(name, sizeof(name), "remote%u", ++ps->nremote);
	snprintf(origin, sizeof(origin), "nullmailer remote (%s:%u)",
	    ps->f->path, line);
	r = relay_add(m, name, origin);
	r->host = xstrdup(tok[0]);
	for (i = 2; i < n; i++) {
		if (strncmp(tok[i], "--", 2) != 0) {
			note(m, ps->f->path, line, "an argument that is not "
			    "an --option; ignored");
			continue;
		}
		opt = tok[i] + 2;
		if ((eq = strchr(opt, '=')) != NULL)
			*eq++ = '\0';
		else if (nm_takes_value(opt) && i + 1 < n)
			eq = tok[++i];
		nm_option(ps, r, opt, eq, line, &pass);
	}
	if (r->port == NULL)
		r->port = xstrdup(strcmp(r->tls, "implicit") == 0 ? "465" :
		    "25");
	if (ps->helo != NULL)
		r->helo = xstrdup(ps->helo);
	if (r->user != NULL) {
		r->auth = "always";
		if (strcmp(r->tls, "none") == 0) {
			r->plaintext_auth = 1;
			note(m, ps->f->path, line, "--user without --ssl or "
			    "--starttls: mapped to allow_plaintext_auth = "
			    "true, as nullmailer sent the password in clear "
			    "text");
		}
	}
	if (pass != NULL) {
		cred_add(m, r, pass, ps->f->path, line);
		xfree_secret_str(pass);
	}
	if (m->nrelays > 1 && feature(m, IMPORT_F_BACKUP, ps->f->path, line,
	    "a further remote (tried when the first fails)", "backup")) {
		struct relay_out *first = &m->relays[0];

		first->backup = xreallocarray(first->backup,
		    first->nbackup + 1, sizeof(*first->backup));
		first->backup[first->nbackup++] = xstrdup(name);
		first->failover_now = 1;
	}
}

/* The nullmailer control files that have no counterpart, and why. */
static const struct why nm_unmapped[] = {
	{ "allmailfrom", "every message keeps its own sender; map senders "
	    "with a sender_rewrite map" },
	{ "idhost", "Message-IDs use the config's hostname" },
	{ "sendtimeout", "see the relays' timeout_command and timeout_data" },
	{ "bouncecc", "notifications go to the sender only" },
	{ "bounceto", "notifications go to the sender only" },
	{ "doublebounceto", "notifications go to the sender only" },
	{ "remotes.save", "not a control file" },
};

static void
nm_queue(struct model *m, const struct import_file *files, size_t nfiles,
    struct strbuf *queue)
{
	static const struct {
		const char *file, *key;
	} q[] = { { "pausetime", "retry_min" }, { "maxpause", "retry_max" },
		{ "queuelifetime", "lifetime" } };
	const struct import_file *f;
	unsigned line;
	size_t i;
	char *v;
	long n;

	for (i = 0; i < sizeof(q) / sizeof(q[0]); i++) {
		if ((f = nm_file(files, nfiles, q[i].file)) == NULL ||
		    (v = nm_value(f, &line)) == NULL)
			continue;
		n = strtol(v, NULL, 10);
		if (n > 0)
			strbuf_addf(queue, " %s = %ld;", q[i].key, n);
		else
			note(m, f->path, line, "not a number of seconds; not "
			    "mapped");
		free(v);
	}
}

/* me, defaulthost, defaultdomain and adminaddr. */
static void
nm_local(struct model *m, const struct import_file *files, size_t nfiles)
{
	const struct import_file *me = nm_file(files, nfiles, "me");
	const struct import_file *dh = nm_file(files, nfiles, "defaulthost");
	const struct import_file *dd = nm_file(files, nfiles,
	    "defaultdomain");
	const struct import_file *aa = nm_file(files, nfiles, "adminaddr");
	char *vme = NULL, *vdh = NULL, *vdd = NULL, *vaa = NULL, *c;
	unsigned lme = 0, ldh = 0, ldd = 0, laa = 0;

	if (me != NULL && (vme = nm_value(me, &lme)) != NULL)
		set_str(&m->hostname, vme);
	if (dd != NULL)
		vdd = nm_value(dd, &ldd);
	if (dh != NULL && (vdh = nm_value(dh, &ldh)) != NULL &&
	    feature(m, IMPORT_F_MAIL_DOMAIN, dh->path, ldh, "defaulthost",
	    "mail_domain")) {
		free(m->mail_domain);
		m->mail_domain = strchr(vdh, '.') == NULL && vdd != NULL ?
		    xasprintf("%s.%s", vdh, vdd) : xstrdup(vdh);
	} else if (vdd != NULL && vme != NULL && strchr(vme, '.') == NULL &&
	    feature(m, IMPORT_F_MAIL_DOMAIN, dd->path, ldd, "defaultdomain",
	    "mail_domain")) {
		free(m->mail_domain);
		m->mail_domain = xasprintf("%s.%s", vme, vdd);
	} else if (vdd != NULL)
		note(m, dd->path, ldd, "not mapped: nullmailer appends it "
		    "only to host names without a dot, and there is none here");
	if (aa != NULL && (vaa = nm_value(aa, &laa)) != NULL &&
	    feature(m, IMPORT_F_ALIASES, aa->path, laa, "adminaddr",
	    "local_catch_all")) {
		if ((c = strchr(vaa, ',')) != NULL) {
			*c = '\0';
			note(m, aa->path, laa, "several addresses: "
			    "local_catch_all takes one; %s is used", trim(vaa));
		}
		if (is_address(trim(vaa)))
			set_str(&m->catch_all, trim(vaa));
		else
			note(m, aa->path, laa, "not an address; not mapped");
	}
	free(vme);
	free(vdh);
	free(vdd);
	free(vaa);
}

struct import_result *
import_nullmailer(const struct import_file *files, size_t nfiles,
    const struct import_opts *opts)
{
	static const char *const known[] = { "remotes", "me", "defaulthost",
		"defaultdomain", "adminaddr", "helohost", "pausetime",
		"maxpause", "queuelifetime" };
	struct nm_parse ps;
	struct strbuf queue = STRBUF_SECRET;
	const struct import_file *f;
	struct import_result *r;
	unsigned line;
	const char *base;
	char *helo = NULL, *dir, *slash;
	size_t i;

	memset(&ps, 0, sizeof(ps));
	ps.m = model_new("nullmailer", opts);
	for (i = 0; i < nfiles; i++) {
		base = strrchr(files[i].path, '/');
		base = base != NULL ? base + 1 : files[i].path;
		if (files[i].buf != NULL)
			note_setting(ps.m, files[i].path, 0, base, known,
			    NITEMS(known), nm_unmapped, NITEMS(nm_unmapped),
			    strcmp, "a control file");
	}
	if ((f = nm_file(files, nfiles, "helohost")) != NULL)
		ps.helo = helo = nm_value(f, &line);
	nm_local(ps.m, files, nfiles);
	if ((f = nm_file(files, nfiles, "remotes")) != NULL) {
		ps.f = f;
		each_line(f, nm_remote, &ps);
	}
	nm_queue(ps.m, files, nfiles, &queue);
	/* the directory the files are in names the source */
	dir = xstrdup(nfiles > 0 ? files[0].path : "nullmailer");
	if ((slash = strrchr(dir, '/')) != NULL && slash != dir)
		*slash = '\0';
	r = model_finish(ps.m, dir);
	free(dir);
	free(helo);
	if (queue.len > 0) {
		char *c = xasprintf("%squeue = {%s };\n", r->config, queue.p);

		free(r->config);
		r->config = c;
	}
	free(queue.p);
	return r;
}
