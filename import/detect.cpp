#include <algorithm>
#include <optional>
#include <string_view>

#include "internal.h"

namespace imaged::import {
namespace {

using namespace std::literals;

constexpr size_t kVhdFooterBytes = 512;

// Magics of formats imaged recognises but does not read, with qemu's name for each (so the
// user can pass it to `qemu-img convert -f`). Taken from the formats' specifications and the
// probes of qemu's block drivers (block/vmdk.c, vhdx.c, vdi.c, vpc.c, qed.c, parallels.c and
// crypto/block-luks.c), which qemu-img uses for the same decision.
struct ForeignMagic {
  std::string_view format;
  size_t offset;
  std::string_view magic;
  std::string_view what;
};
constexpr ForeignMagic kForeignMagics[] = {
    {"vmdk", 0, "KDMV"sv, "sparse extent magic \"KDMV\""},
    {"vmdk", 0, "COWD"sv, "version 3 sparse extent magic \"COWD\""},
    {"vhdx", 0, "vhdxfile"sv, "file identifier \"vhdxfile\""},
    {"vdi", 0x40, "\x7f\x10\xda\xbe"sv, "signature 0xbeda107f"},
    // Dynamic and differencing disks start with a copy of the footer.
    {"vpc", 0, "conectix"sv, "VHD footer copy \"conectix\""},
    {"qed", 0, "QED\0"sv, "magic \"QED\\0\""},
    {"parallels", 0, "WithoutFreeSpace"sv, "magic \"WithoutFreeSpace\""},
    {"parallels", 0, "WithouFreSpacExt"sv, "magic \"WithouFreSpacExt\""},
};

// EOPNOTSUPP, as for the readers' encryption and backing files: the file is a well-formed
// image of something imaged does not read, not malformed input (EINVAL). The RPC layer maps
// both to INVALID_ARGUMENT; the errno still tells the two apart in logs and tests.
Error Unsupported(std::string_view format, std::string_view evidence, uint64_t offset) {
  return MakeError(EOPNOTSUPP,
                   "unsupported format {} (convert it, or pass --format raw): {} at offset {}",
                   format, evidence, offset);
}

// A VMDK text descriptor (it names extent files; it holds no data itself). VMware starts it
// with "# Disk DescriptorFile"; qemu's probe also takes any comment lines and lines of
// spaces followed by a "version=1", "=2" or "=3" line, so the same is taken here.
bool IsVmdkDescriptor(std::span<const uint8_t> head) {
  std::string_view text(reinterpret_cast<const char*>(head.data()), head.size());
  if (text.starts_with("# Disk DescriptorFile")) return true;
  for (size_t eol; (eol = text.find('\n')) != std::string_view::npos;) {
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(eol + 1);
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (line.starts_with('#') || (!line.empty() && line.find_first_not_of(' ') == line.npos)) {
      continue;
    }
    return line == "version=1" || line == "version=2" || line == "version=3";
  }
  return false;  // a line cut off by the end of the prefix decides nothing
}

// The VDI banner, e.g. "<<< QEMU VM Virtual Disk Image >>>\n", in the first 64 bytes.
std::optional<std::string_view> VdiBanner(std::span<const uint8_t> head) {
  std::string_view text(reinterpret_cast<const char*>(head.data()),
                        std::min<size_t>(head.size(), 64));
  if (!text.starts_with("<<< ")) return std::nullopt;
  size_t end = text.find(" >>>");
  if (end == text.npos) return std::nullopt;
  text = text.substr(0, end + 4);
  // Printable ASCII only: the banner goes into the error message.
  if (!std::all_of(text.begin(), text.end(), [](char c) { return c >= 0x20 && c < 0x7f; })) {
    return std::nullopt;
  }
  return text;
}

// A fixed-size VHD is a raw disk followed by a 512-byte footer and nothing at its start, so
// only the end of the file tells. qemu-img 7.2 probes it as raw (measured: the virtual size
// then includes the footer); imaged refuses it under auto, because importing it as raw makes
// the footer part of the disk and the disk 512 bytes larger than the guest's. The cookie and
// the footer checksum (one's complement of the byte sum, the checksum field taken as zero)
// must both match, so a raw disk that merely ends in "conectix" stays raw.
bool IsVhdFooter(std::span<const uint8_t> footer) {
  if (footer.size() != kVhdFooterBytes || !HasAt(footer, 0, "conectix")) return false;
  uint32_t sum = 0;
  for (size_t i = 0; i < footer.size(); ++i) {
    if (i < 64 || i >= 68) sum += footer[i];
  }
  return ~sum == Be32(footer.data() + 64);
}

// The one detection behind both DetectFormat overloads: `head` is the start of the image (up
// to kDetectPrefixBytes), `footer` its last 512 bytes at `footer_offset` when known (empty
// for a stream, whose end is not known yet).
Result<Format> Detect(std::span<const uint8_t> head, std::span<const uint8_t> footer,
                      uint64_t footer_offset) {
  // A broken header behind a magic of the formats imaged reads is the reader's to name.
  if (head.size() >= 4 && Le32(head.data()) == kSparseMagic) return Format::Sparse;
  if (HasAt(head, 0, {reinterpret_cast<const char*>(kQcowMagic), 4})) {
    if (head.size() < 8) return MakeError(EINVAL, "qcow header truncated: no version field");
    uint32_t version = Be32(head.data() + 4);
    if (version == 1) return Format::Qcow1;
    if (version == 2 || version == 3) return Format::Qcow2;
    return MakeError(EOPNOTSUPP, "qcow header: unsupported version {} at offset 4", version);
  }
  for (const ForeignMagic& m : kForeignMagics) {
    if (HasAt(head, m.offset, m.magic)) return Unsupported(m.format, m.what, m.offset);
  }
  // LUKS1 and LUKS2 share the magic; the big-endian version follows it.
  if (HasAt(head, 0, "LUKS\xba\xbe"sv)) {
    const unsigned version = head.size() >= 8 ? unsigned{head[6]} << 8 | head[7] : 0;
    return Unsupported("luks", fmt::format("LUKS{} header magic \"LUKS\\xba\\xbe\"", version), 0);
  }
  if (IsVmdkDescriptor(head)) return Unsupported("vmdk", "text descriptor", 0);
  if (auto banner = VdiBanner(head)) {
    return Unsupported("vdi", fmt::format("header text \"{}\"", *banner), 0);
  }
  if (IsVhdFooter(footer)) {
    return Unsupported("vpc", "fixed-size VHD footer \"conectix\"", footer_offset);
  }
  return Format::Raw;
}

}  // namespace

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
  return Detect(prefix.first(std::min(prefix.size(), kDetectPrefixBytes)), {}, 0);
}

Result<Format> DetectFormat(Source& source) {
  uint8_t head[kDetectPrefixBytes];
  size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof(head), source.size()));
  IMAGED_TRY(source.ReadAt(head, n, 0));
  uint8_t footer[kVhdFooterBytes];
  size_t footer_bytes = 0;
  const uint64_t footer_offset =
      source.size() >= sizeof(footer) ? source.size() - sizeof(footer) : 0;
  if (source.size() >= sizeof(footer)) {
    IMAGED_TRY(source.ReadAt(footer, sizeof(footer), footer_offset));
    footer_bytes = sizeof(footer);
  }
  return Detect({head, n}, {footer, footer_bytes}, footer_offset);
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
