// fiemap's sysfs reader: read errors after a successful open are error values, not exceptions.
#include <fcntl.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "imaged/common/unique_fd.h"
#include "internal.h"
#include "process.h"

namespace imaged::fiemap::internal {
namespace {

TEST(FiemapSysfsReadTest, ValueWithoutTrailingNewline) {
  test::TempDir tmp;
  const std::string path = (tmp.path() / "size").string();
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(write(fd.get(), "2048\n", 5), 5);
  auto s = ReadSysfs(path);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_EQ(*s, "2048");
}

// A directory opens and then fails to read (EISDIR), like an attribute of a removed device
// (ENODEV). std::ifstream reading it threw ios_base::failure.
TEST(FiemapSysfsReadTest, ReadErrorAfterOpenIsAnErrorValue) {
  test::TempDir tmp;
  Result<std::string> s = std::string();
  EXPECT_NO_THROW(s = ReadSysfs(tmp.path().string()));
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code, EISDIR);
}

}  // namespace
}  // namespace imaged::fiemap::internal
