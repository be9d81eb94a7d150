// dm::LoopOptions for the manager's crash safety (host: loop devices): before_configure names the
// loop before it exists (and again after losing it to another process), no_discard turns
// discards off before Attach returns.
#include <fcntl.h>
#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include "dm/loop_device.h"
#include "fs_fixture.h"
#include "process.h"

namespace imaged::test {
namespace {

class LoopHookTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_ROOT();
    if (access("/dev/loop-control", F_OK) != 0) GTEST_SKIP() << "no /dev/loop-control";
    file_ = (dir_.path() / "piece").string();
    other_ = (dir_.path() / "intruder").string();
    for (const auto& f : {file_, other_}) {
      int fd = open(f.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
      close(fd);
    }
  }
  void TearDown() override {
    for (const auto& f : {file_, other_}) {
      if (f.empty()) continue;
      if (auto loops = dm::LoopDevice::FindByBackingFile(f)) {
        for (const auto& l : *loops) (void)dm::LoopDevice::DetachPath(l);
      }
    }
  }
  dm::LoopOptions Options() {
    dm::LoopOptions o;
    o.direct_io = false;
    o.allow_buffered = true;
    return o;
  }

  TempDir dir_;
  std::string file_, other_;
};

TEST_F(LoopHookTest, BeforeConfigureNamesTheLoopBeforeItIsBound) {
  std::vector<std::string> calls;
  std::string backing_at_call = "unset";
  auto options = Options();
  options.before_configure = [&](const std::string& path) -> Result<void> {
    calls.push_back(path);
    // Not bound yet: the device has no backing file at this point.
    auto backing = dm::LoopDevice::BackingFile(path);
    backing_at_call = backing ? *backing : "";
    return Ok();
  };
  auto loop = dm::LoopDevice::Attach(file_, options);
  ASSERT_TRUE(loop) << loop.error().ToString();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls.back(), loop->path());
  EXPECT_EQ(backing_at_call, "");
}

TEST_F(LoopHookTest, LoopTakenByAnotherProcessCallsTheHookAgainWithTheNextLoop) {
  std::vector<std::string> calls;
  auto options = Options();
  options.before_configure = [&](const std::string& path) -> Result<void> {
    calls.push_back(path);
    if (calls.size() == 1) {
      // Another process binds the loop we were given, between GET_FREE and our configure.
      auto r = RunCommand({"losetup", path, other_});
      if (r.exit_code != 0) return MakeError(EIO, "losetup: {}", r.err);
    }
    return Ok();
  };
  auto loop = dm::LoopDevice::Attach(file_, options);
  ASSERT_TRUE(loop) << loop.error().ToString();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_NE(calls[0], calls[1]);
  EXPECT_EQ(calls[1], loop->path()) << "the last call names the loop returned";
  auto stolen = dm::LoopDevice::BackingFile(calls[0]);
  ASSERT_TRUE(stolen);
  EXPECT_NE(stolen->find("intruder"), std::string::npos) << "the other process kept its loop";
}

TEST_F(LoopHookTest, HookErrorAbortsAndAttachesNothing) {
  auto options = Options();
  options.before_configure = [](const std::string&) -> Result<void> {
    return MakeError(EROFS, "status file cannot be written");
  };
  auto loop = dm::LoopDevice::Attach(file_, options);
  ASSERT_FALSE(loop);
  EXPECT_EQ(loop.error().code, EROFS);
  auto found = dm::LoopDevice::FindByBackingFile(file_);
  ASSERT_TRUE(found);
  EXPECT_TRUE(found->empty());
}

TEST_F(LoopHookTest, NoDiscardTurnsDiscardOffBeforeAttachReturns) {
  auto options = Options();
  options.no_discard = true;
  auto loop = dm::LoopDevice::Attach(file_, options);
  ASSERT_TRUE(loop) << loop.error().ToString();
  const std::string name = loop->path().substr(loop->path().rfind('/') + 1);
  std::ifstream in("/sys/block/" + name + "/queue/discard_max_bytes");
  uint64_t v = 1;
  in >> v;
  EXPECT_EQ(v, 0u);
}

}  // namespace
}  // namespace imaged::test
