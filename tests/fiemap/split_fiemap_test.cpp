// SplitFiemap on real filesystems (AOSP SplitFiemapTest, ported, plus positioned I/O).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include <gtest/gtest.h>

#include <fiemap/split_file.h>

#include "bytes.h"
#include "fiemap_at.h"
#include "fs_fixture.h"

namespace imaged::fiemap {
namespace {

using test::LoopFilesystem;
using test::Pattern;

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class SplitFiemapTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_FS(GetParam());
    fs_ = std::make_unique<LoopFilesystem>(GetParam(), GetParam() == "xfs"    ? 320ull << 20
                                                       : GetParam() == "f2fs" ? 256ull << 20
                                                                              : 128ull << 20);
    list_ = fs_->Path("image.img");
  }
  void TearDown() override {
    if (fs_) {
      auto r = test::RemoveSplitAt(list_);
      EXPECT_TRUE(r) << r.error().ToString();
    }
  }
  std::string Piece(int i) const {
    char buf[16];
    snprintf(buf, sizeof(buf), ".%04d", i);
    return list_ + buf;
  }
  SplitFiemap::CreateOptions Pieces(uint64_t max) const {
    SplitFiemap::CreateOptions o;
    o.max_piece_size = max;
    return o;
  }
  std::string Concatenation(int pieces) const {
    std::string all;
    for (int i = 0; i < pieces; ++i) all += ReadAll(Piece(i));
    return all;
  }

  std::unique_ptr<LoopFilesystem> fs_;
  std::string list_;
};

TEST_P(SplitFiemapTest, CreateMakesPiecesAndAListFileThatOutliveTheObject) {
  {
    auto s = test::CreateSplitAt(list_, 768 * 1024, Pieces(32 * 1024));
    ASSERT_TRUE(s) << s.error().ToString();
    EXPECT_EQ(s->pieces().size(), 24u);
    EXPECT_GE(s->extents().size(), 24u);
    EXPECT_EQ(s->size(), 768u * 1024);
  }
  auto list = test::ListPiecesAt(list_);
  ASSERT_TRUE(list) << list.error().ToString();
  ASSERT_EQ(list->size(), 24u);
  for (int i = 0; i < 24; ++i) {
    EXPECT_EQ((*list)[i], Piece(i));
    EXPECT_TRUE(Exists(Piece(i)));
  }
  std::string content = ReadAll(list_);
  EXPECT_EQ(content.substr(0, 15), "image.img.0000\n");
}

TEST_P(SplitFiemapTest, OpenRevalidatesEveryPiece) {
  std::vector<Extent> created;
  {
    auto s = test::CreateSplitAt(list_, 768 * 1024, Pieces(32 * 1024));
    ASSERT_TRUE(s) << s.error().ToString();
    created = s->extents();
  }
  auto s = test::OpenSplitAt(list_);
  ASSERT_TRUE(s) << s.error().ToString();
  EXPECT_EQ(s->pieces().size(), 24u);
  EXPECT_GE(s->extents().size(), 24u);
  EXPECT_EQ(s->extents(), created);
  EXPECT_EQ(s->size(), 768u * 1024);
}

TEST_P(SplitFiemapTest, ExtentsAreLogicallyContiguousOverTheWholeImage) {
  auto s = test::CreateSplitAt(list_, 3 << 20, Pieces(1 << 20));
  ASSERT_TRUE(s) << s.error().ToString();
  uint64_t expect = 0;
  for (const auto& e : s->extents()) {
    EXPECT_EQ(e.logical, expect);
    expect += e.length;
  }
  EXPECT_EQ(expect, s->size());
}

TEST_P(SplitFiemapTest, TooManyPiecesFailsWithoutCreatingAnything) {
  auto s = test::CreateSplitAt(list_, 100 << 20, Pieces(1));
  ASSERT_FALSE(s);
  EXPECT_FALSE(Exists(Piece(0)));
  EXPECT_FALSE(Exists(Piece(1)));
  EXPECT_FALSE(Exists(list_));
}

TEST_P(SplitFiemapTest, CancelDuringCreateRemovesEverything) {
  SplitFiemap::CreateOptions o = Pieces(1 << 20);
  o.progress = [](uint64_t done, uint64_t) { return done < (3 << 20) / 2; };
  auto s = test::CreateSplitAt(list_, 3 << 20, o);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, ECANCELED);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(Exists(Piece(i))) << i;
  EXPECT_FALSE(Exists(list_));
}

TEST_P(SplitFiemapTest, ProgressCoversTheWholeImageAndEndsOnceAtTotal) {
  std::vector<uint64_t> done;
  SplitFiemap::CreateOptions o = Pieces(1 << 20);
  o.progress = [&](uint64_t d, uint64_t total) {
    EXPECT_EQ(total, 3u << 20);
    done.push_back(d);
    return true;
  };
  auto s = test::CreateSplitAt(list_, 3 << 20, o);
  ASSERT_TRUE(s) << s.error().ToString();
  ASSERT_FALSE(done.empty());
  EXPECT_EQ(done.back(), 3u << 20);
  EXPECT_EQ(std::count(done.begin(), done.end(), 3u << 20), 1);
  for (size_t i = 1; i < done.size(); ++i) {
    EXPECT_GT(done[i], done[i - 1]);
  }
}

TEST_P(SplitFiemapTest, CreateRefusesAnExistingListFile) {
  { std::ofstream(list_) << "image.img.0000\n"; }
  auto s = test::CreateSplitAt(list_, 1 << 20, Pieces(0));
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, EEXIST);
  EXPECT_EQ(ReadAll(list_), "image.img.0000\n");
}

TEST_P(SplitFiemapTest, CreateRefusesAnExistingPieceAndKeepsIt) {
  { std::ofstream(Piece(1)) << "mine"; }
  auto s = test::CreateSplitAt(list_, 2 << 20, Pieces(1 << 20));
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, EEXIST);
  EXPECT_FALSE(Exists(Piece(0)));
  EXPECT_FALSE(Exists(list_));
  EXPECT_EQ(ReadAll(Piece(1)), "mine");
}

TEST_P(SplitFiemapTest, RemoveToleratesACorruptOverlongLine) {
  // AOSP CorruptSplit: one 12,600-byte line, longer than PATH_MAX.
  std::string line;
  for (int rep = 0; rep < 100; ++rep) {
    for (char c = 0x01; c < 0x7f; ++c) line += c;
  }
  ASSERT_EQ(line.size(), 12600u);
  { std::ofstream(list_, std::ios::binary) << line << "\n"; }
  auto r = test::RemoveSplitAt(list_);
  EXPECT_TRUE(r) << r.error().ToString();
  EXPECT_FALSE(Exists(list_));
}

TEST_P(SplitFiemapTest, RemoveToleratesMissingPiecesAndRemovesOrphans) {
  {
    auto s = test::CreateSplitAt(list_, 3 << 20, Pieces(1 << 20));
    ASSERT_TRUE(s) << s.error().ToString();
  }
  ASSERT_EQ(unlink(Piece(1).c_str()), 0);
  { std::ofstream(Piece(7)) << "orphan"; }
  { std::ofstream(fs_->Path("image.img.notapiece")) << "keep"; }
  { std::ofstream(fs_->Path("other.img.0000")) << "keep"; }
  auto r = test::RemoveSplitAt(list_);
  ASSERT_TRUE(r) << r.error().ToString();
  for (int i : {0, 1, 2, 7}) EXPECT_FALSE(Exists(Piece(i))) << i;
  EXPECT_FALSE(Exists(list_));
  EXPECT_TRUE(Exists(fs_->Path("image.img.notapiece")));
  EXPECT_TRUE(Exists(fs_->Path("other.img.0000")));
}

TEST_P(SplitFiemapTest, RemoveNeverFollowsForeignNamesInTheList) {
  { std::ofstream(fs_->Path("victim")) << "keep"; }
  { std::ofstream(list_) << "victim\n../victim\n" << fs_->Path("victim") << "\n"; }
  auto r = test::RemoveSplitAt(list_);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_TRUE(Exists(fs_->Path("victim")));
  EXPECT_FALSE(Exists(list_));
}

TEST_P(SplitFiemapTest, RemoveOfAMissingImageSucceeds) {
  EXPECT_TRUE(test::RemoveSplitAt(list_));
}

TEST_P(SplitFiemapTest, ListPiecesRejectsACorruptList) {
  { std::ofstream(list_) << "image.img.0000\nvictim\n"; }
  auto l = test::ListPiecesAt(list_);
  ASSERT_FALSE(l);
  EXPECT_EQ(l.error().code, EINVAL);
}

TEST_P(SplitFiemapTest, WriteWholeFile) {
  auto s = test::CreateSplitAt(list_, 3 * 32768, Pieces(32768));
  ASSERT_TRUE(s) << s.error().ToString();
  auto data = Pattern(3 * 32768);
  ASSERT_TRUE(s->PWrite(data.data(), data.size(), 0));
  ASSERT_TRUE(s->Sync());
  EXPECT_EQ(Concatenation(3), std::string(data.begin(), data.end()));
}

TEST_P(SplitFiemapTest, WriteFileInChunksStraddlingPieceBoundaries) {
  auto s = test::CreateSplitAt(list_, 3 * 32768, Pieces(32768));
  ASSERT_TRUE(s) << s.error().ToString();
  auto data = Pattern(3 * 32768);
  for (size_t off = 0; off < data.size(); off += 1000) {
    size_t len = std::min<size_t>(1000, data.size() - off);
    auto r = s->PWrite(data.data() + off, len, off);
    ASSERT_TRUE(r) << r.error().ToString();
  }
  ASSERT_TRUE(s->Sync());
  EXPECT_EQ(Concatenation(3), std::string(data.begin(), data.end()));
}

TEST_P(SplitFiemapTest, WriteFileInChunksEndingOnBoundaries) {
  auto s = test::CreateSplitAt(list_, 3 * 32768, Pieces(32768));
  ASSERT_TRUE(s) << s.error().ToString();
  auto data = Pattern(3 * 32768);
  for (size_t off = 0; off < data.size(); off += 32768) {
    ASSERT_TRUE(s->PWrite(data.data() + off, 32768, off));
  }
  ASSERT_TRUE(s->Sync());
  EXPECT_EQ(Concatenation(3), std::string(data.begin(), data.end()));
}

TEST_P(SplitFiemapTest, WritesInAnyOrderAndReadsBackAcrossBoundaries) {
  auto s = test::CreateSplitAt(list_, 3 * 32768, Pieces(32768));
  ASSERT_TRUE(s) << s.error().ToString();
  auto data = Pattern(3 * 32768);
  // Backwards, in odd-sized chunks: a positioned API, not a cursor.
  for (size_t end = data.size(); end > 0;) {
    size_t len = std::min<size_t>(7777, end);
    ASSERT_TRUE(s->PWrite(data.data() + end - len, len, end - len));
    end -= len;
  }
  std::vector<char> back(40000);
  ASSERT_TRUE(s->PRead(back.data(), back.size(), 20000));
  EXPECT_EQ(memcmp(back.data(), data.data() + 20000, back.size()), 0);
}

TEST_P(SplitFiemapTest, WritePastEndFails) {
  auto s = test::CreateSplitAt(list_, 3 * 32768, Pieces(32768));
  ASSERT_TRUE(s) << s.error().ToString();
  auto data = Pattern(3 * 32768);
  ASSERT_TRUE(s->PWrite(data.data(), data.size(), 0));
  auto r = s->PWrite(data.data(), data.size(), data.size());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_FALSE(s->PWrite(data.data(), 2, data.size() - 1));
  std::vector<char> one(2);
  EXPECT_FALSE(s->PRead(one.data(), 2, data.size() - 1));
}

TEST_P(SplitFiemapTest, DirectIoWithAlignedBuffers) {
  auto s = test::CreateSplitAt(list_, 2 << 20, Pieces(1 << 20));
  ASSERT_TRUE(s) << s.error().ToString();
  ASSERT_TRUE(s->OpenForIo(true));
  auto buffer = test::Aligned(1 << 20);
  char* raw = buffer.get();
  auto data = Pattern(1 << 20);
  memcpy(raw, data.data(), data.size());
  // Straddles the piece boundary at 1 MiB.
  auto w = s->PWrite(raw, 1 << 20, 512 * 1024);
  ASSERT_TRUE(w) << w.error().ToString();
  memset(raw, 0, 1 << 20);
  auto r = s->PRead(raw, 1 << 20, 512 * 1024);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(memcmp(raw, data.data(), data.size()), 0);
}

TEST_P(SplitFiemapTest, DefaultPieceSizeIsTheFsMaximum) {
  auto s = test::CreateSplitAt(list_, 8 << 20, Pieces(0));
  ASSERT_TRUE(s) << s.error().ToString();
  EXPECT_EQ(s->pieces().size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Filesystems, SplitFiemapTest,
                         ::testing::Values("ext4", "f2fs", "xfs", "vfat"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace imaged::fiemap
