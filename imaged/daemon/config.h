// Daemon configuration: defaults, then an optional config file, then command-line flags.
//
// The file is `key = value` lines; `#` starts a comment; blank lines are ignored. Keys:
//   data_dir, metadata_dir, socket, admin_group, strategy (auto|dm-linear|loop), dm_prefix,
//   max_piece_size (bytes or 4G-style), map_timeout_ms, max_connections_per_uid,
//   idle_timeout_s (a connection with no call in progress is closed after this long),
//   upload_idle_timeout_s (an upload that sends nothing for this long is cancelled),
//   min_free_percent, min_free_bytes (what create, import and resize leave free on the data fs),
//   metrics_textfile (a *.prom path for node_exporter's textfile collector; empty: none),
//   metrics_interval_s (how often it is rewritten when nothing happens)
// Unknown keys and malformed lines are errors that name the line, so a typo never silently
// falls back to a default.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "imaged/common/result.h"
#include "manager/map_strategy.h"

namespace imaged {

struct DaemonConfig {
  std::string data_dir = "/var/lib/imaged/data";
  std::string metadata_dir = "/var/lib/imaged/metadata";
  std::string socket_path = "/run/imaged/imaged.sock";
  std::string admin_group;  // members may change state besides root; empty = root only
  MapStrategy strategy = MapStrategy::kAuto;
  std::string dm_prefix = "imaged-";
  uint64_t max_piece_size = 0;
  uint32_t map_timeout_ms = 10000;
  uint32_t max_connections_per_uid = 128;
  uint32_t idle_timeout_s = 300;
  uint32_t upload_idle_timeout_s = 60;
  // The data filesystem is shared with the system: filling it to its last block breaks its
  // other users and fragments every later allocation. 5% of any filesystem by default (ext4
  // keeps its root reserve on top, since free space is counted as f_bavail); gsid's 40% suits
  // a phone that must keep room for app updates, and is one line in the config file.
  uint32_t min_free_percent = 5;
  uint64_t min_free_bytes = 0;
  std::string metrics_textfile;
  uint32_t metrics_interval_s = 15;  // node_exporter's usual scrape interval
};

// Applies the settings in `text` (the file's contents) on top of `config`.
Result<void> ParseConfig(std::string_view text, DaemonConfig& config);
Result<void> LoadConfigFile(const std::string& path, DaemonConfig& config);

}  // namespace imaged
