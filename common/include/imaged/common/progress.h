// Progress of long operations, the one callback type every library uses.
#pragma once

#include <cstdint>
#include <functional>

namespace imaged {

// Called with bytes done of the total. Returning false cancels the operation, which then fails
// with ECANCELED and leaves nothing behind. Unless a function says otherwise, a successful
// operation ends with exactly one (total, total) call.
using Progress = std::function<bool(uint64_t done, uint64_t total)>;

}  // namespace imaged
