// ListAttachedLoops and reading loop sysfs attributes while loops come and go (root; loop
// devices). Every loop is attached by the test through LoopDevice and detached by RAII.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "dm/loop_device.h"
#include "dm/loop_list.h"
#include "imaged/common/unique_fd.h"
#include "process.h"
#include "imaged/common/sysfs.h"
#include "test_util.h"

namespace imaged::dm {
namespace {

class LoopListTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (loop devices)";
    if (access("/dev/loop-control", F_OK) != 0) GTEST_SKIP() << "no /dev/loop-control";
  }

  std::string MakeFile(const std::string& name, size_t size) {
    std::string path = (tmp_.path() / name).string();
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    EXPECT_TRUE(fd.valid()) << path;
    EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
    return path;
  }

  static const AttachedLoop* Find(const std::vector<AttachedLoop>& loops, const std::string& p) {
    auto it = std::find_if(loops.begin(), loops.end(),
                           [&](const AttachedLoop& l) { return l.loop_path == p; });
    return it == loops.end() ? nullptr : &*it;
  }

  test::TempDir tmp_;
};

TEST_F(LoopListTest, ListsOurLoopWithItsBackingFileIdentity) {
  const std::string file = MakeFile("a", 1 << 20);
  auto loop = LoopDevice::Attach(file, {});
  ASSERT_OK(loop);
  auto loops = ListAttachedLoops();
  ASSERT_OK(loops);
  const AttachedLoop* found = Find(*loops, loop->path());
  ASSERT_NE(found, nullptr);
  struct stat st {};
  ASSERT_EQ(stat(file.c_str(), &st), 0);
  EXPECT_EQ(found->backing_file, file);
  EXPECT_EQ(found->backing_dev, st.st_dev);
  EXPECT_EQ(found->backing_ino, st.st_ino);
}

TEST_F(LoopListTest, DetachedLoopIsNotListed) {
  const std::string file = MakeFile("a", 1 << 20);
  auto loop = LoopDevice::Attach(file, {});
  ASSERT_OK(loop);
  const std::string path = loop->path();
  ASSERT_OK(loop->Detach());
  auto loops = ListAttachedLoops();
  ASSERT_OK(loops);
  const AttachedLoop* found = Find(*loops, path);
  // The number may have been reused by someone else meanwhile, but not for our file.
  if (found) {
    EXPECT_NE(found->backing_file, file);
  }
}

// The crash found by the benchmark: the loop goes away between opening its backing_file
// attribute and reading it. The read must fail quietly.
TEST_F(LoopListTest, BackingFileAttributeOfALoopDetachedAfterOpenReadsAsNothing) {
  const std::string file = MakeFile("a", 1 << 20);
  auto loop = LoopDevice::Attach(file, {});
  ASSERT_OK(loop);
  const std::string attr =
      "/sys/block/" + loop->path().substr(loop->path().rfind('/') + 1) + "/loop/backing_file";
  UniqueFd fd(open(attr.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid()) << attr;
  ASSERT_OK(loop->Detach());
  Result<std::string> s = std::string();
  EXPECT_NO_THROW(s = sysfs::ReadFd(fd.get(), attr));
  EXPECT_FALSE(s && *s == file) << "read \"" << (s ? *s : s.error().ToString()) << "\"";
}

// The path the kernel reports may name another file by now (ours renamed away, a new one put
// there): the identity is still the file the loop holds, so the newcomer matches no loop.
TEST_F(LoopListTest, IdentityIsTheHeldFileNotWhatThePathNamesNow) {
  const std::string file = MakeFile("a", 1 << 20);
  struct stat held {};
  ASSERT_EQ(stat(file.c_str(), &held), 0);
  auto loop = LoopDevice::Attach(file, {});
  ASSERT_OK(loop);
  const std::string moved = file + ".moved";
  ASSERT_EQ(rename(file.c_str(), moved.c_str()), 0);
  const std::string impostor = MakeFile("a", 1 << 20);
  ASSERT_EQ(impostor, file);
  struct stat now {};
  ASSERT_EQ(stat(file.c_str(), &now), 0);
  ASSERT_NE(now.st_ino, held.st_ino);
  auto loops = ListAttachedLoops();
  ASSERT_OK(loops);
  const AttachedLoop* found = Find(*loops, loop->path());
  ASSERT_NE(found, nullptr);
  EXPECT_EQ(found->backing_ino, held.st_ino);
  EXPECT_EQ(found->backing_dev, held.st_dev);
  auto by_path = LoopDevice::FindByBackingFile(file);
  ASSERT_OK(by_path);
  EXPECT_TRUE(by_path->empty());
}

// Scans racing with attach/detach of other loops never fail or throw, and always list the loop
// that stays attached throughout.
TEST_F(LoopListTest, ScansRacingWithAttachAndDetachStayConsistent) {
  const std::string stable_file = MakeFile("stable", 1 << 20);
  auto stable = LoopDevice::Attach(stable_file, {});
  ASSERT_OK(stable);
  const std::string churn_file = MakeFile("churn", 1 << 20);
  std::atomic<bool> stop{false};
  std::atomic<int> cycles{0};
  std::thread churn([&] {
    while (!stop.load()) {
      auto l = LoopDevice::Attach(churn_file, {});
      if (!l) break;
      (void)l->Detach();
      cycles.fetch_add(1);
    }
  });
  int scans = 0;
  for (; scans < 300; ++scans) {
    Result<std::vector<AttachedLoop>> loops = MakeError(EINVAL, "not run");
    EXPECT_NO_THROW(loops = ListAttachedLoops());
    ASSERT_OK(loops);
    ASSERT_NE(Find(*loops, stable->path()), nullptr) << "scan " << scans;
    std::vector<std::string> found;
    EXPECT_NO_THROW({
      auto r = LoopDevice::FindByBackingFile(stable_file);
      ASSERT_OK(r);
      found = *r;
    });
    EXPECT_EQ(found, std::vector<std::string>{stable->path()});
    if (scans >= 50 && cycles.load() >= 20) break;
  }
  stop.store(true);
  churn.join();
  EXPECT_GT(cycles.load(), 0);
}

}  // namespace
}  // namespace imaged::dm
