/*
 * Whole-buffer file I/O and the directory sync that makes a rename
 * durable: the few lines every writer of files needs and would otherwise
 * write again, each slightly differently.
 */
#ifndef SMARTHOST_FILEIO_H
#define SMARTHOST_FILEIO_H

#include <stddef.h>
#include <sys/types.h>

/* write(2) all of buf, retrying on EINTR and short writes. Returns 0, or
 * -1 with errno (ENOSPC for a write that makes no progress). */
int fileio_write_all(int fd, const void *buf, size_t len);
/* pwrite(2) all of buf at off; as fileio_write_all. */
int fileio_pwrite_all(int fd, const void *buf, size_t len, off_t off);
/* pread(2) exactly len bytes at off. Returns 0, or -1 with errno (EIO
 * when the file ends first). */
int fileio_pread_all(int fd, void *buf, size_t len, off_t off);
/* fsync(2) the directory path, so that renames and creations in it are
 * durable. Returns 0, or -1 with errno. */
int fileio_fsync_dir(const char *path);

#endif
