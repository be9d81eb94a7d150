// Human-readable byte sizes: "4G", "512M", "1.5GiB" <-> bytes, for the CLI and messages.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace imaged {

// Formats with binary units and one decimal: 4294967296 -> "4.0 GiB", 512 -> "512 B".
inline std::string HumanSize(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return fmt::format("{} B", bytes);
  double v = static_cast<double>(bytes);
  int unit = -1;
  while (v >= 1024 && unit < 5) {
    v /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f} {}", v, kUnits[unit]);
}

// Parses "4096", "4K", "4KiB", "1.5G", "2T" (binary multiples; "B" suffix optional).
// Returns nullopt for anything malformed, negative, or overflowing 64 bits.
inline std::optional<uint64_t> ParseSize(std::string_view text) {
  if (text.empty()) return std::nullopt;
  size_t i = 0;
  uint64_t whole = 0;
  bool digits = false;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (whole > (UINT64_MAX - d) / 10) return std::nullopt;
    whole = whole * 10 + d;
    digits = true;
    ++i;
  }
  uint64_t frac_num = 0, frac_den = 1;
  if (i < text.size() && text[i] == '.') {
    ++i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      if (frac_den < 1000000000ull) {
        frac_num = frac_num * 10 + static_cast<uint64_t>(text[i] - '0');
        frac_den *= 10;
      }
      digits = true;
      ++i;
    }
  }
  if (!digits) return std::nullopt;
  std::string_view suffix = text.substr(i);
  uint64_t mult = 1;
  if (!suffix.empty()) {
    char c = suffix[0];
    int shift = -1;
    switch (c) {
      case 'b': case 'B': shift = 0; break;
      case 'k': case 'K': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      case 'g': case 'G': shift = 30; break;
      case 't': case 'T': shift = 40; break;
      case 'p': case 'P': shift = 50; break;
      default: return std::nullopt;
    }
    std::string_view rest = suffix.substr(1);
    if (shift == 0) {
      if (!rest.empty()) return std::nullopt;
    } else if (!(rest.empty() || rest == "B" || rest == "iB" || rest == "ib" || rest == "b")) {
      return std::nullopt;
    }
    mult = uint64_t{1} << shift;
  }
  if (whole > UINT64_MAX / mult) return std::nullopt;
  uint64_t bytes = whole * mult;
  // The fraction is applied with integer math so "1.5G" is exact.
  unsigned __int128 frac = static_cast<unsigned __int128>(frac_num) * mult / frac_den;
  if (bytes > UINT64_MAX - frac) return std::nullopt;
  return bytes + static_cast<uint64_t>(frac);
}

}  // namespace imaged
