// ImageManager::List served from its snapshot: correct after every operation of this manager,
// catching up with other processes within list_refresh_interval, and never waiting for an
// operation on another image. Loop strategy on a real ext4 (root).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <optional>
#include <thread>

#include <gtest/gtest.h>

#include "image_set.h"

namespace imaged::test {
namespace {

constexpr uint64_t kMiB = 1 << 20;
using std::chrono::milliseconds;

class ListTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_FS("ext4");
    ManagerOptions o;
    o.strategy = MapStrategy::kLoop;
    o.list_refresh_interval = kRefresh;
    set_ = std::make_unique<ImageSet>("ext4", 96 * kMiB, o);
  }
  ImageManager& mgr() { return set_->mgr(); }

  // The image as List reports it now; nullopt when it is not listed.
  static std::optional<ImageInfo> Listed(ImageManager& m, const std::string& name) {
    auto list = m.List();
    EXPECT_TRUE(list.has_value()) << list.error().ToString();
    if (!list) return std::nullopt;
    for (auto& i : *list) {
      if (i.name == name) return i;
    }
    return std::nullopt;
  }
  std::optional<ImageInfo> Listed(const std::string& name) { return Listed(mgr(), name); }

  // Polls List until `pred` holds; how long that took, or nullopt after `limit`.
  static std::optional<milliseconds> ListedWithin(
      ImageManager& m, milliseconds limit,
      const std::function<bool(const std::vector<ImageInfo>&)>& pred) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      auto list = m.List();
      const auto elapsed =
          std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
      if (list && pred(*list)) return elapsed;
      if (elapsed > limit) return std::nullopt;
      std::this_thread::sleep_for(milliseconds(5));  // polling a time bound, not synchronising
    }
  }

  std::string Source(uint64_t size) {
    const std::string path = (src_.path() / "source.raw").string();
    const auto bytes = Pattern<Bytes>(size, 7);
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(pwrite(fd, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
    close(fd);
    return path;
  }

  static constexpr milliseconds kRefresh{200};
  // The machine may be loaded: a List itself can take a while.
  static constexpr milliseconds kSlack{500};
  static constexpr milliseconds kGiveUp{5000};
  std::unique_ptr<ImageSet> set_;
  TempDir src_;
};

TEST_F(ListTest, EveryOperationOfThisManagerShowsInTheNextList) {
  ASSERT_FALSE(Listed("img").has_value());  // snapshot taken before each operation
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  auto info = Listed("img");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->size_bytes, kMiB);
  EXPECT_FALSE(info->mapped_device.has_value());

  auto device = mgr().Map("img");
  ASSERT_OK(device);
  info = Listed("img");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->mapped_device, std::optional<std::string>(*device));

  ASSERT_OK(mgr().Unmap("img"));
  info = Listed("img");
  ASSERT_TRUE(info.has_value());
  EXPECT_FALSE(info->mapped_device.has_value());

  ASSERT_OK(mgr().Resize("img", 2 * kMiB));
  EXPECT_EQ(Listed("img")->size_bytes, 2 * kMiB);

  ASSERT_OK(mgr().Disable("img"));
  EXPECT_TRUE(Listed("img")->disabled);

  ASSERT_OK(mgr().Delete("img"));
  EXPECT_FALSE(Listed("img").has_value());

  ASSERT_OK(mgr().Import("imported", Source(kMiB), {}));
  info = Listed("imported");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->size_bytes, kMiB);

  ASSERT_OK(mgr().RemoveDisabled());
  ASSERT_OK(mgr().Map("imported"));
  EXPECT_TRUE(Listed("imported")->mapped_device.has_value());
  // Recover keeps a matching mapping; a List after it still shows it.
  ASSERT_OK(mgr().Recover());
  EXPECT_TRUE(Listed("imported")->mapped_device.has_value());
  ASSERT_OK(mgr().Unmap("imported"));
  EXPECT_FALSE(Listed("imported")->mapped_device.has_value());
}

TEST_F(ListTest, ListSharedIsTheSameSnapshotUntilSomethingChanges) {
  ASSERT_OK(mgr().Create("a", kMiB, {}));
  auto first = mgr().ListShared();
  ASSERT_OK(first);
  auto again = mgr().ListShared();
  ASSERT_OK(again);
  EXPECT_EQ(first->get(), again->get());
  ASSERT_OK(mgr().Create("b", kMiB, {}));
  auto changed = mgr().ListShared();
  ASSERT_OK(changed);
  EXPECT_NE(first->get(), changed->get());
  EXPECT_EQ((*changed)->size(), 2u);
  EXPECT_EQ((*first)->size(), 1u);  // a snapshot handed out never changes
}

TEST_F(ListTest, ListMatchesInfoForEveryImage) {
  ASSERT_OK(mgr().Create("a", kMiB, {}));
  CreateOptions ro;
  ro.readonly = true;
  ASSERT_OK(mgr().Create("b", 2 * kMiB, ro));
  ASSERT_OK(mgr().Map("b"));
  auto list = mgr().List();
  ASSERT_OK(list);
  ASSERT_EQ(list->size(), 2u);
  for (const auto& listed : *list) {
    auto info = mgr().Info(listed.name);
    ASSERT_OK(info);
    EXPECT_EQ(listed.size_bytes, info->size_bytes) << listed.name;
    EXPECT_EQ(listed.pieces, info->pieces) << listed.name;
    EXPECT_EQ(listed.extents, info->extents) << listed.name;
    EXPECT_EQ(listed.readonly, info->readonly) << listed.name;
    EXPECT_EQ(listed.disabled, info->disabled) << listed.name;
    EXPECT_EQ(listed.mapped_device, info->mapped_device) << listed.name;
  }
  ASSERT_OK(mgr().Unmap("b"));
}

TEST_F(ListTest, MapAndUnmapByAnotherManagerShowWithinTheRefreshInterval) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  ASSERT_FALSE(Listed("img")->mapped_device.has_value());
  auto other = set_->OpenAnother();
  auto device = other->Map("img");
  ASSERT_OK(device);
  auto mapped = [&](const std::vector<ImageInfo>& l) {
    return l.size() == 1 && l[0].mapped_device == std::optional<std::string>(*device);
  };
  auto took = ListedWithin(mgr(), kGiveUp, mapped);
  ASSERT_TRUE(took.has_value()) << "map by another manager not listed";
  EXPECT_LE(*took, kRefresh + kSlack);

  ASSERT_OK(other->Unmap("img"));
  auto unmapped = [](const std::vector<ImageInfo>& l) {
    return l.size() == 1 && !l[0].mapped_device.has_value();
  };
  took = ListedWithin(mgr(), kGiveUp, unmapped);
  ASSERT_TRUE(took.has_value()) << "unmap by another manager not listed";
  EXPECT_LE(*took, kRefresh + kSlack);
}

TEST_F(ListTest, CreateAndDeleteByAnotherManagerShowInTheNextList) {
  ASSERT_FALSE(Listed("img").has_value());
  auto other = set_->OpenAnother();
  ASSERT_OK(other->Create("img", kMiB, {}));
  EXPECT_TRUE(Listed("img").has_value());  // lp_metadata changed: no waiting
  ASSERT_OK(other->Delete("img"));
  EXPECT_FALSE(Listed("img").has_value());
}

// A loop attached by some other program, which touches none of our metadata: only the periodic
// re-scan of the kernel's state can find it.
TEST_F(ListTest, LoopAttachedOutsideImagedShowsWithinTheRefreshInterval) {
  ASSERT_OK(mgr().Create("img", kMiB, {}));
  ASSERT_FALSE(Listed("img")->mapped_device.has_value());
  auto loop = dm::LoopDevice::Attach(set_->data("img.img.0000"), {});
  ASSERT_OK(loop);
  auto took = ListedWithin(mgr(), kGiveUp, [&](const std::vector<ImageInfo>& l) {
    return l.size() == 1 && l[0].mapped_device == std::optional<std::string>(loop->path());
  });
  ASSERT_TRUE(took.has_value()) << "outside loop not listed";
  EXPECT_LE(*took, kRefresh + kSlack);
}

// Runs `op` on another thread; its progress callback parks it (holding the image's lock) until
// the test has listed. Returns List's result while the operation is parked.
template <typename Op>
Result<std::vector<ImageInfo>> ListDuringParkedOperation(ImageManager& m, Op op) {
  std::promise<void> parked, release;
  auto release_future = release.get_future().share();
  std::once_flag once;
  Progress park = [&](uint64_t, uint64_t) {
    std::call_once(once, [&] {
      parked.set_value();
      release_future.wait();
    });
    return true;
  };
  auto running = std::async(std::launch::async, [&] { return op(park); });
  parked.get_future().wait();
  auto listing = std::async(std::launch::async, [&] { return m.List(); });
  const bool answered = listing.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  release.set_value();
  EXPECT_TRUE(running.get()) << "the parked operation failed";
  if (!answered) {
    ADD_FAILURE() << "List waited for an operation on another image";
  }
  return listing.get();
}

TEST_F(ListTest, ListAnswersWhileAnotherImageIsBeingCreated) {
  ASSERT_OK(mgr().Create("ready", kMiB, {}));
  auto list = ListDuringParkedOperation(mgr(), [&](Progress park) -> bool {
    CreateOptions o;
    o.progress = park;
    return mgr().Create("big", 32 * kMiB, o).has_value();
  });
  ASSERT_OK(list);
  // Not in lp_metadata until its files are complete: not listed yet.
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "ready");
  EXPECT_TRUE(Listed("big").has_value());
}

TEST_F(ListTest, ListAnswersWhileAnotherImageIsBeingImported) {
  ASSERT_OK(mgr().Create("ready", kMiB, {}));
  const std::string source = Source(8 * kMiB);
  auto list = ListDuringParkedOperation(mgr(), [&](Progress park) -> bool {
    ImportOptions o;
    o.progress = park;
    return mgr().Import("big", source, o).has_value();
  });
  ASSERT_OK(list);
  auto it = std::find_if(list->begin(), list->end(),
                         [](const ImageInfo& i) { return i.name == "ready"; });
  EXPECT_NE(it, list->end());
  EXPECT_TRUE(Listed("big").has_value());
}

}  // namespace
}  // namespace imaged::test
