// The names of an image set: which images may exist, what their files are called, and that no
// image's file can be one of the set's own files or another image's.
#include "imageset/names.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "fiemap/list_file.h"
#include "imaged/common/file_io.h"

namespace imaged::imageset {
namespace {

TEST(ImageNameTest, AcceptsLiblpNamesAndRefusesTheRest) {
  for (const char* ok : {"system", "a", "my-image.v2", "x_1", "a.b.c", "imaged", "lp_metadata",
                         "set", "daemon", "a.img", "a.lock"}) {
    EXPECT_TRUE(ValidateImageName(ok)) << ok;
  }
  const std::string too_long(36, 'a');
  for (std::string_view bad :
       {std::string_view(""), std::string_view("."), std::string_view(".."),
        std::string_view(".hidden"), std::string_view("a/b"), std::string_view("a b"),
        std::string_view("a\0b", 3), std::string_view(too_long)}) {
    EXPECT_FALSE(ValidateImageName(bad)) << bad;
  }
}

TEST(ImageNameTest, DataFilesAreClassifiedFromTheEnd) {
  auto list = ClassifyDataFile("a.img");
  ASSERT_TRUE(list);
  EXPECT_EQ(list->kind, DataFile::Kind::kList);
  EXPECT_EQ(list->image, "a");
  auto piece = ClassifyDataFile("a.img.0003");
  ASSERT_TRUE(piece);
  EXPECT_EQ(piece->kind, DataFile::Kind::kPiece);
  EXPECT_EQ(piece->image, "a");
  EXPECT_EQ(piece->piece, 3u);
  // Image "a.img.b" owns "a.img.b.img.0000"; nothing of it is image "a"'s.
  auto other = ClassifyDataFile("a.img.b.img.0000");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->image, "a.img.b");
  for (std::string_view foreign : {"a", "a.img.12", ".a.img", ".imaged-tmp.a.img.xyz", "a.imgx"}) {
    EXPECT_FALSE(ClassifyDataFile(foreign)) << foreign;
  }
}

TEST(ImageNameTest, MetadataFilesAreClassified) {
  auto status = ClassifyMetadataFile("x.status");
  ASSERT_TRUE(status);
  EXPECT_EQ(status->kind, MetadataFile::Kind::kStatus);
  EXPECT_EQ(status->image, "x");
  auto marker = ClassifyMetadataFile("x.intent");
  ASSERT_TRUE(marker);
  EXPECT_EQ(marker->kind, MetadataFile::Kind::kIntent);
  EXPECT_FALSE(ClassifyMetadataFile(std::string(kLpMetadataPrevFile)));
  EXPECT_FALSE(ClassifyMetadataFile(std::string(kLpMetadataFile)));
  EXPECT_FALSE(ClassifyMetadataFile(std::string(kLockDir)));
}

// Every file any image can have, for a set of names chosen to collide if anything could.
TEST(ImageNameTest, NoImageFileIsTheSetsOwnOrAnotherImagesFile) {
  const std::vector<std::string> images = {
      "imaged",   "lp_metadata",      "set",        "daemon", "a",
      "a.img",    "a.img.0000",       "a.status",   "a.lock", "a.intent", "lp_metadata.prev",
      "x.status", "lp_metadata.lock", "imaged-tmp", "locks"};
  std::set<std::string> data_seen, meta_seen, lock_seen;
  const std::set<std::string> set_own_meta = {std::string(kLpMetadataFile),
                                              std::string(kLpMetadataPrevFile),
                                              std::string(kLockDir)};
  const std::set<std::string> set_own_locks = {std::string(kDaemonLock), std::string(kSetLock),
                                               std::string(kLpMetadataLock)};
  for (const auto& image : images) {
    ASSERT_TRUE(ValidateImageName(image)) << image;
    for (const std::string& f : {ListFileName(image), fiemap::PieceName(ListFileName(image), 0)}) {
      EXPECT_TRUE(data_seen.insert(f).second) << f << " of " << image;
      EXPECT_FALSE(IsTempFileName(f)) << f;
      auto c = ClassifyDataFile(f);
      ASSERT_TRUE(c) << f;
      EXPECT_EQ(c->image, image) << f;
    }
    for (const std::string& f : {StatusFileName(image), IntentFileName(image)}) {
      EXPECT_TRUE(meta_seen.insert(f).second) << f << " of " << image;
      EXPECT_FALSE(set_own_meta.count(f)) << f;
      EXPECT_FALSE(IsTempFileName(f)) << f;
      auto c = ClassifyMetadataFile(f);
      ASSERT_TRUE(c) << f;
      EXPECT_EQ(c->image, image) << f;
    }
    const std::string lock = ImageLockName(image);
    EXPECT_TRUE(lock_seen.insert(lock).second) << lock;
    EXPECT_FALSE(set_own_locks.count(lock)) << lock;
  }
}

TEST(DmNameTest, IsPrefixPlusImageNameAndThePrefixMustLeaveRoom) {
  EXPECT_EQ(DmName("imaged-", "system"), "imaged-system");
  EXPECT_TRUE(ValidateDmPrefix("imaged-"));
  EXPECT_TRUE(ValidateDmPrefix(""));
  EXPECT_FALSE(ValidateDmPrefix(std::string(100, 'p')));
  EXPECT_FALSE(ValidateDmPrefix("a/b"));
}

}  // namespace
}  // namespace imaged::imageset
