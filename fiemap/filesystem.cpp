#include "fiemap/filesystem.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <bit>
#include <charconv>
#include <climits>
#include <cstring>
#include <filesystem>

#include <dm/device_mapper.h>
#include <imaged/common/sysfs.h>
#include <imaged/common/unique_fd.h>

#include "internal.h"

namespace imaged::fiemap {
namespace {

constexpr uint32_t kExt4Magic = 0xEF53;
constexpr uint32_t kF2fsMagic = 0xF2F52010;
constexpr uint32_t kVfatMagic = 0x4d44;
constexpr uint32_t kXfsMagic = 0x58465342;

// Names for the refusal message, so the user reads "btrfs", not a number.
std::string_view MagicName(uint32_t magic) {
  switch (magic) {
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x858458f6:
      return "ramfs";
    case 0x794c7630:
      return "overlayfs";
    case 0x6969:
      return "nfs";
    case 0xFF534D42:
      return "cifs";
    case 0xFE534D42:
      return "smb2";
    case 0x65735546:
      return "fuse";
    case 0x2fc12fc1:
      return "zfs";
    case 0x73717368:
      return "squashfs";
    case 0xE0F5E1E2:
      return "erofs";
    case 0x2011BAB0:
      return "exfat";
    case 0x5346544e:
      return "ntfs";
    case 0x01021997:
      return "9p";
    case 0x9fa0:
      return "proc";
    case 0x62656572:
      return "sysfs";
    case 0x1373:
      return "devfs";
    case 0x4244:
      return "hfs";
    case 0x3153464a:
      return "jfs";
    case 0x52654973:
      return "reiserfs";
    case 0x9660:
      return "iso9660";
    case 0x15013346:
      return "udf";
    case 0xCAFE4A11:
      return "bpf";
    default:
      return "unknown";
  }
}

// The live table of dm device "dm-N" (its kernel name), through dm/.
Result<std::vector<dm::TargetInfo>> LiveTable(const std::string& kernel_name) {
  const std::string dm_name = IMAGED_TRY(sysfs::Read(fmt::format("/sys/block/{}/dm/name",
                                                                 kernel_name)));
  dm::DeviceMapper mapper;
  return mapper.GetTable(dm_name);
}

// The single device a dm device sits on, from sysfs, or nullopt when it has several (or none).
Result<std::optional<std::string>> OnlySlave(const std::string& kernel_name) {
  std::vector<std::string> slaves;
  std::error_code ec;
  // increment(ec), not ++: the range-for's ++ throws when readdir fails (device removed).
  for (std::filesystem::directory_iterator it(fmt::format("/sys/block/{}/slaves", kernel_name), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    slaves.push_back(it->path().filename().string());
  }
  if (ec || slaves.size() != 1) return std::optional<std::string>();
  return std::optional<std::string>(slaves[0]);
}

Result<dev_t> ParseDevNumber(std::string_view text) {
  auto colon = text.find(':');
  unsigned maj = 0, min = 0;
  if (colon == std::string_view::npos) return MakeError(EINVAL, "bad device number \"{}\"", text);
  auto r1 = std::from_chars(text.data(), text.data() + colon, maj);
  auto r2 = std::from_chars(text.data() + colon + 1, text.data() + text.size(), min);
  if (r1.ec != std::errc() || r1.ptr != text.data() + colon || r2.ec != std::errc() ||
      r2.ptr != text.data() + text.size()) {
    return MakeError(EINVAL, "bad device number \"{}\"", text);
  }
  return makedev(maj, min);
}

// ext4's maximum file size from its superblock: log block size and the extents/huge_file
// features, exactly as the kernel derives s_maxbytes.
Result<uint64_t> Ext4MaxFromSuperblock(const std::string& device) {
  UniqueFd fd(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open {}", device);
  uint8_t sb[1024];
  ssize_t n = pread(fd.get(), sb, sizeof(sb), 1024);
  if (n != static_cast<ssize_t>(sizeof(sb))) return ErrnoError("read superblock of {}", device);
  auto le16 = [&](size_t off) { return static_cast<uint32_t>(sb[off] | (sb[off + 1] << 8)); };
  auto le32 = [&](size_t off) {
    return static_cast<uint32_t>(sb[off]) | (static_cast<uint32_t>(sb[off + 1]) << 8) |
           (static_cast<uint32_t>(sb[off + 2]) << 16) | (static_cast<uint32_t>(sb[off + 3]) << 24);
  };
  if (le16(0x38) != kExt4Magic) return MakeError(EINVAL, "{}: no ext4 superblock", device);
  uint32_t log_block = le32(0x18);
  if (log_block > 6) return MakeError(EINVAL, "{}: bad ext4 block size", device);
  uint32_t block_size = 1024u << log_block;
  constexpr uint32_t kIncompatExtents = 0x40;
  constexpr uint32_t kRoCompatHugeFile = 0x8;
  bool extents = le32(0x60) & kIncompatExtents;
  bool huge_file = le32(0x64) & kRoCompatHugeFile;
  return Ext4MaxFileSize(block_size, extents, huge_file);
}

}  // namespace

std::string_view FsTypeName(FsType type) {
  switch (type) {
    case FsType::Ext4:
      return "ext4";
    case FsType::F2fs:
      return "f2fs";
    case FsType::Vfat:
      return "vfat";
    case FsType::Xfs:
      return "xfs";
  }
  return "?";
}

uint64_t Ext4MaxFileSize(uint32_t block_size, bool extents, bool huge_file) {
  // Mirrors ext4_max_size() / ext4_max_bitmap_size() in fs/ext4/super.c.
  const int bits = std::countr_zero(block_size);
  const uint64_t kMaxLfs = static_cast<uint64_t>(LLONG_MAX);
  if (extents) {
    uint64_t upper = kMaxLfs;
    if (!huge_file) {
      // i_blocks counts 512-byte sectors in 32 bits.
      upper = ((uint64_t{1} << 32) - 1) >> (bits - 9) << bits;
    }
    // ee_block is 32 bits; one block less so ee_len can reach the end.
    uint64_t res = ((uint64_t{1} << 32) - 1) << bits;
    return std::min(res, upper);
  }
  const uint64_t ppb = uint64_t{1} << (bits - 2);
  uint64_t upper = huge_file ? (uint64_t{1} << 48) - 1 : ((uint64_t{1} << 32) - 1) >> (bits - 9);
  uint64_t res = 12 + ppb + ppb * ppb + ppb * ppb * ppb;
  uint64_t meta = 1 + (1 + ppb) + (1 + ppb + ppb * ppb);
  if (res + meta > upper) {
    res = upper;
    uint64_t left = upper - 12;
    meta = 1;
    left -= ppb;
    if (left < ppb * ppb) {
      meta += 1 + (left + ppb - 1) / ppb;
    } else {
      meta += 1 + ppb;
      left -= ppb * ppb;
      meta += 1 + (left + ppb - 1) / ppb + (left + ppb * ppb - 1) / (ppb * ppb);
    }
    res -= meta;
  }
  // Logical block numbers are 32 bits either way.
  res = std::min(res, (uint64_t{1} << 32) - 1);
  res <<= bits;
  return std::min(res, kMaxLfs);
}

uint64_t F2fsMaxFileSize(uint32_t block_size) {
  // As the kernel's max_file_blocks(NULL) computes s_maxbytes: 2 direct node blocks, 2 indirect,
  // 1 double-indirect, with (block - 24-byte node footer) / 4 addresses per node block (1018 for
  // 4 KiB). The kernel leaves out the inode's own 923 addresses, so the reference's
  // 4329690886144 is 923 blocks too large: a file of that size fails with EFBIG.
  const uint64_t per_node = (block_size - 24) / 4;
  uint64_t blocks = 2 * per_node + 2 * per_node * per_node + per_node * per_node * per_node;
  return blocks * block_size;
}

uint64_t VfatMaxFileSize(uint32_t cluster_size) {
  return 0xFFFFFFFFull / cluster_size * cluster_size;
}

Result<std::optional<DmNextHop>> DmStackNextHop(const std::vector<dm::TargetInfo>& table,
                                                uint64_t device_sectors) {
  if (table.empty()) return MakeError(EINVAL, "dm table: no targets");
  if (table.size() != 1) return std::optional<DmNextHop>();
  const auto& t = table[0];
  if (t.start != 0 || t.length != device_sectors) return std::optional<DmNextHop>();
  DmNextHop hop;
  dm::TargetDevice below;
  if (t.type == "linear") {
    below = IMAGED_TRY(dm::LinearTargetDevice(t.params));
  } else if (t.type == "crypt") {
    // Sectors map 1:1 (a sector_size option only changes the encryption unit), but the data
    // below is ciphertext.
    below = IMAGED_TRY(dm::CryptTargetDevice(t.params));
    hop.ciphertext = true;
  } else {
    return std::optional<DmNextHop>();
  }
  hop.device = std::move(below.device);
  hop.offset_bytes = below.offset_sectors * 512;
  return std::optional<DmNextHop>(std::move(hop));
}

namespace internal {

Result<uint64_t> MaxFileSizeFor(FsType type, uint32_t block_size, const std::string& fs_device) {
  switch (type) {
    case FsType::Ext4: {
      auto from_sb = Ext4MaxFromSuperblock(fs_device);
      if (from_sb) return *from_sb;
      // Without access to the device (not root), assume the mkfs.ext4 defaults since 2008:
      // extents and huge_file.
      return Ext4MaxFileSize(block_size, true, true);
    }
    case FsType::F2fs:
      return F2fsMaxFileSize(block_size);
    case FsType::Vfat:
      return VfatMaxFileSize(block_size);
    case FsType::Xfs:
      return static_cast<uint64_t>(LLONG_MAX) / block_size * block_size;
  }
  return MakeError(EINVAL, "unknown fs type");
}

}  // namespace internal

namespace {

Result<FsType> FsTypeOf(const struct statfs& sfs, const std::string& what) {
  const auto magic = static_cast<uint32_t>(sfs.f_type);
  switch (magic) {
    case kExt4Magic:
      return FsType::Ext4;
    case kF2fsMagic:
      return FsType::F2fs;
    case kVfatMagic:
      return FsType::Vfat;
    case kXfsMagic:
      return FsType::Xfs;
    default:
      return MakeError(EOPNOTSUPP,
                       "\"{}\" is on {} (magic {:#x}); only ext4, f2fs, vfat and xfs are supported",
                       what, MagicName(magic), magic);
  }
}

// Pops device-mapper layers that map the whole device 1:1 onto a single device, accumulating
// their offsets, and fills in the disk at the bottom.
Result<void> FindDisk(std::string name, dev_t dev, FilesystemInfo& info) {
  for (int depth = 0; depth < 16 && name.starts_with("dm-"); ++depth) {
    const auto table = IMAGED_TRY(LiveTable(name));
    const uint64_t sectors = IMAGED_TRY(sysfs::ReadU64(fmt::format("/sys/block/{}/size", name)));
    auto hop = IMAGED_TRY_CTX(DmStackNextHop(table, sectors), "dm device \"{}\"", name);
    if (!hop) break;
    const auto slave = IMAGED_TRY(OnlySlave(name));
    if (!slave) break;
    const std::string slave_dev_text =
        IMAGED_TRY(sysfs::Read(fmt::format("/sys/class/block/{}/dev", *slave)));
    const dev_t slave_dev = IMAGED_TRY(ParseDevNumber(slave_dev_text));
    // The table names its device as MAJ:MIN; it must be the one slave sysfs reports.
    auto table_dev = ParseDevNumber(hop->device);
    if (!table_dev || *table_dev != slave_dev) break;
    info.disk_offset_bytes += hop->offset_bytes;
    info.disk_holds_ciphertext |= hop->ciphertext;
    name = *slave;
    dev = slave_dev;
  }
  info.disk = "/dev/" + name;
  info.disk_dev = dev;
  info.through_device_mapper = info.disk != info.fs_device;
  info.disk_size = IMAGED_TRY(sysfs::ReadU64("/sys/class/block/" + name + "/size")) * 512;
  auto lbs = sysfs::LogicalBlockSize(dev);
  info.disk_logical_block_size = lbs ? *lbs : 512;
  auto min_io = sysfs::MinimumIoSize(dev);
  info.disk_min_io_size = min_io ? *min_io : 0;
  auto alignment_offset = sysfs::AlignmentOffset(dev);
  info.disk_alignment_offset = alignment_offset ? *alignment_offset : 0;
  return Ok();
}

}  // namespace

Result<FilesystemInfo> InspectFilesystem(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_PATH | O_CLOEXEC));
  if (!fd) return ErrnoError("open \"{}\"", path);
  return InspectFilesystem(fd.get(), path);
}

Result<FilesystemInfo> InspectFilesystem(int fd, const std::string& what) {
  struct statfs sfs;
  if (fstatfs(fd, &sfs) != 0) return ErrnoError("statfs \"{}\"", what);
  FilesystemInfo info;
  info.type = IMAGED_TRY(FsTypeOf(sfs, what));
  if (sfs.f_bsize <= 0 || (sfs.f_bsize & (sfs.f_bsize - 1)) != 0 || sfs.f_bsize < 512) {
    return MakeError(EINVAL, "\"{}\": odd block size {}", what, sfs.f_bsize);
  }
  info.block_size = static_cast<uint32_t>(sfs.f_bsize);
  info.free_bytes = static_cast<uint64_t>(sfs.f_bavail) * info.block_size;
  info.total_bytes = static_cast<uint64_t>(sfs.f_blocks) * info.block_size;

  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoError("stat \"{}\"", what);
  info.fs_dev = st.st_dev;
  const std::string name = IMAGED_TRY_CTX(sysfs::BlockDeviceName(st.st_dev), "\"{}\"", what);
  info.fs_device = "/dev/" + name;
  info.max_file_size =
      IMAGED_TRY(internal::MaxFileSizeFor(info.type, info.block_size, info.fs_device));
  IMAGED_TRY(FindDisk(name, st.st_dev, info));
  return info;
}

}  // namespace imaged::fiemap
