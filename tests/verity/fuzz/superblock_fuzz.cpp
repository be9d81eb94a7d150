// A superblock is read from a hash area on the disk, which anything with write access to the
// data filesystem may have changed: any bytes must parse to parameters whose tree has a sane
// geometry, or be refused; never a crash, an overflow or a read past the end.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "verity/hash_tree.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imaged::verity;
  const auto params = ParseSuperblock(std::span<const uint8_t>(data, size));
  if (!params) return 0;
  const auto geometry = ComputeGeometry(params->data_blocks, params->block_size);
  if (!geometry || geometry->hash_area_blocks < 1) abort();
  uint64_t blocks = 1;
  for (uint64_t n : geometry->level_blocks) blocks += n;
  if (blocks != geometry->hash_area_blocks) abort();
  const auto again = ParseSuperblock(EncodeSuperblock(*params));
  if (!again || again->data_blocks != params->data_blocks || again->salt != params->salt) abort();
  return 0;
}
