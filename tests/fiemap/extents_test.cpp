// ValidateAndMerge / MergeExtents on synthetic FIEMAP output: the rules every real file meets.
#include <gtest/gtest.h>

#include <fiemap/extents.h>

namespace imaged::fiemap {
namespace {

fiemap_extent Raw(uint64_t logical, uint64_t physical, uint64_t length, uint32_t flags = 0) {
  fiemap_extent e{};
  e.fe_logical = logical;
  e.fe_physical = physical;
  e.fe_length = length;
  e.fe_flags = flags;
  return e;
}

constexpr uint32_t kLast = FIEMAP_EXTENT_LAST;

TEST(ValidateAndMerge, MergesLogicallyAndPhysicallyContiguousExtents) {
  auto r = ValidateAndMerge(
      {Raw(0, 8192, 4096), Raw(4096, 12288, 4096), Raw(8192, 16384, 4096, kLast)}, 12288);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, (std::vector<Extent>{{0, 8192, 12288}}));
}

TEST(ValidateAndMerge, KeepsPhysicallyDiscontiguousExtentsApart) {
  auto r = ValidateAndMerge({Raw(0, 8192, 4096), Raw(4096, 40960, 4096, kLast)}, 8192);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, (std::vector<Extent>{{0, 8192, 4096}, {4096, 40960, 4096}}));
}

TEST(ValidateAndMerge, AcceptsMergedFlag) {
  auto r = ValidateAndMerge({Raw(0, 4096, 4096, FIEMAP_EXTENT_MERGED | kLast)}, 4096);
  EXPECT_TRUE(r);
}

TEST(ValidateAndMerge, RejectsEachUnsupportedFlagNamingItAndTheOffset) {
  const std::pair<uint32_t, const char*> flags[] = {
      {FIEMAP_EXTENT_UNKNOWN, "UNKNOWN"},         {FIEMAP_EXTENT_DELALLOC, "DELALLOC"},
      {FIEMAP_EXTENT_ENCODED, "ENCODED"},         {FIEMAP_EXTENT_DATA_ENCRYPTED, "DATA_ENCRYPTED"},
      {FIEMAP_EXTENT_NOT_ALIGNED, "NOT_ALIGNED"}, {FIEMAP_EXTENT_DATA_INLINE, "DATA_INLINE"},
      {FIEMAP_EXTENT_DATA_TAIL, "DATA_TAIL"},     {FIEMAP_EXTENT_UNWRITTEN, "UNWRITTEN"},
      {FIEMAP_EXTENT_SHARED, "SHARED"},
  };
  for (auto [flag, name] : flags) {
    auto r = ValidateAndMerge({Raw(0, 4096, 4096), Raw(4096, 8192, 4096, flag | kLast)}, 8192);
    ASSERT_FALSE(r) << name;
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_NE(r.error().message.find(std::string("FIEMAP_EXTENT_") + name), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("offset 4096"), std::string::npos) << r.error().message;
  }
}

TEST(ValidateAndMerge, RejectsHoleAtStart) {
  auto r = ValidateAndMerge({Raw(4096, 8192, 4096, kLast)}, 8192);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("hole at offset 0"), std::string::npos) << r.error().message;
}

TEST(ValidateAndMerge, RejectsHoleInTheMiddle) {
  auto r = ValidateAndMerge({Raw(0, 4096, 4096), Raw(8192, 16384, 4096, kLast)}, 12288);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("hole at offset 4096"), std::string::npos);
}

TEST(ValidateAndMerge, RejectsExtentsEndingBeforeTheFileSize) {
  auto r = ValidateAndMerge({Raw(0, 4096, 4096, kLast)}, 8192);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("hole at offset 4096"), std::string::npos);
}

TEST(ValidateAndMerge, RejectsOverlap) {
  auto r = ValidateAndMerge({Raw(0, 4096, 8192), Raw(4096, 65536, 4096, kLast)}, 12288);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("overlaps"), std::string::npos);
}

TEST(ValidateAndMerge, RequiresLastFlagOnTheFinalExtent) {
  auto r = ValidateAndMerge({Raw(0, 4096, 4096)}, 4096);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("LAST"), std::string::npos);
}

TEST(ValidateAndMerge, RejectsLastFlagBeforeTheEnd) {
  auto r = ValidateAndMerge({Raw(0, 4096, 4096, kLast), Raw(4096, 8192, 4096, kLast)}, 8192);
  ASSERT_FALSE(r);
}

TEST(ValidateAndMerge, RejectsEmptyInput) {
  EXPECT_FALSE(ValidateAndMerge({}, 4096));
}

TEST(ValidateAndMerge, RejectsZeroLengthExtent) {
  EXPECT_FALSE(ValidateAndMerge({Raw(0, 4096, 0), Raw(0, 4096, 4096, kLast)}, 4096));
}

TEST(ValidateAndMerge, IgnoresExtentsPastTheFileSize) {
  // Preallocated blocks past EOF (fallocate KEEP_SIZE) are not part of the image.
  auto r = ValidateAndMerge({Raw(0, 4096, 4096), Raw(8192, 65536, 4096, kLast)}, 4096);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, (std::vector<Extent>{{0, 4096, 4096}}));
}

TEST(ValidateAndMerge, TrimsTheLastExtentAtTheFileSize) {
  auto r = ValidateAndMerge({Raw(0, 4096, 8192, kLast)}, 6000);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, (std::vector<Extent>{{0, 4096, 6000}}));
}

TEST(ValidateAndMerge, HandlesManyExtentsFromSeveralPages) {
  // 100000 extents (twice AOSP's fixed cap), alternating physical gaps so none merge.
  std::vector<fiemap_extent> raw;
  for (uint64_t i = 0; i < 100000; ++i) raw.push_back(Raw(i * 4096, i * 8192, 4096));
  raw.back().fe_flags |= kLast;
  auto r = ValidateAndMerge(raw, 100000 * 4096ull);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->size(), 100000u);
}

TEST(MergeExtents, MergesByteBasedFibmapExtents) {
  auto r = MergeExtents({{0, 1 << 20, 512}, {512, (1 << 20) + 512, 512}, {1024, 4096, 512}}, 1536);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, (std::vector<Extent>{{0, 1 << 20, 1024}, {1024, 4096, 512}}));
}

TEST(MergeExtents, RejectsGap) {
  EXPECT_FALSE(MergeExtents({{0, 4096, 512}, {1024, 8192, 512}}, 1536));
}

}  // namespace
}  // namespace imaged::fiemap
