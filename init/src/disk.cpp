#include "init/disk.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "dm/device_mapper.h"
#include "imaged/common/size.h"
#include "imaged/common/unique_fd.h"

namespace imaged::init {
namespace {

namespace fs = std::filesystem;

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// PARTNAME= from a sysfs uevent file (GPT partition name), "" when there is none.
std::string PartName(const fs::path& uevent) {
  std::ifstream in(uevent);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("PARTNAME=", 0) == 0) return line.substr(9);
  }
  return {};
}

// Kernel name of a block device whose name or GPT partition name is `name`.
std::string ScanSysBlock(const std::string& sys_dir, const std::string& name) {
  std::error_code ec;
  std::string by_partname;
  // increment(ec), not a range-for: its ++ throws when readdir fails (a device removed).
  for (fs::directory_iterator it(sys_dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    std::string kname = it->path().filename().string();
    if (kname == name) return kname;
    if (by_partname.empty() && PartName(it->path() / "uevent") == name) by_partname = kname;
  }
  return by_partname;
}

Result<DataDisk> OpenDisk(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open \"{}\"", path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("stat \"{}\"", path);
  DataDisk disk;
  disk.path = path;
  if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd.get(), BLKGETSIZE64, &disk.size) != 0) {
      return ErrnoError("BLKGETSIZE64 \"{}\"", path);
    }
    disk.is_block_device = true;
    disk.table_device = dm::DeviceMapper::DeviceString(st.st_rdev);
  } else if (S_ISREG(st.st_mode)) {
    disk.size = static_cast<uint64_t>(st.st_size);
  } else {
    return MakeError(ENOTBLK, "\"{}\" is neither a block device nor a file", path);
  }
  return disk;
}

}  // namespace

Result<DataDisk> ResolveDataDisk(const metadata::BlockDevice& entry,
                                 const std::string& override_path, const DiskLookup& lookup) {
  const std::string& name = entry.partition_name;
  std::vector<std::string> tried;
  std::string path;
  if (!override_path.empty()) {
    path = override_path;
  } else {
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      return MakeError(EINVAL, "lp_metadata names no usable data disk (\"{}\")", name);
    }
    for (const std::string& candidate :
         {lookup.dev_dir + "/" + name, lookup.dev_dir + "/disk/by-partlabel/" + name,
          lookup.dev_dir + "/disk/by-label/" + name}) {
      tried.push_back(candidate);
      if (Exists(candidate)) {
        path = candidate;
        break;
      }
    }
    if (path.empty()) {
      std::string kname = ScanSysBlock(lookup.sys_block_dir, name);
      tried.push_back(lookup.sys_block_dir + "/*");
      if (!kname.empty()) path = lookup.dev_dir + "/" + kname;
    }
    if (path.empty()) {
      std::string list;
      for (const auto& t : tried) list += (list.empty() ? "" : ", ") + t;
      return MakeError(ENODEV, "data disk \"{}\" not found (tried {}; use --data-device)", name,
                       list);
    }
  }
  DataDisk disk = IMAGED_TRY_CTX(OpenDisk(path), "data disk \"{}\"", name);
  if (disk.size != entry.size) {
    return MakeError(ERANGE,
                     "data disk \"{}\" ({}) is {} bytes ({}) but lp_metadata recorded {} bytes "
                     "({}): not the disk the images were created on",
                     name, path, disk.size, HumanSize(disk.size), entry.size,
                     HumanSize(entry.size));
  }
  return disk;
}

}  // namespace imaged::init
