#include "dm/loop_list.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "sysfs.h"

namespace imaged::dm {

Result<std::vector<AttachedLoop>> ListAttachedLoops() {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir("/sys/block"), closedir);
  if (!dir) return ErrnoError("list loop devices: open /sys/block");
  std::vector<AttachedLoop> out;
  while (dirent* e = readdir(dir.get())) {
    if (std::strncmp(e->d_name, "loop", 4) != 0) continue;
    const std::string name = e->d_name;
    // Only attached loops have a loop/ directory with a backing_file.
    auto backing = internal::ReadSysfs("/sys/block/" + name + "/loop/backing_file");
    if (!backing || backing->empty()) continue;
    AttachedLoop loop;
    loop.loop_path = "/dev/" + name;
    loop.backing_file = std::move(*backing);
    struct stat st {};
    if (stat(loop.backing_file.c_str(), &st) == 0) {
      loop.backing_dev = st.st_dev;
      loop.backing_ino = st.st_ino;
    }
    out.push_back(std::move(loop));
  }
  std::sort(out.begin(), out.end(),
            [](const AttachedLoop& a, const AttachedLoop& b) { return a.loop_path < b.loop_path; });
  return out;
}

}  // namespace imaged::dm
