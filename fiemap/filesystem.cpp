#include "fiemap/filesystem.h"

#include <fcntl.h>
#include <linux/dm-ioctl.h>
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

using internal::ReadSysfs;

Result<uint64_t> ReadSysfsU64(const std::string& path) {
  std::string s = IMAGED_TRY(ReadSysfs(path));
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) {
    return MakeError(EINVAL, "{}: not a number: \"{}\"", path, s);
  }
  return v;
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

// "dm-3", "sda5", "loop0" for a block device number, via sysfs.
Result<std::string> BlockDeviceName(dev_t dev) {
  std::string link = fmt::format("/sys/dev/block/{}:{}", major(dev), minor(dev));
  std::error_code ec;
  auto target = std::filesystem::read_symlink(link, ec);
  if (ec) {
    return MakeError(ec.value() == ENOENT ? ENODEV : ec.value(),
                     "device {}:{} is not a block device (no {})", major(dev), minor(dev), link);
  }
  std::string name = target.filename().string();
  if (name.empty() || name == fmt::format("{}:{}", major(dev), minor(dev))) {
    return MakeError(ENODEV, "{} does not name a block device", link);
  }
  return name;
}

// The active table of a dm device in `dmsetup table` text form, via DM_TABLE_STATUS with the
// table flag on /dev/mapper/control (fiemap/ must not depend on dm/).
Result<std::string> ReadDmTable(const std::string& dm_name) {
  UniqueFd control(open("/dev/mapper/control", O_RDWR | O_CLOEXEC));
  if (!control) return ErrnoError("open /dev/mapper/control");
  size_t size = 16 * 1024;
  for (int attempt = 0; attempt < 8; ++attempt, size *= 4) {
    std::vector<uint64_t> storage((size + 7) / 8);
    auto* io = reinterpret_cast<dm_ioctl*>(storage.data());
    io->version[0] = DM_VERSION_MAJOR;
    io->version[1] = 0;
    io->version[2] = 0;
    io->data_size = static_cast<uint32_t>(size);
    io->data_start = sizeof(dm_ioctl);
    io->flags = DM_STATUS_TABLE_FLAG;
    if (dm_name.size() >= sizeof(io->name)) return MakeError(EINVAL, "dm name too long");
    std::memcpy(io->name, dm_name.c_str(), dm_name.size() + 1);
    if (ioctl(control.get(), DM_TABLE_STATUS, io) != 0) {
      return ErrnoError("DM_TABLE_STATUS \"{}\"", dm_name);
    }
    if (io->flags & DM_BUFFER_FULL_FLAG) continue;
    const char* base = reinterpret_cast<const char*>(io);
    size_t data_end = std::min<size_t>(io->data_size, size);
    size_t cursor = io->data_start;
    std::string text;
    for (uint32_t i = 0; i < io->target_count; ++i) {
      if (cursor + sizeof(dm_target_spec) > data_end) {
        return MakeError(EIO, "DM_TABLE_STATUS \"{}\": truncated reply", dm_name);
      }
      dm_target_spec spec;
      std::memcpy(&spec, base + cursor, sizeof(spec));
      const char* params = base + cursor + sizeof(dm_target_spec);
      size_t max_len = data_end - (cursor + sizeof(dm_target_spec));
      std::string p(params, strnlen(params, max_len));
      std::string type(spec.target_type, strnlen(spec.target_type, sizeof(spec.target_type)));
      text += fmt::format("{} {} {} {}\n", spec.sector_start, spec.length, type, p);
      cursor = io->data_start + spec.next;
    }
    return text;
  }
  return MakeError(E2BIG, "DM_TABLE_STATUS \"{}\": table too large", dm_name);
}

std::vector<std::string> SplitWords(std::string_view line) {
  std::vector<std::string> words;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) words.emplace_back(line.substr(start, i - start));
  }
  return words;
}

Result<uint64_t> ParseU64(std::string_view s, std::string_view what) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) {
    return MakeError(EINVAL, "dm table: bad {} \"{}\"", what, s);
  }
  return v;
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

Result<std::optional<DmNextHop>> DmStackNextHop(std::string_view table, uint64_t device_sectors) {
  std::vector<std::vector<std::string>> targets;
  size_t pos = 0;
  while (pos < table.size()) {
    size_t nl = table.find('\n', pos);
    if (nl == std::string_view::npos) nl = table.size();
    auto words = SplitWords(table.substr(pos, nl - pos));
    pos = nl + 1;
    if (words.empty()) continue;
    if (words.size() < 3) return MakeError(EINVAL, "dm table: short line");
    targets.push_back(std::move(words));
  }
  if (targets.empty()) return MakeError(EINVAL, "dm table: no targets");
  if (targets.size() != 1) return std::optional<DmNextHop>();
  const auto& t = targets[0];
  uint64_t start = IMAGED_TRY(ParseU64(t[0], "start"));
  uint64_t length = IMAGED_TRY(ParseU64(t[1], "length"));
  if (start != 0 || length != device_sectors) return std::optional<DmNextHop>();
  DmNextHop hop;
  if (t[2] == "linear") {
    // linear <device> <offset>
    if (t.size() != 5) return MakeError(EINVAL, "dm table: linear wants 2 parameters");
    hop.device = t[3];
    hop.offset_bytes = IMAGED_TRY(ParseU64(t[4], "linear offset")) * 512;
  } else if (t[2] == "crypt") {
    // crypt <cipher> <key> <iv_offset> <device> <offset> [<#opt> <opt>...]. Sectors map 1:1
    // (any sector_size option only changes the encryption unit), but the data is ciphertext.
    if (t.size() < 8) return MakeError(EINVAL, "dm table: crypt wants at least 5 parameters");
    hop.device = t[6];
    hop.offset_bytes = IMAGED_TRY(ParseU64(t[7], "crypt offset")) * 512;
    hop.ciphertext = true;
  } else {
    return std::optional<DmNextHop>();
  }
  if (hop.offset_bytes / 512 > UINT64_MAX / 1024) return MakeError(EINVAL, "dm table: offset");
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

Result<FilesystemInfo> InspectFilesystem(const std::string& path) {
  struct statfs sfs;
  if (statfs(path.c_str(), &sfs) != 0) return ErrnoError("statfs \"{}\"", path);
  FilesystemInfo info;
  const auto magic = static_cast<uint32_t>(sfs.f_type);
  switch (magic) {
    case kExt4Magic:
      info.type = FsType::Ext4;
      break;
    case kF2fsMagic:
      info.type = FsType::F2fs;
      break;
    case kVfatMagic:
      info.type = FsType::Vfat;
      break;
    case kXfsMagic:
      info.type = FsType::Xfs;
      break;
    default:
      return MakeError(EOPNOTSUPP,
                       "\"{}\" is on {} (magic {:#x}); only ext4, f2fs, vfat and xfs are supported",
                       path, MagicName(magic), magic);
  }
  if (sfs.f_bsize <= 0 || (sfs.f_bsize & (sfs.f_bsize - 1)) != 0 || sfs.f_bsize < 512) {
    return MakeError(EINVAL, "\"{}\": odd block size {}", path, sfs.f_bsize);
  }
  info.block_size = static_cast<uint32_t>(sfs.f_bsize);
  info.free_bytes = static_cast<uint64_t>(sfs.f_bavail) * info.block_size;
  info.total_bytes = static_cast<uint64_t>(sfs.f_blocks) * info.block_size;

  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoError("stat \"{}\"", path);
  info.fs_dev = st.st_dev;
  std::string name = IMAGED_TRY_CTX(BlockDeviceName(st.st_dev), "\"{}\"", path);
  info.fs_device = "/dev/" + name;
  info.max_file_size =
      IMAGED_TRY(internal::MaxFileSizeFor(info.type, info.block_size, info.fs_device));

  // Pop device-mapper layers that map the whole device 1:1 onto a single slave.
  dev_t dev = st.st_dev;
  for (int depth = 0; depth < 16 && name.starts_with("dm-"); ++depth) {
    std::string dm_name = IMAGED_TRY(ReadSysfs(fmt::format("/sys/block/{}/dm/name", name)));
    std::string table = IMAGED_TRY(ReadDmTable(dm_name));
    uint64_t sectors = IMAGED_TRY(ReadSysfsU64(fmt::format("/sys/block/{}/size", name)));
    auto hop = IMAGED_TRY_CTX(DmStackNextHop(table, sectors), "dm device \"{}\"", dm_name);
    if (!hop) break;
    std::vector<std::string> slaves;
    std::error_code ec;
    // increment(ec), not ++: the range-for's ++ throws when readdir fails (device removed).
    for (std::filesystem::directory_iterator it(fmt::format("/sys/block/{}/slaves", name), ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      slaves.push_back(it->path().filename().string());
    }
    if (ec || slaves.size() != 1) break;
    std::string slave_dev_text =
        IMAGED_TRY(ReadSysfs(fmt::format("/sys/class/block/{}/dev", slaves[0])));
    dev_t slave_dev = IMAGED_TRY(ParseDevNumber(slave_dev_text));
    // The table names its device as MAJ:MIN; it must be the one slave sysfs reports.
    auto table_dev = ParseDevNumber(hop->device);
    if (!table_dev || *table_dev != slave_dev) break;
    info.disk_offset_bytes += hop->offset_bytes;
    info.disk_holds_ciphertext |= hop->ciphertext;
    name = slaves[0];
    dev = slave_dev;
  }
  info.disk = "/dev/" + name;
  info.disk_dev = dev;
  info.through_device_mapper = info.disk != info.fs_device;
  const std::string sys = "/sys/class/block/" + name;
  info.disk_size = IMAGED_TRY(ReadSysfsU64(sys + "/size")) * 512;
  auto start = ReadSysfsU64(sys + "/start");  // only partitions have it
  if (start) info.partition_start_bytes = *start * 512;
  // A partition has no queue/ of its own; its parent's applies.
  auto lbs = ReadSysfsU64(sys + "/queue/logical_block_size");
  if (!lbs) lbs = ReadSysfsU64(sys + "/../queue/logical_block_size");
  info.disk_logical_block_size = lbs ? static_cast<uint32_t>(*lbs) : 512;
  return info;
}

namespace internal {

Result<std::string> ReadSysfs(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("read {}", path);
  constexpr size_t kMax = 64 * 1024;
  std::string s(kMax, '\0');
  size_t got = 0;
  while (got < s.size()) {
    ssize_t n = pread(fd.get(), s.data() + got, s.size() - got, static_cast<off_t>(got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read {}", path);
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  s.resize(got);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace internal
}  // namespace imaged::fiemap
