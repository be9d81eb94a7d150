// Private helpers shared by the readers.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "imaged/common/result.h"
#include "import/reader.h"
#include "import/source.h"

namespace imaged::import {

inline uint16_t Le16(const uint8_t* p) {
  return uint16_t(p[0] | p[1] << 8);
}
inline uint32_t Le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline uint32_t Be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}
inline uint64_t Be64(const uint8_t* p) {
  return uint64_t(Be32(p)) << 32 | Be32(p + 4);
}

// `magic` at `offset` of `bytes` (false when `bytes` is too short to tell).
inline bool HasAt(std::span<const uint8_t> bytes, size_t offset, std::string_view magic) {
  return bytes.size() >= offset + magic.size() &&
         std::memcmp(bytes.data() + offset, magic.data(), magic.size()) == 0;
}

// Frees what std::aligned_alloc returned (the 4 KiB-aligned buffers of O_DIRECT I/O).
struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

inline constexpr uint32_t kSparseMagic = 0xed26ff3a;
inline constexpr uint8_t kQcowMagic[4] = {'Q', 'F', 'I', 0xfb};

// Decompression into exactly out.size() bytes; anything else is an error (bomb-proof: the
// output can never exceed the cluster).
Result<void> InflateRaw(std::span<const uint8_t> in, std::span<uint8_t> out);
Result<void> ZstdDecompress(std::span<const uint8_t> in, std::span<uint8_t> out);

Result<std::unique_ptr<ImageReader>> OpenRawReader(Source& source, const ReaderOptions& options);
Result<std::unique_ptr<ImageReader>> OpenQcow1Reader(Source& source, const ReaderOptions& options);
Result<std::unique_ptr<ImageReader>> OpenQcow2Reader(Source& source, const ReaderOptions& options);
Result<std::unique_ptr<ImageReader>> OpenSparseFromSource(Source& source,
                                                          const ReaderOptions& options);

Result<void> CheckReaderOptions(const ReaderOptions& options);

}  // namespace imaged::import
