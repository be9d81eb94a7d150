#include "fiemap/fiemap_writer.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

#include <imaged/common/size.h>
#include <imaged/common/unique_fd.h>

#include "internal.h"

// Not in every uapi header yet (Linux 6.17): allocate and zero through the device's
// WRITE_ZEROES command, leaving written (not unwritten) extents.
#ifndef FALLOC_FL_WRITE_ZEROES
#define FALLOC_FL_WRITE_ZEROES 0x80
#endif

// Kept local rather than from <linux/f2fs.h>, which older distributions lack.
#define IMAGED_F2FS_IOC_SET_PIN_FILE _IOW(0xf5, 13, __u32)
#define IMAGED_F2FS_IOC_GET_PIN_FILE _IOR(0xf5, 14, __u32)

namespace imaged::fiemap {
namespace {

// Zero writes go in large aligned chunks: 4 KiB writes (AOSP) are an order of magnitude slower.
constexpr size_t kZeroChunk = 8 << 20;

const void* ZeroBuffer() {
  static void* buffer = [] {
    void* p = std::aligned_alloc(4096, kZeroChunk);
    if (p) std::memset(p, 0, kZeroChunk);
    return p;
  }();
  return buffer;
}

// Removes the file on destruction unless disarmed: every failure or cancel path of Create.
class RemoveOnError {
 public:
  explicit RemoveOnError(std::string path) : path_(std::move(path)) {}
  ~RemoveOnError() {
    if (armed_) {
      unlink(path_.c_str());
      (void)internal::FsyncParentDir(path_);
    }
  }
  void Disarm() { armed_ = false; }

 private:
  std::string path_;
  bool armed_ = true;
};

// f2fs can pin a file before allocating it only with the pin_file feature; without it,
// allocation happens unpinned and GC may move blocks before the later pin.
bool F2fsCanPinBeforeAllocate(const FilesystemInfo& fs) {
  std::string dev = internal::Basename(fs.fs_device);
  if (auto features = internal::ReadSysfs("/sys/fs/f2fs/" + dev + "/features")) {
    if (features->find("pin_file") != std::string::npos) return true;
  }
  std::error_code ec;
  return std::filesystem::exists("/sys/fs/f2fs/features/pin_file", ec);
}

Result<void> F2fsPin(int fd, const std::string& path) {
  __u32 on = 1;
  if (ioctl(fd, IMAGED_F2FS_IOC_SET_PIN_FILE, &on) != 0) {
    return ErrnoError("pin \"{}\" (F2FS_IOC_SET_PIN_FILE)", path);
  }
  return Ok();
}

// f2fs reports a pinned file as FS_NOCOW_FL. GET_PIN_FILE must also work (it returns the GC
// failure count of a pinned file, 0 for an unpinned one, so it alone cannot tell).
Result<bool> F2fsIsPinned(int fd, const std::string& path) {
  __u32 gc_failures = 0;
  if (ioctl(fd, IMAGED_F2FS_IOC_GET_PIN_FILE, &gc_failures) != 0) {
    return ErrnoError("\"{}\": F2FS_IOC_GET_PIN_FILE", path);
  }
  long flags = 0;
  if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) return ErrnoError("\"{}\": FS_IOC_GETFLAGS", path);
  return (flags & FS_NOCOW_FL) != 0;
}

// Why only f2fs is pinned: ext4, xfs and vfat never relocate the blocks of a file on their own
// (no garbage collection or log cleaning; writes to allocated, written blocks overwrite in
// place). Blocks move only on explicit administrator requests: ext4 online defrag (e4defrag,
// EXT4_IOC_MOVE_EXT), xfs_fsr (XFS_IOC_SWAPEXT / exchange-range), or xfs reflink/dedup which
// would make extents SHARED. We do not set FS_IMMUTABLE_FL to fend those off: it would forbid
// writing the image through the file (imports, PWrite) and unlinking it, so a crash would leave
// files only `chattr -i` can delete; and it would still not stop a determined root. Instead
// FiemapWriter::Open re-reads and re-validates the extents before every map, which catches a
// moved or shared extent.
Result<void> PinIfNeeded(int fd, const std::string& path, const FilesystemInfo& fs) {
  if (fs.type != FsType::F2fs) return Ok();
  bool pinned = IMAGED_TRY(F2fsIsPinned(fd, path));
  if (!pinned) IMAGED_TRY(F2fsPin(fd, path));
  pinned = IMAGED_TRY(F2fsIsPinned(fd, path));
  if (!pinned) return MakeError(EIO, "\"{}\": f2fs did not pin the file", path);
  return Ok();
}

// fallocate; f2fs may return EAGAIN after a partial allocation while it runs GC: retry while
// the file keeps growing.
Result<void> Fallocate(int fd, const std::string& path, const FilesystemInfo& fs, uint64_t size) {
  off_t last_size = -1;
  while (true) {
    if (fallocate(fd, 0, 0, static_cast<off_t>(size)) == 0) return Ok();
    if (errno == EINTR) continue;
    if (errno != EAGAIN || fs.type != FsType::F2fs) {
      return ErrnoError("fallocate {} on \"{}\"", HumanSize(size), path);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) return ErrnoError("fstat \"{}\"", path);
    if (st.st_size <= last_size) {
      return MakeError(ENOSPC, "fallocate {} on \"{}\": f2fs stopped making progress",
                       HumanSize(size), path);
    }
    last_size = st.st_size;
  }
}

// Writes zeros over [from, size) in kZeroChunk pieces, with O_DIRECT where the fs takes it, so
// every extent is written (not unwritten) and holds no stale data. Reports progress after each
// chunk except the last (the caller sends the final (total, total)).
Result<void> WriteZeros(const std::string& path, uint64_t size, const ProgressFn& progress,
                        uint64_t from = 0) {
  const void* zeros = ZeroBuffer();
  if (!zeros) return MakeError(ENOMEM, "zero buffer");
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT));
  bool direct = fd.valid();
  if (!direct) {
    fd.reset(open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) return ErrnoError("open \"{}\"", path);
  }
  uint64_t done = from;
  while (done < size) {
    size_t len = static_cast<size_t>(std::min<uint64_t>(kZeroChunk, size - done));
    ssize_t n = pwrite(fd.get(), zeros, len, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && direct) {
      // The fs or device refused this O_DIRECT geometry: finish buffered.
      fd.reset(open(path.c_str(), O_WRONLY | O_CLOEXEC));
      if (!fd) return ErrnoError("open \"{}\"", path);
      direct = false;
      continue;
    }
    if (n < 0) return ErrnoError("write zeros at {} of \"{}\"", done, path);
    if (n == 0) return MakeError(EIO, "write zeros at {} of \"{}\": wrote nothing", done, path);
    done += static_cast<uint64_t>(n);
    if (progress && done < size && !progress(done, size)) {
      return MakeError(ECANCELED, "create \"{}\"", path);
    }
  }
  return Ok();
}

// Every extent must be addressable on the disk in its logical blocks and lie inside it.
Result<void> CheckExtentsOnDisk(const std::vector<Extent>& extents, const FilesystemInfo& fs,
                                const std::string& path) {
  const uint64_t lbs = fs.disk_logical_block_size ? fs.disk_logical_block_size : 512;
  for (const auto& e : extents) {
    uint64_t on_disk = fs.disk_offset_bytes + e.physical;
    if (on_disk % lbs != 0 || e.length % lbs != 0) {
      return MakeError(EINVAL,
                       "\"{}\": extent at offset {} (disk offset {}, length {}) is not aligned to "
                       "the disk's {}-byte logical blocks",
                       path, e.logical, on_disk, e.length, lbs);
    }
    if (fs.disk_size && on_disk + e.length > fs.disk_size) {
      return MakeError(EINVAL, "\"{}\": extent at offset {} ends past the end of {}", path,
                       e.logical, fs.disk);
    }
  }
  return Ok();
}

}  // namespace

Result<FiemapWriter> FiemapWriter::Create(const std::string& path, uint64_t size,
                                          const ProgressFn& progress) {
  CreateOptions options;
  options.progress = progress;
  return Create(path, size, options);
}

Result<FiemapWriter> FiemapWriter::Create(const std::string& path, uint64_t size,
                                          const CreateOptions& options) {
  const ProgressFn& progress = options.progress;
  if (size == 0) return MakeError(EINVAL, "create \"{}\": size is 0", path);
  FilesystemInfo fs =
      IMAGED_TRY_CTX(InspectFilesystem(internal::Dirname(path)), "create \"{}\"", path);
  const uint64_t bs = fs.block_size;
  if (size > UINT64_MAX - bs) return MakeError(EFBIG, "create \"{}\": size overflows", path);
  const uint64_t total = (size + bs - 1) / bs * bs;
  if (total > fs.max_file_size) {
    return MakeError(EFBIG, "create \"{}\": {} is larger than the {} maximum file size {}", path,
                     HumanSize(total), FsTypeName(fs.type), HumanSize(fs.max_file_size));
  }
  if (total > fs.free_bytes) {
    return MakeError(ENOSPC, "create \"{}\": {} needed, {} free", path, HumanSize(total),
                     HumanSize(fs.free_bytes));
  }

  // O_EXCL: an existing file may be a live, mapped image; it is never truncated or reused.
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError("create \"{}\"", path);
  RemoveOnError remove_on_error(path);

  if (fs.type == FsType::F2fs && F2fsCanPinBeforeAllocate(fs)) {
    IMAGED_TRY_CTX(F2fsPin(fd.get(), path), "create \"{}\"", path);
  }

  bool zeroed = false;
  if (fs.type != FsType::Vfat) {
    // One call that allocates written, zeroed blocks where the device offloads zeroing.
    if (fallocate(fd.get(), FALLOC_FL_WRITE_ZEROES, 0, static_cast<off_t>(total)) == 0) {
      zeroed = true;
    } else if (errno == ENOSPC) {
      return ErrnoError("create \"{}\": fallocate {}", path, HumanSize(total));
    } else {
      // EOPNOTSUPP / EINVAL (older kernels, fs or device without it): allocate, then zero.
      IMAGED_TRY_CTX(Fallocate(fd.get(), path, fs, total), "create \"{}\"", path);
    }
  }
  // Deferred: ext4 and xfs read unwritten extents as zeros, so nothing stale is readable through
  // the file meanwhile, and CompleteZeroing finds what is left to write with FIEMAP. (f2fs has no
  // unwritten extents to find that way, and its pin must cover written blocks.)
  const bool defer =
      options.defer_zeroing && !zeroed && (fs.type == FsType::Ext4 || fs.type == FsType::Xfs);
  // vfat has no fallocate that allocates clusters without writing them: the zero writes
  // allocate. Elsewhere they convert unwritten extents into written ones and wipe stale data.
  if (!zeroed && !defer) IMAGED_TRY(WriteZeros(path, total, progress));
  if (fsync(fd.get()) != 0) return ErrnoError("create \"{}\": fsync", path);

  IMAGED_TRY_CTX(PinIfNeeded(fd.get(), path, fs), "create \"{}\"", path);

  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoError("create \"{}\": fstat", path);
  if (static_cast<uint64_t>(st.st_size) != total) {
    return MakeError(EIO, "create \"{}\": size is {} after allocation, expected {}", path,
                     st.st_size, total);
  }
  std::vector<Extent> extents;
  if (!defer) {
    extents = IMAGED_TRY_CTX(ReadExtents(fd.get(), fs.type, total), "create \"{}\"", path);
    IMAGED_TRY_CTX(CheckExtentsOnDisk(extents, fs, path), "create");
  }
  IMAGED_TRY(internal::FsyncParentDir(path));

  if (progress && !progress(total, total)) return MakeError(ECANCELED, "create \"{}\"", path);
  remove_on_error.Disarm();

  FiemapWriter writer;
  writer.path_ = path;
  writer.size_ = total;
  writer.fs_ = std::move(fs);
  writer.extents_ = std::move(extents);
  writer.zeroing_deferred_ = defer;
  return writer;
}

Result<void> FiemapWriter::CompleteZeroing() {
  if (!zeroing_deferred_) return Ok();
  auto ctx = [&] { return fmt::format("complete \"{}\"", path_); };
  UniqueFd fd(open(path_.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return ErrnoError("{}: open", ctx());
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoError("{}: fstat", ctx());
  if (static_cast<uint64_t>(st.st_size) != size_) {
    return MakeError(EIO, "{}: size is {}, expected {}", ctx(), st.st_size, size_);
  }
  // Whatever the caller did not write: still unwritten (or a hole, should anything have punched
  // one). Written zeros make those blocks plain data that FIEMAP reports and a raw mapping reads.
  const auto ranges = IMAGED_TRY_CTX(internal::UnwrittenRanges(fd.get(), size_), "{}", ctx());
  for (const auto& r : ranges) {
    IMAGED_TRY_CTX(WriteZeros(path_, r.offset + r.length, {}, r.offset), "{}", ctx());
  }
  if (fsync(fd.get()) != 0) return ErrnoError("{}: fsync", ctx());
  // ReadExtents refuses UNWRITTEN extents, holes and anything else a raw mapping cannot use.
  auto extents = IMAGED_TRY_CTX(ReadExtents(fd.get(), fs_.type, size_), "{}", ctx());
  IMAGED_TRY_CTX(CheckExtentsOnDisk(extents, fs_, path_), "{}", ctx());
  extents_ = std::move(extents);
  zeroing_deferred_ = false;
  return Ok();
}

Result<FiemapWriter> FiemapWriter::Open(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return ErrnoError("open \"{}\"", path);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoError("fstat \"{}\"", path);
  if (!S_ISREG(st.st_mode)) return MakeError(EINVAL, "\"{}\" is not a regular file", path);
  if (st.st_size == 0) return MakeError(EINVAL, "\"{}\" is empty", path);
  FilesystemInfo fs = IMAGED_TRY_CTX(InspectFilesystem(path), "open \"{}\"", path);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size % fs.block_size != 0) {
    return MakeError(EINVAL, "\"{}\": size {} is not a multiple of the {}-byte fs block", path,
                     size, fs.block_size);
  }
  auto extents = IMAGED_TRY_CTX(ReadExtents(fd.get(), fs.type, size), "open \"{}\"", path);
  IMAGED_TRY_CTX(CheckExtentsOnDisk(extents, fs, path), "open");
  if (fs.type == FsType::F2fs) {
    bool pinned = IMAGED_TRY_CTX(F2fsIsPinned(fd.get(), path), "open");
    if (!pinned) return MakeError(EINVAL, "\"{}\" is not pinned; f2fs may move its blocks", path);
  }
  FiemapWriter writer;
  writer.path_ = path;
  writer.size_ = size;
  writer.fs_ = std::move(fs);
  writer.extents_ = std::move(extents);
  return writer;
}

Result<bool> HasPinnedExtents(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return ErrnoError("open \"{}\"", path);
  FilesystemInfo fs = IMAGED_TRY(InspectFilesystem(path));
  if (fs.type != FsType::F2fs) return true;
  return F2fsIsPinned(fd.get(), path);
}

}  // namespace imaged::fiemap
