/*
 * Listening sockets: TCP (IPv4, IPv6) and Unix, from the config or from
 * systemd socket activation (sd_listen_fds), which takes precedence. Each
 * accepted connection is checked (address allow list) and handed to the
 * SMTP server.
 */
#ifndef SMARTHOST_LISTENER_H
#define SMARTHOST_LISTENER_H

#include <event2/event.h>

#include "config.h"
#include "smtp_server.h"

struct listeners;

/*
 * Binds every configured listener (or adopts the sockets systemd passed),
 * before privileges are dropped. Refuses a non-loopback TCP address unless
 * cfg->allow names networks. Returns NULL with a message in err.
 * Unix socket files are created with the configured mode and group.
 */
struct listeners *listeners_open(const struct config *cfg, char *err,
    size_t errlen);
/* Starts accepting into srv. */
int listeners_start(struct listeners *l, struct event_base *base,
    struct smtp_server *srv);
/* New connections are checked against cfg from now on. */
void listeners_set_config(struct listeners *l, const struct config *cfg);
/* Stops accepting (shutdown) but keeps nothing else. */
void listeners_stop(struct listeners *l);
/* Closes sockets and removes Unix socket files we created. Accepts NULL. */
void listeners_free(struct listeners *l);
/* Number of sockets and a description of each, for READY status. */
size_t listeners_count(const struct listeners *l);
const char *listeners_describe(const struct listeners *l, size_t i);

#endif
