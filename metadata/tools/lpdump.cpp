// imaged-lpdump: prints an lp_metadata file (libfiemap image-file layout or a full super layout,
// detected from where the geometry magic sits) in the spirit of AOSP's lpdump. Names are printed
// through md::PrintableName: metadata written by other tools may hold any byte in a name, which
// must neither reach the terminal raw nor make the JSON invalid UTF-8.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "imaged/common/file_io.h"
#include "imaged/common/size.h"
#include "metadata/lp_metadata.h"

namespace md = imaged::metadata;

namespace {

std::string Flags(uint32_t value, std::initializer_list<std::pair<uint32_t, const char*>> names) {
  if (value == 0) return "none";
  std::string out;
  for (const auto& [bit, name] : names) {
    if (value & bit) {
      if (!out.empty()) out += ",";
      out += name;
      value &= ~bit;
    }
  }
  if (value) out += fmt::format("{}0x{:x}", out.empty() ? "" : ",", value);
  return out;
}

std::string PartitionAttributes(uint32_t a) {
  return Flags(a, {{md::kPartitionAttrReadonly, "readonly"},
                   {md::kPartitionAttrSlotSuffixed, "slot-suffixed"},
                   {md::kPartitionAttrUpdated, "updated"},
                   {md::kPartitionAttrDisabled, "disabled"}});
}
std::string HeaderFlags(uint32_t f) {
  return Flags(f, {{md::kHeaderFlagVirtualAbDevice, "virtual_ab_device"},
                   {md::kHeaderFlagOverlaysActive, "overlays_active"}});
}
std::string SlotFlags(uint32_t f) {
  return Flags(f, {{1, "slot-suffixed"}});
}

std::string TargetType(uint32_t t) {
  if (t == md::kTargetTypeLinear) return "linear";
  if (t == md::kTargetTypeZero) return "zero";
  return fmt::format("type{}", t);
}

std::string SourceName(const md::LpMetadata& m, const md::Extent& e) {
  if (e.target_source < m.block_devices.size())
    return md::PrintableName(m.block_devices[e.target_source].partition_name);
  return fmt::format("#{}", e.target_source);
}

std::string GroupName(const md::LpMetadata& m, const md::Partition& p, const char* missing) {
  if (p.group_index < m.groups.size()) return md::PrintableName(m.groups[p.group_index].name);
  return missing;
}

nlohmann::json ToJson(const md::LpMetadata& m, const char* layout) {
  using nlohmann::json;
  json j;
  j["layout"] = layout;
  j["geometry"] = {{"metadata_max_size", m.geometry.metadata_max_size},
                   {"metadata_slot_count", m.geometry.metadata_slot_count},
                   {"logical_block_size", m.geometry.logical_block_size}};
  j["header"] = {{"major_version", m.major_version},
                 {"minor_version", m.minor_version},
                 {"flags", m.header_flags},
                 {"metadata_size", md::SerializedMetadataSize(m)}};
  j["partitions"] = json::array();
  for (const md::Partition& p : m.partitions) {
    json extents = json::array();
    for (const md::Extent& e : md::PartitionExtents(m, p)) {
      extents.push_back({{"num_sectors", e.num_sectors},
                         {"target_type", TargetType(e.target_type)},
                         {"target_data", e.target_data},
                         {"target_source", e.target_source}});
    }
    j["partitions"].push_back({{"name", md::PrintableName(p.name)},
                               {"attributes", p.attributes},
                               {"attribute_names", PartitionAttributes(p.attributes)},
                               {"group", GroupName(m, p, "")},
                               {"group_index", p.group_index},
                               {"first_extent_index", p.first_extent_index},
                               {"num_extents", p.num_extents},
                               {"size", md::PartitionSizeBytes(m, p)},
                               {"extents", extents}});
  }
  j["groups"] = json::array();
  for (const md::Group& g : m.groups) {
    j["groups"].push_back({{"name", md::PrintableName(g.name)},
                           {"flags", g.flags},
                           {"maximum_size", g.maximum_size}});
  }
  j["block_devices"] = json::array();
  for (const md::BlockDevice& b : m.block_devices) {
    j["block_devices"].push_back({{"partition_name", md::PrintableName(b.partition_name)},
                                  {"first_logical_sector", b.first_logical_sector},
                                  {"alignment", b.alignment},
                                  {"alignment_offset", b.alignment_offset},
                                  {"size", b.size},
                                  {"flags", b.flags}});
  }
  return j;
}

void PrintText(const md::LpMetadata& m, const char* layout) {
  const std::string rule(24, '-');
  fmt::print("Layout: {}\n", layout);
  fmt::print("Metadata version: {}.{}\n", m.major_version, m.minor_version);
  fmt::print("Metadata size: {} bytes\n", md::SerializedMetadataSize(m));
  fmt::print("Metadata max size: {} bytes\n", m.geometry.metadata_max_size);
  fmt::print("Metadata slot count: {}\n", m.geometry.metadata_slot_count);
  fmt::print("Logical block size: {} bytes\n", m.geometry.logical_block_size);
  fmt::print("Header flags: {}\n", HeaderFlags(m.header_flags));
  fmt::print("Partition table:\n{}\n", rule);
  for (const md::Partition& p : m.partitions) {
    fmt::print("  Name: {}\n", md::PrintableName(p.name));
    fmt::print("  Group: {}\n", GroupName(m, p, "?"));
    fmt::print("  Attributes: {}\n", PartitionAttributes(p.attributes));
    fmt::print("  Size: {} bytes ({})\n", md::PartitionSizeBytes(m, p),
               imaged::HumanSize(md::PartitionSizeBytes(m, p)));
    fmt::print("  Extents:\n");
    uint64_t first = 0;
    for (const md::Extent& e : md::PartitionExtents(m, p)) {
      // Other tools' metadata may hold an empty extent; its range would wrap.
      if (e.num_sectors == 0) {
        fmt::print("    {} (0 sectors) {}\n", first, TargetType(e.target_type));
        continue;
      }
      uint64_t last = first + e.num_sectors - 1;
      if (e.target_type == md::kTargetTypeLinear) {
        fmt::print("    {} .. {} linear {} {}\n", first, last, SourceName(m, e), e.target_data);
      } else {
        fmt::print("    {} .. {} {}\n", first, last, TargetType(e.target_type));
      }
      first += e.num_sectors;
    }
    fmt::print("{}\n", rule);
  }
  fmt::print("Block device table:\n{}\n", rule);
  for (const md::BlockDevice& b : m.block_devices) {
    fmt::print("  Partition name: {}\n", md::PrintableName(b.partition_name));
    fmt::print("  First sector: {}\n", b.first_logical_sector);
    fmt::print("  Size: {} bytes\n", b.size);
    fmt::print("  Alignment: {} (offset {})\n", b.alignment, b.alignment_offset);
    fmt::print("  Flags: {}\n", SlotFlags(b.flags));
    fmt::print("{}\n", rule);
  }
  fmt::print("Group table:\n{}\n", rule);
  for (const md::Group& g : m.groups) {
    fmt::print("  Name: {}\n", md::PrintableName(g.name));
    fmt::print("  Maximum size: {} bytes\n", g.maximum_size);
    fmt::print("  Flags: {}\n", SlotFlags(g.flags));
    fmt::print("{}\n", rule);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Print liblp metadata (lp_metadata image file or super layout)"};
  std::string path;
  bool json = false;
  uint32_t slot = 0;
  app.add_option("file", path, "lp_metadata file or super image")->required();
  app.add_flag("--json,-j", json, "print JSON");
  app.add_option("--slot,-s", slot, "metadata slot to read from a super layout");
  CLI11_PARSE(app, argc, argv);

  // A super layout holds slot_count * 2 copies; cap generously above a 64 MiB single copy.
  auto data = imaged::ReadWholeFile(path, size_t{1} << 30);
  if (!data) {
    fmt::print(stderr, "imaged-lpdump: {}\n", data.error().ToString());
    return 1;
  }
  md::Layout layout = md::DetectLayout(*data);
  auto parsed = md::ParseAnyLayout(*data, slot);
  if (!parsed) {
    fmt::print(stderr, "imaged-lpdump: \"{}\": {}\n", path, parsed.error().ToString());
    return 1;
  }
  const char* layout_name = layout == md::Layout::kImageFile ? "image-file" : "super";
  if (json) {
    fmt::print("{}\n", ToJson(*parsed, layout_name).dump(2));
  } else {
    PrintText(*parsed, layout_name);
  }
  return 0;
}
