#include "metadata/lp_metadata.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "dir.h"
#include "lp_test_util.h"
#include "process.h"

namespace imaged::metadata {
namespace {

using testing::PeekU32;
using testing::PokeU16;
using testing::PokeU32;
using testing::PokeU64;
using testing::ReferenceImageFile;
using testing::ResignGeometry;
using testing::ResignMetadata;
using testing::SampleMetadata;

constexpr size_t kHdr = 4096;  // header offset in the image-file layout

std::vector<uint8_t> Serialize(const LpMetadata& md) {
  auto r = SerializeImageFile(md);
  EXPECT_TRUE(r) << r.error().ToString();
  return r ? *r : std::vector<uint8_t>{};
}

// Expects parsing to fail with `code` and a message containing `needle`.
void ExpectParseError(const std::vector<uint8_t>& bytes, int code, const std::string& needle) {
  auto r = ParseImageFile(bytes);
  ASSERT_FALSE(r) << "parsed although it should fail with \"" << needle << "\"";
  EXPECT_EQ(r.error().code, code) << r.error().ToString();
  EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().ToString();
}

size_t TablesOffset(const std::vector<uint8_t>& b) {
  return kHdr + PeekU32(b, kHdr + 8);
}

// ---------------------------------------------------------------------------------------------
// Golden bytes against the independent encoder in lp_test_util.h.

TEST(LpGolden, Version10_0MatchesReferenceEncoderByteForByte) {
  LpMetadata md = SampleMetadata();
  std::vector<uint8_t> expected = ReferenceImageFile(md, 0);
  EXPECT_EQ(Serialize(md), expected);
  EXPECT_EQ(expected.size(), 4096u + 128 + 2 * 52 + 3 * 24 + 48 + 64);
}

TEST(LpGolden, Version10_1MatchesReferenceEncoderByteForByte) {
  LpMetadata md = SampleMetadata();
  md.partitions[1].attributes = kPartitionAttrDisabled;
  EXPECT_EQ(Serialize(md), ReferenceImageFile(md, 1));
}

TEST(LpGolden, Version10_2MatchesReferenceEncoderByteForByte) {
  LpMetadata md = SampleMetadata();
  md.header_flags = kHeaderFlagVirtualAbDevice;
  std::vector<uint8_t> expected = ReferenceImageFile(md, 2);
  EXPECT_EQ(Serialize(md), expected);
  EXPECT_EQ(expected.size(), 4096u + 256 + 2 * 52 + 3 * 24 + 48 + 64);
}

TEST(LpGolden, KnownFieldOffsets) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  ASSERT_GT(b.size(), kHdr + 128);
  EXPECT_EQ(std::string(b.begin(), b.begin() + 4), "gDla");
  EXPECT_EQ(PeekU32(b, 40), 65536u);
  EXPECT_EQ(std::string(b.begin() + kHdr, b.begin() + kHdr + 4), "0PLA");
  EXPECT_EQ(PeekU32(b, kHdr + 8), 128u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(&b[kHdr + 128])), "system");
}

// ---------------------------------------------------------------------------------------------
// Round trips and version selection.

TEST(LpRoundTrip, Version10_0ImageFile) {
  LpMetadata md = SampleMetadata();
  auto parsed = ParseImageFile(Serialize(md));
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, md);
  EXPECT_EQ(parsed->minor_version, 0);
}

TEST(LpRoundTrip, Version10_1ImageFile) {
  LpMetadata md = SampleMetadata();
  md.minor_version = 1;
  md.partitions[0].attributes |= kPartitionAttrUpdated;
  auto parsed = ParseImageFile(Serialize(md));
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, md);
}

TEST(LpRoundTrip, Version10_2ImageFileKeepsFlags) {
  LpMetadata md = SampleMetadata();
  md.minor_version = 2;
  md.header_flags = 0x5e5e5e5e;  // liblp's ExpandedHeader test value
  auto parsed = ParseImageFile(Serialize(md));
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, md);
}

TEST(LpRoundTrip, ManyGroupsAndBlockDevices) {
  LpMetadata md = SampleMetadata();
  md.groups.push_back(Group{"google_dynamic_partitions", kGroupSlotSuffixed, 4ull << 30});
  md.block_devices.push_back(BlockDevice{1, 0, 0, 1 << 20, "system_b", kBlockDeviceSlotSuffixed});
  md.partitions[1].group_index = 1;
  md.extents[1].target_source = 1;
  auto parsed = ParseImageFile(Serialize(md));
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, md);
}

TEST(LpVersion, V1AttributeRaisesMinorToOne) {
  LpMetadata md = SampleMetadata();
  md.partitions[0].attributes |= kPartitionAttrDisabled;
  EXPECT_EQ(EffectiveMinorVersion(md), 1);
  auto parsed = ParseImageFile(Serialize(md));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->minor_version, 1);
}

TEST(LpVersion, HeaderFlagsRaiseMinorToTwoWithExpandedHeader) {
  LpMetadata md = SampleMetadata();
  md.header_flags = kHeaderFlagOverlaysActive;
  std::vector<uint8_t> b = Serialize(md);
  EXPECT_EQ(PeekU32(b, kHdr + 8), 256u);
  EXPECT_EQ(b[kHdr + 6], 2);
}

TEST(LpVersion, ExplicitMinorTwoWithoutFlagsIsKept) {
  LpMetadata md = SampleMetadata();
  md.minor_version = 2;
  auto parsed = ParseImageFile(Serialize(md));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->minor_version, 2);
  EXPECT_EQ(parsed->header_flags, 0u);
}

TEST(LpVersion, NeverLowersTheModelsMinor) {
  LpMetadata md = SampleMetadata();
  md.minor_version = 2;
  md.partitions[0].attributes |= kPartitionAttrUpdated;
  EXPECT_EQ(EffectiveMinorVersion(md), 2);
}

// ---------------------------------------------------------------------------------------------
// Bit flips: every bit of geometry, header and each table is covered by a check.

TEST(LpBitFlip, EveryGeometryBitIsDetected) {
  const std::vector<uint8_t> good = Serialize(SampleMetadata());
  for (size_t byte = 0; byte < 52; ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<uint8_t> b = good;
      b[byte] ^= static_cast<uint8_t>(1u << bit);
      auto r = ParseImageFile(b);
      ASSERT_FALSE(r) << "flip at geometry byte " << byte << " bit " << bit;
      const std::string& m = r.error().message;
      if (byte < 4) {
        EXPECT_NE(m.find("geometry: bad magic"), std::string::npos) << m;
      } else if (byte >= 8) {
        EXPECT_EQ(r.error().code, EBADMSG) << m;
        EXPECT_NE(m.find("geometry: checksum"), std::string::npos) << m;
      } else {
        EXPECT_NE(m.find("geometry:"), std::string::npos) << m;
      }
    }
  }
}

TEST(LpBitFlip, EveryHeaderBitIsDetected) {
  for (uint16_t minor : {0, 2}) {
    LpMetadata md = SampleMetadata();
    md.minor_version = minor;
    const std::vector<uint8_t> good = Serialize(md);
    const size_t header_size = PeekU32(good, kHdr + 8);
    for (size_t byte = 0; byte < header_size; ++byte) {
      for (int bit = 0; bit < 8; ++bit) {
        std::vector<uint8_t> b = good;
        b[kHdr + byte] ^= static_cast<uint8_t>(1u << bit);
        auto r = ParseImageFile(b);
        ASSERT_FALSE(r) << "minor " << minor << " flip at header byte " << byte;
        const std::string& m = r.error().message;
        EXPECT_NE(m.find("header:"), std::string::npos) << m;
        if (byte >= 12) {
          EXPECT_EQ(r.error().code, EBADMSG) << m;
          EXPECT_NE(m.find("header: checksum"), std::string::npos) << m;
        }
      }
    }
  }
}

TEST(LpBitFlip, EveryTableBitIsDetected) {
  const std::vector<uint8_t> good = Serialize(SampleMetadata());
  const size_t tables = TablesOffset(good);
  ASSERT_EQ(good.size() - tables, 2 * 52 + 3 * 24 + 48 + 64u);
  for (size_t byte = tables; byte < good.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<uint8_t> b = good;
      b[byte] ^= static_cast<uint8_t>(1u << bit);
      auto r = ParseImageFile(b);
      ASSERT_FALSE(r) << "flip at table byte " << byte - tables;
      EXPECT_EQ(r.error().code, EBADMSG);
      EXPECT_NE(r.error().message.find("tables: checksum"), std::string::npos);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Structural corruptions, re-signed so they reach the check they target.

TEST(LpCorrupt, TruncatedInputAtEveryLengthFails) {
  const std::vector<uint8_t> good = Serialize(SampleMetadata());
  for (size_t len = 0; len < good.size(); ++len) {
    std::vector<uint8_t> b(good.begin(), good.begin() + len);
    auto r = ParseImageFile(b);
    ASSERT_FALSE(r) << "length " << len;
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_NE(r.error().message.find("truncated"), std::string::npos) << r.error().message;
  }
}

TEST(LpCorrupt, TrailingBytesAreIgnoredLikeLiblp) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  b.resize(b.size() + 1000, 0xCC);
  auto r = ParseImageFile(b);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, SampleMetadata());
}

TEST(LpCorrupt, GeometryStructSizeLargerIsRejectedBeforeChecksum) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, 4, 53);
  ExpectParseError(b, EINVAL, "struct_size 53 is larger");
}

TEST(LpCorrupt, GeometryStructSizeSmallerIsRejected) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, 4, 48);
  ResignGeometry(b);
  ExpectParseError(b, EINVAL, "struct_size 48 is not 52");
}

TEST(LpCorrupt, GeometryZeroSlotCount) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, 44, 0);
  ResignGeometry(b);
  ExpectParseError(b, EINVAL, "metadata_slot_count is 0");
}

TEST(LpCorrupt, GeometryMaxSizeNotSectorAligned) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, 40, 65536 + 100);
  ResignGeometry(b);
  ExpectParseError(b, EINVAL, "not a multiple of 512");
}

TEST(LpCorrupt, HeaderMagic) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, kHdr, 0x12345678);
  ExpectParseError(b, EINVAL, "header: bad magic");
}

TEST(LpCorrupt, HeaderNewerMinorVersion) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU16(b, kHdr + 6, 3);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "unsupported version 10.3");
}

TEST(LpCorrupt, HeaderWrongMajorVersion) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU16(b, kHdr + 4, 11);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "unsupported version 11.0");
}

TEST(LpCorrupt, HeaderSizeWrongForMinor) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, kHdr + 8, 256);  // a 10.0 header claiming the expanded size
  ExpectParseError(b, EINVAL, "header_size 256 is wrong for version 10.0");
}

TEST(LpCorrupt, MinorTwoWithShortHeader) {
  LpMetadata md = SampleMetadata();
  md.minor_version = 2;
  std::vector<uint8_t> b = Serialize(md);
  PokeU32(b, kHdr + 8, 128);
  ExpectParseError(b, EINVAL, "header_size 128 is wrong for version 10.2");
}

TEST(LpCorrupt, PartitionEntrySize) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, kHdr + 80 + 8, 48);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "partitions entry_size 48 is not 52");
}

TEST(LpCorrupt, ExtentEntrySize) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, kHdr + 92 + 8, 16);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "extents entry_size 16 is not 24");
}

TEST(LpCorrupt, GroupEntrySize) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, kHdr + 104 + 8, 40);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "groups entry_size 40 is not 48");
}

TEST(LpCorrupt, BlockDeviceEntrySizeWhichLiblpForgets) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, kHdr + 116 + 8, 60);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "block_devices entry_size 60 is less than 64");
}

TEST(LpCorrupt, TableOffsetPastTablesSize) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  uint32_t tables_size = PeekU32(b, kHdr + 44);
  PokeU32(b, kHdr + 104, tables_size + 1);  // groups offset
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "groups table (offset");
}

TEST(LpCorrupt, TableEntriesRunPastTablesSize) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, kHdr + 92 + 4, 1000);  // extent count
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "extents table (offset");
}

TEST(LpCorrupt, TableEntryCountOverflowDoesNotWrap) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, kHdr + 92 + 4, 0xFFFFFFFFu);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "extents table (offset");
}

TEST(LpCorrupt, TablesSizeLargerThanMetadataMaxSize) {
  LpMetadata md = SampleMetadata();
  for (int i = 0; i < 30; ++i) md.extents.push_back(Extent{8, kTargetTypeZero, 0, 0});
  std::vector<uint8_t> b = Serialize(md);
  PokeU32(b, 40, 512);  // geometry max shrunk below tables_size
  ResignGeometry(b);
  ExpectParseError(b, EINVAL, "exceeds metadata_max_size 512");
}

TEST(LpCorrupt, PartitionExtentsOutOfRange) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, TablesOffset(b) + 52 + 44, 3);  // vendor_b: first 2, num 3 of 3 extents
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "partition 1 \"vendor_b\": extents [2, +3) out of range");
}

TEST(LpCorrupt, PartitionExtentRangeOverflow) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, TablesOffset(b) + 40, 0xFFFFFFFFu);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "out of range of 3 extents");
}

TEST(LpCorrupt, GroupIndexOutOfRange) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, TablesOffset(b) + 48, 1);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "group_index 1 out of range");
}

TEST(LpCorrupt, LinearExtentBlockDeviceOutOfRange) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, TablesOffset(b) + 2 * 52 + 24 + 20, 1);  // extent 1 target_source
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "extent 1: target_source 1 out of range");
}

TEST(LpCorrupt, V1AttributeInVersion10_0) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, TablesOffset(b) + 36, kPartitionAttrUpdated);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "attributes 0x4 not allowed in version 10.0");
}

TEST(LpCorrupt, UnknownAttributeInVersion10_1) {
  LpMetadata md = SampleMetadata();
  md.minor_version = 1;
  std::vector<uint8_t> b = Serialize(md);
  PokeU32(b, TablesOffset(b) + 36, 0x10);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "attributes 0x10 not allowed in version 10.1");
}

TEST(LpCorrupt, NoBlockDevices) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU32(b, kHdr + 116 + 4, 0);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "block_devices: table is empty");
}

TEST(LpCorrupt, MetadataRegionOverlapsFirstLogicalSector) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  PokeU64(b, TablesOffset(b) + 2 * 52 + 3 * 24 + 48, 8);
  ResignMetadata(b);
  ExpectParseError(b, EINVAL, "first_logical_sector 8 lies inside");
}

// ---------------------------------------------------------------------------------------------
// Metadata other liblp tools write: whatever liblp's reader accepts, imaged reads, writes back
// byte for byte, and edits around (FORMATS.md section 4, "Reader rules").

// Reads `foreign` as another tool would have written it, writes it back, and adds and removes an
// imaged partition beside the foreign ones.
void ExpectForeignMetadataIsKept(const LpMetadata& foreign) {
  const std::vector<uint8_t> bytes = ReferenceImageFile(foreign, foreign.minor_version);
  auto parsed = ParseImageFile(bytes);
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, foreign);
  EXPECT_EQ(Serialize(*parsed), bytes) << "written back byte for byte";

  LpMetadata edited = *parsed;
  auto set = SetPartition(edited, "imaged_img", 0, {Extent{8, kTargetTypeLinear, 300000, 0}});
  ASSERT_TRUE(set) << set.error().ToString();
  for (const Partition& p : foreign.partitions) {
    const Partition* kept = FindPartition(edited, p.name);
    ASSERT_NE(kept, nullptr) << PrintableName(p.name);
    EXPECT_EQ(kept->attributes, p.attributes);
    EXPECT_EQ(PartitionExtents(edited, *kept), PartitionExtents(foreign, p));
  }
  auto reparsed = ParseImageFile(Serialize(edited));
  ASSERT_TRUE(reparsed) << reparsed.error().ToString();
  EXPECT_EQ(*reparsed, edited);
  EXPECT_TRUE(RemovePartition(edited, "imaged_img"));
  EXPECT_EQ(Serialize(edited), bytes) << "removing imaged's partition restores the foreign bytes";

  for (const Partition& p : foreign.partitions) {
    LpMetadata without = *parsed;
    EXPECT_TRUE(RemovePartition(without, p.name)) << PrintableName(p.name);
    EXPECT_EQ(FindPartition(without, p.name), nullptr);
    auto again = ParseImageFile(Serialize(without));
    ASSERT_TRUE(again) << again.error().ToString();
    EXPECT_EQ(*again, without);
  }
}

TEST(LpForeign, PartitionNameFillingAll36BytesIsKeptWithoutANul) {
  LpMetadata md = SampleMetadata();
  md.partitions[0].name = std::string(36, 'p');
  ExpectForeignMetadataIsKept(md);
  std::vector<uint8_t> b = ReferenceImageFile(md, 0);
  auto parsed = ParseImageFile(b);
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->partitions[0].name, std::string(36, 'p'));
  EXPECT_EQ(b[TablesOffset(b) + 35], 'p') << "no NUL in the field";
}

TEST(LpForeign, PartitionNamesWithOtherPrintableCharactersAreKept) {
  LpMetadata md = SampleMetadata();
  md.partitions[0].name = "sys@a";
  md.partitions[1].name = "vendor+b";
  ExpectForeignMetadataIsKept(md);
  md.partitions[0].name = "odm:c d/e~!#$%^&*()=[]{}|;'\",<>?`";
  ExpectForeignMetadataIsKept(md);
}

TEST(LpForeign, PartitionNamesWithAnyBytesAreKept) {
  LpMetadata md = SampleMetadata();
  md.partitions[0].name = "\x01\x7f\xff\xc3\xa9";
  md.partitions[1].name = "";  // liblp's reader does not refuse an empty name either
  ExpectForeignMetadataIsKept(md);
}

TEST(LpForeign, UnknownExtentTargetTypeIsKept) {
  LpMetadata md = SampleMetadata();
  md.extents[2] = Extent{8, 5, 777, 3};  // only LINEAR extents have their target_source checked
  ExpectForeignMetadataIsKept(md);
  md.extents[0].target_type = 0xFFFFFFFFu;
  ExpectForeignMetadataIsKept(md);
}

TEST(LpForeign, GroupAndBlockDeviceNamesFillingAll36BytesAreKept) {
  LpMetadata md = SampleMetadata();
  md.groups[0].name = std::string(36, 'g');
  md.block_devices[0].partition_name = "by-name/" + std::string(28, 'd');
  ExpectForeignMetadataIsKept(md);
}

TEST(LpForeign, FullNameFieldKeepsItsNulsLikeLiblp) {
  // liblp's NameFromFixedArray: a field whose last byte is not NUL is a 36-byte name, NULs
  // included.
  LpMetadata md = SampleMetadata();
  md.partitions[0].name = std::string("ab\0", 3) + std::string(33, 'z');
  ExpectForeignMetadataIsKept(md);
}

TEST(LpForeign, NameFieldEndingInNulStopsAtTheFirstNulLikeLiblp) {
  std::vector<uint8_t> b = Serialize(SampleMetadata());
  std::memcpy(&b[TablesOffset(b)], "abc\0junk", 8);
  ResignMetadata(b);
  auto parsed = ParseImageFile(b);
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(parsed->partitions[0].name, "abc");
}

TEST(LpForeign, RepeatedNamesAreKeptButNotSetByImaged) {
  LpMetadata md = SampleMetadata();
  md.partitions[1].name = "system";
  md.groups.push_back(Group{"default", 0, 0});
  const std::vector<uint8_t> bytes = ReferenceImageFile(md, 0);
  auto parsed = ParseImageFile(bytes);
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, md);
  EXPECT_EQ(Serialize(*parsed), bytes);

  LpMetadata edited = *parsed;
  ASSERT_TRUE(SetPartition(edited, "imaged_img", 0, {Extent{8, kTargetTypeLinear, 300000, 0}}));
  EXPECT_TRUE(RemovePartition(edited, "imaged_img"));
  EXPECT_EQ(Serialize(edited), bytes);

  const LpMetadata before = edited;
  auto set = SetPartition(edited, "system", 0, {Extent{8, kTargetTypeLinear, 300000, 0}});
  ASSERT_FALSE(set);
  EXPECT_EQ(set.error().code, EINVAL);
  EXPECT_NE(set.error().message.find("2 partitions have this name"), std::string::npos)
      << set.error().message;
  EXPECT_EQ(edited, before);

  EXPECT_EQ(FindPartition(edited, "system"), &edited.partitions[0]);
  EXPECT_TRUE(RemovePartition(edited, "system"));
  ASSERT_EQ(edited.partitions.size(), 1u);
  EXPECT_EQ(PartitionExtents(edited, edited.partitions[0]), PartitionExtents(md, md.partitions[1]));
}

TEST(LpForeign, AnyLogicalBlockSizeIsKept) {
  // liblp's reader checks the geometry's magic, struct_size, checksum, slot count and
  // metadata_max_size, not logical_block_size.
  for (uint32_t lbs : {0u, 513u, 1u << 31}) {
    LpMetadata md = SampleMetadata();
    md.geometry.logical_block_size = lbs;
    ExpectForeignMetadataIsKept(md);
  }
}

TEST(LpForeign, LongerBlockDeviceEntriesAreReadLikeLiblp) {
  // liblp reads the first 64 bytes of each block-device entry, whatever its entry_size.
  const std::vector<uint8_t> canonical = Serialize(SampleMetadata());
  std::vector<uint8_t> b = canonical;
  b.insert(b.end(), 64, 0xAB);  // the block-device table is last: its one entry grows to 128
  PokeU32(b, kHdr + 116 + 8, 128);
  PokeU32(b, kHdr + 44, PeekU32(b, kHdr + 44) + 64);
  ResignMetadata(b);
  auto parsed = ParseImageFile(b);
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, SampleMetadata());
  EXPECT_EQ(Serialize(*parsed), canonical) << "written back with liblp's 64-byte entries";
}

TEST(LpForeign, SetPartitionLeavesTargetTypesToTheMapper) {
  LpMetadata md = NewImageMetadata(BlockDevice{0, 4096, 0, 100ull << 30, "nvme0n1p2", 0}, 4096, 0);
  ASSERT_TRUE(SetPartition(md, "a", 0, {Extent{8, 9, 100, 0}}));
  EXPECT_EQ(PartitionExtents(md, *FindPartition(md, "a"))[0].target_type, 9u);
}

// ---------------------------------------------------------------------------------------------
// Writer refusals.

void ExpectWriteError(const LpMetadata& md, int code, const std::string& needle) {
  auto r = SerializeImageFile(md);
  ASSERT_FALSE(r) << "serialized although it should fail with \"" << needle << "\"";
  EXPECT_EQ(r.error().code, code) << r.error().ToString();
  EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().ToString();
  EXPECT_FALSE(SerializeSuper(md));
}

TEST(LpWriter, RefusesMetadataLargerThanMaxSize) {
  LpMetadata md = SampleMetadata();
  md.geometry.metadata_max_size = 4096;
  // 128 + 4*52 + 3*24 + 48 + 64 = 520; 149 more extents make exactly 4096.
  md.partitions.push_back(Partition{"p1", 0, 0, 0, 0});
  md.partitions.push_back(Partition{"p2", 0, 0, 0, 0});
  while (SerializedMetadataSize(md) + kExtentEntrySize <= 4096) {
    md.extents.push_back(Extent{8, kTargetTypeZero, 0, 0});
  }
  ASSERT_EQ(SerializedMetadataSize(md), 4096u);
  ASSERT_TRUE(SerializeImageFile(md)) << "exactly max must fit";
  md.extents.push_back(Extent{8, kTargetTypeZero, 0, 0});
  ExpectWriteError(md, EFBIG, "metadata_max_size is 4096");
}

TEST(LpWriter, RefusesWhenOnlyTheHeaderOverflowsMaxSize) {
  // tables_size <= max (which liblp's reader accepts) but header + tables > max: the copy would
  // not fit its slot.
  LpMetadata md = SampleMetadata();
  md.geometry.metadata_max_size = 512;
  md.extents.resize(3);
  md.partitions.resize(1);
  md.partitions[0].num_extents = 2;
  // 128 + 52 + 72 + 48 + 64 = 364 fits; add extents until tables alone are <= 512 but total > 512.
  while (SerializedMetadataSize(md) <= 512) md.extents.push_back(Extent{8, kTargetTypeZero, 0, 0});
  ASSERT_LE(SerializedMetadataSize(md) - 128, 512u);
  ExpectWriteError(md, EFBIG, "metadata_max_size is 512");
}

TEST(LpWriter, RefusesNameLongerThanTheField) {
  LpMetadata md = SampleMetadata();
  md.partitions[0].name = std::string(37, 'a');
  ExpectWriteError(
      md, EINVAL,
      "partition 0: name \"" + std::string(37, 'a') + "\" is 37 bytes, the field holds 36");
}

TEST(LpWriter, AcceptsNameOf35Bytes) {
  LpMetadata md = SampleMetadata();
  md.partitions[0].name = std::string(35, 'a');
  auto parsed = ParseImageFile(Serialize(md));
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(parsed->partitions[0].name, std::string(35, 'a'));
}

TEST(LpWriter, RefusesNameThatWouldNotReadBackAsItself) {
  // A NUL ends the name on read, unless the field's last byte is not NUL (liblp's
  // NameFromFixedArray), so these would come back shorter.
  LpMetadata md = SampleMetadata();
  md.partitions[0].name = std::string("a\0b", 3);
  ExpectWriteError(md, EINVAL,
                   "partition 0: name \"a\\x00b\" would read back as \"a\" (NUL at byte 1)");
  md = SampleMetadata();
  md.groups[0].name = std::string(35, 'g') + '\0';
  ExpectWriteError(md, EINVAL, "group 0: name");
  md = SampleMetadata();
  md.block_devices[0].partition_name = std::string("\0", 1);
  ExpectWriteError(md, EINVAL, "block device 0: name \"\\x00\" would read back as \"\"");
}

TEST(LpWriter, AcceptsAnyNameLiblpCanRead) {
  for (const std::string& name : std::vector<std::string>{"a/b", "a b", "a:b", "\xc3\xa9",
                                                          "\x01\x7f\xff", "", "back\\slash"}) {
    LpMetadata md = SampleMetadata();
    md.partitions[0].name = name;
    md.groups[0].name = name;
    md.block_devices[0].partition_name = name;
    auto parsed = ParseImageFile(Serialize(md));
    ASSERT_TRUE(parsed) << PrintableName(name) << ": " << parsed.error().ToString();
    EXPECT_EQ(*parsed, md) << PrintableName(name);
  }
}

TEST(LpWriter, RefusesExtentsOutOfRange) {
  LpMetadata md = SampleMetadata();
  md.partitions[1].num_extents = 5;
  ExpectWriteError(md, EINVAL, "out of range of 3 extents");
}

TEST(LpWriter, RefusesLinearTargetSourceOutOfRange) {
  LpMetadata md = SampleMetadata();
  md.extents[0].target_source = 1;
  ExpectWriteError(md, EINVAL, "extent 0: target_source 1 out of range");
}

TEST(LpWriter, RefusesGroupIndexOutOfRange) {
  LpMetadata md = SampleMetadata();
  md.partitions[0].group_index = 3;
  ExpectWriteError(md, EINVAL, "group_index 3 out of range");
}

TEST(LpWriter, RefusesNoBlockDevice) {
  LpMetadata md = SampleMetadata();
  md.block_devices.clear();
  md.extents = {Extent{8, kTargetTypeZero, 0, 0}};
  md.partitions = {Partition{"z", 0, 0, 1, 0}};
  ExpectWriteError(md, EINVAL, "block_devices: table is empty");
}

TEST(LpWriter, RefusesUnknownMinorVersion) {
  LpMetadata md = SampleMetadata();
  md.minor_version = 3;
  ExpectWriteError(md, EINVAL, "minor_version 3");
}

TEST(LpWriter, RefusesUnknownAttributeBits) {
  LpMetadata md = SampleMetadata();
  md.partitions[0].attributes = 0x20;
  ExpectWriteError(md, EINVAL, "attributes 0x20 not allowed");
}

TEST(LpWriter, RefusesOverlapOfMetadataRegionAndFirstLogicalSector) {
  LpMetadata md = SampleMetadata();
  md.block_devices[0].first_logical_sector = 100;  // region is 143360 bytes = 280 sectors
  ExpectWriteError(md, EINVAL, "first_logical_sector 100 lies inside");
}

TEST(LpWriter, RefusesBadGeometry) {
  LpMetadata md = SampleMetadata();
  md.geometry.metadata_slot_count = 0;
  ExpectWriteError(md, EINVAL, "metadata_slot_count is 0");
  md = SampleMetadata();
  md.geometry.metadata_max_size = 65536 + 1;
  ExpectWriteError(md, EINVAL, "not a multiple of 512");
}

// ---------------------------------------------------------------------------------------------
// Super layout.

TEST(LpSuper, OffsetsMatchLiblp) {
  Geometry g{65536, 2, 4096};
  EXPECT_EQ(PrimaryMetadataOffset(g, 0), 12288u);
  EXPECT_EQ(PrimaryMetadataOffset(g, 1), 77824u);
  EXPECT_EQ(BackupMetadataOffset(g, 0), 143360u);
  EXPECT_EQ(BackupMetadataOffset(g, 1), 208896u);
  EXPECT_EQ(TotalMetadataSize(1024, 2), 16384u);
  Geometry g4{16384, 4, 4096};
  EXPECT_EQ(BackupMetadataOffset(g4, 3), 4096u + 8192 + 16384 * 4 + 16384 * 3);
}

TEST(LpSuper, LayoutHasReservedZerosTwoGeometriesAndEveryCopy) {
  LpMetadata md = SampleMetadata();
  md.geometry.metadata_slot_count = 2;
  md.block_devices[0].first_logical_sector = TotalMetadataSize(65536, 2) / 512;
  auto super = SerializeSuper(md);
  ASSERT_TRUE(super) << super.error().ToString();
  const std::vector<uint8_t>& b = *super;
  ASSERT_EQ(b.size(), TotalMetadataSize(65536, 2));
  EXPECT_TRUE(std::all_of(b.begin(), b.begin() + 4096, [](uint8_t c) { return c == 0; }));
  std::vector<uint8_t> image = Serialize(md);
  EXPECT_TRUE(std::equal(image.begin(), image.begin() + 4096, b.begin() + 4096));
  EXPECT_TRUE(std::equal(image.begin(), image.begin() + 4096, b.begin() + 8192));
  for (uint32_t slot = 0; slot < 2; ++slot) {
    for (uint64_t off :
         {PrimaryMetadataOffset(md.geometry, slot), BackupMetadataOffset(md.geometry, slot)}) {
      EXPECT_TRUE(std::equal(image.begin() + 4096, image.end(), b.begin() + off)) << off;
    }
  }
}

LpMetadata TwoSlotSample() {
  LpMetadata md = SampleMetadata();
  md.geometry = Geometry{4096, 2, 4096};
  return md;
}

TEST(LpSuper, RoundTripsEverySlot) {
  LpMetadata md = TwoSlotSample();
  auto b = SerializeSuper(md);
  ASSERT_TRUE(b);
  for (uint32_t slot = 0; slot < 2; ++slot) {
    auto parsed = ParseSuper(*b, slot);
    ASSERT_TRUE(parsed) << parsed.error().ToString();
    EXPECT_EQ(*parsed, md);
  }
}

TEST(LpSuper, SlotOutOfRange) {
  auto b = SerializeSuper(TwoSlotSample());
  ASSERT_TRUE(b);
  auto r = ParseSuper(*b, 2);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("slot 2 out of range of 2"), std::string::npos);
}

TEST(LpSuper, FallsBackToBackupGeometry) {
  auto b = SerializeSuper(TwoSlotSample());
  ASSERT_TRUE(b);
  (*b)[4096 + 20] ^= 1;
  auto parsed = ParseSuper(*b);
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, TwoSlotSample());
}

TEST(LpSuper, BothGeometriesCorruptFails) {
  auto b = SerializeSuper(TwoSlotSample());
  ASSERT_TRUE(b);
  (*b)[4096 + 20] ^= 1;
  (*b)[8192 + 20] ^= 1;
  auto r = ParseSuper(*b);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("primary"), std::string::npos);
  EXPECT_NE(r.error().message.find("backup"), std::string::npos);
}

TEST(LpSuper, FallsBackToBackupMetadata) {
  LpMetadata md = TwoSlotSample();
  auto b = SerializeSuper(md);
  ASSERT_TRUE(b);
  (*b)[PrimaryMetadataOffset(md.geometry, 1) + 200] ^= 0x80;
  auto parsed = ParseSuper(*b, 1);
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, md);
}

TEST(LpSuper, BothMetadataCopiesCorruptFails) {
  LpMetadata md = TwoSlotSample();
  auto b = SerializeSuper(md);
  ASSERT_TRUE(b);
  (*b)[PrimaryMetadataOffset(md.geometry, 0) + 200] ^= 0x80;
  (*b)[BackupMetadataOffset(md.geometry, 0) + 200] ^= 0x80;
  auto r = ParseSuper(*b, 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EBADMSG);
  EXPECT_NE(r.error().message.find("backup"), std::string::npos);
  EXPECT_TRUE(ParseSuper(*b, 1)) << "slot 1 is intact";
}

TEST(LpSuper, TruncatedInputFails) {
  auto b = SerializeSuper(TwoSlotSample());
  ASSERT_TRUE(b);
  // 16484 cuts slot 1's primary copy (at 16384) short; its backup lies beyond the end.
  for (size_t len : {size_t{0}, size_t{4096}, size_t{8000}, size_t{12288}, size_t{16484}}) {
    std::vector<uint8_t> cut(b->begin(), b->begin() + len);
    EXPECT_FALSE(ParseSuper(cut, 1)) << len;
  }
}

TEST(LpSuper, DetectLayoutAndParseAny) {
  LpMetadata md = TwoSlotSample();
  auto super = SerializeSuper(md);
  auto image = SerializeImageFile(md);
  ASSERT_TRUE(super && image);
  EXPECT_EQ(DetectLayout(*super), Layout::kSuper);
  EXPECT_EQ(DetectLayout(*image), Layout::kImageFile);
  EXPECT_EQ(DetectLayout(std::vector<uint8_t>(100, 0)), Layout::kUnknown);
  auto a = ParseAnyLayout(*super);
  auto c = ParseAnyLayout(*image);
  ASSERT_TRUE(a && c);
  EXPECT_EQ(*a, md);
  EXPECT_EQ(*c, md);
  EXPECT_FALSE(ParseAnyLayout(std::vector<uint8_t>(9000, 0)));
}

// ---------------------------------------------------------------------------------------------
// Editing helpers.

BlockDevice DataDisk() {
  return BlockDevice{0, 4096, 0, 100ull << 30, "nvme0n1p2", 0};
}

TEST(LpEdit, NewImageMetadataMatchesLibfiemapDefaults) {
  LpMetadata md = NewImageMetadata(DataDisk(), 4096, 0);
  EXPECT_EQ(md.geometry, (Geometry{262144, 1, 4096}));
  ASSERT_EQ(md.groups.size(), 1u);
  EXPECT_EQ(md.groups[0].name, "default");
  ASSERT_EQ(md.block_devices.size(), 1u);
  // 4096 + 2 * (4096 + 262144) = 536576 bytes = sector 1048 at 4 KiB alignment.
  EXPECT_EQ(md.block_devices[0].first_logical_sector, 1048u);
  EXPECT_TRUE(md.partitions.empty());
  auto parsed = ParseImageFile(Serialize(md));
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(*parsed, md);
}

TEST(LpEdit, NewImageMetadataAlignsFirstSectorToDeviceAlignment) {
  BlockDevice disk = DataDisk();
  disk.alignment = 1 << 20;
  EXPECT_EQ(NewImageMetadata(disk, 4096, 0).block_devices[0].first_logical_sector, 2048u);
}

TEST(LpEdit, SetPartitionAddsAndReplaces) {
  LpMetadata md = NewImageMetadata(DataDisk(), 4096, 0);
  ASSERT_TRUE(SetPartition(md, "a", 0, {Extent{8, kTargetTypeLinear, 100, 0}}));
  ASSERT_TRUE(
      SetPartition(md, "b", kPartitionAttrReadonly,
                   {Extent{16, kTargetTypeLinear, 200, 0}, Extent{16, kTargetTypeLinear, 300, 0}}));
  ASSERT_TRUE(SetPartition(md, "a", 0,
                           {Extent{1, kTargetTypeLinear, 1, 0}, Extent{2, kTargetTypeLinear, 5, 0},
                            Extent{3, kTargetTypeLinear, 9, 0}}));
  ASSERT_EQ(md.partitions.size(), 2u);
  EXPECT_EQ(md.extents.size(), 5u) << "table stays compact";
  const Partition* a = FindPartition(md, "a");
  const Partition* b = FindPartition(md, "b");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->first_extent_index, 0u);
  EXPECT_EQ(a->num_extents, 3u);
  EXPECT_EQ(b->first_extent_index, 3u);
  EXPECT_EQ(b->attributes, kPartitionAttrReadonly);
  EXPECT_EQ(PartitionExtents(md, *b)[1], (Extent{16, kTargetTypeLinear, 300, 0}));
  EXPECT_EQ(PartitionSizeBytes(md, *a), 6u * 512);
  EXPECT_EQ(PartitionSizeBytes(md, *b), 32u * 512);
  auto parsed = ParseImageFile(Serialize(md));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(*parsed, md);
}

TEST(LpEdit, RemovePartitionCompactsExtents) {
  LpMetadata md = NewImageMetadata(DataDisk(), 4096, 0);
  ASSERT_TRUE(SetPartition(md, "a", 0, {Extent{8, kTargetTypeLinear, 100, 0}}));
  ASSERT_TRUE(SetPartition(md, "b", 0, {Extent{8, kTargetTypeLinear, 200, 0}}));
  ASSERT_TRUE(SetPartition(md, "c", 0, {Extent{8, kTargetTypeLinear, 300, 0}}));
  EXPECT_TRUE(RemovePartition(md, "b"));
  EXPECT_FALSE(RemovePartition(md, "b"));
  EXPECT_EQ(FindPartition(md, "b"), nullptr);
  ASSERT_EQ(md.extents.size(), 2u);
  const Partition* c = FindPartition(md, "c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->first_extent_index, 1u);
  EXPECT_EQ(PartitionExtents(md, *c)[0].target_data, 300u);
  EXPECT_TRUE(ParseImageFile(Serialize(md)));
}

TEST(LpEdit, SetPartitionWithDisabledAttributeRaisesMinor) {
  LpMetadata md = NewImageMetadata(DataDisk(), 4096, 0);
  ASSERT_TRUE(SetPartition(md, "a", kPartitionAttrDisabled, {Extent{8, kTargetTypeLinear, 1, 0}}));
  EXPECT_EQ(md.minor_version, 1);
}

TEST(LpEdit, SetPartitionRejectsBadInputAndLeavesMetadataUnchanged) {
  LpMetadata md = NewImageMetadata(DataDisk(), 4096, 0);
  ASSERT_TRUE(SetPartition(md, "a", 0, {Extent{8, kTargetTypeLinear, 100, 0}}));
  const LpMetadata before = md;
  std::vector<Extent> one{Extent{8, kTargetTypeLinear, 100, 0}};
  EXPECT_EQ(SetPartition(md, std::string(36, 'x'), 0, one).error().code, EINVAL);
  EXPECT_EQ(SetPartition(md, "", 0, one).error().code, EINVAL);
  EXPECT_EQ(SetPartition(md, "a/b", 0, one).error().code, EINVAL);
  EXPECT_EQ(SetPartition(md, "sys@a", 0, one).error().code, EINVAL);
  EXPECT_EQ(SetPartition(md, "vendor+b", 0, one).error().code, EINVAL);
  EXPECT_EQ(SetPartition(md, "a", 0x100, one).error().code, EINVAL);
  EXPECT_EQ(SetPartition(md, "a", 0, {Extent{8, kTargetTypeLinear, 100, 1}}).error().code, EINVAL);
  EXPECT_EQ(SetPartition(md, "a", 0, {Extent{0, kTargetTypeLinear, 100, 0}}).error().code, EINVAL);
  EXPECT_EQ(md, before);
}

TEST(LpEdit, MetadataSizeForHasAFloorAndGrowsIn4KiBSteps) {
  EXPECT_EQ(MetadataSizeFor(0, 0), 262144u);
  EXPECT_EQ(MetadataSizeFor(1, 10000), 262144u);
  uint32_t big = MetadataSizeFor(1, 20000);
  EXPECT_EQ(big % 4096, 0u);
  EXPECT_GE(big, 256u + 52 + 20000 * 24 + 48 + 64);
  EXPECT_LT(big, 256u + 52 + 20000 * 24 + 48 + 64 + 4096);
  EXPECT_GT(MetadataSizeFor(1, 1u << 31), kMaxMetadataMaxSize);
}

TEST(LpEdit, TwentyThousandExtentsGrowMetadataAndRoundTripThroughAFile) {
  LpMetadata md = NewImageMetadata(DataDisk(), 4096, 0);
  std::vector<Extent> extents;
  for (uint64_t i = 0; i < 20000; ++i) {
    AppendLinearExtent(extents, 8, 10000 + i * 16, 0);  // a gap between each: nothing merges
  }
  ASSERT_EQ(extents.size(), 20000u);
  ASSERT_TRUE(SetPartition(md, "small", 0, {Extent{8, kTargetTypeLinear, 1, 0}}));
  auto set = SetPartition(md, "fragmented", 0, extents);
  ASSERT_TRUE(set) << set.error().ToString();
  EXPECT_GT(md.geometry.metadata_max_size, 262144u);
  EXPECT_LE(SerializedMetadataSize(md), md.geometry.metadata_max_size);
  imaged::test::TempDir dir;
  Directory d = imaged::test::OpenDir(dir.path());
  auto w = WriteImageFile(d, "lp_metadata", md);
  ASSERT_TRUE(w) << w.error().ToString();
  auto r = ReadImageFile(d, "lp_metadata");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, md);
  // Also as a super layout that other liblp readers can open.
  auto super = SerializeSuper(md);
  ASSERT_TRUE(super);
  auto parsed = ParseSuper(*super);
  ASSERT_TRUE(parsed);
  EXPECT_EQ(*parsed, md);
}

TEST(LpEdit, AppendLinearExtentMergesOnlyContiguousSameSource) {
  std::vector<Extent> e;
  AppendLinearExtent(e, 8, 100, 0);
  AppendLinearExtent(e, 8, 108, 0);  // contiguous: merged
  AppendLinearExtent(e, 0, 500, 0);  // empty: ignored
  AppendLinearExtent(e, 8, 200, 0);  // gap
  AppendLinearExtent(e, 8, 208, 1);  // contiguous but another device
  AppendLinearExtent(e, 8, 100, 1);  // backwards
  ASSERT_EQ(e.size(), 4u);
  EXPECT_EQ(e[0], (Extent{16, kTargetTypeLinear, 100, 0}));
  EXPECT_EQ(e[1], (Extent{8, kTargetTypeLinear, 200, 0}));
  EXPECT_EQ(e[2], (Extent{8, kTargetTypeLinear, 208, 1}));
  EXPECT_EQ(e[3], (Extent{8, kTargetTypeLinear, 100, 1}));
}

TEST(LpEdit, IsValidName) {
  EXPECT_TRUE(IsValidName("system_gsi"));
  EXPECT_TRUE(IsValidName("my-image.v2"));
  EXPECT_FALSE(IsValidName(""));
  EXPECT_FALSE(IsValidName(std::string(36, 'a')));
  EXPECT_FALSE(IsValidName("x y"));
}

TEST(LpEdit, PrintableNameEscapesBackslashAndNonPrintableBytes) {
  EXPECT_EQ(PrintableName("sys@a vendor+b"), "sys@a vendor+b");
  EXPECT_EQ(PrintableName(std::string("a\0\x1f\x7f\xff\\", 6)), "a\\x00\\x1f\\x7f\\xff\\\\");
}

// ---------------------------------------------------------------------------------------------
// Files.

TEST(LpFile, ReadMissingFileIsEnoent) {
  imaged::test::TempDir dir;
  auto r = ReadImageFile(imaged::test::OpenDir(dir.path()), "nope");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
}

TEST(LpFile, WriteRefusesOversizedMetadataAndKeepsOldFile) {
  imaged::test::TempDir dir;
  Directory d = imaged::test::OpenDir(dir.path());
  LpMetadata md = SampleMetadata();
  ASSERT_TRUE(WriteImageFile(d, "lp_metadata", md));
  LpMetadata big = md;
  big.geometry.metadata_max_size = 512;
  for (int i = 0; i < 10; ++i) big.extents.push_back(Extent{8, kTargetTypeZero, 0, 0});
  auto w = WriteImageFile(d, "lp_metadata", big);
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, EFBIG);
  auto r = ReadImageFile(d, "lp_metadata");
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, md);
}

}  // namespace
}  // namespace imaged::metadata
