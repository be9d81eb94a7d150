#include "fiemap/fiemap_writer.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include <imaged/common/size.h>
#include <imaged/common/sysfs.h>
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

// Removes the half-made file on destruction unless disarmed: every failure or cancel path of
// Create.
class RemoveOnError {
 public:
  RemoveOnError(const Directory& dir, std::string_view name) : dir_(dir), name_(name) {}
  ~RemoveOnError() {
    if (armed_ && FiemapWriter::Remove(dir_, name_)) (void)dir_.Sync();
  }
  void Disarm() { armed_ = false; }

 private:
  const Directory& dir_;
  std::string name_;
  bool armed_ = true;
};

// f2fs can pin a file before allocating it only with the pin_file feature; without it,
// allocation happens unpinned and GC may move blocks before the later pin.
bool F2fsCanPinBeforeAllocate(const FilesystemInfo& fs) {
  const std::string dev = Basename(fs.fs_device);
  if (auto features = sysfs::Read("/sys/fs/f2fs/" + dev + "/features")) {
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

// Writes zeros over [from, to) of the file, with O_DIRECT where the fs takes it, so every
// extent is written (not unwritten) and holds no stale data. `fd` is the file open for writing
// without O_DIRECT, used where the fs or device refuses the O_DIRECT geometry.
Result<void> ZeroFile(const Directory& dir, const std::string& name, int fd, uint64_t from,
                      uint64_t to, const Progress& progress) {
  auto direct = dir.OpenFile(name, O_WRONLY | O_DIRECT);
  int target = direct ? direct->get() : fd;
  auto write = [&](std::span<const uint8_t> zeros, uint64_t at) -> Result<void> {
    auto written = FullPWrite(target, zeros.data(), zeros.size(), at);
    if (!written && written.error().code == EINVAL && target != fd) {
      target = fd;  // finish buffered
      written = FullPWrite(target, zeros.data(), zeros.size(), at);
    }
    IMAGED_TRY_CTX(std::move(written), "write zeros to \"{}\"", dir.PathOf(name));
    return Ok();
  };
  return WriteZeros(from, to - from, write, progress);
}

// Writes zeros wherever `fd` (of `size` bytes) holds no written data. Returns whether there was
// any such range.
Result<bool> ZeroUnwritten(const Directory& dir, const std::string& name, int fd, uint64_t size) {
  const auto ranges = IMAGED_TRY(internal::UnwrittenRanges(fd, size));
  for (const auto& r : ranges) {
    IMAGED_TRY(ZeroFile(dir, name, fd, r.offset, r.offset + r.length, {}));
  }
  return !ranges.empty();
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

namespace {

// Allocates [0, total) of the new file `fd`, writing zeros unless `defer` allows leaving them
// to CompleteZeroing. Returns whether zeroing was deferred.
Result<bool> AllocateAndZero(const Directory& dir, const std::string& name, int fd,
                             const FilesystemInfo& fs, uint64_t total, bool defer_wanted,
                             const Progress& progress) {
  const std::string path = dir.PathOf(name);
  if (fs.type == FsType::F2fs && F2fsCanPinBeforeAllocate(fs)) IMAGED_TRY(F2fsPin(fd, path));
  bool zeroed = false;
  if (fs.type != FsType::Vfat) {
    // One call that allocates written, zeroed blocks where the device offloads zeroing.
    if (fallocate(fd, FALLOC_FL_WRITE_ZEROES, 0, static_cast<off_t>(total)) == 0) {
      zeroed = true;
    } else if (errno == ENOSPC) {
      return ErrnoError("fallocate {}", HumanSize(total));
    } else {
      // EOPNOTSUPP / EINVAL (older kernels, fs or device without it): allocate, then zero.
      IMAGED_TRY(Fallocate(fd, path, fs, total));
    }
  }
  // Deferred: ext4 and xfs read unwritten extents as zeros, so nothing stale is readable through
  // the file meanwhile, and CompleteZeroing finds what is left to write with FIEMAP. (f2fs has no
  // unwritten extents to find that way, and its pin must cover written blocks.)
  const bool defer =
      defer_wanted && !zeroed && (fs.type == FsType::Ext4 || fs.type == FsType::Xfs);
  // vfat has no fallocate that allocates clusters without writing them: the zero writes
  // allocate. Elsewhere they convert unwritten extents into written ones and wipe stale data.
  if (!zeroed && !defer) {
    // The final (total, total) is Create's, once the extents are known.
    auto partial = [&](uint64_t done, uint64_t) { return done >= total || progress(done, total); };
    IMAGED_TRY(ZeroFile(dir, name, fd, 0, total, progress ? Progress(partial) : Progress()));
  }
  return defer;
}

}  // namespace

Result<FiemapWriter> FiemapWriter::Create(const Directory& dir, std::string_view name,
                                          uint64_t size, const CreateOptions& options) {
  const std::string path = dir.PathOf(name);
  if (size == 0) return MakeError(EINVAL, "create \"{}\": size is 0", path);
  FilesystemInfo fs =
      IMAGED_TRY_CTX(InspectFilesystem(dir.fd(), dir.path()), "create \"{}\"", path);
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
  UniqueFd fd = IMAGED_TRY_CTX(dir.OpenFile(name, O_RDWR | O_CREAT | O_EXCL, 0600), "create");
  RemoveOnError remove_on_error(dir, name);
  const bool defer = IMAGED_TRY_CTX(AllocateAndZero(dir, std::string(name), fd.get(), fs, total,
                                                    options.defer_zeroing, options.progress),
                                    "create \"{}\"", path);
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
  IMAGED_TRY_CTX(dir.Sync(), "create \"{}\"", path);

  if (options.progress && !options.progress(total, total)) {
    return MakeError(ECANCELED, "create \"{}\"", path);
  }
  remove_on_error.Disarm();

  return FiemapWriter(dir, name, total, std::move(fs), std::move(extents), defer);
}

Result<void> FiemapWriter::CompleteZeroing() {
  if (!zeroing_deferred_) return Ok();
  auto ctx = [&] { return fmt::format("complete \"{}\"", path_); };
  UniqueFd fd = IMAGED_TRY_CTX(OpenFile(O_RDWR), "{}", ctx());
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoError("{}: fstat", ctx());
  if (static_cast<uint64_t>(st.st_size) != size_) {
    return MakeError(EIO, "{}: size is {}, expected {}", ctx(), st.st_size, size_);
  }
  // Whatever the caller did not write: still unwritten (or a hole, should anything have punched
  // one). Written zeros make those blocks plain data that FIEMAP reports and a raw mapping reads.
  IMAGED_TRY_CTX(ZeroUnwritten(dir_, name_, fd.get(), size_), "{}", ctx());
  if (fsync(fd.get()) != 0) return ErrnoError("{}: fsync", ctx());
  // ReadExtents refuses UNWRITTEN extents, holes and anything else a raw mapping cannot use.
  auto extents = IMAGED_TRY_CTX(ReadExtents(fd.get(), fs_.type, size_), "{}", ctx());
  IMAGED_TRY_CTX(CheckExtentsOnDisk(extents, fs_, path_), "{}", ctx());
  extents_ = std::move(extents);
  zeroing_deferred_ = false;
  return Ok();
}

Result<bool> FiemapWriter::EnsureWritten(const Directory& dir, std::string_view name) {
  const std::string path = dir.PathOf(name);
  UniqueFd fd = IMAGED_TRY(dir.OpenFile(name, O_RDWR));
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoError("fstat \"{}\"", path);
  const FilesystemInfo fs = IMAGED_TRY_CTX(InspectFilesystem(fd.get(), path), "\"{}\"", path);
  // vfat can neither punch holes nor leave extents unwritten (and has no FIEMAP to ask).
  if (fs.type == FsType::Vfat) return false;
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (IMAGED_TRY_CTX(internal::UnwrittenRanges(fd.get(), size), "\"{}\"", path).empty()) {
    return false;
  }
  // Blocks first (a hole has none), so a full disk fails here and not half-way.
  IMAGED_TRY_CTX(Fallocate(fd.get(), path, fs, size), "restore \"{}\"", path);
  IMAGED_TRY_CTX(ZeroUnwritten(dir, std::string(name), fd.get(), size), "restore \"{}\"", path);
  if (fsync(fd.get()) != 0) return ErrnoError("restore \"{}\": fsync", path);
  return true;
}

Result<void> FiemapWriter::Extend(uint64_t new_size, const Progress& progress) {
  auto ctx = [&] { return fmt::format("extend \"{}\"", path_); };
  const uint64_t bs = fs_.block_size;
  if (new_size > UINT64_MAX - bs) return MakeError(EFBIG, "{}: size overflows", ctx());
  const uint64_t total = (new_size + bs - 1) / bs * bs;
  if (total <= size_) return Ok();
  if (total > fs_.max_file_size) {
    return MakeError(EFBIG, "{}: {} is larger than the {} maximum file size {}", ctx(),
                     HumanSize(total), FsTypeName(fs_.type), HumanSize(fs_.max_file_size));
  }
  UniqueFd fd = IMAGED_TRY_CTX(OpenFile(O_RDWR), "{}", ctx());
  const uint64_t old = size_;
  if (fs_.type != FsType::Vfat) {
    // Allocate the new range first, so that a full disk fails before anything is written.
    if (fallocate(fd.get(), 0, static_cast<off_t>(old), static_cast<off_t>(total - old)) != 0) {
      return ErrnoError("{}: fallocate {}", ctx(), HumanSize(total - old));
    }
  }
  IMAGED_TRY_CTX(ZeroFile(dir_, name_, fd.get(), old, total, progress), "{}", ctx());
  if (fsync(fd.get()) != 0) return ErrnoError("{}: fsync", ctx());
  IMAGED_TRY_CTX(PinIfNeeded(fd.get(), path_, fs_), "{}", ctx());
  auto extents = IMAGED_TRY_CTX(ReadExtents(fd.get(), fs_.type, total), "{}", ctx());
  IMAGED_TRY_CTX(CheckExtentsOnDisk(extents, fs_, path_), "{}", ctx());
  // SAFETY RULE: what was recorded for [0, old) must still be where it was.
  std::vector<Extent> before;
  for (auto e : extents) {
    if (e.logical >= old) break;
    e.length = std::min(e.length, old - e.logical);
    before.push_back(e);
  }
  auto merged = IMAGED_TRY(MergeExtents(extents_, old));
  if (IMAGED_TRY(MergeExtents(before, old)) != merged) {
    return MakeError(EUCLEAN, "{}: the blocks of the first {} moved", ctx(), HumanSize(old))
        .As(ErrorKind::kExtentsChanged);
  }
  size_ = total;
  extents_ = std::move(extents);
  return Ok();
}

Result<void> FiemapWriter::Truncate(const Directory& dir, std::string_view name, uint64_t size) {
  UniqueFd fd = IMAGED_TRY(dir.OpenFile(name, O_WRONLY));
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoError("fstat \"{}\"", dir.PathOf(name));
  if (static_cast<uint64_t>(st.st_size) <= size) return Ok();
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0 || fsync(fd.get()) != 0) {
    return ErrnoError("truncate \"{}\" to {}", dir.PathOf(name), size);
  }
  return Ok();
}

Result<bool> FiemapWriter::Remove(const Directory& dir, std::string_view name) {
  auto fd = dir.OpenFile(name, O_WRONLY);
  if (!fd) {
    if (fd.error().code == ENOENT) return false;
    return std::move(fd).error().Wrap("remove");
  }
  // Truncating first makes f2fs release pinned blocks right away (AOSP a7b4a9d4f).
  if (ftruncate(fd->get(), 0) != 0) return ErrnoError("remove \"{}\": truncate", dir.PathOf(name));
  return dir.RemoveFile(name);
}

Result<FiemapWriter> FiemapWriter::Open(const Directory& dir, std::string_view name) {
  const std::string path = dir.PathOf(name);
  UniqueFd fd = IMAGED_TRY(dir.OpenFile(name, O_RDONLY));
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoError("fstat \"{}\"", path);
  if (st.st_size == 0) return MakeError(EINVAL, "\"{}\" is empty", path);
  FilesystemInfo fs = IMAGED_TRY_CTX(InspectFilesystem(fd.get(), path), "open \"{}\"", path);
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
  return FiemapWriter(dir, name, size, std::move(fs), std::move(extents), false);
}

}  // namespace imaged::fiemap
