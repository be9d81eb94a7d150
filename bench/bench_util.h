// Small shared helpers for the bench programs: a monotonic stopwatch, "--key value" argument
// parsing, and failing loudly. Bench programs print one JSON object per line on stdout, which
// bench/run parses; diagnostics go to stderr.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <imaged/common/result.h>
#include <imaged/common/size.h>

namespace imaged::bench {

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

[[noreturn]] inline void Die(const std::string& what) {
  std::fprintf(stderr, "%s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Check(Result<T> r, std::string_view what) {
  if (!r) Die(fmt::format("{}: {}", what, r.error().ToString()));
  if constexpr (!std::is_void_v<T>) return std::move(r).value();
}

// argv[first..] as "--key value" pairs; "--flag" followed by another "--..." (or nothing) is "1".
class Args {
 public:
  Args(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
      std::string key = argv[i];
      if (key.rfind("--", 0) != 0) Die(fmt::format("unexpected argument '{}'", key));
      key = key.substr(2);
      if (i + 1 < argc && std::string_view(argv[i + 1]).rfind("--", 0) != 0) {
        values_[key] = argv[++i];
      } else {
        values_[key] = "1";
      }
    }
  }
  std::string Str(const std::string& key, std::optional<std::string> def = std::nullopt) const {
    auto it = values_.find(key);
    if (it != values_.end()) return it->second;
    if (!def) Die(fmt::format("missing --{}", key));
    return *def;
  }
  uint64_t Size(const std::string& key, std::optional<uint64_t> def = std::nullopt) const {
    auto it = values_.find(key);
    if (it == values_.end()) {
      if (!def) Die(fmt::format("missing --{}", key));
      return *def;
    }
    auto v = ParseSize(it->second);
    if (!v) Die(fmt::format("--{}: bad size '{}'", key, it->second));
    return *v;
  }
  bool Has(const std::string& key) const { return values_.count(key) != 0; }

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace imaged::bench
