// resize --fs (like lvextend -r): after an image grew, the filesystem on it grows to fill it,
// with the tool its own developers ship, as each allows: resize2fs for ext2/3/4 (online when
// mounted; after `e2fsck -f -p` when not, as resize2fs requires), xfs_growfs on the mount point
// (xfs grows only while mounted), resize.f2fs (f2fs only while unmounted).
#pragma once

#include <string>

#include "imaged/common/result.h"

namespace imaged::manager {

// Grows the filesystem on block device `device` to the device's size. Errors name the tool and
// its last output lines; no filesystem on the device, or one that cannot grow in its state, is
// EOPNOTSUPP with the reason.
Result<void> GrowFilesystem(const std::string& device);

}  // namespace imaged::manager
