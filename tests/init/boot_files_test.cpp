// The initramfs script turns /etc/imaged/boot.conf into one imaged-init command line, and never
// fails the boot. Run with a stub imaged-init that records its arguments.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "process.h"
#include "test_util.h"

namespace imaged::init {
namespace {

using imaged::test::RunCommand;
using imaged::test::TempDir;

const std::string kScript =
    std::string(INIT_SOURCE_DIR) + "/initramfs-tools/scripts/local-top/imaged";
const std::string kHook = std::string(INIT_SOURCE_DIR) + "/initramfs-tools/hooks/imaged";

class BootScriptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    conf_ = (tmp_.path() / "boot.conf").string();
    args_ = (tmp_.path() / "args").string();
    stub_ = (tmp_.path() / "imaged-init").string();
    test::WriteFile(stub_, "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > '" + args_ +
                               "'\nexit ${STUB_EXIT:-0}\n");
    ::chmod(stub_.c_str(), 0755);
  }
  imaged::test::CommandResult RunScript(const std::string& extra_env = "STUB_EXIT=0") {
    return RunCommand({"sh", kScript}, {"IMAGED_BOOT_CONF=" + conf_, "IMAGED_INIT=" + stub_,
                                        "IMAGED_MODPROBE=true", extra_env});
  }
  std::string Args() {
    std::ifstream in(args_);
    std::string all, line;
    while (std::getline(in, line)) all += line + " ";
    return all;
  }
  TempDir tmp_;
  std::string conf_, args_, stub_;
};

TEST_F(BootScriptTest, BuildsTheCommandLineFromBootConf) {
  test::WriteFile(conf_,
                  "METADATA_DIR=/m/set\nDATA_DEVICE=/dev/vdb\nVERIFY=yes\nDATA_PATH_IN_FS=/img\n"
                  "PASSTHROUGH=imaged-data\nPREFIX=boot-\nREADONLY=yes\nIMAGES=\"a b\"\n");
  auto r = RunScript();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Args(),
            "map --metadata-dir /m/set --data-device /dev/vdb --verify --data-path-in-fs /img "
            "--passthrough imaged-data --prefix boot- --readonly a b ");
}

TEST_F(BootScriptTest, DefaultsMapEverythingWithAutomaticVerification) {
  test::WriteFile(conf_, "METADATA_DIR=/m\n");
  ASSERT_EQ(RunScript().exit_code, 0);
  EXPECT_EQ(Args(), "map --metadata-dir /m ");
}

TEST_F(BootScriptTest, VerifyNoTurnsVerificationOff) {
  test::WriteFile(conf_, "METADATA_DIR=/m\nVERIFY=no\n");
  ASSERT_EQ(RunScript().exit_code, 0);
  EXPECT_EQ(Args(), "map --metadata-dir /m --no-verify ");
}

TEST_F(BootScriptTest, AFailedMapDoesNotFailTheBoot) {
  test::WriteFile(conf_, "METADATA_DIR=/m\n");
  auto r = RunScript("STUB_EXIT=1");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.err.find("exited with status 1"), std::string::npos) << r.err;
}

TEST_F(BootScriptTest, DisabledConfigMapsNothing) {
  test::WriteFile(conf_, "ENABLED=no\nMETADATA_DIR=/m\n");
  ASSERT_EQ(RunScript().exit_code, 0);
  EXPECT_FALSE(std::filesystem::exists(args_));
}

TEST_F(BootScriptTest, NoConfigMapsNothing) {
  ASSERT_EQ(RunScript().exit_code, 0);
  EXPECT_FALSE(std::filesystem::exists(args_));
}

TEST(BootFilesTest, ScriptsAreValidShell) {
  for (const auto& path : {kScript, kHook}) {
    auto r = RunCommand({"sh", "-n", path});
    EXPECT_EQ(r.exit_code, 0) << path << ": " << r.err;
  }
}

TEST(BootFilesTest, ScriptsAnswerPrereqs) {
  for (const auto& path : {kScript, kHook}) {
    auto r = RunCommand({"sh", path, "prereqs"});
    EXPECT_EQ(r.exit_code, 0) << path << ": " << r.err;
  }
}

}  // namespace
}  // namespace imaged::init
