// File access for every library: full-length positioned I/O, the one zero writer, and Directory,
// the only way imaged opens, creates, replaces or removes a file inside its data and metadata
// dirs. Everything under a Directory is addressed by a single name relative to an open directory
// fd: a symlink, FIFO, device, socket or directory where a file should be is refused with an
// error that names it, never followed, opened (blocking) or truncated. Every replacement is
// atomic (temp file, fsync, rename, fsync of the directory).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "imaged/common/progress.h"
#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"

namespace imaged {

// ---- positioned I/O ----
// Transfers exactly `length` bytes (EINTR retried, short transfers continued). A write of 0
// bytes and a read that meets the end of the file are EIO.
Result<void> FullPWrite(int fd, const void* data, size_t length, uint64_t offset);
Result<void> FullPRead(int fd, void* data, size_t length, uint64_t offset);

// ---- zeros ----
// Zeros are written in chunks of this size: 4 KiB writes (AOSP) are an order of magnitude
// slower, and larger ones gain nothing measurable.
inline constexpr size_t kZeroChunk = 8 << 20;
// kZeroChunk zero bytes, 4 KiB aligned (usable with O_DIRECT), shared and never written.
// Empty when it could not be allocated.
std::span<const uint8_t> ZeroChunk();

// Writes one chunk of zeros at `offset` (the span's size is the length).
using ZeroWriter = std::function<Result<void>(std::span<const uint8_t> zeros, uint64_t offset)>;
// Makes [offset, offset + length) hold written zeros (never holes or unwritten extents, which a
// raw mapping cannot use) in kZeroChunk writes through `write`. Progress is (bytes written of
// `length`) after every chunk, the last one included.
Result<void> WriteZeros(uint64_t offset, uint64_t length, const ZeroWriter& write,
                        const Progress& progress = {});
// The same with pwrite() on `fd`; `what` names the target in errors.
Result<void> WriteZerosToFd(int fd, uint64_t offset, uint64_t length, std::string_view what,
                            const Progress& progress = {});

// ---- paths ----
std::string Dirname(std::string_view path);   // "/a/b" -> "/a", "b" -> ".", "/b" -> "/"
std::string Basename(std::string_view path);  // "/a/b/" -> "b"

// ---- atomic replacement ----
// Temp files of Directory::AtomicWrite are named `.imaged-tmp.<name>.XXXXXX`. No image name
// starts with '.', so they never collide with a file of an image.
inline constexpr std::string_view kTempFilePrefix = ".imaged-tmp.";
bool IsTempFileName(std::string_view name);

// The steps of Directory::AtomicWrite, in order. A hook runs before each.
enum class AtomicWriteStep { kCreateTemp, kWrite, kFsyncFile, kRename, kFsyncDir };
// Test-only fault injection. The hook's answer decides what happens before `step`:
//  kContinue: do the step;
//  kFail:     behave as if the step failed with EIO (temp file removed, old file untouched);
//  kCrash:    stop right here leaving everything as a SIGKILL would (temp file left behind).
enum class AtomicWriteAction { kContinue, kFail, kCrash };
struct AtomicWriteHooks {
  std::function<AtomicWriteAction(AtomicWriteStep)> before_step;
};

struct AtomicWriteOptions {
  mode_t mode = 0644;
  // false: the rename fails with EEXIST when the target exists (RENAME_NOREPLACE), so a create
  // never replaces a file another process made meanwhile.
  bool replace = true;
  const AtomicWriteHooks* hooks = nullptr;
};

// An open directory. Copies share the fd. Names given to it are single path components (no
// '/', not empty, "." or ".."): anything else is EINVAL.
class Directory {
 public:
  Directory() = default;
  // Opens (and with `create`, first makes, mode 0755 for missing components) the directory at
  // `path`. The path itself is configuration and may contain symlinks; nothing below it is
  // ever followed.
  static Result<Directory> Open(const std::string& path, bool create = false);

  bool valid() const { return static_cast<bool>(fd_); }
  int fd() const { return fd_ ? fd_->get() : -1; }
  const std::string& path() const { return path_; }
  // "<path>/<name>", for messages and for the kernel's record of a loop's backing file.
  std::string PathOf(std::string_view name) const;

  // Opens regular file `name` with `flags` (O_CREAT and O_EXCL allowed; O_NOFOLLOW, O_NONBLOCK
  // and O_CLOEXEC are always added, O_NONBLOCK is cleared again once the file is known to be
  // regular). A symlink is ELOOP and anything else that is not a regular file EINVAL, both
  // naming the file; neither is opened in a way that could block or change it.
  Result<UniqueFd> OpenFile(std::string_view name, int flags, mode_t mode = 0600) const;
  // What is at `name`, without following a symlink; nullopt when nothing is.
  Result<std::optional<struct stat>> Stat(std::string_view name) const;
  // True when anything (even a symlink) is at `name`; errors other than ENOENT count as true,
  // so a caller that refuses existing names refuses then too.
  bool Exists(std::string_view name) const;
  // Removes regular file `name`: true when it was there, false when nothing was. A symlink or
  // other non-regular file is left in place and is an error naming it.
  Result<bool> RemoveFile(std::string_view name) const;
  // Every name in the directory but "." and "..", sorted.
  Result<std::vector<std::string>> List() const;
  // fsync of the directory, so a create, rename or unlink in it is durable. vfat (and others)
  // refuse it with EINVAL; the entry is then as durable as that filesystem makes it.
  Result<void> Sync() const;

  // Replaces (or, without options.replace, creates) `name` with `data`: temp file in this
  // directory, write, fsync, rename, fsync of the directory. A reader sees the old file or the
  // new one, never a mix; a crash leaves at most a temp file (kTempFilePrefix).
  Result<void> AtomicWrite(std::string_view name, std::span<const uint8_t> data,
                           const AtomicWriteOptions& options = {}) const;
  // A whole regular file of at most `max_bytes` (EFBIG beyond).
  Result<std::vector<uint8_t>> ReadFile(std::string_view name, size_t max_bytes) const;
  // Removes temp files left by writers that died mid-write. Call only when no writer can be
  // active here (the daemon at start, under the set lock). Returns how many were removed.
  Result<size_t> RemoveTempFiles() const;

 private:
  Directory(std::shared_ptr<const UniqueFd> fd, std::string path)
      : fd_(std::move(fd)), path_(std::move(path)) {}
  Result<void> CheckName(std::string_view name) const;

  std::shared_ptr<const UniqueFd> fd_;
  std::string path_;
};

// A whole regular file at an arbitrary path (tools and tests; the product reads through
// Directory). EFBIG beyond max_bytes.
Result<std::vector<uint8_t>> ReadWholeFile(const std::string& path, size_t max_bytes);

}  // namespace imaged
