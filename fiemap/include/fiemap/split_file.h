// SplitFiemap: an image made of one or more FiemapWriter pieces `<list>.0000`, `<list>.0001`, ...
// plus the list file `<list>` naming them (fiemap/list_file.h), all in one Directory, with
// positioned I/O across the pieces.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <fiemap/extents.h>
#include <fiemap/fiemap_writer.h>
#include <fiemap/list_file.h>
#include <imaged/common/file_io.h>
#include <imaged/common/progress.h>
#include <imaged/common/result.h>
#include <imaged/common/unique_fd.h>

namespace imaged::fiemap {

class SplitFiemap {
 public:
  struct CreateOptions {
    uint64_t max_piece_size = 0;  // 0 = the filesystem's maximum file size
    Progress progress;            // over the whole image; ends with one (total, total)
    // FiemapWriter::CreateOptions::defer_zeroing for every piece: the caller writes the image
    // and then calls CompleteZeroing() before it uses extents().
    bool defer_zeroing = false;
  };

  // What Create or Grow would allocate, found by the same rules and checks (size, piece count)
  // without allocating anything: a dry run, or the space check before the real call.
  struct Plan {
    uint64_t allocate_bytes = 0;  // new bytes on the filesystem, in whole fs blocks
    size_t pieces = 0;            // pieces the image has after it
  };
  static Result<Plan> PlanCreate(const FilesystemInfo& fs, uint64_t size, uint64_t max_piece_size);

  // Creates every piece and then, atomically, the list file `list` in `dir`. Refuses (EEXIST)
  // if the list file or any piece already exists. On any failure or cancel everything created
  // is removed.
  static Result<SplitFiemap> Create(const Directory& dir, std::string_view list, uint64_t size,
                                    const CreateOptions& options);
  // Opens an existing image, re-validating the extents of every piece.
  static Result<SplitFiemap> Open(const Directory& dir, std::string_view list);
  // Removes every piece of `list` in `dir` (whether the list file names it or not, so pieces a
  // crashed Create or Grow made before writing the list go too), then the list file. A symlink
  // or other non-regular file at one of those names is left alone and reported. Nothing there
  // is not an error.
  static Result<void> Remove(const Directory& dir, std::string_view list);
  // The names (within `dir`) of the pieces the list file names. A corrupt list file is EINVAL.
  static Result<std::vector<std::string>> ListPieces(const Directory& dir, std::string_view list);

  struct GrowOptions {
    uint64_t max_piece_size = 0;  // as for Create
    // When non-zero, a grow that would need more pieces is refused (EFBIG) before anything is
    // allocated, e.g. for an image mapped on one loop device with nothing to join a second.
    size_t max_pieces = 0;
    Progress progress;  // over the bytes added; ends with one (added, added), (0, 0) for none
  };
  // Grows the image to hold at least `size` bytes without moving a block it has (so every
  // extent recorded for it stays valid): the last piece grows in place up to the piece size,
  // then pieces are appended. New pieces are created and synced, then the list file naming them
  // replaces the old one atomically. On failure or cancel the image is back as it was (pieces
  // removed, list file and last piece restored). EFBIG beyond kMaxPieces pieces. A crash
  // mid-way is undone by CutTo with the old piece count and last piece size. After a failed
  // Grow this object no longer describes the files: Open the image again to use it.
  Result<void> Grow(uint64_t size, const GrowOptions& options);
  // What Grow(size, options) would allocate on `fs` (the filesystem the pieces are on).
  Result<Plan> PlanGrow(const FilesystemInfo& fs, uint64_t size, const GrowOptions& options) const;
  // Brings image `list` back to its first `pieces` pieces with the last one `last_piece_size`
  // bytes long: the list file names those, the last piece's extra tail is cut, later pieces are
  // removed. Idempotent: it undoes an interrupted Grow and does (or finishes) a shrink.
  static Result<void> CutTo(const Directory& dir, std::string_view list, size_t pieces,
                            uint64_t last_piece_size);

  SplitFiemap(SplitFiemap&&) = default;
  SplitFiemap& operator=(SplitFiemap&&) = default;
  SplitFiemap(const SplitFiemap&) = delete;
  SplitFiemap& operator=(const SplitFiemap&) = delete;

  const Directory& dir() const { return dir_; }
  const std::string& list() const { return list_; }
  std::string list_path() const { return dir_.PathOf(list_); }
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
  // Appends pieces holding `bytes` (a multiple of the fs block) in pieces of at most
  // `piece_size`. Progress is over `bytes`, without the final call. On failure the pieces made
  // so far stay in pieces_ for the caller to remove. `growing` arms Grow's crash points.
  Result<void> AddPieces(uint64_t bytes, uint64_t piece_size, bool defer_zeroing,
                         const Progress& progress, bool growing);
  // Of `extra` bytes of growth, what the last piece takes in place (up to `piece_size`).
  uint64_t InPlaceGrowth(uint64_t extra, uint64_t piece_size) const;
  // Grows the last piece by `bytes` (progress over `total`).
  Result<void> GrowLastPiece(uint64_t bytes, uint64_t total, const Progress& progress);
  // Removes pieces [first, end) from disk and from this object.
  void RemovePiecesFrom(size_t first);
  // The list file naming the first `count` pieces.
  Result<void> WriteList(size_t count, bool replace) const;

  Directory dir_;
  std::string list_;
  uint64_t size_ = 0;
  std::vector<FiemapWriter> pieces_;
  std::vector<uint64_t> piece_offsets_;  // start of each piece in the image
  std::vector<UniqueFd> fds_;            // empty until opened for I/O
};

}  // namespace imaged::fiemap
