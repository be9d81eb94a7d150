// Smoke test of the imaged-lpdump debug tool on both layouts.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "dir.h"
#include "lp_test_util.h"
#include "metadata/lp_metadata.h"
#include "process.h"

namespace imaged::metadata {
namespace {

class LpdumpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    md_ = testing::SampleMetadata();
    md_.partitions[1].attributes = kPartitionAttrDisabled;
    image_ = (dir_.path() / "lp_metadata").string();
    super_ = (dir_.path() / "super.img").string();
    Directory d = imaged::test::OpenDir(dir_.path());
    ASSERT_TRUE(WriteImageFile(d, "lp_metadata", md_));
    auto super = SerializeSuper(md_);
    ASSERT_TRUE(super);
    ASSERT_TRUE(d.AtomicWrite("super.img", *super));
  }
  imaged::test::TempDir dir_;
  LpMetadata md_;
  std::string image_, super_;
};

TEST_F(LpdumpTest, PrintsImageFileLikeAospLpdump) {
  auto r = imaged::test::RunCommand({IMAGED_LPDUMP_BIN, image_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* needle :
       {"Layout: image-file", "Metadata version: 10.1", "Metadata max size: 65536 bytes",
        "Name: system", "Attributes: readonly", "Name: vendor_b", "Attributes: disabled",
        "0 .. 2047 linear sda1 4096", "2048 .. 3071 linear sda1 100000", "0 .. 7 zero",
        "Partition name: sda1", "First sector: 2048", "Name: default"}) {
    EXPECT_NE(r.out.find(needle), std::string::npos) << needle << "\n" << r.out;
  }
}

TEST_F(LpdumpTest, JsonOfSuperLayoutMatchesModel) {
  auto r = imaged::test::RunCommand({IMAGED_LPDUMP_BIN, "--json", super_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["layout"], "super");
  EXPECT_EQ(j["header"]["minor_version"], 1);
  ASSERT_EQ(j["partitions"].size(), 2u);
  EXPECT_EQ(j["partitions"][0]["name"], "system");
  EXPECT_EQ(j["partitions"][0]["size"], 3072 * 512);
  EXPECT_EQ(j["partitions"][0]["extents"][1]["target_data"], 100000);
  EXPECT_EQ(j["block_devices"][0]["partition_name"], "sda1");
  EXPECT_EQ(j["groups"][0]["name"], "default");
}

TEST_F(LpdumpTest, PrintsNamesAndTargetTypesOtherToolsWrite) {
  LpMetadata md = md_;
  md.partitions[0].name = std::string(36, 'p');  // fills the field, no NUL
  md.partitions[1].name = "sys@a\x01\xff";
  md.extents[2].target_type = 5;
  md.groups[0].name = "grp+1";
  std::vector<uint8_t> bytes = testing::ReferenceImageFile(md, 1);
  ASSERT_TRUE(imaged::test::OpenDir(dir_.path()).AtomicWrite("foreign", bytes));
  const std::string foreign = (dir_.path() / "foreign").string();

  auto text = imaged::test::RunCommand({IMAGED_LPDUMP_BIN, foreign});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  for (const std::string& needle :
       {"Name: " + std::string(36, 'p') + "\n", std::string("Name: sys@a\\x01\\xff\n"),
        std::string("0 .. 7 type5"), std::string("Group: grp+1")}) {
    EXPECT_NE(text.out.find(needle), std::string::npos) << needle << "\n" << text.out;
  }

  auto json = imaged::test::RunCommand({IMAGED_LPDUMP_BIN, "--json", foreign});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  auto j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["partitions"][0]["name"], std::string(36, 'p'));
  EXPECT_EQ(j["partitions"][1]["name"], "sys@a\\x01\\xff");
  EXPECT_EQ(j["partitions"][1]["extents"][0]["target_type"], "type5");
  EXPECT_EQ(j["groups"][0]["name"], "grp+1");
}

TEST_F(LpdumpTest, CorruptFileFailsWithReason) {
  std::string bad = (dir_.path() / "bad").string();
  std::vector<uint8_t> junk(5000, 0);
  ASSERT_TRUE(imaged::test::OpenDir(dir_.path()).AtomicWrite("bad", junk));
  auto r = imaged::test::RunCommand({IMAGED_LPDUMP_BIN, bad});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("no liblp geometry magic"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace imaged::metadata
