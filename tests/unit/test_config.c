/* Unit tests for config parsing and validation. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "config.h"

static char err[1024];

static struct config *
parse(const char *text)
{
	err[0] = '\0';
	return config_parse_string(text, "test.conf", err, sizeof(err));
}

#define RELAY "relays = { up = { host = \"192.0.2.1\"; }; };\n"

Test(config, defaults)
{
	struct config *c = parse(RELAY);
	const struct relay_config *r;

	cr_assert_not_null(c, "%s", err);
	cr_assert_eq(c->nlisten, 2);
	cr_assert_str_eq(c->listen[0].address, "127.0.0.1");
	cr_assert_str_eq(c->listen[1].address, "::1");
	cr_assert_str_eq(c->listen[0].port, "25");
	cr_assert_eq(c->max_message_size, 35u * 1024 * 1024);
	cr_assert_eq(c->retry_min, 300);
	cr_assert_eq(c->retry_max, 4000);
	cr_assert_eq(c->lifetime, 5 * 86400);
	cr_assert_eq(c->delay_warning, 4 * 3600);
	r = config_default_relay(c);
	cr_assert_str_eq(r->name, "up");
	cr_assert_eq(r->tls, TLS_MODE_STARTTLS);
	cr_assert_str_eq(r->port, "587");
	cr_assert_eq(r->tls_verify, 1);
	cr_assert_not_null(c->hostname);
	config_free(c);
}

Test(config, full)
{
	struct config *c = parse(
	    "hostname = \"relay.example\";\n"
	    "spool = \"/tmp/sp\";\n"
	    "spool_sync = \"syncfs\";\n"
	    "listen = ( { address = \"::1\"; port = 2525; },\n"
	    "  { path = \"/tmp/s.sock\"; mode = \"0660\"; } );\n"
	    "allow_networks = [ \"192.0.2.0/24\" ];\n"
	    "limits = { max_message_size = \"10M\"; idle_timeout = \"2m\";\n"
	    "  max_recipients = 5; };\n"
	    "queue = { retry_min = \"1m\"; retry_max = \"1h\"; lifetime = \"2d\";\n"
	    "  delay_warning = 0; };\n"
	    "default_relay = \"cap\";\n"
	    "relays = { up = { host = \"mx.example\"; tls = \"implicit\";\n"
	    "  verify = false; };\n"
	    "  cap = { type = \"maildir\"; path = \"/tmp/md\"; }; };\n");

	cr_assert_not_null(c, "%s", err);
	cr_assert_str_eq(c->hostname, "relay.example");
	cr_assert_eq(c->spool_sync, SPOOL_SYNC_SYNCFS);
	cr_assert_eq(c->listen[0].kind, LISTEN_TCP);
	cr_assert_str_eq(c->listen[0].port, "2525");
	cr_assert_eq(c->listen[1].kind, LISTEN_UNIX);
	cr_assert_eq(c->listen[1].mode, 0660);
	cr_assert_eq(c->nallow, 1);
	cr_assert_eq(c->max_message_size, 10u * 1024 * 1024);
	cr_assert_eq(c->idle_timeout, 120);
	cr_assert_eq(c->max_recipients, 5);
	cr_assert_eq(c->retry_min, 60);
	cr_assert_eq(c->retry_max, 3600);
	cr_assert_eq(c->lifetime, 2 * 86400);
	cr_assert_eq(c->delay_warning, 0, "0 disables the warnings");
	cr_assert_str_eq(config_default_relay(c)->name, "cap");
	cr_assert_eq(config_default_relay(c)->type, RELAY_TYPE_MAILDIR);
	cr_assert_str_eq(config_relay(c, "up")->port, "465");
	cr_assert_eq(config_relay(c, "up")->tls_verify, 0);
	cr_assert_null(config_relay(c, "nope"));
	config_free(c);
}

struct bad {
	const char *text;
	const char *expect; /* substring of the error */
};

/* Each of the n texts is refused with an error containing its expect. */
static void
expect_errors(const struct bad *bad, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		struct config *c = parse(bad[i].text);

		cr_assert_null(c, "case %zu parsed", i);
		cr_assert(strstr(err, bad[i].expect) != NULL,
		    "case %zu: \"%s\" lacks \"%s\"", i, err, bad[i].expect);
	}
}

Test(config, errors_name_file_and_line)
{
	static const struct bad bad[] = {
		{ RELAY "hostnam = \"x\";\n", "test.conf:2: unknown setting" },
		{ RELAY "limits = {\n max_message_size = \"10Q\"; };\n",
		    "test.conf:3: max_message_size: unknown unit" },
		/* A count takes no unit (it crashed the parser once). */
		{ RELAY "limits = {\n max_sessions = \"5x\"; };\n",
		    "test.conf:3: max_sessions: unknown unit" },
		{ RELAY "queue = { retry_min = 100;\n retry_max = 10; };\n",
		    "test.conf:3: retry_max must not be smaller" },
		{ "relays = { up = { port = 25; }; };\n",
		    "test.conf:1: relay up: host is required" },
		{ "relays = { up = { host = \"a\"; tls = \"maybe\"; }; };\n",
		    "tls must be" },
		{ RELAY "listen = ( { address = \"localhost\"; } );\n",
		    "test.conf:2: listen: address \"localhost\" is not" },
		{ RELAY "allow_networks = [ \"10.0.0.0/33\" ];\n",
		    "test.conf:2: allow_networks" },
		{ RELAY "default_relay = \"other\";\n",
		    "test.conf:2: default_relay: no relay named" },
		{ "hostname = \"x\";\n", "no relay configured" },
		{ RELAY "spool = = \"a\";\n", "test.conf:2: syntax error" },
		{ RELAY "listen = ( { port = \"99999\"; } );\n",
		    "is not a valid port" },
	};

	expect_errors(bad, sizeof(bad) / sizeof(*bad));
}

/* A setting of a fixed set of words names the setting, its line and
 * every word it takes. */
Test(config, choices_list_what_they_take)
{
	static const struct bad bad[] = {
		{ "relays = { up = {\n type = \"mx\"; }; };\n",
		    "test.conf:2: relay up: type must be \"smtp\" or "
		    "\"maildir\"" },
		{ "relays = { up = { host = \"a\";\n tls = \"maybe\"; }; };\n",
		    "test.conf:2: relay up: tls must be \"starttls\", "
		    "\"implicit\" or \"none\"" },
		{ "relays = { up = { host = \"a\";\n auth = \"yes\"; }; };\n",
		    "test.conf:2: relay up: auth must be \"auto\", \"always\" "
		    "or \"never\"" },
		{ RELAY "spool_sync = \"sometimes\";\n",
		    "test.conf:2: spool_sync must be \"fsync\" or \"syncfs\"" },
		{ RELAY "sender_policy = {\n mode = \"all\"; };\n",
		    "test.conf:3: sender_policy: mode must be \"any\", \"own\" "
		    "or \"map\"" },
	};

	expect_errors(bad, sizeof(bad) / sizeof(*bad));
}

Test(config, load_reports_missing_file)
{
	cr_assert_null(config_load("/nonexistent/smarthostd.conf", err,
	    sizeof(err)));
	cr_assert(strstr(err, "/nonexistent/smarthostd.conf: No such file")
	    != NULL, "%s", err);
}

Test(config, load_from_file_names_it)
{
	char path[] = "/tmp/test_config_XXXXXX";
	int fd = mkstemp(path);
	const char *text = RELAY "\n\nbogus = 1;\n";

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	cr_assert_null(config_load(path, err, sizeof(err)));
	unlink(path);
	cr_assert(strncmp(err, path, strlen(path)) == 0, "%s", err);
	cr_assert(strstr(err, ":4: unknown setting \"bogus\"") != NULL, "%s",
	    err);
}

static struct sockaddr_storage
addr(const char *s)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, s, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else {
		cr_assert_eq(inet_pton(AF_INET6, s,
		    &((struct sockaddr_in6 *)&ss)->sin6_addr), 1);
		ss.ss_family = AF_INET6;
	}
	return ss;
}

Test(config, peer_allowed)
{
	struct config *c = parse(RELAY
	    "allow_networks = [ \"192.0.2.0/25\", \"2001:db8::/32\" ];\n");
	struct sockaddr_storage a;
	struct sockaddr_un un = { .sun_family = AF_UNIX };

	cr_assert_not_null(c, "%s", err);
	a = addr("127.0.0.1");
	cr_assert(config_peer_allowed(c, (struct sockaddr *)&a));
	a = addr("::1");
	cr_assert(config_peer_allowed(c, (struct sockaddr *)&a));
	a = addr("192.0.2.127");
	cr_assert(config_peer_allowed(c, (struct sockaddr *)&a));
	a = addr("192.0.2.128");
	cr_assert_not(config_peer_allowed(c, (struct sockaddr *)&a));
	a = addr("::ffff:192.0.2.1");
	cr_assert(config_peer_allowed(c, (struct sockaddr *)&a));
	a = addr("2001:db8:1::5");
	cr_assert(config_peer_allowed(c, (struct sockaddr *)&a));
	a = addr("2001:db9::5");
	cr_assert_not(config_peer_allowed(c, (struct sockaddr *)&a));
	cr_assert(config_peer_allowed(c, (struct sockaddr *)&un));
	config_free(c);
}

Test(config, metrics_listen)
{
	static const struct {
		const char *setting, *address;
		unsigned port;
	} ok[] = {
		{ "9125", "127.0.0.1", 9125 },
		{ "\"9125\"", "127.0.0.1", 9125 },
		{ "\"127.0.0.2:0\"", "127.0.0.2", 0 },
		{ "\"[::1]:65535\"", "::1", 65535 },
	};
	static const struct {
		const char *setting, *error;
	} bad[] = {
		{ "\"10.0.0.1:9125\"", "test.conf:2: metrics_listen: 10.0.0.1 "
		    "is not loopback: set allow_networks" },
		{ "\"[::]:9125\"", "test.conf:2: metrics_listen: :: is not "
		    "loopback" },
		{ "\"65536\"", "test.conf:2: metrics_listen: \"65536\": the "
		    "port must be a number from 0 to 65535" },
		{ "\"127.0.0.1:\"", "the port must be" },
		{ "\"127.0.0.1:x\"", "the port must be" },
		{ "\"::1\"", "is not a numeric IPv4 or IPv6 address" },
		{ "\"host.example:1\"", "is not a numeric IPv4 or IPv6" },
		{ "\"10.0.0.0/8:1\"", "is not a numeric IPv4 or IPv6" },
		{ "1.5", "expected a port or \"address:port\"" },
	};
	char text[512];
	struct config *c;
	size_t i;

	c = parse(RELAY);
	cr_assert_not_null(c, "%s", err);
	cr_assert_null(c->metrics_address);
	config_free(c);
	for (i = 0; i < sizeof(ok) / sizeof(*ok); i++) {
		snprintf(text, sizeof(text), RELAY "metrics_listen = %s;\n",
		    ok[i].setting);
		c = parse(text);
		cr_assert_not_null(c, "%s: %s", ok[i].setting, err);
		cr_assert_str_eq(c->metrics_address, ok[i].address);
		cr_assert_eq(c->metrics_port, ok[i].port);
		config_free(c);
	}
	for (i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		snprintf(text, sizeof(text), RELAY "metrics_listen = %s;\n",
		    bad[i].setting);
		cr_assert_null(parse(text), "%s accepted", bad[i].setting);
		cr_assert(strstr(err, bad[i].error) != NULL, "%s: %s",
		    bad[i].setting, err);
	}
	/* With allow_networks, any address. */
	c = parse(RELAY "allow_networks = [ \"192.0.2.0/24\" ];\n"
	    "metrics_listen = \"0.0.0.0:9125\";\n");
	cr_assert_not_null(c, "%s", err);
	cr_assert_str_eq(c->metrics_address, "0.0.0.0");
	config_free(c);
}

Test(config, authentication_settings)
{
	struct config *c = parse(
	    "auth_first = [ \"^smtp\\\\.gmail\\\\.com$\", \"example\\\\.net$\" ];\n"
	    "authinfo = [ \"/etc/a\", \"~/b\" ];\n"
	    "relays = { up = { host = \"mx.example\"; auth = \"always\";\n"
	    "  mechanisms = [ \"plain\", \"cram-md5\" ];\n"
	    "  allow_plaintext_auth = true; user = \"me\"; }; };\n");
	const struct relay_config *r;

	cr_assert_not_null(c, "%s", err);
	cr_assert(config_auth_first(c, "SMTP.Gmail.com"));
	cr_assert(config_auth_first(c, "mail.example.net"));
	cr_assert_not(config_auth_first(c, "smtp.gmail.com.evil"));
	cr_assert_not(config_auth_first(c, "example.org"));
	cr_assert_eq(c->nauthinfo, 2);
	cr_assert_str_eq(c->authinfo[0], "/etc/a");
	cr_assert_neq(c->authinfo[1][0], '~');
	cr_assert(strstr(c->authinfo[1], "/b") != NULL);
	r = config_default_relay(c);
	cr_assert_eq(r->auth, AUTH_POLICY_ALWAYS);
	cr_assert_eq(r->nmechanisms, 2);
	cr_assert_str_eq(r->mechanisms[0], "PLAIN");
	cr_assert_str_eq(r->mechanisms[1], "CRAM-MD5");
	cr_assert_eq(r->allow_plaintext_auth, 1);
	cr_assert_str_eq(r->user, "me");
	config_free(c);

	c = parse(RELAY);
	cr_assert_not_null(c, "%s", err);
	cr_assert_eq(c->nauthinfo, 3);
	cr_assert(strstr(c->authinfo[0], "/.authinfo") != NULL);
	cr_assert(strstr(c->authinfo[2], "/.netrc") != NULL);
	cr_assert_eq(config_default_relay(c)->auth, AUTH_POLICY_AUTO);
	cr_assert_eq(config_default_relay(c)->allow_plaintext_auth, 0);
	cr_assert_not(config_auth_first(c, "anything"));
	config_free(c);
}

Test(config, authentication_errors)
{
	cr_assert_null(parse(RELAY "auth_first = [ \"(unclosed\" ];\n"));
	cr_assert(strstr(err, "test.conf:2: auth_first: \"(unclosed\"") !=
	    NULL, "%s", err);
	cr_assert_null(parse("relays = { up = { host = \"a\";\n"
	    "auth = \"sometimes\"; }; };\n"));
	cr_assert(strstr(err, "test.conf:2: relay up: auth must be") != NULL,
	    "%s", err);
	cr_assert_null(parse("relays = { up = { host = \"a\";\n"
	    "mechanisms = [ \"PL AIN\" ]; }; };\n"));
	cr_assert(strstr(err, "not a SASL mechanism") != NULL, "%s", err);
}

Test(config, control_socket)
{
	struct config *c = parse("spool = \"/tmp/sp\";\n" RELAY);
	char text[512];

	cr_assert_not_null(c, "%s", err);
	cr_assert_str_eq(c->control_socket, "/tmp/sp/control.sock");
	config_free(c);

	c = parse("control_socket = \"/run/smarthostd/ctl\";\n" RELAY);
	cr_assert_not_null(c, "%s", err);
	cr_assert_str_eq(c->control_socket, "/run/smarthostd/ctl");
	config_free(c);

	/* A path that does not fit in sockaddr_un is refused at load, not
	 * when the daemon is half started. */
	snprintf(text, sizeof(text), "control_socket = \"/%0200d\";\n" RELAY,
	    0);
	cr_assert_null(parse(text));
	cr_assert(strstr(err, "test.conf:1: control_socket:") != NULL, "%s",
	    err);
	cr_assert_null(parse("control_socket = 5;\n" RELAY));
	cr_assert(strstr(err, "control_socket: expected a string") != NULL,
	    "%s", err);
}

Test(config, unknown_user_is_named)
{
	cr_assert_null(parse(RELAY "user = \"no-such-user-xyz\";\n"));
	cr_assert(strstr(err, "test.conf:2: user \"no-such-user-xyz\" does "
	    "not exist") != NULL, "%s", err);
}

/*
 * The example configuration's blocks marked "(defaults shown)" must show
 * the defaults: uncommented, they change nothing.
 */
Test(config, example_defaults_are_the_defaults)
{
	const char *top = getenv("TOP_SRCDIR");
	char path[4096], line[512], *text;
	size_t len = 0, cap = 65536;
	struct config *def, *ex;
	int in_block = 0, shown = 0, blocks = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/etc/smarthostd.conf",
	    top != NULL ? top : "..");
	f = fopen(path, "r");
	cr_assert_not_null(f, "%s", path);
	text = calloc(1, cap);
	cr_assert_not_null(text);
	len += (size_t)snprintf(text, cap, "hostname = \"h\";\n"
	    "relays = { r = { host = \"127.0.0.1\"; }; };\n");
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strstr(line, "(defaults shown)") != NULL)
			shown = 1;
		else if (shown && line[0] == '#' && line[1] != ' ') {
			in_block = 1;
			shown = 0;
			blocks++;
		}
		if (in_block) {
			cr_assert_lt(len + strlen(line), cap);
			len += (size_t)snprintf(text + len, cap - len, "%s",
			    line + 1);
			if (strncmp(line, "#};", 3) == 0)
				in_block = 0;
		}
	}
	fclose(f);
	cr_assert_geq(blocks, 2, "no \"(defaults shown)\" blocks in %s", path);
	ex = config_parse_string(text, "example", err, sizeof(err));
	cr_assert_not_null(ex, "%s\n%s", err, text);
	def = config_parse_string("hostname = \"h\";\n"
	    "relays = { r = { host = \"127.0.0.1\"; }; };\n", "default", err,
	    sizeof(err));
	cr_assert_not_null(def, "%s", err);
	cr_assert_eq(ex->max_line, def->max_line);
	cr_assert_eq(ex->max_message_size, def->max_message_size);
	cr_assert_eq(ex->max_recipients, def->max_recipients);
	cr_assert_eq(ex->max_sessions, def->max_sessions);
	cr_assert_eq(ex->max_errors, def->max_errors);
	cr_assert_eq(ex->idle_timeout, def->idle_timeout);
	cr_assert_eq(ex->session_timeout, def->session_timeout);
	cr_assert_eq(ex->max_sessions_per_client,
	    def->max_sessions_per_client);
	cr_assert_eq(ex->retry_min, def->retry_min);
	cr_assert_eq(ex->retry_max, def->retry_max);
	cr_assert_eq(ex->lifetime, def->lifetime);
	cr_assert_eq(ex->delay_warning, def->delay_warning);
	cr_assert_eq(ex->delivery_workers, def->delivery_workers);
	config_free(ex);
	config_free(def);
	free(text);
}

#define TWO_RELAYS \
	"relays = {\n" \
	"  work = { host = \"192.0.2.1\"; user = \"me@work.example\"; };\n" \
	"  home = { host = \"192.0.2.2\"; backup = [ \"spare\", \"work\" ];\n" \
	"    failover_after = \"2m\"; };\n" \
	"  spare = { host = \"192.0.2.3\"; };\n" \
	"};\n"

Test(config, routes_pick_relays_first_match_wins)
{
	struct config *c = parse(TWO_RELAYS
	    "default_relay = \"home\";\n"
	    "routes = (\n"
	    "  { sender = \"Boss@Work.example\"; relay = \"spare\"; },\n"
	    "  { domain = \"work.example\"; relay = \"work\"; },\n"
	    "  { domain = \"@lists.example\"; relay = \"spare\"; },\n"
	    "  { regexp = \"^list-.*@\"; relay = \"spare\"; },\n"
	    "  { regexp = \"^$\"; relay = \"work\"; }\n"
	    ");\n");

	cr_assert_not_null(c, "%s", err);
	cr_assert_eq(c->nroutes, 5);
	cr_assert_str_eq(config_route(c, "boss@work.example")->name, "spare");
	cr_assert_str_eq(config_route(c, "me@work.example")->name, "work");
	cr_assert_str_eq(config_route(c, "me@WORK.EXAMPLE")->name, "work");
	cr_assert_str_eq(config_route(c, "a@lists.example")->name, "spare");
	cr_assert_str_eq(config_route(c, "LIST-x@home.example")->name,
	    "spare");
	cr_assert_str_eq(config_route(c, "me@home.example")->name, "home");
	/* a subdomain is another domain */
	cr_assert_str_eq(config_route(c, "me@sub.work.example")->name,
	    "home");
	/* the null sender: only the "^$" rule */
	cr_assert_str_eq(config_route(c, "")->name, "work");
	config_free(c);
}

Test(config, no_routes_means_default_relay)
{
	struct config *c = parse(TWO_RELAYS);

	cr_assert_not_null(c, "%s", err);
	cr_assert_eq(c->nroutes, 0);
	cr_assert_str_eq(config_route(c, "me@work.example")->name, "work");
	cr_assert_str_eq(config_route(c, "")->name, "work");
	config_free(c);
}

Test(config, backup_and_failover_after)
{
	struct config *c = parse(TWO_RELAYS);
	const struct relay_config *r;

	cr_assert_not_null(c, "%s", err);
	r = config_relay(c, "home");
	cr_assert_eq(r->nbackup, 2);
	cr_assert_str_eq(r->backup[0], "spare");
	cr_assert_str_eq(r->backup[1], "work");
	cr_assert_eq(r->failover_after, 120);
	r = config_relay(c, "work");
	cr_assert_eq(r->nbackup, 0);
	cr_assert_eq(r->failover_after, 600);
	config_free(c);
	c = parse("relays = { a = { host = \"x\"; backup = [ \"b\" ];\n"
	    "failover_after = 0; }; b = { host = \"y\"; }; };\n");
	cr_assert_not_null(c, "%s", err);
	cr_assert_eq(config_relay(c, "a")->failover_after, 0);
	config_free(c);
}

/* The unsigned setting at offset field of relay "up" in a config with
 * that line, or -1 when the config is refused (err says why). */
static long
up_uint(const char *line, size_t field)
{
	char text[256];
	struct config *c;
	long v;

	snprintf(text, sizeof(text), "relays = { up = { host = \"x\";\n%s "
	    "}; };\n", line);
	if ((c = parse(text)) == NULL)
		return -1;
	v = (long)*(const unsigned *)(const void *)((const char *)
	    config_relay(c, "up") + field);
	config_free(c);
	return v;
}

static long
idle_of(const char *line)
{
	return up_uint(line, offsetof(struct relay_config, timeout_idle));
}

Test(config, timeout_idle)
{
	cr_assert_eq(idle_of(""), 2, "%s", err);
	cr_assert_eq(idle_of("timeout_idle = 0;"), 0, "%s", err);
	cr_assert_eq(idle_of("timeout_idle = \"5m\";"), 300, "%s", err);
	cr_assert_eq(idle_of("timeout_idle = 301;"), -1);
	cr_assert_not_null(strstr(err, "test.conf:2: "), "%s", err);
	cr_assert_not_null(strstr(err, "timeout_idle"), "%s", err);
}

static long
line_limit_of(const char *line)
{
	return up_uint(line, offsetof(struct relay_config,
	    line_length_limit));
}

/* 998 by default, 0 for none, 78 up; below 78 is refused. */
Test(config, line_length_limit)
{
	cr_assert_eq(line_limit_of(""), 998, "%s", err);
	cr_assert_eq(line_limit_of("line_length_limit = 0;"), 0, "%s", err);
	cr_assert_eq(line_limit_of("line_length_limit = 78;"), 78, "%s", err);
	cr_assert_eq(line_limit_of("line_length_limit = 5000;"), 5000, "%s",
	    err);
	cr_assert_eq(line_limit_of("line_length_limit = 77;"), -1);
	cr_assert_not_null(strstr(err, "test.conf:2: "), "%s", err);
	cr_assert_not_null(strstr(err, "line_length_limit"), "%s", err);
	cr_assert_eq(line_limit_of("line_length_limit = -1;"), -1);
}

Test(config, route_and_backup_errors_name_file_and_line)
{
	static const struct bad bad[] = {
		{ RELAY "routes = (\n { sender = \"a@b\"; relay = \"nope\"; } );\n",
		    "test.conf:3: routes: no relay named \"nope\"" },
		{ RELAY "routes = (\n { regexp = \"(unclosed\"; relay = \"up\"; } );\n",
		    "test.conf:3: routes: regexp \"(unclosed\": " },
		{ RELAY "routes = (\n { sender = \"a@b\"; domain = \"b\";\n"
		    " relay = \"up\"; } );\n",
		    "test.conf:3: routes: give one of sender, domain or regexp "
		    "per rule, not sender and domain" },
		{ RELAY "routes = (\n { relay = \"up\"; } );\n",
		    "test.conf:3: routes: a rule needs sender, domain or regexp" },
		{ RELAY "routes = (\n { domain = \"b.example\"; } );\n",
		    "test.conf:3: routes: a rule needs relay" },
		{ RELAY "routes = (\n { domain = \"b\"; relay = \"up\";\n"
		    " via = \"x\"; } );\n",
		    "test.conf:4: unknown setting \"via\" in routes" },
		{ RELAY "routes = (\n { sender = \"nobody\"; relay = \"up\"; } );\n",
		    "test.conf:3: routes: sender \"nobody\" is not an address" },
		{ RELAY "routes = (\n { domain = \"a@b\"; relay = \"up\"; } );\n",
		    "test.conf:3: routes: domain \"a@b\" is not a domain" },
		{ RELAY "routes = (\n { domain = \"\"; relay = \"up\"; } );\n",
		    "test.conf:3: routes: domain must not be empty" },
		{ RELAY "routes = { a = 1; };\n",
		    "test.conf:2: routes: expected a list" },
		{ RELAY "routes = ( \"x\" );\n",
		    "test.conf:2: routes: each rule must be a group" },
		{ "relays = { up = { host = \"a\";\n backup = [ \"gone\" ]; }; };\n",
		    "test.conf:2: relay up: backup: no relay named \"gone\"" },
		{ "relays = { up = { host = \"a\";\n backup = [ \"up\" ]; }; };\n",
		    "test.conf:2: relay up: backup: a relay cannot be its own" },
		{ "relays = { up = { host = \"a\";\n backup = [ \"b\", \"b\" ];"
		    " };\n b = { host = \"c\"; }; };\n",
		    "test.conf:2: relay up: backup: \"b\" is listed twice" },
		{ "relays = { up = { host = \"a\";\n failover_after = \"5y\"; }; };\n",
		    "test.conf:2: failover_after: unknown unit" },
		{ "relays = { up = { host = \"a\";\n backup = \"b\"; }; };\n",
		    "test.conf:2: backup: expected a list" },
	};

	expect_errors(bad, sizeof(bad) / sizeof(*bad));
}

/* A config with one relay and the given top-level line. */
static struct config *
parse_top(const char *line)
{
	char text[256];

	snprintf(text, sizeof(text), "hostname = \"h\";\n%s\n"
	    "relays = { r = { host = \"127.0.0.1\"; }; };\n", line);
	return config_parse_string(text, "test.conf", err, sizeof(err));
}

Test(config, spool_log_max)
{
	static const struct {
		const char *line;
		size_t want;
	} ok[] = {
		{ "", 65536 },
		{ "spool_log_max = \"1m\";", 1024 * 1024 },
		{ "spool_log_max = 0;", 0 },
	};
	struct config *c;
	size_t i;

	for (i = 0; i < sizeof(ok) / sizeof(*ok); i++) {
		c = parse_top(ok[i].line);
		cr_assert_not_null(c, "%s", err);
		cr_assert_eq(c->spool_log_max, ok[i].want, "%s", ok[i].line);
		config_free(c);
	}
	cr_assert_null(parse_top("spool_log_max = \"17m\";"));
	cr_assert(strstr(err, "test.conf:2: spool_log_max") != NULL, "%s",
	    err);
}

Test(config, spool_log_file_size)
{
	struct config *c;

	cr_assert_not_null(c = parse_top(""), "%s", err);
	cr_assert_eq(c->spool_log_file_size, 8 * 1024 * 1024);
	config_free(c);
	cr_assert_not_null(c = parse_top("spool_log_file_size = \"8k\";"),
	    "%s", err);
	cr_assert_eq(c->spool_log_file_size, 8 * 1024);
	config_free(c);
	cr_assert_null(parse_top("spool_log_file_size = \"1k\";"));
	cr_assert(strstr(err, "test.conf:2: spool_log_file_size") != NULL,
	    "%s", err);
}

Test(config, session_limits)
{
	struct config *c;

	c = config_parse_string("hostname = \"h\";\n"
	    "relays = { r = { host = \"127.0.0.1\"; }; };\n", "t", err,
	    sizeof(err));
	cr_assert_not_null(c, "%s", err);
	cr_assert_eq(c->session_timeout, 600);
	cr_assert_eq(c->max_sessions_per_client, 50);
	config_free(c);
	c = config_parse_string("hostname = \"h\";\n"
	    "limits = { max_sessions = 3; session_timeout = \"1h\"; };\n"
	    "relays = { r = { host = \"127.0.0.1\"; }; };\n", "t", err,
	    sizeof(err));
	cr_assert_not_null(c, "%s", err);
	cr_assert_eq(c->session_timeout, 3600);
	cr_assert_eq(c->max_sessions_per_client, 1);
	config_free(c);
	c = config_parse_string("hostname = \"h\";\n"
	    "limits = { session_timeout = 0; max_sessions_per_client = 7; "
	    "};\nrelays = { r = { host = \"127.0.0.1\"; }; };\n", "t", err,
	    sizeof(err));
	cr_assert_not_null(c, "%s", err);
	cr_assert_eq(c->session_timeout, 0);
	cr_assert_eq(c->max_sessions_per_client, 7);
	config_free(c);
}

Test(config, overrides_without_a_file)
{
	static const struct config_override ov[] = {
		{ "relay", "[2001:db8::1]:587", "--relay" },
		{ "tls", "implicit", "SMARTHOSTD_TLS" },
		{ "allow_networks", "10.0.0.0/8,192.0.2.0/24", "--allow-network" },
		{ "max_message_size", "10M", "--max-message-size" },
		{ "metrics_listen", "9125", "SMARTHOSTD_METRICS_LISTEN" },
	};
	struct config *cfg = config_load_overrides(NULL, ov, 5, err,
	    sizeof(err));

	cr_assert_not_null(cfg, "%s", err);
	cr_assert_null(cfg->file);
	cr_assert_eq(cfg->nrelays, 1);
	cr_assert_str_eq(cfg->relays[0].name, "default");
	cr_assert_str_eq(cfg->relays[0].host, "2001:db8::1");
	cr_assert_str_eq(cfg->relays[0].port, "587");
	cr_assert_eq(cfg->relays[0].tls, TLS_MODE_IMPLICIT);
	cr_assert_eq(cfg->nallow, 2);
	cr_assert_eq(cfg->max_message_size, 10 * 1024 * 1024);
	cr_assert_str_eq(cfg->metrics_address, "127.0.0.1");
	cr_assert_eq(cfg->metrics_port, 9125);
	/* No privileged port without a file. */
	cr_assert_eq(cfg->nlisten, 2);
	cr_assert_str_eq(cfg->listen[0].address, "127.0.0.1");
	cr_assert_str_eq(cfg->listen[0].port, "2525");
	cr_assert_str_eq(cfg->listen[1].address, "::1");
	cr_assert_str_eq(cfg->listen[1].port, "2525");
	config_free(cfg);
}

Test(config, override_replaces_the_file_and_names_its_origin)
{
	static const char text[] =
	    "default_relay = \"b\";\n"
	    "relays = { a = { host = \"a.test\"; };\n"
	    "  b = { host = \"b.test\"; port = \"25\"; }; };\n";
	struct config_override ov[] = {
		{ "relay", "c.test", "--relay" },
		{ "listen", "/run/x.sock,127.0.0.1:2526", "SMARTHOSTD_LISTEN" },
	};
	char path[] = "/tmp/test_config_XXXXXX";
	struct config *cfg;
	int fd = mkstemp(path);

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, text, sizeof(text) - 1),
	    (ssize_t)(sizeof(text) - 1));
	close(fd);
	cfg = config_load_overrides(path, ov, 2, err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	/* The default relay's host changes, its port from the file stays. */
	cr_assert_str_eq(config_default_relay(cfg)->host, "c.test");
	cr_assert_str_eq(config_default_relay(cfg)->port, "25");
	cr_assert_str_eq(config_relay(cfg, "a")->host, "a.test");
	cr_assert_eq(cfg->nlisten, 2);
	cr_assert_eq(cfg->listen[0].kind, LISTEN_UNIX);
	cr_assert_str_eq(cfg->listen[1].port, "2526");
	config_free(cfg);

	ov[0].key = "tls";
	ov[0].value = "sometimes";
	ov[0].origin = "--tls";
	cr_assert_null(config_load_overrides(path, ov, 1, err, sizeof(err)));
	cr_assert(strncmp(err, "--tls: ", 7) == 0, "%s", err);
	unlink(path);
}
