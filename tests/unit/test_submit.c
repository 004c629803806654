/* Unit tests for sendmail's command line (submit_opts_parse), the choice
 * of the daemon's socket, and the postdrop call's exit handling. */
#include <sys/stat.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include "submit.h"

/* A writable copy of a NULL-terminated list, as main() gets it; kept
 * until the process (one per test) ends, since o points into it. */
static char **
mkargv(const char *const *src, int *argc)
{
	char **argv;
	int n = 0, i;

	while (src[n] != NULL)
		n++;
	argv = calloc((size_t)n + 1, sizeof(*argv));
	for (i = 0; i < n; i++)
		argv[i] = strdup(src[i]);
	*argc = n;
	return argv;
}

static struct submit_opts
parse_ok(const char *const *src)
{
	struct submit_opts o;
	char err[256], **argv;
	int argc;

	argv = mkargv(src, &argc);
	cr_assert_eq(submit_opts_parse(argc, argv, &o, err, sizeof(err)), 0,
	    "%s", err);
	return o;
}

static void
parse_fails(const char *const *src, const char *why)
{
	struct submit_opts o;
	char err[256], **argv;
	int argc;

	argv = mkargv(src, &argc);
	cr_assert_eq(submit_opts_parse(argc, argv, &o, err, sizeof(err)), -1);
	cr_assert(strstr(err, why) != NULL, "\"%s\" lacks \"%s\"", err, why);
}

Test(submit_opts, recipients_and_common_flags)
{
	const char *argv[] = { "/usr/sbin/sendmail", "-t", "-oi", "-f", "me@x",
		"-FMe Myself", "-Cconf", "a@x", "b@y", NULL };
	struct submit_opts o = parse_ok(argv);

	cr_assert_eq(o.mode, SUBMIT_DELIVER);
	cr_assert(o.extract);
	cr_assert(o.ignore_dots);
	cr_assert_str_eq(o.sender, "me@x");
	cr_assert_str_eq(o.fullname, "Me Myself");
	cr_assert_str_eq(o.config, "conf");
	cr_assert_eq(o.nrcpts, 2);
	cr_assert_str_eq(o.rcpts[0], "a@x");
	cr_assert_str_eq(o.rcpts[1], "b@y");
}

Test(submit_opts, grouped_letters_and_attached_arguments)
{
	const char *argv[] = { "sendmail", "-tiv", "-rbounce@x", "--", "-dash@x",
		NULL };
	struct submit_opts o = parse_ok(argv);

	cr_assert(o.extract && o.ignore_dots && o.verbose);
	cr_assert_str_eq(o.sender, "bounce@x");
	cr_assert_eq(o.nrcpts, 1);
	cr_assert_str_eq(o.rcpts[0], "-dash@x");
}

Test(submit_opts, default_keeps_dots_and_options_end_at_first_recipient)
{
	const char *argv[] = { "sendmail", "a@x", "-t", NULL };
	struct submit_opts o = parse_ok(argv);

	cr_assert_not(o.ignore_dots);
	cr_assert_not(o.extract);
	cr_assert_eq(o.nrcpts, 2);
}

Test(submit_opts, ignored_options_are_accepted)
{
	const char *argv[] = { "sendmail", "-B", "8BITMIME", "-N", "never", "-L",
		"tag", "-oem", "-odb", "-OErrorMode=m", "-U", "-G", "-n", "-m",
		"-Am", "-V", "envid", "-R", "hdrs", "-X", "/dev/null",
		"-h", "17", "-d0.1", "-ptest", "-bm", "a@x", NULL };
	struct submit_opts o = parse_ok(argv);

	cr_assert_eq(o.mode, SUBMIT_DELIVER);
	cr_assert_not(o.ignore_dots);
	cr_assert_eq(o.nrcpts, 1);
	cr_assert_str_eq(o.rcpts[0], "a@x");
}

/* The command lines real callers use. */
Test(submit_opts, real_callers)
{
	/* Debian's cron */
	const char *cron[] = { "/usr/sbin/sendmail", "-FCronDaemon", "-i",
		"-B8BITMIME", "-oem", "root", NULL };
	/* PHP's mail(), unattended-upgrades, logwatch */
	const char *php[] = { "/usr/sbin/sendmail", "-t", "-i", NULL };
	const char *uu[] = { "/usr/sbin/sendmail", "-oi", "-t", NULL };
	/* git send-email --envelope-sender */
	const char *git[] = { "sendmail", "-i", "-f", "a@x", "b@y", "c@z",
		NULL };
	struct submit_opts o;

	o = parse_ok(cron);
	cr_assert_str_eq(o.fullname, "CronDaemon");
	cr_assert(o.ignore_dots);
	cr_assert_eq(o.nrcpts, 1);
	cr_assert_str_eq(o.rcpts[0], "root");
	o = parse_ok(php);
	cr_assert(o.extract && o.ignore_dots && o.nrcpts == 0);
	o = parse_ok(uu);
	cr_assert(o.extract && o.ignore_dots && o.nrcpts == 0);
	o = parse_ok(git);
	cr_assert_str_eq(o.sender, "a@x");
	cr_assert_eq(o.nrcpts, 2);
}

Test(submit_opts, modes)
{
	const char *bp[] = { "sendmail", "-bp", NULL };
	const char *bs[] = { "sendmail", "-bs", NULL };
	const char *bi[] = { "sendmail", "-bi", NULL };
	const char *q[] = { "sendmail", "-q", NULL };
	const char *qr[] = { "sendmail", "-qRexample.org", NULL };
	const char *qi[] = { "sendmail", "-q30m", NULL };
	const char *mailq[] = { "/usr/bin/mailq", NULL };
	const char *mailqv[] = { "mailq", "-v", NULL };
	const char *na[] = { "/usr/bin/newaliases", NULL };
	const char *big_i[] = { "sendmail", "-I", NULL };

	cr_assert_eq(parse_ok(bp).mode, SUBMIT_QUEUE);
	cr_assert_eq(parse_ok(bs).mode, SUBMIT_SMTP);
	cr_assert_eq(parse_ok(bi).mode, SUBMIT_ALIASES);
	cr_assert_eq(parse_ok(q).mode, SUBMIT_FLUSH);
	cr_assert_eq(parse_ok(qr).mode, SUBMIT_FLUSH);
	cr_assert_eq(parse_ok(qi).mode, SUBMIT_NOTHING);
	cr_assert_eq(parse_ok(mailq).mode, SUBMIT_QUEUE);
	cr_assert_eq(parse_ok(mailqv).mode, SUBMIT_QUEUE);
	cr_assert_eq(parse_ok(na).mode, SUBMIT_ALIASES);
	cr_assert_eq(parse_ok(big_i).mode, SUBMIT_ALIASES);
}

Test(submit_opts, usage_errors)
{
	const char *unknown[] = { "sendmail", "-k", "a@x", NULL };
	const char *missing[] = { "sendmail", "-f", NULL };
	const char *mode[] = { "sendmail", "-bd", NULL };
	const char *extra[] = { "sendmail", "-bp", "a@x", NULL };
	const char *grouped[] = { "sendmail", "-tz", NULL };

	parse_fails(unknown, "unknown option -k");
	parse_fails(missing, "-f needs an argument");
	parse_fails(mode, "-bd is not supported");
	parse_fails(extra, "not with -bp");
	parse_fails(grouped, "unknown option -z");
}

Test(submit, listener_prefers_unix)
{
	char addr[] = "127.0.0.1", port[] = "2525", path[] = "/run/x.sock";
	struct listen_config l[2] = {
		{ .kind = LISTEN_TCP, .address = addr, .port = port },
		{ .kind = LISTEN_UNIX, .path = path },
	};
	struct config cfg = { .listen = l, .nlisten = 2 };

	cr_assert_eq(submit_listener(&cfg), &l[1]);
	cr_assert_str_eq(submit_listener_name(&l[1]), "unix:/run/x.sock");
	cfg.nlisten = 1;
	cr_assert_eq(submit_listener(&cfg), &l[0]);
	cr_assert_str_eq(submit_listener_name(&l[0]), "127.0.0.1:2525");
	cfg.nlisten = 0;
	cr_assert_null(submit_listener(&cfg));
}

Test(submit, unreachable_errors)
{
	cr_assert(submit_unreachable(ENOENT));
	cr_assert(submit_unreachable(ECONNREFUSED));
	cr_assert(submit_unreachable(EACCES));
	cr_assert_not(submit_unreachable(ETIMEDOUT));
	cr_assert_not(submit_unreachable(EMFILE));
}

/* A stand-in for smarthost-postdrop: records its arguments and input,
 * exits with the status given. */
static char *
fake_postdrop(const char *dir, int status)
{
	char *path;
	FILE *f;

	cr_assert_neq(asprintf(&path, "%s/postdrop", dir), -1);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fprintf(f, "#!/bin/sh\nprintf '%%s\\n' \"$@\" > '%s/args'\n"
	    "cat > '%s/input'\necho 'postdrop: said why' >&2\nexit %d\n",
	    dir, dir, status);
	fclose(f);
	chmod(path, 0755);
	return path;
}

static char *
slurp(const char *dir, const char *name)
{
	char path[512], *buf = calloc(1, 65536);
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	cr_assert_not_null(f = fopen(path, "r"));
	cr_assert_gt(fread(buf, 1, 65535, f), 0);
	fclose(f);
	return buf;
}

Test(submit, postdrop_gets_envelope_and_message)
{
	char dir[] = "/tmp/test_submit.XXXXXX", err[256], *pd, *s;
	char a[] = "a@x", b[] = "-b@y";
	char *rcpts[] = { a, b };
	struct submit_envelope env = { "me@x", rcpts, 2 };

	cr_assert_not_null(mkdtemp(dir));
	pd = fake_postdrop(dir, 0);
	cr_assert_eq(submit_postdrop(pd, "/etc/c.conf", &env,
	    "Subject: s\r\n\r\nb\r\n", 17, err, sizeof(err)), 0);
	s = slurp(dir, "args");
	cr_assert_str_eq(s, "-C\n/etc/c.conf\n-f\nme@x\n--\na@x\n-b@y\n");
	free(s);
	s = slurp(dir, "input");
	cr_assert_str_eq(s, "Subject: s\r\n\r\nb\r\n");
	free(s);
	free(pd);
	fixture_rmtree(dir);
}

Test(submit, postdrop_failure_is_passed_on)
{
	char dir[] = "/tmp/test_submit.XXXXXX", err[256], *pd;
	char a[] = "a@x";
	char *rcpts[] = { a };
	struct submit_envelope env = { "", rcpts, 1 };

	cr_assert_not_null(mkdtemp(dir));
	pd = fake_postdrop(dir, 75);
	cr_assert_eq(submit_postdrop(pd, NULL, &env, "x\r\n", 3, err,
	    sizeof(err)), 75);
	free(pd);
	cr_assert_eq(submit_postdrop("/nonexistent/postdrop", NULL, &env,
	    "x\r\n", 3, err, sizeof(err)), -1);
	cr_assert(strstr(err, "No such file") != NULL, "%s", err);
	fixture_rmtree(dir);
}
