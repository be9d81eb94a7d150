// Loop devices over image files: a free loop from /dev/loop-control, configured in one
// LOOP_CONFIGURE (Linux 5.8+; LOOP_SET_FD + LOOP_SET_STATUS64 + block size + direct I/O on older
// kernels). LoopDevice detaches in its destructor unless release()d. Only loops this process
// attached (or one named explicitly) are ever touched.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"

namespace imaged::dm {

struct LoopOptions {
  bool read_only = false;
  // O_DIRECT from the loop to the file: no second copy of the data in the page cache. If the
  // file's filesystem cannot do direct I/O (tmpfs, some FUSE), Attach fails with EINVAL unless
  // allow_buffered is set, in which case the loop runs buffered and direct_io() says so.
  bool direct_io = true;
  bool allow_buffered = false;
  // Logical block size of the loop. 0 = the logical block size of the disk under the file
  // (st_dev -> /sys/dev/block/MAJ:MIN/queue/logical_block_size; 512 when there is no disk).
  // Direct I/O needs it to be at least the disk's.
  uint32_t block_size = 0;
  // Exact device size in bytes (lo_sizelimit), e.g. the image size when the file is longer.
  // 0 = the file size from `offset` on.
  uint64_t size_limit = 0;
  uint64_t offset = 0;  // bytes into the file
  // LO_FLAGS_AUTOCLEAR: the kernel detaches the loop at its last close. LoopDevice keeps the
  // loop open until release()/destruction, so e.g. a dm table over a released autoclear loop
  // holds it, and removing the dm device detaches it.
  bool autoclear = false;
  // Turn discard off (queue/discard_max_bytes = 0) before Attach returns: a discard through a
  // loop punches a hole in the backing file. LOOP_CONFIGURE has no flag for it. Attach fails if
  // the attribute cannot be written.
  bool no_discard = false;
  // Called with "/dev/loopN" once LOOP_CTL_GET_FREE picked N and before LOOP_CONFIGURE binds it,
  // so a caller can record the device before it exists (crash safety). If another process takes
  // N first, it is called again with the next free loop: the last call names the loop Attach
  // returns. An error from it aborts Attach (nothing is attached).
  std::function<Result<void>(const std::string& loop_path)> before_configure = nullptr;
};

class LoopDevice {
 public:
  // Binds a free loop to the open file `file_fd` (not owned; the loop keeps its own reference).
  // `backing_file` is what the kernel records as the loop's backing file, and names it in errors.
  static Result<LoopDevice> Attach(int file_fd, const std::string& backing_file,
                                   const LoopOptions& options);
  // The same for the file at `backing_file`, opened without following a symlink.
  static Result<LoopDevice> Attach(const std::string& backing_file, const LoopOptions& options);

  LoopDevice(LoopDevice&& other) noexcept;
  LoopDevice& operator=(LoopDevice&& other) noexcept;
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  ~LoopDevice();  // detaches (errors ignored) unless released or detached

  const std::string& path() const { return path_; }  // /dev/loopN; empty once detached/released
  dev_t dev() const { return dev_; }
  bool direct_io() const { return direct_io_; }  // direct I/O is actually on
  uint32_t block_size() const { return block_size_; }

  Result<void> Detach();
  // Gives up ownership: the loop stays attached (with autoclear: until its last user closes
  // it). Returns its path.
  std::string release();

  // Changes the size of the attached loop at `loop_path` in place (same node, same dev_t; the
  // kernel sends a change event): `size_limit` bytes exactly, or with 0 the backing file's size
  // now (after the file grew). EINVAL if the file is shorter than `size_limit` (nothing changes)
  // or the path is not a loop device.
  static Result<void> Resize(const std::string& loop_path, uint64_t size_limit);
  // The loop's size in bytes (BLKGETSIZE64).
  static Result<uint64_t> SizeOf(const std::string& loop_path);

  // Detaches the loop at `loop_path` (teardown from a status file). EINVAL if the path is not a
  // loop device; success if it is already detached.
  static Result<void> DetachPath(const std::string& loop_path);
  // Loops whose backing file is `file` (same device and inode; a symlink matches nothing),
  // e.g. {"/dev/loop3"}.
  static Result<std::vector<std::string>> FindByBackingFile(const std::string& file);
  // The backing file of an attached loop, as the kernel recorded its path.
  static Result<std::string> BackingFile(const std::string& loop_path);

 private:
  LoopDevice(UniqueFd fd, std::string path, dev_t dev, bool direct_io, uint32_t block_size)
      : fd_(std::move(fd)),
        path_(std::move(path)),
        dev_(dev),
        direct_io_(direct_io),
        block_size_(block_size) {}

  // After LOOP_CONFIGURE: the device is what `options` asked for (direct I/O, block size,
  // discard off, exact size).
  Result<void> CheckConfigured(const LoopOptions& options);

  UniqueFd fd_;  // the loop, open O_RDWR (O_RDONLY when read-only)
  std::string path_;
  dev_t dev_ = 0;
  bool direct_io_ = false;
  uint32_t block_size_ = 0;
};

}  // namespace imaged::dm
