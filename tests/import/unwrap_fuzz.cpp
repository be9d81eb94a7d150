// libFuzzer target: bytes -> compressed or archived image (gzip, xz, zstd, bzip2, zip) -> the raw
// or sparse reader inside -> every run drained into a null sink. Inputs without a known
// wrapping are skipped (the other import targets cover the bare formats).
#include <cstddef>
#include <cstdint>

#include "fuzz_drain.h"
#include "import/unwrap.h"

namespace {

// Decoding is the work: a raw image inside is measured and read once more, so the decoded size
// is bounded (measuring stops past it with ENOSPC, as at a full disk).
constexpr uint64_t kMaxDecodedSize = 64ull << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imaged::import;
  MemorySource source({data, size});
  const Wrapping wrapping = DetectWrapping({data, size});
  if (wrapping == Wrapping::None) return 0;
  UnwrapOptions options;
  options.max_size = kMaxDecodedSize;
  options.reader.max_data_run = 1 << 20;
  auto reader = OpenUnwrappedReader(source, wrapping, options);
  if (reader) fuzz::Drain(**reader);
  return 0;
}
