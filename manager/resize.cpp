// Resize: grows an image, mapped or not. The pieces grow through SplitFiemap::Grow (the last
// piece in place, then new pieces and the list file), then lp_metadata records the longer extent
// list, and only then does a live mapping grow (GrowMappingLocked): after a crash the image is
// the old size everywhere (Recover rolls the pieces back) or the new size everywhere (Recover
// finishes growing the devices).
#include "crash_point.h"
#include "fs_grow.h"
#include "fsprobe/fs_probe.h"
#include "imaged/common/size.h"
#include "internal.h"
#include "space.h"

namespace imaged {

namespace {

constexpr const char* kMappedOnOneLoop =
    "the image is mapped on one loop device, so it can grow only within one piece; unmap it to "
    "grow it further (its pieces are then joined by device-mapper when it is mapped)";

// A new size must be a whole number of the disk's logical blocks (and of sectors).
Result<void> CheckSizeUnit(uint64_t size, const fiemap::FilesystemInfo& fs) {
  const uint32_t lbs = fs.disk_logical_block_size ? fs.disk_logical_block_size : 512;
  if (size == 0 || size % metadata::kSectorSize != 0 || size % lbs != 0) {
    return MakeError(EINVAL,
                     "size {} is not a positive multiple of the disk's logical block size {}", size,
                     std::max<uint32_t>(lbs, metadata::kSectorSize));
  }
  return Ok();
}

// Shrinking must not cut a filesystem on the image short: its superblock says how far it spans.
Result<void> CheckNoFilesystemCut(fiemap::SplitFiemap& split, uint64_t image_size,
                                  uint64_t new_size) {
  std::vector<uint8_t> head(std::min<uint64_t>(fsprobe::kProbeBytes, image_size));
  IMAGED_TRY_CTX(split.PRead(head.data(), head.size(), 0), "read the image's superblock");
  const auto found = fsprobe::Probe(head);
  if (!found || found->size_bytes <= new_size) return Ok();
  const char* how = found->type == "xfs"   ? "xfs cannot shrink"
                    : found->type == "f2fs" ? "shrink it first with resize.f2fs"
                                            : "shrink it first with resize2fs";
  return MakeError(EFBIG,
                   "the image holds an {} filesystem of {} ({} bytes); shrinking the image to {} "
                   "would cut it ({})",
                   found->type, HumanSize(found->size_bytes), found->size_bytes, new_size, how);
}

// The pieces a shrunk image keeps: whole pieces up to the new size, the last one cut to it
// (rounded up to the fs block, as pieces are). Returns {pieces, bytes of the last}.
std::pair<size_t, uint64_t> CutLayout(const fiemap::SplitFiemap& split, uint64_t new_size) {
  const uint64_t block = split.block_size() ? split.block_size() : 4096;
  uint64_t remaining = (new_size + block - 1) / block * block;
  size_t kept = 0;
  for (const auto& piece : split.pieces()) {
    ++kept;
    if (remaining <= piece.size()) break;
    remaining -= piece.size();
  }
  return {kept, remaining};
}

}  // namespace

Result<void> ImageManager::Impl::AnnouncingResize(std::string_view name, bool dry_run,
                                                  const std::function<Result<void>()>& resize) {
  const uint64_t before = IMAGED_TRY(FindImage(name)).size;
  auto resized = resize();
  // Judged by the size, not the result: a grow stands when growing the filesystem on it fails,
  // and a resize to the size it has changes nothing (and says nothing).
  if (auto after = FindImage(name); !dry_run && after && after->size != before) {
    Announce(ImageChangeKind::kResized, name, "resize");
  }
  return resized;
}

Result<void> ImageManager::Resize(std::string_view name, uint64_t new_size,
                                  const ResizeOptions& options) {
  return impl_->OnImage("resize", name, [&]() -> Result<void> {
    return impl_->AnnouncingResize(name, options.dry_run != nullptr,
                                   [&] { return impl_->GrowLocked(name, new_size, options); });
  });
}

Result<void> ImageManager::GrowBy(std::string_view name, uint64_t bytes,
                                  const ResizeOptions& options) {
  return impl_->OnImage("resize", name, [&]() -> Result<void> {
    const uint64_t size = IMAGED_TRY(impl_->FindImage(name)).size;
    if (bytes > UINT64_MAX - size) return MakeError(EFBIG, "{} + {} bytes overflows", size, bytes);
    return impl_->AnnouncingResize(name, options.dry_run != nullptr,
                                   [&] { return impl_->GrowLocked(name, size + bytes, options); });
  });
}

Result<void> ImageManager::Impl::GrowLocked(std::string_view name, uint64_t new_size,
                                            const ResizeOptions& request) {
  const Image image = IMAGED_TRY(FindImage(name));
  if (new_size < image.size) {
    return MakeError(EINVAL, "{} is smaller than the image ({}): shrinking must be asked for "
                     "explicitly (imagectl resize --shrink)", new_size, image.size);
  }
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  if (new_size == image.size) {
    if (request.dry_run) {
      *request.dry_run = IMAGED_TRY(PlanInPlace(name, new_size, fs));
      return Ok();
    }
    // Already that size (a retry after the filesystem step failed): only that step is left.
    return request.grow_filesystem ? GrowFilesystemLocked(name) : Ok();
  }
  IMAGED_TRY(CheckSizeUnit(new_size, fs));
  const bool mapped = IMAGED_TRY(MappedDeviceLocked(name)).has_value();
  // The existing pieces must still be where lp_metadata says before the record is extended.
  fiemap::SplitFiemap split = IMAGED_TRY(CheckExtentsLocked(name, image));
  fiemap::SplitFiemap::GrowOptions grow;
  grow.max_piece_size = options.max_piece_size;
  grow.progress = request.progress;
  if (mapped && split.pieces().size() == 1 && !IMAGED_TRY(ScanKernel()).HasDm(dm_name(name))) {
    // Mapped on its own loop: a second piece could only be joined by a new dm device, which
    // would not be the device its users hold open.
    grow.max_pieces = 1;
  }
  auto planned = split.PlanGrow(fs, new_size, grow);
  if (!planned && grow.max_pieces == 1 && planned.error().code == EFBIG) {
    planned = std::move(planned).error().Wrap(kMappedOnOneLoop);
  }
  if (!planned) return std::move(planned).error();
  const SpacePlan plan =
      IMAGED_TRY(manager::CheckSpace(options.reserve, fs, new_size, *planned, data.path()));
  if (request.dry_run) {
    *request.dry_run = plan;
    return Ok();
  }
  IMAGED_CRASH_POINT("resize.checked");
  // What Recover rolls back to if the pieces grew but lp_metadata does not say so yet.
  manager::Intent intent;
  intent.op = manager::Intent::Op::kGrow;
  intent.old_size = image.size;
  intent.cut_pieces = split.pieces().size();
  intent.cut_last_piece = split.pieces().back().size();
  IMAGED_TRY(WriteIntent(name, intent));
  auto recorded = split.Grow(new_size, grow);
  if (!recorded && grow.max_pieces == 1 && recorded.error().code == EFBIG) {
    recorded = std::move(recorded).error().Wrap(kMappedOnOneLoop);
  }
  if (recorded) {
    auto extents = imageset::ComputeLpExtents(split, imageset::DiskFactsOf(fs), new_size);
    recorded = extents ? RecordExtents(name, image.partition.attributes, *extents)
                       : Result<void>(extents.error());
    if (!recorded) {
      (void)fiemap::SplitFiemap::CutTo(data, split.list(), intent.cut_pieces,
                                          intent.cut_last_piece);
    }
  }
  if (!recorded) {
    // Grow undid itself; without a crash there is nothing left for Recover.
    (void)ClearIntent(name);
    return recorded;
  }
  IMAGED_CRASH_POINT("resize.lp_written");
  if (mapped) {
    // The intent stays if this fails, so the next Recover finishes growing the devices.
    IMAGED_TRY_CTX(GrowMappingLocked(name),
                   "lp_metadata records {} bytes, but the mapped device could not grow (unmap "
                   "and map it again, or restart imaged, to bring it to that size)",
                   new_size);
    IMAGED_CRASH_POINT("resize.device_grown");
  }
  IMAGED_TRY(ClearIntent(name));
  if (!request.grow_filesystem) return Ok();
  IMAGED_TRY_CTX(GrowFilesystemLocked(name),
                 "the image grew to {} bytes, but its filesystem did not (fix that and run "
                 "resize --fs again)", new_size);
  return Ok();
}

Result<void> ImageManager::Impl::GrowFilesystemLocked(std::string_view name) {
  if (IMAGED_TRY(FindImage(name)).readonly()) {
    return MakeError(EROFS, "the image is read-only: the filesystem on it cannot grow");
  }
  if (auto device = IMAGED_TRY(MappedDeviceLocked(name))) return manager::GrowFilesystem(*device);
  // Through a temporary mapping (as zero-fill does), removed again whatever happens.
  MapRequest map;
  map.timeout = options.default_map_timeout;
  const std::string device = IMAGED_TRY_CTX(MapLocked(name, map), "map to grow its filesystem");
  auto grown = manager::GrowFilesystem(device);
  auto unmapped = UnmapLocked(name);
  IMAGED_TRY(std::move(grown));
  IMAGED_TRY_CTX(std::move(unmapped), "unmap after growing the filesystem");
  return Ok();
}

// Shrink: the mirror of a grow. lp_metadata records the shorter extent list first, so nothing
// can map the blocks about to be freed; then the pieces are cut (SplitFiemap::CutTo). A crash
// before lp_metadata changes leaves the image as it was; after, Recover finishes the cut.
Result<void> ImageManager::Shrink(std::string_view name, uint64_t new_size) {
  return impl_->OnImage("resize", name, [&]() -> Result<void> {
    return impl_->AnnouncingResize(name, false,
                                   [&] { return impl_->ShrinkLocked(name, new_size); });
  });
}

Result<void> ImageManager::Impl::ShrinkLocked(std::string_view name, uint64_t new_size) {
  const Image image = IMAGED_TRY(FindUnmappedImage(name));
  if (new_size > image.size) {
    return MakeError(EINVAL, "{} is larger than the image ({}): that is a grow", new_size,
                     image.size);
  }
  if (new_size == image.size) return Ok();
  if (image.readonly()) return MakeError(EROFS, "the image is read-only");
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  IMAGED_TRY(CheckSizeUnit(new_size, fs));
  fiemap::SplitFiemap split = IMAGED_TRY(CheckExtentsLocked(name, image));
  IMAGED_TRY(CheckNoFilesystemCut(split, image.size, new_size));
  const auto extents =
      IMAGED_TRY(imageset::ComputeLpExtents(split, imageset::DiskFactsOf(fs), new_size));
  const auto [pieces, last_piece] = CutLayout(split, new_size);
  IMAGED_CRASH_POINT("shrink.checked");
  manager::Intent intent;
  intent.op = manager::Intent::Op::kShrink;
  intent.old_size = image.size;
  intent.cut_pieces = pieces;
  intent.cut_last_piece = last_piece;
  IMAGED_TRY(WriteIntent(name, intent));
  if (auto recorded = RecordExtents(name, image.partition.attributes, extents); !recorded) {
    (void)ClearIntent(name);
    return recorded;
  }
  IMAGED_CRASH_POINT("shrink.lp_written");
  // The intent stays if this fails: the next Recover finishes the cut.
  IMAGED_TRY_CTX(fiemap::SplitFiemap::CutTo(data, split.list(), pieces, last_piece),
                 "lp_metadata records {} bytes, but cutting the pieces failed", new_size);
  IMAGED_CRASH_POINT("shrink.pieces_cut");
  return ClearIntent(name);
}

}  // namespace imaged
