// How an image's pieces become liblp extents on the disk, and how lp_metadata becomes a dm table:
// the one place both the daemon's manager and imaged-init (first stage, no daemon) take them
// from, so they build the same table and agree on whether a live mapping is an image's.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dm/device_mapper.h"
#include "dm/table.h"
#include "fiemap/filesystem.h"
#include "fiemap/split_file.h"
#include "imaged/common/file_io.h"
#include "imaged/common/result.h"
#include "metadata/lp_metadata.h"

namespace imaged::imageset {

// The disk an image's extents are on: the bottom of the data filesystem's dm stack.
struct DiskFacts {
  std::string disk;  // /dev node of the bottom device (FilesystemInfo::disk)
  dev_t disk_dev = 0;
  uint64_t disk_offset_bytes = 0;  // FIEMAP physical + this = offset on `disk`
  uint64_t disk_size = 0;
  uint32_t logical_block_size = 512;
  uint32_t alignment = 0;         // BLKIOMIN, as libfiemap records it in the block device entry
  uint32_t alignment_offset = 0;  // BLKALIGNOFF
};
DiskFacts DiskFactsOf(const fiemap::FilesystemInfo& fs);
// The block device entry lp_metadata records for the disk, as libfiemap writes it.
metadata::BlockDevice BlockDeviceOf(const DiskFacts& disk);

// LINEAR extents (512-byte sectors on the disk) covering exactly `size_bytes` of `split`, merged
// like liblp merges them. EUCLEAN (kind kExtentsChanged) when an extent is misaligned to the
// disk's logical block size or lies outside the disk, or when the pieces are shorter than
// size_bytes.
Result<std::vector<metadata::Extent>> ComputeLpExtents(const fiemap::SplitFiemap& split,
                                                       const DiskFacts& disk, uint64_t size_bytes);

// Whether the partition is recorded read-only.
bool IsReadonly(const metadata::Partition& partition);

// The dm table for `partition`: one target per lp extent, LINEAR extents over `table_device`
// ("major:minor": the kernel reports devices that way, so the table compares with a live one),
// ZERO extents as zero targets, read-only when `readonly`. EINVAL for an empty partition, an
// extent on another block device than the data disk (index 0) or an extent type imaged cannot
// map, naming it.
Result<dm::Table> TableFromLp(const metadata::LpMetadata& md, const metadata::Partition& partition,
                              const std::string& table_device, bool readonly);
// The same from image `name`'s extents.
Result<dm::Table> TableFromExtents(std::string_view name,
                                   const std::vector<metadata::Extent>& extents,
                                   const std::string& table_device, bool readonly);

// The dm-linear table that joins the loop devices of a split image's pieces (loop i over piece i
// of `piece_sizes` bytes) into one device of exactly `image_size` bytes.
dm::Table JoinTable(const std::vector<uint64_t>& piece_sizes, const std::vector<dev_t>& loops,
                    uint64_t image_size, bool readonly);

// Whether dm device `dm_name` exists with exactly `table` (targets and read-only flag).
Result<bool> MappingMatches(dm::DeviceMapper& dm, const std::string& dm_name,
                            const dm::Table& table);

// lp_metadata of the set in `metadata_dir` (or its previous generation): nullopt when there is
// none. A file that does not parse keeps the parser's errno and is of kind kCorruptMetadata.
Result<std::optional<metadata::LpMetadata>> ReadLpMetadata(const Directory& metadata_dir);
Result<std::optional<metadata::LpMetadata>> ReadPreviousLpMetadata(const Directory& metadata_dir);
// Replaces lp_metadata atomically, keeping the readable generation it replaces as
// lp_metadata.prev.
Result<void> WriteLpMetadata(const Directory& metadata_dir, const metadata::LpMetadata& md);

}  // namespace imaged::imageset
