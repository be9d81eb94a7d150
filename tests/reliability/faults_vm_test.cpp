// Faults that need device-mapper (vm label, inside the guest via tests/vm/run): the data
// filesystem sits on a dm-linear device over a loop; mid-operation its table is swapped for one
// where the image's blocks are dm-error, so the image's own I/O fails with EIO while the
// filesystem's metadata stays readable. And a device node that never appears (read-only
// /dev/mapper, as with a broken udev) makes Map time out and tear down.
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>

#include "../vm/vm_env.h"
#include "dm/device_mapper.h"
#include "dm/loop_device.h"
#include "dm/table.h"
#include "manager/image_manager.h"
#include "metadata/lp_metadata.h"
#include "reliability_util.h"

namespace imaged::test {
namespace {

// (physical byte offset, length) of every extent of `path`, whatever its flags.
std::vector<std::pair<uint64_t, uint64_t>> RawExtents(const std::string& path) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  constexpr unsigned kBatch = 256;
  std::vector<char> buf(sizeof(fiemap) + kBatch * sizeof(fiemap_extent));
  uint64_t start = 0;
  bool last = false;
  while (!last) {
    std::fill(buf.begin(), buf.end(), 0);
    auto* fm = reinterpret_cast<fiemap*>(buf.data());
    fm->fm_start = start;
    fm->fm_length = FIEMAP_MAX_OFFSET - start;
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = kBatch;
    if (ioctl(fd, FS_IOC_FIEMAP, fm) != 0 || fm->fm_mapped_extents == 0) break;
    for (unsigned i = 0; i < fm->fm_mapped_extents; ++i) {
      const fiemap_extent& e = fm->fm_extents[i];
      out.emplace_back(e.fe_physical, e.fe_length);
      start = e.fe_logical + e.fe_length;
      if (e.fe_flags & FIEMAP_EXTENT_LAST) last = true;
    }
  }
  close(fd);
  return out;
}

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kFsBytes = 96 * kMiB;

class VmFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_REQUIRE_DEVICE_MAPPER();
    IMAGED_SKIP_UNLESS_ROOT();
    backing_ = (dir_.path() / "disk.img").string();
    {
      int fd = open(backing_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(ftruncate(fd, static_cast<off_t>(kFsBytes)), 0);
      close(fd);
    }
    dm::LoopOptions lo;
    lo.direct_io = false;
    lo.allow_buffered = true;
    auto loop = dm::LoopDevice::Attach(backing_, lo);
    ASSERT_TRUE(loop) << loop.error().ToString();
    loop_.emplace(std::move(*loop));
    dm_name_ = "reliability-fs-" + std::to_string(getpid());
    auto created = mapper_.Create(dm_name_, FsTable(false), {});
    ASSERT_TRUE(created) << created.error().ToString();
    fs_dev_ = *created;
    auto mk = RunCommand({"mkfs.ext4", "-q", "-F", fs_dev_});
    ASSERT_EQ(mk.exit_code, 0) << mk.err;
    mnt_ = (dir_.path() / "mnt").string();
    std::filesystem::create_directories(mnt_);
    ASSERT_EQ(mount(fs_dev_.c_str(), mnt_.c_str(), "ext4", 0, nullptr), 0) << strerror(errno);
    mounted_ = true;
    ManagerOptions o;
    o.data_dir = mnt_ + "/data";
    o.metadata_dir = (dir_.path() / "metadata").string();
    o.strategy = MapStrategy::kLoop;
    o.max_piece_size = 2 * kMiB;
    auto m = ImageManager::Open(o);
    ASSERT_TRUE(m) << m.error().ToString();
    manager_ = std::move(*m);
  }
  void TearDown() override {
    if (manager_) {
      if (auto list = manager_->List()) {
        for (const auto& i : *list) {
          if (i.mapped_device) (void)manager_->Unmap(i.name);
        }
      }
      manager_.reset();
    }
    if (swapped_) (void)Swap(FsTable(false));
    if (mounted_) umount2(mnt_.c_str(), MNT_DETACH);
    if (!dm_name_.empty()) {
      dm::RemoveOptions ro;
      ro.ignore_missing = true;
      (void)mapper_.Remove(dm_name_, ro);
    }
    loop_.reset();
  }

  // The fs device's table: linear over the loop, except `bad` extents (lp sectors, which are
  // sectors of the loop because the stack is 1:1) that are dm-error.
  dm::Table FsTable(bool with_errors) {
    std::vector<std::pair<uint64_t, uint64_t>> bad;
    if (with_errors) bad = bad_;
    std::sort(bad.begin(), bad.end());
    dm::Table t;
    const uint64_t total = kFsBytes / 512;
    uint64_t at = 0;
    const std::string disk = dm::DeviceMapper::DeviceString(loop_->dev());
    for (const auto& [start, len] : bad) {
      if (start > at) t.Emplace<dm::LinearTarget>(at, start - at, disk, at);
      t.Emplace<dm::ErrorTarget>(start, len);
      at = start + len;
    }
    if (at < total) t.Emplace<dm::LinearTarget>(at, total - at, disk, at);
    return t;
  }
  Result<void> Swap(const dm::Table& t) {
    IMAGED_TRY(mapper_.Load(dm_name_, t));
    IMAGED_TRY(mapper_.Suspend(dm_name_));
    IMAGED_TRY(mapper_.Resume(dm_name_));
    return Ok();
  }
  // Makes every block of `image` fail. The blocks come from the pieces themselves (raw FIEMAP,
  // unwritten extents included): a new image's import writes its data before lp_metadata names
  // it. The filesystem sits on a linear device at offset 0, so its sectors are the disk's.
  void BreakImage(const std::string& image) {
    bad_.clear();
    const std::string prefix = image + ".img.";
    for (const auto& f : ListDirNames(manager_->options().data_dir)) {
      if (f.rfind(prefix, 0) != 0) continue;
      auto extents = RawExtents(manager_->options().data_dir + "/" + f);
      ASSERT_FALSE(extents.empty()) << f << " has no extents";
      for (const auto& [physical, length] : extents) {
        bad_.emplace_back(physical / 512, (length + 511) / 512);
      }
    }
    ASSERT_FALSE(bad_.empty()) << "no pieces of " << image;
    std::sort(bad_.begin(), bad_.end());
    auto swapped = Swap(FsTable(true));
    ASSERT_TRUE(swapped) << swapped.error().ToString();
    swapped_ = true;
  }
  void Heal() {
    auto swapped = Swap(FsTable(false));
    ASSERT_TRUE(swapped) << swapped.error().ToString();
    swapped_ = false;
  }
  void ExpectNoDevicesOrStatus() {
    EXPECT_TRUE(LoopsUnder(manager_->options().data_dir).empty());
    for (const auto& f : ListDirNames(manager_->options().metadata_dir)) {
      EXPECT_FALSE(f.ends_with(".status") || f.ends_with(".intent") ||
                   f.rfind(".imaged-tmp.", 0) == 0)
          << "left behind: " << f;
    }
    auto devices = mapper_.List();
    ASSERT_TRUE(devices);
    for (const auto& d : *devices) {
      EXPECT_NE(d.name.rfind("imaged-", 0), 0u) << "left behind: " << d.name;
    }
  }

  TempDir dir_;
  dm::DeviceMapper mapper_;
  std::string backing_, dm_name_, fs_dev_, mnt_;
  std::optional<dm::LoopDevice> loop_;
  bool mounted_ = false, swapped_ = false;
  std::vector<std::pair<uint64_t, uint64_t>> bad_;
  std::unique_ptr<ImageManager> manager_;
};

TEST_F(VmFaultTest, ImportFailsWithEioWhenTheImagesBlocksFailMidwayAndLeavesNothing) {
  const std::string source = (dir_.path() / "src.raw").string();
  // Eight of the import's 8 MiB writes with at most 4 in flight (5 buffers): at the first
  // progress report at least three writes have not been issued yet.
  WriteFile(source, Pattern(64 * kMiB, 5));
  ImportOptions io;
  bool broke = false;
  io.progress = [&](uint64_t done, uint64_t total) {
    if (done > 0 && done < total && !broke) {
      broke = true;
      BreakImage("victim");  // the pieces exist and hold the first data
    }
    return true;
  };
  auto r = manager_->Import("victim", source, io);
  ASSERT_TRUE(broke) << "the import never reported progress";
  ASSERT_FALSE(r) << "import succeeded on failing blocks";
  EXPECT_EQ(r.error().code, EIO) << r.error().ToString();
  EXPECT_NE(r.error().ToString().find("victim"), std::string::npos) << r.error().ToString();
  Heal();
  EXPECT_FALSE(*manager_->Exists("victim"));
  for (const auto& f : ListDirNames(manager_->options().data_dir)) {
    ADD_FAILURE() << "left behind: " << f;
  }
  ExpectNoDevicesOrStatus();
}

TEST_F(VmFaultTest, ZeroFillOfAnUnmappedImageFailsWithEioAndKeepsTheImage) {
  ASSERT_TRUE(manager_->Create("victim", 4 * kMiB, {}));
  BreakImage("victim");
  auto r = manager_->ZeroFill("victim", 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO) << r.error().ToString();
  Heal();
  ExpectNoDevicesOrStatus();
  auto v = manager_->Validate();
  ASSERT_TRUE(v);
  ASSERT_EQ(v->size(), 1u);
  EXPECT_TRUE((*v)[0].ok) << (*v)[0].problem;
  EXPECT_TRUE(manager_->ZeroFill("victim", 0)) << "works again once the disk does";
}

TEST_F(VmFaultTest, ZeroFillThroughTheMappedDeviceFailsWithEioAndUnmapStillWorks) {
  ASSERT_TRUE(manager_->Create("victim", 4 * kMiB, {}));
  auto device = manager_->Map("victim");
  ASSERT_TRUE(device) << device.error().ToString();
  BreakImage("victim");
  auto r = manager_->ZeroFill("victim", 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO) << r.error().ToString();
  Heal();
  auto unmapped = manager_->Unmap("victim");
  EXPECT_TRUE(unmapped) << unmapped.error().ToString();
  ExpectNoDevicesOrStatus();
}

// /dev/mapper read-only (only `control` in it): the kernel creates the device, its node never
// appears. Map must time out with ETIMEDOUT and remove the device, the loops and the status.
TEST_F(VmFaultTest, DeviceNodeThatNeverAppearsTimesOutAndTearsDown) {
  ASSERT_TRUE(manager_->Create("victim", 4 * kMiB, {}));  // two pieces: joined by dm
  const std::string shadow = (dir_.path() / "shadow").string();
  std::filesystem::create_directories(shadow);
  ASSERT_EQ(mount("none", shadow.c_str(), "tmpfs", 0, "mode=0755"), 0) << strerror(errno);
  struct stat control {};
  ASSERT_EQ(stat("/dev/mapper/control", &control), 0);
  ASSERT_EQ(mknod((shadow + "/control").c_str(), S_IFCHR | 0600, control.st_rdev), 0);
  ASSERT_EQ(mount(shadow.c_str(), "/dev/mapper", nullptr, MS_BIND, nullptr), 0) << strerror(errno);
  ASSERT_EQ(mount(nullptr, "/dev/mapper", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr), 0)
      << strerror(errno);
  const auto start = std::chrono::steady_clock::now();
  auto r = manager_->Map("victim", std::chrono::milliseconds(500));
  const auto took = std::chrono::steady_clock::now() - start;
  umount2("/dev/mapper", MNT_DETACH);
  umount2(shadow.c_str(), MNT_DETACH);
  ASSERT_FALSE(r) << "mapped at " << *r;
  EXPECT_EQ(r.error().code, ETIMEDOUT) << r.error().ToString();
  EXPECT_LT(took, std::chrono::seconds(5));
  ExpectNoDevicesOrStatus();
  auto again = manager_->Map("victim");
  ASSERT_TRUE(again) << "maps once nodes appear again: " << again.error().ToString();
  EXPECT_TRUE(manager_->Unmap("victim"));
}

}  // namespace
}  // namespace imaged::test
