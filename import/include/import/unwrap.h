// Compressed and archived images as people download them: an .img.gz, .img.xz, .img.zst or
// .img.bz2 stream, or a .zip holding one image. Detected by content and decoded as a stream,
// never unpacked to disk first: a raw or Android sparse image inside is read as it comes out of
// the decoder. qcow needs random access and is refused, naming the command that unpacks it.
//
// A raw image's size is what its stream decodes to, and only zip records it (the central
// directory): for the other formats the stream is decoded once to count it, before anything is
// allocated, and again to import it. Sparse images carry their size in their header.
//
// gzip is decoded with zlib, which checks each member's CRC32 and length (libarchive 3.6 does
// not: its gzip trailer check is a TODO, so a damaged file could import as wrong data). xz,
// zstd, bzip2 and zip go through libarchive, which checks each format's own integrity data (the
// xz check, the zstd frame checksum when present, bzip2's block CRCs, zip's CRC32), always with
// its built-in decoders (never an external program).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "imaged/common/progress.h"
#include "imaged/common/result.h"
#include "import/reader.h"
#include "import/source.h"

namespace imaged::import {

enum class Wrapping { None, Gzip, Xz, Zstd, Bzip2, Zip };

std::string_view WrappingName(Wrapping wrapping);  // "none", "gzip", "xz", "zstd", "bzip2", "zip"

// The leading bytes DetectWrapping looks at.
inline constexpr size_t kWrappingPrefixBytes = 10;

// By magic: gzip 1f 8b 08 (deflate), xz fd "7zXZ" 00, zstd 28 b5 2f fd, bzip2 "BZh" 1-9 then a
// block or end-of-stream magic, zip "PK\3\4" (a local file header). Anything else is None.
Wrapping DetectWrapping(std::span<const uint8_t> prefix);
Result<Wrapping> DetectWrapping(Source& source);

struct UnwrapOptions {
  ReaderOptions reader;          // for the image inside
  std::optional<Format> format;  // the image inside; nullopt: detected from its first bytes
  // A raw image that decodes to more than this fails with ENOSPC as soon as the count passes
  // it (the space it would need is not there), so a small file that decodes to petabytes
  // stops early instead of decoding to its end.
  uint64_t max_size = std::numeric_limits<uint64_t>::max();
  // The counting pass: bytes of the source consumed, of its size. false cancels (ECANCELED).
  Progress count_progress;
};

class UnwrappedReader : public ImageReader {
 public:
  // Bytes of the source the decoder has consumed so far (for progress).
  virtual uint64_t input_position() const = 0;
};

// The image inside `wrapping` (not None) of `source`, which must outlive the reader. A damaged
// stream fails from Next(): EBADMSG for a checksum mismatch, EINVAL for anything malformed or
// truncated, and for bytes left over past the image's end. A zip must hold exactly one regular
// file, not encrypted.
Result<std::unique_ptr<UnwrappedReader>> OpenUnwrappedReader(Source& source, Wrapping wrapping,
                                                             const UnwrapOptions& options = {});

}  // namespace imaged::import
