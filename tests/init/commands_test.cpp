// The parts of imaged-init that need no kernel: dm tables from lp_metadata, finding the data
// disk, and `list` output.
#include <filesystem>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dir.h"
#include "init/commands.h"
#include "init/disk.h"
#include "metadata/lp_metadata.h"
#include "process.h"
#include "test_util.h"

namespace imaged::init {
namespace {

using imaged::test::TempDir;
using metadata::Extent;
using metadata::kTargetTypeLinear;
using metadata::kTargetTypeZero;

metadata::LpMetadata SampleMetadata() {
  metadata::BlockDevice disk;
  disk.partition_name = "vdb";
  disk.size = 1 << 30;
  auto md = metadata::NewImageMetadata(disk, 4096, 0);
  EXPECT_TRUE(metadata::SetPartition(
      md, "system", 0, {{2048, kTargetTypeLinear, 4096, 0}, {1024, kTargetTypeLinear, 100000, 0}}));
  EXPECT_TRUE(metadata::SetPartition(md, "vendor", metadata::kPartitionAttrReadonly,
                                     {{512, kTargetTypeLinear, 8192, 0}}));
  EXPECT_TRUE(metadata::SetPartition(md, "old", metadata::kPartitionAttrDisabled,
                                     {{8, kTargetTypeLinear, 9000, 0}}));
  return md;
}

class ResolveDiskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    lookup_.dev_dir = (tmp_.path() / "dev").string();
    lookup_.sys_block_dir = (tmp_.path() / "sys").string();
    std::filesystem::create_directories(lookup_.dev_dir + "/disk/by-partlabel");
    std::filesystem::create_directories(lookup_.sys_block_dir);
  }
  void MakeDisk(const std::string& path, uint64_t size) {
    test::WriteFile(path, "");
    std::filesystem::resize_file(path, size);
  }
  metadata::BlockDevice Entry(const std::string& name, uint64_t size) {
    metadata::BlockDevice d;
    d.partition_name = name;
    d.size = size;
    return d;
  }
  TempDir tmp_;
  DiskLookup lookup_;
};

TEST_F(ResolveDiskTest, FindsDevName) {
  MakeDisk(lookup_.dev_dir + "/vdb", 8192);
  auto disk = ResolveDataDisk(Entry("vdb", 8192), "", lookup_);
  ASSERT_OK(disk);
  EXPECT_EQ(disk->path, lookup_.dev_dir + "/vdb");
  EXPECT_EQ(disk->size, 8192u);
}

TEST_F(ResolveDiskTest, FindsPartitionLabel) {
  MakeDisk(lookup_.dev_dir + "/sdz3", 8192);
  std::filesystem::create_symlink("../../sdz3", lookup_.dev_dir + "/disk/by-partlabel/userdata");
  auto disk = ResolveDataDisk(Entry("userdata", 8192), "", lookup_);
  ASSERT_OK(disk);
  EXPECT_EQ(disk->path, lookup_.dev_dir + "/disk/by-partlabel/userdata");
}

TEST_F(ResolveDiskTest, FindsPartnameInSysfsWithoutUdev) {
  MakeDisk(lookup_.dev_dir + "/sdz3", 8192);
  std::filesystem::create_directories(lookup_.sys_block_dir + "/sdz3");
  test::WriteFile(lookup_.sys_block_dir + "/sdz3/uevent", "MAJOR=8\nMINOR=3\nPARTNAME=data\n");
  auto disk = ResolveDataDisk(Entry("data", 8192), "", lookup_);
  ASSERT_OK(disk);
  EXPECT_EQ(disk->path, lookup_.dev_dir + "/sdz3");
}

TEST_F(ResolveDiskTest, DataDeviceOverrides) {
  MakeDisk(lookup_.dev_dir + "/vdb", 4096);
  MakeDisk(lookup_.dev_dir + "/other", 8192);
  auto disk = ResolveDataDisk(Entry("vdb", 8192), lookup_.dev_dir + "/other", lookup_);
  ASSERT_OK(disk);
  EXPECT_EQ(disk->path, lookup_.dev_dir + "/other");
}

TEST_F(ResolveDiskTest, RefusesADiskOfAnotherSize) {
  MakeDisk(lookup_.dev_dir + "/vdb", 4096);
  auto disk = ResolveDataDisk(Entry("vdb", 8192), "", lookup_);
  ASSERT_FALSE(disk);
  EXPECT_EQ(disk.error().code, ERANGE);
  EXPECT_NE(disk.error().message.find("not the disk the images were created on"),
            std::string::npos);
}

TEST_F(ResolveDiskTest, MissingDiskSaysWhatWasTried) {
  auto disk = ResolveDataDisk(Entry("vdq", 8192), "", lookup_);
  ASSERT_FALSE(disk);
  EXPECT_EQ(disk.error().code, ENODEV);
  EXPECT_NE(disk.error().message.find("by-partlabel/vdq"), std::string::npos);
}

TEST(FormatListTest, TextShowsSizesExtentsAndFlags) {
  auto md = SampleMetadata();
  std::vector<std::string> mapped{"imaged-system"};
  std::string text = FormatList(md, "imaged-", &mapped, false);
  EXPECT_NE(text.find("data disk: vdb"), std::string::npos) << text;
  std::istringstream lines(text);
  std::string line;
  std::map<std::string, std::string> rows;
  while (std::getline(lines, line)) rows[line.substr(0, line.find(' '))] = line;
  EXPECT_NE(rows["system"].find("1.5 MiB"), std::string::npos) << text;
  EXPECT_NE(rows["system"].find("--m"), std::string::npos) << text;
  EXPECT_NE(rows["system"].find("/dev/mapper/imaged-system"), std::string::npos) << text;
  EXPECT_NE(rows["vendor"].find("r--"), std::string::npos) << text;
  EXPECT_NE(rows["old"].find("-d-"), std::string::npos) << text;
}

TEST(FormatListTest, UnknownMappedStateIsAQuestionMark) {
  auto md = SampleMetadata();
  std::string text = FormatList(md, "imaged-", nullptr, false);
  EXPECT_NE(text.find("r-?"), std::string::npos) << text;
}

TEST(FormatListTest, JsonHasEveryField) {
  auto md = SampleMetadata();
  std::vector<std::string> mapped{"imaged-vendor"};
  auto j = nlohmann::json::parse(FormatList(md, "imaged-", &mapped, true));
  EXPECT_EQ(j["block_device"]["name"], "vdb");
  ASSERT_EQ(j["images"].size(), 3u);
  const auto& system = j["images"][0];
  EXPECT_EQ(system["name"], "system");
  EXPECT_EQ(system["size"], 3072 * 512);
  EXPECT_EQ(system["mapped"], false);
  ASSERT_EQ(system["extents"].size(), 2u);
  EXPECT_EQ(system["extents"][1]["physical_sector"], 100000);
  EXPECT_EQ(system["extents"][1]["sectors"], 1024);
  EXPECT_EQ(j["images"][1]["readonly"], true);
  EXPECT_EQ(j["images"][1]["mapped"], true);
  EXPECT_EQ(j["images"][2]["disabled"], true);
  EXPECT_TRUE(FormatList(md, "imaged-", nullptr, true).find("\"mapped\": null") !=
              std::string::npos);
}

TEST(RunListTest, ReadsLpMetadataFromTheMetadataDir) {
  TempDir tmp;
  ASSERT_OK(metadata::WriteImageFile(imaged::test::OpenDir(tmp.path()), "lp_metadata",
                                     SampleMetadata()));
  Options o;
  o.command = Command::kList;
  o.metadata_dir = tmp.path().string();
  o.json = true;
  std::ostringstream out, err;
  ASSERT_EQ(RunList(o, out, err), 0) << err.str();
  auto j = nlohmann::json::parse(out.str());
  EXPECT_EQ(j["images"].size(), 3u);
}

TEST(RunListTest, MissingMetadataFails) {
  TempDir tmp;
  Options o;
  o.metadata_dir = tmp.path().string();
  std::ostringstream out, err;
  EXPECT_EQ(RunList(o, out, err), 1);
  EXPECT_NE(err.str().find("lp_metadata"), std::string::npos) << err.str();
}

}  // namespace
}  // namespace imaged::init
