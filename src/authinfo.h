/*
 * Credentials from authinfo / netrc files, in the grammar of Emacs 28's
 * auth-source netrc backend (lisp/auth-source.el), with the lookup rules
 * of smtpmail: first matching entry in file order wins.
 *
 * The grammar, as this module reads it:
 *  - A file is a sequence of lines (LF or CRLF), after an optional UTF-8
 *    byte order mark. Tokens are separated by spaces, tabs and carriage
 *    returns.
 *  - A token is 'single quoted' (no escapes at all), "double quoted" (see
 *    the escapes below) or a bare run of non-blank bytes. Every byte up to
 *    the closing quote belongs to a quoted token, carriage returns too; it
 *    ends on its own line. A quote that does not close on its line starts
 *    a bare token instead ('it is the value 'it, quote included, with a
 *    warning), as Emacs reads it when no such quote follows in the file.
 *  - '#' at the start of a token begins a comment that runs to the end of
 *    the line: at the start of a line, after blanks, or right after a
 *    closing quote. Inside a bare token (pass#word) or inside quotes it is
 *    an ordinary byte; write a value that starts with '#' in quotes.
 *  - Tokens pair up as KEY VALUE. "machine" or "host" followed by a name,
 *    or "default" alone, starts an entry; the keys that follow belong to
 *    it: "login"/"account"/"user", "password"/"secret", "port"/"protocol",
 *    "smtp-auth" (a SASL mechanism name, as smtpmail reads it). Keywords
 *    are case-insensitive. Unknown keys are skipped with their value.
 *    "macdef NAME" skips a netrc(5) macro body up to the next blank line.
 *    A key repeated within an entry: the last value wins (with a warning).
 *
 * Where this differs from Emacs 28, on purpose (each is listed in
 * doc/ and in the table at the top of authinfo.c):
 *  1. "host" starts an entry like "machine". Emacs does not start a new
 *     entry at "host", so "host a ... \n host b ..." lines merge into one
 *     entry (the last values win) and host a is never matched.
 *  2. Keywords are case-insensitive. Emacs compares them literally, so an
 *     entry written "MACHINE a login x password y" has no machine at all
 *     and matches every host.
 *  3. Inside double quotes, \" stands for " and \\ for \ (the escapes
 *     Emacs itself writes when it saves a value with a quote, '#' or a
 *     space, using Lisp's %S); any other backslash is literal. Emacs reads
 *     "pa\"ss" as pa\ followed by a stray token ss", which also shifts
 *     every key/value pair after it on the line.
 *  4. A key must have its value on the same line. A key at the end of a
 *     line, or followed by a comment (a bare value starting with '#'), gets
 *     a warning and no value. Emacs takes the first token of the next line
 *     as the value: "password #x" followed by a "machine" line makes Emacs
 *     fail the whole lookup.
 *  5. Keys before the first machine/host/default are ignored with a
 *     warning. Emacs makes them an entry with no host, which matches every
 *     host (a password sent to any server).
 *  6. Malformed lines (text glued to a closing quote, a NUL byte) give a
 *     warning with file:line; what came before the error on that line is
 *     kept, the rest of the line is skipped, and parsing goes on. A bare
 *     "machine" where a value belongs (password machine b.example ...)
 *     leaves the key without a value, with a warning, and starts the next
 *     entry. Emacs signals an error for the latter, and the whole lookup
 *     fails. A quote that does not close on its line is literal here;
 *     Emacs runs on to the next such quote in the file, lines later, when
 *     there is one.
 *  7. "macdef" macro bodies are skipped as netrc(5) says; Emacs reads
 *     their lines as key/value pairs.
 *  8. Lookup compares host names case-insensitively and ports by number
 *     (service names smtp, submission, submissions/smtps/ssmtp map to
 *     25, 587, 465); Emacs compares both literally.
 *  9. A carriage return inside a quoted password stays in it. Emacs turns
 *     it into a line feed (it decodes each hidden password back with
 *     end-of-line conversion), a byte the file does not hold.
 *
 * Lookup (as smtpmail's auth-source-search :host :port :user :max 1
 * :require '(:secret)): an entry matches when its host equals the wanted
 * host or it is a default entry; it has no port or the same port; and,
 * when a user is wanted, it has no login or exactly that login
 * (case-sensitive). The first match that has a password wins, in file
 * order, across files in the order given; later entries never override
 * earlier ones, so a "default" with a password above a "machine" entry
 * wins. A match without a password is passed over for a later one with a
 * password, in the same file or a later one; when no match has a
 * password, the first match is the answer, so that the caller can say
 * which entry lacks it. A password may be a "gpg:BASE64" token (see
 * authinfo_is_gpg_token); it counts as a password here, and the caller
 * decrypts it.
 *
 * Warnings are reported through a callback, never logged here, and never
 * contain token text (it may be a secret): only file, line and keywords.
 */
#ifndef SMARTHOST_AUTHINFO_H
#define SMARTHOST_AUTHINFO_H

#include <stddef.h>

/* Files larger than this are refused: not a credentials file. */
#define AUTHINFO_FILE_MAX (1024 * 1024)

struct authinfo;
struct authinfo_cache;

struct authinfo_entry {
	char *file;      /* the name given to the parser (the path) */
	unsigned line;   /* line of its machine/host/default keyword, from 1 */
	int is_default;  /* a "default" entry: matches every host */
	char *host;      /* NULL for default entries (or "machine" alone) */
	char *port;      /* as written; NULL: any port */
	char *login;     /* NULL when the entry has none */
	char *password;  /* NULL when the entry has none; wiped on free */
	char *smtp_auth; /* mechanism named by "smtp-auth", or NULL */
};

/*
 * Receives one warning: file is the parser's name, line counts from 1,
 * msg is a complete sentence without the "file:line: " prefix. The
 * strings are valid only during the call.
 */
typedef void authinfo_warn_fn(const char *file, unsigned line,
    const char *msg, void *arg);

/*
 * Parses len bytes of buf (no NUL needed; NUL bytes are malformed). name
 * is used in entries and warnings (a path, or "<gpg>" ...). warn may be
 * NULL to drop warnings. Never fails: a malformed line costs a warning.
 * The caller owns the result and frees it with authinfo_free(), which
 * wipes the passwords. buf itself is not modified: the caller wipes it.
 */
struct authinfo *authinfo_parse(const char *buf, size_t len, const char *name,
    authinfo_warn_fn *warn, void *arg);
/* Wipes the secrets and frees. Accepts NULL. */
void authinfo_free(struct authinfo *ai);
/* Number of entries, and entry i (0-based, file order; borrowed). */
size_t authinfo_count(const struct authinfo *ai);
const struct authinfo_entry *authinfo_get(const struct authinfo *ai,
    size_t i);

/*
 * Whether entry e matches host (required), port (NULL: any) and user
 * (NULL or "": any), by the rules above. Returns 1 or 0.
 */
int authinfo_entry_matches(const struct authinfo_entry *e, const char *host,
    const char *port, const char *user);
/* The first entry of ai that matches and has a password, else the first
 * that matches, or NULL. Borrowed from ai. */
const struct authinfo_entry *authinfo_match(const struct authinfo *ai,
    const char *host, const char *port, const char *user);
/* A deep copy the caller frees with authinfo_entry_free(). */
struct authinfo_entry *authinfo_entry_dup(const struct authinfo_entry *e);
/* Wipes the password and frees. Accepts NULL. */
void authinfo_entry_free(struct authinfo_entry *e);
/* Whether e is a match that ends a lookup: not NULL, with a password. */
int authinfo_entry_complete(const struct authinfo_entry *e);
/*
 * For lookups over several files: keeps in *best the better of *best and
 * cand (owned, may be NULL) by the rule above: the earlier one, unless
 * only cand has a password. Frees the other.
 */
void authinfo_entry_prefer(struct authinfo_entry **best,
    struct authinfo_entry *cand);
/*
 * Whether password is an Emacs auth-source gpg token, "gpg:" followed by
 * base64 of an OpenPGP message (Emacs writes it ASCII-armored): Emacs
 * decrypts every password that starts with "gpg:", so such a value can
 * only be a token. secretcmd_gpg_token() decrypts it.
 */
int authinfo_is_gpg_token(const char *password);

/*
 * The port number of "587", "submission", "SMTP" ...: decimal numbers
 * 1..65535 (leading zeros allowed) and the names smtp (25), submission
 * (587), submissions, smtps, ssmtp (465), case-insensitive. A static
 * table: getservbyname(3) is neither pure nor thread-safe. Returns -1 for
 * anything else.
 */
int authinfo_port_number(const char *port);

/*
 * Returns value written so that both this parser and Emacs 28 read it
 * back as value (bare when it can be, else in single or double quotes),
 * for tools that append an entry. Returns NULL when no such form exists
 * (a line break, a NUL, or both kinds of quote with a troublesome
 * backslash). The caller frees the result with xfree_secret_str().
 */
char *authinfo_quote(const char *value);

/*
 * Reads and parses one file. The file must be a regular file owned by the
 * effective uid and neither readable nor writable by group or others, and
 * at most AUTHINFO_FILE_MAX bytes; symbolic links are followed and the
 * checks apply to the file they name. Returns 0 and stores the parsed file
 * in *out (the caller frees it with authinfo_free), or 0 with *out = NULL
 * when the file does not exist (a missing file is not an error), or -1
 * with a message in err that starts with the path and, for a mode or owner
 * problem, ends with the command that fixes it ("chmod 600 PATH", "chown
 * USER PATH"). The file's bytes are wiped from memory after parsing.
 */
int authinfo_read_file(const char *path, struct authinfo **out,
    authinfo_warn_fn *warn, void *arg, char *err, size_t errlen);

/*
 * Looks host/port/user up in files[0..nfiles-1], in that order, reading
 * each with authinfo_read_file(). Returns 0 with *out set to a copy of the
 * entry the rules above pick (the caller frees it with
 * authinfo_entry_free), or 0 with *out = NULL when no file has a match;
 * or -1 with err set (and *out NULL) when a file is refused or unreadable
 * before a match with a password was found: the answer may depend on that
 * file, so no later file is consulted.
 */
int authinfo_lookup(const char *const *files, size_t nfiles,
    const char *host, const char *port, const char *user,
    struct authinfo_entry **out, authinfo_warn_fn *warn, void *arg,
    char *err, size_t errlen);

/*
 * A cache of parsed files for the daemon: a lookup stats each file and
 * re-reads it only when its device, inode, size, mtime, ctime, mode or
 * owner changed (ctime catches a chmod that fixes a refused file).
 * Warnings are reported when a file is (re)parsed, not on every lookup, so
 * the log carries them once per change. A refused file's error is kept and
 * returned by every lookup that reaches it until the file changes.
 * Thread-safe: one mutex; the warn callback runs with it held and must not
 * call back into the cache. The parsed files (passwords included) stay in
 * memory until they change, the cache is flushed or freed; then they are
 * wiped.
 */
struct authinfo_cache *authinfo_cache_new(void);
/* Wipes and frees everything. Accepts NULL. */
void authinfo_cache_free(struct authinfo_cache *c);
/* Forgets every file (on HUP): the next lookup re-reads them. */
void authinfo_cache_flush(struct authinfo_cache *c);
/* As authinfo_lookup(), through the cache. */
int authinfo_cache_lookup(struct authinfo_cache *c, const char *const *files,
    size_t nfiles, const char *host, const char *port, const char *user,
    struct authinfo_entry **out, authinfo_warn_fn *warn, void *arg,
    char *err, size_t errlen);
/*
 * A counter that grows whenever a lookup found a file changed, appeared,
 * vanished or was flushed: the relay compares it with the value it saw when
 * it deferred mail for lack of credentials, to retry at once.
 */
unsigned long authinfo_cache_generation(struct authinfo_cache *c);

#endif
