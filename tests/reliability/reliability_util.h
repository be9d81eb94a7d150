// Shared by the reliability tests: an image set served by the real daemon and driven by the real
// imagectl, and the checks every test ends with (no leaked loops, no stray files, lp_metadata
// consistent, images intact).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bytes.h"
#include "fs_fixture.h"
#include "process.h"

namespace imaged::test {

using nlohmann::json;

inline std::vector<std::string> ListDirNames(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

inline std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Loop devices whose backing file lies under `dir`, as /dev/loopN -> backing file.
inline std::map<std::string, std::string> LoopsUnder(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& name : ListDirNames("/sys/block")) {
    if (name.rfind("loop", 0) != 0) continue;
    std::string backing = ReadFileOrEmpty("/sys/block/" + name + "/loop/backing_file");
    while (!backing.empty() && backing.back() == '\n') backing.pop_back();
    if (backing.rfind(dir + "/", 0) == 0) out["/dev/" + name] = backing;
  }
  return out;
}

// Names of the device-mapper devices that exist (none on a host without device-mapper).
inline std::vector<std::string> DmNames() {
  std::vector<std::string> out;
  for (const auto& name : ListDirNames("/sys/block")) {
    if (name.rfind("dm-", 0) != 0) continue;
    std::string n = ReadFileOrEmpty("/sys/block/" + name + "/dm/name");
    while (!n.empty() && n.back() == '\n') n.pop_back();
    out.push_back(n);
  }
  return out;
}

// FNV-1a 64 over the first `size` bytes of an image, read through its list file's pieces.
inline std::optional<uint64_t> ImageHash(const std::string& data_dir, const std::string& name,
                                         uint64_t size) {
  std::ifstream list(data_dir + "/" + name + ".img");
  if (!list) return std::nullopt;
  uint64_t h = 1469598103934665603ull;
  uint64_t left = size;
  std::string piece;
  std::vector<char> buf(1 << 16);
  while (left > 0 && std::getline(list, piece)) {
    std::ifstream in(data_dir + "/" + piece, std::ios::binary);
    if (!in) return std::nullopt;
    while (left > 0 && in) {
      in.read(buf.data(), static_cast<std::streamsize>(std::min<uint64_t>(buf.size(), left)));
      const auto n = static_cast<uint64_t>(in.gcount());
      for (uint64_t i = 0; i < n; ++i) {
        h ^= static_cast<uint8_t>(buf[i]);
        h *= 1099511628211ull;
      }
      left -= n;
    }
  }
  if (left != 0) return std::nullopt;
  return h;
}

// The whole content of an image's pieces, in list order.
inline std::string ImageBytes(const std::string& data_dir, const std::string& name) {
  std::ifstream list(data_dir + "/" + name + ".img");
  std::string piece, out;
  while (std::getline(list, piece)) out += ReadFileOrEmpty(data_dir + "/" + piece);
  return out;
}

inline uint64_t BytesHash(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (char c : bytes) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ull;
  }
  return h;
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// One image set (data dir on a LoopFilesystem, metadata dir beside it) served by the real daemon.
class DaemonSet {
 public:
  DaemonSet(std::string data_dir, std::string metadata_dir, std::filesystem::path work,
            std::vector<std::string> daemon_args = {})
      : data_(std::move(data_dir)),
        metadata_(std::move(metadata_dir)),
        work_(std::move(work)),
        socket_((work_ / "imaged.sock").string()),
        args_(std::move(daemon_args)) {
    std::filesystem::create_directories(work_);
  }
  ~DaemonSet() { Stop(); }

  // Starts the daemon with extra environment entries ("NAME=value"), run under `prefix` (e.g.
  // prlimit) when given; true when it is ready.
  bool Start(const std::vector<std::string>& env = {},
             const std::vector<std::string>& prefix = {}) {
    daemon_.reset();
    std::vector<std::string> argv = {IMAGED_BIN, "--socket",       socket_,  "--data-dir",
                                     data_,      "--metadata-dir", metadata_};
    argv.insert(argv.end(), args_.begin(), args_.end());
    if (!env.empty()) {
      // DaemonProcess passes our environment on; prefix with env(1) for the extra entries.
      std::vector<std::string> with_env = {"/usr/bin/env"};
      with_env.insert(with_env.end(), env.begin(), env.end());
      with_env.insert(with_env.end(), argv.begin(), argv.end());
      argv = std::move(with_env);
    }
    argv.insert(argv.begin(), prefix.begin(), prefix.end());
    daemon_ = std::make_unique<DaemonProcess>(argv, work_);
    return daemon_->ready();
  }
  void Stop() { daemon_.reset(); }
  DaemonProcess* daemon() { return daemon_.get(); }

  CommandResult Ctl(std::vector<std::string> args) const {
    std::vector<std::string> argv = {IMAGECTL_BIN, "--socket", socket_};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv);
  }
  std::optional<json> CtlJson(std::vector<std::string> args) const {
    args.insert(args.begin(), "--json");
    auto r = Ctl(args);
    if (r.exit_code != 0) return std::nullopt;
    try {
      return json::parse(r.out);
    } catch (...) {
      return std::nullopt;
    }
  }

  const std::string& data_dir() const { return data_; }
  const std::string& metadata_dir() const { return metadata_; }
  const std::string& socket() const { return socket_; }

 private:
  std::string data_, metadata_;
  std::filesystem::path work_;
  std::string socket_;
  std::vector<std::string> args_;
  std::unique_ptr<DaemonProcess> daemon_;
};

struct ImageState {
  uint64_t size = 0;
  std::string mapped_device;
};

// Checks that the kernel and the set's directories hold only what `images` (as the set lists
// them) explain: no loop over our files that no mapped image owns, no dm device named like ours
// (`dm_prefix`) that no mapped image owns, no file in the data/metadata dir that no image
// explains. Adds gtest failures with `context`.
inline void ExpectOnlyListedImages(const std::map<std::string, ImageState>& images,
                                   const std::string& data_dir, const std::string& metadata_dir,
                                   const std::string& context,
                                   const std::string& dm_prefix = "imaged-") {
  // A mapped device is exactly the image lp_metadata records (an online grow is never half
  // done).
  for (const auto& [name, st] : images) {
    if (st.mapped_device.empty()) continue;
    const int dev = open(st.mapped_device.c_str(), O_RDONLY | O_CLOEXEC);
    uint64_t bytes = 0;
    EXPECT_TRUE(dev >= 0 && ioctl(dev, BLKGETSIZE64, &bytes) == 0) << context << ": "
                                                                   << st.mapped_device;
    if (dev >= 0) close(dev);
    EXPECT_EQ(bytes, st.size) << context << ": " << name << " is mapped at "
                              << st.mapped_device << " of another size";
  }
  // Loops: only over pieces of mapped images (one per piece under the loop strategy).
  std::set<std::string> mapped_pieces;
  std::set<std::string> mapped_dm;
  for (const auto& [name, st] : images) {
    if (st.mapped_device.empty()) continue;
    if (st.mapped_device.rfind("/dev/mapper/", 0) == 0)
      mapped_dm.insert(st.mapped_device.substr(12));
    std::ifstream listf(data_dir + "/" + name + ".img");
    std::string piece;
    while (std::getline(listf, piece)) mapped_pieces.insert(data_dir + "/" + piece);
  }
  std::map<std::string, int> loops_per_piece;
  for (const auto& [loop, backing] : LoopsUnder(data_dir)) {
    EXPECT_TRUE(mapped_pieces.count(backing))
        << context << ": leaked " << loop << " over " << backing;
    EXPECT_EQ(++loops_per_piece[backing], 1) << context << ": a second loop over " << backing;
  }
  // dm devices named like ours: only those of mapped images.
  for (const auto& dm : DmNames()) {
    if (dm.rfind(dm_prefix, 0) != 0) continue;
    EXPECT_TRUE(mapped_dm.count(dm)) << context << ": leaked dm device " << dm;
  }
  // Data dir: list file + listed pieces of each image, nothing else.
  std::set<std::string> expected;
  for (const auto& [name, st] : images) {
    expected.insert(name + ".img");
    std::ifstream listf(data_dir + "/" + name + ".img");
    std::string piece;
    while (std::getline(listf, piece)) expected.insert(piece);
  }
  for (const auto& f : ListDirNames(data_dir)) {
    if (f == "lost+found") continue;
    EXPECT_TRUE(expected.count(f)) << context << ": stray file in data dir: " << f;
  }
  // Lock dir: the set's own locks and those of images that exist (recovery removes the rest).
  for (const auto& f : ListDirNames(metadata_dir + "/.locks")) {
    if (f == ".daemon" || f == ".set" || f == ".lp_metadata" || images.count(f)) continue;
    ADD_FAILURE() << context << ": lock file of no image: .locks/" << f;
  }
  // Metadata dir: lp_metadata, the lock dir, status files of mapped images only.
  for (const auto& f : ListDirNames(metadata_dir)) {
    if (f == "lp_metadata" || f == "lp_metadata.prev" || f == ".locks") continue;
    if (f.ends_with(".status")) {
      const std::string name = f.substr(0, f.size() - 7);
      EXPECT_TRUE(images.count(name) && !images.at(name).mapped_device.empty())
          << context << ": status file of an unmapped image: " << f;
      continue;
    }
    ADD_FAILURE() << context << ": stray file in metadata dir: " << f;
  }
}

// Checks, through a running daemon, that the set is consistent: validate all ok, and nothing
// but its listed images in the kernel and its directories (ExpectOnlyListedImages).
// Returns the images (name -> state) for further checks; adds gtest failures with `context`.
inline std::map<std::string, ImageState> ExpectConsistent(
    const DaemonSet& set, const std::string& context, const std::string& dm_prefix = "imaged-") {
  std::map<std::string, ImageState> images;
  auto list = set.CtlJson({"list"});
  EXPECT_TRUE(list.has_value()) << context << ": list failed";
  if (!list) return images;
  for (const auto& i : *list) {
    images[i["name"].get<std::string>()] = {i["size_bytes"].get<uint64_t>(),
                                            i["mapped_device"].get<std::string>()};
  }
  auto validate = set.CtlJson({"validate"});
  EXPECT_TRUE(validate.has_value()) << context << ": validate failed";
  if (validate) {
    EXPECT_EQ(validate->size(), images.size()) << context;
    for (const auto& v : *validate) {
      EXPECT_TRUE(v["ok"].get<bool>()) << context << ": " << v["name"] << ": " << v["problem"];
    }
  }
  ExpectOnlyListedImages(images, set.data_dir(), set.metadata_dir(), context, dm_prefix);
  return images;
}

}  // namespace imaged::test
