// What the kernel has mapped, read once: the names of all dm devices and every attached loop
// with the identity (device, inode) of the file it holds. List and the operations decide from
// one such view instead of querying per image and per piece.
#pragma once

#include <sys/types.h>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "dm/device_mapper.h"
#include "imaged/common/result.h"

namespace imaged::manager {

// A file's identity; the only thing a loop is ever matched to.
struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  auto operator<=>(const FileId&) const = default;
};

class KernelView {
 public:
  // `dm` null: no device-mapper on this host (no dm devices can exist).
  static Result<KernelView> Scan(dm::DeviceMapper* dm);

  bool HasDm(const std::string& dm_name) const { return dm_names_.count(dm_name) != 0; }
  // Loops holding the file `id`, by loop path.
  const std::vector<std::string>& LoopsOf(const FileId& id) const;
  // The identity of the file loop `loop_path` holds, or nullopt when it is not attached.
  std::optional<FileId> BackingOf(const std::string& loop_path) const;

 private:
  std::set<std::string> dm_names_;
  std::map<FileId, std::vector<std::string>> loops_by_file_;
  std::map<std::string, FileId> file_by_loop_;
};

}  // namespace imaged::manager
