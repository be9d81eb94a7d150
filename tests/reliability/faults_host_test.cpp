// Faults on the host (loop devices, real ext4): a full filesystem during create and import.
// Each fails with ENOSPC and a message that says so, and leaves no file, no lp_metadata entry.
#include <sys/statvfs.h>

#include "manager/image_manager.h"
#include "reliability_util.h"

namespace imaged::test {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class NoSpaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_FS("ext4");
    fs_.emplace("ext4", 24 * kMiB);
    data_ = fs_->Path("data");
    ManagerOptions o;
    o.data_dir = data_;
    o.metadata_dir = (dir_.path() / "metadata").string();
    o.strategy = MapStrategy::kLoop;
    o.max_piece_size = 4 * kMiB;
    auto m = ImageManager::Open(o);
    ASSERT_TRUE(m) << m.error().ToString();
    manager_ = std::move(*m);
  }

  uint64_t FreeBytes() {
    struct statvfs st {};
    EXPECT_EQ(statvfs(data_.c_str(), &st), 0);
    return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  }

  void ExpectNothingOf(const std::string& name) {
    auto exists = manager_->Exists(name);
    ASSERT_TRUE(exists);
    EXPECT_FALSE(*exists) << name;
    for (const auto& f : ListDirNames(data_)) {
      EXPECT_NE(f.rfind(name + ".", 0), 0u) << "left behind: " << f;
      EXPECT_EQ(f.find(".tmp."), std::string::npos) << "left behind: " << f;
    }
    for (const auto& f : ListDirNames((dir_.path() / "metadata").string())) {
      EXPECT_FALSE(f.ends_with(".intent") || f.ends_with(".status")) << "left behind: " << f;
    }
    auto v = manager_->Validate();
    ASSERT_TRUE(v);
    for (const auto& r : *v) EXPECT_TRUE(r.ok) << r.name << ": " << r.problem;
  }

  TempDir dir_;
  std::optional<LoopFilesystem> fs_;
  std::string data_;
  std::unique_ptr<ImageManager> manager_;
};

TEST_F(NoSpaceTest, CreateLargerThanTheFreeSpaceFailsWithEnospcAndLeavesNothing) {
  ASSERT_TRUE(manager_->Create("first", 4 * kMiB, {}));
  const uint64_t free = FreeBytes() / 4096 * 4096;
  auto r = manager_->Create("big", free + 4 * kMiB, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOSPC) << r.error().ToString();
  EXPECT_NE(r.error().ToString().find("big"), std::string::npos) << r.error().ToString();
  ExpectNothingOf("big");
}

// Sizes around the free space: some fail in the up-front check, some inside fallocate (which
// also needs blocks for the extent tree). Every failure is ENOSPC and clean; the first size
// that fits is created and valid.
TEST_F(NoSpaceTest, CreateAtTheEdgeOfTheFreeSpaceIsAllOrNothing) {
  const uint64_t free = FreeBytes() / 4096 * 4096;
  int failures = 0;
  bool created = false;
  for (uint64_t size = free + 64 * 1024; size + 2 * kMiB > free && !created; size -= 16 * 1024) {
    auto r = manager_->Create("edge", size, {});
    if (r) {
      created = true;
      break;
    }
    ++failures;
    EXPECT_EQ(r.error().code, ENOSPC) << size << ": " << r.error().ToString();
    ExpectNothingOf("edge");
  }
  EXPECT_GT(failures, 0);
  ASSERT_TRUE(created) << "nothing fits within 2 MiB of the free space";
  auto v = manager_->Validate();
  ASSERT_TRUE(v);
  ASSERT_EQ(v->size(), 1u);
  EXPECT_TRUE((*v)[0].ok) << (*v)[0].problem;
}

TEST_F(NoSpaceTest, ImportLargerThanTheFreeSpaceFailsWithEnospcAndLeavesNothing) {
  // A sparse raw file: the source costs nothing, the image would need all of it.
  const std::string source = (dir_.path() / "big.raw").string();
  WriteFile(source, "x");
  ASSERT_EQ(truncate(source.c_str(), 64 * kMiB), 0);
  auto r = manager_->Import("imported", source, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOSPC) << r.error().ToString();
  ExpectNothingOf("imported");
}

TEST_F(NoSpaceTest, ImportFillingTheDiskTogetherWithAnotherImageFailsCleanly) {
  // The source fits the free space now; another image takes most of it first.
  const uint64_t free = FreeBytes();
  const std::string source = (dir_.path() / "fits.raw").string();
  WriteFile(source, Pattern(static_cast<size_t>(free / 2 / kMiB * kMiB), 3));
  ASSERT_TRUE(manager_->Create("hog", (free / 2 + 2 * kMiB) / 4096 * 4096, {}));
  auto r = manager_->Import("late", source, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOSPC) << r.error().ToString();
  ExpectNothingOf("late");
  EXPECT_TRUE(*manager_->Exists("hog"));
}

}  // namespace
}  // namespace imaged::test
