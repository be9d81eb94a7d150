#include "imageset/layout.h"

#include "imaged/common/size.h"
#include "imageset/names.h"

namespace imaged::imageset {

DiskFacts DiskFactsOf(const fiemap::FilesystemInfo& fs) {
  DiskFacts d;
  d.disk = fs.disk;
  d.disk_dev = fs.disk_dev;
  d.disk_offset_bytes = fs.disk_offset_bytes;
  d.disk_size = fs.disk_size;
  d.logical_block_size = fs.disk_logical_block_size ? fs.disk_logical_block_size : 512;
  // liblp wants both multiples of 512; anything else would make lp_metadata unreadable.
  if (fs.disk_min_io_size % metadata::kSectorSize == 0) d.alignment = fs.disk_min_io_size;
  if (fs.disk_alignment_offset % metadata::kSectorSize == 0) {
    d.alignment_offset = fs.disk_alignment_offset;
  }
  return d;
}

metadata::BlockDevice BlockDeviceOf(const DiskFacts& disk) {
  metadata::BlockDevice device;
  device.partition_name = Basename(disk.disk);
  device.size = disk.disk_size;
  device.alignment = disk.alignment;
  device.alignment_offset = disk.alignment_offset;
  return device;
}

namespace {

Result<void> CheckOnDisk(const fiemap::FiemapWriter& piece, const fiemap::Extent& e, uint64_t phys,
                         uint64_t len, uint64_t remaining, const DiskFacts& disk) {
  const uint64_t lbs = std::max<uint32_t>(disk.logical_block_size, metadata::kSectorSize);
  if (phys % lbs != 0 || len % metadata::kSectorSize != 0 || (len % lbs != 0 && len != remaining)) {
    return MakeError(EUCLEAN,
                     "\"{}\" offset {}: extent at disk byte {} ({} bytes) is not aligned to the "
                     "disk's {}-byte logical blocks",
                     piece.path(), e.logical, phys, len, lbs)
        .As(ErrorKind::kExtentsChanged);
  }
  if (disk.disk_size != 0 && (phys > disk.disk_size || len > disk.disk_size - phys)) {
    return MakeError(EUCLEAN,
                     "\"{}\" offset {}: extent at disk byte {} ({} bytes) lies outside the disk "
                     "\"{}\" ({})",
                     piece.path(), e.logical, phys, len, disk.disk, HumanSize(disk.disk_size))
        .As(ErrorKind::kExtentsChanged);
  }
  return Ok();
}

}  // namespace

Result<std::vector<metadata::Extent>> ComputeLpExtents(const fiemap::SplitFiemap& split,
                                                       const DiskFacts& disk, uint64_t size_bytes) {
  std::vector<metadata::Extent> out;
  uint64_t remaining = size_bytes;
  for (const auto& piece : split.pieces()) {
    for (const auto& e : piece.extents()) {
      if (remaining == 0) break;
      const uint64_t len = std::min(e.length, remaining);
      const uint64_t phys = e.physical + disk.disk_offset_bytes;
      IMAGED_TRY(CheckOnDisk(piece, e, phys, len, remaining, disk));
      metadata::AppendLinearExtent(out, len / metadata::kSectorSize, phys / metadata::kSectorSize,
                                   0);
      remaining -= len;
    }
  }
  if (remaining != 0) {
    return MakeError(EUCLEAN, "the pieces of \"{}\" hold {} bytes less than the image size {}",
                     split.list_path(), remaining, size_bytes)
        .As(ErrorKind::kExtentsChanged);
  }
  return out;
}

bool IsReadonly(const metadata::Partition& partition) {
  return (partition.attributes & metadata::kPartitionAttrReadonly) != 0;
}

Result<dm::Table> TableFromLp(const metadata::LpMetadata& md, const metadata::Partition& partition,
                              const std::string& table_device, bool readonly) {
  return TableFromExtents(partition.name, metadata::PartitionExtents(md, partition), table_device,
                          readonly);
}

Result<dm::Table> TableFromExtents(std::string_view name,
                                   const std::vector<metadata::Extent>& extents,
                                   const std::string& table_device, bool readonly) {
  if (extents.empty()) return MakeError(EINVAL, "image \"{}\" has no extents", name);
  dm::Table table;
  uint64_t start = 0;
  for (size_t i = 0; i < extents.size(); ++i) {
    const auto& e = extents[i];
    if (e.num_sectors == 0) {
      return MakeError(EINVAL, "image \"{}\": extent {} is empty", name, i);
    }
    if (e.target_type == metadata::kTargetTypeLinear) {
      if (e.target_source != 0) {
        return MakeError(EINVAL, "image \"{}\": extent {} is on block device {}, not the data disk",
                         name, i, e.target_source);
      }
      table.Emplace<dm::LinearTarget>(start, e.num_sectors, table_device, e.target_data);
    } else if (e.target_type == metadata::kTargetTypeZero) {
      table.Emplace<dm::ZeroTarget>(start, e.num_sectors);
    } else {
      return MakeError(EINVAL,
                       "image \"{}\": extent {} has target type {}, which imaged cannot map", name,
                       i, e.target_type);
    }
    start += e.num_sectors;
  }
  table.set_readonly(readonly);
  return table;
}

dm::Table JoinTable(const std::vector<uint64_t>& piece_sizes, const std::vector<dev_t>& loops,
                    uint64_t image_size, bool readonly) {
  dm::Table table;
  uint64_t start = 0;
  uint64_t remaining = image_size / metadata::kSectorSize;
  for (size_t i = 0; i < piece_sizes.size() && i < loops.size() && remaining > 0; ++i) {
    const uint64_t len = std::min(piece_sizes[i] / metadata::kSectorSize, remaining);
    table.Emplace<dm::LinearTarget>(start, len, dm::DeviceMapper::DeviceString(loops[i]), 0);
    start += len;
    remaining -= len;
  }
  table.set_readonly(readonly);
  return table;
}

Result<bool> MappingMatches(dm::DeviceMapper& dm, const std::string& dm_name,
                            const dm::Table& table) {
  auto info = IMAGED_TRY(dm.Info(dm_name));
  if (!info) return false;
  const auto live = IMAGED_TRY(dm.GetTable(dm_name));
  return table.Matches(live, info->readonly);
}

namespace {

Result<std::optional<metadata::LpMetadata>> ReadLpFile(const Directory& metadata_dir,
                                                       std::string_view file) {
  if (!metadata_dir.Exists(file)) return std::optional<metadata::LpMetadata>();
  auto md = metadata::ReadImageFile(metadata_dir, file);
  if (!md) {
    Error e = std::move(md).error();
    if (e.code == ENOENT) return std::optional<metadata::LpMetadata>();
    if (e.code == EINVAL || e.code == EBADMSG || e.code == EFBIG) {
      e = std::move(e).As(ErrorKind::kCorruptMetadata);
    }
    return e;
  }
  return std::optional<metadata::LpMetadata>(std::move(*md));
}

}  // namespace

Result<std::optional<metadata::LpMetadata>> ReadLpMetadata(const Directory& metadata_dir) {
  return ReadLpFile(metadata_dir, kLpMetadataFile);
}

Result<std::optional<metadata::LpMetadata>> ReadPreviousLpMetadata(const Directory& metadata_dir) {
  return ReadLpFile(metadata_dir, kLpMetadataPrevFile);
}

Result<void> WriteLpMetadata(const Directory& metadata_dir, const metadata::LpMetadata& md) {
  // The generation being replaced stays as lp_metadata.prev, for rebuilding a lost or damaged
  // lp_metadata; only a readable one replaces the previous generation.
  if (metadata_dir.Exists(kLpMetadataFile)) {
    auto current = metadata_dir.ReadFile(kLpMetadataFile, metadata::kMaxImageFileBytes);
    if (current && metadata::ParseImageFile(*current)) {
      IMAGED_TRY_CTX(metadata_dir.AtomicWrite(kLpMetadataPrevFile, *current),
                     "keep the previous lp_metadata");
    }
  }
  return metadata::WriteImageFile(metadata_dir, kLpMetadataFile, md);
}

}  // namespace imaged::imageset
