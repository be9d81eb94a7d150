// Finding the data disk named by lp_metadata's block-device entry, with no udev database and no
// data filesystem mounted.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "imaged/common/result.h"
#include "metadata/lp_metadata.h"

namespace imaged::init {

struct DataDisk {
  std::string path;          // what was opened: /dev/vda, /dev/disk/by-partlabel/data, a file
  std::string table_device;  // what dm tables name: "major:minor" (dm does not follow symlinks)
  uint64_t size = 0;         // bytes
  bool is_block_device = false;
};

// Where to look; tests point these at fake trees.
struct DiskLookup {
  std::string dev_dir = "/dev";
  std::string sys_block_dir = "/sys/class/block";
};

// The disk for `entry`, tried in order: `override_path` (when not empty); <dev>/<name>;
// <dev>/disk/by-partlabel/<name>; <dev>/disk/by-label/<name>; a /sys/class/block entry whose
// name or PARTNAME is <name> (opened through <dev>/<kernel name>). The first candidate that
// exists is used and its size must equal entry.size (ERANGE otherwise): the extents are only
// meaningful on the disk they were recorded on. A regular file is accepted as a disk (tests,
// verification of disk images) with table_device empty.
Result<DataDisk> ResolveDataDisk(const metadata::BlockDevice& entry,
                                 const std::string& override_path, const DiskLookup& lookup = {});

}  // namespace imaged::init
