/*
 * spoolcheck SPOOL: loads a spool with the daemon's own queue reader
 * (queue_open, queue_load, queue_body_open) and prints every message it
 * takes, one line each, for the crash-consistency test (crashstates.py):
 *
 *   M <id> <sender> <flags> <attempts> <rcpt>=<status>,... <body>
 *
 * sender, each rcpt and body in hex (so that any byte survives), status
 * the number of enum rcpt_status. What the reader refuses it logs on
 * stderr and moves to corrupt/, as the daemon would at start-up. Exits 0
 * after loading, 1 if the spool cannot be opened.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "envelope.h"
#include "fileio.h"
#include "log.h"
#include "queue.h"

struct ctx {
	struct queue *q;
	int failed;
};

static void
print_hex(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	size_t i;

	if (len == 0)
		putchar('-');
	for (i = 0; i < len; i++)
		printf("%02x", p[i]);
}

static void
each(struct envelope *env, void *arg)
{
	struct ctx *c = arg;
	char *body;
	size_t i;
	int fd;

	printf("M %s ", env->id);
	print_hex(env->sender, strlen(env->sender));
	printf(" %u %u ", env->flags, env->attempts);
	for (i = 0; i < env->nrcpts; i++) {
		if (i > 0)
			putchar(',');
		print_hex(env->rcpts[i].addr, strlen(env->rcpts[i].addr));
		printf("=%d", (int)env->rcpts[i].status);
	}
	putchar(' ');
	body = malloc((size_t)env->body_size + 1);
	if (body == NULL || (fd = queue_body_open(c->q, env)) == -1) {
		printf("ERROR\n");
		c->failed = 1;
		free(body);
		envelope_free(env);
		return;
	}
	if (fileio_pread_all(fd, body, (size_t)env->body_size,
	    env->body_offset) == -1) {
		printf("ERROR\n");
		c->failed = 1;
	} else {
		print_hex(body, (size_t)env->body_size);
		putchar('\n');
	}
	close(fd);
	free(body);
	envelope_free(env);
}

int
main(int argc, char *argv[])
{
	struct event_base *base;
	struct ctx c;
	char err[1024];

	if (argc != 2) {
		fprintf(stderr, "usage: spoolcheck SPOOL\n");
		return 2;
	}
	log_init("spoolcheck", 0);
	if ((base = event_base_new()) == NULL) {
		fprintf(stderr, "spoolcheck: cannot create an event base\n");
		return 1;
	}
	memset(&c, 0, sizeof(c));
	c.q = queue_open(base, argv[1], SPOOL_SYNC_FSYNC, 0, err, sizeof(err));
	if (c.q == NULL) {
		fprintf(stderr, "spoolcheck: %s\n", err);
		event_base_free(base);
		return 1;
	}
	queue_load(c.q, each, &c);
	fflush(stdout);
	queue_close(c.q);
	event_base_free(base);
	return c.failed ? 1 : 0;
}
