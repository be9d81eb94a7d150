// Tables, targets and names: pure values, no kernel needed.
#include <sys/sysmacros.h>

#include <gtest/gtest.h>

#include "dm/device_mapper.h"
#include "dm/table.h"
#include "test_util.h"

namespace imaged::dm {
namespace {

TEST(Target, LinearParamsAreDeviceAndOffset) {
  LinearTarget t(0, 8, "/dev/loop7", 2048);
  EXPECT_EQ(t.type(), "linear");
  EXPECT_EQ(t.params(), "/dev/loop7 2048");
  EXPECT_EQ(t.start(), 0u);
  EXPECT_EQ(t.length(), 8u);
  EXPECT_EQ(t.end(), 8u);
}

TEST(Target, LinearAcceptsMajorMinor) {
  LinearTarget t(16, 8, DeviceMapper::DeviceString(makedev(7, 3)), 0);
  EXPECT_EQ(t.params(), "7:3 0");
}

TEST(Target, ZeroAndErrorHaveNoParams) {
  ZeroTarget zero(0, 1);
  ErrorTarget error(1, 1);
  EXPECT_EQ(zero.type(), "zero");
  EXPECT_EQ(zero.params(), "");
  EXPECT_EQ(error.type(), "error");
  EXPECT_EQ(error.params(), "");
}

TEST(Target, RawTargetCarriesTypeAndParams) {
  RawTarget t(0, 1024, "striped", "2 1024 /dev/loop0 0 /dev/loop1 0");
  EXPECT_EQ(t.type(), "striped");
  EXPECT_EQ(t.params(), "2 1024 /dev/loop0 0 /dev/loop1 0");
}

TEST(Target, EqualityComparesRangeTypeAndParams) {
  EXPECT_EQ(LinearTarget(0, 8, "a", 1), LinearTarget(0, 8, "a", 1));
  EXPECT_FALSE(LinearTarget(0, 8, "a", 1) == LinearTarget(0, 8, "a", 2));
  EXPECT_FALSE(LinearTarget(0, 8, "a", 1) == LinearTarget(0, 9, "a", 1));
  EXPECT_FALSE(ZeroTarget(0, 8) == ErrorTarget(0, 8));
}

TEST(Target, VerityParamsAreTheKernelsFormatOne) {
  VerityConfig c{.data_device = "7:1",
                 .hash_device = "7:2",
                 .block_size = 4096,
                 .data_blocks = 1000,
                 .hash_start_block = 1,
                 .root_hash_hex = "ab01",
                 .salt_hex = "ff"};
  VerityTarget t(0, c);
  EXPECT_EQ(t.type(), "verity");
  EXPECT_EQ(t.length(), 8000u);
  EXPECT_EQ(t.params(), "1 7:1 7:2 4096 4096 1000 1 sha256 ab01 ff");
  c.salt_hex.clear();
  c.block_size = 512;
  EXPECT_EQ(VerityTarget(0, c).params(), "1 7:1 7:2 512 512 1000 1 sha256 ab01 -");
  EXPECT_EQ(VerityTarget(0, c).length(), 1000u);
}

TEST(Target, VerityStatusSaysWhetherABlockWasCorrupt) {
  EXPECT_FALSE(VerityStatusCorrupt("V").value());
  EXPECT_TRUE(VerityStatusCorrupt("C").value());
  EXPECT_TRUE(VerityStatusCorrupt("C 0").value());
  EXPECT_FALSE(VerityStatusCorrupt("").has_value());
  EXPECT_FALSE(VerityStatusCorrupt("X").has_value());
}

TEST(Table, VerityNeedsAReadOnlyTable) {
  Table table;
  table.Emplace<VerityTarget>(0, VerityConfig{.data_device = "7:1",
                                              .hash_device = "7:1",
                                              .block_size = 4096,
                                              .data_blocks = 8,
                                              .hash_start_block = 9,
                                              .root_hash_hex = "00",
                                              .salt_hex = ""});
  EXPECT_EQ(table.Validate().error().code, EINVAL);
  table.set_readonly(true);
  EXPECT_TRUE(table.Validate());
}

TEST(Table, NumSectorsIsEndOfLastTarget) {
  Table table;
  EXPECT_EQ(table.num_sectors(), 0u);
  table.Emplace<LinearTarget>(0, 8, "/dev/loop0", 0);
  table.Emplace<ZeroTarget>(8, 100);
  EXPECT_EQ(table.num_sectors(), 108u);
  EXPECT_EQ(table.targets().size(), 2u);
}

TEST(Table, AddTakesOwnership) {
  Table table;
  table.Add(std::make_unique<ErrorTarget>(0, 4));
  ASSERT_EQ(table.targets().size(), 1u);
  EXPECT_EQ(table.targets()[0]->type(), "error");
  EXPECT_OK(table.Validate());
}

TEST(Table, EmptyTableIsInvalid) {
  Table table;
  ASSERT_ERRNO(table.Validate(), EINVAL);
}

TEST(Table, FirstTargetMustStartAtZero) {
  Table table;
  table.Emplace<ZeroTarget>(1, 8);
  ASSERT_ERRNO(table.Validate(), EINVAL);
  EXPECT_NE(table.Validate().error().message.find("gap"), std::string::npos);
}

TEST(Table, GapBetweenTargetsIsInvalid) {
  Table table;
  table.Emplace<ZeroTarget>(0, 8);
  table.Emplace<ZeroTarget>(9, 8);
  ASSERT_ERRNO(table.Validate(), EINVAL);
  EXPECT_NE(table.Validate().error().message.find("target 1"), std::string::npos);
}

TEST(Table, OverlappingTargetsAreInvalid) {
  Table table;
  table.Emplace<ZeroTarget>(0, 8);
  table.Emplace<ZeroTarget>(7, 8);
  ASSERT_ERRNO(table.Validate(), EINVAL);
  EXPECT_NE(table.Validate().error().message.find("overlap"), std::string::npos);
}

TEST(Table, OutOfOrderTargetsAreInvalid) {
  Table table;
  table.Emplace<ZeroTarget>(8, 8);
  table.Emplace<ZeroTarget>(0, 8);
  ASSERT_ERRNO(table.Validate(), EINVAL);
}

TEST(Table, ZeroLengthTargetIsInvalid) {
  Table table;
  table.Emplace<ZeroTarget>(0, 8);
  table.Emplace<ZeroTarget>(8, 0);
  table.Emplace<ZeroTarget>(8, 8);
  ASSERT_ERRNO(table.Validate(), EINVAL);
  EXPECT_NE(table.Validate().error().message.find("zero length"), std::string::npos);
}

TEST(Table, OverflowingTargetIsInvalid) {
  Table table;
  table.Emplace<ZeroTarget>(0, 8);
  table.Emplace<ZeroTarget>(8, UINT64_MAX - 4);
  ASSERT_ERRNO(table.Validate(), EINVAL);
}

TEST(Table, BadTargetTypeIsInvalid) {
  Table spaced;
  spaced.Emplace<RawTarget>(0, 8, "lin ear", "");
  ASSERT_ERRNO(spaced.Validate(), EINVAL);
  Table long_name;
  long_name.Emplace<RawTarget>(0, 8, std::string(16, 'x'), "");
  ASSERT_ERRNO(long_name.Validate(), EINVAL);
}

TEST(Table, ContiguousTableIsValid) {
  Table table;
  table.Emplace<LinearTarget>(0, 8, "/dev/loop0", 0);
  table.Emplace<ZeroTarget>(8, 8);
  table.Emplace<ErrorTarget>(16, 1);
  EXPECT_OK(table.Validate());
}

TEST(Table, TenThousandTargetsValidate) {
  Table table;
  for (uint64_t i = 0; i < 10000; ++i) {
    table.Emplace<LinearTarget>(i * 8, 8, "/dev/loop0", (9999 - i) * 8);
  }
  EXPECT_OK(table.Validate());
  EXPECT_EQ(table.num_sectors(), 80000u);
}

TEST(Table, ReadonlyFlag) {
  Table table;
  EXPECT_FALSE(table.readonly());
  table.set_readonly(true);
  EXPECT_TRUE(table.readonly());
}

TEST(Table, EqualityComparesTargetsAndReadonly) {
  auto make = [] {
    Table t;
    t.Emplace<LinearTarget>(0, 8, "/dev/loop0", 0);
    t.Emplace<ZeroTarget>(8, 8);
    return t;
  };
  Table a = make(), b = make();
  EXPECT_TRUE(a == b);
  b.set_readonly(true);
  EXPECT_FALSE(a == b);
  Table c = make();
  c.Emplace<ZeroTarget>(16, 1);
  EXPECT_FALSE(a == c);
  Table d;
  d.Emplace<LinearTarget>(0, 8, "/dev/loop1", 0);
  d.Emplace<ZeroTarget>(8, 8);
  EXPECT_FALSE(a == d);
}

TEST(DeviceName, OrdinaryNamesAreValid) {
  for (const char* name : {"system_a", "imaged-data.img", "a", "a:b", "x@1+2=3#", "UPPER.lower"}) {
    EXPECT_OK(DeviceMapper::ValidateName(name)) << name;
  }
}

TEST(DeviceName, EmptyNameIsInvalid) {
  ASSERT_ERRNO(DeviceMapper::ValidateName(""), EINVAL);
}

TEST(DeviceName, At127BytesValidAt128Invalid) {
  EXPECT_OK(DeviceMapper::ValidateName(std::string(127, 'n')));
  ASSERT_ERRNO(DeviceMapper::ValidateName(std::string(128, 'n')), EINVAL);
}

TEST(DeviceName, SlashIsInvalid) {
  ASSERT_ERRNO(DeviceMapper::ValidateName("a/b"), EINVAL);
  ASSERT_ERRNO(DeviceMapper::ValidateName("/"), EINVAL);
}

TEST(DeviceName, DotAndDotDotAreInvalid) {
  ASSERT_ERRNO(DeviceMapper::ValidateName("."), EINVAL);
  ASSERT_ERRNO(DeviceMapper::ValidateName(".."), EINVAL);
  EXPECT_OK(DeviceMapper::ValidateName("..."));
}

TEST(DeviceName, SpacesControlAndNonAsciiAreInvalid) {
  ASSERT_ERRNO(DeviceMapper::ValidateName("a b"), EINVAL);
  ASSERT_ERRNO(DeviceMapper::ValidateName("a\tb"), EINVAL);
  ASSERT_ERRNO(DeviceMapper::ValidateName("a\nb"), EINVAL);
  ASSERT_ERRNO(DeviceMapper::ValidateName(std::string("a\0b", 3)), EINVAL);
  ASSERT_ERRNO(DeviceMapper::ValidateName("caf\xc3\xa9"), EINVAL);
  ASSERT_ERRNO(DeviceMapper::ValidateName("a\x7f"), EINVAL);
}

TEST(DeviceUuid, EmptyAndUpTo128BytesAreValid) {
  EXPECT_OK(DeviceMapper::ValidateUuid(""));
  EXPECT_OK(DeviceMapper::ValidateUuid("IMAGED-0b1c8a1e-5f2d-4c3b-9a7e-1d2c3b4a5f6e"));
  EXPECT_OK(DeviceMapper::ValidateUuid(std::string(128, 'u')));
}

TEST(DeviceUuid, LongOrSpacedUuidIsInvalid) {
  ASSERT_ERRNO(DeviceMapper::ValidateUuid(std::string(129, 'u')), EINVAL);
  ASSERT_ERRNO(DeviceMapper::ValidateUuid("a b"), EINVAL);
}

TEST(DevicePaths, PathIsUnderDevMapper) {
  EXPECT_EQ(DeviceMapper::DevicePath("system_a"), "/dev/mapper/system_a");
}

TEST(DevicePaths, DeviceStringIsMajorColonMinor) {
  EXPECT_EQ(DeviceMapper::DeviceString(makedev(253, 17)), "253:17");
  EXPECT_EQ(DeviceMapper::DeviceString(makedev(259, 1048575)), "259:1048575");
}

}  // namespace
}  // namespace imaged::dm
