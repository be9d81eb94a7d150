// The space rule: one place decides whether an allocation fits the data filesystem and the
// reserve it keeps free (SpaceReserve), and words the refusal with the numbers.
#pragma once

#include <cstdint>
#include <string_view>

#include "fiemap/filesystem.h"
#include "fiemap/split_file.h"
#include "imaged/common/result.h"
#include "manager/image_manager.h"

namespace imaged::manager {

// The bytes `reserve` keeps free on `fs`: the larger of its two limits.
uint64_t ReserveBytes(const SpaceReserve& reserve, const fiemap::FilesystemInfo& fs);

// The plan of an allocation `planned` that leaves an image of `size_after` bytes, or ENOSPC
// when it does not fit in what `fs` has free beyond the reserve. `data_path` names the
// filesystem in the message.
Result<SpacePlan> CheckSpace(const SpaceReserve& reserve, const fiemap::FilesystemInfo& fs,
                             uint64_t size_after, const fiemap::SplitFiemap::Plan& planned,
                             std::string_view data_path);

}  // namespace imaged::manager
