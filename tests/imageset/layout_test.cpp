// lp_metadata -> dm table, the one builder the daemon and imaged-init share.
#include "imageset/layout.h"
#include "imageset/names.h"

#include <gtest/gtest.h>
#include <sys/sysmacros.h>

#include "dir.h"
#include "process.h"

namespace imaged::imageset {
namespace {

using metadata::kTargetTypeLinear;
using metadata::kTargetTypeZero;

metadata::LpMetadata SampleMetadata() {
  metadata::BlockDevice device;
  device.partition_name = "vdb";
  device.size = 64ull << 20;
  auto md = metadata::NewImageMetadata(device, 4096, 0);
  EXPECT_TRUE(metadata::SetPartition(
      md, "system", 0, {{2048, kTargetTypeLinear, 4096, 0}, {1024, kTargetTypeLinear, 100000, 0}}));
  EXPECT_TRUE(metadata::SetPartition(md, "vendor", metadata::kPartitionAttrReadonly,
                                     {{512, kTargetTypeLinear, 8192, 0}}));
  return md;
}

TEST(TableFromLpTest, OneLinearTargetPerExtentOverTheDisk) {
  auto md = SampleMetadata();
  auto table = TableFromLp(md, *metadata::FindPartition(md, "system"), "254:16", false);
  ASSERT_TRUE(table) << table.error().ToString();
  ASSERT_EQ(table->targets().size(), 2u);
  EXPECT_EQ(table->targets()[0]->params(), "254:16 4096");
  EXPECT_EQ(table->targets()[1]->start(), 2048u);
  EXPECT_EQ(table->targets()[1]->length(), 1024u);
  EXPECT_EQ(table->targets()[1]->params(), "254:16 100000");
  EXPECT_FALSE(table->readonly());
  EXPECT_TRUE(table->Validate());
}

TEST(TableFromLpTest, ReadonlyIsWhatTheCallerAsksForAndTheAttributeSays) {
  auto md = SampleMetadata();
  const auto* vendor = metadata::FindPartition(md, "vendor");
  EXPECT_TRUE(IsReadonly(*vendor));
  EXPECT_FALSE(IsReadonly(*metadata::FindPartition(md, "system")));
  auto table = TableFromLp(md, *vendor, "254:16", IsReadonly(*vendor));
  ASSERT_TRUE(table);
  EXPECT_TRUE(table->readonly());
}

TEST(TableFromLpTest, ZeroExtentsBecomeZeroTargets) {
  auto md = SampleMetadata();
  md.extents.push_back({16, kTargetTypeZero, 0, 0});
  metadata::Partition p{"z", 0, static_cast<uint32_t>(md.extents.size() - 1), 1, 0};
  auto table = TableFromLp(md, p, "254:16", false);
  ASSERT_TRUE(table);
  EXPECT_EQ(table->targets()[0]->type(), "zero");
}

TEST(TableFromLpTest, RefusesWhatItCannotMapNamingIt) {
  auto md = SampleMetadata();
  md.extents.push_back({16, kTargetTypeLinear, 0, 1});
  md.extents.push_back({16, 7, 0, 0});
  metadata::Partition other_device{"z", 0, static_cast<uint32_t>(md.extents.size() - 2), 1, 0};
  auto on_other = TableFromLp(md, other_device, "254:16", false);
  ASSERT_FALSE(on_other);
  EXPECT_NE(on_other.error().message.find("block device 1"), std::string::npos);
  metadata::Partition unknown{"u", 0, static_cast<uint32_t>(md.extents.size() - 1), 1, 0};
  auto odd = TableFromLp(md, unknown, "254:16", false);
  ASSERT_FALSE(odd);
  EXPECT_NE(odd.error().message.find("target type 7"), std::string::npos);
  metadata::Partition empty{"e", 0, 0, 0, 0};
  EXPECT_FALSE(TableFromLp(md, empty, "254:16", false));
}

TEST(JoinTableTest, JoinsLoopsAndTrimsToTheImageSize) {
  auto table = JoinTable({8192, 8192}, {makedev(7, 1), makedev(7, 2)}, 12288, true);
  ASSERT_EQ(table.targets().size(), 2u);
  EXPECT_EQ(table.targets()[0]->params(), "7:1 0");
  EXPECT_EQ(table.targets()[1]->start(), 16u);
  EXPECT_EQ(table.targets()[1]->length(), 8u);
  EXPECT_EQ(table.num_sectors(), 24u);
  EXPECT_TRUE(table.readonly());
}

TEST(LpMetadataFileTest, MissingIsNoneCorruptKeepsItsErrnoAndSaysSo) {
  test::TempDir tmp;
  auto dir = test::OpenDir(tmp.path());
  auto none = ReadLpMetadata(dir);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
  const std::vector<uint8_t> junk(5000, 1);
  ASSERT_TRUE(dir.AtomicWrite(kLpMetadataFile, junk));
  auto corrupt = ReadLpMetadata(dir);
  ASSERT_FALSE(corrupt);
  EXPECT_EQ(corrupt.error().code, EINVAL);
  EXPECT_EQ(corrupt.error().kind, ErrorKind::kCorruptMetadata);
  ASSERT_TRUE(WriteLpMetadata(dir, SampleMetadata()));
  auto read = ReadLpMetadata(dir);
  ASSERT_TRUE(read);
  EXPECT_EQ(**read, SampleMetadata());
}

}  // namespace
}  // namespace imaged::imageset
