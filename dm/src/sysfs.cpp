#include "sysfs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "imaged/common/unique_fd.h"

namespace imaged::dm::internal {

namespace {
// sysfs attributes are at most a page; backing_file is a path (PATH_MAX).
constexpr size_t kMaxAttribute = 8192;
}  // namespace

std::optional<std::string> ReadSysfsFd(int fd) {
  std::string s(kMaxAttribute, '\0');
  size_t got = 0;
  while (got < s.size()) {
    ssize_t n = pread(fd, s.data() + got, s.size() - got, static_cast<off_t>(got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  s.resize(got);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::optional<std::string> ReadSysfs(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return std::nullopt;
  return ReadSysfsFd(fd.get());
}

}  // namespace imaged::dm::internal
