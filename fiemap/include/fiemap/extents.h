// Physical extents of a file, read with FIEMAP (FIBMAP on vfat) and validated so that every
// byte of [0, file_size) maps 1:1 to plain, written blocks on the filesystem's device.
#pragma once

#include <linux/fiemap.h>

#include <cstdint>
#include <vector>

#include <fiemap/filesystem.h>
#include <imaged/common/result.h>

namespace imaged::fiemap {

// All in bytes. `physical` is an offset on the filesystem's device (FilesystemInfo::fs_device).
struct Extent {
  uint64_t logical = 0;
  uint64_t physical = 0;
  uint64_t length = 0;
  bool operator==(const Extent&) const = default;
};

// Reads, validates and merges the extents of the open file `fd` of `file_size` bytes.
// FIEMAP with FIEMAP_FLAG_SYNC, paged with fm_start until FIEMAP_EXTENT_LAST (no extent cap);
// on vfat FIBMAP (byte offsets, merged). Errors name the offending flag and file offset.
Result<std::vector<Extent>> ReadExtents(int fd, FsType type, uint64_t file_size);

// The two mechanisms, usable directly (FIBMAP works on ext4 too, which the tests use).
Result<std::vector<Extent>> ReadExtentsFiemap(int fd, uint64_t file_size);
Result<std::vector<Extent>> ReadExtentsFibmap(int fd, uint64_t file_size);

// Flags that make an extent unusable for a raw block mapping: unknown location, unwritten or
// delayed allocation, not block aligned, inline/tail-packed, shared (reflink), encoded
// (compressed) or encrypted data.
inline constexpr uint32_t kRejectedExtentFlags =
    FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_ENCODED |
    FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE |
    FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_SHARED;

// Pure: checks raw FIEMAP extents (ascending, as the kernel returns them, possibly from several
// pages) for rejected flags, order, overlap and holes, merges logically and physically
// contiguous ones, and checks they cover exactly [0, file_size) (the last one may run past
// file_size up to the block end; it is trimmed). Requires FIEMAP_EXTENT_LAST on the final
// extent and on no other one.
Result<std::vector<Extent>> ValidateAndMerge(const std::vector<struct fiemap_extent>& raw,
                                             uint64_t file_size);

// Pure: merges already byte-based extents (e.g. from FIBMAP), checking order and coverage.
Result<std::vector<Extent>> MergeExtents(const std::vector<Extent>& in, uint64_t file_size);

}  // namespace imaged::fiemap
