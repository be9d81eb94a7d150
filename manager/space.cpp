#include "space.h"

#include <fmt/format.h>

#include "imaged/common/size.h"

namespace imaged::manager {

uint64_t ReserveBytes(const SpaceReserve& reserve, const fiemap::FilesystemInfo& fs) {
  // The percentage of the whole filesystem, as mke2fs -m counts its reserved blocks.
  const uint64_t percent = fs.total_bytes / 100 * reserve.min_free_percent +
                           fs.total_bytes % 100 * reserve.min_free_percent / 100;
  return std::max(percent, reserve.min_free_bytes);
}

Result<SpacePlan> CheckSpace(const SpaceReserve& reserve, const fiemap::FilesystemInfo& fs,
                             uint64_t size_after, const fiemap::SplitFiemap::Plan& planned,
                             std::string_view data_path) {
  SpacePlan plan;
  plan.size_bytes = size_after;
  plan.allocate_bytes = planned.allocate_bytes;
  plan.pieces = static_cast<uint32_t>(planned.pieces);
  plan.free_bytes = fs.free_bytes;
  plan.free_after_bytes = fs.free_bytes - std::min(fs.free_bytes, planned.allocate_bytes);
  plan.reserve_bytes = ReserveBytes(reserve, fs);
  plan.fs_bytes = fs.total_bytes;
  if (planned.allocate_bytes == 0) return plan;  // nothing new: the reserve is not touched
  const std::string needed =
      fmt::format("{} needed, {} free on \"{}\"", HumanSize(planned.allocate_bytes),
                  HumanSize(fs.free_bytes), data_path);
  if (planned.allocate_bytes > fs.free_bytes) return MakeError(ENOSPC, "{}", needed);
  if (plan.free_after_bytes < plan.reserve_bytes) {
    return MakeError(ENOSPC,
                     "{}: that would leave {}, less than the {} kept free (min_free_percent = {} "
                     "of {}, min_free_bytes = {})",
                     needed, HumanSize(plan.free_after_bytes), HumanSize(plan.reserve_bytes),
                     reserve.min_free_percent, HumanSize(fs.total_bytes),
                     HumanSize(reserve.min_free_bytes));
  }
  return plan;
}

}  // namespace imaged::manager
