// The list file of a split image and the names of its pieces: the one place that says what they
// look like. Pure: no I/O.
//
// An image whose list file is named `<base>` (imaged uses `<name>.img`) has pieces
// `<base>.0000`, `<base>.0001`, ... in that order, and the list file holds exactly those names,
// one per line, each ending in '\n'. A list file is never trusted to point anywhere else.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imaged/common/result.h"

namespace imaged::fiemap {

inline constexpr size_t kMaxPieces = 9999;
// A list of kMaxPieces names is far smaller; anything larger is not a list file of ours.
inline constexpr size_t kMaxListFileBytes = 4 << 20;

// "<base>.NNNN" (four digits).
std::string PieceName(std::string_view base, size_t index);
// The index of piece name `name` of `base`, or nullopt when `name` is not exactly
// "<base>.NNNN".
std::optional<size_t> PieceIndex(std::string_view name, std::string_view base);

// The list file's content for `count` pieces of `base`.
std::string SerializeList(std::string_view base, size_t count);
// The number of pieces `content` names. EINVAL (naming the line) unless it is exactly what
// SerializeList writes for some count in 1..kMaxPieces (a missing final newline is tolerated:
// some editors and older writers drop it).
Result<size_t> ParseList(std::string_view content, std::string_view base);

}  // namespace imaged::fiemap
