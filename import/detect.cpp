#include <algorithm>

#include "internal.h"

namespace imaged::import {

std::string_view FormatName(Format format) {
  switch (format) {
    case Format::Raw: return "raw";
    case Format::Sparse: return "sparse";
    case Format::Qcow1: return "qcow";
    case Format::Qcow2: return "qcow2";
  }
  return "unknown";
}

Result<Format> DetectFormat(std::span<const uint8_t> prefix) {
  if (prefix.size() >= 4 && Le32(prefix.data()) == kSparseMagic) return Format::Sparse;
  if (prefix.size() >= 4 && std::equal(kQcowMagic, kQcowMagic + 4, prefix.begin())) {
    if (prefix.size() < 8) return MakeError(EINVAL, "qcow header truncated: no version field");
    uint32_t version = Be32(prefix.data() + 4);
    if (version == 1) return Format::Qcow1;
    if (version == 2 || version == 3) return Format::Qcow2;
    return MakeError(EOPNOTSUPP, "qcow header: unsupported version {} at offset 4", version);
  }
  return Format::Raw;
}

Result<Format> DetectFormat(Source& source) {
  uint8_t head[8];
  size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof(head), source.size()));
  IMAGED_TRY(source.ReadAt(head, n, 0));
  return DetectFormat(std::span<const uint8_t>(head, n));
}

Result<void> CheckReaderOptions(const ReaderOptions& options) {
  if (options.max_data_run < 4096 || options.max_data_run % 4096 != 0 ||
      options.max_data_run > (256u << 20)) {
    return MakeError(EINVAL, "max_data_run {} is not a multiple of 4096 in [4 KiB, 256 MiB]",
                     options.max_data_run);
  }
  return Ok();
}

Result<std::unique_ptr<ImageReader>> OpenReader(Source& source, Format format,
                                                const ReaderOptions& options) {
  IMAGED_TRY(CheckReaderOptions(options));
  switch (format) {
    case Format::Raw: return OpenRawReader(source, options);
    case Format::Sparse: return OpenSparseFromSource(source, options);
    case Format::Qcow1: return OpenQcow1Reader(source, options);
    case Format::Qcow2: return OpenQcow2Reader(source, options);
  }
  return MakeError(EINVAL, "unknown image format");
}

}  // namespace imaged::import
