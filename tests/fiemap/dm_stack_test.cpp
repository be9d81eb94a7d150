// InspectFilesystem through device-mapper (guest kernel only, tests/vm/run): a filesystem on
// dm-linear (and dm-crypt) over a loop device resolves to the loop device with the dm offsets
// accumulated, and file data is found on the loop device at disk_offset + physical.
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include <gtest/gtest.h>

#include <fiemap/fiemap_writer.h>
#include <fiemap/filesystem.h>

#include "bytes.h"
#include "fiemap_at.h"
#include "../vm/vm_env.h"
#include "fs_fixture.h"

namespace imaged::fiemap {
namespace {

using test::RunCommand;
using test::TempDir;

// A loop device over a sparse file, a dm stack over it, an ext4 on top, mounted. Torn down in
// reverse order on destruction.
class DmStack {
 public:
  explicit DmStack(uint64_t size) {
    backing_ = (dir_.path() / "disk.img").string();
    mnt_ = (dir_.path() / "mnt").string();
    std::filesystem::create_directory(mnt_);
    if (truncate_file(size) != 0) throw std::runtime_error("backing file");
    auto lo = RunCommand({"losetup", "-f", "--show", backing_});
    if (lo.exit_code != 0) throw std::runtime_error("losetup: " + lo.err);
    loop_ = lo.out.substr(0, lo.out.find('\n'));
  }
  ~DmStack() {
    if (mounted_ && umount2(mnt_.c_str(), 0) != 0) umount2(mnt_.c_str(), MNT_DETACH);
    for (auto it = dm_names_.rbegin(); it != dm_names_.rend(); ++it) {
      RunCommand({"dmsetup", "remove", "--retry", *it});
    }
    if (!loop_.empty()) RunCommand({"losetup", "-d", loop_});
  }

  // Adds a dm device with `table` (its device argument written as %DEV%, replaced by the
  // current top). Returns false with the reason on failure.
  bool Push(const std::string& suffix, std::string table, std::string* why) {
    std::string name = "imaged-fiemap-" + std::to_string(getpid()) + "-" + suffix;
    std::string top = dm_names_.empty() ? loop_ : "/dev/mapper/" + dm_names_.back();
    for (auto at = table.find("%DEV%"); at != std::string::npos; at = table.find("%DEV%")) {
      table.replace(at, 5, top);
    }
    auto r = RunCommand({"dmsetup", "create", name, "--table", table});
    if (r.exit_code != 0) {
      *why = r.err;
      return false;
    }
    dm_names_.push_back(name);
    return true;
  }
  void MkfsAndMount() {
    std::string dev = "/dev/mapper/" + dm_names_.back();
    auto mk = RunCommand({"mkfs.ext4", "-q", "-F", dev});
    if (mk.exit_code != 0) throw std::runtime_error("mkfs: " + mk.err);
    if (mount(dev.c_str(), mnt_.c_str(), "ext4", 0, nullptr) != 0) {
      throw std::runtime_error(std::string("mount: ") + strerror(errno));
    }
    mounted_ = true;
  }
  uint64_t SectorsOfTop() const {
    auto r = RunCommand({"blockdev", "--getsz", "/dev/mapper/" + dm_names_.back()});
    return std::stoull(r.out);
  }
  const std::string& loop() const { return loop_; }
  const std::string& mnt() const { return mnt_; }

 private:
  int truncate_file(uint64_t size) {
    int fd = open(backing_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    int rc = ftruncate(fd, static_cast<off_t>(size));
    close(fd);
    return rc;
  }
  TempDir dir_;
  std::string backing_, mnt_, loop_;
  std::vector<std::string> dm_names_;
  bool mounted_ = false;
};

// Reads `length` bytes of `device` at `offset` with O_DIRECT.
std::vector<char> ReadDevice(const std::string& device, uint64_t offset, size_t length) {
  int fd = open(device.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  EXPECT_GE(fd, 0) << device;
  auto buffer = test::Aligned(length);
  EXPECT_EQ(pread(fd, buffer.get(), length, static_cast<off_t>(offset)),
            static_cast<ssize_t>(length));
  close(fd);
  return std::vector<char>(buffer.get(), buffer.get() + length);
}

std::vector<char> WritePattern(const std::string& path, uint64_t size) {
  const auto data = test::Pattern<std::vector<char>>(size);
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(pwrite(fd, data.data(), size, 0), static_cast<ssize_t>(size));
  EXPECT_EQ(fsync(fd), 0);
  close(fd);
  return data;
}

TEST(DmStackPop, LinearWithOffsetResolvesToTheLoopDeviceAndAccumulatesTheOffset) {
  IMAGED_REQUIRE_DEVICE_MAPPER();
  DmStack stack(96ull << 20);
  std::string why;
  // 16 MiB into the loop device, 64 MiB long.
  ASSERT_TRUE(stack.Push("linear", "0 131072 linear %DEV% 32768", &why)) << why;
  stack.MkfsAndMount();
  auto info = InspectFilesystem(stack.mnt());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_TRUE(info->through_device_mapper);
  EXPECT_TRUE(info->fs_device.starts_with("/dev/dm-")) << info->fs_device;
  EXPECT_EQ(info->disk, stack.loop());
  EXPECT_EQ(info->disk_offset_bytes, 16ull << 20);
  EXPECT_EQ(info->disk_size, 96ull << 20);
  EXPECT_FALSE(info->disk_holds_ciphertext);

  auto w = test::CreateAt(stack.mnt() + "/image", 4 << 20);
  ASSERT_TRUE(w) << w.error().ToString();
  auto data = WritePattern(w->path(), w->size());
  for (const auto& e : w->extents()) {
    auto on_disk = ReadDevice(stack.loop(), info->disk_offset_bytes + e.physical, e.length);
    EXPECT_EQ(memcmp(on_disk.data(), data.data() + e.logical, e.length), 0)
        << "extent at " << e.logical;
  }
}

TEST(DmStackPop, TwoLinearLayersAccumulateBothOffsets) {
  IMAGED_REQUIRE_DEVICE_MAPPER();
  DmStack stack(96ull << 20);
  std::string why;
  ASSERT_TRUE(stack.Push("outer", "0 163840 linear %DEV% 2048", &why)) << why;  // +1 MiB
  ASSERT_TRUE(stack.Push("inner", "0 131072 linear %DEV% 8192", &why)) << why;  // +4 MiB
  stack.MkfsAndMount();
  auto info = InspectFilesystem(stack.mnt());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(info->disk, stack.loop());
  EXPECT_EQ(info->disk_offset_bytes, 5ull << 20);
}

TEST(DmStackPop, StopsAtATableWithSeveralTargets) {
  IMAGED_REQUIRE_DEVICE_MAPPER();
  DmStack stack(96ull << 20);
  std::string why;
  ASSERT_TRUE(stack.Push("two", "0 65536 linear %DEV% 0\n65536 65536 linear %DEV% 65536", &why))
      << why;
  stack.MkfsAndMount();
  auto info = InspectFilesystem(stack.mnt());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_FALSE(info->through_device_mapper);
  EXPECT_EQ(info->disk, info->fs_device);
  EXPECT_EQ(info->disk_offset_bytes, 0u);
}

TEST(DmStackPop, CryptIsPoppedWithItsOffsetAndMarkedCiphertext) {
  IMAGED_REQUIRE_DEVICE_MAPPER();
  DmStack stack(96ull << 20);
  std::string why;
  const std::string key(64, '7');  // aes-xts-plain64 wants 512 bits of hex key
  if (!stack.Push("crypt", "0 131072 crypt aes-xts-plain64 " + key + " 0 %DEV% 4096", &why)) {
    GTEST_SKIP() << "dm-crypt unavailable in this kernel: " << why;
  }
  stack.MkfsAndMount();
  auto info = InspectFilesystem(stack.mnt());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(info->disk, stack.loop());
  EXPECT_EQ(info->disk_offset_bytes, 2ull << 20);
  EXPECT_TRUE(info->disk_holds_ciphertext);
  EXPECT_TRUE(info->through_device_mapper);
}

}  // namespace
}  // namespace imaged::fiemap
