// Facts about the filesystem holding a path: its type, block size, real per-file size limit,
// free space, and the disk under it (device-mapper layers popped where that is 1:1).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <dm/table.h>
#include <imaged/common/result.h>

namespace imaged::fiemap {

enum class FsType { Ext4, F2fs, Vfat, Xfs };

// "ext4", "f2fs", "vfat", "xfs".
std::string_view FsTypeName(FsType type);

struct FilesystemInfo {
  FsType type = FsType::Ext4;
  uint32_t block_size = 0;     // statfs f_bsize: fs block (cluster on vfat)
  uint64_t max_file_size = 0;  // largest file this fs accepts, a multiple of block_size
  uint64_t free_bytes = 0;     // f_bavail * f_bsize
  uint64_t total_bytes = 0;    // f_blocks * f_bsize
  dev_t fs_dev = 0;            // st_dev of the path
  std::string fs_device;       // /dev node the fs is mounted from, e.g. /dev/dm-0, /dev/loop3
  std::string disk;            // bottom device after popping device-mapper layers
  dev_t disk_dev = 0;
  uint64_t disk_offset_bytes = 0;  // add to a FIEMAP physical offset to get an offset on `disk`
                                   // (dm-linear and dm-crypt offsets accumulate)
  uint64_t disk_size = 0;          // bytes
  uint32_t disk_logical_block_size = 0;
  uint32_t disk_min_io_size = 0;         // BLKIOMIN of `disk` (0: unknown)
  uint32_t disk_alignment_offset = 0;    // BLKALIGNOFF of `disk`
  bool through_device_mapper = false;  // fs_device != disk: dm-linear straight over `disk`
  bool disk_holds_ciphertext = false;  // a dm-crypt layer was popped: `disk` holds ciphertext
};

// Inspects the filesystem holding `path` (a file or a directory). Refuses (EOPNOTSUPP) any
// filesystem other than ext4, f2fs, vfat and xfs, naming it.
Result<FilesystemInfo> InspectFilesystem(const std::string& path);
// The same for the open file or directory `fd`; `what` names it in errors.
Result<FilesystemInfo> InspectFilesystem(int fd, const std::string& what);

// Largest file size of an ext4 filesystem with these features, as the kernel computes
// s_maxbytes (extent-mapped or indirect-block-mapped inodes, huge_file or not).
uint64_t Ext4MaxFileSize(uint32_t block_size, bool extents, bool huge_file);
// f2fs: block_size * (2 direct + 2 indirect + 1 double-indirect node trees), as the kernel.
uint64_t F2fsMaxFileSize(uint32_t block_size);
// vfat: 4 GiB - 1 rounded down to the cluster size.
uint64_t VfatMaxFileSize(uint32_t cluster_size);

// One step down a device-mapper stack, decided from the device's table alone.
struct DmNextHop {
  std::string device;         // the target's device argument as in the table ("7:0")
  uint64_t offset_bytes = 0;  // where this device's sector 0 lies on `device`
  bool ciphertext = false;    // dm-crypt: the data below is encrypted
};

// Given a dm device's live table and its size in 512-byte sectors, returns the next hop when the
// device is exactly one linear or crypt target starting at 0 and covering the whole device;
// nullopt when the stack must stop here (several targets, other types, partial coverage).
// Malformed target parameters are an error.
Result<std::optional<DmNextHop>> DmStackNextHop(const std::vector<dm::TargetInfo>& table,
                                                uint64_t device_sectors);

}  // namespace imaged::fiemap
