// Offline verification against real ext2/ext4 filesystems built by mkfs on plain files (no root):
// the block maps libext2fs reads must match debugfs's, and VerifyImage must accept exactly the
// lp_metadata extents that map the image's files and refuse every kind of drift.
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "init/offline_fs.h"
#include "metadata/lp_metadata.h"
#include "process.h"
#include "test_util.h"

namespace imaged::init {
namespace {

using imaged::test::RunCommand;
using imaged::test::TempDir;
using test::LpExtentsFor;
using test::Pattern;
using test::WriteFile;

constexpr uint32_t kBlock = 4096;
// x: two pieces, the last one ending 100 bytes into a block (as an image of odd size does).
constexpr uint64_t kPiece0 = 64 * 1024;
constexpr uint64_t kPiece1 = 40 * 1024 + 100;
constexpr uint64_t kImageSize = kPiece0 + kPiece1;

std::vector<std::pair<uint64_t, uint64_t>> AsPairs(const std::vector<DiskRun>& runs) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (const auto& r : runs) out.emplace_back(r.disk_offset, r.length);
  return out;
}

class OfflineFsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    staging_ = (tmp_.path() / "staging").string();
    image_ = (tmp_.path() / "fs.img").string();
    std::filesystem::create_directories(staging_ + "/sets/a/images");
    const std::string dir = staging_ + "/sets/a/images";
    WriteFile(dir + "/x.img", "x.img.0000\nx.img.0001\n");
    WriteFile(dir + "/x.img.0000", Pattern(kPiece0, 1));
    WriteFile(dir + "/x.img.0001", Pattern(kPiece1, 2));
    WriteFile(dir + "/y.img", "y.img.0000\n");
    WriteFile(dir + "/y.img.0000", Pattern(100000, 3));
    WriteFile(dir + "/filler", Pattern(256 * 1024, 4));
  }

  void MakeFs(const std::string& mkfs = "mkfs.ext4", uint64_t offset = 0) {
    std::string fs_file = offset ? image_ + ".fs" : image_;
    ASSERT_EQ(RunCommand({"truncate", "-s", "32M", fs_file}).exit_code, 0);
    auto r = RunCommand({mkfs, "-q", "-F", "-b", std::to_string(kBlock), "-d", staging_, fs_file});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    if (offset) {
      ASSERT_EQ(RunCommand({"truncate", "-s", std::to_string(offset), image_}).exit_code, 0);
      auto c = RunCommand({"sh", "-c", "cat '" + fs_file + "' >> '" + image_ + "'"});
      ASSERT_EQ(c.exit_code, 0) << c.err;
    }
  }

  void Debugfs(const std::string& request) {
    auto r = RunCommand({"debugfs", "-w", "-R", request, image_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_EQ(r.err.find("debugfs: "), std::string::npos) << request << ": " << r.err;
  }

  std::unique_ptr<OfflineFs> Open(uint64_t offset = 0) {
    auto fs = OfflineFs::Open(image_, offset);
    EXPECT_TRUE(fs) << fs.error().ToString();
    return fs ? std::move(*fs) : nullptr;
  }

  // lp_metadata extents exactly as ImageManager would record them for image x.
  std::vector<metadata::Extent> ExtentsOfX(OfflineFs& fs) {
    auto runs = fs.ImageRuns("/sets/a/images", "x");
    EXPECT_TRUE(runs) << runs.error().ToString();
    return runs ? LpExtentsFor(AsPairs(*runs), kImageSize) : std::vector<metadata::Extent>{};
  }

  TempDir tmp_;
  std::string staging_;
  std::string image_;
};

TEST_F(OfflineFsTest, FileRunsMatchDebugfsBlockList) {
  MakeFs();
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto runs = fs->FileRuns("/sets/a/images/y.img.0000");
  ASSERT_OK(runs);
  std::ostringstream ours;
  for (const auto& run : *runs) {
    for (uint64_t b = 0; b < run.length / kBlock; ++b) ours << run.disk_offset / kBlock + b << " ";
  }
  auto r = RunCommand({"debugfs", "-R", "blocks /sets/a/images/y.img.0000", image_});
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(ours.str(), r.out.substr(0, r.out.find('\n')));
}

TEST_F(OfflineFsTest, VerifyAcceptsTheExtentsImageManagerRecords) {
  MakeFs();
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto dir = VerifyImage(*fs, "/sets/a/images", 3, "x", ExtentsOfX(*fs));
  ASSERT_OK(dir);
  EXPECT_EQ(*dir, "/sets/a/images");
}

TEST_F(OfflineFsTest, VerifyFindsTheDataDirectoryBySearching) {
  MakeFs();
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto dir = VerifyImage(*fs, "", 3, "x", ExtentsOfX(*fs));
  ASSERT_OK(dir);
  EXPECT_EQ(*dir, "/sets/a/images");
}

TEST_F(OfflineFsTest, VerifySearchStopsAtTheDepthLimit) {
  MakeFs();
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto dir = VerifyImage(*fs, "", 2, "x", ExtentsOfX(*fs));
  ASSERT_FALSE(dir);
  EXPECT_NE(dir.error().message.find("--data-path-in-fs"), std::string::npos)
      << dir.error().ToString();
}

TEST_F(OfflineFsTest, VerifyRefusesExtentsShiftedByOneBlock) {
  MakeFs();
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto extents = ExtentsOfX(*fs);
  ASSERT_FALSE(extents.empty());
  extents[0].target_data += kBlock / metadata::kSectorSize;
  auto r = VerifyImage(*fs, "/sets/a/images", 3, "x", extents);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("at image byte 0: lp_metadata extent 0"), std::string::npos)
      << r.error().ToString();
}

TEST_F(OfflineFsTest, VerifyRefusesExtentsShorterThanTheFiles) {
  MakeFs();
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto extents = ExtentsOfX(*fs);
  extents.back().num_sectors -= 2 * kBlock / metadata::kSectorSize;
  auto r = VerifyImage(*fs, "/sets/a/images", 3, "x", extents);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("maps only"), std::string::npos) << r.error().ToString();
}

TEST_F(OfflineFsTest, VerifyRefusesExtentsLongerThanTheFiles) {
  MakeFs();
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto extents = ExtentsOfX(*fs);
  extents.back().num_sectors += 2 * kBlock / metadata::kSectorSize;
  auto r = VerifyImage(*fs, "/sets/a/images", 3, "x", extents);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("the files hold only"), std::string::npos)
      << r.error().ToString();
}

TEST_F(OfflineFsTest, VerifyRefusesAFileRecreatedOnOtherBlocks) {
  MakeFs();
  std::vector<metadata::Extent> recorded;
  {
    auto fs = Open();
    ASSERT_TRUE(fs);
    recorded = ExtentsOfX(*fs);
  }
  // Free piece 0, let another file take its blocks, then write piece 0 again elsewhere.
  WriteFile((tmp_.path() / "piece0").string(), Pattern(kPiece0, 1));
  Debugfs("rm /sets/a/images/x.img.0000");
  Debugfs("write " + (tmp_.path() / "piece0").string() + " /sets/a/images/other");
  Debugfs("write " + (tmp_.path() / "piece0").string() + " /sets/a/images/x.img.0000");
  auto fs = Open();
  ASSERT_TRUE(fs);
  ASSERT_NE(ExtentsOfX(*fs), recorded) << "precondition: the piece moved";
  auto r = VerifyImage(*fs, "/sets/a/images", 3, "x", recorded);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("x.img.0000"), std::string::npos) << r.error().ToString();
}

TEST_F(OfflineFsTest, VerifyRefusesUnwrittenExtents) {
  MakeFs();
  std::vector<metadata::Extent> recorded;
  {
    auto fs = Open();
    ASSERT_TRUE(fs);
    auto runs = fs->ImageRuns("/sets/a/images", "y");
    ASSERT_OK(runs);
    recorded = LpExtentsFor(AsPairs(*runs), 100000);
  }
  // Same blocks, but now unwritten: reads through the file give zeros, the disk gives old data.
  Debugfs("punch /sets/a/images/y.img.0000 3 5");
  Debugfs("fallocate /sets/a/images/y.img.0000 3 5");
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto r = VerifyImage(*fs, "/sets/a/images", 3, "y", recorded);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("unwritten"), std::string::npos) << r.error().ToString();
}

TEST_F(OfflineFsTest, VerifyRefusesAHole) {
  MakeFs();
  Debugfs("punch /sets/a/images/y.img.0000 2 2");
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto runs = fs->FileRuns("/sets/a/images/y.img.0000");
  ASSERT_FALSE(runs);
  EXPECT_NE(runs.error().message.find("hole at file block 2"), std::string::npos)
      << runs.error().ToString();
}

TEST_F(OfflineFsTest, VerifyRefusesAMissingPieceList) {
  MakeFs();
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto r =
      VerifyImage(*fs, "/sets/a/images", 3, "nosuch", {{8, metadata::kTargetTypeLinear, 0, 0}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT) << r.error().ToString();
}

TEST_F(OfflineFsTest, VerifyWorksOnBlockMappedExt2Files) {
  MakeFs("mkfs.ext2");
  auto fs = Open();
  ASSERT_TRUE(fs);
  auto extents = ExtentsOfX(*fs);
  ASSERT_FALSE(extents.empty());
  ASSERT_OK(VerifyImage(*fs, "/sets/a/images", 3, "x", extents));
  extents[0].target_data += 8;
  EXPECT_FALSE(VerifyImage(*fs, "/sets/a/images", 3, "x", extents));
}

TEST_F(OfflineFsTest, RunsIncludeTheFilesystemOffsetOnTheDisk) {
  constexpr uint64_t kOffset = 1 << 20;
  MakeFs("mkfs.ext4", kOffset);
  auto fs = Open(kOffset);
  ASSERT_TRUE(fs);
  auto runs = fs->FileRuns("/sets/a/images/y.img.0000");
  ASSERT_OK(runs);
  // The first data block of the file, read straight from the disk, is the file's first block.
  std::ifstream disk(image_, std::ios::binary);
  disk.seekg(static_cast<std::streamoff>((*runs)[0].disk_offset));
  std::string block(kBlock, '\0');
  disk.read(block.data(), kBlock);
  EXPECT_EQ(block, Pattern(100000, 3).substr(0, kBlock));
  ASSERT_OK(VerifyImage(*fs, "", 3, "x", ExtentsOfX(*fs)));
}

TEST_F(OfflineFsTest, OpenSaysNotExtForOtherData) {
  WriteFile(image_, Pattern(4 << 20, 9));
  Unverifiable why = Unverifiable::kNone;
  auto fs = OfflineFs::Open(image_, 0, &why);
  ASSERT_FALSE(fs);
  EXPECT_EQ(why, Unverifiable::kNotExt) << fs.error().ToString();
}

TEST_F(OfflineFsTest, OpenRefusesAJournalThatNeedsRecovery) {
  MakeFs();
  Debugfs("feature needs_recovery");
  Unverifiable why = Unverifiable::kNone;
  auto fs = OfflineFs::Open(image_, 0, &why);
  ASSERT_FALSE(fs);
  EXPECT_EQ(why, Unverifiable::kNeedsRecovery) << fs.error().ToString();
}

TEST(CompareExtentsTest, RefusesAnExtentOnAnotherBlockDevice) {
  std::vector<DiskRun> runs{{0, 8192, "/f", 0}};
  auto r = CompareExtents({{16, metadata::kTargetTypeLinear, 0, 1}}, runs, 4096);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("not a LINEAR extent"), std::string::npos);
}

TEST(CompareExtentsTest, AcceptsExtentsSplitDifferentlyFromTheRuns) {
  // lp merges physically contiguous pieces; the files may split them anywhere.
  std::vector<DiskRun> runs{{4096, 4096, "/a", 0}, {8192, 8192, "/b", 0}};
  ASSERT_OK(CompareExtents(
      {{8, metadata::kTargetTypeLinear, 8, 0}, {16, metadata::kTargetTypeLinear, 16, 0}}, runs,
      4096));
  ASSERT_OK(CompareExtents({{24, metadata::kTargetTypeLinear, 8, 0}}, runs, 4096));
}

}  // namespace
}  // namespace imaged::init
