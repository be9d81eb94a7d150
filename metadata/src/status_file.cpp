#include "metadata/status_file.h"

#include <cerrno>


namespace imaged::metadata {

namespace {

// A status file names a handful of devices; anything bigger is not ours.
constexpr size_t kMaxStatusFileBytes = 1 << 20;

std::string_view KindName(StatusEntry::Kind kind) {
  return kind == StatusEntry::Kind::Dm ? "dm" : "loop";
}

Result<void> CheckValue(std::string_view value) {
  if (value.empty()) return MakeError(EINVAL, "empty value");
  if (value.find('\n') != std::string_view::npos)
    return MakeError(EINVAL, "value contains a newline");
  if (value.find('\0') != std::string_view::npos) return MakeError(EINVAL, "value contains NUL");
  return {};
}

}  // namespace

Result<void> ValidateStatusEntry(const StatusEntry& entry) {
  if (entry.kind != StatusEntry::Kind::Dm && entry.kind != StatusEntry::Kind::Loop) {
    return MakeError(EINVAL, "status entry: unknown kind {}", static_cast<int>(entry.kind));
  }
  IMAGED_TRY_CTX(CheckValue(entry.value), "status entry \"{}\"", KindName(entry.kind));
  return {};
}

Result<std::vector<StatusEntry>> ParseStatus(std::string_view text) {
  std::vector<StatusEntry> out;
  size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    // Only the first ':' separates: dm names may themselves contain ':' (AOSP splits on all).
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      return MakeError(EINVAL, "status line {}: no ':' in \"{}\"", line_no, line);
    }
    std::string_view kind = line.substr(0, colon);
    std::string_view value = line.substr(colon + 1);
    StatusEntry entry;
    if (kind == "dm") {
      entry.kind = StatusEntry::Kind::Dm;
    } else if (kind == "loop") {
      entry.kind = StatusEntry::Kind::Loop;
    } else {
      return MakeError(EINVAL, "status line {}: unknown kind \"{}\"", line_no, kind);
    }
    IMAGED_TRY_CTX(CheckValue(value), "status line {}", line_no);
    entry.value = std::string(value);
    out.push_back(std::move(entry));
  }
  return out;
}

std::string SerializeStatus(const std::vector<StatusEntry>& entries) {
  std::string out;
  for (const StatusEntry& e : entries) {
    out += KindName(e.kind);
    out += ':';
    out += e.value;
    out += '\n';
  }
  return out;
}

Result<std::vector<StatusEntry>> ReadStatusFile(const Directory& dir, std::string_view file) {
  std::vector<uint8_t> data =
      IMAGED_TRY_CTX(dir.ReadFile(file, kMaxStatusFileBytes), "read status file");
  std::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
  return IMAGED_TRY_CTX(ParseStatus(text), "read status file \"{}\"", dir.PathOf(file));
}

Result<void> WriteStatusFile(const Directory& dir, std::string_view file,
                             const std::vector<StatusEntry>& entries) {
  for (const StatusEntry& e : entries) {
    IMAGED_TRY_CTX(ValidateStatusEntry(e), "write status file \"{}\"", dir.PathOf(file));
  }
  std::string text = SerializeStatus(entries);
  std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  IMAGED_TRY_CTX(dir.AtomicWrite(file, bytes, {.mode = 0644}), "write status file");
  return {};
}

Result<void> AppendStatusEntry(const Directory& dir, std::string_view file,
                               const StatusEntry& entry) {
  IMAGED_TRY_CTX(ValidateStatusEntry(entry), "append to status file \"{}\"", dir.PathOf(file));
  std::vector<StatusEntry> entries;
  Result<std::vector<StatusEntry>> existing = ReadStatusFile(dir, file);
  if (existing) {
    entries = std::move(*existing);
  } else if (existing.error().code != ENOENT) {
    return std::move(existing).error().Wrap("append to status file");
  }
  entries.push_back(entry);
  return WriteStatusFile(dir, file, entries);
}

Result<void> RemoveStatusFile(const Directory& dir, std::string_view file) {
  const bool removed = IMAGED_TRY_CTX(dir.RemoveFile(file), "remove status file");
  if (removed) IMAGED_TRY_CTX(dir.Sync(), "remove status file \"{}\"", dir.PathOf(file));
  return {};
}

}  // namespace imaged::metadata
