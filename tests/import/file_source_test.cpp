// FileSource: every read returns the file's bytes whatever its alignment, and large aligned
// reads bypass the page cache (label host: a real ext4 on a loop device, so O_DIRECT works
// whatever the temp dir is).
#include <sys/mman.h>

#include <cstdlib>
#include <memory>

#include "bytes.h"
#include "fs_fixture.h"
#include "import_test_util.h"

namespace imaged::import::test {
namespace {

using imaged::test::Aligned;
using imaged::test::Pattern;

// Pages of [offset, offset+length) of `path` in the page cache.
size_t ResidentPages(const std::string& path, uint64_t offset, uint64_t length) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  void* map = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
  ::close(fd);
  EXPECT_NE(map, MAP_FAILED);
  std::vector<unsigned char> vec(length / 4096);
  EXPECT_EQ(mincore(map, length, vec.data()), 0);
  munmap(map, length);
  size_t resident = 0;
  for (unsigned char v : vec) resident += v & 1;
  return resident;
}

// Writes `bytes`, makes them durable and drops them from the page cache.
void WriteUncached(const std::string& path, const Bytes& bytes) {
  WriteAll(path, bytes);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fsync(fd), 0);
  ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  ::close(fd);
}

class FileSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_FS("ext4");
    fs_.emplace("ext4", 64ull << 20);
    path_ = fs_->Path("source");
    bytes_ = Pattern<Bytes>((8 << 20) + 5000);  // ends past the last whole 4 KiB block
    WriteUncached(path_, bytes_);
  }
  std::optional<imaged::test::LoopFilesystem> fs_;
  std::string path_;
  Bytes bytes_;
};

TEST_F(FileSourceTest, LargeAlignedReadsBypassThePageCache) {
  auto source = FileSource::Open(path_);
  ASSERT_TRUE(source) << source.error().ToString();
  ASSERT_TRUE((*source)->direct()) << "ext4 supports O_DIRECT";
  const size_t len = 1 << 20;
  auto buf = Aligned(len);
  ASSERT_TRUE((*source)->ReadAt(buf.get(), len, 2 << 20));
  EXPECT_EQ(0, std::memcmp(buf.get(), &bytes_[2 << 20], len));
  EXPECT_EQ(ResidentPages(path_, 2 << 20, len), 0u) << "the read went through the page cache";

  // Small reads go through the cache (and its readahead).
  ASSERT_TRUE((*source)->ReadAt(buf.get(), 4096, 5 << 20));
  EXPECT_EQ(0, std::memcmp(buf.get(), &bytes_[5 << 20], 4096));
  EXPECT_GT(ResidentPages(path_, 5 << 20, 4096), 0u);
}

TEST_F(FileSourceTest, EveryAlignmentReadsTheFilesBytes) {
  auto source = FileSource::Open(path_);
  ASSERT_TRUE(source) << source.error().ToString();
  auto buf = Aligned(4 << 20);
  struct Case {
    uint64_t offset;
    size_t length;
    size_t buffer_offset;  // into the aligned buffer: 0 keeps it aligned
  };
  const uint64_t size = bytes_.size();
  const uint64_t last_block = size / 4096 * 4096;
  for (const Case& c :
       {Case{0, 1 << 20, 0}, Case{4096, 3 << 20, 0}, Case{512, 1 << 20, 0},
        Case{0, (1 << 20) + 512, 0}, Case{0, 1 << 20, 512}, Case{size - (1 << 20), 1 << 20, 0},
        Case{last_block, size - last_block, 0}, Case{1, 7, 3}}) {
    std::memset(buf.get(), 0xEE, 4 << 20);
    auto r = (*source)->ReadAt(buf.get() + c.buffer_offset, c.length, c.offset);
    ASSERT_TRUE(r) << r.error().ToString() << " at " << c.offset;
    EXPECT_EQ(0, std::memcmp(buf.get() + c.buffer_offset, &bytes_[c.offset], c.length))
        << "offset " << c.offset << " length " << c.length;
  }
  auto past = (*source)->ReadAt(buf.get(), 1 << 20, size - 4096);
  ASSERT_FALSE(past);
  EXPECT_EQ(past.error().code, EINVAL);
}

TEST_F(FileSourceTest, AFileThatShrankAfterOpenFailsInsteadOfReadingShort) {
  auto source = FileSource::Open(path_);
  ASSERT_TRUE(source) << source.error().ToString();
  ASSERT_EQ(truncate(path_.c_str(), 1 << 20), 0);
  auto buf = Aligned(1 << 20);
  for (size_t len : {size_t{1} << 20, size_t{4096}}) {
    auto r = (*source)->ReadAt(buf.get(), len, 4 << 20);
    ASSERT_FALSE(r) << len;
    EXPECT_EQ(r.error().code, EINVAL) << r.error().ToString();
  }
  EXPECT_TRUE((*source)->direct()) << "a short file is no reason to give up O_DIRECT";
}

TEST_F(FileSourceTest, AWriteOnlyFdIsNeverReopenedForReading) {
  UniqueFd fd(::open(path_.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(fd);
  auto source = FileSource::FromFd(std::move(fd), path_);
  ASSERT_TRUE(source) << source.error().ToString();
  EXPECT_FALSE((*source)->direct());
  auto buf = Aligned(1 << 20);
  auto r = (*source)->ReadAt(buf.get(), 1 << 20, 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EBADF) << r.error().ToString();
}

}  // namespace
}  // namespace imaged::import::test
