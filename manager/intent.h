// An operation's intent: written to `<name>.intent` in the metadata dir before the operation's
// first durable step and removed after its last, so that after a crash Recover can prove which
// files are an abandoned step of its own and roll that step back (or forward). Recover deletes
// nothing of an image without one (docs/crash-safety.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "imaged/common/result.h"

namespace imaged::manager {

struct Intent {
  enum class Op {
    kCreate,  // a new image; complete once lp_metadata names it
    kFill,    // a new image filled with data (import, zero-fill); complete only when cleared
    kDelete,  // the image goes; Recover finishes the job
    kGrow,    // the image grows; Recover rolls back to the old size unless lp_metadata has the new
    kShrink,  // the image shrinks; Recover finishes the cut once lp_metadata has the new size
  };
  Op op = Op::kCreate;
  // kGrow and kShrink: the size lp_metadata recorded before, and the layout Recover cuts the
  // pieces to (SplitFiemap::CutTo): for a grow lp_metadata does not record yet, the old one; for
  // a shrink it does, the new one.
  uint64_t old_size = 0;
  size_t cut_pieces = 0;        // pieces the list file names
  uint64_t cut_last_piece = 0;  // bytes of the last of them

  bool operator==(const Intent&) const = default;
};

std::string SerializeIntent(const Intent& intent);
// EINVAL (naming what is wrong) for anything SerializeIntent does not write.
Result<Intent> ParseIntent(std::string_view text);

}  // namespace imaged::manager
