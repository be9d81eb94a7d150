// Errors are values: every fallible call returns Result<T>, which holds either a T or an
// Error carrying the errno and a human-readable context chain, e.g.
//   create "system": fallocate 4.0 GiB on "/data/system.img.0000": No space left on device
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace imaged {

// What a failure means beyond its errno. The errno stays the first one seen (an EIO while
// reading extents stays EIO); the kind says whether an image's data is at stake, which is what
// the RPC layer reports as DATA_LOSS.
enum class ErrorKind : uint8_t {
  kGeneric,          // the errno says it all
  kExtentsChanged,   // an image's files no longer own exactly the blocks lp_metadata records
  kCorruptMetadata,  // lp_metadata (or a list or status file) cannot be parsed
};

struct Error {
  int code = 0;         // errno value (positive), 0 when the failure is not an OS error
  std::string message;  // context, outermost first, without the strerror text
  ErrorKind kind = ErrorKind::kGeneric;

  // Full text for logs and users: "<message>: <strerror(code)>".
  std::string ToString() const {
    if (code == 0) return message;
    return message + ": " + std::strerror(code);
  }

  // Prepends an outer context: Error{ENOSPC,"fallocate"}.Wrap("create \"a\"") reads
  // `create "a": fallocate: No space left on device`.
  Error Wrap(std::string_view outer) const& {
    return Error{code, message.empty() ? std::string(outer) : fmt::format("{}: {}", outer, message),
                 kind};
  }
  Error Wrap(std::string_view outer) && {
    message = message.empty() ? std::string(outer) : fmt::format("{}: {}", outer, message);
    return std::move(*this);
  }

  // The same error, classified.
  Error As(ErrorKind k) && {
    kind = k;
    return std::move(*this);
  }
  Error As(ErrorKind k) const& { return Error{code, message, k}; }
};

// An error from errno as it is right now.
template <typename... Args>
Error ErrnoError(fmt::format_string<Args...> fmt, Args&&... args) {
  int saved = errno;
  return Error{saved ? saved : EIO, fmt::format(fmt, std::forward<Args>(args)...)};
}

// An error with an explicit errno (EINVAL for bad input, ENOENT, ...).
template <typename... Args>
Error MakeError(int code, fmt::format_string<Args...> fmt, Args&&... args) {
  return Error{code, fmt::format(fmt, std::forward<Args>(args)...)};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(const T& value) : v_(std::in_place_index<0>, value) {}
  Result(T&& value) : v_(std::in_place_index<0>, std::move(value)) {}
  Result(const Error& error) : v_(std::in_place_index<1>, error) {}
  Result(Error&& error) : v_(std::in_place_index<1>, std::move(error)) {}
  template <typename U>
    requires(std::is_constructible_v<T, U &&> && !std::is_same_v<std::decay_t<U>, T> &&
             !std::is_same_v<std::decay_t<U>, Error> && !std::is_same_v<std::decay_t<U>, Result>)
  Result(U&& value) : v_(std::in_place_index<0>, T(std::forward<U>(value))) {}

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(const Error& error) : error_(error), ok_(false) {}
  Result(Error&& error) : error_(std::move(error)), ok_(false) {}

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  void value() const {}
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_;
  bool ok_ = true;
};

inline Result<void> Ok() { return {}; }

}  // namespace imaged

// Propagates an error from an expression returning Result<T>; evaluates to the T.
// Uses a GNU statement expression (GCC and clang), which keeps call sites to one line.
#define IMAGED_TRY(expr)                                   \
  ({                                                       \
    auto&& imaged_try_result_ = (expr);                    \
    if (!imaged_try_result_) {                             \
      return std::move(imaged_try_result_).error();        \
    }                                                      \
    std::move(imaged_try_result_).value();                 \
  })

// Like IMAGED_TRY, but prepends context to the error on the way out.
#define IMAGED_TRY_CTX(expr, ...)                                      \
  ({                                                                   \
    auto&& imaged_try_result_ = (expr);                                \
    if (!imaged_try_result_) {                                         \
      return std::move(imaged_try_result_).error().Wrap(fmt::format(__VA_ARGS__)); \
    }                                                                  \
    std::move(imaged_try_result_).value();                             \
  })
