// SplitFiemap: an image made of one or more FiemapWriter pieces `<list_path>.0000`, `.0001`, ...
// plus the list file `<list_path>` naming them (basenames, one per line), with positioned I/O
// across the pieces.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <fiemap/extents.h>
#include <fiemap/fiemap_writer.h>
#include <imaged/common/result.h>
#include <imaged/common/unique_fd.h>

namespace imaged::fiemap {

inline constexpr int kMaxPieces = 9999;

class SplitFiemap {
 public:
  struct CreateOptions {
    uint64_t max_piece_size = 0;  // 0 = the filesystem's maximum file size
    ProgressFn progress;          // over the whole image; ends with one (total, total)
    // FiemapWriter::CreateOptions::defer_zeroing for every piece: the caller writes the image
    // and then calls CompleteZeroing() before it uses extents().
    bool defer_zeroing = false;
  };

  // Creates every piece and then, atomically, the list file. Refuses (EEXIST) if the list file
  // or any piece already exists. On any failure or cancel everything created is removed.
  static Result<SplitFiemap> Create(const std::string& list_path, uint64_t size,
                                    const CreateOptions& options);
  // Opens an existing image, re-validating the extents of every piece.
  static Result<SplitFiemap> Open(const std::string& list_path);
  // Removes the pieces named in the list file, orphan `<list_path>.NNNN` files, then the list
  // file. Tolerates missing pieces and corrupt, overlong or foreign lines (those are skipped,
  // never followed). A missing list file is not an error.
  static Result<void> Remove(const std::string& list_path);
  // Full paths of the pieces named in the list file. Corrupt lines are an error (EINVAL).
  static Result<std::vector<std::string>> ListPieces(const std::string& list_path);

  SplitFiemap(SplitFiemap&&) = default;
  SplitFiemap& operator=(SplitFiemap&&) = default;
  SplitFiemap(const SplitFiemap&) = delete;
  SplitFiemap& operator=(const SplitFiemap&) = delete;

  const std::string& list_path() const { return list_path_; }
  uint64_t size() const { return size_; }  // sum of the block-aligned piece sizes
  uint32_t block_size() const;
  const std::vector<FiemapWriter>& pieces() const { return pieces_; }
  // All pieces' extents; `logical` is relative to the whole image.
  std::vector<Extent> extents() const;

  // Opens every piece for I/O, with O_DIRECT when `direct`: the caller then owns alignment
  // (buffer address, offset and length multiples of the disk's logical block size). PWrite/PRead
  // open buffered on first use when this was not called.
  Result<void> OpenForIo(bool direct);
  // Positioned I/O over the concatenated pieces. Anything past size() is an error (EINVAL).
  // Once OpenForIo was called, calls on disjoint ranges may run concurrently.
  Result<void> PWrite(const void* data, size_t length, uint64_t offset);
  Result<void> PRead(void* data, size_t length, uint64_t offset);
  // fsync every piece.
  Result<void> Sync();

  // After Create with defer_zeroing: FiemapWriter::CompleteZeroing on every piece (zeros where
  // nothing was written, fsync, extents read and validated). No-op otherwise.
  Result<void> CompleteZeroing();
  bool zeroing_deferred() const;

 private:
  SplitFiemap() = default;
  std::string list_path_;
  uint64_t size_ = 0;
  std::vector<FiemapWriter> pieces_;
  std::vector<uint64_t> piece_offsets_;  // start of each piece in the image
  std::vector<UniqueFd> fds_;            // empty until opened for I/O
};

}  // namespace imaged::fiemap
