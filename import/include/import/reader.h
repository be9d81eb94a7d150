// Image readers: each turns a source into ordered runs (offset, length, data | zero) with
// memory bounded independently of the image size. Formats: raw, Android sparse, qcow v1,
// qcow2 (v2 and v3). Validation is strict; errors name the field and file offset and carry
// EINVAL (malformed), EBADMSG (checksum mismatch) or EOPNOTSUPP (encryption, backing file,
// external data file, unknown incompatible feature).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "imaged/common/result.h"
#include "import/source.h"

namespace imaged::import {

enum class Format { Raw, Sparse, Qcow1, Qcow2 };  // Qcow2 covers versions 2 and 3

std::string_view FormatName(Format format);  // "raw", "sparse", "qcow", "qcow2"

// The leading bytes detection looks at (the VDI signature sits at offset 0x40, a VMDK text
// descriptor's version line may follow comment lines).
inline constexpr size_t kDetectPrefixBytes = 512;

// By magic: sparse 0xed26ff3a (LE); "QFI\xfb" with version 1 -> Qcow1, 2 or 3 -> Qcow2; a qcow
// magic with any other version is an error (EOPNOTSUPP), never raw. A broken header behind
// either magic is refused by OpenReader, naming the field. Images of formats imaged does not
// read (vmdk, vhdx, vdi, vpc, qed, parallels, luks) are refused by name with EOPNOTSUPP,
// "unsupported format vmdk (convert it, or pass --format raw): ...": importing them as raw
// bytes would hand the guest a disk it cannot use. Anything else is Raw; with an explicit
// format (OpenReader with Format::Raw) every file is taken as its own bytes.
// From a Source the last 512 bytes are read too: a fixed-size VHD shows only there.
Result<Format> DetectFormat(Source& source);
// The same from the first bytes of a stream (kDetectPrefixBytes when available; at least 8).
// The end of a stream is unknown, so a fixed-size VHD is Raw here.
Result<Format> DetectFormat(std::span<const uint8_t> prefix);

// Decompresses the clusters a reader hands over undecoded (ReaderOptions::defer_decompression).
class ClusterDecoder {
 public:
  virtual ~ClusterDecoder() = default;
  // The cluster `key` names (Run::decode_key; its data starts at guest offset `guest`) into
  // `out` (Run::decoded_size bytes). Safe to call from several threads at once.
  virtual Result<void> DecodeCluster(uint64_t key, uint64_t guest,
                                     std::span<uint8_t> out) const = 0;
};

struct Run {
  enum class Kind { Data, Zero };
  uint64_t offset = 0;
  uint64_t length = 0;  // never 0
  Kind kind = Kind::Zero;
  // For Data: exactly `length` bytes, valid until the next call to Next().
  std::span<const uint8_t> data;
  // For Data from a reader opened with ReaderOptions::defer_data_reads: `data` is empty and
  // the bytes are `length` bytes of `source` at `source_offset`, for the consumer to read
  // itself (into its own buffer, on any thread, while the source lives).
  Source* source = nullptr;
  uint64_t source_offset = 0;
  // For Data from a reader opened with ReaderOptions::defer_decompression: `data` is empty,
  // `source` null, and `decoder` decompresses cluster `decode_key` into `decoded_size` bytes
  // whose first `length` are the run, for the consumer to call on any thread (at once with
  // other decodes and with Next()) while the reader lives.
  const ClusterDecoder* decoder = nullptr;
  uint64_t decode_key = 0;
  size_t decoded_size = 0;
};

class ImageReader {
 public:
  virtual ~ImageReader() = default;
  virtual Format format() const = 0;
  // The guest-visible size in bytes.
  virtual uint64_t virtual_size() const = 0;
  // The next run, or nullopt at the end. Runs come in increasing offset order, never overlap,
  // and together cover [0, virtual_size()) exactly (a consumer may still treat gaps as zero).
  // Adjacent Zero runs are not necessarily merged; Data runs are at most max_data_run long.
  virtual Result<std::optional<Run>> Next() = 0;
};

struct ReaderOptions {
  // Largest Data run, a multiple of 4096. Physically contiguous clusters are read together
  // up to this size, so a writer gets large sequential writes.
  size_t max_data_run = 4 << 20;
  // Verify sparse CRC32 chunks and a non-zero image_checksum (EBADMSG on mismatch).
  bool verify_checksums = true;
  // Raw: report all-zero 4 KiB blocks as Zero runs so the writer can skip them.
  bool raw_detect_zeros = true;
  // qcow/qcow2/sparse from a Source: walk all metadata (L1/L2 tables, chunk headers) at open,
  // so malformed metadata anywhere fails before any run is produced (nothing gets written).
  // Only decompression failures, checksums and I/O errors can then surface from Next().
  bool prevalidate = true;
  // qcow and qcow2: Data runs of stored (not compressed) clusters name their place in the
  // source (Run::source) instead of being read, so Copy() reads them straight into its write
  // buffers on its writer threads: no read and copy of every byte on the caller's thread.
  bool defer_data_reads = false;
  // qcow and qcow2: compressed clusters are not decompressed by Next() but handed over
  // (Run::decoder), so Copy()'s writer threads decompress them in parallel, each into its own
  // write buffer: decoding no longer runs on one core while the disk waits.
  bool defer_decompression = false;
};

// The source must outlive the reader. Header errors are reported here.
Result<std::unique_ptr<ImageReader>> OpenReader(Source& source, Format format,
                                                const ReaderOptions& options = {});

// Android sparse: blk_sz must be a positive multiple of 4 (not necessarily of 512; Copy()
// aligns writes itself). CRC32 chunks and a non-zero image_checksum are verified.
// Android sparse from a sequential stream (no prevalidation possible: structural errors then
// surface from Next()). The stream must outlive the reader.
// Raw bytes from a sequential stream that holds exactly `size` bytes (an upload of a declared
// size). The stream must outlive the reader.
Result<std::unique_ptr<ImageReader>> OpenRawReader(Stream& stream, uint64_t size,
                                                   const ReaderOptions& options = {});
Result<std::unique_ptr<ImageReader>> OpenSparseReader(Stream& stream,
                                                      const ReaderOptions& options = {});

// Limits (exposed for tests).
inline constexpr uint64_t kMaxL1Bytes = 32ull << 20;      // like QEMU's QCOW_MAX_L1_SIZE
inline constexpr uint64_t kMaxQcow2Size = 1ull << 61;     // virtual size ceiling

}  // namespace imaged::import
