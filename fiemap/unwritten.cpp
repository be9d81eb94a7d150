// Where a file still needs zeros written: holes and unwritten extents, from FIEMAP.
#include <algorithm>

#include "internal.h"

namespace imaged::fiemap::internal {

Result<std::vector<Range>> UnwrittenRanges(int fd, uint64_t file_size) {
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
  for (const auto& e : IMAGED_TRY(FiemapExtents(fd, file_size))) {
    const uint64_t end = static_cast<uint64_t>(e.fe_logical) + e.fe_length;
    if (e.fe_logical > covered) add(covered, e.fe_logical);  // a hole
    if (e.fe_flags & FIEMAP_EXTENT_UNWRITTEN) add(std::max<uint64_t>(e.fe_logical, covered), end);
    covered = std::max(covered, end);
  }
  add(covered, file_size);  // a hole at the end
  return out;
}

}  // namespace imaged::fiemap::internal
