/*
 * systemd notification. sd_notify() is a no-op when NOTIFY_SOCKET is unset,
 * so none of this needs to know whether systemd is there.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "daemon.h"
#include "log.h"

void
daemon_ready(const char *status)
{
	sd_notifyf(0, "READY=1\nSTATUS=%s\nMAINPID=%lu", status,
	    (unsigned long)getpid());
}

void
daemon_reloading(void)
{
	sd_notify(0, "RELOADING=1");
}

void
daemon_stopping(void)
{
	sd_notify(0, "STOPPING=1");
}

void
daemon_status(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	sd_notifyf(0, "STATUS=%s", buf);
}

static void
watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	sd_notify(0, "WATCHDOG=1");
}

void
daemon_watchdog_start(struct event_base *base)
{
	static struct event *ev;
	struct timeval tv;
	uint64_t usec;

	if (ev != NULL || sd_watchdog_enabled(0, &usec) <= 0)
		return;
	/* Ping at half the interval, as sd_watchdog_enabled(3) advises. */
	usec /= 2;
	tv.tv_sec = (time_t)(usec / 1000000);
	tv.tv_usec = (suseconds_t)(usec % 1000000);
	ev = event_new(base, -1, EV_PERSIST, watchdog_cb, NULL);
	if (ev == NULL || event_add(ev, &tv) == -1)
		log_warnx("cannot start the systemd watchdog timer");
	else
		log_debug("watchdog ping every %lld.%06lds",
		    (long long)tv.tv_sec, (long)tv.tv_usec);
}

struct status_timer {
	daemon_status_fill fill;
	void *arg;
	char last[512];
};

static void
status_cb(evutil_socket_t fd, short what, void *arg)
{
	struct status_timer *st = arg;
	char buf[sizeof(st->last)];

	buf[0] = '\0';
	st->fill(buf, sizeof(buf), st->arg);
	if (strcmp(buf, st->last) == 0)
		return;
	memcpy(st->last, buf, sizeof(buf));
	sd_notifyf(0, "STATUS=%s", buf);
}

void
daemon_status_start(struct event_base *base, unsigned secs,
    daemon_status_fill fill, void *arg)
{
	static struct status_timer st;
	static struct event *ev;
	struct timeval tv = { (time_t)secs, 0 };

	if (ev != NULL || getenv("NOTIFY_SOCKET") == NULL)
		return;
	st.fill = fill;
	st.arg = arg;
	ev = event_new(base, -1, EV_PERSIST, status_cb, &st);
	if (ev == NULL || event_add(ev, &tv) == -1) {
		log_warnx("cannot start the systemd status timer");
		return;
	}
	status_cb(-1, 0, &st);
}

int
daemon_disable_core_dumps(void)
{
	struct rlimit rl = { 0, 0 };

	/*
	 * Not dumpable also keeps other processes of the same user from
	 * reading our memory through /proc or ptrace; root still can.
	 */
	if (setrlimit(RLIMIT_CORE, &rl) == -1)
		return -1;
	return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}
