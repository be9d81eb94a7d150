// Whole-file replacement that survives a crash at any point: the rename is the commit point, and
// the directory fsync makes the rename itself durable.
#include "metadata/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <memory>
#include <string_view>

#include "imaged/common/crash_point.h"
#include "imaged/common/unique_fd.h"

namespace imaged::metadata {

namespace {

struct SplitPath {
  std::string dir;
  std::string base;
};

SplitPath Split(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return {".", path};
  return {slash == 0 ? "/" : path.substr(0, slash), path.substr(slash + 1)};
}

AtomicWriteAction Ask(const AtomicWriteHooks* hooks, AtomicWriteStep step) {
  if (hooks == nullptr || !hooks->before_step) return AtomicWriteAction::kContinue;
  return hooks->before_step(step);
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

Result<void> WriteAll(int fd, std::span<const uint8_t> data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write");
    }
    if (n == 0) return MakeError(EIO, "write returned 0");
    done += static_cast<size_t>(n);
  }
  return {};
}

}  // namespace

Result<void> FsyncDirectory(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return ErrnoError("open directory \"{}\"", dir);
  if (::fsync(fd.get()) != 0) return ErrnoError("fsync directory \"{}\"", dir);
  return {};
}

Result<void> AtomicWriteFile(const std::string& path, std::span<const uint8_t> data, mode_t mode,
                             const AtomicWriteHooks* hooks) {
  const SplitPath sp = Split(path);
  if (sp.base.empty()) return MakeError(EINVAL, "atomic write \"{}\": no file name", path);
  // Keep the temp name under NAME_MAX whatever the target's length.
  std::string tmpl = sp.dir + "/" + kTempFilePrefix + sp.base.substr(0, 200) + ".XXXXXX";

  UniqueFd fd;
  bool temp_exists = false;
  // Removes the temp file unless the write got past the rename (or "crashed").
  struct Cleanup {
    std::string* name;
    bool* exists;
    ~Cleanup() {
      if (*exists) ::unlink(name->c_str());
    }
  } cleanup{&tmpl, &temp_exists};

  auto step = [&](AtomicWriteStep s) -> Result<void> {
    switch (Ask(hooks, s)) {
      case AtomicWriteAction::kContinue:
        return {};
      case AtomicWriteAction::kFail:
        return MakeError(EIO, "atomic write \"{}\": {} (injected failure)", path, StepName(s));
      case AtomicWriteAction::kCrash:
        temp_exists = false;  // a killed process cleans nothing up
        return MakeError(EINTR, "atomic write \"{}\": simulated crash before {}", path,
                         StepName(s));
    }
    return {};
  };

  IMAGED_TRY(step(AtomicWriteStep::kCreateTemp));
  // mkostemp opens with O_CREAT|O_EXCL and a unique name, so concurrent writers never share one.
  fd.reset(::mkostemp(tmpl.data(), O_CLOEXEC));
  if (!fd) return ErrnoError("atomic write \"{}\": create temp file in \"{}\"", path, sp.dir);
  temp_exists = true;
  if (::fchmod(fd.get(), mode) != 0) return ErrnoError("atomic write \"{}\": fchmod", path);

  IMAGED_TRY(step(AtomicWriteStep::kWrite));
  IMAGED_TRY_CTX(WriteAll(fd.get(), data), "atomic write \"{}\"", path);

  IMAGED_TRY(step(AtomicWriteStep::kFsyncFile));
  if (::fsync(fd.get()) != 0) return ErrnoError("atomic write \"{}\": fsync", path);
  if (::close(fd.release()) != 0) return ErrnoError("atomic write \"{}\": close", path);
  IMAGED_CRASH_POINT("atomic.temp_written");

  IMAGED_TRY(step(AtomicWriteStep::kRename));
  if (::rename(tmpl.c_str(), path.c_str()) != 0) {
    return ErrnoError("atomic write \"{}\": rename from \"{}\"", path, tmpl);
  }
  temp_exists = false;
  IMAGED_CRASH_POINT("atomic.renamed");

  // Past the commit point: the new content is visible; a failure here only means it may not yet
  // be durable, which the caller should still hear about.
  IMAGED_TRY(step(AtomicWriteStep::kFsyncDir));
  IMAGED_TRY_CTX(FsyncDirectory(sp.dir), "atomic write \"{}\"", path);
  return {};
}

Result<std::vector<uint8_t>> ReadWholeFile(const std::string& path, size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open \"{}\"", path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("stat \"{}\"", path);
  if (!S_ISREG(st.st_mode)) return MakeError(EINVAL, "read \"{}\": not a regular file", path);
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return MakeError(EFBIG, "read \"{}\": {} bytes exceeds the limit of {}", path, st.st_size,
                     max_bytes);
  }
  std::vector<uint8_t> out;
  out.reserve(static_cast<size_t>(st.st_size));
  // Read until EOF rather than trusting st_size, but never keep more than max_bytes.
  uint8_t buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read \"{}\"", path);
    }
    if (n == 0) break;
    if (static_cast<size_t>(n) > max_bytes - out.size()) {
      return MakeError(EFBIG, "read \"{}\": grew beyond the limit of {} bytes", path, max_bytes);
    }
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

Result<size_t> CleanupTempFiles(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return ErrnoError("open directory \"{}\"", dir);
  const std::string_view prefix = kTempFilePrefix;
  size_t removed = 0;
  errno = 0;
  while (dirent* ent = ::readdir(d.get())) {
    std::string_view name = ent->d_name;
    if (name.substr(0, prefix.size()) != prefix) continue;
    if (::unlinkat(::dirfd(d.get()), ent->d_name, 0) != 0 && errno != ENOENT) {
      return ErrnoError("remove temp file \"{}/{}\"", dir, name);
    }
    ++removed;
    errno = 0;
  }
  if (errno != 0) return ErrnoError("read directory \"{}\"", dir);
  if (removed > 0) IMAGED_TRY(FsyncDirectory(dir));
  return removed;
}

}  // namespace imaged::metadata
