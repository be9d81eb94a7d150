#include "intent.h"

#include <charconv>
#include <vector>

#include <fmt/format.h>

namespace imaged::manager {
namespace {

constexpr std::string_view kCreate = "create";
constexpr std::string_view kFill = "fill";
constexpr std::string_view kDelete = "delete";
constexpr std::string_view kGrow = "grow";
constexpr std::string_view kShrink = "shrink";

Result<uint64_t> Number(std::string_view word) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(word.data(), word.data() + word.size(), v);
  if (word.empty() || ec != std::errc() || p != word.data() + word.size()) {
    return MakeError(EINVAL, "intent: \"{}\" is not a number", word);
  }
  return v;
}

}  // namespace

std::string SerializeIntent(const Intent& intent) {
  switch (intent.op) {
    case Intent::Op::kCreate:
      return std::string(kCreate) + "\n";
    case Intent::Op::kFill:
      return std::string(kFill) + "\n";
    case Intent::Op::kDelete:
      return std::string(kDelete) + "\n";
    case Intent::Op::kGrow:
    case Intent::Op::kShrink:
      return fmt::format("{} {} {} {}\n", intent.op == Intent::Op::kGrow ? kGrow : kShrink,
                         intent.old_size, intent.cut_pieces, intent.cut_last_piece);
  }
  return {};
}

Result<Intent> ParseIntent(std::string_view text) {
  if (text.empty() || text.back() != '\n') return MakeError(EINVAL, "intent: no final newline");
  text.remove_suffix(1);
  // Split at every single space: a doubled or trailing space gives an empty word, refused below.
  std::vector<std::string_view> words;
  for (size_t space = text.find(' ');; space = text.find(' ')) {
    words.push_back(text.substr(0, space));
    if (space == std::string_view::npos) break;
    text.remove_prefix(space + 1);
  }
  Intent intent;
  if (words.size() == 1 && words[0] == kCreate) {
    intent.op = Intent::Op::kCreate;
  } else if (words.size() == 1 && words[0] == kFill) {
    intent.op = Intent::Op::kFill;
  } else if (words.size() == 1 && words[0] == kDelete) {
    intent.op = Intent::Op::kDelete;
  } else if (words.size() == 4 && (words[0] == kGrow || words[0] == kShrink)) {
    intent.op = words[0] == kGrow ? Intent::Op::kGrow : Intent::Op::kShrink;
    intent.old_size = IMAGED_TRY(Number(words[1]));
    intent.cut_pieces = static_cast<size_t>(IMAGED_TRY(Number(words[2])));
    intent.cut_last_piece = IMAGED_TRY(Number(words[3]));
    if (intent.cut_pieces == 0) return MakeError(EINVAL, "intent: {} to 0 pieces", words[0]);
  } else {
    return MakeError(EINVAL, "intent: unknown operation");
  }
  return intent;
}

}  // namespace imaged::manager
