#include "fiemap/list_file.h"

#include <fmt/format.h>

namespace imaged::fiemap {

std::string PieceName(std::string_view base, size_t index) {
  return fmt::format("{}.{:04d}", base, index);
}

std::optional<size_t> PieceIndex(std::string_view name, std::string_view base) {
  if (name.size() != base.size() + 5 || !name.starts_with(base) || name[base.size()] != '.') {
    return std::nullopt;
  }
  size_t index = 0;
  for (size_t i = base.size() + 1; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    index = index * 10 + static_cast<size_t>(name[i] - '0');
  }
  return index;
}

std::string SerializeList(std::string_view base, size_t count) {
  std::string out;
  for (size_t i = 0; i < count; ++i) out += PieceName(base, i) + "\n";
  return out;
}

Result<size_t> ParseList(std::string_view content, std::string_view base) {
  if (content.size() > kMaxListFileBytes) return MakeError(EFBIG, "list file is too large");
  size_t count = 0;
  while (!content.empty()) {
    const size_t nl = content.find('\n');
    const std::string_view line = content.substr(0, nl);
    content = nl == std::string_view::npos ? std::string_view() : content.substr(nl + 1);
    if (count == kMaxPieces) return MakeError(EINVAL, "names more than {} pieces", kMaxPieces);
    // Only our own names, in order.
    if (line != PieceName(base, count)) {
      return MakeError(EINVAL, "line {} is \"{}\", not \"{}\"", count + 1, line.substr(0, 64),
                       PieceName(base, count));
    }
    ++count;
  }
  if (count == 0) return MakeError(EINVAL, "names no pieces");
  return count;
}

}  // namespace imaged::fiemap
