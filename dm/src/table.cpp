#include "dm/table.h"

#include <charconv>

#include <fmt/format.h>

namespace imaged::dm {

bool Target::operator==(const Target& other) const {
  return start_ == other.start_ && length_ == other.length_ && type() == other.type() &&
         params() == other.params();
}

std::string LinearTarget::params() const {
  return fmt::format("{} {}", device_, offset_);
}

std::string VerityTarget::params() const {
  const VerityConfig& c = config_;
  return fmt::format("1 {} {} {} {} {} {} sha256 {} {}", c.data_device, c.hash_device, c.block_size,
                     c.block_size, c.data_blocks, c.hash_start_block, c.root_hash_hex,
                     c.salt_hex.empty() ? "-" : c.salt_hex);
}

Result<bool> VerityStatusCorrupt(std::string_view status) {
  // Newer kernels may append words (e.g. the FEC count) after the first.
  const std::string_view first = status.substr(0, status.find(' '));
  if (first == "V") return false;
  if (first == "C") return true;
  return MakeError(EINVAL, "unknown dm-verity status \"{}\"", status);
}

uint64_t Table::num_sectors() const {
  return targets_.empty() ? 0 : targets_.back()->end();
}

Result<void> Table::Validate() const {
  if (targets_.empty()) return MakeError(EINVAL, "dm table has no targets");
  uint64_t next = 0;
  for (size_t i = 0; i < targets_.size(); ++i) {
    const Target& t = *targets_[i];
    if (t.length() == 0) {
      return MakeError(EINVAL, "dm table target {} (sector {}) has zero length", i, t.start());
    }
    if (t.start() > next) {
      return MakeError(EINVAL, "dm table has a gap: target {} starts at sector {}, expected {}", i,
                       t.start(), next);
    }
    if (t.start() < next) {
      return MakeError(EINVAL, "dm table targets overlap: target {} starts at sector {}, before {}",
                       i, t.start(), next);
    }
    if (t.end() < t.start()) {
      return MakeError(EINVAL, "dm table target {} overflows the sector range", i);
    }
    std::string type = t.type();
    // DM_MAX_TYPE_NAME is 16 with the NUL.
    if (type.empty() || type.size() > 15 || type.find_first_of(" \t\n") != std::string::npos) {
      return MakeError(EINVAL, "dm table target {} has an invalid type \"{}\"", i, type);
    }
    if (type == "verity" && !readonly_) {
      return MakeError(EINVAL, "dm table target {} is verity: the table must be read-only", i);
    }
    next = t.end();
  }
  return Ok();
}

bool Table::Matches(const std::vector<TargetInfo>& live, bool live_readonly) const {
  if (live_readonly != readonly_ || live.size() != targets_.size()) return false;
  for (size_t i = 0; i < live.size(); ++i) {
    const Target& t = *targets_[i];
    if (live[i] != TargetInfo{t.start(), t.length(), t.type(), t.params()}) return false;
  }
  return true;
}

namespace {

std::vector<std::string_view> Words(std::string_view text) {
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
    const size_t start = i;
    while (i < text.size() && text[i] != ' ' && text[i] != '\t') ++i;
    if (i > start) words.push_back(text.substr(start, i - start));
  }
  return words;
}

Result<TargetDevice> DeviceAt(std::string_view params, size_t device_word, size_t min_words,
                              std::string_view type) {
  const auto words = Words(params);
  if (words.size() < min_words) {
    return MakeError(EINVAL, "{} target \"{}\": too few parameters", type, params);
  }
  TargetDevice out;
  out.device = std::string(words[device_word]);
  const std::string_view offset = words[device_word + 1];
  auto [p, ec] = std::from_chars(offset.data(), offset.data() + offset.size(), out.offset_sectors);
  if (offset.empty() || ec != std::errc() || p != offset.data() + offset.size() ||
      out.offset_sectors > UINT64_MAX / 512) {
    return MakeError(EINVAL, "{} target \"{}\": bad offset \"{}\"", type, params, offset);
  }
  return out;
}

}  // namespace

Result<TargetDevice> LinearTargetDevice(std::string_view params) {
  if (Words(params).size() != 2) {
    return MakeError(EINVAL, "linear target \"{}\": wants <device> <offset>", params);
  }
  return DeviceAt(params, 0, 2, "linear");
}

Result<TargetDevice> CryptTargetDevice(std::string_view params) {
  return DeviceAt(params, 3, 5, "crypt");
}

bool Table::operator==(const Table& other) const {
  if (readonly_ != other.readonly_ || targets_.size() != other.targets_.size()) return false;
  for (size_t i = 0; i < targets_.size(); ++i) {
    if (!(*targets_[i] == *other.targets_[i])) return false;
  }
  return true;
}

}  // namespace imaged::dm
