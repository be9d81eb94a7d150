#include "imaged/common/sysfs.h"

#include <fcntl.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <charconv>
#include <climits>

#include "imaged/common/unique_fd.h"

namespace imaged::sysfs {

namespace {
// sysfs attributes are at most a page; loop/backing_file is a path (PATH_MAX). A larger read
// buffer costs nothing and keeps a sysfs file we did not expect from being cut silently.
constexpr size_t kMaxAttribute = 64 * 1024;
}  // namespace

Result<std::string> ReadFd(int fd, const std::string& path_for_errors) {
  std::string s(kMaxAttribute, '\0');
  size_t got = 0;
  while (got < s.size()) {
    ssize_t n = ::pread(fd, s.data() + got, s.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read {}", path_for_errors);
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  s.resize(got);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

Result<std::string> Read(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("read {}", path);
  return ReadFd(fd.get(), path);
}

Result<uint64_t> ReadU64(const std::string& path) {
  const std::string s = IMAGED_TRY(Read(path));
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) {
    return MakeError(EINVAL, "{}: not a number: \"{}\"", path, s);
  }
  return v;
}

std::string DevBlockDir(dev_t dev) {
  return fmt::format("/sys/dev/block/{}:{}", major(dev), minor(dev));
}

namespace {

// A queue/ attribute of the device; a partition has no queue/ of its own, its disk's applies.
Result<uint64_t> QueueAttribute(dev_t dev, const char* name) {
  const std::string base = DevBlockDir(dev);
  auto value = ReadU64(base + "/queue/" + name);
  if (!value) value = ReadU64(base + "/../queue/" + name);
  return value;
}

}  // namespace

Result<uint32_t> MinimumIoSize(dev_t dev) {
  const uint64_t v = IMAGED_TRY(QueueAttribute(dev, "minimum_io_size"));
  if (v > UINT32_MAX) return MakeError(EINVAL, "{}: odd minimum_io_size {}", DevBlockDir(dev), v);
  return static_cast<uint32_t>(v);
}

Result<uint32_t> AlignmentOffset(dev_t dev) {
  const uint64_t v = IMAGED_TRY(ReadU64(DevBlockDir(dev) + "/alignment_offset"));
  if (v > UINT32_MAX) return MakeError(EINVAL, "{}: odd alignment_offset {}", DevBlockDir(dev), v);
  return static_cast<uint32_t>(v);
}

Result<uint32_t> LogicalBlockSize(dev_t dev) {
  const std::string base = DevBlockDir(dev);
  auto size = QueueAttribute(dev, "logical_block_size");
  if (!size) return std::move(size).error();
  if (*size < 512 || *size > 65536 || (*size & (*size - 1)) != 0) {
    return MakeError(EINVAL, "{}: odd logical block size {}", base, *size);
  }
  return static_cast<uint32_t>(*size);
}

Result<std::string> BlockDeviceName(dev_t dev) {
  const std::string link = DevBlockDir(dev);
  char target[PATH_MAX];
  ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
  if (n <= 0) {
    const int code = errno == ENOENT ? ENODEV : errno;
    return MakeError(code ? code : ENODEV, "device {}:{} is not a block device (no {})", major(dev),
                     minor(dev), link);
  }
  std::string_view t(target, static_cast<size_t>(n));
  const auto slash = t.rfind('/');
  std::string name(slash == std::string_view::npos ? t : t.substr(slash + 1));
  if (name.empty()) return MakeError(ENODEV, "{} does not name a block device", link);
  return name;
}

}  // namespace imaged::sysfs
