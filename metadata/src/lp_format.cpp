// liblp on-disk codec: validation shared by reader and writer, serialization of one metadata copy
// (header + tables), and the image-file and super layouts around it.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include "byte_io.h"
#include "metadata/lp_metadata.h"

namespace imaged::metadata {

using internal::GetU16;
using internal::GetU32;
using internal::GetU64;
using internal::PutName;
using internal::PutU16;
using internal::PutU32;
using internal::PutU64;
using internal::Sha256;
using internal::Sha256Digest;

namespace {

// Field offsets (liblp metadata_format.h).
constexpr size_t kGeoMagic = 0, kGeoStructSize = 4, kGeoChecksum = 8, kGeoMaxSize = 40,
                 kGeoSlotCount = 44, kGeoBlockSize = 48;
constexpr size_t kHdrMagic = 0, kHdrMajor = 4, kHdrMinor = 6, kHdrSize = 8, kHdrChecksum = 12,
                 kHdrTablesSize = 44, kHdrTablesChecksum = 48, kHdrPartitions = 80,
                 kHdrExtents = 92, kHdrGroups = 104, kHdrBlockDevices = 116, kHdrFlags = 128;

constexpr uint64_t kSuperGeometryOffset = kPartitionReservedBytes;
constexpr uint64_t kSuperBackupGeometryOffset = kSuperGeometryOffset + kGeometrySize;
// Whole super layouts are built in memory; refuse absurd slot counts instead of allocating.
constexpr uint64_t kMaxSuperLayoutBytes = 1ull << 30;

constexpr uint64_t SaturatingU64(unsigned __int128 v) {
  return v > UINT64_MAX ? UINT64_MAX : static_cast<uint64_t>(v);
}

uint32_t HeaderSizeFor(uint16_t minor) {
  return minor >= kVersionForExpandedHeader ? kHeaderSizeV1_2 : kHeaderSizeV1_0;
}

uint32_t AllowedAttributes(uint16_t minor) {
  uint32_t mask = kPartitionAttributeMaskV0;
  if (minor >= kVersionForUpdatedAttr) mask |= kPartitionAttributeMaskV1;
  return mask;
}

// A name field as liblp reads it (NameFromFixedArray): a field whose last byte is NUL holds a C
// string; any other field is a name of all 36 bytes, NULs included. Other liblp tools write names
// that fill the field, and liblp's reader puts no rule on their bytes, so neither do we.
std::string ReadNameField(const uint8_t* p) {
  const char* field = reinterpret_cast<const char*>(p);
  if (p[kNameFieldSize - 1] != 0) return std::string(field, kNameFieldSize);
  return std::string(field, std::strlen(field));
}

// The writer's half of ReadNameField: refuses exactly the names that would not read back as
// themselves, so whatever the reader returned can be written back unchanged.
Result<void> CheckNameFitsField(std::string_view name, std::string_view what) {
  if (name.size() > kNameFieldSize) {
    return MakeError(EINVAL, "{}: name \"{}\" is {} bytes, the field holds {}", what,
                     PrintableName(name), name.size(), kNameFieldSize);
  }
  const size_t nul = name.find('\0');
  if (nul != std::string_view::npos && (name.size() < kNameFieldSize || name.back() == '\0')) {
    return MakeError(EINVAL, "{}: name \"{}\" would read back as \"{}\" (NUL at byte {})", what,
                     PrintableName(name), PrintableName(name.substr(0, nul)), nul);
  }
  return {};
}

Result<void> ValidateVersionAndGeometry(const LpMetadata& md, uint16_t minor) {
  const Geometry& g = md.geometry;
  if (md.major_version != kMajorVersion) {
    return MakeError(EINVAL, "header: major_version {} is not {}", md.major_version, kMajorVersion);
  }
  if (minor > kMinorVersionMax) {
    return MakeError(EINVAL, "header: minor_version {} is newer than {}", minor, kMinorVersionMax);
  }
  if (md.header_flags != 0 && minor < kVersionForExpandedHeader) {
    return MakeError(EINVAL, "header: flags 0x{:x} need minor version 2, have {}", md.header_flags,
                     minor);
  }
  if (g.metadata_slot_count == 0) return MakeError(EINVAL, "geometry: metadata_slot_count is 0");
  if (g.metadata_max_size % kSectorSize != 0) {
    return MakeError(EINVAL, "geometry: metadata_max_size {} is not a multiple of {}",
                     g.metadata_max_size, kSectorSize);
  }
  // liblp's reader does not look at logical_block_size, so any value is kept as read.
  return {};
}

Result<void> ValidateTableCounts(const LpMetadata& md) {
  // Checked before the extents so that an empty table is named as such, not as a bad index.
  if (md.block_devices.empty()) return MakeError(EINVAL, "block_devices: table is empty");
  if (md.partitions.size() > UINT32_MAX || md.extents.size() > UINT32_MAX ||
      md.groups.size() > UINT32_MAX || md.block_devices.size() > UINT32_MAX) {
    return MakeError(EFBIG, "tables: too many entries");
  }
  return {};
}

// Names may be empty or repeated: liblp's reader checks neither, and other tools' metadata is read
// and written back as it is. Where imaged makes a name, SetPartition applies imaged's own rules.
Result<void> ValidatePartitions(const LpMetadata& md, uint16_t minor) {
  const uint32_t allowed = AllowedAttributes(minor);
  for (size_t i = 0; i < md.partitions.size(); ++i) {
    const Partition& p = md.partitions[i];
    IMAGED_TRY(CheckNameFitsField(p.name, fmt::format("partition {}", i)));
    const std::string what = fmt::format("partition {} \"{}\"", i, PrintableName(p.name));
    if (p.attributes & ~allowed) {
      return MakeError(EINVAL, "{}: attributes 0x{:x} not allowed in version 10.{}", what,
                       p.attributes, minor);
    }
    if (uint64_t{p.first_extent_index} + p.num_extents > md.extents.size()) {
      return MakeError(EINVAL, "{}: extents [{}, +{}) out of range of {} extents", what,
                       p.first_extent_index, p.num_extents, md.extents.size());
    }
    if (p.group_index >= md.groups.size()) {
      return MakeError(EINVAL, "{}: group_index {} out of range of {} groups", what, p.group_index,
                       md.groups.size());
    }
  }
  return {};
}

// Only LINEAR extents are checked, as liblp does: an unknown target_type is kept for the code that
// maps extents to refuse, so a set holding one can still be listed and edited.
Result<void> ValidateExtents(const LpMetadata& md) {
  for (size_t i = 0; i < md.extents.size(); ++i) {
    const Extent& e = md.extents[i];
    if (e.target_type == kTargetTypeLinear && e.target_source >= md.block_devices.size()) {
      return MakeError(EINVAL, "extent {}: target_source {} out of range of {} block devices", i,
                       e.target_source, md.block_devices.size());
    }
  }
  return {};
}

Result<void> ValidateGroupAndBlockDeviceNames(const LpMetadata& md) {
  for (size_t i = 0; i < md.groups.size(); ++i) {
    IMAGED_TRY(CheckNameFitsField(md.groups[i].name, fmt::format("group {}", i)));
  }
  for (size_t i = 0; i < md.block_devices.size(); ++i) {
    IMAGED_TRY(
        CheckNameFitsField(md.block_devices[i].partition_name, fmt::format("block device {}", i)));
  }
  return {};
}

// liblp's reader refuses metadata whose reserved region overlaps the first logical sector.
Result<void> ValidateMetadataRegion(const LpMetadata& md) {
  const Geometry& g = md.geometry;
  const uint64_t region = TotalMetadataSize(g.metadata_max_size, g.metadata_slot_count);
  const unsigned __int128 first_byte =
      static_cast<unsigned __int128>(md.block_devices[0].first_logical_sector) * kSectorSize;
  if (region > first_byte) {
    return MakeError(EINVAL,
                     "block device 0: first_logical_sector {} lies inside the {}-byte metadata "
                     "region",
                     md.block_devices[0].first_logical_sector, region);
  }
  return {};
}

// The checks every readable metadata must pass, with `minor` the version the bytes carry (or will
// carry). The byte-level checks (magic, sizes, checksums) live in the parser.
Result<void> ValidateModel(const LpMetadata& md, uint16_t minor) {
  IMAGED_TRY(ValidateVersionAndGeometry(md, minor));
  IMAGED_TRY(ValidateTableCounts(md));
  IMAGED_TRY(ValidatePartitions(md, minor));
  IMAGED_TRY(ValidateExtents(md));
  IMAGED_TRY(ValidateGroupAndBlockDeviceNames(md));
  // ValidateTableCounts has made sure block device 0 exists.
  return ValidateMetadataRegion(md);
}

uint64_t TablesSize(const LpMetadata& md) {
  return uint64_t{kPartitionEntrySize} * md.partitions.size() +
         uint64_t{kExtentEntrySize} * md.extents.size() +
         uint64_t{kGroupEntrySize} * md.groups.size() +
         uint64_t{kBlockDeviceEntrySize} * md.block_devices.size();
}

std::array<uint8_t, kGeometrySize> EncodeGeometry(const Geometry& g) {
  std::array<uint8_t, kGeometrySize> block{};
  uint8_t* p = block.data();
  PutU32(p + kGeoMagic, kGeometryMagic);
  PutU32(p + kGeoStructSize, kGeometryStructSize);
  PutU32(p + kGeoMaxSize, g.metadata_max_size);
  PutU32(p + kGeoSlotCount, g.metadata_slot_count);
  PutU32(p + kGeoBlockSize, g.logical_block_size);
  Sha256Digest sum = Sha256({p, kGeometryStructSize});
  std::memcpy(p + kGeoChecksum, sum.data(), sum.size());
  return block;
}

// Validated: header + tables, exactly SerializedMetadataSize() bytes.
Result<std::vector<uint8_t>> EncodeMetadata(const LpMetadata& md) {
  const uint16_t minor = EffectiveMinorVersion(md);
  IMAGED_TRY(ValidateModel(md, minor));
  const uint32_t header_size = HeaderSizeFor(minor);
  const uint64_t tables_size = TablesSize(md);
  const uint64_t total = header_size + tables_size;
  if (total > md.geometry.metadata_max_size) {
    // AOSP's WriteToImageFile writes this anyway, and then ReadFromImageFile cannot read it back.
    return MakeError(EFBIG,
                     "metadata needs {} bytes ({} partitions, {} extents) but metadata_max_size "
                     "is {}",
                     total, md.partitions.size(), md.extents.size(), md.geometry.metadata_max_size);
  }
  std::vector<uint8_t> out(total, 0);
  uint8_t* hdr = out.data();
  uint8_t* tables = hdr + header_size;

  uint8_t* p = tables;
  for (const Partition& part : md.partitions) {
    PutName(p, kNameFieldSize, part.name);
    PutU32(p + 36, part.attributes);
    PutU32(p + 40, part.first_extent_index);
    PutU32(p + 44, part.num_extents);
    PutU32(p + 48, part.group_index);
    p += kPartitionEntrySize;
  }
  for (const Extent& e : md.extents) {
    PutU64(p, e.num_sectors);
    PutU32(p + 8, e.target_type);
    PutU64(p + 12, e.target_data);
    PutU32(p + 20, e.target_source);
    p += kExtentEntrySize;
  }
  for (const Group& grp : md.groups) {
    PutName(p, kNameFieldSize, grp.name);
    PutU32(p + 36, grp.flags);
    PutU64(p + 40, grp.maximum_size);
    p += kGroupEntrySize;
  }
  for (const BlockDevice& bd : md.block_devices) {
    PutU64(p, bd.first_logical_sector);
    PutU32(p + 8, bd.alignment);
    PutU32(p + 12, bd.alignment_offset);
    PutU64(p + 16, bd.size);
    PutName(p + 24, kNameFieldSize, bd.partition_name);
    PutU32(p + 60, bd.flags);
    p += kBlockDeviceEntrySize;
  }

  PutU32(hdr + kHdrMagic, kHeaderMagic);
  PutU16(hdr + kHdrMajor, md.major_version);
  PutU16(hdr + kHdrMinor, minor);
  PutU32(hdr + kHdrSize, header_size);
  PutU32(hdr + kHdrTablesSize, static_cast<uint32_t>(tables_size));
  uint32_t offset = 0;
  auto descriptor = [&](size_t at, size_t count, uint32_t entry_size) {
    PutU32(hdr + at, offset);
    PutU32(hdr + at + 4, static_cast<uint32_t>(count));
    PutU32(hdr + at + 8, entry_size);
    offset += static_cast<uint32_t>(count * entry_size);
  };
  descriptor(kHdrPartitions, md.partitions.size(), kPartitionEntrySize);
  descriptor(kHdrExtents, md.extents.size(), kExtentEntrySize);
  descriptor(kHdrGroups, md.groups.size(), kGroupEntrySize);
  descriptor(kHdrBlockDevices, md.block_devices.size(), kBlockDeviceEntrySize);
  if (header_size >= kHeaderSizeV1_2) PutU32(hdr + kHdrFlags, md.header_flags);
  // Tables checksum first: the header checksum covers it.
  Sha256Digest tsum = Sha256({tables, static_cast<size_t>(tables_size)});
  std::memcpy(hdr + kHdrTablesChecksum, tsum.data(), tsum.size());
  Sha256Digest hsum = Sha256({hdr, header_size});
  std::memcpy(hdr + kHdrChecksum, hsum.data(), hsum.size());
  return out;
}

Result<Geometry> DecodeGeometry(std::span<const uint8_t> block) {
  if (block.size() < kGeometrySize) {
    return MakeError(EINVAL, "geometry: truncated, {} of {} bytes", block.size(), kGeometrySize);
  }
  const uint8_t* p = block.data();
  if (GetU32(p + kGeoMagic) != kGeometryMagic) {
    return MakeError(EINVAL, "geometry: bad magic 0x{:08x}", GetU32(p + kGeoMagic));
  }
  const uint32_t struct_size = GetU32(p + kGeoStructSize);
  // As liblp: bound struct_size before hashing that many bytes, then demand the exact size.
  if (struct_size > kGeometryStructSize) {
    return MakeError(EINVAL, "geometry: struct_size {} is larger than {}", struct_size,
                     kGeometryStructSize);
  }
  uint8_t temp[kGeometryStructSize];
  std::memcpy(temp, p, kGeometryStructSize);
  std::memset(temp + kGeoChecksum, 0, 32);
  Sha256Digest sum = Sha256({temp, struct_size});
  if (std::memcmp(sum.data(), p + kGeoChecksum, sum.size()) != 0) {
    return MakeError(EBADMSG, "geometry: checksum mismatch");
  }
  if (struct_size != kGeometryStructSize) {
    return MakeError(EINVAL, "geometry: struct_size {} is not {}", struct_size,
                     kGeometryStructSize);
  }
  Geometry g;
  g.metadata_max_size = GetU32(p + kGeoMaxSize);
  g.metadata_slot_count = GetU32(p + kGeoSlotCount);
  g.logical_block_size = GetU32(p + kGeoBlockSize);
  if (g.metadata_slot_count == 0) return MakeError(EINVAL, "geometry: metadata_slot_count is 0");
  if (g.metadata_max_size % kSectorSize != 0) {
    return MakeError(EINVAL, "geometry: metadata_max_size {} is not a multiple of {}",
                     g.metadata_max_size, kSectorSize);
  }
  return g;
}

struct TableDescriptor {
  uint32_t offset = 0, num_entries = 0, entry_size = 0;
};

// The fields of a header whose magic, version, size and checksum have been checked.
struct CheckedHeader {
  uint16_t major_version = 0, minor_version = 0;
  uint32_t header_size = 0, tables_size = 0, flags = 0;
  TableDescriptor partitions, extents, groups, block_devices;
};

TableDescriptor GetTableDescriptor(const uint8_t* hdr, size_t at) {
  return TableDescriptor{GetU32(hdr + at), GetU32(hdr + at + 4), GetU32(hdr + at + 8)};
}

Result<CheckedHeader> DecodeHeader(std::span<const uint8_t> data) {
  if (data.size() < kHeaderSizeV1_0) {
    return MakeError(EINVAL, "header: truncated, {} of {} bytes", data.size(), kHeaderSizeV1_0);
  }
  const uint8_t* hdr = data.data();
  if (GetU32(hdr + kHdrMagic) != kHeaderMagic) {
    return MakeError(EINVAL, "header: bad magic 0x{:08x}", GetU32(hdr + kHdrMagic));
  }
  CheckedHeader h;
  h.major_version = GetU16(hdr + kHdrMajor);
  h.minor_version = GetU16(hdr + kHdrMinor);
  if (h.major_version != kMajorVersion || h.minor_version > kMinorVersionMax) {
    return MakeError(EINVAL, "header: unsupported version {}.{}", h.major_version, h.minor_version);
  }
  h.header_size = GetU32(hdr + kHdrSize);
  if (h.header_size != HeaderSizeFor(h.minor_version)) {
    return MakeError(EINVAL, "header: header_size {} is wrong for version 10.{} (want {})",
                     h.header_size, h.minor_version, HeaderSizeFor(h.minor_version));
  }
  if (data.size() < h.header_size) {
    return MakeError(EINVAL, "header: truncated, {} of {} bytes", data.size(), h.header_size);
  }
  uint8_t temp[kHeaderSizeV1_2];
  std::memcpy(temp, hdr, h.header_size);
  std::memset(temp + kHdrChecksum, 0, 32);
  Sha256Digest sum = Sha256({temp, h.header_size});
  if (std::memcmp(sum.data(), hdr + kHdrChecksum, sum.size()) != 0) {
    return MakeError(EBADMSG, "header: checksum mismatch");
  }
  if (h.header_size >= kHeaderSizeV1_2) h.flags = GetU32(hdr + kHdrFlags);
  h.tables_size = GetU32(hdr + kHdrTablesSize);
  h.partitions = GetTableDescriptor(hdr, kHdrPartitions);
  h.extents = GetTableDescriptor(hdr, kHdrExtents);
  h.groups = GetTableDescriptor(hdr, kHdrGroups);
  h.block_devices = GetTableDescriptor(hdr, kHdrBlockDevices);
  return h;
}

// Once this passes, every entry of every table lies inside tables_size, so the table decoders
// below can index without further checks.
Result<void> CheckTableDescriptors(const CheckedHeader& h, const Geometry& geometry) {
  const struct {
    const char* name;
    const TableDescriptor& d;
    uint32_t entry_size;
    bool larger_allowed;
  } tables[] = {
      {"partitions", h.partitions, kPartitionEntrySize, false},
      {"extents", h.extents, kExtentEntrySize, false},
      {"groups", h.groups, kGroupEntrySize, false},
      {"block_devices", h.block_devices, kBlockDeviceEntrySize, true},
  };
  for (const auto& t : tables) {
    if (t.d.offset > h.tables_size ||
        uint64_t{t.d.num_entries} * t.d.entry_size > h.tables_size - t.d.offset) {
      return MakeError(EINVAL, "header: {} table (offset {}, {} x {} bytes) exceeds tables_size {}",
                       t.name, t.d.offset, t.d.num_entries, t.d.entry_size, h.tables_size);
    }
  }
  // liblp does not check the block_devices entry_size at all: it reads the first 64 bytes of each
  // entry, running past a shorter one. A longer entry is read the same way, so it is accepted.
  for (const auto& t : tables) {
    if (t.larger_allowed && t.d.entry_size < t.entry_size) {
      return MakeError(EINVAL, "header: {} entry_size {} is less than {}", t.name, t.d.entry_size,
                       t.entry_size);
    }
    if (!t.larger_allowed && t.d.entry_size != t.entry_size) {
      return MakeError(EINVAL, "header: {} entry_size {} is not {}", t.name, t.d.entry_size,
                       t.entry_size);
    }
  }
  if (h.tables_size > geometry.metadata_max_size) {
    return MakeError(EINVAL, "header: tables_size {} exceeds metadata_max_size {}", h.tables_size,
                     geometry.metadata_max_size);
  }
  return {};
}

// The tables that follow the header, once their checksum matches.
Result<std::span<const uint8_t>> ChecksummedTables(std::span<const uint8_t> data,
                                                   const CheckedHeader& h) {
  if (data.size() - h.header_size < h.tables_size) {
    return MakeError(EINVAL, "tables: truncated, {} of {} bytes", data.size() - h.header_size,
                     h.tables_size);
  }
  std::span<const uint8_t> tables = data.subspan(h.header_size, h.tables_size);
  Sha256Digest sum = Sha256(tables);
  if (std::memcmp(sum.data(), data.data() + kHdrTablesChecksum, sum.size()) != 0) {
    return MakeError(EBADMSG, "tables: checksum mismatch");
  }
  return tables;
}

// Entry counts are bounded by tables_size (CheckTableDescriptors), itself bounded by the input, so
// the reserve()s in the decoders below are safe against hostile counts.
const uint8_t* TableEntry(std::span<const uint8_t> tables, const TableDescriptor& d, uint32_t i) {
  return tables.data() + d.offset + size_t{i} * d.entry_size;
}

std::vector<Partition> DecodePartitions(std::span<const uint8_t> tables, const TableDescriptor& d) {
  std::vector<Partition> out;
  out.reserve(d.num_entries);
  for (uint32_t i = 0; i < d.num_entries; ++i) {
    const uint8_t* p = TableEntry(tables, d, i);
    Partition part;
    part.name = ReadNameField(p);
    part.attributes = GetU32(p + 36);
    part.first_extent_index = GetU32(p + 40);
    part.num_extents = GetU32(p + 44);
    part.group_index = GetU32(p + 48);
    out.push_back(std::move(part));
  }
  return out;
}

std::vector<Extent> DecodeExtents(std::span<const uint8_t> tables, const TableDescriptor& d) {
  std::vector<Extent> out;
  out.reserve(d.num_entries);
  for (uint32_t i = 0; i < d.num_entries; ++i) {
    const uint8_t* p = TableEntry(tables, d, i);
    out.push_back(Extent{GetU64(p), GetU32(p + 8), GetU64(p + 12), GetU32(p + 20)});
  }
  return out;
}

std::vector<Group> DecodeGroups(std::span<const uint8_t> tables, const TableDescriptor& d) {
  std::vector<Group> out;
  out.reserve(d.num_entries);
  for (uint32_t i = 0; i < d.num_entries; ++i) {
    const uint8_t* p = TableEntry(tables, d, i);
    Group grp;
    grp.name = ReadNameField(p);
    grp.flags = GetU32(p + 36);
    grp.maximum_size = GetU64(p + 40);
    out.push_back(std::move(grp));
  }
  return out;
}

std::vector<BlockDevice> DecodeBlockDevices(std::span<const uint8_t> tables,
                                            const TableDescriptor& d) {
  std::vector<BlockDevice> out;
  out.reserve(d.num_entries);
  for (uint32_t i = 0; i < d.num_entries; ++i) {
    const uint8_t* p = TableEntry(tables, d, i);
    BlockDevice dev;
    dev.first_logical_sector = GetU64(p);
    dev.alignment = GetU32(p + 8);
    dev.alignment_offset = GetU32(p + 12);
    dev.size = GetU64(p + 16);
    dev.partition_name = ReadNameField(p + 24);
    dev.flags = GetU32(p + 60);
    out.push_back(std::move(dev));
  }
  return out;
}

Result<LpMetadata> DecodeMetadata(const Geometry& geometry, std::span<const uint8_t> data) {
  const CheckedHeader h = IMAGED_TRY(DecodeHeader(data));
  IMAGED_TRY(CheckTableDescriptors(h, geometry));
  const std::span<const uint8_t> tables = IMAGED_TRY(ChecksummedTables(data, h));
  LpMetadata md;
  md.geometry = geometry;
  md.major_version = h.major_version;
  md.minor_version = h.minor_version;
  md.header_flags = h.flags;
  md.partitions = DecodePartitions(tables, h.partitions);
  md.extents = DecodeExtents(tables, h.extents);
  md.groups = DecodeGroups(tables, h.groups);
  md.block_devices = DecodeBlockDevices(tables, h.block_devices);
  IMAGED_TRY(ValidateModel(md, md.minor_version));
  return md;
}

}  // namespace

uint64_t TotalMetadataSize(uint32_t metadata_max_size, uint32_t slot_count) {
  unsigned __int128 per_copy =
      kGeometrySize + static_cast<unsigned __int128>(metadata_max_size) * slot_count;
  return SaturatingU64(kPartitionReservedBytes + 2 * per_copy);
}

uint64_t PrimaryMetadataOffset(const Geometry& g, uint32_t slot) {
  return SaturatingU64(kPartitionReservedBytes + 2 * kGeometrySize +
                       static_cast<unsigned __int128>(g.metadata_max_size) * slot);
}

uint64_t BackupMetadataOffset(const Geometry& g, uint32_t slot) {
  return SaturatingU64(kPartitionReservedBytes + 2 * kGeometrySize +
                       static_cast<unsigned __int128>(g.metadata_max_size) *
                           (uint64_t{g.metadata_slot_count} + slot));
}

uint16_t EffectiveMinorVersion(const LpMetadata& md) {
  uint16_t minor = md.minor_version;
  for (const Partition& p : md.partitions) {
    if (p.attributes & kPartitionAttributeMaskV1) {
      minor = std::max(minor, kVersionForUpdatedAttr);
      break;
    }
  }
  if (md.header_flags != 0) minor = std::max(minor, kVersionForExpandedHeader);
  return minor;
}

uint64_t SerializedMetadataSize(const LpMetadata& md) {
  return HeaderSizeFor(EffectiveMinorVersion(md)) + TablesSize(md);
}

Result<void> ValidateMetadata(const LpMetadata& md) {
  IMAGED_TRY(ValidateModel(md, EffectiveMinorVersion(md)));
  const uint64_t total = SerializedMetadataSize(md);
  if (total > md.geometry.metadata_max_size) {
    return MakeError(EFBIG, "metadata needs {} bytes but metadata_max_size is {}", total,
                     md.geometry.metadata_max_size);
  }
  return {};
}

Result<std::vector<uint8_t>> SerializeImageFile(const LpMetadata& md) {
  std::vector<uint8_t> blob = IMAGED_TRY_CTX(EncodeMetadata(md), "serialize lp_metadata");
  std::vector<uint8_t> out;
  out.reserve(kGeometrySize + blob.size());
  auto geo = EncodeGeometry(md.geometry);
  out.insert(out.end(), geo.begin(), geo.end());
  out.insert(out.end(), blob.begin(), blob.end());
  return out;
}

Result<LpMetadata> ParseImageFile(std::span<const uint8_t> data) {
  Geometry g = IMAGED_TRY_CTX(DecodeGeometry(data), "parse lp_metadata image");
  return IMAGED_TRY_CTX(DecodeMetadata(g, data.subspan(kGeometrySize)), "parse lp_metadata image");
}

Result<std::vector<uint8_t>> SerializeSuper(const LpMetadata& md) {
  std::vector<uint8_t> blob = IMAGED_TRY_CTX(EncodeMetadata(md), "serialize super metadata");
  const Geometry& g = md.geometry;
  const uint64_t total = TotalMetadataSize(g.metadata_max_size, g.metadata_slot_count);
  if (total > kMaxSuperLayoutBytes) {
    return MakeError(EFBIG, "serialize super metadata: layout of {} bytes is too large", total);
  }
  std::vector<uint8_t> out(total, 0);
  auto geo = EncodeGeometry(g);
  std::copy(geo.begin(), geo.end(), out.begin() + kSuperGeometryOffset);
  std::copy(geo.begin(), geo.end(), out.begin() + kSuperBackupGeometryOffset);
  for (uint32_t slot = 0; slot < g.metadata_slot_count; ++slot) {
    std::copy(blob.begin(), blob.end(), out.begin() + PrimaryMetadataOffset(g, slot));
    std::copy(blob.begin(), blob.end(), out.begin() + BackupMetadataOffset(g, slot));
  }
  return out;
}

namespace {

// One slot copy: at most metadata_max_size bytes, since the next copy starts right after.
std::span<const uint8_t> SlotSpan(std::span<const uint8_t> data, uint64_t offset, uint32_t max) {
  if (offset >= data.size()) return {};
  return data.subspan(offset, std::min<uint64_t>(max, data.size() - offset));
}

}  // namespace

Result<LpMetadata> ParseSuper(std::span<const uint8_t> data, uint32_t slot) {
  auto geo_at = [&](uint64_t offset) -> Result<Geometry> {
    if (data.size() < offset + kGeometrySize) {
      return MakeError(EINVAL, "geometry at {}: truncated input of {} bytes", offset, data.size());
    }
    return DecodeGeometry(data.subspan(offset, kGeometrySize));
  };
  Result<Geometry> geo = geo_at(kSuperGeometryOffset);
  if (!geo) {
    Result<Geometry> backup = geo_at(kSuperBackupGeometryOffset);
    if (!backup) {
      return MakeError(geo.error().code, "parse super: primary {}; backup {}", geo.error().message,
                       backup.error().message);
    }
    geo = std::move(backup);
  }
  const Geometry& g = *geo;
  if (slot >= g.metadata_slot_count) {
    return MakeError(EINVAL, "parse super: slot {} out of range of {} slots", slot,
                     g.metadata_slot_count);
  }
  Result<LpMetadata> primary =
      DecodeMetadata(g, SlotSpan(data, PrimaryMetadataOffset(g, slot), g.metadata_max_size));
  if (primary) return primary;
  Result<LpMetadata> backup =
      DecodeMetadata(g, SlotSpan(data, BackupMetadataOffset(g, slot), g.metadata_max_size));
  if (backup) return backup;
  return MakeError(primary.error().code, "parse super slot {}: primary {}; backup {}", slot,
                   primary.error().message, backup.error().message);
}

Layout DetectLayout(std::span<const uint8_t> data) {
  auto magic_at = [&](size_t off) {
    return data.size() >= off + 4 && GetU32(data.data() + off) == kGeometryMagic;
  };
  if (magic_at(0)) return Layout::kImageFile;
  if (magic_at(kSuperGeometryOffset) || magic_at(kSuperBackupGeometryOffset)) return Layout::kSuper;
  return Layout::kUnknown;
}

Result<LpMetadata> ParseAnyLayout(std::span<const uint8_t> data, uint32_t slot) {
  switch (DetectLayout(data)) {
    case Layout::kImageFile:
      return ParseImageFile(data);
    case Layout::kSuper:
      return ParseSuper(data, slot);
    case Layout::kUnknown:
      break;
  }
  return MakeError(EINVAL, "no liblp geometry magic at offset 0, 4096 or 8192");
}

Result<LpMetadata> ReadImageFile(const Directory& dir, std::string_view file) {
  std::vector<uint8_t> data =
      IMAGED_TRY_CTX(dir.ReadFile(file, kMaxImageFileBytes), "read lp_metadata");
  return IMAGED_TRY_CTX(ParseImageFile(data), "read \"{}\"", dir.PathOf(file));
}

Result<void> WriteImageFile(const Directory& dir, std::string_view file, const LpMetadata& md) {
  std::vector<uint8_t> data =
      IMAGED_TRY_CTX(SerializeImageFile(md), "write \"{}\"", dir.PathOf(file));
  IMAGED_TRY_CTX(dir.AtomicWrite(file, data, {.mode = 0644}), "write lp_metadata");
  return {};
}

std::string PrintableName(std::string_view name) {
  std::string out;
  out.reserve(name.size());
  for (char c : name) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte == '\\') {
      out += "\\\\";
    } else if (byte < 0x20 || byte >= 0x7f) {
      out += fmt::format("\\x{:02x}", byte);
    } else {
      out += c;
    }
  }
  return out;
}

bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
  });
}

}  // namespace imaged::metadata
