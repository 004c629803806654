/*
 * Translating the configuration of msmtp, ssmtp and nullmailer into a
 * smarthostd.conf, authinfo lines and the small files they name (sender
 * rewrite map, aliases). Pure: the caller reads the files and hands over
 * their bytes, and writes or prints what comes back; nothing here touches
 * the file system, the environment or a clock.
 *
 * Every setting of the source is either mapped or listed as a note that
 * names its file and line and says why it is not mapped (or what now
 * behaves differently): nothing is dropped silently. Notes and the
 * config never contain a password; passwords appear only in the authinfo
 * text, which the caller writes to a 0600 file or not at all.
 *
 * What maps to what:
 *  msmtp   each account with a host is a relay named after it (characters
 *          libconfig does not allow in a name become '_'); host, port,
 *          tls/tls_starttls (starttls, implicit or none), tls_trust_file
 *          (ca_file), tls_certcheck off (verify = false), domain (helo),
 *          user, auth (on: "always"; off: "never"; a method: "always" and
 *          that mechanism), password (an authinfo line), passwordeval
 *          (password_command), timeout (connect and command timeouts),
 *          the default account (`account default : X` or an account named
 *          default) is default_relay; accounts inherit from `defaults` and
 *          from the accounts after the colon. With several relays, each
 *          account's `from` is a route (an address: sender; *@domain or
 *          %U@domain: domain; another wildcard: an anchored regexp). The
 *          default account's from gives mail_domain (and, for %U@domain,
 *          masquerading); maildomain gives mail_domain; aliases the
 *          aliases file.
 *  ssmtp   mailhub (host[:port]) is the relay "mailhub"; UseTLS and
 *          UseSTARTTLS its TLS mode; TLS_CA_File its ca_file; AuthUser,
 *          AuthPass (an authinfo line), AuthMethod (mechanisms);
 *          rewriteDomain is mail_domain with masquerading; hostname is
 *          hostname; root is an aliases file line "root: ADDRESS";
 *          revaliases lines "local:address[:mailhub[:port]]" are sender
 *          rewrite map lines, and a mailhub other than the main one is a
 *          relay of its own with a route for that address.
 *  nullmailer  each remotes line "host smtp [--port=N] [--user=U]
 *          [--pass=P] [--ssl|--starttls] [--insecure] [--x509cafile=F]
 *          [--auth-login]" is a relay remote1, remote2, ...; the first is
 *          default_relay and the others are its backups, failed over
 *          to at once (nullmailer tries them in order); me is hostname, defaulthost (with defaultdomain
 *          appended when it has no dot) mail_domain, adminaddr
 *          local_catch_all, helohost every relay's helo.
 * Features the daemon being configured may lack (see import_features in
 * struct import_opts) are listed as notes instead of being emitted.
 */
#ifndef SMARTHOST_IMPORT_H
#define SMARTHOST_IMPORT_H

#include <stddef.h>

/* The optional parts of smarthostd.conf an import may use. */
#define IMPORT_F_ROUTES 0x01         /* routes = ( ... ) */
#define IMPORT_F_BACKUP 0x02         /* a relay's backup = [ ... ] */
#define IMPORT_F_MAIL_DOMAIN 0x04    /* mail_domain */
#define IMPORT_F_ALIASES 0x08        /* aliases and local_catch_all */
#define IMPORT_F_SENDER_REWRITE 0x10 /* sender_rewrite { map masquerade } */
#define IMPORT_F_ALL 0x1f

/* One input file: its path (for notes and comments) and its bytes. */
struct import_file {
	const char *path;
	const char *buf;  /* NULL: the file does not exist */
	size_t len;
};

struct import_opts {
	/* Paths the generated config names; NULL for authinfo_path means
	 * the authinfo lines are not going to be written: the config then
	 * keeps the default authinfo files and shows the lines, without
	 * their passwords, as comments. The map and aliases paths must be
	 * set when such a file is to be written. */
	const char *authinfo_path;
	const char *sender_map_path;
	const char *aliases_path;
	const char *home;   /* for msmtp's ~/ paths; NULL: left as is */
	const char *login;  /* the importing user (msmtp's default from) */
	unsigned features;  /* IMPORT_F_* the daemon accepts */
};

struct import_result {
	char *config;      /* smarthostd.conf text, never NULL */
	char *authinfo;    /* authinfo lines with passwords, or NULL */
	char *sender_map;  /* sender rewrite map text, or NULL */
	char *aliases;     /* aliases file text, or NULL */
	char **notes;      /* "path:line: setting: why" (no secrets) */
	size_t nnotes;
	int error;         /* 1: nothing usable (no relay); see the notes */
};

/*
 * Translates an msmtprc. Never fails: a line it cannot read is a note.
 * The caller frees the result with import_result_free().
 */
struct import_result *import_msmtp(const struct import_file *rc,
    const struct import_opts *opts);
/* Translates ssmtp.conf and revaliases (whose buf may be NULL). */
struct import_result *import_ssmtp(const struct import_file *conf,
    const struct import_file *revaliases, const struct import_opts *opts);
/*
 * Translates nullmailer's control files: files[0..nfiles-1] are the files
 * of its configuration directory, each path ending in its name (remotes,
 * me, defaulthost, ...); files it does not know are listed as notes.
 */
struct import_result *import_nullmailer(const struct import_file *files,
    size_t nfiles, const struct import_opts *opts);
/*
 * The IMPORT_F_* settings this build's config loader accepts, found by
 * giving config_parse_string() a small config with each (no file is read).
 */
unsigned import_features(void);
/* Wipes the authinfo text and frees. Accepts NULL. */
void import_result_free(struct import_result *r);

#endif
