// Recover: bring the image set and the kernel's devices back in line after a crash or a boot,
// one phase after the other (docs/crash-safety.md, "Recover, step by step").
#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <set>

#include <fmt/ranges.h>
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
    IMAGED_TRY(ReadLp());
    if (report_.refused) return std::move(report_);
    IMAGED_TRY(ResolveIntents());
    auto kernel = IMAGED_TRY(impl_.ScanKernel());
    IMAGED_TRY(ReconcileStatusFiles(kernel));
    AdoptBootMappings(kernel);
    kernel = IMAGED_TRY(impl_.ScanKernel());
    IMAGED_TRY(DetachStrayLoops(kernel));
    IMAGED_TRY(ReportUnexplainedFiles());
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

  // 2. lp_metadata. Unreadable, or missing while the data dir holds images (the metadata fs
  // not mounted, a wrong --metadata-dir): nothing may be changed, since nothing can be judged.
  Result<void> ReadLp() {
    auto md = imageset::ReadLpMetadata(impl_.metadata);
    if (!md) {
      report_.refused = fmt::format(
          "{}; nothing is changed until it is repaired (imagectl rebuild-metadata rebuilds it "
          "from the images' files)",
          md.error().ToString());
      return Ok();
    }
    md_ = std::move(*md);
    if (md_) return Ok();
    std::set<std::string> images;
    for (const auto& file : IMAGED_TRY_CTX(impl_.data.List(), "recover")) {
      if (auto f = imageset::ClassifyDataFile(file)) images.insert(f->image);
    }
    if (images.empty()) return Ok();  // a new, empty set
    std::string names;
    for (const auto& name : images) names += (names.empty() ? "" : ", ") + name;
    report_.refused = fmt::format(
        "no lp_metadata in \"{}\", but \"{}\" holds images ({}): is the right metadata dir "
        "mounted? Nothing is changed; imagectl rebuild-metadata rebuilds lp_metadata from the "
        "images' files",
        impl_.metadata.path(), impl_.data.path(), names);
    return Ok();
  }

  // 3. Operations a crash interrupted, each by its intent: rolled back, or finished.
  Result<void> ResolveIntents() {
    const auto files = IMAGED_TRY_CTX(impl_.metadata.List(), "recover");
    bool changed = false;
    for (const auto& name : ImagesWith(imageset::MetadataFile::Kind::kIntent, files)) {
      auto intent = impl_.ReadIntent(name);
      auto resolved = intent ? Resolve(name, **intent) : Result<void>(intent.error());
      if (resolved) resolved = impl_.ClearIntent(name);
      if (!resolved) {
        Problem(resolved.error().Wrap(fmt::format("recover: intent of \"{}\" kept", name)));
        continue;
      }
      changed = true;
    }
    if (changed) md_ = IMAGED_TRY_CTX(imageset::ReadLpMetadata(impl_.metadata), "recover");
    return Ok();
  }

  Result<void> Resolve(const std::string& name, const manager::Intent& intent) {
    using Op = manager::Intent::Op;
    const std::string list = imageset::ListFileName(name);
    switch (intent.op) {
      case Op::kCreate:
        if (InLp(name)) return Ok();  // it got as far as lp_metadata: complete
        [[fallthrough]];
      case Op::kFill:
      case Op::kDelete: {
        // Never handed out complete, or on its way out: devices first, then everything.
        IMAGED_TRY(impl_.TearDown(name));
        auto deleted = impl_.DeleteLocked(name);
        if (!deleted && deleted.error().code != ENOENT) return deleted;
        IMAGED_TRY(fiemap::SplitFiemap::Remove(impl_.data, list));
        IMAGED_TRY(metadata::RemoveStatusFile(impl_.metadata, imageset::StatusFileName(name)));
        AddUnique(report_.torn_down, name);
        return Ok();
      }
      case Op::kGrow: {
        const auto* p = md_ ? metadata::FindPartition(*md_, name) : nullptr;
        if (!p) return Ok();
        // lp_metadata has the new size: the grow is finished by bringing a live mapping up to
        // it (before step 4 judges the mapping). Else the old size is what is recorded, and the
        // pieces go back to what they were (a live mapping never saw the new ones).
        if (metadata::PartitionSizeBytes(*md_, *p) != intent.old_size) {
          return impl_.GrowMappingLocked(name);
        }
        return fiemap::SplitFiemap::CutTo(impl_.data, list, intent.cut_pieces,
                                          intent.cut_last_piece);
      }
      case Op::kShrink: {
        const auto* p = md_ ? metadata::FindPartition(*md_, name) : nullptr;
        // lp_metadata still has the old size: nothing was cut yet. Else nothing maps the cut
        // blocks any more, and the cut is finished.
        if (!p || metadata::PartitionSizeBytes(*md_, *p) == intent.old_size) return Ok();
        return fiemap::SplitFiemap::CutTo(impl_.data, list, intent.cut_pieces,
                                          intent.cut_last_piece);
      }
    }
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
      if (!imageset::IsImageName(p.name) || with_status_.count(p.name) ||
          !kernel.HasDm(impl_.dm_name(p.name))) {
        continue;
      }
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

  // 6. Loops holding a piece of an image of ours that no adopted status file lists (a crash between
  // attaching a loop and recording it, or a torn-down mapping's stragglers).
  Result<void> DetachStrayLoops(const manager::KernelView& kernel) {
    // Only images lp_metadata lists: the files of others are not known to be ours (step 7).
    std::set<std::string> names;
    if (md_) {
      for (const auto& p : md_->partitions) {
        if (imageset::IsImageName(p.name)) names.insert(p.name);
      }
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

  // 7. Files no intent explains: an image's files with no lp_metadata entry, pieces its list
  // file does not name. Nothing proves they are an abandoned step of ours, so they stay and
  // are reported.
  Result<void> ReportUnexplainedFiles() {
    std::map<std::string, std::vector<std::string>> files_by_image;
    for (const auto& file : IMAGED_TRY_CTX(impl_.data.List(), "recover")) {
      if (auto f = imageset::ClassifyDataFile(file)) files_by_image[f->image].push_back(file);
    }
    for (const auto& [name, files] : files_by_image) {
      std::vector<std::string> unexplained;
      if (!InLp(name)) {
        unexplained = files;
      } else if (auto listed =
                     fiemap::SplitFiemap::ListPieces(impl_.data, imageset::ListFileName(name))) {
        for (const auto& f : files) {
          if (f != imageset::ListFileName(name) &&
              std::find(listed->begin(), listed->end(), f) == listed->end()) {
            unexplained.push_back(f);
          }
        }
      }
      for (const auto& f : unexplained) report_.kept.push_back(f);
      if (!unexplained.empty()) {
        Problem(MakeError(0,
                          "kept {} file(s) of \"{}\" that {}: {} (imagectl rebuild-metadata "
                          "adopts whole images; delete removes them)",
                          unexplained.size(), name,
                          InLp(name) ? "its list file does not name"
                                     : "lp_metadata does not list and no operation explains",
                          fmt::join(unexplained, ", ")));
      }
    }
    return Ok();
  }

  // 8. Lock files of names with no image (left by a process killed in a failed create).
  void RemoveUnusedLocks() {
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
  if (pieces->size() == 1) {
    // The loop is the device: exactly the image (a grow a crash interrupted leaves it short).
    if (dm_joined || dm_live) return false;
    auto bytes = dm::LoopDevice::SizeOf(loops.front());
    return bytes && *bytes == metadata::PartitionSizeBytes(md, *p);
  }
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
  // Judged afresh: lp_metadata may be back (the metadata fs mounted meanwhile).
  impl_->SetRefusal(std::nullopt);
  auto report = Recovery(*impl_).Run();
  impl_->SetRefusal(report ? report->refused : std::optional<std::string>());
  return report;
}

std::optional<std::string> ImageManager::Refusal() const {
  std::lock_guard<std::mutex> guard(impl_->refusal_mu);
  return impl_->refusal;
}

}  // namespace imaged
