// ImageManager on this host's kernel: loop strategy over real filesystems made with mkfs on loop
// devices. Split images need device-mapper to be joined, so mapping them is in the vm suite.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "dir.h"
#include "fiemap_at.h"
#include "fiemap/split_file.h"
#include "fsprobe/fs_probe.h"
#include "image_set.h"
#include "imageset/names.h"
#include "live_writer.h"
#include "metadata/lp_metadata.h"
#include "metadata/status_file.h"
#ifdef IMAGED_FS_TESTS_IN_VM
#include "../vm/vm_env.h"
// ctest names must differ from the host build of this file, or one label overwrites the other.
#define ManagerTest InVmManagerTest
#define FilesystemTest InVmFilesystemTest
#define ManagerTwoMiBPiecesTest InVmManagerTwoMiBPiecesTest
#define ManagerLargeSetTest InVmManagerLargeSetTest
#define VfatTest InVmVfatTest
#endif

namespace imaged::test {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// The node alone proves nothing: libdevmapper creates it on a kernel without the driver.
bool HaveDeviceMapper() {
  UniqueFd control(open("/dev/mapper/control", O_RDWR | O_CLOEXEC));
  return control.valid();
}

class ManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
#ifdef IMAGED_FS_TESTS_IN_VM
    IMAGED_REQUIRE_DEVICE_MAPPER();
#endif
    IMAGED_SKIP_UNLESS_FS("ext4");
    set_ = std::make_unique<ImageSet>("ext4", SetBytes(), Options());
  }
  virtual uint64_t SetBytes() { return 64 * kMiB; }
  virtual ManagerOptions Options() {
    ManagerOptions o;
    o.strategy = MapStrategy::kLoop;
    return o;
  }
  ImageManager& mgr() {
    return set_->mgr();
  }
  std::string Piece(const std::string& name, int i = 0) {
    return set_->data(name + ".img." + fmt::format("{:04d}", i));
  }
  std::vector<std::string> DataFiles() {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(set_->options().data_dir)) {
      out.push_back(e.path().filename().string());
    }
    std::sort(out.begin(), out.end());
    return out;
  }
  std::unique_ptr<ImageSet> set_;
};

// ---- AOSP image_test ports ----

TEST_F(ManagerTest, CreateAndMap) {
  ASSERT_OK(mgr().Create("test-image", kMiB, {}));
  auto path = mgr().Map("test-image", std::chrono::seconds(5));
  ASSERT_OK(path);
  EXPECT_TRUE(mgr().GetMappedDevice("test-image")->has_value());
  EXPECT_EQ(BlockDeviceSize(*path), kMiB);
  ASSERT_OK(mgr().Unmap("test-image"));
  EXPECT_FALSE(mgr().GetMappedDevice("test-image")->has_value());
  EXPECT_FALSE(std::filesystem::exists(set_->meta("test-image.status")));
}

TEST_F(ManagerTest, GetMappedImageDevice) {
  ASSERT_OK(mgr().Create("test-image", kMiB, {}));
  auto path = mgr().Map("test-image");
  ASSERT_OK(path);
  auto device = mgr().GetMappedDevice("test-image");
  ASSERT_OK(device);
  ASSERT_TRUE(device->has_value());
  EXPECT_EQ(**device, *path);
  ASSERT_OK(mgr().Unmap("test-image"));
  EXPECT_FALSE(mgr().GetMappedDevice("test-image")->has_value());
}

TEST_F(ManagerTest, DisableImage) {
  ASSERT_OK(mgr().Create("test-image", kMiB, {}));
  EXPECT_TRUE(*mgr().Exists("test-image"));
  ASSERT_OK(mgr().Disable("test-image"));
  auto info = mgr().Info("test-image");
  ASSERT_OK(info);
  EXPECT_TRUE(info->disabled);
  auto removed = mgr().RemoveDisabled();
  ASSERT_OK(removed);
  EXPECT_EQ(*removed, std::vector<std::string>{"test-image"});
  EXPECT_FALSE(*mgr().Exists("test-image"));
  EXPECT_FALSE(std::filesystem::exists(set_->data("test-image.img")));
}

TEST_F(ManagerTest, DirectMount) {
  ASSERT_OK(mgr().Create("fs-image", 16 * kMiB, {}));
  auto path = mgr().Map("fs-image");
  ASSERT_OK(path);
  ASSERT_EQ(RunCommand({"mkfs.ext4", "-q", "-F", *path}).exit_code, 0);
  TempDir mnt;
  ASSERT_EQ(mount(path->c_str(), mnt.path().c_str(), "ext4", 0, nullptr), 0) << strerror(errno);
  { std::ofstream(mnt.path() / "hello") << "inside an image"; }
  ASSERT_EQ(umount2(mnt.path().c_str(), 0), 0);
  ASSERT_OK(mgr().Unmap("fs-image"));

  path = mgr().Map("fs-image");
  ASSERT_OK(path);
  ASSERT_EQ(mount(path->c_str(), mnt.path().c_str(), "ext4", MS_RDONLY, nullptr), 0);
  std::string text;
  std::getline(std::ifstream(mnt.path() / "hello"), text);
  EXPECT_EQ(text, "inside an image");
  umount2(mnt.path().c_str(), 0);
  ASSERT_OK(mgr().Unmap("fs-image"));
}

// ---- lifecycle ----

TEST_F(ManagerTest, ListAndInfoDescribeImages) {
  CreateOptions ro;
  ro.readonly = true;
  ASSERT_OK(mgr().Create("a", kMiB, {}));
  ASSERT_OK(mgr().Create("b", 2 * kMiB, ro));
  auto list = mgr().List();
  ASSERT_OK(list);
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "a");
  EXPECT_EQ((*list)[0].size_bytes, kMiB);
  EXPECT_EQ((*list)[0].pieces, 1u);
  EXPECT_GE((*list)[0].extents, 1u);
  EXPECT_FALSE((*list)[0].readonly);
  EXPECT_FALSE((*list)[0].mapped_device.has_value());
  EXPECT_EQ((*list)[1].name, "b");
  EXPECT_TRUE((*list)[1].readonly);
  EXPECT_ERRNO(mgr().Info("missing"), ENOENT);
}

TEST_F(ManagerTest, DataWrittenThroughDeviceIsInTheFile) {
  ASSERT_OK(mgr().Create("img", 4 * kMiB, {}));
  auto path = mgr().Map("img");
  ASSERT_OK(path);
  const auto data = Pattern<Bytes>(64 * 1024, 1);
  ASSERT_TRUE(DirectWrite(*path, data, kMiB + 8192));
  ASSERT_OK(mgr().Unmap("img"));
  EXPECT_EQ(DirectRead(Piece("img"), data.size(), kMiB + 8192), data);
}

TEST_F(ManagerTest, DataWrittenToTheFileIsSeenThroughDevice) {
  ASSERT_OK(mgr().Create("img", 4 * kMiB, {}));
  const auto data = Pattern<Bytes>(8192, 2);
  ASSERT_TRUE(DirectWrite(Piece("img"), data, 4096));
  auto path = mgr().Map("img");
  ASSERT_OK(path);
  EXPECT_EQ(DirectRead(*path, data.size(), 4096), data);
  ASSERT_OK(mgr().Unmap("img"));
}

TEST_F(ManagerTest, DeviceIsExactlyTheRequestedSizeNotTheBlockRoundedFileSize) {
  const uint64_t size = kMiB + 3 * 512;  // ext4 rounds the file up to 4 KiB
  ASSERT_OK(mgr().Create("odd", size, {}));
  auto path = mgr().Map("odd");
  ASSERT_OK(path);
  EXPECT_EQ(BlockDeviceSize(*path), size);
  ASSERT_OK(mgr().Unmap("odd"));
}

TEST_F(ManagerTest, ReadonlyImageMapsReadOnly) {
  CreateOptions ro;
  ro.readonly = true;
  ASSERT_OK(mgr().Create("ro", kMiB, ro));
  auto path = mgr().Map("ro");
  ASSERT_OK(path);
  EXPECT_FALSE(DirectWrite(*path, Pattern<Bytes>(4096, 9), 0));
  ASSERT_OK(mgr().Unmap("ro"));
}

TEST_F(ManagerTest, DeleteRemovesFilesEntryAndLock) {
  ASSERT_OK(mgr().Create("gone", kMiB, {}));
  ASSERT_OK(mgr().Delete("gone"));
  EXPECT_FALSE(*mgr().Exists("gone"));
  EXPECT_TRUE(DataFiles().empty());
  EXPECT_FALSE(std::filesystem::exists(set_->meta("gone.lock")));
  EXPECT_ERRNO(mgr().Delete("gone"), ENOENT);
}

TEST_F(ManagerTest, LpMetadataRecordsTheDiskAndExtentsInSectors) {
  ASSERT_OK(mgr().Create("img", 2 * kMiB, {}));
  auto md = metadata::ReadImageFile(imaged::test::OpenDir(set_->meta("")), "lp_metadata");
  ASSERT_OK(md);
  ASSERT_EQ(md->block_devices.size(), 1u);
  EXPECT_EQ("/dev/" + md->block_devices[0].partition_name, set_->fs().loop_device());
  const auto* p = metadata::FindPartition(*md, "img");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(metadata::PartitionSizeBytes(*md, *p), 2 * kMiB);
  // Sector N of the first extent on the disk holds the image's first bytes.
  const auto extents = metadata::PartitionExtents(*md, *p);
  const auto data = Pattern<Bytes>(4096, 3);
  ASSERT_TRUE(DirectWrite(Piece("img"), data, 0));
  EXPECT_EQ(DirectRead(set_->fs().loop_device(), 4096, extents[0].target_data * 512), data);
}

TEST_F(ManagerTest, ZeroFillZeroesTheImage) {
  ASSERT_OK(mgr().Create("img", 2 * kMiB, {}));
  const auto data = Pattern<Bytes>(2 * kMiB, 4);
  ASSERT_TRUE(DirectWrite(Piece("img"), data, 0));
  uint64_t last = 0;
  ASSERT_OK(mgr().ZeroFill("img", kMiB, [&](uint64_t done, uint64_t) {
    last = done;
    return true;
  }));
  EXPECT_EQ(last, kMiB);
  EXPECT_EQ(DirectRead(Piece("img"), kMiB, 0), std::vector<uint8_t>(kMiB, 0));
  // Beyond the requested bytes the data is untouched.
  EXPECT_EQ(DirectRead(Piece("img"), kMiB, kMiB),
            std::vector<uint8_t>(data.begin() + kMiB, data.end()));
}

TEST_F(ManagerTest, ZeroFillOfMappedImageWritesThroughItsDevice) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  auto path = mgr().Map("img");
  ASSERT_OK(path);
  ASSERT_TRUE(DirectWrite(*path, Pattern<Bytes>(kMiB, 5), 0));
  ASSERT_OK(mgr().ZeroFill("img", 0));
  EXPECT_EQ(DirectRead(*path, kMiB, 0), std::vector<uint8_t>(kMiB, 0));
  ASSERT_OK(mgr().Unmap("img"));
}

TEST_F(ManagerTest, MapAllMapsEnabledUnmappedImages) {
  ASSERT_OK(mgr().Create("one", kMiB, {}));
  ASSERT_OK(mgr().Create("two", kMiB, {}));
  ASSERT_OK(mgr().Create("off", kMiB, {}));
  ASSERT_OK(mgr().Disable("off"));
  ASSERT_OK(mgr().Map("one"));
  auto mapped = mgr().MapAll();
  ASSERT_OK(mapped);
  EXPECT_EQ(*mapped, std::vector<std::string>{"two"});
  EXPECT_TRUE(mgr().GetMappedDevice("two")->has_value());
  EXPECT_FALSE(mgr().GetMappedDevice("off")->has_value());
  ASSERT_OK(mgr().Unmap("one"));
  ASSERT_OK(mgr().Unmap("two"));
}

TEST_F(ManagerTest, ResizeGrowsAnUnmappedImageKeepingItsData) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  const auto data = Pattern<Bytes>(kMiB, 6);
  ASSERT_TRUE(DirectWrite(Piece("img"), data, 0));
  ASSERT_OK(mgr().Resize("img", 3 * kMiB));
  auto info = mgr().Info("img");
  ASSERT_OK(info);
  EXPECT_EQ(info->size_bytes, 3 * kMiB);
  auto validation = mgr().Validate();
  ASSERT_OK(validation);
  ASSERT_EQ(validation->size(), 1u);
  EXPECT_TRUE((*validation)[0].ok) << (*validation)[0].problem;
  auto split = test::OpenSplitAt(set_->data("img.img"));
  ASSERT_OK(split);
  std::vector<uint8_t> back(kMiB);
  ASSERT_OK(split->PRead(back.data(), back.size(), 0));
  EXPECT_EQ(back, data);
  std::vector<uint8_t> grown(2 * kMiB);
  ASSERT_OK(split->PRead(grown.data(), grown.size(), kMiB));
  EXPECT_EQ(grown, std::vector<uint8_t>(2 * kMiB, 0));
  if (info->pieces == 1 || HaveDeviceMapper()) {
    auto path = mgr().Map("img");
    ASSERT_OK(path);
    EXPECT_EQ(BlockDeviceSize(*path), 3 * kMiB);
    EXPECT_EQ(DirectRead(*path, kMiB, 0), data);
    ASSERT_OK(mgr().Unmap("img"));
  }
}

// A discard through a loop over a file becomes a hole punched in that file: blocks lp_metadata
// still names would be freed for other files. Map turns discard off on its loops.
TEST_F(ManagerTest, DiscardThroughTheLoopIsRefused) {
  ASSERT_OK(mgr().Create("img", 4 * kMiB, {}));
  auto path = mgr().Map("img");
  ASSERT_OK(path);
  int fd = open(path->c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  uint64_t range[2] = {kMiB, kMiB};
  int rc = ioctl(fd, BLKDISCARD, range);
  close(fd);
  EXPECT_NE(rc, 0);
  ASSERT_OK(mgr().Unmap("img"));
  auto validation = mgr().Validate();
  ASSERT_OK(validation);
  EXPECT_TRUE((*validation)[0].ok) << (*validation)[0].problem;
}

// Write-zeroes through a loop cannot be turned off and may punch or unwrite ranges of the piece
// (done here directly on the piece, as the loop driver does). Unmap gives the piece written
// blocks again and records them, so the image maps again.
TEST_F(ManagerTest, UnmapRestoresBlocksPunchedWhileMapped) {
  ASSERT_OK(mgr().Create("img", 4 * kMiB, {}));
  auto path = mgr().Map("img");
  ASSERT_OK(path);
  const auto data = Pattern<Bytes>(4096, 10);
  ASSERT_TRUE(DirectWrite(*path, data, 0));
  {
    int fd = open(Piece("img").c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kMiB, kMiB), 0);
    ASSERT_EQ(fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 3 * kMiB, kMiB), 0);
    close(fd);
  }
  ASSERT_OK(mgr().Unmap("img"));
  auto validation = mgr().Validate();
  ASSERT_OK(validation);
  EXPECT_TRUE((*validation)[0].ok) << (*validation)[0].problem;
  path = mgr().Map("img");
  ASSERT_OK(path);
  EXPECT_EQ(DirectRead(*path, 4096, 0), data);
  EXPECT_EQ(DirectRead(*path, 3 * kMiB, kMiB), std::vector<uint8_t>(3 * kMiB, 0));
  ASSERT_OK(mgr().Unmap("img"));
}

// ---- refusals ----

TEST_F(ManagerTest, CreateRefusesAnExistingImageAndKeepsItsData) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  const auto data = Pattern<Bytes>(4096, 7);
  ASSERT_TRUE(DirectWrite(Piece("img"), data, 0));
  EXPECT_ERRNO(mgr().Create("img", 2 * kMiB, {}), EEXIST);
  EXPECT_EQ(DirectRead(Piece("img"), 4096, 0), data);
  EXPECT_EQ(mgr().Info("img")->size_bytes, kMiB);
}

TEST_F(ManagerTest, CreateRefusesAMappedImage) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  ASSERT_OK(mgr().Map("img"));
  EXPECT_ERRNO(mgr().Create("img", kMiB, {}), EEXIST);
  ASSERT_OK(mgr().Unmap("img"));
}

TEST_F(ManagerTest, CreateRefusesBadNames) {
  for (std::string bad : {std::string("../x"), std::string("a/b"), std::string(""),
                          std::string(36, 'n'), std::string(".hidden"), std::string("a\0b", 3),
                          std::string("sp ace"), std::string("..")}) {
    EXPECT_ERRNO(mgr().Create(bad, kMiB, {}), EINVAL);
  }
  EXPECT_TRUE(DataFiles().empty());
  ASSERT_OK(mgr().Create(std::string(35, 'n'), kMiB, {}));
  ASSERT_OK(mgr().Create("A-z_0.9", kMiB, {}));
}

TEST_F(ManagerTest, CreateRefusesBadSizes) {
  EXPECT_ERRNO(mgr().Create("img", 0, {}), EINVAL);
  EXPECT_ERRNO(mgr().Create("img", kMiB + 1, {}), EINVAL);
  EXPECT_ERRNO(mgr().Create("img", 1000, {}), EINVAL);
  EXPECT_TRUE(DataFiles().empty());
  EXPECT_FALSE(*mgr().Exists("img"));
}

TEST_F(ManagerTest, CreateBeyondFreeSpaceIsEnospcAndLeavesNothing) {
  EXPECT_ERRNO(mgr().Create("huge", 1024 * kMiB, {}), ENOSPC);
  EXPECT_TRUE(DataFiles().empty());
  EXPECT_FALSE(*mgr().Exists("huge"));
}

TEST_F(ManagerTest, CancelledCreateIsEcanceledAndLeavesNothing) {
  CreateOptions o;
  o.progress = [](uint64_t done, uint64_t) { return done == 0; };
  EXPECT_ERRNO(mgr().Create("img", 16 * kMiB, o), ECANCELED);
  EXPECT_TRUE(DataFiles().empty());
  EXPECT_FALSE(*mgr().Exists("img"));
}

TEST_F(ManagerTest, DeleteRefusesAMappedImage) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  ASSERT_OK(mgr().Map("img"));
  EXPECT_ERRNO(mgr().Delete("img"), EBUSY);
  EXPECT_TRUE(*mgr().Exists("img"));
  ASSERT_OK(mgr().Unmap("img"));
  ASSERT_OK(mgr().Delete("img"));
}

TEST_F(ManagerTest, ResizeRefusesShrinking) {
  ASSERT_OK(mgr().Create("img", 2 * kMiB, {}));
  EXPECT_ERRNO(mgr().Resize("img", kMiB), EINVAL);
  EXPECT_EQ(mgr().Info("img")->size_bytes, 2 * kMiB);
}

// Online grow of a one-piece image on its loop: the piece grows in place, the loop's size limit
// follows, and the device its users hold open (same node, same dev_t) is bigger while a writer
// keeps writing; the written data and the new space are the image's.
TEST_F(ManagerTest, ResizeGrowsAMappedOnePieceImageWhileItIsWritten) {
  ASSERT_OK(mgr().Create("img", 2 * kMiB, {}));
  auto device = mgr().Map("img");
  ASSERT_OK(device);
  struct stat before {};
  ASSERT_EQ(stat(device->c_str(), &before), 0);
  LiveWriter writer(*device, 2 * kMiB);
  ASSERT_EQ(writer.open_errno(), 0) << strerror(writer.open_errno());
  ASSERT_OK(mgr().Resize("img", 6 * kMiB));
  EXPECT_EQ(OpenDeviceSize(writer.fd()), 6 * kMiB);
  writer.Stop();
  EXPECT_EQ(writer.failed_writes(), 0u);
  EXPECT_GT(writer.passes(), 0u);
  EXPECT_EQ(mgr().GetMappedDevice("img")->value_or(""), *device);
  struct stat after {};
  ASSERT_EQ(stat(device->c_str(), &after), 0);
  EXPECT_EQ(after.st_rdev, before.st_rdev);
  EXPECT_EQ(mgr().Info("img")->size_bytes, 6 * kMiB);
  EXPECT_TRUE(LiveWriter::Holds(*device, 2 * kMiB));
  const auto tail = Pattern<std::vector<uint8_t>>(4 * kMiB, 3);
  ASSERT_TRUE(DirectWrite(*device, tail, 2 * kMiB));
  ASSERT_OK(mgr().Unmap("img"));
  // What the device showed is what the files hold.
  auto split = test::OpenSplitAt(set_->data("img.img"));
  ASSERT_OK(split);
  std::vector<uint8_t> back(4 * kMiB);
  ASSERT_OK(split->PRead(back.data(), back.size(), 2 * kMiB));
  EXPECT_EQ(back, tail);
  EXPECT_FALSE(std::filesystem::exists(set_->meta("img.intent")));
}

// The same under a mounted filesystem (the loop's page cache is in use while its size changes).
TEST_F(ManagerTest, ResizeGrowsAMappedImageUnderAMountedFilesystem) {
  ASSERT_OK(mgr().Create("img", 16 * kMiB, {}));
  auto device = mgr().Map("img");
  ASSERT_OK(device);
  ASSERT_EQ(RunCommand({"mkfs.ext4", "-q", "-F", *device}).exit_code, 0);
  TempDir mnt;
  ASSERT_EQ(mount(device->c_str(), mnt.path().c_str(), "ext4", 0, nullptr), 0) << strerror(errno);
  { std::ofstream(mnt.path() / "hello") << "grown under me"; }
  auto grown = mgr().Resize("img", 24 * kMiB);
  std::string text;
  std::getline(std::ifstream(mnt.path() / "hello"), text);
  ASSERT_EQ(umount2(mnt.path().c_str(), 0), 0);
  ASSERT_OK(grown);
  EXPECT_EQ(text, "grown under me");
  EXPECT_EQ(BlockDeviceSize(*device), 24 * kMiB);
  EXPECT_EQ(RunCommand({"e2fsck", "-n", "-f", *device}).exit_code, 0);
  ASSERT_OK(mgr().Unmap("img"));
}

// The filesystem's own view of its size (its superblock).
uint64_t FilesystemSize(const std::string& device) {
  std::vector<uint8_t> head(fsprobe::kProbeBytes);
  UniqueFd fd(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd || pread(fd.get(), head.data(), head.size(), 0) != static_cast<ssize_t>(head.size())) {
    return 0;
  }
  auto found = fsprobe::Probe(head);
  return found ? found->size_bytes : 0;
}

// ext4 grows online only for CAP_SYS_RESOURCE (EXT4_IOC_RESIZE_FS), which some containers drop.
bool HaveSysResource() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> 24) & 1;
  }
  return false;
}

// resize --fs on a mounted ext4: resize2fs grows it online; the mounted filesystem sees it.
TEST_F(ManagerTest, ResizeWithFsGrowsAMountedExt4Online) {
  if (!HaveSysResource()) GTEST_SKIP() << "no CAP_SYS_RESOURCE here: ext4 cannot grow online";
  ASSERT_OK(mgr().Create("img", 16 * kMiB, {}));
  auto device = mgr().Map("img");
  ASSERT_OK(device);
  ASSERT_EQ(RunCommand({"mkfs.ext4", "-q", "-F", "-b", "4096", *device}).exit_code, 0);
  TempDir mnt;
  ASSERT_EQ(mount(device->c_str(), mnt.path().c_str(), "ext4", 0, nullptr), 0) << strerror(errno);
  ResizeOptions fs;
  fs.grow_filesystem = true;
  auto grown = mgr().Resize("img", 32 * kMiB, fs);
  struct statvfs after {};
  const int st = statvfs(mnt.path().c_str(), &after);
  ASSERT_EQ(umount2(mnt.path().c_str(), 0), 0);
  ASSERT_OK(grown);
  ASSERT_EQ(st, 0);
  EXPECT_GT(after.f_blocks * after.f_frsize, 24 * kMiB);
  EXPECT_EQ(FilesystemSize(*device), 32 * kMiB);
  EXPECT_EQ(RunCommand({"e2fsck", "-n", "-f", *device}).exit_code, 0);
  ASSERT_OK(mgr().Unmap("img"));
}

// Unmapped: through a temporary mapping, e2fsck -f first as resize2fs requires; unmapped after.
TEST_F(ManagerTest, ResizeWithFsGrowsTheExt4OfAnUnmappedImage) {
  ASSERT_OK(mgr().Create("img", 16 * kMiB, {}));
  auto device = mgr().Map("img");
  ASSERT_OK(device);
  ASSERT_EQ(RunCommand({"mkfs.ext4", "-q", "-F", "-b", "4096", *device}).exit_code, 0);
  ASSERT_OK(mgr().Unmap("img"));
  ResizeOptions fs;
  fs.grow_filesystem = true;
  ASSERT_OK(mgr().GrowBy("img", 8 * kMiB, fs));
  EXPECT_FALSE(mgr().GetMappedDevice("img")->has_value());
  EXPECT_EQ(mgr().Info("img")->size_bytes, 24 * kMiB);
  device = mgr().Map("img");
  ASSERT_OK(device);
  EXPECT_EQ(FilesystemSize(*device), 24 * kMiB);
  EXPECT_EQ(RunCommand({"e2fsck", "-n", "-f", *device}).exit_code, 0);
  ASSERT_OK(mgr().Unmap("img"));
}

// Nothing to grow: the image's grow stands, the error says the filesystem step failed, and a
// retry at the same size does only that step.
TEST_F(ManagerTest, ResizeWithFsOnAnImageWithoutAFilesystemSaysSo) {
  ASSERT_OK(mgr().Create("img", 4 * kMiB, {}));
  ResizeOptions fs;
  fs.grow_filesystem = true;
  auto grown = mgr().Resize("img", 8 * kMiB, fs);
  EXPECT_ERRNO(grown, EOPNOTSUPP);
  EXPECT_NE(grown.error().message.find("its filesystem did not"), std::string::npos)
      << grown.error().ToString();
  EXPECT_EQ(mgr().Info("img")->size_bytes, 8 * kMiB);
  EXPECT_FALSE(mgr().GetMappedDevice("img")->has_value());
  EXPECT_ERRNO(mgr().Resize("img", 8 * kMiB, fs), EOPNOTSUPP);
}

// mkfs.f2fs wants 64 MiB at least.
class ManagerLargeSetTest : public ManagerTest {
 protected:
  uint64_t SetBytes() override { return 192 * kMiB; }
};

// f2fs grows only unmounted (resize.f2fs); mounted, where the kernel has f2fs (the guest), it is
// refused. Named without "f2fs": the qemu stage runs tests so named on a kernel without ext4,
// which this fixture's data filesystem is.
TEST_F(ManagerLargeSetTest, ResizeWithFsGrowsAFlashFriendlyFsOnlyWhenUnmounted) {
  if (!HaveProgram("mkfs.f2fs") || !HaveProgram("resize.f2fs")) GTEST_SKIP() << "no f2fs-tools";
  ASSERT_OK(mgr().Create("img", 64 * kMiB, {}));
  auto device = mgr().Map("img");
  ASSERT_OK(device);
  ASSERT_EQ(RunCommand({"mkfs.f2fs", "-q", "-f", *device}).exit_code, 0);
  ResizeOptions fs;
  fs.grow_filesystem = true;
  TempDir mnt;
  if (mount(device->c_str(), mnt.path().c_str(), "f2fs", 0, nullptr) == 0) {
    auto refused = mgr().Resize("img", 80 * kMiB, fs);
    umount2(mnt.path().c_str(), 0);
    EXPECT_ERRNO(refused, EOPNOTSUPP);
    EXPECT_NE(refused.error().message.find("only while unmounted"), std::string::npos);
  }
  ASSERT_OK(mgr().Resize("img", 96 * kMiB, fs));
  EXPECT_EQ(FilesystemSize(*device), 96 * kMiB);
  ASSERT_OK(mgr().Unmap("img"));
}

// xfs grows only mounted (xfs_growfs on the mount point); unmounted it is refused, saying so.
TEST_F(ManagerLargeSetTest, ResizeWithFsGrowsAMountedXfs) {
  IMAGED_SKIP_UNLESS_FS("xfs");
  ASSERT_OK(mgr().Create("img", 64 * kMiB, {}));
  auto device = mgr().Map("img");
  ASSERT_OK(device);
  // Below mkfs.xfs's 300 MB floor for new filesystems only with fstests' override.
  ASSERT_EQ(RunCommand({"env", "TEST_DIR=1", "TEST_DEV=1", "QA_CHECK_FS=1", "mkfs.xfs", "-q", "-f",
                        *device})
                .exit_code,
            0);
  ResizeOptions fs;
  fs.grow_filesystem = true;
  auto refused = mgr().Resize("img", 72 * kMiB, fs);
  EXPECT_ERRNO(refused, EOPNOTSUPP);
  EXPECT_NE(refused.error().message.find("only while mounted"), std::string::npos);
  TempDir mnt;
  ASSERT_EQ(mount(device->c_str(), mnt.path().c_str(), "xfs", 0, nullptr), 0) << strerror(errno);
  auto grown = mgr().Resize("img", 96 * kMiB, fs);
  struct statvfs after {};
  const int st = statvfs(mnt.path().c_str(), &after);
  ASSERT_EQ(umount2(mnt.path().c_str(), 0), 0);
  ASSERT_OK(grown);
  ASSERT_EQ(st, 0);
  EXPECT_GT(after.f_blocks * after.f_frsize, 72 * kMiB);
  EXPECT_EQ(FilesystemSize(*device), 96 * kMiB);
  ASSERT_OK(mgr().Unmap("img"));
}

class ManagerTwoMiBPiecesTest : public ManagerTest {
 protected:
  ManagerOptions Options() override {
    ManagerOptions o = ManagerTest::Options();
    o.max_piece_size = 2 * kMiB;
    return o;
  }
};

// A mapped one-loop image cannot take a second piece: no new device could join it under the
// node its users hold. Refused before anything is allocated.
TEST_F(ManagerTwoMiBPiecesTest, ResizeOfAOneLoopMappingPastOnePieceIsRefused) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  auto device = mgr().Map("img");
  ASSERT_OK(device);
  const auto files = DataFiles();
  auto grown = mgr().Resize("img", 3 * kMiB);
  EXPECT_ERRNO(grown, EFBIG);
  EXPECT_NE(grown.error().message.find("one loop device"), std::string::npos)
      << grown.error().ToString();
  EXPECT_EQ(DataFiles(), files);
  EXPECT_EQ(mgr().Info("img")->size_bytes, kMiB);
  EXPECT_EQ(BlockDeviceSize(*device), kMiB);
  // Within the piece it still grows live.
  ASSERT_OK(mgr().Resize("img", 2 * kMiB));
  EXPECT_EQ(BlockDeviceSize(*device), 2 * kMiB);
  ASSERT_OK(mgr().Unmap("img"));
}

// Shrink: lp_metadata first, then the pieces cut (whole pieces removed, the last one cut); the
// bytes before the new size stay.
TEST_F(ManagerTwoMiBPiecesTest, ShrinkCutsPiecesAndKeepsTheHead) {
  ASSERT_OK(mgr().Create("img", 5 * kMiB, {}));
  const auto data = Pattern<std::vector<uint8_t>>(5 * kMiB, 11);
  {
    auto split = test::OpenSplitAt(set_->data("img.img"));
    ASSERT_OK(split);
    ASSERT_OK(split->PWrite(data.data(), data.size(), 0));
    ASSERT_OK(split->Sync());
  }
  ASSERT_OK(mgr().Shrink("img", 3 * kMiB));
  auto info = mgr().Info("img");
  ASSERT_OK(info);
  EXPECT_EQ(info->size_bytes, 3 * kMiB);
  EXPECT_EQ(info->pieces, 2u);
  EXPECT_EQ(DataFiles(), (std::vector<std::string>{"img.img", "img.img.0000", "img.img.0001"}));
  EXPECT_EQ(std::filesystem::file_size(Piece("img", 1)), kMiB);
  auto split = test::OpenSplitAt(set_->data("img.img"));
  ASSERT_OK(split);
  std::vector<uint8_t> back(3 * kMiB);
  ASSERT_OK(split->PRead(back.data(), back.size(), 0));
  EXPECT_TRUE(std::equal(back.begin(), back.end(), data.begin()));
  EXPECT_FALSE(std::filesystem::exists(set_->meta("img.intent")));
  auto validated = mgr().Validate();
  ASSERT_OK(validated);
  for (const auto& v : *validated) EXPECT_TRUE(v.ok) << v.name << ": " << v.problem;
}

TEST_F(ManagerTest, ShrinkIsRefusedWhereItWouldLoseWhatIsNotAskedFor) {
  ASSERT_OK(mgr().Create("img", 4 * kMiB, {}));
  auto implicit = mgr().Resize("img", 2 * kMiB);
  EXPECT_ERRNO(implicit, EINVAL);
  EXPECT_NE(implicit.error().message.find("--shrink"), std::string::npos);
  EXPECT_ERRNO(mgr().Shrink("img", 8 * kMiB), EINVAL);  // that is a grow
  EXPECT_ERRNO(mgr().Shrink("img", 1000), EINVAL);      // not a whole logical block
  EXPECT_ERRNO(mgr().Shrink("img", 0), EINVAL);
  ASSERT_OK(mgr().Map("img"));
  EXPECT_ERRNO(mgr().Shrink("img", 2 * kMiB), EBUSY);
  ASSERT_OK(mgr().Unmap("img"));
  CreateOptions ro;
  ro.readonly = true;
  ASSERT_OK(mgr().Create("ro", 4 * kMiB, ro));
  EXPECT_ERRNO(mgr().Shrink("ro", 2 * kMiB), EROFS);
  EXPECT_EQ(mgr().Info("img")->size_bytes, 4 * kMiB);
  EXPECT_EQ(mgr().Info("ro")->size_bytes, 4 * kMiB);
}

// A filesystem on the image larger than the new size is never cut short; one that fits is fine.
TEST_F(ManagerTest, ShrinkRefusesToCutAFilesystemShort) {
  ASSERT_OK(mgr().Create("img", 8 * kMiB, {}));
  auto device = mgr().Map("img");
  ASSERT_OK(device);
  ASSERT_EQ(RunCommand({"mkfs.ext4", "-q", "-F", "-b", "4096", *device, "6M"}).exit_code, 0);
  ASSERT_OK(mgr().Unmap("img"));
  auto cut = mgr().Shrink("img", 4 * kMiB);
  EXPECT_ERRNO(cut, EFBIG);
  EXPECT_NE(cut.error().message.find("ext4 filesystem of 6"), std::string::npos)
      << cut.error().ToString();
  EXPECT_EQ(mgr().Info("img")->size_bytes, 8 * kMiB);
  ASSERT_OK(mgr().Shrink("img", 6 * kMiB));
  device = mgr().Map("img");
  ASSERT_OK(device);
  EXPECT_EQ(RunCommand({"e2fsck", "-n", "-f", *device}).exit_code, 0);
  ASSERT_OK(mgr().Unmap("img"));
}

// Split images on loops joined by dm (needs device-mapper: the vm build of this file): the last
// piece's loop grows, new pieces get loops, the dm table over them is swapped live.
TEST_F(ManagerTwoMiBPiecesTest, ResizeGrowsAMappedSplitImageWhileItIsWritten) {
  if (!HaveDeviceMapper()) GTEST_SKIP() << "joining pieces needs device-mapper";
  ASSERT_OK(mgr().Create("img", 3 * kMiB, {}));
  auto device = mgr().Map("img");
  ASSERT_OK(device);
  struct stat before {};
  ASSERT_EQ(stat(device->c_str(), &before), 0);
  LiveWriter writer(*device, 3 * kMiB);
  ASSERT_EQ(writer.open_errno(), 0) << strerror(writer.open_errno());
  ASSERT_OK(mgr().Resize("img", 7 * kMiB));
  EXPECT_EQ(OpenDeviceSize(writer.fd()), 7 * kMiB);
  writer.Stop();
  EXPECT_EQ(writer.failed_writes(), 0u);
  struct stat after {};
  ASSERT_EQ(stat(device->c_str(), &after), 0);
  EXPECT_EQ(after.st_rdev, before.st_rdev);
  EXPECT_EQ(mgr().Info("img")->pieces, 4u);
  EXPECT_TRUE(LiveWriter::Holds(*device, 3 * kMiB));
  const auto tail = Pattern<std::vector<uint8_t>>(4 * kMiB, 5);
  ASSERT_TRUE(DirectWrite(*device, tail, 3 * kMiB));
  auto status = metadata::ReadStatusFile(OpenDir(set_->meta("")), "img.status");
  ASSERT_OK(status);
  EXPECT_EQ(status->size(), 5u) << "four loops and the dm device";
  ASSERT_OK(mgr().Unmap("img"));
  auto split = test::OpenSplitAt(set_->data("img.img"));
  ASSERT_OK(split);
  std::vector<uint8_t> back(4 * kMiB);
  ASSERT_OK(split->PRead(back.data(), back.size(), 3 * kMiB));
  EXPECT_EQ(back, tail);
}

TEST_F(ManagerTest, MapRefusesAnAlreadyMappedImage) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  ASSERT_OK(mgr().Map("img"));
  EXPECT_ERRNO(mgr().Map("img"), EBUSY);
  ASSERT_OK(mgr().Unmap("img"));
}

// Watchers (the daemon's WatchImages) hear of each change once, in order, with the image as it
// is after it, while the image's lock is still held (so two operations on one image can never
// be told in the other order); what changes nothing is not told.
TEST_F(ManagerTest, EveryChangeIsToldOnceUnderTheImagesLock) {
  struct Told {
    ImageChangeKind kind;
    std::string name, operation;
    uint64_t size;
    bool mapped, lock_held;
  };
  std::vector<Told> told;
  ManagerOptions options = set_->options();
  options.on_change = [&](const ImageChange& c) {
    bool held = false;
    if (!c.name.empty()) {
      const std::string lock = options.metadata_dir + "/" + std::string(imageset::kLockDir) +
                               "/" + imageset::ImageLockName(c.name);
      UniqueFd fd(open(lock.c_str(), O_RDONLY | O_CLOEXEC));
      held = fd.valid() && flock(fd.get(), LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    }
    told.push_back({c.kind, c.name, c.operation, c.image ? c.image->size_bytes : 0,
                    c.image && c.image->mapped_device, held});
  };
  auto manager = ImageManager::Open(options);
  ASSERT_OK(manager);
  ImageManager& m = **manager;
  ASSERT_OK(m.Create("a", kMiB, {}));
  EXPECT_ERRNO(m.Create("a", kMiB, {}), EEXIST);
  ASSERT_OK(m.Resize("a", 2 * kMiB));
  ASSERT_OK(m.Resize("a", 2 * kMiB));  // the size it has
  ResizeOptions plan_only;
  SpacePlan plan;
  plan_only.dry_run = &plan;
  ASSERT_OK(m.Resize("a", 4 * kMiB, plan_only));
  ASSERT_OK(m.Map("a"));
  ASSERT_OK(m.Unmap("a"));
  ASSERT_OK(m.Shrink("a", kMiB));
  ASSERT_OK(m.Disable("a"));
  ASSERT_OK(m.RemoveDisabled());
  EXPECT_ERRNO(m.Delete("a"), ENOENT);

  using K = ImageChangeKind;
  const std::vector<std::pair<K, std::string>> expected = {
      {K::kCreated, "create"}, {K::kResized, "resize"}, {K::kMapped, "map"},
      {K::kUnmapped, "unmap"}, {K::kResized, "resize"}, {K::kDisabled, "disable"},
      {K::kDeleted, "remove-disabled"}};
  ASSERT_EQ(told.size(), expected.size());
  for (size_t i = 0; i < told.size(); ++i) {
    EXPECT_EQ(told[i].kind, expected[i].first) << i;
    EXPECT_EQ(told[i].operation, expected[i].second) << i;
    EXPECT_EQ(told[i].name, "a") << i;
    EXPECT_TRUE(told[i].lock_held) << i << " " << told[i].operation;
  }
  EXPECT_EQ(told[0].size, kMiB);
  EXPECT_EQ(told[1].size, 2 * kMiB);
  EXPECT_TRUE(told[2].mapped);
  EXPECT_FALSE(told[3].mapped);
  EXPECT_EQ(told[4].size, kMiB);
  EXPECT_EQ(told[6].size, 0u);  // deleted: no image to show
}

TEST_F(ManagerTest, UnmapOfUnmappedImageIsEnxioAndOfUnknownImageEnoent) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  EXPECT_ERRNO(mgr().Unmap("img"), ENXIO);
  EXPECT_ERRNO(mgr().Unmap("nope"), ENOENT);
  EXPECT_ERRNO(mgr().Map("nope"), ENOENT);
}

// More zeros than the image holds is refused before anything is allocated, dry run or not.
TEST_F(ManagerTest, ZeroFillBeyondTheSizeIsRefusedBeforeAnything) {
  CreateOptions options;
  options.zero_fill_bytes = 2 * kMiB;
  auto created = mgr().Create("img", kMiB, options);
  ASSERT_FALSE(created);
  EXPECT_EQ(created.error().code, EINVAL);
  EXPECT_NE(created.error().message.find("zero-fill of 2097152 bytes"), std::string::npos)
      << created.error().ToString();
  SpacePlan plan;
  options.dry_run = &plan;
  EXPECT_ERRNO(mgr().Create("img", kMiB, options), EINVAL);
  EXPECT_TRUE(DataFiles().empty());
  EXPECT_FALSE(*mgr().Exists("img"));
}

// SAFETY RULE: a file whose blocks moved behind the manager's back is never mapped.
TEST_F(ManagerTest, MapRefusesExtentsThatChangedSinceCreation) {
  ASSERT_OK(mgr().Create("img", 2 * kMiB, {}));
  // Keep the old blocks allocated (renamed), so the new file must get different ones.
  const std::string piece = Piece("img");
  ASSERT_EQ(rename(piece.c_str(), set_->data("held").c_str()), 0);
  {
    std::ofstream out(piece, std::ios::binary);
    std::vector<char> zeros(2 * kMiB, 0);
    out.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
  }
  sync();
  auto mapped = mgr().Map("img");
  ASSERT_FALSE(mapped.has_value());
  EXPECT_EQ(mapped.error().code, EUCLEAN);
  EXPECT_NE(mapped.error().message.find("changed since creation"), std::string::npos)
      << mapped.error().ToString();
  EXPECT_FALSE(mgr().GetMappedDevice("img")->has_value());
  EXPECT_FALSE(std::filesystem::exists(set_->meta("img.status")));
  auto validation = mgr().Validate();
  ASSERT_OK(validation);
  ASSERT_EQ(validation->size(), 1u);
  EXPECT_FALSE((*validation)[0].ok);
}

// ---- concurrency ----

TEST_F(ManagerTest, TwoManagersRacingToCreateOneNameExactlyOneWins) {
  auto other = set_->OpenAnother();
  std::atomic<int> go{0};
  Result<void> r1 = Ok(), r2 = Ok();
  std::thread t1([&] {
    while (!go) {
    }
    r1 = mgr().Create("race", 8 * kMiB, {});
  });
  std::thread t2([&] {
    while (!go) {
    }
    r2 = other->Create("race", 8 * kMiB, {});
  });
  go = 1;
  t1.join();
  t2.join();
  EXPECT_NE(r1.has_value(), r2.has_value());
  const Result<void>& loser = r1 ? r2 : r1;
  if (!loser) {
    EXPECT_EQ(loser.error().code, EEXIST) << loser.error().ToString();
  }
  EXPECT_TRUE(*mgr().Exists("race"));
  EXPECT_EQ(DataFiles(), (std::vector<std::string>{"race.img", "race.img.0000"}));
}

TEST_F(ManagerTest, CreatesOfDifferentImagesRunInParallel) {
  auto other = set_->OpenAnother();
  Result<void> r1 = Ok(), r2 = Ok();
  std::thread t1([&] { r1 = mgr().Create("left", 4 * kMiB, {}); });
  std::thread t2([&] { r2 = other->Create("right", 4 * kMiB, {}); });
  t1.join();
  t2.join();
  ASSERT_OK(r1);
  ASSERT_OK(r2);
  auto list = mgr().List();
  ASSERT_OK(list);
  EXPECT_EQ(list->size(), 2u);
}

// ---- crash recovery ----

TEST_F(ManagerTest, RecoverAdoptsAMappingThatStillExists) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  auto path = mgr().Map("img");
  ASSERT_OK(path);
  set_->Reopen();  // the daemon restarted; the loop stayed
  auto report = mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(report->adopted, std::vector<std::string>{"img"});
  EXPECT_TRUE(report->torn_down.empty());
  EXPECT_EQ(*mgr().GetMappedDevice("img"), std::optional<std::string>(*path));
  ASSERT_OK(mgr().Unmap("img"));
}

// Image "a.img.b"'s pieces are called a.img.b.img.NNNN, which starts with "a.img.": matching
// loops by backing-file name let a stale status file of "a" detach them. Loops are matched by
// the identity of the file they hold.
TEST_F(ManagerTest, UnmapAndRecoverOfAnImageNeverTouchAnotherImagesLoops) {
  ASSERT_OK(mgr().Create("a", kMiB, {}));
  ASSERT_OK(mgr().Create("a.img.b", kMiB, {}));
  auto other = mgr().Map("a.img.b");
  ASSERT_OK(other);
  // A stale status file of "a" naming the other image's loop (its number reused after a crash).
  ASSERT_OK(metadata::WriteStatusFile(imaged::test::OpenDir(set_->meta("")), "a.status",
                                      {{metadata::StatusEntry::Kind::Loop, *other}}));
  ASSERT_OK(mgr().Unmap("a"));
  EXPECT_EQ(*mgr().GetMappedDevice("a.img.b"), std::optional<std::string>(*other));
  ASSERT_OK(metadata::WriteStatusFile(imaged::test::OpenDir(set_->meta("")), "a.status",
                                      {{metadata::StatusEntry::Kind::Loop, *other}}));
  set_->Reopen();
  auto report = mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(*mgr().GetMappedDevice("a.img.b"), std::optional<std::string>(*other));
  EXPECT_TRUE(dm::LoopDevice::BackingFile(*other).has_value());
  EXPECT_FALSE(mgr().GetMappedDevice("a")->has_value());
  ASSERT_OK(mgr().Unmap("a.img.b"));
}

// A symlink planted at a piece's name names nothing of the image's: it is never followed to
// decide what the image has mapped, and the loop over its target is not the image's.
TEST_F(ManagerTest, APlantedSymlinkPieceIsNotTheImages) {
  ASSERT_OK(mgr().Create("victim", kMiB, {}));
  ASSERT_OK(mgr().Create("a", kMiB, {}));
  auto victim = mgr().Map("victim");
  ASSERT_OK(victim);
  ASSERT_EQ(symlink(Piece("victim").c_str(), Piece("a", 1).c_str()), 0);
  EXPECT_FALSE(mgr().GetMappedDevice("a")->has_value());
  ASSERT_OK(metadata::WriteStatusFile(imaged::test::OpenDir(set_->meta("")), "a.status",
                                      {{metadata::StatusEntry::Kind::Loop, *victim}}));
  ASSERT_OK(mgr().Unmap("a"));
  EXPECT_EQ(*mgr().GetMappedDevice("victim"), std::optional<std::string>(*victim));
  ASSERT_OK(mgr().Unmap("victim"));
  ASSERT_EQ(unlink(Piece("a", 1).c_str()), 0);
}

TEST_F(ManagerTest, RecoverDropsAStatusFileWhoseDevicesAreGone) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  auto path = mgr().Map("img");
  ASSERT_OK(path);
  ASSERT_OK(dm::LoopDevice::DetachPath(*path));  // the devices vanished (e.g. a reboot)
  auto report = mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(report->torn_down, std::vector<std::string>{"img"});
  EXPECT_FALSE(std::filesystem::exists(set_->meta("img.status")));
  EXPECT_ERRNO(mgr().Unmap("img"), ENXIO);
  ASSERT_OK(mgr().Map("img"));
  ASSERT_OK(mgr().Unmap("img"));
}

TEST_F(ManagerTest, RecoverDetachesALoopThatWasNeverRecorded) {
  // SIGKILL between LOOP_CONFIGURE and the status write: a loop over our piece, no record.
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  auto loop = dm::LoopDevice::Attach(Piece("img"), {});
  ASSERT_OK(loop);
  const std::string leaked = loop->release();
  auto report = mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(report->torn_down, std::vector<std::string>{"img"});
  auto still = dm::LoopDevice::FindByBackingFile(Piece("img"));
  ASSERT_OK(still);
  EXPECT_TRUE(still->empty()) << leaked;
  EXPECT_FALSE(mgr().GetMappedDevice("img")->has_value());
}

TEST_F(ManagerTest, RecoverTearsDownAMappingWhoseImageWasDeletedFromLpMetadata) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  auto path = mgr().Map("img");
  ASSERT_OK(path);
  // lp_metadata lost the entry (crash of a Delete that was not refused, or an older tool).
  auto md = metadata::ReadImageFile(imaged::test::OpenDir(set_->meta("")), "lp_metadata");
  ASSERT_OK(md);
  metadata::RemovePartition(*md, "img");
  ASSERT_OK(metadata::WriteImageFile(imaged::test::OpenDir(set_->meta("")), "lp_metadata", *md));
  auto report = mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(report->torn_down, std::vector<std::string>{"img"});
  EXPECT_FALSE(dm::LoopDevice::BackingFile(*path).has_value());
  // Its files are not known to be an abandoned step of ours: kept, and said so.
  EXPECT_EQ(DataFiles(), (std::vector<std::string>{"img.img", "img.img.0000"}));
  EXPECT_EQ(report->kept, (std::vector<std::string>{"img.img", "img.img.0000"}));
  EXPECT_FALSE(report->problems.empty());
}

// Files an interrupted create or resize left are removed only when that operation's intent
// proves they are its own; files nothing explains are kept and reported.
TEST_F(ManagerTest, RecoverRemovesOnlyWhatAnIntentProvesIsAnAbandonedStep) {
  ASSERT_OK(mgr().Create("keep", kMiB, {}));
  // SIGKILL after SplitFiemap::Create, before lp_metadata, with the create intent written.
  fiemap::SplitFiemap::CreateOptions so;
  so.max_piece_size = 256 * 1024;
  ASSERT_OK(test::CreateSplitAt(set_->data("half.img"), kMiB, so));
  { std::ofstream(set_->meta("half.intent")) << "create\n"; }
  // SIGKILL in the middle of SplitFiemap::Create: pieces, no list file, the intent.
  { std::ofstream(set_->data("partial.img.0000")) << "x"; }
  { std::ofstream(set_->data("partial.img.0001")) << "y"; }
  { std::ofstream(set_->meta("partial.intent")) << "create\n"; }
  // The same shapes without an intent: nothing proves they are ours to delete.
  ASSERT_OK(test::CreateSplitAt(set_->data("stray.img"), kMiB, so));
  { std::ofstream(set_->data("lone.img.0000")) << "l"; }
  // Not ours at all: never touched.
  { std::ofstream(set_->data("notes.txt")) << "z"; }
  auto report = mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(DataFiles(),
            (std::vector<std::string>{"keep.img", "keep.img.0000", "lone.img.0000", "notes.txt",
                                      "stray.img", "stray.img.0000", "stray.img.0001",
                                      "stray.img.0002", "stray.img.0003"}));
  EXPECT_EQ(report->kept.size(), 6u);
  EXPECT_FALSE(std::filesystem::exists(set_->meta("half.intent")));
  EXPECT_FALSE(std::filesystem::exists(set_->meta("partial.intent")));
  EXPECT_TRUE(*mgr().Exists("keep"));
}

TEST_F(ManagerTest, RecoverKeepsPiecesTheListFileDoesNotNameWithoutAnIntent) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  { std::ofstream(Piece("img", 1)) << "grown but never listed"; }
  auto report = mgr().Recover();
  ASSERT_OK(report);
  EXPECT_EQ(report->kept, std::vector<std::string>{"img.img.0001"});
  EXPECT_EQ(DataFiles(), (std::vector<std::string>{"img.img", "img.img.0000", "img.img.0001"}));
}

// A grow interrupted after the piece grew and a new piece was listed, before lp_metadata had
// the new size: Recover rolls the files back to what lp_metadata records.
TEST_F(ManagerTest, RecoverRollsAnInterruptedGrowBack) {
  ManagerOptions o = set_->options();
  o.max_piece_size = kMiB;
  auto split_mgr = ImageManager::Open(o);
  ASSERT_OK(split_mgr);
  ASSERT_OK((*split_mgr)->Create("img", 512 * 1024, {}));
  const auto data = Pattern<Bytes>(512 * 1024, 4);
  ASSERT_TRUE(DirectWrite(Piece("img"), data, 0));
  { std::ofstream(set_->meta("img.intent")) << "grow 524288 1 524288\n"; }
  {
    auto split = test::OpenSplitAt(set_->data("img.img"));
    ASSERT_OK(split);
    fiemap::SplitFiemap::GrowOptions g;
    g.max_piece_size = kMiB;
    ASSERT_OK(split->Grow(2 * kMiB, g));  // as far as the files go; lp_metadata not yet
  }
  ASSERT_EQ(std::filesystem::file_size(Piece("img")), kMiB);
  auto report = (*split_mgr)->Recover();
  ASSERT_OK(report);
  EXPECT_EQ(DataFiles(), (std::vector<std::string>{"img.img", "img.img.0000"}));
  EXPECT_EQ(std::filesystem::file_size(Piece("img")), 512u * 1024);
  auto validation = (*split_mgr)->Validate();
  ASSERT_OK(validation);
  EXPECT_TRUE((*validation)[0].ok) << (*validation)[0].problem;
  auto split = test::OpenSplitAt(set_->data("img.img"));
  ASSERT_OK(split);
  std::vector<uint8_t> back(data.size());
  ASSERT_OK(split->PRead(back.data(), back.size(), 0));
  EXPECT_EQ(back, data);
}

// One piece grows in place while it is under the piece limit, so the image still maps with a
// single loop device (no device-mapper needed), and its data stays where it was.
TEST_F(ManagerTest, ResizeOfAOnePieceImageGrowsThePieceInPlace) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  const auto data = Pattern<Bytes>(kMiB, 9);
  ASSERT_TRUE(DirectWrite(Piece("img"), data, 0));
  auto before = test::OpenAt(Piece("img"));
  ASSERT_OK(before);
  ASSERT_OK(mgr().Resize("img", 4 * kMiB));
  auto info = mgr().Info("img");
  ASSERT_OK(info);
  EXPECT_EQ(info->pieces, 1u);
  EXPECT_EQ(info->size_bytes, 4 * kMiB);
  auto after = test::OpenAt(Piece("img"));
  ASSERT_OK(after);
  EXPECT_EQ(after->size(), 4 * kMiB);
  EXPECT_EQ(after->extents().front().physical, before->extents().front().physical);
  auto device = mgr().Map("img");
  ASSERT_OK(device);
  EXPECT_TRUE(device->starts_with("/dev/loop")) << *device;
  std::vector<uint8_t> back(kMiB);
  {
    UniqueFd fd(open(device->c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(pread(fd.get(), back.data(), back.size(), 0), static_cast<ssize_t>(back.size()));
  }
  EXPECT_EQ(back, data);
  ASSERT_OK(mgr().Unmap("img"));
}

// The metadata dir lost lp_metadata (not mounted, wrong --metadata-dir): recovery deletes
// nothing, every operation is refused with the reason, and rebuild-metadata brings the images
// back, with the recorded size and attributes where the previous generation has them.
TEST_F(ManagerTest, MissingLpMetadataWithImagesIsRefusedAndRebuilt) {
  ASSERT_OK(mgr().Create("a", 3 * kMiB, {}));
  CreateOptions ro;
  ro.readonly = true;
  ASSERT_OK(mgr().Create("b", kMiB + 4096, ro));
  const auto data = Pattern<Bytes>(kMiB, 3);
  ASSERT_TRUE(DirectWrite(Piece("a"), data, 0));
  ASSERT_EQ(rename(set_->meta("lp_metadata").c_str(), set_->meta("lp_metadata.away").c_str()), 0);
  set_->Reopen();
  auto report = mgr().Recover();
  ASSERT_OK(report);
  ASSERT_TRUE(report->refused.has_value());
  EXPECT_NE(report->refused->find("no lp_metadata"), std::string::npos) << *report->refused;
  EXPECT_TRUE(mgr().Refusal().has_value());
  EXPECT_ERRNO(mgr().Create("c", kMiB, {}), EUCLEAN);
  EXPECT_ERRNO(mgr().List(), EUCLEAN);
  EXPECT_ERRNO(mgr().Delete("a"), EUCLEAN);
  // Nothing was removed, and a restart still finds nothing to delete.
  set_->Reopen();
  ASSERT_OK(mgr().Recover());
  EXPECT_EQ(DataFiles(), (std::vector<std::string>{"a.img", "a.img.0000", "b.img", "b.img.0000"}));

  auto rebuilt = mgr().RebuildMetadata();
  ASSERT_OK(rebuilt);
  ASSERT_EQ(rebuilt->images.size(), 2u);
  EXPECT_EQ(rebuilt->images[0].name, "a");
  EXPECT_EQ(rebuilt->images[0].size_bytes, 3 * kMiB);
  EXPECT_EQ(rebuilt->images[0].source, "lp_metadata.prev");
  // "b" came after the previous generation: its size is what its pieces hold (here the same),
  // its attributes are not known (read-only is lost) and the report says so.
  EXPECT_EQ(rebuilt->images[1].size_bytes, kMiB + 4096);
  EXPECT_EQ(rebuilt->images[1].source, "pieces");
  EXPECT_FALSE(mgr().Refusal().has_value());
  auto validation = mgr().Validate();
  ASSERT_OK(validation);
  for (const auto& v : *validation) EXPECT_TRUE(v.ok) << v.name << ": " << v.problem;
  ASSERT_OK(mgr().Create("c", kMiB, {}));
}

TEST_F(ManagerTest, CorruptLpMetadataIsRefusedKeptAndRebuiltFromThePieces) {
  ASSERT_OK(mgr().Create("a", 2 * kMiB, {}));
  { std::ofstream(set_->meta("lp_metadata"), std::ios::trunc) << "not liblp"; }
  std::filesystem::remove(set_->meta("lp_metadata.prev"));
  set_->Reopen();
  auto report = mgr().Recover();
  ASSERT_OK(report);
  ASSERT_TRUE(report->refused.has_value());
  auto list = mgr().List();
  ASSERT_FALSE(list);
  EXPECT_EQ(list.error().kind, ErrorKind::kCorruptMetadata);
  auto rebuilt = mgr().RebuildMetadata();
  ASSERT_OK(rebuilt);
  ASSERT_TRUE(rebuilt->saved_as.has_value());
  EXPECT_TRUE(std::filesystem::exists(*rebuilt->saved_as));
  ASSERT_EQ(rebuilt->images.size(), 1u);
  EXPECT_EQ(rebuilt->images[0].source, "pieces");
  EXPECT_EQ(rebuilt->images[0].size_bytes, 2 * kMiB);
  EXPECT_TRUE(*mgr().Exists("a"));
}

// libfiemap records the disk's BLKIOMIN and BLKALIGNOFF in the block device entry; imaged wrote
// 0, so a liblp builder opened on the set would align differently.
TEST_F(ManagerTest, LpMetadataRecordsTheDisksAlignmentAsLibfiemapDoes) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  auto md = metadata::ReadImageFile(imaged::test::OpenDir(set_->meta("")), "lp_metadata");
  ASSERT_OK(md);
  const auto fs = fiemap::InspectFilesystem(set_->options().data_dir);
  ASSERT_OK(fs);
  ASSERT_NE(fs->disk_min_io_size, 0u);
  EXPECT_EQ(md->block_devices[0].alignment, fs->disk_min_io_size);
  EXPECT_EQ(md->block_devices[0].alignment_offset, fs->disk_alignment_offset);
  std::ifstream sysfs(fmt::format("/sys/dev/block/{}:{}/queue/minimum_io_size",
                                  major(fs->disk_dev), minor(fs->disk_dev)));
  uint32_t min_io = 0;
  if (sysfs >> min_io) {
    EXPECT_EQ(md->block_devices[0].alignment, min_io);
  }
}

// lp_metadata written by another liblp tool may hold partitions whose names imaged would never
// make (36 bytes, other characters) and extent types it cannot map. They are listed, kept
// byte for byte through imaged's own changes, and never mapped, validated or removed.
TEST_F(ManagerTest, AnotherToolsPartitionsAreListedKeptAndLeftAlone) {
  ASSERT_OK(mgr().Create("ours", kMiB, {}));
  auto dir = imaged::test::OpenDir(set_->meta(""));
  auto md = metadata::ReadImageFile(dir, "lp_metadata");
  ASSERT_OK(md);
  const std::string long_name(36, 'f');
  md->extents.push_back({8, 5, 0, 0});  // a target type imaged does not know
  md->partitions.push_back({long_name, metadata::kPartitionAttrDisabled,
                            static_cast<uint32_t>(md->extents.size() - 1), 1, 0});
  md->extents.push_back({8, metadata::kTargetTypeLinear, 4096, 0});
  md->partitions.push_back({"sys@a", metadata::kPartitionAttrDisabled,
                            static_cast<uint32_t>(md->extents.size() - 1), 1, 0});
  ASSERT_OK(metadata::WriteImageFile(dir, "lp_metadata", *md));
  set_->Reopen();
  ASSERT_OK(mgr().Recover());
  auto list = mgr().List();
  ASSERT_OK(list);
  ASSERT_EQ(list->size(), 3u);
  EXPECT_EQ((*list)[1].name, long_name);
  EXPECT_EQ((*list)[2].name, "sys@a");
  ASSERT_OK(mgr().Disable("ours"));
  auto removed = mgr().RemoveDisabled();
  ASSERT_OK(removed);
  EXPECT_EQ(*removed, std::vector<std::string>{"ours"});  // only ours, though all are disabled
  ASSERT_OK(mgr().Create("next", kMiB, {}));
  auto mapped = mgr().MapAll();
  ASSERT_OK(mapped);
  EXPECT_EQ(*mapped, std::vector<std::string>{"next"});
  ASSERT_OK(mgr().Unmap("next"));
  auto validation = mgr().Validate();
  ASSERT_OK(validation);
  ASSERT_EQ(validation->size(), 1u);
  auto after = metadata::ReadImageFile(dir, "lp_metadata");
  ASSERT_OK(after);
  ASSERT_NE(metadata::FindPartition(*after, long_name), nullptr);
  ASSERT_NE(metadata::FindPartition(*after, "sys@a"), nullptr);
  EXPECT_EQ(metadata::PartitionExtents(*after, *metadata::FindPartition(*after, long_name)),
            (std::vector<metadata::Extent>{{8, 5, 0, 0}}));
}

TEST_F(ManagerTest, RecoverLeavesAConsistentSetAlone) {
  ASSERT_OK(mgr().Create("a", kMiB, {}));
  ASSERT_OK(mgr().Create("b", kMiB, {}));
  auto report = mgr().Recover();
  ASSERT_OK(report);
  EXPECT_TRUE(report->adopted.empty());
  EXPECT_TRUE(report->torn_down.empty());
  EXPECT_TRUE(report->kept.empty());
  EXPECT_TRUE(report->problems.empty());
  EXPECT_FALSE(report->refused.has_value());
  EXPECT_EQ(DataFiles().size(), 4u);
}

// ---- split images without device-mapper ----

TEST_F(ManagerTest, SplitImageHasOnePiecePerMaxPieceSize) {
  ManagerOptions o = set_->options();
  o.max_piece_size = kMiB;
  auto split_mgr = ImageManager::Open(o);
  ASSERT_OK(split_mgr);
  ASSERT_OK((*split_mgr)->Create("split", 3 * kMiB + 512 * 8, {}));
  auto info = (*split_mgr)->Info("split");
  ASSERT_OK(info);
  EXPECT_EQ(info->pieces, 4u);
  EXPECT_EQ(info->size_bytes, 3 * kMiB + 4096);
  if (!HaveDeviceMapper()) {
    // Joining the loops needs device-mapper: refused cleanly, nothing left attached.
    EXPECT_ERRNO((*split_mgr)->Map("split"), EOPNOTSUPP);
    EXPECT_FALSE((*split_mgr)->GetMappedDevice("split")->has_value());
    EXPECT_FALSE(std::filesystem::exists(set_->meta("split.status")));
  }
}

// ---- every supported filesystem ----

class FilesystemTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FilesystemTest, CreateMapWriteUnmapReadBackDelete) {
#ifdef IMAGED_FS_TESTS_IN_VM
  IMAGED_REQUIRE_DEVICE_MAPPER();
#endif
  const std::string fs = GetParam();
  IMAGED_SKIP_UNLESS_FS(fs);
  ManagerOptions o;
  o.strategy = MapStrategy::kLoop;
  ImageSet set(fs, (fs == "xfs" ? 320 : 64) * kMiB, o);
  ASSERT_OK(set.mgr().Create("img", 4 * kMiB, {}));
  auto path = set.mgr().Map("img");
  ASSERT_OK(path);
  EXPECT_EQ(BlockDeviceSize(*path), 4 * kMiB);
  const auto data = Pattern<Bytes>(kMiB, 8);
  ASSERT_TRUE(DirectWrite(*path, data, 2 * kMiB));
  ASSERT_OK(set.mgr().Unmap("img"));
  auto split = test::OpenSplitAt(set.data("img.img"));
  ASSERT_OK(split);
  std::vector<uint8_t> back(kMiB);
  ASSERT_OK(split->PRead(back.data(), back.size(), 2 * kMiB));
  EXPECT_EQ(back, data);
  auto validation = set.mgr().Validate();
  ASSERT_OK(validation);
  EXPECT_TRUE((*validation)[0].ok) << (*validation)[0].problem;
  ASSERT_OK(set.mgr().Delete("img"));
}

INSTANTIATE_TEST_SUITE_P(All, FilesystemTest, ::testing::Values("ext4", "xfs", "f2fs", "vfat"));

// AOSP VfatTest.DeviceIsRequestedSize: 32 KiB clusters, an image that is not a cluster multiple.
TEST(VfatTest, DeviceIsRequestedSize) {
#ifdef IMAGED_FS_TESTS_IN_VM
  IMAGED_REQUIRE_DEVICE_MAPPER();
#endif
  IMAGED_SKIP_UNLESS_FS("vfat");
  ManagerOptions o;
  o.strategy = MapStrategy::kLoop;
  ImageSet set("vfat", 64 * kMiB, o, {"-s", "64", "-S", "512"});
  const uint64_t size = 32768 * 64 - 16384;  // 2,080,768
  ASSERT_OK(set.mgr().Create("vfat-image", size, {}));
  auto path = set.mgr().Map("vfat-image", std::chrono::seconds(10));
  ASSERT_OK(path);
  EXPECT_EQ(BlockDeviceSize(*path), size);
  ASSERT_OK(set.mgr().Unmap("vfat-image"));
}

}  // namespace
}  // namespace imaged::test
