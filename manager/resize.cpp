// Resize: grows an unmapped image. The pieces grow through SplitFiemap::Grow (new pieces, then
// the list file), and only then does lp_metadata record the longer extent list.
#include "crash_point.h"
#include "internal.h"

namespace imaged {

Result<void> ImageManager::Resize(std::string_view name, uint64_t new_size,
                                  const Progress& progress) {
  return impl_->OnImage("resize", name,
                        [&] { return impl_->GrowUnmappedLocked(name, new_size, progress); });
}

Result<void> ImageManager::Impl::GrowUnmappedLocked(std::string_view name, uint64_t new_size,
                                                    const Progress& progress) {
  const Image image = IMAGED_TRY(FindUnmappedImage(name));
  if (new_size < image.size) {
    return MakeError(EINVAL, "shrinking from {} to {} is not supported", image.size, new_size);
  }
  if (new_size == image.size) return Ok();
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  const uint32_t lbs = fs.disk_logical_block_size ? fs.disk_logical_block_size : 512;
  if (new_size % metadata::kSectorSize != 0 || new_size % lbs != 0) {
    return MakeError(EINVAL, "size {} is not a multiple of the disk's logical block size {}",
                     new_size, std::max<uint32_t>(lbs, metadata::kSectorSize));
  }
  // The existing pieces must still be where lp_metadata says before the record is extended.
  fiemap::SplitFiemap split = IMAGED_TRY(CheckExtentsLocked(name, image));
  IMAGED_CRASH_POINT("resize.checked");
  // What Recover rolls back to if the pieces grew but lp_metadata does not say so yet.
  manager::Intent intent;
  intent.op = manager::Intent::Op::kGrow;
  intent.old_size = image.size;
  intent.old_pieces = split.pieces().size();
  intent.old_last_piece = split.pieces().back().size();
  IMAGED_TRY(WriteIntent(name, intent));
  fiemap::SplitFiemap::GrowOptions grow;
  grow.max_piece_size = options.max_piece_size;
  grow.progress = progress;
  auto recorded = split.Grow(new_size, grow);
  if (recorded) {
    auto extents = imageset::ComputeLpExtents(split, imageset::DiskFactsOf(fs), new_size);
    recorded = extents ? RecordExtents(name, image.partition.attributes, *extents)
                       : Result<void>(extents.error());
    if (!recorded) {
      (void)fiemap::SplitFiemap::RollBack(data, split.list(), intent.old_pieces,
                                          intent.old_last_piece);
    }
  }
  if (recorded) IMAGED_CRASH_POINT("resize.lp_written");
  // Grow undid itself on failure; without a crash there is nothing left for Recover.
  auto cleared = ClearIntent(name);
  IMAGED_TRY(std::move(recorded));
  return cleared;
}

}  // namespace imaged
