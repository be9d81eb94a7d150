#include "dm/loop_device.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "imaged/common/sysfs.h"
#include "dm/loop_list.h"

#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A
struct loop_config {
  __u32 fd;
  __u32 block_size;
  struct loop_info64 info;
  __u64 __reserved[8];
};
#endif
#ifndef LOOP_SET_BLOCK_SIZE
#define LOOP_SET_BLOCK_SIZE 0x4C09
#endif
#ifndef LOOP_SET_DIRECT_IO
#define LOOP_SET_DIRECT_IO 0x4C08
#endif
#ifndef LO_FLAGS_DIRECT_IO
#define LO_FLAGS_DIRECT_IO 16
#endif

namespace imaged::dm {
namespace {

// Another process may take the free loop between LOOP_CTL_GET_FREE and our configure
// (EBUSY); each retry asks for a new free loop, so this only bounds a pathological race.
constexpr int kMaxAttachAttempts = 64;

using sysfs::DevBlockDir;

// Logical block size of the disk holding a file; 512 when the filesystem has no single disk
// (tmpfs, overlayfs, btrfs, network filesystems).
uint32_t BackingLogicalBlockSize(dev_t st_dev) {
  auto lbs = sysfs::LogicalBlockSize(st_dev);
  return lbs ? *lbs : 512;
}

// The loop's dev_t when `path` is a loop device node (its sysfs name is loopN), else EINVAL.
Result<dev_t> LoopDevOf(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return ErrnoError("stat \"{}\"", path);
  if (!S_ISBLK(st.st_mode)) return MakeError(EINVAL, "\"{}\" is not a block device", path);
  const std::string name = IMAGED_TRY_CTX(sysfs::BlockDeviceName(st.st_rdev), "\"{}\"", path);
  if (name.rfind("loop", 0) != 0 || name.size() == 4 ||
      name.find_first_not_of("0123456789", 4) != std::string::npos) {
    return MakeError(EINVAL, "\"{}\" is not a loop device ({})", path, name);
  }
  return st.st_rdev;
}

struct Configured {
  UniqueFd fd;
  std::string path;
};

void ClearFd(int loop_fd) {
  ioctl(loop_fd, LOOP_CLR_FD, 0);
}

// One attempt on one free loop. EBUSY means someone else took it; the caller retries.
Result<Configured> ConfigureFreeLoop(int control_fd, int file_fd, const std::string& file,
                                     const LoopOptions& options, uint32_t block_size,
                                     bool want_dio, bool* hook_failed) {
  int n = ioctl(control_fd, LOOP_CTL_GET_FREE);
  if (n < 0) return ErrnoError("LOOP_CTL_GET_FREE");
  std::string path = fmt::format("/dev/loop{}", n);
  UniqueFd loop(open(path.c_str(), (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
  if (!loop) return ErrnoError("open \"{}\"", path);
  if (options.before_configure) {
    if (auto r = options.before_configure(path); !r) {
      *hook_failed = true;
      return std::move(r).error().Wrap(fmt::format("before configuring \"{}\"", path));
    }
  }

  loop_info64 info{};
  std::strncpy(reinterpret_cast<char*>(info.lo_file_name), file.c_str(), LO_NAME_SIZE - 1);
  info.lo_offset = options.offset;
  info.lo_sizelimit = options.size_limit;
  info.lo_flags = (options.read_only ? LO_FLAGS_READ_ONLY : 0) |
                  (options.autoclear ? LO_FLAGS_AUTOCLEAR : 0) |
                  (want_dio ? LO_FLAGS_DIRECT_IO : 0);
  loop_config config{};
  config.fd = static_cast<__u32>(file_fd);
  config.block_size = block_size;
  config.info = info;
  if (ioctl(loop.get(), LOOP_CONFIGURE, &config) == 0) return Configured{std::move(loop), path};
  if (errno != EINVAL && errno != ENOTTY) return ErrnoError("LOOP_CONFIGURE \"{}\"", path);
  if (errno == EINVAL && want_dio) {
    // Newer kernels refuse LO_FLAGS_DIRECT_IO the file cannot do (older ones ignore it, which
    // Attach checks afterwards). Find out whether direct I/O was the reason.
    config.info.lo_flags &= ~LO_FLAGS_DIRECT_IO;
    if (ioctl(loop.get(), LOOP_CONFIGURE, &config) == 0) {
      if (options.allow_buffered) return Configured{std::move(loop), path};
      ClearFd(loop.get());
      return MakeError(EINVAL, "LOOP_CONFIGURE \"{}\": direct I/O refused for this file", path);
    }
  }

  // Kernels before 5.8: the same in four steps (not atomic, so undo on failure).
  if (ioctl(loop.get(), LOOP_SET_FD, file_fd) != 0) return ErrnoError("LOOP_SET_FD \"{}\"", path);
  info.lo_flags &= ~(LO_FLAGS_READ_ONLY | LO_FLAGS_DIRECT_IO);  // set via the fd mode / below
  if (ioctl(loop.get(), LOOP_SET_STATUS64, &info) != 0) {
    auto e = ErrnoError("LOOP_SET_STATUS64 \"{}\"", path);
    ClearFd(loop.get());
    return e;
  }
  if (block_size != 0 && ioctl(loop.get(), LOOP_SET_BLOCK_SIZE, block_size) != 0) {
    auto e = ErrnoError("LOOP_SET_BLOCK_SIZE {} \"{}\"", block_size, path);
    ClearFd(loop.get());
    return e;
  }
  if (want_dio && ioctl(loop.get(), LOOP_SET_DIRECT_IO, 1) != 0 && errno != EINVAL) {
    auto e = ErrnoError("LOOP_SET_DIRECT_IO \"{}\"", path);
    ClearFd(loop.get());
    return e;
  }
  return Configured{std::move(loop), path};
}

// LOOP_SET_STATUS64 answers EAGAIN while the loop's page cache is being written back after a
// size change (the kernel invalidates it); a short wait lets it finish.
Result<void> SetStatus(int loop_fd, const loop_info64& info) {
  constexpr int kAttempts = 100;
  for (int attempt = 1;; ++attempt) {
    if (ioctl(loop_fd, LOOP_SET_STATUS64, &info) == 0) return Ok();
    if (errno != EAGAIN || attempt == kAttempts) return ErrnoError("LOOP_SET_STATUS64");
    usleep(10 * 1000);
  }
}

}  // namespace

Result<LoopDevice> LoopDevice::Attach(const std::string& backing_file, const LoopOptions& options) {
  UniqueFd file(
      open(backing_file.c_str(), (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOFOLLOW));
  if (!file) return ErrnoError("attach loop to \"{}\": open", backing_file);
  return Attach(file.get(), backing_file, options);
}

namespace {

// The loop's block size for the open file `file_fd`, after checking what Attach is asked for.
Result<uint32_t> CheckAttachable(int file_fd, const LoopOptions& options) {
  struct stat st {};
  if (fstat(file_fd, &st) != 0) return ErrnoError("fstat");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) return MakeError(EINVAL, "not a regular file");
  const int mode = fcntl(file_fd, F_GETFL);
  if (mode < 0) return ErrnoError("fcntl");
  if (!options.read_only && (mode & O_ACCMODE) != O_RDWR) {
    return MakeError(EBADF, "a writable loop needs the file open for reading and writing");
  }
  uint32_t block_size = options.block_size;
  if (block_size == 0) block_size = BackingLogicalBlockSize(st.st_dev);
  if (block_size < 512 || block_size > 4096 || (block_size & (block_size - 1)) != 0) {
    return MakeError(EINVAL, "block size {} is not a power of two in 512..4096", block_size);
  }
  if (options.size_limit % block_size != 0) {
    return MakeError(EINVAL, "size {} is not a multiple of the block size {}",
                     options.size_limit, block_size);
  }
  if (options.offset % block_size != 0) {
    return MakeError(EINVAL, "offset {} is not a multiple of the block size {}", options.offset,
                     block_size);
  }
  return block_size;
}

// Whether to ask the loop for direct I/O. The loop's own check trusts the filesystem's
// address_space ops, which overlayfs fakes even over tmpfs (then every I/O fails with EINVAL);
// opening the same file with O_DIRECT asks the filesystem that really holds the data.
Result<bool> WantDirectIo(int file_fd, const LoopOptions& options) {
  if (!options.direct_io) return false;
  // The same open file, reopened: a path lookup could meet another file by now.
  const std::string self = fmt::format("/proc/self/fd/{}", file_fd);
  UniqueFd probe(open(self.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  if (probe) return true;
  if (errno != EINVAL) return ErrnoError("open with O_DIRECT");
  if (!options.allow_buffered) {
    return MakeError(EINVAL, "the filesystem cannot do direct I/O (O_DIRECT)");
  }
  return false;
}

// A free loop bound to the file; retried when another process takes the free loop first.
Result<Configured> BindFreeLoop(int file_fd, const std::string& backing_file,
                                const LoopOptions& options, uint32_t block_size, bool want_dio) {
  UniqueFd control(open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (!control) return ErrnoError("open /dev/loop-control");
  for (int attempt = 0;; ++attempt) {
    bool hook_failed = false;
    auto r = ConfigureFreeLoop(control.get(), file_fd, backing_file, options, block_size,
                               want_dio, &hook_failed);
    if (r || hook_failed || r.error().code != EBUSY || attempt + 1 >= kMaxAttachAttempts) {
      return r;
    }
  }
}

}  // namespace

Result<LoopDevice> LoopDevice::Attach(int file_fd, const std::string& backing_file,
                                      const LoopOptions& options) {
  const std::string ctx = fmt::format("attach loop to \"{}\"", backing_file);
  const uint32_t block_size = IMAGED_TRY_CTX(CheckAttachable(file_fd, options), "{}", ctx);
  const bool want_dio = IMAGED_TRY_CTX(WantDirectIo(file_fd, options), "{}", ctx);
  auto configured = IMAGED_TRY_CTX(
      BindFreeLoop(file_fd, backing_file, options, block_size, want_dio), "{}", ctx);
  LoopDevice loop(std::move(configured.fd), configured.path, 0, false, block_size);
  // From here on `loop` detaches on every error path.
  IMAGED_TRY_CTX(loop.CheckConfigured(options), "{}", ctx);
  return loop;
}

Result<void> LoopDevice::CheckConfigured(const LoopOptions& options) {
  struct stat lst {};
  if (fstat(fd_.get(), &lst) != 0) return ErrnoError("fstat {}", path_);
  dev_ = lst.st_rdev;
  loop_info64 info{};
  if (ioctl(fd_.get(), LOOP_GET_STATUS64, &info) != 0) {
    return ErrnoError("LOOP_GET_STATUS64 {}", path_);
  }
  direct_io_ = (info.lo_flags & LO_FLAGS_DIRECT_IO) != 0;
  if (options.direct_io && !direct_io_ && !options.allow_buffered) {
    return MakeError(EINVAL,
                     "{} could not enable direct I/O (the filesystem cannot do O_DIRECT, or "
                     "block size {} is below the disk's)",
                     path_, block_size_);
  }
  int ssz = 0;
  if (ioctl(fd_.get(), BLKSSZGET, &ssz) != 0) return ErrnoError("BLKSSZGET {}", path_);
  if (static_cast<uint32_t>(ssz) != block_size_) {
    return MakeError(EINVAL, "{} has block size {}, wanted {}", path_, ssz, block_size_);
  }
  if (options.no_discard) {
    const std::string attr = DevBlockDir(dev_) + "/queue/discard_max_bytes";
    UniqueFd fd(open(attr.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) return ErrnoError("open \"{}\"", attr);
    if (write(fd.get(), "0", 1) != 1) return ErrnoError("write 0 to \"{}\"", attr);
  }
  if (options.size_limit != 0) {
    uint64_t bytes = 0;
    if (ioctl(fd_.get(), BLKGETSIZE64, &bytes) != 0) return ErrnoError("BLKGETSIZE64 {}", path_);
    if (bytes != options.size_limit) {
      return MakeError(EINVAL, "{} is {} bytes, wanted {} (file shorter than the size?)", path_,
                       bytes, options.size_limit);
    }
  }
  return Ok();
}

LoopDevice::LoopDevice(LoopDevice&& other) noexcept
    : fd_(std::move(other.fd_)),
      path_(std::exchange(other.path_, {})),
      dev_(std::exchange(other.dev_, 0)),
      direct_io_(other.direct_io_),
      block_size_(other.block_size_) {}

LoopDevice& LoopDevice::operator=(LoopDevice&& other) noexcept {
  if (this != &other) {
    (void)Detach();
    fd_ = std::move(other.fd_);
    path_ = std::exchange(other.path_, {});
    dev_ = std::exchange(other.dev_, 0);
    direct_io_ = other.direct_io_;
    block_size_ = other.block_size_;
  }
  return *this;
}

LoopDevice::~LoopDevice() {
  (void)Detach();
}

Result<void> LoopDevice::Detach() {
  if (!fd_) return Ok();
  // If something else still has the loop open (a dm table, a mount), the kernel detaches it
  // at that last close instead (it turns on autoclear) and reports success now.
  int rc = ioctl(fd_.get(), LOOP_CLR_FD, 0);
  int saved = errno;
  std::string path = std::exchange(path_, {});
  fd_.reset();
  dev_ = 0;
  if (rc != 0 && saved != ENXIO) {
    errno = saved;
    return ErrnoError("detach \"{}\": LOOP_CLR_FD", path);
  }
  return Ok();
}

std::string LoopDevice::release() {
  fd_.reset();
  dev_ = 0;
  return std::exchange(path_, {});
}

Result<void> LoopDevice::DetachPath(const std::string& loop_path) {
  IMAGED_TRY_CTX(LoopDevOf(loop_path), "detach loop");
  UniqueFd fd(open(loop_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("detach \"{}\": open", loop_path);
  if (ioctl(fd.get(), LOOP_CLR_FD, 0) != 0 && errno != ENXIO) {
    return ErrnoError("detach \"{}\": LOOP_CLR_FD", loop_path);
  }
  return Ok();
}

Result<uint64_t> LoopDevice::SizeOf(const std::string& loop_path) {
  IMAGED_TRY_CTX(LoopDevOf(loop_path), "size of loop");
  UniqueFd fd(open(loop_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("size of \"{}\": open", loop_path);
  uint64_t bytes = 0;
  if (ioctl(fd.get(), BLKGETSIZE64, &bytes) != 0) return ErrnoError("BLKGETSIZE64 {}", loop_path);
  return bytes;
}

Result<void> LoopDevice::Resize(const std::string& loop_path, uint64_t size_limit) {
  IMAGED_TRY_CTX(LoopDevOf(loop_path), "resize loop");
  UniqueFd fd(open(loop_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("resize \"{}\": open", loop_path);
  loop_info64 info{};
  if (ioctl(fd.get(), LOOP_GET_STATUS64, &info) != 0) {
    return ErrnoError("resize \"{}\": LOOP_GET_STATUS64", loop_path);
  }
  const uint64_t old_limit = info.lo_sizelimit;
  if (old_limit != size_limit) {
    // Only the limit changes: the flags LOOP_SET_STATUS64 may set are the loop's own.
    info.lo_sizelimit = size_limit;
    IMAGED_TRY_CTX(SetStatus(fd.get(), info), "resize \"{}\" to {} bytes", loop_path, size_limit);
  }
  // Without a limit the size follows the file; LOOP_SET_CAPACITY re-reads it.
  if (size_limit == 0) {
    if (ioctl(fd.get(), LOOP_SET_CAPACITY, 0) != 0) {
      return ErrnoError("resize \"{}\": LOOP_SET_CAPACITY", loop_path);
    }
    return Ok();
  }
  uint64_t now = 0;
  if (ioctl(fd.get(), BLKGETSIZE64, &now) != 0) return ErrnoError("BLKGETSIZE64 {}", loop_path);
  if (now == size_limit) return Ok();
  // The file is shorter than the limit: the kernel took the file's size. Put the old back.
  info.lo_sizelimit = old_limit;
  (void)SetStatus(fd.get(), info);
  return MakeError(EINVAL, "resize \"{}\" to {} bytes: its backing file holds only {}", loop_path,
                   size_limit, now);
}

Result<std::string> LoopDevice::BackingFile(const std::string& loop_path) {
  dev_t dev = IMAGED_TRY_CTX(LoopDevOf(loop_path), "backing file of loop");
  auto s = sysfs::Read(DevBlockDir(dev) + "/loop/backing_file");
  if (!s || s->empty()) return MakeError(ENXIO, "backing file of \"{}\": not attached", loop_path);
  return *s;
}

Result<std::vector<std::string>> LoopDevice::FindByBackingFile(const std::string& file) {
  // lstat: a symlink names no backing file of ours.
  struct stat want {};
  if (lstat(file.c_str(), &want) != 0) return ErrnoError("find loops of \"{}\": stat", file);
  std::vector<std::string> out;
  for (auto& loop : IMAGED_TRY_CTX(ListAttachedLoops(), "find loops of \"{}\"", file)) {
    if (loop.backing_dev == want.st_dev && loop.backing_ino == want.st_ino) {
      out.push_back(std::move(loop.loop_path));
    }
  }
  return out;
}

}  // namespace imaged::dm
