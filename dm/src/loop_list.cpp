#include "dm/loop_list.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "imaged/common/sysfs.h"
#include "imaged/common/unique_fd.h"

namespace imaged::dm {

namespace {

// The backing file's identity as the kernel holds it (LOOP_GET_STATUS64 reports the device and
// inode of the file the loop has open): right even when that file was renamed, deleted, or
// replaced at its path by another file.
bool ReadIdentity(const std::string& loop_path, AttachedLoop* loop) {
  UniqueFd fd(::open(loop_path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return false;
  loop_info64 info{};
  if (::ioctl(fd.get(), LOOP_GET_STATUS64, &info) != 0) return false;  // ENXIO: detached now
  loop->backing_dev = static_cast<dev_t>(info.lo_device);
  loop->backing_ino = static_cast<ino_t>(info.lo_inode);
  return true;
}

}  // namespace

Result<std::vector<AttachedLoop>> ListAttachedLoops() {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir("/sys/block"), closedir);
  if (!dir) return ErrnoError("list loop devices: open /sys/block");
  std::vector<AttachedLoop> out;
  while (dirent* e = readdir(dir.get())) {
    if (std::strncmp(e->d_name, "loop", 4) != 0) continue;
    const std::string name = e->d_name;
    // Only attached loops have a loop/ directory with a backing_file.
    auto backing = sysfs::Read("/sys/block/" + name + "/loop/backing_file");
    if (!backing || backing->empty()) continue;
    AttachedLoop loop;
    loop.loop_path = "/dev/" + name;
    loop.backing_file = std::move(*backing);
    if (!ReadIdentity(loop.loop_path, &loop)) continue;  // detached since the sysfs read
    out.push_back(std::move(loop));
  }
  std::sort(out.begin(), out.end(),
            [](const AttachedLoop& a, const AttachedLoop& b) { return a.loop_path < b.loop_path; });
  return out;
}

}  // namespace imaged::dm
