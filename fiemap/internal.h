// Helpers shared by the fiemap sources; not part of the public API.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <fiemap/filesystem.h>
#include <imaged/common/result.h>

namespace imaged::fiemap::internal {

Result<uint64_t> MaxFileSizeFor(FsType type, uint32_t block_size, const std::string& fs_device);

// fsync of the directory holding `path`, so a create, rename or unlink in it is durable.
Result<void> FsyncParentDir(const std::string& path);
Result<void> FsyncDir(const std::string& dir);

// A small file (sysfs attribute, at most 64 KiB) without trailing newlines/spaces. Errors are
// values, never exceptions: sysfs reads fail after a successful open when the device goes away.
Result<std::string> ReadSysfs(const std::string& path);

// [offset, offset+length) ranges of [0, file_size) that hold no written data: holes and
// FIEMAP_EXTENT_UNWRITTEN extents, ascending, merged.
struct Range {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const Range&) const = default;
};
Result<std::vector<Range>> UnwrittenRanges(int fd, uint64_t file_size);

std::string Dirname(const std::string& path);
std::string Basename(const std::string& path);

}  // namespace imaged::fiemap::internal
