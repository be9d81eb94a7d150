// Extents checked against independent truth: on ext4, libext2fs walking the inode's block map
// in the unmounted image; everywhere, `filefrag -v`.
#include <ext2fs/ext2fs.h>
#include <unistd.h>

#include <memory>
#include <regex>
#include <sstream>

#include <gtest/gtest.h>

#include <fiemap/fiemap_writer.h>

#include "fiemap_at.h"
#include "fs_fixture.h"

namespace imaged::fiemap {
namespace {

using test::LoopFilesystem;
using test::RunCommand;

// Merges adjacent extents the plain way, independently of the library's merging.
std::vector<Extent> Merge(const std::vector<Extent>& in) {
  std::vector<Extent> out;
  for (const auto& e : in) {
    if (!out.empty() && out.back().logical + out.back().length == e.logical &&
        out.back().physical + out.back().length == e.physical) {
      out.back().length += e.length;
    } else {
      out.push_back(e);
    }
  }
  return out;
}

// Leaves free space fragmented: ten 2 MiB files, every other one deleted.
void FragmentFreeSpace(const LoopFilesystem& fs) {
  for (int i = 0; i < 10; ++i) {
    auto w = test::CreateAt(fs.Path("frag" + std::to_string(i)), 2 << 20);
    ASSERT_TRUE(w) << w.error().ToString();
  }
  for (int i = 0; i < 10; i += 2) ASSERT_EQ(unlink(fs.Path("frag" + std::to_string(i)).c_str()), 0);
  sync();
}

struct BlockWalk {
  uint64_t block_size;
  std::vector<Extent> extents;
};

int CollectBlock(ext2_filsys, blk64_t* blocknr, e2_blkcnt_t blockcnt, blk64_t, int, void* priv) {
  auto* walk = static_cast<BlockWalk*>(priv);
  if (blockcnt >= 0) {
    walk->extents.push_back(Extent{static_cast<uint64_t>(blockcnt) * walk->block_size,
                                   *blocknr * walk->block_size, walk->block_size});
  }
  return 0;
}

// The file's blocks as libext2fs sees them in the (unmounted) image.
std::vector<Extent> Ext2fsExtents(const std::string& image, const std::string& name) {
  ext2_filsys fs = nullptr;
  errcode_t err = ext2fs_open(image.c_str(), EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs);
  EXPECT_EQ(err, 0) << "ext2fs_open: " << error_message(err);
  if (err) return {};
  std::unique_ptr<struct struct_ext2_filsys, void (*)(ext2_filsys)> hold(
      fs, [](ext2_filsys f) { ext2fs_close_free(&f); });
  ext2_ino_t ino = 0;
  err = ext2fs_namei(fs, EXT2_ROOT_INO, EXT2_ROOT_INO, name.c_str(), &ino);
  EXPECT_EQ(err, 0) << "ext2fs_namei: " << error_message(err);
  if (err) return {};
  BlockWalk walk{fs->blocksize, {}};
  err = ext2fs_block_iterate3(fs, ino, BLOCK_FLAG_READ_ONLY | BLOCK_FLAG_DATA_ONLY, nullptr,
                              CollectBlock, &walk);
  EXPECT_EQ(err, 0) << "ext2fs_block_iterate3: " << error_message(err);
  return Merge(walk.extents);
}

// `filefrag -v -b512` of a file, in bytes.
std::vector<Extent> FilefragExtents(const std::string& path) {
  auto r = RunCommand({"filefrag", "-v", "-s", "-b512", path});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<Extent> out;
  std::regex line(R"(^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*(\d+)\.\.\s*(\d+):\s*(\d+):)");
  std::istringstream in(r.out);
  std::string l;
  while (std::getline(in, l)) {
    std::smatch m;
    if (!std::regex_search(l, m, line)) continue;
    uint64_t logical = std::stoull(m[1]), physical = std::stoull(m[3]), len = std::stoull(m[5]);
    out.push_back(Extent{logical * 512, physical * 512, len * 512});
  }
  return Merge(out);
}

TEST(Ext2fsTruth, ExtentsMatchTheInodeBlockMapOfTheUnmountedImage) {
  IMAGED_SKIP_UNLESS_FS("ext4");
  LoopFilesystem fs("ext4", 128ull << 20);
  ASSERT_NO_FATAL_FAILURE(FragmentFreeSpace(fs));
  std::vector<Extent> reported;
  {
    // Scoped: the writer keeps its directory open, which would keep the fs busy.
    auto w = test::CreateAt(fs.Path("image"), 24 << 20);
    ASSERT_TRUE(w) << w.error().ToString();
    reported = w->extents();
  }
  EXPECT_GT(reported.size(), 1u) << "expected a fragmented file";
  fs.Unmount();
  EXPECT_EQ(Ext2fsExtents(fs.backing_file(), "image"), reported);
}

class FilefragTruth : public ::testing::TestWithParam<std::string> {};

TEST_P(FilefragTruth, ExtentsMatchFilefrag) {
  IMAGED_SKIP_UNLESS_FS(GetParam());
  if (GetParam() == "vfat") {
    // filefrag falls back to FIBMAP there and prints no extent table; vfat's truth is the
    // raw-device pattern test (DataWrittenThroughTheFileIsAtThePhysicalOffsets).
    GTEST_SKIP() << "filefrag has no extent table on vfat";
  }
  LoopFilesystem fs(GetParam(),
                    GetParam() == "xfs" || GetParam() == "f2fs" ? 320ull << 20 : 128ull << 20);
  ASSERT_NO_FATAL_FAILURE(FragmentFreeSpace(fs));
  auto w = test::CreateAt(fs.Path("image"), 24 << 20);
  ASSERT_TRUE(w) << w.error().ToString();
  EXPECT_EQ(FilefragExtents(fs.Path("image")), w->extents());
}

INSTANTIATE_TEST_SUITE_P(Filesystems, FilefragTruth,
                         ::testing::Values("ext4", "f2fs", "xfs", "vfat"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace imaged::fiemap
