// Small sysfs attributes, read without exceptions. A sysfs file starts failing its reads (ENODEV)
// when its device goes away between our open and read, e.g. a loop detached by another process;
// that is an ordinary error value here, never a throw (std::ifstream would throw).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "imaged/common/result.h"

namespace imaged::sysfs {

// The attribute's text without trailing newlines and spaces (at most 64 KiB).
Result<std::string> Read(const std::string& path);
// The same on an already open fd, read from offset 0.
Result<std::string> ReadFd(int fd, const std::string& path_for_errors);
// A decimal attribute.
Result<uint64_t> ReadU64(const std::string& path);

// /sys/dev/block/MAJ:MIN of a block device number.
std::string DevBlockDir(dev_t dev);

// The logical block size of block device `dev`; a partition has no queue/ of its own, so its
// disk's applies. ENOENT when `dev` is no block device (tmpfs, overlayfs, network filesystems).
Result<uint32_t> LogicalBlockSize(dev_t dev);
// The smallest I/O the device prefers (queue/minimum_io_size, what BLKIOMIN reports) and where
// its first aligned sector lies (alignment_offset, BLKALIGNOFF), as liblp's PartitionOpener
// records them.
Result<uint32_t> MinimumIoSize(dev_t dev);
Result<uint32_t> AlignmentOffset(dev_t dev);

// "dm-3", "sda5", "loop0": the kernel name of block device `dev`. ENODEV when there is none.
Result<std::string> BlockDeviceName(dev_t dev);

}  // namespace imaged::sysfs
