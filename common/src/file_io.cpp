#include "imaged/common/file_io.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "imaged/common/crash_point.h"

namespace imaged {

// ---- positioned I/O ----

Result<void> FullPWrite(int fd, const void* data, size_t length, uint64_t offset) {
  const char* p = static_cast<const char*>(data);
  while (length > 0) {
    ssize_t n = ::pwrite(fd, p, length, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("pwrite {} bytes at {}", length, offset);
    if (n == 0) return MakeError(EIO, "pwrite at {}: wrote nothing", offset);
    p += n;
    length -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Ok();
}

Result<void> FullPRead(int fd, void* data, size_t length, uint64_t offset) {
  char* p = static_cast<char*>(data);
  while (length > 0) {
    ssize_t n = ::pread(fd, p, length, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("pread {} bytes at {}", length, offset);
    if (n == 0) return MakeError(EIO, "pread at {}: unexpected end of file", offset);
    p += n;
    length -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Ok();
}

// ---- zeros ----

std::span<const uint8_t> ZeroChunk() {
  static uint8_t* const buffer = [] {
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(4096, kZeroChunk));
    if (p) std::memset(p, 0, kZeroChunk);
    return p;
  }();
  if (!buffer) return {};
  return {buffer, kZeroChunk};
}

Result<void> WriteZeros(uint64_t offset, uint64_t length, const ZeroWriter& write,
                        const Progress& progress) {
  const auto zeros = ZeroChunk();
  if (zeros.empty()) return MakeError(ENOMEM, "allocate {} bytes of zeros", kZeroChunk);
  uint64_t done = 0;
  while (done < length) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), length - done));
    IMAGED_TRY(write(zeros.first(n), offset + done));
    done += n;
    if (progress && !progress(done, length)) return MakeError(ECANCELED, "writing zeros");
  }
  return Ok();
}

Result<void> WriteZerosToFd(int fd, uint64_t offset, uint64_t length, std::string_view what,
                            const Progress& progress) {
  return WriteZeros(
      offset, length,
      [&](std::span<const uint8_t> zeros, uint64_t at) -> Result<void> {
        IMAGED_TRY_CTX(FullPWrite(fd, zeros.data(), zeros.size(), at), "write zeros to {}", what);
        return Ok();
      },
      progress);
}

// ---- paths ----

std::string Dirname(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  const auto slash = path.rfind('/');
  if (slash == std::string_view::npos) return ".";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

std::string Basename(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  const auto slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

bool IsTempFileName(std::string_view name) {
  return name.size() > kTempFilePrefix.size() && name.starts_with(kTempFilePrefix);
}

// ---- Directory ----

namespace {

const char* FileTypeName(mode_t mode) {
  if (S_ISLNK(mode)) return "a symlink";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISCHR(mode)) return "a character device";
  return "not a regular file";
}

Error NotRegular(const std::string& path, mode_t mode) {
  return MakeError(S_ISLNK(mode) ? ELOOP : EINVAL,
                   "\"{}\" is {}; imaged only uses regular files here and never follows links",
                   path, FileTypeName(mode));
}

// Six random characters for a temp name; uniqueness is enforced by O_EXCL anyway.
std::string RandomSuffix() {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  uint8_t bytes[6] = {};
  if (::getrandom(bytes, sizeof(bytes), GRND_NONBLOCK) != static_cast<ssize_t>(sizeof(bytes))) {
    const uint64_t mix = static_cast<uint64_t>(::getpid()) * 0x9E3779B97F4A7C15ull ^
                         static_cast<uint64_t>(reinterpret_cast<uintptr_t>(bytes));
    std::memcpy(bytes, &mix, sizeof(bytes));
  }
  std::string s(6, 'x');
  for (size_t i = 0; i < s.size(); ++i) s[i] = kAlphabet[bytes[i] % (sizeof(kAlphabet) - 1)];
  return s;
}

Result<void> WriteAll(int fd, std::span<const uint8_t> data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("write");
    if (n == 0) return MakeError(EIO, "write returned 0");
    done += static_cast<size_t>(n);
  }
  return Ok();
}

const char* StepName(AtomicWriteStep step) {
  switch (step) {
    case AtomicWriteStep::kCreateTemp:
      return "create temp file";
    case AtomicWriteStep::kWrite:
      return "write";
    case AtomicWriteStep::kFsyncFile:
      return "fsync";
    case AtomicWriteStep::kRename:
      return "rename";
    case AtomicWriteStep::kFsyncDir:
      return "fsync directory";
  }
  return "?";
}

}  // namespace

Result<Directory> Directory::Open(const std::string& path, bool create) {
  if (path.empty()) return MakeError(EINVAL, "open directory: empty path");
  if (create) {
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    if (ec) return MakeError(ec.value(), "create directory \"{}\"", path);
  }
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return ErrnoError("open directory \"{}\"", path);
  std::string normalized = path;
  while (normalized.size() > 1 && normalized.back() == '/') normalized.pop_back();
  return Directory(std::make_shared<const UniqueFd>(std::move(fd)), std::move(normalized));
}

std::string Directory::PathOf(std::string_view name) const {
  if (path_ == "/") return "/" + std::string(name);
  return path_ + "/" + std::string(name);
}

Result<void> Directory::CheckName(std::string_view name) const {
  if (!fd_) return MakeError(EBADF, "\"{}\": directory is not open", name);
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos ||
      name.find('\0') != std::string_view::npos) {
    return MakeError(EINVAL, "\"{}\" is not a file name in \"{}\"", name, path_);
  }
  return Ok();
}

Result<std::optional<struct stat>> Directory::Stat(std::string_view name) const {
  IMAGED_TRY(CheckName(name));
  struct stat st {};
  const std::string n(name);
  if (::fstatat(fd(), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return std::optional<struct stat>();
    return ErrnoError("stat \"{}\"", PathOf(name));
  }
  return std::optional<struct stat>(st);
}

bool Directory::Exists(std::string_view name) const {
  auto st = Stat(name);
  return !st || st->has_value();
}

Result<UniqueFd> Directory::OpenFile(std::string_view name, int flags, mode_t mode) const {
  IMAGED_TRY(CheckName(name));
  const std::string path = PathOf(name);
  // Look first, so that a device or FIFO is refused without ever being opened; the fstat
  // below closes the race with a file swapped in between.
  if (auto st = IMAGED_TRY(Stat(name)); st && !S_ISREG(st->st_mode)) {
    return NotRegular(path, st->st_mode);
  }
  const std::string n(name);
  UniqueFd file(::openat(fd(), n.c_str(), flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode));
  if (!file) {
    if (errno == ELOOP)
      return MakeError(ELOOP, "\"{}\" is a symlink; imaged never follows links", path);
    return ErrnoError("open \"{}\"", path);
  }
  struct stat st {};
  if (::fstat(file.get(), &st) != 0) return ErrnoError("stat \"{}\"", path);
  if (!S_ISREG(st.st_mode)) return NotRegular(path, st.st_mode);
  const int status = ::fcntl(file.get(), F_GETFL);
  if (status < 0 || ::fcntl(file.get(), F_SETFL, status & ~O_NONBLOCK) != 0) {
    return ErrnoError("fcntl \"{}\"", path);
  }
  return file;
}

Result<bool> Directory::RemoveFile(std::string_view name) const {
  auto st = IMAGED_TRY(Stat(name));
  if (!st) return false;
  const std::string path = PathOf(name);
  if (!S_ISREG(st->st_mode)) return NotRegular(path, st->st_mode);
  const std::string n(name);
  if (::unlinkat(fd(), n.c_str(), 0) != 0) {
    if (errno == ENOENT) return false;
    return ErrnoError("remove \"{}\"", path);
  }
  return true;
}

Result<std::vector<std::string>> Directory::List() const {
  if (!fd_) return MakeError(EBADF, "list: directory is not open");
  // A description of our own: readdir moves its offset, which a dup would share.
  int own = ::openat(fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (own < 0) return ErrnoError("open directory \"{}\"", path_);
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::fdopendir(own), ::closedir);
  if (!dir) {
    ::close(own);
    return ErrnoError("open directory \"{}\"", path_);
  }
  std::vector<std::string> names;
  errno = 0;
  while (dirent* e = ::readdir(dir.get())) {
    std::string_view n = e->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
    errno = 0;
  }
  if (errno != 0) return ErrnoError("read directory \"{}\"", path_);
  std::sort(names.begin(), names.end());
  return names;
}

Result<void> Directory::Sync() const {
  if (!fd_) return MakeError(EBADF, "fsync: directory is not open");
  if (::fsync(fd()) != 0 && errno != EINVAL) return ErrnoError("fsync directory \"{}\"", path_);
  return Ok();
}

Result<void> Directory::AtomicWrite(std::string_view name, std::span<const uint8_t> data,
                                    const AtomicWriteOptions& options) const {
  IMAGED_TRY(CheckName(name));
  const std::string path = PathOf(name);
  bool crashed = false;  // a simulated crash cleans nothing up
  auto step = [&](AtomicWriteStep s) -> Result<void> {
    const auto action = options.hooks && options.hooks->before_step ? options.hooks->before_step(s)
                                                                    : AtomicWriteAction::kContinue;
    if (action == AtomicWriteAction::kFail) {
      return MakeError(EIO, "atomic write \"{}\": {} (injected failure)", path, StepName(s));
    }
    if (action == AtomicWriteAction::kCrash) {
      crashed = true;
      return MakeError(EINTR, "atomic write \"{}\": simulated crash before {}", path, StepName(s));
    }
    return Ok();
  };
  // Keeps the temp name under NAME_MAX whatever the target's length.
  const std::string stem = std::string(kTempFilePrefix) + std::string(name.substr(0, 200)) + ".";
  std::string temp;
  bool temp_exists = false;
  struct Cleanup {
    const Directory& dir;
    const std::string& temp;
    const bool& exists;
    const bool& crashed;
    ~Cleanup() {
      if (exists && !crashed) ::unlinkat(dir.fd(), temp.c_str(), 0);
    }
  } cleanup{*this, temp, temp_exists, crashed};

  IMAGED_TRY(step(AtomicWriteStep::kCreateTemp));
  UniqueFd fd;
  for (int attempt = 0; attempt < 100 && !fd; ++attempt) {
    temp = stem + RandomSuffix();
    fd.reset(::openat(this->fd(), temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd && errno != EEXIST) return ErrnoError("atomic write \"{}\": create temp file", path);
  }
  if (!fd) return ErrnoError("atomic write \"{}\": create temp file", path);
  temp_exists = true;
  if (::fchmod(fd.get(), options.mode) != 0) return ErrnoError("atomic write \"{}\": fchmod", path);

  IMAGED_TRY(step(AtomicWriteStep::kWrite));
  IMAGED_TRY_CTX(WriteAll(fd.get(), data), "atomic write \"{}\"", path);
  IMAGED_TRY(step(AtomicWriteStep::kFsyncFile));
  if (::fsync(fd.get()) != 0) return ErrnoError("atomic write \"{}\": fsync", path);
  if (::close(fd.release()) != 0) return ErrnoError("atomic write \"{}\": close", path);
  IMAGED_CRASH_POINT("atomic.temp_written");

  IMAGED_TRY(step(AtomicWriteStep::kRename));
  const std::string target(name);
  const unsigned flags = options.replace ? 0 : RENAME_NOREPLACE;
  if (::renameat2(this->fd(), temp.c_str(), this->fd(), target.c_str(), flags) != 0) {
    if (errno != EINVAL || options.replace) {
      return ErrnoError("atomic write \"{}\": rename from \"{}\"", path, temp);
    }
    // The filesystem lacks RENAME_NOREPLACE: check, then rename. Callers that create hold the
    // name's lock, so only a foreign writer could slip in between.
    if (Exists(name)) return MakeError(EEXIST, "atomic write \"{}\": it exists", path);
    if (::renameat(this->fd(), temp.c_str(), this->fd(), target.c_str()) != 0) {
      return ErrnoError("atomic write \"{}\": rename from \"{}\"", path, temp);
    }
  }
  temp_exists = false;
  IMAGED_CRASH_POINT("atomic.renamed");

  // Past the commit point: the new content is visible; a failure here only means it may not
  // be durable yet, which the caller still needs to hear.
  IMAGED_TRY(step(AtomicWriteStep::kFsyncDir));
  IMAGED_TRY_CTX(Sync(), "atomic write \"{}\"", path);
  return Ok();
}

namespace {

Result<std::vector<uint8_t>> ReadAllBounded(int fd, const std::string& path, size_t max_bytes) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return ErrnoError("stat \"{}\"", path);
  if (!S_ISREG(st.st_mode)) return MakeError(EINVAL, "read \"{}\": not a regular file", path);
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return MakeError(EFBIG, "read \"{}\": {} bytes exceeds the limit of {}", path, st.st_size,
                     max_bytes);
  }
  std::vector<uint8_t> out;
  out.reserve(static_cast<size_t>(st.st_size));
  // Until EOF rather than trusting st_size, but never more than max_bytes.
  uint8_t buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read \"{}\"", path);
    if (n == 0) break;
    if (static_cast<size_t>(n) > max_bytes - out.size()) {
      return MakeError(EFBIG, "read \"{}\": grew beyond the limit of {} bytes", path, max_bytes);
    }
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

}  // namespace

Result<std::vector<uint8_t>> Directory::ReadFile(std::string_view name, size_t max_bytes) const {
  UniqueFd fd = IMAGED_TRY(OpenFile(name, O_RDONLY));
  return ReadAllBounded(fd.get(), PathOf(name), max_bytes);
}

Result<size_t> Directory::RemoveTempFiles() const {
  size_t removed = 0;
  std::optional<Error> first;
  for (const auto& name : IMAGED_TRY(List())) {
    if (!IsTempFileName(name)) continue;
    auto r = RemoveFile(name);
    if (!r) {
      if (!first) first = std::move(r).error();
      continue;
    }
    if (*r) ++removed;
  }
  if (removed > 0) IMAGED_TRY(Sync());
  if (first) return std::move(*first);
  return removed;
}

Result<std::vector<uint8_t>> ReadWholeFile(const std::string& path, size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return ErrnoError("open \"{}\"", path);
  return ReadAllBounded(fd.get(), path, max_bytes);
}

}  // namespace imaged
