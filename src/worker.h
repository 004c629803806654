/*
 * A small pool of threads for blocking work (fsync, Maildir delivery, ...)
 * that must never run on the event loop. work() runs on a pool thread;
 * done() then runs on the loop thread. Requires evthread_use_pthreads()
 * before the event base is created.
 */
#ifndef SMARTHOST_WORKER_H
#define SMARTHOST_WORKER_H

#include <event2/event.h>

struct worker;

typedef void (*worker_work_fn)(void *arg);
typedef void (*worker_done_fn)(void *arg);

/* Starts nthreads threads; fatal() if threads cannot be created. */
struct worker *worker_new(struct event_base *base, unsigned nthreads);
/* Queues a job; jobs may run concurrently and complete in any order. */
void worker_run(struct worker *w, worker_work_fn work, worker_done_fn done,
    void *arg);
/* Waits for queued jobs to finish and their done() to run on the calling
 * (loop) thread, then joins threads and frees w. Accepts NULL. */
void worker_free(struct worker *w);

#endif
