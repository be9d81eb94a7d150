// ImageManager: the image lifecycle for one image set (a data dir on the data filesystem and a
// metadata dir), composed from fiemap/, dm/ and metadata/. Usable without gRPC; the daemon and
// imaged-init's adoption path are its clients.
//
// Thread-safe, and safe across processes: every operation on an image holds an flock on
// `<metadata_dir>/<name>.lock`, and every read-modify-write of lp_metadata holds an flock on
// `<metadata_dir>/lp_metadata.lock`. Crash-safe: see docs/crash-safety.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imaged/common/result.h"

namespace imaged {

// Progress of long operations: bytes done of total. Returning false cancels the operation,
// which then fails with ECANCELED and leaves nothing behind.
using Progress = std::function<bool(uint64_t done, uint64_t total)>;

enum class MapStrategy {
  kAuto,      // dm-linear over the disk when the data fs sits on device-mapper, else loop
  kDmLinear,  // one dm-linear device straight over the filesystem's disk
  kLoop,      // one direct-I/O loop device per piece, joined by dm-linear when split
};

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
};

struct CreateOptions {
  bool readonly = false;         // recorded as LP_PARTITION_ATTR_READONLY; mapped read-only
  uint64_t zero_fill_bytes = 0;  // zero the first N bytes through the mapped device after create
  Progress progress;
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

struct ValidationResult {
  std::string name;
  bool ok = false;
  std::string problem;  // empty when ok
};

struct RecoveryReport {
  std::vector<std::string> adopted;     // images whose recorded devices exist and match
  std::vector<std::string> torn_down;   // images whose leftover devices were removed
  std::vector<std::string> removed_orphans;  // piece/list files with no lp_metadata entry
  // What recovery could not fix (e.g. a leftover device still open), one sentence each. The
  // rest of recovery still ran; these need an operator.
  std::vector<std::string> problems;
};

enum class ImportFormat { kAuto, kRaw, kSparse, kQcow1, kQcow2 };

struct ImportOptions {
  ImportFormat format = ImportFormat::kAuto;
  bool into_existing = false;  // write into an existing unmapped image of enough size
  bool readonly = false;       // for a newly created image
  Progress progress;
};

// `[A-Za-z0-9_.-]{1,64}`, no leading dot, and short enough for liblp's 36-byte names
// together with nothing else: names are limited to 35 bytes so lp_metadata stays readable by
// liblp. Errors are EINVAL with the reason.
Result<void> ValidateImageName(std::string_view name);

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

  // Re-reads the live extents and refuses (EUCLEAN) if they differ from lp_metadata.
  // Returns the device node path. A timeout of 0 uses default_map_timeout.
  Result<std::string> Map(std::string_view name, std::chrono::milliseconds timeout = {});
  Result<void> Unmap(std::string_view name);
  Result<bool> IsMapped(std::string_view name);
  Result<std::optional<std::string>> GetMappedDevice(std::string_view name);
  // Maps every image that is neither mapped nor disabled; returns the names mapped.
  Result<std::vector<std::string>> MapAll();

  Result<void> Disable(std::string_view name);
  Result<std::vector<std::string>> RemoveDisabled();
  // Writes zeros over the first `bytes` (0 = all) through the image's block device.
  Result<void> ZeroFill(std::string_view name, uint64_t bytes, const Progress& progress = {});
  // Checks every image's live extents against lp_metadata.
  Result<std::vector<ValidationResult>> Validate();
  // Grows an unmapped image; shrinking and resizing a mapped image are refused.
  Result<void> Resize(std::string_view name, uint64_t new_size, const Progress& progress = {});
  // Creates (or fills, with into_existing) an image from a raw/sparse/qcow file.
  Result<ImageInfo> Import(std::string_view name, const std::string& source_path,
                           const ImportOptions& options);

  // Daemon start: adopt mappings that exist and match, tear down the rest, remove orphans.
  Result<RecoveryReport> Recover();

  const ManagerOptions& options() const;

 private:
  struct Impl;
  explicit ImageManager(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace imaged
