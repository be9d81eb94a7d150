#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "internal.h"

namespace imaged::manager {
namespace {

// Opens and locks; a lock that is not held() when non-blocking and busy.
Result<FileLock> Lock(const std::string& path, bool exclusive, bool block) {
  const int op = (exclusive ? LOCK_EX : LOCK_SH) | (block ? 0 : LOCK_NB);
  for (;;) {
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) return ErrnoError("open lock \"{}\"", path);
    int rc;
    do {
      rc = flock(fd.get(), op);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      if (errno == EWOULDBLOCK && !block) return FileLock();
      return ErrnoError("lock \"{}\"", path);
    }
    // The holder before us may have deleted the file (Delete removes `<name>.lock` under its
    // lock); then our lock is on an orphaned inode and a newcomer could lock a fresh one.
    struct stat held, now;
    if (fstat(fd.get(), &held) != 0) return ErrnoError("stat lock \"{}\"", path);
    if (stat(path.c_str(), &now) == 0 && now.st_dev == held.st_dev && now.st_ino == held.st_ino) {
      return FileLock::Adopt(std::move(fd));
    }
  }
}

}  // namespace

FileLock FileLock::Adopt(UniqueFd fd) {
  return FileLock(std::move(fd));
}

Result<FileLock> FileLock::Acquire(const std::string& path, bool exclusive) {
  return Lock(path, exclusive, true);
}

Result<FileLock> FileLock::TryAcquire(const std::string& path, bool exclusive) {
  return Lock(path, exclusive, false);
}

}  // namespace imaged::manager
