// ImageManager: image set bookkeeping (open, create, delete, queries, disable, validate) and the
// lookups every operation starts with. Mapping is in mapping.cpp, resize in resize.cpp,
// recovery in recovery.cpp, import in import.cpp, List in list_snapshot.cpp.
#include "manager/image_manager.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "crash_point.h"
#include "fiemap/fiemap_writer.h"
#include "imaged/common/size.h"
#include "internal.h"
#include "space.h"

namespace imaged {

using manager::FileLock;
using manager::RoundUp;

namespace {

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

}  // namespace

// ---------------------------------------------------------------------------------------------
// Impl helpers

Result<ImageManager::Impl::OpLocks> ImageManager::Impl::LockImage(std::string_view name) {
  OpLocks held;
  // Shared: many operations run at once; Recover takes it exclusively.
  held.set = IMAGED_TRY(FileLock::Acquire(locks, imageset::kSetLock, /*exclusive=*/false));
  held.image =
      IMAGED_TRY(FileLock::Acquire(locks, imageset::ImageLockName(name), /*exclusive=*/true));
  held.change = manager::ChangeNote(&list_cache);
  held.impl = this;
  held.name = std::string(name);
  return held;
}

ImageManager::Impl::OpLocks::~OpLocks() {
  // No list file, no image: lp_metadata names an image only while its list file exists.
  if (!impl || !image.held() || impl->data.Exists(imageset::ListFileName(name))) return;
  // Waiters re-check the lock file's identity after locking (FileLock), so this is safe.
  (void)impl->locks.RemoveFile(imageset::ImageLockName(name));
}

Result<std::optional<metadata::LpMetadata>> ImageManager::Impl::ReadLp() const {
  IMAGED_TRY(CheckServing());
  return IMAGED_TRY_CTX(imageset::ReadLpMetadata(metadata), "read lp_metadata");
}

Result<void> ImageManager::Impl::CheckServing() const {
  std::lock_guard<std::mutex> guard(refusal_mu);
  if (refusal) return MakeError(EUCLEAN, "{}", *refusal).As(ErrorKind::kCorruptMetadata);
  return Ok();
}

void ImageManager::Impl::SetRefusal(std::optional<std::string> reason) {
  std::lock_guard<std::mutex> guard(refusal_mu);
  refusal = std::move(reason);
}

Result<void> ImageManager::Impl::EditLp(const LpEdit& edit) {
  auto lock = IMAGED_TRY(FileLock::Acquire(locks, imageset::kLpMetadataLock, true));
  auto current = IMAGED_TRY(ReadLp());
  auto updated = IMAGED_TRY(edit(std::move(current)));
  IMAGED_TRY_CTX(imageset::WriteLpMetadata(metadata, updated), "write lp_metadata");
  return Ok();
}

Result<void> ImageManager::Impl::RecordExtents(std::string_view name, uint32_t attributes,
                                               const std::vector<metadata::Extent>& extents) {
  return EditLp([&](std::optional<metadata::LpMetadata> current) -> Result<metadata::LpMetadata> {
    if (!current || !metadata::FindPartition(*current, name)) {
      return MakeError(ENOENT, "no such image");
    }
    IMAGED_TRY(metadata::SetPartition(*current, name, attributes, extents));
    return std::move(*current);
  });
}

Result<ImageManager::Impl::Image> ImageManager::Impl::FindImage(std::string_view name) {
  const auto md = IMAGED_TRY(ReadLp());
  const auto* p = md ? metadata::FindPartition(*md, name) : nullptr;
  if (!p) return MakeError(ENOENT, "no such image");
  Image image;
  image.partition = *p;
  image.extents = metadata::PartitionExtents(*md, *p);
  image.size = metadata::PartitionSizeBytes(*md, *p);
  return image;
}

Result<ImageManager::Impl::Image> ImageManager::Impl::FindUnmappedImage(std::string_view name) {
  Image image = IMAGED_TRY(FindImage(name));
  if (auto device = IMAGED_TRY(MappedDeviceLocked(name))) {
    return MakeError(EBUSY, "the image is mapped at {}", *device);
  }
  return image;
}

Result<void> ImageManager::Impl::WriteIntent(std::string_view name, const manager::Intent& intent) {
  using Op = manager::Intent::Op;
  if (intent.op == Op::kCreate || intent.op == Op::kFill) {
    // Never for an image that exists: Recover would remove what a creating intent names.
    const auto md = IMAGED_TRY(ReadLp());
    if (md && metadata::FindPartition(*md, name)) return MakeError(EEXIST, "the image exists");
  }
  const std::string text = manager::SerializeIntent(intent);
  IMAGED_TRY_CTX(metadata.AtomicWrite(imageset::IntentFileName(name),
                                      {reinterpret_cast<const uint8_t*>(text.data()), text.size()},
                                      {.mode = 0600}),
                 "record the intent to change \"{}\"", name);
  return Ok();
}

Result<void> ImageManager::Impl::ClearIntent(std::string_view name) {
  if (IMAGED_TRY(metadata.RemoveFile(imageset::IntentFileName(name)))) {
    IMAGED_TRY(metadata.Sync());
  }
  return Ok();
}

Result<std::optional<manager::Intent>> ImageManager::Impl::ReadIntent(std::string_view name) {
  const std::string file = imageset::IntentFileName(name);
  if (!metadata.Exists(file)) return std::optional<manager::Intent>();
  const auto bytes = IMAGED_TRY(metadata.ReadFile(file, 4096));
  auto intent = manager::ParseIntent({reinterpret_cast<const char*>(bytes.data()), bytes.size()});
  if (!intent) {
    return std::move(intent).error().Wrap(metadata.PathOf(file)).As(ErrorKind::kCorruptMetadata);
  }
  return std::optional<manager::Intent>(*intent);
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

Result<manager::KernelView> ImageManager::Impl::ScanKernel() {
  dm::DeviceMapper* mapper = nullptr;
  if (manager::DeviceMapperAvailable()) mapper = IMAGED_TRY(Dm());
  return manager::KernelView::Scan(mapper);
}

Result<std::vector<manager::FileId>> ImageManager::Impl::PieceIds(std::string_view name) {
  std::vector<manager::FileId> ids;
  for (const auto& file : IMAGED_TRY(data.List())) {
    const auto f = imageset::ClassifyDataFile(file);
    if (!f || f->kind != imageset::DataFile::Kind::kPiece || f->image != name) continue;
    // Only regular files: a symlink planted at a piece's name names nothing of ours.
    auto st = IMAGED_TRY(data.Stat(file));
    if (st && S_ISREG(st->st_mode)) ids.push_back({st->st_dev, st->st_ino});
  }
  return ids;
}

Result<std::optional<std::string>> ImageManager::Impl::MappedDevice(
    std::string_view name, const manager::KernelView& kernel) {
  // The kernel is the truth: a status file can be stale after a crash, and images mapped by
  // imaged-init at boot have a dm device but no status file.
  if (kernel.HasDm(dm_name(name))) {
    return std::optional<std::string>(dm::DeviceMapper::DevicePath(dm_name(name)));
  }
  std::optional<std::string> first;
  for (const auto& id : IMAGED_TRY(PieceIds(name))) {
    for (const auto& loop : kernel.LoopsOf(id)) {
      if (!first || loop < *first) first = loop;
    }
  }
  return first;
}

Result<std::optional<std::string>> ImageManager::Impl::MappedDeviceLocked(std::string_view name) {
  const auto kernel = IMAGED_TRY(ScanKernel());
  return MappedDevice(name, kernel);
}

void ImageManager::Impl::Announce(ImageChangeKind kind, std::string_view name,
                                  std::string_view operation, std::string detail,
                                  const ImageInfo* image) {
  list_cache.Invalidate();
  if (!options.on_change) return;
  ImageChange change;
  change.kind = kind;
  change.name = std::string(name);
  change.operation = std::string(operation);
  change.detail = std::move(detail);
  if (image) {
    change.image = *image;
  } else if (kind != ImageChangeKind::kDeleted && kind != ImageChangeKind::kSetRebuilt) {
    // The change is made and durable: a failure to read it back only leaves the image out.
    if (auto md = ReadLp(); md && *md) {
      if (auto info = InfoLocked(name, **md)) change.image = std::move(*info);
    }
  }
  options.on_change(change);
}

// ---------------------------------------------------------------------------------------------
// Open

Result<UniqueFd> ClaimImageSet(const std::string& metadata_dir) {
  auto metadata = IMAGED_TRY(Directory::Open(metadata_dir, true));
  auto locks = IMAGED_TRY(Directory::Open(metadata.PathOf(imageset::kLockDir), true));
  UniqueFd fd = IMAGED_TRY(locks.OpenFile(imageset::kDaemonLock, O_RDWR | O_CREAT, 0600));
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return MakeError(EBUSY, "another imaged manages the image set in \"{}\"", metadata_dir);
    }
    return ErrnoError("lock \"{}\"", locks.PathOf(imageset::kDaemonLock));
  }
  return fd;
}

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
  if (impl->options.default_map_timeout.count() <= 0) {
    impl->options.default_map_timeout = std::chrono::milliseconds(10000);
  }
  impl->list_cache.set_refresh(impl->options.list_refresh_interval);
  IMAGED_TRY_CTX(imageset::ValidateDmPrefix(options.dm_prefix), "open image set: dm_prefix \"{}\"",
                 options.dm_prefix);
  impl->data = IMAGED_TRY_CTX(Directory::Open(options.data_dir, true), "open image set");
  impl->metadata = IMAGED_TRY_CTX(Directory::Open(options.metadata_dir, true), "open image set");
  impl->locks = IMAGED_TRY_CTX(Directory::Open(impl->metadata.PathOf(imageset::kLockDir), true),
                               "open image set");
  impl->options.data_dir = impl->data.path();
  impl->options.metadata_dir = impl->metadata.path();
  // Refuse unsupported filesystems up front rather than at the first create.
  IMAGED_TRY_CTX(fiemap::InspectFilesystem(impl->data.fd(), impl->data.path()),
                 "open image set \"{}\"", impl->data.path());
  return std::unique_ptr<ImageManager>(new ImageManager(std::move(impl)));
}

// ---------------------------------------------------------------------------------------------
// Create

Result<void> ImageManager::Create(std::string_view name, uint64_t size_bytes,
                                  const CreateOptions& options) {
  return impl_->OnImage("create", name, [&]() -> Result<void> {
    // Checked before anything is allocated, so a dry run refuses it too.
    if (options.zero_fill_bytes > size_bytes) {
      return MakeError(EINVAL, "zero-fill of {} bytes asked for an image of {}",
                       options.zero_fill_bytes, size_bytes);
    }
    if (options.dry_run) {
      const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(impl_->data.fd(), impl_->data.path()));
      *options.dry_run = IMAGED_TRY(impl_->CheckCreatable(name, size_bytes, fs));
      return Ok();
    }
    // With zero-fill the image is not what was asked for until the zeros are in: a crash before
    // then must not leave it behind (a fill intent makes Recover remove it; a create intent
    // only what lp_metadata does not name yet).
    manager::Intent intent;
    intent.op =
        options.zero_fill_bytes != 0 ? manager::Intent::Op::kFill : manager::Intent::Op::kCreate;
    IMAGED_TRY(impl_->WriteIntent(name, intent));
    auto created = impl_->CreateLocked(name, size_bytes, options);
    // Cleared on failure too: CreateLocked removed what it made.
    auto cleared = impl_->ClearIntent(name);
    IMAGED_TRY(std::move(created));
    IMAGED_TRY(std::move(cleared));
    IMAGED_CRASH_POINT("create.done");
    impl_->Announce(ImageChangeKind::kCreated, name, "create");
    return Ok();
  });
}

Result<SpacePlan> ImageManager::Impl::PlanInPlace(std::string_view name, uint64_t size,
                                                  const fiemap::FilesystemInfo& fs) {
  const auto pieces =
      IMAGED_TRY(fiemap::SplitFiemap::ListPieces(data, imageset::ListFileName(name)));
  return manager::CheckSpace(options.reserve, fs, size, {0, pieces.size()}, data.path());
}

Result<SpacePlan> ImageManager::Impl::CheckCreatable(std::string_view name, uint64_t size,
                                                     const fiemap::FilesystemInfo& fs) {
  IMAGED_TRY(CheckSize(size, fs));
  const auto md = IMAGED_TRY(ReadLp());
  if (md && metadata::FindPartition(*md, name)) return MakeError(EEXIST, "the image exists");
  const std::string list = imageset::ListFileName(name);
  if (data.Exists(list)) {
    return MakeError(EEXIST, "\"{}\" exists (left by an interrupted create or delete?)",
                     data.PathOf(list));
  }
  const std::string status = imageset::StatusFileName(name);
  if (metadata.Exists(status)) {
    return MakeError(EEXIST, "\"{}\" exists: devices of an image of that name may be mapped",
                     metadata.PathOf(status));
  }
  if (IMAGED_TRY(ScanKernel()).HasDm(dm_name(name))) {
    return MakeError(EEXIST, "device-mapper device \"{}\" exists", dm_name(name));
  }
  const auto planned =
      IMAGED_TRY(fiemap::SplitFiemap::PlanCreate(fs, size, options.max_piece_size));
  return manager::CheckSpace(options.reserve, fs, size, planned, data.path());
}

Result<void> ImageManager::Impl::RecordNewImage(std::string_view name,
                                                const fiemap::SplitFiemap& split,
                                                const fiemap::FilesystemInfo& fs, uint64_t size,
                                                bool readonly) {
  const auto disk = imageset::DiskFactsOf(fs);
  const auto extents = IMAGED_TRY(imageset::ComputeLpExtents(split, disk, size));
  const uint32_t attributes = readonly ? metadata::kPartitionAttrReadonly : 0;
  return EditLp([&](std::optional<metadata::LpMetadata> current) -> Result<metadata::LpMetadata> {
    metadata::LpMetadata next;
    if (current) {
      next = std::move(*current);
      if (metadata::FindPartition(next, name)) return MakeError(EEXIST, "the image exists");
      // All images live on the data fs; the entry follows the disk it is on now (alignment
      // only when known, as libfiemap updates it).
      if (!next.block_devices.empty()) {
        auto& entry = next.block_devices[0];
        const auto now = imageset::BlockDeviceOf(disk);
        entry.partition_name = now.partition_name;
        entry.size = now.size;
        if (now.alignment != 0) entry.alignment = now.alignment;
        entry.alignment_offset = now.alignment_offset;
      }
    } else {
      // EnsureSetMetadata wrote it before the first piece: someone removed it since.
      return MakeError(ENOENT, "lp_metadata vanished while the image was being created");
    }
    IMAGED_TRY(metadata::SetPartition(next, name, attributes, extents));
    return next;
  });
}

// A set's lp_metadata exists before its first piece does, so that pieces without lp_metadata
// beside them always mean a missing metadata dir (Recover refuses to judge that), never a power
// cut or crash in the middle of the set's first create (the intent then proves them ours).
Result<void> ImageManager::Impl::EnsureSetMetadata(const fiemap::FilesystemInfo& fs) {
  auto lock = IMAGED_TRY(FileLock::Acquire(locks, imageset::kLpMetadataLock, true));
  if (IMAGED_TRY(ReadLp())) return Ok();
  const auto disk = imageset::DiskFactsOf(fs);
  const auto empty =
      metadata::NewImageMetadata(imageset::BlockDeviceOf(disk), disk.logical_block_size, 0);
  IMAGED_TRY_CTX(imageset::WriteLpMetadata(metadata, empty), "write the set's first lp_metadata");
  IMAGED_CRASH_POINT("create.set_metadata_written");
  return Ok();
}

Result<void> ImageManager::Impl::CreateLocked(std::string_view name, uint64_t size,
                                              const CreateOptions& create, const FillFn& fill) {
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  IMAGED_TRY(CheckCreatable(name, size, fs));
  IMAGED_CRASH_POINT("create.checked");
  IMAGED_TRY(EnsureSetMetadata(fs));

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
  const std::string list = imageset::ListFileName(name);
  auto split = IMAGED_TRY(fiemap::SplitFiemap::Create(data, list, size, split_options));
  IMAGED_CRASH_POINT("create.pieces_done");

  auto record = [&]() -> Result<void> {
    if (fill) {
      IMAGED_TRY(fill(split));
      // Until this, ranges the filler skipped are unwritten extents: lp_metadata must never
      // record them (a raw mapping would read stale blocks there).
      IMAGED_TRY(split.CompleteZeroing());
    }
    return RecordNewImage(name, split, fs, size, create.readonly);
  };
  if (auto recorded = record(); !recorded) {
    (void)fiemap::SplitFiemap::Remove(data, list);
    return recorded;
  }
  IMAGED_CRASH_POINT("create.lp_written");

  if (create.zero_fill_bytes != 0) {
    auto zeroed = ZeroFillLocked(name, create.zero_fill_bytes, {});
    if (!zeroed) {
      auto undo = DeleteLocked(name);
      Error e = std::move(zeroed).error();
      if (!undo) {
        e.message += fmt::format(" (and removing the image failed: {})", undo.error().ToString());
      }
      return std::move(e).Wrap("zero-fill");
    }
  }
  return Ok();
}

// ---------------------------------------------------------------------------------------------
// Delete

Result<void> ImageManager::Delete(std::string_view name) {
  return impl_->OnImage("delete", name, [&]() -> Result<void> {
    IMAGED_TRY(impl_->DeleteLocked(name));
    impl_->Announce(ImageChangeKind::kDeleted, name, "delete");
    return Ok();
  });
}

Result<void> ImageManager::Impl::DeleteLocked(std::string_view name) {
  auto image = FindImage(name);
  if (!image && image.error().code != ENOENT) return std::move(image).error();
  const std::string list = imageset::ListFileName(name);
  if (!image && !data.Exists(list)) return MakeError(ENOENT, "no such image");
  if (auto device = IMAGED_TRY(MappedDeviceLocked(name))) {
    return MakeError(EBUSY, "the image is mapped at {}", *device);
  }
  // Nothing of the image is live (checked above): a status file is a crash leftover. Whatever
  // it names that is still ours goes too, before the blocks are freed.
  const std::string status = imageset::StatusFileName(name);
  if (metadata.Exists(status)) IMAGED_TRY(TearDown(name));
  IMAGED_CRASH_POINT("delete.checked");
  // From here on a crash leaves the intent, so Recover finishes the delete.
  manager::Intent intent;
  intent.op = manager::Intent::Op::kDelete;
  IMAGED_TRY(WriteIntent(name, intent));
  // lp_metadata first: once the entry is gone nothing can map the blocks.
  if (image) {
    IMAGED_TRY(
        EditLp([&](std::optional<metadata::LpMetadata> current) -> Result<metadata::LpMetadata> {
          if (!current) return MakeError(ENOENT, "lp_metadata vanished");
          metadata::RemovePartition(*current, name);
          return std::move(*current);
        }));
  }
  IMAGED_CRASH_POINT("delete.lp_removed");
  IMAGED_TRY(fiemap::SplitFiemap::Remove(data, list));
  IMAGED_CRASH_POINT("delete.files_removed");
  IMAGED_TRY(metadata::RemoveStatusFile(metadata, status));
  return ClearIntent(name);
}

// ---------------------------------------------------------------------------------------------
// Queries

Result<bool> ImageManager::Exists(std::string_view name) {
  IMAGED_TRY_CTX(imageset::ValidateImageName(name), "exists");
  const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "exists \"{}\"", name);
  return md && metadata::FindPartition(*md, name) != nullptr;
}

Result<ImageInfo> ImageManager::Impl::InfoLocked(std::string_view name,
                                                 const metadata::LpMetadata& md) {
  const auto* p = metadata::FindPartition(md, name);
  if (!p) return MakeError(ENOENT, "no such image");
  ImageInfo info = manager::LpImageInfo(md, *p);
  if (auto pieces = fiemap::SplitFiemap::ListPieces(data, imageset::ListFileName(name))) {
    info.pieces = static_cast<uint32_t>(pieces->size());
  }
  info.mapped_device = IMAGED_TRY(MappedDeviceLocked(name));
  return info;
}

Result<ImageInfo> ImageManager::Info(std::string_view name) {
  IMAGED_TRY_CTX(imageset::ValidateImageName(name), "info");
  const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "info \"{}\"", name);
  if (!md) return MakeError(ENOENT, "info \"{}\": no such image", name);
  return IMAGED_TRY_CTX(impl_->InfoLocked(name, *md), "info \"{}\"", name);
}

Result<SpaceUsage> ImageManager::Space() {
  const auto fs = IMAGED_TRY_CTX(fiemap::InspectFilesystem(impl_->data.fd(), impl_->data.path()),
                                 "space of the data filesystem");
  return SpaceUsage{fs.total_bytes, fs.free_bytes, manager::ReserveBytes(options().reserve, fs)};
}

Result<std::optional<std::string>> ImageManager::GetMappedDevice(std::string_view name) {
  IMAGED_TRY_CTX(imageset::ValidateImageName(name), "mapped device");
  auto device = IMAGED_TRY_CTX(impl_->MappedDeviceLocked(name), "mapped device of \"{}\"", name);
  if (!device) IMAGED_TRY_CTX(impl_->FindImage(name), "mapped device of \"{}\"", name);
  return device;
}

// ---------------------------------------------------------------------------------------------
// Disable / RemoveDisabled

Result<void> ImageManager::Disable(std::string_view name) {
  auto disable = [&](std::optional<metadata::LpMetadata> current) -> Result<metadata::LpMetadata> {
    const auto* p = current ? metadata::FindPartition(*current, name) : nullptr;
    if (!p) return MakeError(ENOENT, "no such image");
    const auto extents = metadata::PartitionExtents(*current, *p);
    IMAGED_TRY(metadata::SetPartition(*current, name,
                                      p->attributes | metadata::kPartitionAttrDisabled, extents));
    return std::move(*current);
  };
  return impl_->OnImage("disable", name, [&]() -> Result<void> {
    IMAGED_TRY(impl_->EditLp(disable));
    impl_->Announce(ImageChangeKind::kDisabled, name, "disable");
    return Ok();
  });
}

Result<std::vector<std::string>> ImageManager::RemoveDisabled() {
  const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "remove disabled images");
  std::vector<std::string> removed;
  if (!md) return removed;
  for (const auto& p : md->partitions) {
    if (!(p.attributes & metadata::kPartitionAttrDisabled) || !imageset::IsImageName(p.name)) {
      continue;  // not disabled, or another tool's partition: never ours to delete
    }
    auto locks = IMAGED_TRY_CTX(impl_->LockImage(p.name), "remove disabled \"{}\"", p.name);
    // A mapped image stays until it is unmapped; the next call removes it.
    if (IMAGED_TRY(impl_->MappedDeviceLocked(p.name))) continue;
    auto deleted = impl_->DeleteLocked(p.name);
    if (!deleted) {
      if (deleted.error().code == ENOENT) continue;  // raced with another delete
      return std::move(deleted).error().Wrap(fmt::format("remove disabled \"{}\"", p.name));
    }
    impl_->Announce(ImageChangeKind::kDeleted, p.name, "remove-disabled");
    removed.push_back(p.name);
  }
  return removed;
}

// ---------------------------------------------------------------------------------------------
// Validate

Result<fiemap::SplitFiemap> ImageManager::Impl::CheckExtentsLocked(std::string_view name,
                                                                   const Image& image) {
  auto split = fiemap::SplitFiemap::Open(data, imageset::ListFileName(name));
  if (!split) {
    Error e = std::move(split).error();
    // The errno stays (EIO is an I/O error, not corruption); a file whose extents fail
    // validation (EINVAL from FIEMAP's checks) no longer owns what was recorded.
    if (e.code == EINVAL) e = std::move(e).As(ErrorKind::kExtentsChanged);
    return std::move(e).Wrap(fmt::format("extents of \"{}\" cannot be read", name));
  }
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  auto live = imageset::ComputeLpExtents(*split, imageset::DiskFactsOf(fs), image.size);
  if (!live) {
    return std::move(live).error().Wrap(
        fmt::format("extents of \"{}\" changed since creation", name));
  }
  const auto& recorded = image.extents;
  if (*live == recorded) return std::move(*split);
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
                   recorded.size())
      .As(ErrorKind::kExtentsChanged);
}

Result<std::vector<ValidationResult>> ImageManager::Validate() {
  const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "validate");
  std::vector<ValidationResult> out;
  if (!md) return out;
  for (const auto& p : md->partitions) {
    if (!imageset::IsImageName(p.name)) continue;  // another tool's: no files of ours to check
    auto locks = IMAGED_TRY_CTX(impl_->LockImage(p.name), "validate \"{}\"", p.name);
    // Re-read under the lock: the image may have been resized or deleted meanwhile.
    auto image = impl_->FindImage(p.name);
    if (!image && image.error().code == ENOENT) continue;
    ValidationResult r;
    r.name = p.name;
    auto checked = image ? impl_->CheckExtentsLocked(p.name, *image)
                         : Result<fiemap::SplitFiemap>(image.error());
    r.ok = checked.has_value();
    if (!r.ok) {
      r.problem = checked.error().ToString();
      impl_->Announce(ImageChangeKind::kCorrupt, p.name, "validate", r.problem);
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace imaged
