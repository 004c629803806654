/*
 * The daemon's side of the maildrop: imports the files smarthost-postdrop
 * left (dropfile.h) at start, whenever one appears (inotify) and on a
 * periodic rescan as a safety net.
 *
 * Each file is validated before anything of it is believed: opened with
 * O_NOFOLLOW (a symbolic link is never followed), a regular file with one
 * link, not larger than the limits allow, a complete file of the current
 * format whose claimed uid is its owner. It is then fed to an in-process
 * SMTP session (smtp_server_accept_local) as that uid, so the sender
 * policy, limits and Received: header apply exactly as for an SMTP client,
 * and removed only once the queue answered 250 (committed).
 *
 * A file that fails validation is moved to <spool>/corrupt with a log
 * line. A valid file whose message the session refuses permanently (5xx:
 * the sender policy, an unknown local recipient, a message too large) is
 * returned to the submitting user: a non-delivery notification to their
 * local name (aliases apply) or rewritten address is queued and the file
 * removed; only when no address takes it does the file go to corrupt/
 * too (see smarthostd(8)). A temporary failure (4xx, the daemon stopping)
 * leaves the file for the next scan.
 */
#ifndef SMARTHOST_MAILDROP_H
#define SMARTHOST_MAILDROP_H

#include <event2/event.h>

#include "config.h"
#include "smtp_server.h"
#include "worker.h"

struct maildrop;

/* Seconds between rescans when no inotify event arrives. */
#define MAILDROP_RESCAN 60

/*
 * Opens cfg->maildrop and <cfg->spool>/corrupt (both must exist), starts
 * watching and schedules the first scan at once. The blocking steps of
 * an import (listing, checking, moving aside, removing, the owner's passwd
 * entry) run on w's threads, one at a time. Returns NULL with a message
 * in err.
 */
struct maildrop *maildrop_open(struct event_base *base, struct worker *w,
    const struct config *cfg, struct smtp_server *srv, char *err,
    size_t errlen);
/* New imports use cfg's limits from now on (the directory stays). */
void maildrop_set_config(struct maildrop *md, const struct config *cfg);
/* Stops watching and starting imports; an import in progress finishes. */
void maildrop_stop(struct maildrop *md);
/* Drops an import in progress (its file stays) and frees; with a blocking
 * step under way, that step's completion frees, so call it before
 * worker_free(). Accepts NULL. */
void maildrop_free(struct maildrop *md);

#endif
