#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "internal.h"

namespace imaged::manager {

Result<FileLock> FileLock::Lock(const Directory& dir, std::string_view name, bool exclusive,
                                bool block) {
  const int op = (exclusive ? LOCK_EX : LOCK_SH) | (block ? 0 : LOCK_NB);
  for (;;) {
    UniqueFd fd = IMAGED_TRY_CTX(dir.OpenFile(name, O_RDWR | O_CREAT, 0600), "lock");
    int rc;
    do {
      rc = flock(fd.get(), op);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      if (errno == EWOULDBLOCK && !block) return FileLock();
      return ErrnoError("lock \"{}\"", dir.PathOf(name));
    }
    // The holder before us may have removed the file under its lock; then our lock is on an
    // orphaned inode and a newcomer could lock a fresh one: start again.
    struct stat held {};
    if (fstat(fd.get(), &held) != 0) return ErrnoError("stat lock \"{}\"", dir.PathOf(name));
    auto now = dir.Stat(name);
    if (now && *now && (*now)->st_dev == held.st_dev && (*now)->st_ino == held.st_ino) {
      return FileLock(std::move(fd));
    }
  }
}

Result<FileLock> FileLock::Acquire(const Directory& dir, std::string_view name, bool exclusive) {
  return Lock(dir, name, exclusive, true);
}

Result<FileLock> FileLock::TryAcquire(const Directory& dir, std::string_view name, bool exclusive) {
  return Lock(dir, name, exclusive, false);
}

}  // namespace imaged::manager
