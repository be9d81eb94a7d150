// The gRPC API through the real daemon and the real imagectl, on a real ext4 filesystem made on
// a loop device (label host: root). The loop map strategy works on this kernel.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fs_fixture.h"
#include "live_writer.h"
#include "process.h"

namespace imaged::test {
namespace {

using nlohmann::json;

// Debian's interpreter, which python3-grpcio installs into (a python3 earlier in PATH, e.g.
// pyenv's, may lack it).
constexpr const char* kPython = "/usr/bin/python3";

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_FS("ext4");
    fs_.emplace("ext4", 192ull << 20);
    data_ = fs_->mount_point() + "/data";
    metadata_ = (dir_.path() / "metadata").string();
    socket_ = (dir_.path() / "imaged.sock").string();
    StartDaemon();
  }
  void TearDown() override {
    // Unmap anything a failed test left mapped, so the fixture can unmount.
    if (daemon_ && daemon_->ready()) {
      auto list = Ctl({"--json", "list"});
      if (list.exit_code == 0) {
        for (const auto& image : json::parse(list.out)) {
          if (!image["mapped_device"].get<std::string>().empty()) {
            Ctl({"unmap", image["name"].get<std::string>()});
          }
        }
      }
    }
    daemon_.reset();
  }

  void StartDaemon(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {IMAGED_BIN,       "--socket",   socket_,  "--data-dir",
                                     data_,            "--metadata-dir", metadata_, "--strategy",
                                     "loop"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    daemon_.reset();
    daemon_ = std::make_unique<DaemonProcess>(argv, dir_.path());
    ASSERT_TRUE(daemon_->ready()) << "daemon did not start";
  }

  CommandResult Ctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {IMAGECTL_BIN, "--socket", socket_};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv);
  }
  // imagectl as an unprivileged user (nobody), for authorization tests.
  CommandResult CtlAsNobody(std::vector<std::string> args) {
    std::vector<std::string> argv = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                     IMAGECTL_BIN, "--socket", socket_};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv);
  }

  TempDir dir_;
  std::optional<LoopFilesystem> fs_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::string data_, metadata_, socket_;
};

std::string ReadDevice(const std::string& device, size_t length, off_t offset) {
  std::string buf(length, '\0');
  int fd = open(device.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  ssize_t n = pread(fd, buf.data(), length, offset);
  close(fd);
  buf.resize(n < 0 ? 0 : static_cast<size_t>(n));
  return buf;
}

bool WriteDevice(const std::string& device, const std::string& data, off_t offset) {
  int fd = open(device.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = pwrite(fd, data.data(), data.size(), offset) == static_cast<ssize_t>(data.size()) &&
            fsync(fd) == 0;
  close(fd);
  return ok;
}

uint64_t DeviceSize(const std::string& device) {
  int fd = open(device.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  off_t size = lseek(fd, 0, SEEK_END);
  close(fd);
  return size < 0 ? 0 : static_cast<uint64_t>(size);
}

// Names that were, or could be, the set's own files: the daemon's lock, lp_metadata and its
// lock, the set lock, the lock directory. Each is an ordinary image, and the daemon still stops
// on SIGTERM afterwards (an image named "imaged" used to take the daemon's own lock: create hung
// forever and SIGTERM no longer stopped the daemon).
TEST_F(ApiTest, ImagesNamedLikeTheSetsOwnFilesAreOrdinaryImages) {
  const std::vector<std::string> names = {"imaged", "lp_metadata", "lp_metadata.lock", "set",
                                          "daemon", "locks", "imaged-set.lock", "a.status",
                                          "a.lock", "a.incomplete", "a.intent", "a.img", "lp_metadata.prev"};
  for (const auto& name : names) {
    auto created = RunCommand({"timeout", "30", IMAGECTL_BIN, "--socket", socket_, "create", name,
                               "1M"});
    ASSERT_EQ(created.exit_code, 0) << name << ": " << created.err;
    auto mapped = Ctl({"map", name});
    ASSERT_EQ(mapped.exit_code, 0) << name << ": " << mapped.err;
    ASSERT_EQ(Ctl({"unmap", name}).exit_code, 0) << name;
  }
  auto list = Ctl({"--json", "list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_EQ(json::parse(list.out).size(), names.size());
  // A restart recovers them all as they are (nothing mistaken for one of the set's files).
  StartDaemon();
  list = Ctl({"--json", "list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_EQ(json::parse(list.out).size(), names.size());
  for (const auto& name : names) ASSERT_EQ(Ctl({"delete", name}).exit_code, 0) << name;
  const auto started = std::chrono::steady_clock::now();
  const int status = daemon_->Stop(std::chrono::seconds(10));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(10));
  // Nothing of the deleted images is left, not even their lock files.
  for (const auto& entry : std::filesystem::directory_iterator(metadata_ + "/.locks")) {
    const std::string f = entry.path().filename().string();
    EXPECT_TRUE(f == ".daemon" || f == ".set" || f == ".lp_metadata") << f;
  }
}

TEST_F(ApiTest, CreateMapWriteReadUnmapDelete) {
  auto created = Ctl({"create", "demo", "8M"});
  ASSERT_EQ(created.exit_code, 0) << created.err;

  auto mapped = Ctl({"map", "demo"});
  ASSERT_EQ(mapped.exit_code, 0) << mapped.err;
  std::string device = mapped.out.substr(0, mapped.out.find('\n'));
  ASSERT_TRUE(device.rfind("/dev/", 0) == 0) << device;
  EXPECT_EQ(DeviceSize(device), 8u << 20);

  std::string pattern(4096, '\0');
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<char>(i * 7 + 3);
  ASSERT_TRUE(WriteDevice(device, pattern, 1 << 20));
  EXPECT_EQ(ReadDevice(device, pattern.size(), 1 << 20), pattern);

  auto info = Ctl({"--json", "info", "demo"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["mapped_device"], device);

  ASSERT_EQ(Ctl({"unmap", "demo"}).exit_code, 0);
  // The data is in the backing file, at the same offset.
  std::ifstream piece(data_ + "/demo.img.0000", std::ios::binary);
  piece.seekg(1 << 20);
  std::string from_file(pattern.size(), '\0');
  piece.read(from_file.data(), static_cast<std::streamsize>(from_file.size()));
  EXPECT_EQ(from_file, pattern);

  ASSERT_EQ(Ctl({"delete", "demo"}).exit_code, 0);
  EXPECT_FALSE(std::filesystem::exists(data_ + "/demo.img.0000"));
  auto list = Ctl({"--json", "list"});
  ASSERT_EQ(list.exit_code, 0);
  EXPECT_TRUE(json::parse(list.out).empty());
}

TEST_F(ApiTest, ListShowsImagesAsTableAndJson) {
  ASSERT_EQ(Ctl({"create", "alpha", "1M"}).exit_code, 0);
  ASSERT_EQ(Ctl({"create", "beta", "2M", "--readonly"}).exit_code, 0);
  auto table = Ctl({"list"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("NAME"), std::string::npos);
  EXPECT_NE(table.out.find("alpha"), std::string::npos);
  EXPECT_NE(table.out.find("2.0 MiB"), std::string::npos);
  auto list = Ctl({"--json", "list"});
  ASSERT_EQ(list.exit_code, 0);
  auto images = json::parse(list.out);
  ASSERT_EQ(images.size(), 2u);
  EXPECT_EQ(images[1]["name"], "beta");
  EXPECT_EQ(images[1]["size_bytes"], 2u << 20);
  EXPECT_EQ(images[1]["readonly"], true);
}

// The daemon answers ListImages from an encoded reply it keeps between changes: every change,
// through the daemon or behind its back, must show in the very next list.
TEST_F(ApiTest, ListFollowsEveryChange) {
  auto names_and_devices = [&] {
    auto list = Ctl({"--json", "list"});
    EXPECT_EQ(list.exit_code, 0) << list.err;
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& image : json::parse(list.out)) {
      out.emplace_back(image["name"], image["mapped_device"]);
    }
    return out;
  };
  using Images = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(names_and_devices(), Images{});
  ASSERT_EQ(Ctl({"create", "one", "1M"}).exit_code, 0);
  EXPECT_EQ(names_and_devices(), (Images{{"one", ""}}));
  ASSERT_EQ(Ctl({"create", "two", "1M"}).exit_code, 0);
  EXPECT_EQ(names_and_devices(), (Images{{"one", ""}, {"two", ""}}));
  auto mapped = Ctl({"map", "two"});
  ASSERT_EQ(mapped.exit_code, 0) << mapped.err;
  std::string device = mapped.out.substr(0, mapped.out.find('\n'));
  EXPECT_EQ(names_and_devices(), (Images{{"one", ""}, {"two", device}}));
  ASSERT_EQ(Ctl({"unmap", "two"}).exit_code, 0);
  EXPECT_EQ(names_and_devices(), (Images{{"one", ""}, {"two", ""}}));
  ASSERT_EQ(Ctl({"delete", "one"}).exit_code, 0);
  EXPECT_EQ(names_and_devices(), (Images{{"two", ""}}));

  // Behind the daemon's back: lp_metadata replaced by one without images.
  const std::string lp = metadata_ + "/lp_metadata";
  const std::string saved = lp + ".saved";
  ASSERT_EQ(rename(lp.c_str(), saved.c_str()), 0);
  EXPECT_EQ(names_and_devices(), Images{});
  ASSERT_EQ(rename(saved.c_str(), lp.c_str()), 0);
  EXPECT_EQ(names_and_devices(), (Images{{"two", ""}}));
}

TEST_F(ApiTest, ListOfCorruptMetadataFailsWithTheReason) {
  ASSERT_EQ(Ctl({"create", "victim", "1M"}).exit_code, 0);
  ASSERT_EQ(Ctl({"list"}).exit_code, 0);  // an encoded reply is now kept
  const std::string lp = metadata_ + "/lp_metadata";
  {
    std::fstream f(lp, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good());
    const std::string junk(8192, 'X');  // over the geometry, wherever the layout puts it
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  auto list = Ctl({"list"});
  EXPECT_EQ(list.exit_code, 1) << list.out;
  EXPECT_NE(list.err.find("lp_metadata"), std::string::npos) << list.err;
}

TEST_F(ApiTest, CreateExistingIsRefusedWithExitCode1) {
  ASSERT_EQ(Ctl({"create", "dup", "1M"}).exit_code, 0);
  auto again = Ctl({"create", "dup", "1M"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("dup"), std::string::npos) << again.err;
}

TEST_F(ApiTest, UnknownImageGivesExitCode5) {
  EXPECT_EQ(Ctl({"info", "ghost"}).exit_code, 5);
  EXPECT_EQ(Ctl({"delete", "ghost"}).exit_code, 5);
}

TEST_F(ApiTest, BadNamesAndSizesAreRefusedAndChangeNothing) {
  for (const std::string& name : std::vector<std::string>{"../x", "a/b", ".hidden", std::string(300, 'n')}) {
    auto r = Ctl({"create", name, "1M"});
    EXPECT_EQ(r.exit_code, 1) << name;
  }
  EXPECT_EQ(Ctl({"create", "zero", "0"}).exit_code, 1);
  EXPECT_EQ(Ctl({"create", "huge", "1P"}).exit_code, 1);
  EXPECT_EQ(Ctl({"create", "bad", "12Q"}).exit_code, 2);  // not a size: usage error
  auto list = Ctl({"--json", "list"});
  EXPECT_TRUE(json::parse(list.out).empty());
  // Nothing but the directory skeleton on the data filesystem.
  for (const auto& entry : std::filesystem::directory_iterator(data_)) {
    ADD_FAILURE() << "left behind: " << entry.path();
  }
}

TEST_F(ApiTest, DeleteOfMappedImageIsRefused) {
  ASSERT_EQ(Ctl({"create", "busy", "1M"}).exit_code, 0);
  ASSERT_EQ(Ctl({"map", "busy"}).exit_code, 0);
  auto del = Ctl({"delete", "busy"});
  EXPECT_EQ(del.exit_code, 1);
  EXPECT_NE(del.err.find("mapped"), std::string::npos) << del.err;
  EXPECT_EQ(Ctl({"unmap", "busy"}).exit_code, 0);
  EXPECT_EQ(Ctl({"delete", "busy"}).exit_code, 0);
}

TEST_F(ApiTest, UnprivilegedPeerMayReadButNotChange) {
  ASSERT_EQ(Ctl({"create", "guarded", "1M"}).exit_code, 0);
  // Deployment choice under test: the socket opened to everyone; the daemon still decides.
  ASSERT_EQ(chmod(dir_.path().c_str(), 0711), 0);
  ASSERT_EQ(chmod(socket_.c_str(), 0666), 0);
  auto list = CtlAsNobody({"--json", "list"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  auto del = CtlAsNobody({"delete", "guarded"});
  EXPECT_EQ(del.exit_code, 4) << del.err;
  auto create = CtlAsNobody({"create", "intruder", "1M"});
  EXPECT_EQ(create.exit_code, 4) << create.err;
  EXPECT_EQ(Ctl({"info", "guarded"}).exit_code, 0);
  EXPECT_EQ(Ctl({"info", "intruder"}).exit_code, 5);
}

TEST_F(ApiTest, SocketClosedToOthersByDefault) {
  struct stat st {};
  ASSERT_EQ(stat(socket_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  ASSERT_EQ(chmod(dir_.path().c_str(), 0711), 0);  // only the socket's own mode stops nobody
  auto r = CtlAsNobody({"--timeout", "2", "list"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
}

TEST_F(ApiTest, ImportByPathAndByUploadAreBitExact) {
  std::string source = (dir_.path() / "source.raw").string();
  {
    std::ofstream out(source, std::ios::binary);
    std::string block(65536, '\0');
    for (int i = 0; i < 32; ++i) {
      for (size_t j = 0; j < block.size(); ++j) block[j] = static_cast<char>((i * 31 + j) % 251);
      if (i % 3 == 0) std::fill(block.begin(), block.end(), '\0');
      out.write(block.data(), static_cast<std::streamsize>(block.size()));
    }
  }
  std::string sparse = (dir_.path() / "source.simg").string();
  ASSERT_EQ(RunCommand({"img2simg", source, sparse}).exit_code, 0);

  auto by_path = Ctl({"import", sparse, "frompath"});
  ASSERT_EQ(by_path.exit_code, 0) << by_path.err;
  auto upload = Ctl({"import", "--upload", source, "fromupload"});
  ASSERT_EQ(upload.exit_code, 0) << upload.err;

  std::ifstream in(source, std::ios::binary);
  std::string expected((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* name : {"frompath", "fromupload"}) {
    auto mapped = Ctl({"map", name});
    ASSERT_EQ(mapped.exit_code, 0) << mapped.err;
    std::string device = mapped.out.substr(0, mapped.out.find('\n'));
    EXPECT_EQ(DeviceSize(device), expected.size()) << name;
    EXPECT_TRUE(ReadDevice(device, expected.size(), 0) == expected) << name;
    EXPECT_EQ(Ctl({"unmap", name}).exit_code, 0);
  }
}

// Images as people download them: what imagectl imports from an .img.xz, a .zip and (by upload)
// an .img.gz is what xz -dc, unzip -p and gzip -dc unpack, and a damaged one leaves nothing.
TEST_F(ApiTest, DryRunsPrintThePlanAndChangeNothing) {
  auto planned = Ctl({"--json", "create", "a", "8M", "--dry-run"});
  ASSERT_EQ(planned.exit_code, 0) << planned.err;
  json plan = json::parse(planned.out);
  EXPECT_TRUE(plan["dry_run"].get<bool>());
  EXPECT_EQ(plan["size_bytes"].get<uint64_t>(), 8u << 20);
  EXPECT_EQ(plan["allocate_bytes"].get<uint64_t>(), 8u << 20);
  EXPECT_EQ(plan["pieces"].get<uint32_t>(), 1u);
  EXPECT_EQ(plan["free_after_bytes"].get<uint64_t>(),
            plan["free_bytes"].get<uint64_t>() - (8u << 20));
  // The default reserve: 5% of the filesystem.
  EXPECT_EQ(plan["reserve_bytes"].get<uint64_t>(), plan["fs_bytes"].get<uint64_t>() / 20);
  EXPECT_TRUE(json::parse(Ctl({"--json", "list"}).out).empty());
  auto text = Ctl({"create", "a", "8M", "--dry-run"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("dry run: nothing was created"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("allocate:    8.0 MiB (8388608 bytes), 1 piece after"), std::string::npos)
      << text.out;

  ASSERT_EQ(Ctl({"create", "a", "8M"}).exit_code, 0);
  auto grow = Ctl({"--json", "resize", "a", "+4M", "--dry-run"});
  ASSERT_EQ(grow.exit_code, 0) << grow.err;
  EXPECT_EQ(json::parse(grow.out)["allocate_bytes"].get<uint64_t>(), 4u << 20);
  EXPECT_EQ(json::parse(grow.out)["size_bytes"].get<uint64_t>(), 12u << 20);
  EXPECT_EQ(json::parse(Ctl({"--json", "info", "a"}).out)["size_bytes"].get<uint64_t>(), 8u << 20);

  const std::string source = (dir_.path() / "src.img").string();
  ASSERT_EQ(RunCommand({"truncate", "-s", "3M", source}).exit_code, 0);
  auto import = Ctl({"--json", "import", source, "b", "--dry-run"});
  ASSERT_EQ(import.exit_code, 0) << import.err;
  EXPECT_EQ(json::parse(import.out)["size_bytes"].get<uint64_t>(), 3u << 20);
  EXPECT_EQ(json::parse(Ctl({"--json", "list"}).out).size(), 1u);
  // What cannot be planned is a usage error.
  EXPECT_EQ(Ctl({"import", source, "b", "--upload", "--dry-run"}).exit_code, 2);
  EXPECT_EQ(Ctl({"resize", "a", "4M", "--shrink", "--dry-run"}).exit_code, 2);
}

TEST_F(ApiTest, TheConfiguredReserveRefusesWithTheNumbers) {
  StartDaemon({"--min-free-percent", "80"});
  auto refused = Ctl({"create", "big", "64M"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("min_free_percent = 80"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("kept free"), std::string::npos) << refused.err;
  auto plan = Ctl({"create", "big", "64M", "--dry-run"});
  EXPECT_NE(plan.exit_code, 0);  // a dry run fails as the create would
  EXPECT_TRUE(json::parse(Ctl({"--json", "list"}).out).empty());
  ASSERT_EQ(Ctl({"create", "small", "4M"}).exit_code, 0);
  // Bad values stop the daemon at start, naming the flag.
  for (const auto& bad : std::vector<std::vector<std::string>>{{"--min-free-bytes", "lots"},
                                                               {"--min-free-percent", "95"}}) {
    auto r = RunCommand({IMAGED_BIN, bad[0], bad[1], "--socket", socket_ + ".2"});
    EXPECT_NE(r.exit_code, 0) << bad[0];
    EXPECT_NE(r.err.find(bad[0]), std::string::npos) << r.err;
  }
}

TEST_F(ApiTest, CompressedAndArchivedImportsAreBitExactWithTheStockTools) {
  const std::filesystem::path dir = dir_.path();
  auto sh = [&](const std::string& line) {
    auto r = RunCommand({"sh", "-c", "cd '" + dir.string() + "' && " + line});
    ASSERT_EQ(r.exit_code, 0) << line << ": " << r.err;
  };
  // 3 MiB + 512: text (compressible), zeros and a partial tail.
  sh("{ seq 1 300000; head -c 1048576 /dev/zero; seq 1 120000; } | head -c 3146240 > disk.img && "
     "xz -k -T1 disk.img && gzip -k disk.img && zip -q disk.zip disk.img && rm disk.img");
  auto expect_image = [&](const std::string& name, const std::string& unpack) {
    auto unpacked = RunCommand({"sh", "-c", "cd '" + dir.string() + "' && " + unpack});
    ASSERT_EQ(unpacked.exit_code, 0) << unpacked.err;
    auto mapped = Ctl({"map", name});
    ASSERT_EQ(mapped.exit_code, 0) << mapped.err;
    std::string device = mapped.out.substr(0, mapped.out.find('\n'));
    EXPECT_EQ(DeviceSize(device), unpacked.out.size()) << name;
    EXPECT_TRUE(ReadDevice(device, unpacked.out.size(), 0) == unpacked.out) << name;
    EXPECT_EQ(Ctl({"unmap", name}).exit_code, 0);
  };
  auto xz = Ctl({"import", (dir / "disk.img.xz").string(), "fromxz"});
  ASSERT_EQ(xz.exit_code, 0) << xz.err;
  // The raw image inside is measured first: progress counts the file's bytes then.
  EXPECT_NE(xz.err.find("(measuring)"), std::string::npos) << xz.err;
  EXPECT_NE(xz.err.find("read "), std::string::npos) << xz.err;
  expect_image("fromxz", "xz -dc disk.img.xz");
  auto zip = Ctl({"import", (dir / "disk.zip").string(), "fromzip"});
  ASSERT_EQ(zip.exit_code, 0) << zip.err;
  expect_image("fromzip", "unzip -p disk.zip");
  auto gz = Ctl({"import", "--upload", (dir / "disk.img.gz").string(), "fromgz"});
  ASSERT_EQ(gz.exit_code, 0) << gz.err;
  expect_image("fromgz", "gzip -dc disk.img.gz");

  // A flipped bit in the deflate data: zlib's CRC32 check (or the decoder) refuses it.
  sh("cp disk.img.gz bad.gz && printf '\\377' | dd of=bad.gz bs=1 seek=5000 conv=notrunc "
     "status=none");
  auto bad = Ctl({"import", (dir / "bad.gz").string(), "bad"});
  EXPECT_EQ(bad.exit_code, 1) << bad.err;
  EXPECT_NE(bad.err.find("gzip"), std::string::npos) << bad.err;
  EXPECT_EQ(Ctl({"info", "bad"}).exit_code, 5);
}

// What bash completes after `imagectl` with `line` typed (the last word is the one completed),
// from the installed completion script, asking this test's daemon.
std::vector<std::string> Complete(const std::string& socket, const std::string& line) {
  const std::string script =
      "source '" IMAGECTL_COMPLETION
      "' && read -r -a COMP_WORDS <<< \"$LINE\" && "
      "[[ $LINE == *' ' ]] && COMP_WORDS+=(''); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)) && "
      "_imagectl; printf '%s\\n' \"${COMPREPLY[@]}\"";
  auto r =
      RunCommand({"env", "LINE=" + std::string(IMAGECTL_BIN) + " --socket " + socket + " " + line,
                  "bash", "-c", script});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> out;
  std::istringstream lines(r.out);
  for (std::string word; std::getline(lines, word);) {
    if (!word.empty()) out.push_back(word);
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST_F(ApiTest, BashCompletesSubcommandsFlagsAndImageNamesFromTheDaemon) {
  using Words = std::vector<std::string>;
  ASSERT_EQ(Ctl({"create", "alpha", "1M"}).exit_code, 0);
  ASSERT_EQ(Ctl({"create", "beta", "1M"}).exit_code, 0);
  // Every subcommand imagectl --help lists, and only those.
  Words listed;
  std::istringstream help(Ctl({"--help"}).out);
  bool in_section = false;
  for (std::string row; std::getline(help, row);) {
    if (row == "Subcommands:") {
      in_section = true;
    } else if (in_section && row.empty()) {
      break;
    } else if (in_section && row.starts_with("  ") && row[2] != ' ') {
      listed.push_back(row.substr(2, row.find(' ', 2) - 2));
    }
  }
  std::sort(listed.begin(), listed.end());
  EXPECT_GE(listed.size(), 16u);
  EXPECT_EQ(Complete(socket_, ""), listed);
  EXPECT_EQ(Complete(socket_, "re"), (Words{"rebuild-metadata", "remove-disabled", "resize"}));
  EXPECT_EQ(Complete(socket_, "map "), (Words{"alpha", "beta"}));
  EXPECT_EQ(Complete(socket_, "resize b"), (Words{"beta"}));
  EXPECT_EQ(Complete(socket_, "map alpha "), Words{});
  EXPECT_EQ(Complete(socket_, "import --f"), Words{"--format"});
  EXPECT_EQ(Complete(socket_, "import x.img --format q"), (Words{"qcow", "qcow2"}));
  EXPECT_EQ(Complete(socket_, "import --into-existing x.img a"), Words{"alpha"});
  EXPECT_EQ(Complete(socket_, "import x.img a"), Words{});  // a new name
  EXPECT_EQ(Complete(socket_, "--js"), Words{"--json"});
}

// A source that fails to read part way must not end the upload as if it were complete: for a
// raw stream of unknown length the daemon could not tell a short image from a whole one.
TEST_F(ApiTest, UploadWhoseSourceFailsToReadIsCancelledAndLeavesNothing) {
  auto upload = Ctl({"import", "--upload", "--format", "raw", dir_.path().string(), "unreadable"});
  EXPECT_NE(upload.exit_code, 0);
  EXPECT_NE(upload.err.find("Is a directory"), std::string::npos) << upload.err;
  auto info = Ctl({"info", "unreadable"});
  EXPECT_NE(info.exit_code, 0) << info.out;
}

TEST_F(ApiTest, CorruptImportIsRefusedAndLeavesNothing) {
  std::string bogus = (dir_.path() / "bogus.qcow2").string();
  ASSERT_EQ(RunCommand({"qemu-img", "create", "-q", "-f", "qcow2", bogus, "1M"}).exit_code, 0);
  {
    // Mark an unknown incompatible feature bit (bit 40): must be refused.
    std::fstream f(bogus, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(72 + 2);
    char bit = 0x01;
    f.write(&bit, 1);
  }
  auto r = Ctl({"import", bogus, "bogus"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(Ctl({"info", "bogus"}).exit_code, 5);
  EXPECT_FALSE(std::filesystem::exists(data_ + "/bogus.img"));
}

TEST_F(ApiTest, MappingSurvivesDaemonRestartAndIsAdopted) {
  ASSERT_EQ(Ctl({"create", "keep", "1M"}).exit_code, 0);
  auto mapped = Ctl({"map", "keep"});
  ASSERT_EQ(mapped.exit_code, 0);
  std::string device = mapped.out.substr(0, mapped.out.find('\n'));
  daemon_->Kill();  // SIGKILL: no chance to clean up
  StartDaemon();
  auto info = Ctl({"--json", "info", "keep"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["mapped_device"], device);
  EXPECT_EQ(Ctl({"unmap", "keep"}).exit_code, 0);
}

TEST_F(ApiTest, ResizeGrowsAnUnmappedImage) {
  ASSERT_EQ(Ctl({"create", "grow", "1M"}).exit_code, 0);
  auto r = Ctl({"--json", "resize", "grow", "3M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["size_bytes"], 3u << 20);
  auto implicit = Ctl({"resize", "grow", "2M"});
  EXPECT_EQ(implicit.exit_code, 1);  // shrinking must be asked for
  EXPECT_NE(implicit.err.find("--shrink"), std::string::npos) << implicit.err;
}

// +SIZE is added under the daemon's lock; a mapped image grows in place; --shrink cuts an
// unmapped one; the flags that make no sense together are usage errors.
TEST_F(ApiTest, ResizeRelativeMappedAndShrink) {
  ASSERT_EQ(Ctl({"create", "img", "1M"}).exit_code, 0);
  auto mapped = Ctl({"map", "img"});
  ASSERT_EQ(mapped.exit_code, 0) << mapped.err;
  const std::string device = mapped.out.substr(0, mapped.out.find('\n'));
  auto grown = Ctl({"--json", "resize", "img", "+1M"});
  ASSERT_EQ(grown.exit_code, 0) << grown.err;
  EXPECT_EQ(json::parse(grown.out)["size_bytes"], 2u << 20);
  EXPECT_EQ(json::parse(grown.out)["mapped_device"], device);
  const int fd = open(device.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_EQ(OpenDeviceSize(fd), 2u << 20);
  close(fd);
  EXPECT_EQ(Ctl({"resize", "img", "1M", "--shrink"}).exit_code, 1);  // mapped
  ASSERT_EQ(Ctl({"unmap", "img"}).exit_code, 0);
  auto cut = Ctl({"--json", "resize", "img", "1M", "--shrink"});
  ASSERT_EQ(cut.exit_code, 0) << cut.err;
  EXPECT_EQ(json::parse(cut.out)["size_bytes"], 1u << 20);
  EXPECT_EQ(Ctl({"resize", "img", "+1M", "--shrink"}).exit_code, 2);
  EXPECT_EQ(Ctl({"resize", "img", "+0"}).exit_code, 2);
  EXPECT_EQ(Ctl({"resize", "img", "2M", "--shrink", "--fs"}).exit_code, 2);
}

TEST_F(ApiTest, DisableThenRemoveDisabled) {
  ASSERT_EQ(Ctl({"create", "old", "1M"}).exit_code, 0);
  ASSERT_EQ(Ctl({"disable", "old"}).exit_code, 0);
  auto info = Ctl({"--json", "info", "old"});
  EXPECT_EQ(json::parse(info.out)["disabled"], true);
  auto removed = Ctl({"--json", "remove-disabled"});
  ASSERT_EQ(removed.exit_code, 0) << removed.err;
  EXPECT_EQ(json::parse(removed.out)["removed"][0], "old");
  EXPECT_EQ(Ctl({"info", "old"}).exit_code, 5);
}

TEST_F(ApiTest, ValidateReportsEveryImage) {
  ASSERT_EQ(Ctl({"create", "v1", "1M"}).exit_code, 0);
  ASSERT_EQ(Ctl({"create", "v2", "1M"}).exit_code, 0);
  auto r = Ctl({"--json", "validate"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto results = json::parse(r.out);
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0]["ok"], true);
}

// `imagectl watch` running in the background, its stdout in a file.
class WatchProcess {
 public:
  WatchProcess(std::vector<std::string> argv, std::string out_path) : out_(std::move(out_path)) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  ~WatchProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  std::vector<std::string> Lines() const {
    std::ifstream in(out_);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }
  // The lines once `done` says they are complete, or what there is after 20 s.
  std::vector<std::string> WaitFor(
      const std::function<bool(const std::vector<std::string>&)>& done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    auto lines = Lines();
    while (!done(lines) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      lines = Lines();
    }
    return lines;
  }
  // The exit code once it ends by itself, or -1 if it has not after `wait`.
  int WaitExit(std::chrono::milliseconds wait) {
    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

 private:
  std::string out_;
  pid_t pid_ = -1;
};

// The JSON events of a watch; `changes` keeps the image changes, `ended` the operations' ends.
struct WatchLog {
  std::vector<json> events, changes, ended;
  explicit WatchLog(const std::vector<std::string>& lines) {
    for (const auto& line : lines) {
      events.push_back(json::parse(line));
      const std::string kind = events.back()["event"];
      if (kind == "ended") {
        ended.push_back(events.back());
      } else if (kind != "snapshot" && kind != "progress") {
        changes.push_back(events.back());
      }
    }
  }
  std::vector<std::string> ChangeLines() const {
    std::vector<std::string> out;
    for (const auto& c : changes) {
      out.push_back(c["event"].get<std::string>() + " " + c["name"].get<std::string>() + " " +
                    c["operation"].get<std::string>());
    }
    return out;
  }
};

// A scripted sequence of every kind of change: the watch shows the images first, then exactly
// one event per change in the order made (each with the image as it is after it), the end of
// every long operation (failed ones with the error), and nothing for what changed nothing.
TEST_F(ApiTest, WatchShowsTheSnapshotThenEveryChangeInOrder) {
  ASSERT_EQ(Ctl({"create", "before", "1M"}).exit_code, 0);
  const std::string source = (dir_.path() / "content.raw").string();
  {
    std::ofstream out(source, std::ios::binary);
    out << std::string(2 << 20, 'w');
  }
  WatchProcess all({IMAGECTL_BIN, "--socket", socket_, "--json", "watch"},
                   (dir_.path() / "watch-all.jsonl").string());
  WatchProcess only_b({IMAGECTL_BIN, "--socket", socket_, "--json", "watch", "b"},
                      (dir_.path() / "watch-b.jsonl").string());
  auto has_snapshot = [](const std::vector<std::string>& lines) { return !lines.empty(); };
  const auto first = all.WaitFor(has_snapshot);
  ASSERT_FALSE(first.empty()) << "no snapshot";
  const json snapshot = json::parse(first[0]);
  EXPECT_EQ(snapshot["event"], "snapshot");
  ASSERT_EQ(snapshot["images"].size(), 1u);
  EXPECT_EQ(snapshot["images"][0]["name"], "before");
  ASSERT_FALSE(only_b.WaitFor(has_snapshot).empty());

  auto run = [&](std::vector<std::string> args, int expected_exit = 0) {
    auto r = Ctl(args);
    EXPECT_EQ(r.exit_code, expected_exit) << args[0] << ": " << r.err;
  };
  run({"create", "a", "4M"});
  run({"create", "a", "4M"}, 1);  // exists: ends failed, changes nothing
  run({"resize", "a", "8M"});
  run({"resize", "a", "8M"});  // the size it has: no change
  run({"map", "a"});
  run({"unmap", "a"});
  run({"disable", "before"});
  run({"remove-disabled"});
  run({"import", source, "b"});
  run({"import", "--into-existing", source, "b"});
  run({"zero-fill", "b"});
  run({"delete", "a"});
  run({"delete", "b"});
  run({"delete", "b"}, 5);  // no such image: nothing

  const std::vector<std::string> expected = {
      "created a create", "resized a resize",        "mapped a map",
      "unmapped a unmap", "disabled before disable", "deleted before remove-disabled",
      "created b import", "imported b import",       "zero-filled b zero-fill",
      "deleted a delete", "deleted b delete"};
  auto log = WatchLog(all.WaitFor([&](const std::vector<std::string>& lines) {
    return WatchLog(lines).changes.size() >= expected.size();
  }));
  EXPECT_EQ(log.ChangeLines(), expected);
  ASSERT_EQ(log.changes.size(), expected.size());
  EXPECT_EQ(log.changes[1]["image"]["size_bytes"], 8u << 20);
  EXPECT_NE(log.changes[2]["image"]["mapped_device"], "");
  EXPECT_EQ(log.changes[3]["image"]["mapped_device"], "");
  EXPECT_TRUE(log.changes[4]["image"]["disabled"]);
  EXPECT_FALSE(log.changes[9].contains("image"));  // deleted: nothing left to show
  for (size_t i = 1; i < log.events.size(); ++i) {
    EXPECT_GT(log.events[i]["sequence"], log.events[i - 1]["sequence"]) << i;
  }
  // Long operations: create twice (once failed), resize twice, import twice, zero-fill.
  std::vector<std::string> ends;
  for (const auto& e : log.ended) {
    ends.push_back(e["operation"].get<std::string>() + " " + e["name"].get<std::string>() +
                   (e["ok"].get<bool>() ? " ok" : " failed"));
  }
  EXPECT_EQ(ends, (std::vector<std::string>{"create a ok", "create a failed", "resize a ok",
                                            "resize a ok", "import b ok", "import b ok",
                                            "zero-fill b ok"}));
  EXPECT_NE(log.ended[1]["error"].get<std::string>().find("exists"), std::string::npos);

  auto b_log = WatchLog(only_b.WaitFor(
      [](const std::vector<std::string>& lines) { return WatchLog(lines).changes.size() >= 4; }));
  EXPECT_EQ(b_log.ChangeLines(),
            (std::vector<std::string>{"created b import", "imported b import",
                                      "zero-filled b zero-fill", "deleted b delete"}));
  EXPECT_TRUE(b_log.events[0]["images"].empty());

  // A stopping daemon ends its watches at once, not after the shutdown's 5 s grace period.
  const auto stopping = std::chrono::steady_clock::now();
  daemon_->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - stopping, std::chrono::seconds(3));
  EXPECT_EQ(all.WaitExit(std::chrono::seconds(3)), 3);
}

TEST_F(ApiTest, WatchPrintsReadableLines) {
  WatchProcess watch({IMAGECTL_BIN, "--socket", socket_, "watch"},
                     (dir_.path() / "watch.txt").string());
  ASSERT_FALSE(watch.WaitFor([](const auto& lines) { return !lines.empty(); }).empty());
  ASSERT_EQ(Ctl({"create", "shown", "3M"}).exit_code, 0);
  auto lines = watch.WaitFor([](const auto& seen) { return seen.size() >= 3; });
  ASSERT_GE(lines.size(), 3u);
  EXPECT_NE(lines[0].find("snapshot: 0 image(s)"), std::string::npos) << lines[0];
  std::string all;
  for (const auto& line : lines) all += line + "\n";
  EXPECT_NE(all.find(" created shown 3.0 MiB (create)"), std::string::npos) << all;
  EXPECT_NE(all.find(" ended create shown: ok"), std::string::npos) << all;
  EXPECT_EQ(Ctl({"watch", "bad/name"}).exit_code, 1);

  // Blocks moved behind the daemon's back (the old ones kept allocated, so the new file gets
  // others): validate and map both find it, and the watch says so with the problem.
  const std::string piece = data_ + "/shown.img.0000";
  ASSERT_EQ(rename(piece.c_str(), (data_ + "/held").c_str()), 0);
  {
    std::ofstream out(piece, std::ios::binary);
    out << std::string(3 << 20, '\0');
  }
  sync();
  EXPECT_EQ(Ctl({"validate"}).exit_code, 1);
  EXPECT_EQ(Ctl({"map", "shown"}).exit_code, 1);
  lines = watch.WaitFor([](const auto& seen) {
    return std::count_if(seen.begin(), seen.end(), [](const std::string& line) {
             return line.find(" corrupt shown") != std::string::npos;
           }) >= 2;
  });
  all.clear();
  for (const auto& line : lines) all += line + "\n";
  EXPECT_NE(all.find(" corrupt shown 3.0 MiB (validate): "), std::string::npos) << all;
  EXPECT_NE(all.find(" corrupt shown 3.0 MiB (map): "), std::string::npos) << all;
  EXPECT_NE(all.find("changed since creation"), std::string::npos) << all;
}

// The value of the sample `series` (name and labels as rendered) in Prometheus text, or -1.
double SampleValue(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(series + " ")) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

// Every line of the text format is a comment or `name{labels} value`.
void ExpectWellFormed(const std::string& text) {
  const std::regex sample(R"(^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? (-?[0-9.e+]+|\+Inf)$)");
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
  }
}

// A scripted sequence, then the counters and gauges say exactly what happened, in imagectl
// stats and in the textfile node_exporter reads.
TEST_F(ApiTest, MetricsCountTheScriptedOperationsExactly) {
  const std::string textfile = (dir_.path() / "imaged.prom").string();
  StartDaemon(
      {"--metrics-textfile", textfile, "--min-free-percent", "0", "--min-free-bytes", "1M"});
  ASSERT_EQ(Ctl({"create", "m1", "2M"}).exit_code, 0);
  ASSERT_EQ(Ctl({"create", "m2", "3M"}).exit_code, 0);
  ASSERT_EQ(Ctl({"create", "m1", "2M"}).exit_code, 1);
  ASSERT_EQ(Ctl({"map", "m2"}).exit_code, 0);
  ASSERT_EQ(Ctl({"info", "nope"}).exit_code, 5);

  auto stats = Ctl({"stats"});
  ASSERT_EQ(stats.exit_code, 0) << stats.err;
  ExpectWellFormed(stats.out);
  const std::string& t = stats.out;
  EXPECT_EQ(SampleValue(t, R"(imaged_rpcs_total{method="CreateImage",code="OK"})"), 2);
  EXPECT_EQ(SampleValue(t, R"(imaged_rpcs_total{method="CreateImage",code="ALREADY_EXISTS"})"), 1);
  EXPECT_EQ(SampleValue(t, R"(imaged_rpcs_total{method="MapImage",code="OK"})"), 1);
  EXPECT_EQ(SampleValue(t, R"(imaged_rpcs_total{method="GetImage",code="NOT_FOUND"})"), 1);
  EXPECT_EQ(SampleValue(t, R"(imaged_rpcs_total{method="DeleteImage",code="OK"})"), -1);
  EXPECT_EQ(SampleValue(t, R"(imaged_rpc_duration_seconds_count{method="CreateImage"})"), 3);
  EXPECT_EQ(SampleValue(t, R"(imaged_rpc_duration_seconds_bucket{method="CreateImage",le="+Inf"})"),
            3);
  EXPECT_EQ(SampleValue(t, R"(imaged_image_changes_total{kind="created"})"), 2);
  EXPECT_EQ(SampleValue(t, R"(imaged_image_changes_total{kind="mapped"})"), 1);
  EXPECT_EQ(SampleValue(t, R"(imaged_images{state="all"})"), 2);
  EXPECT_EQ(SampleValue(t, R"(imaged_images{state="mapped"})"), 1);
  EXPECT_EQ(SampleValue(t, "imaged_image_bytes"), 5 << 20);
  EXPECT_EQ(SampleValue(t, R"(imaged_data_fs_bytes{kind="reserve"})"), 1 << 20);
  EXPECT_GT(SampleValue(t, R"(imaged_data_fs_bytes{kind="free"})"), 0);
  EXPECT_EQ(Ctl({"--json", "stats"}).exit_code, 2);

  // The textfile catches up within its debounce; it is never seen half-written.
  std::string file;
  for (int i = 0; i < 100; ++i) {
    std::ifstream in(textfile);
    file.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (SampleValue(file, R"(imaged_rpcs_total{method="GetMetrics",code="OK"})") == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ExpectWellFormed(file);
  EXPECT_EQ(SampleValue(file, R"(imaged_rpcs_total{method="GetMetrics",code="OK"})"), 1);
  EXPECT_EQ(SampleValue(file, R"(imaged_rpcs_total{method="CreateImage",code="OK"})"), 2);
  EXPECT_EQ(SampleValue(file, R"(imaged_images{state="mapped"})"), 1);
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
    EXPECT_EQ(entry.path().filename().string().find(".imaged-tmp."), std::string::npos);
  }
  EXPECT_EQ(Ctl({"unmap", "m2"}).exit_code, 0);
}

TEST_F(ApiTest, AMetricsTextfileNotEndingInPromStopsTheDaemon) {
  auto r =
      RunCommand({IMAGED_BIN, "--socket", socket_ + ".2", "--data-dir", data_, "--metadata-dir",
                  metadata_ + ".2", "--metrics-textfile", (dir_.path() / "metrics.txt").string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("must end in .prom"), std::string::npos) << r.err;
}

TEST_F(ApiTest, PythonClientFromTheSameProto) {
  if (RunCommand({kPython, "-c", "import grpc, grpc_tools"}).exit_code != 0) {
    GTEST_SKIP() << "python3-grpcio / python3-grpc-tools not installed";
  }
  ASSERT_EQ(Ctl({"create", "py", "1M"}).exit_code, 0);
  std::string gen = (dir_.path() / "py").string();
  std::filesystem::create_directories(gen);
  auto protoc = RunCommand({kPython, "-m", "grpc_tools.protoc", "-I", PROTO_DIR,
                            "--python_out=" + gen, "--grpc_python_out=" + gen,
                            std::string(PROTO_DIR) + "/imaged.proto"});
  ASSERT_EQ(protoc.exit_code, 0) << protoc.err;
  std::string script = R"(
import sys, grpc
sys.path.insert(0, sys.argv[1])
import imaged_pb2, imaged_pb2_grpc
stub = imaged_pb2_grpc.ImagedStub(grpc.insecure_channel('unix:' + sys.argv[2]))
print('version', stub.Version(imaged_pb2.VersionRequest()).api_version)
for image in stub.ListImages(imaged_pb2.ListImagesRequest()).images:
    print('image', image.name, image.size_bytes)
try:
    stub.GetImage(imaged_pb2.ImageRequest(name=b'missing'))
except grpc.RpcError as e:
    print('error', e.code().name, dict(e.trailing_metadata()).get('imaged-errno'))
)";
  auto r = RunCommand({kPython, "-c", script, gen, socket_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("version 2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("image py 1048576"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("error NOT_FOUND 2"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace imaged::test
