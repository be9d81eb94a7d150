// Android sparse (libsparse sparse_format.h), read strictly sequentially so it also works on a
// pipe. Checks go beyond libsparse's: blk_sz 0 (SIGFPE in simg2img) and blk_sz not a multiple
// of 4 are refused, chunk sizes use 64-bit math (libsparse's 32-bit multiply wraps for RAW
// chunks of 4 GiB+), unknown chunk types are refused, and checksums are verified.
#include <zlib.h>

#include <algorithm>

#include "internal.h"

namespace imaged::import {
namespace {

constexpr uint16_t kChunkRaw = 0xCAC1;
constexpr uint16_t kChunkFill = 0xCAC2;
constexpr uint16_t kChunkDontCare = 0xCAC3;
constexpr uint16_t kChunkCrc32 = 0xCAC4;

struct SparseHeader {
  uint32_t blk_sz = 0;
  uint32_t total_blks = 0;
  uint32_t total_chunks = 0;
  uint32_t image_checksum = 0;
  uint16_t chunk_hdr_sz = 0;
};

struct Chunk {
  uint16_t type = 0;
  uint32_t chunk_sz = 0;
  uint64_t data_sz = 0;     // payload bytes after the chunk header
  uint64_t out_bytes = 0;   // chunk_sz * blk_sz
  uint64_t file_offset = 0;  // of the chunk header
};

Result<SparseHeader> ReadHeader(Stream& in) {
  uint8_t h[28];
  IMAGED_TRY_CTX(in.Read(h, sizeof(h)), "sparse header");
  if (Le32(h) != kSparseMagic) return MakeError(EINVAL, "sparse header: bad magic at offset 0");
  uint16_t major = Le16(h + 4);
  uint16_t file_hdr_sz = Le16(h + 8);
  SparseHeader s;
  s.chunk_hdr_sz = Le16(h + 10);
  s.blk_sz = Le32(h + 12);
  s.total_blks = Le32(h + 16);
  s.total_chunks = Le32(h + 20);
  s.image_checksum = Le32(h + 24);
  if (major != 1) {
    return MakeError(EOPNOTSUPP, "sparse header: unsupported major version {} at offset 4", major);
  }
  if (file_hdr_sz < 28) {
    return MakeError(EINVAL, "sparse header: file_hdr_sz {} at offset 8 is below 28", file_hdr_sz);
  }
  if (s.chunk_hdr_sz < 12) {
    return MakeError(EINVAL, "sparse header: chunk_hdr_sz {} at offset 10 is below 12",
                     s.chunk_hdr_sz);
  }
  if (s.blk_sz == 0 || s.blk_sz % 4 != 0) {
    return MakeError(EINVAL, "sparse header: blk_sz {} at offset 12 is not a positive multiple of 4",
                     s.blk_sz);
  }
  // Longer headers (a newer minor version) carry fields we may skip.
  IMAGED_TRY_CTX(in.Skip(file_hdr_sz - 28u), "sparse header");
  return s;
}

Result<Chunk> ReadChunkHeader(Stream& in, const SparseHeader& s, uint32_t index,
                              uint64_t blocks_so_far) {
  Chunk c;
  c.file_offset = in.position();
  uint8_t h[12];
  IMAGED_TRY_CTX(in.Read(h, sizeof(h)), "sparse chunk {} at offset {}", index, c.file_offset);
  IMAGED_TRY_CTX(in.Skip(s.chunk_hdr_sz - 12u), "sparse chunk {} at offset {}", index,
                 c.file_offset);
  c.type = Le16(h);
  c.chunk_sz = Le32(h + 4);
  uint32_t total_sz = Le32(h + 8);
  auto bad = [&](std::string_view what) {
    return MakeError(EINVAL, "sparse chunk {} (type 0x{:04x}) at offset {}: {}", index, c.type,
                     c.file_offset, what);
  };
  if (total_sz < s.chunk_hdr_sz) {
    return bad(fmt::format("total_sz {} is smaller than the chunk header ({})", total_sz,
                           s.chunk_hdr_sz));
  }
  c.data_sz = total_sz - s.chunk_hdr_sz;
  c.out_bytes = uint64_t{c.chunk_sz} * s.blk_sz;  // 64-bit: never wraps (both are 32-bit)
  switch (c.type) {
    case kChunkRaw:
      if (c.data_sz != c.out_bytes) {
        return bad(fmt::format("RAW data is {} bytes but chunk_sz {} blocks of {} need {}",
                               c.data_sz, c.chunk_sz, s.blk_sz, c.out_bytes));
      }
      break;
    case kChunkFill:
      if (c.data_sz != 4) return bad(fmt::format("FILL data is {} bytes, not 4", c.data_sz));
      break;
    case kChunkDontCare:
      if (c.data_sz != 0) return bad(fmt::format("DONT_CARE has {} data bytes", c.data_sz));
      break;
    case kChunkCrc32:
      if (c.data_sz != 4) return bad(fmt::format("CRC32 data is {} bytes, not 4", c.data_sz));
      if (c.chunk_sz != 0) return bad(fmt::format("CRC32 chunk_sz is {}, not 0", c.chunk_sz));
      break;
    default:
      return bad("unknown chunk type");
  }
  if (blocks_so_far + c.chunk_sz > s.total_blks) {
    return bad(fmt::format("chunks add up to more than total_blks {}", s.total_blks));
  }
  return c;
}

// CRC32 of `count` repetitions of a 4-byte unit appended to `crc`, in O(log count): huge FILL
// and DONT_CARE chunks are checksummed without touching their bytes.
uint32_t CrcRepeat(uint32_t crc, const uint8_t unit[4], uint64_t count) {
  uint32_t pow_crc = static_cast<uint32_t>(crc32(0, unit, 4));
  uint64_t pow_len = 4;
  while (count) {
    if (count & 1) crc = static_cast<uint32_t>(crc32_combine(crc, pow_crc, static_cast<z_off_t>(pow_len)));
    count >>= 1;
    if (count) {
      pow_crc = static_cast<uint32_t>(crc32_combine(pow_crc, pow_crc, static_cast<z_off_t>(pow_len)));
      pow_len *= 2;
    }
  }
  return crc;
}

class SparseReader : public ImageReader {
 public:
  SparseReader(Stream& in, std::unique_ptr<Stream> owned, const SparseHeader& header,
               const ReaderOptions& options)
      : in_(in), owned_(std::move(owned)), h_(header), options_(options) {}

  Format format() const override { return Format::Sparse; }
  uint64_t virtual_size() const override { return uint64_t{h_.total_blks} * h_.blk_sz; }

  Result<std::optional<Run>> Next() override {
    while (remaining_ == 0) {
      if (chunks_read_ == h_.total_chunks) return Finish();
      Chunk c = IMAGED_TRY(ReadChunkHeader(in_, h_, chunks_read_, blocks_));
      ++chunks_read_;
      chunk_ = c;
      if (c.type == kChunkCrc32) {
        uint8_t v[4];
        IMAGED_TRY_CTX(in_.Read(v, 4), "sparse CRC32 chunk at offset {}", c.file_offset);
        if (options_.verify_checksums && Le32(v) != crc_) {
          return MakeError(EBADMSG,
                           "sparse CRC32 chunk at offset {}: checksum 0x{:08x} does not match "
                           "the data before it (0x{:08x})",
                           c.file_offset, Le32(v), crc_);
        }
        continue;
      }
      if (c.type == kChunkFill) {
        IMAGED_TRY_CTX(in_.Read(pattern_, 4), "sparse FILL chunk at offset {}", c.file_offset);
        pattern_filled_ = 0;
      }
      blocks_ += c.chunk_sz;
      remaining_ = c.out_bytes;
    }

    Run run;
    run.offset = out_pos_;
    const uint8_t zeros[4] = {0, 0, 0, 0};
    bool zero_fill = chunk_.type == kChunkFill && Le32(pattern_) == 0;
    if (chunk_.type == kChunkDontCare || zero_fill) {
      run.kind = Run::Kind::Zero;
      run.length = remaining_;
      if (options_.verify_checksums) crc_ = CrcRepeat(crc_, zeros, run.length / 4);
    } else if (chunk_.type == kChunkRaw) {
      run.kind = Run::Kind::Data;
      run.length = std::min<uint64_t>(remaining_, options_.max_data_run);
      buf_.resize(options_.max_data_run);
      IMAGED_TRY_CTX(in_.Read(buf_.data(), run.length), "sparse RAW chunk at offset {}",
                     chunk_.file_offset);
      run.data = {buf_.data(), run.length};
      if (options_.verify_checksums) {
        crc_ = static_cast<uint32_t>(crc32(crc_, buf_.data(), static_cast<uInt>(run.length)));
      }
    } else {  // FILL with a non-zero pattern
      run.kind = Run::Kind::Data;
      run.length = std::min<uint64_t>(remaining_, options_.max_data_run);
      // blk_sz and max_data_run are multiples of 4, so every piece starts on a pattern edge.
      if (pattern_filled_ < run.length) {
        fill_.resize(options_.max_data_run);
        for (size_t i = 0; i < run.length; i += 4) std::memcpy(&fill_[i], pattern_, 4);
        pattern_filled_ = run.length;
      }
      run.data = {fill_.data(), run.length};
      if (options_.verify_checksums) crc_ = CrcRepeat(crc_, pattern_, run.length / 4);
    }
    remaining_ -= run.length;
    out_pos_ += run.length;
    return std::optional<Run>(run);
  }

 private:
  Result<std::optional<Run>> Finish() {
    if (blocks_ != h_.total_blks) {
      return MakeError(EINVAL, "sparse: chunks add up to {} blocks, header total_blks is {}",
                       blocks_, h_.total_blks);
    }
    // libsparse writes 0 here and never checks it; 0 therefore means "absent".
    if (options_.verify_checksums && h_.image_checksum != 0 && h_.image_checksum != crc_) {
      return MakeError(EBADMSG,
                       "sparse header: image_checksum 0x{:08x} at offset 24 does not match the "
                       "data (0x{:08x})",
                       h_.image_checksum, crc_);
    }
    return std::optional<Run>();
  }

  Stream& in_;
  std::unique_ptr<Stream> owned_;
  SparseHeader h_;
  ReaderOptions options_;
  uint32_t chunks_read_ = 0;
  uint64_t blocks_ = 0;
  uint64_t out_pos_ = 0;
  uint64_t remaining_ = 0;
  Chunk chunk_;
  uint8_t pattern_[4] = {};
  size_t pattern_filled_ = 0;
  uint32_t crc_ = 0;
  std::vector<uint8_t> buf_;
  std::vector<uint8_t> fill_;
};

// Walks every chunk header, skipping payloads, so structural errors anywhere surface before a
// single run is produced.
Result<void> Prevalidate(Source& source, const SparseHeader& h) {
  SourceStream in(source);
  IMAGED_TRY(ReadHeader(in));
  uint64_t blocks = 0;
  for (uint32_t i = 0; i < h.total_chunks; ++i) {
    Chunk c = IMAGED_TRY(ReadChunkHeader(in, h, i, blocks));
    IMAGED_TRY_CTX(in.Skip(c.data_sz), "sparse chunk {} at offset {}", i, c.file_offset);
    blocks += c.chunk_sz;
  }
  if (blocks != h.total_blks) {
    return MakeError(EINVAL, "sparse: chunks add up to {} blocks, header total_blks is {}", blocks,
                     h.total_blks);
  }
  return Ok();
}

}  // namespace

Result<std::unique_ptr<ImageReader>> OpenSparseReader(Stream& stream,
                                                      const ReaderOptions& options) {
  IMAGED_TRY(CheckReaderOptions(options));
  SparseHeader h = IMAGED_TRY(ReadHeader(stream));
  return std::unique_ptr<ImageReader>(new SparseReader(stream, nullptr, h, options));
}

Result<std::unique_ptr<ImageReader>> OpenSparseFromSource(Source& source,
                                                          const ReaderOptions& options) {
  auto stream = std::make_unique<SourceStream>(source);
  SparseHeader h = IMAGED_TRY(ReadHeader(*stream));
  if (options.prevalidate) IMAGED_TRY(Prevalidate(source, h));
  Stream& ref = *stream;
  return std::unique_ptr<ImageReader>(new SparseReader(ref, std::move(stream), h, options));
}

}  // namespace imaged::import
