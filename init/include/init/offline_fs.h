// Read-only view of an unmounted ext2/3/4 data filesystem through libext2fs, used to check that
// the files behind an image still own exactly the blocks lp_metadata records, before those
// blocks are mapped with no filesystem in between (AOSP first-stage init maps them blindly).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "imaged/common/result.h"
#include "metadata/lp_metadata.h"

struct struct_ext2_filsys;

namespace imaged::init {

// A physically contiguous run of a file on the disk.
struct DiskRun {
  uint64_t disk_offset = 0;  // bytes from the start of the disk (filesystem offset included)
  uint64_t length = 0;       // bytes, a multiple of the filesystem block size
  std::string file;          // path inside the filesystem
  uint64_t file_offset = 0;  // bytes into that file
  bool operator==(const DiskRun&) const = default;
};

// Why a filesystem cannot be verified offline. Map uses this to decide between "skip with a
// warning" (verify mode auto) and "refuse" (--verify).
enum class Unverifiable {
  kNone,
  kNotExt,         // no ext2/3/4 superblock: another filesystem, or ciphertext (dm-crypt)
  kMounted,        // the kernel owns its metadata; the on-disk copy may be stale
  kNeedsRecovery,  // the journal holds metadata newer than the on-disk copy
  kUnreadable,     // I/O or corruption errors while opening
};

class OfflineFs {
 public:
  // Opens `disk_path` read-only (no journal replay, nothing is ever written). `fs_offset` is
  // where the filesystem starts on the disk. On failure `why` says which case applies.
  static Result<std::unique_ptr<OfflineFs>> Open(const std::string& disk_path, uint64_t fs_offset,
                                                 Unverifiable* why = nullptr);
  ~OfflineFs();
  OfflineFs(const OfflineFs&) = delete;
  OfflineFs& operator=(const OfflineFs&) = delete;

  uint32_t block_size() const;
  uint64_t fs_offset() const { return fs_offset_; }

  // The file's data blocks as disk runs, in file order, covering [0, size rounded up to a block).
  // Refuses files that are not regular, have holes, unwritten (uninitialized) extents or inline
  // data: none of those can be mapped as the file's content.
  Result<std::vector<DiskRun>> FileRuns(const std::string& path);

  // Reads a whole (small) regular file.
  Result<std::string> ReadFile(const std::string& path, uint64_t max_size = 1 << 20);

  // The runs of image `name` in `dir`: the list file <dir>/<name>.img names the pieces, one
  // basename per line, and their runs are concatenated in that order.
  Result<std::vector<DiskRun>> ImageRuns(const std::string& dir, const std::string& name);

  // Directories at most `max_depth` levels below the root (the root is level 0) that contain a
  // regular file <name>.img, breadth-first. Built once per depth and cached.
  Result<std::vector<std::string>> FindImageDirs(const std::string& name, int max_depth);

 private:
  OfflineFs(struct_ext2_filsys* fs, uint64_t fs_offset) : fs_(fs), fs_offset_(fs_offset) {}
  Result<uint32_t> Lookup(const std::string& path);

  struct_ext2_filsys* fs_;
  uint64_t fs_offset_;
  std::optional<int> indexed_depth_;
  std::map<std::string, std::vector<std::string>> list_files_;  // "<name>.img" -> dirs
};

// Checks that lp_metadata's `extents` (LINEAR, 512-byte sectors on the disk) map exactly the
// files' `runs`: same physical sectors in the same order, and the extents cover the files except
// for at most their last block (padding and liblp's truncation to whole sectors). The error names
// the first mismatch.
Result<void> CompareExtents(const std::vector<metadata::Extent>& extents,
                            const std::vector<DiskRun>& runs, uint32_t block_size);

// Finds image `name` (in `dir` when not empty, else by FindImageDirs) and CompareExtents.
// Returns the directory whose files matched.
Result<std::string> VerifyImage(OfflineFs& fs, const std::string& dir, int max_depth,
                                const std::string& name,
                                const std::vector<metadata::Extent>& extents);

}  // namespace imaged::init
