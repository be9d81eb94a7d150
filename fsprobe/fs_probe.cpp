#include "fsprobe/fs_probe.h"

#include <bit>
#include <cstring>
#include <limits>

namespace imaged::fsprobe {
namespace {

template <typename T>
std::optional<T> Le(std::span<const uint8_t> b, size_t at) {
  if (at + sizeof(T) > b.size()) return std::nullopt;
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t{b[at + i]} << (8 * i);
  return static_cast<T>(v);
}

template <typename T>
std::optional<T> Be(std::span<const uint8_t> b, size_t at) {
  if (at + sizeof(T) > b.size()) return std::nullopt;
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v = (v << 8) | b[at + i];
  return static_cast<T>(v);
}

// blocks * block_size, nullopt on overflow or an empty filesystem.
std::optional<uint64_t> Span(uint64_t blocks, uint64_t block_size) {
  if (blocks == 0 || block_size == 0) return std::nullopt;
  if (blocks > std::numeric_limits<uint64_t>::max() / block_size) return std::nullopt;
  return blocks * block_size;
}

// ext2/3/4: the superblock is at 1024 (include/linux/ext2_fs.h, e2fsprogs ext2_fs.h).
std::optional<Filesystem> Ext4(std::span<const uint8_t> b) {
  constexpr size_t kSb = 1024;
  if (Le<uint16_t>(b, kSb + 0x38) != 0xEF53) return std::nullopt;
  const auto lo = Le<uint32_t>(b, kSb + 0x04);
  const auto log = Le<uint32_t>(b, kSb + 0x18);
  const auto incompat = Le<uint32_t>(b, kSb + 0x60);
  const auto hi = Le<uint32_t>(b, kSb + 0x150);
  if (!lo || !log || !incompat || !hi || *log > 6) return std::nullopt;  // 1 KiB .. 64 KiB
  constexpr uint32_t kIncompat64Bit = 0x80;
  const uint64_t blocks = (*incompat & kIncompat64Bit) ? (uint64_t{*hi} << 32) | *lo : *lo;
  auto size = Span(blocks, uint64_t{1024} << *log);
  if (!size) return std::nullopt;
  return Filesystem{"ext4", *size};
}

// xfs: big-endian superblock at 0 (xfs_format.h: sb_magicnum, sb_blocksize, sb_dblocks).
std::optional<Filesystem> Xfs(std::span<const uint8_t> b) {
  if (Be<uint32_t>(b, 0) != 0x58465342) return std::nullopt;  // "XFSB"
  const auto block_size = Be<uint32_t>(b, 4);
  const auto blocks = Be<uint64_t>(b, 8);
  if (!block_size || !blocks || *block_size < 512 || *block_size > 65536 ||
      !std::has_single_bit(*block_size)) {
    return std::nullopt;
  }
  auto size = Span(*blocks, *block_size);
  if (!size) return std::nullopt;
  return Filesystem{"xfs", *size};
}

// f2fs: little-endian superblock at 1024 (f2fs_fs.h: magic, ..., log_blocksize at 16,
// block_count at 36).
std::optional<Filesystem> F2fs(std::span<const uint8_t> b) {
  constexpr size_t kSb = 1024;
  if (Le<uint32_t>(b, kSb) != 0xF2F52010) return std::nullopt;
  const auto log = Le<uint32_t>(b, kSb + 16);
  const auto blocks = Le<uint64_t>(b, kSb + 36);
  if (!log || !blocks || *log < 9 || *log > 16) return std::nullopt;
  auto size = Span(*blocks, uint64_t{1} << *log);
  if (!size) return std::nullopt;
  return Filesystem{"f2fs", *size};
}

}  // namespace

std::optional<Filesystem> Probe(std::span<const uint8_t> head) {
  for (auto probe : {Ext4, Xfs, F2fs}) {
    if (auto found = probe(head)) return found;
  }
  return std::nullopt;
}

}  // namespace imaged::fsprobe
