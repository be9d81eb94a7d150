// Private to the manager: the set's directories and locks, the kernel view, the lookups every
// operation starts with, and the operations' building blocks. Methods named *Locked expect the
// caller to hold the set lock (shared or exclusive) and the image's lock.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
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
#include "imaged/common/file_io.h"
#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"
#include "imageset/layout.h"
#include "imageset/names.h"
#include "intent.h"
#include "kernel_view.h"
#include "list_snapshot.h"
#include "manager/image_manager.h"
#include "metadata/lp_metadata.h"
#include "metadata/status_file.h"

namespace imaged::manager {

// ---- flock-based locks ----
// An flock on a file of the lock directory opened for this lock alone: threads of one process
// exclude each other as well as processes do. Re-checks after locking that the name still
// names the locked inode, so removing a lock file under its lock (no lock file outlives the
// image it guards) cannot split waiters across two inodes.
class FileLock {
 public:
  FileLock() = default;
  FileLock(FileLock&&) = default;
  FileLock& operator=(FileLock&&) = default;
  // LOCK_EX or LOCK_SH; blocks.
  static Result<FileLock> Acquire(const Directory& dir, std::string_view name, bool exclusive);
  // Not held() when someone else holds it.
  static Result<FileLock> TryAcquire(const Directory& dir, std::string_view name, bool exclusive);
  bool held() const { return fd_.valid(); }
  void Release() { fd_.reset(); }

 private:
  explicit FileLock(UniqueFd fd) : fd_(std::move(fd)) {}
  static Result<FileLock> Lock(const Directory& dir, std::string_view name, bool exclusive,
                               bool block);
  UniqueFd fd_;
};

// Rounds up to a multiple of `align`; callers validated the value first.
inline uint64_t RoundUp(uint64_t v, uint64_t align) {
  return (v + align - 1) / align * align;
}

bool DeviceMapperAvailable();

}  // namespace imaged::manager

namespace imaged {

struct ImageManager::Impl {
  ManagerOptions options;
  Directory data;      // <name>.img list files and pieces
  Directory metadata;  // lp_metadata, status files, intents
  Directory locks;     // metadata/.locks

  std::string dm_name(std::string_view name) const {
    return imageset::DmName(options.dm_prefix, name);
  }

  // Held for the duration of one public operation. When it ends and no image of that name is
  // left (a failed create, a delete, an operation on a name that has no image), the image's
  // lock file is removed while still held, so no lock file outlives its image.
  struct OpLocks {
    OpLocks() = default;
    OpLocks(OpLocks&&) = default;
    OpLocks& operator=(OpLocks&&) = default;
    ~OpLocks();
    Impl* impl = nullptr;
    std::string name;
    manager::FileLock set;
    manager::FileLock image;
    // Last member: invalidates List's snapshot before the locks are released.
    manager::ChangeNote change;
  };
  Result<OpLocks> LockImage(std::string_view name);
  // The entry of every public operation on one image: the name checked, the image locked for
  // the call of `fn`, its errors prefixed with what was done to which image.
  template <typename Fn>
  auto OnImage(std::string_view verb, std::string_view name, Fn&& fn) -> decltype(fn()) {
    IMAGED_TRY_CTX(imageset::ValidateImageName(name), "{}", verb);
    auto held = IMAGED_TRY_CTX(LockImage(name), "{} \"{}\"", verb, name);
    auto result = fn();
    if (!result) return std::move(result).error().Wrap(fmt::format("{} \"{}\"", verb, name));
    return result;
  }

  // lp_metadata; a missing file reads as an empty set (nullopt). Fails with the refusal while
  // the manager refuses to serve (Recover and RebuildMetadata read it themselves).
  Result<std::optional<metadata::LpMetadata>> ReadLp() const;

  // Why nothing may be changed (RecoveryReport::refused), or nullopt.
  mutable std::mutex refusal_mu;
  std::optional<std::string> refusal;
  Result<void> CheckServing() const;
  void SetRefusal(std::optional<std::string> reason);
  // Read-modify-write of lp_metadata under its lock. `edit` gets the current metadata (nullopt
  // if absent) and returns the metadata to write.
  using LpEdit = std::function<Result<metadata::LpMetadata>(std::optional<metadata::LpMetadata>)>;
  Result<void> EditLp(const LpEdit& edit);
  // Replaces the image's extents (and attributes) in lp_metadata.
  Result<void> RecordExtents(std::string_view name, uint32_t attributes,
                             const std::vector<metadata::Extent>& extents);

  // An image as lp_metadata records it (a copy of its entry, not a pointer into a metadata).
  struct Image {
    metadata::Partition partition;
    std::vector<metadata::Extent> extents;
    uint64_t size = 0;
    bool readonly() const { return imageset::IsReadonly(partition); }
  };
  // ENOENT "no such image" when lp_metadata does not list it.
  Result<Image> FindImage(std::string_view name);
  // The same, and EBUSY when it is mapped (naming the device): what every operation that
  // changes an image's files starts with.
  Result<Image> FindUnmappedImage(std::string_view name);

  // The operation's intent (manager/intent.h), written before its first durable step.
  // Creating intents (create, fill) refuse (EEXIST) for an image in lp_metadata.
  Result<void> WriteIntent(std::string_view name, const manager::Intent& intent);
  Result<void> ClearIntent(std::string_view name);
  // nullopt when there is none.
  Result<std::optional<manager::Intent>> ReadIntent(std::string_view name);

  // device-mapper, created on first use (the host may have none).
  Result<dm::DeviceMapper*> Dm();
  // The kernel's devices now: one dm listing, one loop scan.
  Result<manager::KernelView> ScanKernel();
  // The identities of every piece file of `name` in the data dir, listed or not.
  Result<std::vector<manager::FileId>> PieceIds(std::string_view name);
  // The device node an image is mapped at: its dm device, else the first loop over one of its
  // pieces; nullopt when neither exists.
  Result<std::optional<std::string>> MappedDevice(std::string_view name,
                                                  const manager::KernelView& kernel);
  Result<std::optional<std::string>> MappedDeviceLocked(std::string_view name);

  // ---- the operations, under the caller's locks ----
  // `fill`, when given, writes the new image before it is recorded: the pieces are allocated
  // without zeroing (SplitFiemap defer_zeroing), `fill` writes them, and whatever it did not
  // write is zeroed (CompleteZeroing) before the extents are read, validated and recorded in
  // lp_metadata. If `fill` fails, nothing of the image is left.
  using FillFn = std::function<Result<void>(fiemap::SplitFiemap&)>;
  Result<void> CreateLocked(std::string_view name, uint64_t size, const CreateOptions& options,
                            const FillFn& fill = {});
  // The plan of an operation that keeps the image's pieces as they are (nothing allocated).
  Result<SpacePlan> PlanInPlace(std::string_view name, uint64_t size,
                                const fiemap::FilesystemInfo& fs);
  // Everything a create checks before it allocates; the space it would take.
  Result<SpacePlan> CheckCreatable(std::string_view name, uint64_t size,
                                   const fiemap::FilesystemInfo& fs);
  // Writes an empty lp_metadata for a new set; nothing when one exists.
  Result<void> EnsureSetMetadata(const fiemap::FilesystemInfo& fs);
  Result<void> RecordNewImage(std::string_view name, const fiemap::SplitFiemap& split,
                              const fiemap::FilesystemInfo& fs, uint64_t size, bool readonly);
  Result<void> DeleteLocked(std::string_view name);
  Result<ImageInfo> InfoLocked(std::string_view name, const metadata::LpMetadata& md);
  // Grows the image; a mapped one grows live (GrowMappingLocked) once lp_metadata has the size.
  Result<void> GrowLocked(std::string_view name, uint64_t new_size,
                          const ResizeOptions& options);
  // Runs `resize` and announces it when the size changed (not for a dry run).
  Result<void> AnnouncingResize(std::string_view name, bool dry_run,
                                const std::function<Result<void>()>& resize);
  // resize --fs: the filesystem on the image grows to fill it (manager/fs_grow.h).
  Result<void> GrowFilesystemLocked(std::string_view name);
  Result<void> ShrinkLocked(std::string_view name, uint64_t new_size);

  struct MapRequest {
    std::chrono::milliseconds timeout{0};
    bool force_writable = false;  // internal writers (zero-fill, import) of read-only images
  };
  Result<std::string> MapLocked(std::string_view name, const MapRequest& request);
  // The two strategies; `split` holds the pieces whose extents were just checked.
  Result<std::string> MapDmLinear(std::string_view name, const Image& image,
                                  const fiemap::FilesystemInfo& fs, bool readonly,
                                  std::chrono::milliseconds timeout);
  Result<std::string> MapLoops(std::string_view name, const Image& image,
                               const fiemap::SplitFiemap& split, const fiemap::FilesystemInfo& fs,
                               bool readonly, std::chrono::milliseconds timeout);
  // Brings the live devices of a mapped image up to the size lp_metadata records, in place (same
  // node and dev_t): dm tables swapped (load, suspend, resume), loops resized, loops for new
  // pieces attached and recorded first. Nothing when it is not mapped. Idempotent, so Recover
  // can finish a grow a crash interrupted.
  Result<void> GrowMappingLocked(std::string_view name);
  Result<void> GrowLoopMapping(std::string_view name, const Image& image,
                               const fiemap::SplitFiemap& split,
                               const std::vector<metadata::StatusEntry>& entries,
                               const manager::KernelView& kernel);
  Result<void> UnmapLocked(std::string_view name);
  Result<void> ZeroFillLocked(std::string_view name, uint64_t bytes, const Progress& progress);
  // SAFETY RULE: the image's live extents are exactly the recorded ones (EUCLEAN, kind
  // kExtentsChanged, otherwise; other failures keep their errno). Returns the opened pieces.
  Result<fiemap::SplitFiemap> CheckExtentsLocked(std::string_view name, const Image& image);

  // The strategy Map would use now.
  Result<MapStrategy> ResolveStrategy(const fiemap::FilesystemInfo& fs);
  // True when bytes written through the image's files land where the mapped device reads them
  // (loop strategy, or dm-linear over a disk that holds plaintext).
  Result<bool> FileViewMatchesDevice(const fiemap::FilesystemInfo& fs);

  // Tears down the devices of an image that are ours: the dm device named dm_name(name), and
  // loops holding one of the image's piece files (by device and inode, never by name).
  Result<void> TearDown(std::string_view name);
  // A loop over a file turns discards and write-zeroes into hole punches (and zero-range into
  // unwritten extents) in our pieces. After a loop mapping is gone, re-allocate and write any
  // such range and record the pieces' extents again. Returns whether anything was restored.
  Result<bool> RestoreAllocationLocked(std::string_view name);

  // Recovery's test: do the devices `entries` records exist, belong to this image and map it
  // as Map would (or read-only)?
  Result<bool> MappingMatches(std::string_view name,
                              const std::vector<metadata::StatusEntry>& entries,
                              const metadata::LpMetadata& md, const manager::KernelView& kernel);
  Result<bool> DmLinearMatches(std::string_view name, const metadata::LpMetadata& md);
  Result<bool> LoopsMatch(std::string_view name, const std::vector<std::string>& loops,
                          bool dm_joined, const metadata::LpMetadata& md,
                          const manager::KernelView& kernel);

  // RebuildMetadata's step for one image: checked, sized from a matching record, added to `md`.
  Result<RebuiltImage> RebuildImage(const std::string& name,
                                    const std::optional<metadata::LpMetadata>& current,
                                    const std::optional<metadata::LpMetadata>& previous,
                                    const imageset::DiskFacts& disk, metadata::LpMetadata& md);

  std::mutex dm_mu;
  std::unique_ptr<dm::DeviceMapper> dm;

  // Tells options.on_change (if set) of a change just made to `name`, under its lock; first
  // invalidates List's snapshot, so a List made after the news never shows the time before.
  // The image as it is now is read from lp_metadata, unless the caller has just read it
  // (`image`).
  void Announce(ImageChangeKind kind, std::string_view name, std::string_view operation,
                std::string detail = {}, const ImageInfo* image = nullptr);

  // List's snapshot (list_snapshot.h); every operation that locks an image invalidates it.
  manager::ListCache list_cache;
  manager::ListCache::Key ListKey() const;
  // Every image with its mapped device, computed now in one pass.
  Result<std::vector<ImageInfo>> ListFresh();
};

}  // namespace imaged
