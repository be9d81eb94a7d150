#include "init/options.h"

#include <algorithm>
#include <optional>
#include <sstream>

#include <CLI/CLI.hpp>

#include "imaged/common/size.h"

namespace imaged::init {

namespace {

// What the flags parse into before they become Options.
struct Flags {
  bool verify = false;
  bool no_verify = false;
  std::string fs_offset;
};

void AddCommon(CLI::App* sub, Options& o) {
  sub->add_option("--metadata-dir", o.metadata_dir, "directory holding lp_metadata")->required();
  sub->add_option("--prefix", o.prefix, "device-mapper name prefix")->capture_default_str();
  sub->add_option("--passthrough", o.passthrough,
                  "dm name of a whole-disk linear device to mount the data filesystem from");
  sub->add_option("names", o.names, "images (default: all in lp_metadata)");
}

CLI::App* AddMap(CLI::App& app, Options& o, Flags& f) {
  CLI::App* map = app.add_subcommand("map", "create dm-linear devices for the images");
  AddCommon(map, o);
  map->add_option("--data-device", o.data_device,
                  "the data disk (default: from lp_metadata's block-device entry)");
  auto* v = map->add_flag("--verify", f.verify,
                          "refuse images whose files no longer own the recorded blocks; fail if "
                          "the filesystem cannot be checked (default: check when possible)");
  auto* nv = map->add_flag("--no-verify", f.no_verify, "map without checking the filesystem");
  v->excludes(nv);
  map->add_flag("--readonly", o.readonly, "map every image read-only");
  map->add_flag("--write-status", o.write_status,
                "record dm:<name> in <metadata-dir>/<name>.status (when writable)");
  map->add_option("--data-path-in-fs", o.data_path_in_fs,
                  "directory of the image files inside the data filesystem, e.g. /images "
                  "(default: search)");
  map->add_option("--search-depth", o.search_depth,
                  "how many directory levels to search for <name>.img")
      ->capture_default_str()
      ->check(CLI::Range(0, 16));
  map->add_option("--fs-offset", f.fs_offset,
                  "bytes from the start of the disk to the filesystem (e.g. 4K, 1M)");
  return map;
}

CLI::App* AddList(CLI::App& app, Options& o) {
  CLI::App* list = app.add_subcommand("list", "show the images in lp_metadata");
  list->add_option("--metadata-dir", o.metadata_dir, "directory holding lp_metadata")->required();
  list->add_option("--prefix", o.prefix, "device-mapper name prefix")->capture_default_str();
  list->add_flag("--json", o.json, "machine-readable output");
  return list;
}

// What CLI11 cannot check; an error text for a usage error (exit 2).
std::optional<std::string> CheckValues(Options& o, const Flags& f) {
  o.verify = f.verify ? VerifyMode::kOn : f.no_verify ? VerifyMode::kOff : VerifyMode::kAuto;
  if (!f.fs_offset.empty()) {
    auto bytes = ParseSize(f.fs_offset);
    if (!bytes) return "--fs-offset: not a size: " + f.fs_offset;
    if (*bytes % 512 != 0) return std::string("--fs-offset must be a multiple of 512 bytes");
    o.fs_offset = *bytes;
  }
  if (o.passthrough.find('/') != std::string::npos) {
    return std::string("--passthrough must not contain '/'");
  }
  if (o.prefix.find('/') != std::string::npos) return std::string("--prefix must not contain '/'");
  for (const auto& name : o.names) {
    if (name.empty() || name.find('/') != std::string::npos) {
      return "bad image name \"" + name + "\"";
    }
  }
  return std::nullopt;
}

}  // namespace

ParsedArgs ParseArgs(const std::vector<std::string>& args) {
  ParsedArgs parsed;
  Options& o = parsed.options;
  CLI::App app{
      "imaged-init: map imaged images from lp_metadata at early boot, before the data "
      "filesystem is mounted",
      args.empty() ? "imaged-init" : args[0]};
  app.require_subcommand(1, 1);
  Flags flags;
  CLI::App* map = AddMap(app, o, flags);
  CLI::App* unmap = app.add_subcommand("unmap", "remove the dm devices of the images");
  AddCommon(unmap, o);
  CLI::App* list = AddList(app, o);

  std::vector<std::string> rest(args.size() > 1 ? args.begin() + 1 : args.end(), args.end());
  std::reverse(rest.begin(), rest.end());  // CLI11 takes a reversed vector
  try {
    app.parse(rest);
  } catch (const CLI::ParseError& e) {
    std::ostringstream out, err;
    parsed.exit_code = app.exit(e, out, err) == 0 ? 0 : 2;
    parsed.text = out.str() + err.str();
    return parsed;
  }
  if (map->parsed()) o.command = Command::kMap;
  if (unmap->parsed()) o.command = Command::kUnmap;
  if (list->parsed()) o.command = Command::kList;
  if (auto usage = CheckValues(o, flags)) {
    parsed.exit_code = 2;
    parsed.text = *usage + "\n";
    return parsed;
  }
  parsed.run = true;
  return parsed;
}

}  // namespace imaged::init
