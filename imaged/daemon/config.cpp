#include "daemon/config.h"

#include <charconv>
#include <fstream>
#include <sstream>

#include "imaged/common/size.h"

namespace imaged {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

Result<void> RequireAbsolutePath(std::string_view key, std::string_view value) {
  if (value.empty() || value.front() != '/') {
    return MakeError(EINVAL, "{} must be an absolute path, got \"{}\"", key, value);
  }
  if (value.find('\0') != std::string_view::npos) {
    return MakeError(EINVAL, "{} contains a NUL byte", key);
  }
  return Ok();
}

Result<uint32_t> ParseBounded(std::string_view key, std::string_view value, uint32_t min,
                              uint32_t max) {
  uint32_t v = 0;
  auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || ptr != value.data() + value.size() || v < min || v > max) {
    return MakeError(EINVAL, "{} must be {}..{}, got \"{}\"", key, min, max, value);
  }
  return v;
}

Result<void> ApplySetting(std::string_view key, std::string_view value, DaemonConfig& config) {
  if (key == "data_dir" || key == "metadata_dir" || key == "socket" || key == "metrics_textfile") {
    IMAGED_TRY(RequireAbsolutePath(key, value));
    std::string& target = key == "data_dir"           ? config.data_dir
                          : key == "metadata_dir"     ? config.metadata_dir
                          : key == "metrics_textfile" ? config.metrics_textfile
                                                      : config.socket_path;
    target = std::string(value);
  } else if (key == "admin_group") {
    config.admin_group = std::string(value);
  } else if (key == "strategy") {
    config.strategy = IMAGED_TRY(ParseMapStrategy(value));
  } else if (key == "dm_prefix") {
    for (char c : value) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '_' || c == '.';
      if (!ok) return MakeError(EINVAL, "dm_prefix may only use [A-Za-z0-9_.-], got \"{}\"", value);
    }
    if (value.size() > 64) return MakeError(EINVAL, "dm_prefix is longer than 64 bytes");
    config.dm_prefix = std::string(value);
  } else if (key == "max_piece_size") {
    auto size = ParseSize(value);
    if (!size) return MakeError(EINVAL, "max_piece_size: \"{}\" is not a size", value);
    config.max_piece_size = *size;
  } else if (key == "min_free_percent") {
    config.min_free_percent = IMAGED_TRY(ParseBounded(key, value, 0, 90));
  } else if (key == "min_free_bytes") {
    auto size = ParseSize(value);
    if (!size) return MakeError(EINVAL, "min_free_bytes: \"{}\" is not a size", value);
    config.min_free_bytes = *size;
  } else if (key == "map_timeout_ms") {
    config.map_timeout_ms = IMAGED_TRY(ParseBounded(key, value, 1, 600000));
  } else if (key == "max_connections_per_uid") {
    config.max_connections_per_uid = IMAGED_TRY(ParseBounded(key, value, 1, 100000));
  } else if (key == "idle_timeout_s") {
    config.idle_timeout_s = IMAGED_TRY(ParseBounded(key, value, 1, 86400));
  } else if (key == "upload_idle_timeout_s") {
    config.upload_idle_timeout_s = IMAGED_TRY(ParseBounded(key, value, 1, 86400));
  } else if (key == "metrics_interval_s") {
    config.metrics_interval_s = IMAGED_TRY(ParseBounded(key, value, 1, 3600));
  } else {
    return MakeError(EINVAL, "unknown setting \"{}\"", key);
  }
  return Ok();
}

}  // namespace

Result<void> ParseConfig(std::string_view text, DaemonConfig& config) {
  DaemonConfig updated = config;  // all or nothing
  size_t line_no = 0;
  while (!text.empty()) {
    size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view{} : text.substr(end + 1);
    ++line_no;
    if (size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    line = Trim(line);
    if (line.empty()) continue;
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      return MakeError(EINVAL, "line {}: expected \"key = value\"", line_no);
    }
    std::string_view key = Trim(line.substr(0, eq));
    std::string_view value = Trim(line.substr(eq + 1));
    auto applied = ApplySetting(key, value, updated);
    if (!applied) return std::move(applied).error().Wrap(fmt::format("line {}", line_no));
  }
  config = std::move(updated);
  return Ok();
}

Result<void> LoadConfigFile(const std::string& path, DaemonConfig& config) {
  std::ifstream in(path);
  if (!in) return ErrnoError("open config \"{}\"", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return ErrnoError("read config \"{}\"", path);
  std::string text = buffer.str();
  if (text.size() > 1 << 20) return MakeError(EFBIG, "config \"{}\" is larger than 1 MiB", path);
  auto parsed = ParseConfig(text, config);
  if (!parsed) return std::move(parsed).error().Wrap(fmt::format("config \"{}\"", path));
  return Ok();
}

}  // namespace imaged
