// Every attached loop device on the system in one /sys/block scan, with the identity (device and
// inode) of the file each one holds, for callers that match files against loops.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "imaged/common/result.h"

namespace imaged::dm {

struct AttachedLoop {
  std::string loop_path;     // "/dev/loopN"
  std::string backing_file;  // the path the kernel reports (renames included): information only
  // Identity of the file the loop holds, as the kernel reports it (LOOP_GET_STATUS64), so a
  // file that took over the path never matches. Compare these, never backing_file.
  dev_t backing_dev = 0;
  ino_t backing_ino = 0;
};

// Attached loops, sorted by loop path. A loop detached or attached during the scan may or may
// not be listed; a read failing because its loop went away is not an error. Needs read access
// to the loop device nodes (root): a loop that cannot be opened is not listed.
Result<std::vector<AttachedLoop>> ListAttachedLoops();

}  // namespace imaged::dm
