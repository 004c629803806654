/*
 * Delivery into a Maildir (the maildir relay type, for development and the
 * quick start): the message is written to tmp/ under a unique name with
 * LF line ends, fsynced, renamed into new/, and new/ is fsynced, so a
 * message that a reader can see is complete and survives a crash.
 * Everything here blocks: call it from a worker thread, never the loop.
 */
#ifndef SMARTHOST_MAILDIR_H
#define SMARTHOST_MAILDIR_H

#include <stddef.h>
#include <sys/types.h>

/* Creates path and its cur/, new/ and tmp/ (mode 0700) where missing; the
 * parent of path must exist. Returns 0, or -1 with errno set and a reason
 * naming the directory in err. */
int maildir_create(const char *path, char *err, size_t errlen);

/*
 * Delivers size bytes of fd from offset (read with pread; the body of a
 * queued message, CRLF lines) into the Maildir at path, creating it as
 * maildir_create() does. CRLF becomes LF; bare CRs are kept. hostname goes
 * into the unique file name. Returns 0 and the file's name (relative to
 * new/) in name, or -1 with errno set (EACCES, ENOSPC, EIO, ...) and a
 * reason in err; then no file is left in tmp/ or new/.
 */
int maildir_deliver(const char *path, int fd, off_t offset, off_t size,
    const char *hostname, char *name, size_t namelen, char *err,
    size_t errlen);

/*
 * Streaming CRLF to LF conversion: feed the input in pieces of any size,
 * then finish. out must have room for len + 1 bytes (convert) or 1 byte
 * (finish). Returns the bytes written.
 */
struct maildir_lf {
	int saw_cr; /* the previous byte was a CR not yet written */
};

void maildir_lf_init(struct maildir_lf *c);
size_t maildir_lf_convert(struct maildir_lf *c, const char *in, size_t len,
    char *out);
size_t maildir_lf_finish(struct maildir_lf *c, char *out);

#endif
