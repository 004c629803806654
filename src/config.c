/*
 * The configuration file, read with libconfig into one struct config.
 * Every setting is validated here, with the file and line of the offending
 * setting in the message, so that the rest of the daemon can trust the
 * struct. Unknown settings are errors: a misspelt option silently ignored
 * is the kind of mistake that loses mail.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <libconfig.h>

#include "config.h"
#include "localaddr.h"
#include "smtp_proto.h"
#include "xmalloc.h"

#ifndef LOCALSTATEDIR
#define LOCALSTATEDIR "/var"
#endif

struct cfgctx {
	const char *name; /* file name for messages */
	char *err;
	size_t errlen;
};

static int cfg_fail(struct cfgctx *, const config_setting_t *, const char *,
    ...) __attribute__((format(printf, 3, 4)));

/* Writes "file:line: message" and returns -1. */
static int
cfg_fail(struct cfgctx *ctx, const config_setting_t *s, const char *fmt, ...)
{
	va_list ap;
	int n = 0;
	unsigned line = s != NULL ? config_setting_source_line(s) : 0;
	const char *origin = s != NULL ? config_setting_get_hook(s) : NULL;

	if (origin != NULL)
		n = snprintf(ctx->err, ctx->errlen, "%s: ", origin);
	else if (line > 0)
		n = snprintf(ctx->err, ctx->errlen, "%s:%u: ", ctx->name,
		    line);
	else
		n = snprintf(ctx->err, ctx->errlen, "%s: ", ctx->name);
	if (n < 0 || (size_t)n >= ctx->errlen)
		return -1;
	va_start(ap, fmt);
	vsnprintf(ctx->err + n, ctx->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

/* ---- typed getters: each accepts an absent setting (keeps *out) ---- */

static int
get_string(struct cfgctx *ctx, const config_setting_t *grp, const char *key,
    char **out)
{
	const config_setting_t *s = config_setting_get_member(grp, key);
	const char *v;

	if (s == NULL)
		return 0;
	if (config_setting_type(s) != CONFIG_TYPE_STRING)
		return cfg_fail(ctx, s, "%s: expected a string", key);
	v = config_setting_get_string(s);
	free(*out);
	*out = v[0] != '\0' ? xstrdup(v) : NULL;
	return 0;
}

/*
 * A string setting that must be one of names[] (NULL-terminated), already
 * read into value: *choice is its index, 0 (the default) when value is
 * NULL. what names the setting in the error, which lists the names:
 * "relay x: tls must be "starttls", "implicit" or "none"".
 */
static int
get_choice(struct cfgctx *ctx, const config_setting_t *grp, const char *key,
    const char *what, const char *const *names, const char *value,
    int *choice)
{
	char list[256];
	size_t i, n = 0;

	*choice = 0;
	if (value == NULL)
		return 0;
	for (i = 0; names[i] != NULL; i++)
		if (strcmp(value, names[i]) == 0) {
			*choice = (int)i;
			return 0;
		}
	list[0] = '\0';
	for (i = 0; names[i] != NULL && n < sizeof(list); i++)
		n += (size_t)snprintf(list + n, sizeof(list) - n, "%s\"%s\"",
		    i == 0 ? "" : names[i + 1] == NULL ? " or " : ", ",
		    names[i]);
	return cfg_fail(ctx, config_setting_get_member(grp, key),
	    "%s must be %s", what, list);
}

static int
get_bool(struct cfgctx *ctx, const config_setting_t *grp, const char *key,
    int *out)
{
	const config_setting_t *s = config_setting_get_member(grp, key);

	if (s == NULL)
		return 0;
	if (config_setting_type(s) != CONFIG_TYPE_BOOL)
		return cfg_fail(ctx, s, "%s: expected true or false", key);
	*out = config_setting_get_bool(s);
	return 0;
}

/*
 * A number with an optional unit suffix, given as an integer or a string:
 * units is a list of (suffix, multiplier) pairs such as {"m", 60}.
 */
struct unit {
	const char *suffix;
	unsigned long long mult;
};

static const struct unit duration_units[] = {
	{ "s", 1 }, { "m", 60 }, { "h", 3600 }, { "d", 86400 },
	{ "w", 604800 }, { NULL, 0 }
};
static const struct unit size_units[] = {
	{ "k", 1024ULL }, { "m", 1024ULL * 1024 }, { "g", 1024ULL * 1024 * 1024 },
	{ "kb", 1024ULL }, { "mb", 1024ULL * 1024 },
	{ "gb", 1024ULL * 1024 * 1024 }, { "b", 1 }, { NULL, 0 }
};

static int
get_number(struct cfgctx *ctx, const config_setting_t *grp, const char *key,
    const struct unit *units, unsigned long long min, unsigned long long max,
    unsigned long long *out)
{
	const config_setting_t *s = config_setting_get_member(grp, key);
	unsigned long long v, mult = 1;
	const struct unit *u;

	if (s == NULL)
		return 0;
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64: {
		long long iv = config_setting_get_int64(s);

		if (iv < 0)
			return cfg_fail(ctx, s, "%s: must not be negative",
			    key);
		v = (unsigned long long)iv;
		break;
	}
	case CONFIG_TYPE_STRING: {
		const char *str = config_setting_get_string(s);
		char *end;

		errno = 0;
		if (!isdigit((unsigned char)str[0]))
			return cfg_fail(ctx, s, "%s: \"%s\" is not a number",
			    key, str);
		v = strtoull(str, &end, 10);
		if (errno != 0)
			return cfg_fail(ctx, s, "%s: \"%s\" is out of range",
			    key, str);
		if (*end != '\0') {
			/* units NULL: a plain count, no suffix allowed. */
			for (u = units; u != NULL && u->suffix != NULL; u++)
				if (strcasecmp(end, u->suffix) == 0)
					break;
			if (u == NULL || u->suffix == NULL)
				return cfg_fail(ctx, s,
				    "%s: unknown unit in \"%s\"", key, str);
			mult = u->mult;
		}
		if (v > ULLONG_MAX / mult)
			return cfg_fail(ctx, s, "%s: \"%s\" is out of range",
			    key, str);
		v *= mult;
		break;
	}
	default:
		return cfg_fail(ctx, s, "%s: expected a number", key);
	}
	if (v < min || v > max)
		return cfg_fail(ctx, s, "%s: must be between %llu and %llu",
		    key, min, max);
	*out = v;
	return 0;
}

static int
get_uint(struct cfgctx *ctx, const config_setting_t *grp, const char *key,
    const struct unit *units, unsigned min, unsigned max, unsigned *out)
{
	unsigned long long v = *out;

	if (get_number(ctx, grp, key, units, min, max, &v) == -1)
		return -1;
	*out = (unsigned)v;
	return 0;
}

/* Rejects members of grp not named in known (a NULL-terminated list). */
static int
check_known(struct cfgctx *ctx, const config_setting_t *grp,
    const char *const *known, const char *where)
{
	int i, n = config_setting_length(grp);

	for (i = 0; i < n; i++) {
		const config_setting_t *s = config_setting_get_elem(grp,
		    (unsigned)i);
		const char *name = config_setting_name(s);
		const char *const *k;

		if (name == NULL)
			continue;
		for (k = known; *k != NULL; k++)
			if (strcmp(*k, name) == 0)
				break;
		if (*k == NULL)
			return cfg_fail(ctx, s, "unknown setting \"%s\"%s%s",
			    name, where[0] != '\0' ? " in " : "", where);
	}
	return 0;
}

static int
port_valid(const char *port)
{
	char *end;
	unsigned long v;

	if (isdigit((unsigned char)port[0])) {
		v = strtoul(port, &end, 10);
		return *end == '\0' && v <= 65535;
	}
	for (; *port != '\0'; port++)
		if (!isalnum((unsigned char)*port) && *port != '-')
			return 0;
	return 1;
}

/* A port given as an integer or a string, stored as a string. */
static int
get_port(struct cfgctx *ctx, const config_setting_t *grp, char **out)
{
	const config_setting_t *s = config_setting_get_member(grp, "port");

	if (s == NULL)
		return 0;
	free(*out);
	*out = NULL;
	if (config_setting_type(s) == CONFIG_TYPE_INT)
		*out = xasprintf("%d", config_setting_get_int(s));
	else if (config_setting_type(s) == CONFIG_TYPE_STRING)
		*out = xstrdup(config_setting_get_string(s));
	else
		return cfg_fail(ctx, s, "port: expected a number or a name");
	if (!port_valid(*out))
		return cfg_fail(ctx, s, "port: \"%s\" is not a valid port",
		    *out);
	return 0;
}

/* A list or array of strings; each element is copied into *out. */
static int
get_string_list(struct cfgctx *ctx, const config_setting_t *grp,
    const char *key, char ***out, size_t *nout)
{
	const config_setting_t *s = config_setting_get_member(grp, key);
	int i, n;

	if (s == NULL)
		return 0;
	if (config_setting_type(s) != CONFIG_TYPE_ARRAY &&
	    config_setting_type(s) != CONFIG_TYPE_LIST)
		return cfg_fail(ctx, s, "%s: expected a list of strings "
		    "[ \"...\", ... ]", key);
	n = config_setting_length(s);
	*out = xcalloc((size_t)n + 1, sizeof(**out));
	for (i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(s,
		    (unsigned)i);

		if (config_setting_type(e) != CONFIG_TYPE_STRING)
			return cfg_fail(ctx, e, "%s: expected a string", key);
		(*out)[i] = xstrdup(config_setting_get_string(e));
		(*nout)++;
	}
	return 0;
}

static void
string_list_free(char **list, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(list[i]);
	free(list);
}

int
netmask_parse(const char *s, struct netmask *out)
{
	char buf[INET6_ADDRSTRLEN + 8], *slash, *end;
	unsigned long prefix;
	unsigned maxbits;

	if (strlen(s) >= sizeof(buf))
		return -1;
	memset(out, 0, sizeof(*out));
	strcpy(buf, s);
	if ((slash = strchr(buf, '/')) != NULL)
		*slash++ = '\0';
	if (inet_pton(AF_INET, buf, out->addr) == 1) {
		out->family = AF_INET;
		maxbits = 32;
	} else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
		out->family = AF_INET6;
		maxbits = 128;
	} else
		return -1;
	prefix = maxbits;
	if (slash != NULL) {
		if (!isdigit((unsigned char)*slash))
			return -1;
		prefix = strtoul(slash, &end, 10);
		if (*end != '\0' || prefix > maxbits)
			return -1;
	}
	out->prefix = (unsigned)prefix;
	return 0;
}

static int
prefix_match(const unsigned char *a, const unsigned char *b, unsigned bits)
{
	unsigned full = bits / 8, rest = bits % 8;

	if (memcmp(a, b, full) != 0)
		return 0;
	if (rest == 0)
		return 1;
	return ((a[full] ^ b[full]) & (0xff << (8 - rest))) == 0;
}

int
netmask_match(const struct netmask *m, const struct sockaddr *sa)
{
	const unsigned char *addr;
	unsigned char v4[4];

	if (sa->sa_family == AF_INET) {
		addr = (const unsigned char *)&(
		    (const struct sockaddr_in *)(const void *)sa)->sin_addr;
		if (m->family != AF_INET)
			return 0;
		return prefix_match(addr, m->addr, m->prefix);
	}
	if (sa->sa_family != AF_INET6)
		return 0;
	addr = (const unsigned char *)&(
	    (const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
	if (m->family == AF_INET6)
		return prefix_match(addr, m->addr, m->prefix);
	/* An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d. */
	if (IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)(const void *)addr)) {
		memcpy(v4, addr + 12, 4);
		return prefix_match(v4, m->addr, m->prefix);
	}
	return 0;
}

int
config_peer_allowed(const struct config *cfg, const struct sockaddr *sa)
{
	static const char *const loopback[] = { "127.0.0.0/8", "::1/128" };
	struct netmask m;
	size_t i;

	if (sa->sa_family == AF_UNIX)
		return 1;
	for (i = 0; i < sizeof(loopback) / sizeof(*loopback); i++) {
		if (netmask_parse(loopback[i], &m) == 0 &&
		    netmask_match(&m, sa))
			return 1;
	}
	for (i = 0; i < cfg->nallow; i++)
		if (netmask_match(&cfg->allow[i], sa))
			return 1;
	return 0;
}

static void
relay_defaults(struct relay_config *r)
{
	r->type = RELAY_TYPE_SMTP;
	r->tls = TLS_MODE_STARTTLS;
	r->tls_verify = 1;
	r->max_connections = 4;
	r->max_msgs_per_conn = 100;
	r->timeout_idle = 2;
	r->timeout_connect = 30;
	r->timeout_command = 300;
	r->timeout_data = 600;
	r->line_length_limit = 998;
	r->failover_after = 600;
}

static const char *const relay_keys[] = { "type", "host", "port", "tls",
	"verify", "ca_file", "helo", "user", "max_connections",
	"max_messages_per_connection", "timeout_idle", "timeout_connect",
	"timeout_command", "timeout_data", "line_length_limit", "path", "auth",
	"allow_plaintext_auth", "mechanisms", "password_command",
	"oauth_command", "backup", "failover_after", NULL };

/* In the order of their enums: the first is the default. */
static const char *const relay_type_names[] = { "smtp", "maildir", NULL };
static const char *const tls_mode_names[] = { "starttls", "implicit",
	"none", NULL };
static const char *const auth_policy_names[] = { "auto", "always", "never",
	NULL };
_Static_assert(RELAY_TYPE_SMTP == 0 && RELAY_TYPE_MAILDIR == 1,
    "relay_type_names out of step with enum relay_type");
_Static_assert(TLS_MODE_STARTTLS == 0 && TLS_MODE_IMPLICIT == 1 &&
    TLS_MODE_NONE == 2, "tls_mode_names out of step with enum tls_mode");
_Static_assert(AUTH_POLICY_AUTO == 0 && AUTH_POLICY_ALWAYS == 1 &&
    AUTH_POLICY_NEVER == 2,
    "auth_policy_names out of step with enum auth_policy");

/* Upper-cases r's mechanism names, which must be SASL mechanism names. */
static int
relay_mechanisms(struct cfgctx *ctx, const config_setting_t *s,
    struct relay_config *r)
{
	size_t i;
	char *m;

	for (i = 0; i < r->nmechanisms; i++) {
		for (m = r->mechanisms[i]; *m != '\0'; m++) {
			*m = (char)toupper((unsigned char)*m);
			if (!isalnum((unsigned char)*m) && *m != '-' &&
			    *m != '_')
				return cfg_fail(ctx, config_setting_get_member(
				    s, "mechanisms"), "relay %s: \"%s\" is "
				    "not a SASL mechanism name", r->name,
				    r->mechanisms[i]);
		}
	}
	return 0;
}

static int
parse_relay(struct cfgctx *ctx, const config_setting_t *s,
    struct relay_config *r)
{
	char *type = NULL, *tls = NULL, *auth = NULL, what[300];
	int rc = -1, type_i, tls_i, auth_i;

	relay_defaults(r);
	r->name = xstrdup(config_setting_name(s));
	if (config_setting_type(s) != CONFIG_TYPE_GROUP) {
		cfg_fail(ctx, s, "relay %s: expected a group { ... }",
		    r->name);
		goto out;
	}
	if (check_known(ctx, s, relay_keys, r->name) == -1 ||
	    get_string(ctx, s, "type", &type) == -1 ||
	    get_string(ctx, s, "host", &r->host) == -1 ||
	    get_port(ctx, s, &r->port) == -1 ||
	    get_string(ctx, s, "tls", &tls) == -1 ||
	    get_bool(ctx, s, "verify", &r->tls_verify) == -1 ||
	    get_string(ctx, s, "ca_file", &r->ca_file) == -1 ||
	    get_string(ctx, s, "helo", &r->helo) == -1 ||
	    get_string(ctx, s, "user", &r->user) == -1 ||
	    get_string(ctx, s, "path", &r->maildir) == -1 ||
	    get_string(ctx, s, "auth", &auth) == -1 ||
	    get_bool(ctx, s, "allow_plaintext_auth",
	    &r->allow_plaintext_auth) == -1 ||
	    get_string_list(ctx, s, "mechanisms", &r->mechanisms,
	    &r->nmechanisms) == -1 ||
	    get_string(ctx, s, "password_command", &r->password_command) ==
	    -1 ||
	    get_string(ctx, s, "oauth_command", &r->oauth_command) == -1 ||
	    get_uint(ctx, s, "max_connections", NULL, 1, 1000,
	    &r->max_connections) == -1 ||
	    get_uint(ctx, s, "max_messages_per_connection", NULL, 1, 1000000,
	    &r->max_msgs_per_conn) == -1 ||
	    get_uint(ctx, s, "timeout_idle", duration_units, 0, 300,
	    &r->timeout_idle) == -1 ||
	    get_uint(ctx, s, "timeout_connect", duration_units, 1, 3600,
	    &r->timeout_connect) == -1 ||
	    get_uint(ctx, s, "timeout_command", duration_units, 1, 3600,
	    &r->timeout_command) == -1 ||
	    get_uint(ctx, s, "timeout_data", duration_units, 1, 7200,
	    &r->timeout_data) == -1 ||
	    get_uint(ctx, s, "line_length_limit", NULL, 0, 1000000,
	    &r->line_length_limit) == -1 ||
	    get_string_list(ctx, s, "backup", &r->backup, &r->nbackup) == -1 ||
	    get_uint(ctx, s, "failover_after", duration_units, 0, 30 * 86400,
	    &r->failover_after) == -1)
		goto out;
	snprintf(what, sizeof(what), "relay %s: type", r->name);
	if (get_choice(ctx, s, "type", what, relay_type_names, type,
	    &type_i) == -1)
		goto out;
	snprintf(what, sizeof(what), "relay %s: tls", r->name);
	if (get_choice(ctx, s, "tls", what, tls_mode_names, tls, &tls_i) ==
	    -1)
		goto out;
	snprintf(what, sizeof(what), "relay %s: auth", r->name);
	if (get_choice(ctx, s, "auth", what, auth_policy_names, auth,
	    &auth_i) == -1 || relay_mechanisms(ctx, s, r) == -1)
		goto out;
	r->type = (enum relay_type)type_i;
	r->tls = (enum tls_mode)tls_i;
	r->auth = (enum auth_policy)auth_i;
	/* Below 78, RFC 5322's recommended length, nearly every line of
	 * ordinary mail would be broken: surely a typo. */
	if (r->line_length_limit > 0 && r->line_length_limit < 78) {
		cfg_fail(ctx, config_setting_get_member(s,
		    "line_length_limit"), "relay %s: line_length_limit must "
		    "be 0 (no limit) or at least 78", r->name);
		goto out;
	}
	if (r->type == RELAY_TYPE_SMTP && r->host == NULL) {
		cfg_fail(ctx, s, "relay %s: host is required", r->name);
		goto out;
	}
	if (r->type == RELAY_TYPE_MAILDIR && r->maildir == NULL) {
		cfg_fail(ctx, s, "relay %s: path is required for a maildir "
		    "relay", r->name);
		goto out;
	}
	if (r->port == NULL)
		r->port = xstrdup(r->tls == TLS_MODE_IMPLICIT ? "465" :
		    r->tls == TLS_MODE_NONE ? "25" : "587");
	rc = 0;
out:
	free(type);
	free(tls);
	free(auth);
	return rc;
}

static const char *const listen_keys[] = { "address", "port", "path", "mode",
	"group", NULL };

static int
parse_listen(struct cfgctx *ctx, const config_setting_t *s,
    struct listen_config *l)
{
	char *mode = NULL;
	int rc = -1;

	if (config_setting_type(s) != CONFIG_TYPE_GROUP)
		return cfg_fail(ctx, s, "listen: each entry must be a group "
		    "{ address = ...; port = ...; } or { path = ...; }");
	if (check_known(ctx, s, listen_keys, "listen") == -1 ||
	    get_string(ctx, s, "address", &l->address) == -1 ||
	    get_port(ctx, s, &l->port) == -1 ||
	    get_string(ctx, s, "path", &l->path) == -1 ||
	    get_string(ctx, s, "mode", &mode) == -1 ||
	    get_string(ctx, s, "group", &l->group) == -1)
		goto out;
	if (l->path != NULL) {
		char *end;
		unsigned long m = 0666;

		if (l->address != NULL || l->port != NULL) {
			cfg_fail(ctx, s, "listen: give either path or "
			    "address/port, not both");
			goto out;
		}
		if (strlen(l->path) >= sizeof(((struct sockaddr_un *)0)
		    ->sun_path)) {
			cfg_fail(ctx, s, "listen: socket path too long");
			goto out;
		}
		if (mode != NULL) {
			m = strtoul(mode, &end, 8);
			if (*end != '\0' || mode[0] == '\0' || m > 0777) {
				cfg_fail(ctx, s, "listen: mode \"%s\" is not "
				    "an octal permission like \"0660\"", mode);
				goto out;
			}
		}
		l->kind = LISTEN_UNIX;
		l->mode = (mode_t)m;
	} else {
		struct netmask m;

		l->kind = LISTEN_TCP;
		if (l->address == NULL)
			l->address = xstrdup("127.0.0.1");
		if (netmask_parse(l->address, &m) == -1 ||
		    strchr(l->address, '/') != NULL) {
			cfg_fail(ctx, s, "listen: address \"%s\" is not a "
			    "numeric IPv4 or IPv6 address", l->address);
			goto out;
		}
		if (l->port == NULL)
			l->port = xstrdup("25");
		if (mode != NULL || l->group != NULL) {
			cfg_fail(ctx, s, "listen: mode and group apply to "
			    "Unix sockets only");
			goto out;
		}
	}
	rc = 0;
out:
	free(mode);
	return rc;
}

static void
listen_add_default(struct config *cfg, const char *addr)
{
	struct listen_config *l;

	cfg->listen = xreallocarray(cfg->listen, cfg->nlisten + 1,
	    sizeof(*cfg->listen));
	l = &cfg->listen[cfg->nlisten++];
	memset(l, 0, sizeof(*l));
	l->kind = LISTEN_TCP;
	l->address = xstrdup(addr);
	l->port = xstrdup("25");
}

/* 1 if the numeric address a is a loopback address (127/8, ::1). */
static int
address_is_loopback(const char *a)
{
	struct in6_addr in6;
	struct in_addr in;

	if (inet_pton(AF_INET, a, &in) == 1)
		return (ntohl(in.s_addr) >> 24) == 127;
	return inet_pton(AF_INET6, a, &in6) == 1 &&
	    IN6_IS_ADDR_LOOPBACK(&in6);
}

/*
 * metrics_listen: a port ("9125" or 9125, on 127.0.0.1), "ADDRESS:PORT"
 * or "[IPV6]:PORT", the port numeric (0: any). A non-loopback address
 * needs allow_networks, as a non-loopback SMTP listener does, and then
 * only those networks (and loopback) are answered. Parsed after
 * allow_networks.
 */
static int
parse_metrics_listen(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	const config_setting_t *s;
	const char *v, *colon;
	char *end, buf[64];
	unsigned long port;
	struct netmask m;

	if ((s = config_setting_get_member(root, "metrics_listen")) == NULL)
		return 0;
	if (config_setting_type(s) == CONFIG_TYPE_INT) {
		snprintf(buf, sizeof(buf), "%d", config_setting_get_int(s));
		v = buf;
	} else if (config_setting_type(s) == CONFIG_TYPE_STRING)
		v = config_setting_get_string(s);
	else
		return cfg_fail(ctx, s, "metrics_listen: expected a port or "
		    "\"address:port\"");
	if ((colon = strrchr(v, ':')) == NULL) {
		cfg->metrics_address = xstrdup("127.0.0.1");
		colon = v - 1;
	} else if (v[0] == '[' && colon > v && colon[-1] == ']')
		cfg->metrics_address = xstrndup(v + 1, (size_t)(colon - v - 2));
	else
		cfg->metrics_address = xstrndup(v, (size_t)(colon - v));
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (colon[1] < '0' || colon[1] > '9' || *end != '\0' || errno != 0 ||
	    port > 65535)
		return cfg_fail(ctx, s, "metrics_listen: \"%s\": the port "
		    "must be a number from 0 to 65535", v);
	if (netmask_parse(cfg->metrics_address, &m) == -1 ||
	    strchr(cfg->metrics_address, '/') != NULL)
		return cfg_fail(ctx, s, "metrics_listen: \"%s\": \"%s\" is "
		    "not a numeric IPv4 or IPv6 address (IPv6 in brackets: "
		    "\"[::1]:9125\")", v, cfg->metrics_address);
	if (!address_is_loopback(cfg->metrics_address) && cfg->nallow == 0)
		return cfg_fail(ctx, s, "metrics_listen: %s is not loopback: "
		    "set allow_networks to the networks allowed to connect",
		    cfg->metrics_address);
	cfg->metrics_port = (unsigned)port;
	return 0;
}

static const char *const top_keys[] = { "hostname", "user", "spool",
	"spool_sync", "spool_log_max", "spool_log_file_size", "shutdown_timeout", "listen", "allow_networks", "limits",
	"queue", "default_relay", "relays", "auth_first", "authinfo",
	"state_dir", "control_socket", "control_admin_group",
	"control_read_group", "routes", "mail_domain",
	"local_domains", "aliases", "local_catch_all", "sender_rewrite",
	"maildrop", "maildrop_group", "sender_policy", "metrics_listen", NULL };
static const char *const sender_policy_keys[] = { "mode", "map", "exempt",
	NULL };
static const char *const limit_keys[] = { "max_line", "max_message_size",
	"max_recipients", "max_sessions", "max_errors", "idle_timeout",
	"session_timeout", "max_sessions_per_client", NULL };
static const char *const sender_rewrite_keys[] = { "map", "masquerade",
	NULL };
static const char *const queue_keys[] = { "retry_min", "retry_max",
	"lifetime", "delay_warning", "workers", NULL };

static int
compile_auth_first(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	char msg[256];
	size_t i, j;
	int r;

	if (cfg->nauth_first == 0)
		return 0;
	cfg->auth_first_re = xcalloc(cfg->nauth_first,
	    sizeof(*cfg->auth_first_re));
	for (i = 0; i < cfg->nauth_first; i++) {
		r = regcomp(&cfg->auth_first_re[i], cfg->auth_first[i],
		    REG_EXTENDED | REG_ICASE | REG_NOSUB);
		if (r != 0) {
			regerror(r, &cfg->auth_first_re[i], msg, sizeof(msg));
			cfg_fail(ctx, config_setting_get_member(root,
			    "auth_first"), "auth_first: \"%s\": %s",
			    cfg->auth_first[i], msg);
			/* config_free() frees the first nauth_first of both
			 * lists: keep the compiled ones, free the rest now. */
			for (j = i; j < cfg->nauth_first; j++) {
				free(cfg->auth_first[j]);
				cfg->auth_first[j] = NULL;
			}
			cfg->nauth_first = i;
			return -1;
		}
	}
	return 0;
}

/*
 * "~/" in credential file names means the daemon user's home: the user
 * named in the config when there is one (we switch to it), else ours.
 * With no authinfo setting the list is Emacs's default one.
 */
static int
expand_authinfo(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	static const char *const defaults[] = { "~/.authinfo",
		"~/.authinfo.gpg", "~/.netrc" };
	const char *home = NULL;
	struct passwd *pw;
	size_t i;

	if (cfg->authinfo == NULL) {
		cfg->authinfo = xcalloc(4, sizeof(*cfg->authinfo));
		for (i = 0; i < 3; i++)
			cfg->authinfo[i] = xstrdup(defaults[i]);
		cfg->nauthinfo = 3;
	}
	if (cfg->user != NULL) {
		if ((pw = getpwnam(cfg->user)) == NULL)
			return cfg_fail(ctx, config_setting_get_member(root,
			    "user"), "user \"%s\" does not exist", cfg->user);
		home = pw->pw_dir;
	} else if (cfg->user == NULL && (home = getenv("HOME")) == NULL &&
	    (pw = getpwuid(getuid())) != NULL)
		home = pw->pw_dir;
	for (i = 0; i < cfg->nauthinfo; i++) {
		char *f = cfg->authinfo[i];

		if (strncmp(f, "~/", 2) != 0)
			continue;
		if (home == NULL)
			return cfg_fail(ctx, config_setting_get_member(root,
			    "authinfo"), "authinfo: cannot expand \"%s\": "
			    "no home directory for the daemon user", f);
		cfg->authinfo[i] = xasprintf("%s/%s", home, f + 2);
		free(f);
	}
	return 0;
}

int
config_auth_first(const struct config *cfg, const char *host)
{
	size_t i;

	for (i = 0; i < cfg->nauth_first; i++)
		if (regexec(&cfg->auth_first_re[i], host, 0, NULL, 0) == 0)
			return 1;
	return 0;
}

/* The index of the relay named name in cfg, or -1. */
static long
relay_index(const struct config *cfg, const char *name)
{
	size_t i;

	for (i = 0; i < cfg->nrelays; i++)
		if (strcmp(cfg->relays[i].name, name) == 0)
			return (long)i;
	return -1;
}

/* Every backup names another relay, once. relays is the relays group. */
static int
check_backups(struct cfgctx *ctx, const config_setting_t *relays,
    const struct config *cfg)
{
	const struct relay_config *r;
	const config_setting_t *s;
	size_t i, j, k;
	long idx;

	for (i = 0; i < cfg->nrelays; i++) {
		r = &cfg->relays[i];
		s = config_setting_get_member(config_setting_get_member(
		    relays, r->name), "backup");
		for (j = 0; j < r->nbackup; j++) {
			const char *b = r->backup[j];

			if ((idx = relay_index(cfg, b)) == -1)
				return cfg_fail(ctx, s, "relay %s: backup: no "
				    "relay named \"%s\"", r->name, b);
			if ((size_t)idx == i)
				return cfg_fail(ctx, s, "relay %s: backup: a "
				    "relay cannot be its own backup", r->name);
			for (k = 0; k < j; k++)
				if (strcmp(r->backup[k], b) == 0)
					return cfg_fail(ctx, s, "relay %s: "
					    "backup: \"%s\" is listed twice",
					    r->name, b);
		}
	}
	return 0;
}

static const char *const route_keys[] = { "sender", "domain", "regexp",
	"relay", NULL };

/* One rule of routes: exactly one of sender, domain or regexp, and a
 * relay that exists. */
static int
parse_route(struct cfgctx *ctx, const config_setting_t *s,
    const struct config *cfg, struct route *rt)
{
	static const struct {
		const char *key;
		enum route_kind kind;
	} kinds[] = { { "sender", ROUTE_SENDER }, { "domain", ROUTE_DOMAIN },
		{ "regexp", ROUTE_REGEXP } };
	char *relay = NULL, *v, msg[256];
	const char *key = NULL;
	int rc = -1;
	size_t i;
	long idx;

	if (config_setting_type(s) != CONFIG_TYPE_GROUP)
		return cfg_fail(ctx, s, "routes: each rule must be a group "
		    "{ sender = \"...\"; relay = \"...\"; }");
	if (check_known(ctx, s, route_keys, "routes") == -1 ||
	    get_string(ctx, s, "relay", &relay) == -1)
		goto out;
	for (i = 0; i < sizeof(kinds) / sizeof(*kinds); i++) {
		v = NULL;
		if (get_string(ctx, s, kinds[i].key, &v) == -1)
			goto out;
		if (config_setting_get_member(s, kinds[i].key) == NULL)
			continue;
		if (key != NULL) {
			free(v);
			cfg_fail(ctx, s, "routes: give one of sender, domain "
			    "or regexp per rule, not %s and %s", key,
			    kinds[i].key);
			goto out;
		}
		key = kinds[i].key;
		rt->kind = kinds[i].kind;
		rt->pattern = v;
	}
	if (key == NULL) {
		cfg_fail(ctx, s, "routes: a rule needs sender, domain or "
		    "regexp");
		goto out;
	}
	if (rt->pattern == NULL) {
		cfg_fail(ctx, s, "routes: %s must not be empty", key);
		goto out;
	}
	if (rt->kind == ROUTE_DOMAIN && rt->pattern[0] == '@')
		memmove(rt->pattern, rt->pattern + 1, strlen(rt->pattern));
	if ((rt->kind == ROUTE_DOMAIN && (rt->pattern[0] == '\0' ||
	    strchr(rt->pattern, '@') != NULL)) ||
	    (rt->kind == ROUTE_SENDER && strchr(rt->pattern, '@') == NULL)) {
		cfg_fail(ctx, s, "routes: %s \"%s\" is not %s", key,
		    rt->pattern, rt->kind == ROUTE_DOMAIN ? "a domain" :
		    "an address like user@example.com");
		goto out;
	}
	if (route_compile(rt, msg, sizeof(msg)) == -1) {
		cfg_fail(ctx, s, "routes: regexp \"%s\": %s", rt->pattern,
		    msg);
		goto out;
	}
	if (relay == NULL) {
		cfg_fail(ctx, s, "routes: a rule needs relay = \"NAME\"");
		goto out;
	}
	if ((idx = relay_index(cfg, relay)) == -1) {
		cfg_fail(ctx, config_setting_get_member(s, "relay"),
		    "routes: no relay named \"%s\"", relay);
		goto out;
	}
	rt->relay = (size_t)idx;
	rc = 0;
out:
	free(relay);
	return rc;
}

static int
parse_routes(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	const config_setting_t *s = config_setting_get_member(root, "routes");
	int i, n;

	if (s == NULL)
		return 0;
	if (config_setting_type(s) != CONFIG_TYPE_LIST)
		return cfg_fail(ctx, s, "routes: expected a list ( { ... }, "
		    "{ ... } )");
	n = config_setting_length(s);
	cfg->routes = xcalloc((size_t)n + 1, sizeof(*cfg->routes));
	for (i = 0; i < n; i++) {
		cfg->nroutes++;
		if (parse_route(ctx, config_setting_get_elem(s, (unsigned)i),
		    cfg, &cfg->routes[i]) == -1)
			return -1;
	}
	return 0;
}

/* A file name setting that must be absolute: the daemon changes its
 * working directory, and a reload must read the same file. */
static int
get_path(struct cfgctx *ctx, const config_setting_t *grp, const char *key,
    char **out)
{
	if (get_string(ctx, grp, key, out) == -1)
		return -1;
	if (*out != NULL && (*out)[0] != '/')
		return cfg_fail(ctx, config_setting_get_member(grp, key),
		    "%s: \"%s\" must be an absolute path", key, *out);
	return 0;
}

/* Whether name can be the domain of an address. */
static int
domain_ok(const char *name)
{
	char *addr = xasprintf("postmaster@%s", name);
	int ok = smtp_mailbox_valid(addr, 0) && name[0] != '[';

	free(addr);
	return ok;
}

/* mail_domain, local_domains, aliases, local_catch_all, sender_rewrite:
 * see localaddr.h. The aliases file and sender map are read here, so a
 * config check (smarthostd -t, a reload, newaliases) checks them too. */
static int
config_local(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	struct localaddr_params lp;
	const config_setting_t *grp;
	char **domains = NULL, *aliases = NULL, *catch_all = NULL;
	char *map = NULL;
	size_t ndomains = 0, i;
	int masquerade = 0, rc = -1;

	if (get_string(ctx, root, "mail_domain", &cfg->mail_domain) == -1 ||
	    get_string_list(ctx, root, "local_domains", &domains,
	    &ndomains) == -1 ||
	    get_path(ctx, root, "aliases", &aliases) == -1 ||
	    get_string(ctx, root, "local_catch_all", &catch_all) == -1)
		goto out;
	if ((grp = config_setting_get_member(root, "sender_rewrite")) !=
	    NULL) {
		if (config_setting_type(grp) != CONFIG_TYPE_GROUP) {
			cfg_fail(ctx, grp, "sender_rewrite: expected a group "
			    "{ map = \"...\"; masquerade = true; }");
			goto out;
		}
		if (check_known(ctx, grp, sender_rewrite_keys,
		    "sender_rewrite") == -1 ||
		    get_path(ctx, grp, "map", &map) == -1 ||
		    get_bool(ctx, grp, "masquerade", &masquerade) == -1)
			goto out;
	}
	if (cfg->mail_domain == NULL)
		cfg->mail_domain = xstrdup(cfg->hostname);
	if (!domain_ok(cfg->mail_domain)) {
		cfg_fail(ctx, config_setting_get_member(root, "mail_domain"),
		    "mail_domain: \"%s\" is not a domain name",
		    cfg->mail_domain);
		goto out;
	}
	for (i = 0; i < ndomains; i++)
		if (!domain_ok(domains[i])) {
			cfg_fail(ctx, config_setting_get_member(root,
			    "local_domains"), "local_domains: \"%s\" is not a "
			    "domain name", domains[i]);
			goto out;
		}
	memset(&lp, 0, sizeof(lp));
	lp.hostname = cfg->hostname;
	lp.mail_domain = cfg->mail_domain;
	lp.local_domains = domains;
	lp.nlocal_domains = ndomains;
	lp.aliases_file = aliases;
	lp.catch_all = catch_all;
	lp.sender_map_file = map;
	lp.masquerade = masquerade;
	if ((cfg->local = localaddr_new(&lp, ctx->err, ctx->errlen)) == NULL)
		goto out;
	if (catch_all != NULL && (!smtp_mailbox_valid(catch_all, 1) ||
	    localaddr_is_local(cfg->local, catch_all))) {
		cfg_fail(ctx, config_setting_get_member(root,
		    "local_catch_all"), "local_catch_all: \"%s\" must be a "
		    "full address outside the local domains", catch_all);
		goto out;
	}
	rc = 0;
out:
	for (i = 0; i < ndomains; i++)
		free(domains[i]);
	free(domains);
	free(aliases);
	free(catch_all);
	free(map);
	return rc;
}

/*
 * sender_policy = { mode = "any" | "own" | "map"; map = "FILE";
 * exempt = [ "root", "%wheel" ]; }. The map is read now, so a reload
 * picks up its changes and a broken map fails like a broken config.
 */
static const char *const sender_policy_mode_names[] = { "any", "own", "map",
	NULL };
_Static_assert(SENDER_POLICY_ANY == 0 && SENDER_POLICY_OWN == 1 &&
    SENDER_POLICY_MAP == 2,
    "sender_policy_mode_names out of step with enum sender_policy_mode");

static int
parse_sender_policy(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	const config_setting_t *grp;
	char *mode = NULL, *map = NULL, **exempt = NULL;
	size_t nexempt = 0, i;
	enum sender_policy_mode m;
	int rc = -1, exempt_set, mode_i;

	grp = config_setting_get_member(root, "sender_policy");
	if (grp == NULL) {
		cfg->sender_policy = sender_policy_new(SENDER_POLICY_ANY);
		return 0;
	}
	if (config_setting_type(grp) != CONFIG_TYPE_GROUP)
		return cfg_fail(ctx, grp, "sender_policy: expected a group");
	exempt_set = config_setting_get_member(grp, "exempt") != NULL;
	if (check_known(ctx, grp, sender_policy_keys, "sender_policy") == -1 ||
	    get_string(ctx, grp, "mode", &mode) == -1 ||
	    get_string(ctx, grp, "map", &map) == -1 ||
	    get_string_list(ctx, grp, "exempt", &exempt, &nexempt) == -1)
		goto out;
	if (get_choice(ctx, grp, "mode", "sender_policy: mode",
	    sender_policy_mode_names, mode, &mode_i) == -1)
		goto out;
	m = (enum sender_policy_mode)mode_i;
	if ((m == SENDER_POLICY_MAP) != (map != NULL)) {
		cfg_fail(ctx, grp, m == SENDER_POLICY_MAP ?
		    "sender_policy: mode \"map\" needs map = \"FILE\"" :
		    "sender_policy: map is only used with mode \"map\"");
		goto out;
	}
	cfg->sender_policy = sender_policy_new(m);
	/* root can write the queue directly anyway: exempt unless the
	 * list says otherwise. */
	if (!exempt_set)
		sender_policy_exempt(cfg->sender_policy, "root");
	for (i = 0; i < nexempt; i++)
		sender_policy_exempt(cfg->sender_policy, exempt[i]);
	if (map != NULL && sender_policy_load_map(cfg->sender_policy, map,
	    ctx->err, ctx->errlen) == -1)
		goto out;
	rc = 0;
out:
	free(mode);
	free(map);
	string_list_free(exempt, nexempt);
	return rc;
}

/* maildrop, maildrop_group and sender_policy. */
static int
parse_local_submission(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	if (get_string(ctx, root, "maildrop", &cfg->maildrop) == -1 ||
	    get_string(ctx, root, "maildrop_group", &cfg->maildrop_group) ==
	    -1 || parse_sender_policy(ctx, root, cfg) == -1)
		return -1;
	if (cfg->maildrop == NULL)
		cfg->maildrop = xasprintf("%s/maildrop", cfg->spool);
	if (cfg->maildrop_group == NULL)
		cfg->maildrop_group = xstrdup("smarthostdrop");
	return 0;
}

/* The built-in defaults of the settings parsed below. */
static void
config_set_defaults(struct config *cfg)
{
	cfg->max_line = 2048;
	cfg->max_message_size = 35ULL * 1024 * 1024;
	cfg->max_recipients = 1000;
	cfg->max_sessions = 100;
	cfg->max_errors = 10;
	cfg->idle_timeout = 300;
	cfg->session_timeout = 600;
	cfg->max_sessions_per_client = 0; /* half of max_sessions, below */
	cfg->retry_min = 300;
	cfg->retry_max = 4000;
	cfg->lifetime = 5 * 86400;
	cfg->delay_warning = 4 * 3600;
	cfg->delivery_workers = 4;
	cfg->shutdown_timeout = 30;
	cfg->spool_log_max = 64 * 1024;
	cfg->spool_log_file_size = 8 * 1024 * 1024;
}

/*
 * The top-level scalars: hostname, user, spool, spool_sync,
 * spool_log_max, spool_log_file_size, shutdown_timeout, and default_relay (into *defrelay, the
 * caller's to free; checked once the relays are known). Unknown top-level
 * keys are refused here.
 */
static const char *const spool_sync_names[] = { "fsync", "syncfs", NULL };
_Static_assert(SPOOL_SYNC_FSYNC == 0 && SPOOL_SYNC_SYNCFS == 1,
    "spool_sync_names out of step with enum spool_sync");

static int
parse_top(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg, char **defrelay)
{
	unsigned long long size;
	char *sync = NULL;
	char host[256];
	int rc = -1, sync_i;

	if (check_known(ctx, root, top_keys, "") == -1 ||
	    get_string(ctx, root, "hostname", &cfg->hostname) == -1 ||
	    get_string(ctx, root, "user", &cfg->user) == -1 ||
	    get_string(ctx, root, "spool", &cfg->spool) == -1 ||
	    get_string(ctx, root, "spool_sync", &sync) == -1 ||
	    get_uint(ctx, root, "shutdown_timeout", duration_units, 0, 3600,
	    &cfg->shutdown_timeout) == -1 ||
	    get_string(ctx, root, "default_relay", defrelay) == -1)
		goto out;
	size = cfg->spool_log_max;
	if (get_number(ctx, root, "spool_log_max", size_units, 0,
	    16 * 1024 * 1024, &size) == -1)
		goto out;
	cfg->spool_log_max = (size_t)size;
	size = cfg->spool_log_file_size;
	if (get_number(ctx, root, "spool_log_file_size", size_units, 4096,
	    1024 * 1024 * 1024, &size) == -1)
		goto out;
	cfg->spool_log_file_size = (size_t)size;
	if (get_choice(ctx, root, "spool_sync", "spool_sync",
	    spool_sync_names, sync, &sync_i) == -1)
		goto out;
	cfg->spool_sync = (enum spool_sync)sync_i;
	if (cfg->hostname == NULL) {
		if (gethostname(host, sizeof(host)) == -1 || host[0] == '\0')
			strcpy(host, "localhost");
		host[sizeof(host) - 1] = '\0';
		cfg->hostname = xstrdup(host);
	}
	if (cfg->spool == NULL)
		cfg->spool = xstrdup(LOCALSTATEDIR "/spool/smarthostd");
	rc = 0;
out:
	free(sync);
	return rc;
}

/* The limits = { ... } group, if present, then the per-client default. */
static int
parse_limits(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	const config_setting_t *grp;
	unsigned long long size;

	if ((grp = config_setting_get_member(root, "limits")) != NULL) {
		if (config_setting_type(grp) != CONFIG_TYPE_GROUP) {
			cfg_fail(ctx, grp, "limits: expected a group");
			return -1;
		}
		size = cfg->max_message_size;
		if (check_known(ctx, grp, limit_keys, "limits") == -1 ||
		    get_number(ctx, grp, "max_message_size", size_units, 1024,
		    1ULL << 40, &size) == -1)
			return -1;
		cfg->max_message_size = (size_t)size;
		size = cfg->max_line;
		if (get_number(ctx, grp, "max_line", size_units, 512,
		    1024 * 1024, &size) == -1 ||
		    get_uint(ctx, grp, "max_recipients", NULL, 1, 100000,
		    &cfg->max_recipients) == -1 ||
		    get_uint(ctx, grp, "max_sessions", NULL, 1, 100000,
		    &cfg->max_sessions) == -1 ||
		    get_uint(ctx, grp, "max_errors", NULL, 1, 1000,
		    &cfg->max_errors) == -1 ||
		    get_uint(ctx, grp, "idle_timeout", duration_units, 1, 86400,
		    &cfg->idle_timeout) == -1 ||
		    get_uint(ctx, grp, "session_timeout", duration_units, 0,
		    7 * 86400, &cfg->session_timeout) == -1 ||
		    get_uint(ctx, grp, "max_sessions_per_client", NULL, 1,
		    100000, &cfg->max_sessions_per_client) == -1)
			return -1;
		cfg->max_line = (size_t)size;
	}
	/* One client (a local user, or an address) may take half of the
	 * slots unless told otherwise: the others keep the rest. */
	if (cfg->max_sessions_per_client == 0)
		cfg->max_sessions_per_client = cfg->max_sessions / 2 > 0 ?
		    cfg->max_sessions / 2 : 1;
	return 0;
}

/* The queue = { ... } group, if present. */
static int
parse_queue(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	const config_setting_t *grp;

	if ((grp = config_setting_get_member(root, "queue")) == NULL)
		return 0;
	if (config_setting_type(grp) != CONFIG_TYPE_GROUP) {
		cfg_fail(ctx, grp, "queue: expected a group");
		return -1;
	}
	if (check_known(ctx, grp, queue_keys, "queue") == -1 ||
	    get_uint(ctx, grp, "retry_min", duration_units, 1, 30 * 86400,
	    &cfg->retry_min) == -1 ||
	    get_uint(ctx, grp, "retry_max", duration_units, 1, 30 * 86400,
	    &cfg->retry_max) == -1 ||
	    get_uint(ctx, grp, "lifetime", duration_units, 1, 365 * 86400,
	    &cfg->lifetime) == -1 ||
	    get_uint(ctx, grp, "delay_warning", duration_units, 0,
	    365 * 86400, &cfg->delay_warning) == -1 ||
	    get_uint(ctx, grp, "workers", NULL, 1, 64,
	    &cfg->delivery_workers) == -1)
		return -1;
	if (cfg->retry_max < cfg->retry_min) {
		cfg_fail(ctx, config_setting_get_member(grp, "retry_max"),
		    "retry_max must not be smaller than retry_min");
		return -1;
	}
	return 0;
}

/* listen = ( {...}, ... ); without it, port 25 on both loopbacks. */
static int
parse_listens(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	const config_setting_t *s;
	int i, n;

	if ((s = config_setting_get_member(root, "listen")) == NULL) {
		listen_add_default(cfg, "127.0.0.1");
		listen_add_default(cfg, "::1");
		return 0;
	}
	if (config_setting_type(s) != CONFIG_TYPE_LIST) {
		cfg_fail(ctx, s, "listen: expected a list ( {...}, {...} )");
		return -1;
	}
	n = config_setting_length(s);
	cfg->listen = xcalloc((size_t)n, sizeof(*cfg->listen));
	for (i = 0; i < n; i++) {
		cfg->nlisten++;
		if (parse_listen(ctx, config_setting_get_elem(s, (unsigned)i),
		    &cfg->listen[i]) == -1)
			return -1;
	}
	return 0;
}

/* allow_networks = [ "192.0.2.0/24", ... ], if present. */
static int
parse_allow_networks(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	const config_setting_t *s, *e;
	const char *v;
	int i, n;

	if ((s = config_setting_get_member(root, "allow_networks")) == NULL)
		return 0;
	if (config_setting_type(s) != CONFIG_TYPE_ARRAY &&
	    config_setting_type(s) != CONFIG_TYPE_LIST) {
		cfg_fail(ctx, s, "allow_networks: expected a list of strings "
		    "[ \"192.0.2.0/24\", ... ]");
		return -1;
	}
	n = config_setting_length(s);
	cfg->allow = xcalloc((size_t)n, sizeof(*cfg->allow));
	for (i = 0; i < n; i++) {
		e = config_setting_get_elem(s, (unsigned)i);
		v = config_setting_type(e) == CONFIG_TYPE_STRING ?
		    config_setting_get_string(e) : NULL;
		if (v == NULL || netmask_parse(v, &cfg->allow[i]) == -1) {
			cfg_fail(ctx, e, "allow_networks: \"%s\" is not a "
			    "network like 192.0.2.0/24", v != NULL ? v : "?");
			return -1;
		}
		cfg->nallow++;
	}
	return 0;
}

/*
 * auth_first and authinfo, the local submission settings, and the paths
 * under the spool: state_dir and the control socket with its groups.
 */
static int
parse_auth_and_control(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg)
{
	const size_t sun_path = sizeof(((struct sockaddr_un *)0)->sun_path);

	if (get_string_list(ctx, root, "auth_first", &cfg->auth_first,
	    &cfg->nauth_first) == -1 ||
	    get_string_list(ctx, root, "authinfo", &cfg->authinfo,
	    &cfg->nauthinfo) == -1 ||
	    get_string(ctx, root, "state_dir", &cfg->state_dir) == -1 ||
	    get_string(ctx, root, "control_socket", &cfg->control_socket) ==
	    -1 ||
	    get_string(ctx, root, "control_admin_group",
	    &cfg->control_admin_group) == -1 ||
	    get_string(ctx, root, "control_read_group",
	    &cfg->control_read_group) == -1)
		return -1;
	if (compile_auth_first(ctx, root, cfg) == -1 ||
	    expand_authinfo(ctx, root, cfg) == -1 ||
	    parse_local_submission(ctx, root, cfg) == -1)
		return -1;
	if (cfg->state_dir == NULL)
		cfg->state_dir = xasprintf("%s/state", cfg->spool);
	if (cfg->control_socket == NULL)
		cfg->control_socket = xasprintf("%s/control.sock", cfg->spool);
	if (strlen(cfg->control_socket) >= sun_path) {
		cfg_fail(ctx, config_setting_get_member(root,
		    "control_socket"), "control_socket: \"%s\" is too long "
		    "for a Unix socket path (at most %zu bytes); set "
		    "control_socket to a shorter path", cfg->control_socket,
		    sun_path - 1);
		return -1;
	}
	return 0;
}

/*
 * relays = { name = {...}; ... }, at least one; default_relay (defrelay,
 * NULL: the first) must name one of them. Then what refers to relays:
 * backups, routes and the local part rules.
 */
static int
parse_relays(struct cfgctx *ctx, const config_setting_t *root,
    struct config *cfg, const char *defrelay)
{
	const config_setting_t *s;
	long j;
	int i, n;

	if ((s = config_setting_get_member(root, "relays")) == NULL ||
	    config_setting_length(s) == 0) {
		cfg_fail(ctx, s, "no relay configured: add a relays = { name "
		    "= { host = \"...\"; }; } section");
		return -1;
	}
	if (config_setting_type(s) != CONFIG_TYPE_GROUP) {
		cfg_fail(ctx, s, "relays: expected a group of named relays");
		return -1;
	}
	n = config_setting_length(s);
	cfg->relays = xcalloc((size_t)n, sizeof(*cfg->relays));
	for (i = 0; i < n; i++) {
		cfg->nrelays++;
		if (parse_relay(ctx, config_setting_get_elem(s, (unsigned)i),
		    &cfg->relays[i]) == -1)
			return -1;
	}
	cfg->default_relay = 0;
	if (defrelay != NULL) {
		if ((j = relay_index(cfg, defrelay)) == -1) {
			cfg_fail(ctx, config_setting_get_member(root,
			    "default_relay"), "default_relay: no relay named "
			    "\"%s\"", defrelay);
			return -1;
		}
		cfg->default_relay = (size_t)j;
	}
	if (check_backups(ctx, s, cfg) == -1 ||
	    parse_routes(ctx, root, cfg) == -1 ||
	    config_local(ctx, root, cfg) == -1)
		return -1;
	return 0;
}

/* The whole file, section by section, in the order errors are reported. */
static int
config_build(struct cfgctx *ctx, config_t *lc, struct config *cfg)
{
	const config_setting_t *root = config_root_setting(lc);
	char *defrelay = NULL;
	int rc = -1;

	config_set_defaults(cfg);
	if (parse_top(ctx, root, cfg, &defrelay) == -1 ||
	    parse_limits(ctx, root, cfg) == -1 ||
	    parse_queue(ctx, root, cfg) == -1 ||
	    parse_listens(ctx, root, cfg) == -1 ||
	    parse_allow_networks(ctx, root, cfg) == -1 ||
	    parse_metrics_listen(ctx, root, cfg) == -1 ||
	    parse_auth_and_control(ctx, root, cfg) == -1 ||
	    parse_relays(ctx, root, cfg, defrelay) == -1)
		goto out;
	rc = 0;
out:
	free(defrelay);
	return rc;
}

static struct config *
config_finish(struct cfgctx *ctx, config_t *lc, int ok, const char *path)
{
	struct config *cfg;

	if (!ok) {
		if (config_error_line(lc) > 0)
			snprintf(ctx->err, ctx->errlen, "%s:%d: %s",
			    config_error_file(lc) != NULL ?
			    config_error_file(lc) : ctx->name,
			    config_error_line(lc), config_error_text(lc));
		else
			snprintf(ctx->err, ctx->errlen, "%s: %s", ctx->name,
			    config_error_text(lc));
		config_destroy(lc);
		return NULL;
	}
	cfg = xcalloc(1, sizeof(*cfg));
	cfg->file = path != NULL ? xstrdup(path) : NULL;
	if (config_build(ctx, lc, cfg) == -1) {
		config_free(cfg);
		cfg = NULL;
	}
	config_destroy(lc);
	return cfg;
}

/* ---- overrides from the command line and the environment ---- */

const struct config_option config_options[] = {
	{ "relay", "relay", "SMARTHOSTD_RELAY", "HOST[:PORT]" },
	{ "tls", "tls", "SMARTHOSTD_TLS", "starttls|implicit|none" },
	{ "relay_user", "relay-user", "SMARTHOSTD_RELAY_USER", "LOGIN" },
	{ "ca_file", "ca-file", "SMARTHOSTD_CA_FILE", "FILE" },
	{ "authinfo", "authinfo", "SMARTHOSTD_AUTHINFO", "FILE[,FILE...]" },
	{ "listen", "listen", "SMARTHOSTD_LISTEN", "ADDR:PORT[,...]" },
	{ "allow_networks", "allow-network", "SMARTHOSTD_ALLOW_NETWORKS",
	    "NET/BITS[,...]" },
	{ "spool", "spool", "SMARTHOSTD_SPOOL", "DIR" },
	{ "user", "user", "SMARTHOSTD_USER", "USER" },
	{ "hostname", "hostname", "SMARTHOSTD_HOSTNAME", "NAME" },
	{ "mail_domain", "mail-domain", "SMARTHOSTD_MAIL_DOMAIN", "DOMAIN" },
	{ "max_message_size", "max-message-size",
	    "SMARTHOSTD_MAX_MESSAGE_SIZE", "SIZE" },
	{ "metrics_listen", "metrics-listen", "SMARTHOSTD_METRICS_LISTEN",
	    "[ADDR:]PORT" },
	{ NULL, NULL, NULL, NULL },
};

/* The member name of grp, replaced by a new setting of type. */
static config_setting_t *
ov_replace(config_setting_t *grp, const char *name, int type,
    const char *origin)
{
	config_setting_t *s;

	/* Not a group: config_build reports the file's mistake. */
	if (grp == NULL || !config_setting_is_group(grp))
		return NULL;
	config_setting_remove(grp, name);
	if ((s = config_setting_add(grp, name, type)) != NULL)
		config_setting_set_hook(s, (void *)(uintptr_t)origin);
	return s;
}

static void
ov_string(config_setting_t *grp, const char *name, const char *value,
    const char *origin)
{
	config_setting_t *s = ov_replace(grp, name, CONFIG_TYPE_STRING,
	    origin);

	if (s != NULL)
		config_setting_set_string(s, value);
}

/* grp's member name, a group, made if missing. */
static config_setting_t *
ov_group(config_setting_t *grp, const char *name)
{
	config_setting_t *s = config_setting_get_member(grp, name);

	if (s == NULL)
		s = config_setting_add(grp, name, CONFIG_TYPE_GROUP);
	return s;
}

/* The default relay's group: default_relay's, else the first, else a new
 * one named "default". NULL if relays is not a group (config_build says
 * so). */
static config_setting_t *
ov_relay(config_setting_t *root)
{
	config_setting_t *relays = ov_group(root, "relays"), *r = NULL;
	const char *name;

	if (relays == NULL || config_setting_type(relays) != CONFIG_TYPE_GROUP)
		return NULL;
	if (config_setting_lookup_string(root, "default_relay", &name))
		r = config_setting_get_member(relays, name);
	if (r == NULL && config_setting_length(relays) > 0)
		r = config_setting_get_elem(relays, 0);
	if (r == NULL)
		r = config_setting_add(relays, "default", CONFIG_TYPE_GROUP);
	return r;
}

/* Splits "host:port", "[v6]:port", "host" into host and port (NULL). */
static void
ov_hostport(const char *v, char **host, char **port)
{
	const char *colon;

	*port = NULL;
	if (v[0] == '[' && (colon = strchr(v, ']')) != NULL) {
		*host = xstrndup(v + 1, (size_t)(colon - v - 1));
		if (colon[1] == ':')
			*port = xstrdup(colon + 2);
		return;
	}
	colon = strrchr(v, ':');
	if (colon != NULL && strchr(v, ':') == colon) {
		*host = xstrndup(v, (size_t)(colon - v));
		*port = xstrdup(colon + 1);
	} else
		*host = xstrdup(v);
}

/* A comma-separated list; each element calls add(list, item, origin). */
static void
ov_list(config_setting_t *root, const char *name, int type,
    const char *value, const char *origin,
    void (*add)(config_setting_t *, const char *, const char *))
{
	config_setting_t *list = ov_replace(root, name, type, origin);
	char *copy, *item, *save = NULL;

	if (list == NULL)
		return;
	copy = xstrdup(value);
	for (item = strtok_r(copy, ",", &save); item != NULL;
	    item = strtok_r(NULL, ",", &save))
		add(list, item, origin);
	free(copy);
}

static void
ov_add_string(config_setting_t *list, const char *item, const char *origin)
{
	config_setting_t *e = config_setting_add(list, NULL,
	    CONFIG_TYPE_STRING);

	config_setting_set_string(e, item);
	config_setting_set_hook(e, (void *)(uintptr_t)origin);
}

static void
ov_add_listen(config_setting_t *list, const char *item, const char *origin)
{
	config_setting_t *g = config_setting_add(list, NULL,
	    CONFIG_TYPE_GROUP);
	char *host, *port;

	config_setting_set_hook(g, (void *)(uintptr_t)origin);
	if (item[0] == '/') {
		ov_string(g, "path", item, origin);
		return;
	}
	ov_hostport(item, &host, &port);
	ov_string(g, "address", host, origin);
	if (port != NULL)
		ov_string(g, "port", port, origin);
	free(host);
	free(port);
}

static void
ov_apply(config_setting_t *root, const struct config_override *o)
{
	static const char *const top[] = { "hostname", "mail_domain", "user",
	    "spool", "metrics_listen", NULL };
	static const char *const relay[][2] = { { "tls", "tls" },
	    { "relay_user", "user" }, { "ca_file", "ca_file" } };
	config_setting_t *r;
	char *host, *port;
	size_t i;

	for (i = 0; top[i] != NULL; i++)
		if (strcmp(o->key, top[i]) == 0) {
			ov_string(root, o->key, o->value, o->origin);
			return;
		}
	if (strcmp(o->key, "max_message_size") == 0)
		ov_string(ov_group(root, "limits"), o->key, o->value,
		    o->origin);
	else if (strcmp(o->key, "authinfo") == 0 ||
	    strcmp(o->key, "allow_networks") == 0)
		ov_list(root, o->key, CONFIG_TYPE_ARRAY, o->value, o->origin,
		    ov_add_string);
	else if (strcmp(o->key, "listen") == 0)
		ov_list(root, o->key, CONFIG_TYPE_LIST, o->value, o->origin,
		    ov_add_listen);
	else if ((r = ov_relay(root)) == NULL)
		return;
	else if (strcmp(o->key, "relay") == 0) {
		ov_hostport(o->value, &host, &port);
		ov_string(r, "host", host, o->origin);
		if (port != NULL)
			ov_string(r, "port", port, o->origin);
		free(host);
		free(port);
	} else
		for (i = 0; i < sizeof(relay) / sizeof(*relay); i++)
			if (strcmp(o->key, relay[i][0]) == 0)
				ov_string(r, relay[i][1], o->value, o->origin);
}

/* Which defaults apply besides the built-in ones. */
enum config_defaults {
	DEFAULTS_SYSTEM,  /* a system file: port 25, spool in LOCALSTATEDIR */
	DEFAULTS_NOFILE,  /* flags and variables only (a sidecar) */
	DEFAULTS_USER,    /* a user's own file (a workstation) */
};

/* A default that the file, if it has the setting, keeps. */
static void
ov_default(config_setting_t *root, const char *key, const char *value,
    const char *origin)
{
	struct config_override o = { key, value, origin };

	if (config_setting_get_member(root, key) == NULL)
		ov_apply(root, &o);
}

/* $XDG_STATE_HOME/smarthostd, else ~/.local/state/smarthostd, else NULL. */
static char *
user_spool(void)
{
	const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");

	if (xdg != NULL && xdg[0] == '/')
		return xasprintf("%s/smarthostd", xdg);
	if (home != NULL && home[0] == '/')
		return xasprintf("%s/.local/state/smarthostd", home);
	return NULL;
}

static void
config_apply_overrides(config_t *lc, const struct config_override *ov,
    size_t nov, enum config_defaults defaults)
{
	config_setting_t *root = config_root_setting(lc);
	char *spool;
	size_t i;

	switch (defaults) {
	case DEFAULTS_SYSTEM:
		break;
	case DEFAULTS_NOFILE:
		ov_default(root, "listen", "127.0.0.1:2525,[::1]:2525",
		    "the default listen without a file");
		break;
	case DEFAULTS_USER:
		/* What systemd/user/smarthostd.socket listens on. */
		ov_default(root, "listen", "127.0.0.1:2525",
		    "the default listen of a user's configuration");
		if ((spool = user_spool()) != NULL)
			ov_default(root, "spool", spool,
			    "the default spool of a user's configuration");
		free(spool);
		break;
	}
	for (i = 0; i < nov; i++)
		ov_apply(root, &ov[i]);
}

static struct config *
load(const char *path, const struct config_override *ov, size_t nov,
    enum config_defaults defaults, char *err, size_t errlen)
{
	struct cfgctx ctx = { path != NULL ? path : "(no file)", err,
	    errlen };
	config_t lc;
	FILE *fp;
	int ok = 1;

	config_init(&lc);
	if (path != NULL) {
		/* libconfig reports a missing file as a parse error without
		 * a reason; open it ourselves to say what is wrong. */
		if ((fp = fopen(path, "r")) == NULL) {
			snprintf(err, errlen, "%s: %s", path, strerror(errno));
			config_destroy(&lc);
			return NULL;
		}
		ok = config_read(&lc, fp) == CONFIG_TRUE;
		fclose(fp);
	}
	if (ok)
		config_apply_overrides(&lc, ov, nov, defaults);
	return config_finish(&ctx, &lc, ok, path);
}

struct config *
config_load_overrides(const char *path, const struct config_override *ov,
    size_t nov, char *err, size_t errlen)
{
	return load(path, ov, nov, path == NULL ? DEFAULTS_NOFILE :
	    DEFAULTS_SYSTEM, err, errlen);
}

/* The user's own configuration, if it exists; see config_load_default. */
static const char *
user_config(void)
{
	static char path[4096];
	const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
	int n;

	if (geteuid() == 0)
		return NULL;
	if (xdg != NULL && xdg[0] == '/')
		n = snprintf(path, sizeof(path), "%s/smarthostd/smarthostd.conf",
		    xdg);
	else if (home != NULL && home[0] == '/')
		n = snprintf(path, sizeof(path),
		    "%s/.config/smarthostd/smarthostd.conf", home);
	else
		return NULL;
	if (n < 0 || (size_t)n >= sizeof(path) || access(path, F_OK) == -1)
		return NULL;
	return path;
}

struct config *
config_load_default(const char *file, const char *default_path,
    const struct config_override *ov, size_t nov, const char **used,
    char *err, size_t errlen)
{
	struct config_override *all;
	struct config *cfg;
	const char *v, *user;
	size_t i, n = 0;

	all = xcalloc(nov + sizeof(config_options) /
	    sizeof(*config_options), sizeof(*all));
	for (i = 0; config_options[i].key != NULL; i++)
		if ((v = getenv(config_options[i].env)) != NULL) {
			all[n].key = config_options[i].key;
			all[n].value = v;
			all[n++].origin = config_options[i].env;
		}
	if (file == NULL && (file = getenv("SMARTHOSTD_CONFIG")) != NULL &&
	    file[0] == '\0')
		file = NULL;
	else if (file == NULL && n == 0 && nov == 0 &&
	    (file = user_config()) == NULL)
		file = default_path;
	for (i = 0; i < nov; i++)
		all[n++] = ov[i];
	/* The user's own file, found or named (a reload names it): the
	 * workstation's defaults. */
	user = user_config();
	cfg = load(file, all, n, file == NULL ? DEFAULTS_NOFILE :
	    user != NULL && strcmp(file, user) == 0 ? DEFAULTS_USER :
	    DEFAULTS_SYSTEM, err, errlen);
	free(all);
	*used = file;
	return cfg;
}

struct config *
config_load(const char *path, char *err, size_t errlen)
{
	return config_load_overrides(path, NULL, 0, err, errlen);
}

struct config *
config_parse_string(const char *text, const char *name, char *err,
    size_t errlen)
{
	struct cfgctx ctx = { name, err, errlen };
	config_t lc;

	config_init(&lc);
	return config_finish(&ctx, &lc, config_read_string(&lc, text) ==
	    CONFIG_TRUE, NULL);
}

void
config_free(struct config *cfg)
{
	size_t i;

	if (cfg == NULL)
		return;
	for (i = 0; i < cfg->nlisten; i++) {
		free(cfg->listen[i].address);
		free(cfg->listen[i].port);
		free(cfg->listen[i].path);
		free(cfg->listen[i].group);
	}
	for (i = 0; i < cfg->nrelays; i++) {
		struct relay_config *r = &cfg->relays[i];

		free(r->name);
		free(r->host);
		free(r->port);
		free(r->ca_file);
		free(r->helo);
		free(r->user);
		free(r->maildir);
		free(r->password_command);
		free(r->oauth_command);
		string_list_free(r->mechanisms, r->nmechanisms);
		string_list_free(r->backup, r->nbackup);
	}
	for (i = 0; i < cfg->nroutes; i++)
		route_clear(&cfg->routes[i]);
	free(cfg->routes);
	for (i = 0; i < cfg->nauth_first; i++)
		regfree(&cfg->auth_first_re[i]);
	free(cfg->auth_first_re);
	string_list_free(cfg->auth_first, cfg->nauth_first);
	string_list_free(cfg->authinfo, cfg->nauthinfo);
	free(cfg->state_dir);
	free(cfg->control_socket);
	free(cfg->control_admin_group);
	free(cfg->control_read_group);
	free(cfg->maildrop);
	free(cfg->maildrop_group);
	sender_policy_free(cfg->sender_policy);
	free(cfg->listen);
	free(cfg->allow);
	free(cfg->metrics_address);
	free(cfg->relays);
	free(cfg->file);
	free(cfg->hostname);
	free(cfg->mail_domain);
	localaddr_free(cfg->local);
	free(cfg->user);
	free(cfg->spool);
	free(cfg);
}

const struct relay_config *
config_relay(const struct config *cfg, const char *name)
{
	long i = relay_index(cfg, name);

	return i != -1 ? &cfg->relays[i] : NULL;
}

const struct relay_config *
config_default_relay(const struct config *cfg)
{
	return &cfg->relays[cfg->default_relay];
}

const struct relay_config *
config_route(const struct config *cfg, const char *sender)
{
	const struct route *rt;

	rt = route_match(cfg->routes, cfg->nroutes, sender);
	return rt != NULL ? &cfg->relays[rt->relay] :
	    config_default_relay(cfg);
}
