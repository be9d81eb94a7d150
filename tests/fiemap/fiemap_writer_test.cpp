// FiemapWriter on real filesystems (AOSP fiemap_writer_test, ported), parameterised over ext4,
// f2fs, xfs and vfat. Each test builds its own filesystem on a loop device.
#include <fcntl.h>
#include <linux/f2fs.h>
#include <linux/falloc.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

#include <gtest/gtest.h>

#include <fiemap/extents.h>
#include <fiemap/fiemap_writer.h>
#include <fiemap/filesystem.h>

#include "bytes.h"
#include "fiemap_at.h"
#include "fs_fixture.h"

namespace imaged::fiemap {
namespace {

using test::LoopFilesystem;

// xfs needs >= 300 MB; f2fs keeps half of a small fs for itself.
uint64_t FsSizeFor(const std::string& fs) {
  return fs == "xfs" ? 320ull << 20 : fs == "f2fs" ? 256ull << 20 : 128ull << 20;
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

class FiemapWriterTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_FS(GetParam());
    fs_ = std::make_unique<LoopFilesystem>(GetParam(), FsSizeFor(GetParam()));
    auto info = InspectFilesystem(fs_->mount_point());
    ASSERT_TRUE(info) << info.error().ToString();
    info_ = *info;
    block_size_ = info_.block_size;
    path_ = fs_->Path(::testing::UnitTest::GetInstance()->current_test_info()->name());
    // Parameterised names contain '/'.
    for (size_t i = fs_->mount_point().size() + 1; i < path_.size(); ++i) {
      if (path_[i] == '/') path_[i] = '_';
    }
  }

  std::unique_ptr<LoopFilesystem> fs_;
  FilesystemInfo info_;
  uint64_t block_size_ = 0;
  std::string path_;
};

TEST_P(FiemapWriterTest, IdentifiesTheFilesystemAndItsLoopDevice) {
  EXPECT_EQ(FsTypeName(info_.type), GetParam());
  EXPECT_EQ(info_.fs_device, fs_->loop_device());
  EXPECT_EQ(info_.disk, fs_->loop_device());
  EXPECT_FALSE(info_.through_device_mapper);
  EXPECT_EQ(info_.disk_offset_bytes, 0u);
  EXPECT_EQ(info_.disk_size, FsSizeFor(GetParam()));
  EXPECT_EQ(info_.disk_logical_block_size, 512u);
  struct stat st;
  ASSERT_EQ(stat(fs_->loop_device().c_str(), &st), 0);
  EXPECT_EQ(info_.disk_dev, st.st_rdev);
  EXPECT_EQ(info_.fs_dev, st.st_rdev);
  EXPECT_GT(info_.free_bytes, 0u);
  EXPECT_LE(info_.free_bytes, info_.total_bytes);
}

TEST_P(FiemapWriterTest, MaxFileSizeIsTheKernelLimit) {
  if (GetParam() == "vfat") GTEST_SKIP() << "vfat cannot make sparse files";
  // Independent truth: the kernel accepts a sparse file of exactly the maximum size and refuses
  // one block more with EFBIG.
  int fd = open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(ftruncate(fd, static_cast<off_t>(info_.max_file_size)), 0) << strerror(errno);
  if (info_.max_file_size + block_size_ <= static_cast<uint64_t>(INT64_MAX)) {
    EXPECT_NE(ftruncate(fd, static_cast<off_t>(info_.max_file_size + block_size_)), 0);
    EXPECT_EQ(errno, EFBIG);
  }
  ASSERT_EQ(ftruncate(fd, 0), 0);
  close(fd);
}

TEST_P(FiemapWriterTest, CreateImpossiblyLargeFileFailsAndLeavesNoFile) {
  auto w = test::CreateAt(path_, 1099511627997184ull);
  ASSERT_FALSE(w);
  EXPECT_FALSE(Exists(path_));
}

TEST_P(FiemapWriterTest, CreateUnalignedFileRoundsUpToTheBlock) {
  auto w = test::CreateAt(path_, block_size_ + 1);
  ASSERT_TRUE(w) << w.error().ToString();
  EXPECT_EQ(w->size(), 2 * block_size_);
  EXPECT_EQ(w->block_size(), block_size_);
}

TEST_P(FiemapWriterTest, CheckFilePath) {
  auto w = test::CreateAt(path_, block_size_);
  ASSERT_TRUE(w) << w.error().ToString();
  EXPECT_EQ(w->size(), block_size_);
  EXPECT_EQ(w->path(), path_);
  EXPECT_TRUE(Exists(path_));
  EXPECT_EQ(w->fs_type(), info_.type);
  EXPECT_EQ(w->fs_dev(), info_.fs_dev);
}

TEST_P(FiemapWriterTest, FileSizeOnDiskIsTheAlignedSize) {
  auto w = test::CreateAt(path_, 16 << 20);
  ASSERT_TRUE(w) << w.error().ToString();
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), w->size());
  // Allocated, not sparse.
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, w->size());
}

TEST_P(FiemapWriterTest, ProgressForOneBlockIsExactlyOneCallAtTotal) {
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  auto w = test::CreateAt(path_, block_size_, [&](uint64_t done, uint64_t total) {
    calls.emplace_back(done, total);
    return true;
  });
  ASSERT_TRUE(w) << w.error().ToString();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], std::make_pair(block_size_, block_size_));
}

TEST_P(FiemapWriterTest, ProgressIsMonotonicAndEndsWithOneTotalCall) {
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  auto w = test::CreateAt(path_, 40 << 20, [&](uint64_t done, uint64_t total) {
    calls.emplace_back(done, total);
    return true;
  });
  ASSERT_TRUE(w) << w.error().ToString();
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.back(), std::make_pair(w->size(), w->size()));
  int at_total = 0;
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].second, w->size());
    if (calls[i].first == w->size()) ++at_total;
    if (i > 0) {
      EXPECT_GT(calls[i].first, calls[i - 1].first);
    }
  }
  EXPECT_EQ(at_total, 1);
}

TEST_P(FiemapWriterTest, CheckPinning) {
  auto w = test::CreateAt(path_, 4096);
  ASSERT_TRUE(w) << w.error().ToString();
  // Open refuses an f2fs file that is not pinned (its blocks could move).
  auto reopened = test::OpenAt(path_);
  ASSERT_TRUE(reopened) << reopened.error().ToString();
}

TEST_P(FiemapWriterTest, CheckFileCreated) {
  auto w = test::CreateAt(path_, 32768);
  ASSERT_TRUE(w) << w.error().ToString();
  int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  if (fd >= 0) close(fd);
}

TEST_P(FiemapWriterTest, ExtentsCoverTheWholeFileContiguously) {
  auto w = test::CreateAt(path_, 64 << 20);
  ASSERT_TRUE(w) << w.error().ToString();
  ASSERT_FALSE(w->extents().empty());
  uint64_t expect = 0;
  for (const auto& e : w->extents()) {
    EXPECT_EQ(e.logical, expect);
    EXPECT_GT(e.length, 0u);
    EXPECT_EQ(e.physical % info_.disk_logical_block_size, 0u);
    EXPECT_EQ(e.length % info_.disk_logical_block_size, 0u);
    EXPECT_LE(e.physical + e.length, info_.disk_size);
    expect += e.length;
  }
  EXPECT_EQ(expect, w->size());
}

TEST_P(FiemapWriterTest, FileReadsBackAsZeros) {
  // Blocks freed by an earlier file hold its data; a new image must not expose it.
  {
    int fd = open(fs_->Path("old").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    std::vector<char> junk(1 << 20, 'J');
    for (int i = 0; i < 8; ++i) ASSERT_EQ(write(fd, junk.data(), junk.size()), 1 << 20);
    fsync(fd);
    close(fd);
    ASSERT_EQ(unlink(fs_->Path("old").c_str()), 0);
    sync();
  }
  auto w = test::CreateAt(path_, 8 << 20);
  ASSERT_TRUE(w) << w.error().ToString();
  int fd = open(fs_->loop_device().c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  ASSERT_GE(fd, 0);
  auto buffer = test::Aligned(1 << 20);
  char* buf = buffer.get();
  std::vector<char> zeros(1 << 20, 0);
  for (const auto& e : w->extents()) {
    for (uint64_t off = 0; off < e.length; off += 1 << 20) {
      size_t len = static_cast<size_t>(std::min<uint64_t>(1 << 20, e.length - off));
      ASSERT_EQ(pread(fd, buf, len, static_cast<off_t>(e.physical + off)),
                static_cast<ssize_t>(len));
      ASSERT_EQ(memcmp(buf, zeros.data(), len), 0) << "non-zero at file offset " << e.logical + off;
    }
  }
  close(fd);
}

TEST_P(FiemapWriterTest, OpenExistingFileReturnsTheSameExtents) {
  auto w = test::CreateAt(path_, 8 << 20);
  ASSERT_TRUE(w) << w.error().ToString();
  auto o = test::OpenAt(path_);
  ASSERT_TRUE(o) << o.error().ToString();
  EXPECT_EQ(o->size(), w->size());
  EXPECT_EQ(o->extents(), w->extents());
  EXPECT_EQ(o->path(), path_);
}

TEST_P(FiemapWriterTest, CreateRefusesAnExistingFileAndLeavesItUntouched) {
  {
    int fd = open(path_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, "keep", 4), 4);
    close(fd);
  }
  auto w = test::CreateAt(path_, 1 << 20);
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, EEXIST);
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 4);
}

TEST_P(FiemapWriterTest, FileDeletedOnCancel) {
  auto w = test::CreateAt(path_, block_size_, [](uint64_t, uint64_t) { return false; });
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, ECANCELED);
  EXPECT_FALSE(Exists(path_));
}

TEST_P(FiemapWriterTest, CancelIsHonouredWithinOneChunk) {
  int calls = 0;
  auto w = test::CreateAt(path_, 64 << 20, [&](uint64_t done, uint64_t total) {
    ++calls;
    return false;
  });
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, ECANCELED);
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(Exists(path_));
}

TEST_P(FiemapWriterTest, CheckEmptyFile) {
  auto w = test::CreateAt(path_, 0);
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, EINVAL);
  EXPECT_FALSE(Exists(path_));
}

TEST_P(FiemapWriterTest, OpenRefusesAnEmptyFile) {
  int fd = open(path_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  close(fd);
  auto o = test::OpenAt(path_);
  ASSERT_FALSE(o);
  EXPECT_EQ(o.error().code, EINVAL);
}

TEST_P(FiemapWriterTest, OpenRefusesASparseFile) {
  if (GetParam() == "vfat") GTEST_SKIP() << "vfat has no holes";
  int fd = open(path_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
  close(fd);
  auto o = test::OpenAt(path_);
  ASSERT_FALSE(o);
  EXPECT_NE(o.error().message.find("extents"), std::string::npos) << o.error().ToString();
}

TEST_P(FiemapWriterTest, OpenRefusesUnwrittenExtents) {
  if (GetParam() == "vfat" || GetParam() == "f2fs") {
    GTEST_SKIP() << GetParam() << " has no unwritten extents";
  }
  int fd = open(path_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fallocate(fd, 0, 0, 1 << 20), 0);
  close(fd);
  auto o = test::OpenAt(path_);
  ASSERT_FALSE(o);
  EXPECT_NE(o.error().message.find("FIEMAP_EXTENT_UNWRITTEN"), std::string::npos)
      << o.error().ToString();
  EXPECT_NE(o.error().message.find("offset 0"), std::string::npos) << o.error().ToString();
}

TEST_P(FiemapWriterTest, DataWrittenThroughTheFileIsAtThePhysicalOffsets) {
  // AOSP FibmapBlockAddressing, for every fs: the extents are what dm-linear will map.
  auto w = test::CreateAt(path_, 6 << 20);
  ASSERT_TRUE(w) << w.error().ToString();
  const auto pattern = test::Pattern(w->size());
  {
    int fd = open(path_.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, pattern.data(), w->size(), 0), static_cast<ssize_t>(w->size()));
    ASSERT_EQ(fsync(fd), 0);
    close(fd);
  }
  // Extents must not have moved by writing over them.
  auto again = test::OpenAt(path_);
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(again->extents(), w->extents());
  int fd = open(fs_->loop_device().c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  ASSERT_GE(fd, 0);
  auto buffer = test::Aligned(w->size());
  char* buf = buffer.get();
  const char* expect = pattern.data();
  for (const auto& e : w->extents()) {
    ASSERT_EQ(pread(fd, buf, e.length, static_cast<off_t>(e.physical)),
              static_cast<ssize_t>(e.length));
    EXPECT_EQ(memcmp(buf, expect + e.logical, e.length), 0)
        << "extent at file offset " << e.logical << " physical " << e.physical;
  }
  close(fd);
}

TEST_P(FiemapWriterTest, FibmapAgreesWithFiemap) {
  if (GetParam() == "vfat") GTEST_SKIP() << "vfat has no FIEMAP to compare with";
  if (GetParam() == "xfs") GTEST_SKIP() << "xfs has no FIBMAP";
  auto w = test::CreateAt(path_, 4 << 20);
  ASSERT_TRUE(w) << w.error().ToString();
  int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto fib = ReadExtentsFibmap(fd, w->size());
  close(fd);
  ASSERT_TRUE(fib) << fib.error().ToString();
  EXPECT_EQ(*fib, w->extents());
}

TEST_P(FiemapWriterTest, ExtentsArePagedBeyondOneFiemapCall) {
  if (GetParam() == "vfat") GTEST_SKIP() << "vfat reads extents with FIBMAP";
  // Interleave two files' allocations block by block so each gets ~1500 extents (several
  // FIEMAP pages), then write the whole of one so its extents are written.
  const int kBlocks = 1500;
  int a = open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  int b = open(fs_->Path("other").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  if (GetParam() == "f2fs") {
    // Open refuses unpinned f2fs files; pin before allocating, as Create does.
    __u32 on = 1;
    ASSERT_EQ(ioctl(a, F2FS_IOC_SET_PIN_FILE, &on), 0) << strerror(errno);
    ASSERT_EQ(ioctl(b, F2FS_IOC_SET_PIN_FILE, &on), 0) << strerror(errno);
  }
  for (int i = 0; i < kBlocks; ++i) {
    const off_t at = static_cast<off_t>(i * block_size_);
    ASSERT_EQ(fallocate(a, 0, at, static_cast<off_t>(block_size_)), 0) << strerror(errno);
    ASSERT_EQ(fallocate(b, 0, at, static_cast<off_t>(block_size_)), 0) << strerror(errno);
  }
  std::vector<char> data(kBlocks * block_size_, 'x');
  ASSERT_EQ(pwrite(a, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  ASSERT_EQ(fsync(a), 0);
  close(a);
  close(b);
  auto o = test::OpenAt(path_);
  ASSERT_TRUE(o) << o.error().ToString();
  uint64_t covered = 0;
  for (const auto& e : o->extents()) covered += e.length;
  EXPECT_EQ(covered, kBlocks * block_size_);
  // Allocators may still group some blocks; what matters is more than one page's worth.
  if (o->extents().size() <= 512) {
    GTEST_SKIP() << GetParam() << " kept the file in " << o->extents().size() << " extents";
  }
}

INSTANTIATE_TEST_SUITE_P(Filesystems, FiemapWriterTest,
                         ::testing::Values("ext4", "f2fs", "xfs", "vfat"),
                         [](const auto& param_info) { return param_info.param; });

// AOSP FsTest: a small filesystem runs out of space cleanly.
class LowSpaceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LowSpaceTest, TooLargeForFreeSpaceIsENOSPCAndLeavesNoFile) {
  IMAGED_SKIP_UNLESS_FS(GetParam());
  LoopFilesystem fs(GetParam(), GetParam() == "xfs" ? 320ull << 20 : 64ull << 20);
  struct statfs sfs;
  ASSERT_EQ(statfs(fs.mount_point().c_str(), &sfs), 0);
  // AOSP's "nearly the whole fs", or just over the free space where that fits (vfat counts
  // only data clusters in f_blocks, all of them free).
  const uint64_t limit = std::max<uint64_t>(static_cast<uint64_t>(sfs.f_blocks) * (sfs.f_bsize - 1),
                                            static_cast<uint64_t>(sfs.f_bavail + 1) * sfs.f_bsize);
  const std::string path = fs.Path("big");
  auto w = test::CreateAt(path, limit);
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, ENOSPC) << w.error().ToString();
  EXPECT_FALSE(Exists(path));
}

TEST_P(LowSpaceTest, LargerThanTheFsMaximumIsNotENOSPC) {
  IMAGED_SKIP_UNLESS_FS(GetParam());
  LoopFilesystem fs(GetParam(), GetParam() == "xfs" ? 320ull << 20 : 64ull << 20);
  auto info = InspectFilesystem(fs.mount_point());
  ASSERT_TRUE(info);
  const uint64_t size = 16ull << 40;  // 16 TiB
  if (size <= info->max_file_size) GTEST_SKIP() << GetParam() << " accepts 16 TiB files";
  const std::string path = fs.Path("huge");
  auto w = test::CreateAt(path, size);
  ASSERT_FALSE(w);
  EXPECT_NE(w.error().code, ENOSPC);
  EXPECT_EQ(w.error().code, EFBIG) << w.error().ToString();
  EXPECT_FALSE(Exists(path));
}

INSTANTIATE_TEST_SUITE_P(Filesystems, LowSpaceTest,
                         ::testing::Values("ext4", "f2fs", "xfs", "vfat"),
                         [](const auto& param_info) { return param_info.param; });

TEST(FiemapWriterRefusal, BtrfsIsRefused) {
  IMAGED_SKIP_UNLESS_FS("btrfs");
  LoopFilesystem fs("btrfs", 256ull << 20);
  auto w = test::CreateAt(fs.Path("x"), 1 << 20);
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, EOPNOTSUPP);
  EXPECT_NE(w.error().message.find("btrfs"), std::string::npos);
  EXPECT_FALSE(Exists(fs.Path("x")));
}

}  // namespace
}  // namespace imaged::fiemap
