// The one sysfs reader: every failure, including a read failing after a successful open (an
// attribute whose device went away), is an error value, never an exception.
#include "imaged/common/sysfs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "imaged/common/unique_fd.h"
#include "process.h"

namespace imaged::sysfs {
namespace {

void WriteFile(const std::string& path, std::string_view text) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(write(fd.get(), text.data(), text.size()), static_cast<ssize_t>(text.size()));
}

TEST(SysfsReadTest, TrailingNewlineIsDropped) {
  test::TempDir tmp;
  const std::string path = (tmp.path() / "attr").string();
  WriteFile(path, "/data/x.img.0000\n");
  auto s = Read(path);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_EQ(*s, "/data/x.img.0000");
}

TEST(SysfsReadTest, MissingFileIsENOENT) {
  test::TempDir tmp;
  auto s = Read((tmp.path() / "gone").string());
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code, ENOENT);
}

// open() succeeds on a directory and read() then fails (EISDIR): the same shape as a sysfs
// attribute of a loop detached between open and read (ENODEV). std::ifstream threw here.
TEST(SysfsReadTest, ReadErrorAfterOpenIsAnErrorValueNotAnException) {
  test::TempDir tmp;
  Result<std::string> s = std::string();
  EXPECT_NO_THROW(s = Read(tmp.path().string()));
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code, EISDIR);
}

TEST(SysfsReadTest, NumbersAreParsedStrictly) {
  test::TempDir tmp;
  const std::string good = (tmp.path() / "good").string();
  const std::string bad = (tmp.path() / "bad").string();
  WriteFile(good, "2048\n");
  WriteFile(bad, "20x48\n");
  auto v = ReadU64(good);
  ASSERT_TRUE(v.has_value()) << v.error().ToString();
  EXPECT_EQ(*v, 2048u);
  auto e = ReadU64(bad);
  ASSERT_FALSE(e.has_value());
  EXPECT_EQ(e.error().code, EINVAL);
}

// The disk under this test's temp dir (or none, e.g. on tmpfs): either a sane block size or
// ENOENT, never garbage.
TEST(SysfsBlockTest, LogicalBlockSizeOfTheTempDirDiskIsSaneOrAbsent) {
  test::TempDir tmp;
  struct stat st {};
  ASSERT_EQ(stat(tmp.path().c_str(), &st), 0);
  auto lbs = LogicalBlockSize(st.st_dev);
  if (!lbs) {
    EXPECT_EQ(lbs.error().code, ENOENT) << lbs.error().ToString();
    return;
  }
  EXPECT_GE(*lbs, 512u);
  EXPECT_EQ(*lbs & (*lbs - 1), 0u);
}

TEST(SysfsBlockTest, NoBlockDeviceHasNoName) {
  auto name = BlockDeviceName(makedev(4095, 1048575));
  ASSERT_FALSE(name.has_value());
  EXPECT_EQ(name.error().code, ENODEV);
}

}  // namespace
}  // namespace imaged::sysfs
