#include "fiemap/extents.h"

#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <string>

#include "internal.h"

namespace imaged::fiemap {
namespace {

std::string FlagNames(uint32_t flags) {
  static constexpr struct {
    uint32_t bit;
    const char* name;
  } kNames[] = {
      {FIEMAP_EXTENT_LAST, "LAST"},
      {FIEMAP_EXTENT_UNKNOWN, "UNKNOWN"},
      {FIEMAP_EXTENT_DELALLOC, "DELALLOC"},
      {FIEMAP_EXTENT_ENCODED, "ENCODED"},
      {FIEMAP_EXTENT_DATA_ENCRYPTED, "DATA_ENCRYPTED"},
      {FIEMAP_EXTENT_NOT_ALIGNED, "NOT_ALIGNED"},
      {FIEMAP_EXTENT_DATA_INLINE, "DATA_INLINE"},
      {FIEMAP_EXTENT_DATA_TAIL, "DATA_TAIL"},
      {FIEMAP_EXTENT_UNWRITTEN, "UNWRITTEN"},
      {FIEMAP_EXTENT_MERGED, "MERGED"},
      {FIEMAP_EXTENT_SHARED, "SHARED"},
  };
  std::string out;
  for (const auto& n : kNames) {
    if (flags & n.bit) {
      if (!out.empty()) out += "|";
      out += "FIEMAP_EXTENT_";
      out += n.name;
      flags &= ~n.bit;
    }
  }
  if (flags) {
    if (!out.empty()) out += "|";
    out += fmt::format("{:#x}", flags);
  }
  return out;
}

// Appends `e` to `out`, merging it into the previous extent when both logical and physical
// ranges continue it. Callers have checked that e.logical is the previous end.
void Append(std::vector<Extent>& out, const Extent& e) {
  if (!out.empty()) {
    Extent& last = out.back();
    if (last.logical + last.length == e.logical && last.physical + last.length == e.physical) {
      last.length += e.length;
      return;
    }
  }
  out.push_back(e);
}

// Shared walk for both sources: order, holes, overlap, coverage, trimming at file_size.
class Coverage {
 public:
  explicit Coverage(uint64_t file_size) : file_size_(file_size) {}

  Result<void> Add(uint64_t logical, uint64_t physical, uint64_t length) {
    if (length == 0) return MakeError(EINVAL, "zero-length extent at offset {}", logical);
    if (logical > UINT64_MAX - length || physical > UINT64_MAX - length) {
      return MakeError(EINVAL, "extent at offset {} overflows", logical);
    }
    if (end_ >= file_size_) return Ok();  // past EOF (e.g. preallocated tail): not ours
    if (logical > end_)
      return MakeError(EINVAL, "hole at offset {} (next extent at {})", end_, logical);
    if (logical < end_) {
      return MakeError(EINVAL, "extent at offset {} overlaps the previous one ending at {}",
                       logical, end_);
    }
    uint64_t len = std::min(length, file_size_ - logical);
    Append(out_, Extent{logical, physical, len});
    end_ = logical + len;
    return Ok();
  }

  Result<std::vector<Extent>> Finish() && {
    if (file_size_ == 0) return MakeError(EINVAL, "file is empty");
    if (end_ < file_size_) {
      return MakeError(EINVAL, "hole at offset {}: extents end before the file size {}", end_,
                       file_size_);
    }
    return std::move(out_);
  }

 private:
  uint64_t file_size_;
  uint64_t end_ = 0;
  std::vector<Extent> out_;
};

}  // namespace

Result<std::vector<Extent>> ValidateAndMerge(const std::vector<struct fiemap_extent>& raw,
                                             uint64_t file_size) {
  if (raw.empty()) return MakeError(EINVAL, "no extents (sparse or empty file)");
  Coverage coverage(file_size);
  for (size_t i = 0; i < raw.size(); ++i) {
    const auto& e = raw[i];
    const bool last = i + 1 == raw.size();
    if (uint32_t bad = e.fe_flags & kRejectedExtentFlags) {
      return MakeError(EINVAL, "extent at offset {} has unsupported flags {}", e.fe_logical,
                       FlagNames(bad));
    }
    if ((e.fe_flags & FIEMAP_EXTENT_LAST) && !last) {
      return MakeError(EINVAL, "extent at offset {} is flagged LAST but more follow", e.fe_logical);
    }
    if (last && !(e.fe_flags & FIEMAP_EXTENT_LAST)) {
      return MakeError(EINVAL, "extent list ends at offset {} without the LAST flag",
                       e.fe_logical + e.fe_length);
    }
    IMAGED_TRY(coverage.Add(e.fe_logical, e.fe_physical, e.fe_length));
  }
  return std::move(coverage).Finish();
}

Result<std::vector<Extent>> MergeExtents(const std::vector<Extent>& in, uint64_t file_size) {
  Coverage coverage(file_size);
  for (const auto& e : in) IMAGED_TRY(coverage.Add(e.logical, e.physical, e.length));
  return std::move(coverage).Finish();
}

namespace internal {

Result<std::vector<struct fiemap_extent>> FiemapExtents(int fd, uint64_t length) {
  // Pages of 512 extents (28 KiB); a file of any fragmentation is read in as many pages as it
  // takes, each page starting where the previous one's last extent ended.
  constexpr uint32_t kPage = 512;
  std::vector<uint64_t> storage((sizeof(struct fiemap) + kPage * sizeof(struct fiemap_extent) + 7) /
                                8);
  auto* fm = reinterpret_cast<struct fiemap*>(storage.data());
  std::vector<struct fiemap_extent> raw;
  uint64_t start = 0;
  while (start < length) {
    std::memset(fm, 0, sizeof(*fm));
    fm->fm_start = start;
    fm->fm_length = length - start;
    // SYNC flushes dirty data first, so delayed allocations get real blocks before we look.
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = kPage;
    if (ioctl(fd, FS_IOC_FIEMAP, fm) != 0) return ErrnoError("FIEMAP at offset {}", start);
    if (fm->fm_mapped_extents == 0) break;
    const auto* ext = fm->fm_extents;
    raw.insert(raw.end(), ext, ext + fm->fm_mapped_extents);
    const auto& tail = raw.back();
    if (tail.fe_flags & FIEMAP_EXTENT_LAST) break;
    uint64_t next = tail.fe_logical + tail.fe_length;
    if (next <= start) return MakeError(EIO, "FIEMAP made no progress at offset {}", start);
    start = next;
  }
  return raw;
}

}  // namespace internal

Result<std::vector<Extent>> ReadExtentsFiemap(int fd, uint64_t file_size) {
  return ValidateAndMerge(IMAGED_TRY(internal::FiemapExtents(fd, FIEMAP_MAX_OFFSET)), file_size);
}

Result<std::vector<Extent>> ReadExtentsFibmap(int fd, uint64_t file_size) {
  int block_size = 0;
  if (ioctl(fd, FIGETBSZ, &block_size) != 0) return ErrnoError("FIGETBSZ");
  if (block_size <= 0) return MakeError(EINVAL, "FIGETBSZ returned {}", block_size);
  // FIBMAP answers per fs block (a sector on vfat). A vfat cluster is contiguous on disk, so
  // asking once per cluster (statfs f_bsize) is enough and much cheaper.
  uint64_t stride = static_cast<uint64_t>(block_size);
  struct statfs sfs;
  if (fstatfs(fd, &sfs) == 0 && sfs.f_bsize > block_size && sfs.f_bsize % block_size == 0) {
    stride = static_cast<uint64_t>(sfs.f_bsize);
  }
  uint64_t blocks = (file_size + block_size - 1) / block_size;
  if (blocks > static_cast<uint64_t>(INT_MAX)) {
    return MakeError(EFBIG, "file of {} blocks is too large for FIBMAP", blocks);
  }
  std::vector<Extent> in;
  for (uint64_t offset = 0; offset < file_size; offset += stride) {
    int block = static_cast<int>(offset / block_size);
    if (ioctl(fd, FIBMAP, &block) != 0) return ErrnoError("FIBMAP at offset {}", offset);
    if (block == 0) return MakeError(EINVAL, "hole at offset {} (FIBMAP)", offset);
    uint64_t len = std::min(stride, file_size - offset);
    len = (len + block_size - 1) / block_size * block_size;
    // Byte offsets for both sides (AOSP stored the block index as the logical offset).
    Extent e{offset, static_cast<uint64_t>(static_cast<unsigned>(block)) * block_size, len};
    if (!in.empty() && in.back().physical + in.back().length == e.physical) {
      in.back().length += e.length;
    } else {
      in.push_back(e);
    }
  }
  return MergeExtents(in, file_size);
}

Result<std::vector<Extent>> ReadExtents(int fd, FsType type, uint64_t file_size) {
  if (type == FsType::Vfat) {
    // vfat has no FIEMAP. Flush first so every cluster is allocated before FIBMAP looks.
    if (fsync(fd) != 0) return ErrnoError("fsync");
    return ReadExtentsFibmap(fd, file_size);
  }
  return ReadExtentsFiemap(fd, file_size);
}

}  // namespace imaged::fiemap
