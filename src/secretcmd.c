/*
 * Commands that print a secret. Each runs through posix_spawn (safe in a
 * threaded process, unlike a hand-rolled fork that could inherit a locked
 * malloc mutex) as the leader of a new process group, so a timeout can
 * kill the shell and whatever it started. The child gets default signal
 * dispositions and an empty signal mask whatever the worker thread has.
 *
 * Every descriptor above stderr is closed in the child: the daemon's
 * listeners and upstream connections are none of the command's business.
 *
 * The output buffer is allocated once at its maximum size, so it is never
 * copied by realloc (every copy of a secret is one more to wipe), and is
 * wiped before it is freed on every path.
 */
#include <sys/types.h>
#include <sys/wait.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "log.h"
#include "secretcmd.h"
#include "xmalloc.h"

static double
mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Kills the child's process group and reaps the child. */
static void
kill_reap(pid_t pid)
{
	int status;

	(void)kill(-pid, SIGKILL);
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
}

/*
 * Waits for pid to exit until deadline; returns 0 with its status, or -1
 * when the deadline passed (the group is then killed and reaped). A child
 * may close its stdout and keep running, so this polls instead of
 * blocking in waitpid.
 */
static int
wait_until(pid_t pid, double deadline, int *status)
{
	const struct timespec nap = { 0, 5 * 1000 * 1000 };
	pid_t r;

	for (;;) {
		r = waitpid(pid, status, WNOHANG);
		if (r == pid)
			return 0;
		if (r == -1 && errno != EINTR) {
			*status = 0;
			/* reaped elsewhere: nothing to wait for */
			return 0;
		}
		if (mono_now() >= deadline) {
			kill_reap(pid);
			return -1;
		}
		nanosleep(&nap, NULL);
	}
}

/* Spawns argv with outfd as its stdout and infd (-1: /dev/null) as its
 * stdin. */
static int
spawn(const char *const *argv, int infd, int outfd, pid_t *pid, char *err,
    size_t errlen)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	/* exec's prototype predates const; it does not write argv */
	union {
		const char *const *c;
		char *const *v;
	} av = { .c = argv };
	int r;

	sigemptyset(&none);
	sigfillset(&all);
	if ((r = posix_spawn_file_actions_init(&fa)) != 0) {
		snprintf(err, errlen, "posix_spawn: %s", strerror(r));
		return -1;
	}
	if ((r = posix_spawnattr_init(&attr)) != 0) {
		posix_spawn_file_actions_destroy(&fa);
		snprintf(err, errlen, "posix_spawn: %s", strerror(r));
		return -1;
	}
	/* dup2 first: outfd may itself be 0 or 2 in a daemon that closed
	 * them, and the opens below would replace it (infd is above 2, see
	 * input_pipe) */
	if ((r = posix_spawn_file_actions_adddup2(&fa, outfd,
	    STDOUT_FILENO)) != 0 ||
	    (r = infd != -1 ? posix_spawn_file_actions_adddup2(&fa, infd,
	    STDIN_FILENO) : posix_spawn_file_actions_addopen(&fa,
	    STDIN_FILENO, "/dev/null", O_RDONLY, 0)) != 0 ||
	    (r = posix_spawn_file_actions_addopen(&fa, STDERR_FILENO,
	    "/dev/null", O_WRONLY, 0)) != 0 ||
	    (r = posix_spawn_file_actions_addclosefrom_np(&fa,
	    STDERR_FILENO + 1)) != 0 ||
	    (r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP |
	    POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)) != 0 ||
	    (r = posix_spawnattr_setpgroup(&attr, 0)) != 0 ||
	    (r = posix_spawnattr_setsigmask(&attr, &none)) != 0 ||
	    (r = posix_spawnattr_setsigdefault(&attr, &all)) != 0) {
		snprintf(err, errlen, "posix_spawn: %s", strerror(r));
		goto out;
	}
	r = posix_spawnp(pid, argv[0], &fa, &attr, av.v, environ);
	if (r != 0)
		snprintf(err, errlen, "cannot run %s: %s", argv[0],
		    strerror(r));
out:
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	return r == 0 ? 0 : -1;
}

/*
 * A pipe that already holds in[0..inlen-1], its write end closed: returns
 * its read end (above 2, close-on-exec) or -1 with err. The input fits in
 * the pipe's buffer (SECRETCMD_INPUT_MAX is well below the 64 KiB of a
 * Linux pipe), so writing it before the command runs cannot block.
 */
static int
input_pipe(const void *in, size_t inlen, char *err, size_t errlen)
{
	int fds[2], rd;
	ssize_t n;

	if (inlen > SECRETCMD_INPUT_MAX) {
		snprintf(err, errlen, "input longer than %d bytes",
		    SECRETCMD_INPUT_MAX);
		return -1;
	}
	if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) == -1) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	do
		n = write(fds[1], in, inlen);
	while (n == -1 && errno == EINTR);
	close(fds[1]);
	if (n != (ssize_t)inlen) {
		snprintf(err, errlen, "cannot fill the input pipe: %s",
		    n == -1 ? strerror(errno) : "short write");
		close(fds[0]);
		return -1;
	}
	/* the command reads it blocking; and keep it off 0-2, which a
	 * daemon that closed them would hand out */
	if (fcntl(fds[0], F_SETFL, 0) == -1 ||
	    (rd = fcntl(fds[0], F_DUPFD_CLOEXEC, STDERR_FILENO + 1)) == -1) {
		snprintf(err, errlen, "input pipe: %s", strerror(errno));
		close(fds[0]);
		return -1;
	}
	close(fds[0]);
	return rd;
}

int
secretcmd_exec(const char *const *argv, unsigned timeout, char **out,
    size_t *outlen, char *err, size_t errlen)
{
	return secretcmd_exec_input(argv, timeout, NULL, 0, out, outlen, err,
	    errlen);
}

int
secretcmd_exec_input(const char *const *argv, unsigned timeout,
    const void *in, size_t inlen, char **out, size_t *outlen, char *err,
    size_t errlen)
{
	struct pollfd pfd;
	double deadline;
	char *buf = NULL;
	size_t len = 0, cap = SECRETCMD_OUTPUT_MAX + 1;
	ssize_t n;
	pid_t pid;
	int fds[2] = { -1, -1 }, infd = -1, status, ms, ret = -1;

	*out = NULL;
	*outlen = 0;
	if (timeout == 0)
		timeout = SECRETCMD_TIMEOUT;
	deadline = mono_now() + timeout;
	if (in != NULL && (infd = input_pipe(in, inlen, err, errlen)) == -1)
		return -1;
	if (pipe2(fds, O_CLOEXEC) == -1) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		if (infd != -1)
			close(infd);
		return -1;
	}
	if (spawn(argv, infd, fds[1], &pid, err, errlen) == -1) {
		close(fds[0]);
		close(fds[1]);
		if (infd != -1)
			close(infd);
		return -1;
	}
	close(fds[1]);
	if (infd != -1)
		close(infd);
	buf = xmalloc(cap);

	pfd.fd = fds[0];
	pfd.events = POLLIN;
	for (;;) {
		ms = (int)((deadline - mono_now()) * 1000);
		if (ms <= 0) {
			kill_reap(pid);
			snprintf(err, errlen, "timed out after %us; killed",
			    timeout);
			goto done;
		}
		if (poll(&pfd, 1, ms) == -1) {
			if (errno == EINTR)
				continue;
			snprintf(err, errlen, "poll: %s", strerror(errno));
			kill_reap(pid);
			goto done;
		}
		if (pfd.revents == 0)
			continue;
		n = read(fds[0], buf + len, cap - len);
		if (n == -1 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n == -1) {
			snprintf(err, errlen, "read: %s", strerror(errno));
			kill_reap(pid);
			goto done;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == cap) {
			kill_reap(pid);
			snprintf(err, errlen, "output longer than %d bytes",
			    SECRETCMD_OUTPUT_MAX);
			goto done;
		}
	}
	if (wait_until(pid, deadline, &status) == -1) {
		snprintf(err, errlen, "timed out after %us; killed", timeout);
		goto done;
	}
	if (WIFSIGNALED(status)) {
		snprintf(err, errlen, "killed by signal %d", WTERMSIG(status));
		goto done;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
		snprintf(err, errlen, "exited with status %d%s",
		    WEXITSTATUS(status), WEXITSTATUS(status) == 127 ?
		    " (command not found)" : "");
		goto done;
	}
	/* One trailing line end, as $(...) would strip (but only one: a
	 * password may end in blanks). */
	if (len > 0 && buf[len - 1] == '\n') {
		buf[--len] = '\0';
		if (len > 0 && buf[len - 1] == '\r')
			buf[--len] = '\0';
	}
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	buf = NULL;
	ret = 0;
done:
	close(fds[0]);
	if (buf != NULL)
		xfree_secret(buf, cap);
	return ret;
}

/*
 * Decodes base64 (as Emacs's base64-decode-string: the standard alphabet,
 * padding optional, line breaks allowed). Returns the bytes (the caller
 * frees them with xfree_secret(*out, *outlen)) or -1.
 */
static int
base64_decode(const char *s, unsigned char **out, size_t *outlen)
{
	EVP_ENCODE_CTX *ctx;
	size_t n = strlen(s);
	unsigned char *buf;
	int len = 0, fin = 0, ok;

	*out = NULL;
	*outlen = 0;
	if (n == 0 || n > (size_t)SECRETCMD_INPUT_MAX * 2)
		return -1;
	if ((ctx = EVP_ENCODE_CTX_new()) == NULL)
		return -1;
	buf = xmalloc(n);
	EVP_DecodeInit(ctx);
	ok = EVP_DecodeUpdate(ctx, buf, &len, (const unsigned char *)s,
	    (int)n) != -1 && EVP_DecodeFinal(ctx, buf + len, &fin) == 1;
	EVP_ENCODE_CTX_free(ctx);
	if (!ok || len + fin == 0) {
		xfree_secret(buf, n);
		return -1;
	}
	*out = buf;
	*outlen = (size_t)(len + fin);
	return 0;
}

int
secretcmd_gpg_token(const char *token, char **out, size_t *outlen,
    char *err, size_t errlen)
{
	const char *argv[] = { "gpg", "--quiet", "--batch", "--no-tty",
		"--decrypt", NULL };
	unsigned char *msg;
	size_t msglen, cap;
	int r;

	*out = NULL;
	*outlen = 0;
	if (strncmp(token, "gpg:", 4) != 0 ||
	    base64_decode(token + 4, &msg, &msglen) == -1) {
		snprintf(err, errlen, "not valid base64 after \"gpg:\"");
		return -1;
	}
	cap = strlen(token + 4);
	r = secretcmd_exec_input(argv, SECRETCMD_TIMEOUT, msg, msglen, out,
	    outlen, err, errlen);
	xfree_secret(msg, cap);
	return r;
}

int
secretcmd_shell(const char *cmd, unsigned timeout, char **out,
    size_t *outlen, char *err, size_t errlen)
{
	const char *argv[] = { "/bin/sh", "-c", cmd, NULL };

	return secretcmd_exec(argv, timeout, out, outlen, err, errlen);
}

/* ---- on the worker pool ---- */

struct secretcmd_job {
	char *cmd;
	unsigned timeout;
	secretcmd_done_fn *done;
	void *arg;
	char *out;
	size_t outlen;
	int rc;
	char err[256];
};

static void
secretcmd_work(void *arg)
{
	struct secretcmd_job *j = arg;

	j->rc = secretcmd_shell(j->cmd, j->timeout, &j->out, &j->outlen,
	    j->err, sizeof(j->err));
}

static void
secretcmd_done(void *arg)
{
	struct secretcmd_job *j = arg;

	if (j->rc == 0)
		j->done(j->out, j->outlen, NULL, j->arg);
	else
		j->done(NULL, 0, j->err, j->arg);
	if (j->out != NULL)
		xfree_secret(j->out, j->outlen + 1);
	xfree_secret_str(j->cmd);
	free(j);
}

void
secretcmd_run(struct worker *w, const char *cmd, unsigned timeout,
    secretcmd_done_fn *done, void *arg)
{
	struct secretcmd_job *j;

	j = xcalloc(1, sizeof(*j));
	j->cmd = xstrdup(cmd);
	j->timeout = timeout;
	j->done = done;
	j->arg = arg;
	worker_run(w, secretcmd_work, secretcmd_done, j);
}
