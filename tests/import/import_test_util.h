// Helpers for the import tests: build sources, run the real peers, import into files.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "import/reader.h"
#include "import/source.h"
#include "import/writer.h"
#include "process.h"

namespace imaged::import::test {

using Bytes = std::vector<uint8_t>;
namespace fs = std::filesystem;

// read() on a pipe or file (not owned): a sequential input like a client's upload. `prefix`
// holds bytes already consumed from the fd (those DetectFormat looked at); they come first.
class FdStream : public Stream {
 public:
  explicit FdStream(int fd, std::vector<uint8_t> prefix = {})
      : fd_(fd), prefix_(std::move(prefix)) {}
  Result<void> Read(void* buf, size_t len) override {
    auto* p = static_cast<uint8_t*>(buf);
    const size_t from_prefix = std::min(len, prefix_.size() - prefix_pos_);
    if (from_prefix > 0) std::memcpy(p, prefix_.data() + prefix_pos_, from_prefix);
    prefix_pos_ += from_prefix;
    pos_ += from_prefix;
    for (size_t got = from_prefix; got < len;) {
      ssize_t n = ::read(fd_, p + got, len - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoError("read input stream at offset {}", pos_);
      if (n == 0) return MakeError(EINVAL, "input stream truncated at offset {}", pos_);
      got += static_cast<size_t>(n);
      pos_ += static_cast<uint64_t>(n);
    }
    return Ok();
  }
  uint64_t position() const override { return pos_; }

 private:
  int fd_;
  std::vector<uint8_t> prefix_;
  size_t prefix_pos_ = 0;
  uint64_t pos_ = 0;
};

inline Bytes ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline void WriteAll(const fs::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// Runs a peer tool; fails the test with its stderr when it fails.
inline void Tool(const std::vector<std::string>& argv) {
  auto r = imaged::test::RunCommand(argv);
  ASSERT_EQ(r.exit_code, 0) << argv[0] << " failed: " << r.err << r.out;
}

// A raw image mixing random (incompressible) data, compressible text, written zeros, holes and
// a partially written cluster, with a size that is not a multiple of 4 KiB or 64 KiB.
inline Bytes MakeRawImage(const fs::path& path, size_t size = (4 << 20) + (12 << 10) + 1536) {
  Bytes b(size, 0);
  std::mt19937_64 rng(42);
  for (size_t i = 0; i < size; i += 65536) {
    size_t n = std::min<size_t>(65536, size - i);
    switch ((i / 65536) % 5) {
      case 0:  // random
        for (size_t j = 0; j < n; ++j) b[i + j] = static_cast<uint8_t>(rng());
        break;
      case 1: {  // compressible text
        std::string text;
        while (text.size() < n) text += "imaged block " + std::to_string(rng() % 1000) + " ";
        std::memcpy(&b[i], text.data(), n);
        break;
      }
      case 2:  // written zeros (stay zero)
        break;
      case 3:  // a few bytes at an odd place inside the cluster
        for (size_t j = 1000; j < std::min<size_t>(n, 3000); ++j) b[i + j] = static_cast<uint8_t>(j);
        break;
      case 4:  // hole
        break;
    }
  }
  // Write it with holes where case 4 is, so the peers see real unallocated ranges too.
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  EXPECT_GE(fd, 0);
  for (size_t i = 0; i < size; i += 65536) {
    size_t n = std::min<size_t>(65536, size - i);
    if ((i / 65536) % 5 == 4) continue;
    EXPECT_EQ(::pwrite(fd, &b[i], n, static_cast<off_t>(i)), static_cast<ssize_t>(n));
  }
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  ::close(fd);
  return b;
}

// A sink that records every call and keeps the written bytes in memory. Calls may come from
// several writer threads at once (CopyOptions::max_in_flight), on disjoint ranges.
class MemorySink : public RunSink {
 public:
  struct Call {
    bool zero;
    uint64_t offset;
    uint64_t length;
    bool buffer_aligned;
  };
  explicit MemorySink(uint64_t size, uint8_t fill = 0) : bytes(size, fill) {}
  Result<void> Write(uint64_t offset, std::span<const uint8_t> data) override {
    Record({false, offset, data.size(), reinterpret_cast<uintptr_t>(data.data()) % 4096 == 0});
    if (offset > bytes.size() || data.size() > bytes.size() - offset) {
      return MakeError(EINVAL, "write past end");
    }
    std::memcpy(&bytes[offset], data.data(), data.size());
    return Ok();
  }
  Result<void> WriteZeroes(uint64_t offset, uint64_t length) override {
    Record({true, offset, length, true});
    if (offset > bytes.size() || length > bytes.size() - offset) {
      return MakeError(EINVAL, "zero past end");
    }
    std::memset(&bytes[offset], 0, length);
    return Ok();
  }
  uint64_t size() const override { return bytes.size(); }

  Bytes bytes;
  std::vector<Call> calls;

 private:
  void Record(const Call& call) {
    std::lock_guard<std::mutex> lock(mu_);
    calls.push_back(call);
  }
  std::mutex mu_;
};

struct ImportOutcome {
  Result<ImportStats> stats = Error{};
  Bytes bytes;          // the target after the import
  size_t calls = 0;     // sink calls made
  uint64_t virtual_size = 0;
};

// Copies `reader` into a memory target of the image's size, prefilled with 0xA5 so unwritten
// ranges show up.
inline ImportOutcome CopyToMemory(ImageReader& reader, const CopyOptions& copy_options = {}) {
  ImportOutcome out;
  out.virtual_size = reader.virtual_size();
  MemorySink sink(out.virtual_size, 0xA5);
  out.stats = Copy(reader, sink, nullptr, copy_options);
  out.bytes = std::move(sink.bytes);
  out.calls = sink.calls.size();
  return out;
}

// Detects the format, opens the reader and copies it with CopyToMemory. Errors from any step
// land in `stats`.
inline ImportOutcome Import(const fs::path& path, const ReaderOptions& options = {},
                            std::optional<Format> format = std::nullopt,
                            const CopyOptions& copy_options = {}) {
  ImportOutcome out;
  auto source = FileSource::Open(path);
  if (!source) {
    out.stats = source.error();
    return out;
  }
  Format f = Format::Raw;
  if (format) {
    f = *format;
  } else {
    auto detected = DetectFormat(**source);
    if (!detected) {
      out.stats = detected.error();
      return out;
    }
    f = *detected;
  }
  auto reader = OpenReader(**source, f, options);
  if (!reader) {
    out.stats = reader.error();
    return out;
  }
  return CopyToMemory(**reader, copy_options);
}

// A reader that replays a fixed list of runs; Data runs point into `data` at their offset,
// or, after DeferTo(source), name the same offset of `source` (ReaderOptions::defer_data_reads).
class ListReader : public ImageReader {
 public:
  ListReader(uint64_t size, std::vector<Run> runs, Bytes data)
      : size_(size), runs_(std::move(runs)), data_(std::move(data)) {}
  Format format() const override { return Format::Raw; }
  uint64_t virtual_size() const override { return size_; }
  Result<std::optional<Run>> Next() override {
    if (next_ == runs_.size()) return std::optional<Run>();
    Run r = runs_[next_++];
    if (r.kind == Run::Kind::Data && deferred_to_) {
      r.source = deferred_to_;
      r.source_offset = r.offset;
    } else if (r.kind == Run::Kind::Data) {
      r.data = {data_.data() + r.offset, r.length};
    }
    return std::optional<Run>(r);
  }
  void DeferTo(Source* source) { deferred_to_ = source; }

 private:
  uint64_t size_;
  std::vector<Run> runs_;
  Bytes data_;
  size_t next_ = 0;
  Source* deferred_to_ = nullptr;
};

}  // namespace imaged::import::test
