// dm-verity hash trees in the layout `veritysetup format` writes (format 1, SHA-256, one block
// size for data and hashes), so that the kernel's verity target and `veritysetup verify`
// accept what this library builds. No devices, no files: callers hand it positioned readers
// and writers, which lets an image be hashed straight from its pieces before any device
// exists (libcryptsetup needs the data as one device or file path).
//
// A hash area is a 512-byte superblock padded to one block, then the tree, top level first:
//   block 0            superblock (veritysetup's on-disk header)
//   block 1 ...        level L-1 (one block), level L-2, ..., level 0 (hashes of data blocks)
// Every hash is SHA-256(salt || block); each hash block holds block_size / 32 of them and is
// zero-padded. The root hash is SHA-256(salt || the top block), or of the data block itself
// when the image is one block (no levels).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "imaged/common/progress.h"
#include "imaged/common/result.h"

namespace imaged::verity {

inline constexpr size_t kDigestSize = 32;  // SHA-256
inline constexpr size_t kSuperblockSize = 512;
inline constexpr size_t kMaxSaltSize = 256;  // the superblock's salt field
inline constexpr uint32_t kMinBlockSize = 512;
inline constexpr uint32_t kMaxBlockSize =
    4096;  // the kernel maps no larger data blocks (page size)
inline constexpr std::string_view kAlgorithm = "sha256";

using Digest = std::array<uint8_t, kDigestSize>;
using Uuid = std::array<uint8_t, 16>;

// What the tree is built over and with: everything the superblock records.
struct Params {
  uint64_t data_blocks = 0;
  uint32_t block_size = 4096;  // data and hash blocks alike; a power of two in [512, 4096]
  std::vector<uint8_t> salt;   // at most kMaxSaltSize bytes
  Uuid uuid{};
};

// Refuses what veritysetup or the kernel would: no data, a block size out of range or not a
// power of two, a salt too long, a tree whose size overflows.
Result<void> ValidateParams(const Params& params);

// Where each level lies, in blocks from the start of the hash area (block 0 is the superblock).
struct Geometry {
  std::vector<uint64_t> level_first_block;  // [i]: level i's first block; level 0 hashes data
  std::vector<uint64_t> level_blocks;       // [i]: how many blocks level i has
  uint64_t hash_area_blocks = 0;            // superblock + every level
  uint32_t hashes_per_block = 0;
};
Result<Geometry> ComputeGeometry(uint64_t data_blocks, uint32_t block_size);

// The hash area's size in bytes for `data_bytes` of data (a multiple of block_size): what a
// caller allocates before building.
Result<uint64_t> HashAreaBytes(uint64_t data_bytes, uint32_t block_size);

// The superblock as veritysetup writes it (little-endian, "verity\0\0", version 1, hash type 1).
std::array<uint8_t, kSuperblockSize> EncodeSuperblock(const Params& params);
// Reads one back; refuses anything but version 1, hash type 1 (not Chrome OS's 0), sha256 and
// parameters ValidateParams accepts. `bytes` may be longer than the superblock.
Result<Params> ParseSuperblock(std::span<const uint8_t> bytes);

// Lowercase hex, as veritysetup prints root hashes and salts; ParseHex refuses odd lengths and
// non-hex characters.
std::string ToHex(std::span<const uint8_t> bytes);
Result<std::vector<uint8_t>> ParseHex(std::string_view hex);

// Positioned I/O on the data and on the hash area. Called from several threads at once with
// disjoint ranges; `out` and `data` are block-aligned in memory, offset and length multiples
// of the block size (so an O_DIRECT reader can serve them).
using ReadAt = std::function<Result<void>(uint64_t offset, std::span<uint8_t> out)>;
using WriteAt = std::function<Result<void>(uint64_t offset, std::span<const uint8_t> data)>;

// Memory: a 4 MiB batch per thread, and 32 bytes per 128 data blocks for the levels above 0
// (64 MiB for 1 TiB of data).
struct WalkOptions {
  unsigned threads = 0;  // 0: one per core, at most 8
  Progress progress;     // data bytes hashed of data_blocks * block_size; false cancels
};

// Hashes the data (offsets 0 .. data_blocks * block_size) and writes the superblock and tree
// through `hash`, offsets 0 .. HashAreaBytes. Returns the root hash. Nothing is synced: the
// writer's owner decides when the area is durable.
Result<Digest> BuildHashArea(const Params& params, const ReadAt& data, const WriteAt& hash,
                             const WalkOptions& options = {});

// What a verification found. `ok` only when the data, the stored tree and the root all agree.
struct VerifyReport {
  bool ok = false;
  std::optional<uint64_t> first_bad_data_block;  // the first data block whose hash differs
  std::optional<uint64_t> first_bad_hash_block;  // the first hash-area block that is damaged
  bool root_differs = false;                     // the top block does not hash to `root`
};

// Re-reads the data and the stored hash area and checks them against `root` and `params` the
// way the kernel would (a block's hash against its entry, each hash block against its parent,
// the top against the root), and what the kernel does not: the superblock and the zero padding.
Result<VerifyReport> VerifyHashArea(const Params& params, const Digest& root, const ReadAt& data,
                                    const ReadAt& hash, const WalkOptions& options = {});

}  // namespace imaged::verity
