// ImageManager::List from a snapshot (list_snapshot.h): the mapped state of every image computed
// in one pass instead of one /sys/block scan per piece and one dm query per image.
#include "list_snapshot.h"

#include <sys/stat.h>

#include <map>
#include <set>
#include <utility>

#include "dm/device_mapper.h"
#include "fiemap/split_file.h"
#include "internal.h"

namespace imaged {
namespace manager {

ImageInfo LpImageInfo(const metadata::LpMetadata& md, const metadata::Partition& p) {
  ImageInfo info;
  info.name = p.name;
  info.size_bytes = metadata::PartitionSizeBytes(md, p);
  info.extents = p.num_extents;
  info.readonly = (p.attributes & metadata::kPartitionAttrReadonly) != 0;
  info.disabled = (p.attributes & metadata::kPartitionAttrDisabled) != 0;
  return info;
}

std::shared_ptr<const ListCache::Snapshot> ListCache::Current() {
  std::lock_guard<std::mutex> guard(snapshot_mu_);
  return snapshot_;
}

Result<ListCache::Images> ListCache::Get(const std::function<Key()>& key, const Compute& compute) {
  if (refresh_.count() <= 0) {
    return Images(std::make_shared<const std::vector<ImageInfo>>(IMAGED_TRY(compute())));
  }
  // Points into the snapshot and keeps it alive.
  auto images = [](const std::shared_ptr<const Snapshot>& s) { return Images(s, &s->images); };
  const uint64_t generation = generation_.load(std::memory_order_acquire);
  const Key now_key = key();
  auto snap = Current();
  const bool valid = snap && snap->generation == generation && snap->key == now_key;
  if (valid) {
    if (Clock::now() - snap->taken < refresh_) return images(snap);
    // Expired only by age: one caller refreshes, the others answer from the old snapshot
    // rather than queue behind the kernel scan.
    std::unique_lock<std::mutex> refreshing(refresh_mu_, std::try_to_lock);
    if (!refreshing.owns_lock()) return images(snap);
    return images(IMAGED_TRY(Refresh(key, compute)));
  }
  // Something changed: nobody may be answered from before the change.
  std::lock_guard<std::mutex> refreshing(refresh_mu_);
  snap = Current();
  // Another caller may have computed it while we waited, after the change we saw.
  if (snap && snap->generation == generation_.load(std::memory_order_acquire) &&
      snap->key == key() && Clock::now() - snap->taken < refresh_) {
    return images(snap);
  }
  return images(IMAGED_TRY(Refresh(key, compute)));
}

// Under refresh_mu_.
Result<std::shared_ptr<const ListCache::Snapshot>> ListCache::Refresh(
    const std::function<Key()>& key, const Compute& compute) {
  auto next = std::make_shared<Snapshot>();
  // Generation and key first: a change during the computation leaves them stale.
  next->generation = generation_.load(std::memory_order_acquire);
  next->key = key();
  next->taken = Clock::now();
  next->images = IMAGED_TRY(compute());
  std::shared_ptr<const Snapshot> done = std::move(next);
  std::lock_guard<std::mutex> guard(snapshot_mu_);
  snapshot_ = done;
  return done;
}

}  // namespace manager

namespace {

int64_t Nanos(const struct timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace

manager::ListCache::Key ImageManager::Impl::ListKey() const {
  manager::ListCache::Key key;
  if (auto st = metadata.Stat(imageset::kLpMetadataFile); st && *st) {
    key.lp_exists = true;
    key.lp_dev = (*st)->st_dev;
    key.lp_ino = (*st)->st_ino;
    key.lp_mtime_ns = Nanos((*st)->st_mtim);
    key.lp_size = (*st)->st_size;
  }
  // Status files are written by atomic rename and removed by unlink: both touch the dir.
  struct stat st {};
  if (fstat(metadata.fd(), &st) == 0) key.dir_mtime_ns = Nanos(st.st_mtim);
  return key;
}

// The whole list from disk and the kernel, with MappedDevice's answer for every image from one
// kernel view: the dm device named dm_name(image) if it exists, else the first loop (by path)
// over one of its pieces.
Result<std::vector<ImageInfo>> ImageManager::Impl::ListFresh() {
  const auto md = IMAGED_TRY(ReadLp());
  std::vector<ImageInfo> out;
  if (!md || md->partitions.empty()) return out;
  const auto kernel = IMAGED_TRY(ScanKernel());
  // Every piece file of every image in one directory listing.
  std::map<std::string, std::vector<manager::FileId>, std::less<>> pieces_of;
  for (const auto& file : IMAGED_TRY(data.List())) {
    const auto f = imageset::ClassifyDataFile(file);
    if (!f || f->kind != imageset::DataFile::Kind::kPiece) continue;
    auto st = data.Stat(file);
    if (st && *st && S_ISREG((*st)->st_mode)) {
      pieces_of[f->image].push_back({(*st)->st_dev, (*st)->st_ino});
    }
  }
  out.reserve(md->partitions.size());
  for (const auto& p : md->partitions) {
    ImageInfo info = manager::LpImageInfo(*md, p);
    if (!imageset::IsImageName(p.name)) {
      // Another tool's partition: shown (printably: it may hold any byte), never looked up.
      info.name = metadata::PrintableName(p.name);
      out.push_back(std::move(info));
      continue;
    }
    if (auto pieces = fiemap::SplitFiemap::ListPieces(data, imageset::ListFileName(p.name))) {
      info.pieces = static_cast<uint32_t>(pieces->size());
    }
    const std::string dm_dev = dm_name(p.name);
    if (kernel.HasDm(dm_dev)) {
      info.mapped_device = dm::DeviceMapper::DevicePath(dm_dev);
    } else if (auto it = pieces_of.find(p.name); it != pieces_of.end()) {
      for (const auto& id : it->second) {
        for (const auto& loop : kernel.LoopsOf(id)) {
          if (!info.mapped_device || loop < *info.mapped_device) info.mapped_device = loop;
        }
      }
    }
    out.push_back(std::move(info));
  }
  return out;
}

Result<std::shared_ptr<const std::vector<ImageInfo>>> ImageManager::ListShared() {
  auto& impl = *impl_;
  return IMAGED_TRY_CTX(
      impl.list_cache.Get([&impl] { return impl.ListKey(); }, [&impl] { return impl.ListFresh(); }),
      "list");
}

Result<std::vector<ImageInfo>> ImageManager::List() {
  auto images = IMAGED_TRY(ListShared());
  return *images;
}

}  // namespace imaged
