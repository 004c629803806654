/*
 * What several test suites need around the modules under test: removing a
 * scratch directory, stopping the queue machinery in the daemon's order,
 * running the event loop until something happened, a closed port. Criterion-free, so it links into every test.
 */
#ifndef SMARTHOST_TEST_FIXTURE_H
#define SMARTHOST_TEST_FIXTURE_H

struct event_base;
struct queue;
struct scheduler;
struct worker;

/* Removes dir and everything below it; NULL or "" does nothing. */
void fixture_rmtree(const char *dir);
/* The entries of dir but "." and "..", or -1 when it cannot be read. */
int fixture_count_dir(const char *dir);
/*
 * Frees *w, *q and *s (any may be NULL) in the daemon's teardown order:
 * the worker and the queue first, because their pending callbacks drain
 * into the scheduler, then the scheduler. Sets each to NULL.
 */
void fixture_stop(struct worker **w, struct queue **q, struct scheduler **s);
/*
 * Runs base in slices of slice_ms milliseconds until cond(arg) holds
 * (checked before each slice) or secs seconds have passed. Returns 1 when
 * cond held, 0 on the timeout.
 */
int fixture_run_until(struct event_base *base, int (*cond)(void *),
    void *arg, double secs, long slice_ms);
/* A TCP port on 127.0.0.1 that nobody listens on now, or -1. */
int fixture_closed_port(void);

#endif
