#include "fiemap/split_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <imaged/common/size.h>

#include "internal.h"

namespace imaged::fiemap {
namespace {

std::string PieceName(const std::string& base, int index) {
  return fmt::format("{}.{:04d}", base, index);
}

// True for exactly "<base>.NNNN".
bool IsPieceName(std::string_view name, std::string_view base) {
  if (name.size() != base.size() + 5 || !name.starts_with(base) || name[base.size()] != '.') {
    return false;
  }
  for (size_t i = base.size() + 1; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
  }
  return true;
}

// Reads the list file; returns its lines (without the newline, empty lines dropped).
Result<std::vector<std::string>> ReadLines(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open list file \"{}\"", path);
  std::string content;
  char buf[4096];
  while (true) {
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read list file \"{}\"", path);
    if (n == 0) break;
    content.append(buf, static_cast<size_t>(n));
    // A list of kMaxPieces names is far smaller; anything bigger is not ours.
    if (content.size() > 4 << 20) return MakeError(EFBIG, "list file \"{}\" is too big", path);
  }
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < content.size()) {
    size_t nl = content.find('\n', pos);
    if (nl == std::string::npos) nl = content.size();
    if (nl > pos) lines.push_back(content.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return lines;
}

void RemovePiece(const std::string& path, Error* first_error) {
  // Truncating first makes f2fs release pinned blocks right away (AOSP a7b4a9d4f).
  if (truncate(path.c_str(), 0) != 0 && errno == ENOENT) return;
  if (unlink(path.c_str()) != 0 && errno != ENOENT && first_error->code == 0) {
    *first_error = ErrnoError("remove \"{}\"", path);
  }
}

Result<void> FullPWrite(int fd, const char* data, size_t length, uint64_t offset) {
  while (length > 0) {
    ssize_t n = pwrite(fd, data, length, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("pwrite {} bytes at {}", length, offset);
    if (n == 0) return MakeError(EIO, "pwrite at {}: wrote nothing", offset);
    data += n;
    length -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Ok();
}

Result<void> FullPRead(int fd, char* data, size_t length, uint64_t offset) {
  while (length > 0) {
    ssize_t n = pread(fd, data, length, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("pread {} bytes at {}", length, offset);
    if (n == 0) return MakeError(EIO, "pread at {}: unexpected end of file", offset);
    data += n;
    length -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Ok();
}

// Writes the list file atomically: temp file in the same dir, fsync, rename without replacing,
// fsync the dir. A crash leaves either no list file or a complete one.
Result<void> WriteListFile(const std::string& list_path, const std::string& content) {
  std::string dir = internal::Dirname(list_path);
  std::string tmp = dir + "/." + internal::Basename(list_path) + ".tmp.XXXXXX";
  UniqueFd fd(mkostemp(tmp.data(), O_CLOEXEC));
  if (!fd) return ErrnoError("create temp list file in \"{}\"", dir);
  struct Cleanup {
    std::string path;
    bool armed = true;
    ~Cleanup() {
      if (armed) unlink(path.c_str());
    }
  } cleanup{tmp};
  if (fchmod(fd.get(), 0640) != 0 && errno != EPERM) return ErrnoError("chmod \"{}\"", tmp);
  IMAGED_TRY_CTX(FullPWrite(fd.get(), content.data(), content.size(), 0), "write \"{}\"", tmp);
  if (fsync(fd.get()) != 0) return ErrnoError("fsync \"{}\"", tmp);
  fd.reset();
  if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, list_path.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno != EINVAL) return ErrnoError("rename to \"{}\"", list_path);
    // The fs lacks RENAME_NOREPLACE: check, then rename (we hold the pieces, so a racing
    // creator of the same image already failed on them).
    struct stat st;
    if (lstat(list_path.c_str(), &st) == 0) return MakeError(EEXIST, "\"{}\" exists", list_path);
    if (rename(tmp.c_str(), list_path.c_str()) != 0) {
      return ErrnoError("rename to \"{}\"", list_path);
    }
  }
  cleanup.armed = false;
  return internal::FsyncDir(dir);
}

}  // namespace

Result<SplitFiemap> SplitFiemap::Create(const std::string& list_path, uint64_t size,
                                        const CreateOptions& options) {
  if (size == 0) return MakeError(EINVAL, "create \"{}\": size is 0", list_path);
  const std::string dir = internal::Dirname(list_path);
  FilesystemInfo fs = IMAGED_TRY_CTX(InspectFilesystem(dir), "create \"{}\"", list_path);
  const uint64_t bs = fs.block_size;
  if (size > UINT64_MAX - bs) return MakeError(EFBIG, "create \"{}\": size overflows", list_path);
  const uint64_t total = (size + bs - 1) / bs * bs;
  uint64_t piece_size = fs.max_file_size;
  if (options.max_piece_size != 0) piece_size = std::min(piece_size, options.max_piece_size);
  piece_size = std::max<uint64_t>(piece_size / bs * bs, bs);
  const uint64_t count = (total + piece_size - 1) / piece_size;
  if (count > static_cast<uint64_t>(kMaxPieces)) {
    return MakeError(EFBIG, "create \"{}\": {} needs {} pieces of {}, more than {}", list_path,
                     HumanSize(total), count, HumanSize(piece_size), kMaxPieces);
  }
  struct stat st;
  if (lstat(list_path.c_str(), &st) == 0) {
    return MakeError(EEXIST, "create \"{}\": the list file exists", list_path);
  }
  if (total > fs.free_bytes) {
    return MakeError(ENOSPC, "create \"{}\": {} needed, {} free", list_path, HumanSize(total),
                     HumanSize(fs.free_bytes));
  }

  // Removes the pieces created so far unless Create succeeds.
  struct Rollback {
    std::vector<std::string> created;
    bool armed = true;
    ~Rollback() {
      if (!armed) return;
      Error ignored;
      for (const auto& p : created) RemovePiece(p, &ignored);
      if (!created.empty()) (void)internal::FsyncParentDir(created.front());
    }
  } rollback;

  SplitFiemap split;
  split.list_path_ = list_path;
  const std::string base = internal::Basename(list_path);
  std::string list_content;
  uint64_t done_before = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t chunk = std::min(piece_size, total - done_before);
    const std::string piece_path = dir + "/" + PieceName(base, static_cast<int>(i));
    // The whole-image callback: per-piece (n, n) ends are not the image's end, which is
    // reported once below, after the list file exists.
    ProgressFn piece_progress;
    if (options.progress) {
      piece_progress = [&](uint64_t done, uint64_t) {
        uint64_t overall = done_before + done;
        if (overall >= total) return true;
        return options.progress(overall, total);
      };
    }
    FiemapWriter::CreateOptions piece_options;
    piece_options.progress = piece_progress;
    piece_options.defer_zeroing = options.defer_zeroing;
    auto writer = FiemapWriter::Create(piece_path, chunk, piece_options);
    if (!writer) return std::move(writer).error().Wrap(fmt::format("create \"{}\"", list_path));
    rollback.created.push_back(piece_path);
    if (writer->fs_dev() != fs.fs_dev) {
      return MakeError(EXDEV, "create \"{}\": piece \"{}\" is on another filesystem", list_path,
                       piece_path);
    }
    split.piece_offsets_.push_back(done_before);
    done_before += writer->size();
    split.pieces_.push_back(std::move(*writer));
    list_content += PieceName(base, static_cast<int>(i)) + "\n";
  }
  split.size_ = done_before;
  IMAGED_TRY_CTX(WriteListFile(list_path, list_content), "create \"{}\"", list_path);
  if (options.progress && !options.progress(total, total)) {
    unlink(list_path.c_str());
    return MakeError(ECANCELED, "create \"{}\"", list_path);
  }
  rollback.armed = false;
  return split;
}

Result<std::vector<std::string>> SplitFiemap::ListPieces(const std::string& list_path) {
  auto lines = IMAGED_TRY(ReadLines(list_path));
  const std::string dir = internal::Dirname(list_path);
  const std::string base = internal::Basename(list_path);
  if (lines.empty()) return MakeError(EINVAL, "list file \"{}\" names no pieces", list_path);
  if (lines.size() > static_cast<size_t>(kMaxPieces)) {
    return MakeError(EINVAL, "list file \"{}\" names too many pieces", list_path);
  }
  std::vector<std::string> pieces;
  for (size_t i = 0; i < lines.size(); ++i) {
    // Only our own names, in order: a list file is never trusted to point elsewhere.
    if (lines[i] != PieceName(base, static_cast<int>(i))) {
      return MakeError(EINVAL, "list file \"{}\": line {} is not \"{}\"", list_path, i + 1,
                       PieceName(base, static_cast<int>(i)));
    }
    pieces.push_back(dir + "/" + lines[i]);
  }
  return pieces;
}

Result<SplitFiemap> SplitFiemap::Open(const std::string& list_path) {
  auto paths = IMAGED_TRY_CTX(ListPieces(list_path), "open \"{}\"", list_path);
  SplitFiemap split;
  split.list_path_ = list_path;
  uint64_t offset = 0;
  for (const auto& p : paths) {
    auto writer = IMAGED_TRY_CTX(FiemapWriter::Open(p), "open \"{}\"", list_path);
    if (!split.pieces_.empty() && writer.fs_dev() != split.pieces_.front().fs_dev()) {
      return MakeError(EXDEV, "open \"{}\": piece \"{}\" is on another filesystem", list_path, p);
    }
    split.piece_offsets_.push_back(offset);
    offset += writer.size();
    split.pieces_.push_back(std::move(writer));
  }
  split.size_ = offset;
  return split;
}

Result<void> SplitFiemap::Remove(const std::string& list_path) {
  const std::string dir = internal::Dirname(list_path);
  const std::string base = internal::Basename(list_path);
  Error first_error;
  auto lines = ReadLines(list_path);
  if (!lines && lines.error().code != ENOENT && lines.error().code != EFBIG) {
    return lines.error().Wrap(fmt::format("remove \"{}\"", list_path));
  }
  if (lines) {
    for (const auto& line : *lines) {
      // Corrupt, overlong or foreign lines are skipped, never followed.
      if (line.size() > NAME_MAX || !IsPieceName(line, base)) continue;
      RemovePiece(dir + "/" + line, &first_error);
    }
  }
  // Orphans: pieces a crashed Create made before it wrote the list file, or that a corrupt
  // list no longer names.
  if (DIR* d = opendir(dir.c_str())) {
    std::vector<std::string> orphans;
    while (dirent* e = readdir(d)) {
      if (IsPieceName(e->d_name, base)) orphans.push_back(dir + "/" + e->d_name);
    }
    closedir(d);
    for (const auto& o : orphans) RemovePiece(o, &first_error);
  } else if (errno != ENOENT && first_error.code == 0) {
    first_error = ErrnoError("open directory \"{}\"", dir);
  }
  if (unlink(list_path.c_str()) != 0 && errno != ENOENT && first_error.code == 0) {
    first_error = ErrnoError("remove \"{}\"", list_path);
  }
  if (first_error.code != 0) return first_error.Wrap(fmt::format("remove \"{}\"", list_path));
  auto synced = internal::FsyncDir(dir);
  if (!synced && synced.error().code != ENOENT) return synced.error();
  return Ok();
}

Result<void> SplitFiemap::CompleteZeroing() {
  for (auto& piece : pieces_) IMAGED_TRY(piece.CompleteZeroing());
  return Ok();
}

bool SplitFiemap::zeroing_deferred() const {
  for (const auto& piece : pieces_) {
    if (piece.zeroing_deferred()) return true;
  }
  return false;
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
    int flags = O_RDWR | O_CLOEXEC | O_NOFOLLOW | (direct ? O_DIRECT : 0);
    UniqueFd fd(open(p.path().c_str(), flags));
    if (!fd) return ErrnoError("open \"{}\"{}", p.path(), direct ? " for direct I/O" : "");
    fds.push_back(std::move(fd));
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
      own.reset(open(pieces_[i].path().c_str(), O_RDONLY | O_CLOEXEC));
      if (!own) return ErrnoError("open \"{}\"", pieces_[i].path());
      fd = own.get();
    }
    if (fsync(fd) != 0) return ErrnoError("fsync \"{}\"", pieces_[i].path());
  }
  return Ok();
}

}  // namespace imaged::fiemap
