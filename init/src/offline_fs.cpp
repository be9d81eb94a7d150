#include "init/offline_fs.h"

// com_err.h has no C++ linkage guard.
extern "C" {
#include <et/com_err.h>
}
#include <ext2fs/ext2fs.h>

#include <algorithm>
#include <deque>
#include <limits>
#include <mutex>

#include "fiemap/list_file.h"
#include "imageset/names.h"
#include "imaged/common/size.h"

namespace imaged::init {
namespace {

// libext2fs reports errno values as themselves and its own codes from a com_err table; those
// get the errno that says what kind of failure it is, and keep libext2fs's text.
int ErrnoForExt2(errcode_t code) {
  switch (code) {
    case EXT2_ET_FILE_NOT_FOUND:
      return ENOENT;
    case EXT2_ET_NO_MEMORY:
      return ENOMEM;
    case EXT2_ET_UNSUPP_FEATURE:
    case EXT2_ET_RO_UNSUPP_FEATURE:
      return EOPNOTSUPP;
    case EXT2_ET_SHORT_READ:
    case EXT2_ET_SHORT_WRITE:
      return EIO;
    default:
      // Bad magic, checksums, corrupt trees and the like: the filesystem is not what it claims.
      return EUCLEAN;
  }
}

Error Ext2Error(errcode_t code, std::string context) {
  if (code > 0 && code < 4096) return Error{static_cast<int>(code), std::move(context)};
  return Error{ErrnoForExt2(code), fmt::format("{}: {}", context, error_message(code))};
}

// A file that cannot be the image's content as recorded.
template <typename... Args>
Error NotOwned(fmt::format_string<Args...> format, Args&&... args) {
  return MakeError(EUCLEAN, format, std::forward<Args>(args)...).As(ErrorKind::kExtentsChanged);
}

void RegisterErrorTable() {
  static std::once_flag once;
  std::call_once(once, [] { initialize_ext2_error_table(); });
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir == "/") return "/" + name;
  return dir + "/" + name;
}

std::string NormalizeDir(std::string dir) {
  if (dir.empty() || dir[0] != '/') dir.insert(dir.begin(), '/');
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

struct BlockWalk {
  uint64_t next_lblk = 0;
  uint64_t nblocks = 0;
  std::vector<std::pair<uint64_t, uint64_t>> runs;  // (physical block, count) in file order
  std::string error;

  // Appends logical block range [lblk, lblk+count) at physical pblk; false on a hole.
  bool Add(uint64_t lblk, uint64_t pblk, uint64_t count) {
    if (lblk >= nblocks) return true;  // preallocated beyond EOF: not part of the file's data
    count = std::min(count, nblocks - lblk);
    if (lblk != next_lblk) {
      error = fmt::format("hole at file block {}", next_lblk);
      return false;
    }
    if (!runs.empty() && runs.back().first + runs.back().second == pblk) {
      runs.back().second += count;
    } else {
      runs.emplace_back(pblk, count);
    }
    next_lblk += count;
    return true;
  }
};

int BlockIterateCallback(ext2_filsys, blk64_t* blocknr, e2_blkcnt_t blockcnt, blk64_t, int,
                         void* priv) {
  auto* walk = static_cast<BlockWalk*>(priv);
  if (blockcnt < 0) return 0;
  if (!walk->Add(static_cast<uint64_t>(blockcnt), *blocknr, 1)) return BLOCK_ABORT;
  return 0;
}

}  // namespace

Result<std::unique_ptr<OfflineFs>> OfflineFs::Open(const std::string& disk_path, uint64_t fs_offset,
                                                   Unverifiable* why) {
  RegisterErrorTable();
  Unverifiable dummy;
  if (why == nullptr) why = &dummy;
  *why = Unverifiable::kNone;

  if (fs_offset == 0) {
    int mount_flags = 0;
    char mount_point[256] = {};
    errcode_t err =
        ext2fs_check_mount_point(disk_path.c_str(), &mount_flags, mount_point, sizeof(mount_point));
    if (err == 0 && (mount_flags & EXT2_MF_MOUNTED)) {
      *why = Unverifiable::kMounted;
      return MakeError(EBUSY, "\"{}\" is mounted{}{}", disk_path, mount_point[0] ? " on " : "",
                       mount_point);
    }
  }

  std::string io_options = fs_offset ? fmt::format("offset={}", fs_offset) : std::string();
  ext2_filsys fs = nullptr;
  // Read-only: no EXT2_FLAG_RW, so libext2fs opens O_RDONLY and never replays the journal.
  errcode_t err = ext2fs_open2(disk_path.c_str(), io_options.empty() ? nullptr : io_options.c_str(),
                               EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs);
  if (err != 0) {
    if (err == EXT2_ET_BAD_MAGIC || err == EXT2_ET_SB_CSUM_INVALID ||
        err == EXT2_ET_UNSUPP_FEATURE || err == EXT2_ET_CORRUPT_SUPERBLOCK) {
      *why = Unverifiable::kNotExt;
      return Ext2Error(err, fmt::format("no usable ext2/3/4 filesystem at byte {} of \"{}\" "
                                        "(another filesystem, or encrypted?)",
                                        fs_offset, disk_path));
    }
    *why = Unverifiable::kUnreadable;
    return Ext2Error(err, fmt::format("open ext2/3/4 filesystem on \"{}\"", disk_path));
  }
  std::unique_ptr<OfflineFs> result(new OfflineFs(fs, fs_offset));
  if (ext2fs_has_feature_journal_needs_recovery(fs->super)) {
    // Mounted elsewhere or not cleanly unmounted: the journal may hold newer block maps.
    *why = Unverifiable::kNeedsRecovery;
    return MakeError(EUCLEAN,
                     "filesystem on \"{}\" is in use or was not cleanly unmounted (its journal "
                     "needs recovery), so its on-disk block maps cannot be trusted",
                     disk_path);
  }
  return result;
}

OfflineFs::~OfflineFs() {
  if (fs_) ext2fs_close_free(&fs_);
}

uint32_t OfflineFs::block_size() const {
  return fs_->blocksize;
}

Result<uint32_t> OfflineFs::Lookup(const std::string& path) {
  ext2_ino_t ino = 0;
  errcode_t err = ext2fs_namei(fs_, EXT2_ROOT_INO, EXT2_ROOT_INO, path.c_str(), &ino);
  if (err == EXT2_ET_FILE_NOT_FOUND) return MakeError(ENOENT, "\"{}\"", path);
  if (err != 0) return Ext2Error(err, fmt::format("look up \"{}\"", path));
  return static_cast<uint32_t>(ino);
}

Result<std::vector<DiskRun>> OfflineFs::FileRuns(const std::string& path) {
  ext2_ino_t ino = IMAGED_TRY(Lookup(path));
  ext2_inode inode{};
  if (errcode_t err = ext2fs_read_inode(fs_, ino, &inode)) {
    return Ext2Error(err, fmt::format("read inode {} of \"{}\"", ino, path));
  }
  if (!LINUX_S_ISREG(inode.i_mode)) return NotOwned("\"{}\" is not a regular file", path);
  if (inode.i_flags & EXT4_INLINE_DATA_FL) {
    return NotOwned("\"{}\" keeps its data inline in the inode (no blocks)", path);
  }
  const uint64_t bs = fs_->blocksize;
  const uint64_t size = EXT2_I_SIZE(&inode);
  BlockWalk walk;
  walk.nblocks = (size + bs - 1) / bs;

  if (inode.i_flags & EXT4_EXTENTS_FL) {
    ext2_extent_handle_t handle = nullptr;
    if (errcode_t err = ext2fs_extent_open2(fs_, ino, &inode, &handle)) {
      return Ext2Error(err, fmt::format("open extent tree of \"{}\"", path));
    }
    std::unique_ptr<std::remove_pointer_t<ext2_extent_handle_t>, void (*)(ext2_extent_handle_t)>
        guard(handle, ext2fs_extent_free);
    ext2fs_extent extent{};
    errcode_t err = ext2fs_extent_get(handle, EXT2_EXTENT_ROOT, &extent);
    while (err == 0) {
      if (extent.e_flags & EXT2_EXTENT_FLAGS_LEAF) {
        if ((extent.e_flags & EXT2_EXTENT_FLAGS_UNINIT) && extent.e_lblk < walk.nblocks) {
          return NotOwned("\"{}\" has an unwritten (uninitialized) extent at file block {}: its "
                           "disk blocks hold stale data, not the file's zeros",
                           path, extent.e_lblk);
        }
        if (!walk.Add(extent.e_lblk, extent.e_pblk, extent.e_len)) {
          return NotOwned("\"{}\" has a {}", path, walk.error);
        }
      }
      err = ext2fs_extent_get(handle, EXT2_EXTENT_NEXT_LEAF, &extent);
    }
    if (err != EXT2_ET_EXTENT_NO_NEXT && err != EXT2_ET_EXTENT_NO_DOWN) {
      return Ext2Error(err, fmt::format("walk extent tree of \"{}\"", path));
    }
  } else {
    errcode_t err = ext2fs_block_iterate3(fs_, ino, BLOCK_FLAG_READ_ONLY | BLOCK_FLAG_DATA_ONLY,
                                          nullptr, BlockIterateCallback, &walk);
    if (!walk.error.empty()) return NotOwned("\"{}\" has a {}", path, walk.error);
    if (err != 0) return Ext2Error(err, fmt::format("walk blocks of \"{}\"", path));
  }
  if (walk.next_lblk != walk.nblocks) {
    return NotOwned("\"{}\" has a hole at file block {}", path, walk.next_lblk);
  }

  std::vector<DiskRun> runs;
  uint64_t file_offset = 0;
  for (const auto& [pblk, count] : walk.runs) {
    runs.push_back(DiskRun{fs_offset_ + pblk * bs, count * bs, path, file_offset});
    file_offset += count * bs;
  }
  return runs;
}

Result<std::string> OfflineFs::ReadFile(const std::string& path, uint64_t max_size) {
  ext2_ino_t ino = IMAGED_TRY(Lookup(path));
  ext2_inode inode{};
  if (errcode_t err = ext2fs_read_inode(fs_, ino, &inode)) {
    return Ext2Error(err, fmt::format("read inode of \"{}\"", path));
  }
  if (!LINUX_S_ISREG(inode.i_mode)) return NotOwned("\"{}\" is not a regular file", path);
  uint64_t size = EXT2_I_SIZE(&inode);
  if (size > max_size) {
    return MakeError(EFBIG, "\"{}\" is {} bytes, more than {}", path, size, max_size);
  }
  ext2_file_t file = nullptr;
  if (errcode_t err = ext2fs_file_open(fs_, ino, 0, &file)) {
    return Ext2Error(err, fmt::format("open \"{}\"", path));
  }
  std::string data(size, '\0');
  unsigned int total = 0;
  errcode_t err = 0;
  while (total < size) {
    unsigned int got = 0;
    err =
        ext2fs_file_read(file, data.data() + total, static_cast<unsigned int>(size - total), &got);
    if (err != 0 || got == 0) break;
    total += got;
  }
  ext2fs_file_close(file);
  if (err != 0) return Ext2Error(err, fmt::format("read \"{}\"", path));
  data.resize(total);
  return data;
}

Result<std::vector<DiskRun>> OfflineFs::ImageRuns(const std::string& dir, const std::string& name) {
  const std::string list_name = imageset::ListFileName(name);
  const std::string list_path = JoinPath(NormalizeDir(dir), list_name);
  const std::string list = IMAGED_TRY_CTX(ReadFile(list_path, fiemap::kMaxListFileBytes),
                                          "read piece list");
  // The daemon's own rule for list files: exactly its piece names, in order.
  const size_t pieces =
      IMAGED_TRY_CTX(fiemap::ParseList(list, list_name), "piece list \"{}\"", list_path);
  std::vector<DiskRun> runs;
  for (size_t i = 0; i < pieces; ++i) {
    auto piece_runs =
        IMAGED_TRY(FileRuns(JoinPath(NormalizeDir(dir), fiemap::PieceName(list_name, i))));
    runs.insert(runs.end(), piece_runs.begin(), piece_runs.end());
  }
  return runs;
}

namespace {

struct DirScan {
  ext2_filsys fs;
  std::vector<std::pair<std::string, ext2_ino_t>> subdirs;
  std::vector<std::string> regular_files;
};

int DirCallback(ext2_ino_t, int, ext2_dir_entry* dirent, int, int, char*, void* priv) {
  auto* scan = static_cast<DirScan*>(priv);
  std::string name(dirent->name, static_cast<size_t>(ext2fs_dirent_name_len(dirent)));
  if (name == "." || name == "..") return 0;
  int type = ext2fs_dirent_file_type(dirent);
  if (type == EXT2_FT_UNKNOWN) {  // no filetype feature: ask the inode
    ext2_inode inode{};
    if (ext2fs_read_inode(scan->fs, dirent->inode, &inode) != 0) return 0;
    type = LINUX_S_ISDIR(inode.i_mode)   ? EXT2_FT_DIR
           : LINUX_S_ISREG(inode.i_mode) ? EXT2_FT_REG_FILE
                                         : EXT2_FT_UNKNOWN;
  }
  if (type == EXT2_FT_DIR) scan->subdirs.emplace_back(name, dirent->inode);
  const auto data_file = imageset::ClassifyDataFile(name);
  if (type == EXT2_FT_REG_FILE && data_file && data_file->kind == imageset::DataFile::Kind::kList) {
    scan->regular_files.push_back(name);
  }
  return 0;
}

// Bounds the boot-time cost of a search on a large filesystem.
constexpr size_t kMaxDirectoriesSearched = 20000;

}  // namespace

Result<std::vector<std::string>> OfflineFs::FindImageDirs(const std::string& name, int max_depth) {
  if (indexed_depth_ != max_depth) {
    list_files_.clear();
    struct Pending {
      std::string path;
      ext2_ino_t ino;
      int depth;
    };
    std::deque<Pending> queue{{"/", EXT2_ROOT_INO, 0}};
    size_t visited = 0;
    while (!queue.empty() && visited < kMaxDirectoriesSearched) {
      Pending dir = std::move(queue.front());
      queue.pop_front();
      ++visited;
      DirScan scan{fs_, {}, {}};
      errcode_t err = ext2fs_dir_iterate2(fs_, dir.ino, 0, nullptr, DirCallback, &scan);
      if (err != 0) return Ext2Error(err, fmt::format("read directory \"{}\"", dir.path));
      for (const auto& file : scan.regular_files) list_files_[file].push_back(dir.path);
      if (dir.depth < max_depth) {
        for (auto& [sub, ino] : scan.subdirs) {
          if (dir.depth == 0 && sub == "lost+found") continue;
          queue.push_back({JoinPath(dir.path, sub), ino, dir.depth + 1});
        }
      }
    }
    indexed_depth_ = max_depth;
  }
  auto it = list_files_.find(imageset::ListFileName(name));
  if (it == list_files_.end()) return std::vector<std::string>{};
  return it->second;
}

Result<void> CompareExtents(const std::vector<metadata::Extent>& extents,
                            const std::vector<DiskRun>& runs, uint32_t block_size) {
  uint64_t files_total = 0;
  for (const auto& run : runs) files_total += run.length;
  uint64_t lp_total = 0;
  for (const auto& e : extents) lp_total += e.num_sectors * metadata::kSectorSize;

  size_t r = 0;
  uint64_t in_run = 0;
  uint64_t image_pos = 0;
  for (size_t i = 0; i < extents.size(); ++i) {
    const auto& e = extents[i];
    if (e.target_type != metadata::kTargetTypeLinear || e.target_source != 0) {
      return MakeError(EINVAL, "lp_metadata extent {} is not a LINEAR extent on the data disk", i);
    }
    if (e.target_data > std::numeric_limits<uint64_t>::max() / metadata::kSectorSize) {
      return MakeError(EINVAL, "lp_metadata extent {} starts beyond 2^64 bytes", i);
    }
    uint64_t disk = e.target_data * metadata::kSectorSize;
    uint64_t left = e.num_sectors * metadata::kSectorSize;
    while (left > 0) {
      if (r == runs.size()) {
        return NotOwned("lp_metadata maps {} bytes but the files hold only {} bytes", lp_total,
                         files_total);
      }
      const DiskRun& run = runs[r];
      const uint64_t expect = run.disk_offset + in_run;
      if (disk != expect) {
        return NotOwned("at image byte {}: lp_metadata extent {} maps disk sector {} but \"{}\" "
                         "byte {} is at disk sector {}",
                         image_pos, i, disk / metadata::kSectorSize, run.file,
                         run.file_offset + in_run, expect / metadata::kSectorSize);
      }
      const uint64_t n = std::min(left, run.length - in_run);
      disk += n;
      left -= n;
      in_run += n;
      image_pos += n;
      if (in_run == run.length) {
        ++r;
        in_run = 0;
      }
    }
  }
  // The last piece is padded to a block and liblp truncates the image to whole sectors, so up
  // to one block may be left over (an image ending 100 bytes into a block loses that block);
  // anything more means lp_metadata lost extents.
  if (files_total - image_pos > block_size) {
    return NotOwned("lp_metadata maps only {} bytes of the {} bytes the files hold", image_pos,
                     files_total);
  }
  return Ok();
}

Result<std::string> VerifyImage(OfflineFs& fs, const std::string& dir, int max_depth,
                                const std::string& name,
                                const std::vector<metadata::Extent>& extents) {
  std::vector<std::string> candidates;
  if (!dir.empty()) {
    candidates.push_back(NormalizeDir(dir));
  } else {
    candidates = IMAGED_TRY(fs.FindImageDirs(name, max_depth));
    if (candidates.empty()) {
      return MakeError(ENOENT,
                       "no {}.img within {} directory levels of the filesystem root "
                       "(use --data-path-in-fs)",
                       name, max_depth);
    }
  }
  // Blocks belong to at most one file, so a match in any candidate directory proves that the
  // recorded extents are that file's blocks and nobody else's.
  std::optional<Error> first_error;
  for (const auto& candidate : candidates) {
    auto runs = fs.ImageRuns(candidate, name);
    Result<void> compared = runs ? CompareExtents(extents, *runs, fs.block_size())
                                 : Result<void>(std::move(runs).error());
    if (compared) return candidate;
    if (!first_error) {
      first_error = std::move(compared).error().Wrap(fmt::format("files in \"{}\"", candidate));
    }
  }
  if (candidates.size() > 1) {
    return first_error->Wrap(
        fmt::format("none of {} candidate directories match", candidates.size()));
  }
  return *first_error;
}

}  // namespace imaged::init
