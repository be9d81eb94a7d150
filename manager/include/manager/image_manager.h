// ImageManager: the image lifecycle for one image set (a data dir on the data filesystem and a
// metadata dir), composed from fiemap/, dm/ and metadata/. Usable without gRPC; the daemon and
// imaged-init's adoption path are its clients.
//
// Thread-safe, and safe across processes: every operation on an image holds an flock on its lock
// in `<metadata_dir>/.locks/` and the set lock shared (recovery holds it exclusively), and every
// read-modify-write of lp_metadata holds the lp_metadata lock (imageset/names.h names them all).
// Crash-safe: see docs/crash-safety.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imaged/common/progress.h"
#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"
#include "import/reader.h"
#include "import/source.h"
#include "manager/map_strategy.h"

namespace imaged {

// Space the data filesystem keeps free for everything else on it: an allocation (create, import,
// grow) that would leave less free than the larger of the two is refused with ENOSPC. gsid
// hard-codes 40%; here the admin chooses (imaged.conf(5)), and 0 and 0 allow filling the fs.
struct SpaceReserve {
  uint32_t min_free_percent = 0;  // of the filesystem's size
  uint64_t min_free_bytes = 0;
};

// What an allocation takes and leaves (imagectl --dry-run, like qemu-img measure).
struct SpacePlan {
  uint64_t size_bytes = 0;      // the image's size after the operation
  uint64_t allocate_bytes = 0;  // new bytes on the data filesystem (whole fs blocks)
  uint32_t pieces = 0;          // backing files the image has after it
  uint64_t free_bytes = 0;      // free on the data filesystem now
  uint64_t free_after_bytes = 0;
  uint64_t reserve_bytes = 0;  // what SpaceReserve keeps free on this filesystem
  uint64_t fs_bytes = 0;       // the data filesystem's size
};

struct ImageChange;

struct ManagerOptions {
  std::string data_dir;      // on the data filesystem; created if missing
  std::string metadata_dir;  // lp_metadata, .status and .lock files; created if missing
  MapStrategy strategy = MapStrategy::kAuto;
  // dm device names are <dm_prefix><image name>, so images never collide with other users of
  // device-mapper (AOSP uses bare names).
  std::string dm_prefix = "imaged-";
  uint64_t max_piece_size = 0;  // 0: the filesystem's own maximum file size
  std::chrono::milliseconds default_map_timeout{10000};
  // List answers from a snapshot that this manager's own operations invalidate; a mapping made
  // or removed by another process shows up in List at most about this late (0: every List
  // re-reads everything). Operations always check the live state.
  std::chrono::milliseconds list_refresh_interval{1000};
  SpaceReserve reserve;
  // Told of every change this manager makes to an image, while it still holds the image's lock:
  // the changes of one image arrive in the order they were made. Runs on the operation's
  // thread, so it must be quick and must not call the manager.
  std::function<void(const ImageChange&)> on_change;
};

struct CreateOptions {
  bool readonly = false;         // recorded as LP_PARTITION_ATTR_READONLY; mapped read-only
  uint64_t zero_fill_bytes = 0;  // zero the first N bytes through the mapped device after create
  Progress progress;
  // Set: a dry run. The same checks as the real create, then the plan is stored here and
  // nothing is changed.
  SpacePlan* dry_run = nullptr;
};

struct ImageInfo {
  std::string name;
  uint64_t size_bytes = 0;  // the requested size; a mapped device has exactly this size
  uint32_t pieces = 0;
  uint32_t extents = 0;
  bool readonly = false;
  bool disabled = false;
  std::optional<std::string> mapped_device;  // device node path while mapped
};

// What ManagerOptions::on_change is told.
enum class ImageChangeKind {
  kCreated,  // by create or by an import into a new image
  kDeleted,  // by delete or remove-disabled
  kMapped,   // by map or map-all
  kUnmapped,
  kResized,  // grown or shrunk
  kDisabled,
  kImported,  // an import into an existing image replaced its content
  kZeroFilled,
  kCorrupt,     // a check found the extents no longer match lp_metadata (validate, map)
  kSetRebuilt,  // RebuildMetadata replaced lp_metadata: every image may have changed
};

struct ImageChange {
  ImageChangeKind kind = ImageChangeKind::kCreated;
  std::string name;       // empty for kSetRebuilt
  std::string operation;  // what made the change: "create", "import", "map-all", ...
  // The image right after the change; nullopt for kDeleted and kSetRebuilt (and if reading it
  // back failed).
  std::optional<ImageInfo> image;
  std::string detail;  // kCorrupt: the problem found
};

struct ResizeOptions {
  Progress progress;  // over the bytes added
  // Then grow the ext4, xfs or f2fs filesystem on the image to fill it (imagectl resize --fs,
  // like lvextend -r): on its device when mapped, else through a temporary mapping. The
  // image's grow stands if this fails; the error says so.
  bool grow_filesystem = false;
  SpacePlan* dry_run = nullptr;  // as for CreateOptions
};

// The data filesystem now (imaged's metrics).
struct SpaceUsage {
  uint64_t fs_bytes = 0;
  uint64_t free_bytes = 0;     // available to imaged (f_bavail)
  uint64_t reserve_bytes = 0;  // what SpaceReserve keeps free of it
};

struct ValidationResult {
  std::string name;
  bool ok = false;
  std::string problem;  // empty when ok
};

struct RecoveryReport {
  std::vector<std::string> adopted;    // images whose recorded devices exist and match
  std::vector<std::string> torn_down;  // images whose leftover devices (or interrupted
                                       // creations and deletions) were removed
  // Data-dir files that nothing explains (no lp_metadata entry and no intent, or pieces the
  // list file does not name): kept, never deleted.
  std::vector<std::string> kept;
  // What recovery could not fix or would not touch (a leftover device still open, files it
  // kept), one sentence each. The rest of recovery still ran; these need an operator.
  std::vector<std::string> problems;
  // Set when the set cannot be judged (lp_metadata unreadable, or missing while the data dir
  // holds images): recovery changed nothing, and the manager refuses every operation with this
  // reason until RebuildMetadata (or a Recover that finds lp_metadata again).
  std::optional<std::string> refused;
};

struct RebuiltImage {
  std::string name;
  uint64_t size_bytes = 0;
  // Where the size and attributes came from: "lp_metadata", "lp_metadata.prev", or "pieces"
  // (no record matched the files: the size is what the pieces hold, attributes none).
  std::string source;
};

struct RebuildReport {
  std::vector<RebuiltImage> images;  // in the new lp_metadata
  // Images left out, with the reason (e.g. an interrupted operation, extents that fail checks).
  std::vector<std::string> skipped;
  std::optional<std::string> saved_as;  // where an unreadable lp_metadata was kept
};

struct ImportOptions {
  std::optional<import::Format> format;  // nullopt: detected from the source's content
  bool into_existing = false;            // write into an existing unmapped image of enough size
  bool readonly = false;                 // for a newly created image
  Progress progress;
  // A compressed or archived source: bytes of the file decoded so far, of its size, alongside
  // `progress` (which counts the image's bytes); also while a raw image inside is measured,
  // when `progress` stays at 0. Returning false cancels, as for `progress`.
  Progress input_progress;
  // As for CreateOptions. A compressed raw image is decoded once to learn its size.
  SpacePlan* dry_run = nullptr;
};

// One daemon per image set: startup recovery tears down mappings it does not know, which would
// be wrong while another daemon serves the same set. The claim lasts while the fd is open;
// EBUSY when another process holds it.
Result<UniqueFd> ClaimImageSet(const std::string& metadata_dir);

class ImageManager {
 public:
  static Result<std::unique_ptr<ImageManager>> Open(const ManagerOptions& options);
  ~ImageManager();

  Result<void> Create(std::string_view name, uint64_t size_bytes, const CreateOptions& options);
  Result<void> Delete(std::string_view name);
  Result<bool> Exists(std::string_view name);
  // Every image. Answered from a snapshot (see ManagerOptions::list_refresh_interval).
  Result<std::vector<ImageInfo>> List();
  // The same without a copy. The pointer stays the same while the snapshot is reused, so a
  // caller that keeps the previous pointer may reuse what it derived from it (e.g. a serialized
  // reply) while the two compare equal.
  Result<std::shared_ptr<const std::vector<ImageInfo>>> ListShared();
  Result<ImageInfo> Info(std::string_view name);
  Result<SpaceUsage> Space();

  // Re-reads the live extents and refuses (EUCLEAN) if they differ from lp_metadata.
  // Returns the device node path. A timeout of 0 uses default_map_timeout.
  Result<std::string> Map(std::string_view name, std::chrono::milliseconds timeout = {});
  Result<void> Unmap(std::string_view name);
  // The device node of a mapped image, nullopt when it is not mapped; ENOENT for no image.
  Result<std::optional<std::string>> GetMappedDevice(std::string_view name);
  // Maps every image that is neither mapped nor disabled; returns the names mapped.
  Result<std::vector<std::string>> MapAll();

  Result<void> Disable(std::string_view name);
  Result<std::vector<std::string>> RemoveDisabled();
  // Writes zeros over the first `bytes` (0 = all) through the image's block device.
  Result<void> ZeroFill(std::string_view name, uint64_t bytes, const Progress& progress = {});
  // Checks every image's live extents against lp_metadata.
  Result<std::vector<ValidationResult>> Validate();
  // Grows an image to `new_size`, mapped or not: a mapped image's device grows in place (same
  // node and dev_t) while it is in use. A one-piece image mapped on its loop grows only within
  // its piece (EFBIG beyond). Shrinking is refused (EINVAL).
  Result<void> Resize(std::string_view name, uint64_t new_size, const ResizeOptions& options);
  Result<void> Resize(std::string_view name, uint64_t new_size, const Progress& progress = {}) {
    return Resize(name, new_size, ResizeOptions{progress});
  }
  // The same to its current size plus `bytes` ("+1G"), read under the image's lock.
  Result<void> GrowBy(std::string_view name, uint64_t bytes, const ResizeOptions& options = {});
  // Shrinks an unmapped image to `new_size`: the bytes past it are gone, so callers ask for it
  // explicitly. Refused when mapped (EBUSY), read-only (EROFS), or when the image holds an
  // ext4, xfs or f2fs filesystem larger than `new_size` (EFBIG, naming it). lp_metadata records
  // the new size before any piece is cut, so nothing ever maps a freed block.
  Result<void> Shrink(std::string_view name, uint64_t new_size);
  // Creates (or fills, with into_existing) an image from a raw/sparse/qcow file.
  // The source is opened by the caller, with its own rights (the daemon opens a client's path
  // as the client: see imaged/daemon/peer.h).
  Result<ImageInfo> Import(std::string_view name, std::unique_ptr<import::FileSource> source,
                           const ImportOptions& options);
  // The same from what `reader` produces (a client's upload streamed straight in); `options`'s
  // format is the reader's. `source_name` names the source in messages.
  Result<ImageInfo> Import(std::string_view name, import::ImageReader& reader,
                           std::string_view source_name, const ImportOptions& options);
  // The same for a path this process may read (tools, tests).
  Result<ImageInfo> Import(std::string_view name, const std::string& source_path,
                           const ImportOptions& options);

  // Daemon start: adopt mappings that exist and match, tear down the rest, finish or undo
  // interrupted operations by their intents.
  Result<RecoveryReport> Recover();
  // Why the manager refuses every operation (see RecoveryReport::refused); nullopt when it
  // serves.
  std::optional<std::string> Refusal() const;
  // Rebuilds lp_metadata from the images' list files and live extents (each piece checked as
  // Map checks it), taking sizes and attributes from lp_metadata or its previous generation
  // where their record matches the files. An unreadable lp_metadata is kept beside. Then
  // Recover runs again.
  Result<RebuildReport> RebuildMetadata();

  const ManagerOptions& options() const;

  // Defined in manager/internal.h; named here so the manager's own helpers can use it.
  struct Impl;

 private:
  explicit ImageManager(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace imaged
