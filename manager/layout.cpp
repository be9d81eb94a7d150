// How an image's pieces become liblp extents on the disk, and how those become a dm table.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dm/device_mapper.h"
#include "imaged/common/size.h"
#include "internal.h"

namespace imaged::manager {

DiskFacts DiskFactsOf(const fiemap::FilesystemInfo& fs) {
  DiskFacts d;
  d.disk = fs.disk;
  d.disk_dev = fs.disk_dev;
  d.disk_offset_bytes = fs.disk_offset_bytes;
  d.disk_size = fs.disk_size;
  d.logical_block_size = fs.disk_logical_block_size ? fs.disk_logical_block_size : 512;
  return d;
}

Result<std::vector<metadata::Extent>> ComputeLpExtents(const fiemap::SplitFiemap& split,
                                                       const DiskFacts& disk, uint64_t size_bytes) {
  std::vector<metadata::Extent> out;
  uint64_t remaining = size_bytes;
  const uint64_t lbs = std::max<uint32_t>(disk.logical_block_size, metadata::kSectorSize);
  for (const auto& piece : split.pieces()) {
    for (const auto& e : piece.extents()) {
      if (remaining == 0) break;
      const uint64_t len = std::min(e.length, remaining);
      const uint64_t phys = e.physical + disk.disk_offset_bytes;
      if (phys % lbs != 0 || len % metadata::kSectorSize != 0 ||
          (len % lbs != 0 && len != remaining)) {
        return MakeError(EUCLEAN,
                         "\"{}\" offset {}: extent at disk byte {} ({} bytes) is not aligned to "
                         "the disk's {}-byte logical blocks",
                         piece.path(), e.logical, phys, len, lbs);
      }
      if (disk.disk_size != 0 && (phys > disk.disk_size || len > disk.disk_size - phys)) {
        return MakeError(EUCLEAN,
                         "\"{}\" offset {}: extent at disk byte {} ({} bytes) lies "
                         "outside the disk \"{}\" ({})",
                         piece.path(), e.logical, phys, len, disk.disk, HumanSize(disk.disk_size));
      }
      metadata::AppendLinearExtent(out, len / metadata::kSectorSize, phys / metadata::kSectorSize,
                                   0);
      remaining -= len;
    }
  }
  if (remaining != 0) {
    return MakeError(EUCLEAN, "the pieces of \"{}\" hold {} bytes less than the image size {}",
                     split.list_path(), remaining, size_bytes);
  }
  return out;
}

dm::Table DmLinearTable(const std::vector<metadata::Extent>& extents, dev_t disk_dev,
                        bool readonly) {
  dm::Table table;
  const std::string device = dm::DeviceMapper::DeviceString(disk_dev);
  uint64_t sector = 0;
  for (const auto& e : extents) {
    if (e.target_type == metadata::kTargetTypeZero) {
      table.Emplace<dm::ZeroTarget>(sector, e.num_sectors);
    } else {
      table.Emplace<dm::LinearTarget>(sector, e.num_sectors, device, e.target_data);
    }
    sector += e.num_sectors;
  }
  table.set_readonly(readonly);
  return table;
}

std::string Basename(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  auto slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

bool PathExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

bool DeviceMapperAvailable() {
  int fd = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  close(fd);
  return true;
}

}  // namespace imaged::manager
