// Where a file still needs zeros written: holes and unwritten extents, from FIEMAP.
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>

#include "internal.h"

namespace imaged::fiemap::internal {

Result<std::vector<Range>> UnwrittenRanges(int fd, uint64_t file_size) {
  constexpr uint32_t kPage = 512;
  std::vector<uint64_t> storage((sizeof(struct fiemap) + kPage * sizeof(struct fiemap_extent) + 7) /
                                8);
  auto* fm = reinterpret_cast<struct fiemap*>(storage.data());
  std::vector<Range> out;
  auto add = [&](uint64_t from, uint64_t to) {
    to = std::min(to, file_size);
    if (from >= to) return;
    if (!out.empty() && out.back().offset + out.back().length == from) {
      out.back().length += to - from;
    } else {
      out.push_back({from, to - from});
    }
  };
  uint64_t covered = 0;  // [0, covered) is accounted for
  uint64_t start = 0;
  while (start < file_size) {
    std::memset(fm, 0, sizeof(*fm));
    fm->fm_start = start;
    fm->fm_length = file_size - start;
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = kPage;
    if (ioctl(fd, FS_IOC_FIEMAP, fm) != 0) return ErrnoError("FIEMAP at offset {}", start);
    if (fm->fm_mapped_extents == 0) break;
    bool last = false;
    for (uint32_t i = 0; i < fm->fm_mapped_extents; ++i) {
      const auto& e = fm->fm_extents[i];
      const uint64_t end = static_cast<uint64_t>(e.fe_logical) + e.fe_length;
      if (e.fe_logical > covered) add(covered, e.fe_logical);  // a hole
      if (e.fe_flags & FIEMAP_EXTENT_UNWRITTEN) add(std::max<uint64_t>(e.fe_logical, covered), end);
      covered = std::max(covered, end);
      last = last || (e.fe_flags & FIEMAP_EXTENT_LAST);
    }
    if (last || covered >= file_size) break;
    if (covered <= start) return MakeError(EIO, "FIEMAP made no progress at offset {}", start);
    start = covered;
  }
  add(covered, file_size);  // a hole at the end
  return out;
}

}  // namespace imaged::fiemap::internal
