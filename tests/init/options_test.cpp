// imaged-init's command line: what each form means, and usage errors exit 2.
#include <gtest/gtest.h>

#include "init/options.h"

namespace imaged::init {
namespace {

ParsedArgs Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "imaged-init");
  return ParseArgs(args);
}

TEST(OptionsTest, MapDefaultsVerifyToAuto) {
  auto p = Parse({"map", "--metadata-dir", "/m"});
  ASSERT_TRUE(p.run) << p.text;
  EXPECT_EQ(p.options.command, Command::kMap);
  EXPECT_EQ(p.options.metadata_dir, "/m");
  EXPECT_EQ(p.options.verify, VerifyMode::kAuto);
  EXPECT_EQ(p.options.prefix, "imaged-");
  EXPECT_FALSE(p.options.readonly);
  EXPECT_FALSE(p.options.write_status);
  EXPECT_EQ(p.options.search_depth, 3);
  EXPECT_EQ(p.options.fs_offset, 0u);
  EXPECT_TRUE(p.options.names.empty());
}

TEST(OptionsTest, MapTakesEveryOptionAndNames) {
  auto p = Parse({"map",
                  "--metadata-dir",
                  "/m",
                  "--data-device",
                  "/dev/vdb",
                  "--verify",
                  "--readonly",
                  "--prefix",
                  "boot-",
                  "--write-status",
                  "--data-path-in-fs",
                  "/images",
                  "--search-depth",
                  "5",
                  "--fs-offset",
                  "1M",
                  "--passthrough",
                  "imaged-data",
                  "a",
                  "b"});
  ASSERT_TRUE(p.run) << p.text;
  EXPECT_EQ(p.options.data_device, "/dev/vdb");
  EXPECT_EQ(p.options.verify, VerifyMode::kOn);
  EXPECT_TRUE(p.options.readonly);
  EXPECT_EQ(p.options.prefix, "boot-");
  EXPECT_TRUE(p.options.write_status);
  EXPECT_EQ(p.options.data_path_in_fs, "/images");
  EXPECT_EQ(p.options.search_depth, 5);
  EXPECT_EQ(p.options.fs_offset, 1u << 20);
  EXPECT_EQ(p.options.passthrough, "imaged-data");
  EXPECT_EQ(p.options.names, (std::vector<std::string>{"a", "b"}));
}

TEST(OptionsTest, NoVerifyTurnsVerificationOff) {
  auto p = Parse({"map", "--metadata-dir", "/m", "--no-verify"});
  ASSERT_TRUE(p.run) << p.text;
  EXPECT_EQ(p.options.verify, VerifyMode::kOff);
}

TEST(OptionsTest, VerifyAndNoVerifyTogetherIsAUsageError) {
  auto p = Parse({"map", "--metadata-dir", "/m", "--verify", "--no-verify"});
  EXPECT_FALSE(p.run);
  EXPECT_EQ(p.exit_code, 2);
}

TEST(OptionsTest, MetadataDirIsRequired) {
  auto p = Parse({"map"});
  EXPECT_FALSE(p.run);
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_NE(p.text.find("--metadata-dir"), std::string::npos) << p.text;
}

TEST(OptionsTest, ACommandIsRequired) {
  auto p = Parse({});
  EXPECT_FALSE(p.run);
  EXPECT_EQ(p.exit_code, 2);
}

TEST(OptionsTest, UnknownOptionIsAUsageError) {
  auto p = Parse({"unmap", "--metadata-dir", "/m", "--bogus"});
  EXPECT_FALSE(p.run);
  EXPECT_EQ(p.exit_code, 2);
}

TEST(OptionsTest, FsOffsetMustBeWholeSectors) {
  auto p = Parse({"map", "--metadata-dir", "/m", "--fs-offset", "100"});
  EXPECT_FALSE(p.run);
  EXPECT_EQ(p.exit_code, 2);
  auto q = Parse({"map", "--metadata-dir", "/m", "--fs-offset", "lots"});
  EXPECT_EQ(q.exit_code, 2);
}

TEST(OptionsTest, NamesWithSlashesAreRefused) {
  auto p = Parse({"unmap", "--metadata-dir", "/m", "../x"});
  EXPECT_FALSE(p.run);
  EXPECT_EQ(p.exit_code, 2);
}

TEST(OptionsTest, HelpExitsZeroWithText) {
  auto p = Parse({"map", "--help"});
  EXPECT_FALSE(p.run);
  EXPECT_EQ(p.exit_code, 0);
  EXPECT_NE(p.text.find("--verify"), std::string::npos);
}

TEST(OptionsTest, ListTakesJson) {
  auto p = Parse({"list", "--metadata-dir", "/m", "--json"});
  ASSERT_TRUE(p.run) << p.text;
  EXPECT_EQ(p.options.command, Command::kList);
  EXPECT_TRUE(p.options.json);
}

TEST(OptionsTest, ListTakesNoVerifyOptions) {
  auto p = Parse({"list", "--metadata-dir", "/m", "--verify"});
  EXPECT_EQ(p.exit_code, 2);
}

}  // namespace
}  // namespace imaged::init
