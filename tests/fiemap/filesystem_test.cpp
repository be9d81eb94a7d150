// Pure filesystem facts: size limits per fs and the device-mapper stack pop decision.
#include <sys/vfs.h>

#include <gtest/gtest.h>

#include <sstream>

#include <fiemap/fiemap_writer.h>
#include <fiemap/filesystem.h>

#include "fiemap_at.h"
#include "process.h"

namespace imaged::fiemap {
namespace {

TEST(FsTypeName, NamesEveryType) {
  EXPECT_EQ(FsTypeName(FsType::Ext4), "ext4");
  EXPECT_EQ(FsTypeName(FsType::F2fs), "f2fs");
  EXPECT_EQ(FsTypeName(FsType::Vfat), "vfat");
  EXPECT_EQ(FsTypeName(FsType::Xfs), "xfs");
}

TEST(Ext4MaxFileSize, ExtentsWith4KBlocksIs16TiBMinusOneBlock) {
  EXPECT_EQ(Ext4MaxFileSize(4096, true, true), ((1ull << 32) - 1) * 4096);
}

TEST(Ext4MaxFileSize, ExtentsWith1KBlocksIs4TiBMinusOneBlock) {
  EXPECT_EQ(Ext4MaxFileSize(1024, true, true), ((1ull << 32) - 1) * 1024);
}

TEST(Ext4MaxFileSize, WithoutHugeFileIsLimitedBy32BitSectorCount) {
  // i_blocks in 512-byte units: 2^32-1 sectors, in whole 4 KiB blocks.
  EXPECT_EQ(Ext4MaxFileSize(4096, true, false), ((1ull << 32) - 1) / 8 * 4096);
}

TEST(Ext4MaxFileSize, IndirectBlocksWith1KBlocksIsAbout16GiB) {
  // The classic ext2/3 limit that AOSP hard-coded for every ext4: 12 + 256 + 256^2 + 256^3
  // blocks of 1 KiB.
  EXPECT_EQ(Ext4MaxFileSize(1024, false, true), (12ull + 256 + 65536 + 16777216) * 1024);
}

TEST(Ext4MaxFileSize, IndirectBlocksWith4KBlocksIsCappedBy32BitBlockNumbers) {
  // The 4 KiB indirect tree reaches ~4 TiB worth of blocks, beyond 2^32-1 logical blocks? No:
  // 12 + 1024 + 1024^2 + 1024^3 > 2^32 - 1 is false, so the tree itself is the limit.
  uint64_t tree = 12ull + 1024 + 1024ull * 1024 + 1024ull * 1024 * 1024;
  EXPECT_EQ(Ext4MaxFileSize(4096, false, true), tree * 4096);
}

TEST(F2fsMaxFileSize, MatchesTheKernelFor4KBlocks) {
  // AOSP's 4329690886144 also counts the inode's 923 addresses, which the kernel does not.
  EXPECT_EQ(F2fsMaxFileSize(4096), 4329690886144ull - 923 * 4096);
}

TEST(VfatMaxFileSize, Is4GiBMinusOneRoundedDownToTheCluster) {
  EXPECT_EQ(VfatMaxFileSize(4096), 4294963200ull);
  EXPECT_EQ(VfatMaxFileSize(32768), 4294934528ull);
  EXPECT_EQ(VfatMaxFileSize(512), 4294966784ull);
}

// "<start> <len> <type> <params>" lines, as `dmsetup table` prints them, into live targets.
std::vector<dm::TargetInfo> Table(std::string_view text) {
  std::vector<dm::TargetInfo> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::istringstream line{std::string(text.substr(pos, nl - pos))};
    pos = nl + 1;
    dm::TargetInfo t;
    if (!(line >> t.start >> t.length >> t.type)) continue;
    std::getline(line >> std::ws, t.params);
    out.push_back(t);
  }
  return out;
}

TEST(DmStackNextHop, PopsWholeDeviceLinearAndAccumulatesItsOffset) {
  auto hop = DmStackNextHop(Table("0 2048 linear 7:3 100\n"), 2048);
  ASSERT_TRUE(hop) << hop.error().ToString();
  ASSERT_TRUE(hop->has_value());
  EXPECT_EQ((*hop)->device, "7:3");
  EXPECT_EQ((*hop)->offset_bytes, 100u * 512);
  EXPECT_FALSE((*hop)->ciphertext);
}

TEST(DmStackNextHop, PopsCryptUsingItsDeviceOffsetAndMarksCiphertext) {
  auto hop = DmStackNextHop(Table("0 409600 crypt aes-xts-plain64 :64:logon:cryptsetup:abc 0 8:2 32768 1 allow_discards\n"),
      409600);
  ASSERT_TRUE(hop) << hop.error().ToString();
  ASSERT_TRUE(hop->has_value());
  EXPECT_EQ((*hop)->device, "8:2");
  EXPECT_EQ((*hop)->offset_bytes, 32768u * 512);
  EXPECT_TRUE((*hop)->ciphertext);
}

TEST(DmStackNextHop, StopsAtSeveralTargets) {
  auto hop = DmStackNextHop(Table("0 1024 linear 7:3 0\n1024 1024 linear 7:4 0\n"), 2048);
  ASSERT_TRUE(hop);
  EXPECT_FALSE(hop->has_value());
}

TEST(DmStackNextHop, StopsAtTargetNotStartingAtZero) {
  auto hop = DmStackNextHop(Table("8 2040 linear 7:3 0\n"), 2048);
  ASSERT_TRUE(hop);
  EXPECT_FALSE(hop->has_value());
}

TEST(DmStackNextHop, StopsAtTargetNotCoveringTheDevice) {
  auto hop = DmStackNextHop(Table("0 1024 linear 7:3 0\n"), 2048);
  ASSERT_TRUE(hop);
  EXPECT_FALSE(hop->has_value());
}

TEST(DmStackNextHop, StopsAtOtherTargetTypes) {
  for (const char* t : {"0 2048 striped 2 128 7:3 0 7:4 0", "0 2048 thin 253:2 1",
                        "0 2048 snapshot 7:3 7:4 P 8", "0 2048 zero", "0 2048 verity 1 2"}) {
    auto hop = DmStackNextHop(Table(t), 2048);
    ASSERT_TRUE(hop) << t;
    EXPECT_FALSE(hop->has_value()) << t;
  }
}

TEST(DmStackNextHop, RejectsMalformedTables) {
  EXPECT_FALSE(DmStackNextHop(Table(""), 2048));
  EXPECT_FALSE(DmStackNextHop(Table("0 2048"), 2048));
  EXPECT_FALSE(DmStackNextHop(Table("0 2048 linear 7:3"), 2048));
  EXPECT_FALSE(DmStackNextHop(Table("0 2048 linear 7:3 x"), 2048));
  EXPECT_FALSE(DmStackNextHop(Table("zero 2048 linear 7:3 0"), 2048));
  EXPECT_FALSE(DmStackNextHop(Table("0 2048 crypt aes key 0 8:2"), 2048));
}

TEST(InspectFilesystem, RefusesTmpfsNamingIt) {
  struct statfs sfs;
  if (statfs("/dev/shm", &sfs) != 0 || sfs.f_type != 0x01021994) {
    GTEST_SKIP() << "/dev/shm is not tmpfs here";
  }
  auto info = InspectFilesystem("/dev/shm");
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code, EOPNOTSUPP);
  EXPECT_NE(info.error().message.find("tmpfs"), std::string::npos) << info.error().message;
}

TEST(FiemapWriter, CreateOnTmpfsIsRefusedAndCreatesNothing) {
  struct statfs sfs;
  if (statfs("/dev/shm", &sfs) != 0 || sfs.f_type != 0x01021994) {
    GTEST_SKIP() << "/dev/shm is not tmpfs here";
  }
  std::string path = "/dev/shm/imaged-fiemap-tmpfs-refusal." + std::to_string(getpid());
  auto w = test::CreateAt(path, 1 << 20);
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code, EOPNOTSUPP);
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace imaged::fiemap
