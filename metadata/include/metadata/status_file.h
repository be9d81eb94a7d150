// `<metadata_dir>/<name>.status`: the devices mapped for an image, one per line, in creation
// order, written before each device is created so a crash never leaks an unrecorded device:
//   dm:<dm-name>
//   loop:/dev/loopN
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "imaged/common/file_io.h"
#include "imaged/common/result.h"

namespace imaged::metadata {

struct StatusEntry {
  enum class Kind { Dm, Loop };
  Kind kind = Kind::Dm;
  std::string value;
  bool operator==(const StatusEntry&) const = default;
};

// Strict: every line must be `dm:<v>` or `loop:<v>` with a non-empty value free of NUL. The line is
// split on the FIRST ':' only, so dm names may contain ':' (AOSP splits on every ':').
// Empty lines are errors except that a missing final newline is tolerated. EINVAL with line number.
Result<std::vector<StatusEntry>> ParseStatus(std::string_view text);
// One line per entry, each ending in '\n'. Values must be valid (see ParseStatus); callers that
// cannot guarantee that should use ValidateStatusEntry first.
std::string SerializeStatus(const std::vector<StatusEntry>& entries);
Result<void> ValidateStatusEntry(const StatusEntry& entry);

// The status file `file` in `dir`. A missing file is ENOENT; a symlink or other non-regular
// file is an error naming it (never followed).
Result<std::vector<StatusEntry>> ReadStatusFile(const Directory& dir, std::string_view file);
// Atomic (Directory::AtomicWrite). Refuses invalid entries with EINVAL.
Result<void> WriteStatusFile(const Directory& dir, std::string_view file,
                             const std::vector<StatusEntry>& entries);
// Read (missing file = empty), append, atomic write.
Result<void> AppendStatusEntry(const Directory& dir, std::string_view file,
                               const StatusEntry& entry);
// Removes the file and fsyncs the directory; a missing file is success.
Result<void> RemoveStatusFile(const Directory& dir, std::string_view file);

}  // namespace imaged::metadata
