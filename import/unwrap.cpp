// Decoders for compressed and archived images (see unwrap.h): zlib for gzip, libarchive for the
// rest, behind one sequential UnwrappedStream that the raw and sparse readers take as input.
#include "import/unwrap.h"

#include <archive.h>
#include <archive_entry.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "internal.h"

namespace imaged::import {
namespace {

using namespace std::literals;

// Input is read in chunks of this size, 4 KiB-aligned so that FileSource reads them O_DIRECT.
constexpr size_t kInputChunk = 1 << 20;

// The source from its start, a chunk at a time; the position only moves forward, except that
// libarchive's zip reader seeks (to the central directory and back).
class SourceFeed {
 public:
  explicit SourceFeed(Source& source)
      : source_(source), buf_(static_cast<uint8_t*>(std::aligned_alloc(4096, kInputChunk))) {}

  // The next bytes, empty at the end of the source.
  Result<std::span<const uint8_t>> Next() {
    if (!buf_) return MakeError(ENOMEM, "allocate {} bytes", kInputChunk);
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kInputChunk, remaining()));
    IMAGED_TRY(source_.ReadAt(buf_.get(), n, pos_));
    pos_ += n;
    return std::span<const uint8_t>(buf_.get(), n);
  }
  void Seek(uint64_t pos) { pos_ = std::min(pos, source_.size()); }
  uint64_t position() const { return pos_; }
  uint64_t size() const { return source_.size(); }
  uint64_t remaining() const { return source_.size() - pos_; }

 private:
  Source& source_;
  std::unique_ptr<uint8_t, FreeDeleter> buf_;
  uint64_t pos_ = 0;
};

// Decoded bytes, in order.
class Decoder {
 public:
  virtual ~Decoder() = default;
  // Up to `len` bytes (at least 1 unless at the end); 0 at the end of the decoded stream.
  virtual Result<size_t> Read(uint8_t* out, size_t len) = 0;
  // Input consumed so far.
  virtual uint64_t input_position() const = 0;
  // The decoded size when the container records it (zip).
  virtual std::optional<uint64_t> recorded_size() const { return std::nullopt; }
};

// gzip with zlib: every member (a concatenation of gzip files is one gzip file, as gzip -d
// reads it) with its CRC32 and length checked. Anything after a member that is not another
// member is an error, not ignored.
class GzipDecoder : public Decoder {
 public:
  explicit GzipDecoder(Source& source) : feed_(source) {}
  ~GzipDecoder() override {
    if (initialized_) inflateEnd(&z_);
  }

  Result<void> Init() {
    // 16 + 15: a gzip wrapper only (not zlib, not raw deflate), the largest window.
    if (inflateInit2(&z_, 16 + MAX_WBITS) != Z_OK) return MakeError(ENOMEM, "gzip: inflateInit2");
    initialized_ = true;
    return Ok();
  }

  Result<size_t> Read(uint8_t* out, size_t len) override {
    z_.next_out = out;
    z_.avail_out = static_cast<uInt>(std::min<size_t>(len, 1u << 30));
    const uInt asked = z_.avail_out;
    while (z_.avail_out == asked && !ended_) {
      if (z_.avail_in == 0) {
        const auto chunk = IMAGED_TRY(feed_.Next());
        if (chunk.empty()) {
          if (in_member_) return Malformed("truncated");
          ended_ = true;
          break;
        }
        z_.next_in = const_cast<Bytef*>(chunk.data());
        z_.avail_in = static_cast<uInt>(chunk.size());
      }
      in_member_ = true;
      const int rc = inflate(&z_, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        in_member_ = false;
        // Another member may follow, in this chunk or the next.
        if (inflateReset(&z_) != Z_OK) return Malformed("inflateReset failed");
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return InflateError(rc);
      }
    }
    return static_cast<size_t>(asked - z_.avail_out);
  }

  uint64_t input_position() const override { return feed_.position() - z_.avail_in; }

 private:
  Error Malformed(std::string_view what) const {
    return MakeError(EINVAL, "gzip stream {} at input offset {}", what, input_position());
  }
  Error InflateError(int rc) const {
    const std::string_view msg = z_.msg ? z_.msg : "error";
    if (rc == Z_MEM_ERROR) return MakeError(ENOMEM, "gzip: out of memory");
    // "incorrect data check" / "incorrect length check": the member's trailer disagrees.
    const bool checksum = msg == "incorrect data check"sv || msg == "incorrect length check"sv;
    return MakeError(checksum ? EBADMSG : EINVAL, "gzip stream: {} at input offset {}", msg,
                     input_position());
  }

  SourceFeed feed_;
  z_stream z_{};
  bool initialized_ = false;
  bool in_member_ = false;
  bool ended_ = false;
};

struct ArchiveDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};
using ArchivePtr = std::unique_ptr<archive, ArchiveDeleter>;

int ExpectedFilterCode(Wrapping wrapping) {
  switch (wrapping) {
    case Wrapping::Xz:
      return ARCHIVE_FILTER_XZ;
    case Wrapping::Zstd:
      return ARCHIVE_FILTER_ZSTD;
    case Wrapping::Bzip2:
      return ARCHIVE_FILTER_BZIP2;
    default:
      return ARCHIVE_FILTER_NONE;
  }
}

// xz, zstd, bzip2 (libarchive's "raw" format: the one decoded stream) and zip (its seekable
// reader, which trusts the central directory as unzip does, positioned at the one file).
class ArchiveDecoder : public Decoder {
 public:
  ArchiveDecoder(Source& source, Wrapping wrapping) : feed_(source), wrapping_(wrapping) {}

  // Opens the archive; for zip, advances to the entry at `zip_index` (0-based, all entries).
  Result<void> Open(std::optional<size_t> zip_index = std::nullopt) {
    a_.reset(archive_read_new());
    if (!a_) return MakeError(ENOMEM, "archive_read_new");
    IMAGED_TRY(Support());
    archive_read_set_callback_data(a_.get(), this);
    archive_read_set_read_callback(a_.get(), &ArchiveDecoder::ReadCallback);
    archive_read_set_seek_callback(a_.get(), &ArchiveDecoder::SeekCallback);
    if (archive_read_open1(a_.get()) != ARCHIVE_OK) return LastError("open");
    if (wrapping_ == Wrapping::Zip) {
      if (zip_index) IMAGED_TRY(AdvanceTo(*zip_index));
      return Ok();
    }
    archive_entry* entry = nullptr;
    if (archive_read_next_header(a_.get(), &entry) != ARCHIVE_OK) return LastError("open");
    // Without a bid from the one filter registered, libarchive would pass the bytes through
    // as they are: a damaged header must fail here, not import the compressed bytes.
    if (archive_filter_code(a_.get(), 0) != ExpectedFilterCode(wrapping_)) {
      return MakeError(EINVAL, "not a valid {} stream: its header is damaged",
                       WrappingName(wrapping_));
    }
    return Ok();
  }

  // Zip: the index (among all entries) of the one regular file; anything else is refused.
  Result<size_t> FindTheOneFile() {
    std::vector<std::string> names;  // the first few, for the message
    size_t files = 0, found = 0;
    archive_entry* entry = nullptr;
    for (size_t i = 0;; ++i) {
      const int rc = archive_read_next_header(a_.get(), &entry);
      if (rc == ARCHIVE_EOF) break;
      if (rc != ARCHIVE_OK) return LastError("read the entries of");
      if (archive_entry_filetype(entry) != AE_IFREG) continue;
      const char* name = archive_entry_pathname(entry);
      if (names.size() < 3) names.emplace_back(name ? name : "?");
      found = i;
      ++files;
    }
    if (files == 0) return MakeError(EINVAL, "the zip archive holds no file");
    if (files > 1) {
      return MakeError(EINVAL,
                       "the zip archive holds {} files ({}{}): imaged imports a zip that holds "
                       "one image; unpack it and import the image",
                       files, fmt::join(names, ", "), files > names.size() ? ", ..." : "");
    }
    return found;
  }

  Result<size_t> Read(uint8_t* out, size_t len) override {
    for (;;) {
      const la_ssize_t n = archive_read_data(a_.get(), out, len);
      if (n >= 0) return static_cast<size_t>(n);
      if (n != ARCHIVE_RETRY) return LastError("decode");
    }
  }

  uint64_t input_position() const override { return feed_.position(); }
  std::optional<uint64_t> recorded_size() const override { return recorded_size_; }

 private:
  Result<void> Support() {
    archive* a = a_.get();
    if (wrapping_ == Wrapping::Zip) {
      if (archive_read_support_format_zip_seekable(a) != ARCHIVE_OK) return LastError("set up");
      return Ok();
    }
    if (archive_read_support_format_raw(a) != ARCHIVE_OK) return LastError("set up");
    int rc = ARCHIVE_FATAL;
    switch (wrapping_) {
      case Wrapping::Xz:
        rc = archive_read_support_filter_xz(a);
        break;
      case Wrapping::Zstd:
        rc = archive_read_support_filter_zstd(a);
        break;
      case Wrapping::Bzip2:
        rc = archive_read_support_filter_bzip2(a);
        break;
      default:
        break;
    }
    // ARCHIVE_WARN: libarchive was built without the decoder and would run an external
    // program, as the daemon's user, on the caller's bytes.
    if (rc != ARCHIVE_OK) {
      return MakeError(EOPNOTSUPP, "this libarchive has no built-in {} decoder",
                       WrappingName(wrapping_));
    }
    return Ok();
  }

  Result<void> AdvanceTo(size_t index) {
    archive_entry* entry = nullptr;
    for (size_t i = 0; i <= index; ++i) {
      if (archive_read_next_header(a_.get(), &entry) != ARCHIVE_OK) return LastError("read");
    }
    const char* name = archive_entry_pathname(entry);
    if (archive_entry_is_encrypted(entry)) {
      return MakeError(EOPNOTSUPP, "the zip entry \"{}\" is encrypted", name ? name : "?");
    }
    if (archive_entry_size_is_set(entry)) {
      recorded_size_ = static_cast<uint64_t>(archive_entry_size(entry));
    }
    return Ok();
  }

  // The feed's first error is the one reported (its errno and context); libarchive's own
  // errors are malformed input (EINVAL), or out of memory.
  Error LastError(std::string_view what) const {
    if (feed_error_) return *feed_error_;
    const char* message = archive_error_string(a_.get());
    const int err = archive_errno(a_.get()) == ENOMEM ? ENOMEM : EINVAL;
    return MakeError(err, "{} the {} {}: {} (at input offset {})", what, WrappingName(wrapping_),
                     wrapping_ == Wrapping::Zip ? "archive" : "stream", message ? message : "error",
                     feed_.position());
  }

  static la_ssize_t ReadCallback(archive* a, void* self_ptr, const void** buf) {
    auto* self = static_cast<ArchiveDecoder*>(self_ptr);
    auto chunk = self->feed_.Next();
    if (!chunk) {
      self->feed_error_ = chunk.error();
      archive_set_error(a, chunk.error().code, "%s", chunk.error().ToString().c_str());
      return ARCHIVE_FATAL;
    }
    *buf = chunk->data();
    return static_cast<la_ssize_t>(chunk->size());
  }

  static la_int64_t SeekCallback(archive*, void* self_ptr, la_int64_t offset, int whence) {
    auto* self = static_cast<ArchiveDecoder*>(self_ptr);
    const auto base = whence == SEEK_SET   ? 0
                      : whence == SEEK_CUR ? static_cast<la_int64_t>(self->feed_.position())
                                           : static_cast<la_int64_t>(self->feed_.size());
    // A hostile archive may ask for any offset: before the start fails, past the end (or
    // overflowing) stops at the end, where the next read finds nothing.
    la_int64_t target;
    if (offset < -base) return ARCHIVE_FATAL;
    if (__builtin_add_overflow(base, offset, &target)) {
      target = static_cast<la_int64_t>(self->feed_.size());
    }
    self->feed_.Seek(static_cast<uint64_t>(target));
    return static_cast<la_int64_t>(self->feed_.position());
  }

  SourceFeed feed_;
  Wrapping wrapping_;
  ArchivePtr a_;
  std::optional<Error> feed_error_;
  std::optional<uint64_t> recorded_size_;
};

Result<std::unique_ptr<Decoder>> OpenDecoder(Source& source, Wrapping wrapping) {
  if (wrapping == Wrapping::Gzip) {
    auto gzip = std::make_unique<GzipDecoder>(source);
    IMAGED_TRY(gzip->Init());
    return std::unique_ptr<Decoder>(std::move(gzip));
  }
  auto decoder = std::make_unique<ArchiveDecoder>(source, wrapping);
  IMAGED_TRY(decoder->Open());
  if (wrapping == Wrapping::Zip) {
    // The central directory is read once to find the one file, then the archive is opened
    // again at it (libarchive reads entries forward only).
    const size_t index = IMAGED_TRY(decoder->FindTheOneFile());
    decoder = std::make_unique<ArchiveDecoder>(source, wrapping);
    IMAGED_TRY(decoder->Open(index));
  }
  return std::unique_ptr<Decoder>(std::move(decoder));
}

// The decoded bytes as an import::Stream, with a look-ahead for format detection.
class UnwrappedStream : public Stream {
 public:
  UnwrappedStream(std::unique_ptr<Decoder> decoder, Wrapping wrapping)
      : decoder_(std::move(decoder)), wrapping_(wrapping) {}

  Result<void> Read(void* buf, size_t len) override {
    auto* out = static_cast<uint8_t*>(buf);
    const size_t from_ahead = std::min(len, ahead_.size());
    std::copy_n(ahead_.begin(), from_ahead, out);
    ahead_.erase(ahead_.begin(), ahead_.begin() + static_cast<ptrdiff_t>(from_ahead));
    size_t done = from_ahead;
    while (done < len) {
      const size_t n = IMAGED_TRY(decoder_->Read(out + done, len - done));
      if (n == 0) {
        return MakeError(EINVAL, "{} stream truncated: the image ends at byte {} of {}",
                         WrappingName(wrapping_), pos_ + done, pos_ + len);
      }
      done += n;
    }
    pos_ += len;
    return Ok();
  }
  uint64_t position() const override { return pos_; }

  // Up to `n` bytes from the current position without consuming them.
  Result<std::span<const uint8_t>> Peek(size_t n) {
    while (ahead_.size() < n) {
      const size_t have = ahead_.size();
      ahead_.resize(n);
      const size_t got = IMAGED_TRY(decoder_->Read(ahead_.data() + have, n - have));
      ahead_.resize(have + got);
      if (got == 0) break;
    }
    return std::span<const uint8_t>(ahead_.data(), std::min(n, ahead_.size()));
  }

  // The stream must end here. Reading to its end is also what makes the decoders check the
  // last checksum (the gzip trailer, the zip entry's CRC32).
  Result<void> ExpectEnd() {
    uint8_t byte;
    if (!ahead_.empty() || IMAGED_TRY(decoder_->Read(&byte, 1)) != 0) {
      return MakeError(EINVAL, "the {} stream holds more bytes past the image's end at byte {}",
                       WrappingName(wrapping_), pos_);
    }
    return Ok();
  }

  // Decodes the rest, counting it; more than `max` fails with ENOSPC.
  Result<uint64_t> CountToEnd(uint64_t max, uint64_t source_size, const Progress& progress) {
    std::vector<uint8_t> scratch(4 << 20);
    uint64_t count = ahead_.size();
    for (;;) {
      const size_t n = IMAGED_TRY(decoder_->Read(scratch.data(), scratch.size()));
      if (n == 0) break;
      count += n;
      if (count > max) {
        return MakeError(ENOSPC, "the {} stream decodes to more than {} bytes, the space there is",
                         WrappingName(wrapping_), max);
      }
      if (progress && !progress(decoder_->input_position(), source_size)) {
        return MakeError(ECANCELED, "cancelled while measuring the {} stream",
                         WrappingName(wrapping_));
      }
    }
    return count;
  }

  std::optional<uint64_t> recorded_size() const { return decoder_->recorded_size(); }
  uint64_t input_position() const { return decoder_->input_position(); }

 private:
  std::unique_ptr<Decoder> decoder_;
  Wrapping wrapping_;
  std::vector<uint8_t> ahead_;  // decoded, not yet consumed
  uint64_t pos_ = 0;
};

// The image reader over an UnwrappedStream it owns: at the image's end the stream must end.
class StreamReader : public UnwrappedReader {
 public:
  StreamReader(std::unique_ptr<UnwrappedStream> stream, std::unique_ptr<ImageReader> inner)
      : stream_(std::move(stream)), inner_(std::move(inner)) {}
  uint64_t input_position() const override { return stream_->input_position(); }
  Format format() const override { return inner_->format(); }
  uint64_t virtual_size() const override { return inner_->virtual_size(); }
  Result<std::optional<Run>> Next() override {
    auto run = IMAGED_TRY(inner_->Next());
    if (!run) IMAGED_TRY(stream_->ExpectEnd());
    return run;
  }

 private:
  std::unique_ptr<UnwrappedStream> stream_;
  std::unique_ptr<ImageReader> inner_;
};

Result<std::unique_ptr<UnwrappedStream>> OpenStream(Source& source, Wrapping wrapping) {
  auto decoder = IMAGED_TRY(OpenDecoder(source, wrapping));
  return std::make_unique<UnwrappedStream>(std::move(decoder), wrapping);
}

// How a user unpacks what imaged cannot read as a stream.
std::string_view UnpackCommand(Wrapping wrapping) {
  switch (wrapping) {
    case Wrapping::Gzip:
      return "gzip -dc FILE > IMAGE";
    case Wrapping::Xz:
      return "xz -dc FILE > IMAGE";
    case Wrapping::Zstd:
      return "zstd -dc FILE > IMAGE";
    case Wrapping::Bzip2:
      return "bzip2 -dc FILE > IMAGE";
    case Wrapping::Zip:
      return "unzip FILE";
    case Wrapping::None:
      break;
  }
  return "";
}

// A raw image's size: recorded (zip), or counted by decoding a second stream to its end.
Result<uint64_t> RawSize(Source& source, Wrapping wrapping, UnwrappedStream& stream,
                         const UnwrapOptions& options) {
  if (auto recorded = stream.recorded_size()) {
    if (*recorded > options.max_size) {
      return MakeError(ENOSPC, "the zip entry holds {} bytes, more than the {} there is space for",
                       *recorded, options.max_size);
    }
    return *recorded;
  }
  auto counter = IMAGED_TRY(OpenStream(source, wrapping));
  return counter->CountToEnd(options.max_size, source.size(), options.count_progress);
}

}  // namespace

std::string_view WrappingName(Wrapping wrapping) {
  switch (wrapping) {
    case Wrapping::None:
      return "none";
    case Wrapping::Gzip:
      return "gzip";
    case Wrapping::Xz:
      return "xz";
    case Wrapping::Zstd:
      return "zstd";
    case Wrapping::Bzip2:
      return "bzip2";
    case Wrapping::Zip:
      return "zip";
  }
  return "unknown";
}

Wrapping DetectWrapping(std::span<const uint8_t> prefix) {
  if (HasAt(prefix, 0, "\x1f\x8b\x08"sv)) return Wrapping::Gzip;
  if (HasAt(prefix, 0,
            "\xfd"
            "7zXZ\0"sv))
    return Wrapping::Xz;
  // A zstd frame, or a skippable frame (pzstd starts with one).
  if (HasAt(prefix, 0, "\x28\xb5\x2f\xfd"sv)) return Wrapping::Zstd;
  if (prefix.size() >= 4 && (Le32(prefix.data()) & 0xfffffff0u) == 0x184d2a50u) {
    return Wrapping::Zstd;
  }
  // "BZh", the block size '1'-'9', then the first block's magic (pi) or the end of stream's
  // (sqrt pi): three letters alone could be the start of anything.
  if (prefix.size() >= 10 && HasAt(prefix, 0, "BZh"sv) && prefix[3] >= '1' && prefix[3] <= '9' &&
      (HasAt(prefix, 4, "\x31\x41\x59\x26\x53\x59"sv) ||
       HasAt(prefix, 4, "\x17\x72\x45\x38\x50\x90"sv))) {
    return Wrapping::Bzip2;
  }
  // A local file header, or the end of central directory of an empty archive.
  if (HasAt(prefix, 0, "PK\3\4"sv) || HasAt(prefix, 0, "PK\5\6"sv)) return Wrapping::Zip;
  return Wrapping::None;
}

Result<Wrapping> DetectWrapping(Source& source) {
  uint8_t head[kWrappingPrefixBytes];
  const size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof(head), source.size()));
  IMAGED_TRY(source.ReadAt(head, n, 0));
  return DetectWrapping({head, n});
}

Result<std::unique_ptr<UnwrappedReader>> OpenUnwrappedReader(Source& source, Wrapping wrapping,
                                                             const UnwrapOptions& options) {
  if (wrapping == Wrapping::None) return MakeError(EINVAL, "the source is not compressed");
  IMAGED_TRY(CheckReaderOptions(options.reader));
  auto stream = IMAGED_TRY(OpenStream(source, wrapping));
  Format format;
  if (options.format) {
    format = *options.format;
  } else {
    const auto prefix = IMAGED_TRY(stream->Peek(kDetectPrefixBytes));
    format = IMAGED_TRY(DetectFormat(prefix));
  }
  std::unique_ptr<ImageReader> inner;
  switch (format) {
    case Format::Raw: {
      const uint64_t size = IMAGED_TRY(RawSize(source, wrapping, *stream, options));
      inner = IMAGED_TRY(OpenRawReader(*stream, size, options.reader));
      break;
    }
    case Format::Sparse:
      inner = IMAGED_TRY(OpenSparseReader(*stream, options.reader));
      break;
    case Format::Qcow1:
    case Format::Qcow2:
      return MakeError(EOPNOTSUPP,
                       "a {} image inside {} needs random access: unpack it first ({}) and "
                       "import the file that makes",
                       FormatName(format), WrappingName(wrapping), UnpackCommand(wrapping));
  }
  return std::unique_ptr<UnwrappedReader>(new StreamReader(std::move(stream), std::move(inner)));
}

}  // namespace imaged::import
