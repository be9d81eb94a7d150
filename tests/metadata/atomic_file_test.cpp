#include "metadata/atomic_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "process.h"

namespace imaged::metadata {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> Bytes(std::string_view s) {
  return {s.begin(), s.end()};
}

std::string Slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

constexpr AtomicWriteStep kSteps[] = {AtomicWriteStep::kCreateTemp, AtomicWriteStep::kWrite,
                                      AtomicWriteStep::kFsyncFile, AtomicWriteStep::kRename,
                                      AtomicWriteStep::kFsyncDir};

AtomicWriteHooks At(AtomicWriteStep target, AtomicWriteAction action) {
  return AtomicWriteHooks{
      [=](AtomicWriteStep s) { return s == target ? action : AtomicWriteAction::kContinue; }};
}

TEST(AtomicWrite, CreatesFileWithModeAndContent) {
  imaged::test::TempDir dir;
  fs::path path = dir.path() / "f";
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("hello"), 0640));
  EXPECT_EQ(Slurp(path), "hello");
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(Listing(dir.path()), std::vector<std::string>{"f"});
}

TEST(AtomicWrite, ReplacesExistingFile) {
  imaged::test::TempDir dir;
  fs::path path = dir.path() / "f";
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("old old old")));
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("new")));
  EXPECT_EQ(Slurp(path), "new");
}

TEST(AtomicWrite, HooksSeeEveryStepInOrder) {
  imaged::test::TempDir dir;
  std::vector<AtomicWriteStep> seen;
  AtomicWriteHooks hooks{[&](AtomicWriteStep s) {
    seen.push_back(s);
    return AtomicWriteAction::kContinue;
  }};
  ASSERT_TRUE(AtomicWriteFile(dir.path() / "f", Bytes("x"), 0644, &hooks));
  EXPECT_EQ(seen, std::vector<AtomicWriteStep>(std::begin(kSteps), std::end(kSteps)));
}

TEST(AtomicWrite, FailureBeforeRenameKeepsOldFileAndRemovesTemp) {
  for (AtomicWriteStep step : {AtomicWriteStep::kCreateTemp, AtomicWriteStep::kWrite,
                               AtomicWriteStep::kFsyncFile, AtomicWriteStep::kRename}) {
    imaged::test::TempDir dir;
    fs::path path = dir.path() / "lp_metadata";
    ASSERT_TRUE(AtomicWriteFile(path, Bytes("old")));
    AtomicWriteHooks hooks = At(step, AtomicWriteAction::kFail);
    auto r = AtomicWriteFile(path, Bytes("new content"), 0644, &hooks);
    ASSERT_FALSE(r) << static_cast<int>(step);
    EXPECT_EQ(r.error().code, EIO);
    EXPECT_EQ(Slurp(path), "old") << static_cast<int>(step);
    EXPECT_EQ(Listing(dir.path()), std::vector<std::string>{"lp_metadata"})
        << static_cast<int>(step);
  }
}

TEST(AtomicWrite, FailureAtDirectoryFsyncIsReportedAfterTheCommitPoint) {
  imaged::test::TempDir dir;
  fs::path path = dir.path() / "f";
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("old")));
  AtomicWriteHooks hooks = At(AtomicWriteStep::kFsyncDir, AtomicWriteAction::kFail);
  EXPECT_FALSE(AtomicWriteFile(path, Bytes("new"), 0644, &hooks));
  EXPECT_EQ(Slurp(path), "new");
  EXPECT_EQ(Listing(dir.path()), std::vector<std::string>{"f"});
}

TEST(AtomicWrite, CrashAtAnyStepLeavesOldOrNewNeverAMix) {
  for (AtomicWriteStep step : kSteps) {
    imaged::test::TempDir dir;
    fs::path path = dir.path() / "lp_metadata";
    ASSERT_TRUE(AtomicWriteFile(path, Bytes("old")));
    AtomicWriteHooks hooks = At(step, AtomicWriteAction::kCrash);
    EXPECT_FALSE(AtomicWriteFile(path, Bytes("new content"), 0644, &hooks));
    std::string now = Slurp(path);
    if (step == AtomicWriteStep::kFsyncDir) {
      EXPECT_EQ(now, "new content");
    } else {
      EXPECT_EQ(now, "old") << static_cast<int>(step);
    }
    // The reader of the real path never sees the temp; cleanup removes any leftover.
    auto removed = CleanupTempFiles(dir.path());
    ASSERT_TRUE(removed) << removed.error().ToString();
    bool temp_expected = step == AtomicWriteStep::kWrite || step == AtomicWriteStep::kFsyncFile ||
                         step == AtomicWriteStep::kRename;
    EXPECT_EQ(*removed, temp_expected ? 1u : 0u) << static_cast<int>(step);
    EXPECT_EQ(Listing(dir.path()), std::vector<std::string>{"lp_metadata"});
    EXPECT_EQ(Slurp(path), now);
  }
}

TEST(AtomicWrite, CleanupLeavesOtherFilesAlone) {
  imaged::test::TempDir dir;
  std::ofstream(dir.path() / ".hidden") << "x";
  std::ofstream(dir.path() / "a.status") << "dm:a\n";
  std::ofstream(dir.path() / (std::string(kTempFilePrefix) + "lp_metadata.abc123")) << "partial";
  auto removed = CleanupTempFiles(dir.path());
  ASSERT_TRUE(removed);
  EXPECT_EQ(*removed, 1u);
  EXPECT_EQ(Listing(dir.path()), (std::vector<std::string>{".hidden", "a.status"}));
}

TEST(AtomicWrite, MissingDirectoryFails) {
  imaged::test::TempDir dir;
  auto r = AtomicWriteFile(dir.path() / "no" / "f", Bytes("x"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
}

TEST(AtomicWrite, VeryLongFileNameStillGetsATempName) {
  imaged::test::TempDir dir;
  fs::path path = dir.path() / std::string(250, 'n');
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("x")));
  EXPECT_EQ(Slurp(path), "x");
}

TEST(ReadWholeFile, ReadsAndEnforcesLimit) {
  imaged::test::TempDir dir;
  fs::path path = dir.path() / "f";
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("0123456789")));
  auto ok = ReadWholeFile(path, 10);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->size(), 10u);
  auto big = ReadWholeFile(path, 9);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, EFBIG);
  auto missing = ReadWholeFile(dir.path() / "g", 10);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ENOENT);
  EXPECT_NE(missing.error().message.find("/g"), std::string::npos);
}

TEST(ReadWholeFile, RefusesDirectories) {
  imaged::test::TempDir dir;
  auto r = ReadWholeFile(dir.path(), 100);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
}

}  // namespace
}  // namespace imaged::metadata
