// Editing the value model: the small part of liblp's MetadataBuilder that imaged needs, plus the
// metadata_max_size policy that keeps heavily fragmented image sets writable.
#include <algorithm>
#include <cerrno>

#include "metadata/lp_metadata.h"

namespace imaged::metadata {

namespace {

uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  if (alignment == 0) return value;
  uint64_t rem = value % alignment;
  if (rem == 0) return value;
  if (value > UINT64_MAX - (alignment - rem)) return UINT64_MAX - UINT64_MAX % alignment;
  return value + (alignment - rem);
}

// liblp: the super device's first logical sector is the metadata region aligned up to the device
// alignment (or the logical block size when the alignment is 0).
uint64_t FirstLogicalSectorFor(const Geometry& g, const BlockDevice& device) {
  uint64_t alignment = device.alignment ? device.alignment : g.logical_block_size;
  if (alignment == 0 || alignment % kSectorSize != 0) alignment = kSectorSize;
  return AlignUp(TotalMetadataSize(g.metadata_max_size, g.metadata_slot_count), alignment) /
         kSectorSize;
}

// Rebuilds the extent table in partition order, taking `replacement` for partition `target`
// (an index into md.partitions), so the table has no holes and indices stay consistent.
std::vector<Extent> RebuildExtents(LpMetadata& md, size_t target,
                                   const std::vector<Extent>* replacement) {
  std::vector<Extent> out;
  size_t total = 0;
  for (size_t i = 0; i < md.partitions.size(); ++i) {
    total += (i == target && replacement) ? replacement->size() : md.partitions[i].num_extents;
  }
  out.reserve(total);
  for (size_t i = 0; i < md.partitions.size(); ++i) {
    Partition& p = md.partitions[i];
    const uint32_t first = static_cast<uint32_t>(out.size());
    if (i == target && replacement) {
      out.insert(out.end(), replacement->begin(), replacement->end());
    } else {
      // Ranges were validated on read/set; clamp anyway so a bad model cannot over-read.
      uint64_t begin = std::min<uint64_t>(p.first_extent_index, md.extents.size());
      uint64_t end = std::min<uint64_t>(begin + p.num_extents, md.extents.size());
      out.insert(out.end(), md.extents.begin() + begin, md.extents.begin() + end);
    }
    p.first_extent_index = first;
    p.num_extents = static_cast<uint32_t>(out.size() - first);
  }
  return out;
}

}  // namespace

LpMetadata NewImageMetadata(const BlockDevice& device, uint32_t logical_block_size,
                            uint32_t metadata_max_size) {
  LpMetadata md;
  uint64_t max = metadata_max_size ? metadata_max_size : kDefaultMetadataMaxSize;
  md.geometry.metadata_max_size = static_cast<uint32_t>(
      std::min<uint64_t>(AlignUp(max, kMetadataSizeStep), kMaxMetadataMaxSize));
  md.geometry.metadata_slot_count = 1;
  md.geometry.logical_block_size = logical_block_size;
  md.groups.push_back(Group{std::string(kDefaultGroupName), 0, 0});
  md.block_devices.push_back(device);
  BlockDevice& bd = md.block_devices[0];
  bd.first_logical_sector =
      std::max(bd.first_logical_sector, FirstLogicalSectorFor(md.geometry, bd));
  return md;
}

uint32_t MetadataSizeFor(size_t partitions, size_t extents) {
  unsigned __int128 bytes = static_cast<unsigned __int128>(kHeaderSizeV1_2) + kGroupEntrySize +
                            kBlockDeviceEntrySize +
                            static_cast<unsigned __int128>(partitions) * kPartitionEntrySize +
                            static_cast<unsigned __int128>(extents) * kExtentEntrySize;
  constexpr uint32_t kCeiling = UINT32_MAX - (UINT32_MAX % kMetadataSizeStep);
  if (bytes > kCeiling) return kCeiling;
  uint64_t aligned = AlignUp(static_cast<uint64_t>(bytes), kMetadataSizeStep);
  return static_cast<uint32_t>(std::max<uint64_t>(aligned, kDefaultMetadataMaxSize));
}

Result<void> SetPartition(LpMetadata& md, std::string_view name, uint32_t attributes,
                          const std::vector<Extent>& extents) {
  auto fail = [&](int code, std::string msg) {
    return MakeError(code, "set partition \"{}\": {}", PrintableName(name), msg);
  };
  if (!IsValidName(name)) {
    return fail(EINVAL,
                fmt::format("invalid name (1..{} bytes of [A-Za-z0-9_.-])", kMaxNameLength));
  }
  if (attributes & ~(kPartitionAttributeMaskV0 | kPartitionAttributeMaskV1)) {
    return fail(EINVAL, fmt::format("unknown attribute bits 0x{:x}", attributes));
  }
  if (extents.size() > UINT32_MAX) return fail(EFBIG, "too many extents");
  for (size_t i = 0; i < extents.size(); ++i) {
    const Extent& e = extents[i];
    if (e.num_sectors == 0) return fail(EINVAL, fmt::format("extent {} is empty", i));
    if (e.target_type == kTargetTypeLinear && e.target_source >= md.block_devices.size()) {
      return fail(EINVAL, fmt::format("extent {} targets block device {} of {}", i, e.target_source,
                                      md.block_devices.size()));
    }
  }

  LpMetadata next = md;
  if (next.groups.empty()) next.groups.push_back(Group{std::string(kDefaultGroupName), 0, 0});
  // Another tool may have written the same name twice. Whichever entry imaged set, the other would
  // still answer to the image's name (and outlive its removal), so the ambiguity is refused.
  const auto same_name = [&](const Partition& p) { return p.name == name; };
  const auto holders = std::count_if(next.partitions.begin(), next.partitions.end(), same_name);
  if (holders > 1) return fail(EINVAL, fmt::format("{} partitions have this name", holders));
  const size_t index =
      static_cast<size_t>(std::find_if(next.partitions.begin(), next.partitions.end(), same_name) -
                          next.partitions.begin());
  if (index == next.partitions.size()) {
    next.partitions.push_back(Partition{std::string(name), attributes, 0, 0, 0});
  } else {
    next.partitions[index].attributes = attributes;
  }
  if (next.extents.size() - next.partitions[index].num_extents + extents.size() > UINT32_MAX) {
    return fail(EFBIG, "extent table would exceed 2^32 entries");
  }
  next.extents = RebuildExtents(next, index, &extents);
  if (attributes & kPartitionAttributeMaskV1) {
    next.minor_version = std::max(next.minor_version, kVersionForUpdatedAttr);
  }

  const uint64_t needed = SerializedMetadataSize(next);
  if (needed > next.geometry.metadata_max_size) {
    uint64_t grown =
        std::max<uint64_t>(MetadataSizeFor(next.partitions.size(), next.extents.size()),
                           AlignUp(needed, kMetadataSizeStep));
    if (grown > kMaxMetadataMaxSize) {
      return fail(EFBIG, fmt::format("metadata would need {} bytes, the limit is {}", needed,
                                     kMaxMetadataMaxSize));
    }
    next.geometry.metadata_max_size = static_cast<uint32_t>(grown);
  }
  if (!next.block_devices.empty()) {
    BlockDevice& bd = next.block_devices[0];
    bd.first_logical_sector =
        std::max(bd.first_logical_sector, FirstLogicalSectorFor(next.geometry, bd));
  }
  Result<void> valid = ValidateMetadata(next);
  if (!valid) return valid.error().Wrap(fmt::format("set partition \"{}\"", PrintableName(name)));
  md = std::move(next);
  return {};
}

bool RemovePartition(LpMetadata& md, std::string_view name) {
  auto it = std::find_if(md.partitions.begin(), md.partitions.end(),
                         [&](const Partition& p) { return p.name == name; });
  if (it == md.partitions.end()) return false;
  // Zero the victim's range, rebuild, then drop it: the rebuilt table skips its extents.
  size_t index = static_cast<size_t>(it - md.partitions.begin());
  static const std::vector<Extent> kNone;
  md.extents = RebuildExtents(md, index, &kNone);
  md.partitions.erase(md.partitions.begin() + index);
  return true;
}

const Partition* FindPartition(const LpMetadata& md, std::string_view name) {
  for (const Partition& p : md.partitions) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

std::vector<Extent> PartitionExtents(const LpMetadata& md, const Partition& partition) {
  uint64_t begin = std::min<uint64_t>(partition.first_extent_index, md.extents.size());
  uint64_t end = std::min<uint64_t>(begin + partition.num_extents, md.extents.size());
  return std::vector<Extent>(md.extents.begin() + begin, md.extents.begin() + end);
}

uint64_t PartitionSizeBytes(const LpMetadata& md, const Partition& partition) {
  uint64_t sectors = 0;
  for (const Extent& e : PartitionExtents(md, partition)) sectors += e.num_sectors;
  return sectors * kSectorSize;
}

void AppendLinearExtent(std::vector<Extent>& extents, uint64_t num_sectors,
                        uint64_t physical_sector, uint32_t source) {
  if (num_sectors == 0) return;
  if (!extents.empty()) {
    Extent& last = extents.back();
    if (last.target_type == kTargetTypeLinear && last.target_source == source &&
        last.target_data <= UINT64_MAX - last.num_sectors &&
        last.target_data + last.num_sectors == physical_sector &&
        last.num_sectors <= UINT64_MAX - num_sectors) {
      last.num_sectors += num_sectors;
      return;
    }
  }
  extents.push_back(Extent{num_sectors, kTargetTypeLinear, physical_sector, source});
}

}  // namespace imaged::metadata
