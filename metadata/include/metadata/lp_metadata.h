// A plain value model of Android liblp's on-disk metadata (lp_metadata, versions 10.0-10.2), a
// reader that accepts what liblp's reader accepts (and refuses what it refuses, plus a short
// block-device entry that liblp would over-read), and a writer for the two layouts we use:
//  * the image-file layout libfiemap keeps as `<metadata_dir>/lp_metadata`: the geometry padded to
//    4096 bytes, then one copy of header + tables;
//  * the full "super" layout (4096 reserved zeros, geometry twice, primary and backup slots), so an
//    exported file can be read by any liblp reader.
// Everything on disk is little-endian and packed; checksums are SHA-256.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "imaged/common/file_io.h"
#include "imaged/common/result.h"

namespace imaged::metadata {

// ---- Format constants (liblp metadata_format.h) ----
inline constexpr uint32_t kGeometryMagic = 0x616c4467;  // bytes "gDla"
inline constexpr uint32_t kHeaderMagic = 0x414C5030;    // bytes "0PLA"
inline constexpr uint16_t kMajorVersion = 10;
inline constexpr uint16_t kMinorVersionMin = 0;
inline constexpr uint16_t kMinorVersionMax = 2;
inline constexpr uint16_t kVersionForUpdatedAttr = 1;     // UPDATED / DISABLED attributes
inline constexpr uint16_t kVersionForExpandedHeader = 2;  // 256-byte header with flags

inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint32_t kPartitionReservedBytes = 4096;
inline constexpr uint32_t kGeometrySize = 4096;  // the geometry block, zero padded
inline constexpr uint32_t kGeometryStructSize = 52;
inline constexpr uint32_t kHeaderSizeV1_0 = 128;  // minor 0 and 1
inline constexpr uint32_t kHeaderSizeV1_2 = 256;  // minor 2
inline constexpr uint32_t kPartitionEntrySize = 52;
inline constexpr uint32_t kExtentEntrySize = 24;
inline constexpr uint32_t kGroupEntrySize = 48;
inline constexpr uint32_t kBlockDeviceEntrySize = 64;
// Name fields are 36 bytes. A name read from another tool may fill all of them (liblp then keeps
// no NUL); the names imaged makes keep a terminating NUL, so they are at most 35 characters.
inline constexpr size_t kNameFieldSize = 36;
inline constexpr size_t kMaxNameLength = kNameFieldSize - 1;

inline constexpr uint32_t kPartitionAttrNone = 0x0;
inline constexpr uint32_t kPartitionAttrReadonly = 1u << 0;
inline constexpr uint32_t kPartitionAttrSlotSuffixed = 1u << 1;
inline constexpr uint32_t kPartitionAttrUpdated = 1u << 2;   // needs minor >= 1
inline constexpr uint32_t kPartitionAttrDisabled = 1u << 3;  // needs minor >= 1
inline constexpr uint32_t kPartitionAttributeMaskV0 = 0x3;
inline constexpr uint32_t kPartitionAttributeMaskV1 = 0xC;

inline constexpr uint32_t kTargetTypeLinear = 0;
inline constexpr uint32_t kTargetTypeZero = 1;

inline constexpr uint32_t kHeaderFlagVirtualAbDevice = 0x1;
inline constexpr uint32_t kHeaderFlagOverlaysActive = 0x2;
inline constexpr uint32_t kGroupSlotSuffixed = 1u << 0;
inline constexpr uint32_t kBlockDeviceSlotSuffixed = 1u << 0;

inline constexpr std::string_view kDefaultGroupName = "default";
// libfiemap's kMaxMetadataSize; MetadataSizeFor() never goes below it.
inline constexpr uint32_t kDefaultMetadataMaxSize = 256 * 1024;
inline constexpr uint32_t kMetadataSizeStep = 4096;
// Hard ceiling for the automatic growth (about 2.8 million extents).
inline constexpr uint32_t kMaxMetadataMaxSize = 64 * 1024 * 1024;

// ---- Value model ----
struct Geometry {
  uint32_t metadata_max_size = kDefaultMetadataMaxSize;  // one copy of header + tables
  uint32_t metadata_slot_count = 1;
  uint32_t logical_block_size = 4096;
  bool operator==(const Geometry&) const = default;
};

struct Partition {
  std::string name;
  uint32_t attributes = 0;
  uint32_t first_extent_index = 0;
  uint32_t num_extents = 0;
  uint32_t group_index = 0;
  bool operator==(const Partition&) const = default;
};

struct Extent {
  uint64_t num_sectors = 0;
  // Any value is kept as read (liblp's reader checks none); code that maps extents refuses the
  // types it does not know.
  uint32_t target_type = kTargetTypeLinear;
  uint64_t target_data = 0;    // physical sector for LINEAR, 0 for ZERO
  uint32_t target_source = 0;  // block-device index for LINEAR
  bool operator==(const Extent&) const = default;
};

struct Group {
  std::string name;
  uint32_t flags = 0;
  uint64_t maximum_size = 0;  // 0 = unlimited
  bool operator==(const Group&) const = default;
};

struct BlockDevice {
  uint64_t first_logical_sector = 0;
  uint32_t alignment = 0;
  uint32_t alignment_offset = 0;
  uint64_t size = 0;
  std::string partition_name;
  uint32_t flags = 0;
  bool operator==(const BlockDevice&) const = default;
};

struct LpMetadata {
  Geometry geometry;
  uint16_t major_version = kMajorVersion;
  // The writer raises this automatically (see EffectiveMinorVersion) but never lowers it.
  uint16_t minor_version = 0;
  uint32_t header_flags = 0;  // only representable in 10.2; non-zero forces minor 2
  std::vector<Partition> partitions;
  std::vector<Extent> extents;
  std::vector<Group> groups;
  std::vector<BlockDevice> block_devices;  // entry 0 is the device the extents live on
  bool operator==(const LpMetadata&) const = default;
};

// ---- Layout arithmetic (liblp utility.cpp) ----
// 4096 reserved + 2 * (geometry block + max * slots).
uint64_t TotalMetadataSize(uint32_t metadata_max_size, uint32_t slot_count);
uint64_t PrimaryMetadataOffset(const Geometry& geometry, uint32_t slot);
uint64_t BackupMetadataOffset(const Geometry& geometry, uint32_t slot);
// The minor version the writer will emit: max(model, 1 if any V1 attribute, 2 if flags != 0).
uint16_t EffectiveMinorVersion(const LpMetadata& md);
// Bytes of header + tables the writer would emit for `md` (one metadata copy).
uint64_t SerializedMetadataSize(const LpMetadata& md);

// Everything the writer checks before emitting a byte (EINVAL / EFBIG with the offending field):
// what liblp's reader checks, so whatever the reader returned can be written back, plus that each
// name reads back as itself and that the copy fits metadata_max_size.
Result<void> ValidateMetadata(const LpMetadata& md);

// ---- Image-file layout (libfiemap lp_metadata, liblp WriteToImageFile/ReadFromImageFile) ----
Result<std::vector<uint8_t>> SerializeImageFile(const LpMetadata& md);
// Trailing bytes after the tables are ignored, as liblp does.
Result<LpMetadata> ParseImageFile(std::span<const uint8_t> data);

// ---- Full super-partition layout ----
// Emits exactly TotalMetadataSize() bytes; every slot (primary and backup) holds `md`.
Result<std::vector<uint8_t>> SerializeSuper(const LpMetadata& md);
// Primary geometry, else backup geometry; then slot `slot` primary, else its backup.
// Slot suffixes are NOT applied (names are returned as stored).
Result<LpMetadata> ParseSuper(std::span<const uint8_t> data, uint32_t slot = 0);

enum class Layout { kImageFile, kSuper, kUnknown };
// Geometry magic at 0 -> image file; at 4096 or 8192 -> super.
Layout DetectLayout(std::span<const uint8_t> data);
// DetectLayout + the matching parser (used by imaged-lpdump).
Result<LpMetadata> ParseAnyLayout(std::span<const uint8_t> data, uint32_t slot = 0);

// ---- Files ----
// The image-file layout in file `file` of `dir` (never through a symlink).
Result<LpMetadata> ReadImageFile(const Directory& dir, std::string_view file);
// Serializes, then Directory::AtomicWrite (temp in the same dir, fsync, rename, fsync dir).
Result<void> WriteImageFile(const Directory& dir, std::string_view file, const LpMetadata& md);
// The largest image file the reader accepts: the geometry block plus one metadata copy.
inline constexpr size_t kMaxImageFileBytes = size_t{kGeometrySize} + kMaxMetadataMaxSize;

// ---- Editing helpers (the subset of liblp's MetadataBuilder imaged needs) ----
// One block device (first_logical_sector is raised to cover the metadata region, as liblp's
// reader demands), one "default" group, no partitions. metadata_max_size 0 means
// kDefaultMetadataMaxSize; it is rounded up to kMetadataSizeStep.
LpMetadata NewImageMetadata(const BlockDevice& device, uint32_t logical_block_size,
                            uint32_t metadata_max_size);

// Smallest metadata_max_size (>= 256 KiB, a multiple of 4 KiB) that holds a 10.2 header, one group,
// one block device and the given partitions and extents.
uint32_t MetadataSizeFor(size_t partitions, size_t extents);

// Adds `name` (group 0) or replaces its attributes and extents. The extent table is rebuilt in
// partition order, so it stays compact and every first_extent_index stays consistent. Grows
// geometry.metadata_max_size (and block device 0's first_logical_sector) when needed, and raises
// minor_version when V1 attributes are used. `name` must pass IsValidName (imaged's rule for the
// names it makes); other partitions, whatever their names and extents, are kept. EINVAL for a bad
// name, attributes or extents, or a name that more than one partition has; EFBIG beyond
// kMaxMetadataMaxSize. On error `md` is unchanged.
Result<void> SetPartition(LpMetadata& md, std::string_view name, uint32_t attributes,
                          const std::vector<Extent>& extents);
// Removes the partition FindPartition finds and its extents; false if there was none.
bool RemovePartition(LpMetadata& md, std::string_view name);
// The first partition called `name` (liblp does not forbid repeated names).
const Partition* FindPartition(const LpMetadata& md, std::string_view name);
std::vector<Extent> PartitionExtents(const LpMetadata& md, const Partition& partition);
uint64_t PartitionSizeBytes(const LpMetadata& md, const Partition& partition);

// Appends a LINEAR extent, merging with the last one when physically contiguous on the same
// source (liblp Partition::AddExtent). num_sectors == 0 is a no-op.
void AppendLinearExtent(std::vector<Extent>& extents, uint64_t num_sectors,
                        uint64_t physical_sector, uint32_t source);

// True for a name imaged may give a partition: 1..35 bytes of [A-Za-z0-9_.-]. Names read from other
// tools' metadata need not pass: the reader and the writer take any name liblp's reader takes.
bool IsValidName(std::string_view name);

// `name` for messages and imaged-lpdump: `\` becomes `\\` and every byte outside printable ASCII
// becomes `\xNN`, since a name read from another tool may hold any byte.
std::string PrintableName(std::string_view name);

}  // namespace imaged::metadata
