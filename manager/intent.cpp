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
      return fmt::format("{} {} {} {}\n", kGrow, intent.old_size, intent.old_pieces,
                         intent.old_last_piece);
  }
  return {};
}

Result<Intent> ParseIntent(std::string_view text) {
  if (text.empty() || text.back() != '\n') return MakeError(EINVAL, "intent: no final newline");
  text.remove_suffix(1);
  std::vector<std::string_view> words;
  while (!text.empty()) {
    const size_t space = text.find(' ');
    words.push_back(text.substr(0, space));
    text = space == std::string_view::npos ? std::string_view() : text.substr(space + 1);
  }
  Intent intent;
  if (words.size() == 1 && words[0] == kCreate) {
    intent.op = Intent::Op::kCreate;
  } else if (words.size() == 1 && words[0] == kFill) {
    intent.op = Intent::Op::kFill;
  } else if (words.size() == 1 && words[0] == kDelete) {
    intent.op = Intent::Op::kDelete;
  } else if (words.size() == 4 && words[0] == kGrow) {
    intent.op = Intent::Op::kGrow;
    intent.old_size = IMAGED_TRY(Number(words[1]));
    intent.old_pieces = static_cast<size_t>(IMAGED_TRY(Number(words[2])));
    intent.old_last_piece = IMAGED_TRY(Number(words[3]));
    if (intent.old_pieces == 0) return MakeError(EINVAL, "intent: grow from 0 pieces");
  } else {
    return MakeError(EINVAL, "intent: unknown operation");
  }
  return intent;
}

}  // namespace imaged::manager
