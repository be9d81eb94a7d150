// qcow2 versions 2 and 3 (QEMU docs/interop/qcow2.rst). Only the active L1 table is read:
// snapshots, refcounts, bitmaps and header extensions are irrelevant to the current disk.
#include "cluster_reader.h"

namespace imaged::import {
namespace {

constexpr uint64_t kIncompatDirty = 1 << 0;
constexpr uint64_t kIncompatCorrupt = 1 << 1;
constexpr uint64_t kIncompatDataFile = 1 << 2;
constexpr uint64_t kIncompatCompression = 1 << 3;
constexpr uint64_t kIncompatExtendedL2 = 1 << 4;
constexpr uint64_t kIncompatKnown = kIncompatDirty | kIncompatCorrupt | kIncompatDataFile |
                                    kIncompatCompression | kIncompatExtendedL2;

constexpr uint64_t kCopied = uint64_t{1} << 63;
constexpr uint64_t kCompressed = uint64_t{1} << 62;
constexpr uint64_t kZeroFlag = 1;
constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;        // bits 9..55
constexpr uint64_t kL1Reserved = 0x7f000000000001ffull;        // bits 0..8, 56..62
constexpr uint64_t kL2Reserved = 0x3f000000000001feull;        // bits 1..8, 56..61

struct Qcow2Params {
  unsigned version = 0;
  unsigned cluster_bits = 0;
  uint64_t size = 0;   // as in the header
  uint64_t vsize = 0;  // what the guest sees
  uint64_t l1_offset = 0;
  uint64_t l1_entries = 0;  // the ones covering the virtual size
  bool extended_l2 = false;
  uint8_t compression_type = 0;  // 0 deflate, 1 zstd
};

class Qcow2Reader : public ClusterReader {
 public:
  Qcow2Reader(Source& source, const ReaderOptions& options, const Qcow2Params& p)
      : ClusterReader(source, options, p.vsize, p.cluster_bits),
        p_(p),
        l2_entries_(cluster_size_ / (p.extended_l2 ? 16 : 8)) {}

  Format format() const override { return Format::Qcow2; }

 protected:
  Result<uint64_t> MapStep(uint64_t pos) override {
    const uint64_t span = cluster_size_ * l2_entries_;
    const uint64_t l1_index = pos / span;
    const uint64_t l1_entry_at = p_.l1_offset + l1_index * 8;
    uint64_t l1e = IMAGED_TRY_CTX(L1Entry(p_.l1_offset, p_.l1_entries, l1_index), "qcow2");
    if (l1e & kL1Reserved) {
      return MakeError(EINVAL, "qcow2: L1 entry 0x{:016x} at offset {}: reserved bits set", l1e,
                       l1_entry_at);
    }
    uint64_t l2_offset = l1e & kOffsetMask;
    if (l2_offset == 0) {
      uint64_t end = (l1_index + 1) * span;
      Add({Segment::Type::Zero, pos, end - pos});
      return end;
    }
    if (l2_offset & (cluster_size_ - 1)) {
      return MakeError(EINVAL,
                       "qcow2: L1 entry at offset {}: L2 table offset {} is not cluster-aligned",
                       l1_entry_at, l2_offset);
    }
    if (l2_offset > src_.size() || cluster_size_ > src_.size() - l2_offset) {
      return MakeError(EINVAL,
                       "qcow2: L1 entry at offset {}: L2 table at {} is beyond the end of the file "
                       "({})",
                       l1_entry_at, l2_offset, src_.size());
    }
    const uint8_t* l2 = IMAGED_TRY_CTX(L2Table(l2_offset, cluster_size_), "qcow2");
    const uint64_t l2_index = (pos / cluster_size_) % l2_entries_;
    const size_t entry_bytes = p_.extended_l2 ? 16 : 8;
    const uint64_t entry_at = l2_offset + l2_index * entry_bytes;
    const uint64_t e = Be64(l2 + l2_index * entry_bytes);
    const uint64_t bitmap = p_.extended_l2 ? Be64(l2 + l2_index * entry_bytes + 8) : 0;
    auto bad = [&](std::string_view what) {
      return MakeError(EINVAL, "qcow2: L2 entry 0x{:016x} at offset {} (guest offset {}): {}", e,
                       entry_at, pos, what);
    };

    if (e & kCompressed) {
      if (e & kCopied) return bad("COPIED flag set on a compressed cluster");
      if (bitmap != 0) return bad("subcluster bitmap of a compressed cluster is not zero");
      auto [coffset, cbytes] = CompressedRange(e);
      if (coffset >= src_.size()) {
        return bad(fmt::format("compressed data at {} is beyond the end of the file ({})",
                               coffset, src_.size()));
      }
      (void)cbytes;  // the sector-rounded size may overrun EOF; Decompress clamps it
      Add({Segment::Type::Compressed, pos, cluster_size_, 0, e});
      return pos + cluster_size_;
    }

    // The ZERO flag exists only in v3 without extended L2; elsewhere bit 0 is reserved.
    const bool zero_flag_allowed = p_.version >= 3 && !p_.extended_l2;
    if ((e & kL2Reserved) || (!zero_flag_allowed && (e & kZeroFlag))) {
      return bad("reserved bits set");
    }
    const uint64_t host = e & kOffsetMask;
    if (host & (cluster_size_ - 1)) return bad("host offset is not cluster-aligned");

    if (p_.extended_l2) {
      const uint32_t alloc = static_cast<uint32_t>(bitmap);
      const uint32_t zero = static_cast<uint32_t>(bitmap >> 32);
      if (alloc & zero) return bad("subcluster marked both allocated and zero");
      if (alloc && host == 0) return bad("allocated subclusters without a host cluster");
      if (host == 0 && (e & kCopied)) return bad("host offset 0 needs an external data file");
      if (alloc == 0) {
        Add({Segment::Type::Zero, pos, cluster_size_});
        return pos + cluster_size_;
      }
      const uint64_t sub = cluster_size_ / 32;
      for (unsigned i = 0; i < 32; ++i) {
        uint64_t guest = pos + i * sub;
        if (guest >= vsize_) break;
        if (alloc & (1u << i)) {
          uint64_t need = std::min(sub, vsize_ - guest);
          uint64_t at = host + i * sub;
          if (at > src_.size() || need > src_.size() - at) {
            return bad(fmt::format("subcluster {} at {} is beyond the end of the file ({})", i, at,
                                   src_.size()));
          }
          Add({Segment::Type::Host, guest, sub, at});
        } else {
          Add({Segment::Type::Zero, guest, sub});
        }
      }
      return pos + cluster_size_;
    }

    if (e & kZeroFlag) {
      Add({Segment::Type::Zero, pos, cluster_size_});  // a kept host offset is never read
    } else if (host == 0) {
      if (e & kCopied) return bad("host offset 0 needs an external data file");
      Add({Segment::Type::Zero, pos, cluster_size_});
    } else {
      uint64_t need = std::min(cluster_size_, vsize_ - pos);
      if (host > src_.size() || need > src_.size() - host) {
        return bad(fmt::format("data cluster at {} is beyond the end of the file ({})", host,
                               src_.size()));
      }
      Add({Segment::Type::Host, pos, cluster_size_, host});
    }
    return pos + cluster_size_;
  }

  Result<void> Decompress(uint64_t entry, uint64_t guest, std::span<uint8_t> out) const override {
    auto [coffset, cbytes] = CompressedRange(entry);
    // The sector count is an upper bound: it may run past the end of the file, whose missing
    // tail QEMU reads as zeros. Only the bytes present are handed to the decompressor.
    size_t n = static_cast<size_t>(std::min<uint64_t>(cbytes, src_.size() - coffset));
    // The caller's own input buffer (threads decode at once); a cluster's worth at most.
    std::vector<uint8_t> in(n);
    IMAGED_TRY_CTX(src_.ReadAt(in.data(), n, coffset),
                   "qcow2: compressed cluster for guest offset {} at file offset {}", guest,
                   coffset);
    auto done = p_.compression_type == 1 ? ZstdDecompress(in, out) : InflateRaw(in, out);
    if (!done) {
      return std::move(done).error().Wrap(fmt::format(
          "qcow2: compressed cluster for guest offset {} at file offset {}", guest, coffset));
    }
    return Ok();
  }

 private:
  std::pair<uint64_t, uint64_t> CompressedRange(uint64_t e) const {
    const unsigned x = 62 - (cluster_bits_ - 8);
    uint64_t offset = e & ((uint64_t{1} << x) - 1);
    uint64_t nsec = (e >> x) & ((uint64_t{1} << (cluster_bits_ - 8)) - 1);
    return {offset, (nsec + 1) * 512 - (offset & 511)};
  }

  Qcow2Params p_;
  uint64_t l2_entries_;
};

// The header fields the open steps use, as stored (a v2 header keeps the v3 defaults).
struct Qcow2Header {
  unsigned version = 0;
  uint64_t backing_file_offset = 0;
  unsigned cluster_bits = 0;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t incompatible = 0;
  uint32_t header_length = 72;
  uint8_t compression_type = 0;
};

// The v3 fields after the 72-byte v2 header (read at their offsets in a header-sized buffer).
Result<void> ReadQcow2V3Fields(Source& source, Qcow2Header& header) {
  uint8_t h[112] = {};
  if (source.size() < 104) {
    return MakeError(EINVAL, "qcow2 header: file is {} bytes, shorter than a v3 header",
                     source.size());
  }
  IMAGED_TRY_CTX(source.ReadAt(h + 72, 32, 72), "qcow2 header");
  header.incompatible = Be64(h + 72);
  uint32_t refcount_order = Be32(h + 96);
  header.header_length = Be32(h + 100);
  if (header.header_length < 104 || header.header_length % 8 != 0) {
    return MakeError(EINVAL,
                     "qcow2 header: header_length {} at offset 100 is below 104 or not a "
                     "multiple of 8",
                     header.header_length);
  }
  if (refcount_order > 6) {
    return MakeError(EINVAL, "qcow2 header: refcount_order {} at offset 96 is above 6",
                     refcount_order);
  }
  if (header.header_length >= 112) {
    IMAGED_TRY_CTX(source.ReadAt(h + 104, 8, 104), "qcow2 header");
    header.compression_type = h[104];
  }
  return Ok();
}

// Magic, version and the fields of a v2 or v3 header.
Result<Qcow2Header> ReadQcow2Header(Source& source) {
  uint8_t h[72];
  if (source.size() < 72) {
    return MakeError(EINVAL, "qcow2 header: file is {} bytes, shorter than the 72-byte header",
                     source.size());
  }
  IMAGED_TRY_CTX(source.ReadAt(h, 72, 0), "qcow2 header");
  if (std::memcmp(h, kQcowMagic, 4) != 0) return MakeError(EINVAL, "qcow2 header: bad magic");
  Qcow2Header header;
  header.version = Be32(h + 4);
  if (header.version != 2 && header.version != 3) {
    return MakeError(EOPNOTSUPP, "qcow2 header: unsupported version {} at offset 4",
                     header.version);
  }
  header.backing_file_offset = Be64(h + 8);
  header.cluster_bits = Be32(h + 20);
  header.size = Be64(h + 24);
  header.crypt_method = Be32(h + 32);
  header.l1_size = Be32(h + 36);
  header.l1_table_offset = Be64(h + 40);
  if (header.version == 3) IMAGED_TRY(ReadQcow2V3Fields(source, header));
  return header;
}

// What a read-only converter must not open: unknown incompatible features, a corrupt image,
// an external data file, encryption, a backing file, an unknown compression.
Result<void> CheckQcow2Features(const Qcow2Header& h) {
  if (uint64_t unknown = h.incompatible & ~kIncompatKnown) {
    return MakeError(EOPNOTSUPP,
                     "qcow2 header: unknown incompatible features 0x{:x} at offset 72", unknown);
  }
  if (h.incompatible & kIncompatCorrupt) {
    return MakeError(EINVAL, "qcow2 header: image is marked corrupt (incompatible bit 1)");
  }
  if (h.incompatible & kIncompatDataFile) {
    return MakeError(EOPNOTSUPP,
                     "qcow2 header: external data files are not supported (incompatible bit 2)");
  }
  if (h.crypt_method != 0) {
    return MakeError(EOPNOTSUPP, "qcow2 header: encrypted image (crypt_method {} at offset 32)",
                     h.crypt_method);
  }
  if (h.backing_file_offset != 0) {
    return MakeError(EOPNOTSUPP,
                     "qcow2 header: image has a backing file (backing_file_offset {} at offset "
                     "8); backing files are never opened",
                     h.backing_file_offset);
  }
  const bool compression_bit = h.incompatible & kIncompatCompression;
  if (h.compression_type > 1) {
    return MakeError(EINVAL, "qcow2 header: unknown compression_type {} at offset 104",
                     h.compression_type);
  }
  if (compression_bit != (h.compression_type != 0)) {
    return MakeError(EINVAL,
                     "qcow2 header: compression_type {} at offset 104 disagrees with "
                     "incompatible bit 3",
                     h.compression_type);
  }
  return Ok();
}

// The reader's parameters but the L1 entries: cluster size (and the header fitting in one
// cluster), extended L2, compression and the virtual size.
Result<Qcow2Params> Qcow2Geometry(const Qcow2Header& h) {
  Qcow2Params p;
  p.version = h.version;
  p.cluster_bits = h.cluster_bits;
  p.size = h.size;
  p.l1_offset = h.l1_table_offset;
  p.compression_type = h.compression_type;
  p.extended_l2 = h.incompatible & kIncompatExtendedL2;
  const unsigned min_bits = p.extended_l2 ? 14 : 9;
  if (p.cluster_bits < min_bits || p.cluster_bits > 21) {
    return MakeError(EINVAL, "qcow2 header: cluster_bits {} at offset 20 is outside {}..21",
                     p.cluster_bits, min_bits);
  }
  if (h.header_length > (uint64_t{1} << p.cluster_bits)) {
    return MakeError(EINVAL, "qcow2 header: header_length {} is larger than a cluster",
                     h.header_length);
  }
  if (p.size > kMaxQcow2Size) {
    return MakeError(EINVAL, "qcow2 header: size {} at offset 24 is too big (limit {})", p.size,
                     kMaxQcow2Size);
  }
  // QEMU counts 512-byte sectors (size / 512), so the guest sees the size rounded down, as
  // with qcow v1 (measured: 5242468 gives 5242368). The L1 table must still cover the header's
  // size: QEMU checks l1_size against that.
  p.vsize = p.size & ~uint64_t{511};
  return p;
}

// The entries of the active L1 table that cover the size, once the table is checked: large
// enough for the size, within the limit, cluster-aligned and inside the file.
Result<uint64_t> Qcow2L1Entries(const Qcow2Header& h, const Qcow2Params& p, uint64_t file_size) {
  const uint64_t cluster_size = uint64_t{1} << p.cluster_bits;
  const uint64_t span = cluster_size * (cluster_size / (p.extended_l2 ? 16 : 8));
  const uint64_t l1_entries = (p.size + span - 1) / span;
  if (h.l1_size < l1_entries) {
    return MakeError(EINVAL, "qcow2 header: l1_size {} at offset 36 is too small for size {}",
                     h.l1_size, p.size);
  }
  if (uint64_t{h.l1_size} * 8 > kMaxL1Bytes) {
    return MakeError(EINVAL, "qcow2 header: l1_size {} at offset 36 is over the {}-byte limit",
                     h.l1_size, kMaxL1Bytes);
  }
  if (l1_entries == 0) return l1_entries;
  if (p.l1_offset & (cluster_size - 1)) {
    return MakeError(EINVAL, "qcow2 header: l1_table_offset {} is not cluster-aligned",
                     p.l1_offset);
  }
  if (p.l1_offset > file_size || l1_entries * 8 > file_size - p.l1_offset) {
    return MakeError(EINVAL,
                     "qcow2 header: L1 table ({} entries at {}) is beyond the end of the file "
                     "({})",
                     l1_entries, p.l1_offset, file_size);
  }
  return l1_entries;
}

}  // namespace

// Refcounts are not read: a read-only converter needs only the active L1 and L2 tables,
// whose offsets are bound-checked against the file instead.
Result<std::unique_ptr<ImageReader>> OpenQcow2Reader(Source& source, const ReaderOptions& options) {
  const Qcow2Header header = IMAGED_TRY(ReadQcow2Header(source));
  IMAGED_TRY(CheckQcow2Features(header));
  Qcow2Params p = IMAGED_TRY(Qcow2Geometry(header));
  p.l1_entries = IMAGED_TRY(Qcow2L1Entries(header, p, source.size()));
  auto reader = std::make_unique<Qcow2Reader>(source, options, p);
  if (options.prevalidate) IMAGED_TRY(reader->Validate());
  return std::unique_ptr<ImageReader>(std::move(reader));
}

}  // namespace imaged::import
