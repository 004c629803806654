/*
 * Secrets from commands: a relay's password_command and oauth_command, and
 * gpg for encrypted credential files ("gpg --quiet --batch --no-tty
 * --decrypt FILE"). A command runs in its own process group with stdin and
 * stderr on /dev/null (what a command prints on stderr may quote the
 * secret, so it never reaches our log), and its stdout is captured up to
 * SECRETCMD_OUTPUT_MAX bytes. A command that outlives its timeout is
 * killed with its whole process group.
 *
 * Running a command blocks, so it never happens on the event loop thread:
 * secretcmd_exec() and secretcmd_shell() are for code that already runs on
 * a worker thread; secretcmd_run() queues the work on the worker pool and
 * reports on the loop thread.
 *
 * Error messages never contain the command's output nor the command line
 * (a careless password_command may carry the password itself): only what
 * went wrong ("exited with status 2", "timed out after 10s").
 */
#ifndef SMARTHOST_SECRETCMD_H
#define SMARTHOST_SECRETCMD_H

#include <stddef.h>

#include "worker.h"

#define SECRETCMD_TIMEOUT 10               /* seconds, the default */
#define SECRETCMD_OUTPUT_MAX (64 * 1024)   /* bytes of stdout kept */
#define SECRETCMD_INPUT_MAX (32 * 1024)    /* bytes of stdin given */

/*
 * Runs argv (argv[0] looked up in PATH, the daemon's environment) and
 * waits for it, at most timeout seconds (0: SECRETCMD_TIMEOUT). Success
 * means exit status 0 and at most SECRETCMD_OUTPUT_MAX bytes of output:
 * returns 0 with *out holding the output without one trailing newline
 * ("\n" or "\r\n"), NUL-terminated after *outlen bytes; the caller frees
 * it with xfree_secret(*out, *outlen + 1). Otherwise returns -1 with a
 * message in err and nothing in *out. Blocks: never call it on the loop
 * thread. Thread-safe.
 */
int secretcmd_exec(const char *const *argv, unsigned timeout, char **out,
    size_t *outlen, char *err, size_t errlen);
/*
 * As secretcmd_exec(), with in[0..inlen-1] (at most SECRETCMD_INPUT_MAX
 * bytes) on the command's stdin instead of /dev/null; in NULL: /dev/null.
 */
int secretcmd_exec_input(const char *const *argv, unsigned timeout,
    const void *in, size_t inlen, char **out, size_t *outlen, char *err,
    size_t errlen);
/*
 * Decrypts an Emacs auth-source gpg token, "gpg:" followed by the base64
 * of an OpenPGP message, through the same gpg as encrypted files: the
 * decoded message goes to "gpg --quiet --batch --no-tty --decrypt" on its
 * stdin. Returns 0 with the plain text in *out as secretcmd_exec() does
 * (one trailing line end removed), or -1 with err (bad base64, or how gpg
 * failed; never gpg's own words). Blocks: worker threads and tools only.
 */
int secretcmd_gpg_token(const char *token, char **out, size_t *outlen,
    char *err, size_t errlen);
/* The same for "/bin/sh -c cmd". */
int secretcmd_shell(const char *cmd, unsigned timeout, char **out,
    size_t *outlen, char *err, size_t errlen);

/*
 * Receives the result of secretcmd_run on the loop thread: out (outlen
 * bytes, NUL-terminated) on success and err NULL, or out NULL and err the
 * reason. The buffers are wiped and freed when the callback returns: copy
 * what must outlive it.
 */
typedef void secretcmd_done_fn(const char *out, size_t outlen,
    const char *err, void *arg);

/*
 * Runs "/bin/sh -c cmd" on a thread of w (cmd is copied) and calls
 * done(..., arg) on the loop thread afterwards; never from inside this
 * call. done always runs exactly once, also when worker_free drains.
 */
void secretcmd_run(struct worker *w, const char *cmd, unsigned timeout,
    secretcmd_done_fn *done, void *arg);

#endif
