// The fuzz targets' sink: takes every write and keeps nothing, so a run costs only the reading.
#pragma once

#include <cstdint>
#include <span>

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

}  // namespace imaged::import::fuzz
