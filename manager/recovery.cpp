// Recover: bring the image set and the kernel's devices back in line after a crash or a boot,
// one phase after the other (docs/crash-safety.md, "Recover, step by step").
#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <set>

#include "dm/loop_device.h"
#include "internal.h"

namespace imaged {

using manager::FileLock;
using metadata::StatusEntry;

namespace {

void AddUnique(std::vector<std::string>& v, const std::string& s) {
  if (std::find(v.begin(), v.end(), s) == v.end()) v.push_back(s);
}

// One run of Recover: the report, lp_metadata as read at the start, and each phase.
class Recovery {
 public:
  explicit Recovery(ImageManager::Impl& impl) : impl_(impl) {}

  Result<RecoveryReport> Run() {
    RemoveTempFiles();
    ReadLp();
    IMAGED_TRY(RemoveIncompleteImages());
    auto kernel = IMAGED_TRY(impl_.ScanKernel());
    IMAGED_TRY(ReconcileStatusFiles(kernel));
    AdoptBootMappings(kernel);
    kernel = IMAGED_TRY(impl_.ScanKernel());
    IMAGED_TRY(DetachStrayLoops(kernel));
    IMAGED_TRY(RemoveOrphanFiles());
    RemoveUnusedLocks();
    return std::move(report_);
  }

 private:
  void Problem(const Error& e) { report_.problems.push_back(e.ToString()); }
  bool InLp(const std::string& name) const {
    return md_ && metadata::FindPartition(*md_, name) != nullptr;
  }
  std::vector<std::string> ImagesWith(imageset::MetadataFile::Kind kind,
                                      const std::vector<std::string>& files) const {
    std::vector<std::string> names;
    for (const auto& f : files) {
      auto m = imageset::ClassifyMetadataFile(f);
      if (m && m->kind == kind) names.push_back(m->image);
    }
    return names;
  }

  // 1. Interrupted atomic writes: their temp files are ours by name.
  void RemoveTempFiles() {
    for (const Directory* dir : {&impl_.metadata, &impl_.data}) {
      if (auto r = dir->RemoveTempFiles(); !r) Problem(r.error());
    }
  }

  // 2. lp_metadata. Without it (unreadable) nothing is judged an orphan.
  void ReadLp() {
    auto md = impl_.ReadLp();
    if (md) {
      md_ = std::move(*md);
      lp_readable_ = true;
    } else {
      Problem(md.error().Wrap("recover: orphan files are kept"));
    }
  }

  // 3. Images whose create-and-fill (import, create with zero-fill) was interrupted: they were
  // never handed out complete, so they go, devices first.
  Result<void> RemoveIncompleteImages() {
    if (!lp_readable_) return Ok();
    const auto files = IMAGED_TRY_CTX(impl_.metadata.List(), "recover");
    bool removed_any = false;
    for (const auto& name : ImagesWith(imageset::MetadataFile::Kind::kIncompleteMarker, files)) {
      auto undo = [&]() -> Result<void> {
        IMAGED_TRY(impl_.TearDown(name));
        IMAGED_TRY(metadata::RemoveStatusFile(impl_.metadata, imageset::StatusFileName(name)));
        if (InLp(name) || impl_.data.Exists(imageset::ListFileName(name))) {
          auto deleted = impl_.DeleteLocked(name);
          if (!deleted && deleted.error().code != ENOENT) return deleted;
        }
        return impl_.ClearIncomplete(name);
      };
      if (auto r = undo(); !r) {
        Problem(r.error().Wrap(fmt::format("recover: remove incomplete image \"{}\"", name)));
        continue;
      }
      AddUnique(report_.torn_down, name);
      removed_any = true;
    }
    if (removed_any) md_ = IMAGED_TRY_CTX(impl_.ReadLp(), "recover");
    return Ok();
  }

  // 4. Status files: adopt what exists and matches, tear the rest down.
  Result<void> ReconcileStatusFiles(const manager::KernelView& kernel) {
    const auto files = IMAGED_TRY_CTX(impl_.metadata.List(), "recover");
    for (const auto& name : ImagesWith(imageset::MetadataFile::Kind::kStatus, files)) {
      with_status_.insert(name);
      const std::string status = imageset::StatusFileName(name);
      auto entries = metadata::ReadStatusFile(impl_.metadata, status);
      if (entries && md_) {
        auto matches = impl_.MappingMatches(name, *entries, *md_, kernel);
        if (matches && *matches) {
          report_.adopted.push_back(name);
          for (const auto& e : *entries) {
            if (e.kind == StatusEntry::Kind::Loop) adopted_loops_.insert(e.value);
          }
          continue;
        }
      }
      if (auto torn = impl_.TearDown(name); !torn) {
        Problem(torn.error().Wrap(
            fmt::format("recover \"{}\": keeping \"{}\"", name, impl_.metadata.PathOf(status))));
        continue;
      }
      if (auto r = metadata::RemoveStatusFile(impl_.metadata, status); !r) Problem(r.error());
      report_.torn_down.push_back(name);
    }
    return Ok();
  }

  // 5. dm devices of images with no status file: imaged-init maps at boot without one.
  void AdoptBootMappings(const manager::KernelView& kernel) {
    if (!md_) return;
    for (const auto& p : md_->partitions) {
      if (with_status_.count(p.name) || !kernel.HasDm(impl_.dm_name(p.name))) continue;
      auto matches = impl_.DmLinearMatches(p.name, *md_);
      if (matches && *matches) {
        auto written = metadata::WriteStatusFile(impl_.metadata, imageset::StatusFileName(p.name),
                                                 {{StatusEntry::Kind::Dm, impl_.dm_name(p.name)}});
        if (written) {
          report_.adopted.push_back(p.name);
          continue;
        }
        Problem(written.error());
      }
      // Ours by name but not what lp_metadata describes: it may point at freed blocks.
      if (auto torn = impl_.TearDown(p.name); !torn) {
        Problem(torn.error().Wrap(fmt::format("recover \"{}\"", p.name)));
      } else {
        AddUnique(report_.torn_down, p.name);
      }
    }
  }

  // 6. Loops holding a piece of ours that no adopted status file lists (a crash between
  // attaching a loop and recording it, or a torn-down mapping's stragglers).
  Result<void> DetachStrayLoops(const manager::KernelView& kernel) {
    std::set<std::string> names;
    if (md_) {
      for (const auto& p : md_->partitions) names.insert(p.name);
    }
    for (const auto& file : IMAGED_TRY_CTX(impl_.data.List(), "recover")) {
      if (auto f = imageset::ClassifyDataFile(file)) names.insert(f->image);
    }
    for (const auto& name : names) {
      auto ids = impl_.PieceIds(name);
      if (!ids) {
        Problem(ids.error());
        continue;
      }
      for (const auto& id : *ids) {
        for (const auto& loop : kernel.LoopsOf(id)) {
          if (adopted_loops_.count(loop)) continue;
          if (auto r = dm::LoopDevice::DetachPath(loop); !r) {
            Problem(r.error().Wrap(fmt::format("recover \"{}\": detach {}", name, loop)));
          } else {
            AddUnique(report_.torn_down, name);
          }
        }
      }
    }
    return Ok();
  }

  // 7. Orphan files: whole sets with no lp_metadata entry (interrupted create or delete), and
  // pieces an image's list file does not name (interrupted resize).
  Result<void> RemoveOrphanFiles() {
    if (!lp_readable_) return Ok();
    std::map<std::string, std::vector<imageset::DataFile>> files_by_image;
    for (const auto& file : IMAGED_TRY_CTX(impl_.data.List(), "recover")) {
      if (auto f = imageset::ClassifyDataFile(file)) files_by_image[f->image].push_back(*f);
    }
    for (const auto& [name, files] : files_by_image) {
      // The set lock is exclusive, so no one else holds this; try-lock anyway in case a process
      // that predates the set lock is still around.
      auto lock = FileLock::TryAcquire(impl_.locks, imageset::ImageLockName(name), true);
      if (!lock || !lock->held()) continue;
      if (InLp(name)) {
        RemoveUnlistedPieces(name, files);
      } else {
        RemoveOrphanImage(name, files);
      }
    }
    (void)impl_.data.Sync();
    return Ok();
  }

  void RemoveOrphanImage(const std::string& name, const std::vector<imageset::DataFile>& files) {
    const std::string list = imageset::ListFileName(name);
    if (auto r = fiemap::SplitFiemap::Remove(impl_.data, list); !r) {
      Problem(r.error().Wrap(fmt::format("recover: remove orphan \"{}\"", name)));
      return;
    }
    for (const auto& f : files) {
      report_.removed_orphans.push_back(
          f.kind == imageset::DataFile::Kind::kList ? list : fiemap::PieceName(list, f.piece));
    }
  }

  void RemoveUnlistedPieces(const std::string& name, const std::vector<imageset::DataFile>& files) {
    const std::string list = imageset::ListFileName(name);
    auto listed = fiemap::SplitFiemap::ListPieces(impl_.data, list);
    if (!listed) return;  // an image with a broken list file: Validate reports it
    for (const auto& f : files) {
      if (f.kind != imageset::DataFile::Kind::kPiece || f.piece < listed->size()) continue;
      const std::string piece = fiemap::PieceName(list, f.piece);
      if (auto r = fiemap::FiemapWriter::Remove(impl_.data, piece); r && *r) {
        report_.removed_orphans.push_back(piece);
      } else if (!r) {
        Problem(r.error().Wrap("recover"));
      }
    }
  }

  // 8. Lock files of names with no image (left by a process killed in a failed create).
  void RemoveUnusedLocks() {
    if (!lp_readable_) return;
    auto names = impl_.locks.List();
    if (!names) return Problem(names.error());
    for (const auto& name : *names) {
      if (!imageset::ValidateImageName(name) || InLp(name)) continue;
      if (impl_.data.Exists(imageset::ListFileName(name))) continue;
      auto lock = FileLock::TryAcquire(impl_.locks, name, true);
      if (lock && lock->held()) (void)impl_.locks.RemoveFile(name);
    }
  }

  ImageManager::Impl& impl_;
  RecoveryReport report_;
  std::optional<metadata::LpMetadata> md_;
  bool lp_readable_ = false;
  std::set<std::string> with_status_;
  std::set<std::string> adopted_loops_;
};

}  // namespace

Result<bool> ImageManager::Impl::DmLinearMatches(std::string_view name,
                                                 const metadata::LpMetadata& md) {
  const auto* p = metadata::FindPartition(md, name);
  if (!p) return false;
  dm::DeviceMapper* mapper = IMAGED_TRY(Dm());
  Image image;
  image.partition = *p;
  image.extents = metadata::PartitionExtents(md, *p);
  image.size = metadata::PartitionSizeBytes(md, *p);
  // The blocks must still be the file's (SAFETY RULE), and the table exactly Map's.
  if (!CheckExtentsLocked(name, image)) return false;
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  const std::string device = dm::DeviceMapper::DeviceString(fs.disk_dev);
  // Map's table, or the same read-only: a mapping more restrictive than Map's (imaged-init
  // --readonly) is still a true view of the image.
  for (bool readonly : {image.readonly(), true}) {
    const dm::Table expected = IMAGED_TRY(imageset::TableFromLp(md, *p, device, readonly));
    if (IMAGED_TRY(imageset::MappingMatches(*mapper, dm_name(name), expected))) return true;
  }
  return false;
}

Result<bool> ImageManager::Impl::LoopsMatch(std::string_view name,
                                            const std::vector<std::string>& loops, bool dm_joined,
                                            const metadata::LpMetadata& md,
                                            const manager::KernelView& kernel) {
  const auto* p = metadata::FindPartition(md, name);
  auto pieces = fiemap::SplitFiemap::ListPieces(data, imageset::ListFileName(name));
  if (!p || !pieces || loops.size() != pieces->size()) return false;
  // Exactly one recorded loop per piece, each holding that piece.
  std::vector<uint64_t> sizes;
  std::vector<dev_t> devs;
  for (size_t i = 0; i < loops.size(); ++i) {
    auto st = IMAGED_TRY(data.Stat((*pieces)[i]));
    if (!st || !S_ISREG(st->st_mode)) return false;
    if (kernel.BackingOf(loops[i]) != manager::FileId{st->st_dev, st->st_ino}) return false;
    struct stat loop {};
    if (stat(loops[i].c_str(), &loop) != 0) return false;
    sizes.push_back(static_cast<uint64_t>(st->st_size));
    devs.push_back(loop.st_rdev);
  }
  const bool dm_live = kernel.HasDm(dm_name(name));
  if (pieces->size() == 1) return !dm_joined && !dm_live;
  if (!dm_joined || !dm_live) return false;
  dm::DeviceMapper* mapper = IMAGED_TRY(Dm());
  const uint64_t size = metadata::PartitionSizeBytes(md, *p);
  const dm::Table expected = imageset::JoinTable(sizes, devs, size, imageset::IsReadonly(*p));
  return imageset::MappingMatches(*mapper, dm_name(name), expected);
}

Result<bool> ImageManager::Impl::MappingMatches(std::string_view name,
                                                const std::vector<StatusEntry>& entries,
                                                const metadata::LpMetadata& md,
                                                const manager::KernelView& kernel) {
  if (!metadata::FindPartition(md, name) || entries.empty()) return false;
  const std::string dm_dev = dm_name(name);
  bool dm_entry = false;
  std::vector<std::string> loops;
  for (const auto& e : entries) {
    if (e.kind == StatusEntry::Kind::Dm) {
      if (e.value != dm_dev || dm_entry) return false;
      dm_entry = true;
    } else {
      loops.push_back(e.value);
    }
  }
  if (dm_entry != kernel.HasDm(dm_dev)) return false;
  if (loops.empty()) return DmLinearMatches(name, md);
  return LoopsMatch(name, loops, dm_entry, md, kernel);
}

Result<RecoveryReport> ImageManager::Recover() {
  // Exclusive: no operation of any process is half-way while we judge what is left over.
  auto set_lock =
      IMAGED_TRY_CTX(FileLock::Acquire(impl_->locks, imageset::kSetLock, true), "recover");
  manager::ChangeNote change(&impl_->list_cache);  // declared after the lock: invalidates first
  return Recovery(*impl_).Run();
}

}  // namespace imaged
