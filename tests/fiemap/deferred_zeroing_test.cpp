// FiemapWriter / SplitFiemap with defer_zeroing: allocated without the zero pass, written by the
// caller, completed by CompleteZeroing. Whatever the caller left unwritten must read as zeros on
// the raw device (not as the blocks' stale contents), and the extents must be plain written ones.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include <fiemap/fiemap_writer.h>
#include <fiemap/filesystem.h>
#include <fiemap/split_file.h>

#include "bytes.h"
#include "fiemap_at.h"
#include "fs_fixture.h"

namespace imaged::fiemap {
namespace {

using test::Aligned;
using test::LoopFilesystem;

constexpr uint64_t kMiB = 1 << 20;

uint64_t FsSizeFor(const std::string& fs) {
  return fs == "xfs" ? 320ull << 20 : fs == "f2fs" ? 256ull << 20 : 128ull << 20;
}

class DeferredZeroingTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_FS(GetParam());
    fs_ = std::make_unique<LoopFilesystem>(GetParam(), FsSizeFor(GetParam()));
    path_ = fs_->Path("img");
  }
  bool Unwritten() const { return GetParam() == "ext4" || GetParam() == "xfs"; }

  // Leaves `bytes` of 0xEE in freed blocks, so a new file likely gets blocks with stale data.
  void LeaveStaleData(uint64_t bytes) {
    const std::string junk = fs_->Path("junk");
    int fd = open(junk.c_str(), O_WRONLY | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    auto b = Aligned(bytes, 0xEE);
    ASSERT_EQ(pwrite(fd, b.get(), bytes, 0), static_cast<ssize_t>(bytes));
    ASSERT_EQ(fsync(fd), 0);
    close(fd);
    ASSERT_EQ(unlink(junk.c_str()), 0);
    sync();
  }

  void WriteDirect(const std::string& path, uint64_t offset, uint64_t length, uint8_t fill) {
    int fd = open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    auto b = Aligned(length, fill);
    ASSERT_EQ(pwrite(fd, b.get(), length, static_cast<off_t>(offset)),
              static_cast<ssize_t>(length));
    close(fd);
  }

  // The file's bytes as the raw device holds them at its extents.
  std::vector<uint8_t> RawContents(const std::vector<Extent>& extents, uint64_t size) {
    std::vector<uint8_t> out(size, 0x55);
    int fd = open(fs_->loop_device().c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    for (const auto& e : extents) {
      auto b = Aligned(e.length, 0);
      EXPECT_EQ(pread(fd, b.get(), e.length, static_cast<off_t>(e.physical)),
                static_cast<ssize_t>(e.length));
      std::memcpy(out.data() + e.logical, b.get(), e.length);
    }
    close(fd);
    return out;
  }

  std::unique_ptr<LoopFilesystem> fs_;
  std::string path_;
};

TEST_P(DeferredZeroingTest, DeferredFileHasNoExtentsAndCannotBeOpenedUntilCompleted) {
  FiemapWriter::CreateOptions o;
  o.defer_zeroing = true;
  auto w = test::CreateAt(path_, 4 * kMiB, o);
  ASSERT_TRUE(w) << w.error().ToString();
  if (!Unwritten()) {
    EXPECT_FALSE(w->zeroing_deferred()) << GetParam() << " zeroes at creation";
    EXPECT_FALSE(w->extents().empty());
    return;
  }
  EXPECT_TRUE(w->zeroing_deferred());
  EXPECT_TRUE(w->extents().empty());
  // The extents are unwritten: nothing may map them yet.
  EXPECT_FALSE(test::OpenAt(path_));
  ASSERT_TRUE(w->CompleteZeroing()) << path_;
  EXPECT_FALSE(w->zeroing_deferred());
  auto opened = test::OpenAt(path_);
  ASSERT_TRUE(opened) << opened.error().ToString();
  EXPECT_EQ(opened->extents(), w->extents());
}

TEST_P(DeferredZeroingTest, UnwrittenRangesReadAsZerosOnTheDeviceNotAsStaleData) {
  LeaveStaleData(16 * kMiB);
  FiemapWriter::CreateOptions o;
  o.defer_zeroing = true;
  auto w = test::CreateAt(path_, 8 * kMiB, o);
  ASSERT_TRUE(w) << w.error().ToString();
  // The caller writes some ranges, leaves others (head, middle, tail) alone.
  WriteDirect(path_, 1 * kMiB, 2 * kMiB, 0xA1);
  WriteDirect(path_, 5 * kMiB, 64 << 10, 0xB2);
  ASSERT_TRUE(w->CompleteZeroing());
  std::vector<uint8_t> expect(8 * kMiB, 0);
  std::memset(expect.data() + 1 * kMiB, 0xA1, 2 * kMiB);
  std::memset(expect.data() + 5 * kMiB, 0xB2, 64 << 10);
  const auto raw = RawContents(w->extents(), 8 * kMiB);
  ASSERT_EQ(raw.size(), expect.size());
  size_t first_bad = 0;
  while (first_bad < raw.size() && raw[first_bad] == expect[first_bad]) ++first_bad;
  EXPECT_EQ(first_bad, raw.size())
      << "byte " << first_bad << " is " << static_cast<int>(raw[first_bad]) << " on the device";
}

TEST_P(DeferredZeroingTest, FullyWrittenFileNeedsNoZeroWrites) {
  FiemapWriter::CreateOptions o;
  o.defer_zeroing = true;
  auto w = test::CreateAt(path_, 2 * kMiB, o);
  ASSERT_TRUE(w) << w.error().ToString();
  WriteDirect(path_, 0, 2 * kMiB, 0xC3);
  ASSERT_TRUE(w->CompleteZeroing());
  const auto raw = RawContents(w->extents(), 2 * kMiB);
  EXPECT_EQ(raw, std::vector<uint8_t>(2 * kMiB, 0xC3));
}

TEST_P(DeferredZeroingTest, SplitImageCompletesEveryPiece) {
  SplitFiemap::CreateOptions o;
  o.max_piece_size = 1 * kMiB;
  o.defer_zeroing = true;
  const std::string list = fs_->Path("split.img");
  auto split = test::CreateSplitAt(list, 3 * kMiB + 4096, o);
  ASSERT_TRUE(split) << split.error().ToString();
  ASSERT_EQ(split->pieces().size(), 4u);
  EXPECT_EQ(split->zeroing_deferred(), Unwritten());
  ASSERT_TRUE(split->OpenForIo(true));
  auto b = Aligned(1 * kMiB, 0xD4);
  ASSERT_TRUE(split->PWrite(b.get(), 1 * kMiB, 512 << 10));  // across pieces 0 and 1
  ASSERT_TRUE(split->CompleteZeroing());
  EXPECT_FALSE(split->zeroing_deferred());
  uint64_t covered = 0;
  for (const auto& e : split->extents()) covered += e.length;
  EXPECT_EQ(covered, split->size());
  auto reopened = test::OpenSplitAt(list);
  ASSERT_TRUE(reopened) << reopened.error().ToString();
  EXPECT_EQ(reopened->extents(), split->extents());
  ASSERT_TRUE(test::RemoveSplitAt(list));
}

INSTANTIATE_TEST_SUITE_P(Filesystems, DeferredZeroingTest,
                         ::testing::Values("ext4", "f2fs", "xfs", "vfat"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace imaged::fiemap
