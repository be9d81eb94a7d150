// Test support for ImageManager: an image set on a real filesystem (LoopFilesystem), with a
// teardown that leaves nothing behind even when an assertion failed half-way through a mapping:
// our dm devices are removed, loops over the set's files detached, the fs unmounted.
#pragma once

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "dm/device_mapper.h"
#include "dm/loop_device.h"
#include "bytes.h"
#include "fs_fixture.h"
#include "manager/image_manager.h"
#include "process.h"

namespace imaged::test {

// A dm prefix unique to this process so parallel test binaries never see each other's devices.
inline std::string TestDmPrefix() {
  return "imaged-test-" + std::to_string(getpid()) + "-";
}

// Removes every dm device with `prefix` and detaches every loop over a file in `dir`.
inline void ForceCleanup(const std::string& prefix, const std::string& dir) {
  if (access("/dev/mapper/control", F_OK) == 0) {
    dm::DeviceMapper mapper;
    if (auto list = mapper.List()) {
      for (const auto& d : *list) {
        if (d.name.rfind(prefix, 0) == 0) {
          dm::RemoveOptions ro;
          ro.ignore_missing = true;
          ro.deferred = true;
          (void)mapper.Remove(d.name, ro);
        }
      }
    }
  }
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    if (auto loops = dm::LoopDevice::FindByBackingFile(e.path().string())) {
      for (const auto& l : *loops) (void)dm::LoopDevice::DetachPath(l);
    }
  }
}

class ImageSet {
 public:
  ImageSet(const std::string& fs_type, uint64_t fs_size, ManagerOptions options = {},
           std::vector<std::string> mkfs_args = {})
      : fs_(fs_type, fs_size, std::move(mkfs_args)) {
    options_ = std::move(options);
    if (options_.data_dir.empty()) options_.data_dir = fs_.Path("data");
    if (options_.metadata_dir.empty()) options_.metadata_dir = (meta_.path() / "meta").string();
    if (options_.dm_prefix == "imaged-") options_.dm_prefix = TestDmPrefix();
    Reopen();
  }
  ~ImageSet() {
    manager_.reset();
    ForceCleanup(options_.dm_prefix, options_.data_dir);
  }

  // A fresh ImageManager on the same set (like a second process, or a restarted daemon).
  std::unique_ptr<ImageManager> OpenAnother() const {
    auto m = ImageManager::Open(options_);
    if (!m) throw std::runtime_error("open image set: " + m.error().ToString());
    return std::move(*m);
  }
  void Reopen() { manager_ = OpenAnother(); }

  ImageManager& mgr() { return *manager_; }
  LoopFilesystem& fs() { return fs_; }
  const ManagerOptions& options() const { return options_; }
  std::string data(const std::string& file) const { return options_.data_dir + "/" + file; }
  std::string meta(const std::string& file) const { return options_.metadata_dir + "/" + file; }

 private:
  LoopFilesystem fs_;
  TempDir meta_;
  ManagerOptions options_;
  std::unique_ptr<ImageManager> manager_;
};

// ---- byte helpers ----
// What these tests write and read back through devices.
using Bytes = std::vector<uint8_t>;

inline uint64_t BlockDeviceSize(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) size = 0;
  close(fd);
  return size;
}

// Buffered-free I/O through a device or file: O_DIRECT with an aligned bounce buffer.
inline bool DirectWrite(const std::string& path, const std::vector<uint8_t>& data, uint64_t off) {
  int fd = open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return false;
  auto buf = Aligned(data.size());
  memcpy(buf.get(), data.data(), data.size());
  bool ok = pwrite(fd, buf.get(), data.size(), static_cast<off_t>(off)) ==
                static_cast<ssize_t>(data.size()) &&
            fsync(fd) == 0;
  close(fd);
  return ok;
}

inline std::vector<uint8_t> DirectRead(const std::string& path, size_t n, uint64_t off) {
  std::vector<uint8_t> out;
  int fd = open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return out;
  auto buf = Aligned(n);
  if (pread(fd, buf.get(), n, static_cast<off_t>(off)) == static_cast<ssize_t>(n)) {
    out.assign(buf.get(), buf.get() + n);
  }
  close(fd);
  return out;
}

inline std::vector<uint8_t> ReadFile(const std::string& path, size_t n, uint64_t off) {
  std::vector<uint8_t> out(n);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  ssize_t got = pread(fd, out.data(), n, static_cast<off_t>(off));
  close(fd);
  if (got != static_cast<ssize_t>(n)) return {};
  return out;
}

// Prints "Error: message" for failed Results in assertions.
#define ASSERT_OK(expr)                                                                        \
  do {                                                                                         \
    auto&& assert_ok_r_ = (expr);                                                              \
    ASSERT_TRUE(assert_ok_r_.has_value()) << #expr << ": " << assert_ok_r_.error().ToString(); \
  } while (0)
#define EXPECT_ERRNO(expr, err)                                                           \
  do {                                                                                    \
    auto&& expect_errno_r_ = (expr);                                                      \
    ASSERT_FALSE(expect_errno_r_.has_value()) << #expr << " unexpectedly succeeded";      \
    EXPECT_EQ(expect_errno_r_.error().code, (err)) << expect_errno_r_.error().ToString(); \
  } while (0)

}  // namespace imaged::test
