// Helpers shared by the init tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "bytes.h"
#include "imaged/common/result.h"
#include "metadata/lp_metadata.h"

#define ASSERT_OK(expr)                                           \
  do {                                                            \
    auto&& assert_ok_result_ = (expr);                            \
    ASSERT_TRUE(assert_ok_result_.has_value())                    \
        << #expr << ": " << assert_ok_result_.error().ToString(); \
  } while (0)

namespace imaged::init::test {

// Non-zero bytes everywhere (mkfs.ext4 -d turns all-zero blocks into holes), distinct per seed.
using imaged::test::Pattern;

inline void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(out.good()) << "write " << path;
}

// What ImageManager records: physical runs (byte offset, length) in image order, merged, cut to
// the image size rounded down to whole sectors (libfiemap FillPartitionExtents).
inline std::vector<metadata::Extent> LpExtentsFor(
    const std::vector<std::pair<uint64_t, uint64_t>>& runs, uint64_t image_size) {
  std::vector<metadata::Extent> extents;
  uint64_t needed = image_size / metadata::kSectorSize;
  for (const auto& [offset, length] : runs) {
    if (needed == 0) break;
    uint64_t n = std::min(length / metadata::kSectorSize, needed);
    metadata::AppendLinearExtent(extents, n, offset / metadata::kSectorSize, 0);
    needed -= n;
  }
  return extents;
}

}  // namespace imaged::init::test
