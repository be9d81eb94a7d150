#include "fiemap/split_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include <imaged/common/crash_point.h>
#include <imaged/common/size.h>

namespace imaged::fiemap {
namespace {

// The largest piece: the filesystem's maximum file size, or less when configured, in whole fs
// blocks.
uint64_t PieceSize(const FilesystemInfo& fs, uint64_t max_piece_size) {
  const uint64_t bs = fs.block_size;
  uint64_t piece = fs.max_file_size;
  if (max_piece_size != 0) piece = std::min(piece, max_piece_size);
  return std::max<uint64_t>(piece / bs * bs, bs);
}

Result<uint64_t> RoundToBlock(uint64_t size, uint32_t block_size) {
  if (size > UINT64_MAX - block_size) return MakeError(EFBIG, "size overflows");
  return (size + block_size - 1) / block_size * block_size;
}

// `existing` pieces and `bytes` more in pieces of `piece_size` must stay within `max` pieces
// (kMaxPieces, or less when the caller can use fewer).
Result<void> CheckPieceCount(size_t existing, uint64_t bytes, uint64_t piece_size,
                             size_t max = kMaxPieces) {
  const uint64_t count = existing + (bytes + piece_size - 1) / piece_size;
  if (count > max) {
    return MakeError(EFBIG, "{} needs {} pieces of {}, more than {}", HumanSize(bytes), count,
                     HumanSize(piece_size), max);
  }
  return Ok();
}

}  // namespace

Result<void> SplitFiemap::AddPieces(uint64_t bytes, uint64_t piece_size, bool defer_zeroing,
                                    const Progress& progress, bool growing) {
  uint64_t done = 0;
  while (done < bytes) {
    const std::string name = PieceName(list_, pieces_.size());
    FiemapWriter::CreateOptions piece_options;
    piece_options.defer_zeroing = defer_zeroing;
    if (progress) {
      // Per-piece (n, n) ends are not the image's end, which the caller reports.
      piece_options.progress = [&](uint64_t d, uint64_t) {
        return done + d >= bytes || progress(done + d, bytes);
      };
    }
    auto piece =
        FiemapWriter::Create(dir_, name, std::min(piece_size, bytes - done), piece_options);
    if (!piece) return std::move(piece).error();
    if (!pieces_.empty() && piece->fs_dev() != pieces_.front().fs_dev()) {
      pieces_.push_back(std::move(*piece));
      return MakeError(EXDEV, "piece \"{}\" is on another filesystem", dir_.PathOf(name));
    }
    piece_offsets_.push_back(size_);
    size_ += piece->size();
    done += piece->size();
    pieces_.push_back(std::move(*piece));
    if (growing) IMAGED_CRASH_POINT("grow.piece_created");
  }
  return Ok();
}

void SplitFiemap::RemovePiecesFrom(size_t first) {
  fds_.clear();
  for (size_t i = pieces_.size(); i > first; --i) {
    (void)FiemapWriter::Remove(dir_, pieces_[i - 1].name());
    size_ -= std::min(size_, pieces_[i - 1].size());
  }
  pieces_.erase(pieces_.begin() + static_cast<ptrdiff_t>(std::min(first, pieces_.size())),
                pieces_.end());
  piece_offsets_.resize(std::min(first, piece_offsets_.size()));
  (void)dir_.Sync();
}

Result<void> SplitFiemap::WriteList(size_t count, bool replace) const {
  const std::string content = SerializeList(list_, count);
  return dir_.AtomicWrite(list_, {reinterpret_cast<const uint8_t*>(content.data()), content.size()},
                          {.mode = 0640, .replace = replace});
}

Result<SplitFiemap> SplitFiemap::Create(const Directory& dir, std::string_view list, uint64_t size,
                                        const CreateOptions& options) {
  const std::string what = fmt::format("create \"{}\"", dir.PathOf(list));
  if (size == 0) return MakeError(EINVAL, "{}: size is 0", what);
  const FilesystemInfo fs = IMAGED_TRY_CTX(InspectFilesystem(dir.fd(), dir.path()), "{}", what);
  const uint64_t total =
      IMAGED_TRY_CTX(PlanCreate(fs, size, options.max_piece_size), "{}", what).allocate_bytes;
  const uint64_t piece_size = PieceSize(fs, options.max_piece_size);
  if (dir.Exists(list)) return MakeError(EEXIST, "{}: the list file exists", what);
  if (total > fs.free_bytes) {
    return MakeError(ENOSPC, "{}: {} needed, {} free", what, HumanSize(total),
                     HumanSize(fs.free_bytes));
  }
  SplitFiemap split;
  split.dir_ = dir;
  split.list_ = std::string(list);
  auto made = split.AddPieces(total, piece_size, options.defer_zeroing, options.progress, false);
  // No replace: a list file that appeared meanwhile belongs to someone else.
  if (made) made = split.WriteList(split.pieces_.size(), /*replace=*/false);
  if (made && options.progress && !options.progress(total, total)) {
    (void)dir.RemoveFile(list);
    made = MakeError(ECANCELED, "cancelled");
  }
  if (!made) {
    split.RemovePiecesFrom(0);
    return std::move(made).error().Wrap(what);
  }
  return split;
}

Result<std::vector<std::string>> SplitFiemap::ListPieces(const Directory& dir,
                                                         std::string_view list) {
  auto content = IMAGED_TRY_CTX(dir.ReadFile(list, kMaxListFileBytes), "list file");
  const size_t count = IMAGED_TRY_CTX(
      ParseList({reinterpret_cast<const char*>(content.data()), content.size()}, list),
      "list file \"{}\"", dir.PathOf(list));
  std::vector<std::string> names;
  names.reserve(count);
  for (size_t i = 0; i < count; ++i) names.push_back(PieceName(list, i));
  return names;
}

Result<SplitFiemap> SplitFiemap::Open(const Directory& dir, std::string_view list) {
  const std::string what = fmt::format("open \"{}\"", dir.PathOf(list));
  const auto names = IMAGED_TRY_CTX(ListPieces(dir, list), "{}", what);
  SplitFiemap split;
  split.dir_ = dir;
  split.list_ = std::string(list);
  for (const auto& name : names) {
    auto piece = IMAGED_TRY_CTX(FiemapWriter::Open(dir, name), "{}", what);
    if (!split.pieces_.empty() && piece.fs_dev() != split.pieces_.front().fs_dev()) {
      return MakeError(EXDEV, "{}: piece \"{}\" is on another filesystem", what, piece.path());
    }
    split.piece_offsets_.push_back(split.size_);
    split.size_ += piece.size();
    split.pieces_.push_back(std::move(piece));
  }
  return split;
}

Result<void> SplitFiemap::Remove(const Directory& dir, std::string_view list) {
  const std::string what = fmt::format("remove \"{}\"", dir.PathOf(list));
  std::optional<Error> first;
  auto note = [&](Result<bool> r) {
    if (!r && !first) first = std::move(r).error();
  };
  // Every piece name, listed or not: a crashed Create or Grow may have made pieces that no list
  // file names yet.
  for (const auto& name : IMAGED_TRY_CTX(dir.List(), "{}", what)) {
    if (PieceIndex(name, list)) note(FiemapWriter::Remove(dir, name));
  }
  note(dir.RemoveFile(list));
  if (first) return std::move(*first).Wrap(what);
  IMAGED_TRY_CTX(dir.Sync(), "{}", what);
  return Ok();
}

Result<SplitFiemap::Plan> SplitFiemap::PlanCreate(const FilesystemInfo& fs, uint64_t size,
                                                  uint64_t max_piece_size) {
  if (size == 0) return MakeError(EINVAL, "size is 0");
  const uint64_t total = IMAGED_TRY(RoundToBlock(size, fs.block_size));
  const uint64_t piece_size = PieceSize(fs, max_piece_size);
  IMAGED_TRY(CheckPieceCount(0, total, piece_size));
  return Plan{total, static_cast<size_t>((total + piece_size - 1) / piece_size)};
}

uint64_t SplitFiemap::InPlaceGrowth(uint64_t extra, uint64_t piece_size) const {
  // The last piece first: growing it in place keeps a one-piece image mappable without
  // device-mapper.
  const uint64_t last = pieces_.back().size();
  return std::min(extra, piece_size > last ? piece_size - last : 0);
}

Result<SplitFiemap::Plan> SplitFiemap::PlanGrow(const FilesystemInfo& fs, uint64_t size,
                                                const GrowOptions& options) const {
  if (size <= size_) return Plan{0, pieces_.size()};
  const uint64_t extra = IMAGED_TRY(RoundToBlock(size - size_, fs.block_size));
  const uint64_t piece_size = PieceSize(fs, options.max_piece_size);
  const uint64_t appended = extra - InPlaceGrowth(extra, piece_size);
  const size_t max_pieces =
      options.max_pieces != 0 ? std::min(options.max_pieces, kMaxPieces) : kMaxPieces;
  IMAGED_TRY(CheckPieceCount(pieces_.size(), appended, piece_size, max_pieces));
  return Plan{extra,
              pieces_.size() + static_cast<size_t>((appended + piece_size - 1) / piece_size)};
}

Result<void> SplitFiemap::Grow(uint64_t size, const GrowOptions& options) {
  const std::string what = fmt::format("grow \"{}\"", list_path());
  if (size <= size_) {
    if (options.progress) (void)options.progress(0, 0);  // nothing to add: done at once
    return Ok();
  }
  const FilesystemInfo fs = IMAGED_TRY_CTX(InspectFilesystem(dir_.fd(), dir_.path()), "{}", what);
  const uint64_t extra = IMAGED_TRY_CTX(PlanGrow(fs, size, options), "{}", what).allocate_bytes;
  const uint64_t piece_size = PieceSize(fs, options.max_piece_size);
  if (extra > fs.free_bytes) {
    return MakeError(ENOSPC, "{}: {} more needed, {} free", what, HumanSize(extra),
                     HumanSize(fs.free_bytes));
  }
  const size_t old_pieces = pieces_.size();
  const uint64_t old_last = pieces_.back().size();
  const uint64_t in_place = InPlaceGrowth(extra, piece_size);
  auto grown = GrowLastPiece(in_place, extra, options.progress);
  if (grown && in_place < extra) {
    Progress rest;
    if (options.progress) {
      rest = [&](uint64_t d, uint64_t) { return options.progress(in_place + d, extra); };
    }
    grown = AddPieces(extra - in_place, piece_size, /*defer_zeroing=*/false, rest, true);
    if (grown) grown = WriteList(pieces_.size(), /*replace=*/true);
    if (grown) IMAGED_CRASH_POINT("grow.list_written");
  }
  if (grown && options.progress && !options.progress(extra, extra)) {
    grown = MakeError(ECANCELED, "cancelled");
  }
  if (!grown) {
    Error e = std::move(grown).error().Wrap(what);
    fds_.clear();
    if (auto undone = CutTo(dir_, list_, old_pieces, old_last); !undone) {
      e.message += fmt::format(" (and undoing it failed: {})", undone.error().ToString());
    }
    return e;
  }
  return Ok();
}

Result<void> SplitFiemap::GrowLastPiece(uint64_t bytes, uint64_t total, const Progress& progress) {
  if (bytes == 0) return Ok();
  FiemapWriter& last = pieces_.back();
  const uint64_t before = last.size();
  Progress partial;
  if (progress) partial = [&](uint64_t d, uint64_t) { return progress(d, total); };
  IMAGED_TRY(last.Extend(before + bytes, partial));
  size_ += last.size() - before;
  IMAGED_CRASH_POINT("grow.piece_extended");
  return Ok();
}

Result<void> SplitFiemap::CutTo(const Directory& dir, std::string_view list, size_t pieces,
                                uint64_t last_piece_size) {
  const std::string what = fmt::format("cut \"{}\" to {} piece(s)", dir.PathOf(list), pieces);
  if (pieces == 0 || pieces > kMaxPieces) return MakeError(EINVAL, "{}: {} pieces", what, pieces);
  // The list first: once it names only the old pieces, later ones are not part of the image.
  const std::string content = SerializeList(list, pieces);
  IMAGED_TRY_CTX(dir.AtomicWrite(list, {reinterpret_cast<const uint8_t*>(content.data()),
                                        content.size()},
                                 {.mode = 0640}),
                 "{}", what);
  IMAGED_TRY_CTX(FiemapWriter::Truncate(dir, PieceName(list, pieces - 1), last_piece_size), "{}",
                 what);
  for (const auto& name : IMAGED_TRY_CTX(dir.List(), "{}", what)) {
    auto index = PieceIndex(name, list);
    if (index && *index >= pieces) IMAGED_TRY_CTX(FiemapWriter::Remove(dir, name), "{}", what);
  }
  IMAGED_TRY_CTX(dir.Sync(), "{}", what);
  return Ok();
}

Result<void> SplitFiemap::CompleteZeroing() {
  for (auto& piece : pieces_) IMAGED_TRY(piece.CompleteZeroing());
  return Ok();
}

bool SplitFiemap::zeroing_deferred() const {
  return std::any_of(pieces_.begin(), pieces_.end(),
                     [](const FiemapWriter& p) { return p.zeroing_deferred(); });
}

uint32_t SplitFiemap::block_size() const {
  return pieces_.empty() ? 0 : pieces_.front().block_size();
}

std::vector<Extent> SplitFiemap::extents() const {
  std::vector<Extent> out;
  for (size_t i = 0; i < pieces_.size(); ++i) {
    for (auto e : pieces_[i].extents()) {
      e.logical += piece_offsets_[i];
      out.push_back(e);
    }
  }
  return out;
}

Result<void> SplitFiemap::OpenForIo(bool direct) {
  std::vector<UniqueFd> fds;
  for (const auto& p : pieces_) {
    auto fd = p.OpenFile(O_RDWR | (direct ? O_DIRECT : 0));
    if (!fd) return std::move(fd).error().Wrap(direct ? "open for direct I/O" : "open for I/O");
    fds.push_back(std::move(*fd));
  }
  fds_ = std::move(fds);
  return Ok();
}

namespace {

// Calls `fn(fd, piece_offset, pointer_offset, length)` for each piece the range touches.
template <typename Fn>
Result<void> ForEachPiece(const std::vector<uint64_t>& offsets,
                          const std::vector<FiemapWriter>& pieces, std::vector<UniqueFd>& fds,
                          uint64_t size, size_t length, uint64_t offset, const char* what,
                          Fn&& fn) {
  if (offset > size || length > size - offset) {
    return MakeError(EINVAL, "{} {} bytes at {}: past the end of the image ({} bytes)", what,
                     length, offset, size);
  }
  // Find the piece holding `offset`: the last piece starting at or before it.
  size_t i = static_cast<size_t>(std::upper_bound(offsets.begin(), offsets.end(), offset) -
                                 offsets.begin());
  i = i == 0 ? 0 : i - 1;
  size_t done = 0;
  while (done < length) {
    uint64_t in_piece = offset + done - offsets[i];
    size_t len =
        static_cast<size_t>(std::min<uint64_t>(length - done, pieces[i].size() - in_piece));
    IMAGED_TRY_CTX(fn(fds[i].get(), in_piece, done, len), "{} \"{}\"", what, pieces[i].path());
    done += len;
    ++i;
  }
  return Ok();
}

}  // namespace

Result<void> SplitFiemap::PWrite(const void* data, size_t length, uint64_t offset) {
  if (fds_.empty()) IMAGED_TRY(OpenForIo(false));
  const char* p = static_cast<const char*>(data);
  return ForEachPiece(piece_offsets_, pieces_, fds_, size_, length, offset, "write",
                      [&](int fd, uint64_t at, size_t from, size_t len) {
                        return FullPWrite(fd, p + from, len, at);
                      });
}

Result<void> SplitFiemap::PRead(void* data, size_t length, uint64_t offset) {
  if (fds_.empty()) IMAGED_TRY(OpenForIo(false));
  char* p = static_cast<char*>(data);
  return ForEachPiece(piece_offsets_, pieces_, fds_, size_, length, offset, "read",
                      [&](int fd, uint64_t at, size_t from, size_t len) {
                        return FullPRead(fd, p + from, len, at);
                      });
}

Result<void> SplitFiemap::Sync() {
  for (size_t i = 0; i < pieces_.size(); ++i) {
    UniqueFd own;
    int fd = i < fds_.size() ? fds_[i].get() : -1;
    if (fd < 0) {
      own = IMAGED_TRY(pieces_[i].OpenFile(O_RDONLY));
      fd = own.get();
    }
    if (fsync(fd) != 0) return ErrnoError("fsync \"{}\"", pieces_[i].path());
  }
  return Ok();
}

}  // namespace imaged::fiemap
