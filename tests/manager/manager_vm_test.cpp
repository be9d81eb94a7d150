// ImageManager with device-mapper (guest kernel only: tests/vm/run). The data filesystem sits on
// a dm-linear passthrough (or dm-crypt) over a loop device, as on a production disk, so kAuto
// maps images with dm-linear straight over the disk; split images are joined by dm over loops.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "dir.h"
#include "fiemap_at.h"
#include "../vm/vm_env.h"
#include "fiemap/split_file.h"
#include "image_set.h"
#include "live_writer.h"
#include "metadata/status_file.h"

namespace imaged::test {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// loop over a sparse file -> one dm device (`table`, %DEV% = the loop) -> ext4, mounted.
class DmBackedSet {
 public:
  DmBackedSet(const std::string& table_template, uint64_t size = 96 * kMiB) {
    backing_ = (dir_.path() / "disk.img").string();
    mnt_ = (dir_.path() / "mnt").string();
    std::filesystem::create_directory(mnt_);
    { std::ofstream(backing_).close(); }
    std::filesystem::resize_file(backing_, size);
    auto lo = RunCommand({"losetup", "-f", "--show", backing_});
    if (lo.exit_code != 0) throw std::runtime_error("losetup: " + lo.err);
    loop_ = lo.out.substr(0, lo.out.find('\n'));
    std::string table = table_template;
    for (auto at = table.find("%DEV%"); at != std::string::npos; at = table.find("%DEV%")) {
      table.replace(at, 5, loop_);
    }
    for (auto at = table.find("%SECTORS%"); at != std::string::npos; at = table.find("%SECTORS%")) {
      table.replace(at, 9, std::to_string(size / 512 - 4096));
    }
    lower_ = "imaged-test-" + std::to_string(getpid()) + "-lower";
    auto dm = RunCommand({"dmsetup", "create", lower_, "--table", table});
    if (dm.exit_code != 0) {
      lower_.clear();
      throw std::runtime_error("dmsetup create: " + dm.err);
    }
    const std::string dev = "/dev/mapper/" + lower_;
    auto mk = RunCommand({"mkfs.ext4", "-q", "-F", dev});
    if (mk.exit_code != 0) throw std::runtime_error("mkfs: " + mk.err);
    if (mount(dev.c_str(), mnt_.c_str(), "ext4", 0, nullptr) != 0) {
      throw std::runtime_error(std::string("mount: ") + strerror(errno));
    }
    mounted_ = true;
    options_.data_dir = mnt_ + "/data";
    options_.metadata_dir = (dir_.path() / "meta").string();
    options_.dm_prefix = TestDmPrefix();
    auto m = ImageManager::Open(options_);
    if (!m) throw std::runtime_error(m.error().ToString());
    mgr_ = std::move(*m);
  }
  ~DmBackedSet() {
    mgr_.reset();
    ForceCleanup(options_.dm_prefix, options_.data_dir);
    if (mounted_ && umount2(mnt_.c_str(), 0) != 0) umount2(mnt_.c_str(), MNT_DETACH);
    if (!lower_.empty()) RunCommand({"dmsetup", "remove", "--retry", lower_});
    if (!loop_.empty()) RunCommand({"losetup", "-d", loop_});
  }
  ImageManager& mgr() { return *mgr_; }
  void Reopen() { mgr_ = std::move(*ImageManager::Open(options_)); }
  const ManagerOptions& options() const { return options_; }
  std::string piece(const std::string& name) const {
    return options_.data_dir + "/" + name + ".img.0000";
  }
  std::string status(const std::string& name) const {
    return options_.metadata_dir + "/" + name + ".status";
  }

 private:
  TempDir dir_;
  std::string backing_, mnt_, loop_, lower_;
  bool mounted_ = false;
  ManagerOptions options_;
  std::unique_ptr<ImageManager> mgr_;
};

constexpr const char* kPassthrough = "0 %SECTORS% linear %DEV% 0";
// Offset passthrough: the fs starts 1 MiB into the disk, so extents must be shifted.
constexpr const char* kOffsetPassthrough = "0 %SECTORS% linear %DEV% 2048";
constexpr const char* kCrypt =
    "0 %SECTORS% crypt aes-xts-plain64 "
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f 0 %DEV% 0";

class VmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_REQUIRE_DEVICE_MAPPER();
    IMAGED_SKIP_UNLESS_FS("ext4");
  }
};

void ExpectDeviceAndFileAgree(DmBackedSet& set, const std::string& expected_prefix) {
  ASSERT_OK(set.mgr().Create("img", 8 * kMiB, {}));
  auto path = set.mgr().Map("img");
  ASSERT_OK(path);
  EXPECT_EQ(path->rfind(expected_prefix, 0), 0u) << *path;
  EXPECT_EQ(BlockDeviceSize(*path), 8 * kMiB);
  // Device -> file.
  const auto data = Pattern<Bytes>(kMiB, 21);
  ASSERT_TRUE(DirectWrite(*path, data, 3 * kMiB));
  EXPECT_EQ(DirectRead(set.piece("img"), data.size(), 3 * kMiB), data);
  // File -> device.
  const auto more = Pattern<Bytes>(64 * 1024, 22);
  ASSERT_TRUE(DirectWrite(set.piece("img"), more, 0));
  EXPECT_EQ(DirectRead(*path, more.size(), 0), more);
  ASSERT_OK(set.mgr().Unmap("img"));
  EXPECT_FALSE(set.mgr().GetMappedDevice("img")->has_value());
  ASSERT_OK(set.mgr().Delete("img"));
}

TEST_F(VmTest, DmLinearOverAPassthroughSharesTheFilesBlocks) {
  DmBackedSet set(kPassthrough);
  ExpectDeviceAndFileAgree(set, "/dev/mapper/" + set.options().dm_prefix);
}

TEST_F(VmTest, DmLinearOverAnOffsetPassthroughShiftsExtents) {
  DmBackedSet set(kOffsetPassthrough);
  ExpectDeviceAndFileAgree(set, "/dev/mapper/" + set.options().dm_prefix);
}

// Under dm-crypt the disk holds ciphertext: kAuto keeps the image inside the encryption (loop),
// so the device and the file agree.
TEST_F(VmTest, OnDmCryptAutoMapsWithALoopDevice) {
  DmBackedSet set(kCrypt);
  ExpectDeviceAndFileAgree(set, "/dev/loop");
}

TEST_F(VmTest, IndirectMount) {
  DmBackedSet set(kPassthrough);
  ASSERT_OK(set.mgr().Create("fs-image", 16 * kMiB, {}));
  auto path = set.mgr().Map("fs-image");
  ASSERT_OK(path);
  EXPECT_EQ(path->rfind("/dev/mapper/", 0), 0u);
  ASSERT_EQ(RunCommand({"mkfs.ext4", "-q", "-F", *path}).exit_code, 0);
  TempDir mnt;
  ASSERT_EQ(mount(path->c_str(), mnt.path().c_str(), "ext4", 0, nullptr), 0) << strerror(errno);
  { std::ofstream(mnt.path() / "hello") << "indirect"; }
  ASSERT_EQ(umount2(mnt.path().c_str(), 0), 0);
  ASSERT_OK(set.mgr().Unmap("fs-image"));
  auto all = set.mgr().MapAll();
  ASSERT_OK(all);
  EXPECT_EQ(*all, std::vector<std::string>{"fs-image"});
  auto again = set.mgr().GetMappedDevice("fs-image");
  ASSERT_OK(again);
  ASSERT_TRUE(again->has_value());
  ASSERT_EQ(mount((*again)->c_str(), mnt.path().c_str(), "ext4", MS_RDONLY, nullptr), 0);
  std::string text;
  std::getline(std::ifstream(mnt.path() / "hello"), text);
  EXPECT_EQ(text, "indirect");
  umount2(mnt.path().c_str(), 0);
  ASSERT_OK(set.mgr().Unmap("fs-image"));
}

// Online grow of a dm-linear image straight over the disk: the grown table is swapped in under
// the writer (suspend, resume); same node and dev_t, the writer's data and the new space hold.
TEST_F(VmTest, DmLinearImageGrowsWhileItIsWritten) {
  DmBackedSet set(kPassthrough);
  ASSERT_OK(set.mgr().Create("img", 4 * kMiB, {}));
  auto path = set.mgr().Map("img");
  ASSERT_OK(path);
  ASSERT_EQ(path->rfind("/dev/mapper/", 0), 0u) << *path;
  struct stat before {};
  ASSERT_EQ(stat(path->c_str(), &before), 0);
  LiveWriter writer(*path, 4 * kMiB);
  ASSERT_EQ(writer.open_errno(), 0) << strerror(writer.open_errno());
  ASSERT_OK(set.mgr().Resize("img", 12 * kMiB));
  EXPECT_EQ(OpenDeviceSize(writer.fd()), 12 * kMiB);
  writer.Stop();
  EXPECT_EQ(writer.failed_writes(), 0u);
  struct stat after {};
  ASSERT_EQ(stat(path->c_str(), &after), 0);
  EXPECT_EQ(after.st_rdev, before.st_rdev);
  EXPECT_TRUE(LiveWriter::Holds(*path, 4 * kMiB));
  const auto tail = Pattern<Bytes>(8 * kMiB, 24);
  ASSERT_TRUE(DirectWrite(*path, tail, 4 * kMiB));
  // The new blocks are the file's: device -> file.
  EXPECT_EQ(DirectRead(set.piece("img"), tail.size(), 4 * kMiB), tail);
  ASSERT_OK(set.mgr().Unmap("img"));
  ASSERT_OK(set.mgr().Delete("img"));
}

TEST_F(VmTest, ReadonlyImageGetsAReadOnlyTable) {
  DmBackedSet set(kPassthrough);
  CreateOptions ro;
  ro.readonly = true;
  ASSERT_OK(set.mgr().Create("ro", kMiB, ro));
  auto path = set.mgr().Map("ro");
  ASSERT_OK(path);
  EXPECT_FALSE(DirectWrite(*path, Pattern<Bytes>(4096, 23), 0));
  ASSERT_OK(set.mgr().Unmap("ro"));
}

// imaged-init maps images at boot with no status file; the daemon then adopts them.
TEST_F(VmTest, RecoverAdoptsADeviceMappedWithoutAStatusFile) {
  DmBackedSet set(kPassthrough);
  ASSERT_OK(set.mgr().Create("boot", 2 * kMiB, {}));
  auto path = set.mgr().Map("boot");
  ASSERT_OK(path);
  ASSERT_EQ(unlink(set.status("boot").c_str()), 0);
  EXPECT_TRUE(set.mgr().GetMappedDevice("boot")->has_value());
  EXPECT_ERRNO(set.mgr().Delete("boot"), EBUSY);
  set.Reopen();
  auto report = set.mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(report->adopted, std::vector<std::string>{"boot"});
  auto entries = metadata::ReadStatusFile(imaged::test::OpenDir(set.options().metadata_dir), "boot.status");
  ASSERT_OK(entries);
  ASSERT_EQ(entries->size(), 1u);
  EXPECT_EQ((*entries)[0].value, set.options().dm_prefix + "boot");
  ASSERT_OK(set.mgr().Unmap("boot"));
  EXPECT_FALSE(std::filesystem::exists("/dev/mapper/" + set.options().dm_prefix + "boot"));
}

TEST_F(VmTest, RecoverTearsDownADeviceOfOurNameThatMapsSomethingElse) {
  DmBackedSet set(kPassthrough);
  ASSERT_OK(set.mgr().Create("img", kMiB, {}));
  const std::string name = set.options().dm_prefix + "img";
  ASSERT_EQ(RunCommand({"dmsetup", "create", name, "--table", "0 2048 zero"}).exit_code, 0);
  auto report = set.mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(report->torn_down, std::vector<std::string>{"img"});
  EXPECT_TRUE(report->adopted.empty());
  EXPECT_FALSE(set.mgr().GetMappedDevice("img")->has_value());
}

TEST_F(VmTest, RecoverTearsDownAHalfMadeSplitMapping) {
  IMAGED_SKIP_UNLESS_FS("ext4");
  ManagerOptions o;
  o.strategy = MapStrategy::kLoop;
  o.max_piece_size = kMiB;
  ImageSet set("ext4", 64 * kMiB, o);
  ASSERT_OK(set.mgr().Create("split", 3 * kMiB, {}));
  // SIGKILL after two of three loops were attached and recorded, before the dm device.
  std::vector<metadata::StatusEntry> entries;
  for (int i = 0; i < 2; ++i) {
    dm::LoopOptions lo;
    auto loop = dm::LoopDevice::Attach(set.data("split.img.000" + std::to_string(i)), lo);
    ASSERT_OK(loop);
    entries.push_back({metadata::StatusEntry::Kind::Loop, loop->release()});
  }
  ASSERT_OK(metadata::WriteStatusFile(imaged::test::OpenDir(set.options().metadata_dir),
                                      "split.status", entries));
  auto report = set.mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(report->torn_down, std::vector<std::string>{"split"});
  for (const auto& e : entries) EXPECT_FALSE(dm::LoopDevice::BackingFile(e.value).has_value());
  EXPECT_FALSE(std::filesystem::exists(set.meta("split.status")));
}

TEST_F(VmTest, SplitImageIsLoopsJoinedByDmOfExactlyTheImageSize) {
  ManagerOptions o;
  o.strategy = MapStrategy::kLoop;
  o.max_piece_size = kMiB;
  ImageSet set("ext4", 64 * kMiB, o);
  const uint64_t size = 3 * kMiB + 4096 + 1024;
  ASSERT_OK(set.mgr().Create("split", size, {}));
  EXPECT_EQ(set.mgr().Info("split")->pieces, 4u);
  auto path = set.mgr().Map("split");
  ASSERT_OK(path);
  EXPECT_EQ(*path, "/dev/mapper/" + set.options().dm_prefix + "split");
  EXPECT_EQ(BlockDeviceSize(*path), size);
  const auto data = Pattern<Bytes>(2 * kMiB, 24);
  ASSERT_TRUE(DirectWrite(*path, data, kMiB / 2));  // crosses two piece boundaries
  // A restarted daemon adopts the whole stack.
  set.Reopen();
  auto report = set.mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(report->adopted, std::vector<std::string>{"split"});
  ASSERT_OK(set.mgr().Unmap("split"));
  auto split = test::OpenSplitAt(set.data("split.img"));
  ASSERT_OK(split);
  std::vector<uint8_t> back(data.size());
  ASSERT_OK(split->PRead(back.data(), back.size(), kMiB / 2));
  EXPECT_EQ(back, data);
  auto loops = dm::LoopDevice::FindByBackingFile(set.data("split.img.0001"));
  ASSERT_OK(loops);
  EXPECT_TRUE(loops->empty());
}

}  // namespace
}  // namespace imaged::test
