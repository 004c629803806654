/*
 * The metrics and health endpoint: a small HTTP server (libevent's evhttp)
 * on the daemon's loop, for a Prometheus scrape or a container's health
 * probe, when metrics_listen is set.
 *
 *   GET /metrics  200, the exposition `smarthostctl metrics` prints
 *                 (metrics_collect), Content-Type text/plain;
 *                 version=0.0.4
 *   GET /health   200 "ok" while the daemon serves; 503 and a one-line
 *                 reason while it stops, or when the spool's queue
 *                 directory is not writable by the daemon
 *   other paths   404; methods other than GET and HEAD 405
 *
 * Bounded: request line and headers together at most HTTPD_MAX_HEADERS
 * bytes, no request body, HTTPD_TIMEOUT seconds per connection, at most
 * HTTPD_MAX_CONNECTIONS connections (beyond that new ones wait in the
 * kernel's backlog). A peer outside loopback and allow_networks gets 403.
 */
#ifndef SMARTHOST_HTTPD_H
#define SMARTHOST_HTTPD_H

#include <stddef.h>

#include <event2/event.h>

#include "config.h"

#define HTTPD_MAX_HEADERS 8192
#define HTTPD_TIMEOUT 10
#define HTTPD_MAX_CONNECTIONS 16

struct httpd;
struct scheduler;
struct smtp_server;

/*
 * Binds cfg->metrics_address and cfg->metrics_port (before the privilege
 * drop, like the SMTP listeners) and attaches the server to base; it
 * answers 503 until httpd_start. Returns NULL with a message in err.
 * The caller checks that cfg->metrics_address is set.
 */
struct httpd *httpd_open(struct event_base *base, const struct config *cfg,
    char *err, size_t errlen);
/* Serves the metrics of sched and srv from now on. */
void httpd_start(struct httpd *h, struct scheduler *sched,
    const struct smtp_server *srv);
/* Peers are checked against cfg's allow_networks from now on. */
void httpd_set_config(struct httpd *h, const struct config *cfg);
/* The daemon is stopping: /health answers 503 from now on. */
void httpd_stopping(struct httpd *h);
/* "127.0.0.1:9125" or "[::1]:9125", the bound address and port. */
const char *httpd_describe(const struct httpd *h);
/* Closes the socket and every connection. Accepts NULL. */
void httpd_free(struct httpd *h);

#endif
