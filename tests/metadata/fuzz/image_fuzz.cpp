// ParseImageFile must never crash or over-read; whatever it accepts must survive a re-serialize
// and re-parse unchanged (the writer only refuses, with EFBIG, the liblp-readable case where the
// header pushes tables_size <= max past max).
#include <cerrno>
#include <cstdlib>

#include "metadata/lp_metadata.h"

using namespace imaged::metadata;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = ParseImageFile({data, size});
  if (!parsed) return 0;
  auto bytes = SerializeImageFile(*parsed);
  if (!bytes) {
    if (bytes.error().code != EFBIG) abort();
    return 0;
  }
  auto again = ParseImageFile(*bytes);
  if (!again || !(*again == *parsed)) abort();
  return 0;
}
