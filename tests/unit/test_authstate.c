/*
 * authstate.c: the pure parse/format pair, normal forms, learn/forget, and
 * persistence in a mkdtemp directory, saved both synchronously and through
 * the worker pool, then read back as a restart would.
 * Also secretcmd.c, which shares the "off the loop, on the worker" shape.
 */
#define _GNU_SOURCE 1

#include <sys/stat.h>
#include <sys/types.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include <event2/event.h>
#include <event2/thread.h>

#include "authstate.h"
#include "log.h"
#include "secretcmd.h"
#include "worker.h"
#include "xmalloc.h"

static void
setup(void)
{
	log_init("test_authstate", getenv("TEST_DEBUG") != NULL);
}

TestSuite(authstate, .init = setup, .timeout = 30);
TestSuite(secretcmd, .init = setup, .timeout = 30);

struct warns {
	unsigned n;
	unsigned lines[8];
};

static void
warn_cb(unsigned line, const char *msg, void *arg)
{
	struct warns *w = arg;

	if (w->n < 8)
		w->lines[w->n] = line;
	w->n++;
}

static void
collect(const char *host, const char *port, void *arg)
{
	char *buf = arg;
	size_t n = strlen(buf);

	snprintf(buf + n, 1024 - n, "%s/%s;", host, port);
}

Test(authstate, parse_skips_comments_blanks_and_bad_lines)
{
	const char text[] =
	    "# header\n"
	    "\n"
	    "smtp.example.com 587\n"
	    "  Mail.Example.ORG\t465  \r\n"
	    "   # indented comment\n"
	    "onlyhost\n"
	    "a b c\n"
	    "smtp.example.com 587\n"       /* duplicate */
	    "relay.test submission\n"      /* service name: number */
	    "2001:DB8::25 25\n"
	    "x.test\x01 25\n"
	    "last.test 2525";              /* no final newline */
	struct authstate *as = authstate_new();
	struct warns w = { 0 };
	char got[1024] = "";
	unsigned bad;

	bad = authstate_parse(as, text, sizeof(text) - 1, warn_cb, &w);
	cr_assert_eq(bad, 3);
	cr_assert_eq(w.n, 3);
	cr_assert_eq(w.lines[0], 6);
	cr_assert_eq(w.lines[1], 7);
	cr_assert_eq(w.lines[2], 11);
	cr_assert_eq(authstate_list(as, collect, got), 5);
	cr_assert_str_eq(got, "smtp.example.com/587;mail.example.org/465;"
	    "relay.test/587;2001:db8::25/25;last.test/2525;");
	authstate_free(as);
}

Test(authstate, format_round_trips)
{
	struct authstate *as = authstate_new(), *back = authstate_new();
	char a[1024] = "", b[1024] = "", *text;
	size_t len;

	cr_assert_eq(authstate_learn(as, "SMTP.Example.com", "submission"), 1);
	cr_assert_eq(authstate_learn(as, "[::1]", "25"), 1);
	cr_assert_eq(authstate_learn(as, "smtp.example.com", "587"), 0,
	    "same entry in another spelling");
	cr_assert_eq(authstate_learn(as, "bad host", "25"), -1);
	cr_assert_eq(authstate_learn(as, "", "25"), -1);
	text = authstate_format(as, &len);
	cr_assert_eq(strlen(text), len);
	cr_assert_eq(text[0], '#');
	cr_assert_not_null(strstr(text, "\nsmtp.example.com 587\n::1 25\n"));
	cr_assert_eq(authstate_parse(back, text, len, NULL, NULL), 0);
	authstate_list(as, collect, a);
	authstate_list(back, collect, b);
	cr_assert_str_eq(a, b);
	free(text);
	authstate_free(as);
	authstate_free(back);
}

Test(authstate, has_compares_normal_forms)
{
	struct authstate *as = authstate_new();

	authstate_learn(as, "smtp.example.com", "587");
	cr_assert_eq(authstate_has(as, "SMTP.EXAMPLE.COM", "587"), 1);
	cr_assert_eq(authstate_has(as, "smtp.example.com", "submission"), 1);
	cr_assert_eq(authstate_has(as, "smtp.example.com", "465"), 0);
	cr_assert_eq(authstate_has(as, "example.com", "587"), 0);
	cr_assert_eq(authstate_has(NULL, "example.com", "587"), 0);
	authstate_free(as);
}

Test(authstate, forget_host_or_host_port)
{
	struct authstate *as = authstate_new();
	char got[1024] = "";

	authstate_learn(as, "a.test", "587");
	authstate_learn(as, "a.test", "465");
	authstate_learn(as, "b.test", "587");
	authstate_learn(as, "2001:db8::1", "25");
	authstate_learn(as, "c.test", "25");
	cr_assert_eq(authstate_forget(as, "a.test:465"), 0);
	cr_assert_eq(authstate_forget(as, "a.test:465"), -1, "already gone");
	cr_assert_eq(authstate_forget(as, "nobody.test"), -1);
	cr_assert_eq(authstate_forget(as, "B.TEST"), 0, "any port, any case");
	cr_assert_eq(authstate_forget(as, "[2001:db8::1]:25"), 0);
	cr_assert_eq(authstate_forget(as, "c.test 25"), 0);
	cr_assert_eq(authstate_forget(as, ""), -1);
	cr_assert_eq(authstate_list(as, collect, got), 1);
	cr_assert_str_eq(got, "a.test/587;");
	authstate_learn(as, "2001:db8::2", "25");
	cr_assert_eq(authstate_forget(as, "2001:db8::2"), 0, "bare v6 host");
	authstate_free(as);
}

/* ---- persistence ---- */

static char dir[64];

static void
mkdir_setup(void)
{
	setup();
	snprintf(dir, sizeof(dir), "/tmp/test_authstate.XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
}

static void
mkdir_teardown(void)
{
	fixture_rmtree(dir);
}

TestSuite(persist, .init = mkdir_setup, .fini = mkdir_teardown,
    .timeout = 30);

static char *
slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	size_t n;

	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	buf = xcalloc(1, 65536);
	n = fread(buf, 1, 65535, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

Test(persist, creates_dir_saves_and_reloads_sync)
{
	char state[128], path[256], err[256], got[1024] = "", *text;
	struct authstate *as;
	struct stat st;

	snprintf(state, sizeof(state), "%s/state", dir);
	as = authstate_open(NULL, state, err, sizeof(err));
	cr_assert_not_null(as, "%s", err);
	cr_assert_eq(stat(state, &st), 0);
	cr_assert(S_ISDIR(st.st_mode));
	cr_assert_eq(st.st_mode & 0777, 0700);
	cr_assert_eq(authstate_list(as, NULL, NULL), 0, "missing file: empty");
	snprintf(path, sizeof(path), "%s/%s", state, AUTHSTATE_FILE);
	cr_assert_eq(access(path, F_OK), -1, "nothing learned, nothing saved");

	cr_assert_eq(authstate_learn(as, "smtp.example.com", "587"), 1);
	cr_assert_eq(authstate_learn(as, "mx.example.org", "25"), 1);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);
	text = slurp(path);
	cr_assert_not_null(strstr(text, "\nsmtp.example.com 587\n"
	    "mx.example.org 25\n"), "%s", text);
	free(text);
	cr_assert_eq(authstate_forget(as, "mx.example.org"), 0);
	authstate_free(as);

	/* a restart */
	as = authstate_open(NULL, state, err, sizeof(err));
	cr_assert_not_null(as, "%s", err);
	authstate_list(as, collect, got);
	cr_assert_str_eq(got, "smtp.example.com/587;");
	cr_assert(authstate_has(as, "smtp.example.com", "587"));
	authstate_free(as);
	snprintf(path, sizeof(path), "%s/%s.tmp", state, AUTHSTATE_FILE);
	cr_assert_eq(access(path, F_OK), -1, "no temporary file left");
}

Test(persist, open_refuses_unusable_dir)
{
	char state[128], err[256];

	snprintf(state, sizeof(state), "%s/missing/state", dir);
	cr_assert_null(authstate_open(NULL, state, err, sizeof(err)));
	cr_assert_not_null(strstr(err, "cannot create"), "%s", err);
}

static struct event_base *base;

static int
saved(void *as)
{
	return !authstate_saving(as);
}

static int
run_until_saved(struct authstate *as, double secs)
{
	return fixture_run_until(base, saved, as, secs, 10);
}

Test(persist, saves_through_the_worker_in_order)
{
	char state[128], err[256], got[1024] = "";
	struct authstate *as;
	struct worker *w;
	char host[32];
	int i;

	cr_assert_eq(evthread_use_pthreads(), 0);
	base = event_base_new();
	w = worker_new(base, 2);
	snprintf(state, sizeof(state), "%s/state", dir);
	as = authstate_open(w, state, err, sizeof(err));
	cr_assert_not_null(as, "%s", err);
	/* Many changes while saves are in flight: the last file wins. */
	for (i = 0; i < 20; i++) {
		snprintf(host, sizeof(host), "h%d.test", i);
		authstate_learn(as, host, "587");
	}
	authstate_forget(as, "h0.test");
	cr_assert(run_until_saved(as, 10), "save never finished");
	authstate_free(as);
	/* freeing during a save is safe too */
	as = authstate_open(w, state, err, sizeof(err));
	cr_assert_not_null(as, "%s", err);
	cr_assert_eq(authstate_list(as, NULL, NULL), 19);
	authstate_learn(as, "late.test", "25");
	authstate_free(as);
	worker_free(w);	/* drains the save and frees the set */

	as = authstate_open(NULL, state, err, sizeof(err));
	cr_assert_not_null(as, "%s", err);
	cr_assert_eq(authstate_list(as, collect, got), 20);
	cr_assert(strncmp(got, "h1.test/587;", 12) == 0, "%s", got);
	cr_assert(authstate_has(as, "late.test", "25"));
	cr_assert_not(authstate_has(as, "h0.test", "587"));
	authstate_free(as);
	event_base_free(base);
}

/* ---- secretcmd ---- */

Test(secretcmd, captures_stdout_strips_one_newline)
{
	char *out, err[256];
	size_t len;

	cr_assert_eq(secretcmd_shell("printf 'pa ss\\n\\n'; echo noise >&2",
	    5, &out, &len, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(len, 6);
	cr_assert_str_eq(out, "pa ss\n", "only one newline goes");
	xfree_secret(out, len + 1);
	cr_assert_eq(secretcmd_shell("printf 'tok\\r\\n'", 5, &out, &len,
	    err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(out, "tok");
	xfree_secret(out, len + 1);
	cr_assert_eq(secretcmd_shell("true", 5, &out, &len, err,
	    sizeof(err)), 0);
	cr_assert_eq(len, 0);
	cr_assert_str_eq(out, "");
	xfree_secret(out, len + 1);
}

Test(secretcmd, failures_say_why_without_output)
{
	char *out = (char *)1, err[256];
	size_t len;

	cr_assert_eq(secretcmd_shell("echo hunter2; exit 3", 5, &out, &len,
	    err, sizeof(err)), -1);
	cr_assert_null(out);
	cr_assert_str_eq(err, "exited with status 3");
	cr_assert_eq(secretcmd_shell("no-such-command-here-x", 5, &out, &len,
	    err, sizeof(err)), -1);
	cr_assert_not_null(strstr(err, "127"), "%s", err);
	cr_assert_eq(secretcmd_shell("head -c 70000 /dev/zero", 5, &out,
	    &len, err, sizeof(err)), -1);
	cr_assert_not_null(strstr(err, "longer than"), "%s", err);
	cr_assert_null(strstr(err, "hunter2"));
}

static int
alive(pid_t pid)
{
	char path[64], buf[512], *p;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* "pid (comm) S ...": the state follows the last ')' */
	if ((p = strrchr(buf, ')')) == NULL || p[1] == '\0')
		return 0;
	return p[2] != 'Z' && p[2] != 'X';
}

Test(secretcmd, timeout_kills_the_process_group)
{
	char *out, err[256], pidfile[64];
	struct timespec t0, t1;
	size_t len;
	FILE *f;
	pid_t bg;
	int fd;

	snprintf(pidfile, sizeof(pidfile), "/tmp/test_secretcmd.XXXXXX");
	fd = mkstemp(pidfile);
	cr_assert_neq(fd, -1);
	close(fd);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	{
		char cmd[256];

		/* a grandchild that would hold stdout open for a minute */
		snprintf(cmd, sizeof(cmd), "sleep 60 & echo $! > %s; wait",
		    pidfile);
		cr_assert_eq(secretcmd_shell(cmd, 1, &out, &len, err,
		    sizeof(err)), -1);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	cr_assert_lt(t1.tv_sec - t0.tv_sec, 5);
	cr_assert_not_null(strstr(err, "timed out after 1s"), "%s", err);
	f = fopen(pidfile, "r");
	cr_assert_not_null(f);
	cr_assert_eq(fscanf(f, "%d", &bg), 1);
	fclose(f);
	unlink(pidfile);
	/* the background sleep died with the group: gone, or a zombie
	 * waiting for a reaper that may not reap */
	for (int i = 0; i < 100 && alive(bg); i++)
		usleep(10000);
	cr_assert_not(alive(bg), "grandchild %d survived", (int)bg);
}

static int async_done;
static char async_out[64];
static char async_err[256];

static void
async_cb(const char *out, size_t outlen, const char *err, void *arg)
{
	async_done++;
	if (out != NULL)
		snprintf(async_out, sizeof(async_out), "%s", out);
	if (err != NULL)
		snprintf(async_err, sizeof(async_err), "%s", err);
}

Test(secretcmd, run_reports_on_the_loop)
{
	struct timeval slice = { 0, 10000 };
	struct worker *w;
	int i;

	cr_assert_eq(evthread_use_pthreads(), 0);
	base = event_base_new();
	w = worker_new(base, 1);
	secretcmd_run(w, "echo s3cret", 5, async_cb, NULL);
	cr_assert_eq(async_done, 0, "never from inside the call");
	for (i = 0; i < 500 && async_done == 0; i++) {
		event_base_loopexit(base, &slice);
		event_base_dispatch(base);
	}
	cr_assert_eq(async_done, 1);
	cr_assert_str_eq(async_out, "s3cret");
	secretcmd_run(w, "exit 1", 5, async_cb, NULL);
	worker_free(w);	/* drains: done still runs */
	cr_assert_eq(async_done, 2);
	cr_assert_str_eq(async_err, "exited with status 1");
	event_base_free(base);
}
