// qcow version 1 (QEMU block/qcow.c). Big-endian 48-byte header; L1/L2 entries are plain file
// offsets; bit 63 of an L2 entry marks a raw-deflate compressed cluster whose byte size sits
// in the cluster_bits bits below it.
#include "cluster_reader.h"

namespace imaged::import {
namespace {

class Qcow1Reader : public ClusterReader {
 public:
  Qcow1Reader(Source& source, const ReaderOptions& options, uint64_t vsize, unsigned cluster_bits,
              unsigned l2_bits, uint64_t l1_offset, uint64_t l1_entries)
      : ClusterReader(source, options, vsize, cluster_bits),
        l2_bits_(l2_bits),
        l1_offset_(l1_offset),
        l1_entries_(l1_entries) {}

  Format format() const override { return Format::Qcow1; }

 protected:
  Result<uint64_t> MapStep(uint64_t pos) override {
    const unsigned shift = cluster_bits_ + l2_bits_;
    const uint64_t span = uint64_t{1} << shift;
    const uint64_t l1_index = pos >> shift;
    uint64_t l2_offset = IMAGED_TRY_CTX(L1Entry(l1_offset_, l1_entries_, l1_index), "qcow");
    if (l2_offset == 0) {
      uint64_t end = (l1_index + 1) * span;
      Add({Segment::Type::Zero, pos, end - pos});
      return end;
    }
    const size_t l2_bytes = size_t{8} << l2_bits_;
    const uint64_t l1_entry_at = l1_offset_ + l1_index * 8;
    if (l2_offset % 512 != 0) {
      return MakeError(EINVAL, "qcow: L1 entry {} at offset {}: L2 offset {} is not 512-aligned",
                       l1_index, l1_entry_at, l2_offset);
    }
    if (l2_offset > src_.size() || l2_bytes > src_.size() - l2_offset) {
      return MakeError(EINVAL,
                       "qcow: L1 entry {} at offset {}: L2 table at {} is beyond the end of the "
                       "file ({})",
                       l1_index, l1_entry_at, l2_offset, src_.size());
    }
    const uint8_t* l2 = IMAGED_TRY_CTX(L2Table(l2_offset, l2_bytes), "qcow");
    const uint64_t l2_index = (pos >> cluster_bits_) & ((uint64_t{1} << l2_bits_) - 1);
    const uint64_t e = Be64(l2 + l2_index * 8);
    const uint64_t entry_at = l2_offset + l2_index * 8;
    const uint64_t need = std::min(cluster_size_, vsize_ - pos);
    if (e & (uint64_t{1} << 63)) {
      uint64_t coffset = CompressedOffset(e);
      uint64_t csize = CompressedSize(e);
      if (coffset > src_.size() || csize > src_.size() - coffset) {
        return MakeError(EINVAL,
                         "qcow: L2 entry 0x{:016x} at offset {} (guest offset {}): compressed "
                         "data {} bytes at {} is beyond the end of the file ({})",
                         e, entry_at, pos, csize, coffset, src_.size());
      }
      Add({Segment::Type::Compressed, pos, cluster_size_, 0, e});
    } else if (e == 0) {
      Add({Segment::Type::Zero, pos, cluster_size_});
    } else {
      // QEMU fails such reads with EIO; data clusters are always sector-aligned.
      if (e % 512 != 0) {
        return MakeError(EINVAL,
                         "qcow: L2 entry 0x{:016x} at offset {} (guest offset {}): data offset is "
                         "not 512-aligned",
                         e, entry_at, pos);
      }
      if (e > src_.size() || need > src_.size() - e) {
        return MakeError(EINVAL,
                         "qcow: L2 entry at offset {} (guest offset {}): data cluster at {} is "
                         "beyond the end of the file ({})",
                         entry_at, pos, e, src_.size());
      }
      Add({Segment::Type::Host, pos, cluster_size_, e});
    }
    return pos + cluster_size_;
  }

  Result<void> Decompress(uint64_t entry, uint64_t guest, std::span<uint8_t> out) const override {
    uint64_t coffset = CompressedOffset(entry);
    size_t csize = static_cast<size_t>(CompressedSize(entry));
    std::vector<uint8_t> in(csize);  // the caller's own: threads decode at once
    IMAGED_TRY_CTX(src_.ReadAt(in.data(), csize, coffset),
                   "qcow: compressed cluster for guest offset {} at file offset {}", guest,
                   coffset);
    IMAGED_TRY_CTX(InflateRaw(in, out),
                   "qcow: compressed cluster for guest offset {} at file offset {}", guest,
                   coffset);
    return Ok();
  }

 private:
  uint64_t CompressedOffset(uint64_t e) const {
    return e & ((uint64_t{1} << (63 - cluster_bits_)) - 1);
  }
  uint64_t CompressedSize(uint64_t e) const {
    return (e >> (63 - cluster_bits_)) & (cluster_size_ - 1);
  }

  unsigned l2_bits_;
  uint64_t l1_offset_;
  uint64_t l1_entries_;
};

}  // namespace

Result<std::unique_ptr<ImageReader>> OpenQcow1Reader(Source& source,
                                                     const ReaderOptions& options) {
  uint8_t h[48];
  if (source.size() < sizeof(h)) {
    return MakeError(EINVAL, "qcow header: file is {} bytes, shorter than the 48-byte header",
                     source.size());
  }
  IMAGED_TRY_CTX(source.ReadAt(h, sizeof(h), 0), "qcow header");
  if (std::memcmp(h, kQcowMagic, 4) != 0) return MakeError(EINVAL, "qcow header: bad magic");
  uint32_t version = Be32(h + 4);
  if (version != 1) {
    return MakeError(EOPNOTSUPP, "qcow header: version {} at offset 4 is not 1", version);
  }
  uint64_t backing_file_offset = Be64(h + 8);
  uint64_t size = Be64(h + 24);
  unsigned cluster_bits = h[32];
  unsigned l2_bits = h[33];
  uint32_t crypt_method = Be32(h + 36);
  uint64_t l1_offset = Be64(h + 40);
  if (crypt_method != 0) {
    return MakeError(EOPNOTSUPP, "qcow header: encrypted image (crypt_method {} at offset 36)",
                     crypt_method);
  }
  if (backing_file_offset != 0) {
    return MakeError(EOPNOTSUPP,
                     "qcow header: image has a backing file (backing_file_offset {} at offset 8); "
                     "backing files are never opened",
                     backing_file_offset);
  }
  if (cluster_bits < 9 || cluster_bits > 16) {
    return MakeError(EINVAL, "qcow header: cluster_bits {} at offset 32 is outside 9..16",
                     cluster_bits);
  }
  if (l2_bits < 6 || l2_bits > 13) {
    return MakeError(EINVAL, "qcow header: l2_bits {} at offset 33 is outside 6..13", l2_bits);
  }
  if (size <= 1) {
    return MakeError(EINVAL, "qcow header: size {} at offset 24 is too small", size);
  }
  const unsigned shift = cluster_bits + l2_bits;
  if (size > UINT64_MAX - (uint64_t{1} << shift)) {
    return MakeError(EINVAL, "qcow header: size {} at offset 24 is too large", size);
  }
  uint64_t l1_entries = (size + (uint64_t{1} << shift) - 1) >> shift;
  if (l1_entries * 8 > kMaxL1Bytes) {
    return MakeError(EINVAL, "qcow header: size {} needs an L1 table of {} bytes, over the {} limit",
                     size, l1_entries * 8, kMaxL1Bytes);
  }
  if (l1_offset > source.size() || l1_entries * 8 > source.size() - l1_offset) {
    return MakeError(EINVAL,
                     "qcow header: L1 table ({} entries at l1_table_offset {}) is beyond the end "
                     "of the file ({})",
                     l1_entries, l1_offset, source.size());
  }
  // QEMU counts 512-byte sectors, so the guest sees the size rounded down.
  uint64_t vsize = size & ~uint64_t{511};
  auto reader = std::make_unique<Qcow1Reader>(source, options, vsize, cluster_bits, l2_bits,
                                              l1_offset, l1_entries);
  if (options.prevalidate) IMAGED_TRY(reader->Validate());
  return std::unique_ptr<ImageReader>(std::move(reader));
}

}  // namespace imaged::import
