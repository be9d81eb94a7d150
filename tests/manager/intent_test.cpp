// The intent file's format: what Recover reads back after a crash must be exactly what was
// written, and anything else is refused (Recover then keeps the intent and reports it).
#include "intent.h"

#include <gtest/gtest.h>

namespace imaged::manager {
namespace {

TEST(IntentTest, EveryOperationRoundTrips) {
  for (auto op : {Intent::Op::kCreate, Intent::Op::kFill, Intent::Op::kDelete}) {
    Intent intent;
    intent.op = op;
    auto back = ParseIntent(SerializeIntent(intent));
    ASSERT_TRUE(back) << back.error().ToString();
    EXPECT_EQ(*back, intent);
  }
  for (auto op : {Intent::Op::kGrow, Intent::Op::kShrink}) {
    Intent intent;
    intent.op = op;
    intent.old_size = 3 << 20;
    intent.cut_pieces = 2;
    intent.cut_last_piece = 1 << 20;
    auto back = ParseIntent(SerializeIntent(intent));
    ASSERT_TRUE(back) << back.error().ToString();
    EXPECT_EQ(*back, intent);
  }
  EXPECT_EQ(SerializeIntent({Intent::Op::kShrink, 4096, 1, 4096}), "shrink 4096 1 4096\n");
}

TEST(IntentTest, AnythingElseIsRefused) {
  for (const char* text : {"", "create", "create \n", "grow 1 2\n", "grow 1 0 4096\n",
                           "shrink 1 0 4096\n", "shrink 1 x 4096\n", "shrink -1 1 4096\n",
                           "grow 1 1 4096 5\n", "resize 1 1 1\n", "delete\ndelete\n",
                           "grow 99999999999999999999 1 1\n"}) {
    auto parsed = ParseIntent(text);
    EXPECT_FALSE(parsed) << "accepted \"" << text << "\"";
    if (!parsed) {
      EXPECT_EQ(parsed.error().code, EINVAL) << text;
    }
  }
}

}  // namespace
}  // namespace imaged::manager
