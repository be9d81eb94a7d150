// The parameters of a hash tree: their limits, the levels' places, veritysetup's superblock.
#include <cstring>

#include "verity/hash_tree.h"

namespace imaged::verity {
namespace {

constexpr uint8_t kSignature[8] = {'v', 'e', 'r', 'i', 't', 'y', 0, 0};
constexpr uint32_t kSuperblockVersion = 1;
constexpr uint32_t kHashTypeNormal = 1;  // salt first; 0 is Chrome OS's (salt last)

// Field offsets of veritysetup's `struct verity_sb` (packed, little-endian).
constexpr size_t kVersionAt = 8;
constexpr size_t kHashTypeAt = 12;
constexpr size_t kUuidAt = 16;
constexpr size_t kAlgorithmAt = 32;
constexpr size_t kAlgorithmSize = 32;
constexpr size_t kDataBlockSizeAt = 64;
constexpr size_t kHashBlockSizeAt = 68;
constexpr size_t kDataBlocksAt = 72;
constexpr size_t kSaltSizeAt = 80;
constexpr size_t kSaltAt = 88;

// The largest data size whose byte offsets fit in 63 bits (what off_t-based peers accept).
constexpr uint64_t kMaxDataBytes = uint64_t{1} << 62;

void PutLe(uint8_t* at, uint64_t value, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) at[i] = static_cast<uint8_t>(value >> (8 * i));
}

uint64_t GetLe(const uint8_t* at, size_t bytes) {
  uint64_t value = 0;
  for (size_t i = 0; i < bytes; ++i) value |= uint64_t{at[i]} << (8 * i);
  return value;
}

bool IsPowerOfTwo(uint64_t v) {
  return v != 0 && (v & (v - 1)) == 0;
}

Result<void> ValidateBlockSize(uint64_t block_size) {
  if (!IsPowerOfTwo(block_size) || block_size < kMinBlockSize || block_size > kMaxBlockSize) {
    return MakeError(EINVAL, "verity block size {} is not a power of two in [{}, {}]", block_size,
                     kMinBlockSize, kMaxBlockSize);
  }
  return Ok();
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Result<void> ValidateParams(const Params& params) {
  IMAGED_TRY(ValidateBlockSize(params.block_size));
  if (params.data_blocks == 0) return MakeError(EINVAL, "verity needs at least one data block");
  if (params.data_blocks > kMaxDataBytes / params.block_size) {
    return MakeError(EFBIG, "{} verity data blocks of {} bytes is too large", params.data_blocks,
                     params.block_size);
  }
  if (params.salt.size() > kMaxSaltSize) {
    return MakeError(EINVAL, "verity salt of {} bytes is longer than {}", params.salt.size(),
                     kMaxSaltSize);
  }
  return Ok();
}

Result<Geometry> ComputeGeometry(uint64_t data_blocks, uint32_t block_size) {
  Params shape;
  shape.data_blocks = data_blocks;
  shape.block_size = block_size;
  IMAGED_TRY(ValidateParams(shape));
  Geometry g;
  g.hashes_per_block = block_size / kDigestSize;
  const unsigned bits = static_cast<unsigned>(__builtin_ctz(g.hashes_per_block));
  // The fewest levels whose top is one block. data_blocks < 2^53 and bits >= 4 keep every
  // shift below 64.
  unsigned levels = 0;
  while (((data_blocks - 1) >> (bits * levels)) != 0) ++levels;
  g.level_first_block.resize(levels);
  g.level_blocks.resize(levels);
  uint64_t next = 1;  // block 0 is the superblock
  for (unsigned i = levels; i-- > 0;) {
    g.level_first_block[i] = next;
    g.level_blocks[i] = ((data_blocks - 1) >> (bits * (i + 1))) + 1;
    next += g.level_blocks[i];
  }
  g.hash_area_blocks = next;
  return g;
}

Result<uint64_t> HashAreaBytes(uint64_t data_bytes, uint32_t block_size) {
  IMAGED_TRY(ValidateBlockSize(block_size));
  if (data_bytes % block_size != 0) {
    return MakeError(EINVAL, "verity data of {} bytes is not a multiple of its {}-byte blocks",
                     data_bytes, block_size);
  }
  const Geometry g = IMAGED_TRY(ComputeGeometry(data_bytes / block_size, block_size));
  return g.hash_area_blocks * block_size;
}

std::array<uint8_t, kSuperblockSize> EncodeSuperblock(const Params& params) {
  std::array<uint8_t, kSuperblockSize> sb{};
  std::memcpy(sb.data(), kSignature, sizeof(kSignature));
  PutLe(&sb[kVersionAt], kSuperblockVersion, 4);
  PutLe(&sb[kHashTypeAt], kHashTypeNormal, 4);
  std::memcpy(&sb[kUuidAt], params.uuid.data(), params.uuid.size());
  std::memcpy(&sb[kAlgorithmAt], kAlgorithm.data(), kAlgorithm.size());
  PutLe(&sb[kDataBlockSizeAt], params.block_size, 4);
  PutLe(&sb[kHashBlockSizeAt], params.block_size, 4);
  PutLe(&sb[kDataBlocksAt], params.data_blocks, 8);
  const size_t salt_size = std::min(params.salt.size(), kMaxSaltSize);
  PutLe(&sb[kSaltSizeAt], salt_size, 2);
  if (salt_size > 0) std::memcpy(&sb[kSaltAt], params.salt.data(), salt_size);  // may be null
  return sb;
}

Result<Params> ParseSuperblock(std::span<const uint8_t> bytes) {
  if (bytes.size() < kSuperblockSize) {
    return MakeError(EINVAL, "verity superblock: {} bytes, need {}", bytes.size(), kSuperblockSize);
  }
  const uint8_t* sb = bytes.data();
  if (std::memcmp(sb, kSignature, sizeof(kSignature)) != 0) {
    return MakeError(EINVAL, "no verity superblock (signature)");
  }
  if (const uint64_t v = GetLe(sb + kVersionAt, 4); v != kSuperblockVersion) {
    return MakeError(EINVAL, "verity superblock version {} (only {} is known)", v,
                     kSuperblockVersion);
  }
  if (const uint64_t t = GetLe(sb + kHashTypeAt, 4); t != kHashTypeNormal) {
    return MakeError(EINVAL, "verity hash type {} (only {}, salt first, is supported)", t,
                     kHashTypeNormal);
  }
  const auto* name = reinterpret_cast<const char*>(sb + kAlgorithmAt);
  if (std::string_view(name, strnlen(name, kAlgorithmSize)) != kAlgorithm) {
    return MakeError(EINVAL, "verity hash algorithm is not {}", kAlgorithm);
  }
  const uint64_t data_block_size = GetLe(sb + kDataBlockSizeAt, 4);
  const uint64_t hash_block_size = GetLe(sb + kHashBlockSizeAt, 4);
  if (data_block_size != hash_block_size) {
    return MakeError(EINVAL, "verity data blocks of {} bytes and hash blocks of {} (must be equal)",
                     data_block_size, hash_block_size);
  }
  IMAGED_TRY(ValidateBlockSize(data_block_size));
  const uint64_t salt_size = GetLe(sb + kSaltSizeAt, 2);
  if (salt_size > kMaxSaltSize) {
    return MakeError(EINVAL, "verity salt of {} bytes is longer than {}", salt_size, kMaxSaltSize);
  }
  Params params;
  params.block_size = static_cast<uint32_t>(data_block_size);
  params.data_blocks = GetLe(sb + kDataBlocksAt, 8);
  params.salt.assign(sb + kSaltAt, sb + kSaltAt + salt_size);
  std::memcpy(params.uuid.data(), sb + kUuidAt, params.uuid.size());
  IMAGED_TRY(ValidateParams(params));
  return params;
}

std::string ToHex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    hex.push_back(kDigits[b >> 4]);
    hex.push_back(kDigits[b & 0xf]);
  }
  return hex;
}

Result<std::vector<uint8_t>> ParseHex(std::string_view hex) {
  if (hex.size() % 2 != 0) return MakeError(EINVAL, "hex string of odd length {}", hex.size());
  std::vector<uint8_t> bytes(hex.size() / 2);
  for (size_t i = 0; i < bytes.size(); ++i) {
    const int hi = HexValue(hex[2 * i]);
    const int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return MakeError(EINVAL, "not a hex string: \"{}\"", hex);
    bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return bytes;
}

}  // namespace imaged::verity
