/*
 * A fixed pool of threads for blocking work. Jobs wait in a FIFO guarded by
 * one mutex; a pool thread runs work(), then moves the job to the done list
 * and wakes the loop with event_active(), which libevent makes thread-safe
 * once evthread_use_pthreads() ran before the base was created. done() only
 * ever runs on the loop thread (or in worker_free, on its caller's thread),
 * so callers never need locks of their own for what done() touches.
 *
 * Invariants: every job is on exactly one of the pending list, a pool
 * thread's stack (counted in running) or the done list; w->stopping is only
 * set by worker_free once nothing is pending or running.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "log.h"
#include "worker.h"
#include "xmalloc.h"

struct worker_job {
	struct worker_job *next;
	worker_work_fn work;
	worker_done_fn done;
	void *arg;
};

/* A singly linked FIFO. */
struct job_list {
	struct worker_job *head;
	struct worker_job **tailp;
};

struct worker {
	struct event_base *base;
	struct event *ev_done;	/* activated when done is non-empty */
	pthread_t *threads;
	unsigned nthreads;

	pthread_mutex_t mtx;
	pthread_cond_t cv_job;	/* pending became non-empty, or stopping */
	pthread_cond_t cv_idle;	/* a job finished (worker_free waits) */
	struct job_list pending;
	struct job_list done;
	unsigned running;
	int stopping;
};

static void
job_list_init(struct job_list *l)
{
	l->head = NULL;
	l->tailp = &l->head;
}

static void
job_list_push(struct job_list *l, struct worker_job *j)
{
	j->next = NULL;
	*l->tailp = j;
	l->tailp = &j->next;
}

static struct worker_job *
job_list_pop(struct job_list *l)
{
	struct worker_job *j;

	if ((j = l->head) == NULL)
		return NULL;
	if ((l->head = j->next) == NULL)
		l->tailp = &l->head;
	return j;
}

/* Takes the whole list, leaving l empty. */
static struct worker_job *
job_list_take(struct job_list *l)
{
	struct worker_job *j = l->head;

	job_list_init(l);
	return j;
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct worker_job *j;
	int wake;

	pthread_mutex_lock(&w->mtx);
	for (;;) {
		while (w->pending.head == NULL && !w->stopping)
			pthread_cond_wait(&w->cv_job, &w->mtx);
		if ((j = job_list_pop(&w->pending)) == NULL)
			break;	/* stopping and nothing left */
		w->running++;
		pthread_mutex_unlock(&w->mtx);

		j->work(j->arg);

		pthread_mutex_lock(&w->mtx);
		w->running--;
		/* One activation covers a burst: only wake on empty->full. */
		wake = w->done.head == NULL;
		job_list_push(&w->done, j);
		pthread_cond_broadcast(&w->cv_idle);
		if (wake)
			event_active(w->ev_done, EV_READ, 0);
	}
	pthread_mutex_unlock(&w->mtx);
	return NULL;
}

/* Runs done() of every finished job on the calling thread. */
static void
worker_run_done(struct worker *w)
{
	struct worker_job *j, *next;

	pthread_mutex_lock(&w->mtx);
	j = job_list_take(&w->done);
	pthread_mutex_unlock(&w->mtx);
	for (; j != NULL; j = next) {
		next = j->next;
		if (j->done != NULL)
			j->done(j->arg);
		free(j);
	}
}

static void
worker_done_cb(evutil_socket_t fd, short events, void *arg)
{
	worker_run_done(arg);
}

struct worker *
worker_new(struct event_base *base, unsigned nthreads)
{
	struct worker *w;
	unsigned i;
	int error;

	if (nthreads == 0)
		nthreads = 1;
	w = xcalloc(1, sizeof(*w));
	w->base = base;
	job_list_init(&w->pending);
	job_list_init(&w->done);
	if ((error = pthread_mutex_init(&w->mtx, NULL)) != 0 ||
	    (error = pthread_cond_init(&w->cv_job, NULL)) != 0 ||
	    (error = pthread_cond_init(&w->cv_idle, NULL)) != 0) {
		errno = error;
		fatal("%s: pthread init", __func__);
	}
	if ((w->ev_done = event_new(base, -1, 0, worker_done_cb, w)) == NULL)
		fatalx("%s: event_new failed", __func__);
	w->threads = xcalloc(nthreads, sizeof(*w->threads));
	for (i = 0; i < nthreads; i++) {
		if ((error = pthread_create(&w->threads[i], NULL, worker_main,
		    w)) != 0) {
			errno = error;
			fatal("%s: pthread_create", __func__);
		}
		w->nthreads++;
	}
	return w;
}

void
worker_run(struct worker *w, worker_work_fn work, worker_done_fn done,
    void *arg)
{
	struct worker_job *j;

	j = xcalloc(1, sizeof(*j));
	j->work = work;
	j->done = done;
	j->arg = arg;
	pthread_mutex_lock(&w->mtx);
	if (w->stopping)
		fatalx("%s: called after worker_free", __func__);
	job_list_push(&w->pending, j);
	pthread_cond_signal(&w->cv_job);
	pthread_mutex_unlock(&w->mtx);
}

void
worker_free(struct worker *w)
{
	unsigned i;
	int busy;

	if (w == NULL)
		return;
	/*
	 * Drain: wait until nothing is queued or running, run the done()
	 * callbacks here, and repeat, because a done() may queue follow-up
	 * work (an update after a delivery, say) that must not be lost.
	 */
	for (;;) {
		pthread_mutex_lock(&w->mtx);
		while (w->pending.head != NULL || w->running > 0)
			pthread_cond_wait(&w->cv_idle, &w->mtx);
		busy = w->done.head != NULL;
		if (!busy) {
			w->stopping = 1;
			pthread_cond_broadcast(&w->cv_job);
		}
		pthread_mutex_unlock(&w->mtx);
		if (!busy)
			break;
		worker_run_done(w);
	}
	for (i = 0; i < w->nthreads; i++)
		pthread_join(w->threads[i], NULL);
	event_free(w->ev_done);
	pthread_cond_destroy(&w->cv_idle);
	pthread_cond_destroy(&w->cv_job);
	pthread_mutex_destroy(&w->mtx);
	free(w->threads);
	free(w);
}
