#include "log_writes.h"

#include <endian.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "imaged/common/file_io.h"

namespace imaged::test {
namespace {

// The on-disk structs are packed little-endian fields; they are read field by field so that
// neither padding nor the host's byte order matters.
constexpr size_t kSuperBytes = 8 + 8 + 8 + 4;
constexpr size_t kEntryBytes = 8 + 8 + 8 + 8;
// The kernel's logical block sizes: 512 up to a page, and nothing uses more than 64 KiB.
constexpr uint32_t kMinSectorSize = 512;
constexpr uint32_t kMaxSectorSize = 64 << 10;
constexpr size_t kCopyChunk = 1 << 20;

uint64_t Le64At(const std::vector<uint8_t>& block, size_t at) {
  uint64_t v;
  std::memcpy(&v, block.data() + at, sizeof(v));
  return le64toh(v);
}

uint32_t Le32At(const std::vector<uint8_t>& block, size_t at) {
  uint32_t v;
  std::memcpy(&v, block.data() + at, sizeof(v));
  return le32toh(v);
}

Result<uint64_t> FdBytes(int fd, const std::string& what) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return ErrnoError("stat {}", what);
  if (!S_ISBLK(st.st_mode)) return static_cast<uint64_t>(st.st_size);
  uint64_t bytes = 0;
  if (ioctl(fd, BLKGETSIZE64, &bytes) != 0) return ErrnoError("BLKGETSIZE64 {}", what);
  return bytes;
}

}  // namespace

Result<LogWrites> LogWrites::Open(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open log \"{}\"", path);
  const uint64_t log_bytes = IMAGED_TRY(FdBytes(fd.get(), path));
  std::vector<uint8_t> super(kMinSectorSize);
  if (log_bytes < super.size()) {
    return MakeError(EINVAL, "log \"{}\": {} bytes, shorter than a super block", path, log_bytes);
  }
  IMAGED_TRY_CTX(FullPRead(fd.get(), super.data(), super.size(), 0), "log \"{}\"", path);
  static_assert(kSuperBytes <= kMinSectorSize);
  if (const uint64_t magic = Le64At(super, 0); magic != kLogWritesMagic) {
    return MakeError(EINVAL, "log \"{}\": bad magic {:#x}, not a dm-log-writes log", path, magic);
  }
  if (const uint64_t version = Le64At(super, 8); version != kLogWritesVersion) {
    return MakeError(EINVAL, "log \"{}\": version {}, only {} is known", path, version,
                     kLogWritesVersion);
  }
  const uint64_t nr_entries = Le64At(super, 16);
  const uint32_t sector_size = Le32At(super, 24);
  if (sector_size < kMinSectorSize || sector_size > kMaxSectorSize ||
      (sector_size & (sector_size - 1)) != 0) {
    return MakeError(EINVAL, "log \"{}\": sector size {} is not a power of two in [{}, {}]", path,
                     sector_size, kMinSectorSize, kMaxSectorSize);
  }
  LogWrites log(std::move(fd), path, sector_size);
  IMAGED_TRY(log.ReadEntries(nr_entries, log_bytes));
  return log;
}

Result<void> LogWrites::ReadEntries(uint64_t nr_entries, uint64_t log_bytes) {
  // Every entry takes at least its own block after the super block's: a larger count is a
  // corrupt super block, not a reason to allocate.
  if (nr_entries > log_bytes / sector_size_ - 1) {
    return MakeError(EINVAL, "log \"{}\": {} entries cannot fit in {} bytes", path_, nr_entries,
                     log_bytes);
  }
  entries_.reserve(nr_entries);
  uint64_t offset = sector_size_;
  for (uint64_t i = 0; i < nr_entries; ++i) {
    LogEntry entry = IMAGED_TRY(ReadEntry(i, offset, log_bytes));
    const uint64_t data_bytes = entry.is_discard() ? 0 : entry.nr_sectors * sector_size_;
    offset = entry.data_offset + data_bytes;
    entries_.push_back(std::move(entry));
  }
  return Ok();
}

Result<LogEntry> LogWrites::ReadEntry(uint64_t index, uint64_t offset, uint64_t log_bytes) const {
  const auto bad = [&](std::string why) {
    return MakeError(EINVAL, "log \"{}\": entry {} at byte {}: {}", path_, index, offset, why);
  };
  if (offset > log_bytes || log_bytes - offset < sector_size_)
    return bad("past the end of the log");
  std::vector<uint8_t> block(sector_size_);
  IMAGED_TRY_CTX(FullPRead(fd_.get(), block.data(), block.size(), offset), "log \"{}\"", path_);
  LogEntry e;
  e.sector = Le64At(block, 0);
  e.nr_sectors = Le64At(block, 8);
  e.flags = Le64At(block, 16);
  const uint64_t data_len = Le64At(block, 24);
  e.data_offset = offset + sector_size_;
  if (e.flags & ~kLogKnownFlags) return bad(fmt::format("unknown flags {:#x}", e.flags));
  if (e.is_mark()) {
    if (e.nr_sectors != 0) return bad("a mark that writes sectors");
    if (data_len > sector_size_ - kEntryBytes) return bad("a mark longer than its block");
    e.mark.assign(reinterpret_cast<const char*>(block.data()) + kEntryBytes, data_len);
    return e;
  }
  const uint64_t max_sectors = std::numeric_limits<uint64_t>::max() / sector_size_;
  if (e.sector > max_sectors || e.nr_sectors > max_sectors - e.sector) {
    return bad("sector range overflows");
  }
  if (e.is_discard()) return e;  // the log holds no data for a discard
  const uint64_t data_bytes = e.nr_sectors * sector_size_;
  // Only DAX writes carry data_len, and then it is the write's own length.
  if (data_len != 0 && data_len != data_bytes) {
    return bad(fmt::format("data_len {} for {} sectors", data_len, e.nr_sectors));
  }
  if (data_bytes > log_bytes - e.data_offset) return bad("data past the end of the log");
  return e;
}

std::vector<uint64_t> LogWrites::FlushPoints() const {
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < entries_.size(); ++i) {
    if (entries_[i].is_flush_point()) out.push_back(i);
  }
  return out;
}

std::vector<uint64_t> LogWrites::Marks() const {
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < entries_.size(); ++i) {
    if (entries_[i].is_mark()) out.push_back(i);
  }
  return out;
}

std::optional<uint64_t> LogWrites::FindMark(const std::string& name) const {
  for (uint64_t i = 0; i < entries_.size(); ++i) {
    if (entries_[i].is_mark() && entries_[i].mark == name) return i;
  }
  return std::nullopt;
}

bool LogWrites::WritesWithin(uint64_t begin, uint64_t end, uint64_t first_byte,
                             uint64_t end_byte, uint64_t with_flags) const {
  end = std::min<uint64_t>(end, entries_.size());
  for (uint64_t i = begin; i < end; ++i) {
    const LogEntry& e = entries_[i];
    if (e.is_mark() || e.nr_sectors == 0 || (e.flags & with_flags) != with_flags) continue;
    const uint64_t from = e.sector * sector_size_;
    const uint64_t to = from + e.nr_sectors * sector_size_;
    if (from < end_byte && to > first_byte) return true;
  }
  return false;
}

Result<void> LogWrites::Replay(uint64_t begin, uint64_t end, int target_fd) const {
  if (begin > end || end > entries_.size()) {
    return MakeError(EINVAL, "replay \"{}\": entries [{}, {}) of {}", path_, begin, end,
                     entries_.size());
  }
  const uint64_t target_bytes = IMAGED_TRY(FdBytes(target_fd, "the replay target"));
  for (uint64_t i = begin; i < end; ++i) {
    IMAGED_TRY(ReplayEntry(entries_[i], i, target_fd, target_bytes));
  }
  if (fdatasync(target_fd) != 0) return ErrnoError("replay \"{}\": fdatasync the target", path_);
  return Ok();
}

Result<void> LogWrites::ReplayEntry(const LogEntry& e, uint64_t index, int target_fd,
                                    uint64_t target_bytes) const {
  if (e.is_mark() || e.nr_sectors == 0) return Ok();
  const uint64_t at = e.sector * sector_size_;
  const uint64_t bytes = e.nr_sectors * sector_size_;
  if (at > target_bytes || bytes > target_bytes - at) {
    return MakeError(EINVAL, "replay \"{}\": entry {} writes bytes [{}, {}) of a {}-byte target",
                     path_, index, at, at + bytes, target_bytes);
  }
  // A discarded range reads as anything afterwards; zeros are one of the things it may read as.
  if (e.is_discard()) return WriteZerosToFd(target_fd, at, bytes, "the replay target");
  std::vector<uint8_t> buf(std::min<uint64_t>(bytes, kCopyChunk));
  for (uint64_t done = 0; done < bytes;) {
    const size_t n = std::min<uint64_t>(buf.size(), bytes - done);
    IMAGED_TRY_CTX(FullPRead(fd_.get(), buf.data(), n, e.data_offset + done),
                   "replay \"{}\": entry {}", path_, index);
    IMAGED_TRY_CTX(FullPWrite(target_fd, buf.data(), n, at + done), "replay \"{}\": entry {}",
                   path_, index);
    done += n;
  }
  return Ok();
}

}  // namespace imaged::test
