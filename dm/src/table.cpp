#include "dm/table.h"

#include <fmt/format.h>

namespace imaged::dm {

bool Target::operator==(const Target& other) const {
  return start_ == other.start_ && length_ == other.length_ && type() == other.type() &&
         params() == other.params();
}

std::string LinearTarget::params() const {
  return fmt::format("{} {}", device_, offset_);
}

uint64_t Table::num_sectors() const {
  return targets_.empty() ? 0 : targets_.back()->end();
}

Result<void> Table::Validate() const {
  if (targets_.empty()) return MakeError(EINVAL, "dm table has no targets");
  uint64_t next = 0;
  for (size_t i = 0; i < targets_.size(); ++i) {
    const Target& t = *targets_[i];
    if (t.length() == 0) {
      return MakeError(EINVAL, "dm table target {} (sector {}) has zero length", i, t.start());
    }
    if (t.start() > next) {
      return MakeError(EINVAL, "dm table has a gap: target {} starts at sector {}, expected {}", i,
                       t.start(), next);
    }
    if (t.start() < next) {
      return MakeError(EINVAL, "dm table targets overlap: target {} starts at sector {}, before {}",
                       i, t.start(), next);
    }
    if (t.end() < t.start()) {
      return MakeError(EINVAL, "dm table target {} overflows the sector range", i);
    }
    std::string type = t.type();
    // DM_MAX_TYPE_NAME is 16 with the NUL.
    if (type.empty() || type.size() > 15 || type.find_first_of(" \t\n") != std::string::npos) {
      return MakeError(EINVAL, "dm table target {} has an invalid type \"{}\"", i, type);
    }
    next = t.end();
  }
  return Ok();
}

bool Table::operator==(const Table& other) const {
  if (readonly_ != other.readonly_ || targets_.size() != other.targets_.size()) return false;
  for (size_t i = 0; i < targets_.size(); ++i) {
    if (!(*targets_[i] == *other.targets_[i])) return false;
  }
  return true;
}

}  // namespace imaged::dm
