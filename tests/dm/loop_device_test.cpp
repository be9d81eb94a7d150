// LoopDevice on this machine's kernel (root; loop devices). Every loop is attached by the test
// itself through LoopDevice and detached by RAII, even when an assertion fails.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "dm/loop_device.h"
#include "imaged/common/unique_fd.h"
#include "process.h"
#include "test_util.h"

namespace imaged::dm {
namespace {

using test::Aligned;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

std::string SysBlock(const std::string& loop_path, const std::string& rel) {
  return ReadFile("/sys/block/" + loop_path.substr(loop_path.rfind('/') + 1) + "/" + rel);
}

class LoopDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (loop devices)";
    if (access("/dev/loop-control", F_OK) != 0) GTEST_SKIP() << "no /dev/loop-control";
  }

  // A file of `size` bytes in the test's temp dir, filled with `fill`.
  std::string MakeFile(const std::string& name, size_t size, char fill = 0) {
    std::string path = (tmp_.path() / name).string();
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    EXPECT_TRUE(fd.valid()) << path << ": " << strerror(errno);
    std::string data(size, fill);
    EXPECT_EQ(pwrite(fd.get(), data.data(), data.size(), 0), static_cast<ssize_t>(size));
    return path;
  }

  // The loop must be gone from the file: nothing left behind by a test.
  void TearDown() override {
    for (const auto& f : files_) {
      auto loops = LoopDevice::FindByBackingFile(f);
      if (loops) {
        EXPECT_TRUE(loops->empty()) << "loop left on " << f;
      }
    }
  }

  std::string Tracked(std::string file) {
    files_.push_back(file);
    return file;
  }

  test::TempDir tmp_;
  std::vector<std::string> files_;
};

TEST_F(LoopDeviceTest, AttachesFileWithDirectIo) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  auto loop = LoopDevice::Attach(file, {});
  ASSERT_OK(loop);
  EXPECT_TRUE(loop->direct_io());
  EXPECT_EQ(SysBlock(loop->path(), "loop/dio"), "1");
  struct stat st {};
  ASSERT_EQ(stat(loop->path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISBLK(st.st_mode));
  EXPECT_EQ(st.st_rdev, loop->dev());
  EXPECT_NE(loop->path().find("/dev/loop"), std::string::npos);
}

TEST_F(LoopDeviceTest, BackingFileIsTheAttachedFile) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  auto loop = LoopDevice::Attach(file, {});
  ASSERT_OK(loop);
  auto backing = LoopDevice::BackingFile(loop->path());
  ASSERT_OK(backing);
  EXPECT_EQ(*backing, file);
}

TEST_F(LoopDeviceTest, ReadOnlyLoopRefusesWrites) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  auto loop = LoopDevice::Attach(file, {.read_only = true});
  ASSERT_OK(loop);
  EXPECT_EQ(SysBlock(loop->path(), "ro"), "1");
  UniqueFd rw(open(loop->path().c_str(), O_RDWR | O_CLOEXEC));
  if (rw) {
    auto buf = Aligned(4096, 'x');
    EXPECT_LT(pwrite(rw.get(), buf.get(), 4096, 0), 0);
  } else {
    EXPECT_EQ(errno, EROFS);
  }
}

TEST_F(LoopDeviceTest, BlockSizeDefaultsToTheDiskUnderTheFile) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  struct stat st {};
  ASSERT_EQ(stat(file.c_str(), &st), 0);
  std::string sys =
      "/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
  std::string want = ReadFile(sys + "/queue/logical_block_size");
  if (want.empty()) want = ReadFile(sys + "/../queue/logical_block_size");
  if (want.empty()) want = "512";
  auto loop = LoopDevice::Attach(file, {});
  ASSERT_OK(loop);
  EXPECT_EQ(std::to_string(loop->block_size()), want);
  EXPECT_EQ(SysBlock(loop->path(), "queue/logical_block_size"), want);
}

TEST_F(LoopDeviceTest, ExplicitBlockSizeIsApplied) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  auto loop = LoopDevice::Attach(file, {.block_size = 4096});
  ASSERT_OK(loop);
  UniqueFd fd(open(loop->path().c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  int ssz = 0;
  ASSERT_EQ(ioctl(fd.get(), BLKSSZGET, &ssz), 0);
  EXPECT_EQ(ssz, 4096);
}

TEST_F(LoopDeviceTest, InvalidBlockSizeIsRefused) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  ASSERT_ERRNO(LoopDevice::Attach(file, {.block_size = 1000}), EINVAL);
  ASSERT_ERRNO(LoopDevice::Attach(file, {.block_size = 8192}), EINVAL);
}

TEST_F(LoopDeviceTest, SizeLimitGivesExactSize) {
  std::string file = Tracked(MakeFile("img", (1 << 20) + 64 * 1024));
  auto loop = LoopDevice::Attach(file, {.size_limit = 1 << 20});
  ASSERT_OK(loop);
  UniqueFd fd(open(loop->path().c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  uint64_t bytes = 0;
  ASSERT_EQ(ioctl(fd.get(), BLKGETSIZE64, &bytes), 0);
  EXPECT_EQ(bytes, 1u << 20);
}

TEST_F(LoopDeviceTest, SizeLimitBeyondTheFileIsRefused) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  ASSERT_ERRNO(LoopDevice::Attach(file, {.size_limit = 2 << 20}), EINVAL);
}

TEST_F(LoopDeviceTest, UnalignedSizeLimitIsRefused) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  ASSERT_ERRNO(LoopDevice::Attach(file, {.block_size = 4096, .size_limit = 4096 + 512}), EINVAL);
}

uint64_t DeviceBytes(int fd) {
  uint64_t bytes = 0;
  EXPECT_EQ(ioctl(fd, BLKGETSIZE64, &bytes), 0) << strerror(errno);
  return bytes;
}

// Online grow: the same node and dev_t, an open descriptor sees the new size, the data stays.
TEST_F(LoopDeviceTest, ResizeGrowsTheLoopInPlace) {
  std::string file = Tracked(MakeFile("img", (1 << 20) + 4096, 'a'));
  auto loop = LoopDevice::Attach(file, {.size_limit = 1 << 20});
  ASSERT_OK(loop);
  UniqueFd fd(open(loop->path().c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(truncate(file.c_str(), 3 << 20), 0);
  ASSERT_OK(LoopDevice::Resize(loop->path(), 2 << 20));
  EXPECT_EQ(DeviceBytes(fd.get()), 2u << 20);
  EXPECT_EQ(*LoopDevice::SizeOf(loop->path()), 2u << 20);
  struct stat st {};
  ASSERT_EQ(stat(loop->path().c_str(), &st), 0);
  EXPECT_EQ(st.st_rdev, loop->dev());
  std::string head(4096, '\0');
  ASSERT_EQ(pread(fd.get(), head.data(), head.size(), 0), 4096);
  EXPECT_EQ(head, std::string(4096, 'a'));
  // 0: the whole file, as it is now.
  ASSERT_OK(LoopDevice::Resize(loop->path(), 0));
  EXPECT_EQ(DeviceBytes(fd.get()), 3u << 20);
}

TEST_F(LoopDeviceTest, ResizeBeyondTheFileIsRefusedAndChangesNothing) {
  std::string file = Tracked(MakeFile("img", 2 << 20));
  auto loop = LoopDevice::Attach(file, {.size_limit = 1 << 20});
  ASSERT_OK(loop);
  ASSERT_ERRNO(LoopDevice::Resize(loop->path(), 4 << 20), EINVAL);
  EXPECT_EQ(*LoopDevice::SizeOf(loop->path()), 1u << 20);
  ASSERT_ERRNO(LoopDevice::Resize(file, 1 << 20), EINVAL);  // not a loop device
}

TEST_F(LoopDeviceTest, DataWrittenThroughTheLoopLandsInTheFile) {
  std::string file = Tracked(MakeFile("img", 1 << 20, 'a'));
  {
    auto loop = LoopDevice::Attach(file, {.offset = 8192});
    ASSERT_OK(loop);
    UniqueFd fd(open(loop->path().c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << strerror(errno);
    auto buf = Aligned(4096, 'Z');
    ASSERT_EQ(pwrite(fd.get(), buf.get(), 4096, 65536), 4096);
    ASSERT_EQ(fsync(fd.get()), 0);
  }
  UniqueFd f(open(file.c_str(), O_RDONLY | O_CLOEXEC));
  std::string got(4096 * 3, '\0');
  ASSERT_EQ(pread(f.get(), got.data(), got.size(), 65536 + 8192 - 4096),
            static_cast<ssize_t>(got.size()));
  EXPECT_EQ(got.substr(0, 4096), std::string(4096, 'a'));
  EXPECT_EQ(got.substr(4096, 4096), std::string(4096, 'Z'));
  EXPECT_EQ(got.substr(8192, 4096), std::string(4096, 'a'));
}

// Port of AOSP libdm loop_control_test (LoopControl): the loop reads back the file.
TEST_F(LoopDeviceTest, LoopReadsBackTheFile) {
  std::string hello;
  for (int i = 0; i < 1000; ++i) hello += "Hello";
  hello.resize(8192, '\0');
  std::string file = Tracked((tmp_.path() / "hello").string());
  {
    std::ofstream out(file, std::ios::binary);
    out.write(hello.data(), static_cast<std::streamsize>(hello.size()));
  }
  auto loop = LoopDevice::Attach(file, {});
  ASSERT_OK(loop);
  UniqueFd fd(open(loop->path().c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  char buf[6] = {};
  ASSERT_EQ(pread(fd.get(), buf, 6, 4995), 6);
  EXPECT_EQ(std::string(buf, 6), std::string("Hello\0", 6));
  std::string all(hello.size(), '\0');
  ASSERT_EQ(pread(fd.get(), all.data(), all.size(), 0), static_cast<ssize_t>(all.size()));
  EXPECT_EQ(all, hello);
}

TEST_F(LoopDeviceTest, FindByBackingFileFindsOnlyOurLoop) {
  std::string a = Tracked(MakeFile("a", 1 << 20));
  std::string b = Tracked(MakeFile("b", 1 << 20));
  auto loop_a = LoopDevice::Attach(a, {});
  ASSERT_OK(loop_a);
  auto found = LoopDevice::FindByBackingFile(a);
  ASSERT_OK(found);
  EXPECT_EQ(*found, std::vector<std::string>{loop_a->path()});
  auto none = LoopDevice::FindByBackingFile(b);
  ASSERT_OK(none);
  EXPECT_TRUE(none->empty());
}

TEST_F(LoopDeviceTest, FindByBackingFileFollowsTheInodeNotThePath) {
  std::string a = Tracked(MakeFile("a", 1 << 20));
  auto loop = LoopDevice::Attach(a, {});
  ASSERT_OK(loop);
  // Replace the file at that path: the loop still backs the old inode.
  std::string moved = Tracked((tmp_.path() / "moved").string());
  ASSERT_EQ(rename(a.c_str(), moved.c_str()), 0);
  MakeFile("a", 1 << 20);
  auto at_path = LoopDevice::FindByBackingFile(a);
  ASSERT_OK(at_path);
  EXPECT_TRUE(at_path->empty());
  auto at_moved = LoopDevice::FindByBackingFile(moved);
  ASSERT_OK(at_moved);
  EXPECT_EQ(*at_moved, std::vector<std::string>{loop->path()});
}

TEST_F(LoopDeviceTest, DetachFreesTheLoop) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  auto loop = LoopDevice::Attach(file, {});
  ASSERT_OK(loop);
  std::string path = loop->path();
  ASSERT_OK(loop->Detach());
  EXPECT_TRUE(loop->path().empty());
  ASSERT_ERRNO(LoopDevice::BackingFile(path), ENXIO);
  EXPECT_OK(loop->Detach());  // a second detach is a no-op
}

TEST_F(LoopDeviceTest, DestructorDetaches) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  std::string path;
  {
    auto loop = LoopDevice::Attach(file, {});
    ASSERT_OK(loop);
    path = loop->path();
  }
  ASSERT_ERRNO(LoopDevice::BackingFile(path), ENXIO);
}

TEST_F(LoopDeviceTest, MoveTransfersOwnership) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  auto loop = LoopDevice::Attach(file, {});
  ASSERT_OK(loop);
  std::string path = loop->path();
  LoopDevice moved = std::move(*loop);
  EXPECT_TRUE(loop->path().empty());
  EXPECT_EQ(moved.path(), path);
  auto backing = LoopDevice::BackingFile(path);
  ASSERT_OK(backing);  // the moved-from object did not detach it
}

TEST_F(LoopDeviceTest, ReleaseKeepsTheLoopAndDetachPathRemovesIt) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  std::string path;
  {
    auto loop = LoopDevice::Attach(file, {});
    ASSERT_OK(loop);
    path = loop->release();
    EXPECT_TRUE(loop->path().empty());
  }
  auto backing = LoopDevice::BackingFile(path);
  if (!backing) (void)LoopDevice::DetachPath(path);
  ASSERT_OK(backing);
  ASSERT_OK(LoopDevice::DetachPath(path));
  ASSERT_ERRNO(LoopDevice::BackingFile(path), ENXIO);
  EXPECT_OK(LoopDevice::DetachPath(path));  // already detached: nothing to do
}

TEST_F(LoopDeviceTest, AutoclearLoopGoesAwayAtLastClose) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  auto loop = LoopDevice::Attach(file, {.autoclear = true});
  ASSERT_OK(loop);
  std::string path = loop->path();
  EXPECT_EQ(SysBlock(path, "loop/autoclear"), "1");
  loop->release();  // our descriptor was the last user
  auto found = LoopDevice::FindByBackingFile(file);
  ASSERT_OK(found);
  EXPECT_TRUE(found->empty());
}

TEST_F(LoopDeviceTest, DetachPathRefusesWhatIsNotALoop) {
  std::string file = Tracked(MakeFile("img", 4096));
  ASSERT_ERRNO(LoopDevice::DetachPath(file), EINVAL);
  ASSERT_ERRNO(LoopDevice::DetachPath("/dev/null"), EINVAL);
  ASSERT_ERRNO(LoopDevice::DetachPath((tmp_.path() / "missing").string()), ENOENT);
}

TEST_F(LoopDeviceTest, MissingBackingFileFails) {
  ASSERT_ERRNO(LoopDevice::Attach((tmp_.path() / "missing").string(), {}), ENOENT);
}

// Several attaches racing for "the" free loop each get their own (EBUSY retry).
TEST_F(LoopDeviceTest, ConcurrentAttachesGetDistinctLoops) {
  constexpr int kThreads = 4, kPerThread = 3;
  std::vector<std::string> files;
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    files.push_back(Tracked(MakeFile("f" + std::to_string(i), 64 * 1024)));
  }
  std::vector<std::vector<LoopDevice>> loops(kThreads);
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto loop = LoopDevice::Attach(files[t * kPerThread + i], {});
        if (!loop) {
          errors[t] = loop.error().ToString();
          return;
        }
        loops[t].push_back(std::move(*loop));
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> paths;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(errors[t], "");
    for (auto& l : loops[t]) paths.insert(l.path());
  }
  EXPECT_EQ(paths.size(), static_cast<size_t>(kThreads * kPerThread));
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    auto backing = LoopDevice::BackingFile(loops[i / kPerThread][i % kPerThread].path());
    ASSERT_OK(backing);
    EXPECT_EQ(*backing, files[i]);
  }
}

// tmpfs before Linux 6.6 cannot do O_DIRECT: a direct-I/O loop must fail loudly there, and
// allow_buffered must give a working buffered loop.
TEST_F(LoopDeviceTest, DirectIoUnsupportedFailsUnlessBufferedIsAllowed) {
  struct statfs sfs {};
  if (statfs("/dev/shm", &sfs) != 0) GTEST_SKIP() << "no /dev/shm";
  std::string file = "/dev/shm/imaged-dm-test-" + std::to_string(getpid());
  files_.push_back(file);
  struct Unlink {
    std::string f;
    ~Unlink() { unlink(f.c_str()); }
  } unlink_file{file};
  {
    UniqueFd fd(open(file.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(ftruncate(fd.get(), 1 << 20), 0);
  }
  UniqueFd probe(open(file.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
  if (probe) GTEST_SKIP() << "/dev/shm supports O_DIRECT on this kernel";
  ASSERT_ERRNO(LoopDevice::Attach(file, {}), EINVAL);
  auto buffered = LoopDevice::Attach(file, {.allow_buffered = true});
  ASSERT_OK(buffered);
  EXPECT_FALSE(buffered->direct_io());
}

TEST_F(LoopDeviceTest, BufferedLoopWhenDirectIoIsOff) {
  std::string file = Tracked(MakeFile("img", 1 << 20));
  auto loop = LoopDevice::Attach(file, {.direct_io = false});
  ASSERT_OK(loop);
  EXPECT_FALSE(loop->direct_io());
  EXPECT_EQ(SysBlock(loop->path(), "loop/dio"), "0");
}

}  // namespace
}  // namespace imaged::dm
