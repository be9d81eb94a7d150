// Private to the manager: paths of an image set, locks, the extent arithmetic shared by create,
// map, validate and recovery, and the mapping primitives.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dm/device_mapper.h"
#include "dm/table.h"
#include "fiemap/filesystem.h"
#include "fiemap/split_file.h"
#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"
#include "list_snapshot.h"
#include "manager/image_manager.h"
#include "metadata/lp_metadata.h"
#include "metadata/status_file.h"

namespace imaged::manager {

inline constexpr const char* kLpMetadataName = "lp_metadata";
// Image names never start with '.', so this cannot collide with `<name>.lock`.
inline constexpr const char* kSetLockName = ".imaged-set.lock";

// ---- flock-based locks ----
// An flock on a lock file opened for this lock alone: threads of one process exclude each other
// as well as processes do. Re-checks after locking that the path still names the locked inode,
// so deleting a lock file under its lock (Delete) cannot split waiters across two inodes.
class FileLock {
 public:
  FileLock() = default;
  FileLock(FileLock&&) = default;
  FileLock& operator=(FileLock&&) = default;
  // LOCK_EX or LOCK_SH; blocks.
  static Result<FileLock> Acquire(const std::string& path, bool exclusive);
  // Not held() when someone else holds it.
  static Result<FileLock> TryAcquire(const std::string& path, bool exclusive);
  static FileLock Adopt(UniqueFd fd);
  bool held() const { return fd_.valid(); }
  void Release() { fd_.reset(); }

 private:
  explicit FileLock(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// ---- the extents an image's lp_metadata entry must hold ----
struct DiskFacts {
  std::string disk;  // /dev node of the bottom device (FilesystemInfo::disk)
  dev_t disk_dev = 0;
  uint64_t disk_offset_bytes = 0;  // FIEMAP physical + this = offset on `disk`
  uint64_t disk_size = 0;
  uint32_t logical_block_size = 512;
};
DiskFacts DiskFactsOf(const fiemap::FilesystemInfo& fs);

// LINEAR extents (512-byte sectors on the disk) covering exactly `size_bytes` of `split`, merged
// like liblp merges them. EUCLEAN when an extent is misaligned to the disk's logical block size or
// lies outside the disk; EUCLEAN when the pieces are shorter than size_bytes.
Result<std::vector<metadata::Extent>> ComputeLpExtents(const fiemap::SplitFiemap& split,
                                                       const DiskFacts& disk, uint64_t size_bytes);

// The dm-linear table straight over the disk for lp extents.
dm::Table DmLinearTable(const std::vector<metadata::Extent>& extents, dev_t disk_dev,
                        bool readonly);

// ---- misc ----
std::string Basename(std::string_view path);
bool PathExists(const std::string& path);
bool DeviceMapperAvailable();
// Rounds up to a multiple of `align` (a power of two or not); no overflow checks needed by
// callers that validated the value first.
inline uint64_t RoundUp(uint64_t v, uint64_t align) {
  return (v + align - 1) / align * align;
}

}  // namespace imaged::manager

namespace imaged {

// The implementation behind ImageManager. Methods named *Locked expect the caller to hold the set
// lock (shared or exclusive) and the image's lock.
struct ImageManager::Impl {
  ManagerOptions options;

  std::string list_path(std::string_view name) const {
    return options.data_dir + "/" + std::string(name) + ".img";
  }
  std::string status_path(std::string_view name) const {
    return options.metadata_dir + "/" + std::string(name) + ".status";
  }
  // Exists while a create that fills the image (import, zero-fill) is under way; Recover deletes
  // an image that still has one.
  std::string incomplete_path(std::string_view name) const {
    return options.metadata_dir + "/" + std::string(name) + ".incomplete";
  }
  std::string lock_path(std::string_view name) const {
    return options.metadata_dir + "/" + std::string(name) + ".lock";
  }
  std::string lp_path() const { return options.metadata_dir + "/" + manager::kLpMetadataName; }
  std::string lp_lock_path() const { return lp_path() + ".lock"; }
  std::string set_lock_path() const { return options.metadata_dir + "/" + manager::kSetLockName; }
  std::string dm_name(std::string_view name) const { return options.dm_prefix + std::string(name); }

  // Held for the duration of one public operation.
  struct OpLocks {
    manager::FileLock set;
    manager::FileLock image;
    // Last member: invalidates List's snapshot before the locks are released.
    manager::ChangeNote change;
  };
  Result<OpLocks> LockImage(std::string_view name);

  // lp_metadata; a missing file reads as an empty set (nullopt).
  Result<std::optional<metadata::LpMetadata>> ReadLp() const;
  // Read-modify-write of lp_metadata under lp_metadata.lock. `edit` gets the current metadata
  // (nullopt if absent) and returns the metadata to write.
  Result<void> EditLp(
      const std::function<Result<metadata::LpMetadata>(std::optional<metadata::LpMetadata>)>& edit);

  // The incomplete marker: MarkIncomplete refuses (EEXIST) for an image in lp_metadata.
  Result<void> MarkIncomplete(std::string_view name);
  Result<void> ClearIncomplete(std::string_view name);

  // device-mapper, created on first use (the host may have none).
  Result<dm::DeviceMapper*> Dm();
  // Whether a dm device of that name exists; false when device-mapper is unavailable.
  Result<bool> DmExists(const std::string& dm_name);

  // ---- the operations, under the caller's locks ----
  // `fill`, when given, writes the new image before it is recorded: the pieces are allocated
  // without zeroing (SplitFiemap defer_zeroing), `fill` writes them, and whatever it did not
  // write is zeroed (CompleteZeroing) before the extents are read, validated and recorded in
  // lp_metadata. If `fill` fails, nothing of the image is left.
  using FillFn = std::function<Result<void>(fiemap::SplitFiemap&)>;
  Result<void> CreateLocked(std::string_view name, uint64_t size, const CreateOptions& options,
                            const FillFn& fill = {});
  Result<void> DeleteLocked(std::string_view name);
  Result<ImageInfo> InfoLocked(std::string_view name, const metadata::LpMetadata& md);

  struct MapRequest {
    std::chrono::milliseconds timeout{0};
    bool force_writable = false;  // internal writers (zero-fill, import) of read-only images
  };
  Result<std::string> MapLocked(std::string_view name, const MapRequest& request);
  Result<void> UnmapLocked(std::string_view name);
  Result<std::optional<std::string>> MappedDeviceLocked(std::string_view name);
  Result<void> ZeroFillLocked(std::string_view name, uint64_t bytes, const Progress& progress);
  Result<void> CheckExtentsLocked(std::string_view name, const metadata::LpMetadata& md,
                                  std::optional<fiemap::SplitFiemap>* opened = nullptr);
  // Recover's test: do the recorded devices exist, belong to this image and map it as Map would?
  Result<bool> MappingMatches(std::string_view name,
                              const std::vector<metadata::StatusEntry>& entries,
                              const std::vector<std::string>& pieces,
                              const metadata::LpMetadata& md);
  // A dm-linear device over the disk with exactly the table Map would load for the image.
  Result<bool> DmLinearMatches(std::string_view name, const metadata::LpMetadata& md);

  // The strategy Map would use now.
  Result<MapStrategy> ResolveStrategy(const fiemap::FilesystemInfo& fs);
  // True when bytes written through the image's files land where the mapped device reads them
  // (loop strategy, or dm-linear over a disk that holds plaintext).
  Result<bool> FileViewMatchesDevice(const fiemap::FilesystemInfo& fs);

  // Tears down the devices of an image that are ours: dm devices named dm_name(name), loops whose
  // backing file is one of `pieces`. Entries that are not ours are skipped, never touched.
  Result<void> TearDown(std::string_view name, const std::vector<metadata::StatusEntry>& entries,
                        const std::vector<std::string>& pieces);
  // A loop over a file turns discards and write-zeroes into hole punches (and zero-range into
  // unwritten extents) in our pieces. After a loop mapping is gone, re-allocate and write any
  // such range and record the pieces' extents again. Returns whether anything was restored.
  Result<bool> RestoreAllocationLocked(std::string_view name);
  // Loops backed by any of the pieces.
  Result<std::vector<std::string>> LoopsBacking(const std::vector<std::string>& pieces);

  std::mutex dm_mu;
  std::unique_ptr<dm::DeviceMapper> dm;

  // List's snapshot (list_snapshot.h); every operation that locks an image invalidates it.
  manager::ListCache list_cache;
  manager::ListCache::Key ListKey() const;
  // Every image with its mapped device, computed now in one pass.
  Result<std::vector<ImageInfo>> ListFresh();
};

}  // namespace imaged
