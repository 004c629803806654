/* Shared test scaffolding; see fixture.h. */
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "fixture.h"
#include "queue.h"
#include "scheduler.h"
#include "worker.h"

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	remove(path);
	return 0;
}

void
fixture_rmtree(const char *dir)
{
	if (dir != NULL && dir[0] != '\0')
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int
fixture_count_dir(const char *dir)
{
	struct dirent *de;
	DIR *d;
	int n = 0;

	if ((d = opendir(dir)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 &&
		    strcmp(de->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

void
fixture_stop(struct worker **w, struct queue **q, struct scheduler **s)
{
	worker_free(*w);
	*w = NULL;
	queue_close(*q);
	*q = NULL;
	scheduler_free(*s);
	*s = NULL;
}

int
fixture_run_until(struct event_base *base, int (*cond)(void *), void *arg,
    double secs, long slice_ms)
{
	struct timeval slice = { slice_ms / 1000, (slice_ms % 1000) * 1000 };
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (cond(arg))
			return 1;
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >
		    secs)
			return 0;
		event_base_loopexit(base, &slice);
		event_base_dispatch(base);
	}
}

int
fixture_closed_port(void)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	int fd, port = -1;

	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) == -1)
		return -1;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sin, &sl) == 0)
		port = ntohs(sin.sin_port);
	close(fd);
	return port;
}
