// ParseSuper over every slot the geometry names (bounded), plus the layout auto-detection; an
// accepted metadata must round-trip through SerializeSuper when the layout is small enough.
#include <cerrno>
#include <cstdlib>

#include "metadata/lp_metadata.h"

using namespace imaged::metadata;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  (void)DetectLayout(in);
  (void)ParseAnyLayout(in);
  for (uint32_t slot = 0; slot < 3; ++slot) {
    auto parsed = ParseSuper(in, slot);
    if (!parsed) continue;
    if (TotalMetadataSize(parsed->geometry.metadata_max_size,
                          parsed->geometry.metadata_slot_count) > (8u << 20)) {
      continue;
    }
    auto bytes = SerializeSuper(*parsed);
    if (!bytes) {
      if (bytes.error().code != EFBIG) abort();
      continue;
    }
    auto again = ParseSuper(*bytes, slot);
    if (!again || !(*again == *parsed)) abort();
  }
  return 0;
}
