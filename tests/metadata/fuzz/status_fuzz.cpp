// ParseStatus must never crash; what it accepts must serialize to text that parses identically,
// and that text must be canonical (serializing again gives the same bytes).
#include <cstdlib>
#include <string_view>

#include "metadata/status_file.h"

using namespace imaged::metadata;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = ParseStatus(text);
  if (!parsed) return 0;
  for (const auto& e : *parsed) {
    if (!ValidateStatusEntry(e)) abort();
  }
  std::string out = SerializeStatus(*parsed);
  auto again = ParseStatus(out);
  if (!again || *again != *parsed) abort();
  if (SerializeStatus(*again) != out) abort();
  // Accepted text is the canonical form, give or take the final newline.
  if (out != text && out != std::string(text) + "\n") abort();
  return 0;
}
