#include "metadata/status_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "dir.h"
#include "process.h"

namespace imaged::metadata {
namespace {

using Kind = StatusEntry::Kind;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(StatusParse, DmThenLoops) {
  auto r = ParseStatus("dm:system_gsi\nloop:/dev/loop3\nloop:/dev/loop4\n");
  ASSERT_TRUE(r) << r.error().ToString();
  std::vector<StatusEntry> want{
      {Kind::Dm, "system_gsi"}, {Kind::Loop, "/dev/loop3"}, {Kind::Loop, "/dev/loop4"}};
  EXPECT_EQ(*r, want);
}

TEST(StatusParse, MissingFinalNewlineIsTolerated) {
  auto r = ParseStatus("loop:/dev/loop0");
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, (std::vector<StatusEntry>{{Kind::Loop, "/dev/loop0"}}));
}

TEST(StatusParse, EmptyTextIsNoEntries) {
  auto r = ParseStatus("");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->empty());
}

TEST(StatusParse, DmNameWithColonsSplitsOnFirstColonOnly) {
  auto r = ParseStatus("dm:imaged:set1:system\n");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, (std::vector<StatusEntry>{{Kind::Dm, "imaged:set1:system"}}));
}

TEST(StatusParse, UnknownKindIsAnError) {
  auto r = ParseStatus("dm:a\nzram:/dev/zram0\n");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_NE(r.error().message.find("line 2: unknown kind \"zram\""), std::string::npos)
      << r.error().message;
}

TEST(StatusParse, EmptyValueIsAnError) {
  auto r = ParseStatus("loop:\n");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("empty value"), std::string::npos);
}

TEST(StatusParse, LineWithoutColonIsAnError) {
  EXPECT_FALSE(ParseStatus("dm\n"));
}

TEST(StatusParse, BlankLineIsAnError) {
  EXPECT_FALSE(ParseStatus("dm:a\n\nloop:/dev/loop1\n"));
  EXPECT_FALSE(ParseStatus("\n"));
  EXPECT_FALSE(ParseStatus("dm:a\n\n"));
}

TEST(StatusParse, NulInValueIsAnError) {
  auto r = ParseStatus(std::string_view("dm:a\0b\n", 7));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("NUL"), std::string::npos);
}

TEST(StatusParse, KindIsCaseSensitive) {
  EXPECT_FALSE(ParseStatus("DM:a\n"));
}

TEST(StatusSerialize, EveryLineEndsWithNewlineAndRoundTrips) {
  std::vector<StatusEntry> entries{{Kind::Dm, "a:b"}, {Kind::Loop, "/dev/loop7"}};
  std::string text = SerializeStatus(entries);
  EXPECT_EQ(text, "dm:a:b\nloop:/dev/loop7\n");
  auto r = ParseStatus(text);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, entries);
}

TEST(StatusValidate, RejectsNewlineNulAndEmpty) {
  EXPECT_FALSE(ValidateStatusEntry({Kind::Dm, "a\nloop:/dev/loop0"}));
  EXPECT_FALSE(ValidateStatusEntry({Kind::Dm, std::string("a\0", 2)}));
  EXPECT_FALSE(ValidateStatusEntry({Kind::Loop, ""}));
  EXPECT_TRUE(ValidateStatusEntry({Kind::Dm, "x:y"}));
}

TEST(StatusFile, ReadMissingIsEnoent) {
  imaged::test::TempDir dir;
  auto r = ReadStatusFile(imaged::test::OpenDir(dir.path()), "x.status");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
}

TEST(StatusFile, AppendCreatesThenAppendsInOrder) {
  imaged::test::TempDir dir;
  std::string path = (dir.path() / "system.status").string();
  Directory d = imaged::test::OpenDir(dir.path());
  const std::string file = "system.status";
  ASSERT_TRUE(AppendStatusEntry(d, file, {Kind::Loop, "/dev/loop1"}));
  ASSERT_TRUE(AppendStatusEntry(d, file, {Kind::Loop, "/dev/loop2"}));
  ASSERT_TRUE(AppendStatusEntry(d, file, {Kind::Dm, "system"}));
  EXPECT_EQ(Slurp(path), "loop:/dev/loop1\nloop:/dev/loop2\ndm:system\n");
  auto r = ReadStatusFile(d, file);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->size(), 3u);
}

TEST(StatusFile, AppendRefusesInvalidEntryAndKeepsFile) {
  imaged::test::TempDir dir;
  std::string path = (dir.path() / "a.status").string();
  Directory d = imaged::test::OpenDir(dir.path());
  const std::string file = "a.status";
  ASSERT_TRUE(AppendStatusEntry(d, file, {Kind::Dm, "a"}));
  EXPECT_FALSE(AppendStatusEntry(d, file, {Kind::Dm, "b\nloop:/dev/loop0"}));
  EXPECT_EQ(Slurp(path), "dm:a\n");
}

TEST(StatusFile, AppendToCorruptFileFailsWithoutOverwriting) {
  imaged::test::TempDir dir;
  std::string path = (dir.path() / "a.status").string();
  Directory d = imaged::test::OpenDir(dir.path());
  const std::string file = "a.status";
  std::ofstream(path) << "garbage\n";
  EXPECT_FALSE(AppendStatusEntry(d, file, {Kind::Dm, "a"}));
  EXPECT_EQ(Slurp(path), "garbage\n");
}

TEST(StatusFile, WriteReplacesAtomicallyAndLeavesNoTemp) {
  imaged::test::TempDir dir;
  std::string path = (dir.path() / "a.status").string();
  Directory d = imaged::test::OpenDir(dir.path());
  const std::string file = "a.status";
  ASSERT_TRUE(WriteStatusFile(d, file, {{Kind::Dm, "a"}, {Kind::Loop, "/dev/loop9"}}));
  ASSERT_TRUE(WriteStatusFile(d, file, {{Kind::Dm, "b"}}));
  EXPECT_EQ(Slurp(path), "dm:b\n");
  size_t files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1u);
}

TEST(StatusFile, RemoveDeletesAndMissingIsOk) {
  imaged::test::TempDir dir;
  std::string path = (dir.path() / "a.status").string();
  Directory d = imaged::test::OpenDir(dir.path());
  const std::string file = "a.status";
  ASSERT_TRUE(WriteStatusFile(d, file, {{Kind::Dm, "a"}}));
  ASSERT_TRUE(RemoveStatusFile(d, file));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(RemoveStatusFile(d, file));
}

TEST(StatusFile, SymlinkIsNeverFollowed) {
  imaged::test::TempDir dir;
  imaged::test::TempDir other;
  std::ofstream(other.path() / "target") << "dm:someone-else\n";
  std::filesystem::create_symlink(other.path() / "target", dir.path() / "a.status");
  Directory d = imaged::test::OpenDir(dir.path());
  auto r = ReadStatusFile(d, "a.status");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ELOOP);
  EXPECT_FALSE(RemoveStatusFile(d, "a.status"));
  EXPECT_TRUE(std::filesystem::is_symlink(dir.path() / "a.status"));
  EXPECT_EQ(Slurp(other.path() / "target"), "dm:someone-else\n");
}

}  // namespace
}  // namespace imaged::metadata
