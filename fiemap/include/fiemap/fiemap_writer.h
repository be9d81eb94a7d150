// FiemapWriter: a file whose blocks are allocated, written (no unwritten extents), pinned
// where the fs can move blocks, and whose physical extents are known and validated. Files are
// named inside an open Directory and never reached through a symlink.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <fiemap/extents.h>
#include <fiemap/filesystem.h>
#include <imaged/common/file_io.h>
#include <imaged/common/progress.h>
#include <imaged/common/result.h>

namespace imaged::fiemap {

class FiemapWriter {
 public:
  struct CreateOptions {
    // Over the file's size; a successful Create ends with exactly one (total, total).
    Progress progress;
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

  // Creates `name` in `dir` (O_EXCL: an existing file is never touched, EEXIST) of `size`
  // rounded up to the fs block, allocated, zero-filled and pinned, then reads its extents.
  // size == 0 is EINVAL; larger than the fs maximum is EFBIG; not enough free space is ENOSPC.
  // On any failure or cancel (ECANCELED) the file is removed.
  static Result<FiemapWriter> Create(const Directory& dir, std::string_view name, uint64_t size,
                                     const CreateOptions& options);

  // Re-reads and re-validates the extents (and the pin on f2fs) of an existing file. Used before
  // every map. A 0-byte file is an error (EINVAL).
  static Result<FiemapWriter> Open(const Directory& dir, std::string_view name);

  // Makes every block of existing file `name` allocated and written: ranges that lost their
  // blocks (holes punched through a loop device) or hold unwritten extents (zero-range) get
  // their blocks back and zeros written, which is what they read as already; then fsync.
  // Returns whether anything had to be written. The extents may change: re-Open to record them.
  static Result<bool> EnsureWritten(const Directory& dir, std::string_view name);

  // Grows the file in place to `new_size` (rounded up to the fs block) with allocated, written
  // zeros, as Create makes them; the blocks it already has never move (checked: the extents of
  // the old part must be unchanged, else EUCLEAN of kind kExtentsChanged). Progress is over the
  // bytes added, without a final call. On failure the file may be longer than before; the
  // caller that records sizes truncates it back (Truncate).
  Result<void> Extend(uint64_t new_size, const Progress& progress = {});
  // Cuts existing file `name` back to `size` bytes (no-op when it is not longer), freeing the
  // tail: only for a tail that nothing records (a rolled-back Extend).
  static Result<void> Truncate(const Directory& dir, std::string_view name, uint64_t size);

  // Removes regular file `name` (truncated first, so f2fs frees pinned blocks right away).
  // False when there was none; a symlink or other non-regular file is an error naming it.
  static Result<bool> Remove(const Directory& dir, std::string_view name);

  // After Create with defer_zeroing: writes zeros wherever the file is still unwritten or a
  // hole, fsyncs, then reads and validates the extents (refusing any that are still
  // UNWRITTEN). No-op when zeroing was not deferred. The file is not removed on failure (the
  // caller that created it removes it).
  Result<void> CompleteZeroing();
  bool zeroing_deferred() const { return zeroing_deferred_; }

  FiemapWriter(FiemapWriter&&) = default;
  FiemapWriter& operator=(FiemapWriter&&) = default;
  FiemapWriter(const FiemapWriter&) = delete;
  FiemapWriter& operator=(const FiemapWriter&) = delete;

  // Opens the file for I/O (flags as for open(2); O_NOFOLLOW is implied).
  Result<UniqueFd> OpenFile(int flags) const { return dir_.OpenFile(name_, flags); }
  const Directory& dir() const { return dir_; }
  const std::string& name() const { return name_; }
  const std::string& path() const { return path_; }  // for messages and the kernel's loop record
  uint64_t size() const { return size_; }            // block-aligned
  uint32_t block_size() const { return fs_.block_size; }
  FsType fs_type() const { return fs_.type; }
  dev_t fs_dev() const { return fs_.fs_dev; }
  const std::vector<Extent>& extents() const { return extents_; }  // physical on fs_device
  const FilesystemInfo& filesystem() const { return fs_; }

 private:
  FiemapWriter(const Directory& dir, std::string_view name, uint64_t size, FilesystemInfo fs,
               std::vector<Extent> extents, bool zeroing_deferred)
      : dir_(dir),
        name_(name),
        path_(dir.PathOf(name)),
        size_(size),
        fs_(std::move(fs)),
        extents_(std::move(extents)),
        zeroing_deferred_(zeroing_deferred) {}
  Directory dir_;
  std::string name_;
  std::string path_;
  uint64_t size_ = 0;
  FilesystemInfo fs_;
  std::vector<Extent> extents_;
  bool zeroing_deferred_ = false;
};

}  // namespace imaged::fiemap
