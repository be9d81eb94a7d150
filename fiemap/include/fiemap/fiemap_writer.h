// FiemapWriter: a file whose blocks are allocated, written (no unwritten extents), pinned
// where the fs can move blocks, and whose physical extents are known and validated.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <fiemap/extents.h>
#include <fiemap/filesystem.h>
#include <imaged/common/result.h>

namespace imaged::fiemap {

// Called with bytes done and the total; returning false cancels the operation. A successful
// operation ends with exactly one (total, total) call.
using ProgressFn = std::function<bool(uint64_t done, uint64_t total)>;

class FiemapWriter {
 public:
  struct CreateOptions {
    ProgressFn progress;
    // Allocate without writing zeros, for a caller that writes the file itself right away (an
    // import): each byte is then written once instead of twice. On ext4 and xfs the extents stay
    // UNWRITTEN (they read as zeros through the file) until CompleteZeroing(), which the caller
    // must call after its writes and before using extents(): it zero-writes every range still
    // unwritten, syncs, and reads and validates the extents. Until then extents() is empty and
    // the file must be neither mapped nor recorded. Elsewhere (f2fs, vfat, or where
    // FALLOC_FL_WRITE_ZEROES zeroes for free) Create zeroes as usual and zeroing_deferred() is
    // false.
    bool defer_zeroing = false;
  };

  // Creates `path` (O_CREAT|O_EXCL: an existing file is never touched, EEXIST) of `size`
  // rounded up to the fs block, allocated, zero-filled and pinned, then reads its extents.
  // size == 0 is EINVAL; larger than the fs maximum is EFBIG; not enough free space is ENOSPC.
  // On any failure or cancel (ECANCELED) the file is removed.
  static Result<FiemapWriter> Create(const std::string& path, uint64_t size,
                                     const ProgressFn& progress = {});
  static Result<FiemapWriter> Create(const std::string& path, uint64_t size,
                                     const CreateOptions& options);

  // After Create with defer_zeroing: writes zeros wherever the file is still unwritten or a
  // hole, fsyncs, then reads and validates the extents (refusing any that are still
  // UNWRITTEN). No-op when zeroing was not deferred. The file is not removed on failure (the
  // caller that created it removes it).
  Result<void> CompleteZeroing();
  bool zeroing_deferred() const { return zeroing_deferred_; }

  // Re-reads and re-validates the extents (and the pin on f2fs) of an existing file. Used before
  // every map. A 0-byte file is an error (EINVAL).
  static Result<FiemapWriter> Open(const std::string& path);

  FiemapWriter(FiemapWriter&&) = default;
  FiemapWriter& operator=(FiemapWriter&&) = default;
  FiemapWriter(const FiemapWriter&) = delete;
  FiemapWriter& operator=(const FiemapWriter&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }  // block-aligned
  uint32_t block_size() const { return fs_.block_size; }
  FsType fs_type() const { return fs_.type; }
  dev_t fs_dev() const { return fs_.fs_dev; }
  const std::vector<Extent>& extents() const { return extents_; }  // physical on fs_device
  const FilesystemInfo& filesystem() const { return fs_; }

 private:
  FiemapWriter() = default;
  std::string path_;
  uint64_t size_ = 0;
  FilesystemInfo fs_;
  std::vector<Extent> extents_;
  bool zeroing_deferred_ = false;
};

// True when a file on this filesystem keeps its physical blocks once written: always for ext4,
// xfs and vfat; on f2fs only if the file is pinned and GC moved none of its blocks.
Result<bool> HasPinnedExtents(const std::string& path);

}  // namespace imaged::fiemap
