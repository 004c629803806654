/*
 * libFuzzer target for the SMTP server's sessions (smtp_server.c): the
 * input is everything a client sends, commands, DATA with its dot-stuffing
 * and BDAT chunks included, fed to a real session over a socketpair with
 * a real spool (committed messages are removed again). The replies must
 * be well-formed: CRLF lines of a 2xx-5xx code and a space or a dash.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "config.h"
#include "envelope.h"
#include "log.h"
#include "queue.h"
#include "smtp_server.h"

/* How long one input may keep a session busy. */
#define INPUT_SECS 2.0

static struct event_base *base;
static struct queue *q;
static struct smtp_server *srv;

static void
queued_cb(struct envelope *env, void *arg)
{
	queue_remove(q, env->id, NULL, NULL);
	envelope_free(env);
}

static void
setup(void)
{
	struct smtp_server_params params;
	struct config *cfg;
	char spool[64], err[512], text[1024];
	const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

	log_init("fuzz_smtp_server", 0);
	signal(SIGPIPE, SIG_IGN);
	if (evthread_use_pthreads() == -1 || (base = event_base_new()) == NULL)
		abort();
	snprintf(spool, sizeof(spool), "%s/fuzz_smtp_server.XXXXXX", dir);
	if (mkdtemp(spool) == NULL)
		abort();
	snprintf(text, sizeof(text),
	    "hostname = \"mx.test\";\n"
	    "spool = \"%s\";\n"
	    "limits = { max_line = 512; max_message_size = 4096; "
	    "max_recipients = 3; max_errors = 5; max_sessions = 4; "
	    "idle_timeout = 5; };\n"
	    "relays = { cap = { type = \"maildir\"; path = \"%s/md\"; }; };\n",
	    spool, spool);
	if ((cfg = config_parse_string(text, "fuzz.conf", err,
	    sizeof(err))) == NULL ||
	    (q = queue_open(base, spool, SPOOL_SYNC_FSYNC, 0, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "fuzz_smtp_server: %s\n", err);
		abort();
	}
	memset(&params, 0, sizeof(params));
	params.cfg = cfg;
	params.queue = q;
	params.queued = queued_cb;
	if ((srv = smtp_server_new(base, &params)) == NULL)
		abort();
}

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Every complete line of out is a reply line: "ddd" then ' ' or '-' or
 * the end, the code 200 to 599, ending in CRLF with no other CR or LF. */
static void
check_replies(const char *out, size_t len)
{
	const char *p = out, *end = out + len, *crlf;

	while (p < end && (crlf = memmem(p, (size_t)(end - p), "\r\n", 2))) {
		size_t n = (size_t)(crlf - p);

		assert(n >= 3);
		assert(p[0] >= '2' && p[0] <= '5');
		assert(p[1] >= '0' && p[1] <= '9' && p[2] >= '0' && p[2] <= '9');
		assert(n == 3 || p[3] == ' ' || p[3] == '-');
		assert(memchr(p, '\r', n) == NULL && memchr(p, '\n', n) == NULL);
		p = crlf + 2;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_un sun;
	struct evbuffer *out;
	char buf[8192];
	double deadline;
	size_t sent = 0;
	int sv[2], eof = 0;
	ssize_t n;

	if (base == NULL)
		setup();
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
	    sv) == -1)
		abort();
	smtp_server_accept(srv, sv[1], (struct sockaddr *)&sun, sizeof(sun),
	    NULL);
	out = evbuffer_new();
	deadline = now() + INPUT_SECS;
	while (!eof && now() < deadline) {
		if (sent < size) {
			n = send(sv[0], data + sent, size - sent, MSG_NOSIGNAL);
			if (n > 0)
				sent += (size_t)n;
			else if (errno != EAGAIN)
				sent = size; /* the server closed */
			if (sent == size)
				shutdown(sv[0], SHUT_WR);
		}
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		while ((n = read(sv[0], buf, sizeof(buf))) > 0)
			evbuffer_add(out, buf, (size_t)n);
		if (n == 0)
			eof = 1;
	}
	check_replies((const char *)evbuffer_pullup(out, -1),
	    evbuffer_get_length(out));
	evbuffer_free(out);
	close(sv[0]);
	/* Let the session and any commit finish before the next input. */
	deadline = now() + INPUT_SECS;
	while (smtp_server_sessions(srv) > 0 && now() < deadline)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	return 0;
}
