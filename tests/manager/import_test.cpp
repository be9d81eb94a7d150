// ImageManager::Import: raw, Android sparse (img2simg) and qcow2 (qemu-img) sources land bit-exact
// in a new image; into_existing overwrites and zeroes the rest; failures leave no new image.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "fiemap_at.h"
#include "fiemap/split_file.h"
#include "image_set.h"

namespace imaged::test {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class ImportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_FS("ext4");
    ManagerOptions o;
    o.strategy = MapStrategy::kLoop;
    set_ = std::make_unique<ImageSet>("ext4", 96 * kMiB, o);
  }
  ImageManager& mgr() { return set_->mgr(); }

  // Data with holes: zeros, random blocks, a run of one byte value, zeros at the end.
  std::vector<uint8_t> SourceBytes(size_t size) {
    std::vector<uint8_t> v(size, 0);
    auto random = Pattern<Bytes>(size / 3, 11);
    std::copy(random.begin(), random.end(), v.begin() + size / 4);
    std::fill(v.begin() + size / 4 * 3, v.begin() + size / 4 * 3 + 8192, 0xAB);
    return v;
  }
  std::string WriteSource(const std::vector<uint8_t>& bytes) {
    const std::string path = (src_.path() / "source.raw").string();
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    return path;
  }
  static bool WriteFileBytes(const std::string& path, const std::vector<uint8_t>& v) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size()));
    out.close();
    return out.good();
  }
  std::vector<uint8_t> ImageBytes(const std::string& name, size_t n) {
    auto split = test::OpenSplitAt(set_->data(name + ".img"));
    if (!split) return {};
    std::vector<uint8_t> out(n);
    if (!split->PRead(out.data(), n, 0)) return {};
    return out;
  }

  TempDir src_;
  std::unique_ptr<ImageSet> set_;
};

TEST_F(ImportTest, RawImportsBitExactAndRoundsTheSizeUpTo512) {
  const auto bytes = SourceBytes(3 * kMiB + 1000);
  auto info = mgr().Import("raw", WriteSource(bytes), {});
  ASSERT_OK(info);
  EXPECT_EQ(info->size_bytes, 3 * kMiB + 1024);
  auto back = ImageBytes("raw", 3 * kMiB + 1024);
  ASSERT_EQ(back.size(), 3 * kMiB + 1024);
  EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), back.begin()));
  EXPECT_EQ(std::vector<uint8_t>(back.begin() + bytes.size(), back.end()),
            std::vector<uint8_t>(24, 0));
}

TEST_F(ImportTest, SparseFromImg2simgImportsBitExact) {
  const auto bytes = SourceBytes(4 * kMiB);
  const std::string raw = WriteSource(bytes);
  const std::string sparse = (src_.path() / "source.simg").string();
  auto r = RunCommand({"img2simg", raw, sparse});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto info = mgr().Import("sparse", sparse, {});
  ASSERT_OK(info);
  EXPECT_EQ(info->size_bytes, 4 * kMiB);
  EXPECT_EQ(ImageBytes("sparse", bytes.size()), bytes);
}

TEST_F(ImportTest, Qcow2FromQemuImgImportsBitExactThroughTheMappedDevice) {
  const auto bytes = SourceBytes(4 * kMiB);
  const std::string raw = WriteSource(bytes);
  const std::string qcow = (src_.path() / "source.qcow2").string();
  auto r = RunCommand({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ImportOptions o;
  uint64_t last_done = 0, last_total = 0;
  o.progress = [&](uint64_t done, uint64_t total) {
    last_done = done;
    last_total = total;
    return true;
  };
  auto info = mgr().Import("qcow", qcow, o);
  ASSERT_OK(info);
  EXPECT_EQ(last_done, last_total);
  auto path = mgr().Map("qcow");
  ASSERT_OK(path);
  EXPECT_EQ(DirectRead(*path, bytes.size(), 0), bytes);
  ASSERT_OK(mgr().Unmap("qcow"));
}

// The news of an import carries the same image the call returns (read once for both).
TEST_F(ImportTest, AnImportIsToldOnceWithTheImageItReturns) {
  std::vector<ImageChange> told;
  ManagerOptions o;
  o.strategy = MapStrategy::kLoop;
  o.on_change = [&](const ImageChange& change) { told.push_back(change); };
  set_.reset();
  set_ = std::make_unique<ImageSet>("ext4", 96 * kMiB, o);
  auto created = mgr().Import("told", WriteSource(SourceBytes(3 * kMiB)), {});
  ASSERT_OK(created);
  ImportOptions into;
  into.into_existing = true;
  into.format = import::Format::Raw;
  auto imported = mgr().Import("told", WriteSource(SourceBytes(kMiB)), into);
  ASSERT_OK(imported);

  ASSERT_EQ(told.size(), 2u);
  EXPECT_EQ(told[0].kind, ImageChangeKind::kCreated);
  EXPECT_EQ(told[1].kind, ImageChangeKind::kImported);
  const ImageInfo* returned[] = {&*created, &*imported};
  for (size_t i = 0; i < told.size(); ++i) {
    EXPECT_EQ(told[i].operation, "import");
    ASSERT_TRUE(told[i].image.has_value()) << i;
    EXPECT_EQ(told[i].image->name, "told");
    EXPECT_EQ(told[i].image->size_bytes, returned[i]->size_bytes);
    EXPECT_EQ(told[i].image->size_bytes, 3 * kMiB);
    EXPECT_EQ(told[i].image->pieces, returned[i]->pieces);
    EXPECT_EQ(told[i].image->extents, returned[i]->extents);
  }
}

TEST_F(ImportTest, IntoExistingOverwritesAndZeroesTheRest) {
  ASSERT_OK(mgr().Create("target", 8 * kMiB, {}));
  auto split = test::OpenSplitAt(set_->data("target.img"));
  ASSERT_OK(split);
  const auto old = Pattern<Bytes>(8 * kMiB, 12);
  ASSERT_OK(split->PWrite(old.data(), old.size(), 0));
  ASSERT_OK(split->Sync());
  const auto bytes = SourceBytes(4 * kMiB);
  ImportOptions o;
  o.into_existing = true;
  o.format = import::Format::Raw;
  auto info = mgr().Import("target", WriteSource(bytes), o);
  ASSERT_OK(info);
  EXPECT_EQ(info->size_bytes, 8 * kMiB);
  auto back = ImageBytes("target", 8 * kMiB);
  EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), back.begin()));
  EXPECT_EQ(std::vector<uint8_t>(back.begin() + 4 * kMiB, back.end()),
            std::vector<uint8_t>(4 * kMiB, 0));
}

TEST_F(ImportTest, IntoExistingRefusesASmallerImage) {
  ASSERT_OK(mgr().Create("small", kMiB, {}));
  ImportOptions o;
  o.into_existing = true;
  EXPECT_ERRNO(mgr().Import("small", WriteSource(SourceBytes(2 * kMiB)), o), EFBIG);
}

TEST_F(ImportTest, ABrokenSourceLeavesNoImage) {
  const auto bytes = SourceBytes(4 * kMiB);
  const std::string raw = WriteSource(bytes);
  const std::string qcow = (src_.path() / "source.qcow2").string();
  ASSERT_EQ(RunCommand({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow}).exit_code,
            0);
  std::filesystem::resize_file(qcow, std::filesystem::file_size(qcow) / 2);
  auto info = mgr().Import("broken", qcow, {});
  EXPECT_FALSE(info.has_value());
  EXPECT_FALSE(*mgr().Exists("broken"));
  EXPECT_TRUE(std::filesystem::is_empty(set_->options().data_dir));
}

TEST_F(ImportTest, CancelledImportLeavesNoImage) {
  ImportOptions o;
  o.progress = [](uint64_t done, uint64_t) { return done == 0; };
  EXPECT_ERRNO(mgr().Import("cancel", WriteSource(SourceBytes(8 * kMiB)), o), ECANCELED);
  EXPECT_FALSE(*mgr().Exists("cancel"));
  EXPECT_TRUE(std::filesystem::is_empty(set_->options().data_dir));
}

// A new image is written once (no zero pass first): whatever the import did not write as data
// must still be zeros on the disk itself, not what the blocks held before, and every recorded
// extent must be a written one.
TEST_F(ImportTest, NewImageHoldsTheSourceOnTheRawDiskNotStaleBlocks) {
  {
    // Stale data in blocks the new image will likely get.
    const std::string junk = set_->fs().Path("junk");
    std::vector<uint8_t> ee(24 * kMiB, 0xEE);
    ASSERT_TRUE(WriteFileBytes(junk, ee));
    ASSERT_EQ(unlink(junk.c_str()), 0);
    sync();
  }
  const auto bytes = SourceBytes(16 * kMiB + 1000);
  ASSERT_OK(mgr().Import("img", WriteSource(bytes), {}));
  EXPECT_FALSE(std::filesystem::exists(set_->meta("img.intent")));
  auto split = test::OpenSplitAt(set_->data("img.img"));  // refuses unwritten extents
  ASSERT_TRUE(split) << split.error().ToString();
  std::vector<uint8_t> expected = bytes;
  expected.resize(split->size(), 0);  // the slack past the image is zeros too
  std::vector<uint8_t> raw(split->size(), 0x55);
  for (const auto& e : split->extents()) {
    auto part = DirectRead(set_->fs().loop_device(), e.length, e.physical);
    ASSERT_EQ(part.size(), e.length) << "extent at " << e.logical;
    std::copy(part.begin(), part.end(), raw.begin() + static_cast<long>(e.logical));
  }
  size_t first_bad = 0;
  while (first_bad < raw.size() && raw[first_bad] == expected[first_bad]) ++first_bad;
  EXPECT_EQ(first_bad, raw.size())
      << "byte " << first_bad << " is " << static_cast<int>(raw[first_bad]) << " on the disk";
}

}  // namespace
}  // namespace imaged::test
