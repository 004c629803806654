/*
 * import: msmtp, ssmtp and nullmailer configurations translated into
 * smarthostd.conf text, authinfo lines with the passwords, and a note for
 * every setting that is not mapped. Each translation is also given to the
 * real config loader with the features it reports (import_features), so
 * what the importer writes is what this build accepts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "config.h"
#include "import.h"

static const struct import_opts all = { "/etc/smarthostd/authinfo",
	"/etc/smarthostd/sender-map", "/etc/smarthostd/aliases", "/home/u",
	"u", IMPORT_F_ALL };

/* ---- helpers ---- */

static struct import_result *
msmtp_opts(const char *text, const struct import_opts *o)
{
	struct import_file f = { "/home/u/.msmtprc", text, strlen(text) };

	return import_msmtp(&f, o);
}

static struct import_result *
msmtp(const char *text)
{
	return msmtp_opts(text, &all);
}

static struct import_result *
ssmtp(const char *conf, const char *revaliases)
{
	struct import_file c = { "/etc/ssmtp/ssmtp.conf", conf, strlen(conf) };
	struct import_file r = { "/etc/ssmtp/revaliases", revaliases,
		revaliases != NULL ? strlen(revaliases) : 0 };

	return import_ssmtp(&c, &r, &all);
}

static int
has_note(const struct import_result *r, const char *what)
{
	size_t i;

	for (i = 0; i < r->nnotes; i++)
		if (strstr(r->notes[i], what) != NULL)
			return 1;
	return 0;
}

static const char *
notes_text(const struct import_result *r)
{
	static char buf[8192];
	size_t i, n = 0;

	buf[0] = '\0';
	for (i = 0; i < r->nnotes && n < sizeof(buf); i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\n",
		    r->notes[i]);
	return buf;
}

/* No password, nor part of one, in the config or the notes. */
static void
expect_no_secret(const struct import_result *r, const char *secret)
{
	size_t i;

	cr_expect(strstr(r->config, secret) == NULL, "secret in the config");
	for (i = 0; i < r->nnotes; i++)
		cr_expect(strstr(r->notes[i], secret) == NULL,
		    "secret in a note");
}

/*
 * Translates again with the features this build's loader has, and checks
 * that the loader accepts the config (paths it names need not exist).
 */
static void
expect_loadable_msmtp(const char *text)
{
	struct import_opts o = all;
	struct import_result *r;
	struct config *cfg;
	char err[1024];

	o.features = import_features();
	o.authinfo_path = NULL;
	o.sender_map_path = NULL;
	o.aliases_path = NULL;
	r = msmtp_opts(text, &o);
	cfg = config_parse_string(r->config, "imported", err, sizeof(err));
	cr_expect_not_null(cfg, "the loader refuses it: %s\n%s", err,
	    r->config);
	config_free(cfg);
	import_result_free(r);
}

/* ---- msmtp ---- */

static const char msmtprc[] =
    "# a user's ~/.msmtprc\n"
    "defaults\n"
    "auth           on\n"
    "tls            on\n"
    "tls_trust_file /etc/ssl/certs/ca-certificates.crt\n"
    "logfile        ~/.msmtp.log\n"
    "\n"
    "account        gmail\n"
    "host           smtp.gmail.com\n"
    "port           587\n"
    "from           me@gmail.com\n"
    "user           me@gmail.com\n"
    "password       \"app pass \\\"word\\\"\"\n"
    "\n"
    "account        work : gmail\n"
    "host           mail.work.example\n"
    "from           *@work.example\n"
    "user           me\n"
    "passwordeval   \"gpg --no-tty -q -d ~/.work-pw.gpg\"\n"
    "tls_fingerprint 00:11:22\n"
    "\n"
    "account        lists\n"
    "host           lists.example.net\n"
    "tls            off\n"
    "from           list-*@example.net\n"
    "\n"
    "account default : gmail\n";

Test(msmtp, accounts_become_relays_and_default_follows_the_alias)
{
	struct import_result *r = msmtp(msmtprc);

	cr_assert_eq(r->error, 0, "%s", notes_text(r));
	cr_expect(strstr(r->config, "default_relay = \"gmail\";") != NULL,
	    "%s", r->config);
	cr_expect(strstr(r->config, "  gmail = {") != NULL);
	cr_expect(strstr(r->config, "  work = {") != NULL);
	cr_expect(strstr(r->config, "  default = {") == NULL,
	    "account default : gmail is an alias, not a relay");
	/* inherited from defaults and from gmail, overridden by work */
	cr_expect(strstr(r->config, "host = \"mail.work.example\";\n"
	    "    port = \"587\";\n    tls = \"starttls\";\n    ca_file = "
	    "\"/etc/ssl/certs/ca-certificates.crt\";\n    user = \"me\";\n"
	    "    auth = \"always\";\n    password_command = \"gpg --no-tty -q "
	    "-d ~/.work-pw.gpg\";") != NULL, "%s", r->config);
	/* tls off and no port: msmtp's port 25, not our 587 */
	cr_expect(strstr(r->config, "host = \"lists.example.net\";\n    "
	    "port = \"25\";\n    tls = \"none\";") != NULL, "%s", r->config);
	import_result_free(r);
}

Test(msmtp, password_goes_to_authinfo_only)
{
	struct import_result *r = msmtp(msmtprc);

	cr_assert_not_null(r->authinfo);
	cr_expect_str_eq(r->authinfo, "machine smtp.gmail.com port 587 login "
	    "me@gmail.com password 'app pass \"word\"'\n");
	expect_no_secret(r, "app pass");
	cr_expect(strstr(r->config, "authinfo = [ \"/etc/smarthostd/"
	    "authinfo\" ];") != NULL);
	import_result_free(r);
}

Test(msmtp, without_write_the_lines_are_shown_without_password)
{
	struct import_opts o = all;
	struct import_result *r;

	o.authinfo_path = NULL;
	r = msmtp_opts(msmtprc, &o);
	cr_expect(strstr(r->config, "authinfo =") == NULL);
	cr_expect(strstr(r->config, "#   machine smtp.gmail.com port 587 "
	    "login me@gmail.com password ...  (/home/u/.msmtprc:13)") != NULL,
	    "%s", r->config);
	expect_no_secret(r, "app pass");
	import_result_free(r);
}

Test(msmtp, from_becomes_routes)
{
	struct import_result *r = msmtp(msmtprc);

	cr_expect(strstr(r->config, "{ sender = \"me@gmail.com\"; relay = "
	    "\"gmail\"; }") != NULL, "%s", r->config);
	cr_expect(strstr(r->config, "{ domain = \"work.example\"; relay = "
	    "\"work\"; }") != NULL, "%s", r->config);
	cr_expect(strstr(r->config, "{ regexp = \"^list-.*@example\\\\.net$\"; "
	    "relay = \"lists\"; }") != NULL, "%s", r->config);
	import_result_free(r);
}

Test(msmtp, every_unmapped_line_is_noted)
{
	struct import_result *r = msmtp(msmtprc);

	cr_expect(has_note(r, "/home/u/.msmtprc:6: logfile: not mapped"),
	    "%s", notes_text(r));
	cr_expect(has_note(r, "/home/u/.msmtprc:20: tls_fingerprint: not "
	    "mapped"), "%s", notes_text(r));
	cr_expect(has_note(r, "passwordeval: mapped to password_command of "
	    "relay work; it now runs as the daemon's user"), "%s",
	    notes_text(r));
	/* in the config's header too */
	cr_expect(strstr(r->config, "#   /home/u/.msmtprc:6: logfile") !=
	    NULL);
	import_result_free(r);
}

Test(msmtp, default_account_from_gives_mail_domain)
{
	struct import_result *r = msmtp(msmtprc);

	cr_expect(strstr(r->config, "mail_domain = \"gmail.com\";") != NULL,
	    "%s", r->config);
	cr_expect_str_eq(r->sender_map, "u: me@gmail.com\n");
	cr_expect(strstr(r->config, "sender_rewrite = { map = \"/etc/"
	    "smarthostd/sender-map\"; };") != NULL, "%s", r->config);
	import_result_free(r);
	r = msmtp("account default\nhost h.example\nfrom %U@corp.example\n");
	cr_expect(strstr(r->config, "mail_domain = \"corp.example\";") !=
	    NULL);
	cr_expect(strstr(r->config, "sender_rewrite = { masquerade = true; "
	    "};") != NULL, "%s", r->config);
	cr_expect_null(r->sender_map);
	import_result_free(r);
}

Test(msmtp, missing_features_become_notes)
{
	struct import_opts o = all;
	struct import_result *r;

	o.features = 0;
	r = msmtp_opts(msmtprc, &o);
	cr_expect(strstr(r->config, "routes") == NULL ||
	    strstr(r->config, "routes = (") == NULL);
	cr_expect(strstr(r->config, "mail_domain =") == NULL);
	cr_expect(has_note(r, ":11: from (of the default account): not "
	    "mapped: this smarthostd has no mail_domain setting"), "%s",
	    notes_text(r));
	cr_expect(has_note(r, ":17: from (choosing the account by sender): "
	    "not mapped: this smarthostd has no routes setting"), "%s",
	    notes_text(r));
	import_result_free(r);
}

Test(msmtp, tls_and_auth_variants)
{
	struct import_result *r = msmtp(
	    "account a\nhost a.example\ntls on\ntls_starttls off\n"
	    "tls_certcheck off\nauth plain\nuser ua\n"
	    "account b\nhost b.example\nauth on\nuser ub\npassword pb\n"
	    "account c\nhost c.example\nauth gssapi\n"
	    "account d\nhost d.example\nauth off\n"
	    "account e\nhost e.example\ntls\nauth xoauth2\nuser ue\n"
	    "passwordeval print-token\n"
	    "account default : a\n");

	cr_expect(strstr(r->config, "host = \"a.example\";\n    port = "
	    "\"465\";\n    tls = \"implicit\";\n    verify = false;") != NULL,
	    "%s", r->config);
	cr_expect(strstr(r->config, "mechanisms = [ \"PLAIN\" ];") != NULL);
	cr_expect(has_note(r, ":5: tls_certcheck off: mapped to verify = "
	    "false"), "%s", notes_text(r));
	cr_expect(has_note(r, ":6: auth: no password or passwordeval for "
	    "account a"), "%s", notes_text(r));
	/* b: auth without TLS, as msmtp: only methods that hide the
	 * password */
	cr_expect(strstr(r->config, "mechanisms = [ \"SCRAM-SHA-256\", "
	    "\"SCRAM-SHA-1\", \"CRAM-MD5\" ];\n    allow_plaintext_auth = "
	    "true;") != NULL, "%s", r->config);
	cr_expect(has_note(r, ":10: auth without TLS: mapped to "
	    "allow_plaintext_auth = true for relay b"), "%s", notes_text(r));
	cr_expect(has_note(r, "auth gssapi: not mapped"), "%s", notes_text(r));
	cr_expect(strstr(r->config, "auth = \"never\";") != NULL);
	cr_expect(strstr(r->config, "mechanisms = [ \"XOAUTH2\" ];\n    "
	    "oauth_command = \"print-token\";") != NULL, "%s", r->config);
	cr_expect(strstr(r->config, "default_relay = \"a\";") != NULL);
	import_result_free(r);
}

Test(msmtp, names_are_made_valid_and_unique)
{
	struct import_result *r = msmtp("account me@work.example\nhost w\n"
	    "account me_work_example\nhost x\naccount 1st\nhost y\n");

	cr_expect(strstr(r->config, "  me_work_example = {") != NULL, "%s",
	    r->config);
	cr_expect(strstr(r->config, "  me_work_example_2 = {") != NULL, "%s",
	    r->config);
	cr_expect(strstr(r->config, "  r1st = {") != NULL, "%s", r->config);
	cr_expect(has_note(r, "no account \"default\": relay "
	    "me_work_example, the first account, is the default relay"),
	    "%s", notes_text(r));
	import_result_free(r);
}

Test(msmtp, malformed_lines_and_unknown_commands_are_noted)
{
	struct import_result *r = msmtp("account a\nhost a.example\n"
	    "password \"unclosed\nfrobnicate yes\naccount b : nosuch\n"
	    "host b.example\naccount c\nport 25\n");

	cr_expect(has_note(r, ":3: password: no closing quote"), "%s",
	    notes_text(r));
	cr_expect(has_note(r, ":4: frobnicate: not an msmtp command"), "%s",
	    notes_text(r));
	cr_expect(has_note(r, ":5: account b: inherits from nosuch"), "%s",
	    notes_text(r));
	cr_expect(has_note(r, ":7: account c: no host; not a relay"), "%s",
	    notes_text(r));
	cr_expect_null(r->authinfo);
	import_result_free(r);
}

Test(msmtp, nothing_to_relay_to_is_an_error)
{
	struct import_result *r = msmtp("defaults\ntls on\n");

	cr_expect_eq(r->error, 1);
	cr_expect(has_note(r, "no server to relay to"));
	import_result_free(r);
}

Test(msmtp, configs_load_with_this_builds_features)
{
	expect_loadable_msmtp(msmtprc);
	expect_loadable_msmtp("account default\nhost h.example\n"
	    "from %U@corp.example\nauth on\nuser x\npassword y\n");
}

/* ---- ssmtp ---- */

static const char ssmtp_conf[] =
    "# Config file for sSMTP sendmail\n"
    "root=postmaster@corp.example\n"
    "mailhub=smtp.corp.example:587\n"
    "rewriteDomain=corp.example\n"
    "hostname=host1.corp.example\n"
    "UseSTARTTLS=YES\n"
    "AuthUser=relay@corp.example\n"
    "AuthPass=hunter2\n"
    "AuthMethod=cram-md5\n"
    "FromLineOverride=NO\n"
    "Debug=YES\n"
    "NoSuchThing=1\n";

static const char revaliases[] =
    "# sSMTP aliases\n"
    "root:root-host1@corp.example:smtp.corp.example:587\n"
    "alice:alice@other.example:mail.other.example:465\n"
    "bob:bob@corp.example\n";

Test(ssmtp, mailhub_auth_and_local_settings)
{
	struct import_result *r = ssmtp(ssmtp_conf, revaliases);

	cr_assert_eq(r->error, 0, "%s", notes_text(r));
	cr_expect(strstr(r->config, "hostname = \"host1.corp.example\";\n"
	    "mail_domain = \"corp.example\";\naliases = \"/etc/smarthostd/"
	    "aliases\";\nsender_rewrite = { map = \"/etc/smarthostd/"
	    "sender-map\"; masquerade = true; };") != NULL, "%s", r->config);
	cr_expect(strstr(r->config, "  mailhub = {\n    host = "
	    "\"smtp.corp.example\";\n    port = \"587\";\n    tls = "
	    "\"starttls\";\n    user = \"relay@corp.example\";\n    auth = "
	    "\"always\";\n    mechanisms = [ \"CRAM-MD5\" ];\n  };") != NULL,
	    "%s", r->config);
	cr_expect_str_eq(r->authinfo, "machine smtp.corp.example port 587 "
	    "login relay@corp.example password hunter2\n"
	    "machine mail.other.example port 465 login relay@corp.example "
	    "password hunter2\n");
	expect_no_secret(r, "hunter2");
	cr_expect_str_eq(r->aliases, "root: postmaster@corp.example\n");
	cr_expect(has_note(r, ":10: FromLineOverride=NO: not mapped"), "%s",
	    notes_text(r));
	cr_expect(has_note(r, ":11: Debug: not mapped"));
	cr_expect(has_note(r, ":12: NoSuchThing: not an ssmtp setting"));
	cr_expect(has_note(r, ":2: root=postmaster@corp.example: mapped to "
	    "the alias"));
	cr_expect(has_note(r, "ssmtp did not without TLS_CA_File"));
	import_result_free(r);
}

Test(ssmtp, revaliases_become_map_lines_and_routes)
{
	struct import_result *r = ssmtp(ssmtp_conf, revaliases);

	cr_expect_str_eq(r->sender_map, "root: root-host1@corp.example\n"
	    "alice: alice@other.example\nbob: bob@corp.example\n");
	/* the main mailhub needs no route; another one gets a relay */
	cr_expect(strstr(r->config, "sender = \"root-host1") == NULL);
	cr_expect(strstr(r->config, "  mail_other_example = {\n    host = "
	    "\"mail.other.example\";\n    port = \"465\";\n    tls = "
	    "\"starttls\";") != NULL, "%s", r->config);
	cr_expect(strstr(r->config, "{ sender = \"alice@other.example\"; "
	    "relay = \"mail_other_example\"; }") != NULL, "%s", r->config);
	import_result_free(r);
}

Test(ssmtp, implicit_tls_and_clear_text)
{
	struct import_result *r = ssmtp("mailhub=mx.example\nUseTLS=YES\n",
	    NULL);

	cr_expect(strstr(r->config, "port = \"465\";\n    tls = "
	    "\"implicit\";") != NULL, "%s", r->config);
	import_result_free(r);
	r = ssmtp("mailhub=mx.example\nAuthUser=u\nAuthPass=p\n", NULL);
	cr_expect(strstr(r->config, "port = \"25\";\n    tls = \"none\";")
	    != NULL, "%s", r->config);
	cr_expect(strstr(r->config, "allow_plaintext_auth = true;") != NULL);
	cr_expect(has_note(r, "AuthUser without TLS: mapped to "
	    "allow_plaintext_auth = true"));
	import_result_free(r);
}

Test(ssmtp, loads_with_this_builds_features)
{
	struct import_opts o = all;
	struct import_file c = { "ssmtp.conf", ssmtp_conf,
		sizeof(ssmtp_conf) - 1 };
	struct import_file ra = { "revaliases", revaliases,
		sizeof(revaliases) - 1 };
	struct import_result *r;
	struct config *cfg;
	char err[1024];

	o.features = import_features();
	o.authinfo_path = NULL;
	o.aliases_path = NULL;
	o.sender_map_path = NULL;
	r = import_ssmtp(&c, &ra, &o);
	cfg = config_parse_string(r->config, "imported", err, sizeof(err));
	cr_expect_not_null(cfg, "%s\n%s", err, r->config);
	config_free(cfg);
	import_result_free(r);
}

/* ---- nullmailer ---- */

#define NMFILE(name, text) { "/etc/nullmailer/" name, text, sizeof(text) - 1 }

Test(nullmailer, remotes_in_order_are_a_relay_and_its_backups)
{
	struct import_file files[] = {
		NMFILE("adminaddr", "admin@corp.example, ops@corp.example\n"),
		NMFILE("defaultdomain", "corp.example\n"),
		NMFILE("defaulthost", "host1\n"),
		NMFILE("me", "host1.corp.example\n"),
		NMFILE("pausetime", "120\n"),
		NMFILE("remotes", "# primary, then the fallback\n"
		    "smtp.corp.example smtp --port=587 --starttls "
		    "--user=relay --pass=s3cret\n"
		    "\n"
		    "backup.example smtp --ssl --user relay2 --pass "
		    "s3cond --x509certfile=/c.pem\n"
		    "old.example qmqp\n"),
		NMFILE("trigger", ""),
	};
	struct import_result *r = import_nullmailer(files, 7, &all);

	cr_assert_eq(r->error, 0, "%s", notes_text(r));
	cr_expect(strstr(r->config, "from /etc/nullmailer.") != NULL);
	cr_expect(strstr(r->config, "hostname = \"host1.corp.example\";\n"
	    "mail_domain = \"host1.corp.example\";\nlocal_catch_all = "
	    "\"admin@corp.example\";") != NULL, "%s", r->config);
	cr_expect(strstr(r->config, "  remote1 = {\n    host = "
	    "\"smtp.corp.example\";\n    port = \"587\";\n    tls = "
	    "\"starttls\";\n    user = \"relay\";\n    auth = \"always\";\n"
	    "    backup = [ \"remote2\" ];\n    failover_after = 0;") != NULL,
	    "%s", r->config);
	cr_expect(strstr(r->config, "  remote2 = {\n    host = "
	    "\"backup.example\";\n    port = \"465\";\n    tls = "
	    "\"implicit\";\n    user = \"relay2\";") != NULL, "%s",
	    r->config);
	cr_expect(strstr(r->config, "default_relay = \"remote1\";") != NULL);
	cr_expect(strstr(r->config, "queue = { retry_min = 120; };") != NULL,
	    "%s", r->config);
	cr_expect_str_eq(r->authinfo, "machine smtp.corp.example port 587 "
	    "login relay password s3cret\nmachine backup.example port 465 "
	    "login relay2 password s3cond\n");
	expect_no_secret(r, "s3cret");
	cr_expect(has_note(r, "remotes:5: qmqp: not mapped"), "%s",
	    notes_text(r));
	cr_expect(has_note(r, "remotes:4: --x509certfile: not mapped"));
	expect_no_secret(r, "s3cond");
	cr_expect(has_note(r, "adminaddr:1: several addresses"));
	cr_expect(has_note(r, "/etc/nullmailer/trigger: trigger: not a control "
	    "file this importer knows"), "%s", notes_text(r));
	import_result_free(r);
}

Test(nullmailer, defaultdomain_completes_a_short_host_name)
{
	struct import_file files[] = {
		NMFILE("defaultdomain", "corp.example\n"),
		NMFILE("me", "host1\n"),
		NMFILE("remotes", "mx.example smtp\n"),
	};
	struct import_result *r = import_nullmailer(files, 3, &all);

	cr_expect(strstr(r->config, "mail_domain = \"host1.corp.example\";")
	    != NULL, "%s", r->config);
	import_result_free(r);
}

Test(nullmailer, no_remotes_is_an_error_and_loads_otherwise)
{
	struct import_file none[] = { NMFILE("me", "h\n") };
	struct import_file files[] = {
		NMFILE("adminaddr", "admin@corp.example\n"),
		NMFILE("defaulthost", "corp.example\n"),
		NMFILE("remotes", "a.example smtp --starttls\n"
		    "b.example smtp --starttls\n"),
	};
	struct import_opts o = all;
	struct import_result *r = import_nullmailer(none, 1, &all);
	struct config *cfg;
	char err[1024];

	cr_expect_eq(r->error, 1);
	import_result_free(r);
	o.features = import_features();
	r = import_nullmailer(files, 3, &o);
	cfg = config_parse_string(r->config, "imported", err, sizeof(err));
	cr_expect_not_null(cfg, "%s\n%s", err, r->config);
	config_free(cfg);
	import_result_free(r);
}
