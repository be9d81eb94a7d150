// DeviceMapper against a real device-mapper: runs inside the guest kernel (label vm,
// tests/vm/run). Devices are named after the test and removed in TearDown even when an
// assertion fails; loops are RAII LoopDevices over files in a temp dir.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "../vm/vm_env.h"
#include "dm/device_mapper.h"
#include "dm/loop_device.h"
#include "dm/table.h"
#include "imaged/common/unique_fd.h"
#include "process.h"
#include "test_util.h"

namespace imaged::dm {
namespace {

constexpr uint64_t kSector = 512;

using test::Aligned;

class DeviceMapperTest : public ::testing::Test {
 protected:
  void SetUp() override { IMAGED_REQUIRE_DEVICE_MAPPER(); }

  void TearDown() override {
    for (const auto& name : names_) {
      auto r = dm_.Remove(name, {.retries = 20, .ignore_missing = true});
      EXPECT_TRUE(r.has_value()) << r.error().ToString();
    }
  }

  // A device name for this test, removed in TearDown.
  std::string Name(const std::string& suffix = "") {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("imaged-test-") + info->name() + suffix;
    names_.push_back(name);
    return name;
  }

  // A file of `bytes` filled with `fill`, behind a loop (direct I/O where the guest's
  // filesystem allows it; the guest's /tmp is a RAM overlay that may not).
  LoopDevice MakeLoop(uint64_t bytes, char fill = 0, std::string* file_out = nullptr) {
    std::string file = (tmp_.path() / ("backing" + std::to_string(files_++))).string();
    {
      UniqueFd fd(open(file.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
      EXPECT_TRUE(fd.valid()) << file << ": " << strerror(errno);
      std::string data(bytes, fill);
      EXPECT_EQ(pwrite(fd.get(), data.data(), data.size(), 0), static_cast<ssize_t>(bytes));
    }
    if (file_out) *file_out = file;
    auto loop = LoopDevice::Attach(file, {.allow_buffered = true});
    if (!loop) {
      ADD_FAILURE() << loop.error().ToString();
      std::abort();
    }
    return std::move(*loop);
  }

  static std::string ReadFileAt(const std::string& file, uint64_t offset, size_t size) {
    UniqueFd fd(open(file.c_str(), O_RDONLY | O_CLOEXEC));
    std::string out(size, '\0');
    ssize_t n = pread(fd.get(), out.data(), size, static_cast<off_t>(offset));
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return out;
  }

  DeviceMapper dm_;
  test::TempDir tmp_;
  std::vector<std::string> names_;
  int files_ = 0;
};

Table OneZeroTarget(uint64_t sectors = 8) {
  Table t;
  t.Emplace<ZeroTarget>(0, sectors);
  return t;
}

// AOSP HasMinimumTargets.
TEST_F(DeviceMapperTest, KernelHasTheLinearTarget) {
  auto types = dm_.GetTargetTypes();
  ASSERT_OK(types);
  EXPECT_NE(std::find(types->begin(), types->end(), "linear"), types->end());
  EXPECT_NE(std::find(types->begin(), types->end(), "error"), types->end());
}

TEST_F(DeviceMapperTest, CreateReturnsTheNodeAndRemoveDeletesIt) {
  std::string name = Name();
  auto path = dm_.Create(name, OneZeroTarget(), {.uuid = "IMAGED-test-create"});
  ASSERT_OK(path);
  EXPECT_EQ(*path, "/dev/mapper/" + name);
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  ASSERT_TRUE(info->has_value());
  const DeviceInfo& d = **info;
  EXPECT_EQ(d.name, name);
  EXPECT_EQ(d.uuid, "IMAGED-test-create");
  EXPECT_TRUE(d.active);
  EXPECT_FALSE(d.suspended);
  EXPECT_FALSE(d.readonly);
  EXPECT_EQ(d.target_count, 1);
  EXPECT_EQ(d.open_count, 0);
  struct stat st {};
  ASSERT_EQ(stat(path->c_str(), &st), 0);
  EXPECT_TRUE(S_ISBLK(st.st_mode));
  EXPECT_EQ(st.st_rdev, d.dev);

  ASSERT_OK(dm_.Remove(name));
  auto gone = dm_.Info(name);
  ASSERT_OK(gone);
  EXPECT_FALSE(gone->has_value());
  EXPECT_NE(access(path->c_str(), F_OK), 0) << *path << " still exists";
}

TEST_F(DeviceMapperTest, DeviceSizeIsTheTableSize) {
  std::string name = Name();
  auto path = dm_.Create(name, OneZeroTarget(12345));
  ASSERT_OK(path);
  UniqueFd fd(open(path->c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  uint64_t bytes = 0;
  ASSERT_EQ(ioctl(fd.get(), BLKGETSIZE64, &bytes), 0);
  EXPECT_EQ(bytes, 12345 * kSector);
}

TEST_F(DeviceMapperTest, CreateWithATakenNameFailsWithEexist) {
  std::string name = Name();
  ASSERT_OK(dm_.Create(name, OneZeroTarget()));
  ASSERT_ERRNO(dm_.Create(name, OneZeroTarget(16)), EEXIST);
  auto table = dm_.GetTable(name);
  ASSERT_OK(table);
  ASSERT_EQ(table->size(), 1u);
  EXPECT_EQ((*table)[0].length, 8u);  // the first device is untouched
}

TEST_F(DeviceMapperTest, InvalidNamesAreRefusedBeforeTheKernel) {
  ASSERT_ERRNO(dm_.Create("", OneZeroTarget()), EINVAL);
  ASSERT_ERRNO(dm_.Create(std::string(128, 'n'), OneZeroTarget()), EINVAL);
  ASSERT_ERRNO(dm_.Create("a/b", OneZeroTarget()), EINVAL);
  ASSERT_ERRNO(dm_.Create("..", OneZeroTarget()), EINVAL);
  ASSERT_ERRNO(dm_.Create("a b", OneZeroTarget()), EINVAL);
}

TEST_F(DeviceMapperTest, LongestValidNameWorks) {
  std::string name = Name(std::string(127 - std::strlen("imaged-test-LongestValidNameWorks"), 'x'));
  ASSERT_EQ(name.size(), 127u);
  ASSERT_OK(dm_.Create(name, OneZeroTarget()));
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  ASSERT_TRUE(info->has_value());
  EXPECT_EQ((*info)->name, name);
}

TEST_F(DeviceMapperTest, InvalidUuidIsRefused) {
  std::string name = Name();
  ASSERT_ERRNO(dm_.Create(name, OneZeroTarget(), {.uuid = std::string(129, 'u')}), EINVAL);
  ASSERT_ERRNO(dm_.Create(name, OneZeroTarget(), {.uuid = "a b"}), EINVAL);
}

TEST_F(DeviceMapperTest, TableWithAGapIsRefusedAndNothingIsCreated) {
  std::string name = Name();
  Table table;
  table.Emplace<ZeroTarget>(0, 8);
  table.Emplace<ZeroTarget>(16, 8);
  ASSERT_ERRNO(dm_.Create(name, table), EINVAL);
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  EXPECT_FALSE(info->has_value());
}

// "Sizes validated": a linear target past the end of its device is refused by the kernel, and
// the half-made device does not stay behind.
TEST_F(DeviceMapperTest, TargetBeyondTheEndOfItsDeviceFailsAndLeavesNoDevice) {
  LoopDevice loop = MakeLoop(64 * 1024);
  std::string name = Name();
  Table table;
  table.Emplace<LinearTarget>(0, 256, loop.path(), 0);  // 128 KiB over a 64 KiB loop
  ASSERT_ERRNO(dm_.Create(name, table), EINVAL);
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  EXPECT_FALSE(info->has_value());
}

TEST_F(DeviceMapperTest, MissingUnderlyingDeviceFailsAndLeavesNoDevice) {
  std::string name = Name();
  Table table;
  table.Emplace<LinearTarget>(0, 8, "/dev/imaged-no-such-device", 0);
  ASSERT_ERRNO(dm_.Create(name, table), ENODEV);
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  EXPECT_FALSE(info->has_value());
}

// AOSP DmLinear: two loops with a message each, one linear sector over each.
TEST_F(DeviceMapperTest, LinearTargetsReadTheirLoops) {
  std::string f1, f2;
  LoopDevice loop1 = MakeLoop(4096, 0, &f1);
  LoopDevice loop2 = MakeLoop(4096, 0, &f2);
  {
    UniqueFd a(open(f1.c_str(), O_WRONLY | O_CLOEXEC)), b(open(f2.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_EQ(pwrite(a.get(), "Hello", 6, 0), 6);
    ASSERT_EQ(pwrite(b.get(), "World", 6, 0), 6);
  }
  Table table;
  table.Emplace<LinearTarget>(0, 1, loop1.path(), 0);
  table.Emplace<LinearTarget>(1, 1, DeviceMapper::DeviceString(loop2.dev()), 0);
  EXPECT_EQ(table.num_sectors(), 2u);
  std::string name = Name();
  auto path = dm_.Create(name, table);
  ASSERT_OK(path);
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  ASSERT_TRUE(info->has_value());
  EXPECT_NE((*info)->dev, 0u);

  UniqueFd fd(open(path->c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  auto buf = Aligned(1024, 0);
  ASSERT_EQ(pread(fd.get(), buf.get(), 1024, 0), 1024);
  EXPECT_STREQ(buf.get(), "Hello");
  EXPECT_STREQ(buf.get() + 512, "World");

  auto status = dm_.GetStatus(name);
  ASSERT_OK(status);
  ASSERT_EQ(status->size(), 2u);
  EXPECT_EQ((*status)[0], (TargetInfo{0, 1, "linear", ""}));
  EXPECT_EQ((*status)[1], (TargetInfo{1, 1, "linear", ""}));

  auto live = dm_.GetTable(name);
  ASSERT_OK(live);
  ASSERT_EQ(live->size(), 2u);
  EXPECT_EQ((*live)[0],
            (TargetInfo{0, 1, "linear", DeviceMapper::DeviceString(loop1.dev()) + " 0"}));
  EXPECT_EQ((*live)[1],
            (TargetInfo{1, 1, "linear", DeviceMapper::DeviceString(loop2.dev()) + " 0"}));
}

// Data written through a dm-linear device over a loop lands at the offsets the table says.
TEST_F(DeviceMapperTest, WritesLandAtTheMappedFileOffsets) {
  std::string file;
  LoopDevice loop = MakeLoop(1 << 20, '.', &file);
  // Device sectors [0,8) -> file sector 512, [8,16) -> file sector 0, [16,24) -> zero.
  Table table;
  table.Emplace<LinearTarget>(0, 8, loop.path(), 512);
  table.Emplace<LinearTarget>(8, 8, loop.path(), 0);
  table.Emplace<ZeroTarget>(16, 8);
  std::string name = Name();
  auto path = dm_.Create(name, table);
  ASSERT_OK(path);
  {
    UniqueFd fd(open(path->c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    auto a = Aligned(4096, 'A'), b = Aligned(4096, 'B'), z = Aligned(4096, 'Z');
    ASSERT_EQ(pwrite(fd.get(), a.get(), 4096, 0), 4096);
    ASSERT_EQ(pwrite(fd.get(), b.get(), 4096, 4096), 4096);
    ASSERT_EQ(pwrite(fd.get(), z.get(), 4096, 8192), 4096);  // discarded by zero
    ASSERT_EQ(fsync(fd.get()), 0);
    auto back = Aligned(4096, 1);
    ASSERT_EQ(pread(fd.get(), back.get(), 4096, 8192), 4096);
    EXPECT_EQ(std::string(back.get(), 4096), std::string(4096, '\0'));
  }
  EXPECT_EQ(ReadFileAt(file, 0, 4096), std::string(4096, 'B'));
  EXPECT_EQ(ReadFileAt(file, 4096, 4096), std::string(4096, '.'));
  EXPECT_EQ(ReadFileAt(file, 512 * kSector - 4096, 4096), std::string(4096, '.'));
  EXPECT_EQ(ReadFileAt(file, 512 * kSector, 4096), std::string(4096, 'A'));
  EXPECT_EQ(ReadFileAt(file, 512 * kSector + 4096, 4096), std::string(4096, '.'));
}

TEST_F(DeviceMapperTest, ErrorTargetGivesEio) {
  Table table;
  table.Emplace<ZeroTarget>(0, 8);
  table.Emplace<ErrorTarget>(8, 8);
  std::string name = Name();
  auto path = dm_.Create(name, table);
  ASSERT_OK(path);
  UniqueFd fd(open(path->c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  auto buf = Aligned(4096, 1);
  ASSERT_EQ(pread(fd.get(), buf.get(), 4096, 0), 4096);
  EXPECT_EQ(std::string(buf.get(), 4096), std::string(4096, '\0'));
  EXPECT_EQ(pread(fd.get(), buf.get(), 4096, 4096), -1);
  EXPECT_EQ(errno, EIO);
}

// Table swap: linear -> error (EIO) -> linear again (the data is back).
TEST_F(DeviceMapperTest, TableSwapToErrorGivesEioAndBackRestoresData) {
  LoopDevice loop = MakeLoop(64 * 1024, 'd');
  auto linear = [&] {
    Table t;
    t.Emplace<LinearTarget>(0, 128, loop.path(), 0);
    return t;
  };
  std::string name = Name();
  auto path = dm_.Create(name, linear());
  ASSERT_OK(path);
  UniqueFd fd(open(path->c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  auto buf = Aligned(4096, 0);
  ASSERT_EQ(pread(fd.get(), buf.get(), 4096, 0), 4096);
  EXPECT_EQ(std::string(buf.get(), 4096), std::string(4096, 'd'));

  Table error;
  error.Emplace<ErrorTarget>(0, 128);
  ASSERT_OK(dm_.Load(name, error));
  // Loaded but not live yet: reads still work.
  ASSERT_EQ(pread(fd.get(), buf.get(), 4096, 0), 4096);
  ASSERT_OK(dm_.Suspend(name));
  ASSERT_OK(dm_.Resume(name));
  EXPECT_EQ(pread(fd.get(), buf.get(), 4096, 0), -1);
  EXPECT_EQ(errno, EIO);
  auto live = dm_.GetTable(name);
  ASSERT_OK(live);
  ASSERT_EQ(live->size(), 1u);
  EXPECT_EQ((*live)[0].type, "error");

  ASSERT_OK(dm_.Load(name, linear()));
  ASSERT_OK(dm_.Suspend(name));
  ASSERT_OK(dm_.Resume(name));
  std::memset(buf.get(), 0, 4096);
  ASSERT_EQ(pread(fd.get(), buf.get(), 4096, 0), 4096);
  EXPECT_EQ(std::string(buf.get(), 4096), std::string(4096, 'd'));
}

// Online grow: a longer table goes live under an open descriptor, which sees the new size; the
// node and device number stay, and the device is not left suspended.
TEST_F(DeviceMapperTest, ReplaceTableGrowsTheDeviceInPlace) {
  LoopDevice loop = MakeLoop(64 * 1024, 'g');
  std::string name = Name();
  Table small;
  small.Emplace<LinearTarget>(0, 64, loop.path(), 0);
  auto path = dm_.Create(name, small);
  ASSERT_OK(path);
  struct stat before {};
  ASSERT_EQ(stat(path->c_str(), &before), 0);
  UniqueFd fd(open(path->c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  Table grown;
  grown.Emplace<LinearTarget>(0, 64, loop.path(), 0);
  grown.Emplace<LinearTarget>(64, 64, loop.path(), 64);
  ASSERT_OK(dm_.ReplaceTable(name, grown));
  uint64_t bytes = 0;
  ASSERT_EQ(ioctl(fd.get(), BLKGETSIZE64, &bytes), 0);
  EXPECT_EQ(bytes, 128 * kSector);
  auto buf = Aligned(4096, 0);
  ASSERT_EQ(pread(fd.get(), buf.get(), 4096, 60 * 1024), 4096);
  EXPECT_EQ(std::string(buf.get(), 4096), std::string(4096, 'g'));
  struct stat after {};
  ASSERT_EQ(stat(path->c_str(), &after), 0);
  EXPECT_EQ(after.st_rdev, before.st_rdev);
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  ASSERT_TRUE(info->has_value());
  EXPECT_FALSE((*info)->suspended);
  // A table the kernel refuses (here at resume: a target past its device) leaves the live one,
  // resumed.
  Table bad;
  bad.Emplace<LinearTarget>(0, 1 << 20, loop.path(), 0);  // beyond the loop's end
  EXPECT_FALSE(dm_.ReplaceTable(name, bad));
  ASSERT_EQ(ioctl(fd.get(), BLKGETSIZE64, &bytes), 0);
  EXPECT_EQ(bytes, 128 * kSector);
  EXPECT_FALSE((*dm_.Info(name))->suspended);
}

// AOSP DmSuspendResume.
TEST_F(DeviceMapperTest, SuspendAndResumeChangeTheState) {
  std::string name = Name();
  ASSERT_OK(dm_.Create(name, OneZeroTarget()));
  auto state = [&] {
    auto info = dm_.Info(name);
    EXPECT_TRUE(info.has_value() && info->has_value());
    return info.has_value() && info->has_value() ? (*info)->suspended : false;
  };
  EXPECT_FALSE(state());
  ASSERT_OK(dm_.Suspend(name));
  EXPECT_TRUE(state());
  ASSERT_OK(dm_.Resume(name));
  EXPECT_FALSE(state());
}

TEST_F(DeviceMapperTest, OperationsOnAMissingDeviceFailWithEnxio) {
  std::string name = Name();
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  EXPECT_FALSE(info->has_value());
  ASSERT_ERRNO(dm_.Remove(name, {.retries = 0}), ENXIO);
  EXPECT_OK(dm_.Remove(name, {.ignore_missing = true}));
  ASSERT_ERRNO(dm_.Load(name, OneZeroTarget()), ENXIO);
  ASSERT_ERRNO(dm_.Suspend(name), ENXIO);
  ASSERT_ERRNO(dm_.GetTable(name), ENXIO);
  ASSERT_ERRNO(dm_.GetStatus(name), ENXIO);
}

// A read-only device opens for writing (Linux 6.1) but every write fails.
void ExpectWritesRefused(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    EXPECT_EQ(errno, EROFS);
    return;
  }
  auto buf = Aligned(4096, 'w');
  EXPECT_EQ(pwrite(fd.get(), buf.get(), 4096, 0), -1);
  EXPECT_TRUE(errno == EPERM || errno == EROFS) << strerror(errno);
}

TEST_F(DeviceMapperTest, ReadonlyTableRefusesWrites) {
  std::string name = Name();
  Table table = OneZeroTarget();
  table.set_readonly(true);
  auto path = dm_.Create(name, table);
  ASSERT_OK(path);
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  ASSERT_TRUE(info->has_value());
  EXPECT_TRUE((*info)->readonly);
  ExpectWritesRefused(*path);
}

TEST_F(DeviceMapperTest, ReadonlyCreateOptionRefusesWrites) {
  std::string name = Name();
  auto path = dm_.Create(name, OneZeroTarget(), {.readonly = true});
  ASSERT_OK(path);
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  ASSERT_TRUE(info->has_value());
  EXPECT_TRUE((*info)->readonly);
  ExpectWritesRefused(*path);
}

TEST_F(DeviceMapperTest, WritableDeviceIsNotReadonly) {
  std::string name = Name();
  auto path = dm_.Create(name, OneZeroTarget());
  ASSERT_OK(path);
  UniqueFd fd(open(path->c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  auto buf = Aligned(4096, 'w');
  EXPECT_EQ(pwrite(fd.get(), buf.get(), 4096, 0), 4096);
}

TEST_F(DeviceMapperTest, RemoveWhileOpenFailsWithEbusy) {
  std::string name = Name();
  auto path = dm_.Create(name, OneZeroTarget());
  ASSERT_OK(path);
  {
    UniqueFd fd(open(path->c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    auto info = dm_.Info(name);
    ASSERT_OK(info);
    EXPECT_EQ((*info)->open_count, 1);
    ASSERT_ERRNO(dm_.Remove(name, {.retries = 1}), EBUSY);
    auto still = dm_.Info(name);
    ASSERT_OK(still);
    EXPECT_TRUE(still->has_value());
  }
  ASSERT_OK(dm_.Remove(name, {.retries = 0}));
}

// AOSP DeleteDeviceDeferredNoReferences.
TEST_F(DeviceMapperTest, DeferredRemoveWithoutOpenersRemovesAtOnce) {
  std::string name = Name();
  ASSERT_OK(dm_.Create(name, OneZeroTarget()));
  ASSERT_OK(dm_.Remove(name, {.deferred = true}));
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  EXPECT_FALSE(info->has_value());
}

// AOSP DeleteDeviceDeferredWaitsForLastReference.
TEST_F(DeviceMapperTest, DeferredRemoveWaitsForTheLastClose) {
  std::string name = Name();
  auto path = dm_.Create(name, OneZeroTarget());
  ASSERT_OK(path);
  {
    UniqueFd fd(open(path->c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    ASSERT_OK(dm_.Remove(name, {.retries = 0, .deferred = true}));
    auto info = dm_.Info(name);
    ASSERT_OK(info);
    ASSERT_TRUE(info->has_value());
    EXPECT_TRUE((*info)->deferred_remove);
  }
  // The kernel removes the device from a workqueue after the last close; there is no event
  // to wait on, so poll with a deadline (AOSP allows 5 s).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  bool gone = false;
  while (!gone && std::chrono::steady_clock::now() < deadline) {
    auto info = dm_.Info(name);
    ASSERT_OK(info);
    gone = !info->has_value();
    if (!gone) std::this_thread::yield();
  }
  EXPECT_TRUE(gone);
}

TEST_F(DeviceMapperTest, TenThousandTargetTable) {
  constexpr uint64_t kTargets = 10000;
  std::string file;
  LoopDevice loop = MakeLoop(kTargets * kSector, 0, &file);
  // Every device sector maps to the mirrored file sector: the worst case for merging.
  Table table;
  for (uint64_t i = 0; i < kTargets; ++i) {
    table.Emplace<LinearTarget>(i, 1, loop.path(), kTargets - 1 - i);
  }
  std::string name = Name();
  auto t0 = std::chrono::steady_clock::now();
  auto path = dm_.Create(name, table);
  auto elapsed = std::chrono::steady_clock::now() - t0;
  ASSERT_OK(path);
  std::printf("create with %llu targets: %lld ms\n", static_cast<unsigned long long>(kTargets),
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()));
  EXPECT_LT(elapsed, std::chrono::seconds(5));

  auto live = dm_.GetTable(name);
  ASSERT_OK(live);
  ASSERT_EQ(live->size(), kTargets);
  std::string dev = DeviceMapper::DeviceString(loop.dev());
  for (uint64_t i : {uint64_t{0}, uint64_t{1}, kTargets / 2, kTargets - 1}) {
    EXPECT_EQ((*live)[i],
              (TargetInfo{i, 1, "linear", dev + " " + std::to_string(kTargets - 1 - i)}));
  }
  auto info = dm_.Info(name);
  ASSERT_OK(info);
  EXPECT_EQ((*info)->target_count, static_cast<int>(kTargets));

  // First and last device sectors land at the last and first file sectors.
  {
    UniqueFd fd(open(path->c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    auto first = Aligned(512, 'F'), last = Aligned(512, 'L');
    ASSERT_EQ(pwrite(fd.get(), first.get(), 512, 0), 512);
    ASSERT_EQ(pwrite(fd.get(), last.get(), 512, (kTargets - 1) * kSector), 512);
    ASSERT_EQ(fsync(fd.get()), 0);
  }
  EXPECT_EQ(ReadFileAt(file, (kTargets - 1) * kSector, 512), std::string(512, 'F'));
  EXPECT_EQ(ReadFileAt(file, 0, 512), std::string(512, 'L'));
}

TEST_F(DeviceMapperTest, ListHasOurDevicesWithTheirInfo) {
  std::string a = Name("-a"), b = Name("-b");
  ASSERT_OK(dm_.Create(a, OneZeroTarget(), {.uuid = "IMAGED-list-a"}));
  ASSERT_OK(dm_.Create(b, OneZeroTarget(16)));
  auto list = dm_.List();
  ASSERT_OK(list);
  auto find = [&](const std::string& n) {
    return std::find_if(list->begin(), list->end(),
                        [&](const DeviceInfo& d) { return d.name == n; });
  };
  ASSERT_NE(find(a), list->end());
  ASSERT_NE(find(b), list->end());
  EXPECT_EQ(find(a)->uuid, "IMAGED-list-a");
  EXPECT_TRUE(find(b)->active);
}

// AOSP caps listing at 256 devices; this must not.
TEST_F(DeviceMapperTest, ListIsNotCappedAt256) {
  constexpr int kDevices = 300;
  for (int i = 0; i < kDevices; ++i) {
    ASSERT_OK(dm_.Create(Name("-" + std::to_string(i)), OneZeroTarget(), {.timeout = {}}));
  }
  auto list = dm_.List();
  ASSERT_OK(list);
  int ours = 0;
  for (const auto& d : *list) {
    if (d.name.rfind("imaged-test-ListIsNotCappedAt256-", 0) == 0) ++ours;
  }
  EXPECT_EQ(ours, kDevices);
}

// AOSP GetNameAndUuid / GetDmDeviceNameByPath: from a device number back to name and uuid.
TEST_F(DeviceMapperTest, InfoByDevFindsNameAndUuid) {
  std::string name = Name();
  auto path = dm_.Create(name, OneZeroTarget(), {.uuid = "IMAGED-by-dev"});
  ASSERT_OK(path);
  struct stat st {};
  ASSERT_EQ(stat(path->c_str(), &st), 0);
  auto info = dm_.InfoByDev(st.st_rdev);
  ASSERT_OK(info);
  ASSERT_TRUE(info->has_value());
  EXPECT_EQ((*info)->name, name);
  EXPECT_EQ((*info)->uuid, "IMAGED-by-dev");
  EXPECT_EQ((*info)->dev, st.st_rdev);
}

// AOSP IsDmBlockDevice: a loop is not a dm device.
TEST_F(DeviceMapperTest, InfoByDevOfANonDmDeviceIsEmpty) {
  LoopDevice loop = MakeLoop(4096);
  auto info = dm_.InfoByDev(loop.dev());
  ASSERT_OK(info);
  EXPECT_FALSE(info->has_value());
}

// AOSP GetParentBlockDeviceByPath: the dm device's parent is the loop.
TEST_F(DeviceMapperTest, UnderlyingDevicesAreTheLoops) {
  LoopDevice loop = MakeLoop(64 * 1024);
  Table table;
  table.Emplace<LinearTarget>(0, 64, loop.path(), 0);
  std::string name = Name();
  ASSERT_OK(dm_.Create(name, table));
  auto parents = dm_.GetUnderlyingDevices(name);
  ASSERT_OK(parents);
  EXPECT_EQ(*parents, std::vector<std::string>{loop.path().substr(5)});  // "loopN"
  std::string zero = Name("-zero");
  ASSERT_OK(dm_.Create(zero, OneZeroTarget()));
  auto none = dm_.GetUnderlyingDevices(zero);
  ASSERT_OK(none);
  EXPECT_TRUE(none->empty());
}

// A loop under a dm table stays busy: the dm device holds it after the LoopDevice let go
// (autoclear), and removing the dm device releases the loop.
TEST_F(DeviceMapperTest, AutoclearLoopLivesAsLongAsTheDmDevice) {
  std::string file = (tmp_.path() / "autoclear").string();
  {
    UniqueFd fd(open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    ASSERT_EQ(ftruncate(fd.get(), 64 * 1024), 0);
  }
  auto loop = LoopDevice::Attach(file, {.allow_buffered = true, .autoclear = true});
  ASSERT_OK(loop);
  Table table;
  table.Emplace<LinearTarget>(0, 128, loop->path(), 0);
  std::string name = Name();
  ASSERT_OK(dm_.Create(name, table));
  std::string loop_path = loop->release();
  auto still = LoopDevice::FindByBackingFile(file);
  ASSERT_OK(still);
  EXPECT_EQ(*still, std::vector<std::string>{loop_path});
  ASSERT_OK(dm_.Remove(name));
  auto gone = LoopDevice::FindByBackingFile(file);
  ASSERT_OK(gone);
  if (!gone->empty()) (void)LoopDevice::DetachPath(loop_path);
  EXPECT_TRUE(gone->empty());
}

}  // namespace
}  // namespace imaged::dm
