// Opens a test's directory as the Directory every library addresses files through.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "imaged/common/file_io.h"

namespace imaged::test {

inline Directory OpenDir(const std::filesystem::path& path) {
  auto dir = Directory::Open(path.string());
  EXPECT_TRUE(dir) << dir.error().ToString();
  return dir ? *dir : Directory();
}

}  // namespace imaged::test
