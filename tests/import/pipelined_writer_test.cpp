// Copy() with max_in_flight > 1: the same bytes as one write at a time, writes really in
// flight together, the first error wins, every write joined before Copy returns, and progress
// that never counts an unfinished write.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "import_test_util.h"

namespace imaged::import::test {
namespace {

// Data and zero runs of varied sizes, an unaligned end; `expected` is the image.
struct Mixed {
  uint64_t size = (24 << 20) + 1000;
  Bytes data;
  Bytes expected;
  std::vector<Run> runs;
  Mixed() {
    data.resize(size);
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(i % 253 + 1);
    expected.assign(size, 0);
    uint64_t off = 0;
    const uint64_t lengths[] = {4096, 100000, 3 << 20, 65536, 5 << 20, 1, 777, 2 << 20};
    for (size_t i = 0; off < size; ++i) {
      const uint64_t len = std::min<uint64_t>(lengths[i % 8], size - off);
      const bool is_data = i % 3 != 1;
      runs.push_back({off, len, is_data ? Run::Kind::Data : Run::Kind::Zero, {}});
      if (is_data) std::memcpy(&expected[off], &data[off], len);
      off += len;
    }
  }
};

// A thread-safe sink that records calls, how many ran at once, and what has completed.
class ConcurrentSink : public RunSink {
 public:
  explicit ConcurrentSink(uint64_t size) : bytes(size, 0xA5) {}

  Result<void> Write(uint64_t offset, std::span<const uint8_t> data) override {
    return Call(offset, data.size(),
                [&] { std::memcpy(&bytes[offset], data.data(), data.size()); });
  }
  Result<void> WriteZeroes(uint64_t offset, uint64_t length) override {
    return Call(offset, length, [&] { std::memset(&bytes[offset], 0, length); });
  }
  uint64_t size() const override { return bytes.size(); }

  // [0, n) is covered by completed calls.
  bool CompletedPrefix(uint64_t n) {
    std::lock_guard<std::mutex> l(mu);
    uint64_t end = 0;
    for (const auto& [off, len] : completed) {
      if (off > end) break;
      end = std::max(end, off + len);
    }
    return end >= n;
  }

  Bytes bytes;
  std::mutex mu;
  std::condition_variable cv;
  int active = 0;
  int max_active = 0;
  int calls = 0;
  bool overlapped = false;  // two calls touched the same bytes at once
  std::map<uint64_t, uint64_t> running;
  std::map<uint64_t, uint64_t> completed;
  // Failure injection: the call covering this offset fails with EIO.
  std::optional<uint64_t> fail_at;
  // The first call waits (up to 10 s) until a second one is running.
  bool wait_for_company = false;

 private:
  template <typename Fn>
  Result<void> Call(uint64_t offset, uint64_t length, Fn&& fn) {
    if (offset > bytes.size() || length > bytes.size() - offset) {
      return MakeError(EINVAL, "past the end");
    }
    {
      std::unique_lock<std::mutex> l(mu);
      for (const auto& [o, n] : running) overlapped |= offset < o + n && o < offset + length;
      running[offset] = length;
      ++calls;
      max_active = std::max(max_active, ++active);
      cv.notify_all();
      if (wait_for_company && calls == 1) {
        cv.wait_for(l, std::chrono::seconds(10), [&] { return active >= 2; });
      }
    }
    fn();
    const bool fail = fail_at && *fail_at >= offset && *fail_at < offset + length;
    std::lock_guard<std::mutex> l(mu);
    running.erase(offset);
    --active;
    if (fail) return MakeError(EIO, "injected failure at {}", offset);
    completed[offset] = length;
    return Ok();
  }
};

CopyOptions Pipelined() {
  CopyOptions o;
  o.max_in_flight = 4;
  o.buffer_size = 1 << 20;
  return o;
}

TEST(PipelinedCopyTest, WritesTheSameImageAsOneWriteAtATime) {
  Mixed m;
  for (bool zeroed : {false, true}) {
    ListReader reader(m.size, m.runs, m.data);
    ConcurrentSink sink(m.size);
    if (zeroed) std::fill(sink.bytes.begin(), sink.bytes.end(), 0);
    CopyOptions o = Pipelined();
    o.target_is_zeroed = zeroed;
    auto stats = Copy(reader, sink, nullptr, o);
    ASSERT_TRUE(stats) << stats.error().ToString();
    EXPECT_EQ(sink.bytes, m.expected) << "target_is_zeroed=" << zeroed;
    EXPECT_FALSE(sink.overlapped);
    EXPECT_EQ(sink.active, 0);
  }
}

TEST(PipelinedCopyTest, KeepsSeveralWritesInFlight) {
  Mixed m;
  ListReader reader(m.size, m.runs, m.data);
  ConcurrentSink sink(m.size);
  sink.wait_for_company = true;
  ASSERT_TRUE(Copy(reader, sink, nullptr, Pipelined()));
  EXPECT_GE(sink.max_active, 2);
  EXPECT_LE(sink.max_active, 4);
  EXPECT_EQ(sink.bytes, m.expected);
}

TEST(PipelinedCopyTest, FirstErrorIsReturnedAfterEveryWriteFinished) {
  Mixed m;
  ListReader reader(m.size, m.runs, m.data);
  ConcurrentSink sink(m.size);
  sink.fail_at = 6 << 20;
  auto r = Copy(reader, sink, nullptr, Pipelined());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO) << r.error().ToString();
  std::lock_guard<std::mutex> l(sink.mu);
  EXPECT_EQ(sink.active, 0) << "a write still running after Copy returned";
}

TEST(PipelinedCopyTest, ProgressCountsOnlyCompletedWrites) {
  Mixed m;
  ListReader reader(m.size, m.runs, m.data);
  ConcurrentSink sink(m.size);
  uint64_t last = 0;
  int reports = 0;
  auto r = Copy(
      reader, sink,
      [&](uint64_t done, uint64_t total) {
        EXPECT_EQ(total, m.size);
        EXPECT_LE(last, done);
        // Every byte below `done` has been written (the target is not pre-zeroed).
        EXPECT_TRUE(sink.CompletedPrefix(done)) << "reported " << done;
        last = done;
        ++reports;
        return true;
      },
      Pipelined());
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_GT(reports, 1);
  EXPECT_EQ(last, m.size);
}

TEST(PipelinedCopyTest, CancelStopsAndJoinsTheWriters) {
  Mixed m;
  ListReader reader(m.size, m.runs, m.data);
  ConcurrentSink sink(m.size);
  int reports = 0;
  auto r = Copy(
      reader, sink, [&](uint64_t, uint64_t) { return ++reports < 3; }, Pipelined());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ECANCELED);
  std::lock_guard<std::mutex> l(sink.mu);
  EXPECT_EQ(sink.active, 0);
  EXPECT_LT(sink.completed.size(), static_cast<size_t>(sink.calls + 1));
}

TEST(PipelinedCopyTest, LargeZeroRunsAreZeroedInBufferSizedPieces) {
  const uint64_t size = 16 << 20;
  Bytes data(size, 7);
  std::vector<import::Run> runs = {{0, 4096, import::Run::Kind::Data, {}},
                                   {4096, size - 4096, import::Run::Kind::Zero, {}}};
  ListReader reader(size, runs, data);
  ConcurrentSink sink(size);
  ASSERT_TRUE(Copy(reader, sink, nullptr, Pipelined()));
  Bytes expected(size, 0);
  std::fill(expected.begin(), expected.begin() + 4096, 7);
  EXPECT_EQ(sink.bytes, expected);
  for (const auto& [off, len] : sink.completed) EXPECT_LE(len, 1u << 20) << "at " << off;
}

// A source whose reads fail with EIO when they cover `fail_at`.
class FailingSource : public Source {
 public:
  FailingSource(std::span<const uint8_t> bytes, uint64_t fail_at)
      : inner_(bytes), fail_at_(fail_at) {}
  Result<void> ReadAt(void* buf, size_t len, uint64_t offset) override {
    if (fail_at_ >= offset && fail_at_ < offset + len) {
      return MakeError(EIO, "injected read failure at {}", offset);
    }
    return inner_.ReadAt(buf, len, offset);
  }
  uint64_t size() const override { return inner_.size(); }

 private:
  MemorySource inner_;
  uint64_t fail_at_;
};

// Copies `m` with every data run deferred to `source`.
Result<ImportStats> CopyDeferred(const Mixed& m, Source& source, int in_flight,
                                 ConcurrentSink& sink) {
  ListReader reader(m.size, m.runs, m.data);
  reader.DeferTo(&source);
  CopyOptions o = Pipelined();
  o.max_in_flight = in_flight;
  return Copy(reader, sink, nullptr, o);
}

TEST(DeferredReadsTest, WriteTheSameImageInlineAndPipelined) {
  Mixed m;
  MemorySource source(m.data);
  for (int in_flight : {1, 4}) {
    ConcurrentSink sink(m.size);
    auto stats = CopyDeferred(m, source, in_flight, sink);
    ASSERT_TRUE(stats) << stats.error().ToString();
    EXPECT_EQ(sink.bytes, m.expected) << "max_in_flight=" << in_flight;
    EXPECT_FALSE(sink.overlapped);
  }
}

TEST(DeferredReadsTest, ReadFailureNamesThePlaceAndItsBufferIsNeverWritten) {
  Mixed m;
  // Inside the first data run longer than a buffer, past the first buffer.
  uint64_t fail_at = 0;
  for (const auto& run : m.runs) {
    if (run.kind == import::Run::Kind::Data && run.length > (1 << 20)) {
      fail_at = run.offset + run.length / 2;
      break;
    }
  }
  ASSERT_GT(fail_at, 1u << 20);
  FailingSource source(m.data, fail_at);
  for (int in_flight : {1, 4}) {
    ConcurrentSink sink(m.size);
    auto r = CopyDeferred(m, source, in_flight, sink);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EIO) << r.error().ToString();
    EXPECT_NE(r.error().ToString().find("guest offset"), std::string::npos) << r.error().ToString();
    std::lock_guard<std::mutex> l(sink.mu);
    EXPECT_EQ(sink.active, 0) << "a write still running after Copy returned";
    for (const auto& [off, len] : sink.completed) {
      EXPECT_FALSE(fail_at >= off && fail_at < off + len) << "the failed buffer was written";
    }
  }
}

TEST(DeferredReadsTest, RangeOutsideTheSourceIsRefusedBeforeAnyWrite) {
  Mixed m;
  Bytes shorter(m.data.begin(), m.data.begin() + 4096);  // the first run fits, nothing else
  MemorySource source(shorter);
  std::vector<import::Run> runs = {{0, 8192, import::Run::Kind::Data, {}}};
  ListReader reader(8192, runs, m.data);
  reader.DeferTo(&source);
  ConcurrentSink sink(8192);
  auto r = Copy(reader, sink, nullptr, Pipelined());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL) << r.error().ToString();
  EXPECT_EQ(sink.calls, 0);
}

// Hands out `m`'s data runs as clusters to decode (Run::decoder), each decoded cluster one page
// longer than its run with junk past it, so a copy of the wrong part shows. Counts how many
// decodes run at once; `fail_at` makes the decode of the run that covers it fail with EBADMSG.
class DecodingReader : public ImageReader, public ClusterDecoder {
 public:
  DecodingReader(const Mixed& m, std::chrono::milliseconds decode_time = {},
                 uint64_t fail_at = UINT64_MAX)
      : m_(m), decode_time_(decode_time), fail_at_(fail_at) {}
  Format format() const override { return Format::Qcow2; }
  uint64_t virtual_size() const override { return m_.size; }
  Result<std::optional<Run>> Next() override {
    if (next_ == m_.runs.size()) return std::optional<Run>();
    Run r = m_.runs[next_++];
    if (r.kind == Run::Kind::Data) {
      r.decoder = this;
      r.decode_key = r.length;
      r.decoded_size = r.length + 4096;
    }
    return std::optional<Run>(r);
  }
  // The key is the run's length; `guest` its offset.
  Result<void> DecodeCluster(uint64_t length, uint64_t guest,
                             std::span<uint8_t> out) const override {
    if (out.size() != length + 4096) return MakeError(EINVAL, "decode into {} bytes", out.size());
    const int now = ++decoding_;
    for (int seen = most_at_once; now > seen && !most_at_once.compare_exchange_weak(seen, now);) {
    }
    std::this_thread::sleep_for(decode_time_);
    --decoding_;
    if (fail_at_ >= guest && fail_at_ < guest + length) {
      return MakeError(EBADMSG, "injected decode failure for guest offset {}", guest);
    }
    std::memcpy(out.data(), &m_.data[guest], length);
    std::memset(out.data() + length, 0xEE, 4096);
    return Ok();
  }
  mutable std::atomic<int> most_at_once{0};

 private:
  const Mixed& m_;
  std::chrono::milliseconds decode_time_;
  uint64_t fail_at_;
  size_t next_ = 0;
  mutable std::atomic<int> decoding_{0};
};

TEST(DeferredDecodeTest, TheSameImageWhateverTheBuffersAndWritesInFlight) {
  Mixed m;
  for (const auto& [buffer, in_flight] :
       std::vector<std::pair<size_t, int>>{{1 << 20, 4}, {4096, 4}, {1 << 20, 1}, {4096, 1}}) {
    DecodingReader reader(m);
    ConcurrentSink sink(m.size);
    CopyOptions o = Pipelined();
    o.buffer_size = buffer;
    o.max_in_flight = in_flight;
    auto stats = Copy(reader, sink, nullptr, o);
    ASSERT_TRUE(stats) << stats.error().ToString();
    EXPECT_EQ(sink.bytes, m.expected) << buffer << " byte buffers, " << in_flight << " in flight";
  }
}

// Decoding is the writers' work, so it runs on several of them at once.
TEST(DeferredDecodeTest, ClustersAreDecodedInParallel) {
  Mixed m;
  DecodingReader reader(m, std::chrono::milliseconds(20));
  ConcurrentSink sink(m.size);
  auto stats = Copy(reader, sink, nullptr, Pipelined());
  ASSERT_TRUE(stats) << stats.error().ToString();
  EXPECT_EQ(sink.bytes, m.expected);
  EXPECT_GE(reader.most_at_once.load(), 2);
}

TEST(DeferredDecodeTest, DecodeFailureIsReturnedAndItsBufferIsNeverWritten) {
  Mixed m;
  uint64_t fail_at = 0;
  for (const auto& run : m.runs) {
    if (run.kind == Run::Kind::Data && run.length > (1 << 20)) {
      fail_at = run.offset + run.length / 2;
      break;
    }
  }
  for (int in_flight : {1, 4}) {
    DecodingReader reader(m, {}, fail_at);
    ConcurrentSink sink(m.size);
    CopyOptions o = Pipelined();
    o.max_in_flight = in_flight;
    auto r = Copy(reader, sink, nullptr, o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EBADMSG) << r.error().ToString();
    std::lock_guard<std::mutex> l(sink.mu);
    EXPECT_EQ(sink.active, 0) << "a write still running after Copy returned";
    for (const auto& [off, len] : sink.completed) {
      EXPECT_FALSE(fail_at >= off && fail_at < off + len) << "the failed buffer was written";
    }
  }
}

}  // namespace
}  // namespace imaged::import::test
