// Every attached loop device on the system in one /sys/block scan, for callers that need to
// match many files against loops at once (LoopDevice::FindByBackingFile scans per file).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "imaged/common/result.h"

namespace imaged::dm {

struct AttachedLoop {
  std::string loop_path;     // "/dev/loopN"
  std::string backing_file;  // the path the kernel reports (renames included)
  // Identity of the backing file, from stat of backing_file at scan time. 0/0 when that path no
  // longer names a file (the backing file was deleted: the kernel reports "... (deleted)").
  dev_t backing_dev = 0;
  ino_t backing_ino = 0;
};

// Attached loops, sorted by loop path. A loop detached or attached during the scan may or may
// not be listed; a sysfs read failing because its loop went away is not an error.
Result<std::vector<AttachedLoop>> ListAttachedLoops();

}  // namespace imaged::dm
