// Test support for device-mapper stacks (vm label; link imaged_dm, which brings libdevmapper): a
// loop over a sparse file, a dm device, a mount, each undone on destruction even when an assertion
// failed; and DmBackedFs, an ext4 on a dm-linear device over such a loop (the dm-linear strategy's
// case). Constructors throw on failure, which gtest reports as a test failure; what was built by
// then is torn down.
//
//   SparseLoop disk(dir / "disk.img", 64 << 20);
//   dm::Table t;
//   t.Emplace<dm::LinearTarget>(0, disk.sectors(), disk.dm_device(), 0);
//   ScopedDm linear("my-test-" + std::to_string(getpid()), t);
//   ... mkfs linear.path() ...
//   ScopedMount mnt(linear.path(), dir / "mnt");
#pragma once

#include <libdevmapper.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "dm/device_mapper.h"
#include "dm/loop_device.h"
#include "dm/table.h"
#include "process.h"

namespace imaged::test {

// A sparse file of `bytes` and a loop over it (buffered: the guest's files cannot do direct
// I/O); the loop is detached on destruction, the file stays for the caller's temp dir.
class SparseLoop {
 public:
  SparseLoop(const std::filesystem::path& file, uint64_t bytes)
      : file_(file.string()), bytes_(bytes) {
    { std::ofstream(file_, std::ios::binary | std::ios::trunc).close(); }
    std::filesystem::resize_file(file_, bytes);
    dm::LoopOptions lo;
    lo.direct_io = false;
    lo.allow_buffered = true;
    auto loop = dm::LoopDevice::Attach(file_, lo);
    if (!loop) throw std::runtime_error(loop.error().ToString());
    loop_.emplace(std::move(*loop));
  }

  const std::string& file() const { return file_; }
  const std::string& path() const { return loop_->path(); }  // /dev/loopN
  uint64_t sectors() const { return bytes_ / 512; }
  // "major:minor", as dm tables take devices.
  std::string dm_device() const { return dm::DeviceMapper::DeviceString(loop_->dev()); }

 private:
  std::string file_;
  uint64_t bytes_;
  std::optional<dm::LoopDevice> loop_;
};

// A dm device made from `table`; removed on destruction (retried while briefly busy).
class ScopedDm {
 public:
  ScopedDm(std::string name, const dm::Table& table) : name_(std::move(name)) {
    auto dev = mapper_.Create(name_, table, {});
    if (!dev) throw std::runtime_error("dm create " + name_ + ": " + dev.error().ToString());
    path_ = *dev;
  }
  ~ScopedDm() { (void)Remove(); }
  ScopedDm(const ScopedDm&) = delete;
  ScopedDm& operator=(const ScopedDm&) = delete;

  const std::string& name() const { return name_; }
  const std::string& path() const { return path_; }  // /dev/mapper/<name>
  std::string dm_device() const {
    struct stat st {};
    if (stat(path_.c_str(), &st) != 0) throw std::runtime_error("stat " + path_);
    return dm::DeviceMapper::DeviceString(st.st_rdev);
  }
  // `dmsetup message <name> 0 <words>` (e.g. "mark <label>" to a log-writes device), without
  // starting dmsetup: under UML every process start costs a second or more.
  Result<void> Message(const std::string& words) const {
    dm_task* task = dm_task_create(DM_DEVICE_TARGET_MSG);
    if (task == nullptr) return MakeError(ENOMEM, "dm message {}: dm_task_create", name_);
    const bool ok = dm_task_set_name(task, name_.c_str()) && dm_task_set_sector(task, 0) &&
                    dm_task_set_message(task, words.c_str()) && dm_task_run(task);
    dm_task_destroy(task);
    if (!ok) return MakeError(EIO, "dm message {} \"{}\" failed", name_, words);
    return Ok();
  }
  // Removes it now (e.g. so that a log-writes device writes its last entries); idempotent.
  Result<void> Remove() {
    if (removed_) return Ok();
    dm::RemoveOptions ro;
    ro.ignore_missing = true;
    ro.retries = 20;
    auto r = mapper_.Remove(name_, ro);
    removed_ = r.has_value();
    return r;
  }

 private:
  dm::DeviceMapper mapper_;
  std::string name_, path_;
  bool removed_ = false;
};

// `device` (an ext4 unless told) mounted on `dir`, created if missing; unmounted on destruction
// (lazily if something still holds it).
class ScopedMount {
 public:
  ScopedMount(const std::string& device, const std::filesystem::path& dir,
              const std::string& fs = "ext4", const std::string& options = "")
      : dir_(dir.string()) {
    std::filesystem::create_directories(dir_);
    if (mount(device.c_str(), dir_.c_str(), fs.c_str(), 0,
              options.empty() ? nullptr : options.c_str()) != 0) {
      throw std::runtime_error("mount " + device + " on " + dir_ + ": " + strerror(errno));
    }
    mounted_ = true;
  }
  ~ScopedMount() { Unmount(); }
  ScopedMount(const ScopedMount&) = delete;
  ScopedMount& operator=(const ScopedMount&) = delete;

  const std::string& dir() const { return dir_; }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  void Unmount() {
    if (!mounted_) return;
    if (umount2(dir_.c_str(), 0) != 0) umount2(dir_.c_str(), MNT_DETACH);
    mounted_ = false;
  }

 private:
  std::string dir_;
  bool mounted_ = false;
};

inline void MkfsExt4(const std::string& device, std::vector<std::string> options = {}) {
  std::vector<std::string> argv = {"mkfs.ext4", "-q", "-F"};
  argv.insert(argv.end(), options.begin(), options.end());
  argv.push_back(device);
  auto mk = RunCommand(argv);
  if (mk.exit_code != 0) throw std::runtime_error("mkfs.ext4 " + device + ": " + mk.err);
}

// An ext4 of `size` bytes on a dm-linear device over a loop, so the dm-linear strategy applies
// to the files on it.
class DmBackedFs {
 public:
  explicit DmBackedFs(uint64_t size, const std::string& name = "reliability-crash")
      : disk_(dir_.path() / "disk.img", size),
        linear_(name + "-" + std::to_string(getpid()), LinearOver(disk_)) {
    MkfsExt4(linear_.path());
    mount_.emplace(linear_.path(), dir_.path() / "mnt");
  }
  std::string Path(const std::string& n) const { return mount_->Path(n); }

 private:
  static dm::Table LinearOver(const SparseLoop& disk) {
    dm::Table t;
    t.Emplace<dm::LinearTarget>(0, disk.sectors(), disk.dm_device(), 0);
    return t;
  }
  TempDir dir_;
  SparseLoop disk_;
  ScopedDm linear_;
  std::optional<ScopedMount> mount_;
};

}  // namespace imaged::test
