#include "init/commands.h"

#include <algorithm>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "dm/device_mapper.h"
#include "imaged/common/size.h"
#include "imageset/layout.h"
#include "imageset/names.h"
#include "init/offline_fs.h"
#include "metadata/status_file.h"

namespace imaged::init {
namespace {

using metadata::LpMetadata;
using metadata::Partition;

constexpr std::string_view kTool = "imaged-init";

Result<Directory> OpenMetadataDir(const Options& options) {
  return Directory::Open(options.metadata_dir);
}

Result<LpMetadata> LoadMetadata(const Directory& dir) {
  auto md = IMAGED_TRY(imageset::ReadLpMetadata(dir));
  if (!md) {
    return MakeError(ENOENT, "no \"{}\"", dir.PathOf(imageset::kLpMetadataFile));
  }
  if (md->block_devices.empty()) {
    return MakeError(EINVAL, "\"{}\" has no block device entry",
                     dir.PathOf(imageset::kLpMetadataFile))
        .As(ErrorKind::kCorruptMetadata);
  }
  return std::move(*md);
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

// What one `map` run works with.
struct MapContext {
  MapContext(const Options& o, std::ostream& out_stream, std::ostream& err_stream)
      : options(o), out(out_stream), err(err_stream) {}
  const Options& options;
  std::ostream& out;
  std::ostream& err;
  Directory metadata_dir;
  LpMetadata md;
  DataDisk disk;
  std::unique_ptr<OfflineFs> fs;  // null: not verifying
  dm::DeviceMapper dm;
  std::set<std::string> existing;  // dm names
  int failed = 0;
};

// The offline view of the data filesystem for --verify (auto: when it can be had).
Result<void> OpenVerifier(MapContext& c) {
  if (c.options.verify == VerifyMode::kOff) return Ok();
  Unverifiable why = Unverifiable::kNone;
  auto opened = OfflineFs::Open(c.disk.path, c.options.fs_offset, &why);
  if (opened) {
    c.fs = std::move(*opened);
    return Ok();
  }
  if (c.options.verify == VerifyMode::kOn) {
    return std::move(opened).error().Wrap(
        "--verify: cannot check the data filesystem, mapping nothing");
  }
  c.err << kTool << ": warning: mapping without verification: " << opened.error().ToString()
        << "\n";
  return Ok();
}

// Creates `name` with `table`; an existing device with the same table is fine (returns "").
Result<std::string> MapOne(MapContext& c, const std::string& name, const dm::Table& table) {
  if (c.existing.count(name)) {
    if (!IMAGED_TRY(imageset::MappingMatches(c.dm, name, table))) {
      return MakeError(EEXIST,
                       "dm device \"{}\" already exists with a different table; not "
                       "touching it",
                       name);
    }
    return std::string();
  }
  return c.dm.Create(name, table);
}

void MapPassthrough(MapContext& c) {
  // First, so that the data filesystem can be mounted even when some image fails.
  dm::Table whole;
  whole.Emplace<dm::LinearTarget>(0, c.disk.size / metadata::kSectorSize, c.disk.table_device, 0);
  auto done = MapOne(c, c.options.passthrough, whole);
  if (!done) {
    c.err << kTool << ": map passthrough \"" << c.options.passthrough
          << "\": " << done.error().ToString() << "\n";
    ++c.failed;
    return;
  }
  c.out << "data disk: " << (done->empty() ? "already mapped at " : "mapped at ")
        << dm::DeviceMapper::DevicePath(c.options.passthrough) << "\n";
}

// Why `p` is not mapped at all (disabled, empty), or nullopt when it should be.
std::optional<std::string> SkipReason(const Partition& p) {
  if (!imageset::IsImageName(p.name)) return "another tool's partition, not an image of imaged's";
  if (p.attributes & metadata::kPartitionAttrDisabled) return "disabled";
  if (p.num_extents == 0) return "no extents";
  return std::nullopt;
}

// Maps one image: its table, an existing device with that table is fine, verification of its
// files' blocks, the status file (--write-status) before the device, then the device.
Result<std::string> MapImage(MapContext& c, const Partition& p) {
  const std::string dm_name = imageset::DmName(c.options.prefix, p.name);
  const bool readonly = c.options.readonly || imageset::IsReadonly(p);
  const dm::Table table = IMAGED_TRY(imageset::TableFromLp(c.md, p, c.disk.table_device, readonly));
  if (c.existing.count(dm_name)) {
    IMAGED_TRY(MapOne(c, dm_name, table));
    return "already mapped at " + dm::DeviceMapper::DevicePath(dm_name);
  }
  if (c.fs) {
    IMAGED_TRY_CTX(VerifyImage(*c.fs, c.options.data_path_in_fs, c.options.search_depth, p.name,
                               metadata::PartitionExtents(c.md, p)),
                   "refusing to map: its files do not own the recorded blocks");
  }
  const std::string status = imageset::StatusFileName(p.name);
  bool status_written = false;
  if (c.options.write_status) {
    auto written = metadata::WriteStatusFile(c.metadata_dir, status,
                                             {{metadata::StatusEntry::Kind::Dm, dm_name}});
    status_written = written.has_value();
    if (!written) {
      c.err << kTool << ": warning: \"" << p.name
            << "\": no status file: " << written.error().ToString() << "\n";
    }
  }
  auto path = c.dm.Create(dm_name, table);
  if (!path) {
    if (status_written) (void)metadata::RemoveStatusFile(c.metadata_dir, status);
    return std::move(path).error();
  }
  return "mapped at " + *path + (readonly ? " (read-only)" : "") + (c.fs ? " (verified)" : "");
}

// The disk, the verifier and the dm devices that exist; an error means nothing can be mapped.
Result<void> PrepareMap(MapContext& c, const DiskLookup& lookup) {
  c.metadata_dir = IMAGED_TRY(OpenMetadataDir(c.options));
  c.md = IMAGED_TRY(LoadMetadata(c.metadata_dir));
  c.disk = IMAGED_TRY(ResolveDataDisk(c.md.block_devices[0], c.options.data_device, lookup));
  if (!c.disk.is_block_device) {
    return MakeError(ENOTBLK, "\"{}\" is not a block device", c.disk.path);
  }
  IMAGED_TRY(OpenVerifier(c));
  for (const auto& info : IMAGED_TRY(c.dm.List())) c.existing.insert(info.name);
  return Ok();
}

}  // namespace

int RunMap(const Options& options, std::ostream& out, std::ostream& err, const DiskLookup& lookup) {
  MapContext c(options, out, err);
  if (auto prepared = PrepareMap(c, lookup); !prepared) {
    err << kTool << ": map: " << prepared.error().ToString() << "\n";
    return 1;
  }
  const Selection sel = Select(c.md, options, err, "map");
  c.failed = sel.unknown;
  if (!options.passthrough.empty()) MapPassthrough(c);
  for (const Partition* p : sel.partitions) {
    if (auto skip = SkipReason(*p)) {
      if (sel.explicit_names) {
        err << kTool << ": map \"" << p->name << "\": image is " << *skip << "\n";
        ++c.failed;
      } else {
        out << metadata::PrintableName(p->name) << ": skipped (" << *skip << ")\n";
      }
      continue;
    }
    auto mapped = MapImage(c, *p);
    if (!mapped) {
      err << kTool << ": map \"" << p->name << "\": " << mapped.error().ToString() << "\n";
      ++c.failed;
      continue;
    }
    out << p->name << ": " << *mapped << "\n";
  }
  return c.failed ? 1 : 0;
}

namespace {

// Removes an image's dm device and the status file that records only it (--write-status).
Result<bool> UnmapImage(dm::DeviceMapper& dm, const Directory& metadata_dir,
                        const std::string& prefix, const Partition& p, std::ostream& err) {
  const std::string dm_name = imageset::DmName(prefix, p.name);
  const bool mapped = IMAGED_TRY(dm.Info(dm_name)).has_value();
  if (mapped) IMAGED_TRY(dm.Remove(dm_name));
  const std::string status = imageset::StatusFileName(p.name);
  auto entries = metadata::ReadStatusFile(metadata_dir, status);
  if (entries &&
      *entries == std::vector<metadata::StatusEntry>{{metadata::StatusEntry::Kind::Dm, dm_name}}) {
    if (auto r = metadata::RemoveStatusFile(metadata_dir, status); !r) {
      err << kTool << ": warning: \"" << p.name << "\": " << r.error().ToString() << "\n";
    }
  }
  return mapped;
}

}  // namespace

int RunUnmap(const Options& options, std::ostream& out, std::ostream& err) {
  auto dir = OpenMetadataDir(options);
  auto md = dir ? LoadMetadata(*dir) : Result<LpMetadata>(dir.error());
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
    if (!imageset::IsImageName(p->name)) continue;  // imaged-init never maps those
    auto unmapped = UnmapImage(dm, *dir, options.prefix, *p, err);
    if (!unmapped) {
      err << kTool << ": unmap \"" << p->name << "\": " << unmapped.error().ToString() << "\n";
      ++failed;
    } else if (*unmapped) {
      out << p->name << ": unmapped\n";
    } else if (sel.explicit_names) {
      out << p->name << ": not mapped\n";
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
    j["block_device"] = disk ? nlohmann::json{{"name", metadata::PrintableName(disk->partition_name)},
                                              {"size", disk->size}}
                             : nlohmann::json(nullptr);
    j["images"] = nlohmann::json::array();
    for (const auto& p : md.partitions) {
      const std::string dm_name = imageset::DmName(prefix, p.name);
      nlohmann::json image{
          {"name", metadata::PrintableName(p.name)},
          {"size", metadata::PartitionSizeBytes(md, p)},
          {"attributes", p.attributes},
          {"readonly", (p.attributes & metadata::kPartitionAttrReadonly) != 0},
          {"disabled", (p.attributes & metadata::kPartitionAttrDisabled) != 0},
          {"dm_name", metadata::PrintableName(dm_name)},
      };
      image["mapped"] = mapped ? nlohmann::json(is_mapped(dm_name)) : nlohmann::json(nullptr);
      image["extents"] = nlohmann::json::array();
      for (const auto& e : metadata::PartitionExtents(md, p)) {
        image["extents"].push_back(
            {{"sectors", e.num_sectors},
             {"type", e.target_type == metadata::kTargetTypeLinear ? std::string("linear")
                      : e.target_type == metadata::kTargetTypeZero ? std::string("zero")
                                                                   : std::to_string(e.target_type)},
             {"physical_sector", e.target_data}});
      }
      j["images"].push_back(std::move(image));
    }
    return j.dump(2) + "\n";
  }
  std::string text;
  if (disk) {
    text += fmt::format("data disk: {} ({} bytes, {})\n",
                        metadata::PrintableName(disk->partition_name), disk->size,
                        HumanSize(disk->size));
  }
  text +=
      fmt::format("{:<36} {:>12} {:>8} {:<5} {}\n", "NAME", "SIZE", "EXTENTS", "FLAGS", "DEVICE");
  for (const auto& p : md.partitions) {
    const std::string dm_name = imageset::DmName(prefix, p.name);
    std::string flags;
    flags += (p.attributes & metadata::kPartitionAttrReadonly) ? 'r' : '-';
    flags += (p.attributes & metadata::kPartitionAttrDisabled) ? 'd' : '-';
    flags += !mapped ? '?' : is_mapped(dm_name) ? 'm' : '-';
    std::string device = mapped && is_mapped(dm_name) ? dm::DeviceMapper::DevicePath(dm_name) : "";
    text +=
        fmt::format("{:<36} {:>12} {:>8} {:<5} {}\n", metadata::PrintableName(p.name),
                    HumanSize(metadata::PartitionSizeBytes(md, p)), p.num_extents, flags, device);
  }
  return text;
}

int RunList(const Options& options, std::ostream& out, std::ostream& err) {
  auto dir = OpenMetadataDir(options);
  auto md = dir ? LoadMetadata(*dir) : Result<LpMetadata>(dir.error());
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
