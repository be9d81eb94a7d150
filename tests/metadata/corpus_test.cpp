// The checked-in fuzz seeds stay meaningful: `valid-*` seeds parse, `bad-*` seeds do not. A format
// change that silently invalidates the corpus fails here instead of quietly weakening the fuzzers.
#include <gtest/gtest.h>

#include <filesystem>

#include "imaged/common/file_io.h"
#include "metadata/lp_metadata.h"
#include "metadata/status_file.h"

namespace imaged::metadata {
namespace {

namespace fs = std::filesystem;

template <typename Parse>
void CheckSeeds(const std::string& target, Parse parse) {
  fs::path dir = fs::path(METADATA_CORPUS_DIR) / target;
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  size_t valid = 0, bad = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    auto data = ReadWholeFile(entry.path(), 16 << 20);
    ASSERT_TRUE(data) << data.error().ToString();
    bool ok = parse(*data);
    if (name.rfind("valid-", 0) == 0) {
      EXPECT_TRUE(ok) << name;
      ++valid;
    } else if (name.rfind("bad-", 0) == 0) {
      EXPECT_FALSE(ok) << name;
      ++bad;
    }
  }
  EXPECT_GT(valid, 0u) << target;
  EXPECT_GT(bad, 0u) << target;
}

TEST(FuzzCorpus, ImageSeeds) {
  CheckSeeds("metadata_image_fuzz",
             [](const std::vector<uint8_t>& d) { return ParseImageFile(d).has_value(); });
}

TEST(FuzzCorpus, SuperSeeds) {
  CheckSeeds("metadata_super_fuzz",
             [](const std::vector<uint8_t>& d) { return ParseSuper(d).has_value(); });
}

TEST(FuzzCorpus, StatusSeeds) {
  CheckSeeds("metadata_status_fuzz", [](const std::vector<uint8_t>& d) {
    return ParseStatus(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()))
        .has_value();
  });
}

}  // namespace
}  // namespace imaged::metadata
