// imaged-init against a real device-mapper (label vm, inside the guest kernel via tests/vm/run):
// an ext4 data filesystem on a loop device, images written into it and recorded in lp_metadata
// exactly as ImageManager does (fallocate, write, fsync, FIEMAP), the filesystem unmounted, then
// the imaged-init binary maps them and the data is read back through /dev/mapper.
// Every device, mount and loop is removed in TearDown, even when an assertion fails.
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "dir.h"
#include "../vm/vm_env.h"
#include "dm/device_mapper.h"
#include "dm/loop_device.h"
#include "imaged/common/unique_fd.h"
#include "metadata/lp_metadata.h"
#include "metadata/status_file.h"
#include "process.h"
#include "test_util.h"

namespace imaged::init {
namespace {

using imaged::test::RunCommand;
using imaged::test::TempDir;
using test::Pattern;

constexpr uint64_t kDiskSize = 96ull << 20;

// Physical byte runs of `path` from FIEMAP (as ImageManager reads them), in file order.
std::vector<std::pair<uint64_t, uint64_t>> Fiemap(const std::string& path) {
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_TRUE(fd.valid()) << path;
  constexpr size_t kCount = 256;
  std::vector<char> buf(sizeof(fiemap) + kCount * sizeof(fiemap_extent));
  uint64_t start = 0;
  bool last = false;
  while (!last) {
    std::memset(buf.data(), 0, buf.size());
    auto* fm = reinterpret_cast<fiemap*>(buf.data());
    fm->fm_start = start;
    fm->fm_length = FIEMAP_MAX_OFFSET - start;
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = kCount;
    if (::ioctl(fd.get(), FS_IOC_FIEMAP, fm) != 0 || fm->fm_mapped_extents == 0) {
      ADD_FAILURE() << "FIEMAP " << path << ": " << std::strerror(errno);
      break;
    }
    for (uint32_t i = 0; i < fm->fm_mapped_extents; ++i) {
      const fiemap_extent& e = fm->fm_extents[i];
      EXPECT_EQ(e.fe_flags & (FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_UNKNOWN |
                              FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_ENCODED),
                0u)
          << path;
      runs.emplace_back(e.fe_physical, e.fe_length);
      start = e.fe_logical + e.fe_length;
      last = e.fe_flags & FIEMAP_EXTENT_LAST;
    }
  }
  return runs;
}

class InitVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_REQUIRE_DEVICE_MAPPER();
    prefix_ = "itest" + std::to_string(::getpid()) + "-";
    const std::string disk = (tmp_.path() / "disk").string();
    ASSERT_EQ(RunCommand({"truncate", "-s", std::to_string(kDiskSize), disk}).exit_code, 0);
    auto loop = dm::LoopDevice::Attach(disk, {.allow_buffered = true});
    ASSERT_OK(loop);
    loop_.emplace(std::move(*loop));
    auto mkfs = RunCommand({"mkfs.ext4", "-q", "-F", "-b", "4096", loop_->path()});
    ASSERT_EQ(mkfs.exit_code, 0) << mkfs.err;
    mnt_ = (tmp_.path() / "mnt").string();
    meta_ = (tmp_.path() / "meta").string();
    std::filesystem::create_directories(mnt_);
    std::filesystem::create_directories(meta_);
    Mount();
    std::filesystem::create_directories(mnt_ + "/images");

    metadata::BlockDevice entry;
    entry.partition_name = std::filesystem::path(loop_->path()).filename().string();
    entry.size = kDiskSize;
    md_ = metadata::NewImageMetadata(entry, 4096, 0);
  }

  void TearDown() override {
    // The filesystem may sit on one of our dm devices (passthrough): unmount first.
    if (mounted_) ::umount2(mnt_.c_str(), 0);
    dm::DeviceMapper dm;
    if (auto list = dm.List()) {
      for (const auto& info : *list) {
        if (info.name.rfind(prefix_, 0) == 0) (void)dm.Remove(info.name);
      }
    }
    loop_.reset();
  }

  void Mount(const std::string& device = "") {
    const std::string dev = device.empty() ? loop_->path() : device;
    ASSERT_EQ(::mount(dev.c_str(), mnt_.c_str(), "ext4", 0, nullptr), 0)
        << dev << ": " << std::strerror(errno);
    mounted_ = true;
  }
  void Unmount() {
    ASSERT_EQ(::umount2(mnt_.c_str(), 0), 0) << std::strerror(errno);
    mounted_ = false;
  }

  // One piece: fallocate + pattern data + fsync, as ImageManager leaves it.
  void WritePiece(const std::string& path, const std::string& data) {
    UniqueFd fd(::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd.valid()) << path << ": " << std::strerror(errno);
    ASSERT_EQ(::fallocate(fd.get(), 0, 0, static_cast<off_t>(data.size())), 0);
    ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
    ASSERT_EQ(::fsync(fd.get()), 0);
  }

  // Image `name` of `pieces` pieces of `piece_size` bytes, recorded in lp_metadata.
  void CreateImage(const std::string& name, uint64_t piece_size, int pieces,
                   uint32_t attributes = 0) {
    std::string list;
    std::string content;
    for (int i = 0; i < pieces; ++i) {
      const std::string piece = fmt::format("{}.img.{:04d}", name, i);
      std::string data = Pattern(piece_size, static_cast<uint8_t>(name[0] + i));
      WritePiece(mnt_ + "/images/" + piece, data);
      content += data;
      list += piece + "\n";
    }
    test::WriteFile(mnt_ + "/images/" + name + ".img", list);
    contents_[name] = content;
    Record(name, attributes);
  }

  void Record(const std::string& name, uint32_t attributes = 0) {
    std::vector<std::pair<uint64_t, uint64_t>> runs;
    const std::string& content = contents_[name];
    for (int i = 0;; ++i) {
      const std::string piece = mnt_ + fmt::format("/images/{}.img.{:04d}", name, i);
      if (!std::filesystem::exists(piece)) break;
      auto r = Fiemap(piece);
      runs.insert(runs.end(), r.begin(), r.end());
    }
    ASSERT_OK(
        metadata::SetPartition(md_, name, attributes, test::LpExtentsFor(runs, content.size())));
    ASSERT_OK(metadata::WriteImageFile(imaged::test::OpenDir(meta_), "lp_metadata", md_));
  }

  imaged::test::CommandResult Init(std::vector<std::string> args) {
    args.insert(args.begin(), IMAGED_INIT_BIN);
    args.insert(args.begin() + 2, {"--metadata-dir", meta_, "--prefix", prefix_});
    return RunCommand(args);
  }

  std::string DevicePath(const std::string& name) { return "/dev/mapper/" + prefix_ + name; }

  bool Exists(const std::string& name) {
    dm::DeviceMapper dm;
    auto info = dm.Info(prefix_ + name);
    return info && info->has_value();
  }

  void ExpectContent(const std::string& name) {
    UniqueFd fd(::open(DevicePath(name).c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << DevicePath(name) << ": " << std::strerror(errno);
    uint64_t size = 0;
    ASSERT_EQ(::ioctl(fd.get(), BLKGETSIZE64, &size), 0);
    const std::string& want = contents_[name];
    ASSERT_EQ(size, want.size() / 512 * 512);
    std::string got(size, '\0');
    ASSERT_EQ(::pread(fd.get(), got.data(), size, 0), static_cast<ssize_t>(size));
    EXPECT_TRUE(got == want.substr(0, size)) << name << ": data differs";
  }

  std::string ReadWhole(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  // errno of a one-sector write through the device, 0 when it succeeded.
  int WriteErrno(const std::string& name) {
    int fd = ::open(DevicePath(name).c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    std::string sector(512, 'w');
    int result =
        ::pwrite(fd, sector.data(), sector.size(), 0) == 512 && ::fsync(fd) == 0 ? 0 : errno;
    ::close(fd);
    return result;
  }

  TempDir tmp_;
  std::string prefix_;
  std::optional<dm::LoopDevice> loop_;
  std::string mnt_, meta_;
  bool mounted_ = false;
  metadata::LpMetadata md_;
  std::map<std::string, std::string> contents_;
};

TEST_F(InitVmTest, MappedImagesReadBackWhatWasWritten) {
  CreateImage("alpha", 1 << 20, 1);
  CreateImage("beta", 512 << 10, 3);
  Unmount();
  auto r = Init({"map"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("alpha: mapped at " + DevicePath("alpha") + " (verified)"),
            std::string::npos)
      << r.out;
  ExpectContent("alpha");
  ExpectContent("beta");
}

TEST_F(InitVmTest, MapsOnlyTheNamedImages) {
  CreateImage("alpha", 256 << 10, 1);
  CreateImage("beta", 256 << 10, 1);
  Unmount();
  auto r = Init({"map", "beta"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_FALSE(Exists("alpha"));
  EXPECT_TRUE(Exists("beta"));
}

TEST_F(InitVmTest, VerifyRefusesARecreatedImageWhileTheOthersMap) {
  CreateImage("alpha", 1 << 20, 1);
  CreateImage("beta", 1 << 20, 2);
  CreateImage("gamma", 1 << 20, 1);
  // beta's first piece is replaced by a new file with the same content (written beside it, then
  // renamed over it): lp_metadata still names the old blocks, which a filler file now owns.
  auto before = Fiemap(mnt_ + "/images/beta.img.0000");
  WritePiece(mnt_ + "/images/beta.new", contents_["beta"].substr(0, 1 << 20));
  std::filesystem::rename(mnt_ + "/images/beta.new", mnt_ + "/images/beta.img.0000");
  ::sync();
  WritePiece(mnt_ + "/images/filler", Pattern(2 << 20, 99));
  ASSERT_NE(Fiemap(mnt_ + "/images/beta.img.0000"), before) << "precondition: blocks moved";
  Unmount();

  auto r = Init({"map", "--verify"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("map \"beta\": refusing to map"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("beta.img.0000"), std::string::npos) << r.err;
  EXPECT_FALSE(Exists("beta"));
  ExpectContent("alpha");
  ExpectContent("gamma");
}

TEST_F(InitVmTest, DisabledImagesAreSkipped) {
  CreateImage("alpha", 256 << 10, 1);
  CreateImage("old", 256 << 10, 1, metadata::kPartitionAttrDisabled);
  Unmount();
  auto r = Init({"map"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("old: skipped (disabled)"), std::string::npos) << r.out;
  EXPECT_FALSE(Exists("old"));
  EXPECT_TRUE(Exists("alpha"));
  // Asked for by name, a disabled image is a failure.
  auto named = Init({"map", "old"});
  EXPECT_EQ(named.exit_code, 1);
  EXPECT_FALSE(Exists("old"));
}

TEST_F(InitVmTest, ReadonlyAttributeIsHonoured) {
  CreateImage("rw", 256 << 10, 1);
  CreateImage("ro", 256 << 10, 1, metadata::kPartitionAttrReadonly);
  Unmount();
  auto r = Init({"map"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  int e = WriteErrno("ro");
  EXPECT_TRUE(e == EPERM || e == EROFS || e == EACCES) << std::strerror(e);
  EXPECT_EQ(WriteErrno("rw"), 0);
}

TEST_F(InitVmTest, ReadonlyOptionMapsEverythingReadonly) {
  CreateImage("rw", 256 << 10, 1);
  Unmount();
  auto r = Init({"map", "--readonly"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  int e = WriteErrno("rw");
  EXPECT_TRUE(e == EPERM || e == EROFS || e == EACCES) << std::strerror(e);
}

TEST_F(InitVmTest, UnmapRemovesTheDevices) {
  CreateImage("alpha", 256 << 10, 1);
  CreateImage("beta", 256 << 10, 1);
  Unmount();
  ASSERT_EQ(Init({"map"}).exit_code, 0);
  ASSERT_TRUE(Exists("alpha"));
  auto r = Init({"unmap"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_FALSE(Exists("alpha"));
  EXPECT_FALSE(Exists("beta"));
  EXPECT_FALSE(std::filesystem::exists(DevicePath("alpha")));
}

TEST_F(InitVmTest, MappingTwiceIsIdempotent) {
  CreateImage("alpha", 256 << 10, 1);
  Unmount();
  ASSERT_EQ(Init({"map"}).exit_code, 0);
  auto again = Init({"map"});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("alpha: already mapped"), std::string::npos) << again.out;
}

TEST_F(InitVmTest, WriteStatusRecordsTheDeviceAndUnmapRemovesIt) {
  CreateImage("alpha", 256 << 10, 1);
  Unmount();
  ASSERT_EQ(Init({"map", "--write-status"}).exit_code, 0);
  auto status = metadata::ReadStatusFile(imaged::test::OpenDir(meta_), "alpha.status");
  ASSERT_OK(status);
  EXPECT_EQ(
      *status,
      (std::vector<metadata::StatusEntry>{{metadata::StatusEntry::Kind::Dm, prefix_ + "alpha"}}));
  ASSERT_EQ(Init({"unmap"}).exit_code, 0);
  EXPECT_FALSE(std::filesystem::exists(meta_ + "/alpha.status"));
}

TEST_F(InitVmTest, WithoutWriteStatusNothingIsWritten) {
  CreateImage("alpha", 256 << 10, 1);
  Unmount();
  ASSERT_EQ(Init({"map"}).exit_code, 0);
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(meta_)) {
    files.push_back(e.path().filename().string());
  }
  EXPECT_EQ(files, std::vector<std::string>{"lp_metadata"});
}

TEST_F(InitVmTest, ExplicitVerifyRefusesAMountedFilesystem) {
  CreateImage("alpha", 256 << 10, 1);
  auto r = Init({"map", "--verify"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("mounted"), std::string::npos) << r.err;
  EXPECT_FALSE(Exists("alpha"));
}

TEST_F(InitVmTest, ExplicitVerifyRefusesADiskWithoutExtFilesystem) {
  CreateImage("alpha", 256 << 10, 1);
  Unmount();
  // Scribble over the superblock: what an encrypted disk looks like to libext2fs.
  {
    UniqueFd fd(::open(loop_->path().c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    std::string junk = Pattern(4096, 7);
    ASSERT_EQ(::pwrite(fd.get(), junk.data(), junk.size(), 0), 4096);
    ASSERT_EQ(::fsync(fd.get()), 0);
  }
  auto r = Init({"map", "--verify"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("ext2/3/4"), std::string::npos) << r.err;
  EXPECT_FALSE(Exists("alpha"));
  // By default that only costs the check, with a warning.
  auto dflt = Init({"map"});
  EXPECT_EQ(dflt.exit_code, 0) << dflt.err;
  EXPECT_NE(dflt.err.find("warning: mapping without verification"), std::string::npos) << dflt.err;
  EXPECT_TRUE(Exists("alpha"));
}

TEST_F(InitVmTest, RefusesADiskOfTheWrongSize) {
  CreateImage("alpha", 256 << 10, 1);
  Unmount();
  md_.block_devices[0].size = kDiskSize * 2;
  ASSERT_OK(metadata::WriteImageFile(imaged::test::OpenDir(meta_), "lp_metadata", md_));
  auto r = Init({"map"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("not the disk the images were created on"), std::string::npos) << r.err;
  EXPECT_FALSE(Exists("alpha"));
}

TEST_F(InitVmTest, PassthroughLetsTheFilesystemMountBesideTheImages) {
  CreateImage("alpha", 256 << 10, 1);
  Unmount();
  auto r = Init({"map", "--passthrough", prefix_ + "data"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("data disk: mapped at /dev/mapper/" + prefix_ + "data"), std::string::npos)
      << r.out;
  // The raw disk is held by device-mapper; the passthrough device shares it.
  EXPECT_NE(::mount(loop_->path().c_str(), mnt_.c_str(), "ext4", 0, nullptr), 0);
  Mount("/dev/mapper/" + prefix_ + "data");
  EXPECT_EQ(ReadWhole(mnt_ + "/images/alpha.img.0000"), contents_["alpha"]);
  ExpectContent("alpha");
  Unmount();
  auto un = Init({"unmap", "--passthrough", prefix_ + "data"});
  EXPECT_EQ(un.exit_code, 0) << un.err;
  EXPECT_FALSE(Exists("data"));
  EXPECT_FALSE(Exists("alpha"));
}

TEST_F(InitVmTest, ListShowsMappedImages) {
  CreateImage("alpha", 256 << 10, 1);
  CreateImage("beta", 256 << 10, 1);
  Unmount();
  ASSERT_EQ(Init({"map", "alpha"}).exit_code, 0);
  auto r = Init({"list"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(DevicePath("alpha")), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(DevicePath("beta")), std::string::npos) << r.out;
}

// 100 images of 100 extents each, straight from lp_metadata (no filesystem, --no-verify): one
// DeviceMapper, no waits between images. Prints the time per image.
TEST_F(InitVmTest, MapsAHundredImagesOfAHundredExtents) {
  Unmount();
  for (int i = 0; i < 100; ++i) {
    std::vector<metadata::Extent> extents;
    for (int j = 0; j < 100; ++j) {
      // Every other 4 KiB block, so no two extents merge.
      metadata::AppendLinearExtent(extents, 8, static_cast<uint64_t>((i * 100 + j) * 16), 0);
    }
    ASSERT_OK(metadata::SetPartition(md_, fmt::format("img{:03d}", i), 0, extents));
  }
  ASSERT_OK(metadata::WriteImageFile(imaged::test::OpenDir(meta_), "lp_metadata", md_));
  auto start = std::chrono::steady_clock::now();
  auto r = Init({"map", "--no-verify"});
  auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::printf("mapped 100 images x 100 extents in %.3f s (%.2f ms per image)\n", elapsed,
              elapsed * 10);
  dm::DeviceMapper dm;
  auto table = dm.GetTable(prefix_ + "img099");
  ASSERT_OK(table);
  EXPECT_EQ(table->size(), 100u);
  auto un = Init({"unmap"});
  EXPECT_EQ(un.exit_code, 0) << un.err;
  EXPECT_FALSE(Exists("img000"));
}

#if defined(IMAGED_BIN) && defined(IMAGECTL_BIN)
// The whole boot story with the real daemon: images created and written through imaged, the
// daemon stopped and the filesystem unmounted (as at shutdown), imaged-init maps them from
// lp_metadata alone (as in the initramfs), then the filesystem is mounted and the daemon started
// again: it adopts the devices imaged-init made, so `imagectl unmap` removes them.
class InitDaemonVmTest : public InitVmTest {
 protected:
  std::unique_ptr<imaged::test::DaemonProcess> StartDaemon(
      const std::vector<std::string>& extra_args = {}) {
    socket_ = (tmp_.path() / "imaged.sock").string();
    std::vector<std::string> argv = {IMAGED_BIN,   "--socket",       socket_,
                                     "--data-dir", mnt_ + "/images", "--metadata-dir",
                                     meta_,        "--dm-prefix",    prefix_};
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    auto daemon = std::make_unique<imaged::test::DaemonProcess>(argv, tmp_.path());
    EXPECT_TRUE(daemon->ready()) << "imaged did not become ready";
    return daemon;
  }
  imaged::test::CommandResult Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {IMAGECTL_BIN, "--socket", socket_});
    return RunCommand(args);
  }
  // Maps the image through the daemon, writes the image's pattern over [from, size) of the
  // device (which must be `size` long by now), and unmaps it again.
  void FillThroughDaemon(const std::string& name, uint64_t size, uint64_t from = 0) {
    std::string device = MapThroughDaemon(name);
    ASSERT_FALSE(device.empty());
    WriteTail(name, device, from, size);
    auto unmap = Ctl({"unmap", name});
    ASSERT_EQ(unmap.exit_code, 0) << unmap.err;
  }
  std::string MapThroughDaemon(const std::string& name) {
    auto map = Ctl({"map", name});
    EXPECT_EQ(map.exit_code, 0) << map.err;
    return map.out.substr(0, map.out.find_last_not_of(" \n") + 1);
  }
  void WriteTail(const std::string& name, const std::string& device, uint64_t from, uint64_t size) {
    UniqueFd fd(::open(device.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << device << ": " << std::strerror(errno);
    uint64_t device_size = 0;
    ASSERT_EQ(::ioctl(fd.get(), BLKGETSIZE64, &device_size), 0);
    ASSERT_EQ(device_size, size) << device;
    std::string tail = Pattern(size - from, static_cast<uint8_t>(name[0] + from / (1 << 20)));
    ASSERT_EQ(::pwrite(fd.get(), tail.data(), tail.size(), static_cast<off_t>(from)),
              static_cast<ssize_t>(tail.size()));
    ASSERT_EQ(::fsync(fd.get()), 0);
    contents_[name].resize(from);
    contents_[name] += tail;
  }
  std::string socket_;
};

TEST_F(InitDaemonVmTest, ImagesFromTheDaemonMapAtBootAndAreAdoptedLater) {
  {
    auto daemon = StartDaemon();
    ASSERT_TRUE(daemon->ready());
    ASSERT_EQ(Ctl({"create", "alpha", "3M"}).exit_code, 0);
    ASSERT_EQ(Ctl({"create", "beta", "1M"}).exit_code, 0);
    FillThroughDaemon("alpha", 3 << 20);
    FillThroughDaemon("beta", 1 << 20);
    EXPECT_EQ(WIFEXITED(daemon->Stop()) ? 0 : 1, 0);
  }
  Unmount();

  // The images hold the disk now, so the filesystem is mounted through the passthrough device.
  auto map = Init({"map", "--verify", "--passthrough", prefix_ + "data"});
  ASSERT_EQ(map.exit_code, 0) << map.out << map.err;
  ExpectContent("alpha");
  ExpectContent("beta");

  Mount("/dev/mapper/" + prefix_ + "data");
  auto daemon = StartDaemon();
  ASSERT_TRUE(daemon->ready());
  auto unmap = Ctl({"unmap", "alpha"});
  EXPECT_EQ(unmap.exit_code, 0) << unmap.out << unmap.err;
  EXPECT_FALSE(Exists("alpha"));
  auto unmap_beta = Ctl({"unmap", "beta"});
  EXPECT_EQ(unmap_beta.exit_code, 0) << unmap_beta.out << unmap_beta.err;
  EXPECT_FALSE(Exists("beta"));
}

// Issue 16: imaged-init builds a grown image's table from lp_metadata like any other's. The
// image grows twice: online while the daemon has it mapped on a loop device held open (the
// fixture's filesystem is not on device-mapper), within its piece, and then unmapped, past the
// piece limit, so that it is split and imaged-init joins its pieces.
TEST_F(InitDaemonVmTest, AGrownImageMapsAtBootWithItsNewSizeAndData) {
  constexpr uint64_t kMiB = 1 << 20;
  {
    auto daemon = StartDaemon({"--max-piece-size", "2M"});
    ASSERT_TRUE(daemon->ready());
    ASSERT_EQ(Ctl({"create", "grown", "1M"}).exit_code, 0);
    FillThroughDaemon("grown", 1 * kMiB);

    std::string device = MapThroughDaemon("grown");
    ASSERT_FALSE(device.empty());
    UniqueFd held(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(held.valid()) << device << ": " << std::strerror(errno);
    auto online = Ctl({"resize", "grown", "2M"});
    ASSERT_EQ(online.exit_code, 0) << online.out << online.err;
    WriteTail("grown", device, 1 * kMiB, 2 * kMiB);
    held.reset();
    ASSERT_EQ(Ctl({"unmap", "grown"}).exit_code, 0);

    auto offline = Ctl({"resize", "grown", "+1M"});
    ASSERT_EQ(offline.exit_code, 0) << offline.out << offline.err;
    FillThroughDaemon("grown", 3 * kMiB, 2 * kMiB);
    EXPECT_TRUE(std::filesystem::exists(mnt_ + "/images/grown.img.0001"))
        << "precondition: the grown image is split";
    EXPECT_EQ(WIFEXITED(daemon->Stop()) ? 0 : 1, 0);
  }
  Unmount();

  auto map = Init({"map", "--verify", "--passthrough", prefix_ + "data"});
  ASSERT_EQ(map.exit_code, 0) << map.out << map.err;
  ExpectContent("grown");
  auto unmap = Init({"unmap"});
  EXPECT_EQ(unmap.exit_code, 0) << unmap.err;
  EXPECT_FALSE(Exists("grown"));
}

// The daemon and imaged-init build and compare tables with the same code, read-only flag
// included: a read-only mapping of a writable image (imaged-init --readonly) is a true view of
// it and is adopted; a writable mapping of a read-only image is not what either would make and
// is torn down (the daemon used to compare targets only and adopted it).
TEST_F(InitDaemonVmTest, TheDaemonAdoptsWhatImagedInitMapsAndNothingWritableThatShouldNotBe) {
  {
    auto daemon = StartDaemon();
    ASSERT_TRUE(daemon->ready());
    ASSERT_EQ(Ctl({"create", "rw", "1M"}).exit_code, 0);
    ASSERT_EQ(Ctl({"create", "ro", "1M", "--readonly"}).exit_code, 0);
    EXPECT_EQ(WIFEXITED(daemon->Stop()) ? 0 : 1, 0);
  }
  Unmount();
  auto map = Init({"map", "--readonly", "--passthrough", prefix_ + "data"});
  ASSERT_EQ(map.exit_code, 0) << map.out << map.err;
  // Replace imaged-init's read-only "ro" by a writable device over the same blocks.
  dm::DeviceMapper dm;
  auto live = dm.GetTable(prefix_ + "ro");
  ASSERT_TRUE(live) << live.error().ToString();
  dm::Table writable;
  for (const auto& t : *live) writable.Emplace<dm::RawTarget>(t.start, t.length, t.type, t.params);
  ASSERT_TRUE(dm.Remove(prefix_ + "ro"));
  auto created = dm.Create(prefix_ + "ro", writable);
  ASSERT_TRUE(created) << created.error().ToString();

  Mount("/dev/mapper/" + prefix_ + "data");
  auto daemon = StartDaemon();
  ASSERT_TRUE(daemon->ready());
  EXPECT_FALSE(Exists("ro")) << "a writable mapping of a read-only image was adopted";
  EXPECT_TRUE(Exists("rw"));
  auto unmap = Ctl({"unmap", "rw"});
  EXPECT_EQ(unmap.exit_code, 0) << unmap.out << unmap.err;
  EXPECT_FALSE(Exists("rw"));
}
#endif

}  // namespace
}  // namespace imaged::init
