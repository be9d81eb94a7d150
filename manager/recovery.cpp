// Recover: bring the image set and the kernel's devices back in line after a crash or a boot.
// See docs/crash-safety.md for the states each operation can leave behind.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>

#include "dm/loop_device.h"
#include "internal.h"
#include "metadata/atomic_file.h"

namespace imaged {
using manager::RoundUp;

using manager::FileLock;
using metadata::StatusEntry;

namespace {

Result<std::vector<std::string>> ListDir(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir);
  if (!d) return ErrnoError("open directory \"{}\"", dir);
  std::vector<std::string> names;
  while (dirent* e = readdir(d.get())) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(std::move(n));
  }
  std::sort(names.begin(), names.end());
  return names;
}

// "<name>.img" -> name; "<name>.img.NNNN" -> name (piece = true). nullopt for anything else.
std::optional<std::string> ImageOfDataFile(const std::string& file, bool* piece) {
  std::string_view f = file;
  *piece = false;
  if (f.size() > 9 && f[f.size() - 5] == '.' &&
      std::all_of(f.end() - 4, f.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
      f.substr(0, f.size() - 5).ends_with(".img")) {
    *piece = true;
    f = f.substr(0, f.size() - 5);
  }
  if (!f.ends_with(".img") || f.size() == 4) return std::nullopt;
  std::string name(f.substr(0, f.size() - 4));
  if (!ValidateImageName(name)) return std::nullopt;
  return name;
}

// SplitFiemap's list-file temp: ".<name>.img.tmp.XXXXXX".
bool IsListTempFile(const std::string& file) {
  if (!file.starts_with(".")) return false;
  auto pos = file.rfind(".img.tmp.");
  if (pos == std::string::npos || pos < 2) return false;
  return file.size() == pos + 9 + 6 && ValidateImageName(file.substr(1, pos - 1)).has_value();
}

}  // namespace

Result<bool> ImageManager::Impl::DmLinearMatches(std::string_view name,
                                                 const metadata::LpMetadata& md) {
  const auto* p = metadata::FindPartition(md, name);
  if (!p) return false;
  const std::string dm_dev = dm_name(name);
  dm::DeviceMapper* mapper = IMAGED_TRY(Dm());
  auto info = IMAGED_TRY(mapper->Info(dm_dev));
  if (!info) return false;
  // The blocks must still be the file's (SAFETY RULE), and the table exactly Map's.
  if (!CheckExtentsLocked(name, md)) return false;
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(options.data_dir));
  const bool readonly = (p->attributes & metadata::kPartitionAttrReadonly) != 0;
  const dm::Table expected =
      manager::DmLinearTable(metadata::PartitionExtents(md, *p), fs.disk_dev, readonly);
  const auto live = IMAGED_TRY(mapper->GetTable(dm_dev));
  if (live.size() != expected.targets().size()) return false;
  for (size_t i = 0; i < live.size(); ++i) {
    const auto& t = *expected.targets()[i];
    if (live[i].start != t.start() || live[i].length != t.length() || live[i].type != t.type() ||
        live[i].params != t.params()) {
      return false;
    }
  }
  return true;
}

Result<bool> ImageManager::Impl::MappingMatches(std::string_view name,
                                                const std::vector<StatusEntry>& entries,
                                                const std::vector<std::string>& pieces,
                                                const metadata::LpMetadata& md) {
  if (!metadata::FindPartition(md, name) || entries.empty()) return false;
  const std::string dm_dev = dm_name(name);
  bool dm_entry = false;
  std::vector<std::string> loop_entries;
  for (const auto& e : entries) {
    if (e.kind == StatusEntry::Kind::Dm) {
      if (e.value != dm_dev || dm_entry) return false;
      dm_entry = true;
    } else {
      loop_entries.push_back(e.value);
    }
  }
  const bool dm_live = IMAGED_TRY(DmExists(dm_dev));
  if (dm_entry != dm_live) return false;
  if (loop_entries.empty()) return DmLinearMatches(name, md);

  // Loop strategy: exactly one recorded loop per piece, each backed by that piece.
  if (loop_entries.size() != pieces.size()) return false;
  for (size_t i = 0; i < pieces.size(); ++i) {
    auto backing = dm::LoopDevice::FindByBackingFile(pieces[i]);
    if (!backing) return false;
    if (std::find(backing->begin(), backing->end(), loop_entries[i]) == backing->end()) {
      return false;
    }
  }
  if (pieces.size() == 1) return !dm_live;
  if (!dm_live) return false;
  auto* mapper = IMAGED_TRY(Dm());
  auto under = IMAGED_TRY(mapper->GetUnderlyingDevices(dm_dev));
  std::set<std::string> want, have(under.begin(), under.end());
  for (const auto& l : loop_entries) want.insert(manager::Basename(l));
  return want == have;
}

Result<RecoveryReport> ImageManager::Recover() {
  auto& impl = *impl_;
  const auto& opt = impl.options;
  // Exclusive: no operation of any process is half-way while we judge what is left over.
  auto set_lock = IMAGED_TRY_CTX(FileLock::Acquire(impl.set_lock_path(), true), "recover");
  manager::ChangeNote change(&impl.list_cache);  // declared after the lock: invalidates first
  RecoveryReport report;
  auto problem = [&](const Error& e) { report.problems.push_back(e.ToString()); };
  auto add_unique = [](std::vector<std::string>& v, const std::string& s) {
    if (std::find(v.begin(), v.end(), s) == v.end()) v.push_back(s);
  };

  if (auto r = metadata::CleanupTempFiles(opt.metadata_dir); !r) problem(r.error());
  if (auto r = metadata::CleanupTempFiles(opt.data_dir); !r) problem(r.error());

  auto md_read = impl.ReadLp();
  std::optional<metadata::LpMetadata> md;
  if (md_read) {
    md = std::move(*md_read);
  } else {
    problem(md_read.error().Wrap("recover: orphan files are kept"));
  }
  auto in_lp = [&](const std::string& name) {
    return md && metadata::FindPartition(*md, name) != nullptr;
  };
  auto pieces_of = [&](const std::string& name) {
    auto listed = fiemap::SplitFiemap::ListPieces(impl.list_path(name));
    return listed ? std::move(*listed) : std::vector<std::string>{};
  };

  auto meta_files = IMAGED_TRY_CTX(ListDir(opt.metadata_dir), "recover");

  // 0. Images whose create-and-fill (import, create with zero-fill) was interrupted: they were
  // never handed out complete, so they go, devices first. Needs a readable lp_metadata (an
  // image it does not list is removed as an orphan below anyway).
  if (md) {
    bool removed_any = false;
    for (const auto& file : meta_files) {
      if (!file.ends_with(".incomplete")) continue;
      const std::string name = file.substr(0, file.size() - 11);
      if (!ValidateImageName(name)) continue;
      auto undo = [&]() -> Result<void> {
        auto entries = metadata::ReadStatusFile(impl.status_path(name));
        IMAGED_TRY(impl.TearDown(name, entries ? *entries : std::vector<StatusEntry>{},
                                 pieces_of(name)));
        IMAGED_TRY(metadata::RemoveStatusFile(impl.status_path(name)));
        if (in_lp(name) || manager::PathExists(impl.list_path(name))) {
          auto deleted = impl.DeleteLocked(name);
          if (!deleted && deleted.error().code != ENOENT) return deleted;
        }
        return impl.ClearIncomplete(name);
      };
      if (auto r = undo(); !r) {
        problem(r.error().Wrap(fmt::format("recover: remove incomplete image \"{}\"", name)));
        continue;
      }
      add_unique(report.torn_down, name);
      removed_any = true;
    }
    if (removed_any) {
      auto reread = impl.ReadLp();
      if (!reread) return std::move(reread).error().Wrap("recover");
      md = std::move(*reread);
      meta_files = IMAGED_TRY_CTX(ListDir(opt.metadata_dir), "recover");
    }
  }

  // 1. Status files: adopt what exists and matches, tear the rest down.
  std::map<std::string, std::vector<std::string>> adopted_loops;
  std::set<std::string> with_status;
  for (const auto& file : meta_files) {
    if (!file.ends_with(".status")) continue;
    const std::string name = file.substr(0, file.size() - 7);
    if (!ValidateImageName(name)) continue;
    with_status.insert(name);
    const std::string status = impl.status_path(name);
    auto entries = metadata::ReadStatusFile(status);
    const auto pieces = pieces_of(name);
    if (entries && md) {
      auto matches = impl.MappingMatches(name, *entries, pieces, *md);
      if (matches && *matches) {
        report.adopted.push_back(name);
        for (const auto& e : *entries) {
          if (e.kind == StatusEntry::Kind::Loop) adopted_loops[name].push_back(e.value);
        }
        continue;
      }
    }
    auto torn = impl.TearDown(name, entries ? *entries : std::vector<StatusEntry>{}, pieces);
    if (!torn) {
      problem(torn.error().Wrap(fmt::format("recover \"{}\": keeping \"{}\"", name, status)));
      continue;
    }
    if (auto r = metadata::RemoveStatusFile(status); !r) problem(r.error());
    report.torn_down.push_back(name);
  }

  // 2. dm devices of images with no status file: imaged-init maps at boot without one.
  if (md && manager::DeviceMapperAvailable()) {
    for (const auto& p : md->partitions) {
      if (with_status.count(p.name)) continue;
      auto exists = impl.DmExists(impl.dm_name(p.name));
      if (!exists) {
        problem(exists.error());
        continue;
      }
      if (!*exists) continue;
      auto matches = impl.DmLinearMatches(p.name, *md);
      if (matches && *matches) {
        auto written = metadata::WriteStatusFile(impl.status_path(p.name),
                                                 {{StatusEntry::Kind::Dm, impl.dm_name(p.name)}});
        if (written) {
          report.adopted.push_back(p.name);
          continue;
        }
        problem(written.error());
      }
      // Ours by name but not what lp_metadata describes: it may point at freed blocks.
      auto torn = impl.TearDown(p.name, {}, {});
      if (!torn) {
        problem(torn.error().Wrap(fmt::format("recover \"{}\"", p.name)));
      } else {
        add_unique(report.torn_down, p.name);
      }
    }
  }

  // 3. Loops over our pieces that no adopted status file lists (a crash between attaching a loop
  // and recording it, or a torn-down mapping's stragglers).
  std::set<std::string> names;
  if (md) {
    for (const auto& p : md->partitions) names.insert(p.name);
  }
  auto data_files = ListDir(opt.data_dir);
  if (!data_files) {
    problem(data_files.error());
  } else {
    for (const auto& f : *data_files) {
      bool piece;
      if (auto name = ImageOfDataFile(f, &piece)) names.insert(*name);
    }
  }
  for (const auto& name : names) {
    std::vector<std::string> pieces = pieces_of(name);
    // Also pieces not (or no longer) in the list file.
    if (data_files) {
      for (const auto& f : *data_files) {
        bool piece;
        auto n = ImageOfDataFile(f, &piece);
        const std::string path = opt.data_dir + "/" + f;
        if (piece && n && *n == name &&
            std::find(pieces.begin(), pieces.end(), path) == pieces.end()) {
          pieces.push_back(path);
        }
      }
    }
    auto loops = impl.LoopsBacking(pieces);
    if (!loops) {
      problem(loops.error());
      continue;
    }
    const auto& keep = adopted_loops[name];
    for (const auto& l : *loops) {
      if (std::find(keep.begin(), keep.end(), l) != keep.end()) continue;
      if (auto r = dm::LoopDevice::DetachPath(l); !r) {
        problem(r.error().Wrap(fmt::format("recover \"{}\": detach {}", name, l)));
      } else {
        add_unique(report.torn_down, name);
      }
    }
  }

  // 4. Orphan files: whole sets with no lp_metadata entry (interrupted create or delete), and
  // pieces an image's list file does not name (interrupted resize). Needs a readable lp_metadata.
  if (md && data_files) {
    std::map<std::string, std::vector<std::string>> files_by_name;
    for (const auto& f : *data_files) {
      if (IsListTempFile(f)) {
        if (unlink((opt.data_dir + "/" + f).c_str()) == 0) report.removed_orphans.push_back(f);
        continue;
      }
      bool piece;
      if (auto n = ImageOfDataFile(f, &piece)) files_by_name[*n].push_back(f);
    }
    for (const auto& [name, files] : files_by_name) {
      // Set lock is exclusive, so no one else can hold this; try-lock anyway in case a process
      // that predates the set lock is still around.
      auto lock = FileLock::TryAcquire(impl.lock_path(name), true);
      if (!lock || !lock->held()) continue;
      if (!in_lp(name)) {
        if (auto r = fiemap::SplitFiemap::Remove(impl.list_path(name)); !r) {
          problem(r.error().Wrap(fmt::format("recover: remove orphan \"{}\"", name)));
          continue;
        }
        for (const auto& f : files) {
          if (!manager::PathExists(opt.data_dir + "/" + f)) report.removed_orphans.push_back(f);
        }
        continue;
      }
      auto listed = fiemap::SplitFiemap::ListPieces(impl.list_path(name));
      if (!listed) continue;  // an image with a broken list file: Validate reports it
      for (const auto& f : files) {
        const std::string path = opt.data_dir + "/" + f;
        if (f == name + ".img") continue;
        if (std::find(listed->begin(), listed->end(), path) != listed->end()) continue;
        if (unlink(path.c_str()) == 0) {
          report.removed_orphans.push_back(f);
        } else {
          problem(ErrnoError("recover: remove \"{}\"", path));
        }
      }
    }
    (void)metadata::FsyncDirectory(opt.data_dir);
  }
  return report;
}

}  // namespace imaged
