// Test support: a real filesystem (ext4, f2fs, xfs, vfat) made with mkfs on a loop device over
// a sparse file in a temp dir, mounted in a temp dir. The destructor unmounts (lazily if
// busy), detaches the loop device and removes the files, even when an assertion failed.
//
//   IMAGED_SKIP_UNLESS_ROOT();
//   IMAGED_SKIP_UNLESS_FS("f2fs");          // root, kernel support and mkfs.f2fs present
//   imaged::test::LoopFilesystem fs("ext4", 128 << 20);
//   ... fs.mount_point() ...
#pragma once

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "process.h"

namespace imaged::test {

inline bool IsRoot() {
  return geteuid() == 0;
}

inline bool ProcFilesystemsLists(const std::string& fs) {
  std::ifstream in("/proc/filesystems");
  std::string line;
  while (std::getline(in, line)) {
    auto tab = line.find_last_of("\t ");
    std::string name = tab == std::string::npos ? line : line.substr(tab + 1);
    if (name == fs) return true;
  }
  return false;
}

// True if the running kernel can mount `fs` ("vfat", "f2fs", ...): listed in
// /proc/filesystems, or loadable as a module (guest kernels load them on demand).
inline bool KernelHasFilesystem(const std::string& fs) {
  if (ProcFilesystemsLists(fs)) return true;
  if (!IsRoot()) return false;
  RunCommand({"modprobe", "-q", fs});
  return ProcFilesystemsLists(fs);
}

inline bool HaveProgram(const std::string& name) {
  return RunCommand({"sh", "-c", "command -v " + name}).exit_code == 0;
}

inline std::string MkfsProgram(const std::string& fs) {
  return "mkfs." + fs;
}

// Why a LoopFilesystem of type `fs` cannot be built here, or nullopt if it can.
inline std::optional<std::string> LoopFilesystemUnavailable(const std::string& fs) {
  if (!IsRoot()) return "needs root (loop devices, mkfs, mount)";
  if (!KernelHasFilesystem(fs)) return "kernel has no " + fs + " support (/proc/filesystems)";
  if (!HaveProgram(MkfsProgram(fs))) return MkfsProgram(fs) + " is not installed";
  if (!std::filesystem::exists("/dev/loop-control")) return "no /dev/loop-control";
  return std::nullopt;
}

#define IMAGED_SKIP_UNLESS_ROOT()                                \
  do {                                                           \
    if (!::imaged::test::IsRoot()) GTEST_SKIP() << "needs root"; \
  } while (0)

// Skips when the filesystem cannot be built here; with IMAGED_REQUIRE_ALL_FS=1 (set by the
// CI stage that runs these tests under a kernel that has every filesystem) that is a failure,
// so the stage can never pass as "all skipped".
inline bool RequireAllFilesystems() {
  const char* v = std::getenv("IMAGED_REQUIRE_ALL_FS");
  return v != nullptr && std::string(v) == "1";
}

#define IMAGED_SKIP_UNLESS_FS(fs)                                                   \
  do {                                                                              \
    if (auto imaged_skip_reason_ = ::imaged::test::LoopFilesystemUnavailable(fs)) { \
      if (::imaged::test::RequireAllFilesystems()) {                                \
        FAIL() << (fs) << " required but unavailable: " << *imaged_skip_reason_;    \
      }                                                                             \
      GTEST_SKIP() << (fs) << ": " << *imaged_skip_reason_;                         \
    }                                                                               \
  } while (0)

class LoopFilesystem {
 public:
  // Builds and mounts a `fs` ("ext4", "f2fs", "xfs", "vfat") of `size_bytes` (xfs needs
  // >= 300 MiB). `mkfs_args` are passed to mkfs before the device. Throws on failure, which
  // gtest reports as a test failure; whatever was set up is torn down.
  LoopFilesystem(std::string fs, uint64_t size_bytes, std::vector<std::string> mkfs_args = {})
      : fs_(std::move(fs)) {
    try {
      backing_ = (dir_.path() / "backing.img").string();
      mount_point_ = (dir_.path() / "mnt").string();
      std::filesystem::create_directory(mount_point_);
      {
        int fd = open(backing_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || ftruncate(fd, static_cast<off_t>(size_bytes)) != 0) {
          if (fd >= 0) close(fd);
          throw std::runtime_error("create backing file " + backing_);
        }
        close(fd);
      }
      auto lo = RunCommand({"losetup", "-f", "--show", backing_});
      if (lo.exit_code != 0) throw std::runtime_error("losetup: " + lo.err);
      loop_ = lo.out.substr(0, lo.out.find('\n'));
      std::vector<std::string> argv{MkfsProgram(fs_)};
      if (fs_ == "ext4") argv.insert(argv.end(), {"-q", "-F"});
      if (fs_ == "f2fs") argv.insert(argv.end(), {"-q", "-f"});
      if (fs_ == "xfs") argv.insert(argv.end(), {"-q", "-f"});
      argv.insert(argv.end(), mkfs_args.begin(), mkfs_args.end());
      argv.push_back(loop_);
      auto mk = RunCommand(argv);
      if (mk.exit_code != 0) throw std::runtime_error(argv[0] + " failed: " + mk.err + mk.out);
      Mount();
    } catch (...) {
      TearDown();
      throw;
    }
  }
  ~LoopFilesystem() { TearDown(); }
  LoopFilesystem(const LoopFilesystem&) = delete;
  LoopFilesystem& operator=(const LoopFilesystem&) = delete;

  const std::string& fs_type() const { return fs_; }
  std::string mount_point() const { return mount_point_; }
  std::string loop_device() const { return loop_; }
  std::string backing_file() const { return backing_; }
  // A path inside the mounted filesystem.
  std::string Path(const std::string& name) const { return mount_point_ + "/" + name; }
  bool mounted() const { return mounted_; }

  // Unmount (e.g. to read the image offline with libext2fs) and mount again.
  void Unmount() {
    if (!mounted_) return;
    if (umount2(mount_point_.c_str(), 0) != 0) {
      throw std::runtime_error("umount " + mount_point_ + ": " + strerror(errno));
    }
    mounted_ = false;
  }
  void Mount() {
    if (mounted_) return;
    if (mount(loop_.c_str(), mount_point_.c_str(), fs_.c_str(), 0, nullptr) != 0) {
      throw std::runtime_error("mount " + fs_ + " " + loop_ + ": " + strerror(errno));
    }
    mounted_ = true;
  }

 private:
  void TearDown() {
    if (mounted_ && umount2(mount_point_.c_str(), 0) != 0) {
      // Something still holds it (a failed test's open fd): detach now, free when released.
      umount2(mount_point_.c_str(), MNT_DETACH);
    }
    mounted_ = false;
    if (!loop_.empty()) {
      int fd = open(loop_.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        // On a still-busy device the kernel sets autoclear and detaches on last close.
        ioctl(fd, LOOP_CLR_FD, 0);
        close(fd);
      }
      loop_.clear();
    }
  }

  std::string fs_;
  TempDir dir_;
  std::string backing_;
  std::string mount_point_;
  std::string loop_;
  bool mounted_ = false;
};

}  // namespace imaged::test
