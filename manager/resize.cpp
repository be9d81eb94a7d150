// Resize: grows an unmapped image. The pieces grow through SplitFiemap::Grow (new pieces, then
// the list file), and only then does lp_metadata record the longer extent list.
#include "crash_point.h"
#include "internal.h"

namespace imaged {

Result<void> ImageManager::Resize(std::string_view name, uint64_t new_size,
                                  const Progress& progress) {
  IMAGED_TRY_CTX(imageset::ValidateImageName(name), "resize");
  auto locks = IMAGED_TRY_CTX(impl_->LockImage(name), "resize \"{}\"", name);
  IMAGED_TRY_CTX(impl_->GrowUnmappedLocked(name, new_size, progress), "resize \"{}\" to {}", name,
                 new_size);
  return Ok();
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
  fiemap::SplitFiemap::GrowOptions grow;
  grow.max_piece_size = options.max_piece_size;
  grow.progress = progress;
  IMAGED_TRY(split.Grow(new_size, grow));
  const auto extents =
      IMAGED_TRY(imageset::ComputeLpExtents(split, imageset::DiskFactsOf(fs), new_size));
  IMAGED_TRY(RecordExtents(name, image.partition.attributes, extents));
  IMAGED_CRASH_POINT("resize.lp_written");
  return Ok();
}

}  // namespace imaged
