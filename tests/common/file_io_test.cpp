// Directory (no-follow access, atomic replacement), positioned I/O and the zero writer.
#include "imaged/common/file_io.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "process.h"

namespace imaged {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> Bytes(std::string_view s) {
  return {s.begin(), s.end()};
}

std::string Slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

constexpr AtomicWriteStep kSteps[] = {AtomicWriteStep::kCreateTemp, AtomicWriteStep::kWrite,
                                      AtomicWriteStep::kFsyncFile, AtomicWriteStep::kRename,
                                      AtomicWriteStep::kFsyncDir};

AtomicWriteHooks At(AtomicWriteStep target, AtomicWriteAction action) {
  return AtomicWriteHooks{
      [=](AtomicWriteStep s) { return s == target ? action : AtomicWriteAction::kContinue; }};
}

Directory Open(const fs::path& path) {
  auto dir = Directory::Open(path.string());
  EXPECT_TRUE(dir) << dir.error().ToString();
  return dir ? *dir : Directory();
}

// What the tests write through: Directory::AtomicWrite on the file's own directory.
Result<void> AtomicWriteFile(const fs::path& path, const std::vector<uint8_t>& data,
                             mode_t mode = 0644, const AtomicWriteHooks* hooks = nullptr) {
  auto dir = IMAGED_TRY(Directory::Open(path.parent_path().string()));
  return dir.AtomicWrite(path.filename().string(), data, {.mode = mode, .hooks = hooks});
}

TEST(AtomicWrite, CreatesFileWithModeAndContent) {
  imaged::test::TempDir dir;
  fs::path path = dir.path() / "f";
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("hello"), 0640));
  EXPECT_EQ(Slurp(path), "hello");
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(Listing(dir.path()), std::vector<std::string>{"f"});
}

TEST(AtomicWrite, ReplacesExistingFile) {
  imaged::test::TempDir dir;
  fs::path path = dir.path() / "f";
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("old old old")));
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("new")));
  EXPECT_EQ(Slurp(path), "new");
}

TEST(AtomicWrite, HooksSeeEveryStepInOrder) {
  imaged::test::TempDir dir;
  std::vector<AtomicWriteStep> seen;
  AtomicWriteHooks hooks{[&](AtomicWriteStep s) {
    seen.push_back(s);
    return AtomicWriteAction::kContinue;
  }};
  ASSERT_TRUE(AtomicWriteFile(dir.path() / "f", Bytes("x"), 0644, &hooks));
  EXPECT_EQ(seen, std::vector<AtomicWriteStep>(std::begin(kSteps), std::end(kSteps)));
}

TEST(AtomicWrite, FailureBeforeRenameKeepsOldFileAndRemovesTemp) {
  for (AtomicWriteStep step : {AtomicWriteStep::kCreateTemp, AtomicWriteStep::kWrite,
                               AtomicWriteStep::kFsyncFile, AtomicWriteStep::kRename}) {
    imaged::test::TempDir dir;
    fs::path path = dir.path() / "lp_metadata";
    ASSERT_TRUE(AtomicWriteFile(path, Bytes("old")));
    AtomicWriteHooks hooks = At(step, AtomicWriteAction::kFail);
    auto r = AtomicWriteFile(path, Bytes("new content"), 0644, &hooks);
    ASSERT_FALSE(r) << static_cast<int>(step);
    EXPECT_EQ(r.error().code, EIO);
    EXPECT_EQ(Slurp(path), "old") << static_cast<int>(step);
    EXPECT_EQ(Listing(dir.path()), std::vector<std::string>{"lp_metadata"})
        << static_cast<int>(step);
  }
}

TEST(AtomicWrite, FailureAtDirectoryFsyncIsReportedAfterTheCommitPoint) {
  imaged::test::TempDir dir;
  fs::path path = dir.path() / "f";
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("old")));
  AtomicWriteHooks hooks = At(AtomicWriteStep::kFsyncDir, AtomicWriteAction::kFail);
  EXPECT_FALSE(AtomicWriteFile(path, Bytes("new"), 0644, &hooks));
  EXPECT_EQ(Slurp(path), "new");
  EXPECT_EQ(Listing(dir.path()), std::vector<std::string>{"f"});
}

TEST(AtomicWrite, CrashAtAnyStepLeavesOldOrNewNeverAMix) {
  for (AtomicWriteStep step : kSteps) {
    imaged::test::TempDir dir;
    fs::path path = dir.path() / "lp_metadata";
    ASSERT_TRUE(AtomicWriteFile(path, Bytes("old")));
    AtomicWriteHooks hooks = At(step, AtomicWriteAction::kCrash);
    EXPECT_FALSE(AtomicWriteFile(path, Bytes("new content"), 0644, &hooks));
    std::string now = Slurp(path);
    if (step == AtomicWriteStep::kFsyncDir) {
      EXPECT_EQ(now, "new content");
    } else {
      EXPECT_EQ(now, "old") << static_cast<int>(step);
    }
    // The reader of the real path never sees the temp; cleanup removes any leftover.
    auto removed = Open(dir.path()).RemoveTempFiles();
    ASSERT_TRUE(removed) << removed.error().ToString();
    bool temp_expected = step == AtomicWriteStep::kWrite || step == AtomicWriteStep::kFsyncFile ||
                         step == AtomicWriteStep::kRename;
    EXPECT_EQ(*removed, temp_expected ? 1u : 0u) << static_cast<int>(step);
    EXPECT_EQ(Listing(dir.path()), std::vector<std::string>{"lp_metadata"});
    EXPECT_EQ(Slurp(path), now);
  }
}

TEST(AtomicWrite, CleanupLeavesOtherFilesAlone) {
  imaged::test::TempDir dir;
  std::ofstream(dir.path() / ".hidden") << "x";
  std::ofstream(dir.path() / "a.status") << "dm:a\n";
  std::ofstream(dir.path() / (std::string(kTempFilePrefix) + "lp_metadata.abc123")) << "partial";
  auto removed = Open(dir.path()).RemoveTempFiles();
  ASSERT_TRUE(removed);
  EXPECT_EQ(*removed, 1u);
  EXPECT_EQ(Listing(dir.path()), (std::vector<std::string>{".hidden", "a.status"}));
}

TEST(AtomicWrite, MissingDirectoryFails) {
  imaged::test::TempDir dir;
  auto r = AtomicWriteFile(dir.path() / "no" / "f", Bytes("x"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
}

TEST(AtomicWrite, VeryLongFileNameStillGetsATempName) {
  imaged::test::TempDir dir;
  fs::path path = dir.path() / std::string(250, 'n');
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("x")));
  EXPECT_EQ(Slurp(path), "x");
}

TEST(ReadWholeFile, ReadsAndEnforcesLimit) {
  imaged::test::TempDir dir;
  fs::path path = dir.path() / "f";
  ASSERT_TRUE(AtomicWriteFile(path, Bytes("0123456789")));
  auto ok = ReadWholeFile(path, 10);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->size(), 10u);
  auto big = ReadWholeFile(path, 9);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, EFBIG);
  auto missing = ReadWholeFile(dir.path() / "g", 10);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ENOENT);
  EXPECT_NE(missing.error().message.find("/g"), std::string::npos);
}

TEST(ReadWholeFile, RefusesDirectories) {
  imaged::test::TempDir dir;
  auto r = ReadWholeFile(dir.path(), 100);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
}

TEST(AtomicWrite, WithoutReplaceRefusesAnExistingTargetAndLeavesIt) {
  imaged::test::TempDir tmp;
  Directory dir = Open(tmp.path());
  ASSERT_TRUE(dir.AtomicWrite("list", Bytes("first"), {.replace = false}));
  auto again = dir.AtomicWrite("list", Bytes("second"), {.replace = false});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, EEXIST);
  EXPECT_EQ(Slurp(tmp.path() / "list"), "first");
  EXPECT_EQ(Listing(tmp.path()), std::vector<std::string>{"list"});
}

// A planted symlink where a file should be: never followed, never changed, named in the error.
TEST(DirectoryTest, SymlinkIsRefusedForEveryAccessAndItsTargetIsUntouched) {
  imaged::test::TempDir tmp;
  imaged::test::TempDir elsewhere;
  const fs::path target = elsewhere.path() / "victim";
  std::ofstream(target) << "precious";
  fs::create_symlink(target, tmp.path() / "evil.img.0000");
  Directory dir = Open(tmp.path());

  auto opened = dir.OpenFile("evil.img.0000", O_RDWR);
  ASSERT_FALSE(opened);
  EXPECT_EQ(opened.error().code, ELOOP);
  EXPECT_NE(opened.error().message.find("evil.img.0000"), std::string::npos);
  auto truncating = dir.OpenFile("evil.img.0000", O_WRONLY | O_TRUNC);
  ASSERT_FALSE(truncating);
  auto created = dir.OpenFile("evil.img.0000", O_RDWR | O_CREAT);
  ASSERT_FALSE(created);
  auto removed = dir.RemoveFile("evil.img.0000");
  ASSERT_FALSE(removed);
  EXPECT_EQ(removed.error().code, ELOOP);
  auto read = dir.ReadFile("evil.img.0000", 100);
  ASSERT_FALSE(read);
  EXPECT_TRUE(dir.Exists("evil.img.0000"));

  EXPECT_EQ(Slurp(target), "precious");
  EXPECT_TRUE(fs::is_symlink(tmp.path() / "evil.img.0000"));
}

// A FIFO would block open() forever without O_NONBLOCK; it is refused without blocking.
TEST(DirectoryTest, FifoIsRefusedWithoutBlocking) {
  imaged::test::TempDir tmp;
  ASSERT_EQ(mkfifo((tmp.path() / "pipe").c_str(), 0600), 0);
  Directory dir = Open(tmp.path());
  for (int flags : {O_RDONLY, O_WRONLY, O_RDWR}) {
    auto opened = dir.OpenFile("pipe", flags);
    ASSERT_FALSE(opened);
    EXPECT_EQ(opened.error().code, EINVAL);
    EXPECT_NE(opened.error().message.find("a FIFO"), std::string::npos);
  }
  EXPECT_FALSE(dir.RemoveFile("pipe"));
  EXPECT_TRUE(fs::is_fifo(tmp.path() / "pipe"));
}

TEST(DirectoryTest, DirectoriesSocketsAndDevicesAreNotFiles) {
  imaged::test::TempDir tmp;
  fs::create_directory(tmp.path() / "sub");
  Directory dir = Open(tmp.path());
  auto sub = dir.OpenFile("sub", O_RDONLY);
  ASSERT_FALSE(sub);
  EXPECT_NE(sub.error().message.find("a directory"), std::string::npos);
  EXPECT_FALSE(dir.RemoveFile("sub"));
  if (geteuid() == 0) {
    ASSERT_EQ(mknod((tmp.path() / "null").c_str(), S_IFCHR | 0600, makedev(1, 3)), 0);
    auto dev = dir.OpenFile("null", O_RDWR);
    ASSERT_FALSE(dev);
    EXPECT_NE(dev.error().message.find("a character device"), std::string::npos);
  }
  UniqueFd sock(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string sock_path = (tmp.path() / "sock").string();
  ASSERT_LT(sock_path.size(), sizeof(addr.sun_path));
  std::memcpy(addr.sun_path, sock_path.c_str(), sock_path.size() + 1);
  ASSERT_EQ(bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  auto s = dir.OpenFile("sock", O_RDONLY);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("a socket"), std::string::npos);
}

TEST(DirectoryTest, NamesAreSingleComponents) {
  imaged::test::TempDir tmp;
  fs::create_directory(tmp.path() / "sub");
  std::ofstream(tmp.path() / "sub" / "f") << "x";
  Directory dir = Open(tmp.path());
  const std::string_view bads[] = {"", ".", "..", "sub/f", "../x", std::string_view("a\0b", 3)};
  for (std::string_view bad : bads) {
    auto r = dir.OpenFile(bad, O_RDONLY);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, EINVAL) << bad;
    EXPECT_FALSE(dir.AtomicWrite(bad, Bytes("x"))) << bad;
  }
}

TEST(DirectoryTest, CreateExclusiveListAndRemove) {
  imaged::test::TempDir tmp;
  Directory dir = Open(tmp.path());
  auto made = dir.OpenFile("b", O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_TRUE(made) << made.error().ToString();
  auto again = dir.OpenFile("b", O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, EEXIST);
  ASSERT_TRUE(dir.AtomicWrite("a", Bytes("x")));
  auto names = dir.List();
  ASSERT_TRUE(names);
  EXPECT_EQ(*names, (std::vector<std::string>{"a", "b"}));
  // List twice: each call reads the directory from its start.
  EXPECT_EQ(*dir.List(), *names);
  auto removed = dir.RemoveFile("a");
  ASSERT_TRUE(removed);
  EXPECT_TRUE(*removed);
  auto gone = dir.RemoveFile("a");
  ASSERT_TRUE(gone);
  EXPECT_FALSE(*gone);
  auto st = dir.Stat("a");
  ASSERT_TRUE(st);
  EXPECT_FALSE(st->has_value());
}

TEST(ZeroWriterTest, WritesZerosOverTheRangeOnlyAndReportsProgress) {
  imaged::test::TempDir tmp;
  Directory dir = Open(tmp.path());
  auto fd = dir.OpenFile("f", O_RDWR | O_CREAT, 0600);
  ASSERT_TRUE(fd);
  const uint64_t size = kZeroChunk * 2 + 3 * 4096;
  std::vector<uint8_t> ones(size, 0xff);
  ASSERT_TRUE(FullPWrite(fd->get(), ones.data(), ones.size(), 0));
  std::vector<uint64_t> reports;
  auto zeroed = WriteZerosToFd(fd->get(), 4096, size - 8192, "f", [&](uint64_t d, uint64_t t) {
    EXPECT_EQ(t, size - 8192);
    reports.push_back(d);
    return true;
  });
  ASSERT_TRUE(zeroed) << zeroed.error().ToString();
  std::vector<uint8_t> back(size);
  ASSERT_TRUE(FullPRead(fd->get(), back.data(), back.size(), 0));
  for (uint64_t i = 0; i < size; ++i) {
    const bool inside = i >= 4096 && i < size - 4096;
    ASSERT_EQ(back[i], inside ? 0 : 0xff) << i;
  }
  EXPECT_EQ(reports, (std::vector<uint64_t>{kZeroChunk, 2 * kZeroChunk, size - 8192}));
}

TEST(ZeroWriterTest, CancelStopsWithECANCELED) {
  std::vector<uint64_t> offsets;
  auto r = WriteZeros(
      0, 3 * kZeroChunk,
      [&](std::span<const uint8_t> z, uint64_t at) -> Result<void> {
        offsets.push_back(at);
        EXPECT_EQ(z.size(), kZeroChunk);
        return Ok();
      },
      [](uint64_t, uint64_t) { return false; });
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ECANCELED);
  EXPECT_EQ(offsets, std::vector<uint64_t>{0});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ZeroChunk().data()) % 4096, 0u);
}

TEST(FullIoTest, ReadPastTheEndIsEIO) {
  imaged::test::TempDir tmp;
  Directory dir = Open(tmp.path());
  auto fd = dir.OpenFile("f", O_RDWR | O_CREAT, 0600);
  ASSERT_TRUE(fd);
  ASSERT_TRUE(FullPWrite(fd->get(), "abc", 3, 0));
  char buf[4];
  auto r = FullPRead(fd->get(), buf, 4, 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO);
}

TEST(PathTest, DirnameAndBasename) {
  EXPECT_EQ(Dirname("/a/b"), "/a");
  EXPECT_EQ(Dirname("/a/b/"), "/a");
  EXPECT_EQ(Dirname("b"), ".");
  EXPECT_EQ(Dirname("/b"), "/");
  EXPECT_EQ(Basename("/a/b"), "b");
  EXPECT_EQ(Basename("/a/b/"), "b");
  EXPECT_EQ(Basename("b"), "b");
  EXPECT_TRUE(IsTempFileName(".imaged-tmp.lp_metadata.abc123"));
  EXPECT_FALSE(IsTempFileName(".imaged-tmp."));
  EXPECT_FALSE(IsTempFileName("a.img"));
}

}  // namespace
}  // namespace imaged
