// Copy(): aligned writes whatever the runs look like, zero handling, progress and cancel.
#include <gmock/gmock.h>

#include "import_test_util.h"

namespace imaged::import::test {
namespace {

// Runs at awkward offsets: a 1-byte data run, a 3-byte zero run, a big zero run starting
// mid-block, a gap, data spanning several buffers.
struct Awkward {
  uint64_t size = (9 << 20) + 4096 * 3 + 100;
  Bytes data;
  Bytes expected;
  std::vector<Run> runs;
  Awkward() {
    data.resize(size);
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(i % 251 + 1);
    expected.assign(size, 0);
    auto add = [&](uint64_t off, uint64_t len, bool is_data) {
      runs.push_back({off, len, is_data ? Run::Kind::Data : Run::Kind::Zero, {}});
      if (is_data) std::memcpy(&expected[off], &data[off], len);
    };
    add(0, 1, true);
    add(1, 3, false);
    add(4, 5000, true);
    add(5004, 300000, false);
    add(305004, 10, true);
    // gap [305014, 400000) reads as zero
    add(400000, (5 << 20), true);
    add(400000 + (5 << 20), 1 << 20, false);
    add(400000 + (6 << 20), size - 400000 - (6 << 20), true);
  }
};

void ExpectAligned(const MemorySink& sink) {
  for (size_t i = 0; i + 1 < sink.calls.size(); ++i) {
    const auto& c = sink.calls[i];
    EXPECT_EQ(c.offset % 4096, 0u) << "call " << i;
    EXPECT_EQ(c.length % 4096, 0u) << "call " << i;
    EXPECT_TRUE(c.buffer_aligned) << "call " << i;
  }
}

TEST(CopyTest, WritesAreAlignedWhateverTheRuns) {
  Awkward a;
  ListReader reader(a.size, a.runs, a.data);
  MemorySink sink(a.size, 0xA5);
  auto stats = Copy(reader, sink, nullptr);
  ASSERT_TRUE(stats) << stats.error().ToString();
  EXPECT_EQ(sink.bytes, a.expected);
  ExpectAligned(sink);
  EXPECT_EQ(stats->runs, a.runs.size());
  EXPECT_EQ(stats->bytes_data + stats->bytes_zero, a.size);
}

TEST(CopyTest, ZeroedTargetSkipsZeroRuns) {
  Awkward a;
  ListReader reader(a.size, a.runs, a.data);
  MemorySink sink(a.size, 0);
  CopyOptions options;
  options.target_is_zeroed = true;
  ASSERT_TRUE(Copy(reader, sink, nullptr, options));
  EXPECT_EQ(sink.bytes, a.expected);
  ExpectAligned(sink);
  for (const auto& c : sink.calls) EXPECT_FALSE(c.zero);
  // The 1 MiB zero run is neither zeroed nor written as data.
  for (const auto& c : sink.calls) {
    EXPECT_FALSE(c.offset <= 400000 + (5 << 20) + 8192 &&
                 c.offset + c.length >= 400000 + (6 << 20) - 8192);
  }
}

TEST(CopyTest, UnzeroedTargetGetsLargeZeroRunsZeroed) {
  Awkward a;
  ListReader reader(a.size, a.runs, a.data);
  MemorySink sink(a.size, 0xA5);
  ASSERT_TRUE(Copy(reader, sink, nullptr));
  size_t zero_calls = 0;
  for (const auto& c : sink.calls) zero_calls += c.zero;
  EXPECT_GE(zero_calls, 2u);
}

TEST(CopyTest, TargetLargerThanImageIsZeroedPastTheImage) {
  Awkward a;
  ListReader reader(a.size, a.runs, a.data);
  MemorySink sink(a.size + (1 << 20), 0xA5);
  ASSERT_TRUE(Copy(reader, sink, nullptr));
  Bytes expected = a.expected;
  expected.resize(a.size + (1 << 20), 0);
  EXPECT_EQ(sink.bytes, expected);
  ExpectAligned(sink);
}

TEST(CopyTest, ProgressIsMonotonicAndReachesTheTotal) {
  Awkward a;
  ListReader reader(a.size, a.runs, a.data);
  MemorySink sink(a.size);
  std::vector<std::pair<uint64_t, uint64_t>> seen;
  ASSERT_TRUE(Copy(reader, sink, [&](uint64_t done, uint64_t total) {
    seen.emplace_back(done, total);
    return true;
  }));
  ASSERT_FALSE(seen.empty());
  for (size_t i = 1; i < seen.size(); ++i) EXPECT_LE(seen[i - 1].first, seen[i].first);
  EXPECT_EQ(seen.back(), std::make_pair(a.size, a.size));
}

TEST(CopyTest, ProgressReturningFalseCancels) {
  Awkward a;
  ListReader reader(a.size, a.runs, a.data);
  MemorySink sink(a.size);
  auto r = Copy(reader, sink, [](uint64_t, uint64_t) { return false; });
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ECANCELED);
}

TEST(CopyTest, ImageLargerThanTargetIsRefusedBeforeWriting) {
  Awkward a;
  ListReader reader(a.size, a.runs, a.data);
  MemorySink sink(a.size - 1);
  auto r = Copy(reader, sink, nullptr);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EFBIG);
  EXPECT_TRUE(sink.calls.empty());
}

TEST(CopyTest, OverlappingRunsAreRefused) {
  Bytes data(8192, 1);
  ListReader reader(8192, {{0, 4096, Run::Kind::Data, {}}, {100, 10, Run::Kind::Data, {}}}, data);
  MemorySink sink(8192);
  auto r = Copy(reader, sink, nullptr);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
}

TEST(FileSinkTest, CopiesIntoAFileWithAndWithoutODirect) {
  imaged::test::TempDir dir;
  Awkward a;
  for (bool direct : {false, true}) {
    fs::path target = dir.path() / "target.img";
    WriteAll(target, Bytes(a.size, 0xA5));
    auto sink = FileSink::Open(target, {.direct = direct});
    if (!sink && direct && sink.error().code == EINVAL) continue;  // no O_DIRECT on this fs
    ASSERT_TRUE(sink) << sink.error().ToString();
    ListReader reader(a.size, a.runs, a.data);
    auto stats = Copy(reader, **sink, nullptr);
    ASSERT_TRUE(stats) << stats.error().ToString();
    ASSERT_TRUE((*sink)->Sync());
    EXPECT_EQ(ReadAll(target), a.expected) << "direct=" << direct;
  }
}

}  // namespace
}  // namespace imaged::import::test
