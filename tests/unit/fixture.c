/* Shared test scaffolding; see fixture.h. */
#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>

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
