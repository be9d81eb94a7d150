// The space reserve (ManagerOptions::reserve) and dry runs of create, import and resize: a
// refusal names the numbers and leaves nothing; a dry run changes nothing and plans exactly what
// the real operation then allocates. Loop strategy on a real ext4 (root).
#include <sys/statvfs.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "image_set.h"
#include "imaged/common/size.h"

namespace imaged::test {
namespace {

constexpr uint64_t kMiB = 1 << 20;

bool Absent(const Result<bool>& exists) {
  return exists.has_value() && !*exists;
}

CreateOptions DryRun(SpacePlan* plan) {
  CreateOptions o;
  o.dry_run = plan;
  return o;
}

class SpaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_FS("ext4");
    ManagerOptions o;
    o.strategy = MapStrategy::kLoop;
    o.max_piece_size = 4 * kMiB;
    set_ = std::make_unique<ImageSet>("ext4", 96 * kMiB, o);
  }
  ImageManager& mgr() { return set_->mgr(); }

  // What the manager counts: f_bavail and f_blocks.
  uint64_t Free() const {
    struct statvfs st {};
    EXPECT_EQ(statvfs(set_->options().data_dir.c_str(), &st), 0);
    return st.f_bavail * st.f_frsize;
  }
  uint64_t Total() const {
    struct statvfs st {};
    EXPECT_EQ(statvfs(set_->options().data_dir.c_str(), &st), 0);
    return st.f_blocks * st.f_frsize;
  }
  // Another manager on the same set, keeping `reserve` free.
  std::unique_ptr<ImageManager> WithReserve(SpaceReserve reserve) {
    ManagerOptions o = set_->options();
    o.reserve = reserve;
    auto m = ImageManager::Open(o);
    EXPECT_TRUE(m.has_value()) << m.error().ToString();
    return m ? std::move(*m) : nullptr;
  }
  std::vector<std::string> DataFiles() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(set_->options().data_dir)) {
      if (e.path().filename() != "lost+found") out.push_back(e.path().filename());
    }
    return out;
  }
  uint32_t Pieces(const std::string& name) {
    auto info = mgr().Info(name);
    EXPECT_TRUE(info.has_value()) << info.error().ToString();
    return info ? info->pieces : 0;
  }
  std::string WriteSource(const std::string& file, uint64_t size) {
    const std::string path = (work_.path() / file).string();
    std::ofstream out(path, std::ios::binary);
    const auto bytes = Pattern(size, 3);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(size));
    return path;
  }

  std::unique_ptr<ImageSet> set_;
  TempDir work_;
};

TEST_F(SpaceTest, CreateThatWouldEatIntoTheReserveIsRefusedNamingTheNumbersAndLeavesNothing) {
  auto m = WithReserve({.min_free_percent = 50});
  ASSERT_TRUE(m);
  const uint64_t reserve = Total() / 2;
  const uint64_t room = Free() - reserve;  // what may be allocated
  const uint64_t too_much = (room + 4 * kMiB) / kMiB * kMiB;
  auto refused = m->Create("big", too_much, {});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ENOSPC);
  const std::string message = refused.error().ToString();
  EXPECT_NE(message.find("min_free_percent = 50"), std::string::npos) << message;
  EXPECT_NE(message.find(HumanSize(too_much) + " needed"), std::string::npos) << message;
  EXPECT_NE(message.find("less than the " + HumanSize(reserve) + " kept free"), std::string::npos)
      << message;
  EXPECT_TRUE(Absent(m->Exists("big")));
  EXPECT_TRUE(DataFiles().empty());
  // Within the room it fits.
  const uint64_t fits = (room - 4 * kMiB) / kMiB * kMiB;
  ASSERT_TRUE(m->Create("big", fits, {})) << "room " << room;
}

TEST_F(SpaceTest, TheLargerOfPercentAndBytesIsKeptFree) {
  const uint64_t free_now = Free();
  // Bytes larger than the percentage: only 8 MiB may be allocated.
  auto m = WithReserve({.min_free_percent = 1, .min_free_bytes = free_now - 8 * kMiB});
  ASSERT_TRUE(m);
  SpacePlan plan;
  ASSERT_TRUE(m->Create("a", 6 * kMiB, DryRun(&plan)));
  EXPECT_EQ(plan.reserve_bytes, free_now - 8 * kMiB);
  auto refused = m->Create("a", 12 * kMiB, {});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ENOSPC) << refused.error().ToString();
  EXPECT_NE(refused.error().message.find("min_free_bytes = " + HumanSize(free_now - 8 * kMiB)),
            std::string::npos)
      << refused.error().message;
}

TEST_F(SpaceTest, DryRunCreateChangesNothingAndPlansWhatCreateAllocates) {
  const uint64_t free_before = Free();
  SpacePlan plan;
  ASSERT_TRUE(mgr().Create("img", 10 * kMiB, DryRun(&plan)));
  EXPECT_TRUE(Absent(mgr().Exists("img")));
  EXPECT_TRUE(DataFiles().empty());
  EXPECT_EQ(plan.size_bytes, 10 * kMiB);
  EXPECT_EQ(plan.allocate_bytes, 10 * kMiB);
  EXPECT_EQ(plan.pieces, 3u);  // 4 + 4 + 2 MiB
  EXPECT_EQ(plan.free_bytes, free_before);
  EXPECT_EQ(plan.free_after_bytes, free_before - 10 * kMiB);
  EXPECT_EQ(plan.fs_bytes, Total());
  EXPECT_EQ(plan.reserve_bytes, 0u);
  ASSERT_TRUE(mgr().Create("img", 10 * kMiB, {}));
  EXPECT_EQ(Pieces("img"), plan.pieces);
  // The data is the plan; the list file, lp_metadata's first write and extent-tree blocks a
  // little more.
  EXPECT_GE(free_before - Free(), plan.allocate_bytes);
  EXPECT_LE(free_before - Free(), plan.allocate_bytes + kMiB);
}

TEST_F(SpaceTest, DryRunCreateFailsAsCreateWould) {
  ASSERT_TRUE(mgr().Create("img", kMiB, {}));
  SpacePlan plan;
  auto exists = mgr().Create("img", kMiB, DryRun(&plan));
  ASSERT_FALSE(exists.has_value());
  EXPECT_EQ(exists.error().code, EEXIST);
  auto odd = mgr().Create("other", kMiB + 1, DryRun(&plan));
  ASSERT_FALSE(odd.has_value());
  EXPECT_EQ(odd.error().code, EINVAL);
  auto huge = mgr().Create("other", 1024 * kMiB, DryRun(&plan));
  ASSERT_FALSE(huge.has_value());
  EXPECT_EQ(huge.error().code, ENOSPC);
}

TEST_F(SpaceTest, DryRunGrowPlansTheLastPieceFirstThenNewPiecesAndChangesNothing) {
  ASSERT_TRUE(mgr().Create("img", 6 * kMiB, {}));  // 4 + 2 MiB
  const uint64_t free_before = Free();
  SpacePlan plan;
  ResizeOptions dry;
  dry.dry_run = &plan;
  ASSERT_TRUE(mgr().Resize("img", 13 * kMiB, dry));
  EXPECT_EQ(mgr().Info("img")->size_bytes, 6 * kMiB);
  EXPECT_EQ(Pieces("img"), 2u);
  EXPECT_EQ(Free(), free_before);
  EXPECT_EQ(plan.size_bytes, 13 * kMiB);
  EXPECT_EQ(plan.allocate_bytes, 7 * kMiB);
  EXPECT_EQ(plan.pieces, 4u);  // 4 + 4 + 4 + 1 MiB
  ASSERT_TRUE(mgr().Resize("img", 13 * kMiB));
  EXPECT_EQ(Pieces("img"), plan.pieces);
  // Already that size: nothing to allocate.
  ASSERT_TRUE(mgr().Resize("img", 13 * kMiB, dry));
  EXPECT_EQ(plan.allocate_bytes, 0u);
  EXPECT_EQ(plan.pieces, 4u);
}

TEST_F(SpaceTest, GrowThatWouldEatIntoTheReserveIsRefusedAndTheImageStaysAsItWas) {
  ASSERT_TRUE(mgr().Create("img", 2 * kMiB, {}));
  auto m = WithReserve({.min_free_bytes = Free() - 4 * kMiB});
  ASSERT_TRUE(m);
  auto refused = m->Resize("img", 10 * kMiB);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ENOSPC);
  EXPECT_NE(refused.error().message.find("kept free"), std::string::npos)
      << refused.error().message;
  EXPECT_EQ(m->Info("img")->size_bytes, 2 * kMiB);
  EXPECT_EQ(Pieces("img"), 1u);
  auto by = m->GrowBy("img", 8 * kMiB);
  ASSERT_FALSE(by.has_value());
  EXPECT_EQ(by.error().code, ENOSPC);
  ASSERT_TRUE(m->Resize("img", 5 * kMiB));
}

TEST_F(SpaceTest, DryRunImportPlansTheImageInsideAndChangesNothing) {
  const std::string raw = WriteSource("src.raw", 5 * kMiB);
  ASSERT_EQ(RunCommand({"gzip", "-k", raw}).exit_code, 0);
  const uint64_t free_before = Free();
  for (const std::string& source : {raw, raw + ".gz"}) {
    SCOPED_TRACE(source);
    SpacePlan plan;
    ImportOptions dry;
    dry.dry_run = &plan;
    auto planned = mgr().Import("img", source, dry);
    ASSERT_TRUE(planned.has_value()) << planned.error().ToString();
    EXPECT_EQ(planned->size_bytes, 5 * kMiB);
    EXPECT_EQ(plan.size_bytes, 5 * kMiB);
    EXPECT_EQ(plan.allocate_bytes, 5 * kMiB);
    EXPECT_EQ(plan.pieces, 2u);
    EXPECT_TRUE(Absent(mgr().Exists("img")));
    EXPECT_TRUE(DataFiles().empty());
    EXPECT_EQ(Free(), free_before);
  }
  // Into an existing image: nothing new is allocated; too small an image fails as it would.
  ASSERT_TRUE(mgr().Create("img", 6 * kMiB, {}));
  SpacePlan plan;
  ImportOptions into;
  into.into_existing = true;
  into.dry_run = &plan;
  ASSERT_TRUE(mgr().Import("img", raw, into));
  EXPECT_EQ(plan.allocate_bytes, 0u);
  EXPECT_EQ(plan.size_bytes, 6 * kMiB);
  EXPECT_EQ(plan.pieces, 2u);
  ASSERT_TRUE(mgr().Create("small", kMiB, {}));
  auto small = mgr().Import("small", raw, into);
  ASSERT_FALSE(small.has_value());
  EXPECT_EQ(small.error().code, EFBIG);
}

TEST_F(SpaceTest, ImportThatWouldEatIntoTheReserveIsRefusedAndLeavesNothing) {
  const std::string raw = WriteSource("src.raw", 6 * kMiB);
  ASSERT_EQ(RunCommand({"gzip", "-k", raw}).exit_code, 0);
  auto m = WithReserve({.min_free_bytes = Free() - 4 * kMiB});
  ASSERT_TRUE(m);
  for (const std::string& source : {raw, raw + ".gz"}) {
    SCOPED_TRACE(source);
    auto refused = m->Import("img", source, {});
    ASSERT_FALSE(refused.has_value());
    EXPECT_EQ(refused.error().code, ENOSPC) << refused.error().ToString();
    EXPECT_TRUE(Absent(m->Exists("img")));
    EXPECT_TRUE(DataFiles().empty());
  }
}

}  // namespace
}  // namespace imaged::test
