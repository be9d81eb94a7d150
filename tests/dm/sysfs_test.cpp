// The dm library's sysfs reader: every failure, including a read failing after a successful open
// (a sysfs attribute whose device went away), is "not there", never an exception.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "imaged/common/unique_fd.h"
#include "process.h"
#include "sysfs.h"

namespace imaged::dm::internal {
namespace {

TEST(SysfsReadTest, TrailingNewlineIsDropped) {
  test::TempDir tmp;
  const std::string path = (tmp.path() / "attr").string();
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(write(fd.get(), "/data/x.img.0000\n", 17), 17);
  auto s = ReadSysfs(path);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(*s, "/data/x.img.0000");
}

TEST(SysfsReadTest, MissingFileIsNullopt) {
  test::TempDir tmp;
  EXPECT_FALSE(ReadSysfs((tmp.path() / "gone").string()).has_value());
}

// open() succeeds on a directory and read() then fails (EISDIR): the same shape as a sysfs
// attribute of a loop detached between open and read (ENODEV). std::ifstream threw here.
TEST(SysfsReadTest, ReadErrorAfterOpenIsNulloptNotAnException) {
  test::TempDir tmp;
  std::optional<std::string> s;
  EXPECT_NO_THROW(s = ReadSysfs(tmp.path().string()));
  EXPECT_FALSE(s.has_value());
}

}  // namespace
}  // namespace imaged::dm::internal
