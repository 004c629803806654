/*
 * What several test suites need around the modules under test: removing a
 * scratch directory, and stopping the queue machinery in the daemon's
 * order. Criterion-free, so it links into every test.
 */
#ifndef SMARTHOST_TEST_FIXTURE_H
#define SMARTHOST_TEST_FIXTURE_H

struct queue;
struct scheduler;
struct worker;

/* Removes dir and everything below it; NULL or "" does nothing. */
void fixture_rmtree(const char *dir);
/*
 * Frees *w, *q and *s (any may be NULL) in the daemon's teardown order:
 * the worker and the queue first, because their pending callbacks drain
 * into the scheduler, then the scheduler. Sets each to NULL.
 */
void fixture_stop(struct worker **w, struct queue **q, struct scheduler **s);

#endif
