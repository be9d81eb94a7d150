// The list file's rules: piece names and the only parser of list files.
#include "fiemap/list_file.h"

#include <gtest/gtest.h>

namespace imaged::fiemap {
namespace {

TEST(ListFileTest, PieceNamesAreTheBaseAndFourDigits) {
  EXPECT_EQ(PieceName("a.img", 0), "a.img.0000");
  EXPECT_EQ(PieceName("a.img", 9999), "a.img.9999");
  EXPECT_EQ(PieceIndex("a.img.0042", "a.img"), 42u);
  EXPECT_FALSE(PieceIndex("a.img.42", "a.img"));
  EXPECT_FALSE(PieceIndex("a.img.00x2", "a.img"));
  EXPECT_FALSE(PieceIndex("a.img.0000", "a"));
  EXPECT_FALSE(PieceIndex("b.img.0000", "a.img"));
  // An image whose name starts with another's never has its pieces taken for the other's.
  EXPECT_FALSE(PieceIndex("a.img.b.img.0000", "a.img"));
}

TEST(ListFileTest, SerializeAndParseRoundTrip) {
  for (size_t count : {1u, 2u, 17u}) {
    auto parsed = ParseList(SerializeList("x.img", count), "x.img");
    ASSERT_TRUE(parsed) << parsed.error().ToString();
    EXPECT_EQ(*parsed, count);
  }
  auto no_newline = ParseList("x.img.0000\nx.img.0001", "x.img");
  ASSERT_TRUE(no_newline);
  EXPECT_EQ(*no_newline, 2u);
}

TEST(ListFileTest, AnythingElseIsRefusedNamingTheLine) {
  for (std::string_view bad :
       {"", "\n", "x.img.0001\n", "x.img.0000\n\n", "x.img.0000\nx.img.0002\n", "../etc/passwd\n",
        "x.img.0000\n/dev/sda\n", "y.img.0000\n"}) {
    auto r = ParseList(bad, "x.img");
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, EINVAL) << bad;
  }
  auto r = ParseList("x.img.0000\nevil\n", "x.img");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("line 2"), std::string::npos) << r.error().message;
}

TEST(ListFileTest, MoreThanTheMaximumIsRefused) {
  auto r = ParseList(SerializeList("x.img", kMaxPieces + 1), "x.img");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
}

}  // namespace
}  // namespace imaged::fiemap
