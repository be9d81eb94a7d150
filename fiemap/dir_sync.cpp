#include <fcntl.h>
#include <unistd.h>

#include <imaged/common/unique_fd.h>

#include "internal.h"

namespace imaged::fiemap::internal {

std::string Dirname(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string Basename(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

Result<void> FsyncDir(const std::string& dir) {
  UniqueFd fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return ErrnoError("open directory \"{}\"", dir);
  // vfat and some others refuse fsync on a directory; the entry is then as durable as it gets.
  if (fsync(fd.get()) != 0 && errno != EINVAL) return ErrnoError("fsync directory \"{}\"", dir);
  return Ok();
}

Result<void> FsyncParentDir(const std::string& path) {
  return FsyncDir(Dirname(path));
}

}  // namespace imaged::fiemap::internal
