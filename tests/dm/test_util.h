// Small helpers shared by the dm tests.
#pragma once

#include <cstdlib>
#include <cstring>
#include <memory>

#include <gtest/gtest.h>

#include "imaged/common/result.h"

namespace imaged::test {

template <typename R>
::testing::AssertionResult IsOk(const R& result) {
  if (result.has_value()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << result.error().ToString();
}

template <typename R>
::testing::AssertionResult FailsWith(const R& result, int err) {
  if (result.has_value()) return ::testing::AssertionFailure() << "succeeded";
  if (result.error().code != err) {
    return ::testing::AssertionFailure()
           << "failed with errno " << result.error().code << " instead of " << err << ": "
           << result.error().ToString();
  }
  return ::testing::AssertionSuccess();
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<char, FreeDeleter>;

// A 4 KiB-aligned buffer for O_DIRECT, filled with `fill`.
inline AlignedBuffer Aligned(size_t size, char fill) {
  void* p = nullptr;
  if (posix_memalign(&p, 4096, size) != 0 || p == nullptr) std::abort();
  std::memset(p, fill, size);
  return AlignedBuffer(static_cast<char*>(p));
}

}  // namespace imaged::test

// Result assertions that print the error text; more context can be streamed with <<.
#define ASSERT_OK(expr) ASSERT_TRUE(::imaged::test::IsOk(expr)) << #expr
#define EXPECT_OK(expr) EXPECT_TRUE(::imaged::test::IsOk(expr)) << #expr
#define ASSERT_ERRNO(expr, err) ASSERT_TRUE(::imaged::test::FailsWith((expr), (err))) << #expr
