// Test data every suite shares: one deterministic pattern, one O_DIRECT buffer.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

namespace imaged::test {

// Deterministic bytes, distinct per seed and never zero: a lost, zeroed or stale block shows, and
// neither mkfs -d nor a sparse writer turns a block of it into a hole. `Bytes` is any contiguous
// container of byte-sized values (std::string, std::vector<char>, std::vector<uint8_t>).
template <typename Bytes = std::string>
Bytes Pattern(size_t size, uint32_t seed = 0) {
  Bytes bytes(size, 0);
  uint32_t x = seed * 2654435761u + 0x9e3779b9u;
  if (x == 0) x = 1;  // xorshift's one fixed point
  for (size_t i = 0; i < size; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    bytes[i] = static_cast<typename Bytes::value_type>(x % 255 + 1);
  }
  return bytes;
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<char[], FreeDeleter>;

// A 4 KiB-aligned buffer for O_DIRECT, every byte `fill`.
inline AlignedBuffer Aligned(size_t size, uint8_t fill = 0) {
  void* p = nullptr;
  if (posix_memalign(&p, 4096, size == 0 ? 4096 : size) != 0 || p == nullptr) std::abort();
  std::memset(p, fill, size);
  return AlignedBuffer(static_cast<char*>(p));
}

}  // namespace imaged::test
