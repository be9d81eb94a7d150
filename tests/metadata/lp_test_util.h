// Test-side helpers for lp_metadata: a second, deliberately naive encoder (explicit little-endian
// field writes straight from FORMATS.md section 4) and byte-patching helpers that re-sign a blob
// so corruption tests reach the check they target instead of stopping at a checksum.
#pragma once

#include <openssl/evp.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "metadata/lp_metadata.h"

namespace imaged::metadata::testing {

inline std::array<uint8_t, 32> TestSha256(const uint8_t* data, size_t size) {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  EVP_Digest(data, size, out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

// Appends little-endian fields one at a time.
class ByteWriter {
 public:
  void U8(uint8_t v) { bytes_.push_back(v); }
  void U16(uint16_t v) {
    U8(v & 0xff);
    U8(v >> 8);
  }
  void U32(uint32_t v) {
    U16(v & 0xffff);
    U16(v >> 16);
  }
  void U64(uint64_t v) {
    U32(static_cast<uint32_t>(v));
    U32(static_cast<uint32_t>(v >> 32));
  }
  void Name(const std::string& s) {
    for (size_t i = 0; i < 36; ++i) U8(i < s.size() ? static_cast<uint8_t>(s[i]) : 0);
  }
  void Zeros(size_t n) { bytes_.insert(bytes_.end(), n, 0); }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

inline void PokeU16(std::vector<uint8_t>& b, size_t at, uint16_t v) {
  b[at] = v & 0xff;
  b[at + 1] = v >> 8;
}
inline void PokeU32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void PokeU64(std::vector<uint8_t>& b, size_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint32_t PeekU32(const std::vector<uint8_t>& b, size_t at) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | b[at + i];
  return v;
}

// Independent encoder for one geometry block (4096 bytes).
inline std::vector<uint8_t> ReferenceGeometry(uint32_t max, uint32_t slots, uint32_t lbs) {
  ByteWriter w;
  w.U32(0x616c4467);
  w.U32(52);
  w.Zeros(32);
  w.U32(max);
  w.U32(slots);
  w.U32(lbs);
  std::vector<uint8_t> g = w.bytes();
  auto sum = TestSha256(g.data(), 52);
  std::memcpy(g.data() + 8, sum.data(), 32);
  g.resize(4096, 0);
  return g;
}

// Independent encoder for header + tables with an explicit minor version.
inline std::vector<uint8_t> ReferenceMetadata(const LpMetadata& md, uint16_t minor) {
  ByteWriter t;
  for (const auto& p : md.partitions) {
    t.Name(p.name);
    t.U32(p.attributes);
    t.U32(p.first_extent_index);
    t.U32(p.num_extents);
    t.U32(p.group_index);
  }
  for (const auto& e : md.extents) {
    t.U64(e.num_sectors);
    t.U32(e.target_type);
    t.U64(e.target_data);
    t.U32(e.target_source);
  }
  for (const auto& g : md.groups) {
    t.Name(g.name);
    t.U32(g.flags);
    t.U64(g.maximum_size);
  }
  for (const auto& b : md.block_devices) {
    t.U64(b.first_logical_sector);
    t.U32(b.alignment);
    t.U32(b.alignment_offset);
    t.U64(b.size);
    t.Name(b.partition_name);
    t.U32(b.flags);
  }
  std::vector<uint8_t> tables = t.bytes();
  const uint32_t header_size = minor >= 2 ? 256 : 128;
  ByteWriter h;
  h.U32(0x414C5030);
  h.U16(10);
  h.U16(minor);
  h.U32(header_size);
  h.Zeros(32);  // header checksum, filled below
  h.U32(static_cast<uint32_t>(tables.size()));
  auto tsum = TestSha256(tables.data(), tables.size());
  for (uint8_t c : tsum) h.U8(c);
  uint32_t off = 0;
  const uint32_t counts[4] = {
      static_cast<uint32_t>(md.partitions.size()), static_cast<uint32_t>(md.extents.size()),
      static_cast<uint32_t>(md.groups.size()), static_cast<uint32_t>(md.block_devices.size())};
  const uint32_t sizes[4] = {52, 24, 48, 64};
  for (int i = 0; i < 4; ++i) {
    h.U32(off);
    h.U32(counts[i]);
    h.U32(sizes[i]);
    off += counts[i] * sizes[i];
  }
  if (minor >= 2) {
    h.U32(md.header_flags);
    h.Zeros(124);
  }
  std::vector<uint8_t> out = h.bytes();
  auto hsum = TestSha256(out.data(), header_size);
  std::memcpy(out.data() + 12, hsum.data(), 32);
  out.insert(out.end(), tables.begin(), tables.end());
  return out;
}

inline std::vector<uint8_t> ReferenceImageFile(const LpMetadata& md, uint16_t minor) {
  std::vector<uint8_t> out =
      ReferenceGeometry(md.geometry.metadata_max_size, md.geometry.metadata_slot_count,
                        md.geometry.logical_block_size);
  std::vector<uint8_t> blob = ReferenceMetadata(md, minor);
  out.insert(out.end(), blob.begin(), blob.end());
  return out;
}

// Recomputes the geometry checksum of the block at `base` (covering struct_size bytes, capped).
inline void ResignGeometry(std::vector<uint8_t>& b, size_t base = 0) {
  uint32_t struct_size = PeekU32(b, base + 4);
  if (struct_size > 52) struct_size = 52;
  std::memset(b.data() + base + 8, 0, 32);
  auto sum = TestSha256(b.data() + base, struct_size);
  std::memcpy(b.data() + base + 8, sum.data(), 32);
}

// Recomputes the tables checksum and then the header checksum of the metadata copy at `base`.
inline void ResignMetadata(std::vector<uint8_t>& b, size_t base = 4096) {
  uint32_t header_size = PeekU32(b, base + 8);
  uint32_t tables_size = PeekU32(b, base + 44);
  if (base + header_size + tables_size <= b.size()) {
    auto tsum = TestSha256(b.data() + base + header_size, tables_size);
    std::memcpy(b.data() + base + 48, tsum.data(), 32);
  }
  if (header_size <= 256 && base + header_size <= b.size()) {
    std::memset(b.data() + base + 12, 0, 32);
    auto hsum = TestSha256(b.data() + base, header_size);
    std::memcpy(b.data() + base + 12, hsum.data(), 32);
  }
}

// A small, valid, hand-made metadata: two partitions (one with two extents), one ZERO extent.
inline LpMetadata SampleMetadata() {
  LpMetadata md;
  md.geometry = Geometry{65536, 1, 4096};
  md.partitions = {Partition{"system", kPartitionAttrReadonly, 0, 2, 0},
                   Partition{"vendor_b", 0, 2, 1, 0}};
  md.extents = {Extent{2048, kTargetTypeLinear, 4096, 0},
                Extent{1024, kTargetTypeLinear, 100000, 0}, Extent{8, kTargetTypeZero, 0, 0}};
  md.groups = {Group{"default", 0, 0}};
  md.block_devices = {BlockDevice{2048, 4096, 0, 64ull << 30, "sda1", 0}};
  return md;
}

}  // namespace imaged::metadata::testing
