#include "init/commands.h"

#include <algorithm>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "dm/device_mapper.h"
#include "imaged/common/size.h"
#include "init/offline_fs.h"
#include "metadata/status_file.h"

namespace imaged::init {
namespace {

using metadata::LpMetadata;
using metadata::Partition;

constexpr std::string_view kTool = "imaged-init";

Result<LpMetadata> LoadMetadata(const Options& options) {
  LpMetadata md = IMAGED_TRY(metadata::ReadImageFile(options.metadata_dir + "/lp_metadata"));
  if (md.block_devices.empty()) {
    return MakeError(EINVAL, "\"{}/lp_metadata\" has no block device entry", options.metadata_dir);
  }
  return md;
}

struct Selection {
  std::vector<const Partition*> partitions;
  bool explicit_names = false;
  int unknown = 0;
};

// The partitions named on the command line (each unknown name is an error), else all of them.
Selection Select(const LpMetadata& md, const Options& options, std::ostream& err,
                 std::string_view verb) {
  Selection s;
  s.explicit_names = !options.names.empty();
  if (!s.explicit_names) {
    for (const auto& p : md.partitions) s.partitions.push_back(&p);
    return s;
  }
  std::set<std::string> seen;
  for (const auto& name : options.names) {
    if (!seen.insert(name).second) continue;
    const Partition* p = metadata::FindPartition(md, name);
    if (p == nullptr) {
      err << kTool << ": " << verb << " \"" << name << "\": no such image in lp_metadata\n";
      ++s.unknown;
      continue;
    }
    s.partitions.push_back(p);
  }
  return s;
}

std::string StatusPath(const Options& options, const std::string& image) {
  return options.metadata_dir + "/" + image + ".status";
}

// The kernel's view of a table matches ours when every target has the same range, type and
// parameters ("major:minor offset" for linear, which is how we build them).
Result<bool> SameTable(dm::DeviceMapper& dm, const std::string& name, const dm::Table& table) {
  auto live = IMAGED_TRY(dm.GetTable(name));
  if (live.size() != table.targets().size()) return false;
  for (size_t i = 0; i < live.size(); ++i) {
    const auto& t = *table.targets()[i];
    if (live[i] != dm::TargetInfo{t.start(), t.length(), t.type(), t.params()}) return false;
  }
  auto info = IMAGED_TRY(dm.Info(name));
  return info && info->readonly == table.readonly();
}

// Creates `name` with `table`; an existing device with the same table is fine (returns "").
Result<std::string> MapOne(dm::DeviceMapper& dm, const std::string& name, const dm::Table& table,
                           const std::set<std::string>& existing) {
  if (existing.count(name)) {
    if (!IMAGED_TRY(SameTable(dm, name, table))) {
      return MakeError(EEXIST, "dm device \"{}\" already exists with a different table", name);
    }
    return std::string();
  }
  return dm.Create(name, table);
}

}  // namespace

std::string DmName(const std::string& prefix, const std::string& image) {
  return prefix + image;
}

Result<dm::Table> BuildTable(const LpMetadata& md, const Partition& partition,
                             const std::string& table_device, bool readonly) {
  auto extents = metadata::PartitionExtents(md, partition);
  if (extents.empty()) return MakeError(EINVAL, "image \"{}\" has no extents", partition.name);
  dm::Table table;
  uint64_t start = 0;
  for (size_t i = 0; i < extents.size(); ++i) {
    const auto& e = extents[i];
    if (e.num_sectors == 0) {
      return MakeError(EINVAL, "image \"{}\": extent {} is empty", partition.name, i);
    }
    if (e.target_type == metadata::kTargetTypeLinear) {
      if (e.target_source != 0) {
        return MakeError(EINVAL, "image \"{}\": extent {} is on block device {}, not the data disk",
                         partition.name, i, e.target_source);
      }
      table.Emplace<dm::LinearTarget>(start, e.num_sectors, table_device, e.target_data);
    } else if (e.target_type == metadata::kTargetTypeZero) {
      table.Emplace<dm::ZeroTarget>(start, e.num_sectors);
    } else {
      return MakeError(EINVAL, "image \"{}\": extent {} has unknown target type {}", partition.name,
                       i, e.target_type);
    }
    start += e.num_sectors;
  }
  table.set_readonly(readonly || (partition.attributes & metadata::kPartitionAttrReadonly));
  return table;
}

int RunMap(const Options& options, std::ostream& out, std::ostream& err, const DiskLookup& lookup) {
  auto md = LoadMetadata(options);
  if (!md) {
    err << kTool << ": map: " << md.error().ToString() << "\n";
    return 1;
  }
  Selection sel = Select(*md, options, err, "map");
  int failed = sel.unknown;

  auto disk = ResolveDataDisk(md->block_devices[0], options.data_device, lookup);
  if (!disk) {
    err << kTool << ": map: " << disk.error().ToString() << "\n";
    return 1;
  }
  if (!disk->is_block_device) {
    err << kTool << ": map: \"" << disk->path << "\" is not a block device\n";
    return 1;
  }

  std::unique_ptr<OfflineFs> fs;
  if (options.verify != VerifyMode::kOff) {
    Unverifiable why = Unverifiable::kNone;
    auto opened = OfflineFs::Open(disk->path, options.fs_offset, &why);
    if (opened) {
      fs = std::move(*opened);
    } else if (options.verify == VerifyMode::kOn) {
      err << kTool << ": map: --verify: cannot check the data filesystem, mapping nothing: "
          << opened.error().ToString() << "\n";
      return 1;
    } else {
      err << kTool << ": warning: mapping without verification: " << opened.error().ToString()
          << "\n";
    }
  }

  dm::DeviceMapper dm;
  auto listed = dm.List();
  if (!listed) {
    err << kTool << ": map: " << listed.error().ToString() << "\n";
    return 1;
  }
  std::set<std::string> existing;
  for (const auto& info : *listed) existing.insert(info.name);

  if (!options.passthrough.empty()) {
    // First, so that the data filesystem can be mounted even when some image fails.
    dm::Table whole;
    whole.Emplace<dm::LinearTarget>(0, disk->size / metadata::kSectorSize, disk->table_device, 0);
    auto done = MapOne(dm, options.passthrough, whole, existing);
    if (!done) {
      err << kTool << ": map passthrough \"" << options.passthrough
          << "\": " << done.error().ToString() << "\n";
      ++failed;
    } else {
      out << "data disk: " << (done->empty() ? "already mapped at " : "mapped at ")
          << dm::DeviceMapper::DevicePath(options.passthrough) << "\n";
    }
  }

  for (const Partition* p : sel.partitions) {
    const std::string& name = p->name;
    const std::string dm_name = DmName(options.prefix, name);
    auto fail = [&](const std::string& why) {
      err << kTool << ": map \"" << name << "\": " << why << "\n";
      ++failed;
    };
    if (p->attributes & metadata::kPartitionAttrDisabled) {
      if (sel.explicit_names) {
        fail("image is disabled");
      } else {
        out << name << ": skipped (disabled)\n";
      }
      continue;
    }
    if (p->num_extents == 0) {
      if (sel.explicit_names) {
        fail("image has no extents");
      } else {
        out << name << ": skipped (no extents)\n";
      }
      continue;
    }
    auto table = BuildTable(*md, *p, disk->table_device, options.readonly);
    if (!table) {
      fail(table.error().ToString());
      continue;
    }
    if (existing.count(dm_name)) {
      auto same = SameTable(dm, dm_name, *table);
      if (!same) {
        fail(same.error().ToString());
      } else if (!*same) {
        fail(fmt::format("dm device \"{}\" already exists with a different table; not touching it",
                         dm_name));
      } else {
        out << name << ": already mapped at " << dm::DeviceMapper::DevicePath(dm_name) << "\n";
      }
      continue;
    }
    if (fs) {
      auto verified = VerifyImage(*fs, options.data_path_in_fs, options.search_depth, name,
                                  metadata::PartitionExtents(*md, *p));
      if (!verified) {
        fail("refusing to map: its files do not own the recorded blocks: " +
             verified.error().ToString());
        continue;
      }
    }
    bool status_written = false;
    if (options.write_status) {
      auto written = metadata::WriteStatusFile(StatusPath(options, name),
                                               {{metadata::StatusEntry::Kind::Dm, dm_name}});
      if (written) {
        status_written = true;
      } else {
        err << kTool << ": warning: \"" << name
            << "\": no status file: " << written.error().ToString() << "\n";
      }
    }
    dm::CreateOptions create;
    auto path = dm.Create(dm_name, *table, create);
    if (!path) {
      if (status_written) (void)metadata::RemoveStatusFile(StatusPath(options, name));
      fail(path.error().ToString());
      continue;
    }
    out << name << ": mapped at " << *path << (table->readonly() ? " (read-only)" : "")
        << (fs ? " (verified)" : "") << "\n";
  }
  return failed ? 1 : 0;
}

int RunUnmap(const Options& options, std::ostream& out, std::ostream& err) {
  auto md = LoadMetadata(options);
  if (!md) {
    err << kTool << ": unmap: " << md.error().ToString() << "\n";
    return 1;
  }
  Selection sel = Select(*md, options, err, "unmap");
  int failed = sel.unknown;
  dm::DeviceMapper dm;
  if (!options.passthrough.empty()) {
    auto info = dm.Info(options.passthrough);
    auto removed = !info   ? Result<void>(info.error())
                   : *info ? dm.Remove(options.passthrough)
                           : Ok();
    if (!removed) {
      err << kTool << ": unmap passthrough \"" << options.passthrough
          << "\": " << removed.error().ToString() << "\n";
      ++failed;
    }
  }
  for (const Partition* p : sel.partitions) {
    const std::string& name = p->name;
    const std::string dm_name = DmName(options.prefix, name);
    auto info = dm.Info(dm_name);
    if (!info) {
      err << kTool << ": unmap \"" << name << "\": " << info.error().ToString() << "\n";
      ++failed;
      continue;
    }
    if (*info) {
      auto removed = dm.Remove(dm_name);
      if (!removed) {
        err << kTool << ": unmap \"" << name << "\": " << removed.error().ToString() << "\n";
        ++failed;
        continue;
      }
      out << name << ": unmapped\n";
    } else if (sel.explicit_names) {
      out << name << ": not mapped\n";
    }
    // A status file that records only our device (--write-status) goes with it.
    auto status = metadata::ReadStatusFile(StatusPath(options, name));
    if (status &&
        *status == std::vector<metadata::StatusEntry>{{metadata::StatusEntry::Kind::Dm, dm_name}}) {
      if (auto r = metadata::RemoveStatusFile(StatusPath(options, name)); !r) {
        err << kTool << ": warning: \"" << name << "\": " << r.error().ToString() << "\n";
      }
    }
  }
  return failed ? 1 : 0;
}

std::string FormatList(const LpMetadata& md, const std::string& prefix,
                       const std::vector<std::string>* mapped, bool json) {
  auto is_mapped = [&](const std::string& dm_name) {
    return std::find(mapped->begin(), mapped->end(), dm_name) != mapped->end();
  };
  const metadata::BlockDevice* disk = md.block_devices.empty() ? nullptr : &md.block_devices[0];
  if (json) {
    nlohmann::json j;
    j["block_device"] = disk ? nlohmann::json{{"name", disk->partition_name}, {"size", disk->size}}
                             : nlohmann::json(nullptr);
    j["images"] = nlohmann::json::array();
    for (const auto& p : md.partitions) {
      const std::string dm_name = DmName(prefix, p.name);
      nlohmann::json image{
          {"name", p.name},
          {"size", metadata::PartitionSizeBytes(md, p)},
          {"attributes", p.attributes},
          {"readonly", (p.attributes & metadata::kPartitionAttrReadonly) != 0},
          {"disabled", (p.attributes & metadata::kPartitionAttrDisabled) != 0},
          {"dm_name", dm_name},
      };
      image["mapped"] = mapped ? nlohmann::json(is_mapped(dm_name)) : nlohmann::json(nullptr);
      image["extents"] = nlohmann::json::array();
      for (const auto& e : metadata::PartitionExtents(md, p)) {
        image["extents"].push_back(
            {{"sectors", e.num_sectors},
             {"type", e.target_type == metadata::kTargetTypeLinear ? "linear" : "zero"},
             {"physical_sector", e.target_data}});
      }
      j["images"].push_back(std::move(image));
    }
    return j.dump(2) + "\n";
  }
  std::string text;
  if (disk) {
    text += fmt::format("data disk: {} ({} bytes, {})\n", disk->partition_name, disk->size,
                        HumanSize(disk->size));
  }
  text +=
      fmt::format("{:<36} {:>12} {:>8} {:<5} {}\n", "NAME", "SIZE", "EXTENTS", "FLAGS", "DEVICE");
  for (const auto& p : md.partitions) {
    const std::string dm_name = DmName(prefix, p.name);
    std::string flags;
    flags += (p.attributes & metadata::kPartitionAttrReadonly) ? 'r' : '-';
    flags += (p.attributes & metadata::kPartitionAttrDisabled) ? 'd' : '-';
    flags += !mapped ? '?' : is_mapped(dm_name) ? 'm' : '-';
    std::string device = mapped && is_mapped(dm_name) ? dm::DeviceMapper::DevicePath(dm_name) : "";
    text +=
        fmt::format("{:<36} {:>12} {:>8} {:<5} {}\n", p.name,
                    HumanSize(metadata::PartitionSizeBytes(md, p)), p.num_extents, flags, device);
  }
  return text;
}

int RunList(const Options& options, std::ostream& out, std::ostream& err) {
  auto md = LoadMetadata(options);
  if (!md) {
    err << kTool << ": list: " << md.error().ToString() << "\n";
    return 1;
  }
  std::vector<std::string> names;
  bool known = false;
  // Without device-mapper (or permission) the images are still listed, mapped state unknown.
  if (::access("/dev/mapper/control", R_OK | W_OK) == 0) {
    dm::DeviceMapper dm;
    if (auto listed = dm.List()) {
      for (const auto& info : *listed) names.push_back(info.name);
      known = true;
    }
  }
  out << FormatList(*md, options.prefix, known ? &names : nullptr, options.json);
  return 0;
}

int Run(const Options& options, std::ostream& out, std::ostream& err) {
  switch (options.command) {
    case Command::kMap:
      return RunMap(options, out, err);
    case Command::kUnmap:
      return RunUnmap(options, out, err);
    case Command::kList:
      return RunList(options, out, err);
  }
  return 2;
}

}  // namespace imaged::init
