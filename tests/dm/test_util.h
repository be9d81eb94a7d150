// Small helpers shared by the dm tests.
#pragma once

#include <cstdlib>
#include <cstring>
#include <memory>

#include <gtest/gtest.h>

#include "bytes.h"
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

}  // namespace imaged::test

// Result assertions that print the error text; more context can be streamed with <<.
#define ASSERT_OK(expr) ASSERT_TRUE(::imaged::test::IsOk(expr)) << #expr
#define EXPECT_OK(expr) EXPECT_TRUE(::imaged::test::IsOk(expr)) << #expr
#define ASSERT_ERRNO(expr, err) ASSERT_TRUE(::imaged::test::FailsWith((expr), (err))) << #expr
