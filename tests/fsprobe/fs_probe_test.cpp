// Probe against the stock mkfs tools' own superblocks, and against damaged ones.
#include "fsprobe/fs_probe.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "fs_fixture.h"
#include "process.h"

namespace imaged::fsprobe {
namespace {

using test::RunCommand;

class FsProbeTest : public ::testing::Test {
 protected:
  // mkfs on a sparse file of `size` bytes; the first kProbeBytes of the result, or empty when
  // the tool is missing.
  std::vector<uint8_t> Make(const std::vector<std::string>& mkfs, uint64_t size,
                            const std::vector<std::string>& after_file = {}) {
    if (!test::HaveProgram(mkfs.front())) return {};
    const std::string file = (tmp_.path() / "fs.img").string();
    std::filesystem::remove(file);
    { std::ofstream(file).close(); }
    std::filesystem::resize_file(file, size);
    std::vector<std::string> argv = mkfs;
    argv.push_back(file);
    argv.insert(argv.end(), after_file.begin(), after_file.end());
    auto r = RunCommand(argv);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::vector<uint8_t> head(kProbeBytes);
    int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(pread(fd, head.data(), head.size(), 0), static_cast<ssize_t>(head.size()));
    close(fd);
    return head;
  }
  test::TempDir tmp_;
};

constexpr uint64_t kMiB = 1 << 20;

TEST_F(FsProbeTest, Ext4SpanIsTheFilesystemNotTheFile) {
  // 40 MiB of filesystem in a 64 MiB file: the superblock's size, not the file's.
  auto head = Make({"mkfs.ext4", "-q", "-F", "-b", "4096"}, 64 * kMiB, {"40M"});
  ASSERT_FALSE(head.empty());
  auto found = Probe(head);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->type, "ext4");
  EXPECT_EQ(found->size_bytes, 40 * kMiB);
}

TEST_F(FsProbeTest, Ext2WithOneKiBBlocksIsFound) {
  auto head = Make({"mkfs.ext2", "-q", "-F", "-b", "1024"}, 8 * kMiB);
  ASSERT_FALSE(head.empty());
  auto found = Probe(head);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->type, "ext4");
  EXPECT_EQ(found->size_bytes, 8 * kMiB);
}

TEST_F(FsProbeTest, XfsIsFound) {
  auto head = Make({"mkfs.xfs", "-q", "-f"}, 320 * kMiB);
  if (head.empty()) GTEST_SKIP() << "mkfs.xfs not installed";
  auto found = Probe(head);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->type, "xfs");
  EXPECT_EQ(found->size_bytes, 320 * kMiB);
}

TEST_F(FsProbeTest, F2fsIsFound) {
  auto head = Make({"mkfs.f2fs", "-q", "-f"}, 64 * kMiB);
  if (head.empty()) GTEST_SKIP() << "mkfs.f2fs not installed";
  auto found = Probe(head);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->type, "f2fs");
  EXPECT_EQ(found->size_bytes, 64 * kMiB);
}

TEST_F(FsProbeTest, NothingKnownIsNothing) {
  EXPECT_FALSE(Probe(std::vector<uint8_t>(kProbeBytes, 0)));
  EXPECT_FALSE(Probe(std::vector<uint8_t>(kProbeBytes, 0xff)));
  EXPECT_FALSE(Probe({}));
  auto vfat = Make({"mkfs.vfat"}, 16 * kMiB);
  if (!vfat.empty()) {
    EXPECT_FALSE(Probe(vfat));
  }
}

// A superblock cut short or with impossible fields is not a filesystem to trust.
TEST_F(FsProbeTest, DamagedSuperblocksAreNotTrusted) {
  auto ext4 = Make({"mkfs.ext4", "-q", "-F"}, 16 * kMiB);
  ASSERT_FALSE(ext4.empty());
  ASSERT_TRUE(Probe(ext4));
  EXPECT_FALSE(Probe(std::span(ext4).first(1024 + 0x40)));  // the size fields are past the end
  auto bad_log = ext4;
  bad_log[1024 + 0x18] = 40;  // 1 KiB << 40
  EXPECT_FALSE(Probe(bad_log));
  auto no_blocks = ext4;
  std::fill_n(no_blocks.begin() + 1024 + 4, 4, 0);
  EXPECT_FALSE(Probe(no_blocks));

  std::vector<uint8_t> xfs(512, 0);
  const uint8_t magic[] = {'X', 'F', 'S', 'B', 0, 0, 0x10, 0x01};  // block size 4097
  std::copy(std::begin(magic), std::end(magic), xfs.begin());
  xfs[15] = 1;
  EXPECT_FALSE(Probe(xfs));
  // Overflow: 2^63 blocks of 4 KiB.
  std::vector<uint8_t> huge(512, 0);
  const uint8_t huge_sb[] = {'X', 'F', 'S', 'B', 0, 0, 0x10, 0x00, 0x80};
  std::copy(std::begin(huge_sb), std::end(huge_sb), huge.begin());
  EXPECT_FALSE(Probe(huge));
}

}  // namespace
}  // namespace imaged::fsprobe
