// Helpers shared by the fiemap sources; not part of the public API.
#pragma once

#include <linux/fiemap.h>

#include <cstdint>
#include <string>
#include <vector>

#include <fiemap/filesystem.h>
#include <imaged/common/result.h>

namespace imaged::fiemap::internal {

Result<uint64_t> MaxFileSizeFor(FsType type, uint32_t block_size, const std::string& fs_device);

// [offset, offset+length) ranges of [0, file_size) that hold no written data: holes and
// FIEMAP_EXTENT_UNWRITTEN extents, ascending, merged.
struct Range {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const Range&) const = default;
};
Result<std::vector<Range>> UnwrittenRanges(int fd, uint64_t file_size);

// The raw FIEMAP extents of [0, length) of `fd` (FIEMAP_FLAG_SYNC), paged until the last one.
Result<std::vector<struct fiemap_extent>> FiemapExtents(int fd, uint64_t length);

}  // namespace imaged::fiemap::internal
