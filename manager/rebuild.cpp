// RebuildMetadata: a new lp_metadata from what the data dir holds, when lp_metadata was lost or
// damaged. Only images whose files pass the checks Map makes are recorded, each with the size
// and attributes of a record (lp_metadata, then its previous generation) whose extents are
// exactly the files' own; anything else is reported, and nothing is deleted.
#include <ctime>

#include "fiemap/list_file.h"
#include "internal.h"

namespace imaged {

using manager::FileLock;

namespace {

// The size and attributes a record gives image `name`, if its extents are exactly what the
// files hold now.
std::optional<RebuiltImage> MatchRecord(const std::optional<metadata::LpMetadata>& md,
                                        std::string_view source, const std::string& name,
                                        const fiemap::SplitFiemap& split,
                                        const imageset::DiskFacts& disk, uint32_t* attributes) {
  const auto* p = md ? metadata::FindPartition(*md, name) : nullptr;
  if (!p) return std::nullopt;
  const uint64_t size = metadata::PartitionSizeBytes(*md, *p);
  auto live = imageset::ComputeLpExtents(split, disk, size);
  if (!live || *live != metadata::PartitionExtents(*md, *p)) return std::nullopt;
  *attributes = p->attributes;
  return RebuiltImage{name, size, std::string(source)};
}

// Keeps an lp_metadata that cannot be read beside, under a name no image can have.
Result<std::optional<std::string>> SaveUnreadable(const Directory& metadata) {
  auto bytes = metadata.ReadFile(imageset::kLpMetadataFile, metadata::kMaxImageFileBytes);
  if (!bytes) return std::optional<std::string>();
  const std::string saved = fmt::format("{}.unreadable.{}", imageset::kLpMetadataFile,
                                        static_cast<long long>(std::time(nullptr)));
  IMAGED_TRY(metadata.AtomicWrite(saved, *bytes, {.mode = 0644, .replace = false}));
  return std::optional<std::string>(metadata.PathOf(saved));
}

}  // namespace

Result<RebuildReport> ImageManager::RebuildMetadata() {
  auto& impl = *impl_;
  auto set_lock =
      IMAGED_TRY_CTX(FileLock::Acquire(impl.locks, imageset::kSetLock, true), "rebuild");
  manager::ChangeNote change(&impl.list_cache);
  RebuildReport report;
  auto current = imageset::ReadLpMetadata(impl.metadata);
  if (!current) report.saved_as = IMAGED_TRY_CTX(SaveUnreadable(impl.metadata), "rebuild");
  const std::optional<metadata::LpMetadata> now = current ? *current : std::nullopt;
  const auto prev = imageset::ReadPreviousLpMetadata(impl.metadata);
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(impl.data.fd(), impl.data.path()));
  const auto disk = imageset::DiskFactsOf(fs);

  metadata::LpMetadata md =
      metadata::NewImageMetadata(imageset::BlockDeviceOf(disk), disk.logical_block_size, 0);
  for (const auto& file : IMAGED_TRY_CTX(impl.data.List(), "rebuild")) {
    const auto f = imageset::ClassifyDataFile(file);
    if (!f || f->kind != imageset::DataFile::Kind::kList) continue;
    auto added = impl.RebuildImage(f->image, now, prev ? *prev : std::nullopt, disk, md);
    if (!added) {
      report.skipped.push_back(fmt::format("\"{}\": {}", f->image, added.error().ToString()));
      continue;
    }
    report.images.push_back(std::move(*added));
  }
  if (now) {
    for (const auto& p : now->partitions) {
      if (!imageset::IsImageName(p.name)) {
        report.skipped.push_back(fmt::format("\"{}\": another tool's partition, left out",
                                             metadata::PrintableName(p.name)));
        continue;
      }
      if (!metadata::FindPartition(md, p.name) &&
          !impl.data.Exists(imageset::ListFileName(p.name))) {
        report.skipped.push_back(
            fmt::format("\"{}\": lp_metadata lists it, its files are gone", p.name));
      }
    }
  }
  IMAGED_TRY_CTX(imageset::WriteLpMetadata(impl.metadata, md), "rebuild");
  set_lock.Release();
  IMAGED_TRY_CTX(Recover(), "rebuild: recover");
  impl.Announce(ImageChangeKind::kSetRebuilt, "", "rebuild-metadata");
  return report;
}

Result<RebuiltImage> ImageManager::Impl::RebuildImage(
    const std::string& name, const std::optional<metadata::LpMetadata>& current,
    const std::optional<metadata::LpMetadata>& previous, const imageset::DiskFacts& disk,
    metadata::LpMetadata& md) {
  using Op = manager::Intent::Op;
  if (auto intent = IMAGED_TRY(ReadIntent(name))) {
    if (intent->op == Op::kFill || intent->op == Op::kDelete) {
      return MakeError(ENOENT, "an interrupted {} left it incomplete",
                       intent->op == Op::kFill ? "import or zero-fill" : "delete");
    }
  }
  // The checks Map makes: every piece's extents valid, written and on the disk.
  const auto split = IMAGED_TRY(fiemap::SplitFiemap::Open(data, imageset::ListFileName(name)));
  uint32_t attributes = 0;
  auto image = MatchRecord(current, imageset::kLpMetadataFile, name, split, disk, &attributes);
  if (!image) {
    image = MatchRecord(previous, imageset::kLpMetadataPrevFile, name, split, disk, &attributes);
  }
  if (!image) {
    const uint64_t lbs = std::max<uint32_t>(disk.logical_block_size, metadata::kSectorSize);
    image = RebuiltImage{name, split.size() / lbs * lbs, "pieces"};
  }
  const auto extents = IMAGED_TRY(imageset::ComputeLpExtents(split, disk, image->size_bytes));
  IMAGED_TRY(metadata::SetPartition(md, name, attributes, extents));
  return *image;
}

}  // namespace imaged
