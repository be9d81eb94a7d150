// What every import fuzz target does with the reader it opened: every run drained into a sink
// that keeps nothing, so an input costs only the reading.
#pragma once

#include <cstdint>
#include <span>

#include "import/reader.h"
#include "import/writer.h"

namespace imaged::import::fuzz {

class NullSink : public RunSink {
 public:
  explicit NullSink(uint64_t size) : size_(size) {}
  Result<void> Write(uint64_t, std::span<const uint8_t>) override { return {}; }
  Result<void> WriteZeroes(uint64_t, uint64_t) override { return {}; }
  uint64_t size() const override { return size_; }

 private:
  uint64_t size_;
};

// Data runs can repeat one host cluster many times (and a sparse header may claim any size),
// so the work per input is bounded by refusing virtual sizes over this (zero coverage is free).
inline constexpr uint64_t kMaxVirtualSize = 256ull << 20;

inline void Drain(ImageReader& reader) {
  if (reader.virtual_size() > kMaxVirtualSize) return;
  NullSink sink(reader.virtual_size());
  CopyOptions copy;
  copy.buffer_size = 1 << 20;
  (void)Copy(reader, sink, nullptr, copy);
}

}  // namespace imaged::import::fuzz
