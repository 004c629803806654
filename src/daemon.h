/*
 * systemd glue: sd_notify messages (a no-op outside systemd) and the
 * watchdog. Socket activation lives in listener.c.
 */
#ifndef SMARTHOST_DAEMON_H
#define SMARTHOST_DAEMON_H

#include <event2/event.h>

void daemon_ready(const char *status);
void daemon_reloading(void);
void daemon_stopping(void);
void daemon_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/*
 * Turns core dumps off for this process (RLIMIT_CORE 0, not dumpable):
 * passwords and SASL state live in its memory. Called first thing by the
 * daemon and by smarthostctl. Returns 0, or -1 with errno.
 */
int daemon_disable_core_dumps(void);
/* Starts WATCHDOG=1 pings at half WATCHDOG_USEC when systemd asks for them. */
void daemon_watchdog_start(struct event_base *base);
/*
 * Under systemd (NOTIFY_SOCKET set), every secs seconds calls
 * fill(buf, len, arg) and sends what it wrote as STATUS= when it differs
 * from the last one sent: `systemctl status` then shows the queue and the
 * relays. Nothing outside systemd.
 */
typedef void (*daemon_status_fill)(char *buf, size_t len, void *arg);
void daemon_status_start(struct event_base *base, unsigned secs,
    daemon_status_fill fill, void *arg);

#endif
