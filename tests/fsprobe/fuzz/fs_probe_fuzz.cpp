// Probe reads an image a client wrote: any bytes must give a sane answer or none, never a crash
// or a read past the end.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "fsprobe/fs_probe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto found = imaged::fsprobe::Probe(std::span<const uint8_t>(data, size));
  if (found && (found->size_bytes == 0 || found->type.empty())) abort();
  return 0;
}
