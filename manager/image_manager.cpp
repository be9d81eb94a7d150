// ImageManager: image set bookkeeping (create, delete, list, disable, validate, resize).
// Mapping lives in mapping.cpp, recovery in recovery.cpp, import in import.cpp.
#include "manager/image_manager.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <system_error>

#include "crash_point.h"
#include "fiemap/fiemap_writer.h"
#include "imaged/common/size.h"
#include "internal.h"
#include "metadata/atomic_file.h"

namespace imaged {

using manager::FileLock;
using manager::RoundUp;

namespace {

Result<void> MakeDirs(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return MakeError(ec.value(), "create directory \"{}\"", dir);
  return Ok();
}

// Sizes are whole 512-byte sectors (liblp) and whole logical blocks of the disk (direct I/O and
// loop devices); silently rounding would move an AVB footer or a filesystem's end.
Result<void> CheckSize(uint64_t size, const fiemap::FilesystemInfo& fs) {
  if (size == 0) return MakeError(EINVAL, "size is 0");
  if (size % metadata::kSectorSize != 0) {
    return MakeError(EINVAL, "size {} is not a multiple of {} bytes", size, metadata::kSectorSize);
  }
  const uint32_t lbs = fs.disk_logical_block_size ? fs.disk_logical_block_size : 512;
  if (size % lbs != 0) {
    return MakeError(EINVAL, "size {} is not a multiple of the disk's logical block size {}", size,
                     lbs);
  }
  if (size > UINT64_MAX / 2) return MakeError(EINVAL, "size {} is too large", size);
  return Ok();
}

std::string PieceName(const std::string& base, size_t index) {
  return fmt::format("{}.{:04d}", base, index);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Impl helpers

Result<ImageManager::Impl::OpLocks> ImageManager::Impl::LockImage(std::string_view name) {
  OpLocks locks;
  // Shared: many operations run at once; Recover takes it exclusively.
  locks.set = IMAGED_TRY(FileLock::Acquire(set_lock_path(), /*exclusive=*/false));
  locks.image = IMAGED_TRY(FileLock::Acquire(lock_path(name), /*exclusive=*/true));
  locks.change = manager::ChangeNote(&list_cache);
  return locks;
}

Result<std::optional<metadata::LpMetadata>> ImageManager::Impl::ReadLp() const {
  const std::string path = lp_path();
  if (!manager::PathExists(path)) return std::optional<metadata::LpMetadata>();
  auto md = metadata::ReadImageFile(path);
  if (!md) {
    Error e = std::move(md).error();
    if (e.code == ENOENT) return std::optional<metadata::LpMetadata>();
    // A damaged lp_metadata is corruption, whatever the parser's errno.
    if (e.code == EINVAL || e.code == EBADMSG) e.code = EUCLEAN;
    return std::move(e).Wrap("read lp_metadata");
  }
  return std::optional<metadata::LpMetadata>(std::move(*md));
}

Result<void> ImageManager::Impl::EditLp(
    const std::function<Result<metadata::LpMetadata>(std::optional<metadata::LpMetadata>)>& edit) {
  auto lock = IMAGED_TRY(FileLock::Acquire(lp_lock_path(), true));
  auto current = IMAGED_TRY(ReadLp());
  auto updated = IMAGED_TRY(edit(std::move(current)));
  IMAGED_TRY_CTX(metadata::WriteImageFile(lp_path(), updated), "write lp_metadata");
  return Ok();
}

Result<dm::DeviceMapper*> ImageManager::Impl::Dm() {
  std::lock_guard<std::mutex> guard(dm_mu);
  if (!dm) {
    if (!manager::DeviceMapperAvailable()) {
      return MakeError(EOPNOTSUPP, "device-mapper is not available (/dev/mapper/control)");
    }
    dm = std::make_unique<dm::DeviceMapper>();
  }
  return dm.get();
}

Result<bool> ImageManager::Impl::DmExists(const std::string& dm_name) {
  if (!manager::DeviceMapperAvailable()) return false;
  auto* mapper = IMAGED_TRY(Dm());
  auto info = IMAGED_TRY(mapper->Info(dm_name));
  return info.has_value();
}

Result<void> ImageManager::Impl::MarkIncomplete(std::string_view name) {
  // Never mark an image that exists: Recover deletes marked images.
  const auto md = IMAGED_TRY(ReadLp());
  if (md && metadata::FindPartition(*md, name)) return MakeError(EEXIST, "the image exists");
  static constexpr std::string_view kContent = "incomplete\n";
  IMAGED_TRY_CTX(metadata::AtomicWriteFile(
                     incomplete_path(name),
                     {reinterpret_cast<const uint8_t*>(kContent.data()), kContent.size()}, 0600),
                 "mark \"{}\" incomplete", name);
  return Ok();
}

Result<void> ImageManager::Impl::ClearIncomplete(std::string_view name) {
  const std::string path = incomplete_path(name);
  if (unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return Ok();
    return ErrnoError("remove \"{}\"", path);
  }
  IMAGED_TRY(metadata::FsyncDirectory(options.metadata_dir));
  return Ok();
}

// ---------------------------------------------------------------------------------------------
// Open

ImageManager::ImageManager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ImageManager::~ImageManager() = default;

const ManagerOptions& ImageManager::options() const {
  return impl_->options;
}

Result<std::unique_ptr<ImageManager>> ImageManager::Open(const ManagerOptions& options) {
  if (options.data_dir.empty() || options.metadata_dir.empty()) {
    return MakeError(EINVAL, "open image set: data_dir and metadata_dir are required");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  std::error_code ec;
  impl->options.data_dir = std::filesystem::absolute(options.data_dir, ec).lexically_normal();
  impl->options.metadata_dir =
      std::filesystem::absolute(options.metadata_dir, ec).lexically_normal();
  for (std::string* dir : {&impl->options.data_dir, &impl->options.metadata_dir}) {
    while (dir->size() > 1 && dir->back() == '/') dir->pop_back();
  }
  if (impl->options.default_map_timeout.count() <= 0) {
    impl->options.default_map_timeout = std::chrono::milliseconds(10000);
  }
  impl->list_cache.set_refresh(impl->options.list_refresh_interval);
  IMAGED_TRY_CTX(dm::DeviceMapper::ValidateName(options.dm_prefix + "x"),
                 "open image set: dm_prefix \"{}\"", options.dm_prefix);
  IMAGED_TRY_CTX(MakeDirs(impl->options.data_dir), "open image set");
  IMAGED_TRY_CTX(MakeDirs(impl->options.metadata_dir), "open image set");
  // Refuse unsupported filesystems up front rather than at the first create.
  IMAGED_TRY_CTX(fiemap::InspectFilesystem(impl->options.data_dir), "open image set \"{}\"",
                 impl->options.data_dir);
  return std::unique_ptr<ImageManager>(new ImageManager(std::move(impl)));
}

// ---------------------------------------------------------------------------------------------
// Create

Result<void> ImageManager::Create(std::string_view name, uint64_t size_bytes,
                                  const CreateOptions& options) {
  IMAGED_TRY_CTX(ValidateImageName(name), "create");
  auto locks = IMAGED_TRY_CTX(impl_->LockImage(name), "create \"{}\"", name);
  // With zero-fill the image is not what was asked for until the zeros are in: a crash before
  // then must not leave it behind (Recover deletes images with an incomplete marker).
  const bool mark = options.zero_fill_bytes != 0;
  if (mark) IMAGED_TRY_CTX(impl_->MarkIncomplete(name), "create \"{}\"", name);
  auto created = impl_->CreateLocked(name, size_bytes, options);
  if (mark && created) created = impl_->ClearIncomplete(name);
  if (mark && !created) (void)impl_->ClearIncomplete(name);  // CreateLocked rolled back
  IMAGED_TRY_CTX(std::move(created), "create \"{}\"", name);
  IMAGED_CRASH_POINT("create.done");
  return Ok();
}

Result<void> ImageManager::Impl::CreateLocked(std::string_view name, uint64_t size,
                                              const CreateOptions& create, const FillFn& fill) {
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(options.data_dir));
  IMAGED_TRY(CheckSize(size, fs));
  const auto md = IMAGED_TRY(ReadLp());
  if (md && metadata::FindPartition(*md, name)) return MakeError(EEXIST, "the image exists");
  const std::string list = list_path(name);
  if (manager::PathExists(list)) {
    return MakeError(EEXIST, "\"{}\" exists (left by an interrupted create or delete?)", list);
  }
  if (manager::PathExists(status_path(name))) {
    return MakeError(EEXIST, "\"{}\" exists: devices of an image of that name may be mapped",
                     status_path(name));
  }
  if (IMAGED_TRY(DmExists(dm_name(name)))) {
    return MakeError(EEXIST, "device-mapper device \"{}\" exists", dm_name(name));
  }
  const uint64_t needed = RoundUp(size, fs.block_size ? fs.block_size : 4096);
  if (needed > fs.free_bytes) {
    return MakeError(ENOSPC, "{} needed, {} free on \"{}\"", HumanSize(needed),
                     HumanSize(fs.free_bytes), options.data_dir);
  }
  IMAGED_CRASH_POINT("create.checked");

  fiemap::SplitFiemap::CreateOptions split_options;
  split_options.max_piece_size = options.max_piece_size;
  split_options.progress = create.progress;
  // The filler writes every byte it has; zeroing first would write most of them twice.
  split_options.defer_zeroing = static_cast<bool>(fill);
  if (CrashPoints().armed) {
    split_options.progress = [&create](uint64_t done, uint64_t total) {
      IMAGED_CRASH_POINT("create.piece_progress");
      return create.progress ? create.progress(done, total) : true;
    };
  }
  auto split = IMAGED_TRY(fiemap::SplitFiemap::Create(list, size, split_options));
  IMAGED_CRASH_POINT("create.pieces_done");

  struct Rollback {
    std::string list;
    bool armed = true;
    ~Rollback() {
      if (armed) (void)fiemap::SplitFiemap::Remove(list);
    }
  } rollback{list};

  if (fill) {
    IMAGED_TRY(fill(split));
    // Until this, ranges the filler skipped are unwritten extents: lp_metadata must never
    // record them (a raw mapping would read stale blocks there).
    IMAGED_TRY(split.CompleteZeroing());
  }
  const auto disk = manager::DiskFactsOf(fs);
  for (const auto& piece : split.pieces()) {
    if (piece.fs_dev() != fs.fs_dev) {
      return MakeError(EXDEV, "\"{}\" is not on the filesystem of \"{}\"", piece.path(),
                       options.data_dir);
    }
  }
  const auto extents = IMAGED_TRY(manager::ComputeLpExtents(split, disk, size));
  const uint32_t attributes = create.readonly ? metadata::kPartitionAttrReadonly : 0;
  auto add = [&](std::optional<metadata::LpMetadata> current) -> Result<metadata::LpMetadata> {
    metadata::LpMetadata next;
    if (current) {
      next = std::move(*current);
      if (metadata::FindPartition(next, name)) return MakeError(EEXIST, "the image exists");
      // All images live on the data fs; the entry follows the disk it is on now.
      if (!next.block_devices.empty()) {
        next.block_devices[0].partition_name = manager::Basename(disk.disk);
        next.block_devices[0].size = disk.disk_size;
      }
    } else {
      metadata::BlockDevice device;
      device.partition_name = manager::Basename(disk.disk);
      device.size = disk.disk_size;
      next = metadata::NewImageMetadata(device, disk.logical_block_size, 0);
    }
    IMAGED_TRY(metadata::SetPartition(next, name, attributes, extents));
    return next;
  };
  IMAGED_TRY(EditLp(add));
  rollback.armed = false;
  IMAGED_CRASH_POINT("create.lp_written");

  if (create.zero_fill_bytes != 0) {
    auto zeroed = ZeroFillLocked(name, create.zero_fill_bytes, {});
    if (!zeroed) {
      auto undo = DeleteLocked(name);
      Error e = std::move(zeroed).error();
      if (!undo)
        e.message += fmt::format(" (and removing the image failed: {})", undo.error().ToString());
      return std::move(e).Wrap("zero-fill");
    }
  }
  return Ok();
}

// ---------------------------------------------------------------------------------------------
// Delete

Result<void> ImageManager::Delete(std::string_view name) {
  IMAGED_TRY_CTX(ValidateImageName(name), "delete");
  auto locks = IMAGED_TRY_CTX(impl_->LockImage(name), "delete \"{}\"", name);
  IMAGED_TRY_CTX(impl_->DeleteLocked(name), "delete \"{}\"", name);
  return Ok();
}

Result<void> ImageManager::Impl::DeleteLocked(std::string_view name) {
  const auto md = IMAGED_TRY(ReadLp());
  const bool in_lp = md && metadata::FindPartition(*md, name);
  const std::string list = list_path(name);
  if (!in_lp && !manager::PathExists(list)) return MakeError(ENOENT, "no such image");
  if (auto device = IMAGED_TRY(MappedDeviceLocked(name))) {
    return MakeError(EBUSY, "the image is mapped at {}", *device);
  }
  // Nothing of the image is live (checked above): a status file is a crash leftover. Whatever
  // it names that is still ours goes too, before the blocks are freed.
  if (manager::PathExists(status_path(name))) {
    auto entries = metadata::ReadStatusFile(status_path(name));
    std::vector<std::string> pieces;
    if (auto listed = fiemap::SplitFiemap::ListPieces(list)) pieces = std::move(*listed);
    IMAGED_TRY(TearDown(name, entries ? *entries : std::vector<metadata::StatusEntry>{}, pieces));
  }
  IMAGED_CRASH_POINT("delete.checked");
  // lp_metadata first: once the entry is gone nothing can map the blocks, and a crash before the
  // files are gone leaves only orphans that Recover removes.
  if (in_lp) {
    IMAGED_TRY(
        EditLp([&](std::optional<metadata::LpMetadata> current) -> Result<metadata::LpMetadata> {
          if (!current) return MakeError(ENOENT, "lp_metadata vanished");
          metadata::RemovePartition(*current, name);
          return std::move(*current);
        }));
  }
  IMAGED_CRASH_POINT("delete.lp_removed");
  IMAGED_TRY(fiemap::SplitFiemap::Remove(list));
  IMAGED_CRASH_POINT("delete.files_removed");
  IMAGED_TRY(metadata::RemoveStatusFile(status_path(name)));
  // Waiters re-check the lock file's identity after locking (FileLock), so this is safe.
  unlink(lock_path(name).c_str());
  return Ok();
}

// ---------------------------------------------------------------------------------------------
// Queries

Result<bool> ImageManager::Exists(std::string_view name) {
  IMAGED_TRY_CTX(ValidateImageName(name), "exists");
  const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "exists \"{}\"", name);
  return md && metadata::FindPartition(*md, name) != nullptr;
}

Result<ImageInfo> ImageManager::Impl::InfoLocked(std::string_view name,
                                                 const metadata::LpMetadata& md) {
  const auto* p = metadata::FindPartition(md, name);
  if (!p) return MakeError(ENOENT, "no such image");
  ImageInfo info = manager::LpImageInfo(md, *p);
  if (auto pieces = fiemap::SplitFiemap::ListPieces(list_path(name))) {
    info.pieces = static_cast<uint32_t>(pieces->size());
  }
  info.mapped_device = IMAGED_TRY(MappedDeviceLocked(name));
  return info;
}

// ImageManager::List is in list_snapshot.cpp.

Result<ImageInfo> ImageManager::Info(std::string_view name) {
  IMAGED_TRY_CTX(ValidateImageName(name), "info");
  const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "info \"{}\"", name);
  if (!md) return MakeError(ENOENT, "info \"{}\": no such image", name);
  return IMAGED_TRY_CTX(impl_->InfoLocked(name, *md), "info \"{}\"", name);
}

// ---------------------------------------------------------------------------------------------
// Disable / RemoveDisabled

Result<void> ImageManager::Disable(std::string_view name) {
  IMAGED_TRY_CTX(ValidateImageName(name), "disable");
  auto locks = IMAGED_TRY_CTX(impl_->LockImage(name), "disable \"{}\"", name);
  auto disable = [&](std::optional<metadata::LpMetadata> current) -> Result<metadata::LpMetadata> {
    const auto* p = current ? metadata::FindPartition(*current, name) : nullptr;
    if (!p) return MakeError(ENOENT, "no such image");
    const auto extents = metadata::PartitionExtents(*current, *p);
    IMAGED_TRY(metadata::SetPartition(*current, name,
                                      p->attributes | metadata::kPartitionAttrDisabled, extents));
    return std::move(*current);
  };
  IMAGED_TRY_CTX(impl_->EditLp(disable), "disable \"{}\"", name);
  return Ok();
}

Result<std::vector<std::string>> ImageManager::RemoveDisabled() {
  const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "remove disabled images");
  std::vector<std::string> removed;
  if (!md) return removed;
  for (const auto& p : md->partitions) {
    if (!(p.attributes & metadata::kPartitionAttrDisabled)) continue;
    auto locks = IMAGED_TRY_CTX(impl_->LockImage(p.name), "remove disabled \"{}\"", p.name);
    // A mapped image stays until it is unmapped; the next call removes it.
    if (IMAGED_TRY(impl_->MappedDeviceLocked(p.name))) continue;
    auto deleted = impl_->DeleteLocked(p.name);
    if (!deleted) {
      if (deleted.error().code == ENOENT) continue;  // raced with another delete
      return std::move(deleted).error().Wrap(fmt::format("remove disabled \"{}\"", p.name));
    }
    removed.push_back(p.name);
  }
  return removed;
}

// ---------------------------------------------------------------------------------------------
// Validate

Result<void> ImageManager::Impl::CheckExtentsLocked(std::string_view name,
                                                    const metadata::LpMetadata& md,
                                                    std::optional<fiemap::SplitFiemap>* opened) {
  const auto* p = metadata::FindPartition(md, name);
  if (!p) return MakeError(ENOENT, "no such image");
  const uint64_t size = metadata::PartitionSizeBytes(md, *p);
  auto split = fiemap::SplitFiemap::Open(list_path(name));
  if (!split) {
    Error e = std::move(split).error();
    if (e.code != ENOENT) e.code = EUCLEAN;
    return std::move(e).Wrap(fmt::format("extents of \"{}\" cannot be read", name));
  }
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(options.data_dir));
  auto live = manager::ComputeLpExtents(*split, manager::DiskFactsOf(fs), size);
  if (!live) {
    return MakeError(EUCLEAN, "extents of \"{}\" changed since creation: {}", name,
                     live.error().ToString());
  }
  const auto recorded = metadata::PartitionExtents(md, *p);
  if (*live != recorded) {
    size_t i = 0;
    while (i < live->size() && i < recorded.size() && (*live)[i] == recorded[i]) ++i;
    auto describe = [](const std::vector<metadata::Extent>& v, size_t at) {
      if (at >= v.size()) return std::string("none");
      return fmt::format("{} sectors at sector {}", v[at].num_sectors, v[at].target_data);
    };
    return MakeError(EUCLEAN,
                     "extents of \"{}\" changed since creation: extent {} is {} on disk, "
                     "lp_metadata records {} ({} live extents, {} recorded)",
                     name, i, describe(*live, i), describe(recorded, i), live->size(),
                     recorded.size());
  }
  if (opened) opened->emplace(std::move(*split));
  return Ok();
}

Result<std::vector<ValidationResult>> ImageManager::Validate() {
  const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "validate");
  std::vector<ValidationResult> out;
  if (!md) return out;
  for (const auto& p : md->partitions) {
    auto locks = IMAGED_TRY_CTX(impl_->LockImage(p.name), "validate \"{}\"", p.name);
    // Re-read under the lock: the image may have been resized or deleted meanwhile.
    const auto now = IMAGED_TRY_CTX(impl_->ReadLp(), "validate");
    if (!now || !metadata::FindPartition(*now, p.name)) continue;
    ValidationResult r;
    r.name = p.name;
    auto checked = impl_->CheckExtentsLocked(p.name, *now);
    r.ok = checked.has_value();
    if (!r.ok) r.problem = checked.error().ToString();
    out.push_back(std::move(r));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Resize

Result<void> ImageManager::Resize(std::string_view name, uint64_t new_size,
                                  const Progress& progress) {
  IMAGED_TRY_CTX(ValidateImageName(name), "resize");
  auto locks = IMAGED_TRY_CTX(impl_->LockImage(name), "resize \"{}\"", name);
  auto& impl = *impl_;
  auto run = [&]() -> Result<void> {
    const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(impl.options.data_dir));
    IMAGED_TRY(CheckSize(new_size, fs));
    const auto md = IMAGED_TRY(impl.ReadLp());
    const auto* p = md ? metadata::FindPartition(*md, name) : nullptr;
    if (!p) return MakeError(ENOENT, "no such image");
    if (auto device = IMAGED_TRY(impl.MappedDeviceLocked(name))) {
      return MakeError(EBUSY, "the image is mapped at {}", *device);
    }
    const uint64_t old_size = metadata::PartitionSizeBytes(*md, *p);
    if (new_size < old_size) {
      return MakeError(EINVAL, "shrinking from {} to {} is not supported", old_size, new_size);
    }
    if (new_size == old_size) return Ok();
    const uint32_t attributes = p->attributes;

    // The existing pieces must still be where lp_metadata says before we extend the record.
    std::optional<fiemap::SplitFiemap> split;
    IMAGED_TRY(impl.CheckExtentsLocked(name, *md, &split));
    const std::string list = impl.list_path(name);
    const std::string base = manager::Basename(list);
    const auto old_pieces = IMAGED_TRY(fiemap::SplitFiemap::ListPieces(list));

    // New pieces are appended after the existing ones (whose sizes never change), so every
    // recorded extent stays valid; the slack at the end of the last piece is used first.
    struct Rollback {
      std::vector<std::string> created;
      std::string list;
      std::string old_content;
      bool list_rewritten = false;
      bool armed = true;
      ~Rollback() {
        if (!armed) return;
        if (list_rewritten) {
          (void)metadata::AtomicWriteFile(
              list, {reinterpret_cast<const uint8_t*>(old_content.data()), old_content.size()},
              0640);
        }
        for (const auto& c : created) unlink(c.c_str());
      }
    } rollback;
    rollback.list = list;
    for (const auto& piece : old_pieces) rollback.old_content += manager::Basename(piece) + "\n";
    IMAGED_CRASH_POINT("resize.checked");

    if (new_size > split->size()) {
      const uint64_t bs = fs.block_size ? fs.block_size : 4096;
      const uint64_t extra = RoundUp(new_size - split->size(), bs);
      if (extra > fs.free_bytes) {
        return MakeError(ENOSPC, "{} more needed, {} free on \"{}\"", HumanSize(extra),
                         HumanSize(fs.free_bytes), impl.options.data_dir);
      }
      uint64_t piece_size = fs.max_file_size;
      if (impl.options.max_piece_size)
        piece_size = std::min(piece_size, impl.options.max_piece_size);
      piece_size = std::max<uint64_t>(piece_size / bs * bs, bs);
      const uint64_t count = (extra + piece_size - 1) / piece_size;
      if (old_pieces.size() + count > static_cast<uint64_t>(fiemap::kMaxPieces)) {
        return MakeError(EFBIG, "growing needs {} more pieces, beyond {}", count,
                         fiemap::kMaxPieces);
      }
      std::string content = rollback.old_content;
      uint64_t done = 0;
      for (uint64_t i = 0; i < count; ++i) {
        const uint64_t chunk = std::min(piece_size, extra - done);
        const std::string piece = PieceName(base, old_pieces.size() + i);
        const std::string path = impl.options.data_dir + "/" + piece;
        fiemap::ProgressFn piece_progress;
        if (progress) {
          piece_progress = [&](uint64_t d, uint64_t) {
            return done + d >= extra ? true : progress(done + d, extra);
          };
        }
        auto writer = fiemap::FiemapWriter::Create(path, chunk, piece_progress);
        if (!writer) return std::move(writer).error();
        rollback.created.push_back(path);
        IMAGED_CRASH_POINT("resize.piece_created");
        done += writer->size();
        content += piece + "\n";
      }
      rollback.list_rewritten = true;
      IMAGED_TRY_CTX(
          metadata::AtomicWriteFile(
              list, {reinterpret_cast<const uint8_t*>(content.data()), content.size()}, 0640),
          "rewrite \"{}\"", list);
      IMAGED_CRASH_POINT("resize.list_written");
      split.emplace(IMAGED_TRY(fiemap::SplitFiemap::Open(list)));
    }
    const auto extents =
        IMAGED_TRY(manager::ComputeLpExtents(*split, manager::DiskFactsOf(fs), new_size));
    auto grow = [&](std::optional<metadata::LpMetadata> current) -> Result<metadata::LpMetadata> {
      if (!current || !metadata::FindPartition(*current, name)) {
        return MakeError(ENOENT, "no such image");
      }
      IMAGED_TRY(metadata::SetPartition(*current, name, attributes, extents));
      return std::move(*current);
    };
    IMAGED_TRY(impl.EditLp(grow));
    rollback.armed = false;
    IMAGED_CRASH_POINT("resize.lp_written");
    // Too late to cancel here: the image already has its new size.
    if (progress) (void)progress(new_size - old_size, new_size - old_size);
    return Ok();
  };
  IMAGED_TRY_CTX(run(), "resize \"{}\" to {}", name, new_size);
  return Ok();
}

}  // namespace imaged
