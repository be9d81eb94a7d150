// How images are mapped, and its one spelling for configuration and flags. Header-only, so the
// daemon's config parser (fuzzed on its own) parses it without the manager.
#pragma once

#include <string_view>

#include "imaged/common/result.h"

namespace imaged {

enum class MapStrategy {
  kAuto,      // dm-linear over the disk when the data fs sits on device-mapper, else loop
  kDmLinear,  // one dm-linear device straight over the filesystem's disk
  kLoop,      // one direct-I/O loop device per piece, joined by dm-linear when split
};

inline std::string_view MapStrategyName(MapStrategy strategy) {
  switch (strategy) {
    case MapStrategy::kAuto:
      return "auto";
    case MapStrategy::kDmLinear:
      return "dm-linear";
    case MapStrategy::kLoop:
      return "loop";
  }
  return "?";
}

// "auto", "dm-linear", "loop" (EINVAL for anything else, naming it).
inline Result<MapStrategy> ParseMapStrategy(std::string_view text) {
  for (MapStrategy s : {MapStrategy::kAuto, MapStrategy::kDmLinear, MapStrategy::kLoop}) {
    if (text == MapStrategyName(s)) return s;
  }
  return MakeError(EINVAL, "strategy must be auto, dm-linear or loop, got \"{}\"", text);
}

}  // namespace imaged
