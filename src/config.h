/*
 * Configuration: a libconfig file turned into one immutable struct config.
 * Every option has a default, so a config with only a relay (or none at all,
 * for the maildir quick start) is valid. Validation errors name file:line.
 * Reload builds a new struct and the caller swaps it in; nothing mutates a
 * loaded config.
 */
#ifndef SMARTHOST_CONFIG_H
#define SMARTHOST_CONFIG_H

#include <stddef.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <regex.h>

#include "route.h"
#include "senderpolicy.h"

enum tls_mode {
	TLS_MODE_STARTTLS, /* default: refuse to send if not offered */
	TLS_MODE_IMPLICIT, /* TLS from the first byte (port 465) */
	TLS_MODE_NONE,     /* clear text, only on explicit request */
};

enum relay_type {
	RELAY_TYPE_SMTP,
	RELAY_TYPE_MAILDIR, /* deliver into a local Maildir (development) */
};

enum auth_policy {
	AUTH_POLICY_AUTO,   /* auth_first match or learned; else on demand */
	AUTH_POLICY_ALWAYS, /* authenticate right after EHLO */
	AUTH_POLICY_NEVER,  /* never send credentials */
};

enum spool_sync {
	SPOOL_SYNC_FSYNC,  /* fdatasync each file of a commit group */
	SPOOL_SYNC_SYNCFS, /* one syncfs(2) per group: dedicated spool fs */
};

struct relay_config {
	char *name;
	enum relay_type type;
	/* smtp */
	char *host;       /* name or numeric address */
	char *port;       /* number or service name; default by tls mode */
	enum tls_mode tls;
	int tls_verify;   /* verify certificate and host name (default 1) */
	char *ca_file;    /* NULL: system CAs */
	char *helo;       /* NULL: config hostname */
	char *user;       /* login to use; only authinfo entries for it */
	enum auth_policy auth;
	int allow_plaintext_auth; /* credentials without TLS (default 0) */
	char **mechanisms; /* SASL order, upper case; NULL: built-in order */
	size_t nmechanisms;
	char *password_command; /* shell command printing the password */
	char *oauth_command;    /* shell command printing an OAuth2 token */
	unsigned max_connections;     /* parallel sessions to this relay */
	unsigned max_msgs_per_conn;   /* messages per session before QUIT */
	unsigned timeout_idle;        /* seconds a session with nothing to
	                                 send stays open (default 2); 0:
	                                 QUIT at once */
	unsigned timeout_connect;     /* seconds */
	unsigned timeout_command;     /* greeting, EHLO, MAIL, RCPT, ... */
	unsigned timeout_data;        /* DATA ".": RFC 5321 says 10 min */
	unsigned line_length_limit;   /* characters per line sent; longer
	                                 lines are broken with CRLF SP
	                                 (default 998); 0: sent as they are */
	/* Failover: names of relays (validated, never this one) that take
	 * this relay's mail, in order, once it has been unreachable for
	 * failover_after seconds (default 600); see failover.h. */
	char **backup;
	size_t nbackup;
	unsigned failover_after;
	/* maildir */
	char *maildir;    /* directory holding cur/ new/ tmp/ */
};

enum listen_kind {
	LISTEN_TCP,
	LISTEN_UNIX,
};

struct listen_config {
	enum listen_kind kind;
	char *address;  /* TCP: numeric IPv4 or IPv6 address */
	char *port;     /* TCP: number or service name */
	char *path;     /* Unix: socket path */
	mode_t mode;    /* Unix: permission bits (default 0666) */
	char *group;    /* Unix: group owner, NULL to keep */
};

struct netmask {
	int family;              /* AF_INET or AF_INET6 */
	unsigned char addr[16];  /* network byte order */
	unsigned prefix;
};

struct localaddr;

struct config {
	char *file;        /* path it was read from, NULL for built-in */
	char *hostname;    /* our name: banner, Received, EHLO */
	char *mail_domain; /* domain of local users' addresses (hostname) */
	char *user;        /* drop privileges to it after binding; NULL keep */
	char *spool;       /* spool directory */
	enum spool_sync spool_sync;
	size_t spool_log_max; /* messages up to this size go to the spool log;
	                         0: each to a file of its own (65536) */
	size_t spool_log_file_size; /* bytes of records per spool log file
	                               (8 MB) */

	struct listen_config *listen;
	size_t nlisten;
	struct netmask *allow; /* networks allowed to submit besides loopback */
	size_t nallow;
	/* The metrics and health HTTP endpoint (httpd.h): numeric address,
	 * NULL when off (the default), and port (0: the kernel picks). */
	char *metrics_address;
	unsigned metrics_port;

	size_t max_line;          /* command line length incl. CRLF (2048) */
	size_t max_message_size;  /* bytes; SIZE advertised and enforced */
	unsigned max_recipients;  /* per message */
	unsigned max_sessions;    /* concurrent inbound sessions */
	unsigned max_errors;      /* per session before 421 */
	unsigned idle_timeout;    /* seconds of client silence */
	unsigned session_timeout; /* seconds a session may last, 0: no limit */
	unsigned max_sessions_per_client; /* per uid or address */

	unsigned retry_min;       /* seconds, first backoff (300) */
	unsigned retry_max;       /* seconds, backoff clamp (4000) */
	unsigned lifetime;        /* seconds before bounce (5 days) */
	unsigned delay_warning;   /* seconds before a delay notification
	                             (4 hours), 0: never */
	unsigned delivery_workers; /* threads for blocking work */
	unsigned shutdown_timeout; /* seconds to finish sessions on TERM */

	/* Authentication: auth_first regexps (POSIX ERE, case-insensitive)
	 * matched against relay host names; credential files in order. */
	char **auth_first;
	regex_t *auth_first_re;
	size_t nauth_first;
	char **authinfo;   /* "~/" already expanded against the home dir */
	size_t nauthinfo;
	char *state_dir;   /* learned facts (default: spool/state) */
	char *control_socket; /* smarthostctl's socket (spool/control.sock) */
	/* Groups whose members may use every control command, or only
	 * status, queue and show; NULL: none (root and the daemon user). */
	char *control_admin_group;
	char *control_read_group;

	/* Local submission. */
	char *maildrop;       /* postdrop's directory (spool/maildrop) */
	char *maildrop_group; /* postdrop's setgid group (smarthostdrop) */
	/* Which senders a local user may use; never NULL after loading. */
	struct sender_policy *sender_policy;

	struct relay_config *relays;
	size_t nrelays;
	size_t default_relay;     /* index into relays */
	/* Sender-dependent routing rules, in order; each names a relay by
	 * its index in relays. */
	struct route *routes;
	size_t nroutes;

	/* Local addresses: local_domains, aliases (their file is read and
	 * checked with the config), local_catch_all, sender_rewrite. Never
	 * NULL after loading. */
	struct localaddr *local;
};

/*
 * Reads and validates path. On failure returns NULL and writes a message
 * starting with "path:line: " (or "path: " when no line applies) to err.
 * The caller owns the result and frees it with config_free().
 */
struct config *config_load(const char *path, char *err, size_t errlen);

/*
 * Settings from the command line or the environment (a container sidecar
 * runs without a file). Each entry of config_options, ended by a NULL key,
 * names a setting (key, see below), its long option (flag, without "--")
 * and its environment variable (SMARTHOSTD_...).
 *
 * Keys are settings of smarthostd.conf(5): "hostname", "mail_domain",
 * "user", "spool", "authinfo", "allow_networks", "listen" (comma-separated
 * ADDRESS:PORT, [IPV6]:PORT or /socket/path), "max_message_size" (in
 * limits), "metrics_listen", and "relay" (HOST[:PORT]), "tls", "relay_user", "ca_file" of
 * the default relay (default_relay, else the first; one named "default"
 * is made when the file has none). List values are comma-separated.
 */
struct config_option {
	const char *key;
	const char *flag;
	const char *env;
	const char *arg;  /* what the value looks like, for usage */
};
extern const struct config_option config_options[];

struct config_override {
	const char *key;    /* a config_options key */
	const char *value;
	const char *origin; /* "--relay" or "SMARTHOSTD_RELAY", for errors */
};
/*
 * config_load with overrides applied over the file, in order (a later one
 * for the same key replaces an earlier one: pass environment variables
 * before flags). path NULL: no file, only the overrides and the defaults,
 * where listen defaults to 127.0.0.1:2525 and [::1]:2525 (no privileged
 * port). Errors in the file name file:line; errors in an override name its
 * origin ("SMARTHOSTD_TLS: ...").
 */
struct config *config_load_overrides(const char *path,
    const struct config_override *ov, size_t nov, char *err, size_t errlen);
/*
 * What smarthostd, smarthostctl and smarthost-sendmail load. The file:
 * file (-c) if not NULL; else $SMARTHOSTD_CONFIG if set; else none when
 * settings come from flags (nov > 0) or SMARTHOSTD_* variables (the
 * sidecar); else, for a user other than root, the workstation's
 * $XDG_CONFIG_HOME/smarthostd/smarthostd.conf (~/.config/...) if it
 * exists; else default_path. Over it the SMARTHOSTD_* variables, then ov
 * (flags win over variables, variables over the file). *used is set to
 * the file read (NULL: none; static or from the arguments).
 * For the user's own file (found, or named by -c as the same path) the
 * defaults are a workstation's: spool $XDG_STATE_HOME/smarthostd
 * (~/.local/state/smarthostd), listen 127.0.0.1:2525.
 */
struct config *config_load_default(const char *file, const char *default_path,
    const struct config_override *ov, size_t nov, const char **used,
    char *err, size_t errlen);
/* The same, from a string (tests); name is used in messages. */
struct config *config_parse_string(const char *text, const char *name,
    char *err, size_t errlen);
void config_free(struct config *cfg);
/* The relay named name, or NULL. */
const struct relay_config *config_relay(const struct config *cfg,
    const char *name);
const struct relay_config *config_default_relay(const struct config *cfg);
/* The relay mail from sender goes to (the envelope sender as queued, ""
 * for the null sender): the relay of the first route that matches it,
 * else the default relay. Never NULL. */
const struct relay_config *config_route(const struct config *cfg,
    const char *sender);
/* 1 if host matches one of the auth_first regexps, else 0. */
int config_auth_first(const struct config *cfg, const char *host);
/* 1 if sa (AF_INET/AF_INET6/AF_UNIX) may submit: loopback, Unix sockets
 * and the allowed networks; 0 otherwise. */
int config_peer_allowed(const struct config *cfg, const struct sockaddr *sa);
/* Parses "192.0.2.0/24" or "2001:db8::/32"; 0 on success, -1 if invalid. */
int netmask_parse(const char *s, struct netmask *out);
int netmask_match(const struct netmask *m, const struct sockaddr *sa);

#endif
