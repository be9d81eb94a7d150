#include "init/options.h"

#include <algorithm>
#include <sstream>

#include <CLI/CLI.hpp>

#include "imaged/common/size.h"

namespace imaged::init {

ParsedArgs ParseArgs(const std::vector<std::string>& args) {
  ParsedArgs parsed;
  Options& o = parsed.options;
  CLI::App app{
      "imaged-init: map imaged images from lp_metadata at early boot, before the data "
      "filesystem is mounted",
      args.empty() ? "imaged-init" : args[0]};
  app.require_subcommand(1, 1);

  auto add_common = [&](CLI::App* sub) {
    sub->add_option("--metadata-dir", o.metadata_dir, "directory holding lp_metadata")->required();
    sub->add_option("--prefix", o.prefix, "device-mapper name prefix")->capture_default_str();
    sub->add_option("--passthrough", o.passthrough,
                    "dm name of a whole-disk linear device to mount the data filesystem from");
    sub->add_option("names", o.names, "images (default: all in lp_metadata)");
  };

  bool verify = false, no_verify = false;
  std::string fs_offset_text;
  CLI::App* map = app.add_subcommand("map", "create dm-linear devices for the images");
  add_common(map);
  map->add_option("--data-device", o.data_device,
                  "the data disk (default: from lp_metadata's block-device entry)");
  auto* v = map->add_flag("--verify", verify,
                          "refuse images whose files no longer own the recorded blocks; fail if "
                          "the filesystem cannot be checked (default: check when possible)");
  auto* nv = map->add_flag("--no-verify", no_verify, "map without checking the filesystem");
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
  map->add_option("--fs-offset", fs_offset_text,
                  "bytes from the start of the disk to the filesystem (e.g. 4K, 1M)");

  CLI::App* unmap = app.add_subcommand("unmap", "remove the dm devices of the images");
  add_common(unmap);

  CLI::App* list = app.add_subcommand("list", "show the images in lp_metadata");
  list->add_option("--metadata-dir", o.metadata_dir, "directory holding lp_metadata")->required();
  list->add_option("--prefix", o.prefix, "device-mapper name prefix")->capture_default_str();
  list->add_flag("--json", o.json, "machine-readable output");

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
  o.verify = verify ? VerifyMode::kOn : no_verify ? VerifyMode::kOff : VerifyMode::kAuto;

  auto usage_error = [&](std::string text) {
    parsed.exit_code = 2;
    parsed.text = std::move(text) + "\n";
    return parsed;
  };
  if (!fs_offset_text.empty()) {
    auto bytes = ParseSize(fs_offset_text);
    if (!bytes) return usage_error("--fs-offset: not a size: " + fs_offset_text);
    if (*bytes % 512 != 0) return usage_error("--fs-offset must be a multiple of 512 bytes");
    o.fs_offset = *bytes;
  }
  if (!o.passthrough.empty() && o.passthrough.find('/') != std::string::npos) {
    return usage_error("--passthrough must not contain '/'");
  }
  if (o.prefix.find('/') != std::string::npos) {
    return usage_error("--prefix must not contain '/'");
  }
  for (const auto& name : o.names) {
    if (name.empty() || name.find('/') != std::string::npos) {
      return usage_error("bad image name \"" + name + "\"");
    }
  }
  parsed.run = true;
  return parsed;
}

}  // namespace imaged::init
